//! Delivery of outbox entries to NDJSON files or stdout.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};

use crate::engine::Engine;
use crate::error::{ConsumerError, Result};
use crate::outbox::OutboxEntry;

/// A line destination that can be made durable: what [`LineSink::flush`] writes to.
pub trait SyncWrite: Write + Send {
    /// Makes everything written so far survive power loss (`fdatasync` for a file). Streams
    /// that have no disk behind them (stdout, stderr, a pipe) have nothing to do.
    fn sync(&mut self) -> std::io::Result<()>;
}

impl SyncWrite for File {
    fn sync(&mut self) -> std::io::Result<()> {
        match self.sync_data() {
            // EINVAL: a FIFO, socket or character device (`/dev/stdout`), which has no disk
            // to sync to; what was written has been handed over, as with stdout.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            other => other,
        }
    }
}

impl<W: SyncWrite> SyncWrite for BufWriter<W> {
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.get_mut().sync()
    }
}

impl SyncWrite for std::io::Stdout {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SyncWrite for std::io::Stderr {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An append-only NDJSON destination (`-` = stdout).
pub struct LineSink {
    out: Box<dyn SyncWrite>,
    name: String,
    /// `fdatasync` at each flush, before the outbox entries written are acknowledged: a line
    /// whose outbox entry is gone must be on disk, not in the page cache (`state.sync`).
    sync: bool,
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
        let out: Box<dyn SyncWrite> = if path == "-" {
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
        Ok(LineSink::from_writer(path, out))
    }

    /// A sink over any destination; `name` appears in error messages.
    pub fn from_writer(name: &str, out: Box<dyn SyncWrite>) -> LineSink {
        LineSink {
            out,
            name: name.to_string(),
            sync: false,
        }
    }

    /// Standard error (dead letters of a replay without `--dlq`).
    pub fn stderr() -> LineSink {
        LineSink::from_writer("stderr", Box::new(std::io::stderr()))
    }

    /// Makes every [`LineSink::flush`] also sync the data to disk.
    pub fn sync_on_flush(mut self, sync: bool) -> LineSink {
        self.sync = sync;
        self
    }

    pub fn write_line(&mut self, line: &str) -> Result<()> {
        self.out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .map_err(|e| ConsumerError::io(format!("writing {}", self.name), e))
    }

    /// Writes out what is buffered (and syncs it, with [`LineSink::sync_on_flush`]).
    pub fn flush(&mut self) -> Result<()> {
        let result = if self.sync {
            self.out.sync()
        } else {
            self.out.flush()
        };
        result.map_err(|e| ConsumerError::io(format!("writing {}", self.name), e))
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
