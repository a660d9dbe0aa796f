//! The pipeline's Prometheus metrics (SPEC §9), in one [`Registry`] the HTTP API serves.
//!
//! Names follow `tagstream_<subsystem>_<name>_<unit>[_total]`; labels are bounded (outcome,
//! reason, segment, transition type, partition, topic) and never carry a user id.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use std::sync::Arc;

use crate::engine::BatchReport;

/// Every metric of the pipeline. Cheap to clone (handles share their values).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    families: Arc<Vec<(&'static str, &'static str)>>,
    /// `tagstream_transition_event_lag_seconds`: a transition's event time (or timer instant)
    /// → its emission (the state commit that produced it).
    pub transition_event_lag_seconds: Histogram,
    /// `tagstream_ingest_to_commit_seconds`: batch read from the source → state committed.
    pub ingest_to_commit_seconds: Histogram,
    /// `tagstream_api_requests_total{route,status}` (route templates, never ids)
    pub api_requests: IntCounterVec,
    /// `tagstream_api_request_seconds{route}`
    pub api_request_seconds: HistogramVec,
    /// `tagstream_api_peer_requests_total{peer}` (`api.peers` fan-out, by peer index)
    pub api_peer_requests: IntCounterVec,
    /// `tagstream_api_peer_failures_total{peer}` (peers that did not answer, by index)
    pub api_peer_failures: IntCounterVec,
    /// `tagstream_api_rejected_total{reason="overloaded|timeout"}`: `/v1` requests answered 503
    /// by `api.max_in_flight` or `api.request_timeout`
    pub api_rejected: IntCounterVec,
    /// `tagstream_api_preview_seconds`: rules reload previews (`dry_run=true`)
    pub api_preview_seconds: Histogram,
    /// `tagstream_api_export_seconds{kind="segment|audience"}`: NDJSON exports, first to
    /// last chunk
    pub api_export_seconds: HistogramVec,
    /// `tagstream_rules_reloads_total{outcome="applied|rejected"}`
    pub rules_reloads: IntCounterVec,
    /// `tagstream_rules_loaded_timestamp_seconds`
    pub rules_loaded_timestamp_seconds: IntGauge,
    /// `tagstream_process_start_time_seconds`
    pub process_start_time_seconds: IntGauge,
    /// `tagstream_ready`: what `/readyz` reports.
    pub ready: IntGauge,
    /// `tagstream_events_total{outcome="applied|dead_letter|duplicate|skipped"}`
    pub events: IntCounterVec,
    /// `tagstream_dead_letters_total{reason}`
    pub dead_letters: IntCounterVec,
    /// `tagstream_batch_apply_seconds`: one engine commit (decode, apply, timers, write).
    pub batch_apply_seconds: Histogram,
    /// `tagstream_event_to_transition_seconds`: event read → transition acknowledged by the sink.
    pub event_to_transition_seconds: Histogram,
    /// `tagstream_consumer_lag_messages{topic,partition}`: high watermark − next offset to apply.
    pub consumer_lag: IntGaugeVec,
    /// `tagstream_engine_time_seconds{partition}`
    pub engine_time_seconds: GaugeVec,
    /// `tagstream_segment_members{segment}`
    pub segment_members: IntGaugeVec,
    /// `tagstream_transitions_total{segment,type}`
    pub transitions: IntCounterVec,
    /// `tagstream_timers_pending`
    pub timers_pending: IntGauge,
    /// `tagstream_timers_fired_total`
    pub timers_fired: IntCounter,
    /// `tagstream_outbox_backlog`: outbox entries (transitions and dead letters) not yet
    /// acknowledged by their sink.
    pub outbox_backlog: IntGauge,
    /// `tagstream_state_size_bytes`
    pub state_size_bytes: IntGauge,
    /// `tagstream_consumer_paused`: 1 while consumption is paused because the outbox is full.
    pub consumer_paused: IntGauge,
    /// `tagstream_partition_rebuilds_total`: partitions assigned without local state and
    /// therefore rebuilt from the earliest retained offset.
    pub partition_rebuilds: IntCounter,
    /// `tagstream_sink_delivery_errors_total{sink="transitions|dead_letter"}`
    pub sink_delivery_errors: IntCounterVec,
    /// `tagstream_consumer_rebalances_total{kind="assign|revoke"}`
    pub rebalances: IntCounterVec,
    /// `tagstream_consumer_messages_total`: messages read from the source.
    pub messages_read: IntCounter,
    /// `tagstream_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// `tagstream_rocksdb_*`: the state store's health, refreshed at each scrape.
    pub rocksdb: RocksDbGauges,
    /// `tagstream_state_syncs_total`: write-ahead log fsyncs after a commit (`state.sync`).
    pub state_syncs: IntCounter,
    /// `tagstream_state_commit_failures_total`: state store commits that failed (disk full, IO
    /// error); the batch was rolled back in memory.
    pub state_commit_failures: IntCounter,
    /// `tagstream_pipeline_last_progress_seconds`: seconds since the pipeline last made progress
    /// or had nothing to do, set at each scrape (see `Control::stalled_for`).
    pub pipeline_last_progress_seconds: prometheus::Gauge,
    /// `tagstream_sink_oversized_transitions_total{action="truncated|dropped"}`: transitions
    /// larger than the sink accepts, cut to fit or (when even that cannot fit) skipped.
    pub sink_oversized_transitions: IntCounterVec,
    /// `tagstream_input_gaps_total{topic,partition}`: resumptions past a stored offset that
    /// retention had deleted (events never applied).
    pub input_gaps: IntCounterVec,
    /// `tagstream_sink_producer_fatal_errors_total`: Kafka producers replaced after a fatal
    /// (idempotence) error.
    pub sink_producer_fatal_errors: IntCounter,
    /// `tagstream_changelog_records_published_total`: changelog records the broker acknowledged.
    pub changelog_records_published: IntCounter,
    /// `tagstream_changelog_backlog`: changelog records staged, not yet acknowledged.
    pub changelog_backlog: IntGauge,
    /// `tagstream_changelog_restores_total`: partitions restored from the changelog.
    pub changelog_restores: IntCounter,
    /// `tagstream_changelog_restore_records_total`: changelog records read by restores.
    pub changelog_restore_records: IntCounter,
    /// `tagstream_changelog_restore_seconds`: time to restore one partition.
    pub changelog_restore_seconds: Histogram,
}

/// RocksDB health gauges (see [`Metrics::record_store_health`]).
#[derive(Clone)]
pub struct RocksDbGauges {
    /// `tagstream_rocksdb_block_cache_usage_bytes`
    pub block_cache_usage_bytes: IntGauge,
    /// `tagstream_rocksdb_pending_compaction_bytes`
    pub pending_compaction_bytes: IntGauge,
    /// `tagstream_rocksdb_write_stopped`: 1 while RocksDB stops writes.
    pub write_stopped: IntGauge,
    /// `tagstream_rocksdb_delayed_write_rate_bytes_per_second`: 0 unless writes are throttled.
    pub delayed_write_rate: IntGauge,
    /// `tagstream_rocksdb_live_sst_bytes`
    pub live_sst_bytes: IntGauge,
}

/// The label values of `tagstream_sink_delivery_errors_total{sink}`.
pub const SINKS: [&str; 2] = ["transitions", "dead_letter"];

/// Why the API refused a `/v1` request (`tagstream_api_rejected_total{reason}`).
pub const API_REJECTIONS: [&str; 2] = ["overloaded", "timeout"];
/// The label values of `tagstream_events_total{outcome}`.
pub const OUTCOMES: [&str; 4] = ["applied", "dead_letter", "duplicate", "skipped"];
/// The label values of `tagstream_consumer_rebalances_total{kind}`.
pub const REBALANCE_KINDS: [&str; 2] = ["assign", "revoke"];
/// The label values of `tagstream_rules_reloads_total{outcome}`.
pub const RELOAD_OUTCOMES: [&str; 2] = ["applied", "rejected"];

/// The standard process metrics (`prometheus`'s process collector, Linux only).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const PROCESS_FAMILIES: [(&str, &str); 7] = [
    ("process_cpu_seconds_total", "counter"),
    ("process_threads", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_start_time_seconds", "gauge"),
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers metrics and remembers their family names and types.
struct Registrar {
    registry: Registry,
    families: Vec<(&'static str, &'static str)>,
}

impl Registrar {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        &mut self,
        name: &'static str,
        kind: &'static str,
        m: M,
    ) -> M {
        self.registry
            .register(Box::new(m.clone()))
            .expect("metric registered once");
        self.families.push((name, kind));
        m
    }

    fn counter_vec(&mut self, name: &'static str, help: &str, labels: &[&str]) -> IntCounterVec {
        let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(name, "counter", m)
    }

    fn gauge_vec(&mut self, name: &'static str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(name, "gauge", m)
    }

    fn float_gauge_vec(&mut self, name: &'static str, help: &str, labels: &[&str]) -> GaugeVec {
        let m = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(name, "gauge", m)
    }

    fn counter(&mut self, name: &'static str, help: &str) -> IntCounter {
        let m = IntCounter::new(name, help).expect("valid metric");
        self.add(name, "counter", m)
    }

    fn gauge(&mut self, name: &'static str, help: &str) -> IntGauge {
        let m = IntGauge::new(name, help).expect("valid metric");
        self.add(name, "gauge", m)
    }

    fn float_gauge(&mut self, name: &'static str, help: &str) -> prometheus::Gauge {
        let m = prometheus::Gauge::new(name, help).expect("valid metric");
        self.add(name, "gauge", m)
    }

    /// The standard `process_*` metrics, where the platform has them.
    fn process(&mut self) {
        #[cfg(target_os = "linux")]
        {
            let collector = prometheus::process_collector::ProcessCollector::for_self();
            self.registry
                .register(Box::new(collector))
                .expect("process collector registered once");
            self.families.extend(PROCESS_FAMILIES);
        }
    }

    fn histogram(&mut self, name: &'static str, help: &str, buckets: Vec<f64>) -> Histogram {
        let m = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric");
        self.add(name, "histogram", m)
    }

    fn histogram_vec(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        let m = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric");
        self.add(name, "histogram", m)
    }
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> Metrics {
        let mut r = Registrar {
            registry: Registry::new(),
            families: Vec::new(),
        };
        let events = r.counter_vec(
            "tagstream_events_total",
            "Input events by outcome.",
            &["outcome"],
        );
        let dead_letters = r.counter_vec(
            "tagstream_dead_letters_total",
            "Messages sent to the dead-letter destination, by reason.",
            &["reason"],
        );
        let batch_apply_seconds = r.histogram(
            "tagstream_batch_apply_seconds",
            "Time to decode, apply and commit one batch.",
            prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets"),
        );
        let event_to_transition_seconds = r.histogram(
            "tagstream_event_to_transition_seconds",
            "From reading an event to the sink acknowledging the transition it caused.",
            prometheus::exponential_buckets(0.001, 2.0, 18).expect("valid buckets"),
        );
        let consumer_lag = r.gauge_vec(
            "tagstream_consumer_lag_messages",
            "Messages between the next offset to apply and the partition's high watermark.",
            &["topic", "partition"],
        );
        let engine_time_seconds = r.float_gauge_vec(
            "tagstream_engine_time_seconds",
            "Engine time of each partition (epoch seconds).",
            &["partition"],
        );
        let segment_members = r.gauge_vec(
            "tagstream_segment_members",
            "Users in each segment.",
            &["segment"],
        );
        let transitions = r.counter_vec(
            "tagstream_transitions_total",
            "Segment transitions emitted.",
            &["segment", "type"],
        );
        let timers_pending = r.gauge(
            "tagstream_timers_pending",
            "Users with a pending time-driven re-evaluation.",
        );
        let timers_fired = r.counter(
            "tagstream_timers_fired_total",
            "Time-driven re-evaluations that ran.",
        );
        let outbox_backlog = r.gauge(
            "tagstream_outbox_backlog",
            "Outbox entries not yet acknowledged by their sink.",
        );
        let state_size_bytes = r.gauge(
            "tagstream_state_size_bytes",
            "Approximate size of the state store on disk.",
        );
        let consumer_paused = r.gauge(
            "tagstream_consumer_paused",
            "1 while consumption is paused because the outbox backlog is full.",
        );
        let partition_rebuilds = r.counter(
            "tagstream_partition_rebuilds_total",
            "Partitions assigned without local state, rebuilt from the earliest retained offset.",
        );
        let sink_delivery_errors = r.counter_vec(
            "tagstream_sink_delivery_errors_total",
            "Failed deliveries to a sink (retried).",
            &["sink"],
        );
        let rebalances = r.counter_vec(
            "tagstream_consumer_rebalances_total",
            "Consumer group rebalances seen.",
            &["kind"],
        );
        let messages_read = r.counter(
            "tagstream_consumer_messages_total",
            "Messages read from the source.",
        );
        let transition_event_lag_seconds = r.histogram(
            "tagstream_transition_event_lag_seconds",
            "From a transition's event time (or timer instant) to its emission (state commit).",
            prometheus::exponential_buckets(0.01, 4.0, 14).expect("valid buckets"),
        );
        let ingest_to_commit_seconds = r.histogram(
            "tagstream_ingest_to_commit_seconds",
            "From reading a batch off the source to committing its state.",
            prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets"),
        );
        let api_requests = r.counter_vec(
            "tagstream_api_requests_total",
            "HTTP API requests by route template and status code.",
            &["route", "status"],
        );
        let api_request_seconds = r.histogram_vec(
            "tagstream_api_request_seconds",
            "HTTP API request duration by route template.",
            &["route"],
            prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets"),
        );
        let api_peer_requests = r.counter_vec(
            "tagstream_api_peer_requests_total",
            "Requests sent to api.peers to answer for the whole deployment, by peer index.",
            &["peer"],
        );
        let api_peer_failures = r.counter_vec(
            "tagstream_api_peer_failures_total",
            "Requests to api.peers that failed (the answer was 503), by peer index.",
            &["peer"],
        );
        let api_rejected = r.counter_vec(
            "tagstream_api_rejected_total",
            "/v1 requests answered 503 because api.max_in_flight were in flight (overloaded) or api.request_timeout passed (timeout).",
            &["reason"],
        );
        for reason in API_REJECTIONS {
            api_rejected.with_label_values(&[reason]);
        }
        let api_preview_seconds = r.histogram(
            "tagstream_api_preview_seconds",
            "Duration of rules reload previews (POST /v1/rules/reload?dry_run=true).",
            prometheus::exponential_buckets(0.001, 2.0, 18).expect("valid buckets"),
        );
        let api_export_seconds = r.histogram_vec(
            "tagstream_api_export_seconds",
            "Duration of NDJSON exports from the first chunk to the last, by kind (segment, audience).",
            &["kind"],
            prometheus::exponential_buckets(0.001, 2.0, 18).expect("valid buckets"),
        );
        let rules_reloads = r.counter_vec(
            "tagstream_rules_reloads_total",
            "Rules reloads by outcome (applied, rejected).",
            &["outcome"],
        );
        let rules_version_timestamp_seconds = r.gauge(
            "tagstream_rules_loaded_timestamp_seconds",
            "When the rules in force were loaded or last reloaded (epoch seconds).",
        );
        let process_start_time_seconds = r.gauge(
            "tagstream_process_start_time_seconds",
            "When this process started (epoch seconds); a change means a restart.",
        );
        let ready = r.gauge(
            "tagstream_ready",
            "1 once the state is open and partitions are assigned (what /readyz reports).",
        );
        let build_info = r.gauge_vec(
            "tagstream_build_info",
            "Always 1; the version label names the running build.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let rocksdb = RocksDbGauges {
            block_cache_usage_bytes: r.gauge(
                "tagstream_rocksdb_block_cache_usage_bytes",
                "Bytes held by RocksDB's block cache.",
            ),
            pending_compaction_bytes: r.gauge(
                "tagstream_rocksdb_pending_compaction_bytes",
                "Bytes RocksDB compaction still has to rewrite (estimate).",
            ),
            write_stopped: r.gauge(
                "tagstream_rocksdb_write_stopped",
                "1 while RocksDB stops writes (too many L0 files, memtables or pending compaction).",
            ),
            delayed_write_rate: r.gauge(
                "tagstream_rocksdb_delayed_write_rate_bytes_per_second",
                "Rate RocksDB throttles writes to; 0 when writes are not delayed.",
            ),
            live_sst_bytes: r.gauge(
                "tagstream_rocksdb_live_sst_bytes",
                "Bytes of live SST files, all column families.",
            ),
        };
        let state_syncs = r.counter(
            "tagstream_state_syncs_total",
            "fsyncs of the state store's write-ahead log after a commit (state.sync = batch).",
        );
        let state_commit_failures = r.counter(
            "tagstream_state_commit_failures_total",
            "State store commits that failed (disk full, IO error); the batch was rolled back in memory.",
        );
        let pipeline_last_progress_seconds = r.float_gauge(
            "tagstream_pipeline_last_progress_seconds",
            "Seconds since the pipeline last committed a batch, delivered outbox entries or had nothing pending.",
        );
        let sink_oversized_transitions = r.counter_vec(
            "tagstream_sink_oversized_transitions_total",
            "Transitions larger than the sink accepts: tag values truncated to fit, or dropped when even that cannot fit.",
            &["action"],
        );
        for action in ["truncated", "dropped"] {
            sink_oversized_transitions.with_label_values(&[action]);
        }
        let input_gaps = r.counter_vec(
            "tagstream_input_gaps_total",
            "Partitions resumed past a stored offset that retention had already deleted: the events in between were never applied.",
            &["topic", "partition"],
        );
        let sink_producer_fatal_errors = r.counter(
            "tagstream_sink_producer_fatal_errors_total",
            "Kafka producers that hit a fatal error (idempotence: sequence or producer id lost) and were replaced.",
        );
        let changelog_records_published = r.counter(
            "tagstream_changelog_records_published_total",
            "Changelog records (user states, tombstones, checkpoints) the broker acknowledged.",
        );
        let changelog_backlog = r.gauge(
            "tagstream_changelog_backlog",
            "Changelog records committed locally and not yet acknowledged by the broker.",
        );
        let changelog_restores = r.counter(
            "tagstream_changelog_restores_total",
            "Partitions whose state was restored from the changelog on assignment.",
        );
        let changelog_restore_records = r.counter(
            "tagstream_changelog_restore_records_total",
            "Changelog records read to restore partitions.",
        );
        let changelog_restore_seconds = r.histogram(
            "tagstream_changelog_restore_seconds",
            "Time to restore one partition from the changelog (read and apply).",
            prometheus::exponential_buckets(0.01, 2.0, 16).expect("valid buckets"),
        );
        r.process();
        let now_seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        process_start_time_seconds.set(now_seconds);
        rules_version_timestamp_seconds.set(now_seconds);
        // Series whose label values are known up front exist from the start, at 0, so that
        // `rate()` and `absent()` work before the first occurrence.
        for outcome in RELOAD_OUTCOMES {
            rules_reloads.with_label_values(&[outcome]);
        }
        for outcome in OUTCOMES {
            events.with_label_values(&[outcome]);
        }
        for reason in tagstream_rules::event::Reason::ALL
            .iter()
            .map(|r| r.as_str())
            .chain([crate::engine::UNREADABLE_INPUT])
        {
            dead_letters.with_label_values(&[reason]);
        }
        for sink in SINKS {
            sink_delivery_errors.with_label_values(&[sink]);
        }
        for kind in REBALANCE_KINDS {
            rebalances.with_label_values(&[kind]);
        }
        Metrics {
            registry: r.registry,
            families: Arc::new(r.families),
            transition_event_lag_seconds,
            ingest_to_commit_seconds,
            api_requests,
            api_request_seconds,
            api_peer_requests,
            api_peer_failures,
            api_rejected,
            api_preview_seconds,
            api_export_seconds,
            rules_reloads,
            rules_loaded_timestamp_seconds: rules_version_timestamp_seconds,
            process_start_time_seconds,
            ready,
            events,
            dead_letters,
            batch_apply_seconds,
            event_to_transition_seconds,
            consumer_lag,
            engine_time_seconds,
            segment_members,
            transitions,
            timers_pending,
            timers_fired,
            outbox_backlog,
            state_size_bytes,
            consumer_paused,
            partition_rebuilds,
            sink_delivery_errors,
            rebalances,
            messages_read,
            build_info,
            rocksdb,
            state_syncs,
            state_commit_failures,
            pipeline_last_progress_seconds,
            sink_oversized_transitions,
            input_gaps,
            sink_producer_fatal_errors,
            changelog_records_published,
            changelog_backlog,
            changelog_restores,
            changelog_restore_records,
            changelog_restore_seconds,
        }
    }

    /// Sets the `tagstream_rocksdb_*` gauges from the store's figures (those it does not
    /// report keep their last value, 0 at first).
    pub fn record_store_health(&self, h: &tagstream_state::StoreHealth) {
        let set = |g: &IntGauge, v: Option<u64>| {
            if let Some(v) = v {
                g.set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        };
        let r = &self.rocksdb;
        set(&r.block_cache_usage_bytes, h.block_cache_usage_bytes);
        set(&r.pending_compaction_bytes, h.pending_compaction_bytes);
        set(&r.write_stopped, h.write_stopped.map(u64::from));
        set(&r.delayed_write_rate, h.delayed_write_rate);
        set(&r.live_sst_bytes, h.live_sst_bytes);
    }

    /// Every metric family this process exports, as (name, type). Histograms also expose
    /// `_bucket`, `_sum` and `_count` series.
    pub fn families(&self) -> &[(&'static str, &'static str)] {
        &self.families
    }

    /// The registry to serve on `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts what one engine commit did.
    pub fn record_batch(&self, report: &BatchReport) {
        self.events
            .with_label_values(&["applied"])
            .inc_by(report.applied);
        self.events
            .with_label_values(&["duplicate"])
            .inc_by(report.duplicates);
        self.events
            .with_label_values(&["skipped"])
            .inc_by(report.skipped);
        self.events
            .with_label_values(&["dead_letter"])
            .inc_by(report.dead_lettered());
        for (reason, n) in &report.dead_letters {
            self.dead_letters.with_label_values(&[reason]).inc_by(*n);
        }
        for ((segment, kind), n) in &report.transitions_by_segment {
            self.transitions
                .with_label_values(&[segment.as_str(), *kind])
                .inc_by(*n);
        }
        self.timers_fired.inc_by(report.timers_fired);
    }

    /// Drops the per-partition gauges of a partition this instance no longer owns, so that
    /// dashboards and alerts do not see its last values forever.
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let p = partition.to_string();
        let _ = self.consumer_lag.remove_label_values(&[topic, &p]);
        let _ = self.engine_time_seconds.remove_label_values(&[&p]);
    }

    /// Sets a partition's engine time gauge.
    pub fn set_engine_time(&self, partition: u32, millis: i64) {
        let g: Gauge = self
            .engine_time_seconds
            .with_label_values(&[&partition.to_string()]);
        g.set(millis as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_follow_the_spec() {
        let m = Metrics::new();
        let mut report = BatchReport {
            applied: 3,
            duplicates: 1,
            skipped: 4,
            timers_fired: 2,
            ..BatchReport::default()
        };
        report.dead_letters.insert("invalid_json", 2);
        report
            .transitions_by_segment
            .insert(("vip".into(), "segment_enter"), 1);
        m.record_batch(&report);
        m.set_engine_time(3, 1_732_000_000_000);
        m.consumer_lag.with_label_values(&["events", "3"]).set(7);
        m.segment_members.with_label_values(&["vip"]).set(1);
        m.event_to_transition_seconds.observe(0.01);
        m.batch_apply_seconds.observe(0.01);
        let text = m.render();
        for needle in [
            "tagstream_events_total{outcome=\"applied\"} 3",
            "tagstream_events_total{outcome=\"duplicate\"} 1",
            "tagstream_events_total{outcome=\"skipped\"} 4",
            "tagstream_events_total{outcome=\"dead_letter\"} 2",
            "tagstream_dead_letters_total{reason=\"invalid_json\"} 2",
            "tagstream_transitions_total{segment=\"vip\",type=\"segment_enter\"} 1",
            "tagstream_timers_fired_total 2",
            "tagstream_engine_time_seconds{partition=\"3\"} 1732000000",
            "tagstream_consumer_lag_messages{partition=\"3\",topic=\"events\"} 7",
            "tagstream_segment_members{segment=\"vip\"} 1",
            "tagstream_batch_apply_seconds_bucket",
            "tagstream_event_to_transition_seconds_bucket",
            "tagstream_timers_pending 0",
            "tagstream_outbox_backlog 0",
            "tagstream_state_size_bytes 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        m.forget_partition("events", 3);
        let text = m.render();
        assert!(!text.contains("partition=\"3\""), "{text}");
    }
}
