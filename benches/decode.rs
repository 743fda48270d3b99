//! Per-message costs on the hot path: the reader's scan and routing, the worker's decode +
//! output-line formatting per message type on realistic frames with long decimals, and the
//! per-symbol state (sequence tracking, trade de-duplication).
//! Run: `cargo bench --bench decode` (or `./run.sh bench`). Reports time and bytes per message.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tungstenite::Utf8Bytes;

use coinfeed::lanes::{self, Frame, WorkerInput};
use coinfeed::metrics::Metrics;
use coinfeed::output::ndjson::{self, Source, TimestampFormatter};
use coinfeed::wire::{self, DataType};
use coinfeed::worker::dedup::RecentIds;
use coinfeed::worker::symbols::{SymbolTable, TableLimits};
use coinfeed::worker::Worker;

/// The bounds of a prefix subscription on two workers with the default 100-trade pages.
const LIMITS: TableLimits = TableLimits { symbols_max: 10_000, trade_ids_per_symbol: 256 };

const TRADE: &str = r#"{"type":"trade","symbol_id":"BITSTAMP_SPOT_BTC_USD","sequence":2323346,"time_exchange":"2026-11-28T06:44:26.1230000Z","time_coinapi":"2026-11-28T06:44:26.1763342Z","uuid":"770C7A3B-7258-4441-8182-83740F3E2457","price":91234.123456789,"size":0.0189885151556305438646080756,"taker_side":"BUY"}"#;
const QUOTE: &str = r#"{"type":"quote","symbol_id":"COINBASE_SPOT_ETH_USD","sequence":99887766,"time_exchange":"2026-11-28T06:44:26.1230000Z","time_coinapi":"2026-11-28T06:44:26.1763342Z","ask_price":3012.450000000,"ask_size":12.000000000000000001,"bid_price":3012.440000000,"bid_size":0.0000000100000000000000000001}"#;
const OHLCV: &str = r#"{"type":"ohlcv","symbol_id":"BITSTAMP_SPOT_BTC_USD","sequence":12,"period_id":"1MIN","time_period_start":"2026-11-28T06:44:00.0000000Z","time_period_end":"2026-11-28T06:45:00.0000000Z","time_open":"2026-11-28T06:44:00.1230000Z","time_close":"2026-11-28T06:44:59.9870000Z","price_open":91230.1,"price_high":91240.123456789,"price_low":91220.000000001,"price_close":91234.123456789,"volume_traded":12.0189885151556305438646080756,"trades_count":214}"#;

fn book20() -> String {
    let side = |base: f64, step: f64| -> String {
        (0..20)
            .map(|i| {
                format!(
                    r#"{{"price":{:.9},"size":0.{:028}}}"#,
                    base + step * i as f64,
                    189885151556305438646080756u128 + i
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"type":"book20","symbol_id":"BINANCE_SPOT_SOL_USDT","sequence":4455,"time_exchange":"2026-11-28T06:44:26.1230000Z","time_coinapi":"2026-11-28T06:44:26.1763342Z","asks":[{}],"bids":[{}]}}"#,
        side(142.5, 0.01),
        side(142.49, -0.01)
    )
}

/// A ring of frames of one message type with increasing sequences and distinct uuids, so each
/// iteration goes down the real path (in-order sequence, new trade, a line written).
fn ring(text: &str) -> Vec<Frame> {
    let (head, rest) = text.split_once("\"sequence\":").expect("sequenced frame");
    let tail = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    (0..RING)
        .map(|i| {
            let t =
                format!("{head}\"sequence\":{}{tail}", i + 1).replacen("-83740F3E2457\"", &format!("-{i:012X}\""), 1);
            Frame { text: Utf8Bytes::from(t), recv_unix_ns: 1_795_848_000_123_456_700, generation: 1 }
        })
        .collect()
}

const RING: usize = 1024;

fn decode_and_format(c: &mut Criterion) {
    let book = book20();
    let mut group = c.benchmark_group("decode_format");
    for (name, text) in [("trade", TRADE), ("quote", QUOTE), ("ohlcv", OHLCV), ("book20", book.as_str())] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        let metrics = Metrics::new(1);
        let mut worker = Worker::new(0, LIMITS, &metrics);
        let frames = ring(text);
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                worker.handle(WorkerInput::Frame(frames[next].clone()));
                next = (next + 1) % RING;
                // Like the real worker: the batch buffer is reused until it is large.
                if next % 64 == 0 {
                    worker.clear_batch();
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("format_only");
    group.throughput(Throughput::Bytes(TRADE.len() as u64));
    let mut ts = TimestampFormatter::default();
    let mut out = Vec::with_capacity(1024);
    group.bench_function("trade_line", |b| {
        b.iter(|| {
            out.clear();
            let t = ts.format(black_box(1_795_848_000_123_456_700));
            ndjson::append_line(&mut out, black_box(TRADE.as_bytes()), t, Source::Ws);
            black_box(out.len())
        })
    });
    group.finish();
}

fn reader_side(c: &mut Criterion) {
    let mut group = c.benchmark_group("reader");
    group.throughput(Throughput::Elements(1));
    group.bench_function("classify_scan_route_trade", |b| {
        b.iter(|| {
            let bytes = black_box(TRADE.as_bytes());
            let kind = wire::classify(bytes);
            let symbol = wire::scan_field(bytes, b"symbol_id").unwrap_or(b"");
            (kind, lanes::route(symbol, 2))
        })
    });
    group.finish();
}

fn per_symbol_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_symbol_state");
    group.throughput(Throughput::Elements(1));
    let symbols: Vec<String> = (0..100).map(|i| format!("BINANCE_SPOT_C{i:03}_USDT")).collect();
    let mut table = SymbolTable::new(LIMITS);
    let mut sequence = 0u64;
    let mut i = 0usize;
    group.bench_function("sequence_observe_in_order_100_symbols", |b| {
        b.iter(|| {
            i = (i + 1) % symbols.len();
            if i == 0 {
                sequence += 1;
            }
            black_box(table.observe(1, DataType::Trade, &symbols[i], sequence + 1))
        })
    });
    let uuids: Vec<String> = (0..4096u32).map(|n| format!("770C7A3B-7258-4441-8182-{n:012X}")).collect();
    // One symbol's trade-id memory at the production depth (TRADE_IDS_PER_SYMBOL_MIN).
    let mut ids = RecentIds::default();
    let mut k = 0usize;
    group.bench_function("trade_uuid_insert", |b| {
        b.iter(|| {
            k = (k + 1) % uuids.len();
            black_box(ids.insert(&uuids[k], LIMITS.trade_ids_per_symbol))
        })
    });
    group.finish();
}

criterion_group!(benches, decode_and_format, reader_side, per_symbol_state);
criterion_main!(benches);
