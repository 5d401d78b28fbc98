//! Every input a fuzzing campaign found (`fuzz/regressions/<target>/`),
//! and every seed of the committed corpora (`fuzz/corpus/<target>/`),
//! replayed through the same checks the fuzz targets run
//! (`blocksnap::testing::fuzz`). `write_seed_corpora` (ignored) writes the
//! seeds that need the real thing to make: signed headers, an archive, a
//! key file.

use blocksnap::testing::fuzz;
use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

/// The targets whose entry points take raw bytes, by directory name.
const TARGETS: [(&str, Check); 10] = [
    ("http_request", fuzz::http_request),
    ("authorization", fuzz::authorization),
    ("start_snapshot_body", fuzz::start_snapshot_body),
    ("archive_manifest", fuzz::archive_manifest),
    ("block_list", fuzz::block_list),
    ("archive", fuzz::archive),
    ("changed_blocks", fuzz::changed_blocks),
    ("credentials", fuzz::credentials),
    ("key_file", fuzz::key_file),
    ("nbd_session", fuzz::nbd_session),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_regression_passes_its_checks() {
    let mut replayed = 0;
    for (target, check) in TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(target));
        assert!(!seeds.is_empty(), "no seed corpus for {target}");
        for input in seeds
            .into_iter()
            .chain(files(&fuzz_dir().join("regressions").join(target)))
        {
            let bytes = std::fs::read(&input).expect("read input");
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(outcome.is_ok(), "{} fails its checks", input.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 15, "only {replayed} inputs");
}

/// Writes the seeds (run with `--ignored` when a format or the wire
/// changes; the files are committed).
#[test]
#[ignore = "writes fuzz/corpus; run when the seeds need remaking"]
fn write_seed_corpora() {
    let corpus = fuzz_dir().join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("seed");
    };
    // Requests as the SDKs send them (bodies short: the target's inputs
    // are small; the length checks are what a short block meets).
    for (name, request) in [
        (
            "start",
            "POST /snapshots\ncontent-type: application/json\n\n{\"VolumeSize\": 1, \"Tags\": [{\"Key\": \"k\", \"Value\": \"v\"}], \"Description\": \"d\", \"Timeout\": 60, \"ClientToken\": \"t\"}",
        ),
        (
            "put",
            "PUT /snapshots/snap-0123456789abcdef/blocks/0\nx-amz-Data-Length: 524288\nx-amz-Checksum: 6Jsm3Dda9eUcGEo3Eg1DbJ2BPBHGnnQtU1XGk3fBgWg=\nx-amz-Checksum-Algorithm: SHA256\nx-amz-Progress: 50\n\nblock",
        ),
        (
            "complete",
            "POST /snapshots/completion/snap-0123456789abcdef\nx-amz-ChangedBlocksCount: 1\nx-amz-Checksum: 6Jsm3Dda9eUcGEo3Eg1DbJ2BPBHGnnQtU1XGk3fBgWg=\nx-amz-Checksum-Algorithm: SHA256\nx-amz-Checksum-Aggregation-Method: LINEAR\n\n",
        ),
        (
            "list",
            "GET /snapshots/snap-0123456789abcdef/blocks?maxResults=100&startingBlockIndex=0&pageToken=AQIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n\n",
        ),
        (
            "changed",
            "GET /snapshots/snap-0123456789abcdef/changedblocks?firstSnapshotId=snap-0123456789abcdee&maxResults=100\n\n",
        ),
        (
            "ec2-describe",
            "POST /\ncontent-type: application/x-www-form-urlencoded\n\nAction=DescribeSnapshots&Version=2016-11-15&Owner.1=self&Filter.1.Name=tag%3AName&Filter.1.Value.1=web*&Filter.2.Name=status&Filter.2.Value.1=completed&MaxResults=5&NextToken=AQQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        (
            "ec2-tags",
            "POST /\ncontent-type: application/x-www-form-urlencoded\n\nAction=CreateTags&Version=2016-11-15&ResourceId.1=snap-0123456789abcdef&Tag.1.Key=Name&Tag.1.Value=web+1&Tag.2.Key=env",
        ),
        (
            "ec2-copy",
            "POST /\ncontent-type: application/x-www-form-urlencoded\n\nAction=CopySnapshot&Version=2016-11-15&SourceSnapshotId=snap-0123456789abcdef&SourceRegion=us-east-1&Description=copy&TagSpecification.1.ResourceType=snapshot&TagSpecification.1.Tag.1.Key=k&TagSpecification.1.Tag.1.Value=v&DryRun=true",
        ),
        (
            "get",
            "GET /snapshots/snap-0123456789abcdef/blocks/3?blockToken=AQEAAAAAAAAAAAMAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D\n\n",
        ),
        ("health", "GET /health\n\n"),
        ("metrics", "GET /metrics\n\n"),
        ("unknown", "DELETE /snapshots/x\n\n"),
    ] {
        write("http_request", name, request.as_bytes());
    }
    for (name, body) in [
        ("minimal", r#"{"VolumeSize": 1}"#),
        (
            "full",
            r#"{"VolumeSize": 16, "ParentSnapshotId": "snap-0123456789abcdef", "Tags": [{"Key": "a", "Value": ""}], "Timeout": 4320, "ClientToken": "550e8400-e29b-41d4-a716-446655440000", "Encrypted": true, "KmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/k", "Description": "nightly"}"#,
        ),
        ("wrong types", r#"{"VolumeSize": "1", "Tags": {}}"#),
    ] {
        write("start_snapshot_body", name, body.as_bytes());
    }
    // NBD sessions as clients open them (the default export is the
    // target's only snapshot).
    for (name, session) in nbd_sessions() {
        write("nbd_session", name, &session);
    }
    write(
        "changed_blocks",
        "ranges",
        b"\x00\x04# changed since the parent\n0\n3-7\n 12 \n9 # again\n",
    );
    write(
        "credentials",
        "two-keys",
        b"# keys\nAKID1 secret-one 111111111111\nAKID2 secret-two 222222222222 # trailing\n",
    );
    // Signed headers at the instant the target checks them.
    let signed_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_169_600);
    let headers = signed_headers(signed_at);
    write("authorization", "signed", headers.as_bytes());
    // A real archive, its manifest and block list, and a real key file.
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = blocksnap::Engine::open(dir.path().join("store")).expect("open");
    let written = blocksnap::testing::write_lineage(
        &engine,
        &blocksnap::api::StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        },
        &[&[(0, 0), (2, 3)]],
    );
    let bucket = dir.path().join("bucket");
    std::fs::create_dir(&bucket).expect("bucket");
    let exported = blocksnap::archive::export(
        &engine,
        blocksnap::testing::snapshot_id(&written[0].0),
        &blocksnap::archive::Bucket::Directory(bucket.clone()),
        &blocksnap::archive::ExportOptions::default(),
        &|_| {},
        &std::sync::atomic::AtomicBool::new(false),
    )
    .expect("export");
    let blocksnap::archive::ExportOutcome::Completed(report) = exported else {
        panic!("interrupted");
    };
    let archive = std::fs::read(bucket.join(&report.key)).expect("archive");
    write("archive", "two-blocks.zip", &archive);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&archive)).expect("zip");
    for (target, entry) in [
        ("archive_manifest", "manifest.json"),
        ("block_list", "block-list.tsv"),
    ] {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(entry).expect("entry"), &mut bytes)
            .expect("read entry");
        write(target, entry, &bytes);
    }
    let keys = dir.path().join("keys");
    blocksnap::keys::LocalKeyProvider::create(
        &keys,
        &blocksnap::keys::Passphrase::new("fuzz passphrase").expect("passphrase"),
        blocksnap::keys::KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
    )
    .expect("key file");
    let key_file = std::fs::read(&keys).expect("keys");
    write("key_file", "keys", &key_file);
    write_format_seeds(&write, &key_file);
}

/// Seeds of the format decoders' targets, from their encoders.
fn write_format_seeds(write: &dyn Fn(&str, &str, &[u8]), key_file: &[u8]) {
    use blocksnap::format::catalog::{CatalogRecord, SseKind, StartedRecord};
    use blocksnap::format::index::{encode_index, IndexEntry};
    use blocksnap::format::journal::{JournalRecord, JOURNAL_FLAG_PAIRED, JOURNAL_FLAG_TIMED};
    use blocksnap::format::keyring::{encode_keyring, KeyringEntry};
    use blocksnap::format::pack::{
        encode_record_header, encode_unsealed_header, Codec, RecordKind,
    };
    use blocksnap::ids::{BlockIndex, ChunkId, Sha256Digest, SnapshotId};
    let started = StartedRecord {
        snapshot: SnapshotId(0x0123_4567_89ab_cdef),
        parent: Some(SnapshotId(7)),
        lineage: SnapshotId(7),
        volume_size_gib: 8,
        timeout_minutes: 60,
        start_millis: 1_796_169_600_000,
        sse: SseKind::None,
        owner: "000000000000".into(),
        client_token: Some("token".into()),
        description: Some("nightly".into()),
        kms_key_arn: Some("dedup/111111111111".into()),
        tags: vec![("host".into(), "vm1".into())],
        writer: Some([0x5a; 16]),
    };
    let snapshot = started.snapshot;
    for (name, record) in [
        ("started", CatalogRecord::Started(started)),
        (
            "completed",
            CatalogRecord::Completed {
                snapshot,
                completed_millis: 1,
                root: Some(ChunkId([3; 32])),
                changed_blocks: 2,
            },
        ),
        (
            "failed",
            CatalogRecord::Failed {
                snapshot,
                at_millis: 2,
                reason: "Cancelled by the caller.".into(),
            },
        ),
        (
            "deleted",
            CatalogRecord::Deleted {
                snapshot,
                at_millis: 3,
            },
        ),
    ] {
        write(
            "catalog_record",
            name,
            &record.encode_frame().expect("encodes"),
        );
    }
    write(
        "compaction_marker",
        "three-sources",
        &blocksnap::format::compaction::encode_marker(9, &[1, 2, 5]).expect("encodes"),
    );
    let record = JournalRecord {
        index: BlockIndex(5),
        chunk_id: ChunkId([4; 32]),
        sha256: Sha256Digest([5; 32]),
        put_millis: Some(1_796_169_600_000),
    };
    write("journal_record", "timed", &record.encode());
    write(
        "journal_record",
        "paired",
        &record.encode_entry(JOURNAL_FLAG_TIMED | JOURNAL_FLAG_PAIRED),
    );
    write(
        "keyring",
        "two-domains",
        &encode_keyring(&[
            KeyringEntry {
                domain: 1,
                suite: 1,
                created_millis: 1,
                key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
                wrapped: vec![7; 65],
            },
            KeyringEntry {
                domain: 0x8000,
                suite: 0,
                created_millis: 2,
                key_arn: "dedup/111111111111".into(),
                wrapped: vec![8; 32],
            },
        ])
        .expect("encodes"),
    );
    write("keyring", "key-file", key_file);
    let mut node = blocksnap::format::node::Node::empty(0);
    node.slots[0] = Some(ChunkId([1; 32]));
    node.slots[63] = Some(ChunkId([2; 32]));
    write("map_node", "leaf", &node.encode());
    write(
        "pack_index",
        "two-entries",
        &encode_index(
            3,
            &[
                IndexEntry {
                    id_prefix: 1,
                    offset: 32,
                    record_len: 100,
                },
                IndexEntry {
                    id_prefix: 2,
                    offset: 132,
                    record_len: 90,
                },
            ],
        )
        .expect("encodes"),
    );
    let payload = b"raw payload bytes";
    let id = ChunkId(*blake3::hash(payload).as_bytes());
    let sha = Sha256Digest([6; 32]);
    for (name, header) in [
        (
            "plain",
            encode_record_header(RecordKind::Block, Codec::Raw, 17, &id, &sha, payload)
                .expect("encodes"),
        ),
        (
            "dedup-domain",
            encode_unsealed_header(
                RecordKind::Block,
                Codec::Raw,
                0x8001,
                17,
                &id,
                &sha,
                payload,
            )
            .expect("encodes"),
        ),
    ] {
        write("pack_record", name, &[&header[..], payload].concat());
    }
    write(
        "store_header",
        "header",
        &blocksnap::format::store::StoreHeader {
            store_id: [1; 16],
            token_secret: [2; 32],
            created_millis: 3,
        }
        .encode(),
    );
    let head = blocksnap::format::head::Head {
        generation: 4,
        writer_epoch: 2,
        writer_id: [7; 16],
        files: vec![blocksnap::format::head::HeadFile {
            name: "catalog/00000001.log".into(),
            extents: vec![blocksnap::format::head::Extent {
                object: "log/0000000000000002-0000000000000001".into(),
                len: 40,
                crc32: 9,
            }],
        }],
        commits: vec![blocksnap::format::head::HeadCommit {
            generation: 4,
            writer_epoch: 2,
            added: vec!["packs/00000001.pack".into()],
        }],
        condemned: vec![blocksnap::format::head::Condemned {
            object: "packs/00000000.pack".into(),
            etag: "\"0a1b\"".into(),
            condemned_millis: 1_796_169_600_000,
        }],
        writers: vec![blocksnap::format::head::RegisteredWriter {
            id: [7; 16],
            epoch: 2,
        }],
        next_pack: 64,
    };
    write("bucket_head", "head", &head.encode().expect("encodes"));
    let token = blocksnap::format::token::TokenBody::Page {
        kind: 3,
        snapshot: 9,
        other: 8,
        next_index: 100,
        expiry_secs: 1_796_169_600,
    };
    write("token", "page", &[token.encode(), vec![0; 16]].concat());
}

/// The header lines of a StartSnapshot signed by the target's key at `at`.
fn signed_headers(at: std::time::SystemTime) -> String {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let headers = [("host", "localhost"), ("content-type", "application/json")];
    let identity =
        aws_credential_types::Credentials::new("AKIDFUZZ", "fuzz-secret", None, None, "seed")
            .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("ebs")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let request = SignableRequest::new(
        "POST",
        "/snapshots",
        headers.iter().copied(),
        SignableBody::Bytes(b"{}"),
    )
    .expect("signable");
    let (instructions, _) = sign(request, &params).expect("sign").into_parts();
    let mut lines = String::new();
    for (name, value) in headers.iter().copied().chain(instructions.headers()) {
        lines.push_str(&format!("{name}: {value}\n"));
    }
    lines
}

/// Client byte streams for the `nbd_session` seeds: libnbd's usual
/// negotiation then reads, block status, a write and a disconnect; and the
/// old `NBD_OPT_EXPORT_NAME` way with simple replies.
fn nbd_sessions() -> Vec<(&'static str, Vec<u8>)> {
    use blocksnap::format::nbd as wire;
    let option = |out: &mut Vec<u8>, option: u32, data: &[u8]| {
        let header = wire::OptionHeader {
            option,
            length: data.len() as u32,
        };
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(data);
    };
    let request = |out: &mut Vec<u8>, command: u16, flags: u16, offset: u64, length: u32| {
        let request = wire::Request {
            flags,
            command,
            cookie: out.len() as u64,
            offset,
            length,
        };
        out.extend_from_slice(&request.encode());
    };
    let mut modern =
        wire::encode_client_flags(wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES).to_vec();
    option(&mut modern, wire::OPT_LIST, &[]);
    option(&mut modern, wire::OPT_STRUCTURED_REPLY, &[]);
    let contexts = wire::MetaContextRequest {
        export: String::new(),
        queries: vec![wire::CONTEXT_ALLOCATION.into()],
    };
    option(
        &mut modern,
        wire::OPT_LIST_META_CONTEXT,
        &contexts.encode().expect("encode"),
    );
    option(
        &mut modern,
        wire::OPT_SET_META_CONTEXT,
        &contexts.encode().expect("encode"),
    );
    let go = wire::ExportRequest {
        name: String::new(),
        info_requests: vec![
            wire::INFO_BLOCK_SIZE,
            wire::INFO_NAME,
            wire::INFO_DESCRIPTION,
        ],
    };
    option(&mut modern, wire::OPT_INFO, &go.encode().expect("encode"));
    option(&mut modern, wire::OPT_GO, &go.encode().expect("encode"));
    request(&mut modern, wire::CMD_READ, 0, 524_280, 4096);
    request(
        &mut modern,
        wire::CMD_READ,
        wire::CMD_FLAG_DF,
        1_048_000,
        2048,
    );
    request(&mut modern, wire::CMD_BLOCK_STATUS, 0, 0, 4 << 20);
    request(
        &mut modern,
        wire::CMD_BLOCK_STATUS,
        wire::CMD_FLAG_REQ_ONE,
        100,
        1 << 20,
    );
    request(&mut modern, wire::CMD_CACHE, 0, 0, 4096);
    request(&mut modern, wire::CMD_WRITE, 0, 0, 16);
    modern.extend_from_slice(&[0xab; 16]);
    request(&mut modern, wire::CMD_FLUSH, 0, 0, 0);
    request(&mut modern, wire::CMD_DISC, 0, 0, 0);
    let mut old = wire::encode_client_flags(wire::FLAG_C_FIXED_NEWSTYLE).to_vec();
    option(&mut old, 99, b"unknown");
    option(&mut old, wire::OPT_EXPORT_NAME, b"");
    request(&mut old, wire::CMD_READ, 0, 0, 8192);
    request(&mut old, wire::CMD_TRIM, 0, 0, 8192);
    request(&mut old, 42, 0, 0, 0);
    vec![("negotiated", modern), ("export-name", old)]
}
