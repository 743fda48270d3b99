//! End-to-end tests of the shared order book model over 127.0.0.1: an exact client-side applier
//! of `book` messages (number text as keys, compared numerically) checked against the oracle log
//! after every message, REST and `book5` against the same model, the book faults, and the price
//! spellings. Every wait has a deadline.

use std::cmp::Ordering;

use super::*;

const BTC: &str = "BITSTAMP_SPOT_BTC_USD";
const XRP: &str = "KRAKEN_SPOT_XRP_EUR";

fn hello(types: &[&str], symbols: &[&str]) -> String {
    let types: Vec<String> = types.iter().map(|t| format!("\"{t}\"")).collect();
    let filter: Vec<String> = symbols.iter().map(|s| format!("\"{s}$\"")).collect();
    format!(
        r#"{{"type":"hello","apikey":"k","heartbeat":false,"subscribe_data_type":[{}],"subscribe_filter_symbol_id":[{}]}}"#,
        types.join(","),
        filter.join(",")
    )
}

/// The raw `(price, size)` texts of a compact message's `asks` or `bids` array, in order.
fn raw_levels(text: &str, side: &str) -> Vec<(String, String)> {
    let pat = format!("\"{side}\":[");
    let Some(at) = text.find(&pat) else {
        return Vec::new();
    };
    let rest = &text[at + pat.len()..];
    let inner = &rest[..rest.find(']').unwrap_or(rest.len())];
    if inner.is_empty() {
        return Vec::new();
    }
    inner
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split("},{")
        .map(|level| {
            let level = level.trim_start_matches("\"price\":");
            let (price, size) = level.split_once(",\"size\":").unwrap_or((level, ""));
            (price.to_string(), size.to_string())
        })
        .collect()
}

/// A canonical decimal ordered by value (non-negative values: prices).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Dec(String);

impl Dec {
    fn parts(&self) -> (&str, &str) {
        self.0.split_once('.').unwrap_or((&self.0, ""))
    }
}

impl Ord for Dec {
    fn cmp(&self, other: &Dec) -> Ordering {
        let ((ai, af), (bi, bf)) = (self.parts(), other.parts());
        // Canonical: no leading zeros in the integer part, no trailing ones in the fraction.
        ai.len().cmp(&bi.len()).then_with(|| ai.cmp(bi)).then_with(|| af.cmp(bf))
    }
}

impl PartialOrd for Dec {
    fn partial_cmp(&self, other: &Dec) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A canonical non-negative decimal truncated to 8 fractional digits, as an integer.
fn units8(canonical: &str) -> u128 {
    let (int, frac) = canonical.split_once('.').unwrap_or((canonical, ""));
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(8).collect();
    format!("{int}{frac}").parse().unwrap_or_else(|e| panic!("not a decimal {canonical:?}: {e}"))
}

/// An exact `book` client: snapshots replace, deltas set absolute sizes (0 removes), deltas
/// before the first snapshot are discarded, negative sizes are ignored.
#[derive(Debug, Default, Clone)]
struct Applier {
    asks: BTreeMap<Dec, String>,
    bids: BTreeMap<Dec, String>,
    synced: bool,
}

impl Applier {
    /// Applies one message; returns the number of negative-size entries ignored.
    fn apply(&mut self, text: &str) -> usize {
        self.apply_sides(text, &["asks", "bids"])
    }

    fn apply_sides(&mut self, text: &str, sides: &[&str]) -> usize {
        if text.contains("\"is_snapshot\":true") {
            self.asks.clear();
            self.bids.clear();
            self.synced = true;
        } else if !self.synced {
            return 0;
        }
        let mut negatives = 0;
        for side in sides {
            for (price, size) in raw_levels(text, side) {
                let size = canonical_decimal(&size);
                if size.starts_with('-') {
                    negatives += 1;
                    continue;
                }
                let book = if *side == "asks" { &mut self.asks } else { &mut self.bids };
                let key = Dec(canonical_decimal(&price));
                if size == "0" {
                    book.remove(&key);
                } else {
                    book.insert(key, size);
                }
            }
        }
        negatives
    }

    fn digest(&self, depth: usize) -> u64 {
        let bids: Vec<(&str, &str)> =
            self.bids.iter().rev().take(depth).map(|(p, s)| (p.0.as_str(), s.as_str())).collect();
        let asks: Vec<(&str, &str)> = self.asks.iter().take(depth).map(|(p, s)| (p.0.as_str(), s.as_str())).collect();
        book_top_digest(&bids, &asks)
    }

    fn crossed(&self) -> bool {
        matches!((self.bids.keys().next_back(), self.asks.keys().next()), (Some(b), Some(a)) if b >= a)
    }

    fn best_ask(&self) -> Option<Dec> {
        self.asks.keys().next().cloned()
    }
}

/// The connection number of the `n`-th WebSocket connection (from 1).
fn ws_conn(sim: &Sim, n: usize) -> u64 {
    let events = sim.events();
    let conns: Vec<u64> =
        events.iter().filter(|e| matches!(e.kind, EventKind::WsConnected { .. })).map(|e| e.conn).collect();
    conns.get(n - 1).copied().unwrap_or_else(|| panic!("no connection {n}: {conns:?}"))
}

/// The oracle entries of one connection and symbol, by sequence.
fn oracle_of(sim: &Sim, conn: u64, symbol: &str) -> BTreeMap<u64, BookOracleEntry> {
    sim.book_oracle().into_iter().filter(|e| e.conn == conn && e.symbol_id == symbol).map(|e| (e.sequence, e)).collect()
}

/// Next data message of type `book` (others are skipped).
fn next_book(c: &mut Client) -> String {
    loop {
        let t = c.data(1).remove(0);
        if msg_type(&json(&t)) == "book" {
            return t;
        }
    }
}

fn seq_of(text: &str) -> u64 {
    json(text)["sequence"].as_u64().unwrap_or_else(|| panic!("no sequence in {text}"))
}

/// Over 20,000 `book` messages of two symbols (the stream goes on: faults injected as the client
/// reads land even when the simulator is ahead), with mid-stream snapshots, a gap, a sweep, a
/// cross, a negative size and a level flood along the way, an exact client agrees with the
/// oracle after every message at every depth; the same price level shows up spelled in more than
/// one way, and long prices with 28 and 29 significant digits.
#[test]
fn exact_client_agrees_with_the_oracle() {
    let depths = vec![1, 5, 20];
    let sim = start(SimConfig {
        rate_per_sec: 10_000,
        book_levels: 20,
        book_snapshot_every: 97,
        book_oracle_depths: depths.clone(),
        ..SimConfig::default()
    });
    let mut c = Client::connect(&sim);
    c.send(&hello(&["book"], &[BTC, XRP]));
    let mut books: BTreeMap<String, Applier> = BTreeMap::new();
    let mut received: Vec<(String, u64, Vec<u64>, bool)> = Vec::new();
    let mut spellings: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    let (mut snapshots, mut negatives, mut widest, mut deepest, mut crossed_seen) = (0, 0, 0, 0, 0);
    // The simulator runs ahead of this reader by what the socket buffers hold: inject early and
    // read until every fault has shown.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while i < 20_000 || negatives == 0 || deepest < 740 || crossed_seen == 0 {
        assert!(
            Instant::now() < deadline,
            "faults not all seen after {i} messages: negative sizes {negatives}, deepest {deepest}, crossed {crossed_seen}"
        );
        match i {
            500 => sim.inject(WsFault::BookSweep { symbol_id: BTC.to_string() }),
            1000 => sim.inject(WsFault::BookCross { symbol_id: XRP.to_string(), duration: Duration::from_millis(50) }),
            1500 => sim.inject(WsFault::GapOn { symbol_id: BTC.to_string(), skip: 2 }),
            2000 => sim.inject(WsFault::BookNegativeSize { symbol_id: XRP.to_string() }),
            2500 => sim.inject(WsFault::BookLevelFlood { symbol_id: BTC.to_string(), levels: 700 }),
            // A fault can be hidden: a mid-stream snapshot that lands inside the flood resets
            // the client's book to the snapshot's 20 levels a side. Ask again for what is missing.
            n if n >= 5000 && n % 2500 == 0 => {
                if negatives == 0 {
                    sim.inject(WsFault::BookNegativeSize { symbol_id: XRP.to_string() });
                }
                if deepest < 740 {
                    sim.inject(WsFault::BookLevelFlood { symbol_id: BTC.to_string(), levels: 700 });
                }
                if crossed_seen == 0 {
                    let duration = Duration::from_millis(50);
                    sim.inject(WsFault::BookCross { symbol_id: XRP.to_string(), duration });
                }
            }
            _ => {}
        }
        i += 1;
        let t = c.text();
        let symbol = if t.contains(BTC) { BTC } else { XRP }.to_string();
        snapshots += usize::from(t.contains("\"is_snapshot\":true"));
        let mut levels = 0;
        for side in ["asks", "bids"] {
            for (price, _) in raw_levels(&t, side) {
                levels += 1;
                spellings.entry(canonical_decimal(&price)).or_default().insert(price);
            }
        }
        widest = widest.max(levels);
        let book = books.entry(symbol.clone()).or_default();
        negatives += book.apply(&t);
        deepest = deepest.max(book.asks.len() + book.bids.len());
        let digests: Vec<u64> = depths.iter().map(|d| book.digest(*d)).collect();
        crossed_seen += usize::from(book.crossed());
        received.push((symbol, seq_of(&t), digests, book.crossed()));
    }
    let conn = ws_conn(&sim, 1);
    let oracles: BTreeMap<&str, BTreeMap<u64, BookOracleEntry>> =
        [BTC, XRP].iter().map(|s| (*s, oracle_of(&sim, conn, s))).collect();
    for (symbol, seq, digests, crossed) in &received {
        let entry = &oracles[symbol.as_str()][seq];
        assert_eq!(&entry.digests, digests, "{symbol} sequence {seq}");
        assert_eq!(entry.crossed, *crossed, "{symbol} sequence {seq}");
    }
    assert!(sim.book_oracle().len() >= received.len());
    assert_eq!(sim.book_oracle_dropped(), 0);
    assert!(snapshots >= 200, "{snapshots} snapshots");
    assert!(negatives >= 1, "the negative size arrived");
    assert!(widest > 40 && widest <= 200, "the flood came in deltas of at most 200 levels: {widest}");
    assert!(deepest >= 740, "the flooded levels arrived: {deepest}");
    let respelled = spellings.values().filter(|s| s.len() >= 2).count();
    assert!(respelled > 10, "{respelled} levels spelled two ways");
    let digits = |p: &str| p.trim_start_matches(['0', '.']).replace('.', "").len();
    let long: HashSet<usize> = spellings.values().flatten().map(|p| digits(p)).filter(|d| *d >= 28).collect();
    assert_eq!(long, HashSet::from([28, 29]), "long prices");
}

/// Prices, and sizes to 1e-8, of the REST book's side as pretty-printed.
fn rest_side(body: &str, side: &str) -> Vec<(String, u128)> {
    let at = body.find("\"bids\"").expect("bids in the REST book");
    let part = if side == "asks" { &body[..at] } else { &body[at..] };
    let prices = raw_values(part, "price");
    let sizes = raw_values(part, "size");
    prices.iter().zip(&sizes).map(|(p, s)| (canonical_decimal(p), units8(&canonical_decimal(s)))).collect()
}

fn applier_side(book: &Applier, side: &str, n: usize) -> Vec<(String, u128)> {
    let pair = |(p, s): (&Dec, &String)| (p.0.clone(), units8(s));
    match side {
        "asks" => book.asks.iter().take(n).map(pair).collect(),
        _ => book.bids.iter().rev().take(n).map(pair).collect(),
    }
}

/// The `book` stream, `book5` and REST `orderbooks/current` show one model: once a connection's
/// messages stop, its applied book is what REST serves; a `book5` stream on another connection
/// then moves the same model, and its last snapshot is REST's top 5.
#[test]
fn book_book5_and_rest_share_one_model() {
    let sim = start(SimConfig { rate_per_sec: 2000, max_messages: Some(300), ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(&hello(&["book"], &[BTC]));
    let mut book = Applier::default();
    for t in c.data(300) {
        book.apply(&t);
    }
    let mut http = Http::connect(&sim);
    let r = http.get(&format!("/v1/orderbooks/{BTC}/current?limit_levels=20"), Some(KEY));
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("is_snapshot") && !r.body.contains("sequence"), "{}", r.body);
    for side in ["asks", "bids"] {
        let rest = rest_side(&r.body, side);
        assert_eq!(rest.len(), 20);
        assert_eq!(rest, applier_side(&book, side, 20), "{side}");
    }

    let mut c2 = Client::connect(&sim);
    c2.send(&hello(&["book5"], &[BTC]));
    let frames = c2.data(300);
    let last = frames.last().expect("book5 frames");
    let r = http.get(&format!("/v1/orderbooks/{BTC}/current?limit_levels=5"), Some(KEY));
    let mut top5 = Applier::default();
    top5.apply(last);
    for side in ["asks", "bids"] {
        assert_eq!(rest_side(&r.body, side), applier_side(&top5, side, 5), "{side}");
    }
    // The model moved on under book5: the first connection's book is now stale.
    assert_ne!(applier_side(&book, "asks", 5), applier_side(&top5, "asks", 5));
}

/// Two connections streaming one symbol's `book` are views of one model: their first snapshots
/// (the model at two moments) share most levels, and each agrees with its own oracle entries.
#[test]
fn two_connections_see_one_model() {
    let sim = start(SimConfig { rate_per_sec: 200, book_oracle_depths: vec![20], ..SimConfig::default() });
    let mut a = Client::connect(&sim);
    a.send(&hello(&["book"], &[XRP]));
    let mut book_a = Applier::default();
    for _ in 0..20 {
        book_a.apply(&next_book(&mut a));
    }
    let mut b = Client::connect(&sim);
    b.send(&hello(&["book"], &[XRP]));
    let snapshot = next_book(&mut b);
    let mut book_b = Applier::default();
    book_b.apply(&snapshot);
    let prices_b: HashSet<&Dec> = book_b.asks.keys().chain(book_b.bids.keys()).collect();
    let shared = book_a.asks.keys().chain(book_a.bids.keys()).filter(|p| prices_b.contains(p)).count();
    assert!(shared >= 30, "{shared} of 40 levels shared");
    let mut last = (0, 0);
    for _ in 0..30 {
        let ta = next_book(&mut a);
        book_a.apply(&ta);
        let tb = next_book(&mut b);
        book_b.apply(&tb);
        last = (seq_of(&ta), seq_of(&tb));
    }
    let oracle_a = oracle_of(&sim, ws_conn(&sim, 1), XRP);
    let oracle_b = oracle_of(&sim, ws_conn(&sim, 2), XRP);
    assert_eq!(oracle_a[&last.0].digests, [book_a.digest(20)]);
    assert_eq!(oracle_b[&last.1].digests, [book_b.digest(20)]);
}

/// `BookDropDeltas` consumes sequence numbers without sending: one jump, and the client's book
/// disagrees with the oracle (which has no entries for the dropped ones) from then on.
#[test]
fn dropped_deltas_jump_and_leave_the_client_stale() {
    let sim = start(SimConfig { rate_per_sec: 1000, book_oracle_depths: vec![20], ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(&hello(&["book"], &[BTC]));
    let mut book = Applier::default();
    let mut prev = 0;
    for _ in 0..20 {
        let t = next_book(&mut c);
        book.apply(&t);
        prev = seq_of(&t);
    }
    let gaps = sim.gaps_emitted();
    sim.inject(WsFault::BookDropDeltas { symbol_id: BTC.to_string(), count: 5 });
    let deadline = Instant::now() + DEADLINE;
    let jumped = loop {
        assert!(Instant::now() < deadline, "no jump");
        let t = next_book(&mut c);
        book.apply(&t);
        let seq = seq_of(&t);
        if seq != prev + 1 {
            assert_eq!(seq, prev + 6);
            break seq;
        }
        prev = seq;
    };
    let mut later = Vec::new();
    for _ in 0..5 {
        let t = next_book(&mut c);
        book.apply(&t);
        later.push((seq_of(&t), book.digest(20)));
    }
    let oracle = oracle_of(&sim, ws_conn(&sim, 1), BTC);
    assert!((jumped - 5..jumped).all(|s| !oracle.contains_key(&s)), "no entries for dropped deltas");
    assert!(later.iter().all(|(seq, digest)| oracle[seq].digests[0] != *digest), "the client's book is stale");
    assert!(sim.gaps_emitted() > gaps);
}

/// `BookNegativeSize` puts one negative size in the next delta, on a level the book holds; the
/// rest applies and the oracle is the book without it.
#[test]
fn negative_size_in_one_delta() {
    let sim = start(SimConfig { rate_per_sec: 1000, book_oracle_depths: vec![20], ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(&hello(&["book"], &[BTC]));
    let mut book = Applier::default();
    for _ in 0..10 {
        book.apply(&next_book(&mut c));
    }
    sim.inject(WsFault::BookNegativeSize { symbol_id: BTC.to_string() });
    let deadline = Instant::now() + DEADLINE;
    let (seq, text) = loop {
        assert!(Instant::now() < deadline, "no negative size");
        let t = next_book(&mut c);
        let negative: Vec<(String, String)> =
            ["asks", "bids"].iter().flat_map(|s| raw_levels(&t, s)).filter(|(_, size)| size.starts_with('-')).collect();
        if let Some((price, size)) = negative.first() {
            assert_eq!(negative.len(), 1, "{t}");
            assert_eq!(size, "-0.5");
            let key = Dec(canonical_decimal(price));
            assert!(book.asks.contains_key(&key) || book.bids.contains_key(&key), "a held level: {t}");
            assert_eq!(json(&t)["is_snapshot"], false);
            assert_eq!(book.apply(&t), 1);
            break (seq_of(&t), t);
        }
        book.apply(&t);
    };
    let oracle = oracle_of(&sim, ws_conn(&sim, 1), BTC);
    assert_eq!(oracle[&seq].digests, [book.digest(20)], "{text}");
}

/// `BookDeltasBeforeSnapshot` makes a starting `book` stream send deltas first (sequences from 1,
/// then the snapshot), both on the first subscription and after unsubscribe + subscribe; the
/// oracle holds an empty book for them.
#[test]
fn deltas_before_the_snapshot() {
    let sim = start(SimConfig { rate_per_sec: 500, book_oracle_depths: vec![5], ..SimConfig::default() });
    sim.inject(WsFault::BookDeltasBeforeSnapshot { symbol_id: XRP.to_string(), count: 3 });
    let mut c = Client::connect(&sim);
    c.send(&hello(&["book"], &[XRP]));
    let first: Vec<Value> = (0..5).map(|_| json(&next_book(&mut c))).collect();
    let shape: Vec<(u64, bool)> =
        first.iter().map(|v| (v["sequence"].as_u64().unwrap_or(0), v["is_snapshot"] == true)).collect();
    assert_eq!(shape, [(1, false), (2, false), (3, false), (4, true), (5, false)]);
    let oracle = oracle_of(&sim, ws_conn(&sim, 1), XRP);
    assert_eq!(oracle[&1].digests, [book_top_digest(&[], &[])]);
    assert_ne!(oracle[&4].digests, [book_top_digest(&[], &[])]);

    // Injected while streaming: waits for the restart.
    sim.inject(WsFault::BookDeltasBeforeSnapshot { symbol_id: XRP.to_string(), count: 2 });
    for _ in 0..5 {
        assert_eq!(json(&next_book(&mut c))["is_snapshot"], false);
    }
    let filter = format!(r#""subscribe_filter_symbol_id":["{XRP}$"]"#);
    let unsubscribe = format!(r#"{{"type":"unsubscribe","subscribe_data_type":["book"],{filter}}}"#);
    c.send(&unsubscribe);
    assert!(sim.wait_for(DEADLINE, |ev| has(ev, |k| *k == EventKind::Hello { text: unsubscribe.clone() })));
    c.send(&unsubscribe.replace("unsubscribe", "subscribe"));
    let deadline = Instant::now() + DEADLINE;
    while seq_of(&next_book(&mut c)) != 1 {
        assert!(Instant::now() < deadline, "no restart");
    }
    let shape: Vec<bool> = (0..3).map(|_| json(&next_book(&mut c))["is_snapshot"] == true).collect();
    assert_eq!(shape, [false, true, false], "sequence 1 was a delta, 2 too, 3 the snapshot");
}

/// `BookCross` crosses the book for about its duration while ordinary deltas flow, then a delta
/// removes the crossed bid; the oracle flags exactly those messages.
#[test]
fn cross_lasts_about_its_duration() {
    let sim = start(SimConfig { rate_per_sec: 1000, book_oracle_depths: vec![1], ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(&hello(&["book"], &[BTC]));
    let mut book = Applier::default();
    for _ in 0..10 {
        book.apply(&next_book(&mut c));
    }
    sim.inject(WsFault::BookCross { symbol_id: BTC.to_string(), duration: Duration::from_millis(300) });
    let deadline = Instant::now() + DEADLINE;
    let mut crossed_at: Option<Instant> = None;
    let mut during = 0;
    let mut flags = Vec::new();
    let lasted = loop {
        assert!(Instant::now() < deadline, "cross never ended");
        let t = next_book(&mut c);
        book.apply(&t);
        flags.push((seq_of(&t), book.crossed()));
        match (crossed_at, book.crossed()) {
            (None, true) => crossed_at = Some(Instant::now()),
            (Some(_), true) => during += 1,
            (Some(at), false) => break at.elapsed(),
            (None, false) => {}
        }
    };
    assert!(lasted >= Duration::from_millis(250) && lasted <= Duration::from_millis(1500), "{lasted:?}");
    assert!(during > 50, "{during} deltas during the cross");
    let oracle = oracle_of(&sim, ws_conn(&sim, 1), BTC);
    assert!(flags.iter().all(|(seq, crossed)| oracle[seq].crossed == *crossed));
    assert!(sim.wait_for(DEADLINE, |ev| has(ev, |k| matches!(k,
        EventKind::FaultApplied { fault } if fault.starts_with("BookCross")))));
}

/// `BookSweep`: one delta removes the best ask and adds a bid at its price; the final book is
/// not crossed, but applying its bids before its asks crosses it in between.
#[test]
fn sweep_is_a_transient_cross_inside_one_delta() {
    let sim = start(SimConfig { rate_per_sec: 1000, ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(&hello(&["book"], &[BTC]));
    let mut book = Applier::default();
    for _ in 0..10 {
        book.apply(&next_book(&mut c));
    }
    sim.inject(WsFault::BookSweep { symbol_id: BTC.to_string() });
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no sweep");
        let t = next_book(&mut c);
        let best_ask = book.best_ask().expect("asks");
        let removes_best =
            raw_levels(&t, "asks").iter().any(|(p, s)| Dec(canonical_decimal(p)) == best_ask && s == "0");
        let bid_there = raw_levels(&t, "bids").iter().any(|(p, s)| Dec(canonical_decimal(p)) == best_ask && s != "0");
        if removes_best && bid_there {
            let mut bids_first = book.clone();
            bids_first.apply_sides(&t, &["bids"]);
            assert!(bids_first.crossed(), "bids before asks cross: {t}");
            book.apply(&t);
            assert!(!book.crossed(), "{t}");
            assert!(book.best_ask().expect("asks") > best_ask);
            break;
        }
        book.apply(&t);
        assert!(!book.crossed());
    }
}

/// `BookLevelFlood` grows the model; `book` deltas bring every new level, at most 200 per
/// message; snapshots (`BookSnapshot`) and REST still show `book_levels` per side, and the
/// client agrees with the oracle throughout.
#[test]
fn level_flood_in_bounded_deltas() {
    let sim = start(SimConfig { rate_per_sec: 1000, book_oracle_depths: vec![20], ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(&hello(&["book"], &[BTC]));
    let mut book = Applier::default();
    for _ in 0..5 {
        book.apply(&next_book(&mut c));
    }
    sim.inject(WsFault::BookLevelFlood { symbol_id: BTC.to_string(), levels: 1000 });
    let deadline = Instant::now() + DEADLINE;
    let mut big = Vec::new();
    let mut seqs = Vec::new();
    while book.asks.len() + book.bids.len() < 1040 {
        assert!(Instant::now() < deadline, "flood not delivered: {} levels", book.asks.len() + book.bids.len());
        let t = next_book(&mut c);
        let n = raw_levels(&t, "asks").len() + raw_levels(&t, "bids").len();
        assert!(n <= 200, "{n} levels in one delta");
        if n > 20 {
            big.push(n);
        }
        book.apply(&t);
        seqs.push((seq_of(&t), book.digest(20)));
    }
    assert!(big.len() >= 5, "{big:?}");
    let (bids, asks) = sim.book_depth(BTC).expect("served symbol");
    assert!(bids >= 510 && asks >= 510, "{bids} {asks}");
    let mut http = Http::connect(&sim);
    let r = http.get(&format!("/v1/orderbooks/{BTC}/current?limit_levels=1000"), Some(KEY));
    assert_eq!(rest_side(&r.body, "asks").len(), 20);
    sim.inject(WsFault::BookSnapshot { symbol_id: BTC.to_string() });
    loop {
        assert!(Instant::now() < deadline, "no snapshot");
        let t = next_book(&mut c);
        book.apply(&t);
        seqs.push((seq_of(&t), book.digest(20)));
        if json(&t)["is_snapshot"] == true {
            assert_eq!(raw_levels(&t, "asks").len(), 20);
            assert_eq!(book.asks.len() + book.bids.len(), 40);
            break;
        }
    }
    let oracle = oracle_of(&sim, ws_conn(&sim, 1), BTC);
    assert!(seqs.iter().all(|(seq, digest)| oracle[seq].digests == [*digest]));
}
