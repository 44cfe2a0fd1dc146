#!/usr/bin/env bash
# Builds the wheel that is carried to a lent GPU machine, where gpu/device_check.py runs.
#
# That machine has another CPython (3.12), CuPy and NumPy, but no Rust toolchain and no
# network, so the native modules are built here, once, against CPython's stable ABI
# (FERROMEM_ABI3=1, see setup.py): the wheel, tagged cp311-abi3, loads on every CPython
# from 3.11 on. It lands in gpu/dist/ (ignored by git, small enough to carry; name it in
# the run's carry list). There it is installed without an index and without its
# dependencies (NumPy is already there), into a folder of its own put first on the path,
# which needs no write access to the machine's Python and works where that Python is
# marked externally managed (PEP 668):
#
#   pip install --no-deps --no-index --target gpu/dist/site gpu/dist/ferromem-*.whl
#   export PYTHONPATH=$PWD/gpu/dist/site${PYTHONPATH:+:$PYTHONPATH}
#
# (`pip install --no-deps --no-index gpu/dist/ferromem-*.whl` into the environment itself
# works too where that is allowed.)
#
# Usage: gpu/build_device_wheel.sh [extra options for `pip wheel`, e.g. --no-build-isolation]
#   PYTHON: the interpreter that builds (default python3; CPython 3.11 or later).
# It needs what any build of ferromem needs (cargo, a C compiler, and setuptools-rust and
# Cython 3.1 or later, which pip fetches into an isolated build environment unless
# --no-build-isolation is given). The Rust build is kept in cargo's usual target folder, so
# a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
DIST=gpu/dist
# The stable-ABI build has a build folder of its own (setup.py); it is started afresh so
# that nothing of an earlier tree (a module since removed) travels in the wheel.
BUILD_BASE=build/abi3

rm -rf "$DIST" "$BUILD_BASE"
mkdir -p "$DIST"

echo "== building the stable-ABI wheel with $("$PYTHON" --version 2>&1) into $DIST"
started=$(date +%s)
FERROMEM_ABI3=1 "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$DIST" "$@" .
elapsed=$(($(date +%s) - started))

shopt -s nullglob
wheels=("$DIST"/ferromem-*.whl)
if [ "${#wheels[@]}" -ne 1 ]; then
    echo "expected one ferromem wheel in $DIST, found ${#wheels[@]}" >&2
    exit 1
fi
wheel="${wheels[0]}"
case "$wheel" in
*-cp311-abi3-*.whl) ;;
*)
    echo "the wheel is not tagged cp311-abi3: $wheel" >&2
    exit 1
    ;;
esac

# Both native modules must be the stable-ABI builds (named *.abi3.so); a module built for
# this interpreter only would not load on the other machine's Python.
"$PYTHON" - "$wheel" <<'EOF'
import sys
import zipfile

wheel = sys.argv[1]
names = zipfile.ZipFile(wheel).namelist()
modules = sorted(name for name in names if name.endswith((".so", ".pyd")))
expected = ["ferromem/_buffers.abi3.so", "ferromem/_core.abi3.so"]
if modules != expected:
    sys.exit(f"{wheel}: native modules {modules}, expected {expected}")
EOF

# The newest glibc symbol version the modules need: the other machine's glibc must be at
# least that (printed for the record; `ldd --version` there tells its own).
glibc=""
if command -v objdump >/dev/null; then
    unpacked=$(mktemp -d)
    trap 'rm -rf "$unpacked"' EXIT
    "$PYTHON" -m zipfile -e "$wheel" "$unpacked"
    glibc=$(objdump -T "$unpacked"/ferromem/*.so | grep -o 'GLIBC_[0-9.]*' | sort -u -V | tail -n 1 || true)
fi

size=$(wc -c <"$wheel")
echo "== built $wheel in ${elapsed}s: $((size / 1024)) KiB${glibc:+, needs $glibc or later}"
echo "   install it on the device with:"
echo "   pip install --no-deps --no-index --target gpu/dist/site $wheel"
echo "   export PYTHONPATH=\$PWD/gpu/dist/site\${PYTHONPATH:+:\$PYTHONPATH}"
