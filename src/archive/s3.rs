//! S3-compatible buckets through the AWS SDK for Rust: create-only puts
//! (`If-None-Match: *`), multipart uploads for large archives (aborted on
//! any failure, so nothing partial becomes visible), and ranged reads pinned
//! to the object's ETag.
//!
//! The SDK is asynchronous; archives are written and read by blocking code,
//! so the bucket owns a small tokio runtime and blocks on it. Call these
//! from a blocking thread (`spawn_blocking` inside an async program).

use super::location::resolve_seek;
use crate::error::{Error, Result};
use crate::storage::object::{
    block_on, new_put_id, s3_client, s3_runtime, S3Settings, PUT_ID_METADATA,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// The first parts' size (S3 takes parts of 5 MiB and more, but for the last).
const FIRST_PART_BYTES: usize = 8 << 20;
/// Parts of one size before the size doubles: S3 allows 10,000 parts, and
/// doubling every 1,000 reaches its 5 TiB object limit within them while
/// memory stays near a thousandth of the archive for very large ones.
const PARTS_PER_SIZE: usize = 1_000;
/// Parts uploading at once while the next one fills: memory is about
/// `(PARTS_IN_FLIGHT + 1) × part size`.
const PARTS_IN_FLIGHT: usize = 2;
/// Bytes fetched per ranged GET when reading an archive. An import reads
/// with two readers (block entries and the block list), each holding its
/// window and the next one: 32 MiB in all. Smaller windows cost more
/// requests, and each request costs a round trip (4 MiB windows made a
/// loopback import 30% slower).
const READ_WINDOW: u64 = 8 << 20;
/// Retries the SDK makes of a failed archive request.
const ARCHIVE_SDK_RETRIES: u32 = 2;
/// Retries of a create-only request answered 409 ConditionalRequestConflict.
const CONFLICT_RETRIES: u32 = 4;

/// An S3-compatible bucket: a client, the bucket's name and the runtime
/// the client runs on.
#[derive(Clone)]
pub struct S3Bucket {
    client: Client,
    bucket: String,
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Bucket")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl S3Bucket {
    /// A bucket named `bucket` on the service `settings` describe. The name
    /// is checked against S3's bucket naming rules; nothing is contacted yet.
    pub fn new(bucket: &str, settings: &S3Settings) -> Result<S3Bucket> {
        super::validate_bucket_name(bucket)?;
        let runtime = s3_runtime()?;
        let client = s3_client(settings, &runtime, ARCHIVE_SDK_RETRIES)?;
        Ok(S3Bucket {
            client,
            bucket: bucket.to_string(),
            runtime,
        })
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.bucket
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Fails unless the bucket exists and `key` is free.
    pub(crate) fn check_free(&self, key: &str) -> Result<()> {
        let url = self.url(key);
        let head = self
            .runtime
            .block_on(self.client.head_bucket().bucket(&self.bucket).send());
        head.map_err(|error| classify(&format!("s3://{}", self.bucket), error))?;
        let head = self.runtime.block_on(
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send(),
        );
        match head {
            Ok(_) => Err(Error::Conflict {
                message: format!("{url} already exists; archives are never overwritten"),
            }),
            Err(error) => match classify(&url, error) {
                Error::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Starts a create-only upload of `key`.
    pub(crate) fn upload(&self, key: &str) -> S3Upload {
        S3Upload {
            bucket: self.clone(),
            key: key.to_string(),
            part_bytes: FIRST_PART_BYTES,
            buffer: Vec::with_capacity(FIRST_PART_BYTES),
            upload_id: None,
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            finished: false,
            put_id: new_put_id(),
        }
    }

    /// Opens `key` for ranged reads, pinned to its current ETag.
    pub(crate) fn open(&self, key: &str) -> Result<S3ObjectReader> {
        let url = self.url(key);
        let head = self
            .runtime
            .block_on(
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send(),
            )
            .map_err(|error| classify(&url, error))?;
        let len = head
            .content_length()
            .and_then(|len| u64::try_from(len).ok())
            .ok_or_else(|| Error::io(url.clone(), std::io::Error::other("no content length")))?;
        Ok(S3ObjectReader {
            bucket: self.clone(),
            key: key.to_string(),
            etag: head.e_tag().map(str::to_string),
            len,
            position: 0,
            window_start: 0,
            window: Bytes::new(),
            ahead: None,
        })
    }
}

/// Maps an SDK failure to the engine's error classes.
fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    what: &str,
    error: SdkError<E>,
) -> Error {
    let status = error
        .raw_response()
        .map(|response| response.status().as_u16());
    let code = error.code().unwrap_or_default().to_string();
    let message = error.message().unwrap_or_default().to_string();
    let detail = if code.is_empty() {
        format!("{}", aws_sdk_s3::error::DisplayErrorContext(&error))
    } else {
        format!("{code}: {message}")
    };
    match (status, code.as_str()) {
        (_, "NoSuchBucket") => Error::NotFound {
            message: format!("{what}: the bucket does not exist"),
        },
        (_, "NoSuchKey") | (Some(404), _) => Error::NotFound {
            message: format!("{what} does not exist"),
        },
        (_, "PreconditionFailed") | (Some(412), _) => Error::Conflict {
            message: format!("{what} already exists or changed; archives are never overwritten"),
        },
        (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") | (Some(403), _) => {
            Error::AccessDenied {
                message: format!("{what}: access denied ({detail})"),
            }
        }
        _ => Error::io(what.to_string(), std::io::Error::other(detail)),
    }
}

/// A create-only upload: one PutObject if the archive fits in a part,
/// else a multipart upload whose completion carries `If-None-Match: *`.
pub(crate) struct S3Upload {
    bucket: S3Bucket,
    key: String,
    part_bytes: usize,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    in_flight: VecDeque<JoinHandle<Result<CompletedPart>>>,
    parts: Vec<CompletedPart>,
    finished: bool,
    /// Recorded in the object's metadata: a create-only write refused
    /// because the key exists is ours if the object carries it (a retry
    /// after a reply that was lost), and a success.
    put_id: String,
}

impl S3Upload {
    /// Sends the buffer as the next part (starting the upload first).
    fn send_part(&mut self) -> Result<()> {
        let url = self.bucket.url(&self.key);
        let bucket = self.bucket.clone();
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let created = bucket
                    .runtime
                    .block_on(
                        bucket
                            .client
                            .create_multipart_upload()
                            .bucket(&bucket.bucket)
                            .key(&self.key)
                            .content_type("application/zip")
                            .metadata(PUT_ID_METADATA, &self.put_id)
                            .send(),
                    )
                    .map_err(|error| classify(&url, error))?;
                let id = created.upload_id().map(str::to_string).ok_or_else(|| {
                    Error::io(url.clone(), std::io::Error::other("no upload id returned"))
                })?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let sent_parts = self.parts.len() + self.in_flight.len();
        let part_number = (sent_parts + 1) as i32;
        self.part_bytes = FIRST_PART_BYTES << ((sent_parts + 1) / PARTS_PER_SIZE).min(10);
        let body = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(self.part_bytes),
        ));
        let client = bucket.client.clone();
        let bucket_name = bucket.bucket.clone();
        let key = self.key.clone();
        self.in_flight.push_back(bucket.runtime.spawn(async move {
            let sent = client
                .upload_part()
                .bucket(bucket_name)
                .key(&key)
                .upload_id(upload_id)
                .part_number(part_number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|error| classify(&url, error))?;
            Ok(CompletedPart::builder()
                .set_e_tag(sent.e_tag().map(str::to_string))
                .part_number(part_number)
                .build())
        }));
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<()> {
        let Some(handle) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let part = self
            .bucket
            .runtime
            .block_on(handle)
            .map_err(|error| Error::io("uploading a part", std::io::Error::other(error)))??;
        self.parts.push(part);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let url = self.bucket.url(&self.key);
        let bucket = self.bucket.clone();
        let Some(upload_id) = self.upload_id.clone() else {
            let body = Bytes::from(std::mem::take(&mut self.buffer));
            return self.create_only(&url, || {
                bucket
                    .client
                    .put_object()
                    .bucket(&bucket.bucket)
                    .key(&self.key)
                    .content_type("application/zip")
                    .metadata(PUT_ID_METADATA, &self.put_id)
                    .if_none_match("*")
                    .body(ByteStream::from(body.clone()))
                    .send()
            });
        };
        if !self.buffer.is_empty() {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(std::mem::take(&mut self.parts)))
            .build();
        self.create_only(&url, || {
            bucket
                .client
                .complete_multipart_upload()
                .bucket(&bucket.bucket)
                .key(&self.key)
                .upload_id(&upload_id)
                .multipart_upload(parts.clone())
                .if_none_match("*")
                .send()
        })?;
        self.upload_id = None;
        Ok(())
    }

    /// Sends a create-only request: 409 ConditionalRequestConflict is
    /// retried; any other failure is a success when the object carries
    /// this upload's put id (an earlier attempt landed and its reply was
    /// lost: the retry then meets 412, or NoSuchUpload for a multipart
    /// completion), else the error it is.
    fn create_only<T, E, F>(&self, url: &str, mut send: impl FnMut() -> F) -> Result<()>
    where
        F: std::future::Future<Output = std::result::Result<T, SdkError<E>>> + Send + 'static,
        T: Send + 'static,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let bucket = &self.bucket;
        let mut attempt = 0u32;
        loop {
            let error = match block_on(&bucket.runtime, send()) {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            let status = error
                .raw_response()
                .map(|response| response.status().as_u16());
            if status == Some(409) && attempt < CONFLICT_RETRIES {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(50 << attempt));
                continue;
            }
            let head = block_on(
                &bucket.runtime,
                bucket
                    .client
                    .head_object()
                    .bucket(&bucket.bucket)
                    .key(&self.key)
                    .send(),
            );
            let ours = head.ok().is_some_and(|head| {
                head.metadata()
                    .and_then(|metadata| metadata.get(PUT_ID_METADATA))
                    == Some(&self.put_id)
            });
            return if ours {
                Ok(())
            } else {
                Err(classify(url, error))
            };
        }
    }

    /// Abandons the upload: waits out parts in flight, then aborts the
    /// multipart upload so its parts are deleted.
    fn abort(&mut self) {
        for handle in std::mem::take(&mut self.in_flight) {
            let _ = self.bucket.runtime.block_on(handle);
        }
        if let Some(upload_id) = self.upload_id.take() {
            let bucket = &self.bucket;
            let _ = bucket.runtime.block_on(
                bucket
                    .client
                    .abort_multipart_upload()
                    .bucket(&bucket.bucket)
                    .key(&self.key)
                    .upload_id(upload_id)
                    .send(),
            );
        }
    }
}

impl Write for S3Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.finished {
            return Err(std::io::Error::other("the upload is finished"));
        }
        let room = self.part_bytes - self.buffer.len();
        let taken = room.min(buf.len());
        self.buffer
            .extend_from_slice(buf.get(..taken).unwrap_or_default());
        if self.buffer.len() == self.part_bytes {
            self.send_part().map_err(std::io::Error::other)?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl super::location::ObjectUpload for S3Upload {
    fn commit(mut self: Box<Self>) -> Result<()> {
        self.finished = true;
        let result = self.finish();
        if result.is_err() {
            self.abort();
        }
        result
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Ranged reads of one object version, a window at a time, the next
/// window fetched in the background while this one is read.
pub struct S3ObjectReader {
    bucket: S3Bucket,
    key: String,
    etag: Option<String>,
    len: u64,
    position: u64,
    window_start: u64,
    window: Bytes,
    /// The window being fetched ahead: its start and the fetch.
    ahead: Option<(u64, JoinHandle<Result<Bytes>>)>,
}

impl Clone for S3ObjectReader {
    /// A reader of the same object with its own position (no fetch ahead).
    fn clone(&self) -> Self {
        S3ObjectReader {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            etag: self.etag.clone(),
            len: self.len,
            position: self.position,
            window_start: self.window_start,
            window: self.window.clone(),
            ahead: None,
        }
    }
}

impl Drop for S3ObjectReader {
    fn drop(&mut self) {
        if let Some((_, fetch)) = self.ahead.take() {
            fetch.abort();
        }
    }
}

impl S3ObjectReader {
    /// The object's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts fetching the window at `start` (pinned to the ETag).
    fn spawn_window(&self, start: u64) -> JoinHandle<Result<Bytes>> {
        let end = (start + READ_WINDOW).min(self.len);
        let url = self.bucket.url(&self.key);
        let mut request = self
            .bucket
            .client
            .get_object()
            .bucket(&self.bucket.bucket)
            .key(&self.key)
            .range(format!("bytes={start}-{}", end - 1));
        if let Some(etag) = &self.etag {
            request = request.if_match(etag);
        }
        self.bucket.runtime.spawn(async move {
            let response = request
                .send()
                .await
                .map_err(|error| classify(&url, error))?;
            let body = response
                .body
                .collect()
                .await
                .map(|data| data.into_bytes())
                .map_err(|error| Error::io(url.clone(), std::io::Error::other(error)))?;
            if body.len() as u64 != end - start {
                return Err(Error::io(
                    url,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("a ranged read returned {} bytes", body.len()),
                    ),
                ));
            }
            Ok(body)
        })
    }

    /// Makes the window start at the current position.
    fn fetch(&mut self) -> std::io::Result<()> {
        let fetch = match self.ahead.take() {
            Some((start, fetch)) if start == self.position => fetch,
            stale => {
                if let Some((_, fetch)) = stale {
                    fetch.abort();
                }
                self.spawn_window(self.position)
            }
        };
        let body = self
            .bucket
            .runtime
            .block_on(fetch)
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?;
        self.window_start = self.position;
        let next = self.position + body.len() as u64;
        self.window = body;
        if next < self.len {
            self.ahead = Some((next, self.spawn_window(next)));
        }
        Ok(())
    }
}

impl Read for S3ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.position >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if self.position < self.window_start || self.position >= window_end {
            self.fetch()?;
        }
        let offset = (self.position - self.window_start) as usize;
        let available = self.window.get(offset..).unwrap_or_default();
        let taken = available.len().min(buf.len());
        buf.get_mut(..taken)
            .unwrap_or_default()
            .copy_from_slice(available.get(..taken).unwrap_or_default());
        self.position += taken as u64;
        Ok(taken)
    }
}

impl Seek for S3ObjectReader {
    fn seek(&mut self, target: SeekFrom) -> std::io::Result<u64> {
        self.position = resolve_seek(self.position, self.len, target)?;
        Ok(self.position)
    }
}
