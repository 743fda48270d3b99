//! A deadline on whole messages, enforced under tungstenite: the socket as the WebSocket sees it.
//!
//! tungstenite's blocking `read()` loops inside until a whole message has arrived; it only comes
//! back when the socket's read times out with nothing new. A server that trickles a frame a few
//! bytes per read tick (100 ms) therefore keeps `read()` busy for as long as it likes, and the
//! reader never gets back to its staleness check: one slow frame could hold the connection for
//! hours. `MessageDeadline` wraps the TCP stream (under TLS, so a trickled TLS record counts the
//! same) and, once armed after the upgrade, fails a socket read with
//! [`io::ErrorKind::TimedOut`] carrying [`Overdue`] when bytes of a message arrived but it has not
//! been delivered whole within the stale timeout of the first of them. The reader tells it about each delivered message
//! through the shared [`Watch`] (one relaxed store); the wrapper reads the clock once per socket
//! read, which is one syscall per 128 KiB chunk in a flood.
//!
//! It owns nothing else: the read timeout, the staleness check on a silent socket and the
//! reconnect stay the reader's.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The reader's side: tells the wrapper a message was delivered, and reads what it saw.
#[derive(Debug, Default)]
pub struct Watch {
    /// Set by the reader for each message `read()` returned; taken by the wrapper's next read.
    delivered: AtomicBool,
    /// Bytes read from the socket since the last delivered message (0 = nothing partial).
    bytes_since_message: AtomicU64,
    /// The limit in nanoseconds; 0 = disarmed (during the upgrade, which has its own deadline).
    limit_ns: AtomicU64,
}

impl Watch {
    /// From the next socket read on, a message must complete within `limit` of the previous one
    /// once bytes of it have arrived.
    pub fn arm(&self, limit: Duration) {
        let ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.limit_ns.store(ns, Ordering::Relaxed);
        self.delivered.store(true, Ordering::Relaxed);
    }

    /// One message was delivered: the deadline starts again at the next socket read.
    pub fn delivered(&self) {
        self.delivered.store(true, Ordering::Relaxed);
    }

    /// Bytes that arrived after the last delivered message (a message in the making).
    pub fn bytes_since_message(&self) -> u64 {
        self.bytes_since_message.load(Ordering::Relaxed)
    }
}

/// The error a socket read fails with once the deadline has passed (inside `io::Error` of kind
/// `TimedOut`: tungstenite hands it back as `Error::Io`).
#[derive(Debug)]
pub struct Overdue {
    pub waited: Duration,
    pub bytes: u64,
}

impl std::fmt::Display for Overdue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no complete message within {:.1} s while bytes trickle in ({} bytes since the last message)",
            self.waited.as_secs_f64(),
            self.bytes
        )
    }
}

impl std::error::Error for Overdue {}

/// The `Overdue` inside a read error, if that is what it is.
pub fn overdue(e: &io::Error) -> Option<&Overdue> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Overdue>())
}

/// A stream whose reads fail once no whole message was delivered within the limit while bytes
/// keep coming. Disarmed (a plain pass-through) until `Watch::arm`.
#[derive(Debug)]
pub struct MessageDeadline<S> {
    inner: S,
    watch: Arc<Watch>,
    /// When the deadline last started: the first bytes read after a delivered message.
    since: Instant,
}

impl<S> MessageDeadline<S> {
    pub fn new(inner: S) -> (MessageDeadline<S>, Arc<Watch>) {
        let watch = Arc::new(Watch::default());
        (MessageDeadline { inner, watch: Arc::clone(&watch), since: Instant::now() }, watch)
    }
}

impl<S: Read> Read for MessageDeadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit_ns = self.watch.limit_ns.load(Ordering::Relaxed);
        if limit_ns > 0 {
            if self.watch.delivered.swap(false, Ordering::Relaxed) {
                self.watch.bytes_since_message.store(0, Ordering::Relaxed);
            }
            let bytes = self.watch.bytes_since_message.load(Ordering::Relaxed);
            let limit = Duration::from_nanos(limit_ns);
            if bytes > 0 && self.since.elapsed() > limit {
                return Err(io::Error::new(io::ErrorKind::TimedOut, Overdue { waited: limit, bytes }));
            }
        }
        let n = self.inner.read(buf)?;
        // The deadline runs from the first byte after a delivered message: a quiet socket
        // before it (heartbeats stopped, a slow market) is the staleness check's, not this one's.
        if limit_ns > 0 && n > 0 && self.watch.bytes_since_message.fetch_add(n as u64, Ordering::Relaxed) == 0 {
            self.since = Instant::now();
        }
        Ok(n)
    }
}

impl<S: Write> Write for MessageDeadline<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that yields one byte per read, forever.
    struct Drip;

    impl Read for Drip {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf[0] = b'x';
            Ok(1)
        }
    }

    #[test]
    fn disarmed_is_a_pass_through_and_armed_fails_a_trickle() {
        let (mut s, watch) = MessageDeadline::new(Drip);
        let mut b = [0u8; 8];
        for _ in 0..1000 {
            assert_eq!(s.read(&mut b).expect("disarmed"), 1);
        }
        assert_eq!(watch.bytes_since_message(), 0, "nothing counted before the upgrade");
        watch.arm(Duration::from_nanos(1));
        assert_eq!(s.read(&mut b).expect("no bytes yet: the first read passes"), 1);
        // A delivered message restarts the deadline and forgets the bytes.
        watch.delivered();
        assert_eq!(s.read(&mut b).expect("restarted"), 1);
        std::thread::sleep(Duration::from_millis(2));
        let e = s.read(&mut b).expect_err("bytes arrived, no message within the limit");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let o = overdue(&e).expect("an Overdue inside");
        assert_eq!(o.bytes, 1);
        assert!(o.to_string().starts_with("no complete message within 0.0 s while bytes trickle in (1 bytes"), "{o}");
        assert!(overdue(&io::Error::from(io::ErrorKind::TimedOut)).is_none(), "a plain timeout is a tick");
    }
}
