//! Block and page tokens: opaque to clients, the Base64 of a fixed layout.
//!
//! The layout, field by field, is specified in DESIGN.md §4.8 "Tokens"; the
//! offset constants below follow it, and `tests/design_tables.rs` checks
//! the specification against these constants and the encoders.

use super::wire::{Reader, Writer};
use super::DecodeError;

/// Token format version.
pub const TOKEN_VERSION: u8 = 1;
/// Size of the MAC.
pub const TOKEN_MAC_SIZE: usize = 16;
/// Size of a block token's authenticated body.
pub const BLOCK_TOKEN_BODY_SIZE: usize = 22;
/// Size of a page token's authenticated body.
pub const PAGE_TOKEN_BODY_SIZE: usize = 30;

/// What a token refers to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TokenBody {
    /// A block token.
    Block {
        /// Snapshot id.
        snapshot: u64,
        /// Block index.
        index: u32,
        /// Expiry, epoch seconds.
        expiry_secs: u64,
    },
    /// A page token.
    Page {
        /// 2 = ListSnapshotBlocks, 3 = ListChangedBlocks, 4 = EC2's
        /// DescribeSnapshots, 5 = EC2's DescribeTags.
        kind: u8,
        /// The listed (second) snapshot; for EC2's listings, the snapshot
        /// the next page starts at or after.
        snapshot: u64,
        /// First snapshot of a diff, 0 = none; for EC2's listings, a
        /// 64-bit hash of the request's other parameters.
        other: u64,
        /// Where the next page starts: a block index, or for DescribeTags
        /// the position of a tag within its snapshot.
        next_index: u32,
        /// Expiry, epoch seconds.
        expiry_secs: u64,
    },
}

impl TokenBody {
    /// Encodes the authenticated part.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(PAGE_TOKEN_BODY_SIZE + TOKEN_MAC_SIZE);
        bytes.put_u8(TOKEN_VERSION);
        match *self {
            TokenBody::Block {
                snapshot,
                index,
                expiry_secs,
            } => {
                bytes.put_u8(1);
                bytes.put_u64(snapshot);
                bytes.put_u32(index);
                bytes.put_u64(expiry_secs);
            }
            TokenBody::Page {
                kind,
                snapshot,
                other,
                next_index,
                expiry_secs,
            } => {
                bytes.put_u8(kind);
                bytes.put_u64(snapshot);
                bytes.put_u64(other);
                bytes.put_u32(next_index);
                bytes.put_u64(expiry_secs);
            }
        }
        bytes
    }

    /// Splits raw token bytes into the body and its MAC.
    pub fn decode(bytes: &[u8]) -> Result<(TokenBody, &[u8], [u8; TOKEN_MAC_SIZE]), DecodeError> {
        let mut reader = Reader::new(bytes);
        if reader.u8("token version")? != TOKEN_VERSION {
            return Err(DecodeError::corrupt(0, "token version"));
        }
        let body = match reader.u8("token kind")? {
            1 => TokenBody::Block {
                snapshot: reader.u64("token snapshot")?,
                index: reader.u32("token index")?,
                expiry_secs: reader.u64("token expiry")?,
            },
            kind @ 2..=5 => TokenBody::Page {
                kind,
                snapshot: reader.u64("token snapshot")?,
                other: reader.u64("token other snapshot")?,
                next_index: reader.u32("token position")?,
                expiry_secs: reader.u64("token expiry")?,
            },
            _ => return Err(DecodeError::corrupt(1, "token kind")),
        };
        let body_len = reader.position();
        let mac = reader.array::<TOKEN_MAC_SIZE>("token mac")?;
        reader.finish("token length")?;
        Ok((body, bytes.get(..body_len).unwrap_or_default(), mac))
    }
}
