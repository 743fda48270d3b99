//! A worker thread: decodes and validates the frames routed to it, and turns each valid
//! market-data message into one output line, in arrival order.
//!
//! The reader routes by `symbol_id`, so one symbol is always handled by one worker, and a
//! symbol's lines leave the worker in the order its frames arrived: per-symbol order survives
//! from socket to stdout. Per-symbol state (sequence tracking, books) belongs here for the same
//! reason. Lines are gathered into batches for the writer; a batch is sent when it is large or
//! when the input channel is momentarily empty, so latency stays low at low rates.
//!
//! Per symbol the worker tracks `sequence` per (connection generation, type) and writes a `gap`
//! control line for every jump (and for every stream that was live when a connection ended),
//! handing the key to the recovery thread; recovered REST records come back through the same
//! worker and are written in order with the stream. Trades are de-duplicated by uuid with a
//! bounded memory per symbol.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use rustc_hash::FxHashMap;
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use crate::gaps::{SeqOutcome, SequenceTracker, TradeDedup, DEFAULT_MAX_STREAMS};
use crate::protocol::{self, DataType, Reject, Source, TimestampFormatter};
use crate::recovery::RecoveryHandle;
use crate::recovery_core::RecoveryKey;
use crate::stats::Stats;
use crate::writer::{Batch, BATCH_BYTES};

/// Trade uuids remembered per symbol: more than one REST `latest` page (100) plus the stream's
/// recent duplicates. With `TRADE_SYMBOLS_MAX` this bounds the memory to ~25 MiB per worker.
const TRADE_UUIDS_PER_SYMBOL: usize = 256;
const TRADE_SYMBOLS_MAX: usize = 2_000;
/// A symbol with no data for this long counts as silent in the health line. Quiet markets are
/// normal, so silence is only reported, never a reason to reconnect.
pub const SILENCE_NS: i128 = 60_000_000_000;
/// How often an idle worker re-counts its silent symbols.
const SILENCE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// Symbols whose last data time a worker remembers (bounded like every per-symbol map).
const SILENCE_SYMBOLS_MAX: usize = 10_000;

/// Malformed frames logged at `warn` per worker before the rest go to `debug` (all are counted).
const MALFORMED_WARNINGS_MAX: u64 = 5;

/// One text frame as read from the socket, stamped by the reader.
#[derive(Debug, Clone)]
pub struct Frame {
    pub text: Utf8Bytes,
    /// Receive time, nanoseconds since the Unix epoch.
    pub recv_unix_ns: i128,
    /// Which connection it came on; sequences are only comparable within one.
    pub generation: u64,
}

/// Everything a worker can be asked to do, as one closed set.
#[derive(Debug)]
pub enum WorkerInput {
    Frame(Frame),
    /// The reader opened connection `generation`: sequences start over, and every stream that
    /// was live on the previous connection has a gap.
    Connected {
        generation: u64,
    },
    Recovery(RecoveryResult),
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
    },
}

impl RecoveryResult {
    pub fn key(&self) -> &RecoveryKey {
        match self {
            RecoveryResult::Recovered { key, .. } | RecoveryResult::Failed { key, .. } => key,
        }
    }
}

#[derive(Debug)]
pub struct Worker<'a> {
    pub id: usize,
    stats: &'a Stats,
    recovery: Option<&'a RecoveryHandle>,
    timestamps: TimestampFormatter,
    batch: Batch,
    warnings: u64,
    generation: u64,
    sequences: SequenceTracker,
    trades: TradeDedup,
    /// Receive time of each symbol's last data message, for the silence count.
    last_data_ns: FxHashMap<Box<str>, i128>,
    /// This worker's share of `Stats::silent_symbols`, last published.
    silent: u64,
    last_silence_check_ns: i128,
}

impl<'a> Worker<'a> {
    /// A worker with no recovery thread (gaps are reported, not recovered): benches and tests.
    pub fn new(id: usize, stats: &'a Stats) -> Worker<'a> {
        Worker {
            id,
            stats,
            recovery: None,
            timestamps: TimestampFormatter::default(),
            batch: Batch::with_capacity(BATCH_BYTES * 2),
            warnings: 0,
            generation: 0,
            sequences: SequenceTracker::new(DEFAULT_MAX_STREAMS),
            trades: TradeDedup::new(TRADE_UUIDS_PER_SYMBOL, TRADE_SYMBOLS_MAX),
            last_data_ns: FxHashMap::default(),
            silent: 0,
            last_silence_check_ns: 0,
        }
    }

    pub fn with_recovery(mut self, recovery: &'a RecoveryHandle) -> Worker<'a> {
        self.recovery = Some(recovery);
        self
    }

    /// Runs until the reader is gone and the input is drained, then hands over the last batch.
    /// Returns early only if the writer has gone (stdout closed).
    pub fn run(mut self, rx: Receiver<WorkerInput>, out: Sender<Batch>) {
        loop {
            let input = match rx.try_recv() {
                Ok(input) => input,
                Err(TryRecvError::Empty) => {
                    if !self.flush(&out) {
                        return;
                    }
                    match rx.recv_timeout(SILENCE_CHECK) {
                        Ok(input) => input,
                        Err(RecvTimeoutError::Timeout) => {
                            self.count_silent(unix_now_ns());
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            self.handle(input);
            if self.batch.bytes.len() >= BATCH_BYTES && !self.flush(&out) {
                return;
            }
        }
        self.flush(&out);
    }

    pub fn handle(&mut self, input: WorkerInput) {
        match input {
            WorkerInput::Frame(frame) => self.handle_frame(&frame),
            WorkerInput::Connected { generation } => self.start_generation(generation),
            WorkerInput::Recovery(result) => self.handle_recovery(result),
        }
    }

    fn handle_frame(&mut self, frame: &Frame) {
        let bytes = frame.text.as_bytes();
        let decoded = match protocol::decode(frame.text.as_str()) {
            Ok(d) => d,
            Err(Reject::Malformed(why)) => {
                Stats::add(&self.stats.malformed, 1);
                self.warn(format_args!("skipped malformed frame ({why}): {}", preview(bytes)));
                return;
            }
            Err(Reject::UnknownType(t)) => {
                Stats::add(&self.stats.unknown_type, 1);
                self.warn(format_args!("skipped message of unknown type {t:?}"));
                return;
            }
        };
        if frame.generation > self.generation {
            self.start_generation(frame.generation);
        }
        if let Some(symbol) = decoded.symbol_id.as_deref() {
            let room = self.last_data_ns.len() < SILENCE_SYMBOLS_MAX;
            match self.last_data_ns.get_mut(symbol) {
                Some(t) => *t = frame.recv_unix_ns,
                None if room => {
                    self.last_data_ns.insert(symbol.into(), frame.recv_unix_ns);
                }
                None => {}
            }
            if frame.recv_unix_ns - self.last_silence_check_ns >= SILENCE_CHECK.as_nanos() as i128 {
                self.count_silent(frame.recv_unix_ns);
            }
        }
        if let (Some(sequence), Some(symbol)) = (decoded.sequence, decoded.symbol_id.as_deref()) {
            match self.sequences.observe(frame.generation, decoded.data_type, symbol, sequence) {
                SeqOutcome::Gap { expected, received, missing } => {
                    Stats::add(&self.stats.gaps, 1);
                    self.gap(decoded.data_type, symbol, Some((expected, received, missing)), frame.generation);
                }
                SeqOutcome::Duplicate { .. } => Stats::add(&self.stats.sequence_repeats, 1),
                SeqOutcome::Regression { .. } => Stats::add(&self.stats.sequence_regressions, 1),
                SeqOutcome::First | SeqOutcome::InOrder | SeqOutcome::Stale | SeqOutcome::Untracked => {}
            }
        }
        if decoded.data_type == DataType::Trade {
            if let (Some(symbol), Some(uuid)) = (decoded.symbol_id.as_deref(), decoded.uuid.as_deref()) {
                if !self.trades.insert(symbol, uuid) {
                    Stats::add(&self.stats.duplicate_trades, 1);
                    return;
                }
            }
        }
        let recv_time = self.timestamps.format(frame.recv_unix_ns);
        protocol::append_line(&mut self.batch.bytes, bytes, recv_time, Source::Ws);
        self.batch.market_lines += 1;
    }

    /// Re-counts the symbols silent for `SILENCE_NS` and publishes the change.
    fn count_silent(&mut self, now_ns: i128) {
        self.last_silence_check_ns = now_ns;
        let silent = self.last_data_ns.values().filter(|t| now_ns - **t >= SILENCE_NS).count() as u64;
        if silent != self.silent {
            let counter = &self.stats.silent_symbols;
            counter.fetch_add(silent.wrapping_sub(self.silent), std::sync::atomic::Ordering::Relaxed);
            self.silent = silent;
        }
    }

    /// A new connection: every stream live on the previous one has a gap of unknown size.
    fn start_generation(&mut self, generation: u64) {
        if generation <= self.generation {
            return;
        }
        self.generation = generation;
        for (data_type, symbol) in self.sequences.start_generation(generation) {
            Stats::add(&self.stats.reconnect_gaps, 1);
            self.gap(data_type, &symbol, None, generation);
        }
    }

    /// Writes a `gap` control line and queues the stream for recovery. `jump` is
    /// (expected, received, missing) for a sequence gap, `None` for a reconnect.
    fn gap(&mut self, data_type: DataType, symbol: &str, jump: Option<(u64, u64, u64)>, generation: u64) {
        let now = self.timestamps.format(unix_now_ns()).to_string();
        let mut line = format!(
            "{{\"type\":\"gap\",\"data_type\":\"{}\",\"symbol_id\":{}",
            data_type.as_str(),
            protocol::json_string(symbol)
        );
        match jump {
            Some((expected, received, missing)) => line.push_str(&format!(
                ",\"expected\":{expected},\"received\":{received},\"missing\":{missing},\"reason\":\"sequence\""
            )),
            None => line.push_str(",\"reason\":\"reconnect\""),
        }
        line.push_str(&format!(",\"generation\":{generation},\"time\":\"{now}\"}}\n"));
        self.batch.bytes.extend_from_slice(line.as_bytes());
        self.batch.control_lines += 1;
        if let Some(recovery) = self.recovery {
            recovery.request(RecoveryKey { symbol_id: symbol.to_string(), data_type }, self.stats);
        }
    }

    /// Writes recovered records (skipping trades already written) and the `recovery` line.
    fn handle_recovery(&mut self, result: RecoveryResult) {
        let now_text;
        let mut line = match result {
            RecoveryResult::Recovered { key, records, recv_unix_ns } => {
                let (mut written, mut duplicates) = (0u64, 0u64);
                for record in &records {
                    let text = record.get().as_bytes();
                    if key.data_type == DataType::Trade {
                        let uuid = protocol::scan_field(text, b"uuid").and_then(|u| std::str::from_utf8(u).ok());
                        if let Some(uuid) = uuid {
                            if !self.trades.insert(&key.symbol_id, uuid) {
                                duplicates += 1;
                                continue;
                            }
                        }
                    }
                    let recv_time = self.timestamps.format(recv_unix_ns);
                    protocol::append_rest_line(&mut self.batch.bytes, text, key.data_type, &key.symbol_id, recv_time);
                    written += 1;
                }
                self.batch.rest_lines += written;
                Stats::add(&self.stats.recovery_ok, 1);
                now_text = self.timestamps.format(unix_now_ns()).to_string();
                format!(
                    "{{\"type\":\"recovery\",\"symbol_id\":{},\"data_type\":\"{}\",\"status\":\"ok\",\"records\":{},\"written\":{written},\"duplicates\":{duplicates}",
                    protocol::json_string(&key.symbol_id),
                    key.data_type.as_str(),
                    records.len()
                )
            }
            RecoveryResult::Failed { key, attempts, error } => {
                Stats::add(&self.stats.recovery_failed, 1);
                now_text = self.timestamps.format(unix_now_ns()).to_string();
                format!(
                    "{{\"type\":\"recovery\",\"symbol_id\":{},\"data_type\":\"{}\",\"status\":\"failed\",\"attempts\":{attempts},\"error\":{}",
                    protocol::json_string(&key.symbol_id),
                    key.data_type.as_str(),
                    protocol::json_string(&error)
                )
            }
        };
        line.push_str(&format!(",\"time\":\"{now_text}\"}}\n"));
        self.batch.bytes.extend_from_slice(line.as_bytes());
        self.batch.control_lines += 1;
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        self.warnings += 1;
        if self.warnings <= MALFORMED_WARNINGS_MAX {
            log::warn!("worker-{}: {msg}", self.id);
            if self.warnings == MALFORMED_WARNINGS_MAX {
                log::warn!("worker-{}: further skipped frames are logged at debug level (all are counted)", self.id);
            }
        } else {
            log::debug!("worker-{}: {msg}", self.id);
        }
    }

    /// Sends the pending batch, if any. False if the writer is gone.
    fn flush(&mut self, out: &Sender<Batch>) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.batch, Batch::with_capacity(BATCH_BYTES * 2));
        out.send(batch).is_ok()
    }

    /// Empties the pending output keeping its buffer, for benches that drive `handle` directly.
    pub fn clear_batch(&mut self) {
        self.batch.bytes.clear();
        self.batch.market_lines = 0;
        self.batch.rest_lines = 0;
        self.batch.control_lines = 0;
    }

    /// The pending output, for benches and tests that drive `handle` directly.
    pub fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }
}

/// Wall-clock now in nanoseconds since the Unix epoch: the unit of `Frame::recv_unix_ns` and of
/// every timestamp the pipeline writes.
pub fn unix_now_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

/// The first bytes of a frame for a log line, lossily decoded.
fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let cut = &bytes[..bytes.len().min(MAX)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > MAX {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> WorkerInput {
        WorkerInput::Frame(Frame {
            text: Utf8Bytes::from(text.to_string()),
            recv_unix_ns: 1_489_876_941_376_334_200,
            generation: 1,
        })
    }

    #[test]
    fn valid_messages_become_lines_and_bad_ones_are_counted() {
        let stats = Stats::default();
        let mut w = Worker::new(0, &stats);
        for f in [
            r#"{"type":"quote","symbol_id":"A","sequence":1,"ask_price":1.10}"#,
            "{oops",
            r#"{"type":"candles","symbol_id":"A"}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":2,"ask_price":1.20}"#,
        ] {
            w.handle(frame(f));
        }
        let batch = w.take_batch();
        assert_eq!(batch.market_lines, 2);
        let text = String::from_utf8(batch.bytes).expect("utf8");
        assert_eq!(
            text,
            "{\"type\":\"quote\",\"symbol_id\":\"A\",\"sequence\":1,\"ask_price\":1.10,\"recv_time\":\"2017-03-18T22:42:21.3763342Z\",\"source\":\"ws\"}\n\
             {\"type\":\"quote\",\"symbol_id\":\"A\",\"sequence\":2,\"ask_price\":1.20,\"recv_time\":\"2017-03-18T22:42:21.3763342Z\",\"source\":\"ws\"}\n"
        );
        let s = stats.snapshot();
        assert_eq!((s.malformed, s.unknown_type), (1, 1));
    }

    #[test]
    fn symbols_quiet_for_a_minute_are_counted_silent_and_recover() {
        let stats = Stats::default();
        let mut w = Worker::new(0, &stats);
        let at = |ns: i128, sym: &str, seq: u64| {
            WorkerInput::Frame(Frame {
                text: Utf8Bytes::from(format!(r#"{{"type":"quote","symbol_id":"{sym}","sequence":{seq}}}"#)),
                recv_unix_ns: ns,
                generation: 1,
            })
        };
        let s = 1_000_000_000i128;
        w.handle(at(0, "A", 1));
        w.handle(at(0, "B", 1));
        w.handle(at(61 * s, "B", 2));
        assert_eq!(stats.snapshot().silent_symbols, 1, "A has been quiet for 61 s");
        w.handle(at(62 * s, "A", 2));
        assert_eq!(stats.snapshot().silent_symbols, 0);
    }

    #[test]
    fn run_drains_everything_then_returns_when_the_reader_is_gone() {
        let stats = Stats::default();
        let (in_tx, in_rx) = crossbeam_channel::bounded(16);
        let (out_tx, out_rx) = crossbeam_channel::bounded(16);
        for i in 1..=10 {
            in_tx
                .send(frame(&format!(r#"{{"type":"trade","symbol_id":"A","sequence":{i},"uuid":"U{i}"}}"#)))
                .expect("send");
        }
        drop(in_tx);
        Worker::new(0, &stats).run(in_rx, out_tx);
        let lines: u64 = out_rx.iter().map(|b| b.market_lines).sum();
        assert_eq!(lines, 10);
    }
}
