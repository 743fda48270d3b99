//! Tidy tests: the invariants of ARCHITECTURE.md, held by reading the source tree. Each rule
//! is a statement of what is absent (an unbounded channel, a clock read in a pure room, an
//! import across rooms); a change that breaks one fails here with the file and line.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::bin;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The library's files (src/ without main.rs), as (path relative to src/, text).
fn library() -> Vec<(String, String)> {
    let src = root().join("src");
    rust_files(&src)
        .into_iter()
        .map(|p| (p.strip_prefix(&src).expect("under src").to_string_lossy().replace('\\', "/"), read(&p)))
        .filter(|(rel, _)| rel != "main.rs")
        .collect()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The text before the file's unit-test module: what a release build compiles.
fn non_test(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests").map_or(text, |i| &text[..i])
}

/// A line without its comment: cut at `// ` (this codebase's comments all have the space, so a
/// `ws://` inside a string stays), or blank for a line that is a comment.
fn code(line: &str) -> &str {
    if line.trim_start().starts_with("//") {
        return "";
    }
    line.split("// ").next().unwrap_or("")
}

/// Lines of `text` containing `needle`, outside comments, as "line: text".
fn hits(text: &str, needle: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| code(l).contains(needle))
        .map(|(i, l)| format!("{}: {}", i + 1, l.trim()))
        .collect()
}

/// The room a library file belongs to: its first path component without `.rs`.
fn room(rel: &str) -> &str {
    rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs")
}

/// Proves every source file opens with a `//!` paragraph saying what it owns.
#[test]
fn every_file_opens_with_a_module_doc() {
    let mut missing = Vec::new();
    for dir in ["src", "crates", "xtask", "tests", "benches"] {
        for p in rust_files(&root().join(dir)) {
            if !read(&p).trim_start().starts_with("//!") {
                missing.push(p.display().to_string());
            }
        }
    }
    assert!(missing.is_empty(), "files without a //! module doc: {missing:#?}");
}

/// Proves no unbounded channel exists in the program or the simulator. The one list-backed
/// queue is the workers' input in `lanes.rs`, created once by `worker_queues` and bounded by the
/// memory budget: its senders never leave that module (no `pub` field or return hands out a
/// `Sender<WorkerInput>`).
#[test]
fn no_unbounded_channel() {
    let mut found = Vec::new();
    for dir in ["src", "crates", "xtask"] {
        for p in rust_files(&root().join(dir)) {
            let text = read(&p);
            for needle in ["unbounded(", "unbounded::<", "mpsc::channel(", "mpsc::channel::<"] {
                for h in hits(&text, needle) {
                    let budgeted = p.ends_with("src/lanes.rs")
                        && h.contains("crossbeam_channel::unbounded::<WorkerInput>()")
                        && hits(non_test(&text), needle).len() == 1;
                    if !budgeted {
                        found.push(format!("{}:{h}", p.display()));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "unbounded channels: {found:#?}");
    let lanes = read(&root().join("src/lanes.rs"));
    let leaks: Vec<String> = ["pub tx", "pub senders", "-> Sender<WorkerInput>", "-> Vec<Sender<WorkerInput>>"]
        .iter()
        .flat_map(|n| hits(non_test(&lanes), n))
        .collect();
    assert!(leaks.is_empty(), "a worker queue's sender leaves lanes.rs, past the budget: {leaks:#?}");
}

/// Proves `unsafe` appears in one place only: glibc's `malloc_trim` in `metrics/proc.rs`.
#[test]
fn unsafe_is_confined_to_the_memory_return() {
    let mut found = Vec::new();
    for dir in ["src", "crates", "xtask", "tests", "benches"] {
        for p in rust_files(&root().join(dir)) {
            if p.ends_with("tests/it/tidy.rs") {
                continue;
            }
            for h in hits(&read(&p), "unsafe") {
                let allowed = p.ends_with("src/metrics/proc.rs")
                    && (h.contains("#[allow(unsafe_code)]") || h.contains("unsafe {"));
                if !allowed {
                    found.push(format!("{}:{h}", p.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "unsafe outside metrics/proc.rs: {found:#?}");
}

/// Proves the library never names the simulator (only the binary's `--sim` wiring does), and
/// the simulator depends on nothing of coinfeed.
#[test]
fn the_core_never_names_the_simulator() {
    let mut found = Vec::new();
    for (rel, text) in library() {
        for needle in ["coinfeed_sim", "coinfeed-sim"] {
            found.extend(hits(&text, needle).into_iter().map(|h| format!("src/{rel}:{h}")));
        }
    }
    assert!(found.is_empty(), "the library names the simulator: {found:#?}");
    let sim_manifest = read(&root().join("crates/sim/Cargo.toml"));
    let deps = sim_manifest.split("[dependencies]").nth(1).unwrap_or("");
    assert!(!deps.lines().any(|l| l.trim_start().starts_with("coinfeed")), "coinfeed-sim depends on coinfeed");
    for p in rust_files(&root().join("crates/sim")) {
        assert!(hits(&read(&p), "coinfeed::").is_empty(), "{} uses the client's code", p.display());
    }
}

/// Proves only the writer writes the output: no library file names stdout or prints (main.rs
/// hands `io::stdout()` to the pipeline, the writer thread writes to what it was given).
#[test]
fn only_the_writer_touches_stdout() {
    let mut found = Vec::new();
    for (rel, text) in library() {
        for needle in ["stdout()", "println!", "print!(", "io::stdout"] {
            found.extend(hits(non_test(&text), needle).into_iter().map(|h| format!("src/{rel}:{h}")));
        }
    }
    assert!(found.is_empty(), "stdout touched outside the writer: {found:#?}");
}

/// Proves pipeline threads are spawned in one place, app.rs. The one documented exception is
/// the reader's short-lived `dns` lookup thread (getaddrinfo cannot be interrupted).
#[test]
fn threads_are_spawned_only_in_app() {
    let mut found = Vec::new();
    for (rel, text) in library() {
        if rel == "app.rs" {
            continue;
        }
        for needle in ["thread::Builder", "thread::spawn", "spawn_scoped", "thread::scope"] {
            for h in hits(non_test(&text), needle) {
                let exception = rel == "ingest/mod.rs" && needle == "thread::Builder";
                if !exception {
                    found.push(format!("src/{rel}:{h}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "threads spawned outside app.rs: {found:#?}");
    let dns = library().into_iter().find(|(rel, _)| rel == "ingest/mod.rs").expect("ingest/mod.rs").1;
    assert_eq!(hits(non_test(&dns), "thread::Builder").len(), 1, "exactly one exception: the dns thread");
}

/// The pure rooms: no IO, no clock, no threads; time comes in as an argument.
const PURE: &[&str] = &[
    "wire/mod.rs",
    "wire/json_scan.rs",
    "wire/book.rs",
    "worker/symbols.rs",
    "worker/windows.rs",
    "worker/book/mod.rs",
    "worker/book/decimal.rs",
    "worker/books.rs",
    "worker/sequence.rs",
    "worker/dedup.rs",
    "recovery/queue.rs",
    "ingest/backoff.rs",
    "ingest/record.rs",
    "output/ndjson.rs",
    "metrics/text.rs",
    "metrics/prometheus.rs",
    "config/units.rs",
    "config/limits.rs",
    "config/cli.rs",
];

/// Proves the pure rooms read no clock and do no IO outside their tests.
#[test]
fn pure_modules_read_no_clock() {
    let library = library();
    let mut found = Vec::new();
    for rel in PURE {
        let text = &library.iter().find(|(r, _)| r == rel).unwrap_or_else(|| panic!("{rel} is gone")).1;
        for needle in [
            "Instant::now",
            "SystemTime::now",
            "unix_now_ns",
            "std::fs",
            "std::net",
            "std::thread",
            "std::io",
            "std::{",
        ] {
            found.extend(hits(non_test(text), needle).into_iter().map(|h| format!("src/{rel}:{h}")));
        }
    }
    assert!(found.is_empty(), "clock or IO in a pure module: {found:#?}");
}

/// Which rooms each room may import (`crate::<room>`). Thread rooms (ingest, worker, recovery,
/// output's writer) never import each other, with one exception: a worker calls
/// `recovery::handle`. Only `app` may import everything, and nothing imports `app`.
fn allowed(room: &str) -> &'static [&'static str] {
    match room {
        "clock" | "shutdown" | "fault" | "lib" => &[],
        "wire" => &["wire"],
        // The endpoint's thread body (`metrics/http.rs`) reads the clock and waits on the stop.
        "metrics" => &["metrics", "config", "clock", "shutdown"],
        "config" => &["config", "wire"],
        "lanes" => &["lanes", "metrics", "wire"],
        "output" => &["output", "config", "lanes", "wire", "metrics", "shutdown", "fault", "clock"],
        // The recorder writes its files through the output's rotating files (`output::sink`).
        "ingest" => &[
            "ingest",
            "clock",
            "config",
            "lanes",
            "metrics",
            "output::ndjson",
            "output::sink",
            "shutdown",
            "wire",
            "fault",
        ],
        "worker" => {
            &["worker", "clock", "config", "lanes", "metrics", "output::ndjson", "wire", "fault", "recovery::handle"]
        }
        "recovery" => {
            &["recovery", "clock", "config", "lanes", "metrics", "output::ndjson", "shutdown", "wire", "fault"]
        }
        "app" => &["clock", "config", "ingest", "lanes", "metrics", "output", "recovery", "shutdown", "worker"],
        other => panic!("no import rule for room {other:?}: add it to tidy.rs and ARCHITECTURE.md"),
    }
}

/// Every `crate::a::b` path in `text` (outside comments), as "a::b" (two segments at most), with
/// its line. A `use crate::{a::x, b}` group, on one line or wrapped over several, gives each
/// member (`a::x`, `b`).
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().map(code).collect();
    let joined = lines.join("\n");
    let line_of = |at: usize| joined[..at].matches('\n').count() + 1;
    let two =
        |path: &str| path.split("::").map(str::trim).filter(|s| !s.is_empty()).take(2).collect::<Vec<_>>().join("::");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = joined[from..].find("crate::") {
        let at = from + pos;
        let rest = &joined[at + "crate::".len()..];
        from = at + "crate::".len();
        if let Some(group) = rest.strip_prefix('{') {
            // Members at depth 0 of the group; a nested `a::{x, y}` gives `a::x`, `a::y`.
            let (mut depth, mut prefix, mut member) = (0usize, String::new(), String::new());
            for c in group.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        prefix = member.trim().to_string();
                        member.clear();
                    }
                    '}' | ',' => {
                        let m = member.trim();
                        if !m.is_empty() {
                            let path = if depth > 0 { format!("{prefix}{m}") } else { m.to_string() };
                            out.push((line_of(at), two(&path)));
                        }
                        member.clear();
                        if c == '}' {
                            if depth == 0 {
                                break;
                            }
                            depth -= 1;
                        }
                    }
                    _ => member.push(c),
                }
            }
            continue;
        }
        let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        out.push((line_of(at), two(&path)));
    }
    out
}

/// Proves each room imports only what its rule allows, so no import circle can come back.
#[test]
fn imports_follow_the_room_rules() {
    let mut found = Vec::new();
    for (rel, text) in library() {
        let r = room(&rel);
        let allowed = allowed(r);
        for (line, path) in crate_paths(&text) {
            let first = path.split("::").next().unwrap_or("");
            if first == "{" || first.is_empty() {
                continue;
            }
            let ok = allowed.contains(&first) || allowed.contains(&path.as_str());
            if !ok {
                found.push(format!("src/{rel}:{line}: {r} imports crate::{path}"));
            }
        }
        if r != "lib" {
            assert!(!crate_paths(&text).iter().any(|(_, p)| p.starts_with("app")), "src/{rel}: nothing imports app");
        }
    }
    assert!(found.is_empty(), "imports across rooms: {found:#?}");
}

/// Proves the README's flag table lists exactly the flags `--help` shows.
#[test]
fn the_readme_flag_table_matches_help() {
    let help = Command::new(bin()).arg("--help").output().expect("coinfeed --help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    let flag = |s: &str| -> Option<String> {
        let f: String = s.chars().take_while(|c| c.is_ascii_lowercase() || *c == '-').collect();
        (f.len() > 2).then_some(f)
    };
    let mut from_help: Vec<String> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("-").map(|_| l.trim_start()))
        .filter_map(|l| l.split(", ").last().and_then(flag))
        .filter(|f| f != "--help" && f != "--version")
        .collect();
    from_help.sort();
    from_help.dedup();
    let readme = read(&root().join("README.md"));
    let mut from_readme: Vec<String> =
        readme.lines().filter_map(|l| l.strip_prefix("| `")).filter_map(flag).filter(|f| f.starts_with("--")).collect();
    from_readme.sort();
    from_readme.dedup();
    assert_eq!(from_readme, from_help, "README.md's flag table and `coinfeed --help` disagree");
}

/// Proves README.md quotes every output line shape exactly as the code writes it (the shapes
/// are the table test's in src/output/ndjson.rs).
#[test]
fn the_readme_quotes_every_line_shape() {
    let ndjson = read(&root().join("src/output/ndjson.rs"));
    let readme = read(&root().join("README.md"));
    let table = ndjson.split("const SHAPES").nth(1).expect("the SHAPES table in ndjson.rs");
    let table = &table[..table.find("];").expect("end of SHAPES")];
    let shapes: Vec<&str> = table
        .lines()
        .filter_map(|l| l.trim().strip_prefix("r#\""))
        .map(|l| l.trim_end_matches(',').trim_end_matches("\"#"))
        .collect();
    assert!(shapes.len() >= 9, "the shape table was not found in ndjson.rs");
    for line in shapes {
        assert!(readme.contains(line), "README.md does not quote this line exactly:\n{line}");
    }
}
