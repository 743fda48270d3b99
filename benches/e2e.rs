//! End-to-end throughput against a floor, on loopback.
//!
//! The simulator runs as its own process (`coinfeed sim --rate 0`) and floods pre-generated
//! trade/quote frames as fast as it can. Two clients read the same flood in turn:
//! - the floor: a bare tungstenite client that reads frames and discards them (the physical
//!   limit of one reader thread on this machine);
//! - the pipeline: `pipeline::run` in this process, reader → channels → workers → writer, with
//!   output into `io::sink()`, at default settings.
//!
//! Prints messages/s, MB/s, drops, peak RSS and the pipeline/floor ratio.
//! Run: `cargo bench --bench e2e` (COINFEED_E2E_MESSAGES sets the count, default 2,000,000).
//! Under `cargo test` it runs once with 20,000 messages as a smoke test.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use coinfeed::app;
use coinfeed::config::{Config, RunArgs, SIM_DEFAULT_SYMBOLS};
use coinfeed::metrics::{proc, Metrics, Snapshot};
use coinfeed::shutdown::Shutdown;

struct SimProcess {
    child: Child,
    ws_url: String,
    rest_url: String,
}

impl SimProcess {
    fn start(messages: u64) -> SimProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_coinfeed"))
            .args(["sim", "--rate", "0", "--max-messages", &messages.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the simulator process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("sim stdout")).read_line(&mut line).expect("sim URL line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("sim prints its URLs as JSON");
        SimProcess {
            ws_url: v["ws_url"].as_str().expect("ws_url").to_string(),
            rest_url: v["rest_url"].as_str().expect("rest_url").to_string(),
            child,
        }
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hello() -> String {
    let symbols: Vec<String> = SIM_DEFAULT_SYMBOLS.split(',').map(|s| format!("{s}$")).collect();
    serde_json::json!({"type":"hello","apikey":"bench","heartbeat":true,
        "subscribe_data_type":["trade","quote"],"subscribe_filter_symbol_id":symbols})
    .to_string()
}

/// The floor: read `n` data frames with nothing else to do. Returns (seconds, bytes).
fn bare_read(ws_url: &str, n: u64) -> (f64, u64) {
    let host = ws_url.trim_start_matches("ws://").split('/').next().expect("host:port");
    let tcp = TcpStream::connect(host).expect("connect to the simulator");
    tcp.set_nodelay(true).expect("nodelay");
    let (mut ws, _) = tungstenite::client(ws_url, tcp).expect("upgrade");
    ws.send(tungstenite::Message::text(hello())).expect("hello");
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut started = None;
    while count < n {
        if let tungstenite::Message::Text(t) = ws.read().expect("read") {
            started.get_or_insert_with(Instant::now);
            if !t.as_str().contains("\"hearbeat\"") {
                count += 1;
                bytes += t.len() as u64;
            }
        }
    }
    (started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0), bytes)
}

/// The pipeline at default settings (plus `extra`) into a discarded sink, subscribed to `types`.
/// Returns (seconds, stats snapshot).
fn pipeline_read(sim: &SimProcess, n: u64, types: &str, extra: &[&str]) -> (f64, Snapshot) {
    let mut argv = vec![
        "coinfeed",
        "--symbols",
        SIM_DEFAULT_SYMBOLS,
        "--types",
        types,
        "--health-interval",
        "0",
        "--log-level",
        "warn",
    ];
    argv.extend_from_slice(extra);
    let args = RunArgs::try_parse_from(argv).expect("arguments");
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let mut config = Config::from_args(&args, Some("bench".into()), cores).expect("config");
    config.use_endpoints(&sim.ws_url, &sim.rest_url).expect("endpoints");
    let metrics = Arc::new(Metrics::new(config.pipeline.n_workers));
    let shutdown = Arc::new(Shutdown::new());
    let config = Arc::new(config);
    let mut elapsed = 0.0;
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            let services = app::Services::default();
            app::run(Arc::clone(&config), Arc::clone(&shutdown), Arc::clone(&metrics), std::io::sink(), services)
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut started = None;
        loop {
            let snap = metrics.snapshot();
            if snap.received > 0 {
                started.get_or_insert_with(Instant::now);
            }
            if done(&snap) >= n || Instant::now() > deadline {
                break;
            }
            // Sampling the counters; the pipeline does not wait on this loop.
            std::thread::sleep(Duration::from_micros(500));
        }
        elapsed = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
        shutdown.request();
        run.join().expect("pipeline thread");
    });
    (elapsed, metrics.snapshot())
}

/// Messages the pipeline has finished with: written, or counted for a reason.
fn done(s: &Snapshot) -> u64 {
    s.written + s.dropped + s.malformed + s.book_folded + s.book_withheld
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n: u64 = if smoke {
        20_000
    } else {
        std::env::var("COINFEED_E2E_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000)
    };
    let floor = {
        let sim = SimProcess::start(n);
        bare_read(&sim.ws_url, n)
    };
    // Peak RSS of the pipeline alone: reset the high-water mark the floor client left.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (secs, snap) = {
        let sim = SimProcess::start(n);
        pipeline_read(&sim, n, "trade,quote", &[])
    };
    let peak_kib = proc::memory_kib().map(|(_, peak)| peak).unwrap_or(0);
    let floor_rate = n as f64 / floor.0.max(1e-9);
    let rate = snap.written as f64 / secs.max(1e-9);
    println!("e2e: {n} trade/quote messages from a simulator process over loopback");
    println!(
        "  floor (bare tungstenite read): {:>10.0} msg/s {:>7.1} MB/s in",
        floor_rate,
        floor.1 as f64 / floor.0.max(1e-9) / 1e6
    );
    println!(
        "  pipeline (default settings):   {:>10.0} msg/s {:>7.1} MB/s out  written={} dropped={} peak_rss={:.1} MiB",
        rate,
        snap.bytes_written as f64 / secs.max(1e-9) / 1e6,
        snap.written,
        snap.dropped,
        peak_kib as f64 / 1024.0
    );
    println!("  pipeline / floor: {:.0}%", 100.0 * rate / floor_rate.max(1e-9));
    assert_eq!(snap.written + snap.dropped, n, "every message accounted for");

    // A `book` flood (20-level snapshots, then 1–3-level deltas): CoinAPI's raw messages against
    // kept exact books writing `book_top` lines at depth 10, interleaved twice.
    let n_book = n / 4;
    println!("e2e: {n_book} book messages (5 symbols, 20-level snapshots and deltas), raw vs --book-output top");
    for round in 1..=2 {
        for mode in ["raw", "top"] {
            let sim = SimProcess::start(n_book);
            let (secs, snap) = pipeline_read(&sim, n_book, "book", &["--book-output", mode]);
            println!(
                "  round {round} {mode:>3}: {:>10.0} msg/s  written={} book_top_lines={} folded={} dropped={} rejected={}",
                done(&snap) as f64 / secs.max(1e-9),
                snap.written,
                snap.book_top_lines,
                snap.book_folded,
                snap.dropped,
                snap.book_rejected
            );
            assert_eq!(done(&snap), n_book, "every book message accounted for");
            assert_eq!(snap.book_rejected, 0);
        }
    }
}
