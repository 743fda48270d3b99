//! The ingester's raw command-line arguments, exactly as typed (clap derive). `Config::from_args`
//! validates them; nothing else reads them. The binary flattens `RunArgs` into its command line
//! beside the `sim` subcommand.

use std::path::PathBuf;

use clap::Parser;

use crate::config::limits::*;

/// What `book` subscriptions write (`--book-output`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookOutput {
    /// CoinAPI's `book` messages as they come.
    Raw,
    /// `book_top` lines of the kept book only.
    Top,
    /// Both.
    Both,
}

/// Raw arguments of the ingester, exactly as typed; `Config::from_args` checks them. The binary
/// flattens these into its command line (beside the `sim` subcommand); tests and benches parse
/// them directly with `RunArgs::try_parse_from`.
#[derive(Parser, Debug)]
#[command(name = "coinfeed")]
pub struct RunArgs {
    /// Comma-separated CoinAPI symbol ids, matched exactly (e.g. BITSTAMP_SPOT_BTC_USD). End one
    /// with `*` to subscribe to every symbol starting with that prefix (e.g. BITSTAMP_SPOT_*).
    /// Required unless --sim (which defaults to the simulator's five symbols).
    #[arg(long, value_name = "LIST")]
    pub symbols: Option<String>,

    /// Comma-separated data types: trade, quote, book, book5, book20, book50, book_l3, ohlcv, exrate.
    #[arg(long, value_name = "LIST", default_value = "trade,quote")]
    pub types: String,

    /// CoinAPI WebSocket endpoint (wss://, or ws:// to a loopback host).
    #[arg(long, value_name = "URL", default_value = "wss://ws.coinapi.io/v1/", conflicts_with = "sim")]
    pub ws_url: String,

    /// CoinAPI REST endpoint, used for gap recovery.
    #[arg(long, value_name = "URL", default_value = "https://rest.coinapi.io", conflicts_with = "sim")]
    pub rest_url: String,

    /// How long the reader may wait for room in a full buffer or queue before it starts dropping
    /// messages, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = QUEUE_WAIT_MS_DEFAULT)]
    pub queue_wait_ms: u64,

    /// Maximum REST recovery requests per second (CoinAPI rate limits and credits).
    #[arg(long, value_name = "X", default_value_t = RECOVERY_RPS_DEFAULT)]
    pub recovery_rps: f64,

    /// Most symbol/data-type pairs waiting for REST recovery at once; more gaps are counted and
    /// logged, not queued.
    #[arg(long, value_name = "N", default_value_t = RECOVERY_MAX_PENDING_DEFAULT)]
    pub recovery_max_pending: usize,

    /// REST requests per recovery key that may fail (5xx, timeout, bad body) before it is given up.
    #[arg(long, value_name = "N", default_value_t = RECOVERY_MAX_ATTEMPTS_DEFAULT)]
    pub recovery_max_attempts: u32,

    /// Seconds one REST request may take in all (connect, send, read).
    #[arg(long, value_name = "SECS", default_value_t = RECOVERY_TIMEOUT_S_DEFAULT)]
    pub recovery_timeout: f64,

    /// Trades asked for per page of a trade recovery (`limit` of /v1/trades/{symbol}/history;
    /// every 100 cost one credit).
    #[arg(long, value_name = "N", default_value_t = RECOVERY_TRADES_LIMIT_DEFAULT)]
    pub recovery_trades_limit: u32,

    /// Most REST credits recovery may spend per rolling 24 hours [default: no cap].
    #[arg(long, value_name = "CREDITS")]
    pub recovery_budget: Option<u64>,

    /// Seconds allowed for DNS, TCP, TLS and the WebSocket upgrade together.
    #[arg(long, value_name = "SECS", default_value_t = CONNECT_TIMEOUT_S_DEFAULT)]
    pub connect_timeout: f64,

    /// Seconds without any message (data or heartbeat) after which the connection is declared
    /// dead and replaced.
    #[arg(long, value_name = "SECS", default_value_t = STALE_TIMEOUT_S_DEFAULT)]
    pub stale_timeout: f64,

    /// Longest wait between reconnection attempts, in seconds (exponential backoff with jitter).
    #[arg(long, value_name = "SECS", default_value_t = BACKOFF_MAX_S_DEFAULT)]
    pub backoff_max: f64,

    /// Run against the built-in CoinAPI simulator on 127.0.0.1 instead of CoinAPI (no key needed).
    #[arg(long)]
    pub sim: bool,

    /// Simulator only: data messages per second it sends (0 = as fast as possible).
    #[arg(long, value_name = "N", default_value_t = 100, requires = "sim")]
    pub sim_rate: u64,

    /// Allow an unencrypted ws:// URL to a host that is not loopback (the API key would travel in
    /// clear text).
    #[arg(long)]
    pub allow_insecure_ws: bool,

    /// Trust exactly the CA certificates in this PEM file (one or more), instead of the built-in
    /// web roots, for wss:// and https:// alike: a private CA or a TLS-intercepting proxy. To
    /// trust both, give a bundle that holds both (e.g. /etc/ssl/certs/ca-certificates.crt plus
    /// yours) [default: the built-in web roots].
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// Also keep every raw frame read from the WebSocket, with its receive time and connection,
    /// in FILE (a compact, versioned, append-only recording; rotated by --rotate like the
    /// output), for `coinfeed replay`. The recorder never slows the reader: a frame it cannot
    /// queue is counted (record_dropped), not waited for.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// Keep only this shard's symbols: `i/n` splits the --symbols list into n shards by Kafka's
    /// murmur2 hash of each symbol id (the same on every host), and this process takes shard i
    /// (from 0). Needs an exact list (no prefix filters).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,

    /// At start, find each symbol's last trade in what this shard already wrote (the newest
    /// files of --output-dir, or the end of every partition of --kafka-topic) and backfill REST
    /// history from there to the first streamed trade, so a restart leaves neither a hole nor a
    /// duplicate.
    #[arg(long)]
    pub resume: bool,

    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// Compression of the files under --output-dir.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressArg {
    /// Zstandard (level 3): `.ndjson.zst`.
    Zstd,
    /// gzip: `.ndjson.gz`.
    Gzip,
}

/// The flags of everything after the socket: workers, buffer, books, output, metrics, logging.
/// Shared by a live run and `coinfeed replay`.
#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    /// Worker threads that decode and format messages [default: available cores].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Memory, in MiB, that messages waiting for the workers may take (all workers together).
    /// A stall downstream is absorbed within it; only when it is full does the reader drop (and
    /// count) messages rather than stop reading the socket.
    #[arg(long, value_name = "N", default_value_t = BUFFER_MIB_DEFAULT)]
    pub buffer_mib: u64,

    /// Optional cap on each worker's queue, in messages, on top of --buffer-mib [default: none].
    #[arg(long, value_name = "N")]
    pub queue_capacity: Option<usize>,

    /// What `book` subscriptions write: `raw` CoinAPI's messages as they come (snapshot, then
    /// deltas), `top` a `book_top` line of each symbol's exact book whenever its top
    /// --book-depth levels change, or `both`.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = BookOutput::Raw)]
    pub book_output: BookOutput,

    /// Levels per side in each `book_top` line.
    #[arg(long, value_name = "N", default_value_t = BOOK_DEPTH_DEFAULT)]
    pub book_depth: u64,

    /// Shortest time between two `book_top` lines of one symbol, in milliseconds; the newest
    /// state is written when the interval ends (0 = a line for every change).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub book_interval_ms: u64,

    /// Levels kept per side of each book; the worst beyond it are trimmed (and counted).
    #[arg(long, value_name = "N", default_value_t = BOOK_MAX_LEVELS_DEFAULT)]
    pub book_max_levels: u64,

    /// Books kept at once by the whole process; a further `book` symbol gets a `book_refused`
    /// line and its raw messages only.
    #[arg(long, value_name = "N", default_value_t = BOOK_MAX_BOOKS_DEFAULT)]
    pub book_max_books: u64,

    /// Write the output into files in DIR instead of stdout: DIR/coinfeed-<UTC start>.ndjson,
    /// named `.part` while written and renamed once complete (after fsync), so a job that
    /// picks up files only ever sees finished ones.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Start a new file every period, on UTC boundaries (30s, 15m, 1h, 1d), or once a file
    /// holds a size (64KiB, 512MiB, 1GiB; compressed bytes with --compress). Applies to
    /// --output-dir and --record [default: one file per run].
    #[arg(long, value_name = "WHEN")]
    pub rotate: Option<String>,

    /// Compress the files under --output-dir.
    #[arg(long, value_name = "CODEC", value_enum, requires = "output_dir")]
    pub compress: Option<CompressArg>,

    /// Write each line as one record into Kafka instead of stdout: a comma-separated list of
    /// bootstrap brokers (host:port). Records are keyed by symbol_id, idempotent, acks=all, zstd.
    /// Needs --kafka-topic and a coinfeed built with the `kafka` feature.
    #[arg(long, value_name = "LIST", requires = "kafka_topic", conflicts_with = "output_dir")]
    pub kafka_brokers: Option<String>,

    /// The Kafka topic the records go to (it must exist).
    #[arg(long, value_name = "NAME", requires = "kafka_brokers")]
    pub kafka_topic: Option<String>,

    /// A librdkafka producer setting, KEY=VALUE (repeatable), e.g. --kafka-opt
    /// security.protocol=ssl; it overrides coinfeed's own settings.
    #[arg(long, value_name = "KEY=VALUE", requires = "kafka_brokers")]
    pub kafka_opt: Vec<String>,

    /// Stop after N market-data lines (trade, quote, book, ohlcv, ..., REST-recovered and
    /// book_top lines; not control lines) are written, and exit 0.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,

    /// Serve Prometheus metrics (GET /metrics) and a health check (GET /health: 200 when
    /// connected and fresh, 503 with the reason otherwise) on ADDR, e.g. 127.0.0.1:9899.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Allow --metrics-listen on an address that is not loopback (the page is served to anyone
    /// who can reach it).
    #[arg(long, requires = "metrics_listen")]
    pub allow_remote_metrics: bool,

    /// Seconds between health lines on stderr; 0 turns them off.
    #[arg(long, value_name = "SECS", default_value_t = HEALTH_INTERVAL_S_DEFAULT)]
    pub health_interval: f64,

    /// Seconds a graceful stop may take (drain and flush) before coinfeed gives up and exits 1.
    #[arg(long, value_name = "SECS", default_value_t = SHUTDOWN_TIMEOUT_S_DEFAULT)]
    pub shutdown_timeout: f64,

    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

/// `coinfeed replay`: the pipeline run from recordings instead of a socket.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Recording files written by --record, replayed in the order given.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,

    /// Replay at X times the recorded pace (2 = twice as fast).
    #[arg(long, value_name = "X", default_value_t = 1.0, conflicts_with = "max")]
    pub speed: f64,

    /// Replay as fast as the pipeline goes (for benchmarks and quick re-runs).
    #[arg(long)]
    pub max: bool,

    #[command(flatten)]
    pub pipeline: PipelineArgs,
}
