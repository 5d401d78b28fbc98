//! A model-based test of the many-writer commit protocol (DESIGN.md §18).
//! Two writers of one in-memory bucket store, each with its own local
//! directory, run random operations: start, put, complete, delete, gc and
//! refresh. Some pairs are interleaved at the request level, as the test
//! chooses: the first writer's operation is held at its k-th bucket
//! request, either before the request is sent (delayed) or after it took
//! effect with its reply held back, while the other writer's operation
//! runs whole; then it is released. A naive model records what was
//! acknowledged. After every step each writer's reference counts agree
//! with a full mark; at the end, once every condemned pack has been
//! deleted, a fresh process lists exactly the acknowledged snapshots,
//! reads each back exactly, and `verify` is clean.

use blocksnap::engine::{GcOptions, NewSnapshot};
use blocksnap::ids::{BlockIndex, SnapshotId};
use blocksnap::storage::object::{
    Body, ListedObject, MemoryObjectStore, ObjectError, ObjectHead, ObjectStore, Precondition,
};
use blocksnap::storage::{BucketOptions, BucketStorage};
use blocksnap::testing::{block, test_client};
use blocksnap::{chunkstore::ChunkStoreConfig, Engine, EngineConfig, Error};
use parking_lot::{Condvar, Mutex};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where a held request stops.
#[derive(Clone, Copy, Debug)]
struct Hold {
    /// Requests let through before the held one.
    after: usize,
    /// Hold the reply (the request took effect) rather than the request.
    reply: bool,
}

#[derive(Default)]
struct GateState {
    hold: Option<Hold>,
    held: bool,
}

/// One writer's view of the shared bucket: passes requests through, and
/// holds one when armed.
#[derive(Debug)]
struct Gate {
    bucket: Arc<dyn ObjectStore>,
    state: Mutex<GateState>,
    changed: Condvar,
}

impl std::fmt::Debug for GateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateState")
            .field("held", &self.held)
            .finish()
    }
}

impl Gate {
    fn new(bucket: Arc<dyn ObjectStore>) -> Gate {
        Gate {
            bucket,
            state: Mutex::new(GateState::default()),
            changed: Condvar::new(),
        }
    }

    fn arm(&self, hold: Hold) {
        *self.state.lock() = GateState {
            hold: Some(hold),
            held: false,
        };
    }

    /// Waits until a request is held or `finished` (the operation needed
    /// fewer requests); returns whether one is held.
    fn wait_until_held(&self, finished: &AtomicBool) -> bool {
        let mut state = self.state.lock();
        loop {
            if state.held {
                return true;
            }
            if finished.load(Ordering::Acquire) {
                return false;
            }
            self.changed.wait_for(&mut state, Duration::from_millis(5));
        }
    }

    /// Lets the held request go, and disarms.
    fn release(&self) {
        let mut state = self.state.lock();
        state.hold = None;
        state.held = false;
        self.changed.notify_all();
    }

    fn stop_here(&self, mut state: parking_lot::MutexGuard<'_, GateState>) {
        state.held = true;
        self.changed.notify_all();
        while state.held {
            self.changed.wait(&mut state);
        }
    }

    /// Runs one request, holding it (or its reply) when it is the one.
    fn pass<T>(&self, request: impl FnOnce() -> T) -> T {
        let mut hold_reply = false;
        {
            let mut state = self.state.lock();
            match state.hold {
                Some(Hold { after, .. }) if after > 0 => {
                    state.hold = Some(Hold {
                        after: after - 1,
                        ..state.hold.expect("armed")
                    });
                }
                Some(Hold { reply: true, .. }) => {
                    state.hold = None;
                    hold_reply = true;
                }
                Some(Hold { reply: false, .. }) => {
                    state.hold = None;
                    self.stop_here(state);
                }
                None => {}
            }
        }
        let result = request();
        if hold_reply {
            self.stop_here(self.state.lock());
        }
        result
    }
}

impl ObjectStore for Gate {
    fn get(&self, name: &str, range: Option<Range<u64>>) -> Result<bytes::Bytes, ObjectError> {
        self.pass(|| self.bucket.get(name, range))
    }
    fn head(&self, name: &str) -> Result<ObjectHead, ObjectError> {
        self.pass(|| self.bucket.head(name))
    }
    fn put(
        &self,
        name: &str,
        body: &Body,
        precondition: &Precondition,
        put_id: &str,
    ) -> Result<String, ObjectError> {
        self.pass(|| self.bucket.put(name, body, precondition, put_id))
    }
    fn delete(&self, name: &str, etag: Option<&str>) -> Result<(), ObjectError> {
        self.pass(|| self.bucket.delete(name, etag))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, ObjectError> {
        self.pass(|| self.bucket.list(prefix))
    }
    fn location(&self) -> String {
        self.bucket.location()
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        // Small packs: several seal, and gc has packs to judge.
        chunk_store: ChunkStoreConfig {
            pack_target_size: 1 << 20,
            ..ChunkStoreConfig::default()
        },
        ..EngineConfig::default()
    }
}

fn open(bucket: Arc<dyn ObjectStore>, local: &std::path::Path, grace: Duration) -> Engine {
    let storage = BucketStorage::open(
        test_client(bucket),
        local,
        BucketOptions {
            cache_bytes: 4 << 20,
            deletion_grace: grace,
        },
    )
    .expect("bucket store");
    Engine::open_with(Arc::new(storage), config()).expect("open")
}

/// One writer's operation. Picks index the model's snapshots of the
/// right kind, modulo their number.
#[derive(Clone, Debug)]
enum Step {
    Start { parent: Option<u8> },
    Put { pick: u8, index: u8, seed: u8 },
    Complete { pick: u8 },
    Delete { pick: u8 },
    Collect,
    Refresh,
}

#[derive(Clone, Debug)]
enum Op {
    One {
        writer: usize,
        step: Step,
    },
    /// `first` on writer `writer`, held at a request while `second` runs
    /// whole on the other writer.
    Race {
        writer: usize,
        first: Step,
        second: Step,
        hold: usize,
        reply: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => proptest::option::of(any::<u8>()).prop_map(|parent| Step::Start { parent }),
        6 => (any::<u8>(), 0u8..6, 0u8..8).prop_map(|(pick, index, seed)| Step::Put { pick, index, seed }),
        3 => any::<u8>().prop_map(|pick| Step::Complete { pick }),
        2 => any::<u8>().prop_map(|pick| Step::Delete { pick }),
        2 => Just(Step::Collect),
        1 => Just(Step::Refresh),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..2, step()).prop_map(|(writer, step)| Op::One { writer, step }),
        1 => (0usize..2, step(), step(), 0usize..24, any::<bool>()).prop_map(
            |(writer, first, second, hold, reply)| Op::Race { writer, first, second, hold, reply }
        ),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Pending,
    Completed,
    Gone,
}

/// A snapshot as acknowledged.
#[derive(Clone, Debug)]
struct Snap {
    id: SnapshotId,
    writer: usize,
    parent: Option<SnapshotId>,
    state: State,
    /// Every block's seed, the parent's included.
    content: BTreeMap<u32, u64>,
    /// The blocks written in this snapshot.
    written: BTreeSet<u32>,
}

#[derive(Default)]
struct Model {
    snaps: Vec<Snap>,
}

impl Model {
    fn pick(&self, pick: u8, keep: impl Fn(&Snap) -> bool) -> Option<usize> {
        let found: Vec<usize> = (0..self.snaps.len())
            .filter(|at| keep(&self.snaps[*at]))
            .collect();
        (!found.is_empty()).then(|| found[pick as usize % found.len()])
    }

    fn is_parent_of_pending(&self, id: SnapshotId) -> bool {
        self.snaps
            .iter()
            .any(|snap| snap.state == State::Pending && snap.parent == Some(id))
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::Started(snap) => self.snaps.push(snap),
            Effect::Put(at, index, seed) => {
                let snap = &mut self.snaps[at];
                snap.content.insert(index, seed);
                snap.written.insert(index);
            }
            Effect::Completed(at) => self.snaps[at].state = State::Completed,
            Effect::Deleted(at) => self.snaps[at].state = State::Gone,
        }
    }
}

/// What a step did, applied to the model once it returned.
enum Effect {
    None,
    Started(Snap),
    Put(usize, u32, u64),
    Completed(usize),
    Deleted(usize),
}

/// Whether `error` is an outcome a concurrent step of the other writer
/// can cause (the snapshot or parent gone, or a child started meanwhile).
fn explained_by_a_race(error: &Error) -> bool {
    matches!(
        blocksnap::api::ebs_error(error).code,
        "ResourceNotFoundException" | "ValidationException"
    )
}

/// Runs `step` on `engine` (writer `writer`) against the model as it was
/// when the step began; `raced` allows the outcomes a concurrent step of
/// the other writer can cause.
fn run(engine: &Engine, writer: usize, step: &Step, model: &Model, raced: bool) -> Effect {
    let refused = |error: Error, what: &str| {
        assert!(
            raced && explained_by_a_race(&error),
            "{what} failed unraced: {error}"
        );
        Effect::None
    };
    let pending_here = |snap: &Snap| snap.writer == writer && snap.state == State::Pending;
    match *step {
        Step::Start { parent } => {
            let parent = parent
                .and_then(|pick| model.pick(pick, |snap| snap.state == State::Completed))
                .map(|at| &model.snaps[at]);
            let mut request = NewSnapshot::new(1);
            request.parent = parent.map(|snap| snap.id);
            match engine.start(request) {
                Ok(record) => Effect::Started(Snap {
                    id: record.started.snapshot,
                    writer,
                    parent: parent.map(|snap| snap.id),
                    state: State::Pending,
                    content: parent.map(|snap| snap.content.clone()).unwrap_or_default(),
                    written: BTreeSet::new(),
                }),
                Err(error) => refused(error, "start"),
            }
        }
        Step::Put { pick, index, seed } => {
            let Some(at) = model.pick(pick, pending_here) else {
                return Effect::None;
            };
            let data = block(u64::from(seed));
            engine
                .put_block(
                    model.snaps[at].id,
                    BlockIndex(u32::from(index)),
                    &data,
                    &blocksnap::codec::sha256(&data),
                )
                .unwrap_or_else(|error| panic!("put: {error}"));
            Effect::Put(at, u32::from(index), u64::from(seed))
        }
        Step::Complete { pick } => {
            let Some(at) = model.pick(pick, pending_here) else {
                return Effect::None;
            };
            let snap = &model.snaps[at];
            engine
                .complete(snap.id, snap.written.len() as u32, None)
                .unwrap_or_else(|error| panic!("complete: {error}"));
            Effect::Completed(at)
        }
        Step::Delete { pick } => {
            let Some(at) = model.pick(pick, |snap| snap.state == State::Completed) else {
                return Effect::None;
            };
            let id = model.snaps[at].id;
            match engine.delete(id) {
                Ok(()) => {
                    assert!(
                        !model.is_parent_of_pending(id),
                        "the parent of a pending snapshot was deleted"
                    );
                    Effect::Deleted(at)
                }
                Err(error) if model.is_parent_of_pending(id) => {
                    assert!(explained_by_a_race(&error), "{error}");
                    Effect::None
                }
                Err(error) => refused(error, "delete"),
            }
        }
        Step::Collect => {
            engine
                .collect_garbage(GcOptions {
                    live_threshold: 1.0,
                    ..GcOptions::default()
                })
                .unwrap_or_else(|error| panic!("gc: {error}"));
            Effect::None
        }
        Step::Refresh => {
            engine
                .refresh()
                .unwrap_or_else(|error| panic!("refresh: {error}"));
            Effect::None
        }
    }
}

/// Checks that `engine` reads `snap` exactly.
fn check(engine: &Engine, snap: &Snap) {
    let reader = engine
        .reader(snap.id)
        .unwrap_or_else(|error| panic!("reader of {}: {error}", snap.id));
    for index in 0..6u32 {
        let read = reader
            .block(BlockIndex(index))
            .unwrap_or_else(|error| panic!("{} block {index}: {error}", snap.id));
        assert_eq!(
            read.map(|(bytes, _)| bytes.to_vec()),
            snap.content.get(&index).map(|seed| block(*seed)),
            "{} block {index}",
            snap.id
        );
    }
}

fn drive(ops: &[Op]) {
    let bucket: Arc<dyn ObjectStore> = Arc::new(MemoryObjectStore::new());
    let gates = [(); 2].map(|()| Arc::new(Gate::new(bucket.clone())));
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("dir"));
    // A grace long enough that no condemned pack goes while the writers
    // run: a completing snapshot copies out of them.
    let grace = Duration::from_secs(3600);
    let engines = [0, 1].map(|at| open(gates[at].clone(), dirs[at].path(), grace));
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::One { writer, step } => {
                let effect = run(&engines[*writer], *writer, step, &model, false);
                model.apply(effect);
            }
            Op::Race {
                writer,
                first,
                second,
                hold,
                reply,
            } => {
                let other = 1 - writer;
                gates[*writer].arm(Hold {
                    after: *hold,
                    reply: *reply,
                });
                let finished = AtomicBool::new(false);
                let (first_effect, second_effect) = std::thread::scope(|scope| {
                    let held = scope.spawn(|| {
                        let effect = run(&engines[*writer], *writer, first, &model, true);
                        finished.store(true, Ordering::Release);
                        effect
                    });
                    gates[*writer].wait_until_held(&finished);
                    let second_effect = run(&engines[other], other, second, &model, true);
                    gates[*writer].release();
                    (held.join().expect("first step"), second_effect)
                });
                // Both acknowledged: the order of their effects does not
                // matter to the model (they touch different snapshots, or
                // one of them was refused).
                model.apply(first_effect);
                model.apply(second_effect);
            }
        }
        for engine in &engines {
            engine.refresh().expect("refresh");
            let audit = engine.audit_references().expect("audit");
            assert_eq!(audit.mismatches, Vec::new(), "after {op:?}");
            assert_eq!(audit.damaged, None, "after {op:?}");
        }
    }
    drop(engines);
    // A writer with no grace deletes every condemned pack at its commit.
    let purging = tempfile::tempdir().expect("dir");
    let engine = open(bucket.clone(), purging.path(), Duration::ZERO);
    let started = engine.start(NewSnapshot::new(1)).expect("start");
    engine
        .cancel(started.started.snapshot)
        .expect("a commit that purges");
    drop(engine);
    let fresh = tempfile::tempdir().expect("dir");
    let engine = open(bucket, fresh.path(), Duration::ZERO);
    let completed: BTreeSet<SnapshotId> = engine
        .snapshots()
        .iter()
        .filter(|record| record.status_name() == "completed")
        .map(|record| record.started.snapshot)
        .collect();
    let acknowledged: BTreeSet<SnapshotId> = model
        .snaps
        .iter()
        .filter(|snap| snap.state == State::Completed)
        .map(|snap| snap.id)
        .collect();
    assert_eq!(completed, acknowledged);
    for snap in model
        .snaps
        .iter()
        .filter(|snap| snap.state == State::Completed)
    {
        check(&engine, snap);
    }
    let report = engine.verify(Default::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 500, ..ProptestConfig::default() })]

    #[test]
    fn two_writers_with_interleaved_requests_agree_with_the_model(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        drive(&ops);
    }
}
