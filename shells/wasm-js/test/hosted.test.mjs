// Hosted repositories: push and pull through Registry.handle with the JS
// storages (in memory and on disk).

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { describe, it, before, after } from 'node:test';

import {
  BASE,
  FsStorage,
  OCI_MANIFEST,
  bytesOf,
  imageManifest,
  kura,
  objectStoreLike,
  pattern,
  pushBlob,
  pushManifest,
  req,
  sha256,
  tempDir,
  withQuery,
} from './helpers.mjs';

const { Registry, MemoryStorage } = kura;

async function ociError(resp) {
  assert.match(resp.headers.get('content-type') ?? '', /application\/json/);
  const body = await resp.json();
  assert.ok(Array.isArray(body.errors) && body.errors.length > 0, JSON.stringify(body));
  return body.errors[0];
}

const storages = {
  memory: async () => ({ storage: new MemoryStorage(), done: async () => {} }),
  disk: async () => {
    const dir = await tempDir('kura-wasm-hosted-');
    return { storage: new FsStorage(dir), done: () => rm(dir, { recursive: true, force: true }) };
  },
  'object-store-like': async () => ({ storage: objectStoreLike(), done: async () => {} }),
};

for (const [kind, make] of Object.entries(storages)) {
  describe(`hosted push and pull (${kind} storage)`, () => {
    let storage;
    let done;
    let registry;
    let send;
    const repo = 'team/app';
    const config = new TextEncoder().encode('{"architecture":"amd64","os":"linux"}');
    const layer = pattern(300_000, 1);
    const chunkedLayer = pattern(200_001, 2);
    let manifest;

    before(async () => {
      ({ storage, done } = await make());
      registry = new Registry({ storage });
      send = (r) => registry.handle(r);
    });
    after(async () => {
      registry.free();
      await done();
    });

    it('answers the base endpoint with the API version header', async () => {
      const r = await send(req('GET', '/v2/'));
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('docker-distribution-api-version'), 'registry/2.0');
      assert.deepEqual(await r.json(), {});
    });

    it('accepts blobs by POST + PUT ?digest=, chunked PATCHes, and a manifest by tag', async () => {
      assert.equal(await pushBlob(send, BASE, repo, config), sha256(config));
      assert.equal(await pushBlob(send, BASE, repo, layer), sha256(layer));

      // Chunked: two PATCHes with Content-Range, then an empty PUT.
      const post = await send(req('POST', `/v2/${repo}/blobs/uploads/`));
      assert.equal(post.status, 202);
      let location = post.headers.get('location');
      const split = 123_457;
      for (const [from, to] of [
        [0, split],
        [split, chunkedLayer.byteLength],
      ]) {
        const patch = await send(
          req('PATCH', location, {
            headers: { 'content-range': `${from}-${to - 1}`, 'content-type': 'application/octet-stream' },
            body: chunkedLayer.slice(from, to),
          }),
        );
        assert.equal(patch.status, 202, await patch.text());
        assert.equal(patch.headers.get('range'), `0-${to - 1}`);
        location = patch.headers.get('location');
      }
      const put = await send(req('PUT', withQuery(location, BASE, { digest: sha256(chunkedLayer) })));
      assert.equal(put.status, 201, await put.text());
      assert.equal(put.headers.get('docker-content-digest'), sha256(chunkedLayer));

      manifest = imageManifest(config, [layer, chunkedLayer]);
      const digest = await pushManifest(send, BASE, repo, '1.0', manifest);
      assert.equal(digest, sha256(manifest));

      // Finished sessions leave nothing in the upload area.
      assert.deepEqual(await storage.list('uploads/'), []);
    });

    it('serves the manifest byte-identical by tag and by digest', async () => {
      for (const reference of ['1.0', sha256(manifest)]) {
        const r = await send(req('GET', `/v2/${repo}/manifests/${reference}`, { headers: { accept: OCI_MANIFEST } }));
        assert.equal(r.status, 200);
        assert.equal(r.headers.get('content-type'), OCI_MANIFEST);
        assert.equal(r.headers.get('docker-content-digest'), sha256(manifest));
        assert.deepEqual(await bytesOf(r), manifest);
      }
      const head = await send(req('HEAD', `/v2/${repo}/manifests/1.0`));
      assert.equal(head.status, 200);
      assert.equal(head.headers.get('content-length'), String(manifest.byteLength));
      assert.equal(head.headers.get('docker-content-digest'), sha256(manifest));
      assert.equal((await bytesOf(head)).byteLength, 0);
    });

    it('serves blobs byte-identical, with HEAD and ranges', async () => {
      for (const blob of [config, layer, chunkedLayer]) {
        const r = await send(req('GET', `/v2/${repo}/blobs/${sha256(blob)}`));
        assert.equal(r.status, 200);
        assert.equal(r.headers.get('content-length'), String(blob.byteLength));
        assert.equal(r.headers.get('docker-content-digest'), sha256(blob));
        assert.deepEqual(await bytesOf(r), blob);

        const head = await send(req('HEAD', `/v2/${repo}/blobs/${sha256(blob)}`));
        assert.equal(head.status, 200);
        assert.equal(head.headers.get('content-length'), String(blob.byteLength));
        assert.equal((await bytesOf(head)).byteLength, 0);
      }
      const ranged = await send(req('GET', `/v2/${repo}/blobs/${sha256(layer)}`, { headers: { range: 'bytes=1000-1999' } }));
      assert.equal(ranged.status, 206);
      assert.equal(ranged.headers.get('content-range'), `bytes 1000-1999/${layer.byteLength}`);
      assert.deepEqual(await bytesOf(ranged), layer.slice(1000, 2000));

      const unsatisfiable = await send(
        req('GET', `/v2/${repo}/blobs/${sha256(layer)}`, { headers: { range: `bytes=${layer.byteLength}-` } }),
      );
      assert.equal(unsatisfiable.status, 416);
    });

    it('lists tags and the catalog', async () => {
      const tags = await send(req('GET', `/v2/${repo}/tags/list`));
      assert.equal(tags.status, 200);
      assert.deepEqual(await tags.json(), { name: repo, tags: ['1.0'] });
      const catalog = await send(req('GET', '/v2/_catalog'));
      assert.deepEqual(await catalog.json(), { repositories: [repo] });
    });

    it('refuses a blob whose bytes do not match its digest: 400 DIGEST_INVALID, nothing stored', async () => {
      const data = pattern(50_000, 3);
      const claimed = sha256(new TextEncoder().encode('something else'));
      const post = await send(req('POST', `/v2/${repo}/blobs/uploads/`));
      const put = await send(req('PUT', withQuery(post.headers.get('location'), BASE, { digest: claimed }), { body: data }));
      assert.equal(put.status, 400);
      assert.equal((await ociError(put)).code, 'DIGEST_INVALID');

      const get = await send(req('GET', `/v2/${repo}/blobs/${claimed}`));
      assert.equal(get.status, 404);
      assert.equal((await ociError(get)).code, 'BLOB_UNKNOWN');
      const hex = claimed.slice('sha256:'.length);
      assert.equal(await storage.head(`blobs/sha256/${hex.slice(0, 2)}/${hex}`), null);

      // Monolithic POST ?digest= too.
      const mono = await send(req('POST', `/v2/${repo}/blobs/uploads/?digest=${claimed}`, { body: data }));
      assert.equal(mono.status, 400);
      assert.equal((await ociError(mono)).code, 'DIGEST_INVALID');
    });

    it('answers bad input with OCI errors', async () => {
      const missing = sha256(new TextEncoder().encode('not pushed'));
      const m = imageManifest(config, [new TextEncoder().encode('not pushed')]);
      const put = await send(req('PUT', `/v2/${repo}/manifests/2.0`, { headers: { 'content-type': OCI_MANIFEST }, body: m }));
      assert.equal(put.status, 400);
      assert.equal((await ociError(put)).code, 'MANIFEST_BLOB_UNKNOWN');

      const unknownTag = await send(req('GET', `/v2/${repo}/manifests/nope`));
      assert.equal(unknownTag.status, 404);
      assert.equal((await ociError(unknownTag)).code, 'MANIFEST_UNKNOWN');

      const badName = await send(req('GET', `/v2/Team/App/blobs/${missing}`));
      assert.equal(badName.status, 400);
      assert.equal((await ociError(badName)).code, 'NAME_INVALID');

      const badDigest = await send(req('GET', `/v2/${repo}/blobs/sha256:xyz`));
      assert.equal(badDigest.status, 400);
      assert.equal((await ociError(badDigest)).code, 'DIGEST_INVALID');
    });

    it('deletes a tag', async () => {
      const del = await send(req('DELETE', `/v2/${repo}/manifests/1.0`));
      assert.equal(del.status, 202);
      const tags = await send(req('GET', `/v2/${repo}/tags/list`));
      assert.deepEqual(await tags.json(), { name: repo, tags: [] });
      const byDigest = await send(req('GET', `/v2/${repo}/manifests/${sha256(manifest)}`));
      assert.equal(byDigest.status, 200, 'the revision stays');
    });
  });
}

describe('registry options', () => {
  it('turns deletes off with deleteEnabled: false', async () => {
    const registry = new Registry({ storage: new MemoryStorage(), deleteEnabled: false });
    const data = new TextEncoder().encode('x');
    await pushBlob((r) => registry.handle(r), BASE, 'a/b', data);
    const del = await registry.handle(req('DELETE', `/v2/a/b/blobs/${sha256(data)}`));
    assert.ok(del.status >= 400 && del.status < 500, String(del.status));
    assert.equal((await del.json()).errors[0].code, 'UNSUPPORTED');
  });

  it('bounds manifests with maxManifestSize', async () => {
    const registry = new Registry({ storage: new MemoryStorage(), maxManifestSize: 100 });
    const big = imageManifest(new Uint8Array(10), [new Uint8Array(20), new Uint8Array(30)]);
    const r = await registry.handle(req('PUT', '/v2/a/b/manifests/1', { headers: { 'content-type': OCI_MANIFEST }, body: big }));
    assert.equal(r.status, 413);
  });

  it('rejects invalid configurations', () => {
    assert.throws(() => new Registry({}), /storage/);
    assert.throws(() => new Registry({ storage: { head() {} } }), /lacks method/);
    assert.throws(() => new Registry({ storage: new MemoryStorage(), deleteEnable: false }), /unknown option "deleteEnable"/);
    assert.throws(
      () => new Registry({ storage: new MemoryStorage(), upstreams: [{ name: 'docker.io' }] }),
      /upstreams\[0\]\.url is required/,
    );
    assert.throws(
      () => new Registry({ storage: new MemoryStorage(), upstreams: [{ name: 'a/b', url: 'http://x' }] }),
      /one lowercase name component/,
    );
    assert.throws(
      () =>
        new Registry({
          storage: new MemoryStorage(),
          upstreams: [{ name: 'docker.io', url: 'https://registry-1.docker.io' }],
          defaultUpstream: 'ghcr.io',
        }),
      /default upstream "ghcr.io" is not configured/,
    );
  });

  it('purges upload sessions idle for longer than asked', async () => {
    const storage = new MemoryStorage();
    const registry = new Registry({ storage });
    const post = await registry.handle(req('POST', '/v2/a/b/blobs/uploads/'));
    assert.equal(post.status, 202);
    assert.equal(await registry.purgeStaleUploads(60_000), 0, 'a fresh session stays');
    await new Promise((r) => setTimeout(r, 5));
    assert.equal(await registry.purgeStaleUploads(1), 1);
    assert.deepEqual(storage.list('uploads/'), []);
    const status = await registry.handle(req('GET', post.headers.get('location')));
    assert.equal(status.status, 404);
    assert.equal(await registry.purgeInterruptedFills(), 0);
  });

  it('exposes Prometheus metrics', async () => {
    const registry = new Registry({ storage: new MemoryStorage() });
    await registry.handle(req('GET', '/v2/'));
    assert.match(registry.metrics(), /kura_/);
  });
});
