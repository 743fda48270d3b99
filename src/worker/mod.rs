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

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::config::limits::BATCH_BYTES;
use crate::config::BookConfig;
use crate::lanes::{Budget, Frame, RecoveryKey, RecoveryResult, Resyncs, TradeWindow, Unrecovered, WorkerInput};
use crate::metrics::Metrics;
use crate::output::ndjson::{Batch, ControlLine, GapCause, RecoveryFailure, RecoveryReport, TimestampFormatter};
use crate::recovery::handle::RecoveryHandle;
use crate::wire::{self, DataType, Reject};

pub mod book;
mod books;
pub mod dedup;
pub mod sequence;
pub mod symbols;
pub mod windows;

use dedup::TradeId;
use sequence::SeqOutcome;
pub use symbols::ResumePoint;
use symbols::{BookStep, SymbolTable, TableLimits, WindowAllowance};
use windows::{Closed, TooManyGaps, Window};

/// A symbol with no data for this long counts as silent in the health line. Quiet markets are
/// normal, so silence is only reported, never a reason to reconnect.
pub const SILENCE_NS: i128 = 60_000_000_000;
/// How often an idle worker re-counts its silent symbols.
const SILENCE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Malformed frames logged at `warn` per worker before the rest go to `debug` (all are counted).
const MALFORMED_WARNINGS_MAX: u64 = 5;

/// Stream trade ids all of a worker's trade windows may pin together (~40 bytes each).
const PINS_PER_WORKER_MAX: usize = 500_000;

/// The report of a gap that could not be recovered at all.
fn unrecovered(missing: Option<u64>, reason: Unrecovered) -> RecoveryReport<'static> {
    RecoveryReport {
        window: None,
        missing,
        requests: 0,
        records: 0,
        recovered: 0,
        duplicates: 0,
        failure: Some(RecoveryFailure { attempts: 0, error: "", reason }),
    }
}

#[derive(Debug)]
pub struct Worker<'a> {
    pub id: usize,
    /// `worker-<id>`: the thread's name, for logs and the test fault hook.
    name: String,
    metrics: &'a Metrics,
    recovery: Option<&'a RecoveryHandle>,
    resyncs: Option<&'a Resyncs>,
    /// Window ids and the pins left for this worker's trade windows.
    windows: WindowAllowance,
    timestamps: TimestampFormatter,
    batch: Batch,
    warnings: u64,
    symbols: SymbolTable,
    /// This worker's share of the `silent_symbols` gauge, last published.
    silent: u64,
    last_silence_check_ns: i128,
    /// Inputs handled, for the test fault hook.
    handled: u64,
    books: BookConfig,
    /// This worker's share of the `book_levels` gauge, last published.
    book_levels: u64,
    /// Kept books whose changed top waits for the end of its `--book-interval-ms`, soonest
    /// first; a book is in it at most once (`BookState::queued`), so it holds at most one entry
    /// per book.
    tops_due: BinaryHeap<Reverse<(i128, Box<str>)>>,
    /// A replay: the worker's clock is its inputs' (recorded) times, never the wall clock, so
    /// its idle ticks cannot mix today's time into a recording's.
    replay_clock: Option<i128>,
}

impl<'a> Worker<'a> {
    /// A worker with no recovery thread (gaps are reported, not recovered): benches and tests.
    pub fn new(id: usize, limits: TableLimits, metrics: &'a Metrics) -> Worker<'a> {
        Worker {
            id,
            name: format!("worker-{id}"),
            metrics,
            recovery: None,
            resyncs: None,
            windows: WindowAllowance { next_id: 1, pins_left: PINS_PER_WORKER_MAX },
            timestamps: TimestampFormatter::default(),
            batch: Batch::with_capacity(BATCH_BYTES * 2),
            warnings: 0,
            symbols: SymbolTable::new(limits),
            silent: 0,
            last_silence_check_ns: 0,
            handled: 0,
            books: BookConfig::default(),
            book_levels: 0,
            tops_due: BinaryHeap::new(),
            replay_clock: None,
        }
    }

    /// Keeps exact books of `book` streams as `books` says (the default, `raw`, keeps none).
    pub fn with_books(mut self, books: BookConfig) -> Worker<'a> {
        self.books = books;
        self
    }

    /// Runs on recorded time (a replay): idle ticks carry the last input's time.
    pub fn with_replay_clock(mut self, replay: bool) -> Worker<'a> {
        self.replay_clock = replay.then_some(0);
        self
    }

    /// Seeds the symbols a previous run wrote (`--resume`, the points `output::resume` finds),
    /// before the first connection, which then recovers each symbol's trades from its last one
    /// (`SymbolTable::resume`). A point the table refuses (full) is only counted, in one warning.
    pub fn with_resume(mut self, points: Vec<ResumePoint>, now_unix_ns: i128) -> Worker<'a> {
        let total = points.len();
        let refused =
            points.iter().filter(|p| !self.symbols.resume(&p.symbol_id, p.last_trade_ns, &p.ids, now_unix_ns)).count();
        if refused > 0 {
            log::warn!(
                "{}: {refused} of {total} resume points refused: its symbol table is full ({} symbols)",
                self.name,
                self.symbols.limits().symbols_max
            );
        }
        self
    }

    /// The time now: the wall clock, or in a replay the last input's recorded time.
    fn now_ns(&self) -> i128 {
        self.replay_clock.unwrap_or_else(crate::clock::unix_now_ns)
    }

    pub fn with_recovery(mut self, recovery: &'a RecoveryHandle, resyncs: &'a Resyncs) -> Worker<'a> {
        self.recovery = Some(recovery);
        self.resyncs = Some(resyncs);
        self
    }

    /// Runs until the reader is gone and the input is drained, then hands over the last batch.
    /// Returns early only if the writer has gone (stdout closed). Each input handled is released
    /// from `budget` once it has been dropped.
    pub fn run(mut self, rx: Receiver<WorkerInput>, out: Sender<Batch>, budget: &Budget) {
        let mut handled_bytes = 0u64;
        loop {
            let input = match rx.try_recv() {
                Ok(input) => input,
                Err(TryRecvError::Empty) => {
                    self.metrics.set_queue_depth(self.id, 0);
                    if !self.flush(&out) {
                        return;
                    }
                    // On recorded time nothing falls due while idle: due lines wait for the next
                    // input, which carries the time.
                    let due = self.next_top_due().filter(|_| self.replay_clock.is_none());
                    let wait = match due {
                        Some(at) => {
                            let left = at - crate::clock::unix_now_ns();
                            SILENCE_CHECK
                                .min(std::time::Duration::from_nanos(left.clamp(0, i128::from(u64::MAX)) as u64))
                        }
                        None => SILENCE_CHECK,
                    };
                    match rx.recv_timeout(wait) {
                        Ok(input) => input,
                        Err(RecvTimeoutError::Timeout) => WorkerInput::Tick { now_unix_ns: self.now_ns() },
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            let cost = input.cost();
            // A replay's clock is its recorded frames' and connections' times (a recovery
            // result's is the wall clock's: it was made now).
            if let (
                Some(clock),
                WorkerInput::Frame(Frame { recv_unix_ns: at, .. }) | WorkerInput::Connected { at_unix_ns: at, .. },
            ) = (self.replay_clock.as_mut(), &input)
            {
                *clock = (*clock).max(*at);
            }
            self.handle(input);
            handled_bytes += cost;
            budget.set_handled(self.id, handled_bytes);
            if self.batch.len() >= BATCH_BYTES {
                self.metrics.set_queue_depth(self.id, rx.len());
                if !self.flush(&out) {
                    return;
                }
            }
        }
        self.windows_left_at_exit(self.now_ns());
        self.flush(&out);
    }

    /// The trade windows no answer came for before the run ended (a reconnect window still
    /// waiting for its end, or one whose key the recovery thread no longer held): each gets its
    /// `recovery` line, so what was lost is said.
    pub fn windows_left_at_exit(&mut self, now_unix_ns: i128) {
        for (symbol, w) in self.symbols.drain_windows() {
            let failure = RecoveryFailure { attempts: 0, error: "", reason: Unrecovered::PendingAtExit };
            self.report_window(&symbol, w, Some(failure), now_unix_ns);
        }
    }

    pub fn handle(&mut self, input: WorkerInput) {
        self.handled += 1;
        crate::fault::maybe_panic(&self.name, self.handled);
        match input {
            WorkerInput::Frame(frame) => {
                // Due `book_top` lines are written whatever the traffic: a busy worker may not go
                // idle, and the book that waits may not send again.
                if self.next_top_due().is_some_and(|at| at <= frame.recv_unix_ns) {
                    self.write_due_tops(frame.recv_unix_ns);
                }
                self.handle_frame(&frame)
            }
            WorkerInput::Connected { generation, at_unix_ns } => self.start_generation(generation, at_unix_ns),
            WorkerInput::Recovery(result) => self.handle_recovery(result),
            WorkerInput::Tick { now_unix_ns } => {
                // Ticks come sooner while a `book_top` line waits for its interval; the scans of
                // every symbol stay once a second.
                if now_unix_ns - self.last_silence_check_ns >= SILENCE_CHECK.as_nanos() as i128 {
                    self.count_silent(now_unix_ns);
                }
                self.write_due_tops(now_unix_ns);
            }
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
        let Some(symbol) = decoded.symbol_id.as_deref() else {
            self.push_market(bytes, now);
            return;
        };
        let generation = frame.generation;
        let current = generation == self.symbols.generation();
        let capacity = self.symbols.limits().trade_ids_per_symbol;
        let (data_type, sequence, uuid) = (decoded.data_type, decoded.sequence, decoded.uuid.as_deref());
        let trade_time = match data_type {
            DataType::Trade => decoded.time_exchange.as_deref().and_then(wire::parse_timestamp_ns),
            _ => None,
        };
        let is_snapshot = decoded.is_snapshot == Some(true);
        let resync = self.resyncs.is_some();
        let allowance = &mut self.windows;
        // One lookup: sequence, trade id, windows and silence in one visit of the symbol's entry.
        let visit = self.symbols.with_symbol(symbol, now, |state| {
            state.last_data_unix_ns = now;
            let mut outcome = match sequence {
                Some(s) if current => state.observe(data_type, s),
                Some(_) => SeqOutcome::Stale,
                None => SeqOutcome::First,
            };
            let book = match data_type {
                DataType::Book | DataType::BookL3 if resync => {
                    if !is_snapshot && !state.is_resyncing(data_type) && matches!(outcome, SeqOutcome::Gap { .. }) {
                        // A delta after a gap applies to a book that lost changes: withheld, like
                        // every delta until the resubscription's snapshot. The gap is reported.
                        state.start_resync(data_type);
                        BookStep::Withhold
                    } else {
                        state.book_step(data_type, is_snapshot, &mut outcome)
                    }
                }
                _ => BookStep::Write,
            };
            let trade = match (data_type, uuid) {
                (DataType::Trade, Some(uuid)) => {
                    let missing = match outcome {
                        SeqOutcome::Gap { missing, .. } => Some(missing),
                        _ => None,
                    };
                    Some(state.stream_trade(uuid, trade_time, missing, generation, now, capacity, allowance))
                }
                _ => None,
            };
            (outcome, book, trade)
        });
        if now - self.last_silence_check_ns >= SILENCE_CHECK.as_nanos() as i128 {
            self.count_silent(now);
        }
        let Some((outcome, book, trade)) = visit else {
            self.metrics.symbols_untracked.add(1);
            self.push_market(bytes, now);
            return;
        };
        match outcome {
            SeqOutcome::Gap { expected, received, missing } => {
                self.metrics.gaps.add(1);
                let cause = GapCause::Sequence { expected, received, missing };
                self.gap_line(data_type, symbol, cause, generation, now);
                match trade.as_ref().and_then(|t| t.opened) {
                    // Requested once it has settled (see `windows.rs`).
                    Some(Ok(_)) => {}
                    Some(Err(TooManyGaps)) => {
                        self.unrecovered_line(symbol, Some(missing), Unrecovered::TooManyGaps, now);
                    }
                    // A trade without a readable time, or another type.
                    None => self.recover_stream(data_type, symbol, Some(missing), now),
                }
            }
            SeqOutcome::Duplicate { .. } => self.metrics.sequence_repeats.add(1),
            SeqOutcome::Regression { .. } => self.metrics.sequence_regressions.add(1),
            SeqOutcome::First | SeqOutcome::InOrder | SeqOutcome::Stale | SeqOutcome::Untracked => {}
        }
        if data_type == DataType::Book && self.books.kept() {
            self.keep_book(frame, symbol, sequence, is_snapshot, outcome, book);
            return;
        }
        if book != BookStep::Write {
            if book == BookStep::WithholdAndResync {
                log::info!(
                    "{}: {symbol} {} restarted without its snapshot: resubscribing again",
                    self.name,
                    data_type.as_str()
                );
                self.resync(data_type, symbol);
            }
            self.metrics.book_withheld.add(1);
            return;
        }
        if let Some(trade) = trade {
            self.metrics.pins_refused.add(trade.pins_refused);
            for window in trade.due {
                self.request_window(symbol, window, now);
            }
            if trade.id == TradeId::Seen {
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

    /// Re-counts the symbols silent for `SILENCE_NS` and publishes the change; requests the
    /// trade windows now due (of symbols that trade no more, or slowly).
    fn count_silent(&mut self, now_ns: i128) {
        self.last_silence_check_ns = now_ns;
        if self.books.kept() {
            self.retry_resyncs(now_ns);
            let levels: u64 = self.symbols.books_mut().map(|(_, b)| b.book.levels() as u64).sum();
            self.metrics.book_levels.add(levels.wrapping_sub(self.book_levels));
            self.book_levels = levels;
        }
        let silent = self.symbols.count_silent(now_ns, SILENCE_NS);
        if silent != self.silent {
            self.metrics.silent_symbols.add(silent.wrapping_sub(self.silent));
            self.silent = silent;
        }
        for (symbol, window) in self.symbols.due_windows(now_ns) {
            self.request_window(&symbol, window, now_ns);
        }
    }

    /// A new connection: every stream live on the previous one has a gap of unknown size. A
    /// trade stream's window opens at its last trade and closes at its first one on the new
    /// connection; the other streams are recovered (or resynced) as their type allows.
    fn start_generation(&mut self, generation: u64, at_unix_ns: i128) {
        if generation > self.symbols.generation() && self.books.kept() {
            self.books_reconnected(at_unix_ns);
        }
        for (data_type, symbol) in self.symbols.start_generation(generation) {
            self.metrics.reconnect_gaps.add(1);
            self.gap_line(data_type, &symbol, GapCause::Reconnect, generation, at_unix_ns);
            if data_type != DataType::Trade {
                // Book streams need no resync: the new connection's hello brings fresh snapshots.
                if !matches!(data_type, DataType::Book | DataType::BookL3) {
                    self.recover_stream(data_type, &symbol, None, at_unix_ns);
                }
                continue;
            }
            let (allowance, capacity) = (&mut self.windows, self.symbols.limits().trade_ids_per_symbol);
            let opened = self
                .symbols
                .with_symbol(&symbol, at_unix_ns, |s| {
                    s.open_reconnect_window(generation, at_unix_ns, capacity, allowance)
                })
                .flatten();
            match opened {
                Some(Ok(_)) => {}
                Some(Err(TooManyGaps)) => self.unrecovered_line(&symbol, None, Unrecovered::TooManyGaps, at_unix_ns),
                None => self.recover_stream(data_type, &symbol, None, at_unix_ns),
            }
        }
    }

    /// Writes a `gap` control line.
    fn gap_line(&mut self, data_type: DataType, symbol_id: &str, cause: GapCause, generation: u64, at_unix_ns: i128) {
        let line = ControlLine::Gap { data_type, symbol_id, cause, generation };
        self.batch.push_control(&line, self.timestamps.format(at_unix_ns));
    }

    /// Recovers a gap of a stream that has no trade window, as its type allows: state (quote,
    /// OHLCV; trades without a readable time) by its current value over REST; `book5/20/50`
    /// need nothing (every message is a whole snapshot); a `book` stream is resubscribed.
    fn recover_stream(&mut self, data_type: DataType, symbol_id: &str, missing: Option<u64>, at_unix_ns: i128) {
        match data_type {
            DataType::Book5 | DataType::Book20 | DataType::Book50 | DataType::Exrate => {}
            DataType::Book | DataType::BookL3 => self.resync(data_type, symbol_id),
            DataType::Trade | DataType::Quote | DataType::Ohlcv => {
                let Some(recovery) = self.recovery else {
                    return;
                };
                if !recovery.request(RecoveryKey::state(symbol_id, data_type), self.metrics) {
                    let line = ControlLine::Recovery {
                        symbol_id,
                        data_type,
                        report: unrecovered(missing, Unrecovered::QueueFull),
                    };
                    self.batch.push_control(&line, self.timestamps.format(at_unix_ns));
                }
            }
        }
    }

    /// Asks the reader to resubscribe a book stream whose deltas are now withheld until the new
    /// snapshot arrives (`SymbolState::start_resync`, set where the gap was seen).
    fn resync(&mut self, data_type: DataType, symbol_id: &str) {
        let Some(resyncs) = self.resyncs else {
            return;
        };
        if resyncs.request(data_type, symbol_id) {
            self.metrics.book_resyncs.add(1);
        } else {
            log::warn!("{}: resubscription set full: {symbol_id} {} stays unresynced", self.name, data_type.as_str());
            self.symbols.with_symbol(symbol_id, 0, |s| s.end_resync(data_type));
        }
    }

    /// Queues a closed trade window for its REST history pages.
    fn request_window(&mut self, symbol_id: &str, w: Closed, at_unix_ns: i128) {
        let Some(recovery) = self.recovery else {
            return;
        };
        let window = TradeWindow { id: w.id, start_ns: w.start_ns, end_ns: w.end_ns, page_from_ns: w.start_ns };
        let key = RecoveryKey { symbol_id: symbol_id.to_string(), data_type: DataType::Trade, window: Some(window) };
        if !recovery.request(key, self.metrics) {
            self.finish_window(
                symbol_id,
                w.id,
                Some(RecoveryFailure { attempts: 0, error: "", reason: Unrecovered::QueueFull }),
                at_unix_ns,
            );
        }
    }

    /// A `recovery` line for a gap that could not even be queued.
    fn unrecovered_line(&mut self, symbol_id: &str, missing: Option<u64>, reason: Unrecovered, at_unix_ns: i128) {
        self.metrics.unrecovered.add(missing.unwrap_or(0));
        self.metrics.recovery_failed.add(1);
        let line =
            ControlLine::Recovery { symbol_id, data_type: DataType::Trade, report: unrecovered(missing, reason) };
        self.batch.push_control(&line, self.timestamps.format(at_unix_ns));
    }

    /// Closes trade window `id` of `symbol_id` with its `recovery` line.
    fn finish_window(&mut self, symbol_id: &str, id: u64, failure: Option<RecoveryFailure<'_>>, at_unix_ns: i128) {
        let window = self.symbols.with_symbol(symbol_id, at_unix_ns, |s| s.trade_gaps.remove(id)).flatten();
        if let Some(w) = window {
            self.report_window(symbol_id, w, failure, at_unix_ns);
        }
    }

    /// The `recovery` line of a trade window that has left its symbol's state; its pins go back
    /// to the worker's allowance.
    fn report_window(&mut self, symbol_id: &str, w: Window, failure: Option<RecoveryFailure<'_>>, at_unix_ns: i128) {
        self.windows.pins_left += w.pins();
        let report = RecoveryReport {
            window: Some((w.start_ns, w.end_ns)),
            missing: w.missing,
            requests: w.pages,
            records: w.records,
            recovered: w.recovered,
            duplicates: w.duplicates,
            failure,
        };
        self.report(symbol_id, DataType::Trade, report, at_unix_ns);
    }

    /// Writes a `recovery` line and adds it to the totals.
    fn report(&mut self, symbol_id: &str, data_type: DataType, report: RecoveryReport<'_>, at_unix_ns: i128) {
        if report.failure.is_some() {
            self.metrics.recovery_failed.add(1);
        } else {
            self.metrics.recovery_ok.add(1);
        }
        if let Some((Some(n), _)) = report.unrecovered() {
            self.metrics.unrecovered.add(n);
        }
        self.metrics.recovery_duplicates.add(report.duplicates);
        let line = ControlLine::Recovery { symbol_id, data_type, report };
        self.batch.push_control(&line, self.timestamps.format(at_unix_ns));
    }

    /// Writes recovered records (skipping trades already written) and, when the recovery is
    /// complete, its `recovery` line.
    fn handle_recovery(&mut self, result: RecoveryResult) {
        match result {
            RecoveryResult::Recovered { key, records, recv_unix_ns, more } => {
                let capacity = self.symbols.limits().trade_ids_per_symbol;
                let window = key.window.map(|w| w.id);
                let (mut recovered, mut duplicates) = (0u64, 0u64);
                for record in &records {
                    let text = record.get().as_bytes();
                    if key.data_type == DataType::Trade {
                        let uuid = wire::scan_field(text, b"uuid").and_then(|u| std::str::from_utf8(u).ok());
                        if let Some(uuid) = uuid {
                            let time = wire::scan_field(text, b"time_exchange")
                                .and_then(|t| std::str::from_utf8(t).ok())
                                .and_then(wire::parse_timestamp_ns);
                            let pins = &mut self.windows.pins_left;
                            let seen = self.symbols.with_symbol(&key.symbol_id, recv_unix_ns, |s| {
                                s.recovered_trade(window, uuid, time, capacity, pins)
                            });
                            match seen {
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
                    recovered += 1;
                }
                let n = records.len() as u64;
                let Some(id) = window else {
                    let report = RecoveryReport {
                        window: None,
                        missing: None,
                        requests: 1,
                        records: n,
                        recovered,
                        duplicates,
                        failure: None,
                    };
                    self.report(&key.symbol_id, key.data_type, report, recv_unix_ns);
                    return;
                };
                self.symbols.with_symbol(&key.symbol_id, recv_unix_ns, |s| {
                    if let Some(w) = s.trade_gaps.get_mut(id) {
                        w.pages += 1;
                        w.records += n;
                        w.recovered += recovered;
                        w.duplicates += duplicates;
                    }
                });
                if !more {
                    self.finish_window(&key.symbol_id, id, None, recv_unix_ns);
                }
            }
            RecoveryResult::Failed { key, attempts, error, reason, at_unix_ns } => {
                let failure = RecoveryFailure { attempts, error: &error, reason };
                match key.window {
                    Some(w) => self.finish_window(&key.symbol_id, w.id, Some(failure), at_unix_ns),
                    None => {
                        let report = RecoveryReport { failure: Some(failure), ..unrecovered(None, reason) };
                        self.report(&key.symbol_id, key.data_type, report, at_unix_ns);
                    }
                }
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
                key: RecoveryKey::state("A", DataType::Trade),
                attempts: 5,
                error: "HTTP 503".into(),
                reason: Unrecovered::RestFailed,
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
                .contains(r#""status":"failed","requests":0,"records":0,"recovered":0,"duplicates":0,"reason":"rest_failed","attempts":5,"error":"HTTP 503","time":"2017-03-18T22:42:23.0000000Z""#),
            "{first}"
        );
        assert_eq!(run(), first);
    }

    fn trade(seq: u64, second: u32, uuid: &str) -> WorkerInput {
        frame(&format!(
            r#"{{"type":"trade","symbol_id":"A","sequence":{seq},"time_exchange":"2017-03-18T22:42:{second:02}.0000000Z","uuid":"{uuid}","price":1,"size":1}}"#
        ))
    }

    /// Proves a resumed worker reports each seeded symbol's trade stream as a reconnect gap of
    /// its first connection (a point the full table refuses gets none), and does not write again
    /// a trade the previous run wrote.
    #[test]
    fn a_resumed_worker_starts_with_a_reconnect_gap() {
        let metrics = Metrics::new(1);
        let limits = TableLimits { symbols_max: 1, trade_ids_per_symbol: 256 };
        let point = |symbol: &str| ResumePoint {
            symbol_id: symbol.to_string(),
            last_trade_ns: 1_489_876_930_000_000_000,
            ids: vec![("U1".to_string(), 1_489_876_930_000_000_000)],
        };
        let mut w = Worker::new(0, limits, &metrics).with_resume(vec![point("A"), point("B")], 0);
        w.handle(WorkerInput::Connected { generation: 1, at_unix_ns: 1_489_876_941_000_000_000 });
        w.handle(trade(1, 12, "u1"));
        w.handle(trade(2, 13, "u2"));
        let out = text(&w.take_batch());
        assert!(
            out.contains(r#""type":"gap","data_type":"trade","symbol_id":"A","reason":"reconnect","generation":1"#),
            "{out}"
        );
        assert!(!out.contains(r#""symbol_id":"B""#), "{out}");
        assert!(!out.contains(r#""uuid":"u1""#) && out.contains(r#""uuid":"u2""#), "{out}");
        let s = metrics.snapshot();
        assert_eq!((s.reconnect_gaps, s.duplicate_trades), (1, 1));
    }

    fn rest_trade(second: u32, uuid: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(format!(
            "{{\n  \"time_exchange\": \"2017-03-18T22:42:{second:02}.0000000Z\",\n  \"uuid\": \"{uuid}\",\n  \"price\": 1\n}}"
        ))
        .expect("json")
    }

    /// Proves a trade gap's recovery writes exactly the trades the stream lost: the ids the
    /// stream delivered inside the window (its margins) are duplicates, whatever came between,
    /// and the recovery line gives the window, the missing count and what came back.
    #[test]
    fn a_trade_window_writes_only_what_the_stream_lost() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics);
        w.handle(trade(1, 10, "u1"));
        w.handle(trade(2, 11, "u2"));
        w.handle(trade(5, 15, "u5"));
        w.handle(trade(6, 16, "u6"));
        // Ids the window must remember even after the recent-id memory moved on.
        for i in 0..(LIMITS.trade_ids_per_symbol as u64 + 10) {
            w.handle(trade(7 + i, 17, &format!("later-{i}")));
        }
        let gap = text(&w.take_batch());
        assert!(gap.contains(r#""expected":3,"received":5,"missing":2,"reason":"sequence""#), "{gap}");
        let window = TradeWindow { id: 1, start_ns: 0, end_ns: 0, page_from_ns: 0 };
        let key = RecoveryKey { symbol_id: "A".into(), data_type: DataType::Trade, window: Some(window) };
        let page = |records, more| {
            WorkerInput::Recovery(RecoveryResult::Recovered { key: key.clone(), records, recv_unix_ns: 0, more })
        };
        w.handle(page(vec![rest_trade(11, "u2"), rest_trade(12, "u3")], true));
        w.handle(page(vec![rest_trade(12, "u3"), rest_trade(13, "u4"), rest_trade(15, "u5")], false));
        let out = text(&w.take_batch());
        let rest: Vec<&str> = out.lines().filter(|l| l.contains(r#""source":"rest""#)).collect();
        assert_eq!(rest.len(), 2, "{out}");
        assert!(rest[0].contains(r#""uuid":"u3""#) && rest[1].contains(r#""uuid":"u4""#), "{out}");
        assert!(
            out.contains(r#""status":"ok","window_start":"2017-03-18T22:42:10.0000000Z","window_end":"2017-03-18T22:42:16.0000000Z","missing":2,"requests":2,"records":5,"recovered":2,"duplicates":3,"time""#),
            "{out}"
        );
        let s = metrics.snapshot();
        assert_eq!((s.recovery_ok, s.recovery_duplicates, s.unrecovered), (1, 3, 0));
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

    /// Proves a worker drains everything, then returns when the reader is gone, and releases
    /// exactly what was charged to the buffer: its own idle ticks cost nothing, so the budget
    /// cannot drift.
    #[test]
    fn run_drains_everything_and_releases_exactly_what_was_charged() {
        let metrics = Metrics::new(1);
        let budget = Budget::new(1 << 20, 1);
        let (mut lanes, recovery, mut rxs) =
            crate::lanes::worker_queues(&budget, None, std::time::Duration::ZERO, &metrics);
        lanes.connected(1, 0);
        for i in 1..=10 {
            let text = format!(r#"{{"type":"trade","symbol_id":"A","sequence":{i},"uuid":"U{i}"}}"#);
            assert_eq!(lanes.dispatch(Utf8Bytes::from(text), 1, || 0), crate::lanes::Dispatch::Delivered);
        }
        let (sent, _) = budget.totals();
        assert!(sent > 0);
        drop((lanes, recovery));
        let (out_tx, out_rx) = crossbeam_channel::bounded(16);
        // Idle ticks happen only on an empty queue, and this one drains at once; the ticks a quiet
        // worker makes are covered by `WorkerInput::cost` (0 for a tick).
        assert_eq!(WorkerInput::Tick { now_unix_ns: 0 }.cost(), 0);
        Worker::new(0, LIMITS, &metrics).run(rxs.remove(0), out_tx, &budget);
        let lines: u64 = out_rx.iter().map(|b| b.lines().market).sum();
        assert_eq!(lines, 10);
        assert_eq!(budget.totals(), (sent, sent), "released exactly what was charged");
        assert_eq!(budget.used(), 0);
    }
}
