//! The Prometheus page: the registry's table (`DEFS`, `LABELLED`) rendered in the text
//! exposition format, version 0.0.4, plus the four figures derived at scrape time (memory,
//! time since the last message, uptime). Pure: the snapshot, the labelled values, the memory
//! figures and both clocks come in as arguments; `http.rs` reads them and serves the page.
//!
//! Every metric is named `coinfeed_<name>`, counters `coinfeed_<name>_total`; each family is
//! written once, as `# HELP`, `# TYPE` and its samples together. A family with no sample (an
//! optional gauge never set, no symbol dropped yet, memory unknown) is left out whole, HELP and
//! TYPE included: the format allows an empty family, but an absent one says the same thing and
//! every parser agrees on it.

use std::fmt::Write;
use std::time::Duration;

use crate::metrics::text::Memory;
use crate::metrics::{Def, Kind, Show, Snapshot, DEFS, LABELLED};

/// The prefix of every family name.
pub const PREFIX: &str = "coinfeed_";

/// The labelled values at one moment, as `Metrics` hands them out.
#[derive(Debug, Clone, Copy)]
pub struct Labelled<'a> {
    /// `LABELLED` `queue_depth`: messages queued, by worker id.
    pub queue_depths: &'a [u64],
    /// `LABELLED` `queue_bytes`: bytes queued, by worker id.
    pub queue_bytes: &'a [u64],
    /// `LABELLED` `dropped_by_symbol`: frames shed, by symbol id (`Metrics::top_drops`).
    pub drops: &'a [(String, u64)],
}

/// The figures computed at scrape time rather than kept in the registry, each with its help.
/// Their names are checked against the registry's by a test, so none can shadow a declared one.
pub const DERIVED: &[(&str, &str)] = &[
    ("resident_memory_bytes", "Resident memory of the process (VmRSS), bytes."),
    ("peak_resident_memory_bytes", "Peak resident memory of the process (VmHWM), bytes."),
    (
        "seconds_since_last_message",
        "Seconds from the last message (data or heartbeat) to this scrape; absent before the first.",
    ),
    ("uptime_seconds", "Seconds since coinfeed started."),
];

/// One sample of a family: its label, if any, and its value.
struct Sample<'s> {
    label: Label<'s>,
    value: Number,
}

/// A sample's label (the labelled families have one each).
enum Label<'s> {
    None,
    /// `worker="<id>"`.
    Worker(usize),
    /// `symbol_id="<id>"`, escaped as it is written (a symbol id is whatever the feed sent).
    Symbol(&'s str),
}

/// A sample's value: already text (a registry value, a number of seconds), or a count.
enum Number {
    Text(String),
    Count(u64),
}

impl<'s> Sample<'s> {
    fn plain(value: String) -> Sample<'s> {
        Sample { label: Label::None, value: Number::Text(value) }
    }
}

/// The page: every registry metric in `DEFS` order, then the labelled families, then the derived
/// figures. `memory` is (resident, peak) in KiB; `now_unix_ms` is the scrape's wall-clock time
/// (compared with `last_message_unix_ms`); `uptime` is the time since start.
pub fn render(
    snapshot: &Snapshot,
    labelled: &Labelled<'_>,
    memory: Memory,
    now_unix_ms: u64,
    uptime: Duration,
) -> String {
    // ~120 bytes per family (mostly help text), ~60 per dropped symbol: one allocation for a
    // page of ~60 families, a few for one listing hundreds of symbols.
    let mut out = String::with_capacity(8 * 1024 + labelled.drops.len() * 64);
    for (def, raw) in DEFS.iter().zip(snapshot.values()) {
        family(&mut out, def, def.render(raw).map(Sample::plain));
    }
    for def in LABELLED {
        match def.name {
            "queue_depth" => family(&mut out, def, per_worker(labelled.queue_depths)),
            "queue_bytes" => family(&mut out, def, per_worker(labelled.queue_bytes)),
            "dropped_by_symbol" => {
                let samples =
                    labelled.drops.iter().map(|(id, v)| Sample { label: Label::Symbol(id), value: Number::Count(*v) });
                family(&mut out, def, samples);
            }
            other => {
                // A new labelled metric needs its values passed in; the test that every
                // `LABELLED` entry is on the page fails until they are.
                debug_assert!(false, "no values passed for labelled metric {other}");
            }
        }
    }
    let last_ms = snapshot.last_message_unix_ms;
    let ever = DEFS.iter().find(|d| d.name == "last_message_unix_ms").and_then(|d| d.render(last_ms)).is_some();
    // A wall clock stepped back makes the message look younger than now: say 0, not a negative
    // age.
    let since_last_message = ever.then(|| seconds(Duration::from_millis(now_unix_ms.saturating_sub(last_ms))));
    // In `DERIVED` order (the page test reads each back by name).
    let derived = [
        memory.map(|(rss, _)| rss.saturating_mul(1024).to_string()),
        memory.map(|(_, peak)| peak.saturating_mul(1024).to_string()),
        since_last_message,
        Some(seconds(uptime)),
    ];
    for ((name, help), value) in DERIVED.iter().zip(derived) {
        let def = Def { name, help, kind: Kind::Gauge, show: Show::Endpoint };
        family(&mut out, &def, value.map(Sample::plain));
    }
    out
}

/// One sample per worker, labelled with its id.
fn per_worker(values: &[u64]) -> impl Iterator<Item = Sample<'static>> + '_ {
    values.iter().enumerate().map(|(i, v)| Sample { label: Label::Worker(i), value: Number::Count(*v) })
}

/// Seconds with millisecond precision, the resolution of every time fed in.
fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// A family's name on the page: counters carry the `_total` suffix the format's conventions
/// (and OpenMetrics) ask of them.
pub fn family_name(def: &Def) -> String {
    match def.kind {
        Kind::Counter => format!("{PREFIX}{}_total", def.name),
        Kind::Gauge | Kind::OptionalGauge | Kind::OptionalSignedGauge => format!("{PREFIX}{}", def.name),
    }
}

/// Writes one family: HELP, TYPE and its samples, or nothing when it has no sample.
fn family<'s>(out: &mut String, def: &Def, samples: impl IntoIterator<Item = Sample<'s>>) {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return;
    }
    let name = family_name(def);
    debug_assert!(valid_name(&name), "invalid metric name {name}");
    let kind = match def.kind {
        Kind::Counter => "counter",
        Kind::Gauge | Kind::OptionalGauge | Kind::OptionalSignedGauge => "gauge",
    };
    let _ = write!(out, "# HELP {name} ");
    escape_help(out, def.help.trim());
    let _ = write!(out, "\n# TYPE {name} {kind}\n");
    let mut digits = itoa::Buffer::new();
    for sample in samples {
        out.push_str(&name);
        match sample.label {
            Label::None => {}
            Label::Worker(id) => {
                out.push_str("{worker=\"");
                out.push_str(digits.format(id));
                out.push_str("\"}");
            }
            Label::Symbol(id) => {
                out.push_str("{symbol_id=\"");
                escape_label_value(out, id);
                out.push_str("\"}");
            }
        }
        out.push(' ');
        match &sample.value {
            Number::Text(text) => out.push_str(text),
            Number::Count(n) => out.push_str(digits.format(*n)),
        }
        out.push('\n');
    }
}

/// A help text as the format wants it: backslash and line feed escaped (`\\`, `\n`).
fn escape_help(out: &mut String, help: &str) {
    if !help.contains(['\\', '\n']) {
        out.push_str(help);
        return;
    }
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A label value as the format wants it: backslash, double quote and line feed escaped.
fn escape_label_value(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Whether `name` is a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':');
    first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::collections::{HashMap, HashSet};
    use std::time::Instant;

    const NOW_MS: u64 = 1_760_000_000_000;

    fn page(snapshot: &Snapshot, labelled: &Labelled<'_>) -> String {
        render(snapshot, labelled, Some((11_000, 12_000)), NOW_MS, Duration::from_millis(61_500))
    }

    fn empty() -> Labelled<'static> {
        Labelled { queue_depths: &[0], queue_bytes: &[0], drops: &[] }
    }

    /// A parsed page: each family's declared type and its sample lines (name, labels as written,
    /// value), in page order. Asserts the rules a scraper relies on while it splits: every
    /// family declared once with HELP then TYPE before its samples, every sample inside the
    /// family declared just before it, names valid, values numbers, no series twice.
    #[derive(Debug, Default)]
    struct Parsed {
        types: HashMap<String, String>,
        order: Vec<String>,
        samples: Vec<(String, String, f64)>,
    }

    fn parse(page: &str) -> Parsed {
        assert!(page.ends_with('\n'), "the last line must end with a line feed");
        let mut p = Parsed::default();
        let mut current: Option<String> = None;
        let mut helped: Option<String> = None;
        let mut series = HashSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or("");
                assert!(valid_name(name), "{line}");
                assert!(!p.types.contains_key(name) && helped.is_none(), "family declared twice: {line}");
                helped = Some(name.to_string());
                current = None;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                assert_eq!(helped.take().as_deref(), Some(name), "TYPE without its HELP just before: {line}");
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert!(p.types.insert(name.to_string(), kind.to_string()).is_none(), "{line}");
                p.order.push(name.to_string());
                current = Some(name.to_string());
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
                let (series_key, value) = line.rsplit_once(' ').unwrap_or((line, ""));
                let name = series_key.split('{').next().unwrap_or("");
                let labels = series_key[name.len()..].to_string();
                assert_eq!(current.as_deref(), Some(name), "sample outside its family: {line}");
                assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with("\"}")), "{line}");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
                assert!(series.insert(series_key.to_string()), "series twice: {line}");
                p.samples.push((name.to_string(), labels, value));
            }
        }
        assert!(helped.is_none(), "HELP without TYPE at the end");
        for name in &p.order {
            assert!(p.samples.iter().any(|(n, _, _)| n == name), "family {name} without samples");
        }
        p
    }

    fn value(p: &Parsed, name: &str, labels: &str) -> Option<f64> {
        p.samples.iter().find(|(n, l, _)| n == name && l == labels).map(|(_, _, v)| *v)
    }

    #[test]
    fn counters_gauges_and_their_declarations_have_the_format_s_shape() {
        let snap = Snapshot { received: 30, connected: 1, rate_limit_remaining: -5_i64 as u64, ..Snapshot::default() };
        let p = page(&snap, &empty());
        assert!(p.starts_with(
            "# HELP coinfeed_received_total Data frames (not heartbeats, not error/reconnect notices) read from the socket (or a recording).\n\
             # TYPE coinfeed_received_total counter\n\
             coinfeed_received_total 30\n"
        ), "{p}");
        assert!(p.contains("\n# TYPE coinfeed_connected gauge\ncoinfeed_connected 1\n"), "{p}");
        assert!(p.contains("\ncoinfeed_rate_limit_remaining -5\n"), "{p}");
        assert!(p.contains("\ncoinfeed_resident_memory_bytes 11264000\n"), "{p}");
        assert!(p.contains("\ncoinfeed_peak_resident_memory_bytes 12288000\n"), "{p}");
        assert!(p.contains("\ncoinfeed_uptime_seconds 61.500\n"), "{p}");
        assert!(p.contains("\ncoinfeed_queue_depth{worker=\"0\"} 0\n"), "{p}");
        // Never set: no sample and no declaration.
        for absent in ["last_message_unix_ms", "seconds_since_last_message", "last_429_unix_s", "dropped_by_symbol"] {
            assert!(!p.contains(&format!("{PREFIX}{absent}")), "{absent} is on the page:\n{p}");
        }
        let unknown_memory = render(&snap, &empty(), None, NOW_MS, Duration::ZERO);
        assert!(
            !unknown_memory.contains("resident_memory") && unknown_memory.contains("coinfeed_uptime_seconds 0.000\n")
        );
    }

    /// The Kafka sink's gauges, absent without one.
    fn set_kafka(snap: &mut Snapshot) {
        (snap.delivered, snap.delivery_failed, snap.delivery_in_flight) = (5, 1, 2);
        (snap.kafka_ack_p50_us, snap.kafka_ack_p99_us) = (1_023, 4_095);
    }

    /// Proves every metric of the registry, labelled and derived ones included, reaches the
    /// page once set, as its kind's family, and parses back.
    #[test]
    fn every_declared_metric_is_on_the_page() {
        let mut snap = Metrics::new(3).snapshot();
        snap.last_message_unix_ms = NOW_MS - 7_250;
        snap.rate_limit_remaining = 42;
        snap.rate_limit_request_cost = 1;
        snap.last_429_unix_s = NOW_MS / 1000;
        set_kafka(&mut snap);
        let drops = vec![("BITSTAMP_SPOT_BTC_USD".to_string(), 9), ("(other)".to_string(), 2)];
        let labelled = Labelled { queue_depths: &[3, 0, 1], queue_bytes: &[300, 0, 100], drops: &drops };
        let p = parse(&page(&snap, &labelled));
        for def in DEFS.iter().chain(LABELLED) {
            let kind = if def.kind == Kind::Counter { "counter" } else { "gauge" };
            assert_eq!(p.types.get(&family_name(def)).map(String::as_str), Some(kind), "{}", def.name);
        }
        for (name, help) in DERIVED {
            assert!(p.types.contains_key(&format!("{PREFIX}{name}")), "{name}");
            assert!(help.len() > 10 && !DEFS.iter().chain(LABELLED).any(|d| d.name == *name), "{name}");
        }
        assert_eq!(p.order.len(), DEFS.len() + LABELLED.len() + DERIVED.len());
        assert_eq!(value(&p, "coinfeed_seconds_since_last_message", ""), Some(7.25));
        assert_eq!(value(&p, "coinfeed_queue_bytes", "{worker=\"2\"}"), Some(100.0));
        assert_eq!(value(&p, "coinfeed_dropped_by_symbol_total", "{symbol_id=\"(other)\"}"), Some(2.0));
        assert_eq!(p.samples.len(), DEFS.len() + 3 + 3 + 2 + DERIVED.len());
    }

    /// Proves help texts and label values are escaped as the format requires (a symbol id is
    /// whatever the feed sent), and that escaping leaves every other character alone.
    #[test]
    fn help_and_label_values_are_escaped() {
        let mut s = String::new();
        escape_help(&mut s, "a\\b\nc \"d\" é");
        assert_eq!(s, "a\\\\b\\nc \"d\" é");
        s.clear();
        escape_label_value(&mut s, "a\\b\nc \"d\" é{}=,");
        assert_eq!(s, "a\\\\b\\nc \\\"d\\\" é{}=,");
        let drops = vec![("X\"Y\\Z\nW".to_string(), 1)];
        let p = page(&Snapshot::default(), &Labelled { drops: &drops, ..empty() });
        assert!(p.contains("\ncoinfeed_dropped_by_symbol_total{symbol_id=\"X\\\"Y\\\\Z\\nW\"} 1\n"), "{p}");
        assert_eq!(p.lines().filter(|l| l.starts_with("coinfeed_dropped_by_symbol_total")).count(), 1);
    }

    /// Proves the names the page can hold are valid, and that the derived time is 0, not
    /// negative, when the wall clock stepped back behind the last message.
    #[test]
    fn names_are_valid_and_ages_never_negative() {
        for good in ["coinfeed_received_total", "_x", "a:b", "A9"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let snap = Snapshot { last_message_unix_ms: NOW_MS + 500, ..Snapshot::default() };
        assert!(page(&snap, &empty()).contains("\ncoinfeed_seconds_since_last_message 0.000\n"));
    }

    /// Renders a full page, every optional value set and the per-symbol map at its bound
    /// (DROP_SYMBOLS_MAX symbols and `(other)`), parses it back, and reports the time a render
    /// takes. With `COINFEED_PROM_SAMPLE=<file>` it also writes the page there for
    /// `tests/prom/check.py`, the official parser's check.
    #[test]
    fn a_full_page_parses_back_and_renders_quickly() {
        let mut snap = Snapshot {
            last_message_unix_ms: NOW_MS - 1_234,
            rate_limit_remaining: -66_181_i64 as u64,
            ..Snapshot::default()
        };
        snap.rate_limit_request_cost = 1;
        snap.last_429_unix_s = NOW_MS / 1000;
        set_kafka(&mut snap);
        snap.received = u64::MAX - 1;
        let mut drops: Vec<(String, u64)> = (0..crate::config::limits::DROP_SYMBOLS_MAX)
            .map(|i| (format!("EXCHANGE_SPOT_SYM{i}_USD"), i as u64))
            .collect();
        drops.push(("(other)".to_string(), 7));
        drops.push(("odd \"sym\\bol\"\nid".to_string(), 1));
        let labelled = Labelled { queue_depths: &[1, 2, 3, 4], queue_bytes: &[10, 20, 30, 40], drops: &drops };
        let text = page(&snap, &labelled);
        let p = parse(&text);
        assert_eq!(p.samples.len(), DEFS.len() + 8 + drops.len() + DERIVED.len());
        let rounds: u32 = 1_000;
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..rounds {
            bytes += page(&snap, &labelled).len();
        }
        let small = Labelled { drops: &drops[..10], ..labelled };
        let small_started = Instant::now();
        for _ in 0..rounds {
            bytes += page(&snap, &small).len();
        }
        eprintln!(
            "render: {:.1} µs a page of {} bytes ({} symbols), {:.1} µs with 10 symbols ({bytes} bytes in all)",
            started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds),
            text.len(),
            drops.len(),
            small_started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds),
        );
        if let Some(path) = std::env::var_os("COINFEED_PROM_SAMPLE") {
            std::fs::write(&path, &text).expect("write the sample page");
        }
    }
}
