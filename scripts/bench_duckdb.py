#!/usr/bin/env python3
"""The DuckDB batch of `make bench`: every tag and segment of a rules file, per user, at the
final engine time, computed with DuckDB SQL from the NDJSON file `tagstream gen` writes.

    scripts/bench_duckdb.py --rules config/rules/bench15.toml --input events.ndjson
        [--out dump.ndjson] [--compare tagstream-dump.ndjson] [--threads N]

It is the "batch SQL computation of the same tags" of SPEC §10: the rules file is translated
to one SQL pipeline (decode, event clock, dedup, deletes, bucketed windows, aggregates, then
the derived tags and segments as expressions; the translation is in bench_duckdb_sql.py), so
the same TOML drives tagstream and this.

Prints `events/s` of the measured part on stderr and as the last stdout line
`duckdb_seconds=<s> events=<n>`: from the DuckDB connection (Python started, duckdb imported,
rules translated) to the last result row fetched, so reading the file and computing every
user's result; `make bench` times the whole process instead. `--out` writes the result as
`tagstream dump` lines; `--compare` reports the users whose tags or segments differ from a
dump (tests/oracle/compare.py rules: numbers within 1e-9 relative) and exits 1 on any
difference.

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
import re
import sys
import time
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from bench_duckdb_sql import (DAY_MS, MACROS, NOW, NOW_B, Translation, Unsupported, as_type,
                              json_path, load_rules, sql_str, value_key_sql)

# ---------------------------------------------------------------------------------------------
# Events -> the table `live` (the events that survive dedup and deletes, with bucket indexes)

# Lines per block when computing the event clock before a line (see load_events).
BLOCK = 1024
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
        whens = "".join(f" WHEN t < {nxt} THEN {off}"
                        for (_, off), (nxt, _) in zip(spans, spans[1:]))
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
    # the JSON itself only where the SQL reads it (profiles, first/last, top's printed value)
    raw_cols = sorted(set(re.findall(r"\bp_\d+\b", tr.users_sql())), key=lambda c: int(c[2:]))
    prop_cols = "".join(f", ps[{int(c[2:]) + 1}] AS {c}" for c in raw_cols)
    for pcol, want in sorted(tr.typed):  # a property read as a type, parsed once here
        raw = f"ps[{int(pcol[2:]) + 1}]"
        value = value_key_sql(raw) if want == "key" else as_type(raw, "dyn", want)
        prop_cols += f", {value} AS {pcol}_{want}"
    extract = f", json_extract(properties, [{paths}]) AS ps" if tr.props else ""
    con.execute(f"""
        CREATE TABLE events AS
        SELECT *{" EXCLUDE (ps)" if tr.props else ""}{prop_cols},
          uid IS NOT NULL AND uid <> '' AND strlen(uid) <= 256 AND ts IS NOT NULL
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
        WITH e AS NOT MATERIALIZED (
          SELECT rowid AS arrival, uid, kind, ts, eid, hash(uid, eid) AS h FROM events WHERE valid),
        repeated AS (SELECT h FROM e WHERE eid IS NOT NULL GROUP BY h HAVING count(*) > 1),
        c AS (SELECT * EXCLUDE (h) FROM e SEMI JOIN repeated USING (h)
              UNION SELECT * EXCLUDE (h) FROM e WHERE kind = 'd'),
        -- the clock before a line: the largest earlier time, from the maxima of earlier blocks
        -- of {BLOCK} lines and the earlier lines of its own block (no sort of every line)
        blocks AS (
          SELECT b, max(m) OVER (ORDER BY b ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS m
          FROM (SELECT arrival // {BLOCK} AS b, max(ts) AS m FROM e GROUP BY b)),
        clock AS (
          SELECT c.arrival, greatest(any_value(blocks.m), max(e.ts)) AS clock_before
          FROM c JOIN blocks ON blocks.b = c.arrival // {BLOCK}
          LEFT JOIN e ON e.arrival // {BLOCK} = c.arrival // {BLOCK} AND e.arrival < c.arrival
          GROUP BY c.arrival),
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
        "h": "floor((ts + ((local_ms(ts) - ts) % 3600000 + 3600000) % 3600000) / 3600000)::BIGINT"
             " AS b_h",
        "m": "floor((ts + ((local_ms(ts) - ts) % 60000 + 60000) % 60000) / 60000)::BIGINT AS b_m",
    }
    bucket_cols = "".join(f", {buckets[u]}" for u in sorted(tr.units))
    prop_cols = "".join(f", {c}" for c in raw_cols)
    prop_cols += "".join(f", {pcol}_{want}" for pcol, want in sorted(tr.typed))
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
    # each difference reads `user <JSON id> ...`
    differing = {json.JSONDecoder().raw_decode(d, len("user "))[0] for d in diffs}
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
    rows = []
    if stats["now"] is not None:  # else no event was applied: no user
        sql = tr.users_sql().replace(NOW, str(stats["now"]))
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
    ours = to_dump(rows, tr) if args.out or args.compare else {}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for o in ours.values():
                f.write(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n")
    status = compare_with(args.compare, ours) if args.compare else 0
    print(f"duckdb_seconds={seconds:.6f} events={events}")
    return status


if __name__ == "__main__":
    sys.exit(main())
