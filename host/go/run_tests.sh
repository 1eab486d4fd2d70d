#!/usr/bin/env bash
# The Go host's checks: build the C ABI static library (cargo, debug, shared target dir),
# then gofmt, go vet and go test (unit tests, the 3-unit rolling restart, and the
# conformance vectors in tests/vectors). The module uses the standard library only; any
# module it ever needs comes through the Go module proxy
# (GOPROXY). Usage: host/go/run_tests.sh [go test flags...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

step() { printf '\n==> %s\n' "$*"; }

if ! command -v go >/dev/null 2>&1; then
    echo "go is not installed; the Go host cannot be tested" >&2
    exit 1
fi

step "cargo build -p rollingops-capi (target/debug/librollingops_capi.a)"
(cd "$root" && cargo build -p rollingops-capi)

cd "$here"
export CGO_ENABLED=1

step "go mod download"
go mod download

step "gofmt -l"
unformatted="$(gofmt -l .)"
if [ -n "$unformatted" ]; then
    echo "gofmt would change:" >&2
    echo "$unformatted" >&2
    exit 1
fi

step "go vet ./..."
go vet ./...

step "go test ./..."
go test -count=1 "$@" ./...
