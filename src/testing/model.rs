//! The reference model: a `Vec<Option<seed>>` per snapshot and nothing clever.

use proptest::prelude::*;
use std::collections::BTreeMap;

/// One step of a workload, applied to both the engine and the model.
/// Snapshot arguments are positions counted back from the newest snapshot
/// in a state the operation needs (pending for puts and completes,
/// completed for parents, listings, diffs and gets; any snapshot when none
/// is in that state, or when `any` is set), so that most operations do real
/// work and some deliberately hit the wrong state.
#[derive(Clone, Debug)]
pub enum Op {
    /// StartSnapshot, incremental on snapshot `parent` when given.
    Start {
        /// Parent position.
        parent: Option<usize>,
        /// Volume size in GiB.
        volume_gib: u64,
    },
    /// PutSnapshotBlock of `block(seed)` at `index`.
    Put {
        /// Target any snapshot, not only pending ones.
        any: bool,
        /// Snapshot position.
        snapshot: usize,
        /// Block index (may be out of range on purpose).
        index: u32,
        /// Content seed (0 = zeros).
        seed: u64,
    },
    /// CompleteSnapshot, with the right count or a wrong one.
    Complete {
        /// Snapshot position.
        snapshot: usize,
        /// Whether to send the correct ChangedBlocksCount.
        correct_count: bool,
    },
    /// Close and reopen the engine.
    Reopen,
    /// ListSnapshotBlocks from `start`, paging through everything.
    List {
        /// Target any snapshot, not only completed ones.
        any: bool,
        /// Snapshot position.
        snapshot: usize,
        /// StartingBlockIndex.
        start: u32,
    },
    /// ListChangedBlocks between two snapshots.
    Diff {
        /// First position.
        first: usize,
        /// Second position.
        second: usize,
    },
    /// GetSnapshotBlock via a listed token.
    Get {
        /// Snapshot position.
        snapshot: usize,
        /// Block index.
        index: u32,
    },
    /// CancelSnapshot (extension) of a pending snapshot, or of any.
    Cancel {
        /// Target any snapshot, not only pending ones.
        any: bool,
        /// Snapshot position.
        snapshot: usize,
    },
    /// DeleteSnapshot (extension) of a completed snapshot, or of any.
    Delete {
        /// Target any snapshot, not only completed ones.
        any: bool,
        /// Snapshot position.
        snapshot: usize,
    },
    /// Run the garbage collector to completion.
    Collect,
}

/// Errors the model predicts, by EBS class.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ModelError {
    /// ValidationException.
    Validation,
    /// ResourceNotFoundException.
    NotFound,
}

/// Lifecycle in the model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ModelStatus {
    /// Accepting writes.
    Pending,
    /// Readable.
    Completed,
    /// Cancelled: neither writable nor readable.
    Error,
    /// Deleted: gone from every operation.
    Deleted,
}

/// One snapshot in the model.
#[derive(Clone, Debug)]
pub struct ModelSnapshot {
    /// Parent position.
    pub parent: Option<usize>,
    /// Oldest ancestor position.
    pub lineage: usize,
    /// Volume size in GiB.
    pub volume_gib: u64,
    /// Content seed per index, inherited ones included.
    pub blocks: Vec<Option<u64>>,
    /// Indexes written in this snapshot itself.
    pub own_writes: BTreeMap<u32, u64>,
    /// Status.
    pub status: ModelStatus,
}

/// The naive model: snapshots in creation order.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Every snapshot started, in order.
    pub snapshots: Vec<ModelSnapshot>,
}

impl Model {
    /// The position of the `back`-th newest snapshot in the wanted state
    /// (any state when `any` is set or none is in that state).
    pub fn pick(&self, back: usize, wanted: ModelStatus, any: bool) -> Option<usize> {
        let matching: Vec<usize> = (0..self.snapshots.len())
            .filter(|&position| any || self.snapshots[position].status == wanted)
            .collect();
        let pool = if matching.is_empty() {
            (0..self.snapshots.len()).collect()
        } else {
            matching
        };
        (!pool.is_empty()).then(|| pool[pool.len() - 1 - back % pool.len()])
    }

    /// Applies StartSnapshot; returns the new position.
    pub fn start(&mut self, parent: Option<usize>, volume_gib: u64) -> Result<usize, ModelError> {
        let blocks_len = (volume_gib * 2048) as usize;
        let (lineage, mut blocks) = match parent {
            None => (self.snapshots.len(), vec![None; blocks_len]),
            Some(parent) => {
                let parent_snapshot = self.existing(parent)?;
                if parent_snapshot.status != ModelStatus::Completed
                    || volume_gib < parent_snapshot.volume_gib
                {
                    return Err(ModelError::Validation);
                }
                (parent_snapshot.lineage, parent_snapshot.blocks.clone())
            }
        };
        blocks.resize(blocks_len, None);
        self.snapshots.push(ModelSnapshot {
            parent,
            lineage,
            volume_gib,
            blocks,
            own_writes: BTreeMap::new(),
            status: ModelStatus::Pending,
        });
        Ok(self.snapshots.len() - 1)
    }

    /// Applies PutSnapshotBlock.
    pub fn put(&mut self, snapshot: usize, index: u32, seed: u64) -> Result<(), ModelError> {
        self.existing(snapshot)?;
        let target = &mut self.snapshots[snapshot];
        if target.status != ModelStatus::Pending || index as usize >= target.blocks.len() {
            return Err(ModelError::Validation);
        }
        target.blocks[index as usize] = Some(seed);
        target.own_writes.insert(index, seed);
        Ok(())
    }

    /// Applies CompleteSnapshot with `count`.
    pub fn complete(&mut self, snapshot: usize, count: usize) -> Result<(), ModelError> {
        self.existing(snapshot)?;
        let target = &mut self.snapshots[snapshot];
        if target.status != ModelStatus::Pending || count != target.own_writes.len() {
            return Err(ModelError::Validation);
        }
        target.status = ModelStatus::Completed;
        Ok(())
    }

    /// Applies CancelSnapshot: only a pending snapshot can be cancelled.
    pub fn cancel(&mut self, snapshot: usize) -> Result<(), ModelError> {
        if self.existing(snapshot)?.status != ModelStatus::Pending {
            return Err(ModelError::Validation);
        }
        self.snapshots[snapshot].status = ModelStatus::Error;
        Ok(())
    }

    /// Applies DeleteSnapshot: completed and cancelled snapshots can be
    /// deleted, except the parent of a pending one.
    pub fn delete(&mut self, snapshot: usize) -> Result<(), ModelError> {
        if self.existing(snapshot)?.status == ModelStatus::Pending
            || self
                .snapshots
                .iter()
                .any(|other| other.parent == Some(snapshot) && other.status == ModelStatus::Pending)
        {
            return Err(ModelError::Validation);
        }
        self.snapshots[snapshot].status = ModelStatus::Deleted;
        Ok(())
    }

    /// Written indexes >= `start` of a completed snapshot, with seeds.
    pub fn list(&self, snapshot: usize, start: u32) -> Result<Vec<(u32, u64)>, ModelError> {
        let target = self.readable(snapshot)?;
        Ok(target
            .blocks
            .iter()
            .enumerate()
            .skip(start as usize)
            .filter_map(|(index, seed)| seed.map(|seed| (index as u32, seed)))
            .collect())
    }

    /// Indexes whose content differs, with presence on each side.
    /// Content is compared by seed, the way the engine compares by content.
    pub fn diff(&self, first: usize, second: usize) -> Result<Vec<(u32, bool, bool)>, ModelError> {
        // The second snapshot is the request's path member: checked first.
        let b = self.readable(second)?;
        let a = self.readable(first)?;
        if a.lineage != b.lineage {
            return Err(ModelError::Validation);
        }
        let length = a.blocks.len().max(b.blocks.len());
        Ok((0..length)
            .filter_map(|index| {
                let x = a.blocks.get(index).copied().flatten();
                let y = b.blocks.get(index).copied().flatten();
                (x != y).then_some((index as u32, x.is_some(), y.is_some()))
            })
            .collect())
    }

    /// A snapshot that was not deleted.
    fn existing(&self, snapshot: usize) -> Result<&ModelSnapshot, ModelError> {
        match self.snapshots.get(snapshot) {
            Some(target) if target.status != ModelStatus::Deleted => Ok(target),
            _ => Err(ModelError::NotFound),
        }
    }

    fn readable(&self, snapshot: usize) -> Result<&ModelSnapshot, ModelError> {
        let target = self.existing(snapshot)?;
        if target.status != ModelStatus::Completed {
            return Err(ModelError::Validation);
        }
        Ok(target)
    }
}

/// Seeds used by generated puts: a handful, so duplicates and zero blocks
/// are common (0 is the zero block).
const SEEDS: u64 = 6;

/// A proptest strategy for one op.
pub fn op_strategy() -> impl Strategy<Value = Op> {
    let recent = || prop_oneof![6 => 0usize..2, 1 => 0usize..8];
    prop_oneof![
        3 => (proptest::option::weighted(0.7, 0usize..3), 1u64..=2)
            .prop_map(|(parent, volume_gib)| Op::Start { parent, volume_gib }),
        8 => (proptest::bool::weighted(0.1), recent(), prop_oneof![8 => 0u32..80, 1 => 2040u32..2060, 1 => 4090u32..4100], 0u64..SEEDS)
            .prop_map(|(any, snapshot, index, seed)| Op::Put { any, snapshot, index, seed }),
        4 => (recent(), proptest::bool::weighted(0.85))
            .prop_map(|(snapshot, correct_count)| Op::Complete { snapshot, correct_count }),
        1 => Just(Op::Reopen),
        1 => (proptest::bool::weighted(0.2), recent(), 0u32..100).prop_map(|(any, snapshot, start)| Op::List { any, snapshot, start }),
        2 => (recent(), recent()).prop_map(|(first, second)| Op::Diff { first, second }),
        2 => (recent(), 0u32..80).prop_map(|(snapshot, index)| Op::Get { snapshot, index }),
        1 => (proptest::bool::weighted(0.2), recent()).prop_map(|(any, snapshot)| Op::Cancel { any, snapshot }),
        2 => (proptest::bool::weighted(0.2), 0usize..4).prop_map(|(any, snapshot)| Op::Delete { any, snapshot }),
        1 => Just(Op::Collect),
    ]
}

impl Op {
    /// A strategy for workloads of up to `length` ops.
    pub fn sequence(length: usize) -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(op_strategy(), length / 4..length)
    }
}
