//! End-to-end tests of the simulator over 127.0.0.1 with a bare tungstenite client and a raw
//! HTTP/1.1 client: every check goes through real sockets, every wait has a deadline.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::{Message, WebSocket};

use super::*;

mod books;
mod store;

/// Upper bound of every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(5);
const KEY: &str = "test-key-123";

fn start(config: SimConfig) -> Sim {
    Sim::start(config).expect("sim starts on loopback")
}

fn flood(max_messages: u64) -> SimConfig {
    SimConfig { rate_per_sec: 0, max_messages: Some(max_messages), ..SimConfig::default() }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn msg_type(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

fn is_data(v: &Value) -> bool {
    !matches!(msg_type(v), "hearbeat" | "heartbeat" | "error" | "reconnect" | "")
}

#[derive(Debug)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    Close,
    Timeout,
    Error(tungstenite::Error),
}

struct Client {
    ws: WebSocket<TcpStream>,
}

type ConnectResult = Result<
    (WebSocket<TcpStream>, tungstenite::handshake::client::Response),
    tungstenite::HandshakeError<tungstenite::ClientHandshake<TcpStream>>,
>;

// The error type is tungstenite's handshake error, returned as is for the tests to inspect.
#[allow(clippy::result_large_err)]
fn try_connect(sim: &Sim) -> ConnectResult {
    let tcp = TcpStream::connect(sim.ws_addr()).expect("tcp connect");
    tcp.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
    tcp.set_write_timeout(Some(DEADLINE)).expect("write timeout");
    let uri = sim.ws_url().parse().expect("ws url is a uri");
    let req = tungstenite::ClientRequestBuilder::new(uri).with_header("X-CoinAPI-Key", KEY);
    let mut attempt = tungstenite::client::client(req, tcp);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match attempt {
            Err(tungstenite::HandshakeError::Interrupted(mid)) if Instant::now() < deadline => {
                attempt = mid.handshake();
            }
            other => return other,
        }
    }
}

impl Client {
    fn connect(sim: &Sim) -> Client {
        let (ws, _) = try_connect(sim).expect("upgrade succeeds");
        Client { ws }
    }

    fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("client send");
    }

    fn recv(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Got::Text(t.to_string()),
                Ok(Message::Binary(b)) => return Got::Binary(b.to_vec()),
                Ok(Message::Close(_)) => return Got::Close,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    if Instant::now() >= deadline {
                        return Got::Timeout;
                    }
                }
                Err(e) => return Got::Error(e),
            }
        }
    }

    fn text(&mut self) -> String {
        match self.recv(DEADLINE) {
            Got::Text(t) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next `n` data messages (heartbeats skipped), exact text.
    fn data(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let t = self.text();
            if is_data(&json(&t)) {
                out.push(t);
            }
        }
        out
    }
}

/// Sequences per (type, symbol_id) start at 1 and increase by exactly 1.
fn check_sequences(frames: &[String]) -> BTreeMap<(String, String), u64> {
    let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
    for f in frames {
        let v = json(f);
        let Some(seq) = v["sequence"].as_u64() else {
            continue;
        };
        let key = (msg_type(&v).to_string(), v["symbol_id"].as_str().unwrap_or("").to_string());
        let expected = last.get(&key).map_or(1, |s| s + 1);
        assert_eq!(seq, expected, "stream {key:?} in {f}");
        last.insert(key, seq);
    }
    last
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn has(events: &[SimEvent], f: impl Fn(&EventKind) -> bool) -> bool {
    events.iter().any(|e| f(&e.kind))
}

/// The hello's data types and symbol filter (`$` exact, prefix otherwise) decide the streams;
/// each stream's sequence starts at 1; the upgrade headers and the hello text are logged.
#[test]
fn hello_selects_streams_and_sequences_start_at_one() {
    let sim = start(SimConfig {
        symbols: ["BITSTAMP_SPOT_BTC_USD", "BITSTAMP_SPOT_BTC_USDT", "COINBASE_SPOT_ETH_USD", "KRAKEN_SPOT_XRP_EUR"]
            .map(String::from)
            .to_vec(),
        ..flood(400)
    });
    let mut c = Client::connect(&sim);
    let hello = r#"{"type":"hello","apikey":"test-key-123","heartbeat":false,"subscribe_data_type":["trade","quote"],"subscribe_filter_symbol_id":["BITSTAMP_SPOT_BTC_USD$","COINBASE_"]}"#;
    c.send(hello);
    let frames = c.data(400);
    let streams: HashSet<(String, String)> = check_sequences(&frames).into_keys().collect();
    let expected: HashSet<(String, String)> = [
        ("trade", "BITSTAMP_SPOT_BTC_USD"),
        ("quote", "BITSTAMP_SPOT_BTC_USD"),
        ("trade", "COINBASE_SPOT_ETH_USD"),
        ("quote", "COINBASE_SPOT_ETH_USD"),
    ]
    .iter()
    .map(|(t, s)| (t.to_string(), s.to_string()))
    .collect();
    assert_eq!(streams, expected);
    let events = sim.events();
    assert!(has(&events, |k| matches!(k, EventKind::Hello { text } if text == hello)));
    assert!(has(&events, |k| matches!(k,
        EventKind::WsConnected { path, headers }
            if path == "/v1/" && headers.iter().any(|(n, v)| n == "x-coinapi-key" && v == KEY))));
}

/// An empty filter means every symbol; subscribe adds a stream (starting at sequence 1),
/// unsubscribe removes one.
#[test]
fn subscribe_and_unsubscribe_change_the_scope() {
    let sim = start(SimConfig { rate_per_sec: 2000, ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","subscribe_data_type":["trade"],"subscribe_filter_symbol_id":[]}"#);
    let symbols: HashSet<String> =
        c.data(50).iter().map(|f| json(f)["symbol_id"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(symbols.len(), DEFAULT_SYMBOLS.len(), "{symbols:?}");

    c.send(
        r#"{"type":"subscribe","subscribe_data_type":["quote"],"subscribe_filter_symbol_id":["KRAKEN_SPOT_XRP_EUR$"]}"#,
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no quote after subscribe");
        let v = json(&c.text());
        if msg_type(&v) == "quote" {
            assert_eq!(v["symbol_id"], "KRAKEN_SPOT_XRP_EUR");
            assert_eq!(v["sequence"], 1);
            break;
        }
    }

    c.send(r#"{"type":"unsubscribe","subscribe_data_type":["trade"]}"#);
    // Trades already in flight may still arrive; then only quotes.
    let mut quotes_in_a_row = 0;
    while quotes_in_a_row < 20 {
        assert!(Instant::now() < deadline, "trades continue after unsubscribe");
        let v = json(&c.text());
        if msg_type(&v) == "quote" {
            quotes_in_a_row += 1;
        } else {
            quotes_in_a_row = 0;
        }
    }
}

/// `{"type":"hearbeat"}` comes after each silence of `heartbeat_after` when asked, never when
/// not asked.
#[test]
fn heartbeat_only_when_asked() {
    let sim = start(SimConfig { heartbeat_after: Duration::from_millis(100), ..SimConfig::default() });
    let mut asked = Client::connect(&sim);
    asked.send(r#"{"type":"hello","apikey":"k","heartbeat":true,"subscribe_data_type":["trade"],"subscribe_filter_symbol_id":["NO_SUCH_SYMBOL$"]}"#);
    let t0 = Instant::now();
    assert_eq!(asked.text(), r#"{"type":"hearbeat"}"#);
    assert_eq!(asked.text(), r#"{"type":"hearbeat"}"#);
    assert!(t0.elapsed() >= Duration::from_millis(180), "{:?}", t0.elapsed());

    let mut silent = Client::connect(&sim);
    silent.send(r#"{"type":"hello","apikey":"k","heartbeat":false,"subscribe_data_type":["trade"],"subscribe_filter_symbol_id":["NO_SUCH_SYMBOL$"]}"#);
    match silent.recv(Duration::from_millis(500)) {
        Got::Timeout => {}
        other => panic!("unexpected frame without heartbeat: {other:?}"),
    }
}

/// A Gap fault skips sequence numbers on the next data message: injected before any
/// connection it applies to the next one; injected live it shows as exactly one jump.
#[test]
fn gap_fault_skips_sequence_numbers() {
    let sim = start(SimConfig { rate_per_sec: 1000, ..SimConfig::default() });
    sim.inject(WsFault::Gap { skip: 5 });
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","subscribe_data_type":["trade"],"subscribe_filter_symbol_id":["BITSTAMP_SPOT_BTC_USD$"]}"#);
    let first = json(&c.data(1)[0]);
    assert_eq!(first["sequence"], 6);

    let before = c.data(5);
    sim.inject(WsFault::Gap { skip: 3 });
    let after = c.data(60);
    let seqs: Vec<u64> = before.iter().chain(&after).filter_map(|f| json(f)["sequence"].as_u64()).collect();
    let jumps: Vec<u64> = seqs.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(jumps.iter().filter(|j| **j == 4).count(), 1, "{seqs:?}");
    assert!(jumps.iter().all(|j| *j == 1 || *j == 4), "{seqs:?}");
    assert!(has(&sim.events(), |k| matches!(k,
        EventKind::FaultApplied { fault } if fault == "Gap { skip: 3 }")));
}

/// The sim's Ping reaches the client and the client's Pong is logged with the same payload.
#[test]
fn ping_fault_logs_pong_payload() {
    let sim = start(SimConfig::default());
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","heartbeat":true,"subscribe_data_type":[]}"#);
    sim.inject(WsFault::Ping(b"sim-ping-1".to_vec()));
    let deadline = Instant::now() + DEADLINE;
    // tungstenite answers the ping while we keep reading.
    while !has(&sim.events(), |k| matches!(k, EventKind::Pong { payload } if payload == b"sim-ping-1")) {
        assert!(Instant::now() < deadline, "no pong logged");
        let _ = c.recv(Duration::from_millis(20));
    }
}

/// After max_messages data messages only heartbeats follow, and data_sent counts exactly them.
#[test]
fn max_messages_then_only_heartbeats() {
    let sim = start(SimConfig { heartbeat_after: Duration::from_millis(50), ..flood(50) });
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","heartbeat":true,"subscribe_data_type":["trade","quote"]}"#);
    let mut data = 0;
    let mut heartbeats = 0;
    while heartbeats < 3 {
        let v = json(&c.text());
        if msg_type(&v) == "hearbeat" {
            heartbeats += 1;
        } else {
            assert_eq!(heartbeats, 0, "data after a heartbeat: {v}");
            data += 1;
        }
    }
    assert_eq!(data, 50);
    assert_eq!(sim.data_sent(), 50);
}

/// Every data type is generated with its CoinAPI shape, and the recorded frames are byte for
/// byte what the client received, in order.
#[test]
fn record_sent_matches_received_and_shapes_hold() {
    let sim = start(SimConfig { record_sent: true, book_levels: 8, ..flood(600) });
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","subscribe_data_type":["trade","quote","book","book5","book20","book50","book_l3","ohlcv","exrate"]}"#);
    let frames = c.data(600);
    wait_until("data_sent to reach 600", || sim.data_sent() == 600);
    assert_eq!(sim.sent_frames(), frames);
    check_sequences(&frames);

    let mut seen_types = HashSet::new();
    let mut first_of_stream = HashSet::new();
    for f in &frames {
        let v = json(f);
        let t = msg_type(&v).to_string();
        let sym = v["symbol_id"].as_str().unwrap_or("").to_string();
        let first = first_of_stream.insert((t.clone(), sym.clone()));
        let keys: Vec<&str> = v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        let expected: &[&str] = match t.as_str() {
            "trade" => &[
                "type",
                "symbol_id",
                "sequence",
                "time_exchange",
                "time_coinapi",
                "uuid",
                "price",
                "size",
                "taker_side",
            ],
            "quote" => &[
                "type",
                "symbol_id",
                "sequence",
                "time_exchange",
                "time_coinapi",
                "ask_price",
                "ask_size",
                "bid_price",
                "bid_size",
            ],
            "book" | "book5" | "book20" | "book50" | "book_l3" => {
                &["type", "symbol_id", "sequence", "time_exchange", "time_coinapi", "is_snapshot", "asks", "bids"]
            }
            "ohlcv" => &[
                "type",
                "symbol_id",
                "sequence",
                "period_id",
                "time_period_start",
                "time_period_end",
                "time_open",
                "time_close",
                "price_open",
                "price_high",
                "price_low",
                "price_close",
                "volume_traded",
                "trades_count",
            ],
            "exrate" => &["type", "asset_id_base", "asset_id_quote", "rate_type", "time", "rate"],
            other => panic!("unexpected type {other}"),
        };
        // serde_json's map is sorted, so compare sets here and order on the raw text below.
        let mut sorted = expected.to_vec();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "{f}");
        let positions: Vec<usize> =
            expected.iter().map(|k| f.find(&format!("\"{k}\":")).unwrap_or(usize::MAX)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "field order in {f}");
        match t.as_str() {
            "book" | "book_l3" if first => assert_eq!(v["is_snapshot"], true, "{f}"),
            "book5" => assert!(v["asks"].as_array().map_or(0, Vec::len) <= 5),
            "book20" | "book50" => assert_eq!(v["asks"].as_array().map_or(0, Vec::len), 8),
            "book_l3" => {
                for e in v["asks"].as_array().into_iter().flatten() {
                    assert!(e["id"].is_string() && e["update_type"].is_string(), "{f}");
                }
            }
            _ => {}
        }
        seen_types.insert(t);
    }
    assert_eq!(seen_types.len(), 9, "{seen_types:?}");
}

/// Stall sends nothing at all (not even heartbeats) while still logging client text; Resume
/// restarts the data.
#[test]
fn stall_sends_nothing_until_resume() {
    let sim =
        start(SimConfig { rate_per_sec: 500, heartbeat_after: Duration::from_millis(50), ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","heartbeat":true,"subscribe_data_type":["trade"]}"#);
    c.data(5);
    sim.inject(WsFault::Stall);
    assert!(
        sim.wait_for(DEADLINE, |ev| has(ev, |k| matches!(k, EventKind::FaultApplied { fault } if fault == "Stall")))
    );
    // Frames already in flight may arrive; then 400 ms of silence (8 heartbeat periods).
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "stream never went silent");
        if let Got::Timeout = c.recv(Duration::from_millis(400)) {
            break;
        }
    }
    c.send("still here");
    assert!(
        sim.wait_for(DEADLINE, |ev| has(ev, |k| matches!(k, EventKind::ClientText { text } if text == "still here")))
    );
    sim.inject(WsFault::Resume);
    c.data(5);
}

/// RefuseUpgrade answers one upgrade with the status and retry header; the next succeeds.
#[test]
fn refuse_upgrade_once_with_retry_header() {
    let sim = start(SimConfig::default());
    sim.inject(WsFault::RefuseUpgrade { status: 429, retry_after_ms: Some(1500) });
    match try_connect(&sim) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status().as_u16(), 429);
            assert_eq!(
                resp.headers().get("X-WsRequestsPerIpLimit-RetryAfterMs").and_then(|v| v.to_str().ok()),
                Some("1500")
            );
        }
        Err(e) => panic!("unexpected upgrade error {e:?}"),
        Ok(_) => panic!("upgrade was not refused"),
    }
    assert!(sim.wait_for(DEADLINE, |ev| has(ev, |k| *k == EventKind::UpgradeRefused { status: 429 })));
    let _ok = Client::connect(&sim);
}

/// Error sends the error message then closes cleanly; the close reason names the fault.
#[test]
fn error_fault_sends_message_then_closes() {
    let sim = start(SimConfig::default());
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","subscribe_data_type":["quote"]}"#);
    c.data(2);
    sim.inject(WsFault::Error { message: "Invalid API key".to_string() });
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline);
        let v = json(&c.text());
        if msg_type(&v) == "error" {
            assert_eq!(v["message"], "Invalid API key");
            break;
        }
    }
    assert!(matches!(c.recv(DEADLINE), Got::Close));
    // tungstenite sends the close reply on the next read.
    let _ = c.recv(Duration::from_millis(100));
    assert!(sim.wait_for(DEADLINE, |ev| has(ev, |k| *k == EventKind::WsClosed { reason: "fault: error".to_string() })));
}

/// Text, Binary, ReconnectNotice, DuplicateTrade and Oversized arrive as specified, in order
/// with the data.
#[test]
fn frame_faults_arrive_as_specified() {
    let sim = start(SimConfig { rate_per_sec: 1000, ..SimConfig::default() });
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","subscribe_data_type":["trade"],"subscribe_filter_symbol_id":["COINBASE_SPOT_ETH_USD$"]}"#);
    let warmup = c.data(3);
    sim.inject(WsFault::DuplicateTrade);
    sim.inject(WsFault::Text("[1,2,{\"type\":".to_string()));
    sim.inject(WsFault::Binary(vec![0, 159, 146, 150]));
    sim.inject(WsFault::ReconnectNotice { within_seconds: 30 });
    sim.inject(WsFault::Oversized { bytes: 200_000 });
    let mut prev_trade: Option<Value> = warmup.last().map(|t| json(t));
    let mut dup_seen = false;
    let deadline = Instant::now() + DEADLINE;
    let mut pending = ["text", "binary", "reconnect", "oversized"].to_vec();
    while !pending.is_empty() || !dup_seen {
        assert!(Instant::now() < deadline, "missing {pending:?} dup={dup_seen}");
        match c.recv(DEADLINE) {
            Got::Text(t) if t == "[1,2,{\"type\":" => {
                assert_eq!(pending.first(), Some(&"text"));
                pending.remove(0);
            }
            Got::Binary(b) => {
                assert_eq!(b, [0, 159, 146, 150]);
                assert_eq!(pending.first(), Some(&"binary"));
                pending.remove(0);
            }
            Got::Text(t) => {
                let v = json(&t);
                match msg_type(&v) {
                    "reconnect" => {
                        assert_eq!(v["within_seconds"], 30);
                        let before = v["before_time"].as_str().unwrap_or("");
                        assert_eq!(before.len(), 28, "{before}");
                        assert!(before.ends_with('Z'));
                        assert_eq!(pending.first(), Some(&"reconnect"));
                        pending.remove(0);
                    }
                    "trade" if t.len() > 100_000 => {
                        assert!((199_000..=201_000).contains(&t.len()), "{}", t.len());
                        assert!(v["padding"].is_string());
                        assert_eq!(pending.first(), Some(&"oversized"));
                        pending.remove(0);
                        let p = prev_trade.as_ref().expect("a trade before");
                        assert_eq!(v["sequence"].as_u64(), p["sequence"].as_u64().map(|s| s + 1));
                        prev_trade = Some(v);
                    }
                    "trade" => {
                        if let Some(p) = &prev_trade {
                            assert_eq!(v["sequence"].as_u64(), p["sequence"].as_u64().map(|s| s + 1));
                            if v["uuid"] == p["uuid"] {
                                dup_seen = true;
                            }
                        }
                        prev_trade = Some(v);
                        continue;
                    }
                    other => panic!("unexpected {other}: {t}"),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// AbruptClose drops TCP without a close frame; Close performs the closing handshake.
#[test]
fn abrupt_and_clean_close() {
    let sim = start(SimConfig::default());
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","subscribe_data_type":["trade"]}"#);
    c.data(2);
    sim.inject(WsFault::AbruptClose);
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline);
        match c.recv(DEADLINE) {
            Got::Text(_) => {}
            Got::Error(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ))
            | Got::Error(tungstenite::Error::Io(_)) => break,
            other => panic!("expected an abrupt end, got {other:?}"),
        }
    }

    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","subscribe_data_type":["trade"]}"#);
    c.data(2);
    sim.inject(WsFault::Close);
    loop {
        assert!(Instant::now() < deadline);
        match c.recv(DEADLINE) {
            Got::Text(_) => {}
            Got::Close => break,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    let _ = c.recv(Duration::from_millis(100));
    assert!(sim.wait_for(DEADLINE, |ev| has(ev, |k| *k == EventKind::WsClosed { reason: "fault: close".to_string() })));
}

/// A minimal HTTP/1.1 client over one keep-alive connection.
struct Http {
    tcp: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Http {
    fn connect(sim: &Sim) -> Http {
        let tcp = TcpStream::connect(sim.rest_addr()).expect("rest connect");
        tcp.set_read_timeout(Some(DEADLINE)).expect("timeout");
        Http { tcp, buf: Vec::new() }
    }

    fn get(&mut self, path: &str, key: Option<&str>) -> Resp {
        self.request(path, key, "")
    }

    fn request(&mut self, path: &str, key: Option<&str>, extra_headers: &str) -> Resp {
        let key = key.map_or(String::new(), |k| format!("X-CoinAPI-Key: {k}\r\n"));
        let req = format!("GET {path} HTTP/1.1\r\nHost: sim\r\nAccept: application/json\r\n{key}{extra_headers}\r\n");
        self.tcp.write_all(req.as_bytes()).expect("send request");
        self.response().expect("a response")
    }

    fn response(&mut self) -> Option<Resp> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = self.tcp.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize =
            headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok())?;
        self.buf.drain(..head_end);
        while self.buf.len() < len {
            let mut chunk = [0u8; 8192];
            let n = self.tcp.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&self.buf[..len]).into_owned();
        self.buf.drain(..len);
        Some(Resp { status, headers, body })
    }
}

fn keys_in_order(obj: &str, expected: &[&str]) -> bool {
    let positions: Vec<Option<usize>> = expected.iter().map(|k| obj.find(&format!("\"{k}\":"))).collect();
    positions.iter().all(Option::is_some) && positions.windows(2).all(|w| w[0] < w[1])
}

/// Every route answers with its CoinAPI shape, pretty-printed, and the rate-limit headers;
/// errors carry `{"error":..}` with 401, 404, 400 and 550; all on one keep-alive connection.
#[test]
fn rest_routes_shapes_and_statuses() {
    let sim = start(SimConfig::default());
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","subscribe_data_type":["trade"],"subscribe_filter_symbol_id":["BITSTAMP_SPOT_BTC_USD$"]}"#);
    c.data(10);
    let mut http = Http::connect(&sim);

    let r = http.get("/v1/trades/BITSTAMP_SPOT_BTC_USD/latest?limit=5", Some(KEY));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.starts_with("[\n  {\n    \"symbol_id\": \"BITSTAMP_SPOT_BTC_USD\",\n    \"time_exchange\": \""),
        "{}",
        r.body
    );
    assert_eq!(r.header("X-RateLimit-Limit"), Some("10000"));
    assert_eq!(r.header("X-RateLimit-Request-Cost"), Some("1"));
    assert!(r.header("X-RateLimit-Remaining").is_some());
    let trades = json(&r.body);
    let trades = trades.as_array().expect("array");
    assert!(!trades.is_empty() && trades.len() <= 5);
    for t in trades {
        let uuid = t["uuid"].as_str().expect("uuid");
        assert_eq!(uuid, uuid.to_ascii_lowercase());
        assert!(t.get("sequence").is_none());
    }
    assert!(keys_in_order(
        &r.body,
        &["symbol_id", "time_exchange", "time_coinapi", "uuid", "price", "size", "taker_side"]
    ));

    let r = http.get("/v1/quotes/COINBASE_SPOT_ETH_USD/current", Some(KEY));
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("{\n  \"symbol_id\": \"COINBASE_SPOT_ETH_USD\",\n"), "{}", r.body);
    let q = json(&r.body);
    assert!(q.is_object() && q["last_trade"]["uuid"].is_string(), "{}", r.body);
    assert!(keys_in_order(
        &r.body,
        &["symbol_id", "time_exchange", "time_coinapi", "ask_price", "ask_size", "bid_price", "bid_size", "last_trade"]
    ));

    let r = http.get("/v1/orderbooks/KRAKEN_SPOT_XRP_EUR/current?limit_levels=3", Some(KEY));
    assert_eq!(r.status, 200);
    let b = json(&r.body);
    assert_eq!(b["asks"].as_array().map(Vec::len), Some(3));
    assert_eq!(b["bids"].as_array().map(Vec::len), Some(3));

    let r = http.get("/v1/ohlcv/BINANCE_SPOT_SOL_USDT/latest?period_id=1MIN&limit=4", Some(KEY));
    assert_eq!(r.status, 200);
    let bars = json(&r.body);
    let starts: Vec<&str> =
        bars.as_array().expect("array").iter().filter_map(|b| b["time_period_start"].as_str()).collect();
    assert_eq!(starts.len(), 4);
    assert!(starts.windows(2).all(|w| w[0] > w[1]), "newest first: {starts:?}");

    let r = http.get("/v1/ohlcv/BINANCE_SPOT_SOL_USDT/latest", Some(KEY));
    assert_eq!(r.status, 400);
    let r = http.get("/v1/trades/NOPE_SPOT_X_Y/latest", Some(KEY));
    assert_eq!(r.status, 550);
    assert!(json(&r.body)["error"].is_string());
    let r = http.get("/v1/nothing/here", Some(KEY));
    assert_eq!(r.status, 404);
    let r = http.get("/v1/trades/BITSTAMP_SPOT_BTC_USD/latest", None);
    assert_eq!(r.status, 401);
    assert!(json(&r.body)["error"].is_string());

    let r = http.request("/v1/quotes/COINBASE_SPOT_ETH_USD/current", Some(KEY), "Connection: close\r\n");
    assert_eq!(r.status, 200);
    assert!(http.response().is_none(), "connection closed after Connection: close");

    let events = sim.events();
    let rest: Vec<&SimEvent> = events.iter().filter(|e| matches!(e.kind, EventKind::RestRequest { .. })).collect();
    assert_eq!(rest.len(), 9);
    assert!(rest.iter().all(|e| e.conn == rest[0].conn), "one keep-alive connection");
    assert!(has(&events, |k| matches!(k,
        EventKind::RestRequest { path, status: 401, .. } if path == "/v1/trades/BITSTAMP_SPOT_BTC_USD/latest")));

    let mut http = Http::connect(&sim);
    let big = format!("X-Big: {}\r\n", "a".repeat(17 * 1024));
    let r = http.request("/v1/quotes/COINBASE_SPOT_ETH_USD/current", Some(KEY), &big);
    assert_eq!(r.status, 431);
}

/// The raw text of every `"key": value` in `text` (compact or pretty JSON), in order: strings
/// with their quotes, numbers exactly as spelled.
fn raw_values(text: &str, key: &str) -> Vec<String> {
    let pat = format!("\"{key}\":");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(&pat) {
        let value = rest[at + pat.len()..].trim_start();
        let end = if let Some(inner) = value.strip_prefix('"') {
            inner.find('"').map_or(value.len(), |e| e + 2)
        } else {
            value.find([',', '}', '\n', ']']).unwrap_or(value.len())
        };
        out.push(value[..end].trim_end().to_string());
        rest = &value[end..];
    }
    out
}

fn trade_text_fields(text: &str) -> Vec<[String; 5]> {
    let fields = ["time_exchange", "time_coinapi", "price", "size", "taker_side"].map(|k| raw_values(text, k));
    (0..fields[0].len()).map(|i| fields.clone().map(|f| f.get(i).cloned().unwrap_or_default())).collect()
}

/// REST latest trades are the newest stored trades, newest first, with lower-case uuids and
/// every field byte for byte as the WebSocket frame carried it; `limit` bounds them.
#[test]
fn rest_latest_serves_the_store_newest_first() {
    let sim = start(flood(20));
    let mut c = Client::connect(&sim);
    c.send(r#"{"type":"hello","apikey":"k","subscribe_data_type":["trade"],"subscribe_filter_symbol_id":["BITSTAMP_SPOT_BTC_USD$"]}"#);
    let frames = c.data(20);
    wait_until("20 trades stored", || sim.stored_trade_count("BITSTAMP_SPOT_BTC_USD") == 20);
    let mut ws_uuids: Vec<String> =
        frames.iter().map(|f| json(f)["uuid"].as_str().unwrap_or("").to_ascii_lowercase()).collect();
    let mut ws_fields: Vec<[String; 5]> = frames.iter().flat_map(|f| trade_text_fields(f)).collect();
    ws_uuids.reverse();
    ws_fields.reverse();
    let mut http = Http::connect(&sim);
    let r = http.get("/v1/trades/BITSTAMP_SPOT_BTC_USD/latest?limit=100", Some(KEY));
    assert_eq!(r.status, 200);
    let rest: Vec<String> = raw_values(&r.body, "uuid").iter().map(|u| u.trim_matches('"').to_string()).collect();
    assert_eq!(rest, ws_uuids);
    assert_eq!(trade_text_fields(&r.body), ws_fields);
    let r = http.get("/v1/trades/BITSTAMP_SPOT_BTC_USD/latest?limit=5", Some(KEY));
    let rest: Vec<String> = raw_values(&r.body, "uuid").iter().map(|u| u.trim_matches('"').to_string()).collect();
    assert_eq!(rest, ws_uuids[..5]);
    let r = http.get("/v1/trades/KRAKEN_SPOT_XRP_EUR/latest", Some(KEY));
    assert_eq!((r.status, r.body.as_str()), (200, "[]"), "a symbol nobody streamed has no trades");
}

/// REST faults apply in order to one request each: 429 with Retry-After, garbage, slow.
#[test]
fn rest_faults_apply_in_order() {
    let sim = start(SimConfig::default());
    sim.rest_fault(RestFault::Status {
        code: 429,
        retry_after_secs: Some(7),
        body: r#"{"error":"Too many requests"}"#.to_string(),
    });
    sim.rest_fault(RestFault::Garbage);
    sim.rest_fault(RestFault::Slow(Duration::from_millis(300)));
    let mut http = Http::connect(&sim);
    let path = "/v1/quotes/BITSTAMP_SPOT_BTC_USD/current";
    let r = http.get(path, Some(KEY));
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Retry-After"), Some("7"));
    assert_eq!(r.body, r#"{"error":"Too many requests"}"#);
    let r = http.get(path, Some(KEY));
    assert_eq!(r.status, 200);
    assert!(serde_json::from_str::<Value>(&r.body).is_err(), "{}", r.body);
    let t0 = Instant::now();
    let r = http.get(path, Some(KEY));
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(json(&r.body).is_object());
    assert_eq!(http.get(path, Some(KEY)).status, 200);
}

/// Shutdown joins every thread promptly with a flooding client that does not read, an idle
/// client, a hung upgrade and a hung REST request.
#[test]
fn shutdown_is_prompt_with_blocked_and_hung_peers() {
    let sim = start(SimConfig { rate_per_sec: 0, ..SimConfig::default() });
    let mut blocked = Client::connect(&sim);
    blocked.send(r#"{"type":"hello","apikey":"k","subscribe_data_type":["book20","trade"]}"#);
    let _idle = Client::connect(&sim);
    sim.inject(WsFault::HangUpgrade);
    let mut hung = TcpStream::connect(sim.ws_addr()).expect("connect");
    hung.write_all(b"GET /v1/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .expect("send upgrade");
    sim.rest_fault(RestFault::Hang);
    let mut rest = TcpStream::connect(sim.rest_addr()).expect("connect");
    rest.write_all(b"GET /v1/quotes/BITSTAMP_SPOT_BTC_USD/current HTTP/1.1\r\nX-CoinAPI-Key: k\r\n\r\n")
        .expect("send request");
    assert!(sim.wait_for(DEADLINE, |ev| {
        has(ev, |k| matches!(k, EventKind::RestRequest { status: 0, .. }))
            && has(ev, |k| matches!(k, EventKind::FaultApplied { fault } if fault == "HangUpgrade"))
    }));
    // The flooding connection is blocked once the socket buffers are full.
    let mut last = 0;
    wait_until("the flood to block", || {
        let now = sim.data_sent();
        let blocked = now > 0 && now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(50));
        blocked
    });
    let t0 = Instant::now();
    sim.shutdown();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    drop(blocked);
}

/// Non-loopback addresses and empty symbol lists are refused.
#[test]
fn start_validates_config() {
    let err = Sim::start(SimConfig { rest_listen: "0.0.0.0:0".parse().expect("addr"), ..SimConfig::default() })
        .expect_err("non-loopback refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let err = Sim::start(SimConfig { symbols: Vec::new(), ..SimConfig::default() }).expect_err("no symbols refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// ureq (the client's HTTP library) pools one keep-alive connection across requests and reads
/// the rate-limit headers of a 200.
#[test]
fn ureq_agent_reuses_one_connection() {
    let sim = start(SimConfig::default());
    let config =
        ureq::Agent::config_builder().timeout_global(Some(DEADLINE)).http_status_as_error(false).proxy(None).build();
    let agent = ureq::Agent::new_with_config(config);
    let url = format!("{}/v1/trades/KRAKEN_SPOT_XRP_EUR/latest?limit=250", sim.rest_url());
    for _ in 0..3 {
        let mut resp = agent.get(&url).header("X-CoinAPI-Key", KEY).call().expect("request succeeds");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers().get("x-ratelimit-request-cost").and_then(|v| v.to_str().ok()), Some("3"));
        let body = resp.body_mut().read_to_string().expect("body");
        assert!(json(&body).is_array());
    }
    let conns: HashSet<u64> =
        sim.events().iter().filter(|e| matches!(e.kind, EventKind::RestRequest { .. })).map(|e| e.conn).collect();
    assert_eq!(conns.len(), 1, "{conns:?}");
}
