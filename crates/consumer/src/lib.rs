//! tagstream-consumer — the pipeline: sources, the engine driver, timers, outbox, sinks.
//!
//! Data flows one way: source → decode (rule-engine codecs) → [`engine::Engine`] (apply, fire
//! timers, one atomic commit of state + timers + bitmaps + outbox + input positions) → outbox →
//! sink. Guarantees: nothing is applied twice or lost across a crash at any instant (positions
//! are committed with the state they produced), transitions and dead letters are delivered at
//! least once with stable ids, and a malformed message never stops the pipeline.
//!
//! The modules, in the order data flows through them:
//!
//! - [`source`]: what reads input and hands it to the engine thread: the Kafka consumer-group
//!   source ([`source::kafka`]), the file and stdin sources ([`source::lines`]) and the one
//!   NDJSON line reader ([`source::line_reader`]) they and `replay` share.
//! - [`engine`]: decodes, applies and commits batches, fires timers, reloads rules, answers
//!   queries; [`pipeline`] is the loop that drives it (batching, clock ticks, rebalances,
//!   backpressure, shutdown).
//! - [`outbox`] and [`changelog`]: what a committed batch publishes. The outbox holds the
//!   transitions and dead letters for the sinks; with a Kafka source the same commit also stages
//!   the state changes and a per-partition checkpoint for the changelog topic, published next to
//!   the outbox; a partition assigned without its state (or with an older one) is restored from
//!   it.
//! - [`sink`]: delivery of the outbox to Kafka ([`sink::kafka`]) or NDJSON files and stdout
//!   ([`sink::lines`]).
//!
//! Around them: [`schema`] (every column family's keys and values), [`kafka`] (client
//! configuration shared by the Kafka source, producer and changelog), [`replay`] (`tagstream
//! replay` and `dump`), [`audience`] (segment set algebra and exports), [`metrics`] and
//! [`error`].
pub mod source;

pub mod engine;
pub mod pipeline;

pub mod changelog;
pub mod outbox;

pub mod sink;

pub mod audience;
pub mod error;
pub mod kafka;
pub mod metrics;
pub mod replay;
pub mod schema;

pub use engine::{ClockMode, Engine, EngineOptions, Record};
pub use error::{ConsumerError, Result};
