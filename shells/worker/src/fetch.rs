//! kura-core's `Fetch` over the runtime's `fetch`: the response body stays a
//! JS `ReadableStream` ([`JsBody`]) unless the core asks for its bytes.

use async_trait::async_trait;
use kura_core::ByteStream;
use kura_core::{Fetch, FetchError};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::js::{self, describe, JsBody};

pub struct WorkerFetch;

#[async_trait(?Send)]
impl Fetch for WorkerFetch {
    type Body = JsBody;

    async fn fetch(&self, req: http::Request<()>) -> Result<http::Response<JsBody>, FetchError> {
        let other = |e: wasm_bindgen::JsValue| FetchError::other(describe(&e));
        let headers = web_sys::Headers::new().map_err(other)?;
        for (name, value) in req.headers() {
            let value = value
                .to_str()
                .map_err(|_| FetchError::other(format!("header {name} is not ASCII")))?;
            headers.append(name.as_str(), value).map_err(other)?;
        }
        let init = web_sys::RequestInit::new();
        init.set_method(req.method().as_str());
        init.set_headers(&headers);
        // The core follows redirects itself, dropping credentials when the
        // host changes (blob CDNs).
        init.set_redirect(web_sys::RequestRedirect::Manual);
        let request = web_sys::Request::new_with_str_and_init(&req.uri().to_string(), &init)
            .map_err(other)?;
        let resp: web_sys::Response = JsFuture::from(js::global_fetch(&request))
            .await
            .map_err(|e| FetchError::connect(describe(&e)))?
            .dyn_into()
            .map_err(|_| FetchError::other("fetch did not return a Response"))?;
        let mut out = http::Response::builder().status(resp.status());
        if let Ok(Some(entries)) = js_sys::try_iter(&resp.headers()) {
            for entry in entries.flatten() {
                let pair = js_sys::Array::from(&entry);
                if let (Some(k), Some(v)) = (pair.get(0).as_string(), pair.get(1).as_string()) {
                    out = out.header(k, v);
                }
            }
        }
        out.body(JsBody::new(resp.body()))
            .map_err(|e| FetchError::other(e.to_string()))
    }

    fn body_stream(body: JsBody) -> ByteStream {
        body.into_byte_stream()
    }
}
