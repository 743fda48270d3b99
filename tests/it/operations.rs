//! Running for weeks: `--limit`, `--record` with `coinfeed replay`, and `--output-dir` files that
//! rotate by time and by size, never expose a partial file, and survive a full disk. All against
//! the simulator, with the real binary; every wait has a deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coinfeed_sim::{Sim, SimConfig, WsFault};

use crate::harness::{args, bin, field, market_lines, Feed, FeedOptions};

/// A fresh, empty directory under the system's temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("coinfeed-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The files in `dir` a downstream job could see, sorted by name: not hidden ones (coinfeed's
/// start-up check writes and removes a hidden `.coinfeed-probe-<pid>` file).
fn files(dir: &Path) -> Vec<PathBuf> {
    let visible = |p: &PathBuf| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("read dir").map(|e| e.expect("entry").path()).filter(visible).collect();
    v.sort();
    v
}

fn is_part(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "part")
}

/// Every line of a finished file, checking the file holds whole JSON lines only.
fn whole_lines(p: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(text.is_empty() || text.ends_with('\n'), "{} ends inside a line", p.display());
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("{}: a broken line ({e}): {l}", p.display()));
            l.to_string()
        })
        .collect()
}

/// Market lines of each symbol, in order: what must survive any path through the pipeline.
fn by_symbol(lines: &[String]) -> BTreeMap<String, Vec<&String>> {
    let mut map: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for l in market_lines(lines) {
        let v: serde_json::Value = serde_json::from_str(l).expect("json");
        map.entry(v["symbol_id"].as_str().unwrap_or("").to_string()).or_default().push(l);
    }
    map
}

/// Proves `--limit N` writes exactly N market-data lines, then stops with exit 0.
#[test]
fn limit_stops_exactly_at_n() {
    let sim = Sim::start(SimConfig { rate_per_sec: 20_000, ..SimConfig::default() }).expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    let mut feed = Feed::against(&sim.ws_url(), &sim.rest_url(), &symbols, "trade,quote", &["--limit", "12345"]);
    let (status, _) = feed.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", feed.stderr_text());
    let lines = feed.stdout.snapshot();
    assert_eq!(market_lines(&lines).len(), 12_345, "exactly the limit");
    assert!(lines.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "whole lines only");
    assert!(feed.stderr_text().contains("--limit reached: 12345"), "{}", feed.stderr_text());
}

/// Runs a live feed recording into `dir` until `n` market lines are out, stops it, and returns
/// its stdout lines and the finished recording files.
fn record_live(dir: &Path, n: u64, types: &str, extra: &[&str]) -> (Vec<String>, Vec<PathBuf>) {
    let sim =
        Sim::start(SimConfig { rate_per_sec: 10_000, max_messages: Some(n), ..SimConfig::default() }).expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    let record = dir.join("feed.cfrec");
    let record = record.to_string_lossy();
    let mut flags = vec!["--record", &record];
    flags.extend_from_slice(extra);
    let before: Vec<PathBuf> = files(dir);
    let mut feed = Feed::against(&sim.ws_url(), &sim.rest_url(), &symbols, types, &flags);
    assert!(
        feed.stdout.wait_until(Duration::from_secs(60), |l| market_lines(l).len() as u64 >= n),
        "the live run did not write {n} lines:\n{}",
        feed.stderr_text()
    );
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", feed.stderr_text());
    let summary = feed.summary();
    assert_eq!(field(&summary, "record_dropped"), 0);
    assert!(field(&summary, "record_frames") >= n, "{summary:?}");
    let recordings: Vec<PathBuf> = files(dir).into_iter().filter(|p| !is_part(p) && !before.contains(p)).collect();
    assert_eq!(recordings.len(), 1, "one finished recording, no .part left: {:?}", files(dir));
    (feed.stdout.snapshot(), recordings)
}

/// Replays `files` at `--max` and returns (exit code, stdout lines, stderr).
fn replay(files: &[PathBuf], extra: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let mut argv: Vec<String> = vec!["replay".into()];
    argv.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    argv.extend(["--max", "--health-interval", "0"].iter().map(|s| s.to_string()));
    argv.extend(extra.iter().map(|s| s.to_string()));
    let mut feed = Feed::start(&argv, FeedOptions { key: None, ..FeedOptions::default() });
    let (status, _) = feed.wait_exit(Duration::from_secs(60));
    (status.code(), feed.stdout.snapshot(), feed.stderr_text())
}

/// Proves a replay writes exactly the lines the live run wrote, `recv_time` and connection
/// lines included: the same lines, each symbol's in the same order.
#[test]
fn a_replay_writes_the_lines_the_live_run_wrote() {
    const N: u64 = 20_000;
    let dir = TempDir::new("replay");
    let (live, recordings) = record_live(&dir.0, N, "trade,quote,book", &["--book-output", "both"]);
    let (code, replayed, stderr) = replay(&recordings, &["--book-output", "both"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(market_lines(&replayed).len() as u64, market_lines(&live).len() as u64);
    let (mut a, mut b) = (live.clone(), replayed.clone());
    a.sort();
    b.sort();
    assert!(a == b, "the replay wrote other lines than the live run");
    assert_eq!(by_symbol(&live), by_symbol(&replayed), "a symbol's lines came in another order");
    assert!(live.iter().any(|l| l.starts_with("{\"type\":\"connection\",\"event\":\"connected\"")));
    let tops = |lines: &[String]| lines.iter().filter(|l| l.starts_with("{\"type\":\"book_top\"")).count();
    assert!(tops(&live) > 1_000 && tops(&live) == tops(&replayed), "book_top lines: {} live", tops(&live));

    // Recordings of two runs replay as one stream: the second run's generations are renumbered
    // (each process starts at 1), so none of its frames is taken for a stale one, and the time
    // between the runs is reported as the gap it was.
    let (live_2, recordings_2) = record_live(&dir.0, 5_000, "trade,quote", &[]);
    let both = [recordings.clone(), recordings_2].concat();
    let (code, replayed, stderr) = replay(&both, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(market_lines(&replayed).len(), market_lines(&live).len() + market_lines(&live_2).len(), "{stderr}");
    assert!(stderr.contains("renumbered as generation 2"), "{stderr}");
}

/// Proves a damaged recording is replayed up to the damage, which is reported with its byte
/// offset and ends the run with exit 1; never a panic.
#[test]
fn a_damaged_recording_is_replayed_up_to_the_damage() {
    let dir = TempDir::new("damaged");
    let (live, recordings) = record_live(&dir.0, 2_000, "trade,quote", &[]);
    let bytes = std::fs::read(&recordings[0]).expect("read");

    let cut = dir.0.join("cut.cfrec");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3 + 7]).expect("write");
    let (code, lines, stderr) = replay(std::slice::from_ref(&cut), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("ends inside a record") && stderr.contains("at byte"), "{stderr}");
    let n = market_lines(&lines).len();
    assert!(n > 1_000 && n < 2_000, "replayed up to the cut: {n}");
    for (symbol, replayed) in by_symbol(&lines) {
        let all = by_symbol(&live).remove(&symbol).unwrap_or_default();
        assert_eq!(replayed[..], all[..replayed.len()], "{symbol}: a prefix of the live lines");
    }

    let flipped = dir.0.join("flipped.cfrec");
    let mut bad = bytes.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    std::fs::write(&flipped, &bad).expect("write");
    let (code, lines, stderr) = replay(&[flipped, cut], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("checksum") && stderr.contains("2 recording(s) damaged"), "{stderr}");
    assert!(market_lines(&lines).len() > 1_000);

    let (code, _, stderr) = replay(&[dir.0.join("missing.cfrec")], &[]);
    assert_eq!(code, Some(2), "a missing file is refused at start: {stderr}");
}

/// Lines of every finished file in `dir`, in name order.
fn finished_lines(dir: &Path) -> Vec<String> {
    files(dir).iter().filter(|p| !is_part(p)).flat_map(|p| whole_lines(p)).collect()
}

/// Proves size rotation: many files, each of whole lines, no `.part` left, and together exactly
/// the lines the run wrote (none lost, none twice); while the run goes on, every file a
/// downstream job could pick up (not `.part`) is complete.
#[test]
fn files_rotate_by_size_without_losing_or_splitting_a_line() {
    const N: u64 = 30_000;
    let dir = TempDir::new("size");
    let sim =
        Sim::start(SimConfig { rate_per_sec: 10_000, max_messages: Some(N), ..SimConfig::default() }).expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    let out = dir.0.to_string_lossy().into_owned();
    let mut feed = Feed::against(
        &sim.ws_url(),
        &sim.rest_url(),
        &symbols,
        "trade,quote",
        &["--output-dir", &out, "--rotate", "64KiB"],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut checks = 0;
    while sim.data_sent() < N && Instant::now() < deadline {
        // A downstream job picking files up now: each finished file must be whole.
        for p in files(&dir.0).iter().filter(|p| !is_part(p)) {
            whole_lines(p);
            checks += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        feed.stderr.wait_until(Duration::from_secs(30), |l| l
            .iter()
            .rev()
            .find(|x| x.contains("health: "))
            .is_some_and(|h| h.contains(&format!(" written={N} ")))),
        "{}",
        feed.stderr_text()
    );
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", feed.stderr_text());
    assert!(feed.stdout.snapshot().is_empty(), "nothing on stdout with --output-dir");
    let all = files(&dir.0);
    assert!(all.iter().all(|p| !is_part(p)), "no .part left after a clean stop: {all:?}");
    assert!(all.len() >= 20, "30,000 lines of ~250 bytes make 100+ files of 64 KiB: {}", all.len());
    assert!(checks > 0, "files were checked while the run went on");
    let lines = finished_lines(&dir.0);
    let summary = feed.summary();
    assert_eq!(market_lines(&lines).len() as u64, N);
    assert_eq!(lines.len() as u64, field(&summary, "written") + field(&summary, "control_lines"));
    let mut unique = lines.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), lines.len(), "a line was written twice");
    assert_eq!(field(&summary, "files_finished"), all.len() as u64);
    for p in &all {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(name.starts_with("coinfeed-") && name.ends_with(".ndjson"), "{name}");
    }
}

/// Proves time rotation: files start on UTC second boundaries (`--rotate 1s`), with whole
/// lines, none lost; a compressed set (zstd) decodes to the same kind of lines.
#[test]
fn files_rotate_on_utc_boundaries_and_compress() {
    for (compress, ext) in [(None, ".ndjson"), (Some("zstd"), ".ndjson.zst")] {
        let dir = TempDir::new(&format!("time-{}", compress.unwrap_or("plain")));
        let sim = Sim::start(SimConfig { rate_per_sec: 2_000, ..SimConfig::default() }).expect("sim");
        let symbols = SimConfig::default().symbols.join(",");
        let out = dir.0.to_string_lossy().into_owned();
        let mut extra = vec!["--output-dir", out.as_str(), "--rotate", "1s"];
        if let Some(c) = compress {
            extra.extend(["--compress", c]);
        }
        let mut feed = Feed::against(&sim.ws_url(), &sim.rest_url(), &symbols, "trade,quote", &extra);
        let deadline = Instant::now() + Duration::from_secs(30);
        while files(&dir.0).iter().filter(|p| !is_part(p)).count() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        feed.signal("INT");
        let (status, _) = feed.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{}", feed.stderr_text());
        let all = files(&dir.0);
        assert!(all.len() >= 3, "{all:?}");
        let mut lines = Vec::new();
        for p in &all {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
            assert!(name.ends_with(ext), "{name}");
            let bytes = std::fs::read(p).expect("read");
            let text = match compress {
                None => String::from_utf8(bytes).expect("utf8"),
                Some(_) => String::from_utf8(zstd_decode(&bytes)).expect("utf8"),
            };
            assert!(text.ends_with('\n'), "{name} ends inside a line");
            lines.extend(text.lines().map(str::to_string));
        }
        let summary = feed.summary();
        assert_eq!(lines.len() as u64, field(&summary, "written") + field(&summary, "control_lines"), "{compress:?}");
        // The second and later files start on a whole second: their names end in a second
        // that is one of the run's (the first is named by the start of the run).
        assert!(all.windows(2).all(|w| w[0] < w[1]), "names sort by start time");
    }
}

/// zstd-decodes a file with the same crate the program uses.
fn zstd_decode(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(bytes).expect("a whole zstd file")
}

/// Proves a write error at run time (a file-size limit, as a full disk) stops the run with
/// exit 1, keeps every finished file whole, and says what was lost.
#[test]
fn a_full_disk_stops_the_run_cleanly_keeping_finished_files() {
    let dir = TempDir::new("full");
    let sim = Sim::start(SimConfig { rate_per_sec: 5_000, ..SimConfig::default() }).expect("sim");
    let symbols = format!("{},BIG_FRAME", SimConfig::default().symbols.join(","));
    let out = dir.0.to_string_lossy().into_owned();
    let mut argv =
        args(&sim.ws_url(), &sim.rest_url(), &symbols, "trade,quote", &["--output-dir", &out, "--rotate", "64KiB"]);
    // Files may hold 100 KiB: the 64 KiB rotation stays under it, until one 150 KiB line comes.
    // SIGXFSZ is ignored (inherited through exec), so the write fails with EFBIG instead.
    let script = format!("trap '' XFSZ; ulimit -f 100; exec {} \"$@\"", bin());
    let mut cmd = vec!["-c".to_string(), script, "coinfeed".to_string()];
    cmd.append(&mut argv);
    let mut feed = Feed::start_program("bash", &cmd, FeedOptions::default());
    let deadline = Instant::now() + Duration::from_secs(30);
    while files(&dir.0).iter().filter(|p| !is_part(p)).count() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pad = "x".repeat(150 * 1024);
    sim.inject(WsFault::Text(format!(
        r#"{{"type":"quote","symbol_id":"BIG_FRAME","sequence":1,"time_exchange":"2026-12-01T00:00:00.0000000Z","time_coinapi":"2026-12-01T00:00:00.0000000Z","ask_price":1,"ask_size":1,"bid_price":1,"bid_size":1,"pad":"{pad}"}}"#
    )));
    let (status, _) = feed.wait_exit(Duration::from_secs(20));
    let stderr = feed.stderr_text();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write the output") && stderr.contains("not written"), "{stderr}");
    let finished: Vec<PathBuf> = files(&dir.0).into_iter().filter(|p| !is_part(p)).collect();
    assert!(finished.len() >= 3, "{finished:?}");
    for p in &finished {
        assert!(!whole_lines(p).is_empty());
    }
}

/// Proves that when stderr is a terminal the health line is redrawn in place once a second
/// (carriage return and erase-line, no scrolling `health:` lines), and logs still print.
#[test]
fn on_a_terminal_the_status_line_is_redrawn_in_place() {
    let sim = Sim::start(SimConfig { rate_per_sec: 1_000, ..SimConfig::default() }).expect("sim");
    let symbols = SimConfig::default().symbols.join(",");
    let mut argv = vec![bin().to_string()];
    argv.extend(args(&sim.ws_url(), &sim.rest_url(), &symbols, "trade,quote", &[]));
    // A pseudo-terminal for stderr (stdout to /dev/null), from Python's standard library: the
    // program decides by isatty, so only a real terminal device proves it.
    let script = r#"
import os, pty, select, signal, sys, time
pid, fd = pty.fork()
if pid == 0:
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 1)
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
def read_for(seconds):
    global out
    end = time.time() + seconds
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:
                return
read_for(3.5)
os.kill(pid, signal.SIGINT)
read_for(5)
os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&argv)
        .env("COINAPI_KEY", crate::harness::KEY)
        .output()
        .expect("python3 with a pty");
    let text = String::from_utf8_lossy(&out.stdout);
    let redraws = text.matches("\r\x1b[2K").count();
    let status_lines = text.matches(" msg/s | written ").count();
    assert!(status_lines >= 2, "the status line was drawn {status_lines} times:\n{text:?}");
    assert!(redraws >= status_lines, "each draw rewrites the line in place:\n{text:?}");
    assert!(!text.contains("health: "), "no scrolling health lines on a terminal:\n{text:?}");
    assert!(text.contains("connected to ") && text.contains("summary: "), "logs still print:\n{text:?}");
}
