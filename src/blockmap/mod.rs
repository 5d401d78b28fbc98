//! Per-snapshot block maps: block index -> chunk id, as copy-on-write hash
//! trees whose nodes are content-addressed chunks (see `format::node`).
//!
//! A child snapshot starts from its parent's root and rewrites only the
//! paths its writes touch; every untouched subtree is shared by id. Listing
//! visits only present entries from a start index on; diffing descends two
//! trees together and skips every pair of equal child ids, so its cost grows
//! with the number of differing entries, not with the volume size.

mod cache;
mod diff;
mod tree;

pub use cache::NodeCache;
pub use diff::ChangedEntry;

use crate::chunkstore::ChunkStore;
use crate::crypto::DomainKeys;
use crate::error::{Error, Result};
use crate::format::node::Node;
use crate::format::pack::RecordKind;
use crate::ids::{BlockIndex, ChunkId};
use std::sync::Arc;

/// Read and write access to block maps stored in a chunk store.
#[derive(Debug)]
pub struct BlockMaps<'a> {
    store: &'a ChunkStore,
    cache: &'a NodeCache,
    /// The domain new nodes are sealed in and keyed for; `None` writes
    /// plain nodes. Reads need no domain: records name their own.
    domain: Option<&'a DomainKeys>,
}

/// One page of entries and where the next page starts.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// Entries in ascending block index order.
    pub entries: Vec<T>,
    /// First index of the next page, when more entries exist.
    pub next: Option<BlockIndex>,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` collected entries: the extra entry, if
    /// any, is not returned; it only says where the next page starts.
    fn from_overfetch(
        mut entries: Vec<T>,
        limit: usize,
        index_of: impl Fn(&T) -> BlockIndex,
    ) -> Page<T> {
        let next = if entries.len() > limit {
            entries.pop().map(|entry| index_of(&entry))
        } else {
            None
        };
        Page { entries, next }
    }
}

impl<'a> BlockMaps<'a> {
    /// Block maps over `store`, caching decoded nodes in `cache`.
    pub fn new(store: &'a ChunkStore, cache: &'a NodeCache) -> Self {
        BlockMaps {
            store,
            cache,
            domain: None,
        }
    }

    /// The same maps, writing new nodes sealed in `domain` (an encrypted
    /// snapshot's) when one is given.
    pub(crate) fn sealed_in(self, domain: Option<&'a DomainKeys>) -> Self {
        BlockMaps { domain, ..self }
    }

    /// Loads and verifies a node.
    fn load(&self, id: &ChunkId) -> Result<Arc<Node>> {
        if let Some(node) = self.cache.get(id) {
            return Ok(node);
        }
        let stored = self.store.get(RecordKind::MapNode, id)?.ok_or_else(|| {
            Error::corrupted(
                format!("map node {id}"),
                "referenced node is not in the store",
            )
        })?;
        let node = Node::decode(&stored.data)
            .map_err(|error| error.into_error(&format!("map node {id}")))?;
        let node = Arc::new(node);
        self.cache.insert(*id, node.clone());
        Ok(node)
    }

    /// Loads a node and checks it sits at the level its parent implies.
    pub(crate) fn load_at(&self, id: &ChunkId, level: u8) -> Result<Arc<Node>> {
        let node = self.load(id)?;
        if node.level != level {
            return Err(Error::corrupted(
                format!("map node {id}"),
                "node level does not match its position",
            ));
        }
        Ok(node)
    }
}
