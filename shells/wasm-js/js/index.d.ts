export { Registry } from '../pkg/kura_wasm.js';
export type {
  EvictionReport,
  KuraObject,
  KuraObjectMeta,
  KuraRange,
  KuraStorage,
  KuraUpstream,
  RegistryOptions,
} from '../pkg/kura_wasm.js';
export { MemoryStorage } from './memory-storage.js';

/** kura-core's storage conformance suite; only in packages built with the
 * `conformance` feature (the tests' build). */
export const runStorageConformance: ((storage: import('../pkg/kura_wasm.js').KuraStorage) => Promise<void>) | undefined;
