//! How a value can change as engine time passes with no new event.
//!
//! Between two consecutive "breakpoints" (a windowed bucket leaving its window, or a probe
//! changing outcome) every aggregate and every decision is constant; what remains is how
//! arithmetic on `now()` moves. Tracking monotonicity is enough to find the next instant a
//! comparison flips by bisection.

/// Behaviour of a value over time between breakpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Constant between breakpoints.
    Const,
    /// Non-decreasing in `now`.
    Inc,
    /// Non-increasing in `now`.
    Dec,
    /// Monotone, direction known only at run time.
    Mono,
    /// May move back and forth; its change instants cannot be computed.
    Unknown,
}

impl Shape {
    pub fn is_const(self) -> bool {
        self == Shape::Const
    }

    pub fn is_monotone(self) -> bool {
        self != Shape::Unknown
    }

    pub fn negate(self) -> Shape {
        match self {
            Shape::Inc => Shape::Dec,
            Shape::Dec => Shape::Inc,
            other => other,
        }
    }

    /// Shape of `a + b`.
    pub fn sum(a: Shape, b: Shape) -> Shape {
        match (a, b) {
            (Shape::Const, x) | (x, Shape::Const) => x,
            (Shape::Inc, Shape::Inc) => Shape::Inc,
            (Shape::Dec, Shape::Dec) => Shape::Dec,
            _ => Shape::Unknown,
        }
    }

    /// Shape of `a * b`, `a / b` where one side is constant (sign unknown until run time).
    pub fn scale(a: Shape, b: Shape) -> Shape {
        match (a, b) {
            (Shape::Const, Shape::Const) => Shape::Const,
            (Shape::Unknown, _) | (_, Shape::Unknown) => Shape::Unknown,
            (Shape::Const, _) | (_, Shape::Const) => Shape::Mono,
            _ => Shape::Unknown,
        }
    }

    /// Shape of a value chosen among alternatives by a choice that is itself constant between
    /// breakpoints (`coalesce`, `case` branches).
    pub fn choice(shapes: impl IntoIterator<Item = Shape>) -> Shape {
        let mut out = Shape::Const;
        for s in shapes {
            out = match (out, s) {
                (x, Shape::Const) => x,
                (Shape::Const, y) => y,
                (Shape::Unknown, _) | (_, Shape::Unknown) => Shape::Unknown,
                (x, y) if x == y => x,
                _ => Shape::Mono,
            };
        }
        out
    }

    /// Shape of `least`/`greatest`: monotone only when every moving argument moves the same way.
    pub fn extremum(shapes: impl IntoIterator<Item = Shape>) -> Shape {
        let mut out = Shape::Const;
        for s in shapes {
            out = match (out, s) {
                (x, Shape::Const) => x,
                (Shape::Const, y) => y,
                (Shape::Inc, Shape::Inc) => Shape::Inc,
                (Shape::Dec, Shape::Dec) => Shape::Dec,
                _ => Shape::Unknown,
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Shape::*;
    use super::*;

    #[test]
    fn algebra() {
        assert_eq!(Shape::sum(Inc, Const), Inc);
        assert_eq!(Shape::sum(Inc, Dec), Unknown);
        assert_eq!(Shape::sum(Inc, Inc.negate().negate()), Inc);
        assert_eq!(Shape::scale(Const, Inc), Mono);
        assert_eq!(Shape::scale(Inc, Inc), Unknown);
        assert_eq!(Shape::choice([Inc, Const, Dec]), Mono);
        assert_eq!(Shape::extremum([Inc, Dec]), Unknown);
    }
}
