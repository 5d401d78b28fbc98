//! Deletion, cancellation and garbage collection: what is freed is exactly
//! what nothing else needs, in every deletion order, across crashes at
//! every sync point, and while writers and readers run.

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::engine::GcOptions;
use blocksnap::storage::{MemoryStorage, Storage, TornWrites};
use blocksnap::testing::{
    block, complete_request, holds_exactly, put_request, write_lineage, Lineage,
};
use blocksnap::{Engine, EngineConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

fn config() -> EngineConfig {
    // Small packs: deletions leave garbage spread over several sealed packs.
    EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 96 << 10,
            ..ChunkStoreConfig::default()
        },
        node_cache_nodes: 32,
        ..EngineConfig::default()
    }
}

fn open(storage: &MemoryStorage) -> Engine {
    Engine::open_with(Arc::new(storage.clone()), config()).expect("open")
}

fn template() -> StartSnapshotRequest {
    StartSnapshotRequest {
        volume_size: 1,
        ..Default::default()
    }
}

/// Five snapshots of one lineage; later ones overwrite, repeat and zero
/// earlier blocks, and seeds recur across indexes (deduplicated data).
const CHAIN: [&[(u32, u64)]; 5] = [
    &[(0, 1), (1, 2), (2, 3), (9, 4), (100, 5)],
    &[(1, 6), (2, 0), (3, 7), (4, 1)],
    &[(0, 8), (5, 9), (9, 10), (700, 2)],
    &[(1, 11), (6, 12), (100, 13)],
    &[(0, 1), (7, 14), (2047, 15)],
];

/// An unrelated snapshot sharing some data with the lineage.
const UNRELATED: &[(u32, u64)] = &[(10, 3), (11, 12), (12, 16)];

fn delete(engine: &Engine, id: &str) {
    Ebs::new(engine)
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: id.to_string(),
        })
        .expect("delete");
}

fn collect_all(engine: &Engine) {
    engine
        .collect_garbage(GcOptions {
            live_threshold: 1.0,
            ..GcOptions::default()
        })
        .expect("collect");
}

fn assert_audit_clean(engine: &Engine, context: &str) {
    let audit = engine.audit_references().expect("audit");
    assert!(audit.mismatches.is_empty(), "{context}: {audit:?}");
    assert_eq!(audit.damaged, None, "{context}");
}

/// Stored bytes of a fresh store holding exactly these volume images, each
/// written whole as a standalone snapshot. Block maps are canonical, so a
/// store that freed exactly what nothing needs holds the same chunks.
fn fresh_store_bytes(images: &[&BTreeMap<u32, u64>]) -> (u64, u64) {
    let storage = MemoryStorage::new();
    let engine = open(&storage);
    for image in images {
        let writes: Vec<(u32, u64)> = image.iter().map(|(i, s)| (*i, *s)).collect();
        write_lineage(&engine, &template(), &[&writes]);
    }
    let stats = engine.store_stats().expect("stats");
    (stats.stored_bytes, stats.stored_chunks)
}

#[test]
fn deleting_in_every_order_keeps_the_rest_whole_and_frees_exactly_their_garbage() {
    let mut orders = Vec::new();
    permutations(&mut Vec::new(), CHAIN.len(), &mut orders);
    assert_eq!(orders.len(), 120);
    for order in orders {
        let storage = MemoryStorage::new();
        let engine = open(&storage);
        let lineage: Lineage = write_lineage(&engine, &template(), &CHAIN);
        let unrelated = write_lineage(&engine, &template(), &[UNRELATED]);
        let mut alive: Vec<usize> = (0..CHAIN.len()).collect();
        for (step, &victim) in order.iter().enumerate() {
            let context = format!("order {order:?}, step {step}");
            delete(&engine, &lineage[victim].0);
            alive.retain(|&i| i != victim);
            collect_all(&engine);
            assert_audit_clean(&engine, &context);
            expect_not_found(&engine, &lineage[victim].0);
            for &i in &alive {
                assert!(
                    holds_exactly(&engine, &lineage[i].0, &lineage[i].1).expect("read"),
                    "{context}: snapshot {i} changed"
                );
            }
            assert!(holds_exactly(&engine, &unrelated[0].0, &unrelated[0].1).expect("read"));
            let mut images: Vec<&BTreeMap<u32, u64>> =
                alive.iter().map(|&i| &lineage[i].1).collect();
            images.push(&unrelated[0].1);
            let stats = engine.store_stats().expect("stats");
            assert_eq!(
                (stats.stored_bytes, stats.stored_chunks),
                fresh_store_bytes(&images),
                "{context}: stored bytes differ from a store holding only the survivors"
            );
            assert_eq!(stats.garbage_bytes, 0, "{context}");
        }
    }
}

/// Every ordering of `0..n`.
fn permutations(prefix: &mut Vec<usize>, n: usize, out: &mut Vec<Vec<usize>>) {
    if prefix.len() == n {
        out.push(prefix.clone());
        return;
    }
    for next in 0..n {
        if !prefix.contains(&next) {
            prefix.push(next);
            permutations(prefix, n, out);
            prefix.pop();
        }
    }
}

fn expect_not_found(engine: &Engine, id: &str) {
    let listed = Ebs::new(engine).list_snapshot_blocks(ListSnapshotBlocksRequest {
        snapshot_id: id.to_string(),
        ..Default::default()
    });
    blocksnap::testing::expect_ebs(
        listed,
        "ResourceNotFoundException",
        Some("SNAPSHOT_NOT_FOUND"),
    );
}

#[test]
fn unique_bytes_predict_what_deletion_frees() {
    let storage = MemoryStorage::new();
    let engine = open(&storage);
    let lineage = write_lineage(&engine, &template(), &CHAIN);
    for (position, (id, _)) in lineage.iter().enumerate().rev() {
        collect_all(&engine);
        let before = engine.store_stats().expect("stats");
        let predicted = engine
            .snapshot_stats(blocksnap::testing::snapshot_id(id))
            .expect("snapshot stats");
        assert_eq!(
            predicted.written_bytes,
            CHAIN[position].len() as u64 * 524_288
        );
        delete(&engine, id);
        collect_all(&engine);
        let after = engine.store_stats().expect("stats");
        assert_eq!(
            before.stored_bytes - after.stored_bytes,
            predicted.unique_bytes,
            "snapshot {position}"
        );
        assert_eq!(
            before.stored_chunks - after.stored_chunks,
            predicted.unique_chunks
        );
    }
    let empty = engine.store_stats().expect("stats");
    assert_eq!((empty.stored_bytes, empty.stored_chunks), (0, 0));
}

#[test]
fn cancelling_frees_only_what_the_snapshot_introduced() {
    let storage = MemoryStorage::new();
    let engine = open(&storage);
    let lineage = write_lineage(&engine, &template(), &CHAIN[..2]);
    collect_all(&engine);
    let baseline = engine.store_stats().expect("stats");
    let child = Ebs::new(&engine)
        .start_snapshot(StartSnapshotRequest {
            parent_snapshot_id: Some(lineage[1].0.clone()),
            ..template()
        })
        .expect("start")
        .snapshot_id;
    // New data (seeds 20..), data the parent already holds (seed 6), zeros,
    // and an overwrite within the pending snapshot.
    for (index, seed) in [(0, 20), (1, 6), (2, 0), (3, 21), (3, 22)] {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&child, index, block(seed)))
            .expect("put");
    }
    assert!(engine.store_stats().expect("stats").stored_bytes > baseline.stored_bytes);
    Ebs::new(&engine)
        .cancel_snapshot(CancelSnapshotRequest {
            snapshot_id: child.clone(),
        })
        .expect("cancel");
    assert_audit_clean(&engine, "after cancel");
    collect_all(&engine);
    let after = engine.store_stats().expect("stats");
    assert_eq!(
        (after.stored_bytes, after.stored_chunks),
        (baseline.stored_bytes, baseline.stored_chunks)
    );
    for (id, content) in &lineage {
        assert!(holds_exactly(&engine, id, content).expect("read"));
    }
    // Error snapshots can be deleted; they held nothing any more.
    delete(&engine, &child);
    let deleted = engine.store_stats().expect("stats");
    assert_eq!(
        (deleted.stored_bytes, deleted.failed_snapshots),
        (after.stored_bytes, 0)
    );
}

#[test]
fn deletion_rules() {
    let storage = MemoryStorage::new();
    let engine = open(&storage);
    let lineage = write_lineage(&engine, &template(), &CHAIN[..1]);
    let pending = Ebs::new(&engine)
        .start_snapshot(StartSnapshotRequest {
            parent_snapshot_id: Some(lineage[0].0.clone()),
            ..template()
        })
        .expect("start")
        .snapshot_id;
    let attempt = |id: &str| {
        Ebs::new(&engine).delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: id.to_string(),
        })
    };
    blocksnap::testing::expect_ebs(
        attempt(&pending),
        "ValidationException",
        Some("INVALID_SNAPSHOT_ID"),
    );
    blocksnap::testing::expect_ebs(
        attempt(&lineage[0].0),
        "ValidationException",
        Some("INVALID_DEPENDENCY_REQUEST"),
    );
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&pending, 0))
        .expect("complete");
    attempt(&lineage[0].0).expect("a completed child no longer pins its parent");
    blocksnap::testing::expect_ebs(
        attempt(&lineage[0].0),
        "ResourceNotFoundException",
        Some("SNAPSHOT_NOT_FOUND"),
    );
    assert!(holds_exactly(&engine, &pending, &lineage[0].1).expect("read child"));
    // The deleted snapshot's client token is free again, and deletion is
    // durable across a reopen.
    drop(engine);
    let engine = open(&storage);
    expect_not_found(&engine, &lineage[0].0);
    assert!(holds_exactly(&engine, &pending, &lineage[0].1).expect("read child"));
    assert_audit_clean(&engine, "after reopen");
}

/// What the crash workload leaves, per snapshot: must survive, or may be
/// deleted (then it is gone or whole, never damaged).
struct Fixture {
    base: MemoryStorage,
    lineage: Lineage,
    unrelated: Lineage,
}

fn crash_fixture() -> Fixture {
    let base = MemoryStorage::new();
    let engine = open(&base);
    let lineage = write_lineage(&engine, &template(), &CHAIN);
    let unrelated = write_lineage(&engine, &template(), &[UNRELATED]);
    drop(engine);
    Fixture {
        base,
        lineage,
        unrelated,
    }
}

/// Deletes a parent, a middle snapshot and the unrelated one, collects,
/// then writes and completes a new child (so compaction output is
/// followed by fresh appends).
fn crash_workload(engine: &Engine, fixture: &Fixture) -> blocksnap::Result<()> {
    for id in [
        &fixture.lineage[0].0,
        &fixture.lineage[2].0,
        &fixture.unrelated[0].0,
    ] {
        Ebs::new(engine).delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: id.clone(),
        })?;
    }
    engine.collect_garbage(GcOptions {
        live_threshold: 1.0,
        ..GcOptions::default()
    })?;
    let child = Ebs::new(engine)
        .start_snapshot(StartSnapshotRequest {
            parent_snapshot_id: Some(fixture.lineage[4].0.clone()),
            ..template()
        })?
        .snapshot_id;
    Ebs::new(engine).put_snapshot_block(put_request(&child, 3, block(16)))?;
    Ebs::new(engine).complete_snapshot(complete_request(&child, 1))?;
    Ok(())
}

#[test]
fn crash_at_every_sync_point_of_delete_and_compaction() {
    let fixture = crash_fixture();
    let clean = fixture.base.crash_image(TornWrites::DropUnsynced);
    {
        let engine = open(&clean);
        crash_workload(&engine, &fixture).expect("clean run");
    }
    let total_syncs = clean.sync_count();
    assert!(total_syncs > 10, "{total_syncs} sync points");
    let must_survive = [1, 3, 4];
    let may_vanish = [
        (&fixture.lineage[0].0, &fixture.lineage[0].1),
        (&fixture.lineage[2].0, &fixture.lineage[2].1),
        (&fixture.unrelated[0].0, &fixture.unrelated[0].1),
    ];
    for torn in [
        TornWrites::DropUnsynced,
        TornWrites::KeepHalf,
        TornWrites::Scattered(7),
    ] {
        for k in 1..=total_syncs {
            let context = format!("crash at sync {k}/{total_syncs}, {torn:?}");
            let storage = fixture.base.crash_image(TornWrites::DropUnsynced);
            storage.crash_at_sync(k, torn);
            // Opening syncs too, so the crash may fire there.
            if let Ok(engine) = Engine::open_with(Arc::new(storage.clone()), config()) {
                let _ = crash_workload(&engine, &fixture);
            }
            let image = storage
                .crashed_image()
                .unwrap_or_else(|| panic!("{context}: the crash did not fire"));
            let engine = Engine::open_with(Arc::new(image.clone()), config())
                .unwrap_or_else(|error| panic!("{context}: recovery failed: {error}"));
            for &i in &must_survive {
                assert!(
                    holds_exactly(&engine, &fixture.lineage[i].0, &fixture.lineage[i].1)
                        .unwrap_or_else(|error| panic!("{context}: snapshot {i}: {error}")),
                    "{context}: snapshot {i} changed"
                );
            }
            for (id, content) in may_vanish {
                match holds_exactly(&engine, id, content) {
                    Ok(whole) => assert!(whole, "{context}: {id} changed"),
                    Err(error) => assert_eq!(
                        ebs_error(&error).code,
                        "ResourceNotFoundException",
                        "{context}: {id}: {error}"
                    ),
                }
            }
            assert_audit_clean(&engine, &context);
            let leftovers: Vec<String> = image
                .list("packs")
                .expect("list")
                .into_iter()
                .filter(|name| name.ends_with(".compact"))
                .collect();
            assert!(
                leftovers.is_empty(),
                "{context}: markers left: {leftovers:?}"
            );
            // The recovered store collects to exactly its live data.
            collect_all(&engine);
            let stats = engine.store_stats().expect("stats");
            assert_eq!(stats.garbage_bytes, 0, "{context}: {stats:?}");
            for &i in &must_survive {
                assert!(
                    holds_exactly(&engine, &fixture.lineage[i].0, &fixture.lineage[i].1)
                        .expect("read after collection"),
                    "{context}: snapshot {i} after collection"
                );
            }
        }
    }
}

#[test]
fn a_collection_can_stop_after_some_compactions_and_resume() {
    let storage = MemoryStorage::new();
    let engine = open(&storage);
    let lineage = write_lineage(&engine, &template(), &CHAIN);
    let unrelated = write_lineage(&engine, &template(), &[UNRELATED]);
    for (id, _) in &lineage[..4] {
        delete(&engine, id);
    }
    delete(&engine, &unrelated[0].0);
    let step = GcOptions {
        live_threshold: 1.0,
        max_compactions: Some(1),
        max_bytes_per_sec: Some(1 << 30),
        ..GcOptions::default()
    };
    let first = engine.collect_garbage(step).expect("first step");
    assert_eq!(first.compactions, 1);
    assert!(first.packs_remaining > 0, "{first:?}");
    assert!(first.bytes_freed > 0);
    assert!(engine.store_stats().expect("stats").garbage_bytes > 0);
    // Stopping is safe: the store reopens, and the next runs finish the job.
    drop(engine);
    let engine = open(&storage);
    let mut runs = 1;
    loop {
        let report = engine.collect_garbage(step).expect("next step");
        runs += 1;
        if report.compactions == 0 {
            break;
        }
    }
    assert!(runs > 2);
    assert_eq!(engine.store_stats().expect("stats").garbage_bytes, 0);
    assert!(holds_exactly(&engine, &lineage[4].0, &lineage[4].1).expect("read"));
}
