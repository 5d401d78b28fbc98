//! Pack records, plain and encrypted: decoding never panics, and whatever
//! verifies re-encodes to the same bytes (domain and seal included).
#![no_main]

use blocksnap::format::pack::{decode_record, encode_copy_header, RECORD_HEADER_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, payload)) = decode_record(data) {
        let encoded = encode_copy_header(&header, payload);
        assert_eq!(&encoded[..], &data[..RECORD_HEADER_SIZE]);
        assert_eq!(payload.len(), header.payload_len as usize);
    }
});
