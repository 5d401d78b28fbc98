//! The garbage collector: compacts packs whose live fraction fell below a
//! threshold, while puts, completes and reads continue.
//!
//! Copying runs without blocking anyone; only the switch of each
//! compaction (re-checking revived records, two fsyncs, the index swap)
//! holds the reference guard exclusively. Each compaction is atomic and
//! crash-safe on its own (see `chunkstore::compact`), so a run can stop
//! after any compaction (`max_compactions`) and the next run resumes with
//! what is left.

use super::Engine;
use crate::chunkstore::PackUsage;
use crate::clock::Pacer;
use crate::error::{Error, Result};
use crate::ids::ChunkId;
use parking_lot::RwLockWriteGuard;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Passes over the packs when removals lose a shared medium's head race
/// to other writers' commits (each pass takes those commits in first).
const MAX_ROUNDS: usize = 4;

/// Dead catalog records below which the collector leaves the log alone.
const CATALOG_COMPACTION_MIN_DEAD: u64 = 256;

/// The live fraction below which [`GcOptions::default`] compacts a pack:
/// a pack more than 10% dead is rewritten.
pub const DEFAULT_LIVE_THRESHOLD: f64 = 0.9;

/// How a collection runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GcOptions {
    /// Packs whose live bytes are below this fraction of their record
    /// bytes are compacted (0.0 ..= 1.0; 1.0 compacts every pack holding
    /// any garbage).
    pub live_threshold: f64,
    /// Most bytes copied per second (`None`: as fast as the disk allows).
    pub max_bytes_per_sec: Option<u64>,
    /// Stop after this many compactions (`None`: all candidates). A later
    /// run continues with the rest.
    pub max_compactions: Option<usize>,
    /// Seal the open pack first when it is below the threshold, so its
    /// garbage is reclaimable too.
    pub include_open_pack: bool,
}

impl Default for GcOptions {
    /// Compacts every pack more than a tenth dead (as borg compacts at 10%
    /// freeable), so deleting a snapshot whose blocks share packs with
    /// survivors returns its space; unpaced; whole run; open pack included.
    fn default() -> Self {
        GcOptions {
            live_threshold: DEFAULT_LIVE_THRESHOLD,
            max_bytes_per_sec: None,
            max_compactions: None,
            include_open_pack: true,
        }
    }
}

/// What a collection did (the CLI's `gc --json` object).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GcReport {
    /// Packs examined.
    pub packs_examined: usize,
    /// Compactions done (each rewrote one or more packs into one).
    pub compactions: usize,
    /// Packs removed.
    pub packs_removed: usize,
    /// Live bytes copied to new packs.
    pub bytes_copied: u64,
    /// Record bytes no longer stored.
    pub bytes_freed: u64,
    /// Candidate packs left for a later run (`max_compactions`).
    pub packs_remaining: usize,
    /// Compactions (and removals of dead packs) undone because another
    /// writer of a shared medium committed first: their packs are judged
    /// again by a later run.
    pub compactions_raced: usize,
    /// Catalog log bytes freed by rewriting it without dead records.
    pub catalog_bytes_freed: u64,
    /// Packs skipped because a record could not be read (run verify).
    #[serde(rename = "DamagedPacks")]
    pub packs_damaged: Vec<u32>,
    /// The run was cancelled: the compaction under way was undone and the
    /// remaining candidates left for a later run.
    pub interrupted: bool,
    /// Wall time taken.
    #[serde(rename = "Seconds", serialize_with = "crate::clock::serialize_seconds")]
    pub elapsed: Duration,
}

/// Free bytes a compaction copying `live_bytes` needs: the records, their
/// index, the output's header and marker, rounded up for the medium's
/// allocation unit.
fn space_for_output(live_bytes: u64) -> u64 {
    live_bytes + live_bytes / 64 + (1 << 20)
}

/// The error of a collection that cannot start its next compaction for
/// want of space: how much it needs, and how much is there.
fn no_room(needed: u64, available: u64, report: &GcReport) -> Error {
    Error::io(
        format!(
            "compacting: the next compaction needs {needed} bytes free and the medium has {available} ({} compactions done, {} bytes freed so far); free space or delete snapshots, then run it again",
            report.compactions, report.bytes_freed
        ),
        std::io::Error::from(std::io::ErrorKind::StorageFull),
    )
}

/// Adds how much free space the compaction needed to a failure (a full
/// disk met while copying, say).
fn with_space_note(error: Error, needed: u64) -> Error {
    match error {
        Error::Io { .. } => error.with_note(&format!(
            "the compaction was undone; it needs {needed} bytes free"
        )),
        other => other,
    }
}

/// Groups candidate packs (emptiest first) into compactions whose live
/// bytes fit one output pack.
fn plan(mut candidates: Vec<PackUsage>, target: u64) -> Vec<Vec<u32>> {
    candidates.sort_by(|a, b| {
        let fraction =
            |usage: &PackUsage| usage.live_bytes as f64 / usage.record_bytes.max(1) as f64;
        fraction(a)
            .total_cmp(&fraction(b))
            .then(a.pack.cmp(&b.pack))
    });
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut group_live = 0u64;
    for usage in candidates {
        match groups.last_mut() {
            Some(group)
                if group_live + usage.live_bytes <= target
                    && group.len() < crate::format::compaction::MAX_MARKER_SOURCES =>
            {
                group.push(usage.pack);
                group_live += usage.live_bytes;
            }
            _ => {
                groups.push(vec![usage.pack]);
                group_live = usage.live_bytes;
            }
        }
    }
    groups
}

impl Engine {
    /// Reclaims the space of dead chunks: compacts every pack whose live
    /// fraction is below `options.live_threshold`. Puts, completes and reads
    /// continue meanwhile, pausing only while each compaction switches
    /// packs. Refuses to run while the reference counts are incomplete
    /// (a map node could not be read): a chunk could look dead.
    pub fn collect_garbage(&self, options: GcOptions) -> Result<GcReport> {
        self.collect_garbage_cancellable(options, &AtomicBool::new(false))
    }

    /// [`Engine::collect_garbage`] that stops soon after `cancel` is set:
    /// the compaction under way is undone (nothing was switched), the
    /// finished ones stay, and the report says `interrupted`.
    pub fn collect_garbage_cancellable(
        &self,
        options: GcOptions,
        cancel: &AtomicBool,
    ) -> Result<GcReport> {
        let started = Instant::now();
        let _maintenance = self.inner.maintenance.lock();
        self.check_writable()?;
        if !(0.0..=1.0).contains(&options.live_threshold) {
            return Err(Error::invalid(
                crate::error::ValidationReason::InvalidParameterValue,
                "live_threshold must be within 0.0 ..= 1.0",
            ));
        }
        if let Some(damage) = self.inner.references.damaged() {
            return Err(Error::corrupted(
                "reference counts",
                format!("{damage}; the collector will not run until the store is repaired"),
            ));
        }
        if let Some((snapshot, why)) = self.unprovable_snapshots().into_iter().next() {
            return Err(Error::corrupted(
                "catalog",
                format!("the state of snapshot {snapshot} cannot be proven ({why}), so its blocks may look dead; the collector will not run until `blocksnap repair` resolves it"),
            ));
        }
        let chunks = &self.inner.chunks;
        chunks.write_missing_indexes()?;
        let references = &self.inner.references;
        let is_live = |id: &ChunkId| references.is_live(id);
        // Only packs holding garbage; at threshold 1.0, every such pack.
        let below = |usage: &PackUsage| {
            usage.live_bytes < usage.record_bytes
                && (usage.live_bytes as f64) < options.live_threshold * usage.record_bytes as f64
        };
        if options.include_open_pack
            && chunks
                .open_pack_usage(&is_live)
                .is_some_and(|usage| below(&usage))
        {
            self.poison_on_io(chunks.seal_open_pack())?;
        }
        let mut report = GcReport::default();
        let limit = options.max_compactions.unwrap_or(usize::MAX);
        let pacer = Pacer::new(options.max_bytes_per_sec);
        let mut started_groups = 0;
        for round in 1..=MAX_ROUNDS {
            let raced_before = report.compactions_raced;
            let usage = self.poison_on_io(chunks.pack_usage(&is_live))?;
            report.packs_examined = report.packs_examined.max(usage.len());
            report.packs_remaining = 0;
            for damaged in usage.iter().filter(|usage| usage.damaged) {
                if !report.packs_damaged.contains(&damaged.pack) {
                    report.packs_damaged.push(damaged.pack);
                }
            }
            let candidates: Vec<PackUsage> = usage
                .into_iter()
                .filter(|usage| !usage.damaged && below(usage))
                .collect();
            let live_of: std::collections::HashMap<u32, u64> = candidates
                .iter()
                .map(|usage| (usage.pack, usage.live_bytes))
                .collect();
            let groups = plan(candidates, chunks.config().pack_target_size);
            for sources in &groups {
                if started_groups >= limit || report.interrupted || cancel.load(Ordering::Acquire) {
                    report.interrupted |= cancel.load(Ordering::Acquire);
                    report.packs_remaining += sources.len();
                    continue;
                }
                started_groups += 1;
                let live: u64 = sources.iter().map(|pack| live_of[pack]).sum();
                let revived;
                let sources = if live == 0 {
                    revived = self.drop_dead_packs(sources, &is_live, &mut report)?;
                    if revived.is_empty() {
                        continue;
                    }
                    &revived
                } else {
                    sources
                };
                // The output is written before any source is removed: it needs
                // its live bytes free on the medium first.
                let needed = space_for_output(live);
                let available = self
                    .inner
                    .storage
                    .available_bytes()
                    .map_err(|e| Error::io("reading the free space", e))?;
                if available.is_some_and(|available| available < needed) {
                    return Err(no_room(needed, available.unwrap_or(0), &report));
                }
                let mut compaction = self
                    .poison_on_io(chunks.begin_compaction(sources))
                    .map_err(|error| with_space_note(error, needed))?;
                let copied = chunks.copy_live(&mut compaction, &is_live, &mut |bytes| {
                    pacer.pace(bytes);
                    !cancel.load(Ordering::Acquire)
                });
                match copied {
                    Ok(true) => {}
                    Ok(false) => {
                        self.poison_on_io(chunks.abandon_compaction(compaction))?;
                        report.interrupted = true;
                        report.packs_remaining += sources.len();
                        continue;
                    }
                    Err(error) if error.is_fatal_io() => return self.poison_on_io(Err(error)),
                    Err(error @ Error::Io { .. }) => {
                        self.poison_on_io(chunks.abandon_compaction(compaction))?;
                        return Err(with_space_note(error, needed));
                    }
                    Err(_) => {
                        // A live record does not verify: leave these packs for
                        // verify to report, and carry on with the others.
                        self.poison_on_io(chunks.abandon_compaction(compaction))?;
                        report.packs_damaged.extend(sources);
                        continue;
                    }
                }
                let (exclusive, generation) = self.exclusive_on_current_view()?;
                let finished = self.poison_on_io(chunks.finish_compaction(compaction, &is_live));
                drop(exclusive);
                if self.lost_race(&finished, generation, sources)? {
                    report.compactions_raced += 1;
                    continue;
                }
                let outcome = finished.map_err(|error| with_space_note(error, needed))?;
                report.compactions += 1;
                report.packs_removed += sources.len();
                report.bytes_copied += outcome.bytes_copied;
                report.bytes_freed += outcome.bytes_freed;
            }
            // Packs whose removal lost a shared medium's head race are judged
            // again on the new view (a lost compaction's output holds their
            // live chunks now, so they go without copying).
            if report.compactions_raced == raced_before || report.interrupted {
                break;
            }
            if round == MAX_ROUNDS {
                tracing::info!(raced = report.compactions_raced, "other writers kept committing first; the packs left are judged by the next collection");
            }
        }
        // The catalog keeps the records of deleted snapshots until it is
        // rewritten; rewrite it once they outnumber the live ones.
        let catalog = &self.inner.catalog;
        if !report.interrupted
            && catalog.dead_records() >= CATALOG_COMPACTION_MIN_DEAD
            && catalog.dead_records() >= catalog.live_records()
            && self.journals_ready_for_checkpoint()
        {
            report.catalog_bytes_freed =
                self.poison_catalog_on_io(self.rebasing(|| catalog.compact()))?;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Removes packs that hold nothing live, without copying (so a full
    /// disk can be emptied); returns those in which a record was revived
    /// meanwhile (the caller compacts them).
    fn drop_dead_packs(
        &self,
        packs: &[u32],
        is_live: &dyn Fn(&ChunkId) -> bool,
        report: &mut GcReport,
    ) -> Result<Vec<u32>> {
        let mut revived = Vec::new();
        for pack in packs {
            let (exclusive, generation) = self.exclusive_on_current_view()?;
            let dropped = self.poison_on_io(self.inner.chunks.drop_dead_pack(*pack, is_live));
            drop(exclusive);
            if self.lost_race(&dropped, generation, &[*pack])? {
                report.compactions_raced += 1;
                continue;
            }
            match dropped? {
                Some(freed) => {
                    report.packs_removed += 1;
                    report.bytes_freed += freed;
                }
                None => revived.push(*pack),
            }
        }
        Ok(revived)
    }

    /// Holds puts, completes and reads off (the reference guard,
    /// exclusively) on a view that is the storage's current generation,
    /// which it returns: on a shared medium, other writers' commits are
    /// taken in first, so that liveness counts their snapshots and the
    /// removals that follow are committed on exactly that view (DESIGN
    /// §18, "Collection among writers"). At once on a medium with one
    /// writer.
    fn exclusive_on_current_view(&self) -> Result<(RwLockWriteGuard<'_, ()>, u64)> {
        // One look at the head first: a commit made since the last is
        // taken in now, not met when the removal is published.
        self.refresh_view()?;
        loop {
            let exclusive = self.inner.reference_guard.write();
            let generation = self.inner.storage.generation();
            if self.view_is_current() {
                return Ok((exclusive, generation));
            }
            drop(exclusive);
            self.take_in_commits()?;
        }
    }

    /// Whether the removal of `packs`, begun on the view of `generation`,
    /// lost a shared medium's head race: another writer's commit was taken
    /// in before it was published, so it was dropped (the packs stay and
    /// are loaded again here; a later run judges them on the new view).
    fn lost_race<T>(&self, outcome: &Result<T>, generation: u64, packs: &[u32]) -> Result<bool> {
        let moved = match outcome {
            Err(error) => error.is_head_moved(),
            Ok(_) => self.inner.storage.generation() != generation,
        };
        if !moved {
            return Ok(false);
        }
        let condemned = self.inner.chunks.condemned_on_medium()?;
        let published = outcome.is_ok() && packs.iter().all(|pack| condemned.contains(pack));
        if published {
            return Ok(false);
        }
        self.take_in_commits()?;
        Ok(true)
    }

    /// Copies every indexed record of each of `packs` into a new pack and
    /// removes the old one, as a compaction that keeps everything: how
    /// `repair` replaces a pack whose file header is damaged (sealed packs
    /// are never modified in place).
    pub(crate) fn rewrite_packs(&self, packs: &[u32]) -> Result<()> {
        let _maintenance = self.inner.maintenance.lock();
        let chunks = &self.inner.chunks;
        let keep_all = |_: &ChunkId| true;
        for pack in packs {
            let mut compaction = self.poison_on_io(chunks.begin_compaction(&[*pack]))?;
            if let Err(error) = chunks.copy_live(&mut compaction, &keep_all, &mut |_| true) {
                self.poison_on_io(chunks.abandon_compaction(compaction))?;
                return Err(error);
            }
            let exclusive = self.inner.reference_guard.write();
            self.poison_on_io(chunks.finish_compaction(compaction, &keep_all))?;
            drop(exclusive);
        }
        Ok(())
    }

    /// Whether every pending snapshot has its journal, as a checkpoint
    /// segment says they all do: snapshots started by an older format,
    /// which made it at their first put, get theirs now. `false` (the
    /// checkpoint waits for a later run) if one cannot be made.
    fn journals_ready_for_checkpoint(&self) -> bool {
        let sessions: Vec<_> = self.inner.sessions.read().values().cloned().collect();
        sessions.iter().all(|session| {
            session
                .ensure_journal_locked(self.inner.storage.as_ref())
                .is_ok()
        })
    }

    /// [`Engine::collect_garbage`] on tokio's blocking pool.
    pub async fn collect_garbage_async(&self, options: GcOptions) -> Result<GcReport> {
        self.run_blocking(move |engine| engine.collect_garbage(options))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_merges_the_emptiest_packs_up_to_one_output_pack() {
        let usage = |pack, live_bytes| PackUsage {
            pack,
            record_bytes: 100,
            live_bytes,
            damaged: false,
        };
        let groups = plan(
            vec![usage(1, 40), usage(2, 10), usage(3, 30), usage(4, 45)],
            80,
        );
        assert_eq!(groups, vec![vec![2, 3, 1], vec![4]]);
    }
}
