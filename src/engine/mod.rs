//! The engine: pending-snapshot sessions, the commit protocol, recovery on
//! open, fail-stop after I/O errors, and the async boundary.
//!
//! The engine speaks in typed values only ([`SnapshotId`], [`BlockIndex`],
//! [`NewSnapshot`], byte and block counts) and acts for one owner. Its
//! snapshot operations are `start`, `put_block`, `complete`, `cancel`,
//! `delete`, `describe`, `snapshot` and `snapshots`; bulk loads go through
//! a [`SnapshotWriter`] and every read through a [`SnapshotReader`]. The
//! EBS shapes, validation and tokens are `api`'s, over these.

mod commit;
mod encryption;
mod gc;
mod lifecycle;
mod maintenance;
mod reader;
mod refs;
mod repair;
mod session;
mod verify;
mod writer;

use crate::blockmap::{BlockMaps, NodeCache};
use crate::catalog::{Catalog, SnapshotRecord, SnapshotState};
use crate::chunkstore::{ChunkStore, ChunkStoreConfig, ChunkStoreStats};
use crate::clock::{Clock, SystemClock};
use crate::codec;
use crate::crypto::{Aes256Gcm, CipherSuite, DomainKeys, KeyProvider};
use crate::error::{Damage, Error, Result, ValidationReason};
use crate::format::catalog::{CatalogRecord, SseKind, StartedRecord};
use crate::format::pack::RecordKind;
use crate::format::store::StoreHeader;
use crate::ids::{BlockIndex, ChunkId, Sha256Digest, SnapshotId};
use crate::keys::Keyring;
use crate::storage::{
    mirror_name, read_mirrored, write_mirrored_unless_moved, LocalStorage, Storage,
};
use commit::GroupCommit;
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
use refs::References;
use session::{journal_name, linear_aggregate, Session, SessionState, JOURNAL_DIR};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use gc::{GcOptions, GcReport, DEFAULT_LIVE_THRESHOLD};
pub use maintenance::{ReferenceAudit, SnapshotStats, StoreStats};
pub use reader::{SnapshotReader, IMAGE_BYTES_TAG};
pub use repair::{RepairOptions, RepairReport};
pub use session::JournalRepair;
pub use verify::{AffectedBlocks, DamagedChunk, VerifyOptions, VerifyReport};
pub use writer::{Abandon, BlockWrite, SnapshotWriter};

const STORE_HEADER_NAME: &str = "blocksnap.store";

/// A pending snapshot's timeout when its start names none, minutes (the
/// EBS default).
pub const DEFAULT_TIMEOUT_MINUTES: u32 = 60;

/// How often a writer of a shared medium (a bucket store) takes in the
/// other writers' commits while it stores blocks, so that data they
/// stored meanwhile is found and not stored again.
const SHARED_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a view beside a writer tries before its findings stand (see
/// [`Engine::open_with`]).
pub const BESIDE_WRITER_ATTEMPTS: u32 = 8;

/// Runs `read` once, or beside a writer ([`Storage::beside_writer`]) until
/// its result is `consistent`: a read that met a change the writer had
/// half made is made again, up to [`BESIDE_WRITER_ATTEMPTS`] reads,
/// pausing 25 ms longer each time; the last result stands.
pub(crate) fn settled_beside_writer<T>(
    storage: &dyn Storage,
    mut read: impl FnMut() -> Result<T>,
    consistent: impl Fn(&T) -> bool,
) -> Result<T> {
    let mut attempt = 1;
    loop {
        let result = read();
        if !storage.beside_writer()
            || attempt >= BESIDE_WRITER_ATTEMPTS
            || result.as_ref().is_ok_and(&consistent)
        {
            return result;
        }
        std::thread::sleep(std::time::Duration::from_millis(25 * u64::from(attempt)));
        attempt += 1;
    }
}

/// When an acknowledged PutSnapshotBlock becomes durable.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum PutDurability {
    /// A put returns only once its data and journal record are durable.
    /// Concurrent puts share sync rounds (group commit). Nothing acknowledged
    /// is lost in a crash.
    #[default]
    Immediate,
    /// Puts are journaled but synced only by CompleteSnapshot,
    /// [`Engine::flush`], or an `Immediate` put's round. After a crash a pending
    /// snapshot may lack or revert puts made since the last sync; the
    /// ChangedBlocksCount and LINEAR checks of CompleteSnapshot reveal it,
    /// and completed snapshots are never affected. For bulk loaders that
    /// restart an interrupted upload anyway.
    AtComplete,
}

/// How an engine is set up.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The `OwnerId` of snapshots created through the in-process API.
    pub owner_id: String,
    /// Chunk store tuning.
    pub chunk_store: ChunkStoreConfig,
    /// Decoded map nodes kept in memory (about 2 KiB each).
    pub node_cache_nodes: usize,
    /// Most snapshots that may be pending at once per owner (EBS: 100).
    pub max_pending_snapshots: usize,
    /// When a put becomes durable.
    pub put_durability: PutDurability,
    /// Wall-clock source (tokens, timestamps).
    pub clock: Arc<dyn Clock>,
    /// Where data keys of encrypted snapshots come from. Without one,
    /// StartSnapshot refuses encryption, and a store that already holds
    /// encrypted snapshots does not open.
    pub key_provider: Option<Arc<dyn KeyProvider>>,
    /// The cipher new encrypted domains are sealed with (a domain keeps
    /// the suite it was created with).
    pub cipher_suite: Arc<dyn CipherSuite>,
    /// Whether every owner's plain snapshots share one dedup domain. By
    /// default (false) each owner other than `owner_id` gets its own
    /// (keyed ids, as encryption keys are): identical data of two owners
    /// is stored twice, so no owner can learn from the store's behaviour
    /// whether another holds a block. `owner_id`'s snapshots, and every
    /// snapshot when this is true, use the plain domain.
    pub shared_dedup: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            owner_id: "000000000000".to_string(),
            chunk_store: ChunkStoreConfig::default(),
            node_cache_nodes: 16_384,
            max_pending_snapshots: 100,
            put_durability: PutDurability::default(),
            clock: Arc::new(SystemClock),
            key_provider: None,
            cipher_suite: Arc::new(Aes256Gcm),
            shared_dedup: false,
        }
    }
}

/// A blocksnap store, open. Cheap to clone: clones share one engine.
/// `Send + Sync`; every method may be called from any thread.
///
/// An `Engine` acts for one owner (the `OwnerId` of the snapshots it
/// starts, and the only snapshots it sees): `EngineConfig::owner_id`, or
/// another through [`Engine::as_owner`].
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
    owner: Arc<str>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("storage", &self.inner.storage)
            .finish_non_exhaustive()
    }
}

struct EngineInner {
    storage: Arc<dyn Storage>,
    config: EngineConfig,
    header: StoreHeader,
    chunks: ChunkStore,
    nodes: NodeCache,
    catalog: Catalog,
    sessions: RwLock<HashMap<SnapshotId, Arc<Session>>>,
    /// Serializes StartSnapshot so idempotency checks and limits are exact.
    start_lock: Mutex<()>,
    group_commit: GroupCommit,
    /// Set by the first failure that left the durable state unknown; see
    /// [`Error::Poisoned`].
    poisoned: AtomicBool,
    /// What poisoned the engine, for every later refusal.
    poison_cause: Mutex<String>,
    /// Set when the failure was the catalog's own: then no transition at
    /// all can be recorded. A data failure (a pack or journal) leaves the
    /// catalog's durable state known, so transitions that add no data
    /// (cancel, timeout, delete) still are, and a backup that hit a full
    /// disk can cancel its snapshot.
    catalog_poisoned: AtomicBool,
    /// Reference counts of live chunks.
    references: References,
    /// Roots held by open [`SnapshotReader`]s, with how many hold each
    /// (each holds one reference; the audit counts them).
    reader_pins: Mutex<HashMap<ChunkId, u32>>,
    /// Held shared from the moment a chunk is stored or looked up until the
    /// reference that keeps it alive is counted (puts, completes, reads);
    /// held exclusively by the collector while it switches packs, so it
    /// never removes a chunk someone is about to reference or read.
    reference_guard: RwLock<()>,
    /// The reaper task, when the engine was opened inside a tokio runtime.
    reaper: Mutex<Option<tokio::task::AbortHandle>>,
    /// Wakes the reaper when a snapshot with a possibly earlier deadline starts.
    reaper_wake: Arc<tokio::sync::Notify>,
    /// Serializes the collector and verify: neither sees packs vanish
    /// under it.
    maintenance: Mutex<()>,
    /// The store's encryption domains, unlocked.
    keyring: Keyring,
    /// Opened on a read-only storage: every write is refused.
    read_only: bool,
    /// Damage found while opening.
    open_damage: Vec<Damage>,
    /// When other writers' commits were last looked for while storing
    /// blocks, by the engine's clock (epoch milliseconds).
    refreshed_at_millis: std::sync::atomic::AtomicU64,
    /// The [`Storage::generation`] this engine's catalog, reference counts
    /// and sessions were last brought up to (at open, or by a whole
    /// take-in): a collection condemns packs only on that view.
    viewed_generation: std::sync::atomic::AtomicU64,
}

/// What reads need of a completed snapshot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CompletedSnapshot {
    /// Root of its block map.
    pub(crate) root: Option<ChunkId>,
    /// Volume size in GiB.
    pub(crate) volume_size_gib: u64,
    /// Oldest ancestor: snapshots are related iff their lineages are equal.
    pub(crate) lineage: SnapshotId,
}

/// A block's id in its snapshot's domain, its SHA-256 (or
/// [`Sha256Digest::NOT_KEPT`] where nothing needs it yet), and whether it
/// is all zeros (then the id and checksum are the zero block's).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockHashes {
    pub(crate) chunk: ChunkId,
    pub(crate) sha256: Sha256Digest,
    pub(crate) is_zero: bool,
}

impl BlockHashes {
    /// Hashes `data`, SHA-256 included, for a snapshot keyed in `domain`
    /// (`None`: plain); the SHA-256 is `data_sha256` when the caller
    /// already computed it from these very bytes.
    fn of(
        domain: Option<&DomainKeys>,
        data: &[u8],
        data_sha256: Option<Sha256Digest>,
    ) -> BlockHashes {
        let (chunk, is_zero) = block_id(domain, data);
        let sha256 = match data_sha256 {
            Some(sha256) => sha256,
            None if is_zero => codec::zero_block_sha256(),
            None => codec::sha256(data),
        };
        BlockHashes {
            chunk,
            sha256,
            is_zero,
        }
    }

    /// What [`block_id`] returned, without a SHA-256: a bulk load's
    /// blocks get theirs computed when something first asks (an EBS read,
    /// an export), not at backup (DESIGN.md §4.3).
    pub(crate) fn without_checksum(chunk: ChunkId, is_zero: bool) -> BlockHashes {
        BlockHashes {
            chunk,
            sha256: if is_zero {
                codec::zero_block_sha256()
            } else {
                Sha256Digest::NOT_KEPT
            },
            is_zero,
        }
    }
}

/// A block's id in `domain` and whether it is all zeros, without the
/// SHA-256 (what an unchanged-block check needs).
pub(crate) fn block_id(domain: Option<&DomainKeys>, data: &[u8]) -> (ChunkId, bool) {
    if codec::is_zero(data) {
        return (codec::zero_block_id(), true);
    }
    (
        crate::crypto::chunk_id_in(domain, RecordKind::Block, data),
        false,
    )
}

/// What a new snapshot is: [`Engine::start`]'s and [`Engine::writer`]'s
/// parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSnapshot {
    /// The completed snapshot this one changes (of the same owner); the
    /// new one starts with its blocks.
    pub parent: Option<SnapshotId>,
    /// The volume's size in GiB, 1..=[`crate::ids::MAX_VOLUME_SIZE_GIB`];
    /// at least the parent's.
    pub volume_size_gib: u64,
    /// Minutes after which a snapshot still pending is cancelled.
    pub timeout_minutes: u32,
    /// Makes the start idempotent: a start with the same token and the
    /// same parameters returns the snapshot the first one started.
    pub client_token: Option<String>,
    /// A description kept with the snapshot.
    pub description: Option<String>,
    /// Tags kept with the snapshot, in order.
    pub tags: Vec<(String, String)>,
    /// Whether and under which key the snapshot is encrypted.
    pub encryption: RequestedEncryption,
}

impl NewSnapshot {
    /// A full snapshot of a `volume_size_gib` GiB volume with the default
    /// timeout, no description, tags or token, and the parent's (else no)
    /// encryption.
    pub fn new(volume_size_gib: u64) -> NewSnapshot {
        NewSnapshot {
            parent: None,
            volume_size_gib,
            timeout_minutes: DEFAULT_TIMEOUT_MINUTES,
            client_token: None,
            description: None,
            tags: Vec::new(),
            encryption: RequestedEncryption::None,
        }
    }
}

/// How a new snapshot is encrypted (EBS: `Encrypted` and `KmsKeyArn`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RequestedEncryption {
    /// Neither: plain, or the parent's encryption for a child.
    None,
    /// `Encrypted` alone: the provider's default key (`sse-ebs`).
    DefaultKey,
    /// `KmsKeyArn`: that key (`sse-kms`).
    Key(String),
}

impl RequestedEncryption {
    /// What a bulk load (backup, import) asks for: `kms_key_arn`'s key, or
    /// the default key when `encrypted`; a child asking only `encrypted`
    /// inherits its parent's key instead.
    pub fn of_bulk_load(kms_key_arn: Option<&str>, encrypted: bool, has_parent: bool) -> Self {
        match kms_key_arn {
            Some(arn) => RequestedEncryption::Key(arn.to_string()),
            None if encrypted && !has_parent => RequestedEncryption::DefaultKey,
            None => RequestedEncryption::None,
        }
    }

    /// Whether a snapshot started as `started` answers this request (for
    /// idempotent retries).
    fn matches(&self, started: &StartedRecord) -> bool {
        match self {
            RequestedEncryption::None => started.sse == SseKind::None || started.parent.is_some(),
            RequestedEncryption::DefaultKey => started.sse == SseKind::SseEbs,
            RequestedEncryption::Key(arn) => started.kms_key_arn.as_ref() == Some(arn),
        }
    }
}

/// The invariants of a new snapshot's parameters that the engine relies
/// on (the EBS façade checks the service's stricter rules first).
fn check_new_snapshot(request: &NewSnapshot) -> Result<()> {
    if !(1..=crate::ids::MAX_VOLUME_SIZE_GIB).contains(&request.volume_size_gib) {
        return Err(Error::invalid(
            ValidationReason::InvalidVolumeSize,
            format!(
                "VolumeSize {} is outside 1..={} GiB.",
                request.volume_size_gib,
                crate::ids::MAX_VOLUME_SIZE_GIB
            ),
        ));
    }
    if request.timeout_minutes == 0 {
        return Err(Error::invalid(
            ValidationReason::InvalidParameterValue,
            "A snapshot's timeout must be at least a minute.",
        ));
    }
    if request.parent.is_some() && request.encryption == RequestedEncryption::DefaultKey {
        return Err(Error::invalid(
            ValidationReason::InvalidParameterValue,
            "Encrypted cannot be specified together with ParentSnapshotId.",
        ));
    }
    Ok(())
}

fn not_found(snapshot: SnapshotId) -> Error {
    Error::NotFound {
        message: format!("The snapshot '{snapshot}' does not exist."),
    }
}

/// The error for a write to a snapshot that is not pending. A snapshot
/// cancelled by its timeout answers `WRITE_REQUEST_TIMEOUT`.
fn not_pending(record: &SnapshotRecord) -> Error {
    let snapshot = record.started.snapshot;
    match &record.state {
        SnapshotState::Error { reason, .. } => Error::InvalidState {
            reason: if reason.starts_with(lifecycle::TIMEOUT_REASON_PREFIX) {
                ValidationReason::WriteRequestTimeout
            } else {
                ValidationReason::InvalidSnapshotId
            },
            message: format!("The snapshot '{snapshot}' is in state error: {reason}"),
        },
        _ => Error::InvalidState {
            reason: ValidationReason::InvalidSnapshotId,
            message: format!(
                "The snapshot '{snapshot}' is {}, not pending.",
                record.status_name()
            ),
        },
    }
}

impl Engine {
    /// Opens (creating if needed) a store in a local directory with the
    /// default configuration.
    pub fn open(dir: impl AsRef<Path>) -> Result<Engine> {
        Engine::open_with(Self::local_storage(dir)?, EngineConfig::default())
    }

    /// Whether opening the store on `storage` needs a key provider: its
    /// keyring names an encrypted domain. Dedup-only domains (each owner
    /// but the default one has its own) need none.
    pub fn needs_key_provider(storage: &dyn Storage) -> Result<bool> {
        crate::keys::has_encrypted_domains(storage)
    }

    /// The local-directory storage `open` uses, for callers that want
    /// [`Engine::open_with`] and a custom configuration.
    pub fn local_storage(dir: impl AsRef<Path>) -> Result<Arc<dyn Storage>> {
        let dir = dir.as_ref();
        let storage = LocalStorage::open(dir)
            .map_err(|e| Error::io(format!("opening store {}", dir.display()), e))?;
        Ok(Arc::new(storage))
    }

    /// Opens a store on any storage backend and recovers from a crash:
    /// packs are indexed (torn tails fenced off, damaged records skipped),
    /// the catalog is replayed from whichever copy of each record
    /// verifies, and pending snapshots are rebuilt from their journals.
    /// Damage found on the way is logged and kept for
    /// [`Engine::open_damage`] and `verify`.
    ///
    /// On a read-only storage ([`Storage::is_read_only`], for example
    /// [`Engine::open_read_only`]) nothing is written: recovery happens in
    /// memory, timeouts are not applied, no reaper runs, and every write
    /// is refused with [`Error::ReadOnly`].
    ///
    /// On a shared medium (a bucket store) another writer may commit while
    /// this one opens: an open whose own commit (a catalog segment, the
    /// store header, an index) lost that race starts again from the other
    /// commit.
    ///
    /// Beside a writer ([`Storage::beside_writer`]: a directory `serve`
    /// holds), the view is of the snapshots completed when it opened;
    /// pending ones are their writer's. A change met half-made (a file
    /// gone between listing and reading it, a snapshot deleted and
    /// collected between reading the catalog and listing the packs) looks
    /// like damage or an error: the open starts again, and after
    /// [`BESIDE_WRITER_ATTEMPTS`] the last attempt's findings stand.
    pub fn open_with(storage: Arc<dyn Storage>, config: EngineConfig) -> Result<Engine> {
        settled_beside_writer(
            storage.as_ref(),
            || loop {
                match Engine::open_once(storage.clone(), config.clone()) {
                    Err(error) if error.is_head_moved() => continue,
                    opened => return opened,
                }
            },
            Engine::is_consistent_view,
        )
    }

    /// Whether the open found nothing damaged or unaccounted for.
    fn is_consistent_view(&self) -> bool {
        self.inner.open_damage.is_empty() && self.inner.references.damaged().is_none()
    }

    fn open_once(storage: Arc<dyn Storage>, config: EngineConfig) -> Result<Engine> {
        let read_only = storage.is_read_only();
        // Read first: a commit taken in while opening leaves the view
        // older than the storage's, never newer.
        let viewed_generation = storage.generation();
        let (header, mut damage) =
            load_or_create_header(storage.as_ref(), config.clock.now_millis())?;
        damage.extend(storage.damage());
        let keyring = Keyring::open(
            storage.as_ref(),
            config.key_provider.as_ref(),
            &config.cipher_suite,
        )?;
        damage.extend(keyring.damage().iter().cloned());
        // Beside a writer the catalog is read before the packs are listed:
        // every snapshot it shows completed had its blocks durable in the
        // packs first, so the packs listed after hold them.
        let beside_writer = storage.beside_writer();
        let catalog_first = beside_writer
            .then(|| Catalog::open(storage.clone()))
            .transpose()?;
        let chunks = ChunkStore::open(storage.clone(), config.chunk_store.clone())?;
        for domain in keyring.domains() {
            chunks.register_domain(domain);
        }
        let catalog = match catalog_first {
            Some(catalog) => catalog,
            None => Catalog::open(storage.clone())?,
        };
        damage.extend(chunks.damage().iter().cloned());
        damage.extend(catalog.damage().iter().cloned());
        let nodes = NodeCache::new(config.node_cache_nodes);
        let now = config.clock.now_millis();
        let mut sessions = HashMap::new();
        // Pending snapshots beside a writer are that writer's, changing
        // under this view: not recovered here.
        let pending =
            |record: &SnapshotRecord| record.state == SnapshotState::Pending && !beside_writer;
        for record in catalog.select(pending) {
            let parent_root = parent_root_of(&catalog, &record)?;
            let durable_on_ack = config.put_durability == PutDurability::Immediate;
            let domain = domain_of(&keyring, &record.started)?;
            let (session, found) = Session::recover(
                storage.as_ref(),
                &chunks,
                &record.started,
                parent_root,
                domain,
                durable_on_ack,
                // On tiered storage a journal not here is another
                // machine's, not lost: nothing is unprovable about it.
                catalog.journaled_at_start(record.started.snapshot) && !storage.is_tiered(),
                now,
            )?;
            for found in &found {
                tracing::warn!(file = %found.file, detail = %found.detail, "damage found in a journal");
            }
            damage.extend(found);
            sessions.insert(record.started.snapshot, Arc::new(session));
        }
        let references = References::default();
        {
            let maps = BlockMaps::new(&chunks, &nodes);
            for record in catalog.select(|record| record.state != SnapshotState::Pending) {
                if let SnapshotState::Completed { root, .. } = record.state {
                    references.acquire_tree(&maps, root);
                }
            }
            for session in sessions.values() {
                references.acquire_tree(&maps, session.parent_root);
                for (_, chunk) in session.written_blocks() {
                    references.acquire_block(&maps, chunk);
                }
            }
        }
        if !read_only {
            remove_stale_journals(storage.as_ref(), &sessions)?;
        }
        let owner: Arc<str> = Arc::from(config.owner_id.as_str());
        let engine = Engine {
            owner,
            inner: Arc::new(EngineInner {
                storage,
                config,
                header,
                chunks,
                nodes,
                catalog,
                sessions: RwLock::new(sessions),
                start_lock: Mutex::new(()),
                group_commit: GroupCommit::default(),
                poisoned: AtomicBool::new(false),
                poison_cause: Mutex::new(String::new()),
                catalog_poisoned: AtomicBool::new(false),
                references,
                reader_pins: Mutex::new(HashMap::new()),
                reference_guard: RwLock::new(()),
                reaper: Mutex::new(None),
                reaper_wake: Arc::new(tokio::sync::Notify::new()),
                maintenance: Mutex::new(()),
                keyring,
                read_only,
                open_damage: damage,
                refreshed_at_millis: std::sync::atomic::AtomicU64::new(now),
                viewed_generation: std::sync::atomic::AtomicU64::new(viewed_generation),
            }),
        };
        if !read_only {
            engine.fail_snapshots_of_unregistered_writers()?;
            // Deadlines that passed while the store was closed.
            engine.expire_due()?;
            engine.start_reaper();
        }
        Ok(engine)
    }

    /// The read-only local-directory storage [`Engine::open_read_only`]
    /// uses, for [`Engine::open_with`] or a dry-run [`Engine::repair`].
    pub fn local_storage_read_only(dir: impl AsRef<Path>) -> Result<Arc<dyn Storage>> {
        let dir = dir.as_ref();
        let storage = LocalStorage::open_read_only(dir).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                no_store(dir)
            } else {
                Error::io(format!("opening store {}", dir.display()), error)
            }
        })?;
        Ok(Arc::new(storage))
    }

    /// Opens the store in a local directory for reading only: nothing in
    /// it is written (see [`Engine::open_with`]), so a command that only
    /// reads works on a full disk and beside other readers. Fails with
    /// [`Error::NotFound`] if `dir` holds no store.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Engine> {
        Engine::open_read_only_with(dir, EngineConfig::default())
    }

    /// [`Engine::open_read_only`] with a configuration (a key provider for
    /// encrypted snapshots, read tuning).
    pub fn open_read_only_with(dir: impl AsRef<Path>, config: EngineConfig) -> Result<Engine> {
        let dir = dir.as_ref();
        let storage = Engine::local_storage_read_only(dir)?;
        Engine::open_with(storage, config).map_err(|error| match error {
            // Only the store header's absence reads as not found here.
            Error::NotFound { .. } => no_store(dir),
            other => other,
        })
    }

    /// Whether the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// Damage found while opening the store: unreadable bytes in packs,
    /// indexes, catalog copies and journals that did not verify. Each was
    /// contained (see DESIGN.md §7); `verify` reports them, `repair`
    /// rebuilds what can be rebuilt.
    pub fn open_damage(&self) -> &[Damage] {
        &self.inner.open_damage
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The same store acting for `owner`: it starts snapshots owned by
    /// `owner` and sees only those; another owner's snapshot behaves as
    /// one that does not exist. A server makes one per authenticated
    /// request. Pending-snapshot limits count per owner.
    pub fn as_owner(&self, owner: &str) -> Engine {
        Engine {
            inner: self.inner.clone(),
            owner: Arc::from(owner),
        }
    }

    /// Snapshots pending, all owners.
    pub fn pending_snapshot_count(&self) -> usize {
        self.inner.sessions.read().len()
    }

    /// Whether the engine accepts writes: false after an I/O failure left
    /// the durable state unknown (see [`Error::Poisoned`]).
    pub fn is_writable(&self) -> bool {
        self.check_writable().is_ok()
    }

    /// The owner this engine acts for.
    pub fn owner_id(&self) -> &str {
        &self.owner
    }

    /// Now, epoch milliseconds, from the configured clock.
    pub(crate) fn now_millis(&self) -> u64 {
        self.inner.config.clock.now_millis()
    }

    /// The store's random token secret.
    pub(crate) fn token_secret(&self) -> &[u8; 32] {
        &self.inner.header.token_secret
    }

    /// Counters of the chunk store.
    pub fn chunk_stats(&self) -> ChunkStoreStats {
        self.inner.chunks.stats()
    }

    /// Refuses writes on a read-only or poisoned engine.
    fn check_writable(&self) -> Result<()> {
        self.check_poison(&self.inner.poisoned)
    }

    /// Refuses transitions that add no data (cancel, timeout, delete) on a
    /// read-only engine or one whose catalog failed; a data failure alone
    /// allows them (see `EngineInner::catalog_poisoned`).
    fn check_transitions_writable(&self) -> Result<()> {
        self.check_poison(&self.inner.catalog_poisoned)
    }

    fn check_poison(&self, flag: &AtomicBool) -> Result<()> {
        if self.inner.read_only {
            return Err(Error::ReadOnly {
                message: "the store is open read-only: writes are refused".into(),
            });
        }
        if flag.load(Ordering::Acquire) {
            Err(Error::Poisoned {
                cause: self.inner.poison_cause.lock().clone(),
            })
        } else {
            Ok(())
        }
    }

    /// [`Engine::poison_on_io`] for a catalog write: its failure poisons
    /// transitions too.
    fn poison_catalog_on_io<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(error) = &result {
            if error.is_fatal_io() {
                self.inner.catalog_poisoned.store(true, Ordering::Release);
            }
        }
        self.poison_on_io(result)
    }

    /// Passes `result` through, poisoning the engine if it is a failure
    /// that left the durable state unknown (a failed append or sync; see
    /// [`Error::is_fatal_io`]). Other failures fail only the request.
    fn poison_on_io<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(error) = &result {
            if error.is_fatal_io() {
                let mut cause = self.inner.poison_cause.lock();
                if !self.inner.poisoned.swap(true, Ordering::AcqRel) {
                    *cause = error.to_string();
                    tracing::error!(
                        cause = %error,
                        "the store stopped accepting writes: a failed write or sync left its durable state unknown; reopen the store"
                    );
                }
            }
        }
        result
    }

    /// Makes every put acknowledged before this call durable: chunk data
    /// first, then journals (each created durably, name included, when
    /// its snapshot started).
    pub fn flush(&self) -> Result<()> {
        self.check_writable()?;
        let result = self.inner.group_commit.commit(|| {
            self.inner.chunks.sync()?;
            let sessions: Vec<Arc<Session>> =
                self.inner.sessions.read().values().cloned().collect();
            for session in sessions {
                session.sync_journal()?;
            }
            Ok(())
        });
        self.poison_on_io(result)
    }

    /// The catalog record of snapshot `snapshot`, as it stands: pending,
    /// completed or failed. Another owner's snapshot, and one deleted, is
    /// [`Error::NotFound`]. A pending snapshot's deadline is not applied
    /// (see [`Engine::describe`]).
    pub fn snapshot(&self, snapshot: SnapshotId) -> Result<SnapshotRecord> {
        let found = self.owned_record(snapshot);
        // Unknown here, or pending in another writer's process: another
        // writer of a shared medium may have made or completed it since.
        let stale = match &found {
            None => true,
            Some(record) => {
                record.state == SnapshotState::Pending
                    && self
                        .inner
                        .sessions
                        .read()
                        .get(&snapshot)
                        .is_some_and(|session| session.elsewhere)
            }
        };
        if stale && self.inner.storage.is_tiered() && self.refresh_view()? {
            return self
                .owned_record(snapshot)
                .ok_or_else(|| not_found(snapshot));
        }
        found.ok_or_else(|| not_found(snapshot))
    }

    /// The record of `snapshot` if this engine's owner has it.
    fn owned_record(&self, snapshot: SnapshotId) -> Option<SnapshotRecord> {
        self.inner
            .catalog
            .get(snapshot)
            .filter(|record| *record.started.owner == *self.owner)
    }

    /// Every snapshot of this engine's owner (pending, completed, failed),
    /// in no order.
    pub fn snapshots(&self) -> Vec<SnapshotRecord> {
        self.inner
            .catalog
            .select(|record| *record.started.owner == *self.owner)
    }

    /// The ids of the owner's snapshots that `keep` accepts, looked at in
    /// place (under the catalog's read lock): a listing that filters or
    /// pages then copies only the records it returns
    /// ([`Engine::snapshot`]), not the whole catalog.
    pub fn snapshot_ids_where(&self, keep: impl Fn(&SnapshotRecord) -> bool) -> Vec<SnapshotId> {
        self.inner
            .catalog
            .select_ids(|record| *record.started.owner == *self.owner && keep(record))
    }

    /// Every owner with a snapshot in the store, sorted: for the
    /// operator's views (`blocksnap ls --all-owners`); each owner's
    /// snapshots are then read through [`Engine::as_owner`].
    pub fn owners(&self) -> Vec<String> {
        self.inner.catalog.owners()
    }

    /// The map root, size and lineage of a completed snapshot.
    fn completed(&self, snapshot: SnapshotId) -> Result<CompletedSnapshot> {
        let owner = &*self.owner;
        let inspected = self.inner.catalog.inspect(snapshot, |record| {
            if record.started.owner != owner {
                return Err(not_found(snapshot));
            }
            match record.state {
                SnapshotState::Completed { root, .. } => Ok(CompletedSnapshot {
                    root,
                    volume_size_gib: record.started.volume_size_gib,
                    lineage: record.started.lineage,
                }),
                _ => Err(Error::InvalidState {
                    reason: ValidationReason::InvalidSnapshotId,
                    message: format!(
                        "The snapshot '{snapshot}' is {}; only completed snapshots can be read.",
                        record.status_name()
                    ),
                }),
            }
        });
        inspected.unwrap_or_else(|| Err(not_found(snapshot)))
    }

    /// Starts a snapshot, or returns the one an identical earlier request
    /// with the same client token started. Its journal is durable before
    /// it is recorded: a pending snapshot without one is damage.
    pub fn start(&self, request: NewSnapshot) -> Result<SnapshotRecord> {
        self.check_writable()?;
        check_new_snapshot(&request)?;
        let owner = &*self.owner.clone();
        // Timed-out snapshots neither count against the limit nor answer
        // an idempotent retry as pending.
        self.expire_due()?;
        let _serial = self.inner.start_lock.lock();
        let catalog = &self.inner.catalog;
        if let Some(token) = &request.client_token {
            if let Some(existing) = catalog.find_token(owner, token) {
                let record = self.snapshot(existing)?;
                let started = &record.started;
                let same = started.parent == request.parent
                    && started.volume_size_gib == request.volume_size_gib
                    && started.timeout_minutes == request.timeout_minutes
                    && started.description == request.description
                    && started.tags == request.tags
                    && request.encryption.matches(started);
                if same {
                    return Ok(record);
                }
                return Err(Error::Conflict {
                    message: format!(
                        "The client token '{token}' was used for snapshot '{existing}' with different parameters."
                    ),
                });
            }
        }
        let (lineage, parent_root, inherited) = match request.parent {
            None => (None, None, None),
            Some(parent) => {
                let parent_snapshot = self.completed(parent).map_err(|error| match error {
                    Error::InvalidState { message, .. } => Error::invalid(
                        ValidationReason::InvalidParameterValue,
                        format!("ParentSnapshotId: {message}"),
                    ),
                    other => other,
                })?;
                if request.volume_size_gib < parent_snapshot.volume_size_gib {
                    return Err(Error::invalid(
                        ValidationReason::InvalidVolumeSize,
                        format!(
                            "VolumeSize {} is smaller than the parent snapshot's {} GiB.",
                            request.volume_size_gib, parent_snapshot.volume_size_gib
                        ),
                    ));
                }
                let parent_encryption = self.inner.catalog.inspect(parent, |record| {
                    (record.started.sse, record.started.kms_key_arn.clone())
                });
                (
                    Some(parent_snapshot.lineage),
                    parent_snapshot.root,
                    parent_encryption,
                )
            }
        };
        let pending_of_owner = self
            .inner
            .sessions
            .read()
            .values()
            .filter(|session| session.owner == owner)
            .count();
        if pending_of_owner >= self.inner.config.max_pending_snapshots {
            return Err(Error::ConcurrentLimitExceeded {
                message: format!(
                    "Owner {owner} already has {pending_of_owner} pending snapshots, the most allowed at once."
                ),
            });
        }
        let snapshot = loop {
            let candidate = SnapshotId(random_u64()? >> 1 | 1);
            if catalog.get(candidate).is_none() {
                break candidate;
            }
        };
        let (sse, kms_key_arn, domain) =
            self.encryption_of(owner, &request.encryption, inherited)?;
        let now = self.now_millis();
        let started = StartedRecord {
            snapshot,
            parent: request.parent,
            lineage: lineage.unwrap_or(snapshot),
            volume_size_gib: request.volume_size_gib,
            timeout_minutes: request.timeout_minutes,
            start_millis: now,
            sse,
            owner: owner.to_string(),
            client_token: request.client_token,
            description: request.description,
            kms_key_arn,
            tags: request.tags,
            writer: self.inner.storage.writer_id(),
        };
        // A start the catalog cannot encode (a string or tag list over its
        // format's limit) is refused before anything is written.
        CatalogRecord::Started(started.clone()).encode_frame()?;
        let durable_on_ack = self.inner.config.put_durability == PutDurability::Immediate;
        // The journal first: a pending snapshot without one is damage.
        let session = Arc::new(Session::create(
            self.inner.storage.as_ref(),
            &started,
            parent_root,
            domain,
            durable_on_ack,
        )?);
        let guard = self.inner.reference_guard.read();
        self.poison_catalog_on_io(self.rebasing(|| {
            // Redone on top of another writer's commit: its parent must
            // still be there.
            if let Some(parent) = started.parent {
                if !catalog
                    .get(parent)
                    .is_some_and(|record| matches!(record.state, SnapshotState::Completed { .. }))
                {
                    return Err(not_found(parent));
                }
            }
            catalog.start(started.clone())
        }))?;
        // The parent is completed and cannot be deleted while the start lock
        // is held, so its root is live: this only adds one count.
        self.inner
            .references
            .acquire_tree(&self.maps(), session.parent_root);
        self.inner.sessions.write().insert(snapshot, session);
        drop(guard);
        self.inner.reaper_wake.notify_one();
        self.snapshot(snapshot)
    }

    /// The session of a pending snapshot of this engine's owner.
    fn session(&self, snapshot: SnapshotId) -> Result<Arc<Session>> {
        if let Some(session) = self.inner.sessions.read().get(&snapshot) {
            if *session.owner == *self.owner {
                return Ok(session.clone());
            }
        }
        // Not pending for this owner: the record says why (unknown, foreign,
        // or in another state).
        let record = self.snapshot(snapshot)?;
        match self.inner.sessions.read().get(&snapshot) {
            Some(session) => Ok(session.clone()),
            None => Err(not_pending(&record)),
        }
    }

    /// Locks a pending snapshot's session and applies its deadline: a
    /// snapshot whose timeout has passed is cancelled here, and the caller
    /// gets the error a later request would get. The caller holds the
    /// reference guard (lock order: guard, then session).
    fn lock_live<'s>(
        &self,
        _guard: &RwLockReadGuard<'_, ()>,
        session: &'s Session,
    ) -> Result<MutexGuard<'s, SessionState>> {
        let state = session.lock_open()?;
        // A read-only store records no transition; an unprovable snapshot
        // is never expired (whether it completed is unknown).
        if self.inner.read_only || session.unprovable.is_some() || session.elsewhere {
            return Ok(state);
        }
        let Some(reason) = session.expired(&state, self.now_millis()) else {
            return Ok(state);
        };
        self.fail_pending(session, state, reason)?;
        let record = self
            .inner
            .catalog
            .get(session.snapshot)
            .ok_or_else(|| not_found(session.snapshot))?;
        Err(not_pending(&record))
    }

    /// Fails every pending snapshot another writer of a shared medium
    /// started if that writer is no longer registered (it closed, or was
    /// fenced): no process is there to complete them. (A writer that
    /// crashed and comes back from its directory before that is
    /// registered again, and recovers its own.)
    fn fail_snapshots_of_unregistered_writers(&self) -> Result<()> {
        let storage = &self.inner.storage;
        let orphaned: Vec<Arc<Session>> = self
            .inner
            .sessions
            .read()
            .values()
            .filter(|session| {
                session.elsewhere
                    && session
                        .writer
                        .is_some_and(|writer| !storage.is_registered(&writer))
            })
            .cloned()
            .collect();
        for session in orphaned {
            let guard = self.inner.reference_guard.read();
            let Ok(state) = session.lock_open() else {
                continue;
            };
            let writer = session.writer.map(|id| crate::storage::hex_id(&id));
            let failed = self.fail_pending(
                &session,
                state,
                format!(
                    "Its writer {} is no longer registered (it closed, or was fenced): a pending \
                     snapshot of a bucket store lives in the local directory of the process that \
                     started it, which is not there to complete it.",
                    writer.unwrap_or_default()
                ),
            );
            drop(guard);
            match failed {
                // Another writer failed it first.
                Err(Error::InvalidState { .. } | Error::NotFound { .. }) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Moves a pending snapshot to `error` (the catalog record is the
    /// commit point), closes its session, and drops its references: the
    /// blocks only it wrote die. The caller holds the reference guard and
    /// the session lock (`state`).
    fn fail_pending(
        &self,
        session: &Session,
        mut state: MutexGuard<'_, SessionState>,
        reason: String,
    ) -> Result<()> {
        let now = self.now_millis();
        self.poison_catalog_on_io(self.rebasing(|| {
            self.inner
                .catalog
                .fail(session.snapshot, now, reason.clone())
        }))?;
        state.closed = true;
        let writes = std::mem::take(&mut state.writes);
        drop(state);
        self.inner.sessions.write().remove(&session.snapshot);
        // The journal is garbage now; recovery removes it if this fails.
        let _ = self.inner.storage.remove(&journal_name(session.snapshot));
        let maps = self.maps();
        for (chunk, _) in writes.values() {
            self.inner.references.release_block(&maps, *chunk);
        }
        self.inner
            .references
            .release_tree(&maps, session.parent_root);
        Ok(())
    }

    /// Stores one block (exactly 512 KiB) of a pending snapshot after
    /// checking it against `expected`, its SHA-256; a mismatch is
    /// [`ValidationReason::InvalidBlock`]. A second put at an index
    /// replaces the first. Zero blocks are recorded without payload.
    /// Hashing and compression run before any lock is taken. Durable on
    /// return under [`PutDurability::Immediate`].
    pub fn put_block(
        &self,
        snapshot: SnapshotId,
        index: BlockIndex,
        data: &[u8],
        expected: &Sha256Digest,
    ) -> Result<()> {
        self.put_block_hashed(snapshot, index, data, expected, None)
    }

    /// [`Engine::put_block`] given `data_sha256`, the SHA-256 the caller
    /// computed from `data` itself (the server, which checked a signed
    /// body's hash with it), so the block is not hashed again; `None`
    /// hashes it here.
    pub(crate) fn put_block_hashed(
        &self,
        snapshot: SnapshotId,
        index: BlockIndex,
        data: &[u8],
        expected: &Sha256Digest,
        data_sha256: Option<Sha256Digest>,
    ) -> Result<()> {
        self.check_writable()?;
        if data.len() != crate::ids::BLOCK_SIZE {
            return Err(Error::invalid(
                ValidationReason::InvalidBlock,
                format!(
                    "A block is {} bytes, not {}.",
                    crate::ids::BLOCK_SIZE,
                    data.len()
                ),
            ));
        }
        let session = self.session(snapshot)?;
        let hashes = BlockHashes::of(session.domain.as_deref(), data, data_sha256);
        if hashes.sha256 != *expected {
            return Err(Error::invalid(
                ValidationReason::InvalidBlock,
                "The checksum does not match the SHA-256 of the block data.",
            ));
        }
        self.store_block(&session, index, data, &hashes)
    }

    fn store_block(
        &self,
        session: &Session,
        index: BlockIndex,
        data: &[u8],
        hashes: &BlockHashes,
    ) -> Result<()> {
        if u64::from(index.0) >= session.volume_blocks {
            return Err(Error::invalid(
                ValidationReason::InvalidBlock,
                format!(
                    "BlockIndex {} is beyond the volume's {} blocks.",
                    index.0, session.volume_blocks
                ),
            ));
        }
        session.check_provable()?;
        self.refresh_when_due();
        let BlockHashes {
            chunk,
            sha256,
            is_zero,
        } = *hashes;
        let domain = session.domain.as_deref();
        let guard = self.inner.reference_guard.read();
        if !is_zero {
            self.poison_on_io(self.inner.chunks.put_in(
                RecordKind::Block,
                &chunk,
                &sha256,
                data,
                domain,
            ))?;
        }
        let mut state = self.lock_live(&guard, session)?;
        let now = self.now_millis();
        let replaced = self.poison_on_io(session.record(
            &mut state,
            self.inner.storage.as_ref(),
            index,
            chunk,
            sha256,
            now,
        ))?;
        let maps = self.maps();
        self.inner.references.acquire_block(&maps, chunk);
        if let Some(replaced) = replaced {
            self.inner.references.release_block(&maps, replaced);
        }
        drop(state);
        drop(guard);
        if self.inner.config.put_durability == PutDurability::Immediate {
            self.flush()?;
        }
        Ok(())
    }

    /// Seals a pending snapshot: checks that `changed_blocks` distinct
    /// blocks were written and, if given, their LINEAR aggregate SHA-256 (a
    /// mismatch is [`ValidationReason::InvalidParameterValue`] and leaves
    /// it pending), then commits in order: block data durable, map nodes
    /// written and durable, catalog record durable (the commit point).
    pub fn complete(
        &self,
        snapshot: SnapshotId,
        changed_blocks: u32,
        aggregate: Option<Sha256Digest>,
    ) -> Result<SnapshotRecord> {
        self.check_writable()?;
        let session = self.session(snapshot)?;
        session.check_provable()?;
        let guard = self.inner.reference_guard.read();
        let mut state = self.lock_live(&guard, &session)?;
        let written = state.writes.len();
        if written != changed_blocks as usize {
            return Err(Error::invalid(
                ValidationReason::InvalidParameterValue,
                format!("ChangedBlocksCount is {changed_blocks}, but {written} distinct blocks were written to '{snapshot}'."),
            ));
        }
        if let Some(expected) = aggregate {
            let checksum_of = |chunk: &ChunkId| {
                self.inner
                    .chunks
                    .block_sha256(chunk)?
                    .ok_or_else(|| Error::corrupted(format!("chunk {chunk}"), "not stored"))
            };
            if linear_aggregate(&state.writes, checksum_of)? != expected {
                return Err(Error::invalid(
                    ValidationReason::InvalidParameterValue,
                    "The LINEAR aggregate checksum does not match the blocks written.",
                ));
            }
        }
        self.poison_on_io(self.inner.chunks.sync())?;
        let writes: Vec<(BlockIndex, ChunkId)> = state
            .writes
            .iter()
            .map(|(index, (chunk, _))| (*index, *chunk))
            .collect();
        let maps = self.maps().sealed_in(session.domain.as_deref());
        let mut new_nodes = Vec::new();
        let root =
            self.poison_on_io(maps.apply_noting(session.parent_root, &writes, &mut new_nodes))?;
        self.poison_on_io(self.inner.chunks.sync())?;
        let now = self.now_millis();
        self.poison_catalog_on_io(self.rebasing(|| {
            if self.inner.storage.is_tiered() {
                // What the snapshot adds must not lie only in packs another
                // writer's collection condemned: copied out first, at the
                // generation the commit below is made at (DESIGN §18).
                let mut added = writes
                    .iter()
                    .map(|(_, chunk)| *chunk)
                    .chain(new_nodes.iter().copied());
                self.poison_on_io(self.inner.chunks.rescue_condemned(&mut added))?;
                // Every chunk and node the snapshot references reaches the
                // shared medium before its catalog record does.
                self.poison_on_io(self.inner.chunks.seal_all())?;
            }
            self.inner
                .catalog
                .complete(snapshot, now, root, changed_blocks)
        }))?;
        // The new root's references first, then the session's: chunks both
        // hold never pass through zero.
        self.inner.references.acquire_tree(&maps, root);
        for (_, chunk) in &writes {
            self.inner.references.release_block(&maps, *chunk);
        }
        self.inner
            .references
            .release_tree(&maps, session.parent_root);
        state.closed = true;
        drop(state);
        self.inner.sessions.write().remove(&snapshot);
        drop(guard);
        // The journal is garbage now; recovery removes it if this fails.
        let _ = self.inner.storage.remove(&journal_name(snapshot));
        self.snapshot(snapshot)
    }

    fn maps(&self) -> BlockMaps<'_> {
        BlockMaps::new(&self.inner.chunks, &self.inner.nodes)
    }

    /// Runs a catalog transition, redoing it on top of another writer's
    /// commit each time one came first (a shared medium's head race):
    /// the engine takes that commit in, and `transition` checks its
    /// precondition again against it.
    fn rebasing<T>(&self, mut transition: impl FnMut() -> Result<T>) -> Result<T> {
        loop {
            match transition() {
                Err(error) if error.is_head_moved() => self.take_in_commits()?,
                done => return done,
            }
        }
    }

    /// Brings this engine up to what other writers of a shared medium (a
    /// bucket store) committed: their sealed packs are loaded (their
    /// chunks read and deduplicate), and their snapshots appear, complete,
    /// fail and vanish here as they did there. Returns whether anything
    /// changed. Cheap when nothing did (one HEAD request on a bucket
    /// store); does nothing on a store with one writer.
    ///
    /// Pending snapshots of a writer that was fenced are failed here (it
    /// can never complete them).
    pub fn refresh(&self) -> Result<bool> {
        let moved = self.refresh_view()?;
        if !self.inner.read_only {
            self.fail_snapshots_of_unregistered_writers()?;
        }
        Ok(moved)
    }

    /// [`Engine::refresh`] without the cleanup, for lookups that may hold
    /// the reference guard (the cleanup takes it).
    fn refresh_view(&self) -> Result<bool> {
        let moved = self
            .inner
            .storage
            .refresh()
            .map_err(|error| Error::io("reading the store's head", error))?;
        if moved {
            self.take_in_commits()?;
        }
        Ok(moved)
    }

    /// Takes in other writers' commits if [`SHARED_REFRESH_INTERVAL`] has
    /// passed since this was last done (one thread does it; the others go
    /// on). A failure costs nothing but dedup: the put goes on, and a
    /// commit meets the other writers' work anyway.
    fn refresh_when_due(&self) {
        if !self.inner.storage.is_tiered() || self.inner.read_only {
            return;
        }
        let now = self.now_millis();
        let last = self.inner.refreshed_at_millis.load(Ordering::Acquire);
        let interval = SHARED_REFRESH_INTERVAL.as_millis() as u64;
        if now < last.saturating_add(interval)
            || self
                .inner
                .refreshed_at_millis
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        if let Err(error) = self.refresh() {
            tracing::debug!(%error, "looking for other writers' commits failed; the put goes on");
        }
    }

    /// Follows the commits the storage has taken in: see
    /// [`Engine::refresh`].
    fn take_in_commits(&self) -> Result<()> {
        loop {
            match self.take_in_commits_once() {
                Err(error) if error.is_head_moved() => continue,
                done => return done,
            }
        }
    }

    /// Whether this engine's view is the storage's current generation
    /// (see `viewed_generation`).
    pub(crate) fn view_is_current(&self) -> bool {
        self.inner.viewed_generation.load(Ordering::Acquire) == self.inner.storage.generation()
    }

    fn take_in_commits_once(&self) -> Result<()> {
        let generation = self.inner.storage.generation();
        self.take_in_commits_at()?;
        if self.inner.storage.generation() != generation {
            // Another commit was taken in meanwhile: part of the view may
            // predate it. Go again.
            return Err(Error::io(
                "taking in other writers' commits",
                std::io::Error::other(crate::error::HeadMoved),
            ));
        }
        self.inner
            .viewed_generation
            .fetch_max(generation, Ordering::AcqRel);
        Ok(())
    }

    fn take_in_commits_at(&self) -> Result<()> {
        // Domains first: other writers' snapshots are keyed in them (all
        // of them: a domain taken in while this writer made its own is
        // registered here too).
        self.inner.keyring.take_in(self.inner.storage.as_ref())?;
        for domain in self.inner.keyring.domains() {
            self.inner.chunks.register_domain(domain);
        }
        self.inner.chunks.refresh()?;
        let changes = self.inner.catalog.reload()?;
        let maps = self.maps();
        let root_of = |record: &Option<SnapshotRecord>| match record {
            Some(SnapshotRecord {
                state: SnapshotState::Completed { root, .. },
                ..
            }) => Some(*root),
            _ => None,
        };
        let pending = |record: &Option<SnapshotRecord>| {
            record
                .as_ref()
                .is_some_and(|record| record.state == SnapshotState::Pending)
        };
        for (before, after) in changes {
            let (old_root, new_root) = (root_of(&before), root_of(&after));
            if old_root != new_root {
                if let Some(root) = new_root {
                    self.inner.references.acquire_tree(&maps, root);
                }
                if let Some(root) = old_root {
                    self.inner.references.release_tree(&maps, root);
                }
            }
            match (pending(&before), &after) {
                // Started by another writer: pending here too, its puts
                // and completion that writer's.
                (false, Some(record)) if record.state == SnapshotState::Pending => {
                    if self
                        .inner
                        .sessions
                        .read()
                        .contains_key(&record.started.snapshot)
                    {
                        continue;
                    }
                    let parent_root = parent_root_of(&self.inner.catalog, record)?;
                    let domain = domain_of(&self.inner.keyring, &record.started)?;
                    let (session, _) = Session::recover(
                        self.inner.storage.as_ref(),
                        &self.inner.chunks,
                        &record.started,
                        parent_root,
                        domain,
                        self.inner.config.put_durability == PutDurability::Immediate,
                        false,
                        self.now_millis(),
                    )?;
                    self.inner
                        .references
                        .acquire_tree(&maps, session.parent_root);
                    self.inner
                        .sessions
                        .write()
                        .insert(record.started.snapshot, Arc::new(session));
                }
                // Completed or failed by the writer that started it.
                (true, _) if !pending(&after) => {
                    let Some(id) = before.as_ref().map(|record| record.started.snapshot) else {
                        continue;
                    };
                    let mut sessions = self.inner.sessions.write();
                    if sessions.get(&id).is_some_and(|session| session.elsewhere) {
                        if let Some(session) = sessions.remove(&id) {
                            drop(sessions);
                            self.inner
                                .references
                                .release_tree(&maps, session.parent_root);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs a blocking engine call on tokio's blocking pool when called from
    /// a runtime (so the runtime's workers never block), inline otherwise.
    pub(crate) async fn run_blocking<R: Send + 'static>(
        &self,
        call: impl FnOnce(&Engine) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let engine = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(move || call(&engine))
                .await
                .map_err(|join| {
                    Error::io("blocking task", std::io::Error::other(join.to_string()))
                })?,
            Err(_) => call(&engine),
        }
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.get_mut().take() {
            reaper.abort();
        }
        // Best effort: a clean shutdown makes acknowledged puts durable even
        // in `AtComplete` mode. Errors cannot be reported from here.
        if !self.poisoned.load(Ordering::Acquire) && self.chunks.sync().is_ok() {
            for session in self.sessions.get_mut().values() {
                let _ = session.sync_journal();
            }
            let _ = self.storage.sync_dir(JOURNAL_DIR);
        }
    }
}

/// The unlocked domain of a snapshot: its encryption key's, or its
/// owner's dedup domain (named in `kms_key_arn` of a plain snapshot);
/// `None` for the plain domain.
fn domain_of(keyring: &Keyring, started: &StartedRecord) -> Result<Option<Arc<DomainKeys>>> {
    let Some(arn) = started.kms_key_arn.as_deref() else {
        return Ok(None);
    };
    keyring.domain(arn).map(Some).ok_or_else(|| {
        Error::corrupted(
            "catalog",
            format!(
                "snapshot {} is encrypted under {arn}, which the keyring does not hold",
                started.snapshot
            ),
        )
    })
}

fn parent_root_of(catalog: &Catalog, record: &SnapshotRecord) -> Result<Option<ChunkId>> {
    let Some(parent) = record.started.parent else {
        return Ok(None);
    };
    match catalog.get(parent).map(|parent| parent.state) {
        Some(SnapshotState::Completed { root, .. }) => Ok(root),
        _ => Err(Error::corrupted(
            "catalog",
            format!(
                "pending snapshot {} has parent {parent}, which is not completed",
                record.started.snapshot
            ),
        )),
    }
}

fn random_u64() -> Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::io("reading random bytes", std::io::Error::other(e.to_string())))?;
    Ok(u64::from_le_bytes(bytes))
}

/// Reads the store header (either copy), or creates it in a new store.
/// A writer adds the mirror a store written before headers were kept
/// twice lacks. Returns the header and the damage found.
fn load_or_create_header(storage: &dyn Storage, now: u64) -> Result<(StoreHeader, Vec<Damage>)> {
    let decode = |bytes: &[u8]| {
        StoreHeader::decode(bytes).map_err(|error| error.into_error(STORE_HEADER_NAME))
    };
    // Written once; on a shared medium only if no other writer's commit
    // (another first open of a new store, say) came in since it was read.
    let generation = storage.generation();
    if let Some(read) = read_mirrored(storage, STORE_HEADER_NAME, decode)? {
        if read.mirror_missing && !storage.is_read_only() {
            storage
                .write_atomic_unless_moved(
                    &mirror_name(STORE_HEADER_NAME),
                    &read.value.encode(),
                    generation,
                )
                .map_err(|e| Error::io("writing the store header's mirror", e))?;
        }
        return Ok((read.value, read.damage));
    }
    if storage.is_read_only() {
        return Err(Error::NotFound {
            message: format!("no store here: {STORE_HEADER_NAME} is missing"),
        });
    }
    let mut random = [0u8; 48];
    getrandom::fill(&mut random)
        .map_err(|e| Error::io("reading random bytes", std::io::Error::other(e.to_string())))?;
    let mut store_id = [0u8; 16];
    let mut token_secret = [0u8; 32];
    store_id.copy_from_slice(&random[..16]);
    token_secret.copy_from_slice(&random[16..]);
    let header = StoreHeader {
        store_id,
        token_secret,
        created_millis: now,
    };
    write_mirrored_unless_moved(storage, STORE_HEADER_NAME, &header.encode(), generation)
        .map_err(|e| Error::io("writing the store header", e))?;
    Ok((header, Vec::new()))
}

fn missing_chunk(chunk: ChunkId) -> Error {
    Error::corrupted(
        format!("chunk {chunk}"),
        "a map references it but it is missing from the store",
    )
}

fn no_store(dir: &Path) -> Error {
    Error::NotFound {
        message: format!("no store at {}", dir.display()),
    }
}

/// Removes journals no pending snapshot owns: leftovers of completions,
/// cancellations and starts that failed before their Started record.
fn remove_stale_journals(
    storage: &dyn Storage,
    sessions: &HashMap<SnapshotId, Arc<Session>>,
) -> Result<()> {
    for name in storage
        .list(JOURNAL_DIR)
        .map_err(|e| Error::io("listing journals", e))?
    {
        let pending = name
            .strip_suffix(".journal")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .is_some_and(|id| sessions.contains_key(&SnapshotId(id)));
        if !pending {
            storage
                .remove(&format!("{JOURNAL_DIR}/{name}"))
                .map_err(|e| Error::io(format!("removing stale journal {name}"), e))?;
        }
    }
    Ok(())
}
