//! Reading an archive back into a new completed snapshot, checking
//! everything before the commit.

use super::export::content_hash;
use super::location::{ArchiveReader, Bucket};
use super::manifest::{
    block_entry_name, hex_bytes, invalid_archive, parse_block_list_line, ArchiveKind, Manifest,
    RootHasher, BLOCK_LIST_ENTRY, MANIFEST_ENTRY, MAX_BLOCK_ENTRY_BYTES, MAX_BLOCK_LIST_LINE,
    MAX_MANIFEST_BYTES,
};
use crate::codec;
use crate::engine::{
    Abandon, BlockWrite, Engine, NewSnapshot, RequestedEncryption, SnapshotReader, SnapshotWriter,
};
use crate::error::{Error, Result, ValidationReason};
use crate::format::pack::Codec;
use crate::ids::{BlockIndex, ChunkId, Sha256Digest, SnapshotId, BLOCK_SIZE};
use crate::volume::Progress;
use sha2::Digest;
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zip::ZipArchive;

/// Blocks read ahead of the workers that check and store them.
const QUEUE: usize = 32;
/// Parent entries listed per round when zeroing what a full archive lacks.
const PAGE: usize = 4096;

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// A snapshot to build on: blocks equal to its own are not stored
    /// again. A delta archive needs one whose content equals its base.
    pub parent: Option<SnapshotId>,
    /// Encrypt with the key provider's default key (a child inherits its
    /// parent's key instead).
    pub encrypted: bool,
    /// Encrypt with this key.
    pub kms_key_arn: Option<String>,
    /// Workers; 0 = one per core.
    pub threads: usize,
}

/// What an import did (the CLI's `import --json` object).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImportReport {
    /// The new snapshot.
    pub snapshot_id: SnapshotId,
    /// Blocks in the archive.
    pub blocks: u64,
    /// Blocks written to the snapshot.
    pub blocks_written: u64,
    /// Blocks equal to the parent's, not written again.
    pub blocks_unchanged: u64,
    /// Bytes of the archive.
    pub archive_bytes: u64,
    /// Wall time.
    #[serde(rename = "Seconds", serialize_with = "crate::clock::serialize_seconds")]
    pub elapsed: Duration,
}

/// How an import ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The snapshot is completed.
    Completed(ImportReport),
    /// `cancel` was set; the pending snapshot was cancelled and deleted.
    Interrupted,
}

type Archive = ZipArchive<ArchiveReader>;

fn zip_failure(archive: &str, error: zip::result::ZipError) -> Error {
    match error {
        zip::result::ZipError::Io(error) => entry_read_failure(archive, "the zip structure", error),
        other => invalid_archive(archive, other.to_string()),
    }
}

/// Opens `key` in `bucket` as a zip archive and reads and checks its
/// manifest. Work is bounded: the manifest is read only if it is stored
/// uncompressed and small.
pub fn inspect(bucket: &Bucket, key: &str) -> Result<Manifest> {
    let name = bucket.describe(key);
    let (mut archive, _) = open_archive(bucket, key, &name)?;
    read_manifest(&mut archive, &name)
}

/// The archive at `key` and its length in bytes.
fn open_archive(bucket: &Bucket, key: &str, name: &str) -> Result<(Archive, u64)> {
    let reader = bucket.open(key)?;
    let len = reader.len();
    let archive = ZipArchive::new(reader).map_err(|error| zip_failure(name, error))?;
    Ok((archive, len))
}

/// Checks entry `position` is named `expected`, stored uncompressed, and
/// declares at most `limit` bytes; returns its size.
fn check_entry(
    archive: &mut Archive,
    position: usize,
    expected: &str,
    limit: u64,
    name: &str,
) -> Result<u64> {
    let entry = archive
        .by_index_raw(position)
        .map_err(|error| zip_failure(name, error))?;
    if entry.name() != expected {
        return Err(invalid_archive(
            name,
            format!(
                "entry {position} is named {:?} where {expected} belongs",
                entry.name()
            ),
        ));
    }
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(invalid_archive(
            name,
            format!(
                "{expected} is compressed with {:?}; entries are stored",
                entry.compression()
            ),
        ));
    }
    if entry.size() != entry.compressed_size() || entry.size() > limit {
        return Err(invalid_archive(
            name,
            format!(
                "{expected} declares {} bytes ({} stored), more than the {limit} it may hold",
                entry.size(),
                entry.compressed_size()
            ),
        ));
    }
    Ok(entry.size())
}

fn read_manifest(archive: &mut Archive, name: &str) -> Result<Manifest> {
    let entries = archive.len();
    if entries < 2 {
        return Err(invalid_archive(name, "it has no manifest and block list"));
    }
    let size = check_entry(
        archive,
        entries - 1,
        MANIFEST_ENTRY,
        MAX_MANIFEST_BYTES,
        name,
    )?;
    let mut bytes = Vec::with_capacity(size as usize);
    archive
        .by_index(entries - 1)
        .map_err(|error| zip_failure(name, error))?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| entry_read_failure(name, MANIFEST_ENTRY, error))?;
    let manifest = Manifest::parse(&bytes, name)?;
    if entries as u64 != manifest.block_count + 2 {
        return Err(invalid_archive(
            name,
            format!(
                "it has {entries} entries; its manifest lists {} blocks, so {} belong",
                manifest.block_count,
                manifest.block_count + 2
            ),
        ));
    }
    Ok(manifest)
}

/// A failed read of an entry's data: a bad crc or a short entry is the
/// archive's fault, anything else the medium's.
fn entry_read_failure(name: &str, entry: &str, error: std::io::Error) -> Error {
    match error.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            invalid_archive(name, format!("{entry}: {error}"))
        }
        _ => Error::io(format!("reading {entry} of {name}"), error),
    }
}

/// Imports the archive at `key` in `bucket` as a new completed snapshot
/// (see the module documentation).
pub fn import(
    engine: &Engine,
    bucket: &Bucket,
    key: &str,
    options: &ImportOptions,
    progress: Progress<'_>,
    cancel: &AtomicBool,
) -> Result<ImportOutcome> {
    let started_at = Instant::now();
    let name = bucket.describe(key);
    let (mut archive, archive_bytes) = open_archive(bucket, key, &name)?;
    let manifest = read_manifest(&mut archive, &name)?;
    let parent = options
        .parent
        .map(|parent| engine.reader(parent))
        .transpose()?;
    let workers = crate::volume::worker_count(options.threads, 1);
    if !check_base(&manifest, parent.as_ref(), &name, workers, cancel)? {
        return Ok(ImportOutcome::Interrupted);
    }
    drop(parent);
    let encryption = RequestedEncryption::of_bulk_load(
        options.kms_key_arn.as_deref(),
        options.encrypted,
        options.parent.is_some(),
    );
    let mut writer = engine.writer(NewSnapshot {
        parent: options.parent,
        tags: manifest
            .snapshot
            .tags
            .iter()
            .map(|tag| (tag.key.clone(), tag.value.clone()))
            .collect(),
        description: manifest.snapshot.description.clone(),
        encryption,
        ..NewSnapshot::new(manifest.snapshot.volume_size)
    })?;
    // Whatever ends the import early leaves nothing behind.
    writer.abandon_with(Abandon::Discard);
    let snapshot_id = writer.snapshot_id();
    let session = Session { writer: &writer };
    let ran = session.fill(
        &mut archive,
        &manifest,
        &name,
        options.threads,
        progress,
        cancel,
    );
    match ran {
        Err(error) => return Err(writer.abandon_noting(error)),
        // Cancelled while filling, or after the last block but before the
        // commit point: either way nothing is completed.
        Ok(filled) if !filled || cancel.load(Ordering::Acquire) => {
            writer.abandon_now()?;
            return Ok(ImportOutcome::Interrupted);
        }
        Ok(_) => {}
    }
    let blocks_written = writer.blocks_written();
    let blocks_unchanged = writer.blocks_unchanged();
    writer.complete()?;
    Ok(ImportOutcome::Completed(ImportReport {
        snapshot_id,
        blocks: manifest.block_count,
        blocks_written,
        blocks_unchanged,
        archive_bytes,
        elapsed: started_at.elapsed(),
    }))
}

/// A delta archive applies only on a parent whose content hash (computed
/// on `workers` threads) is its base's; a full one takes any parent (or
/// none). `false` if `cancel` was set while the parent was hashed.
fn check_base(
    manifest: &Manifest,
    parent: Option<&SnapshotReader>,
    name: &str,
    workers: usize,
    cancel: &AtomicBool,
) -> Result<bool> {
    let Some(base) = &manifest.base else {
        return Ok(true);
    };
    let Some(parent) = parent else {
        return Err(Error::invalid(
            ValidationReason::InvalidDependencyRequest,
            format!(
                "{name} holds only the changes since {}; import it with a parent holding that snapshot's content",
                base.snapshot_id
            ),
        ));
    };
    let Some((root_hash, count)) = content_hash(parent, workers, cancel)? else {
        return Ok(false);
    };
    if root_hash != base.root_hash || count != base.block_count {
        return Err(Error::invalid(
            ValidationReason::InvalidDependencyRequest,
            format!(
                "the parent's content differs from {name}'s base {} ({count} blocks, root hash {root_hash}; the base has {} blocks, root hash {})",
                base.snapshot_id, base.block_count, base.root_hash
            ),
        ));
    }
    Ok(true)
}

/// One block read from the archive, for a worker to check and store.
struct ArchivedBlock {
    index: u32,
    sha256: Sha256Digest,
    frame: Vec<u8>,
}

/// The pending snapshot an import fills.
struct Session<'a> {
    writer: &'a SnapshotWriter,
}

impl Session<'_> {
    /// Reads the block entries in order beside the block list on this
    /// thread, checks and stores them on `threads` workers, and checks the
    /// hashes at the end. `false` if cancelled.
    fn fill(
        &self,
        archive: &mut Archive,
        manifest: &Manifest,
        name: &str,
        threads: usize,
        progress: Progress<'_>,
        cancel: &AtomicBool,
    ) -> Result<bool> {
        let block_count = manifest.block_count as usize;
        let list_limit = manifest.block_count * MAX_BLOCK_LIST_LINE as u64;
        check_entry(archive, block_count, BLOCK_LIST_ENTRY, list_limit, name)?;
        let mut list_archive = archive.clone();
        let list_entry = list_archive
            .by_index(block_count)
            .map_err(|error| zip_failure(name, error))?;
        let mut list = ListReader {
            reader: BufReader::with_capacity(1 << 16, list_entry),
            hasher: sha2::Sha256::new(),
            line: Vec::with_capacity(MAX_BLOCK_LIST_LINE),
            name,
        };
        let workers = crate::volume::worker_count(threads, 1);
        let (sender, receiver) = sync_channel::<ArchivedBlock>(QUEUE);
        // Shared by the workers only: when the last one ends, the queue
        // closes and the reader's next send fails instead of blocking.
        let receiver = Arc::new(parking_lot::Mutex::new(receiver));
        let stop = AtomicBool::new(false);
        let mut zeroing = ParentZeroing::new(self, manifest.kind == ArchiveKind::Full);
        let (read, stored) = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let receiver = Arc::clone(&receiver);
                    let stop = &stop;
                    scope.spawn(move || self.store_from(receiver, name, stop))
                })
                .collect();
            drop(receiver);
            let read = (|| {
                let mut hasher = RootHasher::default();
                for position in 0..block_count {
                    if cancel.load(Ordering::Acquire) || stop.load(Ordering::Acquire) {
                        return Ok(None);
                    }
                    let (index, sha256) = list.next_line()?.ok_or_else(|| {
                        invalid_archive(
                            name,
                            format!("{BLOCK_LIST_ENTRY} ends before block {position}"),
                        )
                    })?;
                    if u64::from(index) >= manifest.volume_blocks() || !hasher.add(index, &sha256) {
                        return Err(invalid_archive(
                            name,
                            format!("{BLOCK_LIST_ENTRY} lists block {index} out of order or beyond the volume"),
                        ));
                    }
                    zeroing.before(index)?;
                    let frame = read_block_entry(archive, position, index, name)?;
                    if sender
                        .send(ArchivedBlock {
                            index,
                            sha256,
                            frame,
                        })
                        .is_err()
                    {
                        // A worker failed; its error is reported below.
                        return Ok(None);
                    }
                    progress(BLOCK_SIZE as u64);
                }
                if list.next_line()?.is_some() {
                    return Err(invalid_archive(
                        name,
                        format!("{BLOCK_LIST_ENTRY} lists more than {block_count} blocks"),
                    ));
                }
                zeroing.before(u32::MAX)?;
                Ok(Some(hasher))
            })();
            drop(sender);
            let stored: Result<()> = handles.into_iter().try_for_each(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(Error::io(
                        "an import worker",
                        std::io::Error::other("the worker panicked"),
                    ))
                })
            });
            (read, stored)
        });
        stored?;
        let Some(hasher) = read? else {
            return Ok(false);
        };
        let list_sha: [u8; 32] = list.hasher.finalize().into();
        if hex_bytes(&list_sha) != manifest.block_list_sha256 {
            return Err(invalid_archive(
                name,
                format!("{BLOCK_LIST_ENTRY} does not match the manifest's SHA-256 of it"),
            ));
        }
        let (root_hash, linear) = hasher.finish();
        if root_hash != manifest.root_hash || linear != manifest.linear_checksum {
            return Err(invalid_archive(
                name,
                "the blocks do not match the manifest's root hash and LINEAR checksum",
            ));
        }
        Ok(true)
    }

    /// A worker: takes blocks off the queue, decompresses each into exactly
    /// one block (never more: a frame that inflates beyond it is refused),
    /// checks its SHA-256, and stores it unless the parent has it already.
    fn store_from(
        &self,
        receiver: Arc<parking_lot::Mutex<Receiver<ArchivedBlock>>>,
        name: &str,
        stop: &AtomicBool,
    ) -> Result<()> {
        let zeros = vec![0u8; BLOCK_SIZE];
        let result = (|| loop {
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
            let Ok(block) = receiver.lock().recv() else {
                return Ok(());
            };
            // The exact frame exports write for zeros is known to decode to
            // zeros; anything else is decoded, bounded to one block.
            let decoded;
            let data: &[u8] = if block.frame == codec::zero_block_frame() {
                &zeros
            } else {
                decoded =
                    codec::decode_payload(Codec::Zstd, &block.frame, BLOCK_SIZE).map_err(|_| {
                        invalid_archive(
                            name,
                            format!(
                                "{} is not a zstd frame of exactly one block",
                                block_entry_name(block.index)
                            ),
                        )
                    })?;
                &decoded
            };
            let sha256 = if block.frame == codec::zero_block_frame() {
                codec::zero_block_sha256()
            } else {
                codec::sha256(data)
            };
            if sha256 != block.sha256 {
                return Err(invalid_archive(
                    name,
                    format!(
                        "{} does not match its SHA-256 in {BLOCK_LIST_ENTRY}",
                        block_entry_name(block.index)
                    ),
                ));
            }
            self.writer
                .put_block_with_sha256(BlockIndex(block.index), data, block.sha256)?;
        })();
        if result.is_err() {
            stop.store(true, Ordering::Release);
        }
        result
    }

    /// Writes a zero block at `index` (a parent's block a full archive
    /// lacks; one the parent holds as zeros already is left as it is).
    fn write_zero(&self, index: BlockIndex) -> Result<BlockWrite> {
        self.writer.put_block(index, &[0u8; BLOCK_SIZE])
    }
}

/// For a full archive imported onto a parent: the parent's written blocks
/// the archive does not list must read as zeros in the new snapshot, so
/// they are written as zeros, found by walking the parent's map in step
/// with the archive's ascending block list.
struct ParentZeroing<'a, 'b> {
    session: &'a Session<'b>,
    active: bool,
    page: std::vec::IntoIter<(BlockIndex, ChunkId)>,
    next_page: Option<BlockIndex>,
    pending: Option<BlockIndex>,
}

impl<'a, 'b> ParentZeroing<'a, 'b> {
    fn new(session: &'a Session<'b>, full_archive: bool) -> Self {
        let active = full_archive && session.writer.parent().is_some();
        ParentZeroing {
            session,
            active,
            page: Vec::new().into_iter(),
            next_page: active.then_some(BlockIndex(0)),
            pending: None,
        }
    }

    fn peek(&mut self) -> Result<Option<BlockIndex>> {
        loop {
            if let Some(index) = self.pending {
                return Ok(Some(index));
            }
            if let Some((index, _)) = self.page.next() {
                self.pending = Some(index);
                continue;
            }
            let Some(start) = self.next_page.take() else {
                return Ok(None);
            };
            let Some(parent) = self.session.writer.parent() else {
                return Ok(None);
            };
            let page = parent.blocks(start, PAGE)?;
            self.page = page.entries.into_iter();
            self.next_page = page.next;
        }
    }

    /// Zeroes the parent's blocks below `index` and skips `index` itself
    /// (the archive writes it).
    fn before(&mut self, index: u32) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        while let Some(parent_index) = self.peek()? {
            if parent_index.0 > index {
                break;
            }
            self.pending = None;
            if parent_index.0 < index {
                self.session.write_zero(parent_index)?;
            }
        }
        Ok(())
    }
}

/// Reads block entry `position`, which must hold block `index`, checking its
/// name, method and size before reading, and its crc after.
fn read_block_entry(
    archive: &mut Archive,
    position: usize,
    index: u32,
    name: &str,
) -> Result<Vec<u8>> {
    let entry_name = block_entry_name(index);
    let size = check_entry(archive, position, &entry_name, MAX_BLOCK_ENTRY_BYTES, name)?;
    let mut frame = Vec::with_capacity(size as usize);
    archive
        .by_index(position)
        .map_err(|error| zip_failure(name, error))?
        .take(MAX_BLOCK_ENTRY_BYTES + 1)
        .read_to_end(&mut frame)
        .map_err(|error| entry_read_failure(name, &entry_name, error))?;
    if frame.len() as u64 != size {
        return Err(invalid_archive(
            name,
            format!(
                "{entry_name} holds {} bytes, not the {size} it declares",
                frame.len()
            ),
        ));
    }
    Ok(frame)
}

/// The block list, a strictly parsed line at a time, hashed as it is read.
struct ListReader<'n, R: Read> {
    reader: BufReader<R>,
    hasher: sha2::Sha256,
    line: Vec<u8>,
    name: &'n str,
}

impl<R: Read> ListReader<'_, R> {
    fn next_line(&mut self) -> Result<Option<(u32, Sha256Digest)>> {
        self.line.clear();
        let read = (&mut self.reader)
            .take(MAX_BLOCK_LIST_LINE as u64)
            .read_until(b'\n', &mut self.line)
            .map_err(|error| entry_read_failure(self.name, BLOCK_LIST_ENTRY, error))?;
        if read == 0 {
            return Ok(None);
        }
        self.hasher.update(&self.line);
        let Some(line) = self.line.strip_suffix(b"\n") else {
            return Err(invalid_archive(
                self.name,
                format!("{BLOCK_LIST_ENTRY} has an unterminated or overlong line"),
            ));
        };
        parse_block_list_line(line).map(Some).ok_or_else(|| {
            invalid_archive(
                self.name,
                format!("{BLOCK_LIST_ENTRY} has a malformed line"),
            )
        })
    }
}
