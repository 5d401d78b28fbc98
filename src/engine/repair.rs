//! `repair`: rebuilds what can be rebuilt from what survives, and says
//! exactly what is lost, as `borg check --repair` and `restic repair` do.
//!
//! In order, on a store no other process has open:
//!
//! 1. the store header and the keyring: a damaged copy is rewritten from
//!    the one that verifies;
//! 2. packs: each is scanned past any damage, and its index is made to
//!    list exactly the records that verify (records an index lost are
//!    reachable again; entries whose record is damaged are dropped, so
//!    the chunk reads as missing and a later put of the same data stores
//!    it again);
//! 3. the catalog: read past any damage in both copies; snapshots whose
//!    state cannot be proven (pending, journal missing) or whose parent is
//!    gone while they are pending are resolved to `error`; a damaged
//!    catalog is rewritten as one checkpoint (both copies) of what
//!    survives;
//! 4. journals: each damaged journal keeps its valid records only;
//! 5. the store is opened and verified in full: every completed snapshot
//!    whose blocks all read back is intact; for the others, the damaged
//!    chunks and the blocks they break are listed.
//!
//! A dry run does steps 1 to 4 in memory and verifies the store as it is.

use super::session::{create_missing_journal, journal_name, repair_journal, JournalRepair};
use super::verify::{DamagedChunk, VerifyOptions};
use super::{Engine, EngineConfig, STORE_HEADER_NAME};
use crate::catalog::{self, SnapshotRecord, SnapshotState};
use crate::chunkstore::{repair_packs, PackRepair};
use crate::error::{Damage, Error, Result};
use crate::format::catalog::SseKind;
use crate::keys::KEYRING_NAME;
use crate::storage::{mirror_name, Storage};
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a repair runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairOptions {
    /// Find and report everything, write nothing.
    pub dry_run: bool,
}

/// What [`Engine::repair`] found and did (the CLI's `repair --json`
/// object, with `LostAnything` and `FoundAnything`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RepairReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// Copies of the store header and keyring that did not verify (each
    /// rewritten from the other).
    #[serde(rename = "DamagedCopies")]
    pub small_files: Vec<Damage>,
    /// Packs whose index was (or would be) rebuilt, or that hold
    /// unreadable bytes.
    pub packs: Vec<PackRepair>,
    /// Damage found in the catalog.
    pub catalog_damage: Vec<Damage>,
    /// Whether the catalog was (or would be) rewritten.
    pub catalog_rewritten: bool,
    /// Damaged journals of pending snapshots (rewritten with their valid
    /// records).
    pub journals: Vec<JournalRepair>,
    /// Pending snapshots resolved to `error`, with why.
    #[serde(serialize_with = "super::verify::serialize_snapshot_reasons")]
    pub resolved: Vec<(String, String)>,
    /// Completed snapshots every block of which reads back exactly.
    pub intact: Vec<String>,
    /// Damaged or missing chunks, with the snapshots and blocks each
    /// breaks: what is lost.
    #[serde(rename = "Damaged")]
    pub damaged_chunks: Vec<DamagedChunk>,
    /// Why the store could not be opened to verify it (a dry run over a
    /// catalog damaged in both copies, say).
    pub not_verified: Option<String>,
    /// Wall time.
    #[serde(rename = "Seconds", serialize_with = "crate::clock::serialize_seconds")]
    pub elapsed: Duration,
}

impl RepairReport {
    /// Whether anything is lost for good: records in unreadable bytes,
    /// catalog records or journal puts lost in every copy, snapshots
    /// resolved to `error`, or damaged chunks.
    pub fn lost_anything(&self) -> bool {
        self.packs
            .iter()
            .any(|pack| !pack.unreadable.is_empty() || pack.dropped > 0)
            || self.catalog_damage.iter().any(|damage| damage.data_lost)
            || self.journals.iter().any(|journal| journal.lost > 0)
            || !self.resolved.is_empty()
            || !self.damaged_chunks.is_empty()
            || self.not_verified.is_some()
    }

    /// Whether the store needed (or, in a dry run, needs) any repair.
    pub fn found_anything(&self) -> bool {
        self.lost_anything()
            || !self.small_files.is_empty()
            || !self.packs.is_empty()
            || !self.catalog_damage.is_empty()
            || !self.journals.is_empty()
    }
}

/// Why `repair` resolves a pending snapshot to `error`.
const RESOLVED_REASON: &str = "Its state was lost to damage; resolved by repair.";

impl Engine {
    /// Repairs the store on `storage` (see the module documentation of
    /// `engine::repair`). The storage must not be open anywhere else; with
    /// `options.dry_run` it may be read-only. `config` is what the store
    /// is then opened with to verify it (its key provider, for encrypted
    /// snapshots).
    pub fn repair(
        storage: Arc<dyn Storage>,
        config: EngineConfig,
        options: RepairOptions,
    ) -> Result<RepairReport> {
        let started = Instant::now();
        let dry_run = options.dry_run;
        if !dry_run && storage.is_read_only() {
            return Err(Error::ReadOnly {
                message: "repair writes to the store; open it for writing, or ask for a dry run"
                    .into(),
            });
        }
        let mut report = RepairReport {
            dry_run,
            ..RepairReport::default()
        };
        report.small_files = repair_small_files(storage.as_ref(), dry_run)?;
        report.packs = repair_packs(storage.as_ref(), dry_run)?;
        let salvaged = catalog::salvage(storage.as_ref())?;
        report.catalog_damage = salvaged.damage;
        let (records, resolved) = resolve_pending(
            storage.as_ref(),
            salvaged.records,
            &salvaged.unjournaled,
            config.clock.now_millis(),
        )?;
        report.resolved = resolved;
        for record in &records {
            if record.state != SnapshotState::Pending {
                continue;
            }
            let snapshot = record.started.snapshot;
            let masked = record.started.sse != SseKind::None;
            report
                .journals
                .extend(repair_journal(storage.as_ref(), snapshot, masked, dry_run)?);
            let has_journal = storage
                .exists(&journal_name(snapshot))
                .map_err(|e| Error::io("checking a journal", e))?;
            if !has_journal && !dry_run {
                let durable_on_ack = config.put_durability == super::PutDurability::Immediate;
                create_missing_journal(storage.as_ref(), snapshot, durable_on_ack, masked)?;
            }
        }
        report.catalog_rewritten = !report.catalog_damage.is_empty() || !report.resolved.is_empty();
        if report.catalog_rewritten && !dry_run {
            catalog::rewrite(storage.as_ref(), &records)?;
        }
        match Engine::open_with(storage, config) {
            Ok(engine) => {
                let headers: Vec<u32> = report
                    .packs
                    .iter()
                    .filter(|pack| pack.header_damaged)
                    .map(|pack| pack.pack)
                    .collect();
                if !dry_run {
                    engine.rewrite_packs(&headers)?;
                }
                let verified =
                    engine.verify_cancellable(VerifyOptions::default(), &AtomicBool::new(false))?;
                let broken: HashSet<&str> = verified
                    .damaged
                    .iter()
                    .flat_map(|damaged| damaged.affected.iter())
                    .map(|affected| affected.snapshot_id.as_str())
                    .collect();
                report.intact = records
                    .iter()
                    .filter(|record| matches!(record.state, SnapshotState::Completed { .. }))
                    .map(|record| record.started.snapshot.to_string())
                    .filter(|snapshot| !broken.contains(snapshot.as_str()))
                    .collect();
                report.damaged_chunks = verified.damaged;
            }
            Err(error) => report.not_verified = Some(error.to_string()),
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// Rewrites each small file kept twice whose one copy does not verify
/// (from the copy that does); returns the damaged copies.
fn repair_small_files(storage: &dyn Storage, dry_run: bool) -> Result<Vec<Damage>> {
    let header_valid: fn(&[u8]) -> bool =
        |bytes| crate::format::store::StoreHeader::decode(bytes).is_ok();
    let keyring_valid: fn(&[u8]) -> bool =
        |bytes| crate::format::keyring::decode_keyring(bytes).is_ok();
    let mut damage = Vec::new();
    for (name, valid) in [
        (STORE_HEADER_NAME, header_valid),
        (KEYRING_NAME, keyring_valid),
    ] {
        let mut sound = None;
        let mut broken = Vec::new();
        for copy in [name.to_string(), mirror_name(name)] {
            match storage.read_all(&copy) {
                Ok(bytes) if valid(&bytes) => sound = sound.or(Some(bytes)),
                Ok(_) => broken.push(copy),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(Error::io(format!("reading {copy}"), error)),
            }
        }
        if broken.is_empty() {
            continue;
        }
        let Some(sound) = sound else {
            return Err(Error::corrupted(
                name,
                "neither copy verifies: what it held cannot be rebuilt",
            ));
        };
        for copy in broken {
            if !dry_run {
                storage
                    .write_atomic(&copy, &sound)
                    .map_err(|e| Error::io(format!("rewriting {copy}"), e))?;
            }
            damage.push(Damage {
                file: copy,
                detail: "did not verify; rewritten from the other copy".into(),
                data_lost: false,
            });
        }
    }
    Ok(damage)
}

/// Snapshots resolved to `error`: (id, why).
type Resolved = Vec<(String, String)>;

/// Resolves to `error` every pending snapshot whose state cannot be
/// proven (journaled at start, journal missing) or whose parent is no
/// longer completed (its recovery needs the parent's map). Returns the
/// records to keep and what was resolved.
fn resolve_pending(
    storage: &dyn Storage,
    mut records: Vec<SnapshotRecord>,
    unjournaled: &[crate::ids::SnapshotId],
    now_millis: u64,
) -> Result<(Vec<SnapshotRecord>, Resolved)> {
    let completed: HashSet<crate::ids::SnapshotId> = records
        .iter()
        .filter(|record| matches!(record.state, SnapshotState::Completed { .. }))
        .map(|record| record.started.snapshot)
        .collect();
    let mut resolved = Vec::new();
    for record in &mut records {
        if record.state != SnapshotState::Pending {
            continue;
        }
        let snapshot = record.started.snapshot;
        let journal = storage
            .exists(&journal_name(snapshot))
            .map_err(|e| Error::io("checking a journal", e))?;
        let why = if !journal && !unjournaled.contains(&snapshot) {
            "its journal is missing: it may have been completed (its catalog record lost) or have received blocks"
        } else if record
            .started
            .parent
            .is_some_and(|parent| !completed.contains(&parent))
        {
            "its parent's completion record was lost"
        } else {
            continue;
        };
        record.state = SnapshotState::Error {
            at_millis: now_millis,
            reason: RESOLVED_REASON.to_string(),
        };
        resolved.push((snapshot.to_string(), why.to_string()));
    }
    Ok((records, resolved))
}
