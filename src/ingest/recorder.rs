//! The recorder of `--record`: the reader's `Tap` encodes every raw frame and connection event
//! in the recording format (`record.rs`) into 64 KiB chunks, which it hands to the recorder
//! thread over a bounded channel it only ever `try_send`s to, so a slow disk costs counted drops
//! (`record_dropped`, a whole chunk's frames), never a blocked reader. The thread appends the
//! chunks to rotating files (`output::sink::Rotating`, the same files as `--output-dir`, with
//! the recording's header first in each) and flushes when idle.
//!
//! Encoding on the reader (a copy and a CRC-32 of each frame, ~0.1 µs) is cheaper than handing
//! each frame over: a channel operation and a shared reference count per frame, dropped on
//! another thread, cost the flood a third of its rate (measured). The tap also hands its chunk
//! over on every idle read tick (100 ms), so at low rates a frame reaches the file within a
//! fraction of a second.

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};

use crate::clock::unix_now_ns;
use crate::config::limits::RECORD_QUEUE_BYTES;
use crate::ingest::record::{self, Record};
use crate::metrics::Metrics;
use crate::output::sink::Rotating;
use crate::shutdown::Shutdown;

/// Encoded bytes the tap gathers before it hands them over.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// How long the recorder waits for a chunk before it flushes (and lets a time rotation happen).
const IDLE_FLUSH: Duration = Duration::from_millis(500);

/// Encoded records, and how many of them are frames.
#[derive(Debug)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub frames: u64,
}

/// The recorder's queue: chunks, bounded in number by the channel and in bytes here (a chunk
/// holding one 4 MiB frame is 64 ordinary ones).
#[derive(Debug)]
pub struct Queue {
    pub tx: Sender<Chunk>,
    /// Bytes in the chunks sent and not yet written.
    pub bytes: AtomicU64,
}

/// The reader's side: encodes records into the current chunk and offers full chunks.
#[derive(Debug)]
pub struct Tap<'a> {
    queue: &'a Queue,
    chunk: Chunk,
}

impl<'a> Tap<'a> {
    pub fn new(queue: &'a Queue) -> Tap<'a> {
        Tap { queue, chunk: Tap::empty() }
    }

    fn empty() -> Chunk {
        Chunk { bytes: Vec::with_capacity(CHUNK_BYTES + 4096), frames: 0 }
    }

    /// Appends one record; hands the chunk over once it is full.
    pub fn record(&mut self, record: &Record<'_>, metrics: &Metrics) {
        record::encode(record, &mut self.chunk.bytes);
        self.chunk.frames += u64::from(matches!(record, Record::Frame { .. }));
        if self.chunk.bytes.len() >= CHUNK_BYTES {
            self.hand_over(metrics);
        }
    }

    /// Offers what is gathered to the recorder; a full queue drops it, counted.
    pub fn hand_over(&mut self, metrics: &Metrics) {
        if self.chunk.bytes.is_empty() {
            return;
        }
        let len = self.chunk.bytes.len() as u64;
        if self.queue.bytes.load(Ordering::Relaxed) + len > RECORD_QUEUE_BYTES {
            metrics.record_dropped.add(self.chunk.frames);
            self.chunk.bytes.clear();
            self.chunk.frames = 0;
            return;
        }
        let chunk = std::mem::replace(&mut self.chunk, Tap::empty());
        self.queue.bytes.fetch_add(len, Ordering::Relaxed);
        if let Err(e) = self.queue.tx.try_send(chunk) {
            self.queue.bytes.fetch_sub(len, Ordering::Relaxed);
            metrics.record_dropped.add(e.into_inner().frames);
        }
    }
}

/// How the recorder ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RecorderExit {
    /// Everything queued was written and the last file finished.
    Done,
    /// A write failed (disk full, ...): recording stopped; the run goes on without it.
    Failed(String),
}

/// Runs until the reader is done (`source_done`: it hands over its last chunk before) and every
/// chunk is written, then finishes the last file.
pub fn run(
    rx: Receiver<Chunk>,
    queue: &Queue,
    mut files: Rotating,
    metrics: &Metrics,
    source_done: &Shutdown,
) -> RecorderExit {
    loop {
        let next = select! {
            recv(rx) -> chunk => chunk.map_err(|_| RecvTimeoutError::Disconnected),
            recv(source_done.receiver()) -> _ => match rx.try_recv() {
                Ok(chunk) => Ok(chunk),
                Err(_) => Err(RecvTimeoutError::Disconnected),
            },
            default(IDLE_FLUSH) => Err(RecvTimeoutError::Timeout),
        };
        match next {
            Ok(chunk) => {
                let written = files.write(&chunk.bytes, chunk.frames, unix_now_ns());
                queue.bytes.fetch_sub(chunk.bytes.len() as u64, Ordering::Relaxed);
                if let Err(e) = written {
                    return failed(e, chunk.frames, &rx, queue, metrics, source_done);
                }
                metrics.record_frames.add(chunk.frames);
                if rx.is_empty() {
                    if let Err(e) = files.flush() {
                        return failed(e, 0, &rx, queue, metrics, source_done);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = files.tick(unix_now_ns()) {
                    return failed(e, 0, &rx, queue, metrics, source_done);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    match files.finish() {
        Ok(_) => RecorderExit::Done,
        Err(e) => {
            log::error!("recording: cannot finish the last file: {e}");
            RecorderExit::Failed(e.to_string())
        }
    }
}

/// A write failed: says what was lost, then keeps taking (and counting) what the reader sends
/// until it stops.
fn failed(
    e: std::io::Error,
    lost_now: u64,
    rx: &Receiver<Chunk>,
    queue: &Queue,
    metrics: &Metrics,
    source_done: &Shutdown,
) -> RecorderExit {
    log::error!(
        "recording stopped: {e}; {lost_now} frames of the failed write and every later frame are not recorded (counted as record_dropped); the feed goes on"
    );
    metrics.record_dropped.add(lost_now);
    // The reader's tap goes on handing chunks over (it never waits): take and count them.
    loop {
        select! {
            recv(rx) -> chunk => match chunk {
                Ok(chunk) => {
                    queue.bytes.fetch_sub(chunk.bytes.len() as u64, Ordering::Relaxed);
                    metrics.record_dropped.add(chunk.frames);
                }
                Err(_) => break,
            },
            recv(source_done.receiver()) -> _ => {
                while let Ok(chunk) = rx.try_recv() {
                    metrics.record_dropped.add(chunk.frames);
                }
                break;
            }
        }
    }
    RecorderExit::Failed(e.to_string())
}
