//! CoinAPI's WebSocket wire format as the client reads it: data types, the reader's cheap
//! classification of a frame, and the worker's full validation. The NDJSON output shapes live in
//! `output::ndjson`; routing lives in `lanes`.
//!
//! Two levels of decoding, by design:
//! - `scan_field` is the reader's cheap look at a frame (its `type` and `symbol_id`) to route it
//!   without parsing it, so the one reader thread stays fast;
//! - `decode` is the worker's full validation: the whole frame must be a JSON object, the fields
//!   the pipeline depends on must have the right types.
//!
//! Pure: no IO, no clock.

use std::borrow::Cow;

pub mod book;
pub mod json_scan;

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
    /// A trade's exchange time (CoinAPI's timestamp text), when sent.
    pub time_exchange: Option<Cow<'a, str>>,
    /// A book message's `is_snapshot`, when sent.
    pub is_snapshot: Option<bool>,
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
    check_head(head)
}

/// The rules on top of JSON validity: a known type, and the fields its handling relies on.
fn check_head(head: json_scan::Head<'_>) -> Result<Decoded<'_>, Reject> {
    let json_scan::Head { kind, symbol_id, sequence, uuid, time_exchange, is_snapshot } = head;
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
    Ok(Decoded { data_type, symbol_id, sequence, uuid, time_exchange, is_snapshot })
}

/// Nanoseconds since the Unix epoch of a CoinAPI timestamp (`2017-03-18T22:42:21.3763342Z`:
/// UTC, 0 to 9 fractional digits, `Z`). `None` for anything else: a trade whose time cannot be
/// read is still written, it only cannot bound a recovery window.
pub fn parse_timestamp_ns(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |n, &c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=12).contains(&month) || !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let rest = &b[19..];
    let (frac, tail) = match rest.first() {
        Some(b'.') => {
            let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                return None;
            }
            (&rest[1..=digits], &rest[1 + digits..])
        }
        _ => (&rest[..0], rest),
    };
    if tail != b"Z" {
        return None;
    }
    let mut nanos = frac.iter().fold(0i64, |n, &c| n * 10 + i64::from(c - b'0'));
    for _ in frac.len()..9 {
        nanos *= 10;
    }
    // Days from the civil date (Howard Hinnant's algorithm), proleptic Gregorian.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
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
        #[serde(default, borrow, deserialize_with = "optional_cow")]
        time_exchange: Option<Cow<'a, str>>,
        #[serde(default)]
        is_snapshot: Option<bool>,
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
        check_head(json_scan::Head {
            kind: head.kind,
            symbol_id: head.symbol_id,
            sequence: head.sequence,
            uuid: head.uuid,
            time_exchange: head.time_exchange,
            is_snapshot: head.is_snapshot,
        })
    }

    const TRADE: &str = r#"{"type":"trade","symbol_id":"BITSTAMP_SPOT_BTC_USD","sequence":2323346,"time_exchange":"2013-09-28T22:40:50.0000000Z","time_coinapi":"2017-03-18T22:42:21.3763342Z","uuid":"770C7A3B-7258-4441-8182-83740F3E2457","price":770.000000000,"size":0.0189885151556305438646080756,"taker_side":"BUY"}"#;

    /// Proves timestamps parse to the nanosecond, with any number of fractional digits, and
    /// that anything else is refused rather than misread.
    #[test]
    fn timestamps_parse_exactly() {
        assert_eq!(parse_timestamp_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp_ns("2017-03-18T22:42:21.3763342Z"), Some(1_489_876_941_376_334_200));
        assert_eq!(parse_timestamp_ns("2017-03-18T22:42:21.376334201Z"), Some(1_489_876_941_376_334_201));
        assert_eq!(parse_timestamp_ns("2024-02-29T23:59:59.5Z"), Some(1_709_251_199_500_000_000));
        assert_eq!(parse_timestamp_ns("1969-12-31T23:59:59.9Z"), Some(-100_000_000));
        for bad in [
            "",
            "2017-03-18 22:42:21Z",
            "2017-03-18T22:42:21",
            "2017-13-18T22:42:21Z",
            "2017-03-18T22:42:21.Z",
            "2017-03-18T22:42:21.1234567890Z",
            "2017-03-18T22:42:21.3+01:00",
            "２017-03-18T22:42:21Z",
        ] {
            assert_eq!(parse_timestamp_ns(bad), None, "{bad}");
        }
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
        // A hostile server's million unclosed levels: refused at level 128, no stack overflow.
        let hostile = format!(r#"{{"type":"trade","symbol_id":"A","x":{}"#, "[".repeat(1_000_000));
        match decode(&hostile) {
            Err(Reject::Malformed(why)) => assert!(why.starts_with("JSON nested deeper than 128 at byte"), "{why}"),
            other => panic!("a million levels: {other:?}"),
        }

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
}
