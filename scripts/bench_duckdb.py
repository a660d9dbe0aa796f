#!/usr/bin/env python3
"""The DuckDB batch of `make bench`: every tag and segment of a rules file, per user, at the
final engine time, computed with DuckDB SQL from the NDJSON file `tagstream gen` writes.

    scripts/bench_duckdb.py --rules config/rules/bench15.toml --input events.ndjson
        [--out dump.ndjson] [--compare tagstream-dump.ndjson] [--threads N]

It is the "batch SQL computation of the same tags" of SPEC §10: the rules file is translated
to one SQL pipeline (decode, event clock, dedup, deletes, bucketed windows, aggregates, then
the derived tags and segments as expressions), so the same TOML drives tagstream and this.
Prints `events/s` of the measured part (reading the file and computing every user's result,
from `import duckdb` done to the last result row fetched) on stderr and as the last stdout line
`duckdb_seconds=<s> events=<n>`. `--out` writes the result as `tagstream dump` lines;
`--compare` reports the users whose tags or segments differ from a dump (tests/oracle/compare.py
rules: numbers within 1e-9 relative) and exits 1 on any difference.

What the SQL models (docs/performance.md): the native format as `tagstream gen` writes it
(track, profile and delete events; epoch-ms or RFC 3339 times); lines that are not objects or
lack a user, a time or (track) an event name are dropped like dead letters, but the finer
dead-letter rules of SPEC §2 are not re-checked. Dedup is exact for retries that repeat the
same event (same id, time and type, as SDK retries do); ids reused with another time or type
are counted and reported on stderr, since set-based SQL cannot follow them in arrival order.

Exit codes: 0 ok (or equal), 1 differences or unsupported rules, 3 duckdb is not importable.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

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
  | (?P<prop>[Pp][Rr][Oo][Pp][Ee][Rr][Tt][Ii][Ee][Ss]\.(?:'(?:[^']|'')+'|"[^"]+"|`[^`]+`|[A-Za-z0-9_$]+(?:\.[A-Za-z0-9_$]+)*))
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


def as_type(sql: str, have: str, want: str) -> str | None:
    """`sql` of type `have` read as `want`: a dynamic (JSON) value of another type is NULL."""
    if have == want or have == "null":
        return sql
    if have != "dyn":
        return None
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

    def __init__(self, names, prop=None):
        self.names, self.prop, self.where = names, prop, prop is not None

    def bool_(self, e):
        s, t = self.c(e)
        if t == "null":
            return "NULL::BOOLEAN"
        s2 = as_type(s, t, "bool")
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
            s = as_type(s, t, "num") if t == "dyn" else s
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
            sa, ta = as_type(sa, "dyn", tb), tb
        elif tb == "dyn":
            sb, tb = as_type(sb, "dyn", ta), ta
        if ta != tb or sa is None or sb is None or ta == "list":
            return "NULL::BOOLEAN"
        return f"({sa} {op} {sb})"

    def arith(self, op, a, b):
        (sa, ta), (sb, tb) = a, b
        if ta == "dyn":
            sa, ta = as_type(sa, "dyn", "num"), "num"
        if tb == "dyn":
            sb, tb = as_type(sb, "dyn", "num"), "num"
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
                return (f"floor(({local} % {DAY_MS} + {DAY_MS}) % {DAY_MS} / 3600000)::DOUBLE", "num")
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
    """The value order of SPEC §4 as a sortable struct: booleans < numbers < strings < the
    rest by compact JSON text (DuckDB's JSON text is compact, keys in input order)."""
    return (f"{{'r': CASE json_type({v}) WHEN 'BOOLEAN' THEN 0 WHEN 'VARCHAR' THEN 2 "
            f"WHEN 'ARRAY' THEN 3 WHEN 'OBJECT' THEN 3 ELSE 1 END, "
            f"'x': CASE WHEN json_type({v}) IN {NUMERIC_JSON} THEN {v}::DOUBLE "
            f"WHEN json_type({v}) = 'BOOLEAN' THEN {v}::BOOLEAN::DOUBLE ELSE 0 END, "
            f"'s': CASE WHEN json_type({v}) IN ('ARRAY','OBJECT','VARCHAR') "
            f"THEN {v}::VARCHAR ELSE '' END}}")


class Translation:
    """The SQL for one rules file: `users` (one row per present user: user_id, every tag in
    definition order, every segment) from the table `live` of surviving events."""

    def __init__(self, rules: dict):
        self.zone = rules.get("time_zone", "UTC")
        self.dedup_ms = parse_duration(rules.get("dedup_window", "7d"))
        self.tags = {t["name"]: t for t in rules.get("tag", [])}
        self.segments = {s["name"]: s for s in rules.get("segment", [])}
        for implicit, kind in (("first_seen", "first_time"), ("last_seen", "last_time")):
            if implicit not in self.tags:
                self.tags[implicit] = {"name": implicit, "kind": kind, "event": "*",
                                       "_implicit": True}
        self.props: list[str] = []
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
            return (f'"{name}"', self.types[name])
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
        return (f'"{name}"', self.types[name])

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
                            self.prop_col)
            cond.append(comp.bool_(Parser(t["where"]).parse()))
        if "window" in t:
            unit, n = window_of(t["window"])
            self.units.add(unit)
            cond.append(f"b_{unit} > {NOW_B}{unit} - {n}")
        return " AND ".join(f"({c})" for c in cond)

    def tag(self, t):
        kind, name = t["kind"], t["name"]
        col = f'"{name}"'
        if kind in AGG_KINDS:
            cond = self.event_filter(t)
            prop = t.get("property")
            v = f"nullif_json({self.prop_col(prop)})" if prop else None
            numv = f"(CASE WHEN json_type({v}) IN {NUMERIC_JSON} THEN {v}::DOUBLE END)" if v else None
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
                    f"{f}(coalesce({v}, 'null'::JSON), (ts, arrival)) FILTER (WHERE {cond}) AS {col}")
                return "dyn"
            if kind == "sum":
                self.agg_cols.append(f"coalesce(fsum({numv}) FILTER (WHERE {cond}), 0.0) AS {col}")
                return "num"
            if kind in ("min", "max"):
                self.agg_cols.append(f"{kind}({numv}) FILTER (WHERE {cond}) AS {col}")
                return "num"
            if kind == "avg":
                self.agg_cols.append(
                    f"(fsum({numv}) FILTER (WHERE {cond}) / count({numv}) FILTER (WHERE {cond})) AS {col}")
                return "num"
            if kind == "distinct":
                self.agg_cols.append(
                    f"count(DISTINCT {value_key_sql(v)}) FILTER (WHERE {cond} AND {v} IS NOT NULL) AS {col}")
                return "num"
            # top: counts per value, then the most frequent, ties to the smallest value; the
            # value printed is the first seen (arrival order) of those equal to it
            k = int(t.get("k", 1))
            per_value = (f"SELECT uid, {value_key_sql('v')} AS key, count(*) AS n, "
                         f"arg_min(v, arrival) AS rep FROM (SELECT uid, arrival, {v} AS v "
                         f"FROM live WHERE {cond}) WHERE v IS NOT NULL GROUP BY ALL")
            pick = ("arg_min(rep, {'n': -n, 'k': key})" if k == 1
                    else f"to_json(list(rep ORDER BY n DESC, key)[1:{k}])")
            self.top_ctes.append((name, f"SELECT uid, {pick} AS {col} FROM ({per_value}) GROUP BY uid"))
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
            s = as_type(s, ty, "num") if ty in ("dyn", "num", "null") else s if ty == "dur" else None
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
                feats.append(f"({as_type(s, ty, 'num') if ty != 'ts' and ty != 'dur' else s})::DOUBLE")
            any_null = " OR ".join(f"{f} IS NULL" for f in feats)
            cands = ", ".join(
                "{'d': " + " + ".join(f"pow({f} - {float(c)!r}, 2)" for f, c in zip(feats, vec))
                + f", 'n': {sql_str(cn)}}}" for cn, vec in t["centroids"].items())
            self.derived.append((name, f"CASE WHEN {any_null} THEN NULL ELSE list_min([{cands}]).n END"))
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
        ctes += [f'"top_{n}" AS ({sql})' for n, sql in self.top_ctes]
        joined = "agg" + "".join(f' LEFT JOIN "top_{n}" USING (uid)' for n, _ in self.top_ctes)
        ctes.append(f"d0 AS (SELECT * FROM {joined})")
        for i, (n, sql) in enumerate(self.derived, 1):
            ctes.append(f'd{i} AS (SELECT *, {sql} AS "{n}" FROM d{i - 1})')
        cols = [n for n, t in self.tags.items() if not t.get("_implicit")] + list(self.segments)
        return ("WITH " + ",\n".join(ctes) + f"\nSELECT uid, {', '.join(f'{chr(34)}{c}{chr(34)}' for c in cols)} "
                f"FROM d{len(self.derived)} ORDER BY uid")


# ---------------------------------------------------------------------------------------------
# Events -> the table `live` (the events that survive dedup and deletes, with bucket indexes)

RFC3339 = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"


def zone_offsets(zone: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """[(from_ms, utc_offset_ms)] covering [lo, hi), each offset change found to the
    millisecond (zone rules change at most a few times a year; probes 6 hours apart)."""
    tz = ZoneInfo(zone)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)

    def offset(ms):
        return (epoch + timedelta(milliseconds=ms)).astimezone(tz).utcoffset() // timedelta(
            milliseconds=1)

    out = [(lo, offset(lo))]
    step = 6 * 3_600_000
    at = lo
    while at < hi:
        nxt = min(at + step, hi)
        if offset(nxt) != out[-1][1]:
            a, b = at, nxt  # offset(a) is the current one, offset(b) the next
            while b - a > 1:
                mid = (a + b) // 2
                a, b = (mid, b) if offset(mid) == out[-1][1] else (a, mid)
            out.append((b, offset(b)))
        at = nxt
    return out


def local_ms_macro(zone: str, lo: int, hi: int) -> str:
    """`local_ms(t)`: t plus the zone's UTC offset at t. Over the span of the data (with 800
    days either side) the offsets come from a table of the zone's changes, which costs one
    comparison per change; outside it, DuckDB's ICU conversion."""
    if zone == "UTC":
        return "CREATE OR REPLACE MACRO local_ms(t) AS t"
    lo, hi = lo - 800 * DAY_MS, hi + 800 * DAY_MS
    spans = zone_offsets(zone, lo, hi)
    offset = str(spans[-1][1])
    if len(spans) > 1:
        whens = "".join(f" WHEN t < {nxt} THEN {off}" for (_, off), (nxt, _) in zip(spans, spans[1:]))
        offset = f"CASE{whens} ELSE {offset} END"
    return (f"CREATE OR REPLACE MACRO local_ms(t) AS CASE WHEN t < {lo} OR t >= {hi} THEN "
            f"epoch_ms(timezone({sql_str(zone)}, epoch_ms(t)::TIMESTAMPTZ)) "
            f"ELSE t + {offset} END")


def load_events(con, path: str, tr: Translation) -> dict:
    """Decodes the file into `events`, then settles what depends on arrival order (dedup and
    deletes) and creates the table `live` of the events that count. Returns the final engine
    time and counts."""
    # A table created in one statement keeps file order (insertion order is preserved), so
    # its rowid is the arrival order. Lines SPEC §2 would dead-letter stay, with valid false.
    # Every property the rules read is extracted here, in one pass over each line's JSON.
    paths = ", ".join(json_path(k) for k in tr.props)
    prop_cols = "".join(f", ps[{i + 1}] AS p_{i}" for i in range(len(tr.props)))
    extract = f", json_extract(properties, [{paths}]) AS ps" if tr.props else ""
    con.execute(f"""
        CREATE TABLE events AS
        SELECT * EXCLUDE (ps){prop_cols}, uid IS NOT NULL AND uid <> '' AND strlen(uid) <= 256 AND ts IS NOT NULL
            AND kind IS NOT NULL AND (kind <> 't' OR coalesce(name, '') <> '') AS valid
        FROM (
          SELECT user_id AS uid,
            CASE coalesce(type, 'track') WHEN 'track' THEN 't' WHEN 'profile' THEN 'p'
              WHEN 'delete' THEN 'd' END AS kind,
            event AS name,
            CASE WHEN json_type(ts) IN ('BIGINT', 'UBIGINT') THEN ts::BIGINT
              WHEN json_type(ts) = 'VARCHAR' AND regexp_full_match(ts->>'$', {sql_str(RFC3339)})
              THEN epoch_us((ts->>'$')::TIMESTAMPTZ) // 1000 END AS ts,
            nullif(event_id, '') AS eid{extract}
          FROM read_json({sql_str(path)}, format = 'newline_delimited', ignore_errors = true,
            columns = {{'user_id': 'VARCHAR', 'type': 'VARCHAR', 'event': 'VARCHAR', 'ts': 'JSON',
                        'properties': 'JSON', 'event_id': 'VARCHAR'}}))""")
    # Only a line whose (user, id) occurs more than once can be a duplicate, and only a delete
    # ends an incarnation: the arrival-order replay runs over those few lines ("cand"), with
    # the event clock before each (the running maximum of earlier times) joined in. Repeats
    # are found by a hash of (user, id): a collision only adds a line to replay exactly.
    w = tr.dedup_ms
    seen = f"(eid IS NOT NULL AND {w} > 0 AND prev_ts >= clock_before - {w})"
    con.execute(f"""
        CREATE TABLE cand AS
        WITH e AS (SELECT rowid AS arrival, uid, kind, ts, eid, hash(uid, eid) AS h
                   FROM events WHERE valid),
        repeated AS (SELECT h FROM e WHERE eid IS NOT NULL GROUP BY h HAVING count(*) > 1),
        c AS (SELECT * EXCLUDE (h) FROM e SEMI JOIN repeated USING (h)
              UNION SELECT * EXCLUDE (h) FROM e WHERE kind = 'd'),
        clock AS (
          SELECT arrival, max(ts) OVER (ORDER BY arrival ROWS BETWEEN UNBOUNDED PRECEDING
            AND 1 PRECEDING) AS clock_before FROM e),
        copies AS (
          SELECT *, lag(ts) OVER w AS prev_ts, lag(kind) OVER w AS prev_kind
          FROM c JOIN clock USING (arrival) WINDOW w AS (PARTITION BY uid, eid ORDER BY arrival)),
        deletes AS (
          SELECT * EXCLUDE (prev_ts), (kind = 'd' AND NOT coalesce({seen}, FALSE)) AS del_applied,
            (eid IS NOT NULL AND prev_ts IS NOT NULL AND (prev_ts <> ts OR prev_kind <> kind))
              AS irregular
          FROM copies),
        incarnations AS (
          SELECT *, sum(del_applied::INT) OVER (PARTITION BY uid ORDER BY arrival
            ROWS UNBOUNDED PRECEDING) AS inc
          FROM deletes),
        dedup AS (
          SELECT *, lag(ts) OVER (PARTITION BY uid, inc, eid ORDER BY arrival) AS prev_ts
          FROM incarnations)
        SELECT arrival, uid, kind, irregular, del_applied,
          CASE WHEN kind = 'd' THEN NOT del_applied ELSE coalesce({seen}, FALSE) END AS dup
        FROM dedup""")
    lines, valid, dups, irregular, now, lo = con.execute("""
        SELECT count(*), count(*) FILTER (WHERE valid),
          (SELECT count(*) FILTER (WHERE dup) FROM cand),
          (SELECT count(*) FILTER (WHERE irregular) FROM cand),
          max(ts) FILTER (WHERE valid AND rowid NOT IN (SELECT arrival FROM cand WHERE dup)),
          min(ts) FILTER (WHERE valid)
        FROM events""").fetchone()
    con.execute(local_ms_macro(tr.zone, lo or 0, (now or 0) + 1))
    buckets = {
        "d": f"floor(local_ms(ts) / {DAY_MS})::BIGINT AS b_d",
        "h": "floor((ts + ((local_ms(ts) - ts) % 3600000 + 3600000) % 3600000) / 3600000)::BIGINT AS b_h",
        "m": "floor((ts + ((local_ms(ts) - ts) % 60000 + 60000) % 60000) / 60000)::BIGINT AS b_m",
    }
    bucket_cols = "".join(f", {buckets[u]}" for u in sorted(tr.units))
    prop_cols = "".join(f", p_{i}" for i in range(len(tr.props)))
    # live: the applied (not duplicate) track and profile lines after the user's last applied
    # delete. A view: the users query reads it once per `top` tag plus once, and the joins
    # below cost less than writing a million rows.
    con.execute(f"""
        CREATE VIEW live AS
        WITH dups AS (SELECT arrival FROM cand WHERE dup),
        last_delete AS (SELECT uid, max(arrival) AS at FROM cand WHERE del_applied GROUP BY uid),
        e AS (SELECT rowid AS arrival, * FROM events WHERE valid AND kind <> 'd')
        SELECT e.arrival, e.uid, kind, name, ts{bucket_cols}{prop_cols}
        FROM e LEFT JOIN last_delete USING (uid) ANTI JOIN dups USING (arrival)
        WHERE last_delete.at IS NULL OR e.arrival > last_delete.at""")
    return {"lines": lines, "dead_letter": lines - valid, "duplicate": dups,
            "irregular_ids": irregular, "now": now}


def now_buckets(con, now: int) -> dict[str, int]:
    local = con.execute(f"SELECT local_ms({now}::BIGINT)").fetchone()[0]
    off = local - now
    return {"d": local // DAY_MS, "h": (now + off % 3_600_000) // 3_600_000,
            "m": (now + off % 60_000) // 60_000}


# ---------------------------------------------------------------------------------------------
# Output


def plain(v):
    """A DuckDB value as the dump prints it (integral floats as integers, as tagstream does)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def to_dump(rows, tr: Translation) -> dict:
    tag_names = [n for n, t in tr.tags.items() if not t.get("_implicit")]
    seg_names = list(tr.segments)
    decoders = []
    for n in tag_names:
        ty = tr.types[n]
        decoders.append(json.loads if ty in ("dyn", "list") else plain)
    out = {}
    for row in rows:
        tags = {n: (None if v is None else dec(v))
                for n, dec, v in zip(tag_names, decoders, row[1:1 + len(tag_names)])}
        segs = sorted(n for n, v in zip(seg_names, row[1 + len(tag_names):]) if v)
        out[row[0]] = {"user_id": row[0], "tags": tags, "segments": segs}
    return out


def compare_with(dump_path: str, ours: dict) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "oracle"))
    import compare  # tests/oracle/compare.py: the dump comparison the differential tests use

    theirs, dup = compare.load(dump_path)
    compared, diffs = compare.compare(theirs, ours)
    differing = {d.split(" ", 2)[1] for d in diffs}
    for d in diffs[:compare.MAX_SHOWN]:
        print(d)
    print(f"{compared} users compared, {len(differing)} users differ ({len(diffs)} differences)"
          + (f", {len(dup)} users listed twice in the dump" if dup else ""))
    return 1 if diffs or dup else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", required=True, help="rules file (TOML)")
    ap.add_argument("--input", required=True, help="NDJSON events (native format)")
    ap.add_argument("--out", help="write the result as `tagstream dump` lines")
    ap.add_argument("--compare", metavar="DUMP", help="compare with a `tagstream dump` output")
    ap.add_argument("--threads", type=int, help="DuckDB threads (default: DuckDB's, every core)")
    ap.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    args = ap.parse_args(argv)
    try:
        import duckdb
    except ImportError:
        print("bench_duckdb: the duckdb Python package is not importable", file=sys.stderr)
        return 3
    try:
        tr = Translation(load_rules(Path(args.rules)))
    except (Unsupported, KeyError, ValueError, tomllib.TOMLDecodeError) as e:
        print(f"bench_duckdb: {args.rules}: not translated to SQL: {e}", file=sys.stderr)
        return 1

    start = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if args.threads:
        con.execute(f"SET threads = {args.threads}")
    con.execute(MACROS)
    stats = load_events(con, args.input, tr)
    sql = tr.users_sql()
    if stats["now"] is not None:
        sql = sql.replace(NOW, str(stats["now"]))
        for unit, b in now_buckets(con, stats["now"]).items():
            sql = sql.replace(f"{NOW_B}{unit}", str(b))
    rows = con.execute(sql).fetchall()
    seconds = time.perf_counter() - start

    events = stats["lines"]
    if not args.quiet:
        print(f"bench_duckdb: {events} events, {len(rows)} users, now={stats['now']}, "
              f"{stats['duplicate']} duplicates, {stats['dead_letter']} dropped lines: "
              f"{seconds:.3f} s, {events / seconds:,.0f} events/s", file=sys.stderr)
    if stats["irregular_ids"]:
        print(f"bench_duckdb: warning: {stats['irregular_ids']} lines reuse an event id with "
              "another time or type; dedup here assumes retries repeat the event",
              file=sys.stderr)
    ours = to_dump(rows, tr)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for o in ours.values():
                f.write(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n")
    status = compare_with(args.compare, ours) if args.compare else 0
    print(f"duckdb_seconds={seconds:.6f} events={events}")
    return status


if __name__ == "__main__":
    sys.exit(main())
