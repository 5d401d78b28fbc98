//! The content-addressed chunk store: deduplicating put, verified get,
//! append-only crc-framed pack files, and the persisted id -> location index.
//!
//! A chunk is either a block's data or an encoded block-map node; both are
//! addressed by a blake3 id (see `format::node` for node ids). A put of an id
//! already present stores nothing. Payloads are zstd-compressed unless that
//! does not help. One pack is open for appends; when it reaches the target
//! size it is synced, its index is written atomically, and it is sealed:
//! never modified again and read through mmap (or pread in pread-only mode).

#![deny(clippy::indexing_slicing)]

mod compact;
mod index;
mod pack;
mod repair;
mod verify;

pub use compact::{CompactionOutcome, PackUsage};
pub use repair::{repair_packs, PackRepair};
pub use verify::{DamagedRecord, IdSample, RecordCheck};

use crate::codec;
use crate::crypto::{chunk_id_in, DomainKeys};
use crate::error::{Damage, Error, Result};
use crate::format::header::FILE_HEADER_SIZE;
use crate::format::index::{decode_index, encode_index, IndexEntry};
use crate::format::pack::{
    decode_record, decode_record_header, encode_aad, encode_copy_header, encode_sealed_header,
    encode_unsealed_header, is_sealed_domain, verify_record, Codec, RecordHeader, RecordKind,
    RECORD_HEADER_SIZE, SEALED_PREFIX_LEN,
};
use crate::ids::{ChunkId, PackLocation, Sha256Digest};
use crate::storage::{ReadFile, Storage};
use bytes::Bytes;
use index::Index;
use pack::{entries_of, index_name, pack_name, parse_name, scan, OpenPack, PACK_DIR};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Tuning of the chunk store.
#[derive(Clone, Debug)]
pub struct ChunkStoreConfig {
    /// A pack is sealed once it reaches this many bytes (at most 1 GiB).
    pub pack_target_size: u64,
    /// How payloads are compressed.
    pub compression: codec::Compression,
    /// Read sealed packs through mmap (`true`) or pread only (`false`).
    pub use_mmap: bool,
}

impl Default for ChunkStoreConfig {
    fn default() -> Self {
        ChunkStoreConfig {
            pack_target_size: 256 << 20,
            compression: codec::Compression::BlockTuned,
            use_mmap: true,
        }
    }
}

thread_local! {
    /// Per-thread compression output, reused so each put does not allocate
    /// (and page-fault in) a fresh half-megabyte buffer.
    static COMPRESSION_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread buffer an encrypted payload is sealed in, reused likewise.
    static SEAL_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread buffer a record read with `pread` (an unsealed pack, or
    /// mapping off) lands in, reused likewise: only its first
    /// `payload_len` bytes are ever read, each read writes all of them.
    static PAYLOAD_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Largest payload buffer a thread keeps (a block's payload with room for
/// a sealed record's prefix); a larger record's buffer is freed after use.
const KEPT_PAYLOAD_BUFFER: usize = crate::ids::BLOCK_SIZE + 4096;

/// Largest allowed pack target: offsets are 32-bit.
const MAX_PACK_TARGET: u64 = 1 << 30;

/// Computed SHA-256s remembered (about 100 bytes each: 25 MiB for the
/// blocks of 128 GiB of distinct data); the next one after it starts the
/// memory afresh (constant work per insertion, whatever the pattern).
const COMPUTED_CHECKSUMS_KEPT: usize = 1 << 18;

/// A verified chunk read back from the store.
#[derive(Debug)]
pub struct StoredChunk {
    /// The raw (decoded) bytes.
    pub data: Bytes,
    /// The SHA-256 kept with block chunks: [`Sha256Digest::NOT_KEPT`] for
    /// map nodes and for blocks stored without one, except where the read
    /// was made for the checksum (export's), which computes it.
    pub sha256: Sha256Digest,
}

/// How a read checks the content it returns, beyond the crc, the kind,
/// the id in the header, the decoded length and an encrypted record's tag.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ContentCheck {
    /// Plain records: the content hash against the id. Encrypted records:
    /// the tag alone (it covers the id).
    Default,
    /// The content hash of every record, encrypted ones included (verify).
    Full,
    /// For callers that need a block's EBS checksum (export): the SHA-256
    /// kept with the record instead of the content hash (a full content
    /// check by itself); a record stored without one is checked as
    /// `Default` and its SHA-256 computed. Map nodes as `Default`.
    Sha256,
}

/// Counters describing the store's contents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkStoreStats {
    /// Unique chunks (blocks and map nodes).
    pub chunks: u64,
    /// Bytes of records in packs (headers + stored payloads).
    pub stored_bytes: u64,
    /// Heap bytes held by the in-memory index.
    pub index_heap_bytes: u64,
}

/// See the module documentation.
pub struct ChunkStore {
    storage: Arc<dyn Storage>,
    config: ChunkStoreConfig,
    /// The pack receiving appends: created by the first append after open
    /// or after a rotation, so opening writes nothing, and never in a
    /// read-only store.
    writer: Mutex<Option<OpenPack>>,
    /// Packs rotated out of the writer whose seal is still under way.
    retiring: Mutex<Vec<Arc<Mutex<OpenPack>>>>,
    index: RwLock<Index>,
    readers: RwLock<HashMap<u32, Arc<dyn ReadFile>>>,
    stored_bytes: AtomicU64,
    /// The next pack sequence to create (rotation and compaction share it).
    next_seq: AtomicU32,
    /// Held by [`ChunkStore::refresh`].
    refresh_lock: Mutex<()>,
    /// Sealed packs another writer of a shared medium removed (condemned:
    /// deleted once the medium's grace period is over). Still readable and
    /// indexed, so a chunk only they hold can be copied out by
    /// [`ChunkStore::rescue_condemned`]; never chosen when another copy
    /// exists, never deduplicated against, never compacted again.
    condemned: RwLock<HashSet<u32>>,
    /// Chunks found corrupt: a put of the same data stores a fresh copy.
    suspects: Mutex<HashSet<ChunkId>>,
    /// SHA-256s computed for block records stored without one (DESIGN.md
    /// §4.3), so an EBS client reading a block again, or an export after
    /// its listing pass, does not hash it again. At most
    /// [`COMPUTED_CHECKSUMS_KEPT`] entries; for the process's life only.
    computed_checksums: Mutex<HashMap<ChunkId, Sha256Digest>>,
    /// The keys of every unlocked domain, by the number records carry.
    domains: RwLock<HashMap<u16, Arc<DomainKeys>>>,
    /// Damage found while opening: unreadable bytes in packs, indexes that
    /// did not verify.
    damage: Vec<Damage>,
    /// Sealed packs, sound, whose index could not be written yet (a full
    /// disk), or that another writer of a shared medium left unindexed,
    /// with their entries: [`ChunkStore::write_missing_indexes`].
    unindexed: Mutex<BTreeMap<u32, Vec<IndexEntry>>>,
    /// The storage generation plus one at which a read last looked for
    /// packs other writers left unindexed (zero: never):
    /// [`ChunkStore::locate_looking_again`].
    unindexed_looked_at: AtomicU64,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::io(context, source)
}

/// For a failed append or sync of a pack: its durable content is unknown.
fn unsynced_error(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::io_durability_unknown(context, source)
}

/// What one pack contributes when the store opens.
enum LoadedPack {
    /// Sealed: its index, or a scan (read-only, or damaged), is in the
    /// sorted index.
    Sealed(Vec<IndexEntry>),
    /// Sealed, scanned clean, but its index could not be written (a full
    /// disk): written later, when there is room.
    Unindexed(Vec<IndexEntry>),
    /// The last pack, scanned clean and never sealed: appends continue.
    Open(OpenPack, Vec<(ChunkId, IndexEntry)>),
}

impl ChunkStore {
    /// Opens the chunk store on `storage`, recovering from a crash: sealed
    /// packs are loaded from their indexes; a pack without one is scanned,
    /// skipping damaged records (so damage costs only the bytes it
    /// touches); the last pack stays open for appends if it scans cleanly,
    /// and any other scanned pack is sealed at its last valid record
    /// (bytes are never truncated away). A pack with unreadable bytes
    /// before valid records is left unindexed, rescanned at every open and
    /// reported ([`ChunkStore::damage`]) until `repair` rebuilds its index.
    ///
    /// On a read-only storage ([`Storage::is_read_only`]) nothing is
    /// written: unindexed packs are scanned into memory, interrupted
    /// compactions are resolved in memory, and puts are refused.
    pub fn open(storage: Arc<dyn Storage>, config: ChunkStoreConfig) -> Result<ChunkStore> {
        if config.pack_target_size == 0 || config.pack_target_size > MAX_PACK_TARGET {
            return Err(Error::invalid(
                crate::error::ValidationReason::InvalidParameterValue,
                format!("pack_target_size must be within 1..={MAX_PACK_TARGET}"),
            ));
        }
        let read_only = storage.is_read_only();
        let doomed = compact::recover_compactions(storage.as_ref(), read_only)?;
        let mut files: BTreeMap<u32, (bool, bool)> = BTreeMap::new();
        let mut highest_seq = None;
        for name in storage
            .list(PACK_DIR)
            .map_err(io_error("listing packs".into()))?
        {
            let Some((seq, extension)) = parse_name(&name) else {
                continue;
            };
            highest_seq = highest_seq.max(Some(seq));
            if doomed.contains(&seq) {
                continue;
            }
            match extension {
                "pack" => files.entry(seq).or_default().0 = true,
                "idx" => files.entry(seq).or_default().1 = true,
                _ => {}
            }
        }
        // A retired pack's name is still taken: sequences continue past it.
        for name in storage
            .retired(PACK_DIR)
            .map_err(io_error("listing retired packs".into()))?
        {
            if let Some((seq, _)) = parse_name(&name) {
                highest_seq = highest_seq.max(Some(seq));
            }
        }
        let last_pack = files
            .iter()
            .rev()
            .find(|(_, (has_pack, _))| *has_pack)
            .map(|(seq, _)| *seq);
        let mut index = Index::default();
        let mut readers: HashMap<u32, Arc<dyn ReadFile>> = HashMap::new();
        let mut stored_bytes = 0u64;
        let mut open_pack = None;
        let mut damage = Vec::new();
        let mut unindexed = BTreeMap::new();
        for (&seq, &(has_pack, has_index)) in &files {
            if !has_pack {
                continue;
            }
            let name = pack_name(seq);
            let reader = storage
                .open_read(&name)
                .map_err(io_error(format!("opening {name}")))?;
            let loaded = load_pack(
                storage.as_ref(),
                reader.as_ref(),
                seq,
                has_index,
                Some(seq) == last_pack,
                &mut damage,
            )?;
            let entries = match loaded {
                LoadedPack::Sealed(entries) => entries,
                LoadedPack::Unindexed(entries) => {
                    unindexed.insert(seq, entries.clone());
                    entries
                }
                LoadedPack::Open(pack, with_ids) => {
                    for (id, entry) in &with_ids {
                        index.insert_open(
                            *id,
                            PackLocation {
                                pack: seq,
                                offset: entry.offset,
                            },
                        );
                        stored_bytes += u64::from(entry.record_len);
                    }
                    open_pack = Some(pack);
                    readers.insert(seq, reader);
                    continue;
                }
            };
            stored_bytes += entries
                .iter()
                .map(|entry| u64::from(entry.record_len))
                .sum::<u64>();
            index.add_sealed(seq, &entries);
            let sealed_reader = if config.use_mmap {
                storage
                    .map(&name)
                    .map_err(io_error(format!("mapping {name}")))?
                    .unwrap_or(reader)
            } else {
                reader
            };
            readers.insert(seq, sealed_reader);
        }
        for found in &damage {
            tracing::warn!(file = %found.file, detail = %found.detail, data_lost = found.data_lost, "damage found while opening the store");
        }
        let store = ChunkStore {
            storage,
            config,
            writer: Mutex::new(open_pack),
            retiring: Mutex::new(Vec::new()),
            index: RwLock::new(index),
            readers: RwLock::new(readers),
            stored_bytes: AtomicU64::new(stored_bytes),
            next_seq: AtomicU32::new(highest_seq.map_or(0, |seq| seq + 1)),
            refresh_lock: Mutex::new(()),
            condemned: RwLock::new(HashSet::new()),
            suspects: Mutex::new(HashSet::new()),
            computed_checksums: Mutex::new(HashMap::new()),
            domains: RwLock::new(HashMap::new()),
            damage,
            unindexed: Mutex::new(unindexed),
            unindexed_looked_at: AtomicU64::new(0),
        };
        store.drop_duplicate_copies();
        Ok(store)
    }

    /// Loads the packs other writers of a shared medium sealed and indexed
    /// since this store last looked (their chunks become readable and
    /// deduplicate new writes). A pack whose index is not there yet is
    /// left for a later refresh: its writer uploads the index right after
    /// it, and a commit that references it waits for both. Returns how
    /// many packs were added.
    pub fn refresh(&self) -> Result<usize> {
        // One refresh at a time: a pack is added once.
        let _one = self.refresh_lock.lock();
        let indexed = self.listed_packs()?;
        let mut added = 0;
        for (&seq, &(has_pack, has_index)) in &indexed {
            if !has_pack || !has_index || self.readers.read().contains_key(&seq) {
                continue;
            }
            let name = pack_name(seq);
            let reader = self
                .storage
                .open_read(&name)
                .map_err(io_error(format!("opening {name}")))?;
            let pack_len = reader.len().map_err(io_error(format!("reading {name}")))?;
            let Some(entries) = load_index(self.storage.as_ref(), seq, pack_len) else {
                continue;
            };
            self.add_sealed_pack(seq, reader, &entries);
            added += 1;
        }
        self.follow_removals(&indexed)?;
        Ok(added)
    }

    /// Makes another writer's sealed pack `seq` readable here: its
    /// records count as stored, its entries join the index.
    fn add_sealed_pack(&self, seq: u32, reader: Arc<dyn ReadFile>, entries: &[IndexEntry]) {
        self.stored_bytes.fetch_add(
            entries
                .iter()
                .map(|entry| u64::from(entry.record_len))
                .sum::<u64>(),
            Ordering::AcqRel,
        );
        self.index.write().add_sealed(seq, entries);
        self.readers.write().insert(seq, reader);
    }

    /// The packs the medium lists, by sequence: whether each has its pack
    /// file and its index.
    fn listed_packs(&self) -> Result<BTreeMap<u32, (bool, bool)>> {
        let mut listed: BTreeMap<u32, (bool, bool)> = BTreeMap::new();
        for name in self
            .storage
            .list(PACK_DIR)
            .map_err(io_error("listing packs".into()))?
        {
            if let Some((seq, extension)) = parse_name(&name) {
                let entry = listed.entry(seq).or_default();
                match extension {
                    "pack" => entry.0 = true,
                    "idx" => entry.1 = true,
                    _ => {}
                }
            }
        }
        Ok(listed)
    }

    /// Loads the packs of the medium that have no index, are not loaded
    /// here, and are not this writer's: whole packs another writer
    /// uploaded and never indexed (see `load_pack`), or is indexing right
    /// now (the index written here is then the same bytes). A pack whose
    /// scan finds damage is skipped with a warning: the next open of the
    /// store scans it again and reports the damage.
    fn load_packs_left_unindexed(&self) -> Result<()> {
        if !self.storage.is_tiered() {
            // One writer: every pack is this store's.
            return Ok(());
        }
        let _one = self.refresh_lock.lock();
        let listed = self.listed_packs()?;
        for (&seq, &(has_pack, has_index)) in &listed {
            let name = pack_name(seq);
            if !has_pack || has_index {
                continue;
            }
            // This store's own packs are loaded from their creation, a
            // compaction's output from its switch, and its marker stays
            // until then: the marker is looked at first.
            let own_compaction = self
                .storage
                .exists(&compact::marker_name(seq))
                .map_err(io_error(format!("looking for {name}'s compaction marker")))?;
            if own_compaction
                || self.storage.owns(&name)
                || self.readers.read().contains_key(&seq)
                || self.is_condemned(seq)
            {
                continue;
            }
            let reader = self
                .storage
                .open_read(&name)
                .map_err(io_error(format!("opening {name}")))?;
            let scanned = scan(reader.as_ref(), seq)?;
            if scanned.header_damaged || !scanned.damaged.is_empty() {
                tracing::warn!(pack = %name, "a pack another writer uploaded without its index does not scan cleanly; left unindexed");
                continue;
            }
            let entries: Vec<IndexEntry> = entries_of(&scanned.records)
                .into_iter()
                .map(|(_, entry)| entry)
                .collect();
            self.add_sealed_pack(seq, reader, &entries);
            if !self.storage.is_read_only() {
                self.unindexed.lock().insert(seq, entries);
            }
        }
        Ok(())
    }

    /// Follows other writers' removals of sealed packs this store holds
    /// (`listed`: the packs the medium lists now, by sequence): a pack
    /// the medium names as condemned stays readable but joins
    /// [`ChunkStore::condemned`]; one it no longer names at all (its
    /// grace period ended and it was deleted) leaves the index.
    fn follow_removals(&self, listed: &BTreeMap<u32, (bool, bool)>) -> Result<()> {
        let condemned_now = self.condemned_on_medium()?;
        let unsealed = self.unsealed_packs();
        let gone: Vec<u32> = self
            .readers
            .read()
            .keys()
            .copied()
            .filter(|seq| !unsealed.contains(seq))
            .filter(|seq| !listed.get(seq).is_some_and(|(has_pack, _)| *has_pack))
            .collect();
        // A pack's records stop counting as stored once it is condemned,
        // or deleted without this store having seen it condemned.
        let no_longer_stored = |seq: u32| {
            let pack_len = self
                .readers
                .read()
                .get(&seq)
                .and_then(|reader| reader.len().ok())
                .unwrap_or(0);
            // A sealed pack is its file header and its records.
            self.stored_bytes.fetch_sub(
                pack_len.saturating_sub(FILE_HEADER_SIZE as u64),
                Ordering::AcqRel,
            );
        };
        let mut deleted = Vec::new();
        {
            let mut condemned = self.condemned.write();
            for seq in gone {
                if condemned_now.contains(&seq) {
                    if condemned.insert(seq) {
                        no_longer_stored(seq);
                    }
                } else {
                    if !condemned.remove(&seq) {
                        no_longer_stored(seq);
                    }
                    deleted.push(seq);
                }
            }
        }
        if !deleted.is_empty() {
            self.index.write().remove_packs(&deleted);
            let mut readers = self.readers.write();
            for seq in &deleted {
                readers.remove(seq);
            }
        }
        Ok(())
    }

    /// The open pack and the packs whose seal is under way.
    fn unsealed_packs(&self) -> HashSet<u32> {
        self.writer
            .lock()
            .as_ref()
            .map(|pack| pack.seq)
            .into_iter()
            .chain(self.retiring.lock().iter().map(|pack| pack.lock().seq))
            .collect()
    }

    /// The packs the medium names as condemned now (in this view of a
    /// shared medium; none elsewhere).
    pub(crate) fn condemned_on_medium(&self) -> Result<HashSet<u32>> {
        Ok(self
            .storage
            .retired(PACK_DIR)
            .map_err(io_error("listing condemned packs".into()))?
            .iter()
            .filter_map(|name| parse_name(name))
            .filter(|(_, extension)| *extension == "pack")
            .map(|(seq, _)| seq)
            .collect())
    }

    /// Whether pack `seq` was condemned by another writer (see
    /// [`ChunkStore::condemned`]).
    pub(crate) fn is_condemned(&self, seq: u32) -> bool {
        self.condemned.read().contains(&seq)
    }

    /// Copies each chunk of `ids` whose only copies lie in packs the
    /// medium names as condemned (another writer's collection judged them
    /// garbage before this writer's commit referenced them) into the open
    /// pack, which replaces the condemned copy in the index. Reads the
    /// medium's condemned list afresh, so a commit that follows at the
    /// same [`Storage::generation`] depends on no condemned pack. Returns
    /// how many chunks were copied; the caller seals them before its
    /// commit. A chunk whose condemned copy cannot be read (deleted after
    /// its grace period, or damaged) is an error naming it.
    pub(crate) fn rescue_condemned(&self, ids: &mut dyn Iterator<Item = ChunkId>) -> Result<usize> {
        let condemned = self.condemned_on_medium()?;
        if condemned.is_empty() {
            return Ok(0);
        }
        let mut copied = 0;
        for id in ids {
            if id == codec::zero_block_id() {
                continue;
            }
            let candidates = self.index.read().candidates(&id);
            if !candidates
                .iter()
                .any(|location| condemned.contains(&location.pack))
            {
                continue;
            }
            let confirmed = |location: &PackLocation| {
                self.header_at(*location)
                    .is_some_and(|header| header.chunk_id == id)
            };
            if candidates
                .iter()
                .filter(|location| !condemned.contains(&location.pack))
                .any(confirmed)
            {
                continue;
            }
            let Some(doomed) = candidates.iter().find(|location| confirmed(location)) else {
                continue;
            };
            let copy = self.with_record(*doomed, |header, payload| {
                Ok((encode_copy_header(header, payload), payload.to_vec()))
            });
            let (header, payload) = copy.map_err(|error| {
                Error::corrupted(
                    pack_name(doomed.pack),
                    format!(
                        "chunk {id} is referenced by this commit, and its only copy, in a pack another writer's collection removed, cannot be read ({error})"
                    ),
                )
            })?;
            self.append_record(&id, &header, &payload, Some(*doomed))?;
            copied += 1;
        }
        Ok(copied)
    }

    /// Damage found while opening (see [`ChunkStore::open`]).
    pub fn damage(&self) -> &[Damage] {
        &self.damage
    }

    /// Writes the index of each sealed pack that has none yet (compaction
    /// reads packs by their index): one sealed when there was no room for
    /// it, and, on a shared medium, another writer's pack uploaded without
    /// its index (that writer died between the two uploads), including
    /// those that appeared since this store opened. Fails, naming the
    /// bytes needed, while there still is no room.
    pub fn write_missing_indexes(&self) -> Result<()> {
        self.load_packs_left_unindexed()?;
        let mut unindexed = self.unindexed.lock();
        while let Some((&seq, entries)) = unindexed.first_key_value() {
            let bytes = encode_index(u64::from(seq), entries)?;
            self.storage
                .write_atomic(&index_name(seq), &bytes)
                .map_err(|error| {
                    Error::io(format!("writing {}", index_name(seq)), error).with_note(&format!(
                        "indexing the pack needs {} bytes free",
                        bytes.len()
                    ))
                })?;
            unindexed.remove(&seq);
        }
        Ok(())
    }

    /// Keeps one indexed copy of each chunk. Copies arise when a crash
    /// interrupts healing (a fresh copy written, the corrupt one still
    /// indexed by its pack's index file): the copy that verifies wins,
    /// the newest among equals. The others stay in their packs as garbage.
    fn drop_duplicate_copies(&self) {
        let groups = self.index.read().shared_prefixes();
        let mut dropped = Vec::new();
        for locations in groups {
            let mut by_id: HashMap<ChunkId, Vec<PackLocation>> = HashMap::new();
            for location in locations {
                if let Some(header) = self.header_at(location) {
                    by_id.entry(header.chunk_id).or_default().push(location);
                }
            }
            for (_, mut copies) in by_id.into_iter().filter(|(_, copies)| copies.len() > 1) {
                copies.sort_unstable_by_key(|location| {
                    let verifies = self.with_record(*location, |_, _| Ok(())).is_ok();
                    std::cmp::Reverse((verifies, location.pack, location.offset))
                });
                dropped.extend(copies.into_iter().skip(1));
            }
        }
        if !dropped.is_empty() {
            self.index.write().remove_locations(&dropped);
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ChunkStoreConfig {
        &self.config
    }

    /// Reads the record at `location` and hands its verified header and
    /// payload to `f`. Sealed packs are read in place through the map.
    fn with_record<R>(
        &self,
        location: PackLocation,
        f: impl FnOnce(&RecordHeader, &[u8]) -> Result<R>,
    ) -> Result<R> {
        let name = pack_name(location.pack);
        let reader = self
            .readers
            .read()
            .get(&location.pack)
            .cloned()
            .ok_or_else(|| Error::corrupted(&name, "pack referenced by the index is missing"))?;
        let offset = location.offset as usize;
        if let Some(bytes) = reader.as_slice() {
            let (header, payload) = decode_record(bytes.get(offset..).unwrap_or_default())
                .map_err(|error| error.into_error(&format!("{name} record at {offset}")))?;
            return f(&header, payload);
        }
        let mut header_bytes = [0u8; RECORD_HEADER_SIZE];
        reader
            .read_exact_at(u64::from(location.offset), &mut header_bytes)
            .map_err(|_| Error::corrupted(&name, format!("record at {offset} is truncated")))?;
        let header = decode_record_header(&header_bytes)
            .map_err(|error| error.into_error(&format!("{name} record at {offset}")))?;
        let payload_len = header.payload_len as usize;
        // Taken, not borrowed: a nested read on this thread gets a new one.
        let mut buffer = PAYLOAD_BUFFER.with_borrow_mut(std::mem::take);
        if buffer.len() < payload_len {
            buffer.resize(payload_len, 0);
        }
        let result = buffer
            .get_mut(..payload_len)
            .ok_or_else(|| Error::corrupted(&name, "payload buffer"))
            .and_then(|payload| {
                reader
                    .read_exact_at(
                        u64::from(location.offset) + RECORD_HEADER_SIZE as u64,
                        payload,
                    )
                    .map_err(|_| {
                        Error::corrupted(&name, format!("record at {offset} is truncated"))
                    })?;
                verify_record(&header_bytes, &header, payload)
                    .map_err(|error| error.into_error(&format!("{name} record at {offset}")))?;
                f(&header, payload)
            });
        if buffer.len() <= KEPT_PAYLOAD_BUFFER {
            PAYLOAD_BUFFER.with_borrow_mut(|kept| *kept = buffer);
        }
        result
    }

    /// Reads only the header at `location` (for id confirmation).
    fn header_at(&self, location: PackLocation) -> Option<RecordHeader> {
        let reader = self.readers.read().get(&location.pack).cloned()?;
        let mut header_bytes = [0u8; RECORD_HEADER_SIZE];
        reader
            .read_exact_at(u64::from(location.offset), &mut header_bytes)
            .ok()?;
        decode_record_header(&header_bytes).ok()
    }

    /// Where `id` is stored and its record header, confirmed against the
    /// full id in the header.
    fn find(&self, id: &ChunkId) -> Option<(PackLocation, RecordHeader)> {
        let candidates = self.index.read().candidates(id);
        self.first_copy(id, candidates)
    }

    /// The copy of `id` among `candidates` that reads and compaction
    /// keep: see [`ChunkStore::find`].
    fn first_copy(
        &self,
        id: &ChunkId,
        mut candidates: Vec<PackLocation>,
    ) -> Option<(PackLocation, RecordHeader)> {
        if candidates.len() > 1 {
            // A copy in a condemned pack only when there is no other; else
            // the newest copy (a compaction's output before its sources,
            // if their removal was undone), so that the others are garbage.
            let condemned = self.condemned.read();
            candidates.sort_by_key(|location| {
                (
                    condemned.contains(&location.pack),
                    std::cmp::Reverse(location.pack),
                )
            });
        }
        candidates.into_iter().find_map(|location| {
            self.header_at(location)
                .filter(|header| header.chunk_id == *id)
                .map(|header| (location, header))
        })
    }

    /// Where `id` is stored.
    fn locate(&self, id: &ChunkId) -> Option<PackLocation> {
        self.find(id).map(|(location, _)| location)
    }

    /// [`ChunkStore::locate`] for a read: on a shared medium, a chunk not
    /// found may be in a pack another writer uploaded and never indexed
    /// (it died, or its index write failed, after a commit that references
    /// the pack: the commit came after the upload). Such packs are loaded
    /// once per commit taken in, on the first miss after it, and the
    /// lookup is made again.
    fn locate_looking_again(&self, id: &ChunkId) -> Result<Option<PackLocation>> {
        if let Some(location) = self.locate(id) {
            return Ok(Some(location));
        }
        if !self.storage.is_tiered() {
            return Ok(None);
        }
        // Stored plus one: zero means never looked.
        let generation = self.storage.generation() + 1;
        if self.unindexed_looked_at.swap(generation, Ordering::AcqRel) == generation {
            return Ok(None);
        }
        self.load_packs_left_unindexed()?;
        Ok(self.locate(id))
    }

    /// Where `id` is stored in a sealed pack, the open pack aside: the
    /// copy a compaction keeps. A copy in the open pack is not published
    /// yet (on a shared medium, not before this writer's next commit), so
    /// a sealed copy it shadows is still the one every other writer
    /// depends on.
    fn locate_sealed(&self, id: &ChunkId) -> Option<PackLocation> {
        let candidates = self.index.read().sealed_candidates(id);
        self.first_copy(id, candidates)
            .map(|(location, _)| location)
    }

    /// Bytes the chunk's record occupies in its pack, if it is stored.
    pub fn record_len(&self, id: &ChunkId) -> Option<u64> {
        self.find(id).map(|(_, header)| header.record_len() as u64)
    }

    /// Whether a chunk with this id is stored, in a pack no other writer
    /// condemned (a put stores a fresh copy otherwise).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.locate(id)
            .is_some_and(|location| !self.is_condemned(location.pack))
    }

    /// Whether any copy of the chunk is indexed, one in a pack another
    /// writer condemned included (still readable until its grace period
    /// ends, and copied out by the commit that references it).
    pub fn holds(&self, id: &ChunkId) -> bool {
        self.locate(id).is_some()
    }

    /// Makes a domain's records readable (and verifiable).
    pub(crate) fn register_domain(&self, keys: Arc<DomainKeys>) {
        self.domains.write().insert(keys.domain, keys);
    }

    /// Stores a chunk unless one with the same id exists; returns whether
    /// bytes were appended. Hashing and compression happen before any lock.
    /// The chunk is durable only after [`ChunkStore::sync`].
    pub fn put(
        &self,
        kind: RecordKind,
        id: &ChunkId,
        sha256: &Sha256Digest,
        raw: &[u8],
    ) -> Result<bool> {
        self.put_in(kind, id, sha256, raw, None)
    }

    /// [`ChunkStore::put`], sealing the record with `domain`'s keys when
    /// given (the id must then be the domain's keyed id). The SHA-256 goes
    /// inside the ciphertext, never into the clear header.
    pub(crate) fn put_in(
        &self,
        kind: RecordKind,
        id: &ChunkId,
        sha256: &Sha256Digest,
        raw: &[u8],
        domain: Option<&DomainKeys>,
    ) -> Result<bool> {
        if self.contains(id) && !self.is_suspect(id) {
            return Ok(false);
        }
        let raw_len = u32::try_from(raw.len())
            .map_err(|_| Error::corrupted("chunk", "chunk larger than 4 GiB"))?;
        COMPRESSION_BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            let compressed = codec::compress_into(raw, self.config.compression, &mut buffer);
            let (record_codec, payload) = if compressed {
                (Codec::Zstd, buffer.as_slice())
            } else {
                (Codec::Raw, raw)
            };
            let keys = match domain {
                Some(keys) if keys.is_sealed() => keys,
                // Plain, or keyed in a dedup-only domain: in the clear.
                _ => {
                    let header = encode_unsealed_header(
                        kind,
                        record_codec,
                        domain.map_or(0, |keys| keys.domain),
                        raw_len,
                        id,
                        sha256,
                        payload,
                    )?;
                    return self.append_new(id, &header, payload);
                }
            };
            SEAL_BUFFER.with(|sealed| {
                let mut sealed = sealed.borrow_mut();
                sealed.clear();
                sealed.extend_from_slice(&sha256.0);
                sealed.extend_from_slice(payload);
                let aad = encode_aad(kind, record_codec, keys.domain, raw_len, id, sealed.len())?;
                let (nonce, tag) = keys.seal(aad.as_bytes(), &mut sealed)?;
                let header = encode_sealed_header(&aad, &nonce, &tag, &sealed);
                self.append_new(id, &header, &sealed)
            })
        })
    }

    /// Appends a chunk's record unless another thread stored it meanwhile.
    fn append_new(
        &self,
        id: &ChunkId,
        header: &[u8; RECORD_HEADER_SIZE],
        payload: &[u8],
    ) -> Result<bool> {
        self.append_record(id, header, payload, None)
    }

    /// [`ChunkStore::append_new`], the new copy replacing the one at
    /// `replacing` in the index (a copy in a condemned pack).
    fn append_record(
        &self,
        id: &ChunkId,
        header: &[u8; RECORD_HEADER_SIZE],
        payload: &[u8],
        replacing: Option<PackLocation>,
    ) -> Result<bool> {
        let mut writer = self.writer.lock();
        let healing = self.suspects.lock().remove(id);
        let damaged_copy = if healing { self.locate(id) } else { replacing };
        if self.contains(id) && !healing {
            return Ok(false);
        }
        let pack = match writer.as_mut() {
            Some(pack) => pack,
            None => writer.insert(self.create_pack()?),
        };
        let name = pack_name(pack.seq);
        let offset = pack
            .file
            .append(&[header, payload])
            .map_err(unsynced_error(format!("appending to {name}")))?;
        let offset =
            u32::try_from(offset).map_err(|_| Error::corrupted(&name, "pack grew past 4 GiB"))?;
        let record_len = (RECORD_HEADER_SIZE + payload.len()) as u32;
        pack.entries.push(IndexEntry {
            id_prefix: id.prefix(),
            offset,
            record_len,
        });
        pack.dirty = true;
        {
            let mut index = self.index.write();
            // The fresh copy replaces a damaged one in one step.
            if let Some(damaged) = damaged_copy {
                index.remove_locations(&[damaged]);
            }
            index.insert_open(
                *id,
                PackLocation {
                    pack: pack.seq,
                    offset,
                },
            );
        }
        self.stored_bytes
            .fetch_add(u64::from(record_len), Ordering::Relaxed);
        if pack.file.len() >= self.config.pack_target_size {
            let retired = self.rotate(&mut writer);
            drop(writer);
            // Sealing fsyncs the whole pack: done outside the writer lock so
            // other puts continue into the next pack meanwhile.
            if let Some(retired) = retired {
                self.seal(&retired)?;
            }
        }
        Ok(true)
    }

    /// Creates the next pack for appends (durably) and registers its reader.
    /// A failure leaves nothing the store depends on: at worst an empty or
    /// torn pack file, which the next open skips.
    fn create_pack(&self) -> Result<OpenPack> {
        let seq = self.next_pack_sequence()?;
        let pack = OpenPack::create(self.storage.as_ref(), seq)?;
        let name = pack_name(seq);
        let reader = self
            .storage
            .open_read(&name)
            .map_err(io_error(format!("opening {name}")))?;
        self.readers.write().insert(seq, reader);
        Ok(pack)
    }

    /// The sequence of a new pack: one the shared medium reserved for this
    /// writer, else the next after every pack this store has seen.
    fn next_pack_sequence(&self) -> Result<u32> {
        match self
            .storage
            .reserve_sequence(PACK_DIR)
            .map_err(io_error("reserving a pack sequence".into()))?
        {
            Some(seq) => Ok(seq),
            None => Ok(self.next_seq.fetch_add(1, Ordering::AcqRel)),
        }
    }

    /// Takes the open pack out of the writer (the next append creates a
    /// new one) and registers it as retiring until [`ChunkStore::seal`]
    /// ends; `None` if no pack is open.
    fn rotate(&self, writer: &mut Option<OpenPack>) -> Option<Arc<Mutex<OpenPack>>> {
        let retired = Arc::new(Mutex::new(writer.take()?));
        self.retiring.lock().push(retired.clone());
        Some(retired)
    }

    /// Seals a retired pack: sync it, write its index atomically, then map
    /// it and move its entries into the sorted index. Its chunks stay
    /// readable throughout (pread and the open-pack map until the switch).
    /// The index is best effort: a pack whose index could not be written
    /// (a full disk) is sealed all the same, and scanned at the next open.
    fn seal(&self, retired: &Arc<Mutex<OpenPack>>) -> Result<()> {
        let mut pack = retired.lock();
        if pack.sealed {
            return Ok(());
        }
        let seq = pack.seq;
        let name = pack_name(seq);
        pack.file
            .sync()
            .map_err(unsynced_error(format!("syncing {name}")))?;
        pack.dirty = false;
        // Before its index: a pack whose index exists is sealed everywhere.
        self.storage
            .seal(&name)
            .map_err(unsynced_error(format!("sealing {name}")))?;
        if self.storage.is_tiered() {
            // Sealing published it and dropped the local copy: read it
            // where it is now.
            let reader = self
                .storage
                .open_read(&name)
                .map_err(io_error(format!("opening {name}")))?;
            self.readers.write().insert(seq, reader);
        }
        let mut entries = std::mem::take(&mut pack.entries);
        entries.sort_unstable();
        let indexed = encode_index(u64::from(seq), &entries)
            .map_err(Error::from)
            .and_then(|bytes| {
                self.storage
                    .write_atomic(&index_name(seq), &bytes)
                    .map_err(|error| Error::io(format!("writing {}", index_name(seq)), error))
            });
        if let Err(error) = &indexed {
            tracing::warn!(pack = %name, %error, "could not write a sealed pack's index");
            self.unindexed.lock().insert(seq, entries.clone());
        }
        if self.config.use_mmap && indexed.is_ok() {
            let mapped = self
                .storage
                .map(&name)
                .map_err(io_error(format!("mapping {name}")))?;
            if let Some(mapped) = mapped {
                self.readers.write().insert(seq, mapped);
            }
        }
        self.index.write().add_sealed(seq, &entries);
        pack.sealed = true;
        drop(pack);
        self.retiring
            .lock()
            .retain(|pack| !Arc::ptr_eq(pack, retired));
        Ok(())
    }

    /// Makes every chunk put so far durable: the open pack's and those of
    /// packs still being sealed (waiting for a seal under way).
    pub fn sync(&self) -> Result<()> {
        if let Some(pack) = self.writer.lock().as_mut() {
            pack.sync()?;
        }
        let retiring: Vec<Arc<Mutex<OpenPack>>> = self.retiring.lock().clone();
        for pack in retiring {
            pack.lock().sync()?;
        }
        Ok(())
    }

    /// Reads and verifies a chunk: record crc, the id in the header, the
    /// decoded length and the content hash. `Ok(None)` if no such chunk is
    /// stored; corruption is an error, never data.
    /// A chunk found corrupt is marked suspect, so a later put of the same
    /// data heals it.
    pub fn get(&self, kind: RecordKind, id: &ChunkId) -> Result<Option<StoredChunk>> {
        Ok(self
            .get_with_frame(kind, id, ContentCheck::Default, false)?
            .map(|(chunk, _)| chunk))
    }

    /// [`ChunkStore::get`] with the content check chosen by the caller,
    /// also returning the record's zstd frame (decrypted, for an encrypted
    /// record) when `keep_frame` is set and the payload is compressed: a
    /// standard frame that decompresses to the returned data, which exports
    /// copy instead of compressing again.
    pub(crate) fn get_with_frame(
        &self,
        kind: RecordKind,
        id: &ChunkId,
        check: ContentCheck,
        keep_frame: bool,
    ) -> Result<Option<(StoredChunk, Option<Vec<u8>>)>> {
        let Some(location) = self.locate_looking_again(id)? else {
            return Ok(None);
        };
        let read = self.read_verified(location, kind, id, check, keep_frame);
        if let Err(Error::Corrupted { .. }) = &read {
            self.mark_suspect(*id);
        }
        read.map(Some)
    }

    /// The SHA-256 kept with block chunk `id`: read from its record header
    /// for a plain record (no payload read), from its opened payload for an
    /// encrypted one. `Ok(None)` if no such chunk is stored.
    pub(crate) fn block_sha256(&self, id: &ChunkId) -> Result<Option<Sha256Digest>> {
        let Some((_, header)) = self.find(id) else {
            return Ok(None);
        };
        if header.kind != RecordKind::Block {
            return Err(Error::corrupted(
                format!("chunk {id}"),
                "record kind differs from the reference",
            ));
        }
        if !is_sealed_domain(header.domain) && header.sha256.is_kept() {
            return Ok(Some(header.sha256));
        }
        if let Some(computed) = self.computed_checksums.lock().get(id) {
            return Ok(Some(*computed));
        }
        Ok(self
            .get_with_frame(RecordKind::Block, id, ContentCheck::Sha256, false)?
            .map(|(chunk, _)| chunk.sha256))
    }

    /// The SHA-256 of block chunk `id`, whose record kept none: from
    /// [`ChunkStore::computed_checksums`], else computed from `data` and
    /// remembered there.
    pub(crate) fn computed_checksum(&self, id: &ChunkId, data: &[u8]) -> Sha256Digest {
        if let Some(computed) = self.computed_checksums.lock().get(id) {
            return *computed;
        }
        let computed = codec::sha256(data);
        let mut remembered = self.computed_checksums.lock();
        if remembered.len() >= COMPUTED_CHECKSUMS_KEPT {
            remembered.clear();
        }
        remembered.insert(*id, computed);
        computed
    }

    /// Reads the record at `location` and checks it holds chunk `id` of
    /// `kind`: crc, kind, the authentication tag of an encrypted record,
    /// decoded length, and the content hash. An encrypted record's tag
    /// already proves a key holder sealed this content under this id (the
    /// id is associated data), so its content hash is recomputed only for
    /// [`ContentCheck::Full`] (verify).
    fn read_verified(
        &self,
        location: PackLocation,
        kind: RecordKind,
        id: &ChunkId,
        check: ContentCheck,
        keep_frame: bool,
    ) -> Result<(StoredChunk, Option<Vec<u8>>)> {
        let place = || format!("{} record at {}", pack_name(location.pack), location.offset);
        let keep = |header: &RecordHeader, payload: &[u8]| {
            (keep_frame && header.codec == Codec::Zstd).then(|| payload.to_vec())
        };
        let (header, sha256, data, keys, frame) =
            self.with_record(location, |header, payload| {
                if header.kind != kind {
                    return Err(Error::corrupted(
                        place(),
                        "record kind differs from the reference",
                    ));
                }
                let unsealed = |keys| -> Result<_> {
                    let data =
                        codec::decode_payload(header.codec, payload, header.raw_len as usize)
                            .map_err(|error| error.into_error(&place()))?;
                    Ok((*header, header.sha256, data, keys, keep(header, payload)))
                };
                if header.domain == 0 {
                    return unsealed(None);
                }
                let keys = self
                    .domains
                    .read()
                    .get(&header.domain)
                    .cloned()
                    .ok_or_else(|| {
                        Error::corrupted(
                            place(),
                            format!(
                            "record sealed under key domain {}, which the keyring does not hold",
                            header.domain
                        ),
                        )
                    })?;
                // A dedup-only domain's records are in the clear; their ids
                // are its keyed hashes.
                if !keys.is_sealed() {
                    return unsealed(Some(keys));
                }
                let mut opened = payload.to_vec();
                let (nonce, tag) = header.seal();
                let aad = header.aad();
                keys.open(&nonce, aad.as_bytes(), &mut opened, &tag)
                    .map_err(|_| {
                        Error::corrupted(
                            place(),
                            "authentication tag does not match (tampered or misplaced record)",
                        )
                    })?;
                let mut sha256 = Sha256Digest([0; 32]);
                sha256.0.copy_from_slice(
                    opened
                        .get(..SEALED_PREFIX_LEN)
                        .unwrap_or(&[0; SEALED_PREFIX_LEN]),
                );
                let compressed = opened.get(SEALED_PREFIX_LEN..).unwrap_or_default();
                let data = codec::decode_payload(header.codec, compressed, header.raw_len as usize)
                    .map_err(|error| error.into_error(&place()))?;
                let frame = keep(header, compressed);
                Ok((*header, sha256, data, Some(keys), frame))
            })?;
        let hash_matches = match (check, kind, &keys) {
            (ContentCheck::Sha256, RecordKind::Block, _) if sha256.is_kept() => {
                codec::sha256(&data) == sha256
            }
            // The tag covered the id: only verify rehashes sealed content.
            (ContentCheck::Default | ContentCheck::Sha256, _, Some(keys)) if keys.is_sealed() => {
                header.chunk_id == *id
            }
            _ => chunk_id_in(keys.as_deref(), kind, &data) == *id,
        };
        if !hash_matches {
            return Err(Error::corrupted(
                place(),
                "content does not hash to its chunk id",
            ));
        }
        let sha256 =
            if check == ContentCheck::Sha256 && kind == RecordKind::Block && !sha256.is_kept() {
                self.computed_checksum(id, &data)
            } else {
                sha256
            };
        Ok((StoredChunk { data, sha256 }, frame))
    }

    /// Marks a chunk as found corrupt, so the next put of its data heals it.
    pub fn mark_suspect(&self, id: ChunkId) {
        self.suspects.lock().insert(id);
    }

    /// Whether a chunk was found corrupt and not healed yet.
    pub fn is_suspect(&self, id: &ChunkId) -> bool {
        self.suspects.lock().contains(id)
    }

    /// Counters describing the store.
    pub fn stats(&self) -> ChunkStoreStats {
        let index = self.index.read();
        ChunkStoreStats {
            chunks: index.len() as u64,
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            index_heap_bytes: index.heap_bytes() as u64,
        }
    }
}

/// Loads a sealed pack's index; `None` if it is unreadable, corrupt, or
/// points outside the pack (the caller rebuilds it by scanning).
fn load_index(storage: &dyn Storage, seq: u32, pack_len: u64) -> Option<Vec<IndexEntry>> {
    let bytes = storage.read_all(&index_name(seq)).ok()?;
    let (indexed_seq, entries) = decode_index(&bytes).ok()?;
    let in_bounds = entries
        .iter()
        .all(|entry| u64::from(entry.offset) + u64::from(entry.record_len) <= pack_len);
    (indexed_seq == u64::from(seq) && in_bounds).then_some(entries)
}

/// Loads pack `seq` at open (see [`ChunkStore::open`]), recording what it
/// finds damaged in `damage`.
fn load_pack(
    storage: &dyn Storage,
    reader: &dyn ReadFile,
    seq: u32,
    has_index: bool,
    is_last: bool,
    damage: &mut Vec<Damage>,
) -> Result<LoadedPack> {
    let name = pack_name(seq);
    let pack_len = reader.len().map_err(io_error(format!("reading {name}")))?;
    if has_index {
        if let Some(entries) = load_index(storage, seq, pack_len) {
            return Ok(LoadedPack::Sealed(entries));
        }
    }
    let scanned = scan(reader, seq)?;
    let with_ids = entries_of(&scanned.records);
    if scanned.header_damaged {
        damage.push(Damage {
            file: name.clone(),
            detail: "the pack's file header does not verify; its records do (run `blocksnap repair` to rewrite the pack)".into(),
            data_lost: false,
        });
    }
    if !scanned.damaged.is_empty() || scanned.header_damaged {
        let ranges: Vec<String> = scanned
            .damaged
            .iter()
            .map(|range| format!("{}..{}", range.start, range.end))
            .collect();
        if !ranges.is_empty() {
            damage.push(Damage {
                file: name,
                detail: format!(
                    "bytes {} hold no valid record, and valid records follow; the {} records around them are kept (run `blocksnap repair` to index the pack)",
                    ranges.join(", "),
                    with_ids.len()
                ),
                data_lost: true,
            });
        }
        return Ok(LoadedPack::Sealed(
            with_ids.into_iter().map(|(_, entry)| entry).collect(),
        ));
    }
    if has_index {
        damage.push(Damage {
            file: index_name(seq),
            detail: "the index does not verify or points past its pack's end; rebuilt from the pack, which scans cleanly".into(),
            data_lost: false,
        });
    }
    let entries: Vec<IndexEntry> = with_ids.iter().map(|(_, entry)| *entry).collect();
    // A reader writes nothing.
    if storage.is_read_only() {
        return Ok(LoadedPack::Sealed(entries));
    }
    // Another writer's pack on a shared medium: whole (a pack reaches the
    // medium only once sealed) and never appended to again, so its index
    // is a function of its bytes. Its writer uploads that index right
    // after the pack; one that died in between (or could not write it)
    // leaves it to anyone, and the next gc writes it
    // (`write_missing_indexes`): the bytes its writer would have written.
    if !storage.owns(&name) {
        return Ok(LoadedPack::Unindexed(entries));
    }
    // Only a pack that was never sealed (no index at all) takes appends.
    if is_last && !has_index && !scanned.has_garbage_tail && scanned.valid_len > 0 {
        let mut file = storage
            .open_append_uncached(&name)
            .map_err(io_error(format!("opening {name}")))?;
        // Durability of the scanned bytes is unknown: make it certain
        // before anything new is appended after them.
        file.sync().map_err(io_error(format!("syncing {name}")))?;
        let pack = OpenPack {
            seq,
            file,
            entries,
            dirty: false,
            sealed: false,
        };
        return Ok(LoadedPack::Open(pack, with_ids));
    }
    if scanned.valid_len > 0 {
        // Sealing is best effort: without an index (a full disk, say) the
        // pack is written an index later, or scanned again at the next open.
        let indexed = storage
            .seal(&name)
            .map_err(|error| Error::io(format!("sealing {name}"), error))
            .and_then(|()| encode_index(u64::from(seq), &entries).map_err(Error::from))
            .and_then(|bytes| {
                storage
                    .write_atomic(&index_name(seq), &bytes)
                    .map_err(|error| Error::io(format!("writing {}", index_name(seq)), error))
            });
        if let Err(error) = indexed {
            tracing::warn!(pack = %name, %error, "could not write the index of a recovered pack");
            return Ok(LoadedPack::Unindexed(entries));
        }
    }
    Ok(LoadedPack::Sealed(entries))
}
