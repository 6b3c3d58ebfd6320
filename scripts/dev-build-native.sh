#!/usr/bin/env bash
# Incremental rebuild of the addon in build/ (what npm install builds), serialised with a lock so
# several shells working in one tree never run make in the same directory at once. Goes through
# `npm run` so npm's bundled node-gyp and its nodedir setting are used (npx would try to download).
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/dpa-native-build.lock npm run --silent build:native:dev
