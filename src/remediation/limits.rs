//! The limits on remediation calls: a token bucket per action and a global one, a circuit
//! breaker per action, and the backoff between retries. Plain data on the controller's
//! clock (the wall clock live, the replay's virtual clock in a backtest).

use std::time::Duration;

use crate::util::time::Ts;

pub(super) struct Bucket {
    tokens: f64,
    per_sec: f64,
    capacity: f64,
    last: Ts,
}

impl Bucket {
    /// At most `per_minute` a minute, with a burst of one second's worth (at least one).
    pub(super) fn new(per_minute: u32, now: Ts) -> Bucket {
        let per_sec = f64::from(per_minute) / 60.0;
        let capacity = per_sec.max(1.0);
        Bucket {
            tokens: capacity,
            per_sec,
            capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Ts) {
        let elapsed = now.secs_since(self.last);
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
    }

    pub(super) fn ready(&mut self, now: Ts) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    pub(super) fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// Gives back a token taken for a call that was not made.
    pub(super) fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }

    /// When the bucket next holds a whole token.
    pub(super) fn next_at(&mut self, now: Ts) -> Ts {
        self.refill(now);
        if self.tokens >= 1.0 || self.per_sec <= 0.0 {
            return now;
        }
        // Rounded up to the clock's millisecond, so that the bucket is full at that instant.
        let wait = ((1.0 - self.tokens) / self.per_sec * 1000.0).ceil() as u64;
        now.saturating_add(Duration::from_millis(wait))
    }
}

#[derive(Default)]
pub(super) struct Circuit {
    pub(super) failures: u32,
    pub(super) open_until: Option<Ts>,
}

impl Circuit {
    /// Open now: no call until its open time has passed. Half-open after that: one trial
    /// call is let through, and its outcome closes or reopens it.
    pub(super) fn is_open(&self, now: Ts) -> bool {
        self.open_until.is_some_and(|until| now < until)
    }

    /// Counts a failed call; opens the breaker for `open_for` once `threshold` calls in a row
    /// have failed (and it is not open already). True when this failure opened it.
    pub(super) fn failed(&mut self, now: Ts, threshold: u32, open_for: Duration) -> bool {
        self.failures += 1;
        if self.failures >= threshold && self.open_until.is_none_or(|u| u <= now) {
            self.open_until = Some(now.saturating_add(open_for));
            return true;
        }
        false
    }
}

/// The longest wait a receiver's `Retry-After` can impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `now + d`, at most a year from now.
pub(super) fn later(now: Ts, d: Duration) -> Ts {
    now.saturating_add(d.min(Duration::from_secs(365 * 24 * 3600)))
}

/// ±20 % around `d`, from `seed` (the incident's key and attempt), so that the retries of
/// many incidents spread out while one incident's retries are the same on every run.
fn jittered(d: Duration, seed: u64) -> Duration {
    d.mul_f64(0.8 + 0.4 * (seed % 1000) as f64 / 1000.0)
}

/// A seed for [`jittered`] from an idempotency key (hex) and the attempt.
pub(super) fn seed(key: &str, attempt: u32) -> u64 {
    let head = key.get(..12).unwrap_or(key);
    u64::from_str_radix(head, 16)
        .unwrap_or(0)
        .wrapping_add(u64::from(attempt).wrapping_mul(7919))
}

/// The wait before retry `failures` (1 for the first): exponential from `initial`, capped at
/// `max`, jittered; a receiver's `Retry-After` may lengthen it, up to [`MAX_RETRY_AFTER`].
pub(super) fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    seed: u64,
) -> Duration {
    let backoff = jittered(
        initial
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)))
            .min(max),
        seed,
    );
    retry_after.map_or(backoff, |r| r.min(MAX_RETRY_AFTER).max(backoff))
}
