//! Bad input from the network is counted and skipped, never fatal, and never costs the valid
//! messages around it.

use std::time::Duration;

use coinfeed_sim::{EventKind, Sim, SimConfig, WsFault};

use crate::harness::{field, market_lines, Feed};

/// Proves invalid JSON, a JSON array, a binary frame, a trade without symbol_id and an unknown
/// type are each counted and skipped while every valid message sent around them is written.
#[test]
fn malformed_frames_are_counted_and_skipped() {
    const N: u64 = 3_000;
    let sim =
        Sim::start(SimConfig { rate_per_sec: 3_000, max_messages: Some(N), ..SimConfig::default() }).expect("sim");
    let mut feed = Feed::against(
        &sim.ws_url(),
        &sim.rest_url(),
        "BITSTAMP_SPOT_BTC_USD,COINBASE_SPOT_ETH_USD",
        "trade,quote",
        &[],
    );
    assert!(sim.wait_for(Duration::from_secs(10), |ev| ev.iter().any(|e| matches!(e.kind, EventKind::Hello { .. }))));
    // Injected while data flows, so valid frames come before, between and after them.
    assert!(feed.stdout.wait_until(Duration::from_secs(10), |l| market_lines(l).len() >= 100));
    let bad = [
        WsFault::Text("{\"type\":\"trade\",\"symbol_id\":\"BITSTAMP_SPOT_BTC_USD\",".to_string()),
        WsFault::Text("[\"trade\",\"BITSTAMP_SPOT_BTC_USD\",1]".to_string()),
        WsFault::Binary(vec![0x7b, 0x00, 0xff]),
        WsFault::Text(
            r#"{"type":"trade","sequence":7,"time_exchange":"2026-11-28T06:44:26.1234567Z","uuid":"A1","price":1.5,"size":2,"taker_side":"BUY"}"#
                .to_string(),
        ),
        WsFault::Text(r#"{"type":"candles","symbol_id":"BITSTAMP_SPOT_BTC_USD","sequence":1}"#.to_string()),
    ];
    for f in bad {
        sim.inject(f);
    }
    let delivered = feed.stdout.wait_until(Duration::from_secs(30), |l| market_lines(l).len() as u64 >= N);
    assert!(delivered, "valid messages lost; stderr:\n{}", feed.stderr_text());
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "a bad frame must never be fatal: {status:?}");

    let out = feed.stdout.snapshot();
    assert_eq!(market_lines(&out).len() as u64, N);
    assert!(!out.iter().any(|l| l.contains("candles") || l.contains("\"A1\"")), "a skipped frame reached stdout");
    let s = feed.summary();
    assert_eq!(field(&s, "malformed"), 4, "{s:?}");
    assert_eq!(field(&s, "unknown_type"), 1, "{s:?}");
    assert_eq!(field(&s, "written"), N);
    assert_eq!(field(&s, "received"), N + 5);
    assert_eq!(field(&s, "reconnects"), 0, "bad frames must not cost the connection");
}
