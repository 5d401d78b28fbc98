//! The `blocksnap` binary end to end, on temporary stores: full and
//! incremental backups, byte-identical sparse restores, exact diffs,
//! changed-block lists, encryption, the documented errors and exit codes,
//! interrupted or killed backups leaving a consistent store, and export and
//! import through a directory.

use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BLOCK: usize = 524_288;

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
            .env_remove("BLOCKSNAP_KEY_FILE")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run blocksnap")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "blocksnap {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        serde_json::from_str(&self.ok(&with_json)).expect("JSON output")
    }

    /// Runs a command that must fail with `code`; returns its stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert_eq!(
            output.status.code(),
            Some(code),
            "blocksnap {args:?}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "nothing on stdout when failing");
        stderr
    }
}

/// Deterministic block contents: 0 zeros, 1 text, 2 structured, 3 random
/// (`seed` >= 1 picks one of each kind).
fn block(kind: u32, seed: u64) -> Vec<u8> {
    match kind {
        0 => vec![0u8; BLOCK],
        kind => blocksnap::testing::block(seed * 3 + u64::from(kind - 1)),
    }
}

/// An image of `blocks` blocks (every fourth one zero) and a final partial
/// block of `tail` bytes.
fn write_image(path: &Path, blocks: u32, tail: usize) {
    let mut image = Vec::with_capacity(blocks as usize * BLOCK + tail);
    for index in 0..blocks {
        image.extend(block(index % 4, u64::from(index) + 1));
    }
    image.extend(&block(3, 999)[..tail]);
    std::fs::write(path, image).expect("write image");
}

fn overwrite_block(path: &Path, index: usize, data: &[u8]) {
    let mut image = std::fs::read(path).expect("read image");
    image[index * BLOCK..index * BLOCK + data.len()].copy_from_slice(data);
    std::fs::write(path, image).expect("write image");
}

fn same_files(a: &Path, b: &Path) -> bool {
    std::fs::read(a).expect("read") == std::fs::read(b).expect("read")
}

#[test]
fn full_and_incremental_backups_restore_byte_identical_and_diff_exactly() {
    let store = Store::new();
    let image = store.path("disk.img");
    write_image(&image, 40, 1000);
    let image_arg = image.to_str().expect("path");

    let full = store.json(&[
        "backup",
        image_arg,
        "--description",
        "first",
        "--tag",
        "env=test",
    ]);
    let first = full["SnapshotId"].as_str().expect("id").to_string();
    assert_eq!(full["BlocksRead"], 41);
    assert_eq!(full["ZeroBlocksSkipped"], 10, "every fourth block is zero");
    assert_eq!(full["BlocksWritten"], 31);

    // Two blocks change, one becomes zero, one zero block gets data.
    overwrite_block(&image, 3, &block(3, 5000));
    overwrite_block(&image, 17, &block(1, 5001));
    overwrite_block(&image, 21, &vec![0u8; BLOCK]);
    overwrite_block(&image, 24, &block(2, 5002));
    let incremental = store.json(&["backup", image_arg, "--parent", &first]);
    let second = incremental["SnapshotId"].as_str().expect("id").to_string();
    assert_eq!(incremental["BlocksWritten"], 4);
    assert_eq!(
        incremental["BlocksUnchanged"],
        31 - 3,
        "3, 17 and 21 had data"
    );
    assert_eq!(incremental["ZeroBlocksSkipped"], 10 - 1, "24 has data now");

    // Plain output: the id alone on stdout.
    let listed = store.ok(&["diff", &first, &second]);
    assert_eq!(listed, "3\n17\n21\n24\n");
    assert_eq!(
        store.json(&["diff", &first, &second])["ChangedBlocks"],
        serde_json::json!([3, 17, 21, 24])
    );

    let restored = store.path("restored.img");
    store.ok(&["restore", &second, restored.to_str().expect("path")]);
    assert!(same_files(&image, &restored), "restore is byte-identical");
    let metadata = std::fs::metadata(&restored).expect("metadata");
    assert_eq!(
        metadata.len(),
        40 * BLOCK as u64 + 1000,
        "the final partial block"
    );
    assert!(
        metadata.blocks() * 512 < metadata.len() - 9 * BLOCK as u64,
        "never-written and zero ranges are holes ({} bytes allocated)",
        metadata.blocks() * 512
    );
    let older = store.path("older.img");
    store.ok(&["restore", &first, older.to_str().expect("path")]);
    let mut original = Vec::new();
    for index in 0..40 {
        original.extend(block(index % 4, u64::from(index) + 1));
    }
    original.extend(&block(3, 999)[..1000]);
    assert_eq!(std::fs::read(&older).expect("read"), original);

    // A changed-block list reads only the listed blocks.
    overwrite_block(&image, 30, &block(3, 6000));
    let list = store.path("changed.txt");
    std::fs::write(&list, "# changed since the second backup\n30\n32-33\n").expect("write");
    let third = store.json(&[
        "backup",
        image_arg,
        "--parent",
        &second,
        "--changed-blocks",
        list.to_str().expect("path"),
    ]);
    assert_eq!(third["BlocksRead"], 3);
    assert_eq!(third["BlocksWritten"], 1);
    let third = third["SnapshotId"].as_str().expect("id").to_string();
    store.ok(&[
        "restore",
        &third,
        restored.to_str().expect("path"),
        "--force",
    ]);
    assert!(same_files(&image, &restored));

    let snapshots = store.json(&["ls"]);
    let ids: Vec<&str> = snapshots
        .as_array()
        .expect("array")
        .iter()
        .map(|snapshot| snapshot["SnapshotId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&first.as_str()) && ids.contains(&third.as_str()));
    let shown = store.json(&["show", &first]);
    assert_eq!(shown["Description"], "first");
    assert_eq!(shown["Status"], "completed");
    assert!(shown["Tags"]
        .as_array()
        .expect("tags")
        .contains(&serde_json::json!({"Key": "env", "Value": "test"})));

    store.ok(&["rm", &first]);
    store.ok(&["gc", "--live-threshold", "1.0"]);
    assert_eq!(store.json(&["verify"])["Clean"], true);
    store.ok(&[
        "restore",
        &second,
        restored.to_str().expect("path"),
        "--force",
    ]);
    let stats = store.json(&["stats"]);
    assert_eq!(stats["CompletedSnapshots"], 2);
    assert_eq!(stats["GarbageBytes"], 0);
}

#[test]
fn direct_and_buffered_restores_write_the_same_sparse_image() {
    let store = Store::new();
    let image = store.path("disk.img");
    write_image(&image, 24, 4095);
    let id = store.ok(&["backup", image.to_str().expect("path")]);
    let id = id.trim();
    let mut reports = Vec::new();
    for (name, extra) in [("direct.img", None), ("buffered.img", Some("--buffered"))] {
        let output = store.path(name);
        let mut args = vec!["restore", id, output.to_str().expect("path")];
        args.extend(extra);
        let report = store.json(&args);
        assert!(same_files(&image, &output), "{name} is byte-identical");
        let metadata = std::fs::metadata(&output).expect("metadata");
        assert!(
            metadata.blocks() * 512 < metadata.len() - 5 * BLOCK as u64,
            "{name}: the six zero blocks are holes ({} bytes allocated, with metadata)",
            metadata.blocks() * 512
        );
        assert_eq!(report["BlocksWritten"], 19, "18 data blocks and the tail");
        reports.push(report);
    }
    // The default uses direct I/O where the temporary directory's file
    // system takes O_DIRECT (ext4, xfs, btrfs; tmpfs since Linux 6.6), and
    // the page cache elsewhere: both outputs were checked alike above.
    assert_eq!(
        reports[1]["DirectIo"], false,
        "--buffered uses the page cache"
    );
}

#[test]
fn direct_and_buffered_backups_read_the_same_image() {
    let store = Store::new();
    let image = store.path("disk.img");
    // A tail of 4095 bytes: the direct read of the last block is cut
    // short by the end of the file, not by the block.
    write_image(&image, 24, 4095);
    // Out of the page cache, so the default reads miss it and go direct.
    let written = std::fs::File::open(&image).expect("open image");
    written.sync_all().expect("sync image");
    rustix::fs::fadvise(&written, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
    let takes_direct_io = rustix::fs::open(
        &image,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECT,
        rustix::fs::Mode::empty(),
    )
    .is_ok();
    let image_arg = image.to_str().expect("path");
    let direct = store.json(&["backup", image_arg]);
    assert_eq!(direct["BlocksWritten"], 19, "18 data blocks and the tail");
    assert_eq!(direct["DirectIo"], takes_direct_io, "{direct}");
    let direct_id = direct["SnapshotId"].as_str().expect("id").to_string();
    // Read again through the page cache, as a child: every block hashes
    // to what the direct read gave.
    let buffered = store.json(&["backup", image_arg, "--buffered", "--parent", &direct_id]);
    assert_eq!(buffered["BlocksWritten"], 0, "{buffered}");
    assert_eq!(buffered["BlocksUnchanged"], 19, "{buffered}");
    assert_eq!(
        buffered["DirectIo"], false,
        "--buffered reads the page cache"
    );
    let restored = store.path("restored.img");
    store.ok(&["restore", &direct_id, restored.to_str().expect("path")]);
    assert!(same_files(&image, &restored), "byte-identical");
}

#[test]
fn bad_arguments_and_missing_things_give_the_documented_exit_codes() {
    let store = Store::new();
    let image = store.path("disk.img");
    write_image(&image, 4, 0);
    let image_arg = image.to_str().expect("path");
    let id = store.ok(&["backup", image_arg]).trim().to_string();

    assert!(store
        .fails(&["backup", "/nonexistent/disk.img"], 3)
        .contains("/nonexistent/disk.img"));
    assert!(store
        .fails(&["show", "snap-0123456789abcdef"], 3)
        .contains("does not exist"));
    assert!(store
        .fails(&["show", "not-a-snapshot"], 2)
        .contains("SnapshotId"));
    assert!(store
        .fails(&["backup", image_arg, "--tag", "novalue"], 2)
        .contains("KEY=VALUE"));
    store.fails(&["backup", image_arg, "--changed-blocks", "x"], 2);
    store.fails(&["frobnicate"], 2);
    store.fails(&["restore", &id], 2);
    let list = store.path("bad.txt");
    std::fs::write(&list, "7-3\n").expect("write");
    assert!(store
        .fails(
            &[
                "backup",
                image_arg,
                "--parent",
                &id,
                "--changed-blocks",
                list.to_str().expect("path")
            ],
            2
        )
        .contains("bad.txt:1"));
    let output = store.path("out.img");
    std::fs::write(&output, b"keep me").expect("write");
    assert!(store
        .fails(&["restore", &id, output.to_str().expect("path")], 2)
        .contains("--force"));
    assert_eq!(std::fs::read(&output).expect("read"), b"keep me");
    store.fails(
        &[
            "restore",
            "snap-0123456789abcdef",
            store.path("x").to_str().expect("path"),
        ],
        3,
    );
    assert!(
        !store.path("x").exists(),
        "no output for a missing snapshot"
    );
    // One line, no backtrace.
    let stderr = store.fails(&["show", "snap-0123456789abcdef"], 3);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn help_is_complete() {
    let store = Store::new();
    let help = store.ok(&["--help"]);
    for command in [
        "backup", "restore", "ls", "show", "diff", "rm", "cancel", "gc", "verify", "stats",
        "export", "import",
    ] {
        assert!(help.contains(command), "--help lists {command}");
        let own = store.ok(&[command, "--help"]);
        assert!(own.contains("Usage: blocksnap"), "{command} --help");
    }
    assert!(help.contains("Exit codes"));
    let backup = store.ok(&["backup", "--help"]);
    for flag in [
        "--parent",
        "--changed-blocks",
        "--description",
        "--tag",
        "--encrypted",
        "--kms-key-arn",
        "--json",
        "--quiet",
        "--store",
    ] {
        assert!(backup.contains(flag), "backup --help documents {flag}");
    }
}

#[test]
fn encrypted_backups_need_the_passphrase_and_restore_identically() {
    let store = Store::new();
    let image = store.path("disk.img");
    write_image(&image, 12, 77);
    let image_arg = image.to_str().expect("path");
    let passphrase = store.path("passphrase");
    std::fs::write(&passphrase, "correct horse\n").expect("write");
    let passphrase_arg = passphrase.to_str().expect("path");
    let first = store.ok(&[
        "backup",
        image_arg,
        "--encrypted",
        "--passphrase-file",
        passphrase_arg,
    ]);
    let first = first.trim();
    let shown = store.json(&["show", first, "--passphrase-file", passphrase_arg]);
    assert_eq!(shown["SseType"], "sse-ebs");
    overwrite_block(&image, 2, &block(3, 4242));
    let second = store
        .command(&["backup", image_arg, "--parent", first])
        .env("BLOCKSNAP_PASSPHRASE", "correct horse")
        .output()
        .expect("run");
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let second = String::from_utf8(second.stdout).expect("utf-8");
    let restored = store.path("restored.img");
    store.ok(&[
        "restore",
        second.trim(),
        restored.to_str().expect("path"),
        "--passphrase-file",
        passphrase_arg,
    ]);
    assert!(same_files(&image, &restored));
    // Without the passphrase (and no terminal to ask on): bad usage.
    assert!(store.fails(&["ls"], 2).contains("BLOCKSNAP_PASSPHRASE"));
    let wrong = store.path("wrong");
    std::fs::write(&wrong, "wrong horse").expect("write");
    assert!(store
        .fails(
            &["ls", "--passphrase-file", wrong.to_str().expect("path")],
            5
        )
        .contains("passphrase"));
}

/// Starts a backup of a 192 MiB random image and waits until it is writing.
fn backup_under_way(store: &Store) -> std::process::Child {
    let image = store.path("big.img");
    let mut data = Vec::with_capacity(384 * BLOCK);
    for index in 0..384 {
        data.extend(block(3, index + 10));
    }
    std::fs::write(&image, data).expect("write image");
    let child = store
        .command(&["backup", image.to_str().expect("path"), "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // A journal is made before its snapshot's Started record; one holding
    // an entry means blocks are being written.
    let pending = store.path("store").join("pending");
    let writing = || {
        std::fs::read_dir(&pending).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|entry| entry.metadata().is_ok_and(|metadata| metadata.len() > 32))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !writing() {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child
}

#[test]
fn an_interrupted_backup_is_cancelled_and_the_store_stays_consistent() {
    let store = Store::new();
    let image = store.path("disk.img");
    write_image(&image, 8, 0);
    let kept = store
        .ok(&["backup", image.to_str().expect("path")])
        .trim()
        .to_string();
    let child = backup_under_way(&store);
    let signalled = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(signalled.success());
    let output = child.wait_with_output().expect("wait");
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout.is_empty(), "no snapshot id printed");
    let snapshots = store.json(&["ls"]);
    let statuses: Vec<(String, String)> = snapshots
        .as_array()
        .expect("array")
        .iter()
        .map(|snapshot| {
            (
                snapshot["SnapshotId"].as_str().expect("id").to_string(),
                snapshot["Status"].as_str().expect("status").to_string(),
            )
        })
        .collect();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.contains(&(kept.clone(), "completed".to_string())));
    assert!(
        statuses
            .iter()
            .any(|(id, status)| *id != kept && status == "error"),
        "the interrupted snapshot was cancelled: {statuses:?}"
    );
    assert_eq!(store.json(&["verify"])["Clean"], true);
    let restored = store.path("restored.img");
    store.ok(&["restore", &kept, restored.to_str().expect("path")]);
    assert!(same_files(&image, &restored));
}

#[test]
fn a_killed_backup_leaves_a_consistent_store() {
    let store = Store::new();
    let mut child = backup_under_way(&store);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let snapshots = store.json(&["ls"]);
    let snapshots = snapshots.as_array().expect("array");
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0]["Status"], "pending", "never completed");
    assert_eq!(store.json(&["verify"])["Clean"], true);
    let id = snapshots[0]["SnapshotId"].as_str().expect("id");
    store.ok(&["cancel", id]);
    store.ok(&["rm", id]);
    store.ok(&["gc", "--live-threshold", "1.0"]);
    assert_eq!(store.json(&["stats"])["LiveBytes"], 0);
}

#[test]
fn a_restore_of_damaged_data_fails_and_leaves_no_output() {
    let store = Store::new();
    let image = store.path("disk.img");
    write_image(&image, 8, 0);
    let id = store
        .ok(&["backup", image.to_str().expect("path")])
        .trim()
        .to_string();
    let packs = store.path("store").join("packs");
    let pack = std::fs::read_dir(&packs)
        .expect("packs")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pack"))
        .max_by_key(|path| std::fs::metadata(path).expect("metadata").len())
        .expect("a pack");
    let mut bytes = std::fs::read(&pack).expect("read pack");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&pack, bytes).expect("write pack");
    let output = store.path("restored.img");
    let stderr = store.fails(&["restore", &id, output.to_str().expect("path")], 1);
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(!output.exists(), "no partial output");
    let verify = store.run(&["verify", "--json"]);
    assert_eq!(verify.status.code(), Some(1), "verify exits 1 on damage");
    let report: Value = serde_json::from_slice(&verify.stdout).expect("JSON report");
    assert_eq!(report["Clean"], false);
    assert_eq!(report["Damaged"].as_array().expect("damaged").len(), 1);
}

#[test]
fn export_and_import_round_trip_a_backup_through_a_directory() {
    let store = Store::new();
    let image = store.path("disk.img");
    write_image(&image, 24, 777);
    let image_arg = image.to_str().expect("path");
    let snapshot = store.ok(&["backup", image_arg, "--tag", "host=vm1"]);
    let snapshot = snapshot.trim();
    let bucket = store.path("bucket");
    std::fs::create_dir(&bucket).expect("bucket");
    let bucket_arg = bucket.to_str().expect("path");
    let exported = store.json(&[
        "export", snapshot, "--bucket", bucket_arg, "--prefix", "vm1", "--name", "disk",
    ]);
    let key = exported["Key"].as_str().expect("key");
    assert!(
        key.starts_with("vm1/snapshot/disk-") && key.ends_with(".zip"),
        "{key}"
    );
    let archive = bucket.join(key);
    assert_eq!(exported["Location"].as_str(), archive.to_str());
    assert!(archive.is_file());

    // Into another store, then restored byte-identical.
    let other = Store::new();
    let imported = other.ok(&["import", archive.to_str().expect("path")]);
    let imported = imported.trim();
    assert!(imported.starts_with("snap-") && imported != snapshot);
    let restored = other.path("restored.img");
    other.ok(&["restore", imported, restored.to_str().expect("path")]);
    assert!(same_files(&image, &restored));
    let shown = other.json(&["show", imported]);
    assert!(shown.to_string().contains("host"), "{shown}");

    // A delta since the first backup, applied onto the imported copy.
    overwrite_block(&image, 3, &block(1, 77));
    let child = store.ok(&["backup", image_arg, "--parent", snapshot]);
    let delta = store.ok(&[
        "export",
        child.trim(),
        "--bucket",
        bucket_arg,
        "--base",
        snapshot,
        "--name",
        "delta",
    ]);
    let applied = other.ok(&["import", delta.trim(), "--parent", imported]);
    other.ok(&[
        "restore",
        applied.trim(),
        restored.to_str().expect("path"),
        "--force",
    ]);
    assert!(same_files(&image, &restored));

    // Errors: a bad name (usage, 2), a missing bucket directory and a
    // missing archive (not found, 3), a damaged archive (1). Conflicts are
    // tested in tests/archive.rs, where the clock is fixed.
    store.fails(
        &["export", snapshot, "--bucket", bucket_arg, "--name", "../x"],
        2,
    );
    store.fails(
        &[
            "export",
            snapshot,
            "--bucket",
            store.path("absent").to_str().expect("path"),
        ],
        3,
    );
    store.fails(
        &["import", store.path("absent.zip").to_str().expect("path")],
        3,
    );
    let mut bytes = std::fs::read(&archive).expect("read");
    let middle = bytes.len() / 2;
    bytes.truncate(middle);
    let damaged = store.path("damaged.zip");
    std::fs::write(&damaged, bytes).expect("write");
    let stderr = other.fails(&["import", damaged.to_str().expect("path")], 1);
    assert!(stderr.contains("invalid archive"), "{stderr}");
}

/// Reports are data: the `--json` objects are the library's report types
/// serialized (plus the verdicts `Clean`, `LostAnything`, `FoundAnything`),
/// so a field the library reports is a field scripts get, under the same
/// name.
#[test]
fn json_reports_are_the_library_report_types() {
    let store = Store::new();
    let image = store.path("disk.img");
    write_image(&image, 12, 0);
    let image_arg = image.to_str().expect("path");
    let backup = store.json(&["backup", image_arg]);
    let snapshot = backup["SnapshotId"].as_str().expect("id").to_string();
    let stats = store.json(&["stats"]);
    let verify = store.json(&["verify"]);
    let gc = store.json(&["gc"]);
    let output = store.path("restored.img");
    let restore = store.json(&["restore", &snapshot, output.to_str().expect("path")]);

    let engine = blocksnap::Engine::open_read_only(store.path("store")).expect("open");
    let in_process = serde_json::to_value(engine.store_stats().expect("stats")).expect("json");
    assert_eq!(stats, in_process, "stats --json is StoreStats");
    let keys = |value: &Value| -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        keys
    };
    let report = engine
        .verify(blocksnap::engine::VerifyOptions::default())
        .expect("verify");
    let mut expected = keys(&serde_json::to_value(&report).expect("json"));
    expected.push("Clean".into());
    expected.sort();
    assert_eq!(
        keys(&verify),
        expected,
        "verify --json is VerifyReport and Clean"
    );
    assert_eq!(verify["Clean"], true);
    assert_eq!(
        keys(&gc),
        keys(&serde_json::to_value(blocksnap::engine::GcReport::default()).expect("json"))
    );
    for (object, fields) in [
        (
            &backup,
            &[
                "SnapshotId",
                "ParentSnapshotId",
                "Volume",
                "ImageBytes",
                "BlocksRead",
                "BlocksWritten",
                "BlocksUnchanged",
                "ZeroBlocksSkipped",
                "DirectIo",
                "Seconds",
            ][..],
        ),
        (
            &restore,
            &[
                "SnapshotId",
                "Bytes",
                "BlocksWritten",
                "Holes",
                "DirectIo",
                "SecondsBeforeSync",
                "Seconds",
            ][..],
        ),
    ] {
        let mut fields: Vec<String> = fields.iter().map(|field| field.to_string()).collect();
        fields.sort();
        assert_eq!(keys(object), fields);
    }
    assert_eq!(restore["SnapshotId"], snapshot.as_str());
    assert_eq!(backup["ImageBytes"], 12 * BLOCK as u64);
}
