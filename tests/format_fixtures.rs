//! Stores written by earlier format versions must keep opening. Each format
//! version has a fixture store under `tests/fixtures/`, with a manifest of
//! its snapshots and their content (index=seed of `testing::block`).
//!
//! Regenerate a fixture only when adding a new format version:
//! `cargo test --test format_fixtures -- --ignored write_v1_fixture`.

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::engine::VerifyOptions;
use blocksnap::testing::{
    block, copy_store_dir, get_listed, holds_exactly, list_all_blocks, write_lineage,
};
use blocksnap::{Engine, EngineConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}"))
}

/// When fixtures with pending snapshots were written, and are read: their
/// timeouts have not passed then.
const FIXTURE_MILLIS: u64 = 1_796_169_600_000;

fn config() -> EngineConfig {
    // Small packs so the fixture holds sealed packs with indexes and an open pack.
    EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 64 << 10,
            ..ChunkStoreConfig::default()
        },
        clock: std::sync::Arc::new(blocksnap::clock::ManualClock::new(FIXTURE_MILLIS)),
        ..EngineConfig::default()
    }
}

/// One snapshot of a fixture's manifest.
struct Listed {
    owner: String,
    id: String,
    /// Completed (or else pending, with these puts).
    completed: bool,
    content: BTreeMap<u32, u64>,
}

/// Parses `[owner=ID] [pending] snap-... index=seed index=seed ...` lines.
fn read_manifest(dir: &Path) -> Vec<Listed> {
    std::fs::read_to_string(dir.join("MANIFEST"))
        .expect("manifest")
        .lines()
        .map(|line| {
            let mut owner = EngineConfig::default().owner_id;
            let mut completed = true;
            let mut words = line.split_whitespace().peekable();
            while let Some(word) = words.next_if(|word| !word.starts_with("snap-")) {
                match word.strip_prefix("owner=") {
                    Some(id) => owner = id.to_string(),
                    None => completed = word != "pending",
                }
            }
            let id = words.next().expect("snapshot id").to_string();
            let content = words
                .map(|pair| {
                    let (index, seed) = pair.split_once('=').expect("index=seed");
                    (index.parse().expect("index"), seed.parse().expect("seed"))
                })
                .collect();
            Listed {
                owner,
                id,
                completed,
                content,
            }
        })
        .collect()
}

/// Opens a copy of fixture `name`, read-only and then for writing, and
/// reads every snapshot back: completed ones whole, pending ones completed
/// with their puts; `verify` is clean before and after.
fn check_fixture(name: &str) -> Vec<Listed> {
    let fixture = fixture_dir(name);
    let manifest = read_manifest(&fixture);
    assert!(manifest.len() >= 2);
    let copy = tempfile::tempdir().expect("tempdir");
    copy_store_dir(&fixture, copy.path());
    let before = snapshot_of(copy.path());
    let read_only = Engine::open_read_only_with(copy.path(), config()).expect("open read-only");
    for listed in manifest.iter().filter(|listed| listed.completed) {
        assert!(holds_exactly(
            &read_only.as_owner(&listed.owner),
            &listed.id,
            &listed.content
        )
        .expect("read"));
    }
    let report = read_only.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{name}: {report:?}");
    drop(read_only);
    assert_eq!(snapshot_of(copy.path()), before, "a read-only open wrote");
    let engine = Engine::open_with(
        Engine::local_storage(copy.path()).expect("storage"),
        config(),
    )
    .expect("open");
    for listed in &manifest {
        let owned = engine.as_owner(&listed.owner);
        if !listed.completed {
            Ebs::new(&owned)
                .complete_snapshot(blocksnap::testing::complete_request(
                    &listed.id,
                    listed.content.len() as i32,
                ))
                .expect("the pending snapshot kept its puts");
        }
        assert!(holds_exactly(&owned, &listed.id, &listed.content).expect("read"));
    }
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{name}: {report:?}");
    manifest
}

/// Every file of a directory tree and its bytes.
fn snapshot_of(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        if entry.file_type().expect("type").is_dir() {
            files.extend(snapshot_of(&entry.path()));
        } else if entry.file_name() != "LOCK" {
            files.insert(entry.path(), std::fs::read(entry.path()).expect("read"));
        }
    }
    files
}

#[test]
fn version_1_store_still_opens_and_reads_back() {
    let manifest = check_fixture("store-v1");
    let fixture = fixture_dir("store-v1");
    let copy = tempfile::tempdir().expect("tempdir");
    copy_store_dir(&fixture, copy.path());
    let engine = Engine::open_with(
        Engine::local_storage(copy.path()).expect("storage"),
        config(),
    )
    .expect("open v1 store");
    for listed in &manifest {
        let (id, content) = (&listed.id, &listed.content);
        let entries = list_all_blocks(&engine, id).expect("list");
        assert_eq!(
            entries
                .iter()
                .map(|b| b.block_index as u32)
                .collect::<Vec<_>>(),
            content.keys().copied().collect::<Vec<_>>()
        );
        for entry in entries {
            let data = get_listed(&engine, id, &entry).expect("get");
            assert!(
                data == block(content[&(entry.block_index as u32)]),
                "{id} block {}",
                entry.block_index
            );
        }
    }
    let (first, second) = (&manifest[0].id, &manifest[1].id);
    let diff = Ebs::new(&engine)
        .list_changed_blocks(ListChangedBlocksRequest {
            first_snapshot_id: Some(first.clone()),
            second_snapshot_id: second.clone(),
            ..Default::default()
        })
        .expect("diff across the v1 lineage");
    assert!(!diff.changed_blocks.is_empty());
}

/// A store of the damage-containment additions (catalog and small files
/// kept twice, journals made at start with paired entries, an owner's
/// dedup domain) keeps opening.
#[test]
fn version_1_store_with_copies_and_dedup_domains_still_opens() {
    let manifest = check_fixture("store-v1-copies");
    assert!(manifest.iter().any(|listed| !listed.completed));
    assert!(manifest
        .iter()
        .any(|listed| listed.owner != EngineConfig::default().owner_id));
}

#[test]
#[ignore = "writes tests/fixtures/store-v1-copies; run only when creating a format's fixture"]
fn write_v1_copies_fixture() {
    write_fixture("store-v1-copies", |engine| {
        let mut manifest = String::new();
        let template = StartSnapshotRequest {
            volume_size: 1,
            description: Some("format v1 fixture with copies".into()),
            ..Default::default()
        };
        let line = |owner: &str, state: &str, id: &str, content: &BTreeMap<u32, u64>| {
            let pairs: Vec<String> = content
                .iter()
                .map(|(index, seed)| format!("{index}={seed}"))
                .collect();
            format!("owner={owner} {state} {id} {}\n", pairs.join(" "))
        };
        let chain: [&[(u32, u64)]; 2] = [&[(0, 1), (1, 3), (3, 0)], &[(1, 4), (9, 6)]];
        let owner = EngineConfig::default().owner_id;
        for (id, content) in write_lineage(engine, &template, &chain) {
            manifest.push_str(&line(&owner, "completed", &id, &content));
        }
        let other = engine.as_owner("111111111111");
        for (id, content) in write_lineage(&other, &template, &[&[(0, 1), (2, 7)]]) {
            manifest.push_str(&line("111111111111", "completed", &id, &content));
        }
        let pending = Ebs::new(engine)
            .start_snapshot(template)
            .expect("start")
            .snapshot_id;
        let puts = BTreeMap::from([(5, 9), (6, 10)]);
        for (index, seed) in &puts {
            Ebs::new(engine)
                .put_snapshot_block(blocksnap::testing::put_request(
                    &pending,
                    *index as i32,
                    block(*seed),
                ))
                .expect("put");
        }
        manifest.push_str(&line(&owner, "pending", &pending, &puts));
        manifest
    });
}

/// Writes the fixture `name` afresh: `build` fills a new store and returns
/// its MANIFEST; the lock file is left out.
fn write_fixture(name: &str, build: impl FnOnce(&Engine) -> String) {
    let dir = fixture_dir(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove old fixture");
    }
    let manifest = {
        let engine = Engine::open_with(Engine::local_storage(&dir).expect("storage"), config())
            .expect("open");
        build(&engine)
    };
    std::fs::remove_file(dir.join("LOCK")).expect("remove lock file");
    std::fs::write(dir.join("MANIFEST"), manifest).expect("manifest");
}

#[test]
#[ignore = "writes tests/fixtures/store-v1; run only when creating a format version's fixture"]
fn write_v1_fixture() {
    write_fixture("store-v1", |engine| {
        let mut manifest = String::new();
        let template = StartSnapshotRequest {
            volume_size: 1,
            description: Some("format v1 fixture".into()),
            tags: vec![Tag {
                key: "fixture".into(),
                value: "v1".into(),
            }],
            ..Default::default()
        };
        // Compressible seeds (text and structured blocks) keep the fixture small.
        let chain: [&[(u32, u64)]; 2] = [
            &[(0, 1), (1, 3), (5, 0), (100, 4), (2047, 6)],
            &[(1, 7), (6, 9), (100, 4)],
        ];
        for (id, content) in write_lineage(engine, &template, &chain) {
            let pairs: Vec<String> = content
                .iter()
                .map(|(index, seed)| format!("{index}={seed}"))
                .collect();
            manifest.push_str(&format!("{id} {}\n", pairs.join(" ")));
        }
        manifest
    });
}
