//! The Prometheus endpoint against the real binary: its page passes the Prometheus project's own
//! parser (the official Python client, installed into target/prom-venv by tests/prom/install.sh,
//! which `./run.sh test` runs) while the pipeline runs under load, its counters match the
//! summary at exit, and /health turns 503 during a stall and 200 after it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coinfeed_sim::{Sim, SimConfig, WsFault};

use crate::harness::{field, Feed};

/// One GET over a fresh connection: (status code, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The endpoint's address, from the line coinfeed logs once it listens.
fn endpoint(feed: &Feed) -> SocketAddr {
    assert!(
        feed.stderr.wait_until(Duration::from_secs(20), |l| l.iter().any(|x| x.contains("metrics on http://"))),
        "{}",
        feed.stderr_text()
    );
    let text = feed.stderr_text();
    let at = text.split("metrics on http://").nth(1).and_then(|t| t.split('/').next()).expect("address");
    at.parse().expect("a socket address")
}

/// The value of a sample line `name value` (no labels) on a page.
fn sample(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no sample {name} on the page:\n{page}")) as u64
}

fn python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/prom-venv/bin/python");
    assert!(py.exists(), "the Prometheus parser is not installed: run tests/prom/install.sh (./run.sh test does)");
    py
}

/// Holds a page to the Prometheus client's parser and the strict rules of tests/prom/check.py.
fn check_with_prometheus_parser(page: &str) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/prom/check.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run check.py");
    child.stdin.take().expect("stdin").write_all(page.as_bytes()).expect("write the page");
    let out = child.wait_with_output().expect("check.py");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Prometheus parser refused the page: {text}\n{page}");
    text
}

/// Proves the page parses with the Prometheus client while 200,000 messages flow, every scrape
/// answers, the counters only grow, and at exit they equal the summary's.
#[test]
fn the_page_parses_under_load_and_matches_the_summary() {
    const N: u64 = 200_000;
    let sim =
        Sim::start(SimConfig { rate_per_sec: 50_000, max_messages: Some(N), ..SimConfig::default() }).expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    let mut feed =
        Feed::against(&sim.ws_url(), &sim.rest_url(), &symbols, "trade,quote", &["--metrics-listen", "127.0.0.1:0"]);
    let addr = endpoint(&feed);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut scrapes, mut last_received) = (0u64, 0u64);
    let mut checked_under_load = false;
    loop {
        let (status, page) = get(addr, "/metrics");
        assert_eq!(status, 200, "{page}");
        scrapes += 1;
        let received = sample(&page, "coinfeed_received_total");
        assert!(received >= last_received, "a counter went down: {last_received} then {received}");
        last_received = received;
        if !checked_under_load && received > N / 4 && received < N {
            check_with_prometheus_parser(&page);
            checked_under_load = true;
        }
        if sample(&page, "coinfeed_written_total") == N || Instant::now() > deadline {
            break;
        }
    }
    assert!(checked_under_load, "no page was taken mid-run ({scrapes} scrapes)");
    let (_, page) = get(addr, "/metrics");
    let verdict = check_with_prometheus_parser(&page);
    assert!(verdict.starts_with("ok "), "{verdict}");
    for needle in [
        "# TYPE coinfeed_received_total counter",
        "# TYPE coinfeed_connected gauge",
        "coinfeed_queue_depth{worker=\"0\"}",
        "coinfeed_queue_bytes{worker=\"0\"}",
        "coinfeed_resident_memory_bytes ",
        "coinfeed_seconds_since_last_message ",
        "coinfeed_books_live ",
        "coinfeed_recovery_pending ",
    ] {
        assert!(page.contains(needle), "the page lacks {needle}:\n{page}");
    }
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let summary = feed.summary();
    for name in
        ["received", "written", "dropped", "malformed", "gaps", "duplicate_trades", "connections", "recovery_requests"]
    {
        assert_eq!(sample(&page, &format!("coinfeed_{name}_total")), field(&summary, name), "{name}");
    }
    assert_eq!(field(&summary, "written"), N);
    assert!(field(&summary, "metrics_scrapes") >= scrapes, "{scrapes} scrapes");
}

/// Proves /health is 200 while data flows, 503 with the reason during a stall, and 200 again
/// once the reconnected feed flows.
#[test]
fn health_turns_503_during_a_stall_and_200_after() {
    let sim = Sim::start(SimConfig { rate_per_sec: 200, ..SimConfig::default() }).expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    let feed = Feed::against(
        &sim.ws_url(),
        &sim.rest_url(),
        &symbols,
        "trade,quote",
        &["--metrics-listen", "127.0.0.1:0", "--stale-timeout", "2"],
    );
    let addr = endpoint(&feed);
    let wait_for = |want: u16, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, body) = get(addr, "/health");
            if status == want || Instant::now() > deadline {
                return (status, body);
            }
            // Polling an HTTP endpoint: it has no way to push its state.
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(wait_for(200, 10).0, 200, "healthy while data flows");
    sim.inject(WsFault::Stall);
    let (status, body) = wait_for(503, 10);
    assert_eq!(status, 503, "a stall makes it unhealthy: {body}");
    assert!(body.contains("no message for") || body.contains("not connected"), "{body}");
    let (status, body) = wait_for(200, 20);
    assert_eq!(status, 200, "healthy again after the reconnect: {body}\n{}", feed.stderr_text());
    let (status, _) = get(addr, "/nothing-here");
    assert_eq!(status, 404);
}
