//! Interruption of the binary by SIGINT, SIGTERM and SIGHUP at many instants
//! of `backup`, `restore`, `export` and `import`: every run either finished
//! (exit 0, its result whole and correct) or stopped cleanly (exit 128 +
//! the signal, nothing on stdout, no success message, no pending snapshot,
//! no partial output), and the store verifies clean every time. `serve`
//! stops gracefully (exit 0) on each of them, even one sent the instant
//! it prints its address.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::interrupt::{finished, interrupt};

const BLOCK: usize = 524_288;
/// Blocks of the image: large enough that each command takes a few tenths
/// of a second on one thread, so signals land in every phase.
const BLOCKS: u64 = 384;

const SIGNALS: [(&str, i32); 3] = [("INT", 2), ("TERM", 15), ("HUP", 1)];
/// Delays after the command visibly started working.
const DELAYS_MS: [u64; 6] = [0, 3, 10, 30, 90, 270];

struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
    /// A completed backup of the image, for restore and export.
    snapshot: String,
    /// An archive of it, for import.
    archive: PathBuf,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn blocksnap(store: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blocksnap"));
    command
        .args(args)
        .env("BLOCKSNAP_STORE", store)
        .env_remove("BLOCKSNAP_PASSPHRASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn ok(store: &Path, args: &[&str]) -> String {
    let output = blocksnap(store, args).output().expect("run");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn setup() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    let mut data = Vec::with_capacity(BLOCKS as usize * BLOCK);
    for index in 0..BLOCKS {
        // Every fifth block zero; the rest text, structured and random.
        let seed = if index % 5 == 0 { 0 } else { index + 1 };
        data.extend(blocksnap::testing::block(seed));
    }
    std::fs::write(&image, data).expect("image");
    let store = dir.path().join("store");
    let snapshot = ok(&store, &["backup", image.to_str().expect("path")])
        .trim()
        .to_string();
    let bucket = dir.path().join("bucket");
    std::fs::create_dir(&bucket).expect("bucket");
    let location = ok(
        &store,
        &[
            "export",
            &snapshot,
            "--bucket",
            bucket.to_str().expect("path"),
            "--name",
            "fixture",
        ],
    );
    Fixture {
        archive: PathBuf::from(location.trim()),
        dir,
        image,
        snapshot,
    }
}

/// Whether a file in `dir` (not recursive) satisfies `test`.
fn any_file(dir: &Path, test: impl Fn(&std::fs::Metadata, &str) -> bool) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            entry
                .metadata()
                .is_ok_and(|metadata| test(&metadata, &entry.file_name().to_string_lossy()))
        })
    })
}

/// Every snapshot of `store` as (id, status).
fn snapshots(store: &Path) -> Vec<(String, String)> {
    let listed: Value = serde_json::from_str(&ok(store, &["ls", "--json"])).expect("json");
    listed
        .as_array()
        .expect("array")
        .iter()
        .map(|snapshot| {
            (
                snapshot["SnapshotId"].as_str().expect("id").to_string(),
                snapshot["Status"].as_str().expect("status").to_string(),
            )
        })
        .collect()
}

/// The store verifies clean and holds no pending snapshot.
fn consistent(store: &Path, context: &str) {
    let verify = blocksnap(store, &["verify", "--json"])
        .output()
        .expect("verify");
    assert!(
        verify.status.success(),
        "{context}: verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let pending: Vec<_> = snapshots(store)
        .into_iter()
        .filter(|(_, status)| status == "pending")
        .collect();
    assert!(pending.is_empty(), "{context}: left pending: {pending:?}");
}

fn runs() -> impl Iterator<Item = (&'static str, i32, Duration)> {
    SIGNALS.into_iter().flat_map(|(name, number)| {
        DELAYS_MS
            .into_iter()
            .map(move |delay| (name, number, Duration::from_millis(delay)))
    })
}

/// Runs `args` (a command that writes one new snapshot: backup, import)
/// into a fresh store for every signal and delay, interrupting it once its
/// journal exists. A run that finished must list exactly its snapshot,
/// completed, and pass `check_finished(store, id, context)`; one that
/// stopped must leave nothing but snapshots in `error` (a cancelled
/// backup), or nothing at all when `deletes_cancelled` (a cancelled import).
fn interrupt_snapshot_writer(
    fixture: &Fixture,
    args: &[&str],
    deletes_cancelled: bool,
    check_finished: impl Fn(&Path, &str, &str),
) {
    let mut stopped = 0;
    for (signal, number, delay) in runs() {
        let store = fixture.path(&format!("{}-{signal}-{}", args[0], delay.as_millis()));
        let context = format!("{}, SIG{signal} after {delay:?}", args[0]);
        let child = blocksnap(&store, args).spawn().expect("spawn");
        let journals = store.join("pending");
        interrupt(&child, || any_file(&journals, |_, _| true), delay, signal);
        let output = child.wait_with_output().expect("wait");
        let finished = finished(&output, number, &context);
        consistent(&store, &context);
        let listed = snapshots(&store);
        if finished {
            let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
            assert_eq!(listed, vec![(id.clone(), "completed".into())], "{context}");
            check_finished(&store, &id, &context);
        } else {
            stopped += 1;
            assert!(
                listed
                    .iter()
                    .all(|(_, status)| status == "error" && !deletes_cancelled),
                "{context}: {listed:?}"
            );
        }
    }
    assert!(
        stopped >= SIGNALS.len(),
        "only {stopped} runs were interrupted"
    );
}

#[test]
fn interrupted_backups_leave_no_pending_snapshot() {
    let fixture = setup();
    let image = fixture.image.to_str().expect("path");
    let restored = fixture.path("check.img");
    interrupt_snapshot_writer(
        &fixture,
        &["backup", image, "--threads", "1"],
        false,
        |store, id, context| {
            ok(
                store,
                &["restore", id, restored.to_str().expect("path"), "--force"],
            );
            assert!(
                std::fs::read(&restored).expect("read") == std::fs::read(image).expect("read"),
                "{context}: restored image differs"
            );
        },
    );
}

#[test]
fn interrupted_restores_leave_no_output() {
    let fixture = setup();
    let store = fixture.path("store");
    let mut stopped = 0;
    for (signal, number, delay) in runs() {
        let output_path = fixture.path(&format!("restore-{signal}-{}.img", delay.as_millis()));
        let context = format!("restore, SIG{signal} after {delay:?}");
        let child = blocksnap(
            &store,
            &[
                "restore",
                &fixture.snapshot,
                output_path.to_str().expect("path"),
                "--threads",
                "1",
            ],
        )
        .spawn()
        .expect("spawn");
        interrupt(&child, || output_path.exists(), delay, signal);
        let output = child.wait_with_output().expect("wait");
        if finished(&output, number, &context) {
            assert!(
                std::fs::read(&output_path).expect("read")
                    == std::fs::read(&fixture.image).expect("read"),
                "{context}: restored image differs"
            );
            std::fs::remove_file(&output_path).expect("remove");
        } else {
            stopped += 1;
            assert!(!output_path.exists(), "{context}: partial output left");
        }
        consistent(&store, &context);
    }
    assert!(
        stopped >= SIGNALS.len(),
        "only {stopped} runs were interrupted"
    );
}

#[test]
fn interrupted_exports_publish_nothing() {
    let fixture = setup();
    let store = fixture.path("store");
    let mut stopped = 0;
    for (signal, number, delay) in runs() {
        let bucket = fixture.path(&format!("export-{signal}-{}", delay.as_millis()));
        std::fs::create_dir(&bucket).expect("bucket");
        let context = format!("export, SIG{signal} after {delay:?}");
        let child = blocksnap(
            &store,
            &[
                "export",
                &fixture.snapshot,
                "--bucket",
                bucket.to_str().expect("path"),
                "--threads",
                "1",
            ],
        )
        .spawn()
        .expect("spawn");
        let archives = bucket.join("snapshot");
        interrupt(&child, || any_file(&archives, |_, _| true), delay, signal);
        let output = child.wait_with_output().expect("wait");
        let finished = finished(&output, number, &context);
        let files: Vec<String> = std::fs::read_dir(&archives)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if finished {
            assert_eq!(files.len(), 1, "{context}: {files:?}");
            assert!(files[0].ends_with(".zip"), "{context}: {files:?}");
        } else {
            stopped += 1;
            assert!(files.is_empty(), "{context}: left {files:?}");
        }
        consistent(&store, &context);
    }
    assert!(
        stopped >= SIGNALS.len(),
        "only {stopped} runs were interrupted"
    );
}

#[test]
fn interrupted_imports_leave_no_snapshot() {
    let fixture = setup();
    let archive = fixture.archive.to_str().expect("path");
    interrupt_snapshot_writer(
        &fixture,
        &["import", archive, "--threads", "1"],
        true,
        |_, _, _| {},
    );
}

/// SIGINT and SIGTERM stop `serve`; SIGHUP reloads its keys and
/// certificate instead (tests/boto3.rs), and must not stop it even when it
/// arrives as soon as the server listens.
#[test]
fn serve_stops_gracefully_on_a_signal_sent_as_soon_as_it_listens() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    for round in 0..8 {
        for (signal, _) in SIGNALS.into_iter().filter(|(name, _)| *name != "HUP") {
            let context = format!("serve, SIG{signal}, round {round}");
            let mut child = blocksnap(
                &store,
                &[
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--insecure-no-authentication",
                ],
            )
            .spawn()
            .expect("spawn");
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("read");
            assert!(line.starts_with("listening on "), "{context}: {line:?}");
            interrupt(&child, || true, Duration::ZERO, signal);
            let output = child.wait_with_output().expect("wait");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(0), "{context}: {stderr}");
            assert!(stderr.contains("stopped"), "{context}: {stderr}");
        }
        let context = format!("serve, SIGHUP then SIGTERM, round {round}");
        let mut child = blocksnap(
            &store,
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--insecure-no-authentication",
            ],
        )
        .spawn()
        .expect("spawn");
        let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        assert!(line.starts_with("listening on "), "{context}: {line:?}");
        interrupt(&child, || true, Duration::ZERO, "HUP");
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{context}: SIGHUP stopped serve"
        );
        interrupt(&child, || true, Duration::ZERO, "TERM");
        let output = child.wait_with_output().expect("wait");
        assert_eq!(output.status.code(), Some(0), "{context}");
    }
    consistent(&store, "serve");
}
