#!/bin/sh
# Run by `make test` before the tests. The tests drive real clients and system
# tools; when one is missing, say which and which Debian package has it, once,
# here, instead of letting a dozen tests fail further down with "not found".
# Plain POSIX sh with builtins only, so it works whatever PATH holds.

missing=""
packages=""

# lack NAME PACKAGE: record a missing tool and its package (each package once).
lack() {
  missing="$missing $1"
  case " $packages " in
    *" $2 "*) ;;
    *) packages="$packages $2" ;;
  esac
}

# need COMMAND PACKAGE
need() {
  command -v "$1" >/dev/null 2>&1 || lack "$1" "$2"
}

need curl curl                # the real SOCKS client
need ss iproute2              # CLOSE_WAIT and keepalive checks
need ip iproute2              # network namespaces
need prlimit util-linux       # the EMFILE test, and ferry's open-files check
need unshare util-linux       # network namespaces

# PySocks, the UDP ASSOCIATE client, is Debian's python3-socks: it lives in
# the system interpreter's packages, which is the one the UDP test runs.
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3 2>/dev/null)
if [ -z "$python" ]; then
  lack python3 python3
  lack PySocks python3-socks
elif ! "$python" -c 'import socks' >/dev/null 2>&1; then
  lack "PySocks (for $python)" python3-socks
fi

[ -z "$missing" ] && exit 0
{
  echo "make test: the tests need tools this machine lacks:$missing"
  echo "  install them:  apt-get install -y --no-install-recommends$packages"
  echo "  (.ci/run installs them and then runs make test)"
} >&2
exit 1
