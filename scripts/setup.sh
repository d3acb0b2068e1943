#!/usr/bin/env bash
# Installs the Debian 12 packages Klynaa Jobs needs to build, test and run.
# Idempotent: installs only what is missing; safe on a machine that has them all.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libcaf-dev libzmq3-dev cppzmq-dev libmsgpack-cxx-dev
  libboost-log-dev libboost-program-options-dev libboost-dev
  catch2 libsqlite3-dev sqlite3 libcurl4-openssl-dev tzdata openssl libjemalloc-dev
  libtomlplusplus-dev nlohmann-json3-dev libhowardhinnant-date-dev
  libjwt-dev libssl-dev libcpp-httplib-dev libpq-dev postgresql
  libnghttp2-dev
  clang libclang-rt-dev prometheus
  dpkg-dev lintian
  python3 python3-venv python3-setuptools python3-wheel python3-zmq python3-msgpack python3-django python3-botocore python3-jwt python3-cryptography python3-yaml systemd curl
)

# python3-venv, python3-setuptools and python3-wheel install the Python client
# as a package offline: `python3 -m venv --system-site-packages VENV` and
# `VENV/bin/pip install --no-build-isolation --no-index clients/python` build
# with them instead of downloading anything (docs/django.md,
# tests/integration/python_package_test.py). The venv brings its own pip.

# clang and libclang-rt-dev (Debian's default clang, 14 on Debian 12, and its
# compiler-rt: libFuzzer, ASan, UBSan) build the fuzz target that scripts/test.sh
# runs (tests/fuzz; the main build stays gcc). Only recommended by clang, so
# --no-install-recommends needs libclang-rt-dev named.

# postgresql (15 on Debian 12) brings initdb and postgres under
# /usr/lib/postgresql/15/bin: the PostgreSQL store's tests start a server of
# their own (tests/broker/pg_server.hpp) on a free port as user nobody. The
# cluster Debian creates and starts on port 5432 is neither used nor needed.

# libnghttp2-dev: the HTTP/2 server side of bench/fake_upstream.cpp
# (klynaa-upstream, the fake Django and push upstream of the benchmarks).

# prometheus brings promtool, which checks /metrics in the tests (its daemon is
# not started).

# The dashboard's browser test (tests/browser) also needs Debian's chromium,
# Node.js >= 18 with npm, and playwright-core from the npm registry (pinned in
# tests/browser/package-lock.json; it drives /usr/bin/chromium and never
# downloads a browser). KLYNAA_SETUP_BROWSER=0 skips all of that (images that
# only build and run klynaa). Node and npm come from Debian only when `node` is
# absent: next to a Node from elsewhere, `apt-get install npm` fails.
SETUP_BROWSER=${KLYNAA_SETUP_BROWSER:-1}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ "$SETUP_BROWSER" != 0 ]; then
  installed chromium || missing+=(chromium)
  if ! command -v node >/dev/null 2>&1; then
    missing+=(nodejs npm)
  elif ! command -v npm >/dev/null 2>&1; then
    missing+=(npm)
  fi
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
else
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$SETUP_BROWSER" != 0 ]; then
  cd "$(dirname "$0")/../tests/browser"
  if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
    echo "setup: tests/browser needs Node.js >= 18, found $(node --version)" >&2
    exit 1
  fi
  # Installed already when node_modules holds the locked playwright-core version.
  if node -e '
      const want = require("./package-lock.json").packages["node_modules/playwright-core"].version;
      const have = require("./node_modules/playwright-core/package.json").version;
      process.exit(want === have ? 0 : 1);' 2>/dev/null; then
    echo "setup: tests/browser: playwright-core present"
  else
    echo "setup: tests/browser: npm ci (playwright-core, no browser download)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
  fi
fi
