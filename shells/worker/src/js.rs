//! JavaScript glue: the few runtime APIs used directly, and [`JsBody`], the
//! body type that keeps blob bytes on the JS side.

use std::cell::RefCell;

use bytes::Bytes;
use futures::StreamExt;
use js_sys::{Object, Promise, Reflect, Uint8Array};
use kura_core::ByteStream;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::ReadableStream;

#[wasm_bindgen]
extern "C" {
    /// A BYOB reader, with workerd's `readAtLeast(minBytes, view)`.
    #[wasm_bindgen(extends = Object)]
    pub type ByobReader;

    #[wasm_bindgen(method, js_name = readAtLeast)]
    pub fn read_at_least(this: &ByobReader, min_bytes: u32, view: &Uint8Array) -> Promise;

    #[wasm_bindgen(method)]
    pub fn cancel(this: &ByobReader, reason: &JsValue) -> Promise;

    /// A `ReadableStream`, for the calls web-sys binds without `catch`.
    #[wasm_bindgen(extends = Object)]
    pub type Stream;

    /// `stream.getReader(options)`, with a throw as `Err`.
    #[wasm_bindgen(method, catch, js_name = getReader)]
    pub fn try_get_reader(this: &Stream, options: &JsValue) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues)]
    pub fn get_random_values(buf: &mut [u8]);

    /// The runtime's `fetch`.
    #[wasm_bindgen(js_name = fetch)]
    pub fn global_fetch(req: &web_sys::Request) -> Promise;
}

/// A JS error or value as text.
pub fn describe(e: &JsValue) -> String {
    if let Some(s) = e.as_string() {
        return s;
    }
    match Reflect::get(e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
    {
        Some(m) => m,
        None => format!("{e:?}"),
    }
}

pub fn get(obj: &JsValue, key: &str) -> JsValue {
    Reflect::get(obj, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

/// A plain object from `(key, value)` pairs.
pub fn object(pairs: &[(&str, JsValue)]) -> Object {
    let o = Object::new();
    for (k, v) in pairs {
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o
}

/// A no-op rejection handler, made once.
type Handler = Closure<dyn FnMut(JsValue)>;

thread_local! {
    static IGNORE: RefCell<Option<Handler>> = const { RefCell::new(None) };
}

/// Let a promise settle unobserved without an "unhandled rejection".
pub fn ignore(p: Promise) {
    IGNORE.with(|c| {
        let mut c = c.borrow_mut();
        let f = c.get_or_insert_with(|| Closure::new(|_: JsValue| {}));
        let _ = p.catch(f);
    });
}

/// A body on the JS side: an upstream response body or an R2 object body,
/// passed through the core untouched and handed to the runtime as the
/// response body. Dropped unread, it is cancelled (an unread upstream body
/// would hold one of the request's few connections until collected).
pub struct JsBody(Option<ReadableStream>);

impl JsBody {
    pub fn new(stream: Option<ReadableStream>) -> Self {
        JsBody(stream)
    }

    pub fn take(mut self) -> Option<ReadableStream> {
        self.0.take()
    }

    /// The bytes, into wasm: only for what the core must read itself
    /// (manifests, token responses, small objects).
    pub fn into_byte_stream(self) -> ByteStream {
        let Some(stream) = self.take() else {
            return kura_core::body::empty();
        };
        let reader: web_sys::ReadableStreamDefaultReader = match stream.get_reader().dyn_into() {
            Ok(r) => r,
            Err(_) => {
                return Box::pin(futures::stream::once(async {
                    Err(std::io::Error::other("body already read"))
                }))
            }
        };
        let chunks = futures::stream::unfold(Some(reader), |reader| async move {
            let reader = reader?;
            match JsFuture::from(reader.read()).await {
                Err(e) => Some((Err(std::io::Error::other(describe(&e))), None)),
                Ok(r) if get(&r, "done").is_truthy() => None,
                Ok(r) => {
                    let bytes = get(&r, "value").unchecked_into::<Uint8Array>().to_vec();
                    Some((Ok(Bytes::from(bytes)), Some(reader)))
                }
            }
        });
        Box::pin(chunks.boxed_local())
    }
}

impl Drop for JsBody {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            if !s.locked() {
                ignore(s.cancel());
            }
        }
    }
}
