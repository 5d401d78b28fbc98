//! The storage contract as executable checks, run against every backend
//! (see `storage`'s module documentation for the contract itself).

use crate::storage::{AppendFile, Storage};
use std::io;

/// Runs every contract check against `storage`, which must be empty.
/// Panics with the violated rule.
pub fn check_storage_contract(storage: &dyn Storage) {
    appends_report_offsets_and_are_visible_to_readers(storage);
    atomic_writes_replace_whole_files(storage);
    listing_removal_and_existence(storage);
    truncation_shortens(storage, Opening::Cached);
    reads_past_the_end_fail(storage);
    maps_show_the_same_bytes(storage);
    truncation_shortens(storage, Opening::Uncached);
    large_appends_read_back_across_every_boundary(storage, Opening::Cached);
    large_appends_read_back_across_every_boundary(storage, Opening::Uncached);
}

/// Which way a check opens its append files: the contract is the same.
#[derive(Clone, Copy, Debug)]
enum Opening {
    Cached,
    Uncached,
}

impl Opening {
    fn open(self, storage: &dyn Storage, name: &str) -> io::Result<Box<dyn AppendFile>> {
        match self {
            Opening::Cached => storage.open_append(name),
            Opening::Uncached => storage.open_append_uncached(name),
        }
    }
}

fn appends_report_offsets_and_are_visible_to_readers(storage: &dyn Storage) {
    let mut file = storage.open_append("dir/a.log").expect("create");
    assert_eq!(file.len(), 0);
    assert_eq!(file.append(&[b"hello", b" "]).expect("append"), 0);
    assert_eq!(file.append(&[b"world"]).expect("append"), 6);
    assert_eq!(file.len(), 11);
    let reader = storage.open_read("dir/a.log").expect("open read");
    let mut buffer = [0u8; 5];
    reader
        .read_exact_at(6, &mut buffer)
        .expect("read before sync");
    assert_eq!(&buffer, b"world", "appended bytes are visible before sync");
    file.sync().expect("sync");
    storage.sync_dir("dir").expect("sync dir");
    drop(file);
    let mut reopened = storage.open_append("dir/a.log").expect("reopen");
    assert_eq!(reopened.len(), 11, "reopening for append keeps content");
    assert_eq!(reopened.append(&[b"!"]).expect("append"), 11);
    assert_eq!(
        storage.read_all("dir/a.log").expect("read all"),
        b"hello world!"
    );
}

fn atomic_writes_replace_whole_files(storage: &dyn Storage) {
    storage
        .write_atomic("dir/b.idx", b"first version")
        .expect("write");
    assert_eq!(
        storage.read_all("dir/b.idx").expect("read"),
        b"first version"
    );
    storage.write_atomic("dir/b.idx", b"v2").expect("replace");
    assert_eq!(storage.read_all("dir/b.idx").expect("read"), b"v2");
    storage
        .write_atomic("top.store", b"x")
        .expect("top-level name");
    assert!(storage.exists("top.store").expect("exists"));
}

fn listing_removal_and_existence(storage: &dyn Storage) {
    let names = storage.list("dir").expect("list");
    assert_eq!(
        names,
        vec!["a.log".to_string(), "b.idx".to_string()],
        "sorted names, no temporaries"
    );
    assert!(storage
        .list("missing")
        .expect("list missing dir")
        .is_empty());
    storage.remove("dir/b.idx").expect("remove");
    storage
        .remove("dir/b.idx")
        .expect("removing an absent name is not an error");
    assert!(!storage.exists("dir/b.idx").expect("exists"));
    assert!(storage.open_read("dir/b.idx").is_err());
    storage.sync_dir("dir").expect("sync dir");
}

fn truncation_shortens(storage: &dyn Storage, opening: Opening) {
    let name = match opening {
        Opening::Cached => "dir/c.log",
        Opening::Uncached => "uncached/c.log",
    };
    let mut file = opening.open(storage, name).expect("create");
    file.append(&[b"0123456789"]).expect("append");
    file.truncate(4).expect("truncate");
    assert_eq!(file.len(), 4);
    assert_eq!(file.append(&[b"X"]).expect("append after truncate"), 4);
    file.sync().expect("sync");
    assert_eq!(storage.read_all(name).expect("read"), b"0123X");
}

/// Appends of odd sizes adding up to several MiB (past any buffer an
/// implementation keeps), a reader opened before the first append reading
/// every boundary while appends continue, truncation into written bytes,
/// and reopening after a sync.
fn large_appends_read_back_across_every_boundary(storage: &dyn Storage, opening: Opening) {
    let name = match opening {
        Opening::Cached => "dir/large.pack",
        Opening::Uncached => "uncached/large.pack",
    };
    let pattern = |offset: usize| (offset.wrapping_mul(2_654_435_761) >> 13) as u8;
    let mut expected = Vec::new();
    let mut file = opening.open(storage, name).expect("create");
    let reader = storage.open_read(name).expect("open read");
    let sizes = [
        1,
        80,
        4095,
        4096,
        4097,
        524_368,
        1 << 20,
        3 << 20,
        77,
        700_001,
    ];
    for (round, size) in sizes.iter().cycle().take(30).enumerate() {
        let part: Vec<u8> = (expected.len()..expected.len() + size)
            .map(pattern)
            .collect();
        let (head, rest) = part.split_at(size / 3);
        let offset = file.append(&[head, rest]).expect("append");
        assert_eq!(offset, expected.len() as u64, "append {round} offset");
        expected.extend_from_slice(&part);
        assert_eq!(file.len(), expected.len() as u64);
        assert_eq!(reader.len().expect("len"), expected.len() as u64);
        if round % 7 == 3 {
            file.sync().expect("sync");
        }
        for (start, length) in [
            (0, 1),
            (offset as usize, *size),
            (
                expected.len().saturating_sub(5000),
                5000.min(expected.len()),
            ),
            (expected.len() / 2, expected.len() / 2),
        ] {
            let mut buffer = vec![0u8; length];
            reader
                .read_exact_at(start as u64, &mut buffer)
                .expect("read appended bytes");
            assert!(
                buffer == expected[start..start + length],
                "{opening:?}: bytes {start}..+{length} after append {round}"
            );
        }
        let mut past = [0u8; 2];
        assert!(reader
            .read_exact_at(expected.len() as u64 - 1, &mut past)
            .is_err());
    }
    let cut = expected.len() - (5 << 20) - 123;
    file.truncate(cut as u64)
        .expect("truncate into written bytes");
    expected.truncate(cut);
    let tail: Vec<u8> = (cut..cut + 10_000).map(|offset| !pattern(offset)).collect();
    assert_eq!(file.append(&[&tail]).expect("append"), cut as u64);
    expected.extend_from_slice(&tail);
    file.sync().expect("sync");
    drop(file);
    assert!(storage.read_all(name).expect("read all") == expected);
    let mut reopened = opening.open(storage, name).expect("reopen");
    assert_eq!(reopened.len(), expected.len() as u64);
    assert_eq!(
        reopened.append(&[b"end"]).expect("append"),
        expected.len() as u64
    );
    expected.extend_from_slice(b"end");
    drop(reopened);
    assert!(
        storage.read_all(name).expect("read all") == expected,
        "a clean close keeps unsynced appends"
    );
}

fn reads_past_the_end_fail(storage: &dyn Storage) {
    let reader = storage.open_read("dir/c.log").expect("open");
    assert_eq!(reader.len().expect("len"), 5);
    let mut buffer = [0u8; 4];
    assert!(
        reader.read_exact_at(3, &mut buffer).is_err(),
        "short reads are errors"
    );
    assert!(reader.read_exact_at(u64::MAX - 1, &mut buffer).is_err());
}

fn maps_show_the_same_bytes(storage: &dyn Storage) {
    match storage.map("dir/a.log").expect("map") {
        None => {}
        Some(mapped) => {
            assert_eq!(mapped.as_slice(), Some(&b"hello world!"[..]));
            let mut buffer = [0u8; 5];
            mapped
                .read_exact_at(0, &mut buffer)
                .expect("read through map");
            assert_eq!(&buffer, b"hello");
        }
    }
}
