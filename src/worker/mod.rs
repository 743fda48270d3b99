//! A worker thread: decodes and validates the frames routed to it, and turns each valid
//! market-data message into one output line, in arrival order.
//!
//! The reader routes by `symbol_id`, so one symbol is always handled by one worker, and a
//! symbol's lines leave the worker in the order its frames arrived: per-symbol order survives
//! from socket to stdout. Per-symbol state lives in one table (`symbols.rs`) for the same reason.
//! Lines are gathered into batches for the writer; a batch is sent when it is large or when the
//! input channel is momentarily empty, so latency stays low at low rates.
//!
//! Per symbol the worker tracks `sequence` per (connection generation, type) and writes a `gap`
//! control line for every jump (and for every stream that was live when a connection ended),
//! handing the key to the recovery thread; recovered REST records come back through the same
//! worker and are written in order with the stream. Trades are de-duplicated by uuid with a
//! bounded memory per symbol.
//!
//! `Worker::handle` never reads the clock: every input carries its time (frames their receive
//! time, a new connection its start, recovery results their answer time, idle ticks the time
//! the thread shell read), so a replay of recorded inputs gives the same lines.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::config::limits::BATCH_BYTES;
use crate::lanes::{Frame, RecoveryKey, RecoveryResult, WorkerInput};
use crate::metrics::Metrics;
use crate::output::ndjson::{Batch, ControlLine, GapCause, RecoveryStatus, TimestampFormatter};
use crate::recovery::handle::RecoveryHandle;
use crate::wire::{self, DataType, Reject};

pub mod dedup;
pub mod sequence;
pub mod symbols;

use dedup::TradeId;
use sequence::SeqOutcome;
use symbols::{SymbolTable, TableLimits};

/// A symbol with no data for this long counts as silent in the health line. Quiet markets are
/// normal, so silence is only reported, never a reason to reconnect.
pub const SILENCE_NS: i128 = 60_000_000_000;
/// How often an idle worker re-counts its silent symbols.
const SILENCE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Malformed frames logged at `warn` per worker before the rest go to `debug` (all are counted).
const MALFORMED_WARNINGS_MAX: u64 = 5;

#[derive(Debug)]
pub struct Worker<'a> {
    pub id: usize,
    /// `worker-<id>`: the thread's name, for logs and the test fault hook.
    name: String,
    metrics: &'a Metrics,
    recovery: Option<&'a RecoveryHandle>,
    timestamps: TimestampFormatter,
    batch: Batch,
    warnings: u64,
    symbols: SymbolTable,
    /// This worker's share of the `silent_symbols` gauge, last published.
    silent: u64,
    last_silence_check_ns: i128,
    /// Inputs handled, for the test fault hook.
    handled: u64,
}

impl<'a> Worker<'a> {
    /// A worker with no recovery thread (gaps are reported, not recovered): benches and tests.
    pub fn new(id: usize, limits: TableLimits, metrics: &'a Metrics) -> Worker<'a> {
        Worker {
            id,
            name: format!("worker-{id}"),
            metrics,
            recovery: None,
            timestamps: TimestampFormatter::default(),
            batch: Batch::with_capacity(BATCH_BYTES * 2),
            warnings: 0,
            symbols: SymbolTable::new(limits),
            silent: 0,
            last_silence_check_ns: 0,
            handled: 0,
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
                    self.metrics.set_queue_depth(self.id, 0);
                    if !self.flush(&out) {
                        return;
                    }
                    match rx.recv_timeout(SILENCE_CHECK) {
                        Ok(input) => input,
                        Err(RecvTimeoutError::Timeout) => {
                            WorkerInput::Tick { now_unix_ns: crate::clock::unix_now_ns() }
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            self.handle(input);
            if self.batch.len() >= BATCH_BYTES {
                self.metrics.set_queue_depth(self.id, rx.len());
                if !self.flush(&out) {
                    return;
                }
            }
        }
        self.flush(&out);
    }

    pub fn handle(&mut self, input: WorkerInput) {
        self.handled += 1;
        crate::fault::maybe_panic(&self.name, self.handled);
        match input {
            WorkerInput::Frame(frame) => self.handle_frame(&frame),
            WorkerInput::Connected { generation, at_unix_ns } => self.start_generation(generation, at_unix_ns),
            WorkerInput::Recovery(result) => self.handle_recovery(result),
            WorkerInput::Tick { now_unix_ns } => self.count_silent(now_unix_ns),
        }
    }

    fn handle_frame(&mut self, frame: &Frame) {
        let bytes = frame.text.as_bytes();
        let decoded = match wire::decode(frame.text.as_str()) {
            Ok(d) => d,
            Err(Reject::Malformed(why)) => {
                self.metrics.malformed.add(1);
                self.warn(format_args!("skipped malformed frame ({why}): {}", preview(bytes)));
                return;
            }
            Err(Reject::UnknownType(t)) => {
                self.metrics.unknown_type.add(1);
                self.warn(format_args!("skipped message of unknown type {t:?}"));
                return;
            }
        };
        let now = frame.recv_unix_ns;
        if frame.generation > self.symbols.generation() {
            self.start_generation(frame.generation, now);
        }
        if let Some(symbol) = decoded.symbol_id.as_deref() {
            let current = frame.generation == self.symbols.generation();
            let capacity = self.symbols.limits().trade_ids_per_symbol;
            let (data_type, sequence, uuid) = (decoded.data_type, decoded.sequence, decoded.uuid.as_deref());
            // One lookup: sequence, trade id and silence in one visit of the symbol's entry.
            let visit = self.symbols.with_symbol(symbol, now, |state| {
                state.last_data_unix_ns = now;
                let outcome = match sequence {
                    Some(s) if current => state.observe(data_type, s),
                    Some(_) => SeqOutcome::Stale,
                    None => SeqOutcome::First,
                };
                let id = match (data_type, uuid) {
                    (DataType::Trade, Some(uuid)) => state.trade(uuid, capacity),
                    _ => TradeId::New,
                };
                (outcome, id)
            });
            if now - self.last_silence_check_ns >= SILENCE_CHECK.as_nanos() as i128 {
                self.count_silent(now);
            }
            let Some((outcome, id)) = visit else {
                self.metrics.symbols_untracked.add(1);
                self.push_market(bytes, now);
                return;
            };
            match outcome {
                SeqOutcome::Gap { expected, received, missing } => {
                    self.metrics.gaps.add(1);
                    let cause = GapCause::Sequence { expected, received, missing };
                    self.gap(data_type, symbol, cause, frame.generation, now);
                }
                SeqOutcome::Duplicate { .. } => self.metrics.sequence_repeats.add(1),
                SeqOutcome::Regression { .. } => self.metrics.sequence_regressions.add(1),
                SeqOutcome::First | SeqOutcome::InOrder | SeqOutcome::Stale | SeqOutcome::Untracked => {}
            }
            if id == TradeId::Seen {
                self.metrics.duplicate_trades.add(1);
                return;
            }
        }
        self.push_market(bytes, now);
    }

    fn push_market(&mut self, bytes: &[u8], recv_unix_ns: i128) {
        let recv_time = self.timestamps.format(recv_unix_ns);
        self.batch.push_market(bytes, recv_time);
    }

    /// Re-counts the symbols silent for `SILENCE_NS` and publishes the change.
    fn count_silent(&mut self, now_ns: i128) {
        self.last_silence_check_ns = now_ns;
        let silent = self.symbols.count_silent(now_ns, SILENCE_NS);
        if silent != self.silent {
            self.metrics.silent_symbols.add(silent.wrapping_sub(self.silent));
            self.silent = silent;
        }
    }

    /// A new connection: every stream live on the previous one has a gap of unknown size.
    fn start_generation(&mut self, generation: u64, at_unix_ns: i128) {
        for (data_type, symbol) in self.symbols.start_generation(generation) {
            self.metrics.reconnect_gaps.add(1);
            self.gap(data_type, &symbol, GapCause::Reconnect, generation, at_unix_ns);
        }
    }

    /// Writes a `gap` control line and queues the stream for recovery.
    fn gap(&mut self, data_type: DataType, symbol_id: &str, cause: GapCause, generation: u64, at_unix_ns: i128) {
        let line = ControlLine::Gap { data_type, symbol_id, cause, generation };
        self.batch.push_control(&line, self.timestamps.format(at_unix_ns));
        if let Some(recovery) = self.recovery {
            recovery.request(RecoveryKey { symbol_id: symbol_id.to_string(), data_type }, self.metrics);
        }
    }

    /// Writes recovered records (skipping trades already written) and the `recovery` line.
    fn handle_recovery(&mut self, result: RecoveryResult) {
        match result {
            RecoveryResult::Recovered { key, records, recv_unix_ns } => {
                let (mut written, mut duplicates) = (0u64, 0u64);
                let capacity = self.symbols.limits().trade_ids_per_symbol;
                for record in &records {
                    let text = record.get().as_bytes();
                    if key.data_type == DataType::Trade {
                        let uuid = wire::scan_field(text, b"uuid").and_then(|u| std::str::from_utf8(u).ok());
                        if let Some(uuid) = uuid {
                            match self.symbols.with_symbol(&key.symbol_id, recv_unix_ns, |s| s.trade(uuid, capacity)) {
                                Some(TradeId::Seen) => {
                                    duplicates += 1;
                                    continue;
                                }
                                Some(TradeId::New | TradeId::Unremembered) => {}
                                None => self.metrics.symbols_untracked.add(1),
                            }
                        }
                    }
                    let recv_time = self.timestamps.format(recv_unix_ns);
                    self.batch.push_rest(text, key.data_type, &key.symbol_id, recv_time);
                    written += 1;
                }
                self.metrics.recovery_ok.add(1);
                let status = RecoveryStatus::Ok { records: records.len() as u64, written, duplicates };
                let line = ControlLine::Recovery { symbol_id: &key.symbol_id, data_type: key.data_type, status };
                self.batch.push_control(&line, self.timestamps.format(recv_unix_ns));
            }
            RecoveryResult::Failed { key, attempts, error, at_unix_ns } => {
                self.metrics.recovery_failed.add(1);
                let status = RecoveryStatus::Failed { attempts, error: &error };
                let line = ControlLine::Recovery { symbol_id: &key.symbol_id, data_type: key.data_type, status };
                self.batch.push_control(&line, self.timestamps.format(at_unix_ns));
            }
        }
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        self.warnings += 1;
        if self.warnings <= MALFORMED_WARNINGS_MAX {
            log::warn!("{}: {msg}", self.name);
            if self.warnings == MALFORMED_WARNINGS_MAX {
                log::warn!("{}: further skipped frames are logged at debug level (all are counted)", self.name);
            }
        } else {
            log::debug!("{}: {msg}", self.name);
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
        self.batch.clear();
    }

    /// The pending output, for benches and tests that drive `handle` directly.
    pub fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }
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
    use tungstenite::Utf8Bytes;

    const LIMITS: TableLimits = TableLimits { symbols_max: 100, trade_ids_per_symbol: 256 };

    fn frame(text: &str) -> WorkerInput {
        WorkerInput::Frame(Frame {
            text: Utf8Bytes::from(text.to_string()),
            recv_unix_ns: 1_489_876_941_376_334_200,
            generation: 1,
        })
    }

    fn text(batch: &Batch) -> String {
        String::from_utf8(batch.as_bytes().to_vec()).expect("utf8")
    }

    #[test]
    fn valid_messages_become_lines_and_bad_ones_are_counted() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics);
        for f in [
            r#"{"type":"quote","symbol_id":"A","sequence":1,"ask_price":1.10}"#,
            "{oops",
            r#"{"type":"candles","symbol_id":"A"}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":2,"ask_price":1.20}"#,
        ] {
            w.handle(frame(f));
        }
        let batch = w.take_batch();
        assert_eq!(batch.lines().market, 2);
        assert_eq!(
            text(&batch),
            "{\"type\":\"quote\",\"symbol_id\":\"A\",\"sequence\":1,\"ask_price\":1.10,\"recv_time\":\"2017-03-18T22:42:21.3763342Z\",\"source\":\"ws\"}\n\
             {\"type\":\"quote\",\"symbol_id\":\"A\",\"sequence\":2,\"ask_price\":1.20,\"recv_time\":\"2017-03-18T22:42:21.3763342Z\",\"source\":\"ws\"}\n"
        );
        let s = metrics.snapshot();
        assert_eq!((s.malformed, s.unknown_type), (1, 1));
    }

    /// Proves the worker takes every time from its inputs: the same inputs give byte-identical
    /// output, gap and recovery lines included, whenever they are handled.
    #[test]
    fn the_same_inputs_give_the_same_lines() {
        let run = || {
            let metrics = Metrics::new(1);
            let mut w = Worker::new(0, LIMITS, &metrics);
            w.handle(frame(r#"{"type":"trade","symbol_id":"A","sequence":1,"uuid":"u1"}"#));
            w.handle(frame(r#"{"type":"trade","symbol_id":"A","sequence":5,"uuid":"u5"}"#));
            w.handle(WorkerInput::Connected { generation: 2, at_unix_ns: 1_489_876_942_000_000_000 });
            w.handle(WorkerInput::Recovery(RecoveryResult::Failed {
                key: RecoveryKey { symbol_id: "A".into(), data_type: DataType::Trade },
                attempts: 5,
                error: "HTTP 503".into(),
                at_unix_ns: 1_489_876_943_000_000_000,
            }));
            text(&w.take_batch())
        };
        let first = run();
        assert!(first.contains(r#""type":"gap","data_type":"trade","symbol_id":"A","expected":2,"received":5,"missing":3,"reason":"sequence","generation":1,"time":"2017-03-18T22:42:21.3763342Z""#), "{first}");
        assert!(
            first.contains(r#""reason":"reconnect","generation":2,"time":"2017-03-18T22:42:22.0000000Z""#),
            "{first}"
        );
        assert!(
            first
                .contains(r#""status":"failed","attempts":5,"error":"HTTP 503","time":"2017-03-18T22:42:23.0000000Z""#),
            "{first}"
        );
        assert_eq!(run(), first);
    }

    #[test]
    fn symbols_quiet_for_a_minute_are_counted_silent_and_recover() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics);
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
        assert_eq!(metrics.snapshot().silent_symbols, 1, "A has been quiet for 61 s");
        w.handle(at(62 * s, "A", 2));
        assert_eq!(metrics.snapshot().silent_symbols, 0);
        w.handle(WorkerInput::Tick { now_unix_ns: 200 * s });
        assert_eq!(metrics.snapshot().silent_symbols, 2, "an idle tick re-counts");
    }

    #[test]
    fn run_drains_everything_then_returns_when_the_reader_is_gone() {
        let metrics = Metrics::new(1);
        let (in_tx, in_rx) = crossbeam_channel::bounded(16);
        let (out_tx, out_rx) = crossbeam_channel::bounded(16);
        for i in 1..=10 {
            in_tx
                .send(frame(&format!(r#"{{"type":"trade","symbol_id":"A","sequence":{i},"uuid":"U{i}"}}"#)))
                .expect("send");
        }
        drop(in_tx);
        Worker::new(0, LIMITS, &metrics).run(in_rx, out_tx);
        let lines: u64 = out_rx.iter().map(|b| b.lines().market).sum();
        assert_eq!(lines, 10);
    }
}
