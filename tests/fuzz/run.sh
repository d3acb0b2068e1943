#!/usr/bin/env bash
# Builds the ingress fuzz target (clang, libFuzzer + ASan + UBSan, a KLYNAA_FUZZ
# tree in build-fuzz/) and runs it for a while on a copy of the committed seed
# corpus (tests/fuzz/corpus/ingress, left unchanged). scripts/test.sh runs it
# after CTest; docs/reliability.md "Fuzzing" says more.
#
# Usage: tests/fuzz/run.sh [SECONDS]   (default: $KLYNAA_FUZZ_SECONDS, else 60)
#        tests/fuzz/run.sh --corpus-only  (each committed seed once, no fuzzing)
# Environment: FUZZ_BUILD_DIR (build-fuzz), JOBS (nproc).
# Exit code: 0 when nothing was found; otherwise libFuzzer's (a crash, sanitizer
# report, failed check, escaped exception, timeout over 10 s or RSS over 2 GiB).
# The input that did it is printed in hex and kept in $FUZZ_BUILD_DIR/fuzz-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE=fuzz
if [ "${1:-}" = "--corpus-only" ]; then
  MODE=corpus
  shift
fi
FUZZ_SECONDS=${1:-${KLYNAA_FUZZ_SECONDS:-60}}
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
JOBS=${JOBS:-$(nproc)}
TARGET=klynaa-fuzz-ingress
SEEDS=tests/fuzz/corpus/ingress

echo "fuzz: building $TARGET in $BUILD_DIR (clang++, libFuzzer + ASan + UBSan)"
start=$(date +%s)
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DKLYNAA_FUZZ=ON >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$JOBS" --target "$TARGET"
echo "fuzz: built in $(( $(date +%s) - start )) s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

work=$(mktemp -d "${TMPDIR:-/tmp}/klynaa-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$work/artifacts"
cp "$SEEDS"/* "$work/corpus/"
nseeds=$(ls "$SEEDS" | wc -l)

args=(-timeout=10 -rss_limit_mb=2048 -artifact_prefix="$work/artifacts/" -print_final_stats=1)
if [ "$MODE" = corpus ]; then
  echo "fuzz: $TARGET over the $nseeds committed seeds of $SEEDS, once each"
  args+=(-runs=0)
else
  echo "fuzz: $TARGET for $FUZZ_SECONDS s on a copy of the $nseeds seeds of $SEEDS"
  # -max_len: inputs up to 128 KiB, whatever the largest committed input is.
  args+=(-max_total_time="$FUZZ_SECONDS" -max_len=131072 -dict=tests/fuzz/ingress.dict)
fi

rc=0
"$BUILD_DIR/$TARGET" "${args[@]}" "$work/corpus" >"$work/log" 2>&1 || rc=$?

if [ "$rc" -eq 0 ]; then
  grep -E '^(INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE))|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb|new_units_added)' \
    "$work/log" || tail -n 5 "$work/log"
  echo "fuzz: PASS: no crash, sanitizer report or failed check ($(( $(date +%s) - start )) s in all)"
  exit 0
fi

echo "fuzz: FAIL: $TARGET exited with $rc; the last 120 lines of its log:"
tail -n 120 "$work/log"
if compgen -G "$work/artifacts/*" >/dev/null; then
  mkdir -p "$BUILD_DIR/fuzz-artifacts"
  for f in "$work/artifacts"/*; do
    cp "$f" "$BUILD_DIR/fuzz-artifacts/"
    echo "fuzz: input $(basename "$f") ($(stat -c %s "$f") bytes), kept in $BUILD_DIR/fuzz-artifacts/; first 4 KiB in hex:"
    head -c 4096 "$f" | od -An -tx1 -v
  done
  echo "fuzz: reproduce with $BUILD_DIR/$TARGET $BUILD_DIR/fuzz-artifacts/<file>"
fi
exit "$rc"
