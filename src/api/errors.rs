//! The one translation of [`Error`] into an EBS error: class name, HTTP
//! status and `Reason`. The match is exhaustive so a new variant forces a
//! decision here.

use crate::error::Error;

/// An error as the EBS wire protocol expresses it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EbsError {
    /// The error shape name (`x-amzn-ErrorType`), e.g. `ValidationException`.
    pub code: &'static str,
    /// The model's HTTP status for that shape.
    pub http_status: u16,
    /// The `Reason` member, where one of the model's values fits.
    pub reason: Option<&'static str>,
    /// The `Message` member.
    pub message: String,
}

/// Maps an engine error to its EBS error.
pub fn ebs_error(error: &Error) -> EbsError {
    let message = error.to_string();
    let (code, http_status, reason) = match error {
        Error::NotFound { .. } => ("ResourceNotFoundException", 404, Some("SNAPSHOT_NOT_FOUND")),
        Error::InvalidInput { reason, .. } | Error::InvalidState { reason, .. } => {
            ("ValidationException", 400, Some(reason.as_str()))
        }
        Error::Conflict { .. } => ("ConflictException", 409, None),
        // A write to a store opened read-only: retrying cannot help.
        Error::ReadOnly { .. } => ("ValidationException", 400, None),
        Error::InvalidArchive { .. } => (
            "ValidationException",
            400,
            Some(crate::ValidationReason::InvalidParameterValue.as_str()),
        ),
        Error::ConcurrentLimitExceeded { .. } => ("ConcurrentLimitExceededException", 400, None),
        Error::AccessDenied { .. } => ("AccessDeniedException", 403, Some("UNAUTHORIZED_ACCOUNT")),
        Error::Throttled { per_resource, .. } => (
            "RequestThrottledException",
            400,
            Some(if *per_resource {
                "RESOURCE_LEVEL_THROTTLE"
            } else {
                "ACCOUNT_THROTTLED"
            }),
        ),
        Error::KeyUnavailable { .. } => (
            "AccessDeniedException",
            403,
            Some("DEPENDENCY_ACCESS_DENIED"),
        ),
        Error::Corrupted { .. }
        | Error::UnsupportedVersion { .. }
        | Error::Io { .. }
        | Error::Unsupported { .. }
        | Error::Poisoned { .. } => ("InternalServerException", 500, None),
    };
    EbsError {
        code,
        http_status,
        reason,
        message,
    }
}
