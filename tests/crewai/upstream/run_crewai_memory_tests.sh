#!/usr/bin/env bash
# CrewAI's own memory tests, with every storage they build routed to ferromem.
#
# Downloads the sdist of the CrewAI version installed in the current Python (it ships
# its tests; nothing of CrewAI's is kept in this repository), and runs its tests/memory
# twice with the plugin crewai_routing.py: once routed through ferromem.crewai.install()
# (shared stores), once with every Memory owning its MemoryStorage (close() then reopen).
# Every test must pass; CrewAI's own skips (Qdrant Edge internals without qdrant-edge-py,
# its multiprocessing test) stay skipped. Needs the package registry, nothing else.
#
#   bash tests/crewai/upstream/run_crewai_memory_tests.sh [extra pytest arguments]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
version="$("$python" -c 'import crewai; print(crewai.__version__)')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: "crewai==$version" -d "$work"
tar -xzf "$work/crewai-$version.tar.gz" -C "$work"
cd "$work/crewai-$version"
# Tracing makes each remember() wait ~5 s for a trace upload: off, as in any offline run.
export CREWAI_TRACING_ENABLED=false
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
status=0
for routing in install classes; do
    echo "== CrewAI $version tests/memory, FERROMEM_ROUTING=$routing"
    FERROMEM_ROUTING="$routing" "$python" -m pytest -p crewai_routing -p no:cacheprovider \
        -q tests/memory "$@" || status=$?
done
exit "$status"
