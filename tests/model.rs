//! Random operation sequences (start, put, complete, reopen, list, diff,
//! get) run against the engine and a deliberately naive in-memory model;
//! every observable result must agree. The same runs on a bucket store
//! (an in-memory bucket and a local directory kept across reopens).

use blocksnap::api::*;
use blocksnap::engine::GcOptions;
use blocksnap::storage::object::MemoryObjectStore;
use blocksnap::storage::{BucketOptions, BucketStorage, MemoryStorage, Storage};
use blocksnap::testing::{block, complete_request, Model, ModelError, ModelStatus, Op};
use blocksnap::{chunkstore::ChunkStoreConfig, Engine, EngineConfig, Error};
use proptest::prelude::*;
use std::sync::Arc;

fn class(error: &Error) -> ModelError {
    match ebs_error(error).code {
        "ValidationException" => ModelError::Validation,
        "ResourceNotFoundException" => ModelError::NotFound,
        other => panic!("unexpected error class {other}: {error}"),
    }
}

fn config() -> EngineConfig {
    // Small packs so sealing, mmap-less reads and index merges all happen.
    EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 1 << 20,
            ..ChunkStoreConfig::default()
        },
        node_cache_nodes: 64,
        ..EngineConfig::default()
    }
}

/// What the engine runs on; reopening keeps everything durable.
enum Backend {
    Memory(MemoryStorage),
    /// A bucket and the writer's local directory.
    Bucket(Arc<MemoryObjectStore>, tempfile::TempDir),
}

impl Backend {
    fn bucket() -> Backend {
        Backend::Bucket(
            Arc::new(MemoryObjectStore::new()),
            tempfile::tempdir().expect("tempdir"),
        )
    }

    fn open(&self) -> Engine {
        let storage: Arc<dyn Storage> = match self {
            Backend::Memory(storage) => Arc::new(storage.clone()),
            Backend::Bucket(bucket, local) => Arc::new(
                BucketStorage::open(
                    blocksnap::testing::test_client(bucket.clone()),
                    local.path(),
                    BucketOptions {
                        cache_bytes: 4 << 20,
                        deletion_grace: std::time::Duration::ZERO,
                    },
                )
                .expect("bucket store"),
            ),
        };
        Engine::open_with(storage, config()).expect("open")
    }
}

struct Harness {
    storage: Backend,
    engine: Option<Engine>,
    model: Model,
    ids: Vec<String>,
}

impl Harness {
    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine is open")
    }

    fn pending(&self, back: usize, any: bool) -> Option<usize> {
        self.model.pick(back, ModelStatus::Pending, any)
    }

    fn completed(&self, back: usize) -> Option<usize> {
        self.model.pick(back, ModelStatus::Completed, false)
    }

    fn list_all(&self, id: &str, start: u32) -> Result<Vec<(u32, String)>, Error> {
        let mut out = Vec::new();
        let mut request = ListSnapshotBlocksRequest {
            snapshot_id: id.into(),
            starting_block_index: Some(start as i32),
            max_results: Some(100),
            ..Default::default()
        };
        loop {
            let page = Ebs::new(self.engine()).list_snapshot_blocks(request.clone())?;
            out.extend(
                page.blocks
                    .into_iter()
                    .map(|b| (b.block_index as u32, b.block_token)),
            );
            match page.next_token {
                Some(token) => request.next_token = Some(token),
                None => return Ok(out),
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Start { parent, volume_gib } => {
                let parent = parent.and_then(|p| self.completed(p));
                let request = StartSnapshotRequest {
                    volume_size: volume_gib as i64,
                    parent_snapshot_id: parent.map(|p| self.ids[p].clone()),
                    ..Default::default()
                };
                let expected = self.model.start(parent, volume_gib);
                match (Ebs::new(self.engine()).start_snapshot(request), expected) {
                    (Ok(response), Ok(position)) => {
                        assert_eq!(position, self.ids.len());
                        self.ids.push(response.snapshot_id);
                    }
                    (Err(error), Err(expected)) => assert_eq!(class(&error), expected),
                    (actual, expected) => panic!("start: engine {actual:?}, model {expected:?}"),
                }
            }
            Op::Put {
                any,
                snapshot,
                index,
                seed,
            } => {
                let Some(position) = self.pending(snapshot, any) else {
                    return;
                };
                let request =
                    blocksnap::testing::put_request(&self.ids[position], index as i32, block(seed));
                let actual = Ebs::new(self.engine())
                    .put_snapshot_block(request)
                    .map(|_| ());
                let expected = self.model.put(position, index, seed);
                match (actual, expected) {
                    (Ok(()), Ok(())) => {}
                    (Err(error), Err(expected)) => assert_eq!(class(&error), expected),
                    (actual, expected) => panic!("put: engine {actual:?}, model {expected:?}"),
                }
            }
            Op::Complete {
                snapshot,
                correct_count,
            } => {
                let Some(position) = self.pending(snapshot, false) else {
                    return;
                };
                let own = self.model.snapshots[position].own_writes.len();
                let count = if correct_count { own } else { own + 1 };
                let actual = Ebs::new(self.engine())
                    .complete_snapshot(complete_request(&self.ids[position], count as i32));
                match (actual, self.model.complete(position, count)) {
                    (Ok(response), Ok(())) => assert_eq!(response.status, Status::Completed),
                    (Err(error), Err(expected)) => assert_eq!(class(&error), expected),
                    (actual, expected) => panic!("complete: engine {actual:?}, model {expected:?}"),
                }
            }
            Op::Reopen => {
                drop(self.engine.take());
                self.engine = Some(self.storage.open());
            }
            Op::List {
                any,
                snapshot,
                start,
            } => {
                let Some(position) = self.model.pick(snapshot, ModelStatus::Completed, any) else {
                    return;
                };
                match (
                    self.list_all(&self.ids[position], start),
                    self.model.list(position, start),
                ) {
                    (Ok(listed), Ok(expected)) => {
                        let indexes: Vec<u32> = listed.iter().map(|(index, _)| *index).collect();
                        let expected: Vec<u32> = expected.iter().map(|(index, _)| *index).collect();
                        assert_eq!(indexes, expected);
                    }
                    (Err(error), Err(expected)) => assert_eq!(class(&error), expected),
                    (actual, expected) => panic!("list: engine {actual:?}, model {expected:?}"),
                }
            }
            Op::Diff { first, second } => {
                let (Some(a), Some(b)) = (self.completed(first), self.completed(second)) else {
                    return;
                };
                let request = ListChangedBlocksRequest {
                    first_snapshot_id: Some(self.ids[a].clone()),
                    second_snapshot_id: self.ids[b].clone(),
                    max_results: Some(10_000),
                    ..Default::default()
                };
                match (
                    Ebs::new(self.engine()).list_changed_blocks(request),
                    self.model.diff(a, b),
                ) {
                    (Ok(response), Ok(expected)) => {
                        assert!(response.next_token.is_none());
                        let actual: Vec<(u32, bool, bool)> = response
                            .changed_blocks
                            .iter()
                            .map(|c| {
                                (
                                    c.block_index as u32,
                                    c.first_block_token.is_some(),
                                    c.second_block_token.is_some(),
                                )
                            })
                            .collect();
                        assert_eq!(actual, expected);
                    }
                    (Err(error), Err(expected)) => assert_eq!(class(&error), expected),
                    (actual, expected) => panic!("diff: engine {actual:?}, model {expected:?}"),
                }
            }
            Op::Get { snapshot, index } => {
                let Some(position) = self.completed(snapshot) else {
                    return;
                };
                let expected = self.model.list(position, index);
                let listed = self.list_all(&self.ids[position], index);
                match (listed, expected) {
                    (Ok(listed), Ok(expected)) => {
                        let (Some((listed_index, token)), Some((expected_index, seed))) =
                            (listed.first(), expected.first())
                        else {
                            assert!(listed.is_empty() && expected.is_empty());
                            return;
                        };
                        assert_eq!(listed_index, expected_index);
                        let read = Ebs::new(self.engine())
                            .get_snapshot_block(GetSnapshotBlockRequest {
                                snapshot_id: self.ids[position].clone(),
                                block_index: *listed_index as i32,
                                block_token: token.clone(),
                            })
                            .expect("get listed block");
                        assert_eq!(
                            read.block_data,
                            block(*seed),
                            "content of block {listed_index}"
                        );
                        assert_eq!(read.checksum, blocksnap::testing::checksum(&block(*seed)));
                    }
                    (Err(error), Err(expected)) => assert_eq!(class(&error), expected),
                    (actual, expected) => panic!("get: engine {actual:?}, model {expected:?}"),
                }
            }
            Op::Cancel { any, snapshot } => {
                let Some(position) = self.pending(snapshot, any) else {
                    return;
                };
                let actual = Ebs::new(self.engine()).cancel_snapshot(CancelSnapshotRequest {
                    snapshot_id: self.ids[position].clone(),
                });
                match (actual, self.model.cancel(position)) {
                    (Ok(response), Ok(())) => assert_eq!(response.status, Status::Error),
                    (Err(error), Err(expected)) => assert_eq!(class(&error), expected),
                    (actual, expected) => panic!("cancel: engine {actual:?}, model {expected:?}"),
                }
            }
            Op::Delete { any, snapshot } => {
                let Some(position) = self.model.pick(snapshot, ModelStatus::Completed, any) else {
                    return;
                };
                let actual = Ebs::new(self.engine()).delete_snapshot(DeleteSnapshotRequest {
                    snapshot_id: self.ids[position].clone(),
                });
                match (actual, self.model.delete(position)) {
                    (Ok(()), Ok(())) => {}
                    (Err(error), Err(expected)) => assert_eq!(class(&error), expected),
                    (actual, expected) => panic!("delete: engine {actual:?}, model {expected:?}"),
                }
            }
            Op::Collect => {
                self.engine()
                    .collect_garbage(GcOptions {
                        live_threshold: 1.0,
                        ..GcOptions::default()
                    })
                    .expect("collect");
                // Everything stored is needed, once.
                let stats = self.engine().store_stats().expect("stats");
                assert_eq!(stats.garbage_bytes, 0, "{stats:?}");
                assert_eq!(stats.stored_chunks, stats.live_chunks, "{stats:?}");
            }
        }
        // The incremental reference counts agree with a full mark pass
        // after every step.
        let audit = self.engine().audit_references().expect("audit");
        assert_eq!(audit.mismatches, Vec::new(), "after {op:?}");
        assert_eq!(audit.damaged, None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_model(ops in Op::sequence(100)) {
        run(Backend::Memory(MemoryStorage::new()), &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn engine_on_a_bucket_store_agrees_with_the_model(ops in Op::sequence(100)) {
        run(Backend::bucket(), &ops);
    }
}

fn run(storage: Backend, ops: &[Op]) {
    let engine = storage.open();
    let mut harness = Harness {
        storage,
        engine: Some(engine),
        model: Model::default(),
        ids: Vec::new(),
    };
    for op in ops {
        harness.apply(op);
    }
}
