//! Pack index files: the persisted id -> location map of one sealed pack.
//!
//! The layout, field by field, is specified in DESIGN.md §4.4 "Pack index"; the
//! offset constants below follow it, and `tests/design_tables.rs` checks
//! the specification against these constants and the encoders.

use super::header::{self, FILE_HEADER_SIZE, INDEX_MAGIC};
use super::wire::{Reader, Writer};
use super::{crc32, DecodeError, EncodeError};

/// Offset of the entry count.
pub const INDEX_COUNT_OFFSET: usize = FILE_HEADER_SIZE;
/// Offset of the reserved word.
pub const INDEX_RESERVED_OFFSET: usize = INDEX_COUNT_OFFSET + 4;
/// Offset of the first entry.
pub const INDEX_ENTRIES_OFFSET: usize = INDEX_RESERVED_OFFSET + 4;
/// Size of one entry.
pub const INDEX_ENTRY_SIZE: usize = 16;
/// Size of the trailing crc.
pub const INDEX_TRAILER_SIZE: usize = 4;
const _: () = assert!(INDEX_ENTRIES_OFFSET == 40);

/// One entry of a pack index.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct IndexEntry {
    /// First 8 bytes of the chunk id.
    pub id_prefix: u64,
    /// Record offset in the pack.
    pub offset: u32,
    /// Record length (header + payload).
    pub record_len: u32,
}

/// Encodes an index; `entries` must already be sorted.
pub fn encode_index(pack: u64, entries: &[IndexEntry]) -> Result<Vec<u8>, EncodeError> {
    let mut bytes = Vec::with_capacity(
        INDEX_ENTRIES_OFFSET + entries.len() * INDEX_ENTRY_SIZE + INDEX_TRAILER_SIZE,
    );
    bytes.extend_from_slice(&header::encode(INDEX_MAGIC, pack));
    bytes.put_len_u32(entries.len(), "a pack index's entry count")?;
    bytes.put_u32(0);
    for entry in entries {
        bytes.put_u64(entry.id_prefix);
        bytes.put_u32(entry.offset);
        bytes.put_u32(entry.record_len);
    }
    let crc = crc32(&[&bytes]);
    bytes.put_u32(crc);
    Ok(bytes)
}

/// Decodes an index, returning its pack sequence and entries (checked sorted).
pub fn decode_index(bytes: &[u8]) -> Result<(u64, Vec<IndexEntry>), DecodeError> {
    let pack = header::decode(bytes, INDEX_MAGIC)?;
    let body_end = bytes
        .len()
        .checked_sub(INDEX_TRAILER_SIZE)
        .ok_or(DecodeError::corrupt(0, "index truncated"))?;
    let mut reader = Reader::new(
        bytes
            .get(..body_end)
            .ok_or(DecodeError::corrupt(0, "index truncated"))?,
    );
    reader.take(FILE_HEADER_SIZE, "index header")?;
    let count = reader.u32("index count")? as usize;
    if reader.u32("index reserved")? != 0 {
        // The encoder writes zero: anything else would re-encode to other bytes.
        return Err(DecodeError::corrupt(
            INDEX_RESERVED_OFFSET,
            "index reserved word",
        ));
    }
    if reader.remaining() != count.saturating_mul(INDEX_ENTRY_SIZE) {
        return Err(DecodeError::corrupt(INDEX_COUNT_OFFSET, "index count"));
    }
    let mut trailer = Reader::new(bytes.get(body_end..).unwrap_or_default());
    let stored_crc = trailer.u32("index crc")?;
    if crc32(&[bytes.get(..body_end).unwrap_or_default()]) != stored_crc {
        return Err(DecodeError::corrupt(body_end, "index crc"));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let entry = IndexEntry {
            id_prefix: reader.u64("index entry")?,
            offset: reader.u32("index entry")?,
            record_len: reader.u32("index entry")?,
        };
        if entries
            .last()
            .is_some_and(|previous: &IndexEntry| previous > &entry)
        {
            return Err(DecodeError::corrupt(reader.position(), "index order"));
        }
        entries.push(entry);
    }
    Ok((pack, entries))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trip_and_corruption() {
        let entries = vec![
            IndexEntry {
                id_prefix: 1,
                offset: 32,
                record_len: 100,
            },
            IndexEntry {
                id_prefix: 5,
                offset: 132,
                record_len: 90,
            },
        ];
        let bytes = encode_index(3, &entries).expect("encodes");
        assert_eq!(decode_index(&bytes), Ok((3, entries)));
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x04;
            assert!(decode_index(&flipped).is_err(), "flip at {position}");
        }
        for cut in 0..bytes.len() {
            assert!(decode_index(&bytes[..cut]).is_err());
        }
    }

    /// Found by CI's fuzz pass (the pack_index target): an index whose
    /// reserved word was nonzero under a valid crc decoded, and re-encoded
    /// with zero.
    #[test]
    fn the_reserved_word_is_zero() {
        let mut bytes = encode_index(3, &[]).expect("encodes");
        bytes[INDEX_RESERVED_OFFSET] = 1;
        let body_end = bytes.len() - INDEX_TRAILER_SIZE;
        let crc = crc32(&[&bytes[..body_end]]);
        bytes[body_end..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_index(&bytes),
            Err(DecodeError::corrupt(
                INDEX_RESERVED_OFFSET,
                "index reserved word"
            ))
        );
    }
}
