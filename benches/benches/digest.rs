//! SHA-256 throughput of blob verification.
//!
//! Every blob kura stores (pushed or mirrored) is hashed on the way in. This
//! compares, over the same 64 MiB split into 256 KiB chunks:
//!
//! - `sha2_raw`: `sha2::Sha256::update` per chunk, the ceiling on this CPU;
//! - `hasher`: `kura_core::digest::Hasher`, the incremental hash uploads use;
//! - `verify_stream`: `kura_core::digest::verify` over a `ByteStream` of the
//!   chunks, drained with `futures::executor::block_on`, which is what a
//!   storage backend sees when it writes a blob.
//!
//! `cargo bench -p kura-benches --bench digest`

use std::io;
use std::sync::LazyLock;

use bytes::Bytes;
use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use futures::executor::block_on;
use futures::StreamExt;
use kura_core::digest::{self, Algorithm, Hasher};
use kura_core::{ByteStream, Digest};
use sha2::{Digest as _, Sha256};

const TOTAL: usize = 64 << 20;
const CHUNK: usize = 256 << 10;
/// One pass is tens of milliseconds; 20 samples keep a run to a few seconds.
/// `--sample-count` on the command line overrides this.
const SAMPLES: u32 = 20;

fn main() {
    divan::main();
}

struct Fixture {
    chunks: Vec<Bytes>,
    digest: Digest,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    // Deterministic pseudo-random bytes (xorshift64); SHA-256 speed does not
    // depend on content, but zero pages could be shared by the allocator.
    let mut data = vec![0u8; TOTAL];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for word in data.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
    let data = Bytes::from(data);
    let chunks = (0..TOTAL)
        .step_by(CHUNK)
        .map(|at| data.slice(at..at + CHUNK))
        .collect();
    let digest = Digest::sha256(&data);
    Fixture { chunks, digest }
});

/// The fixture, built before any timing starts.
fn fixture() -> &'static Fixture {
    &FIXTURE
}

#[divan::bench(sample_count = SAMPLES)]
fn sha2_raw(bencher: Bencher) {
    let f = fixture();
    bencher.counter(BytesCount::new(TOTAL)).bench(|| {
        let mut h = Sha256::new();
        for chunk in black_box(&f.chunks) {
            h.update(chunk);
        }
        h.finalize()
    });
}

#[divan::bench(sample_count = SAMPLES)]
fn hasher(bencher: Bencher) {
    let f = fixture();
    let mut h = Hasher::new(Algorithm::Sha256);
    for chunk in &f.chunks {
        h.update(chunk);
    }
    assert_eq!(h.finish(), f.digest);

    bencher.counter(BytesCount::new(TOTAL)).bench(|| {
        let mut h = Hasher::new(Algorithm::Sha256);
        for chunk in black_box(&f.chunks) {
            h.update(chunk);
        }
        h.finish()
    });
}

/// Drain a stream, returning the byte count; panics on a stream error, so a
/// digest mismatch cannot pass as a fast run.
async fn drain(mut stream: ByteStream) -> usize {
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        n += chunk.expect("bytes verify").len();
    }
    n
}

#[divan::bench(sample_count = SAMPLES)]
fn verify_stream(bencher: Bencher) {
    let f = fixture();
    // Building the source stream (Bytes refcount bumps) is setup, not timed.
    let source = || -> ByteStream {
        let items: Vec<io::Result<Bytes>> = f.chunks.iter().cloned().map(Ok).collect();
        Box::pin(futures::stream::iter(items))
    };
    let verified = digest::verify(source(), f.digest.clone(), Some(TOTAL as u64));
    assert_eq!(block_on(drain(verified)), TOTAL);

    bencher
        .counter(BytesCount::new(TOTAL))
        .with_inputs(source)
        .bench_local_values(|inner| {
            let verified = digest::verify(inner, f.digest.clone(), Some(TOTAL as u64));
            block_on(drain(verified))
        });
}
