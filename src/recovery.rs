//! The recovery thread (exactly one) and the handle workers use to hand it gaps.
//!
//! Workers push (symbol, data type) keys into one shared `RecoveryQueue` (deduplicated and
//! bounded, see `recovery_core.rs`) under a short lock and wake the thread. The thread asks the
//! queue what to do, sleeps until then (or until woken or stopped), makes at most one blocking
//! REST request at a time, and sends the records to the worker that owns the symbol, so they
//! are written in order with that symbol's stream. The HTTP call is made without holding the
//! lock. On shutdown the agent is shut down, so a request in flight ends at once, and the keys
//! still pending are logged.

use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, SendTimeoutError, Sender};
use parking_lot::Mutex;

use crate::config::Config;
use crate::protocol;
use crate::recovery_core::{FetchOutcome, Poll, PushOutcome, RecoveryKey, RecoveryPolicy, RecoveryQueue, Verdict};
use crate::rest::RestClient;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::worker::{unix_now_ns, RecoveryResult, WorkerInput};

/// Longest the thread sleeps without looking at the queue again.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How long a result may wait for room in a worker's channel before it is counted lost.
const DELIVERY_WAIT: Duration = Duration::from_secs(2);
/// Keys listed by name when recovery ends with keys pending.
const PENDING_LISTED_MAX: usize = 20;
/// Requests are spaced this fraction more than `1 / --recovery-rps`: the server counts requests
/// by arrival, and arrival jitter must not put `rps + 1` requests into one of its 1 s windows.
const PACING_GUARD: f64 = 0.02;
/// Minimum time between two "recovery queue full" warnings.
const OVERFLOW_WARN_EVERY: Duration = Duration::from_secs(10);

/// What workers hold to request recovery. Cheap to share by reference.
#[derive(Debug)]
pub struct RecoveryHandle {
    queue: Mutex<RecoveryQueue>,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    last_overflow_warning: Mutex<Option<Instant>>,
}

impl RecoveryHandle {
    pub fn new(config: &Config) -> RecoveryHandle {
        let policy = RecoveryPolicy {
            rps: config.recovery_rps / (1.0 + PACING_GUARD),
            max_pending: config.recovery_max_pending,
            max_attempts: config.recovery_max_attempts,
            budget_credits_per_day: config.recovery_budget,
            ..RecoveryPolicy::default()
        };
        // Capacity 1: a wake-up is a level, not a count; more pushes while one is pending add nothing.
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        RecoveryHandle {
            queue: Mutex::new(RecoveryQueue::new(policy, Instant::now())),
            wake_tx,
            wake_rx,
            last_overflow_warning: Mutex::new(None),
        }
    }

    /// Queues `key` for recovery (deduplicated); counts and logs it if the queue is full.
    pub fn request(&self, key: RecoveryKey, stats: &Stats) {
        let outcome = self.queue.lock().push(key.clone());
        match outcome {
            PushOutcome::Added => {
                let _ = self.wake_tx.try_send(());
            }
            PushOutcome::AlreadyPending => {}
            PushOutcome::Overflow => {
                Stats::add(&stats.recovery_overflow, 1);
                let now = Instant::now();
                let mut last = self.last_overflow_warning.lock();
                if last.is_none_or(|t| now.duration_since(t) >= OVERFLOW_WARN_EVERY) {
                    *last = Some(now);
                    log::warn!(
                        "recovery queue full: not recovering {} {} (see --recovery-max-pending; overflows so far: {})",
                        key.symbol_id,
                        key.data_type.as_str(),
                        stats.recovery_overflow.load(std::sync::atomic::Ordering::Relaxed)
                    );
                }
            }
        }
    }
}

pub struct Recovery<'a> {
    pub handle: &'a RecoveryHandle,
    pub client: RestClient,
    pub lanes: Vec<Sender<WorkerInput>>,
    pub stats: &'a Stats,
    pub shutdown: &'a Shutdown,
}

impl std::fmt::Debug for Recovery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery").field("lanes", &self.lanes.len()).finish()
    }
}

impl Recovery<'_> {
    pub fn run(self) {
        let mut stopped_logged = false;
        let mut over_budget_logged = false;
        while !self.shutdown.is_requested() {
            let now = Instant::now();
            let poll = {
                let mut q = self.handle.queue.lock();
                let p = q.poll(now);
                self.stats.recovery_pending.store(q.pending() as u64, std::sync::atomic::Ordering::Relaxed);
                p
            };
            match poll {
                Poll::Fetch(key) => {
                    over_budget_logged = false;
                    self.fetch(key);
                }
                Poll::WaitUntil(at) => self.sleep(at.saturating_duration_since(now).min(IDLE_WAIT)),
                Poll::Idle => self.sleep(IDLE_WAIT),
                Poll::Stopped => {
                    if !stopped_logged {
                        stopped_logged = true;
                        log::error!(
                            "REST recovery stopped: CoinAPI refused the key for REST (invalid, no privilege or out of credits); streaming continues without recovery"
                        );
                    }
                    self.sleep(IDLE_WAIT);
                }
                Poll::OverBudget(until) => {
                    if !over_budget_logged {
                        over_budget_logged = true;
                        log::warn!(
                            "REST recovery paused: the --recovery-budget for 24 h is spent; resuming in {:.0}s",
                            until.saturating_duration_since(now).as_secs_f64()
                        );
                    }
                    self.sleep(until.saturating_duration_since(now).min(IDLE_WAIT));
                }
            }
        }
        let q = self.handle.queue.lock();
        let pending = q.pending_keys();
        self.stats.recovery_pending.store(pending.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if !pending.is_empty() {
            let names: Vec<String> = pending
                .iter()
                .take(PENDING_LISTED_MAX)
                .map(|k| format!("{}/{}", k.symbol_id, k.data_type.as_str()))
                .collect();
            log::warn!(
                "recovery: {} key(s) still pending at exit, not recovered: {}{}",
                pending.len(),
                names.join(","),
                if pending.len() > PENDING_LISTED_MAX { ",..." } else { "" }
            );
        }
    }

    /// Waits until `timeout` passes, a key is pushed, or a stop is requested.
    fn sleep(&self, timeout: Duration) {
        select! {
            recv(self.handle.wake_rx) -> _ => {}
            recv(self.shutdown.receiver()) -> _ => {}
            default(timeout) => {}
        }
    }

    fn fetch(&self, key: RecoveryKey) {
        Stats::add(&self.stats.recovery_requests, 1);
        let started = Instant::now();
        let answer = self.client.fetch(&key);
        log::debug!(
            "recovery: GET {} -> {:?} in {} ms",
            self.client.path(&key),
            answer.outcome,
            started.elapsed().as_millis()
        );
        if let Some(r) = answer.rate_limit_remaining {
            self.stats.rate_limit_remaining.store(r, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(c) = answer.request_cost {
            self.stats.rate_limit_request_cost.store(c, std::sync::atomic::Ordering::Relaxed);
        }
        if self.shutdown.is_requested() {
            // The answer may be an interruption caused by the stop itself: do not judge the key.
            return;
        }
        match &answer.outcome {
            FetchOutcome::RateLimited { retry_after } => {
                Stats::add(&self.stats.recovery_rate_limited, 1);
                self.stats
                    .last_429_unix_s
                    .store((unix_now_ns() / 1_000_000_000) as u64, std::sync::atomic::Ordering::Relaxed);
                log::warn!(
                    "CoinAPI rate limit (HTTP 429) on {} {}: pausing REST recovery {}",
                    key.symbol_id,
                    key.data_type.as_str(),
                    retry_after
                        .map(|d| format!("for {:.1}s as told (Retry-After)", d.as_secs_f64()))
                        .unwrap_or_else(|| "with backoff (no Retry-After)".into())
                );
            }
            FetchOutcome::Transient(why) => {
                log::warn!("recovery of {} {} failed: {why}", key.symbol_id, key.data_type.as_str());
            }
            FetchOutcome::Unauthorized(why) => log::error!("REST recovery refused: {why}"),
            FetchOutcome::Ok { .. } | FetchOutcome::NoData => {}
        }
        let verdict = self.handle.queue.lock().complete(&key, answer.outcome.clone(), Instant::now());
        let result = match verdict {
            Verdict::Done => RecoveryResult::Recovered { key, records: answer.records, recv_unix_ns: unix_now_ns() },
            Verdict::GaveUp { attempts, last_error } => RecoveryResult::Failed { key, attempts, error: last_error },
            Verdict::Retry { at } => {
                log::debug!(
                    "recovery: retrying {} {} in {} ms",
                    key.symbol_id,
                    key.data_type.as_str(),
                    at.saturating_duration_since(Instant::now()).as_millis()
                );
                return;
            }
            Verdict::Stop => return,
        };
        self.deliver(result);
    }

    /// Sends a result to the worker that owns its symbol (bounded wait; counted if lost).
    fn deliver(&self, result: RecoveryResult) {
        let symbol = result.key().symbol_id.clone();
        let lane = &self.lanes[protocol::route(symbol.as_bytes(), self.lanes.len())];
        match lane.send_timeout(WorkerInput::Recovery(result), DELIVERY_WAIT) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                Stats::add(&self.stats.recovery_failed, 1);
                log::warn!(
                    "recovery result for {symbol} dropped: its worker stayed busy for {}s",
                    DELIVERY_WAIT.as_secs()
                );
            }
            Err(SendTimeoutError::Disconnected(_)) => {}
        }
    }
}
