# Which libclang bindgen (clang-sys) would load. Sourced by ensure-deps.sh and test-deps.sh.
#
# clang-sys loads a file named libclang.so, libclang-N.so, libclang.so.N or libclang-N.so.N
# (N: a version). libclang-cpp.so.N is the C++ interface (Debian's libclang-cpp14, present on a
# fresh machine with the LLVM runtime) and is not loadable by bindgen: an earlier version of
# this script took it for libclang and installed nothing.

# Succeeds when the file name (no directory) is one bindgen loads.
is_bindgen_libclang() {
  [[ "$1" =~ ^libclang(-[0-9]+(\.[0-9]+)*)?\.so(\.[0-9]+)*$ ]]
}

# Directories clang-sys searches on Linux (LIBCLANG_PATH first, when set).
# LIBCLANG_SEARCH_DIRS replaces the list (for the tests).
libclang_search_dirs() {
  if [ -n "${LIBCLANG_SEARCH_DIRS:-}" ]; then
    tr ':' '\n' <<<"$LIBCLANG_SEARCH_DIRS"
    return
  fi
  [ -n "${LIBCLANG_PATH:-}" ] && echo "$LIBCLANG_PATH"
  local d
  for d in /usr/lib/llvm-*/lib /usr/local/lib /usr/lib /usr/lib64 /lib /lib64 \
           /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu; do
    [ -d "$d" ] && echo "$d"
  done
  return 0
}

# Prints the first libclang bindgen can load; fails when there is none.
find_bindgen_libclang() {
  local dir f
  while IFS= read -r dir; do
    [ -d "$dir" ] || continue
    for f in "$dir"/libclang*.so*; do
      [ -e "$f" ] || continue
      if is_bindgen_libclang "$(basename "$f")"; then
        echo "$f"
        return 0
      fi
    done
  done < <(libclang_search_dirs)
  return 1
}
