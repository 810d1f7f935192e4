//! The Debian package: `cargo xtask deb [--out DIR]`, and its test.
//!
//! - [`deb`] — `cargo build --release -p kura`, then a package tree staged
//!   in a temporary directory and `dpkg-deb --build --root-owner-group`:
//!   `/usr/bin/kura` (stripped), `/etc/kura/config.yaml` (a conffile, from
//!   `packaging/config.yaml`), `/lib/systemd/system/kura.service` (from
//!   `packaging/kura.service`), `/usr/share/doc/kura/`, and maintainer
//!   scripts that reload systemd and stop the service on removal. Depends
//!   come from `dpkg-shlibdeps` (dpkg-dev), or, without it, from the
//!   packages owning the libraries `ldd` lists. Writes
//!   `target/debian/kura_<version>_<arch>.deb` unless `--out DIR` is given.
//! - [`deb_test`] — builds the package and runs `tests/tests/package.rs`
//!   (install with dpkg, run the installed binary on the packaged config,
//!   purge) with the package's path in `KURA_DEB`. Needs root and dpkg.
//!
//! Why not cargo-deb: it is one more `cargo install` (minutes on a fresh
//! two-core machine, every CI run), while dpkg-deb and dpkg-shlibdeps are
//! already on every Debian machine. See docs/debian-package.md.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::{cargo, root, run};

const MAINTAINER: &str = "kura developers <kura@localhost>";
const DESCRIPTION: &str = "OCI / Docker registry and pull-through cache
 kura hosts repositories that accept pushes and mirrors several upstream
 registries (Docker Hub, ghcr.io, quay.io, registry.k8s.io, ...) in one
 process, verifying every blob against its digest and fetching each one
 once however many clients wait for it.
 .
 This package ships the kura binary, a hardened systemd unit (not enabled
 on installation) and /etc/kura/config.yaml, which mirrors Docker Hub,
 ghcr.io, quay.io and registry.k8s.io on port 5000 with data in
 /var/lib/kura.";

const POSTINST: &str = r#"#!/bin/sh
# kura: make systemd see the unit; after an upgrade, restart a running kura
# on the new binary. A fresh install does not enable or start the service:
# review /etc/kura/config.yaml, then `systemctl enable --now kura`.
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    if [ -n "$2" ]; then
        systemctl try-restart kura.service >/dev/null || true
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
# kura: stop the service before its binary goes away.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop kura.service >/dev/null || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
# kura: forget the unit. Purge also drops the enablement links
# (`systemctl enable` made them; dpkg does not know them). The data in
# /var/lib/kura (hosted images, the cache) is left: remove it by hand.
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = purge ]; then
    rm -f /etc/systemd/system/multi-user.target.wants/kura.service
    rm -rf /etc/systemd/system/kura.service.d
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
fi
exit 0
"#;

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kura

Files: *
Copyright: the kura developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
";

/// `cargo xtask deb [--out DIR]`: build the package; prints its path.
pub fn deb_command(args: &[&str]) -> anyhow::Result<()> {
    let out = match args {
        [] => default_out_dir(),
        ["--out", dir] => PathBuf::from(dir),
        _ => bail!("usage: cargo xtask deb [--out DIR]"),
    };
    let path = deb(&out)?;
    println!("{}", path.display());
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn default_out_dir() -> PathBuf {
    target_dir().join("debian")
}

/// Build the release binary and the package in `out_dir`; returns its path.
pub fn deb(out_dir: &Path) -> anyhow::Result<PathBuf> {
    for tool in ["dpkg-deb", "dpkg"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is not installed (Debian's dpkg package)");
        }
    }
    run(Command::new(cargo()).args(["build", "--release", "-p", "kura", "--bin", "kura"]))?;
    let started = Instant::now();
    let binary = target_dir().join("release/kura");
    let version = debian_version(&binary)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;

    let tmp = tempfile::tempdir()?;
    let stage = tmp.path().join("kura");
    let src = root().join("packaging");
    let bin = stage.join("usr/bin/kura");
    mkdirs(&stage, "usr/bin")?;
    strip_into(&binary, &bin)?;
    mode(&bin, 0o755)?;
    install(&src.join("config.yaml"), &stage, "etc/kura/config.yaml")?;
    install(
        &src.join("kura.service"),
        &stage,
        "lib/systemd/system/kura.service",
    )?;
    install(
        &root().join("README.md"),
        &stage,
        "usr/share/doc/kura/README.md",
    )?;
    install(
        &root().join("docs/debian-package.md"),
        &stage,
        "usr/share/doc/kura/debian-package.md",
    )?;
    write(&stage, "usr/share/doc/kura/copyright", COPYRIGHT, 0o644)?;

    // Sizes and checksums of the payload, before DEBIAN/ exists.
    let installed_kib = installed_size_kib(&stage)?;
    let md5sums = output(
        Command::new("md5sum")
            .args([
                "usr/bin/kura",
                "lib/systemd/system/kura.service",
                "usr/share/doc/kura/README.md",
                "usr/share/doc/kura/debian-package.md",
                "usr/share/doc/kura/copyright",
            ])
            .current_dir(&stage),
    )?;
    let depends = depends(&bin)?;

    let mut control = String::new();
    writeln!(control, "Package: kura")?;
    writeln!(control, "Version: {version}")?;
    writeln!(control, "Architecture: {arch}")?;
    writeln!(control, "Maintainer: {MAINTAINER}")?;
    writeln!(control, "Installed-Size: {installed_kib}")?;
    if !depends.is_empty() {
        writeln!(control, "Depends: {depends}")?;
    }
    writeln!(control, "Section: net")?;
    writeln!(control, "Priority: optional")?;
    writeln!(control, "Description: {DESCRIPTION}")?;
    write(&stage, "DEBIAN/control", &control, 0o644)?;
    // Files under /etc are conffiles (Debian policy 10.7.2): dpkg keeps a
    // locally edited one on upgrade and removes it only on purge.
    write(&stage, "DEBIAN/conffiles", "/etc/kura/config.yaml\n", 0o644)?;
    write(&stage, "DEBIAN/md5sums", &(md5sums + "\n"), 0o644)?;
    write(&stage, "DEBIAN/postinst", POSTINST, 0o755)?;
    write(&stage, "DEBIAN/prerm", PRERM, 0o755)?;
    write(&stage, "DEBIAN/postrm", POSTRM, 0o755)?;

    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let deb = out_dir.join(format!("kura_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&stage)
        .arg(&deb))?;
    let size = fs::metadata(&deb)?.len();
    eprintln!(
        "xtask: {} ({:.1} MiB, Depends: {depends}) packaged in {:.1}s after the build",
        deb.display(),
        size as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    );
    Ok(deb)
}

/// Build the package and run `tests/tests/package.rs` against it.
pub fn deb_test() -> anyhow::Result<()> {
    let uid = output(Command::new("id").arg("-u"))?;
    if uid != "0" {
        bail!("the package test installs with dpkg -i and must run as root (uid {uid})");
    }
    let deb = deb(&default_out_dir())?;
    run(Command::new(cargo())
        .args(["test", "-p", "kura-tests", "--test", "package", "--"])
        .args(["--ignored", "--test-threads=1"])
        .env("KURA_DEB", &deb))
}

/// The package version from the built binary (`kura 0.1.0`), in Debian's
/// ordering: a semver pre-release sorts before its release with `~`.
fn debian_version(binary: &Path) -> anyhow::Result<String> {
    let out = output(Command::new(binary).arg("--version"))?;
    let v = out
        .strip_prefix("kura ")
        .with_context(|| format!("unexpected `kura --version`: {out}"))?;
    Ok(v.replacen('-', "~", 1).replace('+', "~"))
}

/// The binary without debug sections and symbols, as dh_strip does (the
/// release profile keeps line tables for backtraces; the package does not
/// need them). A plain copy if binutils is missing.
fn strip_into(from: &Path, to: &Path) -> anyhow::Result<()> {
    let stripped = Command::new("strip")
        .args([
            "--strip-unneeded",
            "--remove-section=.comment",
            "--remove-section=.note",
            "-o",
        ])
        .arg(to)
        .arg(from)
        .status();
    match stripped {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("strip {} failed with {s}", from.display()),
        Err(_) => {
            eprintln!("xtask: strip (binutils) not found; packaging the binary unstripped");
            fs::copy(from, to)
                .map(|_| ())
                .with_context(|| format!("copying {}", from.display()))
        }
    }
}

/// `Depends:` for the binary's shared libraries.
fn depends(bin: &Path) -> anyhow::Result<String> {
    if Command::new("dpkg-shlibdeps")
        .arg("--version")
        .output()
        .is_ok()
    {
        // dpkg-shlibdeps wants a source tree: debian/control naming the package.
        let tree = tempfile::tempdir()?;
        mkdirs(tree.path(), "debian")?;
        fs::write(
            tree.path().join("debian/control"),
            "Source: kura\n\nPackage: kura\nArchitecture: any\n",
        )?;
        let out = output(
            Command::new("dpkg-shlibdeps")
                .arg("-O")
                .arg(bin)
                .current_dir(tree.path()),
        )?;
        return out
            .lines()
            .find_map(|l| l.strip_prefix("shlibs:Depends="))
            .map(str::to_owned)
            .with_context(|| format!("no shlibs:Depends in dpkg-shlibdeps' output: {out}"));
    }
    // Without dpkg-dev: the packages that own what the binary links
    // (unversioned).
    eprintln!("xtask: dpkg-shlibdeps (dpkg-dev) not found; Depends without versions");
    let ldd = output(Command::new("ldd").arg(bin))?;
    let mut packages: Vec<String> = Vec::new();
    for lib in ldd
        .lines()
        .filter_map(|l| l.split("=> ").nth(1))
        .filter_map(|r| r.split_whitespace().next())
    {
        let owner = output(Command::new("dpkg").args(["-S", lib]))?;
        let pkg = owner
            .split([':', ','])
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if !pkg.is_empty() && !packages.contains(&pkg) {
            packages.push(pkg);
        }
    }
    Ok(packages.join(", "))
}

/// Installed-Size: KiB the payload takes, each file rounded up (as
/// dpkg-gencontrol counts), directories one each.
fn installed_size_kib(dir: &Path) -> anyhow::Result<u64> {
    let mut kib = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        kib += if meta.is_dir() {
            1 + installed_size_kib(&entry.path())?
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(kib)
}

fn mkdirs(stage: &Path, rel: &str) -> anyhow::Result<()> {
    let mut dir = stage.to_path_buf();
    fs::create_dir_all(&dir)?;
    mode(&dir, 0o755)?;
    for part in rel.split('/') {
        dir.push(part);
        fs::create_dir_all(&dir)?;
        mode(&dir, 0o755)?;
    }
    Ok(())
}

fn install(from: &Path, stage: &Path, rel: &str) -> anyhow::Result<()> {
    let text = fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    write(stage, rel, &text, 0o644)
}

fn write(stage: &Path, rel: &str, text: &str, m: u32) -> anyhow::Result<()> {
    if let Some((dir, _)) = rel.rsplit_once('/') {
        mkdirs(stage, dir)?;
    }
    let path = stage.join(rel);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    mode(&path, m)
}

fn mode(path: &Path, m: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(m))
        .with_context(|| format!("chmod {m:o} {}", path.display()))
}

/// A command's stdout, trimmed; failure is an error with its stderr.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
