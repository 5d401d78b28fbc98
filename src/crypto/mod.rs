//! Encryption at rest, the pure part: the hook an agent plugs its key
//! management into ([`KeyProvider`]), the record cipher, and the keys
//! derived for one dedup domain. No I/O: the keyring's persistence and the
//! shipped key provider are in `keys`.
//!
//! Envelope encryption, as AWS KMS does it. A [`KeyProvider`] owns
//! key-encryption keys (KEKs) named by `KmsKeyArn`; it generates data keys
//! and wraps them under a KEK. The store keeps one wrapped data key per key
//! name (its *domain*, see DESIGN.md §4.10) and asks the provider to unwrap
//! it when it opens. Everything else is derived from the data key with
//! blake3's key derivation: the keys of the chunk-id and node-id hashes
//! (so equal data under one key deduplicates, ids reveal nothing about
//! content, and data under different keys never shares storage), the
//! record cipher's key, and the key that masks journal checksums.
//!
//! The shipped provider is `keys::LocalKeyProvider` (named KEKs in a key
//! file sealed under a passphrase); the shipped cipher is AES-256-GCM
//! ([`Aes256Gcm`]). The lengths of nonces, tags and wrapped keys are the
//! formats' (`format::pack`, `format::keyring`).

use crate::error::{Error, ValidationReason};
use crate::format::pack::{NONCE_LEN, TAG_LEN};
use crate::ids::{BlockIndex, ChunkId, SnapshotId};
use std::fmt;
use zeroize::Zeroizing;

/// Bytes of a data key.
pub const DATA_KEY_LEN: usize = 32;

/// A data key's plaintext: wiped from memory when dropped, never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// Wraps key bytes.
    pub fn new(bytes: [u8; DATA_KEY_LEN]) -> DataKey {
        DataKey(Zeroizing::new(bytes))
    }

    /// A fresh random key from the operating system's generator.
    pub fn random() -> Result<DataKey, KeyError> {
        let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
        getrandom::fill(bytes.as_mut()).map_err(|error| {
            KeyError::unavailable(format!("the random generator failed: {error}"))
        })?;
        Ok(DataKey(bytes))
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(redacted)")
    }
}

/// A data key as [`KeyProvider::generate_data_key`] returns it: the
/// plaintext for immediate use and the wrapped form the store keeps.
#[derive(Debug)]
pub struct GeneratedDataKey {
    /// The key itself.
    pub plaintext: DataKey,
    /// The key encrypted under the KEK; opaque to the store (at most
    /// `format::keyring::MAX_WRAPPED_LEN` bytes).
    pub wrapped: Vec<u8>,
}

/// What went wrong in a key provider.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyErrorKind {
    /// No key has that name (EBS: `INVALID_CUSTOMER_KEY`).
    UnknownKey,
    /// The key exists but may not be used, or the key service failed
    /// (EBS: AccessDeniedException, `DEPENDENCY_ACCESS_DENIED`).
    Unavailable,
}

/// A key provider's error.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyError {
    /// Which kind.
    pub kind: KeyErrorKind,
    /// Human-readable explanation, naming the key but never key material.
    pub message: String,
}

impl KeyError {
    /// An [`KeyErrorKind::UnknownKey`] error.
    pub fn unknown(message: impl Into<String>) -> KeyError {
        KeyError {
            kind: KeyErrorKind::UnknownKey,
            message: message.into(),
        }
    }

    /// An [`KeyErrorKind::Unavailable`] error.
    pub fn unavailable(message: impl Into<String>) -> KeyError {
        KeyError {
            kind: KeyErrorKind::Unavailable,
            message: message.into(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KeyError {}

impl From<KeyError> for Error {
    fn from(error: KeyError) -> Error {
        match error.kind {
            KeyErrorKind::UnknownKey => {
                Error::invalid(ValidationReason::InvalidCustomerKey, error.message)
            }
            KeyErrorKind::Unavailable => Error::KeyUnavailable {
                message: error.message,
            },
        }
    }
}

/// The hook to an agent's key management: KEKs named by `KmsKeyArn`, and
/// envelope encryption of data keys under them. Implementations talk to a
/// key service (AWS KMS's GenerateDataKey and Decrypt map one to one) or,
/// like `keys::LocalKeyProvider`, keep KEKs themselves.
///
/// The store calls `generate_data_key` once per key name (when the first
/// snapshot under it starts), `unwrap_data_key` once per key name each time
/// it opens, and `rewrap_data_key` when asked to after a KEK rotation.
/// Every call may block; none is made while a store lock is held except
/// the StartSnapshot serialization lock.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The key of snapshots that ask for encryption without naming a key
    /// (EBS's account default key; such snapshots report `sse-ebs`).
    fn default_key_arn(&self) -> Result<String, KeyError>;

    /// A new random data key and its form wrapped under `key_arn`'s KEK.
    fn generate_data_key(&self, key_arn: &str) -> Result<GeneratedDataKey, KeyError>;

    /// The plaintext of a data key wrapped earlier under `key_arn`. A
    /// wrapped key that does not authenticate is an `Unavailable` error.
    fn unwrap_data_key(&self, key_arn: &str, wrapped: &[u8]) -> Result<DataKey, KeyError>;

    /// The same data key wrapped under `key_arn`'s current KEK, after the
    /// KEK was rotated. Only the wrapping changes; no data is re-encrypted.
    fn rewrap_data_key(&self, key_arn: &str, wrapped: &[u8]) -> Result<Vec<u8>, KeyError>;
}

/// An authenticated cipher for pack records: AEAD with a 12-byte nonce and
/// a 16-byte tag, keyed once per domain.
pub trait RecordCipher: Send + Sync {
    /// Encrypts `in_out` in place, authenticating `aad` too; returns the tag.
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CipherError>;

    /// Decrypts `in_out` in place if the tag authenticates it and `aad`;
    /// otherwise fails, and the contents of `in_out` are unspecified.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CipherError>;
}

/// A cipher failed: a tag that does not authenticate, or an unusable key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CipherError;

/// A family of record ciphers, identified in the store's keyring by a byte
/// so a store refuses to open with a cipher other than the one it wrote.
pub trait CipherSuite: Send + Sync + fmt::Debug {
    /// The suite's number in the keyring (1 = the shipped AES-256-GCM;
    /// 128..=255 are free for agents' own suites).
    fn id(&self) -> u8;

    /// A cipher keyed with `key`.
    fn cipher(&self, key: &[u8; DATA_KEY_LEN]) -> Result<Box<dyn RecordCipher>, CipherError>;
}

/// The shipped cipher suite: AES-256-GCM from `ring` (AES-NI, VAES and
/// CLMUL code paths chosen at run time).
#[derive(Clone, Copy, Debug, Default)]
pub struct Aes256Gcm;

/// The keyring number of [`Aes256Gcm`].
pub const AES_256_GCM_SUITE: u8 = 1;

struct RingAesGcm(ring::aead::LessSafeKey);

impl RecordCipher for RingAesGcm {
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CipherError> {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                in_out,
            )
            .map_err(|_| CipherError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CipherError> {
        self.0
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                in_out,
                0..,
            )
            .map(|_| ())
            .map_err(|_| CipherError)
    }
}

impl CipherSuite for Aes256Gcm {
    fn id(&self) -> u8 {
        AES_256_GCM_SUITE
    }

    fn cipher(&self, key: &[u8; DATA_KEY_LEN]) -> Result<Box<dyn RecordCipher>, CipherError> {
        let key =
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key).map_err(|_| CipherError)?;
        Ok(Box::new(RingAesGcm(ring::aead::LessSafeKey::new(key))))
    }
}

/// The id of a chunk's raw bytes: plain blake3 (blocks) or the node hash
/// (map nodes), or the keyed hashes of `domain` for an encrypted snapshot.
pub(crate) fn chunk_id_in(
    domain: Option<&DomainKeys>,
    kind: crate::format::pack::RecordKind,
    bytes: &[u8],
) -> ChunkId {
    use crate::format::pack::RecordKind;
    match (domain, kind) {
        (None, RecordKind::Block) => crate::codec::chunk_id(bytes),
        (None, RecordKind::MapNode) => crate::format::node::node_id(bytes),
        (Some(keys), RecordKind::Block) => keys.block_id(bytes),
        (Some(keys), RecordKind::MapNode) => keys.node_id(bytes),
    }
}

/// blake3 key-derivation contexts. Never change: stored ids depend on them.
const BLOCK_ID_CONTEXT: &str = "blocksnap 2026-11 encrypted block id v1";
const NODE_ID_CONTEXT: &str = "blocksnap 2026-11 encrypted map node id v1";
const DEDUP_BLOCK_ID_CONTEXT: &str = "blocksnap 2026-12 dedup domain block id v1";
const DEDUP_NODE_ID_CONTEXT: &str = "blocksnap 2026-12 dedup domain map node id v1";
const RECORD_CIPHER_CONTEXT: &str = "blocksnap 2026-11 record cipher key v1";
const CHECKSUM_MASK_CONTEXT: &str = "blocksnap 2026-11 journal checksum mask v1";

/// Everything derived from one domain's key: an encryption domain's data
/// key (keyed ids, the record cipher, the journal mask), or a dedup-only
/// domain's id key (keyed ids alone: one owner's plain data, which then
/// never shares storage with another owner's).
pub(crate) struct DomainKeys {
    /// The domain's number in record headers (1..=65535).
    pub(crate) domain: u16,
    /// The key name the data key is wrapped under.
    pub(crate) key_arn: String,
    block_id_key: Zeroizing<[u8; 32]>,
    node_id_key: Zeroizing<[u8; 32]>,
    checksum_mask_key: Zeroizing<[u8; 32]>,
    /// `None` for a dedup-only domain: its records are not sealed.
    cipher: Option<Box<dyn RecordCipher>>,
}

impl fmt::Debug for DomainKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainKeys")
            .field("domain", &self.domain)
            .field("key_arn", &self.key_arn)
            .finish_non_exhaustive()
    }
}

impl DomainKeys {
    /// Derives a domain's keys from its data key.
    pub(crate) fn derive(
        domain: u16,
        key_arn: String,
        data_key: &DataKey,
        suite: &dyn CipherSuite,
    ) -> Result<DomainKeys, Error> {
        let derive = |context: &str| Zeroizing::new(blake3::derive_key(context, data_key.expose()));
        let cipher_key = derive(RECORD_CIPHER_CONTEXT);
        let cipher = suite
            .cipher(&cipher_key)
            .map_err(|_| Error::KeyUnavailable {
                message: format!("the cipher refused the data key of {key_arn}"),
            })?;
        Ok(DomainKeys {
            domain,
            key_arn,
            block_id_key: derive(BLOCK_ID_CONTEXT),
            node_id_key: derive(NODE_ID_CONTEXT),
            checksum_mask_key: derive(CHECKSUM_MASK_CONTEXT),
            cipher: Some(cipher),
        })
    }

    /// Derives a dedup-only domain's keys from its id key.
    pub(crate) fn derive_dedup(domain: u16, key_arn: String, id_key: &DataKey) -> DomainKeys {
        let derive = |context: &str| Zeroizing::new(blake3::derive_key(context, id_key.expose()));
        DomainKeys {
            domain,
            key_arn,
            block_id_key: derive(DEDUP_BLOCK_ID_CONTEXT),
            node_id_key: derive(DEDUP_NODE_ID_CONTEXT),
            checksum_mask_key: derive(CHECKSUM_MASK_CONTEXT),
            cipher: None,
        }
    }

    /// Whether the domain's records are sealed (an encryption domain).
    pub(crate) fn is_sealed(&self) -> bool {
        self.cipher.is_some()
    }

    fn cipher(&self) -> Result<&dyn RecordCipher, Error> {
        self.cipher.as_deref().ok_or_else(|| {
            Error::corrupted(
                "keyring",
                format!("domain {} ({}) seals nothing", self.domain, self.key_arn),
            )
        })
    }

    /// The id of a block's data in this domain: keyed blake3.
    pub(crate) fn block_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.block_id_key, data).as_bytes())
    }

    /// The id of an encoded map node in this domain: keyed blake3.
    pub(crate) fn node_id(&self, encoded: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.node_id_key, encoded).as_bytes())
    }

    /// Encrypts `in_out` under a fresh random nonce; returns nonce and tag.
    pub(crate) fn seal(
        &self,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<([u8; NONCE_LEN], [u8; TAG_LEN]), Error> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|error| {
            Error::io("drawing a nonce", std::io::Error::other(error.to_string()))
        })?;
        let tag = self
            .cipher()?
            .seal_in_place(&nonce, aad, in_out)
            .map_err(|_| Error::KeyUnavailable {
                message: format!("the cipher of {} failed to seal a record", self.key_arn),
            })?;
        Ok((nonce, tag))
    }

    /// Decrypts `in_out` in place if it authenticates.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CipherError> {
        self.cipher
            .as_deref()
            .ok_or(CipherError)?
            .open_in_place(nonce, aad, in_out, tag)
    }

    /// The mask a journal record's checksum is XORed with (DESIGN.md
    /// §4.7): a PRF of where the block went and of its keyed id, so equal
    /// masks only ever hide equal checksums.
    pub(crate) fn checksum_mask(
        &self,
        snapshot: SnapshotId,
        index: BlockIndex,
        chunk: &ChunkId,
    ) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.checksum_mask_key);
        hasher.update(&snapshot.0.to_le_bytes());
        hasher.update(&index.0.to_le_bytes());
        hasher.update(&chunk.0);
        *hasher.finalize().as_bytes()
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn keys(byte: u8) -> DomainKeys {
        DomainKeys::derive(1, "arn".into(), &DataKey::new([byte; 32]), &Aes256Gcm).expect("derive")
    }

    #[test]
    fn ids_are_keyed_and_differ_from_plain_ones() {
        let data = b"some block";
        let (one, two) = (keys(1), keys(2));
        assert_eq!(one.block_id(data), keys(1).block_id(data));
        assert_ne!(one.block_id(data), two.block_id(data));
        assert_ne!(one.block_id(data), crate::codec::chunk_id(data));
        assert_ne!(one.block_id(data), one.node_id(data));
    }

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let keys = keys(7);
        let plaintext = b"attack at dawn".to_vec();
        let mut buffer = plaintext.clone();
        let (nonce, tag) = keys.seal(b"aad", &mut buffer).expect("seal");
        assert_ne!(buffer, plaintext);
        let mut opened = buffer.clone();
        keys.open(&nonce, b"aad", &mut opened, &tag).expect("open");
        assert_eq!(opened, plaintext);
        let mut wrong_aad = buffer.clone();
        assert!(keys.open(&nonce, b"aae", &mut wrong_aad, &tag).is_err());
        for position in 0..buffer.len() {
            let mut flipped = buffer.clone();
            flipped[position] ^= 1;
            assert!(keys.open(&nonce, b"aad", &mut flipped, &tag).is_err());
        }
        let (other_nonce, _) = keys.seal(b"aad", &mut plaintext.clone()).expect("seal");
        assert_ne!(nonce, other_nonce, "every seal draws a fresh nonce");
    }
}
