//! Audience expressions: set algebra over segment bitmaps (`POST /v1/audiences`), and any
//! other condition of the rules language over tags and segments ([`AudienceQuery`]), plus the
//! chunked NDJSON export of a segment or an audience ([`export_ndjson`]).
//!
//! `vip_skincare AND NOT (churn_risk_high OR dormant)` parses into an [`Audience`], which
//! evaluates to the bitmap of matching user ids. Keywords (`AND`, `OR`, `NOT`) are
//! case-insensitive; `NOT` binds tighter than `AND`, which binds tighter than `OR`; both binary
//! operators are left-associative. A bare `NOT` is relative to every user in state.
//!
//! The parser and the set algebra do no IO. Guarantees:
//! - user input never panics and never recurses unboundedly: text is at most
//!   [`MAX_EXPRESSION_BYTES`] and nests (parentheses and `NOT`) at most [`MAX_NESTING`] deep,
//!   both in the text as written and in its canonical form, so `parse(x.to_string()) == x` for
//!   every parsed `x`; chains of one operator are walked iteratively, whatever their length;
//! - every segment name is resolved before any set work, so an unknown name fails fast;
//! - evaluation never materialises a complement it can avoid (`a AND NOT b` is `a - b`,
//!   `NOT a AND NOT b` is `NOT (a OR b)`), so only a final bare `NOT` touches the universe;
//!   within an `AND` chain intersections run smallest first and subtractions last, so the
//!   working set shrinks early; the bitmap the lookup hands over is borrowed or moved, never
//!   cloned again.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use roaring::RoaringBitmap;
use tagstream_rules::rules::{compile_condition, AdhocCondition, RuleSet};

use crate::engine::SharedEngine;
use crate::error::ConsumerError;

/// Longest accepted expression text, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
/// Deepest accepted nesting, counting each `(` and each `NOT` as one level.
pub const MAX_NESTING: usize = 64;

/// A parsed audience expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    Segment(String),
    Not(Box<Audience>),
    And(Box<Audience>, Box<Audience>),
    Or(Box<Audience>, Box<Audience>),
}

/// Why an expression was rejected; the `Display` text is meant for the API's `error` field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AudienceError {
    /// `position` is the 1-based character column the message also names.
    #[error("{message}")]
    Syntax { position: usize, message: String },
    #[error("unknown segment '{0}'")]
    UnknownSegment(String),
    #[error("{0}")]
    TooComplex(String),
}

impl Audience {
    /// Parses `text` (see the module docs for the grammar and limits).
    pub fn parse(text: &str) -> Result<Audience, AudienceError> {
        if text.len() > MAX_EXPRESSION_BYTES {
            return Err(AudienceError::TooComplex(format!(
                "expression is longer than {MAX_EXPRESSION_BYTES} bytes"
            )));
        }
        let (tokens, end) = lex(text);
        let mut parser = Parser {
            tokens,
            end,
            next: 0,
            depth: 0,
        };
        let first = parser.peek();
        if first.kind == Kind::End {
            return Err(syntax(1, "empty expression".to_string()));
        }
        let audience = parser.or()?;
        let rest = parser.peek();
        match rest.kind {
            Kind::End => {}
            Kind::Close => {
                return Err(syntax(
                    rest.column,
                    format!("unbalanced ')' at column {}", rest.column),
                ))
            }
            _ => return Err(rest.unexpected("AND, OR or end of expression")),
        }
        // Display parenthesises an AND operand of OR that the text may have left implicit, so
        // the canonical form can nest deeper than the text; bounding it keeps the round trip total.
        if audience.nesting(false) > MAX_NESTING {
            return Err(too_deep());
        }
        Ok(audience)
    }

    /// Segment names in order of first appearance, deduplicated.
    pub fn segments(&self) -> Vec<&str> {
        let mut names = Vec::new();
        let mut seen = HashSet::new();
        // An explicit stack: hand-built trees may be deeper than anything `parse` accepts.
        let mut pending = vec![self];
        while let Some(node) = pending.pop() {
            match node {
                Audience::Segment(name) => {
                    if seen.insert(name.as_str()) {
                        names.push(name.as_str());
                    }
                }
                Audience::Not(inner) => pending.push(inner),
                Audience::And(left, right) | Audience::Or(left, right) => {
                    pending.push(right);
                    pending.push(left);
                }
            }
        }
        names
    }

    /// Evaluates the expression: `segment` returns the bitmap of a segment (`None` for an
    /// unknown one), `universe` is every user in state, the reference set of `NOT`.
    ///
    /// Every name is looked up once, before any set work. Segment bitmaps are expected to be
    /// subsets of `universe`; members outside it survive only where no complement is taken.
    pub fn evaluate(
        &self,
        segment: &dyn Fn(&str) -> Option<RoaringBitmap>,
        universe: &RoaringBitmap,
    ) -> Result<RoaringBitmap, AudienceError> {
        let mut store = HashMap::new();
        for name in self.segments() {
            let bitmap =
                segment(name).ok_or_else(|| AudienceError::UnknownSegment(name.to_string()))?;
            store.insert(name, bitmap);
        }
        // A bare segment borrows its bitmap from `store`; it is moved out below, not cloned.
        let stored = match self.value(&store)? {
            Value::Pos(Operand::Owned(bitmap)) => return Ok(bitmap),
            Value::Neg(operand) => return Ok(universe - operand.bitmap()),
            Value::Pos(Operand::Stored(name, _)) => name,
        };
        store
            .remove(stored)
            .ok_or_else(|| AudienceError::UnknownSegment(stored.to_string()))
    }

    fn value<'a, 'm>(&'a self, store: &'m Store<'a>) -> Result<Value<'a, 'm>, AudienceError> {
        let (nots, view) = self.view();
        let value = match view {
            View::Segment(name) => {
                let bitmap = store
                    .get(name)
                    .ok_or_else(|| AudienceError::UnknownSegment(name.to_string()))?;
                Value::Pos(Operand::Stored(name, bitmap))
            }
            View::Chain(op, first, rest) => {
                let mut sets = Vec::with_capacity(rest.len() + 1);
                for operand in std::iter::once(first).chain(rest) {
                    sets.push(operand.value(store)?);
                }
                combine(op, sets)
            }
        };
        Ok(if nots % 2 == 1 {
            value.complement()
        } else {
            value
        })
    }

    /// `self` as written canonically: its leading `NOT`s, then a segment or a chain of one
    /// operator. Walking chains and `NOT`s in loops bounds recursion by parenthesis depth.
    fn view(&self) -> (usize, View<'_>) {
        let mut nots = 0;
        let mut node = self;
        let op = loop {
            match node {
                Audience::Not(inner) => {
                    nots += 1;
                    node = inner;
                }
                Audience::Segment(name) => return (nots, View::Segment(name)),
                Audience::And(..) => break Op::And,
                Audience::Or(..) => break Op::Or,
            }
        };
        let mut rest = Vec::new();
        while let (Op::And, Audience::And(left, right)) | (Op::Or, Audience::Or(left, right)) =
            (op, node)
        {
            rest.push(&**right);
            node = left;
        }
        rest.reverse();
        (nots, View::Chain(op, node, rest))
    }

    fn is_binary(&self) -> bool {
        matches!(self, Audience::And(..) | Audience::Or(..))
    }

    /// Nesting of the canonical text of `self` (as [`Parser`] counts it), enclosed in
    /// parentheses if `wrapped`. Mirrors [`Audience::write`].
    fn nesting(&self, wrapped: bool) -> usize {
        let (nots, view) = self.view();
        match view {
            View::Segment(_) => nots,
            View::Chain(_, first, rest) => {
                let inner = std::iter::once(first)
                    .chain(rest)
                    .map(|operand| operand.nesting(operand.is_binary()))
                    .max()
                    .unwrap_or(0);
                nots + usize::from(wrapped || nots > 0) + inner
            }
        }
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, wrapped: bool) -> fmt::Result {
        let (nots, view) = self.view();
        for _ in 0..nots {
            f.write_str("NOT ")?;
        }
        match view {
            View::Segment(name) => f.write_str(name),
            View::Chain(op, first, rest) => {
                let parens = wrapped || nots > 0;
                if parens {
                    f.write_str("(")?;
                }
                first.write(f, first.is_binary())?;
                for operand in rest {
                    f.write_str(match op {
                        Op::And => " AND ",
                        Op::Or => " OR ",
                    })?;
                    operand.write(f, operand.is_binary())?;
                }
                if parens {
                    f.write_str(")")?;
                }
                Ok(())
            }
        }
    }
}

/// Canonical text: keywords upper-case, every operand that is itself an operation of the
/// other operator (or a right operand of the same one) in parentheses, so reading it never
/// depends on precedence. Chains of one operator stay flat: `a AND b AND c`.
impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, false)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    And,
    Or,
}

enum View<'a> {
    Segment(&'a str),
    /// `first op rest[0] op rest[1] …`, left-associative.
    Chain(Op, &'a Audience, Vec<&'a Audience>),
}

// ---- evaluation ----------------------------------------------------------------------------

type Store<'a> = HashMap<&'a str, RoaringBitmap>;

/// A bitmap that is either a segment's, borrowed from the store, or an intermediate result.
enum Operand<'a, 'm> {
    Stored(&'a str, &'m RoaringBitmap),
    Owned(RoaringBitmap),
}

impl Operand<'_, '_> {
    fn bitmap(&self) -> &RoaringBitmap {
        match self {
            Operand::Stored(_, bitmap) => bitmap,
            Operand::Owned(bitmap) => bitmap,
        }
    }
}

/// A set, possibly held as its complement so that `NOT` costs nothing until the end.
enum Value<'a, 'm> {
    Pos(Operand<'a, 'm>),
    /// `universe - operand`.
    Neg(Operand<'a, 'm>),
}

impl Value<'_, '_> {
    fn complement(self) -> Self {
        match self {
            Value::Pos(x) => Value::Neg(x),
            Value::Neg(x) => Value::Pos(x),
        }
    }
}

/// Combines the operands of a chain of one operator. With De Morgan a complement is never
/// materialised, and the chain is reordered so the working set shrinks as early as possible:
/// intersections run smallest first, then the subtractions apply to their (small) result.
fn combine<'a, 'm>(op: Op, sets: Vec<Value<'a, 'm>>) -> Value<'a, 'm> {
    let mut positive = Vec::new();
    let mut negated = Vec::new();
    for set in sets {
        match set {
            Value::Pos(x) => positive.push(x),
            Value::Neg(x) => negated.push(x),
        }
    }
    match op {
        // ∩p ∩ ¬n₁ ∩ ¬n₂ … = ∩p − n₁ − n₂ …, or ¬(∪n) when there is no p
        Op::And if positive.is_empty() => Value::Neg(union_all(negated)),
        Op::And => Value::Pos(subtract_all(intersect_all(positive), negated)),
        // ∪p ∪ ¬n₁ ∪ ¬n₂ … = ¬(∩n − ∪p), or ∪p when there is no n
        Op::Or if negated.is_empty() => Value::Pos(union_all(positive)),
        Op::Or => Value::Neg(subtract_all(intersect_all(negated), positive)),
    }
}

fn intersect_all<'a, 'm>(mut sets: Vec<Operand<'a, 'm>>) -> Operand<'a, 'm> {
    sets.sort_by_cached_key(|set| set.bitmap().len());
    let mut sets = sets.into_iter();
    let mut acc = sets.next().unwrap_or(Operand::Owned(RoaringBitmap::new()));
    for set in sets {
        if acc.bitmap().is_empty() {
            break;
        }
        acc = Operand::Owned(intersect(acc, set));
    }
    acc
}

fn union_all<'a, 'm>(sets: Vec<Operand<'a, 'm>>) -> Operand<'a, 'm> {
    let mut sets = sets.into_iter();
    let mut acc = sets.next().unwrap_or(Operand::Owned(RoaringBitmap::new()));
    for set in sets {
        acc = Operand::Owned(union(acc, set));
    }
    acc
}

fn subtract_all<'a, 'm>(from: Operand<'a, 'm>, sets: Vec<Operand<'a, 'm>>) -> Operand<'a, 'm> {
    let mut acc = from;
    for set in sets {
        if acc.bitmap().is_empty() {
            break;
        }
        acc = Operand::Owned(subtract(acc, set));
    }
    acc
}

// The set operations reuse an owned operand's allocation in place and only allocate a fresh
// result when both sides are borrowed segments.

fn intersect(a: Operand, b: Operand) -> RoaringBitmap {
    match (a, b) {
        (Operand::Owned(mut x), y) | (y, Operand::Owned(mut x)) => {
            x &= y.bitmap();
            x
        }
        (Operand::Stored(_, x), Operand::Stored(_, y)) => x & y,
    }
}

fn union(a: Operand, b: Operand) -> RoaringBitmap {
    match (a, b) {
        (Operand::Owned(x), Operand::Owned(y)) => x | y,
        (Operand::Owned(mut x), y) | (y, Operand::Owned(mut x)) => {
            x |= y.bitmap();
            x
        }
        (Operand::Stored(_, x), Operand::Stored(_, y)) => x | y,
    }
}

fn subtract(a: Operand, b: Operand) -> RoaringBitmap {
    match a {
        Operand::Owned(mut x) => {
            x -= b.bitmap();
            x
        }
        Operand::Stored(_, x) => x - b.bitmap(),
    }
}

// ---- parsing -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'t> {
    Name(&'t str),
    And,
    Or,
    Not,
    Open,
    Close,
    /// A character no token starts with; reported when the parser reaches it, so the
    /// leftmost error wins.
    Invalid(char),
    End,
}

#[derive(Debug, Clone, Copy)]
struct Token<'t> {
    kind: Kind<'t>,
    /// As written, for messages.
    text: &'t str,
    /// 1-based character column.
    column: usize,
}

impl Token<'_> {
    /// The error of finding this token where `expected` was.
    fn unexpected(&self, expected: &str) -> AudienceError {
        let column = self.column;
        let found = match self.kind {
            Kind::Invalid(c) => {
                return syntax(
                    column,
                    format!("unexpected character '{c}' at column {column}"),
                )
            }
            Kind::End => "end of expression".to_string(),
            Kind::Name(name) => format!("segment name '{name}'"),
            _ => format!("'{}'", self.text),
        };
        syntax(
            column,
            format!("expected {expected} at column {column}, found {found}"),
        )
    }
}

fn syntax(position: usize, message: String) -> AudienceError {
    AudienceError::Syntax { position, message }
}

fn too_deep() -> AudienceError {
    AudienceError::TooComplex(format!(
        "expression nests deeper than {MAX_NESTING} levels of parentheses and NOT"
    ))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The tokens of `text`, and the `End` token that follows them.
fn lex(text: &str) -> (Vec<Token<'_>>, Token<'_>) {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().zip(1..).peekable();
    while let Some(((start, c), column)) = chars.next() {
        let (kind, end) = match c {
            _ if c.is_whitespace() => continue,
            '(' => (Kind::Open, start + 1),
            ')' => (Kind::Close, start + 1),
            _ if is_name_char(c) && !c.is_ascii_digit() => {
                let mut end = start + 1;
                // Name characters are ASCII, so each is one byte.
                while let Some(&((i, _), _)) = chars.peek().filter(|((_, c), _)| is_name_char(*c)) {
                    end = i + 1;
                    chars.next();
                }
                let word = &text[start..end];
                let kind = match word.to_ascii_uppercase().as_str() {
                    "AND" => Kind::And,
                    "OR" => Kind::Or,
                    "NOT" => Kind::Not,
                    _ => Kind::Name(word),
                };
                (kind, end)
            }
            _ => (Kind::Invalid(c), start + c.len_utf8()),
        };
        tokens.push(Token {
            kind,
            text: &text[start..end],
            column,
        });
    }
    let end = Token {
        kind: Kind::End,
        text: "",
        column: text.chars().count() + 1,
    };
    (tokens, end)
}

/// Recursive descent; `depth` counts open `(` and `NOT`, so recursion is bounded by
/// [`MAX_NESTING`].
struct Parser<'t> {
    tokens: Vec<Token<'t>>,
    /// Returned by `peek` once `tokens` are consumed.
    end: Token<'t>,
    next: usize,
    depth: usize,
}

impl<'t> Parser<'t> {
    fn peek(&self) -> Token<'t> {
        self.tokens.get(self.next).copied().unwrap_or(self.end)
    }

    fn advance(&mut self) -> Token<'t> {
        let token = self.peek();
        self.next = (self.next + 1).min(self.tokens.len());
        token
    }

    fn eat(&mut self, kind: Kind<'_>) -> bool {
        let hit = self.peek().kind == kind;
        if hit {
            self.advance();
        }
        hit
    }

    fn enter(&mut self) -> Result<(), AudienceError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(too_deep());
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Audience, AudienceError> {
        let mut left = self.and()?;
        while self.eat(Kind::Or) {
            left = Audience::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Audience, AudienceError> {
        let mut left = self.unary()?;
        while self.eat(Kind::And) {
            left = Audience::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Audience, AudienceError> {
        if !self.eat(Kind::Not) {
            return self.primary();
        }
        self.enter()?;
        let inner = self.unary()?;
        self.depth -= 1;
        Ok(Audience::Not(Box::new(inner)))
    }

    fn primary(&mut self) -> Result<Audience, AudienceError> {
        let token = self.advance();
        match token.kind {
            Kind::Name(name) => Ok(Audience::Segment(name.to_string())),
            Kind::Open => {
                self.enter()?;
                let inner = self.or()?;
                let close = self.advance();
                match close.kind {
                    Kind::Close => {}
                    Kind::End => {
                        return Err(syntax(
                            token.column,
                            format!("unclosed '(' at column {}", token.column),
                        ))
                    }
                    _ => return Err(close.unexpected("AND, OR or ')'")),
                }
                self.depth -= 1;
                Ok(inner)
            }
            _ => Err(token.unexpected("a segment name or '('")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn seg(name: &str) -> Audience {
        Audience::Segment(name.to_string())
    }
    fn not(x: Audience) -> Audience {
        Audience::Not(Box::new(x))
    }
    fn and(l: Audience, r: Audience) -> Audience {
        Audience::And(Box::new(l), Box::new(r))
    }
    fn or(l: Audience, r: Audience) -> Audience {
        Audience::Or(Box::new(l), Box::new(r))
    }
    fn parse(text: &str) -> Audience {
        Audience::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }
    fn syntax_error(text: &str) -> (usize, String) {
        match Audience::parse(text) {
            Err(AudienceError::Syntax { position, message }) => (position, message),
            other => panic!("{text:?}: expected a syntax error, got {other:?}"),
        }
    }
    fn bitmap(ids: impl IntoIterator<Item = u32>) -> RoaringBitmap {
        ids.into_iter().collect()
    }

    #[test]
    fn precedence_not_over_and_over_or() {
        assert_eq!(
            parse("a OR b AND NOT c"),
            or(seg("a"), and(seg("b"), not(seg("c"))))
        );
        assert_eq!(parse("NOT a AND b"), and(not(seg("a")), seg("b")));
        assert_eq!(
            parse("a AND b OR c AND d"),
            or(and(seg("a"), seg("b")), and(seg("c"), seg("d")))
        );
        assert_eq!(
            parse("(a OR b) AND c"),
            and(or(seg("a"), seg("b")), seg("c"))
        );
        assert_eq!(parse("NOT (a OR b)"), not(or(seg("a"), seg("b"))));
        assert_eq!(parse("NOT NOT a"), not(not(seg("a"))));
    }

    #[test]
    fn binary_operators_are_left_associative() {
        assert_eq!(
            parse("a AND b AND c"),
            and(and(seg("a"), seg("b")), seg("c"))
        );
        assert_eq!(parse("a OR b OR c"), or(or(seg("a"), seg("b")), seg("c")));
        assert_eq!(
            parse("a AND (b AND c)"),
            and(seg("a"), and(seg("b"), seg("c")))
        );
    }

    #[test]
    fn keywords_are_case_insensitive_and_whitespace_is_free() {
        let expected = parse("vip AND NOT churn OR x_1");
        assert_eq!(parse("vip and not churn or x_1"), expected);
        assert_eq!(parse("vip AnD nOt churn Or x_1"), expected);
        assert_eq!(parse("\tvip\nAND   NOT\r\nchurn  OR x_1 "), expected);
        assert_eq!(parse("(a)AND(b)"), and(seg("a"), seg("b")));
        // Names are case-sensitive and may merely contain a keyword.
        assert_eq!(parse("Vip AND android"), and(seg("Vip"), seg("android")));
        assert_eq!(parse("_x AND not_y"), and(seg("_x"), seg("not_y")));
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (text, canonical) in [
            ("a", "a"),
            ("a or b and not c", "a OR (b AND NOT c)"),
            ("a AND b AND c", "a AND b AND c"),
            ("a AND (b AND c)", "a AND (b AND c)"),
            ("((a OR b)) AND NOT (c OR d)", "(a OR b) AND NOT (c OR d)"),
            ("NOT NOT (a)", "NOT NOT a"),
            ("NOT (a AND b OR c)", "NOT ((a AND b) OR c)"),
        ] {
            let parsed = parse(text);
            assert_eq!(parsed.to_string(), canonical, "{text:?}");
            assert_eq!(parse(canonical), parsed, "{canonical:?}");
        }
    }

    #[test]
    fn segments_in_order_of_first_appearance() {
        let audience = parse("b AND (a OR b) AND NOT c OR a");
        assert_eq!(audience.segments(), ["b", "a", "c"]);
    }

    #[test]
    fn syntax_errors_name_the_column_and_what_was_found() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 1, "empty expression"),
            ("  \t ", 1, "empty expression"),
            ("a AND NOT b)", 12, "unbalanced ')' at column 12"),
            (
                "vip AND NOT )",
                13,
                "expected a segment name or '(' at column 13, found ')'",
            ),
            (
                "a AND",
                6,
                "expected a segment name or '(' at column 6, found end of expression",
            ),
            (
                "and AND b",
                1,
                "expected a segment name or '(' at column 1, found 'and'",
            ),
            (
                "a OR ()",
                7,
                "expected a segment name or '(' at column 7, found ')'",
            ),
            ("x AND (a OR b", 7, "unclosed '(' at column 7"),
            (
                "(a b)",
                4,
                "expected AND, OR or ')' at column 4, found segment name 'b'",
            ),
            (
                "a b",
                3,
                "expected AND, OR or end of expression at column 3, found segment name 'b'",
            ),
            (
                "a NOT b",
                3,
                "expected AND, OR or end of expression at column 3, found 'NOT'",
            ),
            ("a AND b#", 8, "unexpected character '#' at column 8"),
            ("a AND 1b", 7, "unexpected character '1' at column 7"),
            // Columns count characters, not bytes.
            ("é AND a", 1, "unexpected character 'é' at column 1"),
            ("a OR é", 6, "unexpected character 'é' at column 6"),
            ("café OR -", 4, "unexpected character 'é' at column 4"),
            ("(é) OR -", 2, "unexpected character 'é' at column 2"),
        ];
        for &(text, position, message) in cases {
            assert_eq!(
                syntax_error(text),
                (position, message.to_string()),
                "{text:?}"
            );
        }
        // The leftmost error wins, whether a bad character or a misplaced token.
        assert_eq!(
            syntax_error("a b #"),
            (
                3,
                "expected AND, OR or end of expression at column 3, found segment name 'b'"
                    .to_string()
            )
        );
        assert_eq!(
            syntax_error("a AND # )"),
            (7, "unexpected character '#' at column 7".to_string())
        );
        // The error text is the message, ready for the API's `error` field.
        let err = Audience::parse("a b").unwrap_err();
        assert!(err.to_string().starts_with("expected AND, OR"));
    }

    #[test]
    fn length_limit() {
        let pad = |len: usize| format!("a{}", " ".repeat(len - 1));
        assert_eq!(parse(&pad(MAX_EXPRESSION_BYTES)), seg("a"));
        assert_eq!(
            Audience::parse(&pad(MAX_EXPRESSION_BYTES + 1)),
            Err(AudienceError::TooComplex(
                "expression is longer than 4096 bytes".to_string()
            ))
        );
    }

    #[test]
    fn nesting_limit_counts_parentheses_and_not() {
        let too_deep = Err(AudienceError::TooComplex(
            "expression nests deeper than 64 levels of parentheses and NOT".to_string(),
        ));
        let parens = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(parse(&parens(64)), seg("a"));
        assert_eq!(Audience::parse(&parens(65)), too_deep);
        // Unclosed and deeper than the limit: the limit is reported, before the recursion.
        assert_eq!(Audience::parse(&"(".repeat(4000)), too_deep);

        let nots = |n: usize| format!("{}a", "NOT ".repeat(n));
        assert!(Audience::parse(&nots(64)).is_ok());
        assert_eq!(Audience::parse(&nots(65)), too_deep);
        assert_eq!(Audience::parse(&"NOT(".repeat(1000)), too_deep);

        // 40 levels as written, but 80 in canonical form, where each implicit AND group under
        // OR is parenthesised: rejected, so that every accepted expression re-parses.
        let mut text = "a".to_string();
        for _ in 0..40 {
            text = format!("x OR y AND ({text})");
        }
        assert_eq!(Audience::parse(&text), too_deep);
    }

    #[test]
    fn long_chains_are_not_limited_by_nesting() {
        let terms: Vec<String> = (0..500).map(|i| format!("s{i}")).collect();
        let text = terms.join(" OR ");
        assert!(text.len() <= MAX_EXPRESSION_BYTES);
        let audience = parse(&text);
        assert_eq!(audience.to_string(), text);
        assert_eq!(audience.segments().len(), 500);
        let universe = bitmap(0..1000);
        let got = audience
            .evaluate(
                &|name: &str| name[1..].parse().ok().map(|i: u32| bitmap([i])),
                &universe,
            )
            .unwrap();
        assert_eq!(got, bitmap(0..500));
    }

    #[test]
    fn evaluates_the_spec_example() {
        let universe = bitmap(0..10);
        let vip = bitmap([1, 2, 3, 4]);
        let churn = bitmap([3, 4, 5]);
        let lookup = |name: &str| match name {
            "vip_skincare" => Some(vip.clone()),
            "churn_risk_high" => Some(churn.clone()),
            _ => None,
        };
        let eval = |text: &str| parse(text).evaluate(&lookup, &universe).unwrap();
        assert_eq!(eval("vip_skincare AND NOT churn_risk_high"), bitmap([1, 2]));
        assert_eq!(eval("NOT churn_risk_high"), bitmap([0, 1, 2, 6, 7, 8, 9]));
        assert_eq!(
            eval("NOT vip_skincare OR churn_risk_high"),
            bitmap([0, 3, 4, 5, 6, 7, 8, 9])
        );
        assert_eq!(eval("vip_skincare"), vip);
        assert_eq!(eval("NOT NOT vip_skincare"), vip);
        assert_eq!(eval("NOT (vip_skincare OR NOT vip_skincare)"), bitmap([]));
    }

    #[test]
    fn unknown_segment_is_reported_before_any_set_work() {
        let universe = bitmap(0..10);
        let lookups = std::cell::RefCell::new(Vec::new());
        let lookup = |name: &str| {
            lookups.borrow_mut().push(name.to_string());
            (name == "a").then(|| bitmap([1]))
        };
        let audience = parse("a AND a AND zz OR NOT yy");
        assert_eq!(
            audience.evaluate(&lookup, &universe),
            Err(AudienceError::UnknownSegment("zz".to_string()))
        );
        // Each name once, stopping at the first unknown one.
        assert_eq!(*lookups.borrow(), ["a", "zz"]);
        assert_eq!(
            AudienceError::UnknownSegment("zz".to_string()).to_string(),
            "unknown segment 'zz'"
        );
    }

    fn ast(leaf: BoxedStrategy<String>) -> impl Strategy<Value = Audience> {
        leaf.prop_map(Audience::Segment)
            .prop_recursive(6, 48, 2, |inner| {
                prop_oneof![
                    inner.clone().prop_map(not),
                    (inner.clone(), inner.clone()).prop_map(|(l, r)| and(l, r)),
                    (inner.clone(), inner).prop_map(|(l, r)| or(l, r)),
                ]
            })
    }

    fn name() -> BoxedStrategy<String> {
        "[A-Za-z_][A-Za-z0-9_]{0,6}"
            .prop_filter("keywords are not names", |s| {
                !["and", "or", "not"].contains(&s.to_ascii_lowercase().as_str())
            })
            .boxed()
    }

    fn naive(
        audience: &Audience,
        sets: &[BTreeSet<u32>; 4],
        universe: &BTreeSet<u32>,
    ) -> BTreeSet<u32> {
        match audience {
            Audience::Segment(name) => sets[usize::from(name.as_bytes()[0] - b'a')].clone(),
            Audience::Not(x) => universe
                .difference(&naive(x, sets, universe))
                .copied()
                .collect(),
            Audience::And(l, r) => naive(l, sets, universe)
                .intersection(&naive(r, sets, universe))
                .copied()
                .collect(),
            Audience::Or(l, r) => naive(l, sets, universe)
                .union(&naive(r, sets, universe))
                .copied()
                .collect(),
        }
    }

    fn token_soup() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("a"),
            Just("b_1"),
            Just("AND"),
            Just("or"),
            Just("Not"),
            Just("("),
            Just(")"),
            Just(" "),
            Just(" "),
            Just("\t"),
            Just("#"),
            Just("é"),
            Just("9"),
        ];
        proptest::collection::vec(token, 0..300).prop_map(|tokens| tokens.concat())
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(audience in ast(name())) {
            let text = audience.to_string();
            prop_assert_eq!(Audience::parse(&text), Ok(audience), "{}", text);
        }

        #[test]
        fn evaluate_matches_naive_set_algebra(
            universe in proptest::collection::btree_set(0u32..200, 0..150),
            raw in proptest::array::uniform4(proptest::collection::btree_set(0u32..200, 0..120)),
            audience in ast(prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")]
                .prop_map(str::to_string)
                .boxed()),
        ) {
            // Segments are subsets of the users in state.
            let sets = raw.map(|s| s.intersection(&universe).copied().collect::<BTreeSet<u32>>());
            let lookup = |name: &str| {
                let i = usize::from(name.as_bytes()[0] - b'a');
                Some(sets[i].iter().copied().collect::<RoaringBitmap>())
            };
            let got = audience.evaluate(&lookup, &universe.iter().copied().collect()).unwrap();
            let want = naive(&audience, &sets, &universe);
            prop_assert_eq!(got.iter().collect::<Vec<_>>(), want.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn parse_never_panics_on_arbitrary_text(text in "\\PC{0,200}|.{0,50}") {
            let _ = Audience::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_token_soup(text in token_soup()) {
            // Whatever parses also evaluates and survives its own round trip.
            if let Ok(audience) = Audience::parse(&text) {
                let canonical = audience.to_string();
                prop_assert_eq!(Audience::parse(&canonical), Ok(audience.clone()), "{}", canonical);
                let universe = bitmap(0..8);
                prop_assert!(audience.evaluate(&|_| Some(bitmap([1, 2])), &universe).is_ok());
            }
        }
    }
}

// ---- queries over the engine ---------------------------------------------------------------

/// Ad-hoc conditions are evaluated for this many candidate users per hold of the engine
/// lock (the lock is held only to read their states).
pub const CONDITION_CHUNK: usize = 4096;

/// Users per chunk of an export (each chunk is one hold of the engine lock).
pub const EXPORT_CHUNK: usize = 4096;

/// An audience expression resolved against the rules in force.
#[derive(Debug, Clone)]
pub enum AudienceQuery {
    /// Pure set algebra over segment names: evaluated on the segment bitmaps.
    Segments(Audience),
    /// Any other condition of the rules language (over tags and segments), evaluated per user
    /// at the engine time of the user's partition, as a segment would be.
    Condition {
        condition: Arc<AdhocCondition>,
        rules: Arc<RuleSet>,
    },
}

/// Why an audience query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The expression is not valid against the rules in force; `column` is 1-based.
    #[error("invalid expression: {message}")]
    Invalid {
        column: Option<usize>,
        message: String,
    },
    /// The rules changed while the query ran (a reload): ask again.
    #[error("the rules in force changed while the audience was computed; ask again")]
    RulesChanged,
    #[error(transparent)]
    Engine(#[from] ConsumerError),
}

impl From<AudienceError> for QueryError {
    fn from(e: AudienceError) -> QueryError {
        let column = match &e {
            AudienceError::Syntax { position, .. } => Some(*position),
            _ => None,
        };
        QueryError::Invalid {
            column,
            message: e.to_string(),
        }
    }
}

impl AudienceQuery {
    /// Resolves `text`: set algebra over segment names when it is exactly that (every name a
    /// segment of `rules`), else a condition compiled by the rules compiler against `rules`
    /// (`source` is the text `rules` was compiled from). Errors carry the column.
    pub fn resolve(
        text: &str,
        rules: &Arc<RuleSet>,
        source: &str,
    ) -> Result<AudienceQuery, QueryError> {
        if let Ok(audience) = Audience::parse(text) {
            if audience
                .segments()
                .iter()
                .all(|name| rules.segment_by_name(name).is_some())
            {
                return Ok(AudienceQuery::Segments(audience));
            }
        }
        let condition =
            compile_condition(rules, source, text).map_err(|e| QueryError::Invalid {
                column: Some(e.column),
                message: e.message,
            })?;
        Ok(AudienceQuery::Condition {
            condition: Arc::new(condition),
            rules: rules.clone(),
        })
    }

    /// Resolves `text` against the rules in force of `engine`.
    pub fn resolve_in(engine: &SharedEngine, text: &str) -> Result<AudienceQuery, QueryError> {
        let (rules, source) = {
            let engine = engine.lock();
            (engine.rules().clone(), engine.rules_source()?)
        };
        AudienceQuery::resolve(text, &rules, &source)
    }

    /// Every matching user of the owned partitions, as internal ids. Set algebra takes one
    /// hold of the engine lock; a condition holds it only to read each chunk of candidates'
    /// states (the candidates are the members of its top-level segment conjuncts, or every
    /// user), and evaluates outside it.
    pub fn members(&self, engine: &SharedEngine) -> Result<RoaringBitmap, QueryError> {
        match self {
            AudienceQuery::Segments(audience) => {
                let engine = engine.lock();
                Ok(audience.evaluate(&|name| engine.segment_bitmap(name), &engine.all_users())?)
            }
            AudienceQuery::Condition { condition, rules } => {
                let required: Vec<&str> = condition
                    .required_segment_names(rules)
                    .into_iter()
                    .map(|n| &**n)
                    .collect();
                let candidates = {
                    let engine = engine.lock();
                    if engine.rules().fingerprint != rules.fingerprint {
                        return Err(QueryError::RulesChanged);
                    }
                    engine.candidates(&required)
                };
                let mut matched = RoaringBitmap::new();
                let mut ids = candidates.iter().peekable();
                while ids.peek().is_some() {
                    let chunk: Vec<u32> = ids.by_ref().take(CONDITION_CHUNK).collect();
                    let states = {
                        let engine = engine.lock();
                        if engine.rules().fingerprint != rules.fingerprint {
                            return Err(QueryError::RulesChanged);
                        }
                        engine.states_of(&chunk)?
                    };
                    for (id, state, now) in states {
                        if condition.matches(rules, &state, now) {
                            matched.insert(id);
                        }
                    }
                }
                Ok(matched)
            }
        }
    }
}

/// What an export streams, in internal-id order (the order of the paged listings).
#[derive(Debug, Clone)]
pub enum ExportSet {
    /// A segment's members, read from its bitmaps again at each chunk (as pages are).
    Segment(String),
    /// A set computed up front (an audience).
    Fixed(RoaringBitmap),
}

/// The order an export follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportOrder {
    /// Internal user ids: the order of this instance's paged listings.
    Id,
    /// (partition, internal id), each line also carrying `"key":[partition,id]`: the order in
    /// which the answers of several instances are merged (`api.peers`).
    Keyed,
}

/// Streams every member of `set` as NDJSON (`{"user_id":"u42"}` per line), `chunk` users at a
/// time: each chunk takes the engine lock once, is encoded, and handed to `send`; nothing
/// else is kept, so memory is bounded by one chunk plus what `send` buffers. `send` returns
/// false to stop (the reader went away). Returns the number of users sent.
pub fn export_ndjson(
    engine: &SharedEngine,
    set: &ExportSet,
    order: ExportOrder,
    chunk: usize,
    send: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<u64, ConsumerError> {
    let chunk = chunk.max(1);
    let mut after: Option<(u32, u32)> = None;
    let mut sent = 0u64;
    loop {
        let (members, next) = {
            let engine = engine.lock();
            let owned;
            let bitmap = match set {
                ExportSet::Segment(name) => {
                    owned = engine.segment_bitmap(name).ok_or_else(|| {
                        ConsumerError::User(format!(
                            "segment {name:?} was removed by a rules reload during the export"
                        ))
                    })?;
                    &owned
                }
                ExportSet::Fixed(bitmap) => bitmap,
            };
            match order {
                ExportOrder::Id => {
                    let page = engine.page(bitmap, after.map(|a| a.1), chunk)?;
                    let next = page.next.map(|id| (0, id));
                    let members: Vec<(Option<(u32, u32)>, String)> =
                        page.members.into_iter().map(|m| (None, m)).collect();
                    (members, next)
                }
                ExportOrder::Keyed => {
                    let page = engine.page_by_partition(bitmap, after, chunk)?;
                    let next = page
                        .members
                        .last()
                        .filter(|_| page.more)
                        .map(|(p, id, _)| (*p, *id));
                    let members = page
                        .members
                        .into_iter()
                        .map(|(p, id, m)| (Some((p, id)), m))
                        .collect();
                    (members, next)
                }
            }
        };
        let mut bytes = Vec::with_capacity(members.len() * 24);
        for (key, user) in &members {
            bytes.extend_from_slice(b"{\"user_id\":");
            serde_json::to_writer(&mut bytes, user).expect("a string serialises");
            if let Some((p, id)) = key {
                bytes.extend_from_slice(format!(",\"key\":[{p},{id}]").as_bytes());
            }
            bytes.extend_from_slice(b"}\n");
        }
        sent += members.len() as u64;
        if !bytes.is_empty() && !send(bytes) {
            return Ok(sent);
        }
        match next {
            Some(key) => after = Some(key),
            None => return Ok(sent),
        }
    }
}
