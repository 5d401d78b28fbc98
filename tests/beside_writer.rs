//! A read-only view opened beside a writer of the same directory (as the
//! CLI's reading commands beside `serve`): it sees every snapshot
//! completed when it opened, keeps reading them whatever the writer then
//! deletes and collects, reports no damage for the writer's work in
//! flight, and never stops the writer.

use blocksnap::api::*;
use blocksnap::catalog::SnapshotState;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::engine::{GcOptions, VerifyOptions};
use blocksnap::storage::{LocalStorage, Storage};
use blocksnap::testing::{holds_exactly, put_request, write_lineage};
use blocksnap::{Engine, EngineConfig};
use std::sync::Arc;

fn config() -> EngineConfig {
    EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 1 << 20,
            ..ChunkStoreConfig::default()
        },
        node_cache_nodes: 0,
        ..EngineConfig::default()
    }
}

fn template() -> StartSnapshotRequest {
    StartSnapshotRequest {
        volume_size: 1,
        ..Default::default()
    }
}

#[test]
fn a_reader_beside_a_writer_keeps_its_view_while_the_writer_deletes_and_collects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = Engine::open_with(
        Arc::new(LocalStorage::open(dir.path()).expect("lock")),
        config(),
    )
    .expect("writer");
    let kept = write_lineage(&writer, &template(), &[&[(0, 1), (1, 2), (2, 3)]]);
    let doomed = write_lineage(&writer, &template(), &[&[(0, 11), (5, 12), (6, 13)]]);
    // A snapshot in flight: started, a block put, not completed.
    let pending = Ebs::new(&writer)
        .start_snapshot(template())
        .expect("start")
        .snapshot_id;
    Ebs::new(&writer)
        .put_snapshot_block(put_request(&pending, 9, blocksnap::testing::block(21)))
        .expect("put");

    let storage = LocalStorage::open_read_only(dir.path()).expect("read beside the writer");
    assert!(storage.beside_writer(), "the writer holds the lock");
    let reader = Engine::open_read_only_with(dir.path(), config()).expect("reader");
    assert!(
        reader.open_damage().is_empty(),
        "{:?}",
        reader.open_damage()
    );
    let report = reader.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert!(holds_exactly(&reader, &kept[0].0, &kept[0].1).expect("read kept"));

    // The writer deletes one snapshot and collects everything it freed:
    // the packs the reader holds open are compacted and removed.
    Ebs::new(&writer)
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: doomed[0].0.clone(),
        })
        .expect("delete");
    let collected = writer
        .collect_garbage(GcOptions {
            live_threshold: 1.0,
            ..GcOptions::default()
        })
        .expect("gc");
    assert!(collected.packs_removed > 0, "{collected:?}");
    let later = write_lineage(&writer, &template(), &[&[(3, 31)]]);

    // The reader's view stands: the deleted snapshot still reads
    // byte-identical, the later one is not in it, and it verifies clean.
    assert!(holds_exactly(&reader, &doomed[0].0, &doomed[0].1).expect("read doomed"));
    assert!(holds_exactly(&reader, &kept[0].0, &kept[0].1).expect("read kept"));
    assert!(reader
        .reader(validate::snapshot_id("SnapshotId", &later[0].0).expect("id"))
        .is_err());
    let report = reader.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");

    // A reader opened now sees the writer's present: the later snapshot,
    // not the deleted one; and still no damage.
    let fresh = Engine::open_read_only_with(dir.path(), config()).expect("fresh reader");
    assert!(fresh.open_damage().is_empty(), "{:?}", fresh.open_damage());
    assert!(holds_exactly(&fresh, &later[0].0, &later[0].1).expect("read later"));
    assert!(fresh
        .reader(validate::snapshot_id("SnapshotId", &doomed[0].0).expect("id"))
        .is_err());
    let report = fresh.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");

    // Readers beside it never stop the writer: the pending snapshot
    // completes, and the writer's own verify is clean.
    Ebs::new(&writer)
        .complete_snapshot(blocksnap::testing::complete_request(&pending, 1))
        .expect("complete");
    let report = writer.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

/// A writer thread that completes, deletes and collects without pause
/// (catalog compactions included), and readers opening beside it again and
/// again: every open finds no damage, verifies clean, and reads each
/// snapshot it lists byte-identical to what the writer completed.
#[test]
fn readers_opening_beside_a_busy_writer_never_see_damage_or_wrong_bytes() {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = Engine::open_with(
        Arc::new(LocalStorage::open(dir.path()).expect("lock")),
        EngineConfig {
            chunk_store: ChunkStoreConfig {
                pack_target_size: 256 << 10,
                ..ChunkStoreConfig::default()
            },
            ..EngineConfig::default()
        },
    )
    .expect("writer");
    // What each completed snapshot holds, published once it completed.
    let completed: parking_lot::Mutex<HashMap<String, BTreeMap<u32, u64>>> =
        parking_lot::Mutex::default();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writing = scope.spawn(|| {
            let (mut packs_removed, mut catalog_bytes_freed) = (0, 0);
            let mut live: Vec<String> = Vec::new();
            for round in 0..120u64 {
                let writes: Vec<(u32, u64)> = (0..3)
                    .map(|slot| ((round * 7 + slot) as u32 % 16, round * 3 + slot + 1))
                    .collect();
                let lineage = write_lineage(&writer, &template(), &[&writes]);
                let (id, content) = lineage.into_iter().next().expect("one");
                completed.lock().insert(id.clone(), content);
                live.push(id);
                // Keep a handful: delete the oldest, so packs fill with
                // garbage and the catalog with dead records.
                if live.len() > 4 {
                    let oldest = live.remove(0);
                    Ebs::new(&writer)
                        .delete_snapshot(DeleteSnapshotRequest {
                            snapshot_id: oldest,
                        })
                        .expect("delete");
                }
                if round % 10 == 9 {
                    let collected = writer
                        .collect_garbage(GcOptions {
                            live_threshold: 0.9,
                            ..GcOptions::default()
                        })
                        .expect("gc");
                    packs_removed += collected.packs_removed;
                    catalog_bytes_freed += collected.catalog_bytes_freed;
                }
            }
            done.store(true, Ordering::Release);
            (packs_removed, catalog_bytes_freed)
        });
        let mut opens = 0;
        while !done.load(Ordering::Acquire) || opens < 3 {
            let reader = Engine::open_read_only_with(dir.path(), config()).expect("reader");
            opens += 1;
            assert!(
                reader.open_damage().is_empty(),
                "{:?}",
                reader.open_damage()
            );
            let report = reader.verify(VerifyOptions::default()).expect("verify");
            assert!(report.is_clean(), "{report:?}");
            for record in reader.snapshots() {
                if !matches!(record.state, SnapshotState::Completed { .. }) {
                    continue;
                }
                let id = record.started.snapshot.to_string();
                // The writer publishes a snapshot just after its
                // completion returns.
                let content = (0..1000)
                    .find_map(|_| {
                        let found = completed.lock().get(&id).cloned();
                        if found.is_none() {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        found
                    })
                    .unwrap_or_else(|| panic!("{id} listed completed but never completed"));
                assert!(holds_exactly(&reader, &id, &content).expect("read"), "{id}");
            }
        }
        assert!(opens >= 3);
        let (packs_removed, catalog_bytes_freed) = writing.join().expect("writer");
        assert!(
            packs_removed > 0 && catalog_bytes_freed > 0,
            "the readers met pack removals ({packs_removed}) and catalog compactions ({catalog_bytes_freed} bytes)"
        );
    });
}

/// A change met half-made while opening beside a writer (a catalog
/// segment or a pack removed between listing and opening it: a compaction)
/// makes the open start again; a file that stays unreadable is an error
/// after the last attempt, never a view with snapshots missing.
#[test]
fn an_open_beside_a_writer_that_meets_a_removed_file_starts_again() {
    use blocksnap::storage::{Fault, FaultPoint, MemoryStorage};
    let storage = MemoryStorage::new();
    let writer = Engine::open_with(Arc::new(storage.clone()), config()).expect("writer");
    let lineage = write_lineage(&writer, &template(), &[&[(0, 1), (4, 2)], &[(4, 3)]]);
    for prefix in ["catalog/", "packs/"] {
        storage.inject(Fault {
            point: FaultPoint::Read,
            prefix: prefix.into(),
            kind: std::io::ErrorKind::NotFound,
            times: 2,
        });
        let reader = Engine::open_with(Arc::new(storage.beside_writer_view()), config())
            .unwrap_or_else(|error| panic!("{prefix}: {error}"));
        for (id, content) in &lineage {
            assert!(
                holds_exactly(&reader, id, content).expect("read"),
                "{prefix}"
            );
        }
    }
    storage.inject(Fault {
        point: FaultPoint::Read,
        prefix: "catalog/".into(),
        kind: std::io::ErrorKind::NotFound,
        times: blocksnap::engine::BESIDE_WRITER_ATTEMPTS as usize,
    });
    assert!(Engine::open_with(Arc::new(storage.beside_writer_view()), config()).is_err());
    // Without a writer beside, the first failure is the answer.
    storage.inject(Fault {
        point: FaultPoint::Read,
        prefix: "catalog/".into(),
        kind: std::io::ErrorKind::NotFound,
        times: 1,
    });
    assert!(Engine::open_with(Arc::new(storage.read_only_view()), config()).is_err());
    assert!(Engine::open_with(Arc::new(storage.read_only_view()), config()).is_ok());
}
