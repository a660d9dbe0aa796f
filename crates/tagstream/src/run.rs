//! `tagstream run --config <file>`: the long-running service.
//!
//! Wiring only: configuration → rules → state store → engine → sinks (outbox delivery) →
//! HTTP API → source thread → [`pipeline::run`] until SIGTERM/SIGINT (a file or stdin source
//! that reaches its end keeps the service up for timers and the API). Exit codes: 1 for
//! configuration and rules errors (one line naming the file, line and key), 2 for runtime
//! failures (the state stays consistent: a restart resumes from the last commit).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use tagstream_consumer::changelog::{self, ChangelogConfig, Publisher};
use tagstream_consumer::engine::{ClockMode, Engine, EngineOptions, SharedEngine};
use tagstream_consumer::kafka::is_connection_option;
use tagstream_consumer::metrics::Metrics;
use tagstream_consumer::pipeline::{self, PipelineOptions, Shutdown};
use tagstream_consumer::replay::load_rules;
use tagstream_consumer::sink::kafka::KafkaProducer;
use tagstream_consumer::sink::lines::LineSink;
use tagstream_consumer::sink::{Delivery, Route};
use tagstream_consumer::source::kafka::{KafkaSource, KafkaSourceConfig};
use tagstream_consumer::source::{start_lines, Control, LinesConfig};
use tagstream_consumer::ConsumerError;
use tagstream_rules::event::DecodeOptions;
use tagstream_state::{RocksStore, StateStore};

use crate::api::{self, ApiServer, ApiState};
use crate::config::{self, ClockModeConfig, Config, DeadLetterKind, SinkKind, SourceKind};

/// A failure of the service, with its exit code (1 = configuration, 2 = runtime).
#[derive(Debug)]
pub struct RunError {
    pub code: u8,
    pub message: String,
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        self.code
    }

    fn user(message: impl Into<String>) -> RunError {
        RunError {
            code: 1,
            message: message.into(),
        }
    }

    fn runtime(message: impl Into<String>) -> RunError {
        RunError {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<ConsumerError> for RunError {
    fn from(e: ConsumerError) -> Self {
        RunError {
            code: if e.is_user_error() { 1 } else { 2 },
            message: e.to_string(),
        }
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub fn run(config: &str) -> Result<(), RunError> {
    let config = config::load(Path::new(config)).map_err(RunError::user)?;
    serve(&config)
}

/// Producers by brokers and options, so the sink and the dead-letter topic share one when they
/// can.
#[derive(Default)]
struct Producers(Vec<(String, BTreeMap<String, String>, Arc<KafkaProducer>)>);

impl Producers {
    fn get(
        &mut self,
        name: &str,
        brokers: &str,
        options: BTreeMap<String, String>,
    ) -> Result<Arc<KafkaProducer>, RunError> {
        if let Some((_, _, p)) = self
            .0
            .iter()
            .find(|(b, o, _)| b == brokers && *o == options)
        {
            return Ok(p.clone());
        }
        let p = Arc::new(KafkaProducer::new(name, brokers, &options).map_err(RunError::user)?);
        self.0.push((brokers.to_string(), options, p.clone()));
        Ok(p)
    }
}

/// Connection and security options of the source, then the sink's own.
fn producer_options(config: &Config, own: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = config
        .source
        .options
        .iter()
        .filter(|(k, _)| is_connection_option(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

fn path_text(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn serve(config: &Config) -> Result<(), RunError> {
    // Before anything is opened or created: an API others can reach needs a token.
    let token = api::load_token(config.api.token_file.as_deref()).map_err(RunError::user)?;
    config
        .api
        .check_exposure(token.is_some())
        .map_err(RunError::user)?;
    let (rules, rules_source) = load_rules(&config.rules.to_string_lossy())?;
    let changelog = config.changelog_topic().map(|topic| ChangelogConfig {
        brokers: config.source.brokers.clone().unwrap_or_default(),
        topic,
        options: producer_options(config, &BTreeMap::new()),
    });
    // Topics that do not fit are a startup error; a cluster that cannot be reached yet is not
    // (the service waits for it like for any broker): the source checks again before it joins.
    let mut check_changelog = false;
    if let Some(c) = &changelog {
        match changelog::ensure_topic(c, &config.source.topics, Duration::from_secs(10)) {
            Ok(()) => {}
            Err(e) if e.is_user_error() => return Err(e.into()),
            Err(e) => {
                tracing::warn!("cannot check the changelog topic {} yet: {e}; checking again before joining the group", c.topic);
                check_changelog = true;
            }
        }
    }
    let dir = &config.state.dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| RunError::user(format!("cannot create state dir {}: {e}", dir.display())))?;
    let store: Arc<dyn StateStore> =
        Arc::new(RocksStore::open(dir).map_err(|e| RunError::runtime(e.to_string()))?);
    let clock = match config.clock.mode {
        ClockModeConfig::Wall => ClockMode::Wall,
        ClockModeConfig::Event => ClockMode::Event,
    };
    let durable = config.state.sync == config::SyncMode::Batch;
    let options = EngineOptions {
        clock,
        max_future_ms: config.clock.max_future,
        decode: DecodeOptions {
            format: config.source.format.format(),
            max_event_bytes: config.source.max_event_bytes as usize,
        },
        // Rules changed since the last run (a new ConfigMap, a rolling restart): carry the
        // state over, exactly as `POST /v1/rules/reload` would.
        reload_on_open: true,
        sync: durable,
        changelog: changelog.is_some(),
        // A batch of events during a mass expiry does a bounded share of the firing; the
        // clock tick does the rest between batches.
        timers_per_batch: pipeline::TIMERS_PER_BATCH_PARTITION,
        ..EngineOptions::default()
    };
    let mut engine = Engine::open(store.clone(), Arc::new(rules), &rules_source, options)?;
    let metrics = Metrics::new();
    engine.set_metrics(metrics.clone());

    let mut producers = Producers::default();
    let transitions = match config.sink.kind {
        SinkKind::Kafka => Route::Kafka {
            producer: producers.get(
                "transitions",
                config.sink.brokers.as_deref().unwrap_or_default(),
                producer_options(config, &config.sink.options),
            )?,
            topic: config.sink.topic.clone().unwrap_or_default(),
        },
        SinkKind::File => Route::Lines(
            LineSink::open(&path_text(&config.sink.path), false)?.sync_on_flush(durable),
        ),
        SinkKind::Stdout => Route::Lines(LineSink::open("-", false)?),
    };
    let dead_letters = match config.dead_letter.kind {
        DeadLetterKind::Kafka => Route::Kafka {
            producer: producers.get(
                "dead-letter",
                config.dead_letter.brokers.as_deref().unwrap_or_default(),
                producer_options(config, &config.dead_letter.options),
            )?,
            topic: config.dead_letter.topic.clone().unwrap_or_default(),
        },
        DeadLetterKind::File => Route::Lines(
            LineSink::open(&path_text(&config.dead_letter.path), false)?.sync_on_flush(durable),
        ),
    };
    let mut delivery = Delivery::new(&engine, transitions, dead_letters, metrics.clone())?;
    delivery.set_max_message_bytes(
        usize::try_from(config.sink.max_message_bytes).unwrap_or(usize::MAX),
    );
    let publisher = match &changelog {
        Some(c) => {
            // Delivery waits for the changelog's acknowledgement, so its linger is part of every
            // transition's latency; its records come in bursts (one commit's), which batch
            // anyway (bench_kafka, 2,000 events/s: p50 27 -> 21 ms).
            let mut options = c.options.clone();
            options.insert("linger.ms".into(), "1".into());
            let producer =
                KafkaProducer::new("changelog", &c.brokers, &options).map_err(RunError::user)?;
            Some(Publisher::new(
                &engine,
                Arc::new(producer),
                c.topic.clone(),
                metrics.clone(),
            )?)
        }
        None => None,
    };
    let engine = SharedEngine::new(engine);

    let control = Control::new();
    control.set_stall_after(
        config
            .api
            .stall_after
            .map(|ms| Duration::from_millis(ms.unsigned_abs())),
    );
    let server = ApiServer::start(
        &config.api.listen.to_string(),
        ApiState {
            engine: engine.clone(),
            metrics: metrics.clone(),
            control: control.clone(),
            token,
            rules_path: config.rules.clone(),
            store: store.clone(),
            peers: api::peers::Peers::new(&config.api.peers),
            limits: api::RequestLimits::new(
                config.api.max_in_flight,
                config
                    .api
                    .request_timeout
                    .map(|ms| Duration::from_millis(ms.unsigned_abs())),
            ),
        },
    )
    .map_err(RunError::user)?;
    let (tx, rx) = sync_channel(4);
    let shutdown = Shutdown::new();
    crate::signals::stop_on_signals(shutdown.clone())
        .map_err(|e| RunError::runtime(format!("cannot install signal handlers: {e}")))?;
    let mut kafka = None;
    let mut lines = None;
    match config.source.kind {
        SourceKind::Kafka => {
            let source = KafkaSourceConfig {
                brokers: config.source.brokers.clone().unwrap_or_default(),
                topics: config.source.topics.clone(),
                group_id: config.source.group_id.clone(),
                options: config.source.options.clone(),
                max_batch: 4096,
                changelog: changelog.clone(),
                check_changelog,
            };
            kafka = Some(
                KafkaSource::start(&source, store.clone(), control.clone(), tx, metrics.clone())
                    .map_err(RunError::user)?,
            );
        }
        SourceKind::File | SourceKind::Stdin => {
            let path = if config.source.kind == SourceKind::Stdin {
                "-".to_string()
            } else {
                path_text(&config.source.path)
            };
            let lc = LinesConfig {
                path,
                follow: config.source.follow,
                batch_size: 4096,
                max_event_bytes: config.source.max_event_bytes as usize,
            };
            lines = Some(start_lines(&lc, store.clone(), control.clone(), tx)?);
        }
    }
    let popts = PipelineOptions {
        clock,
        tick: Duration::from_secs(1),
        max_backlog: config.sink.max_backlog,
        flush_timeout: Duration::from_secs(30),
    };
    tracing::info!(state_dir = %dir.display(), clock = ?clock, "tagstream running");
    let summary = pipeline::run(
        engine, rx, control, delivery, publisher, &metrics, &shutdown, &popts,
    );
    server.stop();
    let summary = summary?;
    if let Some(mut k) = kafka {
        k.join();
    }
    if let Some(l) = lines {
        let _ = l.join();
    }
    let r = &summary.report;
    tracing::info!(
        messages = summary.messages,
        applied = r.applied,
        duplicates = r.duplicates,
        dead_letters = r.dead_lettered(),
        transitions = r.transitions,
        timers_fired = r.timers_fired,
        "tagstream stopped"
    );
    Ok(())
}
