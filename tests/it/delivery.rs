//! Exact delivery: what the simulator sends is what stdout carries, once, byte for byte, in
//! per-symbol order; the hello and upgrade header are what CoinAPI expects.

use std::collections::HashMap;
use std::time::Duration;

use coinfeed_sim::{EventKind, Sim, SimConfig, WsFault};

use crate::harness::{field, market_lines, strip_appended, Feed, KEY};

fn symbol_of(frame: &str) -> String {
    // Test-side parse only to find the symbol; numbers are compared as text, never as f64.
    let v: serde_json::Value = serde_json::from_str(frame).expect("sent frames are JSON");
    v["symbol_id"].as_str().expect("symbol_id").to_string()
}

/// Proves exact delivery at full speed: 20,000 trade+quote messages over 5 symbols appear on
/// stdout exactly once each, byte-identical to the wire plus recv_time and source, with each
/// symbol's messages in the order they were sent.
#[test]
fn every_message_arrives_once_byte_identical_and_in_order() {
    const N: usize = 20_000;
    let sim = Sim::start(SimConfig {
        rate_per_sec: 0,
        max_messages: Some(N as u64),
        record_sent: true,
        ..SimConfig::default()
    })
    .expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    assert_eq!(SimConfig::default().symbols.len(), 5);
    // A long queue wait: this test is about exactness, so a busy CI machine must throttle the
    // reader rather than make it shed load.
    let mut feed = Feed::against(&sim.ws_url(), &sim.rest_url(), &symbols, "trade,quote", &["--queue-wait-ms", "5000"]);
    let all_in = feed.stdout.wait_until(Duration::from_secs(60), |l| market_lines(l).len() >= N);
    assert!(all_in, "only {} lines; stderr:\n{}", market_lines(&feed.stdout.snapshot()).len(), feed.stderr_text());
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?}");

    let sent = sim.sent_frames();
    assert_eq!(sent.len(), N);
    let out = feed.stdout.snapshot();
    let market = market_lines(&out);
    assert_eq!(market.len(), N, "no duplicates, nothing extra");

    let mut sent_by_symbol: HashMap<String, Vec<&str>> = HashMap::new();
    for f in &sent {
        sent_by_symbol.entry(symbol_of(f)).or_default().push(f);
    }
    assert_eq!(sent_by_symbol.len(), 5, "all five symbols were sent");
    let mut got_by_symbol: HashMap<String, Vec<String>> = HashMap::new();
    for line in &market {
        let (wire, recv_time) = strip_appended(line);
        assert_eq!(recv_time.len(), 28, "CoinAPI timestamp format: {recv_time}");
        assert!(recv_time.ends_with('Z') && recv_time.as_bytes()[10] == b'T', "{recv_time}");
        got_by_symbol.entry(symbol_of(&wire)).or_default().push(wire);
    }
    for (symbol, want) in &sent_by_symbol {
        let got = got_by_symbol.get(symbol).unwrap_or_else(|| panic!("nothing for {symbol}"));
        assert_eq!(got.len(), want.len(), "{symbol}: count");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "{symbol}: message {i} differs (order or bytes)");
        }
    }

    let summary = feed.summary();
    assert_eq!(field(&summary, "received"), N as u64);
    assert_eq!(field(&summary, "written"), N as u64);
    assert_eq!(field(&summary, "dropped"), 0);
    assert_eq!(field(&summary, "malformed"), 0);
    eprintln!("exact delivery: {N} messages, peak_rss_kib={}", field(&summary, "peak_rss_kib"));
}

/// Proves the upgrade carries the X-CoinAPI-Key header and the hello asks for heartbeats, the
/// data types, exact symbols (`$`) and prefixes (`*` given by the user) as CoinAPI expects.
#[test]
fn upgrade_header_and_hello_are_what_coinapi_expects() {
    let sim = Sim::start(SimConfig { rate_per_sec: 10, ..SimConfig::default() }).expect("sim");
    let mut feed =
        Feed::against(&sim.ws_url(), &sim.rest_url(), "BITSTAMP_SPOT_BTC_USD,KRAKEN_SPOT_*", "trade,quote,book20", &[]);
    assert!(sim.wait_for(Duration::from_secs(10), |ev| ev.iter().any(|e| matches!(e.kind, EventKind::Hello { .. }))));
    let events = sim.events();
    let headers = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::WsConnected { headers, .. } => Some(headers.clone()),
            _ => None,
        })
        .expect("a connection");
    assert!(headers.iter().any(|(k, v)| k == "x-coinapi-key" && v == KEY), "{headers:?}");
    let hello = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Hello { text } => Some(text.clone()),
            _ => None,
        })
        .expect("a hello");
    let v: serde_json::Value = serde_json::from_str(&hello).expect("hello is JSON");
    assert_eq!(
        v,
        serde_json::json!({
            "type": "hello", "apikey": KEY, "heartbeat": true,
            "subscribe_data_type": ["trade", "quote", "book20"],
            "subscribe_filter_symbol_id": ["BITSTAMP_SPOT_BTC_USD$", "KRAKEN_SPOT_"],
        })
    );
    // The key never reaches stdout or the logs.
    feed.signal("INT");
    feed.wait_exit(Duration::from_secs(10));
    assert!(!feed.stderr_text().contains(KEY), "the key leaked into the logs");
    assert!(!feed.stdout.snapshot().iter().any(|l| l.contains(KEY)), "the key leaked into stdout");
}

/// Proves a server Ping is answered with a Pong carrying the same payload.
#[test]
fn ping_is_answered_with_the_same_payload() {
    let sim = Sim::start(SimConfig { rate_per_sec: 50, ..SimConfig::default() }).expect("sim");
    let mut feed = Feed::against(&sim.ws_url(), &sim.rest_url(), "BITSTAMP_SPOT_BTC_USD", "trade", &[]);
    assert!(sim.wait_for(Duration::from_secs(10), |ev| ev.iter().any(|e| matches!(e.kind, EventKind::Hello { .. }))));
    let payload = b"coinfeed-ping-4242".to_vec();
    sim.inject(WsFault::Ping(payload.clone()));
    let ponged = sim.wait_for(Duration::from_secs(5), |ev| {
        ev.iter().any(|e| matches!(&e.kind, EventKind::Pong { payload: p } if *p == payload))
    });
    assert!(ponged, "no pong with the ping's payload; events: {:?}", sim.events());
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success());
}
