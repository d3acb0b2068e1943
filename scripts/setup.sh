#!/usr/bin/env bash
# Installs the Debian 12 packages Klynaa Jobs needs to build, test and run.
# Idempotent: installs only what is missing; safe on a machine that has them all.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libcaf-dev libzmq3-dev cppzmq-dev libmsgpack-cxx-dev
  libboost-log-dev libboost-program-options-dev libboost-dev
  catch2 libsqlite3-dev sqlite3 libcurl4-openssl-dev tzdata
  libtomlplusplus-dev nlohmann-json3-dev libhowardhinnant-date-dev
  libjwt-dev libssl-dev libcpp-httplib-dev libpq-dev
  python3 python3-zmq python3-msgpack python3-django python3-botocore python3-jwt python3-cryptography python3-yaml systemd curl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
