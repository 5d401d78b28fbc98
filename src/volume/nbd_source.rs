//! An NBD export as a backup's volume: `base:allocation` says which blocks
//! read as zeros (recorded without reading), QEMU's dirty bitmap which
//! blocks changed; workers read over one connection each when the server
//! allows several (`NBD_FLAG_CAN_MULTI_CONN`), else share one.

use super::backup::Volume;
use super::BlockSet;
use crate::error::Result;
use crate::format::nbd::{CONTEXT_ALLOCATION, CONTEXT_DIRTY_BITMAP_PREFIX, STATE_ZERO};
use crate::ids::BLOCK_SIZE;
use crate::nbd::{NbdClient, NbdSource};
use parking_lot::Mutex;

const BLOCK: u64 = BLOCK_SIZE as u64;

/// An NBD export being backed up.
pub(super) struct NbdVolume {
    connections: Vec<Mutex<NbdClient>>,
    len: u64,
    /// The blocks every byte of which reads as zero.
    zero: BlockSet,
}

/// Connects to `source` and maps it: the volume, and the blocks the dirty
/// bitmap `dirty_bitmap` marks (any byte dirty), if one is named.
pub(super) fn open(
    source: &NbdSource,
    dirty_bitmap: Option<&str>,
    workers: usize,
) -> Result<(NbdVolume, Option<Vec<u32>>)> {
    let bitmap_context = dirty_bitmap.map(|name| format!("{CONTEXT_DIRTY_BITMAP_PREFIX}{name}"));
    let mut contexts = vec![CONTEXT_ALLOCATION];
    contexts.extend(bitmap_context.as_deref());
    let mut first = NbdClient::connect(source, &contexts)?;
    let len = first.size();
    let blocks = len.div_ceil(BLOCK);
    let mut zero = BlockSet::new(u32::try_from(blocks).unwrap_or(u32::MAX));
    // Runs of zero extents (hole+zero and zero alike) cover whole blocks.
    let mut run: Option<(u64, u64)> = None;
    let mut mark = |start: u64, end: u64| {
        let first_block = start.div_ceil(BLOCK);
        // The image's last block is zero padded: covering to the end counts.
        let end_block = if end == len { blocks } else { end / BLOCK };
        for index in first_block..end_block {
            zero.insert(index);
        }
    };
    for (offset, length, flags) in first.extents(CONTEXT_ALLOCATION, 0, len)? {
        if flags & STATE_ZERO != 0 {
            run = match run {
                Some((start, end)) if end == offset => Some((start, offset + length)),
                Some((start, end)) => {
                    mark(start, end);
                    Some((offset, offset + length))
                }
                None => Some((offset, offset + length)),
            };
        }
    }
    if let Some((start, end)) = run {
        mark(start, end);
    }
    let dirty = match &bitmap_context {
        Some(context) => {
            let mut dirty = Vec::new();
            for (offset, length, flags) in first.extents(context, 0, len)? {
                if flags & 1 != 0 && length > 0 {
                    let first_block = (offset / BLOCK) as u32;
                    let last_block = ((offset + length - 1) / BLOCK) as u32;
                    if dirty.last().is_some_and(|last| *last >= first_block) {
                        dirty.extend(first_block + 1..=last_block);
                    } else {
                        dirty.extend(first_block..=last_block);
                    }
                }
            }
            Some(dirty)
        }
        None => None,
    };
    let mut connections = vec![Mutex::new(first)];
    let multi = connections[0].lock().can_multi_conn();
    if multi {
        for _ in 1..workers {
            connections.push(Mutex::new(NbdClient::connect(source, &[])?));
        }
    }
    Ok((
        NbdVolume {
            connections,
            len,
            zero,
        },
        dirty,
    ))
}

impl Volume for NbdVolume {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_block(&self, worker: usize, index: u32, buffer: &mut [u8]) -> Result<()> {
        let offset = u64::from(index) * BLOCK;
        let available = self.len.saturating_sub(offset).min(BLOCK) as usize;
        let (data, padding) = buffer.split_at_mut(available);
        let connection = &self.connections[worker % self.connections.len()];
        connection.lock().read(offset, data)?;
        padding.fill(0);
        Ok(())
    }

    fn known_zero(&self, index: u32) -> bool {
        self.zero.contains(index)
    }
}

impl Drop for NbdVolume {
    fn drop(&mut self) {
        for connection in self.connections.drain(..) {
            connection.into_inner().disconnect();
        }
    }
}
