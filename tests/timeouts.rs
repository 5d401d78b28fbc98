//! Timeout-driven cancellation, as EBS does it: a pending snapshot is
//! cancelled when no block is written within `Timeout` minutes of its start,
//! or when it is not completed within `Timeout` minutes of its last write.
//! The reaper is tested on a paused tokio clock (the test takes
//! milliseconds); the lazy path and restarts on a manual clock.

use blocksnap::api::*;
use blocksnap::clock::{ManualClock, TokioClock};
use blocksnap::storage::{MemoryStorage, Storage};
use blocksnap::testing::{block, complete_request, expect_ebs, memory_engine, put_request};
use blocksnap::{Engine, EngineConfig};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const START_MILLIS: u64 = 1_795_392_000_000;
const MINUTE: Duration = Duration::from_secs(60);

fn start(engine: &Engine, timeout: Option<i32>) -> String {
    Ebs::new(engine)
        .start_snapshot(StartSnapshotRequest {
            volume_size: 1,
            timeout,
            ..Default::default()
        })
        .expect("start")
        .snapshot_id
}

fn describe(engine: &Engine, id: &str) -> SnapshotDescription {
    Ebs::new(engine)
        .describe_snapshot(DescribeSnapshotRequest {
            snapshot_id: id.to_string(),
        })
        .expect("describe")
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .expect("after epoch")
        .as_millis() as u64
}

/// An engine whose clock follows tokio's paused clock, so its reaper runs.
fn paused_engine() -> (Engine, MemoryStorage) {
    let storage = MemoryStorage::new();
    let config = EngineConfig {
        clock: Arc::new(TokioClock::new(START_MILLIS)),
        ..EngineConfig::default()
    };
    let engine = Engine::open_with(Arc::new(storage.clone()), config).expect("open");
    (engine, storage)
}

#[tokio::test(start_paused = true)]
async fn reaper_cancels_a_snapshot_without_puts_at_its_deadline() {
    let (engine, _storage) = paused_engine();
    let id = start(&engine, Some(10));
    let deadline = START_MILLIS + 10 * 60_000;
    assert_eq!(describe(&engine, &id).deadline.map(millis), Some(deadline));
    tokio::time::sleep(10 * MINUTE - Duration::from_millis(1)).await;
    assert_eq!(describe(&engine, &id).snapshot.status, Status::Pending);
    // Well past the deadline: the reaper acted at the deadline itself (a
    // lazy cancellation by this describe would be stamped later).
    tokio::time::sleep(5 * MINUTE).await;
    let described = describe(&engine, &id);
    assert_eq!(described.snapshot.status, Status::Error);
    assert_eq!(described.error_time.map(millis), Some(deadline));
    let reason = described.error_reason.expect("reason");
    assert!(
        reason.contains("no block was written within 10 minutes"),
        "{reason}"
    );
    expect_ebs(
        Ebs::new(&engine).put_snapshot_block(put_request(&id, 0, block(1))),
        "ValidationException",
        Some("WRITE_REQUEST_TIMEOUT"),
    );
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(complete_request(&id, 0)),
        "ValidationException",
        Some("WRITE_REQUEST_TIMEOUT"),
    );
}

#[tokio::test(start_paused = true)]
async fn each_put_resets_the_timer_and_completion_stops_it() {
    let (engine, _storage) = paused_engine();
    let id = start(&engine, None); // default: 60 minutes
    for index in 0..3 {
        tokio::time::sleep(59 * MINUTE).await;
        Ebs::new(&engine)
            .put_snapshot_block_async(put_request(&id, index, block(index as u64 + 1)))
            .await
            .expect("put within the timeout");
    }
    let last_put = START_MILLIS + 3 * 59 * 60_000;
    assert_eq!(
        describe(&engine, &id).deadline.map(millis),
        Some(last_put + 60 * 60_000)
    );
    tokio::time::sleep(59 * MINUTE).await;
    let completed = Ebs::new(&engine)
        .complete_snapshot_async(complete_request(&id, 3))
        .await
        .expect("complete before the deadline");
    assert_eq!(completed.status, Status::Completed);
    tokio::time::sleep(24 * 60 * MINUTE).await;
    let described = describe(&engine, &id);
    assert_eq!(described.snapshot.status, Status::Completed);
    assert_eq!(described.deadline, None);
}

#[tokio::test(start_paused = true)]
async fn reaper_cancels_a_snapshot_not_completed_after_its_last_put() {
    let (engine, storage) = paused_engine();
    let id = start(&engine, Some(10));
    tokio::time::sleep(4 * MINUTE).await;
    Ebs::new(&engine)
        .put_snapshot_block_async(put_request(&id, 7, block(3)))
        .await
        .expect("put");
    let journal = format!("pending/{}.journal", id.trim_start_matches("snap-"));
    assert!(storage.exists(&journal).expect("exists"));
    tokio::time::sleep(30 * MINUTE).await;
    let described = describe(&engine, &id);
    assert_eq!(described.snapshot.status, Status::Error);
    assert_eq!(
        described.error_time.map(millis),
        Some(START_MILLIS + 14 * 60_000)
    );
    let reason = described.error_reason.expect("reason");
    assert!(
        reason.contains("not completed within 10 minutes of the last block write"),
        "{reason}"
    );
    assert!(
        !storage.exists(&journal).expect("exists"),
        "journal removed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_snapshot_with_an_earlier_deadline_wakes_the_reaper() {
    let (engine, _storage) = paused_engine();
    let long = start(&engine, Some(4320));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let short = start(&engine, Some(10));
    tokio::time::sleep(11 * MINUTE).await;
    let described = describe(&engine, &short);
    assert_eq!(described.snapshot.status, Status::Error);
    assert_eq!(
        described.error_time.map(millis),
        Some(START_MILLIS + 1000 + 10 * 60_000)
    );
    assert_eq!(describe(&engine, &long).snapshot.status, Status::Pending);
}

#[test]
fn without_a_runtime_deadlines_apply_on_access() {
    let (engine, _storage, clock) = memory_engine(EngineConfig::default());
    let id = start(&engine, Some(10));
    clock.advance(10 * MINUTE - Duration::from_millis(1));
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&id, 0, block(1)))
        .expect("put one millisecond before the deadline");
    clock.advance(10 * MINUTE);
    // Exactly at the deadline (last put + 10 minutes): cancelled.
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(complete_request(&id, 1)),
        "ValidationException",
        Some("WRITE_REQUEST_TIMEOUT"),
    );
    let described = describe(&engine, &id);
    assert_eq!(described.snapshot.status, Status::Error);
    assert_eq!(
        described.error_time.map(millis),
        Some(START_MILLIS + 20 * 60_000 - 1)
    );
}

#[test]
fn completion_one_millisecond_before_the_deadline_wins() {
    let (engine, _storage, clock) = memory_engine(EngineConfig::default());
    let id = start(&engine, Some(10));
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&id, 0, block(1)))
        .expect("put");
    clock.advance(10 * MINUTE - Duration::from_millis(1));
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&id, 1))
        .expect("complete");
    clock.advance(MINUTE);
    // Whatever touches it later, it stays completed.
    start(&engine, Some(10));
    assert_eq!(describe(&engine, &id).snapshot.status, Status::Completed);
}

#[test]
fn deadlines_survive_restart() {
    let storage = MemoryStorage::new();
    let clock = ManualClock::new(START_MILLIS);
    let config = EngineConfig {
        clock: Arc::new(clock.clone()),
        ..EngineConfig::default()
    };
    let open = || Engine::open_with(Arc::new(storage.clone()), config.clone()).expect("open");
    let engine = open();
    let idle = start(&engine, Some(10));
    let written = start(&engine, Some(10));
    clock.advance(8 * MINUTE);
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&written, 3, block(2)))
        .expect("put");
    drop(engine);

    // Reopened at minute 12: the idle one expired while the store was
    // closed and is cancelled on open; the written one has until minute 18.
    clock.advance(4 * MINUTE);
    let engine = open();
    let described = describe(&engine, &idle);
    assert_eq!(described.snapshot.status, Status::Error);
    assert_eq!(
        described.error_time.map(millis),
        Some(START_MILLIS + 12 * 60_000),
        "cancelled when the store opened"
    );
    assert_eq!(
        describe(&engine, &written).deadline.map(millis),
        Some(START_MILLIS + 18 * 60_000)
    );
    drop(engine);

    clock.advance(6 * MINUTE);
    let engine = open();
    assert_eq!(describe(&engine, &written).snapshot.status, Status::Error);
    expect_ebs(
        Ebs::new(&engine).put_snapshot_block(put_request(&written, 4, block(2))),
        "ValidationException",
        Some("WRITE_REQUEST_TIMEOUT"),
    );
}

#[test]
fn explicit_cancellation_takes_the_same_path() {
    let (engine, _storage, _clock) = memory_engine(EngineConfig::default());
    let id = start(&engine, None);
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&id, 0, block(1)))
        .expect("put");
    let cancelled = Ebs::new(&engine)
        .cancel_snapshot(CancelSnapshotRequest {
            snapshot_id: id.clone(),
        })
        .expect("cancel");
    assert_eq!(cancelled.status, Status::Error);
    let described = describe(&engine, &id);
    assert_eq!(
        described.error_reason.as_deref(),
        Some("Cancelled by the caller.")
    );
    for result in [
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&id, 1, block(2)))
            .map(|_| ()),
        Ebs::new(&engine)
            .complete_snapshot(complete_request(&id, 1))
            .map(|_| ()),
        Ebs::new(&engine)
            .cancel_snapshot(CancelSnapshotRequest {
                snapshot_id: id.clone(),
            })
            .map(|_| ()),
    ] {
        expect_ebs(result, "ValidationException", Some("INVALID_SNAPSHOT_ID"));
    }
    let completed = start(&engine, None);
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&completed, 0))
        .expect("complete");
    expect_ebs(
        Ebs::new(&engine).cancel_snapshot(CancelSnapshotRequest {
            snapshot_id: completed,
        }),
        "ValidationException",
        Some("INVALID_SNAPSHOT_ID"),
    );
    expect_ebs(
        Ebs::new(&engine).cancel_snapshot(CancelSnapshotRequest {
            snapshot_id: "snap-0123456789abcdef".into(),
        }),
        "ResourceNotFoundException",
        Some("SNAPSHOT_NOT_FOUND"),
    );
}

#[test]
fn timed_out_snapshots_free_their_pending_slot() {
    let (engine, _storage, clock) = memory_engine(EngineConfig {
        max_pending_snapshots: 2,
        ..EngineConfig::default()
    });
    start(&engine, Some(10));
    start(&engine, Some(20));
    expect_ebs(
        Ebs::new(&engine).start_snapshot(StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        }),
        "ConcurrentLimitExceededException",
        None,
    );
    clock.advance(10 * MINUTE);
    start(&engine, Some(10));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_engine_stops_its_reaper() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        clock: Arc::new(TokioClock::new(START_MILLIS)),
        ..EngineConfig::default()
    };
    let engine = Engine::open_with(
        Engine::local_storage(dir.path()).expect("storage"),
        config.clone(),
    )
    .expect("open");
    let id = start(&engine, Some(10));
    drop(engine);
    // The store lock is free again: nothing (no reaper) kept the engine alive.
    let engine = Engine::open_with(Engine::local_storage(dir.path()).expect("storage"), config)
        .expect("reopen");
    assert_eq!(describe(&engine, &id).snapshot.status, Status::Pending);
}
