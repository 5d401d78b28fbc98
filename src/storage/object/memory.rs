//! A bucket in memory that injects faults: every answer a real service
//! gives (500, 503 SlowDown, 409, 412, 404, timeouts, truncated bodies,
//! "landed but the reply was lost"), at chosen requests or at random, and a
//! mode that ignores preconditions as some servers do.

use super::{Body, ListedObject, ObjectError, ObjectHead, ObjectStore, Precondition};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::Range;

/// A kind of request, for aiming faults and counting requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectOperation {
    /// GET (whole or ranged).
    Get,
    /// HEAD.
    Head,
    /// PUT (any precondition).
    Put,
    /// DELETE.
    Delete,
    /// LIST.
    List,
}

/// A fault the memory bucket answers a request with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectFault {
    /// 500 InternalError; nothing applied (the client cannot know that).
    InternalError,
    /// 503 SlowDown; nothing applied.
    SlowDown,
    /// 409 ConditionalRequestConflict; nothing applied.
    Conflict,
    /// A spurious 412; nothing applied.
    PreconditionFailed,
    /// A spurious 404; nothing applied.
    NotFound,
    /// No answer within the client's timeout; nothing applied.
    Timeout,
    /// The request was applied, then the reply was lost.
    LandedReplyLost,
    /// A GET's body is cut short (other requests: as `InternalError`).
    TruncatedBody,
}

#[derive(Clone, Debug)]
struct StoredObject {
    bytes: Bytes,
    etag: String,
    put_id: String,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, StoredObject>,
    /// Faults aimed at the nth future request of a kind (1-based counts).
    aimed: Vec<(ObjectOperation, u64, ObjectFault)>,
    /// Random faults: xorshift state, chance in parts per million, kinds.
    random: Option<(u64, u32, Vec<ObjectFault>)>,
    /// Requests so far, by kind.
    counts: BTreeMap<ObjectOperation, u64>,
    /// Every request after this many fails without effect (a process
    /// that died between two requests).
    halt_after: Option<u64>,
    ignore_preconditions: bool,
    writes: u64,
}

impl State {
    fn total_requests(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Counts the request and picks its fault, if any.
    fn begin(&mut self, operation: ObjectOperation) -> Result<Option<ObjectFault>, ObjectError> {
        if self
            .halt_after
            .is_some_and(|limit| self.total_requests() >= limit)
        {
            return Err(ObjectError::Ambiguous("the bucket is unreachable".into()));
        }
        let count = self.counts.entry(operation).or_insert(0);
        *count += 1;
        let count = *count;
        if let Some(position) = self
            .aimed
            .iter()
            .position(|(kind, nth, _)| *kind == operation && *nth == count)
        {
            return Ok(Some(self.aimed.swap_remove(position).2));
        }
        if let Some((state, per_million, kinds)) = &mut self.random {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            if (*state % 1_000_000) < u64::from(*per_million) && !kinds.is_empty() {
                let pick = (*state / 1_000_000) as usize % kinds.len();
                return Ok(kinds.get(pick).copied());
            }
        }
        Ok(None)
    }
}

/// Turns a fault that applies nothing into its error.
fn refusal(fault: ObjectFault) -> ObjectError {
    match fault {
        ObjectFault::SlowDown => ObjectError::Throttled("SlowDown (injected)".into()),
        ObjectFault::Conflict => ObjectError::Conflict,
        ObjectFault::PreconditionFailed => ObjectError::PreconditionFailed,
        ObjectFault::NotFound => ObjectError::NotFound,
        ObjectFault::Timeout => ObjectError::Ambiguous("timed out (injected)".into()),
        ObjectFault::InternalError | ObjectFault::TruncatedBody | ObjectFault::LandedReplyLost => {
            ObjectError::Ambiguous("500 InternalError (injected)".into())
        }
    }
}

/// An in-memory bucket that injects faults. Cloning is not offered: share
/// it with `Arc`.
#[derive(Debug, Default)]
pub struct MemoryObjectStore {
    state: Mutex<State>,
}

impl MemoryObjectStore {
    /// An empty bucket without faults.
    pub fn new() -> MemoryObjectStore {
        MemoryObjectStore::default()
    }

    /// Answers the `nth` request of kind `operation` from now on (1 = the
    /// next) with `fault`.
    pub fn inject(&self, operation: ObjectOperation, nth: u64, fault: ObjectFault) {
        let mut state = self.state.lock();
        let done = state.counts.get(&operation).copied().unwrap_or(0);
        state.aimed.push((operation, done + nth, fault));
    }

    /// Answers each request with one of `faults`, chosen at random, with a
    /// chance of `per_million` in a million (seeded: the same seed, the
    /// same faults for the same sequence of requests).
    pub fn random_faults(&self, seed: u64, per_million: u32, faults: &[ObjectFault]) {
        self.state.lock().random = Some((seed | 1, per_million, faults.to_vec()));
    }

    /// Stops injecting faults (aimed and random).
    pub fn clear_faults(&self) {
        let mut state = self.state.lock();
        state.aimed.clear();
        state.random = None;
    }

    /// Fails every request after `requests` more of them, without effect
    /// (`None`: never), as a process that died there would stop.
    pub fn halt_after(&self, requests: Option<u64>) {
        let mut state = self.state.lock();
        let total = state.total_requests();
        state.halt_after = requests.map(|more| total + more);
    }

    /// Writes unconditionally whatever the precondition says, as servers
    /// that ignore `If-None-Match` and `If-Match` do.
    pub fn ignore_preconditions(&self, ignore: bool) {
        self.state.lock().ignore_preconditions = ignore;
    }

    /// Requests so far of kind `operation`.
    pub fn requests(&self, operation: ObjectOperation) -> u64 {
        self.state
            .lock()
            .counts
            .get(&operation)
            .copied()
            .unwrap_or(0)
    }

    /// Requests so far, of every kind.
    pub fn total_requests(&self) -> u64 {
        self.state.lock().total_requests()
    }

    /// Replaces the bytes of a stored object, keeping its ETag and put id
    /// (bit rot the service did not notice). Returns whether it existed.
    pub fn corrupt(&self, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut state = self.state.lock();
        let Some(object) = state.objects.get_mut(name) else {
            return false;
        };
        let mut bytes = object.bytes.to_vec();
        edit(&mut bytes);
        object.bytes = Bytes::from(bytes);
        true
    }

    /// Names of every stored object, sorted.
    pub fn names(&self) -> Vec<String> {
        self.state.lock().objects.keys().cloned().collect()
    }
}

impl ObjectStore for MemoryObjectStore {
    fn get(&self, name: &str, range: Option<Range<u64>>) -> Result<Bytes, ObjectError> {
        let mut state = self.state.lock();
        let fault = state.begin(ObjectOperation::Get)?;
        let object = match fault {
            Some(ObjectFault::TruncatedBody) | None => state
                .objects
                .get(name)
                .ok_or(ObjectError::NotFound)?
                .clone(),
            Some(other) => return Err(refusal(other)),
        };
        let len = object.bytes.len() as u64;
        let range = range.unwrap_or(0..len);
        if range.start > range.end || (range.start >= len && len > 0) {
            return Err(ObjectError::Refused("InvalidRange".into()));
        }
        let end = range.end.min(len);
        let mut bytes = object.bytes.slice(range.start as usize..end as usize);
        if fault == Some(ObjectFault::TruncatedBody) {
            bytes.truncate(bytes.len() / 2);
        }
        Ok(bytes)
    }

    fn head(&self, name: &str) -> Result<ObjectHead, ObjectError> {
        let mut state = self.state.lock();
        if let Some(fault) = state.begin(ObjectOperation::Head)? {
            return Err(refusal(fault));
        }
        let object = state.objects.get(name).ok_or(ObjectError::NotFound)?;
        Ok(ObjectHead {
            len: object.bytes.len() as u64,
            etag: object.etag.clone(),
            put_id: Some(object.put_id.clone()),
        })
    }

    fn put(
        &self,
        name: &str,
        body: &Body,
        precondition: &Precondition,
        put_id: &str,
    ) -> Result<String, ObjectError> {
        let bytes = body
            .slice(0..body.len())
            .map_err(|error| ObjectError::Refused(format!("reading the body: {error}")))?;
        let mut state = self.state.lock();
        let fault = state.begin(ObjectOperation::Put)?;
        if let Some(fault) = fault.filter(|fault| *fault != ObjectFault::LandedReplyLost) {
            return Err(refusal(fault));
        }
        if !state.ignore_preconditions {
            let current = state.objects.get(name);
            let holds = match precondition {
                Precondition::Absent => current.is_none(),
                Precondition::Matches(etag) => current.is_some_and(|object| &object.etag == etag),
            };
            if !holds {
                return Err(ObjectError::PreconditionFailed);
            }
        }
        state.writes += 1;
        let etag = format!(
            "\"{}\"",
            &blake3::keyed_hash(
                &[7u8; 32],
                &[&bytes[..], &state.writes.to_le_bytes()].concat()
            )
            .to_hex()[..32]
        );
        state.objects.insert(
            name.to_string(),
            StoredObject {
                bytes,
                etag: etag.clone(),
                put_id: put_id.to_string(),
            },
        );
        match fault {
            Some(fault) => Err(refusal(fault)),
            None => Ok(etag),
        }
    }

    fn delete(&self, name: &str, etag: Option<&str>) -> Result<(), ObjectError> {
        let mut state = self.state.lock();
        let fault = state.begin(ObjectOperation::Delete)?;
        if let Some(fault) = fault.filter(|fault| *fault != ObjectFault::LandedReplyLost) {
            return Err(refusal(fault));
        }
        if let (Some(etag), Some(object)) = (etag, state.objects.get(name)) {
            if object.etag != etag && !state.ignore_preconditions {
                return Err(ObjectError::PreconditionFailed);
            }
        }
        state.objects.remove(name);
        match fault {
            Some(fault) => Err(refusal(fault)),
            None => Ok(()),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, ObjectError> {
        let mut state = self.state.lock();
        if let Some(fault) = state.begin(ObjectOperation::List)? {
            return Err(refusal(fault));
        }
        Ok(state
            .objects
            .range(prefix.to_string()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, object)| ListedObject {
                name: name.clone(),
                len: object.bytes.len() as u64,
            })
            .collect())
    }

    fn location(&self) -> String {
        "memory bucket".to_string()
    }
}
