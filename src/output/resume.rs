//! The data half of `--resume`: finding, in the files a previous run wrote under `--output-dir`,
//! each symbol's last trade, so a restarted shard can backfill REST history from there without
//! writing twice what it already wrote. It owns reading those files back; what is done with the
//! result (seeding the workers' symbol tables, `SymbolTable::resume`) is the app's.
//!
//! Two parts. `TailScan` is pure: fed one line at a time, it keeps per symbol the latest
//! `time_exchange` of a trade (stream or REST) and the uuids of the trades within `KEEP_NS` of
//! it, bounded per symbol and in symbols; every other line (quotes, books, control lines) is
//! ignored, and a line that does not parse (garbage, or the cut last line of a `.part` a killed
//! run left) is skipped and counted. Its result does not depend on the order of the lines, so
//! files can be read newest first. `scan_dir` does the IO: it lists the files of the set
//! (names as `output::sink` makes them, hidden files ignored), reads the newest ones whole until
//! a budget of decoded bytes is spent, decompressing `.zst` and `.gz`, with a bound on the
//! length of a line.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::limits::{MAX_MESSAGE_BYTES, MAX_TRADE_ID_LEN};
use crate::output::sink::{parse_name, Compress};
use crate::wire::parse_timestamp_ns;

/// How far before a symbol's last trade its uuids are kept: twice the worker's recovery margin
/// (`worker::windows::MARGIN_NS`, 1 s), so every trade a backfill window starting at the margin
/// can return is known, with a second to spare for trades that arrived out of time order
/// (seen ~50-100 ms).
pub const KEEP_NS: i64 = 2_000_000_000;
/// The extension of the NDJSON output files (the `FileSet` that `app::open_sink` makes).
pub const EXTENSION: &str = "ndjson";
/// Longest line read back: the largest message the reader accepts plus what the writer adds to
/// it (`recv_time`, `source`; a REST line's `type` and `symbol_id`). A longer line was not
/// written by this program: it is skipped (counted as bad) without being held.
pub const LINE_MAX_BYTES: usize = MAX_MESSAGE_BYTES + 4096;
/// Decoded bytes `--resume` reads back from the newest files of `--output-dir` (whole files, so
/// at most one file more): hours of a busy feed, seconds to read.
pub const SCAN_BYTES_MAX: u64 = 256 << 20;
/// Files of the set considered, the newest: a year of hourly files. Older ones are only counted.
pub const FILES_CONSIDERED_MAX: usize = 10_000;
/// The read buffer under the decoder.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A symbol's last trade, as the files say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastTrade {
    /// The latest `time_exchange` of a trade of the symbol, Unix ns.
    pub time_ns: i64,
    /// The uuids (as written) of its trades at `time_ns - KEEP_NS` or later, with their times,
    /// oldest first; at most the cap `TailScan::new` was given (the newest are kept).
    pub ids: Vec<(String, i64)>,
}

/// What a scan counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanCounts {
    /// Every line fed.
    pub lines: u64,
    /// Trade lines of a kept symbol (their time counted; their uuid kept if recent).
    pub trade_lines: u64,
    /// Lines that did not parse as an output line (cut, garbage, too long) or a trade line
    /// without a symbol or a readable `time_exchange`.
    pub bad_lines: u64,
    /// Trade lines of symbols beyond `max_symbols`: not kept.
    pub untracked_lines: u64,
}

/// The fields of an output line that matter here; every other is skipped unread (prices and
/// sizes of up to 29 digits included). Strings are read unescaped, as the worker reads them from
/// the wire (`wire::decode`): a `&str` field refused any escaped value, so a symbol written as
/// `"A\/B"` was never resumed (found by the `resume` fuzz target). `Option<Cow>` always owns
/// (serde's `borrow` does not reach through `Option`): a few short allocations per line, once at
/// start.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    symbol_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time_exchange: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uuid: Option<Cow<'a, str>>,
}

/// One symbol's trades seen so far.
#[derive(Debug)]
struct Tail {
    time_ns: i64,
    /// Recent uuids, unordered, pruned lazily: at most `2 × cap` between compactions.
    ids: Vec<(String, i64)>,
}

impl Tail {
    fn add(&mut self, uuid: Option<&str>, time_ns: i64, cap: usize) {
        self.time_ns = self.time_ns.max(time_ns);
        // An id the worker's memory could not hold (empty, too long) is not kept either.
        let uuid = uuid.filter(|u| !u.is_empty() && u.len() <= MAX_TRADE_ID_LEN);
        let Some(uuid) = uuid.filter(|_| cap > 0 && time_ns >= self.floor()) else {
            return;
        };
        if self.ids.len() >= cap.saturating_mul(2) {
            self.compact(cap);
        }
        self.ids.push((uuid.to_owned(), time_ns));
    }

    fn floor(&self) -> i64 {
        self.time_ns.saturating_sub(KEEP_NS)
    }

    /// Drops the ids older than the floor and, past the cap, all but the `cap` newest (by time,
    /// then uuid, so the result does not depend on the order they came in).
    fn compact(&mut self, cap: usize) {
        let floor = self.floor();
        self.ids.retain(|&(_, t)| t >= floor);
        if self.ids.len() > cap {
            let drop = self.ids.len() - cap;
            self.ids.select_nth_unstable_by(drop, |a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
            self.ids.drain(..drop);
        }
    }

    fn finish(mut self, cap: usize) -> LastTrade {
        self.compact(cap);
        self.ids.sort_unstable_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        LastTrade { time_ns: self.time_ns, ids: self.ids }
    }
}

/// Every symbol's last trade, from output lines fed one at a time. Pure; bounded by
/// `max_symbols` symbols of at most `2 × cap_ids_per_symbol` ids each.
#[derive(Debug)]
pub struct TailScan {
    cap_ids_per_symbol: usize,
    max_symbols: usize,
    symbols: HashMap<String, Tail>,
    counts: ScanCounts,
}

impl TailScan {
    pub fn new(cap_ids_per_symbol: usize, max_symbols: usize) -> TailScan {
        TailScan { cap_ids_per_symbol, max_symbols, symbols: HashMap::new(), counts: ScanCounts::default() }
    }

    /// One line, without its newline.
    pub fn add_line(&mut self, line: &[u8]) {
        self.counts.lines += 1;
        // Every output line is an object; serde's derive would also take a JSON array as the
        // fields in order (`["trade","A",…]`), which no writer of ours produces.
        let is_object = line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let Some(parsed) = serde_json::from_slice::<Line<'_>>(line).ok().filter(|_| is_object) else {
            self.counts.bad_lines += 1;
            return;
        };
        if parsed.kind != "trade" {
            return;
        }
        let time = parsed.time_exchange.as_deref().and_then(parse_timestamp_ns);
        let (Some(symbol), Some(time)) = (parsed.symbol_id.filter(|s| !s.is_empty()), time) else {
            self.counts.bad_lines += 1;
            return;
        };
        let cap = self.cap_ids_per_symbol;
        let uuid = parsed.uuid.as_deref();
        if let Some(tail) = self.symbols.get_mut(&*symbol) {
            tail.add(uuid, time, cap);
        } else if self.symbols.len() >= self.max_symbols {
            self.counts.untracked_lines += 1;
            return;
        } else {
            let mut tail = Tail { time_ns: time, ids: Vec::new() };
            tail.add(uuid, time, cap);
            self.symbols.insert(symbol.into_owned(), tail);
        }
        self.counts.trade_lines += 1;
    }

    /// A line that was not even read (longer than `LINE_MAX_BYTES`): counted as bad.
    pub fn skip_line(&mut self) {
        self.counts.lines += 1;
        self.counts.bad_lines += 1;
    }

    pub fn counts(&self) -> ScanCounts {
        self.counts
    }

    /// Symbols kept.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Every kept symbol's last trade, by symbol.
    pub fn into_last_trades(self) -> Vec<(String, LastTrade)> {
        let cap = self.cap_ids_per_symbol;
        let mut out: Vec<(String, LastTrade)> =
            self.symbols.into_iter().map(|(symbol, tail)| (symbol, tail.finish(cap))).collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// What `scan_dir` read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeFiles {
    /// The files read, newest first.
    pub files: Vec<PathBuf>,
    /// Files of the set older than those read, left unread.
    pub older_files: u64,
    /// Decoded bytes read, newlines included.
    pub bytes: u64,
    pub lines: u64,
    /// Compressed files whose stream stopped early (a `.part` ends mid-frame) or was damaged:
    /// read up to there.
    pub cut_streams: u64,
}

/// Feeds `scan` the newest output files of `prefix` in `dir` (`<prefix>-<stamp>[_NNN].ndjson`,
/// compressed or not, finished or `.part`), each read whole, until at least `max_bytes` decoded
/// bytes were read. A missing or empty directory reads nothing. A compressed stream that stops
/// early is said in a warning and what it held before is kept; an error reading a file is
/// returned with its name.
pub fn scan_dir(dir: &Path, prefix: &str, max_bytes: u64, scan: &mut TailScan) -> io::Result<ResumeFiles> {
    let mut read = ResumeFiles::default();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(read),
        Err(e) => return Err(at(dir, e)),
    };
    // (stamp, suffix, part, name, compression): sorts in the files' time order.
    let mut found: Vec<(String, u32, bool, String, Compress)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| at(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(f) = parse_name(name, prefix, EXTENSION) else { continue };
        if !entry.file_type().map_err(|e| at(&entry.path(), e))?.is_file() {
            continue;
        }
        found.push((f.stamp.to_owned(), f.suffix, f.part, name.to_owned(), f.compress));
        if found.len() >= 2 * FILES_CONSIDERED_MAX {
            keep_newest(&mut found, &mut read.older_files);
        }
    }
    keep_newest(&mut found, &mut read.older_files);
    for (_, _, _, name, compress) in found.into_iter().rev() {
        if read.bytes >= max_bytes {
            read.older_files += 1;
            continue;
        }
        let path = dir.join(name);
        if read_file(&path, compress, scan, &mut read)? {
            read.files.push(path);
        }
    }
    Ok(read)
}

/// Sorts the files found and keeps the newest `FILES_CONSIDERED_MAX`, counting the others.
fn keep_newest(found: &mut Vec<(String, u32, bool, String, Compress)>, older: &mut u64) {
    found.sort_unstable_by(|a, b| (&a.0, a.1, a.2, &a.3).cmp(&(&b.0, b.1, b.2, &b.3)));
    let excess = found.len().saturating_sub(FILES_CONSIDERED_MAX);
    found.drain(..excess);
    *older += excess as u64;
}

/// Reads one file whole into `scan`. Returns false if it vanished since it was listed (a `.part`
/// renamed to its final name by a writer still running: that name was not listed).
fn read_file(path: &Path, compress: Compress, scan: &mut TailScan, read: &mut ResumeFiles) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            log::warn!("resume: {} vanished before it was read", path.display());
            return Ok(false);
        }
        Err(e) => return Err(at(path, e)),
    };
    let decoded: Box<dyn Read> = match compress {
        Compress::None => Box::new(file),
        Compress::Zstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| at(path, e))?),
        Compress::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, decoded);
    let mut line = Vec::new();
    loop {
        match next_line(&mut reader, &mut line, LINE_MAX_BYTES, &mut read.bytes) {
            Ok(Some(true)) => scan.add_line(&line),
            Ok(Some(false)) => scan.skip_line(),
            Ok(None) => break,
            Err(e) if compress != Compress::None && is_stream_damage(e.kind()) => {
                // A `.part` ends where the writer's last flush put it, often mid-frame.
                log::warn!("resume: {} ends early ({e}): its lines before that are kept", path.display());
                read.cut_streams += 1;
                break;
            }
            Err(e) => return Err(at(path, e)),
        }
        read.lines += 1;
    }
    Ok(true)
}

/// What zstd and flate2 report for a stream that stops early or is damaged (rather than for the
/// file failing to read).
fn is_stream_damage(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::UnexpectedEof | ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::Other)
}

/// Reads the next line into `line` (without its newline), holding at most `max` bytes of it:
/// `Some(true)` a line, `Some(false)` a longer line (skipped), `None` the end. The last line may
/// lack its newline. `bytes` counts every byte consumed.
fn next_line(reader: &mut impl BufRead, line: &mut Vec<u8>, max: usize, bytes: &mut u64) -> io::Result<Option<bool>> {
    line.clear();
    let (mut any, mut fits) = (false, true);
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let newline = memchr::memchr(b'\n', available);
        let take = newline.unwrap_or(available.len());
        if fits && line.len() + take <= max {
            line.extend_from_slice(&available[..take]);
        } else {
            fits = false;
            line.clear();
        }
        let consumed = take + usize::from(newline.is_some());
        reader.consume(consumed);
        *bytes += consumed as u64;
        if newline.is_some() {
            return Ok(Some(fits));
        }
    }
}

/// The error with the path it concerns in its message.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const S: i64 = 1_000_000_000;
    const MS: i64 = 1_000_000;
    /// 2026-12-01T16:00:00Z.
    const T0: i64 = 1_796_140_800 * S;

    fn stamp(unix_ns: i64) -> String {
        crate::output::ndjson::TimestampFormatter::default().format(i128::from(unix_ns)).to_string()
    }

    /// A trade line as the writer writes it (`source` ws or rest), with a 29-digit price.
    fn trade(symbol: &str, uuid: &str, time_ns: i64, source: &str) -> String {
        format!(
            "{{\"type\":\"trade\",\"symbol_id\":\"{symbol}\",\"sequence\":2323346,\"time_exchange\":\"{}\",\
             \"time_coinapi\":\"2017-03-18T22:42:21.3763342Z\",\"uuid\":\"{uuid}\",\
             \"price\":77000000000000000000.000000000,\"size\":0.050000000,\"taker_side\":\"BUY\",\
             \"recv_time\":\"2026-12-01T16:00:00.000000000Z\",\"source\":\"{source}\"}}",
            stamp(time_ns)
        )
    }

    fn uuid(n: u64) -> String {
        format!("770c7a3b-7258-4441-8182-{n:012x}")
    }

    fn feed(scan: &mut TailScan, lines: &[String]) {
        for line in lines {
            scan.add_line(line.as_bytes());
        }
    }

    /// The ids of one symbol's result, as (uuid number, ms after T0).
    fn ids(last: &LastTrade) -> Vec<(String, i64)> {
        last.ids.iter().map(|(u, t)| (u.clone(), (t - T0) / MS)).collect()
    }

    /// Proves escaped strings in a line are read as the worker reads them off the wire
    /// (unescaped), and that a JSON array is not taken for a line: the `resume` fuzz target's
    /// finds (its seed of a symbol written `A\u0042` counted the line as bad).
    #[test]
    fn escaped_fields_are_read_and_arrays_are_not_lines() {
        let mut scan = TailScan::new(4, 10);
        let t = stamp(T0);
        scan.add_line(
            format!(r#"{{"type":"trade","symbol_id":"A\u0042\/C","time_exchange":"{t}","uuid":"u\u0027"}}"#).as_bytes(),
        );
        scan.add_line(format!(r#"{{"type":"tr\u0061de","symbol_id":"D","time_exchange":"{t}"}}"#).as_bytes());
        scan.add_line(format!(r#"["trade","E","{t}","u"]"#).as_bytes());
        assert_eq!(scan.counts(), ScanCounts { lines: 3, trade_lines: 2, bad_lines: 1, untracked_lines: 0 });
        let last = scan.into_last_trades();
        assert_eq!(last.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["AB/C", "D"]);
        assert_eq!(last[0].1.ids, vec![("u'".to_string(), T0)]);
    }

    /// Proves the last trade is the latest exchange time whatever the order trades came in, that
    /// ids within `KEEP_NS` of it are kept oldest first (a late one too) and older ones are not,
    /// and that the result does not depend on the order of the lines.
    #[test]
    fn the_last_trade_is_the_latest_time_and_keeps_the_recent_ids() {
        let lines = vec![
            trade("A", &uuid(1), T0, "ws"),
            trade("A", &uuid(2), T0 + 2_500 * MS, "ws"),
            trade("A", &uuid(3), T0 + 3_000 * MS, "ws"),
            // 100 ms out of time order.
            trade("A", &uuid(4), T0 + 2_900 * MS, "ws"),
            // Late and older than the kept window.
            trade("A", &uuid(5), T0 + 900 * MS, "ws"),
        ];
        let expected = vec![(uuid(2), 2_500), (uuid(4), 2_900), (uuid(3), 3_000)];
        let mut scan = TailScan::new(100, 10);
        feed(&mut scan, &lines);
        let last = scan.into_last_trades();
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].0.as_str(), last[0].1.time_ns), ("A", T0 + 3 * S));
        assert_eq!(ids(&last[0].1), expected);

        let mut reversed = TailScan::new(100, 10);
        feed(&mut reversed, &lines.iter().rev().cloned().collect::<Vec<_>>());
        assert_eq!(reversed.into_last_trades()[0].1.ids, last[0].1.ids, "order of the lines matters not");
    }

    /// Proves REST trades count like stream trades, and quotes, books and control lines are
    /// ignored without being bad.
    #[test]
    fn rest_trades_count_and_other_lines_are_ignored() {
        let mut scan = TailScan::new(100, 10);
        let lines = vec![
            trade("A", &uuid(1), T0, "ws"),
            trade("A", &uuid(2), T0 + S, "rest"),
            format!(
                "{{\"type\":\"quote\",\"symbol_id\":\"A\",\"time_exchange\":\"{}\",\"ask_price\":1}}",
                stamp(T0 + 9 * S)
            ),
            "{\"type\":\"book20\",\"symbol_id\":\"A\",\"asks\":[{\"price\":1,\"size\":2}],\"bids\":[]}".to_string(),
            "{\"type\":\"connection\",\"event\":\"closed\",\"generation\":1,\"error\":\"read \\\"timeout\\\"\"}"
                .to_string(),
            "{\"type\":\"gap\",\"data_type\":\"trade\",\"symbol_id\":\"A\",\"cause\":\"reconnect\"}".to_string(),
            "{\"type\":\"recovery\",\"symbol_id\":\"B\",\"data_type\":\"trade\",\"window\":null}".to_string(),
        ];
        feed(&mut scan, &lines);
        assert_eq!(scan.counts(), ScanCounts { lines: 7, trade_lines: 2, bad_lines: 0, untracked_lines: 0 });
        let last = scan.into_last_trades();
        assert_eq!(last.len(), 1, "a recovery line names no trade");
        assert_eq!(last[0].1.time_ns, T0 + S);
        assert_eq!(ids(&last[0].1), vec![(uuid(1), 0), (uuid(2), 1_000)]);
    }

    /// Proves a cut line, garbage, a trade without a readable time and an over-long line are
    /// skipped and counted, and change nothing.
    #[test]
    fn cut_and_garbage_lines_are_counted() {
        let mut scan = TailScan::new(100, 10);
        let whole = trade("A", &uuid(1), T0, "ws");
        let later = trade("A", &uuid(2), T0 + S, "ws");
        let no_time = whole.replace(&stamp(T0), "yesterday");
        feed(
            &mut scan,
            &[
                whole,
                later[..later.len() / 2].to_string(),
                "\u{0}\u{1}garbage".to_string(),
                String::new(),
                "{}".to_string(),
                "[1,2]".to_string(),
                no_time,
            ],
        );
        scan.skip_line();
        assert_eq!(scan.counts(), ScanCounts { lines: 8, trade_lines: 1, bad_lines: 7, untracked_lines: 0 });
        let last = scan.into_last_trades();
        assert_eq!((last[0].1.time_ns, last[0].1.ids.len()), (T0, 1));
    }

    /// Proves the ids per symbol are capped (the newest kept, by time) and symbols beyond
    /// `max_symbols` are counted, not kept.
    #[test]
    fn ids_and_symbols_are_bounded() {
        let mut scan = TailScan::new(3, 2);
        let lines: Vec<String> = (0..50).map(|i| trade("A", &uuid(i), T0 + i as i64 * MS, "ws")).collect();
        feed(&mut scan, &lines);
        feed(&mut scan, &[trade("B", &uuid(100), T0, "ws"), trade("C", &uuid(101), T0, "ws")]);
        feed(&mut scan, &[trade("C", &uuid(102), T0, "ws"), trade("B", &uuid(103), T0 + MS, "rest")]);
        assert_eq!(scan.counts(), ScanCounts { lines: 54, trade_lines: 52, bad_lines: 0, untracked_lines: 2 });
        assert_eq!(scan.len(), 2);
        let last = scan.into_last_trades();
        assert_eq!(last.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(ids(&last[0].1), vec![(uuid(47), 47), (uuid(48), 48), (uuid(49), 49)]);
        assert_eq!(ids(&last[1].1), vec![(uuid(100), 0), (uuid(103), 1)]);

        let mut none = TailScan::new(0, 1);
        feed(&mut none, &lines[..2]);
        assert_eq!(none.into_last_trades()[0].1, LastTrade { time_ns: T0 + MS, ids: Vec::new() });
    }

    use crate::output::sink::tests::TempDir;

    fn text(lines: &[String]) -> Vec<u8> {
        lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect()
    }

    /// Proves a scan of an output directory reads the files of the set newest first (a plain
    /// file, a `.part` whose last line is cut, a finished `.zst`, a `.gz.part` and a `.zst.part` that end mid-frame)
    /// and ignores the start-up probe and other names; that the byte budget stops it after a
    /// whole file; and that a missing directory reads nothing.
    #[test]
    fn scan_dir_reads_the_newest_files_of_the_set() {
        let tmp = TempDir::new("scan");
        let dir = &tmp.0;
        fs::write(dir.join("coinfeed-20261201T150000Z.ndjson"), text(&[trade("A", &uuid(1), T0, "ws")]))
            .expect("plain");
        let mut zst_part = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
        zst_part.write_all(&text(&[trade("C", &uuid(9), T0, "ws")])).expect("zstd");
        zst_part.flush().expect("zstd flush");
        fs::write(dir.join("coinfeed-20261201T140000Z.ndjson.zst.part"), zst_part.get_ref()).expect("zst part");
        let mut zst = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
        zst.write_all(&text(&[trade("A", &uuid(2), T0 + S, "ws"), trade("B", &uuid(3), T0, "ws")])).expect("zstd");
        fs::write(dir.join("coinfeed-20261201T160000Z.ndjson.zst"), zst.finish().expect("zstd")).expect("zst");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&text(&[trade("B", &uuid(4), T0 + S, "rest")])).expect("gzip");
        gz.flush().expect("gzip flush");
        fs::write(dir.join("coinfeed-20261201T160000Z_001.ndjson.gz.part"), gz.get_ref()).expect("gz part");
        let mut part = text(&[trade("A", &uuid(5), T0 + 2 * S, "ws")]);
        let cut = trade("A", &uuid(6), T0 + 3 * S, "ws");
        part.extend_from_slice(&cut.as_bytes()[..cut.len() - 40]);
        fs::write(dir.join("coinfeed-20261201T170000Z.ndjson.part"), &part).expect("part");
        fs::write(dir.join(".coinfeed-probe-1"), text(&[trade("A", &uuid(7), T0 + 9 * S, "ws")])).expect("probe");
        fs::write(dir.join("notes-20261201T180000Z.ndjson"), text(&[trade("A", &uuid(8), T0 + 9 * S, "ws")]))
            .expect("other");

        let mut scan = TailScan::new(100, 10);
        let read = scan_dir(dir, "coinfeed", u64::MAX, &mut scan).expect("scan");
        let names: Vec<String> =
            read.files.iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            [
                "coinfeed-20261201T170000Z.ndjson.part",
                "coinfeed-20261201T160000Z_001.ndjson.gz.part",
                "coinfeed-20261201T160000Z.ndjson.zst",
                "coinfeed-20261201T150000Z.ndjson",
                "coinfeed-20261201T140000Z.ndjson.zst.part",
            ]
        );
        assert_eq!((read.lines, read.older_files, read.cut_streams), (7, 0, 2));
        assert_eq!(scan.counts(), ScanCounts { lines: 7, trade_lines: 6, bad_lines: 1, untracked_lines: 0 });
        let last = scan.into_last_trades();
        assert_eq!(last[0].1.time_ns, T0 + 2 * S, "A's cut trade is not its last");
        assert_eq!(ids(&last[0].1), vec![(uuid(1), 0), (uuid(2), 1_000), (uuid(5), 2_000)]);
        assert_eq!(ids(&last[1].1), vec![(uuid(3), 0), (uuid(4), 1_000)]);
        assert_eq!(ids(&last[2].1), vec![(uuid(9), 0)]);

        // A budget smaller than the newest file still reads it whole, and only it.
        let mut scan = TailScan::new(100, 10);
        let read = scan_dir(dir, "coinfeed", 10, &mut scan).expect("scan");
        assert_eq!((read.files.len(), read.older_files, read.bytes), (1, 4, part.len() as u64));
        assert_eq!(scan.into_last_trades()[0].1.time_ns, T0 + 2 * S);

        let mut scan = TailScan::new(100, 10);
        let read = scan_dir(&dir.join("missing"), "coinfeed", u64::MAX, &mut scan).expect("missing dir");
        assert_eq!(read, ResumeFiles::default());
    }

    /// Proves a line longer than the bound is skipped whole without being held, and the lines
    /// around it are read.
    #[test]
    fn an_over_long_line_is_skipped() {
        let mut input = b"short\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100));
        input.extend_from_slice(b"\nlast");
        let mut reader = BufReader::with_capacity(16, &input[..]);
        let (mut line, mut bytes) = (Vec::new(), 0u64);
        let mut got = Vec::new();
        while let Some(fits) = next_line(&mut reader, &mut line, 10, &mut bytes).expect("read") {
            got.push((fits, String::from_utf8_lossy(&line).into_owned()));
        }
        let expected = [(true, "short"), (false, ""), (true, "last")].map(|(f, l)| (f, l.to_string()));
        assert_eq!(got, expected);
        assert_eq!(bytes, input.len() as u64);
    }
}
