//! The `blocksnap` binary on a store in a bucket (`--store s3://…`) of a
//! real S3-compatible server on loopback: backups, restores from a fresh
//! local directory (the bucket is all that survives), diff, rm, gc,
//! verify, stats, encryption and export/import; backups and restores
//! interrupted by SIGINT and SIGTERM stop cleanly; and a server that
//! ignores conditional writes refused with a clear error.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::interrupt::{finished, interrupt};
use support::s3_servers::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};

const BLOCK: usize = 524_288;

struct BucketStore {
    endpoint: String,
    url: String,
    dir: tempfile::TempDir,
}

impl BucketStore {
    fn new(server: &S3Server, prefix: &str) -> BucketStore {
        BucketStore {
            endpoint: server.endpoint.clone(),
            url: format!("s3://{BUCKET}/{prefix}"),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `blocksnap` with `cache` as the bucket store's local directory.
    fn run_with_cache(&self, cache: &str, args: &[&str]) -> Output {
        self.command(cache, args).output().expect("run blocksnap")
    }

    /// `blocksnap args` with `cache` as the local directory, output piped.
    fn command(&self, cache: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_blocksnap"));
        command
            .args(args)
            .env("BLOCKSNAP_STORE", &self.url)
            .env("BLOCKSNAP_CACHE", self.path(cache))
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("BLOCKSNAP_KEY_FILE")
            .env_remove("BLOCKSNAP_PASSPHRASE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn ok_with_cache(&self, cache: &str, args: &[&str]) -> String {
        let output = self.run_with_cache(cache, args);
        assert!(
            output.status.success(),
            "blocksnap {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with_cache("cache", args)
    }
}

/// An image of `blocks` blocks: text, random and zero blocks by seed.
fn write_image(path: &Path, blocks: usize, seed: u64) {
    let mut image = vec![0u8; blocks * BLOCK];
    let mut state = seed | 1;
    for (index, block) in image.chunks_mut(BLOCK).enumerate() {
        match index % 3 {
            0 => block.fill(0),
            1 => block
                .iter_mut()
                .enumerate()
                .for_each(|(at, byte)| *byte = b"blocksnap text "[(at + index) % 15]),
            _ => block.iter_mut().for_each(|byte| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }),
        }
    }
    std::fs::write(path, image).expect("image");
}

#[test]
fn every_command_works_on_a_bucket_store_and_the_bucket_alone_restores() {
    let server = S3Server::seaweedfs();
    let store = BucketStore::new(&server, "cli/store");
    let image = store.path("disk.raw");
    write_image(&image, 24, 7);
    let image = image.to_str().expect("utf-8");
    let first = store.ok(&["backup", image]).trim().to_string();
    let mut bytes = std::fs::read(image).expect("read");
    bytes[5 * BLOCK..6 * BLOCK].fill(0x5a);
    std::fs::write(image, &bytes).expect("write");
    let second = store
        .ok(&["backup", image, "--parent", &first])
        .trim()
        .to_string();
    assert_eq!(store.ok(&["diff", &first, &second]).trim(), "5");
    // Fresh local directories: everything comes from the bucket.
    for (cache, snapshot) in [("fresh-1", &first), ("fresh-2", &second)] {
        let output = store.path(&format!("{snapshot}.raw"));
        let output = output.to_str().expect("utf-8");
        store.ok_with_cache(cache, &["restore", snapshot, output]);
        if snapshot == &second {
            assert!(std::fs::read(output).expect("read") == bytes, "{snapshot}");
        }
    }
    assert!(store.ok_with_cache("fresh-3", &["ls"]).contains(&second));
    assert!(store.ok(&["verify"]).contains("clean"));
    store.ok(&["rm", &first]);
    store.ok(&["gc"]);
    let again = store.path("again.raw");
    store.ok_with_cache(
        "fresh-4",
        &["restore", &second, again.to_str().expect("utf-8")],
    );
    assert!(std::fs::read(&again).expect("read") == bytes);
    assert!(store.ok(&["stats"]).contains("1 completed"));
    assert!(store
        .ok_with_cache("fresh-5", &["verify"])
        .contains("clean"));

    // Encryption: the key file lives apart from the bucket.
    let key_file = store.path("keys");
    let key_file = key_file.to_str().expect("utf-8");
    let passphrase = store.path("passphrase");
    std::fs::write(&passphrase, "correct horse battery staple\n").expect("passphrase");
    let passphrase = passphrase.to_str().expect("utf-8");
    let refused = store.run_with_cache("cache", &["backup", image, "--encrypted"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "no --key-file for a bucket store"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--key-file"));
    let keyed = ["--key-file", key_file, "--passphrase-file", passphrase];
    let encrypted = store
        .ok(&[&["backup", image, "--encrypted"][..], &keyed[..]].concat())
        .trim()
        .to_string();
    let output = store.path("encrypted.raw");
    let output = output.to_str().expect("utf-8");
    store.ok_with_cache(
        "fresh-6",
        &[&["restore", &encrypted, output][..], &keyed[..]].concat(),
    );
    assert!(std::fs::read(output).expect("read") == bytes);

    // Export to a directory, import back into the bucket store (which
    // holds encrypted snapshots now: every command names the key file).
    let archives = store.path("archives");
    std::fs::create_dir(&archives).expect("dir");
    let archives = archives.to_str().expect("utf-8");
    store.ok(&[&["export", &second, "--bucket", archives][..], &keyed[..]].concat());
    let archive = std::fs::read_dir(store.path("archives/snapshot"))
        .expect("archives")
        .next()
        .expect("an archive")
        .expect("entry")
        .path();
    let imported = store
        .ok(&[
            &["import", archive.to_str().expect("utf-8")][..],
            &keyed[..],
        ]
        .concat())
        .trim()
        .to_string();
    let output = store.path("imported.raw");
    let output = output.to_str().expect("utf-8");
    store.ok_with_cache(
        "fresh-7",
        &[&["restore", &imported, output][..], &keyed[..]].concat(),
    );
    assert!(std::fs::read(output).expect("read") == bytes);
}

#[test]
fn a_server_that_ignores_conditional_writes_is_refused() {
    let rclone = S3Server::rclone();
    let store = BucketStore::new(&rclone, "refused");
    let image = store.path("disk.raw");
    write_image(&image, 2, 1);
    let output = store.run_with_cache("cache", &["backup", image.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ignores If-None-Match"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// SIGINT and SIGTERM at several instants of a backup into a bucket store
/// and of a restore from one: every run finished whole or stopped
/// cleanly, no snapshot is left pending, the store verifies clean from a
/// fresh local directory, and a stopped restore leaves no output.
#[test]
fn interrupted_backups_and_restores_on_a_bucket_store_stop_cleanly() {
    let server = S3Server::seaweedfs();
    let scratch = tempfile::tempdir().expect("tempdir");
    let image = scratch.path().join("disk.raw");
    write_image(&image, 96, 11);
    let image = image.to_str().expect("utf-8");
    let mut stopped = (0, 0);
    for (signal, number) in [("INT", 2), ("TERM", 15)] {
        for delay in [0, 25, 120, 400] {
            let context = format!("SIG{signal} after {delay} ms");
            let store = BucketStore::new(&server, &format!("signals/{signal}-{delay}"));
            let child = store
                .command("cache", &["backup", image, "--threads", "1"])
                .spawn()
                .expect("spawn");
            let journals = store.path("cache/pending");
            let started = || std::fs::read_dir(&journals).is_ok_and(|mut dir| dir.next().is_some());
            interrupt(&child, started, Duration::from_millis(delay), signal);
            let output = child.wait_with_output().expect("wait");
            let backup_finished = finished(&output, number, &format!("backup, {context}"));
            let listed = store.ok_with_cache("fresh", &["ls", "--json"]);
            assert!(
                !listed.contains("\"pending\""),
                "backup, {context}: {listed}"
            );
            assert!(store.ok_with_cache("fresh", &["verify"]).contains("clean"));
            if !backup_finished {
                stopped.0 += 1;
                continue;
            }
            let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
            let restored = store.path("restored.raw");
            let child = store
                .command("cold", &["restore", &id, restored.to_str().expect("utf-8")])
                .spawn()
                .expect("spawn");
            interrupt(
                &child,
                || restored.exists() || store.path("cold").exists(),
                // A restore of this image takes a few tenths of a second.
                Duration::from_millis(delay / 20),
                signal,
            );
            let output = child.wait_with_output().expect("wait");
            if finished(&output, number, &format!("restore, {context}")) {
                assert!(
                    std::fs::read(&restored).expect("read") == std::fs::read(image).expect("read"),
                    "restore, {context}"
                );
            } else {
                stopped.1 += 1;
                assert!(!restored.exists(), "restore, {context}: left its output");
            }
        }
    }
    assert!(
        stopped.0 >= 2 && stopped.1 >= 1,
        "too few runs interrupted: {stopped:?}"
    );
}

/// The image writer `writer` backs up in round `round`: its first half
/// the same in every process (and new every third round), its second half
/// this process's own, new every round.
fn shared_half_image(path: &Path, writer: usize, round: usize) -> Vec<u8> {
    const BLOCKS: usize = 8;
    write_image(path, BLOCKS, 7 + (round / 3) as u64);
    let mut bytes = std::fs::read(path).expect("read");
    let own_seed = (writer * 100 + round) as u8;
    for block in BLOCKS / 2..BLOCKS {
        bytes[block * BLOCK..(block + 1) * BLOCK]
            .iter_mut()
            .enumerate()
            .for_each(|(at, byte)| *byte = own_seed ^ (at as u8) ^ (block as u8) ^ 0x5a);
    }
    std::fs::write(path, &bytes).expect("write");
    bytes
}

/// A number in 0..bound from `seed` (xorshift): the test's random
/// instants, the same in every run.
fn pseudo_random(seed: u64, bound: u64) -> u64 {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    state % bound
}

/// Counts a writer thread out of `writing` when it ends, by panic too.
struct Finished<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// `stats --json`'s field `name`.
fn stat(stats: &str, name: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(stats).expect("stats JSON");
    value[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {stats}"))
}

/// Four `blocksnap backup` processes, each with its own local directory,
/// write 25 incremental snapshots each into one bucket store at once, of
/// images half of whose blocks they share, each removing its snapshot of
/// two rounds before; `gc` runs in a loop alongside, and one writer's
/// backups are killed by SIGKILL at chosen instants. Afterwards, from a
/// fresh directory: every snapshot acknowledged and not removed restores
/// exactly, `verify` is clean, and after a last `gc` every distinct chunk
/// is stored once, within 5% of what one writer stores for the same
/// images. Writers that closed are no longer registered; one that never
/// closed (a `serve` killed) does not stop `gc`, and `fence` takes it
/// out.
#[test]
fn backup_processes_and_a_collector_share_one_bucket_store() {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 25;
    const KILLED: usize = 3;
    let server = S3Server::seaweedfs();
    let store = BucketStore::new(&server, "cli/many");
    // The collector starts at once: the store must exist (gc makes none).
    store.ok_with_cache("collector", &["init"]);
    let writing = std::sync::atomic::AtomicUsize::new(WRITERS);
    // Killed backups that printed no id: their snapshots never count.
    let unacknowledged = std::sync::atomic::AtomicUsize::new(0);
    let (kept, collections) = std::thread::scope(|scope| {
        let collector = scope.spawn(|| {
            let mut runs = 0;
            while writing.load(std::sync::atomic::Ordering::Acquire) > 0 {
                store.ok_with_cache("collector", &["gc", "--live-threshold", "1"]);
                runs += 1;
            }
            runs
        });
        let handles: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let store = &store;
                let writing = &writing;
                let unacknowledged = &unacknowledged;
                scope.spawn(move || {
                    // Counted out however the thread ends, so the
                    // collector stops.
                    let _done = Finished(writing);
                    let cache = format!("writer-{writer}");
                    let image = store.path(&format!("writer-{writer}.raw"));
                    let image_arg = image.to_str().expect("utf-8");
                    // Acknowledged snapshots still kept: id and content.
                    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
                    let mut parents_of_killed = Vec::new();
                    for round in 0..ROUNDS {
                        let bytes = shared_half_image(&image, writer, round);
                        let mut args = vec!["backup", image_arg];
                        let parent = kept.last().map(|(id, _)| id.clone());
                        if let Some(parent) = &parent {
                            args.extend(["--parent", parent]);
                        }
                        let seed = (writer * ROUNDS + round) as u64;
                        let id = if writer == KILLED && round % 4 == 1 {
                            let child = store.command(&cache, &args).spawn().expect("spawn");
                            std::thread::sleep(Duration::from_millis(pseudo_random(seed, 1500)));
                            let mut child = child;
                            let _ = child.kill();
                            let output = child.wait_with_output().expect("wait");
                            // Acknowledged only if it printed its id.
                            let printed =
                                String::from_utf8_lossy(&output.stdout).trim().to_string();
                            if printed.starts_with("snap-") {
                                printed
                            } else {
                                unacknowledged.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                                continue;
                            }
                        } else {
                            store.ok_with_cache(&cache, &args).trim().to_string()
                        };
                        kept.push((id, bytes));
                        if kept.len() > 2 {
                            let old = kept.remove(0);
                            let removed = store.run_with_cache(&cache, &["rm", &old.0]);
                            let stderr = String::from_utf8_lossy(&removed.stderr);
                            if !removed.status.success() {
                                // The parent of a killed backup's pending
                                // snapshot stays until that is cleaned up.
                                assert!(
                                    stderr.contains("is the parent of pending snapshot"),
                                    "rm {}: {stderr}",
                                    old.0
                                );
                                parents_of_killed.push(old);
                            }
                        }
                    }
                    kept.extend(parents_of_killed);
                    kept
                })
            })
            .collect();
        let kept: Vec<(String, Vec<u8>)> = handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("writer"))
            .collect();
        (kept, collector.join().expect("collector"))
    });
    assert!(collections >= 2, "gc ran {collections} times alongside");
    assert!(
        unacknowledged.into_inner() >= 1,
        "no backup was killed before it finished"
    );
    let listed = store.ok_with_cache("fresh", &["ls"]);
    for (id, bytes) in &kept {
        assert!(listed.contains(id.as_str()), "{id} missing from {listed}");
        let output = store.path(&format!("{id}.raw"));
        let output_arg = output.to_str().expect("utf-8");
        store.ok_with_cache("fresh", &["restore", id, output_arg]);
        assert!(
            std::fs::read(&output).expect("restored") == *bytes,
            "{id} restores exactly"
        );
    }
    store.ok_with_cache("fresh", &["verify"]);
    // Every backup closed: only what is open now is registered.
    let writers = store.ok_with_cache("fresh", &["writers"]);
    assert_eq!(writers.trim(), "", "{writers}");
    // Only what the kept snapshots reference stays, each chunk once. The
    // killed backups' pending snapshots were failed once their writer's
    // directory closed (nothing can complete them).
    let collected = store.ok_with_cache("fresh", &["gc", "--live-threshold", "1"]);
    let stats = store.ok_with_cache("fresh", &["stats", "--json"]);
    assert_eq!(stat(&stats, "PendingSnapshots"), 0, "{stats}");
    assert_eq!(
        stat(&stats, "StoredChunks"),
        stat(&stats, "LiveChunks"),
        "{stats}"
    );
    // One writer, the same images.
    let alone = BucketStore {
        endpoint: store.endpoint.clone(),
        url: format!("{}-alone", store.url),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    for (id, _) in &kept {
        let restored = store.path(&format!("{id}.raw"));
        alone.ok(&["backup", restored.to_str().expect("utf-8")]);
    }
    let alone_stats = alone.ok(&["stats", "--json"]);
    let (shared, single) = (
        stat(&stats, "StoredBytes") as f64,
        stat(&alone_stats, "StoredBytes") as f64,
    );
    assert!(
        shared <= single * 1.05,
        "{shared} bytes stored by four writers, {single} by one; the last gc: {collected}"
    );
    // A writer that registered and never closed (a lost machine) does not
    // stop gc; `fence` takes it out.
    let mut lost = store
        .command(
            "lost",
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--insecure-no-authentication",
            ],
        )
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(lost.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert!(line.starts_with("listening on "), "{line:?}");
    lost.kill().expect("SIGKILL");
    lost.wait().expect("wait");
    let writers = store.ok_with_cache("fresh", &["writers"]);
    let lost_id = writers
        .split_whitespace()
        .next()
        .expect("one writer")
        .to_string();
    assert_eq!(writers.lines().count(), 1, "{writers}");
    store.ok_with_cache("fresh", &["gc"]);
    store.ok_with_cache("fresh", &["fence", &lost_id]);
    assert_eq!(store.ok_with_cache("fresh", &["writers"]).trim(), "");
    store.ok_with_cache("fresh", &["verify"]);
    // The lost directory, back after all, registers again and writes.
    store.ok_with_cache("lost", &["gc"]);
    assert_eq!(store.ok_with_cache("fresh", &["writers"]).trim(), "");
}

/// Two `serve` instances on one bucket store, each with its own local
/// directory, driven by boto3 (`tests/boto3/two_instances.py`): what one
/// writes the other lists, reads and diffs at once; a put or completion
/// sent to the instance that did not start the snapshot is refused with
/// the documented error.
#[test]
fn two_serve_instances_share_one_bucket_store() {
    let server = S3Server::seaweedfs();
    let store = BucketStore::new(&server, "cli/serve-pair");
    let credentials = store.path("credentials");
    std::fs::write(&credentials, "AKIDALICE alice-secret 111111111111\n").expect("credentials");
    let credentials = credentials.to_str().expect("utf-8");
    let start = |cache: &str| {
        let mut child = store
            .command(
                cache,
                &[
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--credentials",
                    credentials,
                ],
            )
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        (child, format!("http://{address}"))
    };
    let (mut first, first_endpoint) = start("first");
    let (mut second, second_endpoint) = start("second");
    let python = std::env::var("BLOCKSNAP_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        "{}/tests/boto3/two_instances.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = Command::new(&python)
        .args([&script, &first_endpoint, &second_endpoint])
        .output()
        .unwrap_or_else(|error| panic!("running {python}: {error}"));
    for child in [&mut first, &mut second] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed:\n{report}");
    assert!(report.contains("OK"), "{report}");
}
