//! The writer thread: the only code that writes the output, to stdout or to rotating files
//! (`sink.rs`). It receives whole-line batches from the workers and the reader and writes each
//! with one `write_all`, so a line is never split (nor split across two files) and the output
//! never interleaves. With `--limit N` it writes exactly N market-data lines (cutting the last
//! batch at a line boundary) and stops the run.
//!
//! Batches are cut by their producers when they reach `BATCH_BYTES` or when the producer goes
//! idle, so at low rates a line reaches the sink as soon as it is formed (a `tail -f` sees it at
//! once) and at high rates a syscall carries tens of KiB. A closed pipe (EPIPE) is a normal end:
//! `coinfeed | head -5` stops cleanly and quietly. The line counts come from the batches
//! themselves (`Batch::lines`) and are added to the metrics only once the bytes are written.
//! When no batch comes for a second it lets the files rotate on time (`Sink::tick`).

use std::io::{ErrorKind, Write};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::clock::unix_now_ns;
use crate::metrics::Metrics;
use crate::output::ndjson::{data_lines_prefix, Batch, LineCounts};
use crate::output::sink::Sink;
use crate::shutdown::Shutdown;

/// How long the writer waits for a batch before it lets a time rotation happen.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// How the writer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterExit {
    /// Every producer finished and everything was written and flushed.
    Drained,
    /// The reading end of stdout went away; treated as a clean stop.
    OutputClosed,
    /// `--limit` market-data lines were written: a clean stop.
    LimitReached,
    /// Any other write error (disk full, ...): the pipeline stops with an error.
    Failed(String),
}

/// Writes every batch to `sink` until the producers are gone, `limit` market-data lines are
/// written, or a write fails.
pub fn run<W: Write>(
    rx: Receiver<Batch>,
    mut sink: Sink<W>,
    metrics: &Metrics,
    shutdown: &Shutdown,
    limit: Option<u64>,
) -> WriterExit {
    let mut batches: u64 = 0;
    let mut data_written: u64 = 0;
    loop {
        let batch = match rx.recv_timeout(IDLE_TICK) {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = sink.tick(unix_now_ns()) {
                    return failed(e, &sink, LineCounts::default(), &rx, metrics, shutdown);
                }
                metrics.files_finished.set(sink.files_finished());
                sink.report(metrics);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        batches += 1;
        crate::fault::maybe_panic("writer", batches);
        let mut lines = batch.lines();
        let mut bytes = batch.as_bytes();
        let left = limit.map(|n| n - data_written);
        if let Some(left) = left.filter(|&left| lines.data() >= left) {
            let (len, counts) = data_lines_prefix(bytes, left);
            bytes = &bytes[..len];
            lines = counts;
        }
        if let Err(e) = sink.write_batch(bytes, lines.data() + lines.control, unix_now_ns()).and_then(|()| {
            // Flush only when nothing else is queued: batches are large, and an idle flush is
            // what bounds latency for a slow feed.
            if rx.is_empty() {
                sink.flush()
            } else {
                Ok(())
            }
        }) {
            return failed(e, &sink, lines, &rx, metrics, shutdown);
        }
        metrics.written.add(lines.market);
        metrics.recovered_written.add(lines.rest);
        metrics.control_lines.add(lines.control);
        metrics.book_top_lines.add(lines.book_top);
        metrics.bytes_written.add(bytes.len() as u64);
        metrics.files_finished.set(sink.files_finished());
        sink.report(metrics);
        data_written += lines.data();
        if limit == Some(data_written) {
            log::info!("--limit reached: {data_written} market-data lines written; stopping");
            shutdown.request();
            let files = sink.status().is_some();
            return match sink.finish(metrics) {
                Ok(files) => {
                    metrics.files_finished.set(files);
                    WriterExit::LimitReached
                }
                Err(e) => finish_failed(e, files),
            };
        }
    }
    let files = sink.status().is_some();
    match sink.finish(metrics) {
        Ok(files) => {
            metrics.files_finished.set(files);
            WriterExit::Drained
        }
        Err(e) if e.kind() == ErrorKind::BrokenPipe => WriterExit::OutputClosed,
        Err(e) => finish_failed(e, files),
    }
}

/// The last flush, or finishing the last file (fsync, rename), failed: every line was given to
/// the output, but the last file is left as its `.part` (or Kafka did not take every record).
fn finish_failed(e: std::io::Error, files: bool) -> WriterExit {
    if files {
        log::error!(
            "cannot finish the output: {e}; the last file is left as .part (its lines were written, the rename was not)"
        );
    } else {
        log::error!("cannot finish the output: {e}");
    }
    WriterExit::Failed(e.to_string())
}

/// A write failed: a closed pipe is a clean stop; anything else stops the run, saying what was
/// lost (the batch that failed and every line still queued) and what is intact.
fn failed<W: Write>(
    e: std::io::Error,
    sink: &Sink<W>,
    failed_batch: LineCounts,
    rx: &Receiver<Batch>,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> WriterExit {
    shutdown.request();
    if e.kind() == ErrorKind::BrokenPipe {
        log::info!("stdout was closed by the reader; stopping");
        return WriterExit::OutputClosed;
    }
    // Everything still coming is lost: counted until the producers are gone (the stop makes
    // the reader end and the workers drain, within the shutdown deadline).
    let queued: u64 = rx.iter().map(|b| b.lines().data() + b.lines().control).sum();
    let batch = failed_batch.data() + failed_batch.control;
    match sink.status() {
        None => log::error!(
            "cannot write to {}: {e}; stopping: this batch ({batch} lines, some may have been handed over) and the {queued} lines after it are not written",
            sink.describe()
        ),
        Some(status) => {
            let part = status.part.map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into());
            log::error!(
                "cannot write the output: {e}; stopping: the {} files finished are intact; {part} is left as it is, with the {} lines written before the failure; this batch ({batch} lines) and the {queued} lines after it are not written",
                status.finished,
                status.lines,
            );
        }
    }
    metrics.files_finished.set(sink.files_finished());
    WriterExit::Failed(e.to_string())
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
        assert_eq!(run(rx, Sink::Stream(&mut out), &metrics, &shutdown, None), WriterExit::Drained);
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
        assert_eq!(run(rx, Sink::Stream(ClosedPipe), &metrics, &shutdown, None), WriterExit::OutputClosed);
        assert!(shutdown.is_requested());
        assert_eq!(metrics.snapshot().written, 0, "nothing was written, nothing is counted");
    }
}
