//! The pipeline's inter-thread vocabulary, in one leaf module: what travels from the reader and
//! the recovery thread to the workers (`Frame`, `WorkerInput`, `RecoveryKey`, `RecoveryResult`),
//! how a symbol picks its worker (`route`), and the hand-off to the workers: one queue per worker,
//! all bounded together by one memory budget (`Budget`, `--buffer-mib`), with the reader's side
//! (`Lanes`, with the shedding state that keeps the reader reading) and the recovery thread's side
//! (`RecoveryLanes`). `worker_queues` creates them; `app` calls it, and creates every other
//! channel between pipeline threads.
//!
//! Thread rooms import this module and never each other, so no import circle can form between
//! them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender};
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

/// What to recover: one data type of one symbol, and for trades the gap's time window. Two gaps
/// of a state (quote, OHLCV) on the same key need one request; every trade gap has its window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecoveryKey {
    pub symbol_id: String,
    pub data_type: DataType,
    pub window: Option<TradeWindow>,
}

impl RecoveryKey {
    /// The key of a state stream (or of trades without a known time: their latest page).
    pub fn state(symbol_id: &str, data_type: DataType) -> RecoveryKey {
        RecoveryKey { symbol_id: symbol_id.to_string(), data_type, window: None }
    }
}

/// A trade gap's window in exchange time, `[start_ns, end_ns)` (Unix ns), as the worker that owns
/// the symbol opened it (`id`), and the start of the page to ask for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TradeWindow {
    pub id: u64,
    pub start_ns: i64,
    pub end_ns: i64,
    pub page_from_ns: i64,
}

/// What the recovery thread did for one key.
#[derive(Debug)]
pub enum RecoveryResult {
    /// Records fetched over REST (oldest first; empty when CoinAPI had no data). `more`: a page
    /// of a trade window with further pages to come.
    Recovered { key: RecoveryKey, records: Vec<Box<RawValue>>, recv_unix_ns: i128, more: bool },
    /// Given up: `attempts` requests failed (the last with `error`), or none could be made.
    Failed { key: RecoveryKey, attempts: u32, error: String, reason: Unrecovered, at_unix_ns: i128 },
}

impl RecoveryResult {
    pub fn key(&self) -> &RecoveryKey {
        match self {
            RecoveryResult::Recovered { key, .. } | RecoveryResult::Failed { key, .. } => key,
        }
    }
}

/// Book streams the workers want resubscribed: a gap in a `book` (snapshot + deltas) stream
/// cannot be repaired over REST (a REST book has no sequence), so the reader unsubscribes and
/// resubscribes it on the WebSocket and CoinAPI restarts it with a snapshot. Deduplicated and
/// bounded (`max` streams; a refused one is counted by the caller); the reader drains it at most
/// one scope message per 2 s.
#[derive(Debug)]
pub struct Resyncs {
    pending: parking_lot::Mutex<Vec<(DataType, String)>>,
    max: usize,
    /// Whether `pending` holds anything: read by the reader on every frame without the lock.
    wanted: std::sync::atomic::AtomicBool,
}

impl Resyncs {
    pub fn new(max: usize) -> Resyncs {
        Resyncs { pending: parking_lot::Mutex::new(Vec::new()), max, wanted: Default::default() }
    }

    /// Whether any stream waits for its resubscription (a relaxed read, for the reader's loop).
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    /// Asks for the stream to be resubscribed; false if the set is full.
    pub fn request(&self, data_type: DataType, symbol_id: &str) -> bool {
        let mut pending = self.pending.lock();
        if pending.iter().any(|(t, s)| *t == data_type && s == symbol_id) {
            return true;
        }
        if pending.len() >= self.max {
            return false;
        }
        pending.push((data_type, symbol_id.to_string()));
        self.wanted.store(true, Ordering::Relaxed);
        true
    }

    /// Takes up to `n` of the requested streams, oldest first.
    pub fn take(&self, n: usize) -> Vec<(DataType, String)> {
        let mut pending = self.pending.lock();
        let n = n.min(pending.len());
        let taken = pending.drain(..n).collect();
        self.wanted.store(!pending.is_empty(), Ordering::Relaxed);
        taken
    }

    /// A new connection subscribes everything afresh: nothing is left to resubscribe.
    pub fn clear(&self) {
        self.pending.lock().clear();
        self.wanted.store(false, Ordering::Relaxed);
    }
}

/// Why what a gap lost did not all come back (`reason` of a `recovery` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecovered {
    /// CoinAPI's history held fewer trades than the sequence numbers said were missing.
    NoHistory,
    /// Every attempt failed (5xx, timeout, bad body): see `error`.
    RestFailed,
    /// CoinAPI refused the key for REST (401/403: invalid, no privilege or out of credits).
    RestRefused,
    /// The `--recovery-budget` for 24 h was spent when the run ended.
    BudgetSpent,
    /// Still waiting for its request when the run ended.
    PendingAtExit,
    /// The pending set was full (`--recovery-max-pending`).
    QueueFull,
    /// The symbol already had the most trade gaps waiting at once.
    TooManyGaps,
    /// A replay: no REST request is made.
    Offline,
}

impl Unrecovered {
    pub fn as_str(self) -> &'static str {
        match self {
            Unrecovered::NoHistory => "no_history",
            Unrecovered::RestFailed => "rest_failed",
            Unrecovered::RestRefused => "rest_refused",
            Unrecovered::BudgetSpent => "budget_spent",
            Unrecovered::PendingAtExit => "pending_at_exit",
            Unrecovered::QueueFull => "queue_full",
            Unrecovered::TooManyGaps => "too_many_gaps",
            Unrecovered::Offline => "offline",
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

/// What a queued input costs the buffer beyond its text: its slot in the channel's block, the
/// allocation headers and the share of a read-buffer chunk's header. Frames are small (a quote is
/// ~250 bytes), so the overhead is a third of the cost and must be counted.
pub const INPUT_OVERHEAD_BYTES: u64 = std::mem::size_of::<WorkerInput>() as u64 + 48;

impl WorkerInput {
    /// Bytes this input holds while it waits in a worker's queue: what the buffer charges for it
    /// when it is sent and releases when it has been handled (the same number both sides).
    /// A `Tick` costs nothing: a worker makes its own, none is ever queued.
    pub fn cost(&self) -> u64 {
        match self {
            WorkerInput::Frame(frame) => INPUT_OVERHEAD_BYTES + frame.text.len() as u64,
            WorkerInput::Recovery(RecoveryResult::Recovered { records, .. }) => {
                INPUT_OVERHEAD_BYTES + records.iter().map(|r| r.get().len() as u64 + 16).sum::<u64>()
            }
            WorkerInput::Recovery(RecoveryResult::Failed { error, .. }) => INPUT_OVERHEAD_BYTES + error.len() as u64,
            WorkerInput::Connected { .. } => INPUT_OVERHEAD_BYTES,
            WorkerInput::Tick { .. } => 0,
        }
    }
}

/// A running total on a cache line of its own: written by one thread, read now and then by others.
#[derive(Debug, Default)]
#[repr(align(128))]
struct PaddedTotal(AtomicU64);

/// The memory budget of every worker queue together (`--buffer-mib`): what bounds the hand-off.
///
/// Each side keeps a running total only it writes (the reader what it sent, the recovery thread
/// what it sent, each worker what it has handled), so the hot path does plain stores on its own
/// cache line and no read-modify-write is shared between threads. Bytes in use are the sent
/// totals minus the handled ones. A worker's total read late shows more in use, not less; the
/// one way to see less is a frame handled before the reader stored its own total (one frame,
/// for a moment), so the bound holds within one frame.
#[derive(Debug)]
pub struct Budget {
    max: u64,
    reader_sent: PaddedTotal,
    recovery_sent: PaddedTotal,
    handled: Box<[PaddedTotal]>,
    /// The same sent totals by worker, for the per-worker gauge (`queue_bytes`): what the
    /// reader sent each (its running totals, stored) and what the recovery thread sent each.
    reader_sent_to: Box<[PaddedTotal]>,
    recovery_sent_to: Box<[PaddedTotal]>,
}

impl Budget {
    pub fn new(max_bytes: u64, n_workers: usize) -> Budget {
        Budget {
            max: max_bytes,
            reader_sent: PaddedTotal::default(),
            recovery_sent: PaddedTotal::default(),
            handled: (0..n_workers).map(|_| PaddedTotal::default()).collect(),
            reader_sent_to: (0..n_workers).map(|_| PaddedTotal::default()).collect(),
            recovery_sent_to: (0..n_workers).map(|_| PaddedTotal::default()).collect(),
        }
    }

    /// Bytes queued for worker `worker` now (an upper bound, as `used`).
    pub fn used_by(&self, worker: usize) -> u64 {
        let sent = self.reader_sent_to[worker].0.load(Ordering::Acquire)
            + self.recovery_sent_to[worker].0.load(Ordering::Acquire);
        sent.saturating_sub(self.handled[worker].0.load(Ordering::Acquire))
    }

    pub fn n_workers(&self) -> usize {
        self.handled.len()
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    fn handled_total(&self) -> u64 {
        self.handled.iter().map(|h| h.0.load(Ordering::Acquire)).sum()
    }

    /// Bytes queued now (an upper bound: see the type's doc).
    pub fn used(&self) -> u64 {
        let handled = self.handled_total();
        let sent = self.reader_sent.0.load(Ordering::Acquire) + self.recovery_sent.0.load(Ordering::Acquire);
        sent.saturating_sub(handled)
    }

    /// (bytes sent, bytes handled) since the start: equal once everything sent was handled.
    pub fn totals(&self) -> (u64, u64) {
        let sent = self.reader_sent.0.load(Ordering::Acquire) + self.recovery_sent.0.load(Ordering::Acquire);
        (sent, self.handled_total())
    }

    /// Worker `worker` has handled inputs costing `total` bytes since it started.
    pub fn set_handled(&self, worker: usize, total: u64) {
        self.handled[worker].0.store(total, Ordering::Release);
    }

    /// The recovery thread's side: charges `cost` if it fits (or if nothing is queued, so one
    /// result larger than the whole budget still gets through an empty buffer).
    fn try_charge_recovery(&self, worker: usize, cost: u64) -> bool {
        let used = self.used();
        if used + cost > self.max && used > 0 {
            return false;
        }
        self.recovery_sent_to[worker].0.fetch_add(cost, Ordering::AcqRel);
        self.recovery_sent.0.fetch_add(cost, Ordering::AcqRel);
        true
    }
}

/// How often a producer waiting for room in the buffer looks again.
const ROOM_POLL: Duration = Duration::from_millis(1);

/// The recovery thread's way into the workers' queues: waits (bounded) for room in the buffer,
/// then sends the result to the worker that owns its symbol.
#[derive(Debug, Clone)]
pub struct RecoveryLanes<'a> {
    senders: Vec<Sender<WorkerInput>>,
    budget: &'a Budget,
    message_cap: Option<usize>,
}

/// Why a recovery result could not be handed over.
#[derive(Debug, PartialEq, Eq)]
pub enum DeliveryError {
    /// The buffer stayed full for the whole wait.
    Full,
    /// The worker is gone (the pipeline is ending).
    Gone,
}

impl RecoveryLanes<'_> {
    /// Sends `result` to its symbol's worker once the buffer has room, waiting at most `wait` and
    /// giving up at once when `stop` says so.
    pub fn deliver(
        &self,
        result: RecoveryResult,
        wait: Duration,
        stop: impl Fn() -> bool,
    ) -> Result<(), DeliveryError> {
        let w = route(result.key().symbol_id.as_bytes(), self.senders.len());
        let lane = &self.senders[w];
        let input = WorkerInput::Recovery(result);
        let cost = input.cost();
        // `Duration::MAX` waits for as long as it takes.
        let deadline = Instant::now().checked_add(wait);
        while self.message_cap.is_some_and(|cap| lane.len() >= cap) || !self.budget.try_charge_recovery(w, cost) {
            if stop() || deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(DeliveryError::Full);
            }
            std::thread::sleep(ROOM_POLL);
        }
        lane.send(input).map_err(|_| DeliveryError::Gone)
    }
}

/// Creates the workers' input queues: one per worker, bounded by `budget` (and by the optional
/// message cap of `Lanes`). Returns the reader's side, the recovery thread's side and one
/// receiver per worker. The only place the program creates a worker queue.
pub fn worker_queues<'a>(
    budget: &'a Budget,
    message_cap: Option<usize>,
    queue_wait: Duration,
    metrics: &'a Metrics,
) -> (Lanes<'a>, RecoveryLanes<'a>, Vec<Receiver<WorkerInput>>) {
    // Each queue is crossbeam's list flavour, whose blocks are allocated as messages arrive and
    // freed as they are taken: slack costs memory only while it is used. (The array flavour of
    // `bounded(n)` allocates and touches all n slots at creation, which for a queue that can hold
    // the whole budget is tens of MiB per worker, resident from the start.) The bound is the
    // budget: no sender leaves this module, and every send below is charged to it first.
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..budget.handled.len()).map(|_| crossbeam_channel::unbounded::<WorkerInput>()).unzip();
    let recovery = RecoveryLanes { senders: senders.clone(), budget, message_cap };
    (Lanes::new(senders, budget, message_cap, queue_wait, metrics), recovery, receivers)
}

/// What became of one frame handed to `Lanes::dispatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    Delivered,
    /// Shed (counted per symbol): the buffer (or the lane's message cap) stayed full.
    Dropped,
    /// Its worker is gone: the pipeline is ending.
    Gone,
}

/// One worker's input channel, whether the reader is shedding its frames because of its
/// message cap, and the chunk frames that will wait are copied into.
#[derive(Debug)]
struct Lane {
    tx: Sender<WorkerInput>,
    capped: bool,
    chunk: BytesMut,
    /// Bytes the reader has sent this lane (its running total of `Budget::reader_sent_to`).
    sent: u64,
}

impl Lane {
    /// A copy of `text` in this lane's own chunk: chunks are filled by one lane's frames only, so
    /// they are freed in the order its worker takes them, and a copy is a `memcpy` (a new chunk
    /// every `COPY_CHUNK_BYTES`), not an allocation per frame: one per frame, freed on another
    /// thread, measured 30% off the flood rate.
    fn copy(&mut self, text: &str) -> Utf8Bytes {
        let bytes = text.as_bytes();
        if self.chunk.capacity() - self.chunk.len() < bytes.len() {
            self.chunk = BytesMut::with_capacity(COPY_CHUNK_BYTES.max(bytes.len()));
        }
        self.chunk.extend_from_slice(bytes);
        let copy = self.chunk.split().freeze();
        // The bytes came from a `str`: valid UTF-8, so this cannot fail.
        Utf8Bytes::try_from(copy).unwrap_or_else(|_| Utf8Bytes::from(text.to_string()))
    }
}

/// The chunk size of the lanes' frame copies.
const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// A shedding episode: whether the reader drops, and whether its start was logged (so its end
/// is logged too).
#[derive(Debug, Default)]
struct Shedding {
    on: bool,
    announced: bool,
    last_warning: Option<Instant>,
}

/// Frames a worker may have queued before the reader copies new ones out of the socket's read
/// buffer. A frame shares its read-buffer chunk (128 KiB) with its neighbours, which go to every
/// worker: a frame that waits in a long queue would keep its whole chunk alive, and a stall
/// would cost 2.4 times the bytes the buffer counts (measured). Frames taken at once are never
/// copied.
const COPY_WHEN_QUEUED: usize = 64;

/// The reader's hand-off to the workers. It never blocks for longer than `queue_wait`: when the
/// buffer is still full after that, it sheds every frame (counted per symbol) until the buffer
/// has drained to `low_water`, and when a lane's optional message cap is reached it sheds that
/// lane's frames until it has drained to half its cap; so pongs keep going out and CoinAPI's
/// server-side buffer never overflows because of us. Hysteresis keeps the reader from flapping
/// at the edge of full.
#[derive(Debug)]
pub struct Lanes<'a> {
    lanes: Vec<Lane>,
    budget: &'a Budget,
    metrics: &'a Metrics,
    message_cap: Option<usize>,
    /// Shedding for a full buffer stops once it holds at most this many bytes.
    low_water: u64,
    queue_wait: Duration,
    shedding: Shedding,
    /// Bytes this reader has sent (the reader's running total of the budget).
    sent: u64,
    /// Bytes known free without looking at the workers' totals again: refreshed only when a
    /// frame does not fit or the recovery thread has charged something since, so while there
    /// is room a frame costs one read of a line that rarely changes.
    known_free: u64,
    recovery_seen: u64,
}

impl<'a> Lanes<'a> {
    fn new(
        senders: Vec<Sender<WorkerInput>>,
        budget: &'a Budget,
        message_cap: Option<usize>,
        queue_wait: Duration,
        metrics: &'a Metrics,
    ) -> Lanes<'a> {
        assert!(!senders.is_empty(), "the reader needs at least one worker");
        let lanes = senders.into_iter().map(|tx| Lane { tx, capped: false, chunk: BytesMut::new(), sent: 0 }).collect();
        let low_water = budget.max - budget.max / 8;
        Lanes {
            lanes,
            budget,
            metrics,
            message_cap,
            low_water,
            queue_wait,
            shedding: Shedding::default(),
            sent: 0,
            known_free: 0,
            recovery_seen: 0,
        }
    }

    /// Re-reads what the workers have handled; returns the bytes in use.
    fn refresh(&mut self) -> u64 {
        self.recovery_seen = self.budget.recovery_sent.0.load(Ordering::Acquire);
        let used = self.budget.used();
        self.known_free = self.budget.max.saturating_sub(used);
        used
    }

    /// Whether `cost` more bytes fit, refreshing the view of the other totals if needed.
    fn fits(&mut self, cost: u64) -> bool {
        let recovery_charged = self.budget.recovery_sent.0.load(Ordering::Relaxed) != self.recovery_seen;
        (cost <= self.known_free && !recovery_charged) || {
            let used = self.refresh();
            cost <= self.known_free || used == 0
        }
    }

    fn lane_full(&self, w: usize) -> bool {
        self.message_cap.is_some_and(|cap| self.lanes[w].tx.len() >= cap)
    }

    /// Sends `input` to lane `w`, charging the budget (the caller checked for room).
    fn send(&mut self, w: usize, input: WorkerInput, cost: u64) -> bool {
        if self.lanes[w].tx.send(input).is_err() {
            return false;
        }
        self.sent += cost;
        self.known_free = self.known_free.saturating_sub(cost);
        self.budget.reader_sent.0.store(self.sent, Ordering::Release);
        self.lanes[w].sent += cost;
        self.budget.reader_sent_to[w].0.store(self.lanes[w].sent, Ordering::Release);
        true
    }

    /// Routes one data frame of connection `generation` to the worker that owns its symbol.
    /// `recv_unix_ns` stamps it, called only for a frame that is not shed (the reader passes the
    /// clock; a replay would pass the recorded time).
    pub fn dispatch(&mut self, text: Utf8Bytes, generation: u64, recv_unix_ns: impl FnOnce() -> i128) -> Dispatch {
        let symbol = wire::scan_field(text.as_bytes(), b"symbol_id").unwrap_or(b"");
        let w = route(symbol, self.lanes.len());
        let cost = INPUT_OVERHEAD_BYTES + text.len() as u64;
        if self.shedding.on {
            if self.refresh() > self.low_water {
                self.metrics.record_drop(symbol);
                return Dispatch::Dropped;
            }
            self.shedding.on = false;
            // Under sustained overload the buffer fills and drains many times a minute: only the
            // episodes whose start was logged (at most one per SHED_WARN_EVERY) log their end.
            if std::mem::take(&mut self.shedding.announced) {
                log::info!(
                    "buffer drained to {} KiB of {} KiB: delivering again (dropped so far: {})",
                    self.budget.used() >> 10,
                    self.budget.max >> 10,
                    self.metrics.dropped.get()
                );
            }
        }
        if self.lanes[w].capped {
            if self.message_cap.is_some_and(|cap| self.lanes[w].tx.len() > cap / 2) {
                self.metrics.record_drop(symbol);
                return Dispatch::Dropped;
            }
            self.lanes[w].capped = false;
        }
        if !self.fits(cost) || self.lane_full(w) {
            let deadline = Instant::now() + self.queue_wait;
            loop {
                if Instant::now() >= deadline {
                    return self.shed(w, symbol);
                }
                std::thread::sleep(ROOM_POLL.min(self.queue_wait));
                if self.fits(cost) && !self.lane_full(w) {
                    break;
                }
            }
        }
        let queued = self.lanes[w].tx.len();
        let text = if queued >= COPY_WHEN_QUEUED { self.lanes[w].copy(text.as_str()) } else { text };
        let frame = Frame { text, recv_unix_ns: recv_unix_ns(), generation };
        if !self.send(w, WorkerInput::Frame(frame), cost) {
            return Dispatch::Gone;
        }
        self.metrics.set_queue_depth(w, queued + 1);
        Dispatch::Delivered
    }

    /// A replay's hand-off: like `dispatch`, but it waits for room for as long as it takes
    /// (nothing is lost by reading a file later) and never drops; `Gone` when `stop` says the
    /// run is ending while it waits, or the worker is gone. The text is copied into its lane's
    /// chunk, as a waiting live frame is.
    pub fn dispatch_waiting(
        &mut self,
        text: &str,
        generation: u64,
        recv_unix_ns: i128,
        stop: impl Fn() -> bool,
    ) -> Dispatch {
        let symbol = wire::scan_field(text.as_bytes(), b"symbol_id").unwrap_or(b"");
        let w = route(symbol, self.lanes.len());
        let cost = INPUT_OVERHEAD_BYTES + text.len() as u64;
        while !self.fits(cost) || self.lane_full(w) {
            if stop() {
                return Dispatch::Gone;
            }
            std::thread::sleep(ROOM_POLL);
        }
        let queued = self.lanes[w].tx.len();
        let text = self.lanes[w].copy(text);
        if !self.send(w, WorkerInput::Frame(Frame { text, recv_unix_ns, generation }), cost) {
            return Dispatch::Gone;
        }
        self.metrics.set_queue_depth(w, queued + 1);
        Dispatch::Delivered
    }

    /// Starts shedding (the buffer, or lane `w`'s message cap, stayed full for `queue_wait`): the
    /// frame of `symbol` is dropped and counted.
    fn shed(&mut self, w: usize, symbol: &[u8]) -> Dispatch {
        self.metrics.record_drop(symbol);
        let depth = self.lanes[w].tx.len();
        self.metrics.set_queue_depth(w, depth);
        let why = if self.lane_full(w) {
            self.lanes[w].capped = true;
            format!("worker-{w} queue full ({depth} messages, --queue-capacity): dropping its messages until it drains to half")
        } else {
            self.shedding.on = true;
            format!(
                "buffer full ({} KiB of {} KiB, --buffer-mib): dropping messages until it drains to {} KiB",
                self.budget.used() >> 10,
                self.budget.max >> 10,
                self.low_water >> 10
            )
        };
        let now = Instant::now();
        if self.shedding.last_warning.is_none_or(|t| now.duration_since(t) >= SHED_WARN_EVERY) {
            self.shedding.last_warning = Some(now);
            self.shedding.announced = true;
            log::warn!(
                "{why} after waiting {}ms (dropped so far: {})",
                self.queue_wait.as_millis(),
                self.metrics.dropped.get()
            );
        }
        Dispatch::Dropped
    }

    /// Tells every worker at once (not at its next frame) that connection `generation` opened,
    /// so the streams of the old connection are queued for recovery promptly. Charged to the
    /// buffer but never refused: it is a few bytes, at most one per connection attempt.
    pub fn connected(&mut self, generation: u64, at_unix_ns: i128) {
        for w in 0..self.lanes.len() {
            let input = WorkerInput::Connected { generation, at_unix_ns };
            let cost = input.cost();
            let _ = self.send(w, input, cost);
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

    /// What a worker does after handling `n` inputs from `rx`: takes them and reports its total.
    fn handle(rx: &Receiver<WorkerInput>, budget: &Budget, total: &mut u64, n: usize) {
        for _ in 0..n {
            let input = rx.try_recv().expect("queued");
            *total += input.cost();
        }
        budget.set_handled(0, *total);
    }

    /// Proves the buffer bounds the queue in bytes, sheds with hysteresis (counted per symbol)
    /// until it drains to seven eighths, and that a dead worker is seen as gone, not as full.
    #[test]
    fn a_full_buffer_sheds_until_drained_and_a_dead_worker_is_gone() {
        let metrics = Metrics::new(1);
        let cost = INPUT_OVERHEAD_BYTES + frame("A").len() as u64;
        let budget = Budget::new(16 * cost, 1);
        let (mut lanes, _recovery, rxs) = worker_queues(&budget, None, Duration::ZERO, &metrics);
        let rx = &rxs[0];
        for _ in 0..16 {
            assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Delivered);
        }
        assert_eq!(budget.used(), 16 * cost);
        assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Dropped, "the 17th does not fit");
        let mut handled = 0;
        handle(rx, &budget, &mut handled, 1);
        assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Dropped, "15 of 16 > low water 14: still shedding");
        handle(rx, &budget, &mut handled, 1);
        assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Delivered, "drained to 14: delivering again");
        assert_eq!(metrics.top_drops(1), vec![("A".to_string(), 2)]);
        assert_eq!(metrics.queue_depths(), vec![15]);
        drop(rxs);
        assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Gone);
    }

    /// Proves the optional message cap holds per lane on top of the budget, with the same
    /// hysteresis (half the cap), and leaves the other lane alone.
    #[test]
    fn the_message_cap_sheds_one_lane_only() {
        let metrics = Metrics::new(2);
        let budget = Budget::new(1 << 30, 2);
        let (mut lanes, _recovery, rxs) = worker_queues(&budget, Some(4), Duration::ZERO, &metrics);
        let pick = |w: usize| (0..).map(|i| format!("S{i}")).find(|s| route(s.as_bytes(), 2) == w).expect("a symbol");
        let (a, b) = (pick(0), pick(1));
        for _ in 0..4 {
            assert_eq!(lanes.dispatch(frame(&a), 1, || 0), Dispatch::Delivered);
        }
        assert_eq!(lanes.dispatch(frame(&a), 1, || 0), Dispatch::Dropped);
        assert_eq!(lanes.dispatch(frame(&b), 1, || 0), Dispatch::Delivered, "the other lane is not capped");
        let _ = rxs[0].try_recv();
        assert_eq!(lanes.dispatch(frame(&a), 1, || 0), Dispatch::Dropped, "3 > half the cap");
        let _ = rxs[0].try_recv();
        assert_eq!(lanes.dispatch(frame(&a), 1, || 0), Dispatch::Delivered);
    }

    /// Proves a recovery result waits for room (bounded), and fits into an empty buffer even when
    /// it is larger than the whole budget.
    #[test]
    fn recovery_results_wait_for_room() {
        let metrics = Metrics::new(1);
        let budget = Budget::new(INPUT_OVERHEAD_BYTES + 10, 1);
        let (mut lanes, recovery, rxs) = worker_queues(&budget, None, Duration::ZERO, &metrics);
        let result = |n: usize| RecoveryResult::Failed {
            key: RecoveryKey::state("A", DataType::Quote),
            attempts: 1,
            error: "x".repeat(n),
            reason: Unrecovered::RestFailed,
            at_unix_ns: 0,
        };
        assert_eq!(recovery.deliver(result(1000), Duration::ZERO, || false), Ok(()), "an empty buffer takes it");
        assert_eq!(lanes.dispatch(frame("A"), 1, || 0), Dispatch::Dropped);
        assert_eq!(recovery.deliver(result(1), Duration::from_millis(5), || false), Err(DeliveryError::Full));
        let mut handled = 0;
        handle(&rxs[0], &budget, &mut handled, 1);
        assert_eq!(budget.used(), 0);
        assert_eq!(recovery.deliver(result(1), Duration::ZERO, || false), Ok(()));
    }

    /// Proves a frame that will wait behind `COPY_WHEN_QUEUED` others no longer points into the
    /// socket's read buffer (which would keep the whole chunk alive), while one that is taken at
    /// once is not copied.
    #[test]
    fn frames_that_will_wait_are_copied_out_of_the_read_buffer() {
        let metrics = Metrics::new(1);
        let budget = Budget::new(1 << 30, 1);
        let (mut lanes, _recovery, rxs) = worker_queues(&budget, None, Duration::ZERO, &metrics);
        let one = frame("A");
        let chunk = tungstenite::Bytes::from(one.as_str().repeat(COPY_WHEN_QUEUED + 1));
        let range = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
        for i in 0..=COPY_WHEN_QUEUED {
            let part = chunk.slice(i * one.len()..(i + 1) * one.len());
            let text = Utf8Bytes::try_from(part).expect("utf8");
            assert_eq!(lanes.dispatch(text, 1, || 0), Dispatch::Delivered);
        }
        let inside: Vec<bool> = rxs[0]
            .try_iter()
            .map(|input| match input {
                WorkerInput::Frame(f) => range.contains(&(f.text.as_str().as_ptr() as usize)),
                _ => panic!("a frame"),
            })
            .collect();
        assert!(inside[..COPY_WHEN_QUEUED].iter().all(|x| *x), "the first frames are not copied");
        assert!(!inside[COPY_WHEN_QUEUED], "a frame queued behind {COPY_WHEN_QUEUED} is copied");
    }
}
