//! The recovery thread (exactly one). Its request side, what workers call, is `handle.rs`; its
//! decisions are the pure `queue.rs`; its HTTP client is `rest.rs`.
//!
//! Workers push (symbol, data type) keys into one shared `RecoveryQueue` (deduplicated and
//! bounded) through the `RecoveryHandle` and wake the thread. The thread asks the
//! queue what to do, sleeps until then (or until woken or stopped), makes at most one blocking
//! REST request at a time, and sends the records to the worker that owns the symbol, so they
//! are written in order with that symbol's stream. The HTTP call is made without holding the
//! lock. On shutdown the agent is shut down, so a request in flight ends at once, and the keys
//! still pending are logged.

use std::time::{Duration, Instant};

use crossbeam_channel::select;

use crate::clock::{unix_now_ns, unix_seconds};
use crate::config::limits::DELIVERY_WAIT;
use crate::lanes::{DeliveryError, RecoveryKey, RecoveryLanes, RecoveryResult, TradeWindow, Unrecovered};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

pub mod handle;
pub mod queue;
pub mod rest;

use handle::RecoveryHandle;
use queue::{FetchOutcome, Poll, Verdict};
use rest::RestClient;

/// Longest the thread sleeps without looking at the queue again.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Keys listed by name when recovery ends with keys pending.
const PENDING_LISTED_MAX: usize = 20;
/// How long after a result could not be handed over its page is asked for again.
const REDELIVERY_DELAY: Duration = Duration::from_secs(5);
/// How long the report of one key left pending at exit may wait for room in the buffer.
const EXIT_REPORT_WAIT: Duration = Duration::from_millis(200);

pub struct Recovery<'a> {
    pub handle: &'a RecoveryHandle,
    pub client: RestClient,
    pub lanes: RecoveryLanes<'a>,
    pub metrics: &'a Metrics,
    /// The stop request: a request in flight may have been interrupted by it.
    pub shutdown: &'a Shutdown,
    /// The source of frames has ended (the reader stopped, a replay's files are read): no gap
    /// can come any more, so the thread reports what is left and ends.
    pub source_done: &'a Shutdown,
    /// A replay: no request is made; the keys wait for the end of the run and are reported
    /// as `offline` then.
    pub offline: bool,
}

impl std::fmt::Debug for Recovery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery").finish_non_exhaustive()
    }
}

impl Recovery<'_> {
    pub fn run(self) {
        let mut stopped_logged = false;
        let mut over_budget_logged = false;
        while !self.source_done.is_requested() {
            if self.offline {
                self.fail_offline();
                self.sleep(IDLE_WAIT);
                continue;
            }
            let now = Instant::now();
            let poll = {
                let mut q = self.handle.queue.lock();
                let p = q.poll(now);
                self.metrics.recovery_pending.set(q.pending() as u64);
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
        let (pending, reason) = {
            let mut q = self.handle.queue.lock();
            let reason = if self.offline {
                Unrecovered::Offline
            } else if q.is_stopped() {
                Unrecovered::RestRefused
            } else if q.over_budget(Instant::now()) {
                Unrecovered::BudgetSpent
            } else {
                Unrecovered::PendingAtExit
            };
            (q.pending_keys(), reason)
        };
        self.metrics.recovery_pending.set(pending.len() as u64);
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
        // Each gap left gets its `recovery` line from the worker that owns it, which is still
        // draining: what was lost is said on stdout, not only in the log.
        for key in pending {
            let error = reason.as_str().replace('_', " ");
            let result = RecoveryResult::Failed { key, attempts: 0, error, reason, at_unix_ns: unix_now_ns() };
            if self.lanes.deliver(result, EXIT_REPORT_WAIT, || false).is_err() {
                break;
            }
        }
    }

    /// A replay: every key fails as soon as it is asked for, as `offline`, so its line comes
    /// where the live run's would (after the gap) and no key waits in the bounded set.
    fn fail_offline(&self) {
        let keys = self.handle.queue.lock().drain();
        self.metrics.recovery_pending.set(0);
        for key in keys {
            let reason = Unrecovered::Offline;
            let result = RecoveryResult::Failed {
                key,
                attempts: 0,
                error: "offline (a replay makes no REST request)".into(),
                reason,
                at_unix_ns: unix_now_ns(),
            };
            // Waits for room like any answer: a replay never drops.
            if self.lanes.deliver(result, Duration::MAX, || self.shutdown.is_requested()).is_err() {
                return;
            }
        }
    }

    /// Waits until `timeout` passes, a key is pushed, or a stop is requested.
    fn sleep(&self, timeout: Duration) {
        select! {
            recv(self.handle.wake_rx) -> _ => {}
            recv(self.source_done.receiver()) -> _ => {}
            default(timeout) => {}
        }
    }

    fn fetch(&self, key: RecoveryKey) {
        self.metrics.recovery_requests.add(1);
        crate::fault::maybe_panic("recovery", self.metrics.recovery_requests.get());
        let started = Instant::now();
        let answer = self.client.fetch(&key);
        log::debug!(
            "recovery: GET {} -> {:?} in {} ms",
            self.client.path(&key),
            answer.outcome,
            started.elapsed().as_millis()
        );
        if let Some(r) = answer.rate_limit_remaining {
            self.metrics.rate_limit_remaining.set_signed(r);
        }
        if let Some(c) = answer.request_cost {
            self.metrics.rate_limit_request_cost.set(c);
        }
        if self.shutdown.is_requested() {
            // The answer may be an interruption caused by the stop itself: do not judge the key.
            return;
        }
        match &answer.outcome {
            FetchOutcome::RateLimited { retry_after } => {
                self.metrics.recovery_rate_limited.add(1);
                self.metrics.last_429_unix_s.set(unix_seconds(unix_now_ns()));
                log::warn!(
                    "CoinAPI rate limit (HTTP 429) on {} {}: pausing REST recovery {}",
                    key.symbol_id,
                    key.data_type.as_str(),
                    retry_after
                        .map(|d| format!("for {:.1}s as told (Retry-After)", d.as_secs_f64()))
                        .unwrap_or_else(|| "with backoff (no Retry-After)".into())
                );
            }
            FetchOutcome::Transient(why) | FetchOutcome::Refused(why) => {
                log::warn!("recovery of {} {} failed: {why}", key.symbol_id, key.data_type.as_str());
            }
            FetchOutcome::Unauthorized(why) => log::error!("REST recovery refused: {why}"),
            FetchOutcome::Ok { .. } | FetchOutcome::NoData => {}
        }
        let verdict = self.handle.queue.lock().complete(&key, answer.outcome.clone(), Instant::now());
        let (result, next) = match verdict {
            Verdict::Done => {
                let next = match (&key.window, answer.page_end_ns) {
                    (Some(w), Some(end)) => {
                        let limit = self.client.trades_limit() as usize;
                        if answer.records.len() >= limit && answer.last_time_ns.is_none_or(|t| t <= w.page_from_ns) {
                            // More than a page shares one time, or the last time is unreadable:
                            // paging must move on and may skip trades. Said, not hidden.
                            self.metrics.recovery_pages_saturated.add(1);
                            log::warn!(
                                "recovery of {} trades: a full page of {limit} ends at its own start time (or an unreadable time); moving on 100 ns, trades beyond the page at that time may be missed (raise --recovery-trades-limit)",
                                key.symbol_id
                            );
                        }
                        queue::next_page(w, end, answer.records.len(), limit, answer.last_time_ns).map(|from| {
                            RecoveryKey { window: Some(TradeWindow { page_from_ns: from, ..*w }), ..key.clone() }
                        })
                    }
                    _ => None,
                };
                let more = next.is_some();
                let result = RecoveryResult::Recovered {
                    key: key.clone(),
                    records: answer.records,
                    recv_unix_ns: unix_now_ns(),
                    more,
                };
                (result, next)
            }
            Verdict::GaveUp { attempts, last_error } => {
                let result = RecoveryResult::Failed {
                    key: key.clone(),
                    attempts,
                    error: last_error,
                    reason: Unrecovered::RestFailed,
                    at_unix_ns: unix_now_ns(),
                };
                (result, None)
            }
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
        match self.lanes.deliver(result, DELIVERY_WAIT, || self.shutdown.is_requested()) {
            Ok(()) => {
                if let Some(next) = next {
                    self.handle.queue.lock().continue_with(next);
                }
            }
            Err(DeliveryError::Gone) => {}
            Err(DeliveryError::Full) if self.shutdown.is_requested() => {}
            Err(DeliveryError::Full) => {
                // The worker's queue stayed full (a long stall downstream): ask for the same page
                // again later rather than lose it (pages are idempotent: the worker skips what it
                // wrote). Costs one more request, paced like every other.
                log::warn!(
                    "recovery of {} {}: the buffer stayed full for {}s; asking for the page again in {}s",
                    key.symbol_id,
                    key.data_type.as_str(),
                    DELIVERY_WAIT.as_secs(),
                    REDELIVERY_DELAY.as_secs()
                );
                self.metrics.recovery_redeliveries.add(1);
                self.handle.queue.lock().requeue(key, Instant::now() + REDELIVERY_DELAY);
            }
        }
    }
}
