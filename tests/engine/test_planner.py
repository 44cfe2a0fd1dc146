"""The search planner from Python: the device policy (open, per call, FERROMEM_DEVICE),
failing closed without a GPU, explain(), and the calibration cache on disk. (The cost
model's choices on a grid of synthetic calibrations are tested in the core:
planner.rs; the device path end to end in tests/gpu.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ferromem
import numpy as np
import pytest
from ferromem import _planner

from conftest import unit_rows


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FERROMEM_CACHE_DIR", str(folder))
    return folder


def _filled(rng, n=3000, dim=64, **kw):
    store = ferromem.open(**kw)
    store.add(
        [f"r{i:05d}" for i in range(n)], unit_rows(rng, n, dim), scopes=[f"/s{i % 7}" for i in range(n)]
    )
    return store


@pytest.mark.skipif(_planner.cupy_installed(), reason="this machine has CuPy: 'no GPU' cannot be shown here")
def test_without_a_gpu_auto_never_picks_one_and_gpu_fails_closed(rng, cache_dir):
    store = _filled(rng)
    queries = unit_rows(rng, 20, 64)
    for q in (queries[0], queries):
        for flt in ({}, {"scope": "/s3"}):
            how = store.explain(q, 10, **flt)
            assert how["path"] in ("cpu-one", "cpu-batch"), how
            assert "CuPy is not installed" in how["no_device"]
    store.search(queries, 10)
    routes = store.stats()["planner"]["routes"]
    assert routes["gpu-exact"] == 0 and routes["cpu-batch"] >= 1, routes
    with pytest.raises(ferromem.DeviceError, match="device policy 'gpu' cannot be met"):
        store.search(queries, 10, device="gpu")
    with pytest.raises(ferromem.DeviceUnavailableError, match="CuPy is not installed"):
        ferromem.open(device="gpu")
    store.close()


def test_policy_values_are_checked(rng, cache_dir, monkeypatch):
    with pytest.raises(ferromem.InvalidInputError, match="device must be 'auto', 'cpu' or 'gpu'"):
        ferromem.open(device="cuda")
    store = _filled(rng, n=100)
    with pytest.raises(ferromem.InvalidInputError, match="device must be"):
        store.search(unit_rows(rng, 1, 64)[0], device="tpu")
    with pytest.raises(ferromem.InvalidInputError, match="device must be"):
        store.explain(unit_rows(rng, 1, 64)[0], device=1)
    monkeypatch.setenv("FERROMEM_DEVICE", "fast")
    with pytest.raises(ferromem.InvalidInputError, match="FERROMEM_DEVICE"):
        ferromem.open()
    monkeypatch.setenv("FERROMEM_DEVICE", "cpu")
    with ferromem.open() as cpu_store:
        assert cpu_store.stats()["planner"]["policy"] == "cpu"
        assert cpu_store.stats()["planner"]["no_device"] == "device policy 'cpu'"
    store.close()


def test_every_path_gives_the_same_results_and_explain_reports_it(rng, cache_dir):
    store = _filled(rng, n=5000)
    queries = unit_rows(rng, 12, 64)
    for flt in ({}, {"scope": "/s2"}):
        batch = store.search(queries, 10, **flt)
        for i, q in enumerate(queries):
            one = store.search(q, 10, device="cpu", **flt)
            assert list(one.ids) == list(batch[i].ids)
            np.testing.assert_allclose(one.scores, batch[i].scores, rtol=0, atol=1e-6)
        how = store.explain(queries, 10, **flt)
        assert how["queries"] == 12 and how["policy"] == "auto"
        assert how["rows"] == (5000 if not flt else sum(1 for i in range(5000) if i % 7 == 2))
        assert how["path"] in how["predicted_ms"] and how["observed_ms"] > 0
        assert (
            min(how["predicted_ms"], key=how["predicted_ms"].get) == how["path"]
            or "hysteresis" in how["reason"]
        )
        assert [list(r.ids) for r in how["results"]] == [list(r.ids) for r in batch]
    store.close()


def test_the_reference_engine_explains_itself_and_has_no_device(rng, cache_dir):
    store = _filled(rng, n=200, engine="reference")
    q = unit_rows(rng, 1, 64)[0]
    how = store.explain(q, 5)
    assert how["path"] == "reference-scan" and list(how["results"].ids) == list(store.search(q, 5).ids)
    assert store.search(q, 5, device="cpu").ids.tolist() == how["results"].ids.tolist()
    with pytest.raises(ferromem.DeviceUnavailableError):
        store.search(q, 5, device="gpu")
    with pytest.raises(ferromem.DeviceUnavailableError):
        ferromem.open(engine="reference", device="gpu")
    store.close()


def test_calibration_is_measured_once_and_cached_on_disk(rng, cache_dir, monkeypatch):
    store = _filled(rng, n=500)
    store.search(unit_rows(rng, 4, 64), 5)  # a batch: the planner needs its constants
    assert store.stats()["planner"]["cpu_calibrated"]
    data = json.loads((cache_dir / _planner.CACHE_FILE).read_text())
    assert data["format"] == _planner.CACHE_FORMAT
    (key,) = data["entries"]
    assert key.startswith("cpu/f32/d64@")
    assert set(data["entries"][key]) == {"call", "one_value", "pass_value", "batch_value"}
    store.close()

    # A second store (as a second process would) reads it instead of measuring again.
    def no_measuring(*a):
        raise AssertionError("measured again")

    monkeypatch.setattr(ferromem._core, "calibrate_cpu", no_measuring)
    again = _filled(rng, n=500)
    again.search(unit_rows(rng, 4, 64), 5)
    assert again.stats()["planner"]["cpu_costs"] == pytest.approx(data["entries"][key])
    again.close()


def test_a_cache_file_not_ours_is_left_alone(rng, cache_dir):
    cache_dir.mkdir()
    foreign = cache_dir / _planner.CACHE_FILE
    foreign.write_text('{"something": "else"}')
    store = _filled(rng, n=300)
    store.search(unit_rows(rng, 3, 64), 5)
    assert store.stats()["planner"]["cpu_calibrated"]  # measured, just not cached
    assert foreign.read_text() == '{"something": "else"}'
    store.close()


def test_importing_ferromem_never_imports_cupy():
    code = "import ferromem, ferromem.gpu, sys; s = ferromem.open(); s.close(); print('cupy' in sys.modules)"
    env = {**os.environ, "FERROMEM_DEVICE": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
