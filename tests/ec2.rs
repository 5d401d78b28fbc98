//! EC2's snapshot operations at the library level (`api::ec2`): tags
//! changed with CreateTags and DeleteTags are durable (a reopen, a catalog
//! checkpoint), concurrent edits of one snapshot lose nothing, in one
//! process and between two writers of one bucket store, and a copy reads
//! exactly as its source. The wire protocol is tested with boto3 and the
//! AWS CLI (tests/boto3.rs).

use blocksnap::api::ec2::{
    CopySnapshotRequest, CreateTagsRequest, DeleteTagsRequest, DescribeSnapshotsRequest, Ec2,
    Filter,
};
use blocksnap::api::Tag;
use blocksnap::engine::{GcOptions, NewSnapshot};
use blocksnap::ids::{BlockIndex, SnapshotId};
use blocksnap::storage::object::{MemoryObjectStore, ObjectStore};
use blocksnap::storage::{BucketOptions, BucketStorage};
use blocksnap::testing::{block, test_client};
use blocksnap::{Engine, EngineConfig};
use std::sync::Arc;

fn snapshot(engine: &Engine, blocks: &[(u32, u64)]) -> SnapshotId {
    let writer = engine.writer(NewSnapshot::new(1)).expect("start");
    for (index, seed) in blocks {
        writer
            .put_block(BlockIndex(*index), &block(*seed))
            .expect("put");
    }
    let id = writer.snapshot_id();
    writer.complete().expect("complete");
    id
}

fn tag(key: &str, value: &str) -> Tag {
    Tag {
        key: key.into(),
        value: value.into(),
    }
}

fn tags_of(engine: &Engine, id: SnapshotId) -> Vec<(String, String)> {
    engine.snapshot(id).expect("snapshot").started.tags
}

fn set(engine: &Engine, id: SnapshotId, tags: Vec<Tag>) {
    Ec2::new(engine)
        .create_tags(&CreateTagsRequest {
            resource_ids: vec![id.to_string()],
            tags,
        })
        .expect("create tags");
}

#[test]
fn tags_survive_a_reopen_and_a_catalog_checkpoint() {
    let dir = tempfile::tempdir().expect("dir");
    let (id, other) = {
        let engine = Engine::open(dir.path()).expect("open");
        let id = snapshot(&engine, &[(0, 1)]);
        let other = snapshot(&engine, &[(1, 2)]);
        // Enough edits that the collector rewrites the catalog.
        for round in 0..300 {
            set(&engine, id, vec![tag("round", &round.to_string())]);
        }
        set(&engine, id, vec![tag("Name", "web")]);
        Ec2::new(&engine)
            .delete_tags(&DeleteTagsRequest {
                resource_ids: vec![other.to_string()],
                tags: Vec::new(),
            })
            .expect("delete tags");
        let report = engine.collect_garbage(GcOptions::default()).expect("gc");
        assert!(report.catalog_bytes_freed > 0, "{report:?}");
        (id, other)
    };
    let engine = Engine::open(dir.path()).expect("reopen");
    assert_eq!(
        tags_of(&engine, id),
        [
            ("round".into(), "299".into()),
            ("Name".into(), "web".into())
        ]
    );
    assert!(tags_of(&engine, other).is_empty());
    let described = Ec2::new(&engine)
        .describe_snapshots(&DescribeSnapshotsRequest {
            filters: vec![Filter {
                name: "tag:Name".into(),
                values: vec!["w?b".into()],
            }],
            ..Default::default()
        })
        .expect("describe");
    let ids: Vec<String> = described
        .snapshots
        .iter()
        .map(|snapshot| snapshot.snapshot_id.clone())
        .collect();
    assert_eq!(ids, [id.to_string()]);
}

#[test]
fn concurrent_tag_edits_of_one_snapshot_lose_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(dir.path()).expect("open");
    let id = snapshot(&engine, &[(0, 1)]);
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let engine = &engine;
            scope.spawn(move || {
                for n in 0..10 {
                    set(engine, id, vec![tag(&format!("t{thread}-{n}"), "x")]);
                }
            });
        }
    });
    let mut keys: Vec<String> = tags_of(&engine, id).into_iter().map(|(k, _)| k).collect();
    keys.sort();
    let mut expected: Vec<String> = (0..4)
        .flat_map(|thread| (0..10).map(move |n| format!("t{thread}-{n}")))
        .collect();
    expected.sort();
    assert_eq!(keys, expected);
}

#[test]
fn two_writers_of_a_bucket_store_tag_one_snapshot_at_once() {
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let open = |dir: &std::path::Path| {
        let storage =
            BucketStorage::open(test_client(bucket.clone()), dir, BucketOptions::default())
                .expect("bucket");
        Engine::open_with(Arc::new(storage), EngineConfig::default()).expect("engine")
    };
    let [first_dir, second_dir] = [(); 2].map(|()| tempfile::tempdir().expect("dir"));
    let first = open(first_dir.path());
    let second = open(second_dir.path());
    let id = snapshot(&first, &[(0, 5)]);
    std::thread::scope(|scope| {
        for (name, engine) in [("a", &first), ("b", &second)] {
            scope.spawn(move || {
                for n in 0..10 {
                    set(engine, id, vec![tag(&format!("{name}{n}"), "x")]);
                }
            });
        }
    });
    drop((first, second));
    let reader = open(tempfile::tempdir().expect("dir").path());
    assert_eq!(tags_of(&reader, id).len(), 20, "{:?}", tags_of(&reader, id));
}

#[test]
fn a_copy_reads_as_its_source_and_outlives_it() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(dir.path()).expect("open");
    let source = snapshot(&engine, &[(0, 1), (9, 2), (100, 3)]);
    let before = engine.store_stats().expect("stats");
    let copy = Ec2::new(&engine)
        .copy_snapshot(&CopySnapshotRequest {
            source_snapshot_id: source.to_string(),
            source_region: "us-east-1".into(),
            tags: vec![tag("copy", "yes")],
            ..Default::default()
        })
        .expect("copy");
    let copy = SnapshotId::parse(&copy).expect("id");
    let after = engine.store_stats().expect("stats");
    assert_eq!(
        after.stored_bytes, before.stored_bytes,
        "no block stored again"
    );
    engine.delete(source).expect("delete the source");
    engine
        .collect_garbage(GcOptions {
            live_threshold: 1.0,
            ..Default::default()
        })
        .expect("gc");
    let reader = engine.reader(copy).expect("reader");
    for (index, seed) in [(0, 1), (9, 2), (100, 3)] {
        let (bytes, _) = reader
            .block(BlockIndex(index))
            .expect("read")
            .expect("written");
        assert_eq!(bytes.to_vec(), block(seed), "block {index}");
    }
    assert!(reader.block(BlockIndex(1)).expect("read").is_none());
    assert_eq!(tags_of(&engine, copy), [("copy".into(), "yes".into())]);
}
