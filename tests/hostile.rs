//! Hostile and broken clients against the real `blocksnap serve` process,
//! over raw sockets: slowloris headers, silent connections, a stalled
//! body, thousands of idle connections under a 1,024-descriptor limit,
//! unauthenticated bodies, `Expect: 100-continue` with a huge length, and
//! a body still trickling in at shutdown. Throughout, the server keeps
//! serving others, never poisons itself, and stays small.

use blocksnap::testing::{block, checksum, sign_request};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "AKIDHOSTILE";
const SECRET: &str = "hostile-secret";

/// A `blocksnap serve` process on 127.0.0.1, killed on drop.
struct Server {
    child: Child,
    address: SocketAddr,
    _store: tempfile::TempDir,
}

impl Server {
    /// Starts the server with `args` (timeouts, limits), authenticated by
    /// one access key, under a descriptor limit of `nofile` (soft and hard)
    /// when given.
    fn start(args: &[&str], nofile: Option<u32>) -> Server {
        let store = tempfile::tempdir().expect("tempdir");
        let credentials = store.path().join("test-credentials");
        std::fs::write(
            &credentials,
            format!("{ACCESS_KEY} {SECRET} 444455556666\n"),
        )
        .expect("credentials");
        let binary = env!("CARGO_BIN_EXE_blocksnap");
        let mut command = Command::new("sh");
        command.arg("-c").arg(match nofile {
            Some(limit) => format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
            None => "exec \"$0\" \"$@\"".to_string(),
        });
        command
            .arg(binary)
            .args(["--store"])
            .arg(store.path().join("store"))
            .args(["serve", "--listen", "127.0.0.1:0", "--credentials"])
            .arg(&credentials)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Server {
            child,
            address,
            _store: store,
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream
    }

    /// Resident memory of the server process, bytes.
    fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// A signed request on a new connection, retried for up to `patience`
    /// while the server turns connections away; returns status and body.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        patience: Duration,
    ) -> (u16, Vec<u8>) {
        let deadline = Instant::now() + patience;
        loop {
            let signed = sign_request(
                &self.address.to_string(),
                method,
                path,
                headers,
                Some(body),
                ACCESS_KEY,
                SECRET,
            );
            let attempt = (|| -> std::io::Result<(u16, Vec<u8>)> {
                let mut stream = TcpStream::connect(self.address)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let head = format!(
                    "{method} {path} HTTP/1.1{signed}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes())?;
                stream.write_all(body)?;
                reply(&mut stream)
            })();
            match attempt {
                Ok(reply) => return reply,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "{method} {path} never got through: {error}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Starts a snapshot and signs a put of block `seed` at its index 0
    /// (unsigned body, as the SDKs send blocks): the request head, ready
    /// to write, and the body.
    fn signed_block_put(&self, seed: u64, patience: Duration) -> (String, Vec<u8>) {
        let (status, body) = self.request(
            "POST",
            "/snapshots",
            &[("content-type", "application/json")],
            br#"{"VolumeSize": 1}"#,
            patience,
        );
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let started: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let snapshot = started["SnapshotId"].as_str().expect("id");
        let data = block(seed);
        let sum = checksum(&data);
        let path = format!("/snapshots/{snapshot}/blocks/0");
        let signed = sign_request(
            &self.address.to_string(),
            "PUT",
            &path,
            &[
                ("x-amz-data-length", "524288"),
                ("x-amz-checksum", &sum),
                ("x-amz-checksum-algorithm", "SHA256"),
            ],
            None,
            ACCESS_KEY,
            SECRET,
        );
        let head = format!(
            "PUT {path} HTTP/1.1{signed}\r\nContent-Length: 524288\r\nConnection: close\r\n\r\n"
        );
        (head, data)
    }

    /// Starts a snapshot and puts one block: the server takes writes.
    fn write_one_block(&self, patience: Duration) {
        let (head, data) = self.signed_block_put(9, patience);
        let mut stream = self.connect();
        stream.write_all(head.as_bytes()).expect("write");
        stream.write_all(&data).expect("write body");
        let (status, body) = reply(&mut stream).expect("reply");
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    }

    fn healthy(&self) -> bool {
        let mut stream = self.connect();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        reply(&mut stream).is_ok_and(|(status, _)| status == 200)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a reply to its end (the server closes the connection); returns
/// its status and body.
fn reply(stream: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    let split = bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no reply head in {} bytes", bytes.len())))?;
    let head = String::from_utf8_lossy(&bytes[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((status, bytes[split + 4..].to_vec()))
}

/// Waits until the server closes `stream` (a read returns 0 or fails);
/// returns how long that took.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
        assert!(started.elapsed() < limit, "the connection stayed open");
    }
}

#[test]
fn slow_and_silent_connections_are_closed_and_others_still_served() {
    let server = Server::start(
        &["--header-timeout", "1", "--body-progress-timeout", "1"],
        None,
    );
    // Silent: connects and sends nothing.
    let mut silent = server.connect();
    // Slowloris: a header line, then a byte now and then.
    let mut slowloris = server.connect();
    slowloris
        .write_all(b"POST /snapshots HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let trickle = {
        let mut stream = slowloris.try_clone().expect("clone");
        std::thread::spawn(move || {
            for _ in 0..40 {
                if stream.write_all(b"X").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Meanwhile others are served.
    server.write_one_block(Duration::from_secs(5));
    assert!(closed_within(&mut silent, Duration::from_secs(5)) < Duration::from_secs(5));
    assert!(closed_within(&mut slowloris, Duration::from_secs(5)) < Duration::from_secs(5));
    trickle.join().expect("trickle");
    // A body that stops arriving: headers accepted, then silence.
    let (head, data) = server.signed_block_put(4, Duration::from_secs(5));
    let mut stalled = server.connect();
    stalled.write_all(head.as_bytes()).expect("write");
    stalled.write_all(&data[..1000]).expect("write part");
    let (status, _) = reply(&mut stalled).expect("a reply to the stalled body");
    assert_eq!(status, 400);
    assert!(server.healthy());
    server.write_one_block(Duration::from_secs(5));
}

#[test]
fn thousands_of_idle_connections_under_a_low_descriptor_limit_poison_nothing() {
    // The client needs more descriptors than the server may have.
    let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(hard) = limit.maximum {
        limit.current = Some(hard);
        rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).expect("setrlimit");
    }
    let server = Server::start(&["--header-timeout", "3"], Some(1024));
    let before = server.rss();
    let mut idle = Vec::new();
    for _ in 0..2000 {
        match TcpStream::connect(server.address) {
            Ok(stream) => idle.push(stream),
            Err(error) => panic!("connect: {error}"),
        }
    }
    // While they are held, writes still go through (each attempt may be
    // turned away until idle connections time out).
    server.write_one_block(Duration::from_secs(20));
    assert!(server.healthy());
    // The idle ones are all closed: at once over the cap, at the header
    // deadline under it.
    for stream in &mut idle {
        closed_within(stream, Duration::from_secs(10));
    }
    drop(idle);
    server.write_one_block(Duration::from_secs(10));
    assert!(server.healthy(), "never poisoned");
    let grown = server.rss().saturating_sub(before);
    assert!(grown < 64 << 20, "the server grew by {grown} bytes");
}

#[test]
fn unauthenticated_bodies_are_refused_before_they_are_read() {
    let server = Server::start(&[], None);
    let before = server.rss();
    // Many connections, each announcing a large body under a key the
    // server does not know: each is refused on its headers alone.
    let body = vec![b' '; 100 << 10];
    let mut streams = Vec::new();
    for _ in 0..300 {
        let mut stream = server.connect();
        let head = format!(
            "POST /snapshots HTTP/1.1\r\nHost: x\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIDNOBODY/20261202/us-east-1/ebs/aws4_request, SignedHeaders=host;x-amz-date, Signature=00\r\nX-Amz-Date: 20261202T000000Z\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("write");
        streams.push(stream);
    }
    for stream in &mut streams {
        let (status, reply_body) = reply(stream).expect("reply");
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&reply_body));
    }
    let grown = server.rss().saturating_sub(before);
    assert!(grown < 32 << 20, "the server grew by {grown} bytes");
    // A block announced at 2 GiB with Expect: 100-continue is refused
    // outright: no go-ahead, so the client never sends it.
    let signed = sign_request(
        &server.address.to_string(),
        "PUT",
        "/snapshots/snap-0123456789abcdef/blocks/0",
        &[
            ("x-amz-data-length", "524288"),
            ("x-amz-checksum", "AAAA"),
            ("x-amz-checksum-algorithm", "SHA256"),
        ],
        None,
        ACCESS_KEY,
        SECRET,
    );
    let mut stream = server.connect();
    let head = format!(
        "PUT /snapshots/snap-0123456789abcdef/blocks/0 HTTP/1.1{signed}\r\nContent-Length: 2147483648\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("write");
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).expect("read");
    assert_ne!(&first, b"HTTP/1.1 100", "a go-ahead for a 2 GiB block");
    assert!(
        first.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    assert!(server.healthy());
}

#[test]
fn a_body_trickling_at_shutdown_delays_it_a_bounded_time() {
    let mut server = Server::start(
        &[
            "--shutdown-grace",
            "2",
            "--body-progress-timeout",
            "60",
            "--body-timeout",
            "600",
        ],
        None,
    );
    let (head, data) = server.signed_block_put(7, Duration::from_secs(5));
    let mut trickling = server.connect();
    trickling.write_all(head.as_bytes()).expect("write");
    let writer = {
        let mut stream = trickling.try_clone().expect("clone");
        std::thread::spawn(move || {
            for chunk in data.chunks(64).take(200) {
                if stream.write_all(chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = server.child.wait().expect("wait");
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?} with a 2 s grace"
    );
    writer.join().expect("writer");
    assert!(!Path::new(&format!("/proc/{}", server.child.id())).exists());
}
