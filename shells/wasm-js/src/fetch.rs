//! kura-core's Fetch over a web-standard `fetch` function.
//!
//! Requests go out with `redirect: "manual"`: the core follows redirects
//! itself, dropping credentials when the host changes (blob CDNs). Server
//! runtimes (Node, Deno, Bun, Workers) then return the 3xx with its
//! `Location`; browsers return an opaque response instead, which is reported
//! as an error.

use async_trait::async_trait;
use http::StatusCode;
use js_sys::{Array, Function, Object, Promise};
use kura_core::ByteStream;
use kura_core::{Fetch, FetchError};
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;

use crate::js::{self, JsBody};

pub struct JsFetch {
    /// `None` only for a registry without upstreams in a runtime without a
    /// global `fetch`: then nothing ever calls it.
    fetch: Option<Function>,
}

impl JsFetch {
    pub fn new(fetch: Option<Function>) -> Self {
        JsFetch { fetch }
    }
}

fn fetch_error(e: &JsValue) -> FetchError {
    let msg = js::error_string(e);
    match js::get(e, "name").as_string().as_deref() {
        Some("TimeoutError") | Some("AbortError") => FetchError::Timeout,
        // What fetch throws when it cannot connect ("fetch failed",
        // "error sending request", …).
        Some("TypeError") => FetchError::connect(msg),
        _ => FetchError::other(msg),
    }
}

#[async_trait(?Send)]
impl Fetch for JsFetch {
    type Body = JsBody;

    async fn fetch(&self, req: http::Request<()>) -> Result<http::Response<JsBody>, FetchError> {
        let (parts, ()) = req.into_parts();
        let headers = Array::new();
        for (name, value) in &parts.headers {
            if let Ok(v) = value.to_str() {
                headers.push(&Array::of2(&name.as_str().into(), &v.into()));
            }
        }
        let init = Object::new();
        js::set(&init, "method", &parts.method.as_str().into());
        js::set(&init, "headers", &headers);
        js::set(&init, "redirect", &"manual".into());
        let url = JsValue::from_str(&parts.uri.to_string());
        let f = self
            .fetch
            .as_ref()
            .ok_or_else(|| FetchError::other("no fetch function"))?;
        let ret = f
            .call2(&JsValue::UNDEFINED, &url, &init)
            .map_err(|e| fetch_error(&e))?;
        let resp = JsFuture::from(Promise::resolve(&ret))
            .await
            .map_err(|e| fetch_error(&e))?;
        // Take the body first: if anything below fails, dropping it cancels
        // the stream and frees the connection.
        let body = JsBody::new(js::get(&resp, "body"));
        let status = js::get(&resp, "status")
            .as_f64()
            .and_then(|s| StatusCode::from_u16(s as u16).ok())
            .ok_or_else(|| {
                FetchError::other(
                    "fetch returned a response without a valid status (an opaque redirect? \
                     use a fetch that returns redirects with redirect: \"manual\")",
                )
            })?;
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        js::append_headers(&js::get(&resp, "headers"), out.headers_mut())
            .map_err(|e| FetchError::other(format!("response headers: {e}")))?;
        Ok(out)
    }

    fn body_stream(body: JsBody) -> ByteStream {
        body.into_stream()
    }
}
