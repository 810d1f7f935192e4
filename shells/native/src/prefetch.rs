//! `kura prefetch`: warm a running kura's cache by pulling images through
//! it, as a client would, without keeping the bytes.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kura_core::manifest::{self, Descriptor, ALL_MEDIA_TYPES};

use crate::client::{explain, ClientTls};

/// An image reference split for the `/v2/` API: `ghcr.io/owner/app:v1` →
/// (`ghcr.io/owner/app`, `v1`). Names without a registry go to the
/// server's default upstream, as Docker's `registry-mirrors` does.
fn split_reference(image: &str) -> anyhow::Result<(String, String)> {
    let (name, reference) = if let Some((n, d)) = image.split_once('@') {
        (n, d.to_owned())
    } else {
        match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t.to_owned()),
            _ => (image, "latest".to_owned()),
        }
    };
    let name = name
        .strip_prefix("index.docker.io/")
        .map(|n| format!("docker.io/{n}"))
        .unwrap_or(name.to_owned());
    if kura_core::RepositoryName::parse(&name).is_err() {
        bail!("{image:?} is not a valid image reference");
    }
    Ok((name, reference))
}

#[derive(Default)]
struct Totals {
    fetched: u64,
    cached: u64,
    blobs: usize,
}

pub async fn run(
    server: &str,
    images: Vec<String>,
    platform: Option<String>,
    tls: &ClientTls,
) -> anyhow::Result<()> {
    let client = tls.builder()?.build()?;
    let server = server.trim_end_matches('/').to_owned();
    let bars = MultiProgress::new();
    let started = Instant::now();
    let mut totals = Totals::default();
    for image in &images {
        let (name, reference) = split_reference(image)?;
        let mut blobs: BTreeSet<(String, u64)> = BTreeSet::new();
        let (bytes, media_type) = get_manifest(&client, &server, &name, &reference)
            .await
            .with_context(|| image.to_string())?;
        let parsed = manifest::parse(&bytes, Some(&media_type))
            .with_context(|| format!("{image}: manifest"))?;
        let images: Vec<Descriptor> = if parsed.kind.is_index() {
            parsed
                .manifests
                .iter()
                .filter(|d| match (&platform, &d.platform) {
                    (None, _) => true,
                    (Some(want), Some(p)) => {
                        let have = format!("{}/{}", p.os, p.architecture);
                        let with_variant = p.variant.as_ref().map(|v| format!("{have}/{v}"));
                        *want == have || Some(want) == with_variant.as_ref()
                    }
                    (Some(_), None) => false,
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if parsed.kind.is_index() {
            if images.is_empty() {
                bail!(
                    "{image}: no manifest for platform {}",
                    platform.as_deref().unwrap_or("?")
                );
            }
            for d in &images {
                let (b, mt) = get_manifest(&client, &server, &name, &d.digest.to_string()).await?;
                let m = manifest::parse(&b, Some(&mt))?;
                blobs.extend(m.required_blobs().map(|d| (d.digest.to_string(), d.size)));
            }
        } else {
            blobs.extend(
                parsed
                    .required_blobs()
                    .map(|d| (d.digest.to_string(), d.size)),
            );
        }
        bars.println(format!("{image}: {} blobs", blobs.len()))?;
        let results: Vec<(u64, bool)> = futures::stream::iter(blobs)
            .map(|(digest, size)| {
                let bar = bars.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(digest[7..19].to_owned());
                let (client, server, name) = (client.clone(), server.clone(), name.clone());
                async move { fetch_blob(&client, &server, &name, &digest, bar).await }
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        for (n, was_cached) in results {
            totals.blobs += 1;
            if was_cached {
                totals.cached += n;
            } else {
                totals.fetched += n;
            }
        }
    }
    println!(
        "prefetched {} image(s), {} blobs in {:.1}s: {} fetched from upstream, {} already cached",
        images.len(),
        totals.blobs,
        started.elapsed().as_secs_f64(),
        indicatif::HumanBytes(totals.fetched),
        indicatif::HumanBytes(totals.cached),
    );
    Ok(())
}

async fn get_manifest(
    client: &reqwest::Client,
    server: &str,
    name: &str,
    reference: &str,
) -> anyhow::Result<(bytes::Bytes, String)> {
    let resp = client
        .get(format!("{server}/v2/{name}/manifests/{reference}"))
        .header("accept", ALL_MEDIA_TYPES.join(", "))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(explain(server, &e)))?;
    if !resp.status().is_success() {
        bail!(
            "manifest {name}:{reference}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let mt = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok((resp.bytes().await?, mt))
}

/// Pull one blob through, discarding it. Returns its size and whether the
/// server already had it.
async fn fetch_blob(
    client: &reqwest::Client,
    server: &str,
    name: &str,
    digest: &str,
    bar: ProgressBar,
) -> anyhow::Result<(u64, bool)> {
    let resp = client
        .get(format!("{server}/v2/{name}/blobs/{digest}"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(explain(server, &e)))?;
    if !resp.status().is_success() {
        bail!("blob {digest}: {}", resp.status());
    }
    let cached = resp
        .headers()
        .get(kura_core::CACHE_HEADER)
        .is_some_and(|v| v == "hit");
    let mut stream = resp.bytes_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("blob {digest}"))?;
        n += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_with_message(if cached { "cached" } else { "fetched" });
    Ok((n, cached))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let s = |i: &str| split_reference(i).unwrap();
        assert_eq!(s("alpine:3.20"), ("alpine".into(), "3.20".into()));
        assert_eq!(s("alpine"), ("alpine".into(), "latest".into()));
        assert_eq!(
            s("ghcr.io/owner/app:v1"),
            ("ghcr.io/owner/app".into(), "v1".into())
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(s(&format!("quay.io/x/y@{d}")), ("quay.io/x/y".into(), d));
        assert_eq!(
            s("index.docker.io/library/redis:7").0,
            "docker.io/library/redis"
        );
        assert!(split_reference("Bad/Name:1").is_err());
    }
}
