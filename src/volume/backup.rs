//! Backing up an image: a full snapshot, or a child that writes only what
//! changed since its parent.

use super::{image_len, in_parallel, invalid, read_block_at, worker_count, Progress};
use crate::engine::{Engine, NewSnapshot, RequestedEncryption, SnapshotWriter, IMAGE_BYTES_TAG};
use crate::error::{Error, Result};
use crate::ids::{BlockIndex, SnapshotId, BLOCKS_PER_GIB, BLOCK_SIZE};
use crate::storage::{open_direct, AlignedBuffer};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What to back up against, and how.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// The snapshot this one changes: unchanged blocks are not written.
    pub parent: Option<SnapshotId>,
    /// Block indexes that may have changed since the parent (from an
    /// agent's change tracking); only these are read. Needs `parent`.
    pub changed_blocks: Option<Vec<u32>>,
    /// Description of the snapshot.
    pub description: Option<String>,
    /// Tags of the snapshot, key and value (the image length tag is added).
    pub tags: Vec<(String, String)>,
    /// The volume the image is of, recorded as the tag [`super::VOLUME_TAG`]
    /// (`None`: no volume recorded).
    pub volume: Option<String>,
    /// Encrypt with the key provider's default key (a child inherits its
    /// parent's key instead).
    pub encrypted: bool,
    /// Encrypt with this key.
    pub kms_key_arn: Option<String>,
    /// Workers; 0 = two per core (a worker sealing a pack waits for its
    /// fsync; the other keeps the core busy).
    pub threads: usize,
    /// Read an image through the page cache only. By default (Linux) a
    /// block the page cache holds is copied from it, and any other is read
    /// with direct I/O (`O_DIRECT`) where the file system or device accepts
    /// it: the kernel copies nothing for it, and reading a volume does not
    /// evict the page cache. Direct reads see what buffered writers wrote:
    /// the kernel writes dirty pages of the range back first.
    pub buffered: bool,
    /// For an NBD source: read only the blocks QEMU's dirty bitmap of this
    /// name (`qemu:dirty-bitmap:NAME`) marks. Needs `parent`.
    pub dirty_bitmap: Option<String>,
}

/// Where a backup reads the volume from.
#[derive(Clone, Copy, Debug)]
pub enum BackupSource<'a> {
    /// A raw image file or block device.
    Image(&'a Path),
    /// An NBD export (qemu-nbd, qemu-storage-daemon, nbdkit, blocksnap):
    /// unallocated zero ranges are recorded without reading them.
    #[cfg(feature = "nbd")]
    Nbd(&'a crate::nbd::NbdSource),
}

/// What a completed backup did (the CLI's `backup --json` object).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BackupReport {
    /// The new snapshot.
    pub snapshot_id: SnapshotId,
    /// The snapshot it was taken against (`None`: a full backup).
    #[serde(rename = "ParentSnapshotId")]
    pub parent: Option<SnapshotId>,
    /// The volume recorded on it.
    pub volume: Option<String>,
    /// Length of the image.
    pub image_bytes: u64,
    /// Blocks read from the image (an NBD source's known-zero blocks and
    /// blocks its dirty bitmap leaves clean are not read).
    pub blocks_read: u64,
    /// Blocks written to the snapshot (new data, or zeros over data).
    pub blocks_written: u64,
    /// Blocks equal to the parent's, not written again.
    pub blocks_unchanged: u64,
    /// All-zero blocks never written (they read back as zeros).
    pub zero_blocks_skipped: u64,
    /// Whether the image was read with direct I/O (see
    /// [`BackupOptions::buffered`]); never for an NBD source.
    pub direct_io: bool,
    /// Wall time.
    #[serde(rename = "Seconds", serialize_with = "crate::clock::serialize_seconds")]
    pub elapsed: Duration,
}

/// How a backup ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupOutcome {
    /// The snapshot is completed.
    Completed(BackupReport),
    /// `cancel` was set: the pending snapshot was cancelled (state
    /// `error`), so no half-written snapshot remains.
    Interrupted {
        /// The cancelled snapshot.
        snapshot_id: SnapshotId,
    },
}

/// The block indexes a backup visits.
enum Work {
    All(u32),
    Listed(Vec<u32>),
}

impl Work {
    fn len(&self) -> usize {
        match self {
            Work::All(count) => *count as usize,
            Work::Listed(indexes) => indexes.len(),
        }
    }

    fn get(&self, position: usize) -> Option<u32> {
        match self {
            Work::All(count) => u32::try_from(position).ok().filter(|index| index < count),
            Work::Listed(indexes) => indexes.get(position).copied(),
        }
    }
}

/// Where the workers read blocks from.
pub(super) trait Volume: Sync {
    /// Bytes of the volume.
    fn len(&self) -> u64;
    /// Reads block `index` into `buffer` (zero padded past the end), on
    /// behalf of worker `worker`.
    fn read_block(&self, worker: usize, index: u32, buffer: &mut [u8]) -> Result<()>;
    /// Whether block `index` is known to read as zeros without reading it.
    fn known_zero(&self, index: u32) -> bool;
    /// Whether whole blocks were read with direct I/O.
    fn direct_io(&self) -> bool {
        false
    }
}

/// An image file or block device, and on Linux a second handle on it
/// opened with `O_DIRECT`.
struct ImageVolume<'a> {
    file: File,
    direct: Option<File>,
    /// Set when a direct read was refused (EINVAL: an alignment the file
    /// system or device does not accept); later blocks go through `file`.
    direct_refused: AtomicBool,
    path: &'a Path,
    len: u64,
}

impl<'a> ImageVolume<'a> {
    /// Opens the image at `path`, with a direct handle beside the buffered
    /// one unless `buffered` (or the file system refuses `O_DIRECT`).
    fn open(path: &'a Path, buffered: bool) -> Result<Self> {
        let file = File::open(path)
            .map_err(|error| Error::io(format!("opening {}", path.display()), error))?;
        let len = image_len(&file, path)?;
        let direct = (!buffered).then(|| open_direct(&file, false)).flatten();
        Ok(ImageVolume {
            file,
            direct,
            direct_refused: AtomicBool::new(false),
            path,
            len,
        })
    }

    /// Reads block `index` into `buffer` (aligned by the caller) from the
    /// page cache if it holds the whole block, else through the direct
    /// handle: `Ok(false)` when direct reads are not available or were
    /// refused, and the caller reads it buffered.
    fn read_direct(&self, index: u32, buffer: &mut [u8]) -> Result<bool> {
        let Some(direct) = &self.direct else {
            return Ok(false);
        };
        if self.direct_refused.load(Ordering::Acquire) {
            return Ok(false);
        }
        let offset = u64::from(index) * BLOCK_SIZE as u64;
        let available = self.len.saturating_sub(offset).min(BLOCK_SIZE as u64) as usize;
        if self.read_cached(offset, available, buffer) {
            return Ok(true);
        }
        // The whole aligned block is asked for; at the end of the image
        // the kernel returns the bytes up to its length.
        let mut read = 0;
        while read < available {
            let Some(rest) = buffer.get_mut(read..) else {
                break;
            };
            match direct.read_at(rest, offset + read as u64) {
                Ok(0) => break,
                Ok(count) => read += count,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == std::io::ErrorKind::InvalidInput && read == 0 => {
                    self.direct_refused.store(true, Ordering::Release);
                    return Ok(false);
                }
                Err(error) => {
                    return Err(Error::io(
                        format!("reading {} at byte {offset}", self.path.display()),
                        error,
                    ))
                }
            }
        }
        if read < available {
            return Err(Error::io(
                format!("reading {} at byte {offset}", self.path.display()),
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            ));
        }
        // ext4 zeroes the buffer past the end of the file itself
        // (it maps as a hole); other file systems need not.
        if let Some(padding) = buffer.get_mut(available..) {
            padding.fill(0);
        }
        Ok(true)
    }
}

impl ImageVolume<'_> {
    /// Copies `available` bytes at `offset` into `buffer` (zero padded) if
    /// the page cache holds all of them: a read with `RWF_NOWAIT` does no
    /// I/O, and a miss (`EAGAIN`), a partial hit or a kernel without it
    /// returns `false`.
    #[cfg(target_os = "linux")]
    fn read_cached(&self, offset: u64, available: usize, buffer: &mut [u8]) -> bool {
        use rustix::io::{preadv2, ReadWriteFlags};
        let (data, padding) = buffer.split_at_mut(available.min(buffer.len()));
        let read = preadv2(
            &self.file,
            &mut [std::io::IoSliceMut::new(data)],
            offset,
            ReadWriteFlags::NOWAIT,
        );
        if read.is_ok_and(|read| read == available) {
            padding.fill(0);
            return true;
        }
        false
    }

    #[cfg(not(target_os = "linux"))]
    fn read_cached(&self, _offset: u64, _available: usize, _buffer: &mut [u8]) -> bool {
        false
    }
}

impl Volume for ImageVolume<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_block(&self, _worker: usize, index: u32, buffer: &mut [u8]) -> Result<()> {
        if self.read_direct(index, buffer)? {
            return Ok(());
        }
        read_block_at(&self.file, self.path, self.len, index, buffer)
    }

    fn known_zero(&self, _index: u32) -> bool {
        false
    }

    fn direct_io(&self) -> bool {
        self.direct.is_some() && !self.direct_refused.load(Ordering::Acquire)
    }
}

/// Backs up the image at `path` into a new snapshot (see the module
/// documentation). Any failure or interruption cancels the pending
/// snapshot before returning.
pub fn backup(
    engine: &Engine,
    path: &Path,
    options: &BackupOptions,
    progress: Progress<'_>,
    cancel: &AtomicBool,
) -> Result<BackupOutcome> {
    backup_from(engine, BackupSource::Image(path), options, progress, cancel)
}

/// Backs up `source` into a new snapshot, as [`backup`] does an image.
pub fn backup_from(
    engine: &Engine,
    source: BackupSource<'_>,
    options: &BackupOptions,
    progress: Progress<'_>,
    cancel: &AtomicBool,
) -> Result<BackupOutcome> {
    let started_at = Instant::now();
    if options.parent.is_none()
        && (options.changed_blocks.is_some() || options.dirty_bitmap.is_some())
    {
        return Err(invalid(
            "a changed-block list or dirty bitmap needs a parent snapshot",
        ));
    }
    let workers = worker_count(options.threads, 2);
    let (volume, dirty): (Box<dyn Volume + '_>, Option<Vec<u32>>) = match source {
        BackupSource::Image(path) => {
            if options.dirty_bitmap.is_some() {
                return Err(invalid("a dirty bitmap needs an NBD source"));
            }
            (Box::new(ImageVolume::open(path, options.buffered)?), None)
        }
        #[cfg(feature = "nbd")]
        BackupSource::Nbd(source) => {
            let (volume, dirty) =
                super::nbd_source::open(source, options.dirty_bitmap.as_deref(), workers)?;
            (Box::new(volume), dirty)
        }
    };
    let image_bytes = volume.len();
    let image_blocks = u32::try_from(image_bytes.div_ceil(BLOCK_SIZE as u64))
        .map_err(|_| invalid("the volume is larger than 64 TiB"))?;
    let parent = options
        .parent
        .map(|parent| engine.snapshot(parent))
        .transpose()?;
    let listed = match (&options.changed_blocks, dirty) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give a changed-block list or a dirty bitmap, not both",
            ))
        }
        (Some(listed), None) => Some(listed.clone()),
        (None, dirty) => dirty,
    };
    let work = match listed {
        Some(mut indexes) => {
            indexes.sort_unstable();
            indexes.dedup();
            if let Some(beyond) = indexes.iter().find(|index| **index >= image_blocks) {
                return Err(invalid(format!(
                    "changed block {beyond} is beyond the image's {image_blocks} blocks"
                )));
            }
            Work::Listed(indexes)
        }
        None => Work::All(image_blocks),
    };
    let image_gib = image_bytes
        .div_ceil(BLOCKS_PER_GIB * BLOCK_SIZE as u64)
        .max(1);
    let volume_gib = parent.map_or(image_gib, |parent| {
        parent.started.volume_size_gib.max(image_gib)
    });
    let mut tags = options.tags.clone();
    tags.push((IMAGE_BYTES_TAG.to_string(), image_bytes.to_string()));
    if let Some(volume) = &options.volume {
        super::check_volume_name(volume)?;
        tags.retain(|(key, _)| key != super::VOLUME_TAG);
        tags.push((super::VOLUME_TAG.to_string(), volume.clone()));
    }
    let encryption = RequestedEncryption::of_bulk_load(
        options.kms_key_arn.as_deref(),
        options.encrypted,
        options.parent.is_some(),
    );
    let mut writer = engine.writer(NewSnapshot {
        parent: options.parent,
        tags,
        description: options.description.clone(),
        encryption,
        ..NewSnapshot::new(volume_gib)
    })?;
    let snapshot_id = writer.snapshot_id();
    let blocks_read = AtomicU64::new(0);
    let ran = run_workers(
        &writer,
        volume.as_ref(),
        &work,
        (workers, &blocks_read),
        progress,
        cancel,
    );
    if let Err(error) = ran {
        return Err(writer.abandon_noting(error));
    }
    if cancel.load(Ordering::Acquire) {
        writer.abandon_now().map_err(|error| {
            error.with_note(&format!(
                "the backup was interrupted, but snapshot {snapshot_id} is left pending"
            ))
        })?;
        return Ok(BackupOutcome::Interrupted { snapshot_id });
    }
    let blocks_written = writer.blocks_written();
    let blocks_unchanged = writer.blocks_unchanged();
    let zero_blocks_skipped = writer.zero_blocks_skipped();
    writer.complete()?;
    Ok(BackupOutcome::Completed(BackupReport {
        snapshot_id,
        parent: options.parent,
        volume: options.volume.clone(),
        image_bytes,
        blocks_read: blocks_read.load(Ordering::Acquire),
        blocks_written,
        blocks_unchanged,
        zero_blocks_skipped,
        direct_io: volume.direct_io(),
        elapsed: started_at.elapsed(),
    }))
}

/// Runs the workers to the end of `work`, the first error, or `cancel`;
/// counts the blocks read.
fn run_workers(
    writer: &SnapshotWriter,
    volume: &dyn Volume,
    work: &Work,
    (workers, blocks_read): (usize, &AtomicU64),
    progress: Progress<'_>,
    cancel: &AtomicBool,
) -> Result<()> {
    let cursor = AtomicUsize::new(0);
    let worker_ids = AtomicUsize::new(0);
    let image_bytes = volume.len();
    in_parallel(workers.min(work.len().max(1)), |stop| {
        let worker = worker_ids.fetch_add(1, Ordering::AcqRel);
        // Aligned for an image's direct reads.
        let mut aligned = AlignedBuffer::new(BLOCK_SIZE);
        let buffer = aligned.as_mut_slice();
        while !cancel.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
            let Some(index) = work.get(cursor.fetch_add(1, Ordering::AcqRel)) else {
                break;
            };
            if volume.known_zero(index) {
                buffer.fill(0);
            } else {
                volume.read_block(worker, index, buffer)?;
                blocks_read.fetch_add(1, Ordering::Relaxed);
            }
            writer.put_block_sparse(BlockIndex(index), buffer)?;
            progress(
                image_bytes
                    .saturating_sub(u64::from(index) * BLOCK_SIZE as u64)
                    .min(BLOCK_SIZE as u64),
            );
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image of `blocks` whole blocks and a `tail`, each block filled
    /// with its index plus one.
    fn image(dir: &Path, blocks: u8, tail: usize) -> std::path::PathBuf {
        let path = dir.join("image");
        let mut bytes: Vec<u8> = (0..blocks)
            .flat_map(|block| std::iter::repeat_n(block + 1, BLOCK_SIZE))
            .collect();
        bytes.extend(std::iter::repeat_n(0xEE, tail));
        std::fs::write(&path, bytes).expect("write image");
        path
    }

    /// Drops the image's pages from the page cache, so reads miss it.
    fn evict(path: &Path) {
        let file = File::open(path).expect("open");
        file.sync_all().expect("sync");
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
    }

    /// The padding after the image's last byte is zero whichever way the
    /// block was read. (On ext4 an uncached direct read zeroes it in the
    /// kernel, so there this checks the kernel as much as our fill.)
    #[test]
    fn every_read_path_gives_the_image_and_zero_pads_only_past_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = image(dir.path(), 3, 4095);
        for (buffered, cached) in [(true, true), (false, true), (false, false)] {
            if !cached {
                evict(&path);
            }
            let volume = ImageVolume::open(&path, buffered).expect("open");
            let mut aligned = AlignedBuffer::new(BLOCK_SIZE);
            for index in 0..3u8 {
                volume
                    .read_block(0, u32::from(index), aligned.as_mut_slice())
                    .expect("read");
                assert!(
                    aligned.as_slice().iter().all(|byte| *byte == index + 1),
                    "block {index}, buffered {buffered}, cached {cached}"
                );
            }
            aligned.as_mut_slice().fill(0x55);
            volume
                .read_block(0, 3, aligned.as_mut_slice())
                .expect("tail");
            let (tail, padding) = aligned.as_slice().split_at(4095);
            assert!(tail.iter().all(|byte| *byte == 0xEE));
            assert!(padding.iter().all(|byte| *byte == 0), "padding zeroed");
        }
    }

    /// An image cut short after it was opened (its length read) is an
    /// error on every path, never blocks silently padded with zeros.
    #[test]
    fn an_image_shortened_under_the_backup_is_an_error_not_zeros() {
        let dir = tempfile::tempdir().expect("tempdir");
        for buffered in [true, false] {
            let path = image(dir.path(), 3, 0);
            let volume = ImageVolume::open(&path, buffered).expect("open");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open for writing")
                .set_len(BLOCK_SIZE as u64 + 100)
                .expect("truncate");
            evict(&path);
            let mut aligned = AlignedBuffer::new(BLOCK_SIZE);
            for index in [1, 2] {
                let read = volume.read_block(0, index, aligned.as_mut_slice());
                assert!(
                    matches!(read, Err(Error::Io { .. })),
                    "block {index}, buffered {buffered}: {read:?}"
                );
            }
        }
    }
}
