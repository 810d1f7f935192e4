//! kura-core's `Storage` over an R2 bucket binding.
//!
//! Reads hand out the R2 object body itself ([`JsBody`]), so a blob served
//! from the cache goes from R2 to the client without entering wasm.
//!
//! - `put` with [`PutMode::Create`] is an R2 conditional put
//!   (`onlyIf: If-None-Match: *`): R2 decides atomically, so two Workers
//!   racing to create the same key cannot both win (a `head` then `put`
//!   could). A failed condition comes back as `null`: `AlreadyExists`.
//! - `put_stream` (bytes the core produced: hosted pushes, joins) buffers
//!   [`STREAM_PART`] in wasm; a stream that ends within it is one put,
//!   longer ones become a multipart upload of equal parts, completed only
//!   after the input ended without error (aborted otherwise), so a failed
//!   or unverified input leaves nothing behind.
//! - `rename` is copy then delete (R2 has no rename): the object body is
//!   put under the new key straight from the get, up to `single_put_max`;
//!   larger objects are copied part by part with ranged gets.
//! - `list` follows R2's cursor through pages of 1000.

use std::ops::Range;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use js_sys::{Promise, Uint8Array};
use kura_core::storage::{ListEntry, ObjectMeta, PutMode, Storage, StorageError};
use kura_core::ByteStream;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::worker_sys::{R2Bucket, R2MultipartUpload, R2Object, R2ObjectBody, R2Objects};

use crate::js::{describe, object, JsBody};

/// Part size for `put_stream` (held in wasm memory while it fills). R2's
/// smallest part is 5 MiB.
const STREAM_PART: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct R2Storage {
    pub bucket: R2Bucket,
    /// Objects up to this size are copied with one put.
    pub single_put_max: u64,
    /// Part size for larger copies.
    pub part_size: u64,
}

fn backend(e: JsValue) -> StorageError {
    StorageError::backend(describe(&e))
}

async fn wait(p: Result<Promise, JsValue>) -> Result<JsValue, StorageError> {
    JsFuture::from(p.map_err(backend)?).await.map_err(backend)
}

fn size_of(o: &R2Object) -> u64 {
    o.size().map(|s| s as u64).unwrap_or(0)
}

/// `{range: {offset, length}}`.
fn range_options(r: &Range<u64>) -> JsValue {
    let range = object(&[
        ("offset", JsValue::from_f64(r.start as f64)),
        ("length", JsValue::from_f64((r.end - r.start) as f64)),
    ]);
    object(&[("range", range.into())]).into()
}

impl R2Storage {
    async fn get_body(
        &self,
        key: &str,
        range: Option<&Range<u64>>,
    ) -> Result<Option<R2ObjectBody>, StorageError> {
        let opts = range.map(range_options).unwrap_or(JsValue::UNDEFINED);
        let v = wait(self.bucket.get(key.to_owned(), opts)).await?;
        if v.is_null() || v.is_undefined() {
            return Ok(None);
        }
        Ok(Some(v.unchecked_into()))
    }

    async fn put_value(
        &self,
        key: &str,
        value: JsValue,
        options: JsValue,
    ) -> Result<bool, StorageError> {
        let v = wait(self.bucket.put(key.to_owned(), value, options)).await?;
        Ok(!v.is_null())
    }

    async fn multipart(&self, key: &str) -> Result<R2MultipartUpload, StorageError> {
        let v = wait(
            self.bucket
                .create_multipart_upload(key.to_owned(), JsValue::UNDEFINED),
        )
        .await?;
        Ok(v.unchecked_into())
    }

    /// Copy `from` (of `size` bytes) to `to` in parts, with ranged gets.
    async fn copy_in_parts(&self, from: &str, to: &str, size: u64) -> Result<(), StorageError> {
        let upload = self.multipart(to).await?;
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0;
            let mut number = 1u16;
            while offset < size {
                let end = (offset + self.part_size).min(size);
                let body = self
                    .get_body(from, Some(&(offset..end)))
                    .await?
                    .ok_or(StorageError::NotFound)?;
                let stream = body.body().map_err(backend)?;
                parts.push(wait(upload.upload_part(number, stream.into())).await?);
                offset = end;
                number += 1;
            }
            wait(upload.complete(parts)).await
        }
        .await;
        if result.is_err() {
            crate::js::ignore(upload.abort().unwrap_or_else(|e| Promise::reject(&e)));
        }
        result.map(|_| ())
    }
}

#[async_trait(?Send)]
impl Storage for R2Storage {
    type Body = JsBody;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let v = wait(self.bucket.head(key.to_owned())).await?;
        if v.is_null() || v.is_undefined() {
            return Ok(None);
        }
        Ok(Some(ObjectMeta {
            size: size_of(v.unchecked_ref()),
        }))
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<(ObjectMeta, JsBody)>, StorageError> {
        let Some(obj) = self.get_body(key, range.as_ref()).await? else {
            return Ok(None);
        };
        let meta = ObjectMeta {
            size: size_of(&obj),
        };
        Ok(Some((
            meta,
            JsBody::new(Some(obj.body().map_err(backend)?)),
        )))
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let Some(obj) = self.get_body(key, None).await? else {
            return Ok(None);
        };
        let buf = wait(obj.array_buffer()).await?;
        Ok(Some(Uint8Array::new(&buf).to_vec().into()))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        let value = Uint8Array::from(&data[..]);
        let options = match mode {
            PutMode::Overwrite => JsValue::UNDEFINED,
            PutMode::Create => {
                let cond = web_sys::Headers::new().map_err(backend)?;
                cond.set("if-none-match", "*").map_err(backend)?;
                object(&[("onlyIf", cond.into())]).into()
            }
        };
        if self.put_value(key, value.into(), options).await? {
            Ok(())
        } else {
            Err(StorageError::AlreadyExists)
        }
    }

    async fn put_stream(&self, key: &str, mut data: ByteStream) -> Result<u64, StorageError> {
        let mut buf = BytesMut::new();
        let mut upload: Option<R2MultipartUpload> = None;
        let mut parts = Vec::new();
        let mut total = 0u64;
        let result: Result<(), StorageError> = async {
            loop {
                let next = data.next().await;
                let done = next.is_none();
                if let Some(chunk) = next {
                    let chunk = chunk.map_err(StorageError::Input)?;
                    total += chunk.len() as u64;
                    buf.extend_from_slice(&chunk);
                }
                // Full parts go out as they fill (so all but the last are
                // equal); a stream that never fills one is a single put.
                while !done && buf.len() >= STREAM_PART {
                    let part = buf.split_to(STREAM_PART);
                    if upload.is_none() {
                        upload = Some(self.multipart(key).await?);
                    }
                    let u = upload.as_ref().expect("just created");
                    let value = Uint8Array::from(&part[..]);
                    parts.push(wait(u.upload_part(parts.len() as u16 + 1, value.into())).await?);
                }
                if done {
                    break;
                }
            }
            match &upload {
                None => {
                    let value = Uint8Array::from(&buf[..]);
                    self.put_value(key, value.into(), JsValue::UNDEFINED)
                        .await?;
                }
                Some(u) => {
                    if !buf.is_empty() {
                        let value = Uint8Array::from(&buf[..]);
                        parts
                            .push(wait(u.upload_part(parts.len() as u16 + 1, value.into())).await?);
                    }
                    wait(u.complete(std::mem::take(&mut parts))).await?;
                }
            }
            Ok(())
        }
        .await;
        if let (Err(_), Some(u)) = (&result, &upload) {
            crate::js::ignore(u.abort().unwrap_or_else(|e| Promise::reject(&e)));
        }
        result.map(|()| total)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let size = self.head(from).await?.ok_or(StorageError::NotFound)?.size;
        if size <= self.single_put_max {
            let obj = self
                .get_body(from, None)
                .await?
                .ok_or(StorageError::NotFound)?;
            let stream = obj.body().map_err(backend)?;
            self.put_value(to, stream.into(), JsValue::UNDEFINED)
                .await?;
        } else {
            self.copy_in_parts(from, to, size).await?;
        }
        self.delete(from).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        wait(self.bucket.delete(key.to_owned())).await.map(|_| ())
    }

    /// R2 deletes up to 1,000 keys in one call.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        for batch in keys.chunks(1000) {
            let keys = batch.iter().map(|k| JsValue::from_str(k)).collect();
            wait(self.bucket.delete_multiple(keys)).await?;
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .list_meta(prefix)
            .await?
            .into_iter()
            .map(|e| e.key)
            .collect())
    }

    async fn list_meta(&self, prefix: &str) -> Result<Vec<ListEntry>, StorageError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut opts = vec![
                ("prefix", JsValue::from_str(prefix)),
                ("limit", JsValue::from_f64(1000.0)),
            ];
            if let Some(c) = &cursor {
                opts.push(("cursor", JsValue::from_str(c)));
            }
            let page: R2Objects = wait(self.bucket.list(object(&opts).into()))
                .await?
                .unchecked_into();
            for o in page.objects().map_err(backend)? {
                let modified_ms = o
                    .uploaded()
                    .map(|d| d.get_time() as u64)
                    .unwrap_or_default();
                out.push(ListEntry {
                    key: o.key().map_err(backend)?,
                    size: size_of(&o),
                    modified_ms,
                });
            }
            cursor = page.cursor().map_err(backend)?;
            if !page.truncated().map_err(backend)? || cursor.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn body_stream(body: JsBody) -> ByteStream {
        body.into_byte_stream()
    }
}
