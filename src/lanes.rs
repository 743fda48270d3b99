//! The pipeline's inter-thread vocabulary, in one leaf module: what travels from the reader and
//! the recovery thread to the workers (`Frame`, `WorkerInput`, `RecoveryKey`, `RecoveryResult`),
//! how a symbol picks its worker (`route`), and the reader's side of the hand-off (`Lanes`: one
//! bounded channel per worker, with the shedding state that keeps the reader reading).
//!
//! Thread rooms import this module and never each other, so no import circle can form between
//! them. The channels themselves are created in `app`, the only place that creates channels
//! between pipeline threads.

use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use crate::metrics::Metrics;
use crate::wire::{self, DataType};

/// Minimum time between two "started dropping" warnings for one channel.
const SHED_WARN_EVERY: Duration = Duration::from_secs(5);

/// One text frame as read from the socket, stamped by the reader.
#[derive(Debug, Clone)]
pub struct Frame {
    pub text: Utf8Bytes,
    /// Receive time, nanoseconds since the Unix epoch.
    pub recv_unix_ns: i128,
    /// Which connection it came on; sequences are only comparable within one.
    pub generation: u64,
}

/// Everything a worker can be asked to do, as one closed set. Each input carries its own time,
/// so a worker never reads the clock and a replay of recorded inputs is deterministic.
#[derive(Debug)]
pub enum WorkerInput {
    Frame(Frame),
    /// The reader opened connection `generation` at `at_unix_ns`: sequences start over, and
    /// every stream that was live on the previous connection has a gap.
    Connected {
        generation: u64,
        at_unix_ns: i128,
    },
    Recovery(RecoveryResult),
    /// Nothing arrived for a while; `now_unix_ns` lets the worker re-count silent symbols.
    Tick {
        now_unix_ns: i128,
    },
}

/// What to recover: one data type of one symbol. Two gaps on the same key need one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecoveryKey {
    pub symbol_id: String,
    pub data_type: DataType,
}

/// What the recovery thread did for one key.
#[derive(Debug)]
pub enum RecoveryResult {
    /// Records fetched over REST (oldest first; empty when CoinAPI had no data).
    Recovered {
        key: RecoveryKey,
        records: Vec<Box<RawValue>>,
        recv_unix_ns: i128,
    },
    Failed {
        key: RecoveryKey,
        attempts: u32,
        error: String,
        at_unix_ns: i128,
    },
}

impl RecoveryResult {
    pub fn key(&self) -> &RecoveryKey {
        match self {
            RecoveryResult::Recovered { key, .. } | RecoveryResult::Failed { key, .. } => key,
        }
    }
}

/// A stable, fast hash of a symbol id's bytes (FNV-1a) to pick its worker. Stable across runs
/// and independent of the hasher seed, so a symbol always lands on the same worker.
pub fn route(symbol_id: &[u8], n_workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in symbol_id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % n_workers as u64) as usize
}

/// What became of one frame handed to `Lanes::dispatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    Delivered,
    /// Shed (counted per symbol): its worker's channel stayed full.
    Dropped,
    /// Its worker is gone: the pipeline is ending.
    Gone,
}

/// One worker's input channel and whether the reader is shedding load for it.
#[derive(Debug)]
struct Lane {
    tx: Sender<WorkerInput>,
    shedding: bool,
    last_shed_warning: Option<Instant>,
    /// The current shedding episode was announced with a warning, so its end is logged too.
    announced: bool,
}

/// The reader's hand-off to the workers. It never blocks on a full channel for longer than
/// `queue_wait`: past that it sheds the lane's frames (counted per symbol) until the channel has
/// drained to half its capacity, so pongs keep going out and CoinAPI's server-side buffer never
/// overflows because of us. Hysteresis keeps a lane from flapping at the edge of full.
#[derive(Debug)]
pub struct Lanes<'a> {
    lanes: Vec<Lane>,
    metrics: &'a Metrics,
    capacity: usize,
    /// Shedding stops once a channel holds at most this many messages.
    low_water: usize,
    queue_wait: Duration,
}

impl<'a> Lanes<'a> {
    pub fn new(
        senders: Vec<Sender<WorkerInput>>,
        capacity: usize,
        queue_wait: Duration,
        metrics: &'a Metrics,
    ) -> Lanes<'a> {
        assert!(!senders.is_empty(), "the reader needs at least one worker");
        let lanes = senders
            .into_iter()
            .map(|tx| Lane { tx, shedding: false, last_shed_warning: None, announced: false })
            .collect();
        Lanes { lanes, metrics, capacity, low_water: capacity / 2, queue_wait }
    }

    /// Routes one data frame of connection `generation` to the worker that owns its symbol.
    /// `recv_unix_ns` stamps it, called only for a frame that is not shed (the reader passes the
    /// clock; a replay would pass the recorded time).
    pub fn dispatch(&mut self, text: Utf8Bytes, generation: u64, recv_unix_ns: impl FnOnce() -> i128) -> Dispatch {
        let symbol = wire::scan_field(text.as_bytes(), b"symbol_id").unwrap_or(b"");
        let w = route(symbol, self.lanes.len());
        let lane = &mut self.lanes[w];
        if lane.shedding {
            if lane.tx.len() > self.low_water {
                self.metrics.record_drop(symbol);
                return Dispatch::Dropped;
            }
            lane.shedding = false;
            // Under sustained overload a channel fills and drains many times a second: only the
            // episodes whose start was logged (at most one per SHED_WARN_EVERY) log their end.
            if std::mem::take(&mut lane.announced) {
                log::info!(
                    "worker-{w} channel drained to {} of {}: delivering again (dropped so far: {})",
                    lane.tx.len(),
                    self.capacity,
                    self.metrics.dropped.get()
                );
            }
        }
        let frame = Frame { text, recv_unix_ns: recv_unix_ns(), generation };
        let sent = match lane.tx.try_send(WorkerInput::Frame(frame)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(input)) => lane.tx.send_timeout(input, self.queue_wait),
            Err(TrySendError::Disconnected(input)) => Err(SendTimeoutError::Disconnected(input)),
        };
        match sent {
            Ok(()) => {
                self.metrics.set_queue_depth(w, lane.tx.len());
                Dispatch::Delivered
            }
            Err(SendTimeoutError::Timeout(input)) => {
                lane.shedding = true;
                let text = match &input {
                    WorkerInput::Frame(frame) => frame.text.as_bytes(),
                    _ => b"",
                };
                let symbol = wire::scan_field(text, b"symbol_id").unwrap_or(b"");
                self.metrics.record_drop(symbol);
                self.metrics.set_queue_depth(w, self.capacity);
                let now = Instant::now();
                if lane.last_shed_warning.is_none_or(|t| now.duration_since(t) >= SHED_WARN_EVERY) {
                    lane.last_shed_warning = Some(now);
                    lane.announced = true;
                    log::warn!(
                        "worker-{w} channel full for {}ms: dropping its messages until it drains to {} (dropped so far: {})",
                        self.queue_wait.as_millis(),
                        self.low_water,
                        self.metrics.dropped.get()
                    );
                }
                Dispatch::Dropped
            }
            Err(SendTimeoutError::Disconnected(_)) => Dispatch::Gone,
        }
    }

    /// Tells every worker at once (not at its next frame) that connection `generation` opened,
    /// so the streams of the old connection are queued for recovery promptly. Best effort: a
    /// worker also notices the new generation on its next frame.
    pub fn connected(&mut self, generation: u64, at_unix_ns: i128) {
        for lane in &self.lanes {
            let _ = lane.tx.send_timeout(WorkerInput::Connected { generation, at_unix_ns }, self.queue_wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_stable_and_in_range() {
        for n in 1..8 {
            let w = route(b"BITSTAMP_SPOT_BTC_USD", n);
            assert!(w < n);
            assert_eq!(w, route(b"BITSTAMP_SPOT_BTC_USD", n));
        }
        let spread: std::collections::HashSet<usize> =
            (0..100).map(|i| route(format!("SYM_{i}").as_bytes(), 4)).collect();
        assert_eq!(spread.len(), 4, "100 symbols use all 4 workers");
    }

    fn frame(symbol: &str) -> Utf8Bytes {
        Utf8Bytes::from(format!(r#"{{"type":"quote","symbol_id":"{symbol}","sequence":1}}"#))
    }

    /// Proves a full lane sheds with hysteresis (counted per symbol) and a dead worker is seen
    /// as gone, not as full.
    #[test]
    fn a_full_lane_sheds_until_half_drained_and_a_dead_one_is_gone() {
        let metrics = Metrics::new(1);
        let (tx, rx) = crossbeam_channel::bounded(4);
        let mut lanes = Lanes::new(vec![tx], 4, Duration::ZERO, &metrics);
        for _ in 0..4 {
            assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Delivered);
        }
        assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Dropped);
        let _ = rx.try_recv();
        assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Dropped, "3 queued > low water 2: still shedding");
        let _ = rx.try_recv();
        assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Delivered, "drained to 2: delivering again");
        assert_eq!(metrics.top_drops(1), vec![("A".to_string(), 2)]);
        assert_eq!(metrics.queue_depths(), vec![3]);
        drop(rx);
        assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Gone);
    }
}
