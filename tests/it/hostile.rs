//! A hostile server can't hurt us: each fault a broken or malicious endpoint could produce (the
//! simulator's `hostile` faults) is survived by the real binary with bounded memory and one
//! clear log line, and nothing is lost silently (the accounting closes).
//!
//! Memory is read from `/proc/<pid>/status` of the coinfeed process: the peak is reset through
//! `/proc/<pid>/clear_refs` once streaming is steady (the baseline), so `VmHWM` afterwards is the
//! peak reached during the fault. The bound, `GROWTH_MAX_KIB` above the baseline RSS, is what
//! the limits allow with room to spare: the largest buffer a fault can make coinfeed allocate is
//! a REST body read to its 8 MiB limit (a `Vec` grown by doubling: up to 16 MiB of capacity,
//! ~8 MiB touched) or a WebSocket frame reserved to its 4 MiB limit, each freed when refused;
//! any unbounded growth (a 4 GiB frame, an endless body or header) would be gigabytes.

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use coinfeed_sim::{EventKind, RestFault, Sim, SimConfig, WsFault};

use crate::harness::{assert_accounting_closes, control_lines, count_control, field, market_lines, Feed, KEY};

/// Peak memory growth allowed during a fault, above the RSS before it (see the module docs).
const GROWTH_MAX_KIB: u64 = 32 * 1024;

const SYMBOL: &str = "BITSTAMP_SPOT_BTC_USD";

/// A `VmXXX:` value of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// The memory before a fault: the current RSS, with the peak reset to it.
struct Memory {
    pid: u32,
    baseline_kib: u64,
}

impl Memory {
    fn baseline(feed: &Feed) -> Memory {
        let pid = feed.pid();
        // "5" resets VmHWM to the current RSS (proc(5), clear_refs).
        std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/clear_refs"))
            .and_then(|mut f| f.write_all(b"5"))
            .expect("reset the peak through clear_refs");
        Memory { pid, baseline_kib: status_kib(pid, "VmRSS:") }
    }

    /// The peak since the baseline, above it, checked against the bound; printed for the record.
    fn check(&self, what: &str) -> u64 {
        let peak = status_kib(self.pid, "VmHWM:");
        let growth = peak.saturating_sub(self.baseline_kib);
        eprintln!("hostile {what}: baseline {} KiB, peak {peak} KiB, growth {growth} KiB", self.baseline_kib);
        assert!(growth < GROWTH_MAX_KIB, "{what}: peak {peak} KiB is {growth} KiB above the baseline");
        growth
    }
}

/// A coinfeed streaming trades from a fresh simulator, past its first 200 lines.
fn streaming(sim: &Sim, extra: &[&str]) -> Feed {
    let feed = Feed::against(&sim.ws_url(), &sim.rest_url(), SYMBOL, "trade", extra);
    let started = feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 200);
    assert!(started, "not streaming; stderr:\n{}", feed.stderr_text());
    feed
}

fn connected_lines(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.starts_with(r#"{"type":"connection","event":"connected""#)).count()
}

/// Waits for `n` connections and then 100 more market lines than there were at that point.
fn wait_streaming_on(feed: &Feed, n: usize, timeout: Duration) {
    let ok = feed.stdout.wait_until(timeout, |l| connected_lines(l) >= n);
    assert!(ok, "no connection {n}; stderr:\n{}", feed.stderr_text());
    let before = market_lines(&feed.stdout.snapshot()).len();
    let ok = feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= before + 100);
    assert!(ok, "not streaming again on connection {n}; stderr:\n{}", feed.stderr_text());
}

/// Waits for a stderr line containing `text` and returns how many there are.
fn wait_log(feed: &Feed, text: &str, timeout: Duration) -> usize {
    wait_logs(feed, text, 1, timeout)
}

/// Waits for `n` stderr lines containing `text` and returns how many there are.
fn wait_logs(feed: &Feed, text: &str, n: usize, timeout: Duration) -> usize {
    let seen = feed.stderr.wait_until(timeout, |l| l.iter().filter(|x| x.contains(text)).count() >= n);
    assert!(seen, "no log line with {text:?}; stderr:\n{}", feed.stderr_text());
    let lines: Vec<String> = feed.stderr.snapshot().into_iter().filter(|x| x.contains(text)).collect();
    eprintln!("hostile log: {}", lines[lines.len() - 1]);
    lines.len()
}

/// Stops coinfeed, expects a clean exit and returns its summary (accounting checked).
fn stop(mut feed: Feed) -> (Feed, Vec<(String, String)>) {
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?}; stderr:\n{}", feed.stderr_text());
    let s = feed.summary();
    assert_accounting_closes(&s);
    let everything = format!("{}\n{}", feed.stderr_text(), feed.stdout.snapshot().join("\n"));
    assert!(!everything.contains(KEY), "the key leaked into the output");
    (feed, s)
}

/// When the simulator applied a fault whose description starts with `name`, and when the next
/// WebSocket connection after it was accepted.
fn fault_to_reconnect(sim: &Sim, name: &str) -> (Instant, Option<Instant>) {
    let events = sim.events();
    let applied = events
        .iter()
        .find(|e| matches!(&e.kind, EventKind::FaultApplied { fault } if fault.starts_with(name)))
        .unwrap_or_else(|| panic!("fault {name} not applied"))
        .at;
    let next = events.iter().find(|e| e.at > applied && matches!(e.kind, EventKind::WsConnected { .. })).map(|e| e.at);
    (applied, next)
}

/// Proves a frame header announcing 4 GiB is refused at the header (no 4 GiB buffer), counted as
/// one malformed message, logged once, and the client reconnects at once and streams on.
#[test]
fn a_frame_header_announcing_four_gib_is_refused_and_the_client_reconnects() {
    let sim = Sim::start(SimConfig { rate_per_sec: 500, ..SimConfig::default() }).expect("sim");
    let feed = streaming(&sim, &[]);
    let memory = Memory::baseline(&feed);
    sim.inject(WsFault::HugeFrameHeader { len: 4 << 30 });
    let line = "oversized frame: 4294967296 bytes exceed the 4 MiB limit";
    assert_eq!(wait_log(&feed, line, Duration::from_secs(10)), 1);
    wait_streaming_on(&feed, 2, Duration::from_secs(10));
    let (applied, reconnected) = fault_to_reconnect(&sim, "HugeFrameHeader");
    let took = reconnected.expect("a new connection").duration_since(applied);
    assert!(took < Duration::from_secs(2), "the first retry is immediate: reconnected after {took:?}");
    memory.check("4 GiB frame header");
    let (_, s) = stop(feed);
    assert_eq!((field(&s, "malformed"), field(&s, "reconnects")), (1, 1), "{s:?}");
}

/// Proves the trickle bug is fixed: a frame trickled faster than the 100 ms read tick (one byte
/// per 50 ms) used to keep tungstenite's `read()` inside its loop for as long as the server
/// liked, past every staleness check; now the message deadline drops the connection one stale
/// timeout (2 s) after the last whole message, and the client reconnects. The same holds for
/// one byte per second (slower than the tick: the staleness check sees the partial bytes).
#[test]
fn a_trickled_frame_is_dropped_after_the_stale_timeout_and_the_client_reconnects() {
    let sim = Sim::start(SimConfig { rate_per_sec: 500, ..SimConfig::default() }).expect("sim");
    let feed = streaming(&sim, &["--stale-timeout", "2"]);
    let memory = Memory::baseline(&feed);
    let line = "no complete message within 2.0 s while bytes trickle in";
    for (n, interval_ms) in [(2, 50u64), (3, 1000)] {
        sim.inject(WsFault::TrickleFrame { bytes: 100_000, interval: Duration::from_millis(interval_ms) });
        assert_eq!(wait_logs(&feed, line, n - 1, Duration::from_secs(10)), n - 1, "one line per trickle");
        wait_streaming_on(&feed, n, Duration::from_secs(10));
        let events = sim.events();
        let applied: Vec<Instant> = events
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::FaultApplied { fault } if fault.starts_with("TrickleFrame")))
            .map(|e| e.at)
            .collect();
        let at = applied[n - 2];
        let next = events.iter().find(|e| e.at > at && matches!(e.kind, EventKind::WsConnected { .. })).expect("next");
        let took = next.at.duration_since(at);
        eprintln!("hostile trickle every {interval_ms} ms: reconnected {took:?} after the fault");
        // The stale timeout from the last whole message, plus a read tick, the immediate retry
        // and a loaded machine's scheduling.
        assert!(
            (Duration::from_millis(1900)..Duration::from_millis(3500)).contains(&took),
            "dropped and reconnected {took:?} after a trickle every {interval_ms} ms"
        );
    }
    memory.check("trickled frame");
    let (_, s) = stop(feed);
    assert_eq!((field(&s, "malformed"), field(&s, "reconnects")), (0, 2), "{s:?}");
}

/// Proves a text frame that is not UTF-8 is one counted malformed message with one clear line;
/// the connection is failed as RFC 6455 asks, and the client reconnects and streams on.
#[test]
fn invalid_utf8_in_a_text_frame_is_counted_and_the_client_reconnects() {
    let sim = Sim::start(SimConfig { rate_per_sec: 500, ..SimConfig::default() }).expect("sim");
    let feed = streaming(&sim, &[]);
    let memory = Memory::baseline(&feed);
    sim.inject(WsFault::InvalidUtf8);
    assert_eq!(wait_log(&feed, "text frame is not valid UTF-8", Duration::from_secs(10)), 1);
    wait_streaming_on(&feed, 2, Duration::from_secs(10));
    memory.check("invalid UTF-8");
    let (_, s) = stop(feed);
    assert_eq!((field(&s, "malformed"), field(&s, "reconnects")), (1, 1), "{s:?}");
}

/// Proves a frame nesting a million arrays is refused at level 128 (no stack overflow), counted,
/// logged once, and costs neither the connection nor the messages around it.
#[test]
fn a_million_nested_arrays_are_one_malformed_message() {
    let sim = Sim::start(SimConfig { rate_per_sec: 500, ..SimConfig::default() }).expect("sim");
    let feed = streaming(&sim, &[]);
    let memory = Memory::baseline(&feed);
    sim.inject(WsFault::DeepNesting { depth: 1_000_000 });
    assert_eq!(wait_log(&feed, "JSON nested deeper than 128", Duration::from_secs(10)), 1);
    let before = market_lines(&feed.stdout.snapshot()).len();
    assert!(feed.stdout.wait_until(Duration::from_secs(10), |l| market_lines(l).len() >= before + 100));
    memory.check("deep nesting");
    let (_, s) = stop(feed);
    assert_eq!((field(&s, "malformed"), field(&s, "reconnects")), (1, 0), "{s:?}");
}

/// Proves the two hostile upgrade answers (5,000 headers; one header line that never ends) each
/// fail one connect attempt with one clear line and bounded memory (tungstenite parses at most
/// 124 headers and reads at most 64 KiB of head), and the next attempt connects.
#[test]
fn hostile_upgrade_answers_fail_one_attempt_each() {
    let sim = Sim::start(SimConfig { rate_per_sec: 500, ..SimConfig::default() }).expect("sim");
    let feed = streaming(&sim, &["--backoff-max", "1"]);
    let memory = Memory::baseline(&feed);
    let cases = [
        (WsFault::UpgradeHeaderFlood { count: 5_000 }, "upgrade response has too many headers"),
        (WsFault::UpgradeEndlessHeader, "upgrade response head refused: over 64 KiB"),
    ];
    for (n, (fault, line)) in cases.into_iter().enumerate() {
        sim.inject(fault);
        sim.inject(WsFault::AbruptClose);
        assert_eq!(wait_log(&feed, line, Duration::from_secs(10)), 1, "one line for {line:?}");
        wait_streaming_on(&feed, n + 2, Duration::from_secs(10));
    }
    memory.check("hostile upgrade answers");
    let failed = control_lines(&feed.stdout.snapshot(), "connection")
        .into_iter()
        .filter(|c| c["event"] == "connect_failed")
        .count();
    assert_eq!(failed, 2, "one failed attempt per fault");
    let (_, s) = stop(feed);
    assert_eq!(field(&s, "reconnects"), 2, "{s:?}");
}

/// One REST fault against one gap: the recovery line reports the failure with `error`, stderr
/// has `line` once, memory stays bounded, and streaming goes on. Returns the recovery line and
/// stderr.
fn rest_fault_case(fault: RestFault, line: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let sim = Sim::start(SimConfig { rate_per_sec: 500, ..SimConfig::default() }).expect("sim");
    let mut args = vec!["--recovery-max-attempts", "1", "--recovery-rps", "10"];
    args.extend_from_slice(extra);
    let feed = streaming(&sim, &args);
    let memory = Memory::baseline(&feed);
    sim.rest_fault(fault);
    sim.inject(WsFault::Gap { skip: 3 });
    let recovered = feed.stdout.wait_until(Duration::from_secs(30), |l| count_control(l, "recovery") >= 1);
    assert!(recovered, "no recovery line; stderr:\n{}", feed.stderr_text());
    let rec = control_lines(&feed.stdout.snapshot(), "recovery").remove(0);
    assert_eq!(rec["status"], "failed", "{rec}");
    assert!(rec["error"].as_str().is_some_and(|e| e.contains(line)), "{rec}");
    assert_eq!(wait_log(&feed, line, Duration::from_secs(5)), 1, "one clear line");
    let before = market_lines(&feed.stdout.snapshot()).len();
    assert!(feed.stdout.wait_until(Duration::from_secs(10), |l| market_lines(l).len() >= before + 100));
    memory.check(line);
    let (feed, s) = stop(feed);
    assert_eq!((field(&s, "reconnects"), field(&s, "recovery_failed")), (0, 1), "{s:?}");
    (rec, feed.stderr_text())
}

/// Proves a REST body that never ends (chunked) stops at the 8 MiB body limit.
#[test]
fn an_endless_rest_body_stops_at_the_body_limit() {
    rest_fault_case(RestFault::EndlessBody, "REST body exceeds 8388608 bytes", &[]);
}

/// Proves a REST body announced and sent as 4 GiB stops at the 8 MiB body limit.
#[test]
fn a_four_gib_rest_body_stops_at_the_body_limit() {
    rest_fault_case(RestFault::HugeBody { bytes: 4 << 30 }, "REST body exceeds 8388608 bytes", &[]);
}

/// Proves a REST answer trickled a byte per 100 ms ends at the 2 s request deadline.
#[test]
fn a_trickled_rest_answer_ends_at_the_request_deadline() {
    rest_fault_case(
        RestFault::Trickle { interval: Duration::from_millis(100) },
        "REST answer took longer than the 2.0 s request deadline",
        &["--recovery-timeout", "2"],
    );
}

/// Proves a REST body nesting a million arrays is refused at level 128, not a stack overflow.
#[test]
fn a_million_nested_arrays_in_a_rest_body_are_refused() {
    rest_fault_case(RestFault::DeepNesting { depth: 1_000_000 }, "JSON nested deeper than 128", &[]);
}

/// Proves a REST redirect is not followed: the key never goes to the other host (a listener of
/// ours that must see no connection), and the line names the host without echoing the URL.
#[test]
fn a_rest_redirect_is_not_followed() {
    let elsewhere = TcpListener::bind("127.0.0.1:0").expect("bind");
    elsewhere.set_nonblocking(true).expect("nonblocking");
    let location = format!("http://{}/v1/steal?apikey=secret-path", elsewhere.local_addr().expect("addr"));
    let (rec, stderr) =
        rest_fault_case(RestFault::Redirect { location }, "redirect not followed (HTTP 302 to host 127.0.0.1)", &[]);
    assert!(!rec.to_string().contains("steal"), "the Location's path is not echoed: {rec}");
    assert!(!stderr.contains("steal"), "the Location's path is not logged:\n{stderr}");
    assert!(elsewhere.accept().is_err(), "the redirect target was contacted");
}
