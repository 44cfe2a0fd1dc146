"""Every kind of bad input raises its typed error (which is also the builtin a caller
would catch) before anything is written: the store is unchanged afterwards."""

from __future__ import annotations

import datetime as dt
import math

import ferromem
import numpy as np
import pytest
from _helpers import RECORD_FIELDS
from conftest import snapshot
from ferromem import _buffers

DIM = 4
NAN = float("nan")
INF = float("inf")
GOOD = [1.0, 0.0, 0.0, 0.0]
GOOD2 = [0.0, 1.0, 0.0, 0.0]


class Unserialisable:
    pass


def _circular() -> dict:
    value: dict = {"a": 1}
    value["self"] = value
    return value


def _deep(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"d": value}
    return value


# (id, call, expected class, builtins it must also be). Each call gets a store holding
# records "a" and "b" of dimension 4.
CASES = [
    # ---- vectors
    ("nan", lambda s: s.add("x", [NAN, 1, 0, 0]), ferromem.InvalidVectorError, (ValueError,)),
    ("inf", lambda s: s.add("x", [INF, 1, 0, 0]), ferromem.InvalidVectorError, (ValueError,)),
    ("-inf", lambda s: s.add("x", [1, -INF, 0, 0]), ferromem.InvalidVectorError, (ValueError,)),
    (
        "nan-in-batch-row",
        lambda s: s.add(["x", "y"], [GOOD, [0, NAN, 0, 1]]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    (
        "float32-overflow",
        lambda s: s.add("x", np.array([1e300, 1, 0, 0])),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    ("empty-vector", lambda s: s.add("x", []), ferromem.InvalidVectorError, (ValueError,)),
    ("empty-matrix-rows", lambda s: s.add(["x"], [[]]), ferromem.InvalidVectorError, (ValueError,)),
    (
        "wrong-dim",
        lambda s: s.add("x", [1.0, 2.0, 3.0]),
        ferromem.DimensionMismatchError,
        (ferromem.InvalidVectorError, ValueError),
    ),
    (
        "wrong-dim-batch",
        lambda s: s.add(["x", "y"], np.ones((2, 5))),
        ferromem.DimensionMismatchError,
        (ValueError,),
    ),
    (
        "ragged",
        lambda s: s.add(["x", "y"], [[1, 0, 0, 0], [1, 0]]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    (
        "ragged-nested",
        lambda s: s.add(["x", "y"], [[1, 0, 0, 0], [1, [0], 0, 0]]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    ("zero-vector", lambda s: s.add("x", [0, 0, 0, 0]), ferromem.InvalidVectorError, (ValueError,)),
    (
        "zero-row-in-batch",
        lambda s: s.add(["x", "y"], [GOOD, [0, 0, 0, 0]]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    ("three-dims", lambda s: s.add(["x"], np.ones((1, 1, 4))), ferromem.InvalidVectorError, (ValueError,)),
    (
        "strings-in-vector",
        lambda s: s.add("x", ["1", "0", "0", "0"]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    ("none-in-vector", lambda s: s.add("x", [1.0, None, 0, 0]), ferromem.InvalidVectorError, (ValueError,)),
    (
        "bool-vector",
        lambda s: s.add("x", [True, False, False, False]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    (
        "complex-vector",
        lambda s: s.add("x", np.ones(4, dtype=complex)),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    ("vector-none", lambda s: s.add("x", None), ferromem.InvalidVectorError, (ValueError,)),
    ("vector-str", lambda s: s.add("x", "1 0 0 0"), ferromem.InvalidVectorError, (ValueError,)),
    ("vector-dict", lambda s: s.add("x", {"a": 1}), ferromem.InvalidVectorError, (ValueError,)),
    (
        "single-id-many-vectors",
        lambda s: s.add("x", [GOOD, GOOD2]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    (
        "ids-vectors-count",
        lambda s: s.add(["x", "y", "z"], [GOOD, GOOD2]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    ("empty-ids-with-vectors", lambda s: s.add([], [GOOD]), ferromem.InvalidInputError, (ValueError,)),
    ("search-nan", lambda s: s.search([NAN, 1, 0, 0]), ferromem.InvalidVectorError, (ValueError,)),
    ("search-zero", lambda s: s.search([0, 0, 0, 0]), ferromem.InvalidVectorError, (ValueError,)),
    ("search-wrong-dim", lambda s: s.search([1.0, 0.0]), ferromem.DimensionMismatchError, (ValueError,)),
    ("search-empty", lambda s: s.search([]), ferromem.InvalidVectorError, (ValueError,)),
    ("search-ragged", lambda s: s.search([[1, 0, 0, 0], [1]]), ferromem.InvalidVectorError, (ValueError,)),
    (
        "update-nan-vector",
        lambda s: s.update("a", vector=[NAN, 0, 0, 1]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    (
        "update-wrong-dim",
        lambda s: s.update("a", vector=[1.0, 2.0]),
        ferromem.DimensionMismatchError,
        (ValueError,),
    ),
    (
        "update-zero-vector",
        lambda s: s.update("a", vector=[0, 0, 0, 0]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    # ---- metadata
    (
        "metadata-set",
        lambda s: s.add("x", GOOD, metadata={"tags": {"a", "b"}}),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-object",
        lambda s: s.add("x", GOOD, metadata={"o": Unserialisable()}),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-nan",
        lambda s: s.add("x", GOOD, metadata={"score": NAN}),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-inf-nested",
        lambda s: s.add("x", GOOD, metadata={"l": [1, {"v": INF}]}),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-bytes",
        lambda s: s.add("x", GOOD, metadata={"b": b"raw"}),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-datetime",
        lambda s: s.add("x", GOOD, metadata={"t": dt.datetime.now()}),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-list",
        lambda s: s.add("x", GOOD, metadata=[("k", "v")]),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-str",
        lambda s: s.add("x", GOOD, metadata='{"k": 1}'),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-int-key",
        lambda s: s.add("x", GOOD, metadata={1: "one"}),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-circular",
        lambda s: s.add("x", GOOD, metadata=_circular()),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-too-deep",
        lambda s: s.add("x", GOOD, metadata=_deep(200)),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-surrogate",
        lambda s: s.add("x", GOOD, metadata={"k": "\ud800"}),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-batch-one-bad",
        lambda s: s.add(["x", "y"], [GOOD, GOOD2], metadata=[{"ok": 1}, {"bad": {1, 2}}]),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "metadata-batch-length",
        lambda s: s.add(["x", "y"], [GOOD, GOOD2], metadata=[{}]),
        ferromem.InvalidMetadataError,
        (ValueError,),
    ),
    (
        "update-metadata-set",
        lambda s: s.update("a", metadata={"s": {1}}),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    (
        "update-metadata-not-dict",
        lambda s: s.update("a", metadata=None),
        ferromem.InvalidMetadataError,
        (TypeError, ValueError),
    ),
    # ---- ids
    ("id-int", lambda s: s.add(5, GOOD), ferromem.InvalidIdError, (TypeError, ValueError)),
    ("id-bytes", lambda s: s.add(b"x", GOOD), ferromem.InvalidIdError, (TypeError,)),
    ("id-empty", lambda s: s.add("", GOOD), ferromem.InvalidIdError, (ValueError,)),
    ("id-surrogate", lambda s: s.add("\udc80", GOOD), ferromem.InvalidIdError, (ValueError,)),
    ("ids-one-int", lambda s: s.add(["x", 5], [GOOD, GOOD2]), ferromem.InvalidIdError, (TypeError,)),
    ("ids-one-empty", lambda s: s.add(["x", ""], [GOOD, GOOD2]), ferromem.InvalidIdError, (ValueError,)),
    ("ids-none-item", lambda s: s.add(["x", None], [GOOD, GOOD2]), ferromem.InvalidIdError, (TypeError,)),
    ("ids-set", lambda s: s.add({"x", "y"}, [GOOD, GOOD2]), ferromem.InvalidIdError, (TypeError,)),
    (
        "ids-duplicate-in-batch",
        lambda s: s.add(["x", "x"], [GOOD, GOOD2]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "upsert-duplicate-in-batch",
        lambda s: s.upsert(["a", "a"], [GOOD, GOOD2]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    ("add-existing-id", lambda s: s.add("a", GOOD), ferromem.DuplicateIdError, (ValueError,)),
    (
        "add-existing-id-in-batch",
        lambda s: s.add(["new", "b"], [GOOD, GOOD2]),
        ferromem.DuplicateIdError,
        (ValueError,),
    ),
    ("get-int", lambda s: s.get(5), ferromem.InvalidIdError, (TypeError,)),
    ("get-none", lambda s: s.get(None), ferromem.InvalidIdError, (TypeError,)),
    ("get-many-str", lambda s: s.get_many("ab"), ferromem.InvalidIdError, (TypeError,)),
    ("get-many-int-item", lambda s: s.get_many(["a", 1]), ferromem.InvalidIdError, (TypeError,)),
    ("update-id-int", lambda s: s.update(1, content="x"), ferromem.InvalidIdError, (TypeError,)),
    ("delete-ids-int", lambda s: s.delete([1]), ferromem.InvalidIdError, (TypeError,)),
    ("delete-ids-empty-str", lambda s: s.delete(""), ferromem.InvalidIdError, (ValueError,)),
    ("touch-ids-int", lambda s: s.touch(5), ferromem.InvalidIdError, (TypeError,)),
    # ---- k and min_score
    ("k-zero", lambda s: s.search(GOOD, k=0), ferromem.InvalidInputError, (ValueError,)),
    ("k-negative", lambda s: s.search(GOOD, k=-1), ferromem.InvalidInputError, (ValueError,)),
    ("k-bool", lambda s: s.search(GOOD, k=True), ferromem.InvalidInputError, (ValueError,)),
    ("k-float", lambda s: s.search(GOOD, k=1.5), ferromem.InvalidInputError, (ValueError,)),
    ("k-whole-float", lambda s: s.search(GOOD, k=2.0), ferromem.InvalidInputError, (ValueError,)),
    ("k-str", lambda s: s.search(GOOD, k="3"), ferromem.InvalidInputError, (ValueError,)),
    ("k-none", lambda s: s.search(GOOD, k=None), ferromem.InvalidInputError, (ValueError,)),
    ("min-score-nan", lambda s: s.search(GOOD, min_score=NAN), ferromem.InvalidInputError, (ValueError,)),
    ("min-score-inf", lambda s: s.search(GOOD, min_score=INF), ferromem.InvalidInputError, (ValueError,)),
    ("min-score-str", lambda s: s.search(GOOD, min_score="0.5"), ferromem.InvalidInputError, (ValueError,)),
    ("min-score-bool", lambda s: s.search(GOOD, min_score=True), ferromem.InvalidInputError, (ValueError,)),
    # ---- filters
    (
        "categories-str",
        lambda s: s.search(GOOD, categories="fact"),
        ferromem.InvalidFilterError,
        (TypeError, ValueError),
    ),
    (
        "categories-int-item",
        lambda s: s.count(categories=["a", 1]),
        ferromem.InvalidFilterError,
        (TypeError,),
    ),
    ("categories-dict", lambda s: s.list(categories={"a": 1}), ferromem.InvalidFilterError, (TypeError,)),
    (
        "where-list-value",
        lambda s: s.search(GOOD, where={"tags": ["a"]}),
        ferromem.InvalidFilterError,
        (TypeError, ValueError),
    ),
    (
        "where-dict-value",
        lambda s: s.count(where={"n": {"gt": 1}}),
        ferromem.InvalidFilterError,
        (TypeError,),
    ),
    ("where-not-dict", lambda s: s.list(where=[("k", 1)]), ferromem.InvalidFilterError, (TypeError,)),
    ("where-int-key", lambda s: s.count(where={1: "a"}), ferromem.InvalidFilterError, (TypeError,)),
    ("where-nan", lambda s: s.count(where={"n": NAN}), ferromem.InvalidFilterError, (ValueError,)),
    ("scope-int", lambda s: s.search(GOOD, scope=5), ferromem.InvalidFilterError, (TypeError,)),
    ("scope-relative", lambda s: s.count(scope="project"), ferromem.InvalidFilterError, (ValueError,)),
    ("source-int", lambda s: s.count(source=3), ferromem.InvalidFilterError, (TypeError,)),
    (
        "include-private-str",
        lambda s: s.search(GOOD, include_private="no"),
        ferromem.InvalidFilterError,
        (TypeError,),
    ),
    (
        "visible-to-int",
        lambda s: s.count(include_private=False, visible_to=1),
        ferromem.InvalidFilterError,
        (TypeError,),
    ),
    (
        "visible-to-without-private-false",
        lambda s: s.count(visible_to="alice"),
        ferromem.InvalidFilterError,
        (ValueError,),
    ),
    ("older-than-str", lambda s: s.delete(older_than="yesterday"), ferromem.InvalidFilterError, (TypeError,)),
    ("older-than-nan", lambda s: s.delete(older_than=NAN), ferromem.InvalidFilterError, (ValueError,)),
    ("delete-nothing-given", lambda s: s.delete(), ferromem.InvalidFilterError, (TypeError, ValueError)),
    ("delete-root-scope-only", lambda s: s.delete(scope="/"), ferromem.InvalidFilterError, (ValueError,)),
    (
        "delete-categories-str",
        lambda s: s.delete(categories="fact"),
        ferromem.InvalidFilterError,
        (TypeError,),
    ),
    ("delete-where-list", lambda s: s.delete(where={"k": [1]}), ferromem.InvalidFilterError, (TypeError,)),
    ("child-scopes-int", lambda s: s.child_scopes(5), ferromem.InvalidFilterError, (TypeError,)),
    ("scope-info-relative", lambda s: s.scope_info("a"), ferromem.InvalidFilterError, (ValueError,)),
    # ---- record fields of the wrong type or value
    ("content-int", lambda s: s.add("x", GOOD, contents=5), ferromem.InvalidInputError, (ValueError,)),
    (
        "content-list-single",
        lambda s: s.add("x", GOOD, contents=["a"]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "contents-length",
        lambda s: s.add(["x", "y"], [GOOD, GOOD2], contents=["a", "b", "c"]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "contents-item-int",
        lambda s: s.add(["x", "y"], [GOOD, GOOD2], contents=["a", 2]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "scope-record-relative",
        lambda s: s.add("x", GOOD, scopes="project"),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    ("scope-record-int", lambda s: s.add("x", GOOD, scopes=1), ferromem.InvalidInputError, (ValueError,)),
    (
        "scopes-length",
        lambda s: s.add(["x", "y"], [GOOD, GOOD2], scopes=["/a"]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "record-categories-str",
        lambda s: s.add("x", GOOD, categories="fact"),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "record-categories-int-item",
        lambda s: s.add("x", GOOD, categories=["a", 1]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "record-categories-empty-item",
        lambda s: s.add("x", GOOD, categories=[""]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "record-categories-mixed-batch",
        lambda s: s.add(["x", "y"], [GOOD, GOOD2], categories=["a", ["b"]]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "importance-str",
        lambda s: s.add("x", GOOD, importance="high"),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    ("importance-nan", lambda s: s.add("x", GOOD, importance=NAN), ferromem.InvalidInputError, (ValueError,)),
    (
        "importance-bool",
        lambda s: s.add("x", GOOD, importance=True),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "created-at-str",
        lambda s: s.add("x", GOOD, created_at="now"),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    ("created-at-inf", lambda s: s.add("x", GOOD, created_at=INF), ferromem.InvalidInputError, (ValueError,)),
    (
        "created-at-date",
        lambda s: s.add("x", GOOD, created_at=dt.date(2024, 1, 1)),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "last-accessed-str",
        lambda s: s.add("x", GOOD, last_accessed="now"),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    ("private-str", lambda s: s.add("x", GOOD, private="yes"), ferromem.InvalidInputError, (ValueError,)),
    ("private-int", lambda s: s.add("x", GOOD, private=1), ferromem.InvalidInputError, (ValueError,)),
    ("sources-int", lambda s: s.add("x", GOOD, sources=5), ferromem.InvalidInputError, (ValueError,)),
    (
        "sources-length",
        lambda s: s.add(["x", "y"], [GOOD, GOOD2], sources=["a"]),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    ("update-content-int", lambda s: s.update("a", content=1), ferromem.InvalidInputError, (ValueError,)),
    ("update-scope-relative", lambda s: s.update("a", scope="x"), ferromem.InvalidInputError, (ValueError,)),
    ("update-private-none", lambda s: s.update("a", private=None), ferromem.InvalidInputError, (ValueError,)),
    (
        "update-importance-inf",
        lambda s: s.update("a", importance=INF),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "update-categories-str",
        lambda s: s.update("a", categories="x"),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    ("update-missing-id", lambda s: s.update("missing", content="x"), ferromem.NotFoundError, (KeyError,)),
    ("touch-at-str", lambda s: s.touch("a", at="now"), ferromem.InvalidInputError, (ValueError,)),
    ("list-offset-negative", lambda s: s.list(offset=-1), ferromem.InvalidInputError, (ValueError,)),
    ("list-offset-bool", lambda s: s.list(offset=True), ferromem.InvalidInputError, (ValueError,)),
    ("list-limit-negative", lambda s: s.list(limit=-1), ferromem.InvalidInputError, (ValueError,)),
    ("list-limit-float", lambda s: s.list(limit=1.5), ferromem.InvalidInputError, (ValueError,)),
    # ---- magnitudes the f32 kernels cannot score (docs/architecture.md, "Extreme
    # magnitudes"): refused before anything is written
    ("vector-subnormal", lambda s: s.add("x", [1e-42, 0, 0, 0]), ferromem.InvalidVectorError, (ValueError,)),
    ("vector-tiny", lambda s: s.add("x", [1e-31, -1e-32, 0, 0]), ferromem.InvalidVectorError, (ValueError,)),
    ("vector-huge", lambda s: s.add("x", [3e38, 1, 0, 0]), ferromem.InvalidVectorError, (ValueError,)),
    (
        "vector-just-above-range",
        lambda s: s.add("x", [2.0**100 * 1.01, 0, 0, 0]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    (
        "vector-huge-in-batch",
        lambda s: s.add(["x", "y"], [GOOD, [1e31, 0, 0, 0]]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    (
        "upsert-vector-huge",
        lambda s: s.upsert("a", [0, 3e38, 0, 0]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    (
        "update-vector-subnormal",
        lambda s: s.update("a", vector=[0, 1e-40, 0, 0]),
        ferromem.InvalidVectorError,
        (ValueError,),
    ),
    # ---- datetimes the platform cannot turn into unix seconds
    (
        "created-at-datetime-min",
        lambda s: s.add("x", GOOD, created_at=dt.datetime.min),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "update-created-at-datetime-min",
        lambda s: s.update("a", created_at=dt.datetime.min),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "touch-at-datetime-min",
        lambda s: s.touch("a", at=dt.datetime.min),
        ferromem.InvalidInputError,
        (ValueError,),
    ),
    (
        "delete-older-than-datetime-min",
        lambda s: s.delete(older_than=dt.datetime.min),
        ferromem.InvalidFilterError,
        (ValueError,),
    ),
    # ---- wait_for_index's timeout
    ("timeout-nan", lambda s: s.wait_for_index(NAN), ferromem.InvalidInputError, (ValueError,)),
    ("timeout-negative", lambda s: s.wait_for_index(-1), ferromem.InvalidInputError, (ValueError,)),
    ("timeout-str", lambda s: s.wait_for_index("1"), ferromem.InvalidInputError, (ValueError,)),
]


@pytest.fixture
def seeded(store):
    store.add(
        ["a", "b"],
        [GOOD, GOOD2],
        contents=["A", "B"],
        scopes=["/p", "/q"],
        categories=[["fact"], []],
        metadata=[{"n": 1}, {}],
        created_at=[1.0, 2.0],
    )
    return store


@pytest.mark.parametrize(("call", "error", "builtins"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_and_changes_nothing(seeded, call, error, builtins):
    before = snapshot(seeded)
    with pytest.raises(error) as info:
        call(seeded)
    assert isinstance(info.value, ferromem.FerromemError)
    for builtin in builtins:
        assert isinstance(info.value, builtin), f"{type(info.value).__name__} is not a {builtin}"
    assert str(info.value), "the message must say what is wrong"
    assert snapshot(seeded) == before
    assert seeded.count() == 2
    assert seeded.dim == DIM


@pytest.mark.parametrize(
    "metadata",
    [{"s": {1}}, {"o": Unserialisable()}, {"n": NAN}, {"deep": [[{"x": float("-inf")}]]}],
    ids=["set", "object", "nan", "nested-inf"],
)
def test_metadata_message_says_not_json_serializable(store, metadata):
    with pytest.raises(ferromem.InvalidMetadataError, match="not JSON serializable"):
        store.add("x", GOOD, metadata=metadata)
    assert len(store) == 0


def test_messages_are_actionable(seeded):
    with pytest.raises(ferromem.InvalidFilterError, match=r"pass a list"):
        seeded.search(GOOD, categories="fact")
    with pytest.raises(ferromem.InvalidFilterError, match=r"reset\(\)"):
        seeded.delete()
    with pytest.raises(ferromem.DuplicateIdError, match="upsert"):
        seeded.add("a", GOOD)
    with pytest.raises(ferromem.DimensionMismatchError, match="dimension") as info:
        seeded.add("x", [1.0, 2.0, 3.0])
    assert (info.value.expected, info.value.got) == (4, 3)
    assert "4" in str(info.value) and "3" in str(info.value)
    with pytest.raises(ferromem.InvalidVectorError, match="all zeros"):
        seeded.add("x", [0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ferromem.InvalidVectorError, match="NaN"):
        seeded.add("x", [1.0, NAN, 0.0, 0.0])
    with pytest.raises(ferromem.InvalidInputError, match="more than once"):
        seeded.add(["x", "x"], [GOOD, GOOD2])


def test_first_write_dimension_is_not_fixed_by_a_failed_write(store):
    with pytest.raises(ferromem.InvalidVectorError):
        store.add(["x", "y"], [[1.0, 2.0, 3.0], [NAN, 0.0, 1.0]])
    assert store.dim is None
    store.add("x", [1.0, 2.0])
    assert store.dim == 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"durability": "fast"}, ferromem.InvalidInputError),
        ({"durability": None}, ferromem.InvalidInputError),
        ({"engine": "gpu"}, ferromem.InvalidInputError),
        ({"dim": 0}, ferromem.InvalidInputError),
        ({"dim": -3}, ferromem.InvalidInputError),
        ({"dim": "4"}, ferromem.InvalidInputError),
        ({"dim": True}, ferromem.InvalidInputError),
        ({"dim": 4.0}, ferromem.InvalidInputError),
        ({"dim": 2**64}, ferromem.InvalidInputError),
        ({"dim": 2**24 + 1}, ferromem.InvalidInputError),
        ({"path": 5}, ferromem.InvalidInputError),
        ({"path": ""}, ferromem.InvalidInputError),
        ({"path": b"bytes.ferro"}, ferromem.InvalidInputError),
    ],
)
def test_bad_open_arguments(kwargs, error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kwargs = {"engine": "reference", **kwargs}
    path = kwargs.pop("path", None)
    with pytest.raises(error) as info:
        ferromem.open(path, **kwargs)
    assert isinstance(info.value, ValueError)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_open_a_directory_is_rejected(tmp_path):
    with pytest.raises(ferromem.InvalidInputError, match="directory"):
        ferromem.open(tmp_path, engine="reference")


def test_convert_rejects_what_the_facade_rejects():
    bad = [
        [],
        [[]],
        [NAN],
        [INF],
        [0.0, 0.0],
        [[1.0, 2.0], [1.0]],
        ["a"],
        None,
        "abc",
        np.ones((1, 1, 2)),
        [True, False],
    ]
    for value in bad:
        with pytest.raises(ferromem.InvalidVectorError):
            _buffers.as_matrix(value)
        with pytest.raises(ferromem.InvalidVectorError):
            _buffers.as_vector(value)
    with pytest.raises(ferromem.DimensionMismatchError):
        _buffers.as_vector([1.0, 2.0], dim=3)
    assert math.isclose(float(_buffers.as_vector([1e-30, 0.0])[0]), 1e-30, rel_tol=1e-6)


# --------------------------------------------------------------------------- saturation


def test_counts_and_timeouts_beyond_any_store_saturate(seeded):
    """Numbers too large for a native integer or a Duration mean "more than there is":
    an offset past the end, no limit, no time limit (never OverflowError or a Rust
    panic)."""
    assert seeded.list(offset=2**64) == []
    assert seeded.list(offset=np.uint64(2**64 - 1)) == []
    assert [r.id for r in seeded.list(limit=2**64)] == ["b", "a"]
    assert [r.id for r in seeded.list(offset=1, limit=10**30)] == ["a"]
    for timeout in (1e300, 1e19, 2**64, 10**400, INF, np.float64(1e300)):
        assert seeded.wait_for_index(timeout) is True
    assert seeded.search(GOOD, k=2**64)[0] == ("a", 1.0)


def test_huge_cache_size_and_dim_are_typed(tmp_path):
    with ferromem.open(None, cache_size=2**64) as store:
        store.add("a", GOOD)
        assert store.search(GOOD, k=1)[0][0] == "a"
    with pytest.raises(ferromem.InvalidInputError, match="dim"):
        ferromem.open(None, dim=2**64)


# --------------------------------------------------------------------------- hostile table

_HOSTILE = [
    2**64,
    -(2**64),
    10**400,
    -1,
    0,
    NAN,
    INF,
    -INF,
    True,
    np.int64(-5),
    np.uint64(2**64 - 1),
    np.float32(NAN),
    np.float64(1e300),
    "x",
    b"x",
    None,
    [],
    {},
    [None],
    object(),
    dt.datetime.min,
    dt.datetime.max,
    dt.date(2020, 1, 1),
    1e300,
]


def _store_calls():
    """(name, call taking (store, value)) for every argument of every Store method."""
    record_fields = [
        "contents",
        "scopes",
        "categories",
        "metadata",
        "importance",
        "created_at",
        "last_accessed",
        "sources",
        "private",
    ]
    filters = ["scope", "categories", "where", "source", "include_private", "visible_to", "ids"]
    calls = []
    for method in ("add", "upsert"):
        calls.append((f"{method}-ids", lambda s, v, m=method: getattr(s, m)(v, GOOD)))
        calls.append((f"{method}-vector", lambda s, v, m=method: getattr(s, m)("h", v)))
        for field in record_fields:
            calls.append(
                (f"{method}-{field}", lambda s, v, m=method, f=field: getattr(s, m)("h", GOOD, **{f: v}))
            )
            calls.append(
                (
                    f"{method}-batch-{field}",
                    lambda s, v, m=method, f=field: getattr(s, m)(["h", "i"], [GOOD, GOOD2], **{f: v}),
                )
            )
    for field in [*RECORD_FIELDS, "vector"]:
        calls.append((f"update-{field}", lambda s, v, f=field: s.update("a", **{f: v})))
    calls.append(("update-id", lambda s, v: s.update(v, content="c")))
    calls.append(("touch-ids", lambda s, v: s.touch(v)))
    calls.append(("touch-at", lambda s, v: s.touch("a", at=v)))
    calls.append(("delete-ids", lambda s, v: s.delete(v)))
    for field in ["scope", "categories", "where", "source", "older_than"]:
        calls.append((f"delete-{field}", lambda s, v, f=field: s.delete(**{f: v})))
    calls.append(("search-query", lambda s, v: s.search(v)))
    calls.append(("search-k", lambda s, v: s.search(GOOD, k=v)))
    calls.append(("search-min_score", lambda s, v: s.search(GOOD, min_score=v)))
    for method in ("search", "list", "count", "category_counts"):
        for field in filters:
            if method == "search":
                calls.append((f"{method}-{field}", lambda s, v, f=field: s.search(GOOD, **{f: v})))
            else:
                calls.append((f"{method}-{field}", lambda s, v, m=method, f=field: getattr(s, m)(**{f: v})))
    calls.append(("list-offset", lambda s, v: s.list(offset=v)))
    calls.append(("list-limit", lambda s, v: s.list(limit=v)))
    calls.append(("get", lambda s, v: s.get(v)))
    calls.append(("get_many", lambda s, v: s.get_many(v)))
    calls.append(("child_scopes", lambda s, v: s.child_scopes(v)))
    calls.append(("scope_info", lambda s, v: s.scope_info(v)))
    calls.append(("set_index-index", lambda s, v: s.set_index(v)))
    calls.append(("set_index-ef_search", lambda s, v: s.set_index(ef_search=v)))
    calls.append(("set_index-recall_target", lambda s, v: s.set_index(recall_target=v)))
    calls.append(("set_index-graph_min_values", lambda s, v: s.set_index(graph_min_values=v)))
    calls.append(("wait_for_index", lambda s, v: s.wait_for_index(v)))
    return calls


@pytest.mark.parametrize("call", [c[1] for c in _store_calls()], ids=[c[0] for c in _store_calls()])
def test_hostile_arguments_raise_only_typed_errors(store, call):
    """Every argument of every Store method, given hostile values (huge and negative
    ints, NaN, inf, bool-as-int, numpy scalars, wrong types, extreme datetimes): the call
    either works or raises a class of ferromem.exceptions; never OverflowError,
    TypeError, a datetime ValueError or a Rust panic."""
    store.add(["a", "b"], [GOOD, GOOD2], scopes=["/p", "/q"], created_at=[1.0, 2.0])
    for value in _HOSTILE:
        try:
            call(store, value)
        except ferromem.FerromemError:
            pass
        except BaseException as exc:  # noqa: BLE001 - PanicException is a BaseException
            pytest.fail(
                f"{value!r} raised the untyped {type(exc).__module__}.{type(exc).__qualname__}: {exc}"
            )
        # Whatever happened, the store still answers.
        assert store.count() >= 0


@pytest.mark.parametrize(
    "argument",
    [
        "dim",
        "durability",
        "engine",
        "cache_size",
        "index",
        "ef_search",
        "recall_target",
        "precision",
        "fast_open",
    ],
)
def test_hostile_open_arguments_raise_only_typed_errors(argument, tmp_path):
    for i, value in enumerate(_HOSTILE):
        try:
            ferromem.open(str(tmp_path / f"s{i}.ferro"), **{argument: value}).close()
        except ferromem.FerromemError:
            pass
        except BaseException as exc:  # noqa: BLE001
            pytest.fail(f"open({argument}={value!r}) raised the untyped {type(exc).__qualname__}: {exc}")


def test_int8_store_refuses_vectors_its_kernels_cannot_sum(tmp_path):
    """Vectors longer than 65,536 values in an int8 store reached a Rust assert (a
    PanicException, not even an Exception) at the first search; now they are refused at
    the write, which writes nothing, and at open."""
    long = np.ones(65_537, dtype=np.float32)
    with ferromem.open(str(tmp_path / "s.ferro"), precision="int8") as store:
        with pytest.raises(ferromem.InvalidVectorError, match="int8"):
            store.add("a", long)
        assert store.count() == 0 and store.dim is None
        store.add("b", long[:65_536])
        assert store.search(long[:65_536], k=1)[0][0] == "b"
    with pytest.raises(ferromem.FerromemError, match="int8"):
        ferromem.open(str(tmp_path / "t.ferro"), precision="int8", dim=70_000)
