//! A complete registry in one file: kura-core behind a plain hyper server,
//! with a storage backend written here (a directory of files).
//!
//! ```sh
//! cargo run -p kura-core --example embed -- 127.0.0.1:5001 /tmp/registry-data
//! skopeo copy --dest-tls-verify=false oci:./app:1 docker://127.0.0.1:5001/demo/app:1
//! ```
//!
//! The core decides everything registry-shaped (routes, digests, manifests,
//! uploads, the layout of keys); this file only moves bytes: files in and
//! out of the directory, HTTP bodies in and out of hyper.

use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use kura_core::storage::{ObjectMeta, PutMode, Storage, StorageError};
use kura_core::{body, Body, BoxFuture, ByteStream, Host, Registry, RegistryConfig};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Objects are files under `root`, named by their key; writes go to a
/// temporary file first and are renamed into place, so readers see a whole
/// object or none.
struct Dir {
    root: PathBuf,
    temp: AtomicU64,
}

impl Dir {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key) // the core's keys are validated relative paths
    }

    /// Stage `data` in a temporary file, then move it into place: a failed
    /// stream leaves nothing, a reader never sees half an object.
    async fn write(
        &self,
        key: &str,
        mut data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, StorageError> {
        let tmp = self.root.join(".tmp");
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(StorageError::backend)?;
        let staged = tmp.join(self.temp.fetch_add(1, Ordering::Relaxed).to_string());
        let mut file = tokio::fs::File::create(&staged)
            .await
            .map_err(StorageError::backend)?;
        let mut len = 0;
        while let Some(chunk) = data.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&staged).await;
                    return Err(StorageError::Input(e));
                }
            };
            file.write_all(&chunk)
                .await
                .map_err(StorageError::backend)?;
            len += chunk.len() as u64;
        }
        file.sync_all().await.map_err(StorageError::backend)?;
        let dest = self.path(key);
        let parent = dest.parent().expect("keys have a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(StorageError::backend)?;
        let placed = match mode {
            PutMode::Overwrite => tokio::fs::rename(&staged, &dest).await,
            // A hard link fails if the name exists: create-if-absent, atomically.
            PutMode::Create => tokio::fs::hard_link(&staged, &dest).await,
        };
        let _ = tokio::fs::remove_file(&staged).await;
        match placed {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StorageError::AlreadyExists),
            other => other.map(|()| len).map_err(StorageError::backend),
        }
    }
}

#[async_trait]
impl Storage for Dir {
    type Body = ByteStream;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta { size: m.len() })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::backend(e)),
        }
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<(ObjectMeta, ByteStream)>, StorageError> {
        let Some(meta) = self.head(key).await? else {
            return Ok(None);
        };
        let mut file = tokio::fs::File::open(self.path(key))
            .await
            .map_err(StorageError::backend)?;
        let range = range.unwrap_or(0..meta.size);
        file.seek(io::SeekFrom::Start(range.start))
            .await
            .map_err(StorageError::backend)?;
        let reader = tokio_util::io::ReaderStream::new(file.take(range.end - range.start));
        Ok(Some((meta, Box::pin(reader))))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        self.write(key, body::once(data), mode).await.map(drop)
    }

    async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64, StorageError> {
        self.write(key, data, PutMode::Overwrite).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::backend(e)),
            _ => Ok(()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let (mut keys, mut dirs) = (Vec::new(), vec![self.root.clone()]);
        while let Some(dir) = dirs.pop() {
            let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
                continue;
            };
            while let Some(e) = entries.next_entry().await.map_err(StorageError::backend)? {
                let key = e
                    .path()
                    .strip_prefix(&self.root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned();
                match e.file_type().await.map_err(StorageError::backend)? {
                    t if t.is_dir() && key != ".tmp" => dirs.push(e.path()),
                    t if t.is_file() && key.starts_with(prefix) => keys.push(key),
                    _ => {}
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn body_stream(body: ByteStream) -> ByteStream {
        body
    }
}

/// Time, randomness and tasks from the OS and tokio.
struct Os;

impl Host for Os {
    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
    fn fill_random(&self, out: &mut [u8]) {
        getrandom::fill(out).expect("the OS has randomness");
    }
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        tokio::spawn(task);
    }
    fn sleep(&self, ms: u64) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(Duration::from_millis(ms)))
    }
}

type Answer = hyper::Response<UnsyncBoxBody<Bytes, io::Error>>;

/// hyper's request in, the core's answer out.
async fn serve(
    registry: Arc<Registry<Dir, Os>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Answer, io::Error> {
    let (parts, incoming) = req.into_parts();
    let stream: ByteStream = Box::pin(incoming.into_data_stream().map_err(io::Error::other));
    let (parts, answer) = registry
        .handle(http::Request::from_parts(parts, stream))
        .await
        .into_parts();
    let body = match answer {
        Body::Empty => Empty::new().map_err(|e| match e {}).boxed_unsync(),
        Body::Full(bytes) => Full::new(bytes).map_err(|e| match e {}).boxed_unsync(),
        Body::Stream(s) | Body::Relay(s) => {
            BodyExt::boxed_unsync(StreamBody::new(s.map_ok(Frame::data)))
        }
    };
    Ok(hyper::Response::from_parts(parts, body))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(dir)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: embed ADDRESS DATA_DIR");
    };
    let storage = Dir {
        root: PathBuf::from(dir),
        temp: AtomicU64::new(0),
    };
    let registry = Arc::new(Registry::new(storage, Os, RegistryConfig::default()));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("registry on http://{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let registry = registry.clone();
        let service = hyper::service::service_fn(move |req| serve(registry.clone(), req));
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
        );
    }
}
