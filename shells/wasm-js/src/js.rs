//! The JavaScript side of things: bindings to the few web-standard APIs the
//! package uses, and byte streams in both directions.
//!
//! Everything here is duck-typed (no `instanceof` checks on web types), so
//! any runtime's `ReadableStream`, `Request` and `Response`, or a polyfill,
//! will do.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use kura_core::ByteStream;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    pub fn set_timeout(handler: &Function, ms: f64) -> JsValue;

    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues, catch)]
    pub fn get_random_values(buf: &mut [u8]) -> Result<JsValue, JsValue>;

    pub type ReadableStream;
    #[wasm_bindgen(constructor, js_class = "ReadableStream")]
    fn new(source: ByteSource) -> ReadableStream;
    #[wasm_bindgen(method, js_name = getReader, catch)]
    fn get_reader(this: &ReadableStream) -> Result<Reader, JsValue>;
    #[wasm_bindgen(method, js_name = cancel)]
    fn cancel_stream(this: &ReadableStream) -> JsValue;

    type Reader;
    #[wasm_bindgen(method, catch)]
    fn read(this: &Reader) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method)]
    fn cancel(this: &Reader) -> JsValue;

    type Controller;
    #[wasm_bindgen(method, catch)]
    fn enqueue(this: &Controller, chunk: &Uint8Array) -> Result<(), JsValue>;
    #[wasm_bindgen(method, catch)]
    fn close(this: &Controller) -> Result<(), JsValue>;
    #[wasm_bindgen(method, catch)]
    fn error(this: &Controller, e: &JsValue) -> Result<(), JsValue>;

    type ResponseCtor;
    #[wasm_bindgen(constructor, js_class = "Response", catch)]
    fn new(body: &JsValue, init: &Object) -> Result<ResponseCtor, JsValue>;
}

/// `new Response(body, init)`.
pub fn new_response(body: &JsValue, init: &Object) -> Result<JsValue, JsValue> {
    ResponseCtor::new(body, init).map(Into::into)
}

/// `obj[name]`, `undefined` when missing or when `obj` is not an object.
pub fn get(obj: &JsValue, name: &str) -> JsValue {
    if !obj.is_object() && !obj.is_function() {
        return JsValue::UNDEFINED;
    }
    Reflect::get(obj, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED)
}

pub fn set(obj: &Object, name: &str, value: &JsValue) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(obj, &JsValue::from_str(name), value);
}

/// Whether `obj[name]` is a function.
pub fn has_method(obj: &JsValue, name: &str) -> bool {
    get(obj, name).is_function()
}

/// Call `obj[name](...args)` and await the result, whether the method
/// returns a promise or a plain value.
pub async fn call(obj: &JsValue, name: &str, args: &[&JsValue]) -> Result<JsValue, JsValue> {
    let f: Function = get(obj, name)
        .dyn_into()
        .map_err(|_| js_sys::TypeError::new(&format!("{name} is not a function")))?;
    let list = Array::new();
    for a in args {
        list.push(a);
    }
    let ret = f.apply(obj, &list)?;
    JsFuture::from(Promise::resolve(&ret)).await
}

/// A readable description of a thrown JS value, with the `cause` undici
/// puts under "fetch failed".
pub fn error_string(e: &JsValue) -> String {
    fn one(e: &JsValue) -> String {
        if let Some(err) = e.dyn_ref::<js_sys::Error>() {
            String::from(err.to_string())
        } else if let Some(s) = e.as_string() {
            s
        } else {
            format!("{e:?}")
        }
    }
    let mut out = one(e);
    let cause = get(e, "cause");
    if !cause.is_undefined() && !cause.is_null() {
        out.push_str(": ");
        out.push_str(&one(&cause));
    }
    out
}

/// `error.code` (Node's `EEXIST`, `ENOENT`, …) if it has one.
pub fn error_code(e: &JsValue) -> Option<String> {
    get(e, "code").as_string()
}

/// A non-negative integer property (sizes, times).
pub fn get_u64(obj: &JsValue, name: &str) -> Option<u64> {
    to_u64(&get(obj, name))
}

/// A time in ms since the epoch: a number (fractions dropped) or a `Date`.
pub fn get_ms(obj: &JsValue, name: &str) -> Option<u64> {
    let v = get(obj, name);
    let n = match v.dyn_ref::<js_sys::Date>() {
        Some(d) => d.get_time(),
        None => v.as_f64()?,
    };
    (n.is_finite() && n >= 0.0).then_some(n as u64)
}

pub fn to_u64(v: &JsValue) -> Option<u64> {
    if let Some(n) = v.as_f64() {
        if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 {
            return Some(n as u64);
        }
        return None;
    }
    if v.is_bigint() {
        return u64::try_from(v.clone()).ok();
    }
    None
}

/// Run a promise to completion in the background, ignoring its outcome
/// (a rejection is handled, so it does not count as unhandled).
pub fn settle(p: JsValue) {
    if p.is_undefined() {
        return;
    }
    wasm_bindgen_futures::spawn_local(async move {
        let _ = JsFuture::from(Promise::resolve(&p)).await;
    });
}

/// A body handed to us by JavaScript: a `ReadableStream<Uint8Array>`, a
/// `Uint8Array` (or `ArrayBuffer`), or nothing. An unread stream is
/// cancelled when dropped, so files and connections behind it are released.
pub struct JsBody(Option<JsValue>);

impl JsBody {
    pub fn new(v: JsValue) -> Self {
        if v.is_null() || v.is_undefined() {
            JsBody(None)
        } else {
            JsBody(Some(v))
        }
    }

    /// The JS value itself, for a JS consumer (`new Response(body)`,
    /// another storage's `put`).
    pub fn into_js(mut self) -> JsValue {
        self.0.take().unwrap_or(JsValue::NULL)
    }

    /// The bytes as a stream on the Rust side.
    pub fn into_stream(mut self) -> ByteStream {
        match self.0.take() {
            None => kura_core::body::empty(),
            Some(v) => match as_bytes(&v) {
                Some(b) => kura_core::body::once(b),
                None => reader_stream(v),
            },
        }
    }

    /// The whole body in memory (small objects only).
    pub async fn collect(self) -> io::Result<Bytes> {
        let mut stream = self.into_stream();
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }
}

impl Drop for JsBody {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            if has_method(&v, "cancel") && !get(&v, "locked").is_truthy() {
                settle(v.unchecked_into::<ReadableStream>().cancel_stream());
            }
        }
    }
}

/// The bytes of a `Uint8Array` (a Node `Buffer` is one) or `ArrayBuffer`,
/// copied into wasm memory.
pub fn as_bytes(v: &JsValue) -> Option<Bytes> {
    if let Some(a) = v.dyn_ref::<Uint8Array>() {
        return Some(Bytes::from(a.to_vec()));
    }
    if v.is_instance_of::<js_sys::ArrayBuffer>() {
        return Some(Bytes::from(Uint8Array::new(v).to_vec()));
    }
    None
}

/// A JS `ReadableStream` read from Rust. Dropping it early cancels the
/// stream.
fn reader_stream(stream: JsValue) -> ByteStream {
    let reader = stream
        .unchecked_ref::<ReadableStream>()
        .get_reader()
        .map_err(|e| {
            io::Error::other(format!(
                "body is not a readable stream: {}",
                error_string(&e)
            ))
        });
    match reader {
        Ok(reader) => Box::pin(ReaderStream {
            reader: Some(reader),
            pending: None,
        }),
        Err(e) => Box::pin(futures::stream::once(async move { Err(e) })),
    }
}

struct ReaderStream {
    reader: Option<Reader>,
    pending: Option<JsFuture>,
}

impl Stream for ReaderStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let Some(reader) = &this.reader else {
                return Poll::Ready(None);
            };
            if this.pending.is_none() {
                match reader.read() {
                    Ok(p) => this.pending = Some(JsFuture::from(p)),
                    Err(e) => {
                        this.reader = None;
                        return Poll::Ready(Some(Err(io::Error::other(error_string(&e)))));
                    }
                }
            }
            let fut = this.pending.as_mut().expect("set above");
            let result = match Pin::new(fut).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            };
            this.pending = None;
            match result {
                Err(e) => {
                    this.reader = None;
                    return Poll::Ready(Some(Err(io::Error::other(error_string(&e)))));
                }
                Ok(r) => {
                    if get(&r, "done").is_truthy() {
                        this.reader = None;
                        return Poll::Ready(None);
                    }
                    let value = get(&r, "value");
                    match value.dyn_ref::<Uint8Array>() {
                        Some(a) if a.length() == 0 => continue,
                        Some(a) => return Poll::Ready(Some(Ok(Bytes::from(a.to_vec())))),
                        None => {
                            this.cancel();
                            return Poll::Ready(Some(Err(io::Error::other(
                                "stream chunk is not a Uint8Array",
                            ))));
                        }
                    }
                }
            }
        }
    }
}

impl ReaderStream {
    fn cancel(&mut self) {
        self.pending = None;
        if let Some(reader) = self.reader.take() {
            settle(reader.cancel());
        }
    }
}

impl Drop for ReaderStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Where a failed Rust stream leaves its error, so the code that handed the
/// stream to JavaScript can recover the original `io::Error` (a digest
/// mismatch must reach the core as itself, not as a JS string).
pub type ErrorSlot = Rc<RefCell<Option<io::Error>>>;

struct SourceState {
    stream: Option<ByteStream>,
    /// The stream ended: every byte was delivered.
    ended: bool,
    /// The consumer cancelled.
    cancelled: bool,
}

/// The underlying source of a `ReadableStream` fed by a Rust byte stream.
/// Internal: the package hands these out only inside `ReadableStream`s.
#[wasm_bindgen(skip_typescript)]
pub struct ByteSource {
    state: Rc<RefCell<SourceState>>,
    failed: Option<ErrorSlot>,
}

#[wasm_bindgen]
impl ByteSource {
    /// Called by the `ReadableStream` when it wants a chunk; never again
    /// before the returned promise settles.
    pub fn pull(&self, controller: JsValue) -> Promise {
        let state = self.state.clone();
        let failed = self.failed.clone();
        let controller: Controller = controller.unchecked_into();
        wasm_bindgen_futures::future_to_promise(async move {
            let Some(mut stream) = state.borrow_mut().stream.take() else {
                return Ok(JsValue::UNDEFINED);
            };
            loop {
                match stream.next().await {
                    Some(Ok(b)) if b.is_empty() => continue,
                    Some(Ok(b)) => {
                        let mut s = state.borrow_mut();
                        // Cancelled while we waited: drop the stream.
                        if !s.cancelled {
                            let _ = controller.enqueue(&Uint8Array::from(&b[..]));
                            s.stream = Some(stream);
                        }
                        return Ok(JsValue::UNDEFINED);
                    }
                    Some(Err(e)) => {
                        let err = js_sys::Error::new(&e.to_string());
                        if let Some(slot) = &failed {
                            *slot.borrow_mut() = Some(e);
                        }
                        let _ = controller.error(&err);
                        return Ok(JsValue::UNDEFINED);
                    }
                    None => {
                        state.borrow_mut().ended = true;
                        let _ = controller.close();
                        return Ok(JsValue::UNDEFINED);
                    }
                }
            }
        })
    }

    /// The consumer gave up: drop the Rust stream (which may cancel work
    /// behind it).
    pub fn cancel(&self, _reason: JsValue) {
        let mut s = self.state.borrow_mut();
        s.stream = None;
        s.cancelled = true;
    }
}

/// A Rust stream as a JS `ReadableStream<Uint8Array>`.
pub fn to_readable_stream(stream: ByteStream) -> JsValue {
    to_readable_stream_watched(stream, None).0
}

/// Like [`to_readable_stream`], also returning a probe that says whether
/// the stream was read to its end; a failure of the Rust stream lands in
/// `failed`.
pub fn to_readable_stream_watched(
    stream: ByteStream,
    failed: Option<ErrorSlot>,
) -> (JsValue, impl Fn() -> bool) {
    let state = Rc::new(RefCell::new(SourceState {
        stream: Some(stream),
        ended: false,
        cancelled: false,
    }));
    let probe = {
        let state = state.clone();
        move || state.borrow().ended
    };
    let rs = ReadableStream::new(ByteSource { state, failed });
    (rs.into(), probe)
}

/// Append the `[name, value]` pairs of a JS headers object (a `Headers`, or
/// any iterable of pairs) to `out`; pairs that are not valid HTTP are
/// skipped. `Err` when `headers` cannot be iterated.
pub fn append_headers(headers: &JsValue, out: &mut http::HeaderMap) -> Result<(), String> {
    let entries = js_sys::try_iter(headers)
        .map_err(|e| error_string(&e))?
        .ok_or_else(|| "headers are not iterable".to_owned())?;
    for entry in entries {
        let entry = entry.map_err(|e| error_string(&e))?;
        let Some(pair) = entry.dyn_ref::<js_sys::Array>() else {
            continue;
        };
        let (Some(name), Some(value)) = (pair.get(0).as_string(), pair.get(1).as_string()) else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            out.append(n, v);
        }
    }
    Ok(())
}
