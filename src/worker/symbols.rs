//! One worker's per-symbol state, in one table: one lookup per message, one bound, one counted
//! overflow. A symbol's entry holds the last sequence of each of its streams in the current
//! connection generation, its recent trade ids, and when it last sent data; the order book of the
//! next stage joins it here.
//!
//! CoinAPI numbers messages per (type, symbol_id) and only for the lifetime of one connection, so
//! sequence state is per generation: a new connection starts every stream afresh (no false gap at
//! the boundary), and the streams that were live when the old one died are handed back as
//! "reconnect" gaps, because whatever happened between the two connections was lost. Trade ids
//! survive a reconnect: recovered REST records overlap what the old connection delivered.
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
use crate::worker::dedup::{RecentIds, TradeId};
use crate::worker::sequence::{self, slot, SeqOutcome, N_TYPES};

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
}

impl SymbolState {
    /// Classifies one sequenced message of the current generation and records it.
    pub fn observe(&mut self, data_type: DataType, sequence: u64) -> SeqOutcome {
        sequence::step(&mut self.sequences[slot(data_type)], sequence)
    }

    /// Whether this trade id was already written for the symbol (remembering it if not);
    /// `capacity` is `TableLimits::trade_ids_per_symbol`.
    pub fn trade(&mut self, id: &str, capacity: usize) -> TradeId {
        self.trades.insert(id, capacity)
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
        let mut state =
            SymbolState { sequences: [None; N_TYPES], trades: RecentIds::default(), last_data_unix_ns: now_unix_ns };
        let result = f(&mut state);
        self.symbols.insert(Box::from(symbol_id), state);
        Some(result)
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

    /// Ends the current generation: its live streams join the reconnect list (deduplicated; at
    /// most `symbols_max × N_TYPES` of them) and every sequence is forgotten.
    fn advance(&mut self, generation: u64) {
        let already: HashSet<(DataType, String)> =
            if self.reconnected.is_empty() { HashSet::new() } else { self.reconnected.iter().cloned().collect() };
        for (symbol_id, state) in &mut self.symbols {
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
        assert_eq!(t.with_symbol("A", 0, |s| s.trade(UUID_WS, cap)), Some(TradeId::New));
        assert_eq!(t.with_symbol("B", 0, |s| s.trade(UUID_REST, cap)), Some(TradeId::New));
        t.start_generation(2);
        assert_eq!(t.with_symbol("A", 0, |s| s.trade(UUID_REST, cap)), Some(TradeId::Seen));
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
