//! End-to-end tests of the trade store and what is built on it: REST `trades/history` and
//! `trades/latest`, `WithholdTrades`, `Sim::outage`, and `book` resubscription, over 127.0.0.1
//! with the parent module's WebSocket and HTTP clients. Every wait has a deadline.

use super::*;

const BTC: &str = "BITSTAMP_SPOT_BTC_USD";
const ETH: &str = "COINBASE_SPOT_ETH_USD";

fn hello_trades(symbols: &[&str]) -> String {
    let filter: Vec<String> = symbols.iter().map(|s| format!("\"{s}$\"")).collect();
    format!(
        r#"{{"type":"hello","apikey":"k","heartbeat":false,"subscribe_data_type":["trade"],"subscribe_filter_symbol_id":[{}]}}"#,
        filter.join(",")
    )
}

fn uuids_of(body: &str) -> Vec<String> {
    raw_values(body, "uuid").iter().map(|u| u.trim_matches('"').to_string()).collect()
}

fn nanos(t: &str) -> i128 {
    gen::parse_time(t).unwrap_or_else(|| panic!("not a CoinAPI time: {t}"))
}

/// Stored trades, in paced and in flood (ring) mode, are exactly the frames sent: same order,
/// lower-case uuid, every field's text byte for byte, all streamed; with a small bound only the
/// newest stay. Exchange times trail CoinAPI times by at most 50 ms and are not monotonic.
#[test]
fn stored_trades_are_the_frames_sent() {
    for (rate, bound) in [(2000, 1000), (0, 1000), (2000, 40), (0, 40)] {
        let sim = start(SimConfig {
            rate_per_sec: rate,
            max_messages: Some(300),
            trade_store_per_symbol: bound,
            ..SimConfig::default()
        });
        let mut c = Client::connect(&sim);
        c.send(&hello_trades(&[BTC, ETH]));
        let frames = c.data(300);
        wait_until("300 frames sent", || sim.data_sent() == 300);
        let mut out_of_order = false;
        for sym in [BTC, ETH] {
            let sent: Vec<&String> = frames.iter().filter(|f| json(f)["symbol_id"] == sym).collect();
            let expected: Vec<(String, [String; 5])> = sent
                .iter()
                .map(|f| {
                    let uuid = json(f)["uuid"].as_str().unwrap_or("").to_ascii_lowercase();
                    (uuid, trade_text_fields(f).remove(0))
                })
                .collect();
            let keep = expected.len().min(bound);
            let expected = &expected[expected.len() - keep..];
            let stored = sim.stored_trades(sym);
            assert_eq!(sim.stored_trade_count(sym), keep, "rate {rate} bound {bound}");
            let got: Vec<(String, [String; 5])> = stored
                .iter()
                .map(|t| {
                    let q = |s: &str| format!("\"{s}\"");
                    (
                        t.uuid.clone(),
                        [q(&t.time_exchange), q(&t.time_coinapi), t.price.clone(), t.size.clone(), q(t.taker_side)],
                    )
                })
                .collect();
            assert_eq!(got, expected, "rate {rate} bound {bound} {sym}");
            assert!(stored.iter().all(|t| t.streamed));
            for t in &stored {
                let lag = nanos(&t.time_coinapi) - nanos(&t.time_exchange);
                assert!((0..=50_000_000).contains(&lag), "lag {lag} ns in {t:?}");
            }
            out_of_order |= stored.windows(2).any(|w| w[1].time_exchange < w[0].time_exchange);
        }
        if rate > 0 {
            assert!(out_of_order, "exchange times are jittered, not monotonic");
        }
    }
}

/// History returns exactly the stored trades of a window (inclusive start, exclusive end),
/// oldest exchange time first, at most `limit`, pretty-printed with lower-case uuids; paging by
/// moving `time_start` to the last record's time returns every trade, repeating only records
/// at a page boundary's timestamp. Timestamps take 0 to 9 fractional digits and `%3A`.
#[test]
fn history_windows_limits_and_paging() {
    let sim = start(SimConfig { rate_per_sec: 2000, max_messages: Some(400), ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(&hello_trades(&[BTC]));
    c.data(400);
    wait_until("400 trades stored", || sim.stored_trade_count(BTC) == 400);
    let stored = sim.stored_trades(BTC);
    let mut by_time = stored.clone();
    // Stable: ties keep store order, as the server must.
    by_time.sort_by(|a, b| a.time_exchange.cmp(&b.time_exchange));
    let window = |start: &str, end: Option<&str>| -> Vec<String> {
        by_time
            .iter()
            .filter(|t| t.time_exchange.as_str() >= start && end.is_none_or(|e| t.time_exchange.as_str() < e))
            .map(|t| t.uuid.clone())
            .collect()
    };
    let mut http = Http::connect(&sim);
    let (start, end) = (by_time[50].time_exchange.clone(), by_time[300].time_exchange.clone());
    // `...1234567Z` as `...123456700Z`: the same instant with nine digits.
    let end_9 = end.replace('Z', "00Z");
    let path =
        format!("/v1/trades/{BTC}/history?time_start={}&time_end={end_9}&limit=100000", start.replace(':', "%3A"));
    let r = http.get(&path, Some(KEY));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("X-RateLimit-Request-Cost"), Some("1000"));
    assert!(r.body.starts_with("[\n  {\n    \"symbol_id\": \""), "{}", &r.body[..r.body.len().min(200)]);
    let got = uuids_of(&r.body);
    let expected = window(&start, Some(&end));
    assert!(expected.len() >= 250, "window holds {}", expected.len());
    assert_eq!(got, expected, "inclusive start, exclusive end, oldest first");
    assert!(got.iter().all(|u| *u == u.to_ascii_lowercase()));
    let times = raw_values(&r.body, "time_exchange");
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "ordered by time_exchange");
    for v in json(&r.body).as_array().expect("array") {
        let keys: Vec<&str> = v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        assert_eq!(keys, ["price", "size", "symbol_id", "taker_side", "time_coinapi", "time_exchange", "uuid"]);
    }

    let r = http.get(&format!("/v1/trades/{BTC}/history?time_start={start}&time_end={end}&limit=25"), Some(KEY));
    assert_eq!(uuids_of(&r.body), expected[..25]);
    assert_eq!(r.header("X-RateLimit-Request-Cost"), Some("1"));
    // No limit: CoinAPI's default of 100.
    let r = http.get(&format!("/v1/trades/{BTC}/history?time_start={start}"), Some(KEY));
    assert_eq!(uuids_of(&r.body), window(&start, None)[..100]);
    // Whole seconds (no fraction) are accepted.
    let second = format!("{}Z", &start[..19]);
    let r = http.get(&format!("/v1/trades/{BTC}/history?time_start={second}&limit=100000"), Some(KEY));
    assert_eq!(uuids_of(&r.body), window(&format!("{}.0000000Z", &start[..19]), None));

    // Paging from the oldest trade, 37 at a time.
    let mut next = by_time[0].time_exchange.clone();
    let mut seen: Vec<String> = Vec::new();
    let mut boundaries: Vec<String> = Vec::new();
    let mut repeats: Vec<String> = Vec::new();
    for page in 0.. {
        assert!(page < 100, "paging does not end");
        let r = http.get(&format!("/v1/trades/{BTC}/history?time_start={next}&limit=37"), Some(KEY));
        assert_eq!(r.status, 200);
        let uuids = uuids_of(&r.body);
        let times: Vec<String> =
            raw_values(&r.body, "time_exchange").iter().map(|t| t.trim_matches('"').to_string()).collect();
        for (u, t) in uuids.iter().zip(&times) {
            if seen.contains(u) {
                repeats.push(t.clone());
            } else {
                seen.push(u.clone());
            }
        }
        if uuids.len() < 37 {
            break;
        }
        next = times.last().cloned().unwrap_or_default();
        boundaries.push(next.clone());
    }
    let mut all: Vec<String> = stored.iter().map(|t| t.uuid.clone()).collect();
    all.sort();
    seen.sort();
    assert_eq!(seen, all, "paging returns every trade once de-duplicated");
    assert!(repeats.len() >= boundaries.len(), "each boundary record comes again");
    assert!(repeats.iter().all(|t| boundaries.contains(t)), "repeats only at boundaries: {repeats:?}");
}

/// History refuses a missing or malformed `time_start` (and a malformed `time_end`) with 400
/// and `{"error": ...}`; an unknown symbol is 550; no key is 401.
#[test]
fn history_rejects_bad_times() {
    let sim = start(SimConfig::default());
    let mut http = Http::connect(&sim);
    for query in [
        "",
        "?time_end=2026-12-01T12:00:00Z",
        "?time_start=yesterday",
        "?time_start=2026-12-01T12:00:00",
        "?time_start=2026-12-01T12:00:00.Z",
        "?time_start=2026-12-01T12:00:00.1234567890Z",
        "?time_start=2026-13-01T12:00:00Z",
        "?time_start=2026-12-01%2012:00:00Z",
        "?time_start=2026-12-01T12:00:00Z&time_end=soon",
        "?time_start=2026-12-01T12:00:00Z&limit=0",
    ] {
        let r = http.get(&format!("/v1/trades/{BTC}/history{query}"), Some(KEY));
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert!(json(&r.body)["error"].is_string(), "{query}: {}", r.body);
    }
    let r = http.get(&format!("/v1/trades/{BTC}/history?time_start=2026-12-01T12%3A00%3A00.5Z"), Some(KEY));
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    let r = http.get("/v1/trades/NOPE_SPOT_X_Y/history?time_start=2026-12-01T12:00:00Z", Some(KEY));
    assert_eq!(r.status, 550);
    let r = http.get(&format!("/v1/trades/{BTC}/history?time_start=2026-12-01T12:00:00Z"), None);
    assert_eq!(r.status, 401);
    assert!(has(&sim.events(), |k| matches!(k,
        EventKind::RestRequest { path, status: 400, .. } if path == &format!("/v1/trades/{BTC}/history?time_start=yesterday"))));
}

/// `WithholdTrades` keeps one symbol's trades off the wire for its window while they take
/// sequence numbers and go to the store as not streamed; the next frame of that symbol jumps by
/// exactly their count; the other symbol streams on without a gap. Paced and ring mode.
#[test]
fn withheld_trades_are_stored_not_sent_and_jump_the_sequence() {
    // 20,000/s is the slowest rate that replays template rings as flood mode does.
    for rate in [1000, 20_000] {
        let sim = start(SimConfig { rate_per_sec: rate, ..SimConfig::default() });
        let mut c = Client::connect(&sim);
        c.send(&hello_trades(&[BTC, ETH]));
        let mut frames = c.data(20);
        sim.inject(WsFault::WithholdTrades { symbol_id: BTC.to_string(), duration: Duration::from_millis(300) });
        let deadline = Instant::now() + DEADLINE;
        let seq_of = |f: &String| {
            let v = json(f);
            (v["symbol_id"] == BTC).then(|| v["sequence"].as_u64()).flatten()
        };
        let mut last_btc = frames.iter().rev().find_map(seq_of);
        let jump = loop {
            assert!(Instant::now() < deadline, "no sequence jump on {BTC} (rate {rate})");
            let f = c.data(1).remove(0);
            let seq = seq_of(&f);
            frames.push(f);
            let Some(seq) = seq else {
                continue;
            };
            match last_btc {
                Some(prev) if seq != prev + 1 => break seq - prev - 1,
                _ => last_btc = Some(seq),
            }
        };
        assert_eq!(jump, sim.withheld_trades(), "the jump is the number of withheld trades (rate {rate})");
        // About 300 ms at half the rate (one of two streams).
        let expected = rate * 3 / 20;
        assert!((1..=expected * 2).contains(&jump), "{jump} withheld, about {expected} expected");
        assert_eq!(sim.gaps_emitted(), 1);
        let eth: Vec<String> = frames.iter().filter(|f| json(f)["symbol_id"] == ETH).cloned().collect();
        check_sequences(&eth);

        let received: HashSet<String> =
            frames.iter().filter_map(|f| json(f)["uuid"].as_str().map(str::to_ascii_lowercase)).collect();
        let stored = sim.stored_trades(BTC);
        let withheld: Vec<&StoredTrade> = stored.iter().filter(|t| !t.streamed).collect();
        assert_eq!(withheld.len() as u64, jump);
        assert!(withheld.iter().all(|t| !received.contains(&t.uuid)), "withheld trades never reached the wire");
        // One contiguous stretch of the store, after the streamed trades the client received.
        let first = stored.iter().position(|t| !t.streamed).expect("withheld trades stored");
        assert!(stored[first..first + withheld.len()].iter().all(|t| !t.streamed));
        assert!(stored[..first].iter().all(|t| t.streamed && received.contains(&t.uuid)));
        assert!(has(&sim.events(), |k| matches!(k,
            EventKind::FaultApplied { fault } if fault.starts_with("WithholdTrades"))));
    }
}

/// An outage drops the live connection, answers upgrades with 503 (logged) while the REST
/// server keeps answering, and the market goes on: trades at the connection's cadence go to the
/// store, not streamed, with exchange times spread over the outage. Afterwards connections are
/// accepted again and sequences start at 1.
#[test]
fn outage_refuses_connections_and_the_market_goes_on() {
    let sim = start(SimConfig { rate_per_sec: 1000, ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(&hello_trades(&[BTC]));
    c.data(300);
    let began = time::OffsetDateTime::now_utc();
    let duration = Duration::from_millis(1000);
    sim.outage(duration);
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the connection was not dropped");
        match c.recv(DEADLINE) {
            Got::Text(_) => {}
            Got::Error(_) | Got::Close => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    match try_connect(&sim) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status().as_u16(), 503);
        }
        Err(e) => panic!("unexpected upgrade error {e:?}"),
        Ok(_) => panic!("upgrade accepted during the outage"),
    }
    assert!(sim.wait_for(DEADLINE, |ev| has(ev, |k| *k == EventKind::UpgradeRefused { status: 503 })));
    let mut http = Http::connect(&sim);
    let r = http.get(&format!("/v1/trades/{BTC}/latest?limit=1"), Some(KEY));
    assert_eq!(r.status, 200, "REST stays up");
    wait_until("outage trades", || sim.outage_trades() >= 100);

    // Retry until the outage is over.
    let mut c = loop {
        assert!(Instant::now() < deadline, "connections not accepted after the outage");
        if let Ok((ws, _)) = try_connect(&sim) {
            break Client { ws };
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ended = time::OffsetDateTime::now_utc();
    c.send(&hello_trades(&[BTC]));
    assert_eq!(json(&c.data(1)[0])["sequence"], 1);
    let outage_trades = sim.outage_trades();
    assert!((300..=2000).contains(&outage_trades), "about 1 s at 1000 trades/s: {outage_trades}");
    let stored = sim.stored_trades(BTC);
    let dark: Vec<&StoredTrade> = stored.iter().filter(|t| !t.streamed).collect();
    assert_eq!(dark.len() as u64, outage_trades);
    let times: Vec<i128> = dark.iter().map(|t| nanos(&t.time_exchange)).collect();
    let (lo, hi) = (times.iter().min().copied().unwrap_or(0), times.iter().max().copied().unwrap_or(0));
    let margin = 100_000_000;
    assert!(lo >= began.unix_timestamp_nanos() - margin, "outage trades start with the outage");
    assert!(hi <= ended.unix_timestamp_nanos() + margin, "outage trades end with the outage");
    assert!(hi - lo >= duration.as_nanos() as i128 / 2, "spread over the outage: {} ms", (hi - lo) / 1_000_000);
    // The store is one market: the dark stretch sits between the two connections' trades.
    let first_dark = stored.iter().position(|t| !t.streamed).expect("dark trades");
    assert!(stored[first_dark..first_dark + dark.len()].iter().all(|t| !t.streamed));
    assert!(has(&sim.events(), |k| matches!(k,
        EventKind::WsClosed { reason } if reason.starts_with("outage"))));
}

/// Unsubscribing and resubscribing `book` and `book_l3` restarts each at sequence 1 with a
/// snapshot, as CoinAPI does; a `quote` stream on the same connection keeps its numbering.
#[test]
fn book_resubscription_restarts_at_one_with_a_snapshot() {
    let sim = start(SimConfig { rate_per_sec: 600, book_levels: 5, ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    let filter = r#""subscribe_filter_symbol_id":["KRAKEN_SPOT_XRP_EUR$"]"#;
    c.send(&format!(r#"{{"type":"hello","apikey":"k","subscribe_data_type":["book","book_l3","quote"],{filter}}}"#));
    let mut frames = c.data(30);
    let before = check_sequences(&frames);
    assert!(before.keys().any(|(t, _)| t == "book") && before.keys().any(|(t, _)| t == "book_l3"));
    let unsubscribe = format!(r#"{{"type":"unsubscribe","subscribe_data_type":["book","book_l3"],{filter}}}"#);
    let subscribe = unsubscribe.replace("unsubscribe", "subscribe");
    c.send(&unsubscribe);
    assert!(sim.wait_for(DEADLINE, |ev| has(ev, |k| *k == EventKind::Hello { text: unsubscribe.clone() })));
    c.send(&subscribe);
    let mut restarted: Vec<String> = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    // Frames queued before the unsubscribe may still arrive; then each book restarts at 1.
    let mut after: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    while after.values().filter(|v| v.len() >= 3).count() < 2 {
        assert!(Instant::now() < deadline, "no restart seen: {after:?}");
        let f = c.data(1).remove(0);
        let v = json(&f);
        let t = msg_type(&v).to_string();
        if t != "quote" {
            if v["sequence"] == 1 {
                restarted.push(t.clone());
                after.insert(t.clone(), Vec::new());
            }
            if let Some(list) = after.get_mut(&t) {
                list.push(v);
            }
        }
        frames.push(f);
    }
    restarted.sort();
    assert_eq!(restarted, ["book", "book_l3"]);
    for (t, msgs) in &after {
        let seqs: Vec<u64> = msgs.iter().filter_map(|m| m["sequence"].as_u64()).collect();
        assert_eq!(seqs[..3], [1, 2, 3], "{t}");
        assert_eq!(msgs[0]["is_snapshot"], true, "{t} restarts with a snapshot");
        assert_eq!(msgs[1]["is_snapshot"], false, "{t}");
    }
    let quotes: Vec<String> = frames.iter().filter(|f| msg_type(&json(f)) == "quote").cloned().collect();
    check_sequences(&quotes);
    assert!(has(&sim.events(), |k| *k == EventKind::Hello { text: subscribe.clone() }));
}

/// The store's bound is validated like the other limits.
#[test]
fn trade_store_bound_is_validated() {
    for bound in [0, 2_000_001] {
        let err = Sim::start(SimConfig { trade_store_per_symbol: bound, ..SimConfig::default() })
            .expect_err("out of range bound refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("trade_store_per_symbol"), "{err}");
    }
}

/// Absurd durations saturate instead of panicking, and a simulator in an endless outage (its
/// dropped connection still generating trades) shuts down promptly.
#[test]
fn absurd_durations_and_shutdown_during_an_outage() {
    let sim = start(SimConfig { rate_per_sec: 1000, ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(&hello_trades(&[BTC, ETH]));
    c.data(10);
    sim.inject(WsFault::WithholdTrades { symbol_id: BTC.to_string(), duration: Duration::MAX });
    sim.inject(WsFault::WithholdTrades { symbol_id: "NOT_SERVED".to_string(), duration: Duration::MAX });
    wait_until("trades withheld", || sim.withheld_trades() > 10);
    sim.outage(Duration::MAX);
    wait_until("outage trades", || sim.outage_trades() > 10);
    assert!(matches!(try_connect(&sim), Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(_)))));
    let t0 = Instant::now();
    sim.shutdown();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}
