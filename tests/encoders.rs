//! Encoders fail loudly: an input a format cannot hold (a string longer
//! than its length field, a count over its limit) is a typed error naming
//! the field, never truncated, saturated or zero-filled bytes; and the
//! engine refuses such an input before it writes anything.

use blocksnap::engine::{NewSnapshot, VerifyOptions};
use blocksnap::format::catalog::{CatalogRecord, SseKind, StartedRecord, MAX_BODY_LEN};
use blocksnap::format::compaction::{encode_marker, MAX_MARKER_SOURCES};
use blocksnap::format::keyring::{encode_keyring, KeyringEntry, MAX_KEY_ARN_LEN, MAX_WRAPPED_LEN};
use blocksnap::format::pack::{
    encode_aad, encode_record_header, Codec, RecordKind, MAX_PAYLOAD_LEN,
};
use blocksnap::format::EncodeError;
use blocksnap::ids::{ChunkId, Sha256Digest, SnapshotId};
use blocksnap::storage::Storage;
use blocksnap::Error;

fn started(description: String, tags: Vec<(String, String)>) -> StartedRecord {
    StartedRecord {
        snapshot: SnapshotId(3),
        parent: None,
        lineage: SnapshotId(3),
        volume_size_gib: 1,
        timeout_minutes: 60,
        start_millis: 1,
        sse: SseKind::None,
        owner: "111122223333".into(),
        client_token: None,
        description: Some(description),
        kms_key_arn: None,
        tags,
        writer: None,
    }
}

#[test]
fn each_encoder_refuses_what_its_format_cannot_hold() {
    let long = "d".repeat(usize::from(u16::MAX) + 1);
    assert_eq!(
        CatalogRecord::Started(started(long.clone(), Vec::new())).encode_frame(),
        Err(EncodeError {
            what: "a description",
            len: long.len(),
            limit: usize::from(u16::MAX),
        })
    );
    // A string that fits its length field but not a frame (the decoder
    // refuses bodies over MAX_BODY_LEN) is refused too: never a record
    // that would read back as damage.
    let frame_sized = "d".repeat(usize::from(u16::MAX));
    assert_eq!(
        CatalogRecord::Started(started(frame_sized, Vec::new()))
            .encode_frame()
            .map_err(|error| (error.what, error.limit)),
        Err(("a catalog record", MAX_BODY_LEN))
    );
    // What fits encodes and decodes back whole.
    let record = CatalogRecord::Started(started("d".repeat(60_000), Vec::new()));
    let frame = record
        .encode_frame()
        .expect("a 60,000-byte description fits");
    assert!(CatalogRecord::decode_frame(&frame).map(|(decoded, _)| decoded) == Ok(record));
    let many_tags = vec![("k".to_string(), "v".to_string()); usize::from(u16::MAX) + 1];
    assert_eq!(
        CatalogRecord::Started(started("d".into(), many_tags))
            .encode_frame()
            .map_err(|error| error.what),
        Err("a snapshot's tag count")
    );
    let sources: Vec<u32> = (0..=MAX_MARKER_SOURCES as u32).collect();
    assert_eq!(
        encode_marker(1, &sources).map_err(|error| error.limit),
        Err(MAX_MARKER_SOURCES)
    );
    let entry = KeyringEntry {
        domain: 1,
        suite: 1,
        created_millis: 1,
        key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
        wrapped: vec![1; MAX_WRAPPED_LEN + 1],
    };
    assert_eq!(
        encode_keyring(std::slice::from_ref(&entry)).map_err(|error| error.what),
        Err("a wrapped data key")
    );
    let long_name = KeyringEntry {
        key_arn: "k".repeat(MAX_KEY_ARN_LEN + 1),
        wrapped: vec![1; 65],
        ..entry
    };
    assert_eq!(
        encode_keyring(&[long_name]).map_err(|error| error.what),
        Err("a key name")
    );
    let id = ChunkId([1; 32]);
    assert_eq!(
        encode_aad(
            RecordKind::Block,
            Codec::Raw,
            0,
            1,
            &id,
            MAX_PAYLOAD_LEN + 1
        )
        .map_err(|error| error.what),
        Err("a record's payload")
    );
    let too_long = vec![0u8; MAX_PAYLOAD_LEN + 1];
    assert!(encode_record_header(
        RecordKind::Block,
        Codec::Raw,
        1,
        &id,
        &Sha256Digest([0; 32]),
        &too_long
    )
    .is_err());
}

#[test]
fn the_engine_refuses_an_unencodable_start_before_writing_anything() {
    let (engine, storage, _) = blocksnap::testing::memory_engine(Default::default());
    let files_before = storage.list("").expect("list");
    let journals_before = storage.list("pending").expect("list");
    let refused = engine.start(NewSnapshot {
        description: Some("d".repeat(70_000)),
        ..NewSnapshot::new(1)
    });
    match refused {
        Err(Error::InvalidInput { message, .. }) => {
            assert!(message.contains("a description"), "{message}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(engine.snapshots().is_empty());
    assert_eq!(engine.pending_snapshot_count(), 0);
    assert_eq!(storage.list("").expect("list"), files_before);
    assert_eq!(storage.list("pending").expect("list"), journals_before);
    let report = engine.verify(VerifyOptions::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
    // The engine is not poisoned: a start that fits works.
    engine.start(NewSnapshot::new(1)).expect("start");
}
