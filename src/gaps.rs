//! Gap detection and trade de-duplication for the worker that owns a symbol: `SequenceTracker`
//! says whether each sequenced message continues its stream, and `TradeDedup` says whether a trade
//! uuid was already written (by the WebSocket, or by an earlier REST recovery).
//!
//! Pure: no IO, no clock, no threads; the caller passes the connection generation in and turns the
//! returned outcomes into control lines, counters and recovery requests. Both structures are
//! bounded (streams, symbols, uuids per symbol); what falls outside a bound is counted, never
//! silently dropped and never a reason to grow.

use std::borrow::{Borrow, Cow};
use std::collections::{HashSet, VecDeque};

// Fx hashing: these maps are looked up per message; keys come from CoinAPI, not an attacker.
use rustc_hash::{FxHashMap as HashMap, FxHashSet};
use std::hash::Hash;

use crate::protocol::DataType;

/// Default bound on (data type, symbol) streams tracked: far above any real subscription (a
/// stream costs about 16 bytes plus its symbol's share of a ~200-byte entry), low enough that a
/// runaway prefix filter cannot exhaust memory.
pub const DEFAULT_MAX_STREAMS: usize = 100_000;

/// Default number of recent trade uuids remembered per symbol. It must cover at least the
/// `limit` of a REST `/trades/{symbol}/latest` answer, which overlaps what the WebSocket already
/// delivered; at 100 trades/s it also spans about 40 s of exchange duplicates.
pub const DEFAULT_UUIDS_PER_SYMBOL: usize = 4096;

/// Default number of symbols whose trade uuids are remembered. Memory is taken only as trades
/// arrive (about 40–50 bytes per remembered uuid once a symbol's memory is full, so ~200 KB per
/// symbol at the default depth); size it to the subscription, not above it.
pub const DEFAULT_MAX_TRADE_SYMBOLS: usize = 10_000;

/// Longest non-canonical trade id remembered. Longer ids are treated as new (and counted as
/// untracked): writing a rare duplicate is better than storing unbounded strings or truncating
/// ids into false matches that would drop real trades.
pub const MAX_TRADE_ID_LEN: usize = 128;

const N_TYPES: usize = DataType::ALL.len();

/// Index of a data type in a per-symbol slot array. `DataType` is a field-less enum declared in
/// the same order as `DataType::ALL` (checked by a test), so the discriminant is the index.
fn slot(data_type: DataType) -> usize {
    data_type as usize
}

/// What one sequenced message means for its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// First message of this stream in this connection generation: nothing to compare with.
    First,
    /// Exactly the expected sequence.
    InOrder,
    /// Jumped forward: `missing` messages (`expected..received`) were lost.
    Gap { expected: u64, received: u64, missing: u64 },
    /// The same sequence as the last message: counted, not written again by the caller's choice.
    Duplicate { last: u64 },
    /// A step backwards. The stream is re-based at `received` (see `SequenceTracker::observe`).
    Regression { last: u64, received: u64 },
    /// The message belongs to an older connection generation than the current one (a late frame
    /// of a dead connection): ignored, state untouched.
    Stale,
    /// The stream bound was reached and this stream is not tracked.
    Untracked,
}

/// The next expected sequence per (data type, symbol_id) within the current connection
/// generation.
///
/// CoinAPI numbers messages per (type, symbol_id) and only for the lifetime of one connection, so
/// all state is per generation: a new connection starts every stream afresh (no false gap at the
/// boundary), and the streams that were live when the old one died are handed back as
/// "reconnect" gaps, because whatever happened between the two connections was lost.
#[derive(Debug)]
pub struct SequenceTracker {
    max_streams: usize,
    generation: u64,
    /// Last sequence seen, by symbol and then by `slot(data_type)`. Two levels rather than a
    /// (type, symbol) tuple key so a lookup borrows the `&str` and never allocates.
    last_seen: HashMap<Box<str>, [Option<u64>; N_TYPES]>,
    n_streams: usize,
    /// Streams live in a generation that ended, not yet taken by `start_generation`. Kept when a
    /// newer generation is first seen through `observe`, so a reconnect gap is never lost to the
    /// order in which the caller hears about the new connection.
    reconnected: Vec<(DataType, String)>,
    untracked: u64,
    stale: u64,
}

impl Default for SequenceTracker {
    fn default() -> Self {
        SequenceTracker::new(DEFAULT_MAX_STREAMS)
    }
}

impl SequenceTracker {
    /// `max_streams`: bound on (data type, symbol) streams tracked in one generation.
    pub fn new(max_streams: usize) -> SequenceTracker {
        assert!(max_streams > 0, "the sequence tracker must be allowed at least one stream");
        SequenceTracker {
            max_streams,
            generation: 0,
            last_seen: HashMap::default(),
            n_streams: 0,
            reconnected: Vec::new(),
            untracked: 0,
            stale: 0,
        }
    }

    /// Classifies one message of `generation` and records it.
    ///
    /// A step backwards re-bases the stream at the received sequence. Within one connection
    /// messages arrive in order, so a regression means the server renumbered the stream; keeping
    /// the old high mark would then hide every real gap until the new numbers caught up, which
    /// loses data silently. If it was instead a single stray frame, re-basing costs one false gap
    /// on the next message, i.e. one extra recovery request, which loses nothing.
    pub fn observe(&mut self, generation: u64, data_type: DataType, symbol_id: &str, sequence: u64) -> SeqOutcome {
        if generation < self.generation {
            self.stale = self.stale.saturating_add(1);
            return SeqOutcome::Stale;
        }
        if generation > self.generation {
            self.advance(generation);
        }
        let at_bound = self.n_streams >= self.max_streams;
        let slots = match self.last_seen.get_mut(symbol_id) {
            Some(slots) => slots,
            None if at_bound => {
                self.untracked = self.untracked.saturating_add(1);
                return SeqOutcome::Untracked;
            }
            None => self.last_seen.entry(Box::from(symbol_id)).or_insert([None; N_TYPES]),
        };
        let cell = &mut slots[slot(data_type)];
        let Some(last) = *cell else {
            if at_bound {
                self.untracked = self.untracked.saturating_add(1);
                return SeqOutcome::Untracked;
            }
            *cell = Some(sequence);
            self.n_streams += 1;
            return SeqOutcome::First;
        };
        if sequence == last {
            return SeqOutcome::Duplicate { last };
        }
        *cell = Some(sequence);
        if sequence < last {
            return SeqOutcome::Regression { last, received: sequence };
        }
        // sequence > last, so last < u64::MAX and the addition cannot overflow.
        let expected = last + 1;
        if sequence == expected {
            SeqOutcome::InOrder
        } else {
            SeqOutcome::Gap { expected, received: sequence, missing: sequence - expected }
        }
    }

    /// A new connection (`generation`) has started: forgets every stream's sequence and returns
    /// the streams that were live in the previous generation(s), sorted by symbol then type; each
    /// is a reconnect gap to recover.
    ///
    /// Idempotent: a second call for the same generation (or the call after `observe` already
    /// saw a frame of it) returns only what was not yet returned. A call for an older generation
    /// is ignored and returns nothing.
    pub fn start_generation(&mut self, generation: u64) -> Vec<(DataType, String)> {
        if generation > self.generation {
            self.advance(generation);
        }
        if generation < self.generation {
            return Vec::new();
        }
        let mut streams = std::mem::take(&mut self.reconnected);
        streams.sort_by(|a, b| a.1.cmp(&b.1).then(slot(a.0).cmp(&slot(b.0))));
        streams
    }

    /// Ends the current generation: its live streams join the reconnect list (deduplicated, and
    /// bounded by `max_streams`; the excess is counted as untracked) and all state is cleared.
    fn advance(&mut self, generation: u64) {
        let already: HashSet<(DataType, String)> =
            if self.reconnected.is_empty() { HashSet::new() } else { self.reconnected.iter().cloned().collect() };
        for (symbol_id, slots) in &self.last_seen {
            for (data_type, cell) in DataType::ALL.into_iter().zip(slots) {
                if cell.is_none() {
                    continue;
                }
                let stream = (data_type, symbol_id.to_string());
                if already.contains(&stream) {
                    continue;
                }
                if self.reconnected.len() >= self.max_streams {
                    self.untracked = self.untracked.saturating_add(1);
                    continue;
                }
                self.reconnected.push(stream);
            }
        }
        self.last_seen.clear();
        self.n_streams = 0;
        self.generation = generation;
    }

    /// The current connection generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Streams tracked in the current generation.
    pub fn n_streams(&self) -> usize {
        self.n_streams
    }

    /// Messages (and reconnect streams) not tracked because the stream bound was reached.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Messages ignored because they belonged to an older generation.
    pub fn stale(&self) -> u64 {
        self.stale
    }
}

/// Parses a canonical uuid (8-4-4-4-12 hex digits, either case) into its 128-bit value.
fn parse_uuid(s: &str) -> Option<u128> {
    let bytes = s.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, &c) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

/// Keys in arrival order with a set for lookups; the oldest goes when full.
#[derive(Debug)]
struct Fifo<K> {
    order: VecDeque<K>,
    set: FxHashSet<K>,
}

impl<K> Default for Fifo<K> {
    fn default() -> Self {
        Fifo { order: VecDeque::new(), set: FxHashSet::default() }
    }
}

impl<K: Hash + Eq + Clone> Fifo<K> {
    fn contains<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.set.contains(key)
    }

    /// Adds a key known to be absent, evicting the oldest at `capacity`. Once a memory is full,
    /// pushing reuses the space of the evicted key: no allocation in the steady state.
    fn push(&mut self, key: K, capacity: usize) {
        if self.order.len() >= capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.order.push_back(key.clone());
        self.set.insert(key);
    }
}

/// One symbol's recent trade ids. Canonical uuids and other ids are kept apart so the common
/// case stores a bare `u128` (16 bytes) rather than an enum padded to 32; each kind has its own
/// FIFO of `uuids_per_symbol` (a symbol's ids are all of one form in practice).
#[derive(Debug, Default)]
struct RecentIds {
    uuids: Fifo<u128>,
    others: Fifo<Box<str>>,
}

/// A bounded memory of recent trade uuids per symbol, case-insensitive: the WebSocket sends them
/// upper case, REST lower case, and exchanges sometimes send the same trade twice.
#[derive(Debug)]
pub struct TradeDedup {
    uuids_per_symbol: usize,
    max_symbols: usize,
    symbols: HashMap<Box<str>, RecentIds>,
    untracked: u64,
}

impl Default for TradeDedup {
    fn default() -> Self {
        TradeDedup::new(DEFAULT_UUIDS_PER_SYMBOL, DEFAULT_MAX_TRADE_SYMBOLS)
    }
}

impl TradeDedup {
    /// `uuids_per_symbol`: FIFO depth of each symbol's memory; `max_symbols`: symbols remembered.
    pub fn new(uuids_per_symbol: usize, max_symbols: usize) -> TradeDedup {
        assert!(uuids_per_symbol > 0 && max_symbols > 0, "trade de-duplication needs room for one uuid");
        TradeDedup { uuids_per_symbol, max_symbols, symbols: HashMap::default(), untracked: 0 }
    }

    /// True if this trade was not seen recently for `symbol_id` (it is now remembered); false if
    /// it was. Trades that cannot be remembered (symbol bound reached, empty or over-long id)
    /// count as new: a rare duplicate line is better than dropping a trade.
    pub fn insert(&mut self, symbol_id: &str, uuid: &str) -> bool {
        let canonical = parse_uuid(uuid);
        // An empty id identifies nothing: remembering it would drop every later id-less trade.
        if canonical.is_none() && (uuid.is_empty() || uuid.len() > MAX_TRADE_ID_LEN) {
            self.untracked = self.untracked.saturating_add(1);
            return true;
        }
        let at_bound = self.symbols.len() >= self.max_symbols;
        let recent = match self.symbols.get_mut(symbol_id) {
            Some(recent) => recent,
            None if at_bound => {
                self.untracked = self.untracked.saturating_add(1);
                return true;
            }
            None => self.symbols.entry(Box::from(symbol_id)).or_default(),
        };
        match canonical {
            Some(value) => {
                if recent.uuids.contains(&value) {
                    return false;
                }
                recent.uuids.push(value, self.uuids_per_symbol);
            }
            None => {
                let key: Cow<'_, str> = if uuid.bytes().any(|c| c.is_ascii_uppercase()) {
                    Cow::Owned(uuid.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(uuid)
                };
                if recent.others.contains(key.as_ref()) {
                    return false;
                }
                recent.others.push(key.into_owned().into_boxed_str(), self.uuids_per_symbol);
            }
        }
        true
    }

    /// Symbols with a memory.
    pub fn n_symbols(&self) -> usize {
        self.symbols.len()
    }

    /// Trades not remembered: symbol bound reached, or an empty or over-long id.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::{Book20, Quote, Trade};

    const UUID_WS: &str = "770C7A3B-7258-4441-8182-83740F3E2457";
    const UUID_REST: &str = "770c7a3b-7258-4441-8182-83740f3e2457";

    #[test]
    fn slots_follow_the_order_of_all() {
        // Proves the discriminant-as-index trick matches DataType::ALL, so no two types share a slot.
        for (i, t) in DataType::ALL.into_iter().enumerate() {
            assert_eq!(slot(t), i, "{}", t.as_str());
        }
    }

    #[test]
    fn sequences_are_classified() {
        // Proves each outcome of one stream, in a table: in order, gap with its missing count,
        // duplicate, regression (and the re-base after it), and the u64 extremes without overflow.
        let cases: &[(&[u64], SeqOutcome)] = &[
            (&[7], SeqOutcome::First),
            (&[7, 8], SeqOutcome::InOrder),
            (&[7, 8, 12], SeqOutcome::Gap { expected: 9, received: 12, missing: 3 }),
            (&[7, 9], SeqOutcome::Gap { expected: 8, received: 9, missing: 1 }),
            (&[7, 7], SeqOutcome::Duplicate { last: 7 }),
            (&[7, 8, 8], SeqOutcome::Duplicate { last: 8 }),
            (&[7, 8, 3], SeqOutcome::Regression { last: 8, received: 3 }),
            (&[7, 8, 3, 4], SeqOutcome::InOrder),
            (&[0, u64::MAX], SeqOutcome::Gap { expected: 1, received: u64::MAX, missing: u64::MAX - 1 }),
            (&[u64::MAX - 1, u64::MAX], SeqOutcome::InOrder),
            (&[u64::MAX, u64::MAX], SeqOutcome::Duplicate { last: u64::MAX }),
            (&[u64::MAX, 0], SeqOutcome::Regression { last: u64::MAX, received: 0 }),
        ];
        for (sequences, want) in cases {
            let mut t = SequenceTracker::new(10);
            let mut got = SeqOutcome::Untracked;
            for &s in *sequences {
                got = t.observe(1, Trade, "BITSTAMP_SPOT_BTC_USD", s);
            }
            assert_eq!(got, *want, "{sequences:?}");
        }
    }

    #[test]
    fn streams_are_independent_per_type_and_symbol() {
        // Proves that a trade, a quote and another symbol's trade each keep their own numbering.
        let mut t = SequenceTracker::new(10);
        assert_eq!(t.observe(1, Trade, "A", 100), SeqOutcome::First);
        assert_eq!(t.observe(1, Quote, "A", 5), SeqOutcome::First);
        assert_eq!(t.observe(1, Trade, "B", 1), SeqOutcome::First);
        assert_eq!(t.observe(1, Trade, "A", 101), SeqOutcome::InOrder);
        assert_eq!(t.observe(1, Quote, "A", 6), SeqOutcome::InOrder);
        assert_eq!(t.observe(1, Trade, "B", 3), SeqOutcome::Gap { expected: 2, received: 3, missing: 1 });
        assert_eq!(t.n_streams(), 3);
    }

    #[test]
    fn a_late_frame_of_an_older_generation_is_stale_and_changes_nothing() {
        // Proves an old connection's frame neither moves the stream nor opens a gap.
        let mut t = SequenceTracker::new(10);
        t.observe(2, Trade, "A", 50);
        assert_eq!(t.observe(1, Trade, "A", 900), SeqOutcome::Stale);
        assert_eq!(t.observe(1, Trade, "Z", 1), SeqOutcome::Stale);
        assert_eq!(t.observe(2, Trade, "A", 51), SeqOutcome::InOrder);
        assert_eq!((t.stale(), t.n_streams(), t.generation()), (2, 1, 2));
    }

    #[test]
    fn a_new_generation_starts_fresh_and_returns_the_live_streams() {
        // Proves no false gap at a reconnect, and that every stream live before it is returned once.
        let mut t = SequenceTracker::new(10);
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
        let mut t = SequenceTracker::new(10);
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
    fn streams_beyond_the_bound_are_untracked_and_counted() {
        // Proves the stream bound holds for new symbols and new types of a known symbol alike,
        // while tracked streams carry on and a new generation frees the room.
        let mut t = SequenceTracker::new(2);
        assert_eq!(t.observe(1, Trade, "A", 1), SeqOutcome::First);
        assert_eq!(t.observe(1, Trade, "B", 1), SeqOutcome::First);
        assert_eq!(t.observe(1, Trade, "C", 1), SeqOutcome::Untracked);
        assert_eq!(t.observe(1, Quote, "A", 1), SeqOutcome::Untracked);
        assert_eq!(t.observe(1, Trade, "A", 2), SeqOutcome::InOrder);
        assert_eq!((t.n_streams(), t.untracked()), (2, 2));
        assert_eq!(t.start_generation(2).len(), 2);
        assert_eq!(t.observe(2, Trade, "C", 1), SeqOutcome::First);
    }

    #[test]
    fn uuids_parse_only_in_canonical_form() {
        // Proves the canonical parser accepts both cases to the same value and rejects near misses.
        assert_eq!(parse_uuid(UUID_WS), Some(0x770c7a3b_7258_4441_8182_83740f3e2457));
        assert_eq!(parse_uuid(UUID_REST), parse_uuid(UUID_WS));
        for bad in [
            "",
            "770C7A3B72584441818283740F3E2457",
            "770C7A3B-7258-4441-8182-83740F3E245",
            "770C7A3B-7258-4441-8182-83740F3E24577",
            "770C7A3B-7258-4441-8182_83740F3E2457",
            "770C7A3B-7258-4441-8182-83740F3E245G",
            "{70C7A3B-7258-4441-8182-83740F3E245}",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn dedup_is_case_insensitive_and_per_symbol() {
        // Proves a WebSocket (upper case) and a REST (lower case) copy of one trade count once,
        // for canonical and non-canonical ids, while another symbol keeps its own memory.
        let cases: &[(&str, &str, bool)] = &[
            ("A", UUID_WS, true),
            ("A", UUID_WS, false),
            ("A", UUID_REST, false),
            ("B", UUID_REST, true),
            ("A", "Trade-42", true),
            ("A", "TRADE-42", false),
            ("A", "trade-42", false),
            ("A", "trade-43", true),
            ("A", "", true),
            ("A", "", true),
        ];
        let mut d = TradeDedup::new(16, 16);
        for (i, (symbol, uuid, new)) in cases.iter().enumerate() {
            assert_eq!(d.insert(symbol, uuid), *new, "case {i}: {symbol} {uuid}");
        }
        assert_eq!(d.untracked(), 2, "empty ids are never remembered");
    }

    #[test]
    fn dedup_forgets_the_oldest_first_within_its_bound() {
        // Proves the per-symbol memory keeps exactly the last N uuids, evicting in arrival order.
        let n = 8u128;
        let mut d = TradeDedup::new(n as usize, 4);
        let id = |i: u128| {
            let h = format!("{i:032x}");
            format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
        };
        for i in 0..n + 3 {
            assert!(d.insert("A", &id(i)));
        }
        for i in 3..n + 3 {
            assert!(!d.insert("A", &id(i)), "uuid {i} is among the last {n}");
        }
        for i in 0..3 {
            assert!(d.insert("A", &id(i)), "uuid {i} was evicted");
        }
        let mut others = TradeDedup::new(2, 4);
        for (uuid, new) in [("x1", true), ("x2", true), ("x3", true), ("x1", true), ("x3", false)] {
            assert_eq!(others.insert("A", uuid), new, "{uuid}");
        }
    }

    #[test]
    fn symbols_beyond_the_bound_are_not_remembered_and_counted() {
        // Proves the symbol bound: a new symbol past it passes every trade as new and is counted,
        // while known symbols still de-duplicate; over-long ids are passed and counted too.
        let mut d = TradeDedup::new(4, 2);
        assert!(d.insert("A", UUID_WS));
        assert!(d.insert("B", UUID_WS));
        assert!(d.insert("C", UUID_WS));
        assert!(d.insert("C", UUID_WS), "C is untracked");
        assert!(!d.insert("A", UUID_REST));
        let long = "x".repeat(MAX_TRADE_ID_LEN + 1);
        assert!(d.insert("A", &long));
        assert!(d.insert("A", &long));
        assert_eq!((d.n_symbols(), d.untracked()), (2, 4));
    }
}
