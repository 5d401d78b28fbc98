//! Injectable wall-clock time, so expiry and timeouts are testable.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<u64>>,
}

impl ManualClock {
    /// A clock standing at `start_millis`.
    pub fn new(start_millis: u64) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start_millis)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        *now = now.saturating_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX));
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        *self.now.lock()
    }
}

/// Converts epoch milliseconds to a `SystemTime`.
pub fn millis_to_system_time(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// Wall-clock time that follows tokio's clock: with a paused test runtime
/// (`start_paused`), time moves only when the runtime advances it, and the
/// engine's reaper and deadlines move with it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_millis: u64,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start_millis` now.
    pub fn new(start_millis: u64) -> Self {
        TokioClock {
            base_millis: start_millis,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_millis(&self) -> u64 {
        let elapsed = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_millis.saturating_add(elapsed)
    }
}

/// Serializes a duration as seconds, a float (how reports give wall
/// times: `"Seconds": 1.25`).
pub fn serialize_seconds<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds), as the CLI and
/// the EC2-style listings show instants.
pub fn utc_seconds(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    i64::try_from(secs)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|instant| instant.format(&format).ok())
        .unwrap_or_else(|| format!("@{secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_seconds_dates() {
        assert_eq!(utc_seconds(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc_seconds(UNIX_EPOCH + Duration::from_secs(1_795_392_000)),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            utc_seconds(UNIX_EPOCH + Duration::from_millis(951_782_400_000 + 3_723_900)),
            "2000-02-29T01:02:03Z"
        );
    }
}
