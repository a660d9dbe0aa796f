//! Errors in a rules file: each names the rule, the line and column, and what to do.

use std::fmt;

/// One problem found in a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub line: usize,
    pub column: usize,
    /// `tag 'spend_30d'`, `segment 'vip'` or `rules file`.
    pub rule: String,
    pub message: String,
}

/// Every problem found in a rules file; nothing of the file is applied when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleErrors {
    pub path: String,
    pub errors: Vec<RuleError>,
}

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.path, e.line, e.column, e.rule, e.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// Maps byte offsets of the TOML source to 1-based line and column (in characters).
pub(crate) struct LineIndex<'a> {
    source: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(source: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { source, starts }
    }

    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self
            .source
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }

    /// Offset of the first character of a string value whose TOML span starts at `span_start`
    /// (skips the opening quote or triple quote and a newline right after a triple quote).
    pub fn string_content_start(&self, span_start: usize) -> usize {
        let rest = self.source.get(span_start..).unwrap_or("");
        if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
            let after = span_start + 3;
            match self.source.get(after..) {
                Some(s) if s.starts_with("\r\n") => after + 2,
                Some(s) if s.starts_with('\n') => after + 1,
                _ => after,
            }
        } else if rest.starts_with('"') || rest.starts_with('\'') {
            span_start + 1
        } else {
            span_start
        }
    }
}
