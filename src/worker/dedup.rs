//! Trade de-duplication for one symbol: a bounded memory of its recent trade ids,
//! case-insensitive (real WebSocket captures carry lower-case uuids, the documentation shows
//! upper case, REST sends lower case; exchanges sometimes send one trade twice). The memory lives
//! in the symbol's entry of the worker's state table (`symbols.rs`), which sets its depth.
//!
//! Pure: no IO, no clock.

use std::collections::VecDeque;

use rustc_hash::FxHashSet;

use crate::config::limits::MAX_TRADE_ID_LEN;

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

/// A non-canonical trade id as a 128-bit key: FNV-1a (128-bit) of its lower-case bytes, so one
/// FIFO of plain `u128`s holds every id at a fixed 16 bytes (no allocation per id, one bound).
/// Two distinct ids in a memory of 1,000 share a key with a probability of about 2^-109: far
/// below any other way to lose a trade.
fn hash_id(id: &str) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    id.bytes().fold(OFFSET, |h, b| (h ^ u128::from(b.to_ascii_lowercase())).wrapping_mul(PRIME))
}

/// One symbol's recent trade ids in arrival order, with a set for lookups; the oldest goes when
/// the memory is full. Canonical uuids are kept as their value, other ids as `hash_id`.
///
/// Both parts are sized once, at the first id, so the memory never grows past its bound: the
/// FIFO exactly to `capacity`, the set to twice it, so that however many evictions leave
/// tombstones the table is rehashed in place (it holds at most half its capacity) rather than
/// grown. That fixes the cost of an id at `TRADE_ID_BYTES` at most (a test holds it).
///
/// Each id keeps its trade's exchange time beside it (`times`, in the same order), so a recovery
/// window can pin the ids the stream delivered inside it before they are evicted.
#[derive(Debug, Default)]
pub struct RecentIds {
    order: VecDeque<u128>,
    times: VecDeque<i64>,
    set: FxHashSet<u128>,
}

/// A trade id as the fixed 16-byte key every id memory uses; `None` for an id that identifies
/// nothing reliably (empty, or longer than `MAX_TRADE_ID_LEN`).
pub fn id_key(id: &str) -> Option<u128> {
    match parse_uuid(id) {
        Some(value) => Some(value),
        // An empty id identifies nothing: remembering it would drop every later id-less trade.
        None if id.is_empty() || id.len() > MAX_TRADE_ID_LEN => None,
        None => Some(hash_id(id)),
    }
}

impl RecentIds {
    /// Classifies `id` and remembers it if new; `capacity` is the memory's depth.
    pub fn insert(&mut self, id: &str, capacity: usize) -> TradeId {
        match id_key(id) {
            Some(key) => self.insert_key(key, i64::MIN, capacity),
            None => TradeId::Unremembered,
        }
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: u128) -> bool {
        self.set.contains(&key)
    }

    /// The trade time of the oldest id still remembered, once the memory is full (ids older
    /// than it have been forgotten); `None` while nothing was evicted yet.
    pub fn forgotten_before(&self, capacity: usize) -> Option<i64> {
        if self.order.len() < capacity {
            return None;
        }
        self.times.front().copied().filter(|&t| t != i64::MIN)
    }

    /// The remembered ids with their trade times (`i64::MIN`: unknown), oldest first.
    pub fn keys_with_times(&self) -> impl Iterator<Item = (u128, i64)> + '_ {
        self.order.iter().copied().zip(self.times.iter().copied())
    }

    /// Classifies the id `key` of a trade at `time_ns` (`i64::MIN`: unknown) and remembers it
    /// if new.
    pub fn insert_key(&mut self, key: u128, time_ns: i64, capacity: usize) -> TradeId {
        if self.set.contains(&key) {
            return TradeId::Seen;
        }
        if self.order.capacity() == 0 {
            self.order = VecDeque::with_capacity(capacity);
            self.times = VecDeque::with_capacity(capacity);
            self.set = FxHashSet::with_capacity_and_hasher(2 * capacity, Default::default());
        }
        // Once the memory is full, pushing reuses the space of the evicted id: no allocation in
        // the steady state.
        if self.order.len() >= capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.times.pop_front();
                self.set.remove(&oldest);
            }
        }
        self.order.push_back(key);
        self.times.push_back(time_ns);
        self.set.insert(key);
        TradeId::New
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
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
        assert_ne!(hash_id("trade-42"), hash_id("trade-43"));
    }

    /// Proves `TRADE_ID_BYTES` bounds what an id costs at every depth a page size can ask for,
    /// after heavy churn (the worst case for tombstones).
    #[test]
    fn an_id_never_costs_more_than_trade_id_bytes() {
        use crate::config::limits::TRADE_ID_BYTES;
        for capacity in [256usize, 257, 511, 958, 1000, 1025, 4097, 20_000] {
            let mut ids = RecentIds::default();
            for i in 0..(capacity as u128 * 20) {
                ids.insert(&format!("{:08x}-0000-4000-8000-{:012x}", i >> 48, i & 0xffff_ffff_ffff), capacity);
            }
            assert_eq!(ids.len(), capacity);
            // hashbrown: a bucket per slot (16 bytes) plus a control byte; capacity is 7/8 of
            // the buckets.
            let buckets = (ids.set.capacity() * 8 / 7).next_power_of_two();
            let bytes = ids.order.capacity() * 16 + ids.times.capacity() * 8 + buckets * 17;
            assert!(bytes <= capacity * TRADE_ID_BYTES, "{capacity}: {bytes} bytes = {} per id", bytes / capacity);
        }
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
        // Churn: the memory's allocations never grow, whatever the evictions.
        let (order_cap, set_cap) = (ids.order.capacity(), ids.set.capacity());
        for i in 0..50_000u128 {
            ids.insert(&id(i + 1_000), n as usize);
        }
        assert_eq!((ids.order.capacity(), ids.set.capacity()), (order_cap, set_cap));
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
