//! The reader thread: owns the WebSocket connection from TCP connect to close, and routes every
//! data frame to the worker that owns its symbol.
//!
//! Its one rule is that it keeps reading. It never blocks on a full channel for longer than
//! `--queue-wait-ms`: past that it sheds load (drops, counted per symbol) until the channel has
//! drained to half its capacity (`lanes::Lanes`), so pongs keep going out and CoinAPI's
//! server-side buffer never overflows because of us. The socket has a short read timeout (`READ_TICK`) so shutdown and
//! staleness are noticed between frames. Decoding is left to the workers: the reader only scans
//! a frame's `type` and `symbol_id`.
//!
//! Lifecycle: connect (bounded by `--connect-timeout`), hello, read until the connection ends,
//! then reconnect after a backoff (`backoff.rs`). Each connection has a generation number that
//! stamps its frames, because CoinAPI sequences are only valid within one connection.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tungstenite::client::ClientRequestBuilder;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Message, Utf8Bytes, WebSocket};

use crate::clock::unix_now_ns;
use crate::config::limits::{
    CLOSE_WAIT, CONNECT_SLICE, CONTROL_WAIT, READ_TICK, RECONNECT_NOTICE_DEFAULT, RECONNECT_NOTICE_MAX,
    UPGRADE_429_WAIT_DEFAULT, UPGRADE_RETRY_AFTER_MAX, WRITE_TIMEOUT, WS_READ_BUFFER_BYTES, WS_WRITE_BUFFER_MAX_BYTES,
};
use crate::config::{tls, IngestConfig};
use crate::lanes::{Dispatch, Lanes, Resyncs};
use crate::metrics::Metrics;
use crate::output::ndjson::{Batch, ConnectionEvent, ControlLine, TimestampFormatter};
use crate::shutdown::Shutdown;
use crate::wire::{self, DataType, FrameKind};

pub mod backoff;
pub mod deadline;
pub mod record;
pub mod recorder;
pub mod replay;

use backoff::{Backoff, BackoffPolicy};
use deadline::{MessageDeadline, Watch};
use record::Record;
use recorder::Tap;

/// The socket under TLS is wrapped in a deadline on whole messages (`deadline.rs`).
type Ws = WebSocket<MaybeTlsStream<MessageDeadline<TcpStream>>>;

/// Frames between two reads of the monotonic clock while data flows.
const CLOCK_EVERY_FRAMES: u32 = 1024;
/// Least time between two scope messages (subscribe/unsubscribe) on one connection: CoinAPI
/// allows about 10 hello/subscribe messages per 10 s per IP.
const SCOPE_INTERVAL: Duration = Duration::from_secs(2);
/// Streams one resync scope message names at most.
const SCOPE_BATCH_MAX: usize = 100;
/// After a `reconnect` notice, the replacement connection is opened this long before the
/// server's deadline (or at half the notice, if that is shorter).
const MOVE_MARGIN: Duration = Duration::from_secs(1);

/// How the reader ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReaderExit {
    /// Shutdown was requested; the connection was closed gracefully.
    Stopped,
    /// CoinAPI refused the key (or another condition retrying cannot fix).
    Fatal(String),
    /// The workers are gone (the writer stopped): nothing left to read for.
    PipelineGone,
}

/// Why one connection ended, deciding what happens next.
#[derive(Debug)]
enum SessionEnd {
    Stop,
    Retry(String),
    /// The server announced it will close this connection (`reconnect`): move without penalty.
    Moved(String),
    Fatal(String),
    PipelineGone,
}

enum ConnectError {
    Retry(String),
    /// Told to wait (429 on the upgrade).
    RetryAfter(Duration, String),
    Fatal(String),
    /// A stop was requested while connecting.
    Stopped,
}

pub struct Reader<'a> {
    config: &'a IngestConfig,
    metrics: &'a Metrics,
    shutdown: &'a Shutdown,
    lanes: Lanes<'a>,
    control: Sender<Batch>,
    tls: Arc<rustls::ClientConfig>,
    backoff: Backoff,
    rng: fastrand::Rng,
    generation: u64,
    timestamps: TimestampFormatter,
    /// A DNS lookup that outlived its connect attempt (see `resolve`).
    dns_in_flight: Option<Receiver<std::io::Result<Vec<SocketAddr>>>>,
    /// Data frames handed to `Lanes::dispatch`, for the test fault hook.
    dispatched: u64,
    /// Book streams the workers asked to resubscribe.
    resyncs: &'a Resyncs,
    /// Streams unsubscribed for a resync, to subscribe again with the next scope message.
    resubscribe: Vec<(DataType, String)>,
    /// When this connection last sent a scope message (subscribe/unsubscribe).
    last_scope_at: Option<Instant>,
    /// `--record`: every text frame and connection event is encoded here (never waited for).
    recorder: Option<Tap<'a>>,
    /// The current connection's message deadline (`deadline.rs`): told of each message.
    watch: Arc<Watch>,
}

impl std::fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("generation", &self.generation).finish()
    }
}

impl<'a> Reader<'a> {
    pub fn new(
        config: &'a IngestConfig,
        metrics: &'a Metrics,
        shutdown: &'a Shutdown,
        lanes: Lanes<'a>,
        control: Sender<Batch>,
        resyncs: &'a Resyncs,
    ) -> Reader<'a> {
        let policy = BackoffPolicy { cap: config.backoff_max, ..BackoffPolicy::default() };
        Reader {
            config,
            metrics,
            shutdown,
            lanes,
            control,
            tls: tls::client_config(&config.roots),
            backoff: Backoff::new(policy),
            // Seeded from the OS-seeded thread-local generator: two clients restarted together
            // must not retry in lockstep.
            rng: fastrand::Rng::new(),
            generation: 0,
            timestamps: TimestampFormatter::default(),
            dns_in_flight: None,
            dispatched: 0,
            resyncs,
            resubscribe: Vec::new(),
            last_scope_at: None,
            recorder: None,
            watch: Arc::new(Watch::default()),
        }
    }

    /// Records every text frame and connection event through `recorder` (`--record`).
    pub fn with_recorder(mut self, recorder: Option<&'a recorder::Queue>) -> Self {
        self.recorder = recorder.map(Tap::new);
        self
    }

    pub fn run(mut self) -> ReaderExit {
        loop {
            if self.shutdown.is_requested() {
                return ReaderExit::Stopped;
            }
            let delay = self.backoff.next_attempt(Instant::now(), &mut self.rng);
            if !delay.is_zero() {
                log::info!("reconnecting in {:.1}s (attempt {})", delay.as_secs_f64(), self.backoff.failures());
                if self.shutdown.wait_timeout(delay) {
                    return ReaderExit::Stopped;
                }
            }
            self.generation += 1;
            let generation = self.generation;
            self.metrics.connection_generation.set(generation);
            let ws = match self.connect() {
                Ok(ws) => ws,
                Err(ConnectError::Stopped) => return ReaderExit::Stopped,
                Err(ConnectError::Fatal(msg)) => {
                    log::error!("{msg}; not retrying");
                    self.connection_line(ConnectionEvent::ConnectFailed, &msg);
                    return ReaderExit::Fatal(msg);
                }
                Err(ConnectError::RetryAfter(wait, msg)) => {
                    log::warn!("connection {generation} refused: {msg}; waiting {:.1}s as told", wait.as_secs_f64());
                    self.connection_line(ConnectionEvent::ConnectFailed, &msg);
                    if self.shutdown.wait_timeout(wait) {
                        return ReaderExit::Stopped;
                    }
                    continue;
                }
                Err(ConnectError::Retry(msg)) => {
                    log::warn!("connection {generation} failed: {msg}");
                    self.connection_line(ConnectionEvent::ConnectFailed, &msg);
                    continue;
                }
            };
            self.metrics.connections.add(1);
            if self.metrics.connections.get() > 1 {
                self.metrics.reconnects.add(1);
            }
            self.backoff.on_connected(Instant::now());
            log::info!("connected to {} (generation {generation})", self.config.ws.url);
            let connected_at = self.connection_line(ConnectionEvent::Connected, "");
            // The hello subscribed everything afresh: no resync is left to do.
            self.resyncs.clear();
            self.resubscribe.clear();
            self.last_scope_at = Some(Instant::now());
            self.lanes.connected(generation, connected_at);
            self.metrics.last_message_unix_ms.set(unix_now_ns() as u64 / 1_000_000);
            self.metrics.connected.set(1);
            let end = self.session(ws);
            self.metrics.connected.set(0);
            match end {
                SessionEnd::Stop => {
                    self.connection_line(ConnectionEvent::Disconnected, "shutdown");
                    return ReaderExit::Stopped;
                }
                SessionEnd::PipelineGone => return ReaderExit::PipelineGone,
                SessionEnd::Fatal(msg) => {
                    log::error!("{msg}; not retrying");
                    self.connection_line(ConnectionEvent::Disconnected, &msg);
                    return ReaderExit::Fatal(msg);
                }
                SessionEnd::Moved(why) => {
                    log::info!("connection {generation} ended: {why}; reconnecting at once");
                    self.connection_line(ConnectionEvent::Disconnected, &why);
                    self.backoff.forgive();
                }
                SessionEnd::Retry(why) => {
                    log::warn!("connection {generation} lost: {why}");
                    self.connection_line(ConnectionEvent::Disconnected, &why);
                }
            }
        }
    }

    /// TCP connect, TLS, upgrade with the key header and hello, all within `--connect-timeout`.
    fn connect(&mut self) -> Result<Ws, ConnectError> {
        let cfg = self.config;
        let deadline = Instant::now() + cfg.connect_timeout;
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let addrs = self.resolve(deadline)?;
        let mut last_error = format!("{} resolved to no address", cfg.ws.host);
        let mut tcp = None;
        'addrs: for addr in addrs {
            // Connect in slices so a stop request is noticed within one slice; each slice is
            // far longer than any real round trip to CoinAPI.
            loop {
                let left = remaining();
                if left.is_zero() {
                    last_error = format!("tcp connect to {addr}: no answer within the connect timeout");
                    break 'addrs;
                }
                match TcpStream::connect_timeout(&addr, left.min(CONNECT_SLICE)) {
                    Ok(s) => {
                        tcp = Some(s);
                        break 'addrs;
                    }
                    Err(e) if e.kind() == ErrorKind::TimedOut => {
                        if self.shutdown.is_requested() {
                            return Err(ConnectError::Stopped);
                        }
                    }
                    Err(e) => {
                        last_error = format!("tcp connect to {addr}: {e}");
                        break;
                    }
                }
            }
        }
        let tcp = tcp.ok_or(ConnectError::Retry(last_error))?;
        let io = |e: std::io::Error| ConnectError::Retry(format!("socket setup: {e}"));
        tcp.set_nodelay(true).map_err(io)?;
        // The handshake (TLS and upgrade) reads through the short tick so a stop request is
        // noticed; the loop below resumes it until the connect deadline.
        tcp.set_read_timeout(Some(READ_TICK)).map_err(io)?;
        tcp.set_write_timeout(Some(remaining().max(Duration::from_millis(1)))).map_err(io)?;
        let control = tcp.try_clone().map_err(io)?;
        let (tcp, watch) = MessageDeadline::new(tcp);
        self.watch = watch;

        let uri = cfg
            .ws
            .url
            .parse()
            .map_err(|e| ConnectError::Fatal(format!("invalid WebSocket URL {}: {e}", cfg.ws.url)))?;
        let request = ClientRequestBuilder::new(uri).with_header("X-CoinAPI-Key", cfg.api_key.expose());
        let connector = if cfg.ws.tls { Connector::Rustls(self.tls.clone()) } else { Connector::Plain };
        let mut attempt = tungstenite::client_tls_with_config(request, tcp, Some(ws_config(cfg)), Some(connector));
        let mut ws = loop {
            match attempt {
                Ok((ws, _response)) => break ws,
                Err(HandshakeError::Interrupted(mid)) => {
                    if self.shutdown.is_requested() {
                        return Err(ConnectError::Stopped);
                    }
                    if remaining().is_zero() {
                        return Err(ConnectError::Retry(format!(
                            "no upgrade answer within the connect timeout ({:.1}s)",
                            cfg.connect_timeout.as_secs_f64()
                        )));
                    }
                    attempt = mid.handshake();
                }
                Err(HandshakeError::Failure(e)) => return Err(classify_handshake_error(e, cfg)),
            }
        };
        control.set_read_timeout(Some(READ_TICK)).map_err(io)?;
        control.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(io)?;
        self.watch.arm(cfg.stale_timeout);
        ws.send(Message::text(hello_message(cfg))).map_err(|e| ConnectError::Retry(format!("sending hello: {e}")))?;
        Ok(ws)
    }

    /// Resolves the host within the connect deadline. `getaddrinfo` cannot be interrupted, so
    /// it runs on a short-lived `dns` thread; at most one exists at a time (a lookup still
    /// running from an earlier attempt is waited for instead of starting another), and it ends
    /// by itself when the lookup returns. The one thread not joined, by necessity.
    fn resolve(&mut self, deadline: Instant) -> Result<Vec<SocketAddr>, ConnectError> {
        let host = &self.config.ws.host;
        let port = self.config.ws.port;
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let rx = match self.dns_in_flight.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let name = host.clone();
                thread::Builder::new()
                    .name("dns".into())
                    .spawn(move || {
                        let _ = tx.send((name.as_str(), port).to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
                    })
                    .map_err(|e| ConnectError::Retry(format!("cannot start a DNS lookup: {e}")))?;
                rx
            }
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(READ_TICK)) {
                Ok(Ok(addrs)) => return Ok(addrs),
                Ok(Err(e)) => return Err(ConnectError::Retry(format!("cannot resolve {host}: {e}"))),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ConnectError::Retry(format!("cannot resolve {host}: lookup failed")))
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.shutdown.is_requested() {
                        self.dns_in_flight = Some(rx);
                        return Err(ConnectError::Stopped);
                    }
                    if left.is_zero() {
                        self.dns_in_flight = Some(rx);
                        return Err(ConnectError::Retry(format!(
                            "DNS lookup of {host} took longer than the connect timeout"
                        )));
                    }
                }
            }
        }
    }

    /// Reads one connection until it ends.
    fn session(&mut self, ws: Ws) -> SessionEnd {
        // Set by a `reconnect` notice: keep reading this connection until then (or until the
        // server closes it), then move without a backoff penalty.
        let mut move_by: Option<Instant> = None;
        match (self.read_connection(ws, &mut move_by), move_by) {
            (SessionEnd::Retry(why), Some(_)) => SessionEnd::Moved(format!("{why} after a reconnect notice")),
            (end, _) => end,
        }
    }

    fn read_connection(&mut self, mut ws: Ws, move_by: &mut Option<Instant>) -> SessionEnd {
        let mut last_activity = Instant::now();
        let mut active = false;
        let mut frames_since_clock: u32 = 0;
        loop {
            if self.shutdown.is_requested() {
                return self.close(ws, SessionEnd::Stop);
            }
            if let Some(deadline) = *move_by {
                if Instant::now() >= deadline {
                    return self.close(ws, SessionEnd::Moved("moving before the server's reconnect deadline".into()));
                }
            }
            let read = ws.read();
            if read.is_ok() {
                self.watch.delivered();
            }
            match read {
                Ok(Message::Text(text)) => {
                    active = true;
                    frames_since_clock += 1;
                    let recv_unix_ns = self.record(&text);
                    match wire::classify(text.as_bytes()) {
                        FrameKind::Data => {
                            if !self.dispatch(text, recv_unix_ns) {
                                return SessionEnd::PipelineGone;
                            }
                        }
                        FrameKind::Heartbeat => self.metrics.heartbeats.add(1),
                        FrameKind::Error => {
                            let end = server_error(text.as_bytes());
                            return self.close(ws, end);
                        }
                        FrameKind::Reconnect => {
                            let within = reconnect_within(text.as_bytes());
                            let lead = within.saturating_sub(MOVE_MARGIN).max(within / 2);
                            log::info!(
                                "CoinAPI will move this connection within {:.0}s: switching in {:.1}s",
                                within.as_secs_f64(),
                                lead.as_secs_f64()
                            );
                            *move_by = Some(Instant::now() + lead);
                        }
                    }
                }
                Ok(Message::Binary(_)) => {
                    active = true;
                    self.metrics.received.add(1);
                    self.metrics.malformed.add(1);
                    log::warn!("skipped a binary frame (CoinAPI sends text only)");
                }
                Ok(Message::Ping(_)) => {
                    active = true;
                    // tungstenite queued the pong; send it now rather than on the next read.
                    let _ = ws.flush();
                }
                Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => active = true,
                Ok(Message::Close(frame)) => {
                    let why = frame
                        .map(|f| format!("closed by server ({} {})", f.code, f.reason))
                        .unwrap_or_else(|| "closed by server".into());
                    // Drive the close handshake to its end; the next read reports ConnectionClosed.
                    return self.close(ws, SessionEnd::Retry(why));
                }
                Err(tungstenite::Error::Io(e)) if deadline::overdue(&e).is_some() => {
                    // A message stuck half way: no close handshake can get past it.
                    return SessionEnd::Retry(e.to_string());
                }
                Err(tungstenite::Error::Io(e)) if is_tick(&e) => {
                    let _ = ws.flush();
                    frames_since_clock = CLOCK_EVERY_FRAMES;
                    if let Some(tap) = self.recorder.as_mut() {
                        tap.hand_over(self.metrics);
                    }
                }
                Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                    return SessionEnd::Retry("connection closed".into())
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    self.metrics.received.add(1);
                    self.metrics.malformed.add(1);
                    let why = match e {
                        tungstenite::error::CapacityError::MessageTooLong { size, max_size } => {
                            format!("oversized frame: {size} bytes exceed the {} limit", mib_text(max_size))
                        }
                        other => format!(
                            "oversized message refused ({other}), limit {} bytes",
                            self.config.max_message_bytes
                        ),
                    };
                    // The rest of that frame is still on the wire: no close handshake gets past it.
                    return SessionEnd::Retry(why);
                }
                Err(tungstenite::Error::Utf8(e)) => {
                    // RFC 6455 §8.1: an endpoint that receives invalid UTF-8 in a text message
                    // must fail the connection. Counted like any malformed frame.
                    self.metrics.received.add(1);
                    self.metrics.malformed.add(1);
                    return self.close(ws, SessionEnd::Retry(format!("text frame is not valid UTF-8 ({e})")));
                }
                Err(e) => return SessionEnd::Retry(format!("read error: {e}")),
            }
            if self.resyncs.wanted() || !self.resubscribe.is_empty() {
                self.resync_step(&mut ws, Instant::now());
            }
            // The monotonic clock is read on every tick but only every few frames while data
            // flows: staleness is measured in seconds, not nanoseconds.
            if frames_since_clock >= CLOCK_EVERY_FRAMES {
                frames_since_clock = 0;
                let now = Instant::now();
                if active {
                    active = false;
                    last_activity = now;
                    self.backoff.on_data(now);
                    self.metrics.last_message_unix_ms.set(unix_now_ns() as u64 / 1_000_000);
                } else if now.duration_since(last_activity) > self.config.stale_timeout {
                    let partial = self.watch.bytes_since_message();
                    if partial > 0 {
                        // Bytes trickling slower than the read tick: the same verdict as the
                        // deadline's (`deadline.rs`), and again no close gets past the half message.
                        let o = deadline::Overdue { waited: self.config.stale_timeout, bytes: partial };
                        return SessionEnd::Retry(o.to_string());
                    }
                    let why = format!(
                        "no message for {:.1}s (stale timeout {:.1}s)",
                        now.duration_since(last_activity).as_secs_f64(),
                        self.config.stale_timeout.as_secs_f64()
                    );
                    return self.close(ws, SessionEnd::Retry(why));
                }
            }
        }
    }

    /// Sends the next scope message of a book resync, at most one per `SCOPE_INTERVAL` (CoinAPI
    /// allows about 10 per 10 s per IP): first the unsubscribe of a batch of streams, then, one
    /// interval later, their subscribe, after which CoinAPI restarts each with a snapshot.
    fn resync_step(&mut self, ws: &mut Ws, now: Instant) {
        if self.last_scope_at.is_some_and(|t| now.duration_since(t) < SCOPE_INTERVAL) {
            return;
        }
        let (kind, streams) = if self.resubscribe.is_empty() {
            if !self.resyncs.wanted() {
                return;
            }
            ("unsubscribe", self.resyncs.take(SCOPE_BATCH_MAX))
        } else {
            ("subscribe", std::mem::take(&mut self.resubscribe))
        };
        // One message names one data type: its symbol list applies to every type it names.
        let data_type = streams[0].0;
        let (these, others): (Vec<_>, Vec<_>) = streams.into_iter().partition(|(t, _)| *t == data_type);
        for (t, symbol) in others {
            self.resyncs.request(t, &symbol);
        }
        let symbols: Vec<String> = these.iter().map(|(_, s)| format!("{s}$")).collect();
        let text = serde_json::json!({
            "type": kind,
            "subscribe_data_type": [data_type.as_str()],
            "subscribe_filter_symbol_id": symbols,
        })
        .to_string();
        log::info!("resync: {kind} {} for {} symbol(s): {}", data_type.as_str(), symbols.len(), preview_list(&symbols));
        if let Err(e) = ws.send(Message::text(text)) {
            log::warn!("resync: sending the {kind} failed: {e}");
        }
        self.last_scope_at = Some(now);
        if kind == "unsubscribe" {
            self.resubscribe = these;
        }
    }

    /// Counts one data frame, stamps it (with `recv_unix_ns` when the recorder already read the
    /// clock for it, so the recording and the line agree) and hands it to its worker (see
    /// `Lanes::dispatch`). False if the workers are gone.
    fn dispatch(&mut self, text: Utf8Bytes, recv_unix_ns: Option<i128>) -> bool {
        self.metrics.received.add(1);
        self.dispatched += 1;
        crate::fault::maybe_panic("reader", self.dispatched);
        let stamp = || recv_unix_ns.unwrap_or_else(unix_now_ns);
        self.lanes.dispatch(text, self.generation, stamp) != Dispatch::Gone
    }

    /// Records a text frame (when recording) with its receive time, which it returns for the
    /// frame's line. A full recorder queue is a counted drop: the reader never waits for the disk.
    fn record(&mut self, text: &Utf8Bytes) -> Option<i128> {
        let tap = self.recorder.as_mut()?;
        let recv_unix_ns = unix_now_ns();
        tap.record(&Record::Frame { recv_unix_ns, generation: self.generation, text: text.as_str() }, self.metrics);
        Some(recv_unix_ns)
    }

    /// Sends a WebSocket close and drives the close handshake for at most `CLOSE_WAIT`; data
    /// frames that arrive meanwhile are still delivered. Returns `end` unchanged.
    fn close(&mut self, mut ws: Ws, end: SessionEnd) -> SessionEnd {
        let _ = ws.close(None);
        let deadline = Instant::now() + CLOSE_WAIT;
        while Instant::now() < deadline {
            let read = ws.read();
            if read.is_ok() {
                self.watch.delivered();
            }
            match read {
                Ok(Message::Text(text)) => {
                    let recv_unix_ns = self.record(&text);
                    if wire::classify(text.as_bytes()) == FrameKind::Data && !self.dispatch(text, recv_unix_ns) {
                        return SessionEnd::PipelineGone;
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if is_tick(&e) => {}
                Err(_) => break,
            }
        }
        end
    }

    /// Writes a `connection` control line (best effort: counted if lost) and records it; returns
    /// its time, which is also the connection's start for the workers (one clock read, so a
    /// replay of the recording gives them the same).
    fn connection_line(&mut self, event: ConnectionEvent, reason: &str) -> i128 {
        let line = ControlLine::Connection {
            event,
            generation: self.generation,
            url: &self.config.ws.url,
            reason: Some(reason).filter(|r| !r.is_empty()),
        };
        let at_unix_ns = unix_now_ns();
        let mut batch = Batch::with_capacity(256);
        batch.push_control(&line, self.timestamps.format(at_unix_ns));
        if self.control.send_timeout(batch, CONTROL_WAIT).is_err() {
            self.metrics.control_lines_lost.add(1);
        }
        if let Some(tap) = self.recorder.as_mut() {
            let url = &self.config.ws.url;
            tap.record(
                &Record::Connection { at_unix_ns, generation: self.generation, event, url, reason },
                self.metrics,
            );
            tap.hand_over(self.metrics);
        }
        at_unix_ns
    }
}

/// `within_seconds` of a `reconnect` notice (CoinAPI's default of 10 s when missing or odd).
fn reconnect_within(frame: &[u8]) -> Duration {
    serde_json::from_slice::<serde_json::Value>(frame)
        .ok()
        .and_then(|v| v.get("within_seconds").and_then(serde_json::Value::as_f64))
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(RECONNECT_NOTICE_MAX.as_secs_f64())))
        .unwrap_or(RECONNECT_NOTICE_DEFAULT)
}

/// The first few entries of a list, for a log line.
fn preview_list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(",");
    if items.len() > SHOWN {
        s.push_str(",...");
    }
    s
}

/// `4 MiB` for whole mebibytes, else the bytes.
fn mib_text(bytes: usize) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

fn is_tick(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

/// The hello CoinAPI expects: key, heartbeats on, data types, and symbol filters (`SYMBOL$` for
/// an exact match, a bare prefix for `PREFIX*`). Contains the key: never log it.
pub fn hello_message(config: &IngestConfig) -> String {
    let types: Vec<&str> = config.data_types.iter().map(|t| t.as_str()).collect();
    let symbols: Vec<String> = config.symbols.iter().map(|s| s.wire()).collect();
    serde_json::json!({
        "type": "hello",
        "apikey": config.api_key.expose(),
        "heartbeat": true,
        "subscribe_data_type": types,
        "subscribe_filter_symbol_id": symbols,
    })
    .to_string()
}

/// Explicit WebSocket limits: CoinAPI messages are small, so a few MiB, not the 64 MiB default.
pub fn ws_config(config: &IngestConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(WS_WRITE_BUFFER_MAX_BYTES)
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes))
}

fn classify_handshake_error(e: tungstenite::Error, cfg: &IngestConfig) -> ConnectError {
    let timeout = cfg.connect_timeout;
    // A refused TLS handshake (certificate, version) is retried with the usual backoff like any
    // failed connect: a server's certificate can be fixed while we wait, and the backoff keeps
    // the attempts at most 10 per 10 s and 1 per --backoff-max at length.
    if let Some(tls_error) = tls::find_rustls_error(&e) {
        return ConnectError::Retry(tls::explain(tls_error, &cfg.ws.host, &cfg.roots));
    }
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let header_ms = |name: &str, scale: f64| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .map(|v| Duration::from_secs_f64((v * scale).min(UPGRADE_RETRY_AFTER_MAX.as_secs_f64())))
            };
            let wait =
                header_ms("X-WsRequestsPerIpLimit-RetryAfterMs", 0.001).or_else(|| header_ms("Retry-After", 1.0));
            match (status, wait) {
                (401 | 403, _) => {
                    ConnectError::Fatal(format!("CoinAPI refused the API key (HTTP {status} on the upgrade)"))
                }
                (_, Some(wait)) => ConnectError::RetryAfter(wait, format!("upgrade refused with HTTP {status}")),
                (429, None) => {
                    ConnectError::RetryAfter(UPGRADE_429_WAIT_DEFAULT, "upgrade refused with HTTP 429".into())
                }
                _ => ConnectError::Retry(format!("upgrade refused with HTTP {status}")),
            }
        }
        tungstenite::Error::Io(e) if is_tick(&e) => {
            ConnectError::Retry(format!("no upgrade answer within the connect timeout ({:.1}s)", timeout.as_secs_f64()))
        }
        // tungstenite parses the answer's head with room for 124 headers (`MAX_HEADERS`).
        tungstenite::Error::Capacity(tungstenite::error::CapacityError::TooManyHeaders) => {
            ConnectError::Retry("upgrade response has too many headers (more than 124)".into())
        }
        // tungstenite's `AttackCheck`: the head is over 64 KiB, or came in over 512 reads, or
        // in pieces averaging under 128 bytes; nothing more of it is read.
        tungstenite::Error::AttackAttempt => ConnectError::Retry(
            "upgrade response head refused: over 64 KiB (a huge header line?) or trickled in tiny pieces".into(),
        ),
        other => ConnectError::Retry(format!("upgrade failed: {other}")),
    }
}

/// Decides what a server `error` message means. CoinAPI closes the connection after any error.
fn server_error(frame: &[u8]) -> SessionEnd {
    let message = serde_json::from_slice::<serde_json::Value>(frame)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| "(no message)".to_string());
    let lower = message.to_ascii_lowercase();
    if (lower.contains("invalid") && lower.contains("key"))
        || lower.contains("unauthorized")
        || lower.contains("not authorized")
    {
        SessionEnd::Fatal(format!("CoinAPI refused the API key: {message}"))
    } else if lower.contains("maximum allowed buffered messages") {
        log::warn!("CoinAPI dropped us for reading too slowly (its buffer for this connection filled): {message}");
        SessionEnd::Retry(format!("server error: {message}"))
    } else {
        SessionEnd::Retry(format!("server error: {message}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RunArgs};
    use clap::Parser;

    fn config(args: &[&str]) -> IngestConfig {
        let mut argv = vec!["coinfeed"];
        argv.extend_from_slice(args);
        let args = RunArgs::try_parse_from(argv).expect("args");
        Config::from_args(&args, Some("KEY-1".into()), 2).expect("valid").ingest
    }

    #[test]
    fn hello_is_what_coinapi_expects() {
        let c = config(&["--symbols", "BITSTAMP_SPOT_BTC_USD,KRAKEN_SPOT_*", "--types", "trade,book20"]);
        let v: serde_json::Value = serde_json::from_str(&hello_message(&c)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "type": "hello", "apikey": "KEY-1", "heartbeat": true,
                "subscribe_data_type": ["trade", "book20"],
                "subscribe_filter_symbol_id": ["BITSTAMP_SPOT_BTC_USD$", "KRAKEN_SPOT_"],
            })
        );
    }

    #[test]
    fn server_errors_are_classified() {
        assert!(
            matches!(server_error(br#"{"type":"error","message":"Invalid API key"}"#), SessionEnd::Fatal(m) if m.contains("Invalid API key"))
        );
        assert!(matches!(
            server_error(
                br#"{"type":"error","message":"Reached maximum allowed buffered messages for this connection."}"#
            ),
            SessionEnd::Retry(_)
        ));
        assert!(matches!(server_error(br#"{"type":"error","message":"Something else"}"#), SessionEnd::Retry(_)));
        assert!(matches!(server_error(b"{garbage"), SessionEnd::Retry(m) if m.contains("no message")));
    }

    #[test]
    fn websocket_limits_are_explicit_and_small() {
        let c = config(&["--symbols", "A"]);
        let w = ws_config(&c);
        assert_eq!(w.max_message_size, Some(4 << 20));
        assert_eq!(w.max_frame_size, Some(4 << 20));
        assert!(w.max_write_buffer_size > w.write_buffer_size);
    }
}
