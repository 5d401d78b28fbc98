//! Maintenance while serving: the collector and a sampled verification,
//! each on its own schedule, paced so that clients keep the disk, reported
//! in the log, in `/metrics` and, on damage, by `/health` (503).
//!
//! Runs go through the engine's own `collect_garbage` and `verify`, which
//! take the engine's maintenance lock: they never overlap each other, and
//! puts, completes and reads continue beside them (see DESIGN.md §10).
//! Each verification starts where the previous one ended, so with a sample
//! of `f` every chunk is read once in `1 / f` runs.

use crate::engine::{Engine, GcOptions, GcReport, VerifyOptions, VerifyReport};
use crate::error::Error;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What [`Maintenance`] runs, and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct MaintenanceSchedule {
    /// Time between the end of one collection and the start of the next
    /// (`None`: never).
    pub gc_interval: Option<Duration>,
    /// How each collection runs (threshold, pace).
    pub gc: GcOptions,
    /// Time between the end of one verification and the start of the
    /// next (`None`: never).
    pub verify_interval: Option<Duration>,
    /// Fraction of the chunks each verification reads (0.0 ..= 1.0).
    pub verify_sample: f64,
    /// Most record bytes per second a verification reads (`None`:
    /// unlimited).
    pub verify_max_bytes_per_sec: Option<u64>,
}

impl Default for MaintenanceSchedule {
    /// Nothing scheduled; when scheduled, a collection compacting packs
    /// more than a tenth dead and a verification of 5% of the chunks, each
    /// paced at 64 MiB/s.
    fn default() -> Self {
        MaintenanceSchedule {
            gc_interval: None,
            gc: GcOptions {
                max_bytes_per_sec: Some(64 << 20),
                ..GcOptions::default()
            },
            verify_interval: None,
            verify_sample: 0.05,
            verify_max_bytes_per_sec: Some(64 << 20),
        }
    }
}

/// The two kinds of run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Task {
    Gc,
    Verify,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Gc => "gc",
            Task::Verify => "verify",
        }
    }
}

/// How the last run of one task went.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LastRun {
    /// When it ended, in seconds since the Unix epoch.
    pub ended_at: f64,
    /// How long it took, in seconds.
    pub seconds: f64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// What maintenance has done since the server started
/// ([`Maintenance::report`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MaintenanceReport {
    /// Collections finished (failed ones included).
    pub gc_runs: u64,
    /// The last collection.
    pub last_gc: Option<LastRun>,
    /// Record bytes freed by every collection.
    pub gc_bytes_freed: u64,
    /// Verifications finished (failed ones included).
    pub verify_runs: u64,
    /// The last verification.
    pub last_verify: Option<LastRun>,
    /// Record bytes read by every verification.
    pub verify_bytes_checked: u64,
    /// Damage a run found, in a sentence, while it stands: from the
    /// first run that finds any until a verification of the whole store
    /// (sample 1.0) finds none. `/health` answers 503 meanwhile.
    pub damage: Option<String>,
}

/// The Prometheus metrics of maintenance (`blocksnap_maintenance_*`).
#[derive(Debug)]
struct MaintenanceMetrics {
    runs: Family<Vec<(&'static str, String)>, Counter>,
    last_run: Family<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>,
    last_duration: Family<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>,
    bytes_freed: Counter,
    bytes_checked: Counter,
    damage: Gauge,
}

impl MaintenanceMetrics {
    fn register(registry: &mut Registry) -> MaintenanceMetrics {
        let metrics = MaintenanceMetrics {
            runs: Family::default(),
            last_run: Family::default(),
            last_duration: Family::default(),
            bytes_freed: Counter::default(),
            bytes_checked: Counter::default(),
            damage: Gauge::default(),
        };
        registry.register(
            "maintenance_runs",
            "Maintenance runs by task (gc, verify) and result (ok, damage, failed)",
            metrics.runs.clone(),
        );
        registry.register(
            "maintenance_last_run_timestamp_seconds",
            "When the last run of each task ended (Unix time)",
            metrics.last_run.clone(),
        );
        registry.register(
            "maintenance_last_run_duration_seconds",
            "How long the last run of each task took",
            metrics.last_duration.clone(),
        );
        registry.register(
            "maintenance_gc_freed_bytes",
            "Record bytes freed by the collector",
            metrics.bytes_freed.clone(),
        );
        registry.register(
            "maintenance_verify_checked_bytes",
            "Record bytes read and checked by verification",
            metrics.bytes_checked.clone(),
        );
        registry.register(
            "maintenance_damage",
            "1 while a maintenance run has found damage that stands (then /health answers 503)",
            metrics.damage.clone(),
        );
        metrics
    }
}

/// Scheduled maintenance of one engine: started with
/// [`Maintenance::start`] inside a tokio runtime, stopped with
/// [`Maintenance::stop`] (a run under way is cancelled: the collector
/// undoes its current compaction, the verification stops).
#[derive(Debug)]
pub struct Maintenance {
    engine: Engine,
    schedule: MaintenanceSchedule,
    report: Mutex<MaintenanceReport>,
    /// Where the next verification's sample begins.
    next_sample_start: Mutex<f64>,
    metrics: MaintenanceMetrics,
    registry: Registry,
    cancel: AtomicBool,
    /// Wakes the loops' waits when the server stops.
    stop: tokio::sync::watch::Sender<bool>,
    loops: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Maintenance {
    /// Starts the schedule's loops on the current tokio runtime; nothing
    /// runs when neither interval is set. Each task first runs one
    /// interval after the start.
    pub fn start(engine: Engine, schedule: MaintenanceSchedule) -> Result<Arc<Maintenance>, Error> {
        if !(0.0..=1.0).contains(&schedule.verify_sample) || schedule.verify_sample == 0.0 {
            return Err(Error::invalid(
                crate::error::ValidationReason::InvalidParameterValue,
                "the verification sample must be within 0.0 (excluded) ..= 1.0",
            ));
        }
        if !(0.0..=1.0).contains(&schedule.gc.live_threshold) {
            return Err(Error::invalid(
                crate::error::ValidationReason::InvalidParameterValue,
                "the collector's live threshold must be within 0.0 ..= 1.0",
            ));
        }
        let mut registry = Registry::with_prefix("blocksnap");
        let metrics = MaintenanceMetrics::register(&mut registry);
        let maintenance = Arc::new(Maintenance {
            engine,
            schedule: schedule.clone(),
            report: Mutex::default(),
            next_sample_start: Mutex::new(0.0),
            metrics,
            registry,
            cancel: AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
            loops: Mutex::default(),
        });
        let tasks = [
            (Task::Gc, schedule.gc_interval),
            (Task::Verify, schedule.verify_interval),
        ];
        for (task, interval) in tasks {
            let Some(interval) = interval else { continue };
            let maintenance_for_loop = maintenance.clone();
            let handle = tokio::spawn(async move {
                maintenance_for_loop.run_every(task, interval).await;
            });
            maintenance.loops.lock().push(handle);
        }
        Ok(maintenance)
    }

    /// Runs `task` every `interval` until stopped.
    async fn run_every(self: Arc<Self>, task: Task, interval: Duration) {
        let mut stopped = self.stop.subscribe();
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            let this = self.clone();
            // A run that panicked is logged by the join error; the loop
            // goes on (the engine's own state is behind its locks).
            if let Err(error) = tokio::task::spawn_blocking(move || this.run(task)).await {
                tracing::error!(task = task.name(), %error, "maintenance run failed");
            }
        }
    }

    /// One run of `task`, recorded.
    fn run(&self, task: Task) {
        let started = Instant::now();
        let outcome = match task {
            Task::Gc => self.collect(),
            Task::Verify => self.verify(),
        };
        let seconds = started.elapsed().as_secs_f64();
        let ended_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        let mut report = self.report.lock();
        let (result, error) = match outcome {
            // Stopped by the server's shutdown: not counted as a run.
            Outcome::Cancelled => {
                tracing::info!(
                    task = task.name(),
                    seconds,
                    "maintenance run cancelled by shutdown; the next start runs it again"
                );
                return;
            }
            Outcome::Clean => ("ok", None),
            Outcome::Damage(sentence) => {
                tracing::warn!(task = task.name(), damage = %sentence, "maintenance found damage; run `blocksnap verify` (stop the server first for `repair`)");
                report.damage = Some(sentence);
                ("damage", None)
            }
            Outcome::Failed(error) => {
                tracing::error!(task = task.name(), %error, "maintenance run failed");
                ("failed", Some(error))
            }
        };
        let last = Some(LastRun {
            ended_at,
            seconds,
            error,
        });
        match task {
            Task::Gc => {
                report.gc_runs += 1;
                report.last_gc = last;
            }
            Task::Verify => {
                report.verify_runs += 1;
                report.last_verify = last;
            }
        }
        let labels = vec![("task", task.name().to_string())];
        self.metrics.last_run.get_or_create(&labels).set(ended_at);
        self.metrics
            .last_duration
            .get_or_create(&labels)
            .set(seconds);
        self.metrics
            .runs
            .get_or_create(&vec![
                ("task", task.name().to_string()),
                ("result", result.to_string()),
            ])
            .inc();
        self.metrics.damage.set(i64::from(report.damage.is_some()));
    }

    fn collect(&self) -> Outcome {
        let outcome = self
            .engine
            .collect_garbage_cancellable(self.schedule.gc, &self.cancel);
        match outcome {
            Ok(report) if report.interrupted => Outcome::Cancelled,
            Ok(report) => {
                self.count_gc(&report);
                if report.packs_damaged.is_empty() {
                    Outcome::Clean
                } else {
                    Outcome::Damage(format!(
                        "gc skipped damaged packs {:?}",
                        report.packs_damaged
                    ))
                }
            }
            // The collector refuses to run on incomplete reference counts
            // or unprovable snapshots: damage, not a passing failure.
            Err(error @ Error::Corrupted { .. }) => Outcome::Damage(error.to_string()),
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }

    fn count_gc(&self, report: &GcReport) {
        self.metrics.bytes_freed.inc_by(report.bytes_freed);
        self.report.lock().gc_bytes_freed += report.bytes_freed;
        tracing::info!(
            compactions = report.compactions,
            packs_removed = report.packs_removed,
            bytes_copied = report.bytes_copied,
            bytes_freed = report.bytes_freed,
            catalog_bytes_freed = report.catalog_bytes_freed,
            packs_remaining = report.packs_remaining,
            seconds = report.elapsed.as_secs_f64(),
            "gc finished"
        );
    }

    fn verify(&self) -> Outcome {
        let sample_start = *self.next_sample_start.lock();
        let options = VerifyOptions {
            sample_fraction: self.schedule.verify_sample,
            sample_start,
            threads: 1,
            max_bytes_per_sec: self.schedule.verify_max_bytes_per_sec,
        };
        let report = match self.engine.verify_cancellable(options, &self.cancel) {
            Ok(report) if report.interrupted => return Outcome::Cancelled,
            Ok(report) => report,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        *self.next_sample_start.lock() = report.next_sample_start;
        self.metrics.bytes_checked.inc_by(report.bytes_checked);
        self.report.lock().verify_bytes_checked += report.bytes_checked;
        tracing::info!(
            records = report.records_checked,
            bytes = report.bytes_checked,
            sample = self.schedule.verify_sample,
            sample_start,
            clean = report.is_clean(),
            seconds = report.elapsed.as_secs_f64(),
            "verify finished"
        );
        if report.is_clean() {
            // Only a check of everything proves earlier damage gone.
            if self.schedule.verify_sample >= 1.0 {
                self.report.lock().damage = None;
            }
            Outcome::Clean
        } else {
            Outcome::Damage(damage_sentence(&report))
        }
    }

    /// What maintenance has done so far.
    pub fn report(&self) -> MaintenanceReport {
        self.report.lock().clone()
    }

    /// The damage found, while it stands (see [`MaintenanceReport::damage`]).
    pub fn damage(&self) -> Option<String> {
        self.report.lock().damage.clone()
    }

    /// Appends the maintenance metrics (`blocksnap_maintenance_*`) to an
    /// OpenMetrics text, without its `# EOF` line.
    pub fn encode_metrics(&self, text: &mut String) {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(text, &self.registry);
    }

    /// Stops the loops: a run under way is cancelled, and awaited.
    pub async fn stop(&self) {
        self.cancel.store(true, Ordering::Release);
        self.stop.send_replace(true);
        let loops: Vec<_> = std::mem::take(&mut *self.loops.lock());
        for handle in loops {
            let _ = handle.await;
        }
    }
}

/// How one run ended.
enum Outcome {
    Clean,
    Damage(String),
    Failed(String),
    Cancelled,
}

/// A verification's findings in one sentence.
fn damage_sentence(report: &VerifyReport) -> String {
    let mut parts = Vec::new();
    if !report.damaged.is_empty() {
        parts.push(format!(
            "{} damaged or missing chunks",
            report.damaged.len()
        ));
    }
    if !report.damaged_files.is_empty() {
        parts.push(format!("{} damaged files", report.damaged_files.len()));
    }
    if let Some(error) = &report.catalog_error {
        parts.push(format!("catalog: {error}"));
    }
    if !report.unprovable.is_empty() {
        parts.push(format!(
            "{} snapshots whose state cannot be proven",
            report.unprovable.len()
        ));
    }
    format!("verify found {}", parts.join(", "))
}
