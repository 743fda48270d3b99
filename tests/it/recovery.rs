//! Losing nothing that can be kept: the exact trades a gap or an outage lost come back from the
//! simulator's trade history (its REST is a real trade store), each written once, at the paced
//! rate; a `book` gap is healed by resubscribing, not by a REST book.

use std::time::{Duration, Instant};

use coinfeed_sim::{EventKind, Sim, SimConfig, WsFault};

use crate::gaps::assert_trades_once;
use crate::harness::{
    assert_accounting_closes, control_lines, count_control, field, market_lines, max_in_window, rest_requests, Feed,
};

/// Proves the issue's gap fill: one symbol's trades withheld for 8 s at 50 trades/s, then
/// resumed: every one of the ~400 missing trades is written exactly once, no streamed trade
/// twice, the recovery line says all came back, and recovery never sent 3 requests within 1 s.
#[test]
fn eight_seconds_of_withheld_trades_come_back_exactly_once() {
    let names = ["SIMX_SPOT_GAP_USD".to_string(), "SIMX_SPOT_OTHER_USD".to_string()];
    // Two symbols, trades only: 50 trades/s each.
    let sim =
        Sim::start(SimConfig { symbols: names.to_vec(), rate_per_sec: 100, ..SimConfig::default() }).expect("sim");
    let mut feed = Feed::against(&sim.ws_url(), &sim.rest_url(), &names.join(","), "trade", &[]);
    assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 100));
    sim.inject(WsFault::WithholdTrades { symbol_id: names[0].clone(), duration: Duration::from_secs(8) });
    let gap = feed.stdout.wait_until(Duration::from_secs(20), |l| count_control(l, "gap") >= 1);
    assert!(gap, "no gap line; stderr:\n{}", feed.stderr_text());
    let recovered = feed.stdout.wait_until(Duration::from_secs(30), |l| count_control(l, "recovery") >= 1);
    assert!(recovered, "no recovery line; stderr:\n{}", feed.stderr_text());
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success());

    let out = feed.stdout.snapshot();
    let withheld = sim.stored_trades(&names[0]).iter().filter(|t| !t.streamed).count();
    let rec = &control_lines(&out, "recovery")[0];
    let requests = rest_requests(&sim);
    let times: Vec<Instant> = requests.iter().map(|(t, _, _)| *t).collect();
    eprintln!(
        "gap fill: {withheld} withheld; recovery {rec}; {} requests ({} credits at 100 trades each), max {} in 1 s",
        requests.len(),
        requests.len(),
        max_in_window(&times, Duration::from_secs(1))
    );
    assert!((350..=450).contains(&withheld), "8 s at 50 trades/s: {withheld} withheld");
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["missing"].as_u64(), Some(withheld as u64), "{rec}");
    assert_eq!(rec["recovered"].as_u64(), Some(withheld as u64), "{rec}");
    assert!(rec.get("unrecovered").is_none(), "{rec}");
    assert!(requests.iter().all(|(_, p, _)| p.contains("/history?")), "{requests:?}");
    assert!(max_in_window(&times, Duration::from_secs(1)) <= 2, "3 requests within 1 s: {requests:?}");
    assert_trades_once(&sim, &names, &out);
    let s = feed.summary();
    assert_eq!((field(&s, "dropped"), field(&s, "unrecovered")), (0, 0));
    assert_eq!(field(&s, "recovered_written"), withheld as u64);
    assert_accounting_closes(&s);
}

/// Proves the issue's outage fill: the connection dropped and refused for 4 s while trades go on:
/// every trade of the outage is written exactly once, for every symbol, from one window per
/// symbol over [its last trade on the old connection, its first on the new one].
#[test]
fn a_four_second_outage_is_backfilled_for_every_symbol() {
    let names: Vec<String> = (0..3).map(|i| format!("SIMX_SPOT_OUT{i}_USD")).collect();
    let sim = Sim::start(SimConfig { symbols: names.clone(), rate_per_sec: 150, ..SimConfig::default() }).expect("sim");
    let mut feed = Feed::against(
        &sim.ws_url(),
        &sim.rest_url(),
        &names.join(","),
        "trade",
        &["--backoff-max", "1", "--recovery-trades-limit", "1000"],
    );
    assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 100));
    sim.outage(Duration::from_secs(4));
    let reconnected = feed.stdout.wait_until(Duration::from_secs(30), |l| {
        l.iter().filter(|x| x.starts_with(r#"{"type":"connection","event":"connected""#)).count() >= 2
    });
    assert!(reconnected, "no second connection; stderr:\n{}", feed.stderr_text());
    let recovered = feed.stdout.wait_until(Duration::from_secs(30), |l| count_control(l, "recovery") >= names.len());
    assert!(recovered, "recovery lines: {:?}", control_lines(&feed.stdout.snapshot(), "recovery"));
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success());

    let out = feed.stdout.snapshot();
    let outage: Vec<usize> =
        names.iter().map(|s| sim.stored_trades(s).iter().filter(|t| !t.streamed).count()).collect();
    let recoveries = control_lines(&out, "recovery");
    eprintln!(
        "outage fill: {outage:?} trades generated while disconnected; {} requests; {recoveries:?}",
        rest_requests(&sim).len()
    );
    assert!(outage.iter().all(|n| *n >= 100), "4 s at 50 trades/s per symbol: {outage:?}");
    for r in &recoveries {
        assert_eq!(r["status"], "ok", "{r}");
        assert!(r.get("missing").is_none(), "a reconnect cannot count what it lost: {r}");
    }
    let total: u64 = recoveries.iter().filter_map(|r| r["recovered"].as_u64()).sum();
    assert_eq!(total, outage.iter().sum::<usize>() as u64, "{recoveries:?}");
    assert_trades_once(&sim, &names, &out);
    let gaps = control_lines(&out, "gap");
    assert!(gaps.iter().all(|g| g["reason"] == "reconnect"), "{gaps:?}");
}

/// Proves a `book` gap is healed by one unsubscribe/subscribe pair (at least 2 s apart, as
/// CoinAPI's scope limit asks) and costs no REST request; the deltas between the gap and the new
/// snapshot are withheld (counted), and the stream's sequence restarting at 1 is no false gap.
#[test]
fn a_book_gap_is_resynced_by_resubscribing() {
    let symbol = "BITSTAMP_SPOT_BTC_USD";
    let sim = Sim::start(SimConfig { symbols: vec![symbol.to_string()], rate_per_sec: 50, ..SimConfig::default() })
        .expect("sim");
    let mut feed = Feed::against(&sim.ws_url(), &sim.rest_url(), symbol, "book", &[]);
    assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 20));
    sim.inject(WsFault::GapOn { symbol_id: symbol.to_string(), skip: 3 });
    assert!(feed.stdout.wait_until(Duration::from_secs(10), |l| count_control(l, "gap") >= 1));
    let resubscribed = sim.wait_for(Duration::from_secs(10), |ev| {
        ev.iter().any(|e| matches!(&e.kind, EventKind::Hello { text } if text.contains(r#""type":"subscribe""#)))
    });
    assert!(resubscribed, "no subscribe; stderr:\n{}", feed.stderr_text());
    // Data flows again after the new snapshot.
    let before = market_lines(&feed.stdout.snapshot()).len();
    assert!(feed.stdout.wait_until(Duration::from_secs(10), |l| market_lines(l).len() >= before + 20));
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success());

    let scope: Vec<(Instant, String)> = sim
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Hello { text } if !text.contains(r#""type":"hello""#) => Some((e.at, text)),
            _ => None,
        })
        .collect();
    assert_eq!(scope.len(), 2, "one unsubscribe and one subscribe: {scope:?}");
    assert!(
        scope[0].1.contains(r#""type":"unsubscribe""#) && scope[1].1.contains(r#""type":"subscribe""#),
        "{scope:?}"
    );
    assert!(scope.iter().all(|(_, t)| t.contains(r#"["book"]"#) && t.contains(&format!("\"{symbol}$\""))), "{scope:?}");
    assert!(!scope.iter().any(|(_, t)| t.contains("apikey")), "scope messages carry no key");
    let apart = scope[1].0.duration_since(scope[0].0);
    assert!(apart >= Duration::from_millis(1_950), "subscribe only {apart:?} after the unsubscribe");
    assert!(rest_requests(&sim).is_empty(), "a book gap costs no REST request");

    let out = feed.stdout.snapshot();
    let gap_at = out.iter().position(|l| l.starts_with(r#"{"type":"gap""#)).expect("gap line");
    let after: Vec<serde_json::Value> = out[gap_at + 1..]
        .iter()
        .filter(|l| l.starts_with(r#"{"type":"book""#))
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(
        after.first().map(|v| v["is_snapshot"].clone()),
        Some(serde_json::Value::Bool(true)),
        "the first book line after the gap is the new snapshot"
    );
    assert_eq!(after[0]["sequence"], 1, "the resubscribed stream restarts at 1");
    assert_eq!(count_control(&out, "gap"), 1, "the restart is no false gap");
    let s = feed.summary();
    assert_eq!(field(&s, "book_resyncs"), 1);
    assert!(field(&s, "book_withheld") >= 1, "the deltas after the gap were withheld: {s:?}");
    assert_accounting_closes(&s);
}
