//! Chunk store benchmarks: opening a store of 200,000 chunks (target: well
//! under a second, index RAM <= 32 bytes per chunk), and the zstd level
//! that sets the default.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use blocksnap::chunkstore::{ChunkStore, ChunkStoreConfig};
use blocksnap::codec::{compress, Compression};
use blocksnap::format::pack::RecordKind;
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

criterion_group!(benches, bench_open, bench_zstd_levels);
criterion_main!(benches);
