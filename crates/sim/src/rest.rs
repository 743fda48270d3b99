//! The simulator's REST server: a small blocking HTTP/1.1 server (`sim-rest` accept loop, one
//! `sim-rest-N` thread per connection, at most `MAX_CONNECTIONS`) answering the CoinAPI gap
//! recovery routes with keep-alive and `Content-Length`, the rate-limit headers, and the queued
//! REST faults. Bodies come from `gen`; requests are logged as `RestRequest` events.
//!
//! Every blocking call has a short timeout so `Hang` and `Slow` faults, idle keep-alive
//! connections and slow writers all notice shutdown within `TICK`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::gen::{self, SymbolInfo};
use super::{describe, EventKind, RestFault, Shared};

/// Credits in the simulated daily budget (a small CoinAPI plan).
pub(crate) const CREDITS_PER_DAY: i64 = 10_000;
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// Connections served at once; ureq pools a few per host.
const MAX_CONNECTIONS: usize = 32;
/// Socket timeout: the longest a REST thread goes without checking the stop flag.
const TICK: Duration = Duration::from_millis(20);
/// Request line plus headers; larger gets 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Request bodies are read and discarded up to this size; larger gets 413.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// An idle keep-alive connection is closed after this long.
const IDLE_KEEPALIVE: Duration = Duration::from_secs(60);
/// How long a closing connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_millis(200);
/// Items generated per response at most, whatever `limit` says.
const MAX_ITEMS: usize = 10_000;
/// Levels per side at most for `orderbooks/current`.
const MAX_LEVELS: usize = 1_000;
/// New trades (never sent on the WebSocket) at the head of every `trades/latest` answer.
const NEW_TRADES: usize = 3;
/// Trades in a `trades/latest` answer when the WebSocket has sent none for the symbol.
const TRADES_WITHOUT_OVERLAP: usize = 10;

pub(crate) fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    super::accept_connections(listener, &shared, "rest", MAX_CONNECTIONS, ACCEPT_POLL, |tcp, id| {
        let conn_shared = Arc::clone(&shared);
        thread::Builder::new().name(format!("sim-rest-{id}")).spawn(move || serve(&conn_shared, tcp, id))
    });
}

/// A parsed request head.
#[derive(Debug, Default)]
struct Request {
    method: String,
    target: String,
    http10: bool,
    /// Lower-case names.
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        match self.header("connection").map(str::to_ascii_lowercase) {
            Some(c) if c.split(',').any(|t| t.trim() == "close") => true,
            Some(c) if c.split(',').any(|t| t.trim() == "keep-alive") => false,
            _ => self.http10,
        }
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Response {
    fn json(status: u16, body: String) -> Response {
        Response { status, content_type: "application/json; charset=utf-8", headers: Vec::new(), body }
    }

    fn error(status: u16, message: &str) -> Response {
        Response::json(status, format!("{{\"error\":{}}}", gen::json_string(message)))
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        550 => "No Data",
        _ => "Status",
    }
}

enum HeadError {
    TooLarge,
    /// Closed, idle too long, shutdown or socket error: end the connection quietly.
    Gone,
}

/// Reads until a full request head is buffered; returns its length.
fn read_head(shared: &Shared, tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, HeadError> {
    let idle_since = Instant::now();
    let mut scanned: usize = 0;
    let mut chunk = [0u8; 4096];
    loop {
        let from = scanned.saturating_sub(3);
        if let Some(i) = memchr::memmem::find(&buf[from..], b"\r\n\r\n") {
            let end = from + i + 4;
            return if end > MAX_HEAD_BYTES { Err(HeadError::TooLarge) } else { Ok(end) };
        }
        scanned = buf.len();
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        if shared.stopping() || idle_since.elapsed() > IDLE_KEEPALIVE {
            return Err(HeadError::Gone);
        }
        match tcp.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Err(HeadError::Gone),
        }
    }
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let version = first.next()?;
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Some(Request { method, target, http10: version == "HTTP/1.0", headers })
}

/// The request line of a head that could not be parsed, for the log.
fn first_line_parts(buf: &[u8]) -> (String, String) {
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(&line[..line.len().min(256)]).into_owned();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    (method, target)
}

/// Writes all of `bytes`, retrying send timeouts until done or shutdown.
fn write_all(shared: &Shared, tcp: &mut TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        if shared.stopping() {
            return Err(io::Error::other("shutdown"));
        }
        match tcp.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_response(shared: &Shared, tcp: &mut TcpStream, resp: &Response, close: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        resp.status,
        reason_phrase(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (name, value) in &resp.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str(if close { "Connection: close\r\n\r\n" } else { "Connection: keep-alive\r\n\r\n" });
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(resp.body.as_bytes());
    write_all(shared, tcp, &bytes)
}

/// Sleeps `d` in ticks; false if shutdown interrupted it.
fn sleep_unless_stopped(shared: &Shared, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if shared.stopping() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(TICK));
    }
}

fn serve(shared: &Shared, mut tcp: TcpStream, id: u64) {
    let setup = tcp
        .set_nonblocking(false)
        .and_then(|()| tcp.set_nodelay(true))
        .and_then(|()| tcp.set_read_timeout(Some(TICK)))
        .and_then(|()| tcp.set_write_timeout(Some(TICK)));
    if let Err(e) = setup {
        log::warn!("sim rest socket setup failed: {e}");
        return;
    }
    let mut rng = fastrand::Rng::new();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let head_len = match read_head(shared, &mut tcp, &mut buf) {
            Ok(n) => n,
            Err(HeadError::Gone) => break,
            Err(HeadError::TooLarge) => {
                let (method, path) = first_line_parts(&buf);
                let resp = Response::error(431, "request headers too large");
                let _ = write_response(shared, &mut tcp, &resp, true);
                log_request(shared, id, &Request { method, target: path, ..Request::default() }, 431);
                break;
            }
        };
        let Some(req) = parse_head(&buf[..head_len]) else {
            let (method, path) = first_line_parts(&buf);
            let _ = write_response(shared, &mut tcp, &Response::error(400, "malformed request"), true);
            log_request(shared, id, &Request { method, target: path, ..Request::default() }, 400);
            break;
        };
        buf.drain(..head_len);
        // Requests are logged with their arrival time: pacing is judged as the server sees it.
        let arrived = Instant::now();
        if req.header("transfer-encoding").is_some() {
            let _ = write_response(
                shared,
                &mut tcp,
                &Response::error(501, "chunked request bodies are not supported"),
                true,
            );
            log_request(shared, id, &req, 501);
            break;
        }
        let body_len = match req.header("content-length").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) if n <= MAX_BODY_BYTES => n,
            Some(_) => {
                let _ = write_response(shared, &mut tcp, &Response::error(413, "request body too large"), true);
                log_request(shared, id, &req, 413);
                break;
            }
        };
        if !discard_body(shared, &mut tcp, &mut buf, body_len) {
            break;
        }
        let close = req.wants_close();
        let fault = shared.rest_faults.lock().pop_front();
        if let Some(fault) = &fault {
            shared.log(id, EventKind::FaultApplied { fault: describe(fault) });
        }
        let resp = match fault {
            Some(RestFault::Hang) => {
                // Logged now: nothing else will ever happen to this request.
                log_request_at(shared, id, &req, 0, arrived);
                super::hold(shared, tcp);
                return;
            }
            Some(RestFault::Slow(d)) => {
                if !sleep_unless_stopped(shared, d) {
                    break;
                }
                route(shared, &req, &mut rng)
            }
            Some(RestFault::Status { code, retry_after_secs, body }) => {
                let mut resp = Response::json(code, body);
                if let Some(secs) = retry_after_secs {
                    resp.headers.push(("Retry-After", secs.to_string()));
                }
                resp
            }
            Some(RestFault::Garbage) => Response {
                status: 200,
                content_type: "text/html",
                headers: Vec::new(),
                body: "<html><body><h1>502 Bad Gateway</h1>upstream sent garbage".to_string(),
            },
            None => route(shared, &req, &mut rng),
        };
        let written = write_response(shared, &mut tcp, &resp, close);
        log_request_at(shared, id, &req, resp.status, arrived);
        if written.is_err() || close {
            break;
        }
    }
    linger_close(shared, &mut tcp);
}

/// Lingering close: stop sending, then read what the client still had in flight (the rest of an
/// oversized head, say), so the kernel does not answer those bytes with a reset that could
/// destroy the response before the client reads it.
fn linger_close(shared: &Shared, tcp: &mut TcpStream) {
    let _ = tcp.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline && !shared.stopping() {
        match tcp.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
}

/// Reads and drops `len` body bytes (some may already be buffered). False if the peer left.
fn discard_body(shared: &Shared, tcp: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> bool {
    let buffered = len.min(buf.len());
    buf.drain(..buffered);
    let mut left = len - buffered;
    let mut chunk = [0u8; 4096];
    while left > 0 {
        if shared.stopping() {
            return false;
        }
        match tcp.read(&mut chunk[..left.min(4096)]) {
            Ok(0) => return false,
            Ok(n) => left -= n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
    true
}

fn log_request(shared: &Shared, id: u64, req: &Request, status: u16) {
    log_request_at(shared, id, req, status, Instant::now());
}

fn log_request_at(shared: &Shared, id: u64, req: &Request, status: u16, at: Instant) {
    shared.log_at(
        at,
        id,
        EventKind::RestRequest {
            method: req.method.clone(),
            path: req.target.clone(),
            headers: req.headers.clone(),
            status,
        },
    );
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=').or(Some((kv, "")))).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Parses an optional positive integer parameter.
fn positive(query: &str, name: &str) -> Result<Option<usize>, Response> {
    match query_param(query, name) {
        None => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Response::error(400, &format!("parameter {name} must be a positive integer, got {v:?}"))),
        },
    }
}

/// CoinAPI charges one credit per call, or one per 100 items when `limit` is given.
fn with_rate_limit(shared: &Shared, mut resp: Response, limit: Option<usize>) -> Response {
    let cost = limit.map_or(1, |l| l.div_ceil(100).max(1)) as i64;
    let remaining = shared.credits_remaining.fetch_sub(cost, Ordering::Relaxed) - cost;
    resp.headers.push(("X-RateLimit-Limit", CREDITS_PER_DAY.to_string()));
    resp.headers.push(("X-RateLimit-Remaining", remaining.to_string()));
    resp.headers.push(("X-RateLimit-Request-Cost", cost.to_string()));
    resp
}

fn route(shared: &Shared, req: &Request, rng: &mut fastrand::Rng) -> Response {
    if req.method != "GET" {
        return Response::error(405, "only GET is supported");
    }
    if req.header("x-coinapi-key").is_none_or(str::is_empty) {
        return Response::error(401, "Unauthorized: missing X-CoinAPI-Key header");
    }
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (kind, symbol_id) = match segments.as_slice() {
        ["v1", "trades", s, "latest"] => ("trades", *s),
        ["v1", "quotes", s, "current"] => ("quotes", *s),
        ["v1", "orderbooks", s, "current"] => ("orderbooks", *s),
        ["v1", "ohlcv", s, "latest"] => ("ohlcv", *s),
        _ => return Response::error(404, &format!("no route for {path}")),
    };
    let symbol_id = percent_decode(symbol_id);
    let Some(sym) = shared.symbol(&symbol_id) else {
        return Response::error(
            550,
            &format!("You requested specific single item that we don't have at this moment: {symbol_id}"),
        );
    };
    let now = OffsetDateTime::now_utc();
    let result = match kind {
        "trades" => trades_latest(shared, sym, query, now, rng),
        "quotes" => {
            let last = shared.recent_trades(&sym.id).into_iter().next();
            let body = gen::rest_quote(sym, last.as_ref().map(|(u, t)| (u.as_str(), &**t)), now, rng);
            Ok((Response::json(200, body), None))
        }
        "orderbooks" => positive(query, "limit_levels").map(|levels| {
            let n = levels.unwrap_or(shared.config.book_levels).min(MAX_LEVELS);
            (Response::json(200, gen::rest_orderbook(sym, n, now, rng)), None)
        }),
        _ => ohlcv_latest(sym, query, now, rng),
    };
    match result {
        Ok((resp, limit)) => with_rate_limit(shared, resp, limit),
        Err(resp) => resp,
    }
}

type Routed = Result<(Response, Option<usize>), Response>;

/// Newest first: a few trades the WebSocket never sent, then the last WebSocket trades of the
/// symbol (lower-case uuids) so recovery de-duplication has an overlap to work on.
fn trades_latest(
    shared: &Shared,
    sym: &SymbolInfo,
    query: &str,
    now: OffsetDateTime,
    rng: &mut fastrand::Rng,
) -> Routed {
    let limit = positive(query, "limit")?;
    let want = limit.unwrap_or(100).min(MAX_ITEMS);
    let overlap = shared.recent_trades(&sym.id);
    let n_new = if overlap.is_empty() { TRADES_WITHOUT_OVERLAP } else { NEW_TRADES };
    let fresh = gen::rest_new_trades(sym, n_new.min(want), now, rng);
    let mut body = String::with_capacity(want.min(64) * 256);
    body.push('[');
    let items =
        fresh.iter().map(|(u, t)| (u.as_str(), t)).chain(overlap.iter().map(|(u, t)| (u.as_str(), &**t))).take(want);
    for (i, (uuid, t)) in items.enumerate() {
        if i > 0 {
            body.push(',');
        }
        gen::push_rest_trade(&mut body, sym, uuid, t);
    }
    body.push(']');
    Ok((Response::json(200, body), limit))
}

fn ohlcv_latest(sym: &SymbolInfo, query: &str, now: OffsetDateTime, rng: &mut fastrand::Rng) -> Routed {
    let Some(period_id) = query_param(query, "period_id") else {
        return Err(Response::error(400, "parameter period_id is required"));
    };
    let Some(period_secs) = gen::period_seconds(period_id) else {
        return Err(Response::error(400, &format!("unknown period_id {period_id:?}")));
    };
    let limit = positive(query, "limit")?;
    let n = limit.unwrap_or(100).min(MAX_ITEMS);
    Ok((Response::json(200, gen::rest_ohlcv(sym, period_secs, n, now, rng)), limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_head_and_connection_semantics() {
        let req = parse_head(b"GET /v1/x?a=1 HTTP/1.1\r\nHost: h\r\nX-CoinAPI-Key: k\r\nConnection: Close\r\n\r\n")
            .expect("valid head");
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/v1/x?a=1");
        assert_eq!(req.header("x-coinapi-key"), Some("k"));
        assert!(req.wants_close());
        let req = parse_head(b"GET / HTTP/1.0\r\n\r\n").expect("valid head");
        assert!(req.wants_close());
        let req = parse_head(b"GET / HTTP/1.1\r\n\r\n").expect("valid head");
        assert!(!req.wants_close());
        assert!(parse_head(b"GARBAGE\r\n\r\n").is_none());
    }

    #[test]
    fn query_and_percent_decoding() {
        assert_eq!(query_param("limit=5&period_id=1MIN", "period_id"), Some("1MIN"));
        assert_eq!(query_param("limit=5", "period_id"), None);
        assert_eq!(percent_decode("A%5FB"), "A_B");
        assert_eq!(percent_decode("A%"), "A%");
        assert_eq!(percent_decode("A%4"), "A%4");
    }
}
