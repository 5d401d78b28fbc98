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
    let base = Ebs::new(&engine)
        .start_snapshot(StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        })
        .expect("start")
        .snapshot_id;
    for index in 0..16 {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&base, index, block(index as u64 + 1)))
            .expect("put");
    }
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&base, 16))
        .expect("complete");
    let listed = Ebs::new(&engine)
        .list_snapshot_blocks(ListSnapshotBlocksRequest {
            snapshot_id: base.clone(),
            ..Default::default()
        })
        .expect("list");

    let targets: Vec<String> = (0..2)
        .map(|_| {
            Ebs::new(&engine)
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
                        let read = Ebs::new(engine)
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
                        Ebs::new(engine)
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
        Ebs::new(&engine)
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

/// Writers start, fill, complete, cancel and delete snapshots whose data
/// comes from a small pool of contents (so puts keep reviving chunks that
/// just died), readers read a long-lived snapshot, and the collector
/// compacts in a loop. Nothing live may be lost.
#[test]
fn collector_runs_alongside_writers_deleters_and_readers() {
    use blocksnap::engine::GcOptions;
    use blocksnap::testing::holds_exactly;
    use std::collections::BTreeMap;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 256 << 10,
            ..ChunkStoreConfig::default()
        },
        node_cache_nodes: 16,
        ..EngineConfig::default()
    };
    let engine = Engine::open_with(Engine::local_storage(dir.path()).expect("storage"), config)
        .expect("open");
    let start = |parent: Option<&String>| {
        Ebs::new(&engine)
            .start_snapshot(StartSnapshotRequest {
                volume_size: 1,
                parent_snapshot_id: parent.cloned(),
                ..Default::default()
            })
            .expect("start")
            .snapshot_id
    };
    let base = start(None);
    let base_content: BTreeMap<u32, u64> = (0..8).map(|i| (i, u64::from(i) % 5 + 1)).collect();
    for (index, seed) in &base_content {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&base, *index as i32, block(*seed)))
            .expect("put");
    }
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&base, 8))
        .expect("complete");

    let writing = Arc::new(AtomicBool::new(true));
    /// Stops the collector and reader loops even when a writer panics, so
    /// a failure is reported instead of hanging the scope.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.store(false, Ordering::Release);
            }
        }
    }
    let survivors = std::thread::scope(|scope| {
        let collector = scope.spawn(|| {
            let mut runs = 0u32;
            let mut freed = 0u64;
            while writing.load(Ordering::Acquire) {
                let report = engine
                    .collect_garbage(GcOptions {
                        live_threshold: 1.0,
                        ..GcOptions::default()
                    })
                    .expect("collect");
                runs += 1;
                freed += report.bytes_freed;
            }
            (runs, freed)
        });
        let reader = scope.spawn(|| {
            let mut reads = 0u32;
            while writing.load(Ordering::Acquire) {
                assert!(holds_exactly(&engine, &base, &base_content).expect("read base"));
                reads += 1;
            }
            reads
        });
        let writers: Vec<_> = (0..2u64)
            .map(|writer| {
                let engine = &engine;
                let writing = &writing;
                scope.spawn(move || {
                    let _stop = StopOnDrop(writing);
                    let mut chain: Vec<(String, BTreeMap<u32, u64>)> = Vec::new();
                    for round in 0..24u64 {
                        let parent = chain.last().cloned();
                        let id = start(parent.as_ref().map(|(id, _)| id));
                        let mut content = parent.map(|(_, content)| content).unwrap_or_default();
                        let writes = 3 + (round % 4) as u32;
                        for k in 0..writes {
                            let index = (round as u32 * 7 + k * 3 + writer as u32) % 40;
                            // Seeds 1..=9: most puts hit data stored before,
                            // often data whose last holder was just deleted.
                            let seed = (round * 3 + u64::from(k) + writer) % 9 + 1;
                            Ebs::new(engine)
                                .put_snapshot_block(put_request(&id, index as i32, block(seed)))
                                .expect("put");
                            content.insert(index, seed);
                        }
                        if round % 5 == 4 {
                            Ebs::new(engine)
                                .cancel_snapshot(CancelSnapshotRequest { snapshot_id: id })
                                .expect("cancel");
                            continue;
                        }
                        Ebs::new(engine)
                            .complete_snapshot(CompleteSnapshotRequest {
                                snapshot_id: id.clone(),
                                changed_blocks_count: distinct_writes(round, writes, writer),
                                ..Default::default()
                            })
                            .expect("complete");
                        chain.push((id, content));
                        // Keep the two newest of this chain; delete older ones.
                        if chain.len() > 2 {
                            let (old, _) = chain.remove(0);
                            Ebs::new(engine)
                                .delete_snapshot(DeleteSnapshotRequest { snapshot_id: old })
                                .expect("delete");
                        }
                    }
                    chain
                })
            })
            .collect();
        let survivors: Vec<_> = writers
            .into_iter()
            .flat_map(|writer| writer.join().expect("writer"))
            .collect();
        writing.store(false, Ordering::Release);
        let (runs, _freed) = collector.join().expect("collector");
        let reads = reader.join().expect("reader");
        assert!(runs > 0 && reads > 0);
        survivors
    });
    for (id, content) in &survivors {
        assert!(
            holds_exactly(&engine, id, content).expect("read survivor"),
            "{id}"
        );
    }
    assert!(holds_exactly(&engine, &base, &base_content).expect("read base"));
    let audit = engine.audit_references().expect("audit");
    assert!(audit.mismatches.is_empty(), "{audit:?}");
    engine
        .collect_garbage(GcOptions {
            live_threshold: 1.0,
            ..GcOptions::default()
        })
        .expect("final collection");
    assert_eq!(engine.store_stats().expect("stats").garbage_bytes, 0);
    drop(engine);
    // And the store reopens with everything intact.
    let engine = Engine::open(dir.path()).expect("reopen");
    for (id, content) in &survivors {
        assert!(holds_exactly(&engine, id, content).expect("read after reopen"));
    }
}

/// Distinct indexes a writer's round writes (indexes may repeat mod 40).
fn distinct_writes(round: u64, writes: u32, writer: u64) -> i32 {
    let indexes: std::collections::BTreeSet<u32> = (0..writes)
        .map(|k| (round as u32 * 7 + k * 3 + writer as u32) % 40)
        .collect();
    indexes.len() as i32
}
