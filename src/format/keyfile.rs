//! The local key provider's key file: named key-encryption keys, sealed
//! under a key stretched from a passphrase. Not a store file: it lives
//! wherever the operator keeps it.
//!
//! The layout, field by field, is specified in DESIGN.md §4.11 "Key file";
//! `tests/design_tables.rs` checks the specification against the constants
//! here. The sealing itself (argon2id, AES-256-GCM) is in
//! `crypto::local`; this module only lays out bytes.

use super::wire::{Reader, Writer};
use super::{DecodeError, EncodeError};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// Magic of a key file. Never change.
pub const KEYFILE_MAGIC: [u8; 8] = *b"BSNPKEYF";
/// The key file version this build writes and reads.
pub const KEYFILE_VERSION: u32 = 1;
/// The key-derivation function: argon2id, version 0x13.
pub const KDF_ARGON2ID: u32 = 1;
/// Offset of the version.
pub const KEYFILE_VERSION_OFFSET: usize = 8;
/// Offset of the KDF identifier.
pub const KEYFILE_KDF_OFFSET: usize = KEYFILE_VERSION_OFFSET + 4;
/// Offset of the KDF memory cost in KiB.
pub const KEYFILE_MEMORY_OFFSET: usize = KEYFILE_KDF_OFFSET + 4;
/// Offset of the KDF iteration count.
pub const KEYFILE_ITERATIONS_OFFSET: usize = KEYFILE_MEMORY_OFFSET + 4;
/// Offset of the KDF lane count.
pub const KEYFILE_PARALLELISM_OFFSET: usize = KEYFILE_ITERATIONS_OFFSET + 4;
/// Offset of the salt.
pub const KEYFILE_SALT_OFFSET: usize = KEYFILE_PARALLELISM_OFFSET + 4;
/// Offset of the nonce.
pub const KEYFILE_NONCE_OFFSET: usize = KEYFILE_SALT_OFFSET + 16;
/// Offset of the sealed table's length.
pub const KEYFILE_SEALED_LEN_OFFSET: usize = KEYFILE_NONCE_OFFSET + 12;
/// Offset of the sealed table; the 16-byte tag follows it.
pub const KEYFILE_SEALED_OFFSET: usize = KEYFILE_SEALED_LEN_OFFSET + 4;
const _: () = assert!(KEYFILE_SEALED_OFFSET == 60);
/// Largest sealed table (about 15,000 keys of one version each).
pub const MAX_SEALED_LEN: usize = 1 << 20;
/// Bounds on KDF costs a key file may ask for, checked before any memory
/// is spent: a damaged or hostile file cannot make opening it take 100 GiB.
pub const MAX_MEMORY_KIB: u32 = 4 << 20;
/// See [`MAX_MEMORY_KIB`].
pub const MAX_ITERATIONS: u32 = 64;
/// See [`MAX_MEMORY_KIB`].
pub const MAX_PARALLELISM: u32 = 64;

/// The clear part of a key file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KeyFileHeader {
    /// argon2id memory cost, KiB.
    pub memory_kib: u32,
    /// argon2id passes.
    pub iterations: u32,
    /// argon2id lanes.
    pub parallelism: u32,
    /// Salt of the passphrase stretch.
    pub salt: [u8; 16],
    /// Nonce of the table's sealing.
    pub nonce: [u8; 12],
    /// Length of the sealed table (the tag excluded).
    pub sealed_len: u32,
}

impl KeyFileHeader {
    /// Encodes the header: the associated data of the table's sealing.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(KEYFILE_SEALED_OFFSET);
        bytes.extend_from_slice(&KEYFILE_MAGIC);
        bytes.put_u32(KEYFILE_VERSION);
        bytes.put_u32(KDF_ARGON2ID);
        bytes.put_u32(self.memory_kib);
        bytes.put_u32(self.iterations);
        bytes.put_u32(self.parallelism);
        bytes.extend_from_slice(&self.salt);
        bytes.extend_from_slice(&self.nonce);
        bytes.put_u32(self.sealed_len);
        bytes
    }

    /// Decodes and bounds-checks the header of a whole key file.
    pub fn decode(bytes: &[u8]) -> Result<KeyFileHeader, DecodeError> {
        let mut reader = Reader::new(bytes);
        if reader.array::<8>("key file magic")? != KEYFILE_MAGIC {
            return Err(DecodeError::corrupt(0, "key file magic"));
        }
        let version = reader.u32("key file version")?;
        if version != KEYFILE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        if reader.u32("key file kdf")? != KDF_ARGON2ID {
            return Err(DecodeError::corrupt(KEYFILE_KDF_OFFSET, "key file kdf"));
        }
        let memory_kib = reader.u32("key file memory cost")?;
        let iterations = reader.u32("key file iterations")?;
        let parallelism = reader.u32("key file parallelism")?;
        if memory_kib > MAX_MEMORY_KIB
            || !(1..=MAX_ITERATIONS).contains(&iterations)
            || !(1..=MAX_PARALLELISM).contains(&parallelism)
        {
            return Err(DecodeError::corrupt(
                KEYFILE_MEMORY_OFFSET,
                "key file kdf costs",
            ));
        }
        let salt = reader.array::<16>("key file salt")?;
        let nonce = reader.array::<12>("key file nonce")?;
        let sealed_len = reader.u32("key file sealed length")?;
        if sealed_len as usize > MAX_SEALED_LEN
            || reader.remaining() != sealed_len as usize + super::pack::TAG_LEN
        {
            return Err(DecodeError::corrupt(
                KEYFILE_SEALED_LEN_OFFSET,
                "key file sealed length",
            ));
        }
        Ok(KeyFileHeader {
            memory_kib,
            iterations,
            parallelism,
            salt,
            nonce,
            sealed_len,
        })
    }
}

/// One named KEK and its versions.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct KekVersions {
    /// The version new wrappings use.
    pub current: u32,
    /// Every version still kept, by number.
    pub versions: BTreeMap<u32, Zeroizing<[u8; 32]>>,
}

/// The sealed contents of a key file.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct KeyTable {
    /// The key of snapshots that name none.
    pub default_key_arn: String,
    /// Named KEKs.
    pub keys: BTreeMap<String, KekVersions>,
}

impl KeyTable {
    /// Encodes the table (the caller seals and then wipes the bytes).
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
        let mut bytes = Zeroizing::new(Vec::new());
        bytes.put_string(&self.default_key_arn, "the default key name")?;
        bytes.put_len_u32(self.keys.len(), "a key file's key count")?;
        for (arn, kek) in &self.keys {
            bytes.put_string(arn, "a key name")?;
            bytes.put_u32(kek.current);
            bytes.put_len_u32(kek.versions.len(), "a key's version count")?;
            for (version, key) in &kek.versions {
                bytes.put_u32(*version);
                bytes.extend_from_slice(key.as_ref());
            }
        }
        Ok(bytes)
    }

    /// Decodes an opened table, checking that keys (by name) and versions
    /// are strictly ascending, as written, and that every key's current
    /// version is present.
    pub fn decode(bytes: &[u8]) -> Result<KeyTable, DecodeError> {
        let mut reader = Reader::new(bytes);
        let default_key_arn = reader.string("key table default key")?;
        let count = reader.u32("key table count")?;
        let mut keys = BTreeMap::new();
        for _ in 0..count {
            let at = reader.position();
            let arn = reader.string("key table key name")?;
            let current = reader.u32("key table current version")?;
            let version_count = reader.u32("key table version count")?;
            let mut versions = BTreeMap::new();
            for _ in 0..version_count {
                let version = reader.u32("key table version")?;
                let key = Zeroizing::new(reader.array::<32>("key table key")?);
                if versions
                    .keys()
                    .next_back()
                    .is_some_and(|last| *last >= version)
                {
                    return Err(DecodeError::corrupt(at, "key table version order"));
                }
                versions.insert(version, key);
            }
            if !versions.contains_key(&current) {
                return Err(DecodeError::corrupt(at, "key table current version"));
            }
            if keys
                .keys()
                .next_back()
                .is_some_and(|last: &String| *last >= arn)
            {
                return Err(DecodeError::corrupt(at, "key table key order"));
            }
            keys.insert(arn, KekVersions { current, versions });
        }
        reader.finish("key table length")?;
        Ok(KeyTable {
            default_key_arn,
            keys,
        })
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn header_and_table_round_trip() {
        let header = KeyFileHeader {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
            salt: [1; 16],
            nonce: [2; 12],
            sealed_len: 3,
        };
        let mut file = header.encode();
        file.extend_from_slice(&[0; 3 + 16]);
        assert_eq!(KeyFileHeader::decode(&file), Ok(header));
        assert!(KeyFileHeader::decode(&file[..file.len() - 1]).is_err());
        let mut greedy = header;
        greedy.memory_kib = MAX_MEMORY_KIB + 1;
        let mut file = greedy.encode();
        file.extend_from_slice(&[0; 3 + 16]);
        assert!(KeyFileHeader::decode(&file).is_err());

        let mut table = KeyTable {
            default_key_arn: "a".into(),
            ..KeyTable::default()
        };
        let mut versions = BTreeMap::new();
        versions.insert(1, Zeroizing::new([5; 32]));
        versions.insert(2, Zeroizing::new([6; 32]));
        table.keys.insert(
            "a".into(),
            KekVersions {
                current: 2,
                versions,
            },
        );
        assert_eq!(
            KeyTable::decode(&table.encode().expect("encodes")),
            Ok(table.clone())
        );
        table.keys.get_mut("a").expect("key").current = 3;
        assert!(KeyTable::decode(&table.encode().expect("encodes")).is_err());
    }
}
