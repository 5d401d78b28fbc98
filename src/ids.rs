//! Typed identifiers shared by every layer.

use std::fmt;

/// Size of one EBS block in bytes (512 KiB). Fixed by the EBS direct API.
pub const BLOCK_SIZE: usize = 524_288;
/// Number of blocks per GiB of volume size.
pub const BLOCKS_PER_GIB: u64 = 2048;
/// Largest volume EBS accepts, in GiB (64 TiB).
pub const MAX_VOLUME_SIZE_GIB: u64 = 65_536;

/// A snapshot's identity: 64 random bits, shown as `snap-` and 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SnapshotId(pub u64);

impl SnapshotId {
    /// Parses the canonical `snap-` + 16 lowercase hex digits form.
    /// Returns `None` for anything else (including ids of other lengths,
    /// which are valid EBS ids but can never name a snapshot of this store).
    pub fn parse(text: &str) -> Option<SnapshotId> {
        let hex = text.strip_prefix("snap-")?;
        if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(SnapshotId)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snap-{:016x}", self.0)
    }
}

/// As its text, `snap-` and 16 hex digits (reports and the CLI's JSON).
impl serde::Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A content address: the 32-byte blake3 hash of a block or of an encoded map node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The first eight bytes read as a little-endian integer: the key of the
    /// in-memory index, which keeps only this prefix to stay small.
    pub fn prefix(&self) -> u64 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(head)
    }
}

/// As its text, 64 hex digits (reports and the CLI's JSON).
impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A block's position in a volume: byte offset / [`BLOCK_SIZE`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct BlockIndex(pub u32);

/// The SHA-256 digest of a block's 524288 bytes, as EBS checksums it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// What pack records and journal entries hold for a block whose
    /// SHA-256 was not computed when it was stored (a CLI backup needs
    /// none; DESIGN.md §4.3): 32 zero bytes, which no block hashes to
    /// except with probability 2^-256.
    pub const NOT_KEPT: Sha256Digest = Sha256Digest([0; 32]);

    /// Whether this is a real digest rather than [`Sha256Digest::NOT_KEPT`].
    pub fn is_kept(&self) -> bool {
        *self != Sha256Digest::NOT_KEPT
    }
}

/// Position of a stored record: which pack, and the byte offset of its header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PackLocation {
    /// Pack sequence number.
    pub pack: u32,
    /// Offset of the record header inside the pack.
    pub offset: u32,
}
