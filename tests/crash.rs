//! Crash at every sync point of a workload, reopen, and check the promises:
//! every completed snapshot reads back byte-identical, nothing acknowledged
//! as durable is missing, and no snapshot is half-committed.
//!
//! The medium (`MemoryStorage`) keeps only what was synced; the crash fires
//! at sync k for every k of the workload, with unsynced bytes dropped, half
//! kept (a torn tail), or kept per file in a scattered pattern (write-back
//! in any order across files).

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::crypto::KeyProvider;
use blocksnap::keys::{KdfParams, LocalKeyProvider, Passphrase};
use blocksnap::storage::{MemoryStorage, TornWrites};
use blocksnap::testing::{block, complete_request, get_listed, list_all_blocks, put_request};
use blocksnap::{Engine, EngineConfig, Error, PutDurability};
use std::collections::BTreeMap;
use std::sync::Arc;

/// With a key provider, the workload's snapshots are encrypted (roots ask
/// for the default key; children inherit it).
fn config_with(durability: PutDurability, keys: Option<Arc<dyn KeyProvider>>) -> EngineConfig {
    EngineConfig {
        key_provider: keys,
        // Small packs: the workload seals several, so crashes land inside seals too.
        chunk_store: ChunkStoreConfig {
            pack_target_size: 700 << 10,
            ..ChunkStoreConfig::default()
        },
        put_durability: durability,
        ..EngineConfig::default()
    }
}

/// What the workload was told, per snapshot.
#[derive(Default, Clone, Debug)]
struct Tracked {
    parent: Option<usize>,
    /// Puts acknowledged, in order: (index, seed).
    acked: Vec<(u32, u64)>,
    /// How many of `acked` a successful flush or completion made durable.
    durable_prefix: usize,
    /// A put that was under way when the crash hit: (index, seed).
    in_flight: Option<(u32, u64)>,
    completed: bool,
    complete_in_flight: bool,
}

#[derive(Default, Debug)]
struct Ledger {
    ids: Vec<String>,
    snapshots: Vec<Tracked>,
}

impl Ledger {
    /// Final content of a snapshot as acknowledged: parent's, then own puts.
    fn content(&self, position: usize) -> BTreeMap<u32, u64> {
        let tracked = &self.snapshots[position];
        let mut content = tracked
            .parent
            .map(|parent| self.content(parent))
            .unwrap_or_default();
        content.extend(tracked.acked.iter().copied());
        content
    }
}

/// One snapshot of the workload: parent position, puts, whether to complete.
type Step = (Option<usize>, &'static [(u32, u64)], bool);

fn run_workload(engine: &Engine, ledger: &mut Ledger) -> Result<(), Error> {
    let plan: [Step; 4] = [
        (
            None,
            &[(0, 1), (1, 0), (2, 2), (3, 1), (0, 3), (4, 5)],
            true,
        ),
        (Some(0), &[(1, 4), (5, 2), (2, 2), (6, 7)], true),
        (None, &[(7, 5), (8, 1)], false),
        (Some(1), &[(9, 3), (1, 8)], false),
    ];
    for (parent, puts, complete) in plan {
        let encrypted = engine.config().key_provider.is_some() && parent.is_none();
        let request = StartSnapshotRequest {
            volume_size: 1,
            parent_snapshot_id: parent.map(|p| ledger.ids[p].clone()),
            encrypted: encrypted.then_some(true),
            ..Default::default()
        };
        let id = Ebs::new(engine).start_snapshot(request)?.snapshot_id;
        ledger.ids.push(id.clone());
        ledger.snapshots.push(Tracked {
            parent,
            ..Tracked::default()
        });
        let position = ledger.ids.len() - 1;
        for (number, &(index, seed)) in puts.iter().enumerate() {
            ledger.snapshots[position].in_flight = Some((index, seed));
            Ebs::new(engine).put_snapshot_block(put_request(&id, index as i32, block(seed)))?;
            let tracked = &mut ledger.snapshots[position];
            tracked.in_flight = None;
            tracked.acked.push((index, seed));
            if engine.config().put_durability == PutDurability::Immediate {
                tracked.durable_prefix = tracked.acked.len();
            }
            if number == 1 {
                engine.flush()?;
                let tracked = &mut ledger.snapshots[position];
                tracked.durable_prefix = tracked.acked.len();
            }
        }
        if complete {
            let distinct = ledger.snapshots[position]
                .acked
                .iter()
                .map(|(i, _)| *i)
                .collect::<std::collections::BTreeSet<_>>();
            ledger.snapshots[position].complete_in_flight = true;
            Ebs::new(engine).complete_snapshot(complete_request(&id, distinct.len() as i32))?;
            let tracked = &mut ledger.snapshots[position];
            tracked.complete_in_flight = false;
            tracked.completed = true;
            tracked.durable_prefix = tracked.acked.len();
        }
    }
    Ok(())
}

/// Reads every block and checks it against `allowed` contents per index.
fn check_content(
    engine: &Engine,
    id: &str,
    allowed: &BTreeMap<u32, Vec<u64>>,
    required: &[u32],
    context: &str,
) {
    let blocks = list_all_blocks(engine, id)
        .unwrap_or_else(|error| panic!("{context}: listing {id}: {error}"));
    for index in required {
        assert!(
            blocks.iter().any(|b| b.block_index as u32 == *index),
            "{context}: durable block {index} of {id} is missing"
        );
    }
    for listed in blocks {
        let index = listed.block_index as u32;
        let seeds = allowed
            .get(&index)
            .unwrap_or_else(|| panic!("{context}: {id} lists block {index}, never written"));
        let data = get_listed(engine, id, &listed)
            .unwrap_or_else(|error| panic!("{context}: reading {id} block {index}: {error}"));
        assert!(
            seeds.iter().any(|seed| block(*seed) == data),
            "{context}: {id} block {index} holds data that was never acknowledged there"
        );
    }
}

fn verify(engine: &Engine, ledger: &Ledger, context: &str) {
    for (position, tracked) in ledger.snapshots.iter().enumerate() {
        let id = &ledger.ids[position];
        let acked_content = ledger.content(position);
        if tracked.completed {
            // Exact: byte-identical to what was acknowledged.
            let allowed: BTreeMap<u32, Vec<u64>> =
                acked_content.iter().map(|(i, s)| (*i, vec![*s])).collect();
            let required: Vec<u32> = acked_content.keys().copied().collect();
            check_content(engine, id, &allowed, &required, context);
            continue;
        }
        let mut own_history: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (index, seed) in tracked.acked.iter().chain(tracked.in_flight.iter()) {
            own_history.entry(*index).or_default().push(*seed);
        }
        let inherited = tracked
            .parent
            .map(|parent| ledger.content(parent))
            .unwrap_or_default();
        let mut allowed: BTreeMap<u32, Vec<u64>> =
            inherited.iter().map(|(i, s)| (*i, vec![*s])).collect();
        for (index, seeds) in &own_history {
            allowed.entry(*index).or_default().extend(seeds);
        }
        // An index is required when its latest acknowledged put was made
        // durable; one overwritten since the last sync may be absent (never
        // stale), which CompleteSnapshot's count then reveals.
        let durable_indexes: Vec<u32> = own_history
            .keys()
            .copied()
            .filter(|index| {
                let last = tracked.acked.iter().rposition(|(i, _)| i == index);
                let durable = last.is_some_and(|position| position < tracked.durable_prefix);
                // With durable acknowledgements an in-flight overwrite reverts;
                // otherwise it may drop the index.
                let overwritten = tracked.in_flight.is_some_and(|(i, _)| i == *index)
                    && engine.config().put_durability == PutDurability::AtComplete;
                durable && !overwritten
            })
            .chain(inherited.keys().copied())
            .collect();
        match list_all_blocks(engine, id) {
            Ok(_) => {
                assert!(
                    tracked.complete_in_flight,
                    "{context}: {id} completed without being asked to"
                );
                check_content(engine, id, &allowed, &durable_indexes, context);
            }
            Err(Error::NotFound { .. }) => {
                panic!("{context}: acknowledged snapshot {id} is gone")
            }
            Err(_) => {
                // Still pending: find the recovered count by completing with
                // each candidate (a wrong count changes nothing), then check.
                let completed = (0..=own_history.len() as i32).find(|count| {
                    Ebs::new(engine)
                        .complete_snapshot(complete_request(id, *count))
                        .is_ok()
                });
                assert!(
                    completed.is_some(),
                    "{context}: pending {id} cannot be completed with any count"
                );
                check_content(engine, id, &allowed, &durable_indexes, context);
            }
        }
    }
}

fn crash_everywhere(durability: PutDurability) {
    crash_everywhere_with(durability, None);
}

fn crash_everywhere_with(durability: PutDurability, keys: Option<Arc<dyn KeyProvider>>) {
    let config = |durability| config_with(durability, keys.clone());
    // A clean run counts the sync points (including those of close).
    let clean = MemoryStorage::new();
    {
        let engine = Engine::open_with(Arc::new(clean.clone()), config(durability)).expect("open");
        run_workload(&engine, &mut Ledger::default()).expect("clean workload");
    }
    let total_syncs = clean.sync_count();
    assert!(
        total_syncs > 20,
        "the workload should have many sync points, has {total_syncs}"
    );
    let mut crashes = 0;
    let modes = [
        TornWrites::DropUnsynced,
        TornWrites::KeepHalf,
        TornWrites::Scattered(1),
        TornWrites::Scattered(2),
        TornWrites::Scattered(3),
    ];
    for torn in modes {
        for k in 1..=total_syncs {
            let context = format!("{durability:?}, crash at sync {k}/{total_syncs}, {torn:?}");
            let storage = MemoryStorage::new();
            storage.crash_at_sync(k, torn);
            let mut ledger = Ledger::default();
            if let Ok(engine) = Engine::open_with(Arc::new(storage.clone()), config(durability)) {
                let outcome = run_workload(&engine, &mut ledger);
                if outcome.is_err() {
                    // Fail-stop: after the failure every write is refused.
                    let retry = Ebs::new(&engine).start_snapshot(StartSnapshotRequest {
                        volume_size: 1,
                        ..Default::default()
                    });
                    assert!(
                        retry.is_err(),
                        "{context}: the engine accepted a write after an I/O failure"
                    );
                }
            }
            let Some(image) = storage.crashed_image() else {
                continue;
            };
            crashes += 1;
            let engine = Engine::open_with(Arc::new(image.clone()), config(durability))
                .unwrap_or_else(|error| panic!("{context}: recovery failed: {error}"));
            verify(&engine, &ledger, &context);
            drop(engine);
            // Recovery itself must leave a store that reopens identically.
            let again =
                Engine::open_with(Arc::new(image), config(durability)).expect("second reopen");
            for (position, tracked) in ledger.snapshots.iter().enumerate() {
                if tracked.completed {
                    assert!(
                        list_all_blocks(&again, &ledger.ids[position]).is_ok(),
                        "{context}: second reopen lost a snapshot"
                    );
                }
            }
        }
    }
    assert_eq!(
        crashes,
        modes.len() as u64 * total_syncs,
        "every armed crash fired"
    );
}

#[test]
fn crash_at_every_sync_point_with_durable_puts() {
    crash_everywhere(PutDurability::Immediate);
}

#[test]
fn crash_at_every_sync_point_of_encrypted_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = LocalKeyProvider::create(
        &dir.path().join("keys"),
        &Passphrase::new("crash test").expect("passphrase"),
        KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
    )
    .expect("key file");
    crash_everywhere_with(PutDurability::Immediate, Some(Arc::new(provider)));
}

#[test]
fn crash_at_every_sync_point_with_puts_durable_at_complete() {
    crash_everywhere(PutDurability::AtComplete);
}
