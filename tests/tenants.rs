//! Owners do not see each other's data: each owner's plain snapshots are
//! keyed in its own dedup domain, so a block another owner already stored
//! is stored again (nothing in the store's behaviour tells one owner what
//! another holds), while an owner still deduplicates against itself; the
//! operator can ask for one shared domain instead.

use blocksnap::api::*;
use blocksnap::engine::VerifyOptions;
use blocksnap::storage::MemoryStorage;
use blocksnap::testing::{block, holds_exactly, write_lineage};
use blocksnap::{Engine, EngineConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

const ALICE: &str = "111111111111";
const BOB: &str = "222222222222";

fn template() -> StartSnapshotRequest {
    StartSnapshotRequest {
        volume_size: 1,
        ..Default::default()
    }
}

/// Stored chunks and bytes after `engine` writes a snapshot of `blocks`.
fn grows(engine: &Engine, blocks: &[(u32, u64)]) -> (u64, u64, String) {
    let before = engine.chunk_stats();
    let written = write_lineage(engine, &template(), &[blocks]);
    let after = engine.chunk_stats();
    (
        after.chunks - before.chunks,
        after.stored_bytes - before.stored_bytes,
        written[0].0.clone(),
    )
}

#[test]
fn owners_never_share_storage_by_default() {
    let storage = MemoryStorage::new();
    let engine =
        Engine::open_with(Arc::new(storage.clone()), EngineConfig::default()).expect("open");
    let (alice, bob) = (engine.as_owner(ALICE), engine.as_owner(BOB));
    let blocks = [(0, 5), (1, 6)];
    let (chunks, bytes, first) = grows(&alice, &blocks);
    assert!(
        chunks >= 2 && bytes > 1 << 19,
        "{chunks} chunks, {bytes} bytes"
    );
    // Bob's copy of the same blocks costs what Alice's did: no chunk,
    // no byte is shared, so Bob learns nothing of what Alice stored.
    let (bob_chunks, bob_bytes, bob_snapshot) = grows(&bob, &blocks);
    assert_eq!((bob_chunks, bob_bytes), (chunks, bytes));
    // The engine's own owner keeps the plain domain: a third copy.
    let (own_chunks, _, _) = grows(&engine, &blocks);
    assert_eq!(own_chunks, chunks);
    // Within one owner, data is stored once: a second snapshot of the
    // same blocks adds no block chunk (one map node, the same root, at most).
    let (again, _, _) = grows(&alice, &blocks);
    assert!(again <= 1, "{again} chunks");
    // A child inherits its parent's domain and dedups against it.
    let before = bob.chunk_stats().chunks;
    let child = Ebs::new(&bob)
        .start_snapshot(StartSnapshotRequest {
            parent_snapshot_id: Some(bob_snapshot.clone()),
            ..template()
        })
        .expect("start child");
    Ebs::new(&bob)
        .put_snapshot_block(blocksnap::testing::put_request(
            &child.snapshot_id,
            1,
            block(5),
        ))
        .expect("put");
    Ebs::new(&bob)
        .complete_snapshot(blocksnap::testing::complete_request(&child.snapshot_id, 1))
        .expect("complete");
    // The block (Bob's own, at another index) and the new path's nodes.
    assert!(bob.chunk_stats().chunks - before <= 5);
    assert!(
        holds_exactly(&bob, &child.snapshot_id, &BTreeMap::from([(0, 5), (1, 5)])).expect("read")
    );
    let changed = Ebs::new(&bob)
        .list_changed_blocks(ListChangedBlocksRequest {
            first_snapshot_id: Some(bob_snapshot.clone()),
            second_snapshot_id: child.snapshot_id.clone(),
            ..Default::default()
        })
        .expect("diff");
    assert_eq!(changed.changed_blocks.len(), 1);
    // Nothing of Bob's is visible to Alice, and the API shows no key name
    // for plain snapshots.
    assert!(Ebs::new(&alice)
        .describe_snapshot(DescribeSnapshotRequest {
            snapshot_id: bob_snapshot.clone(),
        })
        .is_err());
    let described = Ebs::new(&bob)
        .describe_snapshot(DescribeSnapshotRequest {
            snapshot_id: bob_snapshot.clone(),
        })
        .expect("describe");
    assert_eq!(described.snapshot.kms_key_arn, None);
    assert!(engine
        .verify(VerifyOptions::default())
        .expect("verify")
        .is_clean());
    drop((engine, alice, bob));
    // After a restart everything reads back, in each owner's domain.
    let engine = Engine::open_with(Arc::new(storage), EngineConfig::default()).expect("reopen");
    let blocks: BTreeMap<u32, u64> = blocks.into();
    assert!(holds_exactly(&engine.as_owner(ALICE), &first, &blocks).expect("read"));
    assert!(holds_exactly(&engine.as_owner(BOB), &bob_snapshot, &blocks).expect("read"));
    assert!(engine
        .verify(VerifyOptions::default())
        .expect("verify")
        .is_clean());
}

#[test]
fn the_operator_can_share_one_dedup_domain() {
    let engine = Engine::open_with(
        Arc::new(MemoryStorage::new()),
        EngineConfig {
            shared_dedup: true,
            ..EngineConfig::default()
        },
    )
    .expect("open");
    let blocks = [(0, 5), (1, 6)];
    let (chunks, _, _) = grows(&engine.as_owner(ALICE), &blocks);
    assert!(chunks >= 2);
    let (shared, shared_bytes, bob_snapshot) = grows(&engine.as_owner(BOB), &blocks);
    assert_eq!(
        (shared, shared_bytes),
        (0, 0),
        "stored once for both owners"
    );
    assert!(holds_exactly(&engine.as_owner(BOB), &bob_snapshot, &blocks.into()).expect("read"));
}
