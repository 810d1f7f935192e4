//! kura-core's Storage over a JavaScript object.
//!
//! The object (see the README for the full contract):
//!
//! - `head(key)` → `{ size, modified? }` or `null`
//! - `get(key, range?)` → `{ size, body }` or `null`; `range` is
//!   `{ start, end }` (end exclusive, already clamped), `size` the whole
//!   object's size, `body` a `ReadableStream<Uint8Array>` or `Uint8Array`
//! - `put(key, data, { create })` with `data` a `Uint8Array` or a
//!   `ReadableStream<Uint8Array>`: atomic; if the stream errors, nothing is
//!   written and `put` rejects; with `create`, reject with `code: "EEXIST"`
//!   when the key exists
//! - `delete(key)` (a missing key is fine), `list(prefix)` → keys (or
//!   `{ key }` objects) under the prefix at any depth
//! - optional: `read(key)` → `Uint8Array | null`, `rename(from, to)`
//!   (reject with `code: "ENOENT"` when `from` is missing),
//!   `listMeta(prefix)` → `[{ key, size, modified? }]`,
//!   `append(key, offset, data)`: write `data` at `offset` of an object that
//!   holds exactly `offset` bytes (0 creates it), else reject with
//!   `code: "EOFFSET"`; with it, cache fills stage a blob in one growing
//!   object and rename it into place instead of joining parts
//!
//! Every method may return a value or a promise. Read bodies stay JS
//! values: they go from storage to the `Response` without entering wasm.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use js_sys::{Array, Object, Uint8Array};
use kura_core::storage::{ListEntry, ObjectMeta, PutMode, Storage, StorageError};
use kura_core::ByteStream;
use wasm_bindgen::JsValue;

use crate::js::{self, JsBody};

pub struct JsStorage {
    obj: JsValue,
    has_read: bool,
    has_rename: bool,
    has_list_meta: bool,
    has_append: bool,
}

impl JsStorage {
    /// Wrap a storage object; fails if a required method is missing.
    pub fn new(obj: JsValue) -> Result<Self, String> {
        if !obj.is_object() {
            return Err("storage must be an object".into());
        }
        let missing: Vec<&str> = ["head", "get", "put", "delete", "list"]
            .into_iter()
            .filter(|m| !js::has_method(&obj, m))
            .collect();
        if !missing.is_empty() {
            return Err(format!("storage lacks method(s) {}", missing.join(", ")));
        }
        Ok(JsStorage {
            has_read: js::has_method(&obj, "read"),
            has_rename: js::has_method(&obj, "rename"),
            has_list_meta: js::has_method(&obj, "listMeta"),
            has_append: js::has_method(&obj, "append"),
            obj,
        })
    }

    async fn call(&self, name: &str, args: &[&JsValue]) -> Result<JsValue, StorageError> {
        js::call(&self.obj, name, args).await.map_err(storage_error)
    }

    async fn put_js(&self, key: &str, data: &JsValue, create: bool) -> Result<(), StorageError> {
        let opts = Object::new();
        js::set(&opts, "create", &JsValue::from_bool(create));
        self.call("put", &[&key.into(), data, &opts]).await?;
        Ok(())
    }

    fn entries(list: &JsValue, what: &str) -> Result<Array, StorageError> {
        if !Array::is_array(list) {
            return Err(StorageError::backend(format!(
                "{what} must return an array"
            )));
        }
        Ok(Array::from(list))
    }
}

/// A JS rejection as a storage error: `code` `EEXIST` and `ENOENT` (what
/// Node's fs gives, and what the contract asks of other storages) are
/// recognised.
fn storage_error(e: JsValue) -> StorageError {
    match js::error_code(&e).as_deref() {
        Some("EEXIST") => StorageError::AlreadyExists,
        Some("ENOENT") => StorageError::NotFound,
        _ => StorageError::backend(js::error_string(&e)),
    }
}

fn size_of(v: &JsValue, what: &str) -> Result<u64, StorageError> {
    js::get_u64(v, "size").ok_or_else(|| {
        StorageError::backend(format!("{what}: size must be a non-negative integer"))
    })
}

fn absent(v: &JsValue) -> bool {
    v.is_null() || v.is_undefined()
}

#[async_trait(?Send)]
impl Storage for JsStorage {
    type Body = JsBody;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let v = self.call("head", &[&key.into()]).await?;
        if absent(&v) {
            return Ok(None);
        }
        Ok(Some(ObjectMeta {
            size: size_of(&v, "head")?,
        }))
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<(ObjectMeta, JsBody)>, StorageError> {
        let range = match range {
            None => JsValue::UNDEFINED,
            Some(r) => {
                let o = Object::new();
                js::set(&o, "start", &(r.start as f64).into());
                js::set(&o, "end", &(r.end as f64).into());
                o.into()
            }
        };
        let v = self.call("get", &[&key.into(), &range]).await?;
        if absent(&v) {
            return Ok(None);
        }
        let size = size_of(&v, "get")?;
        Ok(Some((
            ObjectMeta { size },
            JsBody::new(js::get(&v, "body")),
        )))
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        if self.has_read {
            let v = self.call("read", &[&key.into()]).await?;
            if absent(&v) {
                return Ok(None);
            }
            return js::as_bytes(&v)
                .map(Some)
                .ok_or_else(|| StorageError::backend("read must return a Uint8Array or null"));
        }
        match self.get(key, None).await? {
            None => Ok(None),
            Some((_, body)) => body
                .collect()
                .await
                .map(Some)
                .map_err(StorageError::backend),
        }
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        let array: JsValue = Uint8Array::from(&data[..]).into();
        self.put_js(key, &array, mode == PutMode::Create).await
    }

    async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64, StorageError> {
        let count = Rc::new(Cell::new(0u64));
        let counted: ByteStream = Box::pin(data.inspect({
            let count = count.clone();
            move |item| {
                if let Ok(b) = item {
                    count.set(count.get() + b.len() as u64);
                }
            }
        }));
        let failed: js::ErrorSlot = Rc::new(RefCell::new(None));
        let (stream, ended) = js::to_readable_stream_watched(counted, Some(failed.clone()));
        let result = self.put_js(key, &stream, false).await;
        // The input's own error wins: a digest mismatch must reach the core
        // as itself, whatever the storage made of the errored stream.
        let input_error = failed.borrow_mut().take();
        if let Some(e) = input_error {
            if result.is_ok() {
                // The storage ignored the failure; do not leave it visible.
                let _ = self.delete(key).await;
            }
            return Err(StorageError::Input(e));
        }
        result?;
        if !ended() {
            let _ = self.delete(key).await;
            return Err(StorageError::backend(
                "storage put returned before reading its whole stream",
            ));
        }
        Ok(count.get())
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        if self.has_rename {
            self.call("rename", &[&from.into(), &to.into()]).await?;
            return Ok(());
        }
        // Copy then delete: the destination still appears whole, because
        // put is atomic.
        let (_, body) = self.get(from, None).await?.ok_or(StorageError::NotFound)?;
        self.put_js(to, &body.into_js(), false).await?;
        self.delete(from).await
    }

    fn can_append(&self) -> bool {
        self.has_append
    }

    async fn append(&self, key: &str, offset: u64, parts: Vec<Bytes>) -> Result<(), StorageError> {
        if !self.has_append {
            return Err(StorageError::Unsupported("append"));
        }
        // One JS array for all parts: each is copied out of wasm once.
        let total: usize = parts.iter().map(Bytes::len).sum();
        let array = Uint8Array::new_with_length(total as u32);
        let mut at = 0u32;
        for p in &parts {
            let end = at + p.len() as u32;
            array.subarray(at, end).copy_from(p);
            at = end;
        }
        let array: JsValue = array.into();
        let args = [&key.into(), &JsValue::from(offset as f64), &array];
        match js::call(&self.obj, "append", &args).await {
            Ok(_) => Ok(()),
            Err(e) if js::error_code(&e).as_deref() == Some("EOFFSET") => {
                let len = self.head(key).await?.map_or(0, |m| m.size);
                Err(StorageError::AppendOffset { offset, len })
            }
            Err(e) => Err(storage_error(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.call("delete", &[&key.into()]).await {
            Ok(_) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let v = self.call("list", &[&prefix.into()]).await?;
        let mut keys = Vec::new();
        for entry in Self::entries(&v, "list")?.iter() {
            let key = entry
                .as_string()
                .or_else(|| js::get(&entry, "key").as_string())
                .ok_or_else(|| StorageError::backend("list entries must be strings or { key }"))?;
            if key.starts_with(prefix) {
                keys.push(key);
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn list_meta(&self, prefix: &str) -> Result<Vec<ListEntry>, StorageError> {
        let mut out = Vec::new();
        if self.has_list_meta {
            let v = self.call("listMeta", &[&prefix.into()]).await?;
            for entry in Self::entries(&v, "listMeta")?.iter() {
                let key = js::get(&entry, "key")
                    .as_string()
                    .ok_or_else(|| StorageError::backend("listMeta entries need a string key"))?;
                if !key.starts_with(prefix) {
                    continue;
                }
                out.push(ListEntry {
                    key,
                    size: size_of(&entry, "listMeta")?,
                    modified_ms: js::get_ms(&entry, "modified").unwrap_or(0),
                });
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out.dedup_by(|a, b| a.key == b.key);
            return Ok(out);
        }
        for key in self.list(prefix).await? {
            let v = self.call("head", &[&key.as_str().into()]).await?;
            if absent(&v) {
                continue;
            }
            out.push(ListEntry {
                size: size_of(&v, "head")?,
                modified_ms: js::get_ms(&v, "modified").unwrap_or(0),
                key,
            });
        }
        Ok(out)
    }

    fn body_stream(body: JsBody) -> ByteStream {
        body.into_stream()
    }
}
