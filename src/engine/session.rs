//! Pending snapshots: the writes a snapshot has received, and its journal.
//!
//! Every call on a pending snapshot goes through its session's lock; the
//! lock is held only for bookkeeping (journal append, map insert), never for
//! hashing or compression, except by CompleteSnapshot, which holds it while
//! sealing so that no put can slip in between validation and commit.

use crate::chunkstore::ChunkStore;
use crate::codec;
use crate::error::{Error, Result, ValidationReason};
use crate::format::catalog::StartedRecord;
use crate::format::header::{self, FILE_HEADER_SIZE, JOURNAL_MAGIC};
use crate::format::journal::{JournalRecord, JOURNAL_FLAG_AT_COMPLETE, JOURNAL_RECORD_SIZE};
use crate::ids::{BlockIndex, ChunkId, Sha256Digest, SnapshotId, BLOCKS_PER_GIB};
use crate::storage::{AppendFile, Storage};
use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;

/// Directory of pending snapshots' journals.
pub(crate) const JOURNAL_DIR: &str = "pending";

/// Name of a pending snapshot's journal.
pub(crate) fn journal_name(snapshot: SnapshotId) -> String {
    format!("{JOURNAL_DIR}/{:016x}.journal", snapshot.0)
}

/// What a pending snapshot has received so far.
pub(crate) struct SessionState {
    /// Final content of every index written in this snapshot.
    pub(crate) writes: BTreeMap<BlockIndex, (ChunkId, Sha256Digest)>,
    journal: Option<Box<dyn AppendFile>>,
    journal_dirty: bool,
    /// Set once the snapshot left `pending`; later calls are refused.
    pub(crate) closed: bool,
}

/// One pending snapshot.
pub(crate) struct Session {
    pub(crate) snapshot: SnapshotId,
    /// The owner: only its requests may touch the snapshot.
    pub(crate) owner: String,
    /// Blocks in the volume: valid indexes are below this.
    pub(crate) volume_blocks: u64,
    /// The parent's map root, the base the writes apply to.
    pub(crate) parent_root: Option<ChunkId>,
    /// Journal header flags: how this snapshot's puts were acknowledged.
    journal_flags: u32,
    state: Mutex<SessionState>,
}

impl Session {
    /// A session with no writes yet.
    pub(crate) fn new(
        started: &StartedRecord,
        parent_root: Option<ChunkId>,
        durable_on_ack: bool,
    ) -> Session {
        let journal_flags = if durable_on_ack {
            0
        } else {
            JOURNAL_FLAG_AT_COMPLETE
        };
        Session::with_state(started, parent_root, journal_flags, BTreeMap::new(), None)
    }

    fn with_state(
        started: &StartedRecord,
        parent_root: Option<ChunkId>,
        journal_flags: u32,
        writes: BTreeMap<BlockIndex, (ChunkId, Sha256Digest)>,
        journal: Option<Box<dyn AppendFile>>,
    ) -> Session {
        let state = SessionState {
            writes,
            journal,
            journal_dirty: false,
            closed: false,
        };
        Session {
            snapshot: started.snapshot,
            owner: started.owner.clone(),
            volume_blocks: started.volume_size_gib * BLOCKS_PER_GIB,
            parent_root,
            journal_flags,
            state: Mutex::new(state),
        }
    }

    /// Locks the session, refusing if the snapshot already left `pending`.
    pub(crate) fn lock_open(&self) -> Result<MutexGuard<'_, SessionState>> {
        let state = self.state.lock();
        if state.closed {
            return Err(Error::InvalidState {
                reason: ValidationReason::InvalidSnapshotId,
                message: format!("The snapshot '{}' is no longer pending.", self.snapshot),
            });
        }
        Ok(state)
    }

    /// Records an acknowledged put: journal first, then the in-memory map.
    /// Returns whether a journal file was created (its directory entry then
    /// needs a sync).
    pub(crate) fn record(
        &self,
        storage: &dyn Storage,
        index: BlockIndex,
        chunk: ChunkId,
        sha256: Sha256Digest,
    ) -> Result<bool> {
        let mut state = self.lock_open()?;
        let mut created = false;
        if state.journal.is_none() {
            let name = journal_name(self.snapshot);
            let mut file = storage
                .open_append(&name)
                .map_err(|e| Error::io(format!("creating {name}"), e))?;
            file.truncate(0)
                .map_err(|e| Error::io(format!("resetting {name}"), e))?;
            file.append(&[&header::encode_with_flags(
                JOURNAL_MAGIC,
                self.snapshot.0,
                self.journal_flags,
            )])
            .map_err(|e| Error::io(format!("writing {name}"), e))?;
            state.journal = Some(file);
            created = true;
        }
        let record = JournalRecord {
            index,
            chunk_id: chunk,
            sha256,
        }
        .encode();
        if let Some(journal) = state.journal.as_mut() {
            journal.append(&[&record]).map_err(|e| {
                Error::io(format!("appending to {}", journal_name(self.snapshot)), e)
            })?;
        }
        state.journal_dirty = true;
        state.writes.insert(index, (chunk, sha256));
        Ok(created)
    }

    /// Makes the journal durable (the caller synced the chunk store first).
    pub(crate) fn sync_journal(&self) -> Result<()> {
        let mut state = self.state.lock();
        if state.journal_dirty {
            if let Some(journal) = state.journal.as_mut() {
                journal.sync().map_err(|e| {
                    Error::io(format!("syncing {}", journal_name(self.snapshot)), e)
                })?;
            }
            state.journal_dirty = false;
        }
        Ok(())
    }

    /// Rebuilds a session from its journal after a restart, and rewrites the
    /// surviving entries compactly and atomically so appends continue after
    /// a clean tail. A record whose chunk did not survive was never
    /// acknowledged when puts are durable on acknowledgement, so the index
    /// keeps its previous content; when puts were acknowledged before being
    /// durable (journal flag `AT_COMPLETE`), the index is dropped instead,
    /// so it is never stale and CompleteSnapshot's count reveals the loss.
    /// `durable_on_ack` applies to a journal that did not survive at all.
    pub(crate) fn recover(
        storage: &dyn Storage,
        chunks: &ChunkStore,
        started: &StartedRecord,
        parent_root: Option<ChunkId>,
        durable_on_ack: bool,
    ) -> Result<Session> {
        let snapshot = started.snapshot;
        let volume_blocks = started.volume_size_gib * BLOCKS_PER_GIB;
        let name = journal_name(snapshot);
        let exists = storage
            .exists(&name)
            .map_err(|e| Error::io(format!("checking {name}"), e))?;
        if !exists {
            return Ok(Session::new(started, parent_root, durable_on_ack));
        }
        let bytes = storage
            .read_all(&name)
            .map_err(|e| Error::io(format!("reading {name}"), e))?;
        let header = bytes
            .get(..FILE_HEADER_SIZE)
            .map(|head| header::decode_with_flags(head, JOURNAL_MAGIC));
        let journal_flags = match header {
            Some(Ok((subject, flags))) if subject == snapshot.0 => flags,
            // A torn header: the journal was created and nothing survived.
            _ => return Ok(Session::new(started, parent_root, durable_on_ack)),
        };
        let zero = codec::zero_block_id();
        let mut writes = BTreeMap::new();
        for raw in bytes
            .get(FILE_HEADER_SIZE..)
            .unwrap_or_default()
            .chunks(JOURNAL_RECORD_SIZE)
        {
            let Ok(record) = JournalRecord::decode(raw) else {
                break;
            };
            if u64::from(record.index.0) >= volume_blocks {
                continue;
            }
            if record.chunk_id == zero || chunks.contains(&record.chunk_id) {
                writes.insert(record.index, (record.chunk_id, record.sha256));
            } else if journal_flags & JOURNAL_FLAG_AT_COMPLETE != 0 {
                writes.remove(&record.index);
            }
        }
        let mut compact =
            header::encode_with_flags(JOURNAL_MAGIC, snapshot.0, journal_flags).to_vec();
        for (index, (chunk_id, sha256)) in &writes {
            compact.extend_from_slice(
                &JournalRecord {
                    index: *index,
                    chunk_id: *chunk_id,
                    sha256: *sha256,
                }
                .encode(),
            );
        }
        storage
            .write_atomic(&name, &compact)
            .map_err(|e| Error::io(format!("rewriting {name}"), e))?;
        let journal = storage
            .open_append(&name)
            .map_err(|e| Error::io(format!("opening {name}"), e))?;
        Ok(Session::with_state(
            started,
            parent_root,
            journal_flags,
            writes,
            Some(journal),
        ))
    }
}

/// `Base64(SHA-256(d[i0] ‖ d[i1] ‖ …))` over the raw digests of the writes in
/// ascending index order: the EBS LINEAR aggregate checksum.
pub(crate) fn linear_aggregate(
    writes: &BTreeMap<BlockIndex, (ChunkId, Sha256Digest)>,
) -> Sha256Digest {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (_, sha256) in writes.values() {
        hasher.update(sha256.0);
    }
    Sha256Digest(hasher.finalize().into())
}
