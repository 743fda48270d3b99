//! `coinfeed replay`: the reader's place taken by recordings. Each recorded frame goes through
//! the same `Lanes` as a live one (`dispatch_waiting`), stamped with its recorded receive time
//! and generation; each recorded connection event writes the same `connection` line (with its
//! recorded time) and tells the workers of a new connection as the reader did. So the workers
//! write the lines the live run wrote, `recv_time` included.
//!
//! A replay never drops: where the reader sheds (it must keep reading the socket), the replay
//! waits for room, since nothing is lost by reading the file later. It reads the files in
//! order, streaming (one record in memory at a time, plus a 1 MiB read buffer), paced at
//! `--speed` times the recorded pace or as fast as the pipeline goes (`--max`). A damaged file
//! is read up to the damage, which is logged with its byte offset; the replay goes on with the
//! next file and the run ends with the damage reported (exit 1).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::limits::CONTROL_WAIT;
use crate::ingest::record::{self, Damage, Problem, Record, HEADER_BYTES};
use crate::lanes::{Dispatch, Lanes};
use crate::metrics::Metrics;
use crate::output::ndjson::{Batch, ControlLine, TimestampFormatter};
use crate::shutdown::Shutdown;
use crate::wire::{self, FrameKind};

/// Bytes read from a recording at a time.
const READ_BYTES: usize = 1 << 20;
/// A paced replay sleeps only when it is at least this far ahead of the recording.
const PACE_SLACK: Duration = Duration::from_millis(1);

/// How a replay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayExit {
    /// Every file was read to its end.
    Done,
    /// Some files could not be read whole (each logged): what could be read was replayed.
    Damaged(Vec<String>),
    Stopped,
    /// The workers are gone (the writer stopped: `--limit` reached, or the output failed).
    PipelineGone,
}

pub struct Replay<'a> {
    files: Vec<PathBuf>,
    /// Recorded seconds per second of replay; `None` as fast as the pipeline goes.
    pace: Option<f64>,
    metrics: &'a Metrics,
    shutdown: &'a Shutdown,
    lanes: Lanes<'a>,
    control: Sender<Batch>,
    timestamps: TimestampFormatter,
    /// The first record's time and when the replay reached it: the pace's origin.
    origin: Option<(i128, Instant)>,
    /// Generations keep rising across recordings of several runs (each process starts at 1):
    /// the offset added to a recorded generation, and the highest generation handed out.
    generation_offset: u64,
    generation_last: u64,
}

impl std::fmt::Debug for Replay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").field("files", &self.files).field("pace", &self.pace).finish_non_exhaustive()
    }
}

/// What handling one record asks of the loop.
enum Step {
    Go,
    Stop(ReplayExit),
}

impl<'a> Replay<'a> {
    pub fn new(
        files: Vec<PathBuf>,
        pace: Option<f64>,
        metrics: &'a Metrics,
        shutdown: &'a Shutdown,
        lanes: Lanes<'a>,
        control: Sender<Batch>,
    ) -> Replay<'a> {
        Replay {
            files,
            pace,
            metrics,
            shutdown,
            lanes,
            control,
            timestamps: TimestampFormatter::default(),
            origin: None,
            generation_offset: 0,
            generation_last: 0,
        }
    }

    pub fn run(mut self) -> ReplayExit {
        let mut damaged = Vec::new();
        for path in std::mem::take(&mut self.files) {
            let started = Instant::now();
            let mut records = 0u64;
            let read = self.replay_file(&path, &mut records);
            match read {
                Ok(None) => log::info!(
                    "replayed {} ({records} records in {:.1}s)",
                    path.display(),
                    started.elapsed().as_secs_f64()
                ),
                Ok(Some(exit)) => return exit,
                Err(problem) => {
                    let what = format!("{}: {problem}", path.display());
                    log::error!("replay: {what}; the {records} records before it were replayed, the rest of the file is skipped");
                    damaged.push(what);
                }
            }
        }
        if damaged.is_empty() {
            ReplayExit::Done
        } else {
            ReplayExit::Damaged(damaged)
        }
    }

    /// Replays one file: `Ok(None)` at its clean end, `Ok(Some)` when the run must end, `Err`
    /// with what stopped the reading.
    fn replay_file(&mut self, path: &Path, records: &mut u64) -> Result<Option<ReplayExit>, String> {
        let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let mut source = Source::new(file);
        source.header()?;
        loop {
            if self.shutdown.is_requested() {
                return Ok(Some(ReplayExit::Stopped));
            }
            let step = source.next(|record| self.step(record))?;
            match step {
                None => return Ok(None),
                Some(Step::Go) => *records += 1,
                Some(Step::Stop(exit)) => return Ok(Some(exit)),
            }
        }
    }

    /// The generation the pipeline sees for a recorded one. Within one run of the program every
    /// connection attempt takes a new, higher generation; a generation lower than the last, or
    /// an attempt (`opens`) that is not higher, is the recording of a later run, whose
    /// generations start again at 1: they are renumbered to continue, or the workers would
    /// take its frames for stale ones.
    fn generation(&mut self, recorded: u64, opens: bool) -> u64 {
        let mapped = recorded + self.generation_offset;
        if mapped < self.generation_last || (opens && mapped <= self.generation_last) {
            self.generation_offset = self.generation_last + 1 - recorded;
            log::info!(
                "replay: the recording of another run starts (its generation {recorded}); renumbered as generation {}",
                self.generation_last + 1
            );
        }
        self.generation_last = recorded + self.generation_offset;
        self.generation_last
    }

    fn step(&mut self, record: Record<'_>) -> Step {
        let record = match record {
            Record::Frame { recv_unix_ns, generation, text } => {
                Record::Frame { recv_unix_ns, generation: self.generation(generation, false), text }
            }
            Record::Connection { at_unix_ns, generation, event, url, reason } => {
                let opens = event != crate::output::ndjson::ConnectionEvent::Disconnected;
                Record::Connection { at_unix_ns, generation: self.generation(generation, opens), event, url, reason }
            }
        };
        match record {
            Record::Frame { recv_unix_ns, generation, text } => {
                self.pace_to(recv_unix_ns);
                match wire::classify(text.as_bytes()) {
                    FrameKind::Data => {
                        self.metrics.received.add(1);
                        let shutdown = self.shutdown;
                        let sent =
                            self.lanes.dispatch_waiting(text, generation, recv_unix_ns, || shutdown.is_requested());
                        if sent == Dispatch::Gone {
                            return Step::Stop(ReplayExit::PipelineGone);
                        }
                    }
                    FrameKind::Heartbeat => self.metrics.heartbeats.add(1),
                    // The live reader acted on these (closed, or moved the connection); the
                    // recording's connection events say what followed.
                    FrameKind::Error | FrameKind::Reconnect => {}
                }
                self.metrics.last_message_unix_ms.set(crate::clock::unix_now_ns() as u64 / 1_000_000);
            }
            Record::Connection { at_unix_ns, generation, event, url, reason } => {
                self.pace_to(at_unix_ns);
                self.metrics.connection_generation.set(generation);
                let line =
                    ControlLine::Connection { event, generation, url, reason: Some(reason).filter(|r| !r.is_empty()) };
                let mut batch = Batch::with_capacity(256);
                batch.push_control(&line, self.timestamps.format(at_unix_ns));
                if self.control.send_timeout(batch, CONTROL_WAIT).is_err() {
                    self.metrics.control_lines_lost.add(1);
                }
                if event == crate::output::ndjson::ConnectionEvent::Connected {
                    self.metrics.connections.add(1);
                    self.metrics.connected.set(1);
                    self.lanes.connected(generation, at_unix_ns);
                } else {
                    self.metrics.connected.set(0);
                }
            }
        }
        Step::Go
    }

    /// Waits until the replay has reached `at` (recorded time) at its pace.
    fn pace_to(&mut self, at_unix_ns: i128) {
        let Some(pace) = self.pace else { return };
        let &mut (first, started) = self.origin.get_or_insert((at_unix_ns, Instant::now()));
        let ahead_ns = (at_unix_ns - first).max(0) as f64 / pace;
        let due = started + Duration::from_nanos(ahead_ns.min(u64::MAX as f64) as u64);
        let now = Instant::now();
        if due > now + PACE_SLACK {
            self.shutdown.wait_timeout(due - now);
        }
    }
}

/// A recording read record by record from a file: the pure decoder over a sliding buffer.
struct Source {
    file: File,
    buf: Vec<u8>,
    /// The unread bytes are `buf[at..]`; `base` is the file offset of `buf[0]`.
    at: usize,
    base: u64,
    eof: bool,
}

impl Source {
    fn new(file: File) -> Source {
        Source { file, buf: Vec::with_capacity(READ_BYTES), at: 0, base: 0, eof: false }
    }

    /// Reads more of the file, keeping the unread bytes; false at the end of the file.
    fn fill(&mut self) -> Result<bool, String> {
        if self.eof {
            return Ok(false);
        }
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.base += self.at as u64;
            self.at = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_BYTES, 0);
        let n = loop {
            match self.file.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(format!("read error at byte {}: {e}", self.base + len as u64));
                }
            }
        };
        self.buf.truncate(len + n);
        self.eof = n == 0;
        Ok(n > 0)
    }

    fn header(&mut self) -> Result<(), String> {
        while self.buf.len() < HEADER_BYTES && self.fill()? {}
        record::check_header(&self.buf).map_err(|d| d.to_string())?;
        self.at = HEADER_BYTES;
        Ok(())
    }

    /// Hands the next record to `f`: `Ok(None)` at the clean end of the file.
    fn next<R>(&mut self, f: impl FnOnce(Record<'_>) -> R) -> Result<Option<R>, String> {
        loop {
            let damage = match record::decode(&self.buf[self.at..], 0) {
                Ok(Some((record, next))) => {
                    let out = f(record);
                    self.at += next;
                    return Ok(Some(out));
                }
                Ok(None) => None,
                Err(d) => Some(d),
            };
            match damage {
                None if !self.fill()? => return Ok(None),
                None => {}
                Some(d) if d.problem == Problem::Truncated && self.fill()? => {}
                Some(d) => {
                    let at = Damage { offset: self.base + self.at as u64 + d.offset, problem: d.problem };
                    return Err(at.to_string());
                }
            }
        }
    }
}
