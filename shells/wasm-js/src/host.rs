//! The core's host capabilities from the JS runtime: `Date.now()`,
//! `crypto.getRandomValues`, the microtask queue and `setTimeout`.

use js_sys::Promise;
use kura_core::BoxFuture;
use wasm_bindgen_futures::JsFuture;

use crate::js;

pub struct JsHost;

impl kura_core::Host for JsHost {
    fn now_unix_ms(&self) -> u64 {
        js_sys::Date::now() as u64
    }

    fn fill_random(&self, out: &mut [u8]) {
        // getRandomValues fills at most 65536 bytes per call. Without an
        // entropy source upload ids would be guessable: refuse to go on.
        for chunk in out.chunks_mut(65536) {
            if let Err(e) = js::get_random_values(chunk) {
                panic!("crypto.getRandomValues failed: {}", js::error_string(&e));
            }
        }
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        wasm_bindgen_futures::spawn_local(task);
    }

    fn sleep(&self, ms: u64) -> BoxFuture<'static, ()> {
        let timer = Promise::new(&mut |resolve, _reject| {
            js::set_timeout(&resolve, ms as f64);
        });
        Box::pin(async move {
            let _ = JsFuture::from(timer).await;
        })
    }
}
