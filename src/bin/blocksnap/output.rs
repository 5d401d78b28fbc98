//! What the commands print: text for people (sizes made readable,
//! summaries on stderr), JSON for scripts (on stdout, errors as JSON on
//! stderr), progress on stderr: a bar on a terminal, a line every few
//! seconds on a log.

use blocksnap::api::SnapshotDescription;
use blocksnap::archive::{ExportReport, ImportReport};
use blocksnap::engine::{
    DamagedChunk, GcReport, RepairReport, SnapshotStats, StoreStats, VerifyReport,
};
use blocksnap::error::Damage;
use blocksnap::ids::SnapshotId;
use blocksnap::volume::retention::Decision;
use blocksnap::volume::{BackupReport, RestoreReport};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What `forget` decided (per volume, newest first) and did.
pub struct ForgetOutcome<'a> {
    /// Each volume and its decisions.
    pub judged: &'a [(String, Vec<Decision>)],
    /// The time zone of the periods.
    pub zone: &'a jiff::tz::TimeZone,
    /// Nothing was removed.
    pub dry_run: bool,
    /// The snapshots removed.
    pub removed: &'a [SnapshotId],
    /// Removals that failed, with why.
    pub failed: &'a [(SnapshotId, blocksnap::Error)],
    /// Completed snapshots left alone for recording no volume.
    pub without_volume: usize,
    /// The collection run after (`--gc`).
    pub collected: Option<&'a GcReport>,
}

/// How the command reports.
pub struct Output {
    json: bool,
    quiet: bool,
    /// Time between progress lines when stderr is not a terminal.
    progress_interval: Duration,
}

/// A progress display: a bar on a terminal, a line every few seconds on
/// a log (cron, a systemd journal), or nothing (`--quiet`).
pub struct Bar(Display);

enum Display {
    Nothing,
    Terminal(ProgressBar),
    Lines(Arc<ProgressLines>),
}

/// Progress written as lines (text, or JSON objects under `--json`) by a
/// thread of its own, every interval until the operation finishes.
struct ProgressLines {
    label: String,
    total: Option<u64>,
    done: AtomicU64,
    started: Instant,
    json: bool,
    finished: Mutex<bool>,
    wake: Condvar,
}

impl ProgressLines {
    fn start(
        label: &str,
        total: Option<u64>,
        json: bool,
        interval: Duration,
    ) -> Arc<ProgressLines> {
        let lines = Arc::new(ProgressLines {
            label: label.to_string(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            json,
            finished: Mutex::new(false),
            wake: Condvar::new(),
        });
        let writer = lines.clone();
        std::thread::spawn(move || {
            let mut finished = writer.finished.lock();
            loop {
                writer.wake.wait_for(&mut finished, interval);
                if *finished {
                    return;
                }
                eprintln!("{}", writer.line());
            }
        });
        lines
    }

    /// The line for now: done so far, of how much, rate and time left.
    fn line(&self) -> String {
        let done = self.done.load(Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = done as f64 / seconds.max(1e-9);
        if self.json {
            return json!({"Progress": {
                "Operation": self.label,
                "Bytes": done,
                "TotalBytes": self.total,
                "Seconds": (seconds * 10.0).round() / 10.0,
            }})
            .to_string();
        }
        match self.total {
            Some(total) if total > 0 => {
                let left = total.saturating_sub(done) as f64 / rate.max(1.0);
                format!(
                    "blocksnap: {}: {} of {} ({:.0}%), {}/s, {:.0} s elapsed, about {:.0} s left",
                    self.label,
                    HumanBytes(done),
                    HumanBytes(total),
                    done as f64 * 100.0 / total as f64,
                    HumanBytes(rate as u64),
                    seconds,
                    left
                )
            }
            _ => format!("blocksnap: {}: running for {seconds:.0} s", self.label),
        }
    }

    fn finish(&self) {
        *self.finished.lock() = true;
        self.wake.notify_all();
    }
}

impl Bar {
    /// Counts `bytes` more done (callable from any worker).
    pub fn advance(&self, bytes: u64) {
        match &self.0 {
            Display::Nothing => {}
            Display::Terminal(bar) => bar.inc(bytes),
            Display::Lines(lines) => {
                lines.done.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }

    /// Removes the bar, or stops the lines.
    pub fn finish(&self) {
        match &self.0 {
            Display::Nothing => {}
            Display::Terminal(bar) => bar.finish_and_clear(),
            Display::Lines(lines) => lines.finish(),
        }
    }
}

impl Drop for Bar {
    /// An operation that failed stops its lines too.
    fn drop(&mut self) {
        if let Display::Lines(lines) = &self.0 {
            lines.finish();
        }
    }
}

/// An instant as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn utc(time: SystemTime) -> String {
    blocksnap::clock::utc_seconds(time)
}

/// One damaged or lost chunk, `verb` first, then each range of blocks it
/// breaks.
fn print_damaged_chunk(verb: &str, damaged: &DamagedChunk) {
    let chunk = damaged
        .chunk
        .map_or_else(|| "unknown chunk".to_string(), |chunk| chunk.to_string());
    println!("{verb} {chunk}: {}", damaged.detail);
    for affected in &damaged.affected {
        println!(
            "  breaks {} blocks {}..={}",
            affected.snapshot_id, affected.first_block, affected.last_block
        );
    }
}

fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// A report with the verdict computed from it, for `--json`: the report's
/// fields as the library serializes them, and `Clean` (verify) or
/// `LostAnything` and `FoundAnything` (repair) beside them.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Verdict<'a, T: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    clean: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_anything: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    found_anything: Option<bool>,
    #[serde(flatten)]
    report: &'a T,
}

/// The volume a snapshot's tags name.
fn volume_tag(tags: &[blocksnap::api::Tag]) -> Option<&str> {
    tags.iter()
        .find(|tag| tag.key == blocksnap::volume::VOLUME_TAG)
        .map(|tag| tag.value.as_str())
}

fn description_json(description: &SnapshotDescription) -> Value {
    let snapshot = &description.snapshot;
    json!({
        "SnapshotId": snapshot.snapshot_id,
        "OwnerId": snapshot.owner_id,
        "Status": snapshot.status.as_str(),
        "StartTime": utc(snapshot.start_time),
        "VolumeSize": snapshot.volume_size,
        "ParentSnapshotId": snapshot.parent_snapshot_id,
        "Description": snapshot.description,
        "Volume": volume_tag(&snapshot.tags),
        "Tags": snapshot.tags.iter().map(|tag| json!({"Key": tag.key, "Value": tag.value})).collect::<Vec<_>>(),
        "SseType": snapshot.sse_type.as_str(),
        "KmsKeyArn": snapshot.kms_key_arn,
        "CompletionTime": description.completion_time.map(utc),
        "ChangedBlocksCount": description.changed_blocks_count,
        "ErrorTime": description.error_time.map(utc),
        "ErrorReason": description.error_reason,
    })
}

impl Output {
    /// Text or JSON, with or without stderr chatter; progress lines every
    /// `progress_interval` when stderr is not a terminal.
    pub fn new(json: bool, quiet: bool, progress_interval: Duration) -> Output {
        Output {
            json,
            quiet,
            progress_interval,
        }
    }

    /// One line on stderr, whatever the mode.
    pub fn error(&self, message: &str) {
        eprintln!("blocksnap: error: {message}");
    }

    /// The error that ends the command, on stderr: a line, or under
    /// `--json` one object `{"Error": {"Kind", "Message", "ExitCode"}}`.
    pub fn fail(&self, kind: &str, message: &str, exit_code: u8) {
        if self.json {
            eprintln!(
                "{}",
                json!({"Error": {"Kind": kind, "Message": message, "ExitCode": exit_code}})
            );
        } else {
            self.error(message);
        }
    }

    /// The requests a command sent to a bucket store's service, on stderr
    /// unless quiet (requests are what object storage bills).
    pub fn bucket_requests(&self, requests: &blocksnap::storage::object::RequestCounts) {
        self.note(&format!(
            "bucket requests: {} GET, {} PUT, {} HEAD, {} LIST, {} DELETE; {} commit races lost",
            requests.get,
            requests.put,
            requests.head,
            requests.list,
            requests.delete,
            requests.lost_races
        ));
    }

    /// A line on stderr unless quiet.
    pub fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }

    /// Progress over `total` bytes on stderr: a bar on a terminal (not
    /// under `--json`), else a line every progress interval; nothing when
    /// quiet.
    pub fn progress(&self, label: &str, total: u64) -> Bar {
        self.display(label, Some(total))
    }

    /// Progress of a long operation without a known total (gc, verify):
    /// a spinner with the elapsed time, or lines, under the same rules as
    /// [`Output::progress`].
    pub fn spinner(&self, label: &str) -> Bar {
        self.display(label, None)
    }

    fn display(&self, label: &str, total: Option<u64>) -> Bar {
        if self.quiet {
            return Bar(Display::Nothing);
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Bar(Display::Lines(ProgressLines::start(
                label,
                total,
                self.json,
                self.progress_interval,
            )));
        }
        if self.json {
            return Bar(Display::Nothing);
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = match total {
            Some(_) => "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed} left {eta}",
            None => "{spinner} {prefix} {elapsed}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        if total.is_none() {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Bar(Display::Terminal(bar))
    }

    /// A finished backup: the id alone on stdout (or the JSON report).
    pub fn backup(&self, report: &BackupReport) {
        let seconds = report.elapsed.as_secs_f64();
        if self.json {
            print_json(report);
            return;
        }
        println!("{}", report.snapshot_id);
        let against = match &report.parent {
            Some(parent) => format!("incrementally against {parent}"),
            None => "in full".to_string(),
        };
        let volume = report
            .volume
            .as_deref()
            .map_or(String::new(), |volume| format!(" of volume {volume}"));
        self.note(&format!(
            "backed up {}{volume} {against} in {seconds:.2} s ({}/s): {} blocks written, {} unchanged, {} zero skipped",
            HumanBytes(report.image_bytes),
            HumanBytes((report.image_bytes as f64 / seconds.max(1e-9)) as u64),
            report.blocks_written,
            report.blocks_unchanged,
            report.zero_blocks_skipped,
        ));
    }

    /// A finished restore.
    pub fn export(&self, report: &ExportReport) {
        let seconds = report.elapsed.as_secs_f64();
        if self.json {
            print_json(report);
            return;
        }
        println!("{}", report.location);
        self.note(&format!(
            "exported {} blocks into {} in {seconds:.2} s ({}/s of blocks)",
            report.blocks,
            HumanBytes(report.archive_bytes),
            HumanBytes((report.blocks as f64 * 524_288.0 / seconds.max(1e-9)) as u64),
        ));
    }

    pub fn import(&self, report: &ImportReport) {
        let seconds = report.elapsed.as_secs_f64();
        if self.json {
            print_json(report);
            return;
        }
        println!("{}", report.snapshot_id);
        self.note(&format!(
            "imported {} blocks from {} in {seconds:.2} s ({}/s of blocks): {} written, {} unchanged",
            report.blocks,
            HumanBytes(report.archive_bytes),
            HumanBytes((report.blocks as f64 * 524_288.0 / seconds.max(1e-9)) as u64),
            report.blocks_written,
            report.blocks_unchanged,
        ));
    }

    pub fn restore(&self, report: &RestoreReport) {
        if self.json {
            print_json(report);
            return;
        }
        self.note(&format!(
            "restored {} ({} blocks written{}, {} holes) in {:.2} s",
            HumanBytes(report.bytes),
            report.blocks_written,
            if report.direct_io {
                " with direct I/O"
            } else {
                ""
            },
            report.holes,
            report.elapsed.as_secs_f64()
        ));
    }

    /// The snapshot list.
    pub fn snapshots(&self, snapshots: &[SnapshotDescription], with_owner: bool) {
        if self.json {
            print_json(&Value::Array(
                snapshots.iter().map(description_json).collect(),
            ));
            return;
        }
        let owner_column = |owner: &str| {
            if with_owner {
                format!("{owner:<13} ")
            } else {
                String::new()
            }
        };
        println!(
            "{}{:<21} {:<9} {:<20} {:>7}  {:<21} {:<24} DESCRIPTION",
            owner_column("OWNER"),
            "SNAPSHOT",
            "STATUS",
            "STARTED",
            "SIZE",
            "PARENT",
            "VOLUME"
        );
        for description in snapshots {
            let snapshot = &description.snapshot;
            println!(
                "{}{:<21} {:<9} {:<20} {:>7}  {:<21} {:<24} {}",
                owner_column(&snapshot.owner_id),
                snapshot.snapshot_id,
                snapshot.status.as_str(),
                utc(snapshot.start_time),
                format!("{} GiB", snapshot.volume_size),
                snapshot.parent_snapshot_id.as_deref().unwrap_or("-"),
                volume_tag(&snapshot.tags).unwrap_or("-"),
                snapshot.description.as_deref().unwrap_or(""),
            );
        }
    }

    /// A snapshot's tags after `tag`: `KEY=VALUE` lines (or the JSON
    /// object `{"SnapshotId", "Tags": [{"Key", "Value"}]}`).
    pub fn tags(&self, snapshot: &str, tags: &[(String, String)]) {
        if self.json {
            print_json(&json!({
                "SnapshotId": snapshot,
                "Tags": tags.iter().map(|(key, value)| json!({"Key": key, "Value": value})).collect::<Vec<_>>(),
            }));
            return;
        }
        for (key, value) in tags {
            println!("{key}={value}");
        }
    }

    /// One snapshot in detail.
    pub fn show(&self, description: &SnapshotDescription, stats: Option<&SnapshotStats>) {
        let mut value = description_json(description);
        let stats_json = stats.and_then(|stats| serde_json::to_value(stats).ok());
        if let (Some(Value::Object(stats)), Some(object)) = (stats_json, value.as_object_mut()) {
            object.extend(stats);
        }
        if self.json {
            print_json(&value);
            return;
        }
        let snapshot = &description.snapshot;
        println!("snapshot     {}", snapshot.snapshot_id);
        println!("status       {}", snapshot.status.as_str());
        println!("started      {}", utc(snapshot.start_time));
        if let Some(completed) = description.completion_time {
            println!("completed    {}", utc(completed));
        }
        if let Some(reason) = &description.error_reason {
            println!("error        {reason}");
        }
        println!("size         {} GiB", snapshot.volume_size);
        println!("volume       {}", volume_tag(&snapshot.tags).unwrap_or("-"));
        println!(
            "parent       {}",
            snapshot.parent_snapshot_id.as_deref().unwrap_or("-")
        );
        println!(
            "description  {}",
            snapshot.description.as_deref().unwrap_or("-")
        );
        for tag in &snapshot.tags {
            println!("tag          {}={}", tag.key, tag.value);
        }
        match &snapshot.kms_key_arn {
            Some(key) => println!("encryption   {} ({key})", snapshot.sse_type.as_str()),
            None => println!("encryption   none"),
        }
        if let Some(stats) = stats {
            println!(
                "data         {} (written in this snapshot: {})",
                HumanBytes(stats.logical_bytes),
                HumanBytes(stats.written_bytes)
            );
            println!(
                "unique       {} (freed by deleting it)",
                HumanBytes(stats.unique_bytes)
            );
        }
    }

    /// Changed block indexes, one per line.
    pub fn diff(&self, indexes: &[i32]) {
        if self.json {
            print_json(&json!({ "ChangedBlocks": indexes }));
            return;
        }
        let mut text = String::with_capacity(indexes.len() * 8);
        for index in indexes {
            text.push_str(&index.to_string());
            text.push('\n');
        }
        print!("{text}");
    }

    /// The writers registered in a bucket store's head, one per line: id
    /// in hex, epoch, and whether it is this process's local directory.
    pub fn writers(&self, writers: &[blocksnap::format::head::RegisteredWriter], own: [u8; 16]) {
        let hex = |id: &[u8; 16]| blocksnap::storage::hex_id(id);
        if self.json {
            let listed: Vec<Value> = writers
                .iter()
                .map(|writer| {
                    json!({"WriterId": hex(&writer.id), "Epoch": writer.epoch, "ThisDirectory": writer.id == own})
                })
                .collect();
            print_json(&json!({ "Writers": listed }));
            return;
        }
        for writer in writers {
            let mark = if writer.id == own {
                "  (this directory)"
            } else {
                ""
            };
            println!("{}  epoch {}{mark}", hex(&writer.id), writer.epoch);
        }
    }

    /// A command that only changes state.
    pub fn done(&self, value: Value, text: &str) {
        if self.json {
            print_json(&value);
        } else {
            self.note(text);
        }
    }

    /// A collection.
    pub fn gc(&self, report: &GcReport) {
        if self.json {
            print_json(report);
            return;
        }
        println!(
            "freed {} ({} compactions, {} packs removed, {} copied) in {:.2} s",
            HumanBytes(report.bytes_freed + report.catalog_bytes_freed),
            report.compactions,
            report.packs_removed,
            HumanBytes(report.bytes_copied),
            report.elapsed.as_secs_f64()
        );
    }

    /// What `forget` decided and did: per volume, each snapshot kept (with
    /// the rules that keep it) or removed; then the collection, if any.
    pub fn forget(&self, outcome: &ForgetOutcome) {
        let local = |millis: u64| {
            i64::try_from(millis)
                .ok()
                .and_then(|millis| jiff::Timestamp::from_millisecond(millis).ok())
                .map(|instant| {
                    instant
                        .to_zoned(outcome.zone.clone())
                        .strftime("%Y-%m-%dT%H:%M:%S%:z")
                        .to_string()
                })
                .unwrap_or_default()
        };
        let failed = |snapshot: &SnapshotId| {
            outcome
                .failed
                .iter()
                .find(|(id, _)| id == snapshot)
                .map(|(_, error)| error.to_string())
        };
        if self.json {
            let volumes: Vec<Value> = outcome
                .judged
                .iter()
                .map(|(volume, decisions)| {
                    let entry = |decision: &Decision| {
                        json!({
                            "SnapshotId": decision.snapshot.to_string(),
                            "StartTime": local(decision.start_millis),
                            "Reasons": decision.reasons,
                            "Error": failed(&decision.snapshot),
                        })
                    };
                    json!({
                        "Volume": volume,
                        "Keep": decisions.iter().filter(|d| d.keep).map(entry).collect::<Vec<_>>(),
                        "Remove": decisions.iter().filter(|d| !d.keep).map(entry).collect::<Vec<_>>(),
                    })
                })
                .collect();
            print_json(&json!({
                "DryRun": outcome.dry_run,
                "Volumes": volumes,
                "Removed": outcome.removed.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
                "SnapshotsWithoutVolume": outcome.without_volume,
                "Gc": outcome.collected,
            }));
            return;
        }
        let remove_word = if outcome.dry_run {
            "would remove"
        } else {
            "remove"
        };
        for (volume, decisions) in outcome.judged {
            let kept = decisions.iter().filter(|decision| decision.keep).count();
            println!(
                "volume {volume}: keep {kept}, {remove_word} {}",
                decisions.len() - kept
            );
            for decision in decisions.iter() {
                let when = local(decision.start_millis);
                if decision.keep {
                    println!(
                        "  keep   {} {when}  {}",
                        decision.snapshot,
                        decision.reasons.join(", ")
                    );
                } else {
                    match failed(&decision.snapshot) {
                        Some(error) => println!("  FAILED {} {when}  {error}", decision.snapshot),
                        None => println!(
                            "  {:<6} {} {when}",
                            if outcome.dry_run { "(rm)" } else { "rm" },
                            decision.snapshot
                        ),
                    }
                }
            }
        }
        if outcome.judged.is_empty() {
            println!("no completed snapshot records a volume: nothing to judge");
        }
        if outcome.without_volume > 0 {
            self.note(&format!(
                "{} completed snapshots record no volume (uploaded through the EBS API): forget leaves them alone",
                outcome.without_volume
            ));
        }
        if let Some(report) = outcome.collected {
            self.gc(report);
        }
    }

    /// A verification.
    pub fn verify(&self, report: &VerifyReport) {
        if self.json {
            print_json(&Verdict {
                clean: Some(report.is_clean()),
                lost_anything: None,
                found_anything: None,
                report,
            });
            return;
        }
        println!(
            "checked {} records ({}) and {} catalog records in {:.2} s",
            report.records_checked,
            HumanBytes(report.bytes_checked),
            report.catalog_records,
            report.elapsed.as_secs_f64()
        );
        if let Some(error) = &report.catalog_error {
            println!("catalog: {error}");
        }
        for damage in &report.damaged_files {
            println!("damaged {damage}");
        }
        for (snapshot, why) in &report.unprovable {
            println!("unprovable {snapshot}: {why}");
        }
        for damaged in &report.damaged {
            print_damaged_chunk("damaged", damaged);
        }
        println!(
            "{}",
            if report.is_clean() {
                "clean"
            } else {
                "DAMAGED"
            }
        );
    }

    /// A repair.
    pub fn repair(&self, report: &RepairReport, key_file_damage: &[Damage]) {
        if self.json {
            // The key file lives outside the store; its damaged copies are
            // reported with the store's.
            let mut report = report.clone();
            report.small_files.extend(key_file_damage.iter().cloned());
            print_json(&Verdict {
                clean: None,
                lost_anything: Some(report.lost_anything()),
                found_anything: Some(report.found_anything()),
                report: &report,
            });
            return;
        }
        let would = if report.dry_run { "would be " } else { "" };
        for damage in report.small_files.iter().chain(key_file_damage) {
            println!(
                "copy {}: {} ({would}restored from its twin)",
                damage.file, damage.detail
            );
        }
        for pack in &report.packs {
            let unreadable: Vec<String> = pack
                .unreadable
                .iter()
                .map(|range| format!("{}..{}", range.start, range.end))
                .collect();
            println!(
                "pack {:08x}: {} records; {} recovered, {} dropped{}; index {}",
                pack.pack,
                pack.records,
                pack.recovered,
                pack.dropped,
                if unreadable.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; unreadable bytes {} (records there lost)",
                        unreadable.join(", ")
                    )
                },
                if pack.index_rewritten {
                    format!("{would}rewritten")
                } else {
                    "unchanged".to_string()
                }
            );
            if pack.removed {
                println!(
                    "pack {:08x}: no valid record left; {would}removed",
                    pack.pack
                );
            }
            if pack.header_damaged {
                println!(
                    "pack {:08x}: file header damaged; the pack {would}copied into a new one",
                    pack.pack
                );
            }
        }
        for damage in &report.catalog_damage {
            println!("catalog: {damage}");
        }
        if report.catalog_rewritten {
            println!("catalog {would}rewritten from what survives");
        }
        for journal in &report.journals {
            println!(
                "journal of {}: {} records kept, {} puts lost{}",
                journal.snapshot_id,
                journal.records,
                journal.lost,
                if journal.header_damaged {
                    ", header rebuilt"
                } else {
                    ""
                }
            );
        }
        for (snapshot, why) in &report.resolved {
            println!("{snapshot} {would}resolved to error: {why}");
        }
        for damaged in &report.damaged_chunks {
            print_damaged_chunk("lost", damaged);
        }
        if let Some(why) = &report.not_verified {
            println!("not verified: {why}");
        }
        println!("{} completed snapshots intact", report.intact.len());
        println!(
            "{}",
            match (
                report.lost_anything(),
                report.found_anything() || !key_file_damage.is_empty()
            ) {
                (true, _) => "LOST DATA (listed above)",
                (false, true) if report.dry_run => "repairable: nothing lost",
                (false, true) => "repaired: nothing lost",
                (false, false) => "nothing to repair",
            }
        );
    }

    /// Store statistics.
    pub fn stats(&self, stats: &StoreStats) {
        if self.json {
            print_json(stats);
            return;
        }
        println!(
            "snapshots    {} completed, {} pending, {} failed",
            stats.completed_snapshots, stats.pending_snapshots, stats.failed_snapshots
        );
        println!(
            "logical      {} (written: {})",
            HumanBytes(stats.logical_bytes),
            HumanBytes(stats.written_bytes)
        );
        println!(
            "stored       {} in {} chunks",
            HumanBytes(stats.stored_bytes),
            stats.stored_chunks
        );
        println!(
            "live         {} in {} chunks",
            HumanBytes(stats.live_bytes),
            stats.live_chunks
        );
        println!(
            "garbage      {} (reclaim with gc)",
            HumanBytes(stats.garbage_bytes)
        );
    }
}
