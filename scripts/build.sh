#!/usr/bin/env bash
# Configures and builds one of Klynaa Jobs' two build trees (README, "Build trees"):
#
#   scripts/build.sh [release] [TARGET ...] build/       Release, no tests: what users run,
#                                                        install and package (default target:
#                                                        all, i.e. klynaa and the benchmarks)
#   scripts/build.sh asan [TARGET ...]      build-asan/  Debug with ASan+UBSan and the whole
#                                                        test suite: what the tests run
#
# Both trees build with -Werror (KLYNAA_WERROR): a warning fails the build here
# and in CI. A tree configured with other settings is reconfigured.
# Environment: BUILD_DIR overrides the tree's folder, JOBS the parallel jobs.
set -euo pipefail
cd "$(dirname "$0")/.."

# No argument (or a target name first) means the Release tree: the one users run.
kind=${1:-release}
case "$kind" in
  release|asan) shift || true ;;
  -*|help) kind=usage ;;
  *) kind=release ;;  # a target name: scripts/build.sh klynaa
esac
case "$kind" in
  release)
    BUILD_DIR=${BUILD_DIR:-build}
    flags=(-DCMAKE_BUILD_TYPE=Release -DKLYNAA_SANITIZE=OFF -DKLYNAA_TESTS=OFF) ;;
  asan)
    BUILD_DIR=${BUILD_DIR:-build-asan}
    flags=(-DCMAKE_BUILD_TYPE=Debug -DKLYNAA_SANITIZE=ON -DKLYNAA_TESTS=ON) ;;
  *)
    echo "usage: scripts/build.sh [release|asan] [TARGET ...]" >&2
    echo "  release: build/, Release, what you run and package; asan: build-asan/, the tests" >&2
    exit 2 ;;
esac
flags+=(-DKLYNAA_WERROR=ON)
# build/ is the Release tree users run (README): a sanitizer build never goes there.
if [ "$kind" = asan ] && [ "$(basename "$BUILD_DIR")" = build ]; then
  echo "build: build/ holds the Release binary users run; the sanitizer tree is build-asan/ (unset BUILD_DIR)" >&2
  exit 2
fi
JOBS=${JOBS:-$(nproc)}

for tool in cmake ninja; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build: $tool is missing: run 'bash scripts/setup.sh' (or apt-get install cmake ninja-build)" >&2
    exit 1
  fi
done

# Reconfigure when the tree was made with other settings (e.g. an old build/
# that held the sanitizer build before the two trees were split).
wanted="${flags[*]}"
stamp="$BUILD_DIR/.klynaa-build-flags"
if [ ! -f "$BUILD_DIR/build.ninja" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  rm -f "$BUILD_DIR/CMakeCache.txt"
  cmake -S . -B "$BUILD_DIR" -G Ninja "${flags[@]}"
  echo "$wanted" > "$stamp"
fi
if [ $# -gt 0 ]; then
  cmake --build "$BUILD_DIR" -j "$JOBS" --target "$@"
else
  cmake --build "$BUILD_DIR" -j "$JOBS"
fi
