//! kura-core's Storage over `object_store`: local disk (the default) and S3.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use kura_core::storage::{ListEntry, ObjectMeta, PutMode, Storage, StorageError};
use kura_core::ByteStream;
use object_store::local::LocalFileSystem;
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

/// The largest object one S3 CopyObject request copies (5 GiB).
const S3_COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;

#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is local disk: files can grow in place.
    local: Option<Arc<LocalFileSystem>>,
    /// Objects larger than this are renamed by streaming them into a new
    /// object rather than by the store's copy, which cannot copy them
    /// (S3's CopyObject). `None` on local disk, which renames files.
    copy_max: Option<u64>,
}

impl ObjectStorage {
    /// An S3 (or S3-compatible) store.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ObjectStorage {
            store,
            local: None,
            copy_max: Some(S3_COPY_MAX),
        }
    }

    /// Local disk under `root` (created if missing).
    pub fn local(root: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        let fs = Arc::new(LocalFileSystem::new_with_prefix(root)?.with_automatic_cleanup(true));
        Ok(ObjectStorage {
            store: fs.clone(),
            local: Some(fs),
            copy_max: None,
        })
    }

    /// Rename `from` to `to` by writing its bytes to `to` (a multipart
    /// upload when large, so `to` still appears whole) and deleting `from`.
    async fn rename_by_streaming(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let Some((_, body)) = self.get(from, None).await? else {
            return Err(StorageError::NotFound);
        };
        match self.put_stream(to, body).await {
            Ok(_) => {}
            // The input is our own object: a failure reading it is the
            // backend's, not a client's.
            Err(StorageError::Input(e)) => {
                return Err(StorageError::backend(format!(
                    "reading {from} to rename it: {e}"
                )))
            }
            Err(e) => return Err(e),
        }
        self.delete(from).await
    }
}

/// Whether a file name is one of object_store's staging files (`<name>#<n>`),
/// which a write renames into place when done.
pub fn is_staging_file(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Remove what interrupted writes left on local disk: object_store stages
/// every write in `<name>#<n>` beside its target and renames it when done,
/// so a crash leaves the staging file behind (invisible to listings, but
/// taking space). Files older than `older_than` go, and directories left
/// empty. A write in progress keeps its staging file's mtime fresh, so a
/// minute is enough at startup even with another instance on the same
/// directory.
pub fn sweep_staging_files(
    root: &std::path::Path,
    older_than: std::time::Duration,
) -> io::Result<(usize, u64)> {
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
            if ft.is_file() && is_staging_file(&name.to_string_lossy()) && age >= older_than {
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

/// Run a write again when a directory it created vanished under it (or
/// was created beside it): on local disk a delete removes the directories
/// it empties (`with_automatic_cleanup`), so a write into a directory
/// that another request is emptying, or creating, at that moment fails
/// with "No such file or directory" or "File exists" while creating it.
/// (S3 has no directories: nothing is retried there.)
async fn retry_lost_directory<T, F, Fut>(mut write: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    for _ in 0..16 {
        match write().await {
            Err(e) if lost_directory(&e) => continue,
            done => return done,
        }
    }
    write().await
}

/// Whether `e` is a directory that vanished (or appeared) while the write
/// created it, not a missing or existing object.
fn lost_directory(e: &object_store::Error) -> bool {
    if matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
    ) {
        return false;
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
            );
        }
        next = e.source();
    }
    false
}

fn map_err(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            StorageError::AlreadyExists
        }
        other => match full_kind(&other) {
            // The core answers a full store by the io::Error's kind, which
            // object_store keeps a few sources down: bring it to the top.
            Some(kind) => StorageError::backend(io::Error::new(kind, other)),
            None => StorageError::backend(other),
        },
    }
}

/// The kind of the "no space" error (ENOSPC, or EDQUOT: a quota) in
/// `e`'s chain of sources, if there is one.
fn full_kind(e: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ) {
                return Some(io.kind());
            }
        }
        next = e.source();
    }
    None
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
                    // blocking task each; mapping skips the copies too.
                    GetResultPayload::File(file, _) => crate::file_window::stream(file, r.range),
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
        let (location, payload) = (path(key)?, PutPayload::from(data));
        retry_lost_directory(|| {
            self.store
                .put_opts(&location, payload.clone(), opts.clone())
        })
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
                    let payload = PutPayload::from(head.freeze());
                    retry_lost_directory(|| self.store.put(&location, payload.clone()))
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
                        // A part failed to upload: abort, as below.
                        let _ = writer.abort().await;
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
        if let Some(max) = self.copy_max {
            match self.head(from).await? {
                None => return Err(StorageError::NotFound),
                Some(m) if m.size > max => return self.rename_by_streaming(from, to).await,
                Some(_) => {}
            }
        }
        let (from, to) = (path(from)?, path(to)?);
        retry_lost_directory(|| self.store.rename(&from, &to))
            .await
            .map_err(map_err)
    }

    fn can_append(&self) -> bool {
        self.local.is_some()
    }

    async fn append(&self, key: &str, offset: u64, parts: Vec<Bytes>) -> Result<(), StorageError> {
        let Some(fs) = &self.local else {
            return Err(StorageError::Unsupported("append"));
        };
        let file = fs.path_to_filesystem(&path(key)?).map_err(map_err)?;
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            use std::io::{Seek, Write};
            // The kind kept: a full disk is told apart by it.
            let io = |e: io::Error| {
                StorageError::backend(io::Error::new(e.kind(), format!("{}: {e}", file.display())))
            };
            if offset == 0 {
                if let Some(dir) = file.parent() {
                    // A delete emptying a parent may remove it meanwhile
                    // (see `retry_lost_directory`).
                    let mut tries = 0;
                    while let Err(e) = std::fs::create_dir_all(dir) {
                        tries += 1;
                        if e.kind() != io::ErrorKind::NotFound || tries > 16 {
                            return Err(io(e));
                        }
                    }
                }
            }
            let mut f = match std::fs::OpenOptions::new()
                .write(true)
                .create(offset == 0)
                .open(&file)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::AppendOffset { offset, len: 0 })
                }
                Err(e) => return Err(io(e)),
            };
            let len = f.metadata().map_err(io)?.len();
            if len != offset {
                return Err(StorageError::AppendOffset { offset, len });
            }
            f.seek(io::SeekFrom::Start(offset)).map_err(io)?;
            // One writev for all parts, continued where the kernel stopped.
            let mut slices: Vec<io::IoSlice<'_>> =
                parts.iter().map(|p| io::IoSlice::new(p)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                match f.write_vectored(rest) {
                    Ok(0) => return Err(io(io::ErrorKind::WriteZero.into())),
                    Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io(e)),
                }
            }
            Ok(())
        })
        .await
        .map_err(StorageError::backend)?
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    /// S3 takes up to 1,000 keys per DeleteObjects request, which
    /// object_store's `delete_stream` batches; local disk deletes one file
    /// after another there too.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        let paths: Vec<Path> = keys.iter().map(|k| path(k)).collect::<Result<_, _>>()?;
        let locations = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut results = self.store.delete_stream(locations);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(())
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

// The tests crate's s3s-fs fixture, for `tests::s3_conformance` (which
// uses part of it).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../../tests/src/s3.rs"]
mod s3;

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

    /// The S3 backend as `kura serve` builds it from a config file, on a
    /// real S3-compatible server (s3s-fs), with and without a key prefix.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_conformance() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = tokio::task::spawn_blocking(|| s3::S3Server::start("kura"))
            .await
            .unwrap()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = server
            .write_kura_config(&dir.path().join("kura.yaml"))
            .unwrap();
        let overrides = crate::config::Overrides::default();
        let config = crate::config::Config::load(Some(&file), &overrides).unwrap();
        let s = crate::server::build_storage(&config).unwrap();
        s3_properties(&s).await;

        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("    prefix: under/here\n");
        std::fs::write(&file, text).unwrap();
        let config = crate::config::Config::load(Some(&file), &overrides).unwrap();
        let s = crate::server::build_storage(&config).unwrap();
        s3_properties(&s).await;

        // Objects too large for one CopyObject are renamed by streaming.
        let mut text = std::fs::read_to_string(&file).unwrap();
        text = text.replace("under/here", "copy/max");
        std::fs::write(&file, text).unwrap();
        let config = crate::config::Config::load(Some(&file), &overrides).unwrap();
        let s = ObjectStorage {
            copy_max: Some(100),
            ..crate::server::build_storage(&config).unwrap()
        };
        kura_core::storage::conformance::rename_moves_and_replaces(&s).await;

        let keys = server.object_keys().unwrap();
        assert!(
            keys.iter()
                .any(|k| k.starts_with("under/here/conformance/put/")),
            "the prefixed run wrote under its prefix: {keys:?}"
        );
    }

    /// Every property but long keys: s3s-fs keeps each object's metadata in
    /// a file named after the whole key, base64-encoded, so keys beyond
    /// about 170 bytes exceed the file system's 255-byte names there (S3
    /// itself takes 1024). The suite's own list, so that a property added
    /// to it runs here too.
    async fn s3_properties(s: &ObjectStorage) {
        assert!(!s.can_append(), "S3 objects cannot grow");
        kura_core::storage::conformance::run_without_long_keys(s).await;
    }
}
