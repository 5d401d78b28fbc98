//! Catalog frames: decoding never panics; a decoded frame re-encodes exactly.
#![no_main]

use blocksnap::format::catalog::CatalogRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((record, length)) = CatalogRecord::decode_frame(data) {
        assert_eq!(record.encode_frame().expect("encodes"), &data[..length]);
    }
});
