#!/usr/bin/env bash
# `make bench-scale`: does the engine stay flat from thousands to millions of users?
#
#   scripts/bench-scale.sh                       100k, 1M and 10M users (SCALE_USERS)
#   SCALE_USERS="100000 1000000" scripts/bench-scale.sh
#
# For each N, a stream of 2N events is generated on the fly (no file): a `view` for each of N
# distinct users in a scattered order over the first 15 days, then a `purchase` of each user in
# another order over the next 15 days, so the second half reads users back from the store.
# `tagstream replay` (bench15 rules, event clock) consumes it from stdin; then a second replay
# with no input moves the clock 32 days on (`--advance-to`), so every user's windows and
# lifecycle roll: the mass timer roll. It prints events/s, users rolled per second (rolled/s),
# peak RSS and the state's bytes per user (SST files after the roll). Single core.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tagstream-target}"
USERS_LIST="${SCALE_USERS:-100000 1000000 10000000}"
RULES="${SCALE_RULES:-config/rules/bench15.toml}"
WORK="${BENCH_DIR:-$PWD/target/bench}/scale"
# SCALE_TAGSTREAM measures another build (e.g. a copy of an earlier binary).
if [ -n "${SCALE_TAGSTREAM:-}" ]; then
  BIN="$SCALE_TAGSTREAM"
else
  cargo build -q -p tagstream --bin tagstream
  BIN="$CARGO_TARGET_DIR/debug/tagstream"
fi
mkdir -p "$WORK"

T0=1727740800000           # 2024-10-01T00:00:00Z
HALF_MS=$((15 * 86400000))
# stream N: 2N NDJSON events; users scattered by multiplying by a prime coprime to N.
stream() {
  awk -v n="$1" -v t0="$T0" -v half="$HALF_MS" 'BEGIN {
    step = half / n; p1 = 1000003; p2 = 999983
    while (n % p1 == 0) p1 += 2; while (n % p2 == 0) p2 += 2
    for (i = 0; i < n; i++) {
      u = (i * p1) % n
      printf "{\"user_id\":\"s%09d\",\"event\":\"view\",\"ts\":%.0f,\"properties\":{\"category\":\"c%d\",\"channel\":\"app\"}}\n", u, t0 + int(i * step), u % 7
    }
    for (i = 0; i < n; i++) {
      u = (i * p2) % n
      printf "{\"user_id\":\"s%09d\",\"event\":\"purchase\",\"ts\":%.0f,\"properties\":{\"amount\":%d,\"category\":\"c%d\"}}\n", u, t0 + half + int(i * step), 50 + u % 400, u % 5
    }
  }'
}

measure() { # measure OUT COMMAND...: runs COMMAND under /usr/bin/time, writes "seconds rss_kb"
  local out="$1"; shift
  /usr/bin/time -f "%e %M" -o "$out" "$@" > /dev/null
}

printf '%10s %12s %12s %10s %12s %12s %10s\n' users "events/s" "replay s" "RSS MB" "bytes/user" "rolled/s" "roll RSS"
for n in $USERS_LIST; do
  state="$WORK/state-$n"
  rm -rf "$state"
  start=$(date +%s.%N)
  stream "$n" | measure "$WORK/replay-$n.time" "$BIN" replay --rules "$RULES" --input - \
    --state-dir "$state" --out /dev/null --dlq /dev/null
  end=$(date +%s.%N)
  read -r _ replay_rss < "$WORK/replay-$n.time"
  replay_s=$(echo "$end - $start" | bc -l)
  # The clock moves 32 days past the last event: every user's windows empty.
  advance=$((T0 + 2 * HALF_MS + 32 * 86400000))
  measure "$WORK/roll-$n.time" "$BIN" replay --rules "$RULES" --input /dev/null \
    --state-dir "$state" --out "$WORK/roll-$n.ndjson" --dlq /dev/null --advance-to "$advance"
  read -r roll_s roll_rss < "$WORK/roll-$n.time"
  # State on disk: the SST files (the write-ahead log is transient: it holds the last memtable).
  bytes=$(find "$state" -name '*.sst' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  printf '%10d %12.0f %12.1f %10.0f %12.0f %12.0f %10.0f\n' "$n" \
    "$(echo "2 * $n / $replay_s" | bc -l)" "$replay_s" "$(echo "$replay_rss / 1024" | bc -l)" \
    "$(echo "$bytes / $n" | bc -l)" "$(echo "$n / $roll_s" | bc -l)" "$(echo "$roll_rss / 1024" | bc -l)"
  rm -f "$WORK/roll-$n.ndjson"
done
