//! The command line: clap parses raw arguments (`RunArgs`), then `Config::from_args` validates them
//! into a plain, fully-checked `Config` that the pipeline receives explicitly.
//!
//! Every limit of the program lives here with its default and the reason for it. Nothing is
//! started before validation passes; a bad value yields a `ConfigError` naming the flag, what was
//! wrong and what to do (exit code 2). The API key comes only from the environment and never
//! appears in Debug output.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use tungstenite::http::Uri;

use crate::protocol::DataType;

/// Default symbols when `--sim` is given without `--symbols`: the simulator serves these.
pub const SIM_DEFAULT_SYMBOLS: &str =
    "BITSTAMP_SPOT_BTC_USD,COINBASE_SPOT_ETH_USD,BINANCE_SPOT_SOL_USDT,KRAKEN_SPOT_XRP_EUR,BINANCEFTS_PERP_BTC_USDT";

/// Largest WebSocket message accepted. CoinAPI messages are a few KiB at most (a book50 snapshot
/// is ~5 KiB); 4 MiB leaves room for anything legitimate while refusing a 64 MiB allocation.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// How often the reader's blocking read returns to check for shutdown and staleness.
pub const READ_TICK: Duration = Duration::from_millis(100);

/// Upper bound on the symbols one process subscribes to; also bounds every per-symbol map.
pub const MAX_SYMBOLS: usize = 10_000;

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

    /// Worker threads that decode and format messages [default: available cores].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Capacity of each worker's input channel, in messages. When a channel stays full the reader
    /// drops (and counts) messages rather than stop reading the socket.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub queue_capacity: usize,

    /// How long the reader may wait for room in a full channel to absorb a burst before it starts
    /// dropping messages, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub queue_wait_ms: u64,

    /// Maximum REST recovery requests per second (CoinAPI rate limits and credits).
    #[arg(long, value_name = "X", default_value_t = 2.0)]
    pub recovery_rps: f64,

    /// Most symbol/data-type pairs waiting for REST recovery at once; more gaps are counted and
    /// logged, not queued.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub recovery_max_pending: usize,

    /// REST requests per recovery key that may fail (5xx, timeout, bad body) before it is given up.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub recovery_max_attempts: u32,

    /// Seconds one REST request may take in all (connect, send, read).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub recovery_timeout: f64,

    /// Trades fetched per trade recovery (`limit` of /v1/trades/{symbol}/latest; 100 costs one credit).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub recovery_trades_limit: u32,

    /// Most REST credits recovery may spend per rolling 24 hours [default: no cap].
    #[arg(long, value_name = "CREDITS")]
    pub recovery_budget: Option<u64>,

    /// Seconds allowed for DNS, TCP, TLS and the WebSocket upgrade together.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub connect_timeout: f64,

    /// Seconds without any message (data or heartbeat) after which the connection is declared
    /// dead and replaced.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub stale_timeout: f64,

    /// Longest wait between reconnection attempts, in seconds (exponential backoff with jitter).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub backoff_max: f64,

    /// Seconds between health lines on stderr; 0 turns them off.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub health_interval: f64,

    /// Seconds a graceful stop may take (drain and flush) before coinfeed gives up and exits 1.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub shutdown_timeout: f64,

    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,

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
}

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

/// Everything the pipeline needs, validated. Passed explicitly; no global state.
#[derive(Debug, Clone)]
pub struct Config {
    pub symbols: Vec<SymbolFilter>,
    pub data_types: Vec<DataType>,
    pub ws: WsEndpoint,
    pub rest_url: String,
    pub api_key: ApiKey,
    pub n_workers: usize,
    pub queue_capacity: usize,
    pub queue_wait: Duration,
    pub recovery_rps: f64,
    pub recovery_max_pending: usize,
    pub recovery_max_attempts: u32,
    pub recovery_timeout: Duration,
    pub recovery_trades_limit: u32,
    /// Credits per rolling 24 h; `None` for no cap.
    pub recovery_budget: Option<u64>,
    pub connect_timeout: Duration,
    pub stale_timeout: Duration,
    pub backoff_max: Duration,
    /// `None` turns the periodic health line off.
    pub health_interval: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub log_level: log::LevelFilter,
    pub sim: bool,
    pub sim_rate: u64,
    pub max_message_bytes: usize,
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
    /// available parallelism (both passed in so this stays pure and testable).
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
        let symbols = parse_symbols(symbols_text)?;
        let data_types = parse_types(&args.types)?;

        let api_key = match (api_key, args.sim) {
            (_, true) => ApiKey::new("coinfeed-sim-key".to_string()),
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

        let n_workers = args.workers.unwrap_or(n_cores.max(1));
        if n_workers == 0 || n_workers > 256 {
            return Err(err(
                "--workers",
                format!("must be between 1 and 256 (got {n_workers})"),
                "omit it to use one worker per core",
            ));
        }
        if args.queue_capacity == 0 || args.queue_capacity > 1_000_000 {
            return Err(err(
                "--queue-capacity",
                format!("must be between 1 and 1000000 (got {})", args.queue_capacity),
                "it is the per-worker channel size in messages; the default is 500",
            ));
        }
        if args.queue_wait_ms > 10_000 {
            return Err(err(
                "--queue-wait-ms",
                format!("must be at most 10000 (got {})", args.queue_wait_ms),
                "a long wait stalls the socket; the default is 50",
            ));
        }
        if !(args.recovery_rps.is_finite() && args.recovery_rps > 0.0 && args.recovery_rps <= 100.0) {
            return Err(err(
                "--recovery-rps",
                format!("must be a number above 0 and at most 100 (got {})", args.recovery_rps),
                "CoinAPI rate-limits REST calls; the default is 2",
            ));
        }
        if args.recovery_max_pending == 0 || args.recovery_max_pending > 1_000_000 {
            return Err(err(
                "--recovery-max-pending",
                format!("must be between 1 and 1000000 (got {})", args.recovery_max_pending),
                "the default is 4096",
            ));
        }
        if args.recovery_max_attempts == 0 || args.recovery_max_attempts > 100 {
            return Err(err(
                "--recovery-max-attempts",
                format!("must be between 1 and 100 (got {})", args.recovery_max_attempts),
                "the default is 5",
            ));
        }
        if args.recovery_trades_limit == 0 || args.recovery_trades_limit > 100_000 {
            return Err(err(
                "--recovery-trades-limit",
                format!("must be between 1 and 100000 (got {})", args.recovery_trades_limit),
                "the default is 100 (one credit)",
            ));
        }
        if args.recovery_budget == Some(0) {
            return Err(err(
                "--recovery-budget",
                "must be at least 1 credit",
                "omit it for no cap; to turn recovery off use a tiny budget such as 1",
            ));
        }
        let recovery_timeout = seconds("--recovery-timeout", args.recovery_timeout, 0.1, 300.0)?;
        let connect_timeout = seconds("--connect-timeout", args.connect_timeout, 0.1, 300.0)?;
        let stale_timeout = seconds("--stale-timeout", args.stale_timeout, 0.2, 3600.0)?;
        let backoff_max = seconds("--backoff-max", args.backoff_max, 0.1, 3600.0)?;
        let shutdown_timeout = seconds("--shutdown-timeout", args.shutdown_timeout, 0.1, 600.0)?;
        let health_interval = if args.health_interval == 0.0 {
            None
        } else {
            Some(seconds("--health-interval", args.health_interval, 0.1, 86_400.0)?)
        };
        let log_level = args.log_level.parse::<log::LevelFilter>().map_err(|_| {
            err(
                "--log-level",
                format!("unknown level {:?}", args.log_level),
                "use one of error, warn, info, debug, trace",
            )
        })?;

        Ok(Config {
            symbols,
            data_types,
            ws,
            rest_url,
            api_key,
            n_workers,
            queue_capacity: args.queue_capacity,
            queue_wait: Duration::from_millis(args.queue_wait_ms),
            recovery_rps: args.recovery_rps,
            recovery_max_pending: args.recovery_max_pending,
            recovery_max_attempts: args.recovery_max_attempts,
            recovery_timeout,
            recovery_trades_limit: args.recovery_trades_limit,
            recovery_budget: args.recovery_budget,
            connect_timeout,
            stale_timeout,
            backoff_max,
            health_interval,
            shutdown_timeout,
            log_level,
            sim: args.sim,
            sim_rate: args.sim_rate,
            max_message_bytes: MAX_MESSAGE_BYTES,
        })
    }

    /// Points the config at a running simulator (used by `--sim`, tests and benches).
    pub fn use_endpoints(&mut self, ws_url: &str, rest_url: &str) -> Result<(), ConfigError> {
        self.ws = parse_ws_url(ws_url, false)?;
        self.rest_url = parse_rest_url(rest_url)?;
        Ok(())
    }
}

fn seconds(flag: &'static str, value: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if value.is_finite() && value >= min && value <= max {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(err(flag, format!("must be between {min} and {max} seconds (got {value})"), "see --help for the default"))
    }
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

fn parse_ws_url(text: &str, allow_insecure: bool) -> Result<WsEndpoint, ConfigError> {
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
        check_refused(&["--symbols", "A", "--recovery-rps", "0"], Some("k"), "--recovery-rps", "got 0");
        check_refused(&["--symbols", "A", "--stale-timeout", "0"], Some("k"), "--stale-timeout", "got 0");
        check_refused(&["--symbols", "A", "--log-level", "loud"], Some("k"), "--log-level", "loud");
    }

    #[test]
    fn accepts_and_normalises_good_input() {
        let c = parse(
            &["--symbols", "BITSTAMP_SPOT_BTC_USD, KRAKEN_SPOT_*,BITSTAMP_SPOT_BTC_USD", "--types", "trade,book20"],
            Some(" key "),
        )
        .expect("valid");
        let wire: Vec<String> = c.symbols.iter().map(SymbolFilter::wire).collect();
        assert_eq!(wire, ["BITSTAMP_SPOT_BTC_USD$", "KRAKEN_SPOT_"]);
        assert_eq!(c.data_types, [DataType::Trade, DataType::Book20]);
        assert_eq!(c.api_key.expose(), "key");
        assert_eq!(c.queue_capacity, 500);
        assert_eq!(c.n_workers, 2);
        assert_eq!(c.ws.host, "ws.coinapi.io");
        assert_eq!(c.ws.port, 443);
        assert!(c.ws.tls);
        assert_eq!(c.rest_url, "https://rest.coinapi.io");
        let opt_in = parse(&["--symbols", "A", "--ws-url", "ws://example.com/", "--allow-insecure-ws"], Some("k"));
        assert!(opt_in.is_ok());
        let loopback = parse(&["--symbols", "A", "--ws-url", "ws://127.0.0.1:9/v1/"], Some("k")).expect("loopback");
        assert_eq!(loopback.ws.port, 9);
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let c = parse(&["--symbols", "A"], Some("SECRET-KEY-123")).expect("valid");
        let dump = format!("{c:?}");
        assert!(!dump.contains("SECRET-KEY-123"), "{dump}");
        assert!(dump.contains("redacted"));
    }
}
