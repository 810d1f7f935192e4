//! The storage conformance suite: the [`Storage`] contract as executable
//! checks, one public function per property.
//!
//! [`run`] checks every property that applies to a backend (append is
//! checked according to [`Storage::can_append`]); a backend that
//! legitimately lacks something calls the properties that apply to it
//! instead. Callers: the in-memory backend here, local disk and S3 (on
//! s3s-fs) in the native shell, R2 in the worker, JS storage in the wasm-js
//! package.
//!
//! A broken property panics with a message naming it:
//! `storage conformance: put_stream is atomic — <what was seen>`. [`run`]
//! checks every property before panicking, listing each broken one.
//! Checks return errors instead of unwrapping, so a backend error is
//! reported under the property that hit it, also on wasm, where a panic
//! cannot be caught and renamed.

use std::fmt;
use std::io;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{PutMode, Storage, StorageError};
use crate::io::body::ByteStream;
use crate::model::digest::{self, Digest};

/// Big enough to cross multipart part boundaries (S3's minimum part is
/// 5 MiB) in backends that switch to multipart uploads.
const LARGE: usize = 12 * 1024 * 1024 + 12_345;

/// More keys than one page of an S3 or R2 listing (1000).
const PAGED_KEYS: usize = 1234;

/// One broken property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The property, as the suite names it.
    pub property: &'static str,
    /// What the backend did instead.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "storage conformance: {} — {}",
            self.property, self.detail
        )
    }
}

const MISSING_KEYS: &str = "missing keys read as absent";
const PUT_THEN_READ: &str = "put then read returns the bytes";
const LONG_KEYS: &str = "keys of a few hundred bytes work";
const CREATE_MODE: &str = "put Create refuses an existing key";
const RANGED_GET: &str = "ranged get returns the range";
const PUT_STREAM: &str = "put_stream writes any length";
const PUT_STREAM_ATOMIC: &str = "put_stream is atomic";
const RENAME: &str = "rename moves and replaces";
const DELETE: &str = "delete removes and tolerates missing keys";
const DELETE_MANY: &str = "delete_many removes exactly the keys given";
const CHURN: &str = "writes land while deletes empty their prefix";
const LIST: &str = "list is recursive and sorted";
const LIST_PAGES: &str = "list returns more than a page of keys";
const APPEND: &str = "append grows an object in place";
const APPEND_REFUSED: &str = "append is refused where unsupported";

/// Every property that applies to `s`; panics listing each broken one.
pub async fn run<S: Storage>(s: &S) {
    report(check_all(s).await)
}

fn report(failures: Vec<Failure>) {
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(Failure::to_string).collect();
        panic!(
            "{} of the storage conformance properties failed:\n{}",
            failures.len(),
            list.join("\n")
        );
    }
}

/// Every property that applies to `s`, checked in turn; the broken ones.
/// Each property uses its own key prefix, so one failing does not break
/// the next.
pub async fn check_all<S: Storage>(s: &S) -> Vec<Failure> {
    check(s, true).await
}

/// [`run`] without the long-keys property, for a store whose keys are
/// shorter than S3's 1,024 bytes (s3s-fs names a file after each whole
/// key, so the file system's 255-byte names limit it).
pub async fn run_without_long_keys<S: Storage>(s: &S) {
    report(check(s, false).await)
}

async fn check<S: Storage>(s: &S, long_keys: bool) -> Vec<Failure> {
    let mut outcomes = vec![
        (MISSING_KEYS, missing_keys_check(s).await),
        (PUT_THEN_READ, put_then_read_check(s).await),
        (CREATE_MODE, create_mode_check(s).await),
        (RANGED_GET, ranged_get_check(s).await),
        (PUT_STREAM, put_stream_check(s).await),
        (PUT_STREAM_ATOMIC, put_stream_atomic_check(s).await),
        (RENAME, rename_check(s).await),
        (DELETE, delete_check(s).await),
        (DELETE_MANY, delete_many_check(s).await),
        (CHURN, churn_check(s).await),
        (LIST, list_check(s).await),
        (LIST_PAGES, list_pages_check(s).await),
    ];
    if long_keys {
        outcomes.push((LONG_KEYS, long_keys_check(s).await));
    }
    outcomes.push(if s.can_append() {
        (APPEND, append_check(s).await)
    } else {
        (APPEND_REFUSED, append_refused_check(s).await)
    });
    outcomes
        .into_iter()
        .filter_map(|(property, outcome)| outcome.err().map(|detail| Failure { property, detail }))
        .collect()
}

fn holds(property: &'static str, outcome: Check) {
    if let Err(detail) = outcome {
        panic!("{}", Failure { property, detail });
    }
}

/// `head`, `get`, `read` of a missing key return `None`; `list` of an
/// empty prefix is empty.
pub async fn missing_keys_read_as_absent<S: Storage>(s: &S) {
    holds(MISSING_KEYS, missing_keys_check(s).await)
}

/// `put` stores bytes (also none) that `head`, `read` and `get` return
/// with their size.
pub async fn put_then_read<S: Storage>(s: &S) {
    holds(PUT_THEN_READ, put_then_read_check(s).await)
}

/// A key of 346 bytes, with a 200-byte segment, stores, reads and lists.
pub async fn long_keys<S: Storage>(s: &S) {
    holds(LONG_KEYS, long_keys_check(s).await)
}

/// `PutMode::Create` fails with `AlreadyExists` over an existing object and
/// leaves it untouched; `Overwrite` replaces it.
pub async fn put_create_refuses_existing<S: Storage>(s: &S) {
    holds(CREATE_MODE, create_mode_check(s).await)
}

/// A ranged `get` returns exactly the range, with the object's full size.
pub async fn ranged_get<S: Storage>(s: &S) {
    holds(RANGED_GET, ranged_get_check(s).await)
}

/// `put_stream` writes streams of any length (empty, small, larger than a
/// multipart part), reports the length, and replaces an existing object.
pub async fn put_stream_any_length<S: Storage>(s: &S) {
    holds(PUT_STREAM, put_stream_check(s).await)
}

/// A `put_stream` whose input fails returns `StorageError::Input` with that
/// error and leaves nothing behind: no new object, the old one unchanged.
pub async fn put_stream_is_atomic<S: Storage>(s: &S) {
    holds(PUT_STREAM_ATOMIC, put_stream_atomic_check(s).await)
}

/// `rename` moves an object, replaces the destination, and fails with
/// `NotFound` for a missing source without touching the destination.
pub async fn rename_moves_and_replaces<S: Storage>(s: &S) {
    holds(RENAME, rename_check(s).await)
}

/// `delete` removes an object, and succeeds for a missing key.
pub async fn delete_is_idempotent<S: Storage>(s: &S) {
    holds(DELETE, delete_check(s).await)
}

/// `delete_many` removes the objects named (more than 1,000 of them, some
/// missing) and nothing else.
pub async fn delete_many_removes_exactly_the_keys<S: Storage>(s: &S) {
    holds(DELETE_MANY, delete_many_check(s).await)
}

/// Puts and renames into a prefix land while deletes keep emptying it (on
/// local disk, a delete removes the directories it empties).
pub async fn writes_land_while_deletes_empty_their_prefix<S: Storage>(s: &S) {
    holds(CHURN, churn_check(s).await)
}

/// `list` and `list_meta` return every key under a prefix, at any depth,
/// sorted, and nothing else; `list_meta` with sizes.
pub async fn list_is_recursive_and_sorted<S: Storage>(s: &S) {
    holds(LIST, list_check(s).await)
}

/// `list` and `list_meta` return all of 1234 keys, past the 1000 of one
/// S3 or R2 listing page.
pub async fn list_returns_every_page<S: Storage>(s: &S) {
    holds(LIST_PAGES, list_pages_check(s).await)
}

/// For backends that can append: appends grow an object that stays
/// readable while it grows, refuse a wrong offset without changing it, and
/// rename into place whole.
pub async fn append_grows_in_place<S: Storage>(s: &S) {
    holds(APPEND, append_check(s).await)
}

/// For backends that cannot append: `append` says `Unsupported` and
/// writes nothing.
pub async fn append_refused_where_unsupported<S: Storage>(s: &S) {
    holds(APPEND_REFUSED, append_refused_check(s).await)
}

// ----- checks -----------------------------------------------------------------

/// `Err` holds what was seen, for [`Failure::detail`].
type Check = Result<(), String>;

/// Fail the check with a formatted detail unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($detail:tt)+) => {
        if !$cond {
            return Err(format!($($detail)+));
        }
    };
}

/// A storage result as a check step: the error becomes the detail, with
/// what was being done.
trait Step<T> {
    fn step(self, what: &str) -> Result<T, String>;
}

impl<T> Step<T> for Result<T, StorageError> {
    fn step(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

fn present<T>(o: Option<T>, what: &str) -> Result<T, String> {
    o.ok_or_else(|| format!("{what}: no such object"))
}

/// Compare bytes without printing megabytes: lengths, then the first
/// differing offset.
fn same_bytes(got: &[u8], want: &[u8], what: &str) -> Check {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} bytes, expected {}",
            got.len(),
            want.len()
        ));
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        return Err(format!("{what}: bytes differ from offset {i}"));
    }
    Ok(())
}

/// The whole object through `get`, checking that the size `get` reports
/// is the size of the body.
async fn fetch<S: Storage>(s: &S, key: &str) -> Result<Option<Bytes>, String> {
    let Some((meta, body)) = s.get(key, None).await.step(&format!("get {key}"))? else {
        return Ok(None);
    };
    let data = collect(S::body_stream(body))
        .await
        .map_err(|e| format!("reading the body of {key}: {e}"))?;
    ensure!(
        meta.size == data.len() as u64,
        "get {key}: reports {} bytes, body has {}",
        meta.size,
        data.len()
    );
    Ok(Some(data))
}

async fn fetch_range<S: Storage>(s: &S, key: &str, r: Range<u64>) -> Result<Bytes, String> {
    let what = format!("get {key} range {r:?}");
    let (_, body) = present(s.get(key, Some(r)).await.step(&what)?, &what)?;
    collect(S::body_stream(body))
        .await
        .map_err(|e| format!("{what}: reading the body: {e}"))
}

async fn read<S: Storage>(s: &S, key: &str) -> Result<Bytes, String> {
    let what = format!("read {key}");
    present(s.read(key).await.step(&what)?, &what)
}

async fn size<S: Storage>(s: &S, key: &str) -> Result<Option<u64>, String> {
    Ok(s.head(key)
        .await
        .step(&format!("head {key}"))?
        .map(|m| m.size))
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

async fn missing_keys_check<S: Storage>(s: &S) -> Check {
    let k = "conformance/missing/object";
    ensure!(
        s.head(k).await.step("head")?.is_none(),
        "head of a missing key found an object"
    );
    ensure!(
        s.get(k, None).await.step("get")?.is_none(),
        "get of a missing key found an object"
    );
    ensure!(
        s.read(k).await.step("read")?.is_none(),
        "read of a missing key found an object"
    );
    let listed = s.list("conformance/missing/").await.step("list")?;
    ensure!(listed.is_empty(), "list of an empty prefix: {listed:?}");
    Ok(())
}

async fn put_then_read_check<S: Storage>(s: &S) -> Check {
    let k = "conformance/put/a.b-c_d/object";
    let data = pattern(1000, 1);
    s.put(k, data.clone(), PutMode::Overwrite)
        .await
        .step("put")?;
    ensure!(
        size(s, k).await? == Some(1000),
        "head after put of 1000 bytes: {:?}",
        size(s, k).await?
    );
    same_bytes(&read(s, k).await?, &data, "read after put")?;
    same_bytes(
        &present(fetch(s, k).await?, "get after put")?,
        &data,
        "get after put",
    )?;

    let empty = "conformance/put/empty";
    s.put(empty, Bytes::new(), PutMode::Overwrite)
        .await
        .step("put of no bytes")?;
    ensure!(
        size(s, empty).await? == Some(0),
        "head of an empty object: {:?}",
        size(s, empty).await?
    );
    same_bytes(&read(s, empty).await?, b"", "read of an empty object")?;
    same_bytes(
        &present(fetch(s, empty).await?, "get of an empty object")?,
        b"",
        "get of an empty object",
    )
}

async fn long_keys_check<S: Storage>(s: &S) -> Check {
    // A long repository name and tag make keys of a few hundred bytes.
    let long = format!("conformance/long/{}/{}", "x".repeat(200), "y".repeat(128));
    let data = pattern(1000, 7);
    s.put(&long, data.clone(), PutMode::Overwrite)
        .await
        .step("put under a 346-byte key")?;
    same_bytes(&read(s, &long).await?, &data, "read under a 346-byte key")?;
    let listed = s.list("conformance/long/").await.step("list")?;
    ensure!(
        listed == [long.as_str()],
        "list of the long key's prefix: {listed:?}"
    );
    Ok(())
}

async fn list_pages_check<S: Storage>(s: &S) -> Check {
    // Object stores list in pages of 1000 keys; a listing must follow
    // them to the end. Written in batches to keep remote backends quick.
    let keys: Vec<String> = (0..PAGED_KEYS)
        .map(|i| format!("conformance/pages/{i:04}"))
        .collect();
    for batch in keys.chunks(50) {
        futures::future::try_join_all(
            batch
                .iter()
                .map(|k| s.put(k, Bytes::new(), PutMode::Overwrite)),
        )
        .await
        .step("put")?;
    }
    let listed = s.list("conformance/pages/").await.step("list")?;
    ensure!(
        listed == keys,
        "list of {PAGED_KEYS} keys returned {} keys (first {:?}, last {:?})",
        listed.len(),
        listed.first(),
        listed.last()
    );
    let metas = s.list_meta("conformance/pages/").await.step("list_meta")?;
    ensure!(
        metas.len() == PAGED_KEYS,
        "list_meta of {PAGED_KEYS} keys returned {}",
        metas.len()
    );
    Ok(())
}

async fn create_mode_check<S: Storage>(s: &S) -> Check {
    let k = "conformance/modes/object";
    s.put(k, Bytes::from_static(b"first"), PutMode::Create)
        .await
        .step("put Create of a new key")?;
    match s
        .put(k, Bytes::from_static(b"second"), PutMode::Create)
        .await
    {
        Err(StorageError::AlreadyExists) => {}
        other => return Err(format!("put Create over an existing object: {other:?}")),
    }
    same_bytes(
        &read(s, k).await?,
        b"first",
        "object after a refused put Create",
    )?;
    s.put(k, Bytes::from_static(b"third"), PutMode::Overwrite)
        .await
        .step("put Overwrite")?;
    same_bytes(&read(s, k).await?, b"third", "object after put Overwrite")
}

async fn ranged_get_check<S: Storage>(s: &S) -> Check {
    let k = "conformance/ranges/object";
    let data = pattern(100_000, 2);
    s.put(k, data.clone(), PutMode::Overwrite)
        .await
        .step("put")?;
    for r in [
        0..1,
        0..100_000,
        99_999..100_000,
        1234..56_789,
        50_000..50_001,
    ] {
        let got = fetch_range(s, k, r.clone()).await?;
        same_bytes(
            &got,
            &data[r.start as usize..r.end as usize],
            &format!("range {r:?}"),
        )?;
    }
    let what = "get of range 10..20";
    let (meta, _) = present(s.get(k, Some(10..20)).await.step(what)?, what)?;
    ensure!(
        meta.size == 100_000,
        "{what}: reports size {}, not the object's 100000",
        meta.size
    );
    Ok(())
}

async fn put_stream_check<S: Storage>(s: &S) -> Check {
    let k = "conformance/stream/large";
    let data = pattern(LARGE, 3);
    let n = s
        .put_stream(k, chunked(&data, 64 * 1024 + 7))
        .await
        .step("put_stream of a large object")?;
    ensure!(
        n == LARGE as u64,
        "put_stream of {LARGE} bytes reported {n}"
    );
    ensure!(
        size(s, k).await? == Some(LARGE as u64),
        "head after put_stream of {LARGE} bytes: {:?}",
        size(s, k).await?
    );
    same_bytes(
        &present(fetch(s, k).await?, "get of a large streamed object")?,
        &data,
        "large streamed object",
    )?;

    // A verified stream passes straight through when the digest matches.
    let small = pattern(5000, 4);
    let d = Digest::sha256(&small);
    let k2 = "conformance/stream/verified";
    s.put_stream(k2, digest::verify(chunked(&small, 1000), d, Some(5000)))
        .await
        .step("put_stream of verified bytes")?;
    same_bytes(&read(s, k2).await?, &small, "verified streamed object")?;

    let k3 = "conformance/stream/empty";
    let n = s
        .put_stream(k3, crate::io::body::empty())
        .await
        .step("put_stream of an empty stream")?;
    ensure!(n == 0, "put_stream of an empty stream reported {n} bytes");
    ensure!(
        size(s, k3).await? == Some(0),
        "head of an empty streamed object: {:?}",
        size(s, k3).await?
    );

    s.put_stream(k3, chunked(&small, 4096))
        .await
        .step("put_stream over an existing object")?;
    same_bytes(&read(s, k3).await?, &small, "object replaced by put_stream")
}

async fn put_stream_atomic_check<S: Storage>(s: &S) -> Check {
    // Input that dies half way (a client disconnect), past the first
    // multipart part.
    let k = "conformance/failed/new";
    let data = pattern(LARGE, 5);
    let broken: ByteStream = Box::pin(chunked(&data, 1 << 20).take(10).chain(
        futures::stream::once(async { Err(io::Error::other("client went away")) }),
    ));
    match s.put_stream(k, broken).await {
        Err(StorageError::Input(e)) if e.to_string() == "client went away" => {}
        other => {
            return Err(format!(
                "put_stream of a stream failing after 10 MiB: {other:?}"
            ))
        }
    }
    ensure!(
        s.head(k).await.step("head")?.is_none(),
        "object visible after a put_stream whose input failed after 10 MiB"
    );
    // The same, within what a backend may buffer for a single write.
    let broken: ByteStream = Box::pin(chunked(&data, 1 << 10).take(3).chain(
        futures::stream::once(async { Err(io::Error::other("client went away")) }),
    ));
    match s.put_stream(k, broken).await {
        Err(StorageError::Input(e)) if e.to_string() == "client went away" => {}
        other => {
            return Err(format!(
                "put_stream of a stream failing after 3 KiB: {other:?}"
            ))
        }
    }
    ensure!(
        s.head(k).await.step("head")?.is_none(),
        "object visible after a put_stream whose input failed after 3 KiB"
    );
    let listed = s.list("conformance/failed/").await.step("list")?;
    ensure!(
        listed.is_empty(),
        "failed put_streams left listed keys: {listed:?}"
    );

    // Bytes that do not match their digest, over an existing object: the
    // old object must survive untouched.
    let k2 = "conformance/failed/existing";
    s.put(k2, Bytes::from_static(b"old"), PutMode::Overwrite)
        .await
        .step("put")?;
    let wrong = Digest::sha256(b"something else");
    match s
        .put_stream(k2, digest::verify(chunked(&data, 1 << 20), wrong, None))
        .await
    {
        Err(StorageError::Input(e)) if digest::is_verification_error(&e) => {}
        other => {
            return Err(format!(
                "put_stream of bytes failing verification: {other:?}"
            ))
        }
    }
    same_bytes(
        &read(s, k2).await?,
        b"old",
        "object after a failed put_stream over it",
    )
}

async fn rename_check<S: Storage>(s: &S) -> Check {
    let (a, b) = ("conformance/rename/a", "conformance/rename/sub/b");
    let data = pattern(3000, 6);
    s.put(a, data.clone(), PutMode::Overwrite)
        .await
        .step("put")?;
    s.rename(a, b).await.step("rename to a new key")?;
    ensure!(
        s.head(a).await.step("head")?.is_none(),
        "source still there after rename"
    );
    same_bytes(&read(s, b).await?, &data, "renamed object")?;

    s.put(a, Bytes::from_static(b"newer"), PutMode::Overwrite)
        .await
        .step("put")?;
    s.rename(a, b).await.step("rename over an existing key")?;
    same_bytes(
        &read(s, b).await?,
        b"newer",
        "object renamed over an existing one",
    )?;

    match s.rename("conformance/rename/none", b).await {
        Err(StorageError::NotFound) => {}
        other => return Err(format!("rename of a missing key: {other:?}")),
    }
    same_bytes(
        &read(s, b).await?,
        b"newer",
        "destination after a failed rename",
    )
}

async fn delete_check<S: Storage>(s: &S) -> Check {
    let k = "conformance/delete/object";
    s.put(k, Bytes::from_static(b"x"), PutMode::Overwrite)
        .await
        .step("put")?;
    s.delete(k).await.step("delete")?;
    ensure!(
        s.head(k).await.step("head")?.is_none(),
        "object still there after delete"
    );
    s.delete(k).await.step("delete of a missing key")
}

async fn delete_many_check<S: Storage>(s: &S) -> Check {
    // More than one S3 DeleteObjects request takes (1,000 keys).
    let keys: Vec<String> = (0..1003)
        .map(|i| format!("conformance/delete-many/gone/{i:04}"))
        .collect();
    for k in keys.iter().step_by(97) {
        s.put(k, Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .step("put")?;
    }
    let kept = "conformance/delete-many/kept";
    s.put(kept, Bytes::from_static(b"y"), PutMode::Overwrite)
        .await
        .step("put")?;
    // Most of the keys were never written: missing keys are no error.
    s.delete_many(&keys).await.step("delete_many")?;
    let left = s.list("conformance/delete-many/").await.step("list")?;
    ensure!(
        left == [kept.to_owned()],
        "after delete_many, {left:?} are left (expected only {kept})"
    );
    s.delete_many(&[]).await.step("delete_many of nothing")?;
    s.delete(kept).await.step("delete")
}

async fn churn_check<S: Storage>(s: &S) -> Check {
    // Local disk removes a directory once a delete empties it; a write
    // into it at that moment must still land. kura's small records (a
    // push's in-use record, a lease) come and go like this all the time,
    // and so do blobs under garbage collection.
    let worker = |w: usize| async move {
        for i in 0..100 {
            let (staged, key) = (
                format!("conformance/churn/staging/{w}-{i}"),
                format!("conformance/churn/a/b/{w}-{i}"),
            );
            s.put(&staged, Bytes::from_static(b"x"), PutMode::Overwrite)
                .await
                .step("put")?;
            s.rename(&staged, &key).await.step("rename")?;
            s.delete(&key).await.step("delete")?;
        }
        Ok::<(), String>(())
    };
    for outcome in futures::future::join_all((0..4).map(worker)).await {
        outcome?;
    }
    let left = s.list("conformance/churn/").await.step("list")?;
    ensure!(left.is_empty(), "after the churn, {left:?} are left");
    Ok(())
}

async fn list_check<S: Storage>(s: &S) -> Check {
    // Inserted out of order, with a sibling prefix (`lister`) and a key
    // (`bc`) that sorts between a directory's entries as a plain string.
    let keys = [
        "conformance/list/a",
        "conformance/list/b/c",
        "conformance/list/b/d/e",
        "conformance/list/bc",
        "conformance/lister/x",
    ];
    for k in [keys[3], keys[1], keys[4], keys[0], keys[2]] {
        s.put(k, Bytes::from_static(b"1"), PutMode::Overwrite)
            .await
            .step("put")?;
    }
    let listed = s.list("conformance/list/").await.step("list")?;
    ensure!(
        listed == keys[..4],
        "list conformance/list/: {listed:?}, expected {:?}",
        &keys[..4]
    );
    let listed = s.list("conformance/list/b/").await.step("list")?;
    ensure!(
        listed == keys[1..3],
        "list conformance/list/b/: {listed:?}, expected {:?}",
        &keys[1..3]
    );
    let metas = s.list_meta("conformance/list/").await.step("list_meta")?;
    let listed: Vec<&str> = metas.iter().map(|e| e.key.as_str()).collect();
    ensure!(
        listed == keys[..4],
        "list_meta conformance/list/: {listed:?}, expected {:?}",
        &keys[..4]
    );
    if let Some(e) = metas.iter().find(|e| e.size != 1) {
        return Err(format!(
            "list_meta: {} has size {}, expected 1",
            e.key, e.size
        ));
    }
    let listed = s.list("conformance/list/zzz/").await.step("list")?;
    ensure!(listed.is_empty(), "list of an empty prefix: {listed:?}");
    Ok(())
}

async fn append_refused_check<S: Storage>(s: &S) -> Check {
    let key = "conformance/append/spool";
    let r = s.append(key, 0, vec![Bytes::from_static(b"x")]).await;
    ensure!(
        matches!(r, Err(StorageError::Unsupported(_))),
        "append on a backend whose can_append is false: {r:?}"
    );
    ensure!(
        s.head(key).await.step("head")?.is_none(),
        "a refused append created an object"
    );
    Ok(())
}

async fn append_check<S: Storage>(s: &S) -> Check {
    let key = "conformance/append/spool";
    ensure!(s.can_append(), "the backend's can_append is false");
    s.append(
        key,
        0,
        vec![Bytes::from_static(b"hel"), Bytes::from_static(b"lo ")],
    )
    .await
    .step("append at 0")?;
    same_bytes(
        &present(fetch(s, key).await?, "get after append")?,
        b"hello ",
        "object after append at 0",
    )?;
    s.append(key, 6, vec![Bytes::from_static(b"world")])
        .await
        .step("append at the end")?;
    same_bytes(
        &fetch_range(s, key, 3..9).await?,
        b"lo wor",
        "range 3..9 across two appends",
    )?;
    for wrong in [0, 5, 12] {
        match s.append(key, wrong, vec![Bytes::from_static(b"!")]).await {
            Err(StorageError::AppendOffset { offset, len }) if (offset, len) == (wrong, 11) => {}
            other => return Err(format!("append at {wrong} to 11 bytes: {other:?}")),
        }
    }
    same_bytes(
        &present(fetch(s, key).await?, "get after refused appends")?,
        b"hello world",
        "object after refused appends",
    )?;
    let big = Bytes::from(vec![7u8; 3 * 1024 * 1024 + 5]);
    s.append(key, 11, vec![big.clone()])
        .await
        .step("large append")?;
    let want = 11 + big.len() as u64;
    ensure!(
        size(s, key).await? == Some(want),
        "head after a large append: {:?}, expected {want}",
        size(s, key).await?
    );
    let target = "conformance/append/blob";
    s.rename(key, target)
        .await
        .step("rename of an appended object")?;
    ensure!(
        s.head(key).await.step("head")?.is_none(),
        "appended object still there after rename"
    );
    let whole = present(fetch(s, target).await?, "get of the renamed object")?;
    let mut expected = b"hello world".to_vec();
    expected.extend_from_slice(&big);
    same_bytes(&whole, &expected, "renamed appended object")?;
    s.delete(target).await.step("delete")
}
