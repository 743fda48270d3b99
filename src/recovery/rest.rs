//! The blocking REST client used by the recovery thread: one ureq agent with explicit timeouts
//! and a body-size limit, the request for each recovery key, and the classification of every
//! answer into a `FetchOutcome` the pure recovery policy understands.
//!
//! Records are kept as raw JSON text (`RawValue`), so recovered prices reach stdout exactly as
//! CoinAPI wrote them, like the WebSocket path.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::config::limits::{REST_BODY_MAX_BYTES, REST_CONNECT_TIMEOUT_MAX};
use crate::config::tls::{self, Roots};
use crate::config::{ApiKey, RecoveryConfig};
use crate::lanes::RecoveryKey;
use crate::output::ndjson::TimestampFormatter;
use crate::recovery::queue::{self, FetchOutcome};
use crate::wire::{self, DataType};

/// Period requested when an `ohlcv` stream has a gap (the stream's own period is not part of
/// CoinAPI's sequence key).
pub const OHLCV_PERIOD: &str = "1MIN";

/// One answer, classified, with the records when it was a 200.
#[derive(Debug)]
pub struct RestAnswer {
    pub outcome: FetchOutcome,
    /// The records, oldest first (CoinAPI's `latest` pages are newest first).
    pub records: Vec<Box<RawValue>>,
    /// `X-RateLimit-Remaining` (may be negative) and `X-RateLimit-Request-Cost`, when sent.
    pub rate_limit_remaining: Option<i64>,
    pub request_cost: Option<u64>,
    /// A history page: the exchange time of its last record, and where the page ended.
    pub last_time_ns: Option<i64>,
    pub page_end_ns: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct RestClient {
    agent: ureq::Agent,
    base: String,
    key: ApiKey,
    trades_limit: u32,
    /// `--recovery-timeout`: the whole request, for the error that names it.
    timeout: Duration,
    /// The REST host, for naming it when its TLS handshake is refused.
    host: String,
    roots: Roots,
}

impl RestClient {
    pub fn new(config: &RecoveryConfig) -> RestClient {
        let timeout = config.timeout;
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(REST_CONNECT_TIMEOUT_MAX)))
            .timeout_per_read(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("coinfeed/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls_config(&config.roots));
        // A proxy from the environment must not capture loopback traffic (the simulator).
        if rest_is_loopback(&config.rest_url) {
            builder = builder.proxy(None);
        }
        RestClient {
            agent: builder.build().new_agent(),
            base: config.rest_url.clone(),
            key: config.api_key.clone(),
            trades_limit: config.trades_limit,
            timeout,
            host: config
                .rest_url
                .parse::<tungstenite::http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_string))
                .unwrap_or_default(),
            roots: config.roots.clone(),
        }
    }

    /// A handle whose `shutdown()` interrupts a request in flight (used on Ctrl-C).
    pub fn agent(&self) -> ureq::Agent {
        self.agent.clone()
    }

    /// Trades asked for per request (`--recovery-trades-limit`).
    pub fn trades_limit(&self) -> u32 {
        self.trades_limit
    }

    /// The path and query that recovers `key`: a trade window's next history page, or a
    /// stream's current state.
    pub fn path(&self, key: &RecoveryKey) -> String {
        let s = encode_path_segment(&key.symbol_id);
        if let (DataType::Trade, Some(w)) = (key.data_type, &key.window) {
            let mut f = TimestampFormatter::default();
            let start = f.format(i128::from(w.page_from_ns)).to_string();
            let end = f.format(i128::from(queue::page_end(w, w.page_from_ns))).to_string();
            return format!("/v1/trades/{s}/history?time_start={start}&time_end={end}&limit={}", self.trades_limit);
        }
        match key.data_type {
            DataType::Trade => format!("/v1/trades/{s}/latest?limit={}", self.trades_limit),
            DataType::Quote => format!("/v1/quotes/{s}/current"),
            DataType::Ohlcv => format!("/v1/ohlcv/{s}/latest?period_id={OHLCV_PERIOD}&limit=1"),
            DataType::Book5 => format!("/v1/orderbooks/{s}/current?limit_levels=5"),
            DataType::Book20 => format!("/v1/orderbooks/{s}/current?limit_levels=20"),
            DataType::Book50 => format!("/v1/orderbooks/{s}/current?limit_levels=50"),
            DataType::Book | DataType::BookL3 | DataType::Exrate => format!("/v1/orderbooks/{s}/current"),
        }
    }

    pub fn fetch(&self, key: &RecoveryKey) -> RestAnswer {
        let url = format!("{}{}", self.base, self.path(key));
        let mut answer = RestAnswer {
            outcome: FetchOutcome::NoData,
            records: Vec::new(),
            rate_limit_remaining: None,
            request_cost: None,
            last_time_ns: None,
            page_end_ns: key.window.as_ref().map(|w| queue::page_end(w, w.page_from_ns)),
        };
        let mut response = match self
            .agent
            .get(&url)
            .header("X-CoinAPI-Key", self.key.expose())
            .header("Accept", "application/json")
            .call()
        {
            Ok(r) => r,
            Err(e) => {
                // A refused TLS handshake is a failed attempt like any other (counted against
                // --recovery-max-attempts), reported in the same words as the WebSocket's.
                answer.outcome = FetchOutcome::Transient(self.describe(&e, "request failed"));
                return answer;
            }
        };
        let header =
            |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string());
        answer.rate_limit_remaining = header("x-ratelimit-remaining").and_then(|v| v.parse().ok());
        answer.request_cost = header("x-ratelimit-request-cost").and_then(|v| v.parse().ok());
        let retry_after = header("retry-after")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| Duration::from_secs_f64(v.min(86_400.0)));
        let status = response.status().as_u16();
        // Every body is read (within the limit) so the connection can return to the pool.
        let body = response.body_mut().with_config().limit(REST_BODY_MAX_BYTES).read_to_vec();
        answer.outcome = match (status, body) {
            (200, Ok(body)) => match parse_records(&body) {
                Ok(mut records) => {
                    if key.window.is_some() {
                        // History is oldest first already.
                        answer.last_time_ns = last_time_ns(&records);
                    } else if key.data_type == DataType::Trade {
                        records.reverse();
                    }
                    let n = records.len() as u64;
                    answer.records = records;
                    FetchOutcome::Ok { records: n }
                }
                Err(e) => FetchOutcome::Transient(format!("undecodable body: {e}")),
            },
            (200, Err(e)) => FetchOutcome::Transient(self.describe(&e, "reading the body")),
            (550, _) => FetchOutcome::NoData,
            // `max_redirects(0)`: the key goes to the configured host only. The target's host
            // is named (never its path or query, which could echo anything back).
            (300..=399, _) => FetchOutcome::Refused(format!(
                "redirect not followed (HTTP {status} to {})",
                location_host(response.headers().get("location").and_then(|v| v.to_str().ok()))
            )),
            (429, _) => FetchOutcome::RateLimited { retry_after },
            (401 | 403, body) => FetchOutcome::Unauthorized(format!(
                "HTTP {status}{}",
                body.ok().and_then(|b| error_message(&b)).map(|m| format!(": {m}")).unwrap_or_default()
            )),
            (s, body) => FetchOutcome::Transient(format!(
                "HTTP {s}{}",
                body.ok().and_then(|b| error_message(&b)).map(|m| format!(": {m}")).unwrap_or_default()
            )),
        };
        answer
    }
}

impl RestClient {
    /// A ureq error as a line saying which limit it hit.
    fn describe(&self, e: &ureq::Error, doing: &str) -> String {
        match e {
            ureq::Error::Timeout(_) => format!(
                "REST answer took longer than the {:.1} s request deadline (--recovery-timeout)",
                self.timeout.as_secs_f64()
            ),
            ureq::Error::BodyExceedsLimit(limit) => format!("REST body exceeds {limit} bytes"),
            other => match rustls_error(other) {
                Some(tls_error) => format!("{doing}: {}", tls::explain(tls_error, &self.host, &self.roots)),
                None => format!("{doing}: {other}"),
            },
        }
    }
}

/// The host a redirect points at, for a log line: `host elsewhere.example`, or what it lacks.
fn location_host(location: Option<&str>) -> String {
    let Some(location) = location else {
        return "no Location".to_string();
    };
    match location.parse::<tungstenite::http::Uri>().ok().and_then(|u| u.host().map(str::to_string)) {
        Some(host) => format!("host {}", host.chars().take(100).collect::<String>()),
        None => "a relative Location (same host)".to_string(),
    }
}

/// Deepest nesting accepted in a REST body, as for frames (`wire::json_scan`) and serde_json's
/// own limit. serde_json skips a `RawValue` without that limit (iteratively: no stack overflow,
/// but a record nested a million deep would pass), so the body is measured first.
const JSON_DEPTH_MAX: usize = 128;

/// Where `body` first nests deeper than `max` (brackets outside strings), if it does. One pass,
/// no allocation.
fn nesting_beyond(body: &[u8], max: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// A JSON array of records, or one record object. Public for the fuzz targets (`fuzz/`), like
/// `error_message` and `last_time_ns`: the pure part of reading every endpoint's body.
pub fn parse_records(body: &[u8]) -> Result<Vec<Box<RawValue>>, String> {
    if let Some(at) = nesting_beyond(body, JSON_DEPTH_MAX) {
        return Err(format!("JSON nested deeper than {JSON_DEPTH_MAX} at byte {at}"));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let records: Vec<Box<RawValue>> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            if let Some(bad) = records.iter().find(|r| !r.get().starts_with('{')) {
                return Err(format!("array element is not an object: {}", &bad.get()[..bad.get().len().min(40)]));
            }
            Ok(records)
        }
        Some(b'{') => Ok(vec![serde_json::from_slice::<Box<RawValue>>(body).map_err(|e| e.to_string())?]),
        _ => Err("not a JSON object or array".to_string()),
    }
}

/// The exchange time of a history page's last record, which the next page starts from: its own
/// top-level `time_exchange`, unescaped. Read with serde, not `wire::scan_field`: the scan takes
/// the first `"time_exchange"` key anywhere, so a nested object's (a `last_trade`) or an escaped
/// value would move the page boundary (found by the `rest_body` fuzz target).
pub fn last_time_ns(records: &[Box<RawValue>]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Times<'a> {
        #[serde(borrow)]
        time_exchange: Option<Cow<'a, str>>,
    }
    let t: Times<'_> = serde_json::from_str(records.last()?.get()).ok()?;
    wire::parse_timestamp_ns(&t.time_exchange?)
}

/// CoinAPI's error body: `{"error": "..."}` (some answers use `message`).
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let m = v.get("error").or_else(|| v.get("message"))?.as_str()?;
    Some(m.chars().take(200).collect())
}

/// ureq's TLS: rustls with ring (passed explicitly, as for the WebSocket) and the same roots.
/// ureq builds its rustls config with `rustls::ALL_VERSIONS`, TLS 1.3 and 1.2 (a unit test of
/// `config::tls` holds that it is no more), so the floor is TLS 1.2 here too.
fn tls_config(roots: &Roots) -> ureq::tls::TlsConfig {
    let root_certs = match roots {
        Roots::BuiltIn => ureq::tls::RootCerts::WebPki,
        Roots::CaFile { certs, .. } => ureq::tls::RootCerts::Specific(Arc::new(
            certs.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect(),
        )),
    };
    ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(root_certs)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build()
}

/// The rustls error behind a failed request: ureq hands it back directly or inside an
/// `io::Error` (the handshake runs through its transport's IO).
fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => tls::find_rustls_error(io),
        _ => None,
    }
}

fn rest_is_loopback(url: &str) -> bool {
    url.parse::<tungstenite::http::Uri>().ok().and_then(|u| u.host().map(crate::config::is_loopback)).unwrap_or(false)
}

/// Percent-encodes everything but unreserved characters: symbol ids from prefix subscriptions
/// come from the server and are not validated like the ones typed on the command line.
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_exact_text() {
        let body = br#"[{"uuid":"a","price":0.0189885151556305438646080756},{"uuid":"b","price":1e-8}]"#;
        let r = parse_records(body).expect("array");
        assert_eq!(r[0].get(), r#"{"uuid":"a","price":0.0189885151556305438646080756}"#);
        assert_eq!(r[1].get(), r#"{"uuid":"b","price":1e-8}"#);
        assert_eq!(
            parse_records(br#" {"ask_price":770.000000000}"#).expect("object")[0].get(),
            r#"{"ask_price":770.000000000}"#
        );
        assert!(parse_records(b"<html>").is_err());
        assert!(parse_records(b"[1,2]").is_err());
        assert!(parse_records(b"[{\"a\":1}").is_err());
    }

    /// Proves a history page ends at its last record's own `time_exchange`: not a nested
    /// object's, written before it, and not lost to an escape (`rest_body` fuzz target's finds).
    #[test]
    fn a_page_ends_at_its_last_records_own_time() {
        let last = |body: &str| last_time_ns(&parse_records(body.as_bytes()).expect("records"));
        let nested = r#"[{"last":{"time_exchange":"2020-01-01T00:00:00Z"},"time_exchange":"2021-01-01T00:00:00Z"}]"#;
        assert_eq!(last(nested), Some(1_609_459_200_000_000_000));
        assert_eq!(last(r#"[{"time_exchange":"2021-01-01T00:00:00\u005a"}]"#), Some(1_609_459_200_000_000_000));
        assert_eq!(
            last(r#"[{"a":1},{"time_exchange":"2021-01-01T00:00:00Z","x":[1]}]"#),
            Some(1_609_459_200_000_000_000)
        );
        assert_eq!(last(r#"[{"time_exchange":"2021-01-01T00:00:00Z"},{"uuid":"u"}]"#), None);
        assert_eq!(last(r#"[{"time_exchange":7}]"#), None);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for open in [b'[', b'{'] {
            let mut body = vec![open; 1_000_000];
            if open == b'{' {
                body = b"{\"a\":".repeat(200_000);
            }
            let e = parse_records(&body).expect_err("a million levels");
            assert!(e.starts_with("JSON nested deeper than 128"), "{e}");
            assert!(error_message(&body).is_none());
        }
        // Inside one record, too: the raw value is checked to the same depth.
        let inner = format!("[{{\"a\":{}1{}}}]", "[".repeat(500_000), "]".repeat(500_000));
        let e = parse_records(inner.as_bytes()).expect_err("deep record");
        assert_eq!(e, "JSON nested deeper than 128 at byte 132");
        // Brackets inside strings are text, and 128 levels are fine.
        let ok = format!("[{{\"a\":\"[[[\\\"{{{{\",\"b\":{}1{}}}]", "[".repeat(126), "]".repeat(126));
        assert_eq!(parse_records(ok.as_bytes()).expect("128 levels").len(), 1);
        assert_eq!(location_host(Some("https://elsewhere.example:8443/v1/x?apikey=K")), "host elsewhere.example");
        assert_eq!(location_host(Some("/v1/other")), "a relative Location (same host)");
        assert_eq!(location_host(None), "no Location");
    }

    #[test]
    fn error_bodies_and_paths() {
        assert_eq!(error_message(br#"{"error":"Invalid API key"}"#).as_deref(), Some("Invalid API key"));
        assert_eq!(error_message(br#"{"message":"nope"}"#).as_deref(), Some("nope"));
        assert_eq!(encode_path_segment("OKEX_FTS_ETH_USD_190927"), "OKEX_FTS_ETH_USD_190927");
        assert_eq!(encode_path_segment("A/B C"), "A%2FB%20C");
    }
}
