//! Snapshot export and import: round trips through a directory and through
//! a real S3-compatible server (s3s-fs, which the test command installs from
//! crates.io and names in `$BLOCKSNAP_S3S_FS`, started here on 127.0.0.1
//! with access keys so requests are signed), deltas, parents, create-only
//! publishing, and a corpus of hostile archives, each refused with no
//! snapshot left behind.

use blocksnap::api::Ebs;
use blocksnap::api::{StartSnapshotRequest, Status};
use blocksnap::archive::{
    self, manifest, Bucket, ExportOptions, ExportOutcome, ExportReport, ImportOptions,
    ImportOutcome, ImportReport, S3Bucket, S3Settings,
};
use blocksnap::testing::{holds_exactly, memory_engine, snapshot_id, write_lineage, Lineage};
use blocksnap::{Engine, EngineConfig, Error};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

static NEVER: AtomicBool = AtomicBool::new(false);

fn no_progress(_: u64) {}

fn engine() -> Engine {
    memory_engine(EngineConfig::default()).0
}

fn template() -> StartSnapshotRequest {
    StartSnapshotRequest {
        volume_size: 2,
        description: Some("vm disk".into()),
        tags: vec![blocksnap::api::Tag {
            key: "team".into(),
            value: "storage".into(),
        }],
        ..StartSnapshotRequest::default()
    }
}

/// A parent with text, structured, random and zero blocks (the last block of
/// the 2 GiB volume included), and a child that changes, adds and zeroes.
fn lineage(engine: &Engine) -> Lineage {
    let parent: &[(u32, u64)] = &[
        (0, 3),
        (1, 4),
        (2, 5),
        (7, 0),
        (100, 6),
        (101, 7),
        (102, 8),
        (4095, 9),
    ];
    let child: &[(u32, u64)] = &[(1, 10), (2, 0), (50, 11), (4095, 12)];
    write_lineage(engine, &template(), &[parent, child])
}

fn export(
    engine: &Engine,
    snapshot: &str,
    bucket: &Bucket,
    options: &ExportOptions,
) -> ExportReport {
    match archive::export(
        engine,
        snapshot_id(snapshot),
        bucket,
        options,
        &no_progress,
        &NEVER,
    ) {
        Ok(ExportOutcome::Completed(report)) => report,
        other => panic!("export of {snapshot}: {other:?}"),
    }
}

fn import(
    engine: &Engine,
    bucket: &Bucket,
    key: &str,
    options: &ImportOptions,
) -> blocksnap::Result<ImportReport> {
    match archive::import(engine, bucket, key, options, &no_progress, &NEVER)? {
        ImportOutcome::Completed(report) => Ok(report),
        ImportOutcome::Interrupted => panic!("not interrupted"),
    }
}

fn files_under(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(directory) = stack.pop() {
        for entry in std::fs::read_dir(&directory).expect("read directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(
                    path.strip_prefix(root)
                        .expect("under root")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    found.sort();
    found
}

#[test]
fn a_snapshot_round_trips_through_a_directory_with_its_metadata() {
    let source = engine();
    let chain = lineage(&source);
    let (child_id, child_content) = &chain[1];
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = Bucket::Directory(dir.path().to_path_buf());
    let report = export(
        &source,
        child_id,
        &bucket,
        &ExportOptions {
            prefix: Some("fleet/vm-1/".into()),
            name: Some("disk".into()),
            ..ExportOptions::default()
        },
    );
    // The memory engine's clock stands at 2026-11-23T00:00:00Z.
    assert_eq!(report.key, "fleet/vm-1/snapshot/disk-261123-0000-00.zip");
    assert_eq!(files_under(dir.path()), vec![report.key.clone()]);
    // Every written block of the child, zeros included: 4 inherited + 3 new
    // and changed + block 2 zeroed + block 7 written as zeros.
    assert_eq!(report.blocks, child_content.len() as u64);

    let described = archive::inspect(&bucket, &report.key).expect("inspect");
    assert_eq!(described.kind, manifest::ArchiveKind::Full);
    assert_eq!(described.snapshot.snapshot_id, *child_id);
    assert_eq!(described.root_hash, report.root_hash);

    let target = engine();
    let imported =
        import(&target, &bucket, &report.key, &ImportOptions::default()).expect("import");
    assert_ne!(imported.snapshot_id.to_string(), *child_id);
    assert!(
        holds_exactly(&target, &imported.snapshot_id.to_string(), child_content)
            .expect("read back")
    );
    let description = Ebs::new(&target)
        .describe_snapshot(blocksnap::api::DescribeSnapshotRequest {
            snapshot_id: imported.snapshot_id.to_string(),
        })
        .expect("describe");
    assert_eq!(description.snapshot.status, Status::Completed);
    assert_eq!(description.snapshot.volume_size, 2);
    assert_eq!(description.snapshot.description.as_deref(), Some("vm disk"));
    assert_eq!(description.snapshot.tags, template().tags);

    // Exporting the imported snapshot gives the same content hash.
    let again_dir = tempfile::tempdir().expect("tempdir");
    let again = export(
        &target,
        &imported.snapshot_id.to_string(),
        &Bucket::Directory(again_dir.path().to_path_buf()),
        &ExportOptions::default(),
    );
    assert_eq!(again.root_hash, report.root_hash);
    assert!(again
        .key
        .starts_with(&format!("snapshot/{}-", imported.snapshot_id)));
}

#[test]
fn archives_are_never_overwritten_and_bad_destinations_are_typed_errors() {
    let source = engine();
    let chain = lineage(&source);
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = Bucket::Directory(dir.path().to_path_buf());
    let first = export(&source, &chain[0].0, &bucket, &ExportOptions::default());
    let before = std::fs::read(dir.path().join(&first.key)).expect("archive");
    // Same snapshot, same second: the same key.
    let again = archive::export(
        &source,
        snapshot_id(&chain[0].0),
        &bucket,
        &ExportOptions::default(),
        &no_progress,
        &NEVER,
    );
    assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
    assert_eq!(
        std::fs::read(dir.path().join(&first.key)).expect("archive"),
        before
    );
    // The commit itself refuses a key taken after the early check.
    let mut late = bucket.upload(&first.key).expect("upload");
    late.write_all(b"late").expect("write");
    assert!(matches!(late.commit(), Err(Error::Conflict { .. })));
    assert_eq!(files_under(dir.path()), vec![first.key.clone()]);

    let missing = Bucket::Directory(dir.path().join("absent"));
    let result = archive::export(
        &source,
        snapshot_id(&chain[0].0),
        &missing,
        &ExportOptions::default(),
        &no_progress,
        &NEVER,
    );
    assert!(matches!(result, Err(Error::NotFound { .. })), "{result:?}");
    let result = archive::export(
        &source,
        snapshot_id("snap-0123456789abcdef"),
        &bucket,
        &ExportOptions::default(),
        &no_progress,
        &NEVER,
    );
    assert!(matches!(result, Err(Error::NotFound { .. })), "{result:?}");
    for options in [
        ExportOptions {
            name: Some("../escape".into()),
            ..ExportOptions::default()
        },
        ExportOptions {
            prefix: Some("/absolute".into()),
            ..ExportOptions::default()
        },
        ExportOptions {
            prefix: Some("a/../../b".into()),
            ..ExportOptions::default()
        },
    ] {
        let result = archive::export(
            &source,
            snapshot_id(&chain[0].0),
            &bucket,
            &options,
            &no_progress,
            &NEVER,
        );
        assert!(
            matches!(result, Err(Error::InvalidInput { .. })),
            "{options:?}: {result:?}"
        );
    }
    assert_eq!(files_under(dir.path()), vec![first.key]);
}

#[test]
fn deltas_apply_only_on_their_base_and_full_archives_deduplicate_against_a_parent() {
    let source = engine();
    let chain = lineage(&source);
    let (parent_id, parent_content) = &chain[0];
    let (child_id, child_content) = &chain[1];
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = Bucket::Directory(dir.path().to_path_buf());
    let full_parent = export(&source, parent_id, &bucket, &ExportOptions::default());
    let delta = export(
        &source,
        child_id,
        &bucket,
        &ExportOptions {
            base: Some(snapshot_id(parent_id)),
            name: Some("delta".into()),
            ..ExportOptions::default()
        },
    );
    // Blocks 1, 2 (now zeros), 50 and 4095 changed.
    assert_eq!(delta.blocks, 4);

    let target = engine();
    let base = import(
        &target,
        &bucket,
        &full_parent.key,
        &ImportOptions::default(),
    )
    .expect("import parent");
    assert!(holds_exactly(&target, &base.snapshot_id.to_string(), parent_content).expect("read"));
    let without_parent = import(&target, &bucket, &delta.key, &ImportOptions::default());
    assert!(
        matches!(without_parent, Err(Error::InvalidInput { .. })),
        "{without_parent:?}"
    );
    let applied = import(
        &target,
        &bucket,
        &delta.key,
        &ImportOptions {
            parent: Some(base.snapshot_id),
            ..ImportOptions::default()
        },
    )
    .expect("import delta");
    assert!(holds_exactly(&target, &applied.snapshot_id.to_string(), child_content).expect("read"));
    // On the wrong parent (the delta's own result), the base check refuses it.
    let snapshots = Ebs::new(&target).list_snapshots().expect("list").len();
    let wrong = import(
        &target,
        &bucket,
        &delta.key,
        &ImportOptions {
            parent: Some(applied.snapshot_id),
            ..ImportOptions::default()
        },
    );
    assert!(
        matches!(wrong, Err(Error::InvalidInput { .. })),
        "{wrong:?}"
    );
    assert_eq!(
        Ebs::new(&target).list_snapshots().expect("list").len(),
        snapshots
    );

    // A full child archive onto the imported parent: unchanged blocks are
    // not written again, and the result is exactly the child.
    let full_child = export(
        &source,
        child_id,
        &bucket,
        &ExportOptions {
            name: Some("child".into()),
            ..ExportOptions::default()
        },
    );
    let deduplicated = import(
        &target,
        &bucket,
        &full_child.key,
        &ImportOptions {
            parent: Some(base.snapshot_id),
            ..ImportOptions::default()
        },
    )
    .expect("import onto parent");
    assert!(holds_exactly(
        &target,
        &deduplicated.snapshot_id.to_string(),
        child_content
    )
    .expect("read"));
    // 0, 7 (zeros), 100, 101 and 102.
    assert_eq!(deduplicated.blocks_unchanged, 5);

    // A full parent archive onto the child: the child's blocks the parent
    // lacks (50) are zeroed, so the result reads exactly as the parent.
    let reverted = import(
        &target,
        &bucket,
        &full_parent.key,
        &ImportOptions {
            parent: Some(deduplicated.snapshot_id),
            ..ImportOptions::default()
        },
    )
    .expect("import parent onto child");
    let mut expected = parent_content.clone();
    expected.insert(50, 0);
    assert!(holds_exactly(&target, &reverted.snapshot_id.to_string(), &expected).expect("read"));
}

#[test]
fn encrypted_snapshots_export_only_when_plaintext_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = blocksnap::keys::LocalKeyProvider::create(
        &dir.path().join("keys"),
        &blocksnap::keys::Passphrase::new("test passphrase").expect("passphrase"),
        blocksnap::keys::KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
    )
    .expect("key file");
    let (source, _, _) = memory_engine(EngineConfig {
        key_provider: Some(std::sync::Arc::new(keys)),
        ..EngineConfig::default()
    });
    let encrypted = StartSnapshotRequest {
        encrypted: Some(true),
        ..template()
    };
    let chain = write_lineage(&source, &encrypted, &[&[(0, 3), (1, 5)]]);
    let bucket = Bucket::Directory(dir.path().to_path_buf());
    let refused = archive::export(
        &source,
        snapshot_id(&chain[0].0),
        &bucket,
        &ExportOptions::default(),
        &no_progress,
        &NEVER,
    );
    assert!(
        matches!(refused, Err(Error::InvalidInput { .. })),
        "{refused:?}"
    );
    let report = export(
        &source,
        &chain[0].0,
        &bucket,
        &ExportOptions {
            decrypt: true,
            ..ExportOptions::default()
        },
    );
    assert!(
        archive::inspect(&bucket, &report.key)
            .expect("inspect")
            .snapshot
            .encrypted
    );
    let target = engine();
    let imported =
        import(&target, &bucket, &report.key, &ImportOptions::default()).expect("import");
    assert!(holds_exactly(&target, &imported.snapshot_id.to_string(), &chain[0].1).expect("read"));
}

/// The entries of an archive, in order: (name, data).
fn entries_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).expect("open")).expect("zip");
    (0..zip.len())
        .map(|position| {
            let mut entry = zip.by_index(position).expect("entry");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read entry");
            (entry.name().to_string(), data)
        })
        .collect()
}

/// Writes `entries` as a zip; `deflated` names the entries to compress
/// (with zip's zstd method).
fn write_archive(path: &Path, entries: &[(String, Vec<u8>)], deflated: &[&str]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).expect("create"));
    for (name, data) in entries {
        let method = if deflated.contains(&name.as_str()) {
            zip::CompressionMethod::Zstd
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        zip.start_file(name.as_str(), options).expect("start");
        zip.write_all(data).expect("write");
    }
    zip.finish().expect("finish");
}

/// Rewrites the manifest in `entries` through `change`.
fn with_manifest(entries: &mut [(String, Vec<u8>)], change: impl FnOnce(&mut serde_json::Value)) {
    let last = entries.last_mut().expect("manifest");
    let mut manifest: serde_json::Value = serde_json::from_slice(&last.1).expect("json");
    change(&mut manifest);
    last.1 = serde_json::to_vec(&manifest).expect("encode");
}

/// Recomputes the manifest's block list hash after the list was edited.
fn rehash_list(entries: &mut [(String, Vec<u8>)]) {
    use sha2::Digest;
    let count = entries.len();
    let list = &entries[count - 2].1;
    let digest: [u8; 32] = sha2::Sha256::digest(list).into();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    with_manifest(entries, |manifest| manifest["blockListSha256"] = hex.into());
}

/// Changes the first hex digit of the first checksum in a block list.
fn flip_first_checksum_digit(list: &mut [u8]) {
    let position = list.iter().position(|byte| *byte == b'\t').expect("tab") + 1;
    list[position] = if list[position] == b'a' { b'b' } else { b'a' };
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing_behind() {
    let source = engine();
    let chain = lineage(&source);
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = Bucket::Directory(dir.path().to_path_buf());
    let good = export(&source, &chain[0].0, &bucket, &ExportOptions::default());
    let good_path = dir.path().join(&good.key);
    let genuine = entries_of(&good_path);
    let count = genuine.len();
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).expect("bomb");

    type Mutation = Box<dyn Fn(&mut Vec<(String, Vec<u8>)>) -> Vec<&'static str>>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "zip slip",
            Box::new(|entries| {
                entries[0].0 = "../../etc/passwd".into();
                vec![]
            }),
            "where blocks/",
        ),
        (
            "absolute name",
            Box::new(|entries| {
                entries[1].0 = "/blocks/0000000001.zst".into();
                vec![]
            }),
            "where blocks/",
        ),
        (
            "missing entry",
            Box::new(|entries| {
                entries.remove(2);
                vec![]
            }),
            "entries",
        ),
        (
            "extra entry",
            Box::new(|entries| {
                entries.insert(1, ("blocks/extra.zst".into(), vec![1]));
                vec![]
            }),
            "entries",
        ),
        (
            "entries out of order",
            Box::new(|entries| {
                entries.swap(0, 1);
                vec![]
            }),
            "where blocks/",
        ),
        (
            "zip bomb",
            Box::new(move |entries| {
                entries[0].1 = bomb.clone();
                vec![]
            }),
            "exactly one block",
        ),
        (
            "deflated entry",
            Box::new(|entries| vec![Box::leak(entries[0].0.clone().into_boxed_str())]),
            "compressed with",
        ),
        (
            "not a zstd frame",
            Box::new(|entries| {
                entries[3].1 = b"plain text".to_vec();
                vec![]
            }),
            "zstd frame",
        ),
        (
            "swapped block data",
            Box::new(|entries| {
                let data = entries[0].1.clone();
                entries[1].1 = data;
                vec![]
            }),
            "SHA-256",
        ),
        (
            "block list edited",
            Box::new(move |entries| {
                flip_first_checksum_digit(&mut entries[count - 2].1);
                vec![]
            }),
            "block-list.tsv",
        ),
        (
            "block list and its hash edited",
            Box::new(move |entries| {
                flip_first_checksum_digit(&mut entries[count - 2].1);
                rehash_list(entries);
                vec![]
            }),
            "SHA-256",
        ),
        (
            "no manifest",
            Box::new(|entries| {
                entries.pop();
                vec![]
            }),
            "manifest.json",
        ),
    ];
    // Manifest edits: (label, member path, new value, expected message).
    let manifest_cases: Vec<(&str, &[&str], serde_json::Value, &str)> = vec![
        (
            "root hash contradicts",
            &["rootHash"],
            serde_json::Value::from("00".repeat(32)),
            "root hash",
        ),
        (
            "block count contradicts",
            &["blockCount"],
            serde_json::Value::from(3),
            "entries",
        ),
        (
            "block beyond the volume",
            &["snapshot", "volumeSize"],
            serde_json::Value::from(1),
            "beyond the volume",
        ),
        (
            "volume size zero",
            &["snapshot", "volumeSize"],
            serde_json::Value::from(0),
            "out of range",
        ),
        (
            "unknown member",
            &["surprise"],
            serde_json::Value::from(true),
            "unknown field",
        ),
        (
            "other block size",
            &["snapshot", "blockSize"],
            serde_json::Value::from(4096),
            "block size",
        ),
        (
            "delta without base",
            &["kind"],
            serde_json::Value::from("delta"),
            "delta",
        ),
        (
            "oversized manifest",
            &["snapshot", "description"],
            serde_json::Value::from("x".repeat(300_000)),
            "more than",
        ),
    ];
    let mut cases = cases;
    for (label, path, value, expected) in manifest_cases {
        let path: Vec<String> = path.iter().map(|key| key.to_string()).collect();
        let edit: Mutation = Box::new(move |entries| {
            with_manifest(entries, |manifest| {
                let member = path
                    .iter()
                    .fold(manifest, |node, key| &mut node[key.as_str()]);
                *member = value.clone();
            });
            vec![]
        });
        cases.push((label, edit, expected));
    }
    let before = Ebs::new(&source).list_snapshots().expect("list").len();
    for (label, mutate, expected) in &cases {
        let mut entries = genuine.clone();
        let deflated = mutate(&mut entries);
        let key = format!("hostile/{}.zip", label.replace(' ', "-"));
        std::fs::create_dir_all(dir.path().join("hostile")).expect("mkdir");
        write_archive(&dir.path().join(&key), &entries, &deflated);
        let result = import(&source, &bucket, &key, &ImportOptions::default());
        let message = match &result {
            Err(error @ Error::InvalidArchive { .. }) => error.to_string(),
            other => panic!("{label}: expected an invalid-archive error, got {other:?}"),
        };
        assert!(message.contains(expected), "{label}: {message}");
        assert_eq!(
            Ebs::new(&source).list_snapshots().expect("list").len(),
            before,
            "{label} left a snapshot"
        );
        assert_eq!(
            source.pending_snapshot_count(),
            0,
            "{label} left a pending snapshot"
        );
    }

    // Archives given as raw bytes must be refused as invalid.
    let refuses_raw = |label: &str, bytes: &[u8]| {
        let key = format!("hostile/{label}.zip");
        std::fs::write(dir.path().join(&key), bytes).expect("write");
        let result = import(&source, &bucket, &key, &ImportOptions::default());
        assert!(
            matches!(result, Err(Error::InvalidArchive { .. })),
            "{label}: {result:?}"
        );
    };

    // Two entries under one name (the zip writer refuses to make them, so
    // the second name is patched in the written bytes).
    let mut entries = genuine.clone();
    let first = entries[0].0.clone();
    let placeholder = format!("{}~", &first[..first.len() - 1]);
    entries[1].0 = placeholder.clone();
    write_archive(&dir.path().join("hostile/duplicate.zip"), &entries, &[]);
    let mut bytes = std::fs::read(dir.path().join("hostile/duplicate.zip")).expect("read");
    let mut position = 0;
    while let Some(found) = bytes[position..]
        .windows(placeholder.len())
        .position(|window| window == placeholder.as_bytes())
    {
        let at = position + found;
        bytes[at..at + first.len()].copy_from_slice(first.as_bytes());
        position = at + first.len();
    }
    refuses_raw("duplicate", &bytes);

    // A newer format version is named as such.
    let mut entries = genuine.clone();
    with_manifest(&mut entries, |m| m["formatVersion"] = 2.into());
    write_archive(&dir.path().join("hostile/v2.zip"), &entries, &[]);
    let result = import(
        &source,
        &bucket,
        "hostile/v2.zip",
        &ImportOptions::default(),
    );
    assert!(
        matches!(result, Err(Error::UnsupportedVersion { version: 2, .. })),
        "{result:?}"
    );

    // Raw damage: truncation anywhere, a flipped byte inside block data,
    // and noise.
    let bytes = std::fs::read(&good_path).expect("read");
    for cut in [bytes.len() - 1, bytes.len() - 30, bytes.len() / 2, 100, 0] {
        refuses_raw(&format!("cut-at-{cut}"), &bytes[..cut]);
    }
    let mut flipped = bytes.clone();
    let data_offset = 30 + "blocks/0000000000.zst".len() + 200;
    flipped[data_offset] ^= 0x40;
    refuses_raw("flip", &flipped);
    refuses_raw("noise", &[0x5a; 4096]);
    assert_eq!(
        Ebs::new(&source).list_snapshots().expect("list").len(),
        before
    );

    // The genuine archive, rewritten by the same helper, still imports.
    write_archive(&dir.path().join("hostile/genuine.zip"), &genuine, &[]);
    import(
        &source,
        &bucket,
        "hostile/genuine.zip",
        &ImportOptions::default(),
    )
    .expect("control");
}

#[test]
fn more_than_65535_blocks_use_zip64_both_ways() {
    // An archive of 65,600 written zero blocks (zip64: more entries than a
    // plain zip can count), made with the zip crate from the format's
    // own parts, imported, exported again by blocksnap, and imported again.
    let count = 65_600u32;
    let zero_sha = blocksnap::codec::zero_block_sha256();
    let mut hasher = manifest::RootHasher::default();
    let mut list = String::new();
    let mut entries = Vec::new();
    for index in 0..count {
        hasher.add(index, &zero_sha);
        list.push_str(&manifest::block_list_line(index, &zero_sha));
        entries.push((
            manifest::block_entry_name(index),
            blocksnap::codec::zero_block_frame().to_vec(),
        ));
    }
    let list_sha: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        list.as_bytes(),
    ))
    .into();
    let (root_hash, linear) = hasher.finish();
    let manifest = serde_json::json!({
        "format": manifest::FORMAT_NAME,
        "formatVersion": manifest::FORMAT_VERSION,
        "created": "2026-11-23T00:00:00Z",
        "kind": "full",
        "snapshot": {
            "snapshotId": "snap-0000000000000001",
            "parentSnapshotId": null,
            "volumeSize": 40,
            "blockSize": 524288,
            "description": null,
            "tags": [],
            "startTime": "2026-11-23T00:00:00Z",
            "completionTime": "2026-11-23T00:00:00Z",
            "encrypted": false
        },
        "base": null,
        "blockCount": count,
        "blockListSha256": manifest::hex_bytes(&list_sha),
        "rootHash": root_hash,
        "linearChecksum": linear,
        "blockEncoding": "zstd"
    });
    entries.push((manifest::BLOCK_LIST_ENTRY.to_string(), list.into_bytes()));
    entries.push((
        manifest::MANIFEST_ENTRY.to_string(),
        serde_json::to_vec(&manifest).expect("json"),
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    write_archive(&dir.path().join("wide.zip"), &entries, &[]);
    let bucket = Bucket::Directory(dir.path().to_path_buf());
    let target = engine();
    let imported = import(&target, &bucket, "wide.zip", &ImportOptions::default()).expect("import");
    assert_eq!(imported.blocks_written, u64::from(count));
    let exported = export(
        &target,
        &imported.snapshot_id.to_string(),
        &bucket,
        &ExportOptions::default(),
    );
    assert_eq!(
        (exported.blocks, exported.root_hash.as_str()),
        (u64::from(count), root_hash.as_str())
    );
    let again =
        import(&engine(), &bucket, &exported.key, &ImportOptions::default()).expect("import again");
    assert_eq!(again.blocks_written, u64::from(count));
}

/// An s3s-fs server on 127.0.0.1 with one bucket, killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
    root: tempfile::TempDir,
}

const ACCESS_KEY: &str = "AKIDBLOCKSNAPTEST";
const SECRET_KEY: &str = "blocksnap-test-secret";
const BUCKET: &str = "archives";

impl S3Server {
    fn start() -> S3Server {
        let program = std::env::var("BLOCKSNAP_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket");
        let mut child = Command::new(&program)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ])
            .arg(root.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("starting {program} (the test command installs it): {error}")
            });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let endpoint = loop {
            let line = lines
                .next()
                .expect("s3s-fs ended before it listened")
                .expect("line");
            if let Some(position) = line.find("server is running at ") {
                break line[position + "server is running at ".len()..]
                    .trim()
                    .to_string();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        S3Server {
            child,
            endpoint,
            root,
        }
    }

    fn bucket(&self, name: &str, secret: &str) -> Bucket {
        let settings = S3Settings {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            ..S3Settings::default()
        }
        .with_keys(ACCESS_KEY, secret);
        Bucket::S3(S3Bucket::new(name, &settings).expect("bucket"))
    }

    /// Objects and multipart uploads in progress (with their parts), as
    /// the server keeps them on disk.
    fn stored_objects(&self) -> Vec<String> {
        files_under(self.root.path())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_snapshot_round_trips_through_an_s3_compatible_server() {
    let server = S3Server::start();
    let bucket = server.bucket(BUCKET, SECRET_KEY);
    let source = engine();
    // 40 random blocks: a 20 MiB archive, so a three-part multipart upload.
    let writes: Vec<(u32, u64)> = (0..40)
        .map(|index| (index, 3 * u64::from(index) + 2))
        .collect();
    let chain = write_lineage(&source, &template(), &[&writes, &[(5, 1), (6, 0)]]);
    let report = export(
        &source,
        &chain[0].0,
        &bucket,
        &ExportOptions {
            prefix: Some("vm".into()),
            ..ExportOptions::default()
        },
    );
    assert!(report.archive_bytes > 16 << 20, "{}", report.archive_bytes);
    assert_eq!(report.location, format!("s3://{BUCKET}/{}", report.key));
    let delta = export(
        &source,
        &chain[1].0,
        &bucket,
        &ExportOptions {
            base: Some(snapshot_id(&chain[0].0)),
            name: Some("delta".into()),
            ..ExportOptions::default()
        },
    );
    let target = engine();
    let parent = import(&target, &bucket, &report.key, &ImportOptions::default()).expect("import");
    assert!(holds_exactly(&target, &parent.snapshot_id.to_string(), &chain[0].1).expect("read"));
    let child = import(
        &target,
        &bucket,
        &delta.key,
        &ImportOptions {
            parent: Some(parent.snapshot_id),
            ..ImportOptions::default()
        },
    )
    .expect("import delta");
    assert!(holds_exactly(&target, &child.snapshot_id.to_string(), &chain[1].1).expect("read"));

    // Create-only at the commit (If-None-Match: *), for a single put and for
    // a multipart upload, even when the early check passed.
    for size in [1usize << 10, 20 << 20] {
        let key = format!("race/{size}.zip");
        let mut first = bucket.upload(&key).expect("upload");
        let mut second = bucket.upload(&key).expect("upload");
        first.write_all(&vec![1u8; size]).expect("write");
        second.write_all(&vec![2u8; size]).expect("write");
        first.commit().expect("first commit");
        assert!(
            matches!(second.commit(), Err(Error::Conflict { .. })),
            "size {size}"
        );
    }
    let again = archive::export(
        &source,
        snapshot_id(&chain[0].0),
        &bucket,
        &ExportOptions {
            prefix: Some("vm".into()),
            ..ExportOptions::default()
        },
        &no_progress,
        &NEVER,
    );
    assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");

    // An upload abandoned after parts were sent leaves no object and no
    // parts behind.
    let before = server.stored_objects();
    {
        let mut abandoned = bucket.upload("abandoned.zip").expect("upload");
        abandoned.write_all(&vec![3u8; 20 << 20]).expect("write");
    }
    assert_eq!(server.stored_objects(), before);
    let result = archive::inspect(&bucket, "abandoned.zip");
    assert!(matches!(result, Err(Error::NotFound { .. })), "{result:?}");

    // Typed errors: a missing bucket, a wrong secret.
    let missing = archive::export(
        &source,
        snapshot_id(&chain[0].0),
        &server.bucket("no-such-bucket", SECRET_KEY),
        &ExportOptions::default(),
        &no_progress,
        &NEVER,
    );
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    let denied = archive::export(
        &source,
        snapshot_id(&chain[0].0),
        &server.bucket(BUCKET, "wrong-secret"),
        &ExportOptions::default(),
        &no_progress,
        &NEVER,
    );
    assert!(
        matches!(denied, Err(Error::AccessDenied { .. })),
        "{denied:?}"
    );
}

/// A TCP proxy in front of a server that, for each request whose start
/// line begins with one of its patterns (each once), lets the request reach
/// the server, then closes the client's connection instead of passing the
/// reply on: a write that landed and whose reply was lost.
struct LossyProxy {
    endpoint: String,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl LossyProxy {
    fn start(upstream: &str, patterns: Vec<String>) -> LossyProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pending = Arc::new(parking_lot::Mutex::new(patterns));
        let counter = dropped.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (pending, counter) = (pending.clone(), counter.clone());
                // Set once this connection carried a request to lose.
                let doomed = Arc::new(AtomicBool::new(false));
                let (mut from_client, mut to_server) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let flag = doomed.clone();
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 64 << 10];
                    while let Ok(read) = from_client.read(&mut buffer) {
                        if read == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buffer[..read]);
                        let mut pending = pending.lock();
                        if let Some(at) = pending
                            .iter()
                            .position(|pattern| text.starts_with(pattern.as_str()))
                        {
                            pending.remove(at);
                            flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        drop(pending);
                        if to_server.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(Shutdown::Write);
                });
                let (mut from_server, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 64 << 10];
                    while let Ok(read) = from_server.read(&mut buffer) {
                        if read == 0 {
                            break;
                        }
                        if doomed.load(std::sync::atomic::Ordering::SeqCst) {
                            // The server answered: the write landed. The
                            // client never hears of it.
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            break;
                        }
                        if to_client.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(Shutdown::Both);
                    let _ = from_server.shutdown(Shutdown::Both);
                });
            }
        });
        LossyProxy { endpoint, dropped }
    }

    fn dropped(&self) -> usize {
        self.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A create-only upload whose reply is lost after it landed (a single put,
/// and a multipart upload's completion): the SDK's retry is refused with
/// 412, the put id read back from the object proves the earlier attempt
/// was this upload's, and the commit succeeds with the bytes written once.
/// A different upload of the same key is still a conflict.
#[test]
fn an_upload_whose_reply_was_lost_commits_once() {
    let server = S3Server::start();
    let small = "lost/small.zip";
    let large = "lost/large.zip";
    let proxy = LossyProxy::start(
        &server.endpoint,
        vec![
            format!("PUT /{BUCKET}/{small}"),
            format!("POST /{BUCKET}/{large}?uploadId"),
        ],
    );
    let settings = S3Settings {
        endpoint: Some(proxy.endpoint.clone()),
        region: Some("us-east-1".into()),
        ..S3Settings::default()
    }
    .with_keys(ACCESS_KEY, SECRET_KEY);
    let lossy = Bucket::S3(S3Bucket::new(BUCKET, &settings).expect("bucket"));
    let direct = server.bucket(BUCKET, SECRET_KEY);
    for (key, size, lost) in [(small, 1usize << 10, 1), (large, 20 << 20, 2)] {
        let bytes: Vec<u8> = (0..size).map(|at| (at % 251) as u8).collect();
        let mut upload = lossy.upload(key).expect("upload");
        upload.write_all(&bytes).expect("write");
        upload
            .commit()
            .expect("the commit whose reply was lost succeeds");
        assert_eq!(proxy.dropped(), lost, "{key}: no reply was lost");
        let mut stored = Vec::new();
        direct
            .open(key)
            .expect("open")
            .read_to_end(&mut stored)
            .expect("read");
        assert!(stored == bytes, "{key}: stored bytes differ");
        let mut other = lossy.upload(key).expect("upload");
        other.write_all(&bytes).expect("write");
        assert!(
            matches!(other.commit(), Err(Error::Conflict { .. })),
            "{key}: a second upload is a conflict"
        );
    }
}
