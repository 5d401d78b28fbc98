//! Archive manifests: parsed and checked, or refused as an invalid archive.
//! The checks live in `blocksnap::testing::fuzz::archive_manifest`, which the regression
//! tests replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blocksnap::testing::fuzz::archive_manifest(data));
