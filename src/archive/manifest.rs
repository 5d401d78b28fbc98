//! The archive's manifest (`manifest.json`) and block list
//! (`block-list.tsv`), and the hashes that bind them to the block data.
//! DESIGN.md §4.12 specifies the layout.

pub use crate::codec::hex_bytes;
use crate::error::{Error, Result};
use crate::ids::{Sha256Digest, BLOCK_SIZE};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The `format` member every manifest carries.
pub const FORMAT_NAME: &str = "blocksnap-snapshot-archive";
/// The manifest version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the manifest entry (the archive's last entry).
pub const MANIFEST_ENTRY: &str = "manifest.json";
/// Name of the block list entry (just before the manifest).
pub const BLOCK_LIST_ENTRY: &str = "block-list.tsv";
/// Largest manifest accepted on import: it holds metadata only (at most 50
/// tags and a description), far below this.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024;
/// Largest block-list line: `4294967295\t` + 64 hex digits + `\n`.
pub const MAX_BLOCK_LIST_LINE: usize = 10 + 1 + 64 + 1;
/// Largest block entry accepted on import: a zstd frame of one block
/// (zstd's worst-case bound for 512 KiB is 512 KiB + 2 KiB or so).
pub const MAX_BLOCK_ENTRY_BYTES: u64 = BLOCK_SIZE as u64 + 4096;

/// The name of block `index`'s entry: fixed width, so entries sort by index.
pub fn block_entry_name(index: u32) -> String {
    format!("blocks/{index:010}.zst")
}

/// What the archive holds relative to its snapshot.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveKind {
    /// Every written block of the snapshot.
    Full,
    /// Only the blocks that differ from `base`.
    Delta,
}

/// A snapshot tag as the manifest spells it (the EBS `Tag` shape).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ManifestTag {
    /// Tag key.
    pub key: String,
    /// Tag value.
    pub value: String,
}

/// The exported snapshot's metadata.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestSnapshot {
    /// Its id in the exporting store.
    pub snapshot_id: String,
    /// Its parent there, if any (informational).
    pub parent_snapshot_id: Option<String>,
    /// Volume size in GiB.
    pub volume_size: u64,
    /// Always 524288.
    pub block_size: u32,
    /// Description.
    pub description: Option<String>,
    /// Tags, in their original order.
    pub tags: Vec<ManifestTag>,
    /// StartSnapshot time, RFC 3339 UTC.
    pub start_time: String,
    /// Completion time, RFC 3339 UTC.
    pub completion_time: String,
    /// Whether it was encrypted in the exporting store (the archive holds
    /// its plaintext either way).
    pub encrypted: bool,
}

/// The snapshot a delta archive applies to.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestBase {
    /// The base's id in the exporting store.
    pub snapshot_id: String,
    /// The base's content hash: [`RootHasher`] over all its written blocks.
    pub root_hash: String,
    /// How many blocks the base has written.
    pub block_count: u64,
}

/// `manifest.json`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// When the archive was written, RFC 3339 UTC.
    pub created: String,
    /// Full or delta.
    pub kind: ArchiveKind,
    /// The exported snapshot.
    pub snapshot: ManifestSnapshot,
    /// The base of a delta archive.
    pub base: Option<ManifestBase>,
    /// Number of block entries (= lines of the block list).
    pub block_count: u64,
    /// Hex SHA-256 of the whole `block-list.tsv` entry.
    pub block_list_sha256: String,
    /// Hex [`RootHasher`] digest over the listed blocks.
    pub root_hash: String,
    /// The EBS LINEAR aggregate of the listed blocks' SHA-256s (Base64), as
    /// CompleteSnapshot takes it.
    pub linear_checksum: String,
    /// How block entries are encoded: always `zstd` (one frame per block).
    pub block_encoding: String,
}

impl Manifest {
    /// Parses and checks a manifest's own consistency (not yet against the
    /// data): format, version, block size, volume size, counts.
    pub fn parse(bytes: &[u8], archive: &str) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|error| invalid_archive(archive, format!("{MANIFEST_ENTRY}: {error}")))?;
        if manifest.format != FORMAT_NAME {
            return Err(invalid_archive(
                archive,
                format!("{MANIFEST_ENTRY} is not a blocksnap snapshot archive"),
            ));
        }
        if manifest.format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: format!("{MANIFEST_ENTRY} of {archive}"),
                version: manifest.format_version,
            });
        }
        if manifest.snapshot.block_size as usize != BLOCK_SIZE {
            return Err(invalid_archive(
                archive,
                format!("block size {} is not 524288", manifest.snapshot.block_size),
            ));
        }
        if !(1..=crate::ids::MAX_VOLUME_SIZE_GIB).contains(&manifest.snapshot.volume_size) {
            return Err(invalid_archive(
                archive,
                format!(
                    "volume size {} GiB is out of range",
                    manifest.snapshot.volume_size
                ),
            ));
        }
        let volume_blocks = manifest.snapshot.volume_size * crate::ids::BLOCKS_PER_GIB;
        if manifest.block_count > volume_blocks {
            return Err(invalid_archive(
                archive,
                format!(
                    "{} blocks listed in a volume of {volume_blocks} blocks",
                    manifest.block_count
                ),
            ));
        }
        if manifest.block_encoding != "zstd" {
            return Err(invalid_archive(
                archive,
                format!("unknown block encoding '{}'", manifest.block_encoding),
            ));
        }
        match (manifest.kind, &manifest.base) {
            (ArchiveKind::Full, None) | (ArchiveKind::Delta, Some(_)) => Ok(manifest),
            _ => Err(invalid_archive(
                archive,
                "a delta archive names its base and a full one does not",
            )),
        }
    }

    /// The volume's block count.
    pub fn volume_blocks(&self) -> u64 {
        self.snapshot.volume_size * crate::ids::BLOCKS_PER_GIB
    }
}

/// The error for an archive that breaks the format.
pub fn invalid_archive(archive: &str, detail: impl Into<String>) -> Error {
    Error::InvalidArchive {
        archive: archive.to_string(),
        detail: detail.into(),
    }
}

/// One block-list line: `<index>\t<sha256 hex>\n`.
pub fn block_list_line(index: u32, sha256: &Sha256Digest) -> String {
    format!("{index}\t{}\n", hex_bytes(&sha256.0))
}

/// Parses one block-list line (without its `\n`), strictly: a canonical
/// decimal index (no sign, no leading zeros), one tab, 64 lowercase hex digits.
pub fn parse_block_list_line(line: &[u8]) -> Option<(u32, Sha256Digest)> {
    let tab = line.iter().position(|byte| *byte == b'\t')?;
    let (index_text, rest) = line.split_at(tab);
    let hex = rest.get(1..)?;
    if index_text.is_empty()
        || (index_text.len() > 1 && index_text.first() == Some(&b'0'))
        || !index_text.iter().all(u8::is_ascii_digit)
        || hex.len() != 64
    {
        return None;
    }
    let index: u32 = std::str::from_utf8(index_text).ok()?.parse().ok()?;
    // Digit by digit: `from_str_radix` would take a sign ("+f") as well.
    let digit = |byte: u8| match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    };
    let mut sha256 = [0u8; 32];
    for (byte, pair) in sha256.iter_mut().zip(hex.chunks_exact(2)) {
        let (high, low) = (pair.first().copied()?, pair.get(1).copied()?);
        *byte = digit(high)? << 4 | digit(low)?;
    }
    Some((index, Sha256Digest(sha256)))
}

/// The archive's hashes over its listed blocks, fed in ascending index order:
/// the root hash `SHA-256(‖ index as u32 little-endian ‖ block SHA-256)` (little-endian
/// like every blocksnap format), which
/// binds each checksum to its index, and the EBS LINEAR aggregate
/// `SHA-256(‖ block SHA-256)`.
#[derive(Clone, Default)]
pub struct RootHasher {
    root: sha2::Sha256,
    linear: sha2::Sha256,
    count: u64,
    last: Option<u32>,
}

impl RootHasher {
    /// Adds the next block; `false` if `index` does not ascend.
    pub fn add(&mut self, index: u32, sha256: &Sha256Digest) -> bool {
        if self.last.is_some_and(|last| last >= index) {
            return false;
        }
        self.last = Some(index);
        self.root.update(index.to_le_bytes());
        self.root.update(sha256.0);
        self.linear.update(sha256.0);
        self.count += 1;
        true
    }

    /// Blocks added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// (hex root hash, Base64 LINEAR aggregate).
    pub fn finish(self) -> (String, String) {
        use base64::Engine as _;
        let root: [u8; 32] = self.root.finalize().into();
        let linear: [u8; 32] = self.linear.finalize().into();
        (
            hex_bytes(&root),
            base64::engine::general_purpose::STANDARD.encode(linear),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn block_list_lines_round_trip_and_reject_variants() {
        let sha = Sha256Digest([0xab; 32]);
        let line = block_list_line(1234, &sha);
        assert_eq!(line.len(), 4 + 1 + 64 + 1);
        let parsed = parse_block_list_line(line.trim_end().as_bytes()).unwrap();
        assert_eq!(parsed, (1234, sha));
        let hex64 = "ab".repeat(32);
        for bad in [
            format!("01234\t{hex64}"),
            format!("+1\t{hex64}"),
            format!("1\t{}", "AB".repeat(32)),
            format!("1\t{}", &hex64[..62]),
            format!("1 {hex64}"),
            format!("4294967296\t{hex64}"),
            format!("\t{hex64}"),
        ] {
            assert!(parse_block_list_line(bad.as_bytes()).is_none(), "{bad}");
        }
        assert_eq!(
            parse_block_list_line(format!("0\t{hex64}").as_bytes())
                .unwrap()
                .0,
            0
        );
    }

    #[test]
    fn root_hash_binds_indexes_and_refuses_disorder() {
        let sha = Sha256Digest([7; 32]);
        let mut first = RootHasher::default();
        assert!(first.add(1, &sha));
        assert!(!first.add(1, &sha));
        let mut second = RootHasher::default();
        assert!(second.add(2, &sha));
        let (first_root, first_linear) = first.finish();
        let (second_root, second_linear) = second.finish();
        assert_ne!(first_root, second_root);
        assert_eq!(first_linear, second_linear);
    }
}
