#!/usr/bin/env bash
# Builds the Release tree and the Debian package from it (docs/deployment.md,
# "The Debian package"): build/klynaa-jobs_VERSION_ARCH.deb.
#   bash scripts/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in cpack:cmake dpkg-shlibdeps:dpkg-dev dpkg-deb:dpkg; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    echo "package: ${tool%%:*} is missing: apt-get install ${tool##*:} (or run bash scripts/setup.sh)" >&2
    exit 1
  fi
done
bash scripts/build.sh release
(cd build && cpack -G DEB)
ls -1 build/klynaa-jobs_*.deb
