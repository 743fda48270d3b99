//! One worker's per-symbol state, in one table: one lookup per message, one bound, one counted
//! overflow. A symbol's entry holds the last sequence of each of its streams in the current
//! connection generation, its recent trade ids, and when it last sent data; and the exact
//! order book of a `book` stream when books are kept.
//!
//! CoinAPI numbers messages per (type, symbol_id) and only for the lifetime of one connection, so
//! sequence state is per generation: a new connection starts every stream afresh (no false gap at
//! the boundary), and the streams that were live when the old one died are handed back as
//! "reconnect" gaps, because whatever happened between the two connections was lost. Trade ids
//! survive a reconnect: recovered REST records overlap what the old connection delivered. A
//! resumed run (`resume`) seeds a symbol's last trade and recent ids before its first
//! connection, which then recovers what was lost between the two runs as a reconnect gap.
//!
//! Entries are never evicted. With exact symbols the bound is the list itself; with a prefix
//! filter whose symbols churn past the bound, a new symbol's messages are still written but not
//! tracked for gaps, duplicates or silence (counted as `symbols_untracked`).
//!
//! Pure: no IO, no clock; the caller passes generations and times in.

use std::collections::HashSet;

// Fx hashing: looked up per message; keys come from CoinAPI, not an attacker.
use rustc_hash::FxHashMap;

use crate::wire::DataType;
use crate::worker::book::BookState;
use crate::worker::dedup::{self, RecentIds, TradeId};
use crate::worker::sequence::{self, slot, SeqOutcome, N_TYPES};
use crate::worker::windows::{Closed, TooManyGaps, TradeGaps, MARGIN_NS};

/// The bounds of one table, from `config::Limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLimits {
    /// Symbols with an entry; messages of further symbols are written but not tracked (counted).
    pub symbols_max: usize,
    /// Recent trade ids remembered per symbol: at least the largest REST page a recovery can
    /// return, so no overlap of a page with the stream is written twice.
    pub trade_ids_per_symbol: usize,
}

/// One symbol's state.
#[derive(Debug)]
pub struct SymbolState {
    /// Last sequence of each stream (by `slot(data_type)`) in the current generation.
    sequences: [Option<u64>; N_TYPES],
    trades: RecentIds,
    /// Receive time of the last data message, Unix ns.
    pub last_data_unix_ns: i128,
    /// The latest exchange time of a trade the stream delivered (any connection).
    pub last_trade_ns: Option<i64>,
    /// Trade gaps waiting for recovery.
    pub trade_gaps: TradeGaps,
    /// Book streams (by `slot`) resubscribed after a gap, whose deltas are withheld until their
    /// new snapshot arrives.
    resyncing: u16,
    /// The exact book of a `book` stream, when books are kept (`--book-output top|both`).
    pub book: Option<Box<BookState>>,
    /// The book was refused (`--book-max-books` reached): said once.
    pub book_refused: bool,
}

/// What one stream trade did to its symbol's state.
#[derive(Debug)]
pub struct TradeVisit {
    pub id: TradeId,
    /// The gap this trade revealed: the window that holds it (or refused).
    pub opened: Option<Result<u64, TooManyGaps>>,
    /// The symbol's windows now due for their requests.
    pub due: Vec<Closed>,
    /// Pins refused (bounds reached): overlaps that could be written twice.
    pub pins_refused: u64,
}

/// Where a worker takes window ids and the pins all its windows may hold together.
#[derive(Debug)]
pub struct WindowAllowance {
    pub next_id: u64,
    pub pins_left: usize,
}

/// Where a symbol's trades stood when a previous run stopped (`--resume`): what
/// `SymbolTable::resume` seeds it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    pub symbol_id: String,
    /// The latest exchange time of a trade it wrote, Unix ns.
    pub last_trade_ns: i64,
    /// The uuids of the trades it wrote just before, with their exchange times (Unix ns).
    pub ids: Vec<(String, i64)>,
}

/// How far exchange times of consecutive trades were seen to disagree with their order (~50 ms),
/// with room to spare.
const JITTER_NS: i64 = 100_000_000;

/// What a book message means for a stream that may be resyncing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookStep {
    Write,
    /// A delta of a stream waiting for its resubscription's snapshot.
    Withhold,
    /// Withheld, and the snapshot it waited for was lost (the stream restarted without one
    /// reaching us): resubscribe again.
    WithholdAndResync,
}

impl SymbolState {
    /// A trade the stream delivered on connection `generation` at exchange time `time_ns`:
    /// de-duplicates it, opens (or widens) the window of the gap it reveals (`gap_missing`
    /// trades lost by sequence), pins it in the windows it falls in, closes the reconnect
    /// windows that waited for it, and returns the windows due. A trade without a readable time
    /// only de-duplicates.
    #[allow(clippy::too_many_arguments)]
    pub fn stream_trade(
        &mut self,
        uuid: &str,
        time_ns: Option<i64>,
        gap_missing: Option<u64>,
        generation: u64,
        now_ns: i128,
        capacity: usize,
        allowance: &mut WindowAllowance,
    ) -> TradeVisit {
        let mut visit = TradeVisit { id: TradeId::New, opened: None, due: Vec::new(), pins_refused: 0 };
        let key = dedup::id_key(uuid);
        if let (Some(missing), Some(t)) = (gap_missing, time_ns) {
            let start = self.window_start(self.last_trade_ns.unwrap_or(t), capacity);
            let end = t.saturating_add(MARGIN_NS);
            let id = allowance.next_id;
            allowance.next_id += 1;
            let delivered = self.trades.keys_with_times();
            let room = &mut allowance.pins_left;
            let opened = self.trade_gaps.open(id, start, Some(end), generation, now_ns, Some(missing), delivered, room);
            visit.opened = Some(opened.map(|(id, refused)| {
                visit.pins_refused += refused;
                id
            }));
        }
        visit.id = match key {
            Some(k) => self.trades.insert_key(k, time_ns.unwrap_or(i64::MIN), capacity),
            None => TradeId::Unremembered,
        };
        if let Some(t) = time_ns {
            if !self.trade_gaps.is_empty() {
                let new_key = key.filter(|_| visit.id == TradeId::New);
                let room = &mut allowance.pins_left;
                self.trade_gaps.stream_trade(new_key, t, generation, now_ns, room, &mut visit.pins_refused);
            }
            self.last_trade_ns = Some(self.last_trade_ns.map_or(t, |l| l.max(t)));
        }
        if !self.trade_gaps.is_empty() {
            visit.due = self.trade_gaps.due(now_ns);
        }
        visit
    }

    /// Opens the window of a reconnect gap: from the last trade the old connection delivered
    /// until the first one of connection `generation`. `None` when no trade time is known.
    pub fn open_reconnect_window(
        &mut self,
        generation: u64,
        now_ns: i128,
        capacity: usize,
        allowance: &mut WindowAllowance,
    ) -> Option<Result<u64, TooManyGaps>> {
        let start = self.window_start(self.last_trade_ns?, capacity);
        let id = allowance.next_id;
        allowance.next_id += 1;
        let delivered = self.trades.keys_with_times();
        let opened =
            self.trade_gaps.open(id, start, None, generation, now_ns, None, delivered, &mut allowance.pins_left);
        Some(opened.map(|(id, _)| id))
    }

    /// Where a window after the last trade at `last_ns` starts: `MARGIN_NS` before it, but not
    /// before the oldest trade id the symbol still remembers (plus a jitter allowance), because
    /// a recovered trade older than that could not be told from one the stream wrote. On a
    /// symbol so busy that its memory spans less than the margin, the stream was continuous up
    /// to the gap, so what it lost is after `last_ns` anyway.
    fn window_start(&self, last_ns: i64, capacity: usize) -> i64 {
        let start = last_ns.saturating_sub(MARGIN_NS);
        match self.trades.forgotten_before(capacity) {
            Some(oldest) => start.max(oldest.saturating_add(JITTER_NS).min(last_ns)),
            None => start,
        }
    }

    /// A recovered trade id (of a trade at `time_ns`, when known): whether it was already
    /// written (pinned in window `window`, or among the recent ids), remembering it if not.
    pub fn recovered_trade(
        &mut self,
        window: Option<u64>,
        uuid: &str,
        time_ns: Option<i64>,
        capacity: usize,
        pins_left: &mut usize,
    ) -> TradeId {
        let Some(key) = dedup::id_key(uuid) else {
            return TradeId::Unremembered;
        };
        let w = window.and_then(|id| self.trade_gaps.get_mut(id));
        if w.as_ref().is_some_and(|w| w.is_pinned(key)) {
            return TradeId::Seen;
        }
        let id = self.trades.insert_key(key, time_ns.unwrap_or(i64::MIN), capacity);
        if id == TradeId::New {
            if let Some(w) = w {
                // A later page repeats the records at its boundary timestamp.
                w.pin(key, pins_left);
            }
        }
        id
    }

    /// A book message of a stream being resynced or not: `is_snapshot` ends a resync and (like
    /// any snapshot) restarts the stream, so a sequence starting again from 1 is no gap.
    pub fn book_step(&mut self, data_type: DataType, is_snapshot: bool, outcome: &mut SeqOutcome) -> BookStep {
        let bit = 1u16 << slot(data_type);
        if is_snapshot {
            self.resyncing &= !bit;
            if matches!(outcome, SeqOutcome::Gap { .. } | SeqOutcome::Regression { .. }) {
                *outcome = SeqOutcome::First;
            }
            return BookStep::Write;
        }
        if self.resyncing & bit != 0 {
            // Deltas of the old subscription or before the new snapshot: no gap to report. A
            // step back means the stream restarted and its snapshot never reached us.
            let restarted = matches!(outcome, SeqOutcome::Regression { .. });
            *outcome = SeqOutcome::Stale;
            return if restarted { BookStep::WithholdAndResync } else { BookStep::Withhold };
        }
        BookStep::Write
    }

    pub fn is_resyncing(&self, data_type: DataType) -> bool {
        self.resyncing & (1u16 << slot(data_type)) != 0
    }

    /// The book stream `data_type` is to be resubscribed: withhold its deltas until its snapshot.
    pub fn start_resync(&mut self, data_type: DataType) {
        self.resyncing |= 1u16 << slot(data_type);
    }

    /// The resubscription could not be asked for: deltas flow again (their gap line stands).
    pub fn end_resync(&mut self, data_type: DataType) {
        self.resyncing &= !(1u16 << slot(data_type));
    }

    /// Classifies one sequenced message of the current generation and records it.
    pub fn observe(&mut self, data_type: DataType, sequence: u64) -> SeqOutcome {
        sequence::step(&mut self.sequences[slot(data_type)], sequence)
    }
}

/// Every symbol a worker owns.
#[derive(Debug)]
pub struct SymbolTable {
    limits: TableLimits,
    symbols: FxHashMap<Box<str>, SymbolState>,
    generation: u64,
    /// Streams live in a generation that ended, not yet taken by `start_generation`. Kept when a
    /// newer generation is first seen through a frame, so a reconnect gap is never lost to the
    /// order in which the worker hears about the new connection.
    reconnected: Vec<(DataType, String)>,
}

impl SymbolTable {
    pub fn new(limits: TableLimits) -> SymbolTable {
        assert!(limits.symbols_max > 0 && limits.trade_ids_per_symbol > 0, "a state table needs room");
        SymbolTable { limits, symbols: FxHashMap::default(), generation: 0, reconnected: Vec::new() }
    }

    pub fn limits(&self) -> &TableLimits {
        &self.limits
    }

    /// Runs `f` on the symbol's entry, created if there is room: one hash lookup for a known
    /// symbol. `None` past the bound (the caller counts it). A closure rather than a reference,
    /// because the borrow checker cannot yet see that a miss leaves the map free to insert into.
    pub fn with_symbol<R>(
        &mut self,
        symbol_id: &str,
        now_unix_ns: i128,
        f: impl FnOnce(&mut SymbolState) -> R,
    ) -> Option<R> {
        if let Some(state) = self.symbols.get_mut(symbol_id) {
            return Some(f(state));
        }
        if self.symbols.len() >= self.limits.symbols_max {
            return None;
        }
        let mut state = SymbolState {
            sequences: [None; N_TYPES],
            trades: RecentIds::default(),
            last_data_unix_ns: now_unix_ns,
            last_trade_ns: None,
            trade_gaps: TradeGaps::default(),
            resyncing: 0,
            book: None,
            book_refused: false,
        };
        let result = f(&mut state);
        self.symbols.insert(Box::from(symbol_id), state);
        Some(result)
    }

    /// Every kept book, by symbol.
    pub fn books_mut(&mut self) -> impl Iterator<Item = (&str, &mut BookState)> {
        self.symbols.iter_mut().filter_map(|(symbol, state)| Some((&**symbol, state.book.as_deref_mut()?)))
    }

    /// The current connection generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Notes that a frame of `generation` arrived. A newer one ends the current generation (its
    /// live streams join the reconnect list); returns false for an older one (a stale frame).
    pub fn see_generation(&mut self, generation: u64) -> bool {
        if generation > self.generation {
            self.advance(generation);
        }
        generation == self.generation
    }

    /// A new connection (`generation`) has started: returns the streams that were live in the
    /// previous generation(s), sorted by symbol then type; each is a reconnect gap to recover.
    ///
    /// Idempotent: a second call for the same generation (or the call after a frame of it was
    /// seen) returns only what was not yet returned. A call for an older generation returns nothing.
    pub fn start_generation(&mut self, generation: u64) -> Vec<(DataType, String)> {
        if !self.see_generation(generation) {
            return Vec::new();
        }
        let mut streams = std::mem::take(&mut self.reconnected);
        streams.sort_by(|a, b| a.1.cmp(&b.1).then(slot(a.0).cmp(&slot(b.0))));
        streams
    }

    /// Seeds `symbol_id` with what a previous run wrote (`--resume`): its last trade at
    /// `last_trade_ns` and the ids of the trades just before it (`(uuid, time_ns)`), so the
    /// first connection's start returns its trade stream as a reconnect gap, whose window runs
    /// from the last trade (less the margin) to the new connection's first trade and is
    /// de-duplicated against these ids. Only before any connection: false once a generation has
    /// started, or when the table is full.
    pub fn resume(&mut self, symbol_id: &str, last_trade_ns: i64, ids: &[(String, i64)], now_unix_ns: i128) -> bool {
        if self.generation != 0 {
            return false;
        }
        let capacity = self.limits.trade_ids_per_symbol;
        // Oldest first, so a full memory forgets the oldest, as it does for the stream.
        let mut ordered: Vec<&(String, i64)> = ids.iter().collect();
        ordered.sort_by_key(|(_, t)| *t);
        let seeded = self.with_symbol(symbol_id, now_unix_ns, |state| {
            for (uuid, time_ns) in ordered {
                if let Some(key) = dedup::id_key(uuid) {
                    state.trades.insert_key(key, *time_ns, capacity);
                }
            }
            // Before any connection only a resume sets the last trade: a second one for the
            // symbol finds its stream listed already.
            let listed = state.last_trade_ns.is_some();
            state.last_trade_ns = Some(state.last_trade_ns.map_or(last_trade_ns, |l| l.max(last_trade_ns)));
            listed
        });
        match seeded {
            None => false,
            Some(listed) => {
                if !listed {
                    self.reconnected.push((DataType::Trade, symbol_id.to_string()));
                }
                true
            }
        }
    }

    /// Ends the current generation: its live streams join the reconnect list (deduplicated; at
    /// most `symbols_max × N_TYPES` of them) and every sequence is forgotten.
    fn advance(&mut self, generation: u64) {
        let already: HashSet<(DataType, String)> =
            if self.reconnected.is_empty() { HashSet::new() } else { self.reconnected.iter().cloned().collect() };
        for (symbol_id, state) in &mut self.symbols {
            // A new connection ends every resync: its hello subscribes afresh.
            state.resyncing = 0;
            for (data_type, cell) in DataType::ALL.into_iter().zip(&mut state.sequences) {
                if cell.take().is_none() {
                    continue;
                }
                let stream = (data_type, symbol_id.to_string());
                if !already.contains(&stream) {
                    self.reconnected.push(stream);
                }
            }
        }
        self.generation = generation;
    }

    /// Every trade window still waiting, by symbol, emptying them all (the run is ending).
    pub fn drain_windows(&mut self) -> Vec<(String, crate::worker::windows::Window)> {
        let mut out = Vec::new();
        for (symbol_id, state) in &mut self.symbols {
            if !state.trade_gaps.is_empty() {
                out.extend(state.trade_gaps.drain().into_iter().map(|w| (symbol_id.to_string(), w)));
            }
        }
        out
    }

    /// Every symbol's trade windows due for their requests at `now_unix_ns` (see `windows.rs`).
    pub fn due_windows(&mut self, now_unix_ns: i128) -> Vec<(String, Closed)> {
        let mut out = Vec::new();
        for (symbol_id, state) in &mut self.symbols {
            if state.trade_gaps.has_unrequested() {
                out.extend(state.trade_gaps.due(now_unix_ns).into_iter().map(|c| (symbol_id.to_string(), c)));
            }
        }
        out
    }

    /// Symbols whose last data is at least `silence_ns` older than `now_unix_ns`.
    pub fn count_silent(&self, now_unix_ns: i128, silence_ns: i128) -> u64 {
        self.symbols.values().filter(|s| now_unix_ns - s.last_data_unix_ns >= silence_ns).count() as u64
    }

    /// Symbols with an entry.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// One sequenced message, in one call: generation, lookup and step (tests and benches).
    pub fn observe(&mut self, generation: u64, data_type: DataType, symbol_id: &str, sequence: u64) -> SeqOutcome {
        if !self.see_generation(generation) {
            return SeqOutcome::Stale;
        }
        self.with_symbol(symbol_id, 0, |state| state.observe(data_type, sequence)).unwrap_or(SeqOutcome::Untracked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::{Book20, Quote, Trade};

    const UUID_WS: &str = "770C7A3B-7258-4441-8182-83740F3E2457";
    const UUID_REST: &str = "770c7a3b-7258-4441-8182-83740f3e2457";

    fn table(symbols_max: usize) -> SymbolTable {
        SymbolTable::new(TableLimits { symbols_max, trade_ids_per_symbol: 16 })
    }

    #[test]
    fn streams_are_independent_per_type_and_symbol() {
        // Proves that a trade, a quote and another symbol's trade each keep their own numbering.
        let mut t = table(10);
        assert_eq!(t.observe(1, Trade, "A", 100), SeqOutcome::First);
        assert_eq!(t.observe(1, Quote, "A", 5), SeqOutcome::First);
        assert_eq!(t.observe(1, Trade, "B", 1), SeqOutcome::First);
        assert_eq!(t.observe(1, Trade, "A", 101), SeqOutcome::InOrder);
        assert_eq!(t.observe(1, Quote, "A", 6), SeqOutcome::InOrder);
        assert_eq!(t.observe(1, Trade, "B", 3), SeqOutcome::Gap { expected: 2, received: 3, missing: 1 });
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_late_frame_of_an_older_generation_is_stale_and_changes_nothing() {
        // Proves an old connection's frame neither moves the stream nor opens a gap.
        let mut t = table(10);
        t.observe(2, Trade, "A", 50);
        assert_eq!(t.observe(1, Trade, "A", 900), SeqOutcome::Stale);
        assert_eq!(t.observe(1, Trade, "Z", 1), SeqOutcome::Stale);
        assert_eq!(t.observe(2, Trade, "A", 51), SeqOutcome::InOrder);
        assert_eq!((t.len(), t.generation()), (1, 2));
    }

    #[test]
    fn a_new_generation_starts_fresh_and_returns_the_live_streams() {
        // Proves no false gap at a reconnect, and that every stream live before it is returned once.
        let mut t = table(10);
        t.observe(1, Trade, "B", 10);
        t.observe(1, Book20, "A", 10);
        t.observe(1, Trade, "A", 10);
        let live = t.start_generation(2);
        assert_eq!(live, vec![(Trade, "A".to_string()), (Book20, "A".to_string()), (Trade, "B".to_string())]);
        assert_eq!(t.start_generation(2), vec![], "idempotent for the same generation");
        assert_eq!(t.observe(2, Trade, "A", 3), SeqOutcome::First, "sequences restart with the connection");
        assert_eq!(t.observe(2, Trade, "A", 4), SeqOutcome::InOrder);
        assert_eq!(t.start_generation(1), vec![], "an older generation is ignored");
        assert_eq!(t.observe(2, Trade, "A", 5), SeqOutcome::InOrder);
    }

    #[test]
    fn a_frame_of_a_newer_generation_starts_it_without_losing_reconnect_gaps() {
        // Proves that when a new connection's frame arrives before start_generation, the old
        // streams are still returned by the later start_generation call.
        let mut t = table(10);
        t.observe(1, Trade, "A", 10);
        t.observe(1, Quote, "B", 10);
        assert_eq!(t.observe(2, Trade, "A", 1), SeqOutcome::First);
        t.observe(2, Quote, "C", 1);
        // Generation 2 ends before anyone asked: its streams join the list, A only once.
        assert_eq!(t.observe(3, Trade, "D", 1), SeqOutcome::First);
        assert_eq!(t.generation(), 3);
        assert_eq!(
            t.start_generation(3),
            vec![(Trade, "A".to_string()), (Quote, "B".to_string()), (Quote, "C".to_string())]
        );
        assert_eq!(t.start_generation(3), vec![]);
    }

    #[test]
    fn symbols_beyond_the_bound_are_untracked_and_counted() {
        // Proves the one bound: a new symbol past it is refused and counted, known symbols carry
        // on (every type of them), and the entries survive a new generation.
        let mut t = table(2);
        assert_eq!(t.observe(1, Trade, "A", 1), SeqOutcome::First);
        assert_eq!(t.observe(1, Trade, "B", 1), SeqOutcome::First);
        assert_eq!(t.observe(1, Trade, "C", 1), SeqOutcome::Untracked);
        assert_eq!(t.observe(1, Quote, "A", 1), SeqOutcome::First);
        assert_eq!(t.observe(1, Trade, "A", 2), SeqOutcome::InOrder);
        assert_eq!(t.len(), 2);
        assert_eq!(t.start_generation(2).len(), 3);
        assert_eq!(t.observe(2, Trade, "C", 1), SeqOutcome::Untracked);
    }

    #[test]
    fn trade_ids_are_per_symbol_and_survive_a_reconnect() {
        // Proves de-duplication is per symbol, case-insensitive, and kept across generations
        // (a REST page recovered after a reconnect overlaps what the old connection wrote).
        let mut t = table(10);
        let cap = t.limits().trade_ids_per_symbol;
        assert_eq!(t.with_symbol("A", 0, |s| s.recovered_trade(None, UUID_WS, None, cap, &mut 0)), Some(TradeId::New));
        assert_eq!(
            t.with_symbol("B", 0, |s| s.recovered_trade(None, UUID_REST, None, cap, &mut 0)),
            Some(TradeId::New)
        );
        t.start_generation(2);
        assert_eq!(
            t.with_symbol("A", 0, |s| s.recovered_trade(None, UUID_REST, None, cap, &mut 0)),
            Some(TradeId::Seen)
        );
    }

    const S: i64 = 1_000_000_000;

    fn allowance() -> WindowAllowance {
        WindowAllowance { next_id: 1, pins_left: 1_000 }
    }

    #[test]
    fn a_resumed_symbol_is_a_reconnect_gap_of_the_first_connection() {
        // Proves a seeded symbol's trade stream is returned once by the first connection's start,
        // like a stream live before it, while an unseeded symbol is not; a second resume of the
        // same symbol keeps the later time and lists it once.
        let mut t = table(10);
        assert!(t.resume("A", 100 * S, &[], 7));
        assert!(t.resume("A", 90 * S, &[], 7));
        assert!(t.resume("B", 50 * S, &[], 7));
        t.with_symbol("C", 7, |_| ());
        assert_eq!(t.with_symbol("A", 0, |s| (s.last_trade_ns, s.last_data_unix_ns)), Some((Some(100 * S), 7)));
        assert_eq!(t.start_generation(1), vec![(Trade, "A".to_string()), (Trade, "B".to_string())]);
        assert_eq!(t.start_generation(1), vec![]);
        assert!(!t.resume("D", 100 * S, &[], 7), "too late once a connection started");
        assert_eq!(t.with_symbol("D", 0, |s| s.last_trade_ns), Some(None));
    }

    #[test]
    fn a_resume_is_kept_when_a_frame_of_the_first_connection_comes_first() {
        // Proves the seeded gap survives a first frame that starts generation 1 before the
        // worker hears of the connection.
        let mut t = table(10);
        assert!(t.resume("A", 100 * S, &[], 0));
        assert_eq!(t.observe(1, Quote, "A", 1), SeqOutcome::First);
        assert_eq!(t.start_generation(1), vec![(Trade, "A".to_string())]);
    }

    #[test]
    fn a_resume_is_refused_when_the_table_is_full() {
        // Proves the table's one bound holds for seeded symbols too.
        let mut t = table(1);
        assert!(t.resume("A", S, &[], 0));
        assert!(!t.resume("B", S, &[], 0));
        assert_eq!(t.start_generation(1), vec![(Trade, "A".to_string())]);
    }

    #[test]
    fn the_reconnect_window_of_a_resume_starts_at_the_seeded_last_trade() {
        // Proves the first connection's window runs from the seeded last trade less the margin
        // to the new connection's first trade, with the seeded ids pinned: a recovered copy of
        // one is a duplicate, in either case.
        let mut t = table(10);
        let cap = t.limits().trade_ids_per_symbol;
        let ids = vec![(UUID_WS.to_string(), 100 * S), ("other-id".to_string(), 99 * S)];
        assert!(t.resume("A", 100 * S, &ids, 0));
        assert_eq!(t.start_generation(1), vec![(Trade, "A".to_string())]);
        let mut allowance = allowance();
        let now = 200 * i128::from(S);
        let opened = t.with_symbol("A", now, |s| s.open_reconnect_window(1, now, cap, &mut allowance)).flatten();
        assert_eq!(opened, Some(Ok(1)));
        let visit = t
            .with_symbol("A", now, |s| s.stream_trade(&uuid(1), Some(150 * S), None, 1, now, cap, &mut allowance))
            .expect("tracked");
        assert_eq!(visit.id, TradeId::New);
        let later = now + 10 * i128::from(S);
        let due = t.due_windows(later);
        assert_eq!(
            due,
            vec![("A".to_string(), Closed { id: 1, start_ns: 100 * S - MARGIN_NS, end_ns: 150 * S + MARGIN_NS })]
        );
        let mut pins = 1_000;
        for (uuid, expected) in [(UUID_REST, TradeId::Seen), ("OTHER-ID", TradeId::Seen), (&*uuid(2), TradeId::New)] {
            let got = t.with_symbol("A", later, |s| s.recovered_trade(Some(1), uuid, Some(120 * S), cap, &mut pins));
            assert_eq!(got, Some(expected), "{uuid}");
        }
    }

    #[test]
    fn a_seeded_id_given_again_by_the_stream_is_a_duplicate() {
        // Proves the seeded ids are in the symbol's trade-id memory, case-insensitively: the
        // stream repeating a trade the previous run wrote does not write it again.
        let mut t = table(10);
        let cap = t.limits().trade_ids_per_symbol;
        let ids = vec![(UUID_WS.to_string(), 100 * S), ("ab12-Trade".to_string(), 100 * S)];
        assert!(t.resume("A", 100 * S, &ids, 0));
        t.start_generation(1);
        let mut allowance = allowance();
        for (uuid, expected) in [
            (UUID_WS, TradeId::Seen),
            (UUID_REST, TradeId::Seen),
            ("AB12-TRADE", TradeId::Seen),
            ("", TradeId::Unremembered),
        ] {
            let visit = t
                .with_symbol("A", 0, |s| s.stream_trade(uuid, Some(100 * S), None, 1, 0, cap, &mut allowance))
                .expect("tracked");
            assert_eq!(visit.id, expected, "{uuid:?}");
        }
        let visit = t.with_symbol("A", 0, |s| s.stream_trade(&uuid(3), Some(101 * S), None, 1, 0, cap, &mut allowance));
        assert_eq!(visit.map(|v| v.id), Some(TradeId::New));
    }

    #[test]
    fn seeded_ids_beyond_the_memory_keep_the_newest() {
        // Proves the seeded ids go in oldest first whatever their order, so a memory smaller
        // than them forgets the oldest, as it does for the stream.
        let mut t = SymbolTable::new(TableLimits { symbols_max: 10, trade_ids_per_symbol: 2 });
        let ids: Vec<(String, i64)> = [3, 1, 2].into_iter().map(|i| (uuid(i), i as i64 * S)).collect();
        assert!(t.resume("A", 3 * S, &ids, 0));
        let mut pins = 0;
        for (i, expected) in [(1, TradeId::New), (3, TradeId::Seen)] {
            let got = t.with_symbol("A", 0, |s| s.recovered_trade(None, &uuid(i), None, 2, &mut pins));
            assert_eq!(got, Some(expected), "{i}");
        }
    }

    fn uuid(n: u64) -> String {
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    #[test]
    fn silence_is_counted_from_the_last_data_time() {
        let mut t = table(10);
        let s = 1_000_000_000i128;
        t.with_symbol("A", 0, |_| ());
        t.with_symbol("B", 0, |st| st.last_data_unix_ns = 61 * s);
        assert_eq!(t.count_silent(61 * s, 60 * s), 1, "A has been quiet for 61 s");
        assert_eq!(t.count_silent(59 * s, 60 * s), 0);
    }
}
