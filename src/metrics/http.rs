//! The metrics endpoint's thread body: `GET /metrics` (the Prometheus page of `prometheus.rs`)
//! and `GET /health` (200 or 503 with the reason) over plain HTTP/1.1, one connection at a
//! time, one request per connection. `app.rs` binds the listener and spawns the thread; this
//! file owns the loop, the limits on a connection and the health verdict.
//!
//! The pipeline never waits on this thread: a scrape reads the registry's atomics (and the
//! drop map's lock for a copy), nothing more, so a slow scraper slows only other scrapers.
//! The thread waits for a scraper in a blocking accept (a scrape is answered at once, not at
//! the next poll), and whoever stops it connects once (`wake`) after requesting the stop. Every
//! other blocking call is bounded: each socket call waits at most a `TICK`, so a stop is
//! noticed within one even mid-connection; a request
//! head must arrive whole within `HEAD_TIMEOUT` and `HEAD_MAX_BYTES`, a write that makes no
//! progress for `WRITE_TIMEOUT` ends the connection, and no connection lives longer than
//! `CONNECTION_TIMEOUT`. The head is parsed by `httparse` (hyper's parser); any body is ignored.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown as Direction, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::clock;
use crate::config::limits::DROP_SYMBOLS_MAX;
use crate::metrics::prometheus::{self, Labelled};
use crate::metrics::{proc, Metrics, Snapshot};
use crate::shutdown::Shutdown;

/// The longest any wait of this thread lasts before it looks at the stop flag again: the
/// listener's poll and each socket read or write.
pub const TICK: Duration = Duration::from_millis(50);
/// A request head must be complete this long after the connection was accepted: a client that
/// connects and says nothing holds the (single) endpoint for no longer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// A response write that makes no progress for this long ends the connection: a scraper that
/// stopped reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// No connection lives longer, whatever it does (a scraper reading a byte a second).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read (a scraper's is ~200 bytes); larger is answered 431.
pub const HEAD_MAX_BYTES: usize = 8 * 1024;
/// The most headers a request may have; more is answered 431.
pub const HEADERS_MAX: usize = 64;
/// After the response, what the client still sends is read and discarded for at most this long
/// and this many bytes, so the close is not a reset (below).
pub const LINGER: Duration = Duration::from_millis(100);
pub const LINGER_MAX_BYTES: usize = 64 * 1024;

/// The content type of the text exposition format the page is written in.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// What `/health` judges by, and when the process started (for the page's uptime).
#[derive(Debug, Clone, Copy)]
pub struct HealthRules {
    /// Healthy only while a message (data or heartbeat) arrived within this (`--stale-timeout`).
    pub stale_timeout: Duration,
    /// When the process started.
    pub started: Instant,
}

/// Serves `listener` until `shutdown` is requested, one connection at a time.
pub fn run(listener: TcpListener, metrics: &Metrics, rules: &HealthRules, shutdown: &Shutdown) {
    if let Err(e) = listener.set_nonblocking(false) {
        log::error!("metrics endpoint not serving: its listener cannot be made blocking: {e}");
        return;
    }
    let addr = listener.local_addr().map_or_else(|_| "(unknown address)".to_string(), |a| a.to_string());
    log::info!("metrics endpoint serving http://{addr}/metrics and /health");
    let mut head = vec![0; HEAD_MAX_BYTES];
    let mut connections: u64 = 0;
    // Logged once per kind in a row: a persistent failure (out of file descriptors) would
    // otherwise log every tick.
    let mut last_accept_error: Option<io::ErrorKind> = None;
    while !shutdown.is_requested() {
        match listener.accept() {
            Ok((stream, peer)) => {
                if shutdown.is_requested() {
                    // `wake`'s connection, or a scraper arriving as the run ends.
                    break;
                }
                last_accept_error = None;
                connections += 1;
                match serve(stream, &mut head, metrics, rules, shutdown) {
                    Ok(status) => log::debug!("metrics endpoint answered {status} to {peer}"),
                    Err(e) => log::debug!("metrics endpoint: connection from {peer} ended without an answer: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if last_accept_error != Some(e.kind()) {
                    log::warn!("metrics endpoint: accept failed, retrying every {} ms: {e}", TICK.as_millis());
                    last_accept_error = Some(e.kind());
                }
                shutdown.wait_timeout(TICK);
            }
        }
    }
    log::info!("metrics endpoint stopped after {connections} connections");
}

/// How long `wake` tries to connect.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Wakes `run` from its accept so it sees the stop requested before: one connection to the
/// listener's address (loopback for a wildcard one).
pub fn wake(addr: SocketAddr) {
    let addr = if addr.ip().is_unspecified() { SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()) } else { addr };
    if let Err(e) = TcpStream::connect_timeout(&addr, WAKE_TIMEOUT) {
        log::warn!("metrics endpoint: cannot wake it to stop ({addr}: {e})");
    }
}

/// Why `/health` is healthy (`Ok`) or not (`Err`), as the text of the answer: connected, and a
/// message (data or heartbeat) within `stale_timeout` of `now_unix_ms`.
pub fn health(snapshot: &Snapshot, stale_timeout: Duration, now_unix_ms: u64) -> Result<String, String> {
    let generation = snapshot.connection_generation;
    if snapshot.connected != 1 {
        return Err(format!("not connected (generation {generation})"));
    }
    // `u64::MAX` until the first message (an optional gauge).
    if snapshot.last_message_unix_ms == u64::MAX {
        return Err(format!("connected but no message yet (generation {generation})"));
    }
    let age = Duration::from_millis(now_unix_ms.saturating_sub(snapshot.last_message_unix_ms));
    if age > stale_timeout {
        return Err(format!(
            "no message for {:.1}s (stale timeout {:.1}s, generation {generation})",
            age.as_secs_f64(),
            stale_timeout.as_secs_f64()
        ));
    }
    Ok(format!("ok connected (generation {generation}), last message {:.1}s ago", age.as_secs_f64()))
}

/// How a connection ended without a response written in full.
#[derive(Debug)]
enum Ended {
    /// No complete head within `HEAD_TIMEOUT` (bytes read so far).
    HeadTimeout(usize),
    /// The client closed before its head was complete (bytes read so far).
    ClosedEarly(usize),
    /// The response made no progress for `WRITE_TIMEOUT` (bytes written of the total).
    WriteStalled(usize, usize),
    /// `CONNECTION_TIMEOUT` passed.
    Deadline,
    Stopping,
    Io(io::Error),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::HeadTimeout(n) => {
                write!(f, "no complete request head within {:.1}s ({n} bytes read)", HEAD_TIMEOUT.as_secs_f64())
            }
            Ended::ClosedEarly(n) => write!(f, "closed by the client before a complete head ({n} bytes read)"),
            Ended::WriteStalled(done, total) => write!(
                f,
                "the client read nothing for {:.1}s ({done} of {total} bytes written)",
                WRITE_TIMEOUT.as_secs_f64()
            ),
            Ended::Deadline => write!(f, "open for {:.1}s, the limit", CONNECTION_TIMEOUT.as_secs_f64()),
            Ended::Stopping => write!(f, "stopping"),
            Ended::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for Ended {
    fn from(e: io::Error) -> Ended {
        Ended::Io(e)
    }
}

/// What a complete (or refused) request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Metrics,
    Health,
    NotFound,
    /// Not GET.
    MethodNotAllowed,
    /// Larger than `HEAD_MAX_BYTES`, or more than `HEADERS_MAX` headers.
    HeadTooLarge,
    /// Not HTTP.
    Bad,
}

impl Request {
    fn parse(method: &str, path: &str) -> Request {
        if method != "GET" {
            return Request::MethodNotAllowed;
        }
        // A scrape configuration may add query parameters; this page has none to honour.
        match path.split('?').next().unwrap_or(path) {
            "/metrics" => Request::Metrics,
            "/health" => Request::Health,
            _ => Request::NotFound,
        }
    }
}

/// Reads one request, answers it and closes: the status written, or why there was none.
fn serve(
    stream: TcpStream,
    head: &mut [u8],
    metrics: &Metrics,
    rules: &HealthRules,
    shutdown: &Shutdown,
) -> Result<u16, Ended> {
    let accepted = Instant::now();
    let mut conn = Connection { stream, deadline: accepted + CONNECTION_TIMEOUT, shutdown };
    // Accepted sockets inherit the listener's non-blocking mode on some systems (not Linux):
    // this code wants blocking calls bounded by timeouts.
    conn.stream.set_nonblocking(false)?;
    conn.stream.set_nodelay(true)?;
    let request = conn.read_head(head, accepted + HEAD_TIMEOUT)?;
    let (status, content_type, body) = answer(request, metrics, rules);
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    conn.write_all(&response)?;
    if request == Request::Metrics {
        metrics.metrics_scrapes.add(1);
    }
    conn.linger();
    Ok(status)
}

/// The status, content type and body for `request`, read from the registry now.
fn answer(request: Request, metrics: &Metrics, rules: &HealthRules) -> (u16, &'static str, String) {
    let now_unix_ms = u64::try_from(clock::unix_now_ns().div_euclid(1_000_000)).unwrap_or(0);
    match request {
        Request::Metrics => {
            let (depths, bytes) = (metrics.queue_depths(), metrics.queue_bytes());
            // The drop map holds at most DROP_SYMBOLS_MAX symbols and `(other)`: all of them.
            let drops = metrics.top_drops(DROP_SYMBOLS_MAX + 1);
            let labelled = Labelled { queue_depths: &depths, queue_bytes: &bytes, drops: &drops };
            let page = prometheus::render(
                &metrics.snapshot(),
                &labelled,
                proc::memory_kib(),
                now_unix_ms,
                rules.started.elapsed(),
            );
            (200, PROMETHEUS_CONTENT_TYPE, page)
        }
        Request::Health => match health(&metrics.snapshot(), rules.stale_timeout, now_unix_ms) {
            Ok(text) => (200, TEXT_CONTENT_TYPE, text + "\n"),
            Err(text) => (503, TEXT_CONTENT_TYPE, text + "\n"),
        },
        Request::NotFound => (404, TEXT_CONTENT_TYPE, "not found: try /metrics or /health\n".to_string()),
        Request::MethodNotAllowed => (405, TEXT_CONTENT_TYPE, "method not allowed: only GET\n".to_string()),
        Request::HeadTooLarge => (
            431,
            TEXT_CONTENT_TYPE,
            format!("request head too large: at most {HEAD_MAX_BYTES} bytes and {HEADERS_MAX} headers\n"),
        ),
        Request::Bad => (400, TEXT_CONTENT_TYPE, "bad request: not an HTTP/1.x request\n".to_string()),
    }
}

/// One accepted connection and the limits on it.
struct Connection<'a> {
    stream: TcpStream,
    deadline: Instant,
    shutdown: &'a Shutdown,
}

impl Connection<'_> {
    /// How long the next socket call may wait (at most a `TICK`, so a stop is seen), or why it
    /// may not wait at all.
    fn slice(&self, until: Instant) -> Result<Option<Duration>, Ended> {
        if self.shutdown.is_requested() {
            return Err(Ended::Stopping);
        }
        let now = Instant::now();
        if now >= self.deadline {
            return Err(Ended::Deadline);
        }
        Ok((now < until).then(|| (until.min(self.deadline) - now).min(TICK)))
    }

    /// Reads until `head` holds a complete request head (by httparse) and says what it asks.
    fn read_head(&mut self, head: &mut [u8], until: Instant) -> Result<Request, Ended> {
        let mut len = 0;
        loop {
            let Some(wait) = self.slice(until)? else {
                return Err(Ended::HeadTimeout(len));
            };
            self.stream.set_read_timeout(Some(wait))?;
            match self.stream.read(&mut head[len..]) {
                Ok(0) => return Err(Ended::ClosedEarly(len)),
                Ok(n) => len += n,
                Err(e) if is_wait(&e) => continue,
                Err(e) => return Err(Ended::Io(e)),
            }
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&head[..len]) {
                Ok(httparse::Status::Complete(_)) => {
                    return Ok(Request::parse(request.method.unwrap_or(""), request.path.unwrap_or("")))
                }
                Ok(httparse::Status::Partial) if len == head.len() => return Ok(Request::HeadTooLarge),
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => return Ok(Request::HeadTooLarge),
                Err(_) => return Ok(Request::Bad),
            }
        }
    }

    /// Writes all of `bytes`, or gives up after `WRITE_TIMEOUT` without progress.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Ended> {
        let mut done = 0;
        let mut progress_at = Instant::now();
        while done < bytes.len() {
            let Some(wait) = self.slice(progress_at + WRITE_TIMEOUT)? else {
                return Err(Ended::WriteStalled(done, bytes.len()));
            };
            self.stream.set_write_timeout(Some(wait))?;
            match self.stream.write(&bytes[done..]) {
                Ok(0) => return Err(Ended::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    done += n;
                    progress_at = Instant::now();
                }
                Err(e) if is_wait(&e) => {}
                Err(e) => return Err(Ended::Io(e)),
            }
        }
        Ok(())
    }

    /// Half-closes and reads what the client still sends for a moment before the socket is
    /// dropped: closing with unread input (a POST's body, a pipelined request) makes the kernel
    /// send a reset, which can destroy the response before the client has read it.
    fn linger(&mut self) {
        if self.stream.shutdown(Direction::Write).is_err() {
            return;
        }
        let until = Instant::now() + LINGER;
        let mut sink = [0; 4096];
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES {
            let Ok(Some(wait)) = self.slice(until) else { return };
            if self.stream.set_read_timeout(Some(wait)).is_err() {
                return;
            }
            match self.stream.read(&mut sink) {
                Ok(0) => return,
                Ok(n) => drained += n,
                Err(e) if is_wait(&e) => {}
                Err(_) => return,
            }
        }
    }
}

/// A socket call that timed out or was interrupted: try again (within the limits).
fn is_wait(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn rules() -> HealthRules {
        HealthRules { stale_timeout: Duration::from_secs(5), started: Instant::now() }
    }

    fn now_ms() -> u64 {
        u64::try_from(clock::unix_now_ns() / 1_000_000).unwrap_or(0)
    }

    /// Requests the stop (and wakes the endpoint) when dropped, so a failed assertion ends `run`
    /// and the scope can join.
    struct StopOnDrop<'a>(&'a Shutdown, SocketAddr);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.request();
            wake(self.1);
        }
    }

    /// Runs the endpoint on 127.0.0.1:0 on a scoped thread while `test` runs with its address;
    /// then stops it and returns how long `run` took to return after the stop.
    fn with_endpoint(metrics: &Metrics, test: impl FnOnce(SocketAddr)) -> Duration {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = Shutdown::new();
        let rules = rules();
        std::thread::scope(|scope| {
            let endpoint = scope.spawn(|| run(listener, metrics, &rules, &shutdown));
            {
                let _stop = StopOnDrop(&shutdown, addr);
                test(addr);
            }
            let stopped = Instant::now();
            endpoint.join().expect("endpoint thread");
            stopped.elapsed()
        })
    }

    /// One response: status, headers (lower-case names), body.
    #[derive(Debug)]
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
    }

    /// Sends `request` raw and reads the response to the server's close.
    fn send(addr: SocketAddr, request: &[u8]) -> Response {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        stream.set_write_timeout(Some(DEADLINE)).expect("write timeout");
        stream.write_all(request).expect("send the request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read the response to the close");
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(at)) = parsed.parse(&raw) else {
            panic!("not a complete response: {:?}", String::from_utf8_lossy(&raw));
        };
        let headers = parsed
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        let body = String::from_utf8_lossy(&raw[at..]).into_owned();
        let response = Response { status: parsed.code.unwrap_or(0), headers, body };
        assert_eq!(response.header("connection"), Some("close"), "{response:?}");
        assert_eq!(response.header("content-length"), Some(response.body.len().to_string().as_str()), "{response:?}");
        response
    }

    fn get(addr: SocketAddr, path: &str) -> Response {
        send(addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n").as_bytes())
    }

    /// Proves the page is served with the exposition format's content type, that /health is 503
    /// with its reason until the connection is up and a message recent, then 200, and that a
    /// stop ends `run` at once.
    #[test]
    fn metrics_and_health_answer_and_a_stop_ends_the_thread_at_once() {
        let metrics = Metrics::new(2);
        metrics.received.add(5);
        metrics.connection_generation.set(3);
        let stop_took = with_endpoint(&metrics, |addr| {
            let page = get(addr, "/metrics");
            assert_eq!(page.status, 200);
            assert_eq!(page.header("content-type"), Some(PROMETHEUS_CONTENT_TYPE));
            assert!(page.body.contains("\ncoinfeed_received_total 5\n"), "{}", page.body);
            assert!(page.body.contains("\ncoinfeed_queue_depth{worker=\"1\"} 0\n"), "{}", page.body);
            assert!(page.body.contains("\n# TYPE coinfeed_uptime_seconds gauge\n"), "{}", page.body);
            let with_query = get(addr, "/metrics?format=text");
            assert_eq!(with_query.status, 200);
            assert!(with_query.body.contains("\ncoinfeed_metrics_scrapes_total 1\n"), "{}", with_query.body);

            let down = get(addr, "/health");
            assert_eq!((down.status, down.body.as_str()), (503, "not connected (generation 3)\n"));
            assert_eq!(down.header("content-type"), Some(TEXT_CONTENT_TYPE));
            metrics.connected.set(1);
            let silent = get(addr, "/health");
            assert_eq!((silent.status, silent.body.as_str()), (503, "connected but no message yet (generation 3)\n"));
            metrics.last_message_unix_ms.set(now_ms() - 7_200);
            let stale = get(addr, "/health");
            assert_eq!(stale.status, 503);
            // 7.2 s and the time the request took (an accept poll's wait at most, ~50 ms).
            assert!(
                stale.body.starts_with("no message for 7.")
                    && stale.body.contains("s (stale timeout 5.0s, generation 3)\n"),
                "{}",
                stale.body
            );
            metrics.last_message_unix_ms.set(now_ms());
            let up = get(addr, "/health");
            assert_eq!(up.status, 200, "{}", up.body);
            assert!(up.body.starts_with("ok connected (generation 3), last message 0."), "{}", up.body);
        });
        assert_eq!(metrics.snapshot().metrics_scrapes, 2);
        assert!(stop_took < Duration::from_millis(200), "run took {stop_took:?} to stop");
    }

    /// Proves only GET is served (405 with Allow, even with a body the endpoint never reads),
    /// an unknown path is 404, and what is not HTTP is 400.
    #[test]
    fn other_methods_paths_and_garbage_are_refused() {
        let metrics = Metrics::new(1);
        with_endpoint(&metrics, |addr| {
            let post = send(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello=world");
            assert_eq!((post.status, post.header("allow")), (405, Some("GET")));
            assert_eq!(send(addr, b"HEAD /health HTTP/1.1\r\n\r\n").status, 405);
            assert_eq!(get(addr, "/").status, 404);
            assert_eq!(get(addr, "/metricsx").status, 404);
            assert_eq!(send(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").status, 400);
        });
        assert_eq!(metrics.snapshot().metrics_scrapes, 0);
    }

    /// Proves a head beyond HEAD_MAX_BYTES, or with more than HEADERS_MAX headers, is answered
    /// 431 without waiting for its end.
    #[test]
    fn an_oversized_head_is_431() {
        let metrics = Metrics::new(1);
        with_endpoint(&metrics, |addr| {
            let long = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}", "a".repeat(HEAD_MAX_BYTES + 1000));
            let answer = send(addr, long.as_bytes());
            assert_eq!(answer.status, 431, "{}", answer.body);
            let many: String = (0..=HEADERS_MAX).map(|i| format!("X-H{i}: v\r\n")).collect();
            let answer = send(addr, format!("GET /metrics HTTP/1.1\r\n{many}\r\n").as_bytes());
            assert_eq!(answer.status, 431, "{}", answer.body);
            assert_eq!(get(addr, "/metrics").status, 200);
        });
    }

    /// Proves a client that connects and sends nothing holds the endpoint for HEAD_TIMEOUT at
    /// most: the next client is answered after it, and a stop is still seen within a tick while
    /// a silent client is connected.
    #[test]
    fn a_silent_client_is_cut_off_and_does_not_block_the_next() {
        let metrics = Metrics::new(1);
        let stop_took = with_endpoint(&metrics, |addr| {
            let mut silent = TcpStream::connect(addr).expect("connect");
            silent.set_read_timeout(Some(DEADLINE)).expect("read timeout");
            let started = Instant::now();
            let next = get(addr, "/health");
            let waited = started.elapsed();
            assert_eq!(next.status, 503);
            assert!(waited < HEAD_TIMEOUT + Duration::from_secs(2), "answered after {waited:?}");
            let mut rest = Vec::new();
            assert_eq!(silent.read_to_end(&mut rest).expect("closed, not timed out"), 0);
            assert!(started.elapsed() < DEADLINE);
            // A second silent client, connected while the stop comes.
            let _held = TcpStream::connect(addr).expect("connect");
            std::thread::sleep(TICK * 2);
        });
        assert!(stop_took < Duration::from_millis(200), "run took {stop_took:?} to stop with a silent client");
    }

    /// Serves 200 scrapes of a page listing 1,000 dropped symbols over loopback, checks each is
    /// whole, and reports the time a scrape takes. Each client connects and sends its request
    /// before the previous answer is read, as concurrent scrapers would: the endpoint then finds
    /// the next connection waiting, and the figure is the cost of serving, not the accept poll's
    /// wait (up to a TICK for a scraper arriving at an idle endpoint).
    #[test]
    fn scrapes_over_loopback() {
        let metrics = Metrics::new(4);
        for i in 0..DROP_SYMBOLS_MAX {
            metrics.record_drop(format!("EXCHANGE_SPOT_SYM{i}_USD").as_bytes());
        }
        let rounds: u32 = 200;
        let request = |addr| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send the request");
            stream
        };
        with_endpoint(&metrics, |addr| {
            let mut waiting = Some(request(addr));
            let started = Instant::now();
            let mut bytes = 0;
            for round in 1..=rounds {
                let next = (round < rounds).then(|| request(addr));
                let mut raw = String::new();
                waiting.take().expect("a request sent").read_to_string(&mut raw).expect("read the page to the close");
                assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
                assert!(raw.contains("\ncoinfeed_uptime_seconds ") && raw.ends_with('\n'), "{raw}");
                bytes += raw.len();
                waiting = next;
            }
            eprintln!(
                "scrape: {:.0} µs each over loopback, back to back (accept, read, render, write {} bytes, close)",
                started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds),
                bytes / rounds as usize
            );
        });
        assert_eq!(metrics.snapshot().metrics_scrapes, u64::from(rounds));
    }

    #[test]
    fn health_is_judged_by_connection_and_message_age() {
        let rules = Duration::from_secs(5);
        let now = 1_760_000_000_000;
        let snap = |connected, last| Snapshot {
            connected,
            connection_generation: 4,
            last_message_unix_ms: last,
            ..Snapshot::default()
        };
        let check = |snapshot: Snapshot, want: Result<&str, &str>| {
            let got = health(&snapshot, rules, now);
            assert_eq!(got.as_deref().map_err(String::as_str), want);
        };
        check(snap(0, now), Err("not connected (generation 4)"));
        check(snap(1, u64::MAX), Err("connected but no message yet (generation 4)"));
        check(snap(1, now - 5_000), Ok("ok connected (generation 4), last message 5.0s ago"));
        check(snap(1, now - 5_001), Err("no message for 5.0s (stale timeout 5.0s, generation 4)"));
        check(snap(1, now - 7_240), Err("no message for 7.2s (stale timeout 5.0s, generation 4)"));
        // The wall clock stepped back behind the last message: as if it just arrived.
        check(snap(1, now + 1_000), Ok("ok connected (generation 4), last message 0.0s ago"));
    }
}
