#!/usr/bin/env bash
# Build rollingops.wasm (the guest component) and copy it into the Python package, so that
# `pip install host/python` ships it. Run from anywhere.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --manifest-path "$root/Cargo.toml" -p rollingops-guest --profile wasm --target wasm32-wasip2
cp "$root/target/wasm32-wasip2/wasm/rollingops_guest.wasm" "$here/src/rollingops/rollingops.wasm"
echo "built $here/src/rollingops/rollingops.wasm ($(wc -c <"$here/src/rollingops/rollingops.wasm") bytes)"
