//! Differential target for `--resume`'s reading of our own output files (`output/resume.rs`,
//! `TailScan`): the input's lines are fed one by one to a scan that keeps at most 3 symbols of
//! at most 4 ids, beside a reference read with serde_json. Both must count the same lines as
//! trades, bad and untracked, and give each kept symbol the same last time and the same ids: the
//! newest (by time, then uuid) of those within `KEEP_NS` of its last trade.

#![no_main]

use std::collections::BTreeMap;

use coinfeed::config::limits::MAX_TRADE_ID_LEN;
use coinfeed::output::resume::{ScanCounts, TailScan, KEEP_NS};
use coinfeed::wire::parse_timestamp_ns;
use coinfeed_fuzz::{object, parts, string};
use libfuzzer_sys::fuzz_target;

/// A symbol's trade ids with their exchange times.
type Ids = Vec<(String, i64)>;

const CAP: usize = 4;
const MAX_SYMBOLS: usize = 3;

/// A line's verdict, as serde_json reads it: not an output line (`None`), another type, or a
/// trade's symbol, time and uuid (each a string or absent; a field given twice is refused).
enum Read {
    Bad,
    Other,
    Trade { symbol: Option<String>, time: Option<String>, uuid: Option<String> },
}

fn read(line: &[u8]) -> Read {
    let Some(e) = object(line) else { return Read::Bad };
    let field = |k: &str| -> Result<Option<String>, ()> {
        match e.once_raw(k)? {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => string(raw).map(Some).ok_or(()),
        }
    };
    let (Ok(Some(kind)), Ok(symbol), Ok(time), Ok(uuid)) =
        (field("type"), field("symbol_id"), field("time_exchange"), field("uuid"))
    else {
        return Read::Bad;
    };
    if kind != "trade" {
        return Read::Other;
    }
    Read::Trade { symbol, time, uuid }
}

fuzz_target!(|data: &[u8]| {
    let mut scan = TailScan::new(CAP, MAX_SYMBOLS);
    let mut counts = ScanCounts::default();
    let mut symbols: BTreeMap<String, (i64, Ids)> = BTreeMap::new();
    for line in parts(data, b'\n', 256) {
        // serde_json skips a string it does not read without checking its UTF-8 (`from_slice`),
        // which the reference, reading every value, cannot mirror: both are fed valid UTF-8.
        let line = String::from_utf8_lossy(line);
        let line = line.as_bytes();
        scan.add_line(line);
        counts.lines += 1;
        let (symbol, time, uuid) = match read(line) {
            Read::Bad => {
                counts.bad_lines += 1;
                continue;
            }
            Read::Other => continue,
            Read::Trade { symbol, time, uuid } => (symbol, time, uuid),
        };
        let (Some(symbol), Some(time)) =
            (symbol.filter(|s| !s.is_empty()), time.as_deref().and_then(parse_timestamp_ns))
        else {
            counts.bad_lines += 1;
            continue;
        };
        if !symbols.contains_key(&symbol) && symbols.len() >= MAX_SYMBOLS {
            counts.untracked_lines += 1;
            continue;
        }
        counts.trade_lines += 1;
        let entry = symbols.entry(symbol).or_insert((time, Vec::new()));
        entry.0 = entry.0.max(time);
        if let Some(u) = uuid.filter(|u| !u.is_empty() && u.len() <= MAX_TRADE_ID_LEN) {
            entry.1.push((u, time));
        }
    }
    assert_eq!(scan.counts(), counts);
    assert_eq!(scan.len(), symbols.len());
    let got = scan.into_last_trades();
    let want: Vec<(String, i64, Ids)> = symbols
        .into_iter()
        .map(|(symbol, (last, mut ids))| {
            ids.retain(|&(_, t)| t >= last.saturating_sub(KEEP_NS));
            ids.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
            let newest = ids.split_off(ids.len().saturating_sub(CAP));
            (symbol, last, newest)
        })
        .collect();
    assert_eq!(got.len(), want.len());
    for ((s, t), (ws, wlast, wids)) in got.iter().zip(&want) {
        assert_eq!((s, t.time_ns, &t.ids), (ws, *wlast, wids), "{:?}", String::from_utf8_lossy(data));
    }
});
