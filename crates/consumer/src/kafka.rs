//! Kafka client configuration shared by the consumer-group source ([`crate::source::kafka`]),
//! the producer of the outbox and the changelog ([`crate::sink::kafka`]) and the changelog's
//! reader ([`crate::changelog`]): client options, connection options every client inherits,
//! and librdkafka's logs and client errors forwarded to `tracing`.
//!
//! Engine partitions are Kafka partition numbers. Several input topics therefore share engine
//! partition `p`: they must be co-partitioned by user id (same partition count, same key and
//! partitioner), and the assignment strategy must keep partition `p` of every topic on one
//! instance — the default `range` assignor does; with several topics any other strategy is
//! refused at start. With one topic, `cooperative-sticky` works: the rebalance callbacks use
//! incremental assign/unassign and handle the partitions they are given, not the whole
//! assignment.

use std::collections::BTreeMap;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

/// Options every client inherits from `[source.options]` even when it is not the consumer:
/// what is needed to reach and authenticate to the same cluster.
pub fn is_connection_option(key: &str) -> bool {
    [
        "security.",
        "sasl.",
        "ssl.",
        "ssl_",
        "client.",
        "socket.",
        "broker.address.",
        "reconnect.",
        "enable.ssl",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

/// A client configuration: `defaults` first, then the user's options, as is.
pub fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    options: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in options {
        config.set(k, v);
    }
    config.set_log_level(if options.contains_key("debug") {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    });
    config
}

/// Forwards a librdkafka log line to `tracing`.
pub(crate) fn log_line(client: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(client, facility = fac, "kafka: {message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(client, facility = fac, "kafka: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(client, facility = fac, "kafka: {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(client, facility = fac, "kafka: {message}"),
    }
}

/// Logs a client-level error (broker down, all brokers down...): librdkafka keeps retrying with
/// its own backoff (`reconnect.backoff.ms` .. `reconnect.backoff.max.ms`), so these are warnings.
/// Repeats of the same message are logged at most once every 30 seconds.
pub(crate) fn log_client_error(
    limiter: &std::sync::Mutex<RateLimit>,
    client: &str,
    error: &KafkaError,
    reason: &str,
) {
    let text = format!("{error}: {reason}");
    // librdkafka words the same condition differently from broker to broker and attempt to
    // attempt: repeats are recognised by the error code, not the text.
    let key = format!("{:?}", error.rdkafka_error_code());
    if let Ok(mut l) = limiter.lock() {
        if l.allow(&key) {
            tracing::warn!(client, "kafka {client}: {text} (retrying with backoff)");
        }
    }
}

/// Lets each kind of message through once per period, however the kinds interleave.
#[derive(Debug, Default)]
pub(crate) struct RateLimit {
    last: std::collections::HashMap<String, std::time::Instant>,
}

const REPEAT_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

impl RateLimit {
    pub(crate) fn allow(&mut self, kind: &str) -> bool {
        let now = std::time::Instant::now();
        if self.last.len() > 64 {
            self.last
                .retain(|_, at| now.duration_since(*at) < REPEAT_PERIOD);
        }
        match self.last.get(kind) {
            Some(at) if now.duration_since(*at) < REPEAT_PERIOD => false,
            _ => {
                self.last.insert(kind.to_string(), now);
                true
            }
        }
    }
}

const MIN_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a stream of numbered sends (the outbox's deliveries, the changelog's records) starts
/// again after a failure, and when. Sends are pipelined, so several may fail in one round: the
/// lowest failed number is where sending resumes, once nothing is in flight and the backoff
/// (500 ms, doubling per failed round up to 30 s, reset by a success outside a failed round)
/// has passed. Resending from there may repeat records the broker already has: both streams
/// are at least once, with stable ids.
#[derive(Debug)]
pub(crate) struct Rewind {
    from: Option<u64>,
    retry_at: std::time::Instant,
    backoff: std::time::Duration,
}

impl Default for Rewind {
    fn default() -> Rewind {
        Rewind {
            from: None,
            retry_at: std::time::Instant::now(),
            backoff: MIN_BACKOFF,
        }
    }
}

impl Rewind {
    /// The send of `seq` failed. Returns the wait before the retry when this is the round's
    /// first failure (the one worth logging), None when the round had already failed.
    pub(crate) fn failed(&mut self, seq: u64) -> Option<std::time::Duration> {
        let first_failure = self.from.is_none();
        self.from = Some(self.from.map_or(seq, |r| r.min(seq)));
        first_failure.then(|| self.schedule())
    }

    /// Everything from `seq` on must be sent again (the producer that had it in flight is
    /// gone), after the usual backoff.
    pub(crate) fn restart_from(&mut self, seq: u64) {
        self.from = Some(seq);
        self.schedule();
    }

    fn schedule(&mut self) -> std::time::Duration {
        let wait = self.backoff;
        self.retry_at = std::time::Instant::now() + wait;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }

    /// A send succeeded: outside a failed round, the next failure waits the shortest backoff.
    pub(crate) fn succeeded(&mut self) {
        if self.from.is_none() {
            self.backoff = MIN_BACKOFF;
        }
    }

    /// Where to resume sending, once the round is over: nothing in flight and the backoff
    /// passed. Ends the round.
    pub(crate) fn resume(&mut self, nothing_in_flight: bool) -> Option<u64> {
        let from = self.from?;
        if nothing_in_flight && std::time::Instant::now() >= self.retry_at {
            self.from = None;
            return Some(from);
        }
        None
    }

    /// The first number to send again, while a failed round lasts (nothing is sent then, and
    /// nothing from it on may be acknowledged).
    pub(crate) fn pending(&self) -> Option<u64> {
        self.from
    }

    /// The wait a failure now would be given.
    pub(crate) fn backoff(&self) -> std::time::Duration {
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_round_resumes_from_its_lowest_failure_after_a_doubling_backoff() {
        let mut r = Rewind::default();
        assert_eq!(r.failed(7), Some(MIN_BACKOFF));
        // Later failures of the same round only lower the resume point.
        assert_eq!(r.failed(3), None);
        assert_eq!(r.failed(9), None);
        assert_eq!(r.pending(), Some(3));
        // A success inside the round does not reset the backoff.
        r.succeeded();
        assert_eq!(r.backoff(), MIN_BACKOFF * 2);
        // Not while something is in flight, nor before the backoff passed.
        assert_eq!(r.resume(false), None);
        assert_eq!(r.resume(true), None);
        r.retry_at = std::time::Instant::now();
        assert_eq!(r.resume(true), Some(3));
        assert_eq!(r.pending(), None);
        // The next round waits twice as long; a success outside a round resets it.
        assert_eq!(r.failed(4), Some(MIN_BACKOFF * 2));
        r.retry_at = std::time::Instant::now();
        assert_eq!(r.resume(true), Some(4));
        r.succeeded();
        assert_eq!(r.backoff(), MIN_BACKOFF);
        // The backoff stops doubling at its bound.
        for _ in 0..20 {
            r.restart_from(0);
        }
        assert_eq!(r.backoff(), MAX_BACKOFF);
        assert_eq!(r.pending(), Some(0));
    }

    #[test]
    fn user_options_override_defaults() {
        let mut opts = BTreeMap::new();
        opts.insert("auto.offset.reset".to_string(), "latest".to_string());
        let c = client_config(
            "b:9092",
            &[
                ("auto.offset.reset", "earliest"),
                ("enable.auto.commit", "false"),
            ],
            &opts,
        );
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn repeated_errors_are_rate_limited() {
        let mut l = RateLimit::default();
        assert!(l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
        // Alternating kinds are each still limited.
        assert!(!l.allow("a"));
        assert!(!l.allow("b"));
    }
}
