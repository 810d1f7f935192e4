#!/bin/sh
# Release build of the Worker into build/ (wrangler.toml's build command; the
# xtask and the end-to-end test call it too). Extra arguments go to
# worker-build, then cargo: `sh build.sh --features conformance`.
#
# Size settings live here because a workspace member cannot set profiles:
# LTO, opt-level s, one codegen unit, no debug info; worker-build then runs
# wasm-opt -Oz (Cargo.toml metadata).
set -eu
cd "$(dirname "$0")"
export CARGO_PROFILE_RELEASE_LTO=true
export CARGO_PROFILE_RELEASE_OPT_LEVEL=s
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_DEBUG=false
# Use tools already on PATH rather than letting worker-build download them.
for tool in wasm-bindgen:WASM_BINDGEN_BIN wasm-opt:WASM_OPT_BIN esbuild:ESBUILD_BIN; do
    bin=${tool%%:*} var=${tool#*:}
    if eval "[ -z \"\${$var:-}\" ]" && command -v "$bin" >/dev/null 2>&1; then
        export "$var=$bin"
    fi
done
# A machine whose wasm32 std comes from a linked toolchain named `wasm`
# (no `rustup target add`) builds with it.
if [ -z "${RUSTUP_TOOLCHAIN:-}" ] && rustup toolchain list 2>/dev/null | grep -q '^wasm'; then
    export RUSTUP_TOOLCHAIN=wasm
fi
exec worker-build --release "$@"
