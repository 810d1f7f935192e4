//! The content-management workflow against a running `kura serve`:
//! deleting tags, manifests and blobs, and what a registry with deletes
//! turned off answers.
//!
//! Needs nothing but the kura binary. Requests go through
//! [`kura_tests::api::Api`], which checks every response's invariants.

use kura_tests::api::{Image, Reg, OCI_MANIFEST, ZERO_DIGEST};
use kura_tests::sha256;

#[test]
fn management_delete_tag() {
    let reg = Reg::start();
    let repo = "mgmt/tag";
    let img = reg.push_image(repo, "v1", "delete-tag");
    reg.put_manifest(repo, "v2", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
    reg.delete(&format!("/v2/{repo}/manifests/v1")).expect(202);
    reg.get(&format!("/v2/{repo}/manifests/v1"))
        .error(404, "MANIFEST_UNKNOWN");
    reg.head(&format!("/v2/{repo}/manifests/v1")).expect(404);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/manifests/{}", img.digest))
            .expect(200)
            .body,
        img.manifest
    );
    reg.get(&format!("/v2/{repo}/manifests/v2")).expect(200);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/tags/list")).expect(200).tags(),
        ["v2"]
    );
    reg.delete(&format!("/v2/{repo}/manifests/v1"))
        .error(404, "MANIFEST_UNKNOWN");
}

#[test]
fn management_delete_manifest() {
    let reg = Reg::start();
    let repo = "mgmt/manifest";
    let img = reg.push_image(repo, "v1", "delete-manifest");
    reg.put_manifest(repo, "v2", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
    let keep = reg.push_image(repo, "keep", "delete-manifest-keep");
    let path = format!("/v2/{repo}/manifests/{}", img.digest);
    reg.delete(&path).expect(202);
    reg.get(&path).error(404, "MANIFEST_UNKNOWN");
    reg.head(&path).expect(404);
    // Tags that pointed at it are gone too.
    reg.get(&format!("/v2/{repo}/manifests/v1")).expect(404);
    reg.get(&format!("/v2/{repo}/manifests/v2")).expect(404);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/tags/list")).expect(200).tags(),
        ["keep"]
    );
    reg.get(&format!("/v2/{repo}/manifests/{}", keep.digest))
        .expect(200);
    reg.delete(&path).error(404, "MANIFEST_UNKNOWN");
    reg.delete(&format!("/v2/{repo}/manifests/{ZERO_DIGEST}"))
        .error(404, "MANIFEST_UNKNOWN");
    // Pushing it again works.
    reg.push_manifest(repo, "v1", &img.manifest);
    reg.get(&path).expect(200);
}

#[test]
fn management_delete_blob() {
    let reg = Reg::start();
    let repo = "mgmt/blob";
    let img = Image::new("delete-blob");
    reg.push_blob(repo, &img.config);
    let layer = reg.push_blob(repo, &img.layers[0]);
    reg.push_blob(repo, &img.layers[1]);
    reg.push_blob("mgmt/other", &img.layers[0]);
    let path = format!("/v2/{repo}/blobs/{layer}");
    reg.delete(&path).expect(202);
    reg.get(&path).error(404, "BLOB_UNKNOWN");
    reg.head(&path).expect(404);
    reg.delete(&path).error(404, "BLOB_UNKNOWN");
    // Other repositories keep their link.
    assert_eq!(
        reg.get(&format!("/v2/mgmt/other/blobs/{layer}"))
            .expect(200)
            .body,
        img.layers[0]
    );
    // A manifest can no longer reference it here.
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    reg.delete(&format!("/v2/{repo}/blobs/{ZERO_DIGEST}"))
        .error(404, "BLOB_UNKNOWN");
}

#[test]
fn management_delete_disabled() {
    let reg = Reg::with_config("registry:\n  delete_enabled: false\n");
    let repo = "mgmt/nodelete";
    let img = reg.push_image(repo, "v1", "no-delete");
    let layer = sha256(&img.layers[0]);
    for path in [
        format!("/v2/{repo}/manifests/v1"),
        format!("/v2/{repo}/manifests/{}", img.digest),
        format!("/v2/{repo}/blobs/{layer}"),
    ] {
        reg.delete(&path).error(405, "UNSUPPORTED");
    }
    reg.get(&format!("/v2/{repo}/manifests/v1")).expect(200);
    reg.get(&format!("/v2/{repo}/manifests/{}", img.digest))
        .expect(200);
    reg.get(&format!("/v2/{repo}/blobs/{layer}")).expect(200);
    // Cancelling an upload is not a content deletion.
    let loc = reg.start_upload(repo);
    reg.delete(&loc).expect(204);
}
