//! Stock boto3 against `blocksnap serve` on 127.0.0.1: every operation,
//! pagination, parent and child, changed blocks, idempotency, every error
//! class it can provoke, foreign owners, and a concurrent upload and
//! download of a file (`tests/boto3/scenarios.py`).
//!
//! The Python interpreter is `$BLOCKSNAP_PYTHON` (the test command installs
//! boto3 from PyPI into a virtual environment and sets it), else `python3`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const CREDENTIALS: &str = "AKIDALICE alice-secret 111111111111\nAKIDBOB bob-secret 222222222222\n";

struct Server {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `blocksnap serve` on a fresh store with `extra` arguments; with
/// `encryption`, a key file (created on start) and its passphrase in the
/// environment.
fn serve(encryption: bool, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = dir.path().join("credentials");
    std::fs::write(&credentials, CREDENTIALS).expect("write credentials");
    let mut command = Command::new(env!("CARGO_BIN_EXE_blocksnap"));
    command
        .arg("--store")
        .arg(dir.path().join("store"))
        .env_remove("BLOCKSNAP_PASSPHRASE");
    if encryption {
        command
            .arg("--key-file")
            .arg(dir.path().join("keys"))
            .env("BLOCKSNAP_PASSPHRASE", "server passphrase");
    }
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--credentials"])
        .arg(&credentials)
        .args(extra);
    let scheme = if extra.contains(&"--tls-cert") {
        "https"
    } else {
        "http"
    };
    spawn(command, scheme, dir)
}

/// Spawns a prepared `blocksnap ... serve --listen 127.0.0.1:0` command and
/// reads the address it prints; the server lives as long as the result.
fn spawn(mut command: Command, scheme: &str, dir: tempfile::TempDir) -> Server {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start blocksnap serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read address");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    Server {
        child,
        endpoint: format!("{scheme}://{address}"),
        _dir: dir,
    }
}

/// Runs one Python script of `tests/boto3/` against `server`.
fn run_script(server: &Server, script: &str) {
    run_script_with(server, script, &[]);
}

/// [`run_script`] with more arguments after the endpoint; returns what
/// the script printed on stdout.
fn run_script_with(server: &Server, script: &str, arguments: &[&str]) -> String {
    let python = std::env::var("BLOCKSNAP_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!("{}/tests/boto3/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(&python)
        .arg(&script)
        .arg(&server.endpoint)
        .args(arguments)
        .output()
        .unwrap_or_else(|error| panic!("running {python}: {error}"));
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed:\n{report}");
    assert!(report.contains("OK"), "{report}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn boto3_scenarios() {
    // The scenarios start many snapshots at once; quotas have their own test.
    run_script(&serve(false, &["--no-rate-limits"]), "scenarios.py");
}

#[test]
fn boto3_encrypted_snapshots() {
    run_script(&serve(true, &[]), "encryption.py");
}

#[test]
fn boto3_retries_throttled_requests() {
    run_script(
        &serve(false, &["--rate-limit", "ListChangedBlocks=1"]),
        "throttling.py",
    );
}

#[test]
fn boto3_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write certificate");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
    let (cert, key) = (cert.to_str().expect("path"), key.to_str().expect("path"));
    let server = serve(false, &["--tls-cert", cert, "--tls-key", key]);
    run_script_with(&server, "tls.py", &[cert]);
}

#[test]
fn boto3_against_a_server_started_with_no_set_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let mut command = Command::new(env!("CARGO_BIN_EXE_blocksnap"));
    command
        .arg("--store")
        .arg(&store)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("BLOCKSNAP_ACCESS_KEY_ID")
        .env_remove("BLOCKSNAP_SECRET_ACCESS_KEY");
    let server = spawn(command, "http", dir);
    let credentials = std::fs::read_to_string(store.join("credentials")).expect("credentials");
    let key_line = credentials
        .lines()
        .find(|line| !line.starts_with('#'))
        .expect("a key");
    let fields: Vec<&str> = key_line.split_whitespace().collect();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(store.join("credentials"))
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "only the owner may read the secret");
    run_script_with(&server, "default_keys.py", &[fields[0], fields[1]]);
}

/// Runs a bash script of `tests/boto3/` with the AWS CLI against
/// `server`; it must print `SUCCESS`.
fn run_aws_cli_script(server: &Server, script: &str, success: &str) {
    // The test command installs the AWS CLI beside boto3.
    let aws = std::env::var("BLOCKSNAP_PYTHON")
        .ok()
        .and_then(|python| {
            std::path::Path::new(&python)
                .parent()
                .map(|bin| bin.join("aws"))
        })
        .filter(|aws| aws.exists())
        .unwrap_or_else(|| std::path::PathBuf::from("aws"));
    let script = format!("{}/tests/boto3/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(&script)
        .arg(&server.endpoint)
        .arg(&aws)
        .output()
        .expect("run the AWS CLI script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(success),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_aws_cli_round_trips_a_block() {
    run_aws_cli_script(&serve(false, &[]), "aws_cli.sh", "aws cli: OK");
}

#[test]
fn the_aws_cli_manages_snapshots_through_ec2() {
    run_aws_cli_script(&serve(false, &[]), "aws_ec2.sh", "aws cli ec2: OK");
}

#[test]
fn boto3_ec2_snapshot_operations() {
    run_script(&serve(false, &["--no-rate-limits"]), "ec2.py");
}

/// Runs the binary on `store` with `args` (and `environment`); returns
/// its status and stdout.
fn blocksnap(
    store: &std::path::Path,
    args: &[&str],
    environment: &[(&str, &str)],
) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("BLOCKSNAP_OWNER_ID")
        .envs(environment.iter().copied())
        .output()
        .expect("run blocksnap");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.success(),
        format!(
            "{stdout}{}",
            if output.status.success() {
                String::new()
            } else {
                format!("\nstderr: {stderr}")
            }
        ),
    )
}

/// A snapshot uploaded through `serve` by an access key's owner is listed,
/// restored and deleted by the CLI acting for that owner (`--owner`,
/// `BLOCKSNAP_OWNER_ID`), and `ls --all-owners` shows every owner's.
#[test]
fn the_cli_acts_for_the_owner_of_a_served_snapshot() {
    let mut server = serve(false, &[]);
    let uploaded = run_script_with(&server, "upload_one.py", &[]);
    let snapshot = uploaded.trim().to_string();
    assert!(snapshot.starts_with("snap-"), "{uploaded}");
    let _ = server.child.kill();
    let _ = server.child.wait();
    let store = server._dir.path().join("store");
    let image = server._dir.path().join("mine.img");
    std::fs::write(&image, vec![7u8; 1 << 20]).expect("image");
    let (ok, own) = blocksnap(&store, &["backup", image.to_str().expect("utf-8")], &[]);
    assert!(ok, "{own}");
    let (_, listed) = blocksnap(&store, &["ls"], &[]);
    assert!(
        !listed.contains(&snapshot),
        "the default owner sees only its own: {listed}"
    );
    assert!(listed.contains(own.trim()), "{listed}");
    let alice = "111111111111";
    let (_, listed) = blocksnap(&store, &["--owner", alice, "ls"], &[]);
    assert!(
        listed.contains(&snapshot) && !listed.contains(own.trim()),
        "{listed}"
    );
    let (_, listed) = blocksnap(&store, &["ls", "--all-owners"], &[]);
    assert!(listed.starts_with("OWNER"), "{listed}");
    assert!(
        listed.contains(&format!("{alice:<13} {snapshot}")),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("{:<13} {}", "000000000000", own.trim())),
        "{listed}"
    );
    let restored = server._dir.path().join("restored.img");
    let (ok, _) = blocksnap(
        &store,
        &["restore", &snapshot, restored.to_str().expect("utf-8")],
        &[("BLOCKSNAP_OWNER_ID", alice)],
    );
    assert!(ok, "restore as the owner from the environment");
    let bytes = std::fs::read(&restored).expect("restored");
    let block = 524_288;
    assert_eq!(&bytes[3 * block..4 * block], &bytes_0_to_255(block)[..]);
    assert!(bytes[..3 * block].iter().all(|byte| *byte == 0));
    let (ok, _) = blocksnap(&store, &["rm", &snapshot], &[]);
    assert!(!ok, "another owner's snapshot is not found");
    let (ok, _) = blocksnap(&store, &["--owner", alice, "rm", &snapshot], &[]);
    assert!(ok);
    let (_, listed) = blocksnap(&store, &["ls", "--all-owners"], &[]);
    assert!(!listed.contains(&snapshot), "{listed}");
    let (ok, _) = blocksnap(&store, &["--owner", "has space", "ls"], &[]);
    assert!(!ok, "a malformed owner id is refused");
}

fn bytes_0_to_255(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 256) as u8).collect()
}

/// Spawns `serve --insecure-no-authentication` on a fresh store under
/// `dir` with `extra` arguments and `environment`, stderr piped when
/// `keep_stderr`; returns it and the address it printed.
fn spawn_insecure(
    dir: &std::path::Path,
    extra: &[&str],
    environment: &[(&str, &str)],
    keep_stderr: bool,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .arg("--store")
        .arg(dir.join("store"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-authentication",
        ])
        .args(extra)
        .env_remove("RUST_LOG")
        .envs(environment.iter().copied())
        .stdout(Stdio::piped())
        .stderr(if keep_stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("start serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read address");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    (child, address)
}

/// Runs `serve` on a fresh store with `extra` arguments, sends it one
/// `GET /health`, stops it with SIGTERM, and returns its stderr.
fn serve_once_and_log(extra: &[&str]) -> String {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, address) = spawn_insecure(dir.path(), extra, &[], true);
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn serve_logs_json_lines_at_the_level_asked() {
    let logged = serve_once_and_log(&["--log-format", "json"]);
    let lines: Vec<serde_json::Value> = logged
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|line| line["fields"]["message"] == "request"
                && line["fields"]["operation"] == "Health"
                && line["fields"]["status"] == 200
                && line["level"] == "INFO"),
        "{logged}"
    );
    let quiet = serve_once_and_log(&["--log-level", "warn"]);
    assert!(quiet.contains("WARN AUTHENTICATION IS OFF"), "{quiet}");
    assert!(!quiet.contains("Health"), "{quiet}");
    assert!(serve_once_and_log(&[]).contains("Health"));
    let output = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .args(["--store", "/nonexistent", "--log-level", "loud=[", "serve"])
        .output()
        .expect("run");
    assert_eq!(
        output.status.code(),
        Some(2),
        "a bad level is a usage error"
    );
}

/// Runs `tests/boto3/keys.py`: one request with `access`/`secret`,
/// expecting `outcome` (`accepted`, `refused` or `untrusted`).
fn request_with_keys(
    server: &Server,
    access: &str,
    secret: &str,
    outcome: &str,
    trust: Option<&str>,
) {
    let mut arguments = vec![access, secret, outcome];
    arguments.extend(trust);
    run_script_with(server, "keys.py", &arguments);
}

/// SIGHUP makes `serve` read its credentials file and its TLS files
/// again: new keys work and removed ones stop at once, the new
/// certificate is presented to new connections, and a reload that fails
/// to load keeps what was in force.
#[test]
fn sighup_reloads_access_keys_and_the_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let make_certificate = |name: &str| {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("certificate");
        let cert = dir.path().join(format!("{name}.pem"));
        let key = dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, certified.cert.pem()).expect("write certificate");
        std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
        (cert, key)
    };
    let (first_cert, first_key) = make_certificate("first");
    let (second_cert, second_key) = make_certificate("second");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&first_cert, &cert).expect("copy");
    std::fs::copy(&first_key, &key).expect("copy");
    let server = serve(
        false,
        &[
            "--tls-cert",
            cert.to_str().expect("path"),
            "--tls-key",
            key.to_str().expect("path"),
        ],
    );
    let credentials = server._dir.path().join("credentials");
    let trust_first = Some(first_cert.to_str().expect("path"));
    let trust_second = Some(second_cert.to_str().expect("path"));
    request_with_keys(
        &server,
        "AKIDALICE",
        "alice-secret",
        "accepted",
        trust_first,
    );
    request_with_keys(&server, "AKIDCAROL", "carol-secret", "refused", trust_first);
    std::fs::write(
        &credentials,
        "AKIDCAROL carol-secret 333333333333\nAKIDBOB bob-secret 222222222222\n",
    )
    .expect("new credentials");
    std::fs::copy(&second_cert, &cert).expect("copy");
    std::fs::copy(&second_key, &key).expect("copy");
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        // The reload is logged at once; give the signal task a moment.
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    hangup();
    request_with_keys(
        &server,
        "AKIDCAROL",
        "carol-secret",
        "accepted",
        trust_second,
    );
    request_with_keys(
        &server,
        "AKIDALICE",
        "alice-secret",
        "refused",
        trust_second,
    );
    request_with_keys(&server, "AKIDBOB", "bob-secret", "untrusted", trust_first);
    // A reload whose files do not load keeps the keys and certificate.
    std::fs::write(&credentials, "this line is not three fields\n").expect("broken");
    std::fs::write(&cert, "not a certificate").expect("broken");
    hangup();
    request_with_keys(
        &server,
        "AKIDCAROL",
        "carol-secret",
        "accepted",
        trust_second,
    );
}

/// A keep-alive connection opened before a SIGHUP is served after it.
#[test]
fn sighup_drops_no_connection() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, address) = spawn_insecure(dir.path(), &[], &[], false);
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    let ask = |stream: &mut std::net::TcpStream| {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("request");
        let mut reply = [0u8; 512];
        let read = stream.read(&mut reply).expect("reply");
        String::from_utf8_lossy(&reply[..read]).into_owned()
    };
    assert!(ask(&mut stream).starts_with("HTTP/1.1 200"));
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "SIGHUP stopped serve"
    );
    let reply = ask(&mut stream);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Under systemd (`Type=notify`), `serve` sends `READY=1` once it listens
/// and `STOPPING=1` when a SIGTERM stops it, to a path or an abstract
/// `$NOTIFY_SOCKET`.
#[test]
fn serve_notifies_systemd_when_ready_and_when_stopping() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let dir = tempfile::tempdir().expect("tempdir");
    let abstract_name = format!("blocksnap-test-{}", std::process::id());
    let sockets = [
        (
            UnixDatagram::bind(dir.path().join("notify")).expect("bind"),
            dir.path()
                .join("notify")
                .to_str()
                .expect("path")
                .to_string(),
        ),
        (
            UnixDatagram::bind_addr(
                &SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("name"),
            )
            .expect("bind abstract"),
            format!("@{abstract_name}"),
        ),
    ];
    for (socket, variable) in sockets {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("timeout");
        let (mut child, _) = spawn_insecure(
            dir.path(),
            &[],
            &[("NOTIFY_SOCKET", variable.as_str())],
            false,
        );
        let mut buffer = [0u8; 256];
        let received = socket.recv(&mut buffer).expect("READY=1");
        assert_eq!(&buffer[..received], b"READY=1", "{variable}");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let received = socket.recv(&mut buffer).expect("STOPPING=1");
        assert_eq!(&buffer[..received], b"STOPPING=1", "{variable}");
        assert!(child.wait().expect("wait").success());
    }
}

/// The example unit file names `Type=notify` and a reload by SIGHUP, as
/// `serve` implements them.
#[test]
fn the_example_unit_file_matches_what_serve_does() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/blocksnap.service"
    ))
    .expect("contrib/blocksnap.service");
    for expected in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        " serve ",
    ] {
        assert!(unit.contains(expected), "{expected}");
    }
    if let Ok(output) = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/contrib/blocksnap.service"
        ))
        .output()
    {
        let report = String::from_utf8_lossy(&output.stderr);
        assert!(
            !report.contains("Unknown key") && !report.contains("Unknown section"),
            "{report}"
        );
    }
}

/// Beside a running `serve` (uploads going on, its collector and verify
/// running every second), the reading commands work and see every
/// completed snapshot; a command that writes fails at once, naming the
/// serving process and what to do instead; none waits or damages.
#[test]
fn reading_commands_run_beside_serve_and_writing_ones_fail_at_once_naming_it() {
    let server = serve(
        false,
        &[
            "--gc-interval",
            "1s",
            "--gc-live-threshold",
            "1.0",
            "--verify-interval",
            "1s",
            "--verify-sample",
            "1.0",
            "--maintenance-max-bytes-per-sec",
            "0",
        ],
    );
    let store = server._dir.path().join("store");
    let alice: &[(&str, &str)] = &[("BLOCKSNAP_OWNER_ID", "111111111111")];
    let first = run_script_with(&server, "upload_one.py", &[])
        .trim()
        .to_string();
    let later: Vec<String> = std::thread::scope(|scope| {
        let uploads = scope.spawn(|| {
            (0..3)
                .map(|_| {
                    run_script_with(&server, "upload_one.py", &[])
                        .trim()
                        .to_string()
                })
                .collect()
        });
        // Readers while the server takes uploads: each sees at least
        // what was completed before it started, and verifies clean.
        for _ in 0..3 {
            let (ok, listed) = blocksnap(&store, &["ls"], alice);
            assert!(ok && listed.contains(&first), "{listed}");
            let (ok, report) = blocksnap(&store, &["verify"], alice);
            assert!(ok, "{report}");
        }
        uploads.join().expect("uploads")
    });
    let (ok, listed) = blocksnap(&store, &["ls"], alice);
    assert!(ok, "{listed}");
    for snapshot in later.iter().chain([&first]) {
        assert!(listed.contains(snapshot.as_str()), "{snapshot}: {listed}");
    }
    for args in [
        &["show", &first][..],
        &["stats"],
        &["diff", &first, &first],
        &["ls", "--all-owners"],
    ] {
        let (ok, output) = blocksnap(&store, args, alice);
        assert!(ok, "{args:?}: {output}");
    }
    let restored = server._dir.path().join("restored.img");
    let (ok, output) = blocksnap(
        &store,
        &["restore", &first, restored.to_str().expect("utf-8")],
        alice,
    );
    assert!(ok, "{output}");
    let block = 524_288;
    let bytes = std::fs::read(&restored).expect("restored");
    assert_eq!(&bytes[3 * block..4 * block], &bytes_0_to_255(block)[..]);
    let exports = server._dir.path().join("exports");
    std::fs::create_dir(&exports).expect("exports");
    let (ok, output) = blocksnap(
        &store,
        &[
            "export",
            &first,
            "--bucket",
            exports.to_str().expect("utf-8"),
        ],
        alice,
    );
    assert!(ok, "{output}");
    assert!(std::fs::read_dir(exports.join("snapshot"))
        .expect("exported")
        .any(|entry| entry
            .is_ok_and(|entry| entry.path().extension().is_some_and(|ext| ext == "zip"))));
    for args in [&["rm", "snap-0123456789abcdef"][..], &["gc"]] {
        let started = std::time::Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
            .arg("--store")
            .arg(&store)
            .args(args)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr.contains(&format!("is served by process {}", server.child.id()))
                && stderr.contains("serve")
                && stderr.contains("DeleteSnapshot"),
            "{args:?}: {stderr}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    // The lock file names a process that is gone: nobody is named, and
    // the store opens.
    let output = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .arg("--store")
        .arg(&store)
        .arg("verify")
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
