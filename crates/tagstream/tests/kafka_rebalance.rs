//! Partitions moving between live instances, against librdkafka's mock cluster with the real
//! binary (see `common::kafka`): scale 1 → 2 → 1 mid-stream under the eager and the cooperative
//! (`cooperative-sticky`, what the Kubernetes ConfigMap ships) assignors, and a lost volume
//! restored when the input no longer retains the history.
//!
//! Ownership is read from each instance's log: a period starts with `partition assigned:
//! resuming at the stored offset` (or a rebuild from the start) and ends with `partition
//! released` and the offset after the last one applied (see `common::kafka::assert_no_overlap`
//! for what is checked).
//!
//! No assertion depends on wall-clock time; deadlines only stop a broken run from hanging.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::Consumer as _;

use common::kafka::{
    api_base, assert_no_overlap, assert_same_dump, assert_transitions, gen, keyed, logs, ownership,
    replay_per_partition, workdir, Cluster, Held, Msg, Proc, Service, DEADLINE, EVENTS, PARTITIONS,
};
use common::{fetch_metrics, metric_sum, tail};

fn wait_for<T>(what: &str, context: impl Fn() -> String, f: impl FnMut() -> Option<T>) -> T {
    common::wait_for(what, DEADLINE, context, f)
}

/// The partitions a service holds now, by its logs.
fn held(name: &str, service: &Service) -> BTreeSet<i32> {
    ownership(name, &logs(service))
        .into_iter()
        .filter(|h| h.until.is_none())
        .map(|h| h.partition)
        .collect()
}

fn alive(child: &mut Proc, service: &Service) {
    if let Ok(Some(status)) = child.try_wait() {
        panic!("tagstream exited ({status}):\n{}", tail(&service.log(), 40));
    }
}

/// Scale 1 → 2 → 1 mid-stream with two live instances and the changelog. A consumes the first
/// third alone; B joins and the second third is produced while both run; B leaves and A
/// consumes the last third. Returns A's and B's ownership periods (after checking that no
/// partition was applied by two owners at once), the partitions B got, and what A held while
/// B ran.
fn scale_out_and_in(dir: &Path, strategy: &str) -> (Vec<Held>, BTreeSet<i32>, BTreeSet<i32>) {
    let cluster = Cluster::new(1);
    let all = keyed(&gen(300, 24_000, 47));
    let third = all.len() / 3;
    let (first, rest) = all.split_at(third);
    let (second, last) = rest.split_at(third);
    let expected = replay_per_partition(dir, &all);
    let options = format!("\"partition.assignment.strategy\" = \"{strategy}\"");
    let mut a = Service::new(dir, &cluster, "a", &options, "");
    let mut b = Service::new(dir, &cluster, "b", &options, "");
    let context =
        |a: &Service, b: &Service| format!("{}\n{}", tail(&a.log(), 30), tail(&b.log(), 30));

    cluster.produce(first);
    let mut child_a = a.spawn();
    cluster.wait_consumed(&mut child_a, &a.log());
    assert_eq!(held("a", &a).len(), PARTITIONS as usize);

    // Scale out: B gets some partitions, A keeps the others.
    let mut child_b = b.spawn();
    let (moved, kept) = wait_for(
        "the partitions to be shared between A and B",
        || context(&a, &b),
        || {
            let (pa, pb) = (held("a", &a), held("b", &b));
            (!pb.is_empty()
                && !pa.is_empty()
                && pa.is_disjoint(&pb)
                && pa.len() + pb.len() == PARTITIONS as usize)
                .then_some((pb, pa))
        },
    );
    cluster.produce(second);
    cluster.wait_consumed(&mut child_a, &a.log());
    alive(&mut child_b, &b);
    assert_eq!(held("b", &b), moved, "{}", context(&a, &b));

    // Scale in: B leaves, A takes its partitions back (its own copies are stale: restored).
    b.stop(child_b);
    wait_for(
        "A to hold every partition again",
        || context(&a, &b),
        || (held("a", &a).len() == PARTITIONS as usize).then_some(()),
    );
    cluster.produce(last);
    cluster.wait_consumed(&mut child_a, &a.log());
    assert_transitions(&cluster, &expected.transitions);
    a.stop(child_a);
    assert_same_dump(&a.dump(), &expected.dump);

    let mut periods = ownership("a", &logs(&a));
    periods.extend(ownership("b", &logs(&b)));
    let handovers = assert_no_overlap(&periods);
    // Every partition B had went to B and came back to A.
    assert!(handovers >= 2 * moved.len(), "{periods:#?}");
    for p in &moved {
        assert!(
            periods.iter().any(|h| h.owner == "b" && h.partition == *p),
            "{periods:#?}"
        );
    }
    eprintln!(
        "{strategy}: B held {moved:?} while A kept {kept:?}; {handovers} handovers, {} ownership periods",
        periods.len()
    );
    (periods, moved, kept)
}

#[test]
fn scaling_1_2_1_mid_stream_with_the_eager_assignor_is_exact_with_no_overlapping_owners() {
    let (_guard, dir) = workdir();
    scale_out_and_in(&dir, "range");
}

/// With `cooperative-sticky`, a scale-out moves only the partitions the new instance gets: A
/// never releases the partitions it keeps (one ownership period each, from its first assignment
/// to its shutdown), and releases each partition B gets once and gets it back once.
#[test]
fn scaling_1_2_1_with_cooperative_sticky_moves_only_the_partitions_it_must() {
    let (_guard, dir) = workdir();
    let (periods, moved, kept) = scale_out_and_in(&dir, "cooperative-sticky");
    let of_a = |p: i32| -> Vec<&Held> {
        periods
            .iter()
            .filter(|h| h.owner == "a" && h.partition == p)
            .collect()
    };
    for p in &kept {
        assert_eq!(
            of_a(*p).len(),
            1,
            "A kept partition {p} while B ran, yet released it: {periods:#?}"
        );
    }
    for p in &moved {
        assert_eq!(
            of_a(*p).len(),
            2,
            "partition {p} went to B and back: two periods in A: {periods:#?}"
        );
    }
}

/// `count` events of one user of partition `p`, each with a 10 kB property no rule reads (the
/// user's state stays small, and so does the changelog): enough of them push the mock's
/// size-bounded log past what came before.
fn padding(p: i32, count: usize) -> Vec<Msg> {
    let user = (0..)
        .map(|n| format!("pad-{n}"))
        .find(|u| common::partition_of(u.as_bytes(), PARTITIONS) == p)
        .unwrap();
    let blob = "p".repeat(10_000);
    let ts = 1_732_060_800_000i64 + 10 * 86_400_000;
    (0..count)
        .map(|i| Msg {
            partition: p,
            key: Some(user.clone().into_bytes()),
            payload: Some(
                format!(
                    r#"{{"user_id":"{user}","event":"ping","ts":{},"properties":{{"blob":"{blob}"}}}}"#,
                    ts + i as i64
                )
                .into_bytes(),
            ),
        })
        .collect()
}

/// Retention shorter than the history: instance A consumes a first half, then more than the
/// mock keeps of a partition (5 MB), so the topic no longer holds the first half (the mock's
/// log start moves past it, as retention would). A stops and its volume is lost; B starts empty
/// while the second half is produced. B restores from the changelog and is exact: its dump
/// equals a replay of the whole stream, which it could not have rebuilt from the input.
#[test]
fn a_lost_volume_is_restored_exactly_after_retention_deleted_the_history() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let generated = keyed(&gen(300, 12_000, 53));
    let (first, second) = generated.split_at(generated.len() / 2);
    let pads: Vec<Msg> = (0..PARTITIONS).flat_map(|p| padding(p, 600)).collect();
    let all: Vec<Msg> = first.iter().chain(&pads).chain(second).cloned().collect();
    let expected = replay_per_partition(&dir, &all);
    let mut service = Service::new(&dir, &cluster, "svc", "", "");

    cluster.produce(first);
    let first_end = cluster.high_watermarks(EVENTS);
    let mut a = service.spawn();
    cluster.wait_consumed(&mut a, &service.log());
    cluster.produce_with(&pads, "none");
    cluster.wait_consumed(&mut a, &service.log());
    service.stop(a);
    let c = cluster.reader("watermarks");
    for p in 0..PARTITIONS {
        let (low, _) = c
            .fetch_watermarks(EVENTS, p, Duration::from_secs(10))
            .unwrap();
        assert!(
            low > first_end[p as usize],
            "partition {p} still holds the first half (log start {low}, first half ends at {})",
            first_end[p as usize]
        );
    }

    std::fs::remove_dir_all(service.state()).unwrap();
    cluster.produce(second);
    let mut b = service.spawn();
    let base = api_base(&service.log(), &mut b);
    cluster.wait_consumed(&mut b, &service.log());
    assert_transitions(&cluster, &expected.transitions);
    let m = fetch_metrics(&base);
    service.stop(b);
    assert_same_dump(&service.dump(), &expected.dump);
    assert_eq!(
        metric_sum(&m, "tagstream_changelog_restores_total"),
        f64::from(PARTITIONS)
    );
    assert_eq!(
        metric_sum(&m, "tagstream_events_total") as usize,
        second.len(),
        "B applied only what came after A's checkpoints"
    );
    assert_eq!(metric_sum(&m, "tagstream_input_gaps_total"), 0.0);
}

/// librdkafka's mock cluster has no DeleteRecords: the retention test above moves the log start
/// with the mock's size bound instead. This pins the refusal, so that the test can switch to
/// DeleteRecords the day the mock answers it.
#[test]
fn the_mock_cluster_refuses_delete_records() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::{Offset, TopicPartitionList};

    let cluster = Cluster::new(1);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cluster.servers)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(EVENTS, 0, Offset::Offset(0))
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(admin.delete_records(&tpl, &options));
    let unsupported = match &answer {
        Ok(tpl) => tpl.elements().iter().all(|e| {
            matches!(
                e.error(),
                Err(rdkafka::error::KafkaError::OffsetFetch(
                    rdkafka::types::RDKafkaErrorCode::UnsupportedFeature
                ))
            )
        }),
        Err(_) => false,
    };
    assert!(unsupported, "the mock answered DeleteRecords: {answer:?}");
    eprintln!("DeleteRecords on the mock cluster: {answer:?}");
}

/// A group commit the coordinator refuses is committed again later: the partitions go idle
/// after the refused commit, and no rebalance re-commits their offsets (under a cooperative
/// protocol, partitions kept through a rebalance are never assigned again), yet the group's
/// offsets reach the end.
#[test]
fn a_refused_group_commit_is_retried_until_the_group_offsets_reach_the_end() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let all = keyed(&gen(50, 2_000, 59));
    let (most, rest) = all.split_at(all.len() - PARTITIONS as usize * 3);
    let mut service = Service::new(&dir, &cluster, "svc", "", "");
    cluster.produce(most);
    let mut child = service.spawn();
    cluster.wait_consumed(&mut child, &service.log());
    cluster.mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3],
    );
    cluster.produce(rest);
    cluster.wait_consumed(&mut child, &service.log());
    service.stop(child);
}

/// Engine partition p holds partition p of every input topic, which only the range assignor
/// keeps on one instance: a sticky assignor with several input topics is a startup error.
#[test]
fn cooperative_sticky_with_several_input_topics_is_a_startup_error() {
    let (_guard, dir) = workdir();
    let cluster = Cluster::new(1);
    let mut service = Service::new(
        &dir,
        &cluster,
        "svc",
        "\"partition.assignment.strategy\" = \"cooperative-sticky\"",
        "changelog_topic = \"\"",
    );
    let text = std::fs::read_to_string(&service.config)
        .unwrap()
        .replace("topics = [\"events\"]", "topics = [\"events\", \"dlq\"]");
    std::fs::write(&service.config, text).unwrap();
    let mut child = service.spawn();
    let status = wait_for(
        "tagstream to exit",
        || tail(&service.log(), 20),
        || child.try_wait().unwrap(),
    );
    let log = std::fs::read_to_string(service.log()).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("only \"range\" guarantees"), "{log}");
}
