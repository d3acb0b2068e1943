#!/usr/bin/env bash
# Builds the fuzz targets (clang, libFuzzer + ASan + UBSan, a KLYNAA_FUZZ tree in
# build-fuzz/) and runs each for a while on a copy of its committed seed corpus
# (tests/fuzz/corpus/NAME, left unchanged): the ingress decoder for two thirds of
# the time, the cluster-protocol decoder for the rest. scripts/test.sh runs it
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
TARGETS=(klynaa-fuzz-ingress klynaa-fuzz-cluster)

echo "fuzz: building ${TARGETS[*]} in $BUILD_DIR (clang++, libFuzzer + ASan + UBSan)"
start=$(date +%s)
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DKLYNAA_FUZZ=ON >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${TARGETS[@]}"
echo "fuzz: built in $(( $(date +%s) - start )) s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

work=$(mktemp -d "${TMPDIR:-/tmp}/klynaa-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

# fuzz_one TARGET SEEDS SECONDS [extra libFuzzer args]: 0 when nothing was found.
fuzz_one() {
  local target=$1 seeds=$2 seconds=$3
  shift 3
  local dir="$work/$target"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp "$seeds"/* "$dir/corpus/"
  local nseeds
  nseeds=$(ls "$seeds" | wc -l)
  local args=(-timeout=10 -rss_limit_mb=2048 -artifact_prefix="$dir/artifacts/" -print_final_stats=1)
  if [ "$MODE" = corpus ]; then
    echo "fuzz: $target over the $nseeds committed seeds of $seeds, once each"
    args+=(-runs=0)
  else
    echo "fuzz: $target for $seconds s on a copy of the $nseeds seeds of $seeds"
    # -max_len: inputs up to 128 KiB, whatever the largest committed input is.
    args+=(-max_total_time="$seconds" -max_len=131072 "$@")
  fi
  local rc=0
  "$BUILD_DIR/$target" "${args[@]}" "$dir/corpus" >"$dir/log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    grep -E '^(INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE))|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb|new_units_added)' \
      "$dir/log" || tail -n 5 "$dir/log"
    return 0
  fi
  echo "fuzz: FAIL: $target exited with $rc; the last 120 lines of its log:"
  tail -n 120 "$dir/log"
  if compgen -G "$dir/artifacts/*" >/dev/null; then
    mkdir -p "$BUILD_DIR/fuzz-artifacts"
    for f in "$dir/artifacts"/*; do
      cp "$f" "$BUILD_DIR/fuzz-artifacts/"
      echo "fuzz: input $(basename "$f") ($(stat -c %s "$f") bytes), kept in $BUILD_DIR/fuzz-artifacts/; first 4 KiB in hex:"
      head -c 4096 "$f" | od -An -tx1 -v
    done
    echo "fuzz: reproduce with $BUILD_DIR/$target $BUILD_DIR/fuzz-artifacts/<file>"
  fi
  return "$rc"
}

ingress_seconds=$(( FUZZ_SECONDS * 2 / 3 ))
cluster_seconds=$(( FUZZ_SECONDS - ingress_seconds ))
[ "$ingress_seconds" -ge 1 ] || ingress_seconds=1
[ "$cluster_seconds" -ge 1 ] || cluster_seconds=1
rc=0
fuzz_one klynaa-fuzz-ingress tests/fuzz/corpus/ingress "$ingress_seconds" -dict=tests/fuzz/ingress.dict || rc=$?
if [ "$rc" -eq 0 ]; then
  fuzz_one klynaa-fuzz-cluster tests/fuzz/corpus/cluster "$cluster_seconds" || rc=$?
fi
if [ "$rc" -eq 0 ]; then
  echo "fuzz: PASS: no crash, sanitizer report or failed check ($(( $(date +%s) - start )) s in all)"
fi
exit "$rc"
