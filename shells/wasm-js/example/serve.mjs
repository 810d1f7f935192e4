// Serve kura-wasm on node:http with local-disk storage.
//
//   node example/serve.mjs                      # http://127.0.0.1:5000, data in ./kura-data
//   PORT=5001 KURA_DATA=/var/lib/kura node example/serve.mjs
//   KURA_UPSTREAMS='[{"name":"docker.io","url":"https://registry-1.docker.io"}]' \
//     KURA_DEFAULT_UPSTREAM=docker.io node example/serve.mjs
//
// Without KURA_UPSTREAMS it mirrors docker.io and ghcr.io by name prefix
// (`127.0.0.1:5000/docker.io/library/alpine:3.20`) and hosts every other
// name; KURA_UPSTREAMS='[]' hosts everything.

import { Registry } from '../js/index.mjs';
import { FsStorage } from '../js/fs-storage.mjs';
import { serve } from '../js/node.mjs';

const port = Number(process.env.PORT ?? 5000);
const host = process.env.HOST ?? '127.0.0.1';
const dataDir = process.env.KURA_DATA ?? './kura-data';
const upstreams = process.env.KURA_UPSTREAMS
  ? JSON.parse(process.env.KURA_UPSTREAMS)
  : [
      { name: 'docker.io', url: 'https://registry-1.docker.io' },
      { name: 'ghcr.io', url: 'https://ghcr.io' },
    ];

const storage = new FsStorage(dataDir);
const registry = new Registry({
  storage,
  upstreams,
  defaultUpstream: process.env.KURA_DEFAULT_UPSTREAM || undefined,
});

// Leftovers of a previous run: temporary files of interrupted writes and
// spools of interrupted cache fills.
await storage.sweepTemporaryFiles(0);
await registry.purgeInterruptedFills();

// Abandoned upload sessions go after a day.
const DAY_MS = 24 * 3600 * 1000;
setInterval(() => {
  registry.purgeStaleUploads(DAY_MS).catch((e) => console.error('kura: upload cleanup failed:', e));
}, 3600 * 1000).unref();

const server = await serve((request) => registry.handle(request), { port, host });
const { port: actualPort } = server.address();
console.log(`kura-wasm listening on http://${host}:${actualPort} (data in ${storage.root})`);

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    // Stop accepting connections; in-flight requests finish.
    server.close(() => process.exit(0));
    server.closeIdleConnections?.();
  });
}
