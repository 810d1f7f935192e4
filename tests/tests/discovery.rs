//! The content-discovery workflow against a running `kura serve`: tag
//! lists in lexical order and their pagination (`n`, `last`, `Link`),
//! malformed query strings, the catalog, and the referrers API (filtering
//! by artifactType, subjects that are not there yet).
//!
//! Needs nothing but the kura binary. Requests go through
//! [`kura_tests::api::Api`], which checks every response's invariants.

use kura_tests::api::{desc, strings, Reg, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, ZERO_DIGEST};
use kura_tests::sha256;
use reqwest::Method;
use serde_json::json;

/// Tags in the order the spec demands (lexical, i.e. byte order).
const TAGS: &[&str] = &["1.0", "C", "_x", "a", "b", "c10", "c2", "latest"];

fn tagged_repo(reg: &Reg, repo: &str) {
    let img = reg.push_image(repo, "latest", "tags-list");
    // Push in a scrambled order.
    for t in ["c2", "a", "_x", "1.0", "c10", "C", "b"] {
        reg.put_manifest(repo, t, Some(OCI_MANIFEST), &img.manifest)
            .expect(201);
    }
}

#[test]
fn discovery_tags_list() {
    let reg = Reg::start();
    let repo = "disc/tags";
    tagged_repo(&reg, repo);
    let r = reg.get(&format!("/v2/{repo}/tags/list")).expect(200);
    assert!(r.hdr("content-type").starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["name"], repo);
    assert_eq!(r.tags(), TAGS);
    assert!(r.header("link").is_none(), "no Link when everything fits");
    // Unknown repository.
    reg.get("/v2/disc/nothing/tags/list")
        .error(404, "NAME_UNKNOWN");
}

#[test]
fn discovery_tags_pagination() {
    let reg = Reg::start();
    let repo = "disc/pages";
    tagged_repo(&reg, repo);
    let list = |q: &str| reg.get(&format!("/v2/{repo}/tags/list?{q}"));

    // Follow Link headers from n=3 to the end.
    for n in [1usize, 2, 3, 7, 8] {
        let mut url = format!("/v2/{repo}/tags/list?n={n}");
        let mut all = Vec::new();
        let mut pages = 0;
        loop {
            let r = reg.get(&url).expect(200);
            let page = r.tags();
            assert!(page.len() <= n, "page of {} for n={n}", page.len());
            all.extend(page);
            pages += 1;
            assert!(pages <= TAGS.len() + 1, "pagination does not end");
            match r.next_link() {
                Some(next) => url = next,
                None => break,
            }
        }
        assert_eq!(all, TAGS, "n={n}: pages joined give the whole list");
    }

    let r = list("n=3").expect(200);
    assert_eq!(r.tags(), &TAGS[..3]);
    let link = r.hdr("link");
    assert!(
        link.starts_with(&format!("</v2/{repo}/tags/list?")) && link.ends_with("rel=\"next\""),
        "{link}"
    );

    // n=0: an empty list and no Link (spec: MUST).
    let r = list("n=0").expect(200);
    assert!(r.tags().is_empty(), "{}", r.text());
    assert!(r.header("link").is_none());
    // n larger than the count.
    let r = list("n=100").expect(200);
    assert_eq!(r.tags(), TAGS);
    assert!(r.header("link").is_none());
    // n equal to the count.
    let r = list(&format!("n={}", TAGS.len())).expect(200);
    assert_eq!(r.tags(), TAGS);
    // last = the last tag: nothing follows.
    let r = list("n=5&last=latest").expect(200);
    assert!(r.tags().is_empty());
    assert!(r.header("link").is_none());
    // last between two tags, with and without n.
    assert_eq!(list("last=b5").expect(200).tags(), ["c10", "c2", "latest"]);
    let r = list("n=1&last=b5").expect(200);
    assert_eq!(r.tags(), ["c10"]);
    assert!(r.next_link().is_some());
    // last before the first tag; last is exclusive.
    assert_eq!(list("last=0").expect(200).tags(), TAGS);
    assert_eq!(list("n=2&last=a").expect(200).tags(), ["b", "c10"]);
    assert!(list("last=zzz").expect(200).tags().is_empty());

    for bad in [
        "n=-1",
        "n=abc",
        "n=1.5",
        "n=",
        "n=99999999999999999999999999",
        "n=0x10",
    ] {
        let r = list(bad).expect(400);
        assert!(
            ["PAGINATION_NUMBER_INVALID", "UNSUPPORTED"].contains(&r.code().as_str()),
            "{bad}: {}",
            r.text()
        );
    }
}

#[test]
fn discovery_bad_query_encoding_is_400() {
    let reg = Reg::start();
    let repo = "disc/enc";
    tagged_repo(&reg, repo);
    let d = reg.push_blob(repo, b"abc");
    // Malformed percent-encoding, and encodings that decode to non-UTF-8:
    // a malformed request is a 400, whatever the parameter.
    let cases = [
        ("GET", format!("/v2/{repo}/tags/list?n=%zz")),
        ("GET", format!("/v2/{repo}/tags/list?last=%ff")),
        ("GET", format!("/v2/{repo}/tags/list?last=%")),
        ("GET", "/v2/_catalog?last=%ff".to_owned()),
        ("GET", format!("/v2/{repo}/referrers/{d}?artifactType=%ff")),
        ("POST", format!("/v2/{repo}/blobs/uploads/?digest=%zz")),
        (
            "POST",
            format!("/v2/{repo}/blobs/uploads/?mount=%zz&from={repo}"),
        ),
        (
            "POST",
            format!("/v2/{repo}/blobs/uploads/?mount={d}&from=%ff"),
        ),
    ];
    let mut wrong = Vec::new();
    for (method, target) in &cases {
        let r = reg.raw(method, target, &[], b"");
        if r.status != 400 {
            wrong.push(format!("{method} {target} -> {} {}", r.status, r.text()));
        }
    }
    assert!(
        wrong.is_empty(),
        "malformed query encodings not answered with 400:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn discovery_catalog() {
    let reg = Reg::start();
    let mut repos = vec![
        "zeta", "alpha", "cat/a", "cat/b", "cat/b/c", "cat-a", "cat/b.d",
    ];
    for r in &repos {
        reg.push_blob(r, r.as_bytes());
    }
    // A repository with only a manifest counts as well.
    reg.push_image("manifest/only", "v1", "catalog");
    repos.push("manifest/only");
    repos.sort();
    let r = reg.get("/v2/_catalog").expect(200);
    assert_eq!(strings(&r.json()["repositories"]), repos);
    assert!(r.header("link").is_none());

    for n in [1, 3, 7, 8, 50] {
        let mut url = format!("/v2/_catalog?n={n}");
        let mut all = Vec::new();
        loop {
            let r = reg.get(&url).expect(200);
            let page = strings(&r.json()["repositories"]);
            assert!(page.len() <= n);
            all.extend(page);
            assert!(
                all.len() <= repos.len(),
                "pagination repeats entries: {all:?}"
            );
            match r.next_link() {
                Some(next) => url = next,
                None => break,
            }
        }
        assert_eq!(all, repos, "n={n}");
    }
    let r = reg.get("/v2/_catalog?n=0").expect(200);
    assert!(strings(&r.json()["repositories"]).is_empty());
    assert!(r.header("link").is_none());
    assert_eq!(
        strings(&reg.get("/v2/_catalog?n=2&last=cat/b").expect(200).json()["repositories"]),
        ["cat/b.d", "cat/b/c"]
    );
    reg.get("/v2/_catalog?n=abc").expect(400);
}

#[test]
fn discovery_referrers() {
    let reg = Reg::start();
    let repo = "disc/referrers";
    let subject = reg.push_image(repo, "v1", "referrers-subject");
    let empty = b"{}".to_vec();
    reg.push_blob(repo, &empty);
    let sbom = b"{\"sbom\":true}".to_vec();
    reg.push_blob(repo, &sbom);
    let sig_config = b"{\"sig\":1}".to_vec();
    reg.push_blob(repo, &sig_config);
    let subject_desc = json!({"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.manifest.len()});

    // An artifact with artifactType, and an empty config.
    let a = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": desc(OCI_EMPTY, &empty),
        "layers": [desc("application/vnd.example.sbom.v1+json", &sbom)],
        "subject": subject_desc,
        "annotations": {"org.example.kind": "sbom"}
    }))
    .unwrap();
    let ad = sha256(&a);
    let r = reg
        .put_manifest(repo, &ad, Some(OCI_MANIFEST), &a)
        .expect(201);
    assert_eq!(r.hdr("oci-subject"), subject.digest);
    // An artifact typed by its config's media type.
    let b = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.example.signature.config", &sig_config),
        "layers": [],
        "subject": subject_desc,
        "annotations": {"org.example.kind": "signature"}
    }))
    .unwrap();
    let bd = sha256(&b);
    let r = reg
        .put_manifest(repo, &bd, Some(OCI_MANIFEST), &b)
        .expect(201);
    assert_eq!(r.hdr("oci-subject"), subject.digest);
    // An index can refer too.
    let idx = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle",
        "manifests": [],
        "subject": subject_desc
    }))
    .unwrap();
    let id = sha256(&idx);
    let r = reg
        .put_manifest(repo, &id, Some(OCI_INDEX), &idx)
        .expect(201);
    assert_eq!(r.hdr("oci-subject"), subject.digest);

    let path = format!("/v2/{repo}/referrers/{}", subject.digest);
    let r = reg.get(&path).expect(200);
    assert_eq!(r.hdr("content-type"), OCI_INDEX);
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{v}");
    let find = |d: &str| {
        list.iter()
            .find(|m| m["digest"] == d)
            .unwrap_or_else(|| panic!("{d} not listed in {v}"))
            .clone()
    };
    let ea = find(&ad);
    assert_eq!(ea["mediaType"], OCI_MANIFEST);
    assert_eq!(ea["size"], a.len());
    assert_eq!(ea["artifactType"], "application/vnd.example.sbom");
    assert_eq!(ea["annotations"]["org.example.kind"], "sbom");
    let eb = find(&bd);
    assert_eq!(
        eb["artifactType"], "application/vnd.example.signature.config",
        "config mediaType stands in for artifactType"
    );
    assert_eq!(eb["annotations"]["org.example.kind"], "signature");
    let ei = find(&id);
    assert_eq!(ei["mediaType"], OCI_INDEX);
    assert_eq!(ei["artifactType"], "application/vnd.example.bundle");
    assert!(r.header("oci-filters-applied").is_none());

    // Filtering by artifactType.
    let r = reg
        .send(reg.req(
            Method::GET,
            &format!("{path}?artifactType=application%2Fvnd.example.sbom"),
        ))
        .expect(200);
    assert_eq!(r.hdr("oci-filters-applied"), "artifactType");
    assert_eq!(r.hdr("content-type"), OCI_INDEX);
    let v = r.json();
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["digest"], ad);
    let r = reg
        .send(reg.req(
            Method::GET,
            &format!("{path}?artifactType=application/vnd.example.none"),
        ))
        .expect(200);
    assert_eq!(r.hdr("oci-filters-applied"), "artifactType");
    assert!(r.json()["manifests"].as_array().unwrap().is_empty());

    // A digest with no referrers, and a subject that does not exist.
    for d in [sha256(&subject.config), ZERO_DIGEST.to_owned()] {
        let r = reg.get(&format!("/v2/{repo}/referrers/{d}")).expect(200);
        assert_eq!(r.hdr("content-type"), OCI_INDEX);
        let v = r.json();
        assert_eq!(v["schemaVersion"], 2);
        assert!(v["manifests"].as_array().unwrap().is_empty(), "{v}");
    }
    // Referrers are per repository.
    let r = reg.get(&format!("/v2/disc/other/referrers/{}", subject.digest));
    if r.status == 200 {
        assert!(r.json()["manifests"].as_array().unwrap().is_empty());
    } else {
        r.expect(404);
    }

    // Deleting a referrer takes it off the list.
    reg.delete(&format!("/v2/{repo}/manifests/{ad}"))
        .expect(202);
    let v = reg.get(&path).expect(200).json();
    let digests: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests.len(), 2, "{v}");
    assert!(!digests.contains(&ad.as_str()));
}

/// A manifest may name a subject the registry does not have (yet).
#[test]
fn discovery_referrer_to_missing_subject() {
    let reg = Reg::start();
    let repo = "disc/dangling";
    let empty = b"{}".to_vec();
    reg.push_blob(repo, &empty);
    let missing = sha256(b"a manifest pushed later");
    let a = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig",
        "config": desc(OCI_EMPTY, &empty),
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": missing, "size": 123}
    }))
    .unwrap();
    let r = reg
        .put_manifest(repo, "sig", Some(OCI_MANIFEST), &a)
        .expect(201);
    assert_eq!(r.hdr("oci-subject"), missing);
    let v = reg
        .get(&format!("/v2/{repo}/referrers/{missing}"))
        .expect(200)
        .json();
    assert_eq!(v["manifests"][0]["digest"], sha256(&a));
}
