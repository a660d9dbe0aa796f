//! Parser for the expression language (SPEC §4 "Expressions"): a hand-written
//! precedence-climbing (Pratt) parser over the tokens of [`super::lexer`].
//!
//! Grammar, loosest to tightest binding:
//!
//! | level | operators | associativity |
//! |---|---|---|
//! | 1 | `OR` | left |
//! | 2 | `AND` | left |
//! | 3 | `NOT` (prefix) | — |
//! | 4 | `= <> != < <= > >=`, `[NOT] IN (e, ...)`, `[NOT] BETWEEN a AND b`, `IS [NOT] NULL` | none |
//! | 5 | `+ -` | left |
//! | 6 | `* / %` | left |
//! | 7 | `-` (prefix) | — |
//! | 8 | literal, identifier, `properties.<key>`, call `name(args...)`, `( expr )` | |
//!
//! Details:
//! * Comparisons do not associate: `a < b < c`, `a = b = c`, `a IS NULL IS NULL` are errors
//!   (parenthesise, or join with AND).
//! * Operands of comparisons and both bounds of `BETWEEN` are parsed at level 5 (so the `AND`
//!   after `BETWEEN low` belongs to the `BETWEEN`); `IN` list items and call arguments are full
//!   expressions. An `IN` list has at least one item; no trailing commas anywhere.
//! * `NOT` is only accepted where a level-3 expression may start (at the start, after `AND`,
//!   `OR`, `NOT`, `(` or `,`); `a = NOT b` is an error that asks for `a = (NOT b)`.
//! * `-` followed by a literal is unary minus applied to it (`-7d` is `Neg(Duration)`), never a
//!   negative literal.
//! * An identifier followed by `(` (white space allowed between them) is a call; the name is
//!   lower-cased. Keywords cannot be identifiers or function names.
//! * Spans are byte ranges of the node's source text. A parenthesised expression has no node of
//!   its own; its node's span is widened to include the parentheses, so the span of every node is
//!   a well-formed expression that parses to the same node.
//! * Depth limit: the depth of a position is the number of parentheses and of operator, call and
//!   `IN`/`BETWEEN`/`IS` nodes that enclose it; no leaf may be deeper than [`MAX_DEPTH`]. So 256
//!   nested parentheses, 256 `NOT`s or a chain of 256 `OR`s are fine and one more is an error.
//!   Every recursive step of the parser increases the depth, so parsing uses bounded stack, and
//!   the returned tree has height at most [`MAX_DEPTH`]: later passes may walk it recursively.

use super::ast::{BinaryOp, Expr, ExprKind, ParseError, Span, UnaryOp};
use super::lexer::{column, tokenize, Keyword, Token, TokenKind};

/// `?` without the `Try` machinery: in unoptimised builds `?` leaves several temporaries in
/// each frame, and the parser's recursive functions should keep small frames (same trick as
/// serde_json's `tri!`).
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(value) => value,
            Err(error) => return Err(error),
        }
    };
}

/// The deepest nesting accepted (see the module documentation).
pub const MAX_DEPTH: usize = 256;

// Binding levels, loosest to tightest.
const OR: u8 = 1;
const AND: u8 = 2;
const NOT: u8 = 3;
const CMP: u8 = 4;
const ADD: u8 = 5;
const MUL: u8 = 6;
const UNARY: u8 = 7;

/// Parses one expression.
pub fn parse(source: &str) -> Result<Expr, ParseError> {
    let tokens = tokenize(source)?;
    let mut parser = Parser {
        src: source,
        tokens,
        pos: 0,
        depth: 0,
    };
    if parser.peek().kind == TokenKind::Eof {
        return Err(parser.err_empty());
    }
    let node = parser.expr(OR)?;
    if parser.peek().kind != TokenKind::Eof {
        return Err(parser.err_trailing());
    }
    Ok(node.expr)
}

/// A parsed node and the height of its tree (a leaf is 0).
struct Node {
    expr: Expr,
    height: usize,
}

struct Parser<'a> {
    src: &'a str,
    /// Never empty: ends with `Eof`.
    tokens: Vec<Token>,
    pos: usize,
    /// Parentheses and nodes under construction that enclose the current position.
    depth: usize,
}

/// What an unclosed `(` was opening.
#[derive(Clone, Copy)]
enum Group<'n> {
    Paren,
    Call(&'n str),
    InList,
}

fn infix_level(kind: &TokenKind) -> Option<u8> {
    use TokenKind as T;
    match kind {
        T::Keyword(Keyword::Or) => Some(OR),
        T::Keyword(Keyword::And) => Some(AND),
        T::Eq | T::NotEq | T::Lt | T::LtEq | T::Gt | T::GtEq => Some(CMP),
        T::Keyword(Keyword::In | Keyword::Between | Keyword::Is | Keyword::Not) => Some(CMP),
        T::Plus | T::Minus => Some(ADD),
        T::Star | T::Slash | T::Percent => Some(MUL),
        _ => None,
    }
}

fn binary_op(kind: &TokenKind) -> Option<BinaryOp> {
    use TokenKind as T;
    Some(match kind {
        T::Keyword(Keyword::Or) => BinaryOp::Or,
        T::Keyword(Keyword::And) => BinaryOp::And,
        T::Eq => BinaryOp::Eq,
        T::NotEq => BinaryOp::NotEq,
        T::Lt => BinaryOp::Lt,
        T::LtEq => BinaryOp::LtEq,
        T::Gt => BinaryOp::Gt,
        T::GtEq => BinaryOp::GtEq,
        T::Plus => BinaryOp::Add,
        T::Minus => BinaryOp::Sub,
        T::Star => BinaryOp::Mul,
        T::Slash => BinaryOp::Div,
        T::Percent => BinaryOp::Mod,
        _ => return None,
    })
}

fn join(a: Span, b: Span) -> Span {
    Span {
        start: a.start,
        end: b.end,
    }
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn peek_span(&self) -> Span {
        self.peek().span
    }

    /// Moves past the current token (never past `Eof`).
    fn bump(&mut self) {
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
    }

    /// Moves past the current token if it is `kind`; returns its span.
    fn eat(&mut self, kind: &TokenKind) -> Option<Span> {
        let token = self.peek();
        if token.kind == *kind {
            let span = token.span;
            self.bump();
            Some(span)
        } else {
            None
        }
    }

    /// Opens one level of nesting at `at` (a parenthesis or an operator whose operand follows).
    fn enter(&mut self, at: Span) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_too_deep(at));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Builds a node whose highest child has height `child_height`; `at` is the operator's span,
    /// where a too-deep error is reported.
    fn node(
        &self,
        kind: ExprKind,
        span: Span,
        child_height: usize,
        at: Span,
    ) -> Result<Node, ParseError> {
        let height = child_height + 1;
        if self.depth + height > MAX_DEPTH {
            return Err(self.err_too_deep(at));
        }
        Ok(Node {
            expr: Expr { kind, span },
            height,
        })
    }

    /// Parses an expression whose operators all bind at least as tightly as `min`.
    fn expr(&mut self, min: u8) -> Result<Node, ParseError> {
        let mut lhs = tri!(self.prefix(min));
        // The operator of the comparison `lhs` is, when this loop built one.
        let mut comparison: Option<Span> = None;
        loop {
            let token = self.peek();
            let at = token.span;
            let level = match infix_level(&token.kind) {
                Some(level) if level >= min => level,
                _ => return Ok(lhs),
            };
            let next = if level == CMP {
                if let Some(previous) = comparison {
                    return Err(self.err_chained(previous));
                }
                comparison = Some(at);
                self.comparison(lhs)
            } else {
                comparison = None;
                self.binary(lhs, level + 1)
            };
            lhs = tri!(next);
        }
    }

    /// A binary operator (the current token) applied to `lhs`; its right operand binds at
    /// `right_level`.
    fn binary(&mut self, lhs: Node, right_level: u8) -> Result<Node, ParseError> {
        let token = self.peek();
        let at = token.span;
        let Some(op) = binary_op(&token.kind) else {
            return Err(self.err_not_an_operator());
        };
        self.bump();
        tri!(self.enter(at));
        let rhs = tri!(self.expr(right_level));
        self.leave();
        let span = join(lhs.expr.span, rhs.expr.span);
        let height = lhs.height.max(rhs.height);
        let kind = ExprKind::Binary {
            op,
            left: Box::new(lhs.expr),
            right: Box::new(rhs.expr),
        };
        self.node(kind, span, height, at)
    }

    /// A comparison-level operator (the current token) applied to `lhs`.
    fn comparison(&mut self, lhs: Node) -> Result<Node, ParseError> {
        let token = self.peek();
        let at = token.span;
        let negated = match token.kind {
            TokenKind::Keyword(Keyword::Is) => {
                self.bump();
                return self.is_null(lhs, at);
            }
            TokenKind::Keyword(Keyword::Not) => {
                self.bump();
                true
            }
            TokenKind::Keyword(Keyword::In | Keyword::Between) => false,
            _ => return self.binary(lhs, ADD),
        };
        if self.eat(&TokenKind::Keyword(Keyword::In)).is_some() {
            self.in_list(lhs, negated, at)
        } else if self.eat(&TokenKind::Keyword(Keyword::Between)).is_some() {
            self.between(lhs, negated, at)
        } else {
            Err(self.err_after_infix_not())
        }
    }

    /// `lhs [NOT] IN ( e, ... )`, after `IN`; `at` is the span of `IN` (or of `NOT`).
    fn in_list(&mut self, lhs: Node, negated: bool, at: Span) -> Result<Node, ParseError> {
        let Some(open) = self.eat(&TokenKind::LParen) else {
            return Err(self.err_in_needs_paren());
        };
        if self.peek().kind == TokenKind::RParen {
            return Err(self.err_empty_in_list());
        }
        tri!(self.enter(open));
        let (list, height, close) = tri!(self.list(open, Group::InList));
        self.leave();
        let span = join(lhs.expr.span, close);
        let height = height.max(lhs.height);
        self.node(
            ExprKind::In {
                expr: Box::new(lhs.expr),
                list,
                negated,
            },
            span,
            height,
            at,
        )
    }

    /// Comma-separated expressions up to and including the closing `)`, after `(` (at `open`).
    /// Returns the items, their greatest height and the span of the `)`.
    fn list(
        &mut self,
        open: Span,
        group: Group<'_>,
    ) -> Result<(Vec<Expr>, usize, Span), ParseError> {
        let mut items = Vec::new();
        let mut height = 0;
        loop {
            let item = tri!(self.expr(OR));
            height = height.max(item.height);
            items.push(item.expr);
            if self.eat(&TokenKind::Comma).is_some() {
                continue;
            }
            match self.eat(&TokenKind::RParen) {
                Some(close) => return Ok((items, height, close)),
                None => return Err(self.err_unclosed(open, group)),
            }
        }
    }

    /// `lhs [NOT] BETWEEN low AND high`, after `BETWEEN`.
    fn between(&mut self, lhs: Node, negated: bool, at: Span) -> Result<Node, ParseError> {
        tri!(self.enter(at));
        let low = tri!(self.expr(ADD));
        if self.eat(&TokenKind::Keyword(Keyword::And)).is_none() {
            return Err(self.err_between_needs_and(at));
        }
        let high = tri!(self.expr(ADD));
        self.leave();
        let span = join(lhs.expr.span, high.expr.span);
        let height = lhs.height.max(low.height).max(high.height);
        let kind = ExprKind::Between {
            expr: Box::new(lhs.expr),
            low: Box::new(low.expr),
            high: Box::new(high.expr),
            negated,
        };
        self.node(kind, span, height, at)
    }

    /// `lhs IS [NOT] NULL`, after `IS`.
    fn is_null(&mut self, lhs: Node, at: Span) -> Result<Node, ParseError> {
        let negated = self.eat(&TokenKind::Keyword(Keyword::Not)).is_some();
        let Some(null) = self.eat(&TokenKind::Keyword(Keyword::Null)) else {
            return Err(self.err_is_needs_null(negated));
        };
        let span = join(lhs.expr.span, null);
        self.node(
            ExprKind::IsNull {
                expr: Box::new(lhs.expr),
                negated,
            },
            span,
            lhs.height,
            at,
        )
    }

    /// A prefix operator or a primary expression.
    fn prefix(&mut self, min: u8) -> Result<Node, ParseError> {
        use TokenKind as T;
        let span = self.peek_span();
        let leaf = |kind: ExprKind| {
            Ok(Node {
                expr: Expr { kind, span },
                height: 0,
            })
        };
        let kind = match &self.peek().kind {
            T::Number(n) => ExprKind::Number(*n),
            T::Duration(ms) => ExprKind::Duration(*ms),
            T::String(s) => ExprKind::String(s.clone()),
            T::Property(key) => ExprKind::Property(key.clone()),
            T::Keyword(Keyword::True) => ExprKind::Bool(true),
            T::Keyword(Keyword::False) => ExprKind::Bool(false),
            T::Keyword(Keyword::Null) => ExprKind::Null,
            T::Ident(name) => ExprKind::Ident(name.clone()),
            T::LParen => {
                self.bump();
                return self.parenthesised(span);
            }
            T::Minus => {
                self.bump();
                return self.unary(UnaryOp::Neg, UNARY, span);
            }
            T::Keyword(Keyword::Not) if min <= NOT => {
                self.bump();
                return self.unary(UnaryOp::Not, NOT, span);
            }
            _ => return Err(self.err_not_a_value(min)),
        };
        self.bump();
        if let ExprKind::Ident(name) = &kind {
            if self.peek().kind == T::LParen {
                return self.call(name, span);
            }
        }
        leaf(kind)
    }

    /// `( expr )`, after the `(` at `open`.
    fn parenthesised(&mut self, open: Span) -> Result<Node, ParseError> {
        tri!(self.enter(open));
        let mut inner = tri!(self.expr(OR));
        let Some(close) = self.eat(&TokenKind::RParen) else {
            return Err(self.err_unclosed(open, Group::Paren));
        };
        self.leave();
        inner.expr.span = join(open, close);
        Ok(inner)
    }

    /// A prefix operator at `at`, after it; its operand binds at `level`.
    fn unary(&mut self, op: UnaryOp, level: u8, at: Span) -> Result<Node, ParseError> {
        tri!(self.enter(at));
        let operand = tri!(self.expr(level));
        self.leave();
        let span = join(at, operand.expr.span);
        self.node(
            ExprKind::Unary {
                op,
                expr: Box::new(operand.expr),
            },
            span,
            operand.height,
            at,
        )
    }

    /// `name ( args... )`; the current token is the `(`.
    fn call(&mut self, name: &str, name_span: Span) -> Result<Node, ParseError> {
        let open = self.peek_span();
        self.bump();
        tri!(self.enter(open));
        let (args, height, close) = match self.eat(&TokenKind::RParen) {
            Some(close) => (Vec::new(), 0, close),
            None => tri!(self.list(open, Group::Call(name))),
        };
        self.leave();
        let kind = ExprKind::Call {
            name: name.to_ascii_lowercase(),
            args,
        };
        self.node(kind, join(name_span, close), height, name_span)
    }

    // ------------------------------------------------------------------------------------------
    // Error messages. Kept out of line so that the recursive functions above have small frames.

    fn col(&self, span: Span) -> usize {
        column(self.src, span.start)
    }

    /// The source text of a span, shortened when long.
    fn text(&self, span: Span) -> String {
        let text = self.src.get(span.start..span.end).unwrap_or("");
        if text.chars().count() > 40 {
            let short: String = text.chars().take(37).collect();
            format!("{short}...")
        } else {
            text.to_string()
        }
    }

    /// How a token is named in messages: `'AND'`, `number 12`, `end of expression`, ...
    fn describe(&self, token: &Token) -> String {
        let text = self.text(token.span);
        match token.kind {
            TokenKind::Eof => "end of expression".into(),
            TokenKind::String(_) => format!("string {text}"),
            TokenKind::Number(_) => format!("number {text}"),
            TokenKind::Duration(_) => format!("duration {text}"),
            _ => format!("'{text}'"),
        }
    }

    /// An error about the current token.
    fn at_current(&self, message: String) -> ParseError {
        ParseError {
            message,
            span: self.peek_span(),
        }
    }

    /// The current token, described.
    fn found(&self) -> String {
        self.describe(self.peek())
    }

    /// The token before the current one, described.
    fn previous(&self) -> String {
        match self.pos.checked_sub(1).and_then(|i| self.tokens.get(i)) {
            Some(token) => self.describe(token),
            None => "the start".into(),
        }
    }

    #[cold]
    #[inline(never)]
    fn err_empty(&self) -> ParseError {
        self.at_current(
            "empty expression: expected a value or a condition, e.g. spend_30d > 100".into(),
        )
    }

    #[cold]
    #[inline(never)]
    fn err_trailing(&self) -> ParseError {
        if self.peek().kind == TokenKind::RParen {
            return self.at_current("unexpected ')': it has no matching '('".into());
        }
        self.at_current(format!(
            "unexpected {} after a complete expression: an operator such as AND, OR, = or + is \
             missing before it",
            self.found()
        ))
    }

    #[cold]
    #[inline(never)]
    fn err_too_deep(&self, span: Span) -> ParseError {
        let message = format!(
            "expression is nested too deeply (more than {MAX_DEPTH} levels); split it into several \
             tags, or use IN (...) instead of long OR chains"
        );
        ParseError { message, span }
    }

    /// The current token cannot start an operand.
    #[cold]
    #[inline(never)]
    fn err_not_a_value(&self, min: u8) -> ParseError {
        use TokenKind as T;
        let found = self.found();
        let message = match self.peek().kind {
            T::Keyword(Keyword::Not) if min > NOT => format!(
                "unexpected {found} after {}: put the negation in parentheses, e.g. a = (NOT b)",
                self.previous()
            ),
            T::Keyword(Keyword::And | Keyword::Or) => {
                format!("unexpected {found}: a comparison or value is missing before it")
            }
            T::RParen | T::Comma | T::Eof if self.pos == 0 => {
                format!("expected an expression, found {found}")
            }
            T::RParen | T::Comma | T::Eof => {
                format!("expected a value after {}, found {found}", self.previous())
            }
            _ => format!("unexpected {found}: a value is missing before it"),
        };
        self.at_current(message)
    }

    /// Unreachable: `binary` is only called at a binary operator.
    #[cold]
    #[inline(never)]
    fn err_not_an_operator(&self) -> ParseError {
        self.at_current(format!("unexpected {}", self.found()))
    }

    /// A second comparison at the current token; the first one's operator is at `previous`.
    #[cold]
    #[inline(never)]
    fn err_chained(&self, previous: Span) -> ParseError {
        self.at_current(format!(
            "unexpected {}: comparisons cannot be chained (another one is at column {}); join them \
             with AND, e.g. a < b AND b < c",
            self.found(),
            self.col(previous)
        ))
    }

    #[cold]
    #[inline(never)]
    fn err_after_infix_not(&self) -> ParseError {
        self.at_current(format!(
            "expected IN or BETWEEN after 'NOT' (x NOT IN (...), x NOT BETWEEN a AND b), found {}",
            self.found()
        ))
    }

    #[cold]
    #[inline(never)]
    fn err_in_needs_paren(&self) -> ParseError {
        self.at_current(format!(
            "expected '(' after IN, as in x IN ('a', 'b'), found {}",
            self.found()
        ))
    }

    #[cold]
    #[inline(never)]
    fn err_empty_in_list(&self) -> ParseError {
        self.at_current(
            "expected a value in the IN list, found ')': the list cannot be empty".into(),
        )
    }

    /// The current token should have been `,` or the `)` closing the `(` at `open`.
    #[cold]
    #[inline(never)]
    fn err_unclosed(&self, open: Span, group: Group<'_>) -> ParseError {
        let column = self.col(open);
        let found = self.found();
        self.at_current(match group {
            Group::Paren => format!("expected ')' to close '(' opened at column {column}, found {found}"),
            Group::Call(name) => format!(
                "expected ',' or ')' to close the arguments of '{name}(' opened at column {column}, \
                 found {found}"
            ),
            Group::InList => {
                format!("expected ',' or ')' to close the IN list opened at column {column}, found {found}")
            }
        })
    }

    #[cold]
    #[inline(never)]
    fn err_between_needs_and(&self, between: Span) -> ParseError {
        self.at_current(format!(
            "expected AND to complete 'BETWEEN low AND high' (BETWEEN at column {}), found {}",
            self.col(between),
            self.found()
        ))
    }

    #[cold]
    #[inline(never)]
    fn err_is_needs_null(&self, negated: bool) -> ParseError {
        let expected = if negated {
            "NULL after 'IS NOT'"
        } else {
            "NULL or NOT NULL after 'IS'"
        };
        self.at_current(format!("expected {expected}, found {}", self.found()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---------------------------------------------------------------- helpers

    /// Compact S-expression of a tree (spans ignored), for precedence tests.
    fn sx(e: &Expr) -> String {
        let list = |items: &[Expr]| items.iter().map(sx).collect::<Vec<_>>().join(" ");
        match &e.kind {
            ExprKind::Null => "null".into(),
            ExprKind::Bool(b) => b.to_string(),
            ExprKind::Number(n) => format!("{n}"),
            ExprKind::Duration(ms) => format!("{ms}ms"),
            ExprKind::String(s) => format!("'{s}'"),
            ExprKind::Ident(name) => name.clone(),
            ExprKind::Property(key) => format!("prop[{key}]"),
            ExprKind::Call { name, args } => format!(
                "{name}({})",
                args.iter().map(sx).collect::<Vec<_>>().join(", ")
            ),
            ExprKind::Unary {
                op: UnaryOp::Neg,
                expr,
            } => format!("(neg {})", sx(expr)),
            ExprKind::Unary {
                op: UnaryOp::Not,
                expr,
            } => format!("(not {})", sx(expr)),
            ExprKind::Binary { op, left, right } => format!(
                "({} {} {})",
                op_text(*op).to_lowercase(),
                sx(left),
                sx(right)
            ),
            ExprKind::In {
                expr,
                list: items,
                negated,
            } => {
                format!(
                    "({} {} {})",
                    if *negated { "not-in" } else { "in" },
                    sx(expr),
                    list(items)
                )
            }
            ExprKind::Between {
                expr,
                low,
                high,
                negated,
            } => format!(
                "({} {} {} {})",
                if *negated { "not-between" } else { "between" },
                sx(expr),
                sx(low),
                sx(high)
            ),
            ExprKind::IsNull { expr, negated } => {
                format!(
                    "({} {})",
                    if *negated { "is-not-null" } else { "is-null" },
                    sx(expr)
                )
            }
        }
    }

    fn op_text(op: BinaryOp) -> &'static str {
        match op {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
            BinaryOp::Eq => "=",
            BinaryOp::NotEq => "<>",
            BinaryOp::Lt => "<",
            BinaryOp::LtEq => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::GtEq => ">=",
            BinaryOp::And => "AND",
            BinaryOp::Or => "OR",
        }
    }

    fn p(src: &str) -> String {
        match parse(src) {
            Ok(e) => sx(&e),
            Err(e) => panic!("{src:?} failed: {e:?}"),
        }
    }

    fn err(src: &str) -> ParseError {
        match parse(src) {
            Ok(e) => panic!("{src:?} parsed as {}", sx(&e)),
            Err(e) => e,
        }
    }

    /// Asserts the error message and the offending source text.
    fn check_err(src: &str, message: &str, offending: &str) {
        let e = err(src);
        assert_eq!(e.message, message, "{src:?}");
        assert_eq!(&src[e.span.start..e.span.end], offending, "{src:?}: {e:?}");
    }

    /// The tree with every span reset.
    fn strip(e: &Expr) -> Expr {
        let b = |e: &Expr| Box::new(strip(e));
        let kind = match &e.kind {
            ExprKind::Call { name, args } => ExprKind::Call {
                name: name.clone(),
                args: args.iter().map(strip).collect(),
            },
            ExprKind::Unary { op, expr } => ExprKind::Unary {
                op: *op,
                expr: b(expr),
            },
            ExprKind::Binary { op, left, right } => ExprKind::Binary {
                op: *op,
                left: b(left),
                right: b(right),
            },
            ExprKind::In {
                expr,
                list,
                negated,
            } => ExprKind::In {
                expr: b(expr),
                list: list.iter().map(strip).collect(),
                negated: *negated,
            },
            ExprKind::Between {
                expr,
                low,
                high,
                negated,
            } => ExprKind::Between {
                expr: b(expr),
                low: b(low),
                high: b(high),
                negated: *negated,
            },
            ExprKind::IsNull { expr, negated } => ExprKind::IsNull {
                expr: b(expr),
                negated: *negated,
            },
            leaf => leaf.clone(),
        };
        Expr {
            kind,
            span: Span::default(),
        }
    }

    fn children(e: &Expr) -> Vec<&Expr> {
        match &e.kind {
            ExprKind::Call { args, .. } => args.iter().collect(),
            ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => vec![expr],
            ExprKind::Binary { left, right, .. } => vec![left, right],
            ExprKind::In { expr, list, .. } => std::iter::once(&**expr).chain(list).collect(),
            ExprKind::Between {
                expr, low, high, ..
            } => vec![expr, low, high],
            _ => vec![],
        }
    }

    fn span_text<'s>(src: &'s str, e: &Expr) -> &'s str {
        &src[e.span.start..e.span.end]
    }

    // ---------------------------------------------------------------- precedence

    #[test]
    fn boolean_precedence() {
        assert_eq!(p("a OR b AND c"), "(or a (and b c))");
        assert_eq!(p("a AND b OR c"), "(or (and a b) c)");
        assert_eq!(p("a OR b OR c"), "(or (or a b) c)");
        assert_eq!(p("a AND b AND c"), "(and (and a b) c)");
        assert_eq!(p("NOT a = b"), "(not (= a b))");
        assert_eq!(p("NOT a AND b"), "(and (not a) b)");
        assert_eq!(p("a AND NOT b OR c"), "(or (and a (not b)) c)");
        assert_eq!(p("NOT NOT a"), "(not (not a))");
        assert_eq!(p("NOT (a OR b)"), "(not (or a b))");
        assert_eq!(p("(a OR b) AND c"), "(and (or a b) c)");
        assert_eq!(
            p("spend_tier = 'high' AND fav_category_30d = 'skincare' AND lifecycle <> 'churned'"),
            "(and (and (= spend_tier 'high') (= fav_category_30d 'skincare')) (<> lifecycle 'churned'))"
        );
    }

    #[test]
    fn arithmetic_precedence() {
        assert_eq!(p("1 + 2 * 3"), "(+ 1 (* 2 3))");
        assert_eq!(p("(1 + 2) * 3"), "(* (+ 1 2) 3)");
        assert_eq!(p("-x * y"), "(* (neg x) y)");
        assert_eq!(p("a - b - c"), "(- (- a b) c)");
        assert_eq!(p("a - (b - c)"), "(- a (- b c))");
        assert_eq!(p("a / b % c * d"), "(* (% (/ a b) c) d)");
        assert_eq!(p("a + b * c - d / e"), "(- (+ a (* b c)) (/ d e))");
        assert_eq!(p("- - x"), "(neg (neg x))");
        assert_eq!(p("--x"), "(neg (neg x))");
        assert_eq!(p("a - -b"), "(- a (neg b))");
        assert_eq!(p("a * -b"), "(* a (neg b))");
        assert_eq!(p("-(a + b)"), "(neg (+ a b))");
        assert_eq!(p("-7d"), "(neg 604800000ms)");
        assert_eq!(p("-5"), "(neg 5)");
    }

    #[test]
    fn comparison_precedence() {
        assert_eq!(p("a + b = c * d"), "(= (+ a b) (* c d))");
        assert_eq!(
            p("a = b AND c <> d OR e != f"),
            "(or (and (= a b) (<> c d)) (<> e f))"
        );
        assert_eq!(p("a < b"), "(< a b)");
        assert_eq!(p("a <= b"), "(<= a b)");
        assert_eq!(p("a > b"), "(> a b)");
        assert_eq!(p("a >= b"), "(>= a b)");
        assert_eq!(
            p("first_seen > now() - 7d"),
            "(> first_seen (- now() 604800000ms))"
        );
        assert_eq!(p("(a < b) = c"), "(= (< a b) c)");
        assert_eq!(p("a = (b = c)"), "(= a (= b c))");
    }

    // ---------------------------------------------------------------- IN / BETWEEN / IS

    #[test]
    fn in_lists() {
        assert_eq!(p("x IN (1)"), "(in x 1)");
        assert_eq!(p("x IN ('a', 'b' , c + 1)"), "(in x 'a' 'b' (+ c 1))");
        assert_eq!(p("x NOT IN (1, 2)"), "(not-in x 1 2)");
        assert_eq!(p("a + b IN (1, 2)"), "(in (+ a b) 1 2)");
        assert_eq!(p("NOT a IN (1)"), "(not (in a 1))");
        assert_eq!(p("x IN (a OR b, NOT c)"), "(in x (or a b) (not c))");
        assert_eq!(
            p("x IN (1) AND y NOT IN (2)"),
            "(and (in x 1) (not-in y 2))"
        );
        let long = format!("x IN ({})", vec!["1"; 10_000].join(", "));
        assert!(
            matches!(parse(&long).unwrap().kind, ExprKind::In { ref list, .. } if list.len() == 10_000)
        );
    }

    #[test]
    fn between() {
        assert_eq!(p("x BETWEEN 1 AND 2"), "(between x 1 2)");
        assert_eq!(p("x NOT BETWEEN 1 AND 2"), "(not-between x 1 2)");
        assert_eq!(
            p("x BETWEEN 1 + 1 AND 2 * 3 AND y"),
            "(and (between x (+ 1 1) (* 2 3)) y)"
        );
        assert_eq!(
            p("x NOT BETWEEN a AND b OR c"),
            "(or (not-between x a b) c)"
        );
        assert_eq!(p("x BETWEEN (a AND b) AND c"), "(between x (and a b) c)");
        assert_eq!(p("NOT x BETWEEN 1 AND 2"), "(not (between x 1 2))");
        assert_eq!(p("x - 1 BETWEEN -1 AND 1"), "(between (- x 1) (neg 1) 1)");
    }

    #[test]
    fn is_null() {
        assert_eq!(p("a IS NULL"), "(is-null a)");
        assert_eq!(p("a IS NOT NULL"), "(is-not-null a)");
        assert_eq!(
            p("a IS NULL AND b IS NOT NULL"),
            "(and (is-null a) (is-not-null b))"
        );
        assert_eq!(p("x - 1 IS NULL"), "(is-null (- x 1))");
        assert_eq!(p("NOT x IS NULL"), "(not (is-null x))");
        assert_eq!(p("(a IS NULL) = TRUE"), "(= (is-null a) true)");
    }

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(p("a and b Or not c"), "(or (and a b) (not c))");
        assert_eq!(
            p("x not in (1) AND y In (2)"),
            "(and (not-in x 1) (in y 2))"
        );
        assert_eq!(p("x Between 1 aNd 2"), "(between x 1 2)");
        assert_eq!(p("x nOt BeTwEeN 1 AND 2"), "(not-between x 1 2)");
        assert_eq!(
            p("x is not null OR y iS nUlL"),
            "(or (is-not-null x) (is-null y))"
        );
        assert_eq!(p("true AND False OR nULL"), "(or (and true false) null)");
    }

    // ---------------------------------------------------------------- primaries

    #[test]
    fn literals() {
        let lit = |src: &str| parse(src).unwrap().kind;
        assert_eq!(lit("12"), ExprKind::Number(12.0));
        assert_eq!(lit("12.5"), ExprKind::Number(12.5));
        assert_eq!(lit(".5"), ExprKind::Number(0.5));
        assert_eq!(lit("1e3"), ExprKind::Number(1000.0));
        assert_eq!(lit("2.5E-1"), ExprKind::Number(0.25));
        assert_eq!(lit("'skincare'"), ExprKind::String("skincare".into()));
        assert_eq!(lit("'it''s'"), ExprKind::String("it's".into()));
        assert_eq!(lit("''"), ExprKind::String(String::new()));
        assert_eq!(lit("TRUE"), ExprKind::Bool(true));
        assert_eq!(lit("false"), ExprKind::Bool(false));
        assert_eq!(lit("Null"), ExprKind::Null);
        assert_eq!(lit("90s"), ExprKind::Duration(90_000));
        assert_eq!(lit("15m"), ExprKind::Duration(15 * 60_000));
        assert_eq!(lit("12h"), ExprKind::Duration(12 * 3_600_000));
        assert_eq!(lit("7d"), ExprKind::Duration(7 * 86_400_000));
        assert_eq!(lit("2w"), ExprKind::Duration(14 * 86_400_000));
        assert_eq!(lit(" ( 7d ) "), ExprKind::Duration(7 * 86_400_000));
    }

    #[test]
    fn identifiers_properties_and_calls() {
        let kind = |src: &str| parse(src).unwrap().kind;
        assert_eq!(kind("Spend_30d"), ExprKind::Ident("Spend_30d".into()));
        assert_eq!(kind("event"), ExprKind::Ident("event".into()));
        assert_eq!(kind("properties"), ExprKind::Ident("properties".into()));
        assert_eq!(
            kind("properties.channel"),
            ExprKind::Property("channel".into())
        );
        assert_eq!(kind("properties.a.b"), ExprKind::Property("a.b".into()));
        assert_eq!(
            kind("properties.'odd key'"),
            ExprKind::Property("odd key".into())
        );
        assert_eq!(kind("properties.'$os'"), ExprKind::Property("$os".into()));
        assert_eq!(
            kind("NOW()"),
            ExprKind::Call {
                name: "now".into(),
                args: vec![]
            }
        );
        assert_eq!(p("coalesce(a, b)"), "coalesce(a, b)");
        assert_eq!(p("Round ( x , 2 )"), "round(x, 2)");
        assert_eq!(
            p("coalesce(round(x * 2, 2), least(a, b, 0), now()) + 1"),
            "(+ coalesce(round((* x 2), 2), least(a, b, 0), now()) 1)"
        );
        assert_eq!(p("f(g(h(i(j()))))"), "f(g(h(i(j()))))");
        assert_eq!(
            p("f(a = 1 AND b, c IN (1))"),
            "f((and (= a 1) b), (in c 1))"
        );
        assert_eq!(
            p("days_since(last_time) BETWEEN 1 AND 7"),
            "(between days_since(last_time) 1 7)"
        );
        assert_eq!(p("properties.channel = 'app'"), "(= prop[channel] 'app')");
    }

    // ---------------------------------------------------------------- spans

    #[test]
    fn spans() {
        let src = "a + b * c";
        let e = parse(src).unwrap();
        assert_eq!(e.span, Span { start: 0, end: 9 });
        let ExprKind::Binary { left, right, .. } = &e.kind else {
            panic!()
        };
        assert_eq!(left.span, Span { start: 0, end: 1 });
        assert_eq!(right.span, Span { start: 4, end: 9 });

        // Parentheses belong to the node they enclose.
        let src = " (a + b) * c ";
        let e = parse(src).unwrap();
        assert_eq!(span_text(src, &e), "(a + b) * c");
        let ExprKind::Binary { left, .. } = &e.kind else {
            panic!()
        };
        assert_eq!(span_text(src, left), "(a + b)");

        let cases: &[(&str, &str)] = &[
            ("  coalesce( a , b )  ", "coalesce( a , b )"),
            ("x NOT IN (1, 2) ", "x NOT IN (1, 2)"),
            ("x BETWEEN 1 AND y + 2 ", "x BETWEEN 1 AND y + 2"),
            ("x IS NOT NULL ", "x IS NOT NULL"),
            (" - 7d", "- 7d"),
            ("NOT  a = b", "NOT  a = b"),
            (" properties.'odd key' ", "properties.'odd key'"),
            (" 'it''s' ", "'it''s'"),
            ("((x))", "((x))"),
        ];
        for (src, text) in cases {
            assert_eq!(span_text(src, &parse(src).unwrap()), *text, "{src:?}");
        }

        // Spans are byte offsets.
        let src = "'é' = x";
        let e = parse(src).unwrap();
        let ExprKind::Binary { left, right, .. } = &e.kind else {
            panic!()
        };
        assert_eq!(left.span, Span { start: 0, end: 4 });
        assert_eq!(right.span, Span { start: 7, end: 8 });
    }

    // ---------------------------------------------------------------- errors

    #[test]
    fn empty_expressions() {
        let msg = "empty expression: expected a value or a condition, e.g. spend_30d > 100";
        assert_eq!(err("").message, msg);
        assert_eq!(err("  \n ").message, msg);
        assert_eq!(err("  \n ").span, Span { start: 4, end: 4 });
    }

    #[test]
    fn unclosed_parentheses() {
        check_err(
            "a + (b * c",
            "expected ')' to close '(' opened at column 5, found end of expression",
            "",
        );
        check_err(
            "(a b)",
            "expected ')' to close '(' opened at column 1, found 'b'",
            "b",
        );
        check_err(
            "'é' = (a",
            "expected ')' to close '(' opened at column 7, found end of expression",
            "",
        );
        check_err(
            "coalesce(a, b",
            "expected ',' or ')' to close the arguments of 'coalesce(' opened at column 9, found end of expression",
            "",
        );
        check_err(
            "x IN (1, 2 3)",
            "expected ',' or ')' to close the IN list opened at column 6, found number 3",
            "3",
        );
    }

    #[test]
    fn missing_values() {
        check_err(
            "AND a",
            "unexpected 'AND': a comparison or value is missing before it",
            "AND",
        );
        check_err(
            "a = and b",
            "unexpected 'and': a comparison or value is missing before it",
            "and",
        );
        check_err(
            "a OR OR b",
            "unexpected 'OR': a comparison or value is missing before it",
            "OR",
        );
        check_err("= 1", "unexpected '=': a value is missing before it", "=");
        check_err(
            "a * * b",
            "unexpected '*': a value is missing before it",
            "*",
        );
        check_err(
            "IN (1)",
            "unexpected 'IN': a value is missing before it",
            "IN",
        );
        check_err("+1", "unexpected '+': a value is missing before it", "+");
        check_err(
            "a +",
            "expected a value after '+', found end of expression",
            "",
        );
        check_err(
            "NOT",
            "expected a value after 'NOT', found end of expression",
            "",
        );
        check_err("()", "expected a value after '(', found ')'", ")");
        check_err("f(a,)", "expected a value after ',', found ')'", ")");
        check_err("f(,a)", "expected a value after '(', found ','", ",");
        check_err("x IN (1,)", "expected a value after ',', found ')'", ")");
        check_err(")", "expected an expression, found ')'", ")");
        check_err(", a", "expected an expression, found ','", ",");
    }

    #[test]
    fn trailing_tokens() {
        let msg = |found: &str| {
            format!(
                "unexpected {found} after a complete expression: an operator such as AND, OR, = \
                 or + is missing before it"
            )
        };
        check_err("a b", &msg("'b'"), "b");
        check_err("a 'x'", &msg("string 'x'"), "'x'");
        check_err("f(a) (b)", &msg("'('"), "(");
        check_err("TRUE(1)", &msg("'('"), "(");
        check_err("a = 1)", "unexpected ')': it has no matching '('", ")");
    }

    #[test]
    fn chained_comparisons() {
        let msg = |op: &str, col: usize| {
            format!(
                "unexpected '{op}': comparisons cannot be chained (another one is at column {col}); join them with AND, e.g. a < b AND b < c"
            )
        };
        check_err("a < b < c", &msg("<", 3), "<");
        check_err("a = b = c", &msg("=", 3), "=");
        check_err("1 < x + 1 <= 3", &msg("<=", 3), "<=");
        check_err("a IS NULL IS NULL", &msg("IS", 3), "IS");
        check_err("a IN (1) = b", &msg("=", 3), "=");
        check_err("a = b IN (1)", &msg("IN", 3), "IN");
        check_err(
            "a BETWEEN 1 AND 2 NOT BETWEEN 3 AND 4",
            &msg("NOT", 3),
            "NOT",
        );
        check_err("NOT a = b = c", &msg("=", 7), "=");
    }

    #[test]
    fn malformed_in_between_is() {
        check_err(
            "x IN 1",
            "expected '(' after IN, as in x IN ('a', 'b'), found number 1",
            "1",
        );
        check_err(
            "x NOT IN 'a'",
            "expected '(' after IN, as in x IN ('a', 'b'), found string 'a'",
            "'a'",
        );
        check_err(
            "x IN ()",
            "expected a value in the IN list, found ')': the list cannot be empty",
            ")",
        );
        check_err(
            "a NOT b",
            "expected IN or BETWEEN after 'NOT' (x NOT IN (...), x NOT BETWEEN a AND b), found 'b'",
            "b",
        );
        check_err(
            "x BETWEEN 1 OR 2",
            "expected AND to complete 'BETWEEN low AND high' (BETWEEN at column 3), found 'OR'",
            "OR",
        );
        check_err(
            "x BETWEEN 1",
            "expected AND to complete 'BETWEEN low AND high' (BETWEEN at column 3), found end of expression",
            "",
        );
        check_err(
            "a IS 5",
            "expected NULL or NOT NULL after 'IS', found number 5",
            "5",
        );
        check_err(
            "a IS NOT TRUE",
            "expected NULL after 'IS NOT', found 'TRUE'",
            "TRUE",
        );
        check_err(
            "a = NOT b",
            "unexpected 'NOT' after '=': put the negation in parentheses, e.g. a = (NOT b)",
            "NOT",
        );
        check_err(
            "1 + not b",
            "unexpected 'not' after '+': put the negation in parentheses, e.g. a = (NOT b)",
            "not",
        );
        assert_eq!(p("a = (NOT b)"), "(= a (not b))");
    }

    #[test]
    fn lexical_errors_surface() {
        check_err("a # b", "unexpected character '#'", "#");
        check_err("x = 'abc", "unterminated string starting at column 5: add the closing quote ' (write '' for a quote inside a string)", "'abc");
        let e = err("last_seen > now() - 7x");
        assert!(
            e.message
                .starts_with("invalid number or duration '7x': a duration is a whole number"),
            "{}",
            e.message
        );
        assert_eq!(e.span, Span { start: 20, end: 22 });
        assert!(err("x > 7dd")
            .message
            .contains("(e.g. 90s, 15m, 12h, 7d, 2w)"));
        assert!(err("x > 999999999999999999w").message.contains("too large"));
        assert!(err("event.name = 'x'")
            .message
            .starts_with("unexpected '.'"));
    }

    #[test]
    fn long_tokens_are_shortened_in_messages() {
        let src = format!("a '{}'", "x".repeat(100));
        let e = err(&src);
        assert!(
            e.message
                .starts_with(&format!("unexpected string '{}...", "x".repeat(36))),
            "{}",
            e.message
        );
        assert_eq!(
            e.span,
            Span {
                start: 2,
                end: src.len()
            }
        );
    }

    // ---------------------------------------------------------------- depth

    fn is_too_deep(src: &str) -> bool {
        match parse(src) {
            Err(e) => e
                .message
                .starts_with("expression is nested too deeply (more than 256 levels)"),
            Ok(_) => false,
        }
    }

    #[test]
    fn nesting_limit() {
        let parens = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&parens(MAX_DEPTH)).is_ok());
        assert!(is_too_deep(&parens(MAX_DEPTH + 1)));
        let e = err(&parens(MAX_DEPTH + 1));
        assert_eq!(
            e.span,
            Span {
                start: MAX_DEPTH,
                end: MAX_DEPTH + 1
            }
        );

        let nots = |n: usize| format!("{}a", "NOT ".repeat(n));
        assert!(parse(&nots(MAX_DEPTH)).is_ok());
        assert!(is_too_deep(&nots(MAX_DEPTH + 1)));
        let negs = |n: usize| format!("{}a", "-".repeat(n));
        assert!(parse(&negs(MAX_DEPTH)).is_ok());
        assert!(is_too_deep(&negs(MAX_DEPTH + 1)));
        let calls = |n: usize| format!("{}{}", "f(".repeat(n), ")".repeat(n));
        assert!(parse(&calls(MAX_DEPTH)).is_ok());
        assert!(is_too_deep(&calls(MAX_DEPTH + 1)));
        let ins = |n: usize| format!("{}a{}", "a IN (".repeat(n), ")".repeat(n));
        assert!(parse(&ins(MAX_DEPTH)).is_ok());
        assert!(is_too_deep(&ins(MAX_DEPTH + 1)));

        // Long left-associative chains are built without recursion, but the tree height is
        // limited too, so that later recursive passes are safe.
        let chain = |n: usize| format!("a{}", " OR a".repeat(n));
        assert!(parse(&chain(MAX_DEPTH)).is_ok());
        assert!(is_too_deep(&chain(MAX_DEPTH + 1)));
        assert!(is_too_deep(&format!("a{}", " + 1".repeat(100_000))));

        // Parentheses and operators both count: each `a = (` opens two levels.
        let eq_parens = |n: usize| format!("{}a{}", "a = (".repeat(n), ")".repeat(n));
        assert!(parse(&eq_parens(MAX_DEPTH / 2)).is_ok());
        assert!(is_too_deep(&eq_parens(MAX_DEPTH / 2 + 1)));
        assert!(parse(&format!("({})", chain(MAX_DEPTH - 1))).is_ok());
        assert!(is_too_deep(&format!("({})", chain(MAX_DEPTH))));

        // Far beyond the limit: an error, not a stack overflow.
        for src in [
            parens(100_000),
            nots(100_000),
            negs(100_000),
            calls(100_000),
            "(".repeat(1_000_000),
        ] {
            assert!(is_too_deep(&src));
        }
    }

    /// Every recursive step of the parser opens a level, so the deepest accepted inputs need
    /// little stack (measured: under 400 KiB at the workspace's dev opt-level 1, about 700 KiB
    /// at opt-level 0); 1 MiB catches any change that lets recursion outgrow the depth counter.
    #[test]
    fn deepest_inputs_fit_in_a_small_stack() {
        let worker = std::thread::Builder::new().stack_size(1 << 20).spawn(|| {
            let n = MAX_DEPTH;
            let accepted = [
                format!("{}a{}", "(".repeat(n), ")".repeat(n)),
                format!("{}a{}", "f(".repeat(n), ")".repeat(n)),
                format!("{}a{}", "a IN (".repeat(n), ")".repeat(n)),
                format!(
                    "{}a{}",
                    "a BETWEEN (".repeat(n / 2),
                    ") AND 1".repeat(n / 2)
                ),
                format!("{}a", "NOT ".repeat(n)),
                format!("{}a", "-".repeat(n)),
                format!(
                    "{}a{}",
                    "a OR a AND a = a + a * (".repeat(n / 6),
                    ")".repeat(n / 6)
                ),
            ];
            for src in &accepted {
                assert!(parse(src).is_ok(), "{}", &src[..40]);
            }
            let refused = format!(
                "{}a{}",
                "a OR a AND a = a + a * -(".repeat(n),
                ")".repeat(n)
            );
            assert!(is_too_deep(&refused));
        });
        assert!(worker.expect("spawn").join().is_ok());
    }

    // ---------------------------------------------------------------- property tests

    const UNITS: [(i64, &str); 5] = [
        (604_800_000, "w"),
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];

    fn e(kind: ExprKind) -> Expr {
        Expr {
            kind,
            span: Span::default(),
        }
    }

    fn ident() -> impl Strategy<Value = String> {
        "[A-Za-z_][A-Za-z0-9_]{0,6}".prop_filter("keyword", |s| !Keyword::is_keyword(s))
    }

    fn leaf() -> impl Strategy<Value = Expr> {
        let number = prop_oneof![
            (0u32..1000).prop_map(f64::from),
            0.0f64..1e6,
            any::<f64>().prop_filter("finite, not negative", |n| n.is_finite()
                && n.is_sign_positive()),
        ];
        let duration = (0i64..100_000, 0usize..5).prop_map(|(n, u)| n * UNITS[u].0);
        let key = prop_oneof![
            prop::collection::vec("[A-Za-z_][A-Za-z0-9_]{0,5}", 1..4)
                .prop_map(|parts| parts.join(".")),
            "\\PC{1,8}",
        ];
        prop_oneof![
            Just(ExprKind::Null),
            any::<bool>().prop_map(ExprKind::Bool),
            number.prop_map(ExprKind::Number),
            duration.prop_map(ExprKind::Duration),
            "\\PC{0,8}".prop_map(ExprKind::String),
            ident().prop_map(ExprKind::Ident),
            key.prop_map(ExprKind::Property),
        ]
        .prop_map(e)
    }

    fn binary_op_strategy() -> impl Strategy<Value = BinaryOp> {
        use BinaryOp::*;
        prop::sample::select(vec![
            Add, Sub, Mul, Div, Mod, Eq, NotEq, Lt, LtEq, Gt, GtEq, And, Or,
        ])
    }

    fn tree() -> impl Strategy<Value = Expr> {
        leaf().prop_recursive(6, 64, 4, |inner| {
            let call_name =
                "[a-z_][a-z0-9_]{0,6}".prop_filter("keyword", |s| !Keyword::is_keyword(s));
            let b = |x: Expr| Box::new(x);
            prop_oneof![
                (
                    prop::sample::select(vec![UnaryOp::Neg, UnaryOp::Not]),
                    inner.clone()
                )
                    .prop_map(move |(op, x)| ExprKind::Unary { op, expr: b(x) }),
                (binary_op_strategy(), inner.clone(), inner.clone()).prop_map(move |(op, l, r)| {
                    ExprKind::Binary {
                        op,
                        left: b(l),
                        right: b(r),
                    }
                }),
                (
                    inner.clone(),
                    prop::collection::vec(inner.clone(), 1..4),
                    any::<bool>()
                )
                    .prop_map(move |(x, list, negated)| ExprKind::In {
                        expr: b(x),
                        list,
                        negated
                    }),
                (inner.clone(), inner.clone(), inner.clone(), any::<bool>()).prop_map(
                    move |(x, l, h, negated)| {
                        ExprKind::Between {
                            expr: b(x),
                            low: b(l),
                            high: b(h),
                            negated,
                        }
                    }
                ),
                (inner.clone(), any::<bool>()).prop_map(move |(x, negated)| ExprKind::IsNull {
                    expr: b(x),
                    negated
                }),
                (call_name, prop::collection::vec(inner, 0..4))
                    .prop_map(|(name, args)| ExprKind::Call { name, args }),
            ]
            .prop_map(e)
        })
    }

    fn quote(s: &str) -> String {
        format!("'{}'", s.replace('\'', "''"))
    }

    fn leaf_text(e: &Expr) -> Option<String> {
        Some(match &e.kind {
            ExprKind::Null => "NULL".into(),
            ExprKind::Bool(true) => "TRUE".into(),
            ExprKind::Bool(false) => "FALSE".into(),
            ExprKind::Number(n) => format!("{n:?}"),
            ExprKind::Duration(ms) => {
                let (unit, suffix) = UNITS
                    .iter()
                    .find(|(u, _)| ms % u == 0)
                    .copied()
                    .unwrap_or((1_000, "s"));
                format!("{}{suffix}", ms / unit)
            }
            ExprKind::String(s) => quote(s),
            ExprKind::Ident(name) => name.clone(),
            ExprKind::Property(key) => {
                let plain = key.split('.').all(|part| {
                    let mut chars = part.chars();
                    chars
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
                if plain {
                    format!("properties.{key}")
                } else {
                    format!("properties.{}", quote(key))
                }
            }
            _ => return None,
        })
    }

    /// Fully parenthesised text: every non-leaf node other than a call is wrapped in `( )`.
    fn full(e: &Expr) -> String {
        if let Some(text) = leaf_text(e) {
            return text;
        }
        let list = |items: &[Expr]| items.iter().map(full).collect::<Vec<_>>().join(", ");
        match &e.kind {
            ExprKind::Call { name, args } => format!("{name}({})", list(args)),
            ExprKind::Unary {
                op: UnaryOp::Neg,
                expr,
            } => format!("(-{})", full(expr)),
            ExprKind::Unary {
                op: UnaryOp::Not,
                expr,
            } => format!("(NOT {})", full(expr)),
            ExprKind::Binary { op, left, right } => {
                format!("({} {} {})", full(left), op_text(*op), full(right))
            }
            ExprKind::In {
                expr,
                list: items,
                negated,
            } => {
                format!(
                    "({} {}IN ({}))",
                    full(expr),
                    if *negated { "NOT " } else { "" },
                    list(items)
                )
            }
            ExprKind::Between {
                expr,
                low,
                high,
                negated,
            } => format!(
                "({} {}BETWEEN {} AND {})",
                full(expr),
                if *negated { "NOT " } else { "" },
                full(low),
                full(high)
            ),
            ExprKind::IsNull { expr, negated } => {
                format!(
                    "({} IS {}NULL)",
                    full(expr),
                    if *negated { "NOT " } else { "" }
                )
            }
            _ => unreachable!("leaves are handled above"),
        }
    }

    /// Binding level of a node's top operator (see the module documentation).
    fn level(e: &Expr) -> u8 {
        match &e.kind {
            ExprKind::Binary {
                op: BinaryOp::Or, ..
            } => OR,
            ExprKind::Binary {
                op: BinaryOp::And, ..
            } => AND,
            ExprKind::Unary {
                op: UnaryOp::Not, ..
            } => NOT,
            ExprKind::Binary {
                op: BinaryOp::Add | BinaryOp::Sub,
                ..
            } => ADD,
            ExprKind::Binary {
                op: BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod,
                ..
            } => MUL,
            ExprKind::Binary { .. }
            | ExprKind::In { .. }
            | ExprKind::Between { .. }
            | ExprKind::IsNull { .. } => CMP,
            ExprKind::Unary {
                op: UnaryOp::Neg, ..
            } => UNARY,
            _ => UNARY + 1,
        }
    }

    /// Text with only the parentheses that precedence requires; keywords in lower case when
    /// `lower`.
    fn minimal(e: &Expr, lower: bool) -> String {
        let kw = |k: &str| {
            if lower {
                k.to_lowercase()
            } else {
                k.to_string()
            }
        };
        let at = |x: &Expr, need: u8| {
            let text = minimal(x, lower);
            if level(x) < need {
                format!("({text})")
            } else {
                text
            }
        };
        if let Some(text) = leaf_text(e) {
            return if matches!(e.kind, ExprKind::Null | ExprKind::Bool(_)) {
                kw(&text)
            } else {
                text
            };
        }
        let list = |items: &[Expr]| {
            items
                .iter()
                .map(|x| at(x, OR))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let not = |negated: bool| if negated { kw("NOT ") } else { String::new() };
        match &e.kind {
            ExprKind::Call { name, args } => format!("{name}({})", list(args)),
            ExprKind::Unary {
                op: UnaryOp::Neg,
                expr,
            } => format!("-{}", at(expr, UNARY)),
            ExprKind::Unary {
                op: UnaryOp::Not,
                expr,
            } => format!("{} {}", kw("NOT"), at(expr, NOT)),
            ExprKind::Binary { op, left, right } => {
                let (l, r) = match level(e) {
                    CMP => (ADD, ADD),
                    n => (n, n + 1),
                };
                format!("{} {} {}", at(left, l), kw(op_text(*op)), at(right, r))
            }
            ExprKind::In {
                expr,
                list: items,
                negated,
            } => {
                format!(
                    "{} {}{} ({})",
                    at(expr, ADD),
                    not(*negated),
                    kw("IN"),
                    list(items)
                )
            }
            ExprKind::Between {
                expr,
                low,
                high,
                negated,
            } => format!(
                "{} {}{} {} {} {}",
                at(expr, ADD),
                not(*negated),
                kw("BETWEEN"),
                at(low, ADD),
                kw("AND"),
                at(high, ADD)
            ),
            ExprKind::IsNull { expr, negated } => {
                format!(
                    "{} {} {}{}",
                    at(expr, ADD),
                    kw("IS"),
                    not(*negated),
                    kw("NULL")
                )
            }
            _ => unreachable!("leaves are handled above"),
        }
    }

    /// Every node's span is source text that parses, on its own, to that node.
    fn check_spans(src: &str, node: &Expr) -> Result<(), TestCaseError> {
        let text = src.get(node.span.start..node.span.end);
        prop_assert!(text.is_some(), "span {:?} outside {src:?}", node.span);
        let reparsed = parse(text.unwrap_or_default());
        prop_assert_eq!(
            reparsed.map(|x| strip(&x)),
            Ok(strip(node)),
            "span text {:?} of {:?}",
            text,
            src
        );
        for child in children(node) {
            check_spans(src, child)?;
        }
        Ok(())
    }

    fn fragment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "(",
            ")",
            ",",
            "AND",
            "or",
            "NOT",
            "IN",
            "BETWEEN",
            "IS",
            "NULL",
            "true",
            "=",
            "<>",
            "!=",
            "<",
            "<=",
            ">",
            ">=",
            "+",
            "-",
            "*",
            "/",
            "%",
            "a",
            "f",
            "1",
            ".5",
            "1e3",
            "7d",
            "7x",
            "'s'",
            "'",
            "properties.a",
            "properties.",
            ".",
            "#",
            "é",
            " ",
            "\n",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn never_panics_on_arbitrary_strings(src in any::<String>()) {
            let _ = parse(&src);
        }

        #[test]
        fn never_panics_on_token_soup(parts in prop::collection::vec(fragment(), 0..60), spaced in any::<bool>()) {
            let src = parts.join(if spaced { " " } else { "" });
            if let Err(e) = parse(&src) {
                prop_assert!(e.span.start <= e.span.end && e.span.end <= src.len(), "{src:?}: {e:?}");
                prop_assert!(src.is_char_boundary(e.span.start) && src.is_char_boundary(e.span.end));
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn round_trips_fully_parenthesised(tree in tree()) {
            let src = full(&tree);
            let parsed = parse(&src);
            prop_assert!(parsed.is_ok(), "{src:?}: {parsed:?}");
            let parsed = parsed.unwrap_or_else(|_| unreachable!());
            prop_assert_eq!(strip(&parsed), tree, "{}", src);
            prop_assert_eq!(parsed.span, Span { start: 0, end: src.len() });
            check_spans(&src, &parsed)?;
        }

        #[test]
        fn round_trips_minimally_parenthesised(tree in tree(), lower in any::<bool>()) {
            let src = minimal(&tree, lower);
            let parsed = parse(&src);
            prop_assert!(parsed.is_ok(), "{src:?}: {parsed:?}");
            let parsed = parsed.unwrap_or_else(|_| unreachable!());
            prop_assert_eq!(strip(&parsed), tree, "{}", src);
            check_spans(&src, &parsed)?;
        }
    }
}
