//! The health line and the final summary on stderr, rendered from the registry's table:
//! `key=value` pairs, readable by people and by `grep`/`awk`. Pure but for the memory figures,
//! which are passed in.

use std::fmt::Write;
use std::time::Duration;

use crate::metrics::{Show, Snapshot, DEFS};

/// Resident and peak memory in KiB, when known.
pub type Memory = Option<(u64, u64)>;

/// Appends ` name=value` for each metric shown in `wanted` (optional gauges only once set).
fn push_metrics(s: &mut String, now: &Snapshot, wanted: impl Fn(Show) -> bool) {
    for (def, raw) in DEFS.iter().zip(now.values()) {
        if !wanted(def.show) {
            continue;
        }
        if let Some(v) = def.render(raw) {
            let _ = write!(s, " {}={v}", def.name);
        }
    }
}

/// The workers' queues at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Queues<'a> {
    /// Messages queued, by worker.
    pub depths: &'a [u64],
    /// The optional per-worker cap in messages.
    pub cap: Option<usize>,
    /// Bytes the queues hold together, and the budget (`--buffer-mib`).
    pub buffer: (u64, u64),
}

/// One health line: the message rate since `prev`, every queue's depth (as `depth/cap` when
/// capped), the buffer in KiB as `used/budget`, then every metric shown in health lines, then
/// resident memory.
pub fn health_line(now: &Snapshot, prev: &Snapshot, elapsed: Duration, queues: &Queues<'_>, memory: Memory) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = now.received.saturating_sub(prev.received) as f64 / secs;
    let mut s = format!("health: rate_msg_s={rate:.0} queues=[");
    for (i, d) in queues.depths.iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        match queues.cap {
            Some(cap) => write!(s, "{sep}{d}/{cap}"),
            None => write!(s, "{sep}{d}"),
        }
        .ok();
    }
    let _ = write!(s, "] buffer_kib={}/{}", queues.buffer.0 >> 10, queues.buffer.1 >> 10);
    push_metrics(&mut s, now, |show| matches!(show, Show::Both | Show::Health));
    if let Some((rss, _)) = memory {
        let _ = write!(s, " rss_kib={rss}");
    }
    s
}

/// The final summary: every metric shown in summaries, uptime, memory and the symbols that lost
/// the most.
pub fn summary_line(now: &Snapshot, uptime: Duration, top_drops: &[(String, u64)], memory: Memory) -> String {
    let mut s = String::from("summary:");
    push_metrics(&mut s, now, |show| matches!(show, Show::Both | Show::Summary));
    let _ = write!(s, " uptime_s={:.1}", uptime.as_secs_f64());
    if let Some((rss, peak)) = memory {
        let _ = write!(s, " rss_kib={rss} peak_rss_kib={peak}");
    }
    if !top_drops.is_empty() {
        let list: Vec<String> = top_drops.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        let _ = write!(s, " dropped_by_symbol={}", list.join(","));
    }
    s
}

/// The live status line for a terminal (redrawn in place once a second): the figures an
/// operator watches, short enough for one line of a terminal.
pub fn status_line(
    now: &Snapshot,
    prev: &Snapshot,
    elapsed: Duration,
    depths: &[u64],
    buffer: (u64, u64),
    memory: Memory,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = now.received.saturating_sub(prev.received) as f64 / secs;
    let queued: u64 = depths.iter().sum();
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let mut s = format!(
        "{rate:.0} msg/s | written {} | dropped {} | queued {queued} ({:.1}/{:.0} MiB) | gaps {} | recovery {} pending {} ok {} failed | reconnects {}",
        now.written + now.recovered_written + now.book_top_lines,
        now.dropped,
        mib(buffer.0),
        mib(buffer.1),
        now.gaps + now.reconnect_gaps,
        now.recovery_pending,
        now.recovery_ok,
        now.recovery_failed,
        now.reconnects,
    );
    if let Some((rss, _)) = memory {
        let _ = write!(s, " | rss {:.1} MiB", rss as f64 / 1024.0);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_key_value_and_name_every_counter() {
        let mut now = Snapshot { received: 30, dropped: 2, written: 27, malformed: 1, ..Snapshot::default() };
        // The Kafka sink's figures, shown once it set them.
        assert!(!summary_line(&now, Duration::ZERO, &[], None).contains("delivered"));
        (now.delivered, now.delivery_failed, now.delivery_in_flight) = (26, 1, 0);
        (now.kafka_ack_p50_us, now.kafka_ack_p99_us) = (1_023, 4_095);
        let queues = Queues { depths: &[3, 0], cap: Some(500), buffer: (3 << 10, 64 << 20) };
        let h = health_line(&now, &Snapshot::default(), Duration::from_secs(10), &queues, Some((11_000, 12_000)));
        assert!(
            h.starts_with(
                "health: rate_msg_s=3 queues=[3/500,0/500] buffer_kib=3/65536 received=30 written=27 dropped=2 malformed=1"
            ),
            "{h}"
        );
        let uncapped = Queues { cap: None, ..queues };
        let h2 = health_line(&now, &Snapshot::default(), Duration::from_secs(10), &uncapped, None);
        assert!(h2.starts_with("health: rate_msg_s=3 queues=[3,0] buffer_kib=3/65536 "), "{h2}");
        assert!(h.contains(" recovery_pending=0") && !h.contains("rate_limit_remaining"), "{h}");
        assert!(h.contains(" silent_symbols=0") && !h.contains("bytes_written"), "{h}");
        assert!(h.ends_with(" rss_kib=11000"), "{h}");
        let s = summary_line(&now, Duration::from_millis(1500), &[("X".to_string(), 2)], Some((1, 2)));
        assert!(s.starts_with("summary: received=30 written=27"), "{s}");
        assert!(s.contains(" bytes_written=0") && !s.contains("silent_symbols"), "{s}");
        assert!(
            s.contains("uptime_s=1.5") && s.contains("peak_rss_kib=2") && s.contains("dropped_by_symbol=X:2"),
            "{s}"
        );
        for def in crate::metrics::DEFS {
            let shown = match def.show {
                Show::Both => h.contains(def.name) && s.contains(def.name),
                Show::Health => h.contains(def.name),
                Show::Summary => s.contains(def.name),
                Show::Endpoint => !h.contains(def.name) && !s.contains(def.name),
            };
            assert!(shown || def.name.starts_with("rate_limit") || def.name.starts_with("last_429"), "{}", def.name);
        }
    }

    #[test]
    fn the_status_line_names_what_an_operator_watches() {
        let prev = Snapshot { received: 100, ..Snapshot::default() };
        let now = Snapshot { received: 1_100, written: 990, dropped: 3, recovery_pending: 2, ..Snapshot::default() };
        let line = status_line(&now, &prev, Duration::from_secs(1), &[4, 1], (3 << 20, 64 << 20), Some((20_480, 0)));
        assert_eq!(
            line,
            "1000 msg/s | written 990 | dropped 3 | queued 5 (3.0/64 MiB) | gaps 0 | recovery 2 pending 0 ok 0 failed | reconnects 0 | rss 20.0 MiB"
        );
        assert!(!line.contains('\n'));
    }
}
