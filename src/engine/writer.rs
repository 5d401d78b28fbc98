//! Snapshot writers: a pending snapshot filled by one bulk load (a backup,
//! an import), completed once, or abandoned however the load ends.
//!
//! A writer starts its snapshot, pins its parent (a [`SnapshotReader`]) so
//! unchanged blocks can be recognised, stores blocks from any number of
//! threads, and completes. If it is dropped without completing (an error,
//! a panic, an interruption), its snapshot is cancelled, or cancelled and
//! deleted, so no caller writes that cleanup by hand and no pending
//! snapshot is left behind.

use super::{block_id, BlockHashes, Engine, NewSnapshot, Session};
use crate::catalog::SnapshotRecord;
use crate::error::{Error, Result};
use crate::ids::{BlockIndex, Sha256Digest, SnapshotId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::reader::SnapshotReader;

/// What a writer does with its snapshot if it is dropped without
/// completing.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Abandon {
    /// Cancel it: it moves to `error` (as a timeout would), and its record
    /// says it was cancelled.
    #[default]
    Cancel,
    /// Cancel and delete it: nothing of it is left.
    Discard,
}

/// What [`SnapshotWriter::put_block`] did with a block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlockWrite {
    /// Stored (new data, or zeros over the parent's data).
    Written,
    /// Equal to the parent's block at that index: not written again.
    Unchanged,
    /// All zeros where the parent has nothing (or there is no parent):
    /// not written, as it reads as zeros anyway. Only
    /// [`SnapshotWriter::put_block_sparse`] skips these.
    SkippedZero,
}

/// A pending snapshot being filled (see the module documentation).
/// `Send + Sync`: blocks may be put from many threads at once.
pub struct SnapshotWriter {
    engine: Engine,
    session: Arc<Session>,
    record: SnapshotRecord,
    parent: Option<SnapshotReader>,
    written: AtomicU64,
    unchanged: AtomicU64,
    skipped_zero: AtomicU64,
    abandon: Abandon,
    /// Set once completed, cancelled or discarded: `Drop` has nothing to do.
    finished: bool,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("snapshot", &self.session.snapshot)
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts a snapshot for a bulk load and returns its writer. The
    /// parent, if any, is pinned for the writer's lifetime.
    pub fn writer(&self, request: NewSnapshot) -> Result<SnapshotWriter> {
        let parent = request
            .parent
            .map(|parent| self.reader(parent))
            .transpose()?;
        let record = self.start(request)?;
        let snapshot = record.started.snapshot;
        let session = match self.session(snapshot) {
            Ok(session) => session,
            Err(error) => {
                // An idempotent start can return a snapshot that is no
                // longer pending; a writer needs a fresh one.
                return Err(error.with_note("a writer needs a pending snapshot"));
            }
        };
        Ok(SnapshotWriter {
            engine: self.clone(),
            session,
            record,
            parent,
            written: AtomicU64::new(0),
            unchanged: AtomicU64::new(0),
            skipped_zero: AtomicU64::new(0),
            abandon: Abandon::default(),
            finished: false,
        })
    }
}

impl SnapshotWriter {
    /// The snapshot's id.
    pub fn snapshot_id(&self) -> SnapshotId {
        self.session.snapshot
    }

    /// The snapshot's catalog record as started.
    pub fn record(&self) -> &SnapshotRecord {
        &self.record
    }

    /// The parent, pinned, if the snapshot has one.
    pub fn parent(&self) -> Option<&SnapshotReader> {
        self.parent.as_ref()
    }

    /// Sets what dropping the writer without completing does.
    pub fn abandon_with(&mut self, abandon: Abandon) {
        self.abandon = abandon;
    }

    /// Stores `data` (one block) at `index` unless the parent holds the
    /// same data there. Ids are computed in the snapshot's dedup domain.
    pub fn put_block(&self, index: BlockIndex, data: &[u8]) -> Result<BlockWrite> {
        self.put(index, data, None, false)
    }

    /// [`SnapshotWriter::put_block`] that also skips an all-zero block
    /// where the parent has nothing: an image's holes.
    pub fn put_block_sparse(&self, index: BlockIndex, data: &[u8]) -> Result<BlockWrite> {
        self.put(index, data, None, true)
    }

    /// [`SnapshotWriter::put_block`] for a block whose SHA-256 the caller
    /// already computed from `data` (an import checks it against the
    /// archive's block list), so it is not computed again.
    pub(crate) fn put_block_with_sha256(
        &self,
        index: BlockIndex,
        data: &[u8],
        sha256: Sha256Digest,
    ) -> Result<BlockWrite> {
        self.put(index, data, Some(sha256), false)
    }

    fn put(
        &self,
        index: BlockIndex,
        data: &[u8],
        sha256: Option<Sha256Digest>,
        skip_new_zero: bool,
    ) -> Result<BlockWrite> {
        let (chunk, is_zero) = block_id(self.session.domain.as_deref(), data);
        let previous = match &self.parent {
            Some(parent) => parent.chunk_at(index)?,
            None => None,
        };
        let outcome = if previous == Some(chunk) {
            BlockWrite::Unchanged
        } else if skip_new_zero && is_zero && previous.is_none() {
            BlockWrite::SkippedZero
        } else {
            let hashes = match sha256 {
                Some(sha256) => BlockHashes {
                    chunk,
                    sha256,
                    is_zero,
                },
                None => BlockHashes::without_checksum(chunk, is_zero),
            };
            self.engine.check_writable()?;
            self.engine
                .store_block(&self.session, index, data, &hashes)?;
            BlockWrite::Written
        };
        let counter = match outcome {
            BlockWrite::Written => &self.written,
            BlockWrite::Unchanged => &self.unchanged,
            BlockWrite::SkippedZero => &self.skipped_zero,
        };
        counter.fetch_add(1, Ordering::AcqRel);
        Ok(outcome)
    }

    /// Blocks written so far.
    pub fn blocks_written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Blocks found equal to the parent's so far.
    pub fn blocks_unchanged(&self) -> u64 {
        self.unchanged.load(Ordering::Acquire)
    }

    /// All-zero blocks skipped so far.
    pub fn zero_blocks_skipped(&self) -> u64 {
        self.skipped_zero.load(Ordering::Acquire)
    }

    /// Completes the snapshot (the commit protocol of
    /// [`Engine::complete`]), checking that the engine recorded exactly
    /// the blocks this writer wrote. On failure the snapshot is abandoned
    /// as set, and the error says so.
    pub fn complete(mut self) -> Result<SnapshotRecord> {
        let written = self.blocks_written();
        let result = u32::try_from(written)
            .map_err(|_| Error::corrupted("a writer", "more blocks written than a volume has"))
            .and_then(|changed| self.engine.complete(self.snapshot_id(), changed, None));
        match result {
            Ok(record) => {
                self.finished = true;
                Ok(record)
            }
            Err(error) => Err(self.abandon_noting(error)),
        }
    }

    /// Cancels the snapshot (state `error`, reason "cancelled").
    pub fn cancel(mut self) -> Result<SnapshotRecord> {
        self.finished = true;
        self.engine.cancel(self.snapshot_id())
    }

    /// Abandons the snapshot as set (see [`Abandon`]) and adds to `error`
    /// what became of it.
    pub fn abandon_noting(&mut self, error: Error) -> Error {
        let snapshot = self.snapshot_id();
        match self.abandon_now() {
            Ok(()) => error.with_note(&match self.abandon {
                Abandon::Cancel => format!("snapshot {snapshot} was cancelled"),
                Abandon::Discard => format!("snapshot {snapshot} was cancelled and deleted"),
            }),
            Err(left) => error.with_note(&left.to_string()),
        }
    }

    /// Abandons the snapshot as set; `Err` says what is left of it and
    /// how to remove it.
    pub fn abandon_now(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let snapshot = self.snapshot_id();
        self.engine.cancel(snapshot).map_err(|error| {
            error.with_note(&format!(
                "snapshot {snapshot} is left pending; cancel it with `blocksnap cancel {snapshot}` or let it time out"
            ))
        })?;
        if self.abandon == Abandon::Discard {
            self.engine.delete(snapshot).map_err(|error| {
                error.with_note(&format!(
                    "snapshot {snapshot} was cancelled but not deleted; `blocksnap rm {snapshot}` removes it"
                ))
            })?;
        }
        Ok(())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if let Err(error) = self.abandon_now() {
            tracing::warn!(%error, "abandoning a dropped snapshot writer");
        }
    }
}
