//! The store header: decoding never panics; a decoded header re-encodes exactly.
#![no_main]

use blocksnap::format::store::StoreHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = StoreHeader::decode(data) {
        assert_eq!(header.encode(), data);
    }
});
