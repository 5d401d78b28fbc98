//! Snapshot readers: a completed snapshot, pinned for as long as it is
//! read.
//!
//! A reader resolves the snapshot's root under the reference guard and
//! takes one reference to it, as a completed snapshot's catalog record
//! does. While the reader lives, every chunk of the snapshot is live, so
//! the collector copies or keeps them whatever happens to the snapshot:
//! deleting it meanwhile only drops the catalog's reference, and the
//! chunks die (become garbage for the next collection) when the last
//! reader is dropped. Each read still holds the guard while it reads, so
//! the collector never switches packs under a record being read.
//!
//! This is the only way code outside the engine reads a snapshot: nothing
//! else takes the guard or resolves a root.

use super::{missing_chunk, Engine};
use crate::blockmap::{ChangedEntry, Page};
use crate::catalog::{SnapshotRecord, SnapshotState};
use crate::chunkstore::{ContentCheck, StoredChunk};
use crate::codec;
use crate::error::{Error, Result, ValidationReason};
use crate::format::pack::RecordKind;
use crate::ids::{BlockIndex, ChunkId, Sha256Digest, SnapshotId, BLOCK_SIZE};
use bytes::Bytes;

/// The tag a backup records the image's exact length in, so a restore
/// reproduces a final partial block (EBS volumes are whole GiB).
pub const IMAGE_BYTES_TAG: &str = "blocksnap:image-bytes";

/// A completed snapshot, open for reading (see the module documentation).
/// Dropping it releases its pin. `Send + Sync`: many threads may read
/// through one reader.
pub struct SnapshotReader {
    engine: Engine,
    record: SnapshotRecord,
    root: Option<ChunkId>,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("snapshot", &self.record.started.snapshot)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens completed snapshot `snapshot` (owned by this engine's owner)
    /// for reading. A snapshot that does not exist, was deleted, or belongs
    /// to another owner is [`Error::NotFound`]; one that is pending or
    /// failed is [`Error::InvalidState`].
    pub fn reader(&self, snapshot: SnapshotId) -> Result<SnapshotReader> {
        let _guard = self.inner.reference_guard.read();
        let record = self.snapshot(snapshot)?;
        let SnapshotState::Completed { root, .. } = record.state else {
            return Err(Error::InvalidState {
                reason: ValidationReason::InvalidSnapshotId,
                message: format!(
                    "The snapshot '{snapshot}' is {}; only completed snapshots can be read.",
                    record.status_name()
                ),
            });
        };
        // Under the guard, the record's reference keeps the root live, so
        // this adds one count and visits nothing.
        self.inner.references.acquire_tree(&self.maps(), root);
        if let Some(root) = root {
            *self.inner.reader_pins.lock().entry(root).or_insert(0) += 1;
        }
        Ok(SnapshotReader {
            engine: self.clone(),
            record,
            root,
        })
    }
}

impl SnapshotReader {
    /// The snapshot's id.
    pub fn snapshot_id(&self) -> SnapshotId {
        self.record.started.snapshot
    }

    /// The snapshot's catalog record as it was when the reader was opened.
    pub fn record(&self) -> &SnapshotRecord {
        &self.record
    }

    /// The volume's size in GiB.
    pub fn volume_size_gib(&self) -> u64 {
        self.record.started.volume_size_gib
    }

    /// The volume's size in blocks.
    pub fn volume_blocks(&self) -> u64 {
        self.volume_size_gib() * crate::ids::BLOCKS_PER_GIB
    }

    /// The length of the image the snapshot holds: the image's own as
    /// recorded at backup ([`IMAGE_BYTES_TAG`]), else the volume's. Restore
    /// writes this many bytes and an NBD export has this size.
    pub fn image_length(&self) -> u64 {
        let volume_bytes = self.volume_blocks() * BLOCK_SIZE as u64;
        self.record
            .started
            .tags
            .iter()
            .find(|(key, _)| key == IMAGE_BYTES_TAG)
            .and_then(|(_, value)| value.parse::<u64>().ok())
            .filter(|bytes| *bytes <= volume_bytes)
            .unwrap_or(volume_bytes)
    }

    /// Whether `other` is of the same lineage (descends from the same full
    /// snapshot): only such snapshots can be compared.
    pub fn is_related(&self, other: &SnapshotReader) -> bool {
        self.record.started.lineage == other.record.started.lineage
    }

    /// The data and SHA-256 of the block at `index`; `None` where the
    /// volume was never written. The data is checked against its content
    /// hash (or its record's authentication tag) before it is returned: a
    /// damaged block is [`Error::Corrupted`], never wrong bytes. A block
    /// stored without its SHA-256 gets it computed here (and remembered);
    /// callers that need only the data read [`SnapshotReader::chunk_at`]
    /// or [`SnapshotReader::blocks`] and then the data alone.
    pub fn block(&self, index: BlockIndex) -> Result<Option<(Bytes, Sha256Digest)>> {
        let _guard = self.engine.inner.reference_guard.read();
        let Some(chunk) = self.engine.maps().lookup(self.root, index)? else {
            return Ok(None);
        };
        if chunk == codec::zero_block_id() {
            return Ok(Some((
                Bytes::from(vec![0u8; BLOCK_SIZE]),
                codec::zero_block_sha256(),
            )));
        }
        let stored = self.stored_block(index, chunk)?;
        let sha256 = if stored.sha256.is_kept() {
            stored.sha256
        } else {
            self.engine
                .inner
                .chunks
                .computed_checksum(&chunk, &stored.data)
        };
        Ok(Some((stored.data, sha256)))
    }

    /// Block chunk `chunk` (not the zero chunk), which this snapshot holds
    /// at `index`, read and checked; the caller holds the reference guard.
    fn stored_block(&self, index: BlockIndex, chunk: ChunkId) -> Result<StoredChunk> {
        self.engine
            .inner
            .chunks
            .get(RecordKind::Block, &chunk)?
            .ok_or_else(|| missing_block(index, chunk))
    }

    /// The data of block chunk `chunk`, which this snapshot holds at
    /// `index` (as [`SnapshotReader::blocks`] or
    /// [`SnapshotReader::chunk_at`] gave it), checked as
    /// [`SnapshotReader::block`] checks it, without looking the index up
    /// again.
    pub(crate) fn block_data(&self, index: BlockIndex, chunk: ChunkId) -> Result<Bytes> {
        if chunk == codec::zero_block_id() {
            return Ok(Bytes::from(vec![0u8; BLOCK_SIZE]));
        }
        let _guard = self.engine.inner.reference_guard.read();
        Ok(self.stored_block(index, chunk)?.data)
    }

    /// The chunk the snapshot holds at `index`, if any.
    pub fn chunk_at(&self, index: BlockIndex) -> Result<Option<ChunkId>> {
        let _guard = self.engine.inner.reference_guard.read();
        self.engine.maps().lookup(self.root, index)
    }

    /// Up to `limit` written blocks from `start` on, ascending, with where
    /// the next page starts.
    pub fn blocks(&self, start: BlockIndex, limit: usize) -> Result<Page<(BlockIndex, ChunkId)>> {
        let _guard = self.engine.inner.reference_guard.read();
        self.engine.maps().list(self.root, start, limit)
    }

    /// Up to `limit` indexes from `start` on whose blocks differ between
    /// `base` (`first` in each entry; `None`: an empty volume) and this
    /// snapshot (`second`). Unrelated snapshots are
    /// [`ValidationReason::UnrelatedSnapshots`]. Work is proportional to
    /// the changes, not to the volume.
    pub fn changes_since(
        &self,
        base: Option<&SnapshotReader>,
        start: BlockIndex,
        limit: usize,
    ) -> Result<Page<ChangedEntry>> {
        if let Some(base) = base {
            if !self.is_related(base) {
                return Err(Error::invalid(
                    ValidationReason::UnrelatedSnapshots,
                    format!(
                        "{} and {} are not related",
                        base.snapshot_id(),
                        self.snapshot_id()
                    ),
                ));
            }
        }
        let _guard = self.engine.inner.reference_guard.read();
        self.engine
            .maps()
            .diff(base.and_then(|base| base.root), self.root, start, limit)
    }

    /// The SHA-256 of `chunk`, a block chunk this snapshot lists (the zero
    /// block's for the zero chunk): the one kept in a plain record's header
    /// without reading its payload, else remembered or computed.
    pub(crate) fn block_sha256(&self, chunk: ChunkId) -> Result<Sha256Digest> {
        if chunk == codec::zero_block_id() {
            return Ok(codec::zero_block_sha256());
        }
        let _guard = self.engine.inner.reference_guard.read();
        self.engine
            .inner
            .chunks
            .block_sha256(&chunk)?
            .ok_or_else(|| missing_chunk(chunk))
    }

    /// Block chunk `chunk`, which this snapshot lists, for an export: its
    /// data checked against its stored SHA-256 (or, stored without one, its
    /// id), the SHA-256, and its stored
    /// zstd frame when it has one (an incompressible block is stored raw
    /// and has none).
    pub(crate) fn block_with_frame(
        &self,
        chunk: ChunkId,
    ) -> Result<(Bytes, Sha256Digest, Option<Vec<u8>>)> {
        let _guard = self.engine.inner.reference_guard.read();
        let (stored, frame) = self
            .engine
            .inner
            .chunks
            .get_with_frame(RecordKind::Block, &chunk, ContentCheck::Sha256, true)?
            .ok_or_else(|| missing_chunk(chunk))?;
        Ok((stored.data, stored.sha256, frame))
    }

    /// Every block index and the chunks that must be readable for it (map
    /// nodes from the root down, then the block's own chunk).
    #[cfg(feature = "testing")]
    pub(crate) fn block_dependencies(
        &self,
    ) -> Result<std::collections::BTreeMap<u32, Vec<ChunkId>>> {
        let _guard = self.engine.inner.reference_guard.read();
        super::maintenance::block_dependencies(&self.engine.maps(), self.root)
    }
}

fn missing_block(index: BlockIndex, chunk: ChunkId) -> Error {
    Error::corrupted(
        format!("block {} (chunk {chunk})", index.0),
        "chunk is missing from the store",
    )
}

impl Drop for SnapshotReader {
    fn drop(&mut self) {
        let Some(root) = self.root else {
            return;
        };
        let inner = &self.engine.inner;
        let _guard = inner.reference_guard.read();
        {
            let mut pins = inner.reader_pins.lock();
            if let Some(count) = pins.get_mut(&root) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(&root);
                }
            }
        }
        // If the snapshot was deleted meanwhile, its chunks die here.
        inner
            .references
            .release_tree(&self.engine.maps(), Some(root));
    }
}
