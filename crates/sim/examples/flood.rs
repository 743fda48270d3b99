//! Measures the simulator's flood throughput on its own: one WebSocket client on loopback
//! subscribes to every symbol's trades (or the types named on the command line) with the
//! simulator in flood mode (`rate_per_sec: 0`) and throws the bytes away without decoding them,
//! so the figure is the simulator's generation rate, not a client's parse rate.
//!
//! `cargo run --release -p coinfeed-sim --example flood -- [seconds] [types]`, e.g.
//! `-- 5 trade` or `-- 5 trade,quote,book20`. Prints one line per run with frames per second
//! (as counted by `Sim::data_sent`), MB/s read, and the trades the store holds at the end.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use coinfeed_sim::{Sim, SimConfig, DEFAULT_SYMBOLS};

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let types = args.next().unwrap_or_else(|| "trade".to_string());
    let types_json: Vec<String> = types.split(',').map(|t| format!("\"{t}\"")).collect();

    let sim = match Sim::start(SimConfig { rate_per_sec: 0, ..SimConfig::default() }) {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("flood: cannot start the simulator: {e}");
            std::process::exit(1);
        }
    };
    let tcp = TcpStream::connect(sim.ws_addr()).unwrap_or_else(|e| {
        eprintln!("flood: cannot connect: {e}");
        std::process::exit(1);
    });
    let req = tungstenite::ClientRequestBuilder::new(sim.ws_url().parse().unwrap_or_else(|e| {
        eprintln!("flood: bad url: {e}");
        std::process::exit(1);
    }))
    .with_header("X-CoinAPI-Key", "flood");
    let (mut ws, _) = tungstenite::client::client(req, tcp).unwrap_or_else(|e| {
        eprintln!("flood: upgrade failed: {e}");
        std::process::exit(1);
    });
    let hello = format!(
        "{{\"type\":\"hello\",\"apikey\":\"flood\",\"heartbeat\":false,\"subscribe_data_type\":[{}]}}",
        types_json.join(",")
    );
    if let Err(e) = ws.send(tungstenite::Message::text(hello)) {
        eprintln!("flood: cannot send hello: {e}");
        std::process::exit(1);
    }
    let tcp = ws.get_mut();
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes: u64 = 0;
    // One second of warm-up, then the measured window.
    let warm_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < warm_until {
        if let Ok(n) = tcp.read(&mut buf) {
            bytes += n as u64;
        }
    }
    let (frames0, bytes0, t0) = (sim.data_sent(), bytes, Instant::now());
    let end = t0 + Duration::from_secs(seconds);
    while Instant::now() < end {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(_) => {}
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let frames = sim.data_sent() - frames0;
    let stored: usize = DEFAULT_SYMBOLS.iter().map(|s| sim.stored_trade_count(s)).sum();
    println!(
        "flood {types}: {:.0} frames/s, {:.1} MB/s over {secs:.1} s; {stored} trades stored",
        frames as f64 / secs,
        (bytes - bytes0) as f64 / secs / 1e6,
    );
    sim.shutdown();
}
