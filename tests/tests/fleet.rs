//! Several `kura serve` processes on one storage (one S3 bucket on s3s-fs,
//! or one directory) behave as one cache: a blob missed by all of them is
//! fetched from the upstream once, the others stream the holder's spool
//! as it lands, and a holder killed mid-fill is taken over. They check a
//! tag once per TTL between them, and evict by the uses of all of them.
//!
//! Needs s3s-fs (see `kura_tests::s3`).
//!
//! Run with `cargo test -p kura-tests --test fleet`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kura_tests::api::Api;
use kura_tests::faulty::{Fault, Faulty};
use kura_tests::s3::{S3Front, S3Server};
use kura_tests::stream::{eventually, stream_hash, Streamed};
use kura_tests::{http_client, Kura, KuraOptions};

const MIB: u64 = 1024 * 1024;

/// Storage shared by the instances of one test.
#[allow(clippy::large_enum_variant)] // one per test
enum Shared {
    /// An s3s-fs bucket, reached through haproxy one request at a time.
    Bucket(S3Server, S3Front),
    Directory(tempfile::TempDir),
}

impl Shared {
    fn bucket() -> Shared {
        let s3 = S3Server::start("fleet").expect("starting s3s-fs");
        let proxy =
            S3Front::one_at_a_time(&format!("127.0.0.1:{}", s3.port)).expect("starting haproxy");
        Shared::Bucket(s3, proxy)
    }

    fn directory() -> Shared {
        Shared::Directory(tempfile::tempdir().unwrap())
    }

    /// Start one more kura on this storage, mirroring `upstream` as
    /// `up.local`; `extra`: more of its `mirror:` section (indented lines).
    fn start(&self, upstream: &str, cfg: &Path, extra: &str) -> Kura {
        self.start_with(upstream, cfg, extra, "")
    }

    /// [`Shared::start`], with `up_extra` added to the upstream's entry.
    fn start_with(&self, upstream: &str, cfg: &Path, extra: &str, up_extra: &str) -> Kura {
        let file = cfg.join(format!("kura-{}.yml", kura_tests::free_port()));
        let storage = match self {
            Shared::Bucket(s3, proxy) => {
                s3.write_kura_config(&file).unwrap();
                std::fs::read_to_string(&file)
                    .unwrap()
                    .replace(&s3.endpoint, &proxy.endpoint)
            }
            Shared::Directory(_) => "storage:\n".into(),
        };
        let yaml = format!(
            "{storage}  shared: true\nmirror:\n  fill_lease_secs: 2\n{extra}  upstreams:\n    \
             - name: up.local\n      url: {upstream}\n{up_extra}"
        );
        std::fs::write(&file, &yaml).unwrap();
        let data_dir = match self {
            Shared::Directory(d) => Some(d.path().join("data")),
            Shared::Bucket(..) => None,
        };
        Kura::start_with(KuraOptions {
            config: Some(file),
            data_dir,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("starting kura with\n{yaml}\n{e:#}"))
    }
}

/// GET `url` on a thread, counting bytes into the returned counter.
fn streaming(url: String) -> (Arc<AtomicU64>, std::thread::JoinHandle<Streamed>) {
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let t = std::thread::spawn(move || stream_hash(&http_client(), &url, Some(&p), |_| true));
    (progress, t)
}

fn assert_whole(who: &str, r: &Streamed, size: u64, digest: &str) {
    assert_eq!(r.status, 200, "{who}: {r:?}");
    assert!(r.error.is_none(), "{who}: {r:?}");
    assert_eq!((r.received, r.digest.as_str()), (size, digest), "{who}");
}

/// Two instances miss one blob while the upstream stalls half way: the
/// second streams what the first spooled, both get the whole blob, the
/// upstream sends it once.
fn one_fetch_between_two_instances(shared: Shared) {
    const SIZE: u64 = 48 * MIB;
    let f = Faulty::start().unwrap();
    let data = kura_tests::image::XorShift::new(1201).bytes(SIZE as usize);
    let digest = f.add_blob(data);
    f.set_fault(&digest, Fault::Stall { after: 24 * MIB });
    let cfg = tempfile::tempdir().unwrap();
    let a = shared.start(&f.url, cfg.path(), "");
    let b = shared.start(&f.url, cfg.path(), "");
    let path = format!("/v2/up.local/team/fleet/blobs/{digest}");

    let (pa, ta) = streaming(format!("{}{path}", a.url));
    assert!(
        eventually(60, || pa.load(Ordering::SeqCst) >= 16 * MIB),
        "first instance's client stuck at {} bytes",
        pa.load(Ordering::SeqCst)
    );
    let (pb, tb) = streaming(format!("{}{path}", b.url));
    // Before the upstream goes on, B's client gets what A spooled: B
    // follows A's fill from storage, it does not wait for the commit.
    assert!(
        eventually(60, || pb.load(Ordering::SeqCst) >= 16 * MIB),
        "second instance's client stuck at {} bytes; log:\n{}",
        pb.load(Ordering::SeqCst),
        b.log_text()
    );
    assert_eq!(f.blob_gets("team/fleet", &digest), 1);
    f.clear_fault(&digest);
    let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
    assert_whole("first", &ra, SIZE, &digest);
    assert_whole("second", &rb, SIZE, &digest);
    assert_eq!(rb.cache, "miss");
    assert_eq!(f.blob_gets("team/fleet", &digest), 1, "fetched twice");
    assert_eq!(b.metric("kura_fills_followed_elsewhere_total"), 1);
    let r = stream_hash(&http_client(), &format!("{}{path}", b.url), None, |_| true);
    assert_whole("warm", &r, SIZE, &digest);
    assert_eq!(r.cache, "hit");
}

#[test]
fn instances_on_one_s3_bucket_fetch_a_blob_once() {
    one_fetch_between_two_instances(Shared::bucket());
}

#[test]
fn instances_on_one_directory_fetch_a_blob_once() {
    one_fetch_between_two_instances(Shared::directory());
}

/// The instance filling a blob is killed mid-fill: the other, whose client
/// was following, takes the fill over once the lease (2 s here) has not
/// been renewed. Its client, holding unverified bytes of the dead fill, gets
/// a clean error; the retry gets the whole, verified blob.
#[test]
fn a_killed_instances_fill_is_taken_over() {
    const SIZE: u64 = 40 * MIB;
    let shared = Shared::bucket();
    let f = Faulty::start().unwrap();
    let data = kura_tests::image::XorShift::new(1202).bytes(SIZE as usize);
    let digest = f.add_blob(data);
    f.set_fault(&digest, Fault::Stall { after: 20 * MIB });
    let cfg = tempfile::tempdir().unwrap();
    let mut a = shared.start(&f.url, cfg.path(), "");
    let b = shared.start(&f.url, cfg.path(), "");
    let path = format!("/v2/up.local/team/crash/blobs/{digest}");

    let (pa, ta) = streaming(format!("{}{path}", a.url));
    assert!(eventually(60, || pa.load(Ordering::SeqCst) >= 16 * MIB));
    let (pb, tb) = streaming(format!("{}{path}", b.url));
    assert!(eventually(60, || pb.load(Ordering::SeqCst) >= 16 * MIB));
    a.kill();
    let killed = Instant::now();
    assert!(ta.join().unwrap().error.is_some());
    // The upstream heals; B's takeover fetches the blob again. B's client
    // already has bytes of A's that were never verified: it is cut off,
    // and its retry gets the whole blob.
    f.clear_fault(&digest);
    let rb = tb.join().unwrap();
    assert!(
        rb.error.is_some() && rb.received < SIZE,
        "a client with the dead holder's bytes went on: {rb:?}"
    );
    let cut = killed.elapsed();
    let retry = stream_hash(&http_client(), &format!("{}{path}", b.url), None, |_| true);
    assert_whole(
        "retry on the instance that took over",
        &retry,
        SIZE,
        &digest,
    );
    eprintln!(
        "client cut off {cut:?} after the kill, retry complete {:?} after it",
        killed.elapsed()
    );
    assert_eq!(f.blob_gets("team/crash", &digest), 2);
    assert_eq!(b.metric("kura_fills_taken_over_total"), 1);
    let Shared::Bucket(s3, _) = &shared else {
        unreachable!()
    };
    // Only verified bytes became the blob.
    let hex = digest.strip_prefix("sha256:").unwrap();
    let blob = s3
        .bucket_dir()
        .join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
    let stored = std::fs::read(&blob).unwrap();
    assert_eq!(kura_tests::sha256(&stored), digest);
}

fn api(k: &Kura) -> Api {
    Api::for_kura(k)
}

/// A chunked push whose requests go to three instances in turn completes:
/// an upload session lives in storage, not in the instance that opened it.
#[test]
fn a_chunked_push_spread_over_three_instances_completes() {
    let shared = Shared::bucket();
    let cfg = tempfile::tempdir().unwrap();
    let f = Faulty::start().unwrap();
    let ks: Vec<Kura> = (0..3)
        .map(|_| shared.start(&f.url, cfg.path(), ""))
        .collect();
    let (a, b, c) = (api(&ks[0]), api(&ks[1]), api(&ks[2]));
    let data = kura_tests::image::XorShift::new(1203).bytes(9 * MIB as usize + 7);
    let digest = kura_tests::sha256(&data);
    let (one, rest) = data.split_at(4 * MIB as usize);
    let (two, three) = rest.split_at(4 * MIB as usize);

    let loc = a.start_upload("team/spread");
    let r = b
        .patch(&loc, one, Some((0, one.len() as u64 - 1)))
        .expect(202);
    let loc = r.hdr("location").to_owned();
    let end = (one.len() + two.len()) as u64;
    let r = c
        .patch(&loc, two, Some((one.len() as u64, end - 1)))
        .expect(202);
    assert_eq!(r.hdr("range"), format!("0-{}", end - 1));
    let loc = r.hdr("location").to_owned();
    let r = a.get(&loc).expect(204);
    assert_eq!(
        r.hdr("range"),
        format!("0-{}", end - 1),
        "status on another instance"
    );
    let last = end + three.len() as u64 - 1;
    b.put_upload(&loc, &digest, three, Some((end, last)))
        .expect(201);
    let r = c
        .get(&format!("/v2/team/spread/blobs/{digest}"))
        .expect(200);
    assert!(r.body == data, "the blob read back differs");
}

/// Three instances on one bucket, 64 clients spread over them asking for
/// one cold 200 MiB blob at once: the upstream sends it once, every client
/// gets every byte (12.5 GiB served and hashed, about 40 s here).
/// (`cargo xtask bench --only fleet` measures it.)
#[test]
fn sixty_four_cold_gets_over_three_instances_make_one_upstream_fetch() {
    let size_mib: u64 = 200;
    let size = size_mib * MIB;
    let shared = Shared::bucket();
    let f = Faulty::start().unwrap();
    let data = kura_tests::image::XorShift::new(1204).bytes(size as usize);
    let digest = f.add_blob(data);
    let cfg = tempfile::tempdir().unwrap();
    let ks: Vec<Kura> = (0..3)
        .map(|_| shared.start(&f.url, cfg.path(), ""))
        .collect();
    let barrier = Arc::new(std::sync::Barrier::new(64));
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let url = format!("{}/v2/up.local/team/fan/blobs/{digest}", ks[i % 3].url);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let client = http_client();
                barrier.wait();
                stream_hash(&client, &url, None, |_| true)
            })
        })
        .collect();
    let started = Instant::now();
    for (i, c) in clients.into_iter().enumerate() {
        assert_whole(&format!("client {i}"), &c.join().unwrap(), size, &digest);
    }
    eprintln!(
        "64 clients over 3 instances, {size_mib} MiB: {:?}",
        started.elapsed()
    );
    assert_eq!(f.blob_gets("team/fan", &digest), 1, "upstream GETs");
    let followed: u64 = ks
        .iter()
        .map(|k| k.metric("kura_fills_followed_elsewhere_total"))
        .sum();
    assert_eq!(followed, 2, "the two instances without the lease follow it");
}

/// A tag pulled again and again from three instances: within its TTL the
/// upstream is not asked at all (the instances read each other's check
/// from storage); once it has expired, nine clients at once over the three
/// make one HEAD between them.
#[test]
fn tag_pulls_over_three_instances_check_the_upstream_once_per_ttl() {
    let shared = Shared::bucket();
    let f = Faulty::start().unwrap();
    let img = f.add_image("team/tags", "v1", &[64 * 1024], 1205);
    let cfg = tempfile::tempdir().unwrap();
    let ks: Vec<Kura> = (0..3)
        .map(|_| shared.start_with(&f.url, cfg.path(), "", "      tag_ttl_secs: 3\n"))
        .collect();
    let tag_path = "/v2/team/tags/manifests/v1";
    let pull = |k: &Kura| {
        let r = http_client()
            .get(format!("{}/v2/up.local/team/tags/manifests/v1", k.url))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let digest = r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(digest, img.manifest.digest);
    };
    let asked = || f.count("GET", tag_path) + f.count("HEAD", tag_path);
    pull(&ks[0]);
    let first = asked();
    assert!(first >= 1);
    let started = Instant::now();
    for round in 0..3 {
        for k in &ks {
            pull(k);
        }
        assert_eq!(
            asked(),
            first,
            "round {round}: the upstream was asked within the TTL"
        );
    }
    assert!(
        started.elapsed().as_secs() < 3,
        "the rounds outlasted the TTL"
    );
    std::thread::sleep(std::time::Duration::from_millis(3500));
    // Expired everywhere: nine clients at once, three on each instance.
    let barrier = std::sync::Barrier::new(9);
    std::thread::scope(|scope| {
        for i in 0..9 {
            let (k, barrier) = (&ks[i % 3], &barrier);
            scope.spawn(move || {
                barrier.wait();
                pull(k);
            });
        }
    });
    for k in &ks {
        pull(k);
    }
    assert_eq!(
        (f.count("HEAD", tag_path), f.count("GET", tag_path)),
        (1, first),
        "after the TTL: one HEAD between the three, and no GET"
    );
}

/// Eviction by the uses of every instance: the instance that evicts (the
/// only one whose passes run during the test) did not serve the blob the
/// last pull used, another one did, and that blob stays; the least
/// recently used goes, and the cache ends under `max_size`.
#[test]
fn eviction_keeps_the_blob_another_instance_served_last() {
    const SIZE: usize = 5 * MIB as usize;
    let shared = Shared::bucket();
    let f = Faulty::start().unwrap();
    let blobs: Vec<String> = (0..4)
        .map(|n| f.add_blob(kura_tests::image::XorShift::new(1300 + n).bytes(SIZE)))
        .collect();
    let cfg = tempfile::tempdir().unwrap();
    // All three bound the cache (so all record their fills and uses); only
    // the first passes during the test (the others once, at startup, on an
    // empty cache, then not for an hour).
    let evicting = "  max_size: 16MiB\n  evict_interval_secs: 1\n  eviction_grace_secs: 0\n";
    let idle = "  max_size: 16MiB\n  evict_interval_secs: 3600\n  eviction_grace_secs: 0\n";
    let ks = [
        shared.start(&f.url, cfg.path(), evicting),
        shared.start(&f.url, cfg.path(), idle),
        shared.start(&f.url, cfg.path(), idle),
    ];
    let get = |k: &Kura, d: &str| {
        let url = format!("{}/v2/up.local/team/lru/blobs/{d}", k.url);
        let r = stream_hash(&http_client(), &url, None, |_| true);
        assert_whole(d, &r, SIZE as u64, d);
    };
    let gets = |d: &str| f.blob_gets("team/lru", d);
    // 15 MiB, under the bound: b0 (filled by the evicting instance), b1,
    // b2; then b0 served by another instance, and b3 over the bound.
    for (k, d) in [(0, 0), (1, 1), (2, 2), (1, 0), (2, 3)] {
        std::thread::sleep(std::time::Duration::from_millis(20));
        get(&ks[k], &blobs[d]);
    }
    assert_eq!(blobs.iter().map(|d| gets(d)).collect::<Vec<_>>(), [1; 4]);
    assert!(
        eventually(30, || ks[0].metric("kura_cache_evictions_total") >= 1),
        "no eviction pass evicted"
    );
    // Give a pass that evicts more the chance to, before looking.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        ks[0].metric("kura_cache_evictions_total"),
        1,
        "20 MiB over 16: one goes"
    );
    for (d, kept) in [(0, true), (1, false), (2, true), (3, true)] {
        let before = gets(&blobs[d]);
        get(&ks[2], &blobs[d]);
        assert_eq!(gets(&blobs[d]) == before, kept, "b{d}: kept {kept}");
    }
}

/// A store without conditional writes cannot coordinate instances: with
/// `storage.shared` kura refuses to start and says why; without it, it
/// starts and fills alone. Both kinds: one that takes every create-only put
/// (ignores `If-None-Match`), one that answers it 501.
#[test]
fn a_store_without_conditional_writes_is_refused_for_shared_mode() {
    let s3 = S3Server::start("unconditional").expect("starting s3s-fs");
    let server = format!("127.0.0.1:{}", s3.port);
    let cfg = tempfile::tempdir().unwrap();
    let config = |endpoint: &str, shared: bool| {
        let file = cfg
            .path()
            .join(format!("kura-{}.yml", kura_tests::free_port()));
        s3.write_kura_config(&file).unwrap();
        let mut yaml = std::fs::read_to_string(&file)
            .unwrap()
            .replace(&s3.endpoint, endpoint);
        if shared {
            yaml.push_str("  shared: true\n");
        }
        std::fs::write(&file, yaml).unwrap();
        KuraOptions {
            config: Some(file),
            ..Default::default()
        }
    };
    let ignoring = S3Front::ignoring_conditions(&server).expect("starting haproxy");
    let refusing = S3Front::refusing_conditions(&server).expect("starting haproxy");
    for (front, refusal, alone) in [
        (
            &ignoring,
            "storage.shared is set, but this storage does not refuse a create-only write",
            "blob fills are not shared with other instances",
        ),
        (
            &refusing,
            "storage.shared: probing conditional writes failed",
            "probing conditional writes failed",
        ),
    ] {
        let refused = match Kura::start_with(config(&front.endpoint, true)) {
            Ok(k) => panic!("started in shared mode; log:\n{}", k.log_text()),
            Err(e) => format!("{e:#}"),
        };
        assert!(refused.contains(refusal), "{refused}");
        let k = Kura::start_with(config(&front.endpoint, false)).expect("starts unshared");
        assert!(
            eventually(10, || k.log_text().contains(alone)),
            "{}",
            k.log_text()
        );
    }
    // The same bucket without the proxy qualifies.
    let k = Kura::start_with(config(&s3.endpoint, true));
    assert!(k.is_ok(), "{:#}", k.err().unwrap());
}
