"""CrewAI's metadata filters, evaluated exactly.

CrewAI's backends compare metadata with Python equality: ``record.metadata.get(key) ==
value``. The engine's ``where`` filter is equality too, but typed (``True != 1``, and
``None`` matches a stored null, not a missing key) and on scalars only. Each filter pair
is therefore split: the pairs on which both agree go to the engine, which narrows the
candidates before ranking; the rest are checked in Python on those candidates only, and the
survivors are ranked by an ``ids=`` search. Either way the filter is applied before ranking,
so a filtered search returns min(limit, matches) results, unlike the built-in backends,
which filter after fetching a fixed number of neighbours.
"""

from __future__ import annotations

import math
from typing import Any

from ..exceptions import InvalidFilterError

__all__ = ["chroma_where", "split_metadata_filter", "residual_matches", "filter_ids", "afilter_ids"]


def _equalities(where: Any, name: str) -> list[tuple[str, Any]]:
    """The (key, value) pairs that must all hold, from CrewAI's or Chroma's filter form."""
    if not isinstance(where, dict):
        raise InvalidFilterError(
            f"{name} must be a dict such as {{'key': 'value'}}, got {type(where).__name__}"
        )
    pairs: list[tuple[str, Any]] = []
    for key, value in where.items():
        if key == "$and":
            if not isinstance(value, list):
                raise InvalidFilterError(f"'$and' takes a list of filters, got {value!r}")
            for clause in value:
                pairs.extend(_equalities(clause, name))
        elif isinstance(key, str) and key.startswith("$"):
            raise InvalidFilterError(
                f"unsupported filter operator {key!r}: ferromem takes {{key: value}}, "
                "{key: {'$eq': value}} and {'$and': [...]}"
            )
        elif isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value):
            if list(value) != ["$eq"]:
                raise InvalidFilterError(
                    f"unsupported condition {value!r} on {key!r}: only '$eq' is supported"
                )
            pairs.append((key, value["$eq"]))
        else:
            pairs.append((key, value))
    return pairs


def chroma_where(where: Any, name: str) -> dict[str, Any] | None:
    """A RAG metadata filter (``{key: value}``, ``{key: {"$eq": value}}`` or ``{"$and":
    [...]}``, the forms CrewAI's Chroma clients pass) as one equality per key: {} for no
    filter, None when two equalities on one key contradict (nothing matches)."""
    if where is None:
        return {}
    merged: dict[str, Any] = {}
    for key, value in _equalities(where, name):
        if key in merged and merged[key] != value:
            return None
        merged.setdefault(key, value)
    return merged


def _engine_agrees(value: Any) -> bool:
    """Whether the engine's typed equality on ``value`` equals Python's ``==``.

    A str equals only an equal str in both. A number other than 0 and 1 equals only an
    equal number in both (Python's bools are the integers 0 and 1). Everything else (None,
    bools, 0, 1, NaN, lists, dicts, other objects) is left to Python.
    """
    if isinstance(value, str):
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return value != 0 and value != 1


def split_metadata_filter(
    metadata_filter: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(pairs for the engine's ``where`` or None, pairs to check in Python)."""
    if metadata_filter is None:
        return None, {}
    if not isinstance(metadata_filter, dict):
        raise InvalidFilterError(
            f"metadata_filter must be a dict of metadata key -> value, got {type(metadata_filter).__name__}"
        )
    engine: dict[str, Any] = {}
    residual: dict[str, Any] = {}
    for key, value in metadata_filter.items():
        if not isinstance(key, str):
            raise InvalidFilterError(f"metadata_filter keys must be str, got {type(key).__name__}: {key!r}")
        (engine if _engine_agrees(value) else residual)[key] = value
    return (engine or None), residual


def residual_matches(metadata: dict[str, Any], residual: dict[str, Any]) -> bool:
    """CrewAI's own test: every pair equal under Python ``==`` (a missing key is None)."""
    for key, value in residual.items():
        if metadata.get(key) != value:
            return False
    return True


def filter_ids(store: Any, residual: dict[str, Any], **criteria: Any) -> list[str]:
    """The ids of the records matching ``criteria`` (engine filters) and ``residual``."""
    return [record.id for record in store.list(**criteria) if residual_matches(record.metadata, residual)]


async def afilter_ids(store: Any, residual: dict[str, Any], **criteria: Any) -> list[str]:
    """:func:`filter_ids` on a :class:`ferromem.AsyncStore`."""
    return [
        record.id for record in await store.list(**criteria) if residual_matches(record.metadata, residual)
    ]
