// example/serve.mjs: the registry on node:http with on-disk storage, driven
// over real HTTP with fetch.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { OCI_MANIFEST, bytesOf, imageManifest, packageDir, pattern, pushBlob, pushManifest, sha256, tempDir } from './helpers.mjs';

describe('example/serve.mjs', () => {
  let child;
  let base;
  let dataDir;
  let output = '';

  before(async () => {
    dataDir = await tempDir('kura-wasm-example-');
    child = spawn(process.execPath, [join(packageDir, 'example', 'serve.mjs')], {
      env: { ...process.env, PORT: '0', KURA_DATA: dataDir, KURA_UPSTREAMS: '[]' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stderr.on('data', (d) => (output += d));
    base = await new Promise((resolveBase, reject) => {
      const timer = setTimeout(() => reject(new Error(`no listening line in 30 s:\n${output}`)), 30_000);
      child.stdout.on('data', (d) => {
        output += d;
        const m = /listening on (http:\/\/\S+)/.exec(output);
        if (m) {
          clearTimeout(timer);
          resolveBase(m[1]);
        }
      });
      child.once('exit', (code) => reject(new Error(`exited with ${code}:\n${output}`)));
    });
  });

  after(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    await rm(dataDir, { recursive: true, force: true });
  });

  it('takes a push and serves it back over HTTP, stored on disk', async () => {
    const send = (r) => fetch(r);
    const config = new TextEncoder().encode('{"os":"linux"}');
    const layer = pattern(1024 * 1024 + 17, 31);
    await pushBlob(send, base, 'team/app', config);
    await pushBlob(send, base, 'team/app', layer);
    const manifest = imageManifest(config, [layer]);
    assert.equal(await pushManifest(send, base, 'team/app', 'v1', manifest), sha256(manifest));

    const m = await fetch(`${base}/v2/team/app/manifests/v1`, { headers: { accept: OCI_MANIFEST } });
    assert.equal(m.status, 200);
    assert.deepEqual(await bytesOf(m), manifest);

    const b = await fetch(`${base}/v2/team/app/blobs/${sha256(layer)}`);
    assert.equal(b.status, 200);
    assert.equal(b.headers.get('content-length'), String(layer.byteLength));
    assert.deepEqual(await bytesOf(b), layer);

    const head = await fetch(`${base}/v2/team/app/blobs/${sha256(layer)}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(layer.byteLength));

    const bad = await fetch(`${base}/v2/team/app/manifests/nope`);
    assert.equal(bad.status, 404);
    assert.equal((await bad.json()).errors[0].code, 'MANIFEST_UNKNOWN');

    const hex = sha256(layer).slice('sha256:'.length);
    assert.ok((await readdir(join(dataDir, 'blobs', 'sha256', hex.slice(0, 2)))).includes(hex));
  });
});
