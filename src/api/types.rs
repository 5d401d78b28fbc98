//! Request and response shapes, named and typed after the EBS service model
//! (`ebs` 2019-11-02). Member names are the model's, in snake case.

use bytes::Bytes;
use std::time::SystemTime;

/// The fixed block size every response reports.
pub const BLOCK_SIZE_BYTES: i32 = crate::ids::BLOCK_SIZE as i32;

/// A snapshot tag.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Tag {
    /// Key, 1..=127 characters.
    pub key: String,
    /// Value, 0..=255 characters.
    pub value: String,
}

/// Snapshot status (`Status` enum).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Status {
    /// Sealed and readable.
    Completed,
    /// Accepting blocks.
    Pending,
    /// Cancelled or failed.
    Error,
}

impl Status {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Pending => "pending",
            Status::Error => "error",
        }
    }
}

/// Server-side encryption type (`SSEType` enum).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SseType {
    /// Encrypted with the default key.
    SseEbs,
    /// Encrypted with a named key.
    SseKms,
    /// Not encrypted.
    None,
}

impl SseType {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            SseType::SseEbs => "sse-ebs",
            SseType::SseKms => "sse-kms",
            SseType::None => "none",
        }
    }
}

/// `StartSnapshot` input.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct StartSnapshotRequest {
    /// Volume size in GiB, 1..=65536 (required).
    pub volume_size: i64,
    /// Parent snapshot for an incremental snapshot.
    pub parent_snapshot_id: Option<String>,
    /// Up to 50 tags.
    pub tags: Vec<Tag>,
    /// Up to 255 characters.
    pub description: Option<String>,
    /// Idempotency token.
    pub client_token: Option<String>,
    /// Encrypt the snapshot.
    pub encrypted: Option<bool>,
    /// Named encryption key.
    pub kms_key_arn: Option<String>,
    /// Inactivity timeout in minutes, 10..=4320, default 60.
    pub timeout: Option<i32>,
}

/// `StartSnapshot` output.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StartSnapshotResponse {
    /// Description.
    pub description: Option<String>,
    /// The new snapshot's id.
    pub snapshot_id: String,
    /// Owning account.
    pub owner_id: String,
    /// Always `pending` for a new snapshot.
    pub status: Status,
    /// When it started.
    pub start_time: SystemTime,
    /// Volume size in GiB.
    pub volume_size: i64,
    /// 524288.
    pub block_size: i32,
    /// Tags.
    pub tags: Vec<Tag>,
    /// Parent snapshot.
    pub parent_snapshot_id: Option<String>,
    /// Named encryption key.
    pub kms_key_arn: Option<String>,
    /// Encryption type.
    pub sse_type: SseType,
}

/// `PutSnapshotBlock` input.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PutSnapshotBlockRequest {
    /// Target snapshot (pending).
    pub snapshot_id: String,
    /// Block index, below VolumeSize x 2048.
    pub block_index: i32,
    /// The block's 524288 bytes.
    pub block_data: Bytes,
    /// Must be 524288.
    pub data_length: i32,
    /// Upload progress, 0..=100.
    pub progress: Option<i32>,
    /// Base64 SHA-256 of `block_data`.
    pub checksum: String,
    /// Must be `SHA256`.
    pub checksum_algorithm: String,
}

/// `PutSnapshotBlock` output.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PutSnapshotBlockResponse {
    /// The verified checksum.
    pub checksum: String,
    /// `SHA256`.
    pub checksum_algorithm: String,
}

/// `CompleteSnapshot` input.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CompleteSnapshotRequest {
    /// The snapshot to seal.
    pub snapshot_id: String,
    /// Distinct blocks written to this snapshot.
    pub changed_blocks_count: i32,
    /// Base64 LINEAR aggregate checksum.
    pub checksum: Option<String>,
    /// `SHA256`.
    pub checksum_algorithm: Option<String>,
    /// `LINEAR`.
    pub checksum_aggregation_method: Option<String>,
}

/// `CompleteSnapshot` output.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CompleteSnapshotResponse {
    /// The snapshot's status: `completed` (sealing is synchronous).
    pub status: Status,
}

/// `GetSnapshotBlock` input.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct GetSnapshotBlockRequest {
    /// A completed snapshot.
    pub snapshot_id: String,
    /// The block index.
    pub block_index: i32,
    /// A token from ListSnapshotBlocks or ListChangedBlocks.
    pub block_token: String,
}

/// `GetSnapshotBlock` output.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GetSnapshotBlockResponse {
    /// 524288.
    pub data_length: i32,
    /// The block's bytes.
    pub block_data: Bytes,
    /// Base64 SHA-256 of `block_data`.
    pub checksum: String,
    /// `SHA256`.
    pub checksum_algorithm: String,
}

/// `ListSnapshotBlocks` input.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ListSnapshotBlocksRequest {
    /// A completed snapshot.
    pub snapshot_id: String,
    /// Page token from a previous response (`pageToken` on the wire).
    pub next_token: Option<String>,
    /// Entries per page, 100..=10000 (smaller values are raised to 100).
    pub max_results: Option<i32>,
    /// First index to list (ignored with `next_token`).
    pub starting_block_index: Option<i32>,
}

/// One listed block.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Block {
    /// Its index.
    pub block_index: i32,
    /// Token for GetSnapshotBlock.
    pub block_token: String,
}

/// `ListSnapshotBlocks` output.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ListSnapshotBlocksResponse {
    /// Written blocks, ascending.
    pub blocks: Vec<Block>,
    /// When the block tokens expire.
    pub expiry_time: Option<SystemTime>,
    /// Volume size in GiB.
    pub volume_size: i64,
    /// 524288.
    pub block_size: i32,
    /// Present when more entries may follow.
    pub next_token: Option<String>,
}

/// `ListChangedBlocks` input.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ListChangedBlocksRequest {
    /// The earlier (or other) snapshot; without it every block of the
    /// second snapshot is listed as changed.
    pub first_snapshot_id: Option<String>,
    /// The snapshot whose changes are listed.
    pub second_snapshot_id: String,
    /// Page token (`pageToken` on the wire).
    pub next_token: Option<String>,
    /// Entries per page, 100..=10000 (smaller values are raised to 100).
    pub max_results: Option<i32>,
    /// First index to compare (ignored with `next_token`).
    pub starting_block_index: Option<i32>,
}

/// One changed block.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChangedBlock {
    /// Its index.
    pub block_index: i32,
    /// Token of the first snapshot's block, if it has one.
    pub first_block_token: Option<String>,
    /// Token of the second snapshot's block, if it has one.
    pub second_block_token: Option<String>,
}

/// `ListChangedBlocks` output.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ListChangedBlocksResponse {
    /// Changed blocks, ascending.
    pub changed_blocks: Vec<ChangedBlock>,
    /// When the block tokens expire.
    pub expiry_time: Option<SystemTime>,
    /// Volume size in GiB of the second snapshot.
    pub volume_size: i64,
    /// 524288.
    pub block_size: i32,
    /// Present when more entries may follow.
    pub next_token: Option<String>,
}

/// `CancelSnapshot` input (an extension beyond the EBS API).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CancelSnapshotRequest {
    /// A pending snapshot.
    pub snapshot_id: String,
}

/// `CancelSnapshot` output.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CancelSnapshotResponse {
    /// The snapshot's status: `error`.
    pub status: Status,
}

/// `DeleteSnapshot` input (an extension beyond the EBS direct API; EC2 has
/// the operation of this name).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct DeleteSnapshotRequest {
    /// A completed or failed snapshot.
    pub snapshot_id: String,
}

/// `DescribeSnapshot` input (an extension beyond the EBS direct API).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct DescribeSnapshotRequest {
    /// Any snapshot of the caller's.
    pub snapshot_id: String,
}

/// `DescribeSnapshot` output: a snapshot's parameters and where it is in
/// its lifecycle.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotDescription {
    /// What StartSnapshot answered, with the current status.
    pub snapshot: StartSnapshotResponse,
    /// The inactivity timeout in minutes.
    pub timeout: i32,
    /// Pending: when it is cancelled unless a block is written first.
    pub deadline: Option<SystemTime>,
    /// Completed: when.
    pub completion_time: Option<SystemTime>,
    /// Completed: the distinct blocks written in this snapshot itself.
    pub changed_blocks_count: Option<i64>,
    /// Error: when it left `pending`.
    pub error_time: Option<SystemTime>,
    /// Error: why (timeout or cancellation).
    pub error_reason: Option<String>,
}
