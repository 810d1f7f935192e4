//! kura as a Cloudflare Worker: the core's `/v2/` API as a pull-through
//! cache, with R2 for storage and the runtime's `fetch` for upstreams. See
//! README.md in this directory for deploying it.
//!
//! - [`config`], [`auth`] and [`route`]: configuration from wrangler vars
//!   and secrets, who may pull (pull tokens and anonymous pull, decided by
//!   kura-core's access policy), and hostname / alias routing in front of
//!   the core's. Plain Rust, unit-tested natively.
//! - On wasm32 only: the R2 storage backend (`r2`), the upstream fetch
//!   (`fetch`), the host (`host`), the blob split into client and R2
//!   (`split`) and the entry point (`app`). Blob bytes stay JS streams
//!   throughout: an R2 object body becomes the response body, an upstream
//!   body is read once in JS chunks and written to the client and to R2.
//!
//! Natively the crate is just the first three modules (the workspace builds
//! and lints it like every member).

pub mod auth;
pub mod config;
pub mod route;

#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod fetch;
#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod js;
#[cfg(target_arch = "wasm32")]
mod r2;
#[cfg(target_arch = "wasm32")]
mod split;
