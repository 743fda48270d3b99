//! Every limit of the program in one place: the default and range of each command-line limit
//! (the flags in `cli.rs` take their defaults from here), the fixed bounds of the pipeline's
//! queues, sets, buffers and waits, and the bounds derived from both. The relations between
//! limits are checked here, once, at start-up, so that a combination that would break a
//! guarantee is refused with a clear message rather than discovered at run time.
//!
//! The relation that matters today: a symbol's trade-id memory must cover the largest REST page a
//! recovery can return, or the overlap of that page with what the stream already wrote would be
//! written twice. The memory is therefore derived from `--recovery-trades-limit`, never set
//! beside it, and its worst case over every symbol the workers can track is bounded by
//! `TRADE_ID_MEMORY_MAX_BYTES`.
//!
//! The parameters of the two pure policies (reconnect backoff in `ingest/backoff.rs`, REST retry
//! and 429 waits in `recovery/queue.rs`) stay with them, as the documented defaults of the
//! policy structs their tests drive.

use std::time::Duration;

use crate::config::ConfigError;

// ---- Command-line limits: defaults ----

/// The reader's hand-off to the workers, in MiB of queued frames across all workers: about
/// 200,000 CoinAPI messages, the order of the 131,072 CoinAPI buffers for a slow reader, so an
/// ordinary stall downstream (a disk flush, a consumer's GC pause) is absorbed without a drop.
pub const BUFFER_MIB_DEFAULT: u64 = 64;
/// How long the reader waits for room in a full channel before it sheds, in milliseconds.
pub const QUEUE_WAIT_MS_DEFAULT: u64 = 50;
/// REST recovery requests per second: 100 pending keys drain in ~50 s, and a 10,000-credit day
/// lasts 83 minutes of uninterrupted recovery.
pub const RECOVERY_RPS_DEFAULT: f64 = 2.0;
pub const RECOVERY_MAX_PENDING_DEFAULT: usize = 4096;
pub const RECOVERY_MAX_ATTEMPTS_DEFAULT: u32 = 5;
/// Trades per REST recovery page: 100 cost one credit.
pub const RECOVERY_TRADES_LIMIT_DEFAULT: u32 = 100;
pub const RECOVERY_TIMEOUT_S_DEFAULT: f64 = 10.0;
pub const CONNECT_TIMEOUT_S_DEFAULT: f64 = 10.0;
/// Five heartbeat periods (CoinAPI sends one per second of silence).
pub const STALE_TIMEOUT_S_DEFAULT: f64 = 5.0;
pub const BACKOFF_MAX_S_DEFAULT: f64 = 30.0;
pub const HEALTH_INTERVAL_S_DEFAULT: f64 = 10.0;
pub const SHUTDOWN_TIMEOUT_S_DEFAULT: f64 = 5.0;
/// Levels per side of each `book_top` line.
pub const BOOK_DEPTH_DEFAULT: u64 = 10;
/// Levels kept per side of each book; the worst beyond it are trimmed (and counted).
pub const BOOK_MAX_LEVELS_DEFAULT: u64 = 1_000;
/// Books kept by the whole process; a `book` symbol beyond it is refused (a control line, counted).
pub const BOOK_MAX_BOOKS_DEFAULT: u64 = 1_000;
/// Worst-case memory of one kept level: its 24-byte key and 24-byte value in the B-tree (with
/// the nodes' slack) plus the one allocation holding its two number texts. Measured by
/// `cargo bench --bench book` (bytes per level), stated here for the limits table.
pub const BOOK_LEVEL_BYTES: u64 = 128;

/// An integer command-line limit: its flag, inclusive range and default (`None`: computed, e.g.
/// one worker per core), with what the limit is for.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub flag: &'static str,
    pub min: u64,
    pub max: u64,
    pub default: Option<u64>,
    pub why: &'static str,
}

/// The integer limits of the command line, checked by `check`.
pub const RANGES: &[Range] = &[
    Range { flag: "--workers", min: 1, max: 256, default: None, why: "omit it to use one worker per core" },
    Range {
        flag: "--buffer-mib",
        min: 1,
        max: 65_536,
        default: Some(BUFFER_MIB_DEFAULT),
        why: "it is the memory, in MiB, that queued messages may take before the reader sheds",
    },
    Range {
        flag: "--queue-capacity",
        min: 1,
        max: 10_000_000,
        default: None,
        why: "it is an optional cap, in messages, on each worker's queue; omit it to bound by --buffer-mib alone",
    },
    Range {
        flag: "--queue-wait-ms",
        min: 0,
        max: 10_000,
        default: Some(QUEUE_WAIT_MS_DEFAULT),
        why: "a long wait stalls the socket",
    },
    Range {
        flag: "--recovery-max-pending",
        min: 1,
        max: 1_000_000,
        default: Some(RECOVERY_MAX_PENDING_DEFAULT as u64),
        why: "symbol/type pairs waiting for recovery",
    },
    Range {
        flag: "--recovery-max-attempts",
        min: 1,
        max: 100,
        default: Some(RECOVERY_MAX_ATTEMPTS_DEFAULT as u64),
        why: "failed requests per pair before it is given up",
    },
    Range {
        flag: "--recovery-trades-limit",
        min: 1,
        max: 100_000,
        default: Some(RECOVERY_TRADES_LIMIT_DEFAULT as u64),
        why: "100 trades cost one credit",
    },
    Range {
        flag: "--book-depth",
        min: 1,
        max: 1_000,
        default: Some(BOOK_DEPTH_DEFAULT),
        why: "it is the levels per side of each book_top line",
    },
    Range {
        flag: "--book-interval-ms",
        min: 0,
        max: 60_000,
        default: Some(0),
        why: "it is the shortest time between two book_top lines of one symbol (0: every change)",
    },
    Range {
        flag: "--book-max-levels",
        min: 1,
        max: 100_000,
        default: Some(BOOK_MAX_LEVELS_DEFAULT),
        why: "it is the levels kept per side of each book (about 128 bytes each)",
    },
    Range {
        flag: "--book-max-books",
        min: 1,
        max: MAX_SYMBOLS as u64,
        default: Some(BOOK_MAX_BOOKS_DEFAULT),
        why: "it is the books the process keeps at once",
    },
];

/// A duration flag in seconds: its range and default.
#[derive(Debug, Clone, Copy)]
pub struct SecondsRange {
    pub flag: &'static str,
    pub min: f64,
    pub max: f64,
    pub default: f64,
}

/// The duration limits of the command line, checked by `seconds`.
pub const SECONDS: &[SecondsRange] = &[
    SecondsRange { flag: "--recovery-timeout", min: 0.1, max: 300.0, default: RECOVERY_TIMEOUT_S_DEFAULT },
    SecondsRange { flag: "--connect-timeout", min: 0.1, max: 300.0, default: CONNECT_TIMEOUT_S_DEFAULT },
    SecondsRange { flag: "--stale-timeout", min: 0.2, max: 3600.0, default: STALE_TIMEOUT_S_DEFAULT },
    SecondsRange { flag: "--backoff-max", min: 0.1, max: 3600.0, default: BACKOFF_MAX_S_DEFAULT },
    SecondsRange { flag: "--health-interval", min: 0.1, max: 86_400.0, default: HEALTH_INTERVAL_S_DEFAULT },
    SecondsRange { flag: "--shutdown-timeout", min: 0.1, max: 600.0, default: SHUTDOWN_TIMEOUT_S_DEFAULT },
];

/// The most REST requests per second `--recovery-rps` may ask for.
pub const RECOVERY_RPS_MAX: f64 = 100.0;
/// Chunks of encoded frames (64 KiB each, ~230 frames) waiting for the recorder (`--record`):
/// 4 MiB, about a second of a busy feed's frames, a few seconds of a disk's hiccup. Full: the
/// chunk's frames are counted as `record_dropped`, never waited for.
pub const RECORD_QUEUE_CHUNKS: usize = 64;
/// ...and at most this many bytes (a chunk with one 4 MiB frame counts as 64 ordinary ones).
pub const RECORD_QUEUE_BYTES: u64 = 8 << 20;
/// The slowest and fastest paced replay (`--speed`); `--max` has no pace at all.
pub const REPLAY_SPEED_MIN: f64 = 0.001;
pub const REPLAY_SPEED_MAX: f64 = 1_000.0;

// ---- Fixed bounds ----

/// Largest WebSocket message accepted. CoinAPI messages are a few KiB at most (a book50 snapshot
/// is ~5 KiB); 4 MiB leaves room for anything legitimate while refusing a 64 MiB allocation.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// How often the reader's blocking read returns to check for shutdown and staleness.
pub const READ_TICK: Duration = Duration::from_millis(100);
/// Longest single TCP connect attempt: bounds how long a stop request can go unnoticed.
pub const CONNECT_SLICE: Duration = Duration::from_millis(900);
/// Socket write timeout once connected (hello, pongs, close): a peer that stops reading cannot
/// block the reader for longer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The WebSocket read buffer, allocated up front (tungstenite's default, stated).
pub const WS_READ_BUFFER_BYTES: usize = 128 * 1024;
/// Most bytes queued to write on the WebSocket (hello, pongs, close): far above what we send.
pub const WS_WRITE_BUFFER_MAX_BYTES: usize = 1 << 20;
/// A `reconnect` notice without a usable `within_seconds` means CoinAPI's default of 10 s; a
/// longer one than an hour means nothing useful and is capped.
pub const RECONNECT_NOTICE_DEFAULT: Duration = Duration::from_secs(10);
pub const RECONNECT_NOTICE_MAX: Duration = Duration::from_secs(3600);
/// Wait after a 429 on the upgrade that said nothing about how long; a longer `Retry-After`
/// than this is capped.
pub const UPGRADE_429_WAIT_DEFAULT: Duration = Duration::from_secs(10);
pub const UPGRADE_RETRY_AFTER_MAX: Duration = Duration::from_secs(600);
/// The TCP connect of one REST request, within its `--recovery-timeout`.
pub const REST_CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(5);
/// How long a graceful close may wait for the server's close reply.
pub const CLOSE_WAIT: Duration = Duration::from_millis(200);
/// How long a connection line may wait for room in the writer's channel before it is counted lost.
pub const CONTROL_WAIT: Duration = Duration::from_millis(100);
/// Upper bound on the symbols one process subscribes to, and on the symbols tracked with a
/// prefix filter.
pub const MAX_SYMBOLS: usize = 10_000;
/// A producer hands its batch to the writer once it holds this many bytes.
pub const BATCH_BYTES: usize = 32 * 1024;
/// Batches queued for the writer per producer; with `BATCH_BYTES` per batch this bounds the
/// bytes waiting for stdout to a few MiB.
pub const WRITER_QUEUE_PER_PRODUCER: usize = 4;
/// Distinct symbols with their own drop count; more are summed under `(other)`.
pub const DROP_SYMBOLS_MAX: usize = 1_000;
/// How long a recovery result may wait for room in the workers' buffer (or a capped queue) before
/// its page is asked for again later.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(2);
/// Largest REST body accepted. A `latest` page of 100 trades is ~25 KiB; an order book with all
/// levels can reach a few MiB.
pub const REST_BODY_MAX_BYTES: u64 = 8 << 20;
/// Longest non-canonical trade id remembered. Longer ids are treated as new: writing a rare
/// duplicate is better than hashing unbounded strings per message.
pub const MAX_TRADE_ID_LEN: usize = 128;
/// Trade ids remembered per symbol at least: more than one default REST page (100) plus the
/// stream's recent duplicates (at 100 trades/s, ~2.5 s of exchange repeats).
pub const TRADE_IDS_PER_SYMBOL_MIN: usize = 256;
/// Memory one remembered trade id can cost at most: 16 bytes in the FIFO and 8 for its trade time
/// (both sized exactly) plus the hash set sized for twice the ids (so evictions never grow it),
/// whose buckets (16 bytes and a control byte each) round up to a power of two: at most
/// 24 + 2 × 2 × 8/7 × 17 ≈ 102 bytes.
pub const TRADE_ID_BYTES: usize = 104;
/// Ceiling on the worst-case trade-id memory of the whole process (every tracked symbol's memory
/// full). Memory is taken only as trades arrive; this bounds the worst case.
pub const TRADE_ID_MEMORY_MAX_BYTES: usize = 1 << 30;

// ---- Checks ----

/// Checks `value` against the range declared for `flag`.
pub fn check(flag: &'static str, value: u64) -> Result<u64, ConfigError> {
    let range = RANGES.iter().find(|r| r.flag == flag).unwrap_or_else(|| panic!("no range declared for {flag}"));
    if value < range.min || value > range.max {
        let fix = match range.default {
            Some(d) => format!("{}; the default is {d}", range.why),
            None => range.why.to_string(),
        };
        return Err(ConfigError {
            flag,
            problem: format!("must be between {} and {} (got {value})", range.min, range.max),
            fix,
        });
    }
    Ok(value)
}

/// Checks a duration flag in seconds against its declared range.
pub fn seconds(flag: &'static str, value: f64) -> Result<Duration, ConfigError> {
    let range = SECONDS.iter().find(|r| r.flag == flag).unwrap_or_else(|| panic!("no range declared for {flag}"));
    if value.is_finite() && value >= range.min && value <= range.max {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ConfigError {
            flag,
            problem: format!("must be between {} and {} seconds (got {value})", range.min, range.max),
            fix: format!("the default is {}", range.default),
        })
    }
}

/// The bounds derived from the command line: what each worker's symbol table may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries per worker's symbol table: the exact symbols subscribed to (a worker could own
    /// all of them), or with a prefix filter (the set unknown) twice a worker's share of
    /// `MAX_SYMBOLS` (hash routing spreads symbols evenly; twice the share leaves room for any
    /// real imbalance), capped at `MAX_SYMBOLS`: with a prefix filter all workers together track
    /// 10,000 symbols with one worker and about 20,000 with more.
    pub symbols_per_worker: usize,
    /// Symbols all workers together can track.
    pub symbols_total: usize,
    /// Trade ids remembered per symbol: covers the largest REST page.
    pub trade_ids_per_symbol: usize,
}

impl Limits {
    /// Derives the bounds and checks their relations. `exact_symbols` is `Some(n)` when every
    /// filter is an exact symbol, `None` with a prefix filter.
    pub fn derive(
        exact_symbols: Option<usize>,
        n_workers: usize,
        recovery_trades_limit: u32,
    ) -> Result<Limits, ConfigError> {
        let n_workers = n_workers.max(1);
        let symbols_per_worker = match exact_symbols {
            Some(n) => n.clamp(1, MAX_SYMBOLS),
            None => (2 * MAX_SYMBOLS).div_ceil(n_workers).min(MAX_SYMBOLS),
        };
        // Each table fills on its own (a server could send symbols nobody subscribed to), so
        // the worst case counts every table full.
        let symbols_total = symbols_per_worker * n_workers;
        let page = recovery_trades_limit as usize;
        let limits =
            Limits { symbols_per_worker, symbols_total, trade_ids_per_symbol: page.max(TRADE_IDS_PER_SYMBOL_MIN) };
        let worst = limits.trade_id_memory_bytes();
        if worst > TRADE_ID_MEMORY_MAX_BYTES {
            let most = TRADE_ID_MEMORY_MAX_BYTES / (symbols_total * TRADE_ID_BYTES);
            return Err(ConfigError {
                flag: "--recovery-trades-limit",
                problem: format!(
                    "{page} trades per page needs {page} remembered trade ids per symbol: up to {} MiB for {} symbols, \
                     above the {} MiB ceiling",
                    worst >> 20,
                    symbols_total,
                    TRADE_ID_MEMORY_MAX_BYTES >> 20
                ),
                fix: format!("use at most {most}, or subscribe to fewer (exact) symbols"),
            });
        }
        assert!(limits.trade_ids_per_symbol >= page, "the trade-id memory must cover a REST page");
        Ok(limits)
    }

    /// Worst-case trade-id memory of the process: every trackable symbol's memory full.
    pub fn trade_id_memory_bytes(&self) -> usize {
        self.symbols_total * self.trade_ids_per_symbol * TRADE_ID_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves bug 4 cannot come back: whatever page size is accepted, the trade-id memory covers
    /// it and the worst case stays under the ceiling; a page too large for it is refused, naming
    /// the flag.
    #[test]
    fn the_trade_id_memory_always_covers_the_largest_page() {
        for page in [1u32, 100, 256, 257, 1000, 20_000, 100_000] {
            for exact in [Some(1), Some(5), Some(2_000), None] {
                for n_workers in [1, 2, 16, 256] {
                    match Limits::derive(exact, n_workers, page) {
                        Ok(l) => {
                            assert!(l.trade_ids_per_symbol >= page as usize, "{page} {exact:?}");
                            assert!(l.trade_id_memory_bytes() <= TRADE_ID_MEMORY_MAX_BYTES);
                            if exact.is_none() {
                                assert!(l.symbols_total <= 2 * MAX_SYMBOLS + n_workers);
                            }
                        }
                        Err(e) => {
                            assert_eq!(e.flag, "--recovery-trades-limit");
                            assert!(e.fix.contains("at most"), "{e}");
                        }
                    }
                }
            }
        }
        assert_eq!(Limits::derive(Some(2), 2, 1000).map(|l| l.trade_ids_per_symbol), Ok(1000));
        assert_eq!(Limits::derive(Some(2), 2, 100).map(|l| l.trade_ids_per_symbol), Ok(TRADE_IDS_PER_SYMBOL_MIN));
        assert!(
            Limits::derive(None, 2, 100_000).is_err(),
            "a prefix filter with 100,000-trade pages could hold 100+ GB"
        );
        assert!(Limits::derive(Some(5), 2, 100_000).is_ok());
        assert_eq!(Limits::derive(Some(7), 3, 100).map(|l| l.symbols_total), Ok(21), "every table full");
        // The default worst case with a prefix filter: about 20,000 symbols × 256 ids, whatever
        // the worker count.
        for n in [1, 2, 3, 16] {
            let l = Limits::derive(None, n, 100).expect("defaults are valid");
            assert!(l.trade_id_memory_bytes() <= 20_010 * 256 * TRADE_ID_BYTES, "{n}: {l:?}");
        }
    }

    #[test]
    fn every_range_is_checked_by_one_rule() {
        for r in RANGES {
            assert!(check(r.flag, r.min).is_ok() && check(r.flag, r.max).is_ok(), "{}", r.flag);
            assert!(check(r.flag, r.max + 1).is_err(), "{}", r.flag);
            if let Some(d) = r.default {
                assert!(check(r.flag, d).is_ok(), "{}: the default is in range", r.flag);
            }
            if r.min > 0 {
                let e = check(r.flag, r.min - 1).expect_err("below the range");
                assert_eq!(e.flag, r.flag);
                assert!(e.problem.contains(&format!("got {}", r.min - 1)), "{e}");
            }
        }
        for r in SECONDS {
            assert!(seconds(r.flag, r.default).is_ok(), "{}: the default is in range", r.flag);
            assert!(seconds(r.flag, r.max * 2.0).is_err() && seconds(r.flag, f64::NAN).is_err(), "{}", r.flag);
        }
    }
}
