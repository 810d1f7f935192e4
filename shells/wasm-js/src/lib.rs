//! kura as a wasm-bindgen package: JavaScript supplies storage and `fetch`,
//! the core answers web-standard `Request`s with `Response`s, so Node, Deno,
//! Bun or any fetch-based host can serve it. See README.md.
//!
//! Only built for wasm32; natively this crate is empty.
#![cfg(target_arch = "wasm32")]

mod fetch;
mod host;
mod js;
mod storage;

use std::rc::Rc;

use bytes::Bytes;
use http::StatusCode;
use js_sys::{Array, Function, Object, Promise};
use kura_core::UpstreamConfig;
use kura_core::{Body, ByteStream, ErrorCode, RegistryConfig, RegistryError};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::fetch::JsFetch;
use crate::host::JsHost;
use crate::js::JsBody;
use crate::storage::JsStorage;

type Core = kura_core::Registry<JsStorage, JsHost, JsFetch>;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** A byte range of an object: `end` is exclusive, both within the object. */
export interface KuraRange { start: number; end: number }

/** What `head` returns for an existing object. */
export interface KuraObjectMeta { size: number; modified?: number | Date }

/** What `get` returns for an existing object. `size` is the whole object's
 * size (also for ranged reads); `body` holds the requested bytes. */
export interface KuraObject {
  size: number;
  body: ReadableStream<Uint8Array> | Uint8Array | ArrayBuffer | null;
}

/** The storage a registry keeps everything in. Every method may return a
 * value or a promise. Errors with `code: "EEXIST"` (put with `create`) and
 * `code: "ENOENT"` (rename of a missing key) are recognised. */
export interface KuraStorage {
  head(key: string): KuraObjectMeta | null | Promise<KuraObjectMeta | null>;
  get(key: string, range?: KuraRange): KuraObject | null | Promise<KuraObject | null>;
  /** Atomic: readers see the old object or the whole new one. If `data` is a
   * stream and it errors, nothing is written and `put` rejects. With
   * `create`, reject with `code: "EEXIST"` when the key exists. */
  put(key: string, data: Uint8Array | ReadableStream<Uint8Array>, options: { create?: boolean }): unknown;
  /** Deleting a missing key succeeds. */
  delete(key: string): unknown;
  /** Every key under `prefix`, at any depth (strings, or objects with `key`). */
  list(prefix: string): Array<string | { key: string }> | Promise<Array<string | { key: string }>>;
  /** Optional: a whole small object; else `get` is used. */
  read?(key: string): Uint8Array | null | Promise<Uint8Array | null>;
  /** Optional: replace `to` with `from`; else get + put + delete. */
  rename?(from: string, to: string): unknown;
  /** Optional: `list` with sizes and modification times; else list + head. */
  listMeta?(prefix: string): Array<{ key: string; size: number; modified?: number | Date }> | Promise<Array<{ key: string; size: number; modified?: number | Date }>>;
  /** Optional: write `data` at `offset` of an object holding exactly
   * `offset` bytes (0 creates it), else reject with `code: "EOFFSET"`. Not
   * atomic; used only for staging objects. With it, cache fills write every
   * byte once (one growing spool renamed into place). */
  append?(key: string, offset: number, data: Uint8Array): unknown;
}

/** One upstream registry mirrored as a pull-through cache. */
export interface KuraUpstream {
  /** How clients name it: `?ns=<name>` or a `<name>/` prefix (`docker.io`). */
  name: string;
  /** Base URL, e.g. `https://registry-1.docker.io`. */
  url: string;
  username?: string;
  password?: string;
  /** Seconds a tag is served without asking the upstream (default 300). */
  tagTtlSecs?: number;
  /** How old cached tags may be when served because the upstream fails
   * (default 604800, a week). */
  maxStaleSecs?: number;
}

export interface RegistryOptions {
  storage: KuraStorage;
  /** Web-standard fetch for upstreams (default: `globalThis.fetch`). It is
   * called with `redirect: "manual"` and must return 3xx responses as is. */
  fetch?: (input: string, init: RequestInit) => Promise<Response>;
  upstreams?: KuraUpstream[];
  /** Upstream for names without a registry prefix or `?ns=`. */
  defaultUpstream?: string;
  /** Allow DELETE of manifests, tags and blobs (default true). */
  deleteEnabled?: boolean;
  /** Largest manifest accepted, in bytes (default 4 MiB). */
  maxManifestSize?: number;
  /** Largest page of tags or repositories (default 10000). */
  maxPageSize?: number;
}

export interface EvictionReport { cachedBytes: number; evictedBlobs: number; evictedBytes: number }
"#;

/// An OCI registry and pull-through cache over JS storage and `fetch`.
#[wasm_bindgen(js_name = Registry)]
pub struct JsRegistry {
    inner: Rc<Core>,
}

#[wasm_bindgen(js_class = Registry)]
impl JsRegistry {
    /// Build a registry. Throws on an invalid configuration.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "RegistryOptions")] options: JsValue,
    ) -> Result<JsRegistry, JsError> {
        // Panics (bugs) print their message instead of a bare "unreachable".
        console_error_panic_hook::set_once();
        let o = Options::parse(&options).map_err(|e| JsError::new(&e))?;
        let inner = kura_core::Registry::builder(o.storage, JsHost)
            .config(o.config)
            .mirror(o.fetch, o.upstreams)
            .default_upstream(o.default_upstream)
            .build()
            .map_err(|e| JsError::new(&format!("mirror configuration: {e}")))?;
        Ok(JsRegistry {
            inner: Rc::new(inner),
        })
    }

    /// Answer one request. Registry errors (and requests that make no
    /// sense) become OCI error responses; the promise rejects only if the
    /// runtime refuses to build the `Response`.
    #[wasm_bindgen(unchecked_return_type = "Promise<Response>")]
    pub fn handle(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Request")] request: JsValue,
    ) -> Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let resp = match to_core_request(&request) {
                Ok(req) => inner.handle(req).await,
                Err(e) => kura_core::error_response(&e),
            };
            to_js_response(resp)
        })
    }

    /// Prometheus text exposition of the registry's counters.
    pub fn metrics(&self) -> String {
        self.inner.metrics().render()
    }

    /// Keep mirrored blobs under `maxSize` bytes, least recently used first,
    /// sparing blobs used within `graceMs`.
    #[wasm_bindgen(unchecked_return_type = "Promise<EvictionReport>")]
    pub fn evict(
        &self,
        #[wasm_bindgen(js_name = maxSize)] max_size: f64,
        #[wasm_bindgen(js_name = graceMs)] grace_ms: f64,
    ) -> Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let r = inner
                .evict(max_size.max(0.0) as u64, grace_ms.max(0.0) as u64)
                .await
                .map_err(registry_error)?;
            let o = Object::new();
            js::set(&o, "cachedBytes", &(r.cached_bytes as f64).into());
            js::set(&o, "evictedBlobs", &(r.evicted_blobs as f64).into());
            js::set(&o, "evictedBytes", &(r.evicted_bytes as f64).into());
            Ok(o.into())
        })
    }

    /// Delete upload sessions not touched for `maxAgeMs`; resolves to how
    /// many.
    #[wasm_bindgen(js_name = purgeStaleUploads, unchecked_return_type = "Promise<number>")]
    pub fn purge_stale_uploads(
        &self,
        #[wasm_bindgen(js_name = maxAgeMs)] max_age_ms: f64,
    ) -> Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let n = inner
                .purge_stale_uploads(max_age_ms.max(0.0) as u64)
                .await
                .map_err(registry_error)?;
            Ok((n as f64).into())
        })
    }

    /// Delete spools of cache fills a previous process left behind (call at
    /// startup, before serving); resolves to how many.
    #[wasm_bindgen(js_name = purgeInterruptedFills, unchecked_return_type = "Promise<number>")]
    pub fn purge_interrupted_fills(&self) -> Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let n = inner
                .purge_interrupted_fills()
                .await
                .map_err(registry_error)?;
            Ok((n as f64).into())
        })
    }
}

fn registry_error(e: RegistryError) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// Run kura-core's storage conformance suite against a storage object.
/// Rejects (after a panic message on the console) at the first broken
/// promise; the wasm instance is unusable afterwards.
#[cfg(feature = "conformance")]
#[wasm_bindgen(js_name = runStorageConformance, unchecked_return_type = "Promise<void>")]
pub fn run_storage_conformance(
    #[wasm_bindgen(unchecked_param_type = "KuraStorage")] storage: JsValue,
) -> Result<Promise, JsError> {
    console_error_panic_hook::set_once();
    let storage = JsStorage::new(storage).map_err(|e| JsError::new(&e))?;
    Ok(wasm_bindgen_futures::future_to_promise(async move {
        kura_core::storage::conformance::run(&storage).await;
        Ok(JsValue::UNDEFINED)
    }))
}

// ----- configuration ---------------------------------------------------------

struct Options {
    storage: JsStorage,
    fetch: JsFetch,
    config: RegistryConfig,
    upstreams: Vec<UpstreamConfig>,
    default_upstream: Option<String>,
}

const OPTION_KEYS: &[&str] = &[
    "storage",
    "fetch",
    "upstreams",
    "defaultUpstream",
    "deleteEnabled",
    "maxManifestSize",
    "maxPageSize",
];
const UPSTREAM_KEYS: &[&str] = &[
    "name",
    "url",
    "username",
    "password",
    "tagTtlSecs",
    "maxStaleSecs",
    "tokenRealms",
    "notFoundTtlSecs",
];

/// Unknown keys are errors (as in kura's config file): a typo must not
/// silently fall back to a default.
fn check_keys(o: &JsValue, allowed: &[&str], what: &str) -> Result<(), String> {
    let Some(obj) = o.dyn_ref::<Object>() else {
        return Err(format!("{what} must be an object"));
    };
    for k in Object::keys(obj).iter() {
        let k = k.as_string().unwrap_or_default();
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "{what}: unknown option {k:?} (known: {})",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

fn opt_string(o: &JsValue, key: &str, what: &str) -> Result<Option<String>, String> {
    let v = js::get(o, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_string()
        .map(Some)
        .ok_or_else(|| format!("{what}.{key} must be a string"))
}

fn opt_strings(o: &JsValue, key: &str, what: &str) -> Result<Vec<String>, String> {
    let v = js::get(o, key);
    if v.is_undefined() || v.is_null() {
        return Ok(Vec::new());
    }
    let bad = || format!("{what}.{key} must be an array of strings");
    if !Array::is_array(&v) {
        return Err(bad());
    }
    Array::from(&v)
        .iter()
        .map(|s| s.as_string().ok_or_else(bad))
        .collect()
}

fn opt_u64(o: &JsValue, key: &str, what: &str) -> Result<Option<u64>, String> {
    let v = js::get(o, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    js::to_u64(&v)
        .map(Some)
        .ok_or_else(|| format!("{what}.{key} must be a non-negative integer"))
}

impl Options {
    fn parse(o: &JsValue) -> Result<Options, String> {
        check_keys(o, OPTION_KEYS, "options")?;
        let storage = JsStorage::new(js::get(o, "storage")).map_err(|e| format!("options.{e}"))?;

        let mut upstreams = Vec::new();
        let list = js::get(o, "upstreams");
        if !list.is_undefined() && !list.is_null() {
            if !Array::is_array(&list) {
                return Err("options.upstreams must be an array".into());
            }
            for (i, u) in Array::from(&list).iter().enumerate() {
                let what = format!("options.upstreams[{i}]");
                check_keys(&u, UPSTREAM_KEYS, &what)?;
                let required = |key: &str| {
                    opt_string(&u, key, &what)?.ok_or_else(|| format!("{what}.{key} is required"))
                };
                // Unset durations keep the core's defaults.
                let mut c = UpstreamConfig::new(required("name")?, required("url")?);
                c.username = opt_string(&u, "username", &what)?;
                c.password = opt_string(&u, "password", &what)?;
                let ms = |secs: Option<u64>, default: u64| {
                    secs.map_or(default, |s| s.saturating_mul(1000))
                };
                c.tag_ttl_ms = ms(opt_u64(&u, "tagTtlSecs", &what)?, c.tag_ttl_ms);
                c.max_stale_ms = ms(opt_u64(&u, "maxStaleSecs", &what)?, c.max_stale_ms);
                c.token_realms = opt_strings(&u, "tokenRealms", &what)?;
                c.not_found_ttl_ms = ms(opt_u64(&u, "notFoundTtlSecs", &what)?, c.not_found_ttl_ms);
                upstreams.push(c);
            }
        }

        let fetch = match js::get(o, "fetch") {
            f if f.is_function() => Some(f.unchecked_into::<Function>()),
            f if f.is_undefined() || f.is_null() => {
                let global = js::get(&js_sys::global(), "fetch")
                    .dyn_into::<Function>()
                    .ok();
                if global.is_none() && !upstreams.is_empty() {
                    return Err(
                        "options.fetch is required: this runtime has no global fetch".into(),
                    );
                }
                global
            }
            _ => return Err("options.fetch must be a function".into()),
        };

        // Fields not offered here keep the core's defaults.
        let mut config = RegistryConfig::default();
        match js::get(o, "deleteEnabled") {
            v if v.is_undefined() || v.is_null() => {}
            v => {
                config.delete_enabled = v
                    .as_bool()
                    .ok_or("options.deleteEnabled must be a boolean")?
            }
        }
        if let Some(n) = opt_u64(o, "maxManifestSize", "options")? {
            config.max_manifest_size = n as usize;
        }
        if let Some(n) = opt_u64(o, "maxPageSize", "options")? {
            config.max_page_size = n as usize;
        }
        Ok(Options {
            storage,
            fetch: JsFetch::new(fetch),
            config,
            upstreams,
            default_upstream: opt_string(o, "defaultUpstream", "options")?,
        })
    }
}

// ----- requests and responses -------------------------------------------------

fn bad_request(msg: String) -> RegistryError {
    RegistryError::new(ErrorCode::Unsupported, msg).with_status(StatusCode::BAD_REQUEST)
}

/// A web `Request` as the core's request: method, URL, headers, and the body
/// stream read as the core consumes it.
fn to_core_request(req: &JsValue) -> Result<http::Request<ByteStream>, RegistryError> {
    let method = js::get(req, "method")
        .as_string()
        .ok_or_else(|| bad_request("request has no method".into()))?;
    let url = js::get(req, "url")
        .as_string()
        .ok_or_else(|| bad_request("request has no url".into()))?;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad_request(format!("request url {url:?}: {e}")))?;
    let mut out = http::Request::builder()
        .method(method.as_str())
        .uri(uri)
        .body(JsBody::new(js::get(req, "body")).into_stream())
        .map_err(|e| bad_request(format!("request: {e}")))?;
    // A request without iterable headers just has none.
    let _ = js::append_headers(&js::get(req, "headers"), out.headers_mut());
    Ok(out)
}

/// The core's response as a web `Response`. Storage bodies pass through as
/// the JS values the storage returned.
fn to_js_response(resp: http::Response<Body<JsBody>>) -> Result<JsValue, JsValue> {
    let (parts, body) = resp.into_parts();
    let status = parts.status.as_u16();
    // These statuses must not have a body (the Response constructor throws).
    let null_body = matches!(status, 101 | 103 | 204 | 205 | 304);
    let body: JsValue = match body {
        _ if null_body => JsValue::NULL,
        Body::Empty => JsValue::NULL,
        Body::Full(b) => full_body(&b),
        Body::Stream(b) => b.into_js(),
        Body::Relay(s) => js::to_readable_stream(s),
    };
    let headers = Array::new();
    for (name, value) in &parts.headers {
        if let Ok(v) = value.to_str() {
            headers.push(&Array::of2(&name.as_str().into(), &v.into()));
        }
    }
    let init = Object::new();
    js::set(&init, "status", &status.into());
    js::set(&init, "headers", &headers);
    js::new_response(&body, &init)
}

fn full_body(b: &Bytes) -> JsValue {
    js_sys::Uint8Array::from(&b[..]).into()
}
