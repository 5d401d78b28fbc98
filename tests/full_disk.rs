//! A store on a full disk: a small tmpfs the test mounts (the test command
//! runs as root, as CI does). A backup that runs out of space cancels its
//! snapshot; with 0 bytes free every command that only reads works and
//! writes nothing, `cancel` and `rm` succeed, and `gc` says how much free
//! space its compaction needs; once space is freed everything works again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BLOCK: usize = 524_288;

/// A tmpfs of `size` mounted on a temporary directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (the test command and CI run as root)"
        );
        Tmpfs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Fills the file system with `name` until it is full (or only
    /// `leave` bytes remain).
    fn fill(&self, name: &str, leave: u64) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path(name)).expect("filler");
        let chunk = vec![0x5au8; 64 << 10];
        loop {
            let free = available(self.dir.path());
            if free <= leave {
                break;
            }
            let take = chunk.len().min((free - leave) as usize);
            if file.write_all(&chunk[..take]).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Frees `bytes` by shortening the fillers.
fn free_bytes(tmpfs: &Tmpfs, bytes: u64) {
    let mut left = bytes;
    for name in ["filler-2", "filler"] {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(tmpfs.path(name))
            .expect("filler");
        let len = file.metadata().expect("metadata").len();
        let cut = left.min(len);
        file.set_len(len - cut).expect("truncate");
        left -= cut;
    }
}

fn available(path: &Path) -> u64 {
    let output = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(path)
        .output()
        .expect("stat");
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let mut fields = text
        .split_whitespace()
        .map(|field| field.parse::<u64>().expect("number"));
    fields.next().expect("blocks") * fields.next().expect("block size")
}

fn blocksnap(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .args(args)
        .env("BLOCKSNAP_STORE", store)
        .stdin(Stdio::null())
        .output()
        .expect("run blocksnap")
}

fn ok(store: &Path, args: &[&str]) -> String {
    let output = blocksnap(store, args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn write_image(path: &Path, blocks: u64, first_seed: u64) {
    let mut data = Vec::with_capacity(blocks as usize * BLOCK);
    for index in 0..blocks {
        // Random blocks: they do not compress, so the sizes are known.
        data.extend(blocksnap::testing::block((first_seed + index) * 3 + 2));
    }
    std::fs::write(path, data).expect("image");
}

/// Every file under `dir` with its length and modification time.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let metadata = entry.metadata().expect("metadata");
        if metadata.is_dir() {
            files.extend(tree(&entry.path()));
        } else {
            files.insert(
                entry.path(),
                (metadata.len(), metadata.modified().expect("mtime")),
            );
        }
    }
    files
}

fn status_of(store: &Path, snapshot: &str) -> String {
    let shown: serde_json::Value =
        serde_json::from_str(&ok(store, &["show", snapshot, "--json"])).expect("json");
    shown["Status"].as_str().expect("status").to_string()
}

#[test]
fn a_full_disk_costs_no_snapshot_and_reads_still_work() {
    let tmpfs = Tmpfs::mount("48m");
    let outside = tempfile::tempdir().expect("tempdir");
    let store = tmpfs.path("store");
    let first = outside.path().join("first.img");
    let second = outside.path().join("second.img");
    let big = outside.path().join("big.img");
    write_image(&first, 8, 100);
    write_image(&second, 8, 200);
    write_image(&big, 48, 300);
    let kept = ok(&store, &["backup", first.to_str().expect("path")])
        .trim()
        .to_string();
    let other = ok(&store, &["backup", second.to_str().expect("path")])
        .trim()
        .to_string();

    // A backup that runs out of space fails, and its snapshot is cancelled
    // rather than left pending.
    tmpfs.fill("filler", 6 << 20);
    let failed = blocksnap(&store, &["backup", big.to_str().expect("path"), "--json"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(failed.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("No space left") || stderr.contains("space"),
        "{stderr}"
    );
    assert!(stderr.contains("cancelled"), "{stderr}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&store, &["ls", "--json"])).expect("json");
    let statuses: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|snapshot| snapshot["Status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == "completed").count(), 2);
    assert!(!statuses.contains(&"pending"), "{statuses:?}");

    // Now not a byte is free.
    tmpfs.fill("filler-2", 0);
    assert_eq!(available(tmpfs.dir.path()), 0);
    let before = tree(&store);
    ok(&store, &["ls"]);
    ok(&store, &["show", &kept]);
    ok(&store, &["stats"]);
    ok(&store, &["diff", &kept, &kept]);
    let verified = blocksnap(&store, &["verify"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let restored = outside.path().join("restored.img");
    ok(
        &store,
        &["restore", &kept, restored.to_str().expect("path")],
    );
    assert!(std::fs::read(&restored).expect("read") == std::fs::read(&first).expect("read"));
    let bucket = outside.path().join("bucket");
    std::fs::create_dir(&bucket).expect("bucket");
    ok(
        &store,
        &["export", &kept, "--bucket", bucket.to_str().expect("path")],
    );
    assert_eq!(tree(&store), before, "a command that only reads wrote");

    // Deleting needs no space; collecting what is dead needs none either,
    // but compacting a pack with live data does, and gc says how much.
    ok(&store, &["rm", &kept]);
    let collected = blocksnap(&store, &["gc", "--live-threshold", "1.0"]);
    let stderr = String::from_utf8_lossy(&collected.stderr);
    assert_eq!(collected.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("needs") && stderr.contains("bytes free"),
        "{stderr}"
    );
    assert_eq!(status_of(&store, &other), "completed");
    // With 1 MiB free the pack's index fits, but a copy of the other
    // snapshot's 4 MiB does not: the compaction is refused before it
    // starts, saying what it needs.
    free_bytes(&tmpfs, 1 << 20);
    let collected = blocksnap(&store, &["gc", "--live-threshold", "1.0"]);
    let stderr = String::from_utf8_lossy(&collected.stderr);
    assert_eq!(collected.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the next compaction needs"), "{stderr}");
    assert_eq!(status_of(&store, &other), "completed");
    ok(&store, &["verify"]);

    // With space again, everything works and nothing was lost.
    std::fs::remove_file(tmpfs.path("filler")).expect("remove filler");
    std::fs::remove_file(tmpfs.path("filler-2")).expect("remove filler");
    ok(&store, &["gc", "--live-threshold", "1.0"]);
    ok(&store, &["verify"]);
    ok(
        &store,
        &[
            "restore",
            &other,
            restored.to_str().expect("path"),
            "--force",
        ],
    );
    assert!(std::fs::read(&restored).expect("read") == std::fs::read(&second).expect("read"));
    let again = ok(&store, &["backup", big.to_str().expect("path")]);
    assert_eq!(status_of(&store, again.trim()), "completed");
}

#[test]
fn a_pending_snapshot_can_be_cancelled_on_a_full_disk() {
    let tmpfs = Tmpfs::mount("32m");
    let outside = tempfile::tempdir().expect("tempdir");
    let store = tmpfs.path("store");
    let image = outside.path().join("disk.img");
    write_image(&image, 32, 500);
    // A backup killed mid-way leaves its snapshot pending.
    let mut child = Command::new(env!("CARGO_BIN_EXE_blocksnap"))
        .args(["backup", image.to_str().expect("path"), "--threads", "1"])
        .env("BLOCKSNAP_STORE", &store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let journals = store.join("pending");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_dir(&journals).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.metadata().is_ok_and(|metadata| metadata.len() > 32))
    }) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&store, &["ls", "--json"])).expect("json");
    let pending = listed[0]["SnapshotId"].as_str().expect("id").to_string();
    assert_eq!(status_of(&store, &pending), "pending");
    tmpfs.fill("filler", 0);
    assert_eq!(available(tmpfs.dir.path()), 0);
    ok(&store, &["cancel", &pending]);
    assert_eq!(status_of(&store, &pending), "error");
    ok(&store, &["rm", &pending]);
    ok(&store, &["verify"]);
}
