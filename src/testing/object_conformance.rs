//! The object-store contract (`storage::object` module docs), checked
//! against any [`ObjectStore`]: the in-memory one and real S3-compatible
//! servers run the same checks.

use crate::storage::object::{
    Body, Created, Deleted, ObjectClient, ObjectError, ObjectStore, Precondition, RetryPolicy,
    Swapped,
};
use crate::storage::{LocalStorage, Storage};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

fn bytes(text: &str) -> Body {
    Body::Bytes(Bytes::copy_from_slice(text.as_bytes()))
}

/// A client that retries quickly (tests run against loopback servers).
pub fn test_client(store: Arc<dyn ObjectStore>) -> ObjectClient {
    ObjectClient::new(
        store,
        RetryPolicy {
            attempts: 8,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(25),
        },
    )
}

/// Checks every rule of the contract on `store`, under names starting with
/// `scope` (which must hold no objects yet). Panics on a violation.
pub fn check_object_store_contract(store: Arc<dyn ObjectStore>, scope: &str) {
    let client = test_client(store.clone());
    let name = format!("{scope}a/object");

    // Create-only writes, heads and reads.
    let Ok(Created::Written(etag)) = client.create(&name, &bytes("first content")) else {
        panic!("create of a new name");
    };
    let head = client.head(&name).expect("head").expect("exists");
    assert_eq!((head.len, head.etag.as_str()), (13, etag.as_str()));
    assert!(head.put_id.is_some(), "the put id comes back");
    assert_eq!(
        store.put(&name, &bytes("second"), &Precondition::Absent, "other"),
        Err(ObjectError::PreconditionFailed),
        "If-None-Match: * refuses an existing name"
    );
    assert_eq!(
        client.create(&name, &bytes("second")).ok(),
        Some(Created::Exists)
    );
    let whole = client.read_all(&name).expect("read").expect("exists");
    assert_eq!(&whole[..], b"first content");
    assert_eq!(
        &client.read_range(&name, 6..10).expect("range")[..],
        b"cont"
    );
    assert!(client
        .read_all(&format!("{scope}missing"))
        .expect("read")
        .is_none());
    assert!(client
        .head(&format!("{scope}missing"))
        .expect("head")
        .is_none());

    // Compare-and-swap.
    let stale = "\"0123456789abcdef0123456789abcdef\"";
    assert_eq!(
        store.put(
            &name,
            &bytes("x"),
            &Precondition::Matches(stale.into()),
            "p"
        ),
        Err(ObjectError::PreconditionFailed),
        "If-Match refuses another ETag"
    );
    let Ok(Swapped::Replaced(second)) = client.replace(&name, &bytes("second content"), &etag)
    else {
        panic!("a matching ETag replaces");
    };
    assert_ne!(second, etag, "a new ETag for new content");
    assert_eq!(
        client.replace(&name, &bytes("third"), &etag).ok(),
        Some(Swapped::Lost),
        "the old ETag no longer matches"
    );
    assert_eq!(
        &client.read_all(&name).expect("read").expect("exists")[..],
        b"second content"
    );
    let missing = format!("{scope}never-written");
    assert!(
        matches!(
            store.put(
                &missing,
                &bytes("x"),
                &Precondition::Matches(etag.clone()),
                "p"
            ),
            Err(ObjectError::PreconditionFailed | ObjectError::NotFound)
        ),
        "If-Match on a missing name writes nothing"
    );
    assert!(client.head(&missing).expect("head").is_none());

    // Conditional deletes.
    assert_eq!(
        client.delete(&name, Some(&etag)).ok(),
        Some(Deleted::Changed)
    );
    assert!(client.head(&name).expect("head").is_some());
    assert_eq!(
        client.delete(&name, Some(&second)).ok(),
        Some(Deleted::Gone)
    );
    assert!(client.head(&name).expect("head").is_none());
    assert_eq!(client.delete(&name, None).ok(), Some(Deleted::Gone));

    // Listing: every object under a prefix, past one page, sorted.
    let many = format!("{scope}many/");
    let count = 1_010;
    std::thread::scope(|threads| {
        for shard in 0..4 {
            let client = &client;
            let many = &many;
            threads.spawn(move || {
                for index in (shard..count).step_by(4) {
                    let name = format!("{many}{index:05}");
                    client.create(&name, &bytes("m")).expect("create");
                }
            });
        }
    });
    client
        .create(&format!("{scope}manyx"), &bytes("outside"))
        .expect("create");
    let listed = client.list(&many).expect("list");
    assert_eq!(listed.len(), count);
    assert!(listed.windows(2).all(|pair| pair[0].name < pair[1].name));
    assert_eq!(listed[0].name, format!("{many}00000"));
    assert!(listed.iter().all(|object| object.len == 1));

    // A large body from a local file (a multipart upload on S3).
    let staging = tempfile::tempdir().expect("tempdir");
    let local = LocalStorage::open(staging.path()).expect("local storage");
    let len = 40usize << 20;
    let content: Vec<u8> = (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect();
    let mut file = local.open_append("big").expect("open");
    file.append(&[&content]).expect("append");
    file.sync().expect("sync");
    let file = local.open_read("big").expect("read");
    let body = Body::File {
        file,
        len: len as u64,
    };
    let big = format!("{scope}big");
    assert!(matches!(
        client.create(&big, &body),
        Ok(Created::Written(_))
    ));
    assert_eq!(client.create(&big, &body).ok(), Some(Created::Exists));
    let head = client.head(&big).expect("head").expect("exists");
    assert_eq!(head.len, len as u64);
    assert!(head.put_id.is_some(), "a multipart upload keeps its put id");
    for start in [0usize, (16 << 20) - 3, len - 100] {
        let read = client
            .read_range(&big, start as u64..start as u64 + 100)
            .expect("range");
        assert_eq!(&read[..], &content[start..start + 100]);
    }
}

/// Racing conditional writes: of `writers` racing creators of one name
/// exactly one wins, and `writers` racing read-modify-write loops over one
/// counter object lose no increment.
pub fn check_conditional_races(store: Arc<dyn ObjectStore>, scope: &str, writers: usize) {
    let client = test_client(store);
    let name = format!("{scope}race/create");
    let winners: Vec<bool> = std::thread::scope(|threads| {
        let handles: Vec<_> = (0..writers)
            .map(|writer| {
                let client = &client;
                let name = &name;
                threads.spawn(move || {
                    matches!(
                        client.create(name, &bytes(&format!("writer {writer}"))),
                        Ok(Created::Written(_))
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("writer"))
            .collect()
    });
    assert_eq!(winners.iter().filter(|won| **won).count(), 1, "{winners:?}");
    let winner = winners.iter().position(|won| *won).expect("a winner");
    assert_eq!(
        client.read_all(&name).expect("read").expect("exists"),
        Bytes::from(format!("writer {winner}"))
    );

    let counter = format!("{scope}race/counter");
    client
        .create(&counter, &bytes("0"))
        .expect("create counter");
    let increments = 5;
    std::thread::scope(|threads| {
        for _ in 0..writers {
            let client = &client;
            let counter = &counter;
            threads.spawn(move || {
                for _ in 0..increments {
                    loop {
                        let head = client.head(counter).expect("head").expect("exists");
                        let value: u64 = String::from_utf8_lossy(
                            &client.read_all(counter).expect("read").expect("exists"),
                        )
                        .parse()
                        .expect("a number");
                        // The read may be newer than the head: then the
                        // swap fails and the loop reads again.
                        let next = bytes(&(value + 1).to_string());
                        if let Swapped::Replaced(_) =
                            client.replace(counter, &next, &head.etag).expect("swap")
                        {
                            let check = client.head(counter).expect("head").expect("exists");
                            assert_ne!(check.etag, head.etag);
                            break;
                        }
                    }
                }
            });
        }
    });
    let total: u64 =
        String::from_utf8_lossy(&client.read_all(&counter).expect("read").expect("exists"))
            .parse()
            .expect("a number");
    assert_eq!(total, (writers * increments) as u64, "no increment lost");
}
