//! The only place that creates the channels between pipeline threads and spawns the threads:
//! one reader, `n_workers` workers, one recovery thread and one writer, inside
//! `std::thread::scope` on a `pipeline` thread, all named and all joined. The calling thread
//! supervises: it prints the health line, enforces the shutdown deadline, and maps how the
//! threads ended (a panic among them) to a typed `Outcome` that `main` turns into an exit code.
//!
//! Shutdown travels by channel disconnection, the same way whatever the cause (Ctrl-C, a
//! terminal error, a closed stdout, a thread that panicked): the reader returns and drops its
//! senders, the workers drain their channels and drop theirs, the writer writes what is left,
//! flushes and returns. A panic in any thread is caught where the thread starts, logged with the
//! thread's name, and requests the stop, so the run ends within a second with exit 1.

use std::any::Any;
use std::io::Write;
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use parking_lot::Mutex;

use crate::clock::unix_now_ns;
use crate::config::limits::{RECORD_QUEUE_CHUNKS, WRITER_QUEUE_PER_PRODUCER};
use crate::config::{CompressArg, Config, Source};
use crate::ingest::record;
use crate::ingest::recorder;
use crate::ingest::replay::{Replay, ReplayExit};
use crate::ingest::{Reader, ReaderExit};
use crate::lanes::{self, Budget, Resyncs};
use crate::metrics::http::{self, HealthRules};
use crate::metrics::{proc, text, Metrics, Snapshot};
use crate::output::ndjson::Batch;
use crate::output::sink::{Compress, FileSet, Rotating, Sink};
use crate::output::writer::{self, WriterExit};
use crate::recovery::handle::RecoveryHandle;
use crate::recovery::rest::RestClient;
use crate::recovery::Recovery;
use crate::shutdown::Shutdown;
use crate::worker::symbols::{ResumePoint, TableLimits};
use crate::worker::Worker;

/// How often the supervisor looks at the shutdown flag and the clock.
const SUPERVISOR_TICK: Duration = Duration::from_millis(50);
/// Symbols listed with their drop counts in the summary.
const SUMMARY_TOP_DROPS: usize = 10;

/// How the pipeline ended, mapped to an exit code by `main`.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request (signal) or because stdout was closed: exit 0.
    Clean,
    /// CoinAPI refused the key: retrying cannot help (exit 3).
    KeyRefused(String),
    /// Stdout failed for another reason (exit 1).
    OutputFailed(String),
    /// A pipeline thread panicked; the run was stopped (exit 1).
    ThreadPanicked { thread: String, message: String },
    /// The pipeline could not be started: the OS refused a thread (exit 1).
    StartFailed(String),
    /// The graceful stop did not finish within `--shutdown-timeout` (exit 1). A thread is still
    /// stuck (typically writing into a stdout nobody reads); the process must end to free it.
    ShutdownTimedOut,
    /// A replay read every recording it could, but some were damaged (each named, exit 1).
    ReplayDamaged(Vec<String>),
}

/// What `main` prepared for the pipeline besides the config: the metrics endpoint's socket
/// (bound before anything starts, so a taken port is refused at once) and whether stderr is a
/// terminal (the status line is then redrawn in place instead of scrolling).
#[derive(Debug, Default)]
pub struct Services {
    pub metrics_listener: Option<TcpListener>,
    pub live_status: bool,
    /// The Kafka sink, connected and checked (`--kafka-brokers`); the output goes there.
    #[cfg(feature = "kafka")]
    pub kafka: Option<Box<crate::output::kafka::KafkaSink>>,
    /// `--resume`: each symbol's last trade as this shard wrote it before, for its worker.
    pub resume: Vec<ResumePoint>,
}

/// The first thread failure of a run, kept for the outcome.
type Failure = Mutex<Option<(String, String)>>;

/// Runs until a stop is requested (or the reader gives up, or a thread fails), then drains and
/// returns. On `ShutdownTimedOut` the pipeline thread is left running: the caller exits.
pub fn run<W: Write + Send + 'static>(
    config: Arc<Config>,
    shutdown: Arc<Shutdown>,
    metrics: Arc<Metrics>,
    out: W,
    services: Services,
) -> Outcome {
    let started = Instant::now();
    let mut services = services;
    #[cfg(feature = "kafka")]
    let kafka = services.kafka.take();
    #[cfg(not(feature = "kafka"))]
    let kafka = None;
    let resume = std::mem::take(&mut services.resume);
    let sink = match open_sink(&config, out, kafka) {
        Ok(sink) => sink,
        Err(e) => return Outcome::StartFailed(e),
    };
    let recorder = match open_recording(&config) {
        Ok(files) => files,
        Err(e) => return Outcome::StartFailed(e),
    };
    let listener = services.metrics_listener;
    let rest = RestClient::new(&config.recovery);
    let rest_agent = rest.agent();
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Outcome>(1);
    let budget = Arc::new(Budget::new(config.pipeline.buffer_bytes, config.pipeline.n_workers));
    let pipeline = {
        let (config, shutdown, metrics) = (Arc::clone(&config), Arc::clone(&shutdown), Arc::clone(&metrics));
        let budget = Arc::clone(&budget);
        thread::Builder::new().name("pipeline".into()).spawn(move || {
            let io = Io { sink, recorder, listener, started, resume };
            let outcome = run_threads(&config, &shutdown, &metrics, &budget, rest, io);
            let _ = done_tx.send(outcome);
        })
    };
    let pipeline = match pipeline {
        Ok(handle) => handle,
        Err(e) => return Outcome::StartFailed(format!("cannot start the pipeline thread: {e}")),
    };

    let mut rest_agent = Some(rest_agent);
    let mut prev = metrics.snapshot();
    let mut prev_at = started;
    let mut stop_deadline: Option<Instant> = None;
    let mut memory = MemoryReturn::default();
    let mut status = services.live_status.then(StatusLine::default);
    let pc = &config.pipeline;
    metrics.buffer_budget_bytes.set(budget.max());
    let outcome = loop {
        match done_rx.recv_timeout(SUPERVISOR_TICK) {
            Ok(outcome) => break outcome,
            Err(RecvTimeoutError::Disconnected) => {
                break Outcome::ThreadPanicked { thread: "pipeline".into(), message: "ended without an outcome".into() }
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        match stop_deadline {
            None if shutdown.is_requested() => {
                stop_deadline = Some(now + pc.shutdown_timeout);
                log::info!("stopping: closing the source and writing what is queued");
                // Interrupts a REST request in flight so it cannot hold the stop up.
                if let Some(agent) = rest_agent.take() {
                    agent.shutdown();
                }
            }
            Some(deadline) if now >= deadline => {
                let queued: u64 = metrics.queue_depths().iter().sum();
                log::error!(
                    "shutdown did not finish within {:.1}s (stdout blocked or slow?); exiting with what was written: about {queued} messages ({} KiB) still queued were not written (see --shutdown-timeout, --buffer-mib)",
                    pc.shutdown_timeout.as_secs_f64(),
                    budget.used() >> 10
                );
                log::info!("{}", summary(&metrics.snapshot(), started, &metrics));
                return Outcome::ShutdownTimedOut;
            }
            _ => {}
        }
        memory.watch(budget.used(), &metrics);
        metrics.buffer_used_bytes.set(budget.used());
        for w in 0..budget.n_workers() {
            metrics.set_queue_bytes(w, budget.used_by(w));
        }
        if let Some(status) = status.as_mut() {
            status.redraw(now, &metrics, &budget);
        } else if let Some(interval) = pc.health_interval {
            if now.duration_since(prev_at) >= interval {
                let snap = metrics.snapshot();
                let depths = metrics.queue_depths();
                let queues =
                    text::Queues { depths: &depths, cap: pc.queue_capacity, buffer: (budget.used(), budget.max()) };
                let line = text::health_line(&snap, &prev, now.duration_since(prev_at), &queues, proc::memory_kib());
                log::info!("{line}");
                prev = snap;
                prev_at = now;
            }
        }
    };
    let _ = pipeline.join();
    if let Some(status) = status {
        status.clear();
    }
    log::info!("{}", summary(&metrics.snapshot(), started, &metrics));
    outcome
}

/// The output: stdout, rotating files under `--output-dir`, or the Kafka sink `main` connected.
#[cfg(feature = "kafka")]
type KafkaSink = Option<Box<crate::output::kafka::KafkaSink>>;
#[cfg(not(feature = "kafka"))]
type KafkaSink = Option<std::convert::Infallible>;

fn open_sink<W: Write>(config: &Config, out: W, kafka: KafkaSink) -> Result<Sink<W>, String> {
    #[cfg(feature = "kafka")]
    if let Some(k) = kafka {
        return Ok(Sink::Kafka(k));
    }
    #[cfg(not(feature = "kafka"))]
    let _ = kafka;
    let Some(dir) = &config.output.dir else { return Ok(Sink::Stream(out)) };
    let compress = match config.output.compress {
        None => Compress::None,
        Some(CompressArg::Zstd) => Compress::Zstd,
        Some(CompressArg::Gzip) => Compress::Gzip,
    };
    let set = FileSet {
        dir: dir.clone(),
        prefix: "coinfeed".into(),
        extension: "ndjson".into(),
        rotate: config.output.rotate,
        compress,
        header: Vec::new(),
    };
    Rotating::open(set, unix_now_ns())
        .map(Sink::Files)
        .map_err(|e| format!("--output-dir: cannot open the first file: {e}"))
}

/// The recording's files for `--record FILE`: `<dir of FILE>/<stem>-<UTC start>.<extension>`.
fn open_recording(config: &Config) -> Result<Option<Rotating>, String> {
    let Source::Live { record: Some(path) } = &config.source else { return Ok(None) };
    let name = |s: Option<&std::ffi::OsStr>| s.map(|s| s.to_string_lossy().into_owned());
    let set = FileSet {
        dir: path.parent().map(|p| p.to_path_buf()).filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| ".".into()),
        prefix: name(path.file_stem()).unwrap_or_else(|| "coinfeed".into()),
        extension: name(path.extension()).unwrap_or_else(|| "cfrec".into()),
        rotate: config.output.rotate,
        compress: Compress::None,
        header: record::header().to_vec(),
    };
    Rotating::open(set, unix_now_ns()).map(Some).map_err(|e| format!("--record: cannot open the recording: {e}"))
}

/// The files and sockets the pipeline threads take over.
struct Io<W: Write> {
    sink: Sink<W>,
    recorder: Option<Rotating>,
    listener: Option<TcpListener>,
    started: Instant,
    resume: Vec<ResumePoint>,
}

/// The health line redrawn in place once a second when stderr is a terminal (rate, drops,
/// queue, recovery, RSS); logs clear it before they print (see main's logger), and the next
/// redraw brings it back.
#[derive(Debug, Default)]
struct StatusLine {
    last: Option<(Instant, Snapshot)>,
}

/// How often the status line is redrawn.
const STATUS_EVERY: Duration = Duration::from_secs(1);

impl StatusLine {
    fn redraw(&mut self, now: Instant, metrics: &Metrics, budget: &Budget) {
        let snap = metrics.snapshot();
        let Some((at, prev)) = self.last else {
            self.last = Some((now, snap));
            return;
        };
        if now.duration_since(at) < STATUS_EVERY {
            return;
        }
        let line = text::status_line(
            &snap,
            &prev,
            now.duration_since(at),
            &metrics.queue_depths(),
            (budget.used(), budget.max()),
            proc::memory_kib(),
        );
        // `\r` and erase-line: the line is rewritten where it is (on stderr, never stdout), with
        // autowrap off while it is drawn, so a terminal narrower than the line clips it instead
        // of wrapping it onto a second row the next redraw would not erase. One write, under
        // stderr's lock: the logger writes whole lines the same way, so neither splits the other.
        let text = format!("\r\x1b[2K\x1b[?7l{line}\x1b[?7h");
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
        self.last = Some((now, snap));
    }

    fn clear(self) {
        if self.last.is_some() {
            let _ = std::io::stderr().write_all(b"\r\x1b[2K");
        }
    }
}

/// Gives the memory of a drained stall back to the OS. Queued frames are many small
/// allocations; once freed, the allocator keeps their pages for reuse, so after one stall the
/// process would sit at its peak for good (an operator would call that the original leak). When
/// the buffer has been above `MEMORY_RETURN_ABOVE` and is back under `MEMORY_RETURN_BELOW`, the
/// free pages go back (`proc::return_free_memory`), once per stall.
#[derive(Debug, Default)]
struct MemoryReturn {
    armed: bool,
}

/// A stall whose buffer grew past this is worth giving back.
const MEMORY_RETURN_ABOVE: u64 = 4 << 20;
/// ...once the buffer has drained below this.
const MEMORY_RETURN_BELOW: u64 = 1 << 20;

impl MemoryReturn {
    fn watch(&mut self, buffer_used: u64, metrics: &Metrics) {
        if buffer_used > MEMORY_RETURN_ABOVE {
            self.armed = true;
        } else if self.armed && buffer_used < MEMORY_RETURN_BELOW {
            self.armed = false;
            let started = Instant::now();
            proc::return_free_memory();
            metrics.memory_returns.add(1);
            log::debug!("buffer drained: free memory returned to the OS in {} µs", started.elapsed().as_micros());
        }
    }
}

fn summary(snap: &Snapshot, started: Instant, metrics: &Metrics) -> String {
    text::summary_line(snap, started.elapsed(), &metrics.top_drops(SUMMARY_TOP_DROPS), proc::memory_kib())
}

/// Creates the channels, starts every pipeline thread and joins them all.
fn run_threads<W: Write + Send>(
    config: &Config,
    shutdown: &Shutdown,
    metrics: &Metrics,
    budget: &Budget,
    rest: RestClient,
    io: Io<W>,
) -> Outcome {
    let Io { sink, recorder, listener, started, resume } = io;
    let pc = &config.pipeline;
    let n = pc.n_workers;
    let mut resume_by_worker: Vec<Vec<ResumePoint>> = (0..n).map(|_| Vec::new()).collect();
    for point in resume {
        resume_by_worker[lanes::route(point.symbol_id.as_bytes(), n)].push(point);
    }
    let (writer_tx, writer_rx) = crossbeam_channel::bounded::<Batch>((n + 1) * WRITER_QUEUE_PER_PRODUCER);
    let (lanes, recovery_lanes, worker_rxs) = lanes::worker_queues(budget, pc.queue_capacity, pc.queue_wait, metrics);
    let recovery_handle = RecoveryHandle::new(&config.recovery, Instant::now());
    let recovery_handle = &recovery_handle;
    let limits = TableLimits {
        symbols_max: config.limits.symbols_per_worker,
        trade_ids_per_symbol: config.limits.trade_ids_per_symbol,
    };
    let failure: Failure = Mutex::new(None);
    let failure = &failure;
    let books = config.pipeline.books;
    let resyncs = Resyncs::new(config.limits.symbols_total);
    let resyncs = &resyncs;
    let replay = matches!(config.source, Source::Replay { .. });
    let (record_tx, rx) = crossbeam_channel::bounded::<recorder::Chunk>(RECORD_QUEUE_CHUNKS);
    let mut record_rx = Some(rx);
    let record_queue = recorder::Queue { tx: record_tx, bytes: AtomicU64::new(0) };
    let record_queue = &record_queue;
    let source_done = Shutdown::new();
    let source_done = &source_done;

    let limit = config.output.limit;
    let (reader_exit, writer_exit) = thread::scope(|s| {
        let writer = spawn(s, "writer".into(), failure, shutdown, move || {
            writer::run(writer_rx, sink, metrics, shutdown, limit)
        });
        let recording = recorder.map(|files| {
            let rx = record_rx.take().expect("one recorder");
            spawn(s, "recorder".into(), failure, shutdown, move || {
                recorder::run(rx, record_queue, files, metrics, source_done)
            })
        });
        let record_tap = recording.is_some().then_some(record_queue);
        let workers: Vec<_> = worker_rxs
            .into_iter()
            .zip(resume_by_worker)
            .enumerate()
            .map(|(id, (rx, resume))| {
                let tx = writer_tx.clone();
                spawn(s, format!("worker-{id}"), failure, shutdown, move || {
                    Worker::new(id, limits, metrics)
                        .with_recovery(recovery_handle, resyncs)
                        .with_books(books)
                        .with_replay_clock(replay)
                        .with_resume(resume, unix_now_ns())
                        .run(rx, tx, budget)
                })
            })
            .collect();
        let offline = config.recovery.offline;
        // The recovery thread stops when the source of frames has ended (a replay's files are
        // read; the reader stopped), not at the stop request: the workers still drain then.
        let recovery = Recovery {
            handle: recovery_handle,
            client: rest,
            lanes: recovery_lanes,
            metrics,
            shutdown,
            source_done,
            offline,
        };
        let recovery = spawn(s, "recovery".into(), failure, shutdown, move || recovery.run());
        let reader = match &config.source {
            Source::Live { .. } => spawn(s, "reader".into(), failure, shutdown, move || {
                let _done = RequestOnDrop(source_done);
                let exit = Reader::new(&config.ingest, metrics, shutdown, lanes, writer_tx, resyncs)
                    .with_recorder(record_tap)
                    .run();
                // Whatever ended the reader ends the run: the recovery thread must let go of the
                // workers' channels too.
                shutdown.request();
                match exit {
                    ReaderExit::Fatal(msg) => Ended::KeyRefused(msg),
                    _ => Ended::Clean,
                }
            }),
            Source::Replay { files, pace } => spawn(s, "replay".into(), failure, shutdown, move || {
                // A replay's end is not a stop request: what is queued is written without the
                // shutdown deadline (a full buffer through gzip can take longer than it).
                let _done = RequestOnDrop(source_done);
                let exit = Replay::new(files.clone(), *pace, metrics, shutdown, lanes, writer_tx).run();
                match exit {
                    ReplayExit::Damaged(files) => Ended::Damaged(files),
                    _ => Ended::Clean,
                }
            }),
        };
        // The endpoint last: it ends only when woken after the stop (below), so no failure to
        // start a thread after it can leave the scope waiting for it.
        let http = listener.and_then(|listener| match listener.local_addr() {
            Ok(addr) => {
                let rules = HealthRules { stale_timeout: config.ingest.stale_timeout, started };
                let body = move || http::run(listener, metrics, &rules, shutdown);
                Some((spawn(s, "metrics-http".into(), failure, shutdown, body), addr))
            }
            Err(e) => {
                log::error!("metrics endpoint not started: its socket has no address ({e})");
                None
            }
        });
        let reader_exit = reader.join().ok().flatten();
        let _ = recovery.join();
        for w in workers {
            let _ = w.join();
        }
        let writer_exit = writer.join().ok().flatten();
        // Everything is written: what still runs (the endpoint) stops now.
        shutdown.request();
        if let Some(recording) = recording {
            let _ = recording.join();
        }
        if let Some((http, addr)) = http {
            http::wake(addr);
            let _ = http.join();
        }
        (reader_exit, writer_exit)
    });

    if let Some((thread, message)) = failure.lock().take() {
        return Outcome::ThreadPanicked { thread, message };
    }
    match (reader_exit, writer_exit) {
        (_, Some(WriterExit::Failed(e))) => Outcome::OutputFailed(e),
        (Some(Ended::KeyRefused(msg)), _) => Outcome::KeyRefused(msg),
        (Some(Ended::Damaged(files)), _) => Outcome::ReplayDamaged(files),
        _ => Outcome::Clean,
    }
}

/// Requests a stop when dropped: the source's end is signalled however its thread ends, a
/// panic included (the recovery thread and the recorder wait for it).
struct RequestOnDrop<'a>(&'a Shutdown);

impl Drop for RequestOnDrop<'_> {
    fn drop(&mut self) {
        self.0.request();
    }
}

/// How the source of frames (the reader or a replay) ended, for the outcome.
enum Ended {
    Clean,
    KeyRefused(String),
    Damaged(Vec<String>),
}

/// Spawns one named pipeline thread whose panic is caught where it starts: logged with the
/// thread's name, recorded as the run's failure, and turned into a stop request, so no panic
/// can leave the others waiting. Returns `None` from `join` for a thread that panicked.
fn spawn<'scope, 'env, T: Send + 'scope>(
    s: &'scope Scope<'scope, 'env>,
    name: String,
    failure: &'env Failure,
    shutdown: &'env Shutdown,
    f: impl FnOnce() -> T + Send + 'scope,
) -> ScopedJoinHandle<'scope, Option<T>> {
    let thread_name = name.clone();
    let body = move || match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            log::error!("{thread_name} panicked: {message}; stopping the run");
            failure.lock().get_or_insert((thread_name, message));
            shutdown.request();
            None
        }
    };
    // Spawning fails only when the OS refuses a thread, at start-up: nothing can run then.
    thread::Builder::new().name(name).spawn_scoped(s, body).unwrap_or_else(|e| {
        // The threads already running (the endpoint among them) must stop, or the scope would
        // wait for them forever.
        shutdown.request();
        panic!("the OS refused to start a pipeline thread: {e}")
    })
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}
