#!/usr/bin/env bash
# Tests the libclang detection of ensure-deps.sh (run by `make test`): on fake library
# directories, what a fresh machine has (libclang-cpp only) must count as missing, and each
# name bindgen loads must count as present.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib/libclang.sh"

passed=0
failed=0
expect() { # expect present|missing FILE...
  local want="$1"; shift
  local dir got
  dir="$(mktemp -d)"
  local f
  for f in "$@"; do touch "$dir/$f"; done
  if LIBCLANG_SEARCH_DIRS="$dir" find_bindgen_libclang >/dev/null; then got=present; else got=missing; fi
  rm -rf "$dir"
  if [ "$got" = "$want" ]; then
    passed=$((passed + 1))
  else
    echo "test-deps: FAILED: with [$*] libclang should be $want, the detection says $got" >&2
    failed=$((failed + 1))
  fi
}

expect missing                              # nothing at all
expect missing libclang-cpp.so.14           # a fresh Debian 12 machine (the bug)
expect missing libclang-cpp.so libclang-cpp14.so.1 libclangBasic.a libclang.a
expect present libclang.so
expect present libclang.so.1
expect present libclang-14.so.1             # Debian's libclang1-14
expect present libclang-14.so
expect present libclang-cpp.so.14 libclang-14.so.14.0.6
expect present libclang.so.14.0.6

# The real machine: whatever ensure-deps.sh --detect finds must be a name bindgen loads.
if found="$("$here/ensure-deps.sh" --detect 2>/dev/null)"; then
  if is_bindgen_libclang "$(basename "$found")"; then passed=$((passed + 1)); else
    echo "test-deps: FAILED: --detect printed $found" >&2; failed=$((failed + 1)); fi
fi

echo "test-deps: $passed passed, $failed failed"
[ "$failed" = 0 ]
