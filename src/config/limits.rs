//! Every limit of the program in one table: the range each command-line limit may take (with its
//! default and the reason), the fixed bounds of the pipeline's queues, sets and buffers, and the
//! bounds derived from both. The relations between limits are checked here, once, at start-up,
//! so that a combination that would break a guarantee is refused with a clear message rather
//! than discovered at run time.
//!
//! The relation that matters most today: a symbol's trade-id memory must cover the largest REST
//! page a recovery can return, or the overlap of that page with what the stream already wrote
//! would be written twice. The memory is therefore derived from `--recovery-trades-limit`, never
//! set beside it, and its worst case is bounded by `TRADE_ID_MEMORY_MAX_BYTES`.

use std::time::Duration;

use crate::config::ConfigError;

/// Messages per worker channel; the original incident's 500, kept as the default until the
/// memory budget of the next stage replaces it.
pub const QUEUE_CAPACITY_DEFAULT: usize = 500;
/// How long the reader waits for room in a full channel before it sheds, in milliseconds.
pub const QUEUE_WAIT_MS_DEFAULT: u64 = 50;
pub const RECOVERY_MAX_PENDING_DEFAULT: usize = 4096;
pub const RECOVERY_MAX_ATTEMPTS_DEFAULT: u32 = 5;
/// Trades per REST recovery page: 100 cost one credit.
pub const RECOVERY_TRADES_LIMIT_DEFAULT: u32 = 100;

/// Largest WebSocket message accepted. CoinAPI messages are a few KiB at most (a book50 snapshot
/// is ~5 KiB); 4 MiB leaves room for anything legitimate while refusing a 64 MiB allocation.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// How often the reader's blocking read returns to check for shutdown and staleness.
pub const READ_TICK: Duration = Duration::from_millis(100);
/// Upper bound on the symbols one process subscribes to and on each worker's symbol table.
pub const MAX_SYMBOLS: usize = 10_000;
/// Trade ids remembered per symbol at least: more than one default REST page (100) plus the
/// stream's recent duplicates (at 100 trades/s, ~2.5 s of exchange repeats).
pub const TRADE_IDS_PER_SYMBOL_MIN: usize = 256;
/// Memory one remembered trade id costs, measured: a `u128` in the FIFO plus its hash-set slot
/// (~16 + ~24 bytes at the set's load factor), rounded up.
pub const TRADE_ID_BYTES: usize = 48;
/// Ceiling on the worst-case trade-id memory of the whole process (every tracked symbol's memory
/// full, in every worker). Memory is taken only as trades arrive; this bounds the worst case.
pub const TRADE_ID_MEMORY_MAX_BYTES: usize = 1 << 30;

/// An integer command-line limit: its flag, inclusive range, and what the default is for.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub flag: &'static str,
    pub min: u64,
    pub max: u64,
    pub fix: &'static str,
}

/// The integer limits of the command line, checked by `check`.
pub const RANGES: &[Range] = &[
    Range { flag: "--workers", min: 1, max: 256, fix: "omit it to use one worker per core" },
    Range {
        flag: "--queue-capacity",
        min: 1,
        max: 1_000_000,
        fix: "it is the per-worker channel size in messages; the default is 500",
    },
    Range { flag: "--queue-wait-ms", min: 0, max: 10_000, fix: "a long wait stalls the socket; the default is 50" },
    Range { flag: "--recovery-max-pending", min: 1, max: 1_000_000, fix: "the default is 4096" },
    Range { flag: "--recovery-max-attempts", min: 1, max: 100, fix: "the default is 5" },
    Range { flag: "--recovery-trades-limit", min: 1, max: 100_000, fix: "the default is 100 (one credit)" },
];

/// Checks `value` against the range declared for `flag`.
pub fn check(flag: &'static str, value: u64) -> Result<u64, ConfigError> {
    let range = RANGES.iter().find(|r| r.flag == flag).unwrap_or_else(|| panic!("no range declared for {flag}"));
    if value < range.min || value > range.max {
        return Err(ConfigError {
            flag,
            problem: format!("must be between {} and {} (got {value})", range.min, range.max),
            fix: range.fix.to_string(),
        });
    }
    Ok(value)
}

/// A duration flag in seconds, within `[min, max]`.
pub fn seconds(flag: &'static str, value: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if value.is_finite() && value >= min && value <= max {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ConfigError {
            flag,
            problem: format!("must be between {min} and {max} seconds (got {value})"),
            fix: "see --help for the default".to_string(),
        })
    }
}

/// The bounds derived from the command line: what each worker's symbol table may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries per worker's symbol table: the exact symbols subscribed to (a worker can own all
    /// of them), or `MAX_SYMBOLS` when a prefix filter makes the set unknown.
    pub symbols_per_worker: usize,
    /// Trade ids remembered per symbol: covers the largest REST page.
    pub trade_ids_per_symbol: usize,
}

impl Limits {
    /// Derives the bounds and checks their relations. `exact_symbols` is `Some(n)` when every
    /// filter is an exact symbol, `None` with a prefix filter.
    pub fn derive(exact_symbols: Option<usize>, recovery_trades_limit: u32) -> Result<Limits, ConfigError> {
        let symbols_per_worker = exact_symbols.map_or(MAX_SYMBOLS, |n| n.clamp(1, MAX_SYMBOLS));
        let page = recovery_trades_limit as usize;
        let limits = Limits { symbols_per_worker, trade_ids_per_symbol: page.max(TRADE_IDS_PER_SYMBOL_MIN) };
        let worst = limits.trade_id_memory_bytes();
        if worst > TRADE_ID_MEMORY_MAX_BYTES {
            let most = TRADE_ID_MEMORY_MAX_BYTES / (symbols_per_worker * TRADE_ID_BYTES);
            return Err(ConfigError {
                flag: "--recovery-trades-limit",
                problem: format!(
                    "{page} trades per page needs {page} remembered trade ids per symbol: up to {} MiB for {} symbols, \
                     above the {} MiB ceiling",
                    worst >> 20,
                    symbols_per_worker,
                    TRADE_ID_MEMORY_MAX_BYTES >> 20
                ),
                fix: format!("use at most {most}, or subscribe to fewer (exact) symbols"),
            });
        }
        assert!(limits.trade_ids_per_symbol >= page, "the trade-id memory must cover a REST page");
        Ok(limits)
    }

    /// Worst-case trade-id memory of the process: every symbol's memory full. A symbol belongs to
    /// one worker, so the symbols of all workers together are bounded by `symbols_per_worker`
    /// (exact lists) or `MAX_SYMBOLS` (prefix filters).
    pub fn trade_id_memory_bytes(&self) -> usize {
        self.symbols_per_worker * self.trade_ids_per_symbol * TRADE_ID_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves bug 4 cannot come back: whatever page size is accepted, the trade-id memory covers
    /// it, and a page too large for the memory ceiling is refused, naming the flag.
    #[test]
    fn the_trade_id_memory_always_covers_the_largest_page() {
        for page in [1u32, 100, 256, 257, 1000, 20_000, 100_000] {
            for exact in [Some(1), Some(5), Some(2_000), None] {
                match Limits::derive(exact, page) {
                    Ok(l) => {
                        assert!(l.trade_ids_per_symbol >= page as usize, "{page} {exact:?}");
                        assert!(l.trade_id_memory_bytes() <= TRADE_ID_MEMORY_MAX_BYTES);
                    }
                    Err(e) => {
                        assert_eq!(e.flag, "--recovery-trades-limit");
                        assert!(e.fix.contains("at most"), "{e}");
                        assert!(exact.is_none_or(|n| n * page as usize * TRADE_ID_BYTES > TRADE_ID_MEMORY_MAX_BYTES));
                    }
                }
            }
        }
        assert_eq!(Limits::derive(Some(2), 1000).map(|l| l.trade_ids_per_symbol), Ok(1000));
        assert_eq!(Limits::derive(Some(2), 100).map(|l| l.trade_ids_per_symbol), Ok(TRADE_IDS_PER_SYMBOL_MIN));
        assert!(Limits::derive(None, 100_000).is_err(), "a prefix filter with 100,000-trade pages could hold 48 GB");
        assert!(Limits::derive(Some(5), 100_000).is_ok());
    }

    #[test]
    fn every_range_is_checked_by_one_rule() {
        for r in RANGES {
            assert!(check(r.flag, r.min).is_ok() && check(r.flag, r.max).is_ok(), "{}", r.flag);
            assert!(check(r.flag, r.max + 1).is_err(), "{}", r.flag);
            if r.min > 0 {
                let e = check(r.flag, r.min - 1).expect_err("below the range");
                assert_eq!(e.flag, r.flag);
                assert!(e.problem.contains(&format!("got {}", r.min - 1)), "{e}");
            }
        }
    }
}
