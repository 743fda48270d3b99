//! When to try the next connection: capped exponential backoff with full jitter, reset only
//! after a connection proved stable, under a hard ceiling of connection attempts per window
//! (CoinAPI refuses more than about 10 new connections per IP per 10 s).
//!
//! Pure: time comes in as `Instant`s and randomness as a `fastrand::Rng` the caller seeds (from
//! the OS in production, fixed in tests). No sleeping here; the reader sleeps what this returns.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BackoffPolicy {
    /// Ceiling of the first non-zero delay; doubles per failed attempt.
    pub base: Duration,
    /// No delay from the exponential part exceeds this.
    pub cap: Duration,
    /// A connection must deliver data this long before the backoff resets.
    pub stable_after: Duration,
    /// At most `window_attempts` connection attempts in any `window`.
    pub window_attempts: usize,
    pub window: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            window_attempts: 10,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    /// Attempts since the last reset (0 and 1 go immediately).
    failures: u32,
    connected_at: Option<Instant>,
    attempts: VecDeque<Instant>,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Backoff {
        assert!(policy.window_attempts > 0, "the attempt window must allow at least one attempt");
        Backoff { failures: 0, connected_at: None, attempts: VecDeque::with_capacity(policy.window_attempts), policy }
    }

    /// Delay before the next connection attempt, which the caller is about to make at
    /// `now + delay`. Records that attempt.
    pub fn next_attempt(&mut self, now: Instant, rng: &mut fastrand::Rng) -> Duration {
        // The first attempt and the first retry go at once (a connection that simply dropped
        // is retried immediately); from the second retry on, the delay backs off.
        let exp = if self.failures <= 1 {
            Duration::ZERO
        } else {
            let shift = (self.failures - 2).min(20);
            let ceiling = self.policy.base.saturating_mul(1u32 << shift).min(self.policy.cap);
            ceiling.mul_f64(rng.f64())
        };
        self.failures = self.failures.saturating_add(1);
        // The window is a hard floor whatever the exponential part says.
        let window_wait = if self.attempts.len() == self.policy.window_attempts {
            let oldest = self.attempts[0];
            (oldest + self.policy.window).saturating_duration_since(now)
        } else {
            Duration::ZERO
        };
        let delay = exp.max(window_wait);
        if self.attempts.len() == self.policy.window_attempts {
            self.attempts.pop_front();
        }
        self.attempts.push_back(now + delay);
        self.connected_at = None;
        delay
    }

    /// The connection is up (upgrade and hello done).
    pub fn on_connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// Data arrived on the current connection; once it has been up for `stable_after`, the
    /// backoff starts over.
    pub fn on_data(&mut self, now: Instant) {
        if let Some(t) = self.connected_at {
            if now.saturating_duration_since(t) >= self.policy.stable_after {
                self.failures = 0;
            }
        }
    }

    /// The server asked us to move (a `reconnect` notice): the next attempt carries no penalty.
    pub fn forgive(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy { base: Duration::from_millis(500), cap: Duration::from_secs(8), ..BackoffPolicy::default() }
    }

    #[test]
    fn first_attempt_and_first_retry_are_immediate_then_grow_within_the_cap() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut b = Backoff::new(policy());
        let mut now = Instant::now();
        assert_eq!(b.next_attempt(now, &mut rng), Duration::ZERO, "first attempt");
        now += Duration::from_secs(60);
        assert_eq!(b.next_attempt(now, &mut rng), Duration::ZERO, "first retry");
        let mut nonzero = 0;
        for retry in 2..30u32 {
            now += Duration::from_secs(60); // far apart: the window never binds
            let d = b.next_attempt(now, &mut rng);
            let ceiling =
                Duration::from_millis(500).saturating_mul(1 << (retry - 2).min(20)).min(Duration::from_secs(8));
            assert!(d <= ceiling, "retry {retry}: {d:?} > {ceiling:?}");
            nonzero += usize::from(!d.is_zero());
        }
        assert!(nonzero > 20, "later retries back off");
    }

    #[test]
    fn jitter_spreads_delays_over_the_whole_range() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut delays = Vec::new();
        for _ in 0..200 {
            let mut b = Backoff::new(policy());
            let now = Instant::now();
            b.next_attempt(now, &mut rng);
            for _ in 0..5 {
                b.next_attempt(now + Duration::from_secs(100), &mut rng);
            }
            // the 6th attempt (5th retry) has the ceiling min(8 s, 0.5 s * 2^4) = 8 s
            delays.push(b.next_attempt(now + Duration::from_secs(200), &mut rng).as_secs_f64());
        }
        let below = delays.iter().filter(|d| **d < 2.0).count();
        let above = delays.iter().filter(|d| **d > 6.0).count();
        assert!(below > 20 && above > 20, "spread too narrow: {below} below 2 s, {above} above 6 s");
        assert!(delays.iter().all(|d| *d <= 8.0));
    }

    #[test]
    fn resets_only_after_a_stable_period_with_data() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut b = Backoff::new(policy());
        let t0 = Instant::now();
        for i in 0..5 {
            b.next_attempt(t0 + Duration::from_secs(i * 100), &mut rng);
        }
        assert_eq!(b.failures(), 5);
        let up = t0 + Duration::from_secs(1000);
        b.on_connected(up);
        b.on_data(up + Duration::from_secs(29));
        assert_eq!(b.failures(), 5, "a short-lived connection must not reset the backoff");
        b.on_data(up + Duration::from_secs(30));
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_attempt(up + Duration::from_secs(31), &mut rng), Duration::ZERO);
    }

    #[test]
    fn never_more_than_ten_attempts_in_ten_seconds() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut b =
            Backoff::new(BackoffPolicy { base: Duration::from_millis(1), cap: Duration::from_millis(1), ..policy() });
        let mut now = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..50 {
            let d = b.next_attempt(now, &mut rng);
            now += d;
            starts.push(now);
            b.forgive(); // worst case: nothing slows the loop but the window
        }
        for (i, t) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().filter(|s| **s < *t + Duration::from_secs(10)).count();
            assert!(in_window <= 10, "{in_window} attempts within 10 s starting at attempt {i}");
        }
    }
}
