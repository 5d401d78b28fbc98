//! Retention policies against a table of snapshot times whose results are
//! worked out by hand (in the comments), as restic's own policy tests are:
//! periods in UTC, a fixed offset and a zone with daylight saving time,
//! ISO weeks across a year's end, leap days, and periods without
//! snapshots.

use blocksnap::ids::SnapshotId;
use blocksnap::volume::retention::{apply, CalendarSpan, Candidate, RetentionPolicy};
use jiff::tz::{Offset, TimeZone};
use jiff::Timestamp;

fn millis(time: &str) -> u64 {
    let instant: Timestamp = time
        .parse()
        .unwrap_or_else(|error| panic!("{time}: {error}"));
    u64::try_from(instant.as_millisecond()).expect("after 1970")
}

/// Applies `policy` in `zone` at `now` to snapshots started at `times`
/// (each with the tags given after a space, `k=v,k2=v2`), and returns the
/// times of those kept, newest first.
fn kept(policy: &RetentionPolicy, zone: &TimeZone, now: &str, times: &[&str]) -> Vec<String> {
    let candidates: Vec<Candidate> = times
        .iter()
        .enumerate()
        .map(|(position, entry)| {
            let (time, tags) = entry.split_once(' ').unwrap_or((entry, ""));
            Candidate {
                snapshot: SnapshotId(position as u64 + 1),
                start_millis: millis(time),
                tags: tags
                    .split(',')
                    .filter(|tag| !tag.is_empty())
                    .map(|tag| {
                        let (key, value) = tag.split_once('=').unwrap_or((tag, ""));
                        (key.to_string(), value.to_string())
                    })
                    .collect(),
            }
        })
        .collect();
    let decisions = apply(policy, &candidates, zone, millis(now)).expect("apply");
    assert_eq!(decisions.len(), times.len(), "one decision per snapshot");
    for pair in decisions.windows(2) {
        assert!(pair[0].start_millis >= pair[1].start_millis, "newest first");
    }
    for decision in &decisions {
        assert_eq!(decision.keep, !decision.reasons.is_empty());
    }
    decisions
        .iter()
        .filter(|decision| decision.keep)
        .map(|decision| {
            let position = decision.snapshot.0 as usize - 1;
            times[position]
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn utc() -> TimeZone {
    TimeZone::UTC
}

fn plus_two_hours() -> TimeZone {
    TimeZone::fixed(Offset::constant(2))
}

/// Central European time with its daylight saving rules (as a POSIX TZ
/// string, so no time zone database is needed): CET +01:00, CEST +02:00
/// from the last Sunday of March 01:00 UTC to the last Sunday of October
/// 01:00 UTC.
fn central_europe() -> TimeZone {
    TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("POSIX TZ")
}

const NOW: &str = "2025-06-01T00:00:00Z";

/// Around a leap day: two on the 28th, one on the 29th, two on March 1st.
const LEAP: [&str; 6] = [
    "2024-02-27T10:00:00Z",
    "2024-02-28T09:00:00Z",
    "2024-02-28T23:30:00Z",
    "2024-02-29T08:00:00Z",
    "2024-03-01T01:00:00Z",
    "2024-03-01T12:00:00Z",
];

#[test]
fn daily_keeps_the_newest_of_each_day_in_the_time_zone() {
    let policy = RetentionPolicy {
        daily: 3,
        ..RetentionPolicy::default()
    };
    // UTC, newest first: 03-01 12:00 (day 1), 03-01 01:00 (same day), 02-29
    // (day 2), 02-28 23:30 (day 3), then no days left.
    assert_eq!(
        kept(&policy, &utc(), NOW, &LEAP),
        [
            "2024-03-01T12:00:00Z",
            "2024-02-29T08:00:00Z",
            "2024-02-28T23:30:00Z"
        ]
    );
    // At +02:00 the 23:30 of the 28th is 01:30 on the 29th: the 29th's
    // newest is 10:00 local, and the third day is the 28th (11:00 local).
    assert_eq!(
        kept(&policy, &plus_two_hours(), NOW, &LEAP),
        [
            "2024-03-01T12:00:00Z",
            "2024-02-29T08:00:00Z",
            "2024-02-28T09:00:00Z"
        ]
    );
    // More days asked for than there are: every day's newest (four days),
    // the oldest being a day of its own.
    let all_days = RetentionPolicy {
        daily: 10,
        ..RetentionPolicy::default()
    };
    assert_eq!(
        kept(&all_days, &utc(), NOW, &LEAP),
        [
            "2024-03-01T12:00:00Z",
            "2024-02-29T08:00:00Z",
            "2024-02-28T23:30:00Z",
            "2024-02-27T10:00:00Z"
        ]
    );
}

#[test]
fn the_oldest_snapshot_is_kept_while_a_rule_has_periods_left() {
    let times = [
        "2024-01-01T08:00:00Z",
        "2024-01-01T20:00:00Z",
        "2024-01-02T08:00:00Z",
    ];
    // Two days, five asked for: the 08:00 of the 1st shares its day with
    // the 20:00, but it is the oldest and the rule has periods left.
    let generous = RetentionPolicy {
        daily: 5,
        ..RetentionPolicy::default()
    };
    assert_eq!(kept(&generous, &utc(), NOW, &times).len(), 3);
    // Exactly two days asked for: none left at the oldest.
    let exact = RetentionPolicy {
        daily: 2,
        ..RetentionPolicy::default()
    };
    assert_eq!(
        kept(&exact, &utc(), NOW, &times),
        ["2024-01-02T08:00:00Z", "2024-01-01T20:00:00Z"]
    );
}

#[test]
fn weekly_uses_iso_weeks_across_the_years_end() {
    // 2024-12-28 is a Saturday of 2024-W52; Monday 2024-12-30 and Sunday
    // 2025-01-05 are both 2025-W01; Monday 2025-01-06 is 2025-W02.
    let times = [
        "2024-12-28T12:00:00Z",
        "2024-12-30T12:00:00Z",
        "2025-01-05T12:00:00Z",
        "2025-01-06T12:00:00Z",
    ];
    let two = RetentionPolicy {
        weekly: 2,
        ..RetentionPolicy::default()
    };
    assert_eq!(
        kept(&two, &utc(), NOW, &times),
        ["2025-01-06T12:00:00Z", "2025-01-05T12:00:00Z"]
    );
    let three = RetentionPolicy {
        weekly: 3,
        ..RetentionPolicy::default()
    };
    assert_eq!(
        kept(&three, &utc(), NOW, &times),
        [
            "2025-01-06T12:00:00Z",
            "2025-01-05T12:00:00Z",
            "2024-12-28T12:00:00Z"
        ]
    );
}

#[test]
fn empty_periods_do_not_count() {
    // No snapshot in March or April: three months are May, February and
    // January; the earlier February one goes.
    let times = [
        "2024-01-15T00:00:00Z",
        "2024-02-10T00:00:00Z",
        "2024-02-20T00:00:00Z",
        "2024-05-01T00:00:00Z",
    ];
    let policy = RetentionPolicy {
        monthly: 3,
        ..RetentionPolicy::default()
    };
    assert_eq!(
        kept(&policy, &utc(), NOW, &times),
        [
            "2024-05-01T00:00:00Z",
            "2024-02-20T00:00:00Z",
            "2024-01-15T00:00:00Z"
        ]
    );
}

#[test]
fn rules_combine_and_each_gives_its_reason() {
    let times = [
        "2024-01-10T00:00:00Z",
        "2024-02-10T00:00:00Z",
        "2024-02-20T00:00:00Z",
        "2024-03-05T00:00:00Z",
    ];
    // last 2: March 5th and February 20th; monthly 1: March 5th.
    let policy = RetentionPolicy {
        last: 2,
        monthly: 1,
        ..RetentionPolicy::default()
    };
    assert_eq!(
        kept(&policy, &utc(), NOW, &times),
        ["2024-03-05T00:00:00Z", "2024-02-20T00:00:00Z"]
    );
    let candidates: Vec<Candidate> = times
        .iter()
        .enumerate()
        .map(|(position, time)| Candidate {
            snapshot: SnapshotId(position as u64 + 1),
            start_millis: millis(time),
            tags: Vec::new(),
        })
        .collect();
    let decisions = apply(&policy, &candidates, &utc(), millis(NOW)).expect("apply");
    assert_eq!(decisions[0].reasons, ["last snapshot", "monthly snapshot"]);
    assert_eq!(decisions[1].reasons, ["last snapshot"]);
    assert!(decisions[2].reasons.is_empty() && decisions[3].reasons.is_empty());
}

#[test]
fn within_counts_back_from_the_newest_snapshot_not_in_the_future() {
    // Newest (not in the future) 2024-03-01 12:00; 2 days back is
    // 2024-02-28 12:00 (a leap year's February): strictly after it stays.
    // The snapshot dated after `now` stays too (it is after the bound).
    let times = [
        "2024-02-28T12:00:00Z",
        "2024-02-28T12:00:01Z",
        "2024-02-29T00:00:00Z",
        "2024-03-01T12:00:00Z",
        "2024-03-05T00:00:00Z",
    ];
    let policy = RetentionPolicy {
        within: Some(CalendarSpan::parse("2d").expect("span")),
        ..RetentionPolicy::default()
    };
    assert_eq!(
        kept(&policy, &utc(), "2024-03-01T13:00:00Z", &times),
        [
            "2024-03-05T00:00:00Z",
            "2024-03-01T12:00:00Z",
            "2024-02-29T00:00:00Z",
            "2024-02-28T12:00:01Z"
        ]
    );
    // One month back from March 31st is February 29th (clamped to the
    // month's last day).
    let month = RetentionPolicy {
        within: Some(CalendarSpan::parse("1m").expect("span")),
        ..RetentionPolicy::default()
    };
    let times = [
        "2024-02-28T23:59:00Z",
        "2024-02-29T00:00:00.001Z",
        "2024-03-31T00:00:00Z",
    ];
    assert_eq!(
        kept(&month, &utc(), NOW, &times),
        ["2024-03-31T00:00:00Z", "2024-02-29T00:00:00.001Z"]
    );
}

#[test]
fn hours_follow_the_wall_clock_through_daylight_saving_changes() {
    // 2024-10-27: CEST ends at 01:00 UTC, so 00:30 UTC and 01:30 UTC are
    // both 02:30 on the wall clock: one hour, of which the newest stays.
    // The 26th's 12:00 UTC (14:00 local) is an hour of its own.
    let times = [
        "2024-10-26T12:00:00Z",
        "2024-10-27T00:30:00Z",
        "2024-10-27T01:30:00Z",
    ];
    let policy = RetentionPolicy {
        hourly: 5,
        ..RetentionPolicy::default()
    };
    assert_eq!(
        kept(&policy, &central_europe(), NOW, &times),
        ["2024-10-27T01:30:00Z", "2024-10-26T12:00:00Z"]
    );
    // In UTC they are three different hours.
    assert_eq!(kept(&policy, &utc(), NOW, &times).len(), 3);
    // 2024-03-31: CEST begins at 01:00 UTC; 00:30 UTC is 01:30 CET and
    // 01:30 UTC is 03:30 CEST, two hours (02:00 never happened).
    let spring = [
        "2024-03-30T12:00:00Z",
        "2024-03-31T00:30:00Z",
        "2024-03-31T01:30:00Z",
    ];
    assert_eq!(kept(&policy, &central_europe(), NOW, &spring).len(), 3);
}

#[test]
fn years_and_days_change_where_the_zone_says() {
    // 2022-12-31 23:30 UTC is already 2023 at +02:00.
    let times = [
        "2022-06-01T00:00:00Z",
        "2022-12-31T23:30:00Z",
        "2023-06-01T00:00:00Z",
    ];
    let policy = RetentionPolicy {
        yearly: 2,
        ..RetentionPolicy::default()
    };
    assert_eq!(
        kept(&policy, &utc(), NOW, &times),
        ["2023-06-01T00:00:00Z", "2022-12-31T23:30:00Z"]
    );
    assert_eq!(
        kept(&policy, &plus_two_hours(), NOW, &times),
        ["2023-06-01T00:00:00Z", "2022-06-01T00:00:00Z"]
    );
}

#[test]
fn tags_keep_whatever_else_the_policy_says() {
    let times = [
        "2024-01-01T00:00:00Z keep=",
        "2024-01-02T00:00:00Z env=prod",
        "2024-01-03T00:00:00Z env=test",
        "2024-01-04T00:00:00Z",
    ];
    let policy = RetentionPolicy {
        last: 1,
        tags: vec![("keep".into(), None), ("env".into(), Some("prod".into()))],
        ..RetentionPolicy::default()
    };
    assert_eq!(
        kept(&policy, &utc(), NOW, &times),
        [
            "2024-01-04T00:00:00Z",
            "2024-01-02T00:00:00Z",
            "2024-01-01T00:00:00Z"
        ]
    );
}

#[test]
fn spans_parse_as_restic_writes_them() {
    let span = |text: &str| CalendarSpan::parse(text).ok();
    assert_eq!(
        span("1y2m3d4h"),
        Some(CalendarSpan {
            years: 1,
            months: 2,
            days: 3,
            hours: 4
        })
    );
    assert_eq!(span("30d").map(|span| span.days), Some(30));
    for bad in ["", "5", "d", "2w", "1d2y", "1d1d", "-1d", "1.5d"] {
        assert_eq!(span(bad), None, "{bad}");
    }
    assert_eq!(
        span("1y6m").map(|span| span.to_string()),
        Some("1y6m".into())
    );
    assert!(RetentionPolicy::default().is_empty());
}
