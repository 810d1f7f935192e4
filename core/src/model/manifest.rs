//! Image manifests and indexes: Docker schema 2, Docker manifest list, OCI
//! image manifest, OCI image index, and OCI 1.1 artifacts (`artifactType`,
//! `subject`).
//!
//! Manifests are stored and served as the exact bytes received (the digest
//! is of the bytes); this module only parses them to validate a push and to
//! find what they reference.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::digest::Digest;

/// The manifest and layer media types the registry tells apart.
pub mod media_type {
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list: Docker's multi-platform index.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker schema 1, unsigned: recognised only to be refused.
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Docker schema 1, signed: recognised only to be refused.
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// A Windows foreign layer, fetched from its `urls` rather than from a
    /// registry.
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
}

/// The kinds of manifest the registry accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`media_type::DOCKER_MANIFEST`].
    DockerManifest,
    /// [`media_type::DOCKER_MANIFEST_LIST`].
    DockerManifestList,
    /// [`media_type::OCI_MANIFEST`].
    OciManifest,
    /// [`media_type::OCI_INDEX`].
    OciIndex,
}

impl Kind {
    /// The kind a media type names; `None` for any other. The comparison is
    /// exact, so pass a media type without parameters, lower-cased.
    pub fn from_media_type(mt: &str) -> Option<Kind> {
        match mt {
            media_type::DOCKER_MANIFEST => Some(Kind::DockerManifest),
            media_type::DOCKER_MANIFEST_LIST => Some(Kind::DockerManifestList),
            media_type::OCI_MANIFEST => Some(Kind::OciManifest),
            media_type::OCI_INDEX => Some(Kind::OciIndex),
            _ => None,
        }
    }

    /// The kind's media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Kind::DockerManifest => media_type::DOCKER_MANIFEST,
            Kind::DockerManifestList => media_type::DOCKER_MANIFEST_LIST,
            Kind::OciManifest => media_type::OCI_MANIFEST,
            Kind::OciIndex => media_type::OCI_INDEX,
        }
    }

    /// Whether the kind lists manifests rather than a config and layers.
    pub fn is_index(self) -> bool {
        matches!(self, Kind::DockerManifestList | Kind::OciIndex)
    }
}

/// The media types a registry serves manifests as, for `Accept` headers.
pub const ALL_MEDIA_TYPES: [&str; 4] = [
    media_type::OCI_INDEX,
    media_type::OCI_MANIFEST,
    media_type::DOCKER_MANIFEST_LIST,
    media_type::DOCKER_MANIFEST,
];

/// Why a pushed manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The bytes are not JSON of the expected shape.
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    /// `schemaVersion` is missing or not 2 (1 is [`ManifestError::Schema1`]).
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    /// A Docker schema 1 manifest, long deprecated.
    #[error("Docker schema 1 manifests are not supported")]
    Schema1,
    /// A Content-Type or `mediaType` that names no accepted [`Kind`].
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// The Content-Type and the body's `mediaType` name different kinds.
    #[error("mediaType {body:?} in the manifest does not match Content-Type {header:?}")]
    MediaTypeMismatch {
        /// The media type of the Content-Type's kind.
        header: String,
        /// The media type of the body's kind.
        body: String,
    },
    #[error(
        "cannot tell the manifest type: no Content-Type, no mediaType, no config or manifests"
    )]
    /// Neither the Content-Type nor the body says what the manifest is.
    UnknownKind,
    /// The kind (its media type) requires the field.
    #[error("{0} requires the field {1:?}")]
    MissingField(&'static str, &'static str),
    /// The field belongs to the other kind (image manifest or index).
    #[error("{0} must not have the field {1:?}")]
    ForbiddenField(&'static str, &'static str),
    /// A descriptor's `mediaType` is empty.
    #[error("descriptor has an empty mediaType")]
    EmptyDescriptorMediaType,
}

/// The platform an index entry's image runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    /// CPU architecture, as Go's `GOARCH` (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system, as Go's `GOOS` (`linux`, `windows`).
    pub os: String,
    /// CPU variant (`v8` for `arm64/v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    /// `os.version`: the operating system version (Windows builds).
    pub os_version: Option<String>,
}

/// A descriptor: what a manifest says about content it references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// The referenced content's digest.
    pub digest: Digest,
    /// The referenced content's size in bytes.
    pub size: u64,
    /// Where else the content can be fetched from (foreign layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// The platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// `artifactType`: the type of an artifact (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// Layers a registry is not expected to hold (Windows foreign layers,
    /// OCI non-distributable layers).
    pub fn is_non_distributable(&self) -> bool {
        self.media_type == media_type::DOCKER_FOREIGN_LAYER
            || self.media_type.contains(".nondistributable.")
    }
}

/// The wire shape, every field optional so validation can say what is wrong.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

/// A parsed, validated manifest or index.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// What the manifest is.
    pub kind: Kind,
    /// An image manifest's config; `None` for an index.
    pub config: Option<Descriptor>,
    /// An image manifest's layers; empty for an index.
    pub layers: Vec<Descriptor>,
    /// An index's manifests; empty for an image manifest.
    pub manifests: Vec<Descriptor>,
    /// `subject`: the manifest this one refers to, which lists it among
    /// its referrers (OCI 1.1).
    pub subject: Option<Descriptor>,
    /// `artifactType` (OCI 1.1).
    pub artifact_type: Option<String>,
    /// The manifest's annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A Content-Type value without parameters and whitespace, lower-cased:
/// media types compare case-insensitively (RFC 6838 §4.2).
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Parse and validate manifest `bytes` pushed with `content_type`.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    let header = content_type.map(essence).filter(|s| !s.is_empty());
    let header = header.as_deref();
    let body_media_type = raw.media_type.as_deref().map(essence);
    let body_media_type = body_media_type.as_deref();

    for mt in [header, body_media_type].into_iter().flatten() {
        if mt == media_type::DOCKER_SCHEMA1 || mt == media_type::DOCKER_SCHEMA1_SIGNED {
            return Err(ManifestError::Schema1);
        }
    }
    if raw.schema_version != Some(2) {
        return Err(match raw.schema_version {
            Some(1) => ManifestError::Schema1,
            _ => ManifestError::SchemaVersion,
        });
    }

    // A specific Content-Type is authoritative; generic ones defer to the body.
    let header_kind = match header {
        None | Some("application/json") | Some("application/octet-stream") => None,
        Some(h) => Some(
            Kind::from_media_type(h)
                .ok_or_else(|| ManifestError::UnsupportedMediaType(h.to_owned()))?,
        ),
    };
    let body_kind = match body_media_type {
        None => None,
        Some(b) => Some(
            Kind::from_media_type(b)
                .ok_or_else(|| ManifestError::UnsupportedMediaType(b.to_owned()))?,
        ),
    };
    if let (Some(h), Some(b)) = (header_kind, body_kind) {
        if h != b {
            return Err(ManifestError::MediaTypeMismatch {
                header: h.media_type().to_owned(),
                body: b.media_type().to_owned(),
            });
        }
    }
    let kind = match header_kind.or(body_kind) {
        Some(k) => k,
        None if raw.manifests.is_some() => Kind::OciIndex,
        None if raw.config.is_some() => Kind::OciManifest,
        None => return Err(ManifestError::UnknownKind),
    };

    // Refusing the other kind's fields closes the "manifest confusion" hole,
    // where one document reads as an image to one client and as an index to
    // another.
    let what = kind.media_type();
    let (config, layers, manifests) = if kind.is_index() {
        if raw.config.is_some() {
            return Err(ManifestError::ForbiddenField(what, "config"));
        }
        if raw.layers.is_some() {
            return Err(ManifestError::ForbiddenField(what, "layers"));
        }
        let manifests = raw
            .manifests
            .ok_or(ManifestError::MissingField(what, "manifests"))?;
        (None, Vec::new(), manifests)
    } else {
        if raw.manifests.is_some() {
            return Err(ManifestError::ForbiddenField(what, "manifests"));
        }
        let config = raw
            .config
            .ok_or(ManifestError::MissingField(what, "config"))?;
        let layers = raw
            .layers
            .ok_or(ManifestError::MissingField(what, "layers"))?;
        (Some(config), layers, Vec::new())
    };

    let all = config
        .iter()
        .chain(&layers)
        .chain(&manifests)
        .chain(&raw.subject);
    if all.into_iter().any(|d| d.media_type.is_empty()) {
        return Err(ManifestError::EmptyDescriptorMediaType);
    }

    Ok(Manifest {
        kind,
        config,
        layers,
        manifests,
        subject: raw.subject,
        artifact_type: raw.artifact_type,
        annotations: raw.annotations,
    })
}

impl Manifest {
    /// The media type of the manifest's [`Kind`]: what it is stored and
    /// served as, whatever generic Content-Type it was pushed with.
    pub fn media_type(&self) -> &'static str {
        self.kind.media_type()
    }

    /// Blobs the registry must hold before accepting this manifest.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter().filter(|d| !d.is_non_distributable()))
    }

    /// The artifact type shown in a referrers listing: `artifactType`, else
    /// the config media type of an image manifest.
    pub fn referrer_artifact_type(&self) -> Option<String> {
        // An empty `artifactType` is no artifact type: an image manifest
        // falls back to its config's media type, an index has none.
        self.artifact_type
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| self.config.as_ref().map(|c| c.media_type.clone()))
    }

    /// This manifest as an entry of a referrers index.
    pub fn referrer_descriptor(&self, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: self.media_type().to_owned(),
            digest,
            size,
            urls: Vec::new(),
            platform: None,
            artifact_type: self.referrer_artifact_type(),
            annotations: self.annotations.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    // On wasm32, `#[test]` is wasm-bindgen-test's (run in Node by
    // wasm-bindgen-test-runner); natively it is the built-in one.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn d(n: u8) -> String {
        Digest::sha256(&[n]).to_string()
    }

    #[test]
    fn media_types_compare_case_insensitively() {
        let body = image(Some("application/vnd.OCI.image.manifest.v1+json"));
        let m = parse(
            &body,
            Some("Application/VND.oci.Image.Manifest.v1+JSON; charset=x"),
        )
        .unwrap();
        assert_eq!(m.media_type(), media_type::OCI_MANIFEST);
        assert!(matches!(
            parse(&body, Some("APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON")),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
    }

    #[test]
    fn an_empty_artifact_type_is_none() {
        let mut v: serde_json::Value = serde_json::from_slice(&image(None)).unwrap();
        v["artifactType"] = json!("");
        let m = parse(&serde_json::to_vec(&v).unwrap(), None).unwrap();
        assert_eq!(
            m.referrer_artifact_type().as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "artifactType": "",
            "manifests": [],
        });
        let m = parse(&serde_json::to_vec(&index).unwrap(), None).unwrap();
        assert_eq!(m.referrer_artifact_type(), None);
        let desc = serde_json::to_value(m.referrer_descriptor(Digest::sha256(b"i"), 1)).unwrap();
        assert!(desc.get("artifactType").is_none(), "{desc}");
    }

    fn image(mt: Option<&str>) -> Vec<u8> {
        let mut v = json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(1), "size": 10},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(2), "size": 20},
                {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": d(3), "size": 30, "urls": ["https://example.com/l"]}
            ]
        });
        if let Some(mt) = mt {
            v["mediaType"] = json!(mt);
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn image_manifest() {
        let m = parse(
            &image(Some(media_type::OCI_MANIFEST)),
            Some(media_type::OCI_MANIFEST),
        )
        .unwrap();
        assert_eq!(m.kind, Kind::OciManifest);
        let req: Vec<_> = m.required_blobs().map(|d| d.digest.to_string()).collect();
        assert_eq!(
            req,
            vec![d(1), d(2)],
            "non-distributable layer is not required"
        );
        assert_eq!(
            m.referrer_artifact_type().as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn kind_from_header_body_or_shape() {
        let docker = image(Some(media_type::DOCKER_MANIFEST));
        assert_eq!(parse(&docker, None).unwrap().kind, Kind::DockerManifest);
        assert_eq!(
            parse(&docker, Some("application/json")).unwrap().kind,
            Kind::DockerManifest
        );
        assert_eq!(parse(&image(None), None).unwrap().kind, Kind::OciManifest);
        assert_eq!(
            parse(
                &image(None),
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8")
            )
            .unwrap()
            .kind,
            Kind::DockerManifest
        );
    }

    #[test]
    fn mismatched_media_type() {
        let err = parse(
            &image(Some(media_type::OCI_MANIFEST)),
            Some(media_type::DOCKER_MANIFEST),
        )
        .unwrap_err();
        assert!(matches!(err, ManifestError::MediaTypeMismatch { .. }));
        let err = parse(&image(None), Some("text/plain")).unwrap_err();
        assert!(matches!(err, ManifestError::UnsupportedMediaType(_)));
    }

    #[test]
    fn index() {
        let idx = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [
                {"mediaType": media_type::OCI_MANIFEST, "digest": d(4), "size": 500, "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": media_type::OCI_MANIFEST, "digest": d(5), "size": 501, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}
            ]
        });
        let m = parse(
            &serde_json::to_vec(&idx).unwrap(),
            Some(media_type::OCI_INDEX),
        )
        .unwrap();
        assert!(m.kind.is_index());
        assert_eq!(m.manifests.len(), 2);
        assert_eq!(
            m.manifests[1].platform.as_ref().unwrap().variant.as_deref(),
            Some("v8")
        );
        assert_eq!(m.required_blobs().count(), 0);
    }

    #[test]
    fn artifact_with_subject() {
        let a = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": d(6), "size": 2},
            "layers": [],
            "subject": {"mediaType": media_type::OCI_MANIFEST, "digest": d(7), "size": 700},
            "annotations": {"org.example": "x"}
        });
        let m = parse(
            &serde_json::to_vec(&a).unwrap(),
            Some(media_type::OCI_MANIFEST),
        )
        .unwrap();
        assert_eq!(m.subject.as_ref().unwrap().digest.to_string(), d(7));
        let r = m.referrer_descriptor(Digest::sha256(b"x"), 3);
        assert_eq!(
            r.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
        assert_eq!(r.annotations.unwrap()["org.example"], "x");
    }

    #[test]
    fn invalid_documents() {
        let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
            (b"not json".to_vec(), None),
            (b"[]".to_vec(), None),
            (b"{}".to_vec(), None),
            (br#"{"schemaVersion":1,"name":"x"}"#.to_vec(), None),
            (br#"{"schemaVersion":2}"#.to_vec(), None),
            (br#"{"schemaVersion":3,"config":{}}"#.to_vec(), None),
            (serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":media_type::OCI_MANIFEST,"layers":[]})).unwrap(), None),
            (serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":media_type::OCI_INDEX,"manifests":[],"layers":[]})).unwrap(), None),
            (serde_json::to_vec(&json!({"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:abc","size":1},"layers":[]})).unwrap(), None),
            (serde_json::to_vec(&json!({"schemaVersion":2,"config":{"mediaType":"x","digest":d(1),"size":-1},"layers":[]})).unwrap(), None),
            (serde_json::to_vec(&json!({"schemaVersion":2,"config":{"mediaType":"","digest":d(1),"size":1},"layers":[]})).unwrap(), None),
            (image(None), Some(media_type::DOCKER_SCHEMA1_SIGNED)),
            (image(Some(media_type::OCI_MANIFEST)), Some(media_type::OCI_INDEX)),
        ];
        for (i, (bytes, ct)) in cases.iter().enumerate() {
            assert!(parse(bytes, *ct).is_err(), "case {i} accepted");
        }
    }
}
