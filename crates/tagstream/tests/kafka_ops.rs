//! `tagstream run` in wall-clock mode against librdkafka's mock cluster (hosted in this test
//! process; the real binary is spawned as a child): timers fire at their exact instant with no
//! input. (The other Kafka scenarios, with their shared helpers, are in kafka_e2e.rs.)
//!
//! No assertion depends on elapsed time; deadlines only stop a broken run from hanging.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use common::{bin, partition_of, tail};

const PARTITIONS: i32 = 2;
const EVENTS: &str = "events";
const TRANSITIONS: &str = "transitions";
const DLQ: &str = "dlq";
const DEADLINE: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One input message: partition, key, payload.
#[derive(Clone)]
struct Msg {
    partition: i32,
    key: Vec<u8>,
    payload: Vec<u8>,
}

fn keyed(lines: &[String]) -> Vec<Msg> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let user = v["user_id"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v["user_id"].to_string());
            Msg {
                partition: partition_of(user.as_bytes(), PARTITIONS),
                key: user.into_bytes(),
                payload: l.clone().into_bytes(),
            }
        })
        .collect()
}

struct Cluster {
    _mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    servers: String,
}

impl Cluster {
    fn new(brokers: i32) -> Cluster {
        let mock = MockCluster::new(brokers).unwrap();
        // The mock has no CreateTopics: the changelog topic tagstream would create is made here.
        for t in [EVENTS, TRANSITIONS, DLQ, "ts-wall-changelog"] {
            mock.create_topic(t, PARTITIONS, 1).unwrap();
        }
        let servers = mock.bootstrap_servers();
        Cluster {
            _mock: mock,
            servers,
        }
    }

    fn produce(&self, messages: &[Msg]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        for m in messages {
            let record = BaseRecord::<[u8], [u8]>::to(EVENTS)
                .partition(m.partition)
                .key(m.key.as_slice())
                .payload(m.payload.as_slice());
            common::send_retrying(&producer, record);
        }
        producer.flush(Duration::from_secs(60)).unwrap();
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
    /// Writes `rules.toml` and `tagstream.toml` (`body` is everything after `rules = ..`).
    fn new(dir: &Path, rules: &str, body: &str) -> Service {
        std::fs::write(dir.join("rules.toml"), rules).unwrap();
        let config = dir.join("tagstream.toml");
        std::fs::write(&config, format!("rules = \"rules.toml\"\n{body}")).unwrap();
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

    fn stop(&self, mut child: Proc) {
        common::stop_gracefully(&mut child.0, DEADLINE, &self.log);
    }
}

fn kafka_source(servers: &str, group: &str) -> String {
    format!(
        r#"[source]
kind = "kafka"
brokers = "{servers}"
topics = ["{EVENTS}"]
group_id = "{group}"
[source.options]
"session.timeout.ms" = "4500"
"heartbeat.interval.ms" = "300"
"#
    )
}

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn wall_clock_timers_fire_exactly_without_events() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(1);
    let rules = r#"
[[tag]]
name = "last_seen"
kind = "last_time"
event = "*"

[[segment]]
name = "recent"
when = "last_seen > now() - 15s"
"#;
    let sink = dir.path().join("transitions.ndjson");
    let service = Service::new(
        dir.path(),
        rules,
        &format!(
            "{}[sink]\nkind = \"file\"\npath = \"{}\"\n[dead_letter]\nkind = \"file\"\npath = \"{}\"\n[state]\ndir = \"{}\"\n[clock]\nmode = \"wall\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
            kafka_source(&cluster.servers, "ts-wall"),
            sink.display(),
            dir.path().join("dlq.ndjson").display(),
            dir.path().join("state").display(),
        ),
    );
    let mut child = service.spawn();
    // Produce only once the partitions are assigned, so the event reaches the engine well
    // within its 5 s of membership even when the group join is slow.
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&service.log)
        .unwrap_or_default()
        .contains("partition has no local state")
    {
        service.alive(&mut child);
        assert!(
            Instant::now() < deadline,
            "partitions never assigned:\n{}",
            tail(&service.log, 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ts = now_ms();
    let event = format!(r#"{{"user_id":"u1","event":"view","ts":{ts}}}"#);
    cluster.produce(&keyed(&[event]));

    let deadline = Instant::now() + DEADLINE;
    let lines = loop {
        let lines = read_lines(&sink);
        if lines.len() >= 2 {
            break lines;
        }
        service.alive(&mut child);
        assert!(
            Instant::now() < deadline,
            "transitions so far: {lines:?}\n{}",
            tail(&service.log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (enter, exit) = (&lines[0], &lines[1]);
    assert_eq!(enter["type"], "segment_enter", "{enter}");
    assert_eq!(enter["segment"], "recent");
    assert_eq!(enter["user_id"], "u1");
    assert_eq!(enter["cause"], "event", "{enter}");
    assert_eq!(enter["seq"], 1);
    // The event was applied at wall-clock engine time: its own ts or a little later.
    assert!(enter["ts"].as_i64().unwrap() >= ts, "{enter}");
    assert_eq!(exit["type"], "segment_exit", "{exit}");
    assert_eq!(exit["segment"], "recent");
    assert_eq!(exit["user_id"], "u1");
    assert_eq!(exit["cause"], "timer", "{exit}");
    assert_eq!(exit["seq"], 2);
    assert_eq!(
        exit["ts"].as_i64(),
        Some(ts + 15_000),
        "the exit happens at the instant last_seen > now() - 15s turns false: {exit}"
    );
    assert_eq!(exit["tags"]["last_seen"].as_i64(), Some(ts), "{exit}");
    service.stop(child);
    // Nothing more was emitted, nothing dead-lettered.
    assert_eq!(read_lines(&sink).len(), 2);
    assert!(read_lines(&dir.path().join("dlq.ndjson")).is_empty());
}
