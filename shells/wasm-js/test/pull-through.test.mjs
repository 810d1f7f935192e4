// Pull-through cache: the registry mirrors a real upstream (CNCF
// distribution, Debian's docker-registry, on loopback) through the host's
// fetch, and refuses a lying upstream (a small node:http fake).

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';

import {
  FsStorage,
  OCI_MANIFEST,
  bytesOf,
  imageManifest,
  kura,
  objectStoreLike,
  pattern,
  pushBlob,
  pushManifest,
  recordingFetch,
  req,
  sha256,
  startDistribution,
  tempDir,
} from './helpers.mjs';

const { Registry, MemoryStorage } = kura;

function blobKey(digest) {
  const hex = digest.slice('sha256:'.length);
  return `blobs/sha256/${hex.slice(0, 2)}/${hex}`;
}

const upstream = await startDistribution();
const skipDistribution = upstream
  ? false
  : 'docker-registry (Debian package docker-registry, CNCF distribution) is not installed';
if (!upstream) console.log(`# SKIP pull-through against distribution: ${skipDistribution}`);

const storages = {
  memory: async () => ({ storage: new MemoryStorage(), done: async () => {} }),
  disk: async () => {
    const dir = await tempDir('kura-wasm-mirror-');
    return { storage: new FsStorage(dir), done: () => rm(dir, { recursive: true, force: true }) };
  },
  'object-store-like': async () => ({ storage: objectStoreLike(), done: async () => {} }),
};

describe('pull-through from distribution', { skip: skipDistribution }, () => {
  const repo = 'team/app';
  const config = new TextEncoder().encode('{"architecture":"arm64","os":"linux"}');
  const small = pattern(70_000, 11);
  // Larger than one spool chunk (8 MiB): the fill spools several parts and
  // joins them through put(stream).
  const large = pattern(9 * 1024 * 1024 + 4321, 12);
  let manifest;

  before(async () => {
    const send = (r) => fetch(r);
    for (const b of [config, small, large]) await pushBlob(send, upstream.url, repo, b);
    manifest = imageManifest(config, [small, large]);
    await pushManifest(send, upstream.url, repo, '1.0', manifest);
  });
  after(async () => {
    await upstream?.stop();
  });

  for (const [kind, make] of Object.entries(storages)) {
    describe(`${kind} storage`, () => {
      let storage;
      let done;
      let registry;
      let upstreamFetch;
      const local = `upstream.test/${repo}`;

      before(async () => {
        ({ storage, done } = await make());
        upstreamFetch = recordingFetch();
        registry = new Registry({
          storage,
          fetch: upstreamFetch,
          upstreams: [{ name: 'upstream.test', url: upstream.url, tagTtlSecs: 3600 }],
        });
      });
      after(async () => {
        registry.free();
        await done();
      });

      it('fetches the manifest by tag once, then serves it from storage', async () => {
        const first = await registry.handle(req('GET', `/v2/${local}/manifests/1.0`, { headers: { accept: OCI_MANIFEST } }));
        assert.equal(first.status, 200, await first.clone().text());
        assert.equal(first.headers.get('x-kura-cache'), 'miss');
        assert.equal(first.headers.get('docker-content-digest'), sha256(manifest));
        assert.deepEqual(await bytesOf(first), manifest);

        const again = await registry.handle(req('GET', `/v2/${local}/manifests/1.0`));
        assert.equal(again.headers.get('x-kura-cache'), 'hit');
        assert.deepEqual(await bytesOf(again), manifest);
        assert.equal(upstreamFetch.count('GET', '/manifests/'), 1);

        // ?ns= names the same upstream.
        const ns = await registry.handle(req('GET', `/v2/${repo}/manifests/${sha256(manifest)}?ns=upstream.test`));
        assert.equal(ns.status, 200);
        assert.deepEqual(await bytesOf(ns), manifest);
      });

      it('fills blobs from upstream once, byte-identical, then serves them from storage', async () => {
        for (const blob of [config, small, large]) {
          const d = sha256(blob);
          const first = await registry.handle(req('GET', `/v2/${local}/blobs/${d}`));
          assert.equal(first.status, 200);
          assert.equal(first.headers.get('x-kura-cache'), 'miss');
          assert.equal(first.headers.get('content-length'), String(blob.byteLength));
          assert.deepEqual(await bytesOf(first), blob);
          assert.equal(upstreamFetch.count('GET', `/blobs/${d}`), 1);

          const second = await registry.handle(req('GET', `/v2/${local}/blobs/${d}`));
          assert.equal(second.status, 200);
          assert.equal(second.headers.get('x-kura-cache'), 'hit');
          assert.deepEqual(await bytesOf(second), blob);
          assert.equal(upstreamFetch.count('GET', `/blobs/${d}`), 1, 'no second upstream GET');
          assert.ok(await storage.head(blobKey(d)), 'blob stored');
        }
        // Fill spools are gone.
        assert.deepEqual(await storage.list('uploads/'), []);
      });

      it('evicts mirrored blobs down to a size, and fills them again on demand', async () => {
        const report = await registry.evict(0, 0);
        assert.equal(report.evictedBlobs, 3, JSON.stringify(report));
        assert.equal(report.evictedBytes, config.byteLength + small.byteLength + large.byteLength);
        const d = sha256(small);
        assert.equal(await storage.head(blobKey(d)), null);
        const again = await registry.handle(req('GET', `/v2/${local}/blobs/${d}`));
        assert.equal(again.headers.get('x-kura-cache'), 'miss');
        assert.deepEqual(await bytesOf(again), small);
        assert.equal(upstreamFetch.count('GET', `/blobs/${d}`), 2);
        // Manifests are never evicted.
        const m = await registry.handle(req('GET', `/v2/${local}/manifests/1.0`));
        assert.equal(m.headers.get('x-kura-cache'), 'hit');
      });

      it('answers 404 BLOB_UNKNOWN for a blob the upstream does not have', async () => {
        const d = sha256(new TextEncoder().encode('absent upstream'));
        const r = await registry.handle(req('GET', `/v2/${local}/blobs/${d}`));
        assert.equal(r.status, 404);
        assert.equal((await r.json()).errors[0].code, 'BLOB_UNKNOWN');
      });

      it('is read-only', async () => {
        const r = await registry.handle(req('POST', `/v2/${local}/blobs/uploads/`));
        assert.ok(r.status >= 400 && r.status < 500);
        assert.equal((await r.json()).errors[0].code, 'UNSUPPORTED');
      });
    });
  }

  it('shares one upstream fetch between concurrent misses', async () => {
    const upstreamFetch = recordingFetch();
    const registry = new Registry({
      storage: new MemoryStorage(),
      fetch: upstreamFetch,
      upstreams: [{ name: 'upstream.test', url: upstream.url }],
      defaultUpstream: 'upstream.test',
    });
    const d = sha256(large);
    // Bare names go to the default upstream.
    const responses = await Promise.all(
      Array.from({ length: 4 }, () => registry.handle(req('GET', `/v2/${repo}/blobs/${d}`))),
    );
    for (const r of responses) {
      assert.equal(r.status, 200);
      assert.deepEqual(await bytesOf(r), large);
    }
    assert.equal(upstreamFetch.count('GET', `/blobs/${d}`), 1);
    registry.free();
  });
});

describe('a lying upstream', () => {
  const honest = pattern(40_000, 21);
  const digest = sha256(honest);
  const lie = pattern(40_000, 22); // same length, other bytes
  const manifest = imageManifest(new TextEncoder().encode('{}'), [honest]);
  const manifestDigest = sha256(manifest);
  let server;
  let url;
  const hits = [];

  before(async () => {
    server = createServer((rq, rs) => {
      hits.push(`${rq.method} ${rq.url}`);
      if (rq.url === `/v2/lie/app/blobs/${digest}`) {
        rs.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': lie.byteLength });
        rs.end(rq.method === 'HEAD' ? undefined : lie);
      } else if (rq.url === `/v2/lie/app/manifests/${manifestDigest}`) {
        // The bytes of another manifest under the asked digest.
        const other = imageManifest(new TextEncoder().encode('{}'), [lie]);
        rs.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': other.byteLength });
        rs.end(rq.method === 'HEAD' ? undefined : other);
      } else {
        rs.writeHead(404, { 'content-type': 'application/json' });
        rs.end('{"errors":[{"code":"NOT_FOUND","message":"no"}]}');
      }
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${server.address().port}`;
  });
  after(() => new Promise((r) => server.close(r)));

  for (const [kind, make] of Object.entries(storages)) {
    it(`never stores wrong bytes under a digest (${kind} storage)`, async () => {
      const { storage, done } = await make();
      const registry = new Registry({ storage, upstreams: [{ name: 'liar.test', url }] });
      try {
        hits.length = 0;
        for (let attempt = 1; attempt <= 2; attempt++) {
          const r = await registry.handle(req('GET', `/v2/liar.test/lie/app/blobs/${digest}`));
          if (r.status === 200) {
            // Headers went out before the bytes could be checked: the body
            // must fail rather than complete with the wrong bytes.
            await assert.rejects(bytesOf(r));
          } else {
            assert.ok(r.status >= 500, String(r.status));
          }
          assert.equal(await storage.head(blobKey(digest)), null, 'wrong bytes stored');
          assert.equal(
            hits.filter((h) => h === `GET /v2/lie/app/blobs/${digest}`).length,
            attempt,
            'nothing cached: every attempt goes upstream',
          );
        }

        const m = await registry.handle(req('GET', `/v2/liar.test/lie/app/manifests/${manifestDigest}`));
        assert.ok(m.status >= 500, String(m.status));
        assert.equal((await m.json()).errors[0].code, 'UNAVAILABLE');
        assert.equal(await storage.head(blobKey(manifestDigest)), null);
        assert.deepEqual(await storage.list('repositories/'), []);
        assert.deepEqual(await storage.list('uploads/'), [], 'spools removed');
      } finally {
        registry.free();
        await done();
      }
    });
  }
});
