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

/// The error payload of a commit that another writer of a shared medium
/// beat: the storage has taken the other commit in, and what this writer
/// had not published yet is gone. The caller reads the state again and
/// redoes its change on top (DESIGN.md §18, "Many writers").
#[derive(Debug)]
pub struct HeadMoved;

impl std::fmt::Display for HeadMoved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("another writer committed first; the commit is redone on top of it")
    }
}

impl std::error::Error for HeadMoved {}

/// Whether `error` is a [`HeadMoved`].
pub fn is_head_moved(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<HeadMoved>().is_some())
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
        /// Whether the failure left the durable state of an open file
        /// unknown (a failed append or sync): the engine then refuses
        /// writes until reopened. A failure to open or create a file, or
        /// of an atomic replacement, leaves the old state intact and fails
        /// only the request (retryably).
        durability_unknown: bool,
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
    /// The store was opened read-only (a command that only reads): the
    /// write was not attempted.
    #[error("{message}")]
    ReadOnly {
        /// What was refused.
        message: String,
    },
    /// The medium lacks a guarantee the store relies on (an object store
    /// that ignores conditional writes): nothing was written, and nothing
    /// will be until the medium changes.
    #[error("{message}")]
    Unsupported {
        /// What is missing, and where.
        message: String,
    },
    /// An earlier I/O or sync failure left the durable state unknown; the
    /// engine refuses writes until the store is reopened.
    #[error("the store refused the write: an earlier failure ({cause}) left its durable state unknown; reopen the store")]
    Poisoned {
        /// The failure that poisoned the engine.
        cause: String,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(reason: ValidationReason, message: impl Into<String>) -> Error {
        Error::InvalidInput {
            reason,
            message: message.into(),
        }
    }

    /// An [`Error::Io`] that leaves the durable state as it was (an open,
    /// a create, a read, an atomic replacement): only the request fails.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
            durability_unknown: false,
        }
    }

    /// An [`Error::Io`] after which the durable content of an open file is
    /// unknown (a failed append or sync): the engine stops writing.
    pub fn io_durability_unknown(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
            durability_unknown: true,
        }
    }

    /// Shorthand for [`Error::Corrupted`].
    pub fn corrupted(location: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Corrupted {
            location: location.into(),
            detail: detail.into(),
        }
    }

    /// Whether another writer of a shared medium committed first (a
    /// [`HeadMoved`]): the change is redone on top of it.
    pub fn is_head_moved(&self) -> bool {
        matches!(self, Error::Io { source, .. } if is_head_moved(source))
    }

    /// Whether this error left the durable state unknown, so the engine
    /// must stop accepting writes.
    pub fn is_fatal_io(&self) -> bool {
        matches!(
            self,
            Error::Io {
                durability_unknown: true,
                ..
            }
        )
    }

    /// The same error with `note` added to its message (what the failure
    /// left behind, for example); the class is unchanged.
    pub fn with_note(self, note: &str) -> Error {
        let add = |text: String| format!("{text}; {note}");
        match self {
            Error::NotFound { message } => Error::NotFound {
                message: add(message),
            },
            Error::InvalidInput { reason, message } => Error::InvalidInput {
                reason,
                message: add(message),
            },
            Error::InvalidState { reason, message } => Error::InvalidState {
                reason,
                message: add(message),
            },
            Error::Conflict { message } => Error::Conflict {
                message: add(message),
            },
            Error::ConcurrentLimitExceeded { message } => Error::ConcurrentLimitExceeded {
                message: add(message),
            },
            Error::Corrupted { location, detail } => Error::Corrupted {
                location,
                detail: add(detail),
            },
            Error::UnsupportedVersion { what, version } => Error::UnsupportedVersion {
                what: add(what),
                version,
            },
            Error::Io {
                context,
                source,
                durability_unknown,
            } => Error::Io {
                context: add(context),
                source,
                durability_unknown,
            },
            Error::AccessDenied { message } => Error::AccessDenied {
                message: add(message),
            },
            Error::Throttled {
                per_resource,
                message,
            } => Error::Throttled {
                per_resource,
                message: add(message),
            },
            Error::KeyUnavailable { message } => Error::KeyUnavailable {
                message: add(message),
            },
            Error::InvalidArchive { archive, detail } => Error::InvalidArchive {
                archive,
                detail: add(detail),
            },
            Error::ReadOnly { message } => Error::ReadOnly {
                message: add(message),
            },
            Error::Unsupported { message } => Error::Unsupported {
                message: add(message),
            },
            Error::Poisoned { cause } => Error::Poisoned { cause: add(cause) },
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Damage found in a store's files: by opening it (a pack scanned past
/// unreadable bytes, an index or catalog copy that does not verify), by
/// `verify`, or by `repair`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Damage {
    /// The file, relative to the store (`packs/00000003.pack`).
    pub file: String,
    /// What is wrong, and where in the file.
    pub detail: String,
    /// Whether records may have been lost with it (unreadable bytes), as
    /// opposed to redundancy or derived state that was rebuilt from what
    /// survives (an index rebuilt from its pack, a catalog copy covered by
    /// the other one).
    pub data_lost: bool,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.detail)?;
        if self.data_lost {
            f.write_str(" (records there are lost)")?;
        }
        Ok(())
    }
}
