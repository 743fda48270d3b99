//! `--resume` with `--output-dir`: a run killed while the feed goes on, restarted with --resume,
//! finishes the file the dead run left, finds each symbol's last trade in it and backfills from
//! there, so the files hold every trade exactly once. (The same into Kafka: `kafka.rs`.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use coinfeed_sim::{Sim, SimConfig};

use crate::harness::*;
use crate::operations::TempDir;

/// Every line of the finished files in `dir` (none may be left as `.part`).
fn file_lines(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    names.sort();
    assert!(names.iter().all(|p| p.extension().is_some_and(|e| e == "ndjson")), "unfinished files: {names:?}");
    names
        .iter()
        .flat_map(|p| std::fs::read_to_string(p).expect("read").lines().map(String::from).collect::<Vec<_>>())
        .collect()
}

/// Proves a restart leaves neither a hole nor a duplicate in --output-dir: the first run is
/// killed (SIGKILL, its file left as `.part` with a cut line) while the feed goes on; the
/// second, with --resume, finishes that file and backfills every trade of the downtime once.
#[test]
fn a_killed_run_restarted_with_resume_leaves_no_hole_in_its_files() {
    let tmp = TempDir::new("resume");
    let dir = tmp.0.to_string_lossy().into_owned();
    let symbols: Vec<String> = (0..3).map(|i| format!("SIMX_SPOT_RES{i}_USD")).collect();
    let sim =
        Sim::start(SimConfig { symbols: symbols.clone(), rate_per_sec: 150, ..SimConfig::default() }).expect("sim");
    let list = symbols.join(",");
    let extra = ["--output-dir", dir.as_str(), "--backoff-max", "1", "--recovery-trades-limit", "1000"];
    let mut first = Feed::start(&args(&sim.ws_url(), &sim.rest_url(), &list, "trade", &extra), FeedOptions::default());
    assert!(wait_health(&first, Duration::from_secs(30), "written", 300), "stderr:\n{}", first.stderr_text());
    sim.outage(Duration::from_secs(6));
    first.signal("KILL");
    let _ = first.wait_exit(Duration::from_secs(10));
    let killed_at = Instant::now();
    // The scenario's downtime: restarted after 3 s, while the feed is still refused.
    std::thread::sleep(Duration::from_secs(3));
    let mut resumed = extra.to_vec();
    resumed.push("--resume");
    let mut second =
        Feed::start(&args(&sim.ws_url(), &sim.rest_url(), &list, "trade", &resumed), FeedOptions::default());
    let recovered = wait_health(&second, Duration::from_secs(60), "recovery_ok", symbols.len() as u64);
    assert!(recovered, "no backfill for every symbol; stderr:\n{}", second.stderr_text());
    second.signal("INT");
    let (status, _) = second.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "stderr:\n{}", second.stderr_text());
    let stderr = second.stderr_text();
    assert!(stderr.contains("left unfinished by a previous run: cut after its last whole line"), "{stderr}");
    assert!(stderr.contains("the last trade of 3 of this shard's 3 symbols found"), "{stderr}");
    let s = second.summary();
    assert_eq!((field(&s, "recovery_ok"), field(&s, "unrecovered")), (3, 0));

    let lines = file_lines(&tmp.0);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not whole JSON ({e}): {line}"));
        if v["type"] == "trade" {
            *counts.entry(v["uuid"].as_str().expect("uuid").to_ascii_lowercase()).or_default() += 1;
        }
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{} trades written twice, e.g. {:?}", twice.len(), twice.first());
    let mut downtime = 0;
    for symbol in &symbols {
        let stored = sim.stored_trades(symbol);
        downtime += stored.iter().filter(|t| !t.streamed).count();
        let last = stored.iter().rposition(|t| counts.contains_key(&t.uuid)).expect("some trade");
        let missing: Vec<&str> =
            stored[..=last].iter().filter(|t| !counts.contains_key(&t.uuid)).map(|t| t.uuid.as_str()).collect();
        assert!(missing.is_empty(), "{symbol}: {} trades missing, e.g. {:?}", missing.len(), missing.first());
    }
    assert!(downtime >= 3 * 100, "the downtime generated trades: {downtime}");
    eprintln!(
        "resume from files: {downtime} trades while down, recovered_written={}, {} requests, {:.1} s after the kill",
        field(&s, "recovered_written"),
        rest_requests(&sim).len(),
        killed_at.elapsed().as_secs_f64()
    );
}
