// kura-core's storage conformance suite (built into the test package with
// the `conformance` feature) against the package's JS storages and against
// a storage with only the required methods, which exercises the fallbacks
// (read via get, rename via get + put + delete, listMeta via list + head).

import { rm } from 'node:fs/promises';
import { describe, it } from 'node:test';

import { FsStorage, kura, objectStoreLike, tempDir } from './helpers.mjs';

const { MemoryStorage, runStorageConformance } = kura;
const skip = runStorageConformance ? false : 'package built without the conformance feature';

describe('storage conformance', { skip }, () => {
  it('MemoryStorage', async () => {
    await runStorageConformance(new MemoryStorage());
  });

  it('FsStorage', async () => {
    const dir = await tempDir('kura-wasm-conformance-');
    try {
      const s = new FsStorage(dir);
      await runStorageConformance(s);
      // Nothing half-written stays behind.
      await s.sweepTemporaryFiles(0).then((n) => {
        if (n !== 0) throw new Error(`${n} temporary files left`);
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a storage with only the required methods', async () => {
    await runStorageConformance(objectStoreLike());
  });
});

describe('FsStorage keys', () => {
  it('refuses keys that could leave the root', async () => {
    const dir = await tempDir('kura-wasm-keys-');
    try {
      const s = new FsStorage(dir);
      for (const bad of ['../x', 'a/../../x', '/abs', 'a//b', 'a/.hidden', 'a\\b', '']) {
        await s.put(bad, new Uint8Array(1)).then(
          () => {
            throw new Error(`accepted ${JSON.stringify(bad)}`);
          },
          (e) => {
            if (!(e instanceof TypeError)) throw e;
          },
        );
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
