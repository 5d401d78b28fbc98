//! Whole volumes: backing up a raw image or block device into a snapshot,
//! incrementally against a parent, and restoring a snapshot into a file.
//!
//! Both run on `threads` workers that each take the next block index and
//! carry it through every stage (read, hash, compare, compress, append;
//! or read, verify, write), so all cores work and memory stays at one
//! block buffer per worker whatever the volume size. Listing a snapshot
//! for restore goes page by page.

mod backup;
mod restore;

pub use backup::{backup, BackupOptions, BackupOutcome, BackupReport, IMAGE_BYTES_TAG};
pub use restore::{restore, RestoreOptions, RestoreOutcome, RestoreReport};

use crate::error::{Error, Result, ValidationReason};
use crate::ids::BLOCK_SIZE;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Progress callbacks receive bytes of the volume done since the last call.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// The size in bytes of a regular file or block device.
pub fn image_len(file: &File, path: &Path) -> Result<u64> {
    use std::io::Seek;
    let metadata = file
        .metadata()
        .map_err(|error| Error::io(format!("reading {}", path.display()), error))?;
    if metadata.is_file() {
        return Ok(metadata.len());
    }
    // A block device reports length 0 in its metadata; its end is its size.
    let mut handle = file;
    handle
        .seek(std::io::SeekFrom::End(0))
        .map_err(|error| Error::io(format!("sizing {}", path.display()), error))
}

/// Reads block `index` of an image of `len` bytes into `buffer`, zero
/// padding past the end (a final partial block).
fn read_block_at(file: &File, path: &Path, len: u64, index: u32, buffer: &mut [u8]) -> Result<()> {
    let offset = u64::from(index) * BLOCK_SIZE as u64;
    let available = len.saturating_sub(offset).min(BLOCK_SIZE as u64) as usize;
    let (data, padding) = buffer.split_at_mut(available);
    file.read_exact_at(data, offset).map_err(|error| {
        Error::io(
            format!("reading {} at byte {offset}", path.display()),
            error,
        )
    })?;
    padding.fill(0);
    Ok(())
}

/// The worker count to use: the request, else `per_core` per core (more
/// than one lets a worker compute while another waits for the disk).
pub(crate) fn worker_count(requested: usize, per_core: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism().map_or(2, |cores| cores.get()) * per_core
}

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid(ValidationReason::InvalidParameterValue, message)
}

/// Runs `job` on `workers` threads. Each job loops until it runs out of
/// work or sees `stop`; the first to fail sets `stop` so the others end
/// soon, and its error is returned.
fn in_parallel(workers: usize, job: impl Fn(&AtomicBool) -> Result<()> + Sync) -> Result<()> {
    let stop = AtomicBool::new(false);
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let result = job(&stop);
                    if result.is_err() {
                        stop.store(true, Ordering::Release);
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(Error::io(
                        "a volume worker",
                        std::io::Error::other("the worker panicked"),
                    ))
                })
            })
            .collect()
    });
    results.into_iter().collect()
}
