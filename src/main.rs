//! The `coinfeed` binary: parse the command line, set up logging and the Ctrl-C handler, run the
//! pipeline (or the standalone simulator) and map the outcome to an exit code. `main` owns every
//! exit code (`Exit`); the library never exits the process and returns typed outcomes.

use std::io::IsTerminal;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use coinfeed::app::{self, Outcome};
use coinfeed::config::{tls, Config, ConfigError, Source, SymbolFilter};
use coinfeed::metrics::Metrics;
use coinfeed::output::resume::{self, TailScan};
use coinfeed::output::sink::Rotating;
use coinfeed::shutdown::Shutdown;
use coinfeed::worker::symbols::ResumePoint;
use coinfeed_sim as sim;

/// Every exit code of the program, listed in `--help` and README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// A clean stop: a signal, or stdout closed by its reader.
    Clean = 0,
    /// A runtime failure: an output write error (stdout, or a file under `--output-dir`), a
    /// damaged recording in a replay, a thread that panicked, a stop past `--shutdown-timeout`,
    /// the simulator could not start, a Kafka record not delivered.
    Failure = 1,
    /// An invalid command line or a missing `COINAPI_KEY` (also clap's own usage errors).
    Usage = 2,
    /// CoinAPI refused the API key: retrying cannot help.
    KeyRefused = 3,
    /// A second Ctrl-C during the graceful stop.
    SecondInterrupt = 130,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "coinfeed",
    version,
    about = "Subscribe to CoinAPI market data over WebSocket and write every message as one NDJSON line on stdout",
    long_about = "Subscribe to CoinAPI market data (trades, quotes, order books, OHLCV) over a WebSocket \
and write every message as one NDJSON line on stdout. Logs and periodic health go to stderr.\n\n\
The API key is read from the COINAPI_KEY environment variable (never a flag, never printed). \
With --sim, coinfeed runs against its built-in CoinAPI simulator on 127.0.0.1 and needs no key.\n\n\
Stop with Ctrl-C (or SIGTERM): reading stops, queued messages are written, a summary is logged, \
exit code 0. A second Ctrl-C exits at once with code 130.",
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes: 0 clean stop (signal, closed stdout, --limit reached, replay done), 1 runtime failure \
(output write error such as a full disk, a damaged recording, a thread that panicked, an undelivered Kafka record), 2 invalid \
command line or an unusable --output-dir/--record/--metrics-listen/--kafka-brokers/--ca-file, 3 API key refused by CoinAPI, 130 second Ctrl-C.\n\n\
Example:\n  COINAPI_KEY=... coinfeed --symbols BITSTAMP_SPOT_BTC_USD,COINBASE_SPOT_ETH_USD --types trade,quote > feed.ndjson"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: coinfeed::config::RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the pipeline from recordings made with --record instead of a socket: the same lines
    /// the live run wrote (recv_time from the recording), to stdout or --output-dir. Makes no
    /// network connection and no REST request (a gap's recovery line says `offline`).
    Replay(coinfeed::config::ReplayArgs),
    /// Run the built-in CoinAPI simulator as its own process (loopback only); prints its URLs as
    /// one JSON line on stdout and serves until Ctrl-C.
    Sim(coinfeed_sim::cli::SimArgs),
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version also arrive here, with exit code 0; usage errors with 2.
            let _ = e.print();
            return std::process::ExitCode::from(e.exit_code() as u8);
        }
    };
    match cli.command {
        Some(Command::Sim(args)) => run_sim(&args),
        Some(Command::Replay(args)) => {
            let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
            match Config::from_replay_args(&args, cores) {
                Ok(config) => run_pipeline(config),
                Err(e) => usage_error(&e),
            }
        }
        None => {
            let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
            match Config::from_args(&cli.run, std::env::var("COINAPI_KEY").ok(), cores) {
                Ok(config) => run_pipeline(config),
                Err(e) => usage_error(&e),
            }
        }
    }
    .into()
}

fn usage_error(e: &ConfigError) -> Exit {
    eprintln!("error: {e}\n\nFor more information, try '--help'.");
    Exit::Usage
}

/// What must be true of the machine before anything starts, refused like a bad flag (exit 2):
/// the output directory and the recording's directory are writable, the replayed files exist,
/// and the metrics address can be listened on (bound here, handed to the pipeline).
fn prepare(config: &Config) -> Result<Option<TcpListener>, ConfigError> {
    let refuse = |flag: &'static str, problem: String, fix: &str| ConfigError { flag, problem, fix: fix.into() };
    if let Some(dir) = &config.output.dir {
        Rotating::check_dir(dir)
            .map_err(|p| refuse("--output-dir", p, "give a directory coinfeed can create files in"))?;
    }
    match &config.source {
        Source::Live { record: Some(path) } => {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Rotating::check_dir(dir)
                .map_err(|p| refuse("--record", p, "record into a directory coinfeed can write"))?;
        }
        Source::Replay { files, .. } => {
            for f in files {
                if !f.is_file() {
                    return Err(refuse(
                        "FILE",
                        format!("{} is not a readable file", f.display()),
                        "name recordings made with --record",
                    ));
                }
            }
        }
        Source::Live { record: None } => {}
    }
    match config.serve.metrics_listen {
        Some(addr) => TcpListener::bind(addr).map(Some).map_err(|e| {
            refuse(
                "--metrics-listen",
                format!("cannot listen on {addr}: {e}"),
                "choose a free port (0 lets the OS pick one)",
            )
        }),
        None => Ok(None),
    }
}

fn run_pipeline(mut config: Config) -> Exit {
    let listener = match prepare(&config) {
        Ok(l) => l,
        Err(e) => return usage_error(&e),
    };
    let live_status = std::io::stderr().is_terminal() && config.pipeline.health_interval.is_some();
    init_logging(config.log_level, live_status);
    if let Some(addr) = listener.as_ref().and_then(|l| l.local_addr().ok()) {
        log::info!("metrics on http://{addr}/metrics, health on http://{addr}/health");
    }

    let shutdown = Arc::new(Shutdown::new());
    if let Err(e) = install_interrupt_handler(Arc::clone(&shutdown)) {
        log::error!("cannot install the Ctrl-C handler: {e}");
        return Exit::Failure;
    }

    let simulator = match config.sim_rate {
        Some(rate) => match start_simulator(&mut config, rate) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("{e}");
                return Exit::Failure;
            }
        },
        None => None,
    };
    warn_if_ca_file_unused(&config);

    #[cfg(feature = "kafka")]
    let kafka = match connect_kafka(&config, &shutdown) {
        Ok(k) => k,
        Err(e) => return usage_error(&e),
    };
    let resume = match find_resume_points(&config) {
        Ok(points) => points,
        Err(e) => return usage_error(&e),
    };
    let metrics = Arc::new(Metrics::new(config.pipeline.n_workers));
    let services = app::Services {
        metrics_listener: listener,
        live_status,
        #[cfg(feature = "kafka")]
        kafka,
        resume,
    };
    let outcome = app::run(Arc::new(config), shutdown, metrics, std::io::stdout(), services);
    if let Some(s) = simulator {
        s.shutdown();
    }
    match outcome {
        Outcome::Clean => Exit::Clean,
        Outcome::KeyRefused(_) => {
            // The reader already logged CoinAPI's message; say only what happens now.
            log::error!("exiting with code {}: fix COINAPI_KEY and start again", Exit::KeyRefused as u8);
            Exit::KeyRefused
        }
        Outcome::OutputFailed(msg) => {
            log::error!("exiting with code {}: the output failed: {msg}", Exit::Failure as u8);
            Exit::Failure
        }
        Outcome::ReplayDamaged(files) => {
            log::error!(
                "exiting with code {}: {} recording(s) damaged, replayed up to the damage: {}",
                Exit::Failure as u8,
                files.len(),
                files.join("; ")
            );
            Exit::Failure
        }
        Outcome::ThreadPanicked { thread, message } => {
            log::error!("exiting with code {}: the {thread} thread panicked ({message})", Exit::Failure as u8);
            Exit::Failure
        }
        Outcome::StartFailed(msg) => {
            log::error!("exiting with code {}: {msg}", Exit::Failure as u8);
            Exit::Failure
        }
        Outcome::ShutdownTimedOut => Exit::Failure,
    }
}

/// Connects the Kafka sink and checks its topic (`--kafka-brokers`); an unreachable cluster or a
/// missing topic is refused like a bad flag (exit 2), within `kafka::CONNECT_TIMEOUT`.
#[cfg(feature = "kafka")]
fn connect_kafka(
    config: &Config,
    shutdown: &Arc<Shutdown>,
) -> Result<Option<Box<coinfeed::output::kafka::KafkaSink>>, ConfigError> {
    let Some(k) = &config.output.kafka else { return Ok(None) };
    // The final flush may take most of the stop's deadline; draining the workers takes the rest.
    let flush = config.pipeline.shutdown_timeout.mul_f64(0.6);
    coinfeed::output::kafka::KafkaSink::connect(k, Arc::clone(shutdown), flush).map(|s| Some(Box::new(s))).map_err(
        |problem| ConfigError {
            flag: "--kafka-brokers",
            problem,
            fix: "check the brokers' addresses and that the topic exists (coinfeed does not create it)".into(),
        },
    )
}

/// `--resume`: each subscribed symbol's last trade in what this shard wrote before (the newest
/// files of `--output-dir`, or the end of every partition of the Kafka topic), with the ids of
/// the trades just before it, so the first connection backfills from there without a duplicate.
fn find_resume_points(config: &Config) -> Result<Vec<ResumePoint>, ConfigError> {
    if !config.resume {
        return Ok(Vec::new());
    }
    let ours = |symbol: &[u8]| {
        config.ingest.symbols.iter().any(|f| match f {
            SymbolFilter::Exact(x) => x.as_bytes() == symbol,
            SymbolFilter::Prefix(p) => symbol.starts_with(p.as_bytes()),
        })
    };
    let mut scan = TailScan::new(config.limits.trade_ids_per_symbol, config.limits.symbols_total);
    let place = if let Some(dir) = &config.output.dir {
        let (finished, left) =
            coinfeed::output::sink::finish_leftovers(dir, "coinfeed", resume::EXTENSION).map_err(|e| ConfigError {
                flag: "--resume",
                problem: format!("cannot finish the files a previous run left in {}: {e}", dir.display()),
                fix: "check the directory's permissions, or start without --resume".into(),
            })?;
        for f in &finished {
            log::info!(
                "resume: {} was left unfinished by a previous run: cut after its last whole line and renamed",
                f.display()
            );
        }
        for f in &left {
            log::warn!(
                "resume: {} was left unfinished by a previous run; compressed, it is left as it is",
                f.display()
            );
        }
        let read = resume::scan_dir(dir, "coinfeed", resume::SCAN_BYTES_MAX, &mut scan).map_err(|e| ConfigError {
            flag: "--resume",
            problem: format!("cannot read the previous output in {}: {e}", dir.display()),
            fix: "check the directory's permissions, or start without --resume".into(),
        })?;
        format!("{} lines of the {} newest files in {}", read.lines, read.files.len(), dir.display())
    } else {
        read_kafka_tail(config, &mut scan, &ours)?
    };
    let counts = scan.counts();
    let points: Vec<ResumePoint> = scan
        .into_last_trades()
        .into_iter()
        .filter(|(symbol, _)| ours(symbol.as_bytes()))
        .map(|(symbol_id, last)| ResumePoint { symbol_id, last_trade_ns: last.time_ns, ids: last.ids })
        .collect();
    let exact = config.ingest.symbols.iter().filter(|s| matches!(s, SymbolFilter::Exact(_))).count();
    let missing: Vec<&str> = config
        .ingest
        .symbols
        .iter()
        .filter_map(|s| match s {
            SymbolFilter::Exact(x) if !points.iter().any(|p| &p.symbol_id == x) => Some(x.as_str()),
            _ => None,
        })
        .collect();
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(10).copied().collect();
        let more = if missing.len() > shown.len() {
            format!(" and {} more", missing.len() - shown.len())
        } else {
            String::new()
        };
        log::warn!(
            "resume: no trade of {} symbol(s) in what was read, so they are not backfilled: {}{more}",
            missing.len(),
            shown.join(", ")
        );
    }
    log::info!(
        "resume: read {place}: {} trade lines ({} unreadable); the last trade of {} of this shard's {exact} symbols found; each is backfilled from there once connected",
        counts.trade_lines,
        counts.bad_lines,
        points.len()
    );
    Ok(points)
}

#[cfg(feature = "kafka")]
fn read_kafka_tail(config: &Config, scan: &mut TailScan, ours: &dyn Fn(&[u8]) -> bool) -> Result<String, ConfigError> {
    use coinfeed::output::kafka;
    let Some(k) = &config.output.kafka else { return Ok("nothing".into()) };
    let per = kafka::TAIL_RECORDS_PER_PARTITION;
    let tail = kafka::read_tail(k, per, |value| {
        // The topic holds every shard's records: only this shard's symbols are looked at.
        if coinfeed::wire::scan_field(value, b"symbol_id").is_some_and(ours) {
            scan.add_line(value);
        }
    })
    .map_err(|problem| ConfigError {
        flag: "--resume",
        problem,
        fix: "check that the brokers are up, or start without --resume".into(),
    })?;
    Ok(format!(
        "the last {} records of the {} partitions of {} (at most {per} each)",
        tail.records, tail.partitions, k.topic
    ))
}

#[cfg(not(feature = "kafka"))]
fn read_kafka_tail(_: &Config, _: &mut TailScan, _: &dyn Fn(&[u8]) -> bool) -> Result<String, ConfigError> {
    Ok("nothing".into())
}

/// A `--ca-file` that neither endpoint uses (plain ws:// and http://, as under `--sim`) is
/// named at start rather than silently ignored: whoever gave it expected certificates checked.
fn warn_if_ca_file_unused(config: &Config) {
    let tls::Roots::CaFile { path, .. } = &config.ingest.roots else { return };
    let rest_tls = config.recovery.rest_url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if !config.ingest.ws.tls && !rest_tls {
        log::warn!(
            "--ca-file {} is not used: it applies to wss:// and https:// only, and this run's endpoints are ws:// and http://",
            path.display()
        );
    }
}

/// Starts the built-in simulator for `--sim` and points the config at it.
fn start_simulator(config: &mut Config, rate: u64) -> Result<sim::Sim, String> {
    let mut sim_config = sim::SimConfig { rate_per_sec: rate, ..sim::SimConfig::default() };
    let symbols = &config.ingest.symbols;
    let exact: Vec<String> = symbols
        .iter()
        .filter_map(|s| match s {
            SymbolFilter::Exact(x) => Some(x.clone()),
            SymbolFilter::Prefix(_) => None,
        })
        .collect();
    // Prefix filters match among the simulator's default symbols.
    if exact.len() == symbols.len() {
        sim_config.symbols = exact;
    }
    let s = sim::Sim::start(sim_config).map_err(|e| format!("cannot start the built-in simulator: {e}"))?;
    config
        .use_endpoints(&s.ws_url(), &s.rest_url())
        .map_err(|e| format!("the simulator gave an unusable address: {e}"))?;
    log::info!("running against the built-in simulator at {} ({rate} msg/s)", s.ws_url());
    Ok(s)
}

fn run_sim(args: &sim::cli::SimArgs) -> Exit {
    init_logging(log::LevelFilter::Info, false);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        log::error!("cannot install the Ctrl-C handler: {e}");
        return Exit::Failure;
    }
    match sim::cli::run_standalone(args, &stop) {
        Ok(()) => Exit::Clean,
        Err(e) => {
            log::error!("simulator: {e}");
            Exit::Failure
        }
    }
}

/// First Ctrl-C (or SIGTERM): graceful stop. Second: exit at once with 130.
fn install_interrupt_handler(shutdown: Arc<Shutdown>) -> Result<(), ctrlc::Error> {
    let count = AtomicU32::new(0);
    ctrlc::set_handler(move || {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            log::info!("interrupted: stopping gracefully (press Ctrl-C again to exit at once)");
            shutdown.request();
        } else {
            eprintln!("interrupted twice: exiting at once");
            std::process::exit(Exit::SecondInterrupt as i32);
        }
    })
}

/// Logs go to stderr only; stdout belongs to the NDJSON output. Under a live status line each
/// log line first erases it (the next redraw brings it back below).
fn init_logging(level: log::LevelFilter, live_status: bool) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_location_level(log::LevelFilter::Off)
        .add_filter_allow_str("coinfeed")
        .build();
    let _ = simplelog::WriteLogger::init(level, config, Stderr { live_status, line: Vec::with_capacity(512) });
}

/// Stderr for the logger: each log line is written whole, with one write under stderr's lock
/// (the status line is drawn the same way, so neither lands inside the other), and with a live
/// status line it first erases that line.
struct Stderr {
    live_status: bool,
    line: Vec<u8>,
}

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.line.is_empty() && self.live_status {
            self.line.extend_from_slice(b"\r\x1b[2K");
        }
        self.line.extend_from_slice(buf);
        if buf.last() == Some(&b'\n') {
            self.flush()?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let mut err = std::io::stderr().lock();
        err.write_all(&self.line)?;
        self.line.clear();
        err.flush()
    }
}
