//! Wires the threads together and runs them to the end: one reader, `n_workers` workers, one
//! recovery thread and one writer, all started here inside `std::thread::scope`, all named and all joined. The calling
//! thread supervises: it prints the health line and enforces the shutdown deadline.
//!
//! Shutdown travels by channel disconnection, the same way whatever the cause (Ctrl-C, a
//! terminal error, a closed stdout): the reader returns and drops its senders, the workers drain
//! their channels and drop theirs, the writer writes what is left, flushes and returns.

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::config::Config;
use crate::reader::{Reader, ReaderExit};
use crate::recovery::{Recovery, RecoveryHandle};
use crate::rest::RestClient;
use crate::shutdown::Shutdown;
use crate::stats::{self, Stats};
use crate::worker::{Worker, WorkerInput};
use crate::writer::{self, Batch, WriterExit};

/// Batches queued for the writer per producer; with `writer::BATCH_BYTES` per batch this bounds
/// the bytes waiting for stdout to a few MiB.
const WRITER_QUEUE_PER_PRODUCER: usize = 4;
/// How often the supervisor looks at the shutdown flag and the clock.
const SUPERVISOR_TICK: Duration = Duration::from_millis(50);
/// Symbols listed with their drop counts in the summary.
const SUMMARY_TOP_DROPS: usize = 10;

/// How the pipeline ended, mapped to an exit code by `main`.
#[derive(Debug, PartialEq, Eq)]
pub enum PipelineExit {
    /// Stopped on request (signal) or because stdout was closed: exit 0.
    Clean,
    /// CoinAPI refused the key: retrying cannot help (exit 3).
    KeyRefused(String),
    /// Stdout failed for another reason (exit 1).
    OutputFailed(String),
}

/// Runs until a stop is requested (or the reader gives up), then drains and returns.
pub fn run<W: Write + Send>(config: &Config, shutdown: &Shutdown, stats: &Stats, out: W) -> PipelineExit {
    let started = Instant::now();
    let n = config.n_workers;
    let (writer_tx, writer_rx) = crossbeam_channel::bounded::<Batch>((n + 1) * WRITER_QUEUE_PER_PRODUCER);
    let (worker_txs, worker_rxs): (Vec<_>, Vec<_>) =
        (0..n).map(|_| crossbeam_channel::bounded::<WorkerInput>(config.queue_capacity)).unzip();
    // Clones kept only to read queue depths for the health line.
    let depth_probes: Vec<Receiver<WorkerInput>> = worker_rxs.clone();
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let recovery_handle = RecoveryHandle::new(config);
    let recovery_handle = &recovery_handle;
    let rest = RestClient::new(config);
    let rest_agent = rest.agent();

    let (reader_exit, writer_exit) = thread::scope(|s| {
        let writer = thread::Builder::new()
            .name("writer".into())
            .spawn_scoped(s, move || {
                let exit = writer::run(writer_rx, out, stats, shutdown);
                drop(done_tx);
                exit
            })
            .expect("spawning the writer thread");
        let mut workers = Vec::with_capacity(n);
        for (id, rx) in worker_rxs.into_iter().enumerate() {
            let tx = writer_tx.clone();
            let handle = thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn_scoped(s, move || Worker::new(id, stats).with_recovery(recovery_handle).run(rx, tx))
                .expect("spawning a worker thread");
            workers.push(handle);
        }
        let recovery = Recovery { handle: recovery_handle, client: rest, lanes: worker_txs.clone(), stats, shutdown };
        let recovery = thread::Builder::new()
            .name("recovery".into())
            .spawn_scoped(s, move || recovery.run())
            .expect("spawning the recovery thread");
        let reader = thread::Builder::new()
            .name("reader".into())
            .spawn_scoped(s, move || {
                let exit = Reader::new(config, stats, shutdown, worker_txs, writer_tx).run();
                // Whatever ended the reader ends the run: the recovery thread must let go of the
                // workers' channels too.
                shutdown.request();
                exit
            })
            .expect("spawning the reader thread");

        supervise(config, stats, shutdown, &done_rx, &depth_probes, started, rest_agent);

        if recovery.join().is_err() {
            log::error!("the recovery thread panicked");
        }

        let reader_exit = reader.join().unwrap_or_else(|_| ReaderExit::Fatal("the reader thread panicked".into()));
        for w in workers {
            if w.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
        let writer_exit = writer.join().unwrap_or_else(|_| WriterExit::Failed("the writer thread panicked".into()));
        (reader_exit, writer_exit)
    });

    log::info!("{}", stats::summary_line(&stats.snapshot(), started.elapsed(), &stats.top_drops(SUMMARY_TOP_DROPS)));
    match (reader_exit, writer_exit) {
        (_, WriterExit::Failed(e)) => PipelineExit::OutputFailed(e),
        (ReaderExit::Fatal(msg), _) => PipelineExit::KeyRefused(msg),
        _ => PipelineExit::Clean,
    }
}

/// Health lines and the shutdown deadline, until the writer has finished.
fn supervise(
    config: &Config,
    stats: &Stats,
    shutdown: &Shutdown,
    done: &Receiver<()>,
    depth_probes: &[Receiver<WorkerInput>],
    started: Instant,
    rest_agent: ureq::Agent,
) {
    let mut rest_agent = Some(rest_agent);
    let mut prev = stats.snapshot();
    let mut prev_at = started;
    let mut stop_deadline: Option<Instant> = None;
    loop {
        match done.recv_timeout(SUPERVISOR_TICK) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        match stop_deadline {
            None if shutdown.is_requested() => {
                stop_deadline = Some(now + config.shutdown_timeout);
                log::info!("stopping: closing the connection and writing what is queued");
                // Interrupts a REST request in flight so it cannot hold the stop up.
                if let Some(agent) = rest_agent.take() {
                    agent.shutdown();
                }
            }
            Some(deadline) if now >= deadline => {
                // A thread is stuck (typically stdout blocked by a reader that stopped reading):
                // scoped threads cannot be abandoned, so the process is the unit to stop.
                log::error!(
                    "shutdown did not finish within {:.1}s (stdout blocked?); exiting with what was written",
                    config.shutdown_timeout.as_secs_f64()
                );
                log::info!(
                    "{}",
                    stats::summary_line(&stats.snapshot(), started.elapsed(), &stats.top_drops(SUMMARY_TOP_DROPS))
                );
                std::process::exit(1);
            }
            _ => {}
        }
        if let Some(interval) = config.health_interval {
            if now.duration_since(prev_at) >= interval {
                let snap = stats.snapshot();
                let depths: Vec<usize> = depth_probes.iter().map(Receiver::len).collect();
                log::info!(
                    "{}",
                    stats::health_line(&snap, &prev, now.duration_since(prev_at), &depths, config.queue_capacity)
                );
                prev = snap;
                prev_at = now;
            }
        }
    }
}
