"""CrewAI parity and hostile values on MemoryStorage, under a real CrewAI Memory:
all-zero embeddings, use after close, poison times and values, wrong-typed arguments.

No network: embeddings are given explicitly or come from a plain function (CrewAI's own
tests use such functions, returning all-zero or one-hot vectors).
"""

from __future__ import annotations

import math
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

pytest.importorskip("crewai", reason="CrewAI 1.x is not installed (pip install 'crewai>=1.15,<2')")

import ferromem  # noqa: E402
from crewai import Memory  # noqa: E402
from crewai.memory.storage.backend import EmbeddingDimensionMismatchError  # noqa: E402
from crewai.memory.types import MemoryRecord  # noqa: E402
from ferromem.crewai import MemoryStorage  # noqa: E402
from ferromem.exceptions import FerromemError, InvalidInputError, StoreClosedError  # noqa: E402

DIM = 4
ZERO = [0.0] * DIM


def zero_embedder(texts: list[str]) -> list[list[float]]:
    return [list(ZERO) for _ in texts]


def memory_on(storage, embedder=zero_embedder) -> Memory:
    return Memory(storage=storage, embedder=embedder, consolidation_threshold=1.0, llm="stub")


@pytest.fixture
def storage(tmp_path):
    s = MemoryStorage(tmp_path, vector_dim=DIM)
    yield s
    s.close()


# ------------------------------------------------------------------ zero embeddings


def test_zero_embeddings_are_kept_counted_listed_filtered_and_deleted(storage):
    storage.save(
        [
            MemoryRecord(id="z1", content="zero a", scope="/a", categories=["c"], embedding=ZERO),
            MemoryRecord(id="z2", content="zero b", scope="/b", embedding=[-0.0] * DIM),
            MemoryRecord(
                id="v", content="real", scope="/a", categories=["c"], embedding=[1.0, 0.0, 0.0, 0.0]
            ),
            MemoryRecord(id="none", content="none", scope="/a"),
        ]
    )
    assert storage.count() == 4
    assert storage.count("/a") == 3
    assert storage.get_record("z1").embedding == ZERO  # given back as saved
    assert storage.get_record("none").embedding is None
    assert {r.id for r in storage.list_records("/a")} == {"z1", "v", "none"}
    assert storage.list_categories() == {"c": 2}
    assert storage.get_scope_info("/").record_count == 4
    # Vector search ranks only records with a direction; never a NaN score.
    hits = storage.search([1.0, 1.0, 0.0, 0.0], limit=10, min_score=-1.0)
    assert [(r.id, round(s, 6)) for r, s in hits] == [("v", round(1 / math.sqrt(2), 6))]
    # The placeholders point where this query does; the one real record still comes first.
    assert [r.id for r, _ in storage.search([1.0, 0.0, 0.0, 0.0], limit=1)] == ["v"]
    assert storage.delete(record_ids=["z1"]) == 1
    assert storage.delete(scope_prefix="/b") == 1
    assert storage.count() == 2


def test_a_zero_vector_of_another_dimension_is_refused_like_any_vector(storage):
    storage.save([MemoryRecord(content="x", embedding=[1.0, 0.0, 0.0, 0.0])])
    with pytest.raises(EmbeddingDimensionMismatchError):
        storage.save([MemoryRecord(content="y", embedding=[0.0] * (DIM + 1))])
    with pytest.raises(EmbeddingDimensionMismatchError):
        storage.search([0.0] * (DIM + 1))
    assert storage.count() == 1


def test_zero_query_returns_nothing_and_never_raises(storage):
    assert storage.search(ZERO) == []  # empty store
    storage.save([MemoryRecord(content="x", embedding=[0.0, 1.0, 0.0, 0.0])])
    assert storage.search(ZERO, min_score=-1.0) == []
    assert storage.search(np.zeros(DIM, dtype=np.float32)) == []


def test_remember_many_with_zero_vectors_stores_the_whole_batch(storage):
    memory = memory_on(storage)
    memory.remember_many(["alpha", "beta", "gamma"], scope="/t", categories=["x"], importance=0.5)
    memory.drain_writes()
    assert sorted(r.content for r in memory.list_records()) == ["alpha", "beta", "gamma"]
    # remember() and recall() with a zero embedder work too; recall finds nothing by
    # similarity (a zero query has no direction).
    memory.remember("delta", scope="/t", categories=["x"], importance=0.5)
    assert storage.count() == 4
    assert memory.recall("delta", depth="shallow") == []


# ------------------------------------------------------------------ after close


def test_calls_after_close_reopen_the_store(tmp_path):
    storage = MemoryStorage(tmp_path, vector_dim=DIM)
    memory = memory_on(storage)
    memory.remember_many(["kept"], scope="/t", categories=["x"], importance=0.5)
    memory.close()  # drains, then closes the storage
    assert storage.store.count() == 1  # the store property reopens too
    storage.close()
    assert storage.count() == 1  # what CrewAI's own tests do after Memory.close()
    storage.close()
    storage.save([MemoryRecord(id="after", content="after", embedding=[0.0, 0.0, 1.0, 0.0])])
    storage.close()
    storage.close()  # idempotent
    assert storage.get_record("after").content == "after"
    assert [r.id for r, _ in storage.search([0.0, 0.0, 1.0, 0.0])] == ["after"]
    storage.close()


def test_concurrent_calls_after_close_reopen_one_store(tmp_path):
    storage = MemoryStorage(tmp_path, vector_dim=DIM)
    storage.save([MemoryRecord(content="x", embedding=[1.0, 0.0, 0.0, 0.0])])
    storage.close()
    stores, errors = [], []

    def work():
        try:
            assert storage.count() == 1
            stores.append(storage.store)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({id(s) for s in stores}) == 1
    storage.close()


def test_a_store_passed_in_stays_the_callers(tmp_path):
    store = ferromem.open(tmp_path / "mine.ferro", dim=DIM)
    storage = MemoryStorage(store=store)
    storage.save([MemoryRecord(content="x", embedding=[1.0, 0.0, 0.0, 0.0])])
    storage.close()
    assert not store.closed and storage.count() == 1
    store.close()
    with pytest.raises(StoreClosedError):
        storage.count()
    assert store.closed  # never reopened behind the caller's back


# ------------------------------------------------------------------ poison values

POISON_TIMES = [
    datetime.min.replace(microsecond=1),
    datetime(9999, 12, 31, 23, 59, 59, 1),
    datetime(5000, 1, 1, 0, 0, 0, 123457),
    datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),  # before year 1 in UTC
    datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),  # after 9999 in UTC
]


@pytest.mark.parametrize("field", ["created_at", "last_accessed"])
@pytest.mark.parametrize("when", POISON_TIMES, ids=repr)
def test_a_time_that_cannot_round_trip_is_refused_and_reads_keep_working(storage, field, when):
    storage.save([MemoryRecord(id="ok", content="ok", embedding=[1.0, 0.0, 0.0, 0.0])])
    with pytest.raises(InvalidInputError):
        storage.save([MemoryRecord(id="bad", content="bad", embedding=[0.0, 1.0, 0.0, 0.0], **{field: when})])
    assert storage.get_record("bad") is None
    assert [r.id for r in storage.list_records()] == ["ok"]
    assert [r.id for r, _ in storage.search([1.0, 0.0, 0.0, 0.0])] == ["ok"]


EXACT_TIMES = [
    datetime(1, 1, 1),  # datetime.min
    datetime(9999, 12, 31, 23, 59, 59),
    datetime(1698, 1, 1, 0, 0, 0, 1),
    datetime(2242, 3, 1, 23, 59, 59, 999999),
    datetime(1970, 1, 1),
    datetime(1969, 12, 31, 23, 59, 59, 999999),
    datetime.max,  # stored as the float nearest, which reads back as the end of the range
]


@pytest.mark.parametrize("when", EXACT_TIMES, ids=repr)
def test_extreme_times_that_fit_round_trip_exactly(storage, when):
    storage.save(
        [
            MemoryRecord(
                id="r", content="r", embedding=[1.0, 0.0, 0.0, 0.0], created_at=when, last_accessed=when
            )
        ]
    )
    got = storage.get_record("r")
    assert (got.created_at, got.last_accessed) == (when, when)
    assert storage.list_records()[0].created_at == when
    assert storage.search([1.0, 0.0, 0.0, 0.0])[0][0].created_at == when
    info = storage.get_scope_info("/")
    assert info.oldest_record == when == info.newest_record


def test_aware_times_come_back_naive_utc_the_same_instant(storage):
    when = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    storage.save([MemoryRecord(id="r", content="r", embedding=[1.0, 0.0, 0.0, 0.0], created_at=when)])
    got = storage.get_record("r").created_at
    assert got.tzinfo is None and got.replace(tzinfo=timezone.utc) == when


def test_a_stored_time_out_of_datetime_range_never_breaks_reads(tmp_path):
    path = tmp_path / "memories.ferro"
    with ferromem.open(path, dim=DIM) as store:  # a writer other than the adapter
        store.add("far", [1.0, 0.0, 0.0, 0.0], contents="far", created_at=1e300, last_accessed=-1e300)
    storage = MemoryStorage(path)
    got = storage.get_record("far")
    assert (got.created_at, got.last_accessed) == (datetime.max, datetime.min)
    assert [r.id for r in storage.list_records()] == ["far"]
    assert [r.id for r, _ in storage.search([1.0, 0.0, 0.0, 0.0])] == ["far"]
    assert storage.get_scope_info("/").newest_record == datetime.max
    storage.close()


@pytest.mark.parametrize("importance", [math.nan, math.inf, -math.inf, "high", None])
def test_non_finite_or_wrong_importance_is_refused_at_save(storage, importance):
    bad = MemoryRecord.model_construct(  # CrewAI builds records this way too
        id="bad",
        content="x",
        scope="/",
        categories=[],
        metadata={},
        importance=importance,
        created_at=datetime(2025, 1, 1),
        last_accessed=datetime(2025, 1, 1),
        embedding=[1.0, 0.0, 0.0, 0.0],
        source=None,
        private=False,
    )
    with pytest.raises(FerromemError):
        storage.save([bad])
    assert storage.count() == 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("scope", None),
        ("scope", 5),
        ("categories", "abc"),
        ("categories", 5),
        ("metadata", None),
        ("metadata", [1]),
        ("embedding", "abc"),
        ("embedding", 5),
        ("embedding", [math.nan] * DIM),
        ("created_at", "2025-01-01"),
        ("id", 5),
    ],
)
def test_wrong_record_fields_raise_typed_errors_and_write_nothing(storage, field, value):
    good = MemoryRecord(content="good", embedding=[1.0, 0.0, 0.0, 0.0])
    bad = MemoryRecord(content="bad", embedding=[0.0, 1.0, 0.0, 0.0]).model_copy(update={field: value})
    with pytest.raises(FerromemError):
        storage.save([good, bad])
    assert storage.count() == 0


def test_huge_metadata_round_trips(storage):
    metadata = {"blob": "x" * 2_000_000, "many": {str(i): i for i in range(20_000)}}
    storage.save([MemoryRecord(id="big", content="big", metadata=metadata, embedding=[1.0, 0.0, 0.0, 0.0])])
    assert storage.get_record("big").metadata == metadata
    assert storage.list_records()[0].metadata == metadata


# ------------------------------------------------------------------ wrong arguments


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get_scope_info(5),
        lambda s: s.get_scope_info(None),
        lambda s: s.list_scopes(5),
        lambda s: s.list_records(limit="10"),
        lambda s: s.list_records(limit=1.5),
        lambda s: s.list_records(offset=None),
        lambda s: s.list_records(scope_prefix=5),
        lambda s: s.count(scope_prefix=b"/a"),
        lambda s: s.list_categories(scope_prefix=1),
        lambda s: s.search([1.0, 0.0, 0.0, 0.0], limit=None),
        lambda s: s.search([1.0, 0.0, 0.0, 0.0], limit="3"),
        lambda s: s.search([1.0, 0.0, 0.0, 0.0], scope_prefix=3),
        lambda s: s.search([1.0, 0.0, 0.0, 0.0], min_score="x"),
        lambda s: s.search("abcd"),
        lambda s: s.search(None),
        lambda s: s.delete(record_ids="abc"),
        lambda s: s.delete(record_ids=5),
        lambda s: s.delete(older_than="yesterday"),
        lambda s: s.delete(scope_prefix=7),
        lambda s: s.touch_records("abc"),
        lambda s: s.touch_records(5),
        lambda s: s.reset(scope_prefix=3),
        lambda s: s.save("not records"),
        lambda s: s.save([None]),
        lambda s: s.update("not a record"),
    ],
)
def test_wrong_arguments_raise_ferromem_errors(storage, call):
    storage.save([MemoryRecord(id="keep", content="keep", embedding=[1.0, 0.0, 0.0, 0.0])])
    with pytest.raises(FerromemError):
        call(storage)
    assert storage.count() == 1


def test_list_records_limit_none_lists_everything(storage):
    storage.save([MemoryRecord(content=f"r{i}", embedding=[1.0, float(i), 0.0, 0.0]) for i in range(250)])
    assert len(storage.list_records(limit=None)) == 250
    assert len(storage.list_records(limit=None, offset=240)) == 10
    assert len(storage.list_records()) == 200  # the default stays CrewAI's
    assert len(storage.list_records(limit=2**70)) == 250
    assert storage.list_records(offset=2**70) == []
