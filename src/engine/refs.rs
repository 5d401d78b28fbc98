//! Reference counts of stored chunks: what deletion frees and what the
//! collector may reclaim.
//!
//! Stored chunks form a DAG: completed snapshots' roots point to map nodes,
//! inner nodes to nodes one level down, leaves to block chunks. Pending
//! snapshots hold their parent's root and the chunks they have written. The
//! count of a chunk is the number of those references: one per root or
//! pending write naming it, plus one per slot of a *live* node naming it.
//! A node's own references count only while the node itself is live, so
//! acquiring a root visits only nodes that were not live before, and
//! releasing one visits only nodes whose count drops to zero: the work is
//! proportional to what the snapshot introduced, not to its size.
//!
//! Counts are derived state, rebuilt at open from the catalog and the
//! journals (every live root acquired once), so they need no format and
//! cannot disagree with the commit point. A node that cannot be read while
//! counting leaves its children uncounted; the set is then marked damaged
//! and the collector refuses to run, because a child could look dead.

use crate::blockmap::BlockMaps;
use crate::codec;
use crate::ids::ChunkId;
use parking_lot::Mutex;
use std::collections::HashMap;

/// Level of every root (see `blockmap`).
const ROOT_LEVEL: u8 = crate::format::node::LEVELS - 1;

/// One reference to follow.
#[derive(Clone, Copy)]
enum Item {
    /// A map node at a level.
    Node(ChunkId, u8),
    /// A block's chunk.
    Block(ChunkId),
}

impl Item {
    /// The chunk named and, for a node, its level; `None` for the zero
    /// block, which is never stored and never counted.
    fn target(self) -> Option<(ChunkId, Option<u8>)> {
        match self {
            Item::Block(id) if id == codec::zero_block_id() => None,
            Item::Block(id) => Some((id, None)),
            Item::Node(id, level) => Some((id, Some(level))),
        }
    }
}

/// The references a live node holds.
fn children(maps: &BlockMaps<'_>, id: ChunkId, level: u8) -> crate::error::Result<Vec<Item>> {
    let node = maps.load_at(&id, level)?;
    Ok(node
        .slots
        .iter()
        .flatten()
        .map(|child| {
            if level == 0 {
                Item::Block(*child)
            } else {
                Item::Node(*child, level - 1)
            }
        })
        .collect())
}

/// Drops one reference from `first` and, for every chunk left with none,
/// from each of its children. `drop_one` removes one reference and returns
/// how many are left (`None`: the chunk had none, which is reported).
/// Returns the chunks left with none and the first problem met.
fn release_walk(
    maps: &BlockMaps<'_>,
    first: Item,
    mut drop_one: impl FnMut(ChunkId) -> Option<u32>,
) -> (Vec<ChunkId>, Option<String>) {
    let mut dead = Vec::new();
    let mut problem = None;
    let mut stack = vec![first];
    while let Some(item) = stack.pop() {
        let Some((id, level)) = item.target() else {
            continue;
        };
        match drop_one(id) {
            None => {
                problem
                    .get_or_insert_with(|| format!("released chunk {id}, which had no references"));
                continue;
            }
            Some(left) if left > 0 => continue,
            Some(_) => {}
        }
        dead.push(id);
        if let Some(level) = level {
            match children(maps, id, level) {
                Ok(items) => stack.extend(items),
                Err(error) => {
                    problem.get_or_insert_with(|| format!("map node {id} is unreadable: {error}"));
                }
            }
        }
    }
    (dead, problem)
}

#[derive(Default)]
struct Counts {
    counts: HashMap<ChunkId, u32>,
    /// Why the counts may be incomplete (a node could not be read).
    damaged: Option<String>,
}

impl Counts {
    /// Adds one reference to each item and, for each node that becomes live,
    /// one to each of its children.
    fn acquire(&mut self, maps: &BlockMaps<'_>, first: Item) {
        let mut stack = vec![first];
        while let Some(item) = stack.pop() {
            let Some((id, level)) = item.target() else {
                continue;
            };
            let count = self.counts.entry(id).or_insert(0);
            *count += 1;
            if *count > 1 {
                continue;
            }
            if let Some(level) = level {
                self.push_children(maps, id, level, &mut stack);
            }
        }
    }

    /// Removes one reference from each item; a chunk that drops to zero is
    /// dead and releases its children. Returns the dead chunks.
    fn release(&mut self, maps: &BlockMaps<'_>, first: Item) -> Vec<ChunkId> {
        let counts = &mut self.counts;
        let (freed, problem) = release_walk(maps, first, |id| {
            let count = counts.get_mut(&id)?;
            *count -= 1;
            let left = *count;
            if left == 0 {
                counts.remove(&id);
            }
            Some(left)
        });
        if let Some(problem) = problem {
            self.damaged.get_or_insert(problem);
        }
        freed
    }

    fn push_children(&mut self, maps: &BlockMaps<'_>, id: ChunkId, level: u8, out: &mut Vec<Item>) {
        match children(maps, id, level) {
            Ok(items) => out.extend(items),
            Err(error) => {
                self.damaged
                    .get_or_insert_with(|| format!("map node {id} is unreadable: {error}"));
            }
        }
    }
}

/// The reference counts of every live chunk. See the module documentation.
#[derive(Default)]
pub(crate) struct References {
    inner: Mutex<Counts>,
}

impl References {
    /// References held by a block map rooted at `root`.
    pub(crate) fn acquire_tree(&self, maps: &BlockMaps<'_>, root: Option<ChunkId>) {
        if let Some(root) = root {
            self.inner
                .lock()
                .acquire(maps, Item::Node(root, ROOT_LEVEL));
        }
    }

    /// Drops a reference to a block map's root; returns the chunks that died.
    pub(crate) fn release_tree(&self, maps: &BlockMaps<'_>, root: Option<ChunkId>) -> Vec<ChunkId> {
        match root {
            Some(root) => self
                .inner
                .lock()
                .release(maps, Item::Node(root, ROOT_LEVEL)),
            None => Vec::new(),
        }
    }

    /// A pending snapshot's reference to a block it wrote.
    pub(crate) fn acquire_block(&self, maps: &BlockMaps<'_>, id: ChunkId) {
        self.inner.lock().acquire(maps, Item::Block(id));
    }

    /// Drops a pending snapshot's reference to a block; returns whether it died.
    pub(crate) fn release_block(&self, maps: &BlockMaps<'_>, id: ChunkId) -> bool {
        !self.inner.lock().release(maps, Item::Block(id)).is_empty()
    }

    /// Whether any reference to `id` exists.
    pub(crate) fn is_live(&self, id: &ChunkId) -> bool {
        self.inner.lock().counts.contains_key(id)
    }

    /// The chunks that would die if `root` were released, without changing
    /// anything (what deleting its snapshot would free).
    pub(crate) fn unique_to_tree(
        &self,
        maps: &BlockMaps<'_>,
        root: Option<ChunkId>,
    ) -> Vec<ChunkId> {
        let Some(root) = root else {
            return Vec::new();
        };
        let counts = self.inner.lock();
        let mut dropped: HashMap<ChunkId, u32> = HashMap::new();
        // Problems are ignored: an unreadable node's children are left out,
        // so the estimate errs low, never high.
        let (dead, _) = release_walk(maps, Item::Node(root, ROOT_LEVEL), |id| {
            let held = *counts.counts.get(&id)?;
            let dropped_now = dropped.entry(id).or_insert(0);
            *dropped_now += 1;
            Some(held.saturating_sub(*dropped_now))
        });
        dead
    }

    /// Why the counts may be incomplete, if they may.
    pub(crate) fn damaged(&self) -> Option<String> {
        self.inner.lock().damaged.clone()
    }

    /// Every live chunk and its count.
    pub(crate) fn counts(&self) -> HashMap<ChunkId, u32> {
        self.inner.lock().counts.clone()
    }
}
