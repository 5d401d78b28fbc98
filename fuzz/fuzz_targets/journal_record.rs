//! Journal records: decoding never panics; a decoded record re-encodes exactly.
#![no_main]

use blocksnap::format::journal::JournalRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = JournalRecord::decode(data) {
        assert_eq!(&record.encode()[..], data);
    }
});
