//! The binary as a cron job runs it: no store made by a mistyped path,
//! distinct exit codes, errors as JSON, progress lines on a log, a
//! passphrase from a command; volumes, `--parent latest`, `tag`, `ls`
//! filters; `forget` with its policies, dry runs and `--gc`; and `gc`'s
//! default reclaiming a pack a tenth dead.

use serde_json::Value;
use std::path::PathBuf;
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

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    fn run_with(&self, args: &[&str], environment: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_blocksnap"))
            .args(args)
            .env("BLOCKSNAP_STORE", self.store())
            .env_remove("BLOCKSNAP_PASSPHRASE")
            .env_remove("BLOCKSNAP_PASSPHRASE_COMMAND")
            .env_remove("BLOCKSNAP_KEY_FILE")
            .env_remove("BLOCKSNAP_OWNER_ID")
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run blocksnap")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "blocksnap {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    fn json(&self, args: &[&str]) -> Value {
        self.json_with(args, &[])
    }

    /// Runs a command that must succeed with `--json` and `environment`;
    /// returns what it printed.
    fn json_with(&self, args: &[&str], environment: &[(&str, &str)]) -> Value {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let output = self.run_with(&with_json, environment);
        assert!(
            output.status.success(),
            "blocksnap {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON")
    }

    /// Runs a command that must fail with `code`; returns its stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        stderr
    }

    /// Writes an image of `blocks` blocks, block `i` filled from seed
    /// `seeds[i]` (0: zeros).
    fn image(&self, name: &str, seeds: &[u64]) -> String {
        let mut bytes = Vec::with_capacity(seeds.len() * BLOCK);
        for seed in seeds {
            bytes.extend(random_block(*seed));
        }
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("image");
        path.to_str().expect("utf-8").to_string()
    }
}

fn random_block(seed: u64) -> Vec<u8> {
    if seed == 0 {
        return vec![0; BLOCK];
    }
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..BLOCK)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

fn id(report: &Value) -> String {
    report["SnapshotId"].as_str().expect("id").to_string()
}

#[test]
fn only_init_backup_import_and_serve_make_a_store() {
    let store = Store::new();
    let image = store.image("disk.img", &[1, 2]);
    for args in [
        &["gc"][..],
        &["verify"],
        &["ls"],
        &["rm", "snap-0123456789abcdef"],
        &["cancel", "snap-0123456789abcdef"],
        &["tag", "snap-0123456789abcdef", "--add", "a=b"],
        &["forget", "--keep-last", "1"],
        &["stats"],
    ] {
        let stderr = store.fails(args, 3);
        assert!(stderr.contains("no store at"), "{args:?}: {stderr}");
        assert!(!store.store().exists(), "{args:?} made a store");
    }
    // A directory holding other files is a store only by `init`.
    std::fs::create_dir(store.store()).expect("dir");
    std::fs::write(store.store().join("notes.txt"), "mine").expect("file");
    let stderr = store.fails(&["backup", &image], 2);
    assert!(stderr.contains("blocksnap init"), "{stderr}");
    assert!(!store.store().join("blocksnap.store").exists());
    store.ok(&["init"]);
    assert!(store
        .fails(&["init"], 2)
        .contains("already a blocksnap store"));
    store.ok(&["backup", &image]);
    assert_eq!(
        std::fs::read_to_string(store.store().join("notes.txt")).expect("kept"),
        "mine"
    );
    // Where nothing is, a backup makes the store.
    let fresh = Store::new();
    let image = fresh.image("disk.img", &[1]);
    fresh.ok(&["backup", &image]);
    fresh.ok(&["verify"]);
}

#[test]
fn exit_codes_json_errors_and_the_passphrase_command() {
    let store = Store::new();
    let image = store.image("disk.img", &[1, 0, 2]);
    // Under --json an error is one JSON object on stderr.
    let output = store.run(&["--json", "gc"]);
    assert_eq!(output.status.code(), Some(3));
    let error: Value = serde_json::from_slice(&output.stderr).expect("JSON error");
    assert_eq!(error["Error"]["Kind"], "NotFound");
    assert_eq!(error["Error"]["ExitCode"], 3);
    assert!(error["Error"]["Message"]
        .as_str()
        .is_some_and(|message| message.contains("no store at")));
    assert!(output.stdout.is_empty());

    // A passphrase from a command; a wrong one exits 5; a failing command
    // is bad usage.
    let good = [("BLOCKSNAP_PASSPHRASE_COMMAND", "printf 'correct horse\\n'")];
    let output = store.run_with(&["backup", &image, "--encrypted"], &good);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(store.run_with(&["ls"], &good).status.success());
    let wrong = store.run_with(&["ls", "--passphrase-command", "echo wrong"], &[]);
    assert_eq!(
        wrong.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let failing = store.run_with(&["ls", "--passphrase-command", "exit 7"], &[]);
    assert_eq!(failing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&failing.stderr).contains("passphrase command"));

    // A store another process holds: exit 4, as JSON too.
    let mut server = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-authentication",
        ])
        .env("BLOCKSNAP_STORE", store.store())
        .env("BLOCKSNAP_PASSPHRASE", "correct horse")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("address");
    let output = store.run(&["--json", "gc"]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(output.status.code(), Some(4));
    let error: Value = serde_json::from_slice(&output.stderr).expect("JSON error");
    assert_eq!(error["Error"]["Kind"], "StoreInUse");
}

#[test]
fn long_operations_write_progress_lines_when_stderr_is_a_log() {
    let store = Store::new();
    let seeds: Vec<u64> = (1..=16).collect();
    let image = store.image("disk.img", &seeds);
    store.ok(&["backup", &image]);
    // 8 MiB read at 2 MiB/s: about four seconds, a line every second.
    let output = store.run(&[
        "verify",
        "--max-bytes-per-sec",
        "2M",
        "--progress-interval",
        "1s",
    ]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines = stderr
        .lines()
        .filter(|line| line.starts_with("blocksnap: verifying: running for"))
        .count();
    assert!(lines >= 2, "{stderr}");
    // Under --json the lines are JSON objects.
    let output = store.run(&[
        "--json",
        "verify",
        "--max-bytes-per-sec",
        "2M",
        "--progress-interval",
        "1s",
    ]);
    assert!(output.status.success());
    let progress: Vec<Value> = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert!(progress.len() >= 2);
    assert!(progress
        .iter()
        .all(|line| line["Progress"]["Operation"] == "verifying"));
    // --quiet: nothing.
    let output = store.run(&[
        "--quiet",
        "verify",
        "--max-bytes-per-sec",
        "4M",
        "--progress-interval",
        "1s",
    ]);
    assert!(output.stderr.is_empty());
}

#[test]
fn volumes_parent_latest_tags_and_listing_filters() {
    let store = Store::new();
    let image = store.image("disk.img", &[1, 2, 3, 4]);
    let canonical = std::fs::canonicalize(&image).expect("canonical");
    let canonical = canonical.to_str().expect("utf-8");
    let output = store.run(&["--json", "backup", &image, "--parent", "latest"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("a full backup"));
    let first: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        first["Volume"], canonical,
        "the image's canonical path names the volume"
    );
    assert_eq!(first["ParentSnapshotId"], Value::Null);
    std::fs::write(
        &image,
        [
            random_block(1),
            random_block(5),
            random_block(3),
            random_block(4),
        ]
        .concat(),
    )
    .expect("change a block");
    let second = store.json(&["backup", &image, "--parent", "latest"]);
    assert_eq!(second["ParentSnapshotId"], first["SnapshotId"]);
    assert_eq!(second["BlocksWritten"], 1, "only the changed block");
    // Another volume, and an encrypted backup of the first volume: its
    // latest of that encryption is none.
    let other = store.json(&["backup", &image, "--volume", "db-disk"]);
    assert_eq!(other["Volume"], "db-disk");
    let passphrase = [("BLOCKSNAP_PASSPHRASE", "pw")];
    let latest_encrypted = ["backup", &image, "--encrypted", "--parent", "latest"];
    let encrypted = store.json_with(&latest_encrypted, &passphrase);
    assert_eq!(encrypted["ParentSnapshotId"], Value::Null);
    let encrypted_child = store.json_with(&latest_encrypted, &passphrase);
    assert_eq!(encrypted_child["ParentSnapshotId"], encrypted["SnapshotId"]);
    let plain_child = store.json_with(&["backup", &image, "--parent", "latest"], &passphrase);
    assert_eq!(plain_child["ParentSnapshotId"], second["SnapshotId"]);

    // Tags: add, change, remove; `ls` filters by volume and tag.
    let tags = store.json_with(
        &[
            "tag",
            &id(&second),
            "--add",
            "keep=yes",
            "--add",
            "env=test",
        ],
        &passphrase,
    );
    assert!(tags["Tags"]
        .as_array()
        .expect("tags")
        .iter()
        .any(|tag| tag["Key"] == "keep" && tag["Value"] == "yes"));
    store.json_with(
        &["tag", &id(&second), "--add", "env=prod", "--remove", "keep"],
        &passphrase,
    );
    let listed = store.json_with(&["ls", "--tag", "env=prod"], &passphrase);
    let ids: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .map(|snapshot| snapshot["SnapshotId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [id(&second)]);
    let by_volume = store.json_with(&["ls", "--volume", "db-disk"], &passphrase);
    assert_eq!(by_volume.as_array().map(Vec::len), Some(1));
    assert_eq!(by_volume[0]["Volume"], "db-disk");
    let nothing = store.run_with(&["tag", &id(&second)], &passphrase);
    assert_eq!(nothing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("--add"));
    let text = String::from_utf8(store.run_with(&["ls"], &passphrase).stdout).expect("utf-8");
    assert!(text
        .lines()
        .next()
        .is_some_and(|header| header.contains("VOLUME")));
    assert!(text.contains("db-disk"));
    let shown = String::from_utf8(store.run_with(&["show", &id(&other)], &passphrase).stdout)
        .expect("utf-8");
    assert!(shown.contains("volume       db-disk"), "{shown}");
}

#[test]
fn forget_keeps_what_the_policy_says_per_volume_and_children_stay_whole() {
    let store = Store::new();
    let image = store.image("disk.img", &[1, 2, 3, 4]);
    let mut chain = Vec::new();
    for generation in 0..5u64 {
        std::fs::write(
            &image,
            [
                random_block(1),
                random_block(10 + generation),
                random_block(3),
                random_block(4),
            ]
            .concat(),
        )
        .expect("image");
        chain.push(id(&store.json(&["backup", &image, "--parent", "latest"])));
    }
    let other_image = store.image("other.img", &[7]);
    let other = id(&store.json(&["backup", &other_image, "--volume", "other"]));
    // A snapshot that records no volume: exported and imported again.
    let exports = store.path("exports");
    std::fs::create_dir(&exports).expect("exports");
    let exported = store.json(&[
        "export",
        &other,
        "--bucket",
        exports.to_str().expect("utf-8"),
    ]);
    let archive = exported["Location"].as_str().expect("location").to_string();
    let imported = id(&store.json(&["import", &archive]));
    // Its tags came with it: the volume tag removed, it records none.
    store.ok(&["tag", &imported, "--remove", "blocksnap:volume"]);
    store.ok(&["tag", &chain[1], "--add", "keep=forever"]);

    let count = |store: &Store| {
        serde_json::from_str::<Value>(&store.ok(&["ls", "--json"]))
            .expect("JSON")
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(count(&store), 7);
    // A dry run says what it would do, and does nothing.
    let dry = store.json(&[
        "forget",
        "--keep-last",
        "2",
        "--keep-tag",
        "keep=forever",
        "--dry-run",
    ]);
    assert_eq!(dry["DryRun"], true);
    assert_eq!(dry["Removed"].as_array().map(Vec::len), Some(0));
    assert_eq!(count(&store), 7);
    let volumes = dry["Volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 2, "the imported snapshot records no volume");
    assert_eq!(dry["SnapshotsWithoutVolume"], 1);
    let disk = volumes
        .iter()
        .find(|volume| volume["Volume"] != "other")
        .expect("the disk's volume");
    let kept: Vec<&str> = disk["Keep"]
        .as_array()
        .expect("keep")
        .iter()
        .map(|entry| entry["SnapshotId"].as_str().expect("id"))
        .collect();
    assert_eq!(
        kept,
        [chain[4].as_str(), chain[3].as_str(), chain[1].as_str()]
    );
    assert_eq!(disk["Keep"][2]["Reasons"][0], "tag keep=forever");
    assert_eq!(disk["Remove"].as_array().map(Vec::len), Some(2));

    // Without a policy, nothing is removed.
    assert!(store.fails(&["forget"], 2).contains("--keep"));

    // For real, with the collector: the parents of kept children go, and
    // the children restore byte-identical.
    let done = store.json(&[
        "forget",
        "--keep-last",
        "2",
        "--keep-tag",
        "keep=forever",
        "--gc",
    ]);
    let removed: Vec<&str> = done["Removed"]
        .as_array()
        .expect("removed")
        .iter()
        .map(|id| id.as_str().expect("id"))
        .collect();
    assert_eq!(removed, [chain[2].as_str(), chain[0].as_str()]);
    assert!(
        done["Gc"]["BytesFreed"]
            .as_u64()
            .is_some_and(|bytes| bytes > 0),
        "{done}"
    );
    assert_eq!(count(&store), 5);
    let restored = store.path("restored.img");
    store.ok(&["restore", &chain[4], restored.to_str().expect("utf-8")]);
    assert_eq!(
        std::fs::read(&restored).expect("restored"),
        std::fs::read(&image).expect("image")
    );
    store.ok(&["verify"]);
    let listed = store.ok(&["ls"]);
    assert!(listed.contains(&imported) && listed.contains(&other));

    // Only one volume when asked.
    let only = store.json(&[
        "forget",
        "--volume",
        "other",
        "--keep-last",
        "1",
        "--dry-run",
    ]);
    assert_eq!(only["Volumes"].as_array().map(Vec::len), Some(1));
    assert_eq!(only["Volumes"][0]["Volume"], "other");
}

#[test]
fn gc_by_default_reclaims_a_pack_a_tenth_dead() {
    let store = Store::new();
    let seeds: Vec<u64> = (1..=10).collect();
    let image = store.image("disk.img", &seeds);
    let parent = id(&store.json(&["backup", &image]));
    // Four of the ten blocks change: the parent's four old ones are 40% of
    // its pack once it is gone.
    let changed: Vec<u64> = (1..=10)
        .map(|seed| if seed <= 4 { seed + 100 } else { seed })
        .collect();
    std::fs::write(
        &image,
        changed
            .iter()
            .flat_map(|seed| random_block(*seed))
            .collect::<Vec<u8>>(),
    )
    .expect("image");
    let child = id(&store.json(&["backup", &image, "--parent", &parent]));
    store.ok(&["rm", &parent]);
    let collected = store.json(&["gc"]);
    let freed = collected["BytesFreed"].as_u64().expect("freed");
    assert!(
        freed >= 4 * BLOCK as u64,
        "the four dead blocks are freed: {collected}"
    );
    let restored = store.path("restored.img");
    store.ok(&["restore", &child, restored.to_str().expect("utf-8")]);
    assert_eq!(
        std::fs::read(&restored).expect("restored"),
        std::fs::read(&image).expect("image")
    );
    store.ok(&["verify"]);
}
