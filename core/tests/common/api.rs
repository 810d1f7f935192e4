//! Requests to a registry over memory storage, and the images they push.
#![allow(dead_code)]

use bytes::Bytes;
use futures::executor::block_on;
use futures::StreamExt;
use http::{Method, Request, StatusCode};
use kura_core::storage::{MemoryStorage, Storage};
use kura_core::{body, Body, ByteStream, Digest, Registry};
use serde_json::json;

use super::TestHost;

pub type Reg = Registry<MemoryStorage, TestHost>;

pub struct Resp {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    pub fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).expect("error body is JSON");
        v["errors"][0]["code"].as_str().unwrap().to_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn call<S: Storage>(
    reg: &Registry<S, TestHost>,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    block_on(async {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body: Bytes = body.into();
        let stream: ByteStream = if body.is_empty() {
            body::empty()
        } else {
            body::once(body)
        };
        let resp = reg.handle(b.body(stream).unwrap()).await;
        let (parts, body) = resp.into_parts();
        let body = match body {
            Body::Empty => Bytes::new(),
            Body::Full(b) => b,
            Body::Stream(_) | Body::Relay(_) => {
                let mut s = match body {
                    Body::Stream(s) => S::body_stream(s),
                    Body::Relay(s) => s,
                    _ => unreachable!(),
                };
                let mut out = Vec::new();
                while let Some(c) = s.next().await {
                    out.extend_from_slice(&c.unwrap());
                }
                out.into()
            }
        };
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
}

pub fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

pub fn push_blob<S: Storage>(reg: &Registry<S, TestHost>, repo: &str, bytes: &[u8]) -> Digest {
    let d = Digest::sha256(bytes);
    let r = call(
        reg,
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        &[],
        bytes.to_vec(),
    );
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    d
}

pub fn image_manifest(config: &Digest, config_len: usize, layers: &[(Digest, usize)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, n)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": n}))
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_len},
        "layers": layers,
    }))
    .unwrap()
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `kura fsck` over the registry's storage, every blob verified.
pub fn fsck<S: Storage>(reg: &Registry<S, TestHost>) -> kura_core::fsck::FsckReport {
    use kura_core::fsck;
    block_on(async {
        let inventory = reg.fsck_inventory().await.unwrap();
        let mut verdicts = std::collections::HashMap::new();
        for (d, _) in inventory.blobs() {
            verdicts.insert(d.clone(), fsck::verify_blob(reg.storage(), d).await);
        }
        reg.fsck_check(inventory, &verdicts).await.unwrap()
    })
}
