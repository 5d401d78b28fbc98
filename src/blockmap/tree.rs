//! Lookups, copy-on-write updates and ordered listing.

use super::{BlockMaps, Page};
use crate::error::Result;
use crate::format::node::{slot_of, slots_reaching, Node, LEVELS};
use crate::format::pack::RecordKind;
use crate::ids::{BlockIndex, ChunkId, Sha256Digest};
use std::sync::Arc;

/// The level of every root.
pub(crate) const ROOT_LEVEL: u8 = LEVELS - 1;

impl BlockMaps<'_> {
    /// The chunk recorded at `index`, if that block was ever written.
    pub fn lookup(&self, root: Option<ChunkId>, index: BlockIndex) -> Result<Option<ChunkId>> {
        let mut current = root;
        let mut level = ROOT_LEVEL;
        while let Some(id) = current {
            let node = self.load_at(&id, level)?;
            let entry = node.slots.get(slot_of(index.0, level)).copied().flatten();
            if level == 0 {
                return Ok(entry);
            }
            current = entry;
            level -= 1;
        }
        Ok(None)
    }

    /// Applies `writes` (sorted by index, unique) to the tree at `root`,
    /// storing every new node, and returns the new root. Untouched subtrees
    /// keep their ids. New nodes are durable only after the store syncs.
    pub fn apply(
        &self,
        root: Option<ChunkId>,
        writes: &[(BlockIndex, ChunkId)],
    ) -> Result<Option<ChunkId>> {
        self.apply_noting(root, writes, &mut Vec::new())
    }

    /// [`BlockMaps::apply`], adding the id of every node of the new tree
    /// that `root`'s tree does not have to `new_nodes`.
    pub(crate) fn apply_noting(
        &self,
        root: Option<ChunkId>,
        writes: &[(BlockIndex, ChunkId)],
        new_nodes: &mut Vec<ChunkId>,
    ) -> Result<Option<ChunkId>> {
        if writes.is_empty() {
            return Ok(root);
        }
        self.apply_at(root, ROOT_LEVEL, writes, new_nodes).map(Some)
    }

    fn apply_at(
        &self,
        id: Option<ChunkId>,
        level: u8,
        writes: &[(BlockIndex, ChunkId)],
        new_nodes: &mut Vec<ChunkId>,
    ) -> Result<ChunkId> {
        let mut node = match id {
            Some(id) => Node::clone(&*self.load_at(&id, level)?),
            None => Node::empty(level),
        };
        if level == 0 {
            for (index, chunk) in writes {
                if let Some(slot) = node.slots.get_mut(slot_of(index.0, 0)) {
                    *slot = Some(*chunk);
                }
            }
        } else {
            let mut rest = writes;
            while let Some((first, _)) = rest.first() {
                let slot = slot_of(first.0, level);
                let group_len = rest
                    .iter()
                    .take_while(|(index, _)| slot_of(index.0, level) == slot)
                    .count();
                let (group, tail) = rest.split_at(group_len);
                if let Some(entry) = node.slots.get_mut(slot) {
                    *entry = Some(self.apply_at(*entry, level - 1, group, new_nodes)?);
                }
                rest = tail;
            }
        }
        let encoded = node.encode();
        let id = crate::crypto::chunk_id_in(self.domain, RecordKind::MapNode, &encoded);
        self.store.put_in(
            RecordKind::MapNode,
            &id,
            &Sha256Digest([0; 32]),
            &encoded,
            self.domain,
        )?;
        self.cache.insert(id, Arc::new(node));
        new_nodes.push(id);
        Ok(id)
    }

    /// Up to `limit` present entries with index >= `start`, ascending, and
    /// the index where the next page starts. Visits only subtrees at or past
    /// `start`, so a page costs what it returns, not what precedes it.
    pub fn list(
        &self,
        root: Option<ChunkId>,
        start: BlockIndex,
        limit: usize,
    ) -> Result<Page<(BlockIndex, ChunkId)>> {
        let mut entries = Vec::with_capacity(limit.min(4096) + 1);
        if let Some(root) = root {
            self.list_at(
                root,
                ROOT_LEVEL,
                0,
                u64::from(start.0),
                limit + 1,
                &mut entries,
            )?;
        }
        Ok(Page::from_overfetch(entries, limit, |(index, _)| *index))
    }

    fn list_at(
        &self,
        id: ChunkId,
        level: u8,
        base: u64,
        start: u64,
        want: usize,
        out: &mut Vec<(BlockIndex, ChunkId)>,
    ) -> Result<()> {
        let node = self.load_at(&id, level)?;
        for (slot, slot_base) in slots_reaching(level, base, start) {
            if out.len() >= want {
                return Ok(());
            }
            let Some(entry) = node.slots.get(slot).copied().flatten() else {
                continue;
            };
            if level == 0 {
                out.push((BlockIndex(slot_base as u32), entry));
            } else {
                self.list_at(entry, level - 1, slot_base, start, want, out)?;
            }
        }
        Ok(())
    }
}
