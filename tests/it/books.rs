//! Kept order books (`--book-output top|both`) against the simulator's market model: the
//! `book_top` lines agree with the model after every message, a lost delta is resynced by
//! resubscribing and the fresh snapshot is used, lasting crosses are flagged then resynced while
//! a cross inside one message is not, the level and book bounds hold under a flood of distinct
//! levels, and `raw` output is byte for byte CoinAPI's messages.

use std::collections::HashMap;
use std::time::Duration;

use coinfeed_sim::{book_top_digest, BookOracleEntry, Sim, SimConfig, WsFault};

use crate::harness::{self, control_lines, field, Feed};

/// Twenty symbols of realistic magnitudes (the simulator derives prices from the names).
fn twenty_symbols() -> Vec<String> {
    let mut v = Vec::new();
    for exchange in ["BITSTAMP_SPOT", "COINBASE_SPOT", "KRAKEN_SPOT", "BINANCE_SPOT"] {
        for pair in ["BTC_USD", "ETH_USD", "SOL_USDT", "XRP_EUR", "DOGE_USDT"] {
            v.push(format!("{exchange}_{pair}"));
        }
    }
    v
}

/// Waits until a health line says `key` (a counter) has reached `n`.
fn wait_health(feed: &Feed, key: &str, n: u64, timeout: Duration) -> bool {
    feed.stderr.wait_until(timeout, |lines| {
        lines.iter().rev().find(|l| l.contains("health: ")).is_some_and(|l| {
            harness::key_values(l.split("health: ").nth(1).unwrap_or(""))
                .iter()
                .any(|(k, v)| k == key && v.parse::<u64>().is_ok_and(|r| r >= n))
        })
    })
}

/// Waits until a health line says coinfeed has received at least `n` data frames.
fn wait_received(feed: &Feed, n: u64, timeout: Duration) -> bool {
    wait_health(feed, "received", n, timeout)
}

/// One `book_top` line, parsed: symbol, sequence, digest of its levels, crossed.
#[derive(Debug)]
struct Top {
    symbol: String,
    sequence: u64,
    digest: u64,
    crossed: bool,
}

/// The `book_top` lines among `lines`, in order, with the digest the simulator's oracle uses,
/// computed from the exact number texts coinfeed wrote (taken from the raw line: never through
/// a float). Every 50th line is checked to be valid JSON (all of them would take the debug-built
/// test most of its time).
fn tops(lines: &[String]) -> Vec<Top> {
    lines
        .iter()
        .filter(|l| l.starts_with("{\"type\":\"book_top\""))
        .enumerate()
        .map(|(i, l)| {
            if i % 50 == 0 {
                serde_json::from_str::<serde::de::IgnoredAny>(l).unwrap_or_else(|e| panic!("invalid line ({e}): {l}"));
            }
            let (bids, asks) = (raw_levels(l, "bids"), raw_levels(l, "asks"));
            Top {
                symbol: text_field(l, "\"symbol_id\":\"", '"').to_string(),
                sequence: text_field(l, "\"sequence\":", ',').parse().expect("sequence"),
                digest: book_top_digest(&bids, &asks),
                crossed: text_field(l, "\"crossed\":", ',') == "true",
            }
        })
        .collect()
}

/// The text after `key` up to `end`.
fn text_field<'a>(line: &'a str, key: &str, end: char) -> &'a str {
    let start = line.find(key).unwrap_or_else(|| panic!("no {key} in {line}")) + key.len();
    let len = line[start..].find(end).unwrap_or_else(|| panic!("unterminated {key} in {line}"));
    &line[start..start + len]
}

/// The `(price, size)` number texts of one side of a `book_top` line, exactly as written.
fn raw_levels<'a>(line: &'a str, side: &str) -> Vec<(&'a str, &'a str)> {
    let body = text_field(line, &format!("\"{side}\":["), ']');
    if body.is_empty() {
        return Vec::new();
    }
    body.split("},{")
        .map(|lvl| {
            let lvl = lvl.trim_start_matches('{').trim_end_matches('}');
            let (p, s) = lvl.split_once(",\"size\":").unwrap_or_else(|| panic!("level {lvl}"));
            (p.trim_start_matches("\"price\":"), s)
        })
        .collect()
}

/// Splits one symbol's oracle entries (or top lines), in order, into subscriptions: a
/// sequence that does not grow starts a new one (a resubscription restarts at 1).
fn epochs<T>(items: Vec<T>, seq: impl Fn(&T) -> u64) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut last: Option<u64> = None;
    for item in items {
        let s = seq(&item);
        if last.is_none_or(|l| s <= l) {
            out.push(Vec::new());
        }
        last = Some(s);
        out.last_mut().expect("an epoch").push(item);
    }
    out
}

/// Checks that after every message of `oracle` (one symbol, one subscription) the last line
/// written at or before it shows the model's top: returns how many messages were checked.
fn agree(symbol: &str, oracle: &[BookOracleEntry], lines: &[&Top]) -> usize {
    let mut li = 0usize;
    let mut current: Option<&Top> = None;
    for e in oracle {
        while li < lines.len() && lines[li].sequence <= e.sequence {
            current = Some(lines[li]);
            li += 1;
        }
        let Some(top) = current else {
            panic!(
                "{symbol}: no book_top line by sequence {} (first line at {:?})",
                e.sequence,
                lines.first().map(|t| t.sequence)
            );
        };
        assert_eq!(
            top.digest, e.digests[0],
            "{symbol}: after message {} the last book_top (sequence {}) differs from the model",
            e.sequence, top.sequence
        );
        assert_eq!(top.crossed, e.crossed, "{symbol}: crossed flag after message {}", e.sequence);
    }
    assert_eq!(li, lines.len(), "{symbol}: book_top lines for sequences the model never sent");
    oracle.len()
}

/// Proves coinfeed's `book_top` lines agree with the simulator's market model after every one of
/// 100,000 book messages on 20 symbols (mid-stream snapshots included), at depths 1, 10 and 50,
/// with prices spelled every way CoinAPI spells them.
#[test]
fn book_tops_agree_with_the_market_model_after_every_message() {
    const N: u64 = 100_000;
    let symbols = twenty_symbols();
    for depth in [1usize, 10, 50] {
        let started = std::time::Instant::now();
        let sim = Sim::start(SimConfig {
            symbols: symbols.clone(),
            rate_per_sec: 15_000,
            max_messages: Some(N),
            book_levels: 60,
            book_snapshot_every: 400,
            book_oracle_depths: vec![depth],
            ..SimConfig::default()
        })
        .expect("sim");
        let depth_arg = depth.to_string();
        let mut feed = Feed::against(
            &sim.ws_url(),
            &sim.rest_url(),
            &symbols.join(","),
            "book",
            &["--book-output", "top", "--book-depth", &depth_arg, "--queue-wait-ms", "5000"],
        );
        // Every message folded into a book: all of them handled (a debug build can lag the
        // socket by seconds, and a stop would then have to drain the backlog).
        let all = wait_health(&feed, "book_folded", N, Duration::from_secs(120));
        assert!(all, "not all {N} messages were handled:\n{}", feed.stderr_text());
        let streamed = started.elapsed();
        feed.signal("INT");
        let (status, _) = feed.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "exit {status:?}:\n{}", feed.stderr_text());
        let summary = feed.summary();
        harness::assert_accounting_closes(&summary);
        assert_eq!(
            (field(&summary, "dropped"), field(&summary, "book_rejected"), field(&summary, "book_resyncs")),
            (0, 0, 0)
        );

        let oracle = sim.book_oracle();
        assert_eq!(oracle.len() as u64, N, "one oracle entry per book message");
        let out = feed.stdout.snapshot();
        let tops = tops(&out);
        let mut by_symbol: HashMap<&str, Vec<&Top>> = HashMap::new();
        for t in &tops {
            by_symbol.entry(t.symbol.as_str()).or_default().push(t);
        }
        let mut model: HashMap<&str, Vec<BookOracleEntry>> = HashMap::new();
        for e in oracle {
            model
                .entry(symbols.iter().find(|s| **s == e.symbol_id.as_ref() as &str).expect("a served symbol"))
                .or_default()
                .push(e);
        }
        let mut checked = 0;
        for (symbol, entries) in model {
            let lines = by_symbol.get(symbol).map(Vec::as_slice).unwrap_or(&[]);
            checked += agree(symbol, &entries, lines);
        }
        assert_eq!(checked as u64, N);
        eprintln!(
            "book oracle, depth {depth}: {N} messages on 20 symbols agree; {} book_top lines; streamed in {:.1}s, checked in {:.1}s",
            tops.len(),
            streamed.as_secs_f64(),
            (started.elapsed() - streamed).as_secs_f64()
        );
    }
}

/// Two symbols of one worker each (workers 2), paced so the tests can follow every message.
fn book_sim(symbols: &[&str], depths: Vec<usize>) -> Sim {
    Sim::start(SimConfig {
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        rate_per_sec: 400,
        book_levels: 20,
        book_oracle_depths: depths,
        ..SimConfig::default()
    })
    .expect("sim")
}

fn tops_of<'a>(tops: &'a [Top], symbol: &str) -> Vec<&'a Top> {
    tops.iter().filter(|t| t.symbol == symbol).collect()
}

fn oracle_of(sim: &Sim, symbol: &str) -> Vec<BookOracleEntry> {
    sim.book_oracle().into_iter().filter(|e| e.symbol_id == symbol).collect()
}

/// Index of the first line at or after `from` that starts with `prefix` and names `symbol`.
fn find_line(lines: &[String], from: usize, prefix: &str, symbol: &str) -> Option<usize> {
    let tag = format!("\"symbol_id\":\"{symbol}\"");
    (from..lines.len()).find(|&i| lines[i].starts_with(prefix) && lines[i].contains(&tag))
}

/// Proves a lost delta costs one resync: a `gap` line, one `book_resync` (reason gap), no top
/// line until the resubscription's snapshot (`book_synced`), and from that snapshot on the top
/// lines agree with the model again — the deltas that came between were never applied.
#[test]
fn a_lost_delta_resyncs_once_and_the_fresh_snapshot_is_used() {
    const A: &str = "BITSTAMP_SPOT_BTC_USD";
    const B: &str = "COINBASE_SPOT_ETH_USD";
    let sim = book_sim(&[A, B], vec![10]);
    let mut feed =
        Feed::against(&sim.ws_url(), &sim.rest_url(), &format!("{A},{B}"), "book", &["--book-output", "top"]);
    let tag = format!("\"symbol_id\":\"{A}\"");
    assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| l.iter().filter(|x| x.contains(&tag)).count() >= 30));
    sim.inject(WsFault::BookDropDeltas { symbol_id: A.to_string(), count: 5 });
    let synced = |l: &[String]| l.iter().any(|x| x.starts_with("{\"type\":\"book_synced\"") && x.contains(&tag));
    assert!(feed.stdout.wait_until(Duration::from_secs(30), synced), "no book_synced:\n{}", feed.stderr_text());
    let after = feed.stdout.snapshot().len();
    assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| l[after..]
        .iter()
        .filter(|x| x.contains(&tag))
        .count()
        >= 30));
    feed.signal("INT");
    feed.wait_exit(Duration::from_secs(10));

    let out = feed.stdout.snapshot();
    let gaps = control_lines(&out, "gap");
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        (gaps[0]["data_type"].as_str(), gaps[0]["symbol_id"].as_str(), gaps[0]["missing"].as_u64()),
        (Some("book"), Some(A), Some(5))
    );
    let resyncs = control_lines(&out, "book_resync");
    assert_eq!(resyncs.len(), 1, "one resync: {resyncs:?}");
    assert_eq!((resyncs[0]["symbol_id"].as_str(), resyncs[0]["reason"].as_str()), (Some(A), Some("gap")));
    assert_eq!(control_lines(&out, "book_synced").len(), 1);
    let resync_at = find_line(&out, 0, "{\"type\":\"book_resync\"", A).expect("resync line");
    let synced_at = find_line(&out, 0, "{\"type\":\"book_synced\"", A).expect("synced line");
    assert_eq!(
        find_line(&out[..synced_at], resync_at, "{\"type\":\"book_top\"", A),
        None,
        "no top line while resyncing"
    );

    let all = tops(&out);
    let lines = epochs(tops_of(&all, A), |t| t.sequence);
    let model = epochs(oracle_of(&sim, A), |e| e.sequence);
    assert_eq!(lines.len(), 2, "before the gap, and from the fresh snapshot on");
    assert!(model.len() >= 2, "the model restarted the stream");
    let last_model = model.last().expect("the resubscription");
    for (name, lines, model) in [("before the gap", &lines[0], &model[0]), ("after the resync", &lines[1], last_model)]
    {
        let upto = lines.last().expect("lines").sequence;
        let checked: Vec<BookOracleEntry> = model.iter().filter(|e| e.sequence <= upto).cloned().collect();
        assert!(agree(A, &checked, lines) > 0, "{name}");
    }
    let summary = feed.summary();
    harness::assert_accounting_closes(&summary);
    assert!(field(&summary, "book_withheld") >= 1, "deltas between the resync and its snapshot: {summary:?}");
    assert_eq!(field(&summary, "book_rejected"), 0);
}

/// Proves a cross that lasts is flagged on the top lines, then resynced (reason crossed) and
/// whole again after the fresh snapshot, while a sweep — crossed only between one message's
/// levels — is never flagged.
#[test]
fn a_lasting_cross_is_flagged_then_resynced_and_a_sweep_is_not() {
    const A: &str = "BITSTAMP_SPOT_BTC_USD";
    const B: &str = "COINBASE_SPOT_ETH_USD";
    let sim = book_sim(&[A, B], vec![]);
    let mut feed =
        Feed::against(&sim.ws_url(), &sim.rest_url(), &format!("{A},{B}"), "book", &["--book-output", "both"]);
    let tag = format!("\"symbol_id\":\"{A}\"");
    assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| l.iter().filter(|x| x.contains(&tag)).count() >= 20));
    sim.inject(WsFault::BookSweep { symbol_id: B.to_string() });
    sim.inject(WsFault::BookCross { symbol_id: A.to_string(), duration: Duration::from_secs(4) });
    let synced = |l: &[String]| l.iter().any(|x| x.starts_with("{\"type\":\"book_synced\"") && x.contains(&tag));
    assert!(feed.stdout.wait_until(Duration::from_secs(30), synced), "no book_synced:\n{}", feed.stderr_text());
    let swept = sim.wait_for(Duration::from_secs(10), |ev| {
        ev.iter()
            .any(|e| matches!(&e.kind, coinfeed_sim::EventKind::FaultApplied { fault } if fault.contains("BookSweep")))
    });
    assert!(swept, "the sweep was applied");
    let after = feed.stdout.snapshot().len();
    assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| l[after..]
        .iter()
        .filter(|x| x.contains(&tag))
        .count()
        >= 20));
    feed.signal("INT");
    feed.wait_exit(Duration::from_secs(10));

    let out = feed.stdout.snapshot();
    let all = tops(&out);
    let a = tops_of(&all, A);
    let first_crossed = a.iter().position(|t| t.crossed).expect("the cross is flagged on a top line");
    let resyncs = control_lines(&out, "book_resync");
    assert_eq!(resyncs.len(), 1, "{resyncs:?}");
    assert_eq!((resyncs[0]["symbol_id"].as_str(), resyncs[0]["reason"].as_str()), (Some(A), Some("crossed")));
    assert!(first_crossed > 0, "the book was uncrossed before the fault");
    assert!(!a.last().expect("lines").crossed, "whole and uncrossed after the fresh snapshot");
    assert!(tops_of(&all, B).iter().all(|t| !t.crossed), "a cross inside one message is not flagged");
    let summary = feed.summary();
    harness::assert_accounting_closes(&summary);
    assert!(field(&summary, "book_crossed") >= 2 && field(&summary, "book_crossed_ms") >= 2_500, "{summary:?}");
}

/// Proves the bounds under a flood of distinct levels: each side keeps `--book-max-levels`
/// (the worst trimmed and counted) and its top lines still show the model's top; a symbol past
/// `--book-max-books` gets one `book_refused` line and its raw messages.
#[test]
fn a_flood_of_levels_is_trimmed_and_books_past_the_bound_are_refused() {
    const A: &str = "BITSTAMP_SPOT_BTC_USD";
    const B: &str = "COINBASE_SPOT_ETH_USD";
    let sim = book_sim(&[A, B], vec![10]);
    let mut feed = Feed::against(
        &sim.ws_url(),
        &sim.rest_url(),
        &format!("{A},{B}"),
        "book",
        &["--book-output", "top", "--book-max-levels", "200", "--book-max-books", "1"],
    );
    let refused = |l: &[String]| l.iter().any(|x| x.starts_with("{\"type\":\"book_refused\""));
    assert!(feed.stdout.wait_until(Duration::from_secs(20), refused), "no book_refused:\n{}", feed.stderr_text());
    let out = feed.stdout.snapshot();
    let line = &control_lines(&out, "book_refused")[0];
    let (kept, other) = if line["symbol_id"] == A { (B, A) } else { (A, B) };
    sim.inject(WsFault::BookLevelFlood { symbol_id: kept.to_string(), levels: 20_000 });
    let applied = sim.wait_for(Duration::from_secs(30), |ev| {
        ev.iter().any(
            |e| matches!(&e.kind, coinfeed_sim::EventKind::FaultApplied { fault } if fault.contains("BookLevelFlood")),
        )
    });
    let depth = sim.book_depth(kept);
    assert!(applied && depth.is_some_and(|(b, a)| b + a >= 20_000), "the flood never reached the model: {depth:?}");
    let sent = sim.book_oracle().len();
    assert!(wait_received(&feed, sent as u64 + 20, Duration::from_secs(60)), "{}", feed.stderr_text());
    // Memory: the levels the books hold (recounted every second) stay within the bound.
    let kept_levels = |l: &[String]| {
        let health = l.iter().rev().find(|x| x.contains("health: "))?;
        let kv = harness::key_values(health.split("health: ").nth(1).unwrap_or(""));
        Some((field(&kv, "received"), field(&kv, "book_levels")))
    };
    // Each worker recounts once a second: 2 s more of traffic (400 msg/s) means a count taken
    // after the flood reached the book.
    let after_flood = sent as u64 + 800;
    let counted = |l: &[String]| kept_levels(l).is_some_and(|(received, levels)| received >= after_flood && levels > 0);
    assert!(feed.stderr.wait_until(Duration::from_secs(10), counted), "{}", feed.stderr_text());
    let (_, levels) = kept_levels(&feed.stderr.snapshot()).expect("a health line");
    assert!(levels <= 2 * 200, "book_levels {levels}: one book of at most 200 levels a side");
    feed.signal("INT");
    feed.wait_exit(Duration::from_secs(10));

    let out = feed.stdout.snapshot();
    assert_eq!(control_lines(&out, "book_refused").len(), 1);
    let raw_other =
        out.iter().filter(|l| l.starts_with("{\"type\":\"book\"") && l.contains(&format!("\"{other}\""))).count();
    assert!(raw_other > 0, "the refused symbol's raw messages are written");
    let all = tops(&out);
    let lines = tops_of(&all, kept);
    let upto = lines.last().expect("lines").sequence;
    let model: Vec<BookOracleEntry> = oracle_of(&sim, kept).into_iter().filter(|e| e.sequence <= upto).collect();
    agree(kept, &model, &lines);
    let summary = feed.summary();
    harness::assert_accounting_closes(&summary);
    assert_eq!((field(&summary, "books_live"), field(&summary, "books_refused")), (1, 1));
    assert!(field(&summary, "book_levels_trimmed") >= 19_000, "{summary:?}");
    assert_eq!(field(&summary, "book_resyncs"), 0);
    eprintln!(
        "level flood: trimmed {}, peak_rss_kib {}",
        field(&summary, "book_levels_trimmed"),
        field(&summary, "peak_rss_kib")
    );
}

/// Proves `--book-output raw` (the default) writes every `book` message byte for byte as the
/// simulator sent it, in order, and no book line of its own.
#[test]
fn raw_book_output_is_byte_for_byte_the_messages() {
    const A: &str = "BITSTAMP_SPOT_BTC_USD";
    const N: u64 = 3_000;
    let sim = Sim::start(SimConfig {
        symbols: vec![A.to_string()],
        rate_per_sec: 2_000,
        max_messages: Some(N),
        record_sent: true,
        book_snapshot_every: 100,
        ..SimConfig::default()
    })
    .expect("sim");
    let mut feed = Feed::against(&sim.ws_url(), &sim.rest_url(), A, "book", &[]);
    assert!(feed.stdout.wait_until(Duration::from_secs(30), |l| harness::market_lines(l).len() as u64 >= N));
    feed.signal("INT");
    feed.wait_exit(Duration::from_secs(10));
    let out = feed.stdout.snapshot();
    let got: Vec<String> = harness::market_lines(&out).iter().map(|l| harness::strip_appended(l).0).collect();
    assert_eq!(got, sim.sent_frames(), "raw book lines are the messages, byte for byte, in order");
    assert!(out.iter().all(|l| !l.starts_with("{\"type\":\"book_")), "no book_* line in raw mode");
}
