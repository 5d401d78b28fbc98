//! `verify`: a clean store verifies clean; corruption injected into chunk
//! records, map nodes and the catalog is reported exactly, with the
//! snapshots and blocks it affects; a later put of identical data heals a
//! damaged block.

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::codec;
use blocksnap::engine::{AffectedBlocks, VerifyOptions};
use blocksnap::format::pack::{decode_record_header, RecordKind, RECORD_HEADER_SIZE};
use blocksnap::ids::{ChunkId, PackLocation};
use blocksnap::storage::{MemoryStorage, Storage};
use blocksnap::testing::{block, expect_ebs, holds_exactly, pack_records, write_lineage, Lineage};
use blocksnap::{Engine, EngineConfig};
use std::collections::BTreeSet;
use std::sync::Arc;

fn config() -> EngineConfig {
    EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 128 << 10,
            ..ChunkStoreConfig::default()
        },
        // No cached nodes: every read goes to the packs.
        node_cache_nodes: 0,
        ..EngineConfig::default()
    }
}

/// Two related snapshots and an unrelated one; seed 4 is stored once and
/// used by all three (at different indexes).
fn setup() -> (MemoryStorage, Engine, Lineage, Lineage) {
    let storage = MemoryStorage::new();
    let engine = Engine::open_with(Arc::new(storage.clone()), config()).expect("open");
    let template = StartSnapshotRequest {
        volume_size: 1,
        ..Default::default()
    };
    let lineage = write_lineage(
        &engine,
        &template,
        &[&[(0, 1), (1, 4), (70, 2), (71, 3)], &[(2, 5), (70, 6)]],
    );
    let unrelated = write_lineage(&engine, &template, &[&[(500, 4), (501, 7)]]);
    (storage, engine, lineage, unrelated)
}

/// Every record in the store's packs: (pack file, offset, kind, chunk id).
fn records(storage: &MemoryStorage) -> Vec<(String, usize, RecordKind, ChunkId)> {
    pack_records(storage)
        .into_iter()
        .map(|(path, offset, header)| (path, offset, header.kind, header.chunk_id))
        .collect()
}

fn location_of(path: &str, offset: usize) -> PackLocation {
    let stem = path.trim_start_matches("packs/").trim_end_matches(".pack");
    PackLocation {
        pack: u32::from_str_radix(stem, 16).expect("pack name"),
        offset: offset as u32,
    }
}

fn affected(snapshot: &str, first: u32, last: u32) -> AffectedBlocks {
    AffectedBlocks {
        snapshot_id: snapshot.to_string(),
        first_block: first,
        last_block: last,
    }
}

#[test]
fn a_clean_store_verifies_clean_and_samples_deterministically() {
    let (_storage, engine, _, _) = setup();
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
    let stats = engine.store_stats().expect("stats");
    assert_eq!(report.records_checked, stats.stored_chunks);
    assert_eq!(report.bytes_checked, stats.stored_bytes);
    assert_eq!(report.catalog_records, 6, "three starts, three completions");
    let half = VerifyOptions {
        sample_fraction: 0.5,
        threads: 1,
        ..VerifyOptions::default()
    };
    let first = engine.verify(half).expect("verify sample");
    let second = engine.verify(half).expect("verify sample");
    assert_eq!(first.records_checked, second.records_checked);
    assert!(first.records_checked < report.records_checked);
    // Sampled runs that each start where the last ended (as serve's
    // scheduled verify does) check every record once in 1 / fraction runs.
    let mut start = 0.0;
    let mut checked = 0;
    for _ in 0..4 {
        let quarter = engine
            .verify(VerifyOptions {
                sample_fraction: 0.25,
                sample_start: start,
                threads: 2,
                max_bytes_per_sec: Some(1 << 40),
            })
            .expect("verify a quarter");
        assert!(quarter.is_clean(), "{quarter:?}");
        assert!(quarter.records_checked < report.records_checked);
        checked += quarter.records_checked;
        start = quarter.next_sample_start;
    }
    assert_eq!(checked, report.records_checked);
    assert_eq!(start, 0.0, "four quarters come round to the start");
}

#[test]
fn a_damaged_shared_block_is_reported_with_every_block_it_breaks_and_healed_by_a_put() {
    let (storage, engine, lineage, unrelated) = setup();
    let shared = codec::chunk_id(&block(4));
    let (path, offset, _, _) = records(&storage)
        .into_iter()
        .find(|(_, _, kind, id)| *kind == RecordKind::Block && *id == shared)
        .expect("the shared block's record");
    // A flipped payload byte: the header still names the chunk.
    storage
        .corrupt(&path, offset + RECORD_HEADER_SIZE + 100, 0x40)
        .expect("corrupt");
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert_eq!(report.catalog_error, None);
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    let damaged = &report.damaged[0];
    assert_eq!(damaged.chunk, Some(shared));
    assert_eq!(damaged.location, Some(location_of(&path, offset)));
    let mut expected = vec![
        affected(&lineage[0].0, 1, 1),
        affected(&lineage[1].0, 1, 1),
        affected(&unrelated[0].0, 500, 500),
    ];
    expected.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
    assert_eq!(damaged.affected, expected);
    // Reading it is an error, never wrong data.
    assert!(holds_exactly(&engine, &lineage[1].0, &lineage[1].1).is_err());

    // Any later put of the same data stores a fresh copy.
    let healer = write_lineage(
        &engine,
        &StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        },
        &[&[(9, 4)]],
    );
    for (id, content) in lineage.iter().chain(&unrelated).chain(&healer) {
        assert!(holds_exactly(&engine, id, content).expect("read after healing"));
    }
    let after = engine.verify(VerifyOptions::default()).expect("verify");
    assert!(after.is_clean(), "{after:?}");
    // Healing survives a restart: the fresh copy is the one indexed.
    drop(engine);
    let engine = Engine::open_with(Arc::new(storage.clone()), config()).expect("reopen");
    assert!(holds_exactly(&engine, &lineage[1].0, &lineage[1].1).expect("read after reopen"));
    assert!(engine
        .verify(VerifyOptions::default())
        .expect("verify")
        .is_clean());
}

#[test]
fn a_damaged_map_node_is_reported_with_the_range_it_covers() {
    let (storage, engine, lineage, _) = setup();
    // The leaf of the first snapshot covering blocks 64..=127 (indexes 70
    // and 71): the leaf holding exactly the chunks of seeds 2 and 3.
    let leaf_entries = [codec::chunk_id(&block(2)), codec::chunk_id(&block(3))];
    let (path, offset, _, leaf) = records(&storage)
        .into_iter()
        .find(|(path, offset, kind, _)| {
            *kind == RecordKind::MapNode && {
                let bytes = storage.read_all(path).expect("read");
                let record = &bytes[*offset..];
                let header = decode_record_header(&record[..RECORD_HEADER_SIZE]).expect("header");
                let payload = &record[RECORD_HEADER_SIZE..header.record_len()];
                let raw = codec::decode_payload(header.codec, payload, header.raw_len as usize)
                    .expect("decode");
                let node = blocksnap::format::node::Node::decode(&raw).expect("node");
                node.level == 0
                    && node.slots.iter().flatten().copied().collect::<Vec<_>>() == leaf_entries
            }
        })
        .expect("the leaf node's record");
    storage.corrupt(&path, offset + 90, 0x01).expect("corrupt");
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(report.damaged[0].chunk, Some(leaf));
    // Only the first snapshot uses that leaf (the second rewrote index 70).
    assert_eq!(
        report.damaged[0].affected,
        vec![affected(&lineage[0].0, 64, 127)]
    );
    expect_ebs(
        Ebs::new(&engine).list_snapshot_blocks(ListSnapshotBlocksRequest {
            snapshot_id: lineage[0].0.clone(),
            ..Default::default()
        }),
        "InternalServerException",
        None,
    );
    assert!(holds_exactly(&engine, &lineage[1].0, &lineage[1].1).expect("the child is intact"));
}

#[test]
fn several_injected_corruptions_are_reported_exactly() {
    let (storage, engine, _, _) = setup();
    let all = records(&storage);
    // Every third record: payload flips, and a header flip (unreadable id).
    let victims: Vec<&(String, usize, RecordKind, ChunkId)> = all.iter().step_by(3).collect();
    for (n, (path, offset, _, _)) in victims.iter().enumerate() {
        let position = if n == 0 {
            offset + 20
        } else {
            offset + RECORD_HEADER_SIZE + 1
        };
        storage.corrupt(path, position, 0x08).expect("corrupt");
    }
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    let reported: BTreeSet<(u32, u32)> = report
        .damaged
        .iter()
        .map(|damaged| {
            let location = damaged.location.expect("a stored record");
            (location.pack, location.offset)
        })
        .collect();
    let injected: BTreeSet<(u32, u32)> = victims
        .iter()
        .map(|(path, offset, _, _)| {
            let location = location_of(path, *offset);
            (location.pack, location.offset)
        })
        .collect();
    assert_eq!(reported, injected);
    // Damage is attributed to snapshots. (A chunk reachable only through
    // a damaged map node is covered by that node's range instead.)
    let broken: BTreeSet<&str> = report
        .damaged
        .iter()
        .flat_map(|damaged| damaged.affected.iter().map(|a| a.snapshot_id.as_str()))
        .collect();
    assert!(!broken.is_empty(), "{report:#?}");
    assert_eq!(report.damaged.len(), victims.len());
}

#[test]
fn a_damaged_catalog_record_is_reported() {
    let (storage, engine, _, _) = setup();
    // One copy damaged: the mirror holds the record, nothing is lost, and
    // the damage is still reported.
    storage
        .corrupt("catalog/00000000.log", 60, 0x02)
        .expect("corrupt");
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert!(!report.is_clean());
    assert!(report.catalog_error.is_none(), "{report:?}");
    assert_eq!(report.damaged_files.len(), 1, "{report:?}");
    let found = &report.damaged_files[0];
    assert_eq!(found.file, "catalog/00000000.log");
    assert!(!found.data_lost, "{found}");
    assert!(report.damaged.is_empty());
    // The same record damaged in both copies: lost, and the log no longer
    // replays to what the engine holds.
    storage
        .corrupt("catalog/00000000.mirror", 60, 0x02)
        .expect("corrupt");
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert!(report.catalog_error.is_some(), "{report:?}");
    assert!(
        report.damaged_files.iter().any(|found| found.data_lost),
        "{report:?}"
    );
    assert!(report.damaged.is_empty());
}
