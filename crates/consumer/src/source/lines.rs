//! File and stdin sources for `run`: NDJSON lines (gzip by a `.gz` suffix), engine partition 0.
//!
//! A file's position (last line consumed) is committed with the state it produced, together
//! with a fingerprint of the bytes read so far (up to the first 64 KiB) and how many bytes that
//! covers: a restart on the same file continues after the last committed line, even when the file
//! has grown since (`follow = true` appends), while a different file under the same path is read
//! from its start. At the end of the input the source waits: with `follow`, for appended lines
//! (a trailing line without its newline is held back until it is complete); without, for
//! shutdown, so the service keeps firing timers. Stdin has no position: a restart cannot resume.

use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tagstream_state::{Cf, StateStore};

use super::line_reader::{LineReader, StdinMode};
use super::{Batch, Control, Message, SourceEvent};
use crate::error::{ConsumerError, Result};
use crate::outbox::Origin;
use crate::schema::position_key;

/// What to read.
#[derive(Debug, Clone)]
pub struct LinesConfig {
    /// A file path, or `-` for stdin.
    pub path: String,
    /// Keep reading lines appended to the file.
    pub follow: bool,
    pub batch_size: usize,
    /// Lines longer than this are dead-lettered as `too_large` without being held in memory.
    pub max_event_bytes: usize,
}

/// Opens the input, positions it after the last committed line, and starts the reader thread.
pub fn start_lines(
    config: &LinesConfig,
    store: Arc<dyn StateStore>,
    control: Arc<Control>,
    tx: SyncSender<SourceEvent>,
) -> Result<JoinHandle<()>> {
    let path = config.path.clone();
    let mut reader = LineReader::open(&path, config.max_event_bytes, StdinMode::Pumped)?;
    let key = (path != "-").then(|| position_key(&path));
    if let Some(key) = &key {
        if let Some(stored) = store.get(Cf::Offsets, key)? {
            reader.resume(&stored)?;
        }
    }
    let batch_size = config.batch_size.max(1);
    let follow = config.follow;
    std::thread::Builder::new()
        .name("line-source".into())
        .spawn(move || {
            if let Err(e) = read_loop(&path, reader, key, follow, batch_size, &control, &tx) {
                control.fail(format!("reading {path}: {e}"));
            }
        })
        .map_err(|e| ConsumerError::io("starting the input thread", e))
}

fn read_loop(
    path: &str,
    mut reader: LineReader,
    key: Option<Vec<u8>>,
    follow: bool,
    batch_size: usize,
    control: &Control,
    tx: &SyncSender<SourceEvent>,
) -> Result<()> {
    if tx
        .send(SourceEvent::Assigned(vec![(path.to_string(), 0)]))
        .is_err()
    {
        return Ok(());
    }
    let mut announced_end = false;
    let mut sent_line = reader.line();
    let source: std::sync::Arc<str> = std::sync::Arc::from(path);
    while !control.stopping() {
        if control.pause_wanted() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let mut messages = Vec::new();
        let mut at_end = false;
        while messages.len() < batch_size {
            match reader.next(follow)? {
                Some(line) => messages.push(Message {
                    partition: 0,
                    bytes: line.bytes,
                    origin: Origin::Line {
                        source: source.clone(),
                        line: line.number,
                    },
                    fault: line.fault,
                }),
                None => {
                    at_end = true;
                    break;
                }
            }
        }
        if !messages.is_empty() || reader.line() != sent_line {
            let positions = match (&key, reader.position()) {
                (Some(k), Some(v)) => vec![(k.clone(), v)],
                _ => vec![],
            };
            sent_line = reader.line();
            announced_end = false;
            if tx
                .send(SourceEvent::Batch(Batch::new(messages, positions)))
                .is_err()
            {
                return Ok(());
            }
        }
        if at_end && reader.waiting() {
            // Stdin is open but idle: the pump already waited a moment.
            continue;
        }
        if at_end {
            if !announced_end {
                // Stdin too: the service stays up (timers, API) until stopped, like a file.
                let what = if reader.failure().is_some() {
                    "stopped reading"
                } else {
                    "reached the end of"
                };
                tracing::info!(
                    line = reader.line(),
                    "{what} {path}; {}",
                    if follow && reader.failure().is_none() {
                        "waiting for appended lines"
                    } else {
                        "running until stopped"
                    }
                );
                announced_end = true;
            }
            std::thread::sleep(Duration::from_millis(if follow { 100 } else { 200 }));
        }
    }
    Ok(())
}
