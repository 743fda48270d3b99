//! Failures inside the pipeline: a thread that panics must stop the whole run promptly with
//! exit 1 (never a hang, never exit 0 or the key-refused exit 3), and REST recovery must never
//! write a trade twice, whatever `--recovery-trades-limit` allows.
//!
//! Panics are injected through the debug-only hook `COINFEED_TEST_PANIC=<thread>:<n>` (the
//! thread panics once it has handled `n` items: frames dispatched for the reader, frames
//! handled for a worker, batches written for the writer, REST fetches for recovery).

// In a release build the panic tests (and what only they use) are compiled out with the hook.
#![cfg_attr(not(debug_assertions), allow(dead_code, unused_imports))]

use std::collections::HashMap;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use coinfeed::lanes;
use coinfeed_sim::{EventKind, Sim, SimConfig, WsFault};

use crate::harness::{self, control_lines, count_control, market_lines, rest_lines, Feed, FeedOptions};

/// How long after the panic the process must have exited by itself (the bound).
const EXIT_DEADLINE: Duration = Duration::from_secs(1);
/// How long the test waits for an exit before it declares a hang and inspects the process.
const HANG_DEADLINE: Duration = Duration::from_secs(5);
/// Routes to worker-0 of 2 (FNV-1a mod 2; checked in `two_symbols`).
const WORKER0_SYMBOL: &str = "BINANCE_SPOT_SOL_USDT";
/// Routes to worker-1 of 2.
const WORKER1_SYMBOL: &str = "BITSTAMP_SPOT_BTC_USD";
/// The per-symbol trade uuid memory before the fix, whatever the page size.
const UUID_MEMORY_BEFORE: usize = 256;

fn two_symbols() -> Vec<String> {
    assert_eq!(lanes::route(WORKER0_SYMBOL.as_bytes(), 2), 0, "{WORKER0_SYMBOL} must route to worker-0");
    assert_eq!(lanes::route(WORKER1_SYMBOL.as_bytes(), 2), 1, "{WORKER1_SYMBOL} must route to worker-1");
    vec![WORKER0_SYMBOL.to_string(), WORKER1_SYMBOL.to_string()]
}

/// The last `n` stderr lines other than health lines (the last health line is kept).
fn stderr_tail(feed: &Feed, n: usize) -> String {
    let all = feed.stderr.snapshot();
    let last_health = all.iter().rposition(|l| l.contains("health: "));
    let lines: Vec<&String> = all
        .iter()
        .enumerate()
        .filter(|(i, l)| !l.contains("health: ") || Some(*i) == last_health)
        .map(|(_, l)| l)
        .collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
}

fn describe(status: &ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exit code {c}"),
        None => format!("{status} (no exit code)"),
    }
}

/// The last `health:` line on stderr, if any.
fn last_health(feed: &Feed) -> Option<String> {
    feed.stderr.snapshot().into_iter().rev().find(|l| l.contains("health: "))
}

/// Lines already written to stdout are whole lines of valid JSON.
fn assert_whole_json_lines(feed: &Feed) {
    assert!(!feed.stdout.closed.lock().1, "stdout ended with a partial line");
    for line in feed.stdout.snapshot() {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&line) {
            panic!("stdout line is not valid JSON ({e}): {line}");
        }
    }
}

/// Starts coinfeed on two symbols (one per worker, `--workers 2`) with
/// `COINFEED_TEST_PANIC=<thread>:<after>`, waits for the injected panic, then requires the run
/// to end by itself within `EXIT_DEADLINE`: exit 1, the panicking thread named in a log line,
/// no `fix COINAPI_KEY`, whole JSON lines on stdout. If the process is still up at the
/// deadline, the test sends SIGINT to report what the process does then, and fails.
#[cfg(debug_assertions)]
fn a_panic_stops_the_run(thread: &str, after: u64, health_interval: &str) {
    let names = two_symbols();
    let sim = Sim::start(SimConfig { symbols: names.clone(), rate_per_sec: 500, ..SimConfig::default() }).expect("sim");
    let mut args = harness::args(&sim.ws_url(), &sim.rest_url(), &names.join(","), "trade", &["--workers", "2"]);
    let at = args.iter().position(|a| a == "--health-interval").expect("harness sets --health-interval");
    args[at + 1] = health_interval.to_string();
    let spec = format!("{thread}:{after}");
    let mut feed = Feed::start(
        &args,
        FeedOptions {
            env: vec![
                ("COINFEED_TEST_PANIC".into(), spec.clone()),
                // With RUST_BACKTRACE=1 (set on the CI machines) the panic hook symbolizes the
                // debug binary's DWARF before the thread unwinds: 1.1 s on a busy CI run, which
                // is the toolchain's time, not the pipeline's. The deadline is about coinfeed.
                ("RUST_BACKTRACE".into(), "0".into()),
            ],
            ..FeedOptions::default()
        },
    );

    if thread == "recovery" {
        // Recovery only runs for a gap: make one once the stream flows.
        assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 50));
        sim.inject(WsFault::GapOn { symbol_id: WORKER0_SYMBOL.to_string(), skip: 3 });
    }
    let injected = format!("injected test panic in {thread}");
    let seen = feed.stderr.wait_until(Duration::from_secs(20), |l| l.iter().any(|x| x.contains(&injected)));
    assert!(seen, "the injected panic ({spec}) never happened; stderr:\n{}", stderr_tail(&feed, 40));
    let panicked_at = Instant::now();
    let lines_at_panic = feed.stdout.snapshot().len();

    let Some((status, waited)) = feed.exit_within(HANG_DEADLINE) else {
        // Still running: gather what the run looks like now, then see what a signal does.
        let health = last_health(&feed).unwrap_or_else(|| "(no health line)".into());
        let out = feed.stdout.snapshot();
        let per_symbol = |s: &str| market_lines(&out[lines_at_panic..]).iter().filter(|l| l.contains(s)).count();
        let (w0, w1) = (per_symbol(WORKER0_SYMBOL), per_symbol(WORKER1_SYMBOL));
        let still_up = panicked_at.elapsed();
        feed.signal("INT");
        let after_signal = match feed.exit_within(Duration::from_secs(10)) {
            Some((s, t)) => format!("SIGINT then ended it with {} after {:.2}s", describe(&s), t.as_secs_f64()),
            None => "it did not exit within 10s of SIGINT either (killed)".to_string(),
        };
        let err = feed.stderr_text();
        panic!(
            "{thread} panicked ({spec}) but coinfeed was still running {:.2}s later with no signal sent \
             (hang deadline {}s); {after_signal}; stderr says 'fix COINAPI_KEY': {}; \
             stdout lines since the panic: {WORKER0_SYMBOL} (worker-0) {w0}, {WORKER1_SYMBOL} (worker-1) {w1}; \
             last health line before the signal: {health}\nstderr tail:\n{}",
            still_up.as_secs_f64(),
            HANG_DEADLINE.as_secs(),
            err.contains("fix COINAPI_KEY"),
            stderr_tail(&feed, 25)
        );
    };
    let elapsed = panicked_at.elapsed();
    eprintln!(
        "{thread} panic ({spec}): coinfeed exited by itself with {} {:.3}s after the panic was seen (waited {:.3}s)",
        describe(&status),
        elapsed.as_secs_f64(),
        waited.as_secs_f64()
    );
    let err = feed.stderr_text();
    let context = format!(
        "{}, {:.3}s after the panic; stderr tail:\n{}",
        describe(&status),
        elapsed.as_secs_f64(),
        stderr_tail(&feed, 25)
    );
    assert_eq!(status.code(), Some(1), "a panicked {thread} must end the run with exit 1: {context}");
    assert!(waited <= EXIT_DEADLINE, "a panicked {thread} must end the run within {EXIT_DEADLINE:?}: {context}");
    assert!(!err.contains("fix COINAPI_KEY"), "a panic is not a refused key: {context}");
    // coinfeed's own report, not only the Rust panic hook's `thread '<name>' panicked at ...`.
    let reported = feed
        .stderr
        .snapshot()
        .iter()
        .any(|l| !l.starts_with("thread '") && l.contains("panicked") && l.contains(thread));
    assert!(reported, "no log line names the panicked thread {thread:?}: {context}");
    assert_whole_json_lines(&feed);
}

/// Proves a panic in the reader thread stops the whole run by itself within seconds with exit
/// 1 (before the fix it skipped `shutdown.request()`, the recovery thread kept every worker
/// channel open, the process idled with no connection until a signal, then exited 3).
#[test]
#[cfg(debug_assertions)] // the fault hook exists only in debug builds
fn a_reader_panic_ends_the_run_with_exit_1() {
    a_panic_stops_the_run("reader", 200, "1");
}

/// Proves a panic in the writer thread stops the whole run by itself within seconds with exit
/// 1 (before the fix the supervisor returned and the main thread waited at the recovery
/// thread's join until a signal).
#[test]
#[cfg(debug_assertions)] // the fault hook exists only in debug builds
fn a_writer_panic_ends_the_run_with_exit_1() {
    a_panic_stops_the_run("writer", 20, "1");
}

/// Proves a panic in a worker stops the whole run by itself within seconds with exit 1 (before
/// the fix the health line's clones of the worker receivers kept the dead worker's channel
/// open, the reader dropped worker-0's symbols as "channel full" until Ctrl-C, and the run
/// exited 0).
#[test]
#[cfg(debug_assertions)] // the fault hook exists only in debug builds
fn a_worker_panic_ends_the_run_with_exit_1() {
    a_panic_stops_the_run("worker-0", 100, "0.2");
}

/// Proves a panic in the recovery thread (at its first REST request, after a gap) stops the
/// whole run by itself within seconds with exit 1 (before the fix the main thread waited for
/// the writer while the reader kept reading).
#[test]
#[cfg(debug_assertions)] // the fault hook exists only in debug builds
fn a_recovery_panic_ends_the_run_with_exit_1() {
    a_panic_stops_the_run("recovery", 1, "1");
}

/// The lower-case uuid of a trade line.
fn uuid_of(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["uuid"].as_str().map(str::to_ascii_lowercase)
}

/// Proves that a trade window whose margins overlap far more than 256 trades the stream wrote
/// (500 trades/s, a second of margin on each side) writes none of them twice, pages with
/// `--recovery-trades-limit 1000`, writes every withheld trade, and counts the overlap as
/// `duplicates` (before the fix only 256 uuids were remembered per symbol, whatever page size
/// the flag allowed: 602 of such a page's uuids were written twice).
#[test]
fn a_window_overlapping_more_than_256_written_trades_writes_none_twice() {
    let symbol = WORKER1_SYMBOL;
    let sim = Sim::start(SimConfig { symbols: vec![symbol.to_string()], rate_per_sec: 500, ..SimConfig::default() })
        .expect("sim");
    let mut feed = Feed::against(
        &sim.ws_url(),
        &sim.rest_url(),
        symbol,
        "trade",
        &["--workers", "2", "--recovery-trades-limit", "1000", "--recovery-rps", "10"],
    );
    // Well over 256 trades of the symbol are on stdout before the gap.
    let streamed = feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 600);
    assert!(streamed, "the stream did not deliver 600 trades; stderr:\n{}", stderr_tail(&feed, 30));
    sim.inject(WsFault::WithholdTrades { symbol_id: symbol.to_string(), duration: Duration::from_millis(300) });
    let recovered = feed.stdout.wait_until(Duration::from_secs(30), |l| count_control(l, "recovery") >= 1);
    assert!(
        recovered,
        "no recovery line; gaps: {:?}; stderr:\n{}",
        control_lines(&feed.stdout.snapshot(), "gap"),
        stderr_tail(&feed, 30)
    );
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}; stderr:\n{}", describe(&status), stderr_tail(&feed, 30));
    assert_whole_json_lines(&feed);

    let out = feed.stdout.snapshot();
    let requests: Vec<String> = sim
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::RestRequest { path, .. } => Some(path),
            _ => None,
        })
        .collect();
    assert!(requests.iter().all(|r| r.contains("/history?") && r.contains("limit=1000")), "{requests:?}");
    let rec_at = out.iter().position(|l| l.starts_with("{\"type\":\"recovery\"")).expect("recovery line");
    let rec: serde_json::Value = serde_json::from_str(&out[rec_at]).expect("recovery line is JSON");
    assert_eq!(rec["status"], "ok", "{rec}");
    let records = rec["records"].as_u64().expect("records");
    let recovered = rec["recovered"].as_u64().expect("recovered");
    let duplicates = rec["duplicates"].as_u64().expect("duplicates");
    assert_eq!(recovered + duplicates, records, "{rec}");
    assert_eq!(rec["requests"].as_u64(), Some(requests.len() as u64), "{rec}");
    assert_eq!(rec["missing"].as_u64(), Some(recovered), "every missing trade came back: {rec}");
    assert!(rec.get("unrecovered").is_none(), "{rec}");
    assert_eq!(rest_lines(&out).len() as u64, recovered, "{rec}");

    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in market_lines(&out).into_iter().chain(rest_lines(&out)) {
        let uuid = uuid_of(line).unwrap_or_else(|| panic!("trade line without uuid: {line}"));
        *counts.entry(uuid).or_default() += 1;
    }
    let withheld: Vec<String> = sim.stored_trades(symbol).into_iter().filter(|t| !t.streamed).map(|t| t.uuid).collect();
    let twice = counts.values().filter(|n| **n > 1).count();
    eprintln!(
        "window of {records} records in {} requests: {duplicates} already written, {recovered} new of {} withheld; uuids on stdout twice: {twice}",
        requests.len(),
        withheld.len()
    );
    assert_eq!(twice, 0, "{twice} trade uuids written twice; recovery line: {rec}");
    assert!(withheld.iter().all(|u| counts.contains_key(u)), "a withheld trade is missing from stdout");
    assert!(duplicates as usize > UUID_MEMORY_BEFORE, "the overlap exercised more than the old memory: {rec}");
}
