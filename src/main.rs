//! The `coinfeed` binary: parse the command line, set up logging and the Ctrl-C handler, run the
//! pipeline (or the standalone simulator) and map the outcome to an exit code. Everything else
//! lives in the library.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use coinfeed::config::{Config, SymbolFilter};
use coinfeed::pipeline::{self, PipelineExit};
use coinfeed::shutdown::Shutdown;
use coinfeed::stats::Stats;
use coinfeed_sim as sim;

/// Exit codes, also listed in `--help` and README.md.
mod exit_code {
    pub const RUNTIME_FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const KEY_REFUSED: u8 = 3;
    pub const SECOND_INTERRUPT: i32 = 130;
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
    after_help = "Exit codes: 0 clean stop (signal or closed stdout), 1 runtime failure, \
2 invalid command line, 3 API key refused by CoinAPI, 130 second Ctrl-C.\n\n\
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
    /// Run the built-in CoinAPI simulator as its own process (loopback only); prints its URLs as
    /// one JSON line on stdout and serves until Ctrl-C.
    Sim(coinfeed_sim::cli::SimArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version also arrive here, with exit code 0; usage errors with 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match cli.command {
        Some(Command::Sim(args)) => run_sim(&args),
        None => run_ingest(&cli.run),
    }
}

fn run_ingest(args: &coinfeed::config::RunArgs) -> ExitCode {
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let mut config = match Config::from_args(args, std::env::var("COINAPI_KEY").ok(), cores) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}\n\nFor more information, try '--help'.");
            return ExitCode::from(exit_code::USAGE);
        }
    };
    init_logging(config.log_level);

    let shutdown = Arc::new(Shutdown::new());
    if let Err(e) = install_interrupt_handler(Arc::clone(&shutdown)) {
        log::error!("cannot install the Ctrl-C handler: {e}");
        return ExitCode::from(exit_code::RUNTIME_FAILURE);
    }

    let simulator = if config.sim {
        let mut sim_config = sim::SimConfig { rate_per_sec: config.sim_rate, ..sim::SimConfig::default() };
        let exact: Vec<String> = config
            .symbols
            .iter()
            .filter_map(|s| match s {
                SymbolFilter::Exact(x) => Some(x.clone()),
                SymbolFilter::Prefix(_) => None,
            })
            .collect();
        // Prefix filters match among the simulator's default symbols.
        if exact.len() == config.symbols.len() {
            sim_config.symbols = exact;
        }
        match sim::Sim::start(sim_config) {
            Ok(s) => {
                if let Err(e) = config.use_endpoints(&s.ws_url(), &s.rest_url()) {
                    log::error!("the simulator gave an unusable address: {e}");
                    return ExitCode::from(exit_code::RUNTIME_FAILURE);
                }
                log::info!("running against the built-in simulator at {} ({} msg/s)", s.ws_url(), config.sim_rate);
                Some(s)
            }
            Err(e) => {
                log::error!("cannot start the built-in simulator: {e}");
                return ExitCode::from(exit_code::RUNTIME_FAILURE);
            }
        }
    } else {
        None
    };

    let stats = Stats::default();
    let exit = pipeline::run(&config, &shutdown, &stats, std::io::stdout());
    if let Some(s) = simulator {
        s.shutdown();
    }
    match exit {
        PipelineExit::Clean => ExitCode::SUCCESS,
        PipelineExit::KeyRefused(_) => {
            // The reader already logged CoinAPI's message; say only what happens now.
            log::error!("exiting with code {}: fix COINAPI_KEY and start again", exit_code::KEY_REFUSED);
            ExitCode::from(exit_code::KEY_REFUSED)
        }
        PipelineExit::OutputFailed(msg) => {
            log::error!("exiting: stdout failed: {msg}");
            ExitCode::from(exit_code::RUNTIME_FAILURE)
        }
    }
}

fn run_sim(args: &sim::cli::SimArgs) -> ExitCode {
    init_logging(log::LevelFilter::Info);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        log::error!("cannot install the Ctrl-C handler: {e}");
        return ExitCode::from(exit_code::RUNTIME_FAILURE);
    }
    match sim::cli::run_standalone(args, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("simulator: {e}");
            ExitCode::from(exit_code::RUNTIME_FAILURE)
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
            std::process::exit(exit_code::SECOND_INTERRUPT);
        }
    })
}

/// Logs go to stderr only; stdout belongs to the NDJSON output.
fn init_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_location_level(log::LevelFilter::Off)
        .add_filter_allow_str("coinfeed")
        .build();
    let _ = simplelog::WriteLogger::init(level, config, std::io::stderr());
}
