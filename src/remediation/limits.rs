//! The limits on remediation calls: a token bucket per action and a global one, a circuit
//! breaker per action, and the backoff between retries. Plain data on an `Instant` clock.

use std::time::Duration;

use tokio::time::Instant;

pub(super) struct Bucket {
    tokens: f64,
    per_sec: f64,
    capacity: f64,
    last: Instant,
}

impl Bucket {
    /// At most `per_minute` a minute, with a burst of one second's worth (at least one).
    pub(super) fn new(per_minute: u32) -> Bucket {
        let per_sec = f64::from(per_minute) / 60.0;
        let capacity = per_sec.max(1.0);
        Bucket {
            tokens: capacity,
            per_sec,
            capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
    }

    pub(super) fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    pub(super) fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// When the bucket next holds a whole token.
    pub(super) fn next_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 || self.per_sec <= 0.0 {
            return now;
        }
        now + Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
    }
}

#[derive(Default)]
pub(super) struct Circuit {
    pub(super) failures: u32,
    pub(super) open_until: Option<Instant>,
}

impl Circuit {
    /// Open now: no call until its open time has passed. Half-open after that: one trial
    /// call is let through, and its outcome closes or reopens it.
    pub(super) fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until)
    }

    /// Counts a failed call; opens the breaker for `open_for` once `threshold` calls in a row
    /// have failed (and it is not open already). True when this failure opened it.
    pub(super) fn failed(&mut self, now: Instant, threshold: u32, open_for: Duration) -> bool {
        self.failures += 1;
        if self.failures >= threshold && self.open_until.is_none_or(|u| u <= now) {
            self.open_until = Some(now + open_for);
            return true;
        }
        false
    }
}

/// The longest wait a receiver's `Retry-After` can impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `now + d`, or a year from now when that would overflow the clock.
pub(super) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// ±20 % around `d`, from the clock's sub-second noise, so that retries spread out.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0)
}

/// The wait before retry `failures` (1 for the first): exponential from `initial`, capped at
/// `max`, jittered; a receiver's `Retry-After` may lengthen it, up to [`MAX_RETRY_AFTER`].
pub(super) fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let backoff = jittered(
        initial
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)))
            .min(max),
    );
    retry_after.map_or(backoff, |r| r.min(MAX_RETRY_AFTER).max(backoff))
}
