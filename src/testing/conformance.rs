//! The storage contract as executable checks, run against every backend
//! (see `storage`'s module documentation for the contract itself).

use crate::storage::Storage;

/// Runs every contract check against `storage`, which must be empty.
/// Panics with the violated rule.
pub fn check_storage_contract(storage: &dyn Storage) {
    appends_report_offsets_and_are_visible_to_readers(storage);
    atomic_writes_replace_whole_files(storage);
    listing_removal_and_existence(storage);
    truncation_shortens(storage);
    reads_past_the_end_fail(storage);
    maps_show_the_same_bytes(storage);
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

fn truncation_shortens(storage: &dyn Storage) {
    let mut file = storage.open_append("dir/c.log").expect("create");
    file.append(&[b"0123456789"]).expect("append");
    file.truncate(4).expect("truncate");
    assert_eq!(file.len(), 4);
    assert_eq!(file.append(&[b"X"]).expect("append after truncate"), 4);
    file.sync().expect("sync");
    assert_eq!(storage.read_all("dir/c.log").expect("read"), b"0123X");
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
