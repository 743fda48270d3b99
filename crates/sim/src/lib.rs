//! A built-in CoinAPI simulator: a WebSocket market-data server and a small REST server on
//! loopback that speak the protocol of `coinapi-protocol.md` byte for byte (the `hearbeat`
//! spelling, per-connection sequences per (type, symbol_id) from 1, exact long decimals), with
//! faults that tests and the standalone `coinfeed sim` command inject on demand.
//!
//! This module owns the public surface ([`Sim`], [`SimConfig`], the fault and event types) and
//! the state shared by the server threads. `ws` runs the WebSocket connections, `rest` the HTTP
//! server, `gen` produces the frames, `book` keeps the per-symbol order book models and the book
//! oracle, `market` keeps the per-symbol trade store, `record` keeps the observation records,
//! `cli` the standalone flags, `tls` the TLS front (`wss://`, `https://`). The simulator never uses the client's
//! types: it writes its wire text by hand so it is an independent witness. Production code never
//! imports it.
//!
//! # One market per symbol
//!
//! Every trade a connection generates for a symbol is appended to that symbol's trade store:
//! streamed, withheld by [`WsFault::WithholdTrades`], or generated while the connection is down
//! during a [`Sim::outage`]. REST `trades/latest` and `trades/history` answer from the store, so
//! a client that recovers a gap gets exactly the trades it missed, plus the overlap it must
//! de-duplicate; [`Sim::stored_trades`] shows tests the same truth. Two connections streaming one
//! symbol each append their own trades (they are two samples of one market).
//!
//! # One order book per symbol
//!
//! Each symbol has one L2 book model. In paced mode (`rate_per_sec` from 1 to 19,999) every
//! `book` and `book5/20/50` stream of every connection, and REST `orderbooks/current`, read it;
//! each book-family message steps it once. A `book` stream keeps a view of what it has sent:
//! a snapshot first (after every (re)start), then deltas of exactly the levels that changed, so
//! connections streaming one symbol agree. With `book_oracle_depths` set, [`Sim::book_oracle`]
//! records each view's top-of-book digest ([`book_top_digest`]) after every `book` message, for
//! tests to compare a client's book with. Ring mode (0 or from 20,000) keeps pre-built per-stream
//! books instead (not shared, no oracle), and `book_l3` always has its own per-stream book.
//!
//! Threads: `sim-ws` (accept) with one `sim-ws-N` per connection, `sim-rest` (accept) with one
//! `sim-rest-N` per connection. A connection dropped by an outage keeps its thread until the
//! outage ends, generating its trades into the store. All poll a shared stop flag at least every
//! few tens of milliseconds, so [`Sim::shutdown`] (also run on drop) joins everything well under
//! a second, even with stalled clients, hung upgrades, hung REST requests or an outage.

mod book;
pub mod cli;
mod gen;
mod hostile;
mod market;
mod record;
mod rest;
pub mod tls;
mod ws;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use book::{book_top_digest, canonical_decimal};
pub use gen::DEFAULT_SYMBOLS;

use gen::SymbolInfo;

/// Events kept by the log; older ones are dropped first.
const EVENT_LOG_CAPACITY: usize = 100_000;

/// Faults queued per connection (and for the next connection) before new ones are dropped.
const FAULT_QUEUE_CAPACITY: usize = 10_000;

/// Largest `trade_store_per_symbol` accepted: about 150 MB per symbol at worst (paced trades
/// take about 73 bytes each; flooded ones, stored as runs, almost nothing).
const TRADE_STORE_PER_SYMBOL_MAX: usize = 2_000_000;

/// Longest fault description kept in a `FaultApplied` event (a `Text` fault can be megabytes).
const FAULT_DESCRIPTION_MAX: usize = 200;

/// Simulator settings. Every limit has its default here.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Symbol ids served (opaque strings to the client).
    pub symbols: Vec<String>,
    /// Data messages per second per connection over all subscribed streams; 0 = flood.
    ///
    /// From 20,000 (and in flood) streams replay rings of 128 pre-built messages for up to a
    /// second, so replayed trades repeat their template's timestamps (with new uuids): many
    /// trades share one `time_exchange`, and paging `trades/history` through them needs a
    /// `limit` above the repeats. Recovery tests that page history want a paced rate.
    pub rate_per_sec: u64,
    /// Per connection: after this many data messages, send nothing but heartbeats.
    pub max_messages: Option<u64>,
    /// Keep the exact text of every data frame sent (at most `record_limit`).
    pub record_sent: bool,
    /// Bound of the sent-frame record.
    pub record_limit: usize,
    /// Levels per side of `book` / `book_l3` snapshots, and the cap of `book5/20/50`.
    pub book_levels: usize,
    /// WebSocket listen address (loopback only).
    pub ws_listen: SocketAddr,
    /// REST listen address (loopback only).
    pub rest_listen: SocketAddr,
    /// Silence after which a `hearbeat` is sent when the hello asked for them.
    pub heartbeat_after: Duration,
    /// Trades kept per symbol for REST `trades/latest` and `trades/history` (streamed, withheld
    /// and outage trades alike); the oldest go first. The default holds 200 s of a symbol at
    /// 1000 trades/s, about 15 MB per symbol when full in paced mode.
    pub trade_store_per_symbol: usize,
    /// A `book` stream sends a full snapshot (`is_snapshot: true`) instead of its next delta
    /// after every this many deltas (dropped ones included); 0 = never (only at (re)start).
    pub book_snapshot_every: u64,
    /// Depths of the book oracle's digests (see [`Sim::book_oracle`]); empty = no oracle.
    pub book_oracle_depths: Vec<usize>,
    /// Oracle entries kept at most; later ones are counted by [`Sim::book_oracle_dropped`].
    pub book_oracle_limit: usize,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        SimConfig {
            symbols: DEFAULT_SYMBOLS.iter().map(|s| s.to_string()).collect(),
            rate_per_sec: 1000,
            max_messages: None,
            record_sent: false,
            record_limit: 1_000_000,
            book_levels: 20,
            ws_listen: loopback,
            rest_listen: loopback,
            heartbeat_after: Duration::from_secs(1),
            trade_store_per_symbol: 200_000,
            book_snapshot_every: 0,
            book_oracle_depths: Vec::new(),
            book_oracle_limit: 1_000_000,
        }
    }
}

/// Largest `book_levels` accepted (a `book` snapshot of 1000 levels per side is ~80 KB).
const BOOK_LEVELS_MAX: usize = 1000;

/// Most `book_oracle_depths` accepted (each costs a digest per `book` message).
const BOOK_ORACLE_DEPTHS_MAX: usize = 16;

/// WebSocket faults. All but the two upgrade faults and the three book model faults are applied
/// by every live connection between two data batches (so in order with the data it already
/// sent); with no connection live they wait for the next one.
///
/// # Book faults
///
/// Each symbol has one order book model shared by every paced `book` and `book5/20/50` stream
/// and by REST `orderbooks/current`; a `book` stream keeps a view of what it has sent. The model
/// faults (`BookCross`, `BookSweep`, `BookLevelFlood`) change the model itself: they go straight
/// to it (not through the connections), are applied once at its next step (the next book-family
/// message of the symbol on any connection; logged as `FaultApplied` on that connection), and
/// every `book` view sees the change in its next delta. The others (`BookSnapshot`,
/// `BookDropDeltas`, `BookNegativeSize`, `BookDeltasBeforeSnapshot`) are per connection like
/// every other fault: each live connection (or the next one) applies its copy to its own `book`
/// stream of the symbol, and keeps it until it streams one. In ring mode (`rate_per_sec` 0 or
/// from 20,000) streams replay their own pre-built books: book faults other than `GapOn` do not
/// reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFault {
    /// The next sequenced data message skips `skip` sequence numbers on its stream.
    Gap { skip: u64 },
    /// The next sequenced data message of `symbol_id` (any type) skips `skip` sequence numbers.
    GapOn { symbol_id: String, skip: u64 },
    /// Send nothing at all (no data, no heartbeat, no pong) with the socket open, until `Resume`.
    Stall,
    /// End a `Stall`.
    Resume,
    /// Drop the TCP connection without a close frame (after what was already queued).
    AbruptClose,
    /// Clean WebSocket close.
    Close,
    /// `{"type":"reconnect","within_seconds":N,"before_time":"..."}`; the connection stays up.
    ReconnectNotice { within_seconds: u64 },
    /// `{"type":"error","message":"..."}` then a clean close (CoinAPI errors are permanent).
    Error { message: String },
    /// This exact text frame.
    Text(String),
    /// This binary frame.
    Binary(Vec<u8>),
    /// One trade frame of about `bytes` bytes (valid JSON, padded with a long string field). It
    /// is a real data message: it takes the next sequence number of its trade stream.
    Oversized { bytes: usize },
    /// A WebSocket Ping with this payload (truncated to 125 bytes); the Pong is logged.
    Ping(Vec<u8>),
    /// Resend the last trade's uuid under the next sequence number.
    DuplicateTrade,
    /// The next accepted upgrade is answered with this HTTP status (and
    /// `X-WsRequestsPerIpLimit-RetryAfterMs` if given). One injection, one refusal.
    RefuseUpgrade { status: u16, retry_after_ms: Option<u64> },
    /// The next accepted TCP connection never gets an upgrade answer (held until shutdown).
    HangUpgrade,
    /// For `duration` from when a connection applies it, that connection's trades of
    /// `symbol_id` are generated at their usual cadence, take their sequence numbers and go to
    /// the trade store (as not streamed), but are not sent: when the window ends the next trade
    /// frame shows the jump. Other streams and symbols are unaffected.
    WithholdTrades { symbol_id: String, duration: Duration },
    /// The next `book` message of `symbol_id` is a full snapshot (`is_snapshot: true`).
    BookSnapshot { symbol_id: String },
    /// The next `count` `book` deltas of `symbol_id` are applied to the model and to the
    /// stream's view but not sent; their sequence numbers are consumed, so the next message sent
    /// shows the jump (counted by [`Sim::gaps_emitted`]) and a client's book is really stale.
    /// A snapshot due meanwhile is sent (and ends the staleness). No oracle entries for them.
    BookDropDeltas { symbol_id: String, count: u64 },
    /// Model fault: a bid at the best ask's price (so best bid >= best ask) is added, carried by
    /// the next delta, and kept for `duration` from then; random changes leave it (and the asks
    /// at or below it) alone, ordinary deltas keep flowing; then a delta removes it (size 0).
    /// A second cross while one is on extends it.
    BookCross { symbol_id: String, duration: Duration },
    /// Model fault: one step removes the best ask (size 0) and adds a bid at that price, so one
    /// delta carries both: the final book is not crossed (the best ask is the next one, strictly
    /// above), but applying the bids before the asks crosses it in between. Waits while a
    /// `BookCross` is on; ignored when the model has fewer than two asks.
    BookSweep { symbol_id: String },
    /// The next `book` delta of `symbol_id` carries one extra entry with size `-0.5` for a level
    /// the stream's view holds (one of the best three of a side, not otherwise in the message);
    /// the rest is valid. Neither the model nor the view is changed by that entry.
    BookNegativeSize { symbol_id: String },
    /// The next time the `book` stream of `symbol_id` starts (subscribe, or unsubscribe +
    /// subscribe), it sends `count` deltas (the model's changes, which a client must discard)
    /// before its snapshot; sequences run from 1 through them, the snapshot follows.
    BookDeltasBeforeSnapshot { symbol_id: String, count: u64 },
    /// Model fault: the model gains `levels` new price levels, one price unit apart, half beyond
    /// the worst bid and half beyond the worst ask (at most 20,000 levels per side in all). They
    /// stay; `book` views receive them as deltas of at most 200 levels per message; snapshots
    /// and REST still show at most `book_levels` per side.
    BookLevelFlood { symbol_id: String, levels: usize },
    /// Hostile: a text frame header announcing `len` payload bytes (say 4 GiB), then 16 of
    /// them; the rest never comes, and whatever the connection sends next lands inside it.
    HugeFrameHeader { len: u64 },
    /// Hostile: one text frame (a heartbeat padded to `bytes` of payload) written one byte
    /// every `interval`; the connection sends nothing else (no data, no pong) meanwhile.
    TrickleFrame { bytes: usize, interval: Duration },
    /// Hostile: a text frame whose payload is not valid UTF-8.
    InvalidUtf8,
    /// Hostile: a trade-shaped text frame whose one extra field opens `depth` arrays (valid
    /// UTF-8, never closed).
    DeepNesting { depth: usize },
    /// Hostile upgrade fault: the next upgrade is answered `101` with `count` extra headers.
    UpgradeHeaderFlood { count: usize },
    /// Hostile upgrade fault: the next upgrade answer has one header line that never ends
    /// (written as fast as the client reads, until it gives up).
    UpgradeEndlessHeader,
}

impl WsFault {
    /// The symbol of a book model fault (applied to the shared model, not per connection).
    fn model_symbol(&self) -> Option<&str> {
        match self {
            WsFault::BookCross { symbol_id, .. }
            | WsFault::BookSweep { symbol_id }
            | WsFault::BookLevelFlood { symbol_id, .. } => Some(symbol_id),
            _ => None,
        }
    }
}

/// One entry of the book oracle ([`Sim::book_oracle`]): the state of one connection's `book`
/// stream view right after one message it sent, i.e. the book a client that applied that
/// connection's messages exactly holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookOracleEntry {
    /// The connection number, as in [`SimEvent::conn`].
    pub conn: u64,
    pub symbol_id: String,
    /// The message's sequence number.
    pub sequence: u64,
    /// [`book_top_digest`] of the view's best D levels per side, one per
    /// `SimConfig::book_oracle_depths` entry, in that order. Deltas sent before the stream's
    /// first snapshot (`BookDeltasBeforeSnapshot`) leave the view empty: a client discards them.
    pub digests: Vec<u64>,
    /// The view's best bid >= its best ask.
    pub crossed: bool,
}

/// REST faults, queued first in first out; each one answers exactly one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestFault {
    /// One response with this status, body, and `Retry-After` (seconds) if given.
    Status { code: u16, retry_after_secs: Option<u64>, body: String },
    /// Delay the response this long, then answer normally.
    Slow(Duration),
    /// Never answer (the connection is held until shutdown).
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
    /// Hostile: 200, chunked, with a body that never ends (written as fast as it is read).
    EndlessBody,
    /// Hostile: 200 with `Content-Length: bytes` (say 4 GiB), all of it sent unless the client
    /// stops reading.
    HugeBody { bytes: u64 },
    /// Hostile: the normal answer, written one byte every `interval`.
    Trickle { interval: Duration },
    /// Hostile: 200 with a body of `depth` `[` (never closed).
    DeepNesting { depth: usize },
    /// Hostile: `302 Found` to `location`.
    Redirect { location: String },
}

/// One entry of the simulator's timestamped log.
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub at: Instant,
    /// Connection number (WebSocket and REST connections share one counter, from 1).
    pub conn: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Upgrade accepted; headers with lower-case names.
    WsConnected {
        path: String,
        headers: Vec<(String, String)>,
    },
    /// Exact text of a hello, subscribe or unsubscribe message.
    Hello {
        text: String,
    },
    /// Any other message the client sent (binary messages as lossy UTF-8).
    ClientText {
        text: String,
    },
    Pong {
        payload: Vec<u8>,
    },
    /// Why the simulator's side of a WebSocket ended.
    WsClosed {
        reason: String,
    },
    FaultApplied {
        fault: String,
    },
    UpgradeRefused {
        status: u16,
    },
    /// A REST request: path includes the query, headers have lower-case names. Status 0 means
    /// no response was sent (a `Hang` fault).
    RestRequest {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        status: u16,
    },
}

/// Fault routing: live connections each get a copy; with none live, faults wait for the next.
#[derive(Debug, Default)]
pub(crate) struct FaultHub {
    live: Vec<(u64, Arc<Mutex<VecDeque<WsFault>>>)>,
    waiting: VecDeque<WsFault>,
    /// Upgrade faults, taken by the accept loop one per accepted connection.
    accept: VecDeque<WsFault>,
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() < FAULT_QUEUE_CAPACITY {
        queue.push_back(item);
    } else {
        log::warn!("sim fault queue full ({FAULT_QUEUE_CAPACITY}): fault dropped");
    }
}

impl FaultHub {
    fn inject(&mut self, fault: WsFault) {
        match fault {
            WsFault::RefuseUpgrade { .. }
            | WsFault::HangUpgrade
            | WsFault::UpgradeHeaderFlood { .. }
            | WsFault::UpgradeEndlessHeader => push_bounded(&mut self.accept, fault),
            _ if self.live.is_empty() => push_bounded(&mut self.waiting, fault),
            _ => {
                for (_, queue) in &self.live {
                    push_bounded(&mut queue.lock(), fault.clone());
                }
            }
        }
    }

    /// A connection goes live: it inherits the faults that were waiting for one.
    pub(crate) fn register(&mut self, conn: u64) -> Arc<Mutex<VecDeque<WsFault>>> {
        let queue = Arc::new(Mutex::new(self.waiting.drain(..).collect()));
        self.live.push((conn, Arc::clone(&queue)));
        queue
    }

    pub(crate) fn deregister(&mut self, conn: u64) {
        self.live.retain(|(id, _)| *id != conn);
    }

    pub(crate) fn take_accept_fault(&mut self) -> Option<WsFault> {
        self.accept.pop_front()
    }
}

/// Stands in for `now + d` when `d` overflows `Instant` (a fault of `Duration::MAX`).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `now + d`, saturating instead of panicking on absurd durations.
pub(crate) fn instant_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).or_else(|| now.checked_add(FAR_FUTURE)).unwrap_or(now)
}

/// A short, bounded description of a fault for the event log.
pub(crate) fn describe<T: fmt::Debug>(fault: &T) -> String {
    let mut s = format!("{fault:?}");
    if s.len() > FAULT_DESCRIPTION_MAX {
        let mut cut = FAULT_DESCRIPTION_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// One trade of the simulator's trade store, with the exact text REST serves for it (which is
/// the text its WebSocket frame carried, when it was streamed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTrade {
    /// Lower case (the WebSocket frame carried it in upper case).
    pub uuid: String,
    /// CoinAPI format, 7 fractional digits: `2017-03-18T22:42:21.3763342Z`.
    pub time_exchange: String,
    pub time_coinapi: String,
    /// Exact number text, as on the wire.
    pub price: String,
    pub size: String,
    pub taker_side: &'static str,
    /// Sent on a WebSocket (false: withheld by a fault, or generated during an outage).
    pub streamed: bool,
}

/// When the current outage ends, and how many outages began (connections compare the count
/// with the one they started under to learn that they must drop).
#[derive(Debug, Default)]
pub(crate) struct Outage {
    until: Mutex<Option<Instant>>,
    epoch: AtomicU64,
}

impl Outage {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn active(&self, now: Instant) -> bool {
        self.until.lock().is_some_and(|until| now < until)
    }

    /// The end of the current (or last) outage.
    pub(crate) fn until(&self) -> Option<Instant> {
        *self.until.lock()
    }

    fn begin(&self, until: Instant) {
        {
            let mut current = self.until.lock();
            *current = Some(current.map_or(until, |u| u.max(until)));
        }
        // After `until` is set: a connection admitted under the old epoch sees the new one and
        // drops; one that reads the new epoch finds the outage active and is refused.
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// State shared by every simulator thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) symbols: Vec<Arc<SymbolInfo>>,
    stop: AtomicBool,
    pub(crate) events: record::EventLog,
    pub(crate) sent: record::SentLog,
    pub(crate) data_sent: AtomicU64,
    /// Sequence gaps written into generated data (`Gap` and `GapOn` faults consumed).
    pub(crate) gaps_emitted: AtomicU64,
    pub(crate) faults: Mutex<FaultHub>,
    pub(crate) rest_faults: Mutex<VecDeque<RestFault>>,
    /// Every trade generated, per symbol (indexed like `symbols`).
    pub(crate) trades: market::TradeStore,
    /// Trades generated but not sent because of `WithholdTrades`.
    pub(crate) withheld_trades: AtomicU64,
    /// Trades generated while connections were down during an outage.
    pub(crate) outage_trades: AtomicU64,
    pub(crate) outage: Outage,
    next_conn: AtomicU64,
    /// REST credits left in the simulated daily budget (may go negative, as on CoinAPI).
    pub(crate) credits_remaining: AtomicI64,
    /// One L2 book model per symbol (indexed like `symbols`).
    pub(crate) books: Vec<Arc<Mutex<book::BookModel>>>,
    pub(crate) book_oracle: Arc<book::OracleLog>,
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(crate) fn log(&self, conn: u64, kind: EventKind) {
        self.log_at(Instant::now(), conn, kind);
    }

    pub(crate) fn log_at(&self, at: Instant, conn: u64, kind: EventKind) {
        self.events.push(SimEvent { at, conn, kind });
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn symbol(&self, id: &str) -> Option<&Arc<SymbolInfo>> {
        self.symbols.iter().find(|s| s.id == id)
    }
}

/// A running simulator. Dropping it shuts it down.
pub struct Sim {
    shared: Arc<Shared>,
    ws_addr: SocketAddr,
    rest_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("ws_addr", &self.ws_addr)
            .field("rest_addr", &self.rest_addr)
            .field("data_sent", &self.data_sent())
            .field("threads", &self.threads.len())
            .finish()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The simulator is a test tool: it must never be reachable from another machine.
fn check_loopback(what: &str, addr: SocketAddr) -> io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(invalid(format!(
            "sim {what} address {addr} is not loopback: the simulator only listens on 127.0.0.1 or ::1"
        )))
    }
}

fn bind(what: &str, addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("sim cannot bind {what} on {addr}: {e}")))?;
    // Accept loops poll so they notice shutdown without a wake-up connection.
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

impl Sim {
    /// Binds both listeners and starts the server threads.
    pub fn start(config: SimConfig) -> io::Result<Sim> {
        check_loopback("websocket listen", config.ws_listen)?;
        check_loopback("rest listen", config.rest_listen)?;
        if config.symbols.is_empty() {
            return Err(invalid("sim needs at least one symbol".to_string()));
        }
        if config.symbols.iter().any(|s| s.is_empty()) {
            return Err(invalid("sim symbol ids must not be empty".to_string()));
        }
        if config.book_levels == 0 || config.book_levels > BOOK_LEVELS_MAX {
            return Err(invalid(format!("sim book_levels {} is outside 1..={BOOK_LEVELS_MAX}", config.book_levels)));
        }
        if config.trade_store_per_symbol == 0 || config.trade_store_per_symbol > TRADE_STORE_PER_SYMBOL_MAX {
            return Err(invalid(format!(
                "sim trade_store_per_symbol {} is outside 1..={TRADE_STORE_PER_SYMBOL_MAX}",
                config.trade_store_per_symbol
            )));
        }
        if config.book_oracle_depths.len() > BOOK_ORACLE_DEPTHS_MAX {
            return Err(invalid(format!("sim book_oracle_depths has more than {BOOK_ORACLE_DEPTHS_MAX} entries")));
        }
        if config.heartbeat_after.is_zero() {
            return Err(invalid("sim heartbeat_after must be positive".to_string()));
        }
        let (ws_listener, ws_addr) = bind("websocket", config.ws_listen)?;
        let (rest_listener, rest_addr) = bind("rest", config.rest_listen)?;
        let mut symbols: Vec<Arc<SymbolInfo>> = Vec::new();
        for id in &config.symbols {
            if !symbols.iter().any(|s| &s.id == id) {
                symbols.push(Arc::new(SymbolInfo::new(id, symbols.len())));
            }
        }
        let books = symbols
            .iter()
            .map(|s| Arc::new(Mutex::new(book::BookModel::new(s, config.book_levels, fastrand::Rng::new()))))
            .collect();
        let book_oracle = Arc::new(book::OracleLog::new(config.book_oracle_depths.clone(), config.book_oracle_limit));
        let shared = Arc::new(Shared {
            sent: record::SentLog::new(if config.record_sent { config.record_limit } else { 0 }),
            trades: market::TradeStore::new(symbols.len(), config.trade_store_per_symbol),
            config,
            symbols,
            stop: AtomicBool::new(false),
            events: record::EventLog::new(EVENT_LOG_CAPACITY),
            data_sent: AtomicU64::new(0),
            gaps_emitted: AtomicU64::new(0),
            faults: Mutex::new(FaultHub::default()),
            rest_faults: Mutex::new(VecDeque::new()),
            withheld_trades: AtomicU64::new(0),
            outage_trades: AtomicU64::new(0),
            outage: Outage::default(),
            next_conn: AtomicU64::new(1),
            credits_remaining: AtomicI64::new(rest::CREDITS_PER_DAY),
            books,
            book_oracle,
        });
        let mut sim = Sim { shared: Arc::clone(&shared), ws_addr, rest_addr, threads: Vec::new() };
        let ws_shared = Arc::clone(&shared);
        sim.threads.push(
            std::thread::Builder::new()
                .name("sim-ws".to_string())
                .spawn(move || ws::accept_loop(ws_listener, ws_shared))?,
        );
        // On failure `sim` drops here, which stops and joins the WebSocket thread.
        sim.threads.push(
            std::thread::Builder::new()
                .name("sim-rest".to_string())
                .spawn(move || rest::accept_loop(rest_listener, shared))?,
        );
        Ok(sim)
    }

    /// `ws://127.0.0.1:PORT/v1/`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/", self.ws_addr)
    }

    /// `http://127.0.0.1:PORT`
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.rest_addr)
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    pub fn rest_addr(&self) -> SocketAddr {
        self.rest_addr
    }

    /// Applied by every live connection in order with its data stream; with no connection live,
    /// by the next one. Upgrade faults apply to the next accepted connection.
    /// Book model faults go to the symbol's model (see [`WsFault`]).
    pub fn inject(&self, fault: WsFault) {
        if let Some(symbol_id) = fault.model_symbol() {
            match self.shared.symbol(symbol_id) {
                Some(sym) => self.shared.books[sym.index].lock().inject(fault),
                None => log::warn!("sim {} ignored: unknown symbol", describe(&fault)),
            }
            return;
        }
        self.shared.faults.lock().inject(fault);
    }

    /// Queued first in first out; each fault answers one REST request.
    pub fn rest_fault(&self, fault: RestFault) {
        push_bounded(&mut self.shared.rest_faults.lock(), fault);
    }

    /// A copy of the event log.
    pub fn events(&self) -> Vec<SimEvent> {
        self.shared.events.snapshot()
    }

    /// Waits until `pred` holds on the event log (re-checked on every new event) or `timeout`
    /// passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[SimEvent]) -> bool) -> bool {
        self.shared.events.wait_for(timeout, pred)
    }

    /// Exact text of the data frames sent (when `record_sent`), in send order across connections.
    pub fn sent_frames(&self) -> Vec<String> {
        self.shared.sent.snapshot()
    }

    /// Data frames handed to the kernel so far, all connections.
    pub fn data_sent(&self) -> u64 {
        self.shared.data_sent.load(Ordering::Relaxed)
    }

    /// Sequence gaps the simulator has written into generated data so far (each consumed `Gap` or
    /// `GapOn` fault is one, however many numbers it skipped, and so is the first trade sent after
    /// a stretch of withheld ones). Faults injected before the previous
    /// ones were consumed merge into one gap, so a test that wants N distinct gaps waits on this.
    pub fn gaps_emitted(&self) -> u64 {
        self.shared.gaps_emitted.load(Ordering::Relaxed)
    }

    /// A WebSocket outage of `duration` from now (an overlapping one extends it): every live
    /// connection is dropped abruptly (what it had queued is flushed, then TCP goes without a
    /// close frame, as `AbruptClose`), and upgrades are answered with HTTP 503 until it ends,
    /// each logged as `UpgradeRefused { status: 503 }`. Faults injected meanwhile wait for the
    /// next connection. The REST server stays up.
    ///
    /// The market goes on: each dropped connection keeps generating its trade streams into the
    /// trade store (as not streamed) at the trade rate it had over its last second (at most
    /// 20,000 trades/s per connection), with exchange times spread over the outage, until the
    /// outage ends. New connections start their sequences at 1, as on CoinAPI. Logged as a
    /// `FaultApplied` event on connection 0.
    pub fn outage(&self, duration: Duration) {
        self.shared.outage.begin(instant_after(duration));
        self.shared.log(0, EventKind::FaultApplied { fault: format!("Outage {{ duration: {duration:?} }}") });
    }

    /// The trade store of a symbol, oldest first (store order, which is generation order);
    /// empty for a symbol the simulator does not serve.
    pub fn stored_trades(&self, symbol_id: &str) -> Vec<StoredTrade> {
        let Some(sym) = self.shared.symbol(symbol_id) else {
            return Vec::new();
        };
        let time_text = |ticks: i64| {
            let mut s = String::with_capacity(28);
            gen::push_ticks(&mut s, ticks);
            s
        };
        self.shared
            .trades
            .all(sym.index)
            .iter()
            .map(|v| StoredTrade {
                uuid: gen::uuid_string(v.uuid, false),
                time_exchange: time_text(v.time_exchange),
                time_coinapi: time_text(v.time_coinapi),
                price: v.price.to_string(),
                size: v.size.to_string(),
                taker_side: v.taker_side,
                streamed: v.streamed,
            })
            .collect()
    }

    /// How many trades the store holds for a symbol (cheap: for waiting on).
    pub fn stored_trade_count(&self, symbol_id: &str) -> usize {
        self.shared.symbol(symbol_id).map_or(0, |sym| self.shared.trades.len(sym.index))
    }

    /// Trades generated but not sent because of `WsFault::WithholdTrades`, all connections.
    pub fn withheld_trades(&self) -> u64 {
        self.shared.withheld_trades.load(Ordering::Relaxed)
    }

    /// Trades generated into the store by connections dropped by [`Sim::outage`].
    pub fn outage_trades(&self) -> u64 {
        self.shared.outage_trades.load(Ordering::Relaxed)
    }

    /// The book oracle log (empty unless `SimConfig::book_oracle_depths` is set): one entry per
    /// `book` message sent (snapshots and deltas, every connection, in generation order per
    /// connection), describing that stream's view right after it. Dropped deltas
    /// (`BookDropDeltas`) have none. At most `book_oracle_limit` entries are kept (the first).
    pub fn book_oracle(&self) -> Vec<BookOracleEntry> {
        self.shared.book_oracle.snapshot()
    }

    /// Oracle entries not kept because `book_oracle_limit` was reached.
    pub fn book_oracle_dropped(&self) -> u64 {
        self.shared.book_oracle.dropped()
    }

    /// Levels the symbol's book model holds now, (bids, asks); `None` for a symbol the
    /// simulator does not serve.
    pub fn book_depth(&self, symbol_id: &str) -> Option<(usize, usize)> {
        let sym = self.shared.symbol(symbol_id)?;
        Some(self.shared.books[sym.index].lock().len())
    }

    /// Stops and joins every thread. Returns within a few tens of milliseconds.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                log::error!("sim thread panicked");
            }
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Joins finished connection threads so the handle list stays bounded.
/// The accept loop both servers share: accepts until the simulator stops (polling every
/// `poll`, the listener being nonblocking), starts one connection thread per client through
/// `start` (named by it), refuses clients beyond `max_connections` open ones, reaps finished
/// threads as it goes and joins the rest at the end.
pub(crate) fn accept_connections(
    listener: std::net::TcpListener,
    shared: &Shared,
    kind: &str,
    max_connections: usize,
    poll: Duration,
    mut start: impl FnMut(std::net::TcpStream, u64) -> io::Result<JoinHandle<()>>,
) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping() {
        match listener.accept() {
            Ok((tcp, peer)) => {
                reap(&mut conns);
                if conns.len() >= max_connections {
                    log::warn!("sim {kind} refusing {peer}: {max_connections} connections open");
                    continue;
                }
                match start(tcp, shared.next_conn_id()) {
                    Ok(handle) => conns.push(handle),
                    Err(e) => log::warn!("sim {kind} cannot spawn connection thread: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(poll),
            Err(e) => {
                log::warn!("sim {kind} accept failed: {e}");
                std::thread::sleep(poll);
            }
        }
    }
    join_all(conns);
}

pub(crate) fn reap(handles: &mut Vec<JoinHandle<()>>) {
    let mut i = 0;
    while i < handles.len() {
        if handles[i].is_finished() {
            if handles.swap_remove(i).join().is_err() {
                log::error!("sim connection thread panicked");
            }
        } else {
            i += 1;
        }
    }
}

/// Joins every connection thread (they watch the same stop flag).
pub(crate) fn join_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        if h.join().is_err() {
            log::error!("sim connection thread panicked");
        }
    }
}

/// Holds a connection without answering until the peer leaves or the simulator stops (the hang
/// faults); returns which. The socket must have a read timeout so the stop flag is seen.
pub(crate) fn hold(shared: &Shared, mut tcp: std::net::TcpStream) -> &'static str {
    use std::io::Read;
    let mut sink = [0u8; 4096];
    while !shared.stopping() {
        match tcp.read(&mut sink) {
            Ok(0) => return "peer closed",
            // Whatever the peer sends is ignored: nothing is ever answered.
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return "peer reset",
        }
    }
    "shutdown"
}
