//! Static group membership (`group.instance.id`, as a StatefulSet pod name gives) against a real
//! Kafka-protocol broker: Tansu, run as a child process (librdkafka's mock cluster does not
//! implement static membership).
//!
//! Two `tagstream run` instances, "a" and "b", share a consumer group. "a" is stopped with
//! SIGTERM (a static member sends no LeaveGroup) and restarted within `session.timeout.ms` while
//! more events arrive. The test proves that:
//! - "a" gets exactly its partitions back and "b"'s assignment never changes: no assignment or
//!   revocation in b's log, no rebalance in its metrics;
//! - no state moves: the restarted "a" resumes every partition at the offset stored in its own
//!   RocksDB (no rebuild), "b" rebuilds nothing, and each state dir holds only the users of its
//!   own partitions;
//! - the result is exact: the union of the two dumps, and of the two transition files, equals a
//!   per-partition `tagstream replay` of the same events.
//!
//! Needs the `tansu` binary (`scripts/ensure-deps.sh` installs it); without it the test fails.
//! No assertion depends on wall-clock time; deadlines only stop a broken run from hanging.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, dump, fetch_metrics, metric_sum, partition_of, tail, user_of};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const PARTITIONS: i32 = 4;
const EVENTS: &str = "events";
const GROUP: &str = "ts-static";
const SESSION_TIMEOUT_MS: u64 = 30_000;
const DEADLINE: Duration = Duration::from_secs(120);

fn wait_for<T>(what: &str, context: impl Fn() -> String, f: impl FnMut() -> Option<T>) -> T {
    common::wait_for(what, DEADLINE, context, f)
}

/// The `tansu` binary: on PATH or in Cargo's bin directory.
fn tansu_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bins = [
        std::env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    ];
    std::env::split_paths(&path)
        .chain(cargo_bins.into_iter().flatten())
        .map(|dir| dir.join("tansu"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the Kafka-compatible broker `tansu` is not installed (not on PATH nor in \
                 ~/.cargo/bin): run scripts/ensure-deps.sh, or \
                 `cargo install tansu --locked --features dynostore` (the first build takes \
                 about 20 minutes)"
            )
        })
}

/// A Tansu broker with in-memory storage on a free local port, killed on drop.
struct Tansu {
    child: Child,
    url: String,
    servers: String,
    log: PathBuf,
}

impl Tansu {
    fn start(dir: &Path) -> Tansu {
        let bin = tansu_bin();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let servers = format!("127.0.0.1:{port}");
        let url = format!("tcp://{servers}");
        let log = dir.join("tansu.log");
        let out = File::create(&log).unwrap();
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let tansu = Tansu {
            child,
            url,
            servers,
            log,
        };
        wait_for(
            "tansu to listen",
            || tail(&tansu.log, 30),
            || std::net::TcpStream::connect(&tansu.servers).ok(),
        );
        let out = Command::new(&bin)
            .args(["topic", "create", EVENTS, "--broker", &tansu.url])
            .args(["--partitions", &PARTITIONS.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tansu
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Msg {
    partition: i32,
    user: String,
    line: String,
}

fn generate() -> Vec<Msg> {
    let out = Command::new(bin())
        .args(["gen", "--users", "200", "--events", "4000", "--seed", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "gen failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let user = v["user_id"]
                .as_str()
                .expect("user ids are strings")
                .to_string();
            Msg {
                partition: partition_of(user.as_bytes(), PARTITIONS),
                user,
                line: line.to_string(),
            }
        })
        .collect()
}

fn produce(servers: &str, messages: &[Msg]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for m in messages {
        let record = BaseRecord::to(EVENTS)
            .partition(m.partition)
            .key(m.user.as_str())
            .payload(m.line.as_str());
        producer.send(record).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// One `tagstream run` instance: its config, state dir, transition file and current process.
struct Instance {
    dir: PathBuf,
    runs: usize,
    child: Option<Child>,
    api: String,
}

impl Instance {
    fn new(root: &Path, servers: &str, name: &str) -> Instance {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/rules/ecommerce.toml");
        std::fs::copy(rules, dir.join("rules.toml")).unwrap();
        let debug = std::env::var("TS_KAFKA_DEBUG")
            .map(|d| format!("\"debug\" = \"{d}\"\n"))
            .unwrap_or_default();
        let config = format!(
            r#"rules = "rules.toml"
[source]
kind = "kafka"
brokers = "{servers}"
topics = ["{EVENTS}"]
group_id = "{GROUP}"
[source.options]
"group.instance.id" = "{name}"
"session.timeout.ms" = "{SESSION_TIMEOUT_MS}"
"heartbeat.interval.ms" = "500"
{debug}[sink]
kind = "file"
path = "transitions.ndjson"
[dead_letter]
kind = "file"
path = "dead-letters.ndjson"
[state]
dir = "state"
[clock]
mode = "event"
[api]
listen = "127.0.0.1:0"
"#
        );
        std::fs::write(dir.join("tagstream.toml"), config).unwrap();
        Instance {
            dir,
            runs: 0,
            child: None,
            api: String::new(),
        }
    }

    /// This run's stderr.
    fn log(&self) -> PathBuf {
        self.dir.join(format!("run-{}.log", self.runs))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn count(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
    }

    fn start(&mut self) {
        self.runs += 1;
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(self.dir.join("tagstream.toml"))
            .env(
                "TAGSTREAM_LOG",
                std::env::var("TS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.log()).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = wait_for(
            "the api to listen",
            || tail(&self.log(), 30),
            || {
                let text = self.log_text();
                let line = text.lines().find(|l| l.contains("api listening"))?;
                let at = line.find("addr=")? + "addr=".len();
                Some(line[at..].split_whitespace().next()?.to_string())
            },
        );
        self.api = format!("http://{addr}");
    }

    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = wait_for(
            "tagstream to exit after SIGTERM",
            || tail(&self.log(), 30),
            || child.try_wait().unwrap(),
        );
        assert_eq!(status.code(), Some(0), "{}", tail(&self.log(), 30));
    }

    /// The sum over all labels of a metric of the running process.
    fn metric(&self, name: &str) -> f64 {
        metric_sum(&fetch_metrics(&self.api), name)
    }

    fn events(&self) -> usize {
        self.metric("tagstream_events_total") as usize
    }

    /// The partitions this run holds, from its `partitions assigned` / `partitions revoked`
    /// log lines, e.g. `partitions assigned partitions=[("events", 0), ("events", 1)]`.
    fn assignment(&self) -> BTreeSet<i32> {
        let marker = format!("(\"{EVENTS}\", ");
        let mut held = BTreeSet::new();
        for line in self.log_text().lines() {
            let assigned = line.contains("partitions assigned");
            if !assigned && !line.contains("partitions revoked") {
                continue;
            }
            let parts = line
                .split(&marker)
                .skip(1)
                .map(|s| s[..s.find(')').unwrap()].parse::<i32>().unwrap());
            for p in parts {
                if assigned {
                    held.insert(p);
                } else {
                    held.remove(&p);
                }
            }
        }
        held
    }

    /// Rebalance lines of this run's log (assignments and revocations).
    fn rebalance_lines(&self) -> usize {
        self.count("partitions assigned") + self.count("partitions revoked")
    }

    fn dump(&self) -> Vec<String> {
        dump(&self.dir.join("state"))
    }

    fn transitions(&self) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.dir.join("transitions.ndjson")).unwrap_or_default();
        by_event_id(text.lines())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Transitions keyed by `event_id`; a redelivered transition must be byte-identical.
fn by_event_id<'a>(lines: impl Iterator<Item = &'a str>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["event_id"].as_str().unwrap().to_string();
        if let Some(old) = map.insert(id.clone(), line.to_string()) {
            assert_eq!(old, line, "two different transitions with event_id {id}");
        }
    }
    map
}

/// The reference: each partition's events replayed (event clock) into its own state dir.
/// Returns the merged dump, sorted by user id, and the transitions.
fn replay_per_partition(dir: &Path, messages: &[Msg]) -> (Vec<String>, BTreeMap<String, String>) {
    let root = dir.join("replay");
    std::fs::create_dir_all(&root).unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/rules/ecommerce.toml");
    let (mut rows, mut transitions) = (Vec::new(), String::new());
    for p in 0..PARTITIONS {
        let input = root.join(format!("p{p}.ndjson"));
        let lines: String = messages
            .iter()
            .filter(|m| m.partition == p)
            .map(|m| format!("{}\n", m.line))
            .collect();
        std::fs::write(&input, lines).unwrap();
        let (state, out) = (root.join(format!("state{p}")), root.join(format!("out{p}")));
        let o = Command::new(bin())
            .arg("replay")
            .arg("--rules")
            .arg(&rules)
            .arg("--input")
            .arg(&input)
            .arg("--state-dir")
            .arg(&state)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "replay: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        rows.extend(dump(&state));
        transitions += &std::fs::read_to_string(&out).unwrap();
    }
    rows.sort_by_key(|l| user_of(l));
    (rows, by_event_id(transitions.lines()))
}

#[test]
fn a_static_member_restarted_within_the_session_timeout_gets_its_partitions_back_with_no_state_moved(
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = if std::env::var("TS_KEEP").is_ok() {
        let kept = tmp.keep();
        eprintln!("keeping {}", kept.display());
        kept
    } else {
        tmp.path().to_path_buf()
    };
    let tansu = Tansu::start(&dir);
    let all = generate();
    let (first, second) = all.split_at(all.len() / 2);
    let (expected_dump, expected_transitions) = replay_per_partition(&dir, &all);
    assert!(
        !expected_transitions.is_empty(),
        "the rules should produce transitions"
    );

    let mut a = Instance::new(&dir, &tansu.servers, "a");
    let mut b = Instance::new(&dir, &tansu.servers, "b");
    let context = |a: &Instance, b: &Instance| {
        format!(
            "{}\n{}\n{}",
            tail(&a.log(), 30),
            tail(&b.log(), 30),
            tail(&tansu.log, 30)
        )
    };
    a.start();
    b.start();
    // The group forms (before any event exists, so no instance holds state it will not keep).
    let (held_a, held_b) = wait_for(
        "both instances to hold partitions, together all of them",
        || context(&a, &b),
        || {
            let (pa, pb) = (a.assignment(), b.assignment());
            (!pa.is_empty()
                && !pb.is_empty()
                && pa.is_disjoint(&pb)
                && pa.len() + pb.len() == PARTITIONS as usize)
                .then_some((pa, pb))
        },
    );
    eprintln!("assigned: a {held_a:?}, b {held_b:?}");

    produce(&tansu.servers, first);
    wait_for(
        "the first half to be consumed",
        || context(&a, &b),
        || (a.events() + b.events() >= first.len()).then_some(()),
    );
    assert_eq!(a.events() + b.events(), first.len(), "events applied twice");
    assert_eq!(a.assignment(), held_a, "{}", context(&a, &b));
    assert_eq!(b.assignment(), held_b, "{}", context(&a, &b));
    let a_events = a.events();
    let b_rebalance_lines = b.rebalance_lines();
    let b_rebalances = b.metric("tagstream_consumer_rebalances_total");
    let b_rebuilds = b.metric("tagstream_partition_rebuilds_total");

    // A static member's SIGTERM sends no LeaveGroup: its partitions wait for it.
    let stopped = Instant::now();
    a.stop();
    assert!(
        a.log_text().contains("kafka consumer closed"),
        "{}",
        tail(&a.log(), 30)
    );
    produce(&tansu.servers, second);
    a.start();
    let back = wait_for(
        "the restarted instance to be assigned partitions",
        || context(&a, &b),
        || Some(a.assignment()).filter(|p| !p.is_empty()),
    );
    let downtime = stopped.elapsed();
    eprintln!("a restarted: partitions {back:?} after {downtime:?} away");
    assert!(
        downtime < Duration::from_millis(SESSION_TIMEOUT_MS),
        "the restart took {downtime:?}, longer than session.timeout.ms: the scenario needs a faster restart"
    );
    assert_eq!(
        back,
        held_a,
        "a got different partitions back\n{}",
        context(&a, &b)
    );

    wait_for(
        "every event to be consumed",
        || context(&a, &b),
        || (a_events + a.events() + b.events() >= all.len()).then_some(()),
    );
    // Nothing moved: b saw no rebalance and rebuilt nothing; a resumed each of its partitions
    // from its own state; no event was applied twice.
    assert_eq!(
        b.rebalance_lines(),
        b_rebalance_lines,
        "b saw a rebalance while a restarted\n{}",
        context(&a, &b)
    );
    assert_eq!(
        b.metric("tagstream_consumer_rebalances_total"),
        b_rebalances,
        "b's rebalance counter moved"
    );
    assert_eq!(
        b.metric("tagstream_partition_rebuilds_total"),
        b_rebuilds,
        "b rebuilt a partition"
    );
    assert_eq!(
        a.metric("tagstream_partition_rebuilds_total"),
        0.0,
        "the restarted a rebuilt a partition\n{}",
        tail(&a.log(), 30)
    );
    assert_eq!(
        a.count("resuming at the stored offset"),
        held_a.len(),
        "{}",
        tail(&a.log(), 30)
    );
    assert_eq!(
        a_events + a.events() + b.events(),
        all.len(),
        "events applied twice"
    );

    wait_for(
        "every expected transition",
        || context(&a, &b),
        || {
            let mut got = a.transitions();
            got.extend(b.transitions());
            (got.len() >= expected_transitions.len()).then_some(())
        },
    );
    // Lag as the group's tools see it: each instance reports its own partitions, all at 0.
    wait_for(
        "consumer lag 0 on every partition",
        || context(&a, &b),
        || {
            let lag: Vec<prometheus_parse::Sample> = [&a, &b]
                .iter()
                .flat_map(|i| fetch_metrics(&i.api).samples)
                .filter(|s| s.metric == "tagstream_consumer_lag_messages")
                .collect();
            (lag.len() == PARTITIONS as usize
                && lag
                    .iter()
                    .all(|s| s.value == prometheus_parse::Value::Gauge(0.0)))
            .then_some(())
        },
    );
    assert_eq!(a.assignment(), held_a, "{}", context(&a, &b));
    assert_eq!(b.assignment(), held_b, "{}", context(&a, &b));
    assert_eq!(
        b.rebalance_lines(),
        b_rebalance_lines,
        "{}",
        context(&a, &b)
    );
    a.stop();
    b.stop();
    // Each state dir holds only the users of its own partitions, and together the exact result.
    let (dump_a, dump_b) = (a.dump(), b.dump());
    for (dump, held, name) in [(&dump_a, &held_a, "a"), (&dump_b, &held_b, "b")] {
        for line in dump {
            let user = user_of(line);
            assert!(
                held.contains(&partition_of(user.as_bytes(), PARTITIONS)),
                "{name} holds state of {user}, of partition {}",
                partition_of(user.as_bytes(), PARTITIONS)
            );
        }
    }
    let mut union: Vec<String> = dump_a.into_iter().chain(dump_b).collect();
    union.sort_by_key(|l| user_of(l));
    for (i, (got, want)) in union.iter().zip(&expected_dump).enumerate() {
        assert_eq!(got, want, "dump line {i} differs");
    }
    assert_eq!(union.len(), expected_dump.len(), "dump sizes differ");
    let mut transitions = a.transitions();
    transitions.extend(b.transitions());
    assert_eq!(transitions, expected_transitions);
    // The changelog topic did not exist: the first instance created it with the input's
    // partition count (the mock cluster of the other tests has no CreateTopics).
    let created: String = [&a, &b]
        .iter()
        .flat_map(|i| (1..=i.runs).map(move |n| i.dir.join(format!("run-{n}.log"))))
        .map(|log| std::fs::read_to_string(log).unwrap_or_default())
        .collect();
    assert!(
        created.contains("changelog topic created") && created.contains("partitions=4"),
        "{}",
        context(&a, &b)
    );
    let admin: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &tansu.servers)
        .create()
        .unwrap();
    let metadata = rdkafka::consumer::Consumer::fetch_metadata(
        &admin,
        Some(&format!("{GROUP}-changelog")),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), PARTITIONS as usize);
    eprintln!(
        "{} events, {} users, {} transitions; a held {held_a:?} across its restart, b {held_b:?}",
        all.len(),
        union.len(),
        transitions.len()
    );
}
