//! Damage at rest, exhaustively: for every kind of file a store holds
//! (store header, keyring, catalog segments, journals, sealed and unsealed
//! packs, pack indexes, and each one's second copy where it has one), at a
//! spread of offsets (headers, lengths, payloads; first, middle and last
//! records), a byte is flipped or the file is cut there. Then, on a
//! read-only open, on a writing open and after `repair`:
//!
//! - every read is exact or a typed error, never a panic;
//! - no intact record is dropped: every block whose record and map nodes
//!   the damage did not touch reads back exactly, and every pending put
//!   whose journal entry and record survive is still there;
//! - `verify` exits 1 (is not clean) whenever anything was lost, and for
//!   every flipped byte except where a torn write looks the same (the last
//!   record of an append-only file);
//! - nothing that only reads writes (the read-only view refuses writes);
//! - after `repair`, `verify` is clean exactly when nothing was lost.
//!
//! The key file (outside the store) is covered by `keys::local`'s tests.

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::crypto::KeyProvider;
use blocksnap::engine::{RepairOptions, VerifyOptions};
use blocksnap::format::catalog::CatalogRecord;
use blocksnap::format::header::FILE_HEADER_SIZE;
use blocksnap::format::index::decode_index;
use blocksnap::format::journal::JOURNAL_RECORD_SIZE;
use blocksnap::format::pack::RECORD_HEADER_SIZE;
use blocksnap::ids::ChunkId;
use blocksnap::keys::{KdfParams, LocalKeyProvider, Passphrase};
use blocksnap::storage::{LocalStorage, MemoryStorage, Storage, TornWrites};
use blocksnap::testing::{
    block, block_dependencies, copy_store_dir, get_listed, list_all_blocks, pack_records,
    put_request, write_lineage, Lineage,
};
use blocksnap::{Engine, EngineConfig, Error};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

/// A completed snapshot: its content and what each block's read needs.
struct Completed {
    id: String,
    content: BTreeMap<u32, u64>,
    needs: BTreeMap<u32, Vec<ChunkId>>,
}

/// The pristine store every case damages a copy of.
struct Pristine {
    storage: MemoryStorage,
    _keys: tempfile::TempDir,
    provider: Arc<LocalKeyProvider>,
    completed: Vec<Completed>,
    /// The pending snapshot: its puts, and each put's chunk.
    pending: (String, BTreeMap<u32, (u64, ChunkId)>),
    /// Every pack record: (file, bytes, chunk).
    records: Vec<(String, Range<usize>, ChunkId)>,
    /// The unsealed pack, if any (recovery scans it; the rest are indexed).
    open_pack: Option<String>,
}

fn config(provider: &Arc<LocalKeyProvider>, use_mmap: bool) -> EngineConfig {
    EngineConfig {
        key_provider: Some(provider.clone() as Arc<dyn KeyProvider>),
        chunk_store: ChunkStoreConfig {
            pack_target_size: 1 << 20,
            use_mmap,
            ..ChunkStoreConfig::default()
        },
        node_cache_nodes: 0,
        ..EngineConfig::default()
    }
}

fn passphrase() -> Passphrase {
    Passphrase::new("corruption test").expect("passphrase")
}

/// Writes a plain lineage, an encrypted snapshot, a deleted snapshot and
/// a pending one into `storage`.
fn populate(
    storage: Arc<dyn Storage>,
    provider: &Arc<LocalKeyProvider>,
    use_mmap: bool,
) -> (Lineage, String, BTreeMap<u32, u64>) {
    let engine = Engine::open_with(storage, config(provider, use_mmap)).expect("open");
    let plain = StartSnapshotRequest {
        volume_size: 1,
        ..Default::default()
    };
    let mut completed = write_lineage(
        &engine,
        &plain,
        &[
            &[(0, 1), (1, 2), (2, 0), (700, 3), (2047, 4)],
            &[(1, 5), (3, 6), (700, 3)],
            &[(5, 7), (9, 8)],
        ],
    );
    let encrypted = StartSnapshotRequest {
        volume_size: 1,
        encrypted: Some(true),
        ..Default::default()
    };
    completed.extend(write_lineage(&engine, &encrypted, &[&[(0, 11), (4, 12)]]));
    let deleted = write_lineage(&engine, &plain, &[&[(3, 13)]]);
    Ebs::new(&engine)
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: deleted[0].0.clone(),
        })
        .expect("delete");
    let pending = Ebs::new(&engine)
        .start_snapshot(plain)
        .expect("start")
        .snapshot_id;
    let puts: BTreeMap<u32, u64> = [(4, 21), (6, 22), (8, 23), (10, 24)].into();
    for (index, seed) in &puts {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&pending, *index as i32, block(*seed)))
            .expect("put");
    }
    (completed, pending, puts)
}

/// A key provider with a quick KDF, in a directory the caller keeps.
fn key_provider() -> (tempfile::TempDir, Arc<LocalKeyProvider>) {
    let keys = tempfile::tempdir().expect("tempdir");
    let quick = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    let provider = Arc::new(
        LocalKeyProvider::create(&keys.path().join("keys"), &passphrase(), quick).expect("keys"),
    );
    (keys, provider)
}

fn build() -> Pristine {
    let (keys, provider) = key_provider();
    let storage = MemoryStorage::new();
    let (lineage, pending, puts) = populate(Arc::new(storage.clone()), &provider, false);
    let engine = Engine::open_with(Arc::new(storage.read_only_view()), config(&provider, false))
        .expect("open read-only");
    let completed = lineage
        .into_iter()
        .map(|(id, content)| Completed {
            needs: block_dependencies(&engine, &id).expect("dependencies"),
            id,
            content,
        })
        .collect();
    let records: Vec<(String, Range<usize>, ChunkId)> = pack_records(&storage)
        .into_iter()
        .map(|(file, offset, header)| (file, offset..offset + header.record_len(), header.chunk_id))
        .collect();
    let pending_chunks = puts
        .into_iter()
        .map(|(index, seed)| {
            let data = block(seed);
            let chunk = ChunkId(*blake3::hash(&data).as_bytes());
            (index, (seed, chunk))
        })
        .collect();
    let open_pack = storage
        .list("packs")
        .expect("list")
        .into_iter()
        .filter(|name| name.ends_with(".pack"))
        .map(|name| format!("packs/{name}"))
        .find(|pack| {
            !storage
                .exists(&pack.replace(".pack", ".idx"))
                .expect("exists")
        });
    drop(engine);
    Pristine {
        storage,
        _keys: keys,
        provider,
        completed,
        pending: (pending, pending_chunks),
        records,
        open_pack,
    }
}

/// One fault: a flipped byte, or the file cut to that length.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Flip(usize),
    Cut(usize),
}

impl Fault {
    /// The bytes it destroys in a file of `len` bytes.
    fn touches(self, len: usize) -> Range<usize> {
        match self {
            Fault::Flip(at) => at..at + 1,
            Fault::Cut(at) => at..len.max(at),
        }
    }
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Offsets worth damaging in `name`: header fields, then per structure
/// the first, middle and last element's length, body and end.
fn offsets(pristine: &Pristine, name: &str, bytes: &[u8]) -> BTreeSet<usize> {
    let len = bytes.len();
    let mut at: BTreeSet<usize> = [0, 8, 12, 16, 28, len / 2, len.saturating_sub(1)].into();
    let mut elements: Vec<Range<usize>> = Vec::new();
    if name.ends_with(".pack") {
        elements = pristine
            .records
            .iter()
            .filter(|(file, _, _)| file == name)
            .map(|(_, range, _)| range.clone())
            .collect();
        for element in pick(&elements) {
            at.extend([
                element.start,
                element.start + 4,
                element.start + 8,
                element.start + 16,
                element.start + 48,
                element.start + RECORD_HEADER_SIZE + (element.len() - RECORD_HEADER_SIZE) / 2,
                element.end - 1,
            ]);
        }
    } else if name.starts_with("catalog/") {
        let mut offset = FILE_HEADER_SIZE;
        while let Ok((_, length)) = CatalogRecord::decode_frame(&bytes[offset..]) {
            elements.push(offset..offset + length);
            offset += length;
        }
        for element in pick(&elements) {
            at.extend([
                element.start,
                element.start + 4,
                element.start + 10,
                element.end - 1,
            ]);
        }
    } else if name.starts_with("pending/") {
        elements = (FILE_HEADER_SIZE..len)
            .step_by(2 * JOURNAL_RECORD_SIZE)
            .map(|start| start..start + 2 * JOURNAL_RECORD_SIZE)
            .collect();
        for element in pick(&elements) {
            at.extend([
                element.start,
                element.start + 4,
                element.start + 40,
                element.start + JOURNAL_RECORD_SIZE + 4,
                element.end - 1,
            ]);
        }
    } else if name.ends_with(".idx") {
        let (_, entries) = decode_index(bytes).expect("index");
        at.extend([32, 40, 40 + 16 * (entries.len() / 2), len - 4]);
    } else if name.starts_with("blocksnap.store") {
        at.extend([32, 64, 72]);
    } else {
        at.extend([32, 36, 40]);
    }
    at.retain(|offset| *offset < len);
    at
}

/// The first, middle and last elements.
fn pick(elements: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut picked: Vec<Range<usize>> = [0, elements.len() / 2, elements.len().saturating_sub(1)]
        .iter()
        .filter_map(|position| elements.get(*position).cloned())
        .collect();
    picked.dedup();
    picked
}

/// What one fault is expected to lose.
struct Expected {
    /// Chunks whose record the fault touched.
    lost_chunks: BTreeSet<ChunkId>,
    /// Pending puts expected to survive (index -> seed).
    surviving_puts: BTreeMap<u32, u64>,
    /// Whether a block of a completed snapshot is lost.
    completed_lost: bool,
    /// Whether verify may miss the fault: it looks like a torn write (the
    /// end of an append-only file) and loses nothing a completed snapshot
    /// needs.
    may_be_silent: bool,
}

fn expected(pristine: &Pristine, name: &str, len: usize, fault: Fault) -> Expected {
    let touched = fault.touches(len);
    let lost_chunks: BTreeSet<ChunkId> = pristine
        .records
        .iter()
        .filter(|(file, range, _)| file == name && overlaps(range, &touched))
        .map(|(_, _, chunk)| *chunk)
        .collect();
    let completed_lost = pristine.completed.iter().any(|snapshot| {
        snapshot
            .needs
            .values()
            .flatten()
            .any(|chunk| lost_chunks.contains(chunk))
    });
    let (pending, puts) = &pristine.pending;
    let journal = format!("pending/{:016x}.journal", pending_id(pending));
    // A cut journal loses the entries it cuts into; a flipped byte hits
    // one copy of an entry only.
    let journal_kept = |position: usize| match fault {
        Fault::Cut(at) if name == journal => {
            FILE_HEADER_SIZE + (position + 1) * 2 * JOURNAL_RECORD_SIZE <= at
        }
        _ => true,
    };
    let surviving_puts: BTreeMap<u32, u64> = puts
        .iter()
        .enumerate()
        .filter(|(position, (_, (_, chunk)))| {
            journal_kept(*position) && !lost_chunks.contains(chunk)
        })
        .map(|(_, (index, (seed, _)))| (*index, *seed))
        .collect();
    let tail = |last_element_start: Option<usize>| {
        touched.start >= last_element_start.unwrap_or(usize::MAX)
    };
    let last_record = pristine
        .records
        .iter()
        .filter(|(file, _, _)| file == name)
        .map(|(_, range, _)| range.start)
        .max();
    let may_be_silent = !completed_lost
        && match fault {
            // A cut append-only file looks torn.
            Fault::Cut(_) => {
                name == journal
                    || name.starts_with("catalog/")
                    || Some(name) == pristine.open_pack.as_deref()
            }
            // So does a flipped byte in the last element of one.
            Fault::Flip(_) => {
                (Some(name) == pristine.open_pack.as_deref() && tail(last_record))
                    || (name == journal && touched.start >= len - JOURNAL_RECORD_SIZE)
                    || (name.starts_with("catalog/")
                        && tail(Some(last_frame_start(pristine, name))))
            }
        };
    Expected {
        lost_chunks,
        surviving_puts,
        completed_lost,
        may_be_silent,
    }
}

fn pending_id(id: &str) -> u64 {
    u64::from_str_radix(id.trim_start_matches("snap-"), 16).expect("id")
}

fn last_frame_start(pristine: &Pristine, name: &str) -> usize {
    let bytes = pristine.storage.read_all(name).expect("read");
    let mut offset = FILE_HEADER_SIZE;
    let mut last = offset;
    while let Ok((_, length)) = CatalogRecord::decode_frame(&bytes[offset..]) {
        last = offset;
        offset += length;
    }
    last
}

/// Every completed snapshot reads exactly where nothing it needs was lost,
/// and fails with a typed error (never wrong data) where something was.
fn check_reads(engine: &Engine, pristine: &Pristine, expected: &Expected, context: &str) {
    for snapshot in &pristine.completed {
        let needs_lost = |index: u32| {
            snapshot.needs[&index]
                .iter()
                .any(|chunk| expected.lost_chunks.contains(chunk))
        };
        let listed = match list_all_blocks(engine, &snapshot.id) {
            Ok(listed) => listed,
            Err(error) => {
                assert!(
                    snapshot.content.keys().any(|index| needs_lost(*index)),
                    "{context}: listing {} failed though nothing it needs was lost: {error}",
                    snapshot.id
                );
                assert_internal(&error, context);
                continue;
            }
        };
        let indexes: Vec<u32> = listed.iter().map(|b| b.block_index as u32).collect();
        assert_eq!(
            indexes,
            snapshot.content.keys().copied().collect::<Vec<_>>(),
            "{context}: listing of {}",
            snapshot.id
        );
        for entry in &listed {
            let index = entry.block_index as u32;
            match get_listed(engine, &snapshot.id, entry) {
                Ok(data) => assert!(
                    data == block(snapshot.content[&index]),
                    "{context}: wrong data for {} block {index}",
                    snapshot.id
                ),
                Err(error) => {
                    assert!(
                        needs_lost(index),
                        "{context}: {} block {index} failed though intact: {error}",
                        snapshot.id
                    );
                    assert_internal(&error, context);
                }
            }
        }
    }
}

#[track_caller]
fn assert_internal(error: &Error, context: &str) {
    assert_eq!(
        ebs_error(error).code,
        "InternalServerException",
        "{context}: {error}"
    );
}

/// Checks one damaged store: read-only, then writing, then repaired.
fn check(
    pristine: &Pristine,
    damaged: MemoryStorage,
    expected: &Expected,
    flipped: bool,
    context: &str,
) {
    let engine = Engine::open_with(
        Arc::new(damaged.read_only_view()),
        config(&pristine.provider, false),
    )
    .unwrap_or_else(|error| panic!("{context}: read-only open failed: {error}"));
    check_reads(&engine, pristine, expected, context);
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    if expected.completed_lost {
        assert!(!report.is_clean(), "{context}: a loss verify missed");
    }
    if flipped && !expected.may_be_silent {
        assert!(
            !report.is_clean(),
            "{context}: a flipped byte verify missed"
        );
    }
    drop(engine);

    let engine = Engine::open_with(Arc::new(damaged.clone()), config(&pristine.provider, false))
        .unwrap_or_else(|error| panic!("{context}: open failed: {error}"));
    check_reads(&engine, pristine, expected, context);
    drop(engine);

    let repaired = Engine::repair(
        Arc::new(damaged.clone()),
        config(&pristine.provider, false),
        RepairOptions::default(),
    )
    .unwrap_or_else(|error| panic!("{context}: repair failed: {error}"));
    assert!(repaired.not_verified.is_none(), "{context}: {repaired:?}");
    if expected.completed_lost {
        assert!(repaired.lost_anything(), "{context}: repair missed a loss");
    }
    let engine = Engine::open_with(Arc::new(damaged), config(&pristine.provider, false))
        .unwrap_or_else(|error| panic!("{context}: open after repair failed: {error}"));
    check_reads(&engine, pristine, expected, context);
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert_eq!(
        report.is_clean(),
        !expected.completed_lost,
        "{context}: after repair: {report:?}"
    );
    assert!(
        report.damaged_files.is_empty(),
        "{context}: after repair: {report:?}"
    );
    // The pending snapshot kept exactly the puts whose entry and record
    // survived: it completes with that count and reads them back.
    let (pending, _) = &pristine.pending;
    let surviving = &expected.surviving_puts;
    Ebs::new(&engine)
        .complete_snapshot(CompleteSnapshotRequest {
            snapshot_id: pending.clone(),
            changed_blocks_count: surviving.len() as i32,
            ..Default::default()
        })
        .unwrap_or_else(|error| panic!("{context}: completing the pending snapshot: {error}"));
    assert!(
        blocksnap::testing::holds_exactly(&engine, pending, surviving)
            .unwrap_or_else(|error| panic!("{context}: reading the completed snapshot: {error}")),
        "{context}: the pending snapshot's surviving puts"
    );
}

#[test]
fn every_file_flipped_and_cut_at_every_structure() {
    let pristine = build();
    let mut names = Vec::new();
    for dir in ["", "packs", "catalog", "pending"] {
        for name in pristine.storage.list(dir).expect("list") {
            names.push(if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            });
        }
    }
    let kinds = [
        "blocksnap.store",
        "blocksnap.store.mirror",
        "keyring",
        "keyring.mirror",
        ".log",
        ".mirror",
        ".journal",
        ".idx",
        ".pack",
    ];
    for kind in kinds {
        assert!(
            names.iter().any(|name| name.ends_with(kind)),
            "no {kind} file in {names:?}"
        );
    }
    assert!(pristine.open_pack.is_some(), "an unsealed pack: {names:?}");
    assert!(names.iter().filter(|name| name.ends_with(".pack")).count() >= 3);
    let mut cases = 0;
    for name in &names {
        let bytes = pristine.storage.read_all(name).expect("read");
        let at = offsets(&pristine, name, &bytes);
        let cuts: BTreeSet<usize> = at
            .iter()
            .copied()
            .chain([0, 1, 31, 32])
            .filter(|cut| *cut < bytes.len())
            .collect();
        let faults = at
            .iter()
            .map(|offset| Fault::Flip(*offset))
            .chain(cuts.into_iter().map(Fault::Cut));
        for fault in faults {
            let damaged = pristine.storage.crash_image(TornWrites::DropUnsynced);
            match fault {
                Fault::Flip(at) => damaged.corrupt(name, at, 0x41).expect("corrupt"),
                Fault::Cut(at) => damaged.cut(name, at).expect("cut"),
            }
            let expected = expected(&pristine, name, bytes.len(), fault);
            let context = format!("{name} ({} bytes): {fault:?}", bytes.len());
            check(
                &pristine,
                damaged,
                &expected,
                matches!(fault, Fault::Flip(_)),
                &context,
            );
            cases += 1;
        }
    }
    assert!(cases > 300, "only {cases} cases");
}

#[test]
fn flipped_bytes_in_sealed_packs_read_through_mmap() {
    let (_keys, provider) = key_provider();
    let root = tempfile::tempdir().expect("tempdir");
    let pristine = root.path().join("pristine");
    let (lineage, _, _) = populate(
        Engine::local_storage(&pristine).expect("storage"),
        &provider,
        true,
    );
    // Sealed packs only: every record is indexed and read through the map.
    let packs: Vec<_> = std::fs::read_dir(pristine.join("packs"))
        .expect("packs")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "pack"))
        .filter(|path| path.with_extension("idx").exists())
        .collect();
    assert!(packs.len() >= 2, "several sealed packs");
    for pack in packs {
        let length = std::fs::metadata(&pack).expect("metadata").len() as usize;
        for offset in (0..length).step_by((length / 20).max(1)) {
            let copy = root.path().join(format!("copy-{offset}"));
            copy_store_dir(&pristine, &copy);
            let target = copy.join("packs").join(pack.file_name().expect("name"));
            let mut bytes = std::fs::read(&target).expect("read");
            bytes[offset] ^= 0x5a;
            std::fs::write(&target, bytes).expect("write");
            let context = format!("{} byte {offset} (mmap)", pack.display());
            let storage: Arc<dyn Storage> = Arc::new(LocalStorage::open(&copy).expect("open"));
            let engine = Engine::open_with(storage, config(&provider, true))
                .unwrap_or_else(|error| panic!("{context}: {error}"));
            for (id, content) in &lineage {
                match blocksnap::testing::holds_exactly(&engine, id, content) {
                    Ok(exact) => assert!(exact, "{context}: wrong data in {id}"),
                    Err(error) => assert_internal(&error, &context),
                }
            }
            assert!(
                !engine
                    .verify(VerifyOptions::default())
                    .expect("verify")
                    .is_clean(),
                "{context}"
            );
            drop(engine);
            std::fs::remove_dir_all(&copy).expect("cleanup");
        }
    }
}
