//! Stopping: Ctrl-C under load is quick and loses nothing it read; a closed stdout is a clean
//! stop; a second Ctrl-C exits at once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coinfeed_sim::{Sim, SimConfig};

use crate::harness::{args, assert_accounting_closes, bin, field, market_lines, Feed, FeedOptions, KEY};

/// Proves a real SIGINT under full load exits 0 within 2 s, the output ends with a complete
/// line, every line is valid JSON, and everything received was written.
#[test]
fn sigint_under_load_exits_0_within_2s_with_complete_output() {
    let sim = Sim::start(SimConfig { rate_per_sec: 0, ..SimConfig::default() }).expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    let mut feed = Feed::against(&sim.ws_url(), &sim.rest_url(), &symbols, "trade,quote", &["--queue-wait-ms", "5000"]);
    assert!(feed.stdout.wait_until(Duration::from_secs(30), |l| l.len() >= 20_000), "{}", feed.stderr_text());
    let signalled = Instant::now();
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    eprintln!("shutdown under load took {} ms", took.as_millis());
    assert!(status.success(), "exit {status:?}");
    assert!(took <= Duration::from_secs(2), "shutdown took {took:?}");

    assert!(!feed.stdout.closed.lock().1, "the output ends with a partial line");
    let out = feed.stdout.snapshot();
    for line in &out {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("invalid JSON line ({e}): {line}"));
    }
    let s = feed.summary();
    assert_eq!(field(&s, "written"), market_lines(&out).len() as u64);
    assert_accounting_closes(&s);
    assert_eq!(field(&s, "dropped"), 0, "{s:?}");
}

/// Proves `coinfeed | head -5` ends cleanly: exit 0, no panic, no error spam.
#[test]
fn a_closed_stdout_is_a_clean_stop() {
    let sim = Sim::start(SimConfig { rate_per_sec: 1_000, ..SimConfig::default() }).expect("sim");
    let mut child = Command::new(bin())
        .args(args(&sim.ws_url(), &sim.rest_url(), "BITSTAMP_SPOT_BTC_USD", "trade,quote", &[]))
        .env("COINAPI_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let first: Vec<String> = BufReader::new(stdout).lines().take(5).map(|l| l.expect("line")).collect();
    assert_eq!(first.len(), 5);
    // The reader went away (the BufReader was dropped with the pipe): like `head -5`.
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "coinfeed kept running after stdout closed");
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = std::io::read_to_string(child.stderr.take().expect("stderr")).expect("stderr");
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

/// Proves a second Ctrl-C exits at once with 130 while a graceful stop is stuck (stdout
/// blocked by a consumer that stopped reading).
#[test]
fn a_second_sigint_exits_130_at_once() {
    let sim = Sim::start(SimConfig { rate_per_sec: 0, ..SimConfig::default() }).expect("sim");
    let a = args(&sim.ws_url(), &sim.rest_url(), "BITSTAMP_SPOT_BTC_USD", "trade", &["--shutdown-timeout", "60"]);
    let mut feed = Feed::start(&a, FeedOptions { read_stdout: false, ..FeedOptions::default() });
    // Wait until the pipeline is clogged: the reader has started dropping.
    assert!(
        feed.stderr.wait_until(Duration::from_secs(30), |l| l.iter().any(|x| x.contains("dropping"))),
        "{}",
        feed.stderr_text()
    );
    feed.signal("INT");
    assert!(feed.stderr.wait_until(Duration::from_secs(5), |l| l.iter().any(|x| x.contains("stopping"))));
    let signalled = Instant::now();
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "{}", feed.stderr_text());
    assert!(signalled.elapsed() < Duration::from_secs(2));
}
