//! Pack indexes: decoding never panics; a decoded index re-encodes exactly.
#![no_main]

use blocksnap::format::index::{decode_index, encode_index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((pack, entries)) = decode_index(data) {
        assert_eq!(encode_index(pack, &entries).expect("encodes"), data);
    }
});
