//! Blocks a bulk load stores (CLI backup, NBD source) keep no SHA-256: the
//! record holds 32 zero bytes (DESIGN.md §4.3) and whatever needs the EBS
//! checksum computes it from the checked data and remembers it.
//! GetSnapshotBlock then answers exactly what EBS would, export and import
//! round-trip, verify is clean, and a pending snapshot recovered from its
//! journal (masked, when encrypted) completes against the LINEAR aggregate
//! of its blocks. Blocks an EBS client put keep the checksum it sent.

use blocksnap::api::{CompleteSnapshotRequest, Ebs, GetSnapshotBlockRequest, StartSnapshotRequest};
use blocksnap::archive::{
    self, Bucket, ExportOptions, ExportOutcome, ImportOptions, ImportOutcome,
};
use blocksnap::crypto::KeyProvider;
use blocksnap::engine::{NewSnapshot, RequestedEncryption, VerifyOptions};
use blocksnap::format::pack::RecordKind;
use blocksnap::ids::{BlockIndex, Sha256Digest, SnapshotId, BLOCK_SIZE};
use blocksnap::keys::{KdfParams, LocalKeyProvider, Passphrase};
use blocksnap::testing::{
    block, checksum, copy_store_dir, linear_checksum, list_all_blocks, memory_engine, pack_records,
    put_request,
};
use blocksnap::{Engine, EngineConfig};
use sha2::Digest;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

static NEVER: AtomicBool = AtomicBool::new(false);

fn no_progress(_: u64) {}

/// Bytes no compressor shrinks (xorshift), so one block is stored raw.
fn incompressible(seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..BLOCK_SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// What a bulk load writes: VM-like blocks, an incompressible one and a
/// zero block, by index.
fn bulk_content() -> Vec<(u32, Vec<u8>)> {
    let mut content: Vec<(u32, Vec<u8>)> = (1..=5).map(|seed| (seed as u32, block(seed))).collect();
    content.push((7, incompressible(99)));
    content.push((9, vec![0; BLOCK_SIZE]));
    content
}

fn bulk_load(engine: &Engine, new: NewSnapshot, content: &[(u32, Vec<u8>)]) -> SnapshotId {
    let writer = engine.writer(new).expect("writer");
    for (index, data) in content {
        writer.put_block(BlockIndex(*index), data).expect("put");
    }
    let snapshot = writer.snapshot_id();
    writer.complete().expect("complete");
    snapshot
}

/// Reads every listed block of `snapshot` through GetSnapshotBlock and
/// checks data and checksum against `content`.
fn assert_reads_exactly(engine: &Engine, snapshot: &str, content: &[(u32, Vec<u8>)]) {
    let listed = list_all_blocks(engine, snapshot).expect("list");
    assert_eq!(listed.len(), content.len(), "{snapshot}: listed blocks");
    for (entry, (index, data)) in listed.iter().zip(content) {
        assert_eq!(entry.block_index as u32, *index);
        let response = Ebs::new(engine)
            .get_snapshot_block(GetSnapshotBlockRequest {
                snapshot_id: snapshot.to_string(),
                block_index: entry.block_index,
                block_token: entry.block_token.clone(),
            })
            .expect("get");
        assert_eq!(&response.block_data[..], &data[..], "block {index}");
        assert_eq!(
            response.checksum,
            checksum(data),
            "checksum of block {index}"
        );
        assert_eq!(response.checksum_algorithm, "SHA256");
    }
}

#[test]
fn bulk_loaded_blocks_keep_no_checksum_and_reads_compute_exactly_ebs_checksum() {
    let (engine, storage, _clock) = memory_engine(EngineConfig::default());
    let content = bulk_content();
    let snapshot = bulk_load(&engine, NewSnapshot::new(1), &content).to_string();
    let block_records: Vec<_> = pack_records(&storage)
        .into_iter()
        .filter(|(_, _, header)| header.kind == RecordKind::Block)
        .collect();
    // Six stored blocks (the zero block never is), none with a checksum.
    assert_eq!(block_records.len(), 6);
    for (pack, offset, header) in &block_records {
        assert_eq!(header.sha256, Sha256Digest::NOT_KEPT, "{pack} at {offset}");
    }
    // Twice: computed, then remembered; the answer is the same.
    assert_reads_exactly(&engine, &snapshot, &content);
    assert_reads_exactly(&engine, &snapshot, &content);

    // Blocks an EBS client puts keep the checksum it sent.
    let started = Ebs::new(&engine)
        .start_snapshot(StartSnapshotRequest {
            volume_size: 1,
            ..StartSnapshotRequest::default()
        })
        .expect("start");
    let put = block(40);
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&started.snapshot_id, 0, put.clone()))
        .expect("put");
    Ebs::new(&engine)
        .complete_snapshot(CompleteSnapshotRequest {
            snapshot_id: started.snapshot_id.clone(),
            changed_blocks_count: 1,
            ..CompleteSnapshotRequest::default()
        })
        .expect("complete");
    let kept: Vec<Sha256Digest> = pack_records(&storage)
        .into_iter()
        .filter(|(_, _, header)| {
            header.kind == RecordKind::Block && header.sha256 != Sha256Digest::NOT_KEPT
        })
        .map(|(_, _, header)| header.sha256)
        .collect();
    assert_eq!(kept, vec![Sha256Digest(sha2::Sha256::digest(&put).into())]);
    assert_reads_exactly(&engine, &started.snapshot_id, &[(0, put)]);

    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_bulk_loaded_snapshot_exports_and_imports_with_exact_checksums() {
    let (engine, _storage, _clock) = memory_engine(EngineConfig::default());
    let content = bulk_content();
    let parent = bulk_load(&engine, NewSnapshot::new(1), &content);
    let mut changed = content.clone();
    changed[1].1 = block(77);
    let child = bulk_load(
        &engine,
        NewSnapshot {
            parent: Some(parent),
            ..NewSnapshot::new(1)
        },
        &changed[1..2],
    );
    let out = tempfile::tempdir().expect("tempdir");
    let bucket = Bucket::Directory(out.path().to_path_buf());
    let export = |snapshot: SnapshotId, base: Option<SnapshotId>| {
        let outcome = archive::export(
            &engine,
            snapshot,
            &bucket,
            &ExportOptions {
                base,
                ..ExportOptions::default()
            },
            &no_progress,
            &NEVER,
        )
        .expect("export");
        match outcome {
            ExportOutcome::Completed(report) => report.key,
            ExportOutcome::Interrupted => panic!("not interrupted"),
        }
    };
    let full = export(parent, None);
    let delta = export(child, Some(parent));

    // Into a fresh store: the archive's block lists carry the SHA-256s the
    // export computed, and the import checks every block against them.
    let (target, _target_storage, _clock) = memory_engine(EngineConfig::default());
    let import = |key: &str, parent: Option<SnapshotId>| {
        let options = ImportOptions {
            parent,
            ..ImportOptions::default()
        };
        match archive::import(&target, &bucket, key, &options, &no_progress, &NEVER) {
            Ok(ImportOutcome::Completed(report)) => report.snapshot_id,
            other => panic!("import of {key}: {other:?}"),
        }
    };
    let imported_parent = import(&full, None);
    let imported_child = import(&delta, Some(imported_parent)).to_string();
    let imported_parent = imported_parent.to_string();
    assert_reads_exactly(&target, &imported_parent, &content);
    let mut child_content = content.clone();
    child_content[1] = changed[1].clone();
    assert_reads_exactly(&target, &imported_child, &child_content);
}

fn quick_provider(dir: &std::path::Path) -> Arc<dyn KeyProvider> {
    let passphrase = Passphrase::new("checksum test").expect("passphrase");
    let kdf = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    Arc::new(LocalKeyProvider::create(&dir.join("keys"), &passphrase, kdf).expect("key file"))
}

#[test]
fn a_recovered_bulk_load_completes_against_the_linear_aggregate_of_its_blocks() {
    for encrypted in [false, true] {
        let keys = tempfile::tempdir().expect("tempdir");
        let config = EngineConfig {
            key_provider: encrypted.then(|| quick_provider(keys.path())),
            ..EngineConfig::default()
        };
        let (first, copied) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let engine = Engine::open_with(
            Engine::local_storage(first.path()).expect("storage"),
            config.clone(),
        )
        .expect("open");
        let content = bulk_content();
        let writer = engine
            .writer(NewSnapshot {
                encryption: if encrypted {
                    RequestedEncryption::DefaultKey
                } else {
                    RequestedEncryption::None
                },
                ..NewSnapshot::new(1)
            })
            .expect("writer");
        for (index, data) in &content {
            writer.put_block(BlockIndex(*index), data).expect("put");
        }
        engine.flush().expect("flush");
        // What a crash would leave: the journal and packs as they are now.
        copy_store_dir(first.path(), copied.path());
        let snapshot = writer.snapshot_id().to_string();
        writer.cancel().expect("cancel");
        drop(engine);

        let recovered = Engine::open_with(
            Engine::local_storage(copied.path()).expect("storage"),
            config,
        )
        .expect("reopen");
        let wrong = Ebs::new(&recovered).complete_snapshot(CompleteSnapshotRequest {
            snapshot_id: snapshot.clone(),
            changed_blocks_count: content.len() as i32,
            checksum: Some(linear_checksum(
                content.iter().skip(1).map(|(_, data)| &data[..]),
            )),
            checksum_algorithm: Some("SHA256".into()),
            checksum_aggregation_method: Some("LINEAR".into()),
        });
        assert!(
            wrong.is_err(),
            "encrypted {encrypted}: a wrong aggregate completed"
        );
        Ebs::new(&recovered)
            .complete_snapshot(CompleteSnapshotRequest {
                snapshot_id: snapshot.clone(),
                changed_blocks_count: content.len() as i32,
                checksum: Some(linear_checksum(content.iter().map(|(_, data)| &data[..]))),
                checksum_algorithm: Some("SHA256".into()),
                checksum_aggregation_method: Some("LINEAR".into()),
            })
            .unwrap_or_else(|error| panic!("encrypted {encrypted}: {error}"));
        assert_reads_exactly(&recovered, &snapshot, &content);
        let report = recovered.verify(VerifyOptions::default()).expect("verify");
        assert!(report.is_clean(), "encrypted {encrypted}: {report:?}");
    }
}
