//! `verify`: proves a store intact, or names exactly what is damaged and
//! which snapshots and blocks it affects.

use super::Engine;
use crate::blockmap::BlockMaps;
use crate::catalog::SnapshotState;
use crate::chunkstore::IdSample;
use crate::clock::Pacer;
use crate::error::{Damage, Error, Result};
use crate::format::node::{slot_span, LEVELS};
use crate::ids::{ChunkId, PackLocation, SnapshotId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a verification runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VerifyOptions {
    /// Fraction of the chunks to read (1.0: all). The sample is chosen by
    /// id, so repeated runs with the same start read the same chunks.
    pub sample_fraction: f64,
    /// Where in the id space the sample begins (0.0 ..= 1.0): a run
    /// starting at the previous run's [`VerifyReport::next_sample_start`]
    /// checks the next chunks, so scheduled sampled runs cover the store.
    pub sample_start: f64,
    /// Threads reading and hashing (0: one per available core).
    pub threads: usize,
    /// Most record bytes read per second (`None`: as fast as the disk
    /// allows), so a run beside a busy server leaves it the disk.
    pub max_bytes_per_sec: Option<u64>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            sample_fraction: 1.0,
            sample_start: 0.0,
            threads: 0,
            max_bytes_per_sec: None,
        }
    }
}

/// Blocks of one snapshot that a damaged chunk makes unreadable.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AffectedBlocks {
    /// The snapshot.
    pub snapshot_id: String,
    /// First block index affected.
    pub first_block: u32,
    /// Last block index affected (inclusive). A damaged map node affects
    /// every index below it that holds data.
    pub last_block: u32,
}

/// One damaged or missing chunk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DamagedChunk {
    /// The chunk, when known (a record whose header is unreadable is known
    /// by its id prefix only; referenced chunks with that prefix are then
    /// listed one by one).
    pub chunk: Option<ChunkId>,
    /// Where its record is (`None`: referenced but not stored at all).
    pub location: Option<PackLocation>,
    /// What failed.
    pub detail: String,
    /// What it breaks.
    pub affected: Vec<AffectedBlocks>,
}

/// What [`Engine::verify`] found (the CLI's `verify --json` object, with
/// `Clean`: [`VerifyReport::is_clean`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyReport {
    /// Chunk records read and checked.
    pub records_checked: u64,
    /// Bytes of those records.
    pub bytes_checked: u64,
    /// Catalog records re-read and checked.
    pub catalog_records: u64,
    /// Why the catalog failed its check, if it did.
    pub catalog_error: Option<String>,
    /// Damaged and missing chunks, with what they affect.
    pub damaged: Vec<DamagedChunk>,
    /// Damage to the store's files beyond single chunks: unreadable bytes
    /// in packs (records there lost), indexes and catalog copies that do
    /// not verify (rebuilt from, or covered by, what survives).
    pub damaged_files: Vec<Damage>,
    /// Snapshots whose state cannot be proven, with why: a pending
    /// snapshot whose journal is missing may have been completed (its
    /// record lost) or have received blocks. `gc` does not run while any
    /// exists; `repair` resolves them.
    #[serde(serialize_with = "serialize_snapshot_reasons")]
    pub unprovable: Vec<(String, String)>,
    /// The run was cancelled before it checked everything: it proves
    /// nothing about what it did not reach.
    pub interrupted: bool,
    /// Where a following sampled run begins to check the next chunks.
    #[serde(skip)]
    pub next_sample_start: f64,
    /// Wall time taken.
    #[serde(rename = "Seconds", serialize_with = "crate::clock::serialize_seconds")]
    pub elapsed: Duration,
}

/// Serializes (snapshot, reason) pairs as `[{"SnapshotId", "Reason"}]`.
pub(crate) fn serialize_snapshot_reasons<S: serde::Serializer>(
    pairs: &[(String, String)],
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct SnapshotReason<'a> {
        snapshot_id: &'a str,
        reason: &'a str,
    }
    serializer.collect_seq(pairs.iter().map(|(snapshot_id, reason)| SnapshotReason {
        snapshot_id,
        reason,
    }))
}

impl VerifyReport {
    /// Whether the whole check ran and found nothing wrong.
    pub fn is_clean(&self) -> bool {
        !self.interrupted
            && self.catalog_error.is_none()
            && self.damaged.is_empty()
            && self.damaged_files.is_empty()
            && self.unprovable.is_empty()
    }
}

impl Engine {
    /// Reads every chunk (or a sample) and checks crc, id and content hash,
    /// and each block's stored SHA-256; checks that every referenced chunk
    /// is stored; re-reads the catalog. Writers and readers continue.
    /// Each damaged chunk is reported with the snapshots and block indexes
    /// it affects, and is marked so that the next put of identical data
    /// stores a fresh copy (healing it).
    pub fn verify(&self, options: VerifyOptions) -> Result<VerifyReport> {
        self.verify_cancellable(options, &AtomicBool::new(false))
    }

    /// [`Engine::verify`] that stops soon after `cancel` is set; the report
    /// then says `interrupted` and is never clean.
    pub fn verify_cancellable(
        &self,
        options: VerifyOptions,
        cancel: &AtomicBool,
    ) -> Result<VerifyReport> {
        let started = Instant::now();
        for (name, value) in [
            ("sample_fraction", options.sample_fraction),
            ("sample_start", options.sample_start),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::invalid(
                    crate::error::ValidationReason::InvalidParameterValue,
                    format!("{name} must be within 0.0 ..= 1.0"),
                ));
            }
        }
        let sample = IdSample {
            start: options.sample_start,
            fraction: options.sample_fraction,
        };
        let _maintenance = self.inner.maintenance.lock();
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pacer = Pacer::new(options.max_bytes_per_sec);
        let check = self
            .inner
            .chunks
            .verify_records(sample, threads, &pacer, cancel);
        let mut report = VerifyReport {
            records_checked: check.records,
            bytes_checked: check.bytes,
            next_sample_start: sample.next_start(),
            ..VerifyReport::default()
        };
        if cancel.load(Ordering::Acquire) {
            report.interrupted = true;
            report.elapsed = started.elapsed();
            return Ok(report);
        }
        report
            .damaged_files
            .extend(self.inner.chunks.verify_coverage(cancel));
        report.damaged_files.extend(
            self.inner
                .open_damage
                .iter()
                .filter(|found| !found.file.starts_with("catalog/"))
                .cloned(),
        );
        report.unprovable = self
            .unprovable_snapshots()
            .into_iter()
            .map(|(snapshot, why)| (snapshot.to_string(), why))
            .collect();
        match self.verify_catalog() {
            Ok(check) => {
                report.catalog_records = check.records;
                report.damaged_files.extend(check.damage);
                if !check.replays_to_memory {
                    report.catalog_error = Some(
                        "the log on disk no longer replays to the catalog in memory: records were lost since the store was opened".into(),
                    );
                }
            }
            Err(error) => report.catalog_error = Some(error.to_string()),
        }
        let live = self.inner.references.counts();
        for damaged in check.damaged {
            let chunks: Vec<Option<ChunkId>> = match damaged.chunk {
                Some(chunk) => vec![Some(chunk)],
                None => {
                    let named: Vec<Option<ChunkId>> = live
                        .keys()
                        .filter(|id| id.prefix() == damaged.id_prefix)
                        .map(|id| Some(*id))
                        .collect();
                    if named.is_empty() {
                        vec![None]
                    } else {
                        named
                    }
                }
            };
            for chunk in chunks {
                report.damaged.push(DamagedChunk {
                    chunk,
                    location: Some(damaged.location),
                    detail: damaged.detail.clone(),
                    affected: Vec::new(),
                });
            }
        }
        // A record whose header is damaged makes its chunk unlocatable too:
        // it is reported once, as damaged, not again as missing.
        let reported: std::collections::HashSet<ChunkId> = report
            .damaged
            .iter()
            .filter_map(|damaged| damaged.chunk)
            .collect();
        let mut missing: Vec<ChunkId> = live
            .keys()
            .filter(|id| !reported.contains(id) && !self.inner.chunks.holds(id))
            .copied()
            .collect();
        missing.sort_unstable();
        report
            .damaged
            .extend(missing.into_iter().map(|chunk| DamagedChunk {
                chunk: Some(chunk),
                location: None,
                detail: "referenced, but not in the store".into(),
                affected: Vec::new(),
            }));
        if !report.damaged.is_empty() {
            self.find_affected(&mut report.damaged)?;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Re-reads the catalog and checks it. Beside a writer, a read that
    /// met an append or a compaction half-made is read again (see
    /// [`Engine::open_with`]); the last reading stands.
    fn verify_catalog(&self) -> Result<crate::catalog::CatalogCheck> {
        super::settled_beside_writer(
            self.inner.storage.as_ref(),
            || self.inner.catalog.verify(),
            |check| check.damage.is_empty() && check.replays_to_memory,
        )
    }

    /// Pending snapshots whose state cannot be proven, with why, by id.
    pub(crate) fn unprovable_snapshots(&self) -> Vec<(SnapshotId, String)> {
        let mut found: Vec<(SnapshotId, String)> = self
            .inner
            .sessions
            .read()
            .values()
            .filter_map(|session| Some((session.snapshot, session.unprovable.clone()?)))
            .collect();
        found.sort();
        found
    }

    /// Fills in what each damaged chunk affects: one walk of every live
    /// block map (only run when something is damaged).
    fn find_affected(&self, damaged: &mut [DamagedChunk]) -> Result<()> {
        let by_id: HashMap<ChunkId, usize> = damaged
            .iter()
            .enumerate()
            .filter_map(|(position, damaged)| damaged.chunk.map(|chunk| (chunk, position)))
            .collect();
        let _guard = self.inner.reference_guard.read();
        let maps = self.maps();
        let mut found: Vec<Vec<AffectedBlocks>> = vec![Vec::new(); damaged.len()];
        let mut roots: Vec<(SnapshotId, ChunkId)> = self
            .inner
            .catalog
            .select(|_| true)
            .into_iter()
            .filter_map(|record| match record.state {
                SnapshotState::Completed { root, .. } => Some((record.started.snapshot, root?)),
                _ => None,
            })
            .collect();
        roots.sort_unstable();
        for (snapshot, root) in roots {
            AffectedWalk {
                maps: &maps,
                damaged: &by_id,
                snapshot: snapshot.to_string(),
                found: &mut found,
            }
            .visit(root, LEVELS - 1, 0);
        }
        let mut sessions: Vec<_> = self.inner.sessions.read().values().cloned().collect();
        sessions.sort_by_key(|session| session.snapshot);
        for session in sessions {
            for (index, chunk) in session.written_blocks() {
                if let Some(&position) = by_id.get(&chunk) {
                    push_range(
                        &mut found[position],
                        &session.snapshot.to_string(),
                        index.0,
                        index.0,
                    );
                }
            }
        }
        for (damaged, affected) in damaged.iter_mut().zip(found) {
            damaged.affected = affected;
        }
        Ok(())
    }
}

/// One walk of a block map looking for damaged chunks.
struct AffectedWalk<'a, 'm> {
    maps: &'a BlockMaps<'m>,
    damaged: &'a HashMap<ChunkId, usize>,
    snapshot: String,
    found: &'a mut Vec<Vec<AffectedBlocks>>,
}

impl AffectedWalk<'_, '_> {
    fn visit(&mut self, id: ChunkId, level: u8, base: u64) {
        let span = slot_span(level + 1);
        if let Some(&position) = self.damaged.get(&id) {
            let last = (base + span - 1).min(u64::from(u32::MAX)) as u32;
            push_range(&mut self.found[position], &self.snapshot, base as u32, last);
            return;
        }
        // A node that cannot be read is itself reported (as damaged or
        // missing); nothing below it can be attributed further.
        let Ok(node) = self.maps.load_at(&id, level) else {
            return;
        };
        let child_span = slot_span(level);
        for (slot, child) in node.slots.iter().enumerate() {
            let Some(child) = child else { continue };
            let child_base = base + slot as u64 * child_span;
            if level == 0 {
                if let Some(&position) = self.damaged.get(child) {
                    let index = child_base as u32;
                    push_range(&mut self.found[position], &self.snapshot, index, index);
                }
            } else {
                self.visit(*child, level - 1, child_base);
            }
        }
    }
}

/// Adds blocks `first..=last` of `snapshot`, extending the previous range
/// when they follow it.
fn push_range(ranges: &mut Vec<AffectedBlocks>, snapshot: &str, first: u32, last: u32) {
    if let Some(previous) = ranges.last_mut() {
        if previous.snapshot_id == snapshot
            && u64::from(previous.last_block) + 1 == u64::from(first)
        {
            previous.last_block = last;
            return;
        }
    }
    ranges.push(AffectedBlocks {
        snapshot_id: snapshot.to_string(),
        first_block: first,
        last_block: last,
    });
}
