//! Key management above the pure crypto layer: the store's keyring (one
//! wrapped data key per dedup domain, persisted through [`crate::storage`])
//! and the shipped [`crate::crypto::KeyProvider`], [`LocalKeyProvider`]
//! (named key-encryption keys in a passphrase-sealed key file). The engine
//! opens the keyring; an agent with its own key management plugs in its
//! own provider instead of `LocalKeyProvider`.

mod keyring;
mod local;

pub use local::{
    KdfParams, LocalKeyInfo, LocalKeyProvider, Passphrase, DEFAULT_LOCAL_KEY_ARN, PASSPHRASE_ENV,
};

pub(crate) use keyring::{has_encrypted_domains, Keyring, KEYRING_NAME};

/// Whether `arn` matches `arn:aws[a-z-]*:kms:.*:[0-9]{12}:key/.*`.
pub fn is_kms_key_arn(arn: &str) -> bool {
    let Some(rest) = arn.strip_prefix("arn:aws") else {
        return false;
    };
    let partition_end = rest.find(':').unwrap_or(rest.len());
    let (partition, rest) = rest.split_at(partition_end);
    if !partition
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b == b'-')
    {
        return false;
    }
    let Some(rest) = rest.strip_prefix(":kms:") else {
        return false;
    };
    // ".*:[0-9]{12}:key/.*": some ':' followed by 12 digits then ":key/".
    rest.match_indices(':').any(|(position, _)| {
        let after = &rest[position + 1..];
        after.len() >= 17
            && after.as_bytes()[..12].iter().all(u8::is_ascii_digit)
            && after[12..].starts_with(":key/")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_arn_pattern() {
        assert!(is_kms_key_arn(
            "arn:aws:kms:us-east-1:123456789012:key/abcd"
        ));
        assert!(is_kms_key_arn(
            "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/x"
        ));
        assert!(!is_kms_key_arn(
            "arn:aws:kms:us-east-1:12345678901:key/abcd"
        ));
        assert!(!is_kms_key_arn("arn:aws:s3:::bucket"));
        assert!(!is_kms_key_arn("arn:AWS:kms:r:123456789012:key/x"));
    }
}
