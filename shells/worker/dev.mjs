// The Worker in wrangler's local runtime (workerd, local R2), like
// `wrangler dev --local` but with the devtools inspector off:
//
//   node dev.mjs [--config FILE] [--ip ADDR] [--port PORT] [--persist-to DIR]
//                [--var NAME:VALUE]... [--watch] [--test-scheduled]
//
// --test-scheduled: as with `wrangler dev --test-scheduled`, a GET of
// /__scheduled?cron=... runs the Worker's scheduled (Cron Trigger) handler.
//
// Why not `wrangler dev --local`: it always attaches its inspector proxy to
// the Worker and enables the inspector's Network domain. workerd then sends
// a `Network.dataReceived` event for every write of a subrequest's response
// body (about 4 KiB each: workerd's ResponseStreamWrapper in
// src/workerd/io/worker.c++ reports each one), and wrangler's
// InspectorProxyWorker forwards every event it receives as a separate
// `debug-log` POST to wrangler's loopback server, without waiting for the
// previous one. A blob miss reads the layer from upstream with `fetch`, so a
// 125 MiB layer became ~32,000 POSTs, ~12,000 sockets open at once in
// wrangler's proxy workerd and a 13 s fill (2 s without); four such fills
// ran out of its 20,000 file descriptors. The CLI has no switch for the
// inspector; the `unstable_startWorker` API (the one the CLI is built on)
// takes `dev.inspector: false`. Deployed Workers have no inspector
// attached; this only concerns local runs.
//
// wrangler comes from this directory's node_modules (`npm ci`). The Worker
// is built by the configuration's [build] command, if it has one.

import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const { unstable_startWorker } = createRequire(import.meta.url)("wrangler");

function parse(argv) {
  const opts = {
    config: path.join(here, "wrangler.toml"),
    ip: "127.0.0.1",
    port: 8787,
    persistTo: undefined,
    vars: {},
    watch: false,
    testScheduled: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      return argv[++i];
    };
    switch (flag) {
      case "--config":
        opts.config = path.resolve(value());
        break;
      case "--ip":
        opts.ip = value();
        break;
      case "--port":
        opts.port = Number(value());
        break;
      case "--persist-to":
        opts.persistTo = path.resolve(value());
        break;
      case "--var": {
        const v = value();
        const at = v.indexOf(":");
        if (at <= 0) throw new Error(`--var wants NAME:VALUE, got ${v}`);
        opts.vars[v.slice(0, at)] = { type: "plain_text", value: v.slice(at + 1) };
        break;
      }
      case "--watch":
        opts.watch = true;
        break;
      case "--test-scheduled":
        opts.testScheduled = true;
        break;
      default:
        throw new Error(`unknown argument ${flag}`);
    }
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    throw new Error("--port wants a port number");
  }
  // wrangler's own default: .wrangler/state beside the configuration.
  opts.persistTo ??= path.join(path.dirname(opts.config), ".wrangler/state");
  return opts;
}

let opts;
try {
  opts = parse(process.argv.slice(2));
} catch (e) {
  console.error(`dev.mjs: ${e.message}`);
  process.exit(2);
}

const worker = await unstable_startWorker({
  config: opts.config,
  bindings: opts.vars,
  dev: {
    remote: false,
    inspector: false,
    watch: opts.watch,
    liveReload: false,
    testScheduled: opts.testScheduled,
    persist: opts.persistTo,
    server: { hostname: opts.ip, port: opts.port },
  },
});
await worker.ready;

let stopping = false;
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    if (stopping) return;
    stopping = true;
    await worker.dispose();
    process.exit(0);
  });
}
