//! Snapshot records, parent links and the state machine
//! `pending -> completed | error`, persisted as an append-only log.
//!
//! The log lives in segments `catalog/NNNNNNNN.log` (file header + frames,
//! see `format::catalog`). Every record is synced before the call returns,
//! so an acknowledged transition survives a crash. Recovery replays the
//! segments in order. A frame that does not verify is a torn tail if no
//! valid frame follows it (replay of that segment stops there and new
//! records go to a fresh segment, so recovery never truncates bytes);
//! otherwise it is corruption, and opening fails with `Corrupted` rather
//! than silently forgetting later records.

use crate::error::{Error, Result, ValidationReason};
use crate::format::catalog::{CatalogRecord, StartedRecord, CATALOG_FLAG_CHECKPOINT};
use crate::format::header::{self, CATALOG_MAGIC, FILE_HEADER_SIZE};
use crate::ids::{ChunkId, SnapshotId};
use crate::storage::{create_durably, remove_durably, AppendFile, Storage};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;

const CATALOG_DIR: &str = "catalog";

fn segment_name(seq: u32) -> String {
    format!("{CATALOG_DIR}/{seq:08x}.log")
}

/// Where a snapshot is in its lifecycle.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SnapshotState {
    /// Accepting blocks.
    Pending,
    /// Sealed, durable and immutable.
    Completed {
        /// Completion time, epoch milliseconds.
        completed_millis: u64,
        /// Root of the block map (`None`: no block ever written in its lineage).
        root: Option<ChunkId>,
        /// Distinct indexes written in this snapshot itself.
        changed_blocks: u32,
    },
    /// Cancelled or failed; never readable.
    Error {
        /// When, epoch milliseconds.
        at_millis: u64,
        /// Why.
        reason: String,
    },
}

/// Everything the catalog knows about one snapshot.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotRecord {
    /// The parameters it was started with.
    pub started: StartedRecord,
    /// Its current state.
    pub state: SnapshotState,
}

impl SnapshotRecord {
    /// The EBS status name.
    pub fn status_name(&self) -> &'static str {
        match self.state {
            SnapshotState::Pending => "pending",
            SnapshotState::Completed { .. } => "completed",
            SnapshotState::Error { .. } => "error",
        }
    }
}

#[derive(Default)]
struct CatalogState {
    snapshots: HashMap<SnapshotId, SnapshotRecord>,
    tokens: HashMap<(String, String), SnapshotId>,
    /// Records applied since the log was replayed from its start.
    frames: u64,
}

/// The log as replayed from storage.
struct Replayed {
    state: CatalogState,
    /// Segment sequences, ascending.
    segments: Vec<u32>,
    /// The last segment, if it ended cleanly (appends may continue there).
    clean_last: Option<u32>,
    /// Segments before the newest checkpoint: superseded, to be removed.
    superseded: Vec<u32>,
}

/// Whether a segment's header marks it as a checkpoint.
fn is_checkpoint(bytes: &[u8], seq: u32) -> bool {
    bytes.get(..FILE_HEADER_SIZE).is_some_and(|head| {
        header::decode_with_flags(head, CATALOG_MAGIC).is_ok_and(|(subject, flags)| {
            subject == u64::from(seq) && flags & CATALOG_FLAG_CHECKPOINT != 0
        })
    })
}

/// Replays the segments from the newest checkpoint on, in order.
fn replay(storage: &dyn Storage) -> Result<Replayed> {
    let segments = list_segments(storage)?;
    let mut contents = Vec::with_capacity(segments.len());
    for &seq in &segments {
        let name = segment_name(seq);
        let bytes = storage
            .read_all(&name)
            .map_err(|e| Error::io(format!("reading {name}"), e))?;
        contents.push((seq, name, bytes));
    }
    let first = contents
        .iter()
        .rposition(|(seq, _, bytes)| is_checkpoint(bytes, *seq))
        .unwrap_or(0);
    let superseded = segments.get(..first).unwrap_or_default().to_vec();
    let mut state = CatalogState::default();
    let mut clean_last = None;
    for (seq, name, bytes) in contents.iter().skip(first) {
        let clean = replay_segment(bytes, *seq, name, &mut state)?;
        clean_last = clean.then_some(*seq);
    }
    Ok(Replayed {
        state,
        segments,
        clean_last,
        superseded,
    })
}

impl CatalogState {
    fn apply(&mut self, record: CatalogRecord, location: &str) -> Result<()> {
        self.frames += 1;
        match record {
            CatalogRecord::Started(started) => {
                if let Some(token) = &started.client_token {
                    self.tokens
                        .insert((started.owner.clone(), token.clone()), started.snapshot);
                }
                self.snapshots.insert(
                    started.snapshot,
                    SnapshotRecord {
                        started,
                        state: SnapshotState::Pending,
                    },
                );
            }
            CatalogRecord::Completed {
                snapshot,
                completed_millis,
                root,
                changed_blocks,
            } => {
                let record = self.pending_mut(snapshot, location)?;
                record.state = SnapshotState::Completed {
                    completed_millis,
                    root,
                    changed_blocks,
                };
            }
            CatalogRecord::Failed {
                snapshot,
                at_millis,
                reason,
            } => {
                let record = self.pending_mut(snapshot, location)?;
                record.state = SnapshotState::Error { at_millis, reason };
            }
            CatalogRecord::Deleted { snapshot, .. } => {
                match self.snapshots.get(&snapshot) {
                    Some(record) if record.state != SnapshotState::Pending => {}
                    _ => {
                        return Err(Error::corrupted(
                            location,
                            format!("deletion of {snapshot}, which is absent or pending"),
                        ))
                    }
                }
                if let Some(record) = self.snapshots.remove(&snapshot) {
                    if let Some(token) = record.started.client_token {
                        self.tokens.remove(&(record.started.owner, token));
                    }
                }
            }
        }
        Ok(())
    }

    fn pending_mut(&mut self, snapshot: SnapshotId, location: &str) -> Result<&mut SnapshotRecord> {
        match self.snapshots.get_mut(&snapshot) {
            Some(record) if record.state == SnapshotState::Pending => Ok(record),
            _ => Err(Error::corrupted(
                location,
                format!("transition of {snapshot}, which is not pending"),
            )),
        }
    }
}

/// The snapshot catalog. See the module documentation.
pub struct Catalog {
    storage: Arc<dyn Storage>,
    log: Mutex<Box<dyn AppendFile>>,
    state: RwLock<CatalogState>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    /// Replays the log and opens it for appending.
    pub fn open(storage: Arc<dyn Storage>) -> Result<Catalog> {
        let Replayed {
            state,
            segments,
            clean_last: append_to,
            superseded,
        } = replay(storage.as_ref())?;
        remove_segments(storage.as_ref(), &superseded)?;
        let log = match (append_to, segments.last()) {
            (Some(seq), Some(last)) if seq == *last => {
                let name = segment_name(seq);
                let mut file = storage
                    .open_append(&name)
                    .map_err(|e| Error::io(format!("opening {name}"), e))?;
                file.sync()
                    .map_err(|e| Error::io(format!("syncing {name}"), e))?;
                file
            }
            _ => {
                let seq = segments.last().map_or(0, |last| last + 1);
                create_segment(storage.as_ref(), seq)?
            }
        };
        Ok(Catalog {
            storage,
            log: Mutex::new(log),
            state: RwLock::new(state),
        })
    }

    /// Appends a record, syncs it, then applies it. Nothing is applied if
    /// the write or sync fails. The precondition of a transition is checked
    /// under the log lock, so two transitions of one snapshot cannot race.
    /// Returns what the precondition returned.
    fn commit<T>(
        &self,
        record: CatalogRecord,
        precondition: impl FnOnce(&Self) -> Result<T>,
    ) -> Result<T> {
        let frame = record.encode_frame();
        let mut log = self.log.lock();
        let checked = precondition(self)?;
        log.append(&[&frame])
            .map_err(|e| Error::io("appending to the catalog", e))?;
        log.sync()
            .map_err(|e| Error::io("syncing the catalog", e))?;
        self.state.write().apply(record, "catalog")?;
        Ok(checked)
    }

    /// Records a new pending snapshot.
    pub fn start(&self, started: StartedRecord) -> Result<()> {
        self.commit(CatalogRecord::Started(started), |_| Ok(()))
    }

    /// Makes a pending snapshot completed: the commit point of CompleteSnapshot.
    pub fn complete(
        &self,
        snapshot: SnapshotId,
        completed_millis: u64,
        root: Option<ChunkId>,
        changed_blocks: u32,
    ) -> Result<()> {
        self.commit(
            CatalogRecord::Completed {
                snapshot,
                completed_millis,
                root,
                changed_blocks,
            },
            |catalog| catalog.require_pending(snapshot),
        )
    }

    /// Moves a pending snapshot to `error`.
    pub fn fail(&self, snapshot: SnapshotId, at_millis: u64, reason: String) -> Result<()> {
        self.commit(
            CatalogRecord::Failed {
                snapshot,
                at_millis,
                reason,
            },
            |catalog| catalog.require_pending(snapshot),
        )
    }

    /// Removes a completed or failed snapshot (not a pending one, and not
    /// the parent of a pending one, whose recovery needs the parent's root).
    /// Returns its record as it was when deleted (checked under the log
    /// lock, so no transition can slip in between).
    pub fn delete(&self, snapshot: SnapshotId, at_millis: u64) -> Result<SnapshotRecord> {
        self.commit(
            CatalogRecord::Deleted {
                snapshot,
                at_millis,
            },
            |catalog| catalog.require_deletable(snapshot),
        )
    }

    fn require_deletable(&self, snapshot: SnapshotId) -> Result<SnapshotRecord> {
        let state = self.state.read();
        let Some(record) = state.snapshots.get(&snapshot) else {
            return Err(Error::NotFound {
                message: format!("The snapshot '{snapshot}' does not exist."),
            });
        };
        if record.state == SnapshotState::Pending {
            return Err(Error::InvalidState {
                reason: ValidationReason::InvalidSnapshotId,
                message: format!(
                    "The snapshot '{snapshot}' is pending; cancel it before deleting it."
                ),
            });
        }
        let pending_child = state.snapshots.values().find(|other| {
            other.started.parent == Some(snapshot) && other.state == SnapshotState::Pending
        });
        if let Some(child) = pending_child {
            return Err(Error::InvalidState {
                reason: ValidationReason::InvalidDependencyRequest,
                message: format!(
                    "The snapshot '{snapshot}' is the parent of pending snapshot '{}'; complete or cancel it first.",
                    child.started.snapshot
                ),
            });
        }
        Ok(record.clone())
    }

    fn require_pending(&self, snapshot: SnapshotId) -> Result<()> {
        match self.get(snapshot) {
            None => Err(Error::NotFound {
                message: format!("The snapshot '{snapshot}' does not exist."),
            }),
            Some(record) if record.state == SnapshotState::Pending => Ok(()),
            Some(record) => Err(Error::InvalidState {
                reason: ValidationReason::InvalidSnapshotId,
                message: format!(
                    "The snapshot '{snapshot}' is {}, not pending.",
                    record.status_name()
                ),
            }),
        }
    }

    /// Applies `f` to a snapshot's record under the read lock, without
    /// cloning it (for per-request paths).
    pub fn inspect<R>(
        &self,
        snapshot: SnapshotId,
        f: impl FnOnce(&SnapshotRecord) -> R,
    ) -> Option<R> {
        self.state.read().snapshots.get(&snapshot).map(f)
    }

    /// The record of a snapshot.
    pub fn get(&self, snapshot: SnapshotId) -> Option<SnapshotRecord> {
        self.state.read().snapshots.get(&snapshot).cloned()
    }

    /// The snapshot started with this owner's idempotency token.
    pub fn find_token(&self, owner: &str, token: &str) -> Option<SnapshotId> {
        self.state
            .read()
            .tokens
            .get(&(owner.to_string(), token.to_string()))
            .copied()
    }

    /// Ids of every snapshot in a state matching `filter`.
    pub fn select(&self, filter: impl Fn(&SnapshotRecord) -> bool) -> Vec<SnapshotRecord> {
        self.state
            .read()
            .snapshots
            .values()
            .filter(|record| filter(record))
            .cloned()
            .collect()
    }

    /// Records a checkpoint of the catalog would hold.
    pub fn live_records(&self) -> u64 {
        live_frames(&self.state.read())
    }

    /// Records in the log that no longer describe a live snapshot (deleted
    /// snapshots' records, superseded transitions).
    pub fn dead_records(&self) -> u64 {
        let state = self.state.read();
        state.frames.saturating_sub(live_frames(&state))
    }

    /// Rewrites the catalog as one checkpoint segment holding only the
    /// records of existing snapshots, then removes the older segments.
    /// The checkpoint is written atomically and durably before anything is
    /// removed, so a crash leaves either the old log or the new one.
    /// Returns the log bytes freed.
    pub fn compact(&self) -> Result<u64> {
        let mut log = self.log.lock();
        let segments = list_segments(self.storage.as_ref())?;
        let seq = segments.last().map_or(0, |last| last + 1);
        let mut bytes =
            header::encode_with_flags(CATALOG_MAGIC, u64::from(seq), CATALOG_FLAG_CHECKPOINT)
                .to_vec();
        {
            let state = self.state.read();
            let mut records: Vec<&SnapshotRecord> = state.snapshots.values().collect();
            records.sort_by_key(|record| record.started.snapshot);
            for record in records {
                bytes.extend(CatalogRecord::Started(record.started.clone()).encode_frame());
                let snapshot = record.started.snapshot;
                let transition = match &record.state {
                    SnapshotState::Pending => None,
                    SnapshotState::Completed {
                        completed_millis,
                        root,
                        changed_blocks,
                    } => Some(CatalogRecord::Completed {
                        snapshot,
                        completed_millis: *completed_millis,
                        root: *root,
                        changed_blocks: *changed_blocks,
                    }),
                    SnapshotState::Error { at_millis, reason } => Some(CatalogRecord::Failed {
                        snapshot,
                        at_millis: *at_millis,
                        reason: reason.clone(),
                    }),
                };
                if let Some(transition) = transition {
                    bytes.extend(transition.encode_frame());
                }
            }
        }
        let name = segment_name(seq);
        let mut old_bytes = 0u64;
        for old in &segments {
            old_bytes += self
                .storage
                .open_read(&segment_name(*old))
                .and_then(|file| file.len())
                .unwrap_or(0);
        }
        self.storage
            .write_atomic(&name, &bytes)
            .map_err(|e| Error::io(format!("writing {name}"), e))?;
        *log = self
            .storage
            .open_append(&name)
            .map_err(|e| Error::io(format!("opening {name}"), e))?;
        {
            let mut state = self.state.write();
            state.frames = live_frames(&state);
        }
        remove_segments(self.storage.as_ref(), &segments)?;
        Ok(old_bytes.saturating_sub(bytes.len() as u64))
    }

    /// Re-reads the whole log, checking every frame's crc and every
    /// transition, and that it replays to exactly the records in memory.
    /// Returns the number of records read.
    pub fn verify(&self) -> Result<u64> {
        // No record is appended while the files are read.
        let _log = self.log.lock();
        let replayed = replay(self.storage.as_ref())?;
        if replayed.state.snapshots != self.state.read().snapshots {
            return Err(Error::corrupted(
                CATALOG_DIR,
                "the log on disk no longer replays to the catalog in memory",
            ));
        }
        Ok(replayed.state.frames)
    }

    /// The storage the catalog writes to.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
}

/// Replays one segment into `state`; returns whether it ended cleanly
/// (`false`: it ends in a torn frame, and new records go to a new segment).
fn replay_segment(bytes: &[u8], seq: u32, name: &str, state: &mut CatalogState) -> Result<bool> {
    let header_ok = bytes
        .get(..FILE_HEADER_SIZE)
        .is_some_and(|head| header::decode(head, CATALOG_MAGIC) == Ok(u64::from(seq)));
    if !header_ok {
        // The header is synced before any frame is appended, so only a
        // segment that holds nothing else can have a torn header.
        if bytes.len() > FILE_HEADER_SIZE {
            return Err(Error::corrupted(name, "catalog segment header"));
        }
        return Ok(false);
    }
    let mut offset = FILE_HEADER_SIZE;
    while offset < bytes.len() {
        let rest = bytes.get(offset..).unwrap_or_default();
        match CatalogRecord::decode_frame(rest) {
            Ok((record, length)) => {
                state.apply(record, &format!("{name} at byte {offset}"))?;
                offset += length;
            }
            Err(_) if is_torn_tail(rest) => return Ok(false),
            Err(error) => return Err(error.into_error(&format!("{name} frame at byte {offset}"))),
        }
    }
    Ok(true)
}

/// Whether a frame that failed to decode can be a torn write. Records are
/// appended only after a clean replay and each is synced before the next,
/// so a torn frame is always the last thing in its segment: if any valid
/// frame starts after the bad one, the bad one is corruption. (Damage to
/// the very last frame is indistinguishable from a torn write.) Random
/// length fields almost always exceed the largest frame, so the scan rarely
/// computes a crc.
fn is_torn_tail(rest: &[u8]) -> bool {
    !(1..rest.len())
        .any(|start| CatalogRecord::decode_frame(rest.get(start..).unwrap_or_default()).is_ok())
}

/// Records a checkpoint of `state` would hold.
fn live_frames(state: &CatalogState) -> u64 {
    state
        .snapshots
        .values()
        .map(|record| {
            if record.state == SnapshotState::Pending {
                1
            } else {
                2
            }
        })
        .sum()
}

fn list_segments(storage: &dyn Storage) -> Result<Vec<u32>> {
    let mut segments: Vec<u32> = storage
        .list(CATALOG_DIR)
        .map_err(|e| Error::io("listing the catalog", e))?
        .iter()
        .filter_map(|name| {
            let stem = name.strip_suffix(".log")?;
            (stem.len() == 8)
                .then(|| u32::from_str_radix(stem, 16).ok())
                .flatten()
        })
        .collect();
    segments.sort_unstable();
    Ok(segments)
}

/// Removes segments durably.
fn remove_segments(storage: &dyn Storage, segments: &[u32]) -> Result<()> {
    let names: Vec<String> = segments.iter().map(|seq| segment_name(*seq)).collect();
    remove_durably(storage, CATALOG_DIR, &names)
        .map_err(|e| Error::io(format!("removing {}", names.join(", ")), e))
}

fn create_segment(storage: &dyn Storage, seq: u32) -> Result<Box<dyn AppendFile>> {
    let name = segment_name(seq);
    create_durably(
        storage,
        &name,
        &header::encode(CATALOG_MAGIC, u64::from(seq)),
    )
    .map_err(|e| Error::io(format!("creating {name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::catalog::SseKind;
    use crate::storage::{MemoryStorage, TornWrites};

    fn started(snapshot: u64) -> StartedRecord {
        StartedRecord {
            snapshot: SnapshotId(snapshot),
            parent: None,
            lineage: SnapshotId(snapshot),
            volume_size_gib: 1,
            timeout_minutes: 60,
            start_millis: 1,
            sse: SseKind::None,
            owner: "owner".into(),
            client_token: Some(format!("token-{snapshot}")),
            description: None,
            kms_key_arn: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn transitions_are_durable_and_only_from_pending() {
        let storage = MemoryStorage::new();
        {
            let catalog = Catalog::open(Arc::new(storage.clone())).expect("open");
            catalog.start(started(1)).expect("start 1");
            catalog.start(started(2)).expect("start 2");
            catalog
                .fail(SnapshotId(1), 5, "timed out".into())
                .expect("fail");
            catalog
                .complete(SnapshotId(2), 6, None, 0)
                .expect("complete");
            for transition in [
                catalog.complete(SnapshotId(1), 7, None, 0),
                catalog.fail(SnapshotId(2), 7, "late".into()),
            ] {
                assert!(matches!(transition, Err(Error::InvalidState { .. })));
            }
            assert!(matches!(
                catalog.fail(SnapshotId(3), 7, "x".into()),
                Err(Error::NotFound { .. })
            ));
        }
        // Every acknowledged transition was synced: a crash image keeps them.
        let reopened =
            Catalog::open(Arc::new(storage.crash_image(TornWrites::DropUnsynced))).expect("reopen");
        let failed = reopened.get(SnapshotId(1)).expect("snapshot 1");
        assert_eq!(
            failed.state,
            SnapshotState::Error {
                at_millis: 5,
                reason: "timed out".into()
            }
        );
        assert_eq!(failed.status_name(), "error");
        assert_eq!(
            reopened.get(SnapshotId(2)).map(|r| r.status_name()),
            Some("completed")
        );
        assert_eq!(reopened.find_token("owner", "token-1"), Some(SnapshotId(1)));
        assert_eq!(reopened.find_token("other owner", "token-1"), None);
    }

    fn all_records(catalog: &Catalog) -> Vec<SnapshotRecord> {
        let mut records = catalog.select(|_| true);
        records.sort_by_key(|record| record.started.snapshot);
        records
    }

    /// A catalog with every kind of record, some of them dead.
    fn busy_catalog(storage: &MemoryStorage) -> Catalog {
        let catalog = Catalog::open(Arc::new(storage.clone())).expect("open");
        for snapshot in 1..=8 {
            catalog.start(started(snapshot)).expect("start");
        }
        for snapshot in 1..=5 {
            catalog
                .complete(
                    SnapshotId(snapshot),
                    10,
                    Some(ChunkId([snapshot as u8; 32])),
                    3,
                )
                .expect("complete");
        }
        catalog
            .fail(SnapshotId(6), 11, "timed out".into())
            .expect("fail");
        for snapshot in [2, 4, 6] {
            catalog.delete(SnapshotId(snapshot), 12).expect("delete");
        }
        catalog
    }

    #[test]
    fn compaction_keeps_exactly_the_live_records() {
        let storage = MemoryStorage::new();
        let catalog = busy_catalog(&storage);
        let before = all_records(&catalog);
        // Deleted: 2 and 4 (start, complete, delete), 6 (start, fail, delete).
        assert_eq!(catalog.dead_records(), 9);
        assert!(catalog.compact().expect("compact") > 0);
        assert_eq!(catalog.dead_records(), 0);
        assert_eq!(all_records(&catalog), before);
        // Three completed (two records each) and two pending.
        assert_eq!(catalog.verify().expect("verify"), 8);
        // Appends continue in the checkpoint segment.
        catalog.start(started(9)).expect("start after compaction");
        drop(catalog);
        let reopened = Catalog::open(Arc::new(storage.clone())).expect("reopen");
        assert_eq!(all_records(&reopened).len(), before.len() + 1);
        assert_eq!(reopened.find_token("owner", "token-2"), None, "deleted");
        assert_eq!(reopened.find_token("owner", "token-3"), Some(SnapshotId(3)));
        assert_eq!(storage.list(CATALOG_DIR).expect("list").len(), 1);
    }

    #[test]
    fn a_crash_at_any_sync_of_compaction_leaves_the_same_catalog() {
        let base = MemoryStorage::new();
        let expected = all_records(&busy_catalog(&base));
        let mut k = 1;
        loop {
            let storage = base.crash_image(TornWrites::DropUnsynced);
            storage.crash_at_sync(k, TornWrites::KeepHalf);
            if let Ok(catalog) = Catalog::open(Arc::new(storage.clone())) {
                let _ = catalog.compact();
            }
            let Some(image) = storage.crashed_image() else {
                break;
            };
            let reopened = Catalog::open(Arc::new(image)).expect("reopen after crash");
            assert_eq!(all_records(&reopened), expected, "crash at sync {k}");
            k += 1;
        }
        assert!(k > 3, "compaction has several sync points");
    }
}
