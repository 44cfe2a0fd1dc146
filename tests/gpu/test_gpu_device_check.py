"""gpu/device_check.py runs end to end here with --dry-run (tiny sizes; NumPy when there is
no CUDA device; sections needing PyTorch or CuPy recorded as skipped) and writes the JSON
and the table the GPU machine's run will write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "gpu" / "device_check.py"
SECTIONS = ["environment", "tests", "load", "batch", "one_query", "crossover"]


def test_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--dry-run", "--skip-tests"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert {
        "schema",
        "started",
        "finished",
        "dry_run",
        "sections",
        "environment",
        "tests",
        "benchmarks",
    } <= set(report)
    assert report["dry_run"] is True and report["finished"]
    assert list(report["sections"]) == SECTIONS
    assert report["sections"]["tests"]["status"] == "skipped"
    for name in ("environment", "load", "batch", "one_query", "crossover"):
        assert report["sections"][name]["status"] == "ok", (name, report["sections"][name])
    environment = report["environment"]
    for key in (
        "python",
        "numpy",
        "cupy",
        "torch",
        "gcc",
        "nvcc",
        "python_headers",
        "native_engine",
        "device_info",
    ):
        assert key in environment, key
    benchmarks = report["benchmarks"]
    assert benchmarks["load"]["n"] == report["sizes"]["n_large"]
    assert benchmarks["batch"]["device_search"]["median_ms"] > 0
    if environment["device_info"] is None:  # no CUDA device: nothing for PyTorch to run on
        assert "skipped" in benchmarks["batch"]["torch"]
    assert benchmarks["one_query"]["including_transfers"]["reps"] >= 1
    crossover = benchmarks["crossover"]["by_n"]
    assert set(crossover) == {str(report["sizes"]["n_small"]), str(report["sizes"]["n_large"])}
    for entry in crossover.values():
        assert entry["batches"] and {"batch", "device_ms", "cpu_ms"} <= set(entry["batches"][0])
    table = (out / "device_check.md").read_text()
    assert "# ferromem device check" in table and "Crossover at N" in table
