//! The request side of recovery: what a worker holds and calls when it finds a gap. A push goes
//! into the one shared `RecoveryQueue` (deduplicated and bounded, see `queue.rs`) under a short
//! lock and wakes the recovery thread; a full queue is counted and logged, never waited on.
//! Workers import this module and nothing else of recovery.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::config::RecoveryConfig;
use crate::lanes::RecoveryKey;
use crate::metrics::Metrics;
use crate::recovery::queue::{PushOutcome, RecoveryPolicy, RecoveryQueue};

/// Requests are spaced this fraction more than `1 / --recovery-rps`: the server counts requests
/// by arrival, and arrival jitter must not put `rps + 1` requests into one of its 1 s windows.
const PACING_GUARD: f64 = 0.02;
/// Minimum time between two "recovery queue full" warnings.
const OVERFLOW_WARN_EVERY: Duration = Duration::from_secs(10);

/// What workers hold to request recovery. Cheap to share by reference.
#[derive(Debug)]
pub struct RecoveryHandle {
    pub(super) queue: Mutex<RecoveryQueue>,
    wake_tx: Sender<()>,
    pub(super) wake_rx: Receiver<()>,
    last_overflow_warning: Mutex<Option<Instant>>,
}

impl RecoveryHandle {
    pub fn new(config: &RecoveryConfig, now: Instant) -> RecoveryHandle {
        let policy = RecoveryPolicy {
            rps: config.rps / (1.0 + PACING_GUARD),
            max_pending: config.max_pending,
            max_attempts: config.max_attempts,
            budget_credits_per_day: config.budget,
            trade_page_credits: u64::from(config.trades_limit).div_ceil(100).max(1),
            ..RecoveryPolicy::default()
        };
        // Capacity 1: a wake-up is a level, not a count; more pushes while one is pending add nothing.
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        RecoveryHandle {
            queue: Mutex::new(RecoveryQueue::new(policy, now)),
            wake_tx,
            wake_rx,
            last_overflow_warning: Mutex::new(None),
        }
    }

    /// Queues `key` for recovery (deduplicated); counts and logs it if the queue is full, and
    /// returns false then.
    pub fn request(&self, key: RecoveryKey, metrics: &Metrics) -> bool {
        let outcome = self.queue.lock().push(key.clone());
        match outcome {
            PushOutcome::Added => {
                let _ = self.wake_tx.try_send(());
                true
            }
            PushOutcome::AlreadyPending => true,
            PushOutcome::Overflow => {
                metrics.recovery_overflow.add(1);
                let now = Instant::now();
                let mut last = self.last_overflow_warning.lock();
                if last.is_none_or(|t| now.duration_since(t) >= OVERFLOW_WARN_EVERY) {
                    *last = Some(now);
                    log::warn!(
                        "recovery queue full: not recovering {} {} (see --recovery-max-pending; overflows so far: {})",
                        key.symbol_id,
                        key.data_type.as_str(),
                        metrics.recovery_overflow.get()
                    );
                }
                false
            }
        }
    }
}
