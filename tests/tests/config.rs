//! A registry:2 `config.yml` keeps registry:2's defaults: `kura config
//! check` shows them and says which values came from the file and which
//! are defaults, and `kura serve` behaves accordingly (deletes refused
//! unless the file enables them).

use std::path::{Path, PathBuf};
use std::process::Command;

use kura_tests::{http_client, kura_bin, sha256, Kura, KuraOptions};
use serde_json::json;

/// A registry:2 file on local disk under `dir`, with `extra` added to its
/// `storage` section.
fn registry2_file(dir: &Path, extra: &str) -> PathBuf {
    let f = dir.join("config.yml");
    std::fs::write(
        &f,
        format!(
            "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  filesystem:\n    rootdirectory: {}\n{extra}http:\n  addr: 127.0.0.1:5999\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    f
}

fn config_check(file: &Path) -> (String, String) {
    let mut cmd = Command::new(kura_bin());
    cmd.args(["config", "check"]).arg(file);
    for (k, _) in std::env::vars() {
        if k.starts_with("KURA_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("running kura config check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    (stdout, stderr)
}

/// The origin `kura config check` names for a dotted path.
fn origin<'a>(stdout: &'a str, path: &str) -> &'a str {
    let prefix = format!("#   {path} ");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no origin line for {path}:\n{stdout}"));
    line[prefix.len()..].trim()
}

#[test]
fn config_check_keeps_registry2_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = config_check(&registry2_file(dir.path(), ""));
    assert!(
        stdout.lines().any(|l| l == "  delete_enabled: false"),
        "deletes stay off, as in registry:2:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l == "  upstreams: []"),
        "nothing mirrored without proxy:\n{stdout}"
    );
    assert_eq!(
        origin(&stdout, "registry.delete_enabled"),
        "registry:2 default"
    );
    assert_eq!(origin(&stdout, "mirror.upstreams"), "registry:2 default");
    assert_eq!(origin(&stdout, "listen"), "file");
    assert_eq!(origin(&stdout, "data_dir"), "file");
    assert_eq!(origin(&stdout, "log.level"), "default");
    assert!(stderr.contains("`log.fields`"), "{stderr}");

    let (stdout, _) = config_check(&registry2_file(
        dir.path(),
        "  delete:\n    enabled: true\n",
    ));
    assert!(
        stdout.lines().any(|l| l == "  delete_enabled: true"),
        "{stdout}"
    );
    assert_eq!(origin(&stdout, "registry.delete_enabled"), "file");
}

/// Push a one-layer image; the manifest's digest.
fn push_image(url: &str, repo: &str) -> String {
    let client = http_client();
    let config = b"{}".to_vec();
    let layer = b"a layer that registry:2 would not let anyone delete".to_vec();
    for blob in [&config, &layer] {
        let r = client
            .post(format!(
                "{url}/v2/{repo}/blobs/uploads/?digest={}",
                sha256(blob)
            ))
            .header("Content-Type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "blob upload: {}", r.text().unwrap());
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(&layer),
            "size": layer.len(),
        }],
    }))
    .unwrap();
    let r = client
        .put(format!("{url}/v2/{repo}/manifests/v1"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "manifest: {}", r.text().unwrap());
    sha256(&manifest)
}

fn serve(file: PathBuf, dir: &Path) -> Kura {
    Kura::start_with(KuraOptions {
        config: Some(file),
        data_dir: Some(dir.join("data")),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn registry2_file_without_delete_refuses_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let kura = serve(registry2_file(dir.path(), ""), dir.path());
    let digest = push_image(&kura.url, "moved/app");
    let layer = sha256(b"a layer that registry:2 would not let anyone delete");
    let client = http_client();
    for path in [
        "manifests/v1".to_owned(),
        format!("manifests/{digest}"),
        format!("blobs/{layer}"),
    ] {
        let r = client
            .delete(format!("{}/v2/moved/app/{path}", kura.url))
            .send()
            .unwrap();
        let status = r.status();
        let body = r.text().unwrap();
        assert_eq!(status, 405, "DELETE {path}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errors"][0]["code"], "UNSUPPORTED", "DELETE {path}");
    }
    let r = client
        .get(format!("{}/v2/moved/app/manifests/{digest}", kura.url))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // The same file with deletes enabled deletes.
    let dir = tempfile::tempdir().unwrap();
    let kura = serve(
        registry2_file(dir.path(), "  delete:\n    enabled: true\n"),
        dir.path(),
    );
    let digest = push_image(&kura.url, "moved/app");
    let r = client
        .delete(format!("{}/v2/moved/app/manifests/{digest}", kura.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
}
