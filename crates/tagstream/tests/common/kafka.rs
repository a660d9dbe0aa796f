//! A harness for end-to-end tests against librdkafka's mock cluster (hosted in the test
//! process), with the real binary spawned as a child: the cluster, a service and its logs, the
//! per-partition `tagstream replay` reference, transitions deduplicated by `event_id`, and the
//! partition ownership each instance logs.
//!
//! The reference result is `tagstream replay` of each partition's events, in partition order,
//! into its own state dir (a user lives in one partition and event clocks are per partition).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{bin, dump, partition_of, tail, user_of};

pub const PARTITIONS: i32 = 4;
pub const EVENTS: &str = "events";
pub const TRANSITIONS: &str = "transitions";
pub const DLQ: &str = "dlq";
pub const GROUP: &str = "ts-mock";
/// The changelog topic of [`GROUP`] (the default name).
pub const CHANGELOG: &str = "ts-mock-changelog";
pub const DEADLINE: Duration = Duration::from_secs(180);

pub const RULES: &str = r#"
time_zone = "Asia/Shanghai"

[[tag]]
name = "spend_7d"
kind = "sum"
event = "purchase"
property = "amount"
window = "7d"

[[tag]]
name = "orders"
kind = "count"
event = "purchase"

[[tag]]
name = "views_1d"
kind = "count"
event = ["view", "search"]
window = "1d"

[[tag]]
name = "fav_category_30d"
kind = "top"
event = ["view", "purchase"]
property = "category"
window = "30d"

[[tag]]
name = "city"
kind = "profile"
property = "city"

[[tag]]
name = "lifecycle"
kind = "case"
cases = [
  { when = "first_seen > now() - 2d", value = "new" },
  { when = "last_seen > now() - 3d", value = "active" },
]
else = "dormant"

[[segment]]
name = "spender_7d"
when = "spend_7d >= 100"

[[segment]]
name = "browser_1d"
when = "views_1d >= 3"

[[segment]]
name = "dormant"
when = "lifecycle = 'dormant'"

[[segment]]
name = "skincare_fan"
when = "fav_category_30d = 'skincare' AND orders > 0"
"#;

/// A scratch directory, kept (and printed) when `TS_KEEP` is set.
pub fn workdir() -> (Option<tempfile::TempDir>, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var("TS_KEEP").is_ok() {
        let path = dir.keep();
        eprintln!("keeping {}", path.display());
        (None, path)
    } else {
        let path = dir.path().to_path_buf();
        (Some(dir), path)
    }
}

pub fn gen(users: u64, events: u64, seed: u64) -> Vec<String> {
    let out = Command::new(bin())
        .args([
            "gen",
            "--users",
            &users.to_string(),
            "--events",
            &events.to_string(),
            "--seed",
            &seed.to_string(),
            "--days",
            "20",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// One input message: partition, key, payload (None = tombstone).
#[derive(Clone)]
pub struct Msg {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// The generated events keyed by user id, plus one last event per partition far in the future
/// (a profile event of a partition's own sentinel user), so both the service and the reference
/// replay end with every timer of the stream fired.
pub fn keyed(lines: &[String]) -> Vec<Msg> {
    let mut sentinels = Vec::new();
    let mut n = 0;
    while sentinels.len() < PARTITIONS as usize {
        let user = format!("zz-sentinel-{n}");
        n += 1;
        if partition_of(user.as_bytes(), PARTITIONS) == sentinels.len() as i32 {
            let ts = 1_732_060_800_000i64 + 400 * 86_400_000;
            sentinels.push(format!(r#"{{"type":"profile","user_id":"{user}","ts":{ts},"properties":{{"city":"Nowhere"}}}}"#));
        }
    }
    lines
        .iter()
        .chain(&sentinels)
        .map(|l| {
            let user = user_of(l);
            Msg {
                partition: partition_of(user.as_bytes(), PARTITIONS),
                key: Some(user.into_bytes()),
                payload: Some(l.clone().into_bytes()),
            }
        })
        .collect()
}

pub struct Cluster {
    pub mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub servers: String,
}

impl Cluster {
    pub fn new(brokers: i32) -> Cluster {
        let mock = MockCluster::new(brokers).unwrap();
        // The mock has no CreateTopics: the changelog topic tagstream would create is made here
        // (creation is tested against Tansu, in kafka_static).
        for t in [EVENTS, TRANSITIONS, DLQ, CHANGELOG] {
            mock.create_topic(t, PARTITIONS, 1).unwrap();
        }
        let servers = mock.bootstrap_servers();
        Cluster { mock, servers }
    }

    pub fn produce(&self, messages: &[Msg]) {
        self.produce_with(messages, "gzip")
    }

    /// Produces with the given `compression.type`.
    pub fn produce_with(&self, messages: &[Msg], compression: &str) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .set("message.max.bytes", "20000000")
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            // The mock keeps at most 5 MB per partition: compressed batches keep the 10 MB pill
            // (and long streams) retained.
            .set("compression.type", compression)
            .create()
            .unwrap();
        for m in messages {
            let mut record = BaseRecord::<[u8], [u8]>::to(EVENTS).partition(m.partition);
            if let Some(k) = &m.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = &m.payload {
                record = record.payload(p.as_slice());
            }
            super::send_retrying(&producer, record);
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    }

    pub fn reader(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "30000000")
            .set("receive.message.max.bytes", "40000000")
            .create()
            .unwrap()
    }

    pub fn high_watermarks(&self, topic: &str) -> Vec<i64> {
        let c = self.reader("watermarks");
        (0..PARTITIONS)
            .map(|p| {
                c.fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect()
    }

    /// Every message of a topic: (partition, offset, key, payload, headers).
    pub fn read_all(&self, topic: &str) -> Vec<Read> {
        let hi = self.high_watermarks(topic);
        let c = self.reader("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut next = vec![0i64; PARTITIONS as usize];
        let mut out = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while (0..PARTITIONS as usize).any(|p| next[p] < hi[p]) {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                next[m.partition() as usize] = m.offset() + 1;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        out
    }

    /// The group's committed offsets (what lag tools see), per partition of `events`.
    pub fn committed(&self) -> Vec<i64> {
        let c = self.reader(GROUP);
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(EVENTS, p);
        }
        match c.committed_offsets(tpl, Duration::from_secs(10)) {
            Ok(t) => (0..PARTITIONS)
                .map(|p| {
                    t.find_partition(EVENTS, p)
                        .and_then(|e| e.offset().to_raw())
                        .unwrap_or(-1)
                        .max(0)
                })
                .collect(),
            Err(_) => vec![0; PARTITIONS as usize],
        }
    }

    /// Waits until the group has committed every produced offset of `events`.
    pub fn wait_consumed(&self, child: &mut Proc, log: &Path) {
        let hi = self.high_watermarks(EVENTS);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.committed() == hi {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("tagstream exited early ({status}):\n{}", tail(log, 40));
            }
            assert!(
                Instant::now() < deadline,
                "not all events consumed; committed {:?} of {hi:?}\n{}",
                self.committed(),
                tail(log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A spawned `tagstream run`, killed if the test fails before stopping it.
pub struct Proc(pub Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

pub struct Service {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub runs: usize,
}

impl Service {
    /// A service named `name` (its own directory under `dir`): `options` are added to
    /// `[source.options]`, `state` to `[state]`.
    pub fn new(dir: &Path, cluster: &Cluster, name: &str, options: &str, state: &str) -> Service {
        let root = dir.join(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("rules.toml"), RULES).unwrap();
        let config = root.join("tagstream.toml");
        let text = format!(
            r#"rules = "rules.toml"
[source]
kind = "kafka"
brokers = "{servers}"
topics = ["{EVENTS}"]
group_id = "{GROUP}"
[source.options]
"session.timeout.ms" = "4500"
"heartbeat.interval.ms" = "300"
"fetch.max.bytes" = "30000000"
"max.partition.fetch.bytes" = "30000000"
"receive.message.max.bytes" = "40000000"
{debug}
{options}
[sink]
kind = "kafka"
topic = "{TRANSITIONS}"
[dead_letter]
kind = "kafka"
topic = "{DLQ}"
[state]
dir = "state"
{state}
[clock]
mode = "event"
[api]
listen = "127.0.0.1:0"
"#,
            servers = cluster.servers,
            debug = std::env::var("TS_KAFKA_DEBUG")
                .map(|d| format!("\"debug\" = \"{d}\""))
                .unwrap_or_default()
        );
        std::fs::write(&config, text).unwrap();
        Service {
            dir: root,
            config,
            runs: 0,
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("run-{}.log", self.runs))
    }

    pub fn spawn(&mut self) -> Proc {
        self.runs += 1;
        let log = std::fs::File::create(self.log()).unwrap();
        Proc(
            Command::new(bin())
                .args(["run", "--config", self.config.to_str().unwrap()])
                .env(
                    "TAGSTREAM_LOG",
                    std::env::var("TS_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    pub fn stop(&self, mut child: Proc) {
        super::stop_gracefully(&mut child, DEADLINE, &self.log());
    }

    pub fn dump(&self) -> Vec<String> {
        dump(&self.state())
    }
}

/// The reference: each partition's good events replayed into its own state dir.
pub struct Expected {
    pub dump: Vec<String>,
    pub transitions: BTreeMap<String, serde_json::Value>,
}

pub fn replay_per_partition(dir: &Path, messages: &[Msg]) -> Expected {
    let root = dir.join("replay");
    std::fs::create_dir_all(&root).unwrap();
    let rules = root.join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let mut rows: Vec<(Vec<u8>, String)> = Vec::new();
    let mut transitions = BTreeMap::new();
    for p in 0..PARTITIONS {
        let input = root.join(format!("p{p}.ndjson"));
        let mut f = std::fs::File::create(&input).unwrap();
        for m in messages.iter().filter(|m| m.partition == p) {
            f.write_all(m.payload.as_deref().unwrap_or_default())
                .unwrap();
            f.write_all(b"\n").unwrap();
        }
        drop(f);
        let (state, out, dlq) = (
            root.join(format!("state{p}")),
            root.join(format!("out{p}.ndjson")),
            root.join(format!("dlq{p}.ndjson")),
        );
        let o = Command::new(bin())
            .args([
                "replay",
                "--rules",
                rules.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--dlq",
                dlq.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "replay: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for line in dump(&state) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            rows.push((v["user_id"].as_str().unwrap().as_bytes().to_vec(), line));
        }
        add_transitions(
            &mut transitions,
            std::fs::read_to_string(&out)
                .unwrap()
                .lines()
                .map(|l| l.as_bytes().to_vec()),
        );
    }
    rows.sort();
    Expected {
        dump: rows.into_iter().map(|(_, l)| l).collect(),
        transitions,
    }
}

/// Deduplicates transitions by event_id; a redelivered transition must be identical.
pub fn add_transitions(
    map: &mut BTreeMap<String, serde_json::Value>,
    payloads: impl Iterator<Item = Vec<u8>>,
) -> usize {
    let mut n = 0;
    for p in payloads {
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        let id = v["event_id"].as_str().unwrap().to_string();
        if let Some(old) = map.get(&id) {
            assert_eq!(old, &v, "two different transitions with event_id {id}");
        } else {
            map.insert(id, v);
        }
        n += 1;
    }
    n
}

pub fn assert_same_dump(got: &[String], want: &[String]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "dump line {i} differs");
    }
    assert_eq!(got.len(), want.len(), "dump sizes differ");
}

/// Reads the transitions topic until it holds every expected transition.
pub fn wait_transitions(
    cluster: &Cluster,
    expected: &BTreeMap<String, serde_json::Value>,
) -> (BTreeMap<String, serde_json::Value>, usize) {
    let deadline = Instant::now() + DEADLINE;
    let (mut last_len, mut last_change) = (0, Instant::now());
    loop {
        let mut got = BTreeMap::new();
        let raw = add_transitions(
            &mut got,
            cluster.read_all(TRANSITIONS).into_iter().map(|r| r.payload),
        );
        if got.len() != last_len {
            (last_len, last_change) = (got.len(), Instant::now());
        }
        // Done, or nothing new for a long while (a lost transition never arrives).
        if got.len() >= expected.len()
            || Instant::now() > deadline
            || last_change.elapsed() > Duration::from_secs(30)
        {
            return (got, raw);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn assert_transitions(
    cluster: &Cluster,
    expected: &BTreeMap<String, serde_json::Value>,
) -> usize {
    let (got, raw) = wait_transitions(cluster, expected);
    if let Ok(dir) = std::env::var("TS_DEBUG_DIR") {
        let write = |name: &str, m: &BTreeMap<String, serde_json::Value>| {
            let text: String = m.values().map(|v| v.to_string() + "\n").collect();
            std::fs::write(Path::new(&dir).join(name), text).unwrap();
        };
        write("got.ndjson", &got);
        write("expected.ndjson", expected);
    }
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(3)
        .collect();
    let extra: Vec<&String> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(3)
        .collect();
    let marks: Vec<(i64, i64)> = if missing.is_empty() {
        Vec::new()
    } else {
        let c = cluster.reader("watermarks");
        (0..PARTITIONS)
            .map(|p| {
                c.fetch_watermarks(TRANSITIONS, p, Duration::from_secs(10))
                    .unwrap()
            })
            .collect()
    };
    assert!(
        missing.is_empty() && extra.is_empty(),
        "transitions differ: missing {missing:?} (e.g. {:?}), unexpected {extra:?} (e.g. {:?}); {raw} messages read, watermarks {marks:?}",
        missing.first().map(|k| &expected[*k]),
        extra.first().map(|k| &got[*k])
    );
    assert_eq!(&got, expected);
    raw
}
/// The API address a service logged, once it listens.
pub fn api_base(log: &Path, child: &mut Proc) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(addr) = super::api_address(log) {
            return format!("http://{addr}");
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the api never listened:\n{}",
            tail(log, 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One period during which an instance owned a partition, from its log: the offset it started
/// applying at (0 for a rebuild from the start of the mock's partition) and the offset after
/// the last one it applied (None while it still owns it). Times are the log's timestamps
/// (RFC 3339, UTC, so they compare as text).
#[derive(Debug, Clone)]
pub struct Held {
    pub owner: String,
    pub partition: i32,
    pub from: i64,
    pub since: String,
    pub until: Option<(String, i64)>,
}

/// The value of `key=` in a log line (quotes and `Some(..)` removed).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let value = line[at..].split_whitespace().next()?;
    let value = value.trim_matches('"');
    Some(
        value
            .strip_prefix("Some(")
            .and_then(|v| v.strip_suffix(')'))
            .unwrap_or(value),
    )
}

/// The ownership periods an instance's logs show, in order (logs of successive runs in order).
pub fn ownership(owner: &str, logs: &[PathBuf]) -> Vec<Held> {
    let mut held: Vec<Held> = Vec::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let started = line.contains("partition assigned: resuming at the stored offset");
            let rebuilt = line.contains("rebuilding it from the earliest");
            let released = line.contains("partition released");
            if !(started || rebuilt || released) {
                continue;
            }
            let time = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            let partition: i32 = field(line, "partition").unwrap().parse().unwrap();
            if released {
                let next: i64 = field(line, "next_offset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let open = held
                    .iter_mut()
                    .rev()
                    .find(|h| h.partition == partition && h.until.is_none())
                    .unwrap_or_else(|| panic!("{owner} released {partition} it never got: {line}"));
                open.until = Some((time, next));
            } else {
                let from = if started {
                    field(line, "offset").unwrap().parse().unwrap()
                } else {
                    0
                };
                held.push(Held {
                    owner: owner.to_string(),
                    partition,
                    from,
                    since: time,
                    until: None,
                });
            }
        }
    }
    held
}

/// The run logs of a service so far.
pub fn logs(service: &Service) -> Vec<PathBuf> {
    (1..=service.runs)
        .map(|r| service.dir.join(format!("run-{r}.log")))
        .collect()
}

/// No partition was applied by two owners at once, and each owner went on exactly where the
/// previous one stopped. Each instance's periods come from its own log: a period ends when the
/// instance has committed every batch of the partition and published its changelog, before it
/// releases the partition (messages polled but not applied by then are dropped), and the next
/// owner's begins when it is assigned the partition, after that release. So, per partition and
/// in order of start: each period starts after the previous one ended (time) and at the offset
/// where it ended (offsets: a later start would skip events, an earlier one apply them twice).
/// Returns the number of handovers checked.
pub fn assert_no_overlap(periods: &[Held]) -> usize {
    let mut handovers = 0;
    for p in 0..PARTITIONS {
        let mut mine: Vec<&Held> = periods.iter().filter(|h| h.partition == p).collect();
        mine.sort_by(|a, b| a.since.cmp(&b.since));
        for pair in mine.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            let (ended, next) = before.until.clone().unwrap_or_else(|| {
                panic!("partition {p}: {before:?} never released, yet {after:?} got it")
            });
            assert!(
                ended <= after.since,
                "partition {p} applied by two owners at once: {before:?} and {after:?}"
            );
            assert_eq!(
                after.from, next,
                "partition {p}: {after:?} did not start where {before:?} stopped"
            );
            handovers += 1;
        }
    }
    handovers
}
