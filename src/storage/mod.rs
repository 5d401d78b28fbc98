//! Bytes on a medium. This layer moves bytes and knows no format.
//!
//! Backends: [`LocalStorage`] (a directory; sealed files can be memory
//! mapped) and [`MemoryStorage`] (in memory; keeps the image a power loss
//! would leave, for crash tests). [`object`] holds the S3-compatible
//! bucket layer the bucket store is built on.
//!
//! # Contract
//!
//! Every backend honours these rules; the engine's crash safety rests on them.
//!
//! - Names are relative paths of `[a-z0-9._-]` components joined by `/`.
//! - [`AppendFile::append`] writes at the end of the file. The bytes are
//!   visible to every [`ReadFile`] of the same name at once, and are durable
//!   only once [`AppendFile::sync`] has returned `Ok`. A crash may keep any
//!   prefix of the unsynced bytes (a torn tail), never bytes out of order.
//! - [`AppendFile::truncate`] shortens the file; durable once `sync` returns.
//! - A newly created or removed name is durable only once
//!   [`Storage::sync_dir`] of its directory has returned `Ok`.
//! - [`Storage::write_atomic`] replaces a file's whole content: when it
//!   returns `Ok` the new content is durable under that name, and at no
//!   instant (crash included) does the name hold a mix of old and new.
//! - Files opened through [`Storage::map`] must not change while mapped; the
//!   engine maps only sealed packs, which it never modifies.
//! - A failed `sync` leaves durability unknown; callers must stop writing
//!   (the engine poisons itself).

mod bucket;
mod local;
mod memory;
pub mod object;
mod uncached;

pub use bucket::{
    hex_id, presence, BucketOptions, BucketStorage, Presence, DEFAULT_CACHE_BYTES,
    DEFAULT_DELETION_GRACE, HEAD_OBJECT,
};
pub use local::LocalStorage;
pub use memory::{Fault, FaultPoint, MemoryStorage, TornWrites};
pub(crate) use uncached::{open_direct, AlignedBuffer};

pub use crate::error::{is_head_moved, HeadMoved};
use crate::error::{Damage, Error};
use std::io;
use std::sync::Arc;

/// A file open for appending.
pub trait AppendFile: Send + Sync {
    /// Appends the concatenation of `parts`; returns the offset of its first byte.
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<u64>;
    /// Makes everything appended so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Shortens the file to `len` bytes (durable after `sync`).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Allocates space for the file up to `end` bytes without changing its
    /// length, so appends up to there need no free space (a transition
    /// that frees space must still be recordable on a full disk). A hint:
    /// backends without preallocation do nothing.
    fn reserve(&mut self, end: u64) -> io::Result<()> {
        let _ = end;
        Ok(())
    }
}

/// A file open for reading at arbitrary offsets.
pub trait ReadFile: Send + Sync {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fills `buf` from `offset`; fails if the file is shorter.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The whole file as one slice, when the backend maps it into memory.
    fn as_slice(&self) -> Option<&[u8]> {
        None
    }
}

/// A medium holding named files. See the module docs for the contract.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Opens `name` for appending, creating it (empty) if absent.
    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>>;
    /// [`Storage::open_append`] for large sequential appends that are not
    /// reread soon (pack files): the backend may bypass the operating
    /// system's cache, under the same contract. By default the same as
    /// `open_append`.
    fn open_append_uncached(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        self.open_append(name)
    }
    /// Opens `name` for positioned reads (pread); fails if absent.
    fn open_read(&self, name: &str) -> io::Result<Arc<dyn ReadFile>>;
    /// Opens `name` through a memory map when the backend supports it;
    /// `Ok(None)` when it does not. Only for files that never change again.
    fn map(&self, name: &str) -> io::Result<Option<Arc<dyn ReadFile>>>;
    /// Atomically and durably replaces the content of `name`.
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Removes `name` (durable after `sync_dir`); absent names are not an error.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// File names (not paths) directly inside `dir`, sorted.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Whether `name` exists.
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// Makes creations and removals inside `dir` durable.
    fn sync_dir(&self, dir: &str) -> io::Result<()>;
    /// Bytes the medium can still take, when it knows (`Ok(None)`: no
    /// bound known).
    fn available_bytes(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }
    /// Declares `name` final: it is never appended to again. A backend
    /// whose unsealed files are durable only on local disk
    /// ([`Storage::is_tiered`]) publishes it here: when this
    /// returns `Ok`, the file is durable in the shared medium. Others do
    /// nothing (the last `sync` made it durable).
    fn seal(&self, name: &str) -> io::Result<()> {
        let _ = name;
        Ok(())
    }
    /// Whether the medium is tiered (the bucket store): appended files
    /// reach the shared medium only when sealed, so a commit that
    /// references bytes of an unsealed file must seal it first; and
    /// `pending/` journals live only on the writer's local disk, so a
    /// pending snapshot whose journal is not here belongs to a writer that
    /// is gone (or, for a reader, to another machine).
    fn is_tiered(&self) -> bool {
        false
    }
    /// Names removed from `dir` whose bytes stay readable a while for
    /// readers of an older state (a bucket store's deletion grace period):
    /// they are absent from [`Storage::list`], and must not be created
    /// again while they are listed here. Most media have none.
    fn retired(&self, _dir: &str) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Damage the medium itself found when it was opened, below the files'
    /// own formats (a bucket store's extent that does not match the crc
    /// its head records). The engine reports it with its own findings.
    fn damage(&self) -> Vec<crate::error::Damage> {
        Vec::new()
    }
    /// Whether every mutating method fails (a read-only open): nothing is
    /// ever written through it.
    fn is_read_only(&self) -> bool {
        false
    }
    /// Whether another process writes this medium while this read-only
    /// view reads it (a directory that `serve` holds): files may grow, be
    /// replaced or vanish between two reads. The engine then reads the
    /// catalog before it lists the packs, leaves pending snapshots to
    /// their writer, and opens again when it met a change half-made
    /// (DESIGN.md §10, "Processes beside a writer").
    fn beside_writer(&self) -> bool {
        false
    }
    /// A sequence number for a new file in `dir` that no other writer of
    /// a shared medium will use (a bucket store's writers reserve ranges
    /// in its head); `None` where this writer is the only one, and picks
    /// the next number itself.
    fn reserve_sequence(&self, dir: &str) -> io::Result<Option<u32>> {
        let _ = dir;
        Ok(None)
    }
    /// Whether this writer may append to or seal `name`: false for a file
    /// another writer of a shared medium wrote (staged in that writer's
    /// directory, or uploaded whole). True on a medium with one writer.
    fn owns(&self, name: &str) -> bool {
        let _ = name;
        true
    }
    /// This writer's id among the writers of a shared medium (recorded in
    /// the snapshots it starts); `None` where there is one writer.
    fn writer_id(&self) -> Option<[u8; 16]> {
        None
    }
    /// Whether writer `id` of a shared medium is still registered (by
    /// this view's last reading): a pending snapshot of a writer that is
    /// not can never complete. True where there is one writer.
    fn is_registered(&self, id: &[u8; 16]) -> bool {
        let _ = id;
        true
    }
    /// [`Storage::write_atomic`], unless another writer's commit was taken
    /// in since [`Storage::generation`] was `generation`: then nothing is
    /// written and the error is [`HeadMoved`] (the caller read `name`
    /// before, and computed `bytes` from a view that is stale now). Where
    /// there is one writer, a plain `write_atomic`.
    fn write_atomic_unless_moved(
        &self,
        name: &str,
        bytes: &[u8],
        generation: u64,
    ) -> io::Result<()> {
        let _ = generation;
        self.write_atomic(name, bytes)
    }
    /// Counts the other writers' commits this view of a shared medium has
    /// taken in: state derived from files read at one generation is stale
    /// once it moves. Always zero where there is one writer.
    fn generation(&self) -> u64 {
        0
    }
    /// Brings this view of a shared medium up to what other writers have
    /// committed since (a bucket store reads its head again). Returns
    /// whether anything changed; always false where there is one writer.
    /// Handles of tracked files opened before see the new content.
    fn refresh(&self) -> io::Result<bool> {
        Ok(false)
    }

    /// Reads a whole file.
    fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        let file = self.open_read(name)?;
        let length =
            usize::try_from(file.len()?).map_err(|_| io::Error::other("file too large"))?;
        let mut buffer = vec![0u8; length];
        file.read_exact_at(0, &mut buffer)?;
        Ok(buffer)
    }
}

/// Creates `name` (emptying it if it exists) holding `initial`, and makes
/// both its content and its directory entry durable before returning.
pub fn create_durably(
    storage: &dyn Storage,
    name: &str,
    initial: &[u8],
) -> io::Result<Box<dyn AppendFile>> {
    let file = storage.open_append(name)?;
    initialize_durably(storage, name, file, initial)
}

/// [`create_durably`] through [`Storage::open_append_uncached`].
pub fn create_durably_uncached(
    storage: &dyn Storage,
    name: &str,
    initial: &[u8],
) -> io::Result<Box<dyn AppendFile>> {
    let file = storage.open_append_uncached(name)?;
    initialize_durably(storage, name, file, initial)
}

/// Empties `file` (open on `name`), writes `initial`, and makes content and
/// directory entry durable.
fn initialize_durably(
    storage: &dyn Storage,
    name: &str,
    mut file: Box<dyn AppendFile>,
    initial: &[u8],
) -> io::Result<Box<dyn AppendFile>> {
    if !file.is_empty() {
        file.truncate(0)?;
    }
    file.append(&[initial])?;
    file.sync()?;
    storage.sync_dir(parent_dir(name))?;
    Ok(file)
}

/// Removes every file of `names` (all inside directory `dir`) and makes the
/// removals durable with one directory sync. Nothing to remove: no sync.
pub fn remove_durably(storage: &dyn Storage, dir: &str, names: &[String]) -> io::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    for name in names {
        debug_assert_eq!(parent_dir(name), dir);
        storage.remove(name)?;
    }
    storage.sync_dir(dir)
}

/// The name of the second copy of a small file kept twice
/// ([`write_mirrored_unless_moved`]).
pub fn mirror_name(name: &str) -> String {
    format!("{name}.mirror")
}

/// Replaces a small file kept twice (the store header, the keyring): its
/// mirror, then the file itself, each atomically. A crash leaves at least
/// one whole copy, and a flipped byte in one copy loses nothing
/// ([`read_mirrored`]). Through [`Storage::write_atomic_unless_moved`]:
/// on a shared medium, nothing is written once another writer's commit
/// was taken in since `generation` (when the caller read the file).
pub fn write_mirrored_unless_moved(
    storage: &dyn Storage,
    name: &str,
    bytes: &[u8],
    generation: u64,
) -> io::Result<()> {
    storage.write_atomic_unless_moved(&mirror_name(name), bytes, generation)?;
    storage.write_atomic_unless_moved(name, bytes, generation)
}

/// What [`read_mirrored`] found.
pub struct Mirrored<T> {
    /// The decoded content: the file's, else its mirror's.
    pub value: T,
    /// Copies that exist but do not decode (the other one was used).
    pub damage: Vec<Damage>,
    /// Whether the mirror is missing (a store written before files were
    /// kept twice): a writer should add it.
    pub mirror_missing: bool,
}

/// Reads a file kept twice ([`write_mirrored_unless_moved`]): the file if it decodes,
/// else its mirror. `Ok(None)` if neither exists; the file's decode error
/// if no copy decodes.
pub fn read_mirrored<T>(
    storage: &dyn Storage,
    name: &str,
    decode: impl Fn(&[u8]) -> Result<T, Error>,
) -> Result<Option<Mirrored<T>>, Error> {
    let mirror = mirror_name(name);
    let read = |name: &str| -> Result<Option<Vec<u8>>, Error> {
        match storage.read_all(name) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(Error::io(format!("reading {name}"), error)),
        }
    };
    let primary = read(name)?.map(|bytes| decode(&bytes));
    let secondary = read(&mirror)?.map(|bytes| decode(&bytes));
    let damaged = |file: &str, other: &str| Damage {
        file: file.to_string(),
        detail: format!("does not verify; {other} holds the same content"),
        data_lost: false,
    };
    let mirror_missing = secondary.is_none();
    Ok(match (primary, secondary) {
        (None, None) => None,
        (Some(Ok(value)), secondary) => Some(Mirrored {
            value,
            damage: match secondary {
                Some(Err(_)) => vec![damaged(&mirror, name)],
                _ => Vec::new(),
            },
            mirror_missing,
        }),
        (primary, Some(Ok(value))) => Some(Mirrored {
            value,
            damage: match primary {
                Some(Err(_)) => vec![damaged(name, &mirror)],
                _ => Vec::new(),
            },
            mirror_missing,
        }),
        (Some(Err(error)), _) | (None, Some(Err(error))) => return Err(error),
    })
}

/// The directory part of a name (`""` for top-level names).
pub(crate) fn parent_dir(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(dir, _)| dir)
}
