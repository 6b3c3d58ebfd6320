#!/usr/bin/env node
// Builds the native sources with CMake (through cmake-js, same source list as binding.gyp) with
// AddressSanitizer + UndefinedBehaviorSanitizer, runs the native unit tests with ctest, then runs
// the JavaScript suites that exercise the addon hardest against that sanitized build
// (DPA_ADDON_PATH, with the sanitizer runtimes preloaded into node).
// Usage: node scripts/native-test.js [--no-sanitize]
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const sanitize = !process.argv.includes('--no-sanitize');
const out = path.join(root, sanitize ? 'build-asan' : 'build-cmake');
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const run = (cmd, args, env = {}) =>
  execFileSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
const sanitizerEnv = {
  ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=1:strict_string_checks=1',
  UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
};

run(process.execPath, [cmakeJs, 'build', '--out', out, '--parallel', '2', `--CDDPA_SANITIZE=${sanitize ? 'ON' : 'OFF'}`]);
run('ctest', ['--test-dir', out, '--output-on-failure', '--timeout', '600'], sanitizerEnv);

if (sanitize) {
  const addon = path.join(out, 'Release', 'dpa_native.node');
  if (!fs.existsSync(addon)) throw new Error(`native-test: ${addon} was not built`);
  run(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.json']);
  const runtime = (lib) => execFileSync('gcc', [`-print-file-name=${lib}`], { encoding: 'utf8' }).trim();
  const suites = ['bitmap.test.js', 'guestmem.test.js', 'kvm-calibration.test.js', 'kvm-lifecycle.test.js'];
  run(process.execPath, ['--test', '--test-concurrency=1', ...suites.map((s) => path.join('dist', 'test', 'unit', s))], {
    ...sanitizerEnv,
    // Node itself is not instrumented: its own allocations would read as leaks.
    ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1',
    LD_PRELOAD: `${runtime('libasan.so')}:${runtime('libubsan.so')}`,
    DPA_ADDON_PATH: addon,
  });
}
