//! Tokenizer for the expression language (SPEC §4 "Expressions").
//!
//! The whole expression is tokenized up front by [`tokenize`]; the token list always ends with
//! one [`TokenKind::Eof`] token whose span is the empty range at the end of the source.
//!
//! Lexical rules:
//! * Whitespace (any Unicode white space) separates tokens and is otherwise ignored.
//! * Numbers: `12`, `12.5`, `.5`, `1e3`, `1.5E-3`. A dot must be followed by a digit (`12.` is an
//!   error). Numbers that do not fit an `f64` (`1e999`) are errors. There are no negative
//!   literals: `-5` is unary minus applied to `5` (the parser does this).
//! * Durations: a whole number immediately followed by one of the units `s`, `m`, `h`, `d`, `w`
//!   (lower case), e.g. `90s 15m 12h 7d 2w`; the value is in milliseconds (`2w` = 14 days).
//!   A number directly followed by any other letters, digits or `_` (`7x`, `7dd`, `1.5h`, `7D`)
//!   is an error that explains what durations look like. Durations that overflow `i64`
//!   milliseconds are errors.
//! * Strings: single quotes, `''` inside a string is one quote: `'it''s'`. No other escapes.
//! * Identifiers: `[A-Za-z_][A-Za-z0-9_]*`, case preserved. The words `AND OR NOT IN BETWEEN IS
//!   NULL TRUE FALSE` are keywords in any letter case and cannot be used as identifiers.
//! * Properties: `properties.<key>` is lexed as a single token (no white space inside). The
//!   `properties` prefix is case-sensitive, lower case. The key is either
//!   - one identifier or several identifiers joined by dots: `properties.a.b` has key `"a.b"`;
//!     keywords are fine here (`properties.in` has key `"in"`), or
//!   - a single-quoted string, for keys that are not identifiers: `properties.'$os'`,
//!     `properties.'odd key'`, `properties.'it''s'`; the whole string is the key (dots included)
//!     and it must not be empty.
//!
//!   A dot anywhere else (`Properties.x`, `event.x`, `properties.a.`) is an error.
//! * Operators and punctuation: `( ) , + - * / % = <> != < <= > >=`.
//!   Anything else is an error that names the character.

use super::ast::{ParseError, Span};

/// A reserved word (matched case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keyword {
    And,
    Or,
    Not,
    In,
    Between,
    Is,
    Null,
    True,
    False,
}

impl Keyword {
    fn from_word(word: &str) -> Option<Keyword> {
        const WORDS: [(&str, Keyword); 9] = [
            ("AND", Keyword::And),
            ("OR", Keyword::Or),
            ("NOT", Keyword::Not),
            ("IN", Keyword::In),
            ("BETWEEN", Keyword::Between),
            ("IS", Keyword::Is),
            ("NULL", Keyword::Null),
            ("TRUE", Keyword::True),
            ("FALSE", Keyword::False),
        ];
        WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map(|&(_, k)| k)
    }

    /// Whether `word` is a keyword (in any letter case).
    #[cfg(test)]
    pub(super) fn is_keyword(word: &str) -> bool {
        Keyword::from_word(word).is_some()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum TokenKind {
    Number(f64),
    /// Milliseconds.
    Duration(i64),
    String(String),
    Ident(String),
    /// `properties.<key>`: the key.
    Property(String),
    Keyword(Keyword),
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    /// `<>` or `!=`
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub kind: TokenKind,
    pub span: Span,
}

/// 1-based character column of byte offset `byte` in `source`.
pub(super) fn column(source: &str, byte: usize) -> usize {
    let byte = byte.min(source.len());
    source.char_indices().take_while(|&(i, _)| i < byte).count() + 1
}

/// Milliseconds per duration unit.
fn unit_millis(unit: &str) -> Option<i64> {
    match unit {
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        "w" => Some(604_800_000),
        _ => None,
    }
}

const DURATION_HELP: &str =
    "a duration is a whole number directly followed by one of the units s, m, h, d, w \
     (e.g. 90s, 15m, 12h, 7d, 2w)";

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn error(message: impl Into<String>, start: usize, end: usize) -> ParseError {
    ParseError {
        message: message.into(),
        span: Span { start, end },
    }
}

/// Splits `source` into tokens, ending with [`TokenKind::Eof`].
pub(super) fn tokenize(source: &str) -> Result<Vec<Token>, ParseError> {
    Lexer {
        src: source,
        bytes: source.as_bytes(),
        pos: 0,
    }
    .run()
}

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn at(&self, i: usize) -> Option<u8> {
        self.bytes.get(i).copied()
    }

    fn run(mut self) -> Result<Vec<Token>, ParseError> {
        let mut tokens = Vec::new();
        while let Some(b) = self.at(self.pos) {
            let start = self.pos;
            if !b.is_ascii() {
                // Decode the (multi-byte) character; `pos` is always on a char boundary.
                let c = self
                    .src
                    .get(start..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or('\u{FFFD}');
                let end = start + c.len_utf8();
                if c.is_whitespace() {
                    self.pos = end;
                    continue;
                }
                return Err(error(format!("unexpected character '{c}'"), start, end));
            }
            if b.is_ascii_whitespace() {
                self.pos += 1;
                continue;
            }
            let next = self.at(start + 1);
            let (kind, len) = match b {
                b'(' => (TokenKind::LParen, 1),
                b')' => (TokenKind::RParen, 1),
                b',' => (TokenKind::Comma, 1),
                b'+' => (TokenKind::Plus, 1),
                b'-' => (TokenKind::Minus, 1),
                b'*' => (TokenKind::Star, 1),
                b'/' => (TokenKind::Slash, 1),
                b'%' => (TokenKind::Percent, 1),
                b'=' if next == Some(b'=') => {
                    return Err(error("unexpected '==': use '=' to compare values", start, start + 2))
                }
                b'=' => (TokenKind::Eq, 1),
                b'<' if next == Some(b'=') => (TokenKind::LtEq, 2),
                b'<' if next == Some(b'>') => (TokenKind::NotEq, 2),
                b'<' => (TokenKind::Lt, 1),
                b'>' if next == Some(b'=') => (TokenKind::GtEq, 2),
                b'>' => (TokenKind::Gt, 1),
                b'!' if next == Some(b'=') => (TokenKind::NotEq, 2),
                b'!' => {
                    return Err(error(
                        "unexpected character '!': use NOT for negation, or '!=' / '<>' for 'not equal'",
                        start,
                        start + 1,
                    ))
                }
                b'"' => {
                    return Err(error(
                        "unexpected character '\"': strings are written in single quotes, like 'this'",
                        start,
                        start + 1,
                    ))
                }
                b'\'' => {
                    let (s, end) = self.string(start)?;
                    self.pos = end;
                    tokens.push(Token { kind: TokenKind::String(s), span: Span { start, end } });
                    continue;
                }
                b'0'..=b'9' => {
                    let (kind, end) = self.number(start)?;
                    self.pos = end;
                    tokens.push(Token { kind, span: Span { start, end } });
                    continue;
                }
                b'.' if next.is_some_and(|n| n.is_ascii_digit()) => {
                    let (kind, end) = self.number(start)?;
                    self.pos = end;
                    tokens.push(Token { kind, span: Span { start, end } });
                    continue;
                }
                b'.' => {
                    return Err(error(
                        "unexpected '.': a dot may only appear in a number (1.5) or in \
                         properties.<name> (lower-case 'properties')",
                        start,
                        start + 1,
                    ))
                }
                b if is_ident_start(b) => {
                    let (kind, end) = self.word(start)?;
                    self.pos = end;
                    tokens.push(Token { kind, span: Span { start, end } });
                    continue;
                }
                _ => {
                    let c = b as char;
                    let shown: String = c.escape_debug().collect();
                    return Err(error(format!("unexpected character '{shown}'"), start, start + 1));
                }
            };
            self.pos = start + len;
            tokens.push(Token {
                kind,
                span: Span {
                    start,
                    end: start + len,
                },
            });
        }
        let end = self.src.len();
        tokens.push(Token {
            kind: TokenKind::Eof,
            span: Span { start: end, end },
        });
        Ok(tokens)
    }

    /// A single-quoted string starting at `start` (which holds the quote). Returns the unescaped
    /// text and the byte offset just past the closing quote.
    fn string(&self, start: usize) -> Result<(String, usize), ParseError> {
        let mut out = String::new();
        let mut seg = start + 1;
        let mut i = start + 1;
        loop {
            match self.at(i) {
                None => {
                    return Err(error(
                        format!(
                            "unterminated string starting at column {}: add the closing quote ' \
                             (write '' for a quote inside a string)",
                            column(self.src, start)
                        ),
                        start,
                        self.src.len(),
                    ))
                }
                Some(b'\'') => {
                    out.push_str(self.src.get(seg..i).unwrap_or(""));
                    if self.at(i + 1) == Some(b'\'') {
                        out.push('\'');
                        i += 2;
                        seg = i;
                    } else {
                        return Ok((out, i + 1));
                    }
                }
                Some(_) => i += 1,
            }
        }
    }

    /// A number or duration starting at `start` (a digit, or a dot followed by a digit).
    fn number(&self, start: usize) -> Result<(TokenKind, usize), ParseError> {
        let digits = |mut i: usize| {
            while self.at(i).is_some_and(|b| b.is_ascii_digit()) {
                i += 1;
            }
            i
        };
        let mut end = digits(start);
        let mut whole = true;
        if self.at(end) == Some(b'.') {
            if !self.at(end + 1).is_some_and(|b| b.is_ascii_digit()) {
                let text = self.src.get(start..end + 1).unwrap_or("");
                return Err(error(
                    format!(
                        "expected a digit after the '.' in number '{text}' (write e.g. 12 or 12.5)"
                    ),
                    start,
                    end + 1,
                ));
            }
            end = digits(end + 1);
            whole = false;
        }
        if matches!(self.at(end), Some(b'e' | b'E')) {
            let exp_digits = match self.at(end + 1) {
                Some(b'+' | b'-') => end + 2,
                _ => end + 1,
            };
            if self.at(exp_digits).is_some_and(|b| b.is_ascii_digit()) {
                end = digits(exp_digits);
                whole = false;
            }
        }
        let number_text = self.src.get(start..end).unwrap_or("");
        if self.at(end).is_some_and(is_ident_continue) {
            let mut suffix_end = end;
            while self.at(suffix_end).is_some_and(is_ident_continue) {
                suffix_end += 1;
            }
            let suffix = self.src.get(end..suffix_end).unwrap_or("");
            let text = self.src.get(start..suffix_end).unwrap_or("");
            let Some(unit) = unit_millis(suffix) else {
                return Err(error(
                    format!("invalid number or duration '{text}': {DURATION_HELP}"),
                    start,
                    suffix_end,
                ));
            };
            if !whole {
                return Err(error(
                    format!(
                        "invalid duration '{text}': {DURATION_HELP}; for a fraction use a smaller \
                         unit (90m, not 1.5h)"
                    ),
                    start,
                    suffix_end,
                ));
            }
            let millis = number_text
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(unit));
            return match millis {
                Some(ms) => Ok((TokenKind::Duration(ms), suffix_end)),
                None => Err(error(
                    format!("duration '{text}' is too large (at most about 292 million years)"),
                    start,
                    suffix_end,
                )),
            };
        }
        match number_text.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok((TokenKind::Number(n), end)),
            _ => Err(error(
                format!("number '{number_text}' is out of range"),
                start,
                end,
            )),
        }
    }

    /// An identifier, a keyword, or a `properties.<key>` token starting at `start`.
    fn word(&self, start: usize) -> Result<(TokenKind, usize), ParseError> {
        let ident_end = |mut i: usize| {
            while self.at(i).is_some_and(is_ident_continue) {
                i += 1;
            }
            i
        };
        let end = ident_end(start);
        let word = self.src.get(start..end).unwrap_or("");
        if word == "properties" && self.at(end) == Some(b'.') {
            return self.property(start, end + 1);
        }
        let kind = match Keyword::from_word(word) {
            Some(k) => TokenKind::Keyword(k),
            None => TokenKind::Ident(word.to_string()),
        };
        Ok((kind, end))
    }

    /// The key of `properties.<key>`; `key_start` is just past the dot.
    fn property(&self, start: usize, key_start: usize) -> Result<(TokenKind, usize), ParseError> {
        const HELP: &str = "a property is written properties.name, properties.a.b, or \
                            properties.'any name' for names that are not identifiers";
        match self.at(key_start) {
            Some(b'\'') => {
                let (key, end) = self.string(key_start)?;
                if key.is_empty() {
                    return Err(error(format!("empty property name: {HELP}"), start, end));
                }
                Ok((TokenKind::Property(key), end))
            }
            Some(b) if is_ident_start(b) => {
                let mut end = key_start;
                loop {
                    while self.at(end).is_some_and(is_ident_continue) {
                        end += 1;
                    }
                    if self.at(end) != Some(b'.') {
                        break;
                    }
                    if !self.at(end + 1).is_some_and(is_ident_start) {
                        let text = self.src.get(start..end + 1).unwrap_or("");
                        return Err(error(
                            format!("expected a name after the '.' in '{text}': {HELP}"),
                            start,
                            end + 1,
                        ));
                    }
                    end += 1;
                }
                let key = self.src.get(key_start..end).unwrap_or("").to_string();
                Ok((TokenKind::Property(key), end))
            }
            _ => Err(error(
                format!("expected a property name after 'properties.': {HELP}"),
                start,
                key_start,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<TokenKind> {
        let mut v: Vec<TokenKind> = tokenize(src).unwrap().into_iter().map(|t| t.kind).collect();
        assert_eq!(v.pop(), Some(TokenKind::Eof));
        v
    }

    fn err(src: &str) -> ParseError {
        tokenize(src).expect_err(src)
    }

    #[test]
    fn empty_input_is_just_eof() {
        let t = tokenize("  \n\t ").unwrap();
        assert_eq!(
            t,
            vec![Token {
                kind: TokenKind::Eof,
                span: Span { start: 5, end: 5 }
            }]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(
            kinds("12 12.5 .5 1e3 1E3 2.5e-3 1e+2 0 007"),
            vec![
                TokenKind::Number(12.0),
                TokenKind::Number(12.5),
                TokenKind::Number(0.5),
                TokenKind::Number(1000.0),
                TokenKind::Number(1000.0),
                TokenKind::Number(0.0025),
                TokenKind::Number(100.0),
                TokenKind::Number(0.0),
                TokenKind::Number(7.0),
            ]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            kinds("90s 15m 12h 7d 2w 0s"),
            vec![
                TokenKind::Duration(90_000),
                TokenKind::Duration(900_000),
                TokenKind::Duration(43_200_000),
                TokenKind::Duration(604_800_000),
                TokenKind::Duration(14 * 86_400_000),
                TokenKind::Duration(0),
            ]
        );
        // The largest representable whole number of seconds.
        let max_s = i64::MAX / 1000;
        assert_eq!(
            kinds(&format!("{max_s}s")),
            vec![TokenKind::Duration(max_s * 1000)]
        );
    }

    #[test]
    fn bad_durations() {
        for src in ["7x", "7dd", "7D", "7ms", "1e", "7_d", "2w3", "1e3s"] {
            let e = err(src);
            assert!(e.message.contains("s, m, h, d, w"), "{src}: {}", e.message);
            assert_eq!(
                e.span,
                Span {
                    start: 0,
                    end: src.len()
                },
                "{src}"
            );
        }
        let e = err("1.5h");
        assert!(
            e.message.contains("s, m, h, d, w") && e.message.contains("(90m, not 1.5h)"),
            "{}",
            e.message
        );
        let e = err("x > 99999999999999999999d");
        assert!(e.message.contains("too large"), "{}", e.message);
        assert_eq!(e.span, Span { start: 4, end: 25 });
        let e = err(&format!("{}s", i64::MAX / 1000 + 1));
        assert!(e.message.contains("too large"), "{}", e.message);
    }

    #[test]
    fn bad_numbers() {
        let e = err("12.");
        assert!(
            e.message.contains("expected a digit after the '.'"),
            "{}",
            e.message
        );
        let e = err("1e999");
        assert!(e.message.contains("out of range"), "{}", e.message);
    }

    #[test]
    fn strings() {
        assert_eq!(
            kinds("'a' '' 'it''s' '''' 'é ü'"),
            vec![
                TokenKind::String("a".into()),
                TokenKind::String("".into()),
                TokenKind::String("it's".into()),
                TokenKind::String("'".into()),
                TokenKind::String("é ü".into()),
            ]
        );
        let e = err("x = 'abc");
        assert!(
            e.message
                .starts_with("unterminated string starting at column 5"),
            "{}",
            e.message
        );
        assert_eq!(e.span, Span { start: 4, end: 8 });
        assert!(err("'it''").message.starts_with("unterminated string"));
    }

    #[test]
    fn identifiers_and_keywords() {
        assert_eq!(
            kinds("spend_30d _x Event and Or nOt in BETWEEN is null True FALSE"),
            vec![
                TokenKind::Ident("spend_30d".into()),
                TokenKind::Ident("_x".into()),
                TokenKind::Ident("Event".into()),
                TokenKind::Keyword(Keyword::And),
                TokenKind::Keyword(Keyword::Or),
                TokenKind::Keyword(Keyword::Not),
                TokenKind::Keyword(Keyword::In),
                TokenKind::Keyword(Keyword::Between),
                TokenKind::Keyword(Keyword::Is),
                TokenKind::Keyword(Keyword::Null),
                TokenKind::Keyword(Keyword::True),
                TokenKind::Keyword(Keyword::False),
            ]
        );
        assert!(Keyword::is_keyword("between") && !Keyword::is_keyword("event"));
    }

    #[test]
    fn properties() {
        assert_eq!(
            kinds("properties.amount properties.a.b_2.c properties.'odd key' properties.'it''s.x' properties.in"),
            vec![
                TokenKind::Property("amount".into()),
                TokenKind::Property("a.b_2.c".into()),
                TokenKind::Property("odd key".into()),
                TokenKind::Property("it's.x".into()),
                TokenKind::Property("in".into()),
            ]
        );
        // `properties` on its own is an ordinary identifier.
        assert_eq!(
            kinds("properties"),
            vec![TokenKind::Ident("properties".into())]
        );
        let t = tokenize("x+properties.a.b").unwrap();
        assert_eq!(t[2].span, Span { start: 2, end: 16 });
    }

    #[test]
    fn bad_properties() {
        for src in [
            "properties.",
            "properties. x",
            "properties.1",
            "properties.a.",
            "properties.a.1",
            "properties.''",
        ] {
            let e = err(src);
            assert!(
                e.message.contains("properties.'any name'"),
                "{src}: {}",
                e.message
            );
        }
        for src in ["Properties.x", "event.x", "properties .x"] {
            let e = err(src);
            assert!(
                e.message.starts_with("unexpected '.'"),
                "{src}: {}",
                e.message
            );
        }
        assert!(err("properties.'abc")
            .message
            .starts_with("unterminated string"));
    }

    #[test]
    fn operators() {
        use TokenKind::*;
        assert_eq!(
            kinds("( ) , + - * / % = <> != < <= > >="),
            vec![
                LParen, RParen, Comma, Plus, Minus, Star, Slash, Percent, Eq, NotEq, NotEq, Lt,
                LtEq, Gt, GtEq
            ]
        );
        assert_eq!(
            kinds("a<=-1"),
            vec![Ident("a".into()), LtEq, Minus, Number(1.0)]
        );
        assert_eq!(kinds("--1"), vec![Minus, Minus, Number(1.0)]);
    }

    #[test]
    fn unknown_characters() {
        let e = err("a # b");
        assert_eq!(e.message, "unexpected character '#'");
        assert_eq!(e.span, Span { start: 2, end: 3 });
        let e = err("a = é");
        assert_eq!(e.message, "unexpected character 'é'");
        assert_eq!(e.span, Span { start: 4, end: 6 });
        assert_eq!(err("\u{0}").message, "unexpected character '\\0'");
        assert!(err("a == b").message.contains("use '='"));
        assert!(err("!a").message.contains("use NOT"));
        assert!(err("\"a\"").message.contains("single quotes"));
        // Unicode white space is fine.
        assert_eq!(
            kinds("a\u{3000}b"),
            vec![TokenKind::Ident("a".into()), TokenKind::Ident("b".into())]
        );
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(column("abc", 0), 1);
        assert_eq!(column("abc", 3), 4);
        assert_eq!(column("é = (", 5), 5);
        assert_eq!(column("ab", 99), 3);
    }
}
