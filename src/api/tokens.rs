//! Block and page tokens: Base64, bound to their snapshot and position,
//! carrying their expiry, authenticated with a MAC keyed from the store's
//! secret (blake3 keyed hash, truncated to 128 bits).

use crate::error::{Error, Result, ValidationReason};
use crate::format::token::{TokenBody, TOKEN_MAC_SIZE};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Longest token the model allows.
pub const MAX_TOKEN_LEN: usize = 256;
/// Block tokens live 7 days.
pub const BLOCK_TOKEN_LIFETIME_SECS: u64 = 7 * 24 * 3600;
/// Page tokens live 60 minutes.
pub const PAGE_TOKEN_LIFETIME_SECS: u64 = 3600;
/// Page token kind for ListSnapshotBlocks.
pub const PAGE_KIND_LIST: u8 = 2;
/// Page token kind for ListChangedBlocks.
pub const PAGE_KIND_CHANGED: u8 = 3;
/// Page token kind for EC2's DescribeSnapshots.
pub const PAGE_KIND_DESCRIBE_SNAPSHOTS: u8 = 4;
/// Page token kind for EC2's DescribeTags.
pub const PAGE_KIND_DESCRIBE_TAGS: u8 = 5;

const MAC_CONTEXT: &str = "blocksnap 2026-11 token mac v1";

/// Signs and checks tokens for one store.
pub(crate) struct TokenSigner {
    key: [u8; 32],
}

impl TokenSigner {
    pub(crate) fn new(secret: &[u8; 32]) -> TokenSigner {
        TokenSigner {
            key: blake3::derive_key(MAC_CONTEXT, secret),
        }
    }

    fn mac(&self, body: &[u8]) -> [u8; TOKEN_MAC_SIZE] {
        let full = blake3::keyed_hash(&self.key, body);
        let mut mac = [0u8; TOKEN_MAC_SIZE];
        mac.copy_from_slice(&full.as_bytes()[..TOKEN_MAC_SIZE]);
        mac
    }

    /// Encodes and signs a token.
    pub(crate) fn issue(&self, body: &TokenBody) -> String {
        let mut bytes = body.encode();
        let mac = self.mac(&bytes);
        bytes.extend_from_slice(&mac);
        STANDARD.encode(bytes)
    }

    /// Decodes a token and checks its MAC and expiry; `reason` is the error
    /// reason for any failure.
    pub(crate) fn check(
        &self,
        token: &str,
        now_secs: u64,
        reason: ValidationReason,
    ) -> Result<TokenBody> {
        let invalid = |why: &str| Error::invalid(reason, format!("The token is invalid: {why}."));
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(invalid("wrong length"));
        }
        let bytes = STANDARD.decode(token).map_err(|_| invalid("not Base64"))?;
        let (body, signed, mac) = TokenBody::decode(&bytes).map_err(|_| invalid("malformed"))?;
        let expected = self.mac(signed);
        // Constant-time comparison: fold every byte difference.
        let difference = expected
            .iter()
            .zip(mac.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err(invalid("not issued by this store"));
        }
        let expiry = match body {
            TokenBody::Block { expiry_secs, .. } | TokenBody::Page { expiry_secs, .. } => {
                expiry_secs
            }
        };
        if now_secs >= expiry {
            return Err(invalid("expired"));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_altered_expired_and_foreign_tokens_fail() {
        let signer = TokenSigner::new(&[1; 32]);
        let body = TokenBody::Block {
            snapshot: 5,
            index: 9,
            expiry_secs: 1000,
        };
        let token = signer.issue(&body);
        assert!(token.len() <= MAX_TOKEN_LEN);
        assert_eq!(
            signer
                .check(&token, 999, ValidationReason::InvalidBlockToken)
                .ok(),
            Some(body)
        );
        assert!(signer
            .check(&token, 1000, ValidationReason::InvalidBlockToken)
            .is_err());
        let other_store = TokenSigner::new(&[2; 32]);
        assert!(other_store
            .check(&token, 0, ValidationReason::InvalidBlockToken)
            .is_err());
        let mut raw = STANDARD.decode(&token).expect("base64");
        for position in 0..raw.len() {
            raw[position] ^= 1;
            let altered = STANDARD.encode(&raw);
            assert!(signer
                .check(&altered, 0, ValidationReason::InvalidBlockToken)
                .is_err());
            raw[position] ^= 1;
        }
        assert!(signer
            .check("!!!", 0, ValidationReason::InvalidBlockToken)
            .is_err());
        assert!(signer
            .check(&"A".repeat(300), 0, ValidationReason::InvalidBlockToken)
            .is_err());
    }
}
