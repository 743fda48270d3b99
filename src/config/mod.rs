//! Configuration, validated once: clap parses raw arguments (`cli::RunArgs`), then
//! `Config::from_args` checks them into a plain `Config` made of one sub-config per component
//! (`ingest`, `pipeline`, `recovery`) plus the derived bounds (`limits::Limits`), which the
//! pipeline receives explicitly. Every limit lives in `limits.rs` with its default, its range
//! and its relations to the others.
//!
//! Nothing is started before validation passes; a bad value yields a `ConfigError` naming the
//! flag, what was wrong and what to do (exit code 2). The API key comes only from the environment
//! and never appears in Debug output.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tungstenite::http::Uri;

use crate::wire::DataType;

pub mod cli;
pub mod limits;
pub mod shard;
pub mod tls;
pub mod units;

pub use cli::{BookOutput, CompressArg, PipelineArgs, ReplayArgs, RunArgs};
use limits::{Limits, MAX_MESSAGE_BYTES, MAX_SYMBOLS, RECOVERY_RPS_MAX, REPLAY_SPEED_MAX, REPLAY_SPEED_MIN};

/// Default symbols when `--sim` is given without `--symbols`: the simulator serves these.
pub const SIM_DEFAULT_SYMBOLS: &str =
    "BITSTAMP_SPOT_BTC_USD,COINBASE_SPOT_ETH_USD,BINANCE_SPOT_SOL_USDT,KRAKEN_SPOT_XRP_EUR,BINANCEFTS_PERP_BTC_USDT";

/// A validated symbol filter as CoinAPI expects it: exact (`SYMBOL$`) or prefix (`PREFIX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolFilter {
    Exact(String),
    Prefix(String),
}

impl SymbolFilter {
    /// The string sent in `subscribe_filter_symbol_id`.
    pub fn wire(&self) -> String {
        match self {
            SymbolFilter::Exact(s) => format!("{s}$"),
            SymbolFilter::Prefix(p) => p.clone(),
        }
    }
}

/// The CoinAPI key. Its Debug and Display never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> ApiKey {
        ApiKey(key)
    }
    /// The secret itself, for the upgrade header, the hello and REST headers only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A parsed `ws://` or `wss://` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsEndpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// The connection: what to subscribe to, where, and its timeouts.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub symbols: Vec<SymbolFilter>,
    pub data_types: Vec<DataType>,
    pub ws: WsEndpoint,
    pub api_key: ApiKey,
    pub connect_timeout: Duration,
    pub stale_timeout: Duration,
    pub backoff_max: Duration,
    pub max_message_bytes: usize,
    /// The CAs a `wss://` server's certificate must chain to (`--ca-file`).
    pub roots: tls::Roots,
}

/// The threads between the socket and stdout.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub n_workers: usize,
    /// Bytes the queued worker inputs may take, all workers together (`--buffer-mib`).
    pub buffer_bytes: u64,
    /// Optional cap on each worker's queue, in messages.
    pub queue_capacity: Option<usize>,
    /// How long the reader waits on a full channel before it sheds.
    pub queue_wait: Duration,
    /// `None` turns the periodic health line off.
    pub health_interval: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub books: BookConfig,
}

/// Order books kept from `book` subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookConfig {
    pub output: BookOutput,
    pub depth: usize,
    /// Shortest time between two `book_top` lines of one symbol, ns (0: every change).
    pub interval_ns: i128,
    pub max_levels: usize,
    pub max_books: usize,
}

impl BookConfig {
    /// Whether books are kept at all (`raw` keeps none: its output is CoinAPI's messages).
    pub fn kept(&self) -> bool {
        self.output != BookOutput::Raw
    }

    /// Whether `book` messages are written as they came.
    pub fn raw(&self) -> bool {
        self.output != BookOutput::Top
    }
}

impl Default for BookConfig {
    fn default() -> BookConfig {
        BookConfig {
            output: BookOutput::Raw,
            depth: limits::BOOK_DEPTH_DEFAULT as usize,
            interval_ns: 0,
            max_levels: limits::BOOK_MAX_LEVELS_DEFAULT as usize,
            max_books: limits::BOOK_MAX_BOOKS_DEFAULT as usize,
        }
    }
}

/// REST gap recovery.
#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    pub rest_url: String,
    pub api_key: ApiKey,
    pub rps: f64,
    pub max_pending: usize,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub trades_limit: u32,
    /// Credits per rolling 24 h; `None` for no cap.
    pub budget: Option<u64>,
    /// A replay: no REST request is made; every gap's recovery fails as `offline`.
    pub offline: bool,
    /// The CAs an `https://` server's certificate must chain to (`--ca-file`).
    pub roots: tls::Roots,
}

/// Everything the pipeline needs, validated. Passed explicitly; no global state.
#[derive(Debug, Clone)]
pub struct Config {
    pub ingest: IngestConfig,
    pub pipeline: PipelineConfig,
    pub recovery: RecoveryConfig,
    pub limits: Limits,
    pub log_level: log::LevelFilter,
    /// Run against the built-in simulator, sending this many messages per second.
    pub sim_rate: Option<u64>,
    /// Where the frames come from.
    pub source: Source,
    pub output: OutputConfig,
    pub serve: ServeConfig,
    /// `--shard i/n`: the symbol list was cut to this shard's symbols.
    pub shard: Option<shard::Shard>,
    /// `--resume`: backfill from the last trades this shard wrote before it started.
    pub resume: bool,
}

/// Where the pipeline's frames come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The WebSocket, optionally recording every frame (`--record`).
    Live { record: Option<PathBuf> },
    /// Recordings, replayed in order at `pace` times the recorded pace (`None`: as fast as the
    /// pipeline goes).
    Replay { files: Vec<PathBuf>, pace: Option<f64> },
}

/// Where the lines go and when to stop writing them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputConfig {
    /// Files under this directory instead of stdout.
    pub dir: Option<PathBuf>,
    /// Applies to `dir` and to a recording.
    pub rotate: Option<units::Rotate>,
    pub compress: Option<CompressArg>,
    /// Stop after this many market-data lines.
    pub limit: Option<u64>,
    /// Records into a Kafka topic instead of stdout.
    pub kafka: Option<KafkaConfig>,
}

/// `--kafka-brokers`, `--kafka-topic`, `--kafka-opt`.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    /// librdkafka settings that override coinfeed's own, in the order given.
    pub opts: Vec<(String, String)>,
}

/// Settings may hold credentials (`sasl.password`): Debug shows their keys only.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.opts.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("opts", &keys)
            .finish()
    }
}

/// The metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub metrics_listen: Option<SocketAddr>,
}

/// A refused command line: which flag, what was wrong, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub flag: &'static str,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.flag, self.problem, self.fix)
    }
}

impl std::error::Error for ConfigError {}

fn err(flag: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError { flag, problem: problem.into(), fix: fix.into() }
}

impl Config {
    /// Validates raw arguments. `api_key` is the value of COINAPI_KEY, if set; `n_cores` the
    /// available parallelism (both passed in so this stays testable). The one IO is reading
    /// `--ca-file`, when given (`tls::load_ca_file`).
    pub fn from_args(args: &RunArgs, api_key: Option<String>, n_cores: usize) -> Result<Config, ConfigError> {
        let symbols_text = match (&args.symbols, args.sim) {
            (Some(s), _) => s.as_str(),
            (None, true) => SIM_DEFAULT_SYMBOLS,
            (None, false) => {
                return Err(err(
                    "--symbols",
                    "no symbols given",
                    "pass a comma-separated list, e.g. --symbols BITSTAMP_SPOT_BTC_USD,COINBASE_SPOT_ETH_USD (or use --sim)",
                ))
            }
        };
        let mut symbols = parse_symbols(symbols_text)?;
        let data_types = parse_types(&args.types)?;
        let shard = match &args.shard {
            Some(text) => {
                let shard = shard::Shard::parse(text)
                    .map_err(|p| err("--shard", p, "e.g. --shard 0/3 for the first of three shards"))?;
                symbols = shard_symbols(symbols, shard)?;
                Some(shard)
            }
            None => None,
        };

        let api_key = match (api_key, args.sim) {
            (_, true) => ApiKey::new("simulator-key".to_string()),
            (Some(k), false) if !k.trim().is_empty() => ApiKey::new(k.trim().to_string()),
            _ => {
                return Err(err(
                    "COINAPI_KEY",
                    "the environment variable is not set",
                    "export COINAPI_KEY=<your key>, or pass --sim to run against the built-in simulator",
                ))
            }
        };

        let ws = parse_ws_url(&args.ws_url, args.allow_insecure_ws)?;
        let rest_url = parse_rest_url(&args.rest_url)?;
        // The one file validation reads: a CA file that cannot be used is a bad flag, refused
        // before anything starts, not a failure at the first connect.
        let roots = match &args.ca_file {
            Some(path) => tls::load_ca_file(path)?,
            None => tls::Roots::BuiltIn,
        };
        let queue_wait = Duration::from_millis(limits::check("--queue-wait-ms", args.queue_wait_ms)?);
        if !(args.recovery_rps.is_finite() && args.recovery_rps > 0.0 && args.recovery_rps <= RECOVERY_RPS_MAX) {
            return Err(err(
                "--recovery-rps",
                format!("must be a number above 0 and at most {RECOVERY_RPS_MAX} (got {})", args.recovery_rps),
                format!("CoinAPI rate-limits REST calls; the default is {}", limits::RECOVERY_RPS_DEFAULT),
            ));
        }
        let max_pending = limits::check("--recovery-max-pending", args.recovery_max_pending as u64)? as usize;
        let max_attempts = limits::check("--recovery-max-attempts", u64::from(args.recovery_max_attempts))? as u32;
        let trades_limit = limits::check("--recovery-trades-limit", u64::from(args.recovery_trades_limit))? as u32;
        if args.recovery_budget == Some(0) {
            return Err(err(
                "--recovery-budget",
                "must be at least 1 credit",
                "omit it for no cap; to turn recovery off use a tiny budget such as 1",
            ));
        }
        let pipeline = parse_pipeline(&args.pipeline, n_cores, queue_wait)?;
        if pipeline.books.kept() && !data_types.contains(&DataType::Book) {
            return Err(err(
                "--book-output",
                "books are kept from the `book` data type only, and --types does not include it",
                "add book to --types (book5/20/50 are whole snapshots already), or drop --book-output",
            ));
        }
        if args.pipeline.rotate.is_some() && args.pipeline.output_dir.is_none() && args.record.is_none() {
            return Err(err(
                "--rotate",
                "rotates the files of --output-dir and --record, and neither is given",
                "add --output-dir DIR (or --record FILE), or drop --rotate",
            ));
        }
        if args.record.as_ref().is_some_and(|p| p.file_name().is_none()) {
            return Err(err(
                "--record",
                "needs a file name (a directory was given)",
                "name the recording, e.g. --record /var/lib/coinfeed/feed.cfrec",
            ));
        }
        let exact = symbols.iter().all(|s| matches!(s, SymbolFilter::Exact(_))).then_some(symbols.len());
        let limits = Limits::derive(exact, pipeline.n_workers, trades_limit)?;
        let recovery_timeout = limits::seconds("--recovery-timeout", args.recovery_timeout)?;
        let connect_timeout = limits::seconds("--connect-timeout", args.connect_timeout)?;
        let stale_timeout = limits::seconds("--stale-timeout", args.stale_timeout)?;
        let backoff_max = limits::seconds("--backoff-max", args.backoff_max)?;
        let (output, serve, log_level) = parse_output(&args.pipeline)?;
        if args.resume && output.dir.is_none() && output.kafka.is_none() {
            return Err(err(
                "--resume",
                "looks for the last trades this shard wrote, and there is no --output-dir or --kafka-topic to look in",
                "add the --output-dir (or --kafka-brokers and --kafka-topic) the previous run wrote to, or drop --resume",
            ));
        }

        Ok(Config {
            ingest: IngestConfig {
                symbols,
                data_types,
                ws,
                api_key: api_key.clone(),
                connect_timeout,
                stale_timeout,
                backoff_max,
                max_message_bytes: MAX_MESSAGE_BYTES,
                roots: roots.clone(),
            },
            pipeline,
            recovery: RecoveryConfig {
                rest_url,
                api_key,
                rps: args.recovery_rps,
                max_pending,
                max_attempts,
                timeout: recovery_timeout,
                trades_limit,
                budget: args.recovery_budget,
                offline: false,
                roots,
            },
            limits,
            log_level,
            sim_rate: args.sim.then_some(args.sim_rate),
            source: Source::Live { record: args.record.clone() },
            output,
            serve,
            shard,
            resume: args.resume,
        })
    }

    /// Validates the arguments of `coinfeed replay`. The connection's part of the config keeps
    /// its defaults (nothing connects); recovery is offline: a replay makes no REST request.
    pub fn from_replay_args(args: &ReplayArgs, n_cores: usize) -> Result<Config, ConfigError> {
        let pace = if args.max {
            None
        } else if (REPLAY_SPEED_MIN..=REPLAY_SPEED_MAX).contains(&args.speed) {
            Some(args.speed)
        } else {
            return Err(err(
                "--speed",
                format!("must be between {REPLAY_SPEED_MIN} and {REPLAY_SPEED_MAX} (got {})", args.speed),
                "use --max to replay as fast as the pipeline goes",
            ));
        };
        if args.pipeline.rotate.is_some() && args.pipeline.output_dir.is_none() {
            return Err(err(
                "--rotate",
                "rotates the files of --output-dir, and it is not given",
                "add --output-dir DIR, or drop --rotate",
            ));
        }
        let pipeline = parse_pipeline(&args.pipeline, n_cores, Duration::ZERO)?;
        let trades_limit = limits::RECOVERY_TRADES_LIMIT_DEFAULT;
        let limits = Limits::derive(None, pipeline.n_workers, trades_limit)?;
        let (output, serve, log_level) = parse_output(&args.pipeline)?;
        let no_key = ApiKey::new(String::new());
        let secs = |s: f64| Duration::from_secs_f64(s);
        Ok(Config {
            ingest: IngestConfig {
                symbols: Vec::new(),
                data_types: DataType::ALL.to_vec(),
                ws: parse_ws_url("wss://ws.coinapi.io/v1/", false)?,
                api_key: no_key.clone(),
                connect_timeout: secs(limits::CONNECT_TIMEOUT_S_DEFAULT),
                stale_timeout: secs(limits::STALE_TIMEOUT_S_DEFAULT),
                backoff_max: secs(limits::BACKOFF_MAX_S_DEFAULT),
                max_message_bytes: MAX_MESSAGE_BYTES,
                roots: tls::Roots::BuiltIn,
            },
            pipeline,
            recovery: RecoveryConfig {
                rest_url: String::new(),
                api_key: no_key,
                rps: limits::RECOVERY_RPS_DEFAULT,
                max_pending: limits::RECOVERY_MAX_PENDING_DEFAULT,
                max_attempts: limits::RECOVERY_MAX_ATTEMPTS_DEFAULT,
                timeout: secs(limits::RECOVERY_TIMEOUT_S_DEFAULT),
                trades_limit,
                budget: None,
                offline: true,
                roots: tls::Roots::BuiltIn,
            },
            limits,
            log_level,
            sim_rate: None,
            source: Source::Replay { files: args.files.clone(), pace },
            output,
            serve,
            shard: None,
            resume: false,
        })
    }

    /// Points the config at a running simulator (used by `--sim`, tests and benches).
    pub fn use_endpoints(&mut self, ws_url: &str, rest_url: &str) -> Result<(), ConfigError> {
        self.ingest.ws = parse_ws_url(ws_url, false)?;
        self.recovery.rest_url = parse_rest_url(rest_url)?;
        Ok(())
    }
}

/// The flags shared by a live run and a replay: workers, buffer, books, health, shutdown.
fn parse_pipeline(args: &PipelineArgs, n_cores: usize, queue_wait: Duration) -> Result<PipelineConfig, ConfigError> {
    let n_workers = limits::check("--workers", args.workers.unwrap_or(n_cores.max(1)) as u64)? as usize;
    let buffer_bytes = limits::check("--buffer-mib", args.buffer_mib)? << 20;
    let queue_capacity = match args.queue_capacity {
        Some(n) => Some(limits::check("--queue-capacity", n as u64)? as usize),
        None => None,
    };
    let books = BookConfig {
        output: args.book_output,
        depth: limits::check("--book-depth", args.book_depth)? as usize,
        interval_ns: i128::from(limits::check("--book-interval-ms", args.book_interval_ms)?) * 1_000_000,
        max_levels: limits::check("--book-max-levels", args.book_max_levels)? as usize,
        max_books: limits::check("--book-max-books", args.book_max_books)? as usize,
    };
    if books.depth > books.max_levels {
        return Err(err(
            "--book-depth",
            format!(
                "{} levels per line is more than the {} kept per side (--book-max-levels)",
                books.depth, books.max_levels
            ),
            "lower --book-depth or raise --book-max-levels",
        ));
    }
    let shutdown_timeout = limits::seconds("--shutdown-timeout", args.shutdown_timeout)?;
    let health_interval = if args.health_interval == 0.0 {
        None
    } else {
        Some(limits::seconds("--health-interval", args.health_interval)?)
    };
    Ok(PipelineConfig { n_workers, buffer_bytes, queue_capacity, queue_wait, health_interval, shutdown_timeout, books })
}

/// Where the output goes, the metrics endpoint and the log level.
fn parse_output(args: &PipelineArgs) -> Result<(OutputConfig, ServeConfig, log::LevelFilter), ConfigError> {
    let rotate = match &args.rotate {
        Some(text) => Some(
            units::parse_rotate(text)
                .map_err(|problem| err("--rotate", problem, "e.g. --rotate 1h (UTC hours) or --rotate 512MiB"))?,
        ),
        None => None,
    };
    if args.limit == Some(0) {
        return Err(err("--limit", "must be at least 1 line", "omit it to run until stopped"));
    }
    let metrics_listen = match &args.metrics_listen {
        Some(text) => {
            let addr: SocketAddr = text.parse().map_err(|_| {
                err(
                    "--metrics-listen",
                    format!("{text:?} is not an address with a port"),
                    "write it as IP:PORT, e.g. 127.0.0.1:9899 (port 0: any free port)",
                )
            })?;
            if !addr.ip().is_loopback() && !args.allow_remote_metrics {
                return Err(err(
                    "--metrics-listen",
                    format!("{addr} is not a loopback address: anyone who can reach it could read the metrics"),
                    "listen on 127.0.0.1, or pass --allow-remote-metrics if you really mean it",
                ));
            }
            Some(addr)
        }
        None => None,
    };
    let log_level = args.log_level.parse::<log::LevelFilter>().map_err(|_| {
        err("--log-level", format!("unknown level {:?}", args.log_level), "use one of error, warn, info, debug, trace")
    })?;
    let kafka = parse_kafka(args)?;
    Ok((
        OutputConfig { dir: args.output_dir.clone(), rotate, compress: args.compress, limit: args.limit, kafka },
        ServeConfig { metrics_listen },
        log_level,
    ))
}

/// `--kafka-brokers`, `--kafka-topic`, `--kafka-opt` (clap already holds that they come together
/// and that --output-dir is not given).
fn parse_kafka(args: &PipelineArgs) -> Result<Option<KafkaConfig>, ConfigError> {
    let (Some(brokers), Some(topic)) = (&args.kafka_brokers, &args.kafka_topic) else { return Ok(None) };
    if !cfg!(feature = "kafka") {
        return Err(err(
            "--kafka-brokers",
            "this coinfeed was built without the Kafka sink",
            "build it with `cargo build --release --features kafka` (./run.sh does when --kafka-brokers is given)",
        ));
    }
    let list: Vec<&str> = brokers.split(',').map(str::trim).filter(|b| !b.is_empty()).collect();
    if list.is_empty() {
        return Err(err("--kafka-brokers", "the list is empty", "e.g. --kafka-brokers kafka-1:9092,kafka-2:9092"));
    }
    for b in &list {
        let port = b.rsplit_once(':').and_then(|(host, port)| (!host.is_empty()).then_some(port));
        if port.and_then(|p| p.parse::<u16>().ok()).is_none_or(|p| p == 0) {
            return Err(err(
                "--kafka-brokers",
                format!("{b:?} is not host:port"),
                "write each broker as host:port, e.g. kafka-1:9092",
            ));
        }
    }
    let topic_ok = |t: &str| {
        (1..=249).contains(&t.len())
            && t != "."
            && t != ".."
            && t.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
    };
    if !topic_ok(topic) {
        return Err(err(
            "--kafka-topic",
            format!("{topic:?} is not a Kafka topic name"),
            "topic names are 1 to 249 letters, digits, `.`, `_` and `-`",
        ));
    }
    let mut opts = Vec::new();
    for opt in &args.kafka_opt {
        let Some((key, value)) = opt.split_once('=').map(|(k, v)| (k.trim(), v)).filter(|(k, _)| !k.is_empty()) else {
            return Err(err(
                "--kafka-opt",
                format!("{:?} is not KEY=VALUE", opt.split('=').next().unwrap_or_default()),
                "e.g. --kafka-opt linger.ms=20 (librdkafka's setting names)",
            ));
        };
        if key == "bootstrap.servers" || key == "metadata.broker.list" {
            return Err(err(
                "--kafka-opt",
                format!("{key} is set by --kafka-brokers"),
                "name the brokers in --kafka-brokers",
            ));
        }
        opts.push((key.to_string(), value.to_string()));
    }
    Ok(Some(KafkaConfig { brokers: list.join(","), topic: topic.clone(), opts }))
}

/// Cuts an exact symbol list to the symbols of `shard`.
fn shard_symbols(symbols: Vec<SymbolFilter>, shard: shard::Shard) -> Result<Vec<SymbolFilter>, ConfigError> {
    if let Some(SymbolFilter::Prefix(p)) = symbols.iter().find(|s| matches!(s, SymbolFilter::Prefix(_))) {
        return Err(err(
            "--shard",
            format!("shards split an exact symbol list, and {p}* is a prefix filter (its symbols are not known in advance)"),
            "list the symbols exactly (e.g. from CoinAPI's /v1/symbols), or run one process for the prefix without --shard",
        ));
    }
    let total = symbols.len();
    let kept: Vec<SymbolFilter> =
        symbols.into_iter().filter(|s| matches!(s, SymbolFilter::Exact(x) if shard.keeps(x))).collect();
    if kept.is_empty() {
        return Err(err(
            "--shard",
            format!("none of the {total} symbols falls to shard {}/{}", shard.index, shard.count),
            "use fewer shards than there are symbols, or give this shard a longer list",
        ));
    }
    Ok(kept)
}

fn parse_symbols(text: &str) -> Result<Vec<SymbolFilter>, ConfigError> {
    let mut out: Vec<SymbolFilter> = Vec::new();
    for raw in text.split(',') {
        let s = raw.trim();
        if s.is_empty() {
            continue;
        }
        let filter = if let Some(prefix) = s.strip_suffix('*') {
            if prefix.is_empty() {
                return Err(err(
                    "--symbols",
                    "a bare `*` would subscribe to every symbol on CoinAPI",
                    "give a prefix before the star, e.g. BITSTAMP_SPOT_*",
                ));
            }
            SymbolFilter::Prefix(prefix.to_string())
        } else {
            SymbolFilter::Exact(s.to_string())
        };
        let body = match &filter {
            SymbolFilter::Exact(x) | SymbolFilter::Prefix(x) => x,
        };
        if !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
            return Err(err(
                "--symbols",
                format!("{s:?} is not a CoinAPI symbol id"),
                "symbol ids are letters, digits, `_`, `-` and `.`, e.g. BITSTAMP_SPOT_BTC_USD",
            ));
        }
        if !out.contains(&filter) {
            out.push(filter);
        }
    }
    if out.is_empty() {
        return Err(err(
            "--symbols",
            "the list is empty",
            "pass at least one symbol id, e.g. --symbols BITSTAMP_SPOT_BTC_USD",
        ));
    }
    if out.len() > MAX_SYMBOLS {
        return Err(err(
            "--symbols",
            format!("{} symbols given, at most {MAX_SYMBOLS} are allowed", out.len()),
            "use a prefix filter such as BITSTAMP_SPOT_* instead of listing them",
        ));
    }
    Ok(out)
}

fn parse_types(text: &str) -> Result<Vec<DataType>, ConfigError> {
    let mut out = Vec::new();
    for raw in text.split(',') {
        let t = raw.trim();
        if t.is_empty() {
            continue;
        }
        let dt = DataType::parse(t).ok_or_else(|| {
            err(
                "--types",
                format!("unknown data type {t:?}"),
                format!("use a comma-separated list of {}", DataType::ALL_NAMES),
            )
        })?;
        if !out.contains(&dt) {
            out.push(dt);
        }
    }
    if out.is_empty() {
        return Err(err("--types", "the list is empty", format!("use one or more of {}", DataType::ALL_NAMES)));
    }
    Ok(out)
}

fn parse_uri(flag: &'static str, text: &str) -> Result<(String, String, Option<u16>), ConfigError> {
    let uri: Uri = text.parse().map_err(|e| {
        err(flag, format!("{text:?} is not a valid URL ({e})"), "write it like wss://ws.coinapi.io/v1/")
    })?;
    let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
    let host = uri.host().unwrap_or("").to_string();
    if host.is_empty() {
        return Err(err(flag, format!("{text:?} has no host"), "write it like wss://ws.coinapi.io/v1/"));
    }
    Ok((scheme, host, uri.port_u16()))
}

/// Refuses a URL that carries credentials (user info, or an `apikey` parameter): URLs are
/// logged, written in connection lines and recorded, and the key must never be.
fn refuse_credentials(flag: &'static str, text: &str) -> Result<(), ConfigError> {
    let authority = text.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
    if authority.contains('@') || text.to_ascii_lowercase().contains("apikey") {
        return Err(err(
            flag,
            "the URL carries credentials (user info or an apikey parameter), and URLs are logged",
            "give the key in COINAPI_KEY only, never in the URL",
        ));
    }
    Ok(())
}

fn parse_ws_url(text: &str, allow_insecure: bool) -> Result<WsEndpoint, ConfigError> {
    refuse_credentials("--ws-url", text)?;
    let (scheme, host, port) = parse_uri("--ws-url", text)?;
    let tls = match scheme.as_str() {
        "wss" => true,
        "ws" => false,
        _ => {
            return Err(err(
                "--ws-url",
                format!("{text:?} is not a WebSocket URL (scheme {scheme:?})"),
                "use wss://host/path, e.g. wss://ws.coinapi.io/v1/",
            ))
        }
    };
    if !tls && !allow_insecure && !is_loopback(&host) {
        return Err(err(
            "--ws-url",
            format!("{text:?} is unencrypted ws:// to a non-loopback host; the API key would travel in clear text"),
            "use wss://, or pass --allow-insecure-ws if you really mean it",
        ));
    }
    Ok(WsEndpoint { url: text.to_string(), host, port: port.unwrap_or(if tls { 443 } else { 80 }), tls })
}

fn parse_rest_url(text: &str) -> Result<String, ConfigError> {
    refuse_credentials("--rest-url", text)?;
    let (scheme, _, _) = parse_uri("--rest-url", text)?;
    if scheme != "http" && scheme != "https" {
        return Err(err(
            "--rest-url",
            format!("{text:?} is not an http(s) URL"),
            "use https://host, e.g. https://rest.coinapi.io",
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// True for `localhost`, 127.0.0.0/8 and ::1: the only hosts a plain ws:// URL may name by default.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str], key: Option<&str>) -> Result<Config, ConfigError> {
        let mut argv = vec!["coinfeed"];
        argv.extend_from_slice(args);
        let args = RunArgs::try_parse_from(argv).expect("clap accepts the arguments");
        Config::from_args(&args, key.map(str::to_string), 2)
    }

    fn check_refused(args: &[&str], key: Option<&str>, flag: &str, problem_part: &str) {
        let e = parse(args, key).expect_err("must be refused");
        assert_eq!(e.flag, flag, "{e}");
        assert!(e.problem.contains(problem_part), "{e}");
    }

    #[test]
    fn refuses_bad_input_naming_the_flag() {
        check_refused(&["--symbols", "A"], None, "COINAPI_KEY", "not set");
        check_refused(&[], Some("k"), "--symbols", "no symbols");
        check_refused(&["--symbols", " , "], Some("k"), "--symbols", "empty");
        check_refused(&["--symbols", "*"], Some("k"), "--symbols", "bare");
        check_refused(&["--symbols", "A B"], Some("k"), "--symbols", "not a CoinAPI symbol");
        check_refused(&["--symbols", "A", "--types", "trade,candles"], Some("k"), "--types", "candles");
        check_refused(&["--symbols", "A", "--queue-capacity", "0"], Some("k"), "--queue-capacity", "got 0");
        check_refused(&["--symbols", "A", "--workers", "0"], Some("k"), "--workers", "got 0");
        check_refused(&["--symbols", "A", "--ws-url", "http://x/"], Some("k"), "--ws-url", "not a WebSocket");
        check_refused(&["--symbols", "A", "--ws-url", "wss://"], Some("k"), "--ws-url", "");
        check_refused(&["--symbols", "A", "--ws-url", "ws://example.com/v1/"], Some("k"), "--ws-url", "clear text");
        check_refused(&["--symbols", "A", "--rest-url", "ftp://x"], Some("k"), "--rest-url", "http");
        check_refused(
            &["--symbols", "A", "--ws-url", "wss://ws.coinapi.io/v1/?apikey=SECRET"],
            Some("k"),
            "--ws-url",
            "credentials",
        );
        check_refused(
            &["--symbols", "A", "--ws-url", "wss://u:SECRET@ws.coinapi.io/v1/"],
            Some("k"),
            "--ws-url",
            "credentials",
        );
        check_refused(&["--symbols", "A", "--rest-url", "https://x/?apikey=S"], Some("k"), "--rest-url", "credentials");
        check_refused(&["--symbols", "A", "--recovery-rps", "0"], Some("k"), "--recovery-rps", "got 0");
        check_refused(&["--symbols", "A", "--stale-timeout", "0"], Some("k"), "--stale-timeout", "got 0");
        check_refused(&["--symbols", "A", "--log-level", "loud"], Some("k"), "--log-level", "loud");
        check_refused(&["--symbols", "A", "--rotate", "1h"], Some("k"), "--rotate", "neither");
        check_refused(
            &["--symbols", "A", "--output-dir", "d", "--rotate", "1x"],
            Some("k"),
            "--rotate",
            "neither a time",
        );
        check_refused(&["--symbols", "A", "--limit", "0"], Some("k"), "--limit", "at least 1");
        check_refused(&["--symbols", "A", "--metrics-listen", "9899"], Some("k"), "--metrics-listen", "with a port");
        check_refused(
            &["--symbols", "A", "--metrics-listen", "0.0.0.0:9899"],
            Some("k"),
            "--metrics-listen",
            "loopback",
        );
        check_refused(&["--symbols", "A", "--record", "/"], Some("k"), "--record", "file name");
        check_refused(
            &["--symbols", "A", "--recovery-trades-limit", "0"],
            Some("k"),
            "--recovery-trades-limit",
            "got 0",
        );
        check_refused(
            &["--symbols", "A*", "--recovery-trades-limit", "100000"],
            Some("k"),
            "--recovery-trades-limit",
            "ceiling",
        );
    }

    #[test]
    fn accepts_and_normalises_good_input() {
        let c = parse(
            &["--symbols", "BITSTAMP_SPOT_BTC_USD, KRAKEN_SPOT_*,BITSTAMP_SPOT_BTC_USD", "--types", "trade,book20"],
            Some(" key "),
        )
        .expect("valid");
        let wire: Vec<String> = c.ingest.symbols.iter().map(SymbolFilter::wire).collect();
        assert_eq!(wire, ["BITSTAMP_SPOT_BTC_USD$", "KRAKEN_SPOT_"]);
        assert_eq!(c.ingest.data_types, [DataType::Trade, DataType::Book20]);
        assert_eq!(c.ingest.api_key.expose(), "key");
        assert_eq!(c.pipeline.queue_capacity, None);
        assert_eq!(c.pipeline.buffer_bytes, 64 << 20);
        assert_eq!(c.pipeline.n_workers, 2);
        assert_eq!(c.ingest.ws.host, "ws.coinapi.io");
        assert_eq!(c.ingest.ws.port, 443);
        assert!(c.ingest.ws.tls);
        assert_eq!(c.recovery.rest_url, "https://rest.coinapi.io");
        assert_eq!(c.limits.symbols_per_worker, MAX_SYMBOLS, "a prefix filter: the set is unknown");
        let opt_in = parse(&["--symbols", "A", "--ws-url", "ws://example.com/", "--allow-insecure-ws"], Some("k"));
        assert!(opt_in.is_ok());
        let loopback = parse(&["--symbols", "A", "--ws-url", "ws://127.0.0.1:9/v1/"], Some("k")).expect("loopback");
        assert_eq!(loopback.ingest.ws.port, 9);
    }

    /// Proves `--shard` keeps exactly its share of an exact list (the three shards together are
    /// the list, disjoint) and refuses what it cannot split.
    #[test]
    fn shards_split_an_exact_list_and_refuse_prefixes() {
        let list: Vec<String> = (0..30).map(|i| format!("SIMK_SPOT_C{i:02}_USD")).collect();
        let joined = list.join(",");
        let mut all: Vec<String> = Vec::new();
        for i in 0..3 {
            let shard = format!("{i}/3");
            let c = parse(&["--symbols", &joined, "--shard", &shard], Some("k")).expect("valid");
            assert_eq!(c.shard, Some(shard::Shard { index: i, count: 3 }));
            let kept: Vec<String> =
                c.ingest.symbols.iter().map(|s| SymbolFilter::wire(s).trim_end_matches('$').to_string()).collect();
            assert!(!kept.is_empty() && kept.len() < 30, "{kept:?}");
            all.extend(kept);
        }
        all.sort();
        assert_eq!(all, list, "every symbol in exactly one shard");
        check_refused(&["--symbols", "A,B_*", "--shard", "0/2"], Some("k"), "--shard", "prefix filter");
        check_refused(&["--symbols", "A", "--shard", "2/2"], Some("k"), "--shard", "from 0 to 1");
        check_refused(&["--symbols", "A", "--shard", "x"], Some("k"), "--shard", "i/n");
        // One symbol over 64 shards: most shards get nothing, which is refused, not run empty.
        let empty =
            (0..64).map(|i| format!("{i}/64")).find(|s| parse(&["--symbols", "A", "--shard", s], Some("k")).is_err());
        let e = parse(&["--symbols", "A", "--shard", &empty.expect("an empty shard")], Some("k")).expect_err("empty");
        assert!(e.problem.contains("none of the 1 symbols"), "{e}");
    }

    #[test]
    fn kafka_and_resume_flags_are_checked() {
        check_refused(&["--symbols", "A", "--resume"], Some("k"), "--resume", "no --output-dir");
        let resumed = parse(&["--symbols", "A", "--resume", "--output-dir", "d"], Some("k")).expect("valid");
        assert!(resumed.resume);
        let kafka = ["--symbols", "A", "--kafka-brokers", "127.0.0.1:9092", "--kafka-topic", "feed"];
        if !cfg!(feature = "kafka") {
            check_refused(&kafka, Some("k"), "--kafka-brokers", "without the Kafka sink");
            return;
        }
        let c = parse(
            &[&kafka[..], &["--kafka-opt", "linger.ms=20", "--kafka-opt", "sasl.password=SECRET"]].concat(),
            Some("k"),
        )
        .expect("valid");
        let k = c.output.kafka.as_ref().expect("kafka");
        assert_eq!((k.brokers.as_str(), k.topic.as_str(), k.opts.len()), ("127.0.0.1:9092", "feed", 2));
        assert!(!format!("{c:?}").contains("SECRET"), "settings' values never show in Debug output");
        fn with<'a>(kafka: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            [kafka, extra].concat()
        }
        check_refused(&with(&kafka, &["--kafka-opt", "novalue"]), Some("k"), "--kafka-opt", "KEY=VALUE");
        check_refused(
            &with(&kafka, &["--kafka-opt", "bootstrap.servers=x:1"]),
            Some("k"),
            "--kafka-opt",
            "--kafka-brokers",
        );
        let bad_broker = ["--symbols", "A", "--kafka-brokers", "nohost", "--kafka-topic", "feed"];
        check_refused(&bad_broker, Some("k"), "--kafka-brokers", "host:port");
        let bad_topic = ["--symbols", "A", "--kafka-brokers", "h:1", "--kafka-topic", "a b"];
        check_refused(&bad_topic, Some("k"), "--kafka-topic", "not a Kafka topic");
    }

    #[test]
    fn operations_flags_are_validated_into_the_config() {
        let c = parse(
            &["--symbols", "A", "--output-dir", "out", "--rotate", "1h", "--compress", "zstd", "--limit", "5"],
            Some("k"),
        )
        .expect("valid");
        assert_eq!(c.output.rotate, Some(units::Rotate::Every { seconds: 3600 }));
        assert_eq!((c.output.compress, c.output.limit), (Some(CompressArg::Zstd), Some(5)));
        let remote = parse(&["--symbols", "A", "--metrics-listen", "0.0.0.0:0", "--allow-remote-metrics"], Some("k"));
        assert!(remote.expect("opted in").serve.metrics_listen.is_some());
        let replay = |args: &[&str]| {
            let mut argv = vec!["replay"];
            argv.extend_from_slice(args);
            let cli = ReplayCli::try_parse_from(argv).expect("clap accepts the arguments");
            Config::from_replay_args(&cli.args, 2)
        };
        let r = replay(&["f.cfrec", "--max"]).expect("valid");
        assert_eq!(r.source, Source::Replay { files: vec!["f.cfrec".into()], pace: None });
        assert!(r.recovery.offline && r.recovery.api_key.expose().is_empty());
        assert_eq!(replay(&["f.cfrec", "--speed", "0"]).expect_err("refused").flag, "--speed");
        assert_eq!(replay(&["f.cfrec", "--speed", "1e-300"]).expect_err("refused").flag, "--speed");
        assert_eq!(replay(&["f.cfrec", "--rotate", "1h"]).expect_err("refused").flag, "--rotate");
    }

    /// `ReplayArgs` as its own command, for the test above.
    #[derive(clap::Parser, Debug)]
    struct ReplayCli {
        #[command(flatten)]
        args: ReplayArgs,
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let c = parse(&["--symbols", "A"], Some("SECRET-KEY-123")).expect("valid");
        let dump = format!("{c:?}");
        assert!(!dump.contains("SECRET-KEY-123"), "{dump}");
        assert!(dump.contains("redacted"));
    }
}
