//! Compaction markers: decoding never panics; a decoded marker re-encodes
//! exactly.
#![no_main]

use blocksnap::format::compaction::{decode_marker, encode_marker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((output, sources)) = decode_marker(data) {
        assert_eq!(encode_marker(output, &sources).expect("encodes"), data);
    }
});
