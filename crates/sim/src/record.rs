//! The simulator's two observation records: the timestamped event log (connections, client
//! messages, faults, REST requests) that tests wait on, and the optional byte-exact record of data
//! frames sent. Both are bounded; neither holds the data frames' bytes in the event log.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::SimEvent;

/// Bounded event log with a condition variable so `wait_for` wakes on every new event.
#[derive(Debug)]
pub(crate) struct EventLog {
    events: Mutex<VecDeque<SimEvent>>,
    changed: Condvar,
    capacity: usize,
}

impl EventLog {
    pub(crate) fn new(capacity: usize) -> EventLog {
        EventLog {
            events: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            changed: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends an event, dropping the oldest when full (a long soak must not grow without bound).
    pub(crate) fn push(&self, event: SimEvent) {
        let mut events = self.events.lock();
        if events.len() >= self.capacity {
            events.pop_front();
        }
        events.push_back(event);
        drop(events);
        self.changed.notify_all();
    }

    pub(crate) fn snapshot(&self) -> Vec<SimEvent> {
        self.events.lock().iter().cloned().collect()
    }

    /// Evaluates `pred` on every change until it holds or `timeout` passes.
    pub(crate) fn wait_for(&self, timeout: Duration, pred: impl Fn(&[SimEvent]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut events = self.events.lock();
        loop {
            if pred(events.make_contiguous()) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.changed.wait_for(&mut events, deadline - now);
        }
    }
}

/// Exact text of data frames, in the order they were handed to the kernel, across connections.
/// Keeps the first `limit` frames: tests compare prefixes, and the first frames are the ones a
/// test can predict.
#[derive(Debug)]
pub(crate) struct SentLog {
    frames: Mutex<Vec<String>>,
    limit: usize,
}

impl SentLog {
    pub(crate) fn new(limit: usize) -> SentLog {
        SentLog { frames: Mutex::new(Vec::new()), limit }
    }

    /// Whether recording a frame now would keep it (lets the hot path skip copying).
    pub(crate) fn has_room(&self) -> bool {
        self.frames.lock().len() < self.limit
    }

    pub(crate) fn extend(&self, batch: Vec<String>) {
        let mut frames = self.frames.lock();
        let room = self.limit.saturating_sub(frames.len());
        frames.extend(batch.into_iter().take(room));
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.frames.lock().clone()
    }
}
