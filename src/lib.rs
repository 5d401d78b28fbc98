//! blocksnap: a block-level snapshot storage engine with the AWS EBS direct API.
//!
//! A volume is cut into 512 KiB blocks; blocks go into a content-addressed
//! store (blake3 ids, zstd, crc32-framed append-only packs) where identical
//! data is kept once, and each snapshot's map of block index -> chunk is a
//! copy-on-write hash tree shared with its parent. The API is the EBS direct
//! API: [`Engine::start_snapshot`], [`Engine::put_snapshot_block`],
//! [`Engine::complete_snapshot`], [`Engine::get_snapshot_block`],
//! [`Engine::list_snapshot_blocks`] and [`Engine::list_changed_blocks`].
//!
//! ```
//! use base64::Engine as _;
//! use blocksnap::{api::*, Engine};
//! use sha2::Digest;
//!
//! # fn main() -> Result<(), blocksnap::Error> {
//! let dir = tempfile::tempdir().expect("temporary directory");
//! let engine = Engine::open(dir.path())?;
//! let snapshot = engine.start_snapshot(StartSnapshotRequest { volume_size: 1, ..Default::default() })?;
//!
//! let block = vec![7u8; 524288];
//! let checksum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&block));
//! engine.put_snapshot_block(PutSnapshotBlockRequest {
//!     snapshot_id: snapshot.snapshot_id.clone(),
//!     block_index: 3,
//!     block_data: block.clone().into(),
//!     data_length: 524288,
//!     checksum: checksum.clone(),
//!     checksum_algorithm: "SHA256".into(),
//!     ..Default::default()
//! })?;
//! engine.complete_snapshot(CompleteSnapshotRequest {
//!     snapshot_id: snapshot.snapshot_id.clone(),
//!     changed_blocks_count: 1,
//!     ..Default::default()
//! })?;
//!
//! let listed = engine.list_snapshot_blocks(ListSnapshotBlocksRequest {
//!     snapshot_id: snapshot.snapshot_id.clone(),
//!     ..Default::default()
//! })?;
//! let read = engine.get_snapshot_block(GetSnapshotBlockRequest {
//!     snapshot_id: snapshot.snapshot_id,
//!     block_index: listed.blocks[0].block_index,
//!     block_token: listed.blocks[0].block_token.clone(),
//! })?;
//! assert_eq!(read.block_data, block);
//! assert_eq!(read.checksum, checksum);
//! # Ok(())
//! # }
//! ```

#![deny(clippy::unwrap_used)]

pub mod api;
pub mod blockmap;
pub mod catalog;
pub mod chunkstore;
pub mod clock;
pub mod codec;
pub mod engine;
pub mod error;
pub mod format;
pub mod ids;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;

pub use engine::{Engine, EngineConfig, PutDurability};
pub use error::{Error, Result, ValidationReason};
