//! The shipped key provider: named key-encryption keys kept in a local key
//! file, the file sealed (AES-256-GCM) under a key stretched from a
//! passphrase with argon2id. Rotating a KEK adds a version; data keys are
//! then rewrapped under it ([`crate::Engine::rewrap_data_keys`]) and the old
//! version can be retired. No data is re-encrypted.

use crate::crypto::{
    Aes256Gcm, CipherSuite, DataKey, GeneratedDataKey, KeyError, KeyProvider, RecordCipher,
    DATA_KEY_LEN,
};
use crate::error::{Damage, Error, Result, ValidationReason};
use crate::format::keyfile::{KekVersions, KeyFileHeader, KeyTable, KEYFILE_SEALED_OFFSET};
use crate::format::pack::{NONCE_LEN, TAG_LEN};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The key a new key file starts with, and its default key.
pub const DEFAULT_LOCAL_KEY_ARN: &str = "arn:aws:kms:local:000000000000:key/blocksnap-default";

/// Environment variable [`Passphrase::from_env`] reads.
pub const PASSPHRASE_ENV: &str = "BLOCKSNAP_PASSPHRASE";

/// Format byte of a wrapped data key.
const WRAPPED_FORMAT: u8 = 1;
/// format (1) + KEK version (4) + nonce + key + tag.
const WRAPPED_LEN: usize = 1 + 4 + NONCE_LEN + DATA_KEY_LEN + TAG_LEN;
/// Associated-data prefix of a wrapped data key.
const WRAP_CONTEXT: &[u8] = b"blocksnap local data key v1";

/// A passphrase: wiped from memory when dropped, never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(redacted)")
    }
}

impl Passphrase {
    /// A passphrase from a string; empty ones are refused.
    pub fn new(text: impl Into<String>) -> Result<Passphrase> {
        let text = Zeroizing::new(text.into());
        if text.is_empty() {
            return Err(Error::invalid(
                ValidationReason::InvalidParameterValue,
                "the passphrase is empty",
            ));
        }
        Ok(Passphrase(text))
    }

    /// The passphrase in `BLOCKSNAP_PASSPHRASE`, if that is set.
    pub fn from_env() -> Result<Option<Passphrase>> {
        match std::env::var(PASSPHRASE_ENV) {
            Ok(text) => Passphrase::new(text).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The first line of a file (one trailing newline is not part of it).
    pub fn from_file(path: &Path) -> Result<Passphrase> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
            Error::io(format!("reading passphrase file {}", path.display()), error)
        })?);
        let line = text.strip_suffix('\n').unwrap_or(&text);
        Passphrase::new(line.strip_suffix('\r').unwrap_or(line))
    }
}

/// argon2id costs of the passphrase stretch, stored in the key file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KdfParams {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: above OWASP's argon2id minimums; about a
    /// quarter of a second here.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 << 10,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// One key of a key file, as [`LocalKeyProvider::keys`] lists it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LocalKeyInfo {
    /// Its name.
    pub key_arn: String,
    /// The version new wrappings use.
    pub current_version: u32,
    /// Every version kept.
    pub versions: Vec<u32>,
    /// Whether it is the default key.
    pub is_default: bool,
}

struct Unlocked {
    params: KdfParams,
    salt: [u8; 16],
    file_cipher: Box<dyn RecordCipher>,
    table: KeyTable,
}

/// See the module documentation. Every change is written to the key file
/// durably (temporary file, fsync, rename, directory fsync) before it is
/// used, twice: first to `PATH.mirror`, then to `PATH`, so a flipped byte
/// or a truncation of one copy loses no key.
pub struct LocalKeyProvider {
    path: PathBuf,
    state: Mutex<Unlocked>,
    /// A copy that did not open when the file was opened (the other did).
    damage: Vec<Damage>,
}

impl std::fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|error| {
        Error::io(
            "reading random bytes",
            std::io::Error::other(error.to_string()),
        )
    })?;
    Ok(bytes)
}

fn random_key() -> Result<Zeroizing<[u8; 32]>> {
    Ok(Zeroizing::new(random::<32>()?))
}

fn stretch(
    passphrase: &Passphrase,
    salt: &[u8; 16],
    params: KdfParams,
) -> Result<Box<dyn RecordCipher>> {
    let invalid = |detail: String| {
        Error::invalid(
            ValidationReason::InvalidParameterValue,
            format!("argon2id parameters: {detail}"),
        )
    };
    let argon_params = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|error| invalid(error.to_string()))?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.0.as_bytes(), salt, key.as_mut())
        .map_err(|error| invalid(error.to_string()))?;
    Aes256Gcm
        .cipher(&key)
        .map_err(|_| invalid("the stretched key was refused".into()))
}

fn is_key_arn(arn: &str) -> bool {
    super::is_kms_key_arn(arn)
}

impl LocalKeyProvider {
    /// Creates a new key file at `path` (never overwriting one) holding the
    /// default key [`DEFAULT_LOCAL_KEY_ARN`].
    pub fn create(path: &Path, passphrase: &Passphrase, params: KdfParams) -> Result<Self> {
        let salt = random::<16>()?;
        let mut versions = BTreeMap::new();
        versions.insert(1, random_key()?);
        let mut keys = BTreeMap::new();
        keys.insert(
            DEFAULT_LOCAL_KEY_ARN.to_string(),
            KekVersions {
                current: 1,
                versions,
            },
        );
        let unlocked = Unlocked {
            params,
            salt,
            file_cipher: stretch(passphrase, &salt, params)?,
            table: KeyTable {
                default_key_arn: DEFAULT_LOCAL_KEY_ARN.to_string(),
                keys,
            },
        };
        let bytes = seal_file(&unlocked)?;
        if Self::exists(path) {
            return Err(Error::Conflict {
                message: format!("{} already exists", path.display()),
            });
        }
        write_copies(path, &bytes)?;
        Ok(LocalKeyProvider {
            path: path.to_path_buf(),
            state: Mutex::new(unlocked),
            damage: Vec::new(),
        })
    }

    /// Opens a key file: `PATH`, else its mirror `PATH.mirror` (the damage
    /// is kept for [`LocalKeyProvider::damage`]). A wrong passphrase and a
    /// file damaged in both copies look alike: the table does not
    /// authenticate.
    pub fn open(path: &Path, passphrase: &Passphrase) -> Result<Self> {
        let mirror = mirror_path(path);
        let primary = Self::open_copy(path, passphrase);
        match primary {
            Ok(unlocked) => {
                let mut damage = Vec::new();
                if mirror.exists() && Self::open_copy(&mirror, passphrase).is_err() {
                    damage.push(copy_damage(&mirror, path));
                }
                Ok(Self::opened(path, unlocked, damage))
            }
            Err(error) => match Self::open_copy(&mirror, passphrase) {
                Ok(unlocked) if path.exists() => Ok(Self::opened(
                    path,
                    unlocked,
                    vec![copy_damage(path, &mirror)],
                )),
                Ok(unlocked) => Ok(Self::opened(path, unlocked, Vec::new())),
                Err(_) => Err(error),
            },
        }
    }

    /// Whether a key file exists at `path` (either copy).
    pub fn exists(path: &Path) -> bool {
        path.exists() || mirror_path(path).exists()
    }

    fn opened(path: &Path, unlocked: Unlocked, damage: Vec<Damage>) -> Self {
        LocalKeyProvider {
            path: path.to_path_buf(),
            state: Mutex::new(unlocked),
            damage,
        }
    }

    /// A copy of the key file that exists but did not open when the file
    /// was opened (the other copy did; no key was lost).
    pub fn damage(&self) -> &[Damage] {
        &self.damage
    }

    /// Rewrites both copies from the keys in memory: restores a damaged
    /// copy, and adds the mirror a key file written before files were kept
    /// twice lacks. Does nothing when both copies exist and opened.
    pub fn restore_copies(&self) -> Result<()> {
        if self.damage.is_empty() && mirror_path(&self.path).exists() && self.path.exists() {
            return Ok(());
        }
        let state = self.state.lock();
        write_copies(&self.path, &seal_file(&state)?)
    }

    fn open_copy(path: &Path, passphrase: &Passphrase) -> Result<Unlocked> {
        let bytes = std::fs::read(path)
            .map_err(|error| Error::io(format!("reading key file {}", path.display()), error))?;
        let header = KeyFileHeader::decode(&bytes)
            .map_err(|error| error.into_error(&format!("key file {}", path.display())))?;
        let params = KdfParams {
            memory_kib: header.memory_kib,
            iterations: header.iterations,
            parallelism: header.parallelism,
        };
        let file_cipher = stretch(passphrase, &header.salt, params)?;
        let sealed_end = KEYFILE_SEALED_OFFSET + header.sealed_len as usize;
        let mut table_bytes = Zeroizing::new(
            bytes
                .get(KEYFILE_SEALED_OFFSET..sealed_end)
                .unwrap_or_default()
                .to_vec(),
        );
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(bytes.get(sealed_end..).unwrap_or(&[0; TAG_LEN]));
        let aad = bytes.get(..KEYFILE_SEALED_OFFSET).unwrap_or_default();
        file_cipher
            .open_in_place(&header.nonce, aad, &mut table_bytes, &tag)
            .map_err(|_| Error::KeyUnavailable {
                message: format!(
                    "the passphrase does not open key file {} (or the file is damaged)",
                    path.display()
                ),
            })?;
        let table = KeyTable::decode(&table_bytes)
            .map_err(|error| error.into_error(&format!("key file {}", path.display())))?;
        Ok(Unlocked {
            params,
            salt: header.salt,
            file_cipher,
            table,
        })
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `change` to the table and writes the file; on any failure
    /// the table in memory stays as it was.
    fn update<R>(&self, change: impl FnOnce(&mut KeyTable) -> Result<R>) -> Result<R> {
        let mut state = self.state.lock();
        let before = state.table.clone();
        let result = change(&mut state.table)
            .and_then(|value| write_copies(&self.path, &seal_file(&state)?).map(|_| value));
        if result.is_err() {
            state.table = before;
        }
        result
    }

    /// Adds a key named `key_arn` (a KMS key ARN) with a fresh KEK.
    pub fn create_key(&self, key_arn: &str) -> Result<()> {
        if !is_key_arn(key_arn) {
            return Err(Error::invalid(
                ValidationReason::InvalidCustomerKey,
                format!("'{key_arn}' is not a KMS key ARN"),
            ));
        }
        let kek = random_key()?;
        self.update(|table| {
            if table.keys.contains_key(key_arn) {
                return Err(Error::Conflict {
                    message: format!("the key file already has a key named {key_arn}"),
                });
            }
            let mut versions = BTreeMap::new();
            versions.insert(1, kek);
            table.keys.insert(
                key_arn.to_string(),
                KekVersions {
                    current: 1,
                    versions,
                },
            );
            Ok(())
        })
    }

    /// Makes `key_arn` the key of snapshots that name none.
    pub fn set_default_key(&self, key_arn: &str) -> Result<()> {
        self.update(|table| {
            if !table.keys.contains_key(key_arn) {
                return Err(unknown_key(key_arn).into());
            }
            table.default_key_arn = key_arn.to_string();
            Ok(())
        })
    }

    /// Rotates `key_arn`'s KEK: a new version becomes current; older
    /// versions still unwrap until retired. Returns the new version.
    pub fn rotate(&self, key_arn: &str) -> Result<u32> {
        let kek = random_key()?;
        self.update(|table| {
            let entry = table
                .keys
                .get_mut(key_arn)
                .ok_or_else(|| Error::from(unknown_key(key_arn)))?;
            let version = entry.versions.keys().next_back().copied().unwrap_or(0) + 1;
            entry.versions.insert(version, kek);
            entry.current = version;
            Ok(version)
        })
    }

    /// Forgets every version of `key_arn` but the current one; returns how
    /// many were dropped. Data keys still wrapped under them become
    /// unusable, so rewrap first.
    pub fn retire_old_versions(&self, key_arn: &str) -> Result<usize> {
        self.update(|table| {
            let entry = table
                .keys
                .get_mut(key_arn)
                .ok_or_else(|| Error::from(unknown_key(key_arn)))?;
            let current = entry.current;
            let before = entry.versions.len();
            entry.versions.retain(|version, _| *version == current);
            Ok(before - entry.versions.len())
        })
    }

    /// Seals the file under a new passphrase (and new salt and costs).
    pub fn change_passphrase(&self, passphrase: &Passphrase, params: KdfParams) -> Result<()> {
        let salt = random::<16>()?;
        let file_cipher = stretch(passphrase, &salt, params)?;
        let mut state = self.state.lock();
        let candidate = Unlocked {
            params,
            salt,
            file_cipher,
            table: state.table.clone(),
        };
        write_copies(&self.path, &seal_file(&candidate)?)?;
        *state = candidate;
        Ok(())
    }

    /// The keys in the file.
    pub fn keys(&self) -> Vec<LocalKeyInfo> {
        let state = self.state.lock();
        state
            .table
            .keys
            .iter()
            .map(|(arn, kek)| LocalKeyInfo {
                key_arn: arn.clone(),
                current_version: kek.current,
                versions: kek.versions.keys().copied().collect(),
                is_default: *arn == state.table.default_key_arn,
            })
            .collect()
    }

    /// A cipher keyed with version `version` of `key_arn`'s KEK (the
    /// current one when `None`), and that version's number.
    fn kek_cipher(
        &self,
        key_arn: &str,
        version: Option<u32>,
    ) -> Result<(u32, Box<dyn RecordCipher>), KeyError> {
        let state = self.state.lock();
        let kek = state
            .table
            .keys
            .get(key_arn)
            .ok_or_else(|| unknown_key(key_arn))?;
        let version = version.unwrap_or(kek.current);
        let key = kek.versions.get(&version).ok_or_else(|| {
            KeyError::unavailable(format!(
                "version {version} of {key_arn} was retired; the data key cannot be unwrapped"
            ))
        })?;
        let cipher = Aes256Gcm
            .cipher(key)
            .map_err(|_| KeyError::unavailable(format!("the KEK of {key_arn} is unusable")))?;
        Ok((version, cipher))
    }

    fn wrap(&self, key_arn: &str, data_key: &DataKey) -> Result<Vec<u8>, KeyError> {
        let (version, cipher) = self.kek_cipher(key_arn, None)?;
        let nonce =
            random::<NONCE_LEN>().map_err(|error| KeyError::unavailable(error.to_string()))?;
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.push(WRAPPED_FORMAT);
        wrapped.extend_from_slice(&version.to_le_bytes());
        wrapped.extend_from_slice(&nonce);
        let mut body = Zeroizing::new(*data_key.expose());
        let tag = cipher
            .seal_in_place(&nonce, &wrap_aad(key_arn, &wrapped), body.as_mut())
            .map_err(|_| KeyError::unavailable(format!("wrapping under {key_arn} failed")))?;
        wrapped.extend_from_slice(body.as_ref());
        wrapped.extend_from_slice(&tag);
        Ok(wrapped)
    }
}

fn unknown_key(key_arn: &str) -> KeyError {
    KeyError::unknown(format!("The key {key_arn} does not exist in the key file."))
}

/// Associated data of a wrapped key: context, key name, format and version.
fn wrap_aad(key_arn: &str, head: &[u8]) -> Vec<u8> {
    let mut aad = WRAP_CONTEXT.to_vec();
    aad.extend_from_slice(&(key_arn.len() as u32).to_le_bytes());
    aad.extend_from_slice(key_arn.as_bytes());
    aad.extend_from_slice(head.get(..5).unwrap_or_default());
    aad
}

impl KeyProvider for LocalKeyProvider {
    fn default_key_arn(&self) -> Result<String, KeyError> {
        Ok(self.state.lock().table.default_key_arn.clone())
    }

    fn generate_data_key(&self, key_arn: &str) -> Result<GeneratedDataKey, KeyError> {
        let plaintext = DataKey::random()?;
        let wrapped = self.wrap(key_arn, &plaintext)?;
        Ok(GeneratedDataKey { plaintext, wrapped })
    }

    fn unwrap_data_key(&self, key_arn: &str, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let damaged = || {
            KeyError::unavailable(format!(
                "a data key wrapped under {key_arn} does not authenticate"
            ))
        };
        if wrapped.len() != WRAPPED_LEN || wrapped.first() != Some(&WRAPPED_FORMAT) {
            return Err(damaged());
        }
        let mut version = [0u8; 4];
        version.copy_from_slice(wrapped.get(1..5).unwrap_or(&[0; 4]));
        let version = u32::from_le_bytes(version);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(wrapped.get(5..5 + NONCE_LEN).unwrap_or(&[0; NONCE_LEN]));
        let key_start = 5 + NONCE_LEN;
        let mut body = Zeroizing::new([0u8; DATA_KEY_LEN]);
        body.copy_from_slice(
            wrapped
                .get(key_start..key_start + DATA_KEY_LEN)
                .unwrap_or(&[0; DATA_KEY_LEN]),
        );
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(
            wrapped
                .get(key_start + DATA_KEY_LEN..)
                .unwrap_or(&[0; TAG_LEN]),
        );
        let (_, cipher) = self.kek_cipher(key_arn, Some(version))?;
        cipher
            .open_in_place(&nonce, &wrap_aad(key_arn, wrapped), body.as_mut(), &tag)
            .map_err(|_| damaged())?;
        Ok(DataKey::new(*body))
    }

    fn rewrap_data_key(&self, key_arn: &str, wrapped: &[u8]) -> Result<Vec<u8>, KeyError> {
        let plaintext = self.unwrap_data_key(key_arn, wrapped)?;
        self.wrap(key_arn, &plaintext)
    }
}

/// The whole key file for `state`: header, sealed table, tag.
fn seal_file(state: &Unlocked) -> Result<Vec<u8>> {
    let mut table = state.table.encode()?;
    if table.len() > crate::format::keyfile::MAX_SEALED_LEN {
        return Err(Error::invalid(
            ValidationReason::InvalidParameterValue,
            "the key file would exceed 1 MiB",
        ));
    }
    let header = KeyFileHeader {
        memory_kib: state.params.memory_kib,
        iterations: state.params.iterations,
        parallelism: state.params.parallelism,
        salt: state.salt,
        nonce: random::<NONCE_LEN>()?,
        // At most MAX_SEALED_LEN (1 MiB), checked above.
        sealed_len: table.len() as u32,
    };
    let mut bytes = header.encode();
    let tag = state
        .file_cipher
        .seal_in_place(&header.nonce, &bytes, &mut table)
        .map_err(|_| Error::KeyUnavailable {
            message: "sealing the key file failed".into(),
        })?;
    bytes.extend_from_slice(&table);
    bytes.extend_from_slice(&tag);
    Ok(bytes)
}

/// The second copy of the key file at `path`.
fn mirror_path(path: &Path) -> PathBuf {
    let mut mirror = path.as_os_str().to_owned();
    mirror.push(".mirror");
    PathBuf::from(mirror)
}

fn copy_damage(damaged: &Path, used: &Path) -> Damage {
    Damage {
        file: damaged.display().to_string(),
        detail: format!(
            "this copy of the key file does not open; {} does (rewrite both with `blocksnap repair`)",
            used.display()
        ),
        data_lost: false,
    }
}

/// Writes the same sealed bytes to the mirror, then to the key file.
fn write_copies(path: &Path, bytes: &[u8]) -> Result<()> {
    write_durably(&mirror_path(path), bytes)?;
    write_durably(path, bytes)
}

/// Writes `bytes` to `path` through a temporary file, fsync, rename and a
/// directory fsync.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let context = |what: &str| format!("{what} key file {}", path.display());
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(|error| Error::io(context("creating"), error))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| Error::io(context("writing"), error))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(|error| Error::io(context("renaming"), error))?;
    let parent = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(parent)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| Error::io(context("syncing the directory of"), error))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn quick() -> KdfParams {
        KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn wrap_unwrap_rotate_retire_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        let passphrase = Passphrase::new("correct horse").expect("passphrase");
        let provider = LocalKeyProvider::create(&path, &passphrase, quick()).expect("create");
        assert!(LocalKeyProvider::create(&path, &passphrase, quick()).is_err());
        let arn = DEFAULT_LOCAL_KEY_ARN;
        let generated = provider.generate_data_key(arn).expect("generate");
        let unwrapped = provider
            .unwrap_data_key(arn, &generated.wrapped)
            .expect("unwrap");
        assert_eq!(unwrapped.expose(), generated.plaintext.expose());
        let other = "arn:aws:kms:local:000000000000:key/other";
        provider.create_key(other).expect("create key");
        assert!(
            provider.unwrap_data_key(other, &generated.wrapped).is_err(),
            "bound to its key name"
        );
        assert!(matches!(
            provider.generate_data_key("arn:aws:kms:local:000000000000:key/none"),
            Err(KeyError {
                kind: crate::crypto::KeyErrorKind::UnknownKey,
                ..
            })
        ));
        for position in 0..generated.wrapped.len() {
            let mut flipped = generated.wrapped.clone();
            flipped[position] ^= 1;
            assert!(
                provider.unwrap_data_key(arn, &flipped).is_err(),
                "flip at {position}"
            );
        }

        assert_eq!(provider.rotate(arn).expect("rotate"), 2);
        let rewrapped = provider
            .rewrap_data_key(arn, &generated.wrapped)
            .expect("rewrap");
        assert_ne!(rewrapped, generated.wrapped);
        assert_eq!(provider.retire_old_versions(arn).expect("retire"), 1);
        assert!(
            provider.unwrap_data_key(arn, &generated.wrapped).is_err(),
            "old version retired"
        );

        let reopened = LocalKeyProvider::open(&path, &passphrase).expect("reopen");
        let unwrapped = reopened
            .unwrap_data_key(arn, &rewrapped)
            .expect("unwrap after reopen");
        assert_eq!(unwrapped.expose(), generated.plaintext.expose());
        assert_eq!(reopened.keys().len(), 2);
        assert!(LocalKeyProvider::open(&path, &Passphrase::new("wrong").expect("p")).is_err());

        let new_passphrase = Passphrase::new("new phrase").expect("passphrase");
        reopened
            .change_passphrase(&new_passphrase, quick())
            .expect("change");
        assert!(LocalKeyProvider::open(&path, &passphrase).is_err());
        let again = LocalKeyProvider::open(&path, &new_passphrase).expect("open with new");
        assert_eq!(
            again
                .unwrap_data_key(arn, &rewrapped)
                .expect("unwrap")
                .expose(),
            generated.plaintext.expose()
        );
        // A flipped byte in one copy loses nothing and is reported; in
        // both, the file does not open (as with a wrong passphrase).
        let file = std::fs::read(&path).expect("read");
        let mirror = mirror_path(&path);
        assert_eq!(std::fs::read(&mirror).expect("read mirror"), file);
        for position in (0..file.len()).step_by(7) {
            let mut flipped = file.clone();
            flipped[position] ^= 0x20;
            std::fs::write(&path, &flipped).expect("write");
            let opened =
                LocalKeyProvider::open(&path, &new_passphrase).expect("open from the mirror");
            assert_eq!(opened.damage().len(), 1, "flip at {position}");
            assert_eq!(
                opened
                    .unwrap_data_key(arn, &rewrapped)
                    .expect("unwrap")
                    .expose(),
                generated.plaintext.expose()
            );
            std::fs::write(&mirror, &flipped).expect("write");
            assert!(
                LocalKeyProvider::open(&path, &new_passphrase).is_err(),
                "flip at {position} in both copies"
            );
            std::fs::write(&mirror, &file).expect("restore mirror");
        }
        std::fs::write(&path, &file[..file.len() / 2]).expect("truncate");
        let opened = LocalKeyProvider::open(&path, &new_passphrase).expect("open from the mirror");
        assert_eq!(opened.damage().len(), 1);
        opened.restore_copies().expect("restore");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            std::fs::read(&mirror).expect("read")
        );
        assert!(LocalKeyProvider::open(&path, &new_passphrase)
            .expect("open")
            .damage()
            .is_empty());
    }

    #[test]
    fn passphrase_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pass");
        std::fs::write(&path, "s3cret\n").expect("write");
        let from_file = Passphrase::from_file(&path).expect("read");
        assert_eq!(from_file.0.as_str(), "s3cret");
        std::fs::write(&path, "\n").expect("write");
        assert!(Passphrase::from_file(&path).is_err(), "empty");
        assert_eq!(format!("{from_file:?}"), "Passphrase(redacted)");
    }
}
