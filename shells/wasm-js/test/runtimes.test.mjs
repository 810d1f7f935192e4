// The same package under other JS runtimes: runtime-smoke.mjs runs in Node
// always, and in Deno and Bun when they are installed (on PATH, or named by
// KURA_DENO / KURA_BUN). The project installs neither; a missing runtime is
// a skip that says so.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { packageDir, which } from './helpers.mjs';

const script = join(packageDir, 'test', 'runtime-smoke.mjs');

function runtime(envVar, name) {
  return process.env[envVar] || which(name);
}

const runtimes = [
  { name: 'node', bin: process.execPath, args: [script] },
  { name: 'deno', bin: runtime('KURA_DENO', 'deno'), args: ['run', '--allow-all', script] },
  { name: 'bun', bin: runtime('KURA_BUN', 'bun'), args: [script] },
];

describe('other runtimes', () => {
  for (const { name, bin, args } of runtimes) {
    const skip = bin ? false : `${name} is not installed (set KURA_${name.toUpperCase()} to its binary to run this)`;
    it(`serves, stores and mirrors under ${name}`, { skip }, () => {
      const r = spawnSync(bin, args, { encoding: 'utf8', timeout: 120_000 });
      const output = `${r.stdout}\n${r.stderr}`;
      assert.equal(r.status, 0, output);
      assert.match(r.stdout, /served: .*bytes identical/, output);
      assert.match(r.stdout, /mirrored: 200 miss bytes identical then hit/, output);
    });
  }
});
