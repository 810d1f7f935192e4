#!/usr/bin/env bash
# Installs what the tests need, idempotently: Debian peers (skopeo, podman,
# containerd, distribution), an S3-compatible server (s3s-fs), and the wasm32
# toolchain used to prove kura-core stays edge-ready. Seconds when all is there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
log() { printf '[test-env] %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: the real peers the end-to-end tests run against.
debs=(skopeo podman containerd docker-registry apache2-utils openssl uidmap fuse-overlayfs tinyproxy)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# s3s-fs: a real S3 server that checks signatures and supports conditional
# writes (moto accepts any signature; s3rver lacks If-None-Match).
if ! command -v s3s-fs >/dev/null; then
  log "cargo install s3s-fs (a few minutes, once per machine)"
  cargo install s3s-fs@0.17.0 --locked --features binary --ignore-rust-version --quiet
fi

# wasm32 toolchain: there is no `rustup target add` on this machine kind; the
# shared script builds one offline. Elsewhere, rustup does it.
if ! rustup toolchain list | grep -q '^wasm'; then
  if [ -f "$here/../shared/toolchain/install-wasm-toolchain.sh" ]; then
    log "installing the wasm toolchain (about 2 minutes, once per machine)"
    SKIP_CARGO_TOOLS=1 SKIP_NPM_TOOLS=1 as_root bash "$here/../shared/toolchain/install-wasm-toolchain.sh"
  else
    log "no shared wasm toolchain script; using rustup target add"
    rustup target add wasm32-unknown-unknown
  fi
fi
log "ready"
