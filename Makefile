# tagstream — the two commands of the README, and a few helpers.
#
#   make quickstart   generate events, replay them through the example rules, show the results
#   make test         the whole test suite (Rust + the Python oracle's self-tests + deploy checks)
#   make check-deploy deploy/ manifests, alert rules and dashboard (scripts/check-deploy.sh)
#   make bench        replay throughput as ratios against a parse-only floor (scripts/bench.sh)
#   make bench-kafka  `run` from Kafka vs replay, and end-to-end latency (scripts/bench-kafka.sh)
#   make bench-scale  replay and a mass timer roll at 100k, 1M and 10M users (scripts/bench-scale.sh)
#   make bench-restore  restoring a lost volume from the changelog vs rebuilding it
#
# The C/C++ dependencies (RocksDB, librdkafka) take many minutes to build cold, so builds share
# one target directory outside the checkout.
CARGO_TARGET_DIR ?= $(HOME)/.cache/tagstream-target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/debug/tagstream
QS := $(CURDIR)/target/quickstart

.PHONY: deps test-deps build quickstart test lint bench bench-kafka bench-scale bench-restore check-deploy

deps:
	@./scripts/ensure-deps.sh

test-deps:
	@./scripts/ensure-deps.sh --test

build: deps
	cargo build -p tagstream

quickstart: build
	@rm -rf $(QS) && mkdir -p $(QS)
	$(BIN) check --rules config/rules/ecommerce.toml
	$(BIN) gen --users 2000 --events 100000 --seed 42 > $(QS)/events.ndjson
	$(BIN) replay --rules config/rules/ecommerce.toml --input $(QS)/events.ndjson \
	    --state-dir $(QS)/state --out $(QS)/transitions.ndjson --dlq $(QS)/dead-letters.ndjson
	@echo "--- first transitions ($$(wc -l < $(QS)/transitions.ndjson) in $(QS)/transitions.ndjson)"
	@head -n 3 $(QS)/transitions.ndjson
	@echo "--- one user's state"
	$(BIN) dump --state-dir $(QS)/state --user u000001
	@echo "--- segment sizes"
	@$(BIN) dump --state-dir $(QS)/state | python3 -c 'import sys,json,collections; c=collections.Counter(s for l in sys.stdin for s in json.loads(l)["segments"]); [print(f"{k:24} {v}") for k,v in sorted(c.items())]'

test: test-deps
	./scripts/test-deps.sh
	cargo test --workspace
	python3 -m unittest discover -s tests/oracle
	python3 -m unittest discover -s tests/sdk
	python3 -m unittest discover -s tests/bench
	./scripts/check-deploy.sh

check-deploy:
	@./scripts/check-deploy.sh

# Replay throughput against a parse-only floor measured in the same run (docs/performance.md).
bench: deps
	./scripts/bench.sh

# Events/s, timers/s, peak RSS and bytes per user from 100k to 10M users (docs/performance.md).
# SCALE_USERS="100000 1000000" for a shorter run; 10M users take about half an hour here.
bench-scale: deps
	./scripts/bench-scale.sh

# `tagstream run` against the mock cluster and Tansu: throughput vs replay, end-to-end latency
# at 2,000 events/s (docs/performance.md). Tansu comes with the test dependencies.
bench-kafka: test-deps
	./scripts/bench-kafka.sh

# Restoring a lost volume from the changelog against rebuilding it from the input, 50k users on
# the mock cluster (docs/changelog.md "Measured"). BENCH_USERS / BENCH_EVENTS change the size.
bench-restore: deps
	cargo build -q -p tagstream --bin tagstream --example bench_restore
	"$(CARGO_TARGET_DIR)/debug/examples/bench_restore" \
	  --tagstream "$(CARGO_TARGET_DIR)/debug/tagstream" \
	  --users "$${BENCH_USERS:-50000}" --events "$${BENCH_EVENTS:-300000}"

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
