//! The object-store contract on every backend: the in-memory bucket, and
//! real servers started on loopback (SeaweedFS, the main test server, and
//! moto's server mode, a second implementation). The probe refuses
//! rclone's `serve s3`, which ignores conditional writes.

mod support;

use blocksnap::storage::object::{MemoryObjectStore, ObjectStore};
use blocksnap::testing::{check_conditional_races, check_object_store_contract, test_client};
use blocksnap::Error;
use std::sync::{Arc, OnceLock};
use support::s3_servers::S3Server;

/// One SeaweedFS for the whole test binary (its start takes a second); each
/// test works under its own prefix.
fn seaweedfs() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(S3Server::seaweedfs)
}

#[test]
fn the_memory_bucket_keeps_the_contract() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    check_object_store_contract(store.clone(), "contract/");
    check_conditional_races(store, "", 16);
}

#[test]
fn seaweedfs_keeps_the_contract() {
    let store: Arc<dyn ObjectStore> = Arc::new(seaweedfs().store("contract"));
    check_object_store_contract(store, "");
}

#[test]
fn seaweedfs_conditional_writes_are_atomic_under_races() {
    let store: Arc<dyn ObjectStore> = Arc::new(seaweedfs().store("races"));
    for round in 0..3 {
        check_conditional_races(store.clone(), &format!("round-{round}/"), 16);
    }
}

#[test]
fn moto_keeps_the_contract_and_passes_the_probe() {
    let moto = S3Server::moto();
    let store: Arc<dyn ObjectStore> = Arc::new(moto.store("contract"));
    check_object_store_contract(store.clone(), "");
    test_client(store)
        .probe("probe/")
        .expect("moto enforces conditional writes");
}

#[test]
fn the_probe_passes_seaweedfs_and_leaves_nothing() {
    let store: Arc<dyn ObjectStore> = Arc::new(seaweedfs().store("probe-ok"));
    let client = test_client(store.clone());
    client
        .probe("probe/")
        .expect("SeaweedFS enforces conditional writes");
    assert!(client.list("").expect("list").is_empty());
}

#[test]
fn the_probe_refuses_a_server_that_ignores_conditional_writes() {
    let rclone = S3Server::rclone();
    let client = test_client(Arc::new(rclone.store("probe")));
    let error = client
        .probe("probe/")
        .expect_err("rclone ignores If-None-Match");
    assert!(matches!(error, Error::Unsupported { .. }), "{error}");
    assert!(error.to_string().contains("conditional writes"), "{error}");
    assert!(
        client.list("").expect("list").is_empty(),
        "the probe cleans up"
    );
}
