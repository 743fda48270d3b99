//! The writer thread: the only code that touches stdout (or whatever sink the pipeline was
//! given). It receives whole-line batches from the workers and the reader and writes each with
//! one `write_all`, so a line is never split and the output never interleaves.
//!
//! Batches are cut by their producers when they reach `BATCH_BYTES` or when the producer goes
//! idle, so at low rates a line reaches the sink as soon as it is formed (a `tail -f` sees it at
//! once) and at high rates a syscall carries tens of KiB. A closed pipe (EPIPE) is a normal end:
//! `coinfeed | head -5` stops cleanly and quietly. The line counts come from the batches
//! themselves (`Batch::lines`) and are added to the metrics only once the bytes are written.

use std::io::{ErrorKind, Write};

use crossbeam_channel::Receiver;

use crate::metrics::Metrics;
use crate::output::ndjson::Batch;
use crate::shutdown::Shutdown;

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

pub fn run<W: Write>(rx: Receiver<Batch>, mut out: W, metrics: &Metrics, shutdown: &Shutdown) -> WriterExit {
    let mut batches: u64 = 0;
    for batch in rx.iter() {
        batches += 1;
        crate::fault::maybe_panic("writer", batches);
        if let Err(e) = out.write_all(batch.as_bytes()).and_then(|()| {
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
        let lines = batch.lines();
        metrics.written.add(lines.market);
        metrics.recovered_written.add(lines.rest);
        metrics.control_lines.add(lines.control);
        metrics.book_top_lines.add(lines.book_top);
        metrics.bytes_written.add(batch.len() as u64);
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
    use crate::output::ndjson::{ConnectionEvent, ControlLine};

    struct ClosedPipe;
    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn market(frames: &[&str]) -> Batch {
        let mut b = Batch::default();
        for f in frames {
            b.push_market(f.as_bytes(), "T");
        }
        b
    }

    #[test]
    fn writes_whole_batches_and_counts_lines() {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let metrics = Metrics::new(1);
        let shutdown = Shutdown::new();
        tx.send(market(&["{\"a\":1}", "{\"b\":2}"])).expect("send");
        let mut control = Batch::default();
        control.push_control(
            &ControlLine::Connection { event: ConnectionEvent::Connected, generation: 1, url: "u", reason: None },
            "T",
        );
        tx.send(control).expect("send");
        drop(tx);
        let mut out = Vec::new();
        assert_eq!(run(rx, &mut out, &metrics, &shutdown), WriterExit::Drained);
        let text = String::from_utf8(out.clone()).expect("utf8");
        assert_eq!(text.lines().count(), 3);
        assert!(text.starts_with("{\"a\":1,\"recv_time\":\"T\",\"source\":\"ws\"}\n"), "{text}");
        let s = metrics.snapshot();
        assert_eq!((s.written, s.control_lines, s.bytes_written), (2, 1, out.len() as u64));
        assert!(!shutdown.is_requested());
    }

    #[test]
    fn a_closed_pipe_is_a_clean_stop_that_stops_the_pipeline() {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let metrics = Metrics::new(1);
        let shutdown = Shutdown::new();
        tx.send(market(&["{}"])).expect("send");
        assert_eq!(run(rx, ClosedPipe, &metrics, &shutdown), WriterExit::OutputClosed);
        assert!(shutdown.is_requested());
        assert_eq!(metrics.snapshot().written, 0, "nothing was written, nothing is counted");
    }
}
