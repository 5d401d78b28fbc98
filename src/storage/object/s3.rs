//! S3-compatible buckets through the AWS SDK for Rust.
//!
//! The SDK is asynchronous and this layer is not: the store owns a small
//! tokio runtime and blocks on it. Call it from a thread that is not a
//! tokio worker (a plain thread, or `spawn_blocking` inside an async
//! program).
//!
//! Every request is one attempt (the SDK's retries are off: a retry inside
//! the SDK would hide a lost reply from [`super::ObjectClient`], which
//! resolves it by put id) with connect, read and attempt timeouts, over an
//! HTTPS client on ring, the binary's one crypto provider.

use super::{
    Body, ListedObject, ObjectError, ObjectHead, ObjectStore, Precondition, PUT_ID_METADATA,
};
use crate::error::{Error, Result};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

/// Bodies above this size go up as multipart uploads (a body is held in
/// memory whole only up to here).
const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// The size of each part of a multipart upload (the last may be smaller).
const PART_BYTES: u64 = 8 << 20;
/// Parts uploading at once; memory is about this many parts.
const PARTS_IN_FLIGHT: usize = 2;
/// The most a whole-object read allocates before its bytes arrive (a
/// reply announcing more grows the buffer as the bytes come).
const MAX_PREALLOCATED_BODY: u64 = 16 << 20;
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the service may stay silent while answering.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one request may take in all (a 16 MiB body at 64 KiB/s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Static credentials: an access key pair and an optional session token.
#[derive(Clone, Default)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// How to reach an S3-compatible service.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    /// Service URL (for S3-compatible servers); `None` for AWS S3. Path-style
    /// addressing is used when one is given.
    pub endpoint: Option<String>,
    /// Region; `None`: from the standard chain, else `us-east-1`.
    pub region: Option<String>,
    /// Credentials; `None`: the standard AWS chain (environment, shared
    /// config and credentials files, the profile, web identity, process,
    /// instance metadata).
    pub credentials: Option<StaticCredentials>,
    /// The shared files' profile to use (`None`: `AWS_PROFILE`, else
    /// `default`).
    pub profile: Option<String>,
}

impl S3Settings {
    /// Settings that take everything from the standard AWS chain, with the
    /// endpoint `endpoint`, else `AWS_ENDPOINT_URL_S3`, else
    /// `AWS_ENDPOINT_URL` (else AWS S3).
    pub fn from_env(endpoint: Option<String>) -> S3Settings {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        S3Settings {
            endpoint: endpoint
                .or_else(|| variable("AWS_ENDPOINT_URL_S3"))
                .or_else(|| variable("AWS_ENDPOINT_URL")),
            ..S3Settings::default()
        }
    }

    /// These settings with static credentials.
    pub fn with_keys(mut self, access_key_id: &str, secret_access_key: &str) -> S3Settings {
        self.credentials = Some(StaticCredentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            session_token: None,
        });
        self
    }
}

/// Runs `future` on `runtime` and waits for it, from any thread: a plain
/// thread blocks on the runtime; a thread of another runtime (a server's
/// handler) hands the future over and waits on a channel, since it must
/// not enter a second runtime.
pub(crate) fn block_on<F>(runtime: &Runtime, future: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(future);
    }
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = sender.send(future.await);
    });
    // The runtime lives as long as the caller's reference to it, so the
    // task runs to its end and sends.
    receiver
        .recv()
        .expect("the S3 client's runtime finishes every task it is given")
}

/// Starts the small runtime an S3 client runs on.
pub(crate) fn s3_runtime() -> Result<Arc<Runtime>> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("blocksnap-s3")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|error| Error::io("starting the S3 client's runtime", error))
}

/// An S3 client as `settings` describe, on `runtime`: the standard chain
/// fills in what the settings leave out; requests time out; the SDK retries
/// `sdk_retries` times at most (0: one attempt).
pub(crate) fn s3_client(
    settings: &S3Settings,
    runtime: &Runtime,
    sdk_retries: u32,
) -> Result<Client> {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .build();
    let retries = if sdk_retries == 0 {
        RetryConfig::disabled()
    } else {
        RetryConfig::standard().with_max_attempts(sdk_retries + 1)
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client.clone())
        .timeout_config(timeouts.clone())
        .retry_config(retries.clone());
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(keys) = &settings.credentials {
        loader = loader.credentials_provider(Credentials::new(
            keys.access_key_id.clone(),
            keys.secret_access_key.clone(),
            keys.session_token.clone(),
            None,
            "blocksnap",
        ));
    }
    let shared = block_on(runtime, loader.load());
    let mut config = aws_sdk_s3::config::Builder::from(&shared)
        .http_client(http_client)
        .timeout_config(timeouts)
        .retry_config(retries);
    if shared.region().is_none() {
        config = config.region(Region::new("us-east-1"));
    }
    if shared.credentials_provider().is_none() {
        return Err(Error::AccessDenied {
            message: "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                      or configure a profile"
                .into(),
        });
    }
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint).force_path_style(true);
    }
    Ok(Client::from_conf(config.build()))
}

/// Classifies an SDK failure by what the caller can do about it.
fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    error: SdkError<E>,
) -> ObjectError {
    let status = error
        .raw_response()
        .map(|response| response.status().as_u16());
    let code = error.code().unwrap_or_default().to_string();
    let detail = match error.message() {
        Some(message) if !code.is_empty() => format!("{code}: {message}"),
        _ => format!("{}", aws_sdk_s3::error::DisplayErrorContext(&error)),
    };
    match (&error, status, code.as_str()) {
        (_, _, "NoSuchBucket") => ObjectError::NoSuchBucket(detail),
        (_, _, "NoSuchKey" | "NoSuchUpload") | (_, Some(404), _) => ObjectError::NotFound,
        (_, _, "PreconditionFailed") | (_, Some(412), _) => ObjectError::PreconditionFailed,
        (_, Some(409), _) => ObjectError::Conflict,
        (_, Some(403), _)
        | (_, _, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
            ObjectError::Denied(detail)
        }
        (_, Some(429 | 503), _) | (_, _, "SlowDown") => ObjectError::Throttled(detail),
        (_, Some(500..=599), _) => ObjectError::Ambiguous(detail),
        (SdkError::ServiceError(_), _, _) => ObjectError::Refused(detail),
        // Timeouts, connection failures, cut replies: the request may
        // have been applied.
        _ => ObjectError::Ambiguous(detail),
    }
}

/// A bucket (and a key prefix in it) of an S3-compatible service.
#[derive(Clone)]
pub struct S3ObjectStore {
    client: Client,
    bucket: String,
    /// Prepended to every name: empty, or ending in `/`.
    prefix: String,
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for S3ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3ObjectStore({})", self.location())
    }
}

impl S3ObjectStore {
    /// The objects under `prefix` in `bucket` on the service `settings`
    /// describe. Nothing is contacted but the credential chain.
    pub fn new(bucket: &str, prefix: &str, settings: &S3Settings) -> Result<S3ObjectStore> {
        let runtime = s3_runtime()?;
        let client = s3_client(settings, &runtime, 0)?;
        let prefix = prefix.trim_matches('/');
        Ok(S3ObjectStore {
            client,
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            runtime,
        })
    }

    /// Creates `bucket` on the service `settings` describe; a bucket that
    /// exists and is the caller's already is not an error.
    pub fn create_bucket(bucket: &str, settings: &S3Settings) -> Result<()> {
        let runtime = s3_runtime()?;
        let client = s3_client(settings, &runtime, 0)?;
        match block_on(&runtime, client.create_bucket().bucket(bucket).send()) {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(Error::io(
                format!("creating bucket {bucket}"),
                std::io::Error::other(classify(error).to_string()),
            )),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn put_multipart(
        &self,
        key: &str,
        body: &Body,
        precondition: &Precondition,
        put_id: &str,
    ) -> Result<String, ObjectError> {
        let created = block_on(
            &self.runtime,
            self.client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .metadata(PUT_ID_METADATA, put_id)
                .send(),
        )
        .map_err(classify)?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| ObjectError::Refused("no upload id returned".into()))?
            .to_string();
        let outcome = self.send_parts_and_complete(key, body, precondition, &upload_id);
        if outcome.is_err() {
            // Parts of an upload that never completes are deleted; a
            // completion that landed without its reply makes this fail
            // harmlessly.
            let _ = block_on(
                &self.runtime,
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send(),
            );
        }
        outcome
    }

    fn send_parts_and_complete(
        &self,
        key: &str,
        body: &Body,
        precondition: &Precondition,
        upload_id: &str,
    ) -> Result<String, ObjectError> {
        let len = body.len();
        let mut in_flight = std::collections::VecDeque::new();
        let mut parts = Vec::new();
        let mut start = 0;
        let mut part_number = 1i32;
        while start < len || !in_flight.is_empty() {
            if start < len && in_flight.len() < PARTS_IN_FLIGHT {
                let end = (start + PART_BYTES).min(len);
                let bytes = body
                    .slice(start..end)
                    .map_err(|error| ObjectError::Refused(format!("reading the body: {error}")))?;
                let request = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(part_number)
                    .body(ByteStream::from(bytes))
                    .customize()
                    .disable_payload_signing();
                let number = part_number;
                in_flight.push_back(self.runtime.spawn(async move {
                    let sent = request.send().await.map_err(classify)?;
                    Ok::<_, ObjectError>(
                        CompletedPart::builder()
                            .set_e_tag(sent.e_tag().map(str::to_string))
                            .part_number(number)
                            .build(),
                    )
                }));
                start = end;
                part_number += 1;
                continue;
            }
            if let Some(handle) = in_flight.pop_front() {
                let part = block_on(&self.runtime, handle)
                    .map_err(|error| ObjectError::Ambiguous(error.to_string()))??;
                parts.push(part);
            }
        }
        let mut request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        request = match precondition {
            Precondition::Absent => request.if_none_match("*"),
            Precondition::Matches(etag) => request.if_match(etag),
        };
        let completed = block_on(&self.runtime, request.send()).map_err(classify)?;
        completed
            .e_tag()
            .map(str::to_string)
            .ok_or_else(|| ObjectError::Refused("no ETag returned".into()))
    }
}

impl ObjectStore for S3ObjectStore {
    fn get(&self, name: &str, range: Option<Range<u64>>) -> Result<Bytes, ObjectError> {
        let expected = range.as_ref().map(|range| range.end - range.start);
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(name));
        if let Some(range) = range {
            if range.start >= range.end {
                return Ok(Bytes::new());
            }
            request = request.range(format!("bytes={}-{}", range.start, range.end - 1));
        }
        block_on(&self.runtime, async move {
            let mut response = request.send().await.map_err(classify)?;
            // Read into one buffer sized from the reply (at most the range
            // asked for): collecting the body's pieces and joining them
            // would hold every byte twice.
            let announced = response
                .content_length()
                .and_then(|len| u64::try_from(len).ok())
                .unwrap_or(0);
            let capacity = announced.min(expected.unwrap_or(MAX_PREALLOCATED_BODY));
            let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
            while let Some(piece) = response
                .body
                .try_next()
                .await
                .map_err(|error| ObjectError::Ambiguous(format!("reading the body: {error}")))?
            {
                bytes.extend_from_slice(&piece);
            }
            Ok(Bytes::from(bytes))
        })
    }

    fn head(&self, name: &str) -> Result<ObjectHead, ObjectError> {
        let head = block_on(
            &self.runtime,
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(self.key(name))
                .send(),
        )
        .map_err(classify)?;
        Ok(ObjectHead {
            len: head
                .content_length()
                .and_then(|len| u64::try_from(len).ok())
                .unwrap_or(0),
            etag: head.e_tag().unwrap_or_default().to_string(),
            put_id: head
                .metadata()
                .and_then(|metadata| metadata.get(PUT_ID_METADATA))
                .cloned(),
        })
    }

    fn put(
        &self,
        name: &str,
        body: &Body,
        precondition: &Precondition,
        put_id: &str,
    ) -> Result<String, ObjectError> {
        let key = self.key(name);
        if body.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(&key, body, precondition, put_id);
        }
        let bytes = body
            .slice(0..body.len())
            .map_err(|error| ObjectError::Refused(format!("reading the body: {error}")))?;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .metadata(PUT_ID_METADATA, put_id)
            .body(ByteStream::from(bytes));
        request = match precondition {
            Precondition::Absent => request.if_none_match("*"),
            Precondition::Matches(etag) => request.if_match(etag),
        };
        let put = block_on(
            &self.runtime,
            request.customize().disable_payload_signing().send(),
        )
        .map_err(classify)?;
        put.e_tag()
            .map(str::to_string)
            .ok_or_else(|| ObjectError::Refused("no ETag returned".into()))
    }

    fn delete(&self, name: &str, etag: Option<&str>) -> Result<(), ObjectError> {
        let mut request = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(name));
        if let Some(etag) = etag {
            request = request.if_match(etag);
        }
        block_on(&self.runtime, request.send())
            .map(drop)
            .map_err(classify)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, ObjectError> {
        let mut listed = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = block_on(
                &self.runtime,
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(self.key(prefix))
                    .set_continuation_token(token.take())
                    .send(),
            )
            .map_err(classify)?;
            for object in page.contents() {
                let Some(name) = object
                    .key()
                    .and_then(|key| key.strip_prefix(self.prefix.as_str()))
                else {
                    continue;
                };
                listed.push(ListedObject {
                    name: name.to_string(),
                    len: object
                        .size()
                        .and_then(|len| u64::try_from(len).ok())
                        .unwrap_or(0),
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listed)
    }

    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}
