//! Journal records: decoding never panics, in either layout; a decoded
//! timed record re-encodes exactly.
#![no_main]

use blocksnap::format::journal::{JournalRecord, JOURNAL_FLAG_TIMED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = JournalRecord::decode(data, JOURNAL_FLAG_TIMED) {
        assert_eq!(&record.encode()[..], data);
    }
    if let Ok(record) = JournalRecord::decode(data, 0) {
        assert_eq!(record.put_millis, None);
    }
});
