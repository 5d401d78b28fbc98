//! Restoring a snapshot into a file (sparse) or a block device.

use super::{in_parallel, worker_count, Progress, IMAGE_BYTES_TAG};
use crate::chunkstore::ContentCheck;
use crate::codec;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ids::{BlockIndex, ChunkId, BLOCKS_PER_GIB, BLOCK_SIZE};
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
    /// Workers; 0 = two per core (writes wait on the page cache's
    /// write-back; a second worker per core keeps the core busy).
    pub threads: usize,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    /// Length of the restored image.
    pub bytes: u64,
    /// Blocks written with data.
    pub blocks_written: u64,
    /// Blocks left as holes (written zeros, or never written).
    pub holes: u64,
    /// Time until the last block was written, before the final fsync.
    pub written_after: Duration,
    /// Wall time including the final fsync.
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

/// Restores completed snapshot `snapshot_id` into `output`: a new file
/// (holes where the volume was never written or is zero), an existing one
/// with `overwrite`, or a block device. Every block is checked against
/// its content hash (the chunk id the map records) before it is written.
/// The length is the image's as recorded at backup, else the volume's.
pub fn restore(
    engine: &Engine,
    snapshot_id: &str,
    output: &Path,
    options: RestoreOptions,
    progress: Progress<'_>,
    cancel: &AtomicBool,
) -> Result<RestoreOutcome> {
    let started_at = Instant::now();
    let owner = engine.owner().to_string();
    let snapshot = crate::api::validate::snapshot_id("SnapshotId", snapshot_id)?;
    let completed = engine.completed(&owner, snapshot)?;
    let record = engine.record(&owner, snapshot)?;
    let volume_bytes = completed.volume_size_gib * BLOCKS_PER_GIB * BLOCK_SIZE as u64;
    let length = record
        .started
        .tags
        .iter()
        .find(|(key, _)| key == IMAGE_BYTES_TAG)
        .and_then(|(_, value)| value.parse::<u64>().ok())
        .filter(|bytes| *bytes <= volume_bytes)
        .unwrap_or(volume_bytes);
    let is_device = std::fs::metadata(output)
        .map(|metadata| metadata.file_type().is_block_device())
        .unwrap_or(false);
    let (file, created) = open_output(output, options.overwrite, is_device)?;
    if !is_device {
        file.set_len(length)
            .map_err(|error| Error::io(format!("sizing {}", output.display()), error))?;
    }
    let written = AtomicU64::new(0);
    let mut start = BlockIndex(0);
    let mut done_until = 0u64;
    let workers = worker_count(options.threads, 2);
    let result = loop {
        if cancel.load(Ordering::Acquire) {
            break Ok(false);
        }
        let page = {
            let _guard = engine.read_guard();
            match engine.list_blocks(completed.root, start, PAGE) {
                Ok(page) => page,
                Err(error) => break Err(error),
            }
        };
        let round = restore_page(
            engine,
            completed.root,
            &page.entries,
            (&file, output, length, is_device),
            workers,
            &written,
            cancel,
        );
        if let Err(error) = round {
            break Err(error);
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
    file.sync_all()
        .map_err(|error| Error::io(format!("syncing {}", output.display()), error))?;
    Ok(RestoreOutcome::Completed(RestoreReport {
        bytes: length,
        blocks_written: written.load(Ordering::Acquire),
        holes: length.div_ceil(BLOCK_SIZE as u64) - written.load(Ordering::Acquire),
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

/// Restores one listed page on `workers` threads.
fn restore_page(
    engine: &Engine,
    root: Option<ChunkId>,
    entries: &[(BlockIndex, ChunkId)],
    output: (&File, &Path, u64, bool),
    workers: usize,
    written: &AtomicU64,
    cancel: &AtomicBool,
) -> Result<()> {
    let (file, path, length, is_device) = output;
    let cursor = AtomicUsize::new(0);
    let zero = codec::zero_block_id();
    in_parallel(workers.min(entries.len()), |stop| {
        while !cancel.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
            let Some(&(index, chunk)) = entries.get(cursor.fetch_add(1, Ordering::AcqRel)) else {
                break;
            };
            let offset = u64::from(index.0) * BLOCK_SIZE as u64;
            // The file was sized empty: a hole reads as zeros.
            if offset >= length || (chunk == zero && !is_device) {
                continue;
            }
            let take = (length - offset).min(BLOCK_SIZE as u64) as usize;
            write_block(engine, root, index, (file, path), offset, take)?;
            written.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    })
}

/// Reads one block, checks it against its chunk id, writes it.
fn write_block(
    engine: &Engine,
    root: Option<ChunkId>,
    index: BlockIndex,
    output: (&File, &Path),
    offset: u64,
    take: usize,
) -> Result<()> {
    let (file, path) = output;
    // The store rehashes the block against its id (or checks its tag).
    let read = {
        let _guard = engine.read_guard();
        engine.read_block_checked(root, index, ContentCheck::Default)?
    };
    let (data, _) = read.ok_or_else(|| {
        Error::corrupted(
            format!("block {}", index.0),
            "listed but not readable from the map",
        )
    })?;
    file.write_all_at(data.get(..take).unwrap_or(&data), offset)
        .map_err(|error| {
            Error::io(
                format!("writing {} at byte {offset}", path.display()),
                error,
            )
        })
}
