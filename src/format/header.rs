//! The 32-byte header that opens every pack, pack index, catalog log and
//! journal file.
//!
//! The layout, field by field, is specified in DESIGN.md §4.2 "File header"; the
//! offset constants below follow it, and `tests/design_tables.rs` checks
//! the specification against these constants and the encoders.

use super::wire::{Reader, Writer};
use super::{crc32, DecodeError};

/// Offset of the magic.
pub const MAGIC_OFFSET: usize = 0;
/// Offset of the version.
pub const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
/// Offset of the flags.
pub const FLAGS_OFFSET: usize = VERSION_OFFSET + 4;
/// Offset of the subject.
pub const SUBJECT_OFFSET: usize = FLAGS_OFFSET + 4;
/// Offset of the unused word.
pub const UNUSED_OFFSET: usize = SUBJECT_OFFSET + 8;
/// Offset of the crc.
pub const CRC_OFFSET: usize = UNUSED_OFFSET + 4;
/// Total header size.
pub const FILE_HEADER_SIZE: usize = CRC_OFFSET + 4;
const _: () = assert!(FILE_HEADER_SIZE == 32);

/// Magic of a pack file. Never change.
pub const PACK_MAGIC: [u8; 8] = *b"BSNPPACK";
/// Magic of a pack index file. Never change.
pub const INDEX_MAGIC: [u8; 8] = *b"BSNPINDX";
/// Magic of the catalog log. Never change.
pub const CATALOG_MAGIC: [u8; 8] = *b"BSNPCTLG";
/// Magic of a pending snapshot's journal. Never change.
pub const JOURNAL_MAGIC: [u8; 8] = *b"BSNPJRNL";
/// Magic of a compaction marker. Never change.
pub const COMPACTION_MAGIC: [u8; 8] = *b"BSNPCMPT";
/// Magic of the store's keyring. Never change.
pub const KEYRING_MAGIC: [u8; 8] = *b"BSNPKRNG";

/// The current version of every file kind that uses this header.
pub const FORMAT_VERSION: u32 = 1;

/// Encodes a header with zero flags.
pub fn encode(magic: [u8; 8], subject: u64) -> [u8; FILE_HEADER_SIZE] {
    encode_with_flags(magic, subject, 0)
}

/// Encodes a header.
pub fn encode_with_flags(magic: [u8; 8], subject: u64, flags: u32) -> [u8; FILE_HEADER_SIZE] {
    let mut bytes = Vec::with_capacity(FILE_HEADER_SIZE);
    bytes.extend_from_slice(&magic);
    bytes.put_u32(FORMAT_VERSION);
    bytes.put_u32(flags);
    bytes.put_u64(subject);
    bytes.put_u32(0);
    let crc = crc32(&[&bytes]);
    bytes.put_u32(crc);
    let mut out = [0u8; FILE_HEADER_SIZE];
    out.copy_from_slice(&bytes);
    out
}

/// Decodes the header of a file kind that defines no flags, returning its
/// subject; nonzero flags are damage (the encoder writes zero, so a header
/// with flags set would re-encode to other bytes).
pub fn decode(bytes: &[u8], magic: [u8; 8]) -> Result<u64, DecodeError> {
    match decode_with_flags(bytes, magic)? {
        (subject, 0) => Ok(subject),
        _ => Err(DecodeError::corrupt(FLAGS_OFFSET, "file flags")),
    }
}

/// Decodes a header with the expected magic, returning subject and flags.
pub fn decode_with_flags(bytes: &[u8], magic: [u8; 8]) -> Result<(u64, u32), DecodeError> {
    let mut reader = Reader::new(bytes);
    let found_magic = reader.array::<8>("file magic")?;
    if found_magic != magic {
        return Err(DecodeError::corrupt(MAGIC_OFFSET, "file magic"));
    }
    let version = reader.u32("file version")?;
    let flags = reader.u32("file flags")?;
    let subject = reader.u64("file subject")?;
    if reader.u32("file header")? != 0 {
        return Err(DecodeError::corrupt(
            UNUSED_OFFSET,
            "file header unused word",
        ));
    }
    let stored_crc = reader.u32("file header crc")?;
    let covered = bytes
        .get(..CRC_OFFSET)
        .ok_or(DecodeError::corrupt(0, "file header"))?;
    if crc32(&[covered]) != stored_crc {
        return Err(DecodeError::corrupt(CRC_OFFSET, "file header crc"));
    }
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    Ok((subject, flags))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_byte_is_detected() {
        let bytes = encode(PACK_MAGIC, 42);
        assert_eq!(decode(&bytes, PACK_MAGIC), Ok(42));
        assert!(decode(&bytes, INDEX_MAGIC).is_err());
        for position in 0..FILE_HEADER_SIZE {
            let mut flipped = bytes;
            flipped[position] ^= 0x01;
            assert!(decode(&flipped, PACK_MAGIC).is_err(), "flip at {position}");
        }
        assert!(decode(&bytes[..31], PACK_MAGIC).is_err());
    }

    /// Found by fuzzing: the unused word must be zero, or a header with a
    /// valid crc re-encodes to other bytes.
    #[test]
    fn the_unused_word_is_zero() {
        let mut bytes = encode(PACK_MAGIC, 42).to_vec();
        bytes[UNUSED_OFFSET] = 1;
        let crc = crc32(&[&bytes[..CRC_OFFSET]]);
        bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert!(decode(&bytes, PACK_MAGIC).is_err());
    }

    /// Found by fuzzing (the keyring target): a keyring whose header had a
    /// flag set and a valid crc decoded, and re-encoded without the flag.
    #[test]
    fn flags_are_damage_where_a_kind_defines_none() {
        let bytes = encode_with_flags(KEYRING_MAGIC, 2, 1);
        assert_eq!(decode_with_flags(&bytes, KEYRING_MAGIC), Ok((2, 1)));
        assert_eq!(
            decode(&bytes, KEYRING_MAGIC),
            Err(DecodeError::corrupt(FLAGS_OFFSET, "file flags"))
        );
    }
}
