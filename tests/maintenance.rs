//! Maintenance while serving: the collector and sampled verification on a
//! schedule (in process, on tokio's paused clock), and `serve`'s
//! `--gc-interval` / `--verify-interval` reported in `/metrics`, the log
//! and `/health` (a real process, real time).

use blocksnap::api::*;
use blocksnap::engine::GcOptions;
use blocksnap::server::{Maintenance, MaintenanceSchedule};
use blocksnap::storage::LocalStorage;
use blocksnap::testing::write_lineage;
use blocksnap::{Engine, EngineConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Flips one byte in the middle of the largest pack of the store at
/// `dir`: inside some record, whose crc then fails.
fn damage_largest_pack(dir: &Path) -> PathBuf {
    let largest = std::fs::read_dir(dir.join("packs"))
        .expect("packs")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pack"))
        .max_by_key(|path| std::fs::metadata(path).map_or(0, |meta| meta.len()))
        .expect("a pack");
    let mut bytes = std::fs::read(&largest).expect("read pack");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    // Written in place (not replaced): a server maps the file it reads.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&largest)
        .and_then(|mut file| file.write_all(&bytes))
        .expect("write pack");
    largest
}

/// Waits (on tokio's clock, which the paused runtime advances while the
/// runs work on real threads) until `done` holds.
async fn until(
    maintenance: &Maintenance,
    done: impl Fn(&blocksnap::server::MaintenanceReport) -> bool,
) {
    // At most about 55 hours of the paused clock.
    for _ in 0..200_000 {
        if done(&maintenance.report()) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("maintenance never got there: {:?}", maintenance.report());
}

#[tokio::test(start_paused = true)]
async fn scheduled_runs_collect_garbage_rotate_samples_and_hold_damage_until_a_full_clean_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open_with(
        Arc::new(LocalStorage::open(dir.path()).expect("lock")),
        EngineConfig::default(),
    )
    .expect("open");
    let template = StartSnapshotRequest {
        volume_size: 1,
        ..Default::default()
    };
    let kept = write_lineage(&engine, &template, &[&[(0, 1), (1, 2), (2, 3), (3, 4)]]);
    let doomed = write_lineage(&engine, &template, &[&[(0, 11), (1, 12), (2, 13)]]);
    Ebs::new(&engine)
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: doomed[0].0.clone(),
        })
        .expect("delete");
    let maintenance = Maintenance::start(
        engine.clone(),
        MaintenanceSchedule {
            gc_interval: Some(Duration::from_secs(3600)),
            gc: GcOptions {
                live_threshold: 1.0,
                ..GcOptions::default()
            },
            verify_interval: Some(Duration::from_secs(4 * 3600)),
            verify_sample: 0.5,
            verify_max_bytes_per_sec: None,
        },
    )
    .expect("start");
    // Nothing runs before the first interval has passed.
    tokio::time::sleep(Duration::from_secs(3599)).await;
    assert_eq!(maintenance.report().gc_runs, 0);
    until(&maintenance, |report| report.gc_runs >= 1).await;
    let report = maintenance.report();
    assert!(report.gc_bytes_freed > 0, "{report:?}");
    assert_eq!(
        report.last_gc.as_ref().and_then(|run| run.error.clone()),
        None
    );
    assert_eq!(report.damage, None);
    let stored = engine.store_stats().expect("stats").stored_bytes;

    // Two half samples read the whole store once between them.
    until(&maintenance, |report| report.verify_runs >= 2).await;
    let report = maintenance.report();
    assert_eq!(report.damage, None, "{report:?}");
    let checked_by_two = report.verify_bytes_checked;
    assert!(
        checked_by_two >= stored && checked_by_two <= stored + stored / 2,
        "two halves checked {checked_by_two} of {stored} bytes"
    );

    // Damage found by a run stands, and is in the metrics.
    damage_largest_pack(dir.path());
    until(&maintenance, |report| report.damage.is_some()).await;
    let mut metrics = String::new();
    maintenance.encode_metrics(&mut metrics);
    assert!(
        metrics.contains("blocksnap_maintenance_damage 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"blocksnap_maintenance_runs_total{task="verify",result="damage"}"#),
        "{metrics}"
    );
    // A clean half sample does not clear it: only a full check would.
    let damaged_at = maintenance.report().verify_runs;
    until(&maintenance, |report| report.verify_runs >= damaged_at + 2).await;
    assert!(maintenance.report().damage.is_some());
    maintenance.stop().await;
    let stopped = maintenance.report();
    tokio::time::sleep(Duration::from_secs(10 * 3600)).await;
    assert_eq!(maintenance.report(), stopped, "nothing runs after stop");
    // The collector left the kept snapshot whole (its blocks are listed;
    // one of them may hold the flipped byte).
    let listed = blocksnap::testing::list_all_blocks(&engine, &kept[0].0).expect("list");
    assert_eq!(listed.len(), kept[0].1.len());
}

/// One `GET path` to `address`; (status, body).
fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status");
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    (status, body)
}

/// The value of the metric line that begins with `name` (labels
/// included), if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
}

/// Polls until `ready` holds of `/metrics` (a minute at most).
fn wait_for_metrics(address: &str, ready: impl Fn(&str) -> bool) -> String {
    for _ in 0..600 {
        let (_, text) = get(address, "/metrics");
        if ready(&text) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("metrics never got there: {}", get(address, "/metrics").1);
}

fn blocksnap(store: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// An image of `len` bytes of one pseudo-random stream per `seed`.
fn image(path: &Path, seed: u64, len: usize) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(path, bytes).expect("image");
}

/// Starts `serve --insecure-no-authentication` on `store` with `extra`
/// arguments, its log in `log`; returns it and the address it printed.
fn spawn_serve(store: &Path, extra: &[&str], log: &Path) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .arg("--store")
        .arg(store)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-authentication",
        ])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let address = line.trim().trim_start_matches("listening on ").to_string();
    (child, address)
}

#[test]
fn serve_collects_and_verifies_on_schedule_and_reports_damage_in_health_metrics_and_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let (kept_image, doomed_image) = (dir.path().join("kept.img"), dir.path().join("doomed.img"));
    image(&kept_image, 1, 3 << 20);
    image(&doomed_image, 2, 3 << 20);
    let kept = blocksnap(&store, &["backup", kept_image.to_str().expect("utf-8")]);
    let doomed = blocksnap(&store, &["backup", doomed_image.to_str().expect("utf-8")]);
    blocksnap(&store, &["rm", &doomed]);
    let log = dir.path().join("serve.log");
    let (mut child, address) = spawn_serve(
        &store,
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
        &log,
    );

    let text = wait_for_metrics(&address, |text| {
        metric(
            text,
            r#"blocksnap_maintenance_runs_total{task="gc",result="ok"}"#,
        )
        .is_some()
            && metric(
                text,
                r#"blocksnap_maintenance_runs_total{task="verify",result="ok"}"#,
            )
            .is_some()
    });
    assert!(
        metric(&text, "blocksnap_maintenance_gc_freed_bytes_total")
            .is_some_and(|bytes| bytes >= (3 << 20) as f64 / 2.0),
        "the deleted image's packs are freed: {text}"
    );
    assert_eq!(metric(&text, "blocksnap_maintenance_damage"), Some(0.0));
    assert!(metric(
        &text,
        r#"blocksnap_maintenance_last_run_timestamp_seconds{task="verify"}"#
    )
    .is_some());
    let (status, body) = get(&address, "/health");
    assert_eq!(status, 200, "{body}");

    let damaged = damage_largest_pack(&store);
    let text = wait_for_metrics(&address, |text| {
        metric(text, "blocksnap_maintenance_damage") == Some(1.0)
    });
    assert!(
        metric(
            &text,
            r#"blocksnap_maintenance_runs_total{task="verify",result="damage"}"#
        )
        .is_some(),
        "{text}"
    );
    let (status, body) = get(&address, "/health");
    assert_eq!(status, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["Status"], "damaged");
    assert!(
        health["Message"]
            .as_str()
            .is_some_and(|message| message.contains("damaged or missing chunks")),
        "{body}"
    );

    // The CLI's verify, beside the server, names the same damage.
    let output = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .arg("--store")
        .arg(&store)
        .arg("verify")
        .output()
        .expect("verify");
    assert!(
        !output.status.success(),
        "verify beside serve finds the damage"
    );
    let found = String::from_utf8_lossy(&output.stdout);
    assert!(
        found.trim_end().ends_with("DAMAGED") && found.contains(&format!("breaks {kept}")),
        "{} damaged: {found}",
        damaged.display()
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(child.wait().expect("wait").success());
    let log = std::fs::read_to_string(&log).expect("log");
    for expected in [
        "gc scheduled",
        "verify scheduled",
        "gc finished",
        "verify finished",
        "maintenance found damage",
    ] {
        assert!(log.contains(expected), "{expected}: {log}");
    }
}

/// SIGTERM while a paced collection is copying: the server stops within
/// seconds (the compaction under way is undone), exits 0, and the store
/// verifies clean with every snapshot whole.
#[test]
fn serve_stopped_during_a_scheduled_collection_stops_promptly_and_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let (kept_image, doomed_image) = (dir.path().join("kept.img"), dir.path().join("doomed.img"));
    image(&kept_image, 3, 8 << 20);
    image(&doomed_image, 4, 8 << 20);
    let kept = blocksnap(&store, &["backup", kept_image.to_str().expect("utf-8")]);
    let doomed = blocksnap(&store, &["backup", doomed_image.to_str().expect("utf-8")]);
    blocksnap(&store, &["rm", &doomed]);
    let log = dir.path().join("serve.log");
    let (mut child, _) = spawn_serve(
        &store,
        &[
            "--gc-interval",
            "1s",
            "--gc-live-threshold",
            "1.0",
            // 8 MiB to copy at 1 MiB/s: still copying when stopped.
            "--maintenance-max-bytes-per-sec",
            "1M",
        ],
        &log,
    );
    std::thread::sleep(Duration::from_millis(2500));
    let stopping = std::time::Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(child.wait().expect("wait").success());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        stopping.elapsed()
    );
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        log.contains("maintenance run cancelled by shutdown") && !log.contains("gc finished"),
        "the run was cut short: {log}"
    );
    blocksnap(&store, &["verify"]);
    let restored = dir.path().join("restored.img");
    blocksnap(
        &store,
        &["restore", &kept, restored.to_str().expect("utf-8")],
    );
    assert!(
        std::fs::read(&restored).expect("restored") == std::fs::read(&kept_image).expect("image")
    );
}
