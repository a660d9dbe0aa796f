//! `tagstream run` against a real Kafka protocol endpoint: librdkafka's mock cluster, hosted in
//! this test process, with the real binary spawned as a child.
//!
//! The reference result is `tagstream replay` of each partition's events, in partition order,
//! into its own state dir (a user lives in one partition and event clocks are per partition):
//! the service's final dump must equal the merged per-partition dumps, and its transitions
//! (deduplicated by `event_id`; duplicates must be byte-identical) the union of the replays'.
//!
//! No assertion depends on wall-clock time; deadlines only stop a broken run from hanging. The
//! cluster, the service and the reference replay are the shared harness of `common::kafka`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka::{
    add_transitions, api_base, assert_same_dump, assert_transitions, gen, keyed,
    replay_per_partition, workdir, Cluster, Msg, Proc, Service, CHANGELOG, DEADLINE, DLQ, EVENTS,
    GROUP, PARTITIONS, TRANSITIONS,
};
use common::{fetch_metrics, metric_sum, partition_of, tail, user_of};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn end_to_end_run_equals_a_replay_per_partition() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let messages = keyed(&gen(
        env_or("TS_USERS", 400),
        env_or("TS_EVENTS", 40_000),
        env_or("TS_SEED", 11),
    ));
    cluster.produce(&messages);
    let expected = replay_per_partition(dir.as_path(), &messages);
    assert!(
        expected.transitions.len() > 500,
        "the rules should produce plenty of transitions"
    );

    let mut service = Service::new(dir.as_path(), &cluster, "svc", "", "");
    let mut child = service.spawn();
    // Throughput: from the first committed offset to the last.
    let hi = cluster.high_watermarks(EVENTS);
    let total: i64 = hi.iter().sum();
    let (mut first, mut first_done) = (None, 0i64);
    let deadline = Instant::now() + DEADLINE;
    let finished = loop {
        let done: i64 = cluster.committed().iter().sum();
        if done > 0 && first.is_none() {
            first = Some(Instant::now());
            first_done = done;
        }
        if done == total {
            break Instant::now();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "tagstream exited:\n{}",
            tail(&service.log(), 40)
        );
        assert!(
            Instant::now() < deadline,
            "not consumed:\n{}",
            tail(&service.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = finished.duration_since(first.unwrap()).as_secs_f64();
    if secs > 0.0 {
        eprintln!(
            "end to end: {} events in {secs:.2}s after the first commit = {:.0} events/s",
            total - first_done,
            (total - first_done) as f64 / secs
        );
    }
    let raw = assert_transitions(&cluster, &expected.transitions);
    service.stop(child);
    assert_same_dump(&service.dump(), &expected.dump);
    eprintln!(
        "end to end: {} users, {} transitions ({raw} messages)",
        expected.dump.len(),
        expected.transitions.len()
    );
    // Nothing was dead-lettered.
    assert!(cluster.read_all(DLQ).is_empty());
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    const KILLS: usize = 6;
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let messages = keyed(&gen(500, 100_000, 23));
    let expected = replay_per_partition(dir.as_path(), &messages);
    // The stream arrives in one chunk per run, most of it while the run is consuming: the
    // engine applies tens of thousands of messages in the 100 ms a kill may wait, so a stream
    // produced at once would be consumed in the first two runs.
    let chunk = messages.len().div_ceil(KILLS);

    let mut service = Service::new(dir.as_path(), &cluster, "svc", "", "");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut kills = 0;
    let mut progress = Vec::new();
    for part in messages.chunks(chunk) {
        let (head, rest) = part.split_at(part.len().min(500));
        let before: i64 = cluster.committed().iter().sum();
        cluster.produce(head);
        let mut child = service.spawn();
        // Kill once this run has committed something, at a random moment after that.
        let deadline = Instant::now() + DEADLINE;
        while cluster.committed().iter().sum::<i64>() == before {
            assert!(
                child.try_wait().unwrap().is_none(),
                "tagstream exited:\n{}",
                tail(&service.log(), 40)
            );
            assert!(
                Instant::now() < deadline,
                "no progress:\n{}",
                tail(&service.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.produce(rest);
        std::thread::sleep(Duration::from_millis(rand(100)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        progress.push(cluster.committed().iter().sum::<i64>());
    }
    let hi: i64 = cluster.high_watermarks(EVENTS).iter().sum();
    eprintln!("kill -9 x{kills}; committed offsets after each kill: {progress:?} of {hi}");
    assert_eq!(kills, KILLS);
    let mut child = service.spawn();
    cluster.wait_consumed(&mut child, &service.log());
    let raw = assert_transitions(&cluster, &expected.transitions);
    service.stop(child);
    assert_same_dump(&service.dump(), &expected.dump);
    eprintln!("after {kills} kills: {} transitions, {raw} messages on the topic (redeliveries dropped by event_id)", expected.transitions.len());
}

#[test]
fn sigterm_mid_stream_then_restart_is_exact() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let messages = keyed(&gen(300, 40_000, 5));
    cluster.produce(&messages);
    let expected = replay_per_partition(dir.as_path(), &messages);
    let hi: i64 = cluster.high_watermarks(EVENTS).iter().sum();

    let mut service = Service::new(dir.as_path(), &cluster, "svc", "", "");
    let mut child = service.spawn();
    let deadline = Instant::now() + DEADLINE;
    while cluster.committed().iter().sum::<i64>() == 0 {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "no progress:\n{}",
            tail(&service.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    service.stop(child);
    let at_stop: i64 = cluster.committed().iter().sum();
    let log = std::fs::read_to_string(service.log()).unwrap();
    assert!(
        log.contains("SIGTERM received") && log.contains("kafka consumer closed"),
        "{log}"
    );
    eprintln!("SIGTERM after {at_stop} of {hi} events");
    let mut child = service.spawn();
    cluster.wait_consumed(&mut child, &service.log());
    assert_transitions(&cluster, &expected.transitions);
    service.stop(child);
    assert_same_dump(&service.dump(), &expected.dump);
}

/// The bad-input corpus: (payload, expected reason). Keys are `bad-<i>`.
fn poison_pills() -> Vec<(Option<Vec<u8>>, &'static str)> {
    let deep = format!(
        r#"{{"user_id":"u9","event":"view","ts":1732000000000,"properties":{}1{}}}"#,
        r#"{"a":"#.repeat(100),
        "}".repeat(100)
    );
    let mut huge =
        br#"{"user_id":"u9","event":"view","ts":1732000000000,"properties":{"blob":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 10 << 20));
    huge.extend_from_slice(br#""}}"#);
    vec![
        (Some(b"{not json".to_vec()), "invalid_json"),
        (Some(b"[1,2,3]".to_vec()), "not_an_object"),
        (
            Some(br#"{"user_id":"u9","event":"view","ts":"yesterday"}"#.to_vec()),
            "invalid_timestamp",
        ),
        (
            Some(br#"{"user_id":"u9","event":"view","ts":1732000000000.5}"#.to_vec()),
            "invalid_timestamp",
        ),
        (
            Some(br#"{"user_id":"u9","event":42,"ts":1732000000000}"#.to_vec()),
            "missing_event",
        ),
        (
            Some(br#"{"user_id":true,"event":"view","ts":1732000000000}"#.to_vec()),
            "invalid_user_id",
        ),
        (
            Some(
                br#"{"user_id":"u9","event":"view","ts":1732000000000,"properties":[1]}"#.to_vec(),
            ),
            "invalid_properties",
        ),
        (Some(huge), "too_large"),
        (
            Some(b"\xff\xfe{\"user_id\":\"u9\"}".to_vec()),
            "invalid_json",
        ),
        (Some(deep.into_bytes()), "invalid_json"),
        (
            Some(br#"{"event":"view","ts":1732000000000}"#.to_vec()),
            "missing_user_id",
        ),
        (
            Some(br#"{"user_id":null,"event":"view","ts":1732000000000}"#.to_vec()),
            "missing_user_id",
        ),
        (
            Some(br#"{"user_id":"","event":"view","ts":1732000000000}"#.to_vec()),
            "invalid_user_id",
        ),
        (
            Some(br#"{"type":"merge","user_id":"u9","ts":1732000000000}"#.to_vec()),
            "unknown_type",
        ),
        (Some(Vec::new()), "invalid_json"),
        (None, "invalid_json"),
    ]
}

#[test]
fn poison_pills_go_to_the_dead_letter_topic_and_every_good_event_is_applied() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let good = keyed(&gen(200, 10_000, 3));
    let pills = poison_pills();
    let mut messages = Vec::new();
    let step = good.len() / pills.len();
    for (i, m) in good.iter().enumerate() {
        messages.push(m.clone());
        if i % step == step / 2 && i / step < pills.len() {
            let key = format!("bad-{}", i / step).into_bytes();
            messages.push(Msg {
                partition: partition_of(&key, PARTITIONS),
                key: Some(key),
                payload: pills[i / step].0.clone(),
            });
        }
    }
    cluster.produce(&messages);
    let expected = replay_per_partition(dir.as_path(), &good);

    let mut service = Service::new(dir.as_path(), &cluster, "svc", "", "");
    let mut child = service.spawn();
    cluster.wait_consumed(&mut child, &service.log());
    assert_transitions(&cluster, &expected.transitions);
    // Every pill is in the dead-letter topic, once or more (at least once), with its reason.
    let deadline = Instant::now() + DEADLINE;
    let dead = loop {
        let dead = cluster.read_all(DLQ);
        let keys: BTreeSet<Vec<u8>> = dead.iter().filter_map(|d| d.key.clone()).collect();
        if keys.len() >= pills.len() || Instant::now() > deadline {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    service.stop(child);
    assert_same_dump(&service.dump(), &expected.dump);

    let inputs = cluster.read_all(EVENTS);
    let mut seen = BTreeSet::new();
    for d in &dead {
        let key =
            String::from_utf8(d.key.clone().expect("dead letters keep the message key")).unwrap();
        let i: usize = key
            .strip_prefix("bad-")
            .expect("only pills are dead-lettered")
            .parse()
            .unwrap();
        let (payload, reason) = &pills[i];
        assert_eq!(
            d.headers.get("tagstream.reason").map(String::as_str),
            Some(*reason),
            "{key}: {:?}",
            d.headers
        );
        assert!(!d.headers["tagstream.detail"].is_empty());
        assert_eq!(d.headers["tagstream.topic"], EVENTS);
        let (p, o): (i32, i64) = (
            d.headers["tagstream.partition"].parse().unwrap(),
            d.headers["tagstream.offset"].parse().unwrap(),
        );
        let original = inputs
            .iter()
            .find(|r| r.partition == p && r.offset == o)
            .expect("headers point at the original message");
        assert_eq!(original.key.as_deref(), Some(key.as_bytes()));
        let payload = payload.clone().unwrap_or_default();
        if *reason == "too_large" {
            assert_eq!(d.payload, payload[..64 * 1024].to_vec());
            assert_eq!(
                d.headers.get("tagstream.truncated").map(String::as_str),
                Some("true")
            );
        } else {
            assert_eq!(d.payload, payload, "{key}: the original bytes");
            assert!(!d.headers.contains_key("tagstream.truncated"));
        }
        seen.insert(i);
    }
    assert_eq!(
        seen.len(),
        pills.len(),
        "every pill dead-lettered: {seen:?}"
    );
}

#[test]
fn sink_outage_pauses_consumption_at_the_backlog_bound_and_loses_nothing() {
    use rdkafka::mocking::MockCoordinator;
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(3);
    // The input, the changelog and the group live on broker 1, the transitions topic on
    // broker 3.
    for p in 0..PARTITIONS {
        cluster.mock.partition_leader(EVENTS, p, Some(1)).unwrap();
        cluster
            .mock
            .partition_leader(CHANGELOG, p, Some(1))
            .unwrap();
        cluster.mock.partition_leader(DLQ, p, Some(1)).unwrap();
        cluster
            .mock
            .partition_leader(TRANSITIONS, p, Some(3))
            .unwrap();
    }
    cluster
        .mock
        .coordinator(MockCoordinator::Group(GROUP.into()), 1)
        .unwrap();
    let messages = keyed(&gen(300, 30_000, 17));
    cluster.produce(&messages);
    let expected = replay_per_partition(dir.as_path(), &messages);
    let hi: i64 = cluster.high_watermarks(EVENTS).iter().sum();

    cluster.mock.broker_down(3).unwrap();
    let mut service = Service::new(dir.as_path(), &cluster, "svc", "", "");
    let text = std::fs::read_to_string(&service.config).unwrap().replace(
        "topic = \"transitions\"",
        "topic = \"transitions\"\nmax_backlog = 200",
    );
    std::fs::write(&service.config, text).unwrap();
    let child = service.spawn();
    let log = service.log();
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("pausing consumption")
    {
        assert!(
            Instant::now() < deadline,
            "no backpressure:\n{}",
            tail(&log, 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Paused: the committed position stays put well short of the end.
    std::thread::sleep(Duration::from_secs(2));
    let paused_at: i64 = cluster.committed().iter().sum();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cluster.committed().iter().sum::<i64>(),
        paused_at,
        "consumption went on while the sink was down"
    );
    assert!(
        paused_at < hi,
        "everything was consumed before the backlog bound was reached"
    );
    eprintln!("sink down: paused at {paused_at} of {hi} events");
    cluster.mock.broker_up(3).unwrap();
    let mut child = child;
    cluster.wait_consumed(&mut child, &log);
    assert_transitions(&cluster, &expected.transitions);
    service.stop(child);
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("resuming consumption"));
    assert_same_dump(&service.dump(), &expected.dump);
}

#[test]
fn a_survivor_rebuilds_the_partitions_of_an_instance_that_left_for_good() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let all = keyed(&gen(300, 30_000, 29));
    let (first, second) = all.split_at(all.len() / 2);
    cluster.produce(first);
    let expected = replay_per_partition(dir.as_path(), &all);

    let mut a = Service::new(dir.as_path(), &cluster, "a", "", "");
    let mut b = Service::new(dir.as_path(), &cluster, "b", "", "");
    for (s, id) in [(&a, "a"), (&b, "b")] {
        // With the assignor the Kubernetes ConfigMap ships (incremental rebalances) and static
        // membership, as the StatefulSet runs it. Without a changelog (revision 1): a partition without local state is rebuilt from
        // the input (`changelog_restores_a_lost_volume_...` covers the changelog).
        let text = std::fs::read_to_string(&s.config)
            .unwrap()
            .replace(
                "[sink]",
                &format!("\"group.instance.id\" = \"{id}\"\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n[sink]"),
            )
            .replace("dir = \"state\"", "dir = \"state\"\nchangelog_topic = \"\"");
        std::fs::write(&s.config, text).unwrap();
    }
    // B starts alone and commits group offsets; then A joins and is handed partitions that have
    // group offsets but no local state in A: it must rebuild them from the earliest offset.
    let rebuilds = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("rebuilding it from the earliest")
            .count()
    };
    let mut child_b = b.spawn();
    let deadline = Instant::now() + DEADLINE;
    while cluster.committed().iter().sum::<i64>() == 0 {
        assert!(
            Instant::now() < deadline && child_b.try_wait().unwrap().is_none(),
            "B made no progress:\n{}",
            tail(&b.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut child_a = a.spawn();
    let deadline = Instant::now() + DEADLINE;
    while rebuilds(&a.log()) == 0 {
        assert!(
            Instant::now() < deadline,
            "A was never assigned a partition:\n{}",
            tail(&a.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.wait_consumed(&mut child_a, &a.log());
    // B leaves for good; A is assigned B's partitions, for which it holds no state either.
    let before = rebuilds(&a.log());
    b.stop(child_b);
    let deadline = Instant::now() + DEADLINE;
    while rebuilds(&a.log()) == before {
        assert!(
            Instant::now() < deadline,
            "A never took over B's partitions:\n{}",
            tail(&a.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.produce(second);
    cluster.wait_consumed(&mut child_a, &a.log());
    assert_transitions(&cluster, &expected.transitions);
    a.stop(child_a);
    assert_same_dump(&a.dump(), &expected.dump);
    eprintln!(
        "survivor rebuilt {} partitions it held no state for ({before} when it joined)",
        rebuilds(&a.log())
    );
}

/// Started while every broker is down: the service keeps running and says why nothing happens,
/// then consumes exactly once the broker returns.
#[test]
fn starting_while_every_broker_is_down_waits_and_then_consumes_exactly() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let messages = keyed(&gen(20, 400, 7));
    let expected = replay_per_partition(&dir, &messages);
    assert!(
        !expected.transitions.is_empty(),
        "the rules should produce transitions"
    );
    cluster.mock.broker_down(1).unwrap();
    let mut service = Service::new(&dir, &cluster, "down", "", "");
    let mut child = service.spawn();
    // The pipeline's own wording ("kafka consumer: ... (retrying"), about a broker; polled,
    // since the first failure is logged once librdkafka has tried the broker.
    let says_why = |log: &str| {
        log.lines().any(|l| {
            l.contains("kafka consumer")
                && l.contains("(retrying")
                && l.to_lowercase().contains("broker")
        })
    };
    let deadline = Instant::now() + DEADLINE;
    while !says_why(&std::fs::read_to_string(service.log()).unwrap_or_default()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited while brokers were down:\n{}",
            tail(&service.log(), 40)
        );
        assert!(
            Instant::now() < deadline,
            "no broker line on stderr:\n{}",
            tail(&service.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited while brokers were down:\n{}",
        tail(&service.log(), 40)
    );

    cluster.mock.broker_up(1).unwrap();
    cluster.produce(&messages);
    assert_transitions(&cluster, &expected.transitions);
    service.stop(child);
    assert_same_dump(&service.dump(), &expected.dump);
    assert!(cluster.read_all(DLQ).is_empty());
}

/// A source hands over what a poll found without waiting for a full batch (`max_batch` is
/// 4096): events produced one at a time, each only after the previous one's transition came
/// back from the sink topic, are each applied and delivered on their own. A source that waited
/// for more input would never deliver the first.
#[test]
fn a_lone_event_is_applied_and_delivered_without_waiting_for_a_full_batch() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let mut service = Service::new(&dir, &cluster, "lone", "", "");
    let child = service.spawn();
    let base = 1_732_060_800_000i64;
    for i in 0..3 {
        let user = format!("lone-{i}");
        let event = format!(
            r#"{{"type":"track","event":"purchase","user_id":"{user}","ts":{},"properties":{{"amount":150}}}}"#,
            base + i * 60_000
        );
        cluster.produce(&[Msg {
            partition: partition_of(user.as_bytes(), PARTITIONS),
            key: Some(user.clone().into_bytes()),
            payload: Some(event.into_bytes()),
        }]);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let entered = cluster.read_all(TRANSITIONS).iter().any(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                v["user_id"] == user.as_str()
                    && v["type"] == "segment_enter"
                    && v["segment"] == "spender_7d"
            });
            if entered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "event {i} alone was not applied and delivered:\n{}",
                tail(&service.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    service.stop(child);
    let users: Vec<String> = service.dump().iter().map(|l| user_of(l)).collect();
    assert_eq!(users, ["lone-0", "lone-1", "lone-2"]);
}

/// Consumed events/s end to end (decode, rules, RocksDB commit, transitions produced and
/// acknowledged): `cargo test -p tagstream --test kafka_e2e throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let events: u64 = std::env::var("TS_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let messages = keyed(&gen(events / 50, events, 1));
    cluster.produce(&messages);
    let hi = cluster.high_watermarks(EVENTS);
    let total: i64 = hi.iter().sum();
    let mut service = Service::new(&dir, &cluster, "svc", "", "");
    let mut child = service.spawn();
    let (mut first, mut first_done) = (None, 0i64);
    let deadline = Instant::now() + DEADLINE;
    let finished = loop {
        let done: i64 = cluster.committed().iter().sum();
        if done > 0 && first.is_none() {
            first = Some(Instant::now());
            first_done = done;
        }
        if done == total {
            break Instant::now();
        }
        assert!(
            child.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "{}",
            tail(&service.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let secs = finished.duration_since(first.unwrap()).as_secs_f64();
    eprintln!("throughput: {} events in {secs:.2}s = {:.0} events/s (after the first commit; group join excluded)", total - first_done, (total - first_done) as f64 / secs);
    service.stop(child);
}

/// The key of a changelog checkpoint record.
const CHECKPOINT_KEY: &[u8] = b"\xffcheckpoint";

/// Instance A consumes the first half and stops; its volume is lost; the same service starts
/// with an empty state dir (instance B) while the second half is produced. B restores every
/// partition from the changelog: it applies only the second half, emits no transition again,
/// and ends exactly where a replay of the whole stream does. Records written to the changelog
/// after the last checkpoint (by hand here: a batch cut short) do not reach the restored state.
#[test]
fn changelog_restores_a_lost_volume_without_replaying_history() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let all = keyed(&gen(300, 20_000, 41));
    let (first, second) = all.split_at(all.len() / 2);
    let expected = replay_per_partition(dir.as_path(), &all);
    cluster.produce(first);

    let mut service = Service::new(dir.as_path(), &cluster, "svc", "", "");
    let started = Instant::now();
    let mut a = service.spawn();
    cluster.wait_consumed(&mut a, &service.log());
    let rebuild_secs = started.elapsed().as_secs_f64();
    service.stop(a);
    let dump_a = service.dump();

    // Every partition of the changelog ends with a checkpoint naming the input offsets.
    let hi = cluster.high_watermarks(EVENTS);
    let records = cluster.read_all(CHANGELOG);
    let changelog_bytes: usize = records
        .iter()
        .map(|r| r.payload.len() + r.key.as_ref().map_or(0, Vec::len))
        .sum();
    for p in 0..PARTITIONS {
        let last = records
            .iter()
            .rfind(|r| r.partition == p)
            .unwrap_or_else(|| panic!("changelog partition {p} is empty"));
        assert_eq!(last.key.as_deref(), Some(CHECKPOINT_KEY));
        let checkpoint: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
        assert_eq!(
            checkpoint["offsets"][EVENTS], hi[p as usize],
            "checkpoint of partition {p}: {checkpoint}"
        );
    }

    // A batch cut short: a tombstone of a live user and a state of a user that never existed,
    // after the last checkpoint.
    let victim = user_of(&dump_a[0]);
    let p = partition_of(victim.as_bytes(), PARTITIONS);
    let some_state = records
        .iter()
        .find(|r| r.partition == p && r.key.as_deref() != Some(CHECKPOINT_KEY))
        .map(|r| r.payload.clone())
        .unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.servers)
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::<[u8], [u8]>::to(CHANGELOG)
                .partition(p)
                .key(victim.as_bytes()),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer
        .send(
            BaseRecord::<[u8], [u8]>::to(CHANGELOG)
                .partition(p)
                .key(b"zz-ghost".as_slice())
                .payload(some_state.as_slice()),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();

    // The volume is lost.
    std::fs::remove_dir_all(service.state()).unwrap();
    cluster.produce(second);
    let mut b = service.spawn();
    let base = api_base(&service.log(), &mut b);
    cluster.wait_consumed(&mut b, &service.log());
    let raw = assert_transitions(&cluster, &expected.transitions);
    let m = fetch_metrics(&base);
    service.stop(b);
    assert_same_dump(&service.dump(), &expected.dump);
    assert_eq!(
        raw,
        expected.transitions.len(),
        "a restore emits no transition: every transition was sent once"
    );
    assert_eq!(
        metric_sum(&m, "tagstream_events_total") as usize,
        second.len(),
        "B read only the events after A's checkpoint"
    );
    assert_eq!(
        metric_sum(&m, "tagstream_changelog_restores_total"),
        f64::from(PARTITIONS)
    );
    let restored_records = metric_sum(&m, "tagstream_changelog_restore_records_total");
    assert!(restored_records >= (records.len() + 2) as f64);
    assert!(metric_sum(&m, "tagstream_changelog_records_published_total") > 0.0);

    // Restore rate against the rebuild A did of the same state from the input history.
    let log = std::fs::read_to_string(service.log()).unwrap();
    let restore_secs: f64 = log
        .lines()
        .filter(|l| l.contains("partition restored from the changelog"))
        .filter_map(|l| {
            l.split("seconds=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum();
    let users = dump_a.len() as f64;
    eprintln!(
        "restore: {} records ({:.2} MB, {users} users) in {restore_secs:.3}s = {:.0} users/s, {:.1} MB/s; rebuild from the input: {} events in {rebuild_secs:.2}s = {:.0} users/s; restore is {:.0}x faster",
        records.len(),
        changelog_bytes as f64 / 1e6,
        users / restore_secs.max(1e-6),
        changelog_bytes as f64 / 1e6 / restore_secs.max(1e-6),
        first.len(),
        users / rebuild_secs,
        rebuild_secs / restore_secs.max(1e-6)
    );
}

/// A changelog topic whose partition count differs from the input's is a startup error naming
/// both counts.
#[test]
fn a_changelog_with_another_partition_count_is_a_startup_error() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    cluster.mock.create_topic("two-partitions", 2, 1).unwrap();
    let mut service = Service::new(dir.as_path(), &cluster, "svc", "", "");
    let text = std::fs::read_to_string(&service.config).unwrap().replace(
        "dir = \"state\"",
        "dir = \"state\"\nchangelog_topic = \"two-partitions\"",
    );
    std::fs::write(&service.config, text).unwrap();
    let mut child = service.spawn();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tagstream kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(service.log()).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("has 2 partitions but the input has 4"),
        "{log}"
    );
}

/// A consistent copy of the state dir taken earlier is put back (a volume restored from a
/// backup): the partitions are restored from the changelog, which is newer, and the service ends
/// exactly where a replay of the whole stream does, reading only what came after the changelog's
/// checkpoints.
#[test]
fn a_rolled_back_state_dir_is_restored_from_the_newer_changelog() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let all = keyed(&gen(200, 9_000, 43));
    let third = all.len() / 3;
    let (first, rest) = all.split_at(third);
    let (second, last) = rest.split_at(third);
    let expected = replay_per_partition(dir.as_path(), &all);
    let mut service = Service::new(dir.as_path(), &cluster, "svc", "", "");

    cluster.produce(first);
    let mut child = service.spawn();
    cluster.wait_consumed(&mut child, &service.log());
    service.stop(child);
    let backup = dir.join("backup");
    copy_dir(&service.state(), &backup);

    cluster.produce(second);
    let mut child = service.spawn();
    cluster.wait_consumed(&mut child, &service.log());
    service.stop(child);
    // A restart on a current state dir does not read the changelog: it ends with the
    // checkpoints this instance published.
    let restart = std::fs::read_to_string(service.log()).unwrap();
    assert_eq!(
        restart.matches("changelog_read=false").count(),
        PARTITIONS as usize,
        "{}",
        tail(&service.log(), 40)
    );

    std::fs::remove_dir_all(service.state()).unwrap();
    copy_dir(&backup, &service.state());
    cluster.produce(last);
    let mut child = service.spawn();
    let base = api_base(&service.log(), &mut child);
    cluster.wait_consumed(&mut child, &service.log());
    assert_transitions(&cluster, &expected.transitions);
    let m = fetch_metrics(&base);
    service.stop(child);
    assert_same_dump(&service.dump(), &expected.dump);
    assert_eq!(
        metric_sum(&m, "tagstream_changelog_restores_total"),
        f64::from(PARTITIONS),
        "{}",
        tail(&service.log(), 40)
    );
    assert_eq!(
        metric_sum(&m, "tagstream_events_total") as usize,
        last.len()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Scale 1 → 2 → 1 mid-stream with the changelog: B joins and restores the partitions it is
/// given (it has no state), then leaves; A gets them back with its own copy now stale and
/// restores them from the changelog. A ends exactly where a replay of the stream does.
#[test]
fn scaling_out_and_back_in_restores_moved_partitions_from_the_changelog() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let all = keyed(&gen(300, 24_000, 47));
    let third = all.len() / 3;
    let (first, rest) = all.split_at(third);
    let (second, last) = rest.split_at(third);
    let expected = replay_per_partition(dir.as_path(), &all);
    let mut a = Service::new(dir.as_path(), &cluster, "a", "", "");
    let mut b = Service::new(dir.as_path(), &cluster, "b", "", "");
    let restores = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("partition restored from the changelog")
            .count()
    };
    let wait = |what: &str, log: &Path, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + DEADLINE;
        while !done() {
            assert!(Instant::now() < deadline, "{what}:\n{}", tail(log, 40));
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    cluster.produce(first);
    let mut child_a = a.spawn();
    cluster.wait_consumed(&mut child_a, &a.log());
    let child_b = b.spawn();
    let b_log = b.log();
    wait("B restored nothing", &b_log, &|| restores(&b_log) > 0);
    cluster.produce(second);
    cluster.wait_consumed(&mut child_a, &a.log());
    let moved = restores(&b_log);
    b.stop(child_b);
    let a_log = a.log();
    wait("A never restored the partitions B had", &a_log, &|| {
        restores(&a_log) >= moved
    });
    cluster.produce(last);
    cluster.wait_consumed(&mut child_a, &a.log());
    assert_transitions(&cluster, &expected.transitions);
    a.stop(child_a);
    assert_same_dump(&a.dump(), &expected.dump);
    eprintln!(
        "scale 1 → 2 → 1: B restored {moved} partitions, A restored {} on their return",
        restores(&a.log())
    );
}

/// Rules whose segments turn on `now()`: in wall mode their timers fire within seconds.
const WALL_RULES: &str = r#"
[[tag]]
name = "last_seen"
kind = "last_time"
event = "*"

[[tag]]
name = "first_seen"
kind = "first_time"
event = "*"

[[tag]]
name = "views"
kind = "count"
event = "view"

[[segment]]
name = "recent"
when = "last_seen > now() - 3s"

[[segment]]
name = "newcomer"
when = "first_seen > now() - 5s AND views >= 2"
"#;

/// A cluster whose changelog lives on a broker of its own (broker 2), which tests take down:
/// were transitions delivered before their checkpoint is acknowledged, a state lost or left
/// behind meanwhile would make their events be applied again at a new engine time (wall
/// mode), under new ids.
fn cluster_with_changelog_broker() -> Cluster {
    let cluster = Cluster::new(2);
    for p in 0..PARTITIONS {
        for t in [EVENTS, TRANSITIONS, DLQ] {
            cluster.mock.partition_leader(t, p, Some(1)).unwrap();
        }
        cluster
            .mock
            .partition_leader(CHANGELOG, p, Some(2))
            .unwrap();
    }
    cluster
        .mock
        .coordinator(rdkafka::mocking::MockCoordinator::Group(GROUP.into()), 1)
        .unwrap();
    cluster
}

/// A service in wall mode with [`WALL_RULES`].
fn wall_service(dir: &Path, cluster: &Cluster, name: &str) -> Service {
    let service = Service::new(dir, cluster, name, "", "");
    std::fs::write(service.dir.join("rules.toml"), WALL_RULES).unwrap();
    let text = std::fs::read_to_string(&service.config)
        .unwrap()
        .replace("mode = \"event\"", "mode = \"wall\"");
    std::fs::write(&service.config, text).unwrap();
    service
}

/// Views of users `w0`..`w{users}` stamped with the current time, and what they imply per user:
/// (views, first event time, last event time).
struct WallEvents {
    users: u64,
    seed: u64,
    produced: BTreeMap<String, (u64, i64, i64)>,
}

impl WallEvents {
    fn new(users: u64, seed: u64) -> WallEvents {
        WallEvents {
            users,
            seed,
            produced: BTreeMap::new(),
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed % n
    }

    fn next(&mut self, n: usize) -> Vec<Msg> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        (0..n)
            .map(|i| {
                let user = format!("w{}", self.rand(self.users));
                let ts = now - 50 + (i as i64 % 50);
                let e = self.produced.entry(user.clone()).or_insert((0, ts, ts));
                e.0 += 1;
                e.1 = e.1.min(ts);
                e.2 = e.2.max(ts);
                let line = format!(r#"{{"user_id":"{user}","event":"view","ts":{ts}}}"#);
                Msg {
                    partition: partition_of(user.as_bytes(), PARTITIONS),
                    key: Some(user.into_bytes()),
                    payload: Some(line.into_bytes()),
                }
            })
            .collect()
    }
}

/// Spawns `service` and waits until the group committed more than before it started.
fn spawn_until_progress(cluster: &Cluster, service: &mut Service, before: i64) -> Proc {
    let mut child = service.spawn();
    let deadline = Instant::now() + DEADLINE;
    while cluster.committed().iter().sum::<i64>() == before {
        assert!(
            child.try_wait().unwrap().is_none(),
            "tagstream exited:\n{}",
            tail(&service.log(), 40)
        );
        assert!(
            Instant::now() < deadline,
            "no progress:\n{}",
            tail(&service.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Spawns `service` and waits until it owns its partitions: events produced then are applied
/// within moments (in wall mode, within the seconds of a `now()` condition).
fn spawn_assigned(service: &mut Service) -> Proc {
    let mut child = service.spawn();
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(service.log())
        .unwrap_or_default()
        .contains("partitions assigned")
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            tail(&service.log(), 40)
        );
        assert!(Instant::now() < deadline, "{}", tail(&service.log(), 40));
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Waits until every (user, segment) on the sink has left its segment again (its last seq is
/// even) and returns the transitions by event_id (a redelivery must be identical).
fn wait_all_exited(
    cluster: &Cluster,
    users: usize,
    child: &mut Proc,
    log: &Path,
) -> BTreeMap<String, serde_json::Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut by_id = BTreeMap::new();
        add_transitions(
            &mut by_id,
            cluster.read_all(TRANSITIONS).into_iter().map(|r| r.payload),
        );
        let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
        for v in by_id.values() {
            let key = (
                v["user_id"].as_str().unwrap().to_string(),
                v["segment"].as_str().unwrap().to_string(),
            );
            let seq = last.entry(key).or_default();
            *seq = (*seq).max(v["seq"].as_u64().unwrap());
        }
        let open = last.values().filter(|n| *n % 2 == 1).count();
        if open == 0 && last.len() >= users {
            return by_id;
        }
        if Instant::now() >= deadline {
            let Some(((user, segment), _)) = last.iter().find(|(_, n)| *n % 2 == 1) else {
                panic!(
                    "only {} (user, segment) pairs of {users} users reached the sink",
                    last.len()
                );
            };
            let mut history: Vec<&serde_json::Value> = by_id
                .values()
                .filter(|v| v["user_id"] == user.as_str() && v["segment"] == segment.as_str())
                .collect();
            history.sort_by_key(|v| v["seq"].as_u64());
            panic!(
                "{open} (user, segment) pairs still entered, {} seen; {user} {segment}: {history:#?}\n{}",
                last.len(),
                tail(log, 40)
            );
        }
        assert!(child.try_wait().unwrap().is_none(), "{}", tail(log, 40));
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every (user, segment) on the sink shows seq 1..n, each under one id, enter on odd seq and
/// exit on even, ending outside the segment; every user entered `recent`; and the dump is what
/// the produced events imply (every view counted once, first and last event times, nobody in
/// a segment). Returns the number of (user, segment) pairs.
fn assert_ids_never_changed(
    transitions: &BTreeMap<String, serde_json::Value>,
    events: &WallEvents,
    dump: &[String],
) -> usize {
    let mut seqs: BTreeMap<(String, String), BTreeMap<u64, Vec<String>>> = BTreeMap::new();
    for (id, v) in transitions {
        let key = (
            v["user_id"].as_str().unwrap().to_string(),
            v["segment"].as_str().unwrap().to_string(),
        );
        let seq = v["seq"].as_u64().unwrap();
        let want = if seq % 2 == 1 {
            "segment_enter"
        } else {
            "segment_exit"
        };
        assert_eq!(v["type"], want, "{v}");
        seqs.entry(key)
            .or_default()
            .entry(seq)
            .or_default()
            .push(id.clone());
    }
    for ((user, segment), by_seq) in &seqs {
        for (seq, ids) in by_seq {
            assert_eq!(
                ids.len(),
                1,
                "{user} {segment} seq {seq} reached the sink under {} ids: {:?}",
                ids.len(),
                ids.iter().map(|id| &transitions[id]).collect::<Vec<_>>()
            );
        }
        let n = by_seq.len() as u64;
        assert_eq!(
            by_seq.keys().copied().collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "{user} {segment}: a gap in seq"
        );
        assert_eq!(n % 2, 0, "{user} {segment} ends entered");
    }
    for user in events.produced.keys() {
        assert!(
            seqs.contains_key(&(user.clone(), "recent".to_string())),
            "{user} never entered recent"
        );
    }
    assert_eq!(dump.len(), events.produced.len(), "users in the dump");
    for line in dump {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let user = v["user_id"].as_str().unwrap();
        let (views, first, last) = events.produced[user];
        assert_eq!(v["tags"]["views"].as_u64(), Some(views), "{line}");
        assert_eq!(v["tags"]["first_seen"].as_i64(), Some(first), "{line}");
        assert_eq!(v["tags"]["last_seen"].as_i64(), Some(last), "{line}");
        assert_eq!(v["segments"], serde_json::json!([]), "{line}");
    }
    seqs.len()
}

/// Partition restores logged over every run of `service`.
fn restores_logged(service: &Service) -> usize {
    std::fs::read_dir(&service.dir)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .map(|t| t.matches("partition restored from the changelog").count())
        .sum()
}

/// Wall mode, where re-applying an event gives it a new engine time and so new transition
/// ids: kill -9 at random moments, the state dir deleted after some kills (the next instance
/// restores from the changelog), a graceful stop whose copy of the state dir is put back later
/// (a rollback), then the timers left fire with no input. Before each kill that loses the
/// state, the changelog's broker is down while the sink's is up. See [`assert_ids_never_changed`]
/// for what must hold.
#[test]
fn wall_mode_ids_never_change_across_kills_lost_volumes_and_a_rollback() {
    const ROUNDS: usize = 7;
    let (_guard, dir) = workdir();
    let cluster = cluster_with_changelog_broker();
    let mut service = wall_service(dir.as_path(), &cluster, "svc");
    let mut events = WallEvents::new(150, 0x2545_f491_4f6c_dd1d);
    let backup = dir.join("backup");
    let mut log = Vec::new();
    for round in 0..ROUNDS {
        let before: i64 = cluster.committed().iter().sum();
        cluster.produce(&events.next(300));
        let mut child = spawn_until_progress(&cluster, &mut service, before);
        let loses_state = matches!(round, 2 | 4 | 5);
        if loses_state {
            cluster.mock.broker_down(2).unwrap();
        }
        cluster.produce(&events.next(3_000));
        let action = if round == 1 {
            cluster.wait_consumed(&mut child, &service.log());
            service.stop(child);
            if backup.exists() {
                std::fs::remove_dir_all(&backup).unwrap();
            }
            copy_dir(&service.state(), &backup);
            "graceful stop, state copied"
        } else {
            let pause = 200 + events.rand(300);
            std::thread::sleep(Duration::from_millis(pause));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            cluster.mock.broker_up(2).unwrap();
            if loses_state {
                "changelog broker down, kill -9"
            } else {
                "kill -9"
            }
        };
        let after = match round {
            2 | 4 => {
                std::fs::remove_dir_all(service.state()).unwrap();
                "state dir deleted"
            }
            5 => {
                std::fs::remove_dir_all(service.state()).unwrap();
                copy_dir(&backup, &service.state());
                "the earlier copy put back"
            }
            _ => "",
        };
        log.push(format!(
            "round {round}: {action} at {} committed; {after}",
            cluster.committed().iter().sum::<i64>()
        ));
    }
    eprintln!("{}", log.join("\n"));

    // The last instance consumes the rest; then, with no input, every user leaves both
    // segments as their timers fire.
    let mut child = service.spawn();
    let base = api_base(&service.log(), &mut child);
    cluster.wait_consumed(&mut child, &service.log());
    let transitions = wait_all_exited(&cluster, events.produced.len(), &mut child, &service.log());
    let m = fetch_metrics(&base);
    service.stop(child);
    assert_eq!(metric_sum(&m, "tagstream_dead_letters_total"), 0.0);
    let pairs = assert_ids_never_changed(&transitions, &events, &service.dump());
    let restores = restores_logged(&service);
    eprintln!(
        "{} transitions of {pairs} (user, segment) pairs, {restores} partition restores over the runs",
        transitions.len(),
    );
    assert!(
        restores >= 3 * PARTITIONS as usize,
        "every lost or rolled-back volume was restored"
    );
}

/// An instance killed while the changelog's broker was down comes back, with its state dir,
/// after another instance owned its partitions and published further checkpoints. What it had
/// staged but not published belongs to a history the other owner never saw: it must not reach
/// the changelog (nothing is published for a partition before its assignment is checked), and
/// its state is restored from the other owner's checkpoints even where its own serials are
/// higher; none of its unpublished transitions reaches the sink.
#[test]
fn an_instance_back_after_another_owner_publishes_nothing_of_its_stale_history() {
    let (_guard, dir) = workdir();
    let cluster = cluster_with_changelog_broker();
    let mut a = wall_service(dir.as_path(), &cluster, "a");
    let mut b = wall_service(dir.as_path(), &cluster, "b");
    let mut events = WallEvents::new(120, 0x9e37_79b9_7f4a_7c15);

    // A applies a lot while the changelog is unreachable, then dies.
    cluster.produce(&events.next(300));
    let mut child = spawn_until_progress(&cluster, &mut a, 0);
    cluster.mock.broker_down(2).unwrap();
    cluster.produce(&events.next(4_000));
    std::thread::sleep(Duration::from_millis(1_500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    cluster.mock.broker_up(2).unwrap();

    // B owns every partition for a short while, and its users enter `recent` again at seqs
    // A's unpublished history also used (B's serials may end below A's staged ones or above
    // them: A must drop its own history either way).
    let mut child = spawn_assigned(&mut b);
    cluster.produce(&events.next(1_200));
    cluster.wait_consumed(&mut child, &b.log());
    b.stop(child);
    let text = std::fs::read_to_string(b.log()).unwrap();
    assert_eq!(
        text.matches("partition restored from the changelog")
            .count(),
        PARTITIONS as usize,
        "B started from A's published checkpoints:\n{}",
        tail(&b.log(), 40)
    );

    // A returns with its stale state dir and finishes the stream: events produced once it
    // owns the partitions are applied within the 3 s of `recent`, so every user enters it.
    let mut child = spawn_assigned(&mut a);
    cluster.produce(&events.next(2_000));
    cluster.wait_consumed(&mut child, &a.log());
    let transitions = wait_all_exited(&cluster, events.produced.len(), &mut child, &a.log());
    a.stop(child);
    let pairs = assert_ids_never_changed(&transitions, &events, &a.dump());
    let text = std::fs::read_to_string(a.log()).unwrap();
    eprintln!(
        "{} transitions of {pairs} pairs; A restored {} partitions on its return",
        transitions.len(),
        text.matches("partition restored from the changelog")
            .count()
    );
    assert!(
        text.matches("partition restored from the changelog")
            .count()
            >= 1,
        "{}",
        tail(&a.log(), 40)
    );
}
