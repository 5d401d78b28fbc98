//! Pending snapshots: the writes a snapshot has received, and its journal.
//!
//! Every call on a pending snapshot goes through its session's lock; the
//! lock is held only for bookkeeping (journal append, map insert), never for
//! hashing or compression, except by CompleteSnapshot, which holds it while
//! sealing so that no put can slip in between validation and commit.

use super::lifecycle::TIMEOUT_REASON_PREFIX;
use crate::chunkstore::ChunkStore;
use crate::codec;
use crate::crypto::DomainKeys;
use crate::error::{Error, Result, ValidationReason};
use crate::format::catalog::StartedRecord;
use crate::format::header::{self, FILE_HEADER_SIZE, JOURNAL_MAGIC};
use crate::format::journal::{
    JournalRecord, JOURNAL_FLAG_AT_COMPLETE, JOURNAL_FLAG_MASKED_CHECKSUMS, JOURNAL_FLAG_TIMED,
};
use crate::ids::{BlockIndex, ChunkId, Sha256Digest, SnapshotId, BLOCKS_PER_GIB};
use crate::storage::{AppendFile, Storage};
use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// When the last put was acknowledged, epoch milliseconds.
    last_put_millis: Option<u64>,
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
    /// The encryption domain of an encrypted snapshot: its blocks and
    /// nodes are keyed and sealed there, and its journal masks checksums.
    pub(crate) domain: Option<Arc<DomainKeys>>,
    /// Journal header flags: how this snapshot's puts were acknowledged.
    journal_flags: u32,
    /// When the snapshot started, epoch milliseconds.
    start_millis: u64,
    /// The inactivity timeout, milliseconds.
    timeout_millis: u64,
    /// The snapshot is cancelled at this instant (epoch milliseconds) unless
    /// a put moves it later first. Changed only under the state lock; read
    /// without it by the reaper, which re-checks under the lock.
    deadline_millis: AtomicU64,
    state: Mutex<SessionState>,
}

impl Session {
    /// A session with no writes yet.
    pub(crate) fn new(
        started: &StartedRecord,
        parent_root: Option<ChunkId>,
        domain: Option<Arc<DomainKeys>>,
        durable_on_ack: bool,
    ) -> Session {
        let mut journal_flags = JOURNAL_FLAG_TIMED;
        if !durable_on_ack {
            journal_flags |= JOURNAL_FLAG_AT_COMPLETE;
        }
        if domain.is_some() {
            journal_flags |= JOURNAL_FLAG_MASKED_CHECKSUMS;
        }
        Session::with_state(
            started,
            parent_root,
            domain,
            journal_flags,
            BTreeMap::new(),
            None,
            None,
        )
    }

    fn with_state(
        started: &StartedRecord,
        parent_root: Option<ChunkId>,
        domain: Option<Arc<DomainKeys>>,
        journal_flags: u32,
        writes: BTreeMap<BlockIndex, (ChunkId, Sha256Digest)>,
        journal: Option<Box<dyn AppendFile>>,
        last_put_millis: Option<u64>,
    ) -> Session {
        let timeout_millis = u64::from(started.timeout_minutes) * 60_000;
        let state = SessionState {
            writes,
            journal,
            journal_dirty: false,
            closed: false,
            last_put_millis,
        };
        let deadline = last_put_millis.unwrap_or(started.start_millis) + timeout_millis;
        Session {
            snapshot: started.snapshot,
            owner: started.owner.clone(),
            volume_blocks: started.volume_size_gib * BLOCKS_PER_GIB,
            parent_root,
            domain,
            journal_flags,
            start_millis: started.start_millis,
            timeout_millis,
            deadline_millis: AtomicU64::new(deadline),
            state: Mutex::new(state),
        }
    }

    /// Locks the session, refusing if the snapshot already left `pending`.
    /// The caller checks the deadline ([`Session::expired`]) under the lock.
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

    /// Every write so far: index and chunk.
    pub(crate) fn written_blocks(&self) -> Vec<(BlockIndex, ChunkId)> {
        let state = self.state.lock();
        state
            .writes
            .iter()
            .map(|(index, (chunk, _))| (*index, *chunk))
            .collect()
    }

    /// When the snapshot times out unless a put comes first.
    pub(crate) fn deadline_millis(&self) -> u64 {
        self.deadline_millis.load(Ordering::Acquire)
    }

    /// Why the snapshot is cancelled if the deadline has passed at `now`
    /// (the caller holds the lock, so no put can move the deadline meanwhile).
    pub(crate) fn expired(&self, state: &SessionState, now: u64) -> Option<String> {
        if now < self.deadline_millis() {
            return None;
        }
        let minutes = self.timeout_millis / 60_000;
        Some(match state.last_put_millis {
            None => format!(
                "{TIMEOUT_REASON_PREFIX}: no block was written within {minutes} minutes of the start ({} ms).",
                self.start_millis
            ),
            Some(last) => format!(
                "{TIMEOUT_REASON_PREFIX}: not completed within {minutes} minutes of the last block write ({last} ms)."
            ),
        })
    }

    /// Records an acknowledged put at `now`: journal first, then the
    /// in-memory map; the put resets the timeout. Returns whether a journal
    /// file was created (its directory entry then needs a sync) and the chunk
    /// this put replaced at `index`, if any.
    pub(crate) fn record(
        &self,
        state: &mut SessionState,
        storage: &dyn Storage,
        index: BlockIndex,
        chunk: ChunkId,
        sha256: Sha256Digest,
        now: u64,
    ) -> Result<(bool, Option<ChunkId>)> {
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
            sha256: mask_checksum(self.domain.as_deref(), self.snapshot, index, &chunk, sha256),
            put_millis: Some(now),
        }
        .encode();
        if let Some(journal) = state.journal.as_mut() {
            journal.append(&[&record]).map_err(|e| {
                Error::io(format!("appending to {}", journal_name(self.snapshot)), e)
            })?;
        }
        state.journal_dirty = true;
        let replaced = state
            .writes
            .insert(index, (chunk, sha256))
            .map(|(previous, _)| previous);
        let last_put = state.last_put_millis.map_or(now, |last| last.max(now));
        state.last_put_millis = Some(last_put);
        self.deadline_millis
            .store(last_put + self.timeout_millis, Ordering::Release);
        Ok((created, replaced))
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
    /// The timeout resumes from the latest surviving put time; the puts of
    /// an untimed journal (written before put times were kept) count as made
    /// at `now`, so its snapshot is never cancelled early.
    pub(crate) fn recover(
        storage: &dyn Storage,
        chunks: &ChunkStore,
        started: &StartedRecord,
        parent_root: Option<ChunkId>,
        domain: Option<Arc<DomainKeys>>,
        durable_on_ack: bool,
        now: u64,
    ) -> Result<Session> {
        let snapshot = started.snapshot;
        let volume_blocks = started.volume_size_gib * BLOCKS_PER_GIB;
        let name = journal_name(snapshot);
        let exists = storage
            .exists(&name)
            .map_err(|e| Error::io(format!("checking {name}"), e))?;
        if !exists {
            return Ok(Session::new(started, parent_root, domain, durable_on_ack));
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
            _ => return Ok(Session::new(started, parent_root, domain, durable_on_ack)),
        };
        if (journal_flags & JOURNAL_FLAG_MASKED_CHECKSUMS != 0) != domain.is_some() {
            return Err(Error::corrupted(
                name,
                "the journal's checksum masking does not match the snapshot's encryption",
            ));
        }
        let zero = codec::zero_block_id();
        let mut writes = BTreeMap::new();
        let mut last_put_millis = None;
        for raw in bytes
            .get(FILE_HEADER_SIZE..)
            .unwrap_or_default()
            .chunks(JournalRecord::size(journal_flags))
        {
            let Ok(record) = JournalRecord::decode(raw, journal_flags) else {
                break;
            };
            last_put_millis = last_put_millis.max(Some(record.put_millis.unwrap_or(now)));
            if u64::from(record.index.0) >= volume_blocks {
                continue;
            }
            if record.chunk_id == zero || chunks.contains(&record.chunk_id) {
                let sha256 = mask_checksum(
                    domain.as_deref(),
                    snapshot,
                    record.index,
                    &record.chunk_id,
                    record.sha256,
                );
                writes.insert(record.index, (record.chunk_id, sha256));
            } else if journal_flags & JOURNAL_FLAG_AT_COMPLETE != 0 {
                writes.remove(&record.index);
            }
        }
        // The rewrite is timed: every surviving record carries the latest
        // put time, which is all the timeout needs.
        let journal_flags = journal_flags | JOURNAL_FLAG_TIMED;
        let mut compact =
            header::encode_with_flags(JOURNAL_MAGIC, snapshot.0, journal_flags).to_vec();
        for (index, (chunk_id, sha256)) in &writes {
            compact.extend_from_slice(
                &JournalRecord {
                    index: *index,
                    chunk_id: *chunk_id,
                    sha256: mask_checksum(domain.as_deref(), snapshot, *index, chunk_id, *sha256),
                    put_millis: last_put_millis,
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
            domain,
            journal_flags,
            writes,
            Some(journal),
            last_put_millis,
        ))
    }
}

/// A checksum as an encrypted snapshot's journal stores it: XORed with a
/// mask of the domain's (DESIGN.md §4.7), so the journal never shows a
/// block's SHA-256. Its own inverse; the identity for plain snapshots.
fn mask_checksum(
    domain: Option<&DomainKeys>,
    snapshot: SnapshotId,
    index: BlockIndex,
    chunk: &ChunkId,
    sha256: Sha256Digest,
) -> Sha256Digest {
    let Some(keys) = domain else {
        return sha256;
    };
    let mask = keys.checksum_mask(snapshot, index, chunk);
    let mut out = sha256.0;
    for (byte, mask) in out.iter_mut().zip(mask) {
        *byte ^= mask;
    }
    Sha256Digest(out)
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
