import type { IncomingMessage, RequestListener, Server, ServerResponse } from 'node:http';

type Handler = (request: Request) => Response | Promise<Response>;

/** A node:http request as a web Request. */
export function toWebRequest(req: IncomingMessage): Request;
/** Write a web Response to a node:http response, with backpressure. */
export function sendWebResponse(resp: Response, res: ServerResponse): Promise<void>;
/** A node:http request listener around a fetch-style handler. */
export function nodeListener(handle: Handler, options?: { onError?: (e: unknown) => void }): RequestListener;
/** Serve `handle` on `port` (0: any free port) and `host` (default 127.0.0.1). */
export function serve(
  handle: Handler,
  options?: { port?: number; host?: string; onError?: (e: unknown) => void },
): Promise<Server>;
