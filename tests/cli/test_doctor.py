"""`ferromem doctor`: the machine as the planner sees it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ferromem import _planner


def _doctor(tmp_path, *args):
    env = {**os.environ, "FERROMEM_CACHE_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "ferromem", "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_doctor_reports_simd_gpu_calibration_and_typical_paths(tmp_path):
    out = _doctor(tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["simd"]["active"] in report["simd"]["supported"]
    assert report["gpu"]["present"] in (True, False)
    if not _planner.cupy_installed():
        assert report["gpu"] == {
            "present": False,
            "why": "CuPy is not installed (pip install 'ferromem[gpu]')",
        }
    for dim in ("d384", "d1536"):
        assert set(report["calibration"][dim]["cpu"]) == {"call", "one_value", "pass_value", "batch_value"}
    assert len(report["typical_calls"]) == 18
    for call in report["typical_calls"]:
        assert call["path"] == min(call["predicted_ms"], key=call["predicted_ms"].get)
        if call["queries"] == 1:
            assert call["path"] == "cpu-one"
    # Measured once: the second run reads the cache (and prints the same table).
    assert (tmp_path / _planner.CACHE_FILE).is_file()
    again = json.loads(_doctor(tmp_path, "--json", "--no-measure").stdout)
    assert again["calibration"] == report["calibration"]
    text = _doctor(tmp_path).stdout
    assert "SIMD:" in text and "GPU:" in text and "typical exact searches" in text


def test_doctor_without_measuring_and_an_empty_cache(tmp_path):
    out = _doctor(tmp_path, "--no-measure")
    assert out.returncode == 0, out.stderr
    assert "not measured" in out.stdout
    assert not (tmp_path / _planner.CACHE_FILE).exists()
