//! Blob upload sessions: monolithic, chunked and streamed pushes, their
//! cancellation, and the janitor's sweeps of the upload area.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::header::{HeaderName, CONTENT_LENGTH, LOCATION, RANGE};
use http::StatusCode;

use crate::error::{ErrorCode, RegistryError};
use crate::io::body::{self, Body, ByteStream};
use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage, StorageError};
use crate::model::digest::{self, Algorithm, Digest, Hasher};
use crate::model::reference::RepositoryName;
use crate::model::upload::{Chunk, UploadId, UploadState};
use crate::store::layout;
use crate::store::{join_objects, Result, Store};
use crate::wire;
use crate::wire::response::{response, set, Response};

impl<S: Storage, H: Host> Store<S, H> {
    pub(crate) async fn start_upload(
        &self,
        name: &RepositoryName,
        uri: &http::Uri,
        body: ByteStream,
    ) -> Result<Response<S::Body>> {
        if let Some(mount) = wire::query_param(uri, "mount") {
            let digest = Digest::parse(&mount?)?;
            if let Some(from) = wire::query_param(uri, "from") {
                let from = RepositoryName::parse(&from?)?;
                let linked = self
                    .storage
                    .head(&layout::layer_link(&from, &digest))
                    .await?
                    .is_some();
                if linked && self.storage.head(&layout::blob(&digest)).await?.is_some() {
                    let in_use = self.announce_use(&[&digest]).await?;
                    self.keep_blob(&digest).await?;
                    self.link_blob(name, &digest).await?;
                    // Evicted or collected between the look and the
                    // announcement: not mountable after all.
                    if self.storage.head(&layout::blob(&digest)).await?.is_some() {
                        in_use.release().await;
                        return Ok(self.blob_created(name, &digest));
                    }
                    self.storage
                        .delete(&layout::layer_link(name, &digest))
                        .await?;
                }
            }
            // Not mountable: the spec says fall back to a normal session.
        } else if let Some(d) = wire::query_param(uri, "digest") {
            let digest = Digest::parse(&d?)?;
            let in_use = self.announce_upload(&digest).await?;
            self.keep_blob(&digest).await?;
            self.store_blob(&digest, body).await?;
            self.link_blob(name, &digest).await?;
            if let Some(in_use) = in_use {
                in_use.release().await;
            }
            return Ok(self.blob_created(name, &digest));
        }

        let mut raw = [0u8; 16];
        self.host.fill_random(&mut raw);
        let id = UploadId::from_random(raw);
        let state = UploadState::new(name, self.host.now_unix_ms());
        self.storage
            .put(&layout::upload_state(&id), state.encode(), PutMode::Create)
            .await?;
        Ok(self.upload_response(StatusCode::ACCEPTED, name, &id, &state))
    }

    pub(crate) fn upload_response(
        &self,
        status: StatusCode,
        name: &RepositoryName,
        id: &UploadId,
        state: &UploadState,
    ) -> Response<S::Body> {
        let mut resp = response(status, Body::Empty);
        let h = resp.headers_mut();
        set(h, LOCATION, &format!("/v2/{name}/blobs/uploads/{id}"));
        set(h, wire::UPLOAD_UUID_HEADER, id.as_str());
        set(h, RANGE, &state.range_header());
        set(h, CONTENT_LENGTH, "0");
        resp
    }

    pub(crate) async fn load_upload(
        &self,
        name: &RepositoryName,
        id: &UploadId,
    ) -> Result<UploadState> {
        let unknown =
            || RegistryError::new(ErrorCode::BlobUploadUnknown, format!("upload {id} unknown"));
        let raw = self
            .storage
            .read(&layout::upload_state(id))
            .await?
            .ok_or_else(unknown)?;
        let state = UploadState::decode(&raw).ok_or_else(unknown)?;
        if state.repository != name.as_str() {
            return Err(unknown());
        }
        Ok(state)
    }

    pub(crate) async fn upload_status(
        &self,
        name: &RepositoryName,
        id: &UploadId,
    ) -> Result<Response<S::Body>> {
        let state = self.load_upload(name, id).await?;
        Ok(self.upload_response(StatusCode::NO_CONTENT, name, id, &state))
    }

    /// Check a chunk's Content-Range against the session: 416 if it does not
    /// start where the upload is. Returns the chunk length it announces.
    pub(crate) fn check_chunk_range(
        &self,
        name: &RepositoryName,
        id: &UploadId,
        state: &UploadState,
        content_range: Option<&str>,
    ) -> Result<Option<u64>> {
        let Some(value) = content_range else {
            return Ok(None);
        };
        let range_error = |msg: String| {
            RegistryError::new(ErrorCode::RangeInvalid, msg)
                .with_header(RANGE, state.range_header())
                .with_header(LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
                .with_header(
                    HeaderName::from_static(wire::UPLOAD_UUID_HEADER),
                    id.as_str(),
                )
        };
        let (start, end) = wire::parse_content_range(value)
            .ok_or_else(|| range_error(format!("malformed Content-Range {value:?}")))?;
        if start != state.offset {
            return Err(range_error(format!(
                "chunk starts at {start}, upload is at {}",
                state.offset
            )));
        }
        let len = (end - start)
            .checked_add(1)
            .ok_or_else(|| range_error(format!("Content-Range {value:?} is too large")))?;
        Ok(Some(len))
    }

    /// Store `body` as the session's next chunk and advance `state`; with
    /// `persist`, write the state too. Returns the chunk's key (`None` for
    /// an empty body). A session removed while the chunk was being written
    /// (by a janitor elsewhere) stays removed: the chunk is dropped and the
    /// upload is unknown.
    pub(crate) async fn append_chunk(
        &self,
        id: &UploadId,
        state: &mut UploadState,
        body: ByteStream,
        expected_len: Option<u64>,
        persist: bool,
    ) -> Result<Option<String>> {
        let hasher = Hasher::restore(&state.hasher)
            .ok_or_else(|| RegistryError::internal("corrupt upload state"))?;
        let slot = Arc::new(Mutex::new(None));
        let stream = Box::pin(Hashing {
            inner: body,
            hasher: Some(hasher),
            len: 0,
            expected_len,
            done: slot.clone(),
        });
        let mut nonce = [0u8; 8];
        self.host.fill_random(&mut nonce);
        let nonce = hex::encode(nonce);
        let key = layout::upload_chunk(id, state.offset, &nonce);
        self.storage
            .put_stream(&key, stream)
            .await
            .map_err(RegistryError::from_upload)?;
        let (hasher, len) = slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| RegistryError::internal("chunk stream did not finish"))?;
        if len == 0 {
            self.storage.delete(&key).await?;
            return Ok(None);
        }
        if self
            .storage
            .head(&layout::upload_state(id))
            .await?
            .is_none()
        {
            self.storage.delete(&key).await?;
            return Err(RegistryError::new(
                ErrorCode::BlobUploadUnknown,
                format!("upload {id} was removed while the chunk arrived"),
            ));
        }
        state.chunks.push(Chunk {
            offset: state.offset,
            nonce,
        });
        state.offset += len;
        state.hasher = hasher.save();
        state.updated_ms = self.host.now_unix_ms();
        if persist {
            self.storage
                .put(
                    &layout::upload_state(id),
                    state.encode(),
                    PutMode::Overwrite,
                )
                .await?;
        }
        Ok(Some(key))
    }

    pub(crate) async fn patch_upload(
        &self,
        name: &RepositoryName,
        id: &UploadId,
        content_range: Option<&str>,
        body: ByteStream,
    ) -> Result<Response<S::Body>> {
        let _writing = self.writing(id);
        let mut state = self.load_upload(name, id).await?;
        let expected = self.check_chunk_range(name, id, &state, content_range)?;
        self.append_chunk(id, &mut state, body, expected, true)
            .await?;
        Ok(self.upload_response(StatusCode::ACCEPTED, name, id, &state))
    }

    pub(crate) async fn finish_upload(
        &self,
        name: &RepositoryName,
        id: &UploadId,
        uri: &http::Uri,
        content_range: Option<&str>,
        body: ByteStream,
    ) -> Result<Response<S::Body>> {
        let digest = match wire::query_param(uri, "digest") {
            Some(d) => Digest::parse(&d?)?,
            None => {
                return Err(RegistryError::new(
                    ErrorCode::DigestInvalid,
                    "digest query parameter required",
                ))
            }
        };
        let _writing = self.writing(id);
        let mut state = self.load_upload(name, id).await?;
        let expected = self.check_chunk_range(name, id, &state, content_range)?;
        let (first, body) = peek(body).await.map_err(|e| {
            RegistryError::new(ErrorCode::BlobUploadInvalid, format!("reading body: {e}"))
        })?;

        // Before the blob is written: an eviction pass that did not see
        // this yet cannot have chosen the blob we are about to write, nor a
        // collection (`crate::store::sweep`).
        let in_use = self.announce_upload(&digest).await?;
        self.keep_blob(&digest).await?;
        if state.chunks.is_empty() {
            // Monolithic: nothing staged, so the body goes straight to its
            // final place through the verifier.
            let body = match expected {
                Some(n) => digest::verify(body, digest.clone(), Some(n)),
                None => body,
            };
            self.store_blob(&digest, body).await?;
        } else {
            // The final chunk joins the session only if the blob commits:
            // a failed PUT leaves the session as it was, so the client can
            // send it again (with the right digest).
            let last = match first {
                Some(_) => {
                    self.append_chunk(id, &mut state, body, expected, false)
                        .await?
                }
                None => None,
            };
            if let Err(e) = self.commit_chunks(id, &state, &digest).await {
                if let Some(key) = last {
                    self.storage.delete(&key).await?;
                }
                return Err(e);
            }
        }
        self.link_blob(name, &digest).await?;
        if let Some(in_use) = in_use {
            in_use.release().await;
        }
        self.remove_upload(id).await?;
        Ok(self.blob_created(name, &digest))
    }

    /// Move the staged chunks to the blob's place, if they hash to `digest`.
    pub(crate) async fn commit_chunks(
        &self,
        id: &UploadId,
        state: &UploadState,
        digest: &Digest,
    ) -> Result<()> {
        if digest.algorithm() == Algorithm::Sha256 {
            let actual = Hasher::restore(&state.hasher)
                .ok_or_else(|| RegistryError::internal("corrupt upload state"))?
                .finish();
            if &actual != digest {
                return Err(RegistryError::new(
                    ErrorCode::DigestInvalid,
                    format!("uploaded content has digest {actual}, not {digest}"),
                ));
            }
            if let [only] = state.chunks.as_slice() {
                // The chunk's bytes were hashed on their way into storage:
                // renaming them is as good as writing them again, and free.
                let from = layout::upload_chunk(id, only.offset, &only.nonce);
                self.storage.rename(&from, &layout::blob(digest)).await?;
                return Ok(());
            }
        }
        // Several chunks (or a sha512 digest): join them through the verifier.
        let keys: Vec<String> = state
            .chunks
            .iter()
            .map(|c| layout::upload_chunk(id, c.offset, &c.nonce))
            .collect();
        let joined = join_objects(self.storage.clone(), keys);
        self.store_blob(digest, joined).await
    }

    pub(crate) async fn cancel_upload(
        &self,
        name: &RepositoryName,
        id: &UploadId,
    ) -> Result<Response<S::Body>> {
        self.load_upload(name, id).await?;
        self.remove_upload(id).await?;
        let mut resp = response(StatusCode::NO_CONTENT, Body::Empty);
        set(resp.headers_mut(), CONTENT_LENGTH, "0");
        Ok(resp)
    }

    pub(crate) async fn remove_upload(&self, id: &UploadId) -> Result<()> {
        // State last: while it exists the session can be found and cleaned.
        let state_key = layout::upload_state(id);
        for key in self.storage.list(&layout::upload_dir(id)).await? {
            if key != state_key {
                self.storage.delete(&key).await?;
            }
        }
        self.storage.delete(&state_key).await?;
        Ok(())
    }

    /// Every session (or fill spool) in the upload area, from its keys (a
    /// session whose state is gone still has chunks to find).
    pub(crate) async fn upload_ids(&self) -> Result<Vec<UploadId>> {
        let keys = self.storage.list(layout::UPLOADS_PREFIX).await?;
        let ids: std::collections::BTreeSet<UploadId> =
            keys.iter().filter_map(|k| layout::upload_of(k)).collect();
        Ok(ids.into_iter().collect())
    }

    /// Delete the spools of cache fills that nobody renewed for two lease
    /// lifetimes: leftovers of a crash. (A live fill, in this process or
    /// another sharing the storage, touches its spool's state every quarter
    /// lifetime.) Returns how many.
    pub(crate) async fn purge_interrupted_fills(&self) -> Result<usize> {
        let now = self.host.now_unix_ms();
        let mut purged = 0;
        for id in self.upload_ids().await? {
            if let Some(raw) = self.storage.read(&layout::upload_state(&id)).await? {
                if UploadState::decode(&raw).is_some_and(|s| s.fill && self.fill_is_dead(&s, now)) {
                    self.remove_upload(&id).await?;
                    purged += 1;
                }
            }
        }
        Ok(purged)
    }

    /// Put one probe object twice with [`PutMode::Create`]: the second must
    /// be refused. (In the upload area, under a fresh id: a crash between
    /// the put and the delete leaves a stateless session the janitor
    /// removes.)
    pub(crate) async fn create_only_puts_work(&self) -> Result<bool> {
        let mut raw = [0u8; 16];
        self.host.fill_random(&mut raw);
        let key = format!("{}probe", layout::upload_dir(&UploadId::from_random(raw)));
        let first = self.storage.put(&key, Bytes::new(), PutMode::Create).await;
        let second = self.storage.put(&key, Bytes::new(), PutMode::Create).await;
        let _ = self.storage.delete(&key).await;
        first?;
        Ok(matches!(second, Err(StorageError::AlreadyExists)))
    }

    fn fill_is_dead(&self, s: &UploadState, now: u64) -> bool {
        now.saturating_sub(s.updated_ms) > 2 * self.config.fill_lease_ms
    }

    /// Mark a session as receiving data until the guard drops.
    fn writing(&self, id: &UploadId) -> Writing<'_> {
        *self
            .uploads_writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_default() += 1;
        Writing {
            map: &self.uploads_writing,
            id: id.clone(),
        }
    }

    /// Delete upload sessions not touched for `max_age_ms`. A session with
    /// a chunk arriving is active however long the chunk takes. Returns
    /// how many.
    pub(crate) async fn purge_stale_uploads(&self, max_age_ms: u64) -> Result<usize> {
        let now = self.host.now_unix_ms();
        let mut purged = 0;
        for id in self.upload_ids().await? {
            if self
                .uploads_writing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&id)
            {
                continue;
            }
            let stale = match self.storage.read(&layout::upload_state(&id)).await? {
                Some(raw) => UploadState::decode(&raw).is_none_or(|s| {
                    now.saturating_sub(s.updated_ms) > max_age_ms
                        || (s.fill && self.fill_is_dead(&s, now))
                }),
                None => true, // chunks without state: a crash mid-cleanup
            };
            if stale {
                self.remove_upload(&id).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}

/// Held while a request writes to an upload session.
struct Writing<'a> {
    map: &'a Mutex<HashMap<UploadId, usize>>,
    id: UploadId,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.id);
            }
        }
    }
}

/// Hash a chunk on its way to storage; hand the hasher back at the end.
pub(crate) struct Hashing {
    inner: ByteStream,
    hasher: Option<Hasher>,
    len: u64,
    expected_len: Option<u64>,
    done: Arc<Mutex<Option<(Hasher, u64)>>>,
}

impl Stream for Hashing {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.hasher.is_none() {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.len += chunk.len() as u64;
                if this.expected_len.is_some_and(|n| this.len > n) {
                    this.hasher = None;
                    return Poll::Ready(Some(Err(size_mismatch(this.expected_len, this.len))));
                }
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let hasher = this.hasher.take().expect("checked above");
                if this.expected_len.is_some_and(|n| this.len != n) {
                    return Poll::Ready(Some(Err(size_mismatch(this.expected_len, this.len))));
                }
                *this.done.lock().unwrap_or_else(|p| p.into_inner()) = Some((hasher, this.len));
                Poll::Ready(None)
            }
        }
    }
}

pub(crate) fn size_mismatch(expected: Option<u64>, actual: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        digest::SizeMismatch {
            expected: expected.unwrap_or(0),
            actual,
        },
    )
}

/// Read the first item of a stream, returning it and a stream that still
/// yields it.
pub(crate) async fn peek(mut body: ByteStream) -> io::Result<(Option<Bytes>, ByteStream)> {
    loop {
        match body.next().await {
            None => return Ok((None, body::empty())),
            Some(Err(e)) => return Err(e),
            Some(Ok(b)) if b.is_empty() => continue,
            Some(Ok(b)) => {
                let again = futures::stream::once({
                    let b = b.clone();
                    async move { Ok(b) }
                })
                .chain(body);
                return Ok((Some(b), Box::pin(again)));
            }
        }
    }
}
