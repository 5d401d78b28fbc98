//! Portable snapshot archives, as AWS SimSpace Weaver's CreateSnapshot
//! writes them: a completed snapshot becomes one self-verifying zip file
//! at `PREFIX/snapshot/NAME-YYMMdd-HHmm-ss.zip` in a bucket (a local
//! directory, or an S3-compatible bucket), and an archive becomes a new
//! completed snapshot again, in the same store or another.
//!
//! - [`export`] streams the archive (memory stays bounded whatever the
//!   volume size) and publishes it create-only: an exclusive hard link in a
//!   directory, `If-None-Match: *` on S3, with multipart uploads aborted on
//!   failure so nothing partial is ever visible.
//! - [`import`] checks every block against the manifest's SHA-256 and the
//!   root hash before it commits the snapshot, and on any failure cancels
//!   and deletes it. Hostile archives (escaping names, oversized or
//!   inflating entries, duplicates, missing entries, contradictions,
//!   truncation) are refused with [`Error::InvalidArchive`] after bounded
//!   work.
//!
//! DESIGN.md §4.12 specifies the archive byte by byte.

mod export;
mod import;
mod location;
pub mod manifest;
#[cfg(feature = "s3")]
mod s3;

#[cfg(feature = "s3")]
pub use crate::storage::object::S3Settings;
pub use export::{export, ExportOptions, ExportOutcome, ExportReport};
pub use import::{import, inspect, ImportOptions, ImportOutcome, ImportReport};
pub use location::{ArchiveReader, Bucket, ObjectUpload};
#[cfg(feature = "s3")]
pub use s3::{S3Bucket, S3ObjectReader};

use crate::error::{Error, Result, ValidationReason};

/// Longest archive name (before the timestamp).
pub const MAX_NAME_LEN: usize = 128;
/// Longest key prefix.
pub const MAX_PREFIX_LEN: usize = 512;

fn invalid(message: String) -> Error {
    Error::invalid(ValidationReason::InvalidParameterValue, message)
}

/// Checks an archive name: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting
/// with a dot.
pub fn validate_name(name: &str) -> Result<&str> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    if valid {
        Ok(name)
    } else {
        Err(invalid(format!(
            "archive name '{name}' must be 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ - and not start with a dot"
        )))
    }
}

/// Checks a key prefix and returns it without a trailing `/`: segments of
/// S3's safe characters (`A-Z a-z 0-9 ! - _ . * ' ( )`) joined by `/`, none
/// empty, `.` or `..`, at most 512 bytes. Such a prefix is also a relative
/// path that stays inside a directory bucket.
pub fn validate_prefix(prefix: &str) -> Result<&str> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    let segment_ok = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|byte| {
                byte.is_ascii_alphanumeric()
                    || matches!(byte, b'!' | b'-' | b'_' | b'.' | b'*' | b'\'' | b'(' | b')')
            })
    };
    if trimmed.len() <= MAX_PREFIX_LEN && trimmed.split('/').all(segment_ok) {
        Ok(trimmed)
    } else {
        Err(invalid(format!(
            "object key prefix '{prefix}' must be /-separated segments of A-Z a-z 0-9 ! - _ . * ' ( ), none empty, '.' or '..', at most {MAX_PREFIX_LEN} bytes"
        )))
    }
}

/// Checks an S3 bucket name against S3's naming rules: 3 to 63 lowercase
/// letters, digits, dots and hyphens, starting and ending with a letter or
/// digit.
pub fn validate_bucket_name(bucket: &str) -> Result<&str> {
    let bytes = bucket.as_bytes();
    let edge_ok = |byte: Option<&u8>| {
        byte.is_some_and(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
    };
    let valid = (3..=63).contains(&bytes.len())
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes.iter().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'.' | b'-')
        })
        && !bucket.contains("..");
    if valid {
        Ok(bucket)
    } else {
        Err(invalid(format!(
            "bucket name '{bucket}' must be 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
        )))
    }
}

/// The object key of an archive written at `millis` (epoch, UTC):
/// `PREFIX/snapshot/NAME-YYMMdd-HHmm-ss.zip`, or `snapshot/NAME-….zip`
/// without a prefix. `prefix` and `name` must be valid already.
pub fn archive_key(prefix: Option<&str>, name: &str, millis: u64) -> Result<String> {
    let time = utc(millis)?;
    let stamp = time
        .format(time::macros::format_description!(
            "[year repr:last_two][month][day]-[hour][minute]-[second]"
        ))
        .map_err(|error| invalid(format!("formatting the archive time: {error}")))?;
    let file = format!("snapshot/{name}-{stamp}.zip");
    Ok(match prefix {
        Some(prefix) if !prefix.is_empty() => format!("{prefix}/{file}"),
        _ => file,
    })
}

/// Epoch milliseconds as a UTC time.
fn utc(millis: u64) -> Result<time::OffsetDateTime> {
    let nanos = i128::from(millis) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|error| invalid(format!("time {millis} ms is out of range: {error}")))
}

/// Epoch milliseconds as RFC 3339 UTC text.
fn rfc3339(millis: u64) -> Result<String> {
    utc(millis)?
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|error| invalid(format!("formatting time {millis}: {error}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_create_snapshot() {
        // 2026-03-04 05:06:07 UTC.
        let millis = 1_772_600_767_000;
        assert_eq!(
            archive_key(Some("backups/vm1"), "disk", millis).unwrap(),
            "backups/vm1/snapshot/disk-260304-0506-07.zip"
        );
        assert_eq!(
            archive_key(None, "disk", millis).unwrap(),
            "snapshot/disk-260304-0506-07.zip"
        );
    }

    #[test]
    fn names_prefixes_and_buckets_are_checked() {
        assert!(validate_name("snap-0123abcd").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", "../x", &"n".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_prefix("a/b/").unwrap(), "a/b");
        for bad in ["/abs", "a//b", "../up", "a/./b", "a\\b", "a b", "", "ü"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
        assert!(validate_bucket_name("my-bucket.1").is_ok());
        for bad in ["ab", "Upper", "-edge", "edge-", "a..b", "under_score"] {
            assert!(validate_bucket_name(bad).is_err(), "{bad}");
        }
    }
}
