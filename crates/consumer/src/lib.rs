//! tagstream-consumer — the pipeline: sources, the engine driver, timers, outbox, sinks.
//!
//! Data flows one way: source → decode (rule-engine codecs) → [`engine::Engine`] (apply, fire
//! timers, one atomic commit of state + timers + bitmaps + outbox + input positions) → outbox →
//! sink. Guarantees: nothing is applied twice or lost across a crash at any instant (positions
//! are committed with the state they produced), transitions and dead letters are delivered at
//! least once with stable ids, and a malformed message never stops the pipeline.
//!
//! With a Kafka source the same commit also stages the state changes and a per-partition
//! checkpoint for the [`changelog`] topic, published next to the outbox; a partition assigned
//! without its state (or with an older one) is restored from it.
pub mod audience;
pub mod changelog;
pub mod engine;
pub mod error;
pub mod file_sink;
pub mod file_source;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod replay;

pub use engine::{ClockMode, Engine, EngineOptions, Record};
pub use error::{ConsumerError, Result};
