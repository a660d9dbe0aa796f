//! One answer from any pod (`api.peers`): three `tagstream run` instances in one consumer
//! group on librdkafka's mock cluster (hosted in this process), each listing all three as
//! peers. Every `/v1` read asked of any instance must equal the answer computed from the
//! reference — each partition's events replayed into its own state dir, the dumps merged —
//! and one instance stopped makes the others answer 503 naming it.
//!
//! No assertion depends on wall-clock time; deadlines only stop a broken run from hanging.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{bin, dump, metric_sum, partition_of, spawn_run, tail, user_of};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const PARTITIONS: i32 = 6;
const EVENTS: &str = "events";
const GROUP: &str = "ts-peers";
const TOKEN: &str = "peer-token";
const DEADLINE: Duration = Duration::from_secs(180);

fn rules() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/rules/ecommerce.toml"),
    )
    .unwrap()
}

/// A spawned `tagstream run`, killed if the test fails before stopping it.
struct Instance {
    child: Option<Child>,
    log: PathBuf,
    addr: String,
}

impl Instance {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// (status, JSON) of a `/v1` request with the token.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let req = ureq::request(method, &format!("{}{path}", self.base()))
            .set("Authorization", &format!("Bearer {TOKEN}"));
        let result = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}\n{}", tail(&self.log, 30)),
        };
        let status = response.status();
        let text = response.into_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
        )
    }

    fn get(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// User ids of an NDJSON export.
    fn export(&self, method: &str, path: &str, body: Option<&Value>) -> Vec<String> {
        let req = ureq::request(method, &format!("{}{path}", self.base()))
            .set("Authorization", &format!("Bearer {TOKEN}"));
        let response = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(
            response.header("content-type"),
            Some("application/x-ndjson")
        );
        response
            .into_string()
            .unwrap()
            .lines()
            .map(user_of)
            .collect()
    }

    /// Every member of a paged list (GET members or POST audiences), in order.
    fn pages(&self, path: &str, expr: Option<&str>, limit: usize) -> (Option<u64>, Vec<String>) {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match expr {
                None => {
                    let url = match &cursor {
                        Some(c) => format!("{path}?limit={limit}&cursor={c}"),
                        None => format!("{path}?limit={limit}"),
                    };
                    self.get(&url)
                }
                Some(expr) => {
                    let (status, v) = self.call(
                        "POST",
                        path,
                        Some(&json!({ "expr": expr, "limit": limit, "cursor": cursor })),
                    );
                    assert_eq!(status, 200, "{expr}: {v}");
                    v
                }
            };
            let members = page["members"].as_array().unwrap();
            assert!(members.len() <= limit);
            out.extend(members.iter().map(|m| m.as_str().unwrap().to_string()));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return (page["size"].as_u64(), out),
            }
        }
    }

    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        common::sigterm(&child);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{}", tail(&self.log, 30));
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (partition, event line) of a generated stream, keyed by user id.
fn generated() -> Vec<(i32, String)> {
    let out = Command::new(bin())
        .args(["gen", "--users", "400", "--events", "8000", "--seed", "5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let user = user_of(l);
            (partition_of(user.as_bytes(), PARTITIONS), l.to_string())
        })
        .collect()
}

/// Each partition's events replayed into its own state dir; the dumps merged, by user id.
fn reference(dir: &Path, lines: &[(i32, String)]) -> BTreeMap<String, Value> {
    let root = dir.join("replay");
    std::fs::create_dir_all(&root).unwrap();
    let rules_file = root.join("rules.toml");
    std::fs::write(&rules_file, rules()).unwrap();
    let mut merged = BTreeMap::new();
    for p in 0..PARTITIONS {
        let input = root.join(format!("p{p}.ndjson"));
        let mut f = std::fs::File::create(&input).unwrap();
        for (_, l) in lines.iter().filter(|(q, _)| *q == p) {
            writeln!(f, "{l}").unwrap();
        }
        drop(f);
        let state = root.join(format!("state{p}"));
        let o = Command::new(bin())
            .args([
                "replay",
                "--rules",
                rules_file.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--out",
                root.join(format!("out{p}.ndjson")).to_str().unwrap(),
                "--dlq",
                root.join(format!("dlq{p}.ndjson")).to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for line in dump(&state) {
            let v: Value = serde_json::from_str(&line).unwrap();
            merged.insert(v["user_id"].as_str().unwrap().to_string(), v);
        }
    }
    merged
}

fn produce(servers: &str, lines: &[(i32, String)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (p, l) in lines {
        let key = user_of(l);
        let record = BaseRecord::<str, str>::to(EVENTS)
            .partition(*p)
            .key(key.as_str())
            .payload(l.as_str());
        common::send_retrying(&producer, record);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Offsets the group has committed, per partition, and the high watermarks.
fn progress(servers: &str) -> (Vec<i64>, Vec<i64>) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let hi = (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(EVENTS, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(EVENTS, p, Offset::Invalid)
            .unwrap();
    }
    let committed = match c.committed_offsets(tpl, Duration::from_secs(10)) {
        Ok(t) => (0..PARTITIONS)
            .map(|p| {
                t.find_partition(EVENTS, p)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(-1)
                    .max(0)
            })
            .collect(),
        Err(_) => vec![0; PARTITIONS as usize],
    };
    (committed, hi)
}

fn members_of(dump: &BTreeMap<String, Value>, segment: &str) -> BTreeSet<String> {
    dump.iter()
        .filter(|(_, v)| {
            v["segments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == segment)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

#[test]
fn every_instance_answers_for_the_whole_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockCluster::new(1).unwrap();
    // The mock has no CreateTopics: the changelog topic tagstream would create is made here.
    for t in [EVENTS, "transitions", "dlq", "ts-peers-changelog"] {
        mock.create_topic(t, PARTITIONS, 1).unwrap();
    }
    let servers = mock.bootstrap_servers();
    let lines = generated();
    let want = reference(dir.path(), &lines);
    produce(&servers, &lines);

    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let mut instances = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let root = dir.path().join(format!("i{i}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("rules.toml"), rules()).unwrap();
        std::fs::write(root.join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(
            root.join("tagstream.toml"),
            format!(
                r#"rules = "rules.toml"
[source]
kind = "kafka"
brokers = "{servers}"
topics = ["{EVENTS}"]
group_id = "{GROUP}"
[source.options]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "300"
[sink]
kind = "kafka"
topic = "transitions"
[dead_letter]
kind = "kafka"
topic = "dlq"
[state]
dir = "state"
[clock]
mode = "event"
[api]
listen = "127.0.0.1:{port}"
token_file = "token"
peers = [{}]
"#,
                peers.join(", ")
            ),
        )
        .unwrap();
        let log = root.join("run.log");
        let child = spawn_run(&root.join("tagstream.toml"), &log);
        instances.push(Instance {
            child: Some(child),
            log,
            addr: format!("127.0.0.1:{port}"),
        });
    }
    // Everything consumed, and every instance ready (owning partitions).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (committed, hi) = progress(&servers);
        let ready = instances.iter().all(|i| {
            ureq::get(&format!("{}/readyz", i.base()))
                .call()
                .is_ok_and(|r| r.status() == 200)
        });
        if committed == hi && ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not consumed: {committed:?} of {hi:?}\n{}",
            instances
                .iter()
                .map(|i| tail(&i.log, 20))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Event clock: timers that became due in a partition's last batch fire at the next tick
    // (a second later), so the segment bitmaps settle shortly after the last commit.
    let sizes = |v: &Value| -> BTreeMap<String, u64> {
        v["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["size"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = sizes(&instances[0].get("/v1/segments"));
        let expected: BTreeMap<String, u64> = got
            .keys()
            .map(|k| (k.clone(), members_of(&want, k).len() as u64))
            .collect();
        if got == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "segment sizes never settled to the reference: {got:?} != {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let segments: Vec<String> = instances[0].get("/v1/segments")["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let sample: Vec<&String> = want.keys().step_by(37).collect();
    let everyone: BTreeSet<String> = want.keys().cloned().collect();
    let tagged: BTreeSet<String> = want
        .iter()
        .filter(|(_, v)| {
            v["tags"]["orders_90d"].as_f64().is_some_and(|n| n >= 1.0)
                && matches!(v["tags"]["city"].as_str(), Some("Shanghai" | "Beijing"))
        })
        .map(|(k, _)| k.clone())
        .collect();
    let mut answers: Vec<Value> = Vec::new();
    for inst in &instances {
        let mut answer = serde_json::Map::new();
        // Sizes summed over every pod.
        let listed = inst.get("/v1/segments");
        for s in listed["segments"].as_array().unwrap() {
            let name = s["name"].as_str().unwrap();
            assert_eq!(
                s["size"].as_u64().unwrap() as usize,
                members_of(&want, name).len(),
                "{name}"
            );
        }
        answer.insert("segments".into(), listed);
        // Members page through the combined list, each user once; the export is the same list.
        for name in &segments {
            let path = format!("/v1/segments/{name}/members");
            let (_, paged) = inst.pages(&path, None, 13);
            let set: BTreeSet<String> = paged.iter().cloned().collect();
            assert_eq!(set.len(), paged.len(), "{name}: a member repeated");
            assert_eq!(set, members_of(&want, name), "{name}");
            let exported = inst.export("GET", &format!("/v1/segments/{name}/export"), None);
            assert_eq!(exported, paged, "{name}");
            answer.insert(name.clone(), json!(paged));
        }
        // Audiences: set algebra and a condition over tags.
        for (expr, expected) in [
            ("NOT cart_abandoner", {
                let c = members_of(&want, "cart_abandoner");
                everyone.difference(&c).cloned().collect::<BTreeSet<_>>()
            }),
            (
                "orders_90d >= 1 AND city IN ('Shanghai', 'Beijing')",
                tagged.clone(),
            ),
        ] {
            let (size, paged) = inst.pages("/v1/audiences", Some(expr), 29);
            assert_eq!(size, Some(expected.len() as u64), "{expr}");
            assert_eq!(
                paged.iter().cloned().collect::<BTreeSet<_>>(),
                expected,
                "{expr}"
            );
            assert_eq!(paged.len(), expected.len(), "{expr}");
            let exported = inst.export(
                "POST",
                "/v1/audiences/export",
                Some(&json!({ "expr": expr })),
            );
            assert_eq!(exported, paged, "{expr}");
            answer.insert(expr.into(), json!(paged));
        }
        // A user is answered by the pod that owns its partition, whichever pod is asked.
        for id in &sample {
            assert_eq!(&inst.get(&format!("/v1/users/{id}")), &want[*id], "{id}");
            let e = inst.get(&format!("/v1/users/{id}/explain?segment=cart_abandoner"));
            assert_eq!(
                e["member"].as_bool().unwrap(),
                members_of(&want, "cart_abandoner").contains(*id)
            );
        }
        assert_eq!(inst.call("GET", "/v1/users/nobody-here", None).0, 404);
        let (status, v) = inst.call(
            "POST",
            "/v1/audiences",
            Some(&json!({ "expr": "nope > 1" })),
        );
        assert_eq!((status, v["column"].as_u64()), (400, Some(1)), "{v}");
        answers.push(Value::Object(answer));
    }
    // Every instance gives the same answers, in the same order.
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
    let m = common::fetch_metrics(&instances[0].base());
    assert!(metric_sum(&m, "tagstream_api_peer_requests_total") > 0.0);

    // One instance stopped: the others refuse to answer for the deployment, naming it.
    let mut stopped = instances.pop().unwrap();
    stopped.stop();
    for inst in &instances {
        for (method, path, body) in [
            ("GET", "/v1/segments".to_string(), None),
            ("GET", format!("/v1/users/{}", sample[0]), None),
            (
                "GET",
                "/v1/segments/cart_abandoner/members".to_string(),
                None,
            ),
            (
                "POST",
                "/v1/audiences".to_string(),
                Some(json!({ "expr": "cart_abandoner" })),
            ),
        ] {
            let (status, v) = inst.call(method, &path, body.as_ref());
            assert_eq!(status, 503, "{method} {path}: {v}");
            assert!(v["error"].as_str().unwrap().contains(&stopped.addr), "{v}");
            assert_eq!(v["peer"], stopped.addr.as_str(), "{v}");
        }
        let (status, _) = inst.call(
            "POST",
            "/v1/audiences/export",
            Some(&json!({ "expr": "cart_abandoner" })),
        );
        assert_eq!(status, 503);
    }
    let m = common::fetch_metrics(&instances[0].base());
    assert!(metric_sum(&m, "tagstream_api_peer_failures_total") > 0.0);
    for mut inst in instances {
        inst.stop();
    }
}
