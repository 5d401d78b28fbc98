//! Snapshots as NBD exports, against real NBD clients: libnbd's `nbdinfo`
//! and `nbdcopy`, QEMU's `qemu-img` and `qemu-io` (the test command
//! installs them from Debian packages), and a raw client in this file for
//! what no tool sends: hostile options and requests, clients that vanish,
//! damage, and a snapshot deleted while it is read.

// NBD's fields are big-endian (network byte order).
#![allow(clippy::big_endian_bytes)]

use blocksnap::format::nbd::{self as wire, ChunkHeader, OptionHeader, OptionReplyHeader};
use blocksnap::nbd::{Exports, NbdConfig, NbdListener, NbdServer};
use blocksnap::volume::{self, BackupOptions, BackupOutcome};
use blocksnap::Engine;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const BLOCK: usize = 524_288;

/// Deterministic contents: kind 0 zeros, else a generated block.
fn block(kind: u32, seed: u64) -> Vec<u8> {
    match kind {
        0 => vec![0u8; BLOCK],
        kind => blocksnap::testing::block(seed * 3 + u64::from(kind - 1)),
    }
}

/// A 20-block image plus a 1000-byte tail: blocks 0-2 data, 3 written as
/// zeros, 4-9 sparse (never written by the image's writer), 10-19 data.
fn write_image(path: &Path) -> Vec<u8> {
    let mut image = Vec::new();
    for index in 0..20u32 {
        let kind = match index {
            3..=9 => 0,
            index => 1 + index % 3,
        };
        image.extend(block(kind, u64::from(index) + 1));
    }
    image.extend(&block(3, 99)[..1000]);
    std::fs::write(path, &image).expect("write image");
    image
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!("running {program} (installed by the test command): {error}")
        })
}

fn ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        Store {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_blocksnap"));
        command
            .args(args)
            .env("BLOCKSNAP_STORE", self.path("store"))
            .env_remove("BLOCKSNAP_PASSPHRASE")
            .stdin(Stdio::null());
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.command(args).output().expect("run blocksnap");
        assert!(
            output.status.success(),
            "blocksnap {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    fn backup(&self, image: &Path, parent: Option<&str>) -> String {
        let mut args = vec!["backup", image.to_str().expect("path")];
        if let Some(parent) = parent {
            args.extend(["--parent", parent]);
        }
        self.ok(&args).trim().to_string()
    }

    fn restore(&self, snapshot: &str, name: &str) -> PathBuf {
        let output = self.path(name);
        self.ok(&["restore", snapshot, output.to_str().expect("path")]);
        output
    }
}

/// A running `blocksnap nbd`, killed when dropped.
struct NbdProcess {
    child: Child,
    socket: PathBuf,
    /// Its stdout, kept open while it runs.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl NbdProcess {
    fn start(store: &Store, snapshots: &[&str]) -> NbdProcess {
        let socket = store.path("nbd.sock");
        let mut args = vec!["nbd", "--socket", socket.to_str().expect("path")];
        args.extend(snapshots);
        let mut child = store
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start blocksnap nbd");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        lines.read_line(&mut first).expect("read stdout");
        assert_eq!(
            first.trim(),
            format!("listening on unix:{}", socket.display())
        );
        NbdProcess {
            child,
            socket,
            _stdout: lines,
        }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        ok("kill", &["-TERM", &pid]);
        self.child.wait().expect("wait")
    }
}

impl Drop for NbdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nbdinfo --json --map[=CONTEXT]` as (offset, length, type) triples.
fn map(uri: &str, context: Option<&str>) -> Vec<(u64, u64, u64)> {
    let flag = match context {
        Some(context) => format!("--map={context}"),
        None => "--map".into(),
    };
    let json: Value = serde_json::from_str(&ok("nbdinfo", &["--json", &flag, uri])).expect("json");
    json.as_array()
        .expect("extents")
        .iter()
        .map(|extent| {
            (
                extent["offset"].as_u64().expect("offset"),
                extent["length"].as_u64().expect("length"),
                extent["type"].as_u64().expect("type"),
            )
        })
        .collect()
}

/// The bytes `qemu-io -c 'read -v OFFSET LENGTH'` prints.
fn qemu_io_read(uri: &str, offset: u64, length: usize) -> Vec<u8> {
    let command = format!("read -v {offset} {length}");
    let out = ok("qemu-io", &["-r", "-f", "raw", "-c", &command, uri]);
    let mut bytes = Vec::new();
    for line in out.lines() {
        // "0000abcd:  00 11 22 ...  ascii"
        let Some((address, rest)) = line.split_once(":  ") else {
            continue;
        };
        if u64::from_str_radix(address, 16).is_err() {
            continue;
        }
        for field in rest.split(' ') {
            if field.is_empty() {
                break;
            }
            bytes.push(u8::from_str_radix(field, 16).expect("hex byte"));
        }
    }
    bytes
}

#[test]
fn real_clients_list_map_copy_and_read_exports_byte_identical_to_restore() {
    let store = Store::new();
    let image_path = store.path("disk.img");
    let mut image = write_image(&image_path);
    let first = store.backup(&image_path, None);
    // The child changes blocks 1 and 12, and the tail.
    image[BLOCK..2 * BLOCK].copy_from_slice(&block(3, 500));
    image[12 * BLOCK..13 * BLOCK].copy_from_slice(&block(2, 501));
    let tail = image.len() - 10;
    image[tail..].copy_from_slice(b"0123456789");
    std::fs::write(&image_path, &image).expect("write");
    let second = store.backup(&image_path, Some(&first));
    let restored_first = store.restore(&first, "first.raw");
    let restored_second = store.restore(&second, "second.raw");

    let server = NbdProcess::start(&store, &[]);
    let (uri_first, uri_second) = (server.uri(&first), server.uri(&second));
    let listing = ok(
        "nbdinfo",
        &[
            "--list",
            &format!("nbd+unix:///?socket={}", server.socket.display()),
        ],
    );
    assert!(
        listing.contains(&first) && listing.contains(&second),
        "{listing}"
    );

    // Export size is the image's; allocation follows the stored blocks
    // (the zero block is a hole).
    let size = image.len() as u64;
    let block = BLOCK as u64;
    assert_eq!(
        map(&uri_first, None),
        vec![
            (0, 3 * block, 0),
            (3 * block, 7 * block, 3),
            (10 * block, size - 10 * block, 0),
        ]
    );
    // The changed-block context: exactly blocks 1, 12 and the last.
    let context = format!("blocksnap:changed:{first}");
    let changed: Vec<(u64, u64)> = map(&uri_second, Some(&context))
        .into_iter()
        .filter(|extent| extent.2 == 1)
        .map(|extent| (extent.0, extent.1))
        .collect();
    assert_eq!(
        changed,
        vec![
            (block, block),
            (12 * block, block),
            (20 * block, size - 20 * block)
        ]
    );
    let contexts = ok("nbdinfo", &["--json", &uri_second]);
    assert!(contexts.contains(&context), "{contexts}");

    // Copies through libnbd and QEMU equal restore's output.
    let copied = store.path("copied.raw");
    ok("nbdcopy", &[&uri_first, copied.to_str().expect("path")]);
    assert!(std::fs::read(&copied).expect("read") == std::fs::read(&restored_first).expect("read"));
    let converted = store.path("converted.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri_second,
            converted.to_str().expect("path"),
        ],
    );
    // QEMU rounds an export's size up to 512 bytes and reads the rest as
    // zeros; libnbd and restore keep the image's own length.
    let converted = std::fs::read(&converted).expect("read");
    assert_eq!(converted.len(), image.len().next_multiple_of(512));
    assert!(converted[..image.len()] == image[..]);
    assert!(converted[image.len()..].iter().all(|byte| *byte == 0));
    assert!(std::fs::read(&restored_second).expect("read") == image);
    ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &uri_second,
            &uri_second,
        ],
    );
    let copied_second = store.path("copied-second.raw");
    ok(
        "nbdcopy",
        &[&uri_second, copied_second.to_str().expect("path")],
    );
    assert!(std::fs::read(&copied_second).expect("read") == image);
    let differ = run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &uri_first, &uri_second],
    );
    assert_eq!(differ.status.code(), Some(1), "the two snapshots differ");

    // Random reads at odd offsets and lengths, across block edges.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let offset = seed % (size - 70_000);
        let length = 1 + (seed >> 40) as usize % 65_000;
        assert_eq!(
            qemu_io_read(&uri_second, offset, length),
            image[offset as usize..offset as usize + length],
            "{length} bytes at {offset}"
        );
    }

    // A qcow2 overlay on the export takes writes; the snapshot is
    // unchanged.
    let overlay = store.path("overlay.qcow2");
    let overlay_path = overlay.to_str().expect("path");
    ok(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            &uri_first,
            overlay_path,
        ],
    );
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 4096 8192",
            "-c",
            "write -P 0xcd 6291456 512",
            overlay_path,
        ],
    );
    let hydrated = store.path("hydrated.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            overlay_path,
            hydrated.to_str().expect("path"),
        ],
    );
    let mut expected = std::fs::read(&restored_first).expect("read");
    expected[4096..4096 + 8192].fill(0xab);
    expected[6_291_456..6_291_456 + 512].fill(0xcd);
    let hydrated = std::fs::read(&hydrated).expect("read");
    assert!(hydrated[..expected.len()] == expected[..]);
    assert!(hydrated[expected.len()..].iter().all(|byte| *byte == 0));
    // Hydration: the overlay takes in every block and drops its backing.
    ok("qemu-img", &["rebase", "-b", "", overlay_path]);
    let info = ok("qemu-img", &["info", "--output=json", overlay_path]);
    assert!(!info.contains("backing-filename"), "{info}");
    let standalone = store.path("standalone.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            overlay_path,
            standalone.to_str().expect("path"),
        ],
    );
    assert!(std::fs::read(&standalone).expect("read") == hydrated);
    let again = store.path("again.raw");
    ok("nbdcopy", &[&uri_first, again.to_str().expect("path")]);
    assert!(std::fs::read(&again).expect("read") == std::fs::read(&restored_first).expect("read"));

    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM stops the server cleanly: {status}"
    );
    assert!(!store.path("nbd.sock").exists(), "the socket is removed");
    store.ok(&["verify"]);
}

#[test]
fn only_the_named_snapshots_are_exported_and_serve_exports_over_its_socket() {
    let store = Store::new();
    let image_path = store.path("disk.img");
    write_image(&image_path);
    let first = store.backup(&image_path, None);
    let second = store.backup(&image_path, None);
    let server = NbdProcess::start(&store, &[&first]);
    let listing = ok(
        "nbdinfo",
        &[
            "--list",
            &format!("nbd+unix:///?socket={}", server.socket.display()),
        ],
    );
    assert!(
        listing.contains(&first) && !listing.contains(&second),
        "{listing}"
    );
    let refused = run("nbdinfo", &[&server.uri(&second)]);
    assert!(!refused.status.success());
    // The default export is the only one.
    let default = ok(
        "nbdinfo",
        &[
            "--size",
            &format!("nbd+unix:///?socket={}", server.socket.display()),
        ],
    );
    assert_eq!(default.trim(), (20 * BLOCK + 1000).to_string());
    drop(server);

    let socket = store.path("serve-nbd.sock");
    let mut serve = store
        .command(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-authentication",
            "--nbd-socket",
            socket.to_str().expect("path"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut line = String::new();
    BufReader::new(serve.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert!(line.starts_with("listening on"), "{line}");
    let uri = format!("nbd+unix:///{second}?socket={}", socket.display());
    let copied = store.path("copied.raw");
    ok("nbdcopy", &[&uri, copied.to_str().expect("path")]);
    assert!(std::fs::read(&copied).expect("read") == std::fs::read(&image_path).expect("read"));
    ok("kill", &["-TERM", &serve.id().to_string()]);
    assert!(serve.wait().expect("wait").success());
}

// The raw client: what no tool sends.

/// A client speaking the protocol byte by byte.
struct Raw {
    stream: UnixStream,
}

/// A reply as the raw client reads it.
#[derive(Debug, PartialEq)]
enum Reply {
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk {
        header: ChunkHeader,
        payload: Vec<u8>,
    },
}

impl Raw {
    /// Connects and reads the greeting; `flags` are the client flags sent.
    fn connect(socket: &Path, flags: u32) -> Raw {
        let mut stream = UnixStream::connect(socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut greeting = [0u8; wire::GREETING_LEN];
        stream.read_exact(&mut greeting).expect("greeting");
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        stream.write_all(&flags.to_be_bytes()).expect("flags");
        Raw { stream }
    }

    fn send_option(&mut self, option: u32, data: &[u8]) {
        let header = OptionHeader {
            option,
            length: data.len() as u32,
        };
        self.stream.write_all(&header.encode()).expect("option");
        self.stream.write_all(data).expect("option data");
    }

    fn option_reply(&mut self) -> (OptionReplyHeader, Vec<u8>) {
        let mut header = [0u8; wire::OPTION_REPLY_HEADER_LEN];
        self.stream.read_exact(&mut header).expect("option reply");
        let header = OptionReplyHeader::decode(&header).expect("reply header");
        let mut data = vec![0u8; header.length as usize];
        self.stream.read_exact(&mut data).expect("reply data");
        (header, data)
    }

    /// Sends an option and returns the type of its final reply.
    fn option(&mut self, option: u32, data: &[u8]) -> u32 {
        self.send_option(option, data);
        loop {
            let (header, _) = self.option_reply();
            assert_eq!(header.option, option);
            if header.reply != wire::REP_INFO
                && header.reply != wire::REP_SERVER
                && header.reply != wire::REP_META_CONTEXT
            {
                return header.reply;
            }
        }
    }

    /// Structured replies, then `NBD_OPT_GO` on `export`.
    fn go(&mut self, export: &str) -> u32 {
        assert_eq!(self.option(wire::OPT_STRUCTURED_REPLY, &[]), wire::REP_ACK);
        let request = wire::ExportRequest {
            name: export.into(),
            info_requests: vec![wire::INFO_BLOCK_SIZE],
        };
        self.option(wire::OPT_GO, &request.encode().expect("encode"))
    }

    fn request(&mut self, command: u16, flags: u16, cookie: u64, offset: u64, length: u32) {
        let request = wire::Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        self.stream.write_all(&request.encode()).expect("request");
    }

    fn reply(&mut self) -> Reply {
        let mut magic = [0u8; 4];
        self.stream.read_exact(&mut magic).expect("reply magic");
        let length = wire::ReplyHeader::length_for_magic(magic).expect("a reply magic");
        let mut header = magic.to_vec();
        header.resize(length, 0);
        self.stream
            .read_exact(&mut header[4..])
            .expect("reply header");
        match wire::ReplyHeader::decode(&header).expect("reply header") {
            wire::ReplyHeader::Simple { error, cookie } => Reply::Simple { error, cookie },
            wire::ReplyHeader::Structured(header) => {
                let mut payload = vec![0u8; header.length as usize];
                self.stream.read_exact(&mut payload).expect("payload");
                Reply::Chunk { header, payload }
            }
        }
    }

    /// Reads `length` bytes at `offset` through structured replies: the
    /// data, or the first error and its message.
    fn read(&mut self, offset: u64, length: u32) -> Result<Vec<u8>, (u32, String)> {
        self.request(wire::CMD_READ, 0, 7, offset, length);
        let mut data = vec![0u8; length as usize];
        let mut error = None;
        loop {
            let Reply::Chunk { header, payload } = self.reply() else {
                panic!("a simple reply to a structured read");
            };
            assert_eq!(header.cookie, 7);
            match header.kind {
                wire::REPLY_TYPE_OFFSET_DATA => {
                    let at = u64::from_be_bytes(payload[..8].try_into().expect("8")) - offset;
                    data[at as usize..at as usize + payload.len() - 8]
                        .copy_from_slice(&payload[8..]);
                }
                wire::REPLY_TYPE_OFFSET_HOLE => {}
                wire::REPLY_TYPE_NONE => {}
                kind if kind & 0x8000 != 0 => {
                    error.get_or_insert(
                        wire::decode_error_payload(&payload).expect("error payload"),
                    );
                }
                kind => panic!("unexpected chunk type {kind}"),
            }
            if header.flags & wire::REPLY_FLAG_DONE != 0 {
                return match error {
                    Some(error) => Err(error),
                    None => Ok(data),
                };
            }
        }
    }

    /// The error of a one-chunk or simple reply to the last request.
    fn error(&mut self) -> u32 {
        match self.reply() {
            Reply::Simple { error, .. } => error,
            Reply::Chunk { header, payload } => {
                assert!(header.flags & wire::REPLY_FLAG_DONE != 0);
                if header.kind == wire::REPLY_TYPE_NONE {
                    0
                } else {
                    wire::decode_error_payload(&payload).expect("error").0
                }
            }
        }
    }

    /// Whether the server closed the connection (reads end).
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

/// An engine holding one backup of [`write_image`], and its id.
fn engine_with_backup(dir: &Path) -> (Engine, blocksnap::ids::SnapshotId, Vec<u8>) {
    let engine = Engine::open(dir.join("store")).expect("open");
    let image_path = dir.join("disk.img");
    let image = write_image(&image_path);
    let outcome = volume::backup(
        &engine,
        &image_path,
        &BackupOptions::default(),
        &|_| {},
        &AtomicBool::new(false),
    )
    .expect("backup");
    let BackupOutcome::Completed(report) = outcome else {
        panic!("interrupted");
    };
    (engine, report.snapshot_id, image)
}

/// Serves `engine` on a socket in `dir` from a runtime of its own.
fn serve_in_background(
    engine: Engine,
    dir: &Path,
    config: NbdConfig,
) -> (PathBuf, NbdServer, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let socket = dir.join("raw.sock");
    let server = NbdServer::new(engine, config);
    let listener = {
        let _entered = runtime.enter();
        NbdListener::bind_unix(&socket).expect("bind")
    };
    let serving = server.clone();
    runtime.spawn(async move { serving.serve(listener, std::future::pending()).await });
    (socket, server, runtime)
}

#[test]
fn hostile_clients_get_protocol_errors_and_others_are_served_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, snapshot, image) = engine_with_backup(dir.path());
    let name = snapshot.to_string();
    let config = NbdConfig {
        exports: Exports::Only(vec![snapshot]),
        handshake_timeout: Duration::from_millis(500),
        max_connections: 8,
        ..NbdConfig::default()
    };
    let (socket, server, _runtime) = serve_in_background(engine, dir.path(), config);

    // Client flags the server never offered: hung up on.
    let mut raw = Raw::connect(&socket, 0x8000_0001);
    assert!(raw.closed());
    // Option data over the limit: refused before it is read, then closed.
    let mut raw = Raw::connect(&socket, wire::FLAG_C_FIXED_NEWSTYLE);
    let header = OptionHeader {
        option: wire::OPT_GO,
        length: 1 << 30,
    };
    raw.stream.write_all(&header.encode()).expect("write");
    assert_eq!(raw.option_reply().0.reply, wire::REP_ERR_TOO_BIG);
    assert!(raw.closed());
    // A bad option magic: closed.
    let mut raw = Raw::connect(&socket, wire::FLAG_C_FIXED_NEWSTYLE);
    raw.stream.write_all(&[0x55; 16]).expect("write");
    assert!(raw.closed());
    // A client that never finishes its handshake is timed out.
    let mut idle = Raw::connect(&socket, wire::FLAG_C_FIXED_NEWSTYLE);
    assert!(idle.closed(), "handshake deadline");

    // Errors that leave the negotiation going.
    let mut raw = Raw::connect(&socket, wire::FLAG_C_FIXED_NEWSTYLE);
    assert_eq!(raw.option(99, b"whatever"), wire::REP_ERR_UNSUP);
    assert_eq!(raw.option(wire::OPT_LIST, b"x"), wire::REP_ERR_INVALID);
    assert_eq!(
        raw.option(wire::OPT_GO, &[0, 0, 0, 9, b'a']),
        wire::REP_ERR_INVALID
    );
    assert_eq!(raw.option(wire::OPT_STARTTLS, &[]), wire::REP_ERR_POLICY);
    let meta = wire::MetaContextRequest {
        export: name.clone(),
        queries: vec![wire::CONTEXT_ALLOCATION.into()],
    };
    // Metadata contexts need structured replies first.
    assert_eq!(
        raw.option(wire::OPT_SET_META_CONTEXT, &meta.encode().expect("encode")),
        wire::REP_ERR_INVALID
    );
    let unknown = wire::ExportRequest {
        name: "snap-0000000000000001".into(),
        info_requests: vec![],
    };
    assert_eq!(
        raw.option(wire::OPT_INFO, &unknown.encode().expect("encode")),
        wire::REP_ERR_UNKNOWN
    );
    assert_eq!(raw.go(&name), wire::REP_ACK);

    // Transmission: bad requests are errors, the connection goes on.
    let size = image.len() as u64;
    raw.request(wire::CMD_READ, 0, 1, size - 10, 11);
    assert_eq!(raw.error(), wire::EINVAL, "beyond the end");
    raw.request(wire::CMD_READ, 0, 2, u64::MAX - 5, 10);
    assert_eq!(raw.error(), wire::EINVAL, "offset + length overflows");
    raw.request(wire::CMD_READ, 0, 3, 0, 64 << 20);
    assert_eq!(raw.error(), wire::EOVERFLOW, "over the maximum payload");
    raw.request(wire::CMD_READ, 0x40, 4, 0, 512);
    assert_eq!(raw.error(), wire::EINVAL, "unknown flag");
    raw.request(77, 0, 5, 0, 512);
    assert_eq!(raw.error(), wire::EINVAL, "unknown command");
    raw.request(wire::CMD_BLOCK_STATUS, 0, 6, 0, 512);
    assert_eq!(raw.error(), wire::EINVAL, "no context selected");
    raw.request(wire::CMD_WRITE, 0, 8, 0, 4096);
    raw.stream.write_all(&[0xee; 4096]).expect("payload");
    assert_eq!(raw.error(), wire::EPERM, "read-only");
    raw.request(wire::CMD_TRIM, 0, 9, 0, 4096);
    assert_eq!(raw.error(), wire::EPERM);
    raw.request(wire::CMD_WRITE_ZEROES, 0, 10, 0, 4096);
    assert_eq!(raw.error(), wire::EPERM);
    assert_eq!(
        raw.read(BLOCK as u64 - 3, 10).expect("read"),
        image[BLOCK - 3..BLOCK + 7]
    );

    // A client that asks for 32 MiB and vanishes does not stop others.
    let mut vanishing = Raw::connect(&socket, wire::FLAG_C_FIXED_NEWSTYLE);
    assert_eq!(vanishing.go(&name), wire::REP_ACK);
    vanishing.request(wire::CMD_READ, 0, 1, 0, 10 * BLOCK as u32);
    drop(vanishing);
    assert_eq!(
        raw.read(0, 3 * BLOCK as u32).expect("read"),
        image[..3 * BLOCK]
    );

    // A bad request magic ends the connection.
    raw.stream
        .write_all(&[0x11; wire::REQUEST_LEN])
        .expect("write");
    assert!(raw.closed());

    // Plain (simple) replies for a client that does not ask for structured
    // ones, and NBD_OPT_EXPORT_NAME.
    let mut simple = Raw::connect(
        &socket,
        wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES,
    );
    simple.send_option(wire::OPT_EXPORT_NAME, name.as_bytes());
    let mut reply = [0u8; 10];
    simple.stream.read_exact(&mut reply).expect("export reply");
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().expect("8")), size);
    simple.request(wire::CMD_READ, 0, 42, 2 * BLOCK as u64 + 5, 100);
    assert_eq!(
        simple.reply(),
        Reply::Simple {
            error: 0,
            cookie: 42
        }
    );
    let mut data = [0u8; 100];
    simple.stream.read_exact(&mut data).expect("data");
    assert_eq!(data[..], image[2 * BLOCK + 5..2 * BLOCK + 105]);
    simple.request(wire::CMD_DISC, 0, 43, 0, 0);
    assert!(simple.closed());

    let stats = server.stats();
    assert!(stats.errors >= 9, "{stats:?}");
}

#[test]
fn a_damaged_block_is_an_io_error_and_the_rest_is_still_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, snapshot, image) = engine_with_backup(dir.path());
    drop(engine);
    // Damage the middle of the largest pack.
    let packs = dir.path().join("store/packs");
    let pack = std::fs::read_dir(&packs)
        .expect("packs")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pack"))
        .max_by_key(|path| std::fs::metadata(path).expect("metadata").len())
        .expect("a pack");
    let mut bytes = std::fs::read(&pack).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&pack, bytes).expect("write");
    let engine = Engine::open_read_only(dir.path().join("store")).expect("open");
    let (socket, server, _runtime) = serve_in_background(engine, dir.path(), NbdConfig::default());
    let mut raw = Raw::connect(&socket, wire::FLAG_C_FIXED_NEWSTYLE);
    assert_eq!(raw.go(&snapshot.to_string()), wire::REP_ACK);
    let mut damaged = 0;
    for index in 0..21u64 {
        let offset = index * BLOCK as u64;
        let length = (image.len() as u64 - offset).min(BLOCK as u64) as u32;
        match raw.read(offset, length) {
            Ok(data) => assert!(
                data[..] == image[offset as usize..offset as usize + length as usize],
                "block {index}: never wrong bytes"
            ),
            Err((error, message)) => {
                assert_eq!(error, wire::EIO, "{message}");
                damaged += 1;
            }
        }
    }
    assert_eq!(damaged, 1, "one flipped byte costs one block");
    assert_eq!(server.stats().damaged_reads, 1);
}

fn gc_everything() -> blocksnap::engine::GcOptions {
    blocksnap::engine::GcOptions {
        live_threshold: 1.0,
        ..blocksnap::engine::GcOptions::default()
    }
}

#[test]
fn a_snapshot_deleted_while_exported_stays_readable_until_its_client_leaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, snapshot, image) = engine_with_backup(dir.path());
    let (socket, _server, _runtime) =
        serve_in_background(engine.clone(), dir.path(), NbdConfig::default());
    let name = snapshot.to_string();
    let mut raw = Raw::connect(&socket, wire::FLAG_C_FIXED_NEWSTYLE);
    assert_eq!(raw.go(&name), wire::REP_ACK);
    blocksnap::api::Ebs::new(&engine)
        .delete_snapshot(blocksnap::api::DeleteSnapshotRequest {
            snapshot_id: name.clone(),
        })
        .expect("delete");
    engine.collect_garbage(gc_everything()).expect("gc");
    assert_eq!(
        raw.read(0, image.len() as u32).expect("read"),
        image,
        "still readable after delete and gc"
    );
    // A new client cannot choose it.
    let mut late = Raw::connect(&socket, wire::FLAG_C_FIXED_NEWSTYLE);
    assert_eq!(late.go(&name), wire::REP_ERR_UNKNOWN);
    raw.request(wire::CMD_DISC, 0, 1, 0, 0);
    assert!(raw.closed());
    // Once it has gone, gc frees the blocks.
    let before = engine.chunk_stats();
    let mut freed = false;
    for _ in 0..100 {
        engine.collect_garbage(gc_everything()).expect("gc");
        if engine.chunk_stats().chunks < before.chunks {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(freed, "the pin is released when the connection closes");
}

#[test]
fn block_status_reports_allocation_and_changes_through_the_raw_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, snapshot, _image) = engine_with_backup(dir.path());
    let (socket, _server, _runtime) = serve_in_background(engine, dir.path(), NbdConfig::default());
    let name = snapshot.to_string();
    let mut raw = Raw::connect(&socket, wire::FLAG_C_FIXED_NEWSTYLE);
    assert_eq!(raw.option(wire::OPT_STRUCTURED_REPLY, &[]), wire::REP_ACK);
    // An unrelated or malformed base is refused with a reason.
    let bad = wire::MetaContextRequest {
        export: name.clone(),
        queries: vec!["blocksnap:changed:snap-00000000000000ff".into()],
    };
    assert_eq!(
        raw.option(wire::OPT_SET_META_CONTEXT, &bad.encode().expect("encode")),
        wire::REP_ERR_INVALID
    );
    let good = wire::MetaContextRequest {
        export: name.clone(),
        queries: vec![wire::CONTEXT_ALLOCATION.into(), "other:thing".into()],
    };
    raw.send_option(wire::OPT_SET_META_CONTEXT, &good.encode().expect("encode"));
    let (header, data) = raw.option_reply();
    assert_eq!(header.reply, wire::REP_META_CONTEXT);
    let id = u32::from_be_bytes(data[..4].try_into().expect("4"));
    assert_eq!(&data[4..], wire::CONTEXT_ALLOCATION.as_bytes());
    assert_eq!(
        raw.option_reply().0.reply,
        wire::REP_ACK,
        "unknown namespaces are ignored"
    );
    let request = wire::ExportRequest {
        name: name.clone(),
        info_requests: vec![],
    };
    assert_eq!(
        raw.option(wire::OPT_GO, &request.encode().expect("encode")),
        wire::REP_ACK
    );
    // From the middle of block 2 over four blocks, one extent only.
    raw.request(
        wire::CMD_BLOCK_STATUS,
        wire::CMD_FLAG_REQ_ONE,
        5,
        2 * BLOCK as u64 + 7,
        4 * BLOCK as u32,
    );
    let Reply::Chunk { header, payload } = raw.reply() else {
        panic!("structured");
    };
    assert_eq!(header.kind, wire::REPLY_TYPE_BLOCK_STATUS);
    assert!(header.flags & wire::REPLY_FLAG_DONE != 0);
    let (context, extents) = wire::decode_block_status(&payload).expect("status");
    assert_eq!(context, id);
    assert_eq!(
        extents,
        vec![wire::Extent {
            length: BLOCK as u32 - 7,
            flags: 0
        }]
    );
}

// Backups from NBD sources.

/// A running `qemu-storage-daemon` exporting a qcow2 image as `disk`.
struct StorageDaemon {
    child: Child,
    socket: PathBuf,
}

impl StorageDaemon {
    fn start(image: &Path, socket: &Path, export_options: &str) -> StorageDaemon {
        let _ = std::fs::remove_file(socket);
        let mut child = Command::new("qemu-storage-daemon")
            .args([
                "--blockdev",
                &format!("driver=file,node-name=file0,filename={}", image.display()),
                "--blockdev",
                "driver=qcow2,node-name=disk0,file=file0",
                "--nbd-server",
                &format!("addr.type=unix,addr.path={}", socket.display()),
                "--export",
                &format!("type=nbd,id=export0,node-name=disk0,name=disk,{export_options}"),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (installed by the test command)");
        for _ in 0..200 {
            if UnixStream::connect(socket).is_ok() {
                return StorageDaemon {
                    child,
                    socket: socket.to_path_buf(),
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("qemu-storage-daemon did not start");
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///disk?socket={}", self.socket.display())
    }

    /// Stops it cleanly (SIGTERM), so the image's bitmaps are stored.
    fn stop(mut self) {
        ok("kill", &["-TERM", &self.child.id().to_string()]);
        assert!(self.child.wait().expect("wait").success());
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn backup_json(store: &Store, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    serde_json::from_str(&store.ok(&with_json)).expect("JSON report")
}

#[test]
fn a_backup_from_a_vm_disk_with_a_dirty_bitmap_reads_only_the_dirty_blocks() {
    let store = Store::new();
    let disk = store.path("disk.qcow2");
    let disk_path = disk.to_str().expect("path");
    let socket = store.path("qsd.sock");
    ok("qemu-img", &["create", "-f", "qcow2", disk_path, "64M"]);
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 3M",
            "-c",
            "write -P 0x22 20M 1M",
            "-c",
            "write -z 40M 2M",
            disk_path,
        ],
    );
    // The full backup reads only the allocated blocks: 3 MiB and 1 MiB.
    let daemon = StorageDaemon::start(&disk, &socket, "writable=off");
    let full = backup_json(&store, &["backup", &daemon.uri()]);
    daemon.stop();
    assert_eq!(full["BlocksRead"], 8, "{full}");
    let parent = full["SnapshotId"].as_str().expect("id").to_string();

    // A persistent dirty bitmap records what the VM writes next.
    ok(
        "qemu-img",
        &[
            "bitmap", "--add", "--enable", "-g", "65536", disk_path, "b0",
        ],
    );
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x33 1M 64k",
            "-c",
            "write -P 0x44 30M 4k",
            "-c",
            "write -z 20M 1M",
            disk_path,
        ],
    );
    let daemon = StorageDaemon::start(&disk, &socket, "writable=on,bitmaps.0=b0");
    let map = store.path("dirty.json");
    let dirty_map = ok(
        "nbdinfo",
        &["--json", "--map=qemu:dirty-bitmap:b0", &daemon.uri()],
    );
    std::fs::write(&map, dirty_map).expect("write map");
    let child = backup_json(
        &store,
        &[
            "backup",
            &daemon.uri(),
            "--parent",
            &parent,
            "--dirty-bitmap",
            "b0",
        ],
    );
    // Blocks 2 and 60 are read; 40 and 41 became zero: recorded unread.
    assert_eq!(child["BlocksRead"], 2, "{child}");
    assert_eq!(child["BlocksWritten"], 4, "{child}");
    // The same change, from nbdinfo's map of the bitmap as a change list.
    let listed = backup_json(
        &store,
        &[
            "backup",
            &daemon.uri(),
            "--parent",
            &parent,
            "--changed-blocks",
            map.to_str().expect("path"),
        ],
    );
    daemon.stop();
    assert_eq!(listed["BlocksRead"], 2, "{listed}");

    let expected = store.path("disk.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            disk_path,
            expected.to_str().expect("path"),
        ],
    );
    let expected = std::fs::read(&expected).expect("read");
    for report in [&child, &listed] {
        let id = report["SnapshotId"].as_str().expect("id");
        let restored = store.restore(id, &format!("{id}.raw"));
        assert!(std::fs::read(&restored).expect("read") == expected, "{id}");
    }
    // A bitmap needs a parent, and an NBD source.
    let image = store.path("plain.img");
    std::fs::write(&image, [1u8; 4096]).expect("write");
    let refused = store
        .command(&[
            "backup",
            image.to_str().expect("path"),
            "--parent",
            &parent,
            "--dirty-bitmap",
            "b0",
        ])
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(2));
}

#[test]
fn a_snapshot_backs_up_into_another_store_through_its_own_export() {
    let store = Store::new();
    let image_path = store.path("disk.img");
    let image = write_image(&image_path);
    let snapshot = store.backup(&image_path, None);
    let server = NbdProcess::start(&store, &[&snapshot]);
    let other = Store::new();
    let report = backup_json(&other, &["backup", &server.uri(&snapshot)]);
    // Blocks 3-9 are holes in the export: never read.
    assert_eq!(report["BlocksRead"], 14, "{report}");
    assert_eq!(report["ImageBytes"], image.len());
    let id = report["SnapshotId"].as_str().expect("id");
    let restored = other.restore(id, "copy.raw");
    assert!(std::fs::read(&restored).expect("read") == image);
    // An export that does not exist is a clear error.
    let missing = other
        .command(&["backup", &server.uri("snap-00000000000000aa")])
        .output()
        .expect("run");
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("is not exported by this server"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

#[test]
fn thin_delta_output_drives_an_incremental_backup() {
    let store = Store::new();
    let image_path = store.path("disk.img");
    let mut image = write_image(&image_path);
    let parent = store.backup(&image_path, None);
    // Thin devices of 64 KiB data blocks: device 2 (the new snapshot)
    // differs in data block 9 (inside image block 1) and has block 100
    // (image block 12) only on its side.
    image[9 * 65536..9 * 65536 + 100].fill(0x5a);
    image[100 * 65536] = 0xa5;
    std::fs::write(&image_path, &image).expect("write");
    let metadata_xml = store.path("thin.xml");
    std::fs::write(
        &metadata_xml,
        r#"<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="1000">
  <device dev_id="1" mapped_blocks="20" transaction="0" creation_time="0" snap_time="0">
    <range_mapping origin_begin="0" data_begin="0" length="20" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="21" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="9" time="0"/>
    <single_mapping origin_block="9" data_block="500" time="1"/>
    <range_mapping origin_begin="10" data_begin="10" length="10" time="0"/>
    <single_mapping origin_block="100" data_block="501" time="1"/>
  </device>
</superblock>
"#,
    )
    .expect("write");
    let metadata = store.path("thin.bin");
    std::fs::write(&metadata, vec![0u8; 8 << 20]).expect("write");
    ok(
        "thin_restore",
        &[
            "-i",
            metadata_xml.to_str().expect("path"),
            "-o",
            metadata.to_str().expect("path"),
        ],
    );
    let delta = ok(
        "thin_delta",
        &[
            "--snap1",
            "1",
            "--snap2",
            "2",
            metadata.to_str().expect("path"),
        ],
    );
    let delta_path = store.path("delta.xml");
    std::fs::write(&delta_path, delta).expect("write");
    let report = backup_json(
        &store,
        &[
            "backup",
            image_path.to_str().expect("path"),
            "--parent",
            &parent,
            "--changed-blocks",
            delta_path.to_str().expect("path"),
            "--changed-format",
            "thin-delta",
        ],
    );
    assert_eq!(report["BlocksRead"], 2, "{report}");
    let id = report["SnapshotId"].as_str().expect("id");
    assert!(std::fs::read(store.restore(id, "child.raw")).expect("read") == image);
}

#[test]
fn exports_and_backups_work_over_tcp_too() {
    let store = Store::new();
    let image_path = store.path("disk.img");
    let image = write_image(&image_path);
    let snapshot = store.backup(&image_path, None);
    let mut child = store
        .command(&["nbd", &snapshot, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start blocksnap nbd");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    lines.read_line(&mut first).expect("read");
    let address = first
        .trim()
        .strip_prefix("listening on ")
        .expect("the address")
        .to_string();
    let mut uri = String::new();
    lines.read_line(&mut uri).expect("read");
    assert_eq!(uri.trim(), format!("nbd://{address}/{snapshot}"));
    let size = ok("nbdinfo", &["--size", uri.trim()]);
    assert_eq!(size.trim(), image.len().to_string());
    let other = Store::new();
    let report = backup_json(&other, &["backup", uri.trim()]);
    let id = report["SnapshotId"].as_str().expect("id");
    assert!(std::fs::read(other.restore(id, "copy.raw")).expect("read") == image);
    ok("kill", &["-TERM", &child.id().to_string()]);
    assert!(child.wait().expect("wait").success());
}
