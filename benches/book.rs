//! Kept order books (`--book-output top`): the cost per `book` message of applying a delta to an
//! exact book and producing its `book_top` line, at depth 10 and 50 on books of 100 and 1,000
//! levels per side, through the worker's real path (decode, sequence, level parse, apply, top-N
//! render and line); the apply + render alone; and the memory one kept level costs.
//! Run: `cargo bench --bench book` (or `./run.sh bench`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tungstenite::Utf8Bytes;

use coinfeed::config::{BookConfig, BookOutput};
use coinfeed::lanes::{Frame, WorkerInput};
use coinfeed::metrics::Metrics;
use coinfeed::worker::book::{BookState, Entry, L2Book};
use coinfeed::worker::symbols::TableLimits;
use coinfeed::worker::Worker;

const LIMITS: TableLimits = TableLimits { symbols_max: 100, trade_ids_per_symbol: 256 };
const RING: usize = 1024;

/// A price with 29 significant digits, `i` units from the middle (bids below, asks above).
fn price(i: usize, ask: bool) -> String {
    let units = if ask { 6_700_000 + i } else { 6_700_000 - 1 - i };
    format!("{}.{:02}375950596670472379501527", units / 100, units % 100)
}

fn levels(n: usize, ask: bool) -> String {
    (0..n).map(|i| format!(r#"{{"price":{},"size":0.{:08}}}"#, price(i, ask), 1 + i)).collect::<Vec<_>>().join(",")
}

fn frame(text: String) -> Frame {
    Frame { text: Utf8Bytes::from(text), recv_unix_ns: 1_795_848_000_123_456_700, generation: 1 }
}

fn message(seq: usize, snapshot: bool, bids: &str, asks: &str) -> String {
    format!(
        r#"{{"type":"book","symbol_id":"BINANCE_SPOT_BTC_USDT","sequence":{seq},"time_exchange":"2026-11-28T06:44:26.1230000Z","time_coinapi":"2026-11-28T06:44:26.1763342Z","is_snapshot":{snapshot},"asks":[{asks}],"bids":[{bids}]}}"#
    )
}

/// Deltas that each change one level inside the top 5 of a side (so every one writes a line)
/// and one deep level, as a busy book does.
fn deltas(n_levels: usize) -> Vec<Frame> {
    (0..RING)
        .map(|i| {
            let top = format!(r#"{{"price":{},"size":0.{:08}}}"#, price(i % 5, i % 2 == 0), 100 + i);
            let deep = format!(r#"{{"price":{},"size":0.{:08}}}"#, price(n_levels - 1 - i % 7, i % 2 == 1), 200 + i);
            let (bids, asks) = if i % 2 == 0 { (deep, top) } else { (top, deep) };
            frame(message(2 + i, false, &bids, &asks))
        })
        .collect()
}

fn delta_and_top_line(c: &mut Criterion) {
    let mut group = c.benchmark_group("book_delta_top_line");
    group.throughput(Throughput::Elements(1));
    for n_levels in [100, 1000] {
        for depth in [10, 50] {
            let metrics = Metrics::new(1);
            let books = BookConfig { output: BookOutput::Top, depth, ..BookConfig::default() };
            let mut worker = Worker::new(0, LIMITS, &metrics).with_books(books);
            worker.handle(WorkerInput::Frame(frame(message(
                1,
                true,
                &levels(n_levels, false),
                &levels(n_levels, true),
            ))));
            worker.clear_batch();
            let ring = deltas(n_levels);
            let mut next = 0usize;
            group.bench_function(format!("levels_{n_levels}_depth_{depth}"), |b| {
                b.iter(|| {
                    worker.handle(WorkerInput::Frame(ring[next].clone()));
                    next = (next + 1) % RING;
                    if next % 64 == 0 {
                        worker.clear_batch();
                    }
                })
            });
            let s = metrics.snapshot();
            assert_eq!(s.book_rejected, 0);
            assert!(s.book_top_lines == 0 && s.book_folded > 0, "lines stay in the batch; messages folded");
        }
    }
    group.finish();
}

fn apply_and_render(c: &mut Criterion) {
    let mut group = c.benchmark_group("book_apply_render");
    group.throughput(Throughput::Elements(1));
    let n_levels = 1000;
    let (bid_texts, ask_texts): (Vec<String>, Vec<String>) =
        (0..n_levels).map(|i| (price(i, false), price(i, true))).unzip();
    let bids: Vec<Entry> = bid_texts.iter().map(|p| Entry { price: p, size: "1.5" }).collect();
    let asks: Vec<Entry> = ask_texts.iter().map(|p| Entry { price: p, size: "1.5" }).collect();
    for depth in [10, 50] {
        let mut state = BookState::default();
        let mut trimmed = 0;
        state.apply(true, &bids, &asks, depth, 1000, &mut trimmed);
        let sizes = ["0.1", "0.2"];
        let mut i = 0usize;
        group.bench_function(format!("levels_1000_depth_{depth}"), |b| {
            b.iter(|| {
                i += 1;
                let delta = [Entry { price: &bid_texts[i % 5], size: sizes[i % 2] }];
                black_box(state.apply(false, black_box(&delta), &[], depth, 1000, &mut trimmed));
                state.written(0);
            })
        });
    }
    group.finish();
}

/// Prints the resident memory one kept level costs (B-tree nodes, their slack, the texts'
/// allocation and the allocator's overhead): 200 books of 100, then of 1,000 levels per side.
/// Runs first, before the other groups' allocations can be reused.
fn bytes_per_level(_c: &mut Criterion) {
    const BOOKS: usize = 200;
    for n_levels in [100, 1000] {
        let (bid_texts, ask_texts): (Vec<String>, Vec<String>) =
            (0..n_levels).map(|i| (price(i, false), price(i, true))).unzip();
        let bids: Vec<Entry> = bid_texts.iter().map(|p| Entry { price: p, size: "0.01895" }).collect();
        let asks: Vec<Entry> = ask_texts.iter().map(|p| Entry { price: p, size: "0.01895" }).collect();
        let mut books: Vec<L2Book> = Vec::with_capacity(BOOKS);
        let rss = || coinfeed::metrics::proc::memory_kib().map_or(0, |(rss, _)| rss);
        let before = rss();
        for _ in 0..BOOKS {
            let mut b = L2Book::default();
            b.apply(true, &bids, &asks, 10, 1000).expect("a valid snapshot");
            books.push(b);
        }
        let grown = rss().saturating_sub(before);
        let levels = BOOKS * 2 * n_levels;
        println!(
            "book memory: {BOOKS} books of {n_levels} levels per side (29-digit prices): resident memory +{grown} KiB, \
             {:.0} bytes per level",
            (grown * 1024) as f64 / levels as f64
        );
        black_box(&books);
    }
}

criterion_group!(benches, bytes_per_level, delta_and_top_line, apply_and_render);
criterion_main!(benches);
