#!/usr/bin/env bash
# Rebuilds the addon in build/ (as npm install does), serialised with a lock so several
# developers' shells working in one tree do not run make in the same directory at once.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/dpa-native-build.lock sh -c 'npx node-gyp configure >/dev/null && npx node-gyp build -j 2'
