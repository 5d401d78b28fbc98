//! A bucket store's head object: decoding never panics; a decoded head
//! re-encodes exactly.
#![no_main]

use blocksnap::format::head::Head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = Head::decode(data) {
        assert_eq!(head.encode().expect("encodes"), data);
    }
});
