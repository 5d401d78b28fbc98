//! The store keyring and the key file's clear header and table: decoding
//! never panics; a decoded keyring or table re-encodes exactly.
#![no_main]

use blocksnap::format::keyfile::{KeyFileHeader, KeyTable};
use blocksnap::format::keyring::{decode_keyring, encode_keyring};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = decode_keyring(data) {
        assert_eq!(encode_keyring(&entries).expect("encodes"), data);
    }
    if let Ok(header) = KeyFileHeader::decode(data) {
        assert_eq!(header.encode()[..], data[..header.encode().len()]);
    }
    if let Ok(table) = KeyTable::decode(data) {
        assert_eq!(&table.encode().expect("a decoded table encodes")[..], data);
    }
});
