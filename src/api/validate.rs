//! Parameter rules of the EBS model and documentation, each with its error
//! class and `Reason`. Limits are checked before any work is done.

use super::types::{StartSnapshotRequest, Tag};
use crate::engine::{NewSnapshot, RequestedEncryption};
use crate::error::{Error, Result, ValidationReason};
use crate::ids::{Sha256Digest, SnapshotId, BLOCK_SIZE, MAX_VOLUME_SIZE_GIB};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Most tags per snapshot.
pub const MAX_TAGS: usize = 50;
/// Longest tag key, in characters.
pub const MAX_TAG_KEY_CHARS: usize = 127;
/// Longest tag value, in characters.
pub const MAX_TAG_VALUE_CHARS: usize = 255;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 255;
/// Longest client token, in characters.
pub const MAX_CLIENT_TOKEN_CHARS: usize = 255;
/// Longest KMS key ARN, in characters.
pub const MAX_KMS_KEY_ARN_CHARS: usize = 2048;
/// Timeout bounds, minutes.
pub const TIMEOUT_MINUTES: std::ops::RangeInclusive<i32> = 10..=4320;
pub use crate::engine::DEFAULT_TIMEOUT_MINUTES;
/// Page size bounds.
pub const MAX_RESULTS: std::ops::RangeInclusive<i32> = 100..=10_000;
/// Page size when none is given.
pub const DEFAULT_MAX_RESULTS: usize = 100;

fn invalid(reason: ValidationReason, message: impl Into<String>) -> Error {
    Error::invalid(reason, message)
}

fn parameter(message: impl Into<String>) -> Error {
    invalid(ValidationReason::InvalidParameterValue, message)
}

/// A snapshot id: malformed ids are a ValidationException; well-formed ids
/// this store never issued are ResourceNotFound.
pub fn snapshot_id(field: &str, text: &str) -> Result<SnapshotId> {
    let well_formed = (1..=64).contains(&text.len())
        && text.strip_prefix("snap-").is_some_and(|hex| {
            !hex.is_empty() && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
    if !well_formed {
        return Err(invalid(
            ValidationReason::InvalidSnapshotId,
            format!("{field} '{text}' is not a valid snapshot id (snap- followed by hex digits)."),
        ));
    }
    SnapshotId::parse(text).ok_or_else(|| Error::NotFound {
        message: format!("The snapshot '{text}' does not exist."),
    })
}

/// A Base64 SHA-256 checksum.
pub fn checksum(field: &str, text: &str) -> Result<Sha256Digest> {
    let malformed = || {
        parameter(format!(
            "{field} must be the Base64 encoding of a 32-byte SHA-256 digest."
        ))
    };
    if text.len() > 64 {
        return Err(malformed());
    }
    let bytes = STANDARD.decode(text).map_err(|_| malformed())?;
    let digest: [u8; 32] = bytes.try_into().map_err(|_| malformed())?;
    Ok(Sha256Digest(digest))
}

/// The checksum algorithm: only `SHA256` exists.
pub fn checksum_algorithm(text: &str) -> Result<()> {
    if text == "SHA256" {
        Ok(())
    } else {
        Err(parameter(format!(
            "ChecksumAlgorithm '{text}' is not supported; use SHA256."
        )))
    }
}

/// A block index: non-negative (the volume bound is checked by the engine).
pub fn block_index(value: i32) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        invalid(
            ValidationReason::InvalidBlock,
            format!("BlockIndex {value} is negative."),
        )
    })
}

/// Page size: over 10000 is refused; below 100 is raised to 100, as the
/// service does ("returns at least 100").
pub fn max_results(value: Option<i32>) -> Result<usize> {
    match value {
        None => Ok(DEFAULT_MAX_RESULTS),
        Some(value) if value < 1 || value > *MAX_RESULTS.end() => Err(parameter(format!(
            "MaxResults {value} is outside 100..=10000."
        ))),
        Some(value) => {
            Ok(usize::try_from(value.max(*MAX_RESULTS.start())).unwrap_or(DEFAULT_MAX_RESULTS))
        }
    }
}

/// StartingBlockIndex: non-negative.
pub fn starting_block_index(value: Option<i32>) -> Result<u32> {
    match value {
        None => Ok(0),
        Some(value) => u32::try_from(value)
            .map_err(|_| parameter(format!("StartingBlockIndex {value} is negative."))),
    }
}

/// PutSnapshotBlock's length and progress fields.
pub fn block_shape(data_length: i32, body_length: usize, progress: Option<i32>) -> Result<()> {
    if data_length != BLOCK_SIZE as i32 {
        return Err(parameter(format!(
            "DataLength {data_length} is invalid; it must be {BLOCK_SIZE}."
        )));
    }
    if body_length != BLOCK_SIZE {
        return Err(invalid(
            ValidationReason::InvalidBlock,
            format!("The block data is {body_length} bytes; DataLength says {data_length}."),
        ));
    }
    if let Some(progress) = progress {
        if !(0..=100).contains(&progress) {
            return Err(parameter(format!(
                "Progress {progress} is outside 0..=100."
            )));
        }
    }
    Ok(())
}

fn chars(text: &str) -> usize {
    text.chars().count()
}

/// A snapshot's tags: at most 50, keys of 1..=127 and values of at most
/// 255 characters.
pub fn tags(tags: &[Tag]) -> Result<Vec<(String, String)>> {
    let bad = |message: String| invalid(ValidationReason::InvalidTag, message);
    if tags.len() > MAX_TAGS {
        return Err(bad(format!(
            "{} tags given; at most {MAX_TAGS} are allowed.",
            tags.len()
        )));
    }
    tags.iter()
        .map(|tag| {
            if tag.key.is_empty() || chars(&tag.key) > MAX_TAG_KEY_CHARS {
                return Err(bad(format!(
                    "Tag key must be 1 to {MAX_TAG_KEY_CHARS} characters."
                )));
            }
            if chars(&tag.value) > MAX_TAG_VALUE_CHARS {
                return Err(bad(format!(
                    "Tag value must be at most {MAX_TAG_VALUE_CHARS} characters."
                )));
            }
            Ok((tag.key.clone(), tag.value.clone()))
        })
        .collect()
}

/// A snapshot's description: 1..=255 characters.
pub fn description(text: &str) -> Result<()> {
    if text.is_empty() || chars(text) > MAX_DESCRIPTION_CHARS {
        return Err(parameter(format!(
            "Description must be 1 to {MAX_DESCRIPTION_CHARS} characters."
        )));
    }
    Ok(())
}

/// StartSnapshot's rules, producing the engine's parameters.
pub(crate) fn start_snapshot(request: &StartSnapshotRequest) -> Result<NewSnapshot> {
    if request.volume_size < 1 || request.volume_size as u64 > MAX_VOLUME_SIZE_GIB {
        return Err(invalid(
            ValidationReason::InvalidVolumeSize,
            format!(
                "VolumeSize {} is outside 1..={MAX_VOLUME_SIZE_GIB} GiB.",
                request.volume_size
            ),
        ));
    }
    let timeout_minutes = match request.timeout {
        None => DEFAULT_TIMEOUT_MINUTES,
        Some(value) if TIMEOUT_MINUTES.contains(&value) => value as u32,
        Some(value) => {
            return Err(parameter(format!(
                "Timeout {value} is outside 10..=4320 minutes."
            )))
        }
    };
    let tags = tags(&request.tags)?;
    if let Some(description) = &request.description {
        self::description(description)?;
    }
    if let Some(token) = &request.client_token {
        if token.is_empty()
            || chars(token) > MAX_CLIENT_TOKEN_CHARS
            || token.chars().any(char::is_whitespace)
        {
            return Err(parameter(format!(
                "ClientToken must be 1 to {MAX_CLIENT_TOKEN_CHARS} characters without whitespace."
            )));
        }
    }
    if let Some(arn) = &request.kms_key_arn {
        if chars(arn) > MAX_KMS_KEY_ARN_CHARS || !crate::keys::is_kms_key_arn(arn) {
            return Err(invalid(
                ValidationReason::InvalidCustomerKey,
                format!("KmsKeyArn '{arn}' is not a KMS key ARN."),
            ));
        }
    }
    let parent = request
        .parent_snapshot_id
        .as_deref()
        .map(|id| snapshot_id("ParentSnapshotId", id))
        .transpose()?;
    if request.encrypted == Some(true) && parent.is_some() {
        return Err(parameter(
            "Encrypted cannot be specified together with ParentSnapshotId.",
        ));
    }
    let encryption = match (&request.kms_key_arn, request.encrypted) {
        (Some(arn), _) => RequestedEncryption::Key(arn.clone()),
        (None, Some(true)) => RequestedEncryption::DefaultKey,
        (None, _) => RequestedEncryption::None,
    };
    Ok(NewSnapshot {
        parent,
        volume_size_gib: request.volume_size as u64,
        timeout_minutes,
        client_token: request.client_token.clone(),
        description: request.description.clone(),
        tags,
        encryption,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids() {
        assert!(matches!(
            snapshot_id("f", "snap-0123456789abcdef"),
            Ok(SnapshotId(0x0123456789abcdef))
        ));
        assert!(matches!(
            snapshot_id("f", "snap-0123"),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            snapshot_id("f", "snap-XYZ"),
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            snapshot_id("f", "vol-1"),
            Err(Error::InvalidInput { .. })
        ));
    }
}
