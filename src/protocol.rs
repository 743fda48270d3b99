//! CoinAPI's WebSocket wire format as the client reads it, and the NDJSON output format.
//!
//! Two levels of decoding, by design:
//! - `scan_field` is the reader's cheap look at a frame (its `type` and `symbol_id`) to route it
//!   without parsing it, so the one reader thread stays fast;
//! - `decode` is the worker's full validation: the whole frame must be a JSON object, the fields
//!   the pipeline depends on must have the right types.
//!
//! The output line is the wire text itself (whitespace outside strings removed) with `recv_time`
//! and `source` appended, so every number reaches stdout byte-identical to the wire: nothing on
//! this path goes through f64. This module does no IO and reads no clock.

use std::borrow::Cow;

use crate::json_scan;

/// The data types a user may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Trade,
    Quote,
    Book,
    Book5,
    Book20,
    Book50,
    BookL3,
    Ohlcv,
    Exrate,
}

impl DataType {
    pub const ALL: [DataType; 9] = [
        DataType::Trade,
        DataType::Quote,
        DataType::Book,
        DataType::Book5,
        DataType::Book20,
        DataType::Book50,
        DataType::BookL3,
        DataType::Ohlcv,
        DataType::Exrate,
    ];
    pub const ALL_NAMES: &'static str = "trade, quote, book, book5, book20, book50, book_l3, ohlcv, exrate";

    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Trade => "trade",
            DataType::Quote => "quote",
            DataType::Book => "book",
            DataType::Book5 => "book5",
            DataType::Book20 => "book20",
            DataType::Book50 => "book50",
            DataType::BookL3 => "book_l3",
            DataType::Ohlcv => "ohlcv",
            DataType::Exrate => "exrate",
        }
    }

    /// Types numbered per (type, symbol_id) by `sequence`; exrate carries neither.
    pub fn is_sequenced(self) -> bool {
        self != DataType::Exrate
    }
}

/// What the reader needs to know about a frame before routing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Heartbeat,
    Error,
    Reconnect,
    /// Anything else: market data, unknown types and malformed text all go to a worker, which
    /// validates and counts them.
    Data,
}

/// Classifies a text frame by a scan of its `type` field (no full parse).
pub fn classify(frame: &[u8]) -> FrameKind {
    match scan_field(frame, b"type") {
        Some(b"hearbeat") | Some(b"heartbeat") => FrameKind::Heartbeat,
        Some(b"error") => FrameKind::Error,
        Some(b"reconnect") => FrameKind::Reconnect,
        _ => FrameKind::Data,
    }
}

/// Finds the string value of `"key":"..."` in a JSON text without parsing it.
///
/// Sound for routing because inside a JSON string every `"` is escaped: the pattern `"key"`
/// followed by `:` can only be an object key. A nested object with the same key would be found
/// too, which CoinAPI's flat messages never have; the worker's full decode is the real check.
/// Returns the raw (still escaped) bytes between the quotes.
pub fn scan_field<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    // Fast path: CoinAPI writes `type` first and `symbol_id` second, compactly.
    if let Some(value) = leading_field(frame, key) {
        return Some(value);
    }
    let mut from = 0;
    while let Some(pos) = memchr::memmem::find(&frame[from..], key) {
        let start = from + pos;
        let end = start + key.len();
        from = end;
        if start == 0 || frame[start - 1] != b'"' || frame.get(end) != Some(&b'"') {
            continue;
        }
        let rest = skip_ws(&frame[end + 1..]);
        let Some(rest) = rest.strip_prefix(b":") else { continue };
        let rest = skip_ws(rest);
        let value = rest.strip_prefix(b"\"")?;
        let mut i = 0;
        while i < value.len() {
            match value[i] {
                b'\\' => i += 2,
                b'"' => return Some(&value[..i]),
                _ => i += 1,
            }
        }
        return None;
    }
    None
}

/// The value of `key` if it is the first or second field of a compact object whose values
/// before it are plain strings, e.g. `{"type":"trade","symbol_id":"X",...`. `None` means "not
/// found this way", not "absent": the caller then scans.
fn leading_field<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut rest = frame.strip_prefix(b"{")?;
    for _ in 0..2 {
        let after_quote = rest.strip_prefix(b"\"")?;
        let key_end = memchr::memchr(b'"', after_quote)?;
        let this_key = &after_quote[..key_end];
        let value = after_quote[key_end + 1..].strip_prefix(b":\"")?;
        let value_end = memchr::memchr2(b'"', b'\\', value)?;
        if value[value_end] != b'"' {
            return None; // an escape: leave it to the full scan
        }
        if this_key == key {
            return Some(&value[..value_end]);
        }
        rest = value[value_end + 1..].strip_prefix(b",")?;
    }
    None
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')).count();
    &s[n..]
}

/// A validated market-data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub data_type: DataType,
    /// Present for every sequenced type; `None` only for exrate.
    pub symbol_id: Option<Cow<'a, str>>,
    pub sequence: Option<u64>,
    pub uuid: Option<Cow<'a, str>>,
}

/// Why a frame was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Not JSON, not an object, a field of the wrong type, or a required field missing.
    Malformed(String),
    /// Valid JSON object with a `type` this program does not handle: counted and skipped, as
    /// the protocol asks.
    UnknownType(String),
}

/// Fully validates one text frame (see `json_scan`). Takes `&str`: WebSocket text frames are
/// valid UTF-8 already.
pub fn decode(frame: &str) -> Result<Decoded<'_>, Reject> {
    let head = json_scan::scan_object(frame).map_err(Reject::Malformed)?;
    check_head(head.kind, head.symbol_id, head.sequence, head.uuid)
}

/// The rules on top of JSON validity: a known type, and the fields its handling relies on.
fn check_head<'a>(
    kind: Cow<'a, str>,
    symbol_id: Option<Cow<'a, str>>,
    sequence: Option<u64>,
    uuid: Option<Cow<'a, str>>,
) -> Result<Decoded<'a>, Reject> {
    let Some(data_type) = DataType::parse(&kind) else {
        return Err(Reject::UnknownType(kind.into_owned()));
    };
    if data_type.is_sequenced() {
        match &symbol_id {
            Some(s) if !s.is_empty() => {}
            _ => return Err(Reject::Malformed(format!("{} without symbol_id", data_type.as_str()))),
        }
        if sequence.is_none() {
            return Err(Reject::Malformed(format!("{} without sequence", data_type.as_str())));
        }
    }
    if data_type == DataType::Trade && uuid.is_none() {
        return Err(Reject::Malformed("trade without uuid".to_string()));
    }
    Ok(Decoded { data_type, symbol_id, sequence, uuid })
}

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
    if scan_field(trimmed, b"type").is_none() {
        field(out, &format!("\"type\":\"{}\"", data_type.as_str()));
    }
    if scan_field(trimmed, b"symbol_id").is_none() {
        field(out, &format!("\"symbol_id\":{}", json_string(symbol_id)));
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

/// A JSON string literal (quoted and escaped), for the control lines written by hand.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
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

/// A stable, fast hash of a symbol id's bytes (FNV-1a) to pick its worker. Stable across runs
/// and independent of the hasher seed, so a symbol always lands on the same worker.
pub fn route(symbol_id: &[u8], n_workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in symbol_id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % n_workers as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    // The previous decoder, through serde_json: the reference `decode` must agree with.
    use serde::Deserialize;

    /// The fields the pipeline relies on, borrowed from the frame where no unescaping is needed.
    /// Every other field is validated as JSON and kept verbatim in the output.
    #[derive(Debug, Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default, borrow, deserialize_with = "optional_cow")]
        symbol_id: Option<Cow<'a, str>>,
        #[serde(default)]
        sequence: Option<u64>,
        #[serde(default, borrow, deserialize_with = "optional_cow")]
        uuid: Option<Cow<'a, str>>,
    }

    /// serde's `borrow` does not reach through `Option`: a plain `Option<Cow<str>>` field always
    /// allocates. This borrows when the string has no escapes and owns only when it must.
    fn optional_cow<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Option<Cow<'de, str>>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or null")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(v.to_string())))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_option(OptionalStr(V))
    }

    /// Adapts `deserialize_option`: `Some` forwards to a string visit, `None` stays `None`.
    struct OptionalStr<V>(V);

    impl<'de, V: serde::de::Visitor<'de, Value = Option<Cow<'de, str>>>> serde::de::Visitor<'de> for OptionalStr<V> {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.expecting(f)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self.0)
        }
    }

    fn reference_decode(frame: &str) -> Result<Decoded<'_>, Reject> {
        if skip_ws(frame.as_bytes()).first() != Some(&b'{') {
            return Err(Reject::Malformed("not a JSON object".to_string()));
        }
        let head: Head<'_> = serde_json::from_str(frame).map_err(|e| Reject::Malformed(e.to_string()))?;
        check_head(head.kind, head.symbol_id, head.sequence, head.uuid)
    }

    const TRADE: &str = r#"{"type":"trade","symbol_id":"BITSTAMP_SPOT_BTC_USD","sequence":2323346,"time_exchange":"2013-09-28T22:40:50.0000000Z","time_coinapi":"2017-03-18T22:42:21.3763342Z","uuid":"770C7A3B-7258-4441-8182-83740F3E2457","price":770.000000000,"size":0.0189885151556305438646080756,"taker_side":"BUY"}"#;

    fn line(frame: &str) -> String {
        let mut out = Vec::new();
        append_line(&mut out, frame.as_bytes(), "2026-11-28T06:44:26.1234567Z", Source::Ws);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn scan_field_finds_keys_not_lookalikes() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (TRADE, "type", Some("trade")),
            (TRADE, "symbol_id", Some("BITSTAMP_SPOT_BTC_USD")),
            (r#"{ "type" : "hearbeat" }"#, "type", Some("hearbeat")),
            (r#"{"update_type":"ADD","type":"book_l3"}"#, "type", Some("book_l3")),
            (r#"{"note":"\"type\":\"error\"","type":"quote"}"#, "type", Some("quote")),
            (r#"{"type":"a\"b"}"#, "type", Some(r#"a\"b"#)),
            (r#"{"type":5}"#, "type", None),
            (r#"{"type":"unterminated"#, "type", None),
            ("not json", "type", None),
        ];
        for (frame, key, want) in cases {
            let got = scan_field(frame.as_bytes(), key.as_bytes()).map(|b| std::str::from_utf8(b).expect("utf8"));
            assert_eq!(got, *want, "{frame} / {key}");
        }
    }

    #[test]
    fn classify_recognises_both_heartbeat_spellings_and_control_types() {
        assert_eq!(classify(br#"{"type":"hearbeat"}"#), FrameKind::Heartbeat);
        assert_eq!(classify(br#"{"type":"heartbeat"}"#), FrameKind::Heartbeat);
        assert_eq!(classify(br#"{"type":"error","message":"Invalid API key"}"#), FrameKind::Error);
        assert_eq!(classify(br#"{"type":"reconnect","within_seconds":10}"#), FrameKind::Reconnect);
        assert_eq!(classify(TRADE.as_bytes()), FrameKind::Data);
        assert_eq!(classify(b"[1,2]"), FrameKind::Data);
    }

    #[test]
    fn decode_validates_what_the_pipeline_relies_on() {
        let ok = decode(TRADE).expect("valid trade");
        assert_eq!(ok.data_type, DataType::Trade);
        assert_eq!(ok.symbol_id.as_deref(), Some("BITSTAMP_SPOT_BTC_USD"));
        assert_eq!(ok.sequence, Some(2_323_346));
        assert_eq!(ok.uuid.as_deref(), Some("770C7A3B-7258-4441-8182-83740F3E2457"));
        let escaped = decode(r#"{"type":"quote","symbol_id":"A\u0042","sequence":1}"#).expect("escapes are fine");
        assert_eq!(escaped.symbol_id.as_deref(), Some("AB"));
        assert!(matches!(ok.symbol_id, Some(Cow::Borrowed(_))), "no allocation for a plain symbol");
        let exrate = r#"{"type":"exrate","asset_id_base":"BTC","asset_id_quote":"USD","rate_type":"BASE_ALL_CURRENT","time":"2026-01-01T00:00:00.0000000Z","rate":1e-8}"#;
        assert_eq!(decode(exrate).expect("exrate").data_type, DataType::Exrate);

        let malformed = [
            "{not json",
            r#"["trade","X",1]"#,
            r#"{"type":"trade","sequence":1,"uuid":"u"}"#,
            r#"{"type":"quote","symbol_id":"","sequence":1}"#,
            r#"{"type":"quote","symbol_id":"X","sequence":-1}"#,
            r#"{"type":"quote","symbol_id":"X","sequence":1.5}"#,
            r#"{"type":"quote","symbol_id":"X"}"#,
            r#"{"type":"quote","symbol_id":null,"sequence":1}"#,
            r#"{"type":"quote","symbol_id":7,"sequence":1}"#,
            r#"{"type":"trade","symbol_id":"X","sequence":1}"#,
            r#"{"type":"quote","symbol_id":"X","sequence":1} trailing"#,
            r#"{"symbol_id":"X","sequence":1}"#,
            "",
        ];
        for m in malformed {
            assert!(matches!(decode(m), Err(Reject::Malformed(_))), "{m}");
        }
        assert_eq!(decode(r#"{"type":"candles","symbol_id":"X"}"#), Err(Reject::UnknownType("candles".to_string())));
    }

    fn same_verdict(frame: &str) {
        let (got, want) = (decode(frame), reference_decode(frame));
        match (&got, &want) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{frame:?}"),
            (Err(Reject::Malformed(_)), Err(Reject::Malformed(_))) => {}
            (Err(Reject::UnknownType(a)), Err(Reject::UnknownType(b))) => assert_eq!(a, b, "{frame:?}"),
            _ => panic!("{frame:?}: decode says {got:?}, serde_json says {want:?}"),
        }
    }

    /// Proves the one-pass validator accepts exactly what serde_json accepts and extracts the
    /// same fields: on hand-picked edge cases and on 300,000 random mutations of real frames.
    #[test]
    fn decode_agrees_with_serde_json_on_every_frame_and_mutation() {
        let seeds = [
            TRADE,
            r#"{"type":"quote","symbol_id":"COINBASE_SPOT_ETH_USD","sequence":99887766,"ask_price":3012.450000000,"ask_size":12.0E+3,"bid_price":-0.0,"bid_size":1e-8}"#,
            r#"{"type":"book20","symbol_id":"X","sequence":1,"is_snapshot":true,"asks":[{"price":1.5,"size":2}],"bids":[],"x":{"a":[null,false,{"b":[]}]}}"#,
            r#"{"type":"exrate","asset_id_base":"BTC","rate":1e-8,"time":"2026-01-01T00:00:00.0000000Z"}"#,
            r#" { "type" : "trade" , "symbol_id" : "A\u0042\n\"" , "sequence" : 0 , "uuid" : "u\\\/\b\f\r\t" } "#,
            r#"{"typ\u0065":"quote","symbol_id":"A","sequence":18446744073709551615}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":18446744073709551616}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":1,"type":"quote"}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":1,"other":1,"other":2}"#,
            r#"{"type":"quote","symbol_id":"\ud800","sequence":1}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":1,"x":"\ud800"}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":-0}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":01}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":1,"p":01}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":1,"p":1.}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":1,"p":.5}"#,
            "{\"type\":\"quote\",\"symbol_id\":\"A\",\"sequence\":1,\"p\":\"tab\tin string\"}",
            r#"{"type":"candles","symbol_id":null,"uuid":null,"sequence":null}"#,
            r#"{"type":null}"#,
            "{}",
            "[]",
            "",
            "é",
        ];
        for seed in seeds {
            same_verdict(seed);
        }
        let nested_ok = format!(r#"{{"type":"quote","x":{}{}}}"#, "[".repeat(126), "]".repeat(126));
        same_verdict(&nested_ok);
        let nested_deep = format!(r#"{{"type":"quote","x":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(decode(&nested_deep).is_err());

        let alphabet: Vec<char> = "{}[]:,\"\\ \n0123456789-+.eEuntrfalsbx\u{1}é".chars().collect();
        let mut rng = fastrand::Rng::with_seed(20_261_128);
        let mut accepted = 0;
        for round in 0..300_000 {
            let mut chars: Vec<char> = seeds[round % 5].chars().collect();
            for _ in 0..rng.usize(1..=3) {
                let at = rng.usize(0..=chars.len());
                let c = alphabet[rng.usize(0..alphabet.len())];
                match rng.u8(0..4) {
                    0 if at < chars.len() => {
                        chars.remove(at);
                    }
                    1 if at < chars.len() => chars[at] = c,
                    2 => chars.insert(at, c),
                    _ => chars.truncate(at),
                }
            }
            let frame: String = chars.into_iter().collect();
            same_verdict(&frame);
            accepted += usize::from(decode(&frame).is_ok());
        }
        assert!(accepted > 10_000, "the mutations should leave many frames valid: {accepted}");
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

    #[test]
    fn routing_is_stable_and_in_range() {
        for n in 1..8 {
            let w = route(b"BITSTAMP_SPOT_BTC_USD", n);
            assert!(w < n);
            assert_eq!(w, route(b"BITSTAMP_SPOT_BTC_USD", n));
        }
        let spread: std::collections::HashSet<usize> =
            (0..100).map(|i| route(format!("SYM_{i}").as_bytes(), 4)).collect();
        assert_eq!(spread.len(), 4, "100 symbols use all 4 workers");
    }
}
