"""Shared helpers for ferromem's exactness, state-machine, crash, concurrency, multiprocess
and real-embedding tests.

Three things live here:

* the *oracle*: an independent, plain-Python/NumPy statement of the filter semantics of
  docs/architecture.md and an exact float64 brute-force cosine search, plus the checker
  that compares what a store returned with what the oracle says;
* a record model (:class:`Rec`) and the few calls that move records into and out of a
  store, so every test builds and compares records the same way;
* the entry points that child processes run (crash writer, multiprocess server and
  writer). They live in this module so the parent and the child derive records from an
  id with the very same code. This module therefore imports neither pytest nor ferromem
  at import time: children start fast and only load what they use.

The tests, grouped by topic in sub-folders, import it as ``from _helpers import ...``:
pytest puts the tests directory on ``sys.path`` (``pythonpath`` in pyproject.toml).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

# Strings that break hand-built SQL, LIKE patterns, paths or encodings, for the
# round-trip tests of every adapter. Quotes, SQL LIKE wildcards, backslashes, control characters, NUL, non-BMP and
# right-to-left text, combining and zero-width characters, empty and blank strings.
HOSTILE = [
    'it\'s "quoted"',
    "50%_off",
    "5_%xoff",
    "%",
    "_",
    "back\\slash\\\\",
    "C:\\path\\to",
    "tab\tnew\nline",
    "nul\x00byte",
    "茶🍵 ✓",
    "עברית RTL",
    "e\u0301 combining",
    "zero\u200bwidth",
    "",
    " ",
    "'; DROP TABLE memories; --",
    "price $5",
    "a.b[0]",
    '{"json": 1}',
]

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# A reported score may differ from the exact float64 cosine by this much (the engines
# compute in float32). Two exact scores closer than this are a near tie: either order of
# the two records is right.
SCORE_TOL = 1e-5

ENGINES = ("reference", "native")
REFERENCE_HAS_NO_POSTGRES = "the reference engine has no PostgreSQL backend (it raises UnsupportedStoreError)"


# --------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------

_native_error_cache: list[str | None] = []


def native_import_error() -> str | None:
    """Why ``ferromem._core`` cannot be imported, or None when it can."""
    if not _native_error_cache:
        try:
            core = importlib.import_module("ferromem._core")
        except Exception as exc:  # any failure to load means "native unavailable"
            _native_error_cache.append(f"{type(exc).__name__}: {exc}")
        else:
            partial = not hasattr(core, "Engine")
            _native_error_cache.append("it has no Engine yet (partial build)" if partial else None)
    return _native_error_cache[0]


def native_skip_reason() -> str:
    return (
        "native engine unavailable: ferromem._core is not importable "
        f"({native_import_error()}); build it with `pip install -e .`"
    )


def engine_params(engines: Sequence[str] = ENGINES) -> list:
    """``pytest.param`` list for ``@pytest.mark.parametrize("engine", ...)``.

    The native engine's param carries a skip mark while ``ferromem._core`` cannot load.
    """
    import pytest

    params = []
    for engine in engines:
        marks = []
        if engine == "native" and native_import_error() is not None:
            marks.append(pytest.mark.skip(reason=native_skip_reason()))
        params.append(pytest.param(engine, marks=marks, id=engine))
    return params


def require_engine(engine: str) -> None:
    """Skip the running test when ``engine`` cannot be used (called inside tests)."""
    if engine == "native" and native_import_error() is not None:
        import pytest

        pytest.skip(native_skip_reason())


def open_store(engine: str, path: str | os.PathLike | None = None, **kwargs):
    import ferromem

    return ferromem.open(None if path is None else str(path), engine=engine, **kwargs)


def child_env() -> dict[str, str]:
    """Environment for child Python processes: they import ferromem from where this
    process found it, and ``_helpers`` from the tests directory."""
    import ferromem

    package_parent = str(Path(ferromem.__file__).resolve().parent.parent)
    env = dict(os.environ)
    parts = [package_parent, str(TESTS_DIR)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    # A child of a test must not load a different engine than the one asked for.
    env.pop("FERROMEM_ENGINE", None)
    return env


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def shared_data_dir() -> Path | None:
    """The shared data folder: $FERROMEM_SHARED_DATA, else <repo>/../shared/data."""
    configured = os.environ.get("FERROMEM_SHARED_DATA")
    candidate = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


MINILM_NPZ = "docs-minilm384.npz"


def load_minilm(*names: str) -> tuple:
    """The named arrays of the shared MiniLM set (docs-minilm384.npz: passages, queries,
    queries_top10, ...), as stored; skips the calling test, saying why, when it is absent."""
    import pytest

    folder = shared_data_dir()
    if folder is None or not (folder / MINILM_NPZ).is_file():
        pytest.skip(
            f"real embeddings absent: {MINILM_NPZ} not found (set FERROMEM_SHARED_DATA to its "
            "folder, or place it at <repo>/../shared/data)"
        )
    with np.load(folder / MINILM_NPZ) as arrays:
        return tuple(arrays[name] for name in names)


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


@dataclass
class Rec:
    """What a test expects a stored record to be (the model side of every comparison)."""

    id: str
    vector: np.ndarray  # float32, 1-D, exactly what was passed in
    content: str = ""
    scope: str = "/"
    categories: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict)
    importance: float = 0.5
    created_at: float = 1_700_000_000.0
    last_accessed: float | None = None  # None -> created_at
    source: str | None = None
    private: bool = False

    def __post_init__(self) -> None:
        self.vector = np.ascontiguousarray(self.vector, dtype=np.float32).reshape(-1)
        self.categories = tuple(self.categories)
        if self.last_accessed is None:
            self.last_accessed = self.created_at

    def copy(self, **changes) -> Rec:
        changes.setdefault("vector", self.vector.copy())
        changes.setdefault("metadata", json.loads(json.dumps(self.metadata)))
        return replace(self, **changes)


RECORD_FIELDS = (
    "content",
    "scope",
    "categories",
    "metadata",
    "importance",
    "created_at",
    "last_accessed",
    "source",
    "private",
)


def store_records(store, recs: Sequence[Rec], mode: str = "add") -> list[str]:
    """Save ``recs`` with one batched ``add`` (or ``upsert``) call, every field explicit."""
    method = getattr(store, mode)
    if not recs:
        raise ValueError("store_records needs at least one record")
    return method(
        [r.id for r in recs],
        np.stack([r.vector for r in recs]).astype(np.float32),
        contents=[r.content for r in recs],
        scopes=[r.scope for r in recs],
        categories=[list(r.categories) for r in recs],
        metadata=[r.metadata for r in recs],
        importance=[r.importance for r in recs],
        created_at=[r.created_at for r in recs],
        last_accessed=[r.last_accessed for r in recs],
        sources=[r.source for r in recs],
        private=[r.private for r in recs],
    )


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values that also compares types (True != 1, 1 != 1.0), so that a
    value read back as another JSON type is caught."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return type(a) is type(b) and a == b
    return type(a) is type(b) and a == b


def record_mismatches(got, expected: Rec) -> list[str]:
    """Differences between a store's ``Record`` and the expected :class:`Rec` (empty when
    they agree). The vector must be bit-for-bit what was saved."""
    problems = []
    if got is None:
        return [f"record {expected.id!r} is missing"]
    if got.id != expected.id:
        problems.append(f"id {got.id!r} != {expected.id!r}")
    for name in RECORD_FIELDS:
        value, want = getattr(got, name), getattr(expected, name)
        if name == "categories":
            value = tuple(value)
        if name == "metadata":
            ok = json_equal(value, want)
        elif name in ("importance", "created_at", "last_accessed"):
            ok = isinstance(value, float) and value == float(want)
        elif name == "private":
            ok = value is want or (isinstance(value, bool) and value == want)
        else:
            ok = value == want
        if not ok:
            problems.append(f"{expected.id!r}.{name}: got {value!r}, expected {want!r}")
    vector = np.asarray(got.vector)
    if vector.dtype != np.float32 or vector.shape != expected.vector.shape:
        problems.append(
            f"{expected.id!r}.vector: dtype/shape {vector.dtype}{vector.shape}, expected "
            f"float32{expected.vector.shape}"
        )
    elif not np.array_equal(vector, expected.vector):
        problems.append(f"{expected.id!r}.vector differs from the saved vector")
    return problems


def assert_record_equal(got, expected: Rec) -> None:
    problems = record_mismatches(got, expected)
    assert not problems, "; ".join(problems)


def assert_records_same(a, b) -> None:
    """Two stores' ``Record`` objects (or None) agree on every field, vector bit-exact."""
    if a is None or b is None:
        assert a is None and b is None, f"one store has the record and the other not: {a!r} / {b!r}"
        return
    as_rec = Rec(
        id=b.id,
        vector=np.asarray(b.vector),
        content=b.content,
        scope=b.scope,
        categories=tuple(b.categories),
        metadata=b.metadata,
        importance=b.importance,
        created_at=b.created_at,
        last_accessed=b.last_accessed,
        source=b.source,
        private=b.private,
    )
    assert_record_equal(a, as_rec)


# --------------------------------------------------------------------------------------
# The filter oracle (docs/architecture.md, "Filter dict"), written independently
# --------------------------------------------------------------------------------------


def scope_matches(scope: str, prefix: str | None) -> bool:
    """A prefix matches at a boundary: equal, or followed by '/', or the prefix itself
    ends in a character that is not a letter or digit."""
    if prefix is None or prefix == "/":
        return True
    if scope == prefix:
        return True
    if not scope.startswith(prefix):
        return False
    return scope[len(prefix)] == "/" or not prefix[-1].isalnum()


_MISSING = object()


def where_value_matches(stored: Any, wanted: Any) -> bool:
    """Equality on a scalar metadata value: numbers numerically (1 == 1.0), booleans are
    not numbers, None matches only a stored null, containers never match."""
    if stored is _MISSING or isinstance(stored, (dict, list)):
        return False
    if wanted is None:
        return stored is None
    if isinstance(wanted, bool):
        return isinstance(stored, bool) and stored == wanted
    if isinstance(wanted, (int, float)):
        return (
            isinstance(stored, (int, float))
            and not isinstance(stored, bool)
            and float(stored) == float(wanted)
        )
    if isinstance(wanted, str):
        return isinstance(stored, str) and stored == wanted
    raise TypeError(f"not a scalar filter value: {wanted!r}")


def record_matches(
    rec: Rec,
    *,
    scope: str | None = None,
    categories: Iterable[str] | None = None,
    where: dict | None = None,
    source: str | None = None,
    include_private: bool = True,
    visible_to: str | None = None,
    older_than: float | None = None,
    ids: Iterable[str] | None = None,
) -> bool:
    if not scope_matches(rec.scope, scope):
        return False
    if categories is not None and not set(rec.categories) & set(categories):
        return False
    if where:
        for key, wanted in where.items():
            if not where_value_matches(rec.metadata.get(key, _MISSING), wanted):
                return False
    if source is not None and rec.source != source:
        return False
    if not include_private and rec.private:
        if visible_to is None or rec.source != visible_to:
            return False
    if older_than is not None and not rec.created_at < older_than:
        return False
    if ids is not None and rec.id not in set(ids):
        return False
    return True


def list_order(recs: Iterable[Rec]) -> list[str]:
    """Newest first: created_at descending, ties by id ascending."""
    return [r.id for r in sorted(recs, key=lambda r: (-r.created_at, r.id))]


def category_counts(recs: Iterable[Rec]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in recs:
        for category in set(rec.categories):
            counts[category] = counts.get(category, 0) + 1
    return counts


# --------------------------------------------------------------------------------------
# The search oracle and the exactness checker
# --------------------------------------------------------------------------------------


def normalized64(matrix: np.ndarray) -> np.ndarray:
    """Rows as float64 unit vectors (inputs are the stored float32 values)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / norms


class Oracle:
    """Exact float64 brute force over a fixed list of records."""

    def __init__(self, recs: Sequence[Rec]):
        self.recs = list(recs)
        self.ids = [r.id for r in self.recs]
        self.by_id = {r.id: r for r in self.recs}
        self.index_of = {rid: i for i, rid in enumerate(self.ids)}
        if self.recs:
            self.unit = normalized64(np.stack([r.vector for r in self.recs]))
        else:
            self.unit = np.zeros((0, 0))
        # Records with bit-identical vectors must tie exactly and come out in id order:
        # for each record that has twins, the indices of all records sharing its vector.
        groups: dict[bytes, list[int]] = {}
        for i, rec in enumerate(self.recs):
            groups.setdefault(rec.vector.tobytes(), []).append(i)
        self.twins = {i: members for members in groups.values() if len(members) > 1 for i in members}
        self._scores_cache: dict[bytes, np.ndarray] = {}

    def mask(self, **filters) -> np.ndarray:
        constrained = filters.get("include_private", True) is False or any(
            value is not None for key, value in filters.items() if key != "include_private"
        )
        if not constrained:
            return np.ones(len(self.recs), dtype=bool)
        return np.array([record_matches(r, **filters) for r in self.recs], dtype=bool)

    def scores(self, query: np.ndarray) -> np.ndarray:
        if not self.recs:
            return np.zeros(0)
        key = np.asarray(query, dtype=np.float32).tobytes()
        cached = self._scores_cache.get(key)
        if cached is None:
            if len(self._scores_cache) > 64:
                self._scores_cache.clear()
            cached = self._scores_cache[key] = self.unit @ normalized64(query)[0]
        return cached

    def check(self, result, query, k: int, *, mask=None, min_score=None, context="", **filters):
        """Assert that ``result`` (a SearchResult) is the exact answer for this query."""
        if mask is None:
            mask = self.mask(**filters)
        scores = self.scores(query)
        members = np.flatnonzero(mask)
        member_scores = scores[members]
        # Only the head of the ranking is needed: everything at or above the score of
        # rank k+1 (minus a margin, so that a near tie across the cut is complete).
        if len(members) > k + 1:
            cut = np.partition(member_scores, len(members) - (k + 1))[len(members) - (k + 1)]
            head = members[member_scores >= cut - 2 * SCORE_TOL]
        else:
            head = members
        ranked = sorted(((self.ids[i], float(scores[i])) for i in head), key=lambda item: (-item[1], item[0]))

        def exact_score(record_id: str) -> float | None:
            i = self.index_of.get(record_id)
            return None if i is None or not mask[i] else float(scores[i])

        def twins(record_id: str) -> list[str]:
            i = self.index_of[record_id]
            return [self.ids[j] for j in self.twins.get(i, ()) if mask[j]]

        check_ranking(
            list(result.ids),
            np.asarray(result.scores),
            ranked,
            member_scores,
            exact_score,
            twins,
            k,
            min_score=min_score,
            context=context,
        )


def assert_exact_ranking(
    got_ids: Sequence[str],
    got_scores: np.ndarray,
    candidates: dict[str, float],
    k: int,
    *,
    min_score: float | None = None,
    vector_keys: dict[str, bytes] | None = None,
    context: str = "",
) -> None:
    """:func:`check_ranking` for a plain dict of candidates (id -> exact score)."""
    ranked = sorted(candidates.items(), key=lambda item: (-item[1], item[0]))
    groups: dict[bytes, list[str]] = {}
    for cid in candidates:
        if vector_keys:
            groups.setdefault(vector_keys[cid], []).append(cid)

    def twins(record_id: str) -> list[str]:
        return groups[vector_keys[record_id]] if vector_keys else []

    check_ranking(
        got_ids,
        got_scores,
        ranked,
        np.array(list(candidates.values()), dtype=np.float64),
        candidates.get,
        twins,
        k,
        min_score=min_score,
        context=context,
    )


def check_ranking(
    got_ids: Sequence[str],
    got_scores: np.ndarray,
    ranked: list[tuple[str, float]],
    all_scores: np.ndarray,
    exact_score,
    twins,
    k: int,
    *,
    min_score: float | None = None,
    context: str = "",
    tol: float = SCORE_TOL,
) -> None:
    """The result is exactly the top ``k`` of the candidates.

    ``ranked``: the head of the exact ranking, (id, score) by score descending then id,
    at least k+1 long when there are that many candidates; ``all_scores``: the exact
    score of every candidate; ``exact_score(id)``: a candidate's exact score, None for a
    record that does not match; ``twins(id)``: the candidates whose vector is bit-for-bit
    that record's (itself included).

    Strict wherever the exact order is unambiguous: the i-th result must be the oracle's
    i-th record whenever that record's score is more than ``tol`` away from its
    neighbours'. Inside a near tie (scores within ``tol``) any order of the tied records
    is right, but the returned record must still have the oracle's i-th score. Every
    reported score must be the exact score within ``tol``, the list must be sorted by
    score descending with exact ties by id ascending, and records with bit-identical
    vectors must come in id order, the lower id never left out for a higher one.
    """
    where = f" [{context}]" if context else ""
    got_ids = [str(i) for i in got_ids]
    got_scores = np.asarray(got_scores, dtype=np.float64)
    if min_score is not None:
        sure = int(np.count_nonzero(all_scores >= min_score + tol))
        maybe = int(np.count_nonzero(all_scores >= min_score - tol))
        assert min(k, sure) <= len(got_ids) <= min(k, maybe), (
            f"{len(got_ids)} results, expected between {min(k, sure)} and {min(k, maybe)} "
            f"(k={k}, min_score={min_score}){where}"
        )
    else:
        assert len(got_ids) == min(k, len(all_scores)), (
            f"{len(got_ids)} results, expected min(k={k}, matches={len(all_scores)}){where}"
        )
    assert len(got_scores) == len(got_ids), f"{len(got_scores)} scores for {len(got_ids)} ids{where}"
    assert len(set(got_ids)) == len(got_ids), f"duplicate ids in result {got_ids}{where}"
    for i, (gid, gscore) in enumerate(zip(got_ids, got_scores)):
        exact = exact_score(gid)
        assert exact is not None, f"result {i} {gid!r} does not match the filter (or does not exist){where}"
        assert abs(gscore - exact) <= tol, (
            f"result {i} {gid!r}: reported score {gscore!r}, exact cosine {exact!r}{where}"
        )
        want_id, want_score = ranked[i]
        assert abs(exact - want_score) <= tol, (
            f"result {i} is {gid!r} (score {exact:.8f}) but the exact rank {i} is "
            f"{want_id!r} (score {want_score:.8f}){where}\n got: {got_ids}\n want: "
            f"{[r[0] for r in ranked[: len(got_ids)]]}"
        )
        isolated = (i == 0 or ranked[i - 1][1] - want_score > tol) and (
            i + 1 >= len(ranked) or want_score - ranked[i + 1][1] > tol
        )
        if isolated:
            assert gid == want_id, f"result {i} is {gid!r}, expected {want_id!r} (no tie within {tol}){where}"
        if min_score is not None:
            # The engine filters on its own float32 score; allow float32 rounding of the bound.
            assert gscore >= min_score - 1e-6, f"{gid!r} score {gscore} < min_score {min_score}{where}"
        if i:
            assert got_scores[i - 1] >= gscore, f"scores not descending at {i}: {got_scores}{where}"
            if got_scores[i - 1] == gscore:
                assert got_ids[i - 1] < gid, (
                    f"equal scores at {i - 1},{i} not in id order: {got_ids[i - 1]!r}, {gid!r}{where}"
                )
    position = {gid: i for i, gid in enumerate(got_ids)}
    for gid in got_ids:
        for twin in sorted(twins(gid)):
            if twin >= gid:
                break
            assert twin in position and position[twin] < position[gid], (
                f"{twin!r} and {gid!r} have identical vectors: the lower id must come "
                f"first and cannot be dropped for the higher one{where}; got {got_ids}"
            )


def assert_same_search(a, b, context: str = "", tol: float = SCORE_TOL) -> None:
    """Two engines' answers to the same search agree: same length, scores within ``tol``
    position by position, same ids except that records whose scores tie within ``tol``
    may trade places."""
    where = f" [{context}]" if context else ""
    ids_a, ids_b = [str(x) for x in a.ids], [str(x) for x in b.ids]
    sa, sb = np.asarray(a.scores, np.float64), np.asarray(b.scores, np.float64)
    assert len(ids_a) == len(ids_b), f"{len(ids_a)} vs {len(ids_b)} results{where}: {ids_a} / {ids_b}"
    assert np.all(np.abs(sa - sb) <= tol), f"scores differ{where}: {sa} / {sb}"
    if ids_a == ids_b:
        return
    # Positions whose ids differ must sit inside a run of tied scores.
    for i, (x, y) in enumerate(zip(ids_a, ids_b)):
        if x != y:
            tied = (i > 0 and abs(sa[i - 1] - sa[i]) <= tol) or (
                i + 1 < len(sa) and abs(sa[i + 1] - sa[i]) <= tol
            )
            last = i == len(sa) - 1  # the k-th place may be any of a tie just past it
            assert tied or last, f"result {i}: {x!r} vs {y!r} with no tie{where}: {ids_a} / {ids_b}"


# --------------------------------------------------------------------------------------
# Deterministic records derived from an id (crash, multiprocess, concurrency)
# --------------------------------------------------------------------------------------

DERIVED_DIM = 24


def _id_seed(record_id: str) -> int:
    return int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "little")


def derived_vector(record_id: str, dim: int = DERIVED_DIM, version: int = 0) -> np.ndarray:
    rng = np.random.default_rng([_id_seed(record_id), version])
    vector = rng.standard_normal(dim).astype(np.float32)
    vector[0] += np.float32(0.5)  # never all zero
    return vector


def derived_record(record_id: str, dim: int = DERIVED_DIM, version: int = 0, **extra_meta) -> Rec:
    """Every field of a record, a pure function of its id (and a version number)."""
    seed = _id_seed(record_id)
    metadata = {
        "id": record_id,
        "v": version,
        "pi": 3.25,
        "ok": seed % 3 == 0,
        "nil": None,
        "tags": ["x", seed % 7],
        "u": "ünï✓",
    }
    metadata.update(extra_meta)
    created = 1_700_000_000.0 + (seed % 1_000_000) / 8.0
    return Rec(
        id=record_id,
        vector=derived_vector(record_id, dim, version),
        content=f"memory {record_id} v{version} — ✓ {seed % 9973}",
        scope=f"/derived/{seed % 4}" + ("/deep" if seed % 5 == 0 else ""),
        categories=("derived", f"c{seed % 3}"),
        metadata=metadata,
        importance=(seed % 101) / 100.0,
        created_at=created,
        last_accessed=created + 1.5,
        source=None if seed % 4 == 0 else f"agent-{seed % 3}",
        private=seed % 2 == 0,
    )


# --------------------------------------------------------------------------------------
# Child process entry points
# --------------------------------------------------------------------------------------


def crash_batch_ids(cycle: int, batch: int, size: int) -> list[str]:
    """Ids of one batch; the id says which batch it belongs to and how big the batch is,
    so that the parent can check batches are all-or-nothing."""
    return [f"c{cycle}-b{batch}-{member}of{size}" for member in range(size)]


def parse_crash_id(record_id: str) -> tuple[int, int, int, int]:
    cycle, batch, rest = record_id.split("-")
    member, size = rest.split("of")
    return int(cycle[1:]), int(batch[1:]), int(member), int(size)


def crash_writer_main(argv: list[str]) -> None:
    """Open the store and save batches forever; print each batch's ids only after the
    save returned. The parent kills this process with SIGKILL at a random moment.

    With a sixth argument "fast_open", the store is opened with ``fast_open=True`` and
    now and then closed (which writes the store image) and opened again (from it), so
    that some kills land while an image is written or mapped."""
    path, engine, durability, cycle, seed = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    fast_open = argv[5:6] == ["fast_open"]
    import ferromem

    def reopen():
        return ferromem.open(path, engine=engine, durability=durability, fast_open=fast_open)

    store = reopen()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    rng = random.Random(seed)
    batch = 0
    while True:
        if fast_open and rng.random() < 0.15:
            store.close()
            store = reopen()
        # Mostly small batches; now and then a large one, so that some kills land
        # inside a commit and all-or-nothing is really put to the test.
        size = 200 if rng.random() < 0.05 else rng.choice((1, 1, 1, 2, 3, 5, 8))
        ids = crash_batch_ids(cycle, batch, size)
        store_records(store, [derived_record(i) for i in ids])
        out.write("ack " + json.dumps(ids) + "\n")
        out.flush()
        batch += 1


def store_server_main(argv: list[str]) -> None:
    """A second process holding one store open: it answers JSON commands, one per line
    on stdin, with one JSON line on stdout. It never reopens the store."""
    path, engine = argv[0], argv[1]
    import ferromem

    store = ferromem.open(path, engine=engine)
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "count":
                reply = {"count": store.count(**command.get("filter", {}))}
            elif op == "dim":
                reply = {"dim": store.dim}
            elif op == "get":
                reply = {"records": [record_to_json(store.get(i)) for i in command["ids"]]}
            elif op == "list":
                reply = {"ids": [r.id for r in store.list()]}
            elif op == "search":
                query = np.asarray(command["query"], dtype=np.float32)
                result = store.search(query, command["k"], **command.get("filter", {}))
                reply = {"ids": [str(i) for i in result.ids], "scores": [float(s) for s in result.scores]}
            elif op == "add":
                recs = [derived_record(i, command.get("dim", DERIVED_DIM)) for i in command["ids"]]
                reply = {"ids": store_records(store, recs)}
            elif op == "close":
                store.close()
                reply = {"closed": True}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # reported to the parent, which fails the test
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if op == "close":
            return


def record_to_json(record) -> dict | None:
    if record is None:
        return None
    return {
        "id": record.id,
        "vector": [float(x) for x in np.asarray(record.vector)],
        "content": record.content,
        "scope": record.scope,
        "categories": list(record.categories),
        "metadata": record.metadata,
        "importance": record.importance,
        "created_at": record.created_at,
        "last_accessed": record.last_accessed,
        "source": record.source,
        "private": record.private,
    }


def rec_from_json(data: dict) -> Rec:
    return Rec(
        id=data["id"],
        vector=np.asarray(data["vector"], dtype=np.float32),
        content=data["content"],
        scope=data["scope"],
        categories=tuple(data["categories"]),
        metadata=data["metadata"],
        importance=data["importance"],
        created_at=data["created_at"],
        last_accessed=data["last_accessed"],
        source=data["source"],
        private=data["private"],
    )


def concurrent_writer_main(argv: list[str]) -> None:
    """One of several processes writing distinct ids to one path at the same time.

    Waits for the start file (so that all writers overlap), saves ``total`` records in
    batches of random size, then checks it reads back every one of its own records."""
    path, engine, prefix, total, seed, start_file = (
        argv[0],
        argv[1],
        argv[2],
        int(argv[3]),
        int(argv[4]),
        argv[5],
    )
    import time

    import ferromem

    store = ferromem.open(path, engine=engine)
    deadline = time.monotonic() + 300
    while not os.path.exists(start_file):
        if time.monotonic() > deadline:
            raise SystemExit("start file never appeared")
        time.sleep(0.005)
    rng = random.Random(seed)
    written: list[str] = []
    while len(written) < total:
        size = min(rng.choice((1, 1, 2, 4, 7, 10)), total - len(written))
        ids = [f"{prefix}-{len(written) + m}" for m in range(size)]
        store_records(store, [derived_record(i) for i in ids])
        written.extend(ids)
        if rng.random() < 0.3:
            store.search(derived_vector(ids[0]), 5)
    for record_id, record in zip(written, store.get_many(written)):
        problems = record_mismatches(record, derived_record(record_id))
        if problems:
            raise SystemExit("; ".join(problems))
    store.close()
    print(json.dumps({"written": len(written)}), flush=True)


CHILD_ENTRY_POINTS = {
    "crash_writer": crash_writer_main,
    "store_server": store_server_main,
    "concurrent_writer": concurrent_writer_main,
}


def child_command(entry: str, *args: Any) -> list[str]:
    """argv that runs ``entry`` of this module in a fresh interpreter."""
    code = "import sys, _helpers; _helpers.CHILD_ENTRY_POINTS[sys.argv[1]](sys.argv[2:])"
    return [sys.executable, "-c", code, entry, *map(str, args)]


def hypothesis_settings(**overrides):
    """Hypothesis settings for these tests: no deadline (a shared 2-core machine is slow
    at random moments), derandomized so CI runs are reproducible; set
    FERROMEM_HYPOTHESIS_RANDOM=1 to explore fresh examples instead."""
    from hypothesis import HealthCheck, settings

    options = {
        "deadline": None,
        "derandomize": os.environ.get("FERROMEM_HYPOTHESIS_RANDOM") != "1",
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
        "print_blob": True,
    }
    options.update(overrides)
    return settings(**options)
