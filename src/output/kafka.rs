//! The Kafka sink (`--kafka-brokers`, `--kafka-topic`; cargo feature `kafka`): each output line
//! becomes one record of the topic, keyed by its `symbol_id` (control lines without a symbol have
//! no key), through librdkafka's `BaseProducer` driven by the writer thread itself: no async
//! runtime, no thread of ours. The producer is idempotent with `acks=all` and zstd, and uses the
//! `murmur2_random` partitioner, so a symbol lands on the partition a Java client would pick.
//!
//! Accounting: every record handed to librdkafka comes back exactly once as a delivery report,
//! counted as `delivered` or `delivery_failed`; at the end the writer flushes within its share
//! of `--shutdown-timeout` and purges what is left, whose reports come back as failed, so
//! `delivered + delivery_failed` equals the lines given to the sink.
//!
//! Back-pressure: librdkafka's own queue is bounded (`KAFKA_QUEUE_KIB`, `KAFKA_QUEUE_MESSAGES`).
//! When it is full (a slow or gone broker) the writer waits in `poll`, so the batch channel and
//! then the workers' queues fill: the reader's memory budget absorbs the stall and sheds, counted,
//! only when it is full, exactly as with a slow stdout. The CoinAPI connection is not touched.
//!
//! `--resume` reads the end of every partition back (`read_tail`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::clock::unix_now_ns;
use crate::config::KafkaConfig;
use crate::shutdown::Shutdown;
use crate::wire::{parse_timestamp_ns, scan_field};

/// librdkafka's queue of records not yet acknowledged, in KiB: the sink's memory on top of
/// `--buffer-mib` (a broker stall is absorbed here first, then in the workers' buffer).
pub const KAFKA_QUEUE_KIB: u64 = 32 * 1024;
/// The same queue's bound in records.
pub const KAFKA_QUEUE_MESSAGES: u64 = 200_000;
/// How long the start may wait for the cluster's metadata (a broker that cannot be reached is a
/// clear error, not a hang).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One line in `LATENCY_SAMPLE` carries its receive time to the delivery report, for the
/// receive-to-acknowledgement latency figures.
const LATENCY_SAMPLE: u64 = 16;
/// Log lines about the cluster (broker down, ...) at most this often; the rest are counted.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the delivery reports said, read by the writer into the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deliveries {
    pub delivered: u64,
    pub failed: u64,
    /// Median and 99th percentile of receive-to-acknowledgement, microseconds (bucket upper
    /// bounds, about 19% wide), over the sampled records delivered.
    pub ack_p50_us: Option<u64>,
    pub ack_p99_us: Option<u64>,
}

/// Buckets of the latency histogram: four per power of two of microseconds (~19% wide), up to
/// about 2^32 µs (71 minutes); longer ones fall in the last.
const BUCKETS: usize = 128;

/// The producer's context: librdkafka calls it from `poll`, on the writer's thread.
#[derive(Debug)]
struct Reports {
    delivered: AtomicU64,
    failed: AtomicU64,
    /// The first failure of each kind is logged; the rest are counted.
    failure_logged: Mutex<Vec<String>>,
    /// Cluster errors: when one was last logged, and how many were not.
    errors: Mutex<(Option<Instant>, u64)>,
    latency: Box<[AtomicU64]>,
}

impl Reports {
    fn new() -> Reports {
        Reports {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failure_logged: Mutex::new(Vec::new()),
            errors: Mutex::new((None, 0)),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn note_failure(&self, what: String) {
        let mut seen = self.failure_logged.lock();
        if seen.len() < 16 && !seen.contains(&what) {
            log::error!("kafka: a record was not delivered: {what} (further failures like it are only counted: delivery_failed)");
            seen.push(what);
        }
    }

    fn snapshot(&self) -> Deliveries {
        let counts: Vec<u64> = self.latency.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        Deliveries {
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            ack_p50_us: percentile(&counts, 0.50),
            ack_p99_us: percentile(&counts, 0.99),
        }
    }
}

/// The bucket of a latency: 1, 2, 3 µs, then 4 per power of two.
fn bucket(us: u64) -> usize {
    let us = us.max(1);
    if us < 4 {
        return us as usize;
    }
    let log2 = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (log2 - 2)) & 3) as usize;
    ((log2 - 2) * 4 + sub + 4).min(BUCKETS - 1)
}

/// The upper bound of a bucket, microseconds.
fn bucket_upper(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let (log2, sub) = ((i - 4) / 4 + 2, ((i - 4) % 4) as u64);
    ((4 + sub + 1) << (log2 - 2)).saturating_sub(1)
}

fn percentile(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bucket_upper(i));
        }
    }
    None
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        let mut state = self.errors.lock();
        let now = Instant::now();
        if state.0.is_some_and(|at| now.duration_since(at) < ERROR_LOG_EVERY) {
            state.1 += 1;
            return;
        }
        let quiet = std::mem::take(&mut state.1);
        state.0 = Some(now);
        let more = if quiet > 0 { format!(" ({quiet} more since the last such line)") } else { String::new() };
        log::warn!("kafka: {error}: {reason}{more}");
    }
}

impl ProducerContext for Reports {
    /// The record's receive time (Unix ns) for a sampled record, else 0.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, recv_unix_ns: usize) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                if recv_unix_ns != 0 {
                    let us = (unix_now_ns() - recv_unix_ns as i128).max(0) / 1000;
                    self.latency[bucket(us as u64)].fetch_add(1, Ordering::Relaxed);
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.note_failure(e.to_string());
            }
        }
    }
}

/// The producer and where its records go.
pub struct KafkaSink {
    producer: BaseProducer<Reports>,
    topic: String,
    partitions: usize,
    shutdown: std::sync::Arc<Shutdown>,
    /// How long after the stop request the sink may go on flushing.
    flush_timeout: Duration,
    /// Lines handed to librdkafka (each comes back as one report).
    lines: u64,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("topic", &self.topic).field("partitions", &self.partitions).finish()
    }
}

/// The client settings: coinfeed's, then the user's overrides.
fn client_config(config: &KafkaConfig, producer: bool) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers).set("client.id", "coinfeed");
    if producer {
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "zstd")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            // Wait for the broker however long it is gone: a full queue then stalls the writer
            // and the memory budget sheds, counted and gap-marked, instead of records failing
            // silently after librdkafka's default 5 minutes.
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.kbytes", KAFKA_QUEUE_KIB.to_string())
            .set("queue.buffering.max.messages", KAFKA_QUEUE_MESSAGES.to_string());
    }
    for (k, v) in &config.opts {
        c.set(k, v);
    }
    c
}

/// The topic's partition count, asked of the cluster within `CONNECT_TIMEOUT`.
fn partitions<C: ClientContext>(client: &rdkafka::client::Client<C>, config: &KafkaConfig) -> Result<usize, String> {
    let metadata = client.fetch_metadata(Some(&config.topic), CONNECT_TIMEOUT).map_err(|e| {
        format!("cannot reach the Kafka cluster at {} within {}s: {e}", config.brokers, CONNECT_TIMEOUT.as_secs())
    })?;
    let topic = metadata.topics().iter().find(|t| t.name() == config.topic);
    match topic {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len()),
        Some(t) if t.error().is_some() => Err(format!(
            "the cluster at {} has no usable topic {:?}: {:?}",
            config.brokers,
            config.topic,
            t.error().map(RDKafkaErrorCode::from)
        )),
        _ => Err(format!("the cluster at {} has no topic {:?}", config.brokers, config.topic)),
    }
}

impl KafkaSink {
    /// Creates the producer and checks, within `CONNECT_TIMEOUT`, that the cluster answers and
    /// has the topic. The error says which.
    pub fn connect(
        config: &KafkaConfig,
        shutdown: std::sync::Arc<Shutdown>,
        flush_timeout: Duration,
    ) -> Result<KafkaSink, String> {
        let producer: BaseProducer<Reports> = client_config(config, true)
            .create_with_context(Reports::new())
            .map_err(|e| format!("cannot create the Kafka producer: {}", describe(&e)))?;
        let partitions = partitions(producer.client(), config)?;
        log::info!(
            "kafka: topic {} on {} has {partitions} partitions; records keyed by symbol_id (murmur2), idempotent, acks=all, zstd",
            config.topic,
            config.brokers
        );
        Ok(KafkaSink { producer, topic: config.topic.clone(), partitions, shutdown, flush_timeout, lines: 0 })
    }

    /// Time left to flush: `flush_timeout` from the stop request (from now for a run that ended
    /// without one).
    fn flush_left(&self) -> Duration {
        let since = self.shutdown.requested_at().map_or(Duration::ZERO, |t| t.elapsed());
        self.flush_timeout.saturating_sub(since)
    }

    /// Hands every line of `bytes` (whole NDJSON lines) to librdkafka, waiting while its queue
    /// is full. After the stop, once the flush time is spent, a line the queue cannot take is
    /// counted as failed at once instead, so the stop keeps its deadline and every line is
    /// accounted for (delivered, or failed) whatever the broker does.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            self.lines += 1;
            let recv = if self.lines % LATENCY_SAMPLE == 0 { recv_time_ns(line) } else { 0 };
            let mut record = BaseRecord::with_opaque_to(&self.topic, recv).payload(line);
            if let Some(key) = scan_field(line, b"symbol_id") {
                record = record.key(key);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        if self.shutdown.is_requested() && self.flush_left().is_zero() {
                            self.refused(
                                "the producer's queue was still full when the stop's flush time ran out".into(),
                            );
                            break;
                        }
                        record = back;
                        self.producer.poll(Duration::from_millis(20));
                    }
                    Err((e, _)) => {
                        // Refused before it was queued (too large, ...): no report will come.
                        self.refused(describe(&e));
                        break;
                    }
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// A line librdkafka did not take: no report will come for it.
    fn refused(&self, why: String) {
        self.producer.context().failed.fetch_add(1, Ordering::Relaxed);
        self.producer.context().note_failure(why);
    }

    /// Serves delivery reports (the writer calls it when idle).
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// The counts so far (cheap: read after every batch); the latency percentiles are
    /// computed once, by `finish`.
    pub fn deliveries(&self) -> Deliveries {
        let c = self.producer.context();
        Deliveries {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            ack_p50_us: None,
            ack_p99_us: None,
        }
    }

    /// Lines handed over and not yet reported on.
    pub fn in_flight(&self) -> u64 {
        let d = self.producer.context();
        self.lines.saturating_sub(d.delivered.load(Ordering::Relaxed) + d.failed.load(Ordering::Relaxed))
    }

    /// Flushes within the flush timeout; what is still unacknowledged then is purged, and its
    /// reports come back as failed. Says what was not delivered.
    pub fn finish(self) -> Result<Deliveries, (Deliveries, io::Error)> {
        let started = Instant::now();
        let budget = self.flush_left();
        if self.producer.flush(budget).is_err() {
            let left = self.in_flight();
            log::error!(
                "kafka: {left} records were still not acknowledged after {:.1}s of flushing; giving them up (counted as delivery_failed)",
                budget.as_secs_f64()
            );
            self.producer.purge(PurgeConfig::default().queue().inflight());
            // The purged records' reports come back at once, as failed.
            let deadline = Instant::now() + PURGE_WAIT;
            while self.in_flight() > 0 && Instant::now() < deadline {
                self.producer.poll(Duration::from_millis(10));
            }
            let unreported = self.in_flight();
            if unreported > 0 {
                self.producer.context().failed.fetch_add(unreported, Ordering::Relaxed);
                log::error!("kafka: {unreported} purged records never reported back; counted as delivery_failed");
            }
        }
        let d = self.producer.context().snapshot();
        log::info!(
            "kafka: {} records delivered to {}, {} failed ({:.1}s to flush at the end)",
            d.delivered,
            self.topic,
            d.failed,
            started.elapsed().as_secs_f64()
        );
        if d.failed > 0 {
            return Err((d, io::Error::other(format!("{} records were not delivered to Kafka", d.failed))));
        }
        Ok(d)
    }
}

/// How long the reports of purged records are waited for.
const PURGE_WAIT: Duration = Duration::from_millis(500);

/// A client error without the setting's value (`KafkaError::ClientConfig` prints it, and a
/// `--kafka-opt` value may be a password).
fn describe(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, desc, key, _) => format!("the setting {key}: {desc}"),
        other => other.to_string(),
    }
}

/// The `recv_time` the writer appended to a line, Unix ns; 0 when none is found.
fn recv_time_ns(line: &[u8]) -> usize {
    const KEY: &[u8] = b"\"recv_time\":\"";
    let tail = &line[line.len().saturating_sub(96)..];
    let Some(at) = memchr::memmem::rfind(tail, KEY) else { return 0 };
    let rest = &tail[at + KEY.len()..];
    let Some(end) = memchr::memchr(b'"', rest) else { return 0 };
    std::str::from_utf8(&rest[..end]).ok().and_then(parse_timestamp_ns).map_or(0, |ns| ns as usize)
}

/// Most records `read_tail` reads back from each partition.
pub const TAIL_RECORDS_PER_PARTITION: i64 = 200_000;
/// How long `read_tail` may take in all.
pub const TAIL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `read_tail` reads on once every partition reached the end the watermarks gave.
const TAIL_GRACE: Duration = Duration::from_secs(1);

/// What `read_tail` read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    pub partitions: usize,
    pub records: u64,
}

/// Reads the last `per_partition` records of every partition of the topic (oldest first within
/// each), handing each record's value to `each`: what `--resume` searches for this shard's last
/// trades. Bounded in records and in time (`TAIL_TIMEOUT`).
pub fn read_tail(config: &KafkaConfig, per_partition: i64, mut each: impl FnMut(&[u8])) -> Result<Tail, String> {
    let started = Instant::now();
    let mut c = client_config(config, false);
    c.set("group.id", "coinfeed-resume")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer =
        c.create().map_err(|e| format!("cannot create the Kafka consumer: {}", describe(&e)))?;
    let n = partitions(consumer.client(), config)?;
    let mut list = TopicPartitionList::new();
    // The end of each partition as it is now: reading stops there.
    let mut ends: Vec<Option<i64>> = Vec::with_capacity(n);
    for p in 0..n as i32 {
        let left = TAIL_TIMEOUT.saturating_sub(started.elapsed()).min(CONNECT_TIMEOUT);
        let (low, high) = consumer
            .fetch_watermarks(&config.topic, p, left)
            .map_err(|e| format!("cannot read the offsets of {} partition {p}: {e}", config.topic))?;
        let from = (high - per_partition).max(low);
        ends.push((from < high).then_some(high));
        if from < high {
            list.add_partition_offset(&config.topic, p, Offset::Offset(from))
                .map_err(|e| format!("cannot assign partition {p}: {e}"))?;
        }
    }
    let mut tail = Tail { partitions: n, records: 0 };
    let mut left: usize = list.count();
    if left == 0 {
        return Ok(tail);
    }
    consumer.assign(&list).map_err(|e| format!("cannot assign the partitions of {}: {e}", config.topic))?;
    // Once every partition reached its end, reading goes on for `TAIL_GRACE` more: a broker may
    // report a high watermark short of its last records (tansu does), and those come at once;
    // whatever else comes then is other shards writing now.
    let mut all_read: Option<Instant> = None;
    loop {
        if all_read.is_some_and(|t| t.elapsed() >= TAIL_GRACE) {
            break;
        }
        if started.elapsed() > TAIL_TIMEOUT {
            return Err(format!(
                "reading the end of {} took longer than {}s ({} records read, {left} partitions unfinished)",
                config.topic,
                TAIL_TIMEOUT.as_secs(),
                tail.records
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                // A partition whose last offsets hold no record (a transaction marker, a
                // compacted tail) ends where the consumer's position passed its end.
                if let Ok(positions) = consumer.position() {
                    for e in positions.elements() {
                        let p = e.partition() as usize;
                        let passed = matches!(e.offset(), Offset::Offset(o) if ends.get(p).is_some_and(|end| end.is_some_and(|end| o >= end)));
                        if passed {
                            ends[p] = None;
                            left -= 1;
                        }
                    }
                }
            }
            Some(Err(e)) => log::warn!("kafka: while reading the end of {}: {e}", config.topic),
            Some(Ok(m)) => {
                let p = m.partition() as usize;
                if let Some(value) = m.payload() {
                    each(value);
                }
                tail.records += 1;
                if let Some(end) = ends.get_mut(p).filter(|end| end.is_some_and(|e| m.offset() + 1 >= e)) {
                    *end = None;
                    left -= 1;
                }
            }
        }
        if left == 0 {
            all_read.get_or_insert_with(Instant::now);
        }
    }
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_ordered_and_bound_their_values() {
        for us in [1u64, 2, 3, 5, 7, 100, 999, 1_000, 12_345, 1 << 30] {
            let b = bucket(us);
            assert!(bucket_upper(b) >= us, "{us}: bucket {b} ends at {}", bucket_upper(b));
            assert!(b == 0 || bucket_upper(b - 1) < us, "{us}: bucket {b} is not the first that holds it");
        }
        let mut counts = vec![0u64; BUCKETS];
        counts[bucket(1_000)] = 98;
        counts[bucket(50_000)] = 2;
        assert!(percentile(&counts, 0.5).is_some_and(|p| (1_000..1_250).contains(&p)));
        assert!(percentile(&counts, 0.99).is_some_and(|p| (50_000..62_500).contains(&p)));
        assert_eq!(percentile(&[0; BUCKETS], 0.5), None);
    }

    #[test]
    fn finds_the_receive_time_the_writer_appended() {
        let line = br#"{"type":"trade","symbol_id":"A","recv_time":"2026-12-01T19:41:19.1234567Z","source":"ws"}"#;
        assert_eq!(recv_time_ns(line), parse_timestamp_ns("2026-12-01T19:41:19.1234567Z").unwrap_or(0) as usize);
        assert_ne!(recv_time_ns(line), 0);
        assert_eq!(recv_time_ns(b"{}"), 0);
        assert_eq!(recv_time_ns(br#"{"recv_time":"nonsense"}"#), 0);
    }
}
