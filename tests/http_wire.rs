//! The server's wire format, byte level, over raw TCP on 127.0.0.1: status
//! codes, headers, JSON bodies, errors, streaming limits, and token
//! decoding, as the EBS service model and the SDKs expect them.

use blocksnap::server::{Authentication, ServerConfig};
use blocksnap::testing::{block, checksum, query_encode_token, LoopbackServer};
use blocksnap::EngineConfig;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;

const OWNER: &str = "123456789012";

type Server = LoopbackServer;

fn server() -> Server {
    LoopbackServer::start(
        ServerConfig::new(Authentication::InsecureSingleOwner(OWNER.into())),
        EngineConfig::default(),
    )
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// Asserts an EBS error: status, `x-amzn-ErrorType`, `Message`, `Reason`.
    fn assert_error(&self, status: u16, code: &str, reason: Option<&str>) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("x-amzn-ErrorType"), Some(code));
        let body = self.json();
        assert!(body["Message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(body["Reason"].as_str(), reason);
    }
}

/// Sends one request (`head` without the final blank line) and reads the
/// whole reply (the connection is closed after it).
fn send(server: &Server, head: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(server.address).expect("connect");
    let request = format!("{head}\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write head");
    // A body the server refuses early may not be read to its end.
    let _ = stream.write_all(body);
    read_reply(stream)
}

/// Reads a whole HTTP/1.1 reply from a connection the server closes.
fn read_reply(mut stream: TcpStream) -> Reply {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read reply");
    let split = bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(bytes[..split].to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .expect("status line")
        .split(' ')
        .nth(1)
        .expect("code");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    Reply {
        status: status.parse().expect("status"),
        headers,
        body: bytes[split + 4..].to_vec(),
    }
}

fn start(server: &Server, json: &str) -> Reply {
    send(
        server,
        &format!(
            "POST /snapshots HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}",
            json.len()
        ),
        json.as_bytes(),
    )
}

fn put(server: &Server, snapshot: &str, index: u32, data: &[u8]) -> Reply {
    // As boto3 sends it: no Content-Type.
    send(
        server,
        &format!(
            "PUT /snapshots/{snapshot}/blocks/{index} HTTP/1.1\r\nx-amz-Data-Length: 524288\r\nx-amz-Checksum: {}\r\nx-amz-Checksum-Algorithm: SHA256\r\nx-amz-Progress: 50\r\nContent-Length: {}",
            checksum(data),
            data.len()
        ),
        data,
    )
}

#[test]
fn the_six_operations_speak_the_model_on_the_wire() {
    let server = server();
    let started = start(
        &server,
        r#"{"VolumeSize": 1, "Description": "d", "Tags": [{"Key": "k", "Value": "v"}], "Timeout": 60, "ClientToken": "token-1"}"#,
    );
    assert_eq!(started.status, 201);
    assert!(started
        .header("x-amzn-RequestId")
        .is_some_and(|id| id.len() == 36));
    let body = started.json();
    let snapshot = body["SnapshotId"].as_str().expect("id").to_string();
    assert_eq!(body["OwnerId"], OWNER);
    assert_eq!(body["Status"], "pending");
    assert_eq!(body["VolumeSize"], 1);
    assert_eq!(body["BlockSize"], 524288);
    assert_eq!(body["SseType"], "none");
    assert_eq!(body["Description"], "d");
    assert_eq!(
        body["Tags"],
        serde_json::json!([{"Key": "k", "Value": "v"}])
    );
    assert!(body["StartTime"].is_number(), "epoch seconds, a number");
    assert!(body.get("ParentSnapshotId").is_none() && body.get("KmsKeyArn").is_none());

    let data = block(3);
    let stored = put(&server, &snapshot, 2, &data);
    assert_eq!(
        stored.status,
        201,
        "{}",
        String::from_utf8_lossy(&stored.body)
    );
    assert_eq!(
        stored.header("x-amz-Checksum"),
        Some(checksum(&data).as_str())
    );
    assert_eq!(stored.header("x-amz-Checksum-Algorithm"), Some("SHA256"));
    assert_eq!(stored.json(), serde_json::json!({}));

    // CompleteSnapshot without Content-Length, as aws-sdk-rust sends it.
    let completed = send(
        &server,
        &format!("POST /snapshots/completion/{snapshot} HTTP/1.1\r\nx-amz-ChangedBlocksCount: 1"),
        b"",
    );
    assert_eq!(completed.status, 202);
    assert_eq!(completed.json(), serde_json::json!({"Status": "completed"}));

    let listed = send(
        &server,
        &format!("GET /snapshots/{snapshot}/blocks?maxResults=100&startingBlockIndex=0 HTTP/1.1"),
        b"",
    );
    assert_eq!(listed.status, 200);
    let body = listed.json();
    assert_eq!(body["VolumeSize"], 1);
    assert_eq!(body["BlockSize"], 524288);
    assert!(body["ExpiryTime"].is_number());
    assert_eq!(body["Blocks"][0]["BlockIndex"], 2);
    let token = body["Blocks"][0]["BlockToken"]
        .as_str()
        .expect("token")
        .to_string();
    assert!(body.get("NextToken").is_none());

    // Tokens are Base64: percent-encoded by clients, decoded without '+' -> ' '.
    let encoded = query_encode_token(&token);
    let read = send(
        &server,
        &format!("GET /snapshots/{snapshot}/blocks/2?blockToken={encoded} HTTP/1.1"),
        b"",
    );
    assert_eq!(read.status, 200, "{}", String::from_utf8_lossy(&read.body));
    assert_eq!(read.body, data);
    assert_eq!(read.header("x-amz-Data-Length"), Some("524288"));
    assert_eq!(
        read.header("x-amz-Checksum"),
        Some(checksum(&data).as_str())
    );
    assert_eq!(
        read.header("Content-Type"),
        Some("application/octet-stream")
    );

    let child = start(
        &server,
        &format!(r#"{{"VolumeSize": 1, "ParentSnapshotId": "{snapshot}"}}"#),
    )
    .json();
    let child = child["SnapshotId"].as_str().expect("id").to_string();
    assert_eq!(put(&server, &child, 5, &block(4)).status, 201);
    send(
        &server,
        &format!("POST /snapshots/completion/{child} HTTP/1.1\r\nx-amz-ChangedBlocksCount: 1\r\nContent-Length: 0"),
        b"",
    );
    let changed = send(
        &server,
        &format!("GET /snapshots/{child}/changedblocks?firstSnapshotId={snapshot} HTTP/1.1"),
        b"",
    );
    assert_eq!(changed.status, 200);
    let body = changed.json();
    assert_eq!(body["ChangedBlocks"][0]["BlockIndex"], 5);
    assert!(body["ChangedBlocks"][0].get("FirstBlockToken").is_none());
    assert!(body["ChangedBlocks"][0]["SecondBlockToken"].is_string());
}

#[test]
fn errors_carry_status_error_type_message_and_reason() {
    let server = server();
    send(
        &server,
        "GET /snapshots/snap-0123456789abcdef/blocks HTTP/1.1",
        b"",
    )
    .assert_error(404, "ResourceNotFoundException", Some("SNAPSHOT_NOT_FOUND"));
    send(
        &server,
        "GET /snapshots/not-a-snapshot/blocks HTTP/1.1",
        b"",
    )
    .assert_error(400, "ValidationException", Some("INVALID_SNAPSHOT_ID"));
    start(&server, r#"{"VolumeSize": 65537}"#).assert_error(
        400,
        "ValidationException",
        Some("INVALID_VOLUME_SIZE"),
    );
    start(&server, "{not json").assert_error(
        400,
        "ValidationException",
        Some("INVALID_PARAMETER_VALUE"),
    );
    start(&server, r#"{"VolumeSize": "one"}"#).assert_error(
        400,
        "ValidationException",
        Some("INVALID_PARAMETER_VALUE"),
    );
    let first = start(&server, r#"{"VolumeSize": 1, "ClientToken": "t"}"#);
    assert_eq!(first.status, 201);
    start(&server, r#"{"VolumeSize": 2, "ClientToken": "t"}"#).assert_error(
        409,
        "ConflictException",
        None,
    );
    let snapshot = first.json()["SnapshotId"].as_str().expect("id").to_string();
    let mut wrong = block(3);
    let good_checksum = checksum(&wrong);
    wrong[0] ^= 1;
    send(
        &server,
        &format!(
            "PUT /snapshots/{snapshot}/blocks/0 HTTP/1.1\r\nx-amz-Data-Length: 524288\r\nx-amz-Checksum: {good_checksum}\r\nx-amz-Checksum-Algorithm: SHA256\r\nContent-Length: 524288"
        ),
        &wrong,
    )
    .assert_error(400, "ValidationException", Some("INVALID_BLOCK"));
    send(
        &server,
        &format!("GET /snapshots/{snapshot}/blocks/0?blockToken=AAAA HTTP/1.1"),
        b"",
    )
    .assert_error(400, "ValidationException", Some("INVALID_SNAPSHOT_ID"));
    send(&server, "DELETE /volumes HTTP/1.1", b"").assert_error(
        400,
        "ValidationException",
        Some("INVALID_PARAMETER_VALUE"),
    );
}

#[test]
fn oversize_and_malformed_block_uploads_are_refused_without_buffering() {
    let server = server();
    let snapshot = start(&server, r#"{"VolumeSize": 1}"#).json()["SnapshotId"]
        .as_str()
        .expect("id")
        .to_string();
    // A body longer than a block: refused once 524288 bytes have arrived.
    let oversize = vec![7u8; 600_000];
    send(
        &server,
        &format!(
            "PUT /snapshots/{snapshot}/blocks/0 HTTP/1.1\r\nx-amz-Data-Length: 524288\r\nx-amz-Checksum: {}\r\nx-amz-Checksum-Algorithm: SHA256\r\nContent-Length: {}",
            checksum(&oversize),
            oversize.len()
        ),
        &oversize,
    )
    .assert_error(400, "ValidationException", Some("INVALID_PARAMETER_VALUE"));
    // A declared length other than a block: refused before the body is read.
    send(
        &server,
        &format!(
            "PUT /snapshots/{snapshot}/blocks/0 HTTP/1.1\r\nx-amz-Data-Length: 4096\r\nx-amz-Checksum: {}\r\nx-amz-Checksum-Algorithm: SHA256\r\nContent-Length: 4096",
            checksum(&[0u8; 4096])
        ),
        &[0u8; 4096],
    )
    .assert_error(400, "ValidationException", Some("INVALID_BLOCK"));
    send(
        &server,
        &format!("PUT /snapshots/{snapshot}/blocks/0 HTTP/1.1\r\nContent-Length: 0"),
        b"",
    )
    .assert_error(400, "ValidationException", Some("INVALID_PARAMETER_VALUE"));
    send(
        &server,
        &format!("PUT /snapshots/{snapshot}/blocks/zero HTTP/1.1\r\nx-amz-Data-Length: 524288\r\nContent-Length: 0"),
        b"",
    )
    .assert_error(400, "ValidationException", Some("INVALID_BLOCK"));
    // A short body under a full-block declaration is cut off: refused.
    let short = block(5);
    send(
        &server,
        &format!(
            "PUT /snapshots/{snapshot}/blocks/1 HTTP/1.1\r\nx-amz-Data-Length: 524288\r\nx-amz-Checksum: {}\r\nx-amz-Checksum-Algorithm: SHA256\r\nContent-Length: 1000",
            checksum(&short)
        ),
        &short[..1000],
    )
    .assert_error(400, "ValidationException", Some("INVALID_BLOCK"));
    assert_eq!(
        put(&server, &snapshot, 1, &short).status,
        201,
        "the server still works"
    );
}

/// A server that requires SigV4 with key `AKIDWIRE` / `wire-secret`.
fn signed_server() -> Server {
    let credentials = blocksnap::server::Credentials::parse("AKIDWIRE wire-secret 333333333333")
        .expect("credentials");
    LoopbackServer::start(
        ServerConfig::new(Authentication::SigV4(std::sync::Arc::new(credentials))),
        EngineConfig::default(),
    )
}

/// Signs a request as the AWS SDK for Rust would, at `time`, with the
/// given secret; returns the head lines to send (without the request line).
fn sign_headers(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    secret: &str,
    time: std::time::SystemTime,
) -> String {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let host = server.address.to_string();
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("host", &host));
    let identity =
        aws_credential_types::Credentials::new("AKIDWIRE", secret, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("ebs")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let request =
        SignableRequest::new(method, path, all.iter().copied(), SignableBody::Bytes(body))
            .expect("signable");
    let (instructions, _) = sign(request, &params).expect("sign").into_parts();
    let mut lines = String::new();
    for (name, value) in headers {
        lines.push_str(&format!("\r\n{name}: {value}"));
    }
    for (name, value) in instructions.headers() {
        lines.push_str(&format!("\r\n{name}: {value}"));
    }
    lines
}

/// Signs a PutSnapshotBlock with an unsigned body (`UNSIGNED-PAYLOAD`),
/// covering only `signed` of its headers; `unsigned` go along unsigned.
/// Returns the head lines to send, `host` included.
fn sign_unsigned_put(
    server: &Server,
    path: &str,
    signed: &[(&str, &str)],
    unsigned: &[(&str, &str)],
) -> String {
    let mut lines = blocksnap::testing::sign_request(
        &server.address.to_string(),
        "PUT",
        path,
        signed,
        None,
        "AKIDWIRE",
        "wire-secret",
    );
    for (name, value) in unsigned {
        lines.push_str(&format!("\r\n{name}: {value}"));
    }
    lines
}

/// Starts a one-GiB snapshot with a signed StartSnapshot; returns its id.
fn start_signed(server: &Server) -> String {
    let body = br#"{"VolumeSize": 1}"#;
    let head = sign_headers(
        server,
        "POST",
        "/snapshots",
        &[("content-type", "application/json")],
        body,
        "wire-secret",
        std::time::SystemTime::now(),
    );
    let started = send_signed(server, "POST /snapshots HTTP/1.1", &head, body);
    started.json()["SnapshotId"]
        .as_str()
        .expect("id")
        .to_string()
}

#[test]
fn an_unsigned_block_needs_its_checksum_and_length_signed() {
    let server = signed_server();
    let snapshot = start_signed(&server);
    let data = block(5);
    let sum = checksum(&data);
    let path = format!("/snapshots/{snapshot}/blocks/0");
    let request_line = format!("PUT {path} HTTP/1.1");
    let length = ("x-amz-data-length", "524288");
    let check = ("x-amz-checksum", sum.as_str());
    let algorithm = ("x-amz-checksum-algorithm", "SHA256");
    // The checksum, or the length, travels unsigned: anyone on the path
    // could swap the block and its checksum together.
    for (signed, unsigned) in [
        (vec![length, algorithm], vec![check]),
        (vec![check, algorithm], vec![length]),
    ] {
        let head = sign_unsigned_put(&server, &path, &signed, &unsigned);
        send_whole_head(&server, &format!("{request_line}{head}"), &data).assert_error(
            403,
            "AccessDeniedException",
            Some("UNAUTHORIZED_ACCOUNT"),
        );
    }
    let head = sign_unsigned_put(&server, &path, &[length, check, algorithm], &[]);
    let put = send_whole_head(&server, &format!("{request_line}{head}"), &data);
    assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
}

/// A block sent with a signed body (as boto3 and the AWS CLI send it over
/// plain HTTP) is hashed once for both the signature and the checksum:
/// each must still hold of the bytes that arrived, with or without an
/// `x-amz-content-sha256` header.
#[test]
fn a_signed_block_is_checked_against_its_signature_and_its_checksum() {
    let server = signed_server();
    let snapshot = start_signed(&server);
    let data = block(6);
    let other = block(7);
    let hex = |bytes: &[u8]| -> String {
        blocksnap::codec::sha256(bytes)
            .0
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    };
    let (data_hex, other_hex) = (hex(&data), hex(&other));
    let (data_sum, other_sum) = (checksum(&data), checksum(&other));
    let path = format!("/snapshots/{snapshot}/blocks/0");
    let request_line = format!("PUT {path} HTTP/1.1");
    let put = |content_sha256: Option<&str>, sum: &str, signed_body: &[u8], sent: &[u8]| {
        let mut headers = vec![
            ("x-amz-data-length", "524288"),
            ("x-amz-checksum", sum),
            ("x-amz-checksum-algorithm", "SHA256"),
        ];
        headers.extend(content_sha256.map(|value| ("x-amz-content-sha256", value)));
        let head = sign_headers(
            &server,
            "PUT",
            &path,
            &headers,
            signed_body,
            "wire-secret",
            std::time::SystemTime::now(),
        );
        send_signed(&server, &request_line, &head, sent)
    };
    for content_sha256 in [None, Some(data_hex.as_str())] {
        let accepted = put(content_sha256, &data_sum, &data, &data);
        assert_eq!(
            accepted.status,
            201,
            "{}",
            String::from_utf8_lossy(&accepted.body)
        );
        assert_eq!(accepted.header("x-amz-Checksum"), Some(data_sum.as_str()));
        // Another block than the signed one, its checksum as signed.
        put(content_sha256, &data_sum, &data, &other).assert_error(
            403,
            "AccessDeniedException",
            Some("UNAUTHORIZED_ACCOUNT"),
        );
        // Signed as sent, with another block's checksum.
        put(content_sha256, &other_sum, &data, &data).assert_error(
            400,
            "ValidationException",
            Some("INVALID_BLOCK"),
        );
    }
    // A declared body hash that is not the body's.
    put(Some(&other_hex), &data_sum, &data, &data).assert_error(
        403,
        "AccessDeniedException",
        Some("UNAUTHORIZED_ACCOUNT"),
    );
}

/// Like [`send`], with the Host header the signature covers.
fn send_signed(server: &Server, request_line: &str, signed: &str, body: &[u8]) -> Reply {
    let head = format!("{request_line}{signed}\r\nHost: {}", server.address);
    send_whole_head(server, &head, body)
}

/// Sends `head` (request line and every header but the body's length)
/// and `body` on a new connection.
fn send_whole_head(server: &Server, head: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(server.address).expect("connect");
    let request = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    stream.write_all(body).expect("write body");
    read_reply(stream)
}

#[test]
fn signatures_are_checked_for_key_secret_time_and_content() {
    let server = signed_server();
    let body = br#"{"VolumeSize": 1}"#;
    let now = std::time::SystemTime::now();
    let headers = [("content-type", "application/json")];
    let good = sign_headers(
        &server,
        "POST",
        "/snapshots",
        &headers,
        body,
        "wire-secret",
        now,
    );
    let started = send_signed(&server, "POST /snapshots HTTP/1.1", &good, body);
    assert_eq!(
        started.status,
        201,
        "{}",
        String::from_utf8_lossy(&started.body)
    );
    assert_eq!(started.json()["OwnerId"], "333333333333");

    let denied = |reply: Reply| {
        reply.assert_error(403, "AccessDeniedException", Some("UNAUTHORIZED_ACCOUNT"))
    };
    // Unsigned.
    denied(start(&server, r#"{"VolumeSize": 1}"#));
    // The wrong secret.
    let wrong = sign_headers(&server, "POST", "/snapshots", &headers, body, "not-it", now);
    denied(send_signed(
        &server,
        "POST /snapshots HTTP/1.1",
        &wrong,
        body,
    ));
    // Signed 20 minutes ago, or 20 minutes ahead.
    for skew in [-1i64, 1] {
        let time = if skew < 0 {
            now - std::time::Duration::from_secs(20 * 60)
        } else {
            now + std::time::Duration::from_secs(20 * 60)
        };
        let skewed = sign_headers(
            &server,
            "POST",
            "/snapshots",
            &headers,
            body,
            "wire-secret",
            time,
        );
        denied(send_signed(
            &server,
            "POST /snapshots HTTP/1.1",
            &skewed,
            body,
        ));
    }
    // A body other than the signed one.
    denied(send_signed(
        &server,
        "POST /snapshots HTTP/1.1",
        &good,
        br#"{"VolumeSize": 2}"#,
    ));
    // A signed header changed after signing.
    let tampered = good.replace("application/json", "application/jsox");
    denied(send_signed(
        &server,
        "POST /snapshots HTTP/1.1",
        &tampered,
        body,
    ));
    // Another path than the signed one.
    denied(send_signed(
        &server,
        "POST /snapshots/completion/snap-0123456789abcdef HTTP/1.1",
        &good,
        body,
    ));
}

#[test]
fn health_and_metrics_answer_without_authentication() {
    let server = signed_server();
    let health = send(&server, "GET /health HTTP/1.1", b"");
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), serde_json::json!({"Status": "ok"}));
    assert!(health.header("x-amzn-RequestId").is_some());
    // One denied request, then the metrics show it.
    start(&server, r#"{"VolumeSize": 1}"#);
    let open = server_with_one_block();
    let metrics = send(&open, "GET /metrics HTTP/1.1", b"");
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).expect("text");
    let request_lines = [
        "blocksnap_requests_total{operation=\"StartSnapshot\",status=\"201\"} 1",
        "blocksnap_requests_total{operation=\"PutSnapshotBlock\",status=\"201\"} 1",
        "# TYPE blocksnap_request_duration_seconds histogram",
    ];
    for line in request_lines {
        assert!(text.contains(line), "metrics lack {line}:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
    // Nothing on the API port tells what the store holds: counters of
    // chunks or bytes would tell one owner whether another stored a block.
    for gauge in [
        "blocksnap_block_bytes",
        "blocksnap_pending_snapshots",
        "blocksnap_chunks",
        "blocksnap_stored_bytes",
    ] {
        assert!(!text.contains(gauge), "{gauge} on the API port:\n{text}");
    }
    // The operator's listener has them.
    let mut stream = TcpStream::connect(open.metrics_address).expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("write");
    let private = String::from_utf8(read_reply(stream).body).expect("text");
    for line in request_lines.into_iter().chain([
        "blocksnap_block_bytes_total{direction=\"in\"} 524288",
        "blocksnap_pending_snapshots 1",
        "blocksnap_chunks 1",
    ]) {
        assert!(
            private.contains(line),
            "private metrics lack {line}:\n{private}"
        );
    }
    assert_eq!(private.matches("# EOF").count(), 1, "{private}");
    let denied = String::from_utf8(send(&server, "GET /metrics HTTP/1.1", b"").body).expect("text");
    assert!(
        denied.contains("blocksnap_requests_total{operation=\"StartSnapshot\",status=\"403\"} 1"),
        "{denied}"
    );
}

/// An unauthenticated server after one StartSnapshot and one put.
fn server_with_one_block() -> Server {
    let server = server();
    let snapshot = start(&server, r#"{"VolumeSize": 1}"#).json()["SnapshotId"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(put(&server, &snapshot, 0, &block(3)).status, 201);
    server
}

/// Sends one EC2 Query request (`POST /`, a form body).
fn ec2_query(server: &Server, form: &str) -> Reply {
    send(
        server,
        &format!(
            "POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}",
            form.len()
        ),
        form.as_bytes(),
    )
}

#[test]
fn ec2_queries_get_xml_errors_throttling_and_limits() {
    let mut config = ServerConfig::new(Authentication::InsecureSingleOwner(OWNER.into()));
    config
        .rate_limits
        .set("Ec2Describe", 1)
        .expect("a known limit");
    let server = LoopbackServer::start(config, EngineConfig::default());
    let describe = "Action=DescribeSnapshots&Version=2016-11-15";
    let replies: Vec<Reply> = (0..3).map(|_| ec2_query(&server, describe)).collect();
    assert_eq!(replies[0].status, 200);
    let body = String::from_utf8_lossy(&replies[0].body).to_string();
    assert!(body.contains("<snapshotSet></snapshotSet>"), "{body}");
    let id = replies[0].header("x-amzn-RequestId").expect("request id");
    assert!(
        body.contains(&format!("<requestId>{id}</requestId>")),
        "{body}"
    );
    let throttled = replies
        .iter()
        .find(|reply| reply.status == 503)
        .expect("a second describe within the second is throttled");
    let body = String::from_utf8_lossy(&throttled.body);
    assert!(body.contains("<Code>RequestLimitExceeded</Code>"), "{body}");
    assert_eq!(
        throttled.header("content-type"),
        Some("text/xml;charset=UTF-8")
    );
    // Other actions on their own bucket; unknown ones named.
    let unknown = ec2_query(&server, "Action=TerminateInstances&Version=2016-11-15");
    assert_eq!(unknown.status, 400);
    assert!(String::from_utf8_lossy(&unknown.body).contains("<Code>InvalidAction</Code>"));
    // A form over 64 KiB is refused from its declared length.
    let huge = format!(
        "Action=DescribeTags&Filter.1.Name=key&Filter.1.Value.1={}",
        "x".repeat(70_000)
    );
    let refused = ec2_query(&server, &huge);
    assert_eq!(refused.status, 400);
    assert!(String::from_utf8_lossy(&refused.body).contains("<Code>InvalidParameterValue</Code>"));
    // A name given twice.
    let repeated = ec2_query(&server, "Action=DescribeTags&Action=DescribeTags");
    assert_eq!(repeated.status, 400);
    // The metrics count errors by action and class, and name the build.
    let metrics = send(&server, "GET /metrics HTTP/1.1", b"");
    let text = String::from_utf8_lossy(&metrics.body);
    for expected in [
        "blocksnap_errors_total{operation=\"DescribeSnapshots\",class=\"RequestLimitExceeded\"}",
        "blocksnap_errors_total{operation=\"Ec2Query\",class=\"InvalidAction\"} 1",
        "blocksnap_requests_total{operation=\"DescribeSnapshots\",status=\"200\"}",
        "blocksnap_build_info{version=\"",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
}

#[test]
fn unsigned_ec2_queries_are_refused_before_their_body_is_read() {
    let server = signed_server();
    // No Authorization header: refused with the headers alone (the body
    // announced is never sent).
    let mut stream = TcpStream::connect(server.address).expect("connect");
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\nConnection: close\r\n\r\n",
        )
        .expect("write");
    let reply = read_reply(stream);
    assert_eq!(reply.status, 401);
    assert!(String::from_utf8_lossy(&reply.body).contains("<Code>AuthFailure</Code>"));
}
