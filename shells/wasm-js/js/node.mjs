// Serve a fetch-style handler (`(Request) => Promise<Response>`, such as
// `registry.handle`) with node:http. Deno (`Deno.serve`) and Bun
// (`Bun.serve`) take such a handler directly and need none of this.

import { createServer } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/** A node:http request as a web Request. */
export function toWebRequest(req) {
  const host = req.headers.host ?? 'localhost';
  const url = new URL(req.url ?? '/', `http://${host}`);
  const headers = new Headers();
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    headers.append(req.rawHeaders[i], req.rawHeaders[i + 1]);
  }
  const method = req.method ?? 'GET';
  const hasBody = method !== 'GET' && method !== 'HEAD';
  return new Request(url, {
    method,
    headers,
    body: hasBody ? Readable.toWeb(req) : undefined,
    duplex: 'half',
  });
}

/** Write a web Response to a node:http response, with backpressure. A body
 * that fails half way aborts the connection, so the client sees a broken
 * response rather than a short one that looks complete. */
export async function sendWebResponse(resp, res) {
  res.statusCode = resp.status;
  for (const [name, value] of resp.headers) res.appendHeader(name, value);
  if (!resp.body) {
    res.end();
    return;
  }
  await pipeline(Readable.fromWeb(resp.body), res);
}

/** A node:http request listener around a fetch-style handler. */
export function nodeListener(handle, { onError = (e) => console.error('kura:', e) } = {}) {
  return (req, res) => {
    (async () => {
      let resp;
      try {
        resp = await handle(toWebRequest(req));
      } catch (e) {
        onError(e);
        if (!res.headersSent) {
          res.statusCode = 500;
          res.end('internal error\n');
        }
        return;
      }
      try {
        await sendWebResponse(resp, res);
      } catch (e) {
        // The client went away, or the body failed (an upstream that sent
        // bad bytes): the connection is already torn down.
        res.destroy();
      }
    })();
  };
}

/** Serve `handle` on `port` (0 picks a free one) and `host`. Resolves to the
 * listening node:http server. */
export function serve(handle, { port = 5000, host = '127.0.0.1', ...opts } = {}) {
  const server = createServer(nodeListener(handle, opts));
  return new Promise((resolvePromise, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolvePromise(server);
    });
  });
}
