#!/usr/bin/env bash
# Python host: venv, rollingops.wasm, lint, tests. Works from a fresh clone; needs python3 (>= 3.10),
# cargo with the wasm32-wasip2 target, and the PyPI registry.
#
#   host/python/run_tests.sh              # everything
#   host/python/run_tests.sh -k compat    # extra arguments go to pytest
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="${ROLLINGOPS_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

./build_wasm.sh
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test,compat]' 'setuptools>=77' wheel

echo '== ruff'
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .

echo '== mypy --strict'
"$venv/bin/mypy" --strict src/rollingops

echo '== wheel carries rollingops.wasm'
wheel_dir="$(mktemp -d)"
trap 'rm -rf "$wheel_dir" "$here/build"' EXIT
"$venv/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$wheel_dir" . >/dev/null
"$venv/bin/python" - "$wheel_dir" <<'PY'
import pathlib, sys, zipfile
[wheel] = pathlib.Path(sys.argv[1]).glob('rollingops-*.whl')
names = zipfile.ZipFile(wheel).namelist()
for needed in ('rollingops/rollingops.wasm', 'rollingops/py.typed'):
    assert needed in names, f'{needed} missing from {wheel.name}'
print(f'{wheel.name}: ok')
PY
rm -rf "$here/build"

echo '== pytest'
"$venv/bin/python" -m pytest "$@"
