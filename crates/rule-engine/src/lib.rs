//! tagstream-rules — the pure domain core of tagstream (no IO, no async).
//!
//! * [`event`]: the event model and the three input codecs (native, segment, sensors).
//! * [`expr`]: the expression language (syntax tree and parser).
pub mod event;
pub mod expr;
