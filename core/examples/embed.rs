//! A complete registry in one file: kura-core behind a plain hyper server,
//! with a storage backend written here (a directory of files).
//!
//! ```sh
//! cargo run -p kura-core --example embed -- 127.0.0.1:5001 /tmp/registry-data
//! skopeo copy --dest-tls-verify=false oci:./app:1 docker://127.0.0.1:5001/demo/app:1
//! ```
//!
//! The core decides everything registry-shaped (routes, digests, manifests,
//! uploads, the layout of keys); this file only moves bytes.

use std::io::{self, ErrorKind::AlreadyExists, ErrorKind::NotFound};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyDataStream, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use kura_core::storage::{ObjectMeta, PutMode, Storage, StorageError};
use kura_core::{body, BoxFuture, ByteStream, Host, Registry, RegistryConfig};
use tokio::{fs, io::AsyncReadExt, io::AsyncSeekExt, io::AsyncWriteExt};

/// Objects are files under this directory, named by their key (the core's
/// keys are validated relative paths). Writes are staged in `.tmp` and
/// renamed into place, so a reader sees a whole object or none.
struct Dir(PathBuf);

/// `Ok(None)` for a file that is not there.
fn absent<T>(r: io::Result<T>) -> Result<Option<T>, StorageError> {
    match r {
        Err(e) if e.kind() == NotFound => Ok(None),
        r => Ok(Some(r?)),
    }
}

impl Dir {
    async fn write(
        &self,
        key: &str,
        mut data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, StorageError> {
        let staged = self.0.join(".tmp").join(format!(
            "{:x}",
            getrandom::u64().map_err(StorageError::backend)?
        ));
        let written = async {
            let (mut file, mut len) = (fs::File::create(&staged).await?, 0);
            while let Some(chunk) = data.next().await {
                let chunk = chunk.map_err(StorageError::Input)?; // the client's body broke
                file.write_all(&chunk).await?;
                len += chunk.len() as u64;
            }
            file.sync_all().await?;
            let dest = self.0.join(key);
            fs::create_dir_all(dest.parent().expect("keys have a parent")).await?;
            match mode {
                PutMode::Overwrite => fs::rename(&staged, &dest).await,
                // A hard link fails if the name exists: create-if-absent, atomically.
                PutMode::Create => fs::hard_link(&staged, &dest).await,
            }
            .map(|()| len)
            .map_err(|e| match e.kind() {
                AlreadyExists => StorageError::AlreadyExists,
                _ => e.into(),
            })
        };
        let written = written.await;
        let _ = fs::remove_file(&staged).await; // whatever happened
        written
    }
}

#[async_trait]
impl Storage for Dir {
    type Body = ByteStream;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let meta = absent(fs::metadata(self.0.join(key)).await)?;
        Ok(meta
            .filter(|m| m.is_file())
            .map(|m| ObjectMeta { size: m.len() }))
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<(ObjectMeta, ByteStream)>, StorageError> {
        let Some(meta) = self.head(key).await? else {
            return Ok(None);
        };
        let mut file = fs::File::open(self.0.join(key)).await?;
        let range = range.unwrap_or(0..meta.size);
        file.seek(io::SeekFrom::Start(range.start)).await?;
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
        absent(fs::remove_file(self.0.join(key)).await).map(drop)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let (mut keys, mut dirs) = (Vec::new(), vec![self.0.clone()]);
        while let Some(dir) = dirs.pop() {
            let Some(mut entries) = absent(fs::read_dir(&dir).await)? else {
                continue;
            };
            while let Some(e) = entries.next_entry().await? {
                let key = e
                    .path()
                    .strip_prefix(&self.0)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned();
                if e.file_type().await?.is_dir() {
                    (key != ".tmp").then(|| dirs.push(e.path()));
                } else if key.starts_with(prefix) {
                    keys.push(key);
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

/// hyper's request in, the core's answer out: bodies as byte streams.
async fn serve(
    registry: Arc<Registry<Dir, Os>>,
    req: hyper::Request<Incoming>,
) -> io::Result<hyper::Response<impl hyper::body::Body<Data = Bytes, Error = io::Error>>> {
    let req =
        req.map(|b| -> ByteStream { Box::pin(BodyDataStream::new(b).map_err(io::Error::other)) });
    let answer = registry.handle(req).await;
    Ok(answer.map(|b| StreamBody::new(b.into_stream(Dir::body_stream).map_ok(Frame::data))))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (Some(addr), Some(dir)) = (std::env::args().nth(1), std::env::args().nth(2)) else {
        anyhow::bail!("usage: embed ADDRESS DATA_DIR");
    };
    std::fs::create_dir_all(PathBuf::from(&dir).join(".tmp"))?;
    let config = RegistryConfig::default();
    let registry = Arc::new(Registry::new(Dir(dir.into()), Os, config));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("registry on http://{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let registry = registry.clone();
        let service = hyper::service::service_fn(move |req| serve(registry.clone(), req));
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
    }
}
