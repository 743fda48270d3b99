//! The stop signal shared by every thread: a flag for cheap checks in hot loops and a
//! zero-capacity channel whose disconnection wakes every blocking wait at once.
//!
//! `request` is idempotent and may be called from the Ctrl-C handler, the writer (stdout
//! closed) or the reader (terminal error). Threads never poll a clock to notice it: they either
//! check `is_requested` on their read tick or sleep in `wait_timeout`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

#[derive(Debug)]
pub struct Shutdown {
    requested: AtomicBool,
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
    /// When the first request came.
    at: Mutex<Option<Instant>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Shutdown { requested: AtomicBool::new(false), tx: Mutex::new(Some(tx)), rx, at: Mutex::new(None) }
    }

    /// Asks every thread to stop. Returns true for the first call only.
    pub fn request(&self) -> bool {
        let first = !self.requested.swap(true, Ordering::SeqCst);
        self.at.lock().get_or_insert_with(Instant::now);
        self.tx.lock().take();
        first
    }

    /// When the stop was first requested (a deadline that must hold for the whole stop counts
    /// from here).
    pub fn requested_at(&self) -> Option<Instant> {
        *self.at.lock()
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Sleeps up to `timeout`; returns true early (and at once) if a stop is requested.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        match self.rx.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => self.is_requested(),
        }
    }

    /// A receiver that becomes disconnected on stop, for `select!`.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn request_wakes_a_waiter_at_once_and_only_the_first_call_counts() {
        let s = Shutdown::new();
        assert!(!s.wait_timeout(Duration::from_millis(1)));
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let t = Instant::now();
                let stopped = s.wait_timeout(Duration::from_secs(30));
                (stopped, t.elapsed())
            });
            assert!(s.requested_at().is_none());
            assert!(s.request());
            let at = s.requested_at();
            assert!(!s.request());
            assert!(at.is_some() && s.requested_at() == at, "the first request's time is kept");
            let (stopped, waited) = waiter.join().expect("waiter");
            assert!(stopped);
            assert!(waited < Duration::from_secs(10));
        });
        assert!(s.is_requested());
    }
}
