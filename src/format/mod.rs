//! Byte layouts of everything blocksnap writes: encode and decode, no I/O.
//!
//! DESIGN.md is the specification; `tests/design_tables.rs` compares its
//! tables with the constants here so the two cannot drift. Conventions: all
//! integers are little-endian and fixed-width; crc32 (IEEE, `crc32fast`)
//! frames records and detects torn writes; blake3 gives identity; SHA-256 is
//! the EBS wire checksum. Decoders never panic: corrupt bytes come back as a
//! [`DecodeError`] carrying the offset.

#![deny(clippy::indexing_slicing)]

pub mod catalog;
pub mod compaction;
pub mod head;
pub mod header;
pub mod index;
pub mod journal;
pub mod keyfile;
pub mod keyring;
pub mod nbd;
pub mod node;
pub mod pack;
pub mod store;
pub mod token;
pub(crate) mod wire;

use crate::error::Error;

/// Why bytes could not be decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// A check failed at `offset`.
    Corrupt {
        /// Byte offset, relative to the start of the structure decoded.
        offset: usize,
        /// Which check failed.
        what: &'static str,
    },
    /// The structure carries a version this build does not know.
    UnsupportedVersion(u32),
}

impl DecodeError {
    pub(crate) fn corrupt(offset: usize, what: &'static str) -> DecodeError {
        DecodeError::Corrupt { offset, what }
    }

    /// Converts to the public error, naming where the bytes came from.
    pub fn into_error(self, location: &str) -> Error {
        match self {
            DecodeError::Corrupt { offset, what } => {
                Error::corrupted(format!("{location} at byte {offset}"), what)
            }
            DecodeError::UnsupportedVersion(version) => Error::UnsupportedVersion {
                what: location.to_string(),
                version,
            },
        }
    }
}

/// Why a value could not be encoded: a field longer than its length or
/// count field can say. Encoders never truncate, saturate or zero-fill;
/// callers check limits first, so this is an impossible input reaching
/// an encoder, reported instead of written as wrong bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EncodeError {
    /// The field.
    pub what: &'static str,
    /// Its length or count.
    pub len: usize,
    /// The most its format allows.
    pub limit: usize,
}

impl EncodeError {
    /// Converts to the public error: an input the format cannot hold.
    pub fn into_error(self) -> Error {
        Error::invalid(
            crate::error::ValidationReason::InvalidParameterValue,
            self.to_string(),
        )
    }
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is {}, more than the format's limit of {}",
            self.what, self.len, self.limit
        )
    }
}

impl std::error::Error for EncodeError {}

impl From<EncodeError> for Error {
    fn from(error: EncodeError) -> Error {
        error.into_error()
    }
}

/// crc32 (IEEE) of the concatenation of `parts`.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}
