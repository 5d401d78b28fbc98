//! Many threads putting into one snapshot and into several at once, with
//! readers running alongside; every block reads back exactly.

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::testing::{block, complete_request, get_listed, list_all_blocks, put_request};
use blocksnap::{Engine, EngineConfig, PutDurability};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn stress(durability: PutDurability) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 2 << 20,
            ..ChunkStoreConfig::default()
        },
        put_durability: durability,
        ..EngineConfig::default()
    };
    let engine = Engine::open_with(Engine::local_storage(dir.path()).expect("storage"), config)
        .expect("open");
    // A completed snapshot for the readers.
    let base = engine
        .start_snapshot(StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        })
        .expect("start")
        .snapshot_id;
    for index in 0..16 {
        engine
            .put_snapshot_block(put_request(&base, index, block(index as u64 + 1)))
            .expect("put");
    }
    engine
        .complete_snapshot(complete_request(&base, 16))
        .expect("complete");
    let listed = engine
        .list_snapshot_blocks(ListSnapshotBlocksRequest {
            snapshot_id: base.clone(),
            ..Default::default()
        })
        .expect("list");

    let targets: Vec<String> = (0..2)
        .map(|_| {
            engine
                .start_snapshot(StartSnapshotRequest {
                    volume_size: 1,
                    ..Default::default()
                })
                .expect("start")
                .snapshot_id
        })
        .collect();
    let writing = Arc::new(AtomicBool::new(true));
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let writing = writing.clone();
                let engine = &engine;
                let base = &base;
                let listed = &listed;
                scope.spawn(move || {
                    let mut reads = 0;
                    while writing.load(Ordering::Relaxed) || reads < 16 {
                        let entry = &listed.blocks[reads % listed.blocks.len()];
                        let read = engine
                            .get_snapshot_block(GetSnapshotBlockRequest {
                                snapshot_id: base.clone(),
                                block_index: entry.block_index,
                                block_token: entry.block_token.clone(),
                            })
                            .expect("concurrent read");
                        assert!(read.block_data == block(entry.block_index as u64 + 1));
                        reads += 1;
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (0..4)
            .map(|thread| {
                let engine = &engine;
                let targets = &targets;
                scope.spawn(move || {
                    for step in 0..24 {
                        // Threads overlap on indexes of both snapshots; the
                        // content is a function of the index, so any winner
                        // is correct, and seeds repeat across threads (dedup).
                        let index = (thread * 7 + step * 5) % 64;
                        let target = &targets[(thread + step) % 2];
                        engine
                            .put_snapshot_block(put_request(
                                target,
                                index as i32,
                                block(index as u64 % 20),
                            ))
                            .expect("put");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        writing.store(false, Ordering::Relaxed);
        for reader in readers {
            reader.join().expect("reader");
        }
    });
    for (position, target) in targets.iter().enumerate() {
        let expected: std::collections::BTreeSet<i32> = (0..4usize)
            .flat_map(|thread| (0..24usize).map(move |step| (thread, step)))
            .filter(|(thread, step)| (thread + step) % 2 == position)
            .map(|(thread, step)| ((thread * 7 + step * 5) % 64) as i32)
            .collect();
        engine
            .complete_snapshot(complete_request(target, expected.len() as i32))
            .expect("complete");
        let listed = list_all_blocks(&engine, target).expect("list");
        assert_eq!(
            listed
                .iter()
                .map(|b| b.block_index)
                .collect::<std::collections::BTreeSet<_>>(),
            expected
        );
        for entry in listed {
            let data = get_listed(&engine, target, &entry).expect("get");
            assert!(data == block(entry.block_index as u64 % 20));
        }
    }
}

#[test]
fn concurrent_puts_and_reads_with_group_commit() {
    stress(PutDurability::Immediate);
}

#[test]
fn concurrent_puts_and_reads_durable_at_complete() {
    stress(PutDurability::AtComplete);
}
