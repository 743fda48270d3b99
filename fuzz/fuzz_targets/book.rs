//! Differential target for the `book` message path: each input line that `wire::decode` takes
//! for a `book` message is read by `wire::book::parse` (held to serde_json's reading of the same
//! object: the same verdict, each level's exact price and size texts, the times) and applied to
//! an `L2Book` at depth 5 with 8 levels per side, beside a reference book keyed by the slow
//! exact decimal (`coinfeed_fuzz`). After every message both books must hold the same levels,
//! best first, with the same texts, give the same verdict, and agree on a cross.

#![no_main]

use std::cmp::Ordering;
use std::collections::BTreeMap;

use coinfeed::wire::{self, book, DataType};
use coinfeed::worker::book::decimal::NumberError;
use coinfeed::worker::book::{L2Book, Rejection, NUMBER_TEXT_MAX};
use coinfeed_fuzz::{compare, decimal, key_of, object, parts, string, Decimal, Entries, Refusal};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

/// One side's levels, best first: each level's price and size texts.
type Levels = Vec<(String, String)>;

const DEPTH: usize = 5;
const MAX_LEVELS: usize = 8;

/// The reference key: an exact value ordered by `compare`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key(Decimal);
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        compare(&self.0, &other.0)
    }
}

#[derive(Default)]
struct RefBook {
    bids: BTreeMap<Key, (String, String)>,
    asks: BTreeMap<Key, (String, String)>,
}

fn trim(side: &mut BTreeMap<Key, (String, String)>, bids: bool) {
    while side.len() > MAX_LEVELS {
        if bids {
            side.pop_first();
        } else {
            side.pop_last();
        }
    }
}

/// What the reference says of one level: its key and whether its size is zero, or the refusal.
fn check_level(price: &str, size: &str, snapshot: bool) -> Result<(Key, bool), Rejection> {
    let refusal = |r: Refusal| match r {
        Refusal::NotANumber => NumberError::NotANumber,
        Refusal::Unrepresentable => NumberError::Unrepresentable,
    };
    if price.len() > NUMBER_TEXT_MAX {
        return Err(Rejection::Price(NumberError::Unrepresentable));
    }
    if size.len() > NUMBER_TEXT_MAX {
        return Err(Rejection::Size(NumberError::Unrepresentable));
    }
    let key = key_of(price).map_err(|r| Rejection::Price(refusal(r)))?;
    let zero = match decimal(size).map_err(|r| Rejection::Size(refusal(r)))? {
        Decimal::NonZero { negative: true, .. } => return Err(Rejection::NegativeSize),
        Decimal::Zero if snapshot => return Err(Rejection::SnapshotSizeNotPositive),
        Decimal::Zero => true,
        Decimal::NonZero { .. } => false,
    };
    Ok((Key(key), zero))
}

impl RefBook {
    fn apply(&mut self, snapshot: bool, bids: &[book::Level<'_>], asks: &[book::Level<'_>]) -> Result<(), Rejection> {
        let mut checked = Vec::new();
        for (is_bids, levels) in [(true, bids), (false, asks)] {
            for l in levels {
                let (key, zero) = check_level(l.price, l.size, snapshot)?;
                checked.push((is_bids, key, zero, l.price.to_string(), l.size.to_string()));
            }
        }
        if snapshot {
            *self = RefBook::default();
        }
        for (is_bids, key, zero, price, size) in checked {
            let side = if is_bids { &mut self.bids } else { &mut self.asks };
            if zero {
                side.remove(&key);
            } else {
                // An existing level keeps its first key's place, takes the new texts.
                side.insert(key, (price, size));
            }
            if snapshot {
                trim(side, is_bids);
            }
        }
        trim(&mut self.bids, true);
        trim(&mut self.asks, false);
        Ok(())
    }

    fn levels(&self) -> (Levels, Levels) {
        (self.bids.values().rev().cloned().collect(), self.asks.values().cloned().collect())
    }

    fn crossed(&self) -> bool {
        match (self.bids.keys().next_back(), self.asks.keys().next()) {
            (Some(b), Some(a)) => b >= a,
            _ => false,
        }
    }
}

/// serde_json's reading of a side: absent or null is empty; otherwise an array of levels, each
/// an object with `price` and `size` once (other fields ignored) or a two-element array (the
/// sequence form serde's derive accepts for a struct). Values as their raw texts.
fn reference_side(entries: &Entries, name: &str) -> Result<Levels, ()> {
    let Some(raw) = entries.once_raw(name)? else { return Ok(Vec::new()) };
    if raw.get() == "null" {
        return Ok(Vec::new());
    }
    let items: Vec<Box<RawValue>> = serde_json::from_str(raw.get()).map_err(|_| ())?;
    items
        .iter()
        .map(|item| {
            if let Some(e) = object(item.get().as_bytes()) {
                return match (e.once_raw("price")?, e.once_raw("size")?) {
                    (Some(p), Some(s)) => Ok((p.get().to_string(), s.get().to_string())),
                    _ => Err(()),
                };
            }
            match serde_json::from_str::<Vec<Box<RawValue>>>(item.get()) {
                Ok(pair) if pair.len() == 2 => Ok((pair[0].get().to_string(), pair[1].get().to_string())),
                _ => Err(()),
            }
        })
        .collect()
}

fn check_parse(frame: &str, parsed: &Result<book::BookFields<'_>, String>) {
    let entries = object(frame.as_bytes()).expect("decode took it: an object");
    let want = (|| {
        let bids = reference_side(&entries, "bids")?;
        let asks = reference_side(&entries, "asks")?;
        let te = entries.once_raw("time_exchange")?.and_then(string);
        let tc = entries.once_raw("time_coinapi")?.and_then(string);
        Ok::<_, ()>((bids, asks, te, tc))
    })();
    match (parsed, want) {
        (Ok(got), Ok((bids, asks, te, tc))) => {
            for (levels, want) in [(&got.bids, bids), (&got.asks, asks)] {
                let got: Levels = levels.iter().map(|l| (l.price.to_string(), l.size.to_string())).collect();
                assert_eq!(got, want, "{frame:?}");
            }
            let text = |raw: Option<&str>| raw.map(|r| serde_json::from_str::<String>(r).expect("a JSON string"));
            assert_eq!(text(got.time_exchange), te, "{frame:?}");
            assert_eq!(text(got.time_coinapi), tc, "{frame:?}");
        }
        (Err(_), Err(())) => {}
        (got, want) => panic!("{frame:?}: book::parse says {got:?}, serde_json says {want:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut l2 = L2Book::default();
    let mut reference = RefBook::default();
    for line in parts(data, b'\n', 64) {
        let Ok(frame) = std::str::from_utf8(line) else { continue };
        let Ok(decoded) = wire::decode(frame) else { continue };
        if decoded.data_type != DataType::Book {
            continue;
        }
        let parsed = book::parse(frame);
        check_parse(frame, &parsed);
        let Ok(fields) = parsed else { continue };
        let snapshot = decoded.is_snapshot.unwrap_or(false);
        let got = l2.apply(snapshot, &fields.bids, &fields.asks, DEPTH, MAX_LEVELS).map(|_| ());
        let want = reference.apply(snapshot, &fields.bids, &fields.asks);
        assert_eq!(got, want, "{frame:?}");
        let texts = |bids: bool| -> Levels {
            let side = if bids { &l2.bids } else { &l2.asks };
            side.best_first(bids).map(|(_, l)| (l.price().to_string(), l.size().to_string())).collect()
        };
        let (want_bids, want_asks) = reference.levels();
        assert_eq!(texts(true), want_bids, "{frame:?}");
        assert_eq!(texts(false), want_asks, "{frame:?}");
        assert_eq!(l2.is_crossed(), reference.crossed(), "{frame:?}");
        let mut top = Vec::new();
        l2.render_top(DEPTH, &mut top);
        // The levels' texts passed the number checks: the top view is valid JSON.
        let view = [&b"{"[..], &top[..], b"}"].concat();
        // IgnoredAny: JSON grammar only (a `Value` refuses numbers beyond f64, which keys hold).
        let valid = serde_json::from_slice::<serde::de::IgnoredAny>(&view).is_ok();
        assert!(valid, "{:?}", String::from_utf8_lossy(&view));
    }
});
