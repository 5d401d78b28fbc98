//! Flipped and truncated bytes anywhere in a store (packs, pack indexes, map
//! nodes, catalog, journals, store header) give a reported corruption
//! (`InternalServerException`), never wrong data and never a panic.

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::format::catalog::CatalogRecord;
use blocksnap::format::header::FILE_HEADER_SIZE;
use blocksnap::storage::{LocalStorage, MemoryStorage, Storage, TornWrites};
use blocksnap::testing::{
    block, copy_store_dir, get_listed, list_all_blocks, put_request, write_lineage, Lineage,
};
use blocksnap::{Engine, EngineConfig, Error};
use std::sync::Arc;

const INTERNAL: &str = "InternalServerException";

fn config(use_mmap: bool) -> EngineConfig {
    EngineConfig {
        chunk_store: ChunkStoreConfig {
            pack_target_size: 700 << 10,
            use_mmap,
            ..ChunkStoreConfig::default()
        },
        node_cache_nodes: 0,
        ..EngineConfig::default()
    }
}

/// Completed snapshots and their content (index -> seed).
type Expected = Lineage;

fn build(storage: Arc<dyn Storage>, use_mmap: bool) -> Expected {
    let engine = Engine::open_with(storage, config(use_mmap)).expect("open");
    let template = StartSnapshotRequest {
        volume_size: 1,
        ..Default::default()
    };
    let expected = write_lineage(
        &engine,
        &template,
        &[
            &[(0, 1), (1, 2), (2, 0), (700, 3), (2047, 4)],
            &[(1, 5), (3, 6), (700, 3)],
        ],
    );
    // A pending snapshot, so a journal exists.
    let pending = engine
        .start_snapshot(StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        })
        .expect("start");
    engine
        .put_snapshot_block(put_request(&pending.snapshot_id, 4, block(7)))
        .expect("put");
    expected
}

fn allowed_error(error: &Error, may_lose: bool, context: &str) {
    let code = ebs_error(error).code;
    let lost = matches!(code, "ResourceNotFoundException" | "ValidationException");
    assert!(
        code == INTERNAL || (may_lose && lost),
        "{context}: unexpected {code}: {error}"
    );
}

/// Opens the damaged store and reads everything; each result must be the
/// exact expected data or a reported error. `may_lose` allows a snapshot
/// to be unknown or pending (damage to the catalog's last frame, which is
/// indistinguishable from a torn write).
fn check(
    storage: Arc<dyn Storage>,
    use_mmap: bool,
    expected: &Expected,
    may_lose: bool,
    context: &str,
) {
    let engine = match Engine::open_with(storage, config(use_mmap)) {
        Ok(engine) => engine,
        Err(error) => return allowed_error(&error, false, context),
    };
    for (id, content) in expected {
        let blocks = match list_all_blocks(&engine, id) {
            Ok(blocks) => blocks,
            Err(error) => {
                allowed_error(&error, may_lose, context);
                continue;
            }
        };
        let listed: Vec<u32> = blocks.iter().map(|b| b.block_index as u32).collect();
        assert_eq!(
            listed,
            content.keys().copied().collect::<Vec<_>>(),
            "{context}: listing of {id}"
        );
        for listed in blocks {
            match get_listed(&engine, id, &listed) {
                Ok(data) => {
                    let seed = content[&(listed.block_index as u32)];
                    assert!(
                        data == block(seed),
                        "{context}: wrong data for {id} block {}",
                        listed.block_index
                    );
                }
                Err(error) => allowed_error(&error, false, context),
            }
        }
    }
}

fn all_files(storage: &dyn Storage) -> Vec<String> {
    let mut names = Vec::new();
    for dir in ["", "packs", "catalog", "pending"] {
        for name in storage.list(dir).expect("list") {
            names.push(if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            });
        }
    }
    names
}

/// Offsets worth flipping: every byte of small files and of the first
/// 4 KiB, then a stride through the rest.
fn offsets(length: usize) -> Vec<usize> {
    let dense = length.min(4096);
    let stride = (length / 150).max(1);
    (0..dense)
        .step_by(if length <= 4096 { 1 } else { 3 })
        .chain((dense..length).step_by(stride))
        .collect()
}

/// Where the last frame of a catalog segment starts.
fn last_frame_start(bytes: &[u8]) -> usize {
    let mut offset = FILE_HEADER_SIZE;
    let mut last = offset;
    while let Ok((_, length)) = CatalogRecord::decode_frame(&bytes[offset..]) {
        last = offset;
        offset += length;
    }
    last
}

#[test]
fn flipped_and_truncated_bytes_in_memory_store() {
    let pristine = MemoryStorage::new();
    let expected = build(Arc::new(pristine.clone()), false);
    let files = all_files(&pristine);
    assert!(
        files.iter().any(|f| f.ends_with(".idx")) && files.iter().any(|f| f.ends_with(".journal")),
        "{files:?}"
    );
    let mut cases = 0;
    for name in &files {
        let bytes = pristine.read_all(name).expect("read");
        let lossy_from = if name.starts_with("catalog/") {
            last_frame_start(&bytes)
        } else {
            usize::MAX
        };
        for offset in offsets(bytes.len()) {
            let damaged = pristine.crash_image(TornWrites::DropUnsynced);
            damaged.corrupt(name, offset, 0x5a).expect("corrupt");
            let context = format!("{name} byte {offset} flipped");
            check(
                Arc::new(damaged),
                false,
                &expected,
                offset >= lossy_from,
                &context,
            );
            cases += 1;
        }
        for cut in [
            0,
            bytes.len() / 3,
            bytes.len() / 2,
            bytes.len().saturating_sub(1),
        ] {
            let damaged = pristine.crash_image(TornWrites::DropUnsynced);
            damaged.cut(name, cut).expect("cut");
            let context = format!("{name} cut to {cut} bytes");
            check(
                Arc::new(damaged),
                false,
                &expected,
                cut >= lossy_from.min(bytes.len()) || name.starts_with("catalog/"),
                &context,
            );
            cases += 1;
        }
    }
    assert!(cases > 1000, "only {cases} cases");
}

#[test]
fn flipped_bytes_in_sealed_packs_read_through_mmap() {
    let root = tempfile::tempdir().expect("tempdir");
    let pristine = root.path().join("pristine");
    let expected = build(Engine::local_storage(&pristine).expect("storage"), true);
    let packs: Vec<_> = std::fs::read_dir(pristine.join("packs"))
        .expect("packs")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "pack"))
        .collect();
    assert!(packs.len() >= 2, "several packs, some sealed");
    for pack in packs {
        let length = std::fs::metadata(&pack).expect("metadata").len() as usize;
        for offset in (0..length).step_by((length / 40).max(1)) {
            let copy = root.path().join(format!("copy-{offset}"));
            copy_store_dir(&pristine, &copy);
            let target = copy.join("packs").join(pack.file_name().expect("name"));
            let mut bytes = std::fs::read(&target).expect("read");
            bytes[offset] ^= 0x5a;
            std::fs::write(&target, bytes).expect("write");
            let storage: Arc<dyn Storage> = Arc::new(LocalStorage::open(&copy).expect("open"));
            check(
                storage,
                true,
                &expected,
                false,
                &format!("{} byte {offset} (mmap)", pack.display()),
            );
            std::fs::remove_dir_all(&copy).expect("cleanup");
        }
    }
}
