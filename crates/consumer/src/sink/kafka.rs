//! The Kafka producer behind the transitions sink and the dead-letter topic.
//!
//! Idempotent (`enable.idempotence=true`: no duplicates or reordering from librdkafka's own
//! retries). Every message carries its outbox sequence number as delivery opaque; the delivery
//! report (broker acknowledgement or final failure) is queued and collected by
//! [`KafkaProducer::take_results`], so the caller deletes outbox entries only once the broker has
//! them.
//!
//! An idempotent producer can hit a *fatal* error (the broker and the producer disagree on
//! sequence numbers: `OUT_OF_ORDER_SEQUENCE_NUMBER`, `UNKNOWN_PRODUCER_ID`...), after which
//! librdkafka fails every message forever. [`KafkaProducer::recreate`] replaces the client
//! with a new one (a new producer id); the caller resends what was not acknowledged.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::kafka::{client_config, log_client_error, log_line, RateLimit};
use crate::outbox::{DeadLetter, Origin};

/// Dead letters of oversized messages keep this many bytes (SPEC §2).
pub const TRUNCATED_BYTES: usize = 64 * 1024;

/// Delivery outcome of one entry: its offset in the topic once acknowledged.
pub type Delivered = (u64, Result<i64, KafkaError>);

struct Context {
    name: String,
    results: Mutex<Vec<Delivered>>,
    errors: Mutex<RateLimit>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(&self.name, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.errors, &self.name, &error, reason);
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let outcome = match result {
            Ok(m) => Ok(rdkafka::Message::offset(m)),
            Err((e, _)) => Err(e.clone()),
        };
        if let Ok(mut r) = self.results.lock() {
            r.push((seq as u64, outcome));
        }
    }
}

/// Most events one [`drain_events`] serves: a bound on the time one call can take.
const MAX_EVENTS_PER_DRAIN: usize = 10_000;

/// Serves every event waiting on the producer's queue, without blocking. `poll(0)` serves at
/// most one event, and one delivery report event covers one produce request's messages: a
/// caller polling once per loop turn (every few milliseconds) caps the acknowledgements it sees
/// at one request's worth per turn. With short `linger.ms` (small requests) that cap was
/// below the changelog's record rate, so the changelog backlog, and with it delivery latency,
/// grew without bound (`bench_kafka`, 2,000 events/s: p50 1.5 s; docs/performance.md).
fn drain_events(producer: &BaseProducer<Context>) {
    let reported = |p: &BaseProducer<Context>| p.context().results.lock().map_or(0, |r| r.len());
    for _ in 0..MAX_EVENTS_PER_DRAIN {
        let before = reported(producer);
        producer.poll(Duration::ZERO);
        // No delivery report served: none was waiting, or the event was of another kind (an
        // error), and what follows it is served by the next call.
        if reported(producer) == before {
            break;
        }
    }
}

/// A producer for one cluster.
pub struct KafkaProducer {
    /// Replaced by [`KafkaProducer::recreate`]; used from the engine thread only, so the lock
    /// is never contended.
    producer: Mutex<BaseProducer<Context>>,
    config: rdkafka::ClientConfig,
    name: String,
    brokers: String,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl KafkaProducer {
    /// Creates the producer (connections are made lazily: an unreachable broker is not an error
    /// here, deliveries just wait). An invalid option is a user error, returned as text.
    pub fn new(
        name: &str,
        brokers: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<KafkaProducer, String> {
        let defaults = [
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("compression.type", "none"),
        ];
        let config = client_config(brokers, &defaults, options);
        let producer = create(name, &config)
            .map_err(|e| format!("cannot create the {name} kafka producer for {brokers}: {e}"))?;
        Ok(KafkaProducer {
            producer: Mutex::new(producer),
            config,
            name: name.to_string(),
            brokers: brokers.to_string(),
        })
    }

    fn current(&self) -> std::sync::MutexGuard<'_, BaseProducer<Context>> {
        // Nothing is left half-changed by a panic while it is held.
        self.producer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fatal error this producer hit, if any: every later message fails until it is
    /// recreated.
    pub fn fatal_error(&self) -> Option<String> {
        self.current()
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Replaces the client by a new one with the same configuration. Messages queued or in
    /// flight in the old one are dropped, their outcomes never reported: the caller sends them
    /// again.
    pub fn recreate(&self) -> Result<(), String> {
        let fresh = create(&self.name, &self.config).map_err(|e| {
            format!(
                "cannot recreate the {} kafka producer for {}: {e}",
                self.name, self.brokers
            )
        })?;
        // The old client is dropped here: it purges its queues (briefly, 500 ms at most).
        drop(std::mem::replace(&mut *self.current(), fresh));
        Ok(())
    }

    /// The name it logs under (`transitions`, `dead-letter`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a transition, keyed by user id.
    pub fn send_transition(
        &self,
        seq: u64,
        topic: &str,
        user_id: &str,
        json: &str,
    ) -> Result<(), KafkaError> {
        let record = BaseRecord::with_opaque_to(topic, seq as usize)
            .key(user_id)
            .payload(json);
        self.current().send(record).map_err(|(e, _)| e)
    }

    /// Queues a changelog record to an explicit partition (None: a tombstone).
    pub fn send_changelog(
        &self,
        seq: u64,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), KafkaError> {
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, seq as usize)
            .partition(partition)
            .key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.current().send(record).map_err(|(e, _)| e)
    }

    /// Queues a dead letter: original key and bytes (the first 64 KiB for `too_large`, or when
    /// `truncate` is forced after the broker refused the full size) and `tagstream.*` headers.
    pub fn send_dead_letter(
        &self,
        seq: u64,
        topic: &str,
        dl: &DeadLetter,
        truncate: bool,
    ) -> Result<(), KafkaError> {
        let truncated = (truncate || dl.reason == "too_large") && dl.raw.len() > TRUNCATED_BYTES;
        let value: &[u8] = if truncated {
            &dl.raw[..TRUNCATED_BYTES]
        } else {
            &dl.raw
        };
        let (source, partition, offset, key) = match &dl.origin {
            Origin::Kafka {
                topic,
                partition,
                offset,
                key,
            } => (
                topic.clone(),
                partition.to_string(),
                offset.to_string(),
                key.clone(),
            ),
            Origin::Line { source, line } => {
                (source.to_string(), "0".to_string(), line.to_string(), None)
            }
        };
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "tagstream.reason",
                value: Some(dl.reason.as_str()),
            })
            .insert(Header {
                key: "tagstream.detail",
                value: Some(dl.detail.as_str()),
            })
            .insert(Header {
                key: "tagstream.topic",
                value: Some(source.as_str()),
            })
            .insert(Header {
                key: "tagstream.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "tagstream.offset",
                value: Some(offset.as_str()),
            });
        if truncated {
            headers = headers.insert(Header {
                key: "tagstream.truncated",
                value: Some("true"),
            });
        }
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, seq as usize)
            .payload(value)
            .headers(headers);
        if let Some(k) = key.as_deref() {
            record = record.key(k);
        }
        self.current().send(record).map_err(|(e, _)| e)
    }

    /// Serves delivery reports (non-blocking).
    pub fn poll(&self) {
        drain_events(&self.current());
    }

    /// Delivery outcomes since the last call.
    pub fn take_results(&self) -> Vec<Delivered> {
        let producer = self.current();
        drain_events(&producer);
        producer
            .context()
            .results
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    /// Messages queued or in flight.
    pub fn in_flight(&self) -> i32 {
        self.current().in_flight_count()
    }

    /// Waits up to `timeout` for queued messages to be delivered.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.current().flush(timeout);
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }
}

fn create(name: &str, config: &rdkafka::ClientConfig) -> Result<BaseProducer<Context>, KafkaError> {
    let context = Context {
        name: name.to_string(),
        results: Mutex::new(Vec::new()),
        errors: Mutex::new(RateLimit::default()),
    };
    config.create_with_context(context)
}

/// Whether a delivery error means "this message can never be accepted as is".
pub fn is_too_large(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode;
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge) | Some(RDKafkaErrorCode::InvalidMessageSize)
    )
}

/// Whether a send failed only because the local queue is full (retry after polling).
pub fn is_queue_full(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode;
    matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull))
}
