//! Chunk store benchmarks: opening a store of 200,000 chunks (target: well
//! under a second, index RAM <= 32 bytes per chunk), the zstd level
//! that sets the default, and the work every accepted and every served
//! block needs whatever carries it (`block_work`: one core's CPU-s per
//! GiB, the floor under `benches/server.rs`'s figures).

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use blocksnap::chunkstore::{ChunkStore, ChunkStoreConfig};
use blocksnap::codec::{self, compress, Compression};
use blocksnap::format::pack::{Codec, RecordKind};
use blocksnap::ids::{ChunkId, Sha256Digest};
use blocksnap::storage::LocalStorage;
use blocksnap::testing::block;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;
use std::time::Duration;

const CHUNKS: u64 = 200_000;

/// A store of 200,000 small chunks (the index cost depends on the number of
/// chunks, not their size). With `pack_target_size` small, nearly all packs
/// are sealed and indexed; with a large one they all sit in the open pack,
/// which opening must scan.
fn filled_store(pack_target_size: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ChunkStoreConfig {
        pack_target_size,
        ..ChunkStoreConfig::default()
    };
    let store = ChunkStore::open(
        Arc::new(LocalStorage::open(dir.path()).expect("storage")),
        config,
    )
    .expect("open");
    for n in 0..CHUNKS {
        let raw = n.to_le_bytes().repeat(8);
        let id = ChunkId(*blake3::hash(&raw).as_bytes());
        store
            .put(RecordKind::Block, &id, &Sha256Digest([0; 32]), &raw)
            .expect("put");
    }
    store.sync().expect("sync");
    dir
}

fn bench_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open_200k_chunks");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (label, pack_target_size) in [("sealed_packs", 4u64 << 20), ("one_open_pack", 256 << 20)] {
        let dir = filled_store(pack_target_size);
        let config = ChunkStoreConfig {
            pack_target_size,
            ..ChunkStoreConfig::default()
        };
        let stats = {
            let store = ChunkStore::open(
                Arc::new(LocalStorage::open(dir.path()).expect("storage")),
                config.clone(),
            )
            .expect("open");
            store.stats()
        };
        eprintln!(
            "open_200k_chunks/{label}: {} chunks, index heap {} bytes = {:.1} bytes per chunk",
            stats.chunks,
            stats.index_heap_bytes,
            stats.index_heap_bytes as f64 / stats.chunks as f64
        );
        group.bench_function(label, |b| {
            b.iter(|| {
                let storage = Arc::new(LocalStorage::open(dir.path()).expect("storage"));
                std::hint::black_box(ChunkStore::open(storage, config.clone()).expect("open"))
            })
        });
    }
    group.finish();
}

fn bench_zstd_levels(c: &mut Criterion) {
    let blocks: Vec<Vec<u8>> = (1..=3).map(block).collect();
    let mut group = c.benchmark_group("zstd_vm_like_mix");
    group
        .sample_size(20)
        .throughput(Throughput::Bytes(3 * 524_288));
    let settings = [
        Compression::Level(-3),
        Compression::Level(1),
        Compression::BlockTuned,
        Compression::Level(3),
        Compression::Level(6),
    ];
    for compression in settings {
        let stored: usize = blocks
            .iter()
            .map(|data| compress(data, compression).map_or(data.len(), |c| c.len()))
            .sum();
        eprintln!(
            "zstd {compression:?}: VM-like mix stored in {:.1}% of its size",
            100.0 * stored as f64 / (3.0 * 524_288.0)
        );
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{compression:?}")),
            &compression,
            |b, &compression| {
                b.iter(|| {
                    for data in &blocks {
                        std::hint::black_box(compress(data, compression));
                    }
                })
            },
        );
    }
    group.finish();
}

/// A named step of [`bench_block_work`] over the whole mix.
type BlockStep<'a> = (&'static str, Box<dyn Fn() + 'a>);

/// The per-block work of the server bench's mix (text, sparse structured
/// and random blocks), each step alone and as a put and a get need them:
/// a put checks the client's SHA-256, names the block with blake3 and
/// compresses it; a get decodes it and checks its blake3 id.
fn bench_block_work(c: &mut Criterion) {
    let blocks: Vec<Vec<u8>> = (1..=3).map(block).collect();
    let stored: Vec<(Codec, Vec<u8>)> = blocks
        .iter()
        .map(|data| match compress(data, Compression::BlockTuned) {
            Some(compressed) => (Codec::Zstd, compressed),
            None => (Codec::Raw, data.clone()),
        })
        .collect();
    let mix_bytes = 3 * 524_288;
    let mut group = c.benchmark_group("block_work");
    group
        .sample_size(20)
        .throughput(Throughput::Bytes(mix_bytes));
    let mut report = Vec::new();
    let mut per_gib = |name: &str, step: &dyn Fn()| {
        let started = std::time::Instant::now();
        let rounds = 64;
        for _ in 0..rounds {
            step();
        }
        let seconds = started.elapsed().as_secs_f64();
        report.push(format!(
            "block_work {name}: {:.2} CPU-s per GiB (one core, {rounds} rounds before criterion's)",
            seconds * f64::from(1u32 << 30) / (rounds as f64 * mix_bytes as f64)
        ));
    };
    let steps: Vec<BlockStep> = vec![
        (
            "sha256",
            Box::new(|| {
                for data in &blocks {
                    std::hint::black_box(codec::sha256(data));
                }
            }),
        ),
        (
            "blake3",
            Box::new(|| {
                for data in &blocks {
                    std::hint::black_box(codec::chunk_id(data));
                }
            }),
        ),
        (
            "compress_block_tuned",
            Box::new(|| {
                for data in &blocks {
                    std::hint::black_box(compress(data, Compression::BlockTuned));
                }
            }),
        ),
        (
            "put_sha256_blake3_compress",
            Box::new(|| {
                for data in &blocks {
                    std::hint::black_box(codec::sha256(data));
                    std::hint::black_box(codec::chunk_id(data));
                    std::hint::black_box(compress(data, Compression::BlockTuned));
                }
            }),
        ),
        (
            "decode",
            Box::new(|| {
                for (codec, payload) in &stored {
                    std::hint::black_box(
                        codec::decode_payload(*codec, payload, 524_288).expect("decode"),
                    );
                }
            }),
        ),
        (
            "get_decode_blake3",
            Box::new(|| {
                for (codec, payload) in &stored {
                    let data = codec::decode_payload(*codec, payload, 524_288).expect("decode");
                    std::hint::black_box(codec::chunk_id(&data));
                }
            }),
        ),
    ];
    for (name, step) in &steps {
        per_gib(name, step.as_ref());
        group.bench_function(*name, |b| b.iter(step.as_ref()));
    }
    group.finish();
    for line in report {
        eprintln!("{line}");
    }
}

criterion_group!(benches, bench_open, bench_zstd_levels, bench_block_work);
criterion_main!(benches);
