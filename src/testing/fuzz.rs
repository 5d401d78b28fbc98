//! Entry points of the fuzz targets (`fuzz/fuzz_targets/`), one for each
//! input that comes from outside the process: HTTP requests, the
//! `Authorization` header, StartSnapshot bodies, archives and their
//! manifests and block lists, changed-block lists, credentials files and
//! key files. Each takes raw bytes, drives the real parser (or the whole
//! request path), and asserts what must hold: no panic, only the typed
//! errors the input can deserve, nothing half done. `tests/fuzz_regressions.rs`
//! replays every input a campaign ever found through the same functions.

use crate::api::ebs_error;
use crate::error::Error;
use crate::storage::MemoryStorage;
use crate::{Engine, EngineConfig};
use std::sync::{Arc, OnceLock};

/// Asserts that `error` is one a caller can get for bad input (never an
/// internal failure: the store here is healthy and in memory).
#[track_caller]
fn assert_input_error(error: &Error) {
    let code = ebs_error(error).code;
    assert_ne!(code, "InternalServerException", "{error:?}");
}

/// A server over an in-memory store, shared by every run of the target
/// (requests act for one owner; quotas are off).
#[cfg(feature = "server")]
fn server() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let engine = runtime.block_on(async {
            Engine::open_with(Arc::new(MemoryStorage::new()), EngineConfig::default())
                .expect("engine")
        });
        let config = crate::server::ServerConfig {
            rate_limits: crate::server::RateLimits::unlimited(),
            ..crate::server::ServerConfig::new(crate::server::Authentication::InsecureSingleOwner(
                "000000000000".into(),
            ))
        };
        (runtime, crate::server::router(engine, config))
    })
}

/// Splits `data` into a request: `METHOD TARGET` on the first line, then
/// `Name: value` header lines, a blank line, and the body.
#[cfg(feature = "server")]
fn request_of(data: &[u8]) -> Option<axum::http::Request<axum::body::Body>> {
    let split = data.windows(2).position(|pair| pair == b"\n\n");
    let (head, body) = match split {
        Some(at) => (data.get(..at)?, data.get(at + 2..)?),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let (method, target) = lines.next()?.split_once(' ')?;
    let mut request = axum::http::Request::builder().method(method).uri(target);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        request = request.header(name.trim(), value.trim());
    }
    request.body(axum::body::Body::from(body.to_vec())).ok()
}

/// A whole HTTP request through the server's router: routing, header and
/// query parsing, bodies (EC2's forms on `POST /` too), validation, the
/// engine. Any reply is a well-formed EBS reply, or EC2's XML error
/// document on `POST /`; bad input is never an internal error.
#[cfg(feature = "server")]
pub fn http_request(data: &[u8]) {
    use hyper::service::Service;
    let Some(request) = request_of(data) else {
        return;
    };
    let ec2 = request.method() == axum::http::Method::POST && request.uri().path() == "/";
    let (runtime, router) = server();
    let service = hyper_util::service::TowerToHyperService::new(router.clone());
    let response = runtime
        .block_on(service.call(request))
        .unwrap_or_else(|never| match never {});
    let status = response.status().as_u16();
    assert_ne!(status, 500, "an internal error on bad input");
    if status >= 400 && ec2 {
        let body = runtime
            .block_on(http_body_util::BodyExt::collect(response.into_body()))
            .expect("a body in memory")
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.starts_with("<?xml") && text.contains("<Errors><Error><Code>"),
            "an EC2 error without EC2's document: {text}"
        );
        assert!(!text.contains("<Code>InternalError</Code>"), "{text}");
    } else if status >= 400 {
        assert!(
            response.headers().contains_key("x-amzn-ErrorType"),
            "an error without its type"
        );
    }
}

/// The `Authorization` header and its company (`X-Amz-Date`, signed
/// headers, `X-Amz-Content-SHA256`), given as header lines: checked and
/// then verified over an empty body, the answer is access or
/// AccessDeniedException, nothing else.
#[cfg(feature = "server")]
pub fn authorization(data: &[u8]) {
    use crate::server::auth::{check_headers, verify_signature, Payload};
    static CREDENTIALS: OnceLock<crate::server::Credentials> = OnceLock::new();
    let credentials = CREDENTIALS.get_or_init(|| {
        crate::server::Credentials::parse("AKIDFUZZ fuzz-secret 111111111111").expect("keys")
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut headers = axum::http::HeaderMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.trim().as_bytes()),
            axum::http::HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    // The seeds are signed at this instant (2026-12-02T00:00:00Z).
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_169_600);
    let outcome = check_headers(credentials, &headers, crate::server::auth::EBS_SERVICE, now)
        .and_then(|presented| {
            verify_signature(
                presented,
                &axum::http::Method::POST,
                &axum::http::Uri::from_static("/snapshots"),
                &headers,
                Payload::Bytes(b"{}"),
            )
        });
    if let Err(error) = outcome {
        assert!(matches!(error, Error::AccessDenied { .. }), "{error:?}");
    }
}

/// A StartSnapshot JSON body: a request, or a validation error.
#[cfg(feature = "server")]
pub fn start_snapshot_body(data: &[u8]) {
    if let Err(error) = crate::server::wire::start_snapshot_request(data) {
        assert!(matches!(error, Error::InvalidInput { .. }), "{error:?}");
    }
}

/// An archive's manifest: parsed and checked, or refused as an invalid
/// archive (or an unsupported version).
pub fn archive_manifest(data: &[u8]) {
    match crate::archive::manifest::Manifest::parse(data, "fuzz.zip") {
        Ok(manifest) => assert!(manifest.block_count <= manifest.volume_blocks()),
        Err(error) => assert!(
            matches!(
                error,
                Error::InvalidArchive { .. } | Error::UnsupportedVersion { .. }
            ),
            "{error:?}"
        ),
    }
}

/// Block-list lines: whatever parses writes back to the same line.
pub fn block_list(data: &[u8]) {
    use crate::archive::manifest::{block_list_line, parse_block_list_line};
    for line in data.split(|byte| *byte == b'\n') {
        if let Some((index, sha256)) = parse_block_list_line(line) {
            assert_eq!(
                block_list_line(index, &sha256).as_bytes(),
                [line, b"\n"].concat()
            );
        }
    }
}

/// A whole archive imported into a fresh in-memory store: a completed
/// snapshot, or a typed error and no snapshot left behind, pending or not.
pub fn archive(data: &[u8]) {
    use crate::archive::{import, Bucket, ImportOptions, ImportOutcome};
    static DIRECTORY: OnceLock<tempfile::TempDir> = OnceLock::new();
    let directory = DIRECTORY.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let key = format!("fuzz-{}.zip", std::process::id());
    if std::fs::write(directory.path().join(&key), data).is_err() {
        return;
    }
    let engine =
        Engine::open_with(Arc::new(MemoryStorage::new()), EngineConfig::default()).expect("engine");
    let imported = import(
        &engine,
        &Bucket::Directory(directory.path().to_path_buf()),
        &key,
        &ImportOptions {
            threads: 1,
            ..ImportOptions::default()
        },
        &|_| {},
        &std::sync::atomic::AtomicBool::new(false),
    );
    let snapshots = engine.snapshots();
    match imported {
        Ok(ImportOutcome::Completed(report)) => {
            assert_eq!(snapshots.len(), 1);
            assert_eq!(snapshots[0].started.snapshot, report.snapshot_id);
        }
        Ok(ImportOutcome::Interrupted) => panic!("interrupted without a cancel"),
        Err(error) => {
            assert_input_error(&error);
            assert!(snapshots.is_empty(), "{error}: left {snapshots:?}");
        }
    }
    assert_eq!(engine.pending_snapshot_count(), 0);
}

/// A changed-block list for an image of as many blocks as the first two
/// bytes say: indexes ascending, distinct, inside the image, or an error.
pub fn changed_blocks(data: &[u8]) {
    let (Some(&high), Some(&low)) = (data.first(), data.get(1)) else {
        return;
    };
    let blocks = u32::from(u16::from_le_bytes([low, high]));
    let Ok(text) = std::str::from_utf8(data.get(2..).unwrap_or_default()) else {
        return;
    };
    if let Ok(indexes) = crate::volume::parse_changed_blocks(text, blocks) {
        assert!(indexes.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(indexes.iter().all(|index| *index < blocks));
    }
}

/// A credentials file: parsed, or an error naming the line.
#[cfg(feature = "server")]
pub fn credentials(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = crate::server::Credentials::parse(text) {
        assert!(matches!(error, Error::InvalidInput { .. }), "{error:?}");
    }
}

/// A key file: opened with a fixed passphrase when its KDF costs are
/// small enough to run (the decoder bounds them either way), else only its
/// header decoded; the outcome is a provider or a typed refusal.
pub fn key_file(data: &[u8]) {
    use crate::format::keyfile::KeyFileHeader;
    use crate::keys::{LocalKeyProvider, Passphrase};
    let Ok(header) = KeyFileHeader::decode(data) else {
        return;
    };
    if header.memory_kib > 1024 || header.iterations > 2 || header.parallelism > 2 {
        return;
    }
    static DIRECTORY: OnceLock<tempfile::TempDir> = OnceLock::new();
    let directory = DIRECTORY.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let path = directory
        .path()
        .join(format!("keys-{}", std::process::id()));
    let _ = std::fs::remove_file(path.with_extension("mirror"));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let passphrase = Passphrase::new("fuzz passphrase").expect("passphrase");
    if let Err(error) = LocalKeyProvider::open(&path, &passphrase) {
        assert!(
            matches!(
                error,
                Error::KeyUnavailable { .. }
                    | Error::Corrupted { .. }
                    | Error::UnsupportedVersion { .. }
                    | Error::InvalidInput { .. }
            ),
            "{error:?}"
        );
    }
}

/// An NBD server over an in-memory store with one completed 1 GiB
/// snapshot (blocks 0 and 2 written), shared by every run.
#[cfg(feature = "nbd")]
fn nbd_server() -> &'static (tokio::runtime::Runtime, crate::nbd::NbdServer) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, crate::nbd::NbdServer)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let engine = Engine::open_with(Arc::new(MemoryStorage::new()), EngineConfig::default())
            .expect("engine");
        super::write_lineage(
            &engine,
            &crate::api::StartSnapshotRequest {
                volume_size: 1,
                ..Default::default()
            },
            &[&[(0, 1), (2, 2)]],
        );
        let server = crate::nbd::NbdServer::new(engine, crate::nbd::NbdConfig::default());
        (runtime, server)
    })
}

/// A whole NBD connection: `data` is everything the client sends (client
/// flags, options, requests), then it stops sending and reads. The server
/// greets, answers or hangs up, and always ends the connection: never a
/// panic or a hang. Option data the server decodes re-encodes exactly.
#[cfg(feature = "nbd")]
pub fn nbd_session(data: &[u8]) {
    use crate::format::nbd::{ExportRequest, MetaContextRequest, GREETING_LEN};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if let Ok(request) = ExportRequest::decode(data) {
        assert_eq!(request.encode().expect("encodes"), data);
    }
    if let Ok(request) = MetaContextRequest::decode(data) {
        assert_eq!(request.encode().expect("encodes"), data);
    }
    let (runtime, server) = nbd_server();
    let input = data.to_vec();
    runtime.block_on(async {
        let (mut client, server_side) = tokio::io::duplex(1 << 20);
        let session = tokio::spawn({
            let server = server.clone();
            async move { server.serve_connection(server_side).await }
        });
        let exchange = async {
            let (mut reading, mut writing) = tokio::io::split(&mut client);
            let send = async {
                // The server may hang up before it has read everything.
                let _ = writing.write_all(&input).await;
                let _ = writing.shutdown().await;
            };
            let mut output = Vec::new();
            let receive = reading.read_to_end(&mut output);
            let ((), received) = tokio::join!(send, receive);
            received.expect("read the server's replies");
            output
        };
        let output = tokio::time::timeout(std::time::Duration::from_secs(20), exchange)
            .await
            .expect("the server ends every connection");
        assert!(output.len() >= GREETING_LEN);
        assert_eq!(output.get(..16), Some(&b"NBDMAGICIHAVEOPT"[..]));
        session.await.expect("the session task does not panic");
    });
}
