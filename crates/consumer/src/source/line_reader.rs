//! NDJSON input from a file (optionally gzip-compressed, by a `.gz` suffix) or stdin: the one
//! line reader of `run`'s file and stdin sources and of `replay`.
//!
//! Lines are numbered from 1; blank lines are skipped but still counted, so dead-letter line
//! numbers match what an editor shows. No input can make the reader hold more than about
//! `max_event_bytes` of one line: a longer line (a newline-less stream, a gzip bomb) is read to
//! its end without being kept, and handed over as its first 64 KiB marked
//! [`SourceFault::TooLarge`]. An input that cannot be read past some point (a corrupt or
//! truncated `.gz`, a read error) ends there: what was read of the line is handed over marked
//! [`SourceFault::Unreadable`], and nothing more is read from it.
//!
//! Positions are stored per input path together with a fingerprint of the bytes read so far (up
//! to the first 64 KiB) and how many bytes that covers: re-reading the same file continues after
//! the last committed line, even when the file has grown since, while a different file under the
//! same path is read from its start.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::engine::SourceFault;
use crate::error::{ConsumerError, Result};
use crate::schema::{decode_position, encode_position};

/// How much of an input's start is fingerprinted.
const HEAD_BYTES: usize = 64 * 1024;

/// What a dead letter of a too-large line carries: its first 64 KiB (SPEC §2).
pub const TOO_LARGE_KEPT_BYTES: usize = 64 * 1024;

/// How stdin is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinMode {
    /// Reads block until bytes arrive or stdin closes (`replay`: the input is read to its end).
    Blocking,
    /// Read on a thread of its own, so that the source never blocks in a read: when no byte
    /// arrives for a moment, reads fail with `WouldBlock` and the lines read so far are applied
    /// (a pipe that stays open, `tail -f | tagstream run`, is still applied promptly).
    Pumped,
}

/// Opens a path (`-` = stdin); a `.gz` suffix is decompressed.
pub fn open(path: &str, stdin: StdinMode) -> Result<Box<dyn BufRead + Send>> {
    if path == "-" {
        return Ok(match stdin {
            StdinMode::Blocking => Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())),
            StdinMode::Pumped => Box::new(BufReader::with_capacity(1 << 20, StdinPump::start())),
        });
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

/// One line handed over by the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadLine {
    /// 1-based line number.
    pub number: u64,
    /// The line without its line end; only its first bytes when `fault` says so.
    pub bytes: Vec<u8>,
    pub fault: Option<SourceFault>,
}

/// The line being read: a bounded prefix and what is known of the rest.
#[derive(Debug)]
struct Partial {
    kept: Vec<u8>,
    /// Bytes of the line seen so far, without the newline.
    len: u64,
    /// `\r` bytes at the end of what was seen (a line end `\r\n` is not part of the line).
    trailing_cr: u64,
    /// Only ASCII whitespace so far.
    blank: bool,
}

impl Partial {
    fn new() -> Partial {
        Partial {
            kept: Vec::new(),
            len: 0,
            trailing_cr: 0,
            blank: true,
        }
    }

    fn push(&mut self, chunk: &[u8], keep: usize) {
        if chunk.is_empty() {
            return;
        }
        if self.kept.len() < keep {
            let take = (keep - self.kept.len()).min(chunk.len());
            self.kept.extend_from_slice(&chunk[..take]);
        }
        self.len += chunk.len() as u64;
        self.blank = self.blank && chunk.iter().all(u8::is_ascii_whitespace);
        let crs = chunk.iter().rev().take_while(|b| **b == b'\r').count();
        self.trailing_cr = if crs == chunk.len() {
            self.trailing_cr + crs as u64
        } else {
            crs as u64
        };
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The longest prefix of `bytes` of at most `max` bytes that does not end inside a UTF-8
/// character (when the prefix is UTF-8 at all), so a cut text line stays text.
fn utf8_cut(bytes: &[u8], max: usize) -> &[u8] {
    let head = &bytes[..max.min(bytes.len())];
    match std::str::from_utf8(head) {
        Err(e) if e.error_len().is_none() => &head[..e.valid_up_to()],
        _ => head,
    }
}

/// A line-oriented reader over a path or `-` (stdin), bounded by `max_event_bytes` per line.
pub struct LineReader {
    inner: Box<dyn BufRead + Send>,
    name: String,
    max_event_bytes: usize,
    /// Lines consumed (the number of the last line handed over or skipped).
    line: u64,
    partial: Partial,
    /// The first bytes read (up to 64 KiB), for the fingerprint.
    head: Vec<u8>,
    /// The last read found no bytes for now, without the input having ended (pumped stdin).
    waiting: bool,
    /// Why the input could not be read further; nothing more is read once set.
    failed: Option<String>,
    too_large_logged: bool,
}

impl std::fmt::Debug for LineReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader")
            .field("name", &self.name)
            .field("line", &self.line)
            .field("failed", &self.failed)
            .finish()
    }
}

impl LineReader {
    pub fn open(path: &str, max_event_bytes: usize, stdin: StdinMode) -> Result<LineReader> {
        Ok(LineReader::new(open(path, stdin)?, path, max_event_bytes))
    }

    pub fn new(inner: Box<dyn BufRead + Send>, name: &str, max_event_bytes: usize) -> LineReader {
        LineReader {
            inner,
            name: name.to_string(),
            max_event_bytes,
            line: 0,
            partial: Partial::new(),
            head: Vec::new(),
            waiting: false,
            failed: None,
            too_large_logged: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of the last line consumed.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The last read found no bytes for now (pumped stdin that is open but idle).
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// Why the input could not be read past [`LineReader::line`], once that happened.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The position to store after the last consumed line (None for stdin, which has none).
    pub fn position(&self) -> Option<Vec<u8>> {
        (self.name != "-")
            .then(|| encode_position(&digest(&self.head), self.line, self.head.len() as u64))
    }

    /// Reads into the current line, keeping at most `keep` bytes of it, until its newline
    /// (`Ok(true)`) or the current end of the input (`Ok(false)`).
    fn read_raw(&mut self, keep: usize) -> std::io::Result<bool> {
        let LineReader {
            inner,
            partial,
            head,
            ..
        } = self;
        loop {
            let available = match inner.fill_buf() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(false);
            }
            let newline = memchr::memchr(b'\n', available);
            let content = newline.unwrap_or(available.len());
            let consumed = newline.map_or(content, |at| at + 1);
            if head.len() < HEAD_BYTES {
                let take = (HEAD_BYTES - head.len()).min(consumed);
                head.extend_from_slice(&available[..take]);
            }
            partial.push(&available[..content], keep);
            inner.consume(consumed);
            if newline.is_some() {
                return Ok(true);
            }
        }
    }

    fn keep(&self) -> usize {
        self.max_event_bytes.max(TOO_LARGE_KEPT_BYTES)
    }

    /// The next non-blank line, or None at the (current) end of the input. With `follow`, a
    /// last line without its newline is held back until it is complete.
    pub fn next(&mut self, follow: bool) -> Result<Option<ReadLine>> {
        loop {
            if self.failed.is_some() {
                return Ok(None);
            }
            self.waiting = false;
            let complete = match self.read_raw(self.keep()) {
                Ok(complete) => complete,
                // No more bytes for now (stdin); what was read so far stays in `partial`.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.waiting = true;
                    return Ok(None);
                }
                Err(e) => return Ok(Some(self.unreadable(e))),
            };
            if !complete && (follow || self.partial.is_empty()) {
                return Ok(None);
            }
            self.line += 1;
            let partial = std::mem::replace(&mut self.partial, Partial::new());
            if partial.blank {
                continue;
            }
            let len = partial.len - partial.trailing_cr;
            let mut bytes = partial.kept;
            if len <= self.max_event_bytes as u64 {
                // Whatever was not kept is `\r`s of the line end.
                bytes.truncate(len as usize);
                return Ok(Some(ReadLine {
                    number: self.line,
                    bytes,
                    fault: None,
                }));
            }
            if !self.too_large_logged {
                self.too_large_logged = true;
                tracing::warn!(
                    line = self.line,
                    bytes = len,
                    max_event_bytes = self.max_event_bytes,
                    "a line of {} is longer than max_event_bytes: it is dead-lettered as too_large with its first 64 KiB (logged once per input)",
                    self.name
                );
            }
            let kept = utf8_cut(&bytes, TOO_LARGE_KEPT_BYTES).len();
            bytes.truncate(kept);
            return Ok(Some(ReadLine {
                number: self.line,
                bytes,
                fault: Some(SourceFault::TooLarge { len }),
            }));
        }
    }

    /// The input cannot be read past this point: the line being read is handed over as is.
    fn unreadable(&mut self, e: std::io::Error) -> ReadLine {
        let error = e.to_string();
        self.line += 1;
        tracing::warn!(
            line = self.line,
            error = %error,
            "{} cannot be read past line {}: the line is dead-lettered as unreadable_input and the rest of the input is not read",
            self.name,
            self.line
        );
        self.failed = Some(error.clone());
        let partial = std::mem::replace(&mut self.partial, Partial::new());
        let mut bytes = partial.kept;
        let kept = utf8_cut(&bytes, TOO_LARGE_KEPT_BYTES).len();
        bytes.truncate(kept);
        ReadLine {
            number: self.line,
            bytes,
            fault: Some(SourceFault::Unreadable { error }),
        }
    }

    /// Skips complete lines up to line `upto` (resuming after a stored position). An input that
    /// cannot be read that far was dead-lettered when it was first read: it stays stopped.
    pub fn skip_to(&mut self, upto: u64) -> Result<()> {
        while self.line < upto {
            match self.read_raw(0) {
                Ok(true) => {
                    self.partial = Partial::new();
                    self.line += 1;
                }
                Ok(false) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(
                        line = self.line + 1,
                        error = %e,
                        "{} still cannot be read past line {}; it stays stopped there",
                        self.name,
                        self.line + 1
                    );
                    self.line = upto;
                    self.partial = Partial::new();
                    self.failed = Some(e.to_string());
                }
            }
        }
        Ok(())
    }

    /// Positions the reader after the line stored under `stored` (a value of this input's
    /// position key), when the input is still the file it was read from.
    pub fn resume(&mut self, stored: &[u8]) -> Result<()> {
        match resume_line(&self.name, stored)? {
            Some(line) => {
                tracing::info!(
                    line,
                    "continuing {} after the last line consumed",
                    self.name
                );
                self.skip_to(line)
            }
            None => {
                tracing::info!(
                    "{} changed since it was last read; reading it from the start",
                    self.name
                );
                Ok(())
            }
        }
    }
}

/// Stdin read on a thread of its own (see [`StdinMode::Pumped`]). A closed stdin reads as the
/// end of the input.
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

fn digest(bytes: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// Up to `limit` bytes from the start of `path`'s content. An input that cannot be read that
/// far gives what could be read (a corrupt `.gz` decodes to the same bytes every time).
fn read_head(path: &str, limit: u64) -> Result<Vec<u8>> {
    let mut head = Vec::new();
    if let Err(e) = open(path, StdinMode::Blocking)?
        .take(limit)
        .read_to_end(&mut head)
    {
        tracing::debug!(error = %e, "{path} cannot be read to {limit} bytes");
    }
    Ok(head)
}

/// Fingerprint of the first 64 KiB (decompressed content for .gz): what `replay` stored before
/// positions recorded how many bytes they cover.
fn legacy_fingerprint(path: &str) -> Result<[u8; 16]> {
    Ok(digest(&read_head(path, HEAD_BYTES as u64)?))
}

/// The last consumed line stored as `stored` for `path`, if `path` still starts with the bytes
/// that were read then.
pub fn resume_line(path: &str, stored: &[u8]) -> Result<Option<u64>> {
    if let Some((fp, line, covered)) = decode_position(stored) {
        let head = read_head(path, covered)?;
        return Ok((head.len() as u64 == covered && digest(&head) == fp).then_some(line));
    }
    if stored.len() == 24 {
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&stored[..16]);
        let line = u64::from_be_bytes(stored[16..].try_into().unwrap_or_default());
        return Ok((legacy_fingerprint(path)? == fp).then_some(line));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(data: &[u8], max: usize) -> LineReader {
        LineReader::new(Box::new(std::io::Cursor::new(data.to_vec())), "test", max)
    }

    fn text(number: u64, bytes: &[u8]) -> Option<ReadLine> {
        Some(ReadLine {
            number,
            bytes: bytes.to_vec(),
            fault: None,
        })
    }

    #[test]
    fn follow_holds_back_a_partial_last_line() {
        let data: &[u8] = b"{\"a\":1}\n\n{\"b\":2}\r\n{\"c\"";
        let mut r = reader(data, 1 << 20);
        assert_eq!(r.next(true).unwrap(), text(1, b"{\"a\":1}"));
        assert_eq!(r.next(true).unwrap(), text(3, b"{\"b\":2}"));
        assert_eq!(r.next(true).unwrap(), None);
        assert_eq!(r.partial.kept, b"{\"c\"".to_vec());
        let mut r = reader(data, 1 << 20);
        r.skip_to(3).unwrap();
        assert_eq!(r.next(false).unwrap(), text(4, b"{\"c\""));
        assert_eq!(r.next(false).unwrap(), None);
        assert_eq!(r.head, data.to_vec());
    }

    #[test]
    fn a_line_over_the_limit_is_cut_and_the_next_one_read() {
        let max = 100_000;
        let long = "x".repeat(3 * max);
        let data = format!("{long}\n{{\"ok\":1}}\n{}\r\r\n", "y".repeat(max));
        let mut r = reader(data.as_bytes(), max);
        let cut = r.next(false).unwrap().unwrap();
        assert_eq!(cut.number, 1);
        assert_eq!(cut.bytes, long.as_bytes()[..TOO_LARGE_KEPT_BYTES].to_vec());
        assert_eq!(
            cut.fault,
            Some(SourceFault::TooLarge {
                len: 3 * max as u64
            })
        );
        assert!(r.partial.kept.capacity() <= max.max(TOO_LARGE_KEPT_BYTES) + 1);
        assert_eq!(r.next(false).unwrap(), text(2, b"{\"ok\":1}"));
        // Exactly at the limit once the `\r`s of the line end are dropped.
        assert_eq!(r.next(false).unwrap(), text(3, "y".repeat(max).as_bytes()));
        assert_eq!(r.next(false).unwrap(), None);
    }

    #[test]
    fn blank_lines_of_any_length_are_skipped_and_cuts_stay_utf8() {
        let data = format!("{}\n{}\n", " ".repeat(50), "é".repeat(40_000));
        let mut r = reader(data.as_bytes(), 10);
        let cut = r.next(false).unwrap().unwrap();
        assert_eq!(cut.number, 2);
        assert_eq!(cut.bytes.len(), TOO_LARGE_KEPT_BYTES);
        assert!(std::str::from_utf8(&cut.bytes).is_ok());
        let data = format!("{}\n", "é".repeat(40_000));
        let mut r = reader(format!("a{data}").as_bytes(), 10);
        let cut = r.next(false).unwrap().unwrap();
        assert_eq!(cut.bytes.len(), TOO_LARGE_KEPT_BYTES - 1);
        assert!(std::str::from_utf8(&cut.bytes).is_ok());
    }

    #[test]
    fn a_grown_file_is_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ndjson");
        std::fs::write(&path, "line1\n").unwrap();
        let p = path.to_str().unwrap();
        let stored = encode_position(&digest(b"line1\n"), 1, 6);
        assert_eq!(resume_line(p, &stored).unwrap(), Some(1));
        std::fs::write(&path, "line1\nline2\n").unwrap();
        assert_eq!(resume_line(p, &stored).unwrap(), Some(1));
        std::fs::write(&path, "other\nline2\n").unwrap();
        assert_eq!(resume_line(p, &stored).unwrap(), None);
        std::fs::write(&path, "line").unwrap();
        assert_eq!(resume_line(p, &stored).unwrap(), None);
    }

    #[test]
    fn a_corrupt_gzip_ends_the_input_with_an_unreadable_line() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for i in 0..20_000 {
            writeln!(gz, "{{\"n\":{i}}}").unwrap();
        }
        let bytes = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ndjson.gz");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let p = path.to_str().unwrap();
        let mut r = LineReader::open(p, 1 << 20, StdinMode::Blocking).unwrap();
        let mut last = None;
        while let Some(line) = r.next(false).unwrap() {
            last = Some(line);
        }
        let last = last.unwrap();
        assert!(
            matches!(last.fault, Some(SourceFault::Unreadable { .. })),
            "{last:?}"
        );
        assert!(last.number > 1 && last.number < 20_000);
        assert!(r.failure().is_some());
        assert_eq!(r.line(), last.number);
        // Resuming after it: the same failure, already dead-lettered, stops the reader quietly.
        let stored = r.position().unwrap();
        let mut again = LineReader::open(p, 1 << 20, StdinMode::Blocking).unwrap();
        again.resume(&stored).unwrap();
        assert_eq!(again.line(), last.number);
        assert_eq!(again.next(false).unwrap(), None);
        assert!(again.failure().is_some());
    }
}
