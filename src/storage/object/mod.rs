//! Objects in an S3-compatible bucket: immutable objects written
//! create-only, small ones replaced by compare-and-swap on their ETag.
//!
//! Two levels, as in object_store and SlateDB:
//!
//! - [`ObjectStore`], one request per call and every outcome typed: what
//!   the service answered, or that the answer was lost. Backends:
//!   [`S3ObjectStore`] (any S3-compatible service, through the AWS SDK) and
//!   [`MemoryObjectStore`] (in memory, injecting the faults a real server
//!   cannot produce on demand).
//! - [`ObjectClient`], the policy every caller goes through: retries with
//!   back-off, length checks on every read, and the resolution of ambiguous
//!   writes by the put id each write carries (see [`ObjectClient`]).
//!
//! # Contract of an [`ObjectStore`]
//!
//! - Names are `/`-separated relative paths of `[A-Za-z0-9._-]` components;
//!   a backend may prepend its own prefix.
//! - [`Precondition::Absent`] (`If-None-Match: *`) writes only if no object
//!   has the name; [`Precondition::Matches`] (`If-Match: ETAG`) only if the
//!   object exists with that ETag. Either check and the write are one atomic
//!   step: of racing conditional writes at most one succeeds; the others
//!   fail with [`ObjectError::PreconditionFailed`] or
//!   [`ObjectError::Conflict`]. A missing object under `Matches` fails with
//!   `PreconditionFailed` or `NotFound` (services differ).
//! - A successful write is durable and visible to every later request
//!   (S3's strong read-after-write consistency), its content never mixes
//!   old and new, and its put id is returned by [`ObjectStore::head`].
//! - A failure after the request may have been applied (a timeout, a reset
//!   connection, a 500) is [`ObjectError::Ambiguous`]: the write may or may
//!   not have landed.
//! - [`ObjectStore::list`] returns every object whose name starts with the
//!   prefix, sorted by name.

mod client;
mod memory;
#[cfg(feature = "s3")]
mod s3;

#[cfg(feature = "s3")]
pub(crate) use client::new_put_id;
pub use client::{Created, Deleted, ObjectClient, RequestCounts, RetryPolicy, Swapped};
pub use memory::{MemoryObjectStore, ObjectFault, ObjectOperation};
#[cfg(feature = "s3")]
pub(crate) use s3::{block_on, s3_client, s3_runtime};
#[cfg(feature = "s3")]
pub use s3::{S3ObjectStore, S3Settings, StaticCredentials};

use super::ReadFile;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// The user-metadata key of an object's put id (`x-amz-meta-` + this).
pub const PUT_ID_METADATA: &str = "blocksnap-put-id";

/// The condition of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Write only if no object has the name (`If-None-Match: *`).
    Absent,
    /// Write only if the object's current ETag is this (`If-Match`).
    Matches(String),
}

/// What [`ObjectStore::head`] reports about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHead {
    /// Length in bytes.
    pub len: u64,
    /// The service's ETag, quoted as the service sent it.
    pub etag: String,
    /// The put id the object was written with, if any.
    pub put_id: Option<String>,
}

/// One entry of [`ObjectStore::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    /// The object's name (without the backend's prefix).
    pub name: String,
    /// Length in bytes.
    pub len: u64,
}

/// The content of a write: bytes in memory, or a local file sent in parts
/// (a pack is uploaded from its staging file, never held whole in memory).
#[derive(Clone)]
pub enum Body {
    /// Bytes in memory.
    Bytes(Bytes),
    /// The first `len` bytes of a local file.
    File {
        /// The file.
        file: Arc<dyn ReadFile>,
        /// How many of its bytes.
        len: u64,
    },
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Bytes(bytes) => write!(f, "Body::Bytes({} bytes)", bytes.len()),
            Body::File { len, .. } => write!(f, "Body::File({len} bytes)"),
        }
    }
}

impl Body {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of `range` (within `0..len`).
    pub fn slice(&self, range: Range<u64>) -> std::io::Result<Bytes> {
        if range.end > self.len() || range.start > range.end {
            return Err(std::io::Error::other("body range out of bounds"));
        }
        match self {
            Body::Bytes(bytes) => Ok(bytes.slice(range.start as usize..range.end as usize)),
            Body::File { file, .. } => {
                let mut buffer = vec![0u8; (range.end - range.start) as usize];
                file.read_exact_at(range.start, &mut buffer)?;
                Ok(Bytes::from(buffer))
            }
        }
    }
}

/// How one request ended when it did not succeed, by what a caller can do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// No such object (404 `NoSuchKey`).
    #[error("no such object")]
    NotFound,
    /// The write's condition did not hold (412): the object exists
    /// (`Absent`), or has another ETag or is missing (`Matches`).
    #[error("precondition failed")]
    PreconditionFailed,
    /// A conditional write raced another (409 `ConditionalRequestConflict`):
    /// nothing was written; retry.
    #[error("conditional request conflict")]
    Conflict,
    /// The service refused for now (503 `SlowDown`, throttling) before
    /// applying anything; retry later.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The request may or may not have been applied (a timeout, a reset
    /// connection, a 5xx, a truncated reply).
    #[error("no answer: {0}")]
    Ambiguous(String),
    /// Credentials were refused (403).
    #[error("access denied: {0}")]
    Denied(String),
    /// The bucket does not exist.
    #[error("no such bucket: {0}")]
    NoSuchBucket(String),
    /// Any other refusal; retrying unchanged fails again.
    #[error("{0}")]
    Refused(String),
}

impl ObjectError {
    /// Whether the same request may succeed if sent again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ObjectError::Conflict | ObjectError::Throttled(_) | ObjectError::Ambiguous(_)
        )
    }
}

/// One S3-compatible bucket (or a prefix of one), one request per call. See
/// the module docs for the contract.
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// The object's bytes in `range` (the whole object when `None`). A
    /// range past the end is served up to the end.
    fn get(&self, name: &str, range: Option<Range<u64>>) -> Result<Bytes, ObjectError>;
    /// The object's length, ETag and put id.
    fn head(&self, name: &str) -> Result<ObjectHead, ObjectError>;
    /// Writes `body` under `name` if `precondition` holds, recording
    /// `put_id` in the object's metadata; returns the new ETag.
    fn put(
        &self,
        name: &str,
        body: &Body,
        precondition: &Precondition,
        put_id: &str,
    ) -> Result<String, ObjectError>;
    /// Deletes `name`, only if its ETag is `etag` when one is given.
    /// Deleting a missing object succeeds.
    fn delete(&self, name: &str, etag: Option<&str>) -> Result<(), ObjectError>;
    /// Every object whose name starts with `prefix`, sorted by name.
    fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, ObjectError>;
    /// A description for messages (`s3://bucket/prefix`, `memory`).
    fn location(&self) -> String;
}
