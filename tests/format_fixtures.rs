//! Stores written by earlier format versions must keep opening. Each format
//! version has a fixture store under `tests/fixtures/`, with a manifest of
//! its snapshots and their content (index=seed of `testing::block`).
//!
//! Regenerate a fixture only when adding a new format version:
//! `cargo test --test format_fixtures -- --ignored write_v1_fixture`.

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::testing::{block, copy_store_dir, get_listed, list_all_blocks, write_lineage};
use blocksnap::{Engine, EngineConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/store-v{version}"))
}

fn config() -> EngineConfig {
    // Small packs so the fixture holds sealed packs with indexes and an open pack.
    EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 64 << 10,
            ..ChunkStoreConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// Parses `snap-... index=seed index=seed ...` lines.
fn read_manifest(dir: &Path) -> Vec<(String, BTreeMap<u32, u64>)> {
    std::fs::read_to_string(dir.join("MANIFEST"))
        .expect("manifest")
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next().expect("snapshot id").to_string();
            let content = words
                .map(|pair| {
                    let (index, seed) = pair.split_once('=').expect("index=seed");
                    (index.parse().expect("index"), seed.parse().expect("seed"))
                })
                .collect();
            (id, content)
        })
        .collect()
}

#[test]
fn version_1_store_still_opens_and_reads_back() {
    let fixture = fixture_dir(1);
    let manifest = read_manifest(&fixture);
    assert!(manifest.len() >= 2);
    // Work on a copy: opening a store may write (a new catalog segment, say).
    let copy = tempfile::tempdir().expect("tempdir");
    copy_store_dir(&fixture, copy.path());
    let engine = Engine::open_with(
        Engine::local_storage(copy.path()).expect("storage"),
        config(),
    )
    .expect("open v1 store");
    for (id, content) in &manifest {
        let listed = list_all_blocks(&engine, id).expect("list");
        assert_eq!(
            listed
                .iter()
                .map(|b| b.block_index as u32)
                .collect::<Vec<_>>(),
            content.keys().copied().collect::<Vec<_>>()
        );
        for entry in listed {
            let data = get_listed(&engine, id, &entry).expect("get");
            assert!(
                data == block(content[&(entry.block_index as u32)]),
                "{id} block {}",
                entry.block_index
            );
        }
    }
    let (first, _) = &manifest[0];
    let (second, _) = &manifest[1];
    let diff = engine
        .list_changed_blocks(ListChangedBlocksRequest {
            first_snapshot_id: Some(first.clone()),
            second_snapshot_id: second.clone(),
            ..Default::default()
        })
        .expect("diff across the v1 lineage");
    assert!(!diff.changed_blocks.is_empty());
}

#[test]
#[ignore = "writes tests/fixtures/store-v1; run only when creating a format version's fixture"]
fn write_v1_fixture() {
    let dir = fixture_dir(1);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove old fixture");
    }
    let mut manifest = String::new();
    {
        let engine = Engine::open_with(Engine::local_storage(&dir).expect("storage"), config())
            .expect("open");
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
        for (id, content) in write_lineage(&engine, &template, &chain) {
            let pairs: Vec<String> = content
                .iter()
                .map(|(index, seed)| format!("{index}={seed}"))
                .collect();
            manifest.push_str(&format!("{id} {}\n", pairs.join(" ")));
        }
    }
    std::fs::remove_file(dir.join("LOCK")).expect("remove lock file");
    std::fs::write(dir.join("MANIFEST"), manifest).expect("manifest");
}
