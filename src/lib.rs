//! blocksnap: a block-level snapshot storage engine with the AWS EBS direct API.

#![deny(clippy::unwrap_used)]

pub mod blockmap;
pub mod catalog;
pub mod chunkstore;
pub mod clock;
pub mod codec;
pub mod error;
pub mod format;
pub mod ids;
pub mod storage;
