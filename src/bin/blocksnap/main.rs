//! `blocksnap`: back up raw disk images and block devices into a local
//! blocksnap store, incrementally, restore them byte-identical, and inspect
//! and maintain the store.
//!
//! Exit codes: 0 success, 1 failure (I/O, corruption, damage found by
//! verify), 2 bad usage or invalid arguments, 3 not found (snapshot, image
//! or key), 128 + the signal's number when interrupted (130 SIGINT, 143
//! SIGTERM, 129 SIGHUP; see `signals`).

mod args;
mod keys;
mod nbd;
mod output;
mod serve;
mod signals;

use args::{Cli, Command, ForgetArgs, StoreLocation};
use blocksnap::api::{
    validate, CancelSnapshotRequest, DeleteSnapshotRequest, DescribeSnapshotRequest, Ebs,
    ListChangedBlocksRequest,
};
use blocksnap::archive::{
    self, Bucket, ExportOptions, ExportOutcome, ImportOptions, ImportOutcome,
};
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::crypto::KeyProvider;
use blocksnap::engine::{GcOptions, RepairOptions, RequestedEncryption, VerifyOptions};
use blocksnap::error::Damage;
use blocksnap::ids::SnapshotId;
use blocksnap::nbd::{NbdClient, NbdSource};
use blocksnap::storage::object::{ObjectClient, RetryPolicy, S3ObjectStore, S3Settings};
use blocksnap::storage::{BucketOptions, BucketStorage, Presence, Storage};
use blocksnap::volume::{
    self, BackupOptions, BackupOutcome, BackupSource, RestoreOptions, RestoreOutcome,
};
use blocksnap::{Engine, EngineConfig, Error, PutDurability};
use clap::Parser;
use output::{ForgetOutcome, Output};
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;

/// Exit code of bad usage (clap uses it too).
const EXIT_USAGE: u8 = 2;
/// Exit code of a missing store, snapshot, image or key.
const EXIT_NOT_FOUND: u8 = 3;
/// Exit code of a store another process holds.
const EXIT_IN_USE: u8 = 4;
/// Exit code of a passphrase that does not open the key file.
const EXIT_WRONG_PASSPHRASE: u8 = 5;

/// What ended a command that did not succeed.
enum Failure {
    /// An engine error (its class picks the exit code).
    Engine(Error),
    /// Bad usage found after parsing (a malformed tag, a changed-block list).
    Usage(String),
    /// SIGINT, SIGTERM or SIGHUP: the command stopped and undid its work.
    Interrupted,
    /// The command ran and found a problem it reported (verify).
    Reported,
    /// The passphrase does not open the key file.
    WrongPassphrase(String),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Engine(error)
    }
}

fn main() -> ExitCode {
    cap_malloc_arenas();
    let cli = Cli::parse();
    let out = Output::new(cli.json, cli.quiet, cli.progress_interval);
    // The servers handle their own signals (graceful shutdown).
    if !matches!(cli.command, Command::Serve(_) | Command::Nbd(_)) {
        if let Err(error) = signals::install() {
            out.error(&format!("cannot install signal handlers: {error}"));
            return ExitCode::FAILURE;
        }
    }
    let outcome = run(&cli, &out);
    if let Some(client) = BUCKET_CLIENT.get() {
        out.bucket_requests(&client.requests());
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Interrupted) => {
            let code = signals::exit_code();
            out.fail(
                "Interrupted",
                &format!(
                    "interrupted by {}; nothing was left half done and the store is consistent",
                    signals::received_name()
                ),
                code,
            );
            ExitCode::from(code)
        }
        Err(Failure::Reported) => ExitCode::FAILURE,
        Err(Failure::Usage(message)) => {
            out.fail("Usage", &message, EXIT_USAGE);
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::WrongPassphrase(message)) => {
            out.fail("WrongPassphrase", &message, EXIT_WRONG_PASSPHRASE);
            ExitCode::from(EXIT_WRONG_PASSPHRASE)
        }
        Err(Failure::Engine(error)) => {
            let (kind, code) = error_kind(&error);
            out.fail(kind, &error.to_string(), code);
            ExitCode::from(code)
        }
    }
}

/// The kind of failure an engine error is, for `--json`, and its exit
/// code.
fn error_kind(error: &Error) -> (&'static str, u8) {
    match error {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock => {
            ("StoreInUse", EXIT_IN_USE)
        }
        _ => match exit_code(error) {
            EXIT_NOT_FOUND => ("NotFound", EXIT_NOT_FOUND),
            EXIT_USAGE => ("Usage", EXIT_USAGE),
            code => ("Failed", code),
        },
    }
}

/// `forget`: judges every volume's completed snapshots by the policy,
/// removes what it does not keep (unless a dry run), then collects garbage
/// if asked. A signal stops it between two removals.
fn forget_snapshots(cli: &Cli, out: &Output, forget: &ForgetArgs) -> Result<(), Failure> {
    use blocksnap::volume::retention::{self, CalendarSpan, Candidate, RetentionPolicy};
    let policy = RetentionPolicy {
        last: forget.keep_last,
        hourly: forget.keep_hourly,
        daily: forget.keep_daily,
        weekly: forget.keep_weekly,
        monthly: forget.keep_monthly,
        yearly: forget.keep_yearly,
        within: forget
            .keep_within
            .as_deref()
            .map(CalendarSpan::parse)
            .transpose()
            .map_err(|error| Failure::Usage(format!("--keep-within: {error}")))?,
        tags: forget.keep_tags.iter().map(|tag| tag_filter(tag)).collect(),
    };
    if policy.is_empty() {
        return Err(Failure::Usage(
            "no policy given: give at least one --keep-* option (forget never removes every snapshot)"
                .into(),
        ));
    }
    let engine = if forget.dry_run {
        open_engine_read_only(cli, out)?
    } else {
        open_engine(cli, out, false, Creation::Never)?
    };
    let zone = jiff::tz::TimeZone::system();
    let mut volumes: std::collections::BTreeMap<String, Vec<Candidate>> = Default::default();
    let mut without_volume = 0;
    for record in engine.snapshots() {
        if !matches!(
            record.state,
            blocksnap::catalog::SnapshotState::Completed { .. }
        ) {
            continue;
        }
        let Some(volume) = volume::volume_of(&record) else {
            without_volume += 1;
            continue;
        };
        if forget
            .volume
            .as_deref()
            .is_some_and(|wanted| wanted != volume)
        {
            continue;
        }
        volumes
            .entry(volume.to_string())
            .or_default()
            .push(Candidate {
                snapshot: record.started.snapshot,
                start_millis: record.started.start_millis,
                tags: record.started.tags.clone(),
            });
    }
    let now = blocksnap::clock::Clock::now_millis(&blocksnap::clock::SystemClock);
    let mut judged = Vec::new();
    for (volume, candidates) in volumes {
        judged.push((volume, retention::apply(&policy, &candidates, &zone, now)?));
    }
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    if !forget.dry_run {
        for decision in judged.iter().flat_map(|(_, decisions)| decisions) {
            if decision.keep {
                continue;
            }
            if signals::flag().load(std::sync::atomic::Ordering::Acquire) {
                out.note(&format!(
                    "forget: {} snapshots removed before the interruption",
                    removed.len()
                ));
                return Err(Failure::Interrupted);
            }
            match engine.delete(decision.snapshot) {
                Ok(()) => removed.push(decision.snapshot),
                Err(error) => failed.push((decision.snapshot, error)),
            }
        }
    }
    let collected = if forget.gc && !forget.dry_run && !removed.is_empty() {
        let spinner = out.spinner("collecting garbage");
        let report = engine.collect_garbage_cancellable(GcOptions::default(), signals::flag());
        spinner.finish();
        let report = report?;
        if report.interrupted {
            return Err(Failure::Interrupted);
        }
        Some(report)
    } else {
        None
    };
    out.forget(&ForgetOutcome {
        judged: &judged,
        zone: &zone,
        dry_run: forget.dry_run,
        removed: &removed,
        failed: &failed,
        without_volume,
        collected: collected.as_ref(),
    });
    match failed.into_iter().next() {
        Some((_, error)) => Err(Failure::Engine(error)),
        None => Ok(()),
    }
}

/// `KEY=VALUE` arguments of `option` as pairs.
fn parse_tags(option: &str, tags: &[String]) -> Result<Vec<(String, String)>, Failure> {
    tags.iter()
        .map(|tag| {
            let (key, value) = tag
                .split_once('=')
                .ok_or_else(|| Failure::Usage(format!("{option} '{tag}' is not KEY=VALUE")))?;
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

/// A `KEY` or `KEY=VALUE` filter: the key, and the value if one is given.
fn tag_filter(text: &str) -> (String, Option<String>) {
    match text.split_once('=') {
        Some((key, value)) => (key.to_string(), Some(value.to_string())),
        None => (text.to_string(), None),
    }
}

fn exit_code(error: &Error) -> u8 {
    match error {
        Error::NotFound { .. } => EXIT_NOT_FOUND,
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
        Error::InvalidInput { .. } | Error::InvalidState { .. } | Error::Conflict { .. } => {
            EXIT_USAGE
        }
        _ => 1,
    }
}

/// Opens the store for a command that writes (creating it if needed).
/// An open store, and damage found in the key file (outside the store).
struct Opened {
    engine: Engine,
    key_file_damage: Vec<Damage>,
}

/// Opens the store for a command that writes (creating it if needed).
fn open_engine(
    cli: &Cli,
    out: &Output,
    want_encryption: bool,
    creation: Creation,
) -> Result<Engine, Failure> {
    Ok(open_for_writing(cli, out, want_encryption, creation)?.engine)
}

fn open_for_writing(
    cli: &Cli,
    out: &Output,
    want_encryption: bool,
    creation: Creation,
) -> Result<Opened, Failure> {
    let storage = writable_storage(cli, creation)?;
    let (config, key_file_damage) = engine_config(cli, storage.as_ref(), want_encryption)?;
    let engine = Engine::open_with(storage, config)?;
    report_open_damage(&engine, &key_file_damage, out);
    Ok(Opened {
        engine: for_owner(cli, engine),
        key_file_damage,
    })
}

/// The engine acting for `--owner`. The store's configuration keeps its
/// default owner, so an owner's blocks land in the same dedup domain
/// whether `serve` or the CLI stores them.
fn for_owner(cli: &Cli, engine: Engine) -> Engine {
    match &cli.owner {
        Some(owner) => engine.as_owner(owner),
        None => engine,
    }
}

/// Opens the store for a command that only reads: nothing in it is
/// written (so it works on a full disk), and a store that does not exist
/// is an error, not a new empty one.
fn open_engine_read_only(cli: &Cli, out: &Output) -> Result<Engine, Failure> {
    Ok(open_for_reading(cli, out)?.engine)
}

fn open_for_reading(cli: &Cli, out: &Output) -> Result<Opened, Failure> {
    let engine = match store_location(cli)? {
        StoreLocation::Directory(dir) => {
            let storage = Engine::local_storage_read_only(&dir)?;
            let (config, key_file_damage) = engine_config(cli, storage.as_ref(), false)?;
            let engine = Engine::open_read_only_with(&dir, config)?;
            report_open_damage(&engine, &key_file_damage, out);
            return Ok(Opened {
                engine: for_owner(cli, engine),
                key_file_damage,
            });
        }
        StoreLocation::Bucket { bucket, prefix } => {
            let local = cli.local_dir().map_err(Failure::Usage)?;
            let storage: Arc<dyn Storage> = Arc::new(BucketStorage::open_read_only(
                object_client(cli, &bucket, &prefix)?,
                &local,
                bucket_options(cli),
            )?);
            let (config, key_file_damage) = engine_config(cli, storage.as_ref(), false)?;
            (Engine::open_with(storage, config)?, key_file_damage)
        }
    };
    report_open_damage(&engine.0, &engine.1, out);
    Ok(Opened {
        engine: for_owner(cli, engine.0),
        key_file_damage: engine.1,
    })
}

/// Caps glibc's malloc arenas at the number of cores (2 to 8), before any
/// thread starts. By default glibc gives threads up to eight arenas per
/// core, and each keeps the multi-MiB buffers freed into it (parts of
/// uploads, windows of reads from a bucket): a backup into a bucket peaked
/// at 120–150 MiB that way, 65–95 MiB with the cap, in the same time.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
    let arenas = libc::c_int::try_from(cores.clamp(2, 8)).unwrap_or(2);
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it is called
    // first thing in main, before this process starts any thread, and a
    // refusal (return value 0) leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}

/// The bucket store `--store` names, opened read-only (writes nothing).
fn bucket_storage_read_only(cli: &Cli) -> Result<BucketStorage, Failure> {
    let StoreLocation::Bucket { bucket, prefix } = store_location(cli)? else {
        return Err(Failure::Usage(
            "only a bucket store (--store s3://...) has registered writers".into(),
        ));
    };
    let local = cli.local_dir().map_err(Failure::Usage)?;
    Ok(BucketStorage::open_read_only(
        object_client(cli, &bucket, &prefix)?,
        &local,
        bucket_options(cli),
    )?)
}

/// The writer id kept in the local directory (zero if it has none yet).
fn own_writer_id(cli: &Cli) -> Result<[u8; 16], Failure> {
    let local = cli.local_dir().map_err(Failure::Usage)?;
    Ok(BucketStorage::writer_id_of(&local).unwrap_or([0; 16]))
}

/// A writer id given as 32 hex digits.
fn parse_writer_id(text: &str) -> Result<[u8; 16], Failure> {
    let invalid = || Failure::Usage(format!("{text} is not a writer id (32 hex digits)"));
    if text.len() != 32 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let mut id = [0u8; 16];
    for (byte, pair) in id.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
    }
    Ok(id)
}

/// Where `--store` says the store is.
fn store_location(cli: &Cli) -> Result<StoreLocation, Failure> {
    cli.store_location().map_err(Failure::Usage)
}

/// How a bucket store is opened: `--cache-size`, `--deletion-grace`.
fn bucket_options(cli: &Cli) -> BucketOptions {
    let defaults = BucketOptions::default();
    BucketOptions {
        cache_bytes: cli.cache_size.unwrap_or(defaults.cache_bytes),
        deletion_grace: cli.deletion_grace.unwrap_or(defaults.deletion_grace),
    }
}

/// The client of the bucket store `s3://bucket/prefix`, on `--endpoint`
/// with the standard AWS chain's region and credentials.
fn object_client(cli: &Cli, bucket: &str, prefix: &str) -> Result<ObjectClient, Failure> {
    let settings = S3Settings::from_env(cli.endpoint.clone());
    let store = S3ObjectStore::new(bucket, prefix, &settings)?;
    let client = ObjectClient::new(Arc::new(store), RetryPolicy::default());
    // A command opens its store once: its requests are reported at exit.
    let _ = BUCKET_CLIENT.set(client.clone());
    Ok(client)
}

/// The client of the command's bucket store, once opened.
static BUCKET_CLIENT: std::sync::OnceLock<ObjectClient> = std::sync::OnceLock::new();

/// Whether a command may create the store `--store` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Creation {
    /// Only an existing store will do: a mistyped path is "no store"
    /// (exit 3), never a new empty store.
    Never,
    /// An existing store, or a new one where nothing is (a missing or
    /// empty directory, an empty bucket prefix): `backup`, `import`,
    /// `serve`.
    WhereNothingIs,
    /// Only a new store, also beside other files: `init`.
    New,
}

/// What the directory `dir` holds: a store (its header, or the header's
/// mirror), nothing (absent, or empty but for a lock file), or other
/// files.
fn directory_presence(dir: &std::path::Path) -> Result<Presence, Failure> {
    if dir.join("blocksnap.store").exists() || dir.join("blocksnap.store.mirror").exists() {
        return Ok(Presence::Store);
    }
    match std::fs::read_dir(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Presence::Nothing),
        Err(error) => Err(Error::io(format!("reading {}", dir.display()), error).into()),
        Ok(mut entries) => Ok(
            if entries.any(|entry| entry.is_ok_and(|entry| entry.file_name() != "LOCK")) {
                Presence::Other
            } else {
                Presence::Nothing
            },
        ),
    }
}

/// Refuses to go on where `creation` does not allow what `--store` holds.
fn check_creation(location: &str, presence: Presence, creation: Creation) -> Result<(), Failure> {
    match (presence, creation) {
        (Presence::Store, Creation::New) => Err(Failure::Usage(format!(
            "{location} is already a blocksnap store"
        ))),
        (Presence::Store, _) | (_, Creation::New) => Ok(()),
        (_, Creation::Never) => Err(Failure::Engine(Error::NotFound {
            message: format!("no store at {location}"),
        })),
        (Presence::Nothing, Creation::WhereNothingIs) => Ok(()),
        (Presence::Other, Creation::WhereNothingIs) => Err(Failure::Usage(format!(
            "{location} holds other files and no blocksnap store; `blocksnap init` makes a store there"
        ))),
    }
}

/// The storage of the store, for a command that writes: a directory
/// (created if needed and `creation` allows), or a bucket store.
fn writable_storage(cli: &Cli, creation: Creation) -> Result<Arc<dyn Storage>, Failure> {
    match store_location(cli)? {
        StoreLocation::Directory(store) => {
            check_creation(
                &store.display().to_string(),
                directory_presence(&store)?,
                creation,
            )?;
            std::fs::create_dir_all(&store)
                .map_err(|error| Error::io(format!("creating store {}", store.display()), error))?;
            Ok(Engine::local_storage(&store)?)
        }
        StoreLocation::Bucket { bucket, prefix } => {
            Ok(Arc::new(bucket_storage(cli, &bucket, &prefix, creation)?))
        }
    }
}

/// The bucket store at `bucket`/`prefix`, opened for writing where
/// `creation` allows (its local directory created, the service probed,
/// the next writer epoch taken).
fn bucket_storage(
    cli: &Cli,
    bucket: &str,
    prefix: &str,
    creation: Creation,
) -> Result<BucketStorage, Failure> {
    let local = cli.local_dir().map_err(Failure::Usage)?;
    let client = object_client(cli, bucket, prefix)?;
    check_creation(
        &client.store().location(),
        blocksnap::storage::presence(&client)?,
        creation,
    )?;
    Ok(BucketStorage::open(client, &local, bucket_options(cli))?)
}

/// The directory the default key file lives in: a directory store's own;
/// none for a bucket store (its key file must be named with --key-file, so
/// that losing the local directory never loses a key).
fn key_dir(cli: &Cli) -> Result<Option<std::path::PathBuf>, Failure> {
    Ok(match store_location(cli)? {
        StoreLocation::Directory(dir) => Some(dir),
        StoreLocation::Bucket { .. } => None,
    })
}

/// Damage found while opening is contained, never silent: each is a
/// warning on stderr (`verify` reports it too and exits 1).
fn report_open_damage(engine: &Engine, key_file_damage: &[Damage], out: &Output) {
    for damage in engine.open_damage().iter().chain(key_file_damage) {
        out.error(&format!(
            "warning: damage in the store: {damage}; run `blocksnap verify`"
        ));
    }
}

/// The configuration the commands open the store with, and the damage
/// found in the key file.
fn engine_config(
    cli: &Cli,
    storage: &dyn Storage,
    want_encryption: bool,
) -> Result<(EngineConfig, Vec<Damage>), Failure> {
    let has_encrypted = Engine::needs_key_provider(storage)?;
    let provider = keys::provider(
        cli,
        key_dir(cli)?.as_deref(),
        has_encrypted,
        want_encryption,
    )?;
    let key_file_damage = provider
        .as_ref()
        .map(|provider| provider.damage().to_vec())
        .unwrap_or_default();
    let key_provider = provider.map(|provider| provider as Arc<dyn KeyProvider>);
    let config = EngineConfig {
        // A backup is a bulk load: an interrupted one is cancelled, and
        // CompleteSnapshot makes everything durable before it commits.
        put_durability: PutDurability::AtComplete,
        key_provider,
        // pread instead of mmap: a restore of a large volume would map
        // every pack into the process (resident, if reclaimable); with
        // pread the process stays at a few MiB per worker.
        //
        // 64 MiB packs: each sealed pack is fsynced in the background while
        // the backup goes on, so the final fsync of CompleteSnapshot waits
        // for at most one pack's write-back.
        chunk_store: ChunkStoreConfig {
            use_mmap: false,
            pack_target_size: 64 << 20,
            ..ChunkStoreConfig::default()
        },
        ..EngineConfig::default()
    };
    Ok((config, key_file_damage))
}

fn interrupted() -> Result<(), Failure> {
    if signals::interrupted() {
        Err(Failure::Interrupted)
    } else {
        Ok(())
    }
}

fn run(cli: &Cli, out: &Output) -> Result<(), Failure> {
    match &cli.command {
        Command::Init => {
            let location = cli.store_location().map_err(Failure::Usage)?;
            open_engine(cli, out, false, Creation::New)?.flush()?;
            out.done(
                json!({"Store": location.to_string(), "Created": true}),
                &format!("created an empty store at {location}"),
            );
            Ok(())
        }
        Command::Backup(backup) => {
            let tags = parse_tags("--tag", &backup.tags)?;
            let nbd_source = NbdSource::is_uri(&backup.image)
                .then(|| NbdSource::parse(&backup.image))
                .transpose()?;
            let image_path = std::path::Path::new(&backup.image);
            if backup.dirty_bitmap.is_some() && nbd_source.is_none() {
                return Err(Failure::Usage(
                    "--dirty-bitmap needs an NBD source (nbd+unix:// or nbd://)".into(),
                ));
            }
            // An NBD export's size is asked for only to map a change list
            // (some servers take one connection at a time).
            let image_bytes = match &nbd_source {
                Some(source) if backup.changed_blocks.is_some() => NbdClient::connect(source, &[])
                    .map(|client| {
                        let size = client.size();
                        client.disconnect();
                        size
                    })?,
                Some(_) => 0,
                None => std::fs::File::open(image_path)
                    .map_err(|error| Error::io(format!("opening {}", backup.image), error))
                    .and_then(|file| volume::image_len(&file, image_path))?,
            };
            let changed_blocks = backup
                .changed_blocks
                .as_deref()
                .map(|path| {
                    args::read_changed_blocks(path, backup.changed_format.as_deref(), image_bytes)
                })
                .transpose()
                .map_err(Failure::Usage)?;
            let wants_keys = backup.encrypted || backup.kms_key_arn.is_some();
            let engine = open_engine(cli, out, wants_keys, Creation::WhereNothingIs)?;
            let bar = if image_bytes == 0 {
                out.spinner("backup")
            } else {
                out.progress("backup", image_bytes)
            };
            let volume = match (&backup.volume, &nbd_source) {
                (Some(name), _) => name.clone(),
                (None, Some(_)) => backup.image.clone(),
                (None, None) => volume::default_volume_name(image_path)?,
            };
            volume::check_volume_name(&volume)?;
            let parent = match backup.parent.as_deref() {
                Some("latest") => {
                    let wanted = RequestedEncryption::of_bulk_load(
                        backup.kms_key_arn.as_deref(),
                        backup.encrypted,
                        false,
                    );
                    match volume::latest_completed(&engine, &volume, &wanted) {
                        Some(record) => Some(record.started.snapshot),
                        None if changed_blocks.is_some() || backup.dirty_bitmap.is_some() => {
                            return Err(Failure::Engine(Error::NotFound {
                                message: format!(
                                    "--parent latest: volume {volume} has no completed snapshot with this encryption, and a change list or dirty bitmap needs one"
                                ),
                            }));
                        }
                        None => {
                            out.note(&format!(
                                "volume {volume} has no completed snapshot with this encryption: a full backup"
                            ));
                            None
                        }
                    }
                }
                other => snapshot_arg("ParentSnapshotId", other)?,
            };
            let options = BackupOptions {
                parent,
                volume: Some(volume),
                changed_blocks,
                description: backup.description.clone(),
                tags,
                encrypted: backup.encrypted,
                kms_key_arn: backup.kms_key_arn.clone(),
                threads: backup.threads,
                buffered: backup.buffered,
                dirty_bitmap: backup.dirty_bitmap.clone(),
            };
            let source = match &nbd_source {
                Some(source) => BackupSource::Nbd(source),
                None => BackupSource::Image(image_path),
            };
            let outcome = volume::backup_from(
                &engine,
                source,
                &options,
                &|bytes| bar.advance(bytes),
                signals::flag(),
            )?;
            bar.finish();
            match outcome {
                BackupOutcome::Interrupted { .. } => Err(Failure::Interrupted),
                BackupOutcome::Completed(report) => {
                    out.backup(&report);
                    Ok(())
                }
            }
        }
        Command::Restore(restore) => {
            let engine = open_engine_read_only(cli, out)?;
            let description = Ebs::new(&engine).describe_snapshot(DescribeSnapshotRequest {
                snapshot_id: restore.snapshot.clone(),
            })?;
            let total = description.snapshot.volume_size as u64 * (1 << 30);
            let bar = out.progress("restore", total);
            let outcome = volume::restore(
                &engine,
                validate::snapshot_id("SnapshotId", &restore.snapshot)?,
                &restore.output,
                RestoreOptions {
                    overwrite: restore.force,
                    buffered: restore.buffered,
                    threads: restore.threads,
                },
                &|bytes| bar.advance(bytes),
                signals::flag(),
            )?;
            bar.finish();
            match outcome {
                RestoreOutcome::Interrupted => Err(Failure::Interrupted),
                RestoreOutcome::Completed(report) => {
                    out.restore(&report);
                    Ok(())
                }
            }
        }
        Command::Ls {
            all_owners,
            volume,
            tags,
        } => {
            let wanted: Vec<(String, Option<String>)> =
                tags.iter().map(|tag| tag_filter(tag)).collect();
            let engine = open_engine_read_only(cli, out)?;
            let owners = if *all_owners {
                engine.owners()
            } else {
                vec![engine.owner_id().to_string()]
            };
            let mut listed = Vec::new();
            for owner in owners {
                listed.extend(Ebs::new(&engine.as_owner(&owner)).list_snapshots()?);
            }
            listed.retain(|description| {
                let tags = &description.snapshot.tags;
                let has = |key: &str, value: Option<&str>| {
                    tags.iter()
                        .any(|tag| tag.key == key && value.is_none_or(|value| tag.value == value))
                };
                volume
                    .as_deref()
                    .is_none_or(|volume| has(volume::VOLUME_TAG, Some(volume)))
                    && wanted.iter().all(|(key, value)| has(key, value.as_deref()))
            });
            listed.sort_by(|a, b| {
                (a.snapshot.start_time, &a.snapshot.snapshot_id)
                    .cmp(&(b.snapshot.start_time, &b.snapshot.snapshot_id))
            });
            out.snapshots(&listed, *all_owners);
            Ok(())
        }
        Command::Tag {
            snapshot,
            add,
            remove,
        } => {
            if add.is_empty() && remove.is_empty() {
                return Err(Failure::Usage(
                    "tag: say what to change with --add K=V or --remove K".into(),
                ));
            }
            let added: Vec<blocksnap::api::Tag> = parse_tags("--add", add)?
                .into_iter()
                .map(|(key, value)| blocksnap::api::Tag { key, value })
                .collect();
            validate::tags(&added)?;
            let removed: Vec<(String, Option<String>)> =
                remove.iter().map(|key| (key.clone(), None)).collect();
            let id = snapshot_arg("SnapshotId", Some(snapshot))?
                .ok_or_else(|| Failure::Usage("a snapshot id is needed".into()))?;
            let engine = open_engine(cli, out, false, Creation::Never)?;
            // Removals first: a key both removed and added ends with the
            // added value.
            let tags = engine.retag(id, |current| {
                let kept = blocksnap::api::edit_tags(id, current, &[], &removed)?;
                blocksnap::api::edit_tags(id, &kept, &added, &[])
            })?;
            out.tags(&id.to_string(), &tags);
            Ok(())
        }
        Command::Show { snapshot } => {
            let engine = open_engine_read_only(cli, out)?;
            let description = Ebs::new(&engine).describe_snapshot(DescribeSnapshotRequest {
                snapshot_id: snapshot.clone(),
            })?;
            let stats = match description.snapshot.status {
                blocksnap::api::Status::Completed => {
                    Some(engine.snapshot_stats(validate::snapshot_id("SnapshotId", snapshot)?)?)
                }
                _ => None,
            };
            out.show(&description, stats.as_ref());
            Ok(())
        }
        Command::Diff { first, second } => {
            let engine = open_engine_read_only(cli, out)?;
            let mut request = ListChangedBlocksRequest {
                first_snapshot_id: Some(first.clone()),
                second_snapshot_id: second.clone(),
                max_results: Some(10_000),
                ..ListChangedBlocksRequest::default()
            };
            let mut indexes = Vec::new();
            loop {
                interrupted()?;
                let page = Ebs::new(&engine).list_changed_blocks(request.clone())?;
                indexes.extend(page.changed_blocks.iter().map(|entry| entry.block_index));
                match page.next_token {
                    Some(token) => request.next_token = Some(token),
                    None => break,
                }
            }
            out.diff(&indexes);
            Ok(())
        }
        Command::Rm { snapshot } => {
            let engine = open_engine(cli, out, false, Creation::Never)?;
            Ebs::new(&engine).delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: snapshot.clone(),
            })?;
            out.done(
                json!({"SnapshotId": snapshot, "Deleted": true}),
                &format!("deleted {snapshot}"),
            );
            Ok(())
        }
        Command::Cancel { snapshot } => {
            let engine = open_engine(cli, out, false, Creation::Never)?;
            let response = Ebs::new(&engine).cancel_snapshot(CancelSnapshotRequest {
                snapshot_id: snapshot.clone(),
            })?;
            out.done(
                json!({"SnapshotId": snapshot, "Status": response.status.as_str()}),
                &format!("cancelled {snapshot}"),
            );
            Ok(())
        }
        Command::Gc(gc) => {
            let engine = open_engine(cli, out, false, Creation::Never)?;
            let spinner = out.spinner("collecting garbage");
            let report = engine.collect_garbage_cancellable(
                GcOptions {
                    live_threshold: gc.live_threshold,
                    max_bytes_per_sec: gc.max_bytes_per_sec,
                    ..GcOptions::default()
                },
                signals::flag(),
            );
            spinner.finish();
            let report = report?;
            if report.interrupted {
                return Err(Failure::Interrupted);
            }
            out.gc(&report);
            Ok(())
        }
        Command::Forget(forget) => forget_snapshots(cli, out, forget),
        Command::Verify(verify) => {
            let Opened {
                engine,
                key_file_damage,
            } = open_for_reading(cli, out)?;
            let spinner = out.spinner("verifying");
            let report = engine.verify_cancellable(
                VerifyOptions {
                    sample_fraction: verify.sample,
                    threads: verify.threads,
                    max_bytes_per_sec: verify.max_bytes_per_sec,
                    ..VerifyOptions::default()
                },
                signals::flag(),
            );
            spinner.finish();
            let mut report = report?;
            if report.interrupted {
                return Err(Failure::Interrupted);
            }
            report.damaged_files.extend(key_file_damage);
            out.verify(&report);
            if report.is_clean() {
                Ok(())
            } else {
                Err(Failure::Reported)
            }
        }
        Command::Serve(args) => {
            // A server acknowledges each put durably (group commit), as
            // clients retry only what was not acknowledged.
            // Encryption over HTTP needs the key file: load it when it
            // exists or is named.
            let keys_available = cli.key_file.is_some()
                || key_dir(cli)?.is_some_and(|dir| dir.join(keys::DEFAULT_KEY_FILE).exists());
            let storage = writable_storage(cli, Creation::WhereNothingIs)?;
            let (config, key_file_damage) = engine_config(cli, storage.as_ref(), keys_available)?;
            for damage in &key_file_damage {
                out.error(&format!("warning: damage in the key file: {damage}"));
            }
            let config = EngineConfig {
                put_durability: PutDurability::Immediate,
                ..config
            };
            serve::run(cli, args, config, storage)
        }
        Command::Nbd(args) => nbd::run(cli, args, out),
        Command::Export(export) => {
            let engine = open_engine_read_only(cli, out)?;
            let bucket = bucket_of(&export.bucket, cli.endpoint.as_deref())?;
            let description = Ebs::new(&engine).describe_snapshot(DescribeSnapshotRequest {
                snapshot_id: export.snapshot.clone(),
            })?;
            let bar = out.progress(
                "export",
                description.snapshot.volume_size as u64 * (1 << 30),
            );
            let outcome = archive::export(
                &engine,
                validate::snapshot_id("SnapshotId", &export.snapshot)?,
                &bucket,
                &ExportOptions {
                    prefix: export.prefix.clone(),
                    name: export.name.clone(),
                    base: snapshot_arg("BaseSnapshotId", export.base.as_deref())?,
                    decrypt: export.decrypt,
                    threads: export.threads,
                },
                &|bytes| bar.advance(bytes),
                signals::flag(),
            )?;
            bar.finish();
            match outcome {
                ExportOutcome::Interrupted => Err(Failure::Interrupted),
                ExportOutcome::Completed(report) => {
                    out.export(&report);
                    Ok(())
                }
            }
        }
        Command::Import(import) => {
            let (bucket, key) = source_of(&import.source, cli.endpoint.as_deref())?;
            let manifest = archive::inspect(&bucket, &key)?;
            let wants_keys = import.encrypted || import.kms_key_arn.is_some();
            let engine = open_engine(cli, out, wants_keys, Creation::WhereNothingIs)?;
            let bar = out.progress("import", manifest.block_count * (512 << 10));
            let outcome = archive::import(
                &engine,
                &bucket,
                &key,
                &ImportOptions {
                    parent: snapshot_arg("ParentSnapshotId", import.parent.as_deref())?,
                    encrypted: import.encrypted,
                    kms_key_arn: import.kms_key_arn.clone(),
                    threads: import.threads,
                },
                &|bytes| bar.advance(bytes),
                signals::flag(),
            )?;
            bar.finish();
            match outcome {
                ImportOutcome::Interrupted => Err(Failure::Interrupted),
                ImportOutcome::Completed(report) => {
                    out.import(&report);
                    Ok(())
                }
            }
        }
        Command::Repair { dry_run } => {
            let StoreLocation::Directory(store) = store_location(cli)? else {
                return Err(Failure::Usage(
                    "repair works on directory stores; a bucket store's damage is reported by verify"
                        .into(),
                ));
            };
            let storage = if *dry_run {
                Engine::local_storage_read_only(&store)?
            } else {
                check_creation(
                    &store.display().to_string(),
                    directory_presence(&store)?,
                    Creation::Never,
                )?;
                Engine::local_storage(&store)?
            };
            let (config, key_file_damage) = engine_config(cli, storage.as_ref(), false)?;
            let spinner = out.spinner("repairing");
            let report =
                Engine::repair(storage, config.clone(), RepairOptions { dry_run: *dry_run });
            spinner.finish();
            let report = report?;
            if !*dry_run && !key_file_damage.is_empty() {
                if let Some(provider) = keys::provider(cli, Some(&store), true, false)? {
                    provider.restore_copies()?;
                }
            }
            out.repair(&report, &key_file_damage);
            if report.lost_anything() {
                Err(Failure::Reported)
            } else {
                Ok(())
            }
        }
        Command::Writers => {
            let storage = bucket_storage_read_only(cli)?;
            out.writers(&storage.current_writers()?, own_writer_id(cli)?);
            Ok(())
        }
        Command::Fence { writer } => {
            let id = parse_writer_id(writer)?;
            let StoreLocation::Bucket { bucket, prefix } = store_location(cli)? else {
                return Err(Failure::Usage(
                    "only a bucket store (--store s3://...) has writers to fence".into(),
                ));
            };
            let storage = bucket_storage(cli, &bucket, &prefix, Creation::Never)?;
            if id == storage.writer_id() {
                return Err(Failure::Usage(
                    "that is this directory's own writer id: it is replaced whenever this directory opens the store".into(),
                ));
            }
            let fenced = storage
                .fence_writer(id)
                .map_err(|error| Error::io("fencing a writer", error))?;
            if !fenced {
                return Err(Failure::Engine(Error::NotFound {
                    message: format!("no writer {writer} is registered"),
                }));
            }
            out.done(
                json!({"WriterId": writer, "Fenced": true}),
                &format!("fenced writer {writer}"),
            );
            Ok(())
        }
        Command::Stats => {
            let engine = open_engine_read_only(cli, out)?;
            let stats = engine.store_stats()?;
            out.stats(&stats);
            Ok(())
        }
    }
}

/// The bucket `--bucket` names: `s3://NAME`, or `NAME` with an endpoint,
/// is an S3 bucket; anything else a directory.
fn bucket_of(spec: &str, endpoint: Option<&str>) -> Result<Bucket, Failure> {
    match (spec.strip_prefix("s3://"), endpoint) {
        (Some(name), _) => s3_bucket(name.trim_end_matches('/'), endpoint),
        (None, Some(_)) => s3_bucket(spec, endpoint),
        (None, None) => Ok(Bucket::Directory(spec.into())),
    }
}

/// The bucket and key of an archive: `s3://BUCKET/KEY`, or a file path.
fn source_of(spec: &str, endpoint: Option<&str>) -> Result<(Bucket, String), Failure> {
    if let Some(rest) = spec.strip_prefix("s3://") {
        let (name, key) = rest
            .split_once('/')
            .filter(|(_, key)| !key.is_empty())
            .ok_or_else(|| Failure::Usage(format!("'{spec}' is not s3://BUCKET/KEY")))?;
        return Ok((s3_bucket(name, endpoint)?, key.to_string()));
    }
    let path = std::path::Path::new(spec);
    let key = path
        .file_name()
        .ok_or_else(|| Failure::Usage(format!("'{spec}' names no file")))?
        .to_string_lossy()
        .into_owned();
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    Ok((Bucket::Directory(directory), key))
}

fn s3_bucket(name: &str, endpoint: Option<&str>) -> Result<Bucket, Failure> {
    let settings = archive::S3Settings::from_env(endpoint.map(str::to_string));
    Ok(Bucket::S3(archive::S3Bucket::new(name, &settings)?))
}

/// An optional snapshot id argument, checked as the EBS API checks `field`.
fn snapshot_arg(field: &str, text: Option<&str>) -> Result<Option<SnapshotId>, Error> {
    text.map(|text| validate::snapshot_id(field, text))
        .transpose()
}
