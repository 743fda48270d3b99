//! The writer thread: the only code that touches stdout (or whatever sink the pipeline was
//! given). It receives whole-line batches from the workers and the reader and writes each with
//! one `write_all`, so a line is never split and the output never interleaves.
//!
//! Batches are cut by their producers when they reach `BATCH_BYTES` or when the producer goes
//! idle, so at low rates a line reaches the sink as soon as it is formed (a `tail -f` sees it at
//! once) and at high rates a syscall carries tens of KiB. A closed pipe (EPIPE) is a normal end:
//! `coinfeed | head -5` stops cleanly and quietly.

use std::io::{ErrorKind, Write};

use crossbeam_channel::Receiver;

use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// A producer sends its batch once it holds this many bytes.
pub const BATCH_BYTES: usize = 32 * 1024;

/// Whole NDJSON lines and how many of each kind they hold.
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// Market-data lines from the WebSocket.
    pub market_lines: u64,
    /// Market-data lines recovered over REST.
    pub rest_lines: u64,
    pub control_lines: u64,
}

impl Batch {
    pub fn with_capacity(n: usize) -> Batch {
        Batch { bytes: Vec::with_capacity(n), ..Batch::default() }
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// How the writer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterExit {
    /// Every producer finished and everything was written and flushed.
    Drained,
    /// The reading end of stdout went away; treated as a clean stop.
    OutputClosed,
    /// Any other write error (disk full, ...): the pipeline stops with an error.
    Failed(String),
}

pub fn run<W: Write>(rx: Receiver<Batch>, mut out: W, stats: &Stats, shutdown: &Shutdown) -> WriterExit {
    for batch in rx.iter() {
        if let Err(e) = out.write_all(&batch.bytes).and_then(|()| {
            // Flush only when nothing else is queued: batches are large, and an idle flush is
            // what bounds latency for a slow feed.
            if rx.is_empty() {
                out.flush()
            } else {
                Ok(())
            }
        }) {
            shutdown.request();
            return if e.kind() == ErrorKind::BrokenPipe {
                log::info!("stdout was closed by the reader; stopping");
                WriterExit::OutputClosed
            } else {
                log::error!("cannot write to stdout: {e}; stopping");
                WriterExit::Failed(e.to_string())
            };
        }
        Stats::add(&stats.written, batch.market_lines);
        Stats::add(&stats.recovered_written, batch.rest_lines);
        Stats::add(&stats.control_lines, batch.control_lines);
        Stats::add(&stats.bytes_written, batch.bytes.len() as u64);
    }
    match out.flush() {
        Ok(()) => WriterExit::Drained,
        Err(e) if e.kind() == ErrorKind::BrokenPipe => WriterExit::OutputClosed,
        Err(e) => WriterExit::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct ClosedPipe;
    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_whole_batches_and_counts_lines() {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let stats = Stats::default();
        let shutdown = Shutdown::new();
        tx.send(Batch { bytes: b"{\"a\":1}\n{\"b\":2}\n".to_vec(), market_lines: 2, rest_lines: 0, control_lines: 0 })
            .expect("send");
        tx.send(Batch {
            bytes: b"{\"type\":\"connection\"}\n".to_vec(),
            market_lines: 0,
            rest_lines: 0,
            control_lines: 1,
        })
        .expect("send");
        drop(tx);
        let mut out = Vec::new();
        assert_eq!(run(rx, &mut out, &stats, &shutdown), WriterExit::Drained);
        assert_eq!(out, b"{\"a\":1}\n{\"b\":2}\n{\"type\":\"connection\"}\n");
        let s = stats.snapshot();
        assert_eq!((s.written, s.control_lines, s.bytes_written), (2, 1, out.len() as u64));
        assert!(!shutdown.is_requested());
    }

    #[test]
    fn a_closed_pipe_is_a_clean_stop_that_stops_the_pipeline() {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let stats = Stats::default();
        let shutdown = Shutdown::new();
        tx.send(Batch { bytes: b"{}\n".to_vec(), market_lines: 1, rest_lines: 0, control_lines: 0 }).expect("send");
        assert_eq!(run(rx, ClosedPipe, &stats, &shutdown), WriterExit::OutputClosed);
        assert!(shutdown.is_requested());
        assert_eq!(stats.snapshot().written, 0, "nothing was written, nothing is counted");
    }
}
