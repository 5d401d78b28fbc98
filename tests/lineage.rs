//! Parents and children: inheritance, dedup inside a snapshot, between a
//! parent and its child and across unrelated snapshots, and bytes on disk
//! growing only by the changed data.

use blocksnap::api::*;
use blocksnap::testing::{block, complete_request, put_request};
use blocksnap::Engine;
use std::path::Path;

/// Seeds whose blocks are random (incompressible): seed % 3 == 2.
fn random_seed(n: u64) -> u64 {
    3 * n + 2
}

fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("packs"))
        .expect("packs")
        .map(|entry| entry.expect("entry").metadata().expect("metadata").len())
        .sum()
}

fn start(engine: &Engine, parent: Option<&str>) -> String {
    let request = StartSnapshotRequest {
        volume_size: 1,
        parent_snapshot_id: parent.map(str::to_string),
        ..Default::default()
    };
    Ebs::new(engine)
        .start_snapshot(request)
        .expect("start")
        .snapshot_id
}

fn listed_indexes(engine: &Engine, id: &str) -> Vec<i32> {
    let request = ListSnapshotBlocksRequest {
        snapshot_id: id.into(),
        max_results: Some(10_000),
        ..Default::default()
    };
    Ebs::new(engine)
        .list_snapshot_blocks(request)
        .expect("list")
        .blocks
        .iter()
        .map(|b| b.block_index)
        .collect()
}

#[test]
fn a_child_costs_only_what_it_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path()).expect("open");
    let parent = start(&engine, None);
    for index in 0..64u64 {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(
                &parent,
                (index * 31) as i32,
                block(random_seed(index)),
            ))
            .expect("put");
    }
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&parent, 64))
        .expect("complete parent");
    let after_parent = disk_bytes(dir.path());
    assert!(after_parent >= 64 * 524_288, "random blocks are stored raw");

    let child = start(&engine, Some(&parent));
    // 8 changed blocks, 16 rewritten with identical content, 2 new zero blocks.
    for index in 0..8u64 {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(
                &child,
                (index * 31) as i32,
                block(random_seed(1000 + index)),
            ))
            .expect("changed");
    }
    for index in 8..24u64 {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(
                &child,
                (index * 31) as i32,
                block(random_seed(index)),
            ))
            .expect("same");
    }
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&child, 2000, block(0)))
        .expect("zero");
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&child, 2001, block(0)))
        .expect("zero");
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&child, 26))
        .expect("complete child");
    let growth = disk_bytes(dir.path()) - after_parent;
    let changed_data = 8 * (524_288 + 80);
    assert!(growth >= changed_data, "grew {growth}");
    assert!(
        growth <= changed_data + 64 * 1024,
        "grew {growth}, more than the changed data plus map nodes"
    );

    // The child lists its inherited blocks too.
    let mut expected: Vec<i32> = (0..64).map(|i| i * 31).collect();
    expected.extend([2000, 2001]);
    expected.sort();
    assert_eq!(listed_indexes(&engine, &child), expected);

    // The diff is exactly the changed indexes and the new ones.
    let diff = Ebs::new(&engine)
        .list_changed_blocks(ListChangedBlocksRequest {
            first_snapshot_id: Some(parent.clone()),
            second_snapshot_id: child.clone(),
            ..Default::default()
        })
        .expect("diff");
    let mut changed: Vec<i32> = (0..8).map(|i| i * 31).collect();
    changed.extend([2000, 2001]);
    assert_eq!(
        diff.changed_blocks
            .iter()
            .map(|c| c.block_index)
            .collect::<Vec<_>>(),
        changed
    );
}

#[test]
fn identical_data_is_stored_once_across_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path()).expect("open");
    let first = start(&engine, None);
    // The same block at 40 indexes of one snapshot.
    for index in 0..40 {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&first, index * 3, block(random_seed(7))))
            .expect("put");
    }
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&first, 40))
        .expect("complete");
    let bytes_after_first = disk_bytes(dir.path());
    assert!(
        bytes_after_first < 2 * 524_288,
        "one copy of the block plus map nodes, got {bytes_after_first}"
    );

    // An unrelated snapshot with the same content: no new chunk, no new node.
    let chunks_before = engine.chunk_stats();
    let second = start(&engine, None);
    for index in 0..40 {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&second, index * 3, block(random_seed(7))))
            .expect("put");
    }
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&second, 40))
        .expect("complete");
    assert_eq!(
        engine.chunk_stats(),
        chunks_before,
        "the second snapshot stored nothing new"
    );
    assert_eq!(disk_bytes(dir.path()), bytes_after_first);
}

#[test]
fn a_reopened_store_keeps_lineage_and_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (parent, child) = {
        let engine = Engine::open(dir.path()).expect("open");
        let parent = start(&engine, None);
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&parent, 1, block(1)))
            .expect("put");
        Ebs::new(&engine)
            .complete_snapshot(complete_request(&parent, 1))
            .expect("complete");
        let child = start(&engine, Some(&parent));
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&child, 2, block(2)))
            .expect("put");
        Ebs::new(&engine)
            .complete_snapshot(complete_request(&child, 1))
            .expect("complete");
        (parent, child)
    };
    let engine = Engine::open(dir.path()).expect("reopen");
    assert_eq!(listed_indexes(&engine, &child), vec![1, 2]);
    let diff = Ebs::new(&engine)
        .list_changed_blocks(ListChangedBlocksRequest {
            first_snapshot_id: Some(parent),
            second_snapshot_id: child,
            ..Default::default()
        })
        .expect("diff after reopen");
    assert_eq!(diff.changed_blocks.len(), 1);
}
