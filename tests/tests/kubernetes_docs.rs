//! docs/kubernetes.md stays applicable: every ```yaml block parses (several
//! documents per block, split by `---`) into Kubernetes objects of known
//! kinds with `apiVersion`, `kind` and `metadata.name`; workloads' selectors
//! match their pods, containers have images, volume mounts and
//! ConfigMap/Secret references name things the page declares, Services
//! select a workload and target a port it names. kura's `config.yaml` in
//! each ConfigMap passes `kura config check`, alone and with the
//! environment the kura containers set (secrets taken from the page's
//! Secret). The containerd `hosts.toml` files in the DaemonSet's ConfigMap
//! parse as TOML, have what containerd reads (`server`, `[host."…"]` with
//! `capabilities`), point at the kura Service, and name registries kura
//! mirrors. Every ```toml block parses.
//!
//! Needs nothing but the kura binary.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use kura_tests::{kura_bin, workspace_root};
use serde::Deserialize;
use serde_yaml_ng::Value;

const PAGE: &str = "docs/kubernetes.md";
const NAMESPACED: &[&str] = &[
    "ConfigMap",
    "Secret",
    "Service",
    "StatefulSet",
    "Deployment",
    "DaemonSet",
];
const WORKLOADS: &[&str] = &["StatefulSet", "Deployment", "DaemonSet"];

/// One object from the page: which block (1-based) and line it is in.
struct Object {
    block: usize,
    line: usize,
    v: Value,
}

impl Object {
    fn kind(&self) -> &str {
        self.v["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.v["metadata"]["name"].as_str().unwrap_or("")
    }
    fn at(&self) -> String {
        format!(
            "{PAGE} block {} (line {}): {} {:?}",
            self.block,
            self.line,
            self.kind(),
            self.name()
        )
    }
}

/// The fenced blocks of `lang` in `text`, with the line each starts on.
fn fenced(text: &str, lang: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim() == format!("```{lang}") => current = Some((i + 2, String::new())),
            None => {}
            Some(_) if line.trim() == "```" => blocks.push(current.take().unwrap()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(current.is_none(), "{PAGE}: a ```{lang} block is not closed");
    blocks
}

fn page() -> String {
    std::fs::read_to_string(workspace_root().join(PAGE)).expect("reading docs/kubernetes.md")
}

fn objects() -> Vec<Object> {
    let mut out = Vec::new();
    let blocks = fenced(&page(), "yaml");
    assert!(
        blocks.len() >= 3,
        "{PAGE}: expected the single-instance, S3 and DaemonSet blocks, found {}",
        blocks.len()
    );
    for (n, (line, body)) in blocks.iter().enumerate() {
        // Where each document starts, for messages.
        let mut starts = vec![*line];
        starts.extend(
            body.lines()
                .enumerate()
                .filter(|(_, l)| l.trim_end() == "---")
                .map(|(i, _)| line + i + 1),
        );
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(body).enumerate() {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{PAGE} block {} (line {line}): not YAML: {e}", n + 1));
            if v.is_null() {
                continue;
            }
            out.push(Object {
                block: n + 1,
                line: starts.get(i).copied().unwrap_or(*line),
                v,
            });
        }
    }
    out
}

/// The object of `kind` named `name`, preferring the block `block` (each
/// block is applied on its own; the S3 block replaces the first one's
/// ConfigMap under the same name).
fn find<'a>(objs: &'a [Object], block: usize, kind: &str, name: &str) -> Option<&'a Object> {
    let matching = || objs.iter().filter(|o| o.kind() == kind && o.name() == name);
    matching()
        .find(|o| o.block == block)
        .or_else(|| matching().next())
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A pod spec's containers and init containers.
fn containers(pod: &Value) -> Vec<&Value> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod[*k].as_sequence())
        .flatten()
        .collect()
}

/// `kura config check` of `yaml` with exactly `env` as KURA_* variables;
/// the effective configuration (stdout) or the error.
fn config_check(yaml: &str, env: &[(String, String)]) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(kura_bin());
    cmd.args(["config", "check"]).arg(&file);
    for (k, _) in std::env::vars() {
        if k.starts_with("KURA_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().expect("running kura config check");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        // The first line says what is wrong; the rest is a backtrace.
        Err(err.lines().next().unwrap_or_default().to_owned())
    }
}

#[test]
fn manifests_are_well_formed() {
    let objs = objects();
    let api_versions: BTreeMap<&str, &str> = [
        ("Namespace", "v1"),
        ("ConfigMap", "v1"),
        ("Secret", "v1"),
        ("Service", "v1"),
        ("StatefulSet", "apps/v1"),
        ("Deployment", "apps/v1"),
        ("DaemonSet", "apps/v1"),
    ]
    .into();
    let namespaces: BTreeSet<&str> = objs
        .iter()
        .filter(|o| o.kind() == "Namespace")
        .map(Object::name)
        .collect();
    for o in &objs {
        let at = o.at();
        assert!(o.v.is_mapping(), "{at}: not a mapping");
        let kind = o.kind();
        let Some(api) = api_versions.get(kind) else {
            panic!("{at}: kind {kind:?} is not one this page should use ({api_versions:?})");
        };
        assert_eq!(o.v["apiVersion"].as_str(), Some(*api), "{at}: apiVersion");
        let name = o.name();
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !name.starts_with('-')
                && !name.ends_with('-'),
            "{at}: metadata.name must be a DNS label"
        );
        if NAMESPACED.contains(&kind) {
            let ns = o.v["metadata"]["namespace"].as_str().unwrap_or("");
            assert!(
                namespaces.contains(ns),
                "{at}: namespace {ns:?} is not one the page declares ({namespaces:?})"
            );
        }
    }
    for kind in [
        "Namespace",
        "ConfigMap",
        "StatefulSet",
        "Deployment",
        "Service",
        "DaemonSet",
        "Secret",
    ] {
        assert!(
            objs.iter().any(|o| o.kind() == kind),
            "{PAGE} has no {kind}"
        );
    }
}

#[test]
fn workloads_reference_what_the_page_declares() {
    let objs = objects();
    let mut workloads = 0;
    for o in objs.iter().filter(|o| WORKLOADS.contains(&o.kind())) {
        workloads += 1;
        let at = o.at();
        let spec = &o.v["spec"];
        let labels = spec["template"]["metadata"]["labels"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{at}: no pod template labels"));
        let selector = spec["selector"]["matchLabels"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{at}: no spec.selector.matchLabels"));
        for (k, v) in selector {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{at}: selector {k:?} does not match the pod's labels"
            );
        }
        let pod = &spec["template"]["spec"];
        let mut volumes: BTreeSet<&str> = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|v| {
                v["name"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{at}: a volume has no name"))
            })
            .collect();
        for t in spec["volumeClaimTemplates"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            volumes.insert(t["metadata"]["name"].as_str().expect("claim template name"));
        }
        let cs = containers(pod);
        assert!(!cs.is_empty(), "{at}: no containers");
        let mut mounted = BTreeSet::new();
        for c in &cs {
            let cname = c["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: a container has no name"));
            let image = c["image"].as_str().unwrap_or("");
            assert!(!image.is_empty(), "{at}: container {cname} has no image");
            assert!(
                image.contains(':'),
                "{at}: container {cname}: pin the image's tag ({image})"
            );
            for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
                let mname = m["name"].as_str().unwrap_or("");
                assert!(
                    volumes.contains(mname),
                    "{at}: container {cname} mounts {mname:?}, which is not among its volumes {volumes:?}"
                );
                assert!(
                    m["mountPath"].as_str().is_some_and(|p| p.starts_with('/')),
                    "{at}: container {cname}: mount {mname:?} needs an absolute mountPath"
                );
                mounted.insert(mname);
            }
            let ports: BTreeSet<&str> = c["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str())
                .collect();
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                let port = &c[probe]["httpGet"]["port"];
                if let Some(p) = port.as_str() {
                    assert!(
                        ports.contains(p),
                        "{at}: {cname}'s {probe} names port {p:?}, not among {ports:?}"
                    );
                }
            }
            for e in c["env"].as_sequence().into_iter().flatten() {
                let r = &e["valueFrom"]["secretKeyRef"];
                if r.is_null() {
                    continue;
                }
                let (sname, key) = (
                    r["name"].as_str().unwrap_or(""),
                    r["key"].as_str().unwrap_or(""),
                );
                let secret = find(&objs, o.block, "Secret", sname).unwrap_or_else(|| {
                    panic!("{at}: {cname} reads Secret {sname:?}, which the page does not declare")
                });
                assert!(
                    !secret.v["stringData"][key].is_null() || !secret.v["data"][key].is_null(),
                    "{at}: Secret {sname} has no key {key:?}"
                );
            }
        }
        for v in pod["volumes"].as_sequence().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap_or("");
            assert!(
                mounted.contains(vname),
                "{at}: volume {vname:?} is declared but not mounted"
            );
            if let Some(cm) = v["configMap"]["name"].as_str() {
                assert!(
                    find(&objs, o.block, "ConfigMap", cm).is_some(),
                    "{at}: volume {vname:?} is ConfigMap {cm:?}, which the page does not declare"
                );
            }
        }
    }
    assert!(
        workloads >= 3,
        "{PAGE}: expected a StatefulSet, a Deployment and a DaemonSet"
    );

    for svc in objs.iter().filter(|o| o.kind() == "Service") {
        let at = svc.at();
        let selector = svc.v["spec"]["selector"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{at}: no selector"));
        let targets: Vec<&Object> = objs
            .iter()
            .filter(|w| WORKLOADS.contains(&w.kind()))
            .filter(|w| {
                let labels = &w.v["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        assert!(!targets.is_empty(), "{at}: selects no workload on the page");
        for p in svc.v["spec"]["ports"].as_sequence().into_iter().flatten() {
            let Some(target) = p["targetPort"].as_str() else {
                continue;
            };
            for w in &targets {
                let named = containers(&w.v["spec"]["template"]["spec"])
                    .iter()
                    .any(|c| {
                        c["ports"]
                            .as_sequence()
                            .into_iter()
                            .flatten()
                            .any(|cp| cp["name"].as_str() == Some(target))
                    });
                assert!(
                    named,
                    "{at}: targetPort {target:?} is not a port of {}",
                    w.at()
                );
            }
        }
    }
}

/// kura's config.yaml of every ConfigMap, and of every kura container with
/// the environment it gets.
#[test]
fn kura_configs_pass_config_check() {
    let objs = objects();
    let mut checked = 0;
    for cm in objs.iter().filter(|o| o.kind() == "ConfigMap") {
        let Some(yaml) = cm.v["data"]["config.yaml"].as_str() else {
            continue;
        };
        if let Err(e) = config_check(yaml, &[]) {
            panic!(
                "{}: kura config check rejects its config.yaml: {e}",
                cm.at()
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 2,
        "{PAGE}: expected kura's ConfigMaps (one instance, S3)"
    );

    for w in objs.iter().filter(|o| WORKLOADS.contains(&o.kind())) {
        let pod = &w.v["spec"]["template"]["spec"];
        for c in containers(pod) {
            let command = strings(&c["command"]);
            if command.first() != Some(&"/usr/bin/kura") {
                continue;
            }
            let at = format!("{}, container {}", w.at(), c["name"].as_str().unwrap_or(""));
            // --config FILE: the ConfigMap mounted over its directory.
            let file = command
                .iter()
                .position(|a| *a == "--config")
                .and_then(|i| command.get(i + 1))
                .unwrap_or_else(|| panic!("{at}: no --config"));
            let (dir, key) = file.rsplit_once('/').unwrap();
            let mount = c["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|m| m["mountPath"].as_str() == Some(dir))
                .unwrap_or_else(|| panic!("{at}: nothing is mounted at {dir} for {file}"));
            let volume = pod["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("{at}: no volume for the mount at {dir}"));
            let cm_name = volume["configMap"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: {dir} is not a ConfigMap"));
            let cm = find(&objs, w.block, "ConfigMap", cm_name)
                .unwrap_or_else(|| panic!("{at}: no ConfigMap {cm_name}"));
            let yaml = cm.v["data"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: ConfigMap {cm_name} has no key {key:?}"));
            let mut env = Vec::new();
            for e in c["env"].as_sequence().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or("").to_owned();
                let value = if let Some(v) = e["value"].as_str() {
                    v.to_owned()
                } else {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    let secret = find(&objs, w.block, "Secret", r["name"].as_str().unwrap_or(""))
                        .unwrap_or_else(|| panic!("{at}: {name} reads an undeclared Secret"));
                    secret.v["stringData"][r["key"].as_str().unwrap_or("")]
                        .as_str()
                        .unwrap_or_else(|| {
                            panic!("{at}: {name}: the Secret's stringData lacks the key")
                        })
                        .to_owned()
                };
                env.push((name, value));
            }
            let effective = config_check(yaml, &env).unwrap_or_else(|e| {
                panic!("{at}: kura config check with the container's environment: {e}")
            });
            // The listen address must be the port the container declares.
            let port = c["ports"][0]["containerPort"]
                .as_u64()
                .expect("a container port");
            assert!(
                effective
                    .lines()
                    .any(|l| l.trim() == format!("listen: 0.0.0.0:{port}")),
                "{at}: kura does not listen on 0.0.0.0:{port}:\n{effective}"
            );
        }
    }
}

#[test]
fn containerd_hosts_files_point_at_kura() {
    let objs = objects();
    // The addresses the kura Services answer on.
    let kura_urls: BTreeSet<String> = objs
        .iter()
        .filter(|o| o.kind() == "Service" && o.name() == "kura")
        .flat_map(|s| {
            let ip = s.v["spec"]["clusterIP"].as_str().unwrap_or("").to_owned();
            s.v["spec"]["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(move |p| p["port"].as_u64().map(|port| format!("http://{ip}:{port}")))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        !kura_urls.is_empty(),
        "{PAGE}: no Service kura with a clusterIP"
    );
    // The registries every kura ConfigMap mirrors.
    let mut mirrored: Option<BTreeSet<String>> = None;
    for cm in objs.iter().filter(|o| o.kind() == "ConfigMap") {
        let Some(yaml) = cm.v["data"]["config.yaml"].as_str() else {
            continue;
        };
        let effective = config_check(yaml, &[])
            .unwrap_or_else(|e| panic!("{}: kura config check: {e}", cm.at()));
        let effective: Value = serde_yaml_ng::from_str(&effective)
            .unwrap_or_else(|e| panic!("{}: kura config check printed no YAML: {e}", cm.at()));
        let names: BTreeSet<String> = effective["mirror"]["upstreams"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|u| u["name"].as_str().map(str::to_owned))
            .collect();
        mirrored = Some(match mirrored {
            None => names,
            Some(m) => m.intersection(&names).cloned().collect(),
        });
    }
    let mirrored = mirrored.expect("kura's ConfigMaps");

    let mut files = 0;
    for cm in objs.iter().filter(|o| o.kind() == "ConfigMap") {
        let Some(data) = cm.v["data"].as_mapping() else {
            continue;
        };
        for (k, v) in data {
            let (Some(key), Some(text)) = (k.as_str(), v.as_str()) else {
                continue;
            };
            let Some(registry) = key.strip_suffix(".toml") else {
                continue;
            };
            files += 1;
            let at = format!("{}, {key}", cm.at());
            let t: toml::Table = text
                .parse()
                .unwrap_or_else(|e| panic!("{at}: not TOML: {e}"));
            let server = t
                .get("server")
                .and_then(|s| s.as_str())
                .unwrap_or_else(|| panic!("{at}: no server"));
            assert!(
                server.starts_with("https://"),
                "{at}: server should be the upstream over https: {server}"
            );
            let hosts = t
                .get("host")
                .and_then(|h| h.as_table())
                .unwrap_or_else(|| panic!("{at}: no [host.\"…\"]"));
            assert!(!hosts.is_empty(), "{at}: no [host.\"…\"]");
            for (url, h) in hosts {
                assert!(
                    kura_urls.contains(url),
                    "{at}: host {url:?} is not the kura Service ({kura_urls:?})"
                );
                let caps: Vec<&str> = h
                    .get("capabilities")
                    .and_then(|c| c.as_array())
                    .unwrap_or_else(|| panic!("{at}: host {url} has no capabilities"))
                    .iter()
                    .map(|c| {
                        c.as_str()
                            .unwrap_or_else(|| panic!("{at}: capabilities are strings"))
                    })
                    .collect();
                for c in &caps {
                    assert!(
                        ["pull", "resolve", "push"].contains(c),
                        "{at}: unknown capability {c:?}"
                    );
                }
                for needed in ["pull", "resolve"] {
                    assert!(
                        caps.contains(&needed),
                        "{at}: a mirror needs {needed:?}: {caps:?}"
                    );
                }
            }
            assert!(
                mirrored.contains(registry),
                "{at}: kura does not mirror {registry} (its upstreams: {mirrored:?}); containerd would always fall back"
            );
        }
    }
    assert!(files >= 1, "{PAGE}: no hosts.toml files in a ConfigMap");
}

#[test]
fn toml_blocks_parse() {
    let blocks = fenced(&page(), "toml");
    assert!(
        !blocks.is_empty(),
        "{PAGE}: the containerd config_path snippet is missing"
    );
    for (line, body) in blocks {
        if let Err(e) = body.parse::<toml::Table>() {
            panic!("{PAGE} line {line}: not TOML: {e}");
        }
        assert!(
            body.contains("config_path = \"/etc/containerd/certs.d\""),
            "{PAGE} line {line}"
        );
    }
}
