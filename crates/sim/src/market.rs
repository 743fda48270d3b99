//! The simulator's market memory: the compact trade record ([`TradeFields`]) that generators
//! produce, and the per-symbol [`TradeStore`] the REST server answers `trades/latest` and
//! `trades/history` from. Every trade a connection generates is appended here, streamed or not
//! (withheld by a fault, generated during an outage), oldest first, at most
//! `SimConfig::trade_store_per_symbol` per symbol (the oldest go first).
//!
//! The store is one sequence of market events per symbol shared by all connections: each
//! connection appends the trades it generates, in the order it generates them, so two
//! connections streaming one symbol put both their trades (with different uuids) into it. That
//! is what a client sees too: each connection's stream is a sample of the same market.
//!
//! # Compactness
//!
//! A paced trade is a fixed 48-byte [`Single`] record plus its price and size text (about 25
//! bytes) in the symbol's text arena: no allocation per trade. Flood ("ring") mode replays a
//! ring of at most 128 templates per stream for up to a second; consecutive trades of one stream
//! that replay consecutive templates are one [`Run`] (shared ring, first sequence, count), so
//! storing a flooded trade costs a compare and an increment. Runs are expanded when read, so
//! every query sees each trade individually and truthfully.
//!
//! Nothing here does IO or reads a clock: times come in as 100 ns ticks since the Unix epoch.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

/// CoinAPI taker sides; [`TradeFields`] keeps an index into this table.
pub(crate) const TAKER_SIDES: [&str; 5] = ["BUY", "SELL", "BUY_ESTIMATED", "SELL_ESTIMATED", "UNKNOWN"];

/// The low 48 bits of a WebSocket trade uuid (its last 12 hex digits): spliced from the
/// sequence number the trade was first sent with, so unique per stream and connection.
pub(crate) const UUID_TAIL_MASK: u128 = (1 << 48) - 1;

/// Consumed arena text is compacted once it is at least this long and half the arena.
const TEXT_COMPACT_MIN: usize = 64 * 1024;

/// One trade's market fields, compact: times as 100 ns ticks (CoinAPI's 7 fractional digits
/// exactly), price and size as their exact wire text in one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TradeFields {
    pub(crate) time_exchange: i64,
    pub(crate) time_coinapi: i64,
    /// The price text immediately followed by the size text.
    numbers: Box<str>,
    price_len: u16,
    side: u8,
}

impl TradeFields {
    /// `numbers` holds the price text (`price_len` bytes) then the size text; `side` indexes
    /// [`TAKER_SIDES`] (out of range reads as `UNKNOWN`).
    pub(crate) fn new(time_exchange: i64, time_coinapi: i64, numbers: String, price_len: usize, side: u8) -> Self {
        // Generated numbers are at most ~40 characters; the clamp only keeps slicing in bounds.
        let price_len = price_len.min(numbers.len()).min(usize::from(u16::MAX));
        let price_len = if numbers.is_char_boundary(price_len) { price_len } else { 0 };
        TradeFields {
            time_exchange,
            time_coinapi,
            numbers: numbers.into_boxed_str(),
            price_len: price_len as u16,
            side,
        }
    }

    pub(crate) fn price(&self) -> &str {
        &self.numbers[..usize::from(self.price_len)]
    }

    pub(crate) fn size(&self) -> &str {
        &self.numbers[usize::from(self.price_len)..]
    }

    pub(crate) fn taker_side(&self) -> &'static str {
        side_name(self.side)
    }
}

fn side_name(side: u8) -> &'static str {
    TAKER_SIDES.get(usize::from(side)).copied().unwrap_or("UNKNOWN")
}

/// The trades of one template ring of a trade stream: the stream's uuid head (tail bits zero)
/// and the fields of each template, in ring order. Shared by the stream and the runs that
/// reference it; freed when both are done with it.
#[derive(Debug)]
pub(crate) struct RingTrades {
    pub(crate) uuid_head: u128,
    pub(crate) fields: Box<[TradeFields]>,
}

/// One stored trade as a query sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TradeView<'a> {
    pub(crate) uuid: u128,
    pub(crate) time_exchange: i64,
    pub(crate) time_coinapi: i64,
    pub(crate) price: &'a str,
    pub(crate) size: &'a str,
    pub(crate) taker_side: &'static str,
    pub(crate) streamed: bool,
}

/// One trade with its text in the owner's arena (`text_at` is an absolute arena offset).
#[derive(Debug, Clone)]
struct Single {
    uuid_hi: u64,
    uuid_lo: u64,
    time_exchange: i64,
    time_coinapi: i64,
    text_at: u64,
    price_len: u16,
    size_len: u16,
    side: u8,
    streamed: bool,
}

impl Single {
    fn uuid(&self) -> u128 {
        (u128::from(self.uuid_hi) << 64) | u128::from(self.uuid_lo)
    }

    fn text_len(&self) -> usize {
        usize::from(self.price_len) + usize::from(self.size_len)
    }
}

/// `count` trades of one stream: trade `i` has uuid `head | (seq0 + i)` (low 48 bits) and the
/// fields of template `pos0 + i` of `ring`.
#[derive(Debug, Clone)]
struct Run {
    ring: Arc<RingTrades>,
    seq0: u64,
    pos0: u32,
    count: u32,
    streamed: bool,
}

impl Run {
    fn view(&self, i: usize) -> Option<TradeView<'_>> {
        let f = self.ring.fields.get(self.pos0 as usize + i)?;
        let seq = self.seq0.wrapping_add(i as u64);
        Some(TradeView {
            uuid: (self.ring.uuid_head & !UUID_TAIL_MASK) | (u128::from(seq) & UUID_TAIL_MASK),
            time_exchange: f.time_exchange,
            time_coinapi: f.time_coinapi,
            price: f.price(),
            size: f.size(),
            taker_side: f.taker_side(),
            streamed: self.streamed,
        })
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Single(Single),
    Run(Run),
}

impl Entry {
    fn len(&self) -> usize {
        match self {
            Entry::Single(_) => 1,
            Entry::Run(r) => r.count as usize,
        }
    }
}

/// The stored trades of one symbol, oldest first.
#[derive(Debug, Default)]
struct SymbolTrades {
    entries: VecDeque<Entry>,
    /// Price and size text of the `Single` entries, oldest first; byte 0 is arena offset
    /// `text_base`, and the first `text_consumed` bytes belong to evicted trades.
    text: String,
    text_base: u64,
    text_consumed: usize,
    /// Trades held (a run counts its trades).
    len: usize,
}

impl SymbolTrades {
    fn single_view<'a>(&'a self, s: &Single) -> Option<TradeView<'a>> {
        let at = usize::try_from(s.text_at.checked_sub(self.text_base)?).ok()?;
        let mid = at + usize::from(s.price_len);
        let end = mid + usize::from(s.size_len);
        Some(TradeView {
            uuid: s.uuid(),
            time_exchange: s.time_exchange,
            time_coinapi: s.time_coinapi,
            price: self.text.get(at..mid)?,
            size: self.text.get(mid..end)?,
            taker_side: side_name(s.side),
            streamed: s.streamed,
        })
    }

    /// Calls `f` on every trade from index `from` (0 = oldest) on, in store order, with its
    /// index, until `f` returns false.
    fn for_each_from<'a>(&'a self, from: usize, mut f: impl FnMut(usize, TradeView<'a>) -> bool) {
        let mut skip = from;
        let mut index = 0;
        for e in &self.entries {
            let n = e.len();
            if skip >= n {
                skip -= n;
                index += n;
                continue;
            }
            match e {
                Entry::Single(s) => {
                    if let Some(v) = self.single_view(s) {
                        if !f(index, v) {
                            return;
                        }
                    }
                }
                Entry::Run(r) => {
                    for i in skip..n {
                        if let Some(v) = r.view(i) {
                            if !f(index + i, v) {
                                return;
                            }
                        }
                    }
                }
            }
            index += n;
            skip = 0;
        }
    }

    fn append(&mut self, batch: &mut SymbolBatch, capacity: usize) {
        let arena_end = self.text_base + self.text.len() as u64;
        self.text.push_str(&batch.text);
        batch.text.clear();
        for mut e in batch.entries.drain(..) {
            if let Entry::Single(s) = &mut e {
                s.text_at += arena_end;
            }
            self.len += e.len();
            self.entries.push_back(e);
        }
        self.evict_to(capacity);
    }

    /// Drops the oldest trades until at most `capacity` remain.
    fn evict_to(&mut self, capacity: usize) {
        while self.len > capacity {
            let excess = self.len - capacity;
            let Some(front) = self.entries.front_mut() else {
                self.len = 0;
                break;
            };
            match front {
                Entry::Run(r) if (r.count as usize) > excess => {
                    // Trim the run's head: the rest of it stays.
                    r.count -= excess as u32;
                    r.pos0 += excess as u32;
                    r.seq0 = r.seq0.wrapping_add(excess as u64);
                    self.len -= excess;
                }
                _ => {
                    if let Some(e) = self.entries.pop_front() {
                        self.len -= e.len();
                        if let Entry::Single(s) = e {
                            let end = (s.text_at + s.text_len() as u64).saturating_sub(self.text_base);
                            self.text_consumed = self.text_consumed.max(usize::try_from(end).unwrap_or(usize::MAX));
                        }
                    }
                }
            }
        }
        self.compact_text();
    }

    fn compact_text(&mut self) {
        let consumed = self.text_consumed.min(self.text.len());
        if consumed == self.text.len() {
            // Nothing live in the arena (all runs, or empty): drop it all.
            self.text_base += self.text.len() as u64;
            self.text.clear();
            self.text_consumed = 0;
        } else if consumed >= TEXT_COMPACT_MIN && consumed * 2 >= self.text.len() {
            self.text.drain(..consumed);
            self.text_base += consumed as u64;
            self.text_consumed = 0;
        }
    }
}

/// Trades generated by one connection since its last flush, per symbol, in generation order.
/// Bounded by the caller, which flushes after every generation step.
#[derive(Debug, Default)]
pub(crate) struct TradeBatch {
    symbols: Vec<SymbolBatch>,
    trades: usize,
}

#[derive(Debug, Default)]
struct SymbolBatch {
    entries: Vec<Entry>,
    /// Text of this batch's `Single` entries (their `text_at` is relative to it).
    text: String,
}

impl TradeBatch {
    pub(crate) fn new(n_symbols: usize) -> TradeBatch {
        TradeBatch { symbols: (0..n_symbols).map(|_| SymbolBatch::default()).collect(), trades: 0 }
    }

    /// A trade of template `pos` of `ring` sent (or withheld) with sequence `seq`. Extends the
    /// symbol's last run when it continues it; a ring of one template (paced mode builds one
    /// per message) is copied instead, which is smaller than keeping the ring alive.
    pub(crate) fn push_ring(&mut self, symbol: usize, ring: &Arc<RingTrades>, pos: usize, seq: u64, streamed: bool) {
        if ring.fields.len() == 1 {
            if let Some(f) = ring.fields.first() {
                let uuid = (ring.uuid_head & !UUID_TAIL_MASK) | (u128::from(seq) & UUID_TAIL_MASK);
                self.push_single(symbol, uuid, f, streamed);
            }
            return;
        }
        let Some(b) = self.symbols.get_mut(symbol) else {
            return;
        };
        let Ok(pos) = u32::try_from(pos) else {
            return;
        };
        if let Some(Entry::Run(r)) = b.entries.last_mut() {
            let continues = Arc::ptr_eq(&r.ring, ring)
                && r.streamed == streamed
                && r.seq0.wrapping_add(u64::from(r.count)) == seq
                && r.pos0 + r.count == pos;
            if continues {
                r.count += 1;
                self.trades += 1;
                return;
            }
        }
        b.entries.push(Entry::Run(Run { ring: Arc::clone(ring), seq0: seq, pos0: pos, count: 1, streamed }));
        self.trades += 1;
    }

    /// A trade outside any ring (paced mode, `Oversized`, outage), copied into the record.
    pub(crate) fn push_single(&mut self, symbol: usize, uuid: u128, f: &TradeFields, streamed: bool) {
        let Some(b) = self.symbols.get_mut(symbol) else {
            return;
        };
        let (price, size) = (f.price(), f.size());
        let (Ok(price_len), Ok(size_len)) = (u16::try_from(price.len()), u16::try_from(size.len())) else {
            log::warn!("sim trade store: price or size text over 65535 bytes not stored");
            return;
        };
        let text_at = b.text.len() as u64;
        b.text.push_str(price);
        b.text.push_str(size);
        b.entries.push(Entry::Single(Single {
            uuid_hi: (uuid >> 64) as u64,
            uuid_lo: uuid as u64,
            time_exchange: f.time_exchange,
            time_coinapi: f.time_coinapi,
            text_at,
            price_len,
            size_len,
            side: f.side,
            streamed,
        }));
        self.trades += 1;
    }
}

/// Copies of stored trades taken under the lock, so answers are rendered without holding it.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    picked: Vec<Picked>,
    text: String,
}

#[derive(Debug, Clone, Copy)]
struct Picked {
    uuid: u128,
    time_exchange: i64,
    time_coinapi: i64,
    text_at: usize,
    price_len: u16,
    size_len: u16,
    side: &'static str,
    streamed: bool,
}

impl Selection {
    fn push(&mut self, v: &TradeView<'_>) {
        let text_at = self.text.len();
        self.text.push_str(v.price);
        self.text.push_str(v.size);
        self.picked.push(Picked {
            uuid: v.uuid,
            time_exchange: v.time_exchange,
            time_coinapi: v.time_coinapi,
            text_at,
            // Stored text lengths already fit u16.
            price_len: v.price.len() as u16,
            size_len: v.size.len() as u16,
            side: v.taker_side,
            streamed: v.streamed,
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.picked.len()
    }

    fn reverse(&mut self) {
        self.picked.reverse();
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = TradeView<'_>> {
        self.picked.iter().map(|p| {
            let mid = p.text_at + usize::from(p.price_len);
            let end = mid + usize::from(p.size_len);
            TradeView {
                uuid: p.uuid,
                time_exchange: p.time_exchange,
                time_coinapi: p.time_coinapi,
                price: self.text.get(p.text_at..mid).unwrap_or(""),
                size: self.text.get(mid..end).unwrap_or(""),
                taker_side: p.side,
                streamed: p.streamed,
            }
        })
    }
}

/// Per symbol (by index into `Shared::symbols`): the stored trades behind their own lock, so a
/// REST query on one symbol never blocks the generation of another.
#[derive(Debug)]
pub(crate) struct TradeStore {
    symbols: Vec<Mutex<SymbolTrades>>,
    capacity_per_symbol: usize,
}

impl TradeStore {
    pub(crate) fn new(n_symbols: usize, capacity_per_symbol: usize) -> TradeStore {
        TradeStore {
            symbols: (0..n_symbols).map(|_| Mutex::new(SymbolTrades::default())).collect(),
            capacity_per_symbol: capacity_per_symbol.max(1),
        }
    }

    /// Moves every trade of `batch` into the store (one lock per symbol with trades).
    pub(crate) fn append(&self, batch: &mut TradeBatch) {
        if batch.trades == 0 {
            return;
        }
        for (store, b) in self.symbols.iter().zip(&mut batch.symbols) {
            if !b.entries.is_empty() {
                store.lock().append(b, self.capacity_per_symbol);
            }
        }
        batch.trades = 0;
    }

    pub(crate) fn len(&self, symbol: usize) -> usize {
        self.symbols.get(symbol).map_or(0, |s| s.lock().len)
    }

    /// Every stored trade of a symbol, oldest first.
    pub(crate) fn all(&self, symbol: usize) -> Selection {
        let mut sel = Selection::default();
        if let Some(store) = self.symbols.get(symbol) {
            store.lock().for_each_from(0, |_, v| {
                sel.push(&v);
                true
            });
        }
        sel
    }

    /// The newest `limit` trades, newest first (by store order, which is generation order).
    pub(crate) fn latest(&self, symbol: usize, limit: usize) -> Selection {
        let mut sel = Selection::default();
        if let Some(store) = self.symbols.get(symbol) {
            let store = store.lock();
            store.for_each_from(store.len.saturating_sub(limit), |_, v| {
                sel.push(&v);
                true
            });
        }
        sel.reverse();
        sel
    }

    /// At most `limit` trades with `start_ns <= time_exchange < end_ns` (no end when `None`),
    /// oldest `time_exchange` first, trades with equal times in store order: `trades/history`.
    ///
    /// Two passes under the lock, so that a window of the whole store costs a scan of 16-byte
    /// keys rather than a copy of every trade: the first collects (time, index) of the matches
    /// and keeps the `limit` smallest, the second copies just those.
    pub(crate) fn history(&self, symbol: usize, start_ns: i128, end_ns: Option<i128>, limit: usize) -> Selection {
        let mut sel = Selection::default();
        let Some(store) = self.symbols.get(symbol) else {
            return sel;
        };
        let store = store.lock();
        let mut keys: Vec<(i64, usize)> = Vec::new();
        store.for_each_from(0, |i, v| {
            let t = i128::from(v.time_exchange) * 100;
            if t >= start_ns && end_ns.is_none_or(|end| t < end) {
                keys.push((v.time_exchange, i));
            }
            true
        });
        if keys.len() > limit {
            // Keys are unique (the index), so this is the stable order's first `limit`.
            keys.select_nth_unstable(limit);
            keys.truncate(limit);
        }
        keys.sort_unstable();
        let mut wanted: Vec<usize> = keys.iter().map(|&(_, i)| i).collect();
        wanted.sort_unstable();
        let (Some(&first), Some(&last)) = (wanted.first(), wanted.last()) else {
            return sel;
        };
        let mut next = 0;
        store.for_each_from(first, |i, v| {
            if wanted.get(next) == Some(&i) {
                sel.push(&v);
                next += 1;
            }
            i < last
        });
        drop(store);
        // `sel` is in store order; put it in key order.
        let picked = std::mem::take(&mut sel.picked);
        sel.picked = keys
            .iter()
            .filter_map(|(_, i)| wanted.binary_search(i).ok().and_then(|k| picked.get(k)).copied())
            .collect();
        sel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(t: i64, price: &str, size: &str) -> TradeFields {
        TradeFields::new(t, t + 7, format!("{price}{size}"), price.len(), 1)
    }

    fn ring(head: u128, n: usize) -> Arc<RingTrades> {
        Arc::new(RingTrades {
            uuid_head: head,
            fields: (0..n).map(|i| fields(1000 + i as i64, &format!("{i}.50"), "0.001")).collect(),
        })
    }

    fn uuids(sel: &Selection) -> Vec<u128> {
        sel.iter().map(|v| v.uuid).collect()
    }

    /// Records stay small: a paced trade is one 48-byte entry plus its text.
    #[test]
    fn entries_are_compact() {
        // The run fits around the single's `streamed` niche, so the enum needs no tag of its own.
        assert!(std::mem::size_of::<Entry>() <= 48, "{}", std::mem::size_of::<Entry>());
        assert!(std::mem::size_of::<Single>() <= 48, "{}", std::mem::size_of::<Single>());
    }

    /// Runs extend only with the next template and sequence of the same ring and streamed flag;
    /// reading expands them trade by trade with the right uuid tails and fields.
    #[test]
    fn runs_extend_and_expand() {
        let store = TradeStore::new(2, 1000);
        let r = ring(0xABCD << 64, 8);
        let mut b = TradeBatch::new(2);
        for (pos, seq) in [(0, 10), (1, 11), (2, 12), (4, 14), (5, 15)] {
            b.push_ring(1, &r, pos, seq, true);
        }
        b.push_ring(1, &r, 6, 16, false);
        assert_eq!(b.symbols[1].entries.len(), 3);
        store.append(&mut b);
        assert_eq!(b.trades, 0);
        assert_eq!(store.len(1), 6);
        assert_eq!(store.len(0), 0);
        let all = store.all(1);
        let tails: Vec<u128> = uuids(&all).iter().map(|u| u & UUID_TAIL_MASK).collect();
        assert_eq!(tails, [10, 11, 12, 14, 15, 16]);
        let v: Vec<TradeView<'_>> = all.iter().collect();
        assert_eq!(v[3].price, "4.50");
        assert_eq!(v[3].size, "0.001");
        assert_eq!(v[3].time_exchange, 1004);
        assert_eq!(v[3].time_coinapi, 1011);
        assert_eq!(v[3].taker_side, "SELL");
        assert!(v[4].streamed && !v[5].streamed);
        assert_eq!(v[0].uuid >> 64, 0xABCD);
    }

    /// The bound holds per symbol: the oldest trades go first, runs are trimmed from their head
    /// and the text arena of evicted singles is released.
    #[test]
    fn eviction_keeps_the_newest() {
        let store = TradeStore::new(1, 5);
        let r = ring(0, 4);
        let mut b = TradeBatch::new(1);
        for i in 0..3u128 {
            b.push_single(0, i, &fields(i as i64, "1", "2"), true);
        }
        for pos in 0..4 {
            b.push_ring(0, &r, pos, 100 + pos as u64, true);
        }
        store.append(&mut b);
        assert_eq!(store.len(0), 5);
        let tails: Vec<u128> = uuids(&store.all(0)).iter().map(|u| u & UUID_TAIL_MASK).collect();
        assert_eq!(tails, [2, 100, 101, 102, 103]);
        for round in 0..20_000u128 {
            b.push_single(0, 1000 + round, &fields(round as i64, "123.456", "0.5"), round % 2 == 0);
            store.append(&mut b);
        }
        let s = store.symbols[0].lock();
        assert_eq!(s.len, 5);
        assert!(s.text.len() < 2 * TEXT_COMPACT_MIN + 100, "arena {}", s.text.len());
        drop(s);
        let all = store.all(0);
        assert_eq!(uuids(&all), (20_995..21_000).collect::<Vec<u128>>());
        assert!(all.iter().all(|v| v.price == "123.456" && v.size == "0.5"));
    }

    /// `latest` is newest first and bounded; `history` is inclusive of its start, exclusive of
    /// its end, oldest exchange time first with ties in store order, and keeps the first `limit`.
    #[test]
    fn latest_and_window() {
        let store = TradeStore::new(1, 100);
        let mut b = TradeBatch::new(1);
        // Exchange times out of store order, with ties.
        for (i, t) in [5i64, 3, 4, 3, 9, 1].iter().enumerate() {
            b.push_single(0, i as u128, &fields(*t, "1", "1"), true);
        }
        store.append(&mut b);
        assert_eq!(uuids(&store.latest(0, 2)), [5, 4]);
        assert_eq!(uuids(&store.latest(0, 100)), [5, 4, 3, 2, 1, 0]);
        assert_eq!(uuids(&store.history(0, 300, Some(900), 100)), [1, 3, 2, 0]);
        assert_eq!(uuids(&store.history(0, 300, Some(900), 3)), [1, 3, 2]);
        assert_eq!(uuids(&store.history(0, 300, Some(900), 1)), [1]);
        assert_eq!(uuids(&store.history(0, 301, None, 100)), [2, 0, 4]);
        assert_eq!(uuids(&store.history(0, i128::MIN, None, 100)), [5, 1, 3, 2, 0, 4]);
        assert!(store.history(0, 10_000, None, 100).iter().next().is_none());
        assert!(store.history(0, 0, None, 0).iter().next().is_none());
        assert!(store.all(7).iter().next().is_none(), "unknown index answers nothing");
    }
}
