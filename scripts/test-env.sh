#!/usr/bin/env bash
# Installs what the tests need, idempotently: Debian peers (skopeo, podman,
# containerd, distribution), the bench's load generators and nginx, an
# S3-compatible server (s3s-fs), and the wasm32 toolchain and tools of the
# edge shells. Seconds when all is there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
log() { printf '[test-env] %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: the real peers the end-to-end tests run against, and
# the load generators and nginx ceiling of `cargo xtask bench`; haproxy
# serializes requests to s3s-fs for the scale-out tests (see tests/tests/fleet.rs);
# chromium renders the status page (tests/tests/status.rs); dpkg-dev and
# systemd (systemd-analyze) build and check the Debian package (xtask/src/deb.rs).
debs=(skopeo podman containerd docker-registry apache2-utils openssl uidmap fuse-overlayfs tinyproxy
  curl wrk nginx-light haproxy chromium dpkg-dev systemd)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The nginx package starts a system-wide server on port 80; the bench
  # runs its own.
  if [[ " ${missing[*]} " == *" nginx-light "* ]]; then
    as_root service nginx stop >/dev/null 2>&1 || as_root pkill -x nginx || true
  fi
fi

# s3s-fs: a real S3 server that checks signatures and supports conditional
# writes (moto accepts any signature; s3rver lacks If-None-Match).
if ! command -v s3s-fs >/dev/null; then
  log "cargo install s3s-fs (a few minutes, once per machine)"
  cargo install s3s-fs@0.17.0 --locked --features binary --ignore-rust-version --quiet
fi

# wasm32 toolchain and the edge tools (wasm-bindgen-cli, wasm-pack,
# worker-build, wasm-opt): there is no `rustup target add` on this machine
# kind; the shared script builds them offline (about 14 minutes once,
# seconds afterwards). Elsewhere: rustup target add + cargo install.
# The script sits beside the checkout on this machine kind (../shared), or in
# /work/shared when the checkout is a clone elsewhere (CI).
toolchain_script=""
for d in "$here/../shared" /work/shared; do
  if [ -f "$d/toolchain/install-wasm-toolchain.sh" ]; then
    toolchain_script="$d/toolchain/install-wasm-toolchain.sh"
    break
  fi
done
if [ -n "$toolchain_script" ]; then
  as_root bash "$toolchain_script"
else
  log "no shared wasm toolchain script; using rustup target add and cargo install"
  rustup target add wasm32-unknown-unknown
  command -v wasm-bindgen >/dev/null || cargo install wasm-bindgen-cli --version 0.2.130
  command -v wasm-pack >/dev/null || cargo install wasm-pack --version 0.15.1 --locked
  command -v worker-build >/dev/null || cargo install worker-build --version 0.8.7 --locked
fi
# The fuzz targets (fuzz/, `cargo xtask fuzz`) build on nightly with
# cargo-fuzz.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "rustup toolchain install nightly"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "cargo install cargo-fuzz (a minute or two, once per machine)"
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
log "ready"
