// An in-memory storage for kura's Registry: for tests, demos and caches
// that may forget everything on restart. Works in any JS runtime.

/** @param {string} code @param {string} message */
function codedError(code, message) {
  const e = new Error(message);
  e.code = code;
  return e;
}

/** Collect a Uint8Array or ReadableStream<Uint8Array> into one Uint8Array. */
export async function collectBytes(data) {
  if (data instanceof Uint8Array) return data.slice();
  if (data instanceof ArrayBuffer) return new Uint8Array(data.slice(0));
  const chunks = [];
  let total = 0;
  const reader = data.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    total += value.byteLength;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

export class MemoryStorage {
  /** @type {Map<string, { data: Uint8Array, modified: number }>} */
  #objects = new Map();

  head(key) {
    const o = this.#objects.get(key);
    return o ? { size: o.data.byteLength, modified: o.modified } : null;
  }

  get(key, range) {
    const o = this.#objects.get(key);
    if (!o) return null;
    // Stored arrays are never mutated (a put replaces the entry), so a
    // view is safe to hand out.
    const body = range ? o.data.subarray(range.start, range.end) : o.data;
    return { size: o.data.byteLength, body };
  }

  read(key) {
    return this.#objects.get(key)?.data ?? null;
  }

  async put(key, data, { create = false } = {}) {
    // Everything is collected before the map changes: a failing stream
    // leaves the old object (or nothing) in place.
    const bytes = await collectBytes(data);
    if (create && this.#objects.has(key)) {
      throw codedError('EEXIST', `${key} already exists`);
    }
    this.#objects.set(key, { data: bytes, modified: Date.now() });
  }

  /** Write `data` at `offset` of an object holding exactly `offset` bytes
   * (0 creates it). The object grows into spare capacity (doubling), so a
   * long series of appends copies each byte O(1) times; the bytes already
   * handed out in views are never changed. */
  append(key, offset, data) {
    const o = this.#objects.get(key);
    const len = o ? o.data.byteLength : 0;
    if (len !== offset) throw codedError('EOFFSET', `append at ${offset}, ${key} holds ${len} bytes`);
    const need = len + data.byteLength;
    let buffer = o ? o.data.buffer : new ArrayBuffer(0);
    let base = o ? o.data.byteOffset : 0;
    if (base + need > buffer.byteLength) {
      const grown = new ArrayBuffer(Math.max(need, 2 * len, 64 * 1024));
      if (o) new Uint8Array(grown).set(o.data);
      buffer = grown;
      base = 0;
    }
    const view = new Uint8Array(buffer, base, need);
    view.set(data, len);
    this.#objects.set(key, { data: view, modified: Date.now() });
  }

  rename(from, to) {
    const o = this.#objects.get(from);
    if (!o) throw codedError('ENOENT', `${from} does not exist`);
    this.#objects.delete(from);
    this.#objects.set(to, o);
  }

  delete(key) {
    this.#objects.delete(key);
  }

  list(prefix) {
    return [...this.#objects.keys()].filter((k) => k.startsWith(prefix)).sort();
  }

  listMeta(prefix) {
    return this.list(prefix).map((key) => {
      const o = this.#objects.get(key);
      return { key, size: o.data.byteLength, modified: o.modified };
    });
  }

  /** Every key, sorted (for tests and debugging). */
  keys() {
    return [...this.#objects.keys()].sort();
  }

  /** Total bytes stored. */
  totalSize() {
    let n = 0;
    for (const o of this.#objects.values()) n += o.data.byteLength;
    return n;
  }
}
