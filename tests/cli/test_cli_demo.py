"""The README's first command: ``python -m ferromem demo``, run as a user runs it (a new
process), on a small workload so that it takes seconds."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


def _demo(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ferromem", "demo", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_crewai_demo_runs_both_backends_and_reports(tmp_path):
    pytest.importorskip("crewai.memory.storage.backend", reason="CrewAI 1.x is not installed")
    done = _demo("--n", "80", "--dim", "64", "--recalls", "8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "CrewAI Memory workload: 80 memories, 64-dim embeddings" in out
    for op in (
        "Memory.remember (1 item)",
        "Memory.recall scope+categories",
        "Memory.forget (1 id)",
        "storage.search",
        "storage.save (1 record)",
    ):
        row = next(line for line in out.splitlines() if line.startswith(op))
        assert re.search(r"\d+\.\d+x$", row), row  # both backends timed, ratio printed
    assert "memories stored: 80 vs 80" in out
    assert "Memory Saved" not in out  # CrewAI's per-save panels are silenced
    assert list(tmp_path.iterdir()) == []  # its stores were temporary


def test_store_only_demo_checks_exactness(tmp_path):
    done = _demo("--store-only", "--n", "200", "--recalls", "8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "all exact" in done.stdout and "reopened: " in done.stdout
