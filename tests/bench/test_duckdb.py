"""The DuckDB batch of `make bench` (scripts/bench_duckdb.py) computes what tagstream computes.

    python3 -m unittest discover -s tests/bench

* `AgainstTagstream`: generated workloads (`tagstream gen`: late events, retries, string and
  null amounts, RFC 3339 profile times, deletes) replayed by the real binary; the DuckDB
  result of every file in config/rules must equal `tagstream dump` (the comparison of
  tests/oracle/compare.py). The binary is `$CARGO_TARGET_DIR/debug/tagstream` (default
  `$HOME/.cache/tagstream-target`); these tests are skipped when it is absent.
* `AgainstOracle`: a hand-written input and rules file reaching the corners the generator does
  not (retries past the dedup window, retried and unknown-user deletes, explicit null profile
  values, ties, value order across types, hour and minute windows across a daylight-saving
  change, every derived kind, most functions), checked against tests/oracle/oracle.py.

Everything is skipped when the duckdb Python package is not importable (`make test` installs it
through `scripts/ensure-deps.sh --test`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_duckdb.py"
ORACLE = ROOT / "tests" / "oracle" / "oracle.py"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "tagstream-target"))
BIN = TARGET / "debug" / "tagstream"
HAVE_DUCKDB = importlib.util.find_spec("duckdb") is not None


def run(*args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)


def duckdb_compare(rules, events, dump):
    """-> (exit code, stdout) of bench_duckdb.py --compare."""
    p = run(sys.executable, SCRIPT, "--rules", rules, "--input", events, "--compare", dump)
    return p.returncode, p.stdout + p.stderr


@unittest.skipUnless(HAVE_DUCKDB, "the duckdb Python package is not importable")
@unittest.skipUnless(BIN.is_file(), f"no tagstream binary at {BIN} (cargo build -p tagstream)")
class AgainstTagstream(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls.tmp.name)
        cls.events = cls.dir / "events.ndjson"
        with open(cls.events, "w") as f:
            subprocess.run([BIN, "gen", "--users", "2000", "--events", "40000", "--seed", "7"],
                           stdout=f, check=True)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check(self, name, rules=None):
        rules = rules or ROOT / "config" / "rules" / f"{name}.toml"
        state, dump = self.dir / f"state-{name}", self.dir / f"dump-{name}.ndjson"
        p = run(BIN, "replay", "--rules", rules, "--input", self.events, "--state-dir", state,
                "--out", os.devnull, "--dlq", os.devnull)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(dump, "w") as f:
            subprocess.run([BIN, "dump", "--state-dir", state], stdout=f, check=True)
        code, out = duckdb_compare(rules, self.events, dump)
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"(?m)^[1-9]\d* users compared, 0 users differ")

    def test_the_generated_workload_has_what_the_sql_must_handle(self):
        lines = [json.loads(line) for line in self.events.read_text().splitlines()]
        self.assertTrue(any(e.get("type") == "delete" for e in lines))
        self.assertTrue(any(isinstance(e["ts"], str) for e in lines))
        ids = [(e["user_id"], e.get("event_id")) for e in lines]
        self.assertLess(len(set(ids)), len(ids), "no retried line")

    def test_bench15(self):
        self.check("bench15")

    def test_minimal(self):
        self.check("minimal")

    def test_ecommerce(self):
        self.check("ecommerce")

    def test_the_corner_rules_in_europe_berlin(self):
        # RULES below: hour and minute windows, dedup_window 1d and every derived kind; the
        # generated 30 days hold Berlin's change back to winter time (2024-10-27)
        rules = self.dir / "corners.toml"
        rules.write_text(RULES)
        self.check("corners", rules)

    def test_a_difference_is_reported(self):
        rules = ROOT / "config" / "rules" / "minimal.toml"
        state, dump = self.dir / "state-diff", self.dir / "dump-diff.ndjson"
        p = run(BIN, "replay", "--rules", rules, "--input", self.events, "--state-dir", state,
                "--out", os.devnull, "--dlq", os.devnull)
        self.assertEqual(p.returncode, 0, p.stderr)
        rows = run(BIN, "dump", "--state-dir", state).stdout.splitlines()
        rows = [json.loads(line) for line in rows]
        rows[0]["tags"]["spend_30d"] += 0.01
        rows[1]["segments"] = ["made_up"]
        dump.write_text("".join(json.dumps(r) + "\n" for r in rows))
        code, out = duckdb_compare(rules, self.events, dump)
        self.assertEqual(code, 1, out)
        self.assertIn("users compared, 2 users differ", out)


H = 3_600_000
DAY = 24 * H
# 2024-03-31 is the spring-forward day in Europe/Berlin (02:00 CET -> 03:00 CEST, 01:00Z).
T0 = 1_711_843_200_000  # 2024-03-31T00:00:00Z = 01:00 local


def ev(uid, name, ts, props=None, eid=None, **extra):
    o = {"user_id": uid, "event": name, "ts": ts, "properties": props or {}}
    if eid is not None:
        o["event_id"] = eid
    o.update(extra)
    return o


def profile(uid, ts, props, eid=None):
    o = {"type": "profile", "user_id": uid, "ts": ts, "properties": props}
    if eid is not None:
        o["event_id"] = eid
    return o


def delete(uid, ts, eid=None):
    o = {"type": "delete", "user_id": uid, "ts": ts}
    if eid is not None:
        o["event_id"] = eid
    return o


RULES = """
time_zone = "Europe/Berlin"
dedup_window = "1d"

[[tag]]
name = "buys"
kind = "count"
event = "buy"

[[tag]]
name = "BUYS"
kind = "count"
event = "view"

[[tag]]
name = "views_3h"
kind = "count"
event = "view"
window = "3h"

[[tag]]
name = "views_90m"
kind = "count"
event = "view"
window = "90m"

[[tag]]
name = "spend"
kind = "sum"
event = "buy"
property = "amount"

[[tag]]
name = "spend_2d"
kind = "sum"
event = "buy"
property = "amount"
window = "2d"

[[tag]]
name = "avg_amount"
kind = "avg"
event = "buy"
property = "amount"

[[tag]]
name = "min_amount"
kind = "min"
event = "buy"
property = "amount"

[[tag]]
name = "kinds"
kind = "distinct"
event = "*"
property = "v"

[[tag]]
name = "top_v"
kind = "top"
event = "*"
property = "v"

[[tag]]
name = "top_v2"
kind = "top"
event = "*"
property = "v"
k = 2

[[tag]]
name = "first_cat"
kind = "first"
event = ["view", "buy"]
property = "cat"

[[tag]]
name = "last_cat"
kind = "last"
event = ["view", "buy"]
property = "cat"

[[tag]]
name = "app_views"
kind = "count"
event = "*"
where = "properties.os = 'iOS' AND event <> 'buy' OR properties.channel IN ('app', 'mini')"

[[tag]]
name = "city"
kind = "profile"
property = "city"

[[tag]]
name = "age"
kind = "profile"
property = "age"

[[tag]]
name = "tier"
kind = "tier"
of = "spend"
tiers = [{ label = "high", min = 100 }, { label = "low", min = 0 }, { label = "mid", min = 20 }]

[[tag]]
name = "state"
kind = "case"
cases = [
  { when = "age > 60", value = "senior" },
  { when = "last_seen > now() - 1d", value_expr = "'recent'" },
]
else_expr = "city"

[[tag]]
name = "score"
kind = "expr"
expr = "round(sigmoid(ln(1 + buys) - days_since(first_seen) / 7) * 100, 1) + least(buys, 2) % 2"

[[tag]]
name = "when_local"
kind = "expr"
expr = "hour_of_day(last_seen) * 10 + day_of_week(last_seen)"

[[tag]]
name = "age_gap"
kind = "expr"
expr = "coalesce(age, 0) - abs(-3)"

[[tag]]
name = "cluster"
kind = "nearest"
features = ["buys", "spend"]
centroids = { big = [3, 200], small = [1, 10], tie_b = [0, 0], tie_a = [0, 0] }

[[segment]]
name = "spender"
when = "spend_2d BETWEEN 10 AND 500 AND city IS NOT NULL"

[[segment]]
name = "not_spender"
when = "NOT spender AND (age IS NULL OR age NOT IN (30, 31))"

[[segment]]
name = "berliner"
when = "city = 'Berlin' AND top_v = 'b'"
"""


class AgainstOracle(unittest.TestCase):
    """Each user below is one corner of the semantics; the oracle computes what SPEC says."""

    def events(self):
        # deletes (first, while the clock is early: dedup looks back from the clock): a
        # retried delete does not erase what came after the first one; a delete of an
        # unknown user creates nothing; a user deleted twice comes back
        L = [ev("d", "buy", T0 + H, {"amount": 50, "cat": "gone"}, eid="d1"),
             delete("d", T0 + 2 * H, eid="del1"),
             ev("d", "buy", T0 + 3 * H, {"amount": 7, "cat": "kept"}, eid="d2"),
             delete("d", T0 + 2 * H, eid="del1"),
             ev("d", "buy", T0 + 3 * H, {"amount": 7}, eid="d1"),  # the id was erased
             delete("nobody", T0 + 4 * H, eid="x"),
             ev("e", "view", T0 + H, {"v": 1}), delete("e", T0 + H), delete("e", T0 + H),
             ev("e", "view", T0 + 5 * H, {"v": 1.0, "cat": "back"})]
        # retries: within the dedup window (skipped), past it (applied again), and the
        # retried event's clock excludes the duplicate itself
        L += [ev("r", "buy", T0, {"amount": 10}, eid="b1"),
              ev("r", "buy", T0, {"amount": 10}, eid="b1"),
              ev("r", "buy", T0 + 2 * DAY, {"amount": 5.5}, eid="b2"),
              ev("r", "buy", T0, {"amount": 10}, eid="b1"),  # 2 days later: applied again
              ev("r", "view", T0 + 2 * DAY, {"v": True, "cat": "x"}, eid="v1")]
        # profiles: explicit null wins by time, ties go to the later arrival, older values
        # lose, a profile-only user is present, RFC 3339 times with offsets and fractions
        L += [profile("p", T0, {"city": "Berlin", "age": 30}),
              profile("p", "2024-03-31T03:00:00.9999+02:00", {"city": None}),
              profile("p", T0 - DAY, {"city": "Old", "age": 99}),
              profile("p", T0 + 2 * H, {"age": 31}), profile("p", T0 + 2 * H, {"age": 64}),
              profile("q", "2024-03-30T10:00:00Z", {"city": "Berlin"}),
              ev("q", "view", T0 + 30 * 60_000, {"v": "b", "cat": "m"}),
              ev("q", "view", T0 + 30 * 60_000, {"v": "a", "cat": "n"})]
        # value order and ties: booleans < numbers < strings (by code point: 'a"' < 'a#'
        # although the JSON text of the first has a backslash); 1 equals 1.0 (first seen is
        # printed); non-numbers skipped by sum/avg/min; late events outside the window
        L += [ev("v", "buy", T0 + H, {"v": "s", "amount": "12.5"}),
              ev("v", "buy", T0 + H, {"v": 2, "amount": None}),
              ev("v", "buy", T0 + H, {"v": 1, "amount": 3}),
              ev("v", "buy", T0 + H, {"v": 1.0, "amount": 4.25}),
              ev("v", "buy", T0 + H, {"v": False, "amount": True}),
              ev("v", "buy", T0 + H, {"v": [1, {"k": 2}], "amount": -1}),
              ev("v", "buy", T0 + H, {"v": "s"}),
              ev("s", "view", T0 + H, {"v": 'a"'}), ev("s", "view", T0 + H, {"v": "a#"}),
              ev("s", "view", T0 + H, {"v": "é"}), ev("s", "view", T0 + H, {"v": "z"}),
              ev("v", "buy", T0 - 5 * DAY, {"amount": 1000}, eid="late"),
              ev("v", "view", T0 + 2 * DAY + 20 * H, {"os": "iOS"}),
              ev("v", "view", T0 + 2 * DAY + 21 * H, {"channel": "mini"}),
              ev("v", "buy", T0 + 2 * DAY + 21 * H, {"os": "iOS", "channel": 7})]
        # windows: 3h and 90m buckets counted back from the last instant, across the DST
        # change of the first day (bucket boundaries are local clock boundaries)
        L += [ev("w", "view", T0 + 2 * DAY + 22 * H + m * 15 * 60_000) for m in range(9)]
        # dead letters are dropped: no user, a float time, a time without an offset
        L += [{"event": "view", "ts": T0}, ev("bad", "view", 1.5),
              ev("bad", "view", "2024-03-31T00:00:00")]
        L += [ev("z", "tick", T0 + 2 * DAY + 23 * H + 59 * 60_000)]  # the final engine time
        return L

    @unittest.skipUnless(HAVE_DUCKDB, "the duckdb Python package is not importable")
    def test_the_duckdb_batch_equals_the_oracle(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            rules = d / "rules.toml"
            rules.write_text(RULES)
            events = d / "events.ndjson"
            events.write_text("".join(json.dumps(e) + "\n" for e in self.events()))
            oracle = run(sys.executable, ORACLE, "--rules", rules, "--input", events)
            self.assertEqual(oracle.returncode, 0, oracle.stderr)
            expected = d / "oracle.ndjson"
            expected.write_text(oracle.stdout)
            users = {json.loads(line)["user_id"] for line in oracle.stdout.splitlines()}
            self.assertEqual(users, {"r", "d", "e", "p", "q", "s", "v", "w", "z"})
            code, out = duckdb_compare(rules, events, expected)
            self.assertEqual(code, 0, out)
            self.assertIn("9 users compared, 0 users differ", out)

    @unittest.skipUnless(HAVE_DUCKDB, "the duckdb Python package is not importable")
    def test_rules_outside_the_translation_are_refused_by_name(self):
        with tempfile.TemporaryDirectory() as tmp:
            rules = Path(tmp) / "rules.toml"
            rules.write_text('[[tag]]\nname = "a"\nkind = "first"\nevent = "x"\nproperty = "p"\n'
                             '[[tag]]\nname = "b"\nkind = "last"\nevent = "x"\nproperty = "p"\n'
                             '[[segment]]\nname = "s"\nwhen = "a = b"\n')
            p = run(sys.executable, SCRIPT, "--rules", rules, "--input", os.devnull)
            self.assertEqual(p.returncode, 1)
            self.assertIn("not translated to SQL: comparing two dynamic values", p.stderr)


if __name__ == "__main__":
    unittest.main()
