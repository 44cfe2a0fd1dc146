"""One schema and one engine interface for both engines.

* The native classes of ``ferromem._core`` have exactly the fields of
  ``ferromem._schema`` (names and order), and the native engine reads the schema's
  classes (batch, patch, filter) field by field.
* Both engines satisfy ``ferromem._engine.Engine``: every method of the protocol, with
  the protocol's parameters in the protocol's order.
"""

from __future__ import annotations

import dataclasses
import inspect

import ferromem
import numpy as np
import pytest
from _helpers import require_engine
from ferromem import _engine, _schema
from ferromem._reference import ReferenceEngine
from ferromem._schema import UNCHANGED, Filter, Patch, RecordBatch, RecordRow, record_field_names


def _protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    """The methods a protocol declares (its own and inherited), with their signatures."""
    methods = {}
    for klass in reversed(protocol.__mro__):
        if klass in (object,) or not getattr(klass, "_is_protocol", False):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or isinstance(value, property):
                continue
            if callable(value):
                methods[name] = inspect.signature(value)
    return methods


def _parameters(signature: inspect.Signature) -> list[tuple[str, bool]]:
    """(name, has a default) of every parameter but self."""
    return [
        (p.name, p.default is not inspect.Parameter.empty)
        for p in signature.parameters.values()
        if p.name != "self"
    ]


def _engines():
    engines = [pytest.param(ReferenceEngine, id="reference")]
    try:
        from ferromem import _core
    except ImportError:
        return engines
    return [*engines, pytest.param(_core.Engine, id="native")]


# ----------------------------------------------------------------------------- schema


def test_schema_field_order_is_the_record_order():
    assert record_field_names() == (
        "id",
        "content",
        "scope",
        "categories",
        "metadata_json",
        "importance",
        "created_at",
        "last_accessed",
        "source",
        "private",
        "vector",
    )
    # The batch is the record, column by column; a patch is every field but the id.
    assert tuple(f.name for f in dataclasses.fields(RecordBatch)) == record_field_names()
    assert tuple(f.name for f in dataclasses.fields(Patch)) == record_field_names()[1:]


def test_native_record_row_has_exactly_the_schema_fields():
    require_engine("native")
    from ferromem import _core

    exposed = [
        name
        for name, value in vars(_core.RecordRow).items()
        if not name.startswith("_") and inspect.isdatadescriptor(value)
    ]
    assert sorted(exposed) == sorted(record_field_names())
    with ferromem.open(engine="native") as store:
        store.add("a", [1.0, 2.0], contents="x", metadata={"k": 1}, sources="s", categories=["c"])
        native_row = store._engine.get(["a"])[0]
    assert type(native_row).__name__ == "RecordRow" and type(native_row).__module__ == "ferromem._core"
    with ferromem.open(engine="reference") as store:
        store.add("a", [1.0, 2.0], contents="x", metadata={"k": 1}, sources="s", categories=["c"])
        reference_row = store._engine.get(["a"])[0]
    assert isinstance(reference_row, RecordRow)
    for name in record_field_names():
        native, reference = getattr(native_row, name), getattr(reference_row, name)
        if name == "vector":
            assert native.dtype == reference.dtype == np.float32
            assert not native.flags.writeable and not reference.flags.writeable
            np.testing.assert_array_equal(native, reference)
        elif name in ("created_at", "last_accessed"):
            assert type(native) is type(reference) is float
        else:
            assert (name, native) == (name, reference)
            assert type(native) is type(reference)


@pytest.mark.parametrize("engine_class", _engines())
def test_engines_read_every_field_of_batch_patch_and_filter(engine_class):
    engine = engine_class(None, None, "normal")
    try:
        vectors = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
        engine.upsert(
            RecordBatch(
                id=["a", "b"],
                content=["ca", "cb"],
                scope=["/x", "/y"],
                categories=[["k"], []],
                metadata_json=['{"n": 1}', "{}"],
                importance=[0.1, 0.2],
                created_at=[1.0, 2.0],
                last_accessed=[3.0, 4.0],
                source=["s", None],
                private=[True, False],
                vector=vectors,
            ),
            "insert",
        )
        a = engine.get(["a"])[0]
        assert (a.content, a.scope, a.categories, a.metadata_json) == ("ca", "/x", ["k"], '{"n": 1}')
        assert (a.importance, a.created_at, a.last_accessed, a.source, a.private) == (
            0.1,
            1.0,
            3.0,
            "s",
            True,
        )
        every_criterion = Filter(
            scope="/x",
            categories=["k"],
            where=(("n", 1),),
            source="s",
            include_private=False,
            visible_to="s",
            older_than=1.5,
            ids=["a", "b"],
        )
        assert engine.count(every_criterion) == 1
        assert engine.count(Filter(include_private=False)) == 1
        assert engine.count(Filter()) == engine.count(None) == 2
        # Only the fields given change; source=None clears the source.
        assert engine.update("a", Patch(content="new", source=None, vector=np.array([2.0, 1.0], np.float32)))
        a = engine.get(["a"])[0]
        assert (a.content, a.source, a.scope, a.private) == ("new", None, "/x", True)
        np.testing.assert_array_equal(a.vector, [2.0, 1.0])
        assert not engine.update("missing", Patch(content="x"))
        assert engine.delete(["a"], Filter(scope="/x")) == 1
        assert [row.id for row in engine.list(Filter(), 0, None)] == ["b"]
    finally:
        engine.close()


def test_unchanged_is_one_value():
    assert repr(UNCHANGED) == "UNCHANGED"
    assert Patch().changes() == {}
    assert Patch(source=None).changes() == {"source": None}
    assert _schema.Filter().restricts() is False
    assert _schema.Filter(scope="/").restricts() is False
    assert _schema.Filter(categories=[]).restricts() is True


@pytest.mark.parametrize("engine_class", _engines())
def test_delete_without_a_criterion_has_one_wording(engine_class):
    with ferromem.open(engine="reference") as store:
        with pytest.raises(ferromem.InvalidFilterError) as facade:
            store.delete(scope="/")
    engine = engine_class(None, None, "normal")
    try:
        if engine_class is ReferenceEngine:
            with pytest.raises(ferromem.InvalidFilterError) as direct:
                engine.delete(None, Filter(scope="/"))
            assert str(direct.value) == str(facade.value)
        else:  # the native core guards its state too, with its own words
            with pytest.raises(ferromem.InvalidFilterError):
                engine.delete(None, Filter(scope="/"))
    finally:
        engine.close()


# ----------------------------------------------------------------------------- protocol


@pytest.mark.parametrize("engine_class", _engines())
def test_engines_satisfy_the_protocol(engine_class):
    engine = engine_class(None, None, "normal")
    try:
        assert isinstance(engine, _engine.Engine)
        if engine_class is not ReferenceEngine:
            assert isinstance(engine, _engine.IndexedEngine)
    finally:
        engine.close()


@pytest.mark.parametrize("engine_class", _engines())
def test_engine_methods_take_the_protocol_parameters(engine_class):
    protocol = _engine.IndexedEngine if engine_class is not ReferenceEngine else _engine.Engine
    for name, wanted in _protocol_methods(protocol).items():
        method = getattr(engine_class, name)
        got = inspect.signature(method)
        assert _parameters(got) == _parameters(wanted), (name, str(got), str(wanted))


def _without(instance, missing: str) -> object:
    """An object with every field of a schema instance but ``missing``."""
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance) if f.name != missing}
    return type("Partial", (), values)()


def test_native_engine_reads_exactly_the_schema_fields():
    """Leaving out any one field of a batch, a patch or a filter fails: the binding reads
    every field the schema has (and the round trips above show it reads no other)."""
    require_engine("native")
    from ferromem import _core

    engine = _core.Engine(None, None, "normal")
    try:
        batch = RecordBatch(
            id=["a"],
            content=[""],
            scope=["/"],
            categories=[[]],
            metadata_json=["{}"],
            importance=[0.5],
            created_at=[0.0],
            last_accessed=[0.0],
            source=[None],
            private=[False],
            vector=np.ones((1, 2), np.float32),
        )
        for name in record_field_names():
            with pytest.raises(Exception, match=name):
                engine.upsert(_without(batch, name), "upsert")
        engine.upsert(batch, "upsert")
        for name in record_field_names()[1:]:
            with pytest.raises(Exception, match=name):
                engine.update("a", _without(Patch(), name))
        for field in dataclasses.fields(Filter):
            with pytest.raises(ferromem.InvalidFilterError, match=field.name):
                engine.count(_without(Filter(), field.name))
        assert engine.count(Filter()) == 1
    finally:
        engine.close()
