//! The storage contract on every backend, and an engine round trip in both
//! read modes (mmap and pread) on the local backend.

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::storage::{LocalStorage, MemoryStorage};
use blocksnap::testing::{
    block, check_storage_contract, complete_request, get_listed, list_all_blocks, put_request,
};
use blocksnap::{Engine, EngineConfig};

#[test]
fn local_directory_honours_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    check_storage_contract(&LocalStorage::open(dir.path()).expect("open"));
}

#[test]
fn memory_honours_the_contract() {
    check_storage_contract(&MemoryStorage::new());
}

#[test]
fn a_local_store_is_locked_against_a_second_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = LocalStorage::open(dir.path()).expect("first");
    let second = LocalStorage::open(dir.path()).expect_err("second open must fail");
    assert_eq!(second.kind(), std::io::ErrorKind::WouldBlock);
}

fn round_trip(use_mmap: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 1 << 20,
            use_mmap,
            ..ChunkStoreConfig::default()
        },
        ..EngineConfig::default()
    };
    let seeds: Vec<u64> = (1..=12).collect();
    let id = {
        let engine = Engine::open_with(
            Engine::local_storage(dir.path()).expect("storage"),
            config(),
        )
        .expect("open");
        let id = Ebs::new(&engine)
            .start_snapshot(StartSnapshotRequest {
                volume_size: 1,
                ..Default::default()
            })
            .expect("start")
            .snapshot_id;
        for (index, seed) in seeds.iter().enumerate() {
            Ebs::new(&engine)
                .put_snapshot_block(put_request(&id, index as i32 * 100, block(*seed)))
                .expect("put");
        }
        Ebs::new(&engine)
            .complete_snapshot(complete_request(&id, seeds.len() as i32))
            .expect("complete");
        id
    };
    // Reopen: sealed packs now come from their indexes (mmap or pread).
    let engine = Engine::open_with(
        Engine::local_storage(dir.path()).expect("storage"),
        config(),
    )
    .expect("reopen");
    let listed = list_all_blocks(&engine, &id).expect("list");
    assert_eq!(listed.len(), seeds.len());
    for (listed, seed) in listed.iter().zip(&seeds) {
        let data = get_listed(&engine, &id, listed).expect("get");
        assert!(data == block(*seed));
    }
    let packs = std::fs::read_dir(dir.path().join("packs"))
        .expect("packs")
        .count();
    assert!(
        packs >= 4,
        "several sealed packs with indexes, found {packs} files"
    );
}

#[test]
fn engine_round_trip_reading_sealed_packs_through_mmap() {
    round_trip(true);
}

#[test]
fn engine_round_trip_reading_sealed_packs_with_pread_only() {
    round_trip(false);
}

/// The same contract on a bucket store (an in-memory bucket and a local
/// directory): its tracked files (every name used here is one) keep it.
#[test]
fn bucket_storage_keeps_the_contract() {
    use blocksnap::storage::object::MemoryObjectStore;
    use blocksnap::storage::BucketStorage;
    let local = tempfile::tempdir().expect("tempdir");
    let client = blocksnap::testing::test_client(std::sync::Arc::new(MemoryObjectStore::new()));
    let storage = BucketStorage::open(
        client,
        local.path(),
        blocksnap::storage::BucketOptions::default(),
    )
    .expect("bucket store");
    check_storage_contract(&storage);
}
