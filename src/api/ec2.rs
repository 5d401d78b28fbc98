//! The EC2 snapshot operations over an [`Engine`]: what every EBS client
//! script asks the EC2 API about its snapshots (DescribeSnapshots,
//! DeleteSnapshot, CopySnapshot, CreateTags, DeleteTags, DescribeTags), with EC2's filters,
//! paging and error codes ([`ec2_error`]). Like [`crate::api::Ebs`], each
//! operation validates its request, calls the engine, and shapes the
//! answer; the Query protocol's form and XML are the server's.

use super::tokens::{TokenSigner, PAGE_KIND_DESCRIBE_SNAPSHOTS, PAGE_KIND_DESCRIBE_TAGS};
use super::{edit_tags, status_of, tags_of, validate, Status, Tag, PAGE_TOKEN_LIFETIME_SECS};
use crate::catalog::{SnapshotRecord, SnapshotState};
use crate::engine::{Engine, NewSnapshot, RequestedEncryption};
use crate::error::{Error, ValidationReason};
use crate::format::catalog::SseKind;
use crate::format::token::TokenBody;
use crate::ids::SnapshotId;

/// The volume id EC2 reports for snapshots made through the EBS direct
/// API, which belong to no volume.
pub const NO_VOLUME_ID: &str = "vol-ffffffff";
/// Fewest results a page may be asked for (EC2's bound).
pub const MIN_MAX_RESULTS: i64 = 5;
/// Most results a page holds (EC2's bound for DescribeSnapshots and
/// DescribeTags).
pub const MAX_MAX_RESULTS: i64 = 1000;
/// Most filters, values per filter and ids one request may name: bounds
/// the work a request costs before any is done.
pub const MAX_LIST_ITEMS: usize = 1000;

/// What an EC2 operation returns.
pub type Ec2Result<T> = std::result::Result<T, Ec2Error>;

/// An EC2 error: its code, HTTP status and message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Ec2Error {
    /// The `Code` element, e.g. `InvalidSnapshot.NotFound`.
    pub code: &'static str,
    /// The HTTP status EC2 answers it with.
    pub http_status: u16,
    /// The `Message` element.
    pub message: String,
}

impl Ec2Error {
    /// An error of `code` (400) with `message`.
    pub fn client(code: &'static str, message: impl Into<String>) -> Ec2Error {
        Ec2Error {
            code,
            http_status: 400,
            message: message.into(),
        }
    }
}

/// Maps an engine error to its EC2 error. The match is exhaustive so a new
/// variant forces a decision here.
pub fn ec2_error(error: &Error) -> Ec2Error {
    let message = error.to_string();
    let (code, http_status) = match error {
        Error::NotFound { .. } => ("InvalidSnapshot.NotFound", 400),
        Error::InvalidInput {
            reason: ValidationReason::InvalidSnapshotId,
            ..
        } => ("InvalidSnapshotID.Malformed", 400),
        Error::InvalidInput { .. } | Error::InvalidArchive { .. } => ("InvalidParameterValue", 400),
        Error::InvalidState { .. } => ("IncorrectState", 400),
        Error::Conflict { .. } => ("IdempotentParameterMismatch", 400),
        Error::ReadOnly { .. } => ("OperationNotPermitted", 400),
        Error::ConcurrentLimitExceeded { .. } => ("ResourceLimitExceeded", 400),
        // A request the server could not authenticate.
        Error::AccessDenied { .. } => ("AuthFailure", 401),
        Error::KeyUnavailable { .. } => ("UnauthorizedOperation", 403),
        Error::Throttled { .. } => ("RequestLimitExceeded", 503),
        Error::Unsupported { .. } => ("UnsupportedOperation", 400),
        Error::Corrupted { .. }
        | Error::UnsupportedVersion { .. }
        | Error::Io { .. }
        | Error::Poisoned { .. } => ("InternalError", 500),
    };
    Ec2Error {
        code,
        http_status,
        message,
    }
}

impl From<Error> for Ec2Error {
    fn from(error: Error) -> Ec2Error {
        ec2_error(&error)
    }
}

/// One `Filter.N`: a name and the values any of which matches (`*` and
/// `?` wildcards, `\` escaping them).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Filter {
    /// The filter's name, e.g. `status` or `tag:Name`.
    pub name: String,
    /// Its values.
    pub values: Vec<String>,
}

/// DescribeSnapshots' request.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct DescribeSnapshotsRequest {
    /// `SnapshotId.N`: only these (each must exist).
    pub snapshot_ids: Vec<String>,
    /// `Owner.N`: `self` or account ids.
    pub owner_ids: Vec<String>,
    /// `Filter.N`: all must match.
    pub filters: Vec<Filter>,
    /// `MaxResults`: a page's size (5..=1000); without it, every result.
    pub max_results: Option<i64>,
    /// `NextToken`: where the previous page ended.
    pub next_token: Option<String>,
}

/// One snapshot as DescribeSnapshots describes it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Ec2Snapshot {
    /// `snap-` and 16 hex digits.
    pub snapshot_id: String,
    /// `pending`, `completed` or `error`.
    pub state: Status,
    /// Why it is in `error`.
    pub state_message: Option<String>,
    /// `100%` once completed, else `0%` (the blocks still to come are not
    /// known before completion).
    pub progress: &'static str,
    /// When it was started, epoch milliseconds.
    pub start_millis: u64,
    /// When it completed, epoch milliseconds.
    pub completion_millis: Option<u64>,
    /// The volume's size in GiB.
    pub volume_size: u64,
    /// Its description.
    pub description: Option<String>,
    /// Its tags, in order.
    pub tags: Vec<Tag>,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// The key it is encrypted under.
    pub kms_key_id: Option<String>,
    /// The account that owns it.
    pub owner_id: String,
}

/// DescribeSnapshots' response.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DescribeSnapshotsResponse {
    /// The snapshots of this page, by id.
    pub snapshots: Vec<Ec2Snapshot>,
    /// Where the next page starts, if there is one.
    pub next_token: Option<String>,
}

/// CopySnapshot's request.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CopySnapshotRequest {
    /// `SourceSnapshotId`: a completed snapshot of the caller's.
    pub source_snapshot_id: String,
    /// `SourceRegion`: required by EC2; the store has one region.
    pub source_region: String,
    /// `Description` of the copy.
    pub description: Option<String>,
    /// `Encrypted`: a copy keeps its source's encryption, so only the
    /// source's own setting is accepted.
    pub encrypted: Option<bool>,
    /// `KmsKeyId`: likewise, only the source's key.
    pub kms_key_id: Option<String>,
    /// Tags of the copy (`TagSpecification.N` of resource type snapshot).
    pub tags: Vec<Tag>,
}

/// DescribeTags' request.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct DescribeTagsRequest {
    /// `Filter.N`: `key`, `value`, `resource-id`, `resource-type`.
    pub filters: Vec<Filter>,
    /// `MaxResults`: a page's size (5..=1000); without it, every tag.
    pub max_results: Option<i64>,
    /// `NextToken`: where the previous page ended.
    pub next_token: Option<String>,
}

/// CreateTags' request.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CreateTagsRequest {
    /// `ResourceId.N`: the caller's snapshots.
    pub resource_ids: Vec<String>,
    /// `Tag.N`: set on each (a key already there takes the new value).
    pub tags: Vec<Tag>,
}

/// DeleteTags' request.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct DeleteTagsRequest {
    /// `ResourceId.N`: the caller's snapshots.
    pub resource_ids: Vec<String>,
    /// `Tag.N`: keys to delete, each only where its value is the one given
    /// (when one is); none at all deletes every tag.
    pub tags: Vec<(String, Option<String>)>,
}

/// One tag of one snapshot, as DescribeTags lists it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TagDescription {
    /// The snapshot.
    pub resource_id: String,
    /// The tag's key.
    pub key: String,
    /// Its value.
    pub value: String,
}

/// DescribeTags' response.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DescribeTagsResponse {
    /// The tags of this page, by snapshot and then in order.
    pub tags: Vec<TagDescription>,
    /// Where the next page starts, if there is one.
    pub next_token: Option<String>,
}

/// The EC2 snapshot operations over an engine, acting for the engine's
/// owner ([`Engine::as_owner`]), who sees only its own snapshots.
#[derive(Clone, Copy, Debug)]
pub struct Ec2<'e> {
    engine: &'e Engine,
}

impl<'e> Ec2<'e> {
    /// The EC2 operations on `engine`'s store, as `engine`'s owner.
    pub fn new(engine: &'e Engine) -> Ec2<'e> {
        Ec2 { engine }
    }

    fn signer(&self) -> TokenSigner {
        TokenSigner::new(self.engine.token_secret())
    }

    fn now_secs(&self) -> u64 {
        self.engine.now_millis() / 1000
    }

    /// DescribeSnapshots: the caller's snapshots that match, by id, a page
    /// at a time when `MaxResults` is given.
    pub fn describe_snapshots(
        &self,
        request: &DescribeSnapshotsRequest,
    ) -> Ec2Result<DescribeSnapshotsResponse> {
        bounded("SnapshotId", request.snapshot_ids.len())?;
        bounded("Owner", request.owner_ids.len())?;
        check_filters(&request.filters, SNAPSHOT_FILTERS)?;
        if !request.snapshot_ids.is_empty() && request.max_results.is_some() {
            return Err(Ec2Error::client(
                "InvalidParameterCombination",
                "The parameter SnapshotIds cannot be used with the parameter MaxResults",
            ));
        }
        let page_size = page_size(request.max_results)?;
        let fingerprint = fingerprint(&[
            &request.snapshot_ids,
            &request.owner_ids,
            &flatten(&request.filters),
        ]);
        let after = self.resume(
            request.next_token.as_deref(),
            PAGE_KIND_DESCRIBE_SNAPSHOTS,
            fingerprint,
        )?;
        let mut wanted = Vec::with_capacity(request.snapshot_ids.len());
        for text in &request.snapshot_ids {
            let id = validate::snapshot_id("SnapshotId", text)?;
            self.engine.snapshot(id).map_err(|_| {
                Ec2Error::client(
                    "InvalidSnapshot.NotFound",
                    format!("The snapshot '{id}' does not exist."),
                )
            })?;
            wanted.push(id);
        }
        let owner = self.engine.owner_id();
        let owners_match = request.owner_ids.is_empty()
            || request
                .owner_ids
                .iter()
                .any(|wanted| wanted == "self" || wanted == owner);
        // Matching is judged in place under the catalog's read lock; only
        // the page's records are copied out.
        let mut ids = if owners_match {
            self.engine.snapshot_ids_where(|record| {
                after.is_none_or(|after| record.started.snapshot.0 > after)
                    && (wanted.is_empty() || wanted.contains(&record.started.snapshot))
                    && request
                        .filters
                        .iter()
                        .all(|filter| record_matches(record, filter))
            })
        } else {
            Vec::new()
        };
        ids.sort_unstable();
        // Deleted since the ids were read: skipped.
        let mut matching = ids
            .into_iter()
            .filter_map(|id| self.engine.snapshot(id).ok())
            .map(|record| describe(&record));
        let snapshots: Vec<Ec2Snapshot> = matching.by_ref().take(page_size).collect();
        let next_token = match (matching.next(), snapshots.last()) {
            (Some(_), Some(last)) => Some(self.page_token(
                PAGE_KIND_DESCRIBE_SNAPSHOTS,
                snapshot_number(&last.snapshot_id),
                fingerprint,
                0,
            )),
            _ => None,
        };
        Ok(DescribeSnapshotsResponse {
            snapshots,
            next_token,
        })
    }

    /// DeleteSnapshot: deletes a completed or failed snapshot of the
    /// caller's, freeing what nothing else references (as `blocksnap rm`).
    pub fn delete_snapshot(&self, snapshot_id: &str) -> Ec2Result<()> {
        let snapshot = validate::snapshot_id("SnapshotId", snapshot_id)?;
        Ok(self.engine.delete(snapshot)?)
    }

    /// CopySnapshot: a new completed snapshot with the source's blocks. It
    /// shares every chunk with the source, so it is made at once whatever
    /// the size: it is recorded as the source's child with no block
    /// changed, and stays whole if the source is deleted.
    pub fn copy_snapshot(&self, request: &CopySnapshotRequest) -> Ec2Result<String> {
        if request.source_region.is_empty() {
            return Err(Ec2Error::client(
                "MissingParameter",
                "The request must contain the parameter SourceRegion",
            ));
        }
        let source = validate::snapshot_id("SourceSnapshotId", &request.source_snapshot_id)?;
        let record = self.engine.snapshot(source)?;
        if !matches!(record.state, SnapshotState::Completed { .. }) {
            return Err(Ec2Error::client(
                "IncorrectState",
                format!(
                    "Snapshot {source} is in invalid state - {}",
                    record.status_name()
                ),
            ));
        }
        let started = &record.started;
        let source_key = source_key(&record);
        let plain_asked_encrypted = request.encrypted == Some(true) && started.sse == SseKind::None;
        let other_key = request
            .kms_key_id
            .as_ref()
            .is_some_and(|wanted| Some(wanted) != source_key.as_ref());
        if plain_asked_encrypted || other_key {
            return Err(Ec2Error::client(
                "InvalidParameterValue",
                format!(
                    "A copy shares its source's stored blocks, so it keeps the source's encryption ({}); copy without Encrypted and KmsKeyId, or with the source's own",
                    source_key.as_deref().unwrap_or("not encrypted")
                ),
            ));
        }
        let mut new = NewSnapshot::new(started.volume_size_gib);
        new.parent = Some(source);
        new.description = Some(
            request
                .description
                .clone()
                .unwrap_or_else(|| format!("[Copied {source} from {}]", request.source_region)),
        );
        new.tags = validate::tags(&request.tags)?;
        new.encryption = RequestedEncryption::None;
        if let Some(description) = &request.description {
            validate::description(description)?;
        }
        let copy = self.engine.start(new)?;
        let id = copy.started.snapshot;
        self.engine.complete(id, 0, None)?;
        Ok(id.to_string())
    }

    /// CreateTags: sets each tag on each snapshot (its value replaced
    /// where the key is there already, appended otherwise). Every
    /// snapshot is checked before any is changed.
    pub fn create_tags(&self, request: &CreateTagsRequest) -> Ec2Result<()> {
        let snapshots = self.resources(&request.resource_ids)?;
        if request.tags.is_empty() {
            return Err(Ec2Error::client(
                "MissingParameter",
                "The request must contain the parameter Tag",
            ));
        }
        for tag in &request.tags {
            reserved_key(&tag.key)?;
        }
        validate::tags(&request.tags)?;
        for snapshot in snapshots {
            self.engine.retag(snapshot, |current| {
                edit_tags(snapshot, current, &request.tags, &[])
            })?;
        }
        Ok(())
    }

    /// DeleteTags: removes the named tags (each only where its value is
    /// the one given, when one is), or every tag when none is named.
    /// Every snapshot is checked before any is changed.
    pub fn delete_tags(&self, request: &DeleteTagsRequest) -> Ec2Result<()> {
        let snapshots = self.resources(&request.resource_ids)?;
        for (key, _) in &request.tags {
            reserved_key(key)?;
        }
        for snapshot in snapshots {
            self.engine.retag(snapshot, |current| {
                if request.tags.is_empty() {
                    return Ok(Vec::new());
                }
                edit_tags(snapshot, current, &[], &request.tags)
            })?;
        }
        Ok(())
    }

    /// The snapshots `ids` name, each checked to be the caller's.
    fn resources(&self, ids: &[String]) -> Ec2Result<Vec<SnapshotId>> {
        if ids.is_empty() {
            return Err(Ec2Error::client(
                "MissingParameter",
                "The request must contain the parameter ResourceId",
            ));
        }
        bounded("ResourceId", ids.len())?;
        let mut snapshots = Vec::with_capacity(ids.len());
        for id in ids {
            if !id.starts_with("snap-") {
                return Err(Ec2Error::client(
                    "InvalidID",
                    format!("The ID '{id}' is not valid: only snapshots are kept here"),
                ));
            }
            let snapshot = validate::snapshot_id("ResourceId", id)?;
            self.engine.snapshot(snapshot)?;
            snapshots.push(snapshot);
        }
        Ok(snapshots)
    }

    /// DescribeTags: the tags of the caller's snapshots that match, a page
    /// at a time when `MaxResults` is given.
    pub fn describe_tags(&self, request: &DescribeTagsRequest) -> Ec2Result<DescribeTagsResponse> {
        check_filters(&request.filters, TAG_FILTERS)?;
        let page_size = page_size(request.max_results)?;
        let fingerprint = fingerprint(&[&flatten(&request.filters)]);
        let resume = match &request.next_token {
            None => None,
            Some(token) => Some(self.check_token(token, PAGE_KIND_DESCRIBE_TAGS, fingerprint)?),
        };
        // As DescribeSnapshots: only the snapshots from the resumed one on
        // that have tags are copied out, in id order, as the page needs them.
        let mut ids = self.engine.snapshot_ids_where(|record| {
            !record.started.tags.is_empty()
                && resume.is_none_or(|(after, _)| record.started.snapshot.0 >= after)
        });
        ids.sort_unstable();
        let records = ids
            .into_iter()
            .filter_map(|id| self.engine.snapshot(id).ok());
        let mut matching = records
            .flat_map(|record| {
                let id = record.started.snapshot;
                record
                    .started
                    .tags
                    .into_iter()
                    .enumerate()
                    .map(move |(position, (key, value))| (id, position as u32, key, value))
            })
            .filter(|(id, position, _, _)| {
                resume.is_none_or(|(after, next)| (id.0, *position) >= (after, next))
            })
            .filter(|(id, _, key, value)| {
                let resource_id = id.to_string();
                request.filters.iter().all(|filter| {
                    let text = match filter.name.as_str() {
                        "key" => key.as_str(),
                        "value" => value.as_str(),
                        "resource-type" => "snapshot",
                        _ => resource_id.as_str(),
                    };
                    filter.values.iter().any(|pattern| glob(pattern, text))
                })
            });
        let tags: Vec<TagDescription> = matching
            .by_ref()
            .take(page_size)
            .map(|(id, _, key, value)| TagDescription {
                resource_id: id.to_string(),
                key,
                value,
            })
            .collect();
        let next_token = matching.next().map(|(id, position, _, _)| {
            self.page_token(PAGE_KIND_DESCRIBE_TAGS, id.0, fingerprint, position)
        });
        Ok(DescribeTagsResponse { tags, next_token })
    }

    fn page_token(&self, kind: u8, snapshot: u64, fingerprint: u64, next_index: u32) -> String {
        self.signer().issue(&TokenBody::Page {
            kind,
            snapshot,
            other: fingerprint,
            next_index,
            expiry_secs: self.now_secs() + PAGE_TOKEN_LIFETIME_SECS,
        })
    }

    /// The snapshot number a DescribeSnapshots page token resumes after.
    fn resume(&self, token: Option<&str>, kind: u8, fingerprint: u64) -> Ec2Result<Option<u64>> {
        token
            .map(|token| {
                self.check_token(token, kind, fingerprint)
                    .map(|(snapshot, _)| snapshot)
            })
            .transpose()
    }

    /// Checks a page token issued for this listing (same kind, same
    /// parameters): the snapshot number and index it holds.
    fn check_token(
        &self,
        token: &str,
        expected_kind: u8,
        fingerprint: u64,
    ) -> Ec2Result<(u64, u32)> {
        let invalid = |why: &str| {
            Ec2Error::client(
                "InvalidNextToken",
                format!("The token '{token}' is invalid: {why}"),
            )
        };
        match self
            .signer()
            .check(token, self.now_secs(), ValidationReason::InvalidPageToken)
        {
            Ok(TokenBody::Page {
                kind,
                snapshot,
                other,
                next_index,
                ..
            }) if kind == expected_kind && other == fingerprint => Ok((snapshot, next_index)),
            Ok(_) => Err(invalid("it belongs to another listing")),
            Err(error) => Err(invalid(&error.to_string())),
        }
    }
}

/// The filters DescribeSnapshots knows.
const SNAPSHOT_FILTERS: &[&str] = &[
    "description",
    "encrypted",
    "kms-key-id",
    "owner-id",
    "progress",
    "snapshot-id",
    "start-time",
    "status",
    "tag-key",
    "volume-id",
    "volume-size",
];

/// The filters DescribeTags knows.
const TAG_FILTERS: &[&str] = &["key", "resource-id", "resource-type", "value"];

/// EC2 keeps keys starting `aws:` for itself.
fn reserved_key(key: &str) -> Ec2Result<()> {
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(Ec2Error::client(
            "InvalidParameterValue",
            format!("Tag key '{key}' is reserved: keys starting with 'aws:' are for AWS's use"),
        ));
    }
    Ok(())
}

fn bounded(what: &str, count: usize) -> Ec2Result<()> {
    if count > MAX_LIST_ITEMS {
        return Err(Ec2Error::client(
            "InvalidParameterValue",
            format!("At most {MAX_LIST_ITEMS} {what} values may be given"),
        ));
    }
    Ok(())
}

fn check_filters(filters: &[Filter], known: &[&str]) -> Ec2Result<()> {
    bounded("Filter", filters.len())?;
    for filter in filters {
        bounded("Filter value", filter.values.len())?;
        let tag =
            known == SNAPSHOT_FILTERS && filter.name.starts_with("tag:") && filter.name.len() > 4;
        if !tag && !known.contains(&filter.name.as_str()) {
            return Err(Ec2Error::client(
                "InvalidParameterValue",
                format!("The filter '{}' is invalid", filter.name),
            ));
        }
        if filter.values.is_empty() {
            return Err(Ec2Error::client(
                "InvalidParameterValue",
                format!("The filter '{}' has no value", filter.name),
            ));
        }
    }
    Ok(())
}

fn page_size(max_results: Option<i64>) -> Ec2Result<usize> {
    match max_results {
        None => Ok(usize::MAX),
        Some(size) if (MIN_MAX_RESULTS..=MAX_MAX_RESULTS).contains(&size) => Ok(size as usize),
        Some(size) => Err(Ec2Error::client(
            "InvalidParameterValue",
            format!(
                "Value ( {size} ) for parameter maxResults is invalid. Expecting a value between {MIN_MAX_RESULTS} and {MAX_MAX_RESULTS}."
            ),
        )),
    }
}

/// A filter list as strings, for a page token's fingerprint.
fn flatten(filters: &[Filter]) -> Vec<String> {
    filters
        .iter()
        .flat_map(|filter| {
            std::iter::once(filter.name.clone()).chain(filter.values.iter().cloned())
        })
        .collect()
}

/// 64 bits of a hash of a listing's parameters: a page token resumes only
/// the listing it came from.
fn fingerprint(lists: &[&Vec<String>]) -> u64 {
    let mut hasher = blake3::Hasher::new();
    for list in lists {
        hasher.update(&(list.len() as u64).to_le_bytes());
        for item in list.iter() {
            hasher.update(&(item.len() as u64).to_le_bytes());
            hasher.update(item.as_bytes());
        }
    }
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(bytes)
}

fn snapshot_number(text: &str) -> u64 {
    SnapshotId::parse(text).map_or(0, |id| id.0)
}

/// The key a snapshot is encrypted under, as EC2 names it.
fn source_key(record: &SnapshotRecord) -> Option<String> {
    let started = &record.started;
    // A plain snapshot's key name is its owner's dedup domain: internal.
    started
        .kms_key_arn
        .clone()
        .filter(|_| started.sse != SseKind::None)
}

fn describe(record: &SnapshotRecord) -> Ec2Snapshot {
    let started = &record.started;
    let (state_message, completion_millis) = match &record.state {
        SnapshotState::Error { reason, .. } => (Some(reason.clone()), None),
        SnapshotState::Completed {
            completed_millis, ..
        } => (None, Some(*completed_millis)),
        SnapshotState::Pending => (None, None),
    };
    Ec2Snapshot {
        snapshot_id: started.snapshot.to_string(),
        state: status_of(record),
        state_message,
        progress: progress(record),
        start_millis: started.start_millis,
        completion_millis,
        volume_size: started.volume_size_gib,
        description: started.description.clone(),
        tags: tags_of(started),
        encrypted: started.sse != SseKind::None,
        kms_key_id: source_key(record),
        owner_id: started.owner.clone(),
    }
}

/// EC2's time stamp text: `2026-12-03T02:10:11.123Z`.
pub fn timestamp(millis: u64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let nanos = i128::from(millis) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|instant| instant.format(&format).ok())
        .unwrap_or_default()
}

/// Whether `record` matches any value of `filter`.
fn record_matches(record: &SnapshotRecord, filter: &Filter) -> bool {
    let any = |text: &str| filter.values.iter().any(|pattern| glob(pattern, text));
    let started = &record.started;
    match filter.name.as_str() {
        "description" => any(started.description.as_deref().unwrap_or("")),
        "encrypted" => any(if started.sse == SseKind::None {
            "false"
        } else {
            "true"
        }),
        "kms-key-id" => source_key(record).as_deref().is_some_and(any),
        "owner-id" => any(&started.owner),
        "progress" => any(progress(record)),
        "snapshot-id" => any(&started.snapshot.to_string()),
        "start-time" => any(&timestamp(started.start_millis)),
        "status" => any(record.status_name()),
        "tag-key" => started.tags.iter().any(|(key, _)| any(key)),
        "volume-id" => any(NO_VOLUME_ID),
        "volume-size" => any(&started.volume_size_gib.to_string()),
        name => match name.strip_prefix("tag:") {
            Some(wanted) => started
                .tags
                .iter()
                .any(|(key, value)| key == wanted && any(value)),
            None => false,
        },
    }
}

/// EC2's progress text: `100%` once completed, else `0%`.
fn progress(record: &SnapshotRecord) -> &'static str {
    if matches!(record.state, SnapshotState::Completed { .. }) {
        "100%"
    } else {
        "0%"
    }
}

/// One element of a filter pattern.
#[derive(Clone, Copy, PartialEq)]
enum Wildcard {
    /// `*`: any run of characters.
    Any,
    /// `?`: any one character.
    One,
    /// A character to match exactly (`\` before `*`, `?` or `\`).
    Literal(char),
}

/// EC2's filter wildcards: `*` any run of characters, `?` any one, `\`
/// makes the next character literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut elements = Vec::new();
    let mut chars = pattern.chars();
    while let Some(next) = chars.next() {
        elements.push(match next {
            '*' => Wildcard::Any,
            '?' => Wildcard::One,
            '\\' => Wildcard::Literal(chars.next().unwrap_or('\\')),
            other => Wildcard::Literal(other),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // Greedy with one backtrack point (the last `*`): O(pattern x text) at
    // worst, both bounded by the request's size.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match elements.get(p) {
            Some(Wildcard::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Wildcard::One) => {
                p += 1;
                t += 1;
            }
            Some(Wildcard::Literal(expected)) if text.get(t) == Some(expected) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_at, from)) => {
                    star = Some((star_at, from + 1));
                    p = star_at + 1;
                    t = from + 1;
                }
                None => return false,
            },
        }
    }
    elements
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|element| *element == Wildcard::Any))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_ec2_filters_do() {
        for (pattern, text, matches) in [
            ("completed", "completed", true),
            ("complete", "completed", false),
            ("*", "", true),
            ("*", "anything", true),
            ("comp*", "completed", true),
            ("*ted", "completed", true),
            ("c?mpleted", "completed", true),
            ("c?mpleted", "cmpleted", false),
            ("*l*t*", "completed", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbYd", false),
            ("2026-12-*", "2026-12-03T02:10:11.000Z", true),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("\\?x", "?x", true),
            ("", "", true),
            ("", "x", false),
            ("x*", "", false),
        ] {
            assert_eq!(glob(pattern, text), matches, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn time_stamps_are_ec2_text() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_780_452_611_123), "2026-06-03T02:10:11.123Z");
    }

    #[test]
    fn page_sizes_are_bounded_as_ec2_bounds_them() {
        assert_eq!(page_size(None).ok(), Some(usize::MAX));
        assert_eq!(page_size(Some(5)).ok(), Some(5));
        assert_eq!(page_size(Some(1000)).ok(), Some(1000));
        for wrong in [-1, 0, 4, 1001] {
            assert_eq!(
                page_size(Some(wrong)).map_err(|error| error.code),
                Err("InvalidParameterValue")
            );
        }
    }
}
