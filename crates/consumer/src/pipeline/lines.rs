//! File and stdin sources for `run`: NDJSON lines (gzip by a `.gz` suffix), engine partition 0.
//!
//! A file's position (last line consumed) is committed with the state it produced, together
//! with a fingerprint of the bytes read so far (up to the first 64 KiB) and how many bytes that
//! covers: a restart on the same file continues after the last committed line, even when the file
//! has grown since (`follow = true` appends), while a different file under the same path is read
//! from its start. At the end of the input the source waits: with `follow`, for appended lines
//! (a trailing line without its newline is held back until it is complete); without, for
//! shutdown, so the service keeps firing timers. Stdin has no position: a restart cannot resume.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tagstream_state::{Cf, StateStore};

use super::{Batch, Control, Message, SourceEvent};
use crate::error::{ConsumerError, Result};
use crate::file_source::{decode_position, fingerprint, position_key};
use crate::outbox::Origin;

const HEAD_BYTES: usize = 64 * 1024;

/// What to read.
#[derive(Debug, Clone)]
pub struct LinesConfig {
    /// A file path, or `-` for stdin.
    pub path: String,
    /// Keep reading lines appended to the file.
    pub follow: bool,
    pub batch_size: usize,
}

struct Reader {
    inner: Box<dyn BufRead + Send>,
    line: u64,
    partial: Vec<u8>,
    /// The first bytes read (up to 64 KiB), for the fingerprint.
    head: Vec<u8>,
    /// The last read found no bytes for now, without the input having ended (stdin).
    waiting: bool,
}

/// Stdin read on a thread of its own, so that the source never blocks in a read: when no byte
/// arrives for a moment, reads fail with `WouldBlock` and the lines read so far are applied
/// (a pipe that stays open, `tail -f | tagstream run`, is still applied promptly). A closed
/// stdin reads as the end of the input.
struct StdinPump {
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl StdinPump {
    fn start() -> StdinPump {
        let (tx, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
        // Detached: a read blocked on an open terminal or pipe cannot be interrupted, and the
        // process exits without waiting for it.
        let _ = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let mut stdin = std::io::stdin().lock();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stdin.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if tx.send(buf[..n].to_vec()).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "stdin read failed; treating it as the end of the input");
                            return;
                        }
                    }
                }
            });
        StdinPump {
            chunks,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl Read for StdinPump {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.current.len() {
            match self.chunks.recv_timeout(Duration::from_millis(100)) {
                Ok(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(std::io::ErrorKind::WouldBlock.into())
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn open(path: &str) -> Result<Box<dyn BufRead + Send>> {
    if path == "-" {
        return Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            StdinPump::start(),
        )));
    }
    let file = File::open(path)
        .map_err(|e| ConsumerError::User(format!("cannot open input {path}: {e}")))?;
    Ok(if path.ends_with(".gz") {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, file))
    })
}

fn digest(bytes: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// Position value: fingerprint (16 bytes), last consumed line (u64 BE), bytes fingerprinted
/// (u64 BE).
fn encode(fp: &[u8; 16], line: u64, covered: u64) -> Vec<u8> {
    let mut v = fp.to_vec();
    v.extend_from_slice(&line.to_be_bytes());
    v.extend_from_slice(&covered.to_be_bytes());
    v
}

impl Reader {
    fn new(inner: Box<dyn BufRead + Send>) -> Reader {
        Reader {
            inner,
            line: 0,
            partial: Vec::new(),
            head: Vec::new(),
            waiting: false,
        }
    }

    fn read_raw(&mut self) -> Result<usize> {
        let before = self.partial.len();
        self.waiting = false;
        let n = match self.inner.read_until(b'\n', &mut self.partial) {
            Ok(n) => n,
            // No more bytes for now (stdin); what was read so far stays in `partial`.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.waiting = true;
                self.partial.len() - before
            }
            Err(e) => return Err(ConsumerError::io("reading the input", e)),
        };
        if self.head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - self.head.len()).min(self.partial.len() - before);
            self.head
                .extend_from_slice(&self.partial[before..before + take]);
        }
        Ok(n)
    }

    /// The next non-blank line, or None at the (current) end of the input.
    fn next(&mut self, follow: bool) -> Result<Option<(u64, Vec<u8>)>> {
        loop {
            self.read_raw()?;
            let complete = self.partial.ends_with(b"\n");
            if !complete && (follow || self.waiting || self.partial.is_empty()) {
                return Ok(None);
            }
            self.line += 1;
            let mut line = std::mem::take(&mut self.partial);
            while line.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                line.pop();
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return Ok(Some((self.line, line)));
        }
    }

    /// Skips complete lines up to line `upto`.
    fn skip_to(&mut self, upto: u64) -> Result<()> {
        while self.line < upto {
            self.read_raw()?;
            if !self.partial.ends_with(b"\n") {
                break;
            }
            self.partial.clear();
            self.line += 1;
        }
        Ok(())
    }
}

/// Whether the file at `path` starts with the bytes fingerprinted as `fp` over `covered` bytes.
fn same_file(path: &str, fp: &[u8; 16], covered: u64) -> Result<bool> {
    let mut head = Vec::new();
    open(path)?
        .take(covered)
        .read_to_end(&mut head)
        .map_err(|e| ConsumerError::io(format!("reading {path}"), e))?;
    Ok(head.len() as u64 == covered && digest(&head) == *fp)
}

/// Opens the input, positions it after the last committed line, and starts the reader thread.
pub fn start_lines(
    config: &LinesConfig,
    store: Arc<dyn StateStore>,
    control: Arc<Control>,
    tx: SyncSender<SourceEvent>,
) -> Result<JoinHandle<()>> {
    let path = config.path.clone();
    let mut reader = Reader::new(open(&path)?);
    let key = (path != "-").then(|| position_key(&path));
    if let Some(key) = &key {
        if let Some(stored) = store.get(Cf::Offsets, key)? {
            let resume = if stored.len() == 32 {
                let mut fp = [0u8; 16];
                fp.copy_from_slice(&stored[..16]);
                let line = u64::from_be_bytes(stored[16..24].try_into().unwrap_or_default());
                let covered = u64::from_be_bytes(stored[24..32].try_into().unwrap_or_default());
                same_file(&path, &fp, covered)?.then_some(line)
            } else {
                // Written by `replay`: fingerprint of the first 64 KiB.
                match (decode_position(&stored), fingerprint(&path)?) {
                    (Some((fp, line)), Some(now)) if fp == now => Some(line),
                    _ => None,
                }
            };
            match resume {
                Some(line) => {
                    tracing::info!(line, "continuing {path} after the last line consumed");
                    reader.skip_to(line)?;
                }
                None => tracing::info!(
                    "{path} changed since it was last read; reading it from the start"
                ),
            }
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
    mut reader: Reader,
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
    let mut sent_line = reader.line;
    while !control.stopping() {
        if control.pause_wanted() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let mut messages = Vec::new();
        let mut at_end = false;
        while messages.len() < batch_size {
            match reader.next(follow)? {
                Some((n, bytes)) => messages.push(Message {
                    partition: 0,
                    bytes,
                    origin: Origin::Line {
                        source: path.to_string(),
                        line: n,
                    },
                }),
                None => {
                    at_end = true;
                    break;
                }
            }
        }
        if !messages.is_empty() || reader.line != sent_line {
            let positions = match &key {
                Some(k) => vec![(
                    k.clone(),
                    encode(&digest(&reader.head), reader.line, reader.head.len() as u64),
                )],
                None => vec![],
            };
            sent_line = reader.line;
            announced_end = false;
            if tx
                .send(SourceEvent::Batch(Batch::new(messages, positions)))
                .is_err()
            {
                return Ok(());
            }
        }
        if at_end && reader.waiting {
            // Stdin is open but idle: the pump already waited a moment.
            continue;
        }
        if at_end {
            if !announced_end {
                // Stdin too: the service stays up (timers, API) until stopped, like a file.
                tracing::info!(
                    line = reader.line,
                    "reached the end of {path}; {}",
                    if follow {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_holds_back_a_partial_last_line() {
        let data: &[u8] = b"{\"a\":1}\n\n{\"b\":2}\n{\"c\"";
        let mut r = Reader::new(Box::new(std::io::Cursor::new(data.to_vec())));
        assert_eq!(r.next(true).unwrap(), Some((1, b"{\"a\":1}".to_vec())));
        assert_eq!(r.next(true).unwrap(), Some((3, b"{\"b\":2}".to_vec())));
        assert_eq!(r.next(true).unwrap(), None);
        assert_eq!(r.partial, b"{\"c\"".to_vec());
        let mut r = Reader::new(Box::new(std::io::Cursor::new(data.to_vec())));
        r.skip_to(3).unwrap();
        assert_eq!(r.next(false).unwrap(), Some((4, b"{\"c\"".to_vec())));
        assert_eq!(r.next(false).unwrap(), None);
        assert_eq!(r.head, data.to_vec());
    }

    #[test]
    fn a_grown_file_is_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ndjson");
        std::fs::write(&path, "line1\n").unwrap();
        let p = path.to_str().unwrap();
        let fp = digest(b"line1\n");
        assert!(same_file(p, &fp, 6).unwrap());
        std::fs::write(&path, "line1\nline2\n").unwrap();
        assert!(same_file(p, &fp, 6).unwrap());
        std::fs::write(&path, "other\nline2\n").unwrap();
        assert!(!same_file(p, &fp, 6).unwrap());
    }
}
