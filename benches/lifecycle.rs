//! Lifecycle benchmarks, with the targets of the lifecycle issue (2-core
//! machine):
//! - DeleteSnapshot of a snapshot that changed 1,000 blocks, in a store
//!   holding 100 snapshots: work proportional to the change;
//! - compaction throughput in MiB/s of source packs processed;
//! - verify throughput: at least the speed of reading and hashing the data
//!   (over 1 GiB/s of block data).

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::engine::{GcOptions, VerifyOptions};
use blocksnap::testing::{block, complete_request, put_request};
use blocksnap::{Engine, EngineConfig, PutDurability};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};

const BLOCK: u64 = 524_288;
/// 64 TiB in blocks: changes are spread over the whole index space.
const VOLUME_BLOCKS: u64 = 65_536 * 2048;

fn engine(pack_target_size: u64) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        put_durability: PutDurability::AtComplete,
        chunk_store: ChunkStoreConfig {
            pack_target_size,
            ..ChunkStoreConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine = Engine::open_with(Engine::local_storage(dir.path()).expect("storage"), config)
        .expect("open");
    (dir, engine)
}

fn start(engine: &Engine, volume_size: i64, parent: Option<&str>) -> String {
    Ebs::new(engine)
        .start_snapshot(StartSnapshotRequest {
            volume_size,
            parent_snapshot_id: parent.map(str::to_string),
            ..Default::default()
        })
        .expect("start")
        .snapshot_id
}

/// A unique, highly compressible block (the store stays small; hashing
/// and map work are what is measured).
fn stamped(counter: &mut u64) -> Vec<u8> {
    *counter += 1;
    let mut data = vec![0u8; BLOCK as usize];
    data[..8].copy_from_slice(&counter.to_le_bytes());
    data
}

/// A completed child of `parent` (or a root snapshot) with `changes` new
/// blocks scattered over a 64 TiB volume.
fn child(engine: &Engine, parent: Option<&str>, changes: u64, counter: &mut u64) -> String {
    let id = start(engine, 65_536, parent);
    let stride = VOLUME_BLOCKS / changes;
    for change in 0..changes {
        let index = (change * stride + *counter % stride) as i32;
        Ebs::new(engine)
            .put_snapshot_block(put_request(&id, index, stamped(counter)))
            .expect("put");
    }
    Ebs::new(engine)
        .complete_snapshot(complete_request(&id, changes as i32))
        .expect("complete");
    id
}

fn bench_delete(c: &mut Criterion) {
    let (dir, engine) = engine(256 << 20);
    let mut counter = 0;
    let mut parent = child(&engine, None, 1000, &mut counter);
    for _ in 0..98 {
        parent = child(&engine, Some(&parent), 50, &mut counter);
    }
    let mut group = c.benchmark_group("lifecycle");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("delete_1000_changed_blocks_among_100_snapshots", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let victim = child(&engine, Some(&parent), 1000, &mut counter);
                let started = Instant::now();
                Ebs::new(&engine)
                    .delete_snapshot(DeleteSnapshotRequest {
                        snapshot_id: victim,
                    })
                    .expect("delete");
                total += started.elapsed();
            }
            total
        })
    });
    // Opening rebuilds the reference counts: one read of every live node.
    let live_chunks = engine.store_stats().expect("stats").live_chunks;
    let config = engine.config().clone();
    drop(engine);
    eprintln!("store for open: {live_chunks} live chunks");
    group.bench_function("open_store_of_100_snapshots", |b| {
        b.iter(|| {
            Engine::open_with(
                Engine::local_storage(dir.path()).expect("storage"),
                config.clone(),
            )
            .expect("open")
        })
    });
    group.finish();
}

/// Writes `blocks` VM-like blocks (text, structured, random in turn) as
/// one snapshot of a 1 GiB volume.
fn fill(engine: &Engine, blocks: u64, first_seed: u64) -> String {
    let id = start(engine, 1, None);
    for index in 0..blocks {
        Ebs::new(engine)
            .put_snapshot_block(put_request(&id, index as i32, block(first_seed + index)))
            .expect("put");
    }
    Ebs::new(engine)
        .complete_snapshot(complete_request(&id, blocks as i32))
        .expect("complete");
    id
}

fn bench_compaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("lifecycle");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    // Two snapshots of 128 MiB each, interleaved in 16 MiB packs; deleting
    // one leaves every pack half live.
    let blocks = 256;
    // Throughput in block data of the source packs (half of it live).
    group.throughput(Throughput::Bytes(2 * blocks * BLOCK));
    let mut source_bytes = 0;
    group.bench_function("compact_half_live_packs", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for iteration in 0..iterations {
                let (_dir, engine) = engine(16 << 20);
                let seed = 1 + iteration * 1_000_000;
                let keep = start(&engine, 1, None);
                let doomed = start(&engine, 1, None);
                for index in 0..blocks {
                    for (offset, id) in [(0, &keep), (blocks, &doomed)] {
                        Ebs::new(&engine)
                            .put_snapshot_block(put_request(
                                id,
                                index as i32,
                                block(seed + offset + index),
                            ))
                            .expect("put");
                    }
                }
                for id in [&keep, &doomed] {
                    Ebs::new(&engine)
                        .complete_snapshot(complete_request(id, blocks as i32))
                        .expect("complete");
                }
                Ebs::new(&engine)
                    .delete_snapshot(DeleteSnapshotRequest {
                        snapshot_id: doomed,
                    })
                    .expect("delete");
                source_bytes = engine.store_stats().expect("stats").stored_bytes;
                let started = Instant::now();
                let report = engine
                    .collect_garbage(GcOptions {
                        live_threshold: 0.9,
                        ..GcOptions::default()
                    })
                    .expect("collect");
                total += started.elapsed();
                assert!(report.bytes_freed > 0);
            }
            total
        })
    });
    eprintln!(
        "compaction source: {} MiB of records per run",
        source_bytes >> 20
    );
    group.finish();
}

fn bench_verify(c: &mut Criterion) {
    let (_dir, engine) = engine(256 << 20);
    let blocks = 1024;
    fill(&engine, blocks, 1);
    let mut group = c.benchmark_group("lifecycle");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    // Throughput in block data verified (decompressed, blake3 and SHA-256).
    group.throughput(Throughput::Bytes(blocks * BLOCK));
    group.bench_function("verify_512_mib_all_cores", |b| {
        b.iter(|| {
            let report = engine.verify(VerifyOptions::default()).expect("verify");
            assert!(report.is_clean());
            report
        })
    });
    group.finish();
}

criterion_group!(benches, bench_delete, bench_compaction, bench_verify);
criterion_main!(benches);
