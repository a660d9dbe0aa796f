#!/usr/bin/env bash
# `make bench`: replay throughput as ratios against a parse-only floor measured in the same run.
#
#   scripts/bench.sh                      1M events over 50k users (BENCH_EVENTS, BENCH_USERS)
#   BENCH_RULES="bench15 minimal" scripts/bench.sh
#
# For each rules file in config/rules (default: bench15, ecommerce, minimal) it alternates, for
# BENCH_ROUNDS rounds (default 3), the parse floor (examples/parse_floor.rs: serde_json into a
# typed struct, nothing else) and `tagstream replay` of the same file into a fresh state
# directory, and reports the best round of each as events/s and the ratio replay / floor.
# Single core: replay and the floor each run on one thread.
#
# When the duckdb Python package is importable, each round also runs the DuckDB batch
# (scripts/bench_duckdb.py: the same tags and segments in SQL, at the final engine time) on
# one DuckDB thread (BENCH_DUCKDB_THREADS, 0 = DuckDB's default of every core), and after the
# rounds its result is compared with `tagstream dump` of the replayed state. All three columns
# are wall times of the whole process (for DuckDB: Python start, `import duckdb` and the SQL).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tagstream-target}"
EVENTS="${BENCH_EVENTS:-1000000}"
USERS="${BENCH_USERS:-50000}"
ROUNDS="${BENCH_ROUNDS:-3}"
RULES="${BENCH_RULES:-bench15 ecommerce minimal}"
WORK="${BENCH_DIR:-$PWD/target/bench}"
DUCKDB_THREADS="${BENCH_DUCKDB_THREADS:-1}"

cargo build -q -p tagstream --bin tagstream --example parse_floor
# BENCH_TAGSTREAM replays with another build (e.g. a copy of an earlier binary, for a before/after
# table); the floor and the workload stay the same.
BIN="${BENCH_TAGSTREAM:-$CARGO_TARGET_DIR/debug/tagstream}"
FLOOR="$CARGO_TARGET_DIR/debug/examples/parse_floor"
mkdir -p "$WORK"
INPUT="$WORK/events-$USERS-$EVENTS.ndjson"
if [ ! -s "$INPUT" ]; then
  echo "generating $EVENTS events over $USERS users into $INPUT" >&2
  "$BIN" gen --users "$USERS" --events "$EVENTS" --seed 7 > "$INPUT.part"
  mv "$INPUT.part" "$INPUT"
fi

seconds() { # seconds COMMAND...: wall seconds of one run (stdout discarded)
  local start end
  start=$(date +%s.%N)
  "$@" > /dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}
best() { printf '%s\n' "$@" | sort -g | head -1; }
rate() { echo "$EVENTS / $1" | bc -l | xargs printf '%.0f'; }

if python3 -c 'import duckdb' 2> /dev/null; then
  duckdb=(python3 scripts/bench_duckdb.py --quiet --input "$INPUT")
  [ "$DUCKDB_THREADS" = 0 ] || duckdb+=(--threads "$DUCKDB_THREADS")
else
  duckdb=()
  echo "the duckdb Python package is not importable: no DuckDB column (pip install duckdb)" >&2
fi

printf '%-12s %14s %14s %8s' "rules" "replay ev/s" "floor ev/s" "ratio"
[ ${#duckdb[@]} = 0 ] || printf ' %14s %8s' "duckdb ev/s" "ratio"
printf '\n'
checks=()
for rules in $RULES; do
  floor_runs=() replay_runs=() duckdb_runs=()
  for _ in $(seq "$ROUNDS"); do
    floor_runs+=("$(seconds "$FLOOR" "$INPUT")")
    rm -rf "$WORK/state"
    replay_runs+=("$(seconds "$BIN" replay --rules "config/rules/$rules.toml" --input "$INPUT" \
      --state-dir "$WORK/state" --out /dev/null --dlq /dev/null)")
    if [ ${#duckdb[@]} != 0 ]; then
      duckdb_runs+=("$(seconds "${duckdb[@]}" --rules "config/rules/$rules.toml")")
    fi
  done
  f=$(best "${floor_runs[@]}")
  r=$(best "${replay_runs[@]}")
  printf '%-12s %14s %14s %8.3f' "$rules" "$(rate "$r")" "$(rate "$f")" "$(echo "$f / $r" | bc -l)"
  if [ ${#duckdb[@]} != 0 ]; then
    d=$(best "${duckdb_runs[@]}")
    printf ' %14s %8.3f' "$(rate "$d")" "$(echo "$f / $d" | bc -l)"
    "$BIN" dump --state-dir "$WORK/state" > "$WORK/dump-$rules.ndjson"
    checks+=("$rules: $("${duckdb[@]}" --rules "config/rules/$rules.toml" \
      --compare "$WORK/dump-$rules.ndjson" | tail -2 | head -1 || true)")
  fi
  printf '\n'
done
if [ ${#checks[@]} != 0 ]; then
  echo "DuckDB result vs tagstream dump (users whose tags or segments differ):"
  printf '  %s\n' "${checks[@]}"
fi
