#!/usr/bin/env node
// Prints native/sources.txt as the space-separated list binding.gyp's <!@(...) expands.
'use strict';
const fs = require('fs');
const path = require('path');
const kinds = process.argv.slice(2);
const text = fs.readFileSync(path.join(__dirname, '..', 'native', 'sources.txt'), 'utf8');
const files = [];
for (const raw of text.split('\n')) {
  const line = raw.trim();
  if (!line || line.startsWith('#')) continue;
  const [kind, file] = line.split(/\s+/);
  if (kinds.length === 0 || kinds.includes(kind)) files.push(file);
}
process.stdout.write(files.join(' '));
