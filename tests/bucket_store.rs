//! The store in a bucket (`BucketStorage`): what a directory store does,
//! with the bucket as the only thing that survives. Completed snapshots
//! read back byte-identical from a fresh local directory; a stale writer
//! is fenced; a crash between any two bucket requests, and every fault the
//! in-memory bucket injects, lose nothing acknowledged and return no wrong
//! byte. The same workload runs against SeaweedFS on loopback.

mod support;

use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::engine::{GcReport, NewSnapshot};
use blocksnap::ids::BlockIndex;
use blocksnap::ids::SnapshotId;
use blocksnap::storage::object::{MemoryObjectStore, ObjectFault, ObjectOperation, ObjectStore};
use blocksnap::storage::{BucketOptions, BucketStorage, Storage};
use blocksnap::testing::{block, test_client};
use blocksnap::{Engine, EngineConfig, Error};
use std::collections::BTreeMap;
use std::sync::Arc;
use support::s3_servers::S3Server;

fn config() -> EngineConfig {
    EngineConfig {
        // Small packs: a workload seals several.
        chunk_store: ChunkStoreConfig {
            pack_target_size: 1 << 20,
            ..ChunkStoreConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// No grace period: what gc removes is deleted at its next commit.
fn options() -> BucketOptions {
    BucketOptions {
        cache_bytes: 64 << 20,
        deletion_grace: std::time::Duration::ZERO,
    }
}

fn open(bucket: &Arc<dyn ObjectStore>, local: &std::path::Path) -> Result<Engine, Error> {
    let storage = BucketStorage::open(test_client(bucket.clone()), local, options())?;
    Engine::open_with(Arc::new(storage), config())
}

/// A completed snapshot: its id and every block's seed.
type Written = (SnapshotId, BTreeMap<u32, u64>);

/// Writes a snapshot of `blocks` (index, seed) on top of `parent`.
fn write(
    engine: &Engine,
    parent: Option<&Written>,
    blocks: &[(u32, u64)],
) -> Result<Written, Error> {
    let mut request = NewSnapshot::new(1);
    request.parent = parent.map(|(id, _)| *id);
    let writer = engine.writer(request)?;
    for (index, seed) in blocks {
        writer.put_block(BlockIndex(*index), &block(*seed))?;
    }
    let id = writer.snapshot_id();
    writer.complete()?;
    let mut content = parent
        .map(|(_, content)| content.clone())
        .unwrap_or_default();
    content.extend(blocks.iter().copied());
    Ok((id, content))
}

/// Checks that `snapshot` reads back exactly.
fn check(engine: &Engine, snapshot: &Written) {
    check_reads(engine, snapshot, false);
}

/// Checks that every block of `snapshot` reads back exactly or, when
/// `failures_allowed` (the bucket is failing), fails with an error: never
/// a wrong byte.
fn check_reads(engine: &Engine, (id, content): &Written, failures_allowed: bool) {
    let reader = match engine.reader(*id) {
        Ok(reader) => reader,
        Err(_) if failures_allowed => return,
        Err(error) => panic!("reader of {id}: {error}"),
    };
    for index in 0..12u32 {
        let read = match reader.block(BlockIndex(index)) {
            Ok(read) => read,
            Err(_) if failures_allowed => continue,
            Err(error) => panic!("{id} block {index}: {error}"),
        };
        match content.get(&index) {
            Some(seed) => assert_eq!(
                read.map(|(bytes, _)| bytes.to_vec()),
                Some(block(*seed)),
                "{id} block {index}"
            ),
            None => assert!(read.is_none(), "{id} block {index} was never written"),
        }
    }
}

fn workload(engine: &Engine, written: &mut Vec<Written>) -> Result<GcReport, Error> {
    let first = write(engine, None, &[(0, 1), (1, 2), (2, 3), (3, 0), (4, 5)])?;
    written.push(first.clone());
    let second = write(engine, Some(&first), &[(1, 7), (5, 8), (6, 2)])?;
    written.push(second.clone());
    let third = write(engine, None, &[(0, 1), (7, 9), (8, 10), (9, 11)])?;
    written.push(third);
    engine.delete(first.0)?;
    written.remove(0);
    let doomed = write(engine, None, &[(0, 40), (1, 41), (2, 42)])?;
    engine.delete(doomed.0)?;
    // With no grace, the packs gc condemns are deleted at once: the crash
    // test crashes between those requests too.
    engine.collect_garbage(blocksnap::engine::GcOptions::default())
}

fn round_trip(bucket: Arc<dyn ObjectStore>) {
    let local = tempfile::tempdir().expect("tempdir");
    let mut written = Vec::new();
    {
        let engine = open(&bucket, local.path()).expect("open");
        let report = workload(&engine, &mut written).expect("workload");
        assert!(report.packs_removed > 0, "{report:?}");
        for snapshot in &written {
            check(&engine, snapshot);
        }
    }
    // A fresh local directory: everything comes from the bucket.
    let fresh = tempfile::tempdir().expect("tempdir");
    let engine = open(&bucket, fresh.path()).expect("reopen");
    assert_eq!(engine.snapshots().len(), written.len());
    for snapshot in &written {
        check(&engine, snapshot);
    }
    let report = engine.verify(Default::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
    // And it keeps working there.
    let more = write(&engine, Some(&written[0]), &[(10, 12)]).expect("child");
    check(&engine, &more);
    drop(engine);
    let read_only = BucketStorage::open_read_only(
        test_client(bucket.clone()),
        &fresh.path().join("never-made"),
        options(),
    )
    .expect("read-only");
    assert!(read_only.is_read_only());
    let engine = Engine::open_with(Arc::new(read_only), config()).expect("read-only engine");
    check(&engine, &more);
}

#[test]
fn completed_snapshots_come_back_from_the_bucket_alone() {
    round_trip(Arc::new(MemoryObjectStore::new()));
}

#[test]
fn completed_snapshots_come_back_from_seaweedfs_alone() {
    let server = S3Server::seaweedfs();
    round_trip(Arc::new(server.store("round-trip")));
}

#[test]
fn completed_snapshots_come_back_from_moto_alone() {
    let server = S3Server::moto();
    round_trip(Arc::new(server.store("round-trip")));
}

/// The bytes of every object under `packs/` of `bucket`.
fn packed(bucket: &Arc<dyn ObjectStore>) -> u64 {
    bucket
        .list("packs/")
        .expect("list")
        .iter()
        .map(|object| object.len)
        .sum()
}

/// Local directories for two writers.
fn two_directories() -> [tempfile::TempDir; 2] {
    [(); 2].map(|()| tempfile::tempdir().expect("dir"))
}

/// Opens a writer and keeps its storage, for the registration calls.
fn open_keeping(
    bucket: &Arc<dyn ObjectStore>,
    local: &std::path::Path,
) -> Result<(Engine, BucketStorage), Error> {
    let storage = BucketStorage::open(test_client(bucket.clone()), local, options())?;
    let engine = Engine::open_with(Arc::new(storage.clone()), config())?;
    Ok((engine, storage))
}

#[test]
fn a_writer_declared_gone_is_fenced_and_writes_nothing_more() {
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let [first_dir, second_dir] = two_directories();
    let (stale, stale_storage) = open_keeping(&bucket, first_dir.path()).expect("first writer");
    let kept = write(&stale, None, &[(0, 1)]).expect("before it is declared gone");
    // A snapshot the stale writer leaves pending.
    let abandoned = stale.writer(NewSnapshot::new(1)).expect("start");
    abandoned.put_block(BlockIndex(5), &block(5)).expect("put");
    let abandoned_id = abandoned.snapshot_id();
    std::mem::forget(abandoned);
    let (current, current_storage) =
        open_keeping(&bucket, second_dir.path()).expect("second writer");
    assert_eq!(current_storage.writers().len(), 2, "both are registered");
    assert_eq!(
        current.snapshot(abandoned_id).expect("known").status_name(),
        "pending"
    );
    assert!(current_storage
        .fence_writer(stale_storage.writer_id())
        .expect("fence"));
    // Its pending snapshot can never complete: the next look at the
    // store fails it.
    current.refresh().expect("refresh");
    assert_eq!(
        current.snapshot(abandoned_id).expect("known").status_name(),
        "error"
    );
    let after = write(&current, Some(&kept), &[(2, 3)]).expect("the other writer writes");
    let error = write(&stale, None, &[(1, 2), (3, 4)]).expect_err("fenced");
    assert!(error.to_string().contains("fenced"), "{error}");
    drop((stale, current, stale_storage, current_storage));
    let (engine, storage) =
        open_keeping(&bucket, tempfile::tempdir().expect("dir").path()).expect("reopen");
    assert_eq!(engine.snapshots().len(), 3);
    check(&engine, &kept);
    check(&engine, &after);
    // Writers that closed took their registrations out.
    assert_eq!(storage.writers().len(), 1, "{:?}", storage.writers());
}

/// A writer that crashed (its registration left in the head) and comes
/// back from the same local directory replaces its registration: crashed
/// writers do not pile up, and do not keep gc from running.
#[test]
fn a_crashed_writer_coming_back_replaces_its_registration() {
    let memory = Arc::new(MemoryObjectStore::new());
    let bucket: Arc<dyn ObjectStore> = memory.clone();
    let local = tempfile::tempdir().expect("dir");
    let (engine, storage) = open_keeping(&bucket, local.path()).expect("open");
    let kept = write(&engine, None, &[(0, 1)]).expect("write");
    // The crash: nothing more reaches the bucket, not even the
    // deregistration a closing writer sends.
    memory.halt_after(Some(0));
    drop((engine, storage));
    memory.halt_after(None);
    let (engine, storage) = open_keeping(&bucket, local.path()).expect("back");
    assert_eq!(storage.writers().len(), 1, "{:?}", storage.writers());
    check(&engine, &kept);
    engine
        .collect_garbage(Default::default())
        .expect("alone again");
}

/// Two writers open one store at once: each commits whatever the other
/// committed in between (a lost head race is redone on top), sees the
/// other's snapshots, and does not store again what the other stored.
#[test]
fn two_writers_commit_at_once_and_see_each_others_snapshots() {
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let [first_dir, second_dir] = two_directories();
    let (first, first_storage) = open_keeping(&bucket, first_dir.path()).expect("first");
    let (second, second_storage) = open_keeping(&bucket, second_dir.path()).expect("second");
    // Interleaved: both start, both put, then both complete; each commit
    // finds the head moved by the other's.
    let first_writer = first.writer(NewSnapshot::new(1)).expect("start");
    let second_writer = second.writer(NewSnapshot::new(1)).expect("start");
    for (index, seed) in [(0u32, 1u64), (1, 2)] {
        first_writer
            .put_block(BlockIndex(index), &block(seed))
            .expect("put");
        second_writer
            .put_block(BlockIndex(index + 5), &block(seed + 10))
            .expect("put");
    }
    let (first_id, second_id) = (first_writer.snapshot_id(), second_writer.snapshot_id());
    // The other writer's pending snapshot takes no puts here.
    let refused = second
        .put_block(
            first_id,
            BlockIndex(3),
            &block(3),
            &blocksnap::codec::sha256(&block(3)),
        )
        .expect_err("another writer's pending snapshot");
    let owner = blocksnap::storage::hex_id(&first_storage.writer_id());
    assert!(
        refused.to_string().contains(&format!("writer {owner}")),
        "the error names the writer that started it: {refused}"
    );
    first_writer.complete().expect("first completes");
    second_writer
        .complete()
        .expect("second completes on top of it");
    let first_written: Written = (first_id, BTreeMap::from([(0, 1), (1, 2)]));
    let second_written: Written = (second_id, BTreeMap::from([(5, 11), (6, 12)]));
    // Each reads the other's snapshot (an unknown id reads the head).
    check(&first, &second_written);
    check(&second, &first_written);
    assert_eq!(first.snapshots().len(), 2);
    assert_eq!(second.snapshots().len(), 2);
    // Data the first stored is not stored again by the second.
    let before = packed(&bucket);
    let again = write(&second, None, &[(0, 1), (1, 2)]).expect("same data");
    let grown = packed(&bucket) - before;
    assert!(
        grown < blocksnap::ids::BLOCK_SIZE as u64,
        "{grown} bytes more for blocks the other writer stored"
    );
    check(&first, &again);
    // Either collects while the other writes.
    second.delete(again.0).expect("delete");
    first
        .collect_garbage(Default::default())
        .expect("collects beside the other writer");
    let third_written =
        write(&second, Some(&second_written), &[(7, 13)]).expect("the other writes on");
    second
        .collect_garbage(Default::default())
        .expect("and the other collects too");
    drop((second, second_storage));
    drop((first, first_storage));
    let engine = open(&bucket, tempfile::tempdir().expect("dir").path()).expect("reopen");
    assert_eq!(engine.snapshots().len(), 3);
    for snapshot in [&first_written, &second_written, &third_written] {
        check(&engine, snapshot);
    }
    let report = engine.verify(Default::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

/// A writer deduplicates against chunks that are garbage everywhere else
/// (another writer's deleted snapshot), and that writer's collection
/// condemns their pack before the first commits: the commit copies them
/// out first (the pack is still readable within its grace period), so
/// the snapshot survives the pack's deletion. Without the copy, reading it
/// back after the deletion fails.
#[test]
fn a_chunk_collected_while_a_pending_snapshot_references_it_is_stored_again() {
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let [first_dir, second_dir] = two_directories();
    let with_grace = BucketOptions {
        deletion_grace: std::time::Duration::from_secs(3600),
        ..options()
    };
    let open_with_grace = |local: &std::path::Path| {
        let storage = BucketStorage::open(test_client(bucket.clone()), local, with_grace.clone())
            .expect("bucket");
        Engine::open_with(Arc::new(storage), config()).expect("open")
    };
    let writing = open_with_grace(first_dir.path());
    let collecting = open_with_grace(second_dir.path());
    let blocks = [(0, 100), (1, 101), (2, 102)];
    let garbage = write(&collecting, None, &blocks).expect("write");
    collecting.delete(garbage.0).expect("delete");
    // The writer sees those chunks and deduplicates against them.
    writing.refresh().expect("refresh");
    let pending = writing.writer(NewSnapshot::new(1)).expect("start");
    for (index, seed) in blocks {
        pending
            .put_block(BlockIndex(index), &block(seed))
            .expect("put");
    }
    let report = collecting
        .collect_garbage(Default::default())
        .expect("collect beside the pending snapshot");
    assert!(report.packs_removed >= 1, "{report:?}");
    let id = pending.snapshot_id();
    pending.complete().expect("complete after the collection");
    let written: Written = (id, blocks.into_iter().collect());
    check(&writing, &written);
    drop((writing, collecting));
    // A writer with no grace deletes every condemned pack at its commit.
    let purging = open(&bucket, tempfile::tempdir().expect("dir").path()).expect("open");
    write(&purging, None, &[(9, 9)]).expect("a commit");
    drop(purging);
    assert!(
        objects(&bucket, "packs/")
            .iter()
            .all(|name| !name.contains(".compact")),
        "markers stay in their writers' directories"
    );
    let engine = open(&bucket, tempfile::tempdir().expect("dir").path()).expect("reopen");
    check(&engine, &written);
    let report = engine.verify(Default::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

/// A writer that dies between uploading a pack and uploading its index
/// (killed, or its index write failed and it exited) leaves a whole pack
/// that no writer's directory stages. Whoever collects next writes that
/// index (the bytes its writer would have written), so the pack's garbage
/// goes and its live chunks stay: a writer that opens afterwards, and one
/// that was open before the packs appeared (which also reads them).
#[test]
fn packs_whose_writer_died_before_indexing_them_are_indexed_and_collected() {
    for open_before in [false, true] {
        packs_left_unindexed_are_collected(open_before);
    }
}

fn packs_left_unindexed_are_collected(open_before: bool) {
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let [collector_dir, dying_dir] = two_directories();
    let early = open_before.then(|| open(&bucket, collector_dir.path()).expect("open before"));
    let (kept, doomed) = {
        let dying = open(&bucket, dying_dir.path()).expect("the writer that dies");
        let kept = write(&dying, None, &[(0, 61), (1, 62)]).expect("kept");
        let doomed = write(&dying, None, &[(2, 63), (3, 64), (4, 65)]).expect("doomed");
        dying.delete(doomed.0).expect("delete");
        (kept, doomed)
    };
    drop(dying_dir);
    let indexes: BTreeMap<String, Vec<u8>> = objects(&bucket, "packs/")
        .into_iter()
        .filter(|name| name.ends_with(".idx"))
        .map(|name| {
            let bytes = bucket.get(&name, None).expect("index").to_vec();
            (name, bytes)
        })
        .collect();
    assert!(indexes.len() >= 2, "{indexes:?}");
    for name in indexes.keys() {
        bucket.delete(name, None).expect("the index never arrived");
    }
    let collector = match early {
        Some(early) => early,
        None => open(&bucket, collector_dir.path()).expect("open after"),
    };
    let report = collector
        .collect_garbage(blocksnap::engine::GcOptions {
            live_threshold: 1.0,
            ..Default::default()
        })
        .expect("gc");
    assert!(report.packs_damaged.is_empty(), "{report:?}");
    assert!(report.packs_removed >= 1, "{report:?}");
    let stats = collector.store_stats().expect("stats");
    assert_eq!(stats.stored_bytes, stats.live_bytes, "{stats:?}");
    check(&collector, &kept);
    assert!(collector.reader(doomed.0).is_err());
    assert!(collector
        .verify(Default::default())
        .expect("verify")
        .is_clean());
    drop(collector);
    let listed = objects(&bucket, "packs/");
    for pack in listed.iter().filter(|name| name.ends_with(".pack")) {
        let index = pack.replace(".pack", ".idx");
        assert!(listed.contains(&index), "{pack} has no index: {listed:?}");
        if let Some(original) = indexes.get(&index) {
            assert_eq!(
                &bucket.get(&index, None).expect("index").to_vec(),
                original,
                "{index} is the bytes its writer wrote"
            );
        }
    }
    let engine = open(&bucket, tempfile::tempdir().expect("dir").path()).expect("reopen");
    check(&engine, &kept);
    assert!(engine
        .verify(Default::default())
        .expect("verify")
        .is_clean());
}

/// A snapshot another writer completed reads at once even when the
/// index of a pack it references never reached the bucket (that writer's
/// index upload failed): the reader loads such packs on a miss.
#[test]
fn a_snapshot_whose_pack_lost_its_index_reads_through_a_writer_open_before() {
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let [reader_dir, writer_dir] = two_directories();
    let reader = open(&bucket, reader_dir.path()).expect("open before");
    let written = {
        let writer = open(&bucket, writer_dir.path()).expect("writer");
        write(&writer, None, &[(0, 71), (3, 72), (7, 73)]).expect("write")
    };
    for name in objects(&bucket, "packs/") {
        if name.ends_with(".idx") {
            bucket.delete(&name, None).expect("the index never arrived");
        }
    }
    check(&reader, &written);
    let report = reader.verify(Default::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

/// Both writers delete one snapshot: the second's delete is redone on
/// top of the first's and answers not found, even when its storage took
/// the first's commit in before its catalog did (a lookup on another
/// thread): a transition never appends on a stale view of the catalog.
#[test]
fn a_transition_redone_on_top_of_another_writers_sees_its_effect() {
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let [first_dir, second_dir] = two_directories();
    let (first, first_storage) = open_keeping(&bucket, first_dir.path()).expect("first");
    let shared = write(&first, None, &[(0, 1)]).expect("write");
    let (second, _second_storage) = open_keeping(&bucket, second_dir.path()).expect("second");
    second.delete(shared.0).expect("the second deletes it");
    // The first's storage takes that commit in; its catalog has not yet.
    assert!(Storage::refresh(&first_storage).expect("refresh"));
    let again = first.delete(shared.0).expect_err("already deleted");
    assert!(matches!(again, Error::NotFound { .. }), "{again}");
    let kept = write(&first, None, &[(1, 2)]).expect("the first still writes");
    drop((first, first_storage, second));
    let engine = open(&bucket, tempfile::tempdir().expect("dir").path()).expect("reopen");
    assert_eq!(engine.snapshots().len(), 1);
    check(&engine, &kept);
    let report = engine.verify(Default::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

/// A writer that only stores blocks still looks for the other writers'
/// packs every few seconds (by the engine's clock): data another writer
/// stored meanwhile is found and not stored again.
#[test]
fn a_writer_storing_blocks_finds_what_another_stored_meanwhile() {
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let clock = Arc::new(blocksnap::clock::ManualClock::new(1_800_000_000_000));
    let open_clocked = |local: &std::path::Path| {
        let storage =
            BucketStorage::open(test_client(bucket.clone()), local, options()).expect("storage");
        Engine::open_with(
            Arc::new(storage),
            EngineConfig {
                clock: clock.clone(),
                ..config()
            },
        )
        .expect("engine")
    };
    let [first_dir, second_dir] = two_directories();
    let first = open_clocked(first_dir.path());
    let second = open_clocked(second_dir.path());
    let writer = second.writer(NewSnapshot::new(1)).expect("start");
    writer.put_block(BlockIndex(0), &block(8)).expect("put");
    // The first stores blocks the second is about to store too (random
    // ones: zstd cannot shrink them).
    write(&first, None, &[(1, 2), (2, 5)]).expect("first");
    clock.advance(std::time::Duration::from_secs(6));
    let before = packed(&bucket);
    writer.put_block(BlockIndex(1), &block(2)).expect("put");
    writer.put_block(BlockIndex(2), &block(5)).expect("put");
    let id = writer.snapshot_id();
    writer.complete().expect("complete");
    let grown = packed(&bucket) - before;
    // Its own first block and the map, not the two the first writer
    // stored (three random blocks if it had stored them again).
    assert!(
        grown < 2 * blocksnap::ids::BLOCK_SIZE as u64,
        "{grown} bytes more: the other writer's blocks were stored again"
    );
    check(&first, &(id, BTreeMap::from([(0, 8), (1, 2), (2, 5)])));
}

/// Writers on several threads, each with its own local directory, commit
/// snapshots into one store at once: nothing is lost, and a fresh writer
/// reads every one back.
#[test]
fn concurrent_writers_lose_no_snapshot() {
    const WRITERS: u64 = 4;
    const SNAPSHOTS: u64 = 6;
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let written: Vec<Written> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let bucket = bucket.clone();
                scope.spawn(move || {
                    let local = tempfile::tempdir().expect("dir");
                    let engine = open(&bucket, local.path()).expect("open");
                    let mut mine = Vec::new();
                    let mut parent: Option<Written> = None;
                    for round in 0..SNAPSHOTS {
                        // Half the blocks are the same in every writer.
                        let blocks = [(0, round), (1, 100 + writer * 1000 + round)];
                        let snapshot = write(&engine, parent.as_ref(), &blocks).expect("write");
                        parent = Some(snapshot.clone());
                        mine.push(snapshot);
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("writer"))
            .collect()
    });
    let engine = open(&bucket, tempfile::tempdir().expect("dir").path()).expect("reopen");
    assert_eq!(engine.snapshots().len(), written.len());
    for snapshot in &written {
        check(&engine, snapshot);
    }
    let report = engine.verify(Default::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

/// The objects in the bucket under `prefix`.
fn objects(bucket: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = bucket
        .list(prefix)
        .expect("list")
        .into_iter()
        .map(|object| object.name)
        .collect();
    names.sort();
    names
}

/// What gc removes stays in the bucket for its grace period: a reader that
/// opened the store before reads a deleted snapshot to its end meanwhile,
/// and a later writer's pack never takes a condemned pack's name. A
/// writer opened after the grace deletes the condemned objects, and the
/// old reader then reads right bytes or gets an error, never a wrong byte.
#[test]
fn removed_objects_stay_for_readers_until_their_grace_is_over() {
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let with_grace = |grace: std::time::Duration| BucketOptions {
        cache_bytes: 0,
        deletion_grace: grace,
    };
    let hour = std::time::Duration::from_secs(3600);
    let local = tempfile::tempdir().expect("dir");
    // A writer that keeps what gc removes for an hour.
    let open_writer = || {
        let storage =
            BucketStorage::open(test_client(bucket.clone()), local.path(), with_grace(hour))
                .expect("open");
        Engine::open_with(Arc::new(storage), config()).expect("engine")
    };
    let writer = open_writer();
    let doomed = write(&writer, None, &[(0, 21), (1, 22), (2, 23), (3, 24)]).expect("doomed");
    let reader = Engine::open_with(
        Arc::new(
            BucketStorage::open_read_only(
                test_client(bucket.clone()),
                &local.path().join("absent"),
                with_grace(hour),
            )
            .expect("reader"),
        ),
        config(),
    )
    .expect("reader engine");
    let packs_before = objects(&bucket, "packs/");
    writer.delete(doomed.0).expect("delete");
    let report = writer
        .collect_garbage(blocksnap::engine::GcOptions::default())
        .expect("gc");
    assert!(report.packs_removed > 0, "{report:?}");
    assert_eq!(
        objects(&bucket, "packs/"),
        packs_before,
        "nothing deleted yet"
    );
    let client = test_client(bucket.clone());
    let head = match client.read_all("head").expect("head") {
        Some(body) => blocksnap::format::head::Head::decode(&body).expect("decodes"),
        None => panic!("no head"),
    };
    assert!(!head.condemned.is_empty(), "{head:?}");
    // The writer no longer sees them; the old reader still reads them.
    assert!(writer.reader(doomed.0).is_err());
    check(&reader, &doomed);
    drop(writer);
    // A writer opened within the grace names its packs past the condemned
    // ones (an upload over one would fail create-only).
    let writer = open_writer();
    let kept = write(&writer, None, &[(0, 31), (5, 32)]).expect("a later snapshot");
    assert!(writer
        .verify(Default::default())
        .expect("verify")
        .is_clean());
    for condemned in &head.condemned {
        assert!(client.head(&condemned.object).expect("head").is_some());
    }
    drop(writer);
    // A new reader sees the store without them.
    let fresh = open(&bucket, tempfile::tempdir().expect("dir").path()).expect("reopen");
    assert!(fresh.reader(doomed.0).is_err());
    check(&fresh, &kept);
    assert!(fresh.verify(Default::default()).expect("verify").is_clean());
    // `open` uses no grace: the condemned objects are deleted.
    for condemned in &head.condemned {
        assert!(
            client.head(&condemned.object).expect("head").is_none(),
            "{} is still there",
            condemned.object
        );
    }
    // The old reader may still hold some windows in memory: what it reads
    // is right or an error.
    check_reads(&reader, &doomed, true);
}

/// Bit rot at rest in every object of a bucket store (a byte flipped at
/// its start, middle and end, or the object cut in half), then a
/// read-only open from a fresh local directory: only damage to the head
/// fails the open (it names the head); otherwise nothing but a damaged
/// pack costs a read, no read returns a wrong byte, `verify` reports
/// the damage, and nothing is written to the bucket.
#[test]
fn damage_to_any_object_is_found_and_costs_only_what_it_touches() {
    let memory = Arc::new(MemoryObjectStore::new());
    let bucket: Arc<dyn ObjectStore> = memory.clone();
    let mut written = Vec::new();
    {
        let engine = open(&bucket, tempfile::tempdir().expect("dir").path()).expect("open");
        workload(&engine, &mut written).expect("workload");
    }
    let names = memory.names();
    assert!(
        names.iter().any(|name| name.starts_with("log/")),
        "{names:?}"
    );
    assert!(names.iter().any(|name| name.ends_with(".idx")), "{names:?}");
    let scratch = tempfile::tempdir().expect("dir");
    let writes =
        || memory.requests(ObjectOperation::Put) + memory.requests(ObjectOperation::Delete);
    let writes_before = writes();
    for name in names {
        let original = bucket.get(&name, None).expect("get");
        let len = original.len();
        // (offset, flipped: else cut there)
        let damages = [
            (0, true),
            (len / 2, true),
            (len - 1, true),
            (len / 2, false),
        ];
        for (offset, flipped) in damages {
            let context = format!(
                "{name}, {} at {offset}",
                if flipped { "flip" } else { "cut" }
            );
            assert!(memory.corrupt(&name, |bytes| if flipped {
                bytes[offset] ^= 0x40;
            } else {
                bytes.truncate(offset);
            }));
            let opened = BucketStorage::open_read_only(
                test_client(bucket.clone()),
                &scratch.path().join("absent"),
                options(),
            )
            .and_then(|storage| Engine::open_with(Arc::new(storage), config()));
            match opened {
                Err(error) => {
                    assert_eq!(name, "head", "{context}: {error}");
                    assert!(error.to_string().contains("head"), "{context}: {error}");
                }
                Ok(engine) => {
                    let in_pack = name.ends_with(".pack");
                    for snapshot in &written {
                        check_reads(&engine, snapshot, in_pack);
                    }
                    let report = engine.verify(Default::default()).expect("verify");
                    assert!(!report.is_clean(), "{context}: damage unreported");
                }
            }
            assert!(memory.corrupt(&name, |bytes| *bytes = original.to_vec()));
        }
    }
    assert_eq!(
        writes(),
        writes_before,
        "a read-only open wrote to the bucket"
    );
}

/// A crash between every two bucket requests of the workload (the bucket
/// stops answering there), then a reopen from a fresh local directory:
/// every snapshot whose completion returned is there, byte-identical.
#[test]
fn a_crash_between_any_two_bucket_requests_loses_nothing_completed() {
    let total = {
        let bucket = Arc::new(MemoryObjectStore::new());
        let dynamic: Arc<dyn ObjectStore> = bucket.clone();
        let engine = open(&dynamic, tempfile::tempdir().expect("dir").path()).expect("open");
        let before = bucket.total_requests();
        workload(&engine, &mut Vec::new()).expect("workload");
        bucket.total_requests() - before
    };
    assert!(total > 20, "only {total} requests");
    for crash_after in 0..=total {
        let bucket = Arc::new(MemoryObjectStore::new());
        let dynamic: Arc<dyn ObjectStore> = bucket.clone();
        let mut written = Vec::new();
        {
            let engine = open(&dynamic, tempfile::tempdir().expect("dir").path()).expect("open");
            bucket.halt_after(Some(crash_after));
            let _ = workload(&engine, &mut written);
        }
        bucket.halt_after(None);
        let engine = open(&dynamic, tempfile::tempdir().expect("dir").path())
            .unwrap_or_else(|error| panic!("reopen after {crash_after} requests: {error}"));
        for snapshot in &written {
            check(&engine, snapshot);
        }
        let report = engine.verify(Default::default()).expect("verify");
        assert!(report.is_clean(), "after {crash_after}: {report:?}");
    }
}

/// Every fault the in-memory bucket injects, at random: operations succeed
/// or fail with a clear error; afterwards every snapshot whose completion
/// returned reads back exactly.
#[test]
fn random_bucket_faults_lose_nothing_and_return_no_wrong_byte() {
    let faults = [
        ObjectFault::InternalError,
        ObjectFault::SlowDown,
        ObjectFault::Conflict,
        ObjectFault::PreconditionFailed,
        ObjectFault::NotFound,
        ObjectFault::Timeout,
        ObjectFault::LandedReplyLost,
        ObjectFault::TruncatedBody,
    ];
    for seed in 1..=40u64 {
        let bucket = Arc::new(MemoryObjectStore::new());
        let dynamic: Arc<dyn ObjectStore> = bucket.clone();
        let mut written = Vec::new();
        let local = tempfile::tempdir().expect("dir");
        bucket.random_faults(seed, 150_000, &faults);
        if let Ok(engine) = open(&dynamic, local.path()) {
            let outcome = workload(&engine, &mut written);
            if let Err(error) = outcome {
                assert!(!error.to_string().is_empty());
            }
            for snapshot in &written {
                check_reads(&engine, snapshot, true);
            }
        }
        bucket.clear_faults();
        let engine = open(&dynamic, tempfile::tempdir().expect("dir").path())
            .unwrap_or_else(|error| panic!("seed {seed}: reopen: {error}"));
        for snapshot in &written {
            check(&engine, snapshot);
        }
        let report = engine.verify(Default::default()).expect("verify");
        assert!(report.is_clean(), "seed {seed}: {report:?}");
    }
}
