//! kura-core's Storage over `object_store`: local disk (the default) and S3.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use kura_core::storage::{ListEntry, ObjectMeta, PutMode, Storage, StorageError};
use kura_core::ByteStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    WriteMultipart,
};

/// Objects smaller than this are written with one PUT; larger ones stream
/// through a multipart upload in parts of this size (S3's minimum part is
/// 5 MiB). It is also the most a single write holds in memory.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight per multipart upload.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
}

impl ObjectStorage {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ObjectStorage { store }
    }

    /// Local disk under `root` (created if missing).
    pub fn local(root: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(root)?
            .with_automatic_cleanup(true);
        Ok(Self::new(Arc::new(fs)))
    }
}

/// Read size for local files.
const READ_CHUNK: usize = 256 * 1024;

fn file_stream(file: std::fs::File, range: Range<u64>) -> ByteStream {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let stream = futures::stream::once(async move {
        let mut file = tokio::fs::File::from_std(file);
        file.seek(io::SeekFrom::Start(range.start)).await?;
        let limited = file.take(range.end - range.start);
        Ok::<_, io::Error>(tokio_util::io::ReaderStream::with_capacity(
            limited, READ_CHUNK,
        ))
    })
    .try_flatten();
    Box::pin(stream)
}

/// Remove what interrupted writes left on local disk: object_store stages
/// every write in `<name>#<n>` beside its target and renames it when done,
/// so a crash leaves the staging file behind (invisible to listings, but
/// taking space). Files older than `older_than` go, and directories left
/// empty. At startup, with nothing writing yet, `older_than` is zero.
pub fn sweep_staging_files(
    root: &std::path::Path,
    older_than: std::time::Duration,
) -> io::Result<(usize, u64)> {
    fn is_staging(name: &str) -> bool {
        name.rsplit_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
    fn walk(
        dir: &std::path::Path,
        older_than: std::time::Duration,
        top: bool,
        found: &mut (usize, u64),
    ) -> io::Result<bool> {
        let mut empty = true;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let path = entry.path();
            if ft.is_dir() {
                if walk(&path, older_than, false, found)? {
                    let _ = std::fs::remove_dir(&path);
                } else {
                    empty = false;
                }
                continue;
            }
            let name = entry.file_name();
            let meta = entry.metadata()?;
            let age = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .unwrap_or_default();
            if ft.is_file() && is_staging(&name.to_string_lossy()) && age >= older_than {
                std::fs::remove_file(&path)?;
                found.0 += 1;
                found.1 += meta.len();
            } else {
                empty = false;
            }
        }
        Ok(empty && !top)
    }
    let mut found = (0, 0);
    if root.is_dir() {
        walk(root, older_than, true, &mut found)?;
    }
    Ok(found)
}

fn path(key: &str) -> Result<Path, StorageError> {
    Path::parse(key).map_err(StorageError::backend)
}

fn map_err(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            StorageError::AlreadyExists
        }
        other => StorageError::backend(other),
    }
}

#[async_trait]
impl Storage for ObjectStorage {
    type Body = ByteStream;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match self.store.head(&path(key)?).await {
            Ok(m) => Ok(Some(ObjectMeta { size: m.size })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<(ObjectMeta, ByteStream)>, StorageError> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        match self.store.get_opts(&path(key)?, opts).await {
            Ok(r) => {
                let meta = ObjectMeta { size: r.meta.size };
                let stream: ByteStream = match r.payload {
                    // object_store reads local files 8 KiB at a time, one
                    // blocking task each; large reads cut that overhead 32x.
                    GetResultPayload::File(file, _) => file_stream(file, r.range),
                    GetResultPayload::Stream(s) => Box::pin(s.map_err(io::Error::other)),
                };
                Ok(Some((meta, stream)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        match self.store.get(&path(key)?).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(map_err)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        let mode = match mode {
            PutMode::Overwrite => object_store::PutMode::Overwrite,
            PutMode::Create => object_store::PutMode::Create,
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        self.store
            .put_opts(&path(key)?, PutPayload::from(data), opts)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn put_stream(&self, key: &str, mut data: ByteStream) -> Result<u64, StorageError> {
        let location = path(key)?;
        // Small objects (most manifests, configs, small layers) in one PUT.
        let mut head = BytesMut::new();
        while head.len() < PART_SIZE {
            match data.next().await {
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(StorageError::Input(e)),
                None => {
                    let n = head.len() as u64;
                    self.store
                        .put(&location, head.freeze().into())
                        .await
                        .map_err(map_err)?;
                    return Ok(n);
                }
            }
        }
        // Large: multipart. Local disk stages into a temporary file renamed
        // on completion; S3 shows nothing until CompleteMultipartUpload.
        // Either way an abort leaves no object.
        let upload = self.store.put_multipart(&location).await.map_err(map_err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut total = head.len() as u64;
        writer.write(&head);
        drop(head);
        loop {
            match data.next().await {
                Some(Ok(chunk)) => {
                    total += chunk.len() as u64;
                    if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                        return Err(map_err(e));
                    }
                    writer.write(&chunk);
                }
                Some(Err(e)) => {
                    // Best effort: a failed abort leaves an invisible
                    // staging object, cleaned by the backend's lifecycle.
                    let _ = writer.abort().await;
                    return Err(StorageError::Input(e));
                }
                None => break,
            }
        }
        writer.finish().await.map_err(map_err)?;
        Ok(total)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.store
            .rename(&path(from)?, &path(to)?)
            .await
            .map_err(map_err)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let p = path(prefix.trim_end_matches('/'))?;
        let mut keys: Vec<String> = self
            .store
            .list(Some(&p))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .map_err(map_err)?;
        keys.sort();
        Ok(keys)
    }

    async fn list_meta(&self, prefix: &str) -> Result<Vec<ListEntry>, StorageError> {
        let p = path(prefix.trim_end_matches('/'))?;
        let mut entries: Vec<ListEntry> = self
            .store
            .list(Some(&p))
            .map_ok(|m| ListEntry {
                key: m.location.to_string(),
                size: m.size,
                modified_ms: m.last_modified.timestamp_millis().max(0) as u64,
            })
            .try_collect()
            .await
            .map_err(map_err)?;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    fn body_stream(body: ByteStream) -> ByteStream {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256/ab");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join("abcd"), b"kept").unwrap();
        std::fs::write(blobs.join("abcd#1"), b"partial").unwrap();
        let up = dir.path().join("uploads/0123/");
        std::fs::create_dir_all(&up).unwrap();
        std::fs::write(up.join("chunk-0-aa#12"), b"partial").unwrap();
        std::fs::write(up.join("odd#name"), b"kept").unwrap();
        let (n, bytes) = sweep_staging_files(dir.path(), std::time::Duration::ZERO).unwrap();
        assert_eq!((n, bytes), (2, 14));
        assert!(blobs.join("abcd").exists());
        assert!(!blobs.join("abcd#1").exists());
        assert!(up.join("odd#name").exists());
        std::fs::remove_file(up.join("odd#name")).unwrap();
        sweep_staging_files(dir.path(), std::time::Duration::ZERO).unwrap();
        assert!(
            !dir.path().join("uploads").exists(),
            "empty directories go too"
        );
        assert!(dir.path().exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_disk_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let s = ObjectStorage::local(dir.path()).unwrap();
        kura_core::storage::conformance::run(&s).await;
    }
}
