//! `tagstream replay` and `tagstream dump`: the engine over a file, in event-clock mode.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tagstream_rules::engine::dump_line;
use tagstream_rules::event::{DecodeOptions, Format, Millis};
use tagstream_rules::rules::RuleSet;
use tagstream_state::{RocksStore, StateStore, StoreOptions};

use crate::engine::{BatchReport, ClockMode, Engine, EngineOptions, Record};
use crate::error::{ConsumerError, Result};
use crate::outbox::Origin;
use crate::schema::position_key;
use crate::sink::lines::{drain_outbox, LineSink};
use crate::source::line_reader::{LineReader, ReadLine, StdinMode};

/// Replay is single-partition: every user lives in partition 0.
const PARTITION: u32 = 0;

/// Lines read and applied at a time; a batch (`--batch-size` events) takes several chunks, so
/// memory holds one chunk of input, not a whole batch.
const READ_CHUNK: usize = 65_536;

/// A batch is committed early once it holds this many users: with one event per user, a
/// million-event batch would otherwise keep a million user states in memory.
const MAX_BATCH_USERS: usize = 65_536;

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub rules: String,
    pub input: String,
    pub state_dir: String,
    pub out: String,
    pub format: Format,
    pub dlq: Option<String>,
    pub advance_to: Option<Millis>,
    pub batch_size: usize,
}

#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    pub report: BatchReport,
    pub engine_time: Option<Millis>,
    pub lines: u64,
}

/// Reads and compiles a rules file; errors are user errors naming file, line and column.
pub fn load_rules(path: &str) -> Result<(RuleSet, String)> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| ConsumerError::User(format!("cannot read rules file {path}: {e}")))?;
    let rules = RuleSet::compile(&source, path).map_err(|e| ConsumerError::User(e.to_string()))?;
    Ok((rules, source))
}

fn open_store(dir: &str, must_exist: bool) -> Result<Arc<dyn StateStore>> {
    if must_exist && !Path::new(dir).join("CURRENT").exists() {
        return Err(ConsumerError::User(format!("no tagstream state in {dir}: run `tagstream replay` (or `run`) with --state-dir {dir} first")));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| ConsumerError::User(format!("cannot create state dir {dir}: {e}")))?;
    // An existing state is only read (`dump`): without the lock, beside a running service.
    let options = StoreOptions {
        read_only: must_exist,
        ..StoreOptions::default()
    };
    Ok(Arc::new(RocksStore::open_with(Path::new(dir), options)?))
}

pub fn replay(opts: &ReplayOptions) -> Result<ReplaySummary> {
    let (rules, source) = load_rules(&opts.rules)?;
    let store = open_store(&opts.state_dir, false)?;
    let decode = DecodeOptions {
        format: opts.format,
        ..DecodeOptions::default()
    };
    let max_event_bytes = decode.max_event_bytes;
    let options = EngineOptions {
        clock: ClockMode::Event,
        decode,
        ..EngineOptions::default()
    };
    let mut engine = Engine::open(store, Arc::new(rules), &source, options)?;
    if let (Some(t), Some(now)) = (opts.advance_to, engine.clock(PARTITION)) {
        if t < now {
            return Err(advance_error(t, now));
        }
    }
    let mut out = LineSink::open(&opts.out, true)?;
    let mut dlq = match &opts.dlq {
        Some(path) => LineSink::open(path, true)?,
        None => LineSink::stderr(),
    };
    // Entries left by an interrupted run are delivered first.
    drain_outbox(&engine, &mut out, Some(&mut dlq))?;

    let mut input = LineReader::open(&opts.input, max_event_bytes, StdinMode::Blocking)?;
    let pos_key = position_key(&opts.input);
    if opts.input != "-" {
        if let Some(stored) = engine.store().get(tagstream_state::Cf::Offsets, &pos_key)? {
            input.resume(&stored)?;
        }
    }

    let mut summary = ReplaySummary::default();
    let source: Arc<str> = Arc::from(opts.input.as_str());
    let mut lines: Vec<ReadLine> = Vec::with_capacity(READ_CHUNK.min(opts.batch_size));
    let mut at_end = false;
    while !at_end {
        // One committed batch: chunks of lines until `batch_size` events, or until the batch
        // holds so many users that their states would crowd memory (one event each).
        let mut batch = engine.begin()?;
        while batch.records() < opts.batch_size && batch.users() < MAX_BATCH_USERS {
            lines.clear();
            let want = READ_CHUNK.min(opts.batch_size - batch.records());
            while lines.len() < want {
                match input.next(false)? {
                    Some(line) => lines.push(line),
                    None => break,
                }
            }
            if lines.is_empty() {
                at_end = true;
                break;
            }
            let records: Vec<Record<'_>> = lines
                .iter()
                .map(|line| Record {
                    partition: PARTITION,
                    bytes: &line.bytes,
                    origin: Origin::Line {
                        source: source.clone(),
                        line: line.number,
                    },
                    fault: line.fault.clone(),
                })
                .collect();
            batch.apply(&records)?;
        }
        if batch.records() == 0 {
            break;
        }
        let positions = match input.position() {
            Some(v) => vec![(pos_key.clone(), v)],
            None => vec![],
        };
        let report = batch.commit(&positions)?;
        summary.report.merge(&report);
        summary.lines = input.line();
        drain_outbox(&engine, &mut out, Some(&mut dlq))?;
    }
    // Fire every timer due up to the final engine time (batches fire at most a bounded number).
    if let Some(now) = engine.clock(PARTITION) {
        summary.report.merge(&engine.advance(PARTITION, now)?);
    }
    if let Some(error) = input.failure() {
        // What was readable is applied and committed; time is not advanced past an input that
        // ended early.
        drain_outbox(&engine, &mut out, Some(&mut dlq))?;
        engine.store().sync()?;
        return Err(unreadable_error(&opts.input, input.line(), error));
    }
    if let Some(t) = opts.advance_to {
        if let Some(now) = engine.clock(PARTITION) {
            if t < now {
                drain_outbox(&engine, &mut out, Some(&mut dlq))?;
                return Err(advance_error(t, now));
            }
        }
        summary.report.merge(&engine.advance(PARTITION, t)?);
    }
    drain_outbox(&engine, &mut out, Some(&mut dlq))?;
    engine.store().sync()?;
    summary.engine_time = engine.clock(PARTITION);
    Ok(summary)
}

fn unreadable_error(input: &str, line: u64, error: &str) -> ConsumerError {
    ConsumerError::User(format!("input {input} cannot be read past line {line} ({error}): the lines before it were applied and line {line} was dead-lettered as {}; the rest of the input was not read", crate::engine::UNREADABLE_INPUT))
}

fn advance_error(t: Millis, now: Millis) -> ConsumerError {
    ConsumerError::User(format!("--advance-to {t} is before the current engine time {now}; engine time never goes backwards"))
}

/// Writes the state dump (SPEC §5), sorted by user id; only `user` when given.
pub fn dump(
    state_dir: &str,
    rules_path: Option<&str>,
    user: Option<&str>,
    out: &mut dyn Write,
) -> Result<u64> {
    let store = open_store(state_dir, true)?;
    let (rules, source) = match rules_path {
        Some(path) => load_rules(path)?,
        None => {
            let source = Engine::stored_rules(store.as_ref())?.ok_or_else(|| {
                ConsumerError::User(format!("{state_dir} holds no rules; pass --rules"))
            })?;
            let rules = RuleSet::compile(&source, "<stored rules>")
                .map_err(|e| ConsumerError::Corrupt(e.to_string()))?;
            (rules, source)
        }
    };
    let engine = Engine::open(store, Arc::new(rules), &source, EngineOptions::default())?;
    let rules = engine.rules().clone();
    let mut written = 0;
    let mut write =
        |id: &str, state: &tagstream_rules::state::UserState, now: Millis| -> Result<()> {
            let line = dump_line(&rules, id, state, now);
            writeln!(out, "{line}").map_err(|e| ConsumerError::io("writing the dump", e))?;
            written += 1;
            Ok(())
        };
    let result = match user {
        Some(id) => match engine.user(id)? {
            Some((state, now)) => write(id, &state, now),
            None => Ok(()),
        },
        None => engine.for_each_user(&mut write),
    };
    let result = result.and_then(|_| {
        out.flush()
            .map_err(|e| ConsumerError::io("writing the dump", e))
    });
    match result {
        // A reader that stops early (`dump | head`) is a normal way to end.
        Err(ConsumerError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(written)
}
