//! A worker thread: decodes and validates the frames routed to it, and turns each valid
//! market-data message into one output line, in arrival order.
//!
//! The reader routes by `symbol_id`, so one symbol is always handled by one worker, and a
//! symbol's lines leave the worker in the order its frames arrived: per-symbol order survives
//! from socket to stdout. Per-symbol state (sequence tracking, books) belongs here for the same
//! reason. Lines are gathered into batches for the writer; a batch is sent when it is large or
//! when the input channel is momentarily empty, so latency stays low at low rates.

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tungstenite::Utf8Bytes;

use crate::protocol::{self, Reject, Source, TimestampFormatter};
use crate::stats::Stats;
use crate::writer::{Batch, BATCH_BYTES};

/// Malformed frames logged at `warn` per worker before the rest go to `debug` (all are counted).
const MALFORMED_WARNINGS_MAX: u64 = 5;

/// One text frame as read from the socket, stamped by the reader.
#[derive(Debug, Clone)]
pub struct Frame {
    pub text: Utf8Bytes,
    /// Receive time, nanoseconds since the Unix epoch.
    pub recv_unix_ns: i128,
    /// Which connection it came on; sequences are only comparable within one.
    pub generation: u64,
}

/// Everything a worker can be asked to do, as one closed set.
#[derive(Debug)]
pub enum WorkerInput {
    Frame(Frame),
}

#[derive(Debug)]
pub struct Worker<'a> {
    pub id: usize,
    stats: &'a Stats,
    timestamps: TimestampFormatter,
    batch: Batch,
    warnings: u64,
}

impl<'a> Worker<'a> {
    pub fn new(id: usize, stats: &'a Stats) -> Worker<'a> {
        Worker {
            id,
            stats,
            timestamps: TimestampFormatter::default(),
            batch: Batch::with_capacity(BATCH_BYTES * 2),
            warnings: 0,
        }
    }

    /// Runs until the reader is gone and the input is drained, then hands over the last batch.
    /// Returns early only if the writer has gone (stdout closed).
    pub fn run(mut self, rx: Receiver<WorkerInput>, out: Sender<Batch>) {
        loop {
            let input = match rx.try_recv() {
                Ok(input) => input,
                Err(TryRecvError::Empty) => {
                    if !self.flush(&out) {
                        return;
                    }
                    match rx.recv() {
                        Ok(input) => input,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            self.handle(input);
            if self.batch.bytes.len() >= BATCH_BYTES && !self.flush(&out) {
                return;
            }
        }
        self.flush(&out);
    }

    pub fn handle(&mut self, input: WorkerInput) {
        match input {
            WorkerInput::Frame(frame) => self.handle_frame(&frame),
        }
    }

    fn handle_frame(&mut self, frame: &Frame) {
        let bytes = frame.text.as_bytes();
        match protocol::decode(bytes) {
            Ok(_decoded) => {
                let recv_time = self.timestamps.format(frame.recv_unix_ns);
                protocol::append_line(&mut self.batch.bytes, bytes, recv_time, Source::Ws);
                self.batch.market_lines += 1;
            }
            Err(Reject::Malformed(why)) => {
                Stats::add(&self.stats.malformed, 1);
                self.warn(format_args!("skipped malformed frame ({why}): {}", preview(bytes)));
            }
            Err(Reject::UnknownType(t)) => {
                Stats::add(&self.stats.unknown_type, 1);
                self.warn(format_args!("skipped message of unknown type {t:?}"));
            }
        }
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        self.warnings += 1;
        if self.warnings <= MALFORMED_WARNINGS_MAX {
            log::warn!("worker-{}: {msg}", self.id);
            if self.warnings == MALFORMED_WARNINGS_MAX {
                log::warn!("worker-{}: further skipped frames are logged at debug level (all are counted)", self.id);
            }
        } else {
            log::debug!("worker-{}: {msg}", self.id);
        }
    }

    /// Sends the pending batch, if any. False if the writer is gone.
    fn flush(&mut self, out: &Sender<Batch>) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.batch, Batch::with_capacity(BATCH_BYTES * 2));
        out.send(batch).is_ok()
    }

    /// The pending output, for benches and tests that drive `handle` directly.
    pub fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }
}

/// The first bytes of a frame for a log line, lossily decoded.
fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let cut = &bytes[..bytes.len().min(MAX)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > MAX {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> WorkerInput {
        WorkerInput::Frame(Frame {
            text: Utf8Bytes::from(text.to_string()),
            recv_unix_ns: 1_489_876_941_376_334_200,
            generation: 1,
        })
    }

    #[test]
    fn valid_messages_become_lines_and_bad_ones_are_counted() {
        let stats = Stats::default();
        let mut w = Worker::new(0, &stats);
        for f in [
            r#"{"type":"quote","symbol_id":"A","sequence":1,"ask_price":1.10}"#,
            "{oops",
            r#"{"type":"candles","symbol_id":"A"}"#,
            r#"{"type":"quote","symbol_id":"A","sequence":2,"ask_price":1.20}"#,
        ] {
            w.handle(frame(f));
        }
        let batch = w.take_batch();
        assert_eq!(batch.market_lines, 2);
        let text = String::from_utf8(batch.bytes).expect("utf8");
        assert_eq!(
            text,
            "{\"type\":\"quote\",\"symbol_id\":\"A\",\"sequence\":1,\"ask_price\":1.10,\"recv_time\":\"2017-03-18T22:42:21.3763342Z\",\"source\":\"ws\"}\n\
             {\"type\":\"quote\",\"symbol_id\":\"A\",\"sequence\":2,\"ask_price\":1.20,\"recv_time\":\"2017-03-18T22:42:21.3763342Z\",\"source\":\"ws\"}\n"
        );
        let s = stats.snapshot();
        assert_eq!((s.malformed, s.unknown_type), (1, 1));
    }

    #[test]
    fn run_drains_everything_then_returns_when_the_reader_is_gone() {
        let stats = Stats::default();
        let (in_tx, in_rx) = crossbeam_channel::bounded(16);
        let (out_tx, out_rx) = crossbeam_channel::bounded(16);
        for i in 1..=10 {
            in_tx
                .send(frame(&format!(r#"{{"type":"trade","symbol_id":"A","sequence":{i},"uuid":"U{i}"}}"#)))
                .expect("send");
        }
        drop(in_tx);
        Worker::new(0, &stats).run(in_rx, out_tx);
        let lines: u64 = out_rx.iter().map(|b| b.market_lines).sum();
        assert_eq!(lines, 10);
    }
}
