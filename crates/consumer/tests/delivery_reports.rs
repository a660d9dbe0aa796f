//! Producers serve every waiting delivery report at once: librdkafka's `poll(0)` serves one
//! event, one delivery-report event covers one produce request, and a pipeline that learnt of
//! one request's acknowledgements per loop turn fell ever further behind (the changelog's
//! backlog and with it delivery latency grew without bound). Against librdkafka's mock cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use tagstream_consumer::sink::kafka::KafkaProducer;

const PARTITIONS: i32 = 8;
const RECORDS: u64 = 64;

#[test]
fn one_take_serves_the_reports_of_every_acknowledged_request() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("reports", PARTITIONS, 1).unwrap();
    let servers = mock.bootstrap_servers();
    // No linger: at least one produce request, and so one report event, per partition.
    let options = BTreeMap::from([("linger.ms".to_string(), "0".to_string())]);
    let producer = KafkaProducer::new("test", &servers, &options).unwrap();
    for seq in 0..RECORDS {
        let partition = (seq % PARTITIONS as u64) as i32;
        producer
            .send_changelog(seq, "reports", partition, b"key", Some(b"value"))
            .unwrap();
    }

    // Every record is in the log: the broker has answered every request.
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", "watcher")
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: i64 = (0..PARTITIONS)
            .map(|p| {
                watcher
                    .fetch_watermarks("reports", p, Duration::from_secs(5))
                    .map_or(0, |(_, high)| high)
            })
            .sum();
        if stored == RECORDS as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {stored} records stored");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The answers' reports reach the producer's queue a moment after the log has the records.
    std::thread::sleep(Duration::from_millis(500));

    let results = producer.take_results();
    assert_eq!(
        results.len() as u64,
        RECORDS,
        "one take serves every report"
    );
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    let mut seqs: Vec<u64> = results.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..RECORDS).collect::<Vec<_>>());
}
