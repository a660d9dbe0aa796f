#!/usr/bin/env bash
# `make bench-kafka`: `tagstream run` against real Kafka protocol endpoints — librdkafka's mock
# cluster (in the benchmark process) and Tansu (a child process) — measured by
# crates/tagstream/examples/bench_kafka.rs (docs/performance.md):
#
#   throughput  events pre-produced to a one-partition topic, consumed by `tagstream run` in
#               event-clock mode, against `tagstream replay` of the same file (ratio run/replay)
#   latency     new users produced at BENCH_RATE events/s over 4 partitions to a `wall`-mode
#               service; produce → transition read back from the sink topic, p50/p99
#
#   scripts/bench-kafka.sh                       100k events (bench15 rules), 2,000 ev/s for 20 s
#   BENCH_BROKERS=tansu BENCH_RATE=5000 scripts/bench-kafka.sh
#   BENCH_SET="source.fetch.wait.max.ms=500" scripts/bench-kafka.sh   (extra librdkafka options)
#   BENCH_TAGSTREAM=/path/to/other/tagstream scripts/bench-kafka.sh    (compare two builds)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tagstream-target}"
EVENTS="${BENCH_EVENTS:-100000}"
USERS="${BENCH_USERS:-5000}"
RULES="${BENCH_RULES:-bench15}"
RATE="${BENCH_RATE:-2000}"
SECONDS_="${BENCH_SECONDS:-20}"
BROKERS="${BENCH_BROKERS:-mock tansu}"
LINGER="${BENCH_LINGER_MS:-5}"   # the latency producer's linger.ms
WORK="${BENCH_DIR:-$PWD/target/bench-kafka}"

cargo build -q -p tagstream --bin tagstream --example bench_kafka
BIN="${BENCH_TAGSTREAM:-$CARGO_TARGET_DIR/debug/tagstream}"
BENCH="$CARGO_TARGET_DIR/debug/examples/bench_kafka"
mkdir -p "$WORK"
INPUT="$WORK/events-$USERS-$EVENTS.ndjson"
if [ ! -s "$INPUT" ]; then
  echo "generating $EVENTS events over $USERS users into $INPUT" >&2
  "$BIN" gen --users "$USERS" --events "$EVENTS" --seed 7 > "$INPUT.part"
  mv "$INPUT.part" "$INPUT"
fi
sets=()
for s in ${BENCH_SET:-}; do sets+=(--set "$s"); done

echo "| broker | measurement | | | | |"
echo "|---|---|---|---|---|---|"
for broker in $BROKERS; do
  "$BENCH" --tagstream "$BIN" --broker "$broker" --input "$INPUT" \
    --rules "config/rules/$RULES.toml" --rate "$RATE" --seconds "$SECONDS_" --linger-ms "$LINGER" \
    --work "$WORK/$broker" ${sets[@]+"${sets[@]}"}
done
