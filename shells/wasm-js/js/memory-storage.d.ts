import type { KuraObject, KuraObjectMeta, KuraRange } from '../pkg/kura_wasm.js';

/** Collect a Uint8Array, ArrayBuffer or ReadableStream into one Uint8Array. */
export function collectBytes(data: Uint8Array | ArrayBuffer | ReadableStream<Uint8Array>): Promise<Uint8Array>;

/** Everything in a Map: for tests, demos and caches that may forget on restart. */
export class MemoryStorage {
  head(key: string): KuraObjectMeta | null;
  get(key: string, range?: KuraRange): KuraObject | null;
  read(key: string): Uint8Array | null;
  put(key: string, data: Uint8Array | ReadableStream<Uint8Array>, options?: { create?: boolean }): Promise<void>;
  append(key: string, offset: number, data: Uint8Array): void;
  rename(from: string, to: string): void;
  delete(key: string): void;
  list(prefix: string): string[];
  listMeta(prefix: string): Array<{ key: string; size: number; modified: number }>;
  /** Every key, sorted. */
  keys(): string[];
  /** Total bytes stored. */
  totalSize(): number;
}
