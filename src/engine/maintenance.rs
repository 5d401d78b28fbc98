//! What an operator asks of a store: statistics, and the full mark pass
//! that audits the incremental reference counts.

use super::refs::References;
use super::Engine;
use crate::blockmap::BlockMaps;
use crate::catalog::SnapshotState;
use crate::error::Result;
use crate::format::node::LEVELS;
use crate::ids::{ChunkId, SnapshotId, BLOCK_SIZE};
use std::collections::HashMap;

/// Sizes of one snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotStats {
    /// Bytes of every written block of its volume image, inherited ones
    /// included (written blocks x 512 KiB).
    pub logical_bytes: u64,
    /// Bytes written in this snapshot itself (changed blocks x 512 KiB).
    pub written_bytes: u64,
    /// Chunks (blocks and map nodes) that only this snapshot references.
    pub unique_chunks: u64,
    /// Bytes of those chunks' records in the packs: what deleting the
    /// snapshot frees once the collector has run.
    pub unique_bytes: u64,
}

/// Sizes and counts of a whole store (the CLI's `stats --json` object).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoreStats {
    /// Snapshots pending.
    pub pending_snapshots: u64,
    /// Snapshots completed.
    pub completed_snapshots: u64,
    /// Snapshots in `error`.
    pub failed_snapshots: u64,
    /// Sum of the completed snapshots' logical bytes.
    pub logical_bytes: u64,
    /// Sum of the completed snapshots' written bytes.
    pub written_bytes: u64,
    /// Chunks some snapshot references.
    pub live_chunks: u64,
    /// Bytes of the live chunks' records: what the store needs after
    /// deduplication and compression.
    pub live_bytes: u64,
    /// Chunks in the packs, live or not.
    pub stored_chunks: u64,
    /// Bytes of every record in the packs.
    pub stored_bytes: u64,
    /// Records no snapshot needs (`stored_bytes - live_bytes`): what the
    /// collector can reclaim.
    pub garbage_bytes: u64,
}

/// The result of [`Engine::audit_references`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReferenceAudit {
    /// Live chunks found by the mark pass.
    pub live_chunks: u64,
    /// Chunks whose incremental count differs from the mark pass
    /// (chunk, counted, marked); empty when they agree.
    pub mismatches: Vec<(ChunkId, u32, u32)>,
    /// Why the counts may be incomplete, if a node could not be read.
    pub damaged: Option<String>,
}

impl Engine {
    /// Recounts every reference from scratch (every completed root, every
    /// pending snapshot's parent and writes, every open reader's root) and
    /// compares the result with
    /// the counts kept incrementally. Writers wait while it runs; the
    /// collector's safety rests on these counts, and this is its check.
    pub fn audit_references(&self) -> Result<ReferenceAudit> {
        let _exclusive = self.inner.reference_guard.write();
        let marked = References::default();
        let maps = self.maps();
        for record in self.inner.catalog.select(|_| true) {
            if let SnapshotState::Completed { root, .. } = record.state {
                marked.acquire_tree(&maps, root);
            }
        }
        for session in self.inner.sessions.read().values() {
            marked.acquire_tree(&maps, session.parent_root);
            for (_, chunk) in session.written_blocks() {
                marked.acquire_block(&maps, chunk);
            }
        }
        for (root, readers) in self.inner.reader_pins.lock().iter() {
            for _ in 0..*readers {
                marked.acquire_tree(&maps, Some(*root));
            }
        }
        let counted = self.inner.references.counts();
        let expected = marked.counts();
        let mut mismatches: Vec<(ChunkId, u32, u32)> = expected
            .iter()
            .filter(|(id, count)| counted.get(id) != Some(count))
            .map(|(id, count)| (*id, counted.get(id).copied().unwrap_or(0), *count))
            .chain(
                counted
                    .iter()
                    .filter(|(id, _)| !expected.contains_key(id))
                    .map(|(id, count)| (*id, *count, 0)),
            )
            .collect();
        mismatches.sort_unstable();
        Ok(ReferenceAudit {
            live_chunks: expected.len() as u64,
            mismatches,
            damaged: marked.damaged().or_else(|| self.inner.references.damaged()),
        })
    }

    /// Sizes of one of the caller's snapshots. Unique bytes are what
    /// deleting it would free; computing them visits only the chunks it
    /// alone holds.
    pub fn snapshot_stats(&self, snapshot: SnapshotId) -> Result<SnapshotStats> {
        let record = self.snapshot(snapshot)?;
        let SnapshotState::Completed {
            root,
            changed_blocks,
            ..
        } = record.state
        else {
            return Ok(SnapshotStats::default());
        };
        let _guard = self.inner.reference_guard.read();
        let maps = self.maps();
        let unique = self.inner.references.unique_to_tree(&maps, root);
        let unique_bytes = unique
            .iter()
            .filter_map(|id| self.inner.chunks.record_len(id))
            .sum();
        Ok(SnapshotStats {
            logical_bytes: count_blocks(&maps, root, &mut HashMap::new())? * BLOCK_SIZE as u64,
            written_bytes: u64::from(changed_blocks) * BLOCK_SIZE as u64,
            unique_chunks: unique.len() as u64,
            unique_bytes,
        })
    }

    /// Sizes and counts of the whole store. Costs one visit of every live
    /// map node and one record-header read per live chunk.
    pub fn store_stats(&self) -> Result<StoreStats> {
        let _guard = self.inner.reference_guard.read();
        let maps = self.maps();
        let mut stats = StoreStats::default();
        let mut memo = HashMap::new();
        for record in self.inner.catalog.select(|_| true) {
            match record.state {
                SnapshotState::Pending => stats.pending_snapshots += 1,
                SnapshotState::Error { .. } => stats.failed_snapshots += 1,
                SnapshotState::Completed {
                    root,
                    changed_blocks,
                    ..
                } => {
                    stats.completed_snapshots += 1;
                    stats.logical_bytes +=
                        count_blocks(&maps, root, &mut memo)? * BLOCK_SIZE as u64;
                    stats.written_bytes += u64::from(changed_blocks) * BLOCK_SIZE as u64;
                }
            }
        }
        let live = self.inner.references.counts();
        stats.live_chunks = live.len() as u64;
        stats.live_bytes = live
            .keys()
            .filter_map(|id| self.inner.chunks.record_len(id))
            .sum();
        let chunk_stats = self.inner.chunks.stats();
        stats.stored_chunks = chunk_stats.chunks;
        stats.stored_bytes = chunk_stats.stored_bytes;
        stats.garbage_bytes = stats.stored_bytes.saturating_sub(stats.live_bytes);
        Ok(stats)
    }
}

/// See [`crate::testing::block_dependencies`]: every block index of the map
/// at `root` and the chunks reading it needs, root first.
#[cfg(feature = "testing")]
pub(super) fn block_dependencies(
    maps: &BlockMaps<'_>,
    root: Option<ChunkId>,
) -> Result<std::collections::BTreeMap<u32, Vec<ChunkId>>> {
    fn walk(
        maps: &BlockMaps<'_>,
        id: ChunkId,
        level: u8,
        base: u64,
        path: &mut Vec<ChunkId>,
        out: &mut std::collections::BTreeMap<u32, Vec<ChunkId>>,
    ) -> Result<()> {
        path.push(id);
        let node = maps.load_at(&id, level)?;
        let child_span = crate::format::node::slot_span(level);
        for (slot, child) in node.slots.iter().enumerate() {
            let Some(child) = child else { continue };
            let child_base = base + slot as u64 * child_span;
            if level == 0 {
                let mut needs = path.clone();
                if *child != crate::codec::zero_block_id() {
                    needs.push(*child);
                }
                out.insert(child_base as u32, needs);
            } else {
                walk(maps, *child, level - 1, child_base, path, out)?;
            }
        }
        path.pop();
        Ok(())
    }
    let mut out = std::collections::BTreeMap::new();
    if let Some(root) = root {
        walk(maps, root, LEVELS - 1, 0, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// Written entries under `root`, memoized by node id, so shared subtrees of
/// many snapshots are counted once.
fn count_blocks(
    maps: &BlockMaps<'_>,
    root: Option<ChunkId>,
    memo: &mut HashMap<ChunkId, u64>,
) -> Result<u64> {
    fn count_at(
        maps: &BlockMaps<'_>,
        id: ChunkId,
        level: u8,
        memo: &mut HashMap<ChunkId, u64>,
    ) -> Result<u64> {
        if let Some(count) = memo.get(&id) {
            return Ok(*count);
        }
        let node = maps.load_at(&id, level)?;
        let count = if level == 0 {
            node.slots.iter().flatten().count() as u64
        } else {
            let mut total = 0;
            for child in node.slots.iter().flatten() {
                total += count_at(maps, *child, level - 1, memo)?;
            }
            total
        };
        memo.insert(id, count);
        Ok(count)
    }
    match root {
        Some(root) => count_at(maps, root, LEVELS - 1, memo),
        None => Ok(0),
    }
}
