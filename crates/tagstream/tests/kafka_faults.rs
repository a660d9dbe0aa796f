//! `tagstream run` against librdkafka's mock cluster (hosted in this test process; the real
//! binary is spawned as a child) when Kafka misbehaves: a transition too large for the sink,
//! an input offset that retention deleted while the service was down, an idempotent producer's
//! fatal error.
//!
//! No assertion depends on elapsed time; deadlines only stop a broken run from hanging.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, fetch_metrics, metric_sum, tail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

const EVENTS: &str = "events";
const TRANSITIONS: &str = "transitions";
const DEADLINE: Duration = Duration::from_secs(120);
const T: i64 = 1_732_000_000_000;

const RULES: &str = r#"
[[tag]]
name = "bio"
kind = "profile"
property = "bio"

[[segment]]
name = "has_bio"
when = "bio IS NOT NULL"
"#;

struct Cluster {
    mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    servers: String,
}

impl Cluster {
    fn new() -> Cluster {
        let mock = MockCluster::new(1).unwrap();
        // The mock has no CreateTopics: the changelog topic tagstream would create is made here.
        for t in [EVENTS, TRANSITIONS, "ts-faults-changelog"] {
            mock.create_topic(t, 1, 1).unwrap();
        }
        let servers = mock.bootstrap_servers();
        Cluster { mock, servers }
    }

    /// Produces `payloads` to `events` (keyed by nothing), in one or more batches.
    fn produce(&self, payloads: &[String], compression: &str) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .set("message.max.bytes", "20000000")
            .set("linger.ms", "5")
            .set("compression.type", compression)
            .create()
            .unwrap();
        for p in payloads {
            let record = BaseRecord::<[u8], [u8]>::to(EVENTS)
                .partition(0)
                .payload(p.as_bytes());
            common::send_retrying(&producer, record);
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    }

    fn reader(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .set("group.id", "reader")
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "30000000")
            .set("receive.message.max.bytes", "40000000")
            .create()
            .unwrap()
    }

    /// (low, high) watermarks of partition 0 of `topic`.
    fn watermarks(&self, topic: &str) -> (i64, i64) {
        self.reader()
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .unwrap()
    }

    /// Every payload of partition 0 of `topic`, once it holds at least `n` messages.
    fn read(&self, topic: &str, n: i64, service: &Service, child: &mut Proc) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + DEADLINE;
        while self.watermarks(topic).1 < n {
            service.alive(child);
            assert!(
                Instant::now() < deadline,
                "{topic} never held {n} messages:\n{}",
                tail(&service.log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let c = self.reader();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let high = self.watermarks(topic).1;
        let mut out = Vec::new();
        let mut next = 0;
        while next < high {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                next = m.offset() + 1;
                out.push(m.payload().unwrap_or_default().to_vec());
            }
        }
        out
    }
}

/// A spawned `tagstream run`, killed if the test fails before stopping it.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Service {
    config: PathBuf,
    log: PathBuf,
}

impl Service {
    /// Writes the rules and a configuration reading `events` of `cluster`, with the state in
    /// `dir/state`; `sink` and `extra` complete it.
    /// `state` goes into the `[state]` table (e.g. `changelog_topic = ""`).
    fn new(dir: &Path, cluster: &Cluster, sink: &str, state: &str) -> Service {
        std::fs::write(dir.join("rules.toml"), RULES).unwrap();
        let config = dir.join("tagstream.toml");
        let text = format!(
            r#"rules = "rules.toml"
[source]
kind = "kafka"
brokers = "{servers}"
topics = ["{EVENTS}"]
group_id = "ts-faults"
max_event_bytes = "4MiB"
[source.options]
"session.timeout.ms" = "4500"
"heartbeat.interval.ms" = "300"
"fetch.max.bytes" = "30000000"
"max.partition.fetch.bytes" = "30000000"
"receive.message.max.bytes" = "40000000"
{sink}
[dead_letter]
kind = "file"
path = "dlq.ndjson"
[state]
dir = "state"
{state}
[clock]
mode = "event"
[api]
listen = "127.0.0.1:0"
"#,
            servers = cluster.servers
        );
        std::fs::write(&config, text).unwrap();
        Service {
            config,
            log: dir.join("run.log"),
        }
    }

    fn spawn(&self) -> Proc {
        let log = std::fs::File::create(&self.log).unwrap();
        Proc(
            Command::new(bin())
                .args(["run", "--config", self.config.to_str().unwrap()])
                .env("TAGSTREAM_LOG", "info")
                .env_remove("TAGSTREAM_API_TOKEN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn alive(&self, child: &mut Proc) {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "tagstream exited early ({status}):\n{}",
                tail(&self.log, 40)
            );
        }
    }

    /// The API's base URL, once the log says where it listens.
    fn api(&self, child: &mut Proc) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("api listening")) {
                let at = line.find("addr=").unwrap() + 5;
                let addr = line[at..].split_whitespace().next().unwrap();
                return format!("http://{addr}");
            }
            self.alive(child);
            assert!(
                Instant::now() < deadline,
                "no API:\n{}",
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `metric` (summed over its labels) reaches `value`.
    fn wait_metric(&self, child: &mut Proc, metric: &str, value: f64) {
        let base = self.api(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = metric_sum(&fetch_metrics(&base), metric);
            if got >= value {
                return;
            }
            self.alive(child);
            assert!(
                Instant::now() < deadline,
                "{metric} stayed at {got}, below {value}:\n{}",
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&self, mut child: Proc) {
        common::stop_gracefully(&mut child.0, DEADLINE, &self.log);
    }
}

fn profile(user: &str, bio: &str, ts: i64) -> String {
    serde_json::json!({
        "type": "profile", "user_id": user, "ts": ts, "properties": {"bio": bio}
    })
    .to_string()
}

const KAFKA_SINK: &str = r#"[sink]
kind = "kafka"
topic = "transitions""#;

#[test]
fn a_transition_too_large_for_the_sink_is_cut_to_fit_and_delivery_goes_on() {
    oversized(KAFKA_SINK, 900_000);
}

/// `sink.max_message_bytes` above what the producer takes: the producer's refusal halves the
/// transition's budget until it fits.
#[test]
fn a_transition_the_producer_refuses_as_too_large_is_sent_again_smaller() {
    oversized(
        &format!("{KAFKA_SINK}\nmax_message_bytes = \"100MiB\""),
        500_000,
    );
}

/// Two users' transitions, the first carrying a 2 MB tag value: both are delivered, the first
/// with a prefix of at least `min_kept` bytes of it.
fn oversized(sink: &str, min_kept: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new();
    let service = Service::new(dir.path(), &cluster, sink, "");
    let big = "x".repeat(2_000_000);
    // Compressed: the mock keeps at most 5 MB per partition.
    cluster.produce(
        &[profile("u1", &big, T), profile("u2", "short", T + 1)],
        "gzip",
    );
    let mut child = service.spawn();
    let got = cluster.read(TRANSITIONS, 2, &service, &mut child);
    assert_eq!(got.len(), 2, "exactly one transition per user");
    // librdkafka's default message.max.bytes (the producer's own limit) is 1,000,000.
    assert!(got[0].len() <= 1_000_000, "{} bytes", got[0].len());
    let first: serde_json::Value = serde_json::from_slice(&got[0]).unwrap();
    assert_eq!(first["user_id"], "u1");
    assert_eq!(first["type"], "segment_enter");
    assert_eq!(first["truncated_tags"], serde_json::json!(["bio"]));
    let bio = first["tags"]["bio"].as_str().unwrap();
    assert!(
        bio.len() > min_kept && big.starts_with(bio),
        "the longest prefix that fits: {} bytes",
        bio.len()
    );
    let second: serde_json::Value = serde_json::from_slice(&got[1]).unwrap();
    assert_eq!(second["user_id"], "u2");
    assert_eq!(second["tags"]["bio"], "short");
    assert!(second.get("truncated_tags").is_none(), "{second}");

    let metrics = fetch_metrics(&service.api(&mut child));
    let truncated = metrics.samples.iter().find(|s| {
        s.metric == "tagstream_sink_oversized_transitions_total"
            && s.labels.get("action") == Some("truncated")
    });
    assert!(
        matches!(
            truncated.map(|s| &s.value),
            Some(prometheus_parse::Value::Counter(v)) if *v == 1.0
        ),
        "{truncated:?}"
    );
    assert_eq!(metric_sum(&metrics, "tagstream_outbox_backlog"), 0.0);
    service.stop(child);
}

#[test]
fn an_input_offset_that_retention_deleted_is_detected_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new();
    let sink = "[sink]\nkind = \"file\"\npath = \"transitions.ndjson\"".to_string();
    let service = Service::new(dir.path(), &cluster, &sink, "");
    let first: Vec<String> = (0..10)
        .map(|i| profile(&format!("u{i}"), "b", T + i))
        .collect();
    cluster.produce(&first, "none");
    let mut child = service.spawn();
    service.wait_metric(&mut child, "tagstream_events_total", 10.0);
    let metrics = fetch_metrics(&service.api(&mut child));
    assert_eq!(metric_sum(&metrics, "tagstream_input_gaps_total"), 0.0);
    service.stop(child);

    // While the service is down, more than the mock's 5 MB per partition is produced: the
    // partition's log start moves past the stored offset (10).
    let pad = "p".repeat(10_000);
    let more: Vec<String> = (0..700)
        .map(|i| profile(&format!("v{i}"), &pad, T + 100 + i))
        .collect();
    cluster.produce(&more, "none");
    let (low, high) = cluster.watermarks(EVENTS);
    assert!(low > 10, "the mock kept offset 10 (log start {low})");
    assert_eq!(high, 710);

    let mut child = service.spawn();
    service.wait_metric(&mut child, "tagstream_input_gaps_total", 1.0);
    let metrics = fetch_metrics(&service.api(&mut child));
    let gap = metrics
        .samples
        .iter()
        .find(|s| s.metric == "tagstream_input_gaps_total")
        .expect("the gap series");
    assert_eq!(gap.labels.get("topic"), Some(EVENTS));
    assert_eq!(gap.labels.get("partition"), Some("0"));
    assert_eq!(gap.value, prometheus_parse::Value::Counter(1.0));
    // What was retained is applied: the service goes on.
    service.wait_metric(&mut child, "tagstream_events_total", (high - low) as f64);
    let log = std::fs::read_to_string(&service.log).unwrap();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("input gap")).collect();
    assert_eq!(warnings.len(), 1, "logged once:\n{log}");
    assert!(
        warnings[0].contains("stored=10") && warnings[0].contains(&format!("resumed={low}")),
        "{}",
        warnings[0]
    );
    service.stop(child);
}

#[test]
fn a_producer_fatal_error_replaces_the_producer_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new();
    // Without a changelog, tagstream's first produce request is the sink's.
    let service = Service::new(dir.path(), &cluster, KAFKA_SINK, "changelog_topic = \"\"");
    cluster.produce(&[profile("u1", "a", T), profile("u2", "b", T + 1)], "none");
    // The next produce request — tagstream's first — fails as if the broker had lost the
    // producer's sequence: librdkafka raises a fatal error and fails every later message.
    cluster.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let mut child = service.spawn();
    let got = cluster.read(TRANSITIONS, 2, &service, &mut child);
    let users: Vec<String> = got
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            v["user_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        users.len() >= 2 && users.ends_with(&["u1".to_string(), "u2".to_string()]),
        "every transition delivered, in order, after the replacement: {users:?}"
    );
    let metrics = fetch_metrics(&service.api(&mut child));
    assert_eq!(
        metric_sum(&metrics, "tagstream_sink_producer_fatal_errors_total"),
        1.0
    );
    let log = std::fs::read_to_string(&service.log).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("hit a fatal error"))
            .count(),
        1,
        "{log}"
    );
    service.stop(child);
}
