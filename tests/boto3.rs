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

fn serve() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = dir.path().join("credentials");
    std::fs::write(&credentials, CREDENTIALS).expect("write credentials");
    let mut child = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["serve", "--listen", "127.0.0.1:0", "--credentials"])
        .arg(&credentials)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start blocksnap serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read address");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    Server {
        child,
        endpoint: format!("http://{address}"),
        _dir: dir,
    }
}

#[test]
fn boto3_scenarios() {
    let server = serve();
    let python = std::env::var("BLOCKSNAP_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boto3/scenarios.py");
    let output = Command::new(&python)
        .arg(script)
        .arg(&server.endpoint)
        .output()
        .unwrap_or_else(|error| panic!("running {python}: {error}"));
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "boto3 scenarios failed:\n{report}");
    assert!(report.contains("OK"), "{report}");
}
