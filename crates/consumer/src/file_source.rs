//! NDJSON input from a file (optionally gzip-compressed, by a `.gz` suffix) or stdin.
//!
//! Lines are numbered from 1; blank lines are skipped but still counted, so dead-letter line
//! numbers match what an editor shows. Positions are stored per input path together with a
//! fingerprint of the file's first bytes, so re-running on the same file continues where the
//! last run stopped, while a different file under the same path starts from its beginning.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};

use sha2::{Digest, Sha256};

use crate::error::{ConsumerError, Result};

/// A line-oriented reader over a path or `-` (stdin).
pub struct LineSource {
    reader: Box<dyn BufRead + Send>,
    pub name: String,
    line: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for LineSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineSource")
            .field("name", &self.name)
            .field("line", &self.line)
            .finish()
    }
}

impl LineSource {
    pub fn open(path: &str) -> Result<LineSource> {
        let reader: Box<dyn BufRead + Send> = if path == "-" {
            Box::new(BufReader::with_capacity(1 << 20, std::io::stdin()))
        } else {
            let file = File::open(path)
                .map_err(|e| ConsumerError::User(format!("cannot open input {path}: {e}")))?;
            if path.ends_with(".gz") {
                Box::new(BufReader::with_capacity(
                    1 << 20,
                    flate2::read::MultiGzDecoder::new(file),
                ))
            } else {
                Box::new(BufReader::with_capacity(1 << 20, file))
            }
        };
        Ok(LineSource {
            reader,
            name: path.to_string(),
            line: 0,
            buf: Vec::new(),
        })
    }

    /// The next non-blank line and its 1-based number, or None at the end.
    pub fn next_line(&mut self) -> Result<Option<(u64, &[u8])>> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| ConsumerError::io(format!("reading {}", self.name), e))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            let mut end = self.buf.len();
            while end > 0 && matches!(self.buf[end - 1], b'\n' | b'\r') {
                end -= 1;
            }
            if self.buf[..end].iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return Ok(Some((self.line, &self.buf[..end])));
        }
    }

    /// Skips lines up to and including line `upto` (resuming after a stored position).
    pub fn skip_to(&mut self, upto: u64) -> Result<()> {
        while self.line < upto {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| ConsumerError::io(format!("reading {}", self.name), e))?;
            if n == 0 {
                break;
            }
            self.line += 1;
        }
        Ok(())
    }

    pub fn line(&self) -> u64 {
        self.line
    }
}

/// Fingerprint of a file's identity: a hash of its first 64 KiB (decompressed content for .gz).
pub fn fingerprint(path: &str) -> Result<Option<[u8; 16]>> {
    if path == "-" {
        return Ok(None);
    }
    let file = File::open(path)
        .map_err(|e| ConsumerError::User(format!("cannot open input {path}: {e}")))?;
    let mut head = Vec::with_capacity(1 << 16);
    let read = if path.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(file)
            .take(1 << 16)
            .read_to_end(&mut head)
    } else {
        file.take(1 << 16).read_to_end(&mut head)
    };
    read.map_err(|e| ConsumerError::io(format!("reading {path}"), e))?;
    let digest = Sha256::digest(&head);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    Ok(Some(out))
}

/// Offsets key of a file input.
pub fn position_key(path: &str) -> Vec<u8> {
    let canonical = std::fs::canonicalize(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string());
    format!("file:{canonical}").into_bytes()
}

/// Offsets value: fingerprint (16 bytes) then the last consumed line (u64 BE).
pub fn encode_position(fp: &[u8; 16], line: u64) -> Vec<u8> {
    let mut v = fp.to_vec();
    v.extend_from_slice(&line.to_be_bytes());
    v
}

pub fn decode_position(v: &[u8]) -> Option<([u8; 16], u64)> {
    if v.len() != 24 {
        return None;
    }
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&v[..16]);
    Some((fp, u64::from_be_bytes(v[16..].try_into().ok()?)))
}
