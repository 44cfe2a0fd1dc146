"""ferromem.crewai.v0 (storages for CrewAI 0.x) against a real CrewAI 0.x.

CrewAI 0.x cannot share a virtualenv with CrewAI 1.x, so its scenarios run in the
interpreter named by ``FERROMEM_CREWAI0_PYTHON`` (crewai 0.x and ferromem installed; CI
builds one): the scripts in tests/crewai/crewai0/ drive CrewAI's own memory classes and print
what they observe as JSON, and the assertions are here. Without that interpreter those
tests skip and say why. The storages' argument checks need no CrewAI and run here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import HOSTILE
from ferromem.crewai.v0 import LTMStorage, RAGStorage, ResetNotAllowedError
from ferromem.embedders import HashingEmbedder
from ferromem.exceptions import (
    DimensionMismatchError,
    FerromemError,
    InvalidFilterError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidVectorError,
)

DRIVERS = Path(__file__).resolve().parent / "crewai0"
MARKER = "FERROMEM-RESULT: "
EXIT_NO_CREWAI0 = 3  # the drivers' exit status when crewai 0.x cannot be imported
DRIVER_TIMEOUT_S = 300
# Reported scores come from float32 vectors; the references are float64.
TOL = 1e-5


# ---------------------------------------------------------------------------- drivers


def _interpreter() -> str:
    exe = os.environ.get("FERROMEM_CREWAI0_PYTHON")
    if not exe:
        pytest.skip(
            "FERROMEM_CREWAI0_PYTHON is not set: point it at a Python with crewai 0.x "
            "(0.203.2) and ferromem installed to run the CrewAI 0.x tests"
        )
    return exe


def _env(storage_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Offline: nothing may reach OpenAI; the storages under test never need a key.
    env.pop("OPENAI_API_KEY", None)
    env.update(
        CREWAI_STORAGE_DIR=str(storage_dir),
        CREWAI_DISABLE_TELEMETRY="true",
        CREWAI_TRACING_ENABLED="false",
        OTEL_SDK_DISABLED="true",
        ANONYMIZED_TELEMETRY="False",  # ChromaDB's
        PYTHONIOENCODING="utf-8",
    )
    return env


def _command(script: str, *args: str) -> list[str]:
    return [_interpreter(), str(DRIVERS / script), *args]


def _parse(proc_rc: int, stdout: str, stderr: str, what: str) -> dict[str, Any]:
    if proc_rc == EXIT_NO_CREWAI0:
        pytest.skip(
            f"FERROMEM_CREWAI0_PYTHON={os.environ.get('FERROMEM_CREWAI0_PYTHON')!r} cannot "
            f"run CrewAI 0.x: {stdout.strip()[-500:]}"
        )
    assert proc_rc == 0, (
        f"{what} exited with status {proc_rc}\n--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-4000:]}"
    )
    lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
    assert len(lines) == 1, f"{what} printed {len(lines)} result lines\n{stdout[-4000:]}"
    return json.loads(lines[0][len(MARKER) :])


def _run(script: str, *args: str, base: Path, stdin: str | None = None) -> dict[str, Any]:
    command = _command(script, *args)
    try:
        proc = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=_env(base / "crewai_storage"),
            cwd=base,
            timeout=DRIVER_TIMEOUT_S,
        )
    except OSError as exc:
        pytest.skip(f"FERROMEM_CREWAI0_PYTHON={command[0]!r} cannot be run: {exc}")
    return _parse(proc.returncode, proc.stdout, proc.stderr, f"{script} {' '.join(args)}")


@pytest.fixture(scope="module")
def crewai0(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Every scenario of tests/crewai/crewai0/memories.py, run once: (its directory, results)."""
    base = tmp_path_factory.mktemp("crewai0")
    results = _run("memories.py", "run", str(base / "run"), base=base, stdin=json.dumps({"strings": HOSTILE}))
    assert results["crewai"].startswith("0."), results["crewai"]
    return base, results


def _scenario(crewai0: tuple[Path, dict[str, Any]], name: str) -> dict[str, Any]:
    result = crewai0[1][name]
    assert "error" not in result, f"scenario {name} raised:\n{result.get('error')}"
    return result


def _assert_top(got: list[list[Any]], expected: list[list[Any]], limit: int) -> None:
    """``got`` (rows of id, content, metadata, score) is the top ``limit`` of the exact
    ranking ``expected``: every row is a qualifying record with its own content, metadata
    and score, and position by position the scores are the expected ones, so records
    can only trade places where their scores tie."""
    assert len(got) == min(limit, len(expected)), (len(got), limit, len(expected))
    truth = {row[0]: row for row in expected}
    assert len({row[0] for row in got}) == len(got), "a record is returned twice"
    for position, (row, reference) in enumerate(zip(got, expected)):
        assert row[0] in truth, f"result {position} ({row[1]!r}) should not be there"
        _, content, metadata, score = truth[row[0]]
        assert (row[1], row[2]) == (content, metadata)
        assert abs(row[3] - score) <= TOL, (position, row, score)
        assert abs(row[3] - reference[3]) <= TOL, f"result {position} is out of rank: {row}"


def _case(result: dict[str, Any]) -> None:
    _assert_top(result["got"], result["expected"], result["limit"])


def _crew_id(content: str, metadata: dict[str, Any]) -> str:
    """CrewAI 0.x's id of a saved value, written out independently of ferromem."""
    text = f"{content}|{json.dumps(metadata, sort_keys=True)}" if metadata else content
    return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()


# ---------------------------------------------------------------------------- CrewAI 0.x


def test_memories_on_ragstorage_rank_like_brute_force(crewai0):
    r = _scenario(crewai0, "memories")
    assert r["storage_types"] == ["RAGStorage"] * 3
    assert r["count"] == 25  # the value saved twice with the same metadata is one record
    for case in r["stm"].values():
        _case(case)
    assert all(row[3] >= 0.6 for row in r["stm"]["default"]["got"])
    _case(r["entity"])
    assert {row[1]: row[2] for row in r["entity"]["expected"]} == {
        "Ada Lovelace(person): wrote the first program": {"relationships": "- Babbage"},
        "Analytical Engine(machine): a mechanical computer": {"relationships": "- Ada"},
        "Green Tea Co(company): exports green tea leaf": {"relationships": ""},
    }
    _case(r["external"])
    assert r["external"]["got"][0][2] == {
        "description": "tea task",
        "messages": [{"role": "user", "content": "hi"}],
    }


# How many of the 60 records each filter matches, worked out by hand from the driver's
# data, so that the brute-force reference is itself checked.
FILTER_MATCHES = {
    "{}": 60,
    "{'topic': 'tea'}": 10,
    "{'topic': '50%_off'}": 10,
    "{'topic': '50%xoff'}": 0,
    "{'topic': '5_%_off'}": 0,
    "{'n': 1}": 12,
    "{'n': 0}": 12,
    "{'n': 1.0}": 12,
    "{'flag': True}": 20,
    "{'tag': None}": 30,
    "{'ratio': 2.5}": 20,
    "{'nested': {'k': [1, 2]}}": 15,
    "{'topic': 'tea', 'n': 1}": 2,
    "{'$and': [{'topic': 'tea'}, {'topic': 'coffee'}]}": 0,
}


def test_filtered_search_is_exact(crewai0):
    r = _scenario(crewai0, "filtered")
    seen = set()
    for case in r["cases"]:
        _case(case)
        if case["filter"] in FILTER_MATCHES:
            assert len(case["expected"]) == FILTER_MATCHES[case["filter"]], case["filter"]
            seen.add(case["filter"])
    assert seen == set(FILTER_MATCHES)
    assert len(r["unsupported"]) == 7
    for flt, error in r["unsupported"]:
        assert error is not None, f"{flt} was accepted"
        assert error["type"] == "InvalidFilterError", (flt, error)
        assert error["is_type_error"] and error["is_value_error"]


def test_hostile_strings_round_trip(crewai0):
    r = _scenario(crewai0, "hostile")
    assert r["ids_match"] == [True] * len(HOSTILE)
    for i, (text, seen) in enumerate(zip(HOSTILE, r["values"])):
        metadata = {text: text, "i": i, "key": HOSTILE[-1 - i]}
        assert seen["by_index"] == [[text, metadata]], repr(text)
        assert seen["by_value"] == [i], repr(text)
        assert seen["by_key"] == [i], repr(text)
    assert r["entities"] == sorted([f"{s}({s}): {s}", s] for s in HOSTILE[:5])
    assert r["ltm"] == [
        [
            {
                "metadata": {
                    "quality": i,
                    "suggestions": [text],
                    "agent": text,
                    "expected_output": text,
                },
                "datetime": text,
                "score": float(i),
            }
        ]
        for i, text in enumerate(HOSTILE)
    ]


def test_score_threshold_on_crewai_scale(crewai0):
    r = _scenario(crewai0, "threshold")
    for case in r["cases"]:
        # The threshold sits halfway between two exact scores: float32 cannot cross it.
        assert case["gap"] > 10 * TOL, "threshold too close to a score to be decisive"
        _case(case)
        assert len(case["got"]) == case["k"]
    assert all(0.0 <= s <= 1.0 for s in r["scores"])
    assert (r["zero"], r["none"], r["negative"], r["above_one"]) == (30, 30, 30, 0)
    _case(r["default"])
    assert all(row[3] >= 0.6 for row in r["default"]["got"])


def test_same_answers_as_crewai_chroma_storage(crewai0):
    r = _scenario(crewai0, "parity")
    assert r["chroma_count"] == r["count"] == 31
    for search in r["searches"]:
        assert search["reference"], "the reference search found nothing"
        for name in ("theirs", "ours", "provider"):
            _assert_top(search[name], search["reference"], search["limit"])


def test_long_term_memory_matches_ltm_sqlite_storage(crewai0):
    r = _scenario(crewai0, "long_term")
    for task, latest_n, ours, theirs in r["loads"]:
        assert ours == theirs, (task, latest_n)
    by_key = {(task, n): ours for task, n, ours, _ in r["loads"]}
    full = by_key[("Write the report", -1)]
    # datetime compares as text, descending ("999.0" > "1700000001"), then score
    # ascending with None first, then save order.
    assert [(e["datetime"], e["score"]) for e in full] == [
        ("999.0", 9.0),
        ("1700000001", None),
        ("1700000001", 3.0),
        ("1700000000.5", 7.0),
        ("1700000000.5", 7.0),
        ("1700000000.5", 7.5),
        ("1700000000.5", 8.0),
        ("", 10.0),
    ]
    assert [e["metadata"]["n"] for e in full[3:5]] == [1, 4]
    assert by_key[("Write the report", 0)] is None
    assert by_key[("unknown task", 3)] is None
    # Exact match only: no trimming, case folding or LIKE wildcards.
    for task in ("Write the report ", "write the report", "50%_off", "5_%xoff"):
        assert len(by_key[(task, 10)]) == 1, task
    assert r["context"][0] == r["context"][1]
    assert r["context"][0].startswith("Historical Data:\n- suggestion 2\n")
    assert r["after_reset"] == [None, None]


def test_reset_through_memories(crewai0):
    r = _scenario(crewai0, "resets")
    assert r["before"] == [1, 1]
    assert r["after"] == [[], []]
    assert r["new_dim"] == [64, 1]  # reset frees the dimension, like dropping a collection
    assert r["refused"]["cause"] == "ResetNotAllowedError"
    assert "allow_reset=False" in r["refused"]["message"]
    assert r["kept"] == ["keep me"]


def test_crew_with_ferromem_memories(crewai0):
    r = _scenario(crewai0, "crew_flow")
    assert r["collection"] == ["memory_short_term_Senior_Researcher"] * 2
    assert r["file"] == "memory_short_term_%53enior_%52esearcher.ferro"
    assert r["same_storage"] is True
    for block in (
        "Historical Data:\n- Cite sources",
        "Recent Insights:\n- The green tea market grew in 2024",
        "Entities:\n- Green Tea(product): green tea market leader",
        "External memories:\n- External: green tea market prices",
    ):
        assert block in r["context"]
    assert r["copy_shares_store"] is True and r["copy_is_new_object"] is True
    assert "Saved through the copy: green tea market" in r["seen_by_original"]
    assert r["after_reset"] == [[], [], None, []]


def test_default_locations_follow_crewai(crewai0):
    base, _ = crewai0
    r = _scenario(crewai0, "defaults")
    storage_dir = os.path.realpath(base / "crewai_storage")
    assert os.path.realpath(r["db_storage_path"]) == storage_dir
    assert os.path.realpath(r["rag"]) == os.path.join(storage_dir, "memory_short_term.ferro")
    assert os.path.realpath(r["ltm"]) == os.path.join(storage_dir, "long_term_memory_storage.ferro")
    assert r["empty_search"] == []
    assert r["default_embedder"] == "_DefaultEmbedder"


def test_reopen_in_a_second_process(crewai0):
    base, _ = crewai0
    first = _scenario(crewai0, "persist")
    assert [hit["content"] for hit in first["stm"]][:1] == ["green tea market grew"]
    assert len(first["stm"]) == 3 and len(first["em"]) == 1
    assert [entry["datetime"] for entry in first["ltm"]] == ["2", "1"]
    second = _run("memories.py", "reopen", str(base / "run"), base=base)
    assert second["reopen"] == first


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(tmp_path):
    """Two CrewAI 0.x processes save to the same RAGStorage and LTMStorage files at once."""
    count = 150
    tags = ["A", "B"]
    directory = tmp_path / "shared"
    go = tmp_path / "go"
    procs = []
    for tag in tags:
        command = _command(
            "writer.py", str(directory), tag, str(count), str(tmp_path / f"ready-{tag}"), str(go)
        )
        try:
            procs.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    encoding="utf-8",
                    env=_env(tmp_path / "crewai_storage"),
                    cwd=tmp_path,
                )
            )
        except OSError as exc:
            pytest.skip(f"FERROMEM_CREWAI0_PYTHON={command[0]!r} cannot be run: {exc}")
    try:
        deadline = time.monotonic() + DRIVER_TIMEOUT_S
        while not all((tmp_path / f"ready-{tag}").exists() for tag in tags):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        go.touch()
        outputs = [p.communicate(timeout=DRIVER_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    spans = [
        _parse(p.returncode, stdout, stderr, f"writer {tag}")
        for tag, p, (stdout, stderr) in zip(tags, procs, outputs)
    ]
    first, second = spans
    overlapped = first["started"] < second["finished"] and second["started"] < first["finished"]
    assert overlapped, f"the writers ran one after the other, not at once: {spans}"

    rag = RAGStorage("short_term", path=directory, embedder=HashingEmbedder(384))
    assert len(rag.store) == 2 * count
    saved = [(f"writer {t} note {i}", {"writer": t, "i": i}) for t in tags for i in range(count)]
    records = rag.store.get_many([_crew_id(content, metadata) for content, metadata in saved])
    assert [(r.content, r.metadata) if r else None for r in records] == saved
    ltm = LTMStorage(directory / "ltm.ferro")
    suggestions = []
    for k in range(3):
        entries = ltm.load(f"task {k}", -1)
        datetimes = [e["datetime"] for e in entries]
        assert datetimes == sorted(datetimes, reverse=True)
        suggestions += [s for e in entries for s in e["metadata"]["suggestions"]]
    assert sorted(suggestions) == sorted(f"{t}-{i}" for t in tags for i in range(count))


# ---------------------------------------------------------------------------- no CrewAI needed


def test_module_imports_no_crewai():
    code = (
        "import sys, ferromem.crewai.v0; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('crewai', 'crewai_core', 'chromadb')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Cosines with "a": 1, 0.6, 0 and -1; those of 0 and -1 are exact in float32.
VECTORS = {"a": [1.0, 0.0], "d": [3.0, 4.0], "b": [0.0, 1.0], "c": [-1.0, 0.0]}


def _table_embedder(texts: list[str]) -> list[list[float]]:
    return [VECTORS[t] for t in texts]


def test_scores_and_threshold_exact(tmp_path):
    rag = RAGStorage("t", path=tmp_path, embedder=_table_embedder)
    for text in VECTORS:
        rag.save(text, {"text": text})
    everything = rag.search("a", limit=10, score_threshold=0)
    assert [(h["content"], h["metadata"]) for h in everything] == [
        (t, {"text": t}) for t in ("a", "d", "b", "c")
    ]
    # CrewAI's scale: (1 + cosine) / 2.
    assert [h["score"] for h in everything] == pytest.approx([1.0, 0.8, 0.5, 0.0], abs=1e-6)
    assert (everything[2]["score"], everything[3]["score"]) == (0.5, 0.0)
    assert set(everything[0]) == {"id", "content", "metadata", "score"}
    assert everything[0]["id"] == _crew_id("a", {"text": "a"})
    assert rag.search("a", limit=10, score_threshold=None) == everything

    def contents(**kwargs: Any) -> list[str]:
        return [h["content"] for h in rag.search("a", **kwargs)]

    assert contents() == ["a", "d"]  # limit 5, score_threshold 0.6
    assert contents(score_threshold=0.5) == ["a", "d", "b"]
    assert contents(score_threshold=0.5000001) == ["a", "d"]
    assert contents(score_threshold=-1) == ["a", "d", "b", "c"]
    assert contents(limit=1, score_threshold=0) == ["a"]


def test_save_rejects_bad_input_and_writes_nothing(tmp_path):
    rag = RAGStorage("t", path=tmp_path, embedder=HashingEmbedder(16))
    for metadata in ({"when": datetime.now()}, {"s": {1, 2}}, {"x": math.nan}, {1: "a"}, "text"):
        with pytest.raises(InvalidMetadataError) as info:
            rag.save("value", metadata)
        assert isinstance(info.value, TypeError)
    for value in (42, None, "lone \ud800 surrogate"):
        with pytest.raises(InvalidInputError):
            rag.save(value, {})
    assert len(rag.store) == 0
    rag.save("value", None)  # None metadata is no metadata, as in CrewAI
    assert rag.store.get(_crew_id("value", {})).metadata == {}


def test_search_rejects_bad_arguments(tmp_path):
    rag = RAGStorage("t", path=tmp_path, embedder=HashingEmbedder(16))
    rag.save("value", {"k": 1})
    for limit in (0, -1, True, 2.5):
        with pytest.raises(InvalidInputError):
            rag.search("value", limit=limit)
    with pytest.raises(InvalidInputError):
        rag.search(5)
    with pytest.raises(InvalidInputError):
        rag.search("value", score_threshold="0.5")
    with pytest.raises(InvalidFilterError):
        rag.search("value", filter={"k": {"$lt": 2}})


def test_embedder_arguments(tmp_path):
    with pytest.raises(InvalidInputError):
        RAGStorage("t", path=tmp_path, embedder=HashingEmbedder(16), embedder_config={"provider": "x"})
    for embedder in (42, str):
        with pytest.raises(InvalidInputError):
            RAGStorage("t", path=tmp_path, embedder=embedder)
    for bad in (
        lambda texts: [[1.0, 2.0]] * (len(texts) + 1),  # a vector too many
        lambda texts: [1.0, 2.0],  # one vector, not a list of them
        lambda texts: [["x"]],  # not numbers
    ):
        with pytest.raises(InvalidVectorError):
            RAGStorage("bad", path=tmp_path, embedder=bad).save("value", {})

    RAGStorage("dims", path=tmp_path, embedder=HashingEmbedder(16)).save("value", {})
    other = RAGStorage("dims", path=tmp_path, embedder=HashingEmbedder(32))
    for call in (lambda: other.save("other", {}), lambda: other.search("value")):
        with pytest.raises(DimensionMismatchError, match="dimension mismatch") as info:
            call()
        assert (info.value.expected, info.value.got) == (16, 32)


def test_queries_use_embed_query(tmp_path):
    calls = []

    class Embedder:
        def __call__(self, input):  # noqa: A002 - the protocol's name
            calls.append(("documents", list(input)))
            return np.ones((len(input), 4))

        def embed_query(self, input):  # noqa: A002
            calls.append(("query", list(input)))
            return np.ones((len(input), 4))

    rag = RAGStorage("t", path=tmp_path, embedder=Embedder())
    rag.save("stored", {})
    assert [h["content"] for h in rag.search("asked")] == ["stored"]
    assert calls == [("documents", ["stored"]), ("query", ["asked"])]


def test_reset_honours_allow_reset(tmp_path):
    locked = RAGStorage("t", path=tmp_path, embedder=HashingEmbedder(16), allow_reset=False)
    locked.save("value", {})
    with pytest.raises(ResetNotAllowedError) as info:
        locked.reset()
    assert isinstance(info.value, PermissionError) and isinstance(info.value, FerromemError)
    assert len(locked.store) == 1
    with pytest.raises(InvalidInputError):
        RAGStorage("t", path=tmp_path, embedder=HashingEmbedder(16), allow_reset="no")


def test_deep_copies_share_the_store(tmp_path):
    rag = RAGStorage("t", path=tmp_path, embedder=HashingEmbedder(16))
    ltm = LTMStorage(tmp_path / "ltm.ferro")
    copied = copy.deepcopy({"rag": rag, "ltm": ltm, "again": rag})
    assert copied["rag"] is not rag and copied["rag"].store is rag.store
    assert copied["again"] is copied["rag"]
    assert copied["ltm"].store is ltm.store
    copied["rag"].save("through the copy", {})
    assert [h["content"] for h in rag.search("through the copy")] == ["through the copy"]


def test_ltm_rejects_bad_input_and_writes_nothing(tmp_path):
    ltm = LTMStorage(tmp_path / "ltm.ferro")
    good = {"task_description": "t", "metadata": {"q": 1}, "datetime": "1.5", "score": 1}
    for field, value in (
        ("task_description", 5),
        ("datetime", 1.5),
        ("score", True),
        ("score", math.nan),
        ("score", "8"),
    ):
        with pytest.raises(InvalidInputError):
            ltm.save(**{**good, field: value})
    for metadata in ({"d": datetime.now()}, None, {"s": {1}}):
        with pytest.raises(InvalidMetadataError) as info:
            ltm.save(**{**good, "metadata": metadata})
        assert isinstance(info.value, TypeError)
    assert len(ltm.store) == 0
    with pytest.raises(InvalidInputError):
        ltm.load("t", 2.0)
    ltm.save(**good)
    assert ltm.load("t", 1) == [{"metadata": {"q": 1}, "datetime": "1.5", "score": 1.0}]
    ltm.reset()
    assert ltm.load("t", 1) is None
