//! The standalone simulator (`coinfeed sim ...`): its flags, their translation into a
//! [`SimConfig`], and the run loop that prints the URLs as one JSON line on stdout and waits for
//! the stop flag. `main.rs` owns argument parsing and the Ctrl-C handler; this module owns only
//! what the simulator needs from them.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Sim, SimConfig};

/// How often `run_standalone` checks the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Flags of `coinfeed sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// WebSocket listen address; loopback only (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// REST listen address; loopback only (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub rest_listen: SocketAddr,
    /// Symbol ids to serve, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "BITSTAMP_SPOT_BTC_USD,COINBASE_SPOT_ETH_USD,BINANCE_SPOT_SOL_USDT,KRAKEN_SPOT_XRP_EUR,BINANCEFTS_PERP_BTC_USDT"
    )]
    pub symbols: Vec<String>,
    /// Data messages per second per connection over all subscribed streams; 0 = flood.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Per connection: stop sending data after this many messages (heartbeats continue).
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Levels per side in book snapshots (book5/20/50 are also capped by their N).
    #[arg(long, default_value_t = 20)]
    pub book_levels: usize,
    /// Trades kept per symbol for REST trades/latest and trades/history (oldest go first).
    #[arg(long, default_value_t = 200_000)]
    pub trade_store_per_symbol: usize,
    /// A `book` stream sends a full snapshot instead of a delta after every this many deltas
    /// (0 = only when a stream starts).
    #[arg(long, default_value_t = 0)]
    pub book_snapshot_every: u64,
    /// Serve wss:// and https:// (through a TLS front each) with this PEM certificate chain,
    /// the leaf first; the plain ports stay open behind them. Needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl SimArgs {
    pub fn to_config(&self) -> SimConfig {
        SimConfig {
            symbols: self.symbols.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            rate_per_sec: self.rate,
            max_messages: self.max_messages,
            book_levels: self.book_levels,
            trade_store_per_symbol: self.trade_store_per_symbol,
            book_snapshot_every: self.book_snapshot_every,
            ws_listen: self.listen,
            rest_listen: self.rest_listen,
            ..SimConfig::default()
        }
    }
}

/// Starts the simulator, prints `{"ws_url":...,"rest_url":...}` on one stdout line (the
/// `wss://` and `https://` fronts' with `--tls-cert`), and runs until `stop` becomes true.
pub fn run_standalone(args: &SimArgs, stop: &AtomicBool) -> io::Result<()> {
    let sim = Sim::start(args.to_config())?;
    let fronts = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| io::Error::new(e.kind(), format!("sim cannot read {}: {e}", p.display())))
            };
            let tls = super::tls::ServerTls::from_pem(&read(cert)?, &read(key)?)?;
            let ws = super::tls::TlsFront::start(tls.clone(), sim.ws_addr())?;
            let rest = super::tls::TlsFront::start(tls, sim.rest_addr())?;
            Some((ws, rest))
        }
        _ => None,
    };
    let (ws_url, rest_url) = match &fronts {
        Some((ws, rest)) => (format!("wss://{}/v1/", ws.addr()), format!("https://{}", rest.addr())),
        None => (sim.ws_url(), sim.rest_url()),
    };
    let line = format!(
        "{{\"ws_url\":{},\"rest_url\":{}}}",
        super::gen::json_string(&ws_url),
        super::gen::json_string(&rest_url)
    );
    {
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(STOP_POLL);
    }
    if let Some((ws, rest)) = fronts {
        ws.shutdown();
        rest.shutdown();
    }
    sim.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn defaults_match_sim_config() {
        let cmd = Cmd::try_parse_from(["sim"]).expect("defaults parse");
        let cfg = cmd.sim.to_config();
        assert_eq!(cfg.symbols, super::super::DEFAULT_SYMBOLS);
        assert_eq!(cfg.rate_per_sec, 1000);
        assert_eq!(cfg.book_levels, 20);
        assert_eq!(cfg.max_messages, None);
        assert_eq!(cfg.trade_store_per_symbol, SimConfig::default().trade_store_per_symbol);
        assert_eq!(cfg.book_snapshot_every, 0);
        assert!(cfg.ws_listen.ip().is_loopback() && cfg.ws_listen.port() == 0);
    }

    #[test]
    fn flags_parse() {
        let cmd = Cmd::try_parse_from([
            "sim",
            "--symbols",
            "A_SPOT_B_C,D_SPOT_E_F",
            "--rate",
            "0",
            "--max-messages",
            "10",
            "--rest-listen",
            "127.0.0.1:0",
            "--trade-store-per-symbol",
            "5000",
            "--book-snapshot-every",
            "100",
        ])
        .expect("flags parse");
        let cfg = cmd.sim.to_config();
        assert_eq!(cfg.symbols, ["A_SPOT_B_C", "D_SPOT_E_F"]);
        assert_eq!(cfg.rate_per_sec, 0);
        assert_eq!(cfg.max_messages, Some(10));
        assert_eq!(cfg.trade_store_per_symbol, 5000);
        assert_eq!(cfg.book_snapshot_every, 100);
    }

    /// The standalone run serves until the stop flag is set, then shuts down promptly.
    #[test]
    fn standalone_stops_on_flag() {
        let cmd = Cmd::try_parse_from(["sim", "--rate", "10"]).expect("flags parse");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let runner = std::thread::spawn(move || run_standalone(&cmd.sim, &flag));
        let t0 = std::time::Instant::now();
        stop.store(true, Ordering::Relaxed);
        let result = runner.join().expect("runner did not panic");
        assert!(result.is_ok(), "{result:?}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }

    /// A non-loopback address is refused with an error that names it.
    #[test]
    fn refuses_non_loopback() {
        let cmd = Cmd::try_parse_from(["sim", "--listen", "0.0.0.0:0"]).expect("flags parse");
        let stop = AtomicBool::new(true);
        let err = run_standalone(&cmd.sim, &stop).expect_err("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("0.0.0.0:0"), "{err}");
    }
}
