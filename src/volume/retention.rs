//! Retention policies (`blocksnap forget`), with restic's semantics: the
//! snapshots of one volume, newest first; each `keep_*` rule keeps the
//! newest snapshot of each of its N most recent periods that hold one
//! (and, while it has periods left at the oldest snapshot, that one too);
//! `within` keeps every snapshot taken less than a span before the newest;
//! `tags` keeps every snapshot carrying one of them. A snapshot any rule
//! keeps stays; the rest are removed.
//!
//! Periods are calendar periods of the snapshot's start time in a time
//! zone (the system's, DST included, for the CLI): hours, days, ISO weeks
//! (Monday to Sunday, the ISO week-numbering year), months, years.

use crate::error::{Error, Result, ValidationReason};
use crate::ids::SnapshotId;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

/// A calendar span (`1y2m3d4h`: years, months, days, hours), as restic's
/// `--keep-within` takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CalendarSpan {
    /// Years.
    pub years: i64,
    /// Months.
    pub months: i64,
    /// Days.
    pub days: i64,
    /// Hours.
    pub hours: i64,
}

impl CalendarSpan {
    /// Parses `NyNmNdNh` (any of the four, in that order, each at most
    /// once; `m` is months): `30d`, `1y6m`, `36h`.
    pub fn parse(text: &str) -> Result<CalendarSpan> {
        let bad = || {
            Error::invalid(
                ValidationReason::InvalidParameterValue,
                format!("'{text}' is not a span: write NyNmNdNh (m = months; no weeks), e.g. 30d, 1y6m, 36h"),
            )
        };
        let mut span = CalendarSpan::default();
        let mut digits = String::new();
        let mut order = 0;
        for character in text.chars() {
            if character.is_ascii_digit() {
                digits.push(character);
                continue;
            }
            let rank = match character {
                'y' => 1,
                'm' => 2,
                'd' => 3,
                'h' => 4,
                _ => return Err(bad()),
            };
            if rank <= order || digits.is_empty() || digits.len() > 6 {
                return Err(bad());
            }
            order = rank;
            let value: i64 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            match rank {
                1 => span.years = value,
                2 => span.months = value,
                3 => span.days = value,
                _ => span.hours = value,
            }
        }
        if !digits.is_empty() || order == 0 {
            return Err(bad());
        }
        Ok(span)
    }

    fn is_zero(&self) -> bool {
        *self == CalendarSpan::default()
    }
}

impl std::fmt::Display for CalendarSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (value, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if value != 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

/// What to keep. A count of 0 turns its rule off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The newest N snapshots.
    pub last: u32,
    /// The newest snapshot of each of the N most recent hours holding one.
    pub hourly: u32,
    /// ... of days.
    pub daily: u32,
    /// ... of ISO weeks.
    pub weekly: u32,
    /// ... of months.
    pub monthly: u32,
    /// ... of years.
    pub yearly: u32,
    /// Every snapshot started less than this before the newest one.
    pub within: Option<CalendarSpan>,
    /// Every snapshot with one of these tags (a key, or a key and value).
    pub tags: Vec<(String, Option<String>)>,
}

impl RetentionPolicy {
    /// Whether no rule is set (such a policy would remove everything; the
    /// CLI refuses it).
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none_or(|span| span.is_zero())
            && self.tags.is_empty()
    }
}

/// One snapshot a policy judges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Its start time, epoch milliseconds.
    pub start_millis: u64,
    /// Its tags.
    pub tags: Vec<(String, String)>,
}

/// What the policy decided about one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Decision {
    /// The snapshot.
    #[serde(rename = "SnapshotId")]
    pub snapshot: SnapshotId,
    /// Its start time, epoch milliseconds.
    #[serde(skip)]
    pub start_millis: u64,
    /// Kept (by at least one rule) or removed.
    pub keep: bool,
    /// The rules that keep it (`daily snapshot`, `within 30d`, `tag
    /// K=V`, `oldest monthly snapshot`); empty when removed.
    pub reasons: Vec<String>,
}

/// The period of a snapshot's time (equal values: the same period), given
/// its position newest first (`last` gives each its own).
type Bucket = fn(&Zoned, usize) -> i64;

/// The period rules, in restic's order: name, count, bucket.
fn period_rules(policy: &RetentionPolicy) -> [(&'static str, u32, Bucket); 6] {
    [
        ("last snapshot", policy.last, |_, position| position as i64),
        ("hourly snapshot", policy.hourly, |time, _| {
            ((i64::from(time.year()) * 100 + i64::from(time.month())) * 100 + i64::from(time.day()))
                * 100
                + i64::from(time.hour())
        }),
        ("daily snapshot", policy.daily, |time, _| {
            (i64::from(time.year()) * 100 + i64::from(time.month())) * 100 + i64::from(time.day())
        }),
        ("weekly snapshot", policy.weekly, |time, _| {
            let week = time.date().iso_week_date();
            i64::from(week.year()) * 100 + i64::from(week.week())
        }),
        ("monthly snapshot", policy.monthly, |time, _| {
            i64::from(time.year()) * 100 + i64::from(time.month())
        }),
        ("yearly snapshot", policy.yearly, |time, _| {
            i64::from(time.year())
        }),
    ]
}

fn zoned(millis: u64, zone: &TimeZone) -> Result<Zoned> {
    let millis = i64::try_from(millis).map_err(|_| time_error(millis))?;
    Timestamp::from_millisecond(millis)
        .map(|instant| instant.to_zoned(zone.clone()))
        .map_err(|_| time_error(millis as u64))
}

fn time_error(millis: u64) -> Error {
    Error::invalid(
        ValidationReason::InvalidParameterValue,
        format!("start time {millis} ms is out of range"),
    )
}

/// Applies `policy` to the snapshots of one volume, in `zone`; `now` (epoch
/// milliseconds) bounds which snapshot counts as the newest for `within`
/// (one dated in the future does not). Returns one decision per snapshot,
/// newest first (ties by id).
pub fn apply(
    policy: &RetentionPolicy,
    candidates: &[Candidate],
    zone: &TimeZone,
    now_millis: u64,
) -> Result<Vec<Decision>> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by_key(|candidate| std::cmp::Reverse((candidate.start_millis, candidate.snapshot)));
    let newest = sorted
        .iter()
        .map(|candidate| candidate.start_millis)
        .filter(|start| *start < now_millis)
        .max();
    let within_after = match (policy.within, newest) {
        (Some(span), Some(newest)) if !span.is_zero() => {
            let span = Span::new()
                .try_years(span.years)
                .and_then(|s| s.try_months(span.months))
                .and_then(|s| s.try_days(span.days))
                .and_then(|s| s.try_hours(span.hours))
                .map_err(|error| {
                    Error::invalid(
                        ValidationReason::InvalidParameterValue,
                        format!("--keep-within {span}: {error}"),
                    )
                })?;
            let bound = zoned(newest, zone)?.checked_sub(span).map_err(|error| {
                Error::invalid(
                    ValidationReason::InvalidParameterValue,
                    format!("--keep-within: {error}"),
                )
            })?;
            Some(bound.timestamp().as_millisecond())
        }
        _ => None,
    };
    let mut rules = period_rules(policy);
    let mut last_bucket: [Option<i64>; 6] = [None; 6];
    let mut decisions = Vec::with_capacity(sorted.len());
    let oldest = sorted.len().saturating_sub(1);
    for (position, candidate) in sorted.iter().enumerate() {
        let time = zoned(candidate.start_millis, zone)?;
        let mut reasons = Vec::new();
        for (key, value) in &policy.tags {
            let has = candidate.tags.iter().any(|(tag_key, tag_value)| {
                tag_key == key && value.as_ref().is_none_or(|value| value == tag_value)
            });
            if has {
                reasons.push(match value {
                    Some(value) => format!("tag {key}={value}"),
                    None => format!("tag {key}"),
                });
            }
        }
        if let (Some(after), Some(span)) = (within_after, policy.within) {
            if i64::try_from(candidate.start_millis).is_ok_and(|start| start > after) {
                reasons.push(format!("within {span}"));
            }
        }
        for (rule, last) in rules.iter_mut().zip(last_bucket.iter_mut()) {
            let (name, count, bucket) = rule;
            if *count == 0 {
                continue;
            }
            let value = bucket(&time, position);
            let new_period = *last != Some(value);
            // While the rule has periods left, the oldest snapshot is kept
            // too: the history reaches as far back as it can.
            if new_period || position == oldest {
                reasons.push(if new_period {
                    (*name).to_string()
                } else {
                    format!("oldest {name}")
                });
                *last = Some(value);
                *count -= 1;
            }
        }
        decisions.push(Decision {
            snapshot: candidate.snapshot,
            start_millis: candidate.start_millis,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    Ok(decisions)
}
