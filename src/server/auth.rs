//! Who a request acts for: AWS Signature Version 4 checked against the
//! operator's credentials. The canonical request and the signature are
//! computed by `aws-sigv4` (the signer of the AWS SDK for Rust) over exactly
//! the headers the client signed; this module only reads the
//! `Authorization` header, looks up the secret, bounds the clock skew and
//! compares signatures in constant time.

use crate::error::{Error, Result, ValidationReason};
use crate::ids::Sha256Digest;
use aws_sigv4::http_request::{
    sign, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use axum::http::{HeaderMap, Method, Uri};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The signing name of the EBS service.
pub const EBS_SERVICE: &str = "ebs";
/// The signing name of the EC2 service (its Query API on the same port).
pub const EC2_SERVICE: &str = "ec2";
/// Largest difference between a request's `X-Amz-Date` and the server's
/// clock that is accepted (AWS allows 15 minutes).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// The payload hash of a body the client did not sign (PutSnapshotBlock).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// One access key: its secret and the owner it acts for.
#[derive(Clone)]
struct Key {
    secret: String,
    owner: String,
}

/// The access keys a server accepts. They can be replaced while the
/// server runs ([`Credentials::replace_with`], `serve`'s SIGHUP): each
/// request is checked against the keys in force when it arrives.
#[derive(Default)]
pub struct Credentials {
    keys: parking_lot::RwLock<HashMap<String, Key>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_keys", &self.len())
            .finish()
    }
}

impl Credentials {
    /// Parses `ACCESS_KEY_ID SECRET_ACCESS_KEY OWNER_ID` lines; blank lines
    /// and `#` comments are ignored. An access key may appear once.
    pub fn parse(text: &str) -> Result<Credentials> {
        let mut credentials = Credentials::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [access, secret, owner] = fields[..] else {
                return Err(Error::invalid(
                    ValidationReason::InvalidParameterValue,
                    format!(
                        "credentials line {}: expected ACCESS_KEY_ID SECRET_ACCESS_KEY OWNER_ID",
                        number + 1
                    ),
                ));
            };
            credentials.add(access, secret, owner)?;
        }
        Ok(credentials)
    }

    /// Reads a credentials file (see [`Credentials::parse`]).
    pub fn from_file(path: &Path) -> Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| Error::io(format!("reading {}", path.display()), error))?;
        Credentials::parse(&text)
    }

    /// Adds one access key.
    pub fn add(&mut self, access_key_id: &str, secret: &str, owner: &str) -> Result<()> {
        let valid = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
        if !valid(access_key_id) || !valid(secret) || !valid(owner) || owner.len() > 24 {
            return Err(Error::invalid(
                ValidationReason::InvalidParameterValue,
                format!("the credentials of access key '{access_key_id}' are malformed (owner ids are 1 to 24 characters)"),
            ));
        }
        let key = Key {
            secret: secret.to_string(),
            owner: owner.to_string(),
        };
        if self
            .keys
            .get_mut()
            .insert(access_key_id.to_string(), key)
            .is_some()
        {
            return Err(Error::invalid(
                ValidationReason::InvalidParameterValue,
                format!("access key '{access_key_id}' is listed twice"),
            ));
        }
        Ok(())
    }

    /// Puts `other`'s keys in place of these, at once: requests already
    /// checked are unaffected, later ones see only the new keys.
    pub fn replace_with(&self, other: Credentials) {
        *self.keys.write() = other.keys.into_inner();
    }

    /// How many access keys there are.
    pub fn len(&self) -> usize {
        self.keys.read().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.read().is_empty()
    }
}

fn denied(message: impl Into<String>) -> Error {
    Error::AccessDenied {
        message: message.into(),
    }
}

/// The request's body as far as the signature is concerned.
pub enum Payload<'a> {
    /// The whole body, hashed into the canonical request.
    Bytes(&'a [u8]),
    /// The SHA-256 the caller computed from the whole body (a block,
    /// whose hash the put needs too: one pass over it, not three).
    Hashed(&'a Sha256Digest),
    /// A body the client marked `UNSIGNED-PAYLOAD` (not read yet).
    Unsigned,
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| denied("Only AWS4-HMAC-SHA256 signatures are accepted."))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(value) = part.strip_prefix("Credential=") {
            credential = Some(value);
        } else if let Some(value) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(value);
        } else if let Some(value) = part.strip_prefix("Signature=") {
            signature = Some(value);
        }
    }
    let malformed = || denied("The Authorization header is malformed.");
    let scope: Vec<&str> = credential.ok_or_else(malformed)?.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(malformed());
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed_headers.ok_or_else(malformed)?.split(';').collect(),
        signature: signature.ok_or_else(malformed)?,
    })
}

/// Parses an `X-Amz-Date` value, `YYYYMMDDTHHMMSSZ` (UTC), strictly:
/// exactly those 16 characters, a real calendar date and time.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    // `time` accepts a sign and more year digits; the header has neither.
    if text.len() != 16 || !text.bytes().take(8).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let instant = time::PrimitiveDateTime::parse(text, &format).ok()?;
    Some(instant.assume_utc().into())
}

/// A request whose `Authorization` header passed every check that needs
/// no body: a known access key, the scope, the clock, the signed headers
/// present. Checked before a byte of the body is read, so a request
/// without a known key costs the server nothing more.
pub struct Presented<'a> {
    authorization: Authorization<'a>,
    key: Key,
    signed_at: SystemTime,
    signed: Vec<(&'a str, &'a str)>,
}

/// The header checks of [`authenticate`]: everything but the signature
/// itself. A body the client marked `UNSIGNED-PAYLOAD` must have its
/// integrity headers, `x-amz-checksum` and `x-amz-data-length`, signed:
/// otherwise nothing would authenticate the block.
pub fn check_headers<'a>(
    credentials: &'a Credentials,
    headers: &'a HeaderMap,
    service: &str,
    now: SystemTime,
) -> Result<Presented<'a>> {
    let authorization = headers
        .get("authorization")
        .ok_or_else(|| denied("The request is not signed (no Authorization header)."))?
        .to_str()
        .map_err(|_| denied("The Authorization header is malformed."))?;
    let authorization = parse_authorization(authorization)?;
    let key = credentials
        .keys
        .read()
        .get(authorization.access_key_id)
        .cloned()
        .ok_or_else(|| {
            denied(format!(
                "The access key '{}' is not known.",
                authorization.access_key_id
            ))
        })?;
    if authorization.service != service {
        return Err(denied(format!(
            "The signature is for service '{}', not '{service}'.",
            authorization.service
        )));
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| denied("The request has no X-Amz-Date header."))?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| denied("X-Amz-Date is malformed."))?;
    if !amz_date.starts_with(authorization.date) || authorization.date.len() != 8 {
        return Err(denied(
            "The credential scope's date differs from X-Amz-Date.",
        ));
    }
    let skew = now
        .duration_since(signed_at)
        .unwrap_or_else(|error| error.duration());
    if skew > MAX_CLOCK_SKEW {
        return Err(denied(format!(
            "The request was signed at {amz_date}, more than 15 minutes from the server's time."
        )));
    }
    let unsigned = headers
        .get("x-amz-content-sha256")
        .is_some_and(|value| value.as_bytes() == UNSIGNED_PAYLOAD.as_bytes());
    let required: &[&str] = if unsigned {
        &["host", "x-amz-date", "x-amz-checksum", "x-amz-data-length"]
    } else {
        &["host", "x-amz-date"]
    };
    for required in required {
        if !authorization.signed_headers.contains(required) {
            return Err(denied(format!(
                "The signature must cover the {required} header{}.",
                if unsigned {
                    " (the body is not signed, so its checksum and length must be)"
                } else {
                    ""
                }
            )));
        }
    }
    let mut signed = Vec::with_capacity(authorization.signed_headers.len());
    for name in &authorization.signed_headers {
        let values: Vec<&str> = headers
            .get_all(*name)
            .iter()
            .map(|value| {
                value
                    .to_str()
                    .map_err(|_| denied(format!("The signed header {name} is not ASCII.")))
            })
            .collect::<Result<_>>()?;
        if values.is_empty() {
            return Err(denied(format!("The signed header {name} is missing.")));
        }
        for value in values {
            signed.push((*name, value));
        }
    }
    Ok(Presented {
        authorization,
        key,
        signed_at,
        signed,
    })
}

/// The signed body hash `declared`, if it is the body's `sha256`.
fn checked_payload_hash(sha256: &Sha256Digest, declared: &str) -> Result<SignableBody<'static>> {
    if crate::codec::hex_bytes(&sha256.0) != declared {
        return Err(denied("X-Amz-Content-SHA256 does not match the body."));
    }
    Ok(SignableBody::Precomputed(declared.to_string()))
}

/// Checks the signature of a request whose headers passed
/// [`check_headers`], over `payload`; returns the owner it acts for.
pub fn verify_signature(
    presented: Presented<'_>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    payload: Payload<'_>,
) -> Result<String> {
    let Presented {
        authorization,
        key,
        signed_at,
        signed,
    } = presented;
    let content_sha256 = headers
        .get("x-amz-content-sha256")
        .and_then(|value| value.to_str().ok());
    let body = match (payload, content_sha256) {
        (Payload::Unsigned, Some(UNSIGNED_PAYLOAD)) => SignableBody::UnsignedPayload,
        (Payload::Unsigned, _) => {
            return Err(denied(
                "Only PutSnapshotBlock may send an unsigned payload.",
            ));
        }
        (Payload::Bytes(_) | Payload::Hashed(_), Some(UNSIGNED_PAYLOAD)) => {
            return Err(denied(
                "Only PutSnapshotBlock may send an unsigned payload.",
            ));
        }
        // The declared hash, once checked against the body's, is what the
        // signer would compute from the body again.
        (Payload::Bytes(bytes), Some(declared)) => {
            checked_payload_hash(&crate::codec::sha256(bytes), declared)?
        }
        (Payload::Hashed(sha256), Some(declared)) => checked_payload_hash(sha256, declared)?,
        (Payload::Bytes(bytes), None) => SignableBody::Bytes(bytes),
        (Payload::Hashed(sha256), None) => {
            SignableBody::Precomputed(crate::codec::hex_bytes(&sha256.0))
        }
    };
    let path_and_query = uri.path_and_query().map_or_else(
        || uri.path().to_string(),
        |value| value.as_str().to_string(),
    );
    let request =
        SignableRequest::new(method.as_str(), path_and_query, signed.into_iter(), body)
            .map_err(|error| denied(format!("The request cannot be canonicalized: {error}")))?;
    let identity = aws_credential_types::Credentials::new(
        authorization.access_key_id,
        key.secret,
        None,
        None,
        "blocksnap",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Double;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Enabled;
    // Exactly the client's signed headers go in; none is excluded.
    settings.excluded_headers = None;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(authorization.region)
        .name(authorization.service)
        .time(signed_at)
        .settings(settings)
        .build()
        .map_err(|error| denied(format!("The signature cannot be checked: {error}")))?
        .into();
    let expected = sign(request, &params)
        .map_err(|error| denied(format!("The signature cannot be checked: {error}")))?;
    let matches = expected.signature().len() == authorization.signature.len()
        && expected
            .signature()
            .bytes()
            .zip(authorization.signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !matches {
        return Err(denied(
            "The request signature does not match the one computed with the access key's secret.",
        ));
    }
    Ok(key.owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn amz_dates_parse() {
        assert_eq!(
            parse_amz_date("20261123T000000Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_795_392_000))
        );
        assert_eq!(
            parse_amz_date("20000229T010203Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723))
        );
        for bad in [
            "20261323T000000Z",
            "2026-11-23T00:00:00Z",
            "20261123T000000",
            "2026112AT000000Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn credentials_file_lines() {
        let credentials = Credentials::parse(
            "# comment\nAKID SECRET 111111111111\n\nAK2 S2 222222222222 # trailing\n",
        )
        .expect("parse");
        assert_eq!(credentials.len(), 2);
        assert!(Credentials::parse("AKID SECRET").is_err());
        assert!(
            Credentials::parse("A S O\nA S2 O2").is_err(),
            "duplicate key"
        );
        assert!(
            Credentials::parse("A S 1234567890123456789012345").is_err(),
            "owner too long"
        );
    }
}
