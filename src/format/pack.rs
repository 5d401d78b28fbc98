//! Pack records: one stored chunk (a block's data or an encoded map node).
//!
//! The layout, field by field, is specified in DESIGN.md §4.3 "Pack record"; the
//! offset constants below follow it, and `tests/design_tables.rs` checks
//! the specification against these constants and the encoders.

use super::wire::{Reader, Writer};
use super::{crc32, DecodeError};
use crate::ids::{ChunkId, Sha256Digest, BLOCK_SIZE};

/// Offset of the crc.
pub const RECORD_CRC_OFFSET: usize = 0;
/// Offset of the payload length.
pub const RECORD_PAYLOAD_LEN_OFFSET: usize = RECORD_CRC_OFFSET + 4;
/// Offset of the kind.
pub const RECORD_KIND_OFFSET: usize = RECORD_PAYLOAD_LEN_OFFSET + 4;
/// Offset of the codec.
pub const RECORD_CODEC_OFFSET: usize = RECORD_KIND_OFFSET + 1;
/// Offset of the reserved field.
pub const RECORD_RESERVED_OFFSET: usize = RECORD_CODEC_OFFSET + 1;
/// Offset of the raw length.
pub const RECORD_RAW_LEN_OFFSET: usize = RECORD_RESERVED_OFFSET + 2;
/// Offset of the chunk id.
pub const RECORD_CHUNK_ID_OFFSET: usize = RECORD_RAW_LEN_OFFSET + 4;
/// Offset of the SHA-256.
pub const RECORD_SHA256_OFFSET: usize = RECORD_CHUNK_ID_OFFSET + 32;
/// Size of a record header; the payload follows.
pub const RECORD_HEADER_SIZE: usize = RECORD_SHA256_OFFSET + 32;
const _: () = assert!(RECORD_HEADER_SIZE == 80);

/// Largest raw length a record may claim: a block, or the largest map node.
pub const MAX_RAW_LEN: usize = BLOCK_SIZE;
/// Largest payload a record may claim (zstd never expands beyond its bound,
/// and incompressible payloads are stored raw).
pub const MAX_PAYLOAD_LEN: usize = BLOCK_SIZE;

/// What a record holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecordKind {
    /// A block's data.
    Block = 1,
    /// An encoded block-map node.
    MapNode = 2,
}

/// How the payload is encoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Codec {
    /// Stored as is.
    Raw = 0,
    /// zstd frame.
    Zstd = 1,
}

/// A decoded record header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordHeader {
    /// crc32 stored in the record.
    pub crc: u32,
    /// Stored payload length.
    pub payload_len: u32,
    /// What the record holds.
    pub kind: RecordKind,
    /// How the payload is encoded.
    pub codec: Codec,
    /// Length after decoding.
    pub raw_len: u32,
    /// Content address of the raw bytes.
    pub chunk_id: ChunkId,
    /// SHA-256 of the raw block (zero for map nodes).
    pub sha256: Sha256Digest,
}

impl RecordHeader {
    /// Total bytes the record occupies in the pack.
    pub fn record_len(&self) -> usize {
        RECORD_HEADER_SIZE + self.payload_len as usize
    }
}

/// Encodes a record header for `payload`; the crc covers header and payload.
pub fn encode_record_header(
    kind: RecordKind,
    codec: Codec,
    raw_len: u32,
    chunk_id: &ChunkId,
    sha256: &Sha256Digest,
    payload: &[u8],
) -> [u8; RECORD_HEADER_SIZE] {
    let mut bytes = Vec::with_capacity(RECORD_HEADER_SIZE);
    bytes.put_u32(0);
    bytes.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    bytes.put_u8(kind as u8);
    bytes.put_u8(codec as u8);
    bytes.put_u16(0);
    bytes.put_u32(raw_len);
    bytes.extend_from_slice(&chunk_id.0);
    bytes.extend_from_slice(&sha256.0);
    let crc = crc32(&[
        bytes.get(RECORD_PAYLOAD_LEN_OFFSET..).unwrap_or_default(),
        payload,
    ]);
    if let Some(slot) = bytes.get_mut(RECORD_CRC_OFFSET..RECORD_PAYLOAD_LEN_OFFSET) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
    let mut out = [0u8; RECORD_HEADER_SIZE];
    out.copy_from_slice(&bytes);
    out
}

/// Decodes and range-checks a record header (the crc is checked by
/// [`verify_record`] once the payload is at hand).
pub fn decode_record_header(bytes: &[u8]) -> Result<RecordHeader, DecodeError> {
    let mut reader = Reader::new(bytes);
    let crc = reader.u32("record crc")?;
    let payload_len = reader.u32("record payload length")?;
    let kind = match reader.u8("record kind")? {
        1 => RecordKind::Block,
        2 => RecordKind::MapNode,
        _ => return Err(DecodeError::corrupt(RECORD_KIND_OFFSET, "record kind")),
    };
    let codec = match reader.u8("record codec")? {
        0 => Codec::Raw,
        1 => Codec::Zstd,
        _ => return Err(DecodeError::corrupt(RECORD_CODEC_OFFSET, "record codec")),
    };
    if reader.u16("record reserved")? != 0 {
        return Err(DecodeError::corrupt(
            RECORD_RESERVED_OFFSET,
            "record reserved",
        ));
    }
    let raw_len = reader.u32("record raw length")?;
    if raw_len as usize > MAX_RAW_LEN {
        return Err(DecodeError::corrupt(
            RECORD_RAW_LEN_OFFSET,
            "record raw length",
        ));
    }
    if payload_len as usize > MAX_PAYLOAD_LEN || (codec == Codec::Raw && payload_len != raw_len) {
        return Err(DecodeError::corrupt(
            RECORD_PAYLOAD_LEN_OFFSET,
            "record payload length",
        ));
    }
    let chunk_id = ChunkId(reader.array::<32>("record chunk id")?);
    let sha256 = Sha256Digest(reader.array::<32>("record sha256")?);
    Ok(RecordHeader {
        crc,
        payload_len,
        kind,
        codec,
        raw_len,
        chunk_id,
        sha256,
    })
}

/// Checks the record's crc against its header bytes and payload.
pub fn verify_record(
    header_bytes: &[u8],
    header: &RecordHeader,
    payload: &[u8],
) -> Result<(), DecodeError> {
    let covered = header_bytes
        .get(RECORD_PAYLOAD_LEN_OFFSET..RECORD_HEADER_SIZE)
        .ok_or(DecodeError::corrupt(0, "record header"))?;
    if payload.len() != header.payload_len as usize {
        return Err(DecodeError::corrupt(
            RECORD_HEADER_SIZE,
            "record payload truncated",
        ));
    }
    if crc32(&[covered, payload]) != header.crc {
        return Err(DecodeError::corrupt(RECORD_CRC_OFFSET, "record crc"));
    }
    Ok(())
}

/// Decodes and verifies a whole record from `bytes` (header then payload),
/// returning the header and the payload slice.
pub fn decode_record(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), DecodeError> {
    let header_bytes = bytes
        .get(..RECORD_HEADER_SIZE)
        .ok_or(DecodeError::corrupt(0, "record header truncated"))?;
    let header = decode_record_header(header_bytes)?;
    let payload =
        bytes
            .get(RECORD_HEADER_SIZE..header.record_len())
            .ok_or(DecodeError::corrupt(
                RECORD_HEADER_SIZE,
                "record payload truncated",
            ))?;
    verify_record(header_bytes, &header, payload)?;
    Ok((header, payload))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_flips_detected() {
        let payload = b"hello world".to_vec();
        let id = ChunkId([7; 32]);
        let sha = Sha256Digest([9; 32]);
        let header = encode_record_header(RecordKind::Block, Codec::Raw, 11, &id, &sha, &payload);
        let mut record = header.to_vec();
        record.extend_from_slice(&payload);
        let (decoded, body) = decode_record(&record).expect("valid record");
        assert_eq!(decoded.chunk_id, id);
        assert_eq!(decoded.sha256, sha);
        assert_eq!(body, &payload[..]);
        for position in 0..record.len() {
            let mut flipped = record.clone();
            flipped[position] ^= 0x10;
            assert!(decode_record(&flipped).is_err(), "flip at {position}");
        }
        for cut in 0..record.len() {
            assert!(decode_record(&record[..cut]).is_err(), "cut at {cut}");
        }
    }
}
