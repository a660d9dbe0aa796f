#!/usr/bin/env python3
"""tagstream test oracle: an independent, from-scratch *batch* computation of the
state dump described in SPEC.md section 5.

Written from the specification alone (no knowledge of the Rust engine), so that
differential tests can compare the engine's `tagstream dump` against it.

Standard library only (Python 3.11+: tomllib, zoneinfo).

    python3 tests/oracle/oracle.py --rules RULES.toml --input EVENTS.ndjson[.gz]
        [--format native|segment|sensors] [--now MILLIS|RFC3339]
        [--max-event-bytes N] [--stats]

How it works (deliberately simple, no incremental state):
  1. decode every input line (file order = arrival order) with the rules of SPEC §2;
     rejected lines are dropped (optionally counted with --stats);
  2. replay arrival order only for what depends on it: the event clock (max applied
     event time), dedup by event id, `delete`, and the profile operations that read the
     current value (profile_set_once, profile_increment, profile_append);
  3. evaluate every tag and segment of every present user at engine time `now`
     directly from the surviving events;
  4. print the dump: NDJSON sorted by user_id (UTF-8 byte order).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import math
import re
import sys
import tomllib
from zoneinfo import ZoneInfo

# --------------------------------------------------------------------------------------
# constants

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
DURATION_UNITS = {"s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
DEFAULT_DEDUP_WINDOW = 7 * DAY
MAX_NESTING = 64
USER_ID_MAX_BYTES = 256

# timestamps accepted: years 0001..9999 (what an RFC 3339 string can express)
MIN_TS = -62135596800000
MAX_TS = 253402300799999

_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()


class OracleError(Exception):
    """A user error (bad rules, bad flags): exit code 1."""


# --------------------------------------------------------------------------------------
# typed values used by the expression language
#
#   None            NULL
#   bool            boolean
#   int / float     number (never bool)
#   str             string
#   TS              timestamp (epoch ms)
#   DUR             duration (ms)
#   list            list (top with k > 1, JSON arrays)
#   dict            JSON object (only from dynamic values)


class TS:
    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return type(other) is TS and other.v == self.v

    def __hash__(self):
        return hash(("ts", self.v))

    def __repr__(self):
        return f"TS({self.v})"


class DUR:
    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return type(other) is DUR and other.v == self.v

    def __hash__(self):
        return hash(("dur", self.v))

    def __repr__(self):
        return f"DUR({self.v})"


def vtype(v):
    if v is None:
        return "null"
    t = type(v)
    if t is bool:
        return "bool"
    if t is int or t is float:
        return "num"
    if t is str:
        return "str"
    if t is TS:
        return "ts"
    if t is DUR:
        return "dur"
    if t is list:
        return "list"
    if t is dict:
        return "obj"
    return "other"


def is_number(v):
    t = type(v)
    return t is int or t is float


def compact_json(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def value_key(v):
    """Value order of SPEC §4 (top ties, distinct): booleans < numbers < strings <
    arrays/objects (by compact JSON text). Numbers compare numerically (1 == 1.0)."""
    t = type(v)
    if t is bool:
        return (0, 1 if v else 0)
    if t is int or t is float:
        return (1, float(v))
    if t is str:
        return (2, v)
    return (3, compact_json(v))


def deep_key(v):
    """Structural key for equality of lists/objects inside expressions."""
    t = type(v)
    if t is bool:
        return (0, v)
    if t is int or t is float:
        return (1, float(v))
    if t is str:
        return (2, v)
    if t is list:
        return (3, tuple(deep_key(x) for x in v))
    if t is dict:
        return (4, tuple(sorted((k, deep_key(x)) for k, x in v.items())))
    if t is TS:
        return (5, v.v)
    if t is DUR:
        return (6, v.v)
    return (7, repr(v))


def finite(x):
    """Numeric results that are not finite become NULL."""
    if type(x) is float and not math.isfinite(x):
        return None
    return x


# --------------------------------------------------------------------------------------
# durations and windows


_DURATION_RE = re.compile(r"([0-9]+)([smhdw])")


def parse_duration(text, what="duration"):
    if not isinstance(text, str):
        raise OracleError(f"bad {what} {text!r}: expected a string like '7d'")
    m = _DURATION_RE.fullmatch(text.strip())
    if not m:
        raise OracleError(f"bad {what} {text!r}: expected <integer><s|m|h|d|w>")
    return int(m.group(1)) * DURATION_UNITS[m.group(2)]


_WINDOW_RE = re.compile(r"([0-9]+)([mhdw])")


def parse_window(text):
    """Returns (bucket unit, number of buckets). d and w use day buckets."""
    if not isinstance(text, str):
        raise OracleError(f"bad window {text!r}")
    m = _WINDOW_RE.fullmatch(text.strip())
    if not m:
        raise OracleError(f"bad window {text!r}: expected <integer><m|h|d|w>")
    n = int(m.group(1))
    unit = m.group(2)
    if n <= 0:
        raise OracleError(f"bad window {text!r}: must be at least one bucket")
    if unit == "m":
        return (MINUTE, n)
    if unit == "h":
        return (HOUR, n)
    if unit == "d":
        return (DAY, n)
    return (DAY, 7 * n)


# --------------------------------------------------------------------------------------
# time zone helpers


class Zone:
    def __init__(self, name):
        try:
            self.tz = ZoneInfo(name)
        except Exception as e:  # noqa: BLE001
            raise OracleError(f"unknown time_zone {name!r}: {e}") from None
        self.name = name

    def local(self, ms):
        # floor to the second: the local date/hour/minute only depend on it
        return _dt.datetime.fromtimestamp(ms // 1000, self.tz)

    def offset_ms(self, ms):
        off = self.local(ms).utcoffset()
        return off.days * DAY + off.seconds * 1000 + off.microseconds // 1000

    def day_index(self, ms):
        """Local calendar date (proleptic ordinal) holding instant ms."""
        return self.local(ms).toordinal()

    def bucket(self, ms, unit):
        if unit == DAY:
            return self.day_index(ms)
        # minute/hour buckets: real minutes/hours aligned to local clock boundaries
        return (ms + (self.offset_ms(ms) % unit)) // unit

    def hour_of_day(self, ms):
        return self.local(ms).hour

    def day_of_week(self, ms):
        return self.local(ms).isoweekday()


# --------------------------------------------------------------------------------------
# expression language: tokenizer


class ExprError(OracleError):
    pass


_NUM_RE = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?|\.[0-9]+([eE][+-]?[0-9]+)?")
_IDENT_START = re.compile(r"[A-Za-z_]")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROP_NAME_RE = re.compile(r"[A-Za-z0-9_$]+")
KEYWORDS = {"AND", "OR", "NOT", "IN", "BETWEEN", "IS", "NULL", "TRUE", "FALSE"}


def _identchar(c):
    return c.isascii() and (c.isalnum() or c == "_")


def tokenize(src):
    toks = []
    i = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        if c.isdigit() and c.isascii() or (c == "." and i + 1 < n and src[i + 1].isdigit()):
            m = _NUM_RE.match(src, i)
            text = m.group(0)
            j = m.end()
            is_int = text.isdigit()
            if j < n and src[j] in "smhdwSMHDW" and (j + 1 >= n or not _identchar(src[j + 1])):
                if not is_int:
                    raise ExprError(f"bad duration literal {src[i:j + 1]!r} at column {i + 1}")
                toks.append(("dur", int(text) * DURATION_UNITS[src[j].lower()], i))
                i = j + 1
                continue
            if j < n and _identchar(src[j]):
                raise ExprError(f"bad number literal {src[i:j + 1]!r} at column {i + 1}")
            toks.append(("num", int(text) if is_int else float(text), i))
            i = j
            continue
        if c == "'":
            j = i + 1
            out = []
            while True:
                if j >= n:
                    raise ExprError(f"unterminated string starting at column {i + 1}")
                if src[j] == "'":
                    if j + 1 < n and src[j + 1] == "'":
                        out.append("'")
                        j += 2
                        continue
                    break
                out.append(src[j])
                j += 1
            toks.append(("str", "".join(out), i))
            i = j + 1
            continue
        if _IDENT_START.match(c):
            m = _IDENT_RE.match(src, i)
            word = m.group(0)
            j = m.end()
            if word.lower() == "properties" and j < n and src[j] == ".":
                k = j + 1
                if k < n and src[k] == "'":
                    # a single-quoted key (docs/rules.md): '' is a quote inside it
                    key, e = [], k + 1
                    while True:
                        if e >= n:
                            raise ExprError(f"unterminated quoted property name at column {k + 1}")
                        if src[e] == "'":
                            if e + 1 < n and src[e + 1] == "'":
                                key.append("'")
                                e += 2
                                continue
                            break
                        key.append(src[e])
                        e += 1
                    if not key:
                        raise ExprError(f"empty quoted property name at column {k + 1}")
                    toks.append(("prop", "".join(key), i))
                    i = e + 1
                    continue
                if k < n and src[k] in "\"`":
                    q = src[k]
                    end = src.find(q, k + 1)
                    if end < 0:
                        raise ExprError(f"unterminated quoted property name at column {k + 1}")
                    toks.append(("prop", src[k + 1:end], i))
                    i = end + 1
                    continue
                pm = _PROP_NAME_RE.match(src, k)
                if not pm:
                    raise ExprError(f"expected a property name after 'properties.' at column {k + 1}")
                toks.append(("prop", pm.group(0), i))
                i = pm.end()
                continue
            if word.upper() in KEYWORDS:
                toks.append(("kw", word.upper(), i))
            else:
                toks.append(("ident", word, i))
            i = j
            continue
        two = src[i:i + 2]
        if two in ("<=", ">=", "<>", "!="):
            toks.append(("op", two, i))
            i += 2
            continue
        if c in "+-*/%=<>(),":
            toks.append(("op", c, i))
            i += 1
            continue
        raise ExprError(f"unexpected character {c!r} at column {i + 1}")
    toks.append(("eof", None, n))
    return toks


# --------------------------------------------------------------------------------------
# expression language: parser (AST as tuples)
#
#   ("lit", value) ("name", ident) ("prop", name) ("call", fname, [args])
#   ("neg", e) ("not", e) ("and", a, b) ("or", a, b) ("bin", op, a, b)
#   ("cmp", op, a, b) ("isnull", e, negated) ("in", e, [items], negated)
#   ("between", e, lo, hi, negated)

CMP_OPS = {"=", "<>", "!=", "<", "<=", ">", ">="}


class Parser:
    def __init__(self, src):
        self.src = src
        self.toks = tokenize(src)
        self.i = 0

    def peek(self, k=0):
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self):
        t = self.toks[self.i]
        self.i += 1
        return t

    def at(self, kind, val=None, k=0):
        t = self.peek(k)
        return t[0] == kind and (val is None or t[1] == val)

    def expect(self, kind, val=None):
        t = self.next()
        if t[0] != kind or (val is not None and t[1] != val):
            want = val if val is not None else kind
            got = t[1] if t[0] != "eof" else "end of expression"
            raise ExprError(f"expected {want!r} but found {got!r} at column {t[2] + 1} in {self.src!r}")
        return t

    def parse(self):
        e = self.parse_or()
        if not self.at("eof"):
            t = self.peek()
            raise ExprError(f"unexpected {t[1]!r} at column {t[2] + 1} in {self.src!r}")
        return e

    def parse_or(self):
        e = self.parse_and()
        while self.at("kw", "OR"):
            self.next()
            e = ("or", e, self.parse_and())
        return e

    def parse_and(self):
        e = self.parse_not()
        while self.at("kw", "AND"):
            self.next()
            e = ("and", e, self.parse_not())
        return e

    def parse_not(self):
        if self.at("kw", "NOT"):
            self.next()
            return ("not", self.parse_not())
        return self.parse_cmp()

    def parse_cmp(self):
        left = self.parse_add()
        t = self.peek()
        if t[0] == "op" and t[1] in CMP_OPS:
            self.next()
            op = "<>" if t[1] == "!=" else t[1]
            return ("cmp", op, left, self.parse_add())
        if self.at("kw", "IS"):
            self.next()
            neg = False
            if self.at("kw", "NOT"):
                self.next()
                neg = True
            self.expect("kw", "NULL")
            return ("isnull", left, neg)
        neg = False
        if self.at("kw", "NOT") and (self.at("kw", "IN", 1) or self.at("kw", "BETWEEN", 1)):
            self.next()
            neg = True
        if self.at("kw", "IN"):
            self.next()
            self.expect("op", "(")
            items = [self.parse_or()]
            while self.at("op", ","):
                self.next()
                items.append(self.parse_or())
            self.expect("op", ")")
            return ("in", left, items, neg)
        if self.at("kw", "BETWEEN"):
            self.next()
            lo = self.parse_add()
            self.expect("kw", "AND")
            hi = self.parse_add()
            return ("between", left, lo, hi, neg)
        return left

    def parse_add(self):
        e = self.parse_mul()
        while self.at("op", "+") or self.at("op", "-"):
            op = self.next()[1]
            e = ("bin", op, e, self.parse_mul())
        return e

    def parse_mul(self):
        e = self.parse_unary()
        while self.at("op", "*") or self.at("op", "/") or self.at("op", "%"):
            op = self.next()[1]
            e = ("bin", op, e, self.parse_unary())
        return e

    def parse_unary(self):
        if self.at("op", "-"):
            self.next()
            return ("neg", self.parse_unary())
        if self.at("op", "+"):
            self.next()
            return self.parse_unary()
        return self.parse_primary()

    def parse_primary(self):
        t = self.next()
        kind, val, pos = t
        if kind == "num":
            return ("lit", val)
        if kind == "dur":
            return ("lit", DUR(val))
        if kind == "str":
            return ("lit", val)
        if kind == "prop":
            return ("prop", val)
        if kind == "kw":
            if val == "TRUE":
                return ("lit", True)
            if val == "FALSE":
                return ("lit", False)
            if val == "NULL":
                return ("lit", None)
        if kind == "op" and val == "(":
            e = self.parse_or()
            self.expect("op", ")")
            return e
        if kind == "ident":
            if self.at("op", "("):
                self.next()
                args = []
                if not self.at("op", ")"):
                    args.append(self.parse_or())
                    while self.at("op", ","):
                        self.next()
                        args.append(self.parse_or())
                self.expect("op", ")")
                return ("call", val.lower(), args)
            return ("name", val)
        got = val if kind != "eof" else "end of expression"
        raise ExprError(f"unexpected {got!r} at column {pos + 1} in {self.src!r}")


def parse_expr(src):
    if not isinstance(src, str):
        raise ExprError(f"expression must be a string, got {src!r}")
    return Parser(src).parse()


def referenced_names(ast, out=None):
    """Plain identifiers (tag / segment names) an expression reads."""
    if out is None:
        out = []
    if not isinstance(ast, tuple):
        return out
    tag = ast[0]
    if tag == "name":
        if ast[1] not in out:
            out.append(ast[1])
        return out
    for part in ast[1:]:
        if isinstance(part, tuple):
            referenced_names(part, out)
        elif isinstance(part, list):
            for p in part:
                referenced_names(p, out)
    return out


# --------------------------------------------------------------------------------------
# expression language: semantics


def to3(v):
    """Three-valued boolean: True, False or None (NULL / non-boolean)."""
    if v is True or v is False:
        return v
    return None


def compare(a, b):
    """-1/0/1, or None when NULL or of different types (or unordered)."""
    ta = vtype(a)
    tb = vtype(b)
    if ta == "null" or tb == "null" or ta != tb:
        return None
    if ta in ("ts", "dur"):
        x, y = a.v, b.v
    elif ta in ("num", "str", "bool"):
        x, y = a, b
    else:  # lists / objects: equality only
        return 0 if deep_key(a) == deep_key(b) else 2
    if x < y:
        return -1
    if x > y:
        return 1
    return 0


def cmp_op(op, a, b):
    c = compare(a, b)
    if c is None:
        return None
    if c == 2:  # unordered but unequal (lists / objects)
        if op == "=":
            return False
        if op == "<>":
            return True
        return None
    if op == "=":
        return c == 0
    if op == "<>":
        return c != 0
    if op == "<":
        return c < 0
    if op == "<=":
        return c <= 0
    if op == ">":
        return c > 0
    return c >= 0


def arith(op, a, b):
    if a is None or b is None:
        return None
    ta = vtype(a)
    tb = vtype(b)
    if op == "+":
        if ta == "num" and tb == "num":
            return finite(a + b)
        if ta == "ts" and tb == "dur":
            return TS(a.v + b.v)
        if ta == "dur" and tb == "ts":
            return TS(a.v + b.v)
        if ta == "dur" and tb == "dur":
            return DUR(a.v + b.v)
        return None
    if op == "-":
        if ta == "num" and tb == "num":
            return finite(a - b)
        if ta == "ts" and tb == "dur":
            return TS(a.v - b.v)
        if ta == "ts" and tb == "ts":
            return DUR(a.v - b.v)
        if ta == "dur" and tb == "dur":
            return DUR(a.v - b.v)
        return None
    if op == "*":
        if ta == "num" and tb == "num":
            return finite(a * b)
        if ta == "dur" and tb == "num":
            r = finite(a.v * b)
            return None if r is None else DUR(r)
        if ta == "num" and tb == "dur":
            r = finite(a * b.v)
            return None if r is None else DUR(r)
        return None
    if op == "/":
        if ta == "num" and tb == "num":
            if b == 0:
                return None
            return finite(a / b)
        if ta == "dur" and tb == "num":
            if b == 0:
                return None
            r = finite(a.v / b)
            return None if r is None else DUR(r)
        if ta == "dur" and tb == "dur":
            if b.v == 0:
                return None
            return finite(a.v / b.v)
        return None
    if op == "%":
        if ta == "num" and tb == "num":
            if b == 0:
                return None
            return finite(math.fmod(a, b))  # truncated remainder (sign of dividend)
        if ta == "dur" and tb == "dur":
            if b.v == 0:
                return None
            return DUR(math.fmod(a.v, b.v))
        return None
    raise ExprError(f"unknown operator {op}")


def round_half_away(x, digits=0):
    if digits == 0:
        scaled = x
        m = 1.0
    else:
        m = 10.0 ** digits
        scaled = x * m
    if not math.isfinite(scaled):
        return finite(x)
    a = abs(scaled)
    f = math.floor(a)
    r = f + 1 if a - f >= 0.5 else f
    r = math.copysign(float(r), scaled)
    if digits == 0:
        return r
    return finite(r / m)


def _fn_round(x, d=0):
    if not is_number(x):
        return None
    if d is None or not is_number(d):
        return None
    if d != int(d):
        return None
    return round_half_away(float(x), int(d))


def _fn_ln(x):
    if not is_number(x) or x <= 0:
        return None
    return math.log(x)


def _fn_exp(x):
    if not is_number(x):
        return None
    try:
        return finite(math.exp(x))
    except OverflowError:
        return None


def _fn_sigmoid(x):
    if not is_number(x):
        return None
    x = float(x)
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)  # no overflow for x < 0
    return z / (1.0 + z)


def _fn_abs(x):
    t = vtype(x)
    if t == "num":
        return abs(x)
    if t == "dur":
        return DUR(abs(x.v))
    return None


def _least_greatest(args, want):
    vals = [a for a in args if a is not None]
    if not vals:
        return None
    best = vals[0]
    for v in vals[1:]:
        c = compare(v, best)
        if c is None or c == 2:
            return None  # mixed / unordered types
        if c * want > 0:
            best = v
    # a single non-comparable value (list/object) is returned as is
    return best


FUNCTIONS = {
    # name: (min args, max args)
    "now": (0, 0),
    "coalesce": (1, None),
    "days_since": (1, 1),
    "hour_of_day": (1, 1),
    "day_of_week": (1, 1),
    "abs": (1, 1),
    "least": (1, None),
    "greatest": (1, None),
    "round": (1, 2),
    "ln": (1, 1),
    "exp": (1, 1),
    "sigmoid": (1, 1),
}


class Scope:
    """What names an expression may see.

    mode "where": event, properties.*, literals, functions (not now(), no tags).
    mode "rule":  tag names, segment names, now(), functions.
    """

    def __init__(self, mode, zone, tags=(), segments=(), implicit=()):
        self.mode = mode
        self.zone = zone
        self.tags = set(tags)
        self.segments = set(segments)
        self.implicit = set(implicit)


def compile_expr(ast, scope, where_label=""):
    """AST -> closure env -> value.

    In a where-scope env is an Event (attributes name, props); in a rule-scope env
    is a UserEval (tag(), seg(), now)."""
    zone = scope.zone
    kind = ast[0]
    if kind == "lit":
        v = ast[1]
        return lambda env: v
    if kind == "prop":
        if scope.mode != "where":
            raise ExprError(f"{where_label}: properties.{ast[1]} is only allowed in a `where` filter")
        name = ast[1]
        return lambda env: env.props.get(name)
    if kind == "name":
        name = ast[1]
        if scope.mode == "where":
            if name.lower() == "event":
                return lambda env: env.name
            raise ExprError(f"{where_label}: unknown name {name!r} in `where` (only event, properties.*, literals and functions)")
        if name in scope.tags or name in scope.implicit:
            return lambda env: env.tag(name)
        if name in scope.segments:
            return lambda env: env.seg(name)
        raise ExprError(f"{where_label}: unknown name {name!r}")
    if kind == "call":
        fname, args = ast[1], ast[2]
        if fname not in FUNCTIONS:
            raise ExprError(f"{where_label}: unknown function {fname}()")
        lo, hi = FUNCTIONS[fname]
        if len(args) < lo or (hi is not None and len(args) > hi):
            raise ExprError(f"{where_label}: wrong number of arguments to {fname}()")
        cargs = [compile_expr(a, scope, where_label) for a in args]
        if fname == "now":
            if scope.mode == "where":
                raise ExprError(f"{where_label}: now() is not allowed in `where`")
            return lambda env: TS(env.now)
        if fname == "coalesce":
            def f_coalesce(env):
                for c in cargs:
                    v = c(env)
                    if v is not None:
                        return v
                return None
            return f_coalesce
        if fname == "days_since":
            if scope.mode == "where":
                raise ExprError(f"{where_label}: days_since() needs now(), not allowed in `where`")
            a0 = cargs[0]

            def f_days(env):
                v = a0(env)
                if type(v) is not TS:
                    return None
                return (env.now - v.v) // DAY
            return f_days
        if fname == "hour_of_day":
            a0 = cargs[0]

            def f_hod(env):
                v = a0(env)
                if type(v) is not TS:
                    return None
                return zone.hour_of_day(v.v)
            return f_hod
        if fname == "day_of_week":
            a0 = cargs[0]

            def f_dow(env):
                v = a0(env)
                if type(v) is not TS:
                    return None
                return zone.day_of_week(v.v)
            return f_dow
        if fname in ("least", "greatest"):
            want = -1 if fname == "least" else 1
            return lambda env: _least_greatest([c(env) for c in cargs], want)
        if fname == "round":
            if len(cargs) == 1:
                a0 = cargs[0]
                return lambda env: _fn_round(a0(env))
            a0, a1 = cargs
            return lambda env: _fn_round(a0(env), a1(env))
        simple = {"abs": _fn_abs, "ln": _fn_ln, "exp": _fn_exp, "sigmoid": _fn_sigmoid}[fname]
        a0 = cargs[0]
        return lambda env: simple(a0(env))
    if kind == "neg":
        a = compile_expr(ast[1], scope, where_label)

        def f_neg(env):
            v = a(env)
            t = vtype(v)
            if t == "num":
                return -v
            if t == "dur":
                return DUR(-v.v)
            return None
        return f_neg
    if kind == "not":
        a = compile_expr(ast[1], scope, where_label)

        def f_not(env):
            v = to3(a(env))
            return None if v is None else (not v)
        return f_not
    if kind == "and":
        a = compile_expr(ast[1], scope, where_label)
        b = compile_expr(ast[2], scope, where_label)

        def f_and(env):
            x = to3(a(env))
            if x is False:
                return False
            y = to3(b(env))
            if y is False:
                return False
            if x is None or y is None:
                return None
            return True
        return f_and
    if kind == "or":
        a = compile_expr(ast[1], scope, where_label)
        b = compile_expr(ast[2], scope, where_label)

        def f_or(env):
            x = to3(a(env))
            if x is True:
                return True
            y = to3(b(env))
            if y is True:
                return True
            if x is None or y is None:
                return None
            return False
        return f_or
    if kind == "bin":
        op = ast[1]
        a = compile_expr(ast[2], scope, where_label)
        b = compile_expr(ast[3], scope, where_label)
        return lambda env: arith(op, a(env), b(env))
    if kind == "cmp":
        op = ast[1]
        a = compile_expr(ast[2], scope, where_label)
        b = compile_expr(ast[3], scope, where_label)
        return lambda env: cmp_op(op, a(env), b(env))
    if kind == "isnull":
        a = compile_expr(ast[1], scope, where_label)
        neg = ast[2]
        return lambda env: (a(env) is not None) if neg else (a(env) is None)
    if kind == "in":
        a = compile_expr(ast[1], scope, where_label)
        items = [compile_expr(x, scope, where_label) for x in ast[2]]
        neg = ast[3]

        def f_in(env):
            v = a(env)
            result = False
            if v is None:
                result = None
            else:
                for it in items:
                    r = cmp_op("=", v, it(env))
                    if r is True:
                        result = True
                        break
                    if r is None:
                        result = None
            if result is None:
                return None
            return (not result) if neg else result
        return f_in
    if kind == "between":
        a = compile_expr(ast[1], scope, where_label)
        lo = compile_expr(ast[2], scope, where_label)
        hi = compile_expr(ast[3], scope, where_label)
        neg = ast[4]

        def f_between(env):
            v = a(env)
            x = cmp_op(">=", v, lo(env))
            y = cmp_op("<=", v, hi(env))
            if x is False or y is False:
                r = False
            elif x is None or y is None:
                r = None
            else:
                r = True
            if r is None:
                return None
            return (not r) if neg else r
        return f_between
    raise ExprError(f"unknown expression node {kind}")


# --------------------------------------------------------------------------------------
# rules


AGG_KINDS = {"count", "sum", "min", "max", "avg", "distinct", "top",
             "first", "last", "first_time", "last_time"}
WINDOWED_KINDS = {"count", "sum", "min", "max", "avg", "distinct", "top"}
PROPERTY_KINDS = {"sum", "min", "max", "avg", "distinct", "top", "first", "last"}
DERIVED_KINDS = {"expr", "case", "tier", "nearest"}
ALL_KINDS = AGG_KINDS | DERIVED_KINDS | {"profile"}
IMPLICIT_TAGS = ("first_seen", "last_seen")


class Tag:
    def __init__(self, d, index):
        self.raw = d
        self.index = index
        self.name = d.get("name")
        if not isinstance(self.name, str) or not self.name:
            raise OracleError(f"tag #{index + 1}: missing `name`")
        self.kind = d.get("kind")
        if self.kind not in ALL_KINDS:
            raise OracleError(f"tag {self.name}: unknown kind {self.kind!r}")
        self.implicit = False
        # aggregate fields
        self.events = None  # None = every track event
        self.where_src = None
        self.where = None
        self.property = None
        self.window = None  # (unit, n)
        self.k = 1
        if self.kind in AGG_KINDS:
            ev = d.get("event", "*")
            if isinstance(ev, str):
                self.events = None if ev == "*" else frozenset([ev])
            elif isinstance(ev, list) and all(isinstance(x, str) for x in ev):
                self.events = None if "*" in ev else frozenset(ev)
            else:
                raise OracleError(f"tag {self.name}: bad `event` {ev!r}")
            self.where_src = d.get("where")
            if self.kind in PROPERTY_KINDS:
                self.property = d.get("property")
                if not isinstance(self.property, str) or not self.property:
                    raise OracleError(f"tag {self.name}: kind {self.kind} needs `property`")
            if "window" in d:
                if self.kind not in WINDOWED_KINDS:
                    raise OracleError(f"tag {self.name}: kind {self.kind} takes no window")
                self.window = parse_window(d["window"])
            if self.kind == "top":
                k = d.get("k", 1)
                if type(k) is not int or k < 1:
                    raise OracleError(f"tag {self.name}: `k` must be a positive integer")
                self.k = k
        elif self.kind == "profile":
            if "window" in d:
                raise OracleError(f"tag {self.name}: kind profile takes no window")
            # the attribute: `property` (or `attribute`), defaulting to the tag's name
            self.property = d.get("property", d.get("attribute", self.name))
            if not isinstance(self.property, str) or not self.property:
                raise OracleError(f"tag {self.name}: kind profile needs `property`")
        else:
            if "window" in d:
                raise OracleError(f"tag {self.name}: kind {self.kind} takes no window")

    @staticmethod
    def implicit_tag(name):
        kind = "first_time" if name == "first_seen" else "last_time"
        t = Tag({"name": name, "kind": kind, "event": "*"}, -1)
        t.implicit = True
        return t


class Rules:
    def __init__(self, data):
        if not isinstance(data, dict):
            raise OracleError("rules: not a table")
        self.zone = Zone(data.get("time_zone", "UTC"))
        dw = data.get("dedup_window", "7d")
        self.dedup_window = parse_duration(dw, "dedup_window")
        self.max_event_bytes = data.get("max_event_bytes", None)
        tags_raw = data.get("tag", [])
        segs_raw = data.get("segment", [])
        if not isinstance(tags_raw, list) or not isinstance(segs_raw, list):
            raise OracleError("rules: `tag` and `segment` must be arrays of tables")
        self.tags = []
        names = set()
        for i, d in enumerate(tags_raw):
            t = Tag(d, i)
            if t.name in names:
                raise OracleError(f"duplicate tag or segment name {t.name!r}")
            names.add(t.name)
            self.tags.append(t)
        self.segments = []
        for i, d in enumerate(segs_raw):
            name = d.get("name")
            if not isinstance(name, str) or not name:
                raise OracleError(f"segment #{i + 1}: missing `name`")
            if name in names:
                raise OracleError(f"duplicate tag or segment name {name!r}")
            names.add(name)
            if "when" not in d:
                raise OracleError(f"segment {name}: missing `when`")
            self.segments.append((name, d.get("when")))
        self.tag_by_name = {t.name: t for t in self.tags}
        self.segment_names = [s[0] for s in self.segments]

        # implicit first_seen / last_seen when referenced but not defined
        rule_scope_names = set(self.tag_by_name) | set(self.segment_names)
        implicit = [n for n in IMPLICIT_TAGS if n not in rule_scope_names]
        self.rule_scope = Scope("rule", self.zone, tags=self.tag_by_name.keys(),
                                segments=self.segment_names, implicit=implicit)
        self.where_scope = Scope("where", self.zone)

        self.hidden_tags = {}
        for n in implicit:
            self.hidden_tags[n] = Tag.implicit_tag(n)

        # compile
        for t in self.tags:
            self._compile_tag(t)
        self.segment_fns = {}
        for name, src in self.segments:
            self.segment_fns[name] = compile_expr(parse_expr(src), self.rule_scope, f"segment {name}")
        self.all_tags = dict(self.tag_by_name)
        self.all_tags.update(self.hidden_tags)
        self._check_cycles()

    def _compile_tag(self, t):
        lbl = f"tag {t.name}"
        d = t.raw
        if t.kind in AGG_KINDS:
            if t.where_src is not None:
                t.where = compile_expr(parse_expr(t.where_src), self.where_scope, lbl)
        elif t.kind == "expr":
            if "expr" not in d:
                raise OracleError(f"{lbl}: missing `expr`")
            t.fn = compile_expr(parse_expr(d["expr"]), self.rule_scope, lbl)
        elif t.kind == "case":
            cases = d.get("cases")
            if not isinstance(cases, list):
                raise OracleError(f"{lbl}: missing `cases`")
            t.cases = []
            for c in cases:
                if "when" not in c:
                    raise OracleError(f"{lbl}: a case without `when`")
                w = compile_expr(parse_expr(c["when"]), self.rule_scope, lbl)
                if "value_expr" in c:
                    v = compile_expr(parse_expr(c["value_expr"]), self.rule_scope, lbl)
                elif "value" in c:
                    lit = from_toml(c["value"])
                    v = (lambda lit: lambda env: lit)(lit)
                else:
                    raise OracleError(f"{lbl}: a case without `value` or `value_expr`")
                t.cases.append((w, v))
            if "else_expr" in d:
                t.else_fn = compile_expr(parse_expr(d["else_expr"]), self.rule_scope, lbl)
            elif "else" in d:
                lit = from_toml(d["else"])
                t.else_fn = lambda env: lit
            else:
                t.else_fn = lambda env: None
        elif t.kind == "tier":
            if "of" not in d or "tiers" not in d:
                raise OracleError(f"{lbl}: tier needs `of` and `tiers`")
            t.of = compile_expr(parse_expr(d["of"]), self.rule_scope, lbl)
            t.tiers = []
            for x in d["tiers"]:
                if "label" not in x or "min" not in x:
                    raise OracleError(f"{lbl}: every tier needs `label` and `min`")
                m = x["min"]
                if type(m) not in (int, float):
                    raise OracleError(f"{lbl}: tier `min` must be a number")
                t.tiers.append((x["label"], m))
        elif t.kind == "nearest":
            feats = d.get("features")
            cents = d.get("centroids")
            if not isinstance(feats, list) or not isinstance(cents, dict) or not cents:
                raise OracleError(f"{lbl}: nearest needs `features` and `centroids`")
            t.features = [compile_expr(parse_expr(f), self.rule_scope, lbl) for f in feats]
            t.centroids = []
            for cname, vec in cents.items():
                if not isinstance(vec, list) or len(vec) != len(feats) or \
                        not all(type(x) in (int, float) for x in vec):
                    raise OracleError(f"{lbl}: centroid {cname!r} must be {len(feats)} numbers")
                t.centroids.append((cname, [float(x) for x in vec]))

    def _check_cycles(self):
        deps = {}
        for t in self.tags:
            d = t.raw
            srcs = []
            if t.kind == "expr":
                srcs.append(d["expr"])
            elif t.kind == "case":
                for c in d["cases"]:
                    srcs.append(c["when"])
                    if "value_expr" in c:
                        srcs.append(c["value_expr"])
                if "else_expr" in d:
                    srcs.append(d["else_expr"])
            elif t.kind == "tier":
                srcs.append(d["of"])
            elif t.kind == "nearest":
                srcs.extend(d["features"])
            names = []
            for s in srcs:
                referenced_names(parse_expr(s), names)
            deps[t.name] = names
        for name, src in self.segments:
            deps[name] = referenced_names(parse_expr(src))
        state = {}

        def visit(n, path):
            st = state.get(n)
            if st == 1:
                raise OracleError("cycle among rules: " + " -> ".join(path + [n]))
            if st == 2:
                return
            state[n] = 1
            for m in deps.get(n, ()):
                visit(m, path + [n])
            state[n] = 2

        for n in deps:
            visit(n, [])


def from_toml(v):
    """A TOML literal used as a tag value (case `value` / `else`)."""
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    return v


def load_rules(path):
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise OracleError(f"cannot read rules {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise OracleError(f"rules {path}: {e}") from None
    return Rules(data)


def rules_from_text(text):
    return Rules(tomllib.loads(text))


# --------------------------------------------------------------------------------------
# input decoding (SPEC §2)


class Event:
    __slots__ = ("arrival", "uid", "type", "name", "ts", "props", "eid", "op", "_b")

    def __init__(self, uid, type_, name, ts, props, eid, op=None):
        self.arrival = 0
        self.uid = uid
        self.type = type_  # "track" | "profile" | "delete"
        self.name = name  # event name for track
        self.ts = ts
        self.props = props
        self.eid = eid
        self.op = op  # profile: "set" | "set_once" | "unset" | "increment" | "append"
        self._b = None

    def bucket(self, zone, unit):
        b = self._b
        if b is None:
            b = self._b = {}
        v = b.get(unit)
        if v is None:
            v = b[unit] = zone.bucket(self.ts, unit)
        return v

    def __repr__(self):
        return f"Event({self.type} {self.uid!r} {self.name!r} ts={self.ts} id={self.eid!r} {self.props!r})"


class Reject(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


_MISSING = object()
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_U64_MAX = (1 << 64) - 1


def _parse_int(s):
    v = int(s)
    if _I64_MIN <= v <= _U64_MAX:
        return v
    # outside 64-bit integers a JSON number is an f64 (serde_json without
    # arbitrary_precision); out of f64 range it does not parse
    f = float(v)
    if not math.isfinite(f):
        raise ValueError("number out of range")
    return f


def _parse_float(s):
    f = float(s)
    if not math.isfinite(f):
        raise ValueError("number out of range")
    return f


def _parse_constant(s):
    raise ValueError(f"invalid JSON constant {s}")


_decoder = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float,
                            parse_constant=_parse_constant)
_SURROGATE_ESC = re.compile(r"\\u[dD][89a-fA-F]")


def _depth(v):
    t = type(v)
    if t is dict:
        return 1 + max((_depth(x) for x in v.values()), default=0)
    if t is list:
        return 1 + max((_depth(x) for x in v), default=0)
    return 0


def _has_lone_surrogate(v):
    t = type(v)
    if t is str:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if t is dict:
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(x) for k, x in v.items())
    if t is list:
        return any(_has_lone_surrogate(x) for x in v)
    return False


def parse_json_line(raw):
    """bytes -> JSON value, or Reject('invalid_json')."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject("invalid_json", "not UTF-8") from None
    try:
        obj = _decoder.decode(text)
    except (ValueError, RecursionError) as e:
        raise Reject("invalid_json", str(e)) from None
    if text.count("{") + text.count("[") > MAX_NESTING and _depth(obj) > MAX_NESTING:
        raise Reject("invalid_json", "nesting deeper than 64 levels")
    if "\\u" in text and _SURROGATE_ESC.search(text) and _has_lone_surrogate(obj):
        raise Reject("invalid_json", "lone surrogate")
    return obj


_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))")


def parse_rfc3339(s):
    """RFC 3339 string -> epoch ms (fraction truncated), or None when invalid."""
    m = _RFC3339.fullmatch(s)
    if not m:
        return None
    y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7) or ""
    if m.group(8) is None:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        off = (oh * 3600 + om * 60) * (1 if m.group(9) == "+" else -1)
    else:
        off = 0
    if h > 23 or mi > 59 or sec > 60:
        return None
    try:
        ordinal = _dt.date(y, mo, d).toordinal()
    except ValueError:
        return None
    ms = int((frac + "000")[:3])
    secs = (ordinal - _EPOCH_ORDINAL) * 86400 + h * 3600 + mi * 60 + sec - off
    return secs * 1000 + ms


def get_ts(v):
    if v is _MISSING or v is None:
        raise Reject("invalid_timestamp", "missing timestamp")
    t = type(v)
    if t is int:
        ts = v
    elif t is str:
        ts = parse_rfc3339(v)
        if ts is None:
            raise Reject("invalid_timestamp", f"not an RFC 3339 time with an offset: {v!r}")
    else:
        raise Reject("invalid_timestamp", f"timestamp must be integer ms or RFC 3339: {v!r}")
    if not (MIN_TS <= ts <= MAX_TS):
        raise Reject("invalid_timestamp", f"timestamp out of range: {v!r}")
    return ts


def get_uid(v):
    if v is _MISSING or v is None:
        raise Reject("missing_user_id")
    t = type(v)
    if t is int:
        return str(v)
    if t is str:
        if v == "" or len(v.encode("utf-8")) > USER_ID_MAX_BYTES:
            raise Reject("invalid_user_id")
        return v
    raise Reject("invalid_user_id")


def get_event_name(v):
    if type(v) is not str or v == "":
        raise Reject("missing_event")
    return v


def get_props(v):
    if v is _MISSING or v is None:
        return {}
    if type(v) is not dict:
        raise Reject("invalid_properties")
    return v


def get_eid(v):
    """event_id / messageId / _track_id: a non-empty string, or an integer used as
    its decimal string; anything else means "no id"."""
    t = type(v)
    if t is str:
        return v if v else None
    if t is int:
        return str(v)
    return None


def decode_native(o):
    typ = o.get("type")
    if typ is None:
        typ = "track"
    if typ not in ("track", "profile", "delete"):
        raise Reject("unknown_type", repr(typ))
    uid = get_uid(o.get("user_id", _MISSING))
    name = get_event_name(o.get("event")) if typ == "track" else None
    ts = get_ts(o.get("ts", _MISSING))
    props = get_props(o.get("properties", _MISSING))
    eid = get_eid(o.get("event_id"))
    return Event(uid, typ, name, ts, props, eid, "set" if typ == "profile" else None)


def decode_segment(o):
    typ = o.get("type")
    if typ is None:
        typ = "track"
    if typ not in ("track", "identify", "page", "screen"):
        raise Reject("unknown_type", repr(typ))
    uv = o.get("userId")
    if uv is None or uv == "":
        # anonymous traffic: Segment sends userId null, RudderStack sends ""
        uv = o.get("anonymousId", _MISSING if uv is None else uv)
    uid = get_uid(uv)
    ts = get_ts(o.get("timestamp", _MISSING))
    eid = get_eid(o.get("messageId"))
    if typ == "identify":
        # rev 2: the top-level traits, or, when absent (null counts as absent),
        # context.traits (RudderStack's SDKs send them only there)
        traits = o.get("traits", _MISSING)
        if traits is _MISSING or traits is None:
            ctx = o.get("context")
            traits = ctx.get("traits", _MISSING) if type(ctx) is dict else _MISSING
        props = get_props(traits)
        return Event(uid, "profile", None, ts, props, eid, "set")
    if typ == "track":
        name = get_event_name(o.get("event"))
        props = get_props(o.get("properties", _MISSING))
        return Event(uid, "track", name, ts, props, eid)
    props = get_props(o.get("properties", _MISSING))
    # page/screen: `name` (and, rev 2, for page only: `category`), when present and not
    # null, is copied into the properties
    copied = ("name", "category") if typ == "page" else ("name",)
    for key in copied:
        v = o.get(key)
        if v is not None:
            props = dict(props)
            props[key] = v
    return Event(uid, "track", typ, ts, props, eid)


SENSORS_PROFILE_OPS = {
    "profile_set": "set",
    "profile_set_once": "set_once",
    "profile_unset": "unset",
    "profile_increment": "increment",  # rev 2
    "profile_append": "append",  # rev 2
}
# rev 2: well-formed messages of these types are neither applied nor dead letters
SENSORS_SKIPPED = {"item_set", "item_delete", "track_id_bind", "track_id_unbind"}
SENSORS_TYPES = {"track", "track_signup", "profile_delete"} | set(SENSORS_PROFILE_OPS)


class Skipped:
    """decode result of a message that is skipped (counted, never applied)."""

    def __init__(self, typ):
        self.type = typ


def decode_sensors(o):
    typ = o.get("type")
    if typ is None:
        typ = "track"
    if typ in SENSORS_SKIPPED:
        return Skipped(typ)
    if typ not in SENSORS_TYPES:
        raise Reject("unknown_type", repr(typ))
    uid = get_uid(o.get("distinct_id", _MISSING))
    is_track = typ in ("track", "track_signup")
    name = get_event_name(o.get("event")) if is_track else None
    ts = get_ts(o.get("time", _MISSING))
    props = get_props(o.get("properties", _MISSING))
    eid = get_eid(o.get("_track_id"))
    if typ == "track":
        return Event(uid, "track", name, ts, props, eid)
    if typ == "track_signup":
        # a track of distinct_id; the anonymous original_id is kept as a property
        orig = o.get("original_id")
        if orig is not None:
            props = dict(props)
            props["$original_id"] = orig
        return Event(uid, "track", name, ts, props, eid)
    if typ == "profile_delete":
        return Event(uid, "delete", None, ts, props, eid)
    op = SENSORS_PROFILE_OPS[typ]
    # `$is_login_id` is a flag about the id, never a profile attribute
    props = {k: v for k, v in props.items() if k != "$is_login_id"}
    if op == "increment":
        for k, v in props.items():
            if not is_number(v):
                raise Reject("invalid_properties", f"increment of {k!r} by a non-number {v!r}")
    return Event(uid, "profile", None, ts, props, eid, op)


DECODERS = {"native": decode_native, "segment": decode_segment, "sensors": decode_sensors}


def decode_line(raw, fmt="native", max_event_bytes=DEFAULT_MAX_EVENT_BYTES):
    """One input line (bytes, without its newline) -> Event, or Skipped.
    Returns None for a blank line; raises Reject for a dead letter."""
    if not raw.strip():
        return None
    if len(raw) > max_event_bytes:
        raise Reject("too_large")
    o = parse_json_line(raw)
    if type(o) is not dict:
        raise Reject("not_an_object")
    return DECODERS[fmt](o)


def read_lines(path):
    if path == "-":
        data = sys.stdin.buffer.read()
    elif path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            data = f.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


# --------------------------------------------------------------------------------------
# arrival-order replay: clock, dedup, delete, profile_set_once


class UserState:
    __slots__ = ("track", "profile", "ids", "present")

    def __init__(self):
        self.track = []  # track events, arrival order
        self.profile = {}  # attr -> (ts, arrival, value): the current winning record
        self.ids = {}  # event id -> event time of the applied copy
        self.present = False


class Stats:
    def __init__(self):
        self.lines = 0
        self.blank = 0
        self.applied = 0
        self.duplicate = 0
        self.skipped = 0
        self.clock = None
        self.dead = {}

    def summary(self):
        dl = sum(self.dead.values())
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.dead.items()))
        return (f"clock={self.clock} lines={self.lines} blank={self.blank} applied={self.applied} "
                f"duplicate={self.duplicate} skipped={self.skipped} dead_letter={dl}"
                + (f" ({parts})" if parts else ""))


def _profile_record(st, attr, ts, arrival, value):
    cur = st.profile.get(attr)
    # largest timestamp wins; on equal timestamps the later arrival (this one) wins
    if cur is None or ts >= cur[0]:
        st.profile[attr] = (ts, arrival, value)


def json_same(a, b):
    """JSON value equality for "values already present" of profile_append: numbers by
    value (1 == 1.0), booleans are not numbers, objects as key sets, arrays in order."""
    ta, tb = type(a), type(b)
    if is_number(a) and is_number(b):
        return a == b
    if ta is not tb:
        return False
    if ta is list:
        return len(a) == len(b) and all(json_same(x, y) for x, y in zip(a, b))
    if ta is dict:
        return a.keys() == b.keys() and all(json_same(a[k], b[k]) for k in a)
    return a == b


def _increment(cur, by):
    """SPEC rev 2 profile_increment: the current value plus the number; a current value
    that is null, absent or not a number counts as 0 (numbers are f64)."""
    base = cur[2] if cur is not None and is_number(cur[2]) else 0
    return float(base) + float(by)


def _append(cur, given):
    """SPEC rev 2 profile_append: the current list (anything else counts as empty) with
    the given values appended, each only when not already present."""
    out = list(cur[2]) if cur is not None and type(cur[2]) is list else []
    # the SDKs send a list of values; any other value is one value (documented choice)
    for v in (given if type(given) is list else [given]):
        if not any(json_same(x, v) for x in out):
            out.append(v)
    return out


def replay(events, dedup_window):
    """Apply decoded events in arrival order.
    Returns (users: uid -> UserState, clock or None, applied count, duplicate count)."""
    users = {}
    clock = None
    applied = 0
    dups = 0
    for arrival, ev in enumerate(events):
        ev.arrival = arrival
        st = users.get(ev.uid)
        if ev.eid is not None and dedup_window > 0 and st is not None:
            prev = st.ids.get(ev.eid)
            if prev is not None and clock is not None and prev >= clock - dedup_window:
                dups += 1
                continue
        applied += 1
        if clock is None or ev.ts > clock:
            clock = ev.ts
        if ev.type == "delete":
            if st is None:
                # a delete of an unknown user creates nothing visible; its id is kept
                # (only so that a retried delete is recognised as a duplicate)
                st = users[ev.uid] = UserState()
            else:
                st.track = []
                st.profile = {}
                st.ids = {}
                st.present = False
            if ev.eid is not None:
                st.ids[ev.eid] = ev.ts
            continue
        if st is None:
            st = users[ev.uid] = UserState()
        st.present = True
        if ev.eid is not None:
            st.ids[ev.eid] = ev.ts
        if ev.type == "track":
            st.track.append(ev)
            continue
        # profile
        if ev.op == "set":
            for attr, value in ev.props.items():
                _profile_record(st, attr, ev.ts, arrival, value)
        elif ev.op == "unset":
            for attr in ev.props:
                _profile_record(st, attr, ev.ts, arrival, None)
        elif ev.op == "increment":
            # the result, computed from the current (winning) value, is a record at the
            # event's time and competes like any value: a late increment loses to the newer
            # current value and changes nothing
            for attr, by in ev.props.items():
                cur = st.profile.get(attr)
                _profile_record(st, attr, ev.ts, arrival, _increment(cur, by))
        elif ev.op == "append":
            for attr, given in ev.props.items():
                cur = st.profile.get(attr)
                _profile_record(st, attr, ev.ts, arrival, _append(cur, given))
        else:  # set_once: only attributes with no value (absent or null) right now
            for attr, value in ev.props.items():
                cur = st.profile.get(attr)
                if cur is None or cur[2] is None:
                    _profile_record(st, attr, ev.ts, arrival, value)
    return users, clock, applied, dups


# --------------------------------------------------------------------------------------
# batch evaluation


class UserEval:
    """Evaluates every tag and segment for one user at engine time `now`."""

    def __init__(self, rules, st, now, match_cache):
        self.rules = rules
        self.st = st
        self.now = now
        self.zone = rules.zone
        self.memo = {}
        self.segmemo = {}
        self.active = set()
        self.match_cache = match_cache  # per user: (events key, where src) -> events
        self.by_name = None

    def _events_for(self, t):
        key = (t.events, t.where_src)
        got = self.match_cache.get(key)
        if got is not None:
            return got
        if t.events is None:
            evs = self.st.track
        else:
            if self.by_name is None:
                by = {}
                for e in self.st.track:
                    by.setdefault(e.name, []).append(e)
                self.by_name = by
            if len(t.events) == 1:
                evs = self.by_name.get(next(iter(t.events)), [])
            else:
                evs = [e for e in self.st.track if e.name in t.events]
        if t.where is not None:
            w = t.where
            evs = [e for e in evs if w(e) is True]
        self.match_cache[key] = evs
        return evs

    def tag(self, name):
        if name in self.memo:
            return self.memo[name]
        if name in self.active:
            raise OracleError(f"cycle through {name}")
        self.active.add(name)
        t = self.rules.all_tags[name]
        v = self._compute(t)
        self.active.discard(name)
        self.memo[name] = v
        return v

    def seg(self, name):
        v = self.segmemo.get(name)
        if v is None:
            if name in self.active:
                raise OracleError(f"cycle through {name}")
            self.active.add(name)
            v = self.rules.segment_fns[name](self) is True
            self.active.discard(name)
            self.segmemo[name] = v
        return v

    def _compute(self, t):
        k = t.kind
        if k in AGG_KINDS:
            evs = self._events_for(t)
            if t.window is not None:
                unit, n = t.window
                zone = self.zone
                hi = zone.bucket(self.now, unit)
                lo = hi - n
                evs = [e for e in evs if lo < e.bucket(zone, unit) <= hi]
            return aggregate(t, evs)
        if k == "profile":
            rec = self.st.profile.get(t.property)
            return None if rec is None else rec[2]
        if k == "expr":
            return t.fn(self)
        if k == "case":
            for w, v in t.cases:
                if w(self) is True:
                    return v(self)
            return t.else_fn(self)
        if k == "tier":
            v = t.of(self)
            if vtype(v) == "num":
                x = v
            elif vtype(v) == "dur":
                x = v.v
            else:
                return None
            best = None
            for label, m in t.tiers:
                if m <= x and (best is None or m > best[1]):
                    best = (label, m)
            return None if best is None else best[0]
        if k == "nearest":
            xs = []
            for f in t.features:
                v = f(self)
                tv = vtype(v)
                if tv == "num":
                    xs.append(float(v))
                elif tv in ("ts", "dur"):
                    xs.append(float(v.v))
                else:
                    return None
            best = None
            for cname, vec in t.centroids:
                d2 = math.fsum((a - b) * (a - b) for a, b in zip(xs, vec))
                if best is None or d2 < best[0] or (d2 == best[0] and cname < best[1]):
                    best = (d2, cname)
            return best[1]
        raise OracleError(f"unknown kind {k}")


def aggregate(t, evs):
    k = t.kind
    if k == "count":
        return len(evs)
    if k == "first_time":
        return TS(min(e.ts for e in evs)) if evs else None
    if k == "last_time":
        return TS(max(e.ts for e in evs)) if evs else None
    if k == "first":
        if not evs:
            return None
        best = evs[0]
        for e in evs:
            if e.ts < best.ts or (e.ts == best.ts and e.arrival < best.arrival):
                best = e
        return best.props.get(t.property)
    if k == "last":
        if not evs:
            return None
        best = evs[0]
        for e in evs:
            if e.ts > best.ts or (e.ts == best.ts and e.arrival > best.arrival):
                best = e
        return best.props.get(t.property)
    p = t.property
    if k in ("sum", "min", "max", "avg"):
        nums = []
        for e in evs:
            v = e.props.get(p)
            tv = type(v)
            if tv is int or tv is float:
                nums.append(float(v))
        if k == "sum":
            return math.fsum(nums) if nums else 0
        if not nums:
            return None
        if k == "min":
            return min(nums)
        if k == "max":
            return max(nums)
        return math.fsum(nums) / len(nums)
    if k == "distinct":
        keys = set()
        for e in evs:
            v = e.props.get(p)
            if v is not None:
                keys.add(value_key(v))
        return len(keys)
    if k == "top":
        counts = {}
        rep = {}
        for e in evs:
            v = e.props.get(p)
            if v is None:
                continue
            key = value_key(v)
            counts[key] = counts.get(key, 0) + 1
            if key not in rep:
                rep[key] = v
        if not counts:
            return None
        ranked = sorted(counts, key=lambda key: (-counts[key], key))
        if t.k == 1:
            return rep[ranked[0]]
        return [rep[key] for key in ranked[:t.k]]
    raise OracleError(f"unknown aggregate {k}")


def to_json_value(v):
    """Typed value -> dump JSON value."""
    t = type(v)
    if t is TS or t is DUR:
        return to_json_value(v.v)
    if t is float:
        if v.is_integer():
            return int(v)
        return v
    if t is list:
        return [to_json_value(x) for x in v]
    return v


def evaluate(rules, users, now):
    """-> list of dump objects sorted by user_id byte order."""
    out = []
    seg_names = sorted(rules.segment_names)
    for uid in sorted((u for u, st in users.items() if st.present), key=lambda u: u.encode("utf-8")):
        st = users[uid]
        ue = UserEval(rules, st, now, {})
        tags = {}
        for t in rules.tags:
            tags[t.name] = to_json_value(ue.tag(t.name))
        segs = [s for s in seg_names if ue.seg(s)]
        out.append({"user_id": uid, "tags": tags, "segments": segs})
    return out


def parse_now(text):
    text = text.strip()
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    v = parse_rfc3339(text)
    if v is None:
        raise OracleError(f"--now: expected epoch milliseconds or an RFC 3339 time, got {text!r}")
    return v


def run(rules, lines, fmt="native", now=None, max_event_bytes=None, stats=None):
    """rules: Rules; lines: iterable of bytes (or str) without newlines.
    Returns the dump as a list of dicts."""
    if fmt not in DECODERS:
        raise OracleError(f"unknown format {fmt!r}")
    if max_event_bytes is None:
        max_event_bytes = rules.max_event_bytes or DEFAULT_MAX_EVENT_BYTES
    if stats is None:
        stats = Stats()
    events = []
    for raw in lines:
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        stats.lines += 1
        try:
            ev = decode_line(raw, fmt, max_event_bytes)
        except Reject as r:
            stats.dead[r.reason] = stats.dead.get(r.reason, 0) + 1
            continue
        if ev is None:
            stats.blank += 1
            continue
        if type(ev) is Skipped:
            # never applied, never a dead letter, never moves the clock
            stats.skipped += 1
            continue
        events.append(ev)
    users, clock, applied, dups = replay(events, rules.dedup_window)
    stats.applied = applied
    stats.duplicate = dups
    stats.clock = clock
    if now is None:
        now = clock
    elif clock is not None and now < clock:
        raise OracleError(f"--now {now} is before the engine time {clock}")
    if now is None:
        return []
    return evaluate(rules, users, now)


def dump_lines(dump):
    return [json.dumps(o, ensure_ascii=False, separators=(",", ":")) for o in dump]


def main(argv=None):
    ap = argparse.ArgumentParser(description="tagstream batch oracle: prints the SPEC §5 state dump")
    ap.add_argument("--rules", required=True)
    ap.add_argument("--input", required=True, help="NDJSON file, .gz, or - for stdin")
    ap.add_argument("--format", default="native", choices=sorted(DECODERS))
    ap.add_argument("--now", default=None, help="engine time (epoch ms or RFC 3339), like replay --advance-to")
    ap.add_argument("--max-event-bytes", type=int, default=None)
    ap.add_argument("--stats", action="store_true", help="print decode/apply counts to stderr")
    args = ap.parse_args(argv)
    try:
        rules = load_rules(args.rules)
        now = parse_now(args.now) if args.now is not None else None
        try:
            lines = read_lines(args.input)
        except OSError as e:
            raise OracleError(f"cannot read input {args.input}: {e}") from None
        stats = Stats()
        dump = run(rules, lines, args.format, now, args.max_event_bytes, stats)
    except OracleError as e:
        print(f"oracle: {e}", file=sys.stderr)
        return 1
    out = sys.stdout
    for line in dump_lines(dump):
        out.write(line)
        out.write("\n")
    out.flush()
    if args.stats:
        print("oracle: " + stats.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
