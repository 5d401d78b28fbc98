//! Which key a new snapshot is sealed with, and KEK rotation's rewrap.

use super::{Engine, RequestedEncryption};
use crate::crypto::{DomainKeys, KeyProvider};
use crate::error::{Error, Result, ValidationReason};
use crate::format::catalog::SseKind;
use std::sync::Arc;

/// How the key names of owners' dedup domains start; the owner id follows.
/// Never a KMS key ARN, so never confused with an encryption key's.
pub(crate) const DEDUP_DOMAIN_PREFIX: &str = "dedup/";

/// The encryption a new snapshot gets: SSE kind, key name (an encryption
/// key's, or a plain snapshot's dedup domain's), and the unlocked domain
/// (`None` for the plain domain).
pub(super) type Encryption = (SseKind, Option<String>, Option<Arc<DomainKeys>>);

fn bad_key(message: String) -> Error {
    Error::invalid(ValidationReason::InvalidCustomerKey, message)
}

impl Engine {
    fn provider(&self) -> Result<&Arc<dyn KeyProvider>> {
        self.inner.config.key_provider.as_ref().ok_or_else(|| {
            bad_key(
                "Encryption was requested, but this store has no key provider configured.".into(),
            )
        })
    }

    /// Resolves StartSnapshot's encryption. A child takes its parent's
    /// (`inherited`: the parent's SSE kind and key); naming another key for
    /// a child is refused, because its blocks would have to share storage
    /// with the parent's across keys. The first snapshot under a key
    /// creates the key's domain, so an unknown or unusable key fails here
    /// and never later. The caller holds the start lock.
    pub(super) fn encryption_of(
        &self,
        owner: &str,
        requested: &RequestedEncryption,
        inherited: Option<(SseKind, Option<String>)>,
    ) -> Result<Encryption> {
        if let Some((sse, arn)) = inherited {
            let inherit = match (requested, sse, &arn) {
                (RequestedEncryption::None, _, _) => true,
                (
                    RequestedEncryption::Key(wanted),
                    SseKind::SseEbs | SseKind::SseKms,
                    Some(parent_arn),
                ) => wanted == parent_arn,
                _ => false,
            };
            if !inherit {
                return Err(bad_key(match arn.filter(|_| sse != SseKind::None) {
                    Some(parent_arn) => format!(
                        "A child snapshot is encrypted with its parent's key {parent_arn}; it cannot name another."
                    ),
                    None => "The parent snapshot is not encrypted, so its child cannot be.".into(),
                }));
            }
            // A plain parent's name is its dedup domain's: the child shares
            // its blocks, so it shares its id space too.
            let Some(arn) = arn else {
                return Ok((SseKind::None, None, None));
            };
            let domain = self.inner.keyring.domain(&arn).ok_or_else(|| {
                Error::corrupted(
                    "keyring",
                    format!("the parent's key {arn} has no domain in the keyring"),
                )
            })?;
            return Ok((sse, Some(arn), Some(domain)));
        }
        let (sse, arn) = match requested {
            RequestedEncryption::None => return self.dedup_domain_of(owner),
            RequestedEncryption::DefaultKey => {
                (SseKind::SseEbs, self.provider()?.default_key_arn()?)
            }
            RequestedEncryption::Key(arn) => (SseKind::SseKms, arn.clone()),
        };
        let provider = self.provider()?;
        let (domain, created) = self.poison_on_io(self.inner.keyring.domain_or_create(
            &arn,
            self.inner.storage.as_ref(),
            provider.as_ref(),
            &self.inner.config.cipher_suite,
            self.now_millis(),
        ))?;
        if created {
            self.inner.chunks.register_domain(domain.clone());
        }
        Ok((sse, Some(arn), Some(domain)))
    }

    /// The domain a new plain snapshot of `owner` is keyed in: the plain
    /// one for the engine's own owner or when dedup is shared, else the
    /// owner's dedup domain (created on the owner's first snapshot,
    /// durable before the Started record names it).
    fn dedup_domain_of(&self, owner: &str) -> Result<Encryption> {
        let config = &self.inner.config;
        if config.shared_dedup || owner == config.owner_id {
            return Ok((SseKind::None, None, None));
        }
        let name = format!("{DEDUP_DOMAIN_PREFIX}{owner}");
        let (domain, created) = self.poison_on_io(self.inner.keyring.dedup_domain_or_create(
            &name,
            self.inner.storage.as_ref(),
            self.now_millis(),
        ))?;
        if created {
            self.inner.chunks.register_domain(domain.clone());
        }
        Ok((SseKind::None, Some(name), Some(domain)))
    }

    /// After a KEK rotation in the key provider: wraps every encrypted
    /// domain's data key again under its key's current KEK and replaces the
    /// store's keyring atomically. No record is re-encrypted, so this costs
    /// one provider round trip per key, whatever the store's size. Returns
    /// how many data keys were rewrapped.
    pub fn rewrap_data_keys(&self) -> Result<usize> {
        self.check_writable()?;
        let provider = self.provider()?.clone();
        let _serial = self.inner.start_lock.lock();
        self.poison_on_io(
            self.inner
                .keyring
                .rewrap(self.inner.storage.as_ref(), provider.as_ref()),
        )
    }
}
