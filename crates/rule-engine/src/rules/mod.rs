//! Rules: the TOML file compiled once into an immutable, validated [`RuleSet`].
//!
//! Compilation parses every expression, resolves names, checks types, orders tags and segments
//! so that every rule comes after what it reads (rejecting cycles), and works out how each
//! value can change with time alone, so that the engine can compute exact timer instants.

pub mod adhoc;
mod compile;
mod error;
mod raw;
mod shape;

use std::collections::HashMap;
use std::sync::Arc;

pub use adhoc::{compile_condition, AdhocCondition, AdhocError};
pub use error::{RuleError, RuleErrors};
pub use shape::Shape;

use crate::cexpr::CExpr;
use crate::time::{Unit, Window, Zone};

/// Index of a tag or segment in [`RuleSet::nodes`] (evaluation order).
pub type NodeId = usize;

/// A compiled, validated rules file. Immutable; swap the whole value to change rules.
#[derive(Debug)]
pub struct RuleSet {
    pub zone: Zone,
    /// Event ids are remembered this long (event time) for deduplication; 0 disables.
    pub dedup_window_ms: i64,
    /// Tags and segments, ordered so that every node comes after the nodes it reads.
    pub nodes: Vec<Node>,
    /// Tags shown in dumps, in file order.
    pub tags: Vec<NodeId>,
    /// Segments in file order.
    pub segments: Vec<Segment>,
    /// Aggregate tags; a user's state holds one accumulator per entry, in this order.
    pub aggregates: Vec<Aggregate>,
    /// Aggregates matching each event name, and those matching every track event.
    by_event: HashMap<String, Vec<usize>>,
    all_events: Vec<usize>,
    /// Time-dependent decision points reachable from segments, in evaluation order.
    pub probes: Vec<ProbeInfo>,
    /// Nodes reachable from segments whose value moves continuously with `now`.
    pub moving_nodes: Vec<NodeId>,
    /// Nodes that some segment reads (directly or not): all the event path has to evaluate.
    pub needed: Vec<bool>,
    /// Windowed aggregates reachable from segments (their bucket drops are timer candidates).
    pub windowed_for_segments: Vec<WindowedSlot>,
    /// The bucket units of those aggregates' windows (each once).
    pub window_units: Vec<Unit>,
    /// Per node, the nodes its own definition reads (what a change must propagate along).
    pub node_deps: Vec<Vec<NodeId>>,
    /// Per node, whether its own definition reads `now()` (directly, not through another node):
    /// such a node is re-evaluated at every instant.
    pub reads_now: Vec<bool>,
    /// Hash of the rules source, stored with state so a state dir is not read with other rules.
    pub fingerprint: String,
    /// The properties of track events these rules read: aggregated properties and those `where`
    /// filters name. The engine decodes only these (see
    /// [`crate::event::decode_message_keeping`]).
    pub track_properties: crate::event::TrackProperties,
}

/// A windowed aggregate that segments read: the instants it loses a bucket are timer
/// candidates, unless its [`InertGuard`] holds.
#[derive(Debug, Clone)]
pub struct WindowedSlot {
    /// Index into [`RuleSet::aggregates`].
    pub slot: usize,
    /// When losing buckets cannot change any segment; None if it always may.
    pub inert: Option<InertGuard>,
}

/// A condition under which a windowed aggregate losing buckets, or a probe's comparison moving
/// with time (with no new event), cannot change any segment, worked out from how the segments
/// read it (see `compile/inert.rs`): every segment that reads it keeps its current value while
/// the aggregate only falls, or the comparison only moves the one way time moves it.
#[derive(Debug, Clone, PartialEq)]
pub struct InertGuard {
    /// Segment nodes with the value each must have now for the guard to hold.
    pub while_segments: Vec<(NodeId, bool)>,
    /// A `sum` falls as buckets leave only while none of its live buckets is negative (always
    /// false for a probe).
    pub needs_non_negative: bool,
}

#[derive(Debug)]
pub struct Node {
    pub name: Arc<str>,
    pub kind: NodeKind,
    pub shape: Shape,
    /// Implicit tags (`first_seen`/`last_seen` when not defined) are evaluated but not dumped.
    pub hidden: bool,
    /// `description` as written (empty when none), for the API's catalogue.
    pub description: String,
    /// The `kind` as written (`sum`, `case`, ...); `segment` for a segment. Kept for the
    /// catalogue because [`NodeKind`] folds the aggregate kinds together.
    pub kind_name: Arc<str>,
    /// The `window` as written (`"30d"`), for a windowed aggregate; `4w` stays `4w`.
    pub window_text: Option<String>,
}

#[derive(Debug)]
pub enum NodeKind {
    Aggregate(usize),
    Profile(Arc<str>),
    Expr(CExpr),
    Case {
        cases: Vec<(CExpr, CExpr)>,
        otherwise: CExpr,
    },
    /// Sorted by `min` ascending.
    Tier {
        of: CExpr,
        tiers: Vec<(f64, Arc<str>)>,
    },
    /// Centroids sorted by name so that ties go to the name that sorts first.
    Nearest {
        features: Vec<NodeId>,
        centroids: Vec<(Arc<str>, Vec<f64>)>,
    },
    Segment(CExpr),
}

#[derive(Debug)]
pub struct Segment {
    pub name: Arc<str>,
    pub description: String,
    /// `emit = false` marks a helper segment whose transitions campaigns do not consume
    /// (default true). Carried for the sink and the API; membership is computed all the same.
    pub emit: bool,
    /// The `when` expression as written.
    pub when: String,
    pub node: NodeId,
    /// Tags the segment's expression names directly (reported with transitions).
    pub direct_tags: Vec<NodeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Distinct,
    Top,
    First,
    Last,
    FirstTime,
    LastTime,
}

impl AggKind {
    /// The name a rules file uses for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::Avg => "avg",
            AggKind::Distinct => "distinct",
            AggKind::Top => "top",
            AggKind::First => "first",
            AggKind::Last => "last",
            AggKind::FirstTime => "first_time",
            AggKind::LastTime => "last_time",
        }
    }
}

#[derive(Debug)]
pub struct Aggregate {
    pub name: Arc<str>,
    pub kind: AggKind,
    pub property: Option<Arc<str>>,
    pub filter: Option<CExpr>,
    pub window: Option<Window>,
    /// `top` only: how many values (1 = the value itself, >1 = a list).
    pub k: usize,
    /// Everything that decides what the accumulator holds (kind, events, property, filter,
    /// window, k; not the name): a rules reload keeps a user's accumulator when an aggregate
    /// with the same signature exists in both rule sets.
    pub signature: String,
}

/// A probe with what its evaluation needs.
#[derive(Debug)]
pub struct ProbeInfo {
    pub probe: Probe,
    /// The moving nodes (in evaluation order) the probe's operands read, directly or not: all
    /// that must be recomputed to evaluate it at another instant.
    pub moving: Vec<NodeId>,
    /// When all of the probe's time dependence goes through `days_since(x)` of a single `x`,
    /// that `x`: the outcome can then only change at instants `x + k days` (searched by
    /// bisection over `k`, or for a [`Probe::Changing`] by splitting ranges of `k`).
    pub day_steps: Option<CExpr>,
    /// When all of the probe's time dependence goes through `days_since` of some time-independent
    /// arguments, those arguments (else empty): the outcome can then only change at an instant
    /// `x + k days` of one of them, which bounds how long it stays as it is.
    pub step_args: Vec<CExpr>,
    /// For a single comparison `a <op> b` whose sides are sums of `now()`, constants and
    /// time-independent tags (`last_seen > now() - 7d`): the coefficient of `now()` in `a - b`.
    /// Its outcome then changes at an instant computed in closed form, with no search.
    pub linear: Option<i64>,
    /// When the probe's changes cannot change any segment (a comparison that time only moves
    /// one way, read by one segment that then keeps its value); None if they always may.
    pub inert: Option<InertGuard>,
}

impl ProbeInfo {
    /// Whether the outcome can change back and forth between two breakpoints (see
    /// [`Probe::Changing`]).
    pub fn is_changing(&self) -> bool {
        matches!(self.probe, Probe::Changing(_))
    }
}

/// A decision point whose outcome can change with time alone. Its signature at an instant is
/// a vector of small integers; between two consecutive changes of earlier probes it is
/// monotone in time for every kind but [`Probe::Changing`], so the first instant it changes
/// can be found by bisection.
#[derive(Debug)]
pub enum Probe {
    /// Each pair is compared (`-1`, `0`, `1`; NULL = 2).
    Compare(Vec<(CExpr, CExpr)>),
    /// Compared like [`Probe::Compare`], but the outcome is not monotone in time (`nearest`
    /// over moving features, `abs`, `%`, products of moving values): its first change is found
    /// by splitting time spans with enclosures ([`crate::enclose`]) instead of bisection. An
    /// `x IS NULL` over a moving `x` is the pair `(x, x)`: equal exactly when `x` is not NULL.
    Changing(Vec<(CExpr, CExpr)>),
    /// The local hour or day bucket of a timestamp that moves with `now`.
    LocalBucket { arg: CExpr, unit: Unit },
}

/// The properties of track events that `aggregates` read (see [`RuleSet::track_properties`]).
fn track_properties(aggregates: &[Aggregate]) -> crate::event::TrackProperties {
    fn props(e: &CExpr, out: &mut Vec<Arc<str>>) {
        if let CExpr::Prop(key) = e {
            out.push(key.clone());
        }
        e.for_each_child(&mut |c| props(c, out));
    }
    let mut keys = Vec::new();
    for agg in aggregates {
        keys.extend(agg.property.clone());
        if let Some(filter) = &agg.filter {
            props(filter, &mut keys);
        }
    }
    crate::event::TrackProperties::new(keys)
}

impl RuleSet {
    /// Compiles a rules file. `path` is only used in error messages.
    pub fn compile(source: &str, path: &str) -> Result<RuleSet, RuleErrors> {
        compile::compile(source, path)
    }

    /// Aggregates that a track event named `name` feeds (before their `where` filters).
    pub fn aggregates_for(&self, name: &str) -> impl Iterator<Item = usize> + '_ {
        self.by_event
            .get(name)
            .into_iter()
            .flatten()
            .chain(self.all_events.iter())
            .copied()
    }

    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| &*n.name == name)
    }

    pub fn segment_by_name(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| &*s.name == name)
    }
}
