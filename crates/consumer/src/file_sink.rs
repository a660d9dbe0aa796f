//! Delivery of outbox entries to NDJSON files or stdout.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};

use crate::engine::Engine;
use crate::error::{ConsumerError, Result};
use crate::outbox::OutboxEntry;

/// An append-only NDJSON destination (`-` = stdout).
pub struct LineSink {
    out: Box<dyn Write + Send>,
    name: String,
}

impl std::fmt::Debug for LineSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineSink")
            .field("name", &self.name)
            .finish()
    }
}

impl LineSink {
    /// Opens `path` for appending (created if missing); `-` writes to stdout.
    pub fn open(path: &str, truncate: bool) -> Result<LineSink> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(BufWriter::new(std::io::stdout()))
        } else {
            let file: File = OpenOptions::new()
                .create(true)
                .append(!truncate)
                .write(true)
                .truncate(truncate)
                .open(path)
                .map_err(|e| ConsumerError::User(format!("cannot open output {path}: {e}")))?;
            Box::new(BufWriter::with_capacity(1 << 20, file))
        };
        Ok(LineSink {
            out,
            name: path.to_string(),
        })
    }

    /// Standard error (dead letters of a replay without `--dlq`).
    pub fn stderr() -> LineSink {
        LineSink {
            out: Box::new(std::io::stderr()),
            name: "stderr".into(),
        }
    }

    pub fn write_line(&mut self, line: &str) -> Result<()> {
        self.out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .map_err(|e| ConsumerError::io(format!("writing {}", self.name), e))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| ConsumerError::io(format!("writing {}", self.name), e))
    }
}

/// Delivers every outbox entry: transitions to `transitions`, dead letters to `dead_letters`
/// (dropped with a count when there is no dead-letter file). Entries are deleted only after
/// the files are flushed, so a crash in between re-delivers (at least once).
pub fn drain_outbox(
    engine: &Engine,
    transitions: &mut LineSink,
    mut dead_letters: Option<&mut LineSink>,
) -> Result<u64> {
    let mut delivered = 0;
    loop {
        let entries = engine.outbox(10_000)?;
        let Some(&(last, _)) = entries.last() else {
            return Ok(delivered);
        };
        for (_, entry) in &entries {
            match entry {
                OutboxEntry::Transition { json, .. } => transitions.write_line(json)?,
                OutboxEntry::DeadLetter(dl) => {
                    if let Some(sink) = dead_letters.as_deref_mut() {
                        sink.write_line(&dl.to_file_line())?;
                    }
                }
            }
        }
        transitions.flush()?;
        if let Some(sink) = dead_letters.as_deref_mut() {
            sink.flush()?;
        }
        engine.acknowledge(last)?;
        delivered += entries.len() as u64;
    }
}
