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
use crate::error::{Damage, Error, Result, ValidationReason};
use crate::format::catalog::StartedRecord;
use crate::format::header::{self, FILE_HEADER_SIZE, JOURNAL_MAGIC};
use crate::format::journal::{
    JournalRecord, JOURNAL_FLAG_AT_COMPLETE, JOURNAL_FLAG_MASKED_CHECKSUMS, JOURNAL_FLAG_PAIRED,
    JOURNAL_FLAG_TIMED,
};
use crate::ids::{BlockIndex, ChunkId, Sha256Digest, SnapshotId, BLOCKS_PER_GIB};
use crate::storage::{create_durably, AppendFile, Storage};
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
    /// Why the snapshot's state cannot be proven, if it cannot: its journal,
    /// made before its Started record, is missing. It then takes no writes
    /// and never times out; `repair` or an explicit cancel resolves it.
    pub(crate) unprovable: Option<String>,
    /// Whether another writer of a shared medium started it (its journal
    /// is on that writer's disk): this process takes none of its puts,
    /// completion or cancellation, and leaves its timeout to that writer.
    pub(crate) elsewhere: bool,
    /// The writer that started it, when the store has several.
    pub(crate) writer: Option<[u8; 16]>,
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
    /// A new snapshot's session, its journal (header only) created and
    /// durable, name included, before this returns: the caller then
    /// records the Started record, so a pending snapshot without its
    /// journal is damage. A failure creates nothing the store depends on
    /// (a stray journal is removed at the next open).
    pub(crate) fn create(
        storage: &dyn Storage,
        started: &StartedRecord,
        parent_root: Option<ChunkId>,
        domain: Option<Arc<DomainKeys>>,
        durable_on_ack: bool,
    ) -> Result<Session> {
        let journal_flags = new_journal_flags(durable_on_ack, is_sealed(domain.as_deref()));
        let journal = create_journal(storage, started.snapshot, journal_flags)?;
        Ok(Session::with_state(
            started,
            parent_root,
            domain,
            journal_flags,
            BTreeMap::new(),
            Some(journal),
            None,
        ))
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
            unprovable: None,
            elsewhere: false,
            writer: started.writer,
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

    /// Refuses every transition of a snapshot another writer started.
    pub(crate) fn check_here(&self) -> Result<()> {
        if !self.elsewhere {
            return Ok(());
        }
        let writer = self.writer.map_or_else(
            || "another writer".to_string(),
            |id| format!("writer {}", crate::storage::hex_id(&id)),
        );
        Err(Error::InvalidState {
            reason: ValidationReason::InvalidSnapshotId,
            message: format!(
                "The snapshot '{}' is pending in the process of {writer} (its journal is on \
                 that machine; `blocksnap writers` lists them): send its puts, completion and \
                 cancellation there.",
                self.snapshot
            ),
        })
    }

    /// Refuses writes to a snapshot whose state cannot be proven.
    pub(crate) fn check_provable(&self) -> Result<()> {
        self.check_here()?;
        match &self.unprovable {
            None => Ok(()),
            Some(why) => Err(Error::InvalidState {
                reason: ValidationReason::InvalidSnapshotId,
                message: format!(
                    "The snapshot '{}' takes no writes: {why}. Run `blocksnap repair`.",
                    self.snapshot
                ),
            }),
        }
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
    ) -> Result<Option<ChunkId>> {
        self.ensure_journal(state, storage)?;
        let record = JournalRecord {
            index,
            chunk_id: chunk,
            sha256: mask_checksum(self.domain.as_deref(), self.snapshot, index, &chunk, sha256),
            put_millis: Some(now),
        }
        .encode_entry(self.journal_flags);
        if let Some(journal) = state.journal.as_mut() {
            journal.append(&[&record]).map_err(|e| {
                Error::io_durability_unknown(
                    format!("appending to {}", journal_name(self.snapshot)),
                    e,
                )
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
        Ok(replaced)
    }

    /// Creates the journal of a snapshot started by an older format, which
    /// made it at the first put (every snapshot this format starts has
    /// one from its start).
    pub(crate) fn ensure_journal(
        &self,
        state: &mut SessionState,
        storage: &dyn Storage,
    ) -> Result<()> {
        if state.journal.is_none() {
            state.journal = Some(create_journal(storage, self.snapshot, self.journal_flags)?);
        }
        Ok(())
    }

    /// [`Session::ensure_journal`] taking the session's lock.
    pub(crate) fn ensure_journal_locked(&self, storage: &dyn Storage) -> Result<()> {
        self.ensure_journal(&mut self.state.lock(), storage)
    }

    /// Makes the journal durable (the caller synced the chunk store first).
    pub(crate) fn sync_journal(&self) -> Result<()> {
        let mut state = self.state.lock();
        if state.journal_dirty {
            if let Some(journal) = state.journal.as_mut() {
                journal.sync().map_err(|e| {
                    Error::io_durability_unknown(
                        format!("syncing {}", journal_name(self.snapshot)),
                        e,
                    )
                })?;
            }
            state.journal_dirty = false;
        }
        Ok(())
    }

    /// Rebuilds a session from its journal after a restart.
    ///
    /// Records are fixed-size and each carries its own crc, so a damaged
    /// record costs only that put: records that fail with valid ones after
    /// them are damage (reported; the puts are lost and CompleteSnapshot's
    /// count reveals it), failing records at the end are a torn tail. A
    /// damaged header is reported and its flags inferred. A record whose
    /// chunk did not survive was never acknowledged when puts are durable
    /// on acknowledgement, so the index keeps its previous content; when
    /// puts were acknowledged before being durable (journal flag
    /// `AT_COMPLETE`), the index is dropped instead, so it is never stale
    /// and CompleteSnapshot's count reveals the loss. The timeout resumes
    /// from the latest surviving put time; the puts of an untimed journal
    /// (written before put times were kept) count as made at `now`, so its
    /// snapshot is never cancelled early.
    ///
    /// A snapshot whose journal was made before its Started record
    /// (`journaled_at_start`) and is missing is unprovable (see
    /// [`Session::unprovable`]).
    ///
    /// Writable storage only: the journal is made ready for appends. A
    /// torn tail is cut (it holds no acknowledged put), and a journal that
    /// lost records to a crash or has the untimed layout is rewritten
    /// compactly, best effort; a damaged one is kept as it is, for repair.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn recover(
        storage: &dyn Storage,
        chunks: &ChunkStore,
        started: &StartedRecord,
        parent_root: Option<ChunkId>,
        domain: Option<Arc<DomainKeys>>,
        durable_on_ack: bool,
        journaled_at_start: bool,
        now: u64,
    ) -> Result<(Session, Vec<Damage>)> {
        let snapshot = started.snapshot;
        let volume_blocks = started.volume_size_gib * BLOCKS_PER_GIB;
        let name = journal_name(snapshot);
        let mut damage = Vec::new();
        let exists = storage
            .exists(&name)
            .map_err(|e| Error::io(format!("checking {name}"), e))?;
        let bytes = if exists {
            storage
                .read_all(&name)
                .map_err(|e| Error::io(format!("reading {name}"), e))?
        } else {
            Vec::new()
        };
        let parsed = match exists.then(|| parse_journal(&bytes, snapshot)).flatten() {
            Some(parsed) => parsed,
            // No journal, or one made at the first put (older format) whose
            // header is torn: nothing survived. A journal made at the start
            // cannot be missing, though: what happened is unprovable.
            None if !exists || !journaled_at_start => {
                let fresh_flags = new_journal_flags(durable_on_ack, is_sealed(domain.as_deref()));
                let mut session = Session::with_state(
                    started,
                    parent_root,
                    domain,
                    fresh_flags,
                    BTreeMap::new(),
                    None,
                    None,
                );
                // On tiered storage a journal not here is on the disk of
                // the writer that started the snapshot.
                session.elsewhere = !exists && storage.is_tiered();
                if !exists && journaled_at_start {
                    session.unprovable = Some(format!(
                        "its journal {name}, made before it started, is missing: it may have been completed (its catalog record lost) or have received blocks"
                    ));
                }
                return Ok((session, damage));
            }
            None => parse_journal_with_inferred_flags(&bytes, is_sealed(domain.as_deref())),
        };
        damage.extend(parsed.damage(&name));
        let journal_flags = parsed.flags;
        if (journal_flags & JOURNAL_FLAG_MASKED_CHECKSUMS != 0) != is_sealed(domain.as_deref()) {
            return Err(Error::corrupted(
                name,
                "the journal's checksum masking does not match the snapshot's encryption",
            ));
        }
        let zero = codec::zero_block_id();
        let mut writes = BTreeMap::new();
        let mut last_put_millis = None;
        let mut dropped = false;
        for (_, record, _) in &parsed.entries {
            last_put_millis = last_put_millis.max(Some(record.put_millis.unwrap_or(now)));
            if u64::from(record.index.0) >= volume_blocks {
                dropped = true;
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
            } else {
                dropped = true;
                if journal_flags & JOURNAL_FLAG_AT_COMPLETE != 0 {
                    writes.remove(&record.index);
                }
            }
        }
        let damaged = !parsed.is_sound();
        let torn = parsed.valid_end < bytes.len();
        let current_layout = journal_flags & CURRENT_LAYOUT == CURRENT_LAYOUT;
        let mut journal_flags = journal_flags;
        let journal = if storage.is_read_only() {
            None
        } else {
            // A damaged journal is kept as it is, for repair to report.
            let rewrite = !damaged && (dropped || !current_layout);
            let rewritten = rewrite
                && rewrite_journal(
                    storage,
                    snapshot,
                    domain.as_deref(),
                    journal_flags | CURRENT_LAYOUT,
                    &writes,
                    last_put_millis,
                )
                .is_ok();
            if rewritten {
                journal_flags |= CURRENT_LAYOUT;
            }
            let mut journal = storage
                .open_append(&name)
                .map_err(|e| Error::io(format!("opening {name}"), e))?;
            if torn && !rewritten {
                // A torn tail holds no acknowledged put; appends must not
                // follow it, or it would read as damage next time.
                journal
                    .truncate(parsed.valid_end as u64)
                    .and_then(|()| journal.sync())
                    .map_err(|e| Error::io(format!("cutting the torn tail of {name}"), e))?;
            }
            Some(journal)
        };
        let session = Session::with_state(
            started,
            parent_root,
            domain,
            journal_flags,
            writes,
            journal,
            last_put_millis,
        );
        Ok((session, damage))
    }
}

/// What repair found in, and did to, one pending snapshot's journal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JournalRepair {
    /// The pending snapshot.
    pub snapshot_id: String,
    /// Records that verify: kept.
    pub records: usize,
    /// Records that did not verify with valid ones after them: those
    /// puts are lost (CompleteSnapshot's count then disagrees).
    pub lost: usize,
    /// Whether the header was damaged (its flags inferred).
    pub header_damaged: bool,
}

/// Rewrites a damaged journal with its valid records only (in order, one
/// entry each; a torn tail is dropped with the damaged ones) under a sound
/// header; `None` if the journal is intact or absent. Nothing is written
/// when `dry_run`.
pub(crate) fn repair_journal(
    storage: &dyn Storage,
    snapshot: SnapshotId,
    masked: bool,
    dry_run: bool,
) -> Result<Option<JournalRepair>> {
    let name = journal_name(snapshot);
    let bytes = match storage.read_all(&name) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io(format!("reading {name}"), error)),
    };
    let parsed = parse_journal(&bytes, snapshot)
        .unwrap_or_else(|| parse_journal_with_inferred_flags(&bytes, masked));
    if parsed.is_sound() {
        return Ok(None);
    }
    if !dry_run {
        let flags = parsed.flags | CURRENT_LAYOUT;
        let mut rewritten = header::encode_with_flags(JOURNAL_MAGIC, snapshot.0, flags).to_vec();
        for (_, record, _) in &parsed.entries {
            rewritten.extend(record.encode_entry(flags));
        }
        storage
            .write_atomic(&name, &rewritten)
            .map_err(|e| Error::io(format!("rewriting {name}"), e))?;
    }
    Ok(Some(JournalRepair {
        snapshot_id: snapshot.to_string(),
        records: parsed.entries.len(),
        lost: parsed.lost.len(),
        header_damaged: parsed.header_damaged,
    }))
}

/// The layout flags every journal this format writes has: timed records,
/// each written twice.
const CURRENT_LAYOUT: u32 = JOURNAL_FLAG_TIMED | JOURNAL_FLAG_PAIRED;

/// A journal as read.
struct ParsedJournal {
    /// Its header's flags (inferred when the header is damaged).
    flags: u32,
    header_damaged: bool,
    /// Entries that verify: offset, record, which copies failed (bit `i`
    /// for copy `i`).
    entries: Vec<(usize, JournalRecord, u32)>,
    /// Offsets of entries that failed with valid entries after them: lost.
    lost: Vec<usize>,
    /// End of the last valid entry; bytes after it are a torn tail.
    valid_end: usize,
}

impl ParsedJournal {
    /// Whether nothing in it is damaged (a torn tail is not damage).
    fn is_sound(&self) -> bool {
        !self.header_damaged && self.lost.is_empty() && self.damaged_copies().is_empty()
    }

    /// Entries with a damaged copy. In the last entry a damaged second copy
    /// is what a torn write leaves (the first copy is written first), so
    /// only its first copy counts there.
    fn damaged_copies(&self) -> Vec<usize> {
        let last = self.entries.last().map(|(offset, _, _)| *offset);
        self.entries
            .iter()
            .filter(|(offset, _, failed)| {
                let counted = if Some(*offset) == last {
                    failed & 1
                } else {
                    *failed
                };
                counted != 0
            })
            .map(|(offset, _, _)| *offset)
            .collect()
    }

    fn damage(&self, name: &str) -> Vec<Damage> {
        let mut damage = Vec::new();
        if self.header_damaged {
            damage.push(Damage {
                file: name.to_string(),
                detail: "the header does not verify; its flags are inferred (puts taken as acknowledged before durable)".into(),
                data_lost: false,
            });
        }
        for offset in &self.lost {
            damage.push(Damage {
                file: name.to_string(),
                detail: format!(
                    "the entry at byte {offset} does not verify in any copy: that put is lost"
                ),
                data_lost: true,
            });
        }
        for offset in self.damaged_copies() {
            damage.push(Damage {
                file: name.to_string(),
                detail: format!(
                    "a copy of the entry at byte {offset} does not verify; the other holds the put"
                ),
                data_lost: false,
            });
        }
        damage
    }
}

/// Parses a journal whose header verifies and names `snapshot`; `None`
/// when it does not.
fn parse_journal(bytes: &[u8], snapshot: SnapshotId) -> Option<ParsedJournal> {
    let head = bytes.get(..FILE_HEADER_SIZE)?;
    let (subject, flags) = header::decode_with_flags(head, JOURNAL_MAGIC).ok()?;
    (subject == snapshot.0).then(|| parse_entries(bytes, flags, false))
}

/// Parses a journal whose header is damaged, with the layout under which
/// the most entries verify (this format's, else an older one); puts are
/// taken as acknowledged before durable, so a lost chunk drops its index
/// rather than leaving it stale.
fn parse_journal_with_inferred_flags(bytes: &[u8], masked: bool) -> ParsedJournal {
    let base = new_journal_flags(false, masked) & !CURRENT_LAYOUT;
    [CURRENT_LAYOUT, JOURNAL_FLAG_TIMED, 0]
        .into_iter()
        .map(|layout| parse_entries(bytes, base | layout, true))
        .max_by_key(|parsed| parsed.entries.len())
        .unwrap_or_else(|| parse_entries(bytes, base | CURRENT_LAYOUT, true))
}

fn parse_entries(bytes: &[u8], flags: u32, header_damaged: bool) -> ParsedJournal {
    let entry_size = JournalRecord::entry_size(flags);
    let body = bytes.get(FILE_HEADER_SIZE..).unwrap_or_default();
    let mut parsed = ParsedJournal {
        flags,
        header_damaged,
        entries: Vec::new(),
        lost: Vec::new(),
        valid_end: FILE_HEADER_SIZE,
    };
    let mut failed = Vec::new();
    for (position, raw) in body.chunks_exact(entry_size).enumerate() {
        let offset = FILE_HEADER_SIZE + position * entry_size;
        match JournalRecord::decode_entry(raw, flags) {
            Ok((record, failed_copies)) => {
                // Failed entries with this valid one after them were damage.
                parsed.lost.append(&mut failed);
                parsed.entries.push((offset, record, failed_copies));
                parsed.valid_end = offset + entry_size;
            }
            Err(_) => failed.push(offset),
        }
    }
    parsed
}

/// Creates the journal a pending snapshot of an older format lacks (it
/// received no block yet), so a checkpoint may say every pending snapshot
/// has one.
pub(crate) fn create_missing_journal(
    storage: &dyn Storage,
    snapshot: SnapshotId,
    durable_on_ack: bool,
    masked: bool,
) -> Result<()> {
    create_journal(storage, snapshot, new_journal_flags(durable_on_ack, masked)).map(drop)
}

/// Header flags of a journal this format creates.
fn new_journal_flags(durable_on_ack: bool, masked: bool) -> u32 {
    let mut flags = CURRENT_LAYOUT;
    if !durable_on_ack {
        flags |= JOURNAL_FLAG_AT_COMPLETE;
    }
    if masked {
        flags |= JOURNAL_FLAG_MASKED_CHECKSUMS;
    }
    flags
}

/// Creates a journal holding only its header, durably (content and name).
fn create_journal(
    storage: &dyn Storage,
    snapshot: SnapshotId,
    flags: u32,
) -> Result<Box<dyn AppendFile>> {
    let name = journal_name(snapshot);
    create_durably(
        storage,
        &name,
        &header::encode_with_flags(JOURNAL_MAGIC, snapshot.0, flags),
    )
    .map_err(|e| Error::io(format!("creating {name}"), e))
}

/// Replaces a journal with one record per write, every record timed with
/// the latest put time (all the timeout needs).
fn rewrite_journal(
    storage: &dyn Storage,
    snapshot: SnapshotId,
    domain: Option<&DomainKeys>,
    flags: u32,
    writes: &BTreeMap<BlockIndex, (ChunkId, Sha256Digest)>,
    put_millis: Option<u64>,
) -> Result<()> {
    let name = journal_name(snapshot);
    let mut compact = header::encode_with_flags(JOURNAL_MAGIC, snapshot.0, flags).to_vec();
    for (index, (chunk_id, sha256)) in writes {
        compact.extend(
            JournalRecord {
                index: *index,
                chunk_id: *chunk_id,
                sha256: mask_checksum(domain, snapshot, *index, chunk_id, *sha256),
                put_millis,
            }
            .encode_entry(flags),
        );
    }
    storage.write_atomic(&name, &compact).map_err(|e| {
        tracing::warn!(journal = %name, error = %e, "could not rewrite a recovered journal; appending after its surviving records instead");
        Error::io(format!("rewriting {name}"), e)
    })
}

/// Whether a snapshot keyed in `domain` is encrypted (its journal masks
/// checksums); a dedup-only domain is not.
fn is_sealed(domain: Option<&DomainKeys>) -> bool {
    domain.is_some_and(DomainKeys::is_sealed)
}

/// A checksum as an encrypted snapshot's journal stores it: XORed with a
/// mask of the domain's (DESIGN.md §4.7), so the journal never shows a
/// block's SHA-256. Its own inverse (so [`Sha256Digest::NOT_KEPT`] comes
/// back as itself); the identity for plain snapshots.
fn mask_checksum(
    domain: Option<&DomainKeys>,
    snapshot: SnapshotId,
    index: BlockIndex,
    chunk: &ChunkId,
    sha256: Sha256Digest,
) -> Sha256Digest {
    let Some(keys) = domain.filter(|keys| keys.is_sealed()) else {
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
/// ascending index order: the EBS LINEAR aggregate checksum. A write whose
/// checksum was not kept gets it from `checksum_of` (its stored chunk).
pub(crate) fn linear_aggregate(
    writes: &BTreeMap<BlockIndex, (ChunkId, Sha256Digest)>,
    checksum_of: impl Fn(&ChunkId) -> Result<Sha256Digest>,
) -> Result<Sha256Digest> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (chunk, sha256) in writes.values() {
        if sha256.is_kept() {
            hasher.update(sha256.0);
        } else {
            hasher.update(checksum_of(chunk)?.0);
        }
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}
