//! Test images: an OCI image layout on disk (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) with single-platform images and multi-platform
//! indexes, built from deterministic pseudo-random data; and readers that
//! check what a peer (skopeo, ...) wrote back out.
//!
//! Layers are uncompressed tars (`application/vnd.oci.image.layer.v1.tar`),
//! so each layer's diff_id equals its digest.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};

use crate::sha256;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// xorshift64*: fast, seedable, good enough to defeat compression and
/// deduplication. Not for anything secret.
#[derive(Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero; mix the seed so nearby seeds differ.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&v[..n]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// `len` pseudo-random bytes produced on the fly, so tests can stream
/// hundreds of MB without holding them. Hashes what it hands out. The
/// stream depends only on `(seed, len)`, not on read sizes.
pub struct RandomReader {
    rng: XorShift,
    remaining: u64,
    block: Vec<u8>,
    pos: usize,
    hasher: sha2::Sha256,
    produced: u64,
}

const RANDOM_BLOCK: usize = 256 * 1024;

impl RandomReader {
    pub fn new(seed: u64, len: u64) -> Self {
        use sha2::Digest;
        RandomReader {
            rng: XorShift::new(seed),
            remaining: len,
            block: vec![0u8; RANDOM_BLOCK],
            pos: RANDOM_BLOCK,
            hasher: sha2::Sha256::new(),
            produced: 0,
        }
    }

    /// Bytes handed out so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// `sha256:<hex>` of everything handed out so far.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// The digest of the whole stream, computed by generating it.
    pub fn digest_of(seed: u64, len: u64) -> String {
        let mut r = RandomReader::new(seed, len);
        let mut buf = vec![0u8; 1 << 20];
        while r.read(&mut buf).expect("infallible") > 0 {}
        r.digest()
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.block.len() {
            self.rng.fill(&mut self.block);
            self.pos = 0;
        }
        let n = buf
            .len()
            .min(self.block.len() - self.pos)
            .min(self.remaining.min(usize::MAX as u64) as usize);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        self.produced += n as u64;
        Ok(n)
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: sha256(bytes),
            size: bytes.len() as u64,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }

    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").expect("sha256 digest")
    }
}

/// What image to generate.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub layers: usize,
    /// Bytes of random file content per layer (the tar is a little larger).
    pub layer_size: usize,
    pub seed: u64,
    pub os: String,
    pub architecture: String,
}

impl ImageSpec {
    /// linux/amd64.
    pub fn new(layers: usize, layer_size: usize, seed: u64) -> Self {
        ImageSpec {
            layers,
            layer_size,
            seed,
            os: "linux".into(),
            architecture: "amd64".into(),
        }
    }

    pub fn platform(mut self, os: &str, architecture: &str) -> Self {
        self.os = os.into();
        self.architecture = architecture.into();
        self
    }
}

/// A generated image manifest and its blobs.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub os: String,
    pub architecture: String,
}

impl Image {
    /// Digests of the manifest, config and layers.
    pub fn all_digests(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self.layers.iter().map(|l| l.digest.clone()).collect();
        s.insert(self.config.digest.clone());
        s.insert(self.manifest.digest.clone());
        s
    }
}

/// A generated image index and its images.
#[derive(Debug, Clone)]
pub struct MultiPlatform {
    pub index: Descriptor,
    pub index_bytes: Vec<u8>,
    pub images: Vec<Image>,
}

impl MultiPlatform {
    /// Digests of the index and everything in every image.
    pub fn all_digests(&self) -> BTreeSet<String> {
        let mut s = BTreeSet::new();
        s.insert(self.index.digest.clone());
        for i in &self.images {
            s.extend(i.all_digests());
        }
        s
    }
}

/// A valid uncompressed tar holding `layer-<n>/` and `layer-<n>/data.bin`
/// with `size` pseudo-random bytes from `seed`. Deterministic.
pub fn layer_tar(n: usize, size: usize, seed: u64) -> Vec<u8> {
    let data = XorShift::new(seed).bytes(size);
    let mut builder = tar::Builder::new(Vec::with_capacity(size + 4096));
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_mtime(1_700_000_000);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_size(0);
    builder
        .append_data(&mut dir, format!("layer-{n}/"), std::io::empty())
        .expect("tar dir entry");
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o644);
    file.set_mtime(1_700_000_000);
    file.set_uid(0);
    file.set_gid(0);
    file.set_size(size as u64);
    builder
        .append_data(&mut file, format!("layer-{n}/data.bin"), data.as_slice())
        .expect("tar file entry");
    builder.into_inner().expect("finishing tar")
}

/// An OCI image layout directory being written.
pub struct OciLayout {
    pub dir: PathBuf,
    refs: Vec<Value>,
}

impl OciLayout {
    /// Create (or reset) a layout at `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let l = OciLayout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        };
        l.write_index()?;
        Ok(l)
    }

    fn write_index(&self) -> anyhow::Result<()> {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": self.refs,
        });
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec_pretty(&index)?,
        )?;
        Ok(())
    }

    pub fn write_blob(&self, media_type: &str, bytes: &[u8]) -> anyhow::Result<Descriptor> {
        let d = Descriptor::of(media_type, bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(d.hex()), bytes)?;
        Ok(d)
    }

    /// Write an image's blobs (not referenced from index.json).
    pub fn build_image(&self, spec: &ImageSpec) -> anyhow::Result<Image> {
        let mut layers = Vec::new();
        for n in 0..spec.layers {
            let seed = spec.seed.wrapping_mul(1000).wrapping_add(n as u64);
            let tar = layer_tar(n, spec.layer_size, seed);
            layers.push(self.write_blob(OCI_LAYER_TAR, &tar)?);
        }
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let history: Vec<Value> = (0..spec.layers)
            .map(|n| json!({ "created": "2024-01-01T00:00:00Z", "created_by": format!("kura-tests layer {n} seed {}", spec.seed) }))
            .collect();
        let config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": spec.architecture,
            "os": spec.os,
            "config": { "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        let config = self.write_blob(OCI_CONFIG, &serde_json::to_vec(&config)?)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        let manifest_bytes = serde_json::to_vec(&manifest)?;
        let manifest = self.write_blob(OCI_MANIFEST, &manifest_bytes)?;
        Ok(Image {
            manifest,
            manifest_bytes,
            config,
            layers,
            os: spec.os.clone(),
            architecture: spec.architecture.clone(),
        })
    }

    fn add_ref(&mut self, tag: &str, d: &Descriptor) -> anyhow::Result<()> {
        self.refs.retain(|r| r["annotations"][REF_NAME] != tag);
        let mut v = d.to_json();
        v["annotations"] = json!({ REF_NAME: tag });
        self.refs.push(v);
        self.write_index()
    }

    /// Generate an image and tag it `tag` in index.json.
    pub fn add_image(&mut self, tag: &str, spec: &ImageSpec) -> anyhow::Result<Image> {
        let image = self.build_image(spec)?;
        self.add_ref(tag, &image.manifest)?;
        Ok(image)
    }

    /// Generate one image per spec, an OCI index over them (with each
    /// spec's platform), and tag the index `tag`.
    pub fn add_index(&mut self, tag: &str, specs: &[ImageSpec]) -> anyhow::Result<MultiPlatform> {
        let images = specs
            .iter()
            .map(|s| self.build_image(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let manifests: Vec<Value> = images
            .iter()
            .map(|i| {
                let mut v = i.manifest.to_json();
                v["platform"] = json!({ "os": i.os, "architecture": i.architecture });
                v
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        let index_bytes = serde_json::to_vec(&index)?;
        let index = self.write_blob(OCI_INDEX, &index_bytes)?;
        self.add_ref(tag, &index)?;
        Ok(MultiPlatform {
            index,
            index_bytes,
            images,
        })
    }
}

/// The descriptor tagged `tag` in an OCI layout's index.json.
pub fn oci_ref(dir: &Path, tag: &str) -> anyhow::Result<Descriptor> {
    let raw = std::fs::read(dir.join("index.json"))
        .with_context(|| format!("reading {}/index.json", dir.display()))?;
    let index: Value = serde_json::from_slice(&raw)?;
    let m = index["manifests"]
        .as_array()
        .context("index.json has no manifests")?
        .iter()
        .find(|m| m["annotations"][REF_NAME] == tag)
        .with_context(|| format!("no ref {tag:?} in {}", String::from_utf8_lossy(&raw)))?;
    Ok(Descriptor {
        media_type: m["mediaType"].as_str().unwrap_or_default().to_owned(),
        digest: m["digest"].as_str().context("digest")?.to_owned(),
        size: m["size"].as_u64().context("size")?,
    })
}

/// Hash every file in `dir` (a flat store of files named by hex digest,
/// such as an OCI layout's `blobs/sha256`), fail on any whose content does
/// not match its name, and return the set of `sha256:<hex>` digests.
pub fn verify_blob_dir(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(e.path())?;
        let actual = sha256(&bytes);
        ensure!(
            actual == format!("sha256:{name}"),
            "{} holds content with digest {actual}",
            e.path().display()
        );
        out.insert(actual);
    }
    Ok(out)
}

/// Every blob in an OCI layout, verified.
pub fn oci_blobs(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    verify_blob_dir(&dir.join("blobs/sha256"))
}

/// Read a blob from an OCI layout.
pub fn oci_blob(dir: &Path, digest: &str) -> anyhow::Result<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
    Ok(std::fs::read(dir.join("blobs/sha256").join(hex))?)
}

/// What skopeo's `dir:` transport wrote: the manifest (bytes and digest) and
/// the set of blob digests, each verified against its file's content.
pub struct DirImage {
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: String,
    pub blobs: BTreeSet<String>,
}

pub fn read_dir_transport(dir: &Path) -> anyhow::Result<DirImage> {
    let manifest_bytes = std::fs::read(dir.join("manifest.json"))?;
    let mut blobs = BTreeSet::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let actual = sha256(&std::fs::read(e.path())?);
            if actual != format!("sha256:{name}") {
                bail!("{} holds content with digest {actual}", e.path().display());
            }
            blobs.insert(actual);
        }
    }
    Ok(DirImage {
        manifest_digest: sha256(&manifest_bytes),
        manifest_bytes,
        blobs,
    })
}
