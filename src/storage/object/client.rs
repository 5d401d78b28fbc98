//! The policy over an [`ObjectStore`]: bounded retries with back-off,
//! exact-length reads, and writes whose outcome is never guessed.
//!
//! Every write carries a fresh random put id in its metadata. When a
//! conditional write is refused (412, or 404 under `If-Match`), or when
//! every attempt went unanswered, the client reads the object's head: if it
//! carries this write's put id, the write landed (an earlier attempt whose
//! reply was lost) and it is a success, never "already exists". A refusal
//! whose object still satisfies the condition (a spurious 412 or 404) is
//! retried; 409 ConditionalRequestConflict, 503 SlowDown, 5xx and timeouts
//! are retried.

use super::{Body, ListedObject, ObjectError, ObjectHead, ObjectStore, Precondition};
use crate::error::{Error, Result};
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often and how patiently a request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of one request, the first included (at least 1).
    pub attempts: u32,
    /// The wait before the second attempt; each later wait doubles.
    pub first_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Eight attempts over about six seconds.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 8,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        self.first_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay)
    }
}

/// How a create-only write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// This call wrote the object; its ETag.
    Written(String),
    /// Another write had created the name first.
    Exists,
}

/// How a compare-and-swap ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swapped {
    /// This call replaced the object; its new ETag.
    Replaced(String),
    /// The object had another ETag (or was gone): nothing written.
    Lost,
}

/// How a conditional delete ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// The object is gone (deleted now, or already missing).
    Gone,
    /// The object had another ETag: nothing deleted.
    Changed,
}

/// Makes a put id: 128 random bits in hex.
pub(crate) fn new_put_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    crate::codec::hex_bytes(&bytes)
}

/// Requests sent to the store, by kind (retries included; a multipart
/// upload counts as one PUT although it sends two requests more than it
/// has parts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// GETs (whole and ranged).
    pub get: u64,
    /// HEADs.
    pub head: u64,
    /// PUTs.
    pub put: u64,
    /// DELETEs.
    pub delete: u64,
    /// LISTs (pages count once per call).
    pub list: u64,
    /// Conditional replacements refused because another writer replaced
    /// the object first (for the head: commits that lost the race and
    /// were redone).
    pub lost_races: u64,
}

#[derive(Debug, Default)]
struct Counters {
    get: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    list: AtomicU64,
    lost_races: AtomicU64,
}

/// The retrying, ambiguity-resolving client of one bucket (or prefix).
#[derive(Clone, Debug)]
pub struct ObjectClient {
    store: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    counters: Arc<Counters>,
}

impl ObjectClient {
    /// A client of `store` that retries as `policy` says.
    pub fn new(store: Arc<dyn ObjectStore>, policy: RetryPolicy) -> ObjectClient {
        ObjectClient {
            store,
            policy,
            counters: Arc::default(),
        }
    }

    /// Requests this client (and its clones) sent so far.
    pub fn requests(&self) -> RequestCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RequestCounts {
            get: load(&self.counters.get),
            head: load(&self.counters.head),
            put: load(&self.counters.put),
            delete: load(&self.counters.delete),
            list: load(&self.counters.list),
            lost_races: load(&self.counters.lost_races),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The store under the client.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn error(&self, what: &str, name: &str, error: ObjectError) -> Error {
        let object = format!("{} {what} {name}", self.store.location());
        match error {
            ObjectError::NotFound => Error::NotFound {
                message: format!("{object}: no such object"),
            },
            ObjectError::NoSuchBucket(detail) => Error::NotFound {
                message: format!("{object}: the bucket does not exist ({detail})"),
            },
            ObjectError::Denied(detail) => Error::AccessDenied {
                message: format!("{object}: access denied ({detail})"),
            },
            ObjectError::Ambiguous(detail) => Error::io(
                object,
                std::io::Error::new(std::io::ErrorKind::TimedOut, detail),
            ),
            other => Error::io(object, std::io::Error::other(other.to_string())),
        }
    }

    /// Sends `request` until it succeeds, fails for good, or the attempts
    /// run out (the last error is returned).
    fn with_retries<T>(
        &self,
        mut request: impl FnMut() -> Result<T, ObjectError>,
    ) -> Result<T, ObjectError> {
        let mut attempt = 0;
        loop {
            match request() {
                Err(error) if error.is_retryable() && attempt + 1 < self.policy.attempts => {
                    std::thread::sleep(self.policy.delay(attempt));
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// The object's head; `None` if it does not exist.
    pub fn head(&self, name: &str) -> Result<Option<ObjectHead>> {
        match self.with_retries(|| {
            Self::count(&self.counters.head);
            self.store.head(name)
        }) {
            Ok(head) => Ok(Some(head)),
            Err(ObjectError::NotFound) => Ok(None),
            Err(error) => Err(self.error("head of", name, error)),
        }
    }

    /// The whole object; `None` if it does not exist. Its length is what
    /// the service sent: callers check content (every object the store
    /// writes carries its own crc).
    pub fn read_all(&self, name: &str) -> Result<Option<Bytes>> {
        match self.with_retries(|| {
            Self::count(&self.counters.get);
            self.store.get(name, None)
        }) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(ObjectError::NotFound) => Ok(None),
            Err(error) => Err(self.error("read of", name, error)),
        }
    }

    /// Exactly the bytes of `range`: a short answer (a truncated body) is
    /// retried, and is an error once the attempts run out.
    pub fn read_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        let wanted = range.end.saturating_sub(range.start);
        self.with_retries(|| {
            Self::count(&self.counters.get);
            let bytes = self.store.get(name, Some(range.clone()))?;
            if bytes.len() as u64 == wanted {
                Ok(bytes)
            } else {
                Err(ObjectError::Ambiguous(format!(
                    "{} of {wanted} bytes returned",
                    bytes.len()
                )))
            }
        })
        .map_err(|error| self.error("read of", name, error))
    }

    /// Every object under `prefix`, sorted by name.
    pub fn list(&self, prefix: &str) -> Result<Vec<ListedObject>> {
        self.with_retries(|| {
            Self::count(&self.counters.list);
            self.store.list(prefix)
        })
        .map_err(|error| self.error("listing of", prefix, error))
    }

    /// Writes `body` under `name` unless an object has the name.
    pub fn create(&self, name: &str, body: &Body) -> Result<Created> {
        let outcome = self.conditional_put(name, body, &Precondition::Absent)?;
        Ok(match outcome {
            Some(etag) => Created::Written(etag),
            None => Created::Exists,
        })
    }

    /// Replaces `name` with `body` if its ETag is still `etag`.
    pub fn replace(&self, name: &str, body: &Body, etag: &str) -> Result<Swapped> {
        let outcome = self.conditional_put(name, body, &Precondition::Matches(etag.to_string()))?;
        Ok(match outcome {
            Some(etag) => Swapped::Replaced(etag),
            None => {
                Self::count(&self.counters.lost_races);
                Swapped::Lost
            }
        })
    }

    /// A conditional write: `Some(etag)` once it is known to have landed,
    /// `None` once the condition is known to fail for another writer's sake.
    fn conditional_put(
        &self,
        name: &str,
        body: &Body,
        precondition: &Precondition,
    ) -> Result<Option<String>> {
        let put_id = new_put_id();
        let mut attempt = 0;
        loop {
            let last_attempt = attempt + 1 >= self.policy.attempts;
            Self::count(&self.counters.put);
            match self.store.put(name, body, precondition, &put_id) {
                Ok(etag) => return Ok(Some(etag)),
                Err(ObjectError::PreconditionFailed | ObjectError::NotFound) => {
                    let head = self.head(name)?;
                    if let Some(head) = &head {
                        if head.put_id.as_deref() == Some(put_id.as_str()) {
                            return Ok(Some(head.etag.clone()));
                        }
                    }
                    // Still satisfied: the refusal was spurious, or raced a
                    // write that has gone again. Otherwise it is final.
                    let still_holds = match precondition {
                        Precondition::Absent => head.is_none(),
                        Precondition::Matches(etag) => head.is_some_and(|head| &head.etag == etag),
                    };
                    if !still_holds || last_attempt {
                        return Ok(None);
                    }
                }
                Err(error) if error.is_retryable() && !last_attempt => {}
                Err(error) if error.is_retryable() => {
                    // Every attempt went unanswered: the last word is the
                    // object's head.
                    return match self.head(name)? {
                        Some(head) if head.put_id.as_deref() == Some(put_id.as_str()) => {
                            Ok(Some(head.etag))
                        }
                        _ => Err(self.error("write of", name, error)),
                    };
                }
                Err(error) => return Err(self.error("write of", name, error)),
            }
            std::thread::sleep(self.policy.delay(attempt));
            attempt += 1;
        }
    }

    /// Deletes `name` if its ETag is `etag` (any version when `None`).
    pub fn delete(&self, name: &str, etag: Option<&str>) -> Result<Deleted> {
        match self.with_retries(|| {
            Self::count(&self.counters.delete);
            self.store.delete(name, etag)
        }) {
            Ok(()) | Err(ObjectError::NotFound) => Ok(Deleted::Gone),
            Err(ObjectError::PreconditionFailed) => match self.head(name)? {
                // A retry after a delete that landed finds the name free.
                None => Ok(Deleted::Gone),
                Some(_) => Ok(Deleted::Changed),
            },
            Err(error) => Err(self.error("delete of", name, error)),
        }
    }

    /// Checks that the service enforces `If-None-Match: *` and `If-Match`
    /// on writes and `If-Match` on deletes, with a scratch object under
    /// `scratch_prefix` (removed again). A service that ignores them (it
    /// answers 200 and overwrites) would let two writers overwrite each
    /// other's commits: it is refused with [`Error::Unsupported`].
    pub fn probe(&self, scratch_prefix: &str) -> Result<()> {
        let name = format!("{scratch_prefix}{}", new_put_id());
        let refused = |what: &str| Error::Unsupported {
            message: format!(
                "{} ignores {what}: blocksnap commits by conditional writes and \
                 cannot keep a store there safely",
                self.store.location()
            ),
        };
        let first = Body::Bytes(Bytes::from_static(b"blocksnap probe 1"));
        let second = Body::Bytes(Bytes::from_static(b"blocksnap probe 2"));
        let etag = match self.create(&name, &first)? {
            Created::Written(etag) => etag,
            Created::Exists => {
                return Err(Error::Conflict {
                    message: format!("probe object {name} exists"),
                })
            }
        };
        let outcome = (|| {
            if self.create(&name, &second)? != Created::Exists {
                return Err(refused("If-None-Match: * (create-only writes)"));
            }
            let stale = "\"00000000000000000000000000000000\"";
            if self.replace(&name, &second, stale)? != Swapped::Lost {
                return Err(refused("If-Match on writes (compare-and-swap)"));
            }
            let replaced = match self.replace(&name, &second, &etag)? {
                Swapped::Replaced(etag) => etag,
                Swapped::Lost => {
                    return Err(refused("If-Match on writes (a matching ETag failed)"))
                }
            };
            if self.delete(&name, Some(&etag))? != Deleted::Changed {
                return Err(refused("If-Match on deletes"));
            }
            self.delete(&name, Some(&replaced)).map(drop)
        })();
        if outcome.is_err() {
            let _ = self.delete(&name, None);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::object::{MemoryObjectStore, ObjectFault, ObjectOperation};

    fn client() -> (Arc<MemoryObjectStore>, ObjectClient) {
        let store = Arc::new(MemoryObjectStore::new());
        let policy = RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        };
        (store.clone(), ObjectClient::new(store, policy))
    }

    fn body(text: &'static str) -> Body {
        Body::Bytes(Bytes::from_static(text.as_bytes()))
    }

    #[test]
    fn a_create_whose_reply_was_lost_is_a_success_not_exists() {
        let (store, client) = client();
        store.inject(ObjectOperation::Put, 1, ObjectFault::LandedReplyLost);
        assert!(matches!(
            client.create("a", &body("one")),
            Ok(Created::Written(_))
        ));
        assert_eq!(client.create("a", &body("two")).ok(), Some(Created::Exists));
        assert_eq!(
            client.read_all("a").ok().flatten().as_deref(),
            Some(&b"one"[..])
        );
    }

    #[test]
    fn a_swap_whose_reply_was_lost_is_a_success_and_a_stale_one_loses() {
        let (store, client) = client();
        let Ok(Created::Written(first)) = client.create("head", &body("1")) else {
            panic!("create");
        };
        store.inject(ObjectOperation::Put, 1, ObjectFault::LandedReplyLost);
        let Ok(Swapped::Replaced(second)) = client.replace("head", &body("2"), &first) else {
            panic!("replace");
        };
        assert_ne!(first, second);
        assert_eq!(
            client.replace("head", &body("3"), &first).ok(),
            Some(Swapped::Lost)
        );
        assert_eq!(
            client.read_all("head").ok().flatten().as_deref(),
            Some(&b"2"[..])
        );
    }

    #[test]
    fn spurious_refusals_conflicts_and_slowdowns_are_retried() {
        let (store, client) = client();
        store.inject(ObjectOperation::Put, 1, ObjectFault::PreconditionFailed);
        store.inject(ObjectOperation::Put, 2, ObjectFault::Conflict);
        store.inject(ObjectOperation::Put, 3, ObjectFault::SlowDown);
        assert!(matches!(
            client.create("a", &body("x")),
            Ok(Created::Written(_))
        ));
        store.inject(ObjectOperation::Get, 1, ObjectFault::TruncatedBody);
        store.inject(ObjectOperation::Get, 2, ObjectFault::InternalError);
        assert_eq!(
            client.read_range("a", 0..1).ok().as_deref(),
            Some(&b"x"[..])
        );
    }

    #[test]
    fn unanswered_writes_fail_clearly_and_a_landed_one_is_found() {
        let (store, client) = client();
        for nth in 1..=4 {
            store.inject(ObjectOperation::Put, nth, ObjectFault::Timeout);
        }
        let error = client.create("a", &body("x")).expect_err("no answer");
        assert!(matches!(error, Error::Io { .. }), "{error}");
        assert_eq!(client.head("a").ok(), Some(None));
        store.inject(ObjectOperation::Put, 1, ObjectFault::LandedReplyLost);
        for nth in 2..=4 {
            store.inject(ObjectOperation::Put, nth, ObjectFault::Timeout);
        }
        assert!(matches!(
            client.create("a", &body("x")),
            Ok(Created::Written(_))
        ));
    }

    #[test]
    fn truncated_reads_that_persist_are_errors() {
        let (store, client) = client();
        client.create("a", &body("abcdef")).expect("create");
        for nth in 1..=4 {
            store.inject(ObjectOperation::Get, nth, ObjectFault::TruncatedBody);
        }
        assert!(client.read_range("a", 0..6).is_err());
        assert_eq!(
            client.read_range("a", 2..4).ok().as_deref(),
            Some(&b"cd"[..])
        );
    }

    #[test]
    fn conditional_deletes() {
        let (store, client) = client();
        let Ok(Created::Written(etag)) = client.create("a", &body("x")) else {
            panic!("create");
        };
        assert_eq!(
            client.delete("a", Some("\"other\"")).ok(),
            Some(Deleted::Changed)
        );
        store.inject(ObjectOperation::Delete, 1, ObjectFault::LandedReplyLost);
        assert_eq!(client.delete("a", Some(&etag)).ok(), Some(Deleted::Gone));
        assert_eq!(client.head("a").ok(), Some(None));
    }

    #[test]
    fn the_probe_refuses_a_store_that_ignores_preconditions() {
        let (store, client) = client();
        client.probe("probe/").expect("an honest store passes");
        assert!(store.names().is_empty(), "the probe leaves nothing behind");
        store.ignore_preconditions(true);
        let error = client.probe("probe/").expect_err("refused");
        assert!(matches!(error, Error::Unsupported { .. }), "{error}");
        assert!(error.to_string().contains("If-None-Match"), "{error}");
        assert!(store.names().is_empty(), "{:?}", store.names());
    }
}
