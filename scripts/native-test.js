#!/usr/bin/env node
// Builds the native sources with CMake (through cmake-js, same source list as binding.gyp) with
// AddressSanitizer + UndefinedBehaviorSanitizer, then runs the native unit tests with ctest.
// Usage: node scripts/native-test.js [--no-sanitize]
'use strict';
const { execFileSync } = require('child_process');
const path = require('path');

const root = path.join(__dirname, '..');
const sanitize = !process.argv.includes('--no-sanitize');
const out = path.join(root, sanitize ? 'build-asan' : 'build-cmake');
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const run = (cmd, args, env = {}) =>
  execFileSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });

run(process.execPath, [cmakeJs, 'build', '--out', out, '--parallel', '2', `--CDDPA_SANITIZE=${sanitize ? 'ON' : 'OFF'}`]);
run('ctest', ['--test-dir', out, '--output-on-failure', '--timeout', '600'], {
  ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=1:strict_string_checks=1',
  UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
});
