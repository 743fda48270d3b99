//! The simulator's WebSocket server: the `sim-ws` accept loop and one `sim-ws-N` thread per
//! connection that performs the upgrade, honours hello / subscribe / unsubscribe, paces or floods
//! data, sends heartbeats and applies injected faults. Frame contents come from `gen`.
//!
//! # One thread, one output buffer
//!
//! Each connection thread both writes data and reads client frames. tungstenite's read side also
//! writes (automatic pongs and close replies), and interleaving those bytes with our own frames on
//! the socket would corrupt the stream. So tungstenite never touches the socket for writing: it
//! runs over [`SimStream`], whose `Write` appends to the same output buffer our data frames go
//! into. Both only ever append whole frames from this one thread, so frames stay intact and in
//! order; the thread alone moves that buffer to the socket.
//!
//! The loop alternates: read every client frame already available (socket non-blocking, so this
//! costs one syscall when there is none), apply queued faults, generate one batch of data (up to
//! 256 KiB) once the previous one is fully written, send a heartbeat after silence, and write
//! buffered bytes. When the peer does not read, the write switches the socket to blocking with a
//! 20 ms send timeout, so a stalled reader costs no CPU and shutdown is still noticed within a
//! tick. Flood mode splices sequence numbers into pre-generated templates and writes 256 KiB per
//! syscall; paced mode generates what is due each millisecond from the elapsed time (no drift).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::gen::{self, Clock, DataType, StreamGen};
use super::{describe, EventKind, Shared, WsFault};

/// How often the accept loop checks the stop flag when no connection arrives.
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// Connections served at once; more are closed at accept (a test that needs more is broken).
const MAX_CONNECTIONS: usize = 64;
/// Socket read timeout during the upgrade and send timeout afterwards: the longest a connection
/// thread goes without checking the stop flag.
const SOCKET_TICK: Duration = Duration::from_millis(20);
/// A client that has not completed its upgrade request by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Data generated per batch: big enough for few syscalls in flood mode, small enough that
/// faults and client frames are handled promptly (a few hundred microseconds per batch).
const BATCH_BYTES: usize = 256 * 1024;
/// Sleep when a loop pass did nothing; also the pacing granularity of rate mode.
const IDLE_SLEEP: Duration = Duration::from_millis(1);
/// How long a closing connection may spend flushing and waiting for the client's close reply.
const END_DEADLINE: Duration = Duration::from_secs(1);
/// Client frames handled per loop pass, so a chatty client cannot starve the writer.
const MAX_READS_PER_PASS: usize = 256;
/// Largest client message accepted (hellos are a few hundred bytes).
const CLIENT_MESSAGE_MAX: usize = 1 << 20;
/// Bytes buffered for a connection at most (a batch plus fault frames fit easily; a long stall
/// under a ping storm does not).
const OUT_MAX: usize = 64 << 20;
/// Largest WebSocket control frame payload (RFC 6455 §5.5).
const CONTROL_PAYLOAD_MAX: usize = 125;

/// Paced rates from here on replay template rings like flood mode: building every message
/// fresh costs about a microsecond, and timestamps within a second of real time are fine.
const RING_MODE_MIN_RATE: u64 = 20_000;

const HEARTBEAT_TEXT: &str = r#"{"type":"hearbeat"}"#;

pub(crate) fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    super::accept_connections(listener, &shared, "websocket", MAX_CONNECTIONS, ACCEPT_POLL, |tcp, id| {
        let accept_fault = shared.faults.lock().take_accept_fault();
        let conn_shared = Arc::clone(&shared);
        thread::Builder::new().name(format!("sim-ws-{id}")).spawn(move || serve(conn_shared, tcp, id, accept_fault))
    });
}

/// The socket as tungstenite sees it: reads come from TCP; after the upgrade, writes land in
/// `out`, the single output buffer that only the connection thread moves to the socket.
#[derive(Debug)]
struct SimStream {
    tcp: TcpStream,
    out: Vec<u8>,
    /// Bytes of `out` already written to the socket.
    sent: usize,
    upgraded: bool,
    nonblocking: bool,
}

impl Read for SimStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for SimStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.upgraded {
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        } else {
            self.tcp.write(buf)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.upgraded {
            Ok(())
        } else {
            self.tcp.flush()
        }
    }
}

impl SimStream {
    fn set_nonblocking(&mut self, nonblocking: bool) -> io::Result<()> {
        if self.nonblocking != nonblocking {
            self.tcp.set_nonblocking(nonblocking)?;
            self.nonblocking = nonblocking;
        }
        Ok(())
    }

    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Writes buffered bytes; returns how many. First tries without blocking; if the kernel
    /// buffer is full, blocks with the send timeout, at most about one `SOCKET_TICK` in total.
    fn drain(&mut self) -> io::Result<usize> {
        let before = self.sent;
        let deadline = Instant::now() + SOCKET_TICK;
        while self.sent < self.out.len() {
            match self.tcp.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    if !self.nonblocking && Instant::now() >= deadline {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if self.nonblocking {
                        self.set_nonblocking(false)?;
                    } else {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.sent - before)
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        // Frames go straight into `SimStream::out`; tungstenite keeps no buffer of its own.
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(CLIENT_MESSAGE_MAX))
        .max_frame_size(Some(CLIENT_MESSAGE_MAX))
        .accept_unmasked_frames(false)
}

fn refusal(status: u16, retry_after_ms: Option<u64>) -> ErrorResponse {
    let mut resp =
        ErrorResponse::new(Some(format!("{{\"error\":\"upgrade refused by simulator fault (status {status})\"}}")));
    *resp.status_mut() = StatusCode::from_u16(status)
        .ok()
        .filter(|s| !s.is_success() && !s.is_informational())
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    if let Some(ms) = retry_after_ms {
        resp.headers_mut().insert("x-wsrequestsperiplimit-retryafterms", HeaderValue::from(ms));
    }
    resp
}

/// Path and lower-case headers of an upgrade request.
type UpgradeRequest = (String, Vec<(String, String)>);

enum Upgrade {
    Done(Box<WebSocket<SimStream>>, UpgradeRequest),
    Refused(u16),
    Failed(String),
}

fn upgrade(shared: &Shared, tcp: TcpStream, refuse: Option<(u16, Option<u64>)>) -> Upgrade {
    let captured: std::cell::RefCell<Option<UpgradeRequest>> = std::cell::RefCell::new(None);
    // The callback's signature is tungstenite's `Callback`; its error type is not ours to box.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        *captured.borrow_mut() = Some((req.uri().to_string(), headers));
        match refuse {
            Some((status, retry)) => Err(refusal(status, retry)),
            None => Ok(resp),
        }
    };
    let stream = SimStream { tcp, out: Vec::new(), sent: 0, upgraded: false, nonblocking: false };
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut attempt = tungstenite::accept_hdr_with_config(stream, callback, Some(ws_config()));
    loop {
        match attempt {
            Ok(ws) => {
                let req = captured.borrow_mut().take().unwrap_or_default();
                return Upgrade::Done(Box::new(ws), req);
            }
            Err(HandshakeError::Interrupted(mid)) => {
                if shared.stopping() {
                    return Upgrade::Failed("shutdown during upgrade".to_string());
                }
                if Instant::now() >= deadline {
                    return Upgrade::Failed("upgrade request not completed in time".to_string());
                }
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                return Upgrade::Refused(resp.status().as_u16());
            }
            Err(HandshakeError::Failure(e)) => {
                return Upgrade::Failed(format!("upgrade failed: {e}"));
            }
        }
    }
}

fn serve(shared: Arc<Shared>, tcp: TcpStream, id: u64, accept_fault: Option<WsFault>) {
    let setup = tcp
        .set_nonblocking(false)
        .and_then(|()| tcp.set_nodelay(true))
        .and_then(|()| tcp.set_read_timeout(Some(SOCKET_TICK)))
        .and_then(|()| tcp.set_write_timeout(Some(SOCKET_TICK)));
    if let Err(e) = setup {
        shared.log(id, EventKind::WsClosed { reason: format!("socket setup failed: {e}") });
        return;
    }
    let mut refuse = None;
    if let Some(fault) = accept_fault {
        shared.log(id, EventKind::FaultApplied { fault: describe(&fault) });
        match fault {
            WsFault::HangUpgrade => {
                // Hold the socket without answering: the client's upgrade must time out.
                let reason = super::hold(&shared, tcp);
                shared.log(id, EventKind::WsClosed { reason: format!("hung upgrade ended: {reason}") });
                return;
            }
            WsFault::RefuseUpgrade { status, retry_after_ms } => refuse = Some((status, retry_after_ms)),
            _ => {}
        }
    }
    let (ws, (path, headers)) = match upgrade(&shared, tcp, refuse) {
        Upgrade::Done(ws, req) => (ws, req),
        Upgrade::Refused(status) => {
            shared.log(id, EventKind::UpgradeRefused { status });
            return;
        }
        Upgrade::Failed(reason) => {
            shared.log(id, EventKind::WsClosed { reason });
            return;
        }
    };
    // Registered before the event is logged, so a test that injects a fault as soon as it sees
    // `WsConnected` reaches this connection.
    let faults = shared.faults.lock().register(id);
    shared.log(id, EventKind::WsConnected { path, headers });
    let mut conn = Conn::new(Arc::clone(&shared), id, ws, faults);
    let reason = conn.run();
    shared.faults.lock().deregister(id);
    shared.log(id, EventKind::WsClosed { reason });
}

/// Data frames written by one generation step, committed to the counters once the socket has
/// taken every byte up to `end`.
#[derive(Debug)]
struct Batch {
    end: usize,
    frames: u64,
    records: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndAction {
    /// Flush, then drop TCP without a close frame.
    Abrupt,
    /// Our close frame is queued: flush, then wait for the client's close reply.
    AwaitPeerClose,
    /// The client closed and our reply is queued: flush, then done.
    Flush,
}

#[derive(Debug)]
struct Ending {
    action: EndAction,
    reason: String,
    deadline: Instant,
}

/// Why reading ended.
struct Closed {
    reason: String,
    /// A close reply is queued and should still be flushed.
    reply_queued: bool,
}

const CLOCK: Clock = OffsetDateTime::now_utc;

/// Key of a stream: data type and index into `Shared::symbols` (for `exrate`, the first symbol
/// with that base/quote pair).
type StreamKey = (DataType, usize);

struct Conn {
    id: u64,
    shared: Arc<Shared>,
    ws: Box<WebSocket<SimStream>>,
    faults: Arc<Mutex<VecDeque<WsFault>>>,
    rng: fastrand::Rng,
    /// Every stream this connection ever served: sequences survive unsubscribe/subscribe.
    gens: Vec<StreamGen>,
    by_key: HashMap<StreamKey, usize>,
    /// Indices into `gens` of the subscribed streams, in round-robin order.
    active: Vec<usize>,
    rr: usize,
    period_id: String,
    hello_seen: bool,
    heartbeat: bool,
    stalled: bool,
    ending: Option<Ending>,
    /// Data messages generated on this connection (for `max_messages`).
    data_count: u64,
    gap_pending: u64,
    /// Gaps aimed at one symbol (`WsFault::GapOn`), applied to its next sequenced message.
    gap_on: HashMap<String, u64>,
    last_frame_at: Instant,
    /// Paced mode: (start, messages generated since start).
    pace: Option<(Instant, u64)>,
    batches: VecDeque<Batch>,
    last_trade_stream: Option<usize>,
}

impl Conn {
    fn new(shared: Arc<Shared>, id: u64, ws: Box<WebSocket<SimStream>>, faults: Arc<Mutex<VecDeque<WsFault>>>) -> Conn {
        let mut conn = Conn {
            id,
            shared,
            ws,
            faults,
            rng: fastrand::Rng::new(),
            gens: Vec::new(),
            by_key: HashMap::new(),
            active: Vec::new(),
            rr: 0,
            period_id: "1MIN".to_string(),
            hello_seen: false,
            heartbeat: false,
            stalled: false,
            ending: None,
            data_count: 0,
            gap_pending: 0,
            gap_on: HashMap::new(),
            last_frame_at: Instant::now(),
            pace: None,
            batches: VecDeque::new(),
            last_trade_stream: None,
        };
        conn.ws.get_mut().upgraded = true;
        conn
    }

    fn log(&self, kind: EventKind) {
        self.shared.log(self.id, kind);
    }

    /// Runs the connection to its end; returns why it ended.
    fn run(&mut self) -> String {
        loop {
            if self.shared.stopping() {
                self.close_for_shutdown();
                return "shutdown".to_string();
            }
            let mut progressed = false;
            match self.read_client() {
                Ok(read) => progressed |= read,
                Err(closed) => match self.ending.take() {
                    Some(end) if end.action == EndAction::AwaitPeerClose => {
                        let _ = self.ws.get_mut().tcp.shutdown(Shutdown::Both);
                        return end.reason;
                    }
                    _ if closed.reply_queued => {
                        self.ending = Some(Ending {
                            action: EndAction::Flush,
                            reason: closed.reason,
                            deadline: Instant::now() + END_DEADLINE,
                        });
                    }
                    _ => return closed.reason,
                },
            }
            if self.ending.is_none() {
                progressed |= self.apply_faults();
            }
            if self.ending.is_some() {
                if let Some(reason) = self.drive_ending() {
                    return reason;
                }
                if !progressed {
                    thread::sleep(IDLE_SLEEP);
                }
                continue;
            }
            if self.ws.get_ref().pending() > OUT_MAX {
                // Only a client that pings a stalled connection relentlessly gets here.
                return format!("output buffer over {OUT_MAX} bytes");
            }
            if !self.stalled {
                if self.ws.get_ref().pending() == 0 {
                    progressed |= self.generate() > 0;
                }
                progressed |= self.heartbeat();
                match self.ws.get_mut().drain() {
                    Ok(n) => progressed |= n > 0,
                    Err(e) => return format!("write error: {e}"),
                }
                self.commit();
            }
            if !progressed {
                thread::sleep(IDLE_SLEEP);
            }
        }
    }

    /// Handles every client frame already received. `Err` when the client side is finished.
    fn read_client(&mut self) -> Result<bool, Closed> {
        let closed = |reason: String| Closed { reason, reply_queued: false };
        if let Err(e) = self.ws.get_mut().set_nonblocking(true) {
            return Err(closed(format!("socket error: {e}")));
        }
        let mut any = false;
        for _ in 0..MAX_READS_PER_PASS {
            match self.ws.read() {
                Ok(msg) => {
                    any = true;
                    match msg {
                        Message::Text(text) => self.on_client_text(text.as_str()),
                        Message::Binary(bytes) => {
                            self.log(EventKind::ClientText { text: String::from_utf8_lossy(&bytes).into_owned() })
                        }
                        Message::Pong(payload) => self.log(EventKind::Pong { payload: payload.to_vec() }),
                        // tungstenite queued the pong; it lands in `out` on the next call.
                        Message::Ping(_) | Message::Frame(_) => {}
                        Message::Close(frame) => {
                            // Moves the queued close reply into `out`.
                            let _ = self.ws.flush();
                            let reason = match frame {
                                Some(f) => {
                                    format!("client close (code {}, reason {:?})", u16::from(f.code), f.reason.as_str())
                                }
                                None => "client close".to_string(),
                            };
                            return Err(Closed { reason, reply_queued: true });
                        }
                    }
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Err(closed("connection closed".to_string()));
                }
                Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    return Err(closed("client dropped the tcp connection without a close frame".to_string()));
                }
                Err(e) => return Err(closed(format!("read error: {e}"))),
            }
        }
        Ok(any)
    }

    fn on_client_text(&mut self, text: &str) {
        let parsed = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        };
        let kind = parsed.as_ref().and_then(|m| m.get("type")).and_then(Value::as_str);
        match (kind, &parsed) {
            (Some(kind @ ("hello" | "subscribe" | "unsubscribe")), Some(msg)) => {
                let kind = kind.to_string();
                self.log(EventKind::Hello { text: text.to_string() });
                self.apply_scope(&kind, msg);
            }
            _ => self.log(EventKind::ClientText { text: text.to_string() }),
        }
    }

    /// hello replaces the scope, subscribe adds to it, unsubscribe removes from it. Nothing is
    /// acknowledged (as on CoinAPI).
    fn apply_scope(&mut self, kind: &str, msg: &Map<String, Value>) {
        if let Some(period) =
            str_list(msg, "subscribe_filter_period_id").into_iter().find(|p| gen::period_seconds(p).is_some())
        {
            self.period_id = period.to_string();
        }
        if kind == "hello" || msg.contains_key("heartbeat") {
            self.heartbeat = msg.get("heartbeat").and_then(Value::as_bool) == Some(true);
        }
        let keys = self.streams_named(msg);
        match kind {
            "hello" => {
                self.active.clear();
                for key in keys {
                    let i = self.gen_index(key);
                    self.gens[i].request_snapshot();
                    self.active.push(i);
                }
                if !self.hello_seen {
                    self.hello_seen = true;
                    self.last_frame_at = Instant::now();
                }
            }
            "subscribe" => {
                for key in keys {
                    let i = self.gen_index(key);
                    // Resubscribing a book yields a fresh snapshot.
                    self.gens[i].request_snapshot();
                    if !self.active.contains(&i) {
                        self.active.push(i);
                    }
                }
            }
            _ => {
                let remove: Vec<usize> = keys.into_iter().filter_map(|k| self.by_key.get(&k).copied()).collect();
                self.active.retain(|i| !remove.contains(i));
            }
        }
        self.rr = 0;
    }

    /// The (type, symbol) streams a hello/subscribe/unsubscribe names, in message order.
    fn streams_named(&self, msg: &Map<String, Value>) -> Vec<StreamKey> {
        let mut types: Vec<DataType> = Vec::new();
        for t in str_list(msg, "subscribe_data_type") {
            if let Some(t) = DataType::parse(t) {
                if !types.contains(&t) {
                    types.push(t);
                }
            }
        }
        let filter = str_list(msg, "subscribe_filter_symbol_id");
        let assets = str_list(msg, "subscribe_filter_asset_id");
        let symbols = &self.shared.symbols;
        let mut keys = Vec::new();
        for t in types {
            for (i, sym) in symbols.iter().enumerate() {
                if !symbol_matches(&filter, &sym.id) {
                    continue;
                }
                if t == DataType::Exrate {
                    let (Some(base), Some(quote)) = (&sym.base, &sym.quote) else {
                        continue;
                    };
                    if !assets.is_empty() && !assets.iter().any(|a| a == base || a == quote) {
                        continue;
                    }
                    // One exrate stream per pair, keyed by the first symbol with it.
                    let first = symbols.iter().position(|s| s.base == sym.base && s.quote == sym.quote).unwrap_or(i);
                    if first != i {
                        continue;
                    }
                }
                keys.push((t, i));
            }
        }
        keys
    }

    fn gen_index(&mut self, key: StreamKey) -> usize {
        if let Some(i) = self.by_key.get(&key) {
            return *i;
        }
        let cfg = &self.shared.config;
        let g = StreamGen::new(
            key.0,
            Arc::clone(&self.shared.symbols[key.1]),
            cfg.book_levels,
            &self.period_id,
            cfg.rate_per_sec == 0 || cfg.rate_per_sec >= RING_MODE_MIN_RATE,
            self.rng.fork(),
        );
        self.gens.push(g);
        self.by_key.insert(key, self.gens.len() - 1);
        self.gens.len() - 1
    }

    /// Generates the next batch of data: all that is due in paced mode, up to `BATCH_BYTES` in
    /// flood mode, never past `max_messages`. Returns the number of messages.
    fn generate(&mut self) -> u64 {
        if !self.hello_seen || self.active.is_empty() {
            self.pace = None;
            return 0;
        }
        let cfg = &self.shared.config;
        let left = cfg.max_messages.map_or(u64::MAX, |m| m.saturating_sub(self.data_count));
        if left == 0 {
            return 0;
        }
        let rate = cfg.rate_per_sec;
        let due = if rate == 0 {
            u64::MAX
        } else {
            let now = Instant::now();
            let (start, done) = self.pace.get_or_insert((now, 0));
            let elapsed = now.duration_since(*start).as_nanos();
            let due_total = (elapsed * u128::from(rate) / 1_000_000_000) as u64;
            // After back-pressure or a stall, never burst more than one second's worth.
            let cap = rate.max(1);
            if due_total.saturating_sub(*done) > cap {
                *done = due_total - cap;
            }
            due_total.saturating_sub(*done)
        };
        let want = due.min(left);
        if want == 0 {
            return 0;
        }
        let record = cfg.record_sent && self.shared.sent.has_room();
        let mut records = Vec::new();
        let out = &mut self.ws.get_mut().out;
        let mut n = 0u64;
        while n < want && out.len() < BATCH_BYTES {
            let gi = self.active[self.rr];
            self.rr += 1;
            if self.rr == self.active.len() {
                self.rr = 0;
            }
            let g = &mut self.gens[gi];
            // The map is empty but in gap tests, so the flood path pays one branch.
            let aimed = if self.gap_on.is_empty() { 0 } else { self.gap_on.get(&g.symbol().id).copied().unwrap_or(0) };
            let emitted = g.emit(out, self.gap_pending + aimed, CLOCK);
            if emitted.sequenced {
                if self.gap_pending + aimed > 0 {
                    self.shared.gaps_emitted.fetch_add(1, Ordering::Relaxed);
                }
                self.gap_pending = 0;
                if aimed > 0 {
                    self.gap_on.remove(&g.symbol().id);
                }
            }
            if record {
                records.push(String::from_utf8_lossy(&out[emitted.start..]).into_owned());
            }
            if g.kind == DataType::Trade {
                self.last_trade_stream = Some(gi);
            }
            n += 1;
        }
        self.batches.push_back(Batch { end: out.len(), frames: n, records });
        if let Some((_, done)) = &mut self.pace {
            *done += n;
        }
        self.data_count += n;
        self.last_frame_at = Instant::now();
        self.publish_trades();
        n
    }

    /// Hands the trades just generated to the REST overlap.
    fn publish_trades(&mut self) {
        for &gi in &self.active {
            let g = &mut self.gens[gi];
            if g.kind == DataType::Trade && g.has_unpublished_trades() {
                let trades = g.take_unpublished_trades();
                self.shared.publish_trades(&g.symbol().id, trades);
            }
        }
    }

    /// Counts (and records) the data frames the socket has fully taken.
    fn commit(&mut self) {
        let stream = self.ws.get_mut();
        while self.batches.front().is_some_and(|b| b.end <= stream.sent) {
            if let Some(b) = self.batches.pop_front() {
                self.shared.data_sent.fetch_add(b.frames, Ordering::Relaxed);
                if !b.records.is_empty() {
                    self.shared.sent.extend(b.records);
                }
            }
        }
        if stream.sent == stream.out.len() {
            stream.out.clear();
            stream.sent = 0;
        }
    }

    fn heartbeat(&mut self) -> bool {
        if !self.heartbeat || !self.hello_seen || self.ws.get_ref().pending() > 0 {
            return false;
        }
        if self.last_frame_at.elapsed() < self.shared.config.heartbeat_after {
            return false;
        }
        gen::push_text_frame(&mut self.ws.get_mut().out, HEARTBEAT_TEXT);
        self.last_frame_at = Instant::now();
        true
    }

    fn apply_faults(&mut self) -> bool {
        let mut applied = false;
        while self.ending.is_none() {
            let Some(fault) = self.faults.lock().pop_front() else {
                break;
            };
            self.log(EventKind::FaultApplied { fault: describe(&fault) });
            self.apply(fault);
            applied = true;
        }
        applied
    }

    fn push_control_text(&mut self, text: &str) {
        gen::push_text_frame(&mut self.ws.get_mut().out, text);
        self.last_frame_at = Instant::now();
    }

    /// A data frame produced by a fault: counted and recorded like generated data.
    fn push_fault_data(&mut self, start: usize) {
        let out = &self.ws.get_ref().out;
        let records = if self.shared.config.record_sent && self.shared.sent.has_room() {
            vec![String::from_utf8_lossy(&out[start..]).into_owned()]
        } else {
            Vec::new()
        };
        self.batches.push_back(Batch { end: out.len(), frames: 1, records });
        self.data_count += 1;
        if self.gap_pending > 0 {
            self.shared.gaps_emitted.fetch_add(1, Ordering::Relaxed);
            self.gap_pending = 0;
        }
        self.last_frame_at = Instant::now();
        self.publish_trades();
    }

    fn end_with(&mut self, action: EndAction, reason: &str) {
        self.ending = Some(Ending { action, reason: reason.to_string(), deadline: Instant::now() + END_DEADLINE });
    }

    fn apply(&mut self, fault: WsFault) {
        match fault {
            WsFault::Gap { skip } => self.gap_pending = self.gap_pending.saturating_add(skip),
            WsFault::GapOn { symbol_id, skip } => {
                let pending = self.gap_on.entry(symbol_id).or_insert(0);
                *pending = pending.saturating_add(skip);
            }
            WsFault::Stall => self.stalled = true,
            WsFault::Resume => {
                self.stalled = false;
                self.pace = None;
            }
            WsFault::AbruptClose => self.end_with(EndAction::Abrupt, "fault: abrupt close"),
            WsFault::Close => {
                // Queues the close frame into `out` (tungstenite writes only to the buffer).
                let _ = self.ws.close(None);
                self.end_with(EndAction::AwaitPeerClose, "fault: close");
            }
            WsFault::ReconnectNotice { within_seconds } => {
                let secs = i64::try_from(within_seconds).unwrap_or(i64::MAX / 2);
                let before = OffsetDateTime::now_utc()
                    .checked_add(time::Duration::seconds(secs))
                    .unwrap_or(OffsetDateTime::now_utc());
                let text = format!(
                    "{{\"type\":\"reconnect\",\"within_seconds\":{within_seconds},\"before_time\":\"{}\"}}",
                    gen::time_string(before)
                );
                self.push_control_text(&text);
            }
            WsFault::Error { message } => {
                let text = format!("{{\"type\":\"error\",\"message\":{}}}", gen::json_string(&message));
                self.push_control_text(&text);
                let _ = self.ws.close(None);
                self.end_with(EndAction::AwaitPeerClose, "fault: error");
            }
            WsFault::Text(text) => self.push_control_text(&text),
            WsFault::Binary(bytes) => {
                let out = &mut self.ws.get_mut().out;
                gen::push_frame_header(out, gen::OPCODE_BINARY, bytes.len());
                out.extend_from_slice(&bytes);
                self.last_frame_at = Instant::now();
            }
            WsFault::Ping(mut payload) => {
                payload.truncate(CONTROL_PAYLOAD_MAX);
                let out = &mut self.ws.get_mut().out;
                gen::push_frame_header(out, gen::OPCODE_PING, payload.len());
                out.extend_from_slice(&payload);
                self.last_frame_at = Instant::now();
            }
            WsFault::Oversized { bytes } => {
                let gi = self
                    .last_trade_stream
                    .or_else(|| self.active.iter().copied().find(|&i| self.gens[i].kind == DataType::Trade))
                    .unwrap_or_else(|| self.gen_index((DataType::Trade, 0)));
                let out = &mut self.ws.get_mut().out;
                let emitted = self.gens[gi].oversized_trade(out, self.gap_pending, bytes, CLOCK());
                self.last_trade_stream = Some(gi);
                self.push_fault_data(emitted.start);
            }
            WsFault::DuplicateTrade => {
                let Some(gi) = self.last_trade_stream else {
                    log::warn!("sim DuplicateTrade ignored on connection {}: no trade sent yet", self.id);
                    return;
                };
                let out = &mut self.ws.get_mut().out;
                if let Some(emitted) = self.gens[gi].duplicate_last_trade(out, self.gap_pending) {
                    self.push_fault_data(emitted.start);
                }
            }
            // Routed to the accept loop by `FaultHub::inject`.
            WsFault::RefuseUpgrade { .. } | WsFault::HangUpgrade => {}
        }
    }

    /// Flushes a closing connection (even when stalled) and finishes it. `Some(reason)` when done.
    fn drive_ending(&mut self) -> Option<String> {
        let drained = match self.ws.get_mut().drain() {
            Ok(_) => self.ws.get_ref().pending() == 0,
            Err(e) => {
                let reason = self.ending.as_ref().map_or("", |e| e.reason.as_str());
                return Some(format!("{reason}; write error: {e}"));
            }
        };
        self.commit();
        let end = self.ending.as_ref()?;
        let late = Instant::now() >= end.deadline;
        let tcp = &self.ws.get_ref().tcp;
        match end.action {
            EndAction::Abrupt if drained || late => {
                let _ = tcp.shutdown(Shutdown::Both);
                Some(end.reason.clone())
            }
            EndAction::Flush if drained || late => {
                let _ = tcp.shutdown(Shutdown::Both);
                Some(end.reason.clone())
            }
            EndAction::AwaitPeerClose if late => {
                let _ = tcp.shutdown(Shutdown::Both);
                Some(format!("{} (no close reply from client)", end.reason))
            }
            _ => None,
        }
    }

    /// Best effort: queue a close frame and write what the socket takes without waiting.
    fn close_for_shutdown(&mut self) {
        if !self.stalled {
            let _ = self.ws.close(None);
            let stream = self.ws.get_mut();
            if stream.set_nonblocking(true).is_ok() {
                let _ = stream.drain();
            }
        }
        let _ = self.ws.get_ref().tcp.shutdown(Shutdown::Both);
    }
}

/// The strings of a JSON array field (missing or malformed = empty).
fn str_list<'a>(msg: &'a Map<String, Value>, field: &str) -> Vec<&'a str> {
    msg.get(field).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// CoinAPI symbol filter: each entry is a prefix, a trailing `$` makes it exact, and an empty
/// filter matches everything.
pub(crate) fn symbol_matches(filter: &[&str], id: &str) -> bool {
    filter.is_empty()
        || filter.iter().any(|f| match f.strip_suffix('$') {
            Some(exact) => id == exact,
            None => id.starts_with(f),
        })
}

#[cfg(test)]
mod tests {
    use super::symbol_matches;

    #[test]
    fn symbol_filter_prefix_exact_and_empty() {
        let f = ["BITSTAMP_SPOT_BTC_USD$", "COINBASE_"];
        assert!(symbol_matches(&f, "BITSTAMP_SPOT_BTC_USD"));
        assert!(!symbol_matches(&f, "BITSTAMP_SPOT_BTC_USDT"));
        assert!(symbol_matches(&f, "COINBASE_SPOT_ETH_USD"));
        assert!(!symbol_matches(&f, "KRAKEN_SPOT_XRP_EUR"));
        assert!(symbol_matches(&[], "ANYTHING"));
        assert!(symbol_matches(&["BITSTAMP_SPOT_BTC_USD"], "BITSTAMP_SPOT_BTC_USDT"));
    }
}
