//! Helpers shared by integration tests (each test file that needs them
//! declares `mod support;`).

pub mod interrupt;
pub mod s3_servers;
