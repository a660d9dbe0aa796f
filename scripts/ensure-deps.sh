#!/usr/bin/env bash
# Installs what a fresh machine lacks to build tagstream: libclang (bindgen for the RocksDB
# bindings) and a C++ toolchain; with `--test`, also the Tansu broker the static-membership test
# runs. Idempotent; does nothing when everything is present.
set -euo pipefail

have_libclang() {
  ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' && return 0
  compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null && return 0
  compgen -G '/usr/lib/x86_64-linux-gnu/libclang*.so*' >/dev/null && return 0
  return 1
}

missing=()
have_libclang || missing+=(libclang-dev)
command -v c++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v python3 >/dev/null || missing+=(python3)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing build dependencies: ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is not installed: install Rust from rustup first" >&2; exit 1; }

# Tansu, a Kafka-compatible broker: the static-membership test (tests/kafka_static.rs) runs one,
# since librdkafka's mock cluster does not implement static membership.
[ "${1:-}" = "--test" ] || exit 0
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v tansu >/dev/null && [ ! -x "$cargo_bin/tansu" ]; then
  echo "installing tansu (Kafka-compatible broker for the tests) into $cargo_bin;" \
    "the first build takes about 20 minutes" >&2
  cargo install tansu --locked --features dynostore
fi
