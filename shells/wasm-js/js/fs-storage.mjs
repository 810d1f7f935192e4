// A local-disk storage for kura's Registry, on node:fs/promises (Node, and
// runtimes with Node's fs API).
//
// Keys map to files under the root directory. Every write goes to a
// temporary file beside its target and is renamed into place once complete,
// so readers see the old object or the whole new one and a crash leaves no
// partial object (only a `.kura-tmp-*` file, never listed, removed by
// `sweepTemporaryFiles`). `create` puts link the temporary file to the
// target, which fails if it exists.

import { link, mkdir, open, readFile, readdir, rename, rmdir, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';

const TMP_PREFIX = '.kura-tmp-';
const READ_CHUNK = 256 * 1024;

function codedError(code, message) {
  const e = new Error(message);
  e.code = code;
  return e;
}

function isMissing(e) {
  return e?.code === 'ENOENT' || e?.code === 'ENOTDIR';
}

function tmpName() {
  return `${TMP_PREFIX}${globalThis.crypto.randomUUID()}`;
}

export class FsStorage {
  /** @param {string} root directory (created on first write) */
  constructor(root) {
    this.root = resolve(root);
  }

  /** The file for a key. Keys are `/`-separated; no empty, `.` or `..`
   * segments, none starting with `.` (those are temporary files), no
   * backslashes or NULs: a key can never name a path outside the root. */
  #path(key) {
    if (typeof key !== 'string' || key.length === 0) throw new TypeError('empty storage key');
    const parts = key.split('/');
    for (const p of parts) {
      if (p === '' || p.startsWith('.') || p.includes('\\') || p.includes('\0')) {
        throw new TypeError(`invalid storage key ${JSON.stringify(key)}`);
      }
    }
    return join(this.root, ...parts);
  }

  async head(key) {
    try {
      const s = await stat(this.#path(key));
      return s.isFile() ? { size: s.size, modified: s.mtimeMs } : null;
    } catch (e) {
      if (isMissing(e)) return null;
      throw e;
    }
  }

  async get(key, range) {
    let fh;
    try {
      fh = await open(this.#path(key), 'r');
    } catch (e) {
      if (isMissing(e) || e?.code === 'EISDIR') return null;
      throw e;
    }
    try {
      const s = await fh.stat();
      if (!s.isFile()) {
        await fh.close();
        return null;
      }
      const start = range ? range.start : 0;
      const end = range ? range.end : s.size;
      return { size: s.size, body: fileStream(fh, start, end) };
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  async read(key) {
    try {
      return await readFile(this.#path(key));
    } catch (e) {
      if (isMissing(e) || e?.code === 'EISDIR') return null;
      throw e;
    }
  }

  async put(key, data, { create = false } = {}) {
    const target = this.#path(key);
    const tmp = join(dirname(target), tmpName());
    const fh = await retryMissingDir(target, () => open(tmp, 'wx'));
    try {
      if (data instanceof Uint8Array) {
        await writeAll(fh, data);
      } else {
        const reader = data.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          await writeAll(fh, value);
        }
      }
      await fh.close();
      if (create) {
        // link fails with EEXIST if the target exists: create-if-absent.
        await retryMissingDir(target, () => link(tmp, target));
        await unlink(tmp);
      } else {
        await retryMissingDir(target, () => rename(tmp, target));
      }
    } catch (e) {
      await fh.close().catch(() => {});
      await unlink(tmp).catch(() => {});
      throw e;
    }
  }

  /** Write `data` at `offset` of a file holding exactly `offset` bytes
   * (0 creates it). Not atomic: for staging objects only. */
  async append(key, offset, data) {
    const p = this.#path(key);
    let fh;
    try {
      fh = await open(p, 'r+');
    } catch (e) {
      if (!isMissing(e)) throw e;
      if (offset !== 0) throw codedError('EOFFSET', `append at ${offset}, ${key} does not exist`);
      fh = await retryMissingDir(p, () => open(p, 'wx'));
    }
    try {
      const { size } = await fh.stat();
      if (size !== offset) throw codedError('EOFFSET', `append at ${offset}, ${key} holds ${size} bytes`);
      let at = 0;
      while (at < data.byteLength) {
        const { bytesWritten } = await fh.write(data, at, data.byteLength - at, offset + at);
        at += bytesWritten;
      }
    } finally {
      await fh.close();
    }
  }

  async rename(from, to) {
    const src = this.#path(from);
    const target = this.#path(to);
    // ENOENT: the source is missing (the caller's problem, answered
    // before any directory is made for it) or the target's directory is.
    const sourceGone = async () => (await this.head(from)) === null;
    try {
      await retryMissingDir(target, () => rename(src, target), sourceGone);
    } catch (e) {
      if (isMissing(e) && (await sourceGone())) throw codedError('ENOENT', `${from} does not exist`);
      throw e;
    }
    await this.#pruneDirs(dirname(src));
  }

  async delete(key) {
    const p = this.#path(key);
    try {
      await unlink(p);
    } catch (e) {
      if (isMissing(e)) return;
      throw e;
    }
    await this.#pruneDirs(dirname(p));
  }

  /** Remove directories left empty, up to (not including) the root. */
  async #pruneDirs(dir) {
    while (dir.startsWith(this.root + sep)) {
      try {
        await rmdir(dir);
      } catch {
        return; // not empty (or already gone): done
      }
      dir = dirname(dir);
    }
  }

  async list(prefix) {
    return (await this.#walkPrefix(prefix, false)).map((e) => e.key);
  }

  async listMeta(prefix) {
    return this.#walkPrefix(prefix, true);
  }

  async #walkPrefix(prefix, withMeta) {
    // Walk the deepest directory the prefix names, then filter.
    const cut = prefix.lastIndexOf('/');
    const dirKey = cut < 0 ? '' : prefix.slice(0, cut);
    const parts = dirKey === '' ? [] : dirKey.split('/');
    if (parts.some((p) => p === '' || p.startsWith('.') || p.includes('\\'))) return [];
    const out = [];
    await walk(join(this.root, ...parts), dirKey, out, withMeta);
    return out.filter((e) => e.key.startsWith(prefix)).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /** Remove temporary files of interrupted writes older than `olderThanMs`
   * (0 at startup, when nothing is writing yet). Resolves to how many. */
  async sweepTemporaryFiles(olderThanMs = 0) {
    let removed = 0;
    const now = Date.now();
    const visit = async (dir) => {
      for (const ent of await entriesOf(dir)) {
        const p = join(dir, ent.name);
        if (ent.isDirectory()) {
          await visit(p);
        } else if (ent.name.startsWith(TMP_PREFIX)) {
          const s = await stat(p).catch(() => null);
          if (s && now - s.mtimeMs >= olderThanMs) {
            await unlink(p).catch(() => {});
            removed++;
          }
        }
      }
    };
    await visit(this.root);
    return removed;
  }
}

/** The entries of `dir`; none if it does not exist. */
async function entriesOf(dir) {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (e) {
    if (isMissing(e)) return [];
    throw e;
  }
}

async function walk(dir, dirKey, out, withMeta) {
  for (const ent of await entriesOf(dir)) {
    if (ent.name.startsWith('.')) continue; // temporary files
    const key = dirKey === '' ? ent.name : `${dirKey}/${ent.name}`;
    const p = join(dir, ent.name);
    if (ent.isDirectory()) {
      await walk(p, key, out, withMeta);
    } else if (ent.isFile()) {
      if (!withMeta) {
        out.push({ key });
        continue;
      }
      const s = await stat(p).catch((e) => (isMissing(e) ? null : Promise.reject(e)));
      if (s) out.push({ key, size: s.size, modified: s.mtimeMs });
    }
  }
}

/** How often a write recreates a directory that a concurrent delete keeps
 * pruning before it gives up (as many as the native local-disk store). */
const DIRECTORY_ATTEMPTS = 16;

/** Run `op`, creating the target's directory and retrying when it is
 * missing (first write there, or a concurrent delete just pruned it).
 * Creating the directory races with those deletes too: `mkdir -p` fails
 * with ENOENT when a parent it has just made is pruned before the next
 * level, so that counts as one more lost attempt, not as the answer.
 * `hopeless` says when ENOENT is not about the directory (a missing
 * source), to stop before making one. */
async function retryMissingDir(target, op, hopeless = async () => false) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await op();
    } catch (e) {
      if (!isMissing(e) || attempt >= DIRECTORY_ATTEMPTS || (await hopeless())) throw e;
    }
    try {
      await mkdir(dirname(target), { recursive: true });
    } catch (e) {
      if (!isMissing(e)) throw e;
    }
  }
}

async function writeAll(fh, bytes) {
  let at = 0;
  while (at < bytes.byteLength) {
    const { bytesWritten } = await fh.write(bytes, at, bytes.byteLength - at);
    at += bytesWritten;
  }
}

/** Bytes `start..end` of an open file as a ReadableStream; the file is
 * closed when the stream ends, fails or is cancelled. Reads happen only on
 * demand (highWaterMark 0). */
function fileStream(fh, start, end) {
  let pos = start;
  let closed = false;
  const close = async () => {
    if (!closed) {
      closed = true;
      await fh.close().catch(() => {});
    }
  };
  return new ReadableStream(
    {
      async pull(controller) {
        try {
          const n = Math.min(READ_CHUNK, end - pos);
          if (n <= 0) {
            await close();
            controller.close();
            return;
          }
          const buf = new Uint8Array(n);
          const { bytesRead } = await fh.read(buf, 0, n, pos);
          if (bytesRead === 0) throw new Error('file ended before the requested range');
          pos += bytesRead;
          controller.enqueue(bytesRead === n ? buf : buf.subarray(0, bytesRead));
        } catch (e) {
          await close();
          controller.error(e);
        }
      },
      cancel: close,
    },
    { highWaterMark: 0 },
  );
}
