//! The in-memory id -> location index.
//!
//! Sealed packs contribute 16-byte entries (8-byte id prefix, pack, offset)
//! to one sorted vector: 16 bytes of RAM per unique chunk. Because only a
//! prefix is kept, a hit is a candidate that the caller confirms against the
//! full id in the record header. Chunks of the open pack are kept with their
//! full ids in a hash map, bounded by the pack size limit.

use crate::format::index::IndexEntry;
use crate::ids::{ChunkId, PackLocation};
use std::collections::HashMap;

/// One sealed chunk: its id prefix and where it lives.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct SealedEntry {
    prefix: u64,
    pack: u32,
    offset: u32,
}

const _: () = assert!(std::mem::size_of::<SealedEntry>() == 16);

/// Where chunks are.
#[derive(Debug, Default)]
pub(crate) struct Index {
    sealed: Vec<SealedEntry>,
    open: HashMap<ChunkId, PackLocation>,
}

impl Index {
    /// Locations that may hold `id`: the exact open-pack hit, or every sealed
    /// entry sharing its prefix.
    pub(crate) fn candidates(&self, id: &ChunkId) -> Vec<PackLocation> {
        if let Some(location) = self.open.get(id) {
            return vec![*location];
        }
        self.candidates_sealed(id.prefix())
    }

    /// Sealed locations that may hold `id` (every entry sharing its
    /// prefix), whether or not the open pack holds it too.
    pub(crate) fn sealed_candidates(&self, id: &ChunkId) -> Vec<PackLocation> {
        self.candidates_sealed(id.prefix())
    }

    /// Sealed entries with this id prefix.
    fn candidates_sealed(&self, prefix: u64) -> Vec<PackLocation> {
        let start = self.sealed.partition_point(|entry| entry.prefix < prefix);
        self.sealed
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|entry| entry.prefix == prefix)
            .map(|entry| PackLocation {
                pack: entry.pack,
                offset: entry.offset,
            })
            .collect()
    }

    /// Records a chunk appended to the open pack.
    pub(crate) fn insert_open(&mut self, id: ChunkId, location: PackLocation) {
        self.open.insert(id, location);
    }

    /// Adds a sealed pack's entries (sorted) and forgets the open-pack
    /// entries of that pack, in one step so no reader misses a chunk.
    pub(crate) fn add_sealed(&mut self, pack: u32, entries: &[IndexEntry]) {
        let mut merged = Vec::with_capacity(self.sealed.len() + entries.len());
        let mut old = self.sealed.iter().copied().peekable();
        let mut new = entries
            .iter()
            .map(|entry| SealedEntry {
                prefix: entry.id_prefix,
                pack,
                offset: entry.offset,
            })
            .peekable();
        loop {
            let next = match (old.peek(), new.peek()) {
                (Some(a), Some(b)) if a <= b => old.next(),
                (Some(_), Some(_)) | (None, Some(_)) => new.next(),
                (Some(_), None) => old.next(),
                (None, None) => break,
            };
            merged.extend(next);
        }
        self.sealed = merged;
        self.open.retain(|_, location| location.pack != pack);
    }

    /// Forgets every entry of the given packs (they were compacted away).
    pub(crate) fn remove_packs(&mut self, packs: &[u32]) {
        self.sealed.retain(|entry| !packs.contains(&entry.pack));
        self.open
            .retain(|_, location| !packs.contains(&location.pack));
    }

    /// Forgets the entries at exactly these locations.
    pub(crate) fn remove_locations(&mut self, locations: &[PackLocation]) {
        let is_doomed = |pack: u32, offset: u32| {
            locations
                .iter()
                .any(|location| location.pack == pack && location.offset == offset)
        };
        self.sealed
            .retain(|entry| !is_doomed(entry.pack, entry.offset));
        self.open
            .retain(|_, location| !is_doomed(location.pack, location.offset));
    }

    /// The open-pack entries of pack `pack`, with full ids.
    pub(crate) fn open_entries(&self, pack: u32) -> Vec<(ChunkId, PackLocation)> {
        self.open
            .iter()
            .filter(|(_, location)| location.pack == pack)
            .map(|(id, location)| (*id, *location))
            .collect()
    }

    /// Groups of locations whose id prefixes are equal (sealed entries
    /// sharing a prefix, plus open-pack chunks whose prefix a sealed entry
    /// has): the only places one chunk can be indexed twice.
    pub(crate) fn shared_prefixes(&self) -> Vec<Vec<PackLocation>> {
        let location = |entry: &SealedEntry| PackLocation {
            pack: entry.pack,
            offset: entry.offset,
        };
        let mut groups: HashMap<u64, Vec<PackLocation>> = HashMap::new();
        for pair in self.sealed.windows(2) {
            if let [a, b] = pair {
                if a.prefix == b.prefix {
                    let group = groups.entry(a.prefix).or_default();
                    for entry in [a, b] {
                        if !group.contains(&location(entry)) {
                            group.push(location(entry));
                        }
                    }
                }
            }
        }
        for (id, open_location) in &self.open {
            let sealed = self.candidates_sealed(id.prefix());
            if !sealed.is_empty() {
                let group = groups.entry(id.prefix()).or_default();
                for candidate in sealed.into_iter().chain([*open_location]) {
                    if !group.contains(&candidate) {
                        group.push(candidate);
                    }
                }
            }
        }
        groups.into_values().collect()
    }

    /// Every indexed location with its id prefix.
    pub(crate) fn all_entries(&self) -> Vec<(u64, PackLocation)> {
        self.sealed
            .iter()
            .map(|entry| {
                (
                    entry.prefix,
                    PackLocation {
                        pack: entry.pack,
                        offset: entry.offset,
                    },
                )
            })
            .chain(
                self.open
                    .iter()
                    .map(|(id, location)| (id.prefix(), *location)),
            )
            .collect()
    }

    /// Unique chunks indexed.
    pub(crate) fn len(&self) -> usize {
        self.sealed.len() + self.open.len()
    }

    /// Approximate heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.sealed.capacity() * std::mem::size_of::<SealedEntry>()
            + self.open.capacity() * (std::mem::size_of::<(ChunkId, PackLocation)>() + 1)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn sealed_merge_keeps_order_and_prefix_collisions() {
        let mut index = Index::default();
        let a = ChunkId([1; 32]);
        let mut b_bytes = [1u8; 32];
        b_bytes[31] = 2;
        let b = ChunkId(b_bytes);
        index.insert_open(
            a,
            PackLocation {
                pack: 0,
                offset: 32,
            },
        );
        assert_eq!(
            index.candidates(&a),
            vec![PackLocation {
                pack: 0,
                offset: 32
            }]
        );
        index.add_sealed(
            0,
            &[IndexEntry {
                id_prefix: a.prefix(),
                offset: 32,
                record_len: 90,
            }],
        );
        index.add_sealed(
            1,
            &[IndexEntry {
                id_prefix: b.prefix(),
                offset: 32,
                record_len: 90,
            }],
        );
        // a and b share their 8-byte prefix: both locations are candidates.
        assert_eq!(index.candidates(&a).len(), 2);
        assert_eq!(index.len(), 2);
        assert!(index.candidates(&ChunkId([9; 32])).is_empty());
    }
}
