//! The one metrics registry: every counter and gauge of the pipeline is declared once below
//! (name, help, kind, where it is shown), and the health line, the final summary (`text.rs`)
//! and the Prometheus page (`prometheus.rs`, served by `http.rs`) are all rendered from that one
//! table.
//!
//! Values are relaxed atomics written on the hot path and read only for reports. The accounting
//! identity the tests check: every data frame the reader received is either dropped by the reader
//! (full buffer), or decoded by a worker into exactly one of written, malformed, unknown type,
//! duplicate trade, withheld book delta or folded book message: `received = dropped + written +
//! malformed + unknown_type + duplicate_trades + book_withheld + book_folded` once drained
//! (`book_folded` counts the `book` messages `--book-output top` keeps in books instead of
//! writing them). `written`, `recovered_written`, `book_top_lines` and `control_lines` come from
//! the batches' own line counts, added by the writer once the bytes are out.
//!
//! Per-worker queue depth is a gauge per worker, set by the reader after each hand-off and by the
//! worker when it goes idle: nothing holds a clone of a worker's channel to read it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::config::limits::DROP_SYMBOLS_MAX;

pub mod http;
pub mod proc;
pub mod prometheus;
pub mod text;

/// A value that only goes up, or one that is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// A gauge that is absent until first set (stored as `u64::MAX` meanwhile).
    OptionalGauge,
    /// A signed gauge, absent until first set (an `i64` stored as its bits; `i64::MIN` is absent).
    OptionalSignedGauge,
}

/// Where a metric is shown besides the Prometheus page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// In the health line and in the summary.
    Both,
    /// In the final summary only (totals nobody needs every 10 s).
    Summary,
    /// In the health line only (a state of the moment, meaningless at exit).
    Health,
    /// On the Prometheus page only (a raw figure the stderr lines show in their own way, or
    /// one only a monitoring system needs).
    Endpoint,
}

/// One declared metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Def {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub show: Show,
}

impl Def {
    /// The value as text, `None` for an optional gauge never set.
    pub fn render(&self, raw: u64) -> Option<String> {
        match self.kind {
            Kind::Counter | Kind::Gauge => Some(raw.to_string()),
            Kind::OptionalGauge => (raw != u64::MAX).then(|| raw.to_string()),
            Kind::OptionalSignedGauge => {
                let v = raw as i64;
                (v != i64::MIN).then(|| v.to_string())
            }
        }
    }
}

/// One metric's value.
#[derive(Debug)]
pub struct Value(AtomicU64);

impl Value {
    const fn new(kind: Kind) -> Value {
        Value(AtomicU64::new(match kind {
            Kind::Counter | Kind::Gauge => 0,
            Kind::OptionalGauge => u64::MAX,
            Kind::OptionalSignedGauge => i64::MIN as u64,
        }))
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn set_signed(&self, v: i64) {
        self.0.store(v as u64, Ordering::Relaxed);
    }
    pub fn max(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }
    /// Adds one unless the value is `limit` already; whether it did (a gauge used as a bound
    /// shared by threads).
    pub fn take_one(&self, limit: u64) -> bool {
        self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| (v < limit).then_some(v + 1)).is_ok()
    }
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A per-worker value on a cache line of its own: the reader writes one worker's gauge per
/// frame while that worker writes its own when it goes idle.
#[derive(Debug)]
#[repr(align(128))]
struct Padded(Value);

/// The labelled metrics, declared here as the registry's own are in `DEFS`: one value per label
/// (a worker id, a symbol), rendered by each renderer in its own way (`queues=[...]` and
/// `dropped_by_symbol=...` on stderr).
pub const LABELLED: &[Def] = &[
    Def {
        name: "queue_depth",
        help: " Messages waiting in a worker's input channel, by worker.",
        kind: Kind::Gauge,
        show: Show::Health,
    },
    Def {
        name: "queue_bytes",
        help: " Bytes waiting in a worker's input channel (its share of --buffer-mib), by worker.",
        kind: Kind::Gauge,
        show: Show::Endpoint,
    },
    Def {
        name: "dropped_by_symbol",
        help: " Data frames shed by the reader, by symbol (at most DROP_SYMBOLS_MAX symbols, the rest as (other)).",
        kind: Kind::Counter,
        show: Show::Summary,
    },
];

/// Declares the registry: the `Metrics` struct (one `Value` per metric), its `Snapshot` (one
/// `u64` per metric, same names), and `DEFS` (the table renderers walk), in one list.
macro_rules! registry {
    ($( $(#[doc = $doc:literal])+ $name:ident: $kind:ident, $show:ident; )+) => {
        /// Every metric's definition, in declaration order (the order of the rendered lines).
        pub const DEFS: &[Def] = &[
            $( Def { name: stringify!($name), help: concat!($($doc),+), kind: Kind::$kind, show: Show::$show }, )+
        ];

        /// The live values, shared by every thread.
        #[derive(Debug)]
        pub struct Metrics {
            $( $(#[doc = $doc])+ pub $name: Value, )+
            /// Per worker (`LABELLED[0]`): messages waiting in its input channel.
            queue_depths: Box<[Padded]>,
            /// Per worker (`LABELLED[1]`): bytes waiting in its input channel.
            queue_bytes: Box<[Value]>,
            drops_by_symbol: Mutex<HashMap<Box<str>, u64>>,
        }

        /// A copy of every value at one moment (raw: optional gauges hold their sentinel).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot {
            $( pub $name: u64, )+
        }

        impl Default for Snapshot {
            fn default() -> Snapshot {
                Snapshot { $( $name: Value::new(Kind::$kind).get(), )+ }
            }
        }

        impl Metrics {
            /// A registry for a pipeline of `n_workers` workers.
            pub fn new(n_workers: usize) -> Metrics {
                Metrics {
                    $( $name: Value::new(Kind::$kind), )+
                    queue_depths: (0..n_workers).map(|_| Padded(Value::new(Kind::Gauge))).collect(),
                    queue_bytes: (0..n_workers).map(|_| Value::new(Kind::Gauge)).collect(),
                    drops_by_symbol: Mutex::new(HashMap::new()),
                }
            }

            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $( $name: self.$name.get(), )+ }
            }
        }

        impl Snapshot {
            /// Every value, in the order of `DEFS`.
            pub fn values(&self) -> Vec<u64> {
                vec![ $( self.$name, )+ ]
            }
        }
    };
}

registry! {
    /// Data frames (not heartbeats, not error/reconnect notices) read from the socket (or a recording).
    received: Counter, Both;
    /// Market-data lines written to stdout.
    written: Counter, Both;
    /// Data frames the reader shed because a worker's channel stayed full.
    dropped: Counter, Both;
    /// Frames that were not valid CoinAPI messages (bad JSON, not an object, missing fields, binary frames).
    malformed: Counter, Both;
    /// Valid JSON objects of a type this program does not handle.
    unknown_type: Counter, Both;
    /// Trades not written because their uuid was already written (exchange duplicates, or REST records overlapping the stream).
    duplicate_trades: Counter, Both;
    /// Heartbeats received.
    heartbeats: Counter, Both;
    /// WebSocket connections opened.
    connections: Counter, Both;
    /// Connections opened after the first.
    reconnects: Counter, Both;
    /// 1 while a WebSocket connection is open (after its hello), 0 while connecting or waiting to reconnect.
    connected: Gauge, Endpoint;
    /// The generation number of the latest connection attempt (sequences are valid within one).
    connection_generation: Gauge, Endpoint;
    /// When the last message (data or heartbeat) arrived, Unix milliseconds (read at most every 1,024 frames or 100 ms).
    last_message_unix_ms: OptionalGauge, Endpoint;
    /// Sequence jumps detected (gap lines with reason sequence).
    gaps: Counter, Both;
    /// Streams that were live when their connection ended (gap lines with reason reconnect).
    reconnect_gaps: Counter, Both;
    /// Messages repeating the previous sequence of their stream.
    sequence_repeats: Counter, Both;
    /// Messages whose sequence stepped backwards.
    sequence_regressions: Counter, Both;
    /// Messages of symbols beyond a worker's symbol table bound: written, but not tracked for gaps or duplicates.
    symbols_untracked: Counter, Both;
    /// Recovery keys waiting for a REST request.
    recovery_pending: Gauge, Both;
    /// REST recovery requests sent.
    recovery_requests: Counter, Both;
    /// Recoveries finished (recovery lines with status ok).
    recovery_ok: Counter, Both;
    /// Recoveries given up (recovery lines with status failed).
    recovery_failed: Counter, Both;
    /// Gaps not queued for recovery because the pending set was full.
    recovery_overflow: Counter, Both;
    /// REST answers 429 (too many requests).
    recovery_rate_limited: Counter, Both;
    /// Records recovered over REST and written to stdout.
    recovered_written: Counter, Both;
    /// Recovered trades not written because the stream (or an earlier page) had written them.
    recovery_duplicates: Counter, Both;
    /// Trades known lost for good: missing by sequence numbers and not recovered (recovery lines give the reason).
    unrecovered: Counter, Both;
    /// History pages that were full at their own start time (more trades share one time than a page holds): paging moved on and may have skipped some.
    recovery_pages_saturated: Counter, Summary;
    /// Recovery answers asked for again because the workers' buffer stayed full when they came.
    recovery_redeliveries: Counter, Summary;
    /// Ids a trade window could not pin (its bounds were reached): overlaps that could be written twice.
    pins_refused: Counter, Summary;
    /// Book streams resubscribed after a gap (a book cannot be repaired over REST).
    book_resyncs: Counter, Both;
    /// Book deltas not written because their stream waited for the snapshot of its resubscription.
    book_withheld: Counter, Both;
    /// Order books kept now (whole, or waiting for a snapshot), all workers together.
    books_live: Gauge, Both;
    /// Levels held by all kept books (about 130 bytes each), recounted by each worker every second.
    book_levels: Gauge, Health;
    /// `book_top` lines written to stdout.
    book_top_lines: Counter, Both;
    /// `book` messages folded into kept books and not written raw (--book-output top): applied, refused or before a snapshot.
    book_folded: Counter, Both;
    /// Book messages refused whole (a negative size, a snapshot level with size <= 0, a number that is not one or not exactly representable); each resyncs its book.
    book_rejected: Counter, Both;
    /// Book deltas that came before their stream's first snapshot: discarded.
    book_before_snapshot: Counter, Summary;
    /// Book messages after which the book was crossed or locked (best bid >= best ask).
    book_crossed: Counter, Both;
    /// Milliseconds books spent crossed or locked, summed over books.
    book_crossed_ms: Counter, Both;
    /// Worst levels trimmed to keep a side within --book-max-levels.
    book_levels_trimmed: Counter, Summary;
    /// `book` symbols refused a book because --book-max-books were kept already.
    books_refused: Counter, Both;
    /// The last X-RateLimit-Remaining CoinAPI sent.
    rate_limit_remaining: OptionalSignedGauge, Both;
    /// The last X-RateLimit-Request-Cost CoinAPI sent.
    rate_limit_request_cost: OptionalGauge, Both;
    /// When the last 429 arrived, Unix seconds.
    last_429_unix_s: OptionalGauge, Both;
    /// Control lines (connection, gap, recovery) written to stdout.
    control_lines: Counter, Summary;
    /// Control lines that could not be queued to the writer in time (stdout stuck).
    control_lines_lost: Counter, Summary;
    /// Bytes written to stdout.
    bytes_written: Counter, Summary;
    /// Kafka sink: records the broker acknowledged (absent without --kafka-brokers).
    delivered: OptionalGauge, Both;
    /// Kafka sink: records not delivered (refused, timed out, or unacknowledged at exit and purged).
    delivery_failed: OptionalGauge, Both;
    /// Kafka sink: records handed to librdkafka and not yet reported on.
    delivery_in_flight: OptionalGauge, Endpoint;
    /// Kafka sink: median time from a line's recv_time to its acknowledgement, microseconds (sampled 1 in 16; 19% buckets).
    kafka_ack_p50_us: OptionalGauge, Summary;
    /// Kafka sink: 99th percentile of the same, microseconds.
    kafka_ack_p99_us: OptionalGauge, Summary;
    /// Highest depth any worker channel reached.
    max_queue_depth: Gauge, Both;
    /// Bytes the worker queues hold together (the health line's buffer_kib, in bytes).
    buffer_used_bytes: Gauge, Endpoint;
    /// The worker queues' memory budget, --buffer-mib in bytes.
    buffer_budget_bytes: Gauge, Endpoint;
    /// Raw frames written to the --record recording.
    record_frames: Counter, Summary;
    /// Raw frames not recorded because the recorder's queue was full (the disk was slower than the feed).
    record_dropped: Counter, Summary;
    /// Output files finished (fsynced and renamed from .part) under --output-dir.
    files_finished: Counter, Summary;
    /// Times the memory of a drained stall was given back to the OS.
    memory_returns: Counter, Summary;
    /// Symbols that sent data before but none for a minute (summed over workers).
    silent_symbols: Gauge, Health;
    /// Prometheus pages served (GET /metrics answered in full).
    metrics_scrapes: Counter, Summary;
}

impl Metrics {
    /// One frame of `symbol_id` shed by the reader.
    pub fn record_drop(&self, symbol_id: &[u8]) {
        self.dropped.add(1);
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

    /// Worker `worker`'s channel holds `depth` messages.
    pub fn set_queue_depth(&self, worker: usize, depth: usize) {
        if let Some(gauge) = self.queue_depths.get(worker) {
            gauge.0.set(depth as u64);
        }
        if depth > 0 {
            self.max_queue_depth.max(depth as u64);
        }
    }

    /// Every worker's queue depth, by worker id.
    pub fn queue_depths(&self) -> Vec<u64> {
        self.queue_depths.iter().map(|g| g.0.get()).collect()
    }

    /// Worker `worker`'s channel holds inputs costing `bytes` (set by the supervisor's tick).
    pub fn set_queue_bytes(&self, worker: usize, bytes: u64) {
        if let Some(gauge) = self.queue_bytes.get(worker) {
            gauge.set(bytes);
        }
    }

    /// Every worker's queued bytes, by worker id.
    pub fn queue_bytes(&self) -> Vec<u64> {
        self.queue_bytes.iter().map(Value::get).collect()
    }

    /// Drop counts per symbol, largest first, at most `n`.
    pub fn top_drops(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.drops_by_symbol.lock().iter().map(|(k, v)| (k.to_string(), *v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_per_symbol_with_a_bounded_map() {
        let m = Metrics::new(1);
        for i in 0..(DROP_SYMBOLS_MAX + 10) {
            m.record_drop(format!("S{i}").as_bytes());
        }
        m.record_drop(b"S0");
        assert_eq!(m.snapshot().dropped, DROP_SYMBOLS_MAX as u64 + 11);
        let top = m.top_drops(2);
        assert_eq!(top[0], ("(other)".to_string(), 10));
        assert_eq!(top[1], ("S0".to_string(), 2));
        assert!(m.drops_by_symbol.lock().len() <= DROP_SYMBOLS_MAX + 1);
    }

    /// Proves the table is well formed: unique snake_case names, a help text for each, and one
    /// value per definition in a snapshot.
    #[test]
    fn every_metric_is_declared_once_with_help() {
        let mut names: Vec<&str> = DEFS.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DEFS.len(), "a name is declared twice");
        for d in DEFS {
            assert!(d.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{}", d.name);
            assert!(d.help.trim().len() > 10, "{} needs a help text", d.name);
        }
        assert_eq!(Metrics::new(2).snapshot().values().len(), DEFS.len());
        for d in LABELLED {
            assert!(!DEFS.iter().any(|x| x.name == d.name), "{} is declared twice", d.name);
            assert!(d.help.trim().len() > 10, "{} needs a help text", d.name);
        }
    }

    #[test]
    fn optional_gauges_are_absent_until_set_and_signed_ones_keep_their_sign() {
        let m = Metrics::new(1);
        let def = |name: &str| DEFS.iter().find(|d| d.name == name).copied().expect("declared");
        assert_eq!(def("rate_limit_remaining").render(m.snapshot().rate_limit_remaining), None);
        m.rate_limit_remaining.set_signed(-66_181);
        assert_eq!(def("rate_limit_remaining").render(m.snapshot().rate_limit_remaining).as_deref(), Some("-66181"));
        assert_eq!(def("last_429_unix_s").render(m.snapshot().last_429_unix_s), None);
        m.set_queue_depth(0, 7);
        m.set_queue_depth(0, 3);
        assert_eq!((m.queue_depths(), m.snapshot().max_queue_depth), (vec![3], 7));
    }
}
