//! A bounded cache of decoded map nodes, shared by all readers and writers.

use crate::format::node::Node;
use crate::ids::ChunkId;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Decoded nodes by id, evicted first-in first-out beyond `capacity`.
/// Nodes are immutable and content-addressed, so a cached node is never stale.
#[derive(Debug)]
pub struct NodeCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    nodes: HashMap<ChunkId, Arc<Node>>,
    order: VecDeque<ChunkId>,
}

impl NodeCache {
    /// A cache holding at most `capacity` nodes (each about 2 KiB).
    pub fn new(capacity: usize) -> NodeCache {
        NodeCache {
            capacity,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    /// The cached node with this id.
    pub fn get(&self, id: &ChunkId) -> Option<Arc<Node>> {
        self.inner.lock().nodes.get(id).cloned()
    }

    /// Caches a node.
    pub fn insert(&self, id: ChunkId, node: Arc<Node>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.nodes.insert(id, node).is_none() {
            inner.order.push_back(id);
            while inner.order.len() > self.capacity {
                if let Some(oldest) = inner.order.pop_front() {
                    inner.nodes.remove(&oldest);
                }
            }
        }
    }
}
