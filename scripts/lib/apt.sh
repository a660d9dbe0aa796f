# Debian packages for the scripts that install what a fresh machine lacks (sourced, not run).

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install WHY PKG...: installs Debian packages, saying why. Waits for another apt or dpkg
# run (unattended upgrades, a parallel test setup) to release its lock instead of failing.
apt_install() {
  local why="$1"
  shift
  echo "installing $* ($why)" >&2
  as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "$@" >/dev/null
}
