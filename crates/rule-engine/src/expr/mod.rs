//! The expression language: syntax tree, parser, and (in `compile`/`eval`) typing and evaluation.

pub mod ast;
pub mod cexpr;
mod lexer;
mod parser;

pub use ast::{BinaryOp, Expr, ExprKind, ParseError, Span, UnaryOp};
pub use parser::parse;
