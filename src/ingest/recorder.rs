//! The recorder thread of `--record`: takes the raw frames and connection events the reader
//! taps off (`Recorded`, over a bounded channel the reader only ever `try_send`s to, so a slow
//! disk costs counted drops, never a blocked reader), encodes them in the recording format
//! (`record.rs`) and appends them to rotating files (`output::sink::Rotating`, the same files
//! as `--output-dir`, with the recording's header first in each).
//!
//! It writes in chunks of `CHUNK_BYTES` and flushes when idle, so at low rates a frame is on
//! disk within a second; it ends when the reader has gone and everything queued is written.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tungstenite::Utf8Bytes;

use crate::clock::unix_now_ns;
use crate::ingest::record::{self, Record};
use crate::metrics::Metrics;
use crate::output::ndjson::ConnectionEvent;
use crate::output::sink::Rotating;

/// Encoded bytes gathered before one write.
const CHUNK_BYTES: usize = 64 * 1024;
/// How long the recorder waits for more before it flushes (and lets a time rotation happen).
const IDLE_FLUSH: Duration = Duration::from_millis(500);

/// What the reader hands the recorder.
#[derive(Debug)]
pub enum Recorded {
    Frame { recv_unix_ns: i128, generation: u64, text: Utf8Bytes },
    Connection { at_unix_ns: i128, generation: u64, event: ConnectionEvent, url: String, reason: String },
}

/// How the recorder ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RecorderExit {
    /// Everything queued was written and the last file finished.
    Done,
    /// A write failed (disk full, ...): recording stopped; the run goes on without it.
    Failed(String),
}

/// Runs until the reader drops its sender, then finishes the last file.
pub fn run(rx: Receiver<Recorded>, mut files: Rotating, metrics: &Metrics) -> RecorderExit {
    let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + 4096);
    let mut frames_in_chunk = 0u64;
    loop {
        let item = match rx.recv_timeout(IDLE_FLUSH) {
            Ok(item) => Some(item),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(item) = &item {
            encode(item, &mut chunk);
            frames_in_chunk += u64::from(matches!(item, Recorded::Frame { .. }));
        }
        if chunk.len() >= CHUNK_BYTES || (item.is_none() || rx.is_empty()) && !chunk.is_empty() {
            if let Err(e) = files.write(&chunk, frames_in_chunk, unix_now_ns()) {
                return failed(e, frames_in_chunk, &rx, metrics);
            }
            metrics.record_frames.add(frames_in_chunk);
            chunk.clear();
            frames_in_chunk = 0;
        }
        if item.is_none() {
            let flushed = files.flush().and_then(|()| files.tick(unix_now_ns()));
            if let Err(e) = flushed {
                return failed(e, 0, &rx, metrics);
            }
        }
    }
    if !chunk.is_empty() {
        if let Err(e) = files.write(&chunk, frames_in_chunk, unix_now_ns()) {
            return failed(e, frames_in_chunk, &rx, metrics);
        }
        metrics.record_frames.add(frames_in_chunk);
    }
    match files.finish() {
        Ok(_) => RecorderExit::Done,
        Err(e) => {
            log::error!("recording: cannot finish the last file: {e}");
            RecorderExit::Failed(e.to_string())
        }
    }
}

fn encode(item: &Recorded, out: &mut Vec<u8>) {
    let record = match item {
        Recorded::Frame { recv_unix_ns, generation, text } => {
            Record::Frame { recv_unix_ns: *recv_unix_ns, generation: *generation, text: text.as_str() }
        }
        Recorded::Connection { at_unix_ns, generation, event, url, reason } => {
            Record::Connection { at_unix_ns: *at_unix_ns, generation: *generation, event: *event, url, reason }
        }
    };
    record::encode(&record, out);
}

/// A write failed: says what was lost, then keeps taking (and counting) what the reader sends
/// until it stops, so the reader never sees a full queue it would misreport.
fn failed(e: std::io::Error, lost_now: u64, rx: &Receiver<Recorded>, metrics: &Metrics) -> RecorderExit {
    log::error!(
        "recording stopped: {e}; {lost_now} frames of the failed write and every later frame are not recorded (counted as record_dropped); the feed goes on"
    );
    metrics.record_dropped.add(lost_now);
    for item in rx.iter() {
        if matches!(item, Recorded::Frame { .. }) {
            metrics.record_dropped.add(1);
        }
    }
    RecorderExit::Failed(e.to_string())
}
