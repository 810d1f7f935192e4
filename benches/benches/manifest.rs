//! Manifest parsing and validation: `kura_core::manifest::parse`, the entry
//! point a push (`Registry::put_manifest`) and a mirror fill run on every
//! manifest, with the Content-Type a client sends.
//!
//! Inputs: an OCI image manifest with 5 layers (compact JSON, as BuildKit
//! writes it), a Docker schema 2 manifest with 5 layers (pretty-printed, as
//! Docker writes it) and an OCI image index with 4 platforms.
//!
//! `cargo bench -p kura-benches --bench manifest`

use std::fmt;

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use kura_core::manifest::{self, media_type, Kind};
use kura_core::Digest;
use serde_json::{json, Value};

fn main() {
    divan::main();
}

struct Case {
    label: &'static str,
    content_type: &'static str,
    bytes: Vec<u8>,
    kind: Kind,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label)
    }
}

fn digest(seed: &str) -> String {
    Digest::sha256(seed.as_bytes()).to_string()
}

fn layers(media_type: &str) -> Vec<Value> {
    [31_457_280u64, 5_242_880, 1_048_576, 65_536, 512]
        .iter()
        .enumerate()
        .map(|(i, size)| {
            json!({
                "mediaType": media_type,
                "digest": digest(&format!("layer {i}")),
                "size": size,
            })
        })
        .collect()
}

fn oci_manifest() -> Case {
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest("config"),
            "size": 7023,
        },
        "layers": layers("application/vnd.oci.image.layer.v1.tar+gzip"),
        "annotations": {
            "org.opencontainers.image.created": "2024-06-01T12:00:00Z",
            "org.opencontainers.image.source": "https://github.com/org/app",
        },
    });
    Case {
        label: "oci_manifest_5_layers",
        content_type: media_type::OCI_MANIFEST,
        bytes: serde_json::to_vec(&doc).unwrap(),
        kind: Kind::OciManifest,
    }
}

fn docker_manifest() -> Case {
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": media_type::DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": digest("config"),
            "size": 7023,
        },
        "layers": layers("application/vnd.docker.image.rootfs.diff.tar.gzip"),
    });
    Case {
        label: "docker_v2s2_5_layers",
        content_type: media_type::DOCKER_MANIFEST,
        bytes: serde_json::to_vec_pretty(&doc).unwrap(),
        kind: Kind::DockerManifest,
    }
}

fn oci_index() -> Case {
    let platforms = [
        ("amd64", None),
        ("arm64", Some("v8")),
        ("arm", Some("v7")),
        ("s390x", None),
    ];
    let manifests: Vec<Value> = platforms
        .iter()
        .map(|(arch, variant)| {
            let mut platform = json!({ "architecture": arch, "os": "linux" });
            if let Some(v) = variant {
                platform["variant"] = json!(v);
            }
            json!({
                "mediaType": media_type::OCI_MANIFEST,
                "digest": digest(arch),
                "size": 1024,
                "platform": platform,
            })
        })
        .collect();
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests,
    });
    Case {
        label: "oci_index_4_platforms",
        content_type: media_type::OCI_INDEX,
        bytes: serde_json::to_vec(&doc).unwrap(),
        kind: Kind::OciIndex,
    }
}

fn cases() -> Vec<Case> {
    vec![oci_manifest(), docker_manifest(), oci_index()]
}

#[divan::bench(args = cases())]
fn parse(bencher: Bencher, case: &Case) {
    let parsed = manifest::parse(&case.bytes, Some(case.content_type)).expect(case.label);
    assert_eq!(parsed.kind, case.kind);
    assert_eq!(parsed.layers.len() + parsed.manifests.len(), {
        if case.kind.is_index() {
            4
        } else {
            5
        }
    });

    bencher
        .counter(BytesCount::new(case.bytes.len()))
        .bench(|| manifest::parse(black_box(&case.bytes), black_box(Some(case.content_type))));
}
