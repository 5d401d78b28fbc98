//! Changed-block lists: ascending, distinct, inside the image, or an error; memory bounded by the image.
//! The checks live in `blocksnap::testing::fuzz::changed_blocks`, which the regression
//! tests replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blocksnap::testing::fuzz::changed_blocks(data));
