//! The decisions of the single recovery thread: which (symbol, data type) to fetch next and when,
//! how a REST answer changes that, and when to stop. A deduplicated, bounded set of pending keys,
//! drained one request at a time at an even pace, behind a global 429 wait and an optional
//! rolling 24-hour credit budget.
//!
//! Pure: time comes in as `Instant`s, answers come in as `FetchOutcome`s (the caller maps HTTP
//! statuses onto them), and decisions go out as `Poll` and `Verdict`. The HTTP call, the sleeping
//! and the output lines belong to the recovery thread; nothing here does IO or reads a clock.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::lanes::{RecoveryKey, TradeWindow};
use crate::wire::DataType;

/// The page of trade history to ask for after one that returned `returned` records (of
/// `limit`) over `[window.page_from_ns, page_end_ns)`, the last of them at `last_ns`; `None`
/// when the window is covered.
///
/// A full page continues from its last record's time (CoinAPI's history is inclusive at
/// `time_start`, so records sharing that time come again: the worker de-duplicates them); a page
/// of records that all share one time moves on by 100 ns, CoinAPI's resolution, rather than ask
/// the same page forever. A page that was not full but stopped at a UTC day boundary (one request
/// stays inside one day) continues from the boundary.
pub fn next_page(
    window: &TradeWindow,
    page_end_ns: i64,
    returned: usize,
    limit: usize,
    last_ns: Option<i64>,
) -> Option<i64> {
    if returned >= limit {
        let next = last_ns.map_or(page_end_ns, |t| if t > window.page_from_ns { t } else { window.page_from_ns + 100 });
        return (next < window.end_ns).then_some(next);
    }
    (page_end_ns < window.end_ns).then_some(page_end_ns)
}

/// Where a history request starting at `from_ns` must end: the window's end, or the next UTC
/// midnight if that comes first.
pub fn page_end(window: &TradeWindow, from_ns: i64) -> i64 {
    const DAY_NS: i64 = 86_400_000_000_000;
    let midnight = (from_ns.div_euclid(DAY_NS) + 1).saturating_mul(DAY_NS);
    window.end_ns.min(midnight)
}

/// The rolling window of the credit budget: CoinAPI budgets are per rolling 24 h.
const CREDIT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Spends are counted per bucket of this width so the budget's memory is bounded whatever its
/// size (at most ~1,442 buckets). A bucket ages out one width late, so the budget errs towards
/// spending less, never more.
const CREDIT_BUCKET: Duration = Duration::from_secs(60);

/// Ceiling on any single wait this module computes (request interval, `Retry-After`, backoff):
/// keeps `Instant` arithmetic far from overflow, and a server asking for longer than the budget
/// window is not asking for anything meaningful.
const WAIT_MAX: Duration = CREDIT_WINDOW;

/// What `push` did with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// A fetch of this key will happen: newly queued, or (if it was in flight) marked to be
    /// fetched once more after the current request.
    Added,
    /// Already queued (or already marked for a second fetch): the coming fetch covers this gap.
    AlreadyPending,
    /// `max_pending` keys are pending: the key is dropped and counted.
    Overflow,
}

/// The result of one REST request, as the caller classified the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// HTTP 200 with `records` records written.
    Ok { records: u64 },
    /// HTTP 550: nothing to recover, not an error.
    NoData,
    /// HTTP 429, with its `Retry-After` when present.
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, timeout, connection error, undecodable or oversized body: worth retrying later.
    Transient(String),
    /// 401/403: the key is invalid or out of credits; no further request can succeed.
    Unauthorized(String),
    /// An answer asking for what coinfeed never does (a redirect: the key goes to the
    /// configured host only): retrying cannot change it, so the key fails at once.
    Refused(String),
}

/// What happens to a key after its request completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Recovered (or nothing to recover).
    Done,
    /// Still pending; fetched again no earlier than `at`.
    Retry { at: Instant },
    /// `attempts` transient failures in a row: dropped from the queue, report it as failed.
    GaveUp { attempts: u32, last_error: String },
    /// Unauthorized: all recovery stops; every key stays pending for the final report.
    Stop,
}

/// What the recovery thread should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Send this request now, then report it with `complete`.
    Fetch(RecoveryKey),
    /// Nothing may be sent before this instant (pacing, a 429 wait, or a retry's backoff).
    WaitUntil(Instant),
    /// Nothing to start: no key is pending, or the one request allowed is in flight. Wait for the
    /// next push or completion.
    Idle,
    /// Recovery was stopped by an unauthorized answer; it never resumes.
    Stopped,
    /// The credit budget is spent until this instant.
    OverBudget(Instant),
}

/// Limits of the recovery thread; every one is a command-line option with this default.
#[derive(Debug, Clone)]
pub struct RecoveryPolicy {
    /// Requests per second, evenly spaced: 2 by default, so 100 pending keys drain in ~50 s and a
    /// 10,000-credit day lasts 83 minutes of uninterrupted recovery.
    pub rps: f64,
    /// Keys pending at once (queued, retrying or in flight); more are dropped and counted.
    pub max_pending: usize,
    /// Requests per key that may fail transiently before it is given up.
    pub max_attempts: u32,
    /// First delay after a transient failure; doubles per failure up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Wait after a 429 without `Retry-After`; doubles per consecutive 429 up to
    /// `max(retry_cap, default_429_wait)`.
    pub default_429_wait: Duration,
    /// Credits allowed per rolling 24 h; `None` for no budget.
    pub budget_credits_per_day: Option<u64>,
    /// What one trade request costs: CoinAPI charges one credit per 100 items of its `limit`.
    /// Every other request costs one.
    pub trade_page_credits: u64,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        RecoveryPolicy {
            rps: 2.0,
            max_pending: 4096,
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(60),
            default_429_wait: Duration::from_secs(5),
            budget_credits_per_day: None,
            trade_page_credits: 1,
        }
    }
}

#[derive(Debug)]
struct Entry {
    key: RecoveryKey,
    /// `None`: ready now (a fresh gap); `Some`: a retry not to be sent before then.
    ready_at: Option<Instant>,
    /// Transient failures so far.
    failures: u32,
}

#[derive(Debug)]
struct InFlight {
    key: RecoveryKey,
    failures: u32,
    /// The key was pushed again while its request was in flight: the answer may predate that
    /// gap, so the key is fetched once more afterwards.
    requeue: bool,
}

/// Credits spent in the rolling window, counted per `CREDIT_BUCKET`.
#[derive(Debug)]
struct CreditWindow {
    limit: u64,
    /// (start of the bucket, credits spent in it), oldest first.
    buckets: VecDeque<(Instant, u64)>,
    spent: u64,
}

impl CreditWindow {
    /// When a bucket's spends have all left the window: its last spend happened before
    /// `start + CREDIT_BUCKET`.
    fn expiry(start: Instant) -> Instant {
        later(later(start, CREDIT_BUCKET), CREDIT_WINDOW)
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(start, n)) = self.buckets.front() {
            if now < CreditWindow::expiry(start) {
                break;
            }
            self.buckets.pop_front();
            self.spent = self.spent.saturating_sub(n);
        }
    }

    /// `Some(t)` if the budget has no room for `cost` more credits until (at least) `t`. A
    /// request costing more than the whole budget waits for an empty window, then goes.
    fn exhausted_until(&mut self, now: Instant, cost: u64) -> Option<Instant> {
        self.expire(now);
        if self.spent.saturating_add(cost) <= self.limit || self.spent == 0 {
            return None;
        }
        // spent >= 1, so there is a bucket.
        self.buckets.front().map(|&(start, _)| CreditWindow::expiry(start))
    }

    fn spend(&mut self, now: Instant, cost: u64) {
        match self.buckets.back_mut() {
            Some((start, n)) if now < later(*start, CREDIT_BUCKET) => *n = n.saturating_add(cost),
            _ => self.buckets.push_back((now, cost)),
        }
        self.spent = self.spent.saturating_add(cost);
        debug_assert!(self.buckets.len() as u128 <= CREDIT_WINDOW.as_nanos() / CREDIT_BUCKET.as_nanos() + 2);
    }
}

/// The pending set and the pacing of the recovery thread. See the module doc.
#[derive(Debug)]
pub struct RecoveryQueue {
    policy: RecoveryPolicy,
    interval: Duration,
    /// Waiting keys in FIFO order; a retry goes to the back with its `ready_at`.
    queue: VecDeque<Entry>,
    /// Every key queued or in flight: the deduplication set, and what `max_pending` bounds.
    members: HashSet<RecoveryKey>,
    in_flight: Option<InFlight>,
    /// Pacing: the previous request's start plus `interval`.
    next_start_at: Instant,
    /// No request of any key before this (the 429 wait).
    blocked_until: Instant,
    consecutive_429: u32,
    stopped: bool,
    credits: Option<CreditWindow>,
    overflowed: u64,
    sent: u64,
    retried: u64,
    gave_up: u64,
    rate_limited: u64,
    last_429: Option<Instant>,
}

fn later(t: Instant, d: Duration) -> Instant {
    // Every duration added here is at most a couple of WAIT_MAX, which no monotonic clock is near
    // overflowing; `t` itself is the fallback only to avoid a panic path.
    t.checked_add(d).unwrap_or(t)
}

/// `base` doubled per failure after the first, capped.
fn backoff(base: Duration, failures: u32, cap: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << shift).min(cap).min(WAIT_MAX)
}

/// The spacing of requests at `rps`, rounded up to the nanosecond: rounding down would let one
/// more request than `rps` fit within a second (at 3 rps, 3 × 333,333,333 ns < 1 s).
fn interval_for(rps: f64) -> Duration {
    let ns = (1e9 / rps).ceil();
    if ns >= WAIT_MAX.as_nanos() as f64 {
        WAIT_MAX
    } else {
        Duration::from_nanos(ns as u64)
    }
}

impl RecoveryQueue {
    /// `now` is when the queue is created: the first request may go at once.
    pub fn new(policy: RecoveryPolicy, now: Instant) -> RecoveryQueue {
        assert!(policy.rps.is_finite() && policy.rps > 0.0, "recovery rps must be positive, got {}", policy.rps);
        assert!(policy.max_pending > 0, "recovery needs room for one pending key");
        assert!(policy.max_attempts > 0, "recovery needs at least one attempt per key");
        assert!(policy.budget_credits_per_day != Some(0), "a recovery budget must allow one credit");
        let credits =
            policy.budget_credits_per_day.map(|limit| CreditWindow { limit, buckets: VecDeque::new(), spent: 0 });
        RecoveryQueue {
            interval: interval_for(policy.rps),
            queue: VecDeque::new(),
            members: HashSet::new(),
            in_flight: None,
            next_start_at: now,
            blocked_until: now,
            consecutive_429: 0,
            stopped: false,
            credits,
            overflowed: 0,
            sent: 0,
            retried: 0,
            gave_up: 0,
            rate_limited: 0,
            last_429: None,
            policy,
        }
    }

    /// Asks for `key` to be recovered.
    ///
    /// A key already queued is not queued twice: its coming fetch covers the new gap. A key in
    /// flight is marked to be fetched once more after its answer (which may predate the gap); any
    /// further pushes while it is in flight add nothing. Pushes are still recorded after `Stop`,
    /// so the final report lists every key left unrecovered.
    pub fn push(&mut self, key: RecoveryKey) -> PushOutcome {
        if let Some(flight) = &mut self.in_flight {
            if flight.key == key {
                if flight.requeue {
                    return PushOutcome::AlreadyPending;
                }
                flight.requeue = true;
                return PushOutcome::Added;
            }
        }
        if self.members.contains(&key) {
            return PushOutcome::AlreadyPending;
        }
        if self.members.len() >= self.policy.max_pending {
            self.overflowed = self.overflowed.saturating_add(1);
            return PushOutcome::Overflow;
        }
        self.members.insert(key.clone());
        self.queue.push_back(Entry { key, ready_at: None, failures: 0 });
        PushOutcome::Added
    }

    /// What to do at `now`. `WaitUntil` and `OverBudget` always name an instant after `now`.
    ///
    /// Returns `Fetch` only when nothing is in flight, and at most once per `1 / rps` seconds
    /// measured between request starts, with no credit for idle time: after a pause the first
    /// request goes at once and the next waits a full interval. Among ready keys the oldest goes
    /// first.
    pub fn poll(&mut self, now: Instant) -> Poll {
        if self.stopped {
            return Poll::Stopped;
        }
        if self.in_flight.is_some() {
            return Poll::Idle;
        }
        let gate = self.next_start_at.max(self.blocked_until);
        let Some(index) = self.queue.iter().position(|e| e.ready_at.is_none_or(|t| t <= now)) else {
            return match self.queue.iter().filter_map(|e| e.ready_at).min() {
                Some(ready_at) => Poll::WaitUntil(ready_at.max(gate)),
                None => Poll::Idle,
            };
        };
        let cost = self.cost(&self.queue[index].key);
        if let Some(credits) = &mut self.credits {
            if let Some(free_at) = credits.exhausted_until(now, cost) {
                return Poll::OverBudget(free_at.max(gate));
            }
        }
        if gate > now {
            return Poll::WaitUntil(gate);
        }
        let Some(entry) = self.queue.remove(index) else {
            unreachable!("position() returned an index inside the queue");
        };
        self.next_start_at = later(now, self.interval);
        self.sent = self.sent.saturating_add(1);
        if let Some(credits) = &mut self.credits {
            credits.spend(now, cost);
        }
        self.in_flight = Some(InFlight { key: entry.key.clone(), failures: entry.failures, requeue: false });
        Poll::Fetch(entry.key)
    }

    /// Reports the answer to the request in flight for `key`, received at `now`.
    ///
    /// A 429 does not count against the key's attempts: it is about our pace, not the key. The
    /// key goes back to the front of the queue, and no request of any key is sent before
    /// `now + Retry-After` (or the doubling `default_429_wait`). Repeated 429s therefore slow
    /// recovery down without ever giving up a key; the pending bound keeps that finite.
    ///
    /// Panics if `key` is not the request in flight: that is a bug in the caller.
    pub fn complete(&mut self, key: &RecoveryKey, outcome: FetchOutcome, now: Instant) -> Verdict {
        let Some(flight) = self.in_flight.take() else {
            panic!("complete({key:?}) called with no request in flight");
        };
        assert!(flight.key == *key, "complete({key:?}) does not match the request in flight ({:?})", flight.key);
        if !matches!(outcome, FetchOutcome::RateLimited { .. }) {
            self.consecutive_429 = 0;
        }
        match outcome {
            FetchOutcome::Ok { .. } | FetchOutcome::NoData => {
                self.finish(flight);
                Verdict::Done
            }
            FetchOutcome::RateLimited { retry_after } => {
                self.rate_limited = self.rate_limited.saturating_add(1);
                self.consecutive_429 = self.consecutive_429.saturating_add(1);
                self.last_429 = Some(now);
                let wait = match retry_after {
                    Some(wait) => wait.min(WAIT_MAX),
                    None => {
                        let cap = self.policy.retry_cap.max(self.policy.default_429_wait);
                        backoff(self.policy.default_429_wait, self.consecutive_429, cap)
                    }
                };
                self.blocked_until = self.blocked_until.max(later(now, wait));
                // First in line again: the refusal was not this key's fault.
                self.queue.push_front(Entry { key: flight.key, ready_at: None, failures: flight.failures });
                Verdict::Retry { at: self.blocked_until }
            }
            FetchOutcome::Transient(error) => {
                let failures = flight.failures.saturating_add(1);
                if failures >= self.policy.max_attempts {
                    self.gave_up = self.gave_up.saturating_add(1);
                    self.finish(flight);
                    return Verdict::GaveUp { attempts: failures, last_error: error };
                }
                self.retried = self.retried.saturating_add(1);
                let at = later(now, backoff(self.policy.retry_base, failures, self.policy.retry_cap));
                self.queue.push_back(Entry { key: flight.key, ready_at: Some(at), failures });
                Verdict::Retry { at }
            }
            FetchOutcome::Refused(error) => {
                self.gave_up = self.gave_up.saturating_add(1);
                let attempts = flight.failures.saturating_add(1);
                self.finish(flight);
                Verdict::GaveUp { attempts, last_error: error }
            }
            FetchOutcome::Unauthorized(_) => {
                self.stopped = true;
                self.queue.push_front(Entry { key: flight.key, ready_at: None, failures: flight.failures });
                Verdict::Stop
            }
        }
    }

    /// The key leaves the pending set, unless it was pushed again while in flight: then it is
    /// queued once more as a fresh gap with a fresh retry budget.
    fn finish(&mut self, flight: InFlight) {
        if flight.requeue {
            self.queue.push_back(Entry { key: flight.key, ready_at: None, failures: 0 });
        } else {
            self.members.remove(&flight.key);
        }
    }

    /// Credits a request for `key` costs.
    fn cost(&self, key: &RecoveryKey) -> u64 {
        if key.data_type == DataType::Trade {
            self.policy.trade_page_credits
        } else {
            1
        }
    }

    /// Queues the next page of a trade window whose request just completed (`Done`), first in
    /// line: it takes the place the finished page held in the pending set.
    pub fn continue_with(&mut self, key: RecoveryKey) {
        self.members.insert(key.clone());
        self.queue.push_front(Entry { key, ready_at: None, failures: 0 });
    }

    /// Queues `key` again (its answer could not be handed over), not before `at`, with a fresh
    /// retry budget: nothing was wrong with the request.
    pub fn requeue(&mut self, key: RecoveryKey, at: Instant) {
        self.members.insert(key.clone());
        self.queue.push_back(Entry { key, ready_at: Some(at), failures: 0 });
    }

    /// Whether the credit budget is spent at `now` (for the report of keys left at exit).
    pub fn over_budget(&mut self, now: Instant) -> bool {
        let cost = self.policy.trade_page_credits;
        self.credits.as_mut().is_some_and(|c| c.exhausted_until(now, cost).is_some())
    }

    /// Keys queued, retrying or in flight.
    pub fn pending(&self) -> usize {
        self.members.len()
    }

    /// The pending keys, the one in flight first, then in queue order: for the final report.
    pub fn pending_keys(&self) -> Vec<RecoveryKey> {
        self.in_flight.iter().map(|f| f.key.clone()).chain(self.queue.iter().map(|e| e.key.clone())).collect()
    }

    /// Takes every pending key out, to be failed at once (a replay makes no request).
    pub fn drain(&mut self) -> Vec<RecoveryKey> {
        let keys = self.pending_keys();
        self.queue.clear();
        self.members.clear();
        self.in_flight = None;
        keys
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Keys dropped because `max_pending` keys were pending.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Requests started (every `Fetch` returned).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Transient failures that were scheduled for a retry.
    pub fn retried(&self) -> u64 {
        self.retried
    }

    /// Keys given up after `max_attempts` transient failures.
    pub fn gave_up(&self) -> u64 {
        self.gave_up
    }

    /// 429 answers received.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited
    }

    /// When the last 429 was received.
    pub fn last_429(&self) -> Option<Instant> {
        self.last_429
    }

    /// Credits spent in the rolling 24 h (at bucket precision), if a budget is set.
    pub fn credits_spent(&mut self, now: Instant) -> Option<u64> {
        self.credits.as_mut().map(|c| {
            c.expire(now);
            c.spent
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DataType;

    fn key(symbol_id: &str) -> RecoveryKey {
        RecoveryKey::state(symbol_id, DataType::Trade)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(rps: f64) -> RecoveryPolicy {
        RecoveryPolicy {
            rps,
            max_pending: 1000,
            max_attempts: 3,
            retry_base: ms(1000),
            retry_cap: ms(8000),
            default_429_wait: ms(5000),
            budget_credits_per_day: None,
            trade_page_credits: 1,
        }
    }

    /// Runs the recovery loop as the thread would, jumping the clock to each `WaitUntil`, every
    /// fetch taking `fetch_time` and answered by `answer`, until `Idle`, `Stopped`, `OverBudget`
    /// or `until`.
    /// Returns each fetch's start and key.
    fn drive(
        q: &mut RecoveryQueue,
        now: &mut Instant,
        until: Instant,
        fetch_time: Duration,
        mut answer: impl FnMut(&RecoveryKey) -> FetchOutcome,
    ) -> Vec<(Instant, RecoveryKey)> {
        let mut fetches = Vec::new();
        while *now < until {
            match q.poll(*now) {
                Poll::Fetch(k) => {
                    fetches.push((*now, k.clone()));
                    *now += fetch_time;
                    q.complete(&k, answer(&k), *now);
                }
                Poll::WaitUntil(t) => {
                    assert!(t > *now, "a wait must move time forward");
                    *now = t;
                }
                Poll::Idle | Poll::Stopped | Poll::OverBudget(_) => break,
            }
        }
        fetches
    }

    fn starts(fetches: &[(Instant, RecoveryKey)]) -> Vec<Instant> {
        fetches.iter().map(|f| f.0).collect()
    }

    /// The most request starts inside any window of `width` beginning at a start.
    fn max_in_window(starts: &[Instant], width: Duration) -> usize {
        starts.iter().map(|&s| starts.iter().filter(|&&t| t >= s && t < s + width).count()).max().unwrap_or(0)
    }

    #[test]
    fn a_thousand_pushes_of_one_key_cost_one_fetch() {
        // Proves the deduplication: a storm of gaps on one key while it is queued is one request.
        let t0 = Instant::now();
        let mut q = RecoveryQueue::new(policy(2.0), t0);
        assert_eq!(q.push(key("A")), PushOutcome::Added);
        for _ in 0..999 {
            assert_eq!(q.push(key("A")), PushOutcome::AlreadyPending);
        }
        assert_eq!(q.pending(), 1);
        let mut now = t0;
        let fetches = drive(&mut q, &mut now, t0 + ms(60_000), ms(50), |_| FetchOutcome::Ok { records: 3 });
        assert_eq!(fetches.len(), 1);
        assert_eq!((q.pending(), q.sent()), (0, 1));
    }

    #[test]
    fn the_pending_set_is_bounded_and_overflow_counted() {
        // Proves max_pending holds (the key in flight counts) and frees up as keys complete.
        let t0 = Instant::now();
        let mut q = RecoveryQueue::new(RecoveryPolicy { max_pending: 3, ..policy(2.0) }, t0);
        let outcomes: Vec<PushOutcome> = ["A", "B", "C", "D", "E", "A"].iter().map(|s| q.push(key(s))).collect();
        use PushOutcome::{Added, AlreadyPending, Overflow};
        assert_eq!(outcomes, [Added, Added, Added, Overflow, Overflow, AlreadyPending]);
        assert_eq!((q.pending(), q.overflowed()), (3, 2));
        assert_eq!(q.poll(t0), Poll::Fetch(key("A")));
        assert_eq!(q.push(key("D")), Overflow, "the key in flight still holds its place");
        q.complete(&key("A"), FetchOutcome::NoData, t0 + ms(10));
        assert_eq!(q.push(key("D")), Added);
        assert_eq!(q.pending_keys(), [key("B"), key("C"), key("D")]);
    }

    #[test]
    fn requests_are_evenly_spaced_at_the_configured_rate() {
        // Proves the pacing over 12+ requests for several rates, with fetches faster and slower
        // than the interval: starts are at least 1/rps apart and no 1-second window holds more
        // than ceil(rps) of them (2 at the default 2 rps).
        for (rps, fetch_ms) in [(2.0, 40), (2.0, 700), (3.0, 10), (2.5, 0), (10.0, 30), (1.0, 2500)] {
            let t0 = Instant::now();
            let mut q = RecoveryQueue::new(policy(rps), t0);
            for i in 0..14 {
                q.push(key(&format!("S{i}")));
            }
            let mut now = t0;
            let fetches = drive(&mut q, &mut now, t0 + ms(600_000), ms(fetch_ms), |_| FetchOutcome::Ok { records: 1 });
            assert_eq!(fetches.len(), 14, "rps {rps}");
            let s = starts(&fetches);
            let interval = Duration::from_secs_f64(1.0 / rps);
            for pair in s.windows(2) {
                assert!(pair[1] - pair[0] >= interval, "rps {rps}: spacing {:?}", pair[1] - pair[0]);
            }
            let allowed = rps.ceil() as usize;
            assert!(max_in_window(&s, ms(1000)) <= allowed, "rps {rps}: more than {allowed} starts in 1 s");
            let order: Vec<String> = fetches.iter().map(|f| f.1.symbol_id.clone()).collect();
            let want: Vec<String> = (0..14).map(|i| format!("S{i}")).collect();
            assert_eq!(order, want, "rps {rps}: FIFO order");
        }
    }

    #[test]
    fn no_burst_after_idling() {
        // Proves idle time earns no credit: after a long pause the first request goes at once and
        // the next waits a full interval.
        let t0 = Instant::now();
        let mut q = RecoveryQueue::new(policy(2.0), t0);
        q.push(key("A"));
        assert_eq!(q.poll(t0), Poll::Fetch(key("A")));
        assert_eq!(q.poll(t0), Poll::Idle, "one request in flight at most");
        q.complete(&key("A"), FetchOutcome::Ok { records: 1 }, t0 + ms(20));
        assert_eq!(q.poll(t0 + ms(20)), Poll::Idle);
        let later_on = t0 + ms(60_000);
        for s in ["B", "C", "D"] {
            q.push(key(s));
        }
        assert_eq!(q.poll(later_on), Poll::Fetch(key("B")));
        q.complete(&key("B"), FetchOutcome::Ok { records: 1 }, later_on + ms(1));
        assert_eq!(q.poll(later_on + ms(1)), Poll::WaitUntil(later_on + ms(500)));
        assert_eq!(q.poll(later_on + ms(499)), Poll::WaitUntil(later_on + ms(500)));
        assert_eq!(q.poll(later_on + ms(500)), Poll::Fetch(key("C")));
    }

    #[test]
    fn a_429_blocks_every_key_until_retry_after_or_the_default_wait() {
        // Proves a 429 stops all requests, not just the refused key's, for Retry-After when given
        // and for the doubling default wait when absent; the refused key goes first afterwards
        // and its attempts are not consumed.
        // (Retry-After, then per consecutive 429: (the wait it imposes, when the next request
        // may start), both in ms after the 429 arrived; Retry-After: 0 leaves only the pacing.)
        type Waits = &'static [(u64, u64)];
        let cases: &[(Option<Duration>, Waits)] = &[
            (Some(ms(3000)), &[(3000, 3000), (3000, 3000), (3000, 3000)]),
            (Some(ms(0)), &[(0, 400), (0, 400), (0, 400)]),
            (None, &[(5000, 5000), (8000, 8000), (8000, 8000)]),
        ];
        for (retry_after, waits_ms) in cases {
            let t0 = Instant::now();
            let mut q = RecoveryQueue::new(RecoveryPolicy { max_attempts: 1, ..policy(2.0) }, t0);
            q.push(key("A"));
            q.push(key("B"));
            let mut now = t0;
            for &(wait, next) in *waits_ms {
                assert_eq!(q.poll(now), Poll::Fetch(key("A")), "{retry_after:?}");
                now += ms(100);
                let verdict = q.complete(&key("A"), FetchOutcome::RateLimited { retry_after: *retry_after }, now);
                assert_eq!(verdict, Verdict::Retry { at: now + ms(wait) }, "{retry_after:?}");
                assert_eq!(q.last_429(), Some(now));
                let next_at = now + ms(next);
                assert_eq!(q.poll(now), Poll::WaitUntil(next_at), "{retry_after:?}: B waits too");
                assert_eq!(q.poll(next_at - ms(1)), Poll::WaitUntil(next_at));
                now = next_at;
            }
            assert_eq!(q.poll(now), Poll::Fetch(key("A")));
            let verdict = q.complete(&key("A"), FetchOutcome::Transient("HTTP 503".into()), now);
            assert_eq!(verdict, Verdict::GaveUp { attempts: 1, last_error: "HTTP 503".into() }, "429s cost no attempt");
            assert_eq!(q.rate_limited(), 3);
        }
    }

    #[test]
    fn transient_failures_retry_with_growing_delays_then_give_up() {
        // Proves the per-key retry budget: delays double from retry_base up to retry_cap, the
        // key stays pending (deduplicated) meanwhile, other keys are not held up, and after
        // max_attempts failures the key is given up with its last error.
        let t0 = Instant::now();
        let p = RecoveryPolicy { max_attempts: 5, retry_base: ms(1000), retry_cap: ms(3000), ..policy(10.0) };
        let mut q = RecoveryQueue::new(p, t0);
        q.push(key("A"));
        let mut now = t0;
        let mut retry_delays = Vec::new();
        for attempt in 1..=5u32 {
            assert_eq!(q.poll(now), Poll::Fetch(key("A")), "attempt {attempt}");
            now += ms(50);
            match q.complete(&key("A"), FetchOutcome::Transient(format!("timeout {attempt}")), now) {
                Verdict::Retry { at } => {
                    retry_delays.push((at - now).as_millis());
                    assert_eq!(q.push(key("A")), PushOutcome::AlreadyPending);
                    assert_eq!(q.push(key("B")), PushOutcome::Added);
                    assert_eq!(q.poll(now + ms(100)), Poll::Fetch(key("B")), "B is ready before A");
                    q.complete(&key("B"), FetchOutcome::Ok { records: 1 }, now + ms(110));
                    assert_eq!(q.poll(now + ms(200)), Poll::WaitUntil(at));
                    now = at;
                }
                Verdict::GaveUp { attempts, last_error } => {
                    assert_eq!((attempt, attempts, last_error.as_str()), (5, 5, "timeout 5"));
                }
                v => panic!("unexpected {v:?}"),
            }
        }
        assert_eq!(retry_delays, [1000, 2000, 3000, 3000]);
        assert_eq!((q.retried(), q.gave_up(), q.pending()), (4, 1, 0));
        assert_eq!(q.poll(now), Poll::Idle);
    }

    #[test]
    fn a_refused_answer_fails_the_key_at_once_and_holds_up_nothing() {
        // Proves a redirect (`Refused`) is not retried: the key is given up on its first
        // attempt, with its error, and the next key is fetched as usual.
        let t0 = Instant::now();
        let mut q = RecoveryQueue::new(RecoveryPolicy { max_attempts: 5, ..policy(10.0) }, t0);
        q.push(key("A"));
        q.push(key("B"));
        assert_eq!(q.poll(t0), Poll::Fetch(key("A")));
        let verdict = q.complete(&key("A"), FetchOutcome::Refused("redirect not followed".into()), t0 + ms(10));
        assert_eq!(verdict, Verdict::GaveUp { attempts: 1, last_error: "redirect not followed".into() });
        assert_eq!((q.retried(), q.gave_up(), q.pending()), (0, 1, 1));
        assert_eq!(q.poll(t0 + ms(200)), Poll::Fetch(key("B")));
    }

    #[test]
    fn unauthorized_stops_all_recovery_and_keeps_the_keys_for_the_report() {
        // Proves a 401/403 ends recovery for good while every pending key stays reportable.
        let t0 = Instant::now();
        let mut q = RecoveryQueue::new(policy(2.0), t0);
        for s in ["A", "B", "C"] {
            q.push(key(s));
        }
        assert_eq!(q.poll(t0), Poll::Fetch(key("A")));
        assert_eq!(q.complete(&key("A"), FetchOutcome::Unauthorized("HTTP 401 invalid key".into()), t0), Verdict::Stop);
        assert_eq!(q.push(key("D")), PushOutcome::Added);
        for later_s in [0, 1, 86_400 * 2] {
            assert_eq!(q.poll(t0 + Duration::from_secs(later_s)), Poll::Stopped);
        }
        assert!(q.is_stopped());
        assert_eq!(q.pending_keys(), [key("A"), key("B"), key("C"), key("D")]);
        assert_eq!(q.sent(), 1);
    }

    #[test]
    fn the_credit_budget_pauses_recovery_until_spends_age_out() {
        // Proves the rolling 24 h budget: once spent, no request until the oldest spend (at bucket
        // precision, never early) leaves the window, then recovery resumes.
        let t0 = Instant::now();
        let mut q = RecoveryQueue::new(RecoveryPolicy { budget_credits_per_day: Some(3), ..policy(10.0) }, t0);
        for i in 0..5 {
            q.push(key(&format!("S{i}")));
        }
        let mut now = t0;
        let first = drive(&mut q, &mut now, t0 + ms(10_000), ms(10), |_| FetchOutcome::Ok { records: 1 });
        assert_eq!(first.len(), 3);
        assert_eq!(q.credits_spent(now), Some(3));
        let free_at = t0 + CREDIT_WINDOW + CREDIT_BUCKET;
        assert_eq!(q.poll(now), Poll::OverBudget(free_at));
        assert_eq!(q.poll(t0 + CREDIT_WINDOW), Poll::OverBudget(free_at), "a spend inside the window still counts");
        assert_eq!(q.poll(free_at - ms(1)), Poll::OverBudget(free_at));
        now = free_at;
        let rest = drive(&mut q, &mut now, free_at + ms(10_000), ms(10), |_| FetchOutcome::Ok { records: 1 });
        assert_eq!(rest.len(), 2);
        assert!(rest[0].0 >= t0 + CREDIT_WINDOW);
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn the_credit_window_memory_is_bounded() {
        // Proves the budget's memory does not grow with the number of requests: three simulated
        // days at 1 request/s keep at most one bucket per minute of the window.
        let t0 = Instant::now();
        let mut w = CreditWindow { limit: u64::MAX, buckets: VecDeque::new(), spent: 0 };
        let mut now = t0;
        for _ in 0..3 * 86_400 {
            assert_eq!(w.exhausted_until(now, 1), None);
            w.spend(now, 1);
            now += Duration::from_secs(1);
        }
        assert!(w.buckets.len() <= 1442, "{} buckets", w.buckets.len());
        assert!(w.spent >= 86_400 && w.spent <= 86_400 + 60, "{} spent in the window", w.spent);
    }

    #[test]
    fn a_key_pushed_while_in_flight_is_fetched_once_more() {
        // Proves a gap that arrives during its key's fetch is not lost (one more fetch after the
        // answer) and still deduplicated (one extra fetch however many pushes).
        let t0 = Instant::now();
        let mut q = RecoveryQueue::new(policy(2.0), t0);
        q.push(key("A"));
        assert_eq!(q.poll(t0), Poll::Fetch(key("A")));
        assert_eq!(q.push(key("A")), PushOutcome::Added);
        for _ in 0..10 {
            assert_eq!(q.push(key("A")), PushOutcome::AlreadyPending);
        }
        assert_eq!(q.pending(), 1);
        assert_eq!(q.complete(&key("A"), FetchOutcome::Ok { records: 5 }, t0 + ms(100)), Verdict::Done);
        assert_eq!(q.pending_keys(), [key("A")]);
        let mut now = t0 + ms(100);
        let fetches = drive(&mut q, &mut now, t0 + ms(60_000), ms(100), |_| FetchOutcome::Ok { records: 0 });
        assert_eq!(starts(&fetches), [t0 + ms(500)]);
        assert_eq!((q.pending(), q.sent()), (0, 2));
    }

    #[test]
    fn intervals_round_up_so_a_second_never_holds_an_extra_request() {
        // Proves the interval arithmetic at awkward rates, including the clamp for absurd ones.
        let cases: &[(f64, Duration)] = &[
            (2.0, ms(500)),
            (3.0, Duration::from_nanos(333_333_334)),
            (7.0, Duration::from_nanos(142_857_143)),
            (1e12, Duration::from_nanos(1)),
            (1e-300, WAIT_MAX),
        ];
        for (rps, want) in cases {
            assert_eq!(interval_for(*rps), *want, "rps {rps}");
        }
    }

    /// Proves paging covers a window: full pages continue from their last record's time (or
    /// 100 ns on when a whole page shares one time), short pages end it, and a request never
    /// crosses a UTC midnight.
    #[test]
    fn history_pages_cover_the_window_one_day_at_a_time() {
        const DAY: i64 = 86_400_000_000_000;
        let w = TradeWindow { id: 1, start_ns: 5 * DAY - 10, end_ns: 5 * DAY + 500, page_from_ns: 5 * DAY - 10 };
        assert_eq!(page_end(&w, w.page_from_ns), 5 * DAY, "stops at midnight");
        assert_eq!(next_page(&w, 5 * DAY, 3, 100, Some(5 * DAY - 1)), Some(5 * DAY), "short page: the next day");
        let w2 = TradeWindow { page_from_ns: 5 * DAY, ..w };
        assert_eq!(page_end(&w2, w2.page_from_ns), 5 * DAY + 500);
        assert_eq!(next_page(&w2, 5 * DAY + 500, 100, 100, Some(5 * DAY + 20)), Some(5 * DAY + 20), "full page");
        assert_eq!(next_page(&w2, 5 * DAY + 500, 100, 100, Some(5 * DAY)), Some(5 * DAY + 100), "one time only");
        assert_eq!(next_page(&w2, 5 * DAY + 500, 99, 100, Some(5 * DAY + 20)), None, "covered");
    }

    /// Proves a trade page costs what CoinAPI charges for its `limit` against the budget.
    #[test]
    fn trade_pages_cost_their_limit_in_credits() {
        let t0 = Instant::now();
        let policy = RecoveryPolicy { budget_credits_per_day: Some(5), trade_page_credits: 2, ..policy(1000.0) };
        let mut q = RecoveryQueue::new(policy, t0);
        for s in ["A", "B", "C"] {
            q.push(key(s));
        }
        let mut now = t0;
        for _ in 0..2 {
            let Poll::Fetch(k) = q.poll(now) else { panic!("fetch") };
            assert_eq!(q.complete(&k, FetchOutcome::Ok { records: 1 }, now), Verdict::Done);
            now += Duration::from_millis(10);
        }
        assert!(matches!(q.poll(now), Poll::OverBudget(_)), "4 spent: a third page (2) would make 6 > 5");
        assert!(q.over_budget(now));
    }
}
