// Shared by the package tests: loading the built package, requests, OCI
// content, and an upstream registry (Debian's docker-registry) to mirror.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const packageDir = fileURLToPath(new URL('..', import.meta.url));

if (!existsSync(join(packageDir, 'pkg', 'kura_wasm_bg.wasm'))) {
  throw new Error(
    'shells/wasm-js/pkg is missing: build the package first ' +
      '(cargo xtask, or RUSTUP_TOOLCHAIN=wasm wasm-pack build shells/wasm-js --target web --no-pack --dev -- --features conformance)',
  );
}

export const kura = await import('../js/index.mjs');
export const { FsStorage } = await import('../js/fs-storage.mjs');

export const BASE = 'http://kura.test';

export function sha256(bytes) {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** Reproducible bytes that do not compress. */
export function pattern(len, seed) {
  const out = new Uint8Array(len);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** A web Request to the registry at BASE. */
export function req(method, path, { headers = {}, body } = {}) {
  const url = path.startsWith('http') ? path : BASE + path;
  return new Request(url, { method, headers, body, duplex: 'half' });
}

export async function bytesOf(resp) {
  return new Uint8Array(await resp.arrayBuffer());
}

/** `Location` resolved against `base`, with `params` added to its query. */
export function withQuery(location, base, params) {
  const u = new URL(location, base);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.toString();
}

/** An OCI image manifest for a config blob and layers. */
export function imageManifest(config, layers) {
  const desc = (mediaType, bytes) => ({ mediaType, digest: sha256(bytes), size: bytes.byteLength });
  return new TextEncoder().encode(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: desc('application/vnd.oci.image.config.v1+json', config),
      layers: layers.map((l) => desc('application/vnd.oci.image.layer.v1.tar+gzip', l)),
    }),
  );
}

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

/**
 * Push a blob (POST, then PUT `?digest=`) and a manifest through `send`,
 * a function from web Request to Response (a registry's handle, or fetch
 * against a server at `base`).
 */
export async function pushBlob(send, base, repo, bytes) {
  const post = await send(new Request(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' }));
  if (post.status !== 202) throw new Error(`POST upload: ${post.status} ${await post.text()}`);
  const put = await send(
    new Request(withQuery(post.headers.get('location'), base, { digest: sha256(bytes) }), {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream' },
      body: bytes,
      duplex: 'half',
    }),
  );
  if (put.status !== 201) throw new Error(`PUT blob: ${put.status} ${await put.text()}`);
  return sha256(bytes);
}

export async function pushManifest(send, base, repo, reference, bytes, mediaType = OCI_MANIFEST) {
  const put = await send(
    new Request(`${base}/v2/${repo}/manifests/${reference}`, {
      method: 'PUT',
      headers: { 'content-type': mediaType },
      body: bytes,
      duplex: 'half',
    }),
  );
  if (put.status !== 201) throw new Error(`PUT manifest: ${put.status} ${await put.text()}`);
  return put.headers.get('docker-content-digest');
}

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

async function waitForPort(port, child, deadlineMs, log) {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode} at startup:\n${log()}`);
    const up = await new Promise((ok) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        ok(true);
      });
      s.once('error', () => ok(false));
    });
    if (up) return;
    if (Date.now() > deadline) throw new Error(`not listening on ${port} after ${deadlineMs} ms:\n${log()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Path of an executable on PATH (or in /usr/bin, /usr/sbin), or null. */
export function which(name) {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/usr/sbin'];
  for (const d of dirs) {
    if (d && existsSync(join(d, name))) return join(d, name);
  }
  return null;
}

/**
 * CNCF distribution (`docker-registry serve`, Debian's package) on a free
 * loopback port with its own storage root. Null if the binary is missing.
 */
export async function startDistribution() {
  const bin = which('docker-registry');
  if (!bin) return null;
  const dir = await mkdtemp(join(tmpdir(), 'kura-wasm-upstream-'));
  const port = await freePort();
  const config = join(dir, 'config.yml');
  await writeFile(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(dir, 'root')}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: 127.0.0.1:${port}`,
      '  secret: kura-wasm-tests-secret',
      '',
    ].join('\n'),
  );
  let output = '';
  const child = spawn(bin, ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  await waitForPort(port, child, 30_000, () => output);
  return {
    url: `http://127.0.0.1:${port}`,
    log: () => output,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A fetch that records every request it sends (method and URL). */
export function recordingFetch() {
  const calls = [];
  const f = (input, init = {}) => {
    calls.push({ method: init.method ?? 'GET', url: String(input) });
    return fetch(input, init);
  };
  f.calls = calls;
  f.count = (method, pathPart) =>
    calls.filter((c) => c.method === method && new URL(c.url).pathname.includes(pathPart)).length;
  return f;
}

/**
 * A storage with only the required methods, like an object store (no
 * append, rename, read or listMeta), bodies as two-chunk ReadableStreams:
 * the registry falls back to spooling parts, joining them through
 * put(stream), and rename as get + put + delete.
 */
export function objectStoreLike(inner = new kura.MemoryStorage()) {
  return {
    inner,
    head: (k) => inner.head(k),
    async get(k, range) {
      const o = await inner.get(k, range);
      if (!o) return null;
      const b = o.body;
      const body = new ReadableStream({
        start(c) {
          const half = b.byteLength >> 1;
          if (half > 0) c.enqueue(b.slice(0, half));
          if (b.byteLength > half) c.enqueue(b.slice(half));
          c.close();
        },
      });
      return { size: o.size, body };
    },
    put: (k, data, opts) => inner.put(k, data, opts),
    delete: (k) => inner.delete(k),
    // Unsorted, as objects: the registry sorts.
    list: async (prefix) => (await inner.list(prefix)).reverse().map((key) => ({ key })),
  };
}

export async function tempDir(prefix) {
  return mkdtemp(join(tmpdir(), prefix));
}
