#!/usr/bin/env bash
# The README's test command: installs what is missing, builds the sanitizer tree
# (build-asan/: Debug, ASan+UBSan, every test) and the Release tree (build/: what
# users run; the package test makes its .deb from it), runs the whole suite with
# CTest in build-asan/, then builds the fuzz targets (ingress and
# cluster decoders; clang, libFuzzer, in build-fuzz/) and fuzzes them for
# KLYNAA_FUZZ_SECONDS in all (default 60; 0 skips it) with tests/fuzz/run.sh. Exit code: CTest's when CTest fails, else
# the fuzzer's (non-zero when it found a crash).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh asan
bash scripts/build.sh release
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest_rc=0
(cd build-asan && ctest --output-on-failure -j "$(nproc)" --timeout 300 "$@") || ctest_rc=$?

fuzz_rc=0
FUZZ_SECONDS=${KLYNAA_FUZZ_SECONDS:-60}
if [ "$FUZZ_SECONDS" != 0 ]; then
  echo "test: CTest exited with $ctest_rc; now the fuzzers for $FUZZ_SECONDS s (tests/fuzz/run.sh)"
  bash tests/fuzz/run.sh "$FUZZ_SECONDS" || fuzz_rc=$?
  echo "test: fuzzer exited with $fuzz_rc"
else
  echo "test: KLYNAA_FUZZ_SECONDS=0: fuzzer skipped"
fi
if [ "$ctest_rc" -ne 0 ]; then
  exit "$ctest_rc"
fi
exit "$fuzz_rc"
