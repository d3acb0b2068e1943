#!/usr/bin/env bash
# Configures and builds Klynaa Jobs in build/ : Debug with ASan+UBSan, the one
# build type the test suite and the demo share (see README). Usage: scripts/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKLYNAA_SANITIZE=ON
fi
cmake --build "$BUILD_DIR" -j "$JOBS"
