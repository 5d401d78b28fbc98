//! The embedded default in action: opens (or creates) a local directory
//! store, backs up a small synthetic volume, backs up a changed copy of it as
//! an incremental child, and shows what the child shares with its parent.
//!
//! `cargo run --release --example quickstart [STORE_DIR]`
//! (default store directory: `./blocksnap-store`).

use base64::Engine as _;
use blocksnap::api::*;
use blocksnap::{Engine, Result};
use sha2::Digest;

const BLOCK: usize = 524_288;

fn put(engine: &Engine, snapshot: &str, index: i32, data: Vec<u8>) -> Result<()> {
    let checksum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&data));
    Ebs::new(engine).put_snapshot_block(PutSnapshotBlockRequest {
        snapshot_id: snapshot.to_string(),
        block_index: index,
        block_data: data.into(),
        data_length: BLOCK as i32,
        checksum,
        checksum_algorithm: "SHA256".into(),
        progress: None,
    })?;
    Ok(())
}

/// A block of readable text, different for every `seed`.
fn text_block(seed: u64) -> Vec<u8> {
    let line = format!("block {seed}: the quick brown fox jumps over the lazy dog\n");
    line.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(BLOCK)
        .collect()
}

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "blocksnap-store".to_string());
    let engine = Engine::open(&dir)?;

    let parent = Ebs::new(&engine).start_snapshot(StartSnapshotRequest {
        volume_size: 1,
        description: Some("quickstart volume".into()),
        ..Default::default()
    })?;
    for index in 0..64 {
        put(
            &engine,
            &parent.snapshot_id,
            index,
            text_block(index as u64),
        )?;
    }
    Ebs::new(&engine).complete_snapshot(CompleteSnapshotRequest {
        snapshot_id: parent.snapshot_id.clone(),
        changed_blocks_count: 64,
        ..Default::default()
    })?;
    let after_parent = engine.chunk_stats();

    let child = Ebs::new(&engine).start_snapshot(StartSnapshotRequest {
        volume_size: 1,
        parent_snapshot_id: Some(parent.snapshot_id.clone()),
        ..Default::default()
    })?;
    for index in [3, 17, 40] {
        put(
            &engine,
            &child.snapshot_id,
            index,
            text_block(1000 + index as u64),
        )?;
    }
    Ebs::new(&engine).complete_snapshot(CompleteSnapshotRequest {
        snapshot_id: child.snapshot_id.clone(),
        changed_blocks_count: 3,
        ..Default::default()
    })?;
    let after_child = engine.chunk_stats();

    let listed = Ebs::new(&engine).list_snapshot_blocks(ListSnapshotBlocksRequest {
        snapshot_id: child.snapshot_id.clone(),
        max_results: Some(1000),
        ..Default::default()
    })?;
    let changed = Ebs::new(&engine).list_changed_blocks(ListChangedBlocksRequest {
        first_snapshot_id: Some(parent.snapshot_id.clone()),
        second_snapshot_id: child.snapshot_id.clone(),
        ..Default::default()
    })?;
    println!("store:            {dir}");
    println!("parent snapshot:  {} (64 blocks)", parent.snapshot_id);
    println!(
        "child snapshot:   {} ({} blocks listed, inherited included)",
        child.snapshot_id,
        listed.blocks.len()
    );
    println!(
        "changed blocks:   {:?}",
        changed
            .changed_blocks
            .iter()
            .map(|c| c.block_index)
            .collect::<Vec<_>>()
    );
    println!(
        "stored bytes:     {} after the parent, +{} for the child",
        after_parent.stored_bytes,
        after_child.stored_bytes - after_parent.stored_bytes
    );
    Ok(())
}
