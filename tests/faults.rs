//! Failures the medium returns (a descriptor limit, a full disk, a failing
//! device), injected into the in-memory medium: poisoning happens only
//! when the durable state is really unknown (a failed append or sync), is
//! logged at ERROR with its cause, and still lets the snapshot that hit it
//! be cancelled; anything else fails its request only, retryably.

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::storage::{Fault, FaultPoint, MemoryStorage};
use blocksnap::testing::{block, complete_request, expect_ebs, holds_exactly, put_request};
use blocksnap::{Engine, EngineConfig, Error};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

fn config() -> EngineConfig {
    EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 1 << 20,
            ..ChunkStoreConfig::default()
        },
        ..EngineConfig::default()
    }
}

fn open(storage: &MemoryStorage) -> Engine {
    Engine::open_with(Arc::new(storage.clone()), config()).expect("open")
}

fn fault(point: FaultPoint, prefix: &str, kind: ErrorKind) -> Fault {
    Fault {
        point,
        prefix: prefix.into(),
        kind,
        times: 1,
    }
}

fn start(engine: &Engine) -> Result<String, Error> {
    Ebs::new(engine)
        .start_snapshot(StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        })
        .map(|started| started.snapshot_id)
}

fn put(engine: &Engine, snapshot: &str, index: i32, seed: u64) -> Result<(), Error> {
    Ebs::new(engine)
        .put_snapshot_block(put_request(snapshot, index, block(seed)))
        .map(drop)
}

#[test]
fn a_failure_to_open_a_file_fails_only_its_request() {
    let storage = MemoryStorage::new();
    let engine = open(&storage);
    // The journal a start creates: too many open files.
    storage.inject(fault(FaultPoint::Open, "pending/", ErrorKind::Other));
    expect_ebs(start(&engine), "InternalServerException", None);
    assert!(engine.is_writable(), "an open failure does not poison");
    let snapshot = start(&engine).expect("the retry succeeds");
    // The pack the first put creates.
    storage.inject(fault(FaultPoint::Open, "packs/", ErrorKind::StorageFull));
    expect_ebs(
        put(&engine, &snapshot, 0, 1),
        "InternalServerException",
        None,
    );
    assert!(engine.is_writable());
    put(&engine, &snapshot, 0, 1).expect("the retry succeeds");
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&snapshot, 1))
        .expect("complete");
    assert!(holds_exactly(&engine, &snapshot, &BTreeMap::from([(0, 1)])).expect("read"));
}

#[test]
fn a_failed_append_poisons_yet_the_snapshot_can_be_cancelled() {
    let storage = MemoryStorage::new();
    let engine = open(&storage);
    let kept = start(&engine).expect("start");
    put(&engine, &kept, 0, 1).expect("put");
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&kept, 1))
        .expect("complete");
    let snapshot = start(&engine).expect("start");
    put(&engine, &snapshot, 0, 2).expect("put");
    // The disk fills up under the next block's record.
    storage.inject(fault(FaultPoint::Append, "packs/", ErrorKind::StorageFull));
    expect_ebs(
        put(&engine, &snapshot, 1, 3),
        "InternalServerException",
        None,
    );
    assert!(!engine.is_writable(), "a failed append poisons");
    match put(&engine, &snapshot, 1, 3) {
        Err(Error::Poisoned { cause }) => assert!(cause.contains("appending"), "{cause}"),
        other => panic!("expected Poisoned, got {other:?}"),
    }
    assert!(matches!(start(&engine), Err(Error::Poisoned { .. })));
    // A transition that adds no data still goes through: the backup that
    // hit the full disk cancels its snapshot.
    Ebs::new(&engine)
        .cancel_snapshot(CancelSnapshotRequest {
            snapshot_id: snapshot.clone(),
        })
        .expect("cancel after poisoning");
    Ebs::new(&engine)
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snapshot.clone(),
        })
        .expect("delete after poisoning");
    drop(engine);
    // Reopening recovers: the completed snapshot is whole, the cancelled
    // one is gone, and writes work again.
    let engine = open(&storage);
    assert!(holds_exactly(&engine, &kept, &BTreeMap::from([(0, 1)])).expect("read"));
    expect_ebs(
        Ebs::new(&engine).describe_snapshot(DescribeSnapshotRequest {
            snapshot_id: snapshot,
        }),
        "ResourceNotFoundException",
        Some("SNAPSHOT_NOT_FOUND"),
    );
    let again = start(&engine).expect("start");
    put(&engine, &again, 0, 4).expect("put");
}

#[test]
fn a_failed_journal_sync_poisons() {
    let storage = MemoryStorage::new();
    let engine = open(&storage);
    let snapshot = start(&engine).expect("start");
    storage.inject(fault(FaultPoint::Sync, "pending/", ErrorKind::Other));
    expect_ebs(
        put(&engine, &snapshot, 0, 1),
        "InternalServerException",
        None,
    );
    assert!(!engine.is_writable());
}

#[test]
fn a_failed_catalog_write_stops_every_transition() {
    let storage = MemoryStorage::new();
    let engine = open(&storage);
    let snapshot = start(&engine).expect("start");
    put(&engine, &snapshot, 0, 1).expect("put");
    storage.inject(fault(FaultPoint::Sync, "catalog/", ErrorKind::Other));
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(complete_request(&snapshot, 1)),
        "InternalServerException",
        None,
    );
    assert!(!engine.is_writable());
    assert!(matches!(
        Ebs::new(&engine).cancel_snapshot(CancelSnapshotRequest {
            snapshot_id: snapshot
        }),
        Err(Error::Poisoned { .. })
    ));
}

#[test]
fn a_seal_whose_index_cannot_be_written_carries_on() {
    let storage = MemoryStorage::new();
    let engine = open(&storage);
    let snapshot = start(&engine).expect("start");
    storage.inject(Fault {
        times: 100,
        ..fault(FaultPoint::WriteAtomic, "packs/", ErrorKind::StorageFull)
    });
    let content: BTreeMap<u32, u64> = (0..8)
        .map(|index| (index, u64::from(index) * 3 + 2))
        .collect();
    for (index, seed) in &content {
        put(&engine, &snapshot, *index as i32, *seed).expect("put");
    }
    assert!(engine.is_writable(), "a missing index poisons nothing");
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&snapshot, content.len() as i32))
        .expect("complete");
    drop(engine);
    let engine = open(&storage);
    assert!(holds_exactly(&engine, &snapshot, &content).expect("read"));
}

/// Collects what the engine logs.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn poisoning_is_logged_at_error_with_its_cause() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // Other tests of this binary may have met the call site first,
        // with no subscriber: ask again.
        tracing::callsite::rebuild_interest_cache();
        let storage = MemoryStorage::new();
        let engine = open(&storage);
        let snapshot = start(&engine).expect("start");
        put(&engine, &snapshot, 0, 1).expect("put");
        storage.inject(fault(FaultPoint::Append, "packs/", ErrorKind::StorageFull));
        put(&engine, &snapshot, 1, 2).expect_err("the append fails");
        assert!(!engine.is_writable());
    });
    let text = String::from_utf8(log.0.lock().expect("log").clone()).expect("utf-8");
    let line = text
        .lines()
        .find(|line| line.contains("stopped accepting writes"))
        .unwrap_or_else(|| panic!("no poisoning line in {text:?}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("injected fault"), "{line}");
}
