#!/usr/bin/env python3
"""Compare two tagstream state dumps (SPEC §5).

    python3 tests/oracle/compare.py EXPECTED.ndjson ACTUAL.ndjson

Same users, same segment lists, same tag values. Numbers compare with a relative
tolerance of 1e-9 (plus an absolute 1e-9 near zero, for sums that cancel), so
12 == 12.0 and sums in a different order agree; booleans are never numbers.
Prints each difference (at most 50) and exits 1 on any difference; otherwise
prints "N users compared, 0 differences" and exits 0. Exit 2 on unreadable input.
"""

from __future__ import annotations

import json
import math
import sys

REL_TOL = 1e-9
ABS_TOL = 1e-9
MAX_SHOWN = 50


def load(path):
    users = {}
    dup = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                o = json.loads(raw)
            except ValueError as e:
                raise SystemExit(f"compare: {path}:{n}: invalid JSON: {e}") from None
            if not isinstance(o, dict) or "user_id" not in o:
                raise SystemExit(f"compare: {path}:{n}: not a dump line")
            uid = o["user_id"]
            if uid in users:
                dup.append(uid)
            users[uid] = o
    return users, dup


def is_num(v):
    return type(v) in (int, float)


def same(a, b):
    if is_num(a) and is_num(b):
        if a == b:
            return True
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def show(v):
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def compare(expected, actual):
    """-> (users compared, list of difference strings)."""
    diffs = []
    for uid in sorted(set(expected) | set(actual), key=lambda u: str(u).encode("utf-8")):
        e = expected.get(uid)
        a = actual.get(uid)
        if e is None:
            diffs.append(f"user {show(uid)}: unexpected user (only in actual)")
            continue
        if a is None:
            diffs.append(f"user {show(uid)}: missing user (only in expected)")
            continue
        es = e.get("segments")
        as_ = a.get("segments")
        if es != as_:
            diffs.append(f"user {show(uid)} segments: expected {show(es)}, actual {show(as_)}")
        et = e.get("tags") or {}
        at = a.get("tags") or {}
        for name in list(et) + [n for n in at if n not in et]:
            if name not in at:
                diffs.append(f"user {show(uid)} tag {name}: expected {show(et[name])}, actual <absent>")
            elif name not in et:
                diffs.append(f"user {show(uid)} tag {name}: expected <absent>, actual {show(at[name])}")
            elif not same(et[name], at[name]):
                diffs.append(f"user {show(uid)} tag {name}: expected {show(et[name])}, actual {show(at[name])}")
    compared = len(set(expected) & set(actual))
    return compared, diffs


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: compare.py EXPECTED.ndjson ACTUAL.ndjson", file=sys.stderr)
        return 2
    expected, dup_e = load(argv[0])
    actual, dup_a = load(argv[1])
    compared, diffs = compare(expected, actual)
    for uid in dup_e:
        diffs.insert(0, f"user {show(uid)}: appears more than once in expected")
    for uid in dup_a:
        diffs.insert(0, f"user {show(uid)}: appears more than once in actual")
    order_a = list(actual)
    if order_a != sorted(order_a, key=lambda u: str(u).encode("utf-8")):
        diffs.insert(0, "actual: users are not sorted by user_id byte order")
    for d in diffs[:MAX_SHOWN]:
        print(d)
    if len(diffs) > MAX_SHOWN:
        print(f"... and {len(diffs) - MAX_SHOWN} more")
    print(f"{compared} users compared, {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
