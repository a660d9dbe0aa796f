"""Rules file -> DuckDB SQL, for scripts/bench_duckdb.py (the DuckDB batch of `make bench`).

The expression language of docs/rules.md is parsed here and translated with its types: number
(DOUBLE), string, bool, timestamp and duration (BIGINT ms), and dynamic values (JSON: event
properties, profile attributes, `first`/`last`, `top`), which compare as NULL with another type
(SPEC §4). Aggregate tags become FILTERed aggregates of one GROUP BY over the view `live`
(`top`: a GROUP BY per value), derived tags and segments expressions evaluated in dependency
order. What is not translated raises `Unsupported`, naming it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

DAY_MS = 86_400_000
UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}
AGG_KINDS = {"count", "sum", "min", "max", "avg", "distinct", "top", "first", "last",
             "first_time", "last_time"}
NUMERIC_JSON = "('BIGINT','UBIGINT','DOUBLE')"
# Placeholders for the final engine time and its bucket indexes, known once the clock is computed.
NOW = "__now_ms__"
NOW_B = "__now_b_"


class Unsupported(Exception):
    """A rule this translation does not cover (it names which)."""


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def json_path(key: str) -> str:
    return sql_str('$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"')


def parse_duration(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhdw])", text)
    if not m:
        raise Unsupported(f"bad duration {text!r}")
    return int(m.group(1)) * UNIT_MS[m.group(2)]


# ---------------------------------------------------------------------------------------------
# Expressions: tokenizer and parser (the grammar of docs/rules.md), then a typed translation
# to SQL. Types: num (DOUBLE), str, bool, ts and dur (BIGINT ms), dyn (JSON, never JSON null:
# a property, a profile, first/last, top), null.

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<dur>\d+[smhdw](?![A-Za-z0-9_]))
  | (?P<num>(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)
  | (?P<str>'(?:[^']|'')*')
  | (?P<prop>(?i:properties)\.
        (?:'(?:[^']|'')+'|"[^"]+"|`[^`]+`|[A-Za-z0-9_$]+(?:\.[A-Za-z0-9_$]+)*))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|[=<>+\-*/%(),])
""", re.VERBOSE)
KEYWORDS = {"and", "or", "not", "in", "between", "is", "null", "true", "false"}


def tokenize(src: str) -> list[tuple[str, object]]:
    out, pos = [], 0
    while pos < len(src):
        m = TOKEN.match(src, pos)
        if not m:
            raise Unsupported(f"cannot read expression {src!r} at {pos}")
        pos = m.end()
        kind, text = m.lastgroup, m.group()
        if kind == "ws":
            continue
        if kind == "str":
            out.append(("str", text[1:-1].replace("''", "'")))
        elif kind == "prop":
            key = text.split(".", 1)[1]
            if key[0] in "'\"`":
                key = key[1:-1].replace("''", "'") if key[0] == "'" else key[1:-1]
            out.append(("prop", key))
        elif kind == "name" and text.lower() in KEYWORDS:
            out.append(("kw", text.lower()))
        else:
            out.append((kind, text))
    out.append(("end", None))
    return out


class Parser:
    """Recursive descent, loosest first: OR, AND, NOT, comparisons, + -, * / %, unary -."""

    def __init__(self, src: str):
        self.toks, self.i = tokenize(src), 0

    def peek(self, k=0):
        return self.toks[self.i + k]

    def take(self, kind, val=None):
        t = self.peek()
        if t[0] == kind and (val is None or t[1] == val):
            self.i += 1
            return t
        return None

    def expect(self, kind, val=None):
        t = self.take(kind, val)
        if t is None:
            raise Unsupported(f"expected {val or kind}, found {self.peek()[1]!r}")
        return t

    def parse(self):
        e = self.or_()
        self.expect("end")
        return e

    def or_(self):
        e = self.and_()
        while self.take("kw", "or"):
            e = ("or", e, self.and_())
        return e

    def and_(self):
        e = self.not_()
        while self.take("kw", "and"):
            e = ("and", e, self.not_())
        return e

    def not_(self):
        if self.take("kw", "not"):
            return ("not", self.not_())
        return self.cmp()

    def cmp(self):
        e = self.add()
        if (t := self.peek())[0] == "op" and t[1] in ("=", "<>", "!=", "<", "<=", ">", ">="):
            self.i += 1
            return ("cmp", "<>" if t[1] == "!=" else t[1], e, self.add())
        negate = bool(self.take("kw", "not"))
        if self.take("kw", "in"):
            self.expect("op", "(")
            items = [self.add()]
            while self.take("op", ","):
                items.append(self.add())
            self.expect("op", ")")
            r = ("in", e, items)
        elif self.take("kw", "between"):
            lo = self.add()
            self.expect("kw", "and")
            r = ("between", e, lo, self.add())
        elif not negate and self.take("kw", "is"):
            neg = bool(self.take("kw", "not"))
            self.expect("kw", "null")
            return ("isnull", e, neg)
        else:
            if negate:
                raise Unsupported("NOT must be followed by IN or BETWEEN here")
            return e
        return ("not", r) if negate else r

    def add(self):
        e = self.mul()
        while (t := self.peek())[0] == "op" and t[1] in "+-":
            self.i += 1
            e = ("arith", t[1], e, self.mul())
        return e

    def mul(self):
        e = self.unary()
        while (t := self.peek())[0] == "op" and t[1] in "*/%":
            self.i += 1
            e = ("arith", t[1], e, self.unary())
        return e

    def unary(self):
        if self.take("op", "-"):
            return ("neg", self.unary())
        return self.primary()

    def primary(self):
        t = self.peek()
        self.i += 1
        kind, val = t
        if kind == "num":
            return ("lit", "num", repr(float(val)))
        if kind == "dur":
            return ("lit", "dur", str(parse_duration(val)))
        if kind == "str":
            return ("lit", "str", sql_str(val))
        if kind == "prop":
            return ("prop", val)
        if kind == "kw" and val in ("true", "false"):
            return ("lit", "bool", val.upper())
        if kind == "kw" and val == "null":
            return ("lit", "null", "NULL")
        if kind == "op" and val == "(":
            e = self.or_()
            self.expect("op", ")")
            return e
        if kind == "name":
            if self.take("op", "("):
                args = []
                if not self.take("op", ")"):
                    args.append(self.or_())
                    while self.take("op", ","):
                        args.append(self.or_())
                    self.expect("op", ")")
                return ("call", val.lower(), args)
            if val.lower() == "event":
                return ("event",)
            return ("name", val)
        raise Unsupported(f"unexpected {val!r}")


PROPERTY = re.compile(r"nullif_json\((p_\d+)\)")


def as_type(sql: str, have: str, want: str, typed: set | None = None) -> str | None:
    """`sql` of type `have` read as `want`: a dynamic (JSON) value of another type is NULL.
    An event property read as a type is a column computed once per line while decoding
    (`<column>_<want>`, added to `typed`), not JSON parsed again at every use."""
    if have == want or have == "null":
        return sql
    if have != "dyn":
        return None
    if typed is not None and want in ("num", "str", "bool") and (m := PROPERTY.fullmatch(sql)):
        typed.add((m.group(1), want))
        return f"{m.group(1)}_{want}"
    if want == "num":
        return f"(CASE WHEN json_type({sql}) IN {NUMERIC_JSON} THEN {sql}::DOUBLE END)"
    if want == "str":
        return f"(CASE WHEN json_type({sql}) = 'VARCHAR' THEN {sql}->>'$' END)"
    if want == "bool":
        return f"(CASE WHEN json_type({sql}) = 'BOOLEAN' THEN {sql}::BOOLEAN END)"
    return None


class Compiler:
    """Translates a parsed expression to (SQL, type). `names(name)` gives a tag's or
    segment's column and type; in `where` filters (given `prop`, which names the column of a
    property), `event` and `properties.*` read the event."""

    def __init__(self, names, prop=None, typed=None):
        self.names, self.prop, self.where = names, prop, prop is not None
        self.typed = typed

    def bool_(self, e):
        s, t = self.c(e)
        if t == "null":
            return "NULL::BOOLEAN"
        s2 = as_type(s, t, "bool", self.typed)
        if s2 is None:
            raise Unsupported(f"not a condition: {e}")
        return s2

    def c(self, e):
        op = e[0]
        if op == "lit":
            return (e[2], e[1])
        if op == "name":
            return self.names(e[1])
        if op == "event" and self.where:
            return ("name", "str")
        if op == "prop" and self.where:
            return (f"nullif_json({self.prop(e[1])})", "dyn")
        if op in ("and", "or"):
            return (f"({self.bool_(e[1])} {op.upper()} {self.bool_(e[2])})", "bool")
        if op == "not":
            return (f"(NOT {self.bool_(e[1])})", "bool")
        if op == "cmp":
            return (self.compare(e[1], self.c(e[2]), self.c(e[3])), "bool")
        if op == "in":
            left = self.c(e[1])
            parts = [self.compare("=", left, self.c(x)) for x in e[2]]
            # SQL's OR gives IN's three-valued result (TRUE, else NULL if any NULL, else FALSE)
            return ("(" + " OR ".join(parts) + ")", "bool")
        if op == "between":
            x = self.c(e[1])
            lo = self.compare(">=", x, self.c(e[2]))
            hi = self.compare("<=", x, self.c(e[3]))
            return (f"({lo} AND {hi})", "bool")
        if op == "isnull":
            s, _ = self.c(e[1])
            return (f"({s} IS {'NOT ' if e[2] else ''}NULL)", "bool")
        if op == "neg":
            s, t = self.c(e[1])
            s = as_type(s, t, "num", self.typed) if t == "dyn" else s
            if t in ("num", "dur", "dyn"):
                return (f"(-{s})", "dur" if t == "dur" else "num")
            return ("NULL", "null")
        if op == "arith":
            return self.arith(e[1], self.c(e[2]), self.c(e[3]))
        if op == "call":
            return self.call(e[1], e[2])
        raise Unsupported(f"{op} is not allowed here")

    def compare(self, op, a, b):
        (sa, ta), (sb, tb) = a, b
        if "null" in (ta, tb):
            return "NULL::BOOLEAN"
        if ta == "dyn" and tb == "dyn":
            raise Unsupported("comparing two dynamic values")
        if ta == "dyn":
            sa, ta = as_type(sa, "dyn", tb, self.typed), tb
        elif tb == "dyn":
            sb, tb = as_type(sb, "dyn", ta, self.typed), ta
        if ta != tb or sa is None or sb is None or ta == "list":
            return "NULL::BOOLEAN"
        return f"({sa} {op} {sb})"

    def arith(self, op, a, b):
        (sa, ta), (sb, tb) = a, b
        if ta == "dyn":
            sa, ta = as_type(sa, "dyn", "num", self.typed), "num"
        if tb == "dyn":
            sb, tb = as_type(sb, "dyn", "num", self.typed), "num"
        result = {
            ("+", "num", "num"): "num", ("-", "num", "num"): "num", ("*", "num", "num"): "num",
            ("/", "num", "num"): "num", ("%", "num", "num"): "num",
            ("+", "ts", "dur"): "ts", ("+", "dur", "ts"): "ts", ("-", "ts", "dur"): "ts",
            ("-", "ts", "ts"): "dur", ("+", "dur", "dur"): "dur", ("-", "dur", "dur"): "dur",
            ("*", "dur", "num"): "dur", ("*", "num", "dur"): "dur", ("/", "dur", "num"): "dur",
            ("/", "dur", "dur"): "num", ("%", "dur", "dur"): "dur",
        }.get((op, ta, tb))
        if result is None:
            return ("NULL", "null")
        if op in "/%":
            num = ta == "num" or result == "num"
            cast = "::DOUBLE" if num else ""
            return (f"finite_or_null({sa}{cast} {op} nullif({sb}{cast}, 0))", result)
        if result == "num":
            return (f"finite_or_null({sa} {op} {sb})", "num")
        return (f"({sa} {op} {sb})", result)

    def call(self, fn, args):
        cs = [self.c(a) for a in args]

        def num(i):
            s, t = cs[i]
            return as_type(s, t, "num") if t in ("num", "dyn", "null") else "NULL::DOUBLE"

        if fn == "now" and not self.where:
            return (NOW, "ts")
        if fn == "coalesce":
            types = {t for _, t in cs} - {"null"}
            if len(types) > 1:  # the first non-NULL argument whatever its type: dynamic
                if "list" in types:
                    raise Unsupported("coalesce mixing lists and other values")
                args = [s if t in ("dyn", "null") else f"to_json({s})" for s, t in cs]
                return (f"coalesce({', '.join(args)})", "dyn")
            return (f"coalesce({', '.join(s for s, _ in cs)})", types.pop() if types else "null")
        if fn in ("days_since", "hour_of_day", "day_of_week"):
            s, t = cs[0]
            if t != "ts":
                return ("NULL", "null")
            if fn == "days_since":
                return (f"floor(({NOW} - {s}) / {DAY_MS})::DOUBLE", "num")
            local = f"local_ms({s})"
            if fn == "hour_of_day":
                hour = f"floor(({local} % {DAY_MS} + {DAY_MS}) % {DAY_MS} / 3600000)::DOUBLE"
                return (hour, "num")
            return (f"((floor({local} / {DAY_MS})::BIGINT + 3) % 7 + 7) % 7 + 1.0", "num")
        if fn == "abs":
            s, t = cs[0]
            if t == "dur":
                return (f"abs({s})", "dur")
            return (f"abs({num(0)})", "num")
        if fn in ("least", "greatest"):
            types = {t for _, t in cs} - {"null"}
            if len(types) != 1 or types & {"dyn", "list"}:
                raise Unsupported(f"{fn} over mixed or dynamic types")
            return (f"{fn}({', '.join(s for s, _ in cs)})", types.pop())
        if fn == "round":
            d = num(1) if len(cs) > 1 else "0.0"
            return (f"round_half_away({num(0)}, {d})", "num")
        if fn == "ln":  # NULL for x <= 0
            return (f"ln(nullif(greatest({num(0)}, 0.0), 0.0))", "num")
        if fn == "exp":
            return (f"finite_or_null(exp({num(0)}))", "num")
        if fn == "sigmoid":
            return (f"sigmoid({num(0)})", "num")
        raise Unsupported(f"function {fn}() here")


# Macros are expanded where they are used: those that read an argument more than once bind
# it once through a lambda, or nested calls (churn_risk in ecommerce.toml) would grow the
# expression exponentially (nullif too is rewritten to a CASE that repeats its argument).
MACROS = """
CREATE OR REPLACE MACRO nullif_json(j) AS CASE WHEN json_type(j) = 'NULL' THEN NULL ELSE j END;
CREATE OR REPLACE MACRO finite_or_null(x) AS
    list_transform([x::DOUBLE], lambda v: CASE WHEN isfinite(v) THEN v END)[1];
CREATE OR REPLACE MACRO round_half_away(x, d) AS list_transform(
    [{'x': x::DOUBLE, 'd': d::DOUBLE, 'm': pow(10.0, d)}],
    lambda a: CASE WHEN a.d IS NULL OR a.d <> trunc(a.d) OR a.x IS NULL THEN NULL
        WHEN NOT isfinite(a.x * a.m) THEN finite_or_null(a.x)
        ELSE finite_or_null(list_transform([a.x * a.m], lambda s:
            sign(s) * (floor(abs(s)) + (abs(s) - floor(abs(s)) >= 0.5)::INT))[1] / a.m) END)[1];
CREATE OR REPLACE MACRO sigmoid(x) AS list_transform([x::DOUBLE], lambda v:
    CASE WHEN v >= 0 THEN 1.0 / (1.0 + exp(-v)) ELSE exp(v) / (1.0 + exp(v)) END)[1];
"""
# ---------------------------------------------------------------------------------------------
# Rules -> SQL


def load_rules(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def window_of(text):
    m = re.fullmatch(r"(\d+)([mhdw])", text or "")
    if not m:
        raise Unsupported(f"bad window {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    return ("d", 7 * n) if unit == "w" else (unit, n)


def value_key_sql(v: str) -> str:
    """The value order of SPEC §4 as a sortable struct: booleans < numbers < strings (by code
    point: DuckDB compares UTF-8 bytes) < the rest by compact JSON text (DuckDB's JSON text is
    compact, keys in input order)."""
    return (f"{{'r': CASE json_type({v}) WHEN 'BOOLEAN' THEN 0 WHEN 'VARCHAR' THEN 2 "
            f"WHEN 'ARRAY' THEN 3 WHEN 'OBJECT' THEN 3 ELSE 1 END, "
            f"'x': CASE WHEN json_type({v}) IN {NUMERIC_JSON} THEN {v}::DOUBLE "
            f"WHEN json_type({v}) = 'BOOLEAN' THEN {v}::BOOLEAN::DOUBLE ELSE 0 END, "
            f"'s': CASE WHEN json_type({v}) = 'VARCHAR' THEN {v}->>'$' "
            f"WHEN json_type({v}) IN ('ARRAY','OBJECT') THEN {v}::VARCHAR ELSE '' END}}")


class Translation:
    """The SQL for one rules file: one row per present user (user_id, every tag in definition
    order, every segment) from the view `live` of surviving events."""

    def __init__(self, rules: dict):
        self.zone = rules.get("time_zone", "UTC")
        self.dedup_ms = parse_duration(rules.get("dedup_window", "7d"))
        self.tags = {t["name"]: t for t in rules.get("tag", [])}
        self.segments = {s["name"]: s for s in rules.get("segment", [])}
        for implicit, kind in (("first_seen", "first_time"), ("last_seen", "last_time")):
            if implicit not in self.tags:
                self.tags[implicit] = {"name": implicit, "kind": kind, "event": "*",
                                       "_implicit": True}
        self.numbers = {n: i for i, n in enumerate(list(self.tags) + list(self.segments))}
        self.props: list[str] = []
        # (property column, type) pairs the SQL reads: computed while decoding (load_events)
        self.typed: set[tuple[str, str]] = set()
        self.types: dict[str, str] = {}
        self.units: set[str] = set()
        self.agg_cols: list[str] = []
        self.top_ctes: list[tuple[str, str]] = []
        self.derived: list[tuple[str, str]] = []
        self.state: dict[str, str] = {}
        for name in list(self.tags) + list(self.segments):
            self.resolve(name)

    def resolve(self, name):
        if name in self.types:
            return (self.col(name), self.types[name])
        if self.state.get(name) == "busy":
            raise Unsupported(f"cycle through {name}")
        self.state[name] = "busy"
        if name in self.segments:
            comp = Compiler(self.resolve)
            when = comp.bool_(Parser(self.segments[name]["when"]).parse())
            self.derived.append((name, f"coalesce({when}, FALSE)"))
            self.types[name] = "bool"
        elif name in self.tags:
            self.types[name] = self.tag(self.tags[name])
        else:
            raise Unsupported(f"unknown name {name!r}")
        return (self.col(name), self.types[name])

    def col(self, name: str) -> str:
        """The SQL column of a tag or segment: numbered, since names are case-sensitive and
        DuckDB's identifiers are not."""
        return f"n_{self.numbers[name]}"

    def prop_col(self, key: str) -> str:
        """The column of `live` holding property `key` as extracted (JSON null kept)."""
        if key not in self.props:
            self.props.append(key)
        return f"p_{self.props.index(key)}"

    def event_filter(self, t):
        ev = t.get("event", "*")
        names = [ev] if isinstance(ev, str) else list(ev)
        cond = ["kind = 't'"]
        if "*" not in names:
            cond.append(f"name IN ({', '.join(sql_str(n) for n in names)})")
        if "where" in t:
            comp = Compiler(lambda n: (_ for _ in ()).throw(Unsupported(f"tag {n} in where")),
                            self.prop_col, self.typed)
            cond.append(comp.bool_(Parser(t["where"]).parse()))
        if "window" in t:
            unit, n = window_of(t["window"])
            self.units.add(unit)
            cond.append(f"b_{unit} > {NOW_B}{unit} - {n}")
        return " AND ".join(f"({c})" for c in cond)

    def tag(self, t):
        kind, name = t["kind"], t["name"]
        col = self.col(name)
        if kind in AGG_KINDS:
            cond = self.event_filter(t)
            prop = t.get("property")
            pcol = self.prop_col(prop) if prop else None
            v = f"nullif_json({pcol})" if prop else None
            if kind in ("sum", "min", "max", "avg"):
                numv = as_type(v, "dyn", "num", self.typed)
            elif kind in ("distinct", "top"):
                self.typed.add((pcol, "key"))  # the value order key (value_key_sql)
            if kind == "count":
                self.agg_cols.append(f"count(*) FILTER (WHERE {cond}) AS {col}")
                return "num"
            if kind in ("first_time", "last_time"):
                f = "min" if kind == "first_time" else "max"
                self.agg_cols.append(f"{f}(ts) FILTER (WHERE {cond}) AS {col}")
                return "ts"
            if kind in ("first", "last"):
                f = "arg_min" if kind == "first" else "arg_max"
                self.agg_cols.append(
                    f"{f}(coalesce({v}, 'null'::JSON), (ts, arrival)) FILTER (WHERE {cond}) "
                    f"AS {col}")
                return "dyn"
            if kind == "sum":
                self.agg_cols.append(f"coalesce(fsum({numv}) FILTER (WHERE {cond}), 0.0) AS {col}")
                return "num"
            if kind in ("min", "max"):
                self.agg_cols.append(f"{kind}({numv}) FILTER (WHERE {cond}) AS {col}")
                return "num"
            if kind == "avg":
                self.agg_cols.append(
                    f"(fsum({numv}) FILTER (WHERE {cond}) / count({numv}) FILTER (WHERE {cond})) "
                    f"AS {col}")
                return "num"
            if kind == "distinct":
                self.agg_cols.append(
                    f"count(DISTINCT {pcol}_key) FILTER (WHERE {cond} AND {v} IS NOT NULL) "
                    f"AS {col}")
                return "num"
            # top: counts per value, then the most frequent, ties to the smallest value; the
            # value printed is the first seen (arrival order) of those equal to it
            k = int(t.get("k", 1))
            per_value = (f"SELECT uid, key, count(*) AS n, arg_min(v, arrival) AS rep "
                         f"FROM (SELECT uid, arrival, {v} AS v, {pcol}_key AS key FROM live "
                         f"WHERE {cond}) WHERE v IS NOT NULL GROUP BY ALL")
            pick = ("arg_min(rep, {'n': -n, 'k': key})" if k == 1
                    else f"to_json(list(rep ORDER BY n DESC, key)[1:{k}])")
            self.top_ctes.append(
                (name, f"SELECT uid, {pick} AS {col} FROM ({per_value}) GROUP BY uid"))
            return "dyn"
        if kind == "profile":
            # the column holds JSON null for an explicit null (a value) and NULL when absent
            key = self.prop_col(t.get("property", t.get("attribute", name)))
            self.agg_cols.append(
                f"nullif_json(arg_max({key}, (ts, arrival)) FILTER "
                f"(WHERE kind = 'p' AND {key} IS NOT NULL)) AS {col}")
            return "dyn"
        comp = Compiler(self.resolve)
        if kind == "expr":
            s, ty = comp.c(Parser(t["expr"]).parse())
            self.derived.append((name, s))
            return ty
        if kind == "tier":
            s, ty = comp.c(Parser(t["of"]).parse())
            # a duration counts as its milliseconds
            s = s if ty == "dur" else as_type(s, ty, "num")
            if s is None:
                raise Unsupported(f"tier {name} of a non-number")
            tiers = sorted(enumerate(t["tiers"]), key=lambda it: (-it[1]["min"], it[0]))
            whens = " ".join(f"WHEN {s} >= {float(tr['min'])!r} THEN {sql_str(tr['label'])}"
                             for _, tr in tiers)
            self.derived.append((name, f"CASE {whens} END"))
            return "str"
        if kind == "case":
            whens, values = [], []
            for case in t["cases"]:
                whens.append(comp.bool_(Parser(case["when"]).parse()))
                values.append(self.case_value(comp, case, "value"))
            values.append(self.case_value(comp, t, "else"))
            types = {ty for _, ty in values} - {"null"}
            if len(types) > 1:  # values of several types: the tag is dynamic (JSON)
                if "list" in types:
                    raise Unsupported(f"case {name} mixing lists and other values")
                values = [(v if ty in ("dyn", "null") else f"to_json({v})", "dyn")
                          for v, ty in values]
                types = {"dyn"}
            arms = " ".join(f"WHEN {w} THEN {v}" for w, (v, _) in zip(whens, values))
            self.derived.append((name, f"CASE {arms} ELSE {values[-1][0]} END"))
            return types.pop() if types else "null"
        if kind == "nearest":
            feats = []
            for f in t["features"]:
                s, ty = comp.c(Parser(f).parse())
                # timestamps and durations count as milliseconds; other non-numbers make NULL
                s = s if ty in ("ts", "dur") else as_type(s, ty, "num") or "NULL"
                feats.append(f"({s})::DOUBLE")
            any_null = " OR ".join(f"{f} IS NULL" for f in feats)
            cands = ", ".join(
                "{'d': " + " + ".join(f"pow({f} - {float(c)!r}, 2)" for f, c in zip(feats, vec))
                + f", 'n': {sql_str(cn)}}}" for cn, vec in t["centroids"].items())
            self.derived.append(
                (name, f"CASE WHEN {any_null} THEN NULL ELSE list_min([{cands}]).n END"))
            return "str"
        raise Unsupported(f"tag kind {kind}")

    def case_value(self, comp, table, key):
        if key in table:
            v = table[key]
            if isinstance(v, bool):
                return ("TRUE" if v else "FALSE", "bool")
            if isinstance(v, (int, float)):
                return (repr(float(v)), "num")
            if isinstance(v, str):
                return (sql_str(v), "str")
            raise Unsupported(f"case value {v!r}")
        if key + "_expr" in table:
            return comp.c(Parser(table[key + "_expr"]).parse())
        return ("NULL", "null")

    def users_sql(self) -> str:
        ctes = [f"agg AS (SELECT uid, {', '.join(self.agg_cols)} FROM live GROUP BY uid)"]
        ctes += [f"top_{self.col(n)} AS ({sql})" for n, sql in self.top_ctes]
        joined = "agg" + "".join(
            f" LEFT JOIN top_{self.col(n)} USING (uid)" for n, _ in self.top_ctes)
        ctes.append(f"d0 AS (SELECT * FROM {joined})")
        for i, (n, sql) in enumerate(self.derived, 1):
            ctes.append(f"d{i} AS (SELECT *, {sql} AS {self.col(n)} FROM d{i - 1})")
        cols = [n for n, t in self.tags.items() if not t.get("_implicit")] + list(self.segments)
        return ("WITH " + ",\n".join(ctes) + "\nSELECT uid, " + ", ".join(map(self.col, cols))
                + f" FROM d{len(self.derived)} ORDER BY uid")
