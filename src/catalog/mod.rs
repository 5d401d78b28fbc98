//! Snapshot records, parent links and the state machine
//! `pending -> completed | error`, persisted as an append-only log.
//!
//! The log lives in segments, each kept twice: `catalog/NNNNNNNN.log` and
//! its byte-for-byte mirror `catalog/NNNNNNNN.mirror` (file header +
//! frames, see `format::catalog`). Every record is appended to both and
//! synced before the call returns, so an acknowledged transition survives
//! a crash, and a flipped byte or a truncation of one copy loses nothing:
//! replay takes each frame from whichever copy verifies (`replay`). A
//! torn tail ends a segment (new records go to a fresh one, so recovery
//! never truncates bytes); frames lost in both copies with valid frames
//! after them are corruption: opening fails with `Corrupted` rather than
//! silently forgetting records, and `repair` salvages what survives.

mod replay;

use crate::error::{Damage, Error, Result, ValidationReason};
use crate::format::catalog::{
    CatalogRecord, StartedRecord, CATALOG_FLAG_CHECKPOINT, CATALOG_FLAG_JOURNALED,
};
use crate::format::header::{self, CATALOG_MAGIC};
use crate::ids::{ChunkId, SnapshotId};
use crate::storage::{create_durably, remove_durably, AppendFile, Storage};
use parking_lot::{Mutex, RwLock};
use replay::{
    list_segments, mirror_name, replay, segment_name, CatalogState, Replayed, Strictness,
    CATALOG_DIR,
};
use std::sync::Arc;

/// Bytes kept allocated past a segment's end (`AppendFile::reserve`), so
/// transitions that free space (cancel, delete) still append on a full disk.
const RESERVE_AHEAD: u64 = 64 << 10;
/// The reservation is topped up once less than this is left.
const RESERVE_LOW: u64 = 16 << 10;

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

    /// The records a checkpoint holds for this snapshot: its Started
    /// record, then its transition if it left `pending`.
    fn checkpoint_frames(&self) -> Vec<CatalogRecord> {
        let snapshot = self.started.snapshot;
        let transition = match &self.state {
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
        std::iter::once(CatalogRecord::Started(self.started.clone()))
            .chain(transition)
            .collect()
    }
}

/// The open segment: both copies, appended together.
struct Log {
    primary: Box<dyn AppendFile>,
    mirror: Box<dyn AppendFile>,
    /// Both files have space allocated up to here.
    reserved_until: u64,
}

impl Log {
    /// Opens segment `seq`'s copies for appending, first appending to one
    /// what it lacks of the other (see [`replay::Appendable`]).
    fn open(storage: &dyn Storage, seq: u32, catch_up: Option<(bool, Vec<u8>)>) -> Result<Log> {
        let open = |name: String| {
            storage
                .open_append(&name)
                .map_err(|e| Error::io(format!("opening {name}"), e))
        };
        let mut log = Log {
            primary: open(segment_name(seq))?,
            mirror: open(mirror_name(seq))?,
            reserved_until: 0,
        };
        if let Some((to_mirror, missing)) = catch_up {
            let (file, name) = if to_mirror {
                (&mut log.mirror, mirror_name(seq))
            } else {
                (&mut log.primary, segment_name(seq))
            };
            file.append(&[&missing])
                .and_then(|_| file.sync())
                .map_err(|e| Error::io(format!("completing {name}"), e))?;
        }
        // What was read may not be durable yet (a crash right after it was
        // written): make it so before anything follows it.
        log.sync_both()?;
        log.reserve();
        Ok(log)
    }

    /// Creates segment `seq` (mirror first: the primary's existence is the
    /// segment's) holding `bytes`, a header and perhaps frames.
    fn create(storage: &dyn Storage, seq: u32, bytes: &[u8]) -> Result<Log> {
        let create = |name: String| {
            create_durably(storage, &name, bytes)
                .map_err(|e| Error::io(format!("creating {name}"), e))
        };
        let mirror = create(mirror_name(seq))?;
        let primary = create(segment_name(seq))?;
        let mut log = Log {
            primary,
            mirror,
            reserved_until: 0,
        };
        log.reserve();
        Ok(log)
    }

    /// Appends `frame` to both copies and makes it durable. A failure
    /// leaves the log's durable content unknown.
    fn append(&mut self, frame: &[u8]) -> Result<()> {
        let unknown = |e| durability_error("appending to the catalog", e);
        self.primary.append(&[frame]).map_err(unknown)?;
        self.mirror.append(&[frame]).map_err(unknown)?;
        self.sync_both()?;
        if self.reserved_until < self.primary.len() + RESERVE_LOW {
            self.reserve();
        }
        Ok(())
    }

    fn sync_both(&mut self) -> Result<()> {
        let unknown = |e| durability_error("syncing the catalog", e);
        self.primary.sync().map_err(unknown)?;
        self.mirror.sync().map_err(unknown)
    }

    /// Allocates space past the end of both copies, best effort.
    fn reserve(&mut self) {
        let until = self.primary.len().max(self.mirror.len()) + RESERVE_AHEAD;
        let reserved = self
            .primary
            .reserve(until)
            .and_then(|()| self.mirror.reserve(until));
        match reserved {
            Ok(()) => self.reserved_until = until,
            Err(error) => tracing::warn!(%error, "could not reserve space for the catalog"),
        }
    }
}

/// A failed append or sync: the log's durable content is unknown, unless
/// another writer of a shared medium committed first (then nothing of
/// this writer's change was committed, and it is redone on top).
fn durability_error(context: &str, error: std::io::Error) -> Error {
    if crate::storage::is_head_moved(&error) {
        Error::io(context, error)
    } else {
        Error::io_durability_unknown(context, error)
    }
}

/// The snapshot catalog. See the module documentation.
pub struct Catalog {
    storage: Arc<dyn Storage>,
    /// `None` on a read-only storage.
    log: Mutex<Option<Log>>,
    state: RwLock<CatalogState>,
    /// The storage generation `state` was read at (see
    /// [`Storage::generation`]): a checkpoint computed from it is written
    /// only if no other writer's commit was taken in since.
    generation: std::sync::atomic::AtomicU64,
    /// Damage found while opening.
    damage: Vec<Damage>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

/// A segment header of this format (mirrored, journaled starts).
fn segment_header(seq: u32, checkpoint: bool) -> Vec<u8> {
    let flags = CATALOG_FLAG_JOURNALED
        | if checkpoint {
            CATALOG_FLAG_CHECKPOINT
        } else {
            0
        };
    header::encode_with_flags(CATALOG_MAGIC, u64::from(seq), flags).to_vec()
}

impl Catalog {
    /// Replays the log and opens it for appending: to the last segment if
    /// both its copies end cleanly, else to a new segment. Superseded
    /// segments and mirrors of uncommitted ones are removed. On a
    /// read-only storage nothing is written and transitions are refused.
    pub fn open(storage: Arc<dyn Storage>) -> Result<Catalog> {
        // Read first: older than the state read, never newer.
        let generation = storage.generation();
        let Replayed {
            state,
            segments,
            stray_mirrors,
            superseded,
            appendable,
            damage,
        } = replay(storage.as_ref(), Strictness::Refuse)?;
        for found in &damage {
            tracing::warn!(file = %found.file, detail = %found.detail, "damage found in the catalog");
        }
        let log = if storage.is_read_only() {
            None
        } else {
            remove_segments(storage.as_ref(), &superseded)?;
            remove_files(
                storage.as_ref(),
                &stray_mirrors
                    .iter()
                    .map(|seq| mirror_name(*seq))
                    .collect::<Vec<_>>(),
            )?;
            Some(match appendable {
                Some(last) => Log::open(storage.as_ref(), last.seq, last.catch_up)?,
                None => {
                    let seq = segments.last().map_or(0, |last| last + 1);
                    Log::create(storage.as_ref(), seq, &segment_header(seq, false))?
                }
            })
        };
        Ok(Catalog {
            storage,
            log: Mutex::new(log),
            state: RwLock::new(state),
            generation: std::sync::atomic::AtomicU64::new(generation),
            damage,
        })
    }

    /// Replays the log again after another writer of a shared medium
    /// committed (the storage holds its commit now), and reopens it for
    /// appending: to its last segment if that ends cleanly, else to a new
    /// one. Returns every snapshot whose record changed, as it was and as
    /// it is (`None`: absent), so the engine can follow. Nothing is
    /// removed: superseded segments are the compacting writer's to remove.
    pub fn reload(&self) -> Result<Vec<(Option<SnapshotRecord>, Option<SnapshotRecord>)>> {
        let mut log = self.log.lock();
        let generation = self.storage.generation();
        let Replayed {
            state,
            segments,
            appendable,
            ..
        } = replay(self.storage.as_ref(), Strictness::Refuse)?;
        if log.is_some() {
            *log = Some(match appendable {
                Some(last) => Log::open(self.storage.as_ref(), last.seq, last.catch_up)?,
                None => {
                    let seq = segments.last().map_or(0, |last| last + 1);
                    Log::create(self.storage.as_ref(), seq, &segment_header(seq, false))?
                }
            });
        }
        // Another commit taken in while this one was read: read again.
        if self.storage.generation() != generation {
            return Err(Error::io(
                "reading the catalog",
                std::io::Error::other(crate::storage::HeadMoved),
            ));
        }
        let mut current = self.state.write();
        let mut changed = Vec::new();
        for (id, record) in &state.snapshots {
            let before = current.snapshots.get(id);
            if before != Some(record) {
                changed.push((before.cloned(), Some(record.clone())));
            }
        }
        for (id, record) in &current.snapshots {
            if !state.snapshots.contains_key(id) {
                changed.push((Some(record.clone()), None));
            }
        }
        *current = state;
        self.generation
            .store(generation, std::sync::atomic::Ordering::Release);
        Ok(changed)
    }

    /// Damage found while opening (in one copy only: nothing was lost).
    pub fn damage(&self) -> &[Damage] {
        &self.damage
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
        self.commit_computed(|catalog| Ok((record, precondition(catalog)?)))
    }

    /// [`Catalog::commit`] of a record computed from the state under the
    /// log lock (a transition that depends on the current record).
    fn commit_computed<T>(
        &self,
        compute: impl FnOnce(&Self) -> Result<(CatalogRecord, T)>,
    ) -> Result<T> {
        let mut log = self.log.lock();
        let log = log.as_mut().ok_or_else(read_only)?;
        let (record, computed) = compute(self)?;
        log.append(&record.encode_frame()?)?;
        self.state.write().apply(record, true, "catalog")?;
        Ok(computed)
    }

    /// Records a new pending snapshot. Its journal must be durable first.
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

    /// Replaces a snapshot's tags with what `edit` makes of them, and
    /// returns the new tags. `edit` sees the tags under the log lock, so
    /// two edits of one snapshot never lose one another's changes.
    pub fn retag(
        &self,
        snapshot: SnapshotId,
        at_millis: u64,
        edit: impl FnOnce(&[(String, String)]) -> Result<Vec<(String, String)>>,
    ) -> Result<Vec<(String, String)>> {
        self.commit_computed(|catalog| {
            let tags = catalog
                .inspect(snapshot, |record| edit(&record.started.tags))
                .ok_or_else(|| Error::NotFound {
                    message: format!("The snapshot '{snapshot}' does not exist."),
                })??;
            let record = CatalogRecord::Tagged {
                snapshot,
                at_millis,
                tags: tags.clone(),
            };
            Ok((record, tags))
        })
    }

    /// Every owner with a snapshot, sorted, each once.
    pub fn owners(&self) -> Vec<String> {
        let state = self.state.read();
        let owners: std::collections::BTreeSet<&str> = state
            .snapshots
            .values()
            .map(|record| record.started.owner.as_str())
            .collect();
        owners.into_iter().map(str::to_string).collect()
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

    /// Whether a pending snapshot's journal was made durable before its
    /// Started record (every snapshot this format starts): if so, a
    /// missing journal is damage. Snapshots started by an older format
    /// made their journal at their first put.
    pub fn journaled_at_start(&self, snapshot: SnapshotId) -> bool {
        !self.state.read().unjournaled.contains(&snapshot)
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
    pub fn select_ids(&self, filter: impl Fn(&SnapshotRecord) -> bool) -> Vec<SnapshotId> {
        self.state
            .read()
            .snapshots
            .values()
            .filter(|record| filter(record))
            .map(|record| record.started.snapshot)
            .collect()
    }

    /// The records `filter` accepts, copied.
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
    /// The checkpoint's mirror, then its primary, are written atomically
    /// and durably before anything is removed, so a crash leaves either
    /// the old log or the new one. Every pending snapshot must have its
    /// journal (the checkpoint says so). Returns the log bytes freed.
    pub fn compact(&self) -> Result<u64> {
        let mut log = self.log.lock();
        if log.is_none() {
            return Err(read_only());
        }
        let (segments, _) = list_segments(self.storage.as_ref())?;
        let seq = segments.last().map_or(0, |last| last + 1);
        let bytes = {
            let state = self.state.read();
            let mut records: Vec<&SnapshotRecord> = state.snapshots.values().collect();
            records.sort_by_key(|record| record.started.snapshot);
            checkpoint_bytes(seq, records)?
        };
        let mut old_bytes = 0u64;
        for old in &segments {
            old_bytes += self
                .storage
                .open_read(&segment_name(*old))
                .and_then(|file| file.len())
                .unwrap_or(0);
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        *log = Some(write_checkpoint(
            self.storage.as_ref(),
            seq,
            &bytes,
            Some(generation),
        )?);
        {
            let mut state = self.state.write();
            state.frames = live_frames(&state);
            state.unjournaled.clear();
        }
        remove_segments(self.storage.as_ref(), &segments)?;
        Ok(old_bytes.saturating_sub(bytes.len() as u64))
    }

    /// Re-reads the whole log, both copies, checking every frame's crc and
    /// every transition, and whether it replays to exactly the records in
    /// memory.
    pub fn verify(&self) -> Result<CatalogCheck> {
        // No record is appended while the files are read.
        let _log = self.log.lock();
        let replayed = replay(self.storage.as_ref(), Strictness::Salvage)?;
        let memory = &self.state.read().snapshots;
        let replays_to_memory = if self.storage.beside_writer() {
            // The writer goes on: snapshots may have been started, deleted
            // or retagged since, but a completed one never changes what
            // it holds.
            memory.iter().all(|(id, record)| {
                !matches!(record.state, SnapshotState::Completed { .. })
                    || replayed
                        .state
                        .snapshots
                        .get(id)
                        .is_none_or(|now| now.state == record.state)
            })
        } else {
            replayed.state.snapshots == *memory
        };
        Ok(CatalogCheck {
            records: replayed.state.frames,
            replays_to_memory,
            damage: replayed.damage,
        })
    }

    /// The storage the catalog writes to.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
}

/// What [`Catalog::verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogCheck {
    /// Records read.
    pub records: u64,
    /// Whether the log replays to exactly the catalog in memory (false
    /// when records were lost at rest since it was opened).
    pub replays_to_memory: bool,
    /// Damage found: one copy failing where the other holds the record,
    /// or records lost in both.
    pub damage: Vec<Damage>,
}

/// What survives of a catalog, read past any damage (for `repair`): every
/// snapshot's record, and what was lost.
pub struct Salvaged {
    /// Every snapshot whose Started record survived, in its latest
    /// surviving state.
    pub records: Vec<SnapshotRecord>,
    /// Snapshots started by an older format, whose journals were made at
    /// their first put.
    pub unjournaled: Vec<SnapshotId>,
    /// What was damaged, and whether records were lost with it.
    pub damage: Vec<Damage>,
}

/// Reads the catalog on `storage` past any damage (see [`Salvaged`]).
pub fn salvage(storage: &dyn Storage) -> Result<Salvaged> {
    let replayed = replay(storage, Strictness::Salvage)?;
    let mut records: Vec<SnapshotRecord> = replayed.state.snapshots.into_values().collect();
    records.sort_by_key(|record| record.started.snapshot);
    let mut unjournaled: Vec<SnapshotId> = replayed.state.unjournaled.into_iter().collect();
    unjournaled.sort_unstable();
    Ok(Salvaged {
        records,
        unjournaled,
        damage: replayed.damage,
    })
}

/// Replaces the whole catalog on `storage` with one checkpoint holding
/// exactly `records` (for `repair`; every pending snapshot among them
/// must have its journal). Atomic: a crash leaves the old log or this one.
pub fn rewrite(storage: &dyn Storage, records: &[SnapshotRecord]) -> Result<()> {
    let (segments, mirrors) = list_segments(storage)?;
    let seq = segments
        .iter()
        .chain(&mirrors)
        .max()
        .map_or(0, |last| last + 1);
    let bytes = checkpoint_bytes(seq, records.iter().collect())?;
    // Unchecked: on a shared medium, only a writer alone rewrites it.
    drop(write_checkpoint(storage, seq, &bytes, None)?);
    remove_segments(storage, &segments)?;
    remove_files(
        storage,
        &mirrors
            .iter()
            .filter(|mirror| segments.binary_search(mirror).is_err())
            .map(|seq| mirror_name(*seq))
            .collect::<Vec<_>>(),
    )
}

/// The bytes of checkpoint segment `seq` holding `records`.
fn checkpoint_bytes(seq: u32, records: Vec<&SnapshotRecord>) -> Result<Vec<u8>> {
    let mut bytes = segment_header(seq, true);
    for record in records {
        for frame in record.checkpoint_frames() {
            bytes.extend(frame.encode_frame()?);
        }
    }
    Ok(bytes)
}

/// Writes checkpoint segment `seq`: the mirror, then the primary (the
/// commit point), each atomically; returns it open for appends.
/// Writes checkpoint segment `seq` (mirror first: the primary's existence
/// is the segment's). With `generation`, when the catalog was read, only
/// if no other writer's commit was taken in since: else [`HeadMoved`],
/// and the caller reads again.
///
/// [`HeadMoved`]: crate::storage::HeadMoved
fn write_checkpoint(
    storage: &dyn Storage,
    seq: u32,
    bytes: &[u8],
    generation: Option<u64>,
) -> Result<Log> {
    for name in [mirror_name(seq), segment_name(seq)] {
        match generation {
            Some(generation) => storage.write_atomic_unless_moved(&name, bytes, generation),
            None => storage.write_atomic(&name, bytes),
        }
        .map_err(|e| Error::io(format!("writing {name}"), e))?;
    }
    Log::open(storage, seq, None)
}

fn read_only() -> Error {
    Error::ReadOnly {
        message: "the store is open read-only: the catalog takes no new records".into(),
    }
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

/// Removes segments (both copies) durably.
fn remove_segments(storage: &dyn Storage, segments: &[u32]) -> Result<()> {
    let names: Vec<String> = segments
        .iter()
        .flat_map(|seq| [segment_name(*seq), mirror_name(*seq)])
        .collect();
    remove_files(storage, &names)
}

fn remove_files(storage: &dyn Storage, names: &[String]) -> Result<()> {
    remove_durably(storage, CATALOG_DIR, names)
        .map_err(|e| Error::io(format!("removing {}", names.join(", ")), e))
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
            writer: None,
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
        let check = catalog.verify().expect("verify");
        assert_eq!((check.records, check.replays_to_memory), (8, true));
        assert!(check.damage.is_empty());
        // Appends continue in the checkpoint segment.
        catalog.start(started(9)).expect("start after compaction");
        drop(catalog);
        let reopened = Catalog::open(Arc::new(storage.clone())).expect("reopen");
        assert_eq!(all_records(&reopened).len(), before.len() + 1);
        assert_eq!(reopened.find_token("owner", "token-2"), None, "deleted");
        assert_eq!(reopened.find_token("owner", "token-3"), Some(SnapshotId(3)));
        // One segment: its primary and its mirror.
        assert_eq!(
            storage.list(CATALOG_DIR).expect("list"),
            ["00000001.log", "00000001.mirror"]
        );
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
