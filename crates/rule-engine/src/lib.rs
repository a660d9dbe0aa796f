//! tagstream-rules — the pure domain core of tagstream (no IO, no async).
//!
//! * [`event`]: the event model and the three input codecs (native, segment, sensors).
//! * [`expr`]: the expression language (syntax tree and parser).
//! * [`rules`]: the rules file compiled once into an immutable, validated [`rules::RuleSet`].
//! * [`state`]: per-user state (aggregates in time buckets, profile, membership, timer).
//! * [`engine`]: how an event or the passing of time changes a user's state, the transitions
//!   that emits, and the exact next instant a segment can change with time alone.
//! * [`explain`]: why a user is in or out of a segment, as a tree of values.
//! * [`reload`]: how stored state carries over to a new rule set.
//!
//! Guarantees: decoding and rule compilation never panic on user input; evaluation at engine
//! time `t` depends only on the events applied and `t`, so the incremental state always equals a
//! from-scratch batch computation at the same engine time (SPEC §3).
/// Compiled expressions live next to the parser they are compiled from; `crate::cexpr` stays
/// their path.
pub use expr::cexpr;
pub(crate) mod enclose;
pub mod engine;
pub mod event;
pub mod explain;
pub mod expr;
pub mod reload;
pub mod rules;
pub mod state;
pub mod time;
pub mod transition;
pub mod value;
