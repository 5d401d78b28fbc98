//! Compaction markers: the durable intent of one pack compaction.
//!
//! The layout, field by field, is specified in DESIGN.md §4.9 "Compaction
//! marker"; the offset constants below follow it, and
//! `tests/design_tables.rs` checks the specification against these
//! constants and the encoder.

use super::header::{self, COMPACTION_MAGIC, FILE_HEADER_SIZE};
use super::wire::{body_before_crc, Reader, Writer};
use super::{crc32, DecodeError, EncodeError};

/// Offset of the source count.
pub const MARKER_COUNT_OFFSET: usize = FILE_HEADER_SIZE;
/// Offset of the first source pack sequence.
pub const MARKER_SOURCES_OFFSET: usize = MARKER_COUNT_OFFSET + 4;
/// How a marker's name ends (`packs/OUTPUT.compact`, OUTPUT the output
/// pack's sequence as 8 lowercase hex digits).
pub const MARKER_SUFFIX: &str = ".compact";
/// Most source packs one compaction may name.
pub const MAX_MARKER_SOURCES: usize = 4096;

/// Encodes the marker of a compaction writing pack `output` from `sources`
/// (at most [`MAX_MARKER_SOURCES`]).
pub fn encode_marker(output: u32, sources: &[u32]) -> Result<Vec<u8>, EncodeError> {
    if sources.len() > MAX_MARKER_SOURCES {
        return Err(EncodeError {
            what: "a compaction's source pack count",
            len: sources.len(),
            limit: MAX_MARKER_SOURCES,
        });
    }
    let mut bytes = Vec::with_capacity(MARKER_SOURCES_OFFSET + 4 * sources.len() + 4);
    bytes.extend_from_slice(&header::encode(COMPACTION_MAGIC, u64::from(output)));
    bytes.put_len_u32(sources.len(), "a compaction's source pack count")?;
    for source in sources {
        bytes.put_u32(*source);
    }
    let crc = crc32(&[&bytes]);
    bytes.put_u32(crc);
    Ok(bytes)
}

/// Decodes a marker: the output pack and the source packs.
pub fn decode_marker(bytes: &[u8]) -> Result<(u32, Vec<u32>), DecodeError> {
    let output = header::decode(bytes, COMPACTION_MAGIC)?;
    let output = u32::try_from(output)
        .map_err(|_| DecodeError::corrupt(header::SUBJECT_OFFSET, "marker output pack"))?;
    let body = body_before_crc(bytes, "marker truncated", "marker crc")?;
    let mut reader = Reader::new(body);
    reader.take(FILE_HEADER_SIZE, "marker header")?;
    let count = reader.u32("marker source count")? as usize;
    if count > MAX_MARKER_SOURCES || reader.remaining() != count * 4 {
        return Err(DecodeError::corrupt(
            MARKER_COUNT_OFFSET,
            "marker source count",
        ));
    }
    let mut sources = Vec::with_capacity(count);
    for _ in 0..count {
        sources.push(reader.u32("marker source")?);
    }
    Ok((output, sources))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip_and_damage() {
        let bytes = encode_marker(9, &[2, 5, 7]).expect("encodes");
        assert_eq!(decode_marker(&bytes), Ok((9, vec![2, 5, 7])));
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x10;
            assert!(decode_marker(&flipped).is_err(), "flip at {position}");
        }
        for cut in 0..bytes.len() {
            assert!(decode_marker(&bytes[..cut]).is_err());
        }
    }
}
