//! Every EBS rule of the reference, one test each, asserting the error class
//! and `Reason` through the single wire mapping (`api::ebs_error`).

use blocksnap::api::*;
use blocksnap::testing::{
    block, checksum, complete_request, expect_ebs, linear_checksum, memory_engine, put_request,
};
use blocksnap::{Engine, EngineConfig};
use std::time::Duration;

const VALIDATION: &str = "ValidationException";
const PARAMETER: Option<&str> = Some("INVALID_PARAMETER_VALUE");

fn engine() -> Engine {
    memory_engine(EngineConfig::default()).0
}

fn start(engine: &Engine, volume_size: i64) -> String {
    Ebs::new(engine)
        .start_snapshot(StartSnapshotRequest {
            volume_size,
            ..Default::default()
        })
        .expect("start")
        .snapshot_id
}

fn start_request(volume_size: i64) -> StartSnapshotRequest {
    StartSnapshotRequest {
        volume_size,
        ..Default::default()
    }
}

/// A completed snapshot with blocks `seeds[i]` at index `i`.
fn completed(engine: &Engine, seeds: &[u64]) -> String {
    let id = start(engine, 1);
    for (index, seed) in seeds.iter().enumerate() {
        Ebs::new(engine)
            .put_snapshot_block(put_request(&id, index as i32, block(*seed)))
            .expect("put");
    }
    Ebs::new(engine)
        .complete_snapshot(complete_request(&id, seeds.len() as i32))
        .expect("complete");
    id
}

fn list_all(engine: &Engine, id: &str) -> ListSnapshotBlocksResponse {
    Ebs::new(engine)
        .list_snapshot_blocks(ListSnapshotBlocksRequest {
            snapshot_id: id.into(),
            max_results: Some(10_000),
            ..Default::default()
        })
        .expect("list")
}

// ---- StartSnapshot -------------------------------------------------------

#[test]
fn start_response_has_every_field() {
    let engine = engine();
    let tags = vec![Tag {
        key: "k".into(),
        value: "v".into(),
    }];
    let response = Ebs::new(&engine)
        .start_snapshot(StartSnapshotRequest {
            volume_size: 8,
            tags: tags.clone(),
            description: Some("nightly".into()),
            ..Default::default()
        })
        .expect("start");
    assert!(response.snapshot_id.starts_with("snap-"));
    assert!(response.snapshot_id[5..]
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(response.owner_id, "000000000000");
    assert_eq!(response.status, Status::Pending);
    assert_eq!(response.volume_size, 8);
    assert_eq!(response.block_size, 524_288);
    assert_eq!(response.tags, tags);
    assert_eq!(response.description.as_deref(), Some("nightly"));
    assert_eq!(response.parent_snapshot_id, None);
    assert_eq!(response.kms_key_arn, None);
    assert_eq!(response.sse_type, SseType::None);
    assert_eq!(
        response.start_time,
        blocksnap::clock::millis_to_system_time(1_795_392_000_000)
    );
}

#[test]
fn volume_size_must_be_1_to_65536() {
    let engine = engine();
    expect_ebs(
        Ebs::new(&engine).start_snapshot(start_request(0)),
        VALIDATION,
        Some("INVALID_VOLUME_SIZE"),
    );
    expect_ebs(
        Ebs::new(&engine).start_snapshot(start_request(-5)),
        VALIDATION,
        Some("INVALID_VOLUME_SIZE"),
    );
    expect_ebs(
        Ebs::new(&engine).start_snapshot(start_request(65_537)),
        VALIDATION,
        Some("INVALID_VOLUME_SIZE"),
    );
    assert_eq!(
        Ebs::new(&engine)
            .start_snapshot(start_request(65_536))
            .expect("64 TiB")
            .volume_size,
        65_536
    );
}

#[test]
fn timeout_must_be_10_to_4320() {
    let engine = engine();
    for bad in [9, 0, -1, 4321] {
        let request = StartSnapshotRequest {
            timeout: Some(bad),
            ..start_request(1)
        };
        expect_ebs(
            Ebs::new(&engine).start_snapshot(request),
            VALIDATION,
            PARAMETER,
        );
    }
    for good in [10, 4320] {
        Ebs::new(&engine)
            .start_snapshot(StartSnapshotRequest {
                timeout: Some(good),
                ..start_request(1)
            })
            .expect("timeout in range");
    }
}

#[test]
fn at_most_50_tags() {
    let engine = engine();
    let tag = |i: usize| Tag {
        key: format!("key{i}"),
        value: "v".into(),
    };
    let request = StartSnapshotRequest {
        tags: (0..51).map(tag).collect(),
        ..start_request(1)
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(request),
        VALIDATION,
        Some("INVALID_TAG"),
    );
    let request = StartSnapshotRequest {
        tags: (0..50).map(tag).collect(),
        ..start_request(1)
    };
    assert_eq!(
        Ebs::new(&engine)
            .start_snapshot(request)
            .expect("50 tags")
            .tags
            .len(),
        50
    );
}

#[test]
fn tag_key_is_1_to_127_characters() {
    let engine = engine();
    for key in [String::new(), "k".repeat(128)] {
        let request = StartSnapshotRequest {
            tags: vec![Tag {
                key,
                value: String::new(),
            }],
            ..start_request(1)
        };
        expect_ebs(
            Ebs::new(&engine).start_snapshot(request),
            VALIDATION,
            Some("INVALID_TAG"),
        );
    }
    let request = StartSnapshotRequest {
        tags: vec![Tag {
            key: "é".repeat(127),
            value: String::new(),
        }],
        ..start_request(1)
    };
    Ebs::new(&engine)
        .start_snapshot(request)
        .expect("127 characters (254 bytes) is allowed");
}

#[test]
fn tag_value_is_at_most_255_characters() {
    let engine = engine();
    let request = StartSnapshotRequest {
        tags: vec![Tag {
            key: "k".into(),
            value: "v".repeat(256),
        }],
        ..start_request(1)
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(request),
        VALIDATION,
        Some("INVALID_TAG"),
    );
    let request = StartSnapshotRequest {
        tags: vec![Tag {
            key: "k".into(),
            value: "v".repeat(255),
        }],
        ..start_request(1)
    };
    Ebs::new(&engine)
        .start_snapshot(request)
        .expect("255 characters");
}

#[test]
fn description_is_1_to_255_characters() {
    let engine = engine();
    for description in [String::new(), "d".repeat(256)] {
        let request = StartSnapshotRequest {
            description: Some(description),
            ..start_request(1)
        };
        expect_ebs(
            Ebs::new(&engine).start_snapshot(request),
            VALIDATION,
            PARAMETER,
        );
    }
    Ebs::new(&engine)
        .start_snapshot(StartSnapshotRequest {
            description: Some("d".repeat(255)),
            ..start_request(1)
        })
        .expect("255");
}

#[test]
fn parent_must_exist() {
    let engine = engine();
    let request = StartSnapshotRequest {
        parent_snapshot_id: Some("snap-00000000000000ff".into()),
        ..start_request(1)
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(request),
        "ResourceNotFoundException",
        Some("SNAPSHOT_NOT_FOUND"),
    );
    let request = StartSnapshotRequest {
        parent_snapshot_id: Some("snapshot-1".into()),
        ..start_request(1)
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(request),
        VALIDATION,
        Some("INVALID_SNAPSHOT_ID"),
    );
}

#[test]
fn parent_must_be_completed() {
    let engine = engine();
    let pending = start(&engine, 1);
    let request = StartSnapshotRequest {
        parent_snapshot_id: Some(pending),
        ..start_request(1)
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(request),
        VALIDATION,
        PARAMETER,
    );
}

#[test]
fn child_volume_is_at_least_the_parents() {
    let engine = engine();
    let parent = start(&engine, 2);
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&parent, 0))
        .expect("complete");
    let request = StartSnapshotRequest {
        parent_snapshot_id: Some(parent.clone()),
        ..start_request(1)
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(request),
        VALIDATION,
        Some("INVALID_VOLUME_SIZE"),
    );
    let request = StartSnapshotRequest {
        parent_snapshot_id: Some(parent.clone()),
        ..start_request(3)
    };
    let child = Ebs::new(&engine)
        .start_snapshot(request)
        .expect("larger child");
    assert_eq!(child.parent_snapshot_id, Some(parent));
}

#[test]
fn encrypted_with_parent_is_rejected() {
    let engine = engine();
    let parent = completed(&engine, &[]);
    let request = StartSnapshotRequest {
        parent_snapshot_id: Some(parent),
        encrypted: Some(true),
        ..start_request(1)
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(request),
        VALIDATION,
        PARAMETER,
    );
}

#[test]
fn encryption_without_a_key_provider_is_refused_at_start() {
    let engine = engine();
    let request = StartSnapshotRequest {
        encrypted: Some(true),
        ..start_request(1)
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(request),
        VALIDATION,
        Some("INVALID_CUSTOMER_KEY"),
    );
    let request = StartSnapshotRequest {
        kms_key_arn: Some("not-an-arn".into()),
        ..start_request(1)
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(request),
        VALIDATION,
        Some("INVALID_CUSTOMER_KEY"),
    );
    Ebs::new(&engine)
        .start_snapshot(StartSnapshotRequest {
            encrypted: Some(false),
            ..start_request(1)
        })
        .expect("unencrypted");
}

#[test]
fn client_token_same_parameters_returns_the_same_snapshot() {
    let engine = engine();
    let request = StartSnapshotRequest {
        client_token: Some("token-1".into()),
        ..start_request(4)
    };
    let first = Ebs::new(&engine)
        .start_snapshot(request.clone())
        .expect("first");
    let second = Ebs::new(&engine).start_snapshot(request).expect("retry");
    assert_eq!(first.snapshot_id, second.snapshot_id);
    let other = Ebs::new(&engine).start_snapshot(StartSnapshotRequest {
        client_token: Some("token-2".into()),
        ..start_request(4)
    });
    assert_ne!(other.expect("other token").snapshot_id, first.snapshot_id);
}

#[test]
fn client_token_other_parameters_is_a_conflict() {
    let engine = engine();
    let request = StartSnapshotRequest {
        client_token: Some("token-1".into()),
        ..start_request(4)
    };
    Ebs::new(&engine)
        .start_snapshot(request.clone())
        .expect("first");
    expect_ebs(
        Ebs::new(&engine).start_snapshot(StartSnapshotRequest {
            volume_size: 5,
            ..request.clone()
        }),
        "ConflictException",
        None,
    );
    let described = StartSnapshotRequest {
        description: Some("x".into()),
        ..request
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(described),
        "ConflictException",
        None,
    );
}

#[test]
fn client_token_is_case_sensitive_and_without_whitespace() {
    let engine = engine();
    let a = Ebs::new(&engine).start_snapshot(StartSnapshotRequest {
        client_token: Some("Token".into()),
        ..start_request(1)
    });
    let b = Ebs::new(&engine).start_snapshot(StartSnapshotRequest {
        client_token: Some("token".into()),
        ..start_request(1)
    });
    assert_ne!(a.expect("a").snapshot_id, b.expect("b").snapshot_id);
    let spaced = StartSnapshotRequest {
        client_token: Some("a b".into()),
        ..start_request(1)
    };
    expect_ebs(
        Ebs::new(&engine).start_snapshot(spaced),
        VALIDATION,
        PARAMETER,
    );
}

#[test]
fn pending_snapshots_are_limited() {
    let (engine, _, _) = memory_engine(EngineConfig {
        max_pending_snapshots: 2,
        ..EngineConfig::default()
    });
    let first = start(&engine, 1);
    start(&engine, 1);
    expect_ebs(
        Ebs::new(&engine).start_snapshot(start_request(1)),
        "ConcurrentLimitExceededException",
        None,
    );
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&first, 0))
        .expect("complete frees a slot");
    start(&engine, 1);
}

// ---- PutSnapshotBlock ----------------------------------------------------

#[test]
fn put_requires_a_pending_snapshot() {
    let engine = engine();
    let id = completed(&engine, &[1]);
    expect_ebs(
        Ebs::new(&engine).put_snapshot_block(put_request(&id, 0, block(2))),
        VALIDATION,
        Some("INVALID_SNAPSHOT_ID"),
    );
    let unknown = put_request("snap-0000000000000001", 0, block(2));
    expect_ebs(
        Ebs::new(&engine).put_snapshot_block(unknown),
        "ResourceNotFoundException",
        Some("SNAPSHOT_NOT_FOUND"),
    );
}

#[test]
fn block_index_is_below_the_volume_size() {
    let engine = engine();
    let id = start(&engine, 1);
    expect_ebs(
        Ebs::new(&engine).put_snapshot_block(put_request(&id, 2048, block(1))),
        VALIDATION,
        Some("INVALID_BLOCK"),
    );
    expect_ebs(
        Ebs::new(&engine).put_snapshot_block(put_request(&id, -1, block(1))),
        VALIDATION,
        Some("INVALID_BLOCK"),
    );
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&id, 2047, block(1)))
        .expect("last block");
}

#[test]
fn data_length_must_be_524288() {
    let engine = engine();
    let id = start(&engine, 1);
    let request = PutSnapshotBlockRequest {
        data_length: 4096,
        ..put_request(&id, 0, block(1))
    };
    expect_ebs(
        Ebs::new(&engine).put_snapshot_block(request),
        VALIDATION,
        PARAMETER,
    );
}

#[test]
fn body_must_be_exactly_524288_bytes() {
    let engine = engine();
    let id = start(&engine, 1);
    for length in [0, 524_287, 524_289] {
        let data = vec![1u8; length];
        let request = PutSnapshotBlockRequest {
            checksum: checksum(&data),
            block_data: data.into(),
            ..put_request(&id, 0, block(1))
        };
        expect_ebs(
            Ebs::new(&engine).put_snapshot_block(request),
            VALIDATION,
            Some("INVALID_BLOCK"),
        );
    }
}

#[test]
fn checksum_algorithm_must_be_sha256() {
    let engine = engine();
    let id = start(&engine, 1);
    let request = PutSnapshotBlockRequest {
        checksum_algorithm: "MD5".into(),
        ..put_request(&id, 0, block(1))
    };
    expect_ebs(
        Ebs::new(&engine).put_snapshot_block(request),
        VALIDATION,
        PARAMETER,
    );
}

#[test]
fn checksum_mismatch_is_rejected_and_nothing_is_written() {
    let engine = engine();
    let id = start(&engine, 1);
    let request = PutSnapshotBlockRequest {
        checksum: checksum(&block(2)),
        ..put_request(&id, 0, block(1))
    };
    expect_ebs(
        Ebs::new(&engine).put_snapshot_block(request),
        VALIDATION,
        Some("INVALID_BLOCK"),
    );
    let zero_with_wrong_sum = PutSnapshotBlockRequest {
        checksum: checksum(&block(2)),
        ..put_request(&id, 1, block(0))
    };
    expect_ebs(
        Ebs::new(&engine).put_snapshot_block(zero_with_wrong_sum),
        VALIDATION,
        Some("INVALID_BLOCK"),
    );
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(complete_request(&id, 1)),
        VALIDATION,
        PARAMETER,
    );
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&id, 0))
        .expect("nothing was written");
}

#[test]
fn malformed_checksum_is_rejected() {
    let engine = engine();
    let id = start(&engine, 1);
    for bad in ["not base64!", "AAAA", &"A".repeat(65)] {
        let request = PutSnapshotBlockRequest {
            checksum: bad.to_string(),
            ..put_request(&id, 0, block(1))
        };
        expect_ebs(
            Ebs::new(&engine).put_snapshot_block(request),
            VALIDATION,
            PARAMETER,
        );
    }
}

#[test]
fn progress_is_0_to_100() {
    let engine = engine();
    let id = start(&engine, 1);
    for bad in [-1, 101] {
        let request = PutSnapshotBlockRequest {
            progress: Some(bad),
            ..put_request(&id, 0, block(1))
        };
        expect_ebs(
            Ebs::new(&engine).put_snapshot_block(request),
            VALIDATION,
            PARAMETER,
        );
    }
    let request = PutSnapshotBlockRequest {
        progress: Some(100),
        ..put_request(&id, 0, block(1))
    };
    let response = Ebs::new(&engine)
        .put_snapshot_block(request)
        .expect("progress 100");
    assert_eq!(response.checksum, checksum(&block(1)));
    assert_eq!(response.checksum_algorithm, "SHA256");
}

#[test]
fn overwriting_an_index_replaces_it() {
    let engine = engine();
    let id = start(&engine, 1);
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&id, 5, block(1)))
        .expect("first");
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&id, 5, block(2)))
        .expect("overwrite");
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&id, 1))
        .expect("one distinct index");
    let listed = list_all(&engine, &id);
    assert_eq!(listed.blocks.len(), 1);
    let read = Ebs::new(&engine)
        .get_snapshot_block(GetSnapshotBlockRequest {
            snapshot_id: id,
            block_index: 5,
            block_token: listed.blocks[0].block_token.clone(),
        })
        .expect("get");
    assert_eq!(read.block_data, block(2));
}

#[test]
fn zero_blocks_are_written_listed_readable_and_stored_without_payload() {
    let engine = engine();
    let before = engine.chunk_stats();
    let id = start(&engine, 1);
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&id, 9, block(0)))
        .expect("zero block");
    let after_put = engine.chunk_stats();
    assert_eq!(
        after_put.chunks, before.chunks,
        "a zero block stores no chunk"
    );
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&id, 1))
        .expect("complete");
    let listed = list_all(&engine, &id);
    assert_eq!(
        listed
            .blocks
            .iter()
            .map(|b| b.block_index)
            .collect::<Vec<_>>(),
        vec![9]
    );
    let read = Ebs::new(&engine)
        .get_snapshot_block(GetSnapshotBlockRequest {
            snapshot_id: id,
            block_index: 9,
            block_token: listed.blocks[0].block_token.clone(),
        })
        .expect("get zero block");
    assert_eq!(read.block_data, block(0));
    assert_eq!(
        read.checksum,
        "B4VNL+8pega6gWheZgwzLeNtXRjVRpJ9MNqtbX/aFUE="
    );
    assert_eq!(read.data_length, 524_288);
}

// ---- CompleteSnapshot ----------------------------------------------------

#[test]
fn changed_blocks_count_mismatch_leaves_the_snapshot_pending() {
    let engine = engine();
    let id = start(&engine, 1);
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&id, 0, block(1)))
        .expect("put");
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&id, 1, block(2)))
        .expect("put");
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(complete_request(&id, 3)),
        VALIDATION,
        PARAMETER,
    );
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&id, 2, block(3)))
        .expect("still pending: puts accepted");
    let response = Ebs::new(&engine)
        .complete_snapshot(complete_request(&id, 3))
        .expect("repaired");
    assert_eq!(response.status, Status::Completed);
}

#[test]
fn linear_aggregate_is_checked() {
    let engine = engine();
    let id = start(&engine, 1);
    // Written out of order and overwritten: the aggregate is over final
    // contents in ascending index order.
    for (index, seed) in [(7, 1), (2, 2), (7, 3)] {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&id, index, block(seed)))
            .expect("put");
    }
    let with = |sum: String| CompleteSnapshotRequest {
        checksum: Some(sum),
        checksum_algorithm: Some("SHA256".into()),
        checksum_aggregation_method: Some("LINEAR".into()),
        ..complete_request(&id, 2)
    };
    let wrong = linear_checksum([block(3).as_slice(), block(2).as_slice()]);
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(with(wrong)),
        VALIDATION,
        PARAMETER,
    );
    let right = linear_checksum([block(2).as_slice(), block(3).as_slice()]);
    assert_eq!(
        Ebs::new(&engine)
            .complete_snapshot(with(right))
            .expect("aggregate matches")
            .status,
        Status::Completed
    );
}

#[test]
fn aggregate_requires_algorithm_and_linear_method() {
    let engine = engine();
    let id = start(&engine, 1);
    let sum = linear_checksum(std::iter::empty());
    let no_method = CompleteSnapshotRequest {
        checksum: Some(sum.clone()),
        checksum_algorithm: Some("SHA256".into()),
        ..complete_request(&id, 0)
    };
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(no_method),
        VALIDATION,
        PARAMETER,
    );
    let wrong_method = CompleteSnapshotRequest {
        checksum: Some(sum),
        checksum_algorithm: Some("SHA256".into()),
        checksum_aggregation_method: Some("TREE".into()),
        ..complete_request(&id, 0)
    };
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(wrong_method),
        VALIDATION,
        PARAMETER,
    );
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(complete_request(&id, -1)),
        VALIDATION,
        PARAMETER,
    );
}

#[test]
fn completing_twice_is_rejected() {
    let engine = engine();
    let id = completed(&engine, &[1]);
    expect_ebs(
        Ebs::new(&engine).complete_snapshot(complete_request(&id, 1)),
        VALIDATION,
        Some("INVALID_SNAPSHOT_ID"),
    );
}

// ---- Reads -----------------------------------------------------------------

#[test]
fn reads_require_a_completed_snapshot() {
    let engine = engine();
    let id = start(&engine, 1);
    let list = ListSnapshotBlocksRequest {
        snapshot_id: id.clone(),
        ..Default::default()
    };
    expect_ebs(
        Ebs::new(&engine).list_snapshot_blocks(list),
        VALIDATION,
        Some("INVALID_SNAPSHOT_ID"),
    );
    let changed = ListChangedBlocksRequest {
        second_snapshot_id: id.clone(),
        ..Default::default()
    };
    expect_ebs(
        Ebs::new(&engine).list_changed_blocks(changed),
        VALIDATION,
        Some("INVALID_SNAPSHOT_ID"),
    );
    let get = GetSnapshotBlockRequest {
        snapshot_id: id,
        block_index: 0,
        block_token: "AAAA".into(),
    };
    expect_ebs(
        Ebs::new(&engine).get_snapshot_block(get),
        VALIDATION,
        Some("INVALID_SNAPSHOT_ID"),
    );
}

#[test]
fn max_results_is_bounded() {
    let engine = engine();
    let id = completed(&engine, &[1]);
    for bad in [0, -3, 10_001] {
        let request = ListSnapshotBlocksRequest {
            snapshot_id: id.clone(),
            max_results: Some(bad),
            ..Default::default()
        };
        expect_ebs(
            Ebs::new(&engine).list_snapshot_blocks(request),
            VALIDATION,
            PARAMETER,
        );
    }
}

#[test]
fn listing_is_ascending_paged_and_honours_the_starting_index() {
    let engine = engine();
    let id = start(&engine, 1);
    let indexes: Vec<i32> = (0..250).map(|i| (i * 7) % 2048).collect();
    for index in &indexes {
        Ebs::new(&engine)
            .put_snapshot_block(put_request(&id, *index, block(0)))
            .expect("put");
    }
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&id, indexes.len() as i32))
        .expect("complete");
    let mut expected = indexes.clone();
    expected.sort();

    // MaxResults below 100 is raised to 100.
    let mut seen = Vec::new();
    let mut request = ListSnapshotBlocksRequest {
        snapshot_id: id.clone(),
        max_results: Some(50),
        ..Default::default()
    };
    loop {
        let page = Ebs::new(&engine)
            .list_snapshot_blocks(request.clone())
            .expect("page");
        assert!(page.blocks.len() <= 100);
        assert_eq!(page.volume_size, 1);
        assert_eq!(page.block_size, 524_288);
        seen.extend(page.blocks.iter().map(|b| b.block_index));
        match page.next_token {
            Some(token) => {
                assert_eq!(page.blocks.len(), 100);
                assert!(
                    token.len() <= 256
                        && token
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                );
                // StartingBlockIndex is ignored when a token is given.
                request = ListSnapshotBlocksRequest {
                    next_token: Some(token),
                    starting_block_index: Some(0),
                    ..request
                };
            }
            None => break,
        }
    }
    assert_eq!(seen, expected);

    let from = ListSnapshotBlocksRequest {
        snapshot_id: id,
        starting_block_index: Some(701),
        max_results: Some(10_000),
        ..Default::default()
    };
    let page = Ebs::new(&engine)
        .list_snapshot_blocks(from)
        .expect("from 701");
    let tail: Vec<i32> = expected.iter().copied().filter(|i| *i >= 701).collect();
    assert_eq!(
        page.blocks
            .iter()
            .map(|b| b.block_index)
            .collect::<Vec<_>>(),
        tail
    );
    assert!(page.next_token.is_none());
}

#[test]
fn page_tokens_are_bound_authenticated_and_expire() {
    let (engine, _, clock) = memory_engine(EngineConfig::default());
    let seeds: Vec<u64> = vec![0; 150];
    let id = completed(&engine, &seeds);
    let other = completed(&engine, &seeds);
    let first = Ebs::new(&engine)
        .list_snapshot_blocks(ListSnapshotBlocksRequest {
            snapshot_id: id.clone(),
            ..Default::default()
        })
        .expect("first page");
    let token = first.next_token.expect("more pages");
    let with_token = |snapshot: &str, token: String| ListSnapshotBlocksRequest {
        snapshot_id: snapshot.to_string(),
        next_token: Some(token),
        ..Default::default()
    };
    // Altered: flip one Base64 character.
    let mut altered = token.clone().into_bytes();
    altered[3] = if altered[3] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("ascii");
    expect_ebs(
        Ebs::new(&engine).list_snapshot_blocks(with_token(&id, altered)),
        VALIDATION,
        Some("INVALID_PAGE_TOKEN"),
    );
    expect_ebs(
        Ebs::new(&engine).list_snapshot_blocks(with_token(&id, "garbage!".into())),
        VALIDATION,
        Some("INVALID_PAGE_TOKEN"),
    );
    // Foreign: another snapshot's listing.
    expect_ebs(
        Ebs::new(&engine).list_snapshot_blocks(with_token(&other, token.clone())),
        VALIDATION,
        Some("INVALID_PAGE_TOKEN"),
    );
    // A ListSnapshotBlocks token is not a ListChangedBlocks token.
    let changed = ListChangedBlocksRequest {
        second_snapshot_id: id.clone(),
        next_token: Some(token.clone()),
        ..Default::default()
    };
    expect_ebs(
        Ebs::new(&engine).list_changed_blocks(changed),
        VALIDATION,
        Some("INVALID_PAGE_TOKEN"),
    );
    let second = Ebs::new(&engine)
        .list_snapshot_blocks(with_token(&id, token.clone()))
        .expect("valid token");
    assert_eq!(second.blocks.first().map(|b| b.block_index), Some(100));
    clock.advance(Duration::from_secs(3600));
    expect_ebs(
        Ebs::new(&engine).list_snapshot_blocks(with_token(&id, token)),
        VALIDATION,
        Some("INVALID_PAGE_TOKEN"),
    );
}

#[test]
fn block_tokens_are_bound_authenticated_and_expire() {
    let (engine, _, clock) = memory_engine(EngineConfig::default());
    let id = completed(&engine, &[1, 2]);
    let other = completed(&engine, &[1, 2]);
    let listed = list_all(&engine, &id);
    let token = listed.blocks[0].block_token.clone();
    let expiry = listed.expiry_time.expect("expiry time");
    assert_eq!(
        expiry,
        blocksnap::clock::millis_to_system_time(1_795_392_000_000)
            + Duration::from_secs(7 * 24 * 3600)
    );
    let get = |snapshot: &str, index: i32, token: &str| GetSnapshotBlockRequest {
        snapshot_id: snapshot.into(),
        block_index: index,
        block_token: token.into(),
    };
    expect_ebs(
        Ebs::new(&engine).get_snapshot_block(get(&id, 1, &token)),
        VALIDATION,
        Some("INVALID_BLOCK_TOKEN"),
    );
    expect_ebs(
        Ebs::new(&engine).get_snapshot_block(get(&other, 0, &token)),
        VALIDATION,
        Some("INVALID_BLOCK_TOKEN"),
    );
    expect_ebs(
        Ebs::new(&engine).get_snapshot_block(get(&id, 0, "Zm9yZ2Vk")),
        VALIDATION,
        Some("INVALID_BLOCK_TOKEN"),
    );
    expect_ebs(
        Ebs::new(&engine).get_snapshot_block(get(&id, 0, &"A".repeat(257))),
        VALIDATION,
        Some("INVALID_BLOCK_TOKEN"),
    );
    assert_eq!(
        Ebs::new(&engine)
            .get_snapshot_block(get(&id, 0, &token))
            .expect("valid")
            .block_data,
        block(1)
    );
    clock.advance(Duration::from_secs(7 * 24 * 3600));
    expect_ebs(
        Ebs::new(&engine).get_snapshot_block(get(&id, 0, &token)),
        VALIDATION,
        Some("INVALID_BLOCK_TOKEN"),
    );
}

#[test]
fn unrelated_snapshots_cannot_be_diffed() {
    let engine = engine();
    let a = completed(&engine, &[1]);
    let b = completed(&engine, &[1]);
    let request = ListChangedBlocksRequest {
        first_snapshot_id: Some(a),
        second_snapshot_id: b,
        ..Default::default()
    };
    expect_ebs(
        Ebs::new(&engine).list_changed_blocks(request),
        VALIDATION,
        Some("UNRELATED_SNAPSHOTS"),
    );
}

#[test]
fn changed_blocks_carry_the_tokens_of_each_side_in_either_order() {
    let engine = engine();
    let parent = completed(&engine, &[1, 2, 3]);
    let child = Ebs::new(&engine)
        .start_snapshot(StartSnapshotRequest {
            parent_snapshot_id: Some(parent.clone()),
            ..start_request(2)
        })
        .expect("child")
        .snapshot_id;
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&child, 1, block(4)))
        .expect("change 1");
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&child, 2, block(3)))
        .expect("same content at 2");
    Ebs::new(&engine)
        .put_snapshot_block(put_request(&child, 3000, block(5)))
        .expect("new 3000");
    Ebs::new(&engine)
        .complete_snapshot(complete_request(&child, 3))
        .expect("complete child");

    let diff = |first: &str, second: &str| {
        Ebs::new(&engine)
            .list_changed_blocks(ListChangedBlocksRequest {
                first_snapshot_id: Some(first.into()),
                second_snapshot_id: second.into(),
                ..Default::default()
            })
            .expect("diff")
    };
    let forward = diff(&parent, &child);
    let shape: Vec<(i32, bool, bool)> = forward
        .changed_blocks
        .iter()
        .map(|c| {
            (
                c.block_index,
                c.first_block_token.is_some(),
                c.second_block_token.is_some(),
            )
        })
        .collect();
    assert_eq!(shape, vec![(1, true, true), (3000, false, true)]);
    assert_eq!(forward.volume_size, 2);
    let backward = diff(&child, &parent);
    let shape: Vec<(i32, bool, bool)> = backward
        .changed_blocks
        .iter()
        .map(|c| {
            (
                c.block_index,
                c.first_block_token.is_some(),
                c.second_block_token.is_some(),
            )
        })
        .collect();
    assert_eq!(shape, vec![(1, true, true), (3000, true, false)]);
    // Tokens read the right side's data.
    let entry = &forward.changed_blocks[0];
    let read = |snapshot: &str, token: &Option<String>| {
        Ebs::new(&engine)
            .get_snapshot_block(GetSnapshotBlockRequest {
                snapshot_id: snapshot.into(),
                block_index: 1,
                block_token: token.clone().expect("token"),
            })
            .expect("get")
            .block_data
    };
    assert_eq!(read(&parent, &entry.first_block_token), block(2));
    assert_eq!(read(&child, &entry.second_block_token), block(4));
}

#[test]
fn changed_blocks_without_a_first_snapshot_list_everything_written() {
    let engine = engine();
    let id = completed(&engine, &[1, 0, 2]);
    let response = Ebs::new(&engine)
        .list_changed_blocks(ListChangedBlocksRequest {
            second_snapshot_id: id,
            ..Default::default()
        })
        .expect("diff against nothing");
    let shape: Vec<(i32, bool, bool)> = response
        .changed_blocks
        .iter()
        .map(|c| {
            (
                c.block_index,
                c.first_block_token.is_some(),
                c.second_block_token.is_some(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![(0, false, true), (1, false, true), (2, false, true)]
    );
}

#[test]
fn every_error_variant_maps_to_its_ebs_class_and_status() {
    use blocksnap::{Error, ValidationReason};
    let cases: Vec<(Error, &str, u16)> = vec![
        (
            Error::NotFound {
                message: "x".into(),
            },
            "ResourceNotFoundException",
            404,
        ),
        (
            Error::invalid(ValidationReason::InvalidBlock, "x"),
            "ValidationException",
            400,
        ),
        (
            Error::InvalidState {
                reason: ValidationReason::InvalidSnapshotId,
                message: "x".into(),
            },
            "ValidationException",
            400,
        ),
        (
            Error::Conflict {
                message: "x".into(),
            },
            "ConflictException",
            409,
        ),
        (
            Error::ConcurrentLimitExceeded {
                message: "x".into(),
            },
            "ConcurrentLimitExceededException",
            400,
        ),
        (
            Error::AccessDenied {
                message: "x".into(),
            },
            "AccessDeniedException",
            403,
        ),
        (
            Error::Throttled {
                per_resource: false,
                message: "x".into(),
            },
            "RequestThrottledException",
            400,
        ),
        (
            Error::KeyUnavailable {
                message: "x".into(),
            },
            "AccessDeniedException",
            403,
        ),
        (
            Error::corrupted("pack", "crc"),
            "InternalServerException",
            500,
        ),
        (
            Error::UnsupportedVersion {
                what: "pack".into(),
                version: 9,
            },
            "InternalServerException",
            500,
        ),
        (
            Error::io("sync", std::io::Error::other("disk")),
            "InternalServerException",
            500,
        ),
        (
            Error::Poisoned {
                cause: "a failed sync".into(),
            },
            "InternalServerException",
            500,
        ),
    ];
    for (error, code, status) in cases {
        let ebs = ebs_error(&error);
        assert_eq!((ebs.code, ebs.http_status), (code, status), "{error:?}");
        assert!(!ebs.message.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_methods_run_on_the_blocking_pool() {
    let engine = engine();
    let id = Ebs::new(&engine)
        .start_snapshot_async(start_request(1))
        .await
        .expect("start")
        .snapshot_id;
    let puts = (0..8).map(|index| {
        let engine = engine.clone();
        let id = id.clone();
        tokio::spawn(async move {
            Ebs::new(&engine)
                .put_snapshot_block_async(put_request(&id, index, block(index as u64 + 1)))
                .await
        })
    });
    for put in puts {
        put.await.expect("join").expect("put");
    }
    Ebs::new(&engine)
        .complete_snapshot_async(complete_request(&id, 8))
        .await
        .expect("complete");
    let listed = Ebs::new(&engine)
        .list_snapshot_blocks_async(ListSnapshotBlocksRequest {
            snapshot_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.blocks.len(), 8);
    let read = Ebs::new(&engine)
        .get_snapshot_block_async(GetSnapshotBlockRequest {
            snapshot_id: id.clone(),
            block_index: 5,
            block_token: listed.blocks[5].block_token.clone(),
        })
        .await
        .expect("get");
    assert_eq!(read.block_data, block(6));
    let changed = Ebs::new(&engine)
        .list_changed_blocks_async(ListChangedBlocksRequest {
            second_snapshot_id: id,
            ..Default::default()
        })
        .await
        .expect("changed");
    assert_eq!(changed.changed_blocks.len(), 8);
}

#[test]
fn an_owner_sees_and_touches_only_its_own_snapshots() {
    let alice = memory_engine(EngineConfig {
        max_pending_snapshots: 1,
        ..EngineConfig::default()
    })
    .0
    .as_owner("111111111111");
    let bob = alice.as_owner("222222222222");
    assert_eq!(bob.owner_id(), "222222222222");
    let finished = completed(&alice, &[1, 2]);
    let pending = start(&alice, 1);
    assert_eq!(
        Ebs::new(&alice)
            .describe_snapshot(DescribeSnapshotRequest {
                snapshot_id: finished.clone(),
            })
            .expect("describe")
            .snapshot
            .owner_id,
        "111111111111"
    );
    let not_found = Some("SNAPSHOT_NOT_FOUND");
    let missing = "ResourceNotFoundException";
    expect_ebs(
        Ebs::new(&bob).describe_snapshot(DescribeSnapshotRequest {
            snapshot_id: finished.clone(),
        }),
        missing,
        not_found,
    );
    expect_ebs(
        Ebs::new(&bob).list_snapshot_blocks(ListSnapshotBlocksRequest {
            snapshot_id: finished.clone(),
            ..Default::default()
        }),
        missing,
        not_found,
    );
    let listed = Ebs::new(&alice)
        .list_snapshot_blocks(ListSnapshotBlocksRequest {
            snapshot_id: finished.clone(),
            ..Default::default()
        })
        .expect("list");
    expect_ebs(
        Ebs::new(&bob).get_snapshot_block(GetSnapshotBlockRequest {
            snapshot_id: finished.clone(),
            block_index: 0,
            block_token: listed.blocks[0].block_token.clone(),
        }),
        missing,
        not_found,
    );
    expect_ebs(
        Ebs::new(&bob).put_snapshot_block(put_request(&pending, 0, block(3))),
        missing,
        not_found,
    );
    expect_ebs(
        Ebs::new(&bob).complete_snapshot(complete_request(&pending, 0)),
        missing,
        not_found,
    );
    expect_ebs(
        Ebs::new(&bob).start_snapshot(StartSnapshotRequest {
            parent_snapshot_id: Some(finished.clone()),
            ..start_request(1)
        }),
        missing,
        not_found,
    );
    expect_ebs(
        Ebs::new(&bob).delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: finished.clone(),
        }),
        missing,
        not_found,
    );
    expect_ebs(
        Ebs::new(&bob).cancel_snapshot(CancelSnapshotRequest {
            snapshot_id: pending.clone(),
        }),
        missing,
        not_found,
    );
    assert!(Ebs::new(&bob).list_snapshots().expect("list").is_empty());
    assert_eq!(Ebs::new(&alice).list_snapshots().expect("list").len(), 2);
    // Limits and client tokens are per owner.
    expect_ebs(
        Ebs::new(&alice).start_snapshot(start_request(1)),
        "ConcurrentLimitExceededException",
        None,
    );
    let token = |engine: &Engine| {
        Ebs::new(engine)
            .start_snapshot(StartSnapshotRequest {
                client_token: Some("same-token".into()),
                ..start_request(1)
            })
            .expect("start")
            .snapshot_id
    };
    let bobs = token(&bob);
    Ebs::new(&alice)
        .cancel_snapshot(CancelSnapshotRequest {
            snapshot_id: pending,
        })
        .expect("cancel");
    assert_ne!(token(&alice), bobs, "one token, two owners, two snapshots");
}
