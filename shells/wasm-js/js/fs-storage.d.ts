import type { KuraObject, KuraObjectMeta, KuraRange } from '../pkg/kura_wasm.js';

/** Local-disk storage on node:fs/promises: keys are files under `root`,
 * writes go through a temporary file renamed into place. */
export class FsStorage {
  constructor(root: string);
  readonly root: string;
  head(key: string): Promise<KuraObjectMeta | null>;
  get(key: string, range?: KuraRange): Promise<KuraObject | null>;
  read(key: string): Promise<Uint8Array | null>;
  put(key: string, data: Uint8Array | ReadableStream<Uint8Array>, options?: { create?: boolean }): Promise<void>;
  append(key: string, offset: number, data: Uint8Array): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  delete(key: string): Promise<void>;
  list(prefix: string): Promise<string[]>;
  listMeta(prefix: string): Promise<Array<{ key: string; size: number; modified: number }>>;
  /** Remove temporary files of interrupted writes older than `olderThanMs`
   * (0 at startup); resolves to how many. */
  sweepTemporaryFiles(olderThanMs?: number): Promise<number>;
}
