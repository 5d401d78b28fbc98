//! The one public error type. Its variants say what the caller can do about a
//! failure; `api::ebs_error` is the single place that maps them to EBS error
//! classes.

use std::fmt;

/// `Reason` values of the EBS `ValidationException` (service model enum).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ValidationReason {
    /// A block token is malformed, forged, expired or belongs elsewhere.
    InvalidBlockToken,
    /// A page token is malformed, forged, expired or belongs elsewhere.
    InvalidPageToken,
    /// A snapshot id does not have the `snap-<hex>` form, or names a snapshot
    /// whose state does not allow the operation.
    InvalidSnapshotId,
    /// ListChangedBlocks on snapshots of different lineages.
    UnrelatedSnapshots,
    /// A block's index, length, data or checksum is invalid.
    InvalidBlock,
    /// A tag breaks the tag limits.
    InvalidTag,
    /// A parameter value is out of range or malformed.
    InvalidParameterValue,
    /// VolumeSize out of range, or smaller than the parent's.
    InvalidVolumeSize,
    /// The encryption parameters cannot be honoured.
    InvalidCustomerKey,
    /// A request whose parameters contradict each other.
    InvalidDependencyRequest,
    /// A pending snapshot timed out before it was completed.
    WriteRequestTimeout,
}

impl ValidationReason {
    /// The model's enum value, as sent in the `Reason` member.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationReason::InvalidBlockToken => "INVALID_BLOCK_TOKEN",
            ValidationReason::InvalidPageToken => "INVALID_PAGE_TOKEN",
            ValidationReason::InvalidSnapshotId => "INVALID_SNAPSHOT_ID",
            ValidationReason::UnrelatedSnapshots => "UNRELATED_SNAPSHOTS",
            ValidationReason::InvalidBlock => "INVALID_BLOCK",
            ValidationReason::InvalidTag => "INVALID_TAG",
            ValidationReason::InvalidParameterValue => "INVALID_PARAMETER_VALUE",
            ValidationReason::InvalidVolumeSize => "INVALID_VOLUME_SIZE",
            ValidationReason::InvalidCustomerKey => "INVALID_CUSTOMER_KEY",
            ValidationReason::InvalidDependencyRequest => "INVALID_DEPENDENCY_REQUEST",
            ValidationReason::WriteRequestTimeout => "WRITE_REQUEST_TIMEOUT",
        }
    }
}

impl fmt::Display for ValidationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named snapshot does not exist (or is not visible to the caller).
    #[error("{message}")]
    NotFound {
        /// Human-readable explanation.
        message: String,
    },
    /// The request is malformed or breaks a limit; retrying it unchanged fails again.
    #[error("{message}")]
    InvalidInput {
        /// The EBS `Reason`.
        reason: ValidationReason,
        /// Human-readable explanation.
        message: String,
    },
    /// The operation is not allowed in the snapshot's current state
    /// (for example a put on a completed snapshot, or a read of a pending one).
    #[error("{message}")]
    InvalidState {
        /// The EBS `Reason`.
        reason: ValidationReason,
        /// Human-readable explanation.
        message: String,
    },
    /// A `ClientToken` was reused with different parameters.
    #[error("{message}")]
    Conflict {
        /// Human-readable explanation.
        message: String,
    },
    /// Too many pending snapshots at once.
    #[error("{message}")]
    ConcurrentLimitExceeded {
        /// Human-readable explanation.
        message: String,
    },
    /// Stored bytes failed a check (crc, hash, length, structure). The data is
    /// never returned.
    #[error("corrupted data in {location}: {detail}")]
    Corrupted {
        /// Which file or object, and where in it.
        location: String,
        /// What check failed.
        detail: String,
    },
    /// A file was written by a format version this build cannot read.
    #[error("unsupported format version {version} in {what}")]
    UnsupportedVersion {
        /// Which structure.
        what: String,
        /// The version found.
        version: u32,
    },
    /// The medium failed.
    #[error("I/O error during {context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The request is not authenticated: no or a bad signature, an unknown
    /// access key, or a timestamp too far from the server's clock.
    #[error("{message}")]
    AccessDenied {
        /// Human-readable explanation (never a secret).
        message: String,
    },
    /// A request over its rate quota; the SDKs retry it with back-off.
    #[error("{message}")]
    Throttled {
        /// Whether the quota of one snapshot (not of the account) was hit.
        per_resource: bool,
        /// Human-readable explanation.
        message: String,
    },
    /// An encryption key exists but cannot be used: the key provider refused
    /// it or failed, a wrapped data key does not authenticate, or the store
    /// holds encrypted snapshots and no provider was configured.
    #[error("{message}")]
    KeyUnavailable {
        /// Human-readable explanation (never key material).
        message: String,
    },
    /// A snapshot archive (export/import) breaks its format: it is not a
    /// zip, an entry is misnamed, misplaced, duplicated, missing, oversized
    /// or corrupt, or the manifest contradicts the data. Nothing was
    /// imported.
    #[error("invalid archive {archive}: {detail}")]
    InvalidArchive {
        /// The archive's path or URL.
        archive: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An earlier I/O or sync failure left the durable state unknown; the
    /// engine refuses writes until the store is reopened.
    #[error("the store refused the write: an earlier I/O failure left its durable state unknown; reopen the store")]
    Poisoned,
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(reason: ValidationReason, message: impl Into<String>) -> Error {
        Error::InvalidInput {
            reason,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Corrupted`].
    pub fn corrupted(location: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Corrupted {
            location: location.into(),
            detail: detail.into(),
        }
    }

    /// Whether this error means the medium can no longer be trusted, so the
    /// engine must stop accepting writes.
    pub fn is_fatal_io(&self) -> bool {
        matches!(self, Error::Io { .. })
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
