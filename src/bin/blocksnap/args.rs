//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

/// Back up raw disk images and block devices into a blocksnap store,
/// incrementally, and restore them byte-identical.
#[derive(Parser, Debug)]
#[command(name = "blocksnap", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success, 1 failure (damage found, an I/O error), 2 bad usage, 3 not found (no store, snapshot, image or key), 4 store in use by another process, 5 wrong passphrase (the key file does not open), 130 interrupted (143 by SIGTERM)."
)]
pub struct Cli {
    /// The store: a directory, or s3://BUCKET/PREFIX for a store in an
    /// S3-compatible bucket [default: $XDG_DATA_HOME/blocksnap, else
    /// ~/.local/share/blocksnap]
    #[arg(long, global = true, env = "BLOCKSNAP_STORE", value_name = "DIR|S3URL")]
    pub store: Option<PathBuf>,

    /// The S3-compatible service's URL, for an s3:// store and for export
    /// and import [default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else
    /// AWS S3]. Region and credentials come from the standard AWS chain
    /// (environment, shared config and credentials files, AWS_PROFILE).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,

    /// A bucket store's local directory: pending snapshots' journals,
    /// packs not yet uploaded, and a cache of what was read [default:
    /// $XDG_CACHE_HOME/blocksnap/s3/BUCKET/PREFIX, else ~/.cache/...]
    #[arg(long, global = true, env = "BLOCKSNAP_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// The most bytes the cache of a bucket store keeps (K, M, G, T
    /// suffixes: powers of 1024) [default: 2G]
    #[arg(long, global = true, value_name = "BYTES", value_parser = parse_bytes)]
    pub cache_size: Option<u64>,

    /// How long objects a bucket store's gc removes stay in the bucket, for
    /// readers that opened the store before (s, m, h, d suffixes; a bare
    /// number is seconds) [default: 6h]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub deletion_grace: Option<std::time::Duration>,

    /// Act for this owner (account id): the snapshots an EBS client with
    /// that owner's access key uploads through `serve` [default:
    /// 000000000000, the owner of the CLI's own snapshots]
    #[arg(long, global = true, env = "BLOCKSNAP_OWNER_ID", value_name = "ID", value_parser = parse_owner)]
    pub owner: Option<String>,

    /// Print machine-readable JSON on stdout instead of text (and errors
    /// as a JSON object on stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// When stderr is not a terminal (cron, a systemd journal), write a
    /// progress line this often during long operations (s, m, h suffixes).
    #[arg(long, global = true, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    pub progress_interval: std::time::Duration,

    /// The long-running commands' (serve, nbd) log level: error, warn,
    /// info, debug or trace, or tracing directives such as
    /// `info,blocksnap::server=debug` [default: $RUST_LOG, else info]
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// The long-running commands' log lines on stderr: text, or json (one
    /// object per line, for journald and log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// No progress bar and no summary on stderr (errors still print).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// The key file of encrypted snapshots [default: DIR/keys in the store]
    #[arg(long, global = true, env = "BLOCKSNAP_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// Read the key file's passphrase from FILE (first line) instead of
    /// $BLOCKSNAP_PASSPHRASE or a prompt.
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Run CMD with `sh -c` and read the key file's passphrase from its
    /// output (first line), e.g. `pass show backup` or `secret-tool lookup
    /// ...`; a command that fails is an error.
    #[arg(
        long,
        global = true,
        value_name = "CMD",
        conflicts_with = "passphrase_file",
        env = "BLOCKSNAP_PASSPHRASE_COMMAND"
    )]
    pub passphrase_command: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where a store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory.
    Directory(PathBuf),
    /// A bucket and a key prefix in it (empty, or without slashes at
    /// either end).
    Bucket {
        /// The bucket.
        bucket: String,
        /// The key prefix.
        prefix: String,
    },
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Directory(dir) => write!(f, "{}", dir.display()),
            StoreLocation::Bucket { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Parses a byte count with an optional K, M, G or T suffix (powers of 1024).
/// An owner id as the credentials file allows it: 1 to 24 printable
/// ASCII characters without spaces.
fn parse_owner(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 24 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "'{text}' is not an owner id (1 to 24 printable characters, no spaces)"
        ));
    }
    Ok(text.to_string())
}

pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((at, 'K' | 'k')) => (&text[..at], 10),
        Some((at, 'M' | 'm')) => (&text[..at], 20),
        Some((at, 'G' | 'g')) => (&text[..at], 30),
        Some((at, 'T' | 't')) => (&text[..at], 40),
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|count| count.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("'{text}' is not a byte count (like 512M or 2G)"))
}

/// Parses a duration: a count with an optional s, m, h or d suffix.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 'h')) => (&text[..at], 3600),
        Some((at, 'd')) => (&text[..at], 86_400),
        _ => (text, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|count| count.checked_mul(unit))
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is not a duration (like 90s, 30m, 6h or 2d)"))
}

impl Cli {
    /// Where the store is: `--store`, `$BLOCKSNAP_STORE`, or the default
    /// directory.
    pub fn store_location(&self) -> Result<StoreLocation, String> {
        let Some(url) = self
            .store
            .as_ref()
            .and_then(|store| store.to_str())
            .and_then(|store| store.strip_prefix("s3://"))
        else {
            return Ok(StoreLocation::Directory(self.store_dir()));
        };
        let (bucket, prefix) = url.split_once('/').unwrap_or((url, ""));
        if bucket.is_empty() {
            return Err(format!("'s3://{url}' names no bucket (s3://BUCKET/PREFIX)"));
        }
        Ok(StoreLocation::Bucket {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// The directory of the store's local files: the store directory, or a
    /// bucket store's local directory (`--cache`, else under the user's
    /// cache directory).
    pub fn local_dir(&self) -> Result<PathBuf, String> {
        match self.store_location()? {
            StoreLocation::Directory(dir) => Ok(dir),
            StoreLocation::Bucket { bucket, prefix } => {
                if let Some(cache) = &self.cache {
                    return Ok(cache.clone());
                }
                let cache_home = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache"))
                    })
                    .unwrap_or_else(|| PathBuf::from("."));
                let prefix = if prefix.is_empty() { "_" } else { &prefix };
                Ok(cache_home.join("blocksnap/s3").join(bucket).join(prefix))
            }
        }
    }

    /// The store directory: `--store`, `$BLOCKSNAP_STORE`, or the default.
    fn store_dir(&self) -> PathBuf {
        if let Some(store) = &self.store {
            return store.clone();
        }
        let data_home = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        data_home.join("blocksnap")
    }
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make a new, empty store at --store (also in a directory that holds
    /// other files). `backup`, `import` and `serve` make one where nothing
    /// is; every other command needs an existing store.
    Init,
    /// Back up an image file or block device into a new snapshot; prints
    /// its id.
    Backup(BackupArgs),
    /// Restore a snapshot into a new file (sparse) or a block device.
    Restore(RestoreArgs),
    /// List the snapshots (the owner's; see --owner).
    Ls {
        /// Every owner's snapshots, with an OWNER column: for the
        /// operator of a store that `serve` fills for several accounts.
        #[arg(long)]
        all_owners: bool,
        /// Only the snapshots of this volume.
        #[arg(long, value_name = "NAME")]
        volume: Option<String>,
        /// Only the snapshots with this tag (KEY, or KEY=VALUE);
        /// repeatable, all must match.
        #[arg(long = "tag", value_name = "K[=V]")]
        tags: Vec<String>,
    },
    /// Add, change or remove tags of a snapshot; prints its tags.
    Tag {
        /// The snapshot.
        snapshot: String,
        /// Set tag KEY to VALUE (repeatable).
        #[arg(long = "add", value_name = "K=V")]
        add: Vec<String>,
        /// Remove tag KEY (repeatable).
        #[arg(long = "remove", value_name = "K")]
        remove: Vec<String>,
    },
    /// Describe a snapshot: parameters, status, sizes.
    Show {
        /// The snapshot.
        snapshot: String,
    },
    /// List the block indexes that differ between two related snapshots.
    Diff {
        /// The older snapshot.
        first: String,
        /// The newer snapshot.
        second: String,
    },
    /// Delete a completed or failed snapshot (space returns with `gc`).
    Rm {
        /// The snapshot.
        snapshot: String,
    },
    /// Cancel a pending snapshot.
    Cancel {
        /// The snapshot.
        snapshot: String,
    },
    /// Reclaim the space of deleted and cancelled snapshots.
    Gc(GcArgs),
    /// Remove the snapshots a retention policy does not keep, per volume,
    /// with restic's semantics; prints what it keeps and removes and why.
    Forget(ForgetArgs),
    /// Check every stored chunk, every reference and the catalog; exits 1
    /// if anything is damaged.
    Verify(VerifyArgs),
    /// Rebuild what damage broke from what survives (pack indexes from
    /// packs, the catalog and journals from their valid records, damaged
    /// copies from their twins), resolve snapshots whose state cannot be
    /// proven, then verify; report exactly what is lost. Exits 1 if
    /// anything is.
    Repair {
        /// Report what would be done; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Sizes and counts of the store.
    Stats,
    /// List the writers registered in a bucket store (processes that have
    /// it open for writing, or crashed while they had).
    Writers,
    /// Fence a writer of a bucket store that is gone for good (its machine
    /// lost): it writes nothing more, and gc, which waits for other
    /// writers to close, can run again.
    Fence {
        /// Its id, as `writers` lists it (32 hex digits).
        writer: String,
    },
    /// Export a completed snapshot as one zip archive into a directory or an
    /// S3 bucket, at PREFIX/snapshot/NAME-YYMMdd-HHmm-ss.zip (UTC); prints
    /// where. Never overwrites.
    Export(ExportArgs),
    /// Import an archive written by `export` as a new completed snapshot,
    /// checking every block first; prints the new snapshot's id.
    Import(ImportArgs),
    /// Serve the EBS direct API over HTTP for stock AWS clients (boto3, the
    /// AWS CLI, the AWS SDKs, coldsnap), authenticated with SigV4.
    Serve(ServeArgs),
    /// Export completed snapshots as read-only NBD exports, each named by
    /// its snapshot id, until SIGINT or SIGTERM; prints each export's URI.
    /// QEMU, qemu-img, nbdcopy and nbdinfo read them directly.
    Nbd(NbdArgs),
}

/// `nbd` arguments.
#[derive(Args, Debug)]
pub struct NbdArgs {
    /// The snapshots to export (default: every completed snapshot). The
    /// store is open for reading meanwhile: on a directory store, commands
    /// that write to it wait their turn ("in use"); `serve --nbd-socket`
    /// also exports the snapshots completed through its API.
    pub snapshots: Vec<String>,
    /// The Unix socket to listen on (the default: blocksnap-nbd.sock in
    /// $XDG_RUNTIME_DIR, else in the system's temporary directory). Made
    /// readable and writable by this user only.
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// Listen on TCP instead (port 0 picks a free port). NBD has no
    /// authentication here: use an address only trusted clients reach.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Most connections at once; more are closed on arrival.
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,
    /// MiB of checked blocks kept in memory for repeated reads.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub cache_mib: usize,
}

/// `serve` arguments.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Also export every completed snapshot of the default owner as a
    /// read-only NBD export on this Unix socket (see `blocksnap nbd`).
    #[arg(long, value_name = "PATH")]
    pub nbd_socket: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the address is
    /// printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8642", value_name = "ADDR:PORT")]
    pub listen: String,
    /// Access keys: lines of `ACCESS_KEY_ID SECRET_ACCESS_KEY OWNER_ID`.
    /// Without it, one key from $BLOCKSNAP_ACCESS_KEY_ID,
    /// $BLOCKSNAP_SECRET_ACCESS_KEY and $BLOCKSNAP_OWNER_ID; without those,
    /// the store's `credentials` file (created with a random key on first
    /// start).
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Accept every request without authentication, all as one owner.
    /// Only for a server that nobody untrusted can reach.
    #[arg(long)]
    pub insecure_no_authentication: bool,
    /// Change a request-rate quota (per second, 0 = unlimited), e.g.
    /// `GetSnapshotBlock=5000`. Names: StartSnapshot, CompleteSnapshot,
    /// PutSnapshotBlock, PutSnapshotBlockPerSnapshot, GetSnapshotBlock,
    /// GetSnapshotBlockPerSnapshot, ListSnapshotBlocks, ListChangedBlocks,
    /// Ec2Describe (each of DescribeSnapshots, DescribeTags), Ec2Modify
    /// (each of CopySnapshot, DeleteSnapshot, CreateTags, DeleteTags).
    /// Defaults are AWS's: 10, 10, 1000, 1000, 1000, 1000, 50, 50, 20, 5.
    #[arg(long = "rate-limit", value_name = "NAME=N")]
    pub rate_limits: Vec<String>,
    /// Turn every request-rate quota off.
    #[arg(long, conflicts_with = "rate_limits")]
    pub no_rate_limits: bool,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most snapshots an owner may have pending at once (AWS: 100).
    #[arg(long, default_value_t = 100)]
    pub max_pending_snapshots: usize,
    /// Most connections open at once; more are closed on arrival. Lowered
    /// to fit the descriptor limit (raised to its hard limit at start).
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds a connection has to send a request's headers, from opening
    /// or from the previous response (the idle keep-alive timeout).
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    pub header_timeout: u64,
    /// Seconds a request body may go without delivering a byte.
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    pub body_progress_timeout: u64,
    /// Seconds a request body has to arrive whole.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub body_timeout: u64,
    /// Seconds requests in flight have to finish after SIGINT, SIGTERM or SIGHUP;
    /// connections still open then are cut.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub shutdown_grace: u64,
    /// Let every owner's plain snapshots share one dedup domain. By
    /// default each owner's data is keyed apart, so identical blocks of two
    /// owners are stored twice and no owner can tell what another stored.
    #[arg(long)]
    pub shared_dedup: bool,
    /// Also serve GET /metrics with the store's gauges (chunks, stored
    /// bytes, block traffic) on this address, for the operator only: on
    /// the API port /metrics shows request counts and latencies alone.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Run the collector this long after the server starts and after each
    /// run ends (s, m, h, d suffixes), as `blocksnap gc` would, while
    /// clients are served.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub gc_interval: Option<std::time::Duration>,
    /// The scheduled collector compacts packs whose live fraction is below
    /// this (0.9: every pack more than a tenth dead).
    #[arg(long, default_value_t = blocksnap::engine::DEFAULT_LIVE_THRESHOLD, value_name = "FRACTION")]
    pub gc_live_threshold: f64,
    /// Verify a sample of the chunks this long after the server starts and
    /// after each run ends; each run checks the next sample, so every
    /// chunk is read once in 1/--verify-sample runs. Damage found turns
    /// /health to 503.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub verify_interval: Option<std::time::Duration>,
    /// Fraction of the chunks each scheduled verification reads (1.0: all).
    #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
    pub verify_sample: f64,
    /// Most bytes per second a scheduled collection copies or
    /// verification reads (K, M, G suffixes; 0: unlimited).
    #[arg(long, default_value = "64M", value_name = "BYTES", value_parser = parse_bytes)]
    pub maintenance_max_bytes_per_sec: u64,
}

/// `backup` arguments.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The raw image file or block device, or an NBD export
    /// (nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT, e.g.
    /// qemu-nbd or qemu-storage-daemon serving a VM's disk): its
    /// unallocated zero ranges are recorded without reading them.
    #[arg(value_name = "IMAGE|NBD-URI")]
    pub image: String,
    /// Back up incrementally against this snapshot: unchanged blocks are
    /// not written again. `latest`: the newest completed snapshot of the
    /// same volume (and encryption), or a full backup when there is none:
    /// the way to run incrementals from cron.
    #[arg(long, value_name = "SNAP|latest")]
    pub parent: Option<String>,
    /// The volume the image is of, recorded on the snapshot [default: a
    /// block device's /dev/disk/by-id name, else the image's canonical
    /// path, else the NBD URI as given].
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
    /// Only these blocks changed since the parent: a change list (see
    /// --changed-format); byte ranges count every 512 KiB block they touch.
    #[arg(
        long,
        value_name = "FILE",
        requires = "parent",
        conflicts_with = "dirty_bitmap"
    )]
    pub changed_blocks: Option<PathBuf>,
    /// The change list's format: lines (a block index or range A-B per
    /// line, '#' comments), thin-delta (LVM thin_delta XML), rbd-diff
    /// (rbd diff --format json), nbdinfo-map (nbdinfo --json
    /// --map=qemu:dirty-bitmap:NAME) [default: detected]
    #[arg(long, value_name = "FORMAT", requires = "changed_blocks")]
    pub changed_format: Option<String>,
    /// With an NBD source: read only the blocks QEMU's persistent dirty
    /// bitmap NAME (the export's qemu:dirty-bitmap:NAME context) marks
    /// dirty since the parent was taken.
    #[arg(long, value_name = "NAME", requires = "parent")]
    pub dirty_bitmap: Option<String>,
    /// Description of the snapshot.
    #[arg(long, value_name = "D")]
    pub description: Option<String>,
    /// A tag KEY=VALUE; repeatable.
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,
    /// Encrypt with the default key of the key file (a child inherits its
    /// parent's encryption instead).
    #[arg(long)]
    pub encrypted: bool,
    /// Encrypt with this key of the key file.
    #[arg(long, value_name = "ARN")]
    pub kms_key_arn: Option<String>,
    /// Read the image through the page cache only (by default, blocks the
    /// page cache does not hold are read with O_DIRECT where it is
    /// accepted, so a backup does not evict the cache).
    #[arg(long)]
    pub buffered: bool,
    /// Worker threads [default: two per core]
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub threads: usize,
}

/// `restore` arguments.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot.
    pub snapshot: String,
    /// The output file (created sparse) or block device.
    pub output: PathBuf,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Write through the page cache instead of direct I/O (whole blocks go
    /// to the output with O_DIRECT where it is accepted).
    #[arg(long)]
    pub buffered: bool,
    /// Worker threads [default: two per core]
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub threads: usize,
}

/// `export` arguments.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The completed snapshot.
    pub snapshot: String,
    /// The destination: a directory, or an S3 bucket as s3://NAME or as
    /// NAME with --endpoint. S3 credentials and region come from the
    /// standard AWS chain (environment, shared files, AWS_PROFILE).
    #[arg(long, value_name = "B")]
    pub bucket: String,
    /// Object key prefix, usually a folder name.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Archive name before the timestamp [default: the snapshot id]
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Export only the blocks changed since this snapshot (same lineage);
    /// import the archive with --parent holding that snapshot's content.
    #[arg(long, value_name = "SNAP")]
    pub base: Option<String>,
    /// Allow exporting an encrypted snapshot: the archive holds plaintext.
    #[arg(long)]
    pub decrypt: bool,
    /// Worker threads [default: one per core]
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub threads: usize,
    /// Read at most this many record bytes per second (K, M, G suffixes).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_bytes_per_sec: Option<u64>,
}

/// `import` arguments.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The archive: a file path, or s3://BUCKET/KEY.
    pub source: String,
    /// Build on this snapshot: blocks equal to its own are not stored
    /// again. An archive made with --base needs one holding the base's
    /// content.
    #[arg(long, value_name = "SNAP")]
    pub parent: Option<String>,
    /// Encrypt with the default key of the key file (a child inherits its
    /// parent's encryption instead).
    #[arg(long)]
    pub encrypted: bool,
    /// Encrypt with this key of the key file.
    #[arg(long, value_name = "ARN")]
    pub kms_key_arn: Option<String>,
    /// Worker threads [default: one per core]
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub threads: usize,
    /// Read at most this many record bytes per second (K, M, G suffixes).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_bytes_per_sec: Option<u64>,
}

/// `forget` arguments: restic's `--keep-*` rules. Each period rule keeps
/// the newest snapshot of each of its N most recent periods (in the local
/// time zone, `$TZ`) that hold one; a snapshot any rule keeps stays.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Only this volume [default: every volume, each judged on its own;
    /// snapshots that record no volume are never removed].
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
    /// Keep the newest N snapshots.
    #[arg(long, default_value_t = 0, value_name = "N", hide_default_value = true)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours with one.
    #[arg(long, default_value_t = 0, value_name = "N", hide_default_value = true)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days with one.
    #[arg(long, default_value_t = 0, value_name = "N", hide_default_value = true)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks with one.
    #[arg(long, default_value_t = 0, value_name = "N", hide_default_value = true)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months with one.
    #[arg(long, default_value_t = 0, value_name = "N", hide_default_value = true)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years with one.
    #[arg(long, default_value_t = 0, value_name = "N", hide_default_value = true)]
    pub keep_yearly: u32,
    /// Keep every snapshot started less than SPAN before the volume's
    /// newest: NyNmNdNh (m = months), e.g. 30d, 1y6m.
    #[arg(long, value_name = "SPAN")]
    pub keep_within: Option<String>,
    /// Keep every snapshot with this tag (KEY, or KEY=VALUE); repeatable.
    #[arg(long = "keep-tag", value_name = "K[=V]")]
    pub keep_tags: Vec<String>,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Collect garbage after removing (as `gc`), so the space returns now.
    #[arg(long)]
    pub gc: bool,
}

/// `gc` arguments.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Compact packs whose live fraction is below this (0.9: every pack
    /// more than a tenth dead, as borg compacts at 10% freeable; 1.0: every
    /// pack holding any garbage).
    #[arg(long, default_value_t = blocksnap::engine::DEFAULT_LIVE_THRESHOLD)]
    pub live_threshold: f64,
    /// Copy at most this many bytes per second.
    #[arg(long, value_name = "BYTES")]
    pub max_bytes_per_sec: Option<u64>,
}

/// `verify` arguments.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Check only this fraction of the chunks (a deterministic sample).
    #[arg(long, default_value_t = 1.0)]
    pub sample: f64,
    /// Worker threads [default: one per core]
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub threads: usize,
    /// Read at most this many record bytes per second (K, M, G suffixes).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_bytes_per_sec: Option<u64>,
}

/// Reads the changed-block list at `path` for an image of `blocks`
/// blocks (see `blocksnap::volume::parse_changed_blocks`).
pub fn read_changed_blocks(
    path: &Path,
    format: Option<&str>,
    image_bytes: u64,
) -> Result<Vec<u32>, String> {
    use blocksnap::volume::changes::{parse_change_list, ChangeFormat};
    let format = format
        .map(|name| {
            ChangeFormat::parse(name).ok_or_else(|| {
                format!(
                    "--changed-format '{name}' is not lines, thin-delta, rbd-diff or nbdinfo-map"
                )
            })
        })
        .transpose()?;
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("reading {}: {error}", path.display()))?;
    parse_change_list(&text, format, image_bytes).map_err(|(line, error)| match line {
        Some(line) => format!("{}:{line}: {error}", path.display()),
        None => format!("{}: {error}", path.display()),
    })
}
