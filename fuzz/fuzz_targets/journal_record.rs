//! Journal records and entries: decoding never panics, in every layout; a
//! decoded timed record re-encodes exactly, and a paired entry decodes to
//! the record either verifying copy holds.
#![no_main]

use blocksnap::format::journal::{JournalRecord, JOURNAL_FLAG_PAIRED, JOURNAL_FLAG_TIMED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = JournalRecord::decode(data, JOURNAL_FLAG_TIMED) {
        assert_eq!(&record.encode()[..], data);
    }
    if let Ok(record) = JournalRecord::decode(data, 0) {
        assert_eq!(record.put_millis, None);
    }
    let paired = JOURNAL_FLAG_TIMED | JOURNAL_FLAG_PAIRED;
    if let Ok((record, failed)) = JournalRecord::decode_entry(data, paired) {
        assert!(failed < 3);
        let copies: Vec<_> = data
            .chunks_exact(JournalRecord::size(paired))
            .map(|copy| JournalRecord::decode(copy, paired).ok())
            .collect();
        assert_eq!(copies.into_iter().flatten().next(), Some(record));
    }
});
