//! kura as a Cloudflare Worker: the core's `/v2/` API over R2 storage and the
//! runtime's `fetch`. Not built yet: see README.md in this directory.
