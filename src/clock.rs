//! Injectable wall-clock time, so expiry and timeouts are testable.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Spreads work over time so that at most `rate` bytes per second pass on
/// average (the collector's copying, verify's reading); threads may
/// share one.
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: Option<u64>,
    started: Instant,
    bytes: Mutex<u64>,
}

impl Pacer {
    /// A pacer allowing `rate` bytes per second (`None` or 0: unlimited).
    pub(crate) fn new(rate: Option<u64>) -> Pacer {
        Pacer {
            rate,
            started: Instant::now(),
            bytes: Mutex::new(0),
        }
    }

    /// How long to wait after `bytes` more, `elapsed` since the start.
    fn delay(&self, bytes: u64, elapsed: Duration) -> Duration {
        let mut total = self.bytes.lock();
        *total += bytes;
        match self.rate {
            Some(rate) if rate > 0 => {
                let due = Duration::from_secs_f64(*total as f64 / rate as f64);
                due.saturating_sub(elapsed)
            }
            _ => Duration::ZERO,
        }
    }

    /// Accounts for `bytes` done and sleeps if ahead of the rate.
    pub(crate) fn pace(&self, bytes: u64) {
        let delay = self.delay(bytes, self.started.elapsed());
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_keeps_the_average_rate() {
        let pacer = Pacer::new(Some(1000));
        // 500 bytes at t=0 are half a second early.
        assert_eq!(pacer.delay(500, Duration::ZERO), Duration::from_millis(500));
        // 1000 bytes in total at t=2s: behind schedule, no wait.
        assert_eq!(pacer.delay(500, Duration::from_secs(2)), Duration::ZERO);
        let unlimited = Pacer::new(None);
        assert_eq!(unlimited.delay(1 << 30, Duration::ZERO), Duration::ZERO);
    }

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
