//! The connection lifecycle against the simulator's WebSocket faults: dead links and hung
//! upgrades are abandoned on time, reconnects back off with jitter and never storm, server
//! notices and errors are obeyed, and 50 reconnects leak nothing.
//!
//! Times are taken from the simulator's event log (`SimEvent::at`), which records when the
//! server saw each connection, hello and close. Every feed subscribes to one stream (one
//! symbol, trades), whose sequence restarts at 1 on every connection: the number of output
//! lines carrying `"sequence":N,` is the number of connections that delivered N messages.

use std::cell::Cell;
use std::time::{Duration, Instant};

use coinfeed_sim::{EventKind, Sim, SimConfig, SimEvent, WsFault};

use crate::harness::{control_lines, count_control, field, max_in_window, Feed};

const SYMBOL: &str = "BITSTAMP_SPOT_BTC_USD";

fn sim(rate_per_sec: u64) -> Sim {
    Sim::start(SimConfig { rate_per_sec, ..SimConfig::default() }).expect("sim")
}

fn feed(sim: &Sim, extra: &[&str]) -> Feed {
    Feed::against(&sim.ws_url(), &sim.rest_url(), SYMBOL, "trade", extra)
}

fn is_connected(e: &SimEvent) -> bool {
    matches!(e.kind, EventKind::WsConnected { .. })
}

fn is_hello(e: &SimEvent) -> bool {
    matches!(e.kind, EventKind::Hello { .. })
}

fn is_ws_closed(e: &SimEvent) -> bool {
    matches!(e.kind, EventKind::WsClosed { .. })
}

fn is_refused(e: &SimEvent) -> bool {
    matches!(e.kind, EventKind::UpgradeRefused { .. })
}

fn is_fault(e: &SimEvent, name: &str) -> bool {
    matches!(&e.kind, EventKind::FaultApplied { fault } if fault.starts_with(name))
}

/// When the simulator logged the events matching `pred`, in order.
fn times(sim: &Sim, pred: impl Fn(&SimEvent) -> bool) -> Vec<Instant> {
    sim.events().iter().filter(|e| pred(e)).map(|e| e.at).collect()
}

/// Waits until the simulator has logged at least `n` events matching `pred`.
fn wait_events(sim: &Sim, n: usize, timeout: Duration, pred: impl Fn(&SimEvent) -> bool) -> bool {
    sim.wait_for(timeout, |ev| ev.iter().filter(|e| pred(e)).count() >= n)
}

/// Waits until `n` connections have each delivered the message with sequence `seq` to stdout.
/// Counts incrementally: the predicate runs on every chunk of output read, and rescanning all
/// of a long run's lines each time would slow the consumer down.
fn wait_connections_delivered(feed: &Feed, n: usize, seq: u64, timeout: Duration) -> bool {
    let needle = format!("\"sequence\":{seq},");
    let scanned = Cell::new(0usize);
    let found = Cell::new(0usize);
    feed.stdout.wait_until(timeout, |lines| {
        let new = lines[scanned.get()..].iter().filter(|l| l.contains(&needle)).count();
        scanned.set(lines.len());
        found.set(found.get() + new);
        found.get() >= n
    })
}

fn stderr_has(feed: &Feed, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
    feed.stderr.wait_until(timeout, |lines| lines.iter().any(|l| pred(l)))
}

/// Stops the feed with SIGINT and checks the clean exit.
fn stop_cleanly(feed: &mut Feed) {
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?}; stderr:\n{}", feed.stderr_text());
}

fn gaps_secs(times: &[Instant]) -> Vec<f64> {
    times.windows(2).map(|w| w[1].duration_since(w[0]).as_secs_f64()).collect()
}

/// A numeric field (in kB for memory) of `/proc/<pid>/status`.
fn proc_status(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/<pid>/fd").count()
}

/// (RSS KiB, open fds, threads) of a process.
fn resources(pid: u32) -> (u64, usize, u64) {
    (proc_status(pid, "VmRSS:"), open_fds(pid), proc_status(pid, "Threads:"))
}

/// The seconds of a `reconnecting in 2.3s ...` log line.
fn reconnect_wait_secs(line: &str) -> Option<f64> {
    let rest = line.split("reconnecting in ").nth(1)?;
    rest.split('s').next()?.trim().parse().ok()
}

/// Proves a stalled connection (socket open, nothing sent, not even heartbeats) is replaced
/// with a new connection and a fresh hello within stale-timeout + 1 s of the stall, and that
/// data flows again on the new connection.
#[test]
fn a_stalled_connection_is_replaced_within_stale_timeout_plus_one_second() {
    let sim = sim(1_000);
    let mut feed = feed(&sim, &["--stale-timeout", "1"]);
    assert!(wait_connections_delivered(&feed, 1, 50, Duration::from_secs(10)), "no data: {}", feed.stderr_text());

    let stalled_at = Instant::now();
    sim.inject(WsFault::Stall);
    assert!(
        wait_events(&sim, 2, Duration::from_secs(10), is_hello),
        "no second hello after the stall; stderr:\n{}",
        feed.stderr_text()
    );
    let hello = times(&sim, is_hello)[1];
    let took = hello.duration_since(stalled_at);
    eprintln!("stall-to-reconnect: {:.3} s (stale timeout 1 s)", took.as_secs_f64());
    assert!(took <= Duration::from_secs(2), "stall to new hello took {took:?} (> stale-timeout 1 s + 1 s)");
    // Nothing came for a whole stale timeout (less the reader's clock granularity) before the
    // connection was given up: the replacement is due to the silence, not something else.
    assert!(took >= Duration::from_millis(800), "replaced after only {took:?}, before the stale timeout");

    assert!(
        wait_connections_delivered(&feed, 2, 50, Duration::from_secs(10)),
        "no data on the new connection; stderr:\n{}",
        feed.stderr_text()
    );
    let out = feed.stdout.snapshot();
    let lines = control_lines(&out, "connection");
    let disconnected: Vec<_> = lines.iter().filter(|c| c["event"] == "disconnected").collect();
    assert_eq!(disconnected.len(), 1, "{lines:?}");
    assert_eq!(disconnected[0]["generation"], 1);
    assert!(disconnected[0]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{lines:?}");
    stop_cleanly(&mut feed);
    assert_eq!(field(&feed.summary(), "reconnects"), 1);
}

/// Proves a server that accepts TCP but never answers the upgrade is abandoned when
/// --connect-timeout (1 s) runs out, with a `connect_failed` line naming the timeout, and the
/// next attempt connects and delivers data.
#[test]
fn a_hung_upgrade_is_abandoned_at_the_connect_timeout() {
    let sim = sim(1_000);
    sim.inject(WsFault::HangUpgrade);
    let mut feed = feed(&sim, &["--connect-timeout", "1"]);

    let failed = feed.stdout.wait_until(Duration::from_secs(10), |l| {
        l.iter().any(|x| x.starts_with("{\"type\":\"connection\",\"event\":\"connect_failed\""))
    });
    let seen_at = Instant::now();
    assert!(failed, "no connect_failed line; stderr:\n{}", feed.stderr_text());
    let accepted = times(&sim, |e| is_fault(e, "HangUpgrade"));
    assert_eq!(accepted.len(), 1, "{:?}", sim.events());
    let line_after = seen_at.duration_since(accepted[0]);
    // The simulator notices the client's close within its 20 ms read tick.
    assert!(
        wait_events(&sim, 1, Duration::from_secs(5), |e| {
            matches!(&e.kind, EventKind::WsClosed { reason } if reason.contains("hung upgrade ended"))
        }),
        "the client never closed the hung socket: {:?}",
        sim.events()
    );
    let closed = times(&sim, is_ws_closed)[0];
    let closed_after = closed.duration_since(accepted[0]);
    eprintln!(
        "hung upgrade: socket closed {:.3} s and connect_failed seen {:.3} s after the TCP accept",
        closed_after.as_secs_f64(),
        line_after.as_secs_f64()
    );
    for (what, after) in [("socket close", closed_after), ("connect_failed line", line_after)] {
        assert!(
            after >= Duration::from_millis(850) && after <= Duration::from_millis(1_500),
            "{what} {after:?} after the TCP accept, expected about 1 s"
        );
    }

    let out = feed.stdout.snapshot();
    let lines = control_lines(&out, "connection");
    let failed = lines.iter().find(|c| c["event"] == "connect_failed").expect("connect_failed");
    assert_eq!(failed["generation"], 1);
    let reason = failed["reason"].as_str().unwrap_or("").to_ascii_lowercase();
    assert!(reason.contains("timeout") || reason.contains("timed out"), "reason does not name the timeout: {failed}");

    assert!(
        feed.stdout.wait_until(Duration::from_secs(10), |l| {
            l.iter().any(|x| x.starts_with("{\"type\":\"connection\",\"event\":\"connected\""))
        }),
        "no later connection; stderr:\n{}",
        feed.stderr_text()
    );
    assert!(wait_connections_delivered(&feed, 1, 50, Duration::from_secs(10)), "no data: {}", feed.stderr_text());
    stop_cleanly(&mut feed);
}

/// Proves the original plan's reconnect test: over 50 forced reconnects (each connection
/// delivers data, then is dropped), resident memory grows by less than 1 MiB between reconnect
/// 10 and 50 (after the REST client's first requests), open fds and threads stay the same, and no 10 s window holds more than 10
/// connection attempts. One test on purpose: that ceiling makes 51 connections take at least
/// ~45 s whatever the backoff, so expect it to run about 50 s.
#[test]
fn fifty_forced_reconnects_leak_nothing_and_never_storm() {
    const RECONNECTS: usize = 50;
    let sim = sim(500);
    // Each reconnect's trade window (a second of margin on each side of the outage, ~1,000
    // trades at 500/s) is fetched in one page, so recovery keeps up with one reconnect a second
    // and what is measured below is what the reconnects leave behind, not a recovery backlog
    // (which is bounded too: 16 windows per symbol).
    let mut feed = feed(&sim, &["--backoff-max", "0.2", "--recovery-trades-limit", "5000", "--recovery-rps", "5"]);
    let pid = feed.pid();
    let mut at_10 = None;
    let mut at_50 = None;
    for connection in 1..=RECONNECTS + 1 {
        // Each connection delivers 20 messages before it is dropped. The attempt ceiling can hold
        // a connection back up to 10 s.
        assert!(
            wait_connections_delivered(&feed, connection, 20, Duration::from_secs(15)),
            "connection {connection} delivered no data; stderr:\n{}",
            feed.stderr_text()
        );
        if (connection - 1) % 5 == 0 {
            eprintln!("reconnect {}: {:?}", connection - 1, resources(pid));
        }
        match connection - 1 {
            // By the 10th reconnect the REST client has made its first requests (its pooled
            // connection and buffers, ~1 MiB and one fd, are there from then on).
            10 => at_10 = Some(resources(pid)),
            RECONNECTS => at_50 = Some(resources(pid)),
            _ => {}
        }
        if connection <= RECONNECTS {
            sim.inject(WsFault::AbruptClose);
        }
    }
    let (rss_10, fds_10, threads_10) = at_10.expect("sampled at 10");
    let (rss_100, fds_100, threads_100) = at_50.expect("sampled at 50");
    eprintln!("after reconnect 10: rss {rss_10} KiB, {fds_10} fds, {threads_10} threads");
    eprintln!("after reconnect 50: rss {rss_100} KiB, {fds_100} fds, {threads_100} threads");

    let connects = times(&sim, is_connected);
    assert_eq!(connects.len(), RECONNECTS + 1, "one accepted connection per attempt");
    // The simulator stamps a connection when its upgrade is done, after the client's attempt
    // starts: a few milliseconds on an idle machine, more on a loaded one (two busy cores),
    // where that variation twice put 11 stamps into a window 50 ms short of 10 s. 500 ms short
    // absorbs it and still tells the ceiling from a storm (which would be hundreds).
    let max = max_in_window(&connects, Duration::from_millis(9_500));
    let span = connects[RECONNECTS].duration_since(connects[0]);
    eprintln!("51 connections in {:.1} s, at most {max} in any 10 s window", span.as_secs_f64());
    assert!(max <= 10, "{max} connection attempts within 10 s");

    assert!(rss_100 < rss_10 + 1024, "rss grew {rss_10} -> {rss_100} KiB over 40 reconnects");
    assert_eq!(fds_100, fds_10, "open file descriptors changed over 40 reconnects");
    assert_eq!(threads_100, threads_10, "thread count changed over 40 reconnects");

    stop_cleanly(&mut feed);
    let s = feed.summary();
    assert_eq!(field(&s, "connections"), RECONNECTS as u64 + 1, "{s:?}");
    assert_eq!(field(&s, "reconnects"), RECONNECTS as u64, "{s:?}");
}

/// Proves that a server which accepts and at once drops every connection does not cause a fast
/// loop: the first retry is immediate, later gaps between attempts stay under the exponential
/// ceilings (0.5 s doubling, capped by --backoff-max 4), grow beyond the first ceiling (the
/// short-lived connections do not reset the backoff), and differ where the cap makes the
/// ceiling equal (jitter). A single pair of jittered samples proves little ("5th gap > 1st
/// gap" fails whenever the 5th draw happens to be small), so the checks use a maximum and a
/// spread over several gaps; together they fail a correct policy about once in 10 000 runs.
#[test]
fn accept_then_drop_backs_off_with_growing_jittered_gaps() {
    const ATTEMPTS: usize = 9;
    const SLACK_S: f64 = 0.3;
    let sim = sim(1_000);
    // Waits for the first connection (no connection is live yet).
    sim.inject(WsFault::AbruptClose);
    let mut feed = feed(&sim, &["--backoff-max", "4"]);
    for dropped in 1..ATTEMPTS {
        assert!(
            wait_events(&sim, dropped, Duration::from_secs(10), is_ws_closed),
            "connection {dropped} was not dropped; events: {:?}",
            sim.events()
        );
        // For the next connection, whether it is already live or not.
        sim.inject(WsFault::AbruptClose);
    }
    assert!(
        wait_events(&sim, ATTEMPTS, Duration::from_secs(10), is_connected),
        "only {} attempts; stderr:\n{}",
        times(&sim, is_connected).len(),
        feed.stderr_text()
    );
    let gaps = gaps_secs(&times(&sim, is_connected)[..ATTEMPTS]);
    let shown: Vec<String> = gaps.iter().map(|g| format!("{g:.3}")).collect();
    eprintln!("accept-then-drop gaps between attempts (s): {}", shown.join(" "));

    let late_max = gaps[2..].iter().copied().fold(0.0, f64::max);
    assert!(late_max > 0.6, "no gap after the second grew past 0.6 s: the backoff was reset? {shown:?}");
    let capped = &gaps[4..];
    let spread = capped.iter().copied().fold(0.0, f64::max) - capped.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(spread > 0.1, "gaps at the cap are all equal (spread {spread:.3} s): no jitter? {shown:?}");
    // Retry r (1-based) waits 0 for r = 1 ("immediate": only the connect itself, a few ms on
    // loopback), then at most min(0.5 s * 2^(r-2), 4 s).
    let over: Vec<String> = gaps
        .iter()
        .enumerate()
        .filter_map(|(i, gap)| {
            let retry = i + 1;
            let (ceiling, slack) =
                if retry == 1 { (0.0, 0.15) } else { ((0.5 * f64::powi(2.0, retry as i32 - 2)).min(4.0), SLACK_S) };
            (*gap > ceiling + slack).then(|| format!("retry {retry} waited {gap:.3} s, ceiling {ceiling} s"))
        })
        .collect();
    assert!(over.is_empty(), "waits over the backoff ceilings: {over:?}; all gaps: {shown:?}");

    stop_cleanly(&mut feed);
}

/// Proves a `reconnect` notice (within 3 s, old connection left open by the server) leads to a
/// replacement connection with a new hello before the deadline, no error, and data continuing.
#[test]
fn a_reconnect_notice_moves_to_a_new_connection_before_the_deadline() {
    let sim = sim(1_000);
    let mut feed = feed(&sim, &[]);
    assert!(wait_connections_delivered(&feed, 1, 50, Duration::from_secs(10)), "no data: {}", feed.stderr_text());
    sim.inject(WsFault::ReconnectNotice { within_seconds: 3 });
    assert!(
        wait_events(&sim, 2, Duration::from_secs(6), is_hello),
        "no replacement hello; stderr:\n{}",
        feed.stderr_text()
    );
    let notice = times(&sim, |e| is_fault(e, "ReconnectNotice"));
    assert_eq!(notice.len(), 1);
    let hello = times(&sim, is_hello)[1];
    let took = hello.duration_since(notice[0]);
    eprintln!("reconnect notice to new hello: {:.3} s (deadline 3 s)", took.as_secs_f64());
    assert!(took < Duration::from_secs(3), "replacement hello {took:?} after a 3 s notice");

    assert!(
        wait_connections_delivered(&feed, 2, 50, Duration::from_secs(10)),
        "no data on the replacement connection; stderr:\n{}",
        feed.stderr_text()
    );
    stop_cleanly(&mut feed);
    let s = feed.summary();
    assert_eq!(field(&s, "connections"), 2, "{s:?}");
    assert_eq!(field(&s, "malformed"), 0, "{s:?}");
    assert_eq!(field(&s, "dropped"), 0, "{s:?}");
    let errors: Vec<String> = feed.stderr.snapshot().into_iter().filter(|l| l.contains("[ERROR]")).collect();
    assert!(errors.is_empty(), "a reconnect notice is not an error: {errors:?}");
}

/// Proves an `error` frame "Invalid API key" ends the process with exit code 3 after exactly
/// one connection attempt, with the server's message logged once on stderr.
#[test]
fn an_invalid_api_key_error_exits_3_after_one_attempt() {
    let sim = sim(1_000);
    let mut feed = feed(&sim, &[]);
    assert!(wait_connections_delivered(&feed, 1, 10, Duration::from_secs(10)), "no data: {}", feed.stderr_text());
    sim.inject(WsFault::Error { message: "Invalid API key".to_string() });
    let (status, took) = feed.wait_exit(Duration::from_secs(5));
    eprintln!("invalid key: exit {:?} after {:.3} s", status.code(), took.as_secs_f64());
    assert_eq!(status.code(), Some(3), "stderr:\n{}", feed.stderr_text());
    let first = sim.events().iter().find(|e| is_connected(e)).map(|e| e.conn).expect("a connection");
    // A connection made just before the exit could reach the simulator after it: give its accept
    // loop (5 ms poll) 200 ms to show any event of another connection.
    let retried = sim.wait_for(Duration::from_millis(200), |ev| ev.iter().any(|e| e.conn != first));
    assert!(!retried, "a refused key must not be retried: {:?}", sim.events());
    let stderr = feed.stderr.snapshot();
    let mentions: Vec<&String> = stderr.iter().filter(|l| l.contains("Invalid API key")).collect();
    assert!(!mentions.is_empty(), "the server's message is not on stderr:\n{}", stderr.join("\n"));
    assert_eq!(mentions.len(), 1, "the server's message should be logged once: {mentions:#?}");
}

/// Proves an upgrade refused with HTTP 401 (the key is not accepted) ends the process with exit
/// code 3 after one attempt instead of retrying.
#[test]
fn an_upgrade_refused_with_401_exits_3_without_retrying() {
    let sim = sim(1_000);
    sim.inject(WsFault::RefuseUpgrade { status: 401, retry_after_ms: None });
    let mut feed = feed(&sim, &[]);
    let (status, took) = feed.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "stderr:\n{}", feed.stderr_text());
    eprintln!("401 on upgrade: exit 3 after {:.3} s", took.as_secs_f64());
    assert_eq!(sim.events().iter().filter(|e| is_refused(e)).count(), 1, "{:?}", sim.events());
    assert!(feed.stderr_text().contains("401"), "the status is named:\n{}", feed.stderr_text());
}

/// Proves the "maximum allowed buffered messages" error frame is explained as reading too
/// slowly in a warning, and the client reconnects (new hello) and data continues.
#[test]
fn a_buffer_overflow_error_warns_and_reconnects() {
    let sim = sim(1_000);
    let mut feed = feed(&sim, &[]);
    assert!(wait_connections_delivered(&feed, 1, 50, Duration::from_secs(10)), "no data: {}", feed.stderr_text());
    sim.inject(WsFault::Error {
        message: "Reached maximum allowed buffered messages for this connection.".to_string(),
    });
    assert!(
        stderr_has(&feed, Duration::from_secs(5), |l| l.contains("[WARN]")
            && l.to_ascii_lowercase().contains("too slow")),
        "no warning about reading too slowly; stderr:\n{}",
        feed.stderr_text()
    );
    assert!(wait_events(&sim, 2, Duration::from_secs(10), is_hello), "no reconnect; stderr:\n{}", feed.stderr_text());
    assert!(
        wait_connections_delivered(&feed, 2, 50, Duration::from_secs(10)),
        "no data after the reconnect; stderr:\n{}",
        feed.stderr_text()
    );
    stop_cleanly(&mut feed);
    assert_eq!(field(&feed.summary(), "reconnects"), 1);
}

/// Proves a 5 MiB frame (over the 4 MiB limit) is refused: counted as malformed, logged as
/// oversized, and the client reconnects and data continues.
#[test]
fn an_oversized_frame_is_counted_and_the_client_reconnects() {
    let sim = sim(1_000);
    let mut feed = feed(&sim, &[]);
    assert!(wait_connections_delivered(&feed, 1, 50, Duration::from_secs(10)), "no data: {}", feed.stderr_text());
    sim.inject(WsFault::Oversized { bytes: 5 * 1024 * 1024 });
    assert!(
        stderr_has(&feed, Duration::from_secs(10), |l| l.to_ascii_lowercase().contains("oversized")),
        "no oversized log line; stderr:\n{}",
        feed.stderr_text()
    );
    assert!(wait_events(&sim, 2, Duration::from_secs(10), is_hello), "no reconnect; stderr:\n{}", feed.stderr_text());
    assert!(
        wait_connections_delivered(&feed, 2, 50, Duration::from_secs(10)),
        "no data after the reconnect; stderr:\n{}",
        feed.stderr_text()
    );
    stop_cleanly(&mut feed);
    let s = feed.summary();
    assert!(field(&s, "malformed") >= 1, "{s:?}");
    assert_eq!(field(&s, "reconnects"), 1, "{s:?}");
    assert!(!feed.stdout.snapshot().iter().any(|l| l.len() > 1024 * 1024), "the oversized frame reached stdout");
}

/// Proves Ctrl-C during a backoff wait of 2 s or more exits 0 within 1 s, without another
/// connection attempt.
#[test]
fn ctrl_c_during_backoff_exits_within_one_second() {
    let sim = sim(1_000);
    for _ in 0..40 {
        sim.inject(WsFault::RefuseUpgrade { status: 503, retry_after_ms: None });
    }
    let mut feed = feed(&sim, &["--backoff-max", "30"]);
    assert!(
        stderr_has(&feed, Duration::from_secs(40), |l| reconnect_wait_secs(l).is_some_and(|s| s >= 2.0)),
        "never a backoff wait of 2 s or more; stderr:\n{}",
        feed.stderr_text()
    );
    // Counted by the simulator's fault stamp, logged at accept, before the refusal is sent (the
    // `UpgradeRefused` stamp comes after it, possibly after the client already logged its wait).
    let is_attempt = |e: &SimEvent| is_fault(e, "RefuseUpgrade");
    let attempts = times(&sim, is_attempt).len();
    let signalled = Instant::now();
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    eprintln!("ctrl-c during backoff: exit {:?} after {} ms", status.code(), took.as_millis());
    assert!(status.success(), "exit {status:?}; stderr:\n{}", feed.stderr_text());
    assert!(took <= Duration::from_secs(1), "exit took {took:?}");
    // A connection made just before the exit could be accepted after it: give the simulator's
    // accept loop (5 ms poll) 200 ms to show one.
    let late = wait_events(&sim, attempts + 1, Duration::from_millis(200), is_attempt);
    assert!(!late, "an attempt was made after Ctrl-C: {:?}", sim.events());
    assert!(times(&sim, is_connected).is_empty());
}

/// Proves Ctrl-C while the upgrade hangs (TCP accepted, no answer, --connect-timeout 30)
/// exits 0 within 1 s.
#[test]
fn ctrl_c_during_a_hung_upgrade_exits_within_one_second() {
    let sim = sim(1_000);
    sim.inject(WsFault::HangUpgrade);
    let mut feed = feed(&sim, &["--connect-timeout", "30"]);
    assert!(
        wait_events(&sim, 1, Duration::from_secs(10), |e| is_fault(e, "HangUpgrade")),
        "the upgrade never reached the simulator; stderr:\n{}",
        feed.stderr_text()
    );
    // The client is now waiting on the upgrade; give it 300 ms in which nothing may come of it.
    let outcome = feed.stdout.wait_until(Duration::from_millis(300), |l| count_control(l, "connection") > 0);
    assert!(!outcome, "the hung upgrade ended on its own: {:?}", feed.stdout.snapshot());
    let signalled = Instant::now();
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    eprintln!("ctrl-c during a hung upgrade: exit {:?} after {} ms", status.code(), took.as_millis());
    assert!(status.success(), "exit {status:?}; stderr:\n{}", feed.stderr_text());
    assert!(took <= Duration::from_secs(1), "exit took {took:?}");
}

/// Proves Ctrl-C while the TCP connect itself hangs (a loopback listener whose accept queue is
/// full, so the kernel drops further SYNs; --connect-timeout 30) exits 0 within 1 s.
#[test]
fn ctrl_c_during_a_hanging_tcp_connect_exits_within_one_second() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Never accepted: fill the accept queue until a connect no longer completes.
    let mut held = Vec::new();
    let mut full = false;
    for _ in 0..4096 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "the accept queue never filled ({} connections)", held.len());
    let ws_url = format!("ws://{addr}/v1/");
    let sim = sim(1);
    let mut feed = Feed::start(
        &crate::harness::args(&ws_url, &sim.rest_url(), "BITSTAMP_SPOT_BTC_USD", "trade", &["--connect-timeout", "30"]),
        crate::harness::FeedOptions::default(),
    );
    // Nothing can come of the connect; 1.5 s in which no connection line may appear puts the
    // client inside it (past its first 0.9 s connect slice).
    let outcome = feed.stdout.wait_until(Duration::from_millis(1_500), |l| count_control(l, "connection") > 0);
    assert!(!outcome, "the connect ended on its own: {:?}", feed.stdout.snapshot());
    let signalled = Instant::now();
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    eprintln!("ctrl-c during a hanging tcp connect: exit {:?} after {} ms", status.code(), took.as_millis());
    assert!(status.success(), "exit {status:?}; stderr:\n{}", feed.stderr_text());
    assert!(took <= Duration::from_secs(1), "exit took {took:?}");
    drop(held);
}

/// Proves an upgrade refused with 429 and `X-WsRequestsPerIpLimit-RetryAfterMs: 2000` is
/// retried no earlier than 2 s later (and not much later), after which data flows.
#[test]
fn a_429_with_retry_after_ms_waits_as_told() {
    let sim = sim(1_000);
    sim.inject(WsFault::RefuseUpgrade { status: 429, retry_after_ms: Some(2_000) });
    let mut feed = feed(&sim, &[]);
    assert!(
        wait_events(&sim, 1, Duration::from_secs(10), is_connected),
        "no connection after the 429; stderr:\n{}",
        feed.stderr_text()
    );
    let refused = times(&sim, is_refused);
    assert_eq!(refused.len(), 1);
    let waited = times(&sim, is_connected)[0].duration_since(refused[0]);
    eprintln!("429 retry-after 2000 ms: next attempt {:.3} s later", waited.as_secs_f64());
    // The refusal is stamped just after the response was written, so the client may have read
    // it a few milliseconds before the stamp.
    assert!(waited >= Duration::from_millis(1_950), "retried after {waited:?}, told 2 s");
    assert!(waited <= Duration::from_millis(3_500), "retried only after {waited:?}, told 2 s");

    assert!(wait_connections_delivered(&feed, 1, 50, Duration::from_secs(10)), "no data: {}", feed.stderr_text());
    let out = feed.stdout.snapshot();
    let lines = control_lines(&out, "connection");
    let failed = lines.iter().find(|c| c["event"] == "connect_failed").expect("a connect_failed line");
    assert!(failed["reason"].as_str().is_some_and(|r| r.contains("429")), "{failed}");
    stop_cleanly(&mut feed);
}
