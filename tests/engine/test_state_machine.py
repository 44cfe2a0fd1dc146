"""Random operation sequences, two stores side by side and a plain model, compared after
every step.

A Hypothesis state machine drives add / upsert (batch and single form), partial update
(the vector included), touch, delete by ids / scope / categories / older_than / where /
source, reset, reopen (on disk) and invalid operations (duplicate add, duplicate id in a
batch, wrong dimension, NaN / inf / zero vectors, a missing id, no delete criterion) on
two stores at once. After every step both stores must agree with each other and with a
dict model: count, every field of every known id (vectors bit-exact), list order and
paging, child_scopes, category_counts, scope_info, and search against an exact float64
brute force. An invalid operation must raise the same typed error from both stores and
change nothing.

Pairs: the native engine against the reference engine (in memory; on disk with reopen;
the native store on PostgreSQL with reopen, a fresh store per example, against the
reference engine in memory), and, so that the machine runs before the native engine
exists, the reference engine in memory against the reference engine on disk with reopen.
A durable store (a file, a PostgreSQL store) is also checked through a second handle that
never reopens (it catches up from the change sequence) and a freshly opened one.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from _helpers import (
    Oracle,
    Rec,
    assert_record_equal,
    assert_records_same,
    assert_same_search,
    category_counts,
    env_int,
    hypothesis_settings,
    list_order,
    open_store,
    record_matches,
    require_engine,
    store_records,
)
from _postgres_fixtures import PostgresServer, new_store_name
from ferromem.exceptions import (
    DimensionMismatchError,
    DuplicateIdError,
    FerromemError,
    InvalidFilterError,
    InvalidInputError,
    InvalidVectorError,
    NotFoundError,
)
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

ID_POOL = ["a", "b", "c", "d", "e", "f", "g", "ü-1", "日本", "id with space", "Z", "a/b"]
SCOPES = ["/", "/a", "/a/b", "/a/b/c", "/ab", "/share\\", "/share\\docs", "/ü"]
FILTER_SCOPES = ["/", "/a", "/a/b", "/ab", "/share\\", "/share", "/ü", "/none"]
CATEGORIES = ["x", "y", "z", "ü"]
SOURCES = [None, "s1", "s2"]
TIMES = [1000.0, 1500.5, 2000.0, 3000.0]
META_KEYS = ["k", "n", "f", "ü"]
META_SCALARS = ["s", "", "ü", 0, 1, 1.0, 2.5, -3, True, False, None]
DIMS = [3, 4, 5]

meta_values = st.sampled_from(META_SCALARS) | st.sampled_from([[1, "x"], {"a": None}, []])
metadata_strategy = st.dictionaries(st.sampled_from(META_KEYS), meta_values, max_size=3)
categories_strategy = st.lists(st.sampled_from(CATEGORIES), max_size=3, unique=True)
where_strategy = st.dictionaries(
    st.sampled_from(META_KEYS), st.sampled_from(META_SCALARS), min_size=1, max_size=2
)


def vector_strategy(dim: int):
    # Small integers: many exact and near ties, so tie order is exercised constantly.
    return (
        st.lists(st.integers(-2, 2), min_size=dim, max_size=dim)
        .filter(any)
        .map(lambda xs: np.array(xs, dtype=np.float32))
    )


def record_strategy(record_id: str, dim: int):
    return st.builds(
        Rec,
        id=st.just(record_id),
        vector=vector_strategy(dim),
        content=st.text(max_size=12),
        scope=st.sampled_from(SCOPES),
        categories=categories_strategy.map(tuple),
        metadata=metadata_strategy,
        importance=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        created_at=st.sampled_from(TIMES),
        last_accessed=st.none() | st.sampled_from(TIMES),
        source=st.sampled_from(SOURCES),
        private=st.booleans(),
    )


def probe_queries(dim: int) -> list[np.ndarray]:
    rng = np.random.default_rng(dim)
    queries = [np.ones(dim, np.float32), rng.standard_normal(dim).astype(np.float32)]
    unit = np.zeros(dim, np.float32)
    unit[0] = 1.0
    return queries + [unit]


class StorePair(RuleBasedStateMachine):
    """Two stores (engine, storage) that must behave identically, and a dict model.

    storage: "memory", "disk" (a file of a temporary folder) or "postgres" (a fresh store
    in the test session's schema, ``postgres`` set on the class by the test)."""

    store_kinds: tuple[tuple[str, str], ...] = ()
    postgres: PostgresServer | None = None

    def __init__(self):
        super().__init__()
        self.tmpdir = tempfile.mkdtemp(prefix="ferromem-sm-")
        self.paths = [self.location(i, storage) for i, (_, storage) in enumerate(self.store_kinds)]
        self.stores = [open_store(engine, path) for (engine, _), path in zip(self.store_kinds, self.paths)]
        # A second handle on every durable store: it must follow every write of the first
        # without reopening (change sequence / data_version catch-up). On PostgreSQL it is
        # another replica of the same process; max_staleness=0 makes it check the
        # database before every read, so that the check after a write is deterministic.
        self.observers = [
            open_store(engine, self.observer_path(path, storage))
            for (engine, storage), path in zip(self.store_kinds, self.paths)
            if storage != "memory"
        ]
        self.model: dict[str, Rec] = {}
        # The dimension the model believes is fixed; None only at the start and after reset.
        self.dim: int | None = None

    def location(self, i: int, storage: str) -> str | None:
        if storage == "memory":
            return None
        if storage == "disk":
            return os.path.join(self.tmpdir, f"store{i}.ferro")
        assert storage == "postgres" and self.postgres is not None, "set postgres on the machine class"
        return self.postgres.url(store=new_store_name("sm"))

    @staticmethod
    def observer_path(path: str | None, storage: str) -> str | None:
        return f"{path}&max_staleness=0" if storage == "postgres" else path

    def teardown(self):
        for store in self.stores + self.observers:
            try:
                store.close()
            except Exception:
                pass
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------

    def on_all(self, operation, expected_error=None):
        """Run ``operation(store)`` on every store; both must succeed with equal results or
        fail with the same ferromem error class (``expected_error`` when given)."""
        outcomes = []
        for store in self.stores:
            try:
                outcomes.append(("ok", operation(store)))
            except FerromemError as exc:
                outcomes.append(("error", type(exc)))
        kinds = {kind for kind, _ in outcomes}
        assert len(kinds) == 1, f"stores disagree: {outcomes}"
        if expected_error is not None:
            assert outcomes[0][0] == "error", f"expected {expected_error.__name__}, got {outcomes}"
            assert issubclass(outcomes[0][1], expected_error), (
                f"expected {expected_error.__name__}, got {outcomes}"
            )
            assert all(o[1] is outcomes[0][1] for o in outcomes), f"different error classes: {outcomes}"
        else:
            assert outcomes[0][0] == "ok", f"unexpected error {outcomes}"
        return [value for _, value in outcomes]

    def draw_dim(self, data) -> int:
        return self.dim if self.dim is not None else data.draw(st.sampled_from(DIMS), label="dim")

    # -- writes -------------------------------------------------------------------------

    @rule(data=st.data(), mode=st.sampled_from(["add", "upsert"]))
    def save_batch(self, data, mode):
        ids = data.draw(st.lists(st.sampled_from(ID_POOL), min_size=1, max_size=4, unique=True), label="ids")
        dim = self.draw_dim(data)
        recs = [data.draw(record_strategy(i, dim), label=f"record {i}") for i in ids]
        if mode == "add" and any(i in self.model for i in ids):
            self.on_all(lambda s: store_records(s, recs, "add"), DuplicateIdError)
            return
        returned = self.on_all(lambda s: store_records(s, recs, mode))
        assert all(r == ids for r in returned), returned
        for rec in recs:
            self.model[rec.id] = rec
        self.dim = dim

    @rule(data=st.data(), mode=st.sampled_from(["add", "upsert"]))
    def save_single(self, data, mode):
        """The single form: a str id, a 1-D vector, scalar fields."""
        record_id = data.draw(st.sampled_from(ID_POOL), label="id")
        rec = data.draw(record_strategy(record_id, self.draw_dim(data)), label="record")

        def save(store):
            return getattr(store, mode)(
                rec.id,
                rec.vector,
                contents=rec.content,
                scopes=rec.scope,
                categories=list(rec.categories),
                metadata=rec.metadata,
                importance=rec.importance,
                created_at=rec.created_at,
                last_accessed=rec.last_accessed,
                sources=rec.source,
                private=rec.private,
            )

        if mode == "add" and record_id in self.model:
            self.on_all(save, DuplicateIdError)
            return
        returned = self.on_all(save)
        assert all(r == [record_id] or r == record_id for r in returned), returned
        self.model[record_id] = rec
        self.dim = len(rec.vector)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def update(self, data):
        record_id = data.draw(st.sampled_from(sorted(self.model)), label="id")
        fields = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "content": st.text(max_size=8),
                    "scope": st.sampled_from(SCOPES),
                    "categories": categories_strategy,
                    "metadata": metadata_strategy,
                    "importance": st.sampled_from([0.1, 0.9]),
                    "created_at": st.sampled_from(TIMES),
                    "last_accessed": st.sampled_from(TIMES),
                    "source": st.sampled_from(SOURCES),
                    "private": st.booleans(),
                    "vector": vector_strategy(self.dim),
                },
            ),
            label="fields",
        )
        returned = self.on_all(lambda s: s.update(record_id, **fields))
        changes = dict(fields)
        if "categories" in changes:
            changes["categories"] = tuple(changes["categories"])
        self.model[record_id] = self.model[record_id].copy(**changes)
        for record in returned:
            assert_record_equal(record, self.model[record_id])

    @rule(data=st.data(), at=st.sampled_from([5000.0, 6000.0]))
    def touch(self, data, at):
        # Mostly ids that exist (a touch that finds nothing tests little), some that do not.
        pool = sorted(self.model) * 3 + ID_POOL
        ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True), label="ids")
        found = self.on_all(lambda s: s.touch(ids, at=at))
        existing = [i for i in ids if i in self.model]
        assert all(n == len(existing) for n in found), (found, existing)
        for i in existing:
            self.model[i] = self.model[i].copy(last_accessed=at)

    @rule(data=st.data())
    def delete(self, data):
        criteria = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "ids": st.lists(st.sampled_from(ID_POOL), min_size=1, max_size=5, unique=True),
                    "scope": st.sampled_from(FILTER_SCOPES),
                    "categories": st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=2, unique=True),
                    "older_than": st.sampled_from(TIMES + [9999.0]),
                    "where": where_strategy,
                    "source": st.sampled_from(["s1", "s2"]),
                },
            ).filter(bool),
            label="criteria",
        )
        if set(criteria) == {"scope"} and criteria["scope"] == "/":
            # The root scope matches everything, so it is no criterion: delete() refuses
            # to wipe the store by accident (reset() does that).
            self.on_all(lambda s: s.delete(**criteria), InvalidFilterError)
            return
        doomed = [r.id for r in self.model.values() if record_matches(r, **criteria)]
        counts = self.on_all(lambda s: s.delete(**criteria))
        assert all(n == len(doomed) for n in counts), (counts, doomed, criteria)
        for i in doomed:
            del self.model[i]

    @rule(record_id=st.sampled_from(ID_POOL))
    def delete_one_by_str(self, record_id):
        counts = self.on_all(lambda s: s.delete(record_id))
        assert all(n == (1 if record_id in self.model else 0) for n in counts), counts
        self.model.pop(record_id, None)

    @rule()
    def reset(self):
        self.on_all(lambda s: s.reset())
        self.model.clear()
        self.dim = None

    # -- invalid operations: same typed error from both, nothing changes ---------------

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def add_existing_id(self, data):
        existing = data.draw(st.sampled_from(sorted(self.model)), label="existing")
        fresh = [i for i in ID_POOL if i not in self.model][:1]
        recs = [data.draw(record_strategy(i, self.dim)) for i in [*fresh, existing]]
        self.on_all(lambda s: store_records(s, recs, "add"), DuplicateIdError)

    @rule(data=st.data(), mode=st.sampled_from(["add", "upsert"]))
    def duplicate_id_in_batch(self, data, mode):
        record_id = data.draw(st.sampled_from(ID_POOL))
        dim = self.draw_dim(data)
        recs = [data.draw(record_strategy(record_id, dim)) for _ in range(2)]
        self.on_all(lambda s: store_records(s, recs, mode), InvalidInputError)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), delta=st.sampled_from([-1, 1]))
    def wrong_dimension(self, data, delta):
        record_id = data.draw(st.sampled_from(ID_POOL))
        rec = data.draw(record_strategy(record_id, self.dim + delta))
        self.on_all(lambda s: store_records(s, [rec], "upsert"), DimensionMismatchError)
        existing = sorted(self.model)[0]
        self.on_all(lambda s: s.update(existing, vector=rec.vector), DimensionMismatchError)
        self.on_all(lambda s: s.search(rec.vector, 3), DimensionMismatchError)

    @rule(
        data=st.data(),
        bad=st.sampled_from(["nan", "inf", "-inf", "zero"]),
        mode=st.sampled_from(["add", "upsert"]),
    )
    def invalid_vector(self, data, bad, mode):
        dim = self.draw_dim(data)
        ids = data.draw(st.lists(st.sampled_from(ID_POOL), min_size=2, max_size=3, unique=True))
        if mode == "add":
            # Only fresh ids, so that the bad vector is the one thing wrong with the call.
            ids = [i for i in ids if i not in self.model]
            if not ids:
                mode = "upsert"
                ids = [sorted(self.model)[0]]
        recs = [data.draw(record_strategy(i, dim)) for i in ids]
        poisoned = recs[-1].vector.copy()
        if bad == "zero":
            poisoned[:] = 0.0
        else:
            poisoned[0] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[bad]
        recs[-1] = recs[-1].copy(vector=poisoned)
        self.on_all(lambda s: store_records(s, recs, mode), InvalidVectorError)
        if self.model:
            existing = sorted(self.model)[0]
            self.on_all(lambda s: s.update(existing, vector=poisoned), InvalidVectorError)
        if self.dim is not None:
            self.on_all(lambda s: s.search(poisoned, 3), InvalidVectorError)

    @rule(record_id=st.sampled_from(ID_POOL))
    def update_missing(self, record_id):
        if record_id in self.model:
            return
        self.on_all(lambda s: s.update(record_id, content="nope"), NotFoundError)

    @rule()
    def invalid_filters(self):
        self.on_all(lambda s: s.delete(), InvalidFilterError)
        self.on_all(lambda s: s.delete(scope="/"), InvalidFilterError)
        self.on_all(lambda s: s.count(categories="x"), InvalidFilterError)
        self.on_all(lambda s: s.delete(categories="x"), InvalidFilterError)

    # -- checks after every step --------------------------------------------------------

    @invariant()
    def disk_equals_model(self):
        """What is on disk is the model: a freshly opened handle and the long-lived
        observer handle both hold exactly the model's records."""
        fresh = [
            open_store(engine, path)
            for (engine, storage), path in zip(self.store_kinds, self.paths)
            if storage != "memory"
        ]
        try:
            for store in fresh + self.observers:
                assert store.count() == len(self.model)
                for record_id, record in zip(ID_POOL, store.get_many(ID_POOL)):
                    if record_id in self.model:
                        assert_record_equal(record, self.model[record_id])
                    else:
                        assert record is None, f"{record_id!r} should not exist on disk"
        finally:
            for store in fresh:
                store.close()

    @invariant()
    def stores_equal_model(self):
        model = self.model
        for store in self.stores:
            assert store.count() == len(model)
            assert len(store) == len(model)
            if model:
                assert store.dim == self.dim
        for filters in (
            {"scope": "/a"},
            {"include_private": False, "visible_to": "s1"},
            {"categories": ["x", "ü"]},
            {"where": {"n": 1}},
        ):
            want = sum(1 for r in model.values() if record_matches(r, **filters))
            for store in self.stores:
                assert store.count(**filters) == want, filters

        fetched = [store.get_many(ID_POOL) for store in self.stores]
        for i, record_id in enumerate(ID_POOL):
            for records in fetched:
                if record_id in model:
                    assert_record_equal(records[i], model[record_id])
                else:
                    assert records[i] is None, f"{record_id!r} should not exist"
            assert_records_same(fetched[0][i], fetched[1][i])
        for store in self.stores:
            single = store.get(ID_POOL[0])
            assert (single is None) == (ID_POOL[0] not in model)

        everything = list_order(model.values())
        for store in self.stores:
            assert [r.id for r in store.list()] == everything
            assert [r.id for r in store.list(offset=1, limit=2)] == everything[1:3]
            assert [r.id for r in store.list(offset=len(everything) + 1)] == []
            in_a = list_order(
                r for r in model.values() if record_matches(r, scope="/a", include_private=False)
            )
            assert [r.id for r in store.list(scope="/a", include_private=False)] == in_a

        for scope in ("/", "/a", "/share\\"):
            children = [store.child_scopes(scope) for store in self.stores]
            assert children[0] == children[1], (scope, children)
            assert children[0] == sorted(children[0])
        want_counts = category_counts(model.values())
        want_counts_a = category_counts(r for r in model.values() if record_matches(r, scope="/a"))
        for store in self.stores:
            assert store.category_counts() == want_counts
            assert store.category_counts(scope="/a") == want_counts_a
        infos = [store.scope_info("/") for store in self.stores]
        assert infos[0] == infos[1]
        assert infos[0].record_count == len(model)

        if model:
            oracle = Oracle(list(model.values()))
            for qi, query in enumerate(probe_queries(self.dim)):
                for k in (1, 3, len(model) + 1):
                    for filters in (
                        {},
                        {"scope": "/a", "include_private": False, "visible_to": "s1"},
                        {"categories": ["x", "y"]},
                    ):
                        results = [store.search(query, k, **filters) for store in self.stores]
                        for result in results:
                            oracle.check(result, query, k, context=f"q{qi} k={k} {filters}", **filters)
                        assert_same_search(results[0], results[1], context=f"q{qi} k={k} {filters}")


class ReopenablePair(StorePair):
    """Adds a rule that closes and reopens every durable store at its location."""

    @rule()
    def reopen(self):
        for i, ((engine, storage), path) in enumerate(zip(self.store_kinds, self.paths)):
            if storage != "memory":
                self.stores[i].close()
                self.stores[i] = open_store(engine, path)


class ReferenceMemoryVsReferenceDisk(ReopenablePair):
    store_kinds = (("reference", "memory"), ("reference", "disk"))


class NativeVsReferenceInMemory(StorePair):
    store_kinds = (("native", "memory"), ("reference", "memory"))


class NativeVsReferenceOnDisk(ReopenablePair):
    store_kinds = (("native", "disk"), ("reference", "disk"))


class NativeOnPostgresVsReference(ReopenablePair):
    store_kinds = (("native", "postgres"), ("reference", "memory"))


def machine_settings():
    return hypothesis_settings(
        max_examples=env_int("FERROMEM_SM_EXAMPLES", 40),
        stateful_step_count=env_int("FERROMEM_SM_STEPS", 30),
    )


def test_reference_in_memory_vs_reference_on_disk_with_reopen():
    run_state_machine_as_test(ReferenceMemoryVsReferenceDisk, settings=machine_settings())


def test_native_vs_reference_in_memory():
    require_engine("native")
    run_state_machine_as_test(NativeVsReferenceInMemory, settings=machine_settings())


def test_native_vs_reference_on_disk_with_reopen():
    require_engine("native")
    run_state_machine_as_test(NativeVsReferenceOnDisk, settings=machine_settings())


@pytest.mark.postgres
def test_native_on_postgres_vs_reference_with_reopen(postgres, monkeypatch):
    """The native store on PostgreSQL (a fresh store per example, every write a server
    transaction, every check a freshly loaded replica and one that catches up) against the
    reference engine in memory."""
    monkeypatch.setattr(NativeOnPostgresVsReference, "postgres", postgres)
    run_state_machine_as_test(NativeOnPostgresVsReference, settings=machine_settings())
    from psycopg import sql

    with postgres.connect() as conn:
        stores = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.ferromem_stores WHERE name LIKE 'sm-%'").format(
                sql.Identifier(postgres.schema)
            )
        ).fetchone()[0]
    assert stores >= env_int("FERROMEM_SM_EXAMPLES", 40) // 2, "the machine's stores were not on the server"


@pytest.mark.parametrize("engine", ["reference", "native"])
def test_machine_detects_a_divergent_store(engine):
    """The comparison can fail: a store that silently drops a write is caught."""
    require_engine(engine)
    machine = type("Pair", (StorePair,), {"store_kinds": ((engine, "memory"), (engine, "memory"))})()
    try:
        recs = [Rec(id="a", vector=np.ones(3, np.float32), created_at=1000.0)]
        store_records(machine.stores[0], recs)  # only the first store gets it
        machine.model["a"] = recs[0]
        machine.dim = 3
        with pytest.raises(AssertionError):
            machine.stores_equal_model()
    finally:
        machine.teardown()
