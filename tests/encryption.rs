//! Encryption at rest: nothing in an encrypted store's files reveals block
//! contents; tampering and misplaced records are detected on read and by
//! verify; keys are dedup domains; KEK rotation only rewraps; StartSnapshot's
//! `Encrypted`/`KmsKeyArn` rules; restart of encrypted pending snapshots.

use blocksnap::api::*;
use blocksnap::chunkstore::ChunkStoreConfig;
use blocksnap::codec;
use blocksnap::crypto::KeyProvider;
use blocksnap::engine::{GcOptions, VerifyOptions};
use blocksnap::format::crc32;
use blocksnap::format::pack::{decode_record_header, RecordKind, RECORD_HEADER_SIZE};
use blocksnap::keys::{KdfParams, LocalKeyProvider, Passphrase, DEFAULT_LOCAL_KEY_ARN};
use blocksnap::storage::{MemoryStorage, Storage};
use blocksnap::testing::{
    block, complete_request, expect_ebs, holds_exactly, linear_checksum, pack_records, put_request,
    write_lineage,
};
use blocksnap::{Engine, EngineConfig, Error};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const OTHER_KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/backup-two";

/// Small argon2 costs: still argon2id, just quick.
fn quick_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    }
}

fn passphrase() -> Passphrase {
    Passphrase::new("test passphrase").expect("passphrase")
}

/// A key file with the default key and [`OTHER_KEY`].
fn provider(dir: &Path) -> Arc<LocalKeyProvider> {
    let provider =
        LocalKeyProvider::create(&dir.join("keys"), &passphrase(), quick_kdf()).expect("key file");
    provider.create_key(OTHER_KEY).expect("second key");
    Arc::new(provider)
}

fn config(provider: Option<Arc<LocalKeyProvider>>) -> EngineConfig {
    EngineConfig {
        key_provider: provider.map(|provider| provider as Arc<dyn KeyProvider>),
        chunk_store: ChunkStoreConfig {
            pack_target_size: 256 << 10,
            ..ChunkStoreConfig::default()
        },
        node_cache_nodes: 0,
        ..EngineConfig::default()
    }
}

fn encrypted(kms_key_arn: Option<&str>) -> StartSnapshotRequest {
    StartSnapshotRequest {
        volume_size: 1,
        encrypted: Some(true),
        kms_key_arn: kms_key_arn.map(str::to_string),
        ..Default::default()
    }
}

/// Encrypted under `kms_key_arn` by naming it alone, so children may name
/// it too.
fn under_key(kms_key_arn: &str) -> StartSnapshotRequest {
    StartSnapshotRequest {
        volume_size: 1,
        kms_key_arn: Some(kms_key_arn.to_string()),
        ..Default::default()
    }
}

fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_dir() {
            out.extend(files_under(&entry.path()));
        } else {
            let bytes = std::fs::read(entry.path()).expect("read");
            out.push((entry.path().display().to_string(), bytes));
        }
    }
    out
}

/// Byte strings that would betray a block: a window of its bytes, its
/// SHA-256, its plain blake3 id, and a window of its zstd frame.
fn needles(data: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut found = vec![
        ("raw window", data[4096..4160].to_vec()),
        ("sha256", codec::sha256(data).0.to_vec()),
        ("plain id", codec::chunk_id(data).0.to_vec()),
    ];
    if let Some(frame) = codec::compress(data, ChunkStoreConfig::default().compression) {
        found.push(("zstd window", frame[64..128].to_vec()));
    }
    found
}

fn occurrences(files: &[(String, Vec<u8>)], needle: &[u8]) -> Vec<String> {
    files
        .iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|window| window == needle))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Writes seeds 1..=3 (structured, text, random) completed, and seeds 4..=6
/// into a snapshot left pending, under `request`.
fn write_known_blocks(engine: &Engine, request: StartSnapshotRequest) {
    write_lineage(engine, &request, &[&[(0, 1), (1, 2), (2, 3)]]);
    let pending = Ebs::new(engine)
        .start_snapshot(request)
        .expect("start")
        .snapshot_id;
    for seed in 4..=6u64 {
        Ebs::new(engine)
            .put_snapshot_block(put_request(&pending, seed as i32, block(seed)))
            .expect("put");
    }
    engine.flush().expect("flush");
}

#[test]
fn a_known_plaintext_appears_nowhere_in_an_encrypted_store() {
    let keys = tempfile::tempdir().expect("tempdir");
    let encrypted_dir = tempfile::tempdir().expect("tempdir");
    let plain_dir = tempfile::tempdir().expect("tempdir");
    {
        let engine = Engine::open_with(
            Engine::local_storage(encrypted_dir.path()).expect("storage"),
            config(Some(provider(keys.path()))),
        )
        .expect("open");
        write_known_blocks(&engine, encrypted(None));
        let plain = Engine::open_with(
            Engine::local_storage(plain_dir.path()).expect("storage"),
            config(None),
        )
        .expect("open");
        write_known_blocks(
            &plain,
            StartSnapshotRequest {
                volume_size: 1,
                ..Default::default()
            },
        );
    }
    let encrypted_files = files_under(encrypted_dir.path());
    let plain_files = files_under(plain_dir.path());
    assert!(
        encrypted_files
            .iter()
            .any(|(name, _)| name.ends_with(".journal")),
        "the pending snapshot's journal is part of the scan"
    );
    let mut kinds_found_in_plain = std::collections::BTreeSet::new();
    for seed in 1..=6u64 {
        for (what, needle) in needles(&block(seed)) {
            let betrayed = occurrences(&encrypted_files, &needle);
            assert!(
                betrayed.is_empty(),
                "{what} of block {seed} appears in {betrayed:?}"
            );
            if !occurrences(&plain_files, &needle).is_empty() {
                kinds_found_in_plain.insert(what);
            }
        }
    }
    // The search itself works: the same needles are found in a plain store.
    assert_eq!(
        kinds_found_in_plain.into_iter().collect::<Vec<_>>(),
        vec!["plain id", "raw window", "sha256", "zstd window"]
    );
}

/// Every record of the store: (pack path, offset, kind, domain, length).
fn records(storage: &MemoryStorage) -> Vec<(String, usize, RecordKind, u16, usize)> {
    pack_records(storage)
        .into_iter()
        .map(|(path, offset, header)| {
            (
                path,
                offset,
                header.kind,
                header.domain,
                header.record_len(),
            )
        })
        .collect()
}

/// An engine on fresh memory storage, with a key file in `keys`.
fn memory_engine_with_keys(keys: &Path) -> (MemoryStorage, Engine) {
    let storage = MemoryStorage::new();
    let engine =
        Engine::open_with(Arc::new(storage.clone()), config(Some(provider(keys)))).expect("open");
    (storage, engine)
}

/// Replaces bytes of a stored file and then makes the record's crc right
/// again, so only the authentication tag (or a structural check) can
/// notice.
fn rewrite_record(
    storage: &MemoryStorage,
    path: &str,
    offset: usize,
    edit: impl FnOnce(&mut [u8]),
) {
    let bytes = storage.read_all(path).expect("read");
    let header = decode_record_header(&bytes[offset..offset + RECORD_HEADER_SIZE]).expect("header");
    let mut record = bytes[offset..offset + header.record_len()].to_vec();
    edit(&mut record);
    let crc = crc32(&[&record[4..]]);
    record[..4].copy_from_slice(&crc.to_le_bytes());
    for (position, (old, new)) in bytes[offset..].iter().zip(&record).enumerate() {
        if old != new {
            storage
                .corrupt(path, offset + position, old ^ new)
                .expect("write");
        }
    }
}

fn restore(storage: &MemoryStorage, path: &str, original: &[u8]) {
    let now = storage.read_all(path).expect("read");
    for (position, (old, new)) in now.iter().zip(original).enumerate() {
        if old != new {
            storage.corrupt(path, position, old ^ new).expect("restore");
        }
    }
}

#[test]
fn tampering_with_any_byte_or_moving_a_record_is_detected_on_read_and_by_verify() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (storage, engine) = memory_engine_with_keys(keys.path());
    // Seeds 2 and 5 are random (stored raw, equal lengths); seed 1 compresses.
    let lineage = write_lineage(&engine, &encrypted(None), &[&[(0, 1), (1, 2), (2, 5)]]);
    let (snapshot, content) = &lineage[0];
    assert!(holds_exactly(&engine, snapshot, content).expect("reads"));
    let blocks: Vec<_> = records(&storage)
        .into_iter()
        .filter(|(_, _, kind, _, _)| *kind == RecordKind::Block)
        .collect();
    assert_eq!(blocks.len(), 3);
    assert!(blocks.iter().all(|(_, _, _, domain, _)| *domain == 1));
    let detected = |what: &str| {
        match holds_exactly(&engine, snapshot, content) {
            Err(Error::Corrupted { .. }) => {}
            other => panic!("{what}: a read gave {other:?}, not a corruption error"),
        }
        let report = engine.verify(VerifyOptions::default()).expect("verify");
        assert!(!report.damaged.is_empty(), "{what}: verify found nothing");
    };

    let compressed = blocks
        .iter()
        .find(|(_, _, _, _, len)| *len < RECORD_HEADER_SIZE + 500_000)
        .expect("the compressed block")
        .clone();
    let (path, offset, _, _, record_len) = compressed;
    let original = storage.read_all(&path).expect("read");
    let positions = (4..RECORD_HEADER_SIZE).chain((RECORD_HEADER_SIZE..record_len).step_by(997));
    for position in positions {
        rewrite_record(&storage, &path, offset, |record| record[position] ^= 0x01);
        detected(&format!("byte {position} flipped, crc fixed"));
        restore(&storage, &path, &original);
    }
    storage
        .corrupt(&path, offset + RECORD_HEADER_SIZE + 7, 0x80)
        .expect("corrupt");
    detected("a flip the crc catches");
    restore(&storage, &path, &original);
    assert!(holds_exactly(&engine, snapshot, content).expect("reads"));

    // Moving a record: block 5's ciphertext and seal under block 2's header.
    let raw: Vec<_> = blocks
        .iter()
        .filter(|(_, _, _, _, len)| *len == RECORD_HEADER_SIZE + 32 + 524_288)
        .cloned()
        .collect();
    assert_eq!(raw.len(), 2, "two incompressible blocks");
    let (from_path, from_offset, ..) = &raw[1];
    let (to_path, to_offset, _, _, len) = &raw[0];
    let source =
        storage.read_all(from_path).expect("read")[*from_offset..*from_offset + len].to_vec();
    let original = storage.read_all(to_path).expect("read");
    rewrite_record(&storage, to_path, *to_offset, |record| {
        record[48..].copy_from_slice(&source[48..]);
    });
    detected("a record moved under another id");
    restore(&storage, to_path, &original);
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn one_key_stores_identical_data_once_two_keys_twice() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_storage, engine) = memory_engine_with_keys(keys.path());
    let chunks = || engine.chunk_stats().chunks;
    let one_block: &[&[(u32, u64)]] = &[&[(3, 7)]];
    let first = write_lineage(&engine, &encrypted(None), one_block);
    let after_first = chunks();
    assert_eq!(after_first, 6, "a block and a node per level");
    let same_key = write_lineage(&engine, &encrypted(Some(DEFAULT_LOCAL_KEY_ARN)), one_block);
    assert_eq!(
        chunks(),
        after_first,
        "same key: stored once, map nodes too"
    );
    let other_key = write_lineage(&engine, &encrypted(Some(OTHER_KEY)), one_block);
    assert_eq!(chunks(), after_first + 6, "another key: stored again");
    let plain = write_lineage(
        &engine,
        &StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        },
        one_block,
    );
    assert_eq!(
        chunks(),
        after_first + 12,
        "plain data shares nothing with either"
    );
    for (id, content) in first
        .iter()
        .chain(&same_key)
        .chain(&other_key)
        .chain(&plain)
    {
        assert!(holds_exactly(&engine, id, content).expect("reads"));
    }

    // Deleting and collecting inside domains keeps the survivors whole.
    for (id, _) in first.iter().chain(&other_key) {
        Ebs::new(&engine)
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: id.clone(),
            })
            .expect("delete");
    }
    engine
        .collect_garbage(GcOptions {
            live_threshold: 1.0,
            include_open_pack: true,
            ..GcOptions::default()
        })
        .expect("collect");
    let audit = engine.audit_references().expect("audit");
    assert!(
        audit.mismatches.is_empty() && audit.damaged.is_none(),
        "{audit:?}"
    );
    assert_eq!(chunks(), 12, "the default key's copy and the plain copy");
    for (id, content) in same_key.iter().chain(&plain) {
        assert!(holds_exactly(&engine, id, content).expect("reads"));
    }
    assert!(engine
        .verify(VerifyOptions::default())
        .expect("verify")
        .is_clean());
}

#[test]
fn after_kek_rotation_and_rewrap_every_snapshot_reads_back() {
    let keys = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    let key_file = keys.path().join("keys");
    let open = |provider: Arc<LocalKeyProvider>| {
        Engine::open_with(
            Engine::local_storage(store.path()).expect("storage"),
            config(Some(provider)),
        )
    };
    let provider = provider(keys.path());
    let (default_lineage, other_lineage) = {
        let engine = open(provider.clone()).expect("open");
        (
            write_lineage(
                &engine,
                &under_key(DEFAULT_LOCAL_KEY_ARN),
                &[&[(0, 1), (5, 2)], &[(5, 3)]],
            ),
            write_lineage(&engine, &encrypted(Some(OTHER_KEY)), &[&[(1, 4)]]),
        )
    };
    let keyring_before = std::fs::read(store.path().join("keyring")).expect("keyring");
    assert_eq!(provider.rotate(DEFAULT_LOCAL_KEY_ARN).expect("rotate"), 2);
    assert_eq!(provider.rotate(OTHER_KEY).expect("rotate"), 2);
    {
        let engine = open(provider.clone()).expect("open");
        assert_eq!(engine.rewrap_data_keys().expect("rewrap"), 2);
    }
    assert_ne!(
        std::fs::read(store.path().join("keyring")).expect("keyring"),
        keyring_before
    );
    assert_eq!(
        provider
            .retire_old_versions(DEFAULT_LOCAL_KEY_ARN)
            .expect("retire"),
        1
    );
    assert_eq!(provider.retire_old_versions(OTHER_KEY).expect("retire"), 1);
    drop(provider);

    // A fresh provider from the key file, a fresh engine: all reads back.
    let reloaded = Arc::new(LocalKeyProvider::open(&key_file, &passphrase()).expect("key file"));
    let engine = open(reloaded).expect("open after rotation");
    for (id, content) in default_lineage.iter().chain(&other_lineage) {
        assert!(holds_exactly(&engine, id, content).expect("reads"));
    }
    // New snapshots under the rotated keys still deduplicate with old data.
    let chunks = engine.chunk_stats().chunks;
    write_lineage(&engine, &encrypted(Some(OTHER_KEY)), &[&[(1, 4)]]);
    assert_eq!(engine.chunk_stats().chunks, chunks);
    assert!(engine
        .verify(VerifyOptions::default())
        .expect("verify")
        .is_clean());
}

#[test]
fn start_snapshot_encryption_rules() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_storage, engine) = memory_engine_with_keys(keys.path());
    let default_key = Ebs::new(&engine)
        .start_snapshot(encrypted(None))
        .expect("start");
    assert_eq!(default_key.sse_type, SseType::SseEbs);
    assert_eq!(
        default_key.kms_key_arn.as_deref(),
        Some(DEFAULT_LOCAL_KEY_ARN)
    );
    let named = Ebs::new(&engine)
        .start_snapshot(encrypted(Some(OTHER_KEY)))
        .expect("start");
    assert_eq!(named.sse_type, SseType::SseKms);
    assert_eq!(named.kms_key_arn.as_deref(), Some(OTHER_KEY));
    let plain = Ebs::new(&engine)
        .start_snapshot(StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        })
        .expect("start");
    assert_eq!(plain.sse_type, SseType::None);
    assert_eq!(plain.kms_key_arn, None);

    expect_ebs(
        Ebs::new(&engine).start_snapshot(encrypted(Some(
            "arn:aws:kms:us-east-1:123456789012:key/not-in-the-key-file",
        ))),
        "ValidationException",
        Some("INVALID_CUSTOMER_KEY"),
    );
    expect_ebs(
        Ebs::new(&engine).start_snapshot(encrypted(Some("alias/aws/ebs"))),
        "ValidationException",
        Some("INVALID_CUSTOMER_KEY"),
    );

    // Children inherit; Encrypted with a parent is refused; another key too.
    let parent = write_lineage(&engine, &encrypted(Some(OTHER_KEY)), &[&[(0, 1)]]);
    let child_of = |parent: &str, kms_key_arn: Option<&str>, encrypted: Option<bool>| {
        Ebs::new(&engine).start_snapshot(StartSnapshotRequest {
            volume_size: 1,
            parent_snapshot_id: Some(parent.to_string()),
            kms_key_arn: kms_key_arn.map(str::to_string),
            encrypted,
            ..Default::default()
        })
    };
    let child = child_of(&parent[0].0, None, None).expect("child");
    assert_eq!(child.sse_type, SseType::SseKms);
    assert_eq!(child.kms_key_arn.as_deref(), Some(OTHER_KEY));
    let same = child_of(&parent[0].0, Some(OTHER_KEY), None).expect("child naming its key");
    assert_eq!(same.kms_key_arn.as_deref(), Some(OTHER_KEY));
    expect_ebs(
        child_of(&parent[0].0, None, Some(true)),
        "ValidationException",
        Some("INVALID_PARAMETER_VALUE"),
    );
    expect_ebs(
        child_of(&parent[0].0, Some(DEFAULT_LOCAL_KEY_ARN), None),
        "ValidationException",
        Some("INVALID_CUSTOMER_KEY"),
    );
    let plain_parent = write_lineage(
        &engine,
        &StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        },
        &[&[(0, 1)]],
    );
    expect_ebs(
        child_of(&plain_parent[0].0, Some(OTHER_KEY), None),
        "ValidationException",
        Some("INVALID_CUSTOMER_KEY"),
    );
    assert_eq!(
        child_of(&plain_parent[0].0, None, None)
            .expect("plain child")
            .sse_type,
        SseType::None
    );

    // An idempotent retry must ask for the same encryption.
    let token = |kms_key_arn: Option<&str>| StartSnapshotRequest {
        client_token: Some("token-1".into()),
        ..encrypted(kms_key_arn)
    };
    let first = Ebs::new(&engine)
        .start_snapshot(token(None))
        .expect("start");
    assert_eq!(
        Ebs::new(&engine)
            .start_snapshot(token(None))
            .expect("retry")
            .snapshot_id,
        first.snapshot_id
    );
    expect_ebs(
        Ebs::new(&engine).start_snapshot(token(Some(OTHER_KEY))),
        "ConflictException",
        None,
    );

    // Without a key provider, encryption is refused at StartSnapshot.
    let (keyless, _, _) = blocksnap::testing::memory_engine(EngineConfig::default());
    expect_ebs(
        Ebs::new(&keyless).start_snapshot(encrypted(None)),
        "ValidationException",
        Some("INVALID_CUSTOMER_KEY"),
    );
}

#[test]
fn a_store_with_encrypted_snapshots_opens_only_with_its_keys() {
    let keys = tempfile::tempdir().expect("tempdir");
    let storage = MemoryStorage::new();
    {
        let engine = Engine::open_with(
            Arc::new(storage.clone()),
            config(Some(provider(keys.path()))),
        )
        .expect("open");
        write_lineage(&engine, &encrypted(None), &[&[(0, 1)]]);
    }
    match Engine::open_with(Arc::new(storage.clone()), config(None)) {
        Err(error @ Error::KeyUnavailable { .. }) => {
            let ebs = ebs_error(&error);
            assert_eq!(
                (ebs.code, ebs.http_status, ebs.reason),
                (
                    "AccessDeniedException",
                    403,
                    Some("DEPENDENCY_ACCESS_DENIED")
                )
            );
        }
        other => panic!("expected KeyUnavailable, got {other:?}"),
    }
    // Another key file has a key of the same name, but not the same KEK.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        Engine::open_with(
            Arc::new(storage.clone()),
            config(Some(provider(elsewhere.path())))
        ),
        Err(Error::KeyUnavailable { .. })
    ));
}

#[test]
fn a_pending_encrypted_snapshot_survives_a_restart_and_completes_with_its_aggregate() {
    let keys = tempfile::tempdir().expect("tempdir");
    let provider = provider(keys.path());
    let storage = MemoryStorage::new();
    let open = || {
        Engine::open_with(Arc::new(storage.clone()), config(Some(provider.clone()))).expect("open")
    };
    let seeds = [(0u32, 3u64), (4, 1), (9, 0), (11, 2)];
    let id = {
        let engine = open();
        let id = Ebs::new(&engine)
            .start_snapshot(encrypted(Some(OTHER_KEY)))
            .expect("start")
            .snapshot_id;
        for (index, seed) in seeds {
            Ebs::new(&engine)
                .put_snapshot_block(put_request(&id, index as i32, block(seed)))
                .expect("put");
        }
        id
    };
    let engine = open();
    let blocks: Vec<Vec<u8>> = seeds.iter().map(|(_, seed)| block(*seed)).collect();
    let wrong = linear_checksum(blocks.iter().rev().map(Vec::as_slice));
    let mut request = complete_request(&id, seeds.len() as i32);
    request.checksum = Some(wrong);
    request.checksum_algorithm = Some("SHA256".into());
    request.checksum_aggregation_method = Some("LINEAR".into());
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(request.clone()),
        "ValidationException",
        Some("INVALID_PARAMETER_VALUE"),
    );
    request.checksum = Some(linear_checksum(blocks.iter().map(Vec::as_slice)));
    Ebs::new(&engine)
        .complete_snapshot(request)
        .expect("complete with the aggregate");
    let content: BTreeMap<u32, u64> = seeds.into_iter().collect();
    assert!(holds_exactly(&engine, &id, &content).expect("reads"));
}
