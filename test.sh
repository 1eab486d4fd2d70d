#!/usr/bin/env bash
# Every test, from scratch: installs what it needs (the wasm target, etcd, Python packages),
# then runs the Rust checks and tests (core, component, simulator property search, real
# etcd, fake-Juju end-to-end, conformance vectors), then the Python and Go hosts' tests.
# Usage: ./test.sh   (ROLLINGOPS_SEEDS=10000 ./test.sh for a wider property search).
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }

step "toolchain: wasm32-wasip2 target, rustfmt, clippy"
rustup target add wasm32-wasip2
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "etcd (Debian's etcd-server, etcd-client) for the real-etcd tests"
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
etcd --version | head -1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings (host target and the wasm component)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p rollingops-guest --target wasm32-wasip2 -- -D warnings

step "cargo test (core, component boundary, simulator; ${ROLLINGOPS_SEEDS:-1000} property seeds)"
cargo test --workspace

step "Python host (pytest + ops.testing, ruff, mypy)"
host/python/run_tests.sh

step "Go host (gofmt, go vet, go test over the C ABI)"
host/go/run_tests.sh

step "all tests passed"
