//! The store's keyring file `keyring`: one wrapped data key per key name
//! (dedup domain) of the store's encrypted snapshots.
//!
//! The layout, field by field, is specified in DESIGN.md §4.10 "Keyring";
//! `tests/design_tables.rs` checks the specification against the constants
//! here and the encoder.

use super::header::{self, FILE_HEADER_SIZE, KEYRING_MAGIC};
use super::wire::{body_before_crc, Reader, Writer};
use super::{crc32, DecodeError, EncodeError};

/// Offset of the first entry (the header's subject is the entry count).
pub const KEYRING_ENTRIES_OFFSET: usize = FILE_HEADER_SIZE;
/// Most domains a store may have: record headers number them with a u16,
/// and 0 means "not encrypted".
pub const MAX_DOMAINS: usize = u16::MAX as usize;
/// Longest key name (the KmsKeyArn limit).
pub const MAX_KEY_ARN_LEN: usize = 2048;
/// Longest wrapped data key the store accepts (KMS ciphertext blobs of a
/// 32-byte key are under 200 bytes).
pub const MAX_WRAPPED_LEN: usize = 4096;

/// The suite of a dedup-only domain: no cipher; the entry's `wrapped`
/// field holds the domain's id key itself.
pub const DEDUP_ONLY_SUITE: u8 = 0;

/// One domain: a key name and its data key, wrapped by the key provider
/// (encryption, domains `1..0x8000`); or a dedup-only domain (domains
/// `0x8000..=0xffff`, suite [`DEDUP_ONLY_SUITE`]) and its id key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyringEntry {
    /// The domain's number in pack record headers, 1..=65535.
    pub domain: u16,
    /// The cipher suite the domain's records are sealed with (0: none).
    pub suite: u8,
    /// When the domain was created, epoch milliseconds.
    pub created_millis: u64,
    /// The key name (`KmsKeyArn`; `dedup/<OwnerId>` for a dedup domain).
    pub key_arn: String,
    /// The data key, wrapped under the key name's KEK; opaque here. For a
    /// dedup domain, its 32-byte id key.
    pub wrapped: Vec<u8>,
}

/// Encodes the keyring; more than [`MAX_DOMAINS`] entries, or a key name
/// or wrapped key over its limit, is an error (the decoder refuses them).
pub fn encode_keyring(entries: &[KeyringEntry]) -> Result<Vec<u8>, EncodeError> {
    let over = |what, len, limit| EncodeError { what, len, limit };
    if entries.len() > MAX_DOMAINS {
        return Err(over(
            "the keyring's domain count",
            entries.len(),
            MAX_DOMAINS,
        ));
    }
    let mut bytes = header::encode(KEYRING_MAGIC, entries.len() as u64).to_vec();
    for entry in entries {
        if entry.key_arn.len() > MAX_KEY_ARN_LEN {
            return Err(over("a key name", entry.key_arn.len(), MAX_KEY_ARN_LEN));
        }
        if entry.wrapped.len() > MAX_WRAPPED_LEN {
            return Err(over(
                "a wrapped data key",
                entry.wrapped.len(),
                MAX_WRAPPED_LEN,
            ));
        }
        bytes.put_u16(entry.domain);
        bytes.put_u8(entry.suite);
        bytes.put_u8(0);
        bytes.put_u64(entry.created_millis);
        bytes.put_string(&entry.key_arn, "a key name")?;
        bytes.put_len_u16(entry.wrapped.len(), "a wrapped data key")?;
        bytes.extend_from_slice(&entry.wrapped);
    }
    let crc = crc32(&[&bytes]);
    bytes.put_u32(crc);
    Ok(bytes)
}

/// Decodes the keyring, checking its crc, bounds, and that domains are
/// distinct, nonzero, and key names distinct.
pub fn decode_keyring(bytes: &[u8]) -> Result<Vec<KeyringEntry>, DecodeError> {
    let count = header::decode(bytes, KEYRING_MAGIC)?;
    let body = body_before_crc(bytes, "keyring truncated", "keyring crc")?;
    if count > MAX_DOMAINS as u64 {
        return Err(DecodeError::corrupt(
            header::SUBJECT_OFFSET,
            "keyring count",
        ));
    }
    let mut reader = Reader::new(body);
    reader.take(FILE_HEADER_SIZE, "keyring header")?;
    let mut entries: Vec<KeyringEntry> = Vec::new();
    for _ in 0..count {
        let at = reader.position();
        let domain = reader.u16("keyring domain")?;
        let suite = reader.u8("keyring suite")?;
        if reader.u8("keyring reserved")? != 0 {
            return Err(DecodeError::corrupt(at + 3, "keyring reserved"));
        }
        let created_millis = reader.u64("keyring created")?;
        let key_arn = reader.string("keyring key name")?;
        let wrapped_len = usize::from(reader.u16("keyring wrapped length")?);
        if wrapped_len > MAX_WRAPPED_LEN || key_arn.len() > MAX_KEY_ARN_LEN {
            return Err(DecodeError::corrupt(at, "keyring entry length"));
        }
        let wrapped = reader.take(wrapped_len, "keyring wrapped key")?.to_vec();
        let duplicate = entries
            .iter()
            .any(|entry| entry.domain == domain || entry.key_arn == key_arn);
        // Dedup-only domains are numbered from 0x8000, and only they.
        let dedup_range = domain >= super::pack::FIRST_DEDUP_DOMAIN;
        if domain == 0 || duplicate || dedup_range != (suite == DEDUP_ONLY_SUITE) {
            return Err(DecodeError::corrupt(at, "keyring domain"));
        }
        entries.push(KeyringEntry {
            domain,
            suite,
            created_millis,
            key_arn,
            wrapped,
        });
    }
    reader.finish("keyring length")?;
    Ok(entries)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn keyring_round_trip_and_damage() {
        let entries = vec![
            KeyringEntry {
                domain: 1,
                suite: 1,
                created_millis: 5,
                key_arn: "arn:aws:kms:local:000000000000:key/a".into(),
                wrapped: vec![9; 65],
            },
            KeyringEntry {
                domain: 2,
                suite: 1,
                created_millis: 6,
                key_arn: "arn:aws:kms:local:000000000000:key/b".into(),
                wrapped: vec![3; 10],
            },
        ];
        let bytes = encode_keyring(&entries).expect("encodes");
        assert_eq!(decode_keyring(&bytes), Ok(entries.clone()));
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x04;
            assert!(decode_keyring(&flipped).is_err(), "flip at {position}");
        }
        for cut in 0..bytes.len() {
            assert!(decode_keyring(&bytes[..cut]).is_err());
        }
        let mut same_domain = entries.clone();
        same_domain[1].domain = 1;
        assert!(decode_keyring(&encode_keyring(&same_domain).expect("encodes")).is_err());
        let mut same_name = entries;
        same_name[1].key_arn = same_name[0].key_arn.clone();
        assert!(decode_keyring(&encode_keyring(&same_name).expect("encodes")).is_err());
    }
}
