//! TLS for the simulator: a front that terminates `wss://` or `https://` with a given PEM
//! certificate chain and key (rustls, ring) and relays the plain bytes to one of the
//! simulator's servers (`Sim::ws_addr`, `Sim::rest_addr`), like stunnel.
//!
//! A front rather than TLS inside `ws.rs` and `rest.rs`: those servers write raw bytes into
//! their `TcpStream` for their faults (garbage, half frames, abrupt drops), so relaying keeps
//! every fault working over TLS unchanged and leaves the servers as they are. The front logs
//! one [`Handshake`] per accepted TCP connection, with the TLS outcome, so a test can count a
//! client's connection attempts, including the ones its certificate check refused (those never
//! reach the server behind).
//!
//! Threads: `sim-tls` (accept, polling the stop flag) with one `sim-tls-N` per connection (the
//! handshake, then client → server bytes) and its `sim-tls-N-out` (server → client bytes), all
//! joined by [`TlsFront::shutdown`] (also run on drop). A server that ends its side (FIN) ends
//! the client's with a TLS close_notify; a reset is passed on as a TCP shutdown without one.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConnection, SupportedProtocolVersion};

/// How often blocked reads and the accept loop look at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// A client has this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections relayed at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// Handshake records kept (the first ones).
const HANDSHAKE_LOG_MAX: usize = 10_000;
/// Relay buffer per direction.
const RELAY_BUFFER_BYTES: usize = 16 * 1024;
/// A write to a client or a server that takes longer ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a front serves: a certificate chain, its key and the TLS versions it accepts.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// TLS 1.2 and 1.3, with `chain_pem` (the leaf first, then any intermediates) and the
    /// private key in `key_pem` (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> io::Result<ServerTls> {
        ServerTls::with_versions(chain_pem, key_pem, rustls::ALL_VERSIONS)
    }

    /// As [`ServerTls::from_pem`], accepting TLS 1.2 only.
    pub fn tls12_only(chain_pem: &[u8], key_pem: &[u8]) -> io::Result<ServerTls> {
        ServerTls::with_versions(chain_pem, key_pem, &[&rustls::version::TLS12])
    }

    /// As [`ServerTls::from_pem`], accepting only `versions`.
    pub fn with_versions(
        chain_pem: &[u8],
        key_pem: &[u8],
        versions: &[&'static SupportedProtocolVersion],
    ) -> io::Result<ServerTls> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("sim tls {what}: {e}"))
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("certificate chain", &e))?;
        if chain.is_empty() {
            return Err(bad("certificate chain", &"no CERTIFICATE block"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("private key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| bad("versions", &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad("certificate", &e))?;
        Ok(ServerTls { config: Arc::new(config) })
    }
}

/// One accepted TCP connection and how its TLS handshake ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// When the TCP connection was accepted.
    pub at: Instant,
    /// `Ok` with the negotiated version (`TLSv1_3`), or the server side's view of the failure
    /// (e.g. `received fatal alert: UnknownCA`).
    pub result: Result<String, String>,
}

#[derive(Default)]
struct Log {
    handshakes: Mutex<Vec<Handshake>>,
    changed: Condvar,
}

impl Log {
    fn push(&self, h: Handshake) {
        let mut v = self.handshakes.lock();
        if v.len() < HANDSHAKE_LOG_MAX {
            v.push(h);
        }
        self.changed.notify_all();
    }
}

/// A TLS front on 127.0.0.1 (an OS-chosen port) for one of the simulator's servers.
pub struct TlsFront {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Arc<Log>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFront").field("addr", &self.addr).finish()
    }
}

impl TlsFront {
    /// Listens on 127.0.0.1 and relays every connection's plain bytes to `target` (loopback).
    pub fn start(tls: ServerTls, target: SocketAddr) -> io::Result<TlsFront> {
        super::check_loopback("tls target", target)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Log::default());
        let (s, l) = (Arc::clone(&stop), Arc::clone(&log));
        let thread = std::thread::Builder::new()
            .name("sim-tls".to_string())
            .spawn(move || accept_loop(listener, tls, target, &s, &l))?;
        Ok(TlsFront { addr, stop, log, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every accepted connection so far, in accept order.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.log.handshakes.lock().clone()
    }

    /// Waits until `pred` holds on the handshakes (re-checked on each new one) or `timeout`
    /// passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Handshake]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut v = self.log.handshakes.lock();
        loop {
            if pred(&v) {
                return true;
            }
            if self.log.changed.wait_until(&mut v, deadline).timed_out() {
                return pred(&v);
            }
        }
    }

    /// Stops accepting, ends every relayed connection and joins every thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("sim tls thread panicked");
            }
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn accept_loop(listener: TcpListener, tls: ServerTls, target: SocketAddr, stop: &Arc<AtomicBool>, log: &Arc<Log>) {
    let next = AtomicU64::new(1);
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((tcp, peer)) => {
                let at = Instant::now();
                super::reap(&mut conns);
                if conns.len() >= MAX_CONNECTIONS {
                    log::warn!("sim tls refusing {peer}: {MAX_CONNECTIONS} connections open");
                    log.push(Handshake { at, result: Err("refused: too many connections".to_string()) });
                    continue;
                }
                let id = next.fetch_add(1, Ordering::Relaxed);
                let (config, stop, log) = (Arc::clone(&tls.config), Arc::clone(stop), Arc::clone(log));
                match std::thread::Builder::new()
                    .name(format!("sim-tls-{id}"))
                    .spawn(move || serve(tcp, at, config, target, id, &stop, &log))
                {
                    Ok(h) => conns.push(h),
                    Err(e) => log::warn!("sim tls cannot spawn a connection thread: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                log::warn!("sim tls accept failed: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
    super::join_all(conns);
}

fn is_tick(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

/// One connection: the handshake (logged), then the relay in both directions.
fn serve(
    mut tcp: TcpStream,
    at: Instant,
    config: Arc<rustls::ServerConfig>,
    target: SocketAddr,
    id: u64,
    stop: &Arc<AtomicBool>,
    log: &Log,
) {
    let setup = || -> io::Result<ServerConnection> {
        tcp.set_nonblocking(false)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(POLL))?;
        tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
        ServerConnection::new(config).map_err(io::Error::other)
    };
    let mut conn = match setup() {
        Ok(c) => c,
        Err(e) => return log.push(Handshake { at, result: Err(format!("setup: {e}")) }),
    };
    let deadline = at + HANDSHAKE_TIMEOUT;
    while conn.is_handshaking() {
        if stop.load(Ordering::Relaxed) {
            return log.push(Handshake { at, result: Err("shutdown".to_string()) });
        }
        if Instant::now() > deadline {
            return log.push(Handshake { at, result: Err("handshake timed out".to_string()) });
        }
        match conn.complete_io(&mut tcp) {
            Ok((0, 0)) if conn.is_handshaking() => {
                // rustls returns nothing done only at EOF.
                return log.push(Handshake { at, result: Err("client closed during the handshake".to_string()) });
            }
            Ok(_) => {}
            Err(e) if is_tick(&e) => {}
            Err(e) => {
                // complete_io has already tried to send the alert that describes the error.
                let _ = tcp.shutdown(Shutdown::Both);
                return log.push(Handshake { at, result: Err(e.to_string()) });
            }
        }
    }
    let version = conn.protocol_version().map_or_else(|| "unknown".to_string(), |v| format!("{v:?}"));
    let backend = TcpStream::connect_timeout(&target, HANDSHAKE_TIMEOUT).and_then(|b| {
        b.set_nodelay(true)?;
        b.set_read_timeout(Some(POLL))?;
        b.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(b)
    });
    let backend = match backend {
        Ok(b) => b,
        Err(e) => {
            let _ = tcp.shutdown(Shutdown::Both);
            return log.push(Handshake { at, result: Err(format!("server behind unreachable: {e}")) });
        }
    };
    log.push(Handshake { at, result: Ok(version) });
    relay(tcp, backend, conn, id, stop);
}

/// Client → server on this thread, server → client on `sim-tls-N-out`; the rustls connection is
/// shared under a lock (held only to feed it or drain it, never across a blocking read).
fn relay(client: TcpStream, server: TcpStream, conn: ServerConnection, id: u64, stop: &Arc<AtomicBool>) {
    let conn = Arc::new(Mutex::new(conn));
    let (client_out, server_in) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    let out = {
        let (conn, stop) = (Arc::clone(&conn), Arc::clone(stop));
        std::thread::Builder::new()
            .name(format!("sim-tls-{id}-out"))
            .spawn(move || server_to_client(server_in, client_out, &conn, &stop))
    };
    client_to_server(client, server, &conn, stop);
    if let Ok(h) = out {
        let _ = h.join();
    }
}

fn client_to_server(mut client: TcpStream, mut server: TcpStream, conn: &Mutex<ServerConnection>, stop: &AtomicBool) {
    let mut buf = vec![0u8; RELAY_BUFFER_BYTES];
    let mut plain = Vec::with_capacity(RELAY_BUFFER_BYTES);
    // A TLS 1.3 client sends its first request right behind its Finished: the handshake read
    // it already, so it waits in rustls before anything more arrives.
    drain_plain(&mut conn.lock(), &mut plain);
    if !plain.is_empty() && server.write_all(&plain).is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let n = match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_tick(&e) => continue,
            Err(_) => break,
        };
        plain.clear();
        let mut failed = false;
        {
            let mut c = conn.lock();
            let mut input = &buf[..n];
            while !input.is_empty() && !failed {
                failed = c.read_tls(&mut input).is_err() || c.process_new_packets().is_err();
                drain_plain(&mut c, &mut plain);
            }
            while c.wants_write() {
                if c.write_tls(&mut client).is_err() {
                    failed = true;
                    break;
                }
            }
        }
        if !plain.is_empty() && server.write_all(&plain).is_err() {
            break;
        }
        if failed {
            break;
        }
    }
    // The client is done sending (or gone): the server sees our side end.
    let _ = server.shutdown(Shutdown::Write);
}

/// Appends the plain bytes rustls holds to `plain`.
fn drain_plain(c: &mut ServerConnection, plain: &mut Vec<u8>) {
    loop {
        let start = plain.len();
        plain.resize(start + RELAY_BUFFER_BYTES, 0);
        match c.reader().read(&mut plain[start..]) {
            Ok(got) if got > 0 => plain.truncate(start + got),
            _ => {
                plain.truncate(start);
                return;
            }
        }
    }
}

fn server_to_client(mut server: TcpStream, mut client: TcpStream, conn: &Mutex<ServerConnection>, stop: &AtomicBool) {
    let mut buf = vec![0u8; RELAY_BUFFER_BYTES];
    let graceful = loop {
        if stop.load(Ordering::Relaxed) {
            break true;
        }
        let n = match server.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => n,
            Err(e) if is_tick(&e) => continue,
            // A reset: passed on without a close_notify, like the abrupt drop it was.
            Err(_) => break false,
        };
        let mut c = conn.lock();
        if c.writer().write_all(&buf[..n]).is_err() {
            break false;
        }
        let mut failed = false;
        while c.wants_write() {
            if c.write_tls(&mut client).is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            break false;
        }
    };
    if graceful {
        let mut c = conn.lock();
        c.send_close_notify();
        while c.wants_write() {
            if c.write_tls(&mut client).is_err() {
                break;
            }
        }
    }
    // Ends the client's side, which also ends `client_to_server`'s read.
    let _ = client.shutdown(Shutdown::Both);
}
