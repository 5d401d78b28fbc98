//! A store in an S3-compatible bucket, with a local directory for what is
//! not committed yet and for a cache.
//!
//! Names fall in three classes (DESIGN.md §3.1):
//!
//! - `pending/…` (journals of pending snapshots) live only in the local
//!   directory: an acknowledged put is durable on the writer's disk.
//! - `packs/…` are immutable objects. A pack is appended to a local staging
//!   file (`packs/` of the local directory, durable on `sync`) and uploaded
//!   create-only when it is sealed ([`Storage::seal`]); indexes and markers
//!   written whole are uploaded at once. The bucket's listing names them.
//!   Sealed packs move to `cache/packs/` locally; reads of a pack that is
//!   not local are ranged GETs.
//! - Every other name (the catalog, the store header, the keyring and
//!   their copies) is kept as extents: immutable objects under `log/`, named
//!   by the writer's epoch and a counter, listed in order by the `head`
//!   object. A `sync` of such a file publishes the bytes appended to every
//!   such file since the last publication and replaces the head with
//!   `If-Match` on its ETag: that replacement is the commit.
//!
//! Many writers may hold the store at once. Each registers in the head
//! (its id, kept in the local directory, and the next epoch) and reserves
//! pack sequences there; a commit that loses the head race takes the
//! other commit in and reports [`HeadMoved`], so the engine redoes its
//! change on top. A writer whose registration is gone is fenced: it fails
//! its next commit, and writes nothing more.
//!
//! Removing an object condemns it: the head lists it, every state from
//! then on treats it as gone, and a writer deletes it (with `If-Match`)
//! only once [`BucketOptions::deletion_grace`] has passed, so readers still
//! working from an older head keep reading it meanwhile.

use super::object::{Body, Created, ObjectClient, Swapped};
use super::{parent_dir, AppendFile, HeadMoved, LocalStorage, ReadFile, Storage};
use crate::format::compaction::MARKER_SUFFIX;
use crate::format::head::{
    Condemned, Extent, Head, HeadCommit, HeadFile, RegisteredWriter, MAX_RECENT_COMMITS,
    MAX_WRITERS,
};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

/// The name of the head object.
pub const HEAD_OBJECT: &str = "head";
/// Where extents live in the bucket.
const EXTENT_PREFIX: &str = "log/";
/// Where the probe writes its scratch object.
const PROBE_PREFIX: &str = "probe/";
/// The directory of immutable objects (packs, indexes, markers).
const OBJECT_DIR: &str = "packs";
/// The directory of pending snapshots' journals (local only).
const LOCAL_DIR: &str = "pending";
/// Where sealed packs and downloaded indexes are kept locally.
const CACHE_DIR: &str = "cache";
/// A file with more extents than this is rewritten as one at its next
/// publication, so the head stays small.
const MAX_EXTENTS: usize = 32;
/// Bytes fetched per ranged read of a pack that is not local.
const READ_WINDOW: u64 = 4 << 20;
/// Windows kept in memory across all remote packs (32 MiB).
const CACHED_WINDOWS: usize = 8;
/// Windows fetched ahead of a sequential reader.
const READ_AHEAD_WINDOWS: u64 = 3;
/// Background fetches at once, across all objects.
const MAX_PREFETCHES: usize = 4;
/// Sealed packs uploading at once, each with two parts in flight (more
/// raised memory, not speed: the server's ingest bounds the rate).
const MAX_UPLOADS: usize = 1;
/// Pack sequences a writer reserves at a time (one head commit each).
const PACK_RESERVATION: u32 = 64;
/// The disk cache's default bound.
pub const DEFAULT_CACHE_BYTES: u64 = 2 << 30;
/// How long a removed object stays in the bucket by default: longer than a
/// multi-hour restore, shorter than a day so a nightly `gc` frees what the
/// one before it condemned.
pub const DEFAULT_DELETION_GRACE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// How a bucket store is opened.
#[derive(Clone, Debug)]
pub struct BucketOptions {
    /// The bound of the local range cache (`cache/`), in bytes; zero keeps
    /// nothing on disk.
    pub cache_bytes: u64,
    /// How long a removed object stays readable in the bucket for readers
    /// of an older head before a writer deletes it.
    pub deletion_grace: std::time::Duration,
}

impl Default for BucketOptions {
    fn default() -> BucketOptions {
        BucketOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            deletion_grace: DEFAULT_DELETION_GRACE,
        }
    }
}

/// Where a name lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Only in the local directory.
    Local,
    /// An immutable object (staged locally until sealed).
    Object,
    /// Extents listed by the head.
    Tracked,
}

fn class(name: &str) -> Class {
    match name.split_once('/').map(|(dir, _)| dir) {
        Some(LOCAL_DIR) => Class::Local,
        // A compaction marker is its writer's crash record, never shared
        // (DESIGN §18): another writer must not finish or undo it.
        Some(OBJECT_DIR) if name.ends_with(MARKER_SUFFIX) => Class::Local,
        Some(OBJECT_DIR) => Class::Object,
        _ if name == LOCAL_DIR => Class::Local,
        _ if name == OBJECT_DIR => Class::Object,
        _ => Class::Tracked,
    }
}

fn fenced(detail: String) -> io::Error {
    io::Error::other(format!(
        "this writer was fenced: {detail}; reopen the store to write again"
    ))
}

fn to_io(error: crate::error::Error) -> io::Error {
    match error {
        crate::error::Error::Io {
            source, context, ..
        } => io::Error::new(source.kind(), format!("{context}: {source}")),
        crate::error::Error::NotFound { message } => {
            io::Error::new(io::ErrorKind::NotFound, message)
        }
        crate::error::Error::AccessDenied { message } => {
            io::Error::new(io::ErrorKind::PermissionDenied, message)
        }
        other => io::Error::other(other.to_string()),
    }
}

/// A window fetch under way, and its outcome once done.
#[derive(Default)]
struct Fetch {
    outcome: Mutex<Option<io::Result<Bytes>>>,
    done: parking_lot::Condvar,
}

/// A tracked file's content, shared by its append handles and readers.
type Content = Arc<RwLock<Vec<u8>>>;

#[derive(Default)]
struct TrackedFile {
    content: Content,
    /// The extents published so far (their bytes are a prefix of content).
    extents: Vec<Extent>,
    /// Counts the times another writer's commit replaced this file's
    /// unpublished change: a handle that changed the file before sees it
    /// moved and reports [`HeadMoved`] instead of publishing nothing.
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl TrackedFile {
    fn published_len(&self) -> u64 {
        self.extents.iter().map(|extent| extent.len).sum()
    }
}

struct State {
    head: Head,
    etag: String,
    files: BTreeMap<String, TrackedFile>,
    /// Whether a file was created, rewritten or removed since the last
    /// publication (appends are seen by length).
    changed: bool,
    /// Files rewritten whole since the last publication.
    rewritten: BTreeSet<String>,
    /// Those of them rewritten by [`Storage::write_atomic_unless_moved`]:
    /// computed from the view they will be committed on, so allowed beside
    /// other writers.
    rewritten_checked: BTreeSet<String>,
    /// Extents no file will list after the next publication: deleted once
    /// it commits.
    orphaned: Vec<Extent>,
    /// Objects sealed since the last publication.
    added: Vec<String>,
    /// Extents written by this writer so far.
    extents_written: u64,
    /// Set once a commit found another writer's epoch.
    fenced: Option<String>,
    /// Lengths of objects from the last listing.
    listed_lengths: BTreeMap<String, u64>,
    /// Whether objects were condemned since the last publication.
    newly_condemned: bool,
    /// Objects removed and not yet deleted, by name: the head's, and those
    /// removed since the last publication (which adds them to the head).
    condemned: BTreeMap<String, Condemned>,
    /// Pack sequences this writer reserved and has not used yet.
    reserved: std::ops::Range<u32>,
    /// Whether the next publication reserves more pack sequences.
    reserving: bool,
}

struct Inner {
    client: ObjectClient,
    local: LocalStorage,
    read_only: bool,
    /// The epoch this writer registered with (0 for a reader).
    epoch: u64,
    /// This writer's random id, registered in the head with `epoch`.
    writer_id: [u8; 16],
    /// Counts the other writers' commits taken in ([`Storage::generation`]).
    taken_in: std::sync::atomic::AtomicU64,
    /// How long condemned objects are kept.
    deletion_grace: std::time::Duration,
    /// Extents found damaged when the store was opened.
    damage: Vec<crate::error::Damage>,
    state: Mutex<State>,
    /// Recently read windows of remote objects: (name, start, bytes),
    /// least recently used first.
    windows: Mutex<Vec<(String, u64, Bytes)>>,
    /// Windows kept on local disk, bounded.
    disk_cache: DiskCache,
    /// Windows being fetched, by (name, start): later askers wait.
    fetching: Mutex<std::collections::HashMap<(String, u64), Arc<Fetch>>>,
    /// Background fetches running.
    prefetches: std::sync::atomic::AtomicUsize,
    /// Sealed packs uploading, and the signal that one finished.
    uploads: Mutex<usize>,
    upload_done: parking_lot::Condvar,
    /// The scratch directory of a read-only open without a local one.
    _scratch: Option<tempfile::TempDir>,
}

impl Drop for Inner {
    /// Takes this writer's registration out of the head (best effort: a
    /// writer that crashed stays registered until another fences it, or
    /// until [`MAX_WRITERS`] later registrations push it out).
    fn drop(&mut self) {
        if self.read_only || self.state.get_mut().fenced.is_some() {
            return;
        }
        for _ in 0..8 {
            let Ok(Some((head, etag))) = read_head(&self.client) else {
                return;
            };
            if !head.is_registered(&self.writer_id, self.epoch) {
                return;
            }
            let next = Head {
                generation: head.generation + 1,
                writer_id: self.writer_id,
                writers: head
                    .writers
                    .iter()
                    .filter(|writer| writer.id != self.writer_id)
                    .copied()
                    .collect(),
                ..head
            };
            let Ok(bytes) = next.encode() else {
                return;
            };
            match self
                .client
                .replace(HEAD_OBJECT, &Body::Bytes(bytes.into()), &etag)
            {
                Ok(Swapped::Replaced(_)) | Err(_) => return,
                Ok(Swapped::Lost) => continue,
            }
        }
    }
}

/// A store in a bucket, with its local directory. See the module docs.
#[derive(Clone)]
pub struct BucketStorage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BucketStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BucketStorage({}, local {})",
            self.inner.client.store().location(),
            self.inner.local.root().display()
        )
    }
}

impl BucketStorage {
    /// Opens the store in `client`'s bucket for writing, with `local_dir`
    /// as its local directory (created if needed, locked against other
    /// processes), whose `cache/` keeps up to `options.cache_bytes` of
    /// recently read ranges: checks that the service enforces conditional
    /// writes, creates the head of a new store, takes the next writer epoch
    /// (which fences any earlier writer), and loads the tracked files.
    pub fn open(
        client: ObjectClient,
        local_dir: &std::path::Path,
        options: BucketOptions,
    ) -> crate::error::Result<BucketStorage> {
        client.probe(PROBE_PREFIX)?;
        let local = LocalStorage::open(local_dir).map_err(|error| {
            crate::error::Error::io(format!("opening {}", local_dir.display()), error)
        })?;
        let writer_id = local_writer_id(&local).map_err(|error| {
            crate::error::Error::io(format!("reading {LOCAL_WRITER_ID}"), error)
        })?;
        let mut highest_listed = None;
        let mut claims = 0;
        let (head, etag, tracked) = loop {
            let (current, etag) = match read_head(&client)? {
                Some(found) => found,
                None => {
                    let initial = Head::default();
                    let bytes = encode_head(&initial)?;
                    match client.create(HEAD_OBJECT, &Body::Bytes(bytes.into()))? {
                        Created::Written(etag) => (initial, etag),
                        Created::Exists => continue,
                    }
                }
            };
            // A store older than reservations names packs it never
            // reserved: reservations start past every pack there is.
            let mut next_pack = current.next_pack;
            if next_pack == 0 {
                let highest = match highest_listed {
                    Some(highest) => highest,
                    None => *highest_listed.insert(highest_pack_sequence(&client, &current)?),
                };
                next_pack = highest.map_or(0, |seq: u32| seq.saturating_add(1));
            }
            let epoch = current.writer_epoch + 1;
            let claimed = Head {
                generation: current.generation + 1,
                writer_epoch: epoch,
                writer_id,
                writers: registered(&current.writers, writer_id, epoch),
                next_pack: reserve_after(next_pack)?,
                ..current
            };
            let bytes = encode_head(&claimed)?;
            let etag = match client.replace(HEAD_OBJECT, &Body::Bytes(bytes.into()), &etag)? {
                Swapped::Replaced(etag) => etag,
                Swapped::Lost => continue,
            };
            let tracked = load_tracked(&client, &claimed)?;
            // An extent missing while the head moved on was deleted by the
            // commit after the claim, which stopped naming it: claim again
            // on top of that commit (the claim replaces this one).
            claims += 1;
            if tracked.1.is_empty()
                || claims == MAX_LOAD_ATTEMPTS
                || !head_moved_on(&client, &etag)?
            {
                break (claimed, etag, tracked);
            }
        };
        let storage = BucketStorage::assemble(client, local, None, options, (head, etag, tracked));
        storage.drop_stale_staging()?;
        // Objects condemned long enough ago are deleted now: a store whose
        // writers only open, back up and exit still sheds them.
        storage
            .publish()
            .map_err(|error| crate::error::Error::io("deleting condemned objects", error))?;
        Ok(storage)
    }

    /// Opens the store in `client`'s bucket for reading only: nothing is
    /// written to the bucket, nor to `local_dir` but its range cache
    /// (`local_dir` need not exist: then nothing is cached).
    pub fn open_read_only(
        client: ObjectClient,
        local_dir: &std::path::Path,
        options: BucketOptions,
    ) -> crate::error::Result<BucketStorage> {
        let state = read_consistent_state(&client)?;
        let (local, scratch) = match LocalStorage::open_read_only(local_dir) {
            Ok(local) => (local, None),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let scratch = tempfile::tempdir().map_err(|error| {
                    crate::error::Error::io("making a scratch directory", error)
                })?;
                let local = LocalStorage::open_read_only(scratch.path()).map_err(|error| {
                    crate::error::Error::io("opening a scratch directory", error)
                })?;
                (local, Some(scratch))
            }
            Err(error) => {
                return Err(crate::error::Error::io(
                    format!("opening {}", local_dir.display()),
                    error,
                ))
            }
        };
        Ok(BucketStorage::assemble(
            client, local, scratch, options, state,
        ))
    }

    /// A storage over a head and its tracked files; read-only when opened
    /// with a `scratch` directory standing in for a missing local one, or
    /// read-only local.
    fn assemble(
        client: ObjectClient,
        local: LocalStorage,
        scratch: Option<tempfile::TempDir>,
        options: BucketOptions,
        (head, etag, (files, damage)): (Head, String, Tracked),
    ) -> BucketStorage {
        let cache_dir = scratch.is_none().then(|| local.root().join(CACHE_DIR));
        let read_only = local.is_read_only();
        let (epoch, writer_id, reserved) = if read_only {
            (0, [0; 16], 0..0)
        } else {
            // Opening for writing registered this writer last and reserved
            // the range below the head's next_pack.
            (
                head.writer_epoch,
                head.writer_id,
                head.next_pack.saturating_sub(PACK_RESERVATION)..head.next_pack,
            )
        };
        let condemned = head
            .condemned
            .iter()
            .map(|condemned| (condemned.object.clone(), condemned.clone()))
            .collect();
        BucketStorage {
            inner: Arc::new(Inner {
                client,
                local,
                read_only,
                epoch,
                writer_id,
                taken_in: std::sync::atomic::AtomicU64::new(0),
                deletion_grace: options.deletion_grace,
                damage,
                state: Mutex::new(State {
                    head,
                    etag,
                    files,
                    changed: false,
                    rewritten: BTreeSet::new(),
                    rewritten_checked: BTreeSet::new(),
                    orphaned: Vec::new(),
                    added: Vec::new(),
                    extents_written: 0,
                    fenced: None,
                    listed_lengths: BTreeMap::new(),
                    newly_condemned: false,
                    condemned,
                    reserved,
                    reserving: false,
                }),
                windows: Mutex::new(Vec::new()),
                disk_cache: DiskCache::new(cache_dir, options.cache_bytes),
                fetching: Mutex::default(),
                prefetches: std::sync::atomic::AtomicUsize::new(0),
                uploads: Mutex::new(0),
                upload_done: parking_lot::Condvar::new(),
                _scratch: scratch,
            }),
        }
    }

    /// The bucket's client.
    pub fn client(&self) -> &ObjectClient {
        &self.inner.client
    }

    /// The head this writer last committed or read.
    pub fn head(&self) -> Head {
        self.inner.state.lock().head.clone()
    }

    /// Removes staged packs that the bucket already holds (a crash after
    /// their upload, or a writer that came back after another took over).
    fn drop_stale_staging(&self) -> crate::error::Result<()> {
        let staged = self
            .inner
            .local
            .list(OBJECT_DIR)
            .map_err(|error| crate::error::Error::io("listing staged packs", error))?;
        for name in staged {
            let full = format!("{OBJECT_DIR}/{name}");
            if self.inner.client.head(&full)?.is_some() {
                self.inner
                    .local
                    .remove(&full)
                    .map_err(|error| crate::error::Error::io(format!("removing {full}"), error))?;
            }
        }
        Ok(())
    }

    fn writable(&self) -> io::Result<()> {
        if self.inner.read_only {
            return Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                format!("{} is open read-only", self.inner.client.store().location()),
            ));
        }
        if let Some(reason) = &self.inner.state.lock().fenced {
            return Err(fenced(reason.clone()));
        }
        Ok(())
    }

    /// Publishes every tracked file's new bytes as extents and commits them
    /// with the objects sealed and condemned since the last commit, by
    /// replacing the head with `If-Match`; deletes the condemned objects
    /// whose grace period is over. When that commit condemned objects whose
    /// grace is already over (a zero grace), a second commit deletes them.
    fn publish(&self) -> io::Result<()> {
        self.publish_once()?;
        if !self.expired_condemned(&self.inner.state.lock()).is_empty() {
            self.publish_once()?;
        }
        Ok(())
    }

    /// The other writers' commits taken in ([`Storage::generation`]), for
    /// callers that hold the state lock.
    fn taken_in(&self) -> u64 {
        self.inner
            .taken_in
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this writer may rewrite a tracked file (`what`) computed
    /// without a generation check on top of `head`: only while no other
    /// writer is registered, whose commit the rewrite could lose; the
    /// head's `If-Match` makes the check and the commit one step
    /// (DESIGN.md §18, "Many writers").
    fn alone(&self, head: &Head, what: &str) -> io::Result<()> {
        let others: Vec<String> = head
            .writers
            .iter()
            .filter(|writer| writer.id != self.inner.writer_id)
            .map(|writer| format!("{} (epoch {})", hex_id(&writer.id), writer.epoch))
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "a bucket store refuses this while other writers are registered ({}): {what} only \
             by a writer alone; run it when they have closed, or fence those that are gone",
            others.join(", ")
        )))
    }

    /// The committed condemned objects whose grace period is over.
    fn expired_condemned(&self, state: &State) -> Vec<Condemned> {
        let grace = u64::try_from(self.inner.deletion_grace.as_millis()).unwrap_or(u64::MAX);
        let now = now_millis();
        state
            .head
            .condemned
            .iter()
            .filter(|condemned| condemned.condemned_millis.saturating_add(grace) <= now)
            .cloned()
            .collect()
    }

    fn publish_once(&self) -> io::Result<()> {
        self.writable()?;
        let inner = &self.inner;
        let mut state = inner.state.lock();
        let appended = state
            .files
            .values()
            .any(|file| file.published_len() != file.content.read().len() as u64);
        let unchecked: Vec<String> = state
            .rewritten
            .difference(&state.rewritten_checked)
            .cloned()
            .collect();
        if !unchecked.is_empty() {
            // Rewriting a whole tracked file (a catalog checkpoint) computes
            // it from this process's view, and a commit another thread took
            // in meanwhile could be lost in it. Alone, there is no other
            // commit.
            let what = format!("{} is rewritten", unchecked.join(", "));
            if let Err(refusal) = self.alone(&state.head, &what) {
                let (head, etag) = (state.head.clone(), state.etag.clone());
                drop(state);
                // Back to the committed content: the rewrite is dropped.
                self.adopt(head, etag)?;
                return Err(refusal);
            }
        }
        let expired = self.expired_condemned(&state);
        if !appended
            && !state.changed
            && !state.newly_condemned
            && !state.reserving
            && state.added.is_empty()
            && expired.is_empty()
        {
            return Ok(());
        }
        // Condemned objects past their grace are deleted before the head
        // stops naming them: a crash in between leaves them named, and the
        // next writer's delete finds them gone. A delete that fails keeps
        // the object named (garbage, retried at the next commit).
        let mut purged = Vec::new();
        for condemned in expired {
            match inner
                .client
                .delete(&condemned.object, Some(&condemned.etag))
            {
                // Gone, or replaced by an object that is not the condemned
                // one: either way nothing of it is left to delete.
                Ok(_) => purged.push(condemned.object),
                Err(error) => {
                    tracing::warn!(object = %condemned.object, %error, "deleting a condemned object failed; the next commit tries again")
                }
            }
        }
        for object in &purged {
            state.condemned.remove(object);
        }
        let names: Vec<String> = state.files.keys().cloned().collect();
        for name in names {
            let (content, published, pieces) = {
                let file = &state.files[&name];
                (
                    file.content.clone(),
                    file.published_len(),
                    file.extents.len(),
                )
            };
            let bytes = Bytes::from(content.read().clone());
            let len = bytes.len() as u64;
            // A rewritten or shortened file, or one in too many pieces, is
            // published whole.
            let whole = state.rewritten.contains(&name) || len < published || pieces >= MAX_EXTENTS;
            if !whole && len == published {
                continue;
            }
            if whole {
                let file = state.files.get_mut(&name).expect("listed");
                let old = std::mem::take(&mut file.extents);
                state.orphaned.extend(old);
            }
            let from = if whole { 0 } else { published };
            if from == len {
                continue;
            }
            let piece = bytes.slice(from as usize..);
            state.extents_written += 1;
            let object = format!(
                "{EXTENT_PREFIX}{:016x}-{:016x}",
                inner.epoch, state.extents_written
            );
            let crc32 = crate::format::crc32(&[&piece]);
            match inner
                .client
                .create(&object, &Body::Bytes(piece.clone()))
                .map_err(to_io)?
            {
                Created::Written(_) => {}
                Created::Exists => {
                    let reason = format!("extent {object} was written by another process");
                    state.fenced = Some(reason.clone());
                    return Err(fenced(reason));
                }
            }
            let file = state.files.get_mut(&name).expect("listed");
            file.extents.push(Extent {
                object,
                len: piece.len() as u64,
                crc32,
            });
        }
        let next_pack = if state.reserving {
            reserve_after(state.head.next_pack)
                .map_err(|error| io::Error::other(error.to_string()))?
        } else {
            state.head.next_pack
        };
        let mut next = Head {
            generation: state.head.generation + 1,
            writer_epoch: state.head.writer_epoch,
            writer_id: inner.writer_id,
            writers: state.head.writers.clone(),
            next_pack,
            files: state
                .files
                .iter()
                .map(|(name, file)| HeadFile {
                    name: name.clone(),
                    extents: file.extents.clone(),
                })
                .collect(),
            commits: state.head.commits.clone(),
            condemned: state.condemned.values().cloned().collect(),
        };
        next.commits.push(HeadCommit {
            generation: next.generation,
            writer_epoch: inner.epoch,
            added: state.added.clone(),
        });
        let excess = next.commits.len().saturating_sub(MAX_RECENT_COMMITS);
        next.commits.drain(..excess);
        let bytes = next
            .encode()
            .map_err(|error| io::Error::other(error.to_string()))?;
        let outcome = inner
            .client
            .replace(HEAD_OBJECT, &Body::Bytes(bytes.into()), &state.etag)
            .map_err(to_io)?;
        match outcome {
            Swapped::Replaced(etag) => {
                if state.reserving {
                    state.reserved = state.head.next_pack..next.next_pack;
                    state.reserving = false;
                }
                state.head = next;
                state.etag = etag;
                state.added.clear();
                state.changed = false;
                state.newly_condemned = false;
                state.rewritten.clear();
                state.rewritten_checked.clear();
            }
            Swapped::Lost => {
                drop(state);
                return Err(self.take_in_other_commit());
            }
        }
        let orphaned = std::mem::take(&mut state.orphaned);
        drop(state);
        // Extents no file lists any more: garbage now; a failure to delete
        // them leaves garbage, never damage.
        for extent in orphaned {
            let _ = inner.client.delete(&extent.object, None);
        }
        Ok(())
    }

    /// After a lost head race: reads the head another writer committed.
    /// Without this writer's registration in it, this writer is fenced.
    /// Otherwise the other commit is taken in: every tracked file becomes
    /// what that head names (an unpublished change of one is dropped, and
    /// its handles report it), so are this writer's unpublished removals;
    /// its sealed objects and reservation stay for its next commit, and
    /// the extents this attempt wrote are deleted. Returns the error to report:
    /// [`HeadMoved`] or fenced.
    fn take_in_other_commit(&self) -> io::Error {
        let inner = &self.inner;
        let (head, etag) = match read_head(&inner.client) {
            Ok(Some(found)) => found,
            Ok(None) => return io::Error::other("the store's head vanished"),
            Err(error) => return to_io(error),
        };
        if !head.is_registered(&inner.writer_id, inner.epoch) {
            let reason = format!(
                "writer epoch {} is no longer registered in the store's head (another process declared it gone)",
                inner.epoch
            );
            inner.state.lock().fenced = Some(reason.clone());
            return fenced(reason);
        }
        if let Err(error) = self.adopt(head, etag) {
            return error;
        }
        io::Error::other(HeadMoved)
    }

    /// Makes `head` (with `etag`) this writer's view; see
    /// [`BucketStorage::take_in_other_commit`].
    fn adopt(&self, head: Head, etag: String) -> io::Result<()> {
        let inner = &self.inner;
        let (head, etag, (mut files, damage)) =
            load_newest(&inner.client, head, etag).map_err(to_io)?;
        if !inner.read_only && !head.is_registered(&inner.writer_id, inner.epoch) {
            let reason = format!(
                "writer epoch {} is no longer registered in the store's head (another process declared it gone)",
                inner.epoch
            );
            inner.state.lock().fenced = Some(reason.clone());
            return Err(fenced(reason));
        }
        for found in damage {
            tracing::warn!(file = %found.file, detail = %found.detail, "damage in another writer's commit");
        }
        let mut state = inner.state.lock();
        // Extents the adopted head names are never garbage, whatever this
        // writer's lost attempt made of them (a whole rewrite orphans the
        // extents it replaces, and the other writer's commit may keep them).
        let named: BTreeSet<String> = head
            .files
            .iter()
            .flat_map(|other| other.extents.iter().map(|extent| extent.object.clone()))
            .collect();
        let mut orphaned = std::mem::take(&mut state.orphaned);
        orphaned.retain(|extent| !named.contains(&extent.object));
        let old = std::mem::take(&mut state.files);
        for (name, mut file) in old {
            let unpublished = file.published_len() != file.content.read().len() as u64
                || state.rewritten.contains(&name);
            if unpublished {
                file.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            // Extents this writer wrote in the lost attempt are named by
            // no head: garbage now.
            orphaned.extend(
                file.extents
                    .drain(..)
                    .filter(|extent| !named.contains(&extent.object)),
            );
            match files.remove(&name) {
                // Handles opened before see the other writer's content.
                Some(theirs) => {
                    *file.content.write() = std::mem::take(&mut *theirs.content.write());
                    file.extents = theirs.extents;
                    state.files.insert(name, file);
                }
                None => {
                    file.content.write().clear();
                }
            }
        }
        state.files.extend(files);
        state.rewritten.clear();
        state.rewritten_checked.clear();
        state.changed = false;
        // Unpublished removals are dropped, not redone: they were judged
        // garbage against the state before the other commit (see
        // `condemnable`).
        state.condemned = head
            .condemned
            .iter()
            .map(|condemned| (condemned.object.clone(), condemned.clone()))
            .collect();
        state.newly_condemned = false;
        state.head = head;
        state.etag = etag;
        inner
            .taken_in
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        drop(state);
        for extent in orphaned {
            let _ = inner.client.delete(&extent.object, None);
        }
        Ok(())
    }

    /// Removes writer `id` from the head's registrations: it is fenced at
    /// its next commit or upload and writes nothing more. For a writer
    /// known to be gone (its machine lost), so that another may clean up
    /// after it. Returns whether it was registered.
    pub fn fence_writer(&self, id: [u8; 16]) -> io::Result<bool> {
        loop {
            self.writable()?;
            let mut state = self.inner.state.lock();
            let Some(at) = state.head.writers.iter().position(|writer| writer.id == id) else {
                return Ok(false);
            };
            state.head.writers.remove(at);
            state.changed = true;
            drop(state);
            match self.publish() {
                Ok(()) => return Ok(true),
                Err(error) if super::is_head_moved(&error) => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// The writers registered in the head this writer last read: their
    /// ids and epochs.
    pub fn writers(&self) -> Vec<RegisteredWriter> {
        self.inner.state.lock().head.writers.clone()
    }

    /// The writers registered now (the head read again), and the id of
    /// this one.
    pub fn current_writers(&self) -> crate::error::Result<Vec<RegisteredWriter>> {
        Ok(read_head(&self.inner.client)?
            .map(|(head, _)| head.writers)
            .unwrap_or_default())
    }

    /// The writer id kept in local directory `local_dir`, if it has one
    /// (it is made when the directory first opens a store for writing).
    pub fn writer_id_of(local_dir: &std::path::Path) -> Option<[u8; 16]> {
        let bytes = std::fs::read(local_dir.join(LOCAL_WRITER_ID)).ok()?;
        <[u8; 16]>::try_from(bytes.as_slice()).ok()
    }

    /// This writer's id in the head's registrations (zero for a reader).
    pub fn writer_id(&self) -> [u8; 16] {
        self.inner.writer_id
    }

    /// Replaces tracked file `name`'s content with `bytes` and publishes
    /// it. With `generation`, only if no other writer's commit was taken
    /// in since ([`Storage::write_atomic_unless_moved`]; such a rewrite is
    /// allowed beside other writers). A rewrite another thread's lost race
    /// dropped before it was published is [`HeadMoved`].
    fn rewrite_tracked(&self, name: &str, bytes: &[u8], generation: Option<u64>) -> io::Result<()> {
        self.writable()?;
        let (dropped, before) = {
            let mut state = self.inner.state.lock();
            // Under the state lock: a take-in (which holds it) is either
            // before this check or drops this rewrite and says so.
            if generation.is_some_and(|generation| generation != self.taken_in()) {
                return Err(io::Error::other(HeadMoved));
            }
            let file = state.files.entry(name.to_string()).or_default();
            *file.content.write() = bytes.to_vec();
            let dropped = file.dropped.clone();
            state.changed = true;
            state.rewritten.insert(name.to_string());
            if generation.is_some() {
                state.rewritten_checked.insert(name.to_string());
            }
            let before = dropped.load(std::sync::atomic::Ordering::Acquire);
            (dropped, before)
        };
        self.publish()?;
        if dropped.load(std::sync::atomic::Ordering::Acquire) != before {
            return Err(io::Error::other(HeadMoved));
        }
        Ok(())
    }

    /// Uploads `name`'s bytes create-only; an object of that name already
    /// there was written by another writer (pack names are sequence
    /// numbers), so this writer is fenced and nothing is overwritten.
    fn upload_new(&self, name: &str, body: &Body) -> io::Result<()> {
        self.confirm_holder()?;
        match self.inner.client.create(name, body).map_err(to_io)? {
            Created::Written(_) => Ok(()),
            Created::Exists => {
                let reason = format!("{name} was written to the bucket by another writer");
                self.inner.state.lock().fenced = Some(reason.clone());
                Err(fenced(reason))
            }
        }
    }

    /// Fails (and fences this writer) unless the head is still the one
    /// this writer last committed: a writer that was taken over uploads
    /// nothing more. (Create-only uploads and the head's `If-Match` are
    /// what guarantee it; this check keeps a stale writer from racing the
    /// new one for pack names.)
    fn confirm_holder(&self) -> io::Result<()> {
        let state = self.inner.state.lock();
        if let Some(reason) = &state.fenced {
            return Err(fenced(reason.clone()));
        }
        let current = self.inner.client.head(HEAD_OBJECT).map_err(to_io)?;
        if current.is_some_and(|meta| meta.etag == state.etag) {
            return Ok(());
        }
        drop(state);
        // Other writers commit too: what matters is whether this one is
        // still registered.
        let (head, _) = read_head(&self.inner.client)
            .map_err(to_io)?
            .ok_or_else(|| io::Error::other("the store's head vanished"))?;
        if head.is_registered(&self.inner.writer_id, self.inner.epoch) {
            return Ok(());
        }
        let reason = format!(
            "writer epoch {} is no longer registered in the store's head",
            self.inner.epoch
        );
        self.inner.state.lock().fenced = Some(reason.clone());
        Err(fenced(reason))
    }

    /// Whether `name` was removed (condemned) in this writer's view.
    fn is_condemned(&self, name: &str) -> bool {
        self.inner.state.lock().condemned.contains_key(name)
    }

    /// Uploads `name`'s bytes create-only, replacing an object of the same
    /// name that differs (a rewrite of a damaged index) once this writer
    /// has confirmed it still holds the store. An object already there
    /// with the same bytes is left alone: another writer wrote the index
    /// of a pack whose writer died before writing it, and that writer's
    /// index is those same bytes.
    fn upload(&self, name: &str, body: &Body) -> io::Result<()> {
        if self.is_condemned(name) {
            return Err(io::Error::other(format!(
                "{name} is condemned and must not be written again"
            )));
        }
        match self.inner.client.create(name, body).map_err(to_io)? {
            Created::Written(_) => Ok(()),
            Created::Exists => {
                if let Body::Bytes(bytes) = body {
                    let existing = self.inner.client.read_all(name).map_err(to_io)?;
                    if existing.as_ref() == Some(bytes) {
                        return Ok(());
                    }
                }
                self.confirm_holder()?;
                let head = self
                    .inner
                    .client
                    .head(name)
                    .map_err(to_io)?
                    .ok_or_else(|| io::Error::other(format!("{name} vanished while replaced")))?;
                match self
                    .inner
                    .client
                    .replace(name, body, &head.etag)
                    .map_err(to_io)?
                {
                    Swapped::Replaced(_) => Ok(()),
                    Swapped::Lost => Err(io::Error::other(format!(
                        "{name} was replaced by another writer"
                    ))),
                }
            }
        }
    }

    /// Reads `len` bytes at `offset` of remote object `name` through the
    /// window cache.
    fn read_remote(
        &self,
        name: &str,
        offset: u64,
        buf: &mut [u8],
        object_len: u64,
    ) -> io::Result<()> {
        let mut position = offset;
        let mut filled = 0;
        while filled < buf.len() {
            let window_start = position - position % READ_WINDOW;
            let window = self.window(name, window_start, object_len)?;
            let from = (position - window_start) as usize;
            let available = window.len().saturating_sub(from);
            if available == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let taken = available.min(buf.len() - filled);
            buf[filled..filled + taken].copy_from_slice(&window[from..from + taken]);
            filled += taken;
            position += taken as u64;
        }
        Ok(())
    }

    /// The window of `name` starting at `start`: from memory, else from
    /// the disk cache, else from the bucket (then kept in both). A window
    /// read right after the one before it starts fetching the next ones in
    /// the background (a sequential reader, a restore, finds them ready).
    fn window(&self, name: &str, start: u64, object_len: u64) -> io::Result<Bytes> {
        let cached = self.cached_window(name, start);
        // Read-ahead is topped up on every sequential read, found in the
        // cache or not: were it only on a miss, every fourth window would
        // be a miss, and the reader would wait for it.
        let sequential = start >= READ_WINDOW
            && self
                .inner
                .windows
                .lock()
                .iter()
                .any(|(cached, at, _)| cached == name && *at == start - READ_WINDOW);
        if sequential {
            let mut following = None;
            for ahead in 1..=READ_AHEAD_WINDOWS {
                let next = start + ahead * READ_WINDOW;
                if next < object_len {
                    self.prefetch(name, next, object_len);
                    continue;
                }
                // Past the end: a sequential reader (a restore) goes on
                // with the next object of the same kind in name order (the
                // next pack), whose first window is fetched ahead too.
                let (next_name, next_len) = match &following {
                    Some(found) => found,
                    None => match self.next_listed(name) {
                        Some(found) => following.insert(found),
                        None => break,
                    },
                };
                let at = next - object_len.div_ceil(READ_WINDOW) * READ_WINDOW;
                if at < *next_len {
                    self.prefetch(next_name, at, *next_len);
                }
            }
        }
        match cached {
            Some(bytes) => Ok(bytes),
            None => self.fetch_window(name, start, object_len),
        }
    }

    /// The listed object after `name` in name order with the same
    /// extension, and its length.
    fn next_listed(&self, name: &str) -> Option<(String, u64)> {
        let extension = name.rsplit_once('.').map(|(_, extension)| extension)?;
        let state = self.inner.state.lock();
        state
            .listed_lengths
            .range::<str, _>((std::ops::Bound::Excluded(name), std::ops::Bound::Unbounded))
            .find(|(next, _)| {
                next.rsplit_once('.')
                    .is_some_and(|(_, other)| other == extension)
            })
            .map(|(next, len)| (next.clone(), *len))
    }

    fn cached_window(&self, name: &str, start: u64) -> Option<Bytes> {
        let mut windows = self.inner.windows.lock();
        let position = windows
            .iter()
            .position(|(cached, at, _)| cached == name && *at == start)?;
        let entry = windows.remove(position);
        let bytes = entry.2.clone();
        windows.push(entry);
        Some(bytes)
    }

    /// Fetches a window once however many threads ask at the same time:
    /// the first fetches, the others wait for its result.
    fn fetch_window(&self, name: &str, start: u64, object_len: u64) -> io::Result<Bytes> {
        let key = (name.to_string(), start);
        let (fetch, first) = {
            let mut fetching = self.inner.fetching.lock();
            match fetching.get(&key) {
                Some(fetch) => (fetch.clone(), false),
                None => {
                    let fetch = Arc::new(Fetch::default());
                    fetching.insert(key.clone(), fetch.clone());
                    (fetch, true)
                }
            }
        };
        if !first {
            let mut outcome = fetch.outcome.lock();
            loop {
                match outcome.as_ref() {
                    Some(Ok(bytes)) => return Ok(bytes.clone()),
                    Some(Err(error)) => {
                        return Err(io::Error::new(error.kind(), error.to_string()))
                    }
                    None => fetch.done.wait(&mut outcome),
                }
            }
        }
        let result = self.load_window(name, start, object_len);
        if let Ok(bytes) = &result {
            let mut windows = self.inner.windows.lock();
            windows.push((name.to_string(), start, bytes.clone()));
            if windows.len() > CACHED_WINDOWS {
                windows.remove(0);
            }
        }
        *fetch.outcome.lock() = Some(match &result {
            Ok(bytes) => Ok(bytes.clone()),
            Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
        });
        fetch.done.notify_all();
        self.inner.fetching.lock().remove(&key);
        result
    }

    /// Reads a window from the disk cache, else the bucket.
    fn load_window(&self, name: &str, start: u64, object_len: u64) -> io::Result<Bytes> {
        let end = (start + READ_WINDOW).min(object_len);
        if start >= end {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        if let Some(bytes) = self.inner.disk_cache.get(name, start, end - start) {
            return Ok(bytes);
        }
        let bytes = self
            .inner
            .client
            .read_range(name, start..end)
            .map_err(to_io)?;
        self.inner.disk_cache.put(name, start, &bytes);
        Ok(bytes)
    }

    /// Fetches a window in the background unless it is cached, already
    /// being fetched, or too many fetches run.
    fn prefetch(&self, name: &str, start: u64, object_len: u64) {
        if self.cached_window(name, start).is_some()
            || self
                .inner
                .fetching
                .lock()
                .contains_key(&(name.to_string(), start))
        {
            return;
        }
        let running = &self.inner.prefetches;
        if running.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= MAX_PREFETCHES {
            running.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return;
        }
        let storage = self.clone();
        let name = name.to_string();
        std::thread::spawn(move || {
            // A failed prefetch costs nothing: the reader fetches again.
            let _ = storage.fetch_window(&name, start, object_len);
            storage
                .inner
                .prefetches
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
    }

    /// Drops every cached window of `name` (rewritten or removed).
    fn forget_cached(&self, name: &str) {
        self.inner
            .windows
            .lock()
            .retain(|(cached, _, _)| cached != name);
        self.inner.disk_cache.forget(name);
    }

    /// The length of remote object `name`, from the last listing or a HEAD.
    fn remote_len(&self, name: &str) -> io::Result<Option<u64>> {
        if let Some(len) = self.inner.state.lock().listed_lengths.get(name) {
            return Ok(Some(*len));
        }
        Ok(self
            .inner
            .client
            .head(name)
            .map_err(to_io)?
            .map(|head| head.len))
    }

    fn tracked_content(&self, name: &str) -> Option<Content> {
        self.inner
            .state
            .lock()
            .files
            .get(name)
            .map(|file| file.content.clone())
    }

    /// The staged (unsealed) local file of `name`, if there is one.
    fn local_copy(&self, name: &str) -> io::Result<Option<String>> {
        Ok(self.inner.local.exists(name)?.then(|| name.to_string()))
    }
}

/// The time of day by this machine's clock, in epoch milliseconds (only
/// grace periods depend on it).
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The file in a writer's local directory that holds its writer id.
const LOCAL_WRITER_ID: &str = "writer-id";

/// The writer id of the local directory `local`, made on its first open:
/// a writer that comes back after a crash replaces its own registration
/// (and fences the process it was, should that still run somewhere), so
/// a crashed writer does not stay registered.
fn local_writer_id(local: &LocalStorage) -> io::Result<[u8; 16]> {
    if local.exists(LOCAL_WRITER_ID)? {
        if let Ok(id) = <[u8; 16]>::try_from(local.read_all(LOCAL_WRITER_ID)?.as_slice()) {
            return Ok(id);
        }
    }
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).expect("the operating system's random source");
    local.write_atomic(LOCAL_WRITER_ID, &id)?;
    Ok(id)
}

/// A writer id in hex, as `blocksnap writers` shows it.
pub fn hex_id(id: &[u8; 16]) -> String {
    crate::codec::hex_bytes(id)
}

/// `writers` with `id` registered at `epoch` (replacing an entry of the
/// same id). Beyond [`MAX_WRITERS`], the writer registered longest ago is
/// dropped: fenced, if it still runs.
fn registered(writers: &[RegisteredWriter], id: [u8; 16], epoch: u64) -> Vec<RegisteredWriter> {
    let mut writers: Vec<RegisteredWriter> = writers
        .iter()
        .filter(|writer| writer.id != id)
        .copied()
        .collect();
    if writers.len() >= MAX_WRITERS {
        if let Some(oldest) = writers
            .iter()
            .enumerate()
            .min_by_key(|(_, writer)| writer.epoch)
            .map(|(at, _)| at)
        {
            writers.remove(oldest);
        }
    }
    let at = writers.partition_point(|writer| writer.id < id);
    writers.insert(at, RegisteredWriter { id, epoch });
    writers
}

/// The head's `next_pack` after reserving [`PACK_RESERVATION`] sequences
/// from `next`.
fn reserve_after(next: u32) -> crate::error::Result<u32> {
    next.checked_add(PACK_RESERVATION)
        .ok_or_else(|| crate::error::Error::Unsupported {
            message: "the store has used every pack sequence number".into(),
        })
}

/// The highest pack sequence in the bucket or condemned in `head` (packs
/// are `packs/NNNNNNNN.EXT`, N in hex).
fn highest_pack_sequence(client: &ObjectClient, head: &Head) -> crate::error::Result<Option<u32>> {
    let prefix = format!("{OBJECT_DIR}/");
    let listed = client.list(&prefix)?;
    let sequence = |name: &str| {
        let file = name.strip_prefix(&prefix)?;
        let (stem, _) = file.split_once('.')?;
        u32::from_str_radix(stem, 16).ok()
    };
    Ok(listed
        .iter()
        .map(|object| object.name.as_str())
        .chain(
            head.condemned
                .iter()
                .map(|condemned| condemned.object.as_str()),
        )
        .filter_map(sequence)
        .max())
}

fn encode_head(head: &Head) -> crate::error::Result<Vec<u8>> {
    head.encode().map_err(crate::error::Error::from)
}

/// The tracked files a head names, and the extents that were missing or
/// did not match their crc.
type Tracked = (BTreeMap<String, TrackedFile>, Vec<crate::error::Damage>);

/// The content of every tracked file `head` names. A damaged extent (its
/// crc does not match, it is shorter or longer than the head says, or it
/// is missing) is not fatal: its bytes are kept as read, cut or padded
/// with zeros to its length so the offsets after it hold, and it is
/// returned. Every tracked file's format has its own crcs and a second
/// copy (DESIGN.md §3), so the engine finds the damage and reads the copy
/// that verifies, as on a directory store.
fn load_tracked(client: &ObjectClient, head: &Head) -> crate::error::Result<Tracked> {
    let mut files = BTreeMap::new();
    let mut damaged = Vec::new();
    for file in &head.files {
        let mut content = Vec::with_capacity(file.len() as usize);
        for extent in &file.extents {
            let bytes = client.read_all(&extent.object)?.unwrap_or_default();
            let intact =
                bytes.len() as u64 == extent.len && crate::format::crc32(&[&bytes]) == extent.crc32;
            if intact {
                content.extend_from_slice(&bytes);
                continue;
            }
            let detail = if bytes.is_empty() {
                format!("an extent of {} is missing", file.name)
            } else if bytes.len() as u64 != extent.len {
                format!(
                    "an extent of {} holds {} bytes, not {}",
                    file.name,
                    bytes.len(),
                    extent.len
                )
            } else {
                format!("an extent of {} does not match its crc", file.name)
            };
            tracing::warn!(object = %extent.object, %detail, "damage in a bucket store");
            damaged.push(crate::error::Damage {
                file: extent.object.clone(),
                detail,
                // The file's own format and second copy decide what
                // was lost; the engine reports that.
                data_lost: false,
            });
            let end = content.len() + extent.len as usize;
            let kept = bytes.len().min(extent.len as usize);
            content.extend_from_slice(&bytes.slice(..kept));
            content.resize(end, 0);
        }
        files.insert(
            file.name.clone(),
            TrackedFile {
                content: Arc::new(RwLock::new(content)),
                extents: file.extents.clone(),
                dropped: Arc::default(),
            },
        );
    }
    Ok((files, damaged))
}

/// Whether the head's ETag is no longer `etag`.
fn head_moved_on(client: &ObjectClient, etag: &str) -> crate::error::Result<bool> {
    Ok(client
        .head(HEAD_OBJECT)?
        .is_some_and(|meta| meta.etag != etag))
}

/// Loads `head`'s tracked files; when an extent is missing or damaged
/// while the head has moved on, loads the newer head instead (see
/// [`read_consistent_state`]). Returns the head loaded with its ETag.
fn load_newest(
    client: &ObjectClient,
    head: Head,
    etag: String,
) -> crate::error::Result<(Head, String, Tracked)> {
    let (mut head, mut etag) = (head, etag);
    let mut attempt = 0;
    loop {
        let tracked = load_tracked(client, &head)?;
        attempt += 1;
        if tracked.1.is_empty() || attempt == MAX_LOAD_ATTEMPTS {
            return Ok((head, etag, tracked));
        }
        match read_head(client)? {
            Some((newer, newer_etag)) if newer_etag != etag => (head, etag) = (newer, newer_etag),
            _ => return Ok((head, etag, tracked)),
        }
    }
}

/// A head, its ETag and its tracked files, for a reader. A writer deletes
/// the extents a commit stopped naming right after it: a reader that
/// finds extents missing or damaged while the head moved on reads the
/// new head instead; otherwise the damage is real and the engine meets it.
fn read_consistent_state(client: &ObjectClient) -> crate::error::Result<(Head, String, Tracked)> {
    let (head, etag) = read_head(client)?.ok_or_else(|| crate::error::Error::NotFound {
        message: format!("no store at {} (no head object)", client.store().location()),
    })?;
    load_newest(client, head, etag)
}

/// Reads of a head's tracked files before a missing extent is taken for
/// damage rather than for a newer commit's cleanup.
const MAX_LOAD_ATTEMPTS: usize = 8;

/// The head and its ETag; `None` for a bucket without a store.
/// What a bucket prefix holds, for a command deciding whether it may
/// create a store there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// A store: its head object exists.
    Store,
    /// Nothing at all.
    Nothing,
    /// Objects, but no store's head.
    Other,
}

/// What the prefix `client` addresses holds (one HEAD request, and a
/// listing when there is no store). Before a store's head exists its
/// first writer has written only the probe's scratch objects: a prefix
/// holding nothing else is a store being made by another writer, as good
/// as empty (several first backups may start at once).
pub fn presence(client: &ObjectClient) -> crate::error::Result<Presence> {
    if client.head(HEAD_OBJECT)?.is_some() {
        return Ok(Presence::Store);
    }
    let others = client
        .list("")?
        .into_iter()
        .any(|object| !object.name.starts_with(PROBE_PREFIX));
    Ok(if others {
        Presence::Other
    } else {
        Presence::Nothing
    })
}

fn read_head(client: &ObjectClient) -> crate::error::Result<Option<(Head, String)>> {
    loop {
        let Some(meta) = client.head(HEAD_OBJECT)? else {
            return Ok(None);
        };
        let Some(bytes) = client.read_all(HEAD_OBJECT)? else {
            continue;
        };
        // The head may have been replaced between the two requests: take
        // the bytes only if the ETag still matches.
        match client.head(HEAD_OBJECT)? {
            Some(again) if again.etag == meta.etag => {
                let head = Head::decode(&bytes).map_err(|error| error.into_error(HEAD_OBJECT))?;
                return Ok(Some((head, meta.etag)));
            }
            _ => continue,
        }
    }
}

/// An append handle on a tracked file: appends go to memory, `sync`
/// publishes.
struct TrackedAppend {
    storage: BucketStorage,
    content: Content,
    /// The file's drop count (see [`TrackedFile::dropped`]).
    dropped: Arc<std::sync::atomic::AtomicU64>,
    /// The drop count when this handle first appended since its last
    /// sync: if it moved, those appends were dropped.
    appended_at: Option<u64>,
    /// The storage's generation when the handle was opened: once another
    /// writer's commit has been taken in, what the handle's owner derived
    /// from the file may be stale, so it appends nothing more (it reports
    /// [`HeadMoved`] and reopens the file after reading it again).
    opened_at: u64,
}

impl AppendFile for TrackedAppend {
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<u64> {
        self.storage.writable()?;
        // The check and the append under the state lock, which a take-in
        // holds while it replaces the content: an append lands either
        // before it (and is counted dropped) or not at all, never on the
        // other writer's content.
        let _state = self.storage.inner.state.lock();
        if self.storage.taken_in() != self.opened_at {
            return Err(io::Error::other(HeadMoved));
        }
        let mut content = self.content.write();
        let offset = content.len() as u64;
        for part in parts {
            content.extend_from_slice(part);
        }
        self.appended_at
            .get_or_insert(self.dropped.load(std::sync::atomic::Ordering::Acquire));
        Ok(offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        let appended_at = self.appended_at.take();
        let moved = |now: u64| appended_at.is_some_and(|then| then != now);
        if moved(self.dropped.load(std::sync::atomic::Ordering::Acquire)) {
            return Err(io::Error::other(HeadMoved));
        }
        self.storage.publish()?;
        // Another thread's lost race may have dropped the appends before
        // this publication could carry them.
        if moved(self.dropped.load(std::sync::atomic::Ordering::Acquire)) {
            return Err(io::Error::other(HeadMoved));
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.content.read().len() as u64
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.storage.writable()?;
        self.content.write().truncate(len as usize);
        Ok(())
    }
}

struct TrackedRead {
    content: Content,
}

impl ReadFile for TrackedRead {
    fn len(&self) -> io::Result<u64> {
        Ok(self.content.read().len() as u64)
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let content = self.content.read();
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let source = start
            .checked_add(buf.len())
            .and_then(|end| content.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(source);
        Ok(())
    }
}

struct RemoteRead {
    storage: BucketStorage,
    name: String,
    len: u64,
}

impl ReadFile for RemoteRead {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset + buf.len() as u64 > self.len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.storage.read_remote(&self.name, offset, buf, self.len)
    }
}

impl Storage for BucketStorage {
    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        self.writable()?;
        match class(name) {
            Class::Local | Class::Object => self.inner.local.open_append(name),
            Class::Tracked => {
                let mut state = self.inner.state.lock();
                if !state.files.contains_key(name) {
                    state.changed = true;
                }
                let file = state.files.entry(name.to_string()).or_default();
                Ok(Box::new(TrackedAppend {
                    storage: self.clone(),
                    content: file.content.clone(),
                    dropped: file.dropped.clone(),
                    appended_at: None,
                    opened_at: self.taken_in(),
                }))
            }
        }
    }

    fn open_append_uncached(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        match class(name) {
            Class::Local | Class::Object => {
                self.writable()?;
                self.inner.local.open_append_uncached(name)
            }
            Class::Tracked => self.open_append(name),
        }
    }

    fn open_read(&self, name: &str) -> io::Result<Arc<dyn ReadFile>> {
        match class(name) {
            Class::Local => self.inner.local.open_read(name),
            Class::Tracked => self
                .tracked_content(name)
                .map(|content| Arc::new(TrackedRead { content }) as Arc<dyn ReadFile>)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string())),
            Class::Object => {
                if let Some(local) = self.local_copy(name)? {
                    return self.inner.local.open_read(&local);
                }
                if self.is_condemned(name) {
                    return Err(io::Error::new(io::ErrorKind::NotFound, name.to_string()));
                }
                let len = self
                    .remote_len(name)?
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
                Ok(Arc::new(RemoteRead {
                    storage: self.clone(),
                    name: name.to_string(),
                    len,
                }))
            }
        }
    }

    fn map(&self, _name: &str) -> io::Result<Option<Arc<dyn ReadFile>>> {
        Ok(None)
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.writable()?;
        match class(name) {
            Class::Local => self.inner.local.write_atomic(name, bytes),
            Class::Object => {
                self.upload(name, &Body::Bytes(Bytes::copy_from_slice(bytes)))?;
                self.forget_cached(name);
                self.inner.state.lock().added.push(name.to_string());
                Ok(())
            }
            Class::Tracked => self.rewrite_tracked(name, bytes, None),
        }
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.writable()?;
        match class(name) {
            Class::Local => self.inner.local.remove(name),
            Class::Object => {
                self.inner.local.remove(name)?;
                self.forget_cached(name);
                self.inner.state.lock().listed_lengths.remove(name);
                if self.is_condemned(name) {
                    return Ok(());
                }
                // Condemned, not deleted: readers of older heads may still
                // read it until its grace period is over (see `publish`).
                if let Some(head) = self.inner.client.head(name).map_err(to_io)? {
                    let mut state = self.inner.state.lock();
                    state.condemned.insert(
                        name.to_string(),
                        Condemned {
                            object: name.to_string(),
                            etag: head.etag,
                            condemned_millis: now_millis(),
                        },
                    );
                    state.newly_condemned = true;
                }
                Ok(())
            }
            Class::Tracked => {
                let mut state = self.inner.state.lock();
                if let Some(file) = state.files.remove(name) {
                    state.orphaned.extend(file.extents);
                    state.rewritten.remove(name);
                    state.changed = true;
                }
                Ok(())
            }
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut names = BTreeSet::new();
        match class(dir) {
            Class::Local => return self.inner.local.list(dir),
            Class::Object => {
                names.extend(self.inner.local.list(dir)?);
                let prefix = format!("{dir}/");
                let listed = self.inner.client.list(&prefix).map_err(to_io)?;
                let mut state = self.inner.state.lock();
                for object in listed {
                    // Markers in the bucket (made by an older build) are
                    // nobody's to recover.
                    if state.condemned.contains_key(&object.name)
                        || object.name.ends_with(MARKER_SUFFIX)
                    {
                        continue;
                    }
                    if let Some(file) = object.name.strip_prefix(&prefix) {
                        if !file.contains('/') {
                            names.insert(file.to_string());
                            state.listed_lengths.insert(object.name.clone(), object.len);
                        }
                    }
                }
            }
            Class::Tracked => {
                let state = self.inner.state.lock();
                for name in state.files.keys() {
                    if parent_dir(name) == dir {
                        names.insert(name.rsplit('/').next().unwrap_or(name).to_string());
                    }
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        match class(name) {
            Class::Local => self.inner.local.exists(name),
            Class::Tracked => Ok(self.inner.state.lock().files.contains_key(name)),
            Class::Object => Ok(self.local_copy(name)?.is_some()
                || (!self.is_condemned(name)
                    && self.inner.client.head(name).map_err(to_io)?.is_some())),
        }
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        self.writable()?;
        match class(dir) {
            Class::Local => {
                if self.inner.local.exists(dir)? {
                    self.inner.local.sync_dir(dir)
                } else {
                    Ok(())
                }
            }
            // Removals (condemnations) are committed with the head.
            Class::Object => {
                if self.inner.local.exists(dir)? {
                    self.inner.local.sync_dir(dir)?;
                }
                if self.inner.state.lock().newly_condemned {
                    self.publish()?;
                }
                Ok(())
            }
            // Creations and removals of tracked files are published with
            // the next commit.
            Class::Tracked => self.publish(),
        }
    }

    fn seal(&self, name: &str) -> io::Result<()> {
        if class(name) != Class::Object {
            return Ok(());
        }
        self.writable()?;
        let file = self.inner.local.open_read(name)?;
        let len = file.len()?;
        {
            // Uploads at once are bounded: memory holds a few parts of each.
            let mut running = self.inner.uploads.lock();
            while *running >= MAX_UPLOADS {
                self.inner.upload_done.wait(&mut running);
            }
            *running += 1;
        }
        let uploaded = self.upload_new(name, &Body::File { file, len });
        *self.inner.uploads.lock() -= 1;
        self.inner.upload_done.notify_one();
        uploaded?;
        self.inner.state.lock().added.push(name.to_string());
        // The bucket has it now: the staged copy goes (readers reopen the
        // name and read ranges through the cache).
        self.inner.local.remove(name)?;
        self.inner.local.sync_dir(OBJECT_DIR)
    }

    fn is_tiered(&self) -> bool {
        true
    }

    fn damage(&self) -> Vec<crate::error::Damage> {
        self.inner.damage.clone()
    }

    fn retired(&self, dir: &str) -> io::Result<Vec<String>> {
        let prefix = format!("{dir}/");
        Ok(self
            .inner
            .state
            .lock()
            .condemned
            .keys()
            .filter_map(|name| name.strip_prefix(&prefix))
            .filter(|file| !file.contains('/'))
            .map(str::to_string)
            .collect())
    }

    fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    fn reserve_sequence(&self, dir: &str) -> io::Result<Option<u32>> {
        if dir != OBJECT_DIR {
            return Ok(None);
        }
        loop {
            self.writable()?;
            {
                let mut state = self.inner.state.lock();
                if let Some(seq) = state.reserved.next() {
                    return Ok(Some(seq));
                }
                state.reserving = true;
            }
            match self.publish() {
                Ok(()) => {}
                Err(error) if super::is_head_moved(&error) => {}
                Err(error) => return Err(error),
            }
        }
    }

    fn owns(&self, name: &str) -> bool {
        class(name) != Class::Object || self.inner.local.exists(name).unwrap_or(false)
    }

    fn writer_id(&self) -> Option<[u8; 16]> {
        (!self.inner.read_only).then_some(self.inner.writer_id)
    }

    fn write_atomic_unless_moved(
        &self,
        name: &str,
        bytes: &[u8],
        generation: u64,
    ) -> io::Result<()> {
        if class(name) != Class::Tracked {
            return self.write_atomic(name, bytes);
        }
        self.rewrite_tracked(name, bytes, Some(generation))
    }

    fn is_registered(&self, id: &[u8; 16]) -> bool {
        self.inner
            .state
            .lock()
            .head
            .writers
            .iter()
            .any(|writer| writer.id == *id)
    }

    fn generation(&self) -> u64 {
        // Under the state lock: never read while a take-in is replacing
        // the tracked files' content, so content read between two equal
        // readings is all of one generation.
        let _state = self.inner.state.lock();
        self.taken_in()
    }

    fn refresh(&self) -> io::Result<bool> {
        let etag = self.inner.state.lock().etag.clone();
        let current = self.inner.client.head(HEAD_OBJECT).map_err(to_io)?;
        if current.is_none_or(|meta| meta.etag == etag) {
            return Ok(false);
        }
        let (head, etag) = read_head(&self.inner.client)
            .map_err(to_io)?
            .ok_or_else(|| io::Error::other("the store's head vanished"))?;
        if !self.inner.read_only && !head.is_registered(&self.inner.writer_id, self.inner.epoch) {
            let reason = format!(
                "writer epoch {} is no longer registered in the store's head",
                self.inner.epoch
            );
            self.inner.state.lock().fenced = Some(reason.clone());
            return Err(fenced(reason));
        }
        self.adopt(head, etag)?;
        Ok(true)
    }
}

/// Windows of remote objects kept as files in the local directory's
/// `cache/`, each with a crc32 trailer (a damaged one is a miss, and is
/// removed), bounded by a byte limit: the least recently used go first.
/// Each is written under a unique temporary name and renamed, so readers
/// sharing the directory never see half a file. Everything here can be
/// fetched again; deleting the directory loses nothing.
struct DiskCache {
    dir: Option<std::path::PathBuf>,
    limit: u64,
    /// Bytes cached, once counted (`None`: not yet).
    total: Mutex<Option<u64>>,
}

impl DiskCache {
    fn new(dir: Option<std::path::PathBuf>, limit: u64) -> DiskCache {
        DiskCache {
            dir: dir.filter(|_| limit > 0),
            limit,
            total: Mutex::new(None),
        }
    }

    fn stem(name: &str) -> String {
        name.replace('/', "%")
    }

    fn path(&self, name: &str, start: u64) -> Option<std::path::PathBuf> {
        Some(
            self.dir
                .as_ref()?
                .join(format!("{}@{start:016x}", DiskCache::stem(name))),
        )
    }

    fn get(&self, name: &str, start: u64, len: u64) -> Option<Bytes> {
        let path = self.path(name, start)?;
        let mut bytes = std::fs::read(&path).ok()?;
        let valid = bytes.len() as u64 == len + 4 && {
            let (body, trailer) = bytes.split_at(len as usize);
            crate::format::crc32(&[body]).to_le_bytes() == trailer
        };
        if !valid {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // Recently used: eviction goes by modification time.
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        bytes.truncate(len as usize);
        Some(Bytes::from(bytes))
    }

    fn put(&self, name: &str, start: u64, bytes: &[u8]) {
        let Some(path) = self.path(name, start) else {
            return;
        };
        let Some(dir) = path.parent() else {
            return;
        };
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).expect("the operating system's random source");
        let temporary = dir.join(format!(".tmp-{:016x}", u64::from_le_bytes(suffix)));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| {
                use std::io::Write;
                let crc = crate::format::crc32(&[bytes]).to_le_bytes();
                let mut file = std::fs::File::create(&temporary)?;
                file.write_all(bytes)?;
                file.write_all(&crc)
            })
            .and_then(|()| std::fs::rename(&temporary, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
            return;
        }
        let mut total = self.total.lock();
        let now = match *total {
            Some(counted) => counted + bytes.len() as u64 + 4,
            None => self.count(),
        };
        *total = Some(if now > self.limit { self.evict() } else { now });
    }

    fn entries(&self) -> Vec<(std::time::SystemTime, u64, std::path::PathBuf)> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let Ok(listing) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        listing
            .flatten()
            .filter_map(|entry| {
                let metadata = entry.metadata().ok()?;
                let modified = metadata.modified().ok()?;
                metadata
                    .is_file()
                    .then(|| (modified, metadata.len(), entry.path()))
            })
            .collect()
    }

    fn count(&self) -> u64 {
        self.entries().iter().map(|(_, len, _)| len).sum()
    }

    /// Removes the least recently used files until nine tenths of the
    /// limit remain; returns the bytes left.
    fn evict(&self) -> u64 {
        let mut entries = self.entries();
        entries.sort();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        let target = self.limit - self.limit / 10;
        for (_, len, path) in entries {
            if total <= target {
                break;
            }
            if std::fs::remove_file(path).is_ok() {
                total -= len;
            }
        }
        total
    }

    fn forget(&self, name: &str) {
        let prefix = format!("{}@", DiskCache::stem(name));
        for (_, len, path) in self.entries() {
            let matches = path
                .file_name()
                .and_then(|file| file.to_str())
                .is_some_and(|file| file.starts_with(&prefix));
            if matches && std::fs::remove_file(&path).is_ok() {
                if let Some(total) = self.total.lock().as_mut() {
                    *total = total.saturating_sub(len);
                }
            }
        }
    }
}
