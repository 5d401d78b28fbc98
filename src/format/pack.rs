//! Pack records: one stored chunk (a block's data or an encoded map node).
//!
//! The layout, field by field, is specified in DESIGN.md §4.3 "Pack record"; the
//! offset constants below follow it, and `tests/design_tables.rs` checks
//! the specification against these constants and the encoders.

use super::wire::Reader;
use super::{crc32, DecodeError, EncodeError};
use crate::ids::{ChunkId, Sha256Digest, BLOCK_SIZE};

/// Bytes of a sealed record's nonce (AES-256-GCM's 96 bits).
pub const NONCE_LEN: usize = 12;
/// Bytes of a sealed record's authentication tag (and of every AEAD tag
/// in the store's formats).
pub const TAG_LEN: usize = 16;

/// Offset of the crc.
pub const RECORD_CRC_OFFSET: usize = 0;
/// Offset of the payload length.
pub const RECORD_PAYLOAD_LEN_OFFSET: usize = RECORD_CRC_OFFSET + 4;
/// Offset of the kind.
pub const RECORD_KIND_OFFSET: usize = RECORD_PAYLOAD_LEN_OFFSET + 4;
/// Offset of the codec.
pub const RECORD_CODEC_OFFSET: usize = RECORD_KIND_OFFSET + 1;
/// Offset of the key domain (0 = not encrypted).
pub const RECORD_DOMAIN_OFFSET: usize = RECORD_CODEC_OFFSET + 1;
/// Offset of the raw length.
pub const RECORD_RAW_LEN_OFFSET: usize = RECORD_DOMAIN_OFFSET + 2;
/// Offset of the chunk id.
pub const RECORD_CHUNK_ID_OFFSET: usize = RECORD_RAW_LEN_OFFSET + 4;
/// Offset of the SHA-256 (plain records) or of the seal (encrypted ones).
pub const RECORD_SHA256_OFFSET: usize = RECORD_CHUNK_ID_OFFSET + 32;
/// Offset of an encrypted record's nonce.
pub const RECORD_NONCE_OFFSET: usize = RECORD_SHA256_OFFSET;
/// Offset of an encrypted record's authentication tag.
pub const RECORD_TAG_OFFSET: usize = RECORD_NONCE_OFFSET + NONCE_LEN;
/// Offset of an encrypted record's 4 zero bytes.
pub const RECORD_SEAL_RESERVED_OFFSET: usize = RECORD_TAG_OFFSET + TAG_LEN;
/// Size of a record header; the payload follows.
pub const RECORD_HEADER_SIZE: usize = RECORD_SHA256_OFFSET + 32;
const _: () = assert!(RECORD_HEADER_SIZE == 80);
const _: () = assert!(RECORD_SEAL_RESERVED_OFFSET + 4 == RECORD_HEADER_SIZE);
/// The associated data of an encrypted record: header bytes 4..48
/// (payload length, kind, codec, domain, raw length, chunk id).
pub const RECORD_AAD: std::ops::Range<usize> = RECORD_PAYLOAD_LEN_OFFSET..RECORD_SHA256_OFFSET;
/// Bytes of that associated data.
pub const RECORD_AAD_LEN: usize = RECORD_SHA256_OFFSET - RECORD_PAYLOAD_LEN_OFFSET;
const _: () = assert!(RECORD_AAD_LEN == 4 + 1 + 1 + 2 + 4 + 32);
/// An encrypted payload starts with the block's SHA-256 (zero for nodes).
pub const SEALED_PREFIX_LEN: usize = 32;

/// The first dedup-only domain number: domains `1..FIRST_DEDUP_DOMAIN`
/// seal their records (encryption), domains from here on only key their
/// ids (an owner's own dedup domain; the payload is in the clear).
pub const FIRST_DEDUP_DOMAIN: u16 = 0x8000;

/// Whether records of `domain` are sealed (encrypted): every domain but
/// 0 (plain) and the dedup-only ones.
pub fn is_sealed_domain(domain: u16) -> bool {
    domain != 0 && domain < FIRST_DEDUP_DOMAIN
}

/// Largest raw length a record may claim: a block, or the largest map node.
pub const MAX_RAW_LEN: usize = BLOCK_SIZE;
/// Largest payload a record may claim (zstd never expands beyond its bound,
/// incompressible payloads are stored raw, and an encrypted payload adds
/// the sealed SHA-256).
pub const MAX_PAYLOAD_LEN: usize = BLOCK_SIZE + SEALED_PREFIX_LEN;

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
    /// Key domain: 0 for a plain record, else the keyring domain whose
    /// key sealed the payload.
    pub domain: u16,
    /// Length after decoding.
    pub raw_len: u32,
    /// Content address of the raw bytes.
    pub chunk_id: ChunkId,
    /// Plain records: SHA-256 of the raw block (zero for map nodes).
    /// Encrypted records: nonce, tag, and 4 zero bytes.
    pub sha256: Sha256Digest,
}

impl RecordHeader {
    /// Total bytes the record occupies in the pack.
    pub fn record_len(&self) -> usize {
        RECORD_HEADER_SIZE + self.payload_len as usize
    }

    /// Bytes 4..48 of this header, as [`encode_aad`] makes them: an
    /// encrypted record's associated data.
    pub fn aad(&self) -> RecordAad {
        RecordAad::from_fields(
            self.kind,
            self.codec,
            self.domain,
            self.raw_len,
            &self.chunk_id,
            self.payload_len,
        )
    }

    /// An encrypted record's nonce and tag.
    pub fn seal(&self) -> ([u8; NONCE_LEN], [u8; TAG_LEN]) {
        let mut nonce = [0u8; NONCE_LEN];
        let mut tag = [0u8; TAG_LEN];
        nonce.copy_from_slice(self.sha256.0.get(..NONCE_LEN).unwrap_or(&[0; NONCE_LEN]));
        tag.copy_from_slice(
            self.sha256
                .0
                .get(NONCE_LEN..NONCE_LEN + TAG_LEN)
                .unwrap_or(&[0; TAG_LEN]),
        );
        (nonce, tag)
    }
}

/// The 32-byte field at offset 48 of an encrypted record: nonce, tag, zeros.
pub fn seal_field(nonce: &[u8; NONCE_LEN], tag: &[u8; TAG_LEN]) -> Sha256Digest {
    let mut field = Vec::with_capacity(32);
    field.extend_from_slice(nonce);
    field.extend_from_slice(tag);
    field.resize(32, 0);
    let mut out = [0u8; 32];
    out.copy_from_slice(&field);
    Sha256Digest(out)
}

/// Header bytes 4..48 of a record (payload length, kind, codec, domain,
/// raw length, chunk id): what an encrypted record's tag authenticates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordAad([u8; RECORD_AAD_LEN]);

impl RecordAad {
    fn from_fields(
        kind: RecordKind,
        codec: Codec,
        domain: u16,
        raw_len: u32,
        chunk_id: &ChunkId,
        payload_len: u32,
    ) -> RecordAad {
        let mut bytes = [0u8; RECORD_AAD_LEN];
        let fields: [&[u8]; 6] = [
            &payload_len.to_le_bytes(),
            &[kind as u8],
            &[codec as u8],
            &domain.to_le_bytes(),
            &raw_len.to_le_bytes(),
            &chunk_id.0,
        ];
        // The fields fill the array exactly (asserted with RECORD_AAD_LEN).
        let mut rest = bytes.as_mut_slice();
        for field in fields {
            let (slot, after) = std::mem::take(&mut rest).split_at_mut(field.len());
            slot.copy_from_slice(field);
            rest = after;
        }
        RecordAad(bytes)
    }

    /// The bytes, as they stand at header offset 4.
    pub fn as_bytes(&self) -> &[u8; RECORD_AAD_LEN] {
        &self.0
    }
}

/// Encodes a plain record header for `payload`; the crc covers header and
/// payload.
pub fn encode_record_header(
    kind: RecordKind,
    codec: Codec,
    raw_len: u32,
    chunk_id: &ChunkId,
    sha256: &Sha256Digest,
    payload: &[u8],
) -> Result<[u8; RECORD_HEADER_SIZE], EncodeError> {
    encode_unsealed_header(kind, codec, 0, raw_len, chunk_id, sha256, payload)
}

/// Encodes the header of a record whose payload is in the clear: plain
/// (domain 0) or keyed in a dedup-only `domain` (its id is that domain's
/// keyed hash).
pub fn encode_unsealed_header(
    kind: RecordKind,
    codec: Codec,
    domain: u16,
    raw_len: u32,
    chunk_id: &ChunkId,
    sha256: &Sha256Digest,
    payload: &[u8],
) -> Result<[u8; RECORD_HEADER_SIZE], EncodeError> {
    debug_assert!(!is_sealed_domain(domain));
    let aad = encode_aad(kind, codec, domain, raw_len, chunk_id, payload.len())?;
    Ok(finish_header(&aad, sha256, payload))
}

/// Encodes `header` again over `payload`: a verbatim copy of a record, as
/// compaction makes one, domain and seal included.
pub fn encode_copy_header(header: &RecordHeader, payload: &[u8]) -> [u8; RECORD_HEADER_SIZE] {
    debug_assert_eq!(payload.len(), header.payload_len as usize);
    finish_header(&header.aad(), &header.sha256, payload)
}

/// Header bytes 4..48 of a record, the associated data of an encrypted
/// one. A raw length or payload length beyond what a record may hold
/// ([`MAX_RAW_LEN`], [`MAX_PAYLOAD_LEN`]) is an error: the decoder would
/// refuse the record.
pub fn encode_aad(
    kind: RecordKind,
    codec: Codec,
    domain: u16,
    raw_len: u32,
    chunk_id: &ChunkId,
    payload_len: usize,
) -> Result<RecordAad, EncodeError> {
    if raw_len as usize > MAX_RAW_LEN {
        return Err(EncodeError {
            what: "a record's raw length",
            len: raw_len as usize,
            limit: MAX_RAW_LEN,
        });
    }
    let payload = u32::try_from(payload_len)
        .ok()
        .filter(|len| *len as usize <= MAX_PAYLOAD_LEN)
        .ok_or(EncodeError {
            what: "a record's payload",
            len: payload_len,
            limit: MAX_PAYLOAD_LEN,
        })?;
    Ok(RecordAad::from_fields(
        kind, codec, domain, raw_len, chunk_id, payload,
    ))
}

/// Completes an encrypted record's header: `aad` from [`encode_aad`] for
/// the sealed payload's length, then the seal; the crc covers header and
/// (encrypted) payload.
pub fn encode_sealed_header(
    aad: &RecordAad,
    nonce: &[u8; NONCE_LEN],
    tag: &[u8; TAG_LEN],
    payload: &[u8],
) -> [u8; RECORD_HEADER_SIZE] {
    finish_header(aad, &seal_field(nonce, tag), payload)
}

/// The header: crc, `aad`, then the 32-byte field (a SHA-256, or a seal).
fn finish_header(
    aad: &RecordAad,
    field: &Sha256Digest,
    payload: &[u8],
) -> [u8; RECORD_HEADER_SIZE] {
    let mut out = [0u8; RECORD_HEADER_SIZE];
    let (crc_slot, covered) = out.split_at_mut(RECORD_PAYLOAD_LEN_OFFSET);
    let (aad_slot, field_slot) = covered.split_at_mut(RECORD_AAD_LEN);
    aad_slot.copy_from_slice(aad.as_bytes());
    field_slot.copy_from_slice(&field.0);
    let crc = crc32(&[covered, payload]);
    crc_slot.copy_from_slice(&crc.to_le_bytes());
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
    let domain = reader.u16("record domain")?;
    let raw_len = reader.u32("record raw length")?;
    if raw_len as usize > MAX_RAW_LEN {
        return Err(DecodeError::corrupt(
            RECORD_RAW_LEN_OFFSET,
            "record raw length",
        ));
    }
    let sealed = is_sealed_domain(domain);
    let sealed_prefix = if sealed { SEALED_PREFIX_LEN as u32 } else { 0 };
    let stored_len = payload_len.checked_sub(sealed_prefix);
    let fits = match (codec, stored_len) {
        (_, None) => false,
        (Codec::Raw, Some(stored)) => stored == raw_len,
        (Codec::Zstd, Some(stored)) => stored as usize <= BLOCK_SIZE,
    };
    if payload_len as usize > MAX_PAYLOAD_LEN || !fits {
        return Err(DecodeError::corrupt(
            RECORD_PAYLOAD_LEN_OFFSET,
            "record payload length",
        ));
    }
    let chunk_id = ChunkId(reader.array::<32>("record chunk id")?);
    let sha256 = Sha256Digest(reader.array::<32>("record sha256")?);
    if sealed
        && sha256
            .0
            .get(RECORD_SEAL_RESERVED_OFFSET - RECORD_SHA256_OFFSET..)
            != Some(&[0u8; 4][..])
    {
        return Err(DecodeError::corrupt(
            RECORD_SEAL_RESERVED_OFFSET,
            "record seal reserved",
        ));
    }
    Ok(RecordHeader {
        crc,
        payload_len,
        kind,
        codec,
        domain,
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
        let header = encode_record_header(RecordKind::Block, Codec::Raw, 11, &id, &sha, &payload)
            .expect("encodes");
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
