//! Trade de-duplication for one symbol: a bounded memory of its recent trade ids,
//! case-insensitive (real WebSocket captures carry lower-case uuids, the documentation shows
//! upper case, REST sends lower case; exchanges sometimes send one trade twice). The memory lives
//! in the symbol's entry of the worker's state table (`symbols.rs`), which sets its depth.
//!
//! Pure: no IO, no clock.

use std::borrow::{Borrow, Cow};
use std::collections::VecDeque;
use std::hash::Hash;

use rustc_hash::FxHashSet;

/// Longest non-canonical trade id remembered. Longer ids are treated as new (and counted as
/// untracked): writing a rare duplicate is better than storing unbounded strings or truncating
/// ids into false matches that would drop real trades.
pub const MAX_TRADE_ID_LEN: usize = 128;

/// What a trade id means for its symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TradeId {
    /// Not seen recently: write the trade (the id is now remembered).
    New,
    /// Already written: skip it.
    Seen,
    /// An id that identifies nothing reliably (empty, or longer than `MAX_TRADE_ID_LEN`): write
    /// the trade, remember nothing.
    Unremembered,
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
pub struct RecentIds {
    uuids: Fifo<u128>,
    others: Fifo<Box<str>>,
}

impl RecentIds {
    /// Classifies `id` and remembers it if new; `capacity` is the FIFO depth of each kind.
    pub fn insert(&mut self, id: &str, capacity: usize) -> TradeId {
        match parse_uuid(id) {
            Some(value) => {
                if self.uuids.contains(&value) {
                    return TradeId::Seen;
                }
                self.uuids.push(value, capacity);
            }
            // An empty id identifies nothing: remembering it would drop every later id-less trade.
            None if id.is_empty() || id.len() > MAX_TRADE_ID_LEN => return TradeId::Unremembered,
            None => {
                let key: Cow<'_, str> = if id.bytes().any(|c| c.is_ascii_uppercase()) {
                    Cow::Owned(id.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(id)
                };
                if self.others.contains(key.as_ref()) {
                    return TradeId::Seen;
                }
                self.others.push(key.into_owned().into_boxed_str(), capacity);
            }
        }
        TradeId::New
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.uuids.order.len() + self.others.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID_WS: &str = "770C7A3B-7258-4441-8182-83740F3E2457";
    const UUID_REST: &str = "770c7a3b-7258-4441-8182-83740f3e2457";

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
    fn dedup_is_case_insensitive() {
        // Proves a WebSocket (upper case) and a REST (lower case) copy of one trade count once,
        // for canonical and non-canonical ids; empty and over-long ids are never remembered.
        let long = "x".repeat(MAX_TRADE_ID_LEN + 1);
        let cases: &[(&str, TradeId)] = &[
            (UUID_WS, TradeId::New),
            (UUID_WS, TradeId::Seen),
            (UUID_REST, TradeId::Seen),
            ("Trade-42", TradeId::New),
            ("TRADE-42", TradeId::Seen),
            ("trade-42", TradeId::Seen),
            ("trade-43", TradeId::New),
            ("", TradeId::Unremembered),
            ("", TradeId::Unremembered),
            (&long, TradeId::Unremembered),
            (&long, TradeId::Unremembered),
        ];
        let mut ids = RecentIds::default();
        for (i, (id, want)) in cases.iter().enumerate() {
            assert_eq!(ids.insert(id, 16), *want, "case {i}: {id}");
        }
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn dedup_forgets_the_oldest_first_within_its_bound() {
        // Proves the memory keeps exactly the last N ids, evicting in arrival order.
        let n = 8u128;
        let mut ids = RecentIds::default();
        let id = |i: u128| {
            let h = format!("{i:032x}");
            format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
        };
        for i in 0..n + 3 {
            assert_eq!(ids.insert(&id(i), n as usize), TradeId::New);
        }
        for i in 3..n + 3 {
            assert_eq!(ids.insert(&id(i), n as usize), TradeId::Seen, "uuid {i} is among the last {n}");
        }
        for i in 0..3 {
            assert_eq!(ids.insert(&id(i), n as usize), TradeId::New, "uuid {i} was evicted");
        }
        let mut others = RecentIds::default();
        for (id, want) in [
            ("x1", TradeId::New),
            ("x2", TradeId::New),
            ("x3", TradeId::New),
            ("x1", TradeId::New),
            ("x3", TradeId::Seen),
        ] {
            assert_eq!(others.insert(id, 2), want, "{id}");
        }
    }
}
