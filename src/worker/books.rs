//! The worker's side of kept order books (`--book-output top|both`): applies each `book`
//! message of a symbol to its exact book (`book/`), writes `book_top` lines when the top levels
//! change (at most one per `--book-interval-ms`), and resyncs a book that is no longer whole — a
//! gap, a refused message, a cross that lasts, a trimmed book that shrank below its depth, a new
//! connection — with a `book_resync` line, by the reader's unsubscribe/subscribe, until a
//! `book_synced` line marks the fresh snapshot. A resubscription whose snapshot does not come is
//! asked again with a doubling wait, `RESYNC_ATTEMPTS_MAX` times.
//!
//! Like the rest of the worker, nothing here reads the clock: times come with the inputs.

use std::cmp::Reverse;

use crate::lanes::Frame;
use crate::output::ndjson::{Batch, BookTop, ControlLine, TimestampFormatter};
use crate::wire::{self, DataType};
use crate::worker::book::{self, Ask, BookState, ResyncReason, Step};
use crate::worker::sequence::SeqOutcome;
use crate::worker::symbols::BookStep;
use crate::worker::Worker;

/// What a kept book's message asks of the worker once the symbol's state is released.
#[derive(Debug, Default)]
struct After {
    /// Withhold the stream's deltas until a snapshot (the book is no longer whole).
    withhold: bool,
    /// Ask the reader to resubscribe now (otherwise `retry_resyncs` asks when the backoff ends).
    resubscribe: bool,
    /// A `book_top` line became due later (an interval is running).
    due_at: Option<i128>,
}

/// The parts of a worker a kept book writes to while its symbol's state is borrowed.
struct Out<'w, 'm> {
    batch: &'w mut Batch,
    timestamps: &'w mut TimestampFormatter,
    metrics: &'m crate::metrics::Metrics,
}

impl Out<'_, '_> {
    /// Starts a resync of `state` with its `book_resync` line: `None` if one was running
    /// already, else whether to resubscribe now (or after a backoff).
    fn resync(
        &mut self,
        state: &mut BookState,
        symbol: &str,
        reason: ResyncReason,
        detail: Option<&str>,
        now: i128,
        immediate: bool,
    ) -> Option<bool> {
        if !state.synced {
            // Already waiting for a snapshot (a refused one, say): its timer and attempts go on,
            // so a book that can never be whole still reaches `given_up`, and stays there until
            // a snapshot it can use arrives.
            return None;
        }
        let (ask, crossed) = state.begin_resync(reason, now, immediate);
        self.metrics.book_crossed_ms.add(crossed);
        let attempt = u32::from(ask == Ask::Now);
        let line = ControlLine::BookResync { symbol_id: symbol, reason, attempt, detail };
        self.batch.push_control(&line, self.timestamps.format(now));
        Some(ask == Ask::Now)
    }
}

impl After {
    /// A resync started (`Some(now)`): withhold the deltas, and resubscribe if `now`.
    fn started(&mut self, resync: Option<bool>) {
        if let Some(now) = resync {
            self.withhold = true;
            self.resubscribe = now;
        }
    }
}

impl Worker<'_> {
    /// A `book` message of a symbol whose book is kept. `step` and `outcome` are what the
    /// sequence and resync state made of it; the raw line is written if `--book-output both`.
    pub(super) fn keep_book(
        &mut self,
        frame: &Frame,
        symbol: &str,
        sequence: Option<u64>,
        is_snapshot: bool,
        outcome: SeqOutcome,
        step: BookStep,
    ) {
        let now = frame.recv_unix_ns;
        if matches!(outcome, SeqOutcome::Gap { .. }) && !is_snapshot {
            // Deltas were lost: the book is stale until a snapshot. The gap's own handling has
            // asked for the resubscription already.
            let Worker { symbols, batch, timestamps, metrics, .. } = self;
            let mut out = Out { batch, timestamps, metrics };
            symbols.with_symbol(symbol, now, |s| {
                if let Some(state) = s.book.as_deref_mut() {
                    let _ = out.resync(state, symbol, ResyncReason::Gap, None, now, true);
                }
            });
            if step == BookStep::Write {
                // No resubscription to wait for (no reader to ask): not applied, not withheld.
                self.write_raw_book(frame);
                return;
            }
        }
        if step != BookStep::Write {
            // Withheld while a resubscription's snapshot is awaited (counted as before).
            if step == BookStep::WithholdAndResync {
                self.resync(DataType::Book, symbol);
            }
            self.metrics.book_withheld.add(1);
            return;
        }
        // The raw line first (`both`), then what the book made of it.
        let raw = self.books.raw();
        if raw {
            self.push_market(frame.text.as_bytes(), now);
        }
        let cfg = self.books;
        let Worker { symbols, batch, timestamps, metrics, .. } = self;
        let mut out = Out { batch, timestamps, metrics };
        let mut after = After::default();
        let mut refused = false;
        let visited = symbols.with_symbol(symbol, now, |s| {
            if s.book.is_none() {
                if s.book_refused {
                    refused = true;
                    return;
                }
                if !out.metrics.books_live.take_one(cfg.max_books as u64) {
                    s.book_refused = true;
                    refused = true;
                    out.metrics.books_refused.add(1);
                    let line = ControlLine::BookRefused { symbol_id: symbol, limit: cfg.max_books };
                    out.batch.push_control(&line, out.timestamps.format(now));
                    return;
                }
                s.book = Some(Box::new(BookState::waiting_for_first_snapshot(now)));
            }
            let Some(state) = s.book.as_deref_mut() else { return };
            if !is_snapshot && !state.synced {
                // Waiting for a snapshot (its first, or after a give-up): nothing to apply to.
                out.metrics.book_before_snapshot.add(1);
                return;
            }
            if matches!(outcome, SeqOutcome::Regression { .. }) && !is_snapshot {
                // An older delta would put back sizes that were already replaced.
                let detail = Some("the sequence stepped back");
                after.started(out.resync(state, symbol, ResyncReason::Gap, detail, now, false));
                return;
            }
            let fields = match wire::book::parse(frame.text.as_str()) {
                Ok(f) => f,
                Err(why) => {
                    out.metrics.book_rejected.add(1);
                    after.started(out.resync(state, symbol, ResyncReason::Rejected, Some(&why), now, false));
                    return;
                }
            };
            let waited = state.resync.filter(|r| !r.first).map(|r| r.since_ns);
            let mut trimmed = 0;
            let step = state.apply(is_snapshot, &fields.bids, &fields.asks, cfg.depth, cfg.max_levels, &mut trimmed);
            out.metrics.book_levels_trimmed.add(trimmed);
            match step {
                Step::Rejected(r) => {
                    out.metrics.book_rejected.add(1);
                    after.started(out.resync(state, symbol, ResyncReason::Rejected, Some(r.as_str()), now, false));
                    return;
                }
                Step::BeforeSnapshot => {
                    out.metrics.book_before_snapshot.add(1);
                    return;
                }
                Step::Changed | Step::Unchanged => {}
            }
            if is_snapshot && state.synced_since_ns.is_none() {
                state.synced_since_ns = Some(now);
            }
            let p = &mut state.produced;
            p.sequence = sequence.unwrap_or(0);
            p.recv_unix_ns = now;
            for (dst, src) in [(&mut p.time_exchange, fields.time_exchange), (&mut p.time_coinapi, fields.time_coinapi)]
            {
                dst.clear();
                dst.push_str(src.unwrap_or(""));
            }
            if let (true, Some(since)) = (is_snapshot, waited) {
                let (bids, asks) = (state.book.bids.len(), state.book.asks.len());
                let waited_ms = ((now - since).max(0) / 1_000_000) as u64;
                let line = ControlLine::BookSynced { symbol_id: symbol, sequence: p.sequence, bids, asks, waited_ms };
                out.batch.push_control(&line, out.timestamps.format(now));
            }
            if state.book.is_crossed() {
                out.metrics.book_crossed.add(1);
                let since = *state.crossed_since.get_or_insert(now);
                if now - since > book::CROSS_RESYNC_NS {
                    if state.may_resync(now) {
                        after.started(out.resync(state, symbol, ResyncReason::Crossed, None, now, false));
                        return;
                    }
                    // Crossed again after a resync: flagged only, and not counted as healthy
                    // time, so a venue whose book stays crossed is not resynced again.
                    state.synced_since_ns = Some(now);
                }
            } else {
                out.metrics.book_crossed_ms.add(state.end_cross(now));
            }
            if state.trimmed_below(cfg.depth) {
                if state.may_resync(now) {
                    after.started(out.resync(state, symbol, ResyncReason::Trimmed, None, now, false));
                    return;
                }
                // Trimmed below the depth again soon after a resync: written as it is.
                state.synced_since_ns = Some(now);
            }
            if step == Step::Unchanged {
                return;
            }
            match state.last_line_ns {
                Some(last) if cfg.interval_ns > 0 && now - last < cfg.interval_ns => {
                    state.pending = true;
                    if !state.queued {
                        state.queued = true;
                        after.due_at = Some(last + cfg.interval_ns);
                    }
                }
                _ => write_top(state, symbol, cfg.depth, out.batch, out.timestamps, now),
            }
        });
        if visited.is_none() || refused {
            // No room for the symbol's state, or no room for its book: the raw message only.
            if visited.is_none() {
                self.metrics.symbols_untracked.add(1);
            }
            if !raw {
                self.push_market(frame.text.as_bytes(), now);
            }
            return;
        }
        if after.resubscribe {
            self.resubscribe(symbol, now);
        } else if after.withhold {
            // The resubscription waits for its backoff; the deltas meanwhile are stale.
            self.symbols.with_symbol(symbol, now, |s| s.start_resync(DataType::Book));
        }
        if let Some(at) = after.due_at {
            self.tops_due.push(Reverse((at, Box::from(symbol))));
        }
        if !raw {
            self.metrics.book_folded.add(1);
        }
    }

    /// Withholds the symbol's deltas until a snapshot and asks the reader to resubscribe.
    fn resubscribe(&mut self, symbol: &str, now: i128) {
        self.symbols.with_symbol(symbol, now, |s| s.start_resync(DataType::Book));
        self.resync(DataType::Book, symbol);
    }

    /// The raw `book` line with `--book-output both`; with `top` the message is folded (counted).
    fn write_raw_book(&mut self, frame: &Frame) {
        if self.books.raw() {
            self.push_market(frame.text.as_bytes(), frame.recv_unix_ns);
        } else {
            self.metrics.book_folded.add(1);
        }
    }

    /// Writes the `book_top` lines whose interval has ended by `now`: the newest state, if it
    /// still differs from the last line. Each book has at most one entry (`BookState::queued`).
    pub(super) fn write_due_tops(&mut self, now: i128) {
        while let Some(Reverse((at, _))) = self.tops_due.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, symbol))) = self.tops_due.pop() else { break };
            let (depth, interval) = (self.books.depth, self.books.interval_ns);
            let Worker { symbols, batch, timestamps, .. } = self;
            let again = symbols
                .with_symbol(&symbol, now, |s| {
                    let state = s.book.as_deref_mut()?;
                    state.queued = false;
                    if !(state.pending && state.synced) {
                        return None;
                    }
                    // A line written since (after a resync's snapshot) moved the interval.
                    if let Some(next) = state.last_line_ns.map(|t| t + interval).filter(|next| *next > now) {
                        state.queued = true;
                        return Some(next);
                    }
                    state.render(depth);
                    if state.view_changed() {
                        write_top(state, &symbol, depth, batch, timestamps, now);
                    } else {
                        state.pending = false;
                    }
                    None
                })
                .flatten();
            if let Some(next) = again {
                self.tops_due.push(Reverse((next, symbol)));
            }
        }
    }

    /// When the next interval ends, if a line waits for it.
    pub(super) fn next_top_due(&self) -> Option<i128> {
        self.tops_due.peek().map(|Reverse((at, _))| *at)
    }

    /// A new connection: every kept book waits for the snapshot its new subscription brings
    /// (asked for again if it does not come).
    pub(super) fn books_reconnected(&mut self, at_unix_ns: i128) {
        let Worker { symbols, batch, timestamps, metrics, .. } = self;
        for (symbol, state) in symbols.books_mut() {
            let was_synced = state.synced;
            let crossed = state.reconnected(at_unix_ns);
            metrics.book_crossed_ms.add(crossed);
            if was_synced {
                let reason = ResyncReason::Reconnect;
                let line = ControlLine::BookResync { symbol_id: symbol, reason, attempt: 0, detail: None };
                batch.push_control(&line, timestamps.format(at_unix_ns));
            }
        }
    }

    /// Asks for the resubscriptions that are due: one whose backoff ended, or whose snapshot
    /// did not come in time (after 10, then 20, 40 s more); gives up after
    /// `RESYNC_ATTEMPTS_MAX` (deltas then flow again, discarded until a snapshot heals the book).
    pub(super) fn retry_resyncs(&mut self, now: i128) {
        let mut again: Vec<(String, bool)> = Vec::new();
        {
            let Worker { symbols, batch, timestamps, .. } = self;
            for (symbol, state) in symbols.books_mut() {
                let Some(r) = state.resync.as_mut() else { continue };
                if r.retry_at_ns.is_none_or(|at| at > now) {
                    continue;
                }
                if r.attempts >= book::RESYNC_ATTEMPTS_MAX {
                    r.retry_at_ns = None;
                    let line = ControlLine::BookResyncGivenUp { symbol_id: symbol, attempts: r.attempts };
                    batch.push_control(&line, timestamps.format(now));
                    again.push((symbol.to_string(), false));
                    continue;
                }
                // The first resubscription of a deferred resync says why; later ones, that the
                // snapshot did not come.
                let deferred = r.attempts == 0 && r.reason != ResyncReason::Reconnect;
                let reason = if deferred { r.reason } else { ResyncReason::NoSnapshot };
                r.attempts += 1;
                // Its snapshot will end a resync that has a line: it gets its `book_synced`.
                r.first = false;
                r.retry_at_ns = Some(now + book::resync_wait_ns(r.attempts));
                let line = ControlLine::BookResync { symbol_id: symbol, reason, attempt: r.attempts, detail: None };
                batch.push_control(&line, timestamps.format(now));
                again.push((symbol.to_string(), true));
            }
        }
        for (symbol, resubscribe) in again {
            if resubscribe {
                self.resubscribe(&symbol, now);
            } else {
                self.symbols.with_symbol(&symbol, now, |s| s.end_resync(DataType::Book));
            }
        }
    }
}

/// Writes the state's rendered view as a `book_top` line.
fn write_top(
    state: &mut BookState,
    symbol: &str,
    depth: usize,
    batch: &mut Batch,
    timestamps: &mut TimestampFormatter,
    now: i128,
) {
    let p = &state.produced;
    let top = BookTop {
        symbol_id: symbol,
        depth,
        levels: state.view(),
        sequence: p.sequence,
        time_exchange: &p.time_exchange,
        time_coinapi: &p.time_coinapi,
        crossed: state.crossed_since.is_some(),
    };
    batch.push_book_top(&top, timestamps.format(p.recv_unix_ns));
    state.written(now);
}

#[cfg(test)]
mod tests {
    use tungstenite::Utf8Bytes;

    use crate::config::{BookConfig, BookOutput};
    use crate::lanes::{Frame, WorkerInput};
    use crate::metrics::Metrics;
    use crate::worker::symbols::TableLimits;
    use crate::worker::Worker;

    const LIMITS: TableLimits = TableLimits { symbols_max: 100, trade_ids_per_symbol: 256 };
    const S: i128 = 1_000_000_000;
    const T0: i128 = 1_795_851_087_000_000_000;

    fn cfg(output: BookOutput, depth: usize) -> BookConfig {
        BookConfig { output, depth, ..BookConfig::default() }
    }

    /// A `book` frame of symbol `sym` received at `T0 + at_ms`.
    fn book(sym: &str, seq: u64, snapshot: bool, bids: &str, asks: &str, at_ms: i128) -> WorkerInput {
        let text = format!(
            r#"{{"type":"book","symbol_id":"{sym}","sequence":{seq},"time_exchange":"2026-11-28T07:31:27.1021733Z","time_coinapi":"2026-11-28T07:31:27.1031733Z","is_snapshot":{snapshot},"asks":[{asks}],"bids":[{bids}]}}"#
        );
        WorkerInput::Frame(Frame { text: Utf8Bytes::from(text), recv_unix_ns: T0 + at_ms * 1_000_000, generation: 1 })
    }

    fn lvl(levels: &[(&str, &str)]) -> String {
        levels.iter().map(|(p, s)| format!(r#"{{"price":{p},"size":{s}}}"#)).collect::<Vec<_>>().join(",")
    }

    fn lines(w: &mut Worker<'_>) -> Vec<String> {
        let b = w.take_batch();
        String::from_utf8(b.as_bytes().to_vec()).expect("utf8").lines().map(str::to_string).collect()
    }

    fn of_type<'a>(lines: &'a [String], t: &str) -> Vec<&'a String> {
        let tag = format!(r#"{{"type":"{t}""#);
        lines.iter().filter(|l| l.starts_with(&tag)).collect()
    }

    fn snapshot(w: &mut Worker<'_>, sym: &str, at_ms: i128) {
        w.handle(book(
            sym,
            1,
            true,
            &lvl(&[("100.0", "1"), ("99", "2"), ("98", "3")]),
            &lvl(&[("101", "1"), ("102", "2"), ("103", "3")]),
            at_ms,
        ));
    }

    /// Proves a kept book writes its exact top N after the snapshot and after each message that
    /// changed it, numbers as CoinAPI spelled them, and nothing for a change below the top N;
    /// `both` writes each raw line first, `top` folds them (counted).
    #[test]
    fn top_lines_follow_the_top_levels_exactly() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Both, 2));
        snapshot(&mut w, "A", 0);
        w.handle(book("A", 2, false, &lvl(&[("98", "9")]), "", 1)); // third level: outside the top 2
        w.handle(book("A", 3, false, &lvl(&[("99.00", "5")]), &lvl(&[("101", "0")]), 2));
        let out = lines(&mut w);
        let tops = of_type(&out, "book_top");
        assert_eq!(tops.len(), 2, "{out:#?}");
        assert!(
            out[0].starts_with(r#"{"type":"book","#) && out[1].starts_with(r#"{"type":"book_top""#),
            "raw first: {out:#?}"
        );
        assert_eq!(
            tops[1].as_str(),
            r#"{"type":"book_top","symbol_id":"A","depth":2,"bids":[{"price":100.0,"size":1},{"price":99.00,"size":5}],"asks":[{"price":102,"size":2},{"price":103,"size":3}],"sequence":3,"time_exchange":"2026-11-28T07:31:27.1021733Z","time_coinapi":"2026-11-28T07:31:27.1031733Z","recv_time":"2026-11-28T07:31:27.0020000Z","crossed":false,"source":"book"}"#
        );
        assert_eq!(of_type(&out, "book").len(), 3);

        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Top, 2));
        snapshot(&mut w, "A", 0);
        w.handle(book("A", 2, false, &lvl(&[("98", "9")]), "", 1));
        let out = lines(&mut w);
        assert_eq!((of_type(&out, "book").len(), of_type(&out, "book_top").len()), (0, 1), "{out:#?}");
        let s = metrics.snapshot();
        assert_eq!((s.book_folded, s.books_live), (2, 1));
    }

    /// Proves `raw` (the default) writes exactly what it wrote before books existed.
    #[test]
    fn raw_output_is_untouched() {
        let run = |books: Option<BookConfig>| {
            let metrics = Metrics::new(1);
            let mut w = Worker::new(0, LIMITS, &metrics);
            if let Some(b) = books {
                w = w.with_books(b);
            }
            snapshot(&mut w, "A", 0);
            w.handle(book("A", 2, false, &lvl(&[("99", "-1")]), "", 1));
            w.handle(book("A", 5, false, &lvl(&[("99", "1")]), "", 2));
            lines(&mut w)
        };
        let before = run(None);
        assert_eq!(run(Some(BookConfig::default())), before);
        assert_eq!(of_type(&before, "book").len(), 3);
        assert!(of_type(&before, "book_top").is_empty() && of_type(&before, "book_resync").is_empty());
    }

    /// Proves a gap makes the book stale: a `book_resync` line, no top line and no delta applied
    /// until the next snapshot, which a `book_synced` line and a top line mark.
    #[test]
    fn a_gap_resyncs_and_the_next_snapshot_makes_the_book_whole() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Top, 3));
        snapshot(&mut w, "A", 0);
        w.handle(book("A", 5, false, &lvl(&[("99", "7")]), "", 10));
        w.handle(book("A", 6, false, &lvl(&[("100.0", "0")]), "", 20));
        let out = lines(&mut w);
        assert_eq!(of_type(&out, "book_top").len(), 1, "only the first snapshot's: {out:#?}");
        let resync = of_type(&out, "book_resync");
        assert_eq!(resync.len(), 1, "{out:#?}");
        assert!(resync[0].contains(r#""reason":"gap","attempt":1"#), "{}", resync[0]);
        w.handle(book("A", 1, true, &lvl(&[("97", "1")]), &lvl(&[("104", "1")]), 2_500));
        let out = lines(&mut w);
        let synced = of_type(&out, "book_synced");
        assert_eq!(synced.len(), 1, "{out:#?}");
        assert!(synced[0].contains(r#""sequence":1,"bids":1,"asks":1,"waited_ms":2490"#), "{}", synced[0]);
        let tops = of_type(&out, "book_top");
        assert_eq!(tops.len(), 1);
        assert!(tops[0].contains(r#""bids":[{"price":97,"size":1}],"asks":[{"price":104,"size":1}]"#), "{}", tops[0]);
    }

    /// Proves a refused message changes nothing, is counted and resyncs the book.
    #[test]
    fn a_negative_size_rejects_the_message_and_resyncs() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Top, 3));
        snapshot(&mut w, "A", 0);
        w.handle(book("A", 2, false, &lvl(&[("99", "4"), ("98", "-0.5")]), "", 1));
        w.handle(book("A", 3, false, &lvl(&[("99", "6")]), "", 2));
        let out = lines(&mut w);
        let resync = of_type(&out, "book_resync");
        assert_eq!(resync.len(), 1, "{out:#?}");
        assert!(resync[0].contains(r#""reason":"rejected","detail":"a negative size","attempt":1"#), "{}", resync[0]);
        assert_eq!(of_type(&out, "book_top").len(), 1);
        let s = metrics.snapshot();
        assert_eq!((s.book_rejected, s.book_before_snapshot), (1, 1));
    }

    /// Proves a cross is flagged on the top line and resynced once it lasts beyond 3 s, while a
    /// cross that exists only between one message's levels is never flagged.
    #[test]
    fn a_lasting_cross_is_flagged_then_resynced_and_a_transient_one_is_not() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Top, 1));
        snapshot(&mut w, "A", 0);
        // A sweep: the best ask goes and a bid takes its price, in one message.
        w.handle(book("A", 2, false, &lvl(&[("101", "1")]), &lvl(&[("101", "0")]), 10));
        let out = lines(&mut w);
        assert!(out.iter().all(|l| !l.contains(r#""crossed":true"#)), "{out:#?}");
        w.handle(book("A", 3, false, &lvl(&[("102.5", "1")]), "", 1_000));
        w.handle(book("A", 4, false, &lvl(&[("102.5", "2")]), "", 2_000));
        let out = lines(&mut w);
        assert_eq!(of_type(&out, "book_top").len(), 2);
        assert!(out.iter().all(|l| l.contains(r#""crossed":true"#)), "{out:#?}");
        w.handle(book("A", 5, false, &lvl(&[("102.5", "3")]), "", 4_100));
        let out = lines(&mut w);
        assert!(of_type(&out, "book_top").is_empty(), "{out:#?}");
        assert!(of_type(&out, "book_resync")[0].contains(r#""reason":"crossed""#), "{out:#?}");
        let s = metrics.snapshot();
        assert_eq!(s.book_crossed, 3);
        assert_eq!(s.book_crossed_ms, 3_100);
    }

    /// Proves an interval writes at most one line per symbol per interval, and the newest state
    /// when the interval ends.
    #[test]
    fn an_interval_writes_the_newest_state_when_it_ends() {
        let metrics = Metrics::new(1);
        let books = BookConfig { interval_ns: 100_000_000, ..cfg(BookOutput::Top, 1) };
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(books);
        snapshot(&mut w, "A", 0);
        for (i, size) in ["2", "3", "4"].iter().enumerate() {
            w.handle(book("A", 2 + i as u64, false, &lvl(&[("100.0", size)]), "", 10 + i as i128));
        }
        assert_eq!(of_type(&lines(&mut w), "book_top").len(), 1, "the snapshot's, at once");
        assert_eq!(w.next_top_due(), Some(T0 + 100_000_000));
        w.handle(WorkerInput::Tick { now_unix_ns: T0 + 100_000_000 });
        let out = lines(&mut w);
        let tops = of_type(&out, "book_top");
        assert_eq!(tops.len(), 1, "{out:#?}");
        assert!(
            tops[0].contains(r#""bids":[{"price":100.0,"size":4}]"#) && tops[0].contains(r#""sequence":4"#),
            "{}",
            tops[0]
        );
        assert_eq!(w.next_top_due(), None);
    }

    /// Proves the books bound: a symbol past `--book-max-books` gets one `book_refused` line and
    /// its raw messages, even with `top`.
    #[test]
    fn books_past_the_bound_are_refused_and_written_raw() {
        let metrics = Metrics::new(1);
        let books = BookConfig { max_books: 1, ..cfg(BookOutput::Top, 1) };
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(books);
        snapshot(&mut w, "A", 0);
        snapshot(&mut w, "B", 1);
        w.handle(book("B", 2, false, &lvl(&[("99", "1")]), "", 2));
        let out = lines(&mut w);
        let refused = of_type(&out, "book_refused");
        assert_eq!(refused.len(), 1, "{out:#?}");
        assert!(refused[0].contains(r#""symbol_id":"B","data_type":"book","reason":"books_max","limit":1"#));
        assert_eq!(of_type(&out, "book").len(), 2, "B's raw messages: {out:#?}");
        let s = metrics.snapshot();
        assert_eq!((s.books_live, s.books_refused), (1, 1));
    }

    /// Proves the level bound: the worst levels are trimmed and counted, and a trimmed book that
    /// shrinks below its output depth is resynced (levels beyond the bound may be missing).
    #[test]
    fn a_trimmed_book_below_its_depth_is_resynced() {
        let metrics = Metrics::new(1);
        let books = BookConfig { max_levels: 3, ..cfg(BookOutput::Top, 3) };
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(books);
        w.handle(book(
            "A",
            1,
            true,
            &lvl(&[("100", "1"), ("99", "1"), ("98", "1"), ("97", "1")]),
            &lvl(&[("101", "1"), ("102", "1"), ("103", "1")]),
            0,
        ));
        assert_eq!(metrics.snapshot().book_levels_trimmed, 1);
        w.handle(book("A", 2, false, &lvl(&[("100", "0")]), "", 1));
        let out = lines(&mut w);
        assert!(of_type(&out, "book_resync")[0].contains(r#""reason":"trimmed""#), "{out:#?}");
    }

    /// Proves a resubscription whose snapshot never comes is asked again with a doubling wait,
    /// then given up, and a snapshot CoinAPI sends later still heals the book.
    #[test]
    fn a_snapshot_that_never_comes_is_asked_again_then_given_up() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Top, 1));
        snapshot(&mut w, "A", 0);
        w.handle(book("A", 5, false, &lvl(&[("99", "7")]), "", 0));
        assert!(of_type(&lines(&mut w), "book_resync")[0].contains(r#""reason":"gap","attempt":1"#));
        let mut attempts = Vec::new();
        for second in 1..=200 {
            w.handle(WorkerInput::Tick { now_unix_ns: T0 + second * S });
            for l in lines(&mut w) {
                if l.contains("book_resync") {
                    attempts.push((second, l));
                }
            }
        }
        let at: Vec<i128> = attempts.iter().map(|(s, _)| *s).collect();
        assert_eq!(at, vec![10, 30, 70, 150], "{attempts:#?}");
        assert!(attempts[0].1.contains(r#""reason":"no_snapshot","attempt":2"#), "{}", attempts[0].1);
        assert!(attempts[3].1.contains(r#""reason":"given_up","attempt":4"#), "{}", attempts[3].1);
        w.handle(book("A", 9, true, &lvl(&[("95", "1")]), &lvl(&[("96", "1")]), 201_000));
        let out = lines(&mut w);
        assert_eq!(of_type(&out, "book_synced").len(), 1, "{out:#?}");
        assert_eq!(of_type(&out, "book_top").len(), 1);
    }

    /// Proves a trimmed side is judged alone: a short side that was never trimmed is whole,
    /// so it resyncs nothing (one flag for both sides resynced such a book forever).
    #[test]
    fn a_short_side_that_was_never_trimmed_is_whole() {
        let metrics = Metrics::new(1);
        let books = BookConfig { max_levels: 3, ..cfg(BookOutput::Top, 3) };
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(books);
        let bids = lvl(&[("100", "1"), ("99", "1"), ("98", "1"), ("97", "1"), ("96", "1")]);
        w.handle(book("A", 1, true, &bids, &lvl(&[("101", "1"), ("102", "1")]), 0));
        w.handle(book("A", 2, false, &lvl(&[("100", "2")]), "", 1));
        let out = lines(&mut w);
        assert!(of_type(&out, "book_resync").is_empty(), "{out:#?}");
        assert_eq!(of_type(&out, "book_top").len(), 2);
    }

    /// Proves a venue whose book stays crossed cannot cause a resync storm: the first lasting
    /// cross resyncs, a fresh snapshot that is crossed again is only flagged.
    #[test]
    fn a_cross_that_survives_a_resync_is_flagged_not_resynced_again() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Top, 1));
        let crossed = || (lvl(&[("102", "1")]), lvl(&[("101", "1")]));
        let (bids, asks) = crossed();
        w.handle(book("A", 1, true, &bids, &asks, 0));
        w.handle(book("A", 2, false, &lvl(&[("102", "2")]), "", 3_500));
        assert_eq!(of_type(&lines(&mut w), "book_resync").len(), 1, "the first lasting cross resyncs");
        // 90 s of a crossed book: past the 60 s after which a whole book's streak ends.
        for i in 0..90 {
            let (bids, asks) = crossed();
            w.handle(book("A", 1 + i, i == 0, &bids, &asks, 6_000 + i as i128 * 1_000));
        }
        let out = lines(&mut w);
        assert!(of_type(&out, "book_resync").is_empty(), "{out:#?}");
        assert!(of_type(&out, "book_top").iter().all(|l| l.contains(r#""crossed":true"#)));
    }

    /// Proves resyncs in a row back off: a book refused again soon after its resync waits 10 s,
    /// then 20 s, for its resubscription (attempt 0 until then), instead of one every message.
    #[test]
    fn repeated_rejections_back_off() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Top, 1));
        // (round, seconds after the rejection, attempt) of every book_resync line.
        let mut resyncs = Vec::new();
        let mut t = 0;
        for round in 0..3 {
            snapshot(&mut w, "A", t);
            w.handle(book("A", 2, false, &lvl(&[("99", "-1")]), "", t + 1));
            for second in 0..=60 {
                if second > 0 {
                    w.handle(WorkerInput::Tick { now_unix_ns: T0 + (t + second * 1_000) * 1_000_000 });
                }
                for l in lines(&mut w).into_iter().filter(|l| l.contains("book_resync")) {
                    let attempt = l.split("\"attempt\":").nth(1).and_then(|a| a[..1].parse::<u32>().ok());
                    resyncs.push((round, second, attempt.expect("attempt")));
                }
            }
            t += 61_000;
        }
        let asked: Vec<_> = resyncs.iter().filter(|(_, _, a)| *a == 1).map(|(r, s, _)| (*r, *s)).collect();
        // The rejection came 1 ms after the round started: its waits end just after ticks 10 and 20.
        assert_eq!(asked, vec![(0, 0), (1, 11), (2, 21)], "asked at once, then after 10 s, then 20 s: {resyncs:?}");
        let deferred: Vec<_> = resyncs.iter().filter(|(_, _, a)| *a == 0).map(|(r, s, _)| (*r, *s)).collect();
        assert_eq!(deferred, vec![(1, 0), (2, 0)], "{resyncs:?}");
    }

    /// Proves a stream whose first snapshot never comes is not left silent: its deltas are
    /// counted and discarded, and after 10 s the snapshot is asked for.
    #[test]
    fn a_first_snapshot_that_never_comes_is_asked_for() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Top, 1));
        for i in 0..5 {
            w.handle(book("A", 2 + i, false, &lvl(&[("99", "1")]), "", i as i128 * 100));
        }
        w.handle(WorkerInput::Tick { now_unix_ns: T0 + 10 * S });
        let out = lines(&mut w);
        let resync = of_type(&out, "book_resync");
        assert_eq!(resync.len(), 1, "{out:#?}");
        assert!(resync[0].contains(r#""reason":"no_snapshot","attempt":1"#), "{}", resync[0]);
        assert_eq!(metrics.snapshot().book_before_snapshot, 5);
        // Its first snapshot gets a top line and no book_synced line.
        snapshot(&mut w, "A", 11_000);
        let out = lines(&mut w);
        assert_eq!((of_type(&out, "book_top").len(), of_type(&out, "book_synced").len()), (1, 1), "{out:#?}");
    }

    /// Proves a delta older than the last one applied is not applied: it resyncs the book.
    #[test]
    fn a_delta_that_steps_back_resyncs() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Top, 1));
        snapshot(&mut w, "A", 0);
        w.handle(book("A", 2, false, &lvl(&[("100.0", "7")]), "", 1));
        w.handle(book("A", 3, false, &lvl(&[("100.0", "8")]), "", 2));
        w.handle(book("A", 2, false, &lvl(&[("100.0", "7")]), "", 3));
        let out = lines(&mut w);
        let resync = of_type(&out, "book_resync");
        assert!(resync.len() == 1 && resync[0].contains(r#""detail":"the sequence stepped back""#), "{out:#?}");
        assert!(of_type(&out, "book_top").last().is_some_and(|l| l.contains(r#""size":8"#)));
    }

    /// Proves a pending interval line is written when its interval ends even if its book says
    /// nothing more and the worker never goes idle (other symbols' frames keep coming).
    #[test]
    fn a_pending_line_is_written_on_time_under_other_traffic() {
        let metrics = Metrics::new(1);
        let books = BookConfig { interval_ns: 100_000_000, ..cfg(BookOutput::Top, 1) };
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(books);
        snapshot(&mut w, "A", 0);
        w.handle(book("A", 2, false, &lvl(&[("100.0", "5")]), "", 10));
        assert_eq!(of_type(&lines(&mut w), "book_top").len(), 1);
        for i in 0..30 {
            let text = format!(r#"{{"type":"quote","symbol_id":"B","sequence":{}}}"#, i + 1);
            let recv = T0 + (20 + i as i128 * 10) * 1_000_000;
            w.handle(WorkerInput::Frame(Frame { text: Utf8Bytes::from(text), recv_unix_ns: recv, generation: 1 }));
        }
        let out = lines(&mut w);
        let tops = of_type(&out, "book_top");
        assert_eq!(tops.len(), 1, "{out:#?}");
        assert!(tops[0].contains(r#""size":5"#));
    }

    /// Proves a book whose snapshots are always refused still reaches `given_up`: a refused
    /// snapshot while it waits does not restart its resync (or its timer and attempts).
    #[test]
    fn refused_snapshots_do_not_restart_a_resync() {
        let metrics = Metrics::new(1);
        let mut w = Worker::new(0, LIMITS, &metrics).with_books(cfg(BookOutput::Top, 1));
        snapshot(&mut w, "A", 0);
        w.handle(book("A", 2, false, &lvl(&[("99", "-1")]), "", 1));
        let mut lines_seen = Vec::new();
        for second in 1..=200 {
            // A refused snapshot every 5 s (a level with size 0), as a broken venue would send.
            if second % 5 == 0 {
                w.handle(book("A", 1, true, &lvl(&[("99", "0")]), &lvl(&[("101", "1")]), second * 1_000));
            }
            w.handle(WorkerInput::Tick { now_unix_ns: T0 + second * S + 2_000_000 });
            lines_seen.extend(lines(&mut w).into_iter().filter(|l| l.contains("book_resync")));
        }
        assert_eq!(lines_seen.len(), 5, "attempt 1, then 2, 3, 4, then given up: {lines_seen:#?}");
        assert!(lines_seen[4].contains(r#""reason":"given_up""#), "{lines_seen:#?}");
        assert!(metrics.snapshot().book_rejected >= 30);
    }
}
