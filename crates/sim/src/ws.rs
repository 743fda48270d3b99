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
//!
//! # Trades go to the store
//!
//! Every trade a connection generates is added to a per-connection [`TradeBatch`] and moved to
//! the shared trade store once per generation step (one lock per symbol per batch): sent trades
//! as streamed, `WithholdTrades` trades (generated in their turn, sequence taken, not written)
//! as not streamed. Flood mode stores runs of replayed templates, so storing costs a compare
//! per trade. `DuplicateTrade` resends an already stored trade and stores nothing.
//!
//! # Outages
//!
//! [`Sim::outage`](super::Sim::outage) bumps an epoch that every connection checks once per loop
//! pass. A connection admitted under an older epoch measures its trade cadence over the last
//! second ([`Cadence`]), ends like `AbruptClose`, logs `WsClosed`, and then keeps generating its
//! trade streams into the store (not streamed) at that cadence until the outage is over, with
//! exchange times spread evenly over it. Upgrades arriving during the outage get HTTP 503.
//!
//! # Book resubscription
//!
//! A `book` or `book_l3` stream that was taken out of the scope (unsubscribe, or a hello without
//! it) and is put back starts over at sequence 1 with a snapshot, as CoinAPI does; other streams
//! keep their numbering for the life of the connection.
//!
//! # Shared books
//!
//! In paced mode `book` and `book5/20/50` streams are views of their symbol's shared model
//! (`book`); the per-connection book faults wait in `Conn::book_faults` until the symbol's
//! `book` stream takes them, and the model faults a stream's step applied are logged on its
//! connection. A dropped delta (`BookDropDeltas`) takes its sequence number and writes nothing,
//! like a withheld trade.

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

use super::book::{OracleLink, ViewFaults};
use super::gen::{self, Clock, DataType, StreamGen};
use super::market::TradeBatch;
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
/// Messages generated per batch at most: withheld trades write no bytes, so `BATCH_BYTES`
/// alone would not end a batch of them (a flood batch of real frames is about 1,000).
const BATCH_MESSAGES_MAX: u64 = 8192;
/// Trades per second at most that one connection generates during an outage: the rate at which
/// the simulator itself stops building messages fresh (`RING_MODE_MIN_RATE`), so an outage of a
/// flooding connection does not spin a core on trades nobody will stream.
const OUTAGE_TRADES_PER_SEC_MAX: f64 = 20_000.0;
/// How often a connection dropped by an outage generates what is due.
const OUTAGE_TICK: Duration = Duration::from_millis(5);
/// Spacing of the samples of a connection's trade cadence, and how far back it looks.
const CADENCE_STEP: Duration = Duration::from_millis(100);
const CADENCE_WINDOW: Duration = Duration::from_secs(1);
/// One second of samples plus the newest.
const CADENCE_SAMPLES: usize = 11;
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

/// Whether streams at this `rate_per_sec` replay pre-built rings (flood, or from
/// `RING_MODE_MIN_RATE`) instead of building each message fresh.
pub(crate) fn ring_mode(rate_per_sec: u64) -> bool {
    rate_per_sec == 0 || rate_per_sec >= RING_MODE_MIN_RATE
}

/// How the accept loop lets a connection in.
#[derive(Debug)]
enum Admission {
    /// Served, with the upgrade fault it took (if any), under this outage epoch.
    Open { fault: Option<WsFault>, outage_epoch: u64 },
    /// An outage is on: the upgrade is answered with 503. Upgrade faults stay queued.
    Outage,
}

pub(crate) fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    super::accept_connections(listener, &shared, "websocket", MAX_CONNECTIONS, ACCEPT_POLL, |tcp, id| {
        // The epoch is read before the outage is checked: see `Outage::begin`.
        let outage_epoch = shared.outage.epoch();
        let admission = if shared.outage.active(Instant::now()) {
            Admission::Outage
        } else {
            Admission::Open { fault: shared.faults.lock().take_accept_fault(), outage_epoch }
        };
        let conn_shared = Arc::clone(&shared);
        thread::Builder::new().name(format!("sim-ws-{id}")).spawn(move || serve(conn_shared, tcp, id, admission))
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

fn refusal(status: u16, retry_after_ms: Option<u64>, why: &str) -> ErrorResponse {
    let mut resp =
        ErrorResponse::new(Some(format!("{{\"error\":\"upgrade refused by simulator {why} (status {status})\"}}")));
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

fn upgrade(shared: &Shared, tcp: TcpStream, refuse: Option<(u16, Option<u64>, &str)>) -> Upgrade {
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
            Some((status, retry, why)) => Err(refusal(status, retry, why)),
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

fn serve(shared: Arc<Shared>, tcp: TcpStream, id: u64, admission: Admission) {
    let setup = tcp
        .set_nonblocking(false)
        .and_then(|()| tcp.set_nodelay(true))
        .and_then(|()| tcp.set_read_timeout(Some(SOCKET_TICK)))
        .and_then(|()| tcp.set_write_timeout(Some(SOCKET_TICK)));
    if let Err(e) = setup {
        shared.log(id, EventKind::WsClosed { reason: format!("socket setup failed: {e}") });
        return;
    }
    let (accept_fault, outage_epoch, mut refuse) = match admission {
        Admission::Open { fault, outage_epoch } => (fault, outage_epoch, None),
        Admission::Outage => (None, 0, Some((503, None, "outage"))),
    };
    if let Some(fault) = accept_fault {
        shared.log(id, EventKind::FaultApplied { fault: describe(&fault) });
        match fault {
            WsFault::HangUpgrade => {
                // Hold the socket without answering: the client's upgrade must time out.
                let reason = super::hold(&shared, tcp);
                shared.log(id, EventKind::WsClosed { reason: format!("hung upgrade ended: {reason}") });
                return;
            }
            WsFault::RefuseUpgrade { status, retry_after_ms } => refuse = Some((status, retry_after_ms, "fault")),
            WsFault::UpgradeHeaderFlood { .. } | WsFault::UpgradeEndlessHeader => {
                let reason = super::hostile::answer_upgrade(&shared, tcp, &fault);
                shared.log(id, EventKind::WsClosed { reason });
                return;
            }
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
    let mut conn = Conn::new(Arc::clone(&shared), id, ws, faults, outage_epoch);
    let reason = conn.run();
    shared.faults.lock().deregister(id);
    shared.log(id, EventKind::WsClosed { reason });
    if let Some(rate) = conn.outage_rate.take() {
        conn.run_outage(rate);
    }
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
    /// Every stream this connection ever served: sequences survive unsubscribe/subscribe,
    /// except those of `book` and `book_l3`, which restart (see the module docs).
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
    /// Trades generated since the last flush to the trade store.
    trades: TradeBatch,
    /// `WithholdTrades` windows: (symbol index, end). A handful at most; empty but in tests.
    withhold: Vec<(usize, Instant)>,
    /// Trades generated (sent or withheld) on this connection, and their recent rate.
    trades_generated: u64,
    cadence: Cadence,
    /// The outage epoch this connection was admitted under.
    outage_epoch: u64,
    /// Set when an outage dropped this connection: trades per second to go on generating.
    outage_rate: Option<f64>,
    /// Book faults waiting for this connection's `book` stream of a symbol (by symbol index).
    /// Empty but in book fault tests.
    book_faults: HashMap<usize, ViewFaults>,
}

impl Conn {
    fn new(
        shared: Arc<Shared>,
        id: u64,
        ws: Box<WebSocket<SimStream>>,
        faults: Arc<Mutex<VecDeque<WsFault>>>,
        outage_epoch: u64,
    ) -> Conn {
        let trades = TradeBatch::new(shared.symbols.len());
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
            trades,
            withhold: Vec::new(),
            trades_generated: 0,
            cadence: Cadence::default(),
            outage_epoch,
            outage_rate: None,
            book_faults: HashMap::new(),
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
            if self.ending.is_none() && self.shared.outage.epoch() != self.outage_epoch {
                self.outage_rate = Some(self.outage_trade_rate(Instant::now()));
                self.end_with(EndAction::Abrupt, "outage: connection dropped");
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
                let before = std::mem::take(&mut self.active);
                for key in keys {
                    let existed = self.by_key.contains_key(&key);
                    let i = self.gen_index(key);
                    if existed && !before.contains(&i) {
                        // Back in scope: a book starts over (sequence 1, snapshot).
                        self.gens[i].restart();
                    }
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
                    let existed = self.by_key.contains_key(&key);
                    let i = self.gen_index(key);
                    if !self.active.contains(&i) {
                        if existed {
                            // Unsubscribed before: a book starts over (sequence 1, snapshot).
                            self.gens[i].restart();
                        }
                        self.active.push(i);
                    }
                    // Resubscribing a book yields a fresh snapshot.
                    self.gens[i].request_snapshot();
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
        let ring_mode = ring_mode(cfg.rate_per_sec);
        let sym = Arc::clone(&self.shared.symbols[key.1]);
        let shared_book = matches!(key.0, DataType::Book | DataType::Book5 | DataType::Book20 | DataType::Book50);
        let g = if shared_book && !ring_mode {
            // Paced books are views of the symbol's one market model.
            let oracle = Some(OracleLink { log: Arc::clone(&self.shared.book_oracle), conn: self.id });
            StreamGen::new_shared(
                key.0,
                sym,
                cfg.book_levels,
                Arc::clone(&self.shared.books[key.1]),
                cfg.book_snapshot_every,
                oracle,
                self.rng.fork(),
            )
        } else {
            StreamGen::new(key.0, sym, cfg.book_levels, &self.period_id, ring_mode, self.rng.fork())
        };
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
        if !self.withhold.is_empty() {
            let now = Instant::now();
            self.withhold.retain(|(_, until)| now < *until);
        }
        let record = cfg.record_sent && self.shared.sent.has_room();
        let mut records = Vec::new();
        let out = &mut self.ws.get_mut().out;
        // Messages generated (for pacing), frames written, trades withheld, trades sent.
        let (mut n, mut sent, mut withheld, mut trades) = (0u64, 0u64, 0u64, 0u64);
        let id = self.id;
        while n < want && out.len() < BATCH_BYTES && n < BATCH_MESSAGES_MAX {
            let gi = self.active[self.rr];
            self.rr += 1;
            if self.rr == self.active.len() {
                self.rr = 0;
            }
            let g = &mut self.gens[gi];
            let is_trade = g.kind == DataType::Trade;
            let symbol = g.symbol().index;
            n += 1;
            // Empty but in withholding tests, so the flood path pays one branch.
            if is_trade && !self.withhold.is_empty() && self.withhold.iter().any(|(s, _)| *s == symbol) {
                let e = g.withhold(CLOCK);
                if let Some(ring) = g.ring_trades() {
                    self.trades.push_ring(symbol, ring, e.pos, e.seq, false);
                }
                withheld += 1;
                continue;
            }
            if !self.book_faults.is_empty() && g.kind == DataType::Book {
                if let Some(waiting) = self.book_faults.get_mut(&symbol) {
                    g.absorb_book_faults(waiting);
                    if waiting.is_empty() {
                        self.book_faults.remove(&symbol);
                    }
                }
            }
            // The map is empty but in gap tests, so the flood path pays one branch.
            let aimed = if self.gap_on.is_empty() { 0 } else { self.gap_on.get(&g.symbol().id).copied().unwrap_or(0) };
            let emitted = g.emit(out, self.gap_pending + aimed, CLOCK);
            if g.has_applied() {
                for fault in g.take_applied() {
                    self.shared.log(id, EventKind::FaultApplied { fault });
                }
            }
            if !emitted.written {
                // A dropped book delta: its sequence number is gone, the gap shows on the next.
                continue;
            }
            if emitted.sequenced {
                let after_withheld = (is_trade || g.kind == DataType::Book) && g.take_withheld_gap();
                if self.gap_pending + aimed > 0 || after_withheld {
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
            if is_trade {
                if let Some(ring) = g.ring_trades() {
                    self.trades.push_ring(symbol, ring, emitted.pos, emitted.seq, true);
                }
                self.last_trade_stream = Some(gi);
                trades += 1;
            }
            sent += 1;
        }
        let now = Instant::now();
        if sent > 0 {
            self.batches.push_back(Batch { end: out.len(), frames: sent, records });
            self.last_frame_at = now;
        }
        if let Some((_, done)) = &mut self.pace {
            *done += n;
        }
        self.data_count += sent;
        if withheld > 0 {
            self.shared.withheld_trades.fetch_add(withheld, Ordering::Relaxed);
        }
        self.trades_generated += trades + withheld;
        self.cadence.note(now, self.trades_generated);
        self.shared.trades.append(&mut self.trades);
        n
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
    /// `after_withheld`: the trade stream had withheld trades, so this frame shows their gap.
    fn push_fault_data(&mut self, start: usize, after_withheld: bool) {
        let out = &self.ws.get_ref().out;
        let records = if self.shared.config.record_sent && self.shared.sent.has_room() {
            vec![String::from_utf8_lossy(&out[start..]).into_owned()]
        } else {
            Vec::new()
        };
        self.batches.push_back(Batch { end: out.len(), frames: 1, records });
        self.data_count += 1;
        if self.gap_pending > 0 || after_withheld {
            self.shared.gaps_emitted.fetch_add(1, Ordering::Relaxed);
        }
        self.gap_pending = 0;
        self.last_frame_at = Instant::now();
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
                let (emitted, uuid, fields) = self.gens[gi].oversized_trade(out, self.gap_pending, bytes, CLOCK());
                let symbol = self.gens[gi].symbol().index;
                self.trades.push_single(symbol, uuid, &fields, true);
                self.shared.trades.append(&mut self.trades);
                self.trades_generated += 1;
                self.last_trade_stream = Some(gi);
                let after_withheld = self.gens[gi].take_withheld_gap();
                self.push_fault_data(emitted.start, after_withheld);
            }
            WsFault::DuplicateTrade => {
                let Some(gi) = self.last_trade_stream else {
                    log::warn!("sim DuplicateTrade ignored on connection {}: no trade sent yet", self.id);
                    return;
                };
                let out = &mut self.ws.get_mut().out;
                if let Some(emitted) = self.gens[gi].duplicate_last_trade(out, self.gap_pending) {
                    let after_withheld = self.gens[gi].take_withheld_gap();
                    self.push_fault_data(emitted.start, after_withheld);
                }
            }
            WsFault::WithholdTrades { symbol_id, duration } => {
                let Some(symbol) = self.shared.symbol(&symbol_id).map(|s| s.index) else {
                    log::warn!("sim WithholdTrades ignored on connection {}: unknown symbol {symbol_id}", self.id);
                    return;
                };
                let until = super::instant_after(duration);
                match self.withhold.iter_mut().find(|(s, _)| *s == symbol) {
                    Some((_, end)) => *end = (*end).max(until),
                    None => self.withhold.push((symbol, until)),
                }
            }
            WsFault::BookSnapshot { symbol_id } => self.book_fault(&symbol_id, |f| f.snapshot = true),
            WsFault::BookDropDeltas { symbol_id, count } => {
                self.book_fault(&symbol_id, |f| f.drop = f.drop.saturating_add(count))
            }
            WsFault::BookNegativeSize { symbol_id } => self.book_fault(&symbol_id, |f| f.negative = true),
            WsFault::BookDeltasBeforeSnapshot { symbol_id, count } => {
                self.book_fault(&symbol_id, |f| f.pre_snapshot = f.pre_snapshot.saturating_add(count))
            }
            // Routed to the accept loop by `FaultHub::inject`, and to the book models by
            // `Sim::inject`.
            WsFault::HugeFrameHeader { len } => {
                super::hostile::push_huge_frame_header(&mut self.ws.get_mut().out, len);
                self.last_frame_at = Instant::now();
            }
            WsFault::InvalidUtf8 => {
                super::hostile::push_invalid_utf8(&mut self.ws.get_mut().out);
                self.last_frame_at = Instant::now();
            }
            WsFault::DeepNesting { depth } => self.push_control_text(&format!(
                "{{\"type\":\"trade\",\"symbol_id\":\"SIM_DEEP\",\"deep\":{}",
                "[".repeat(depth)
            )),
            WsFault::TrickleFrame { bytes, interval } => self.trickle(bytes, interval),
            WsFault::RefuseUpgrade { .. }
            | WsFault::HangUpgrade
            | WsFault::UpgradeHeaderFlood { .. }
            | WsFault::UpgradeEndlessHeader
            | WsFault::BookCross { .. }
            | WsFault::BookSweep { .. }
            | WsFault::BookLevelFlood { .. } => {}
        }
    }

    /// Records a book fault for this connection's `book` stream of `symbol_id`.
    fn book_fault(&mut self, symbol_id: &str, update: impl FnOnce(&mut ViewFaults)) {
        match self.shared.symbol(symbol_id).map(|s| s.index) {
            Some(symbol) => update(self.book_faults.entry(symbol).or_default()),
            None => log::warn!("sim book fault ignored on connection {}: unknown symbol {symbol_id}", self.id),
        }
    }

    /// The trade rate to keep up during an outage: what this connection generated over about
    /// its last second, or (less than 100 ms of history) its share of `rate_per_sec`; at most
    /// `OUTAGE_TRADES_PER_SEC_MAX`.
    fn outage_trade_rate(&self, now: Instant) -> f64 {
        let trade_streams = self.active.iter().filter(|&&i| self.gens[i].kind == DataType::Trade).count();
        if !self.hello_seen || trade_streams == 0 {
            return 0.0;
        }
        let rate = self.cadence.per_sec(now, self.trades_generated).unwrap_or_else(|| {
            let configured = self.shared.config.rate_per_sec;
            if configured == 0 {
                OUTAGE_TRADES_PER_SEC_MAX
            } else {
                configured as f64 * trade_streams as f64 / self.active.len() as f64
            }
        });
        rate.min(OUTAGE_TRADES_PER_SEC_MAX)
    }

    /// After an outage dropped this connection: generates its trade streams (round robin) into
    /// the store, not streamed, `rate` trades per second, until the outage ends or the
    /// simulator stops. Exchange times follow the schedule (one trade every `1/rate` seconds
    /// from the start), not the moments this thread happens to wake up.
    fn run_outage(&mut self, rate: f64) {
        let streams: Vec<usize> =
            self.active.iter().copied().filter(|&i| self.gens[i].kind == DataType::Trade).collect();
        if streams.is_empty() || rate.is_nan() || rate <= 0.0 {
            return;
        }
        let started = Instant::now();
        let wall_start = OffsetDateTime::now_utc();
        let mut done: u64 = 0;
        let mut rr = 0;
        while !self.shared.stopping() {
            let now = Instant::now();
            let horizon = match self.shared.outage.until() {
                Some(until) => now.min(until),
                None => now,
            };
            let due = (horizon.saturating_duration_since(started).as_secs_f64() * rate) as u64;
            let mut n = 0;
            while done < due && n < BATCH_MESSAGES_MAX {
                let gi = streams[rr];
                rr = (rr + 1) % streams.len();
                // `as` saturates: no overflow whatever the rate.
                let offset = time::Duration::nanoseconds((done as f64 * 1e9 / rate) as i64);
                let at = wall_start.checked_add(offset).unwrap_or(wall_start);
                let g = &mut self.gens[gi];
                let (uuid, fields) = g.outage_trade(at);
                self.trades.push_single(g.symbol().index, uuid, &fields, false);
                done += 1;
                n += 1;
            }
            self.shared.trades.append(&mut self.trades);
            self.shared.outage_trades.fetch_add(n, Ordering::Relaxed);
            if n < BATCH_MESSAGES_MAX && !self.shared.outage.active(now) {
                return;
            }
            thread::sleep(OUTAGE_TICK);
        }
    }

    /// `TrickleFrame`: writes what is buffered, then the frame one byte every `interval` (this
    /// thread does nothing else meanwhile); a client that gives up ends the connection.
    fn trickle(&mut self, bytes: usize, interval: Duration) {
        let deadline = Instant::now() + END_DEADLINE;
        while self.ws.get_ref().pending() > 0 && Instant::now() < deadline && !self.shared.stopping() {
            if let Err(e) = self.ws.get_mut().drain() {
                self.end_with(EndAction::Abrupt, &format!("write error before a trickle: {e}"));
                return;
            }
        }
        self.commit();
        let frame = super::hostile::trickle_frame(bytes);
        let stream = self.ws.get_mut();
        let result = super::hostile::trickle(&self.shared, &mut stream.tcp, &frame, interval);
        stream.nonblocking = false;
        self.last_frame_at = Instant::now();
        if let Err(why) = result {
            self.end_with(EndAction::Abrupt, &format!("fault: trickle: {why}"));
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

/// A connection's recent trade rate: samples of its running trade count, one per
/// `CADENCE_STEP` at most, the last `CADENCE_SAMPLES` kept. Pure: time is passed in.
#[derive(Debug, Default)]
struct Cadence {
    samples: VecDeque<(Instant, u64)>,
}

impl Cadence {
    fn note(&mut self, now: Instant, total: u64) {
        if self.samples.back().is_some_and(|(at, _)| now.saturating_duration_since(*at) < CADENCE_STEP) {
            return;
        }
        if self.samples.len() == CADENCE_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now, total));
    }

    /// Trades per second from the newest sample at least `CADENCE_WINDOW` old (or the oldest)
    /// to `now`, when that spans at least `CADENCE_STEP`.
    fn per_sec(&self, now: Instant, total: u64) -> Option<f64> {
        let (at, count) = self
            .samples
            .iter()
            .rev()
            .find(|(at, _)| now.saturating_duration_since(*at) >= CADENCE_WINDOW)
            .or(self.samples.front())?;
        let span = now.saturating_duration_since(*at);
        if span < CADENCE_STEP {
            return None;
        }
        Some(total.saturating_sub(*count) as f64 / span.as_secs_f64())
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
    use super::*;

    /// The cadence is the rate over about the last second, ignores samples closer than a step,
    /// and knows nothing until a step of history exists.
    #[test]
    fn cadence_measures_the_last_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Cadence::default();
        assert_eq!(c.per_sec(at(0), 0), None);
        c.note(at(0), 0);
        assert_eq!(c.per_sec(at(50), 10), None);
        c.note(at(50), 10);
        assert_eq!(c.samples.len(), 1, "a sample within a step is ignored");
        // 100 trades/s for 3 s, then 1000 trades/s for the last second.
        let mut total = 0;
        for ms in (100..=3000).step_by(100) {
            total += 10;
            c.note(at(ms), total);
        }
        for ms in (3100..=4000).step_by(100) {
            total += 100;
            c.note(at(ms), total);
        }
        let rate = c.per_sec(at(4000), total).expect("history");
        assert!((rate - 1000.0).abs() < 1.0, "{rate}");
        assert!(c.samples.len() <= CADENCE_SAMPLES);
        // Silence since: the rate falls.
        let later = c.per_sec(at(6000), total).expect("history");
        assert!(later < 400.0, "{later}");
    }

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
