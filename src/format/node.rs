//! Block-map nodes: the persistent radix tree mapping block index -> chunk id.
//!
//! The layout, field by field, is specified in DESIGN.md §4.5 "Map node"; the
//! offset constants below follow it, and `tests/design_tables.rs` checks
//! the specification against these constants and the encoders.

use super::wire::{Reader, Writer};
use super::DecodeError;
use crate::ids::ChunkId;

/// Slots per node.
pub const FANOUT: usize = 64;
/// Bits of the block index consumed per level.
pub const BITS_PER_LEVEL: u32 = 6;
/// Levels in every tree (leaf = level 0, root = LEVELS - 1).
pub const LEVELS: u8 = 5;
/// The node format version.
pub const NODE_VERSION: u8 = 1;
/// blake3 derive-key context of node ids. Never change.
pub const NODE_HASH_CONTEXT: &str = "blocksnap 2026-11 block map node v1";

/// Offset of the version byte.
pub const NODE_VERSION_OFFSET: usize = 0;
/// Offset of the level byte.
pub const NODE_LEVEL_OFFSET: usize = NODE_VERSION_OFFSET + 1;
/// Offset of the reserved bytes.
pub const NODE_RESERVED_OFFSET: usize = NODE_LEVEL_OFFSET + 1;
/// Offset of the presence bitmap.
pub const NODE_BITMAP_OFFSET: usize = NODE_RESERVED_OFFSET + 6;
/// Offset of the first entry.
pub const NODE_ENTRIES_OFFSET: usize = NODE_BITMAP_OFFSET + 8;
/// Largest encoded node.
pub const MAX_NODE_SIZE: usize = NODE_ENTRIES_OFFSET + FANOUT * 32;
const _: () = assert!(NODE_ENTRIES_OFFSET == 16);

/// A decoded node: its level and 64 optional slots.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Node {
    /// 0 for leaves.
    pub level: u8,
    /// Child node ids (inner nodes) or chunk ids (leaves), by slot.
    pub slots: [Option<ChunkId>; FANOUT],
}

impl Node {
    /// An empty node at `level`.
    pub fn empty(level: u8) -> Node {
        Node {
            level,
            slots: [None; FANOUT],
        }
    }

    /// Whether no slot is present.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Encodes the node.
    pub fn encode(&self) -> Vec<u8> {
        let present = self.slots.iter().filter(|slot| slot.is_some()).count();
        let mut bytes = Vec::with_capacity(NODE_ENTRIES_OFFSET + present * 32);
        bytes.put_u8(NODE_VERSION);
        bytes.put_u8(self.level);
        bytes.extend_from_slice(&[0u8; 6]);
        let mut bitmap = 0u64;
        for (slot, entry) in self.slots.iter().enumerate() {
            if entry.is_some() {
                bitmap |= 1 << slot;
            }
        }
        bytes.put_u64(bitmap);
        for id in self.slots.iter().flatten() {
            bytes.extend_from_slice(&id.0);
        }
        bytes
    }

    /// Decodes a node, checking version, level range and exact length.
    pub fn decode(bytes: &[u8]) -> Result<Node, DecodeError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8("node version")?;
        if version != NODE_VERSION {
            return Err(DecodeError::UnsupportedVersion(u32::from(version)));
        }
        let level = reader.u8("node level")?;
        if level >= LEVELS {
            return Err(DecodeError::corrupt(NODE_LEVEL_OFFSET, "node level"));
        }
        if reader.array::<6>("node reserved")? != [0u8; 6] {
            return Err(DecodeError::corrupt(NODE_RESERVED_OFFSET, "node reserved"));
        }
        let bitmap = reader.u64("node bitmap")?;
        if bitmap == 0 {
            return Err(DecodeError::corrupt(NODE_BITMAP_OFFSET, "empty node"));
        }
        if reader.remaining() != bitmap.count_ones() as usize * 32 {
            return Err(DecodeError::corrupt(NODE_ENTRIES_OFFSET, "node length"));
        }
        let mut node = Node::empty(level);
        for (slot, entry) in node.slots.iter_mut().enumerate() {
            if bitmap & (1 << slot) != 0 {
                *entry = Some(ChunkId(reader.array::<32>("node entry")?));
            }
        }
        reader.finish("node length")?;
        Ok(node)
    }
}

/// The content address of encoded node bytes.
pub fn node_id(encoded: &[u8]) -> ChunkId {
    let mut hasher = blake3::Hasher::new_derive_key(NODE_HASH_CONTEXT);
    hasher.update(encoded);
    ChunkId(*hasher.finalize().as_bytes())
}

/// The slot a block index occupies in a node of `level`.
pub fn slot_of(index: u32, level: u8) -> usize {
    ((index >> (BITS_PER_LEVEL * u32::from(level))) as usize) % FANOUT
}

/// The slots of a node at `level` whose first index is `base`, with each
/// slot's first index, skipping slots that end before `start`.
pub fn slots_reaching(level: u8, base: u64, start: u64) -> impl Iterator<Item = (usize, u64)> {
    let span = slot_span(level);
    (0..FANOUT)
        .map(move |slot| (slot, base + slot as u64 * span))
        .filter(move |(_, slot_base)| slot_base + span > start)
}

/// Number of block indexes one slot of a node at `level` covers.
pub fn slot_span(level: u8) -> u64 {
    1u64 << (BITS_PER_LEVEL * u32::from(level))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn node_round_trip_and_corruption() {
        let mut node = Node::empty(2);
        node.slots[0] = Some(ChunkId([1; 32]));
        node.slots[63] = Some(ChunkId([2; 32]));
        let bytes = node.encode();
        assert_eq!(Node::decode(&bytes), Ok(node));
        for cut in 0..bytes.len() {
            assert!(Node::decode(&bytes[..cut]).is_err());
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Node::decode(&extra).is_err());
        let mut bad_level = bytes;
        bad_level[NODE_LEVEL_OFFSET] = LEVELS;
        assert!(Node::decode(&bad_level).is_err());
    }

    #[test]
    fn slots_cover_the_largest_volume() {
        let last_block = (crate::ids::MAX_VOLUME_SIZE_GIB * crate::ids::BLOCKS_PER_GIB - 1) as u32;
        assert!(u64::from(last_block) < slot_span(LEVELS));
        assert_eq!(slot_of(last_block, 0), 63);
    }
}
