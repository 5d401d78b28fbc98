//! Whole volumes: backing up a raw image or block device into a snapshot,
//! incrementally against a parent (the volume's latest, for cron), and
//! restoring a snapshot into a file.
//!
//! Both run on `threads` workers that each take the next block index and
//! carry it through every stage (read, hash, compare, compress, append;
//! or read, verify, write), so all cores work and memory stays at one
//! block buffer per worker whatever the volume size. Listing a snapshot
//! for restore goes page by page.

mod backup;
pub mod changes;
mod naming;
#[cfg(feature = "nbd")]
mod nbd_source;
mod restore;
pub mod retention;

pub use crate::engine::IMAGE_BYTES_TAG;
pub use backup::{backup, backup_from, BackupOptions, BackupOutcome, BackupReport, BackupSource};
pub use naming::{
    check_volume_name, default_volume_name, latest_completed, volume_of, MAX_VOLUME_NAME_CHARS,
    VOLUME_TAG,
};
pub use restore::{restore, RestoreOptions, RestoreOutcome, RestoreReport};

use crate::error::{Error, Result, ValidationReason};
use crate::ids::BLOCK_SIZE;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Parses a changed-block list: one block index (of 512 KiB) or inclusive
/// range `A-B` per line, `#` starting a comment, blank lines ignored.
/// Every index must be below `blocks` (the image's block count); the
/// result is ascending and without repeats. Memory is one bit per block of
/// the image, whatever the list holds (a range spanning 4 billion blocks
/// is refused, not expanded). An error is the line's number (from 1) and
/// what is wrong with it.
pub fn parse_changed_blocks(
    text: &str,
    blocks: u32,
) -> std::result::Result<Vec<u32>, (usize, String)> {
    let mut listed = BlockSet::new(blocks);
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| (number + 1, format!("'{line}' {why}"));
        let parse = |text: &str| {
            text.trim()
                .parse::<u32>()
                .map_err(|_| bad("is not a block index or range"))
        };
        let (first, last) = match line.split_once('-') {
            Some((first, last)) => (parse(first)?, parse(last)?),
            None => {
                let index = parse(line)?;
                (index, index)
            }
        };
        if first > last {
            return Err(bad("is a range that ends before it starts"));
        }
        if last >= blocks {
            return Err(bad(&format!("reaches beyond the image's {blocks} blocks")));
        }
        for index in first..=last {
            listed.insert(u64::from(index));
        }
    }
    Ok(listed.indexes())
}

/// A set of block indexes of an image: one bit per block, whatever is
/// put in it.
pub(crate) struct BlockSet {
    bits: Vec<u64>,
}

impl BlockSet {
    /// An empty set for an image of `blocks` blocks.
    pub(crate) fn new(blocks: u32) -> BlockSet {
        BlockSet {
            bits: vec![0; (blocks as usize).div_ceil(64)],
        }
    }

    /// Adds block `index` (ignored beyond the image).
    pub(crate) fn insert(&mut self, index: u64) {
        if let Some(word) = usize::try_from(index / 64)
            .ok()
            .and_then(|word| self.bits.get_mut(word))
        {
            *word |= 1 << (index % 64);
        }
    }

    /// Whether block `index` is in the set.
    pub(crate) fn contains(&self, index: u32) -> bool {
        self.bits
            .get(index as usize / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    /// The indexes in the set, ascending.
    pub(crate) fn indexes(&self) -> Vec<u32> {
        self.bits
            .iter()
            .enumerate()
            .flat_map(|(word_index, word)| {
                (0..64u32)
                    .filter(move |bit| word & (1 << bit) != 0)
                    .map(move |bit| word_index as u32 * 64 + bit)
            })
            .collect()
    }
}

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

#[cfg(test)]
mod tests {
    use super::parse_changed_blocks;

    #[test]
    fn changed_block_lists_parse_within_the_image() {
        assert_eq!(
            parse_changed_blocks("3\n# note\n  1-2 \n\n2 # again\n7", 8),
            Ok(vec![1, 2, 3, 7])
        );
        assert!(parse_changed_blocks("8", 8).is_err(), "beyond the image");
        assert!(parse_changed_blocks("5-2", 8).is_err(), "backwards");
        assert!(parse_changed_blocks("x", 8).is_err());
        // A huge range is refused, not expanded.
        let (line, error) = parse_changed_blocks("\n0-4294967295", 1024).expect_err("huge range");
        assert_eq!(line, 2, "{error}");
        assert_eq!(parse_changed_blocks("", 0), Ok(Vec::new()));
    }
}
