//! The command-line contract: bad input is refused before anything starts, with exit code 2
//! and a message naming the flag; --help documents every flag.

use std::process::{Command, Stdio};

use crate::harness::bin;

/// Runs coinfeed with `args` (and COINAPI_KEY if `key`), returns (exit code, stderr).
fn run(args: &[&str], key: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null()).env_remove("COINAPI_KEY");
    if let Some(k) = key {
        cmd.env("COINAPI_KEY", k);
    }
    let out = cmd.output().expect("run coinfeed");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_refused(args: &[&str], key: Option<&str>, must_mention: &[&str]) {
    let (code, stdout, stderr) = run(args, key);
    assert_eq!(code, Some(2), "args {args:?}: expected exit 2, stderr:\n{stderr}");
    assert!(stdout.is_empty(), "args {args:?}: nothing may reach stdout, got {stdout}");
    for m in must_mention {
        assert!(stderr.contains(m), "args {args:?}: stderr should mention {m:?}:\n{stderr}");
    }
}

/// Proves every kind of bad command line is refused with exit 2 and names the culprit.
#[test]
fn bad_command_lines_exit_2_naming_the_flag() {
    let k = Some("key");
    check_refused(&["--symbols", "BITSTAMP_SPOT_BTC_USD"], None, &["COINAPI_KEY", "--sim"]);
    check_refused(&[], k, &["--symbols"]);
    check_refused(&["--symbols", ","], k, &["--symbols", "empty"]);
    check_refused(&["--symbols", "A", "--types", "trade,candles"], k, &["--types", "candles"]);
    check_refused(&["--symbols", "A", "--queue-capacity", "0"], k, &["--queue-capacity"]);
    check_refused(&["--symbols", "A", "--queue-capacity", "many"], k, &["--queue-capacity"]);
    check_refused(&["--symbols", "A", "--ws-url", "not a url"], k, &["--ws-url"]);
    check_refused(&["--symbols", "A", "--ws-url", "ws://example.com/v1/"], k, &["--ws-url", "--allow-insecure-ws"]);
    check_refused(&["--symbols", "A", "--rest-url", "ws://x"], k, &["--rest-url"]);
    check_refused(&["--symbols", "A", "--workers", "0"], k, &["--workers"]);
    check_refused(&["--symbols", "A", "--no-such-flag"], k, &["--no-such-flag"]);
    check_refused(&["--sim", "--ws-url", "ws://127.0.0.1:1/"], None, &["--ws-url", "--sim"]);
}

/// Proves --help documents every contract flag and its default, and exits 0.
#[test]
fn help_explains_every_flag_with_its_default() {
    let (code, stdout, _) = run(&["--help"], None);
    assert_eq!(code, Some(0));
    for flag in [
        "--symbols",
        "--types",
        "--ws-url",
        "--rest-url",
        "--workers",
        "--queue-capacity",
        "--buffer-mib",
        "--recovery-rps",
        "--connect-timeout",
        "--stale-timeout",
        "--queue-wait-ms",
        "--sim",
        "COINAPI_KEY",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}:\n{stdout}");
    }
    for default in ["[default: 64]", "[default: 2]", "[default: wss://ws.coinapi.io/v1/]", "[default: 50]"] {
        assert!(stdout.contains(default), "--help lacks {default}:\n{stdout}");
    }
}

/// Proves what the machine must allow is checked before anything starts, like a bad flag: an
/// output or recording directory that cannot be written, a metrics address already taken, a
/// replay file that is not there.
#[test]
fn unusable_paths_and_addresses_exit_2_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    // A path under a regular file can never be a directory (root ignores permissions).
    let file = std::env::temp_dir().join(format!("coinfeed-it-file-{}", std::process::id()));
    std::fs::write(&file, b"x").expect("write");
    let under = file.join("out");
    let under = under.to_string_lossy();
    check_refused(&["--sim", "--output-dir", &under], None, &["--output-dir"]);
    check_refused(&["--sim", "--record", &format!("{under}/feed.cfrec")], None, &["--record"]);
    check_refused(&["--sim", "--metrics-listen", &port], None, &["--metrics-listen", "cannot listen"]);
    check_refused(&["--sim", "--metrics-listen", "0.0.0.0:0"], None, &["--metrics-listen", "--allow-remote-metrics"]);
    check_refused(&["--sim", "--rotate", "1h"], None, &["--rotate", "--output-dir"]);
    check_refused(&["--sim", "--output-dir", "/tmp", "--rotate", "1 hour"], None, &["--rotate"]);
    check_refused(&["--sim", "--compress", "zstd"], None, &["--output-dir"]);
    check_refused(&["replay", "/nonexistent/feed.cfrec"], None, &["/nonexistent/feed.cfrec"]);
    check_refused(&["replay", &file.to_string_lossy(), "--speed", "2", "--max"], None, &["--max"]);
    let _ = std::fs::remove_file(&file);
}
