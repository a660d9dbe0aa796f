"""Self-tests of the oracle, with hand-computed expectations.

    python3 -m unittest discover -s tests/oracle
"""

import datetime as dt
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import compare  # noqa: E402
import oracle  # noqa: E402

DAY = 86_400_000
HOUR = 3_600_000
MIN = 60_000


def ms(iso):
    """'2024-10-26T22:30:00Z' -> epoch ms (test input helper)."""
    return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def ev(user, event, ts, props=None, **extra):
    o = {"user_id": user, "event": event, "ts": ts}
    if props is not None:
        o["properties"] = props
    o.update(extra)
    return json.dumps(o)


def prof(user, ts, props, **extra):
    o = {"type": "profile", "user_id": user, "ts": ts, "properties": props}
    o.update(extra)
    return json.dumps(o)


def delete(user, ts, **extra):
    o = {"type": "delete", "user_id": user, "ts": ts}
    o.update(extra)
    return json.dumps(o)


def run(rules_text, lines, fmt="native", now=None):
    rules = oracle.rules_from_text(rules_text)
    out = oracle.run(rules, lines, fmt, now)
    # every dump line must be valid JSON in the documented shape
    for line in oracle.dump_lines(out):
        json.loads(line)
    return {o["user_id"]: o for o in out}


def tags(rules_text, lines, user="u", fmt="native", now=None):
    return run(rules_text, lines, fmt, now)[user]["tags"]


T0 = 1_732_000_000_000  # 2024-11-19T07:06:40Z


class AggregateKinds(unittest.TestCase):
    RULES = """
[[tag]]
name = "n"
kind = "count"
event = "buy"
[[tag]]
name = "n_any"
kind = "count"
event = "*"
[[tag]]
name = "n_list"
kind = "count"
event = ["buy", "view"]
[[tag]]
name = "s"
kind = "sum"
event = "buy"
property = "amount"
[[tag]]
name = "lo"
kind = "min"
event = "buy"
property = "amount"
[[tag]]
name = "hi"
kind = "max"
event = "buy"
property = "amount"
[[tag]]
name = "mean"
kind = "avg"
event = "buy"
property = "amount"
[[tag]]
name = "d"
kind = "distinct"
event = "buy"
property = "amount"
[[tag]]
name = "t"
kind = "top"
event = "buy"
property = "cat"
[[tag]]
name = "f"
kind = "first"
event = "buy"
property = "cat"
[[tag]]
name = "l"
kind = "last"
event = "buy"
property = "cat"
[[tag]]
name = "ft"
kind = "first_time"
event = "buy"
[[tag]]
name = "lt"
kind = "last_time"
event = "buy"
[[tag]]
name = "city"
kind = "profile"
property = "city"
[[tag]]
name = "app_buys"
kind = "count"
event = "buy"
where = "properties.channel = 'app'"
"""

    def test_all_kinds(self):
        lines = [
            ev("u", "buy", T0 + 5, {"amount": 10, "cat": "b", "channel": "app"}),
            ev("u", "buy", T0 + 1, {"amount": 2.5, "cat": "a", "channel": "web"}),
            ev("u", "buy", T0 + 3, {"amount": "12.5", "cat": "b"}),   # string amount skipped
            ev("u", "buy", T0 + 2, {"amount": True, "cat": None}),    # bool skipped, null cat skipped
            ev("u", "buy", T0 + 4, {"amount": None}),
            ev("u", "buy", T0 + 6, {"amount": 10.0, "channel": 5}),   # 10.0 == 10 for distinct
            ev("u", "view", T0 + 7, {"amount": 1000}),
            ev("u", "other", T0 + 8),
            prof("u", T0, {"city": "Paris"}),
        ]
        t = tags(self.RULES, lines)
        self.assertEqual(t["n"], 6)
        self.assertEqual(t["n_any"], 8)
        self.assertEqual(t["n_list"], 7)
        self.assertEqual(t["s"], 22.5)
        self.assertEqual(t["lo"], 2.5)
        self.assertEqual(t["hi"], 10)
        self.assertEqual(t["mean"], 7.5)
        # distinct non-null values: 10 (==10.0), 2.5, "12.5", true
        self.assertEqual(t["d"], 3 + 1)
        self.assertEqual(t["t"], "b")
        self.assertEqual(t["f"], "a")
        self.assertEqual(t["l"], None)  # latest buy (T0+6) lacks cat
        self.assertEqual(t["ft"], T0 + 1)
        self.assertEqual(t["lt"], T0 + 6)
        self.assertEqual(t["city"], "Paris")
        self.assertEqual(t["app_buys"], 1)

    def test_empty_values(self):
        lines = [prof("u", T0, {"age": 3})]  # profile-only user is present
        t = tags(self.RULES, lines)
        self.assertEqual(t, {"n": 0, "n_any": 0, "n_list": 0, "s": 0, "lo": None, "hi": None,
                             "mean": None, "d": 0, "t": None, "f": None, "l": None,
                             "ft": None, "lt": None, "city": None, "app_buys": 0})

    def test_sum_integral_prints_integer_and_floats(self):
        lines = [ev("u", "buy", T0, {"amount": 0.1}), ev("u", "buy", T0, {"amount": 0.2}),
                 ev("u", "buy", T0, {"amount": 1})]
        t = tags(self.RULES, lines)
        self.assertAlmostEqual(t["s"], 1.3, places=12)
        lines = [ev("u", "buy", T0, {"amount": 1.5}), ev("u", "buy", T0, {"amount": 1.5})]
        t = tags(self.RULES, lines)
        self.assertEqual(t["s"], 3)
        self.assertIs(type(t["s"]), int)


class TopAndValueOrder(unittest.TestCase):
    RULES = """
[[tag]]
name = "t1"
kind = "top"
event = "e"
property = "v"
[[tag]]
name = "t3"
kind = "top"
event = "e"
property = "v"
k = 3
[[tag]]
name = "t9"
kind = "top"
event = "e"
property = "v"
k = 9
[[tag]]
name = "d"
kind = "distinct"
event = "e"
property = "v"
"""

    def test_tie_goes_to_smallest_value(self):
        lines = [ev("u", "e", T0, {"v": x}) for x in ["b", "a", "b", "a", "c"]]
        t = tags(self.RULES, lines)
        self.assertEqual(t["t1"], "a")
        self.assertEqual(t["t3"], ["a", "b", "c"])
        self.assertEqual(t["d"], 3)

    def test_value_order_bool_number_string_array(self):
        vals = ["x", 2, [1], True, 10, "10", {"a": 1}, False, 2.0]
        lines = [ev("u", "e", T0, {"v": x}) for x in vals]
        t = tags(self.RULES, lines)
        # counts: 2 (and 2.0) -> 2, everything else 1
        self.assertEqual(t["t1"], 2)
        self.assertEqual(t["t9"], [2, False, True, 10, "10", "x", [1], {"a": 1}])
        self.assertEqual(t["d"], 8)

    def test_count_desc_then_value(self):
        lines = [ev("u", "e", T0, {"v": x}) for x in ["z", "z", "z", "y", "y", 5, 5, "a"]]
        t = tags(self.RULES, lines)
        self.assertEqual(t["t3"], [ "z", 5, "y"])
        self.assertEqual(t["t1"], "z")

    def test_strings_by_code_point(self):
        # "Z" (U+005A) < "a" (U+0061) < "é" (U+00E9) < "😀" (U+1F600)
        lines = [ev("u", "e", T0, {"v": x}) for x in ["😀", "é", "a", "Z"]]
        t = tags(self.RULES, lines)
        self.assertEqual(t["t9"], ["Z", "a", "é", "😀"])
        self.assertEqual(t["t1"], "Z")

    def test_k_list_when_single_and_null_when_empty(self):
        t = tags(self.RULES, [ev("u", "e", T0, {"v": "only"})])
        self.assertEqual(t["t3"], ["only"])
        t = tags(self.RULES, [ev("u", "e", T0, {"w": 1})])
        self.assertIsNone(t["t3"])
        self.assertIsNone(t["t1"])


class FirstLastTies(unittest.TestCase):
    RULES = """
[[tag]]
name = "f"
kind = "first"
event = "e"
property = "v"
[[tag]]
name = "l"
kind = "last"
event = "e"
property = "v"
"""

    def test_equal_timestamps(self):
        lines = [ev("u", "e", T0, {"v": "a1"}), ev("u", "e", T0, {"v": "a2"}),
                 ev("u", "e", T0 + 9, {"v": "z1"}), ev("u", "e", T0 + 9, {"v": "z2"}),
                 ev("u", "e", T0 + 5, {"v": "mid"})]
        t = tags(self.RULES, lines)
        self.assertEqual(t["f"], "a1")
        self.assertEqual(t["l"], "z2")

    def test_late_event_is_first(self):
        lines = [ev("u", "e", T0 + 10, {"v": "x"}), ev("u", "e", T0, {"v": {"nested": [1, 2]}})]
        t = tags(self.RULES, lines)
        self.assertEqual(t["f"], {"nested": [1, 2]})
        self.assertEqual(t["l"], "x")


class Profiles(unittest.TestCase):
    RULES = """
[[tag]]
name = "city"
kind = "profile"
property = "city"
[[tag]]
name = "age"
kind = "profile"
property = "age"
[[tag]]
name = "has_city"
kind = "expr"
expr = "city IS NOT NULL"
"""

    def test_latest_timestamp_wins_ties_by_arrival(self):
        lines = [prof("u", T0 + 10, {"city": "A", "age": 30}),
                 prof("u", T0 + 5, {"city": "OLD"}),   # older: ignored
                 prof("u", T0 + 10, {"city": "B"}),    # tie: later arrival wins
                 prof("u", T0 + 20, {"other": 1})]     # without the key: leaves it alone
        t = tags(self.RULES, lines)
        self.assertEqual(t["city"], "B")
        self.assertEqual(t["age"], 30)

    def test_explicit_null_is_a_value(self):
        lines = [prof("u", T0, {"city": "A"}), prof("u", T0 + 1, {"city": None}),
                 prof("u", T0 - 5, {"city": "C"})]
        t = tags(self.RULES, lines)
        self.assertIsNone(t["city"])
        self.assertIs(t["has_city"], False)

    def test_sensors_set_once_and_unset(self):
        def s(typ, ts, props, uid="u"):
            return json.dumps({"type": typ, "distinct_id": uid, "time": ts, "properties": props})
        lines = [
            s("profile_set_once", T0, {"city": "first", "age": 1}),
            s("profile_set_once", T0 + 5, {"city": "second"}),  # has a value: ignored
            s("profile_unset", T0 + 10, {"age": True}),         # age -> null at T0+10
            s("profile_set_once", T0 + 11, {"age": 2}),         # null = no value: set
        ]
        t = tags(self.RULES, lines, fmt="sensors")
        self.assertEqual(t["city"], "first")
        self.assertEqual(t["age"], 2)

    def test_set_once_older_than_null_loses_by_timestamp(self):
        def s(typ, ts, props):
            return json.dumps({"type": typ, "distinct_id": "u", "time": ts, "properties": props})
        lines = [s("profile_unset", T0 + 10, {"age": True}),
                 s("profile_set_once", T0, {"age": 2})]  # applied, but older than the null
        t = tags(self.RULES, lines, fmt="sensors")
        self.assertIsNone(t["age"])


class NullLogic(unittest.TestCase):
    def expr_tags(self, exprs, lines=None, extra=""):
        rules = extra
        for i, e in enumerate(exprs):
            rules += f'\n[[tag]]\nname = "x{i}"\nkind = "expr"\nexpr = """{e}"""\n'
        if lines is None:
            lines = [ev("u", "e", T0, {})]
        t = tags(rules, lines)
        return [t[f"x{i}"] for i in range(len(exprs))]

    def test_three_valued_logic(self):
        got = self.expr_tags([
            "NULL AND FALSE", "NULL AND TRUE", "NULL OR TRUE", "NULL OR FALSE", "NOT NULL",
            "FALSE AND NULL", "TRUE OR NULL", "NOT FALSE", "NULL = NULL", "NULL IS NULL",
            "1 IS NOT NULL", "TRUE AND FALSE OR TRUE", "TRUE OR FALSE AND FALSE",
            "NOT TRUE AND FALSE",
        ])
        self.assertEqual(got, [False, None, True, None, None, False, True, True, None, True,
                               True, True, True, False])

    def test_in_between(self):
        got = self.expr_tags([
            "2 IN (1, 2)", "3 IN (1, 2)", "3 IN (1, NULL)", "2 IN (NULL, 2)", "3 NOT IN (1, 2)",
            "3 NOT IN (1, NULL)", "NULL IN (1)", "5 BETWEEN 1 AND 5", "6 BETWEEN 1 AND 5",
            "6 NOT BETWEEN 1 AND 5", "0 BETWEEN NULL AND 5", "6 BETWEEN NULL AND 5",
            "'b' IN ('a', 'b')", "'1' IN (1, 2)",
        ])
        self.assertEqual(got, [True, False, None, True, True, None, None, True, False,
                               True, None, False, True, None])

    def test_arithmetic_and_types(self):
        got = self.expr_tags([
            "7 / 2", "7 / 0", "7 % 0", "7 % 3", "-7 % 3", "2 + 3 * 4", "(2 + 3) * 4", "-(2 - 5)",
            "1 = 1.0", "'a' < 'b'", "'B' < 'a'", "7d", "90s + 15m", "2w - 1d", "12h / 2",
            "1 <> 2", "1 != 1",
        ])
        self.assertEqual(got, [3.5, None, None, 1, -1, 14, 20, 3, True, True, True, 7 * DAY,
                               90_000 + 15 * MIN, 13 * DAY, 6 * HOUR, True, False])

    def test_dynamic_type_mismatch_is_null(self):
        extra = ('[[tag]]\nname = "p"\nkind = "profile"\nproperty = "v"\n'
                 '[[tag]]\nname = "cnt"\nkind = "count"\nevent = "e"\nwhere = "properties.n > 5"\n')
        lines = [prof("u", T0, {"v": "12"}), ev("u", "e", T0, {"n": "9"}), ev("u", "e", T0, {"n": 9}),
                 ev("u", "e", T0, {"n": True}), ev("u", "e", T0, {})]
        got = self.expr_tags(["p > 5", "p = '12'", "p + 1", "cnt", "p IS NULL", "coalesce(p > 5, TRUE)"],
                             lines, extra)
        self.assertEqual(got, [None, True, None, 1, False, True])

    def test_single_quoted_property_names(self):
        # docs/rules.md: any key, quoted; '' is a quote inside it
        extra = ('[[tag]]\nname = "ios"\nkind = "count"\nevent = "e"\n'
                 'where = "properties.\'$os\' = \'iOS\' AND properties.\'it\'\'s\' = 1"\n')
        lines = [ev("u", "e", T0, {"$os": "iOS", "it's": 1}), ev("u", "e", T0, {"$os": "iOS"}),
                 ev("u", "e", T0, {"os": "iOS", "it's": 1})]
        self.assertEqual(self.expr_tags(["ios"], lines, extra), [1])

    def test_segments_are_never_null(self):
        rules = """
[[tag]]
name = "p"
kind = "profile"
property = "v"
[[tag]]
name = "b"
kind = "expr"
expr = "p > 5"
[[tag]]
name = "not_seg"
kind = "expr"
expr = "NOT s_null"
[[tag]]
name = "c"
kind = "case"
cases = [ { when = "b", value = "big" }, { when = "NOT s_null", value = "fallthrough" } ]
else = "else"
[[segment]]
name = "s_null"
when = "p > 5"
[[segment]]
name = "s_not"
when = "NOT s_null"
[[segment]]
name = "s_notb"
when = "NOT b"
"""
        t = run(rules, [prof("u", T0, {})])["u"]
        self.assertIsNone(t["tags"]["b"])           # a boolean expr tag keeps NULL
        self.assertIs(t["tags"]["not_seg"], True)   # a segment referenced is FALSE, NOT -> TRUE
        self.assertEqual(t["tags"]["c"], "fallthrough")
        self.assertEqual(t["segments"], ["s_not"])  # NOT b is NULL -> not a member

    def test_case_and_tier(self):
        rules = """
[[tag]]
name = "x"
kind = "sum"
event = "e"
property = "v"
[[tag]]
name = "c"
kind = "case"
cases = [ { when = "x > 100", value = 3 }, { when = "x > 10", value_expr = "x * 2" } ]
else_expr = "x - 1"
[[tag]]
name = "c2"
kind = "case"
cases = [ { when = "x > 1000", value = true } ]
[[tag]]
name = "tr"
kind = "tier"
of = "x"
tiers = [ { label = "mid", min = 20 }, { label = "high", min = 100 }, { label = "low", min = 0 } ]
[[tag]]
name = "tr_neg"
kind = "tier"
of = "x - 1000"
tiers = [ { label = "low", min = 0 } ]
"""
        t = tags(rules, [ev("u", "e", T0, {"v": 20})])
        self.assertEqual((t["c"], t["c2"], t["tr"], t["tr_neg"]), (40, None, "mid", None))
        t = tags(rules, [ev("u", "e", T0, {"v": 5})])
        self.assertEqual((t["c"], t["tr"]), (4, "low"))
        t = tags(rules, [ev("u", "e", T0, {"v": 100})])
        self.assertEqual((t["c"], t["tr"]), (40 * 0 + 200, "high"))
        t = tags(rules, [ev("u", "e", T0, {"v": 101})])
        self.assertEqual((t["c"], t["tr"]), (3, "high"))

    def test_nearest(self):
        rules = """
[[tag]]
name = "a"
kind = "sum"
event = "e"
property = "a"
[[tag]]
name = "b"
kind = "max"
event = "e"
property = "b"
[[tag]]
name = "cl"
kind = "nearest"
features = ["a", "b"]
centroids = { zz = [0, 0], mm = [10, 10], aa = [10, -10] }
"""
        t = tags(rules, [ev("u", "e", T0, {"a": 9, "b": 8})])
        self.assertEqual(t["cl"], "mm")
        t = tags(rules, [ev("u", "e", T0, {"a": 10, "b": 0})])  # tie mm / aa -> "aa"
        self.assertEqual(t["cl"], "aa")
        t = tags(rules, [ev("u", "e", T0, {"a": 10})])          # b is null
        self.assertIsNone(t["cl"])


class Functions(unittest.TestCase):
    def expr(self, e, now, tz="UTC", lines=None):
        rules = (f'time_zone = "{tz}"\n[[tag]]\nname = "ls"\nkind = "last_time"\nevent = "*"\n'
                 f'[[tag]]\nname = "x"\nkind = "expr"\nexpr = """{e}"""\n')
        if lines is None:
            lines = [ev("u", "e", now)]
        return tags(rules, lines, now=now)["x"]

    def test_round_and_math(self):
        self.assertEqual(self.expr("round(2.5)", T0), 3)
        self.assertEqual(self.expr("round(-2.5)", T0), -3)
        self.assertEqual(self.expr("round(0.5)", T0), 1)
        self.assertEqual(self.expr("round(1.25, 1)", T0), 1.3)
        self.assertEqual(self.expr("round(-1.25, 1)", T0), -1.3)
        self.assertEqual(self.expr("round(1234, -2)", T0), 1200)
        self.assertEqual(self.expr("abs(-3)", T0), 3)
        self.assertEqual(self.expr("ln(1)", T0), 0)
        self.assertIsNone(self.expr("ln(0)", T0))
        self.assertEqual(self.expr("exp(0)", T0), 1)
        self.assertEqual(self.expr("sigmoid(0)", T0), 0.5)
        self.assertEqual(self.expr("least(3, NULL, 1)", T0), 1)
        self.assertEqual(self.expr("greatest(3, NULL, 1)", T0), 3)
        self.assertIsNone(self.expr("greatest(NULL, NULL)", T0))
        self.assertEqual(self.expr("coalesce(NULL, 'x', 'y')", T0), "x")

    def test_time_functions(self):
        now = ms("2024-10-27T01:30:00Z")  # Sunday; Berlin 02:30 CET (second pass), UTC 01:30
        self.assertEqual(self.expr("hour_of_day(now())", now, "Europe/Berlin"), 2)
        self.assertEqual(self.expr("hour_of_day(now())", now, "UTC"), 1)
        self.assertEqual(self.expr("day_of_week(now())", now, "Europe/Berlin"), 7)
        self.assertEqual(self.expr("day_of_week(now() + 1d)", now, "Europe/Berlin"), 1)
        # 2024-10-26T23:30Z is still Saturday in UTC but Sunday in Berlin
        self.assertEqual(self.expr("day_of_week(now())", ms("2024-10-26T23:30:00Z"), "Europe/Berlin"), 7)
        self.assertEqual(self.expr("day_of_week(now())", ms("2024-10-26T23:30:00Z"), "UTC"), 6)
        self.assertIsNone(self.expr("hour_of_day(NULL)", now))
        lines = [ev("u", "e", now - 3 * DAY + 1), ev("v", "e", now)]
        rules = ('[[tag]]\nname = "f"\nkind = "first_time"\nevent = "*"\n'
                 '[[tag]]\nname = "ds"\nkind = "expr"\nexpr = "days_since(f)"\n'
                 '[[tag]]\nname = "age"\nkind = "expr"\nexpr = "now() - f"\n'
                 '[[tag]]\nname = "recent"\nkind = "expr"\nexpr = "f > now() - 3d"\n')
        d = run(rules, lines, now=now + 1)
        self.assertEqual(d["u"]["tags"], {"f": now - 3 * DAY + 1, "ds": 3, "age": 3 * DAY,
                                          "recent": False})
        self.assertEqual(d["v"]["tags"], {"f": now, "ds": 0, "age": 1, "recent": True})


class Windows(unittest.TestCase):
    def rules(self, window, tz="Europe/Berlin"):
        return (f'time_zone = "{tz}"\n[[tag]]\nname = "c"\nkind = "count"\nevent = "e"\n'
                f'window = "{window}"\n[[tag]]\nname = "s"\nkind = "sum"\nevent = "e"\n'
                f'property = "v"\nwindow = "{window}"\n[[tag]]\nname = "total"\nkind = "count"\nevent = "e"\n')

    def count_at(self, window, times, now, tz="Europe/Berlin"):
        lines = [ev("u", "e", t, {"v": 1}) for t in times]
        t = tags(self.rules(window, tz), lines, now=now)
        self.assertEqual(t["total"], len(times))
        self.assertEqual(t["c"], t["s"])
        return t["c"]

    def test_local_midnight_across_dst_end(self):
        # Europe/Berlin leaves summer time on 2024-10-27 at 03:00 CEST -> 02:00 CET:
        # local day 2024-10-27 runs from 2024-10-26T22:00Z to 2024-10-27T23:00Z (25 h).
        now = ms("2024-10-27T23:30:00Z")  # local 2024-10-28 00:30 CET
        times = [
            ms("2024-10-26T21:59:59.999Z"),  # local 2024-10-26 23:59:59.999: outside 2d
            ms("2024-10-26T22:00:00Z"),      # local 2024-10-27 00:00 CEST: in 2d
            ms("2024-10-27T22:59:59.999Z"),  # local 2024-10-27 23:59:59.999 CET: in 2d, out of 1d
            ms("2024-10-27T23:00:00Z"),      # local 2024-10-28 00:00 CET: in 1d
        ]
        self.assertEqual(self.count_at("1d", times, now), 1)
        self.assertEqual(self.count_at("2d", times, now), 3)
        self.assertEqual(self.count_at("3d", times, now), 4)
        # the same instants in UTC days: 2024-10-26, 26, 27, 27; now is on the 27th
        self.assertEqual(self.count_at("1d", times, now, "UTC"), 2)
        self.assertEqual(self.count_at("2d", times, now, "UTC"), 4)

    def test_local_midnight_across_dst_start(self):
        # 2024-03-31: 02:00 CET -> 03:00 CEST, a 23-hour day: 2024-03-30T23:00Z .. 2024-03-31T22:00Z
        now = ms("2024-03-31T21:59:59.999Z")  # local 23:59:59.999 CEST on 03-31
        times = [ms("2024-03-30T22:59:59.999Z"), ms("2024-03-30T23:00:00Z"), ms("2024-03-31T21:00:00Z")]
        self.assertEqual(self.count_at("1d", times, now), 2)
        self.assertEqual(self.count_at("1d", times, now + 1), 0)  # local 04-01 00:00
        self.assertEqual(self.count_at("2d", times, now + 1), 2)

    def test_weeks_are_seven_days(self):
        now = ms("2024-11-19T12:00:00Z")
        times = [now - 13 * DAY, now - 14 * DAY]
        self.assertEqual(self.count_at("2w", times, now, "UTC"), 1)
        self.assertEqual(self.count_at("14d", times, now, "UTC"), 1)
        self.assertEqual(self.count_at("15d", times, now, "UTC"), 2)

    def test_hour_buckets(self):
        # Berlin: whole-hour offset, hour buckets are UTC hours even across the DST change
        now = ms("2024-10-27T01:30:00Z")
        times = [ms("2024-10-26T23:59:59.999Z"), ms("2024-10-27T00:00:00Z"), ms("2024-10-27T01:29:00Z")]
        self.assertEqual(self.count_at("2h", times, now), 2)
        self.assertEqual(self.count_at("1h", times, now), 1)
        self.assertEqual(self.count_at("3h", times, now), 3)
        # Asia/Kolkata (+05:30): local hours start at UTC :30
        now = ms("2024-01-01T10:45:00Z")  # local 16:15
        times = [ms("2024-01-01T10:29:59.999Z"), ms("2024-01-01T10:30:00Z")]
        self.assertEqual(self.count_at("1h", times, now, "Asia/Kolkata"), 1)
        self.assertEqual(self.count_at("1h", times, now, "UTC"), 2)
        # America/St_Johns (-03:30 in January)
        now = ms("2024-01-01T10:45:00Z")  # local 07:15
        self.assertEqual(self.count_at("1h", times, now, "America/St_Johns"), 1)

    def test_minute_buckets_and_late_events(self):
        now = ms("2024-01-01T10:45:30Z")
        times = [ms("2024-01-01T10:45:59.999Z") - 60_000 * 10,   # 10:35:59.999 -> out of 10m
                 ms("2024-01-01T10:36:00Z"),                     # in
                 now]
        self.assertEqual(self.count_at("10m", times, now, "UTC"), 2)
        # a late event (arrives last, older time) still counts in its own bucket
        times = [now, ms("2024-01-01T10:44:00Z")]
        self.assertEqual(self.count_at("2m", times, now, "UTC"), 2)


class DeleteAndDedup(unittest.TestCase):
    RULES = """
[[tag]]
name = "n"
kind = "count"
event = "e"
[[tag]]
name = "city"
kind = "profile"
property = "city"
[[tag]]
name = "clock"
kind = "expr"
expr = "now()"
"""

    def test_delete_erases_earlier_arrivals_only(self):
        lines = [
            ev("u", "e", T0 + 100), prof("u", T0 + 100, {"city": "A"}),
            delete("u", T0 + 50),
            ev("u", "e", T0 + 10),  # after the delete in arrival order: kept, even though older
            ev("gone", "e", T0), delete("gone", T0 + 1),
            delete("never", T0 + 200),  # unknown user: creates nothing, but moves the clock
        ]
        d = run(self.RULES, lines)
        self.assertEqual(sorted(d), ["u"])
        self.assertEqual(d["u"]["tags"], {"n": 1, "city": None, "clock": T0 + 200})

    def test_dedup_window(self):
        lines = [
            ev("u", "e", T0, event_id="a"),
            ev("u", "e", T0, event_id="a"),               # duplicate
            ev("v", "e", T0, event_id="a"),               # other user: not a duplicate
            ev("u", "e", T0 + 7 * DAY, event_id="x"),     # clock = T0 + 7d
            ev("u", "e", T0 + 7 * DAY, event_id="a"),     # earlier copy at T0 >= clock - 7d: dup
            ev("u", "e", T0 + 7 * DAY + 1, event_id="y"),  # clock = T0 + 7d + 1
            ev("u", "e", T0 + 1, event_id="a"),           # earlier copy now out of the window
            ev("u", "e", T0 + 2, event_id="a"),           # the re-applied copy (T0+1) is in window
        ]
        d = run(self.RULES, lines)
        self.assertEqual(d["u"]["tags"]["n"], 4)
        self.assertEqual(d["v"]["tags"]["n"], 1)

    def test_duplicate_does_not_move_the_clock(self):
        lines = [ev("u", "e", T0, event_id="a"), ev("u", "e", T0 + 999, event_id="a")]
        d = run(self.RULES, lines)
        self.assertEqual(d["u"]["tags"], {"n": 1, "city": None, "clock": T0})

    def test_dedup_disabled(self):
        rules = 'dedup_window = "0d"\n' + self.RULES
        lines = [ev("u", "e", T0, event_id="a"), ev("u", "e", T0, event_id="a")]
        self.assertEqual(run(rules, lines)["u"]["tags"]["n"], 2)

    def test_custom_dedup_window(self):
        rules = 'dedup_window = "1h"\n' + self.RULES
        lines = [ev("u", "e", T0, event_id="a"), ev("u", "e", T0 + HOUR + 1, event_id="b"),
                 ev("u", "e", T0, event_id="a")]
        self.assertEqual(run(rules, lines)["u"]["tags"]["n"], 3)

    def test_delete_forgets_ids_and_dup_delete(self):
        lines = [ev("u", "e", T0, event_id="a"), delete("u", T0, event_id="d"),
                 ev("u", "e", T0, event_id="a"),   # history erased: applied again
                 delete("u", T0, event_id="d"),    # retried delete: duplicate, user survives
                 ]
        d = run(self.RULES, lines)
        self.assertEqual(d["u"]["tags"]["n"], 1)

    def test_profile_events_are_deduplicated_too(self):
        lines = [prof("u", T0, {"city": "A"}, event_id="p"), prof("u", T0 + 1, {"city": "B"}, event_id="p")]
        self.assertEqual(run(self.RULES, lines)["u"]["tags"]["city"], "A")

    def test_now_flag(self):
        lines = [ev("u", "e", T0)]
        self.assertEqual(run(self.RULES, lines, now=T0 + 5)["u"]["tags"]["clock"], T0 + 5)
        with self.assertRaises(oracle.OracleError):
            run(self.RULES, lines, now=T0 - 1)


class Decoding(unittest.TestCase):
    RULES = """
[[tag]]
name = "n"
kind = "count"
event = "*"
[[tag]]
name = "names"
kind = "top"
event = "*"
property = "name"
k = 5
[[tag]]
name = "plan"
kind = "profile"
property = "plan"
[[tag]]
name = "ft"
kind = "first_time"
event = "*"
"""

    def test_native_rejects(self):
        big = "x" * (1024 * 1024)
        deep = '{"user_id":"u","event":"e","ts":1,"properties":{"a":' + "[" * 62 + "]" * 62 + "}}"  # 64 levels
        deeper = '{"user_id":"u","event":"e","ts":1,"properties":{"a":' + "[" * 63 + "]" * 63 + "}}"  # 65
        bad = [
            "not json", "[1,2]", '"str"', "null", "{}",
            '{"event":"e","ts":1}', '{"user_id":null,"event":"e","ts":1}',
            '{"user_id":"","event":"e","ts":1}', '{"user_id":true,"event":"e","ts":1}',
            '{"user_id":1.5,"event":"e","ts":1}', json.dumps({"user_id": "é" * 129, "event": "e", "ts": 1}),
            '{"user_id":"u","ts":1}', '{"user_id":"u","event":"","ts":1}', '{"user_id":"u","event":5,"ts":1}',
            '{"user_id":"u","event":"e"}', '{"user_id":"u","event":"e","ts":1.0}',
            '{"user_id":"u","event":"e","ts":"2024-11-19T07:06:40"}', '{"user_id":"u","event":"e","ts":true}',
            '{"user_id":"u","event":"e","ts":"1732000000000"}',
            '{"user_id":"u","event":"e","ts":1,"properties":[1]}',
            '{"user_id":"u","event":"e","ts":1,"properties":"x"}',
            '{"type":"identify","user_id":"u","ts":1}', '{"type":5,"user_id":"u","ts":1}',
            '{"user_id":"u","event":"e","ts":1,"properties":{"a":NaN}}',
            '{"user_id":"u","event":"e","ts":1,"properties":{"a":"\\ud800"}}',
            '{"user_id":"u","event":"e","ts":1,"properties":{"a":"' + big + '"}}',
            deeper,
        ]
        good = [
            ev("u", "e", T0), "", "   ", deep,
            '{"user_id":"u","event":"e","ts":1,"properties":null,"type":null}',
            '{"user_id":"u","event":"e","ts":"2024-11-19T07:06:40.123999Z"}',
            '{"user_id":"u","event":"e","ts":"2024-11-19T08:06:40+01:00","properties":{"a":"\\ud83d\\ude00"}}',
            json.dumps({"user_id": "é" * 128, "event": "e", "ts": 1}),
        ]
        stats = oracle.Stats()
        out = oracle.run(oracle.rules_from_text(self.RULES), bad + good, "native", None, None, stats)
        self.assertEqual(sum(stats.dead.values()), len(bad), stats.summary())
        self.assertEqual(stats.blank, 2)
        self.assertEqual(stats.applied, 6)
        d = {o["user_id"]: o["tags"] for o in out}
        self.assertEqual(d["u"]["n"], 5)
        self.assertEqual(d["u"]["ft"], 1)
        self.assertEqual(sorted(d), ["u", "é" * 128])
        self.assertEqual(stats.dead["too_large"], 1)
        self.assertEqual(stats.dead["unknown_type"], 2)
        self.assertEqual(stats.dead["invalid_properties"], 2)
        self.assertEqual(stats.dead["missing_user_id"], 3)
        self.assertEqual(stats.dead["invalid_user_id"], 4)
        self.assertEqual(stats.dead["missing_event"], 3)
        self.assertEqual(stats.dead["invalid_timestamp"], 5)
        self.assertEqual(stats.dead["not_an_object"], 3)

    def test_rfc3339_truncation_and_integer_user(self):
        lines = ['{"user_id":42,"event":"e","ts":"2024-11-19T07:06:40.123999Z"}',
                 '{"user_id":42,"event":"e","ts":"2024-11-19t08:06:40.5+01:00"}']
        t = tags(self.RULES, lines, user="42")
        self.assertEqual(t["ft"], T0 + 123)
        self.assertEqual(t["n"], 2)

    def test_segment_format(self):
        lines = [
            json.dumps({"type": "track", "event": "buy", "userId": "u", "anonymousId": "anon",
                        "timestamp": "2024-11-19T07:06:40Z", "properties": {}, "messageId": "m1"}),
            json.dumps({"type": "track", "event": "buy", "userId": "u",
                        "timestamp": "2024-11-19T07:06:40Z", "messageId": "m1"}),  # duplicate
            json.dumps({"type": "track", "event": "buy", "userId": None, "anonymousId": "anon",
                        "timestamp": "2024-11-19T07:06:41Z"}),
            json.dumps({"type": "track", "event": "buy", "userId": "", "anonymousId": "anon",
                        "timestamp": "2024-11-19T07:06:41Z"}),
            json.dumps({"type": "track", "event": "buy", "anonymousId": "anon",
                        "timestamp": "2024-11-19T07:06:41Z"}),
            json.dumps({"type": "track", "event": "buy", "userId": "",   # no fallback: invalid
                        "timestamp": "2024-11-19T07:06:41Z"}),
            json.dumps({"type": "page", "userId": "u", "name": "Home",
                        "timestamp": "2024-11-19T07:06:42Z", "properties": {"name": "ignored", "x": 1}}),
            json.dumps({"type": "screen", "userId": "u", "name": "Cart",
                        "timestamp": "2024-11-19T07:06:43Z"}),
            json.dumps({"type": "identify", "userId": "u", "traits": {"plan": "pro"},
                        "timestamp": "2024-11-19T07:06:44Z"}),
            json.dumps({"type": "group", "userId": "u", "timestamp": "2024-11-19T07:06:44Z"}),
            json.dumps({"type": "track", "event": "buy", "userId": "u", "timestamp": 1}),  # int ms ok
        ]
        d = run(self.RULES, lines, fmt="segment")
        self.assertEqual(d["u"]["tags"], {"n": 4, "names": ["Cart", "Home"], "plan": "pro", "ft": 1})
        self.assertEqual(d["anon"]["tags"]["n"], 3)
        self.assertNotIn("", d)

    def test_sensors_format(self):
        lines = [
            json.dumps({"type": "track", "event": "buy", "distinct_id": "u", "time": T0,
                        "properties": {"name": "a"}, "_track_id": 123}),
            json.dumps({"type": "track", "event": "buy", "distinct_id": "u", "time": T0,
                        "properties": {"name": "a"}, "_track_id": 123}),  # duplicate
            json.dumps({"type": "profile_set", "distinct_id": "u", "time": T0, "properties": {"plan": "x"}}),
            json.dumps({"type": "profile_delete", "distinct_id": "w", "time": T0}),
            json.dumps({"type": "track", "event": "buy", "distinct_id": "w", "time": T0 + 1}),
            json.dumps({"type": "profile_delete", "distinct_id": "w", "time": T0 + 2}),
            json.dumps({"type": "item_set", "item_type": "book", "item_id": "b", "time": T0,
                        "properties": {"plan": 1}}),
            json.dumps({"type": "profile_remove", "distinct_id": "u", "time": T0}),  # unknown
        ]
        stats = oracle.Stats()
        out = oracle.run(oracle.rules_from_text(self.RULES), lines, "sensors", None, None, stats)
        d = {o["user_id"]: o for o in out}
        self.assertEqual(sorted(d), ["u"])
        self.assertEqual(d["u"]["tags"], {"n": 1, "names": ["a"], "plan": "x", "ft": T0})
        self.assertEqual((stats.skipped, stats.dead), (1, {"unknown_type": 1}))


def sensors(typ, ts, props=None, uid="u", **extra):
    o = {"type": typ, "distinct_id": uid, "time": ts}
    if props is not None:
        o["properties"] = props
    o.update(extra)
    return json.dumps(o)


class SensorsRev2(unittest.TestCase):
    """SPEC §2 rev 2: what the Sensors SDKs send."""

    RULES = """
[[tag]]
name = "score"
kind = "profile"
property = "score"
[[tag]]
name = "likes"
kind = "profile"
property = "likes"
[[tag]]
name = "login"
kind = "profile"
property = "$is_login_id"
[[tag]]
name = "n"
kind = "count"
event = "*"
[[tag]]
name = "orig"
kind = "last"
event = "$SignUp"
property = "$original_id"
[[tag]]
name = "login_flags"
kind = "distinct"
event = "*"
property = "$is_login_id"
"""

    def run_stats(self, lines, now=None):
        stats = oracle.Stats()
        out = oracle.run(oracle.rules_from_text(self.RULES), lines, "sensors", now, None, stats)
        return {o["user_id"]: o["tags"] for o in out}, stats

    def test_track_signup_keeps_original_id(self):
        lines = [sensors("track_signup", T0, {"$lib": "python"}, event="$SignUp", original_id="anon-1"),
                 sensors("track_signup", T0 + 1, {"$original_id": "x"}, uid="w", event="$SignUp",
                         original_id=None),
                 sensors("track_signup", T0 + 2, {}, uid="v")]  # no event name
        d, stats = self.run_stats(lines)
        self.assertEqual(d["u"]["orig"], "anon-1")
        self.assertEqual(d["u"]["n"], 1)
        self.assertEqual(d["w"]["orig"], "x")  # a null original_id adds nothing
        self.assertEqual(stats.dead, {"missing_event": 1})
        self.assertNotIn("anon-1", d)  # identities are not merged

    def test_increment(self):
        lines = [
            sensors("profile_increment", T0 + 100, {"score": 3, "$is_login_id": True}),
            sensors("profile_increment", T0 + 200, {"score": 4.5}),
            sensors("profile_increment", T0 + 150, {"score": 100}),  # late: loses, no effect
            sensors("profile_increment", T0 + 200, {"score": 1}),    # tie: later arrival wins
        ]
        d, stats = self.run_stats(lines)
        self.assertEqual(d["u"]["score"], 8.5)
        self.assertIsNone(d["u"]["login"])
        self.assertEqual(stats.applied, 4)

    def test_increment_of_null_absent_or_non_number(self):
        lines = [
            sensors("profile_set", T0, {"score": "ten"}, uid="a"),
            sensors("profile_increment", T0 + 1, {"score": 2}, uid="a"),
            sensors("profile_set", T0, {"score": 7}, uid="b"),
            sensors("profile_unset", T0 + 1, {"score": True}, uid="b"),
            sensors("profile_increment", T0 + 2, {"score": -1}, uid="b"),
            sensors("profile_increment", T0, {"score": 5}, uid="c"),
            sensors("profile_set", T0, {"score": True}, uid="d"),   # a boolean is not a number
            sensors("profile_increment", T0 + 1, {"score": 1}, uid="d"),
            sensors("profile_set", T0, {"score": [1]}, uid="e"),
            sensors("profile_increment", T0 + 1, {"score": 1}, uid="e"),
        ]
        d, _ = self.run_stats(lines)
        self.assertEqual({u: d[u]["score"] for u in d}, {"a": 2, "b": -1, "c": 5, "d": 1, "e": 1})

    def test_increment_by_non_number_is_invalid(self):
        bad = [{"score": "1"}, {"score": None}, {"score": True}, {"score": [1]}, {"a": 1, "score": {}}]
        lines = [sensors("profile_set", T0, {"score": 1})]
        lines += [sensors("profile_increment", T0 + 1, p) for p in bad]
        lines.append(sensors("profile_increment", T0 + 2, {"$is_login_id": "yes", "score": 2}))
        d, stats = self.run_stats(lines)
        self.assertEqual(stats.dead, {"invalid_properties": len(bad)})
        self.assertEqual(d["u"]["score"], 3)
        self.assertEqual(stats.clock, T0 + 2)

    def test_set_then_late_set_after_increment(self):
        lines = [sensors("profile_increment", T0 + 100, {"score": 3}),
                 sensors("profile_set", T0 + 300, {"score": "ten"}),
                 sensors("profile_increment", T0 + 400, {"score": 2}),
                 sensors("profile_set", T0 + 350, {"score": 50})]  # older than the sum at 400
        d, _ = self.run_stats(lines)
        self.assertEqual(d["u"]["score"], 2)

    def test_append(self):
        lines = [
            sensors("profile_set", T0, {"likes": "not a list"}),
            sensors("profile_append", T0 + 1, {"likes": ["a", "b"], "$is_login_id": True}),
            sensors("profile_append", T0 + 2, {"likes": ["b", "c", "c"]}),
            sensors("profile_append", T0 + 1, {"likes": ["z"]}),  # late: loses
            sensors("profile_set", T0, {"likes": [1, {"x": 1, "y": 2}, True]}, uid="w"),
            sensors("profile_append", T0 + 1, {"likes": [1.0, {"y": 2, "x": 1}, 1, True, "t"]}, uid="w"),
            sensors("profile_append", T0 + 1, {"likes": "one"}, uid="v"),
        ]
        d, _ = self.run_stats(lines)
        self.assertEqual(d["u"]["likes"], ["a", "b", "c"])
        self.assertIsNone(d["u"]["login"])
        self.assertEqual(d["w"]["likes"], [1, {"x": 1, "y": 2}, True, "t"])
        self.assertEqual(d["v"]["likes"], ["one"])

    def test_is_login_id_in_profiles_is_ignored_but_track_keeps_it(self):
        lines = [sensors("profile_set", T0, {"$is_login_id": True}),
                 sensors("profile_set_once", T0, {"$is_login_id": True}),
                 sensors("profile_unset", T0 + 1, {"$is_login_id": True}),
                 sensors("track", T0 + 2, {"$is_login_id": True}, event="e"),
                 sensors("track", T0 + 3, {"$is_login_id": False}, event="e")]
        d, _ = self.run_stats(lines)
        self.assertIsNone(d["u"]["login"])
        self.assertEqual(d["u"]["login_flags"], 2)

    def test_skipped_types_never_apply_nor_move_the_clock(self):
        lines = [sensors("track", T0, {}, event="e"),
                 json.dumps({"type": "item_set", "item_type": "b", "item_id": "1", "time": T0 + DAY}),
                 json.dumps({"type": "item_delete", "item_type": "b", "item_id": "1", "time": T0 + DAY}),
                 sensors("track_id_bind", T0 + DAY, {}, event="$BindID",
                         identities={"$identity_login_id": "u"}),
                 sensors("track_id_unbind", T0 + DAY, {}, uid="new", event="$UnbindID"),
                 json.dumps({"type": "item_set", "time": 1.5, "properties": "x"}),  # still skipped
                 '{"type":"item_set"'  # not JSON: a dead letter
                 ]
        d, stats = self.run_stats(lines)
        self.assertEqual(sorted(d), ["u"])
        self.assertEqual(stats.skipped, 5)
        self.assertEqual(stats.applied, 1)
        self.assertEqual(stats.clock, T0)
        self.assertEqual(stats.dead, {"invalid_json": 1})
        self.assertIn("skipped=5", stats.summary())

    def test_profile_delete_with_login_flag(self):
        lines = [sensors("profile_set", T0, {"score": 1}),
                 sensors("profile_delete", T0 + 1, {"$is_login_id": True})]
        d, _ = self.run_stats(lines)
        self.assertEqual(d, {})


class SegmentRev2(unittest.TestCase):
    RULES = """
[[tag]]
name = "plan"
kind = "profile"
property = "plan"
[[tag]]
name = "cats"
kind = "top"
event = "page"
property = "category"
k = 3
[[tag]]
name = "screen_cats"
kind = "distinct"
event = "screen"
property = "category"
[[tag]]
name = "names"
kind = "top"
event = ["page", "screen"]
property = "name"
k = 5
"""

    def seg(self, **o):
        o.setdefault("userId", "u")
        o.setdefault("timestamp", "2024-11-19T07:06:40Z")
        return json.dumps(o)

    def test_identify_traits(self):
        lines = [
            self.seg(type="identify", context={"traits": {"plan": "ctx"}}),  # RudderStack
            self.seg(type="identify", userId="v", traits={"plan": "top"}, context={"traits": {"plan": "ctx"}}),
            self.seg(type="identify", userId="w", traits=None, context={"traits": {"plan": "ctx"}}),
            self.seg(type="identify", userId="x", traits={}, context={"traits": {"plan": "ctx"}}),
            self.seg(type="identify", userId="y", context="not an object"),
            self.seg(type="identify", userId="z", context={"traits": "bad"}),
            self.seg(type="identify", userId="z2", traits="bad", context={"traits": {"plan": "ctx"}}),
        ]
        stats = oracle.Stats()
        out = oracle.run(oracle.rules_from_text(self.RULES), lines, "segment", None, None, stats)
        d = {o["user_id"]: o["tags"]["plan"] for o in out}
        self.assertEqual(d, {"u": "ctx", "v": "top", "w": "ctx", "x": None, "y": None})
        self.assertEqual(stats.dead, {"invalid_properties": 2})

    def test_page_category(self):
        lines = [
            self.seg(type="page", name="Lipstick", category="beauty", properties={"category": "old"}),
            self.seg(type="page", name="Serum", category="beauty"),
            self.seg(type="page", category=None, properties={"category": "home"}),
            self.seg(type="page"),
            self.seg(type="screen", name="Cart", category="shop"),  # SPEC: page only
        ]
        t = tags(self.RULES, lines, fmt="segment")
        self.assertEqual(t["cats"], ["beauty", "home"])
        self.assertEqual(t["screen_cats"], 0)
        self.assertEqual(t["names"], ["Cart", "Lipstick", "Serum"])

    def test_null_message_is_not_an_object(self):
        for fmt in ("native", "segment", "sensors"):
            stats = oracle.Stats()
            oracle.run(oracle.rules_from_text(self.RULES), ["null", " null ", ""], fmt, None, None, stats)
            self.assertEqual(stats.dead, {"not_an_object": 2}, fmt)
            self.assertEqual(stats.blank, 1)


class RulesAndDump(unittest.TestCase):
    def test_implicit_first_seen_last_seen_not_dumped(self):
        rules = """
[[tag]]
name = "lifecycle"
kind = "case"
cases = [
  { when = "first_seen > now() - 7d", value = "new" },
  { when = "last_seen > now() - 7d",  value = "active" },
  { when = "last_seen > now() - 30d", value = "dormant" },
]
else = "churned"
[[segment]]
name = "active"
when = "lifecycle IN ('new', 'active')"
description = "x"
"""
        lines = [ev("a", "e", T0 - 20 * DAY), ev("a", "e", T0 - 6 * DAY),
                 ev("b", "e", T0 - 6 * DAY),
                 ev("c", "e", T0 - 8 * DAY), prof("c", T0, {}),
                 ev("d", "e", T0 - 31 * DAY), ev("z", "e", T0)]
        d = run(rules, lines)
        self.assertEqual({u: o["tags"]["lifecycle"] for u, o in d.items()},
                         {"a": "active", "b": "new", "c": "dormant", "d": "churned", "z": "new"})
        self.assertEqual(list(d["a"]["tags"]), ["lifecycle"])
        self.assertEqual(d["a"]["segments"], ["active"])
        self.assertEqual(d["c"]["segments"], [])

    def test_expiry_boundaries(self):
        rules = ('[[tag]]\nname = "ls"\nkind = "last_time"\nevent = "*"\n'
                 '[[segment]]\nname = "recent"\nwhen = "ls > now() - 7d"\n'
                 '[[segment]]\nname = "dormant"\nwhen = "ls < now() - 7d"\n')
        x = T0
        lines = [ev("u", "e", x)]
        self.assertEqual(run(rules, lines, now=x + 7 * DAY - 1)["u"]["segments"], ["recent"])
        self.assertEqual(run(rules, lines, now=x + 7 * DAY)["u"]["segments"], [])
        self.assertEqual(run(rules, lines, now=x + 7 * DAY + 1)["u"]["segments"], ["dormant"])

    def test_sorted_by_utf8_bytes_and_value_formats(self):
        rules = """
[[tag]]
name = "ft"
kind = "first_time"
event = "*"
[[tag]]
name = "age"
kind = "expr"
expr = "now() - ft"
[[tag]]
name = "flag"
kind = "expr"
expr = "ft IS NOT NULL"
[[tag]]
name = "avg"
kind = "avg"
event = "*"
property = "v"
"""
        lines = [ev(u, "e", T0, {"v": 2}) for u in ["é", "z", "Z", "a", "\U0001F600", "ｚ"]]
        out = oracle.run(oracle.rules_from_text(rules), lines, "native", T0 + 5)
        self.assertEqual([o["user_id"] for o in out], ["Z", "a", "z", "é", "ｚ", "\U0001F600"])
        line = oracle.dump_lines(out)[0]
        self.assertEqual(line, '{"user_id":"Z","tags":{"ft":%d,"age":5,"flag":true,"avg":2},"segments":[]}' % T0)

    def test_bad_rules(self):
        for text in [
            '[[tag]]\nname = "x"\nkind = "nope"\n',
            '[[tag]]\nname = "x"\nkind = "first"\nevent = "e"\nproperty = "p"\nwindow = "7d"\n',
            '[[tag]]\nname = "x"\nkind = "count"\nevent = "e"\nwindow = "7x"\n',
            '[[tag]]\nname = "x"\nkind = "expr"\nexpr = "y + 1"\n',
            '[[tag]]\nname = "x"\nkind = "expr"\nexpr = "y + 1"\n[[tag]]\nname = "y"\nkind = "expr"\nexpr = "x"\n',
            '[[tag]]\nname = "x"\nkind = "count"\nevent = "e"\nwhere = "now() > 1"\n',
            '[[tag]]\nname = "x"\nkind = "count"\nevent = "e"\nwhere = "x > 1"\n',
            '[[segment]]\nname = "s"\nwhen = "properties.a = 1"\n',
            '[[segment]]\nname = "s"\nwhen = "s"\n',
            'dedup_window = "7 days"\n',
            'time_zone = "Mars/Olympus"\n',
        ]:
            with self.assertRaises(oracle.OracleError, msg=text):
                oracle.rules_from_text(text)

    def test_expression_syntax(self):
        rules = """
[[tag]]
name = "n"
kind = "count"
event = "e"
where = "Event = 'e' and properties.a in ('x', 'it''s') OR properties.$os = 'ios'"
"""
        lines = [ev("u", "e", T0, {"a": "it's"}), ev("u", "e", T0, {"a": "y"}),
                 ev("u", "e", T0, {"$os": "ios"}), ev("u", "f", T0, {"a": "x"})]
        self.assertEqual(tags(rules, lines)["n"], 2)


class CommandLine(unittest.TestCase):
    def test_cli_and_compare(self):
        rules = '[[tag]]\nname = "s"\nkind = "sum"\nevent = "e"\nproperty = "v"\n'
        with tempfile.TemporaryDirectory() as d:
            rp = os.path.join(d, "rules.toml")
            ip = os.path.join(d, "events.ndjson.gz")
            with open(rp, "w") as f:
                f.write(rules)
            with gzip.open(ip, "wt") as f:
                f.write(ev("b", "e", T0, {"v": 0.1}) + "\n" + ev("b", "e", T0, {"v": 0.2}) + "\n"
                        + ev("a", "e", T0, {"v": 12}) + "\n")
            r = subprocess.run([sys.executable, os.path.join(HERE, "oracle.py"), "--rules", rp,
                                "--input", ip, "--now", "2024-11-20T00:00:00Z"],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.splitlines()[0], '{"user_id":"a","tags":{"s":12},"segments":[]}')
            exp = os.path.join(d, "exp.ndjson")
            with open(exp, "w") as f:
                f.write(r.stdout)
            act = os.path.join(d, "act.ndjson")
            with open(act, "w") as f:
                f.write('{"user_id":"a","tags":{"s":12.0},"segments":[]}\n'
                        '{"user_id":"b","tags":{"s":0.30000000000000004},"segments":[]}\n')
            r = subprocess.run([sys.executable, os.path.join(HERE, "compare.py"), exp, act],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout)
            self.assertEqual(r.stdout.strip(), "2 users compared, 0 differences")
            # bad rules: exit 1
            with open(rp, "w") as f:
                f.write('[[tag]]\nname = "s"\nkind = "bogus"\n')
            r = subprocess.run([sys.executable, os.path.join(HERE, "oracle.py"), "--rules", rp,
                                "--input", ip], capture_output=True, text=True)
            self.assertEqual(r.returncode, 1)

    def test_compare_reports_differences(self):
        e = {"a": {"user_id": "a", "tags": {"x": 1, "y": [1, "b"], "z": True}, "segments": ["s"]},
             "b": {"user_id": "b", "tags": {}, "segments": []}}
        a = {"a": {"user_id": "a", "tags": {"x": 1.0000001, "y": [1.0, "b"], "z": 1}, "segments": []},
             "c": {"user_id": "c", "tags": {}, "segments": []}}
        n, diffs = compare.compare(e, a)
        self.assertEqual(n, 1)
        self.assertEqual(len(diffs), 5, diffs)  # b missing, c extra, segments, x, z (bool vs number)
        n, diffs = compare.compare(e, e)
        self.assertEqual((n, diffs), (2, []))


if __name__ == "__main__":
    unittest.main()
