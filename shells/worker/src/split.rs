//! Moving one upstream blob body to the client and into R2 at once, without
//! its bytes entering wasm.
//!
//! Why not `ReadableStream.tee()`: workerd's tee pulls at the pace of the
//! faster branch and buffers the gap for the slower one, up to a limit, then
//! fails both ("ReadableStream.tee() buffer limit exceeded"). A client on a
//! slow link pulling a large layer while R2 takes it at datacenter speed
//! hits that: the download breaks and the blob is never cached. So the
//! split is one read loop instead: each chunk (a JS `Uint8Array`, up to
//! [`MAX_CHUNK`], read with workerd's `readAtLeast`) is written to the
//! client's stream and to R2's, and the next read waits until both took it.
//! Memory stays at a chunk or two whatever the speeds; wasm only holds JS
//! handles (a few calls per chunk, no byte copies). A client that goes away
//! is dropped from the loop and the blob still lands in R2.
//!
//! Into R2 ([`Sink`]):
//! - up to `single_put_max` bytes: one put of a `FixedLengthStream` with
//!   R2's `sha256` (or `sha512`) option, so R2 itself refuses bytes that do
//!   not match the digest and nothing appears under the key;
//! - larger: a multipart upload in equal parts of `part_size` (each part a
//!   `FixedLengthStream`), plus a `crypto.DigestStream` fed the same chunks;
//!   the upload is completed only if the digest matches, aborted otherwise.
//!   (Parts carry no checksum option in the Workers API.)

use std::rc::Rc;

use futures::future::join_all;
use js_sys::{BigInt, Promise, Uint8Array};
use kura_core::{Algorithm, Digest};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReadableStream, WritableStreamDefaultWriter as Writer};
use worker::worker_sys::{DigestStream, FixedLengthStream, R2Bucket, R2MultipartUpload};

use crate::js::{self, describe, get, object, ByobReader};

/// Largest chunk read at once.
const MAX_CHUNK: u32 = 1024 * 1024;
/// A read waits for at least this much (or the end), so chunks stay large
/// without holding back a slow upstream for long.
const MIN_CHUNK: u32 = 64 * 1024;

fn fixed_length(len: u64) -> Result<FixedLengthStream, String> {
    FixedLengthStream::new_big_int(BigInt::from(len)).map_err(|e| describe(&e))
}

fn writer_of(stream: &web_sys::WritableStream) -> Result<Writer, String> {
    stream.get_writer().map_err(|e| describe(&e))
}

async fn wait(p: Promise) -> Result<JsValue, String> {
    JsFuture::from(p).await.map_err(|e| describe(&e))
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// A client-facing stream of exactly `size` bytes: the readable is the
/// response body, the writer is fed by [`pump`].
pub fn client_stream(size: u64) -> Result<(ReadableStream, Writer), String> {
    let s = fixed_length(size)?;
    Ok((s.readable(), writer_of(&s.writable())?))
}

/// Where the bytes go in R2.
pub enum Sink {
    Single {
        writer: Writer,
        put: Promise,
    },
    Multipart {
        upload: R2MultipartUpload,
        size: u64,
        part_size: u64,
        /// Bytes written so far (into all parts).
        written: u64,
        /// The part being written: its writer and upload.
        current: Option<Writer>,
        parts: Vec<Promise>,
        hasher: Writer,
        digest: DigestStream,
        expected: Digest,
    },
}

impl Sink {
    /// Start storing `size` bytes of `digest` under `key`.
    pub async fn start(
        bucket: &R2Bucket,
        key: &str,
        digest: &Digest,
        size: u64,
        single_put_max: u64,
        part_size: u64,
    ) -> Result<Sink, String> {
        if size <= single_put_max {
            let stream = fixed_length(size)?;
            let checksum = Uint8Array::from(&hex_bytes(digest.hex())[..]);
            let options = object(&[(digest.algorithm().as_str(), checksum.buffer().into())]);
            let put = bucket
                .put(key.to_owned(), stream.readable().into(), options.into())
                .map_err(|e| describe(&e))?;
            return Ok(Sink::Single {
                writer: writer_of(&stream.writable())?,
                put,
            });
        }
        let algorithm = match digest.algorithm() {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha512 => "SHA-512",
        };
        let digest_stream = DigestStream::new(algorithm);
        let hasher = writer_of(&digest_stream)?;
        let upload = wait(
            bucket
                .create_multipart_upload(key.to_owned(), JsValue::UNDEFINED)
                .map_err(|e| describe(&e))?,
        )
        .await?
        .unchecked_into();
        Ok(Sink::Multipart {
            upload,
            size,
            part_size,
            written: 0,
            current: None,
            parts: Vec::new(),
            hasher,
            digest: digest_stream,
            expected: digest.clone(),
        })
    }

    /// Hand `chunk` over; returns the writes to wait for.
    fn write(&mut self, chunk: &Uint8Array) -> Result<Vec<Promise>, String> {
        match self {
            Sink::Single { writer, .. } => Ok(vec![writer.write_with_chunk(chunk)]),
            Sink::Multipart {
                upload,
                size,
                part_size,
                written,
                current,
                parts,
                hasher,
                ..
            } => {
                let mut out = vec![hasher.write_with_chunk(chunk)];
                let len = chunk.byte_length();
                let mut offset = 0u32;
                while offset < len {
                    if current.is_none() {
                        let part_len = (*size - *written).min(*part_size);
                        let stream = fixed_length(part_len)?;
                        let number = parts.len() as u16 + 1;
                        parts.push(
                            upload
                                .upload_part(number, stream.readable().into())
                                .map_err(|e| describe(&e))?,
                        );
                        *current = Some(writer_of(&stream.writable())?);
                    }
                    let in_part = *written % *part_size;
                    let room = (*part_size - in_part).min(u64::from(u32::MAX)) as u32;
                    let n = room.min(len - offset);
                    let piece = if offset == 0 && n == len {
                        chunk.clone()
                    } else {
                        chunk.subarray(offset, offset + n)
                    };
                    let w = current.as_ref().expect("opened above");
                    out.push(w.write_with_chunk(&piece));
                    offset += n;
                    *written += u64::from(n);
                    if *written % *part_size == 0 || *written == *size {
                        let w = current.take().expect("opened above");
                        out.push(w.close());
                    }
                }
                Ok(out)
            }
        }
    }

    /// Everything was written: wait for R2. `Ok` means the object is stored
    /// and its digest was checked.
    async fn finish(self) -> Result<(), String> {
        match self {
            Sink::Single { writer, put } => {
                js::ignore(writer.close());
                let stored = wait(put).await?;
                if stored.is_null() {
                    return Err("R2 did not store the object".into());
                }
                Ok(())
            }
            Sink::Multipart {
                upload,
                parts,
                hasher,
                digest,
                expected,
                ..
            } => {
                let result = async {
                    wait(hasher.close()).await?;
                    let actual = Uint8Array::new(&wait(digest.digest()).await?).to_vec();
                    if actual != hex_bytes(expected.hex()) {
                        return Err(format!(
                            "content does not hash to {expected} (multipart upload aborted)"
                        ));
                    }
                    let mut uploaded = Vec::new();
                    for p in parts {
                        uploaded.push(wait(p).await?);
                    }
                    wait(upload.complete(uploaded).map_err(|e| describe(&e))?).await?;
                    Ok(())
                }
                .await;
                if result.is_err() {
                    if let Ok(p) = upload.abort() {
                        js::ignore(p);
                    }
                }
                result
            }
        }
    }

    /// Give up: nothing becomes visible in R2.
    pub fn abort(self, reason: &JsValue) {
        match self {
            Sink::Single { writer, put } => {
                js::ignore(writer.abort_with_reason(reason));
                js::ignore(put);
            }
            Sink::Multipart {
                upload,
                current,
                parts,
                hasher,
                ..
            } => {
                if let Some(w) = current {
                    js::ignore(w.abort_with_reason(reason));
                }
                js::ignore(hasher.abort_with_reason(reason));
                for p in parts {
                    js::ignore(p);
                }
                if let Ok(p) = upload.abort() {
                    js::ignore(p);
                }
            }
        }
    }
}

/// Progress of a pump, for whoever waits on it.
pub trait Progress {
    fn advanced(&self, bytes: u64);
}

/// Read `source` (`size` bytes) once, writing every chunk to `client` (while
/// it is there) and to `sink`. `Ok` when all bytes arrived and R2 stored
/// them under their digest.
pub async fn pump(
    source: ReadableStream,
    size: u64,
    mut client: Option<Writer>,
    mut sink: Sink,
    progress: Rc<dyn Progress>,
) -> Result<(), String> {
    let reader = Reader::new(&source);
    let mut received = 0u64;
    let result: Result<(), String> = async {
        while received < size {
            let want = (size - received).min(u64::from(MAX_CHUNK)) as u32;
            let Some(chunk) = reader.read(want).await? else {
                break;
            };
            if chunk.byte_length() == 0 {
                continue;
            }
            received += u64::from(chunk.byte_length());
            if received > size {
                return Err(format!(
                    "upstream sent more than the announced {size} bytes"
                ));
            }
            let to_client = client.as_ref().map(|w| w.write_with_chunk(&chunk));
            let stored = join_all(sink.write(&chunk)?.into_iter().map(JsFuture::from));
            let (stored, delivered) = futures::future::join(stored, async {
                match to_client {
                    Some(p) => JsFuture::from(p).await.map(|_| ()),
                    None => Ok(()),
                }
            })
            .await;
            for r in stored {
                r.map_err(|e| format!("storing: {}", describe(&e)))?;
            }
            if delivered.is_err() {
                // The client went away: keep filling the cache.
                client = None;
            }
            progress.advanced(received);
        }
        if received < size {
            return Err(format!("truncated: {received} of {size} bytes"));
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            if let Some(w) = client {
                js::ignore(w.close());
            }
            sink.finish().await
        }
        Err(e) => {
            let reason = JsValue::from(js_sys::Error::new(&e));
            if let Some(w) = client {
                js::ignore(w.abort_with_reason(&reason));
            }
            sink.abort(&reason);
            reader.cancel(&reason);
            Err(e)
        }
    }
}

/// A BYOB reader with `readAtLeast` where the stream supports it (workerd's
/// byte streams do), else a default reader.
enum Reader {
    Byob(ByobReader),
    Default(web_sys::ReadableStreamDefaultReader),
}

impl Reader {
    fn new(source: &ReadableStream) -> Reader {
        let opts = object(&[("mode", "byob".into())]);
        match source.unchecked_ref::<js::Stream>().try_get_reader(&opts) {
            Ok(r) => Reader::Byob(r.unchecked_into()),
            Err(_) => Reader::Default(source.get_reader().unchecked_into()),
        }
    }

    /// The next chunk, at most `want` bytes with the BYOB reader; `None` at
    /// the end.
    async fn read(&self, want: u32) -> Result<Option<Uint8Array>, String> {
        let p = match self {
            Reader::Byob(r) => {
                r.read_at_least(MIN_CHUNK.min(want), &Uint8Array::new_with_length(want))
            }
            Reader::Default(r) => r.read(),
        };
        let r = wait(p)
            .await
            .map_err(|e| format!("reading upstream: {e}"))?;
        if get(&r, "done").is_truthy() {
            // A BYOB read may return the last bytes together with done.
            let v = get(&r, "value");
            if !v.is_undefined() && v.unchecked_ref::<Uint8Array>().byte_length() > 0 {
                return Ok(Some(v.unchecked_into()));
            }
            return Ok(None);
        }
        Ok(Some(get(&r, "value").unchecked_into()))
    }

    fn cancel(&self, reason: &JsValue) {
        match self {
            Reader::Byob(r) => js::ignore(r.cancel(reason)),
            Reader::Default(r) => js::ignore(r.cancel_with_reason(reason)),
        }
    }
}
