//! The EBS direct API façade over an [`Engine`]: [`Ebs`], with the model's
//! request and response shapes, every validation rule, tokens, and the one
//! map from [`Error`] to EBS error classes ([`ebs_error`]). Nothing else:
//! each operation validates its request, calls the engine's typed
//! operation, and shapes the answer.
//!
//! Each operation exists synchronously (for agents without a runtime) and as
//! an `_async` method that runs on tokio's blocking pool.

pub mod ec2;
mod errors;
mod extensions;
mod tokens;
mod types;
pub mod validate;

pub use errors::{ebs_error, EbsError};
pub use tokens::{BLOCK_TOKEN_LIFETIME_SECS, MAX_TOKEN_LEN, PAGE_TOKEN_LIFETIME_SECS};
pub use types::*;

use crate::catalog::{SnapshotRecord, SnapshotState};
use crate::clock::millis_to_system_time;
use crate::engine::{Engine, SnapshotReader};
use crate::error::{Error, Result, ValidationReason};
use crate::format::catalog::SseKind;
use crate::format::token::TokenBody;
use crate::ids::{BlockIndex, Sha256Digest, SnapshotId};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tokens::{TokenSigner, PAGE_KIND_CHANGED, PAGE_KIND_LIST};

pub(crate) fn status_of(record: &SnapshotRecord) -> Status {
    match record.state {
        SnapshotState::Pending => Status::Pending,
        SnapshotState::Completed { .. } => Status::Completed,
        SnapshotState::Error { .. } => Status::Error,
    }
}

/// A snapshot's tags in the API's shape.
pub(crate) fn tags_of(started: &crate::format::catalog::StartedRecord) -> Vec<Tag> {
    started
        .tags
        .iter()
        .map(|(key, value)| Tag {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// A snapshot's tags after an edit (EC2's CreateTags and DeleteTags,
/// `blocksnap tag`): each of `set` replaces the value of its key where
/// that key is, or is appended; then every tag `remove` names goes (a key,
/// and the value it must have when one is given). More than
/// [`validate::MAX_TAGS`] tags after the edit is an `InvalidTag` error
/// naming `snapshot`.
pub fn edit_tags(
    snapshot: crate::ids::SnapshotId,
    current: &[(String, String)],
    set: &[Tag],
    remove: &[(String, Option<String>)],
) -> crate::error::Result<Vec<(String, String)>> {
    let mut tags = current.to_vec();
    for tag in set {
        match tags.iter_mut().find(|(key, _)| *key == tag.key) {
            Some((_, value)) => value.clone_from(&tag.value),
            None => tags.push((tag.key.clone(), tag.value.clone())),
        }
    }
    tags.retain(|(key, value)| {
        !remove
            .iter()
            .any(|(doomed, only)| doomed == key && only.as_ref().is_none_or(|only| only == value))
    });
    if tags.len() > validate::MAX_TAGS {
        return Err(crate::error::Error::invalid(
            crate::error::ValidationReason::InvalidTag,
            format!(
                "The snapshot {snapshot} would have {} tags; at most {} are allowed.",
                tags.len(),
                validate::MAX_TAGS
            ),
        ));
    }
    Ok(tags)
}

pub(crate) fn start_response(record: &SnapshotRecord) -> StartSnapshotResponse {
    let started = &record.started;
    StartSnapshotResponse {
        description: started.description.clone(),
        snapshot_id: started.snapshot.to_string(),
        owner_id: started.owner.clone(),
        status: status_of(record),
        start_time: millis_to_system_time(started.start_millis),
        volume_size: started.volume_size_gib as i64,
        block_size: BLOCK_SIZE_BYTES,
        tags: tags_of(started),
        parent_snapshot_id: started.parent.map(|parent| parent.to_string()),
        // A plain snapshot's key name is its owner's dedup domain: internal.
        kms_key_arn: started
            .kms_key_arn
            .clone()
            .filter(|_| started.sse != SseKind::None),
        sse_type: match started.sse {
            SseKind::None => SseType::None,
            SseKind::SseEbs => SseType::SseEbs,
            SseKind::SseKms => SseType::SseKms,
        },
    }
}

/// Where a listing starts: the page token's position (bound to the same
/// listing) or StartingBlockIndex.
fn listing_start(
    signer: &TokenSigner,
    now_secs: u64,
    next_token: Option<&str>,
    starting_block_index: Option<i32>,
    expected_kind: u8,
    snapshot: SnapshotId,
    other: Option<SnapshotId>,
) -> Result<BlockIndex> {
    let Some(token) = next_token else {
        return validate::starting_block_index(starting_block_index).map(BlockIndex);
    };
    match signer.check(token, now_secs, ValidationReason::InvalidPageToken)? {
        TokenBody::Page {
            kind,
            snapshot: token_snapshot,
            other: token_other,
            next_index,
            ..
        } if kind == expected_kind
            && token_snapshot == snapshot.0
            && token_other == other.map_or(0, |id| id.0) =>
        {
            Ok(BlockIndex(next_index))
        }
        _ => Err(Error::invalid(
            ValidationReason::InvalidPageToken,
            "The page token belongs to another listing.",
        )),
    }
}

/// The timestamps and signer a listing needs.
struct ListingClock {
    signer: TokenSigner,
    now_secs: u64,
    block_expiry_secs: u64,
}

impl ListingClock {
    fn block_token(&self, snapshot: SnapshotId, index: BlockIndex) -> String {
        self.signer.issue(&TokenBody::Block {
            snapshot: snapshot.0,
            index: index.0,
            expiry_secs: self.block_expiry_secs,
        })
    }

    fn page_token(
        &self,
        kind: u8,
        snapshot: SnapshotId,
        other: Option<SnapshotId>,
        next: Option<BlockIndex>,
    ) -> Option<String> {
        next.map(|next| {
            self.signer.issue(&TokenBody::Page {
                kind,
                snapshot: snapshot.0,
                other: other.map_or(0, |id| id.0),
                next_index: next.0,
                expiry_secs: self.now_secs + PAGE_TOKEN_LIFETIME_SECS,
            })
        })
    }

    fn expiry_time(&self) -> Option<std::time::SystemTime> {
        Some(millis_to_system_time(self.block_expiry_secs * 1000))
    }
}

/// The EBS direct API over an engine, acting for the engine's owner
/// ([`Engine::as_owner`]). Cheap to make: one per call is fine.
#[derive(Clone, Copy, Debug)]
pub struct Ebs<'e> {
    engine: &'e Engine,
}

impl<'e> Ebs<'e> {
    /// The EBS operations on `engine`'s store, as `engine`'s owner.
    pub fn new(engine: &'e Engine) -> Ebs<'e> {
        Ebs { engine }
    }

    /// The engine underneath.
    pub fn engine(&self) -> &'e Engine {
        self.engine
    }

    fn listing_clock(&self) -> ListingClock {
        let now_secs = self.engine.now_millis() / 1000;
        ListingClock {
            signer: TokenSigner::new(self.engine.token_secret()),
            now_secs,
            block_expiry_secs: now_secs + BLOCK_TOKEN_LIFETIME_SECS,
        }
    }

    /// StartSnapshot: creates a pending snapshot (or returns the one an
    /// identical request with the same ClientToken created).
    pub fn start_snapshot(&self, request: StartSnapshotRequest) -> Result<StartSnapshotResponse> {
        let parameters = validate::start_snapshot(&request)?;
        let record = self.engine.start(parameters)?;
        Ok(start_response(&record))
    }

    /// PutSnapshotBlock: writes one 512 KiB block to a pending snapshot after
    /// verifying its SHA-256.
    pub fn put_snapshot_block(
        &self,
        request: PutSnapshotBlockRequest,
    ) -> Result<PutSnapshotBlockResponse> {
        self.put_snapshot_block_hashed(request, None)
    }

    /// [`Ebs::put_snapshot_block`] given the SHA-256 the caller computed
    /// from `request.block_data` itself (`None`: hashed here).
    fn put_snapshot_block_hashed(
        &self,
        request: PutSnapshotBlockRequest,
        data_sha256: Option<Sha256Digest>,
    ) -> Result<PutSnapshotBlockResponse> {
        let snapshot = validate::snapshot_id("SnapshotId", &request.snapshot_id)?;
        let index = validate::block_index(request.block_index)?;
        validate::checksum_algorithm(&request.checksum_algorithm)?;
        let expected = validate::checksum("Checksum", &request.checksum)?;
        validate::block_shape(
            request.data_length,
            request.block_data.len(),
            request.progress,
        )?;
        self.engine.put_block_hashed(
            snapshot,
            BlockIndex(index),
            &request.block_data,
            &expected,
            data_sha256,
        )?;
        Ok(PutSnapshotBlockResponse {
            checksum: request.checksum,
            checksum_algorithm: request.checksum_algorithm,
        })
    }

    /// CompleteSnapshot: seals a pending snapshot. A count or aggregate
    /// mismatch is a ValidationException and leaves the snapshot pending.
    pub fn complete_snapshot(
        &self,
        request: CompleteSnapshotRequest,
    ) -> Result<CompleteSnapshotResponse> {
        let snapshot = validate::snapshot_id("SnapshotId", &request.snapshot_id)?;
        let changed_blocks = u32::try_from(request.changed_blocks_count).map_err(|_| {
            Error::invalid(
                ValidationReason::InvalidParameterValue,
                "ChangedBlocksCount must not be negative.",
            )
        })?;
        if let Some(algorithm) = &request.checksum_algorithm {
            validate::checksum_algorithm(algorithm)?;
        }
        if let Some(method) = &request.checksum_aggregation_method {
            if method != "LINEAR" {
                return Err(Error::invalid(
                    ValidationReason::InvalidParameterValue,
                    format!("ChecksumAggregationMethod '{method}' is not supported; use LINEAR."),
                ));
            }
        }
        let aggregate = match &request.checksum {
            None => None,
            Some(checksum) => {
                if request.checksum_algorithm.is_none()
                    || request.checksum_aggregation_method.is_none()
                {
                    return Err(Error::invalid(
                        ValidationReason::InvalidParameterValue,
                        "Checksum requires ChecksumAlgorithm SHA256 and ChecksumAggregationMethod LINEAR.",
                    ));
                }
                Some(validate::checksum("Checksum", checksum)?)
            }
        };
        let record = self.engine.complete(snapshot, changed_blocks, aggregate)?;
        Ok(CompleteSnapshotResponse {
            status: status_of(&record),
        })
    }

    /// GetSnapshotBlock: reads one block of a completed snapshot.
    pub fn get_snapshot_block(
        &self,
        request: GetSnapshotBlockRequest,
    ) -> Result<GetSnapshotBlockResponse> {
        let snapshot = validate::snapshot_id("SnapshotId", &request.snapshot_id)?;
        let index = BlockIndex(validate::block_index(request.block_index)?);
        let reader = self.engine.reader(snapshot)?;
        let clock = self.listing_clock();
        let bound = matches!(
            clock.signer.check(&request.block_token, clock.now_secs, ValidationReason::InvalidBlockToken)?,
            TokenBody::Block { snapshot: token_snapshot, index: token_index, .. }
                if token_snapshot == snapshot.0 && token_index == index.0
        );
        let mismatch = || {
            Error::invalid(
                ValidationReason::InvalidBlockToken,
                "The block token does not belong to this block.",
            )
        };
        if !bound {
            return Err(mismatch());
        }
        let (data, sha256) = reader.block(index)?.ok_or_else(mismatch)?;
        Ok(GetSnapshotBlockResponse {
            data_length: BLOCK_SIZE_BYTES,
            block_data: data,
            checksum: STANDARD.encode(sha256.0),
            checksum_algorithm: "SHA256".to_string(),
        })
    }

    /// ListSnapshotBlocks: the written blocks of a completed snapshot,
    /// inherited ones included, ascending.
    pub fn list_snapshot_blocks(
        &self,
        request: ListSnapshotBlocksRequest,
    ) -> Result<ListSnapshotBlocksResponse> {
        let snapshot = validate::snapshot_id("SnapshotId", &request.snapshot_id)?;
        let limit = validate::max_results(request.max_results)?;
        let reader = self.engine.reader(snapshot)?;
        let clock = self.listing_clock();
        let start = listing_start(
            &clock.signer,
            clock.now_secs,
            request.next_token.as_deref(),
            request.starting_block_index,
            PAGE_KIND_LIST,
            snapshot,
            None,
        )?;
        let page = reader.blocks(start, limit)?;
        Ok(ListSnapshotBlocksResponse {
            blocks: page
                .entries
                .iter()
                .map(|(index, _)| Block {
                    block_index: index.0 as i32,
                    block_token: clock.block_token(snapshot, *index),
                })
                .collect(),
            expiry_time: clock.expiry_time(),
            volume_size: reader.volume_size_gib() as i64,
            block_size: BLOCK_SIZE_BYTES,
            next_token: clock.page_token(PAGE_KIND_LIST, snapshot, None, page.next),
        })
    }

    /// ListChangedBlocks: indexes whose data differs between two completed
    /// snapshots of one lineage (either order). Without FirstSnapshotId every
    /// written block of the second snapshot is listed, with SecondBlockToken only.
    pub fn list_changed_blocks(
        &self,
        request: ListChangedBlocksRequest,
    ) -> Result<ListChangedBlocksResponse> {
        let second = validate::snapshot_id("SecondSnapshotId", &request.second_snapshot_id)?;
        let first = request
            .first_snapshot_id
            .as_deref()
            .map(|id| validate::snapshot_id("FirstSnapshotId", id))
            .transpose()?;
        let limit = validate::max_results(request.max_results)?;
        let second_reader = self.engine.reader(second)?;
        let first_reader: Option<SnapshotReader> =
            first.map(|first| self.engine.reader(first)).transpose()?;
        let clock = self.listing_clock();
        let start = listing_start(
            &clock.signer,
            clock.now_secs,
            request.next_token.as_deref(),
            request.starting_block_index,
            PAGE_KIND_CHANGED,
            second,
            first,
        )?;
        let page = second_reader.changes_since(first_reader.as_ref(), start, limit)?;
        let changed_blocks = page
            .entries
            .iter()
            .map(|entry| ChangedBlock {
                block_index: entry.index.0 as i32,
                first_block_token: match (first, entry.first) {
                    (Some(first), Some(_)) => Some(clock.block_token(first, entry.index)),
                    _ => None,
                },
                second_block_token: entry.second.map(|_| clock.block_token(second, entry.index)),
            })
            .collect();
        Ok(ListChangedBlocksResponse {
            changed_blocks,
            expiry_time: clock.expiry_time(),
            volume_size: second_reader.volume_size_gib() as i64,
            block_size: BLOCK_SIZE_BYTES,
            next_token: clock.page_token(PAGE_KIND_CHANGED, second, first, page.next),
        })
    }

    /// [`Ebs::start_snapshot`] on tokio's blocking pool.
    pub async fn start_snapshot_async(
        &self,
        request: StartSnapshotRequest,
    ) -> Result<StartSnapshotResponse> {
        self.engine
            .run_blocking(move |engine| Ebs::new(engine).start_snapshot(request))
            .await
    }

    /// [`Ebs::put_snapshot_block`] on tokio's blocking pool.
    pub async fn put_snapshot_block_async(
        &self,
        request: PutSnapshotBlockRequest,
    ) -> Result<PutSnapshotBlockResponse> {
        self.engine
            .run_blocking(move |engine| Ebs::new(engine).put_snapshot_block(request))
            .await
    }

    /// [`Ebs::put_snapshot_block_async`] for a block whose SHA-256 the
    /// caller computed from `request.block_data` itself (the server, which
    /// checks a signed body's hash with it): hashed once, not twice.
    pub(crate) async fn put_snapshot_block_hashed_async(
        &self,
        request: PutSnapshotBlockRequest,
        data_sha256: Sha256Digest,
    ) -> Result<PutSnapshotBlockResponse> {
        self.engine
            .run_blocking(move |engine| {
                Ebs::new(engine).put_snapshot_block_hashed(request, Some(data_sha256))
            })
            .await
    }

    /// [`Ebs::complete_snapshot`] on tokio's blocking pool.
    pub async fn complete_snapshot_async(
        &self,
        request: CompleteSnapshotRequest,
    ) -> Result<CompleteSnapshotResponse> {
        self.engine
            .run_blocking(move |engine| Ebs::new(engine).complete_snapshot(request))
            .await
    }

    /// [`Ebs::get_snapshot_block`] on tokio's blocking pool.
    pub async fn get_snapshot_block_async(
        &self,
        request: GetSnapshotBlockRequest,
    ) -> Result<GetSnapshotBlockResponse> {
        self.engine
            .run_blocking(move |engine| Ebs::new(engine).get_snapshot_block(request))
            .await
    }

    /// [`Ebs::list_snapshot_blocks`] on tokio's blocking pool.
    pub async fn list_snapshot_blocks_async(
        &self,
        request: ListSnapshotBlocksRequest,
    ) -> Result<ListSnapshotBlocksResponse> {
        self.engine
            .run_blocking(move |engine| Ebs::new(engine).list_snapshot_blocks(request))
            .await
    }

    /// [`Ebs::list_changed_blocks`] on tokio's blocking pool.
    pub async fn list_changed_blocks_async(
        &self,
        request: ListChangedBlocksRequest,
    ) -> Result<ListChangedBlocksResponse> {
        self.engine
            .run_blocking(move |engine| Ebs::new(engine).list_changed_blocks(request))
            .await
    }
}
