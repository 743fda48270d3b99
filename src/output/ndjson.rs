//! Every line coinfeed writes on stdout, in one place: market-data lines (the wire text with
//! `recv_time` and `source` appended), records recovered over REST, and the control lines as one
//! closed enum (`ControlLine`: connection, gap, recovery; the book lines of the next stage join
//! it). A `Batch` is a run of whole lines that counts what it holds by kind, so the writer's
//! accounting (`written`, `recovered_written`, `control_lines`) follows from the lines themselves
//! rather than from counters kept by hand at each call site.
//!
//! Market lines keep every number byte-identical to the wire: nothing on this path goes through
//! f64. Control lines put `type` first, as CoinAPI's documentation does, so a consumer can filter
//! on a line prefix. Pure: no IO, no clock (times come in formatted or as Unix nanoseconds).

use crate::lanes::Unrecovered;
use crate::wire::{self, DataType};

pub use crate::config::limits::BATCH_BYTES;

/// Where an output record came from (the `source` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Ws,
    Rest,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ws => "ws",
            Source::Rest => "rest",
        }
    }
}

/// Appends one NDJSON line: the validated object `frame` with whitespace outside strings
/// removed, plus `"recv_time"` and `"source"`, then `\n`.
///
/// `frame` must already have passed `decode` (a JSON object), which is what makes dropping
/// whitespace and the final `}` safe. `recv_time` is a formatted CoinAPI timestamp.
pub fn append_line(out: &mut Vec<u8>, frame: &[u8], recv_time: &str, source: Source) {
    let trimmed = frame.trim_ascii();
    debug_assert!(trimmed.first() == Some(&b'{') && trimmed.last() == Some(&b'}'));
    let start = out.len();
    let body = &trimmed[..trimmed.len() - 1];
    // CoinAPI sends compact JSON: a SIMD search finds the rare frame that needs minifying.
    if memchr::memchr3(b' ', b'\n', b'\t', body).is_some() || memchr::memchr(b'\r', body).is_some() {
        minify_into(out, body);
    } else {
        out.extend_from_slice(body);
    }
    if out.len() > start + 1 {
        out.push(b',');
    }
    out.extend_from_slice(b"\"recv_time\":\"");
    out.extend_from_slice(recv_time.as_bytes());
    out.extend_from_slice(b"\",\"source\":\"");
    out.extend_from_slice(source.as_str().as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// Appends one NDJSON line for a record recovered over REST. REST records carry no `type` (and
/// OHLCV records no `symbol_id`): both are added in front when absent, plus
/// `"is_snapshot":true` for order books, so a consumer handles them like stream messages. The
/// record's own fields follow verbatim (numbers byte-identical), then `recv_time` and
/// `"source":"rest"`. `record` must be a JSON object (as `RawValue` guarantees).
pub fn append_rest_line(out: &mut Vec<u8>, record: &[u8], data_type: DataType, symbol_id: &str, recv_time: &str) {
    let trimmed = record.trim_ascii();
    debug_assert!(trimmed.first() == Some(&b'{') && trimmed.last() == Some(&b'}'));
    let inner = trimmed[1..trimmed.len() - 1].trim_ascii();
    out.push(b'{');
    let mut empty = true;
    let mut field = |out: &mut Vec<u8>, text: &str| {
        if !empty {
            out.push(b',');
        }
        out.extend_from_slice(text.as_bytes());
        empty = false;
    };
    if wire::scan_field(trimmed, b"type").is_none() {
        field(out, &format!("\"type\":\"{}\"", data_type.as_str()));
    }
    if wire::scan_field(trimmed, b"symbol_id").is_none() {
        field(out, "\"symbol_id\":");
        push_json_string(out, symbol_id);
    }
    let is_book =
        matches!(data_type, DataType::Book | DataType::Book5 | DataType::Book20 | DataType::Book50 | DataType::BookL3);
    if is_book && memchr::memmem::find(trimmed, b"\"is_snapshot\"").is_none() {
        field(out, "\"is_snapshot\":true");
    }
    if !inner.is_empty() {
        field(out, "");
        minify_into(out, inner);
    }
    out.extend_from_slice(b",\"recv_time\":\"");
    out.extend_from_slice(recv_time.as_bytes());
    out.extend_from_slice(b"\",\"source\":\"rest\"}\n");
}

/// Copies JSON text dropping insignificant whitespace (outside strings); escapes are kept
/// verbatim. The output is the same JSON value, still on one line (a raw newline can only occur
/// outside strings in valid JSON).
fn minify_into(out: &mut Vec<u8>, text: &[u8]) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
}

/// Appends `s` as a JSON string literal. serde_json escapes exactly what JSON requires.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// Formats UTC timestamps in CoinAPI's format (`2017-03-18T22:42:21.3763342Z`, 7 fractional
/// digits), caching the part that only changes once a second: it is formatted per message.
#[derive(Debug, Default)]
pub struct TimestampFormatter {
    cached_second: Option<i64>,
    buf: String,
}

impl TimestampFormatter {
    /// `unix_ns`: nanoseconds since the Unix epoch.
    pub fn format(&mut self, unix_ns: i128) -> &str {
        let second = unix_ns.div_euclid(1_000_000_000) as i64;
        let subsec_100ns = (unix_ns.rem_euclid(1_000_000_000) / 100) as u32;
        if self.cached_second != Some(second) {
            self.buf.clear();
            let dt = time::OffsetDateTime::from_unix_timestamp(second).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            use std::fmt::Write;
            let _ = write!(
                self.buf,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second()
            );
            self.cached_second = Some(second);
        }
        self.buf.truncate(20);
        let digits = subsec_100ns + 10_000_000; // leading 1 gives the zero padding for free
        let mut b = itoa::Buffer::new();
        self.buf.push_str(&b.format(digits)[1..]);
        self.buf.push('Z');
        &self.buf
    }
}

/// The byte length of the first lines of `batch` that hold at most `n` market-data lines (every
/// line but control lines), and the lines of each kind in them: what `--limit` lets through of
/// the batch that reaches it. Market-data lines are exactly those ending in `,"source":"ws"}`,
/// `,"source":"rest"}` or `,"source":"book"}`: a control line never can, because a `"` inside
/// a JSON string value is always escaped as `\"`.
pub fn data_lines_prefix(batch: &[u8], n: u64) -> (usize, LineCounts) {
    let mut counts = LineCounts::default();
    let mut end = 0usize;
    for line_end in memchr::memchr_iter(b'\n', batch) {
        let line = &batch[end..line_end];
        let suffix = |source: &[u8]| line.strip_suffix(b"\"}").is_some_and(|l| l.ends_with(source));
        let data = if suffix(b",\"source\":\"ws") {
            Some(0)
        } else if suffix(b",\"source\":\"rest") {
            Some(1)
        } else if suffix(b",\"source\":\"book") {
            Some(2)
        } else {
            None
        };
        if data.is_some() && counts.data() == n {
            break;
        }
        match data {
            Some(0) => counts.market += 1,
            Some(1) => counts.rest += 1,
            Some(_) => counts.book_top += 1,
            None => counts.control += 1,
        }
        end = line_end + 1;
    }
    (end, counts)
}

/// How many lines of each kind a batch holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LineCounts {
    /// Market-data lines from the WebSocket.
    pub market: u64,
    /// Market-data records recovered over REST.
    pub rest: u64,
    pub control: u64,
    /// `book_top` lines of kept books.
    pub book_top: u64,
}

impl LineCounts {
    /// Market-data lines of every source (what `--limit` counts): all but control lines.
    pub fn data(&self) -> u64 {
        self.market + self.rest + self.book_top
    }
}

/// Whole NDJSON lines, and how many of each kind they are.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    lines: LineCounts,
}

impl Batch {
    pub fn with_capacity(n: usize) -> Batch {
        Batch { bytes: Vec::with_capacity(n), lines: LineCounts::default() }
    }

    /// A validated WebSocket frame (see `append_line`).
    pub fn push_market(&mut self, frame: &[u8], recv_time: &str) {
        append_line(&mut self.bytes, frame, recv_time, Source::Ws);
        self.lines.market += 1;
    }

    /// A record recovered over REST (see `append_rest_line`).
    pub fn push_rest(&mut self, record: &[u8], data_type: DataType, symbol_id: &str, recv_time: &str) {
        append_rest_line(&mut self.bytes, record, data_type, symbol_id, recv_time);
        self.lines.rest += 1;
    }

    /// A `book_top` line: `levels` is the `"bids":[…],"asks":[…]` segment the book rendered.
    pub fn push_book_top(&mut self, top: &BookTop<'_>, recv_time: &str) {
        top.append_to(&mut self.bytes, recv_time);
        self.lines.book_top += 1;
    }

    /// A control line stamped with `time` (a formatted CoinAPI timestamp).
    pub fn push_control(&mut self, line: &ControlLine<'_>, time: &str) {
        line.append_to(&mut self.bytes, time);
        self.lines.control += 1;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn lines(&self) -> LineCounts {
        self.lines
    }

    /// Empties the batch, keeping its buffer.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.lines = LineCounts::default();
    }
}

/// Why a book is resynced (`reason` of a `book_resync` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// A sequence gap in the book stream: deltas were lost.
    Gap,
    /// A message was refused (see `Rejection`).
    Rejected,
    /// Crossed or locked for longer than `CROSS_RESYNC_NS`.
    Crossed,
    /// Trimmed to its level bound, then fewer levels than the output depth were left.
    Trimmed,
    /// The snapshot did not come in time (a stream's first, or a resubscription's): asked for
    /// (again).
    NoSnapshot,
    /// The connection ended: the new one's subscription brings a fresh snapshot.
    Reconnect,
}

impl ResyncReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::Gap => "gap",
            ResyncReason::Rejected => "rejected",
            ResyncReason::Crossed => "crossed",
            ResyncReason::Trimmed => "trimmed",
            ResyncReason::NoSnapshot => "no_snapshot",
            ResyncReason::Reconnect => "reconnect",
        }
    }
}

/// One `book_top` line: a kept book's top levels after the message that produced them.
#[derive(Debug, Clone, Copy)]
pub struct BookTop<'a> {
    pub symbol_id: &'a str,
    pub depth: usize,
    /// `"bids":[{"price":…,"size":…},…],"asks":[…]`, numbers as CoinAPI wrote them.
    pub levels: &'a [u8],
    pub sequence: u64,
    /// Raw JSON texts of the message's times (`"…Z"` with quotes), `null` when absent.
    pub time_exchange: &'a str,
    pub time_coinapi: &'a str,
    pub crossed: bool,
}

impl BookTop<'_> {
    pub fn append_to(&self, out: &mut Vec<u8>, recv_time: &str) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"type\":\"book_top\",\"symbol_id\":");
        push_json_string(out, self.symbol_id);
        out.extend_from_slice(b",\"depth\":");
        out.extend_from_slice(num.format(self.depth).as_bytes());
        out.push(b',');
        out.extend_from_slice(self.levels);
        out.extend_from_slice(b",\"sequence\":");
        out.extend_from_slice(num.format(self.sequence).as_bytes());
        for (key, text) in
            [(&b",\"time_exchange\":"[..], self.time_exchange), (b",\"time_coinapi\":", self.time_coinapi)]
        {
            out.extend_from_slice(key);
            out.extend_from_slice(if text.is_empty() { b"null" } else { text.as_bytes() });
        }
        out.extend_from_slice(b",\"recv_time\":\"");
        out.extend_from_slice(recv_time.as_bytes());
        out.extend_from_slice(if self.crossed {
            b"\",\"crossed\":true,\"source\":\"book\"}\n"
        } else {
            b"\",\"crossed\":false,\"source\":\"book\"}\n"
        });
    }
}

/// What happened to a connection (`event` of a `connection` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    Connected,
    Disconnected,
    ConnectFailed,
}

impl ConnectionEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionEvent::Connected => "connected",
            ConnectionEvent::Disconnected => "disconnected",
            ConnectionEvent::ConnectFailed => "connect_failed",
        }
    }
}

/// Why a stream has a gap (`reason` of a `gap` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapCause {
    /// The sequence jumped from `expected` to `received`: `missing` messages were lost.
    Sequence { expected: u64, received: u64, missing: u64 },
    /// The stream was live when its connection ended.
    Reconnect,
}

/// A recovery that did not finish: `attempts` requests failed, the last with `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryFailure<'a> {
    pub attempts: u32,
    pub error: &'a str,
    pub reason: Unrecovered,
}

/// What one gap's recovery did (a `recovery` line). `window`: a trade gap's time window
/// (exchange time, Unix ns, end exclusive); `missing`: trades lost by sequence numbers, when
/// known; `requests`: REST pages answered; `records` they held, `recovered` written, `duplicates`
/// already written by the stream. `unrecovered` (= missing − recovered when known) and `reason`
/// appear when something could not come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport<'a> {
    /// Start and end; the end is `None` for a reconnect window the run ended before it closed.
    pub window: Option<(i64, Option<i64>)>,
    pub missing: Option<u64>,
    pub requests: u32,
    pub records: u64,
    pub recovered: u64,
    pub duplicates: u64,
    /// `None`: status ok.
    pub failure: Option<RecoveryFailure<'a>>,
}

impl RecoveryReport<'_> {
    /// Records known lost, and why; `None` when nothing is known to be lost.
    pub fn unrecovered(&self) -> Option<(Option<u64>, Unrecovered)> {
        let short = self.missing.map(|m| m.saturating_sub(self.recovered));
        match &self.failure {
            Some(f) => Some((short, f.reason)),
            None => short.filter(|&n| n > 0).map(|n| (Some(n), Unrecovered::NoHistory)),
        }
    }
}

/// Every control line, as one closed set. Types CoinAPI never sends, so a consumer that only
/// wants market data filters on `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlLine<'a> {
    Connection {
        event: ConnectionEvent,
        generation: u64,
        url: &'a str,
        reason: Option<&'a str>,
    },
    Gap {
        data_type: DataType,
        symbol_id: &'a str,
        cause: GapCause,
        generation: u64,
    },
    Recovery {
        symbol_id: &'a str,
        data_type: DataType,
        report: RecoveryReport<'a>,
    },
    /// A kept book is no longer whole and waits for a fresh snapshot (`attempt`: the
    /// resubscriptions asked for so far; 0 when none is needed, as after a reconnect).
    BookResync {
        symbol_id: &'a str,
        reason: ResyncReason,
        attempt: u32,
        detail: Option<&'a str>,
    },
    /// A resync gave up resubscribing; a snapshot CoinAPI sends by itself still heals the book.
    BookResyncGivenUp {
        symbol_id: &'a str,
        attempts: u32,
    },
    /// A book is whole again: the snapshot that ended its resync.
    BookSynced {
        symbol_id: &'a str,
        sequence: u64,
        bids: usize,
        asks: usize,
        waited_ms: u64,
    },
    /// A `book` symbol beyond `--book-max-books`: no book, its raw messages only.
    BookRefused {
        symbol_id: &'a str,
        limit: usize,
    },
}

impl ControlLine<'_> {
    /// Appends the line (and its `\n`), stamped `"time":time`.
    pub fn append_to(&self, out: &mut Vec<u8>, time: &str) {
        let mut num = itoa::Buffer::new();
        let mut uint = |out: &mut Vec<u8>, key: &str, n: u64| {
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(num.format(n).as_bytes());
        };
        match self {
            ControlLine::Connection { event, generation, url, reason } => {
                out.extend_from_slice(b"{\"type\":\"connection\",\"event\":\"");
                out.extend_from_slice(event.as_str().as_bytes());
                uint(out, "\",\"generation\":", *generation);
                out.extend_from_slice(b",\"url\":");
                push_json_string(out, url);
                push_time(out, time);
                if let Some(reason) = reason {
                    out.extend_from_slice(b",\"reason\":");
                    push_json_string(out, reason);
                }
            }
            ControlLine::Gap { data_type, symbol_id, cause, generation } => {
                out.extend_from_slice(b"{\"type\":\"gap\",\"data_type\":\"");
                out.extend_from_slice(data_type.as_str().as_bytes());
                out.extend_from_slice(b"\",\"symbol_id\":");
                push_json_string(out, symbol_id);
                match cause {
                    GapCause::Sequence { expected, received, missing } => {
                        uint(out, ",\"expected\":", *expected);
                        uint(out, ",\"received\":", *received);
                        uint(out, ",\"missing\":", *missing);
                        out.extend_from_slice(b",\"reason\":\"sequence\"");
                    }
                    GapCause::Reconnect => out.extend_from_slice(b",\"reason\":\"reconnect\""),
                }
                uint(out, ",\"generation\":", *generation);
                push_time(out, time);
            }
            ControlLine::Recovery { symbol_id, data_type, report } => {
                out.extend_from_slice(b"{\"type\":\"recovery\",\"symbol_id\":");
                push_json_string(out, symbol_id);
                out.extend_from_slice(b",\"data_type\":\"");
                out.extend_from_slice(data_type.as_str().as_bytes());
                out.extend_from_slice(if report.failure.is_some() {
                    b"\",\"status\":\"failed\""
                } else {
                    b"\",\"status\":\"ok\""
                });
                if let Some((start, end)) = report.window {
                    let mut f = TimestampFormatter::default();
                    out.extend_from_slice(b",\"window_start\":\"");
                    out.extend_from_slice(f.format(i128::from(start)).as_bytes());
                    out.push(b'"');
                    if let Some(end) = end {
                        out.extend_from_slice(b",\"window_end\":\"");
                        out.extend_from_slice(f.format(i128::from(end)).as_bytes());
                        out.push(b'"');
                    }
                }
                if let Some(missing) = report.missing {
                    uint(out, ",\"missing\":", missing);
                }
                uint(out, ",\"requests\":", u64::from(report.requests));
                uint(out, ",\"records\":", report.records);
                uint(out, ",\"recovered\":", report.recovered);
                uint(out, ",\"duplicates\":", report.duplicates);
                if let Some((count, reason)) = report.unrecovered() {
                    if let Some(n) = count {
                        uint(out, ",\"unrecovered\":", n);
                    }
                    out.extend_from_slice(b",\"reason\":\"");
                    out.extend_from_slice(reason.as_str().as_bytes());
                    out.push(b'"');
                }
                if let Some(f) = &report.failure {
                    uint(out, ",\"attempts\":", u64::from(f.attempts));
                    out.extend_from_slice(b",\"error\":");
                    push_json_string(out, f.error);
                }
                push_time(out, time);
            }
            ControlLine::BookResync { symbol_id, reason, attempt, detail } => {
                out.extend_from_slice(b"{\"type\":\"book_resync\",\"symbol_id\":");
                push_json_string(out, symbol_id);
                out.extend_from_slice(b",\"data_type\":\"book\",\"reason\":\"");
                out.extend_from_slice(reason.as_str().as_bytes());
                out.push(b'"');
                if let Some(detail) = detail {
                    out.extend_from_slice(b",\"detail\":");
                    push_json_string(out, detail);
                }
                uint(out, ",\"attempt\":", u64::from(*attempt));
                push_time(out, time);
            }
            ControlLine::BookResyncGivenUp { symbol_id, attempts } => {
                out.extend_from_slice(b"{\"type\":\"book_resync\",\"symbol_id\":");
                push_json_string(out, symbol_id);
                out.extend_from_slice(b",\"data_type\":\"book\",\"reason\":\"given_up\"");
                uint(out, ",\"attempt\":", u64::from(*attempts));
                push_time(out, time);
            }
            ControlLine::BookSynced { symbol_id, sequence, bids, asks, waited_ms } => {
                out.extend_from_slice(b"{\"type\":\"book_synced\",\"symbol_id\":");
                push_json_string(out, symbol_id);
                out.extend_from_slice(b",\"data_type\":\"book\"");
                uint(out, ",\"sequence\":", *sequence);
                uint(out, ",\"bids\":", *bids as u64);
                uint(out, ",\"asks\":", *asks as u64);
                uint(out, ",\"waited_ms\":", *waited_ms);
                push_time(out, time);
            }
            ControlLine::BookRefused { symbol_id, limit } => {
                out.extend_from_slice(b"{\"type\":\"book_refused\",\"symbol_id\":");
                push_json_string(out, symbol_id);
                out.extend_from_slice(b",\"data_type\":\"book\",\"reason\":\"books_max\"");
                uint(out, ",\"limit\":", *limit as u64);
                push_time(out, time);
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

fn push_time(out: &mut Vec<u8>, time: &str) {
    out.extend_from_slice(b",\"time\":\"");
    out.extend_from_slice(time.as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRADE: &str = r#"{"type":"trade","symbol_id":"BITSTAMP_SPOT_BTC_USD","sequence":2323346,"time_exchange":"2013-09-28T22:40:50.0000000Z","time_coinapi":"2017-03-18T22:42:21.3763342Z","uuid":"770C7A3B-7258-4441-8182-83740F3E2457","price":770.000000000,"size":0.0189885151556305438646080756,"taker_side":"BUY"}"#;

    fn line(frame: &str) -> String {
        let mut out = Vec::new();
        append_line(&mut out, frame.as_bytes(), "2026-11-28T06:44:26.1234567Z", Source::Ws);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn output_keeps_every_number_byte_identical() {
        let got = line(TRADE);
        assert_eq!(
            got,
            format!(
                "{},\"recv_time\":\"2026-11-28T06:44:26.1234567Z\",\"source\":\"ws\"}}\n",
                &TRADE[..TRADE.len() - 1]
            )
        );
        assert!(got.contains(r#""price":770.000000000,"size":0.0189885151556305438646080756,"#));
        let exp = line(r#"{"type":"exrate","rate":1e-8,"big":123456789012345678901234567890}"#);
        assert!(exp.contains(r#""rate":1e-8,"big":123456789012345678901234567890,"#), "{exp}");
    }

    #[test]
    fn output_is_compact_one_line_and_keeps_strings_intact() {
        let pretty = "{ \"type\" : \"quote\",\n  \"symbol_id\": \"A B\\\" \\n\",\r\n\t\"ask_price\" : 1.50 }\n";
        let got = line(pretty);
        assert_eq!(
            got,
            "{\"type\":\"quote\",\"symbol_id\":\"A B\\\" \\n\",\"ask_price\":1.50,\"recv_time\":\"2026-11-28T06:44:26.1234567Z\",\"source\":\"ws\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&got).expect("valid json");
        assert_eq!(v["symbol_id"], "A B\" \n");
        assert_eq!(line("{}"), "{\"recv_time\":\"2026-11-28T06:44:26.1234567Z\",\"source\":\"ws\"}\n");
    }

    #[test]
    fn rest_records_get_type_and_symbol_and_keep_their_numbers() {
        let check = |record: &str, dt: DataType, want: &str| {
            let mut out = Vec::new();
            append_rest_line(&mut out, record.as_bytes(), dt, "BITSTAMP_SPOT_BTC_USD", "T");
            assert_eq!(String::from_utf8(out).expect("utf8"), want, "{record}");
        };
        check(
            r#"{"symbol_id":"BITSTAMP_SPOT_BTC_USD","uuid":"a","price":0.0189885151556305438646080756}"#,
            DataType::Trade,
            "{\"type\":\"trade\",\"symbol_id\":\"BITSTAMP_SPOT_BTC_USD\",\"uuid\":\"a\",\"price\":0.0189885151556305438646080756,\"recv_time\":\"T\",\"source\":\"rest\"}\n",
        );
        check(
            r#"{ "time_period_start": "x", "price_close" : 770.000000000 }"#,
            DataType::Ohlcv,
            "{\"type\":\"ohlcv\",\"symbol_id\":\"BITSTAMP_SPOT_BTC_USD\",\"time_period_start\":\"x\",\"price_close\":770.000000000,\"recv_time\":\"T\",\"source\":\"rest\"}\n",
        );
        check(
            r#"{"symbol_id":"S","asks":[{"price":1e-8,"size":2}],"bids":[]}"#,
            DataType::Book20,
            "{\"type\":\"book20\",\"is_snapshot\":true,\"symbol_id\":\"S\",\"asks\":[{\"price\":1e-8,\"size\":2}],\"bids\":[],\"recv_time\":\"T\",\"source\":\"rest\"}\n",
        );
        check(
            "{}",
            DataType::Quote,
            "{\"type\":\"quote\",\"symbol_id\":\"BITSTAMP_SPOT_BTC_USD\",\"recv_time\":\"T\",\"source\":\"rest\"}\n",
        );
    }

    #[test]
    fn timestamps_use_coinapi_format() {
        let mut f = TimestampFormatter::default();
        assert_eq!(f.format(0), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(f.format(1_489_876_941_376_334_200), "2017-03-18T22:42:21.3763342Z");
        assert_eq!(f.format(1_489_876_941_000_000_099), "2017-03-18T22:42:21.0000000Z");
        assert_eq!(f.format(1_489_876_942_999_999_999), "2017-03-18T22:42:22.9999999Z");
    }

    /// Every line shape coinfeed writes, in full: the contract other programs parse. README.md
    /// quotes these lines (a tidy test checks it), so a change here is a change there.
    pub(crate) const SHAPES: &[(&str, &str)] = &[
        (
            "connection connected",
            r#"{"type":"connection","event":"connected","generation":1,"url":"ws://127.0.0.1:45661/v1/","time":"2026-11-28T07:23:04.5914270Z"}"#,
        ),
        (
            "connection disconnected",
            r#"{"type":"connection","event":"disconnected","generation":1,"url":"ws://127.0.0.1:45661/v1/","time":"2026-11-28T07:23:09.1000000Z","reason":"no message for 5.1s (stale timeout 5.0s)"}"#,
        ),
        (
            "connection connect_failed",
            r#"{"type":"connection","event":"connect_failed","generation":2,"url":"ws://127.0.0.1:45661/v1/","time":"2026-11-28T07:23:09.2000000Z","reason":"tcp connect to 127.0.0.1:45661: Connection refused (os error 111)"}"#,
        ),
        (
            "gap sequence",
            r#"{"type":"gap","data_type":"trade","symbol_id":"BITSTAMP_SPOT_BTC_USD","expected":2201,"received":3043,"missing":842,"reason":"sequence","generation":1,"time":"2026-11-28T07:31:37.2656353Z"}"#,
        ),
        (
            "gap reconnect",
            r#"{"type":"gap","data_type":"quote","symbol_id":"BITSTAMP_SPOT_BTC_USD","reason":"reconnect","generation":2,"time":"2026-11-28T07:31:40.0000000Z"}"#,
        ),
        (
            "recovery ok (trade window)",
            r#"{"type":"recovery","symbol_id":"BITSTAMP_SPOT_BTC_USD","data_type":"trade","status":"ok","window_start":"2026-11-28T07:31:27.1021733Z","window_end":"2026-11-28T07:31:38.2655903Z","missing":842,"requests":9,"records":862,"recovered":842,"duplicates":20,"time":"2026-11-28T07:31:42.8395952Z"}"#,
        ),
        (
            "recovery ok, short (trade window)",
            r#"{"type":"recovery","symbol_id":"BITSTAMP_SPOT_BTC_USD","data_type":"trade","status":"ok","window_start":"2026-11-28T07:31:27.1021733Z","window_end":"2026-11-28T07:31:38.2655903Z","missing":842,"requests":9,"records":850,"recovered":830,"duplicates":20,"unrecovered":12,"reason":"no_history","time":"2026-11-28T07:31:42.8395952Z"}"#,
        ),
        (
            "recovery ok (state)",
            r#"{"type":"recovery","symbol_id":"BITSTAMP_SPOT_BTC_USD","data_type":"quote","status":"ok","requests":1,"records":1,"recovered":1,"duplicates":0,"time":"2026-11-28T07:27:30.8395952Z"}"#,
        ),
        (
            "recovery failed",
            r#"{"type":"recovery","symbol_id":"BITSTAMP_SPOT_BTC_USD","data_type":"trade","status":"failed","window_start":"2026-11-28T07:31:27.1021733Z","window_end":"2026-11-28T07:31:38.2655903Z","missing":842,"requests":2,"records":200,"recovered":200,"duplicates":0,"unrecovered":642,"reason":"rest_failed","attempts":5,"error":"HTTP 503","time":"2026-11-28T07:31:50.0000000Z"}"#,
        ),
        (
            "trade ws",
            r#"{"type":"trade","symbol_id":"BITSTAMP_SPOT_BTC_USD","sequence":1,"time_exchange":"2026-11-28T07:23:04.5960721Z","time_coinapi":"2026-11-28T07:23:04.6433661Z","uuid":"667341E1-AA06-421E-AE08-000000000001","price":63999.97,"size":0.2051167,"taker_side":"BUY_ESTIMATED","recv_time":"2026-11-28T07:23:04.6435072Z","source":"ws"}"#,
        ),
        (
            "trade rest",
            r#"{"type":"trade","symbol_id":"BITSTAMP_SPOT_BTC_USD","time_exchange":"2026-11-28T07:27:30.8173398Z","time_coinapi":"2026-11-28T07:27:30.8385508Z","uuid":"3aa3de71-0be0-4fbe-847c-f9da45bb7bb4","price":64000.01,"size":0.0140135,"taker_side":"SELL","recv_time":"2026-11-28T07:27:30.8393434Z","source":"rest"}"#,
        ),
        (
            "book_top",
            r#"{"type":"book_top","symbol_id":"BITSTAMP_SPOT_BTC_USD","depth":2,"bids":[{"price":63996.79,"size":0.0684830000},{"price":63993.590157227839502214240160,"size":0.026999}],"asks":[{"price":64003.19,"size":6319e-5},{"price":64006.39000000,"size":0.071836}],"sequence":1,"time_exchange":"2026-12-01T14:56:31.9199732Z","time_coinapi":"2026-12-01T14:56:31.9685192Z","recv_time":"2026-12-01T14:56:31.9688549Z","crossed":false,"source":"book"}"#,
        ),
        (
            "book_resync",
            r#"{"type":"book_resync","symbol_id":"BITSTAMP_SPOT_BTC_USD","data_type":"book","reason":"rejected","detail":"a negative size","attempt":1,"time":"2026-12-01T14:13:12.0000000Z"}"#,
        ),
        (
            "book_resync given up",
            r#"{"type":"book_resync","symbol_id":"BITSTAMP_SPOT_BTC_USD","data_type":"book","reason":"given_up","attempt":4,"time":"2026-12-01T14:15:42.0000000Z"}"#,
        ),
        (
            "book_synced",
            r#"{"type":"book_synced","symbol_id":"BITSTAMP_SPOT_BTC_USD","data_type":"book","sequence":1,"bids":20,"asks":20,"waited_ms":2113,"time":"2026-12-01T14:13:14.1130000Z"}"#,
        ),
        (
            "book_refused",
            r#"{"type":"book_refused","symbol_id":"BITSTAMP_SPOT_BTC_USD","data_type":"book","reason":"books_max","limit":1000,"time":"2026-12-01T14:13:11.6539956Z"}"#,
        ),
    ];

    /// Proves each shape is produced exactly, byte for byte, from its parts.
    #[test]
    fn every_line_shape_is_exact() {
        let url = "ws://127.0.0.1:45661/v1/";
        let sym = "BITSTAMP_SPOT_BTC_USD";
        let window = RecoveryReport {
            window: Some((1_795_851_087_102_173_300, Some(1_795_851_098_265_590_300))),
            missing: Some(842),
            requests: 9,
            records: 862,
            recovered: 842,
            duplicates: 20,
            failure: None,
        };
        let control = |line: ControlLine<'_>, time: &str| {
            let mut b = Batch::default();
            b.push_control(&line, time);
            assert_eq!(b.lines(), LineCounts { control: 1, ..LineCounts::default() });
            b
        };
        let mut produced: Vec<Batch> = vec![
            control(
                ControlLine::Connection { event: ConnectionEvent::Connected, generation: 1, url, reason: None },
                "2026-11-28T07:23:04.5914270Z",
            ),
            control(
                ControlLine::Connection {
                    event: ConnectionEvent::Disconnected,
                    generation: 1,
                    url,
                    reason: Some("no message for 5.1s (stale timeout 5.0s)"),
                },
                "2026-11-28T07:23:09.1000000Z",
            ),
            control(
                ControlLine::Connection {
                    event: ConnectionEvent::ConnectFailed,
                    generation: 2,
                    url,
                    reason: Some("tcp connect to 127.0.0.1:45661: Connection refused (os error 111)"),
                },
                "2026-11-28T07:23:09.2000000Z",
            ),
            control(
                ControlLine::Gap {
                    data_type: DataType::Trade,
                    symbol_id: sym,
                    cause: GapCause::Sequence { expected: 2201, received: 3043, missing: 842 },
                    generation: 1,
                },
                "2026-11-28T07:31:37.2656353Z",
            ),
            control(
                ControlLine::Gap {
                    data_type: DataType::Quote,
                    symbol_id: sym,
                    cause: GapCause::Reconnect,
                    generation: 2,
                },
                "2026-11-28T07:31:40.0000000Z",
            ),
            control(
                ControlLine::Recovery { symbol_id: sym, data_type: DataType::Trade, report: window.clone() },
                "2026-11-28T07:31:42.8395952Z",
            ),
            control(
                ControlLine::Recovery {
                    symbol_id: sym,
                    data_type: DataType::Trade,
                    report: RecoveryReport { records: 850, recovered: 830, ..window.clone() },
                },
                "2026-11-28T07:31:42.8395952Z",
            ),
            control(
                ControlLine::Recovery {
                    symbol_id: sym,
                    data_type: DataType::Quote,
                    report: RecoveryReport {
                        window: None,
                        missing: None,
                        requests: 1,
                        records: 1,
                        recovered: 1,
                        duplicates: 0,
                        failure: None,
                    },
                },
                "2026-11-28T07:27:30.8395952Z",
            ),
            control(
                ControlLine::Recovery {
                    symbol_id: sym,
                    data_type: DataType::Trade,
                    report: RecoveryReport {
                        requests: 2,
                        records: 200,
                        recovered: 200,
                        duplicates: 0,
                        failure: Some(RecoveryFailure {
                            attempts: 5,
                            error: "HTTP 503",
                            reason: Unrecovered::RestFailed,
                        }),
                        ..window.clone()
                    },
                },
                "2026-11-28T07:31:50.0000000Z",
            ),
        ];
        let mut ws = Batch::default();
        ws.push_market(br#"{"type":"trade","symbol_id":"BITSTAMP_SPOT_BTC_USD","sequence":1,"time_exchange":"2026-11-28T07:23:04.5960721Z","time_coinapi":"2026-11-28T07:23:04.6433661Z","uuid":"667341E1-AA06-421E-AE08-000000000001","price":63999.97,"size":0.2051167,"taker_side":"BUY_ESTIMATED"}"#, "2026-11-28T07:23:04.6435072Z");
        assert_eq!(ws.lines(), LineCounts { market: 1, ..LineCounts::default() });
        produced.push(ws);
        let mut rest = Batch::default();
        rest.push_rest(
            b"{\n  \"symbol_id\": \"BITSTAMP_SPOT_BTC_USD\",\n  \"time_exchange\": \"2026-11-28T07:27:30.8173398Z\",\n  \"time_coinapi\": \"2026-11-28T07:27:30.8385508Z\",\n  \"uuid\": \"3aa3de71-0be0-4fbe-847c-f9da45bb7bb4\",\n  \"price\": 64000.01,\n  \"size\": 0.0140135,\n  \"taker_side\": \"SELL\"\n}",
            DataType::Trade,
            sym,
            "2026-11-28T07:27:30.8393434Z",
        );
        assert_eq!(rest.lines(), LineCounts { rest: 1, ..LineCounts::default() });
        produced.push(rest);
        let mut top = Batch::default();
        top.push_book_top(
            &BookTop {
                symbol_id: sym,
                depth: 2,
                levels: br#""bids":[{"price":63996.79,"size":0.0684830000},{"price":63993.590157227839502214240160,"size":0.026999}],"asks":[{"price":64003.19,"size":6319e-5},{"price":64006.39000000,"size":0.071836}]"#,
                sequence: 1,
                time_exchange: "\"2026-12-01T14:56:31.9199732Z\"",
                time_coinapi: "\"2026-12-01T14:56:31.9685192Z\"",
                crossed: false,
            },
            "2026-12-01T14:56:31.9688549Z",
        );
        assert_eq!(top.lines(), LineCounts { book_top: 1, ..LineCounts::default() });
        produced.push(top);
        produced.push(control(
            ControlLine::BookResync {
                symbol_id: sym,
                reason: ResyncReason::Rejected,
                attempt: 1,
                detail: Some("a negative size"),
            },
            "2026-12-01T14:13:12.0000000Z",
        ));
        produced.push(control(
            ControlLine::BookResyncGivenUp { symbol_id: sym, attempts: 4 },
            "2026-12-01T14:15:42.0000000Z",
        ));
        produced.push(control(
            ControlLine::BookSynced { symbol_id: sym, sequence: 1, bids: 20, asks: 20, waited_ms: 2113 },
            "2026-12-01T14:13:14.1130000Z",
        ));
        produced
            .push(control(ControlLine::BookRefused { symbol_id: sym, limit: 1000 }, "2026-12-01T14:13:11.6539956Z"));
        assert_eq!(produced.len(), SHAPES.len());
        for (batch, (name, want)) in produced.iter().zip(SHAPES) {
            let got = std::str::from_utf8(batch.as_bytes()).expect("utf8");
            assert_eq!(got, format!("{want}\n"), "{name}");
            serde_json::from_str::<serde_json::Value>(got).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    /// Proves strings in control lines are escaped (a reason or symbol with quotes stays one
    /// valid JSON line).
    #[test]
    fn control_strings_are_escaped() {
        let mut b = Batch::default();
        b.push_control(
            &ControlLine::Connection {
                event: ConnectionEvent::Disconnected,
                generation: 3,
                url: "u",
                reason: Some("a \"b\"\n"),
            },
            "T",
        );
        let v: serde_json::Value = serde_json::from_slice(&b.as_bytes()[..b.len() - 1]).expect("json");
        assert_eq!(v["reason"], "a \"b\"\n");
    }

    /// Proves `--limit`'s cut lets exactly n market-data lines through, keeps the control lines
    /// before the n-th, and never cuts inside a line.
    #[test]
    fn the_limit_cut_counts_market_data_lines_only() {
        let mut b = Batch::default();
        b.push_market(br#"{"type":"trade","a":1}"#, "T");
        b.push_control(
            &ControlLine::Connection {
                event: ConnectionEvent::Connected,
                generation: 1,
                url: "u",
                reason: Some("a \"source\":\"ws\"}"),
            },
            "T",
        );
        b.push_rest(br#"{"uuid":"x"}"#, DataType::Trade, "S", "T");
        b.push_market(br#"{"type":"quote"}"#, "T");
        let bytes = b.as_bytes();
        let lines: Vec<&[u8]> = bytes.split_inclusive(|&c| c == b'\n').collect();
        let cut = |n| {
            let (len, counts) = data_lines_prefix(bytes, n);
            (len, counts.market, counts.rest, counts.control)
        };
        let len = |k: usize| lines[..k].iter().map(|l| l.len()).sum::<usize>();
        assert_eq!(cut(0), (0, 0, 0, 0));
        assert_eq!(cut(1), (len(2), 1, 0, 1), "the control line after it comes too");
        assert_eq!(cut(2), (len(3), 1, 1, 1));
        assert_eq!(cut(3), (bytes.len(), 2, 1, 1));
        assert_eq!(cut(9), (bytes.len(), 2, 1, 1));
    }
}
