//! One scenario suite, run twice: against the in-process API, and over HTTP
//! against `blocksnap serve`'s router on 127.0.0.1 through the AWS SDK for
//! Rust (`aws-sdk-ebs`, SigV4-signed). Both must give the same results,
//! errors included (class and `Reason`).

mod support;

use aws_sdk_ebs::error::ProvideErrorMetadata;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use blocksnap::api::*;
use blocksnap::server::{Authentication, Credentials, ServerConfig};
use blocksnap::storage::object::MemoryObjectStore;
use blocksnap::storage::{BucketOptions, BucketStorage, Storage};
use blocksnap::testing::{block, checksum, linear_checksum, test_client, LoopbackServer};
use blocksnap::{Engine, EngineConfig};
use bytes::Bytes;
use std::sync::Arc;
use support::s3_servers::S3Server;

/// An EBS error as a client sees it: class and `Reason`.
type Failure = (String, Option<String>);
type Outcome<T> = Result<T, Failure>;

/// The six operations, as a client calls them.
trait Client {
    fn start(&self, request: StartSnapshotRequest) -> Outcome<StartSnapshotResponse>;
    fn put(&self, request: PutSnapshotBlockRequest) -> Outcome<PutSnapshotBlockResponse>;
    fn complete(&self, request: CompleteSnapshotRequest) -> Outcome<CompleteSnapshotResponse>;
    fn get(&self, request: GetSnapshotBlockRequest) -> Outcome<GetSnapshotBlockResponse>;
    fn list(&self, request: ListSnapshotBlocksRequest) -> Outcome<ListSnapshotBlocksResponse>;
    fn changed(&self, request: ListChangedBlocksRequest) -> Outcome<ListChangedBlocksResponse>;
}

fn in_process<T>(result: blocksnap::Result<T>) -> Outcome<T> {
    result.map_err(|error| {
        let ebs = ebs_error(&error);
        (ebs.code.to_string(), ebs.reason.map(str::to_string))
    })
}

impl Client for Engine {
    fn start(&self, request: StartSnapshotRequest) -> Outcome<StartSnapshotResponse> {
        in_process(Ebs::new(self).start_snapshot(request))
    }
    fn put(&self, request: PutSnapshotBlockRequest) -> Outcome<PutSnapshotBlockResponse> {
        in_process(Ebs::new(self).put_snapshot_block(request))
    }
    fn complete(&self, request: CompleteSnapshotRequest) -> Outcome<CompleteSnapshotResponse> {
        in_process(Ebs::new(self).complete_snapshot(request))
    }
    fn get(&self, request: GetSnapshotBlockRequest) -> Outcome<GetSnapshotBlockResponse> {
        in_process(Ebs::new(self).get_snapshot_block(request))
    }
    fn list(&self, request: ListSnapshotBlocksRequest) -> Outcome<ListSnapshotBlocksResponse> {
        in_process(Ebs::new(self).list_snapshot_blocks(request))
    }
    fn changed(&self, request: ListChangedBlocksRequest) -> Outcome<ListChangedBlocksResponse> {
        in_process(Ebs::new(self).list_changed_blocks(request))
    }
}

/// The AWS SDK for Rust against a server on loopback.
struct Sdk {
    server: LoopbackServer,
    client: aws_sdk_ebs::Client,
}

impl Sdk {
    fn new() -> Sdk {
        Sdk::over(None)
    }

    /// A client of a server over `storage` (a directory store if `None`).
    fn over(storage: Option<(Arc<dyn Storage>, tempfile::TempDir)>) -> Sdk {
        let credentials = Credentials::parse("AKIDSDK sdk-secret 000000000000").expect("keys");
        let config = ServerConfig::new(Authentication::SigV4(Arc::new(credentials)));
        let server = match storage {
            Some((storage, local)) => {
                LoopbackServer::start_on(config, EngineConfig::default(), storage, local)
            }
            None => LoopbackServer::start(config, EngineConfig::default()),
        };
        let config = aws_sdk_ebs::Config::builder()
            .behavior_version(aws_sdk_ebs::config::BehaviorVersion::latest())
            .endpoint_url(format!("http://{}", server.address))
            .region(aws_sdk_ebs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ebs::config::Credentials::new(
                "AKIDSDK",
                "sdk-secret",
                None,
                None,
                "test",
            ))
            .retry_config(aws_sdk_ebs::config::retry::RetryConfig::disabled())
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(Provider::Rustls(CryptoMode::Ring))
                    .build_https(),
            )
            .build();
        Sdk {
            server,
            client: aws_sdk_ebs::Client::from_conf(config),
        }
    }
}

/// The class and `Reason` of an SDK error.
macro_rules! sdk_failure {
    ($error:expr, $module:ident :: $kind:ident) => {{
        let error = $error.into_service_error();
        use aws_sdk_ebs::operation::$module::$kind as kind;
        let reason = match &error {
            kind::ValidationException(e) => e.reason().map(|r| r.as_str().to_string()),
            kind::ResourceNotFoundException(e) => e.reason().map(|r| r.as_str().to_string()),
            kind::AccessDeniedException(e) => Some(e.reason().as_str().to_string()),
            kind::RequestThrottledException(e) => e.reason().map(|r| r.as_str().to_string()),
            _ => None,
        };
        (error.code().unwrap_or("Unknown").to_string(), reason)
    }};
}

fn time(seconds: Option<&aws_sdk_ebs::primitives::DateTime>) -> Option<std::time::SystemTime> {
    seconds.and_then(|time| std::time::SystemTime::try_from(*time).ok())
}

impl Client for Sdk {
    fn start(&self, request: StartSnapshotRequest) -> Outcome<StartSnapshotResponse> {
        let tags = request
            .tags
            .iter()
            .map(|tag| {
                aws_sdk_ebs::types::Tag::builder()
                    .key(&tag.key)
                    .value(&tag.value)
                    .build()
            })
            .collect();
        let call = self
            .client
            .start_snapshot()
            .volume_size(request.volume_size)
            .set_parent_snapshot_id(request.parent_snapshot_id)
            .set_tags(Some(tags))
            .set_description(request.description)
            .set_client_token(request.client_token)
            .set_encrypted(request.encrypted)
            .set_kms_key_arn(request.kms_key_arn)
            .set_timeout(request.timeout);
        let output = self
            .server
            .runtime
            .block_on(call.send())
            .map_err(|error| sdk_failure!(error, start_snapshot::StartSnapshotError))?;
        Ok(StartSnapshotResponse {
            description: output.description().map(str::to_string),
            snapshot_id: output.snapshot_id().unwrap_or_default().to_string(),
            owner_id: output.owner_id().unwrap_or_default().to_string(),
            status: match output.status().map(|status| status.as_str()) {
                Some("completed") => Status::Completed,
                Some("pending") => Status::Pending,
                _ => Status::Error,
            },
            start_time: time(output.start_time()).unwrap_or(std::time::UNIX_EPOCH),
            volume_size: output.volume_size().unwrap_or_default(),
            block_size: output.block_size().unwrap_or_default(),
            tags: output
                .tags()
                .iter()
                .map(|tag| Tag {
                    key: tag.key().unwrap_or_default().to_string(),
                    value: tag.value().unwrap_or_default().to_string(),
                })
                .collect(),
            parent_snapshot_id: output.parent_snapshot_id().map(str::to_string),
            kms_key_arn: output.kms_key_arn().map(str::to_string),
            sse_type: match output.sse_type().map(|sse| sse.as_str()) {
                Some("sse-ebs") => SseType::SseEbs,
                Some("sse-kms") => SseType::SseKms,
                _ => SseType::None,
            },
        })
    }

    fn put(&self, request: PutSnapshotBlockRequest) -> Outcome<PutSnapshotBlockResponse> {
        let call = self
            .client
            .put_snapshot_block()
            .snapshot_id(request.snapshot_id)
            .block_index(request.block_index)
            .block_data(aws_sdk_ebs::primitives::ByteStream::from(
                request.block_data,
            ))
            .data_length(request.data_length)
            .set_progress(request.progress)
            .checksum(request.checksum)
            .checksum_algorithm(request.checksum_algorithm.as_str().into());
        let output = self
            .server
            .runtime
            .block_on(call.send())
            .map_err(|error| sdk_failure!(error, put_snapshot_block::PutSnapshotBlockError))?;
        Ok(PutSnapshotBlockResponse {
            checksum: output.checksum().unwrap_or_default().to_string(),
            checksum_algorithm: output
                .checksum_algorithm()
                .map(|algorithm| algorithm.as_str().to_string())
                .unwrap_or_default(),
        })
    }

    fn complete(&self, request: CompleteSnapshotRequest) -> Outcome<CompleteSnapshotResponse> {
        let call = self
            .client
            .complete_snapshot()
            .snapshot_id(request.snapshot_id)
            .changed_blocks_count(request.changed_blocks_count)
            .set_checksum(request.checksum)
            .set_checksum_algorithm(request.checksum_algorithm.map(|a| a.as_str().into()))
            .set_checksum_aggregation_method(
                request
                    .checksum_aggregation_method
                    .map(|m| m.as_str().into()),
            );
        let output = self
            .server
            .runtime
            .block_on(call.send())
            .map_err(|error| sdk_failure!(error, complete_snapshot::CompleteSnapshotError))?;
        Ok(CompleteSnapshotResponse {
            status: match output.status().map(|status| status.as_str()) {
                Some("completed") => Status::Completed,
                Some("pending") => Status::Pending,
                _ => Status::Error,
            },
        })
    }

    fn get(&self, request: GetSnapshotBlockRequest) -> Outcome<GetSnapshotBlockResponse> {
        let call = self
            .client
            .get_snapshot_block()
            .snapshot_id(request.snapshot_id)
            .block_index(request.block_index)
            .block_token(request.block_token);
        self.server.runtime.block_on(async {
            let output = call
                .send()
                .await
                .map_err(|error| sdk_failure!(error, get_snapshot_block::GetSnapshotBlockError))?;
            let data_length = output.data_length().unwrap_or_default();
            let checksum = output.checksum().unwrap_or_default().to_string();
            let algorithm = output
                .checksum_algorithm()
                .map(|algorithm| algorithm.as_str().to_string())
                .unwrap_or_default();
            let data = output
                .block_data
                .collect()
                .await
                .expect("block body")
                .into_bytes();
            Ok(GetSnapshotBlockResponse {
                data_length,
                block_data: data,
                checksum,
                checksum_algorithm: algorithm,
            })
        })
    }

    fn list(&self, request: ListSnapshotBlocksRequest) -> Outcome<ListSnapshotBlocksResponse> {
        let call = self
            .client
            .list_snapshot_blocks()
            .snapshot_id(request.snapshot_id)
            .set_next_token(request.next_token)
            .set_max_results(request.max_results)
            .set_starting_block_index(request.starting_block_index);
        let output =
            self.server.runtime.block_on(call.send()).map_err(|error| {
                sdk_failure!(error, list_snapshot_blocks::ListSnapshotBlocksError)
            })?;
        Ok(ListSnapshotBlocksResponse {
            blocks: output
                .blocks()
                .iter()
                .map(|entry| Block {
                    block_index: entry.block_index().unwrap_or_default(),
                    block_token: entry.block_token().unwrap_or_default().to_string(),
                })
                .collect(),
            expiry_time: time(output.expiry_time()),
            volume_size: output.volume_size().unwrap_or_default(),
            block_size: output.block_size().unwrap_or_default(),
            next_token: output.next_token().map(str::to_string),
        })
    }

    fn changed(&self, request: ListChangedBlocksRequest) -> Outcome<ListChangedBlocksResponse> {
        let call = self
            .client
            .list_changed_blocks()
            .set_first_snapshot_id(request.first_snapshot_id)
            .second_snapshot_id(request.second_snapshot_id)
            .set_next_token(request.next_token)
            .set_max_results(request.max_results)
            .set_starting_block_index(request.starting_block_index);
        let output =
            self.server.runtime.block_on(call.send()).map_err(|error| {
                sdk_failure!(error, list_changed_blocks::ListChangedBlocksError)
            })?;
        Ok(ListChangedBlocksResponse {
            changed_blocks: output
                .changed_blocks()
                .iter()
                .map(|entry| ChangedBlock {
                    block_index: entry.block_index().unwrap_or_default(),
                    first_block_token: entry.first_block_token().map(str::to_string),
                    second_block_token: entry.second_block_token().map(str::to_string),
                })
                .collect(),
            expiry_time: time(output.expiry_time()),
            volume_size: output.volume_size().unwrap_or_default(),
            block_size: output.block_size().unwrap_or_default(),
            next_token: output.next_token().map(str::to_string),
        })
    }
}

fn put_request(snapshot: &str, index: i32, data: Vec<u8>) -> PutSnapshotBlockRequest {
    blocksnap::testing::put_request(snapshot, index, data)
}

fn expect_failure<T: std::fmt::Debug>(outcome: Outcome<T>, code: &str, reason: Option<&str>) {
    match outcome {
        Ok(value) => panic!("expected {code} ({reason:?}), got {value:?}"),
        Err((found, found_reason)) => {
            assert_eq!((found.as_str(), found_reason.as_deref()), (code, reason));
        }
    }
}

/// A completed snapshot holding `block(seed)` at each `(index, seed)`.
fn completed(ebs: &dyn Client, parent: Option<&str>, writes: &[(i32, u64)]) -> String {
    let snapshot = ebs
        .start(StartSnapshotRequest {
            volume_size: 1,
            parent_snapshot_id: parent.map(str::to_string),
            ..Default::default()
        })
        .expect("start")
        .snapshot_id;
    for (index, seed) in writes {
        ebs.put(put_request(&snapshot, *index, block(*seed)))
            .expect("put");
    }
    ebs.complete(CompleteSnapshotRequest {
        snapshot_id: snapshot.clone(),
        changed_blocks_count: writes.len() as i32,
        ..Default::default()
    })
    .expect("complete");
    snapshot
}

/// Every listed block of a snapshot, page by page.
fn list_all(ebs: &dyn Client, snapshot: &str, page: i32) -> Vec<Block> {
    let mut request = ListSnapshotBlocksRequest {
        snapshot_id: snapshot.to_string(),
        max_results: Some(page),
        ..Default::default()
    };
    let mut blocks = Vec::new();
    loop {
        let reply = ebs.list(request.clone()).expect("list");
        blocks.extend(reply.blocks);
        match reply.next_token {
            Some(token) => request.next_token = Some(token),
            None => return blocks,
        }
    }
}

/// The suite: every operation, pagination, parent and child, changed
/// blocks, idempotency, and the error classes.
fn scenarios(ebs: &dyn Client) {
    let started = ebs
        .start(StartSnapshotRequest {
            volume_size: 1,
            description: Some("scenario".into()),
            tags: vec![Tag {
                key: "k".into(),
                value: "v".into(),
            }],
            client_token: Some("scenario-token".into()),
            timeout: Some(60),
            ..Default::default()
        })
        .expect("start");
    assert_eq!(started.status, Status::Pending);
    assert_eq!(started.block_size, 524_288);
    assert_eq!(started.description.as_deref(), Some("scenario"));
    assert_eq!(started.sse_type, SseType::None);
    let snapshot = started.snapshot_id.clone();
    // Idempotency.
    let again = ebs
        .start(StartSnapshotRequest {
            volume_size: 1,
            description: Some("scenario".into()),
            tags: started.tags.clone(),
            client_token: Some("scenario-token".into()),
            timeout: Some(60),
            ..Default::default()
        })
        .expect("retry");
    assert_eq!(again.snapshot_id, snapshot);
    expect_failure(
        ebs.start(StartSnapshotRequest {
            volume_size: 2,
            client_token: Some("scenario-token".into()),
            ..Default::default()
        }),
        "ConflictException",
        None,
    );
    // 150 blocks: pages of 100.
    let writes: Vec<(i32, u64)> = (0..150)
        .map(|index| (index * 3, index as u64 + 1))
        .collect();
    for (index, seed) in &writes {
        let reply = ebs
            .put(put_request(&snapshot, *index, block(*seed)))
            .expect("put");
        assert_eq!(reply.checksum, checksum(&block(*seed)));
    }
    let mut wrong_count = CompleteSnapshotRequest {
        snapshot_id: snapshot.clone(),
        changed_blocks_count: 149,
        ..Default::default()
    };
    expect_failure(
        ebs.complete(wrong_count.clone()),
        "ValidationException",
        Some("INVALID_PARAMETER_VALUE"),
    );
    wrong_count.changed_blocks_count = 150;
    let blocks: Vec<Vec<u8>> = writes.iter().map(|(_, seed)| block(*seed)).collect();
    wrong_count.checksum = Some(linear_checksum(blocks.iter().map(Vec::as_slice)));
    wrong_count.checksum_algorithm = Some("SHA256".into());
    wrong_count.checksum_aggregation_method = Some("LINEAR".into());
    assert_eq!(
        ebs.complete(wrong_count).expect("complete").status,
        Status::Completed
    );
    let listed = list_all(ebs, &snapshot, 100);
    assert_eq!(
        listed
            .iter()
            .map(|entry| entry.block_index)
            .collect::<Vec<_>>(),
        writes.iter().map(|(index, _)| *index).collect::<Vec<_>>()
    );
    for (entry, (_, seed)) in listed.iter().zip(&writes).step_by(37) {
        let got = ebs
            .get(GetSnapshotBlockRequest {
                snapshot_id: snapshot.clone(),
                block_index: entry.block_index,
                block_token: entry.block_token.clone(),
            })
            .expect("get");
        assert_eq!(got.block_data, Bytes::from(block(*seed)));
        assert_eq!(got.checksum, checksum(&block(*seed)));
        assert_eq!(got.data_length, 524_288);
    }
    // A child and its changes.
    let child = completed(ebs, Some(&snapshot), &[(3, 900), (1000, 901)]);
    let changed = ebs
        .changed(ListChangedBlocksRequest {
            first_snapshot_id: Some(snapshot.clone()),
            second_snapshot_id: child.clone(),
            ..Default::default()
        })
        .expect("changed");
    let indexes: Vec<i32> = changed
        .changed_blocks
        .iter()
        .map(|c| c.block_index)
        .collect();
    assert_eq!(indexes, vec![3, 1000]);
    assert!(changed.changed_blocks[0].first_block_token.is_some());
    assert!(changed.changed_blocks[1].first_block_token.is_none());
    assert_eq!(list_all(ebs, &child, 1000).len(), 151);
    // Error classes.
    expect_failure(
        ebs.list(ListSnapshotBlocksRequest {
            snapshot_id: "snap-0123456789abcdef".into(),
            ..Default::default()
        }),
        "ResourceNotFoundException",
        Some("SNAPSHOT_NOT_FOUND"),
    );
    expect_failure(
        ebs.start(StartSnapshotRequest {
            volume_size: 70_000,
            ..Default::default()
        }),
        "ValidationException",
        Some("INVALID_VOLUME_SIZE"),
    );
    let unrelated = completed(ebs, None, &[(0, 5)]);
    expect_failure(
        ebs.changed(ListChangedBlocksRequest {
            first_snapshot_id: Some(snapshot.clone()),
            second_snapshot_id: unrelated.clone(),
            ..Default::default()
        }),
        "ValidationException",
        Some("UNRELATED_SNAPSHOTS"),
    );
    expect_failure(
        ebs.get(GetSnapshotBlockRequest {
            snapshot_id: unrelated.clone(),
            block_index: 0,
            block_token: "AAAA".into(),
        }),
        "ValidationException",
        Some("INVALID_BLOCK_TOKEN"),
    );
    expect_failure(
        ebs.list(ListSnapshotBlocksRequest {
            snapshot_id: unrelated,
            next_token: Some("AAAA".into()),
            ..Default::default()
        }),
        "ValidationException",
        Some("INVALID_PAGE_TOKEN"),
    );
    let pending = ebs
        .start(StartSnapshotRequest {
            volume_size: 1,
            ..Default::default()
        })
        .expect("start")
        .snapshot_id;
    let mut bad = put_request(&pending, 0, block(7));
    bad.checksum = checksum(&block(8));
    expect_failure(ebs.put(bad), "ValidationException", Some("INVALID_BLOCK"));
    expect_failure(
        ebs.put(put_request(&pending, 2048, block(7))),
        "ValidationException",
        Some("INVALID_BLOCK"),
    );
    expect_failure(
        ebs.start(StartSnapshotRequest {
            volume_size: 1,
            encrypted: Some(true),
            ..Default::default()
        }),
        "ValidationException",
        Some("INVALID_CUSTOMER_KEY"),
    );
}

#[test]
fn scenarios_in_process() {
    let engine = Engine::open_with(
        Arc::new(blocksnap::storage::MemoryStorage::new()),
        EngineConfig::default(),
    )
    .expect("open");
    scenarios(&engine);
}

#[test]
fn scenarios_over_http_with_the_aws_sdk_for_rust() {
    scenarios(&Sdk::new());
}

#[test]
fn scenarios_in_process_on_a_bucket_store() {
    let local = tempfile::tempdir().expect("tempdir");
    let bucket = test_client(Arc::new(MemoryObjectStore::new()));
    let storage =
        BucketStorage::open(bucket, local.path(), BucketOptions::default()).expect("bucket store");
    let engine = Engine::open_with(Arc::new(storage), EngineConfig::default()).expect("open");
    scenarios(&engine);
}

/// `serve` on a store in SeaweedFS, driven by the AWS SDK for Rust.
#[test]
fn scenarios_over_http_on_a_bucket_store_in_seaweedfs() {
    let seaweedfs = S3Server::seaweedfs();
    let local = tempfile::tempdir().expect("tempdir");
    let bucket = test_client(Arc::new(seaweedfs.store("served")));
    let storage =
        BucketStorage::open(bucket, local.path(), BucketOptions::default()).expect("bucket store");
    scenarios(&Sdk::over(Some((Arc::new(storage), local))));
}
