// kura-wasm: the registry (wasm) plus the in-memory storage. Loads the wasm
// module once, at import: from disk where the package is on a file system
// (Node, Deno, Bun: node:fs/promises), else with fetch (browsers).

import init, * as wasm from '../pkg/kura_wasm.js';

const wasmUrl = new URL('../pkg/kura_wasm_bg.wasm', import.meta.url);

async function wasmBytes() {
  if (wasmUrl.protocol === 'file:') {
    const { readFile } = await import('node:fs/promises');
    return readFile(wasmUrl);
  }
  return fetch(wasmUrl);
}

await init({ module_or_path: await wasmBytes() });

export const Registry = wasm.Registry;
export { MemoryStorage } from './memory-storage.mjs';

/** kura-core's storage conformance suite, when the package was built with
 * the `conformance` feature (the tests are); otherwise undefined. */
export const runStorageConformance = wasm.runStorageConformance;
