//! Restoring a snapshot into a file (sparse) or a block device.

use super::{in_parallel, worker_count, Progress};
use crate::codec;
use crate::engine::{Engine, SnapshotReader};
use crate::error::{Error, Result};
use crate::ids::{BlockIndex, ChunkId, SnapshotId, BLOCK_SIZE};
use crate::storage::{open_direct, AlignedBuffer};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Entries listed and restored per round: bounds memory for any volume.
const PAGE: usize = 4096;

/// How to restore.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Write through the page cache only. By default whole blocks go to
    /// the output with direct I/O (Linux `O_DIRECT`) where the file system
    /// or device accepts it: restored data does not evict the page cache,
    /// and no gigabytes of dirty pages wait for the final fsync.
    pub buffered: bool,
    /// Workers; 0 = two per core (writes wait on the page cache's
    /// write-back; a second worker per core keeps the core busy).
    pub threads: usize,
}

/// What a restore did (the CLI's `restore --json` object).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestoreReport {
    /// The snapshot restored.
    pub snapshot_id: SnapshotId,
    /// Length of the restored image.
    pub bytes: u64,
    /// Blocks written with data.
    pub blocks_written: u64,
    /// Blocks left as holes (written zeros, or never written).
    pub holes: u64,
    /// Whether whole blocks were written with direct I/O.
    pub direct_io: bool,
    /// Time until the last block was written, before the final fsync.
    #[serde(
        rename = "SecondsBeforeSync",
        serialize_with = "crate::clock::serialize_seconds"
    )]
    pub written_after: Duration,
    /// Wall time including the final fsync.
    #[serde(rename = "Seconds", serialize_with = "crate::clock::serialize_seconds")]
    pub elapsed: Duration,
}

/// How a restore ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// The output holds the snapshot, synced.
    Completed(RestoreReport),
    /// `cancel` was set; an output file this call created was removed.
    Interrupted,
}

/// Restores completed snapshot `snapshot` into `output`: a new file
/// (holes where the volume was never written or is zero), an existing one
/// with `overwrite`, or a block device. Every block is checked against
/// its content hash (the chunk id the map records) before it is written.
/// The length is the image's as recorded at backup, else the volume's.
pub fn restore(
    engine: &Engine,
    snapshot: SnapshotId,
    output: &Path,
    options: RestoreOptions,
    progress: Progress<'_>,
    cancel: &AtomicBool,
) -> Result<RestoreOutcome> {
    let started_at = Instant::now();
    // Pinned until the restore ends: deleting the snapshot and collecting
    // garbage meanwhile cannot take its blocks away.
    let reader = engine.reader(snapshot)?;
    let length = reader.image_length();
    let is_device = std::fs::metadata(output)
        .map(|metadata| metadata.file_type().is_block_device())
        .unwrap_or(false);
    let (file, created) = open_output(output, options.overwrite, is_device)?;
    if !is_device {
        file.set_len(length)
            .map_err(|error| Error::io(format!("sizing {}", output.display()), error))?;
    }
    let sink = Sink {
        direct: (!options.buffered)
            .then(|| open_direct(&file, true))
            .flatten(),
        direct_refused: AtomicBool::new(false),
        file,
        path: output,
        length,
        is_device,
    };
    let written = AtomicU64::new(0);
    let mut start = BlockIndex(0);
    let mut done_until = 0u64;
    let workers = worker_count(options.threads, 2);
    let result = loop {
        if cancel.load(Ordering::Acquire) {
            break Ok(false);
        }
        let page = match reader.blocks(start, PAGE) {
            Ok(page) => page,
            Err(error) => break Err(error),
        };
        let round = restore_page(&reader, &page.entries, &sink, workers, &written, cancel);
        if let Err(error) = round {
            break Err(error);
        }
        // The workers stop early when cancelled: the page is incomplete.
        if cancel.load(Ordering::Acquire) {
            break Ok(false);
        }
        let reached = page
            .next
            .map_or(length, |next| u64::from(next.0) * BLOCK_SIZE as u64)
            .min(length);
        progress(reached.saturating_sub(done_until));
        done_until = reached;
        match page.next {
            Some(next) => start = next,
            None => break Ok(true),
        }
    };
    let finished = match result {
        Ok(finished) => finished,
        Err(error) => {
            if created {
                let _ = std::fs::remove_file(output);
            }
            return Err(error);
        }
    };
    if !finished {
        if created {
            let _ = std::fs::remove_file(output);
        }
        return Ok(RestoreOutcome::Interrupted);
    }
    let written_after = started_at.elapsed();
    // Direct writes skip the page cache, not the device's volatile cache
    // or the file's metadata (extents, size): fsync covers both.
    sink.file
        .sync_all()
        .map_err(|error| Error::io(format!("syncing {}", output.display()), error))?;
    Ok(RestoreOutcome::Completed(RestoreReport {
        snapshot_id: snapshot,
        bytes: length,
        blocks_written: written.load(Ordering::Acquire),
        holes: length.div_ceil(BLOCK_SIZE as u64) - written.load(Ordering::Acquire),
        direct_io: sink.direct.is_some() && !sink.direct_refused.load(Ordering::Acquire),
        written_after,
        elapsed: started_at.elapsed(),
    }))
}

/// Opens the output: created exclusively, or (with `overwrite`) emptied.
/// Returns whether this call created it.
fn open_output(output: &Path, overwrite: bool, is_device: bool) -> Result<(File, bool)> {
    let context = |error| Error::io(format!("opening {}", output.display()), error);
    if is_device {
        let file = OpenOptions::new()
            .write(true)
            .open(output)
            .map_err(context)?;
        return Ok((file, false));
    }
    match OpenOptions::new().write(true).create_new(true).open(output) {
        Ok(file) => Ok((file, true)),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            if !overwrite {
                return Err(Error::Conflict {
                    message: format!("{} exists; pass --force to overwrite it", output.display()),
                });
            }
            let file = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(output)
                .map_err(context)?;
            Ok((file, false))
        }
        Err(error) => Err(context(error)),
    }
}

/// The output of a restore: the file (or device), and on Linux a second
/// handle on it opened with `O_DIRECT` for whole blocks.
struct Sink<'a> {
    file: File,
    direct: Option<File>,
    /// Set when a direct write was refused (EINVAL: an alignment the
    /// device does not accept); later blocks go through `file`.
    direct_refused: AtomicBool,
    path: &'a Path,
    length: u64,
    is_device: bool,
}

impl Sink<'_> {
    /// Writes `data` at `offset`: a whole block through the direct handle
    /// (staged in `staging` for alignment), anything else, or everything
    /// after a refusal, through the page cache.
    fn write(&self, data: &[u8], offset: u64, staging: &mut AlignedBuffer) -> Result<()> {
        let context = |error| {
            Error::io(
                format!("writing {} at byte {offset}", self.path.display()),
                error,
            )
        };
        if let Some(direct) = &self.direct {
            if data.len() == BLOCK_SIZE && !self.direct_refused.load(Ordering::Acquire) {
                let aligned = staging.as_mut_slice();
                aligned.copy_from_slice(data);
                match direct.write_all_at(aligned, offset) {
                    Ok(()) => return Ok(()),
                    Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
                        self.direct_refused.store(true, Ordering::Release);
                    }
                    Err(error) => return Err(context(error)),
                }
            }
        }
        self.file.write_all_at(data, offset).map_err(context)
    }
}

/// Allocates the file's blocks for the runs of data blocks in `entries`
/// before they are written. A direct write into a hole allocates, and ext4
/// serializes allocating direct writes under the inode lock; writes into
/// allocated (unwritten) extents run concurrently. Best effort: where
/// `fallocate` is not supported the writes allocate as they go.
#[cfg(target_os = "linux")]
fn preallocate(sink: &Sink<'_>, entries: &[(BlockIndex, ChunkId)], zero: ChunkId) {
    let block = BLOCK_SIZE as u64;
    let mut data_blocks = entries
        .iter()
        .filter(|(index, chunk)| *chunk != zero && u64::from(index.0) * block < sink.length)
        .map(|(index, _)| u64::from(index.0))
        .peekable();
    while let Some(first) = data_blocks.next() {
        let mut last = first;
        while let Some(next) = data_blocks.next_if(|next| *next == last + 1) {
            last = next;
        }
        let start = first * block;
        let end = ((last + 1) * block).min(sink.length);
        let allocated = rustix::fs::fallocate(
            &sink.file,
            rustix::fs::FallocateFlags::empty(),
            start,
            end - start,
        );
        if allocated.is_err() {
            return;
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(_sink: &Sink<'_>, _entries: &[(BlockIndex, ChunkId)], _zero: ChunkId) {}

/// Restores one listed page on `workers` threads.
fn restore_page(
    reader: &SnapshotReader,
    entries: &[(BlockIndex, ChunkId)],
    sink: &Sink<'_>,
    workers: usize,
    written: &AtomicU64,
    cancel: &AtomicBool,
) -> Result<()> {
    let cursor = AtomicUsize::new(0);
    let zero = codec::zero_block_id();
    // A device has no holes to allocate.
    if sink.direct.is_some() && !sink.is_device {
        preallocate(sink, entries, zero);
    }
    in_parallel(workers.min(entries.len()), |stop| {
        let mut staging = AlignedBuffer::new(BLOCK_SIZE);
        while !cancel.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
            let Some(&(index, chunk)) = entries.get(cursor.fetch_add(1, Ordering::AcqRel)) else {
                break;
            };
            let offset = u64::from(index.0) * BLOCK_SIZE as u64;
            // The file was sized empty: a hole reads as zeros.
            if offset >= sink.length || (chunk == zero && !sink.is_device) {
                continue;
            }
            let take = (sink.length - offset).min(BLOCK_SIZE as u64) as usize;
            write_block(reader, (index, chunk), sink, offset, take, &mut staging)?;
            written.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    })
}

/// Reads the listed block `chunk` at `index`, checks it against its chunk
/// id, writes it.
fn write_block(
    reader: &SnapshotReader,
    (index, chunk): (BlockIndex, ChunkId),
    sink: &Sink<'_>,
    offset: u64,
    take: usize,
    staging: &mut AlignedBuffer,
) -> Result<()> {
    // The store rehashes the block against its id (or checks its tag).
    let data = reader.block_data(index, chunk)?;
    sink.write(data.get(..take).unwrap_or(&data), offset, staging)
}
