//! The API key never leaks, measured: every fault scenario the simulator can play (a refused
//! key on the upgrade and in a server `error`, REST failures and a REST refusal, malformed,
//! binary and oversized frames, gaps and their recovery, reconnects, thread panics through the
//! test hook) runs with a distinctive key at `--log-level trace`, recording, writing files and
//! serving metrics; then every byte it produced (stdout, stderr, the recording and output files,
//! every metrics and health page) is searched for the key.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use coinfeed_sim::{RestFault, Sim, SimConfig, WsFault};

use crate::harness::{args, count_control, market_lines, Feed, FeedOptions};
use crate::operations::TempDir;

/// Distinctive, and unlike anything else the program writes.
const KEY: &str = "LEAKCHECK-7f3a9c1e-5b2d-4e8f-SECRET";

/// What the scenarios produced, to be searched.
#[derive(Default)]
struct Corpus {
    /// (where it came from, its text)
    texts: Vec<(String, Vec<u8>)>,
}

impl Corpus {
    fn add(&mut self, origin: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.texts.push((origin.into(), bytes.into()));
    }

    fn add_feed(&mut self, name: &str, feed: &Feed) {
        self.add(format!("{name}: stdout"), feed.stdout.snapshot().join("\n"));
        self.add(format!("{name}: stderr"), feed.stderr.snapshot().join("\n"));
    }

    /// Every file under `dir` (recordings, output files, `.part`s), compressed ones decoded.
    fn add_dir(&mut self, name: &str, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let bytes = std::fs::read(&path).expect("read file");
                let name = format!("{name}: {}", path.display());
                if path.to_string_lossy().contains(".zst") {
                    // A .part may end inside a frame: decode what is whole.
                    let mut decoded = Vec::new();
                    let _ = zstd::stream::read::Decoder::new(&bytes[..]).and_then(|mut d| d.read_to_end(&mut decoded));
                    self.add(format!("{name} (decoded)"), decoded);
                }
                self.add(name, bytes);
            }
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

fn endpoint(feed: &Feed) -> SocketAddr {
    assert!(feed.stderr.wait_until(Duration::from_secs(20), |l| l.iter().any(|x| x.contains("metrics on http://"))));
    let text = feed.stderr_text();
    text.split("metrics on http://").nth(1).and_then(|t| t.split('/').next()).expect("address").parse().expect("addr")
}

fn start(sim: &Sim, extra: &[&str], env: Vec<(String, String)>) -> Feed {
    start_types(sim, "trade,quote,book", extra, env)
}

fn start_types(sim: &Sim, types: &str, extra: &[&str], env: Vec<(String, String)>) -> Feed {
    let symbols = SimConfig::default().symbols.join(",");
    let mut argv = args(&sim.ws_url(), &sim.rest_url(), &symbols, types, extra);
    // Everything coinfeed can log: trace, not the harness's info.
    let level = argv.iter().position(|a| a == "--log-level").expect("the harness sets a level") + 1;
    argv[level] = "trace".into();
    Feed::start(&argv, FeedOptions { key: Some(KEY.to_string()), env, ..FeedOptions::default() })
}

/// Proves the key appears nowhere in anything coinfeed writes, whatever goes wrong.
#[test]
fn the_key_appears_in_nothing_coinfeed_writes() {
    let mut corpus = Corpus::default();

    // 1. Everything at once: recording, files, metrics, trace logs; gaps recovered over REST
    // through 5xx, garbage and a slow answer; malformed, binary and oversized frames; a server
    // error that reconnects.
    let dir = TempDir::new("key-leak");
    let sim = Sim::start(SimConfig { rate_per_sec: 500, ..SimConfig::default() }).expect("sim");
    let record = dir.0.join("rec/feed.cfrec").to_string_lossy().into_owned();
    let out = dir.0.join("out").to_string_lossy().into_owned();
    std::fs::create_dir_all(dir.0.join("rec")).expect("mkdir");
    let mut feed = start(
        &sim,
        &[
            "--record",
            &record,
            "--output-dir",
            &out,
            "--compress",
            "zstd",
            "--metrics-listen",
            "127.0.0.1:0",
            "--book-output",
            "both",
            "--recovery-rps",
            "20",
        ],
        Vec::new(),
    );
    let addr = endpoint(&feed);
    // A gap in streams that have begun (a stream's first message sets its start).
    let written = |l: &[String]| {
        l.iter().rev().find(|x| x.contains("health: ")).and_then(|h| {
            h.split(" written=").nth(1).and_then(|v| v.split(' ').next()).and_then(|v| v.parse::<u64>().ok())
        })
    };
    assert!(feed.stderr.wait_until(Duration::from_secs(20), |l| written(l).is_some_and(|n| n >= 500)));
    for fault in [
        RestFault::Status { code: 500, retry_after_secs: None, body: "oops".into() },
        RestFault::Garbage,
        RestFault::Status { code: 429, retry_after_secs: Some(1), body: String::new() },
    ] {
        sim.rest_fault(fault);
    }
    for fault in [
        WsFault::Gap { skip: 3 },
        WsFault::Text("{\"type\":\"trade\",\"symbol_id\":".into()),
        WsFault::Binary(vec![0xff, 0x00, 0x7b]),
        WsFault::Oversized { bytes: 5 << 20 },
    ] {
        sim.inject(fault);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.events().iter().filter(|e| matches!(e.kind, coinfeed_sim::EventKind::RestRequest { .. })).count() < 4
        && Instant::now() < deadline
    {
        corpus.add("metrics page", get(addr, "/metrics"));
        std::thread::sleep(Duration::from_millis(100));
    }
    sim.inject(WsFault::Error { message: "Something else went wrong".into() });
    assert!(
        feed.stderr
            .wait_until(Duration::from_secs(20), |l| l.iter().filter(|x| x.contains("connected to ")).count() >= 3),
        "the oversized frame and the server error each caused a reconnect:\n{}",
        feed.stderr_text()
    );
    corpus.add("metrics page", get(addr, "/metrics"));
    corpus.add("health page", get(addr, "/health"));
    corpus.add("404 page", get(addr, "/nothing"));
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", feed.stderr_text());
    corpus.add_feed("everything", &feed);
    corpus.add_dir("everything", &dir.0);

    // 2. The key refused: by a server `error` after the hello, and by a 401 on the upgrade.
    for (name, fault) in [
        ("error frame", WsFault::Error { message: "Invalid API key".into() }),
        ("401 upgrade", WsFault::RefuseUpgrade { status: 401, retry_after_ms: None }),
    ] {
        let sim = Sim::start(SimConfig { rate_per_sec: 100, ..SimConfig::default() }).expect("sim");
        if matches!(fault, WsFault::RefuseUpgrade { .. }) {
            sim.inject(fault);
            let mut feed = start(&sim, &[], Vec::new());
            let (status, _) = feed.wait_exit(Duration::from_secs(20));
            assert_eq!(status.code(), Some(3), "{}", feed.stderr_text());
            corpus.add_feed(name, &feed);
        } else {
            let mut feed = start(&sim, &[], Vec::new());
            assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| count_control(l, "connection") >= 1));
            sim.inject(fault);
            let (status, _) = feed.wait_exit(Duration::from_secs(20));
            assert_eq!(status.code(), Some(3), "{}", feed.stderr_text());
            corpus.add_feed(name, &feed);
        }
    }

    // 3. REST refuses the key (401) for a gap's recovery.
    let sim = Sim::start(SimConfig { rate_per_sec: 500, ..SimConfig::default() }).expect("sim");
    sim.rest_fault(RestFault::Status {
        code: 401,
        retry_after_secs: None,
        body: "{\"error\":\"Invalid API key\"}".into(),
    });
    let mut feed = start_types(&sim, "trade,quote", &["--recovery-rps", "20"], Vec::new());
    // A gap in a stream that has begun (a stream's first message sets its start).
    assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 200));
    sim.inject(WsFault::Gap { skip: 2 });
    assert!(
        feed.stderr.wait_until(Duration::from_secs(20), |l| l.iter().any(|x| x.contains("REST recovery stopped"))),
        "{}",
        feed.stderr_text()
    );
    feed.signal("INT");
    feed.wait_exit(Duration::from_secs(20));
    corpus.add_feed("rest 401", &feed);

    // 4. Threads that panic (the debug-build test hook), with a backtrace.
    for spec in ["reader:50", "worker-0:50", "writer:5", "recovery:1"] {
        let sim = Sim::start(SimConfig { rate_per_sec: 500, ..SimConfig::default() }).expect("sim");
        let env = vec![("COINFEED_TEST_PANIC".into(), spec.into()), ("RUST_BACKTRACE".into(), "1".into())];
        let mut feed = start_types(&sim, "trade,quote", &["--recovery-rps", "20"], env);
        if spec.starts_with("recovery") {
            assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 200));
            sim.inject(WsFault::Gap { skip: 2 });
        }
        let (status, _) = feed.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "{spec}: {}", feed.stderr_text());
        corpus.add_feed(&format!("panic {spec}"), &feed);
    }

    // 5. Refused command lines with the key set.
    for bad in
        [&["--symbols", "A", "--workers", "0"][..], &["--symbols", "A", "--ws-url", "ws://example.com/"], &["--nope"]]
    {
        let out =
            std::process::Command::new(crate::harness::bin()).args(bad).env("COINAPI_KEY", KEY).output().expect("run");
        assert_eq!(out.status.code(), Some(2));
        corpus.add(format!("refused {bad:?}: stdout"), out.stdout);
        corpus.add(format!("refused {bad:?}: stderr"), out.stderr);
    }

    // The search, and its scope.
    let needle = KEY.as_bytes();
    let mut found = Vec::new();
    let (mut bytes, mut lines) = (0usize, 0usize);
    for (origin, text) in &corpus.texts {
        bytes += text.len();
        lines += text.split(|&b| b == b'\n').count();
        if text.windows(needle.len()).any(|w| w == needle) || text.windows(9).any(|w| w == b"5b2d-4e8f") {
            found.push(origin.clone());
        }
    }
    println!("key-leak scan: {} texts (streams, files, pages), {lines} lines, {bytes} bytes", corpus.texts.len());
    assert!(found.is_empty(), "the key (or part of it) appears in: {found:#?}");
    assert!(corpus.texts.len() >= 30 && bytes > 1_000_000, "the scan covered too little to mean anything");
}
