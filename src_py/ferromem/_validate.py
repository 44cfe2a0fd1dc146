"""Argument checking for the Store facade, and the canonical filter dict.

Everything a caller passes is checked here before the engine sees it, so a bad call
writes nothing. Each check returns the value in the form the engine takes (str, float,
list[str], a JSON text) and raises a typed error from ``ferromem.exceptions`` whose
message says what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._schema import Filter, RecordBatch
from ._typing import RecordFields
from .exceptions import (
    InvalidFilterError,
    InvalidIdError,
    InvalidInputError,
    InvalidMetadataError,
)

DURABILITIES = ("normal", "full")
ENGINES = ("auto", "native", "reference")

# serde_json (the native engine's parser) refuses documents nested deeper than 128;
# stay well inside that so that both engines accept the same metadata.
_MAX_METADATA_DEPTH = 64

_INTEGER_TYPES = (int, np.integer)
# Counts and positions beyond any store (offset, limit, cache_size) saturate here: the
# engine takes them as 64-bit unsigned integers, and no store holds 2^62 of anything.
_SATURATED = 2**62
# The largest dim= a store takes: far above any embedding model (one vector would be
# 64 MiB), and within every native integer. (int8 stores take at most 65,536 values; the
# engine says so.)
MAX_DIM = 2**24
_REAL_TYPES = (int, float, np.integer, np.floating)
_BOOL_TYPES = (bool, np.bool_)


def _type_name(value: Any) -> str:
    return type(value).__name__


def _is_utf8_encodable(text: str) -> bool:
    # Lone surrogates ("\ud800") are valid in a Python str but not in UTF-8, which is what
    # SQLite and Rust store; reject them here instead of failing half-way in the engine.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- open()


def check_path(path: Any) -> str | None:
    """None (in-memory) or an absolute file path as str."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(
            f"path must be a str, an os.PathLike or None (in-memory), got {_type_name(path)}"
        )
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise InvalidInputError("path must be a str path, not bytes; decode it first")
    if not text:
        raise InvalidInputError("path is empty; pass a file path or None for in-memory")
    if not _is_utf8_encodable(text):
        raise InvalidInputError("path contains characters that cannot be encoded as UTF-8")
    text = os.path.abspath(text)
    if os.path.isdir(text):
        raise InvalidInputError(
            f"path {text!r} is a directory; a store is a single file, pass a file path "
            f"such as {os.path.join(text, 'memory.ferro')!r}"
        )
    return text


def check_dim(dim: Any) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, _BOOL_TYPES) or not isinstance(dim, _INTEGER_TYPES):
        raise InvalidInputError(f"dim must be a positive int or None, got {_type_name(dim)}")
    if not 1 <= dim <= MAX_DIM:
        raise InvalidInputError(f"dim must be an int between 1 and {MAX_DIM} or None, got {dim}")
    return int(dim)


def check_durability(durability: Any) -> str:
    if not isinstance(durability, str) or durability not in DURABILITIES:
        raise InvalidInputError(
            f"durability must be 'normal' (survives a process crash) or 'full' (also "
            f"survives power loss, one fsync per write), got {durability!r}"
        )
    return durability


def check_engine(engine: Any) -> str:
    if not isinstance(engine, str) or engine not in ENGINES:
        raise InvalidInputError(f"engine must be 'auto', 'native' or 'reference', got {engine!r}")
    return engine


# --------------------------------------------------------------------------- ids


def check_id(value: Any, name: str = "id") -> str:
    if not isinstance(value, str):
        raise InvalidIdError(f"{name} must be a str, got {_type_name(value)}: {value!r}")
    if not value:
        raise InvalidIdError(f"{name} is empty; ids must be non-empty strings")
    if not _is_utf8_encodable(value):
        raise InvalidIdError(f"{name} {value!r} contains a lone surrogate and cannot be stored as UTF-8")
    return value


def check_id_list(value: Any, name: str = "ids") -> list[str]:
    """A list, tuple or 1-D array of ids; a bare str is rejected (it is one id)."""
    if isinstance(value, str):
        raise InvalidIdError(f"{name} must be a list of str, got a str; pass [{value!r}]")
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise InvalidIdError(f"{name} must be a 1-D sequence of str, got shape {value.shape}")
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise InvalidIdError(
            f"{name} must be a list or tuple of str, got {_type_name(value)}"
            + ("; sets have no order, pass a list" if isinstance(value, (set, frozenset)) else "")
        )
    return [check_id(item, f"{name}[{i}]") for i, item in enumerate(value)]


def ids_or_single(value: Any, name: str = "ids") -> list[str]:
    """One id (str) or a list of ids, as a list without duplicates (order kept)."""
    ids = [check_id(value, name)] if isinstance(value, str) else check_id_list(value, name)
    return list(dict.fromkeys(ids))


def check_unique_ids(ids: list[str]) -> None:
    """Ids in one batch are unique (the facade's check, and the reference engine's
    re-check, with one wording)."""
    seen: set[str] = set()
    for record_id in ids:
        if record_id in seen:
            raise InvalidInputError(
                f"id {record_id!r} appears more than once in this batch; ids in one call must be unique"
            )
        seen.add(record_id)


def check_vector_count(n_ids: int, n_vectors: int) -> None:
    """One vector per id (the facade's check, and the reference engine's re-check)."""
    if n_vectors != n_ids:
        raise InvalidInputError(f"{n_ids} ids but {n_vectors} vectors; pass one vector per id")


# --------------------------------------------------------------------------- fields


def check_text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a str, got {_type_name(value)}")
    if not _is_utf8_encodable(value):
        raise InvalidInputError(f"{name} contains a lone surrogate and cannot be stored as UTF-8")
    return value


def check_scope(value: Any, name: str = "scope", error: type[Exception] = InvalidInputError) -> str:
    """A scope path: a str that starts with '/'."""
    if not isinstance(value, str):
        raise error(f"{name} must be a str path such as '/project/agent', got {_type_name(value)}")
    if not value.startswith("/"):
        raise error(
            f"{name} must be a path that starts with '/', such as '/project/agent'; "
            f"got {value!r} (did you mean {'/' + value!r}?)"
        )
    if not _is_utf8_encodable(value):
        raise error(f"{name} contains a lone surrogate and cannot be stored as UTF-8")
    return value


def scope_argument(value: Any, name: str = "scope") -> str:
    """The scope argument of child_scopes/scope_info: None is the root; a trailing '/'
    is dropped so that '/a/' and '/a' name the same node."""
    if value is None:
        return "/"
    scope = check_scope(value, name, InvalidFilterError)
    stripped = scope.rstrip("/")
    return stripped or "/"


def check_source(value: Any, name: str = "source") -> str | None:
    if value is None:
        return None
    return check_text(value, name)


def check_categories(value: Any, name: str = "categories") -> list[str]:
    """One record's categories: a list or tuple of non-empty str; duplicates dropped."""
    if isinstance(value, str):
        raise InvalidInputError(f"{name} must be a list of str, got a str; pass [{value!r}]")
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(f"{name} must be a list of str, got {_type_name(value)}")
    categories = []
    for i, item in enumerate(value):
        check_text(item, f"{name}[{i}]")
        if not item:
            raise InvalidInputError(f"{name}[{i}] is empty; categories are non-empty strings")
        categories.append(item)
    # A record either has a category or not; duplicates would double-count it.
    return list(dict.fromkeys(categories))


def check_real(value: Any, name: str, error: type[Exception] = InvalidInputError) -> float:
    """A finite real number (bool excluded) as float."""
    if isinstance(value, _BOOL_TYPES) or not isinstance(value, _REAL_TYPES):
        raise error(f"{name} must be a number, got {_type_name(value)}: {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise error(f"{name} is too large to be a float: {value!r}") from None
    if not math.isfinite(number):
        raise error(f"{name} must be a finite number, got {number!r}")
    return number


def check_timestamp(value: Any, name: str, error: type[Exception] = InvalidInputError) -> float:
    """Unix seconds (a finite number) or a datetime (naive ones are local time)."""
    if isinstance(value, _dt.datetime):
        try:
            return value.timestamp()
        except (OverflowError, ValueError, OSError) as exc:
            # datetime.min / datetime.max as local time fall outside what the platform's
            # time functions convert.
            raise error(
                f"{name} {value!r} cannot be converted to unix seconds ({exc}); pass a "
                "datetime between the years 1 and 9999 that your platform converts, "
                "preferably timezone-aware"
            ) from None
    if isinstance(value, _dt.date):
        raise error(f"{name} must be a datetime or unix seconds, got a date; use a datetime")
    if isinstance(value, _BOOL_TYPES) or not isinstance(value, _REAL_TYPES):
        raise error(f"{name} must be unix seconds (a number) or a datetime, got {_type_name(value)}")
    return check_real(value, name, error)


def check_bool(value: Any, name: str, error: type[Exception] = InvalidInputError) -> bool:
    if not isinstance(value, _BOOL_TYPES):
        raise error(f"{name} must be True or False, got {_type_name(value)}: {value!r}")
    return bool(value)


def _json_default(value: Any) -> Any:
    # Called by json.dumps only for values _check_json already accepted: numpy scalars.
    return value.item()


def _check_json(value: Any, path: str, depth: int, containers: set[int]) -> None:
    """Walks a metadata value and raises InvalidMetadataError at the first value that
    JSON cannot represent exactly, naming where it is."""
    if value is None or isinstance(value, (str, bool, np.bool_)):
        if isinstance(value, str) and not _is_utf8_encodable(value):
            raise InvalidMetadataError(f"{path} contains a lone surrogate, which is not valid UTF-8")
        return
    if isinstance(value, _REAL_TYPES):
        try:
            number = float(value)
        except OverflowError:
            raise InvalidMetadataError(
                f"{path} = {value!r} is too large for a JSON number (not JSON serializable)"
            ) from None
        if not math.isfinite(number):
            raise InvalidMetadataError(
                f"{path} is {number!r}, which is not JSON serializable (JSON has no NaN or "
                "Infinity); store None or a string instead"
            )
        return
    if isinstance(value, (dict, list, tuple)):
        if depth >= _MAX_METADATA_DEPTH:
            raise InvalidMetadataError(
                f"{path} is nested more than {_MAX_METADATA_DEPTH} levels deep; flatten it"
            )
        if id(value) in containers:
            raise InvalidMetadataError(f"{path} refers back to itself (a circular reference)")
        containers.add(id(value))
        try:
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise InvalidMetadataError(
                            f"{path} has the key {key!r} of type {_type_name(key)}; JSON object "
                            "keys must be str (convert the key with str())"
                        )
                    if not _is_utf8_encodable(key):
                        raise InvalidMetadataError(f"{path} has a key that is not valid UTF-8")
                    _check_json(item, f"{path}[{key!r}]", depth + 1, containers)
            else:
                for i, item in enumerate(value):
                    _check_json(item, f"{path}[{i}]", depth + 1, containers)
        finally:
            containers.discard(id(value))
        return
    hint = "; use a list" if isinstance(value, (set, frozenset)) else ""
    raise InvalidMetadataError(
        f"{path} is a {_type_name(value)}, which is not JSON serializable{hint}; metadata "
        "values must be str, int, float, bool, None, or lists and dicts of those"
    )


def metadata_json(value: Any, name: str = "metadata") -> str:
    """One record's metadata (a dict) as a compact JSON object text."""
    if not isinstance(value, dict):
        raise InvalidMetadataError(f"{name} must be a dict (a JSON object), got {_type_name(value)}")
    _check_json(value, name, 0, set())
    return json.dumps(
        value, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
    )


# --------------------------------------------------------------------------- records

_MISSING = object()


def _per_record(
    value: Any,
    n: int,
    name: str,
    is_one: Callable[[Any], bool],
    check_one: Callable[[Any, str], Any],
    error: type[Exception] = InvalidInputError,
) -> list[Any]:
    """A field of a batch: one value for all n records, or a sequence of n values."""
    if is_one(value):
        checked = check_one(value, name)
        return [checked] * n
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise error(
                f"{name} has {len(value)} values for {n} records; pass one value per "
                "record, or a single value for all of them"
            )
        return [check_one(item, f"{name}[{i}]") for i, item in enumerate(value)]
    return [check_one(value, name)] * n  # reports the type error with the right message


def _is_category_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(c, str) for c in value)


def record_batch(
    ids: list[str],
    vectors: np.ndarray,
    single: bool,
    fields: RecordFields,
    *,
    now: float,
) -> RecordBatch:
    """Checks the per-record fields of add/upsert (``fields``: the keywords given; one
    left out is None, the field's default) and returns the batch to save: one column of
    len(ids) values per field, and ``vectors`` (already a float32 matrix).

    ``single``: the call is the single-record form, where every field is a scalar (a
    list would be ambiguous there and is rejected by the scalar check).
    """
    n = len(ids)

    def field(value: Any, name: str, is_one, check_one, default, error=InvalidInputError):
        if value is None:
            return [default] * n
        if single:
            return [check_one(value, name)]
        return _per_record(value, n, name, is_one, check_one, error)

    def is_number(v: Any) -> bool:
        return isinstance(v, _REAL_TYPES) or isinstance(v, _dt.datetime)

    get = fields.get  # a field left out is None
    contents, scopes, categories = get("contents"), get("scopes"), get("categories")
    metadata, importance, sources = get("metadata"), get("importance"), get("sources")
    created_at, last_accessed, private = get("created_at"), get("last_accessed"), get("private")
    # In this order: the first bad field is the one reported.
    content = field(contents, "contents", lambda v: isinstance(v, str), check_text, "")
    scope = field(scopes, "scopes", lambda v: isinstance(v, str), check_scope, "/")
    category_lists = field(categories, "categories", _is_category_list, check_categories, [])
    metadata_texts = field(
        metadata, "metadata", lambda v: isinstance(v, dict), metadata_json, "{}", InvalidMetadataError
    )
    importances = field(importance, "importance", is_number, check_real, 0.5)
    created = field(created_at, "created_at", is_number, check_timestamp, now)
    privates = field(private, "private", lambda v: isinstance(v, _BOOL_TYPES), check_bool, False)
    if last_accessed is None:
        accessed = list(created)
    else:
        accessed = field(last_accessed, "last_accessed", is_number, check_timestamp, now)
    if sources is None:
        source_column: list[str | None] = [None] * n
    elif single:
        source_column = [check_source(sources, "sources")]
    else:
        source_column = _per_record(sources, n, "sources", lambda v: isinstance(v, str), check_source)
    return RecordBatch(
        id=ids,
        content=content,
        scope=scope,
        categories=category_lists,
        metadata_json=metadata_texts,
        importance=importances,
        created_at=created,
        last_accessed=accessed,
        source=source_column,
        private=privates,
        vector=vectors,
    )


# --------------------------------------------------------------------------- search


def check_k(k: Any) -> int:
    if isinstance(k, _BOOL_TYPES) or not isinstance(k, _INTEGER_TYPES):
        raise InvalidInputError(f"k must be an int >= 1, got {_type_name(k)}: {k!r}")
    if k < 1:
        raise InvalidInputError(f"k must be an int >= 1, got {k}")
    return int(k)


def check_min_score(min_score: Any) -> float | None:
    if min_score is None:
        return None
    return check_real(min_score, "min_score")


def check_offset(offset: Any) -> int:
    if isinstance(offset, _BOOL_TYPES) or not isinstance(offset, _INTEGER_TYPES):
        raise InvalidInputError(f"offset must be an int >= 0, got {_type_name(offset)}")
    if offset < 0:
        raise InvalidInputError(f"offset must be an int >= 0, got {offset}")
    return min(int(offset), _SATURATED)  # past the end either way


def check_cache_size(value: Any) -> int:
    if isinstance(value, _BOOL_TYPES) or not isinstance(value, _INTEGER_TYPES) or value < 0:
        raise InvalidInputError(
            f"cache_size must be an int >= 0 (0 turns the result cache off), got {value!r}"
        )
    return min(int(value), _SATURATED)


INDEX_MODES = ("auto", "exact", "hnsw")
MAX_EF_SEARCH = 100_000


PRECISIONS = ("f32", "f16", "int8")


def _check_one_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_precision(value: Any, path: str | None) -> str:
    _check_one_of("precision", value, PRECISIONS)
    if value != "f32" and path is None:
        raise InvalidInputError(
            f"precision={value!r} keeps the exact vectors on disk only, and an in-memory "
            "store has no disk: give a path or use precision='f32'"
        )
    return value


def check_index(value: Any) -> str:
    return _check_one_of("index", value, INDEX_MODES)


def check_ef_search(value: Any) -> int:
    if (
        isinstance(value, _BOOL_TYPES)
        or not isinstance(value, _INTEGER_TYPES)
        or not 1 <= value <= MAX_EF_SEARCH
    ):
        raise InvalidInputError(f"ef_search must be an int between 1 and {MAX_EF_SEARCH}, got {value!r}")
    return int(value)


DEFAULT_RECALL_TARGET = 0.95
# Stores of at least this many values (records x dimensions) get a graph under
# index="auto": 2^25, i.e. 21,845 records of 1536 dimensions or 87,381 of 384.
DEFAULT_GRAPH_MIN_VALUES = 1 << 25


def check_recall_target(value: Any) -> float:
    """The recall guard's target: a number in (0, 1]."""
    if isinstance(value, _BOOL_TYPES) or not isinstance(value, _REAL_TYPES):
        raise InvalidInputError(
            f"recall_target must be a number in (0, 1] (e.g. {DEFAULT_RECALL_TARGET}), got {_type_name(value)}"
        )
    try:
        target = float(value)
    except OverflowError:  # an int too large for a float: out of range all the same
        target = float("inf")
    if not 0.0 < target <= 1.0:  # NaN fails both
        raise InvalidInputError(
            f"recall_target must be a number in (0, 1] (e.g. {DEFAULT_RECALL_TARGET}: the graph serves "
            f"a search only while its measured recall@k is at least this), got {value!r}"
        )
    return target


def check_graph_min_values(value: Any) -> int:
    if isinstance(value, _BOOL_TYPES) or not isinstance(value, _INTEGER_TYPES) or value < 0:
        raise InvalidInputError(
            "graph_min_values must be an int >= 0 (the store size, records x dimensions, from "
            f"which index='auto' builds a graph), got {value!r}"
        )
    return min(int(value), _SATURATED)


def check_timeout(value: Any) -> float | None:
    """Seconds >= 0, or None for no limit; a timeout too long to matter (inf, 1e300, a
    huge int) is no limit too."""
    if value is None:
        return None
    if isinstance(value, _BOOL_TYPES) or not isinstance(value, _REAL_TYPES):
        raise InvalidInputError(f"timeout must be a number >= 0 or None, got {_type_name(value)}")
    if value < 0:
        raise InvalidInputError(f"timeout must be a number >= 0 or None, got {value}")
    try:
        seconds = float(value)
    except OverflowError:
        return None
    if math.isnan(seconds):
        raise InvalidInputError("timeout must be a number >= 0 or None, got nan")
    return None if math.isinf(seconds) else seconds


def check_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, _BOOL_TYPES) or not isinstance(limit, _INTEGER_TYPES):
        raise InvalidInputError(f"limit must be an int >= 0 or None, got {_type_name(limit)}")
    if limit < 0:
        raise InvalidInputError(f"limit must be an int >= 0 or None, got {limit}")
    return min(int(limit), _SATURATED)  # more than any store holds: no limit


# --------------------------------------------------------------------------- filters


def where_value(value: Any, name: str) -> Any:
    """A where-criterion's value: a scalar, in the form the engines compare (the
    facade's check, and the reference engine's re-check)."""
    if value is None or isinstance(value, str):
        if isinstance(value, str) and not _is_utf8_encodable(value):
            raise InvalidFilterError(f"{name} contains a lone surrogate")
        return value
    if isinstance(value, _BOOL_TYPES):
        return bool(value)
    if isinstance(value, _REAL_TYPES):
        number = check_real(value, name, InvalidFilterError)
        # Keep ints as ints (exact in JSON); the engines compare numbers numerically.
        return int(value) if isinstance(value, _INTEGER_TYPES) else number
    raise InvalidFilterError(
        f"{name} must be a str, int, float, bool or None (where is equality on scalar "
        f"metadata values), got {_type_name(value)}"
    )


def check_where(where: Any) -> list[tuple[str, Any]] | None:
    if where is None:
        return None
    if not isinstance(where, dict):
        raise InvalidFilterError(f"where must be a dict of metadata key -> value, got {_type_name(where)}")
    pairs = []
    for key, value in where.items():
        if not isinstance(key, str):
            raise InvalidFilterError(
                f"where keys must be str (metadata keys), got {_type_name(key)}: {key!r}"
            )
        pairs.append((key, where_value(value, f"where[{key!r}]")))
    pairs.sort(key=lambda pair: pair[0])
    return pairs


def build_filter(given: Mapping[str, Any]) -> Filter:
    """The engine's :class:`~ferromem._schema.Filter` for the criteria ``given`` (the
    keywords of ``ferromem._typing.Filters`` or ``DeleteCriteria``; one left out is None,
    but include_private, True), each checked and in canonical form (categories and ids
    sorted without duplicates, where pairs sorted by key)."""
    get = given.get
    scope, categories, where, source = get("scope"), get("categories"), get("where"), get("source")
    include_private, visible_to = get("include_private", True), get("visible_to")
    older_than, ids = get("older_than"), get("ids")
    criteria: dict[str, Any] = {}
    if scope is not None:
        criteria["scope"] = check_scope(scope, "scope", InvalidFilterError)
    if categories is not None:
        if isinstance(categories, str):
            raise InvalidFilterError(
                f"categories must be a list of str (any-of), got a str; pass a list: [{categories!r}]"
            )
        if not isinstance(categories, (list, tuple, set, frozenset)):
            raise InvalidFilterError(f"categories must be a list of str, got {_type_name(categories)}")
        for item in categories:
            if not isinstance(item, str):
                raise InvalidFilterError(
                    f"categories must be a list of str, got an item of type {_type_name(item)}"
                )
        criteria["categories"] = sorted(set(categories))
    pairs = check_where(where)
    if pairs:
        criteria["where"] = tuple(pairs)
    if source is not None:
        if not isinstance(source, str):
            raise InvalidFilterError(f"source must be a str or None, got {_type_name(source)}")
        criteria["source"] = source
    include_private = check_bool(include_private, "include_private", InvalidFilterError)
    if visible_to is not None:
        if not isinstance(visible_to, str):
            raise InvalidFilterError(
                f"visible_to must be a str (a source) or None, got {_type_name(visible_to)}"
            )
        if include_private:
            raise InvalidFilterError(
                "visible_to only applies with include_private=False (private records of "
                "other sources are then left out); pass include_private=False as well"
            )
        criteria["visible_to"] = visible_to
    if not include_private:
        criteria["include_private"] = False
    if older_than is not None:
        criteria["older_than"] = check_timestamp(older_than, "older_than", InvalidFilterError)
    if ids is not None:
        if isinstance(ids, str):
            raise InvalidFilterError(f"ids must be a list of str, got a str; pass [{ids!r}]")
        if not isinstance(ids, (list, tuple, set, frozenset)):
            raise InvalidFilterError(f"ids must be a list of str, got {_type_name(ids)}")
        for item in ids:
            if not isinstance(item, str):
                raise InvalidFilterError(f"ids must be a list of str, got an item of type {_type_name(item)}")
        criteria["ids"] = sorted(set(ids))
    return Filter(**criteria)


def require_delete_criterion(ids: list[str] | None, flt: Filter) -> Filter:
    """The filter of a delete, which must restrict something: a delete with neither ids
    nor a criterion would wipe the store, which is what reset() is for. A scope of '/'
    matches everything, so it does not count (and is dropped): a caller passing the root
    scope through must not wipe the store by accident. The one check of this rule for
    both engines (the reference engine calls it too; the native core keeps its own
    guard of its state)."""
    if flt.scope == "/":
        flt = dataclasses.replace(flt, scope=None)
    if ids is None and not flt.restricts():
        raise InvalidFilterError(
            "delete() needs at least one criterion (ids, scope other than '/', "
            "categories, where, source or older_than); use reset() to delete everything"
        )
    return flt
