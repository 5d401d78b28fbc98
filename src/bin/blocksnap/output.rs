//! What the commands print: text for people (sizes made readable,
//! summaries on stderr), JSON for scripts (on stdout), progress bars on
//! stderr when it is a terminal.

use blocksnap::api::SnapshotDescription;
use blocksnap::archive::{ExportReport, ImportReport};
use blocksnap::engine::{
    DamagedChunk, GcReport, RepairReport, SnapshotStats, StoreStats, VerifyReport,
};
use blocksnap::error::Damage;
use blocksnap::volume::{BackupReport, RestoreReport};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// How the command reports.
pub struct Output {
    json: bool,
    quiet: bool,
}

/// A progress bar, or nothing when it would not be seen.
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// Counts `bytes` more done (callable from any worker).
    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
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

/// One damaged or lost chunk and the blocks it breaks, for `--json`.
fn damaged_chunk_json(damaged: &DamagedChunk) -> Value {
    json!({
        "Chunk": damaged.chunk.map(|chunk| chunk.to_string()),
        "Detail": damaged.detail,
        "Affected": damaged.affected.iter().map(|affected| json!({
            "SnapshotId": affected.snapshot_id,
            "FirstBlock": affected.first_block,
            "LastBlock": affected.last_block,
        })).collect::<Vec<_>>(),
    })
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn description_json(description: &SnapshotDescription) -> Value {
    let snapshot = &description.snapshot;
    json!({
        "SnapshotId": snapshot.snapshot_id,
        "Status": snapshot.status.as_str(),
        "StartTime": utc(snapshot.start_time),
        "VolumeSize": snapshot.volume_size,
        "ParentSnapshotId": snapshot.parent_snapshot_id,
        "Description": snapshot.description,
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
    /// Text or JSON, with or without stderr chatter.
    pub fn new(json: bool, quiet: bool) -> Output {
        Output { json, quiet }
    }

    /// One line on stderr, whatever the mode.
    pub fn error(&self, message: &str) {
        eprintln!("blocksnap: error: {message}");
    }

    /// A line on stderr unless quiet.
    fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }

    /// A progress bar over `total` bytes, drawn on stderr only when it is
    /// a terminal and the output is neither quiet nor JSON.
    pub fn progress(&self, label: &str, total: u64) -> Bar {
        if self.quiet || self.json {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed} left {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        Bar(Some(bar))
    }

    /// A spinner with the elapsed time, for long operations without a known
    /// total (gc, verify); drawn under the same rules as [`Output::progress`].
    pub fn spinner(&self, label: &str) -> Bar {
        if self.quiet || self.json {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Bar(Some(bar))
    }

    /// A finished backup: the id alone on stdout (or the JSON report).
    pub fn backup(&self, report: &BackupReport) {
        let seconds = report.elapsed.as_secs_f64();
        if self.json {
            print_json(&json!({
                "SnapshotId": report.snapshot_id,
                "ImageBytes": report.image_bytes,
                "BlocksRead": report.blocks_read,
                "BlocksWritten": report.blocks_written,
                "BlocksUnchanged": report.blocks_unchanged,
                "ZeroBlocksSkipped": report.zero_blocks_skipped,
                "Seconds": seconds,
            }));
            return;
        }
        println!("{}", report.snapshot_id);
        self.note(&format!(
            "backed up {} in {seconds:.2} s ({}/s): {} blocks written, {} unchanged, {} zero skipped",
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
            print_json(&json!({
                "Key": report.key,
                "Location": report.location,
                "Blocks": report.blocks,
                "ArchiveBytes": report.archive_bytes,
                "RootHash": report.root_hash,
                "Seconds": seconds,
            }));
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
            print_json(&json!({
                "SnapshotId": report.snapshot_id,
                "Blocks": report.blocks,
                "BlocksWritten": report.blocks_written,
                "BlocksUnchanged": report.blocks_unchanged,
                "ArchiveBytes": report.archive_bytes,
                "Seconds": seconds,
            }));
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

    pub fn restore(&self, snapshot: &str, report: &RestoreReport) {
        if self.json {
            print_json(&json!({
                "SnapshotId": snapshot,
                "Bytes": report.bytes,
                "BlocksWritten": report.blocks_written,
                "Holes": report.holes,
                "DirectIo": report.direct_io,
                "SecondsBeforeSync": report.written_after.as_secs_f64(),
                "Seconds": report.elapsed.as_secs_f64(),
            }));
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
    pub fn snapshots(&self, snapshots: &[SnapshotDescription]) {
        if self.json {
            print_json(&Value::Array(
                snapshots.iter().map(description_json).collect(),
            ));
            return;
        }
        println!(
            "{:<21} {:<9} {:<20} {:>7}  {:<21} DESCRIPTION",
            "SNAPSHOT", "STATUS", "STARTED", "SIZE", "PARENT"
        );
        for description in snapshots {
            let snapshot = &description.snapshot;
            println!(
                "{:<21} {:<9} {:<20} {:>7}  {:<21} {}",
                snapshot.snapshot_id,
                snapshot.status.as_str(),
                utc(snapshot.start_time),
                format!("{} GiB", snapshot.volume_size),
                snapshot.parent_snapshot_id.as_deref().unwrap_or("-"),
                snapshot.description.as_deref().unwrap_or(""),
            );
        }
    }

    /// One snapshot in detail.
    pub fn show(&self, description: &SnapshotDescription, stats: Option<&SnapshotStats>) {
        let mut value = description_json(description);
        if let (Some(stats), Some(object)) = (stats, value.as_object_mut()) {
            object.insert("LogicalBytes".into(), json!(stats.logical_bytes));
            object.insert("WrittenBytes".into(), json!(stats.written_bytes));
            object.insert("UniqueBytes".into(), json!(stats.unique_bytes));
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
        println!("volume       {} GiB", snapshot.volume_size);
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
            print_json(&json!({
                "PacksExamined": report.packs_examined,
                "Compactions": report.compactions,
                "PacksRemoved": report.packs_removed,
                "BytesCopied": report.bytes_copied,
                "BytesFreed": report.bytes_freed,
                "CatalogBytesFreed": report.catalog_bytes_freed,
                "DamagedPacks": report.packs_damaged,
                "Seconds": report.elapsed.as_secs_f64(),
            }));
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

    /// A verification.
    pub fn verify(&self, report: &VerifyReport) {
        if self.json {
            print_json(&json!({
                "Clean": report.is_clean(),
                "RecordsChecked": report.records_checked,
                "BytesChecked": report.bytes_checked,
                "CatalogRecords": report.catalog_records,
                "CatalogError": report.catalog_error,
                "Damaged": report.damaged.iter().map(damaged_chunk_json).collect::<Vec<_>>(),
                "DamagedFiles": report.damaged_files.iter().map(|damage| json!({
                    "File": damage.file,
                    "Detail": damage.detail,
                    "DataLost": damage.data_lost,
                })).collect::<Vec<_>>(),
                "Unprovable": report.unprovable.iter().map(|(snapshot, why)| json!({
                    "SnapshotId": snapshot,
                    "Reason": why,
                })).collect::<Vec<_>>(),
                "Seconds": report.elapsed.as_secs_f64(),
            }));
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
        let damage_json = |damage: &Damage| json!({"File": damage.file, "Detail": damage.detail, "DataLost": damage.data_lost});
        if self.json {
            print_json(&json!({
                "DryRun": report.dry_run,
                "LostAnything": report.lost_anything(),
                "FoundAnything": report.found_anything() || !key_file_damage.is_empty(),
                "DamagedCopies": report.small_files.iter().chain(key_file_damage).map(damage_json).collect::<Vec<_>>(),
                "Packs": report.packs.iter().map(|pack| json!({
                    "Pack": pack.pack,
                    "Records": pack.records,
                    "Recovered": pack.recovered,
                    "Dropped": pack.dropped,
                    "Unreadable": pack.unreadable.iter().map(|range| [range.start, range.end]).collect::<Vec<_>>(),
                    "IndexRewritten": pack.index_rewritten,
                    "HeaderDamaged": pack.header_damaged,
                    "Removed": pack.removed,
                })).collect::<Vec<_>>(),
                "CatalogDamage": report.catalog_damage.iter().map(damage_json).collect::<Vec<_>>(),
                "CatalogRewritten": report.catalog_rewritten,
                "Journals": report.journals.iter().map(|journal| json!({
                    "SnapshotId": journal.snapshot_id,
                    "Records": journal.records,
                    "Lost": journal.lost,
                    "HeaderDamaged": journal.header_damaged,
                })).collect::<Vec<_>>(),
                "Resolved": report.resolved.iter().map(|(snapshot, why)| json!({
                    "SnapshotId": snapshot, "Reason": why,
                })).collect::<Vec<_>>(),
                "Intact": report.intact,
                "Damaged": report.damaged_chunks.iter().map(damaged_chunk_json).collect::<Vec<_>>(),
                "NotVerified": report.not_verified,
                "Seconds": report.elapsed.as_secs_f64(),
            }));
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
    pub fn stats(&self, stats: &StoreStats, chunks: u64) {
        if self.json {
            print_json(&json!({
                "PendingSnapshots": stats.pending_snapshots,
                "CompletedSnapshots": stats.completed_snapshots,
                "FailedSnapshots": stats.failed_snapshots,
                "LogicalBytes": stats.logical_bytes,
                "WrittenBytes": stats.written_bytes,
                "LiveChunks": stats.live_chunks,
                "LiveBytes": stats.live_bytes,
                "StoredChunks": chunks,
                "StoredBytes": stats.stored_bytes,
                "GarbageBytes": stats.garbage_bytes,
            }));
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
            "stored       {} in {chunks} chunks",
            HumanBytes(stats.stored_bytes)
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

#[cfg(test)]
mod tests {
    use super::utc;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn utc_dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_795_392_000)),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723)),
            "2000-02-29T01:02:03Z"
        );
    }
}
