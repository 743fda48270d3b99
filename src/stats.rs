//! Counters shared by the pipeline's threads, the health line and the final summary.
//!
//! Counters are relaxed atomics written on the hot path and read only for reports. The
//! accounting identity the tests check: every data frame the reader received is either dropped
//! by the reader (full channel), or decoded by a worker into exactly one of written, malformed or
//! unknown type or duplicate trade:
//! `received = dropped + written + malformed + unknown_type + duplicate_trades` once drained.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Distinct symbols tracked for per-symbol drop counts; more are summed under `(other)`.
const DROP_SYMBOLS_MAX: usize = 1_000;

#[derive(Debug)]
pub struct Stats {
    /// Data frames (not heartbeats, not error/reconnect notices) read from the socket.
    pub received: AtomicU64,
    /// Data frames the reader shed because a worker's channel stayed full.
    pub dropped: AtomicU64,
    /// Market-data lines written to stdout.
    pub written: AtomicU64,
    /// Frames that were not valid CoinAPI messages (bad JSON, not an object, missing fields,
    /// binary frames).
    pub malformed: AtomicU64,
    /// Valid JSON objects of a type this program does not handle.
    pub unknown_type: AtomicU64,
    pub heartbeats: AtomicU64,
    /// Control lines (connection, ...) written to stdout.
    pub control_lines: AtomicU64,
    /// Control lines that could not be queued to the writer in time (stdout stuck).
    pub control_lines_lost: AtomicU64,
    pub bytes_written: AtomicU64,
    pub connections: AtomicU64,
    pub reconnects: AtomicU64,
    /// Highest depth any worker channel reached, sampled by the reader after each send.
    pub max_queue_depth: AtomicU64,
    /// Trades not written because their uuid was already written (exchange duplicates, or REST
    /// records overlapping the stream).
    pub duplicate_trades: AtomicU64,
    /// Sequence jumps detected (one per gap line with reason `sequence`).
    pub gaps: AtomicU64,
    /// Streams that were live when their connection ended (gap lines with reason `reconnect`).
    pub reconnect_gaps: AtomicU64,
    /// Messages repeating the previous sequence, and steps backwards.
    pub sequence_repeats: AtomicU64,
    pub sequence_regressions: AtomicU64,
    /// Gaps not queued for recovery because `--recovery-max-pending` keys were already pending.
    pub recovery_overflow: AtomicU64,
    /// Recovery keys pending (gauge, set by the recovery thread).
    pub recovery_pending: AtomicU64,
    pub recovery_requests: AtomicU64,
    /// Keys recovered (`recovery` lines with status ok) and given up (status failed).
    pub recovery_ok: AtomicU64,
    pub recovery_failed: AtomicU64,
    /// REST answers 429.
    pub recovery_rate_limited: AtomicU64,
    /// REST records written to stdout.
    pub recovered_written: AtomicU64,
    /// Last `X-RateLimit-Remaining` seen (`i64::MIN`: never).
    pub rate_limit_remaining: AtomicI64,
    /// Last `X-RateLimit-Request-Cost` seen (`u64::MAX`: never).
    pub rate_limit_request_cost: AtomicU64,
    /// When the last 429 arrived, Unix seconds (0: never).
    pub last_429_unix_s: AtomicU64,
    /// Symbols that sent data before but none for a minute (gauge; summed over workers).
    pub silent_symbols: AtomicU64,
    drops_by_symbol: Mutex<HashMap<Box<str>, u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            unknown_type: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            control_lines: AtomicU64::new(0),
            control_lines_lost: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            max_queue_depth: AtomicU64::new(0),
            duplicate_trades: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            reconnect_gaps: AtomicU64::new(0),
            sequence_repeats: AtomicU64::new(0),
            sequence_regressions: AtomicU64::new(0),
            recovery_overflow: AtomicU64::new(0),
            recovery_pending: AtomicU64::new(0),
            recovery_requests: AtomicU64::new(0),
            recovery_ok: AtomicU64::new(0),
            recovery_failed: AtomicU64::new(0),
            recovery_rate_limited: AtomicU64::new(0),
            recovered_written: AtomicU64::new(0),
            rate_limit_remaining: AtomicI64::new(i64::MIN),
            rate_limit_request_cost: AtomicU64::new(u64::MAX),
            last_429_unix_s: AtomicU64::new(0),
            silent_symbols: AtomicU64::new(0),
            drops_by_symbol: Mutex::new(HashMap::new()),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub received: u64,
    pub dropped: u64,
    pub written: u64,
    pub malformed: u64,
    pub unknown_type: u64,
    pub heartbeats: u64,
    pub control_lines: u64,
    pub control_lines_lost: u64,
    pub bytes_written: u64,
    pub connections: u64,
    pub reconnects: u64,
    pub max_queue_depth: u64,
    pub duplicate_trades: u64,
    pub gaps: u64,
    pub reconnect_gaps: u64,
    pub sequence_repeats: u64,
    pub sequence_regressions: u64,
    pub recovery_overflow: u64,
    pub recovery_pending: u64,
    pub recovery_requests: u64,
    pub recovery_ok: u64,
    pub recovery_failed: u64,
    pub recovery_rate_limited: u64,
    pub recovered_written: u64,
    /// `None` until CoinAPI sent `X-RateLimit-Remaining`.
    pub rate_limit_remaining: Option<i64>,
    pub rate_limit_request_cost: Option<u64>,
    /// Unix seconds of the last 429, if any.
    pub last_429_unix_s: Option<u64>,
    pub silent_symbols: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn record_drop(&self, symbol_id: &[u8]) {
        Stats::add(&self.dropped, 1);
        let key = std::str::from_utf8(symbol_id).unwrap_or("(invalid utf-8)");
        let mut map = self.drops_by_symbol.lock();
        if let Some(n) = map.get_mut(key) {
            *n += 1;
        } else if map.len() < DROP_SYMBOLS_MAX {
            map.insert(key.into(), 1);
        } else {
            *map.entry("(other)".into()).or_insert(0) += 1;
        }
    }

    pub fn note_queue_depth(&self, depth: usize) {
        self.max_queue_depth.fetch_max(depth as u64, Ordering::Relaxed);
    }

    /// Drop counts per symbol, largest first, at most `n`.
    pub fn top_drops(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.drops_by_symbol.lock().iter().map(|(k, v)| (k.to_string(), *v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            received: g(&self.received),
            dropped: g(&self.dropped),
            written: g(&self.written),
            malformed: g(&self.malformed),
            unknown_type: g(&self.unknown_type),
            heartbeats: g(&self.heartbeats),
            control_lines: g(&self.control_lines),
            control_lines_lost: g(&self.control_lines_lost),
            bytes_written: g(&self.bytes_written),
            connections: g(&self.connections),
            reconnects: g(&self.reconnects),
            max_queue_depth: g(&self.max_queue_depth),
            duplicate_trades: g(&self.duplicate_trades),
            gaps: g(&self.gaps),
            reconnect_gaps: g(&self.reconnect_gaps),
            sequence_repeats: g(&self.sequence_repeats),
            sequence_regressions: g(&self.sequence_regressions),
            recovery_overflow: g(&self.recovery_overflow),
            recovery_pending: g(&self.recovery_pending),
            recovery_requests: g(&self.recovery_requests),
            recovery_ok: g(&self.recovery_ok),
            recovery_failed: g(&self.recovery_failed),
            recovery_rate_limited: g(&self.recovery_rate_limited),
            recovered_written: g(&self.recovered_written),
            rate_limit_remaining: Some(self.rate_limit_remaining.load(Ordering::Relaxed)).filter(|v| *v != i64::MIN),
            rate_limit_request_cost: Some(g(&self.rate_limit_request_cost)).filter(|v| *v != u64::MAX),
            last_429_unix_s: Some(g(&self.last_429_unix_s)).filter(|v| *v != 0),
            silent_symbols: g(&self.silent_symbols),
        }
    }
}

/// Resident and peak memory of this process in KiB, from /proc/self/status (VmRSS, VmHWM).
/// `None` where /proc is not available.
pub fn memory_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// One health line: `key=value` pairs, readable by people and by `grep`/`awk`.
pub fn health_line(now: &Snapshot, prev: &Snapshot, elapsed: Duration, depths: &[usize], capacity: usize) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = (now.received - prev.received) as f64 / secs;
    let mut s = format!("health: rate_msg_s={rate:.0} ");
    push_counts(&mut s, now);
    let _ = write!(s, " queues=[");
    for (i, d) in depths.iter().enumerate() {
        let _ = write!(s, "{}{d}/{capacity}", if i > 0 { "," } else { "" });
    }
    let _ = write!(s, "] max_queue_depth={} silent_symbols={}", now.max_queue_depth, now.silent_symbols);
    if let Some((rss, _)) = memory_kib() {
        let _ = write!(s, " rss_kib={rss}");
    }
    s
}

/// The final summary: totals, uptime, peak memory and the symbols that lost the most.
pub fn summary_line(now: &Snapshot, uptime: Duration, top_drops: &[(String, u64)]) -> String {
    let mut s = String::from("summary: ");
    push_counts(&mut s, now);
    let _ = write!(
        s,
        " control_lines={} control_lines_lost={} bytes_written={} max_queue_depth={} uptime_s={:.1}",
        now.control_lines,
        now.control_lines_lost,
        now.bytes_written,
        now.max_queue_depth,
        uptime.as_secs_f64()
    );
    if let Some((rss, peak)) = memory_kib() {
        let _ = write!(s, " rss_kib={rss} peak_rss_kib={peak}");
    }
    if !top_drops.is_empty() {
        let list: Vec<String> = top_drops.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        let _ = write!(s, " dropped_by_symbol={}", list.join(","));
    }
    s
}

fn push_counts(s: &mut String, n: &Snapshot) {
    let _ = write!(
        s,
        "received={} written={} dropped={} malformed={} unknown_type={} duplicate_trades={} heartbeats={} \
         connections={} reconnects={} gaps={} reconnect_gaps={} sequence_repeats={} sequence_regressions={} \
         recovery_pending={} recovery_requests={} recovery_ok={} recovery_failed={} recovery_overflow={} \
         recovery_rate_limited={} recovered_written={}",
        n.received,
        n.written,
        n.dropped,
        n.malformed,
        n.unknown_type,
        n.duplicate_trades,
        n.heartbeats,
        n.connections,
        n.reconnects,
        n.gaps,
        n.reconnect_gaps,
        n.sequence_repeats,
        n.sequence_regressions,
        n.recovery_pending,
        n.recovery_requests,
        n.recovery_ok,
        n.recovery_failed,
        n.recovery_overflow,
        n.recovery_rate_limited,
        n.recovered_written
    );
    if let Some(r) = n.rate_limit_remaining {
        let _ = write!(s, " rate_limit_remaining={r}");
    }
    if let Some(c) = n.rate_limit_request_cost {
        let _ = write!(s, " rate_limit_request_cost={c}");
    }
    if let Some(t) = n.last_429_unix_s {
        let _ = write!(s, " last_429_unix_s={t}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_per_symbol_with_a_bounded_map() {
        let s = Stats::default();
        for i in 0..(DROP_SYMBOLS_MAX + 10) {
            s.record_drop(format!("S{i}").as_bytes());
        }
        s.record_drop(b"S0");
        assert_eq!(s.snapshot().dropped, DROP_SYMBOLS_MAX as u64 + 11);
        let top = s.top_drops(2);
        assert_eq!(top[0], ("(other)".to_string(), 10));
        assert_eq!(top[1], ("S0".to_string(), 2));
        assert!(s.drops_by_symbol.lock().len() <= DROP_SYMBOLS_MAX + 1);
    }

    #[test]
    fn lines_are_key_value_and_name_every_counter() {
        let now = Snapshot { received: 30, dropped: 2, written: 27, malformed: 1, ..Snapshot::default() };
        let h = health_line(&now, &Snapshot::default(), Duration::from_secs(10), &[3, 0], 500);
        assert!(h.starts_with("health: rate_msg_s=3 received=30 written=27 dropped=2 malformed=1"), "{h}");
        assert!(h.contains("recovery_pending=0") && !h.contains("rate_limit_remaining"), "{h}");
        assert!(h.contains("queues=[3/500,0/500]"), "{h}");
        let s = summary_line(&now, Duration::from_millis(1500), &[("X".to_string(), 2)]);
        assert!(s.contains("uptime_s=1.5") && s.contains("dropped_by_symbol=X:2"), "{s}");
        if cfg!(target_os = "linux") {
            assert!(s.contains("peak_rss_kib="), "{s}");
        }
    }
}
