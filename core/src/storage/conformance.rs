//! The storage conformance suite. Every backend runs it: the in-memory one
//! here, local disk and S3 in the native shell, R2 in the worker.
//!
//! `run` panics on the first broken promise, naming it.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{PutMode, Storage, StorageError};
use crate::body::ByteStream;
use crate::digest::{self, Digest};

/// Big enough to cross multipart part boundaries (S3's minimum part is
/// 5 MiB) in backends that switch to multipart uploads.
const LARGE: usize = 12 * 1024 * 1024 + 12_345;

pub async fn run<S: Storage>(s: &S) {
    missing_objects(s).await;
    put_and_read(s).await;
    put_modes(s).await;
    ranges(s).await;
    streamed_puts(s).await;
    failed_stream_leaves_nothing(s).await;
    rename(s).await;
    delete(s).await;
    list(s).await;
    append(s).await;
}

async fn fetch<S: Storage>(s: &S, key: &str) -> Option<Bytes> {
    let (meta, body) = s.get(key, None).await.expect("get")?;
    let data = collect(S::body_stream(body)).await.expect("read body");
    assert_eq!(meta.size, data.len() as u64, "{key}: meta size vs body");
    Some(data)
}

async fn fetch_range<S: Storage>(s: &S, key: &str, r: std::ops::Range<u64>) -> Bytes {
    let (_, body) = s
        .get(key, Some(r))
        .await
        .expect("get range")
        .expect("exists");
    collect(S::body_stream(body)).await.expect("read body")
}

async fn collect(mut stream: ByteStream) -> io::Result<Bytes> {
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out.freeze())
}

fn pattern(len: usize, seed: u32) -> Bytes {
    // xorshift: incompressible enough, reproducible, no rand dependency.
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v.into()
}

fn chunked(data: &Bytes, chunk: usize) -> ByteStream {
    let parts: Vec<io::Result<Bytes>> = (0..data.len())
        .step_by(chunk.max(1))
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    Box::pin(futures::stream::iter(parts))
}

async fn missing_objects<S: Storage>(s: &S) {
    let k = "conformance/missing/object";
    assert!(
        s.head(k).await.expect("head").is_none(),
        "head of missing key"
    );
    assert!(
        s.get(k, None).await.expect("get").is_none(),
        "get of missing key"
    );
    assert!(
        s.read(k).await.expect("read").is_none(),
        "read of missing key"
    );
    assert!(s
        .list("conformance/missing/")
        .await
        .expect("list")
        .is_empty());
}

async fn put_and_read<S: Storage>(s: &S) {
    let k = "conformance/put/a.b-c_d/object";
    let data = pattern(1000, 1);
    s.put(k, data.clone(), PutMode::Overwrite)
        .await
        .expect("put");
    assert_eq!(s.head(k).await.unwrap().expect("exists").size, 1000);
    assert_eq!(s.read(k).await.unwrap().expect("exists"), data);
    assert_eq!(fetch(s, k).await.expect("exists"), data);

    let empty = "conformance/put/empty";
    s.put(empty, Bytes::new(), PutMode::Overwrite)
        .await
        .expect("put empty");
    assert_eq!(s.head(empty).await.unwrap().expect("empty exists").size, 0);
    assert_eq!(s.read(empty).await.unwrap().expect("empty exists").len(), 0);

    let long = format!("conformance/put/{}", "x".repeat(200));
    s.put(&long, data.clone(), PutMode::Overwrite)
        .await
        .expect("long key");
    assert_eq!(s.read(&long).await.unwrap().expect("long key exists"), data);
}

async fn put_modes<S: Storage>(s: &S) {
    let k = "conformance/modes/object";
    s.put(k, Bytes::from_static(b"first"), PutMode::Create)
        .await
        .expect("create new");
    match s
        .put(k, Bytes::from_static(b"second"), PutMode::Create)
        .await
    {
        Err(StorageError::AlreadyExists) => {}
        other => panic!("create over existing object: {other:?}"),
    }
    assert_eq!(
        s.read(k).await.unwrap().unwrap(),
        "first",
        "failed create must not write"
    );
    s.put(k, Bytes::from_static(b"third"), PutMode::Overwrite)
        .await
        .expect("overwrite");
    assert_eq!(s.read(k).await.unwrap().unwrap(), "third");
}

async fn ranges<S: Storage>(s: &S) {
    let k = "conformance/ranges/object";
    let data = pattern(100_000, 2);
    s.put(k, data.clone(), PutMode::Overwrite).await.unwrap();
    for r in [
        0..1,
        0..100_000,
        99_999..100_000,
        1234..56_789,
        50_000..50_001,
    ] {
        let got = fetch_range(s, k, r.clone()).await;
        assert_eq!(
            got,
            data.slice(r.start as usize..r.end as usize),
            "range {r:?}"
        );
    }
    let (meta, _) = s.get(k, Some(10..20)).await.unwrap().unwrap();
    assert_eq!(
        meta.size, 100_000,
        "ranged get reports the object's full size"
    );
}

async fn streamed_puts<S: Storage>(s: &S) {
    let k = "conformance/stream/large";
    let data = pattern(LARGE, 3);
    let n = s
        .put_stream(k, chunked(&data, 64 * 1024 + 7))
        .await
        .expect("put_stream");
    assert_eq!(n, LARGE as u64);
    assert_eq!(s.head(k).await.unwrap().unwrap().size, LARGE as u64);
    let back = fetch(s, k).await.unwrap();
    assert!(back == data, "large streamed object differs");

    // A verified stream passes straight through when the digest matches.
    let small = pattern(5000, 4);
    let d = Digest::sha256(&small);
    let k2 = "conformance/stream/verified";
    s.put_stream(k2, digest::verify(chunked(&small, 1000), d, Some(5000)))
        .await
        .expect("verified put");
    assert_eq!(s.read(k2).await.unwrap().unwrap(), small);

    let k3 = "conformance/stream/empty";
    assert_eq!(
        s.put_stream(k3, crate::body::empty())
            .await
            .expect("empty stream"),
        0
    );
    assert_eq!(
        s.head(k3)
            .await
            .unwrap()
            .expect("empty streamed object")
            .size,
        0
    );

    // A stream replaces an existing object.
    s.put_stream(k3, chunked(&small, 4096)).await.unwrap();
    assert_eq!(s.read(k3).await.unwrap().unwrap(), small);
}

async fn failed_stream_leaves_nothing<S: Storage>(s: &S) {
    // Input that dies half way (a client disconnect).
    let k = "conformance/failed/new";
    let data = pattern(LARGE, 5);
    let broken: ByteStream = Box::pin(chunked(&data, 1 << 20).take(7).chain(
        futures::stream::once(async { Err(io::Error::other("client went away")) }),
    ));
    match s.put_stream(k, broken).await {
        Err(StorageError::Input(e)) => assert_eq!(e.to_string(), "client went away"),
        other => panic!("put_stream of a failing stream: {other:?}"),
    }
    assert!(
        s.head(k).await.unwrap().is_none(),
        "partial object visible after failed stream"
    );
    assert!(
        s.list("conformance/failed/").await.unwrap().is_empty(),
        "partial object listed"
    );

    // Bytes that do not match their digest, over an existing object: the
    // old object must survive untouched.
    let k2 = "conformance/failed/existing";
    s.put(k2, Bytes::from_static(b"old"), PutMode::Overwrite)
        .await
        .unwrap();
    let wrong = Digest::sha256(b"something else");
    match s
        .put_stream(k2, digest::verify(chunked(&data, 1 << 20), wrong, None))
        .await
    {
        Err(StorageError::Input(e)) => assert!(digest::is_verification_error(&e), "{e}"),
        other => panic!("put_stream of unverified bytes: {other:?}"),
    }
    assert_eq!(
        s.read(k2).await.unwrap().unwrap(),
        "old",
        "failed put replaced object"
    );
}

async fn rename<S: Storage>(s: &S) {
    let (a, b) = ("conformance/rename/a", "conformance/rename/sub/b");
    let data = pattern(3000, 6);
    s.put(a, data.clone(), PutMode::Overwrite).await.unwrap();
    s.rename(a, b).await.expect("rename to new key");
    assert!(
        s.head(a).await.unwrap().is_none(),
        "source remains after rename"
    );
    assert_eq!(s.read(b).await.unwrap().unwrap(), data);

    s.put(a, Bytes::from_static(b"newer"), PutMode::Overwrite)
        .await
        .unwrap();
    s.rename(a, b).await.expect("rename over existing key");
    assert_eq!(s.read(b).await.unwrap().unwrap(), "newer");

    match s.rename("conformance/rename/none", b).await {
        Err(StorageError::NotFound) => {}
        other => panic!("rename of missing key: {other:?}"),
    }
    assert_eq!(s.read(b).await.unwrap().unwrap(), "newer");
}

async fn delete<S: Storage>(s: &S) {
    let k = "conformance/delete/object";
    s.put(k, Bytes::from_static(b"x"), PutMode::Overwrite)
        .await
        .unwrap();
    s.delete(k).await.expect("delete");
    assert!(s.head(k).await.unwrap().is_none());
    s.delete(k).await.expect("delete of a missing key succeeds");
}

async fn list<S: Storage>(s: &S) {
    let keys = [
        "conformance/list/a",
        "conformance/list/b/c",
        "conformance/list/b/d/e",
        "conformance/list/bc",
        "conformance/lister/x",
    ];
    for k in keys {
        s.put(k, Bytes::from_static(b"1"), PutMode::Overwrite)
            .await
            .unwrap();
    }
    assert_eq!(
        s.list("conformance/list/").await.unwrap(),
        &keys[..4],
        "list returns all keys under the prefix, sorted, at any depth"
    );
    assert_eq!(s.list("conformance/list/b/").await.unwrap(), &keys[1..3]);
    let metas = s.list_meta("conformance/list/").await.unwrap();
    let listed: Vec<&str> = metas.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(listed, &keys[..4], "list_meta lists what list lists");
    assert!(metas.iter().all(|e| e.size == 1), "list_meta sizes");
    assert!(s.list("conformance/list/zzz/").await.unwrap().is_empty());
}

/// Appends grow an object that stays readable while it grows, refuse a
/// wrong offset without changing it, and rename into place whole.
async fn append<S: Storage>(s: &S) {
    let key = "conformance/append/spool";
    if !s.can_append() {
        let r = s.append(key, 0, vec![Bytes::from_static(b"x")]).await;
        assert!(
            matches!(r, Err(StorageError::Unsupported(_))),
            "a backend that cannot append says so"
        );
        assert_eq!(s.head(key).await.expect("head"), None);
        return;
    }
    s.append(
        key,
        0,
        vec![Bytes::from_static(b"hel"), Bytes::from_static(b"lo ")],
    )
    .await
    .expect("append at 0");
    assert_eq!(fetch(s, key).await.as_deref(), Some(&b"hello "[..]));
    s.append(key, 6, vec![Bytes::from_static(b"world")])
        .await
        .expect("append at end");
    assert_eq!(
        fetch_range(s, key, 3..9).await,
        Bytes::from_static(b"lo wor")
    );
    for wrong in [0, 5, 12] {
        match s.append(key, wrong, vec![Bytes::from_static(b"!")]).await {
            Err(StorageError::AppendOffset { offset, len }) => {
                assert_eq!((offset, len), (wrong, 11))
            }
            other => panic!("append at {wrong} of 11 bytes: {other:?}"),
        }
    }
    assert_eq!(fetch(s, key).await.as_deref(), Some(&b"hello world"[..]));
    let big = Bytes::from(vec![7u8; 3 * 1024 * 1024 + 5]);
    s.append(key, 11, vec![big.clone()])
        .await
        .expect("large append");
    assert_eq!(
        s.head(key).await.expect("head").map(|m| m.size),
        Some(11 + big.len() as u64)
    );
    let target = "conformance/append/blob";
    s.rename(key, target).await.expect("rename appended object");
    assert_eq!(s.head(key).await.expect("head"), None);
    let whole = fetch(s, target).await.expect("renamed object");
    assert_eq!(&whole[..11], b"hello world");
    assert_eq!(&whole[11..], &big[..]);
    s.delete(target).await.expect("delete");
}
