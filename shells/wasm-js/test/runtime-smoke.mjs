// The package in whatever runtime runs this file (Node, Deno, Bun): storage
// conformance (when built with it), the registry on the runtime's own HTTP
// server (Deno.serve, Bun.serve, node:http) with FsStorage, a push and pull
// over HTTP, and a second registry mirroring the first through the
// runtime's fetch. Prints one line per step; throws on any failure.
// Run by runtimes.test.mjs.

import { Registry, MemoryStorage, runStorageConformance } from '../js/index.mjs';
import { FsStorage } from '../js/fs-storage.mjs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const rt = globalThis.Deno ? `deno ${Deno.version.deno}` : globalThis.Bun ? `bun ${Bun.version}` : `node ${process.version}`;
async function sha256(bytes) {
  const h = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return 'sha256:' + [...h].map((b) => b.toString(16).padStart(2, '0')).join('');
}
const eq = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
function check(ok, what) {
  if (!ok) throw new Error(`${rt}: ${what}`);
}

const dir = await mkdtemp(join(tmpdir(), 'kura-rt-'));
if (runStorageConformance) {
  await runStorageConformance(new MemoryStorage());
  await runStorageConformance(new FsStorage(join(dir, 'conf')));
  console.log(rt, 'conformance ok (memory, fs)');
}

const registry = new Registry({ storage: new FsStorage(join(dir, 'data')) });
const handle = (r) => registry.handle(r);
let server, base;
if (globalThis.Deno) {
  server = Deno.serve({ port: 0, hostname: '127.0.0.1', onListen() {} }, handle);
  base = `http://127.0.0.1:${server.addr.port}`;
} else if (globalThis.Bun) {
  server = Bun.serve({ port: 0, hostname: '127.0.0.1', fetch: handle });
  base = `http://127.0.0.1:${server.port}`;
} else {
  const { serve } = await import('../js/node.mjs');
  server = await serve(handle, { port: 0 });
  base = `http://127.0.0.1:${server.address().port}`;
}
const blob = new Uint8Array(3 * 1024 * 1024 + 5).map((_, i) => (i * 7919) & 0xff);
const digest = await sha256(blob);
const post = await fetch(`${base}/v2/team/app/blobs/uploads/`, { method: 'POST' });
const loc = new URL(post.headers.get('location'), base);
loc.searchParams.set('digest', digest);
const put = await fetch(loc, { method: 'PUT', body: blob });
const got = new Uint8Array(await (await fetch(`${base}/v2/team/app/blobs/${digest}`)).arrayBuffer());
const head = await fetch(`${base}/v2/team/app/blobs/${digest}`, { method: 'HEAD' });
const bad = await fetch(`${base}/v2/team/app/manifests/nope`);
const badBody = await bad.json();
check(post.status === 202 && put.status === 201, `push: ${post.status} ${put.status}`);
check(eq(got, blob), 'pulled bytes differ');
check(head.status === 200 && head.headers.get('content-length') === String(blob.length), 'HEAD');
check(bad.status === 404, 'missing manifest');
console.log(rt, 'served:', post.status, put.status, eq(got, blob) ? 'bytes identical' : 'BYTES DIFFER', 'HEAD', head.status, head.headers.get('content-length'), 'missing', bad.status, badBody.errors[0].code);
// A second registry mirrors the first through this runtime's fetch.
const mirror = new Registry({ storage: new MemoryStorage(), upstreams: [{ name: 'up.test', url: base }] });
const m1 = await mirror.handle(new Request(`http://m/v2/up.test/team/app/blobs/${digest}`));
const mb = new Uint8Array(await m1.arrayBuffer());
const m2 = await mirror.handle(new Request(`http://m/v2/up.test/team/app/blobs/${digest}`));
await m2.arrayBuffer();
check(m1.status === 200 && m1.headers.get('x-kura-cache') === 'miss' && eq(mb, blob), 'mirror fill');
check(m2.headers.get('x-kura-cache') === 'hit', 'mirror hit');
console.log(rt, 'mirrored:', m1.status, m1.headers.get('x-kura-cache'), eq(mb, blob) ? 'bytes identical' : 'BYTES DIFFER', 'then', m2.headers.get('x-kura-cache'));
if (globalThis.Deno) await server.shutdown(); else if (globalThis.Bun) server.stop(true); else server.close();
await rm(dir, { recursive: true, force: true });
