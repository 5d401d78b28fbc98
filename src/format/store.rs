//! The store header file `blocksnap.store`, written once when a store is created.
//!
//! The layout, field by field, is specified in DESIGN.md §4.1 "Store header"; the
//! offset constants below follow it, and `tests/design_tables.rs` checks
//! the specification against these constants and the encoders.

use super::wire::{Reader, Writer};
use super::{crc32, DecodeError};

/// Magic of the store header. Never change.
pub const STORE_MAGIC: [u8; 8] = *b"BSNPSTOR";
/// The store format version this build writes and reads.
pub const STORE_VERSION: u32 = 1;
/// Offset of the flags word (no flags are defined; it is zero).
pub const STORE_FLAGS_OFFSET: usize = 12;
/// Offset of the store id.
pub const STORE_ID_OFFSET: usize = STORE_FLAGS_OFFSET + 4;
/// Offset of the token secret.
pub const STORE_SECRET_OFFSET: usize = STORE_ID_OFFSET + 16;
/// Offset of the creation time.
pub const STORE_CREATED_OFFSET: usize = STORE_SECRET_OFFSET + 32;
/// Offset of the crc.
pub const STORE_CRC_OFFSET: usize = STORE_CREATED_OFFSET + 8;
/// Total size.
pub const STORE_HEADER_SIZE: usize = STORE_CRC_OFFSET + 4;
const _: () = assert!(STORE_HEADER_SIZE == 76);

/// The decoded store header.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoreHeader {
    /// Random identity of the store.
    pub store_id: [u8; 16],
    /// Key material for token MACs.
    pub token_secret: [u8; 32],
    /// Creation time, epoch milliseconds.
    pub created_millis: u64,
}

impl StoreHeader {
    /// Encodes the header.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(STORE_HEADER_SIZE);
        bytes.extend_from_slice(&STORE_MAGIC);
        bytes.put_u32(STORE_VERSION);
        bytes.put_u32(0);
        bytes.extend_from_slice(&self.store_id);
        bytes.extend_from_slice(&self.token_secret);
        bytes.put_u64(self.created_millis);
        let crc = crc32(&[&bytes]);
        bytes.put_u32(crc);
        bytes
    }

    /// Decodes the header.
    pub fn decode(bytes: &[u8]) -> Result<StoreHeader, DecodeError> {
        let mut reader = Reader::new(bytes);
        if reader.array::<8>("store magic")? != STORE_MAGIC {
            return Err(DecodeError::corrupt(0, "store magic"));
        }
        let version = reader.u32("store version")?;
        let flags = reader.u32("store flags")?;
        let store_id = reader.array::<16>("store id")?;
        let token_secret = reader.array::<32>("token secret")?;
        let created_millis = reader.u64("creation time")?;
        let stored_crc = reader.u32("store crc")?;
        reader.finish("store header length")?;
        if crc32(&[bytes.get(..STORE_CRC_OFFSET).unwrap_or_default()]) != stored_crc {
            return Err(DecodeError::corrupt(STORE_CRC_OFFSET, "store crc"));
        }
        if version != STORE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        // No flags are defined: the encoder writes zero, so a header with a
        // flag set (and a valid crc) would re-encode to other bytes.
        if flags != 0 {
            return Err(DecodeError::corrupt(STORE_FLAGS_OFFSET, "store flags"));
        }
        Ok(StoreHeader {
            store_id,
            token_secret,
            created_millis,
        })
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn header() -> StoreHeader {
        StoreHeader {
            store_id: [7; 16],
            token_secret: [9; 32],
            created_millis: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_detected() {
        let bytes = header().encode();
        assert_eq!(bytes.len(), STORE_HEADER_SIZE);
        assert_eq!(StoreHeader::decode(&bytes), Ok(header()));
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x10;
            assert!(StoreHeader::decode(&flipped).is_err(), "flip at {position}");
        }
    }

    /// Found by CI's fuzz pass (the store_header target): a header with a
    /// flag set and a valid crc decoded, and re-encoded without the flag.
    #[test]
    fn flags_are_damage() {
        let mut bytes = header().encode();
        bytes[STORE_FLAGS_OFFSET] = 1;
        let crc = crc32(&[&bytes[..STORE_CRC_OFFSET]]);
        bytes[STORE_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            StoreHeader::decode(&bytes),
            Err(DecodeError::corrupt(STORE_FLAGS_OFFSET, "store flags"))
        );
    }
}
