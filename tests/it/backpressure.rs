//! Back-pressure from the original test plan: a consumer that stops reading stdout must not
//! make the process grow or stop reading the socket; the loss is counted and reported.

use std::time::Duration;

use coinfeed_sim::{EventKind, Sim, SimConfig};

use crate::harness::{assert_accounting_closes, field, market_lines, Feed, FeedOptions};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The feed's largest resident memory, sampled (not synchronised on) every 20 ms until the
/// simulator has sent `n` messages, or 60 s.
fn max_rss_until_sent(sim: &Sim, feed: &Feed, n: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut max_rss = rss_kib(feed.pid());
    while sim.data_sent() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        max_rss = max_rss.max(rss_kib(feed.pid()));
    }
    max_rss
}

/// Waits (30 s at most) until the last health line shows all `n` messages read and `empty`
/// (the queues' or the buffer's empty mark): the accounting is complete then.
fn drained(feed: &Feed, n: u64, empty: &str) -> bool {
    let all_read = format!(" received={n} ");
    feed.stderr.wait_until(Duration::from_secs(30), |l| {
        l.iter().rev().find(|x| x.contains("health: ")).is_some_and(|h| h.contains(&all_read) && h.contains(empty))
    })
}

/// Proves that with a tiny queue and a stalled consumer, the channel never exceeds its
/// capacity, drops are counted per symbol and in total, memory stays bounded, the connection
/// stays up, and every received message is accounted for as written or dropped.
#[test]
fn a_stalled_consumer_causes_counted_drops_not_growth() {
    const N: u64 = 100_000;
    const CAPACITY: u64 = 8;
    let sim = Sim::start(SimConfig { rate_per_sec: 0, max_messages: Some(N), ..SimConfig::default() }).expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    let args = crate::harness::args(
        &sim.ws_url(),
        &sim.rest_url(),
        &symbols,
        "trade,quote",
        &["--queue-capacity", "8", "--queue-wait-ms", "5", "--workers", "1"],
    );
    let mut feed = Feed::start(&args, FeedOptions { read_stdout: false, ..FeedOptions::default() });

    // Nobody reads stdout: the pipe fills, then the writer's queue, then the worker's channel.
    // The simulator must still get every message out, because the reader keeps reading.
    // Sample the process's memory while it is stalled (sampling, not synchronisation).
    let max_rss = max_rss_until_sent(&sim, &feed, N);
    eprintln!("backpressure: max rss while stalled {max_rss} KiB");
    assert!(max_rss < 64 * 1024, "memory grew while the consumer stalled: {max_rss} KiB");
    let all_sent = sim.data_sent() >= N;
    assert!(all_sent, "the reader stopped reading: only {} of {N} sent", sim.data_sent());
    assert!(
        feed.stderr.wait_until(Duration::from_secs(10), |l| l.iter().any(|x| x.contains("dropping"))),
        "no drop warning; stderr:\n{}",
        feed.stderr_text()
    );

    // The consumer comes back: whatever was queued is written, the feed is still connected.
    feed.release_stdout();
    // "Sent" means the kernel took the bytes; wait until the reader has read them all and the
    // queue is empty before stopping, so the accounting below is complete.
    let quiet = drained(&feed, N, "queues=[0/8]");
    assert!(quiet, "queues never drained; stderr:\n{}", feed.stderr_text());
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success());

    let s = feed.summary();
    let (received, written, dropped) = (field(&s, "received"), field(&s, "written"), field(&s, "dropped"));
    eprintln!(
        "backpressure: received={received} written={written} dropped={dropped} peak_rss_kib={}",
        field(&s, "peak_rss_kib")
    );
    assert_eq!(received, N, "every message sent was read from the socket");
    assert!(dropped > 0, "a stalled consumer must cause drops");
    assert_accounting_closes(&s);
    assert_eq!(market_lines(&feed.stdout.snapshot()).len() as u64, written);
    assert!(field(&s, "max_queue_depth") <= CAPACITY, "{s:?}");
    assert!(s.iter().any(|(k, _)| k == "dropped_by_symbol"), "per-symbol drops reported: {s:?}");
    assert_eq!(field(&s, "reconnects"), 0, "the connection must stay up");
    let connects = sim.events().iter().filter(|e| matches!(e.kind, EventKind::WsConnected { .. })).count();
    assert_eq!(connects, 1);
}

/// Proves the stall absorption: 8,000 msg/s for 20 s into a consumer that stops reading
/// for 0.4 s every 2 s and once for 3 s: every message is written exactly once, nothing is
/// dropped, the connection stays up, and resident memory stays bounded and comes back near its
/// level before the stalls once they have drained.
#[test]
fn consumer_stalls_are_absorbed_without_a_drop_and_memory_comes_back() {
    const RATE: u64 = 8_000;
    const N: u64 = RATE * 20;
    let sim = Sim::start(SimConfig { rate_per_sec: RATE, max_messages: Some(N), ..SimConfig::default() }).expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    let args = crate::harness::args(&sim.ws_url(), &sim.rest_url(), &symbols, "trade,quote", &[]);
    let mut pauses: Vec<(Duration, Duration)> =
        (1..10).map(|i| (Duration::from_secs(2 * i), Duration::from_millis(400))).collect();
    pauses[4] = (Duration::from_secs(10), Duration::from_secs(3));
    let mut feed = Feed::start(&args, FeedOptions { pauses, ..FeedOptions::default() });
    let pid = feed.pid();
    // Memory before the first stall, once the stream runs.
    assert!(feed.stdout.wait_until(Duration::from_secs(10), |l| l.len() >= 8_000));
    let before = rss_kib(pid);
    let peak = max_rss_until_sent(&sim, &feed, N);
    let empty = drained(&feed, N, " buffer_kib=0/");
    assert!(empty, "the buffer never drained; stderr:\n{}", feed.stderr_text());
    assert!(feed.stdout.wait_until(Duration::from_secs(30), |l| market_lines(l).len() as u64 >= N));
    let settled = rss_kib(pid);
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    let s = feed.summary();
    eprintln!(
        "stalls: {N} messages, dropped {}, rss before {before} KiB, peak {peak} KiB, settled {settled} KiB",
        field(&s, "dropped")
    );
    assert_eq!(field(&s, "received"), N);
    assert_eq!(field(&s, "dropped"), 0, "a stall within the buffer loses nothing");
    assert_eq!(field(&s, "written"), N, "every message written");
    let out = feed.stdout.snapshot();
    let mut seen = std::collections::HashSet::new();
    for line in market_lines(&out) {
        let (body, _) = crate::harness::strip_appended(line);
        assert!(seen.insert(body), "a message was written twice");
    }
    assert_eq!(field(&s, "reconnects"), 0, "the connection stayed up");
    assert!(peak < 128 * 1024, "memory grew past the buffer: {peak} KiB");
    assert!(settled <= before + 8 * 1024, "memory stayed up after the stalls: {before} -> {settled} KiB");
    assert_accounting_closes(&s);
}

/// Proves a sustained overload is still shed within `--buffer-mib` (no message cap): the buffer
/// never holds more than its budget, drops are counted, and the connection stays up.
#[test]
fn a_sustained_overload_is_shed_within_the_buffer() {
    const N: u64 = 200_000;
    let sim = Sim::start(SimConfig { rate_per_sec: 0, max_messages: Some(N), ..SimConfig::default() }).expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    let args = crate::harness::args(
        &sim.ws_url(),
        &sim.rest_url(),
        &symbols,
        "trade,quote",
        &["--buffer-mib", "2", "--queue-wait-ms", "5", "--workers", "1"],
    );
    let mut feed = Feed::start(&args, FeedOptions { read_stdout: false, ..FeedOptions::default() });
    let max_rss = max_rss_until_sent(&sim, &feed, N);
    assert!(sim.data_sent() >= N, "the reader stopped reading: only {} of {N} sent", sim.data_sent());
    feed.release_stdout();
    let quiet = drained(&feed, N, " buffer_kib=0/2048");
    assert!(quiet, "the buffer never drained; stderr:\n{}", feed.stderr_text());
    let buffers: Vec<u64> = feed
        .stderr
        .snapshot()
        .iter()
        .filter_map(|l| l.split(" buffer_kib=").nth(1)?.split('/').next()?.parse().ok())
        .collect();
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    let s = feed.summary();
    eprintln!(
        "overload: dropped {} of {N}, max rss {max_rss} KiB, buffer max {:?} KiB",
        field(&s, "dropped"),
        buffers.iter().max()
    );
    assert!(field(&s, "dropped") > 0, "a stalled consumer must cause drops");
    assert!(buffers.iter().all(|b| *b <= 2048), "the buffer exceeded --buffer-mib: {buffers:?}");
    assert!(max_rss < 64 * 1024, "memory grew: {max_rss} KiB");
    assert_eq!(field(&s, "reconnects"), 0, "the connection must stay up");
    assert_accounting_closes(&s);
}
