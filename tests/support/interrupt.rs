//! Sending a signal to a running `blocksnap` and judging how it ended.
// Not every test that declares `mod support;` uses these.
#![allow(dead_code)]

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Waits until `started` says the child is working (so its handlers are
/// installed; at most a minute), then `delay`, then sends `signal` (a
/// name: INT, TERM, HUP) to `child`.
pub fn interrupt(child: &Child, started: impl Fn() -> bool, delay: Duration, signal: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(delay);
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

/// Whether an interrupted run finished (exit 0); otherwise asserts that
/// it stopped cleanly: exit 128 + `signal`, nothing on stdout, no success
/// message, and a line saying it was interrupted.
pub fn finished(output: &Output, signal: i32, context: &str) -> bool {
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => true,
        Some(code) => {
            assert_eq!(code, 128 + signal, "{context}: {stderr}");
            assert!(output.stdout.is_empty(), "{context}: printed a result");
            assert!(stderr.contains("interrupted by SIG"), "{context}: {stderr}");
            false
        }
        None => panic!("{context}: killed by the signal: {stderr}"),
    }
}
