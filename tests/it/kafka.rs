//! The Kafka sink against a real broker: tansu (a Kafka-protocol broker from crates.io, built by
//! `tests/kafka/install.sh`), started here on a free loopback port with in-memory storage and
//! stopped by its pid. Compiled only with the `kafka` feature: `./run.sh kafka-test` installs the
//! broker and runs these. The records are read back with librdkafka's own consumer.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coinfeed::config::shard::{partition_of, Shard};
use coinfeed_sim::{EventKind, Sim, SimConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::harness::*;

/// A tansu broker on 127.0.0.1, killed when dropped.
struct Broker {
    child: Child,
    url: String,
    addr: String,
    bin: PathBuf,
    log: PathBuf,
}

impl Broker {
    fn start() -> Broker {
        let bin = std::env::var_os("COINFEED_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/kafka-tools/bin/tansu"));
        assert!(bin.is_file(), "no broker at {}: run tests/kafka/install.sh (./run.sh kafka-test does)", bin.display());
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let log = std::env::temp_dir().join(format!("coinfeed-tansu-{}-{port}.log", std::process::id()));
        let out = File::create(&log).expect("broker log");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start tansu");
        let broker = Broker { child, url, addr, bin, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&broker.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s:\n{}",
                broker.addr,
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(&self.bin)
            .args(["topic", "create", name, "--partitions", &partitions.to_string(), "--broker", &self.url])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create");
        assert!(status.success(), "tansu topic create {name} failed:\n{}", self.log());
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(ok.success(), "kill -{name} tansu");
    }

    /// Every record of the topic, partition by partition, in offset order.
    fn read_all(&self, topic: &str) -> Vec<Record> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", "coinfeed-test")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(topic), timeout).expect("metadata");
        let n = metadata.topics()[0].partitions().len() as i32;
        let mut list = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for p in 0..n {
            let (low, high) = consumer.fetch_watermarks(topic, p, timeout).expect("watermarks");
            if high > low {
                list.add_partition_offset(topic, p, Offset::Offset(low)).expect("assign");
                ends.insert(p, high);
            }
        }
        let mut out = Vec::new();
        if ends.is_empty() {
            return out;
        }
        consumer.assign(&list).expect("assign");
        // Past the watermarks, until 2 s pass without a record: tansu's high watermark can be
        // short of its last records (see README).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut quiet_since: Option<Instant> = None;
        loop {
            assert!(Instant::now() < deadline, "reading {topic} back took over 60 s ({} records)", out.len());
            if ends.is_empty() && quiet_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(2)) {
                break;
            }
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                quiet_since.get_or_insert_with(Instant::now);
                continue;
            };
            quiet_since = None;
            let m = m.expect("record");
            let key = m.key().map(|k| String::from_utf8(k.to_vec()).expect("utf8 key"));
            let value = String::from_utf8(m.payload().unwrap_or_default().to_vec()).expect("utf8 value");
            out.push(Record { partition: m.partition(), key, value });
            if ends.get(&m.partition()).is_some_and(|&end| m.offset() + 1 >= end) {
                ends.remove(&m.partition());
            }
        }
        out.sort_by_key(|r| r.partition);
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A paused broker must be resumed to die cleanly; SIGKILL works on a stopped one too.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

struct Record {
    partition: i32,
    key: Option<String>,
    value: String,
}

impl Record {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.value).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.value))
    }
}

fn kafka_args(ws: &str, rest: &str, symbols: &str, types: &str, broker: &Broker, extra: &[&str]) -> Vec<String> {
    let mut v = args(ws, rest, symbols, types, &["--kafka-brokers", &broker.addr, "--kafka-topic", "feed"]);
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn health(feed: &Feed, key: &str) -> u64 {
    last_health(&feed.stderr.snapshot(), key)
}

/// Lines given to the sink must all be reported on: delivered or failed.
fn assert_deliveries_close(s: &[(String, String)]) {
    let lines =
        field(s, "written") + field(s, "recovered_written") + field(s, "book_top_lines") + field(s, "control_lines");
    assert_eq!(field(s, "delivered") + field(s, "delivery_failed"), lines, "{s:?}");
    assert_accounting_closes(s);
}

/// Proves a broker that cannot be reached at start is a clear error (exit 2, naming the flag and
/// the address) within the 10 s metadata wait, not a hang; and a missing topic likewise.
#[test]
fn an_unreachable_broker_or_a_missing_topic_is_refused_at_start() {
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let refused = |brokers: &str, topic: &str| {
        let mut a = args(&sim.ws_url(), &sim.rest_url(), "BITSTAMP_SPOT_BTC_USD", "trade", &[]);
        a.extend(["--kafka-brokers", brokers, "--kafka-topic", topic].map(String::from));
        let mut feed = Feed::start(&a, FeedOptions::default());
        let (status, took) = feed.wait_exit(Duration::from_secs(20));
        (status.code(), took, feed.stderr_text())
    };
    // The listener was dropped: nothing listens on that port now.
    let (code, took, err) = refused(&closed.to_string(), "feed");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--kafka-brokers: cannot reach the Kafka cluster at 127.0.0.1:"), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let broker = Broker::start();
    let (code, _, err) = refused(&broker.addr, "no-such-topic");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no-such-topic"), "{err}");
}

/// Proves the issue's first scenario: 3 shards of 30 symbols into one topic of 6 partitions.
/// Each symbol is streamed by exactly one shard; consumed back, every message is there exactly
/// once, on the partition Kafka's murmur2 gives its key, in its stream's order; `delivered`
/// equals what the topic holds.
#[test]
fn three_shards_write_every_message_exactly_once_into_one_topic() {
    let broker = Broker::start();
    broker.create_topic("feed", 6);
    let symbols: Vec<String> = (0..30).map(|i| format!("SIMK_SPOT_C{i:02}_USD")).collect();
    let per_connection = 3_000;
    let sim = Sim::start(SimConfig {
        symbols: symbols.clone(),
        rate_per_sec: 1_000,
        max_messages: Some(per_connection),
        ..SimConfig::default()
    })
    .expect("sim");
    let list = symbols.join(",");
    let mut shards: Vec<Feed> = (0..3)
        .map(|i| {
            let shard = format!("{i}/3");
            let a = kafka_args(&sim.ws_url(), &sim.rest_url(), &list, "trade,quote", &broker, &["--shard", &shard]);
            Feed::start(&a, FeedOptions::default())
        })
        .collect();
    for (i, feed) in shards.iter().enumerate() {
        let all = wait_health(feed, Duration::from_secs(60), "written", per_connection);
        assert!(all, "shard {i} did not write {per_connection} messages; stderr:\n{}", feed.stderr_text());
    }
    let mut delivered = 0;
    let mut written = 0;
    for feed in &mut shards {
        feed.signal("INT");
        let (status, _) = feed.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "stderr:\n{}", feed.stderr_text());
        let s = feed.summary();
        assert_eq!((field(&s, "received"), field(&s, "dropped"), field(&s, "delivery_failed")), (per_connection, 0, 0));
        assert_deliveries_close(&s);
        delivered += field(&s, "delivered");
        written += field(&s, "written");
    }

    // Each connection subscribed to exactly its shard's symbols.
    let hellos: Vec<String> = sim
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Hello { text } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(hellos.len(), 3, "{hellos:?}");
    for s in &symbols {
        let owners = hellos.iter().filter(|h| h.contains(&format!("\"{s}"))).count();
        assert_eq!(owners, 1, "{s} was subscribed by {owners} shards");
    }

    let records = broker.read_all("feed");
    assert_eq!(records.len() as u64, delivered, "the topic holds what the shards call delivered");
    let mut seen = HashSet::new();
    let mut last_seq: HashMap<(String, String), u64> = HashMap::new();
    let mut market = 0;
    for r in &records {
        let v = r.json();
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        if kind != "trade" && kind != "quote" {
            continue;
        }
        market += 1;
        let symbol = v["symbol_id"].as_str().expect("symbol_id").to_string();
        assert_eq!(r.key.as_deref(), Some(symbol.as_str()), "keyed by symbol_id: {}", r.value);
        assert_eq!(r.partition as u32, partition_of(symbol.as_bytes(), 6), "murmur2 partition of {symbol}");
        let seq = v["sequence"].as_u64().expect("sequence");
        assert!(seen.insert((kind.clone(), symbol.clone(), seq)), "twice: {}", r.value);
        let prev = last_seq.insert((kind, symbol), seq);
        assert!(prev.is_none_or(|p| p < seq), "out of order within its partition: {} after {prev:?}", r.value);
    }
    assert_eq!(market, written, "every market line once");
    assert_eq!(market, 3 * per_connection);
    let shard_of = |s: &str| (0..3).find(|&i| Shard { index: i, count: 3 }.keeps(s));
    assert!(symbols.iter().all(|s| shard_of(s).is_some()));
    eprintln!("3 shards: {delivered} records delivered, {market} market records, 6 partitions");
}

/// Proves the issue's second scenario: the broker paused (SIGSTOP) for 10 s under 5,000 msg/s.
/// The CoinAPI connection stays up, memory stays bounded, and after SIGCONT every message that
/// fit the budget arrives; whatever was shed is counted (and gap-marked).
#[test]
fn a_paused_broker_is_absorbed_and_the_connection_stays_up() {
    let broker = Broker::start();
    broker.create_topic("feed", 6);
    let symbols: Vec<String> = (0..5).map(|i| format!("SIMK_SPOT_P{i}_USD")).collect();
    let sim =
        Sim::start(SimConfig { symbols: symbols.clone(), rate_per_sec: 5_000, ..SimConfig::default() }).expect("sim");
    // A small producer queue, so the pause fills it and the writer really waits.
    let small = ["--kafka-opt", "queue.buffering.max.messages=5000"];
    let a = kafka_args(&sim.ws_url(), &sim.rest_url(), &symbols.join(","), "trade,quote", &broker, &small);
    let mut feed = Feed::start(&a, FeedOptions::default());
    assert!(wait_health(&feed, Duration::from_secs(30), "delivered", 10_000), "stderr:\n{}", feed.stderr_text());
    broker.signal("STOP");
    let paused_at = health(&feed, "received");
    // The scenario's fault is a 10 s pause: the duration is the test input, not a wait.
    std::thread::sleep(Duration::from_secs(10));
    let during = health(&feed, "received");
    broker.signal("CONT");
    assert!(during >= paused_at + 20_000, "the reader kept reading during the pause: {paused_at} -> {during}");
    eprintln!("paused: received {paused_at} -> {during}");
    let caught_up = wait_health(&feed, Duration::from_secs(60), "delivered", during);
    assert!(caught_up, "the backlog was not delivered after SIGCONT; stderr:\n{}", feed.stderr_text());
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "stderr:\n{}", feed.stderr_text());
    let s = feed.summary();
    eprintln!("broker paused 10 s at 5,000 msg/s: {s:?}");
    assert_eq!(field(&s, "connections"), 1, "the CoinAPI connection stayed up");
    assert_eq!(field(&s, "delivery_failed"), 0);
    assert_deliveries_close(&s);
    let peak = field(&s, "peak_rss_kib");
    assert!(peak < 256 * 1024, "memory bounded by --buffer-mib and the producer queue: peak {peak} KiB");

    let records = broker.read_all("feed");
    assert_eq!(records.len() as u64, field(&s, "delivered"));
    let market = records.iter().filter(|r| r.value.contains(r#""source":"ws""#)).count() as u64;
    assert_eq!(market, field(&s, "written"));
    if field(&s, "dropped") > 0 {
        assert!(records.iter().any(|r| r.value.starts_with(r#"{"type":"gap""#)), "shedding is gap-marked");
    }
}

/// Proves Ctrl-C while the broker is stopped keeps the stop's deadline: the sink flushes for its
/// share of --shutdown-timeout, purges what is unacknowledged and counts it as failed; the
/// accounting still closes, and the exit code (1) says records were lost.
#[test]
fn a_stop_while_the_broker_is_stopped_keeps_its_deadline_and_counts_the_loss() {
    let broker = Broker::start();
    broker.create_topic("feed", 6);
    let symbols = "SIMK_SPOT_S0_USD,SIMK_SPOT_S1_USD";
    let sim = Sim::start(SimConfig {
        symbols: symbols.split(',').map(String::from).collect(),
        rate_per_sec: 2_000,
        ..SimConfig::default()
    })
    .expect("sim");
    let small = ["--kafka-opt", "queue.buffering.max.messages=2000", "--shutdown-timeout", "3"];
    let a = kafka_args(&sim.ws_url(), &sim.rest_url(), symbols, "trade,quote", &broker, &small);
    let mut feed = Feed::start(&a, FeedOptions::default());
    assert!(wait_health(&feed, Duration::from_secs(30), "delivered", 2_000), "stderr:\n{}", feed.stderr_text());
    broker.signal("STOP");
    let at = health(&feed, "received");
    assert!(wait_health(&feed, Duration::from_secs(30), "received", at + 6_000), "stderr:\n{}", feed.stderr_text());
    feed.signal("INT");
    let (status, took) = feed.wait_exit(Duration::from_secs(20));
    broker.signal("CONT");
    let err = feed.stderr_text();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(3) + Duration::from_millis(1500), "the stop took {took:?}:\n{err}");
    assert!(err.contains("not acknowledged after") && err.contains("records were not delivered to Kafka"), "{err}");
    let s = feed.summary();
    assert!(field(&s, "delivery_failed") > 0, "{s:?}");
    assert_deliveries_close(&s);
    eprintln!(
        "stop with the broker stopped: {took:?}, delivered {} failed {}",
        field(&s, "delivered"),
        field(&s, "delivery_failed")
    );
}

/// Proves the issue's third scenario: a shard killed (SIGKILL) during an outage of the feed and
/// restarted with --resume after 5 s: it finds each symbol's last trade in the topic and
/// backfills from there, so every trade of the outage is in the topic exactly once.
#[test]
fn a_killed_shard_restarted_with_resume_leaves_no_hole() {
    let broker = Broker::start();
    broker.create_topic("feed", 6);
    let symbols: Vec<String> = (0..5).map(|i| format!("SIMK_SPOT_R{i}_USD")).collect();
    let neighbours = ["SIMK_SPOT_N0_USD", "SIMK_SPOT_N1_USD"];
    let all: Vec<String> = symbols.iter().cloned().chain(neighbours.map(String::from)).collect();
    let sim = Sim::start(SimConfig { symbols: all, rate_per_sec: 250, ..SimConfig::default() }).expect("sim");
    let list = symbols.join(",");
    let extra = ["--backoff-max", "1", "--recovery-trades-limit", "1000"];
    // Another shard writes into the same topic all along, as in a real deployment: the restart
    // must read the topic's end while it grows.
    let n = kafka_args(&sim.ws_url(), &sim.rest_url(), &neighbours.join(","), "trade,quote", &broker, &extra);
    let mut neighbour = Feed::start(&n, FeedOptions::default());
    let a = kafka_args(&sim.ws_url(), &sim.rest_url(), &list, "trade", &broker, &extra);
    let mut first = Feed::start(&a, FeedOptions::default());
    assert!(wait_health(&first, Duration::from_secs(30), "delivered", 500), "stderr:\n{}", first.stderr_text());
    // The feed goes on without us: trades are generated while nobody is connected.
    sim.outage(Duration::from_secs(7));
    first.signal("KILL");
    let _ = first.wait_exit(Duration::from_secs(10));
    let killed_at = Instant::now();
    // The scenario's downtime: restarted after 5 s.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(killed_at.elapsed()));
    let mut resumed_args = a.clone();
    resumed_args.push("--resume".into());
    let mut second = Feed::start(&resumed_args, FeedOptions::default());
    let recovered = wait_health(&second, Duration::from_secs(60), "recovery_ok", symbols.len() as u64);
    assert!(recovered, "no backfill for every symbol; stderr:\n{}", second.stderr_text());
    second.signal("INT");
    neighbour.signal("INT");
    let (status, _) = second.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "stderr:\n{}", second.stderr_text());
    assert!(neighbour.wait_exit(Duration::from_secs(20)).0.success(), "{}", neighbour.stderr_text());
    assert!(
        second.stderr_text().contains("the last trade of 5 of this shard's 5 symbols found"),
        "{}",
        second.stderr_text()
    );
    let s = second.summary();
    assert_eq!(field(&s, "delivery_failed"), 0);
    assert_deliveries_close(&s);

    let records = broker.read_all("feed");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let v = r.json();
        if v["type"] == "trade" && symbols.iter().any(|s| v["symbol_id"] == s.as_str()) {
            *counts.entry(v["uuid"].as_str().expect("uuid").to_ascii_lowercase()).or_default() += 1;
        }
    }
    let twice = counts.values().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "trades written twice");
    let mut outage_trades = 0;
    for symbol in &symbols {
        let stored = sim.stored_trades(symbol);
        outage_trades += stored.iter().filter(|t| !t.streamed).count();
        // Everything up to the newest trade in the topic (store order is generation order).
        let last = stored.iter().rposition(|t| counts.contains_key(&t.uuid)).expect("some trade of the symbol");
        let missing: Vec<&str> =
            stored[..=last].iter().filter(|t| !counts.contains_key(&t.uuid)).map(|t| t.uuid.as_str()).collect();
        assert!(
            missing.is_empty(),
            "{symbol}: {} trades missing from the topic, e.g. {:?}",
            missing.len(),
            missing.first()
        );
    }
    assert!(outage_trades >= 5 * 150, "the outage generated trades: {outage_trades}");
    let ours = |v: &serde_json::Value| symbols.iter().any(|s| v["symbol_id"] == s.as_str());
    let recoveries: Vec<serde_json::Value> =
        records.iter().map(Record::json).filter(|v| v["type"] == "recovery" && ours(v)).collect();
    eprintln!(
        "resume: {outage_trades} trades generated while down; {} recovery lines; recovered {}; {} requests; {:.1} s",
        recoveries.len(),
        recoveries.iter().filter_map(|r| r["recovered"].as_u64()).sum::<u64>(),
        rest_requests(&sim).len(),
        killed_at.elapsed().as_secs_f64()
    );
}
