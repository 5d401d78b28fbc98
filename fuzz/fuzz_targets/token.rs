//! Block and page tokens: decoding never panics; the authenticated part of a
//! decoded token re-encodes exactly.
#![no_main]

use blocksnap::format::token::TokenBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((body, signed, _mac)) = TokenBody::decode(data) {
        assert_eq!(body.encode(), signed);
    }
});
