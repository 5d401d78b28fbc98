//! The store's domains: one per key name, each a data key wrapped by the
//! key provider (persisted in the `keyring` file, DESIGN.md §4.10) and the
//! keys derived from it once unwrapped.

use crate::crypto::{
    Aes256Gcm, CipherSuite, DataKey, DomainKeys, KeyProvider, AES_256_GCM_SUITE, DATA_KEY_LEN,
};
use crate::error::{Damage, Error, Result, ValidationReason};
use crate::format::keyring::MAX_WRAPPED_LEN;
use crate::format::keyring::{decode_keyring, encode_keyring, KeyringEntry, DEDUP_ONLY_SUITE};
use crate::format::pack::FIRST_DEDUP_DOMAIN;
use crate::storage::{mirror_name, read_mirrored, write_mirrored_unless_moved, Storage};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Name of the keyring file in the store.
pub(crate) const KEYRING_NAME: &str = "keyring";

/// See the module documentation.
pub(crate) struct Keyring {
    entries: Mutex<Vec<KeyringEntry>>,
    by_arn: Mutex<HashMap<String, Arc<DomainKeys>>>,
    /// A copy of the keyring that did not verify when it was opened.
    damage: Vec<Damage>,
    /// What unwraps the domains other writers of a shared medium add.
    provider: Option<Arc<dyn KeyProvider>>,
    /// The cipher suite the engine was given.
    suite: Arc<dyn CipherSuite>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("domains", &self.entries.lock().len())
            .finish()
    }
}

fn suite_for(id: u8, configured: &Arc<dyn CipherSuite>) -> Result<Arc<dyn CipherSuite>> {
    if configured.id() == id {
        Ok(configured.clone())
    } else if id == AES_256_GCM_SUITE {
        Ok(Arc::new(Aes256Gcm))
    } else {
        Err(Error::KeyUnavailable {
            message: format!(
                "the store's records are sealed with cipher suite {id}, which this engine was not given"
            ),
        })
    }
}

/// Whether the store's keyring names an encrypted domain (one whose
/// records only a key provider opens); dedup-only domains, which every
/// owner but the engine's own gets, need none. A keyring that does not
/// decode in either copy counts as encrypted: the open that follows
/// reports it.
pub(crate) fn has_encrypted_domains(storage: &dyn Storage) -> Result<bool> {
    let decode =
        |bytes: &[u8]| decode_keyring(bytes).map_err(|error| error.into_error(KEYRING_NAME));
    match read_mirrored(storage, KEYRING_NAME, decode) {
        Ok(Some(read)) => Ok(read
            .value
            .iter()
            .any(|entry| entry.suite != DEDUP_ONLY_SUITE)),
        Ok(None) => Ok(false),
        Err(Error::Corrupted { .. }) => Ok(true),
        Err(other) => Err(other),
    }
}

impl Keyring {
    /// Loads the keyring and unwraps every domain's data key. A store with
    /// encrypted snapshots cannot open without a provider that unwraps all
    /// of them: reference counts are rebuilt by reading every snapshot's map.
    pub(crate) fn open(
        storage: &dyn Storage,
        provider: Option<&Arc<dyn KeyProvider>>,
        suite: &Arc<dyn CipherSuite>,
    ) -> Result<Keyring> {
        let decode =
            |bytes: &[u8]| decode_keyring(bytes).map_err(|error| error.into_error(KEYRING_NAME));
        let (entries, damage) = match read_mirrored(storage, KEYRING_NAME, decode)? {
            Some(read) => {
                if read.mirror_missing && !storage.is_read_only() {
                    storage
                        .write_atomic(&mirror_name(KEYRING_NAME), &encode_keyring(&read.value)?)
                        .map_err(|e| Error::io("writing the keyring's mirror", e))?;
                }
                (read.value, read.damage)
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut by_arn = HashMap::new();
        for entry in &entries {
            if entry.suite == DEDUP_ONLY_SUITE {
                let keys = dedup_keys(entry)?;
                by_arn.insert(entry.key_arn.clone(), Arc::new(keys));
                continue;
            }
            let provider = provider.ok_or_else(|| Error::KeyUnavailable {
                message: format!(
                    "the store holds snapshots encrypted under {}; open it with a key provider",
                    entry.key_arn
                ),
            })?;
            let keys = Self::unwrap(entry, provider.as_ref(), suite)?;
            by_arn.insert(entry.key_arn.clone(), Arc::new(keys));
        }
        Ok(Keyring {
            entries: Mutex::new(entries),
            by_arn: Mutex::new(by_arn),
            damage,
            provider: provider.cloned(),
            suite: suite.clone(),
        })
    }

    /// Takes in the domains other writers of a shared medium added to the
    /// stored keyring (a domain is never changed once made, only added):
    /// dedup domains at once, encrypted ones when the provider unwraps
    /// them (else their snapshots stay unreadable here, as they would in a
    /// store opened without the key). Returns the domains added.
    pub(crate) fn take_in(&self, storage: &dyn Storage) -> Result<Vec<Arc<DomainKeys>>> {
        let decode =
            |bytes: &[u8]| decode_keyring(bytes).map_err(|error| error.into_error(KEYRING_NAME));
        let Some(stored) = read_mirrored(storage, KEYRING_NAME, decode)? else {
            return Ok(Vec::new());
        };
        let mut entries = self.entries.lock();
        let mut added = Vec::new();
        for entry in stored.value {
            if entries.iter().any(|known| known.domain == entry.domain) {
                continue;
            }
            let keys = if entry.suite == DEDUP_ONLY_SUITE {
                Some(dedup_keys(&entry)?)
            } else {
                match &self.provider {
                    Some(provider) => match Self::unwrap(&entry, provider.as_ref(), &self.suite) {
                        Ok(keys) => Some(keys),
                        Err(error) => {
                            tracing::warn!(key = %entry.key_arn, %error, "a domain another writer added cannot be unwrapped here");
                            None
                        }
                    },
                    None => None,
                }
            };
            if let Some(keys) = keys {
                let keys = Arc::new(keys);
                self.by_arn
                    .lock()
                    .insert(entry.key_arn.clone(), keys.clone());
                added.push(keys);
            }
            entries.push(entry);
        }
        Ok(added)
    }

    /// The domain named `name`, taking in the stored keyring first if it
    /// is not known here (another writer of a shared medium may have made
    /// it); and the storage generation the keyring was read at, for a
    /// write that adds the domain.
    fn find_or_take_in(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<(Option<Arc<DomainKeys>>, u64)> {
        let generation = storage.generation();
        if let Some(keys) = self.domain(name) {
            return Ok((Some(keys), generation));
        }
        self.take_in(storage)?;
        Ok((self.domain(name), generation))
    }

    /// Writes `updated` as the keyring if no other writer's commit was
    /// taken in since `generation` (else [`crate::storage::HeadMoved`]).
    fn write(storage: &dyn Storage, updated: &[KeyringEntry], generation: u64) -> Result<()> {
        write_mirrored_unless_moved(storage, KEYRING_NAME, &encode_keyring(updated)?, generation)
            .map_err(|e| Error::io("writing the keyring", e))
    }

    /// Damage found when the keyring was opened (one copy; nothing lost).
    pub(crate) fn damage(&self) -> &[Damage] {
        &self.damage
    }

    fn unwrap(
        entry: &KeyringEntry,
        provider: &dyn KeyProvider,
        suite: &Arc<dyn CipherSuite>,
    ) -> Result<DomainKeys> {
        let data_key = provider.unwrap_data_key(&entry.key_arn, &entry.wrapped)?;
        let suite = suite_for(entry.suite, suite)?;
        DomainKeys::derive(
            entry.domain,
            entry.key_arn.clone(),
            &data_key,
            suite.as_ref(),
        )
    }

    /// Every unlocked domain.
    pub(crate) fn domains(&self) -> Vec<Arc<DomainKeys>> {
        self.by_arn.lock().values().cloned().collect()
    }

    /// The domain of `key_arn`, if the store has one.
    pub(crate) fn domain(&self, key_arn: &str) -> Option<Arc<DomainKeys>> {
        self.by_arn.lock().get(key_arn).cloned()
    }

    /// The dedup-only domain named `name`, creating it (a random id key,
    /// kept in the keyring) on first use; the keyring naming it is durable
    /// before this returns. Callers serialize creation (the start lock).
    pub(crate) fn dedup_domain_or_create(
        &self,
        name: &str,
        storage: &dyn Storage,
        now_millis: u64,
    ) -> Result<(Arc<DomainKeys>, bool)> {
        loop {
            let (found, generation) = self.find_or_take_in(name, storage)?;
            if let Some(keys) = found {
                return Ok((keys, false));
            }
            let mut entries = self.entries.lock();
            let domain = next_domain(&entries, FIRST_DEDUP_DOMAIN, u16::MAX)?;
            let id_key = DataKey::random().map_err(Error::from)?;
            let entry = KeyringEntry {
                domain,
                suite: DEDUP_ONLY_SUITE,
                created_millis: now_millis,
                key_arn: name.to_string(),
                wrapped: id_key.expose().to_vec(),
            };
            let keys = Arc::new(dedup_keys(&entry)?);
            let mut updated = entries.clone();
            updated.push(entry);
            match Self::write(storage, &updated, generation) {
                Err(error) if error.is_head_moved() => continue,
                written => written?,
            }
            *entries = updated;
            self.by_arn.lock().insert(name.to_string(), keys.clone());
            return Ok((keys, true));
        }
    }

    /// The domain of `key_arn`, creating it when this is the key's first
    /// snapshot: the provider generates a data key, and the keyring naming
    /// it is durable before this returns (so before any record sealed
    /// with it can be). Callers serialize creation (the start lock).
    pub(crate) fn domain_or_create(
        &self,
        key_arn: &str,
        storage: &dyn Storage,
        provider: &dyn KeyProvider,
        suite: &Arc<dyn CipherSuite>,
        now_millis: u64,
    ) -> Result<(Arc<DomainKeys>, bool)> {
        loop {
            let (found, generation) = self.find_or_take_in(key_arn, storage)?;
            if let Some(keys) = found {
                return Ok((keys, false));
            }
            match self.create_domain(key_arn, storage, provider, suite, now_millis, generation) {
                Err(error) if error.is_head_moved() => continue,
                created => return created.map(|keys| (keys, true)),
            }
        }
    }

    /// Makes the domain of `key_arn` and writes the keyring naming it,
    /// unless another writer's commit was taken in since `generation`.
    fn create_domain(
        &self,
        key_arn: &str,
        storage: &dyn Storage,
        provider: &dyn KeyProvider,
        suite: &Arc<dyn CipherSuite>,
        now_millis: u64,
        generation: u64,
    ) -> Result<Arc<DomainKeys>> {
        let mut entries = self.entries.lock();
        let domain = next_domain(&entries, 1, FIRST_DEDUP_DOMAIN - 1)?;
        let generated = provider.generate_data_key(key_arn)?;
        if generated.wrapped.len() > MAX_WRAPPED_LEN {
            return Err(Error::KeyUnavailable {
                message: format!(
                    "the key provider wrapped a data key of {key_arn} into {} bytes, more than {}",
                    generated.wrapped.len(),
                    MAX_WRAPPED_LEN
                ),
            });
        }
        let entry = KeyringEntry {
            domain,
            suite: suite.id(),
            created_millis: now_millis,
            key_arn: key_arn.to_string(),
            wrapped: generated.wrapped,
        };
        let keys = Arc::new(DomainKeys::derive(
            domain,
            key_arn.to_string(),
            &generated.plaintext,
            suite.as_ref(),
        )?);
        let mut updated = entries.clone();
        updated.push(entry);
        Self::write(storage, &updated, generation)?;
        *entries = updated;
        self.by_arn.lock().insert(key_arn.to_string(), keys.clone());
        Ok(keys)
    }

    /// Rewraps every domain's data key under its key's current KEK, and
    /// checks each rewrapped key unwraps to the same domain keys before the
    /// keyring is replaced (atomically). Returns how many were rewrapped.
    pub(crate) fn rewrap(
        &self,
        storage: &dyn Storage,
        provider: &dyn KeyProvider,
    ) -> Result<usize> {
        let generation = storage.generation();
        self.take_in(storage)?;
        let mut entries = self.entries.lock();
        let mut updated = entries.clone();
        for entry in updated
            .iter_mut()
            .filter(|entry| entry.suite != DEDUP_ONLY_SUITE)
        {
            let rewrapped = provider.rewrap_data_key(&entry.key_arn, &entry.wrapped)?;
            let before = provider.unwrap_data_key(&entry.key_arn, &entry.wrapped)?;
            let after = provider.unwrap_data_key(&entry.key_arn, &rewrapped)?;
            if before.expose() != after.expose() {
                return Err(Error::KeyUnavailable {
                    message: format!(
                        "the key provider rewrapped the data key of {} into a different key",
                        entry.key_arn
                    ),
                });
            }
            entry.wrapped = rewrapped;
        }
        // A rewrap that lost a race is not redone: the caller runs it again.
        Self::write(storage, &updated, generation)?;
        let count = updated
            .iter()
            .filter(|entry| entry.suite != DEDUP_ONLY_SUITE)
            .count();
        *entries = updated;
        Ok(count)
    }
}

/// The next free domain number in `first..=last` (above every one taken
/// there), or an error once the range is used up.
fn next_domain(entries: &[KeyringEntry], first: u16, last: u16) -> Result<u16> {
    let highest = entries
        .iter()
        .map(|entry| entry.domain)
        .filter(|domain| (first..=last).contains(domain))
        .max();
    match highest {
        None => Ok(first),
        Some(highest) if highest < last => Ok(highest + 1),
        Some(_) => Err(Error::invalid(
            ValidationReason::InvalidCustomerKey,
            format!(
                "the store already has {} domains of this kind, the most it can hold",
                usize::from(last - first) + 1
            ),
        )),
    }
}

/// The keys of a dedup-only domain from its keyring entry.
fn dedup_keys(entry: &KeyringEntry) -> Result<DomainKeys> {
    let id_key: [u8; DATA_KEY_LEN] = entry.wrapped.as_slice().try_into().map_err(|_| {
        Error::corrupted(
            KEYRING_NAME,
            format!(
                "the id key of {} is not {DATA_KEY_LEN} bytes",
                entry.key_arn
            ),
        )
    })?;
    Ok(DomainKeys::derive_dedup(
        entry.domain,
        entry.key_arn.clone(),
        &DataKey::new(id_key),
    ))
}
