//! Changed entries between two block maps.

use super::tree::ROOT_LEVEL;
use super::{BlockMaps, Page};
use crate::error::Result;
use crate::format::node::slots_reaching;
use crate::ids::{BlockIndex, ChunkId};

/// One index whose chunk differs between the first and the second map.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChangedEntry {
    /// The block index.
    pub index: BlockIndex,
    /// The first map's chunk, if it has one.
    pub first: Option<ChunkId>,
    /// The second map's chunk, if it has one.
    pub second: Option<ChunkId>,
}

impl BlockMaps<'_> {
    /// Up to `limit` indexes >= `start` whose entries differ between the two
    /// trees, ascending, and where the next page starts. Subtrees with equal
    /// ids are skipped without being read.
    pub fn diff(
        &self,
        first: Option<ChunkId>,
        second: Option<ChunkId>,
        start: BlockIndex,
        limit: usize,
    ) -> Result<Page<ChangedEntry>> {
        let mut entries = Vec::with_capacity(limit.min(4096) + 1);
        self.diff_at(
            first,
            second,
            ROOT_LEVEL,
            0,
            u64::from(start.0),
            limit + 1,
            &mut entries,
        )?;
        Ok(Page::from_overfetch(entries, limit, |entry| entry.index))
    }

    #[allow(clippy::too_many_arguments)]
    fn diff_at(
        &self,
        first: Option<ChunkId>,
        second: Option<ChunkId>,
        level: u8,
        base: u64,
        start: u64,
        want: usize,
        out: &mut Vec<ChangedEntry>,
    ) -> Result<()> {
        if first == second {
            return Ok(());
        }
        let first_node = first.map(|id| self.load_at(&id, level)).transpose()?;
        let second_node = second.map(|id| self.load_at(&id, level)).transpose()?;
        for (slot, slot_base) in slots_reaching(level, base, start) {
            if out.len() >= want {
                return Ok(());
            }
            let a = first_node
                .as_ref()
                .and_then(|node| node.slots.get(slot).copied().flatten());
            let b = second_node
                .as_ref()
                .and_then(|node| node.slots.get(slot).copied().flatten());
            if a == b {
                continue;
            }
            if level == 0 {
                out.push(ChangedEntry {
                    index: BlockIndex(slot_base as u32),
                    first: a,
                    second: b,
                });
            } else {
                self.diff_at(a, b, level - 1, slot_base, start, want, out)?;
            }
        }
        Ok(())
    }
}
