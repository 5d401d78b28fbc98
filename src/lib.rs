#![doc = include_str!("../README.md")]
#![deny(clippy::unwrap_used)]

pub mod api;
pub mod archive;
pub mod blockmap;
pub mod catalog;
pub mod chunkstore;
pub mod clock;
pub mod codec;
pub mod crypto;
pub mod engine;
pub mod error;
pub mod format;
pub mod ids;
pub mod keys;
#[cfg(feature = "nbd")]
pub mod nbd;
#[cfg(feature = "server")]
pub mod server;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
pub mod volume;

pub use engine::{Engine, EngineConfig, PutDurability};
pub use error::{Error, Result, ValidationReason};
