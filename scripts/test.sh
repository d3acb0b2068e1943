#!/usr/bin/env bash
# The README's test command: installs what is missing, builds (Debug, ASan+UBSan)
# and runs the whole suite with CTest. Exit code: CTest's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd build
ctest --output-on-failure -j "$(nproc)" --timeout 300 "$@"
