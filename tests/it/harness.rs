//! Runs the real `coinfeed` binary against the in-process simulator and watches its output.
//!
//! Stdout and stderr are collected line by line on helper threads; tests wait for conditions
//! with a deadline (`wait_until`), never with fixed sleeps. Stdout reading can be held back to
//! play a consumer that stopped reading (back-pressure tests).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coinfeed_sim::{EventKind, Sim};
use parking_lot::{Condvar, Mutex};

pub const KEY: &str = "it-test-key-0123";

/// Lines seen so far on one stream, with a condvar to wait for more.
#[derive(Default)]
pub struct Lines {
    pub lines: Mutex<Vec<String>>,
    /// True once the stream hit EOF; `incomplete` when the last line had no newline.
    pub closed: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Lines {
    fn push_all(&self, lines: &mut Vec<String>) {
        if lines.is_empty() {
            return;
        }
        self.lines.lock().append(lines);
        self.changed.notify_all();
    }

    /// Waits until `pred` holds over the lines seen so far, or the deadline passes.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock();
        loop {
            if pred(&lines) {
                return true;
            }
            if self.changed.wait_until(&mut lines, deadline).timed_out() {
                return pred(&lines);
            }
        }
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lines.lock().clone()
    }
}

fn collect<R: Read + Send + 'static>(
    stream: R,
    sink: Arc<Lines>,
    gate: Option<crossbeam_channel::Receiver<()>>,
    pauses: Vec<(Duration, Duration)>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        if let Some(gate) = gate {
            let _ = gate.recv();
        }
        let started = Instant::now();
        let mut pauses = pauses.into_iter().peekable();
        let mut reader = BufReader::with_capacity(1 << 16, stream);
        let mut buf = Vec::new();
        let mut pending: Vec<String> = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let complete = buf.last() == Some(&b'\n');
                    if complete {
                        buf.pop();
                    }
                    pending.push(String::from_utf8_lossy(&buf).into_owned());
                    if !complete {
                        sink.closed.lock().1 = true;
                    }
                    // Hand over lines in chunks, whenever no more input is buffered, so waiters
                    // re-check their predicates once per read rather than once per line.
                    if reader.buffer().is_empty() {
                        sink.push_all(&mut pending);
                        // A consumer that stops reading for a while (a disk flush, a GC pause):
                        // the sleep is the behaviour under test, not a synchronisation.
                        if let Some(&(at, length)) = pauses.peek() {
                            if started.elapsed() >= at {
                                pauses.next();
                                std::thread::sleep(length);
                            }
                        }
                    }
                }
            }
        }
        sink.push_all(&mut pending);
        sink.closed.lock().0 = true;
        sink.changed.notify_all();
    })
}

/// A running coinfeed process.
pub struct Feed {
    child: Child,
    pub stdout: Arc<Lines>,
    pub stderr: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
    stdout_gate: Option<crossbeam_channel::Sender<()>>,
}

pub struct FeedOptions {
    /// Start reading stdout at once (false: only after `release_stdout`).
    pub read_stdout: bool,
    pub key: Option<String>,
    /// Extra environment variables for the child, on top of the test process's own.
    pub env: Vec<(String, String)>,
    /// Stdout reading stops at each `(at, for)`, measured from when reading starts, in order.
    pub pauses: Vec<(Duration, Duration)>,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions { read_stdout: true, key: Some(KEY.to_string()), env: Vec::new(), pauses: Vec::new() }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_coinfeed")
}

impl Feed {
    /// Starts coinfeed with `args` (the simulator's URLs are the caller's business).
    pub fn start(args: &[String], opts: FeedOptions) -> Feed {
        Feed::start_program(bin(), args, opts)
    }

    /// Starts `program` (coinfeed, or a shell that execs it under limits) with `args`.
    pub fn start_program(program: &str, args: &[String], opts: FeedOptions) -> Feed {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.env_remove("COINAPI_KEY");
        if let Some(k) = &opts.key {
            cmd.env("COINAPI_KEY", k);
        }
        for (name, value) in &opts.env {
            cmd.env(name, value);
        }
        let mut child = cmd.spawn().expect("spawn coinfeed");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let stderr: ChildStderr = child.stderr.take().expect("stderr");
        let out_lines = Arc::new(Lines::default());
        let err_lines = Arc::new(Lines::default());
        let (gate_tx, gate_rx) = crossbeam_channel::bounded(1);
        let gate = if opts.read_stdout { None } else { Some(gate_rx) };
        let readers = vec![
            collect(stdout, out_lines.clone(), gate, opts.pauses),
            collect(stderr, err_lines.clone(), None, Vec::new()),
        ];
        Feed { child, stdout: out_lines, stderr: err_lines, readers, stdout_gate: Some(gate_tx) }
    }

    /// Starts coinfeed against a simulator with the usual test flags plus `extra`.
    pub fn against(ws_url: &str, rest_url: &str, symbols: &str, types: &str, extra: &[&str]) -> Feed {
        Feed::start(&args(ws_url, rest_url, symbols, types, extra), FeedOptions::default())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn release_stdout(&mut self) {
        if let Some(g) = self.stdout_gate.take() {
            let _ = g.send(());
        }
    }

    /// Sends a real signal to the process (`INT`, `TERM`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(ok.success(), "kill -{name} failed");
    }

    /// Waits for exit within `timeout` without killing: `None` if it is still running then.
    /// Returns the status and how long the wait took.
    pub fn exit_within(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.release_stdout();
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some((status, started.elapsed()));
            }
            if started.elapsed() > timeout {
                return None;
            }
            // Polling the child's status: there is no portable blocking wait with a timeout.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for exit within `timeout`; kills the process and fails the test otherwise.
    /// Returns the status and how long the wait took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        match self.exit_within(timeout) {
            Some(exit) => exit,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("coinfeed did not exit within {timeout:?}; stderr:\n{}", self.stderr.snapshot().join("\n"));
            }
        }
    }

    /// The last `summary:` line on stderr, parsed into its key=value pairs.
    pub fn summary(&self) -> Vec<(String, String)> {
        let lines = self.stderr.snapshot();
        let line = lines.iter().rev().find(|l| l.contains("summary: ")).unwrap_or_else(|| {
            panic!("no summary line on stderr:\n{}", lines.join("\n"));
        });
        key_values(line.split("summary: ").nth(1).unwrap_or(""))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.snapshot().join("\n")
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn args(ws_url: &str, rest_url: &str, symbols: &str, types: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--ws-url",
        ws_url,
        "--rest-url",
        rest_url,
        "--symbols",
        symbols,
        "--types",
        types,
        "--health-interval",
        "1",
        "--log-level",
        "info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub fn key_values(text: &str) -> Vec<(String, String)> {
    text.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A numeric field of a summary or health line.
pub fn field(kv: &[(String, String)], key: &str) -> u64 {
    kv.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {kv:?}"))
}

/// Market-data lines read from the WebSocket (`"source":"ws"`) among `lines`.
pub fn market_lines(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.ends_with(",\"source\":\"ws\"}")).collect()
}

/// Records recovered over REST (`"source":"rest"`).
pub fn rest_lines(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.ends_with(",\"source\":\"rest\"}")).collect()
}

/// How many control lines of one `type` there are: cheap enough for `wait_until` predicates,
/// which run on every line read (a slow predicate would slow the consumer and cause drops).
pub fn count_control(lines: &[String], kind: &str) -> usize {
    let prefix = format!("{{\"type\":\"{kind}\"");
    lines.iter().filter(|l| l.starts_with(&prefix)).count()
}

/// Control lines of one `type` (gap, recovery, connection), parsed.
pub fn control_lines(lines: &[String], kind: &str) -> Vec<serde_json::Value> {
    let prefix = format!("{{\"type\":\"{kind}\"");
    lines
        .iter()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid control line ({e}): {l}")))
        .collect()
}

/// Checks the summary's accounting identity: every message read was written, dropped or
/// skipped for a counted reason.
pub fn assert_accounting_closes(kv: &[(String, String)]) {
    let sum = ["written", "dropped", "malformed", "unknown_type", "duplicate_trades", "book_withheld", "book_folded"]
        .iter()
        .map(|k| field(kv, k))
        .sum::<u64>();
    assert_eq!(
        field(kv, "received"),
        sum,
        "received != written + dropped + malformed + unknown_type + duplicate_trades + book_withheld + book_folded: {kv:?}"
    );
}

/// Splits an output line into the wire text it carries and its `recv_time` value, checking the
/// appended fields have the contract's shape.
pub fn strip_appended(line: &str) -> (String, String) {
    let (body, tail) = line.rsplit_once(",\"recv_time\":\"").unwrap_or_else(|| panic!("no recv_time: {line}"));
    let (time, source) = tail.split_once("\",\"source\":\"").unwrap_or_else(|| panic!("no source: {line}"));
    assert_eq!(source, "ws\"}", "source field of {line}");
    (format!("{body}}}"), time.to_string())
}

/// Start times of the REST requests the simulator received, in order.
pub fn rest_requests(sim: &Sim) -> Vec<(Instant, String, u16)> {
    sim.events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::RestRequest { path, status, .. } => Some((e.at, path, status)),
            _ => None,
        })
        .collect()
}

/// The most requests that fall in any window of `window` length.
pub fn max_in_window(times: &[Instant], window: Duration) -> usize {
    (0..times.len()).map(|i| times[i..].iter().take_while(|t| **t < times[i] + window).count()).max().unwrap_or(0)
}

/// The last health line's value of `key` among `lines` (0 before the first).
pub fn last_health(lines: &[String], key: &str) -> u64 {
    lines
        .iter()
        .rev()
        .find(|l| l.contains("health: "))
        .and_then(|l| {
            let kv = key_values(l.split("health: ").nth(1).unwrap_or(""));
            kv.into_iter().find(|(k, _)| k == key).and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until the health lines show `key` at `at_least` or more; false at the deadline.
pub fn wait_health(feed: &Feed, timeout: Duration, key: &str, at_least: u64) -> bool {
    feed.stderr.wait_until(timeout, |lines| last_health(lines, key) >= at_least)
}
