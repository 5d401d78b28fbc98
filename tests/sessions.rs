//! The engine's snapshot sessions: a reader pins its snapshot, so a delete
//! and a collection racing a restore, an export or a GetSnapshotBlock loop
//! leave the reader with exact bytes or a clean NotFound, never
//! `Corrupted`; a writer dropped before completing (an error, a panic)
//! leaves no pending snapshot and `verify` clean.

use blocksnap::api::{Ebs, StartSnapshotRequest};
use blocksnap::archive::{self, Bucket, ExportOptions, ExportOutcome};
use blocksnap::engine::{Abandon, BlockWrite, GcOptions, NewSnapshot, VerifyOptions};
use blocksnap::ids::{BlockIndex, SnapshotId, BLOCK_SIZE};
use blocksnap::testing::{block, get_listed, list_all_blocks, snapshot_id, write_lineage};
use blocksnap::volume::{self, RestoreOptions, RestoreOutcome};
use blocksnap::{Engine, Error};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Barrier;

static NEVER: AtomicBool = AtomicBool::new(false);

/// Blocks of each raced snapshot: enough that a read spans several packs'
/// worth of records and the collector has real copying to do.
const BLOCKS: u32 = 48;

/// Rounds of each race: each a fresh snapshot deleted and collected while
/// it is read, the reader sometimes ahead and sometimes behind.
const ROUNDS: u64 = 6;

fn collect_everything(engine: &Engine) {
    engine
        .collect_garbage(GcOptions {
            live_threshold: 1.0,
            ..GcOptions::default()
        })
        .expect("collect");
}

fn assert_clean(engine: &Engine, context: &str) {
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{context}: {report:?}");
    let audit = engine.audit_references().expect("audit");
    assert!(audit.mismatches.is_empty(), "{context}: {audit:?}");
}

/// A completed snapshot of `BLOCKS` distinct blocks (seeds from `first`),
/// beside a survivor snapshot sharing its packs, so collecting the deleted
/// one compacts packs rather than dropping them whole.
fn raced_snapshot(engine: &Engine, first: u64) -> (String, BTreeMap<u32, u64>) {
    let template = StartSnapshotRequest {
        volume_size: 1,
        ..StartSnapshotRequest::default()
    };
    let writes: Vec<(u32, u64)> = (0..BLOCKS)
        .map(|index| (index * 3, first + u64::from(index)))
        .collect();
    let survivor: Vec<(u32, u64)> = (0..4)
        .map(|index| (index, first + 1_000 + index as u64))
        .collect();
    let raced = write_lineage(engine, &template, &[&writes]);
    write_lineage(engine, &template, &[&survivor]);
    raced.into_iter().next().expect("one snapshot")
}

/// Whether the restored image at `path` is the 1 GiB volume holding
/// exactly `content`, zeros elsewhere (read a block at a time).
fn is_image_of(path: &std::path::Path, content: &BTreeMap<u32, u64>) -> bool {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).expect("open image");
    if file.metadata().expect("metadata").len() != 1 << 30 {
        return false;
    }
    let mut data = vec![0u8; BLOCK_SIZE];
    (0..(1u32 << 30) / BLOCK_SIZE as u32).all(|index| {
        file.read_exact_at(&mut data, u64::from(index) * BLOCK_SIZE as u64)
            .expect("read image");
        data == block(content.get(&index).copied().unwrap_or(0))
    })
}

/// Runs `read` against a delete of `id` and a full collection in another
/// thread, started together; returns what `read` returned.
fn race<T: Send>(
    engine: &Engine,
    id: &str,
    read: impl FnOnce() -> blocksnap::Result<T> + Send,
) -> blocksnap::Result<T> {
    let start = Barrier::new(2);
    std::thread::scope(|scope| {
        let remover = scope.spawn(|| {
            start.wait();
            engine.delete(snapshot_id(id)).expect("delete");
            collect_everything(engine);
        });
        start.wait();
        let result = read();
        remover.join().expect("remover");
        result
    })
}

/// Only a clean NotFound may replace the exact bytes.
fn assert_not_found<T: std::fmt::Debug>(result: blocksnap::Result<T>, context: &str) {
    match result {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{context}: expected exact bytes or NotFound, got {other:?}"),
    }
}

#[test]
fn a_reader_reads_its_snapshot_exactly_after_it_is_deleted_and_collected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path()).expect("open");
    let (id, content) = raced_snapshot(&engine, 1);
    let reader = engine.reader(snapshot_id(&id)).expect("reader");
    engine.delete(snapshot_id(&id)).expect("delete");
    collect_everything(&engine);
    // Deleted: nothing new can open it, and the counts still account for
    // the reader's pin.
    assert!(matches!(
        engine.reader(snapshot_id(&id)),
        Err(Error::NotFound { .. })
    ));
    assert_clean(&engine, "with the reader open");
    let stored_while_pinned = engine.store_stats().expect("stats").stored_bytes;
    for (index, seed) in &content {
        let (data, _) = reader
            .block(BlockIndex(*index))
            .expect("read")
            .expect("written");
        assert!(data[..] == block(*seed)[..], "block {index}");
    }
    let listed = reader.blocks(BlockIndex(0), 10_000).expect("list");
    assert_eq!(listed.entries.len(), content.len());
    // Dropping the last reader frees the chunks; the collector takes them.
    drop(reader);
    collect_everything(&engine);
    let after = engine.store_stats().expect("stats");
    assert!(
        after.stored_bytes < stored_while_pinned,
        "{} bytes stored after the reader closed, {stored_while_pinned} while it was open",
        after.stored_bytes
    );
    assert_eq!(after.garbage_bytes, 0);
    assert_clean(&engine, "after the reader closed");
}

#[test]
fn restore_racing_delete_and_gc_gives_the_exact_image_or_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path().join("store")).expect("open");
    for round in 0..ROUNDS {
        let (id, content) = raced_snapshot(&engine, 1 + round * 10_000);
        let output = dir.path().join(format!("restored-{round}.img"));
        let result = race(&engine, &id, || {
            volume::restore(
                &engine,
                snapshot_id(&id),
                &output,
                RestoreOptions::default(),
                &|_| {},
                &NEVER,
            )
        });
        match result {
            Ok(RestoreOutcome::Completed(_)) => {
                assert!(is_image_of(&output, &content), "round {round}: wrong bytes");
                std::fs::remove_file(&output).expect("remove image");
            }
            other => {
                assert_not_found(other, &format!("restore, round {round}"));
                assert!(!output.exists(), "round {round}: a partial image was left");
            }
        }
    }
    assert_clean(&engine, "after the restores");
}

#[test]
fn export_racing_delete_and_gc_gives_an_exact_archive_or_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path().join("store")).expect("open");
    let bucket_dir = dir.path().join("bucket");
    std::fs::create_dir(&bucket_dir).expect("bucket");
    let bucket = Bucket::Directory(bucket_dir);
    for round in 0..ROUNDS {
        let (id, content) = raced_snapshot(&engine, 1 + round * 10_000);
        let options = ExportOptions {
            name: Some(format!("round-{round}")),
            ..ExportOptions::default()
        };
        let result = race(&engine, &id, || {
            archive::export(
                &engine,
                snapshot_id(&id),
                &bucket,
                &options,
                &|_| {},
                &NEVER,
            )
        });
        match result {
            Ok(ExportOutcome::Completed(report)) => {
                // The archive imports back to exactly the snapshot's blocks.
                let (target, _, _) = blocksnap::testing::memory_engine(Default::default());
                let imported = match archive::import(
                    &target,
                    &bucket,
                    &report.key,
                    &Default::default(),
                    &|_| {},
                    &NEVER,
                ) {
                    Ok(archive::ImportOutcome::Completed(imported)) => imported,
                    other => panic!("round {round}: import {other:?}"),
                };
                assert_eq!(report.blocks, content.len() as u64);
                assert!(blocksnap::testing::holds_exactly(
                    &target,
                    &imported.snapshot_id.to_string(),
                    &content
                )
                .expect("read back"));
            }
            other => assert_not_found(other, &format!("export, round {round}")),
        }
    }
    assert_clean(&engine, "after the exports");
}

#[test]
fn get_snapshot_block_racing_delete_and_gc_gives_exact_blocks_or_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path()).expect("open");
    for round in 0..ROUNDS {
        let (id, content) = raced_snapshot(&engine, 1 + round * 10_000);
        let listed = list_all_blocks(&engine, &id).expect("list");
        let result = race(&engine, &id, || {
            let mut read = 0;
            for entry in &listed {
                let data = get_listed(&engine, &id, entry)?;
                assert!(
                    data[..] == block(content[&(entry.block_index as u32)])[..],
                    "round {round}: block {}",
                    entry.block_index
                );
                read += 1;
            }
            Ok(read)
        });
        match result {
            Ok(read) => assert_eq!(read, content.len()),
            other => assert_not_found(other, &format!("GetSnapshotBlock, round {round}")),
        }
    }
    assert_clean(&engine, "after the reads");
}

/// Fills a writer, then fails the way a bulk load fails: an engine error
/// (a block beyond the volume) returned through `?` drops the writer.
fn load_then_fail(engine: &Engine, abandon: Abandon) -> (SnapshotId, Error) {
    let mut writer = engine.writer(NewSnapshot::new(1)).expect("writer");
    writer.abandon_with(abandon);
    let snapshot = writer.snapshot_id();
    let load = || -> blocksnap::Result<()> {
        for index in 0..8u32 {
            writer.put_block(BlockIndex(index), &block(u64::from(index) + 7))?;
        }
        writer.put_block(BlockIndex(2048), &block(99))?;
        Ok(())
    };
    let error = load().expect_err("the block beyond the volume fails");
    drop(writer);
    (snapshot, error)
}

#[test]
fn a_writer_dropped_mid_load_leaves_no_pending_snapshot() {
    let (engine, _, _) = blocksnap::testing::memory_engine(Default::default());
    let (cancelled, error) = load_then_fail(&engine, Abandon::Cancel);
    assert!(matches!(error, Error::InvalidInput { .. }), "{error:?}");
    assert_eq!(engine.pending_snapshot_count(), 0);
    let record = engine.snapshot(cancelled).expect("record");
    assert_eq!(record.status_name(), "error");

    let (discarded, _) = load_then_fail(&engine, Abandon::Discard);
    assert_eq!(engine.pending_snapshot_count(), 0);
    assert!(matches!(
        engine.snapshot(discarded),
        Err(Error::NotFound { .. })
    ));

    // A panic mid-load unwinds through the writer the same way.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let writer = engine.writer(NewSnapshot::new(1)).expect("writer");
        writer.put_block(BlockIndex(0), &block(5)).expect("put");
        panic!("the load failed");
    }));
    assert!(panicked.is_err());
    assert_eq!(engine.pending_snapshot_count(), 0);
    assert_clean(&engine, "after the abandoned loads");
    // What the abandoned writers stored is garbage, and is collected.
    collect_everything(&engine);
    let stats = engine.store_stats().expect("stats");
    assert_eq!(stats.live_chunks, 0, "{stats:?}");
    assert_eq!(stats.stored_bytes, 0, "{stats:?}");
}

#[test]
fn a_writer_skips_what_its_parent_holds_and_completes_exactly() {
    let (engine, _, _) = blocksnap::testing::memory_engine(Default::default());
    let parent = {
        let writer = engine.writer(NewSnapshot::new(1)).expect("writer");
        for index in 0..4u32 {
            assert!(matches!(
                writer.put_block(BlockIndex(index), &block(u64::from(index) + 1)),
                Ok(BlockWrite::Written)
            ));
        }
        writer.complete().expect("complete").started.snapshot
    };
    let child = engine
        .writer(NewSnapshot {
            parent: Some(parent),
            ..NewSnapshot::new(1)
        })
        .expect("child writer");
    let zeros = vec![0u8; BLOCK_SIZE];
    assert!(matches!(
        child.put_block(BlockIndex(0), &block(1)),
        Ok(BlockWrite::Unchanged)
    ));
    assert!(matches!(
        child.put_block(BlockIndex(1), &block(42)),
        Ok(BlockWrite::Written)
    ));
    assert!(matches!(
        child.put_block_sparse(BlockIndex(9), &zeros),
        Ok(BlockWrite::SkippedZero)
    ));
    assert!(matches!(
        child.put_block_sparse(BlockIndex(2), &zeros),
        Ok(BlockWrite::Written)
    ));
    assert_eq!(
        (
            child.blocks_written(),
            child.blocks_unchanged(),
            child.zero_blocks_skipped()
        ),
        (2, 1, 1)
    );
    let completed = child.complete().expect("complete");
    assert_eq!(completed.status_name(), "completed");
    let reader = engine.reader(completed.started.snapshot).expect("reader");
    let expected = [
        (0, block(1)),
        (1, block(42)),
        (2, zeros.clone()),
        (3, block(4)),
    ];
    for (index, data) in expected {
        let (read, _) = reader
            .block(BlockIndex(index))
            .expect("read")
            .expect("written");
        assert!(read[..] == data[..], "block {index}");
    }
    assert!(reader.block(BlockIndex(9)).expect("read").is_none());
    let parent_reader = engine.reader(parent).expect("parent reader");
    let changed = reader
        .changes_since(Some(&parent_reader), BlockIndex(0), 100)
        .expect("changes");
    let indexes: Vec<u32> = changed.entries.iter().map(|entry| entry.index.0).collect();
    assert_eq!(indexes, [1, 2]);
    // Through the EBS façade the same snapshot reads the same.
    let ebs = Ebs::new(&engine);
    let listed =
        list_all_blocks(ebs.engine(), &completed.started.snapshot.to_string()).expect("list");
    assert_eq!(listed.len(), 4);
    assert_clean(&engine, "after the writers");
}
