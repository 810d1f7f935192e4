//! Hosted repositories under races and failed requests, driven
//! deterministically: a storage that holds one read until the test lets it
//! go, and request bodies the test feeds piece by piece.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

mod common;

use async_trait::async_trait;
use bytes::Bytes;
use common::TestHost;
use futures::channel::{mpsc, oneshot};
use futures::executor::block_on;
use futures::future::Shared;
use futures::FutureExt;
use http::{Method, Request, StatusCode};
use kura_core::storage::{ListEntry, MemoryStorage, ObjectMeta, PutMode, Storage, StorageError};
use kura_core::{body, Body, ByteStream, Digest, Registry, RegistryConfig};

/// Memory storage whose first read of a key starting with the armed prefix
/// waits for the gate.
#[derive(Default)]
struct Gated {
    inner: MemoryStorage,
    armed: Mutex<Option<(String, Shared<oneshot::Receiver<()>>)>>,
}

impl Gated {
    /// Hold the next read of a key under `prefix`; dropping the returned
    /// sender lets it go.
    fn hold_next_read(&self, prefix: &str) -> oneshot::Sender<()> {
        let (tx, rx) = oneshot::channel();
        *self.armed.lock().unwrap() = Some((prefix.to_owned(), rx.shared()));
        tx
    }

    async fn gate(&self, key: &str) {
        let gate = {
            let mut armed = self.armed.lock().unwrap();
            match armed.as_ref() {
                Some((prefix, _)) if key.starts_with(prefix.as_str()) => armed.take().map(|a| a.1),
                _ => None,
            }
        };
        if let Some(g) = gate {
            let _ = g.await;
        }
    }
}

#[async_trait]
impl Storage for Gated {
    type Body = ByteStream;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        self.inner.head(key).await
    }
    async fn get(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<(ObjectMeta, ByteStream)>, StorageError> {
        self.gate(key).await;
        self.inner.get(key, range).await
    }
    async fn read(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.gate(key).await;
        self.inner.read(key).await
    }
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        self.inner.put(key, data, mode).await
    }
    async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64, StorageError> {
        self.inner.put_stream(key, data).await
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.inner.rename(from, to).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix).await
    }
    async fn list_meta(&self, prefix: &str) -> Result<Vec<ListEntry>, StorageError> {
        self.inner.list_meta(prefix).await
    }
    fn body_stream(body: ByteStream) -> ByteStream {
        body
    }
}

type Reg = Registry<Arc<Gated>, TestHost>;

fn registry() -> (Reg, Arc<Gated>) {
    let storage = Arc::new(Gated::default());
    let reg = Registry::new(
        storage.clone(),
        TestHost::at(1_000),
        RegistryConfig::default(),
    );
    (reg, storage)
}

struct Resp {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

async fn send(reg: &Reg, method: Method, uri: &str, ct: Option<&str>, body: ByteStream) -> Resp {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(ct) = ct {
        b = b.header("content-type", ct);
    }
    let resp = reg.handle(b.body(body).unwrap()).await;
    let (parts, body) = resp.into_parts();
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Full(b) => b,
        Body::Stream(s) | Body::Relay(s) => body::collect_limited(s, usize::MAX).await.unwrap(),
    };
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn call(reg: &Reg, method: Method, uri: &str, body: &[u8]) -> Resp {
    let stream = if body.is_empty() {
        body::empty()
    } else {
        body::once(Bytes::copy_from_slice(body))
    };
    block_on(send(reg, method, uri, None, stream))
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Push a one-layer image to `repo:tag`; returns the manifest's digest.
fn push_image(reg: &Reg, repo: &str, tag: &str) -> Digest {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = b"layer bytes";
    for blob in [&config[..], &layer[..]] {
        let d = Digest::sha256(blob);
        let r = call(
            reg,
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            blob,
        );
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::sha256(config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": Digest::sha256(layer).to_string(), "size": layer.len()}],
    })
    .to_string();
    let r = block_on(send(
        reg,
        Method::PUT,
        &format!("/v2/{repo}/manifests/{tag}"),
        Some(OCI_MANIFEST),
        body::once(Bytes::from(manifest.clone())),
    ));
    assert_eq!(r.status, StatusCode::CREATED);
    Digest::sha256(manifest.as_bytes())
}

#[test]
fn a_deletion_wins_over_a_read_in_flight() {
    let (reg, storage) = registry();
    let d = push_image(&reg, "race/app", "v1");
    let uri = format!("/v2/race/app/manifests/{d}");
    // A first read (nothing cached yet) stops while reading the bytes.
    let open = storage.hold_next_read("blobs/");
    block_on(async {
        let mut get = Box::pin(send(&reg, Method::GET, &uri, None, body::empty()));
        assert!(futures::poll!(get.as_mut()).is_pending());
        // The deletion lands meanwhile.
        let del = send(&reg, Method::DELETE, &uri, None, body::empty()).await;
        assert_eq!(del.status, StatusCode::ACCEPTED);
        drop(open);
        let _ = get.await;
    });
    for method in [Method::GET, Method::HEAD] {
        let r = call(&reg, method.clone(), &uri, b"");
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} after the delete");
    }
    let r = call(&reg, Method::DELETE, &uri, b"");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[test]
fn a_repushed_media_type_is_served_at_once() {
    let (reg, _) = registry();
    let d = push_image(&reg, "mt/app", "v1");
    let uri = format!("/v2/mt/app/manifests/{d}");
    assert_eq!(
        call(&reg, Method::GET, &uri, b"").header("content-type"),
        OCI_MANIFEST
    );
    // A manifest without a mediaType field takes its type from the
    // Content-Type it is pushed with.
    let artifact = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let empty = call(
        &reg,
        Method::POST,
        "/v2/mt/app/blobs/uploads/?digest=sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        b"{}",
    );
    assert_eq!(empty.status, StatusCode::CREATED);
    let ad = Digest::sha256(artifact);
    let put = |ct: &str| {
        block_on(send(
            &reg,
            Method::PUT,
            &format!("/v2/mt/app/manifests/{ad}"),
            Some(ct),
            body::once(Bytes::from_static(artifact)),
        ))
    };
    assert_eq!(put(OCI_MANIFEST).status, StatusCode::CREATED);
    let auri = format!("/v2/mt/app/manifests/{ad}");
    assert_eq!(
        call(&reg, Method::GET, &auri, b"").header("content-type"),
        OCI_MANIFEST
    );
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    assert_eq!(put(docker).status, StatusCode::CREATED);
    assert_eq!(
        call(&reg, Method::GET, &auri, b"").header("content-type"),
        docker,
        "the re-pushed type, without a restart"
    );
}

#[test]
fn the_janitor_spares_an_upload_receiving_data() {
    let (reg, storage) = registry();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::sha256(&data);
    let r = call(&reg, Method::POST, "/v2/up/app/blobs/uploads/", b"");
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.header("location").to_owned();
    // A slow PATCH: half the chunk arrives, then the session goes idle for
    // longer than the janitor allows.
    let (tx, rx) = mpsc::unbounded::<std::io::Result<Bytes>>();
    tx.unbounded_send(Ok(Bytes::copy_from_slice(&data[..150_000])))
        .unwrap();
    block_on(async {
        let mut patch = Box::pin(send(&reg, Method::PATCH, &loc, None, Box::pin(rx)));
        assert!(futures::poll!(patch.as_mut()).is_pending());
        reg.host().clock.fetch_add(10_000_000, Ordering::SeqCst);
        let purged = reg.purge_stale_uploads(60_000).await.unwrap();
        assert_eq!(purged, 0, "a session with a write in flight is active");
        tx.unbounded_send(Ok(Bytes::copy_from_slice(&data[150_000..])))
            .unwrap();
        drop(tx);
        let r = patch.await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        assert_eq!(r.header("range"), "0-299999");
    });
    let r = call(&reg, Method::PUT, &format!("{loc}?digest={d}"), b"");
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        call(&reg, Method::GET, &format!("/v2/up/app/blobs/{d}"), b"").body,
        data
    );

    // Removed while a chunk arrives (a janitor in another process): the
    // write does not bring the session back.
    let r = call(&reg, Method::POST, "/v2/up/app/blobs/uploads/", b"");
    let loc = r.header("location").to_owned();
    let id = loc.rsplit('/').next().unwrap().to_owned();
    let (tx, rx) = mpsc::unbounded::<std::io::Result<Bytes>>();
    tx.unbounded_send(Ok(Bytes::from_static(b"abc"))).unwrap();
    block_on(async {
        let mut patch = Box::pin(send(&reg, Method::PATCH, &loc, None, Box::pin(rx)));
        assert!(futures::poll!(patch.as_mut()).is_pending());
        for key in storage.list(&format!("uploads/{id}/")).await.unwrap() {
            storage.delete(&key).await.unwrap();
        }
        drop(tx);
        let r = patch.await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    });
    assert!(block_on(storage.list(&format!("uploads/{id}/")))
        .unwrap()
        .is_empty());
}

#[test]
fn a_failed_final_put_can_be_sent_again() {
    let (reg, _) = registry();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let d = Digest::sha256(&data);
    let r = call(&reg, Method::POST, "/v2/up/app/blobs/uploads/", b"");
    let loc = r.header("location").to_owned();
    let r = call(&reg, Method::PATCH, &loc, &data[..60_000]);
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.header("location").to_owned();
    let wrong = Digest::sha256(b"something else");
    let r = call(
        &reg,
        Method::PUT,
        &format!("{loc}?digest={wrong}"),
        &data[60_000..],
    );
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The session is as it was before the failed PUT.
    let r = call(&reg, Method::GET, &loc, b"");
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range"), "0-59999");
    let r = call(
        &reg,
        Method::PUT,
        &format!("{loc}?digest={d}"),
        &data[60_000..],
    );
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        call(&reg, Method::GET, &format!("/v2/up/app/blobs/{d}"), b"").body,
        data
    );
}
