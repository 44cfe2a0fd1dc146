"""Command line: ``python -m ferromem demo`` (or ``ferromem demo``), ``ferromem import``,
``ferromem stats PATH``, ``ferromem check PATH`` and ``ferromem --version``.

An expected failure (a typed ferromem error, an OS error, a missing optional dependency)
is reported in one line on stderr with exit code 1; usage errors exit 2 (see main()).
A subcommand is one ``_add_<name>`` function in SUBCOMMANDS.

``demo`` runs a real CrewAI Memory workload on ferromem and on CrewAI's default storage
side by side (see :mod:`ferromem.crewai.demo`). ``demo --store-only`` (also the fallback
without CrewAI) runs ferromem's main job on the embedded default store: an agent remembers many
items (scoped, categorised, with importance), recalls them with and without filters,
forgets a scope, lists scopes, and reopens the store to show that everything persisted.
It prints the latency of each step and checks every filtered recall against a brute-force
NumPy scan. No model download, no network: texts are embedded by the offline
:class:`~ferromem.embedders.HashingEmbedder`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import ferromem
from ferromem._workload import AGENTS
from ferromem._workload import memories as _memories
from ferromem.embedders import HashingEmbedder
from ferromem.exceptions import FerromemError


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1e6, q)) if samples else float("nan")


def _brute_force(vectors: np.ndarray, ids: list[str], keep: np.ndarray, q: np.ndarray, k: int) -> list[str]:
    cand = np.flatnonzero(keep)
    if cand.size == 0:
        return []
    m = vectors[cand]
    scores = (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    order = sorted(range(cand.size), key=lambda j: (-scores[j], ids[cand[j]]))[:k]
    return [ids[cand[j]] for j in order]


def demo(args: argparse.Namespace) -> int:
    n, k = args.n, 5
    embed = HashingEmbedder(args.dim)
    items = list(_memories(n))
    vectors = embed.embed([m["content"] for m in items])
    tmp = None
    path = args.path
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="ferromem-demo-")
        path = os.path.join(tmp.name, "memory.ferro")
    timings: dict[str, list[float]] = {}

    def timed(name, fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        timings.setdefault(name, []).append(time.perf_counter() - t)
        return out

    mismatches = 0
    print(f"ferromem {ferromem.__version__} demo: {n} memories, {args.dim}-dim, store at {path}")
    with ferromem.open(path, durability=args.durability) as store:
        print(f"engine: {store.engine}")
        half = n // 2
        for m, v in zip(items[:half], vectors[:half]):
            timed(
                "remember (one)",
                store.add,
                m["id"],
                v,
                contents=m["content"],
                scopes=m["scope"],
                categories=m["categories"],
                importance=m["importance"],
                metadata=m["metadata"],
            )
        rest = items[half:]
        for start in range(0, len(rest), 100):
            chunk = rest[start : start + 100]
            timed(
                "remember_many (100)",
                store.add,
                [m["id"] for m in chunk],
                vectors[half + start : half + start + len(chunk)],
                contents=[m["content"] for m in chunk],
                scopes=[m["scope"] for m in chunk],
                categories=[m["categories"] for m in chunk],
                importance=[m["importance"] for m in chunk],
                metadata=[m["metadata"] for m in chunk],
            )
        ids = [m["id"] for m in items]
        scopes = np.array([m["scope"] for m in items])
        cats = [set(m["categories"]) for m in items]
        queries = [
            "customer asked about the refund and the invoice",
            "courier delivery delay at the warehouse",
            "engineer reported a bug before the launch",
            "the manager prefers the subscription plan",
        ]
        for qi, text in enumerate(queries * (args.recalls // len(queries))):
            q = embed.embed_one(text)
            agent = AGENTS[qi % len(AGENTS)]
            r_all = timed("recall", store.search, q, k)
            r_scope = timed("recall scope=/crew/<agent>", store.search, q, k, scope=f"/crew/{agent}")
            r_cat = timed("recall categories=[decision]", store.search, q, k, categories=["decision"])
            if qi < len(queries):
                keep_all = np.ones(n, bool)
                keep_scope = np.array([s.startswith(f"/crew/{agent}/") for s in scopes])
                keep_cat = np.array(["decision" in c for c in cats])
                for got, keep in ((r_all, keep_all), (r_scope, keep_scope), (r_cat, keep_cat)):
                    want = _brute_force(vectors, ids, keep, q, k)
                    if list(got.ids) != want:
                        mismatches += 1
        sample = store.search(embed.embed_one(queries[0]), 3, scope="/crew/researcher")
        print(f"\nrecall '{queries[0]}' in /crew/researcher:")
        for rec, score in zip(sample.records(), sample.scores):
            print(f"  {score:.3f}  {rec.scope:28s} {rec.content}")
        print(f"\nscopes under /crew: {store.child_scopes('/crew')}")
        print(f"categories: {store.category_counts()}")
        forgotten = timed("forget scope=/crew/planner", store.delete, scope="/crew/planner")
        print(f"forgot {forgotten} memories of /crew/planner; {store.count()} left")
        stats = store.stats()
    with ferromem.open(path) as reopened:
        t = time.perf_counter()
        left = reopened.count()
        timings["reopen + count"] = [time.perf_counter() - t]
        print(f"reopened: {left} memories persisted")

    print(f"\n{'operation':34s} {'n':>6s} {'p50 us':>10s} {'p95 us':>10s}")
    for name, samples in timings.items():
        print(f"{name:34s} {len(samples):6d} {_pct(samples, 50):10.1f} {_pct(samples, 95):10.1f}")
    print(
        f"\nfiltered recalls checked against brute force: {'all exact' if mismatches == 0 else f'{mismatches} differ'}"
    )
    if args.json:
        print(json.dumps({"engine_stats": stats}, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()
    return 0 if mismatches == 0 else 1


def crewai_demo(args: argparse.Namespace) -> int:
    """The CrewAI Memory workload on ferromem and, when its dependencies load, on CrewAI's
    default storage (LanceDB), side by side."""
    from ferromem.crewai import demo as crewai_demo_module

    backends = ("ferromem",) if args.ferromem_only else ("ferromem", "lancedb")
    print(
        f"ferromem {ferromem.__version__}: CrewAI Memory on {' and '.join(backends)} "
        f"({args.n} memories, {args.dim}-dim; no LLM, no network) ...",
        flush=True,
    )
    result = crewai_demo_module.run(
        n=args.n,
        dim=args.dim,
        recalls=args.recalls,
        backends=backends,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    crewai_demo_module.print_report(result)
    return 0


def _crewai_available() -> bool:
    try:
        import crewai.memory.storage.backend  # noqa: F401
    except ImportError:
        return False
    return True


def demo_cmd(args: argparse.Namespace) -> int:
    if args.path is not None and os.path.lexists(args.path) and not args.force:
        print(
            f"ferromem demo: {args.path} exists; the demo adds and deletes memories in the "
            "store at --path, so it refuses an existing one (pass --force to use it anyway)",
            file=sys.stderr,
        )
        return 2
    if args.path is not None and not args.store_only:
        print("ferromem demo: --path is for the store-only demo; add --store-only", file=sys.stderr)
        return 2
    if not args.store_only:
        if _crewai_available():
            args.n = args.n or 1000
            args.dim = args.dim or 1536
            args.recalls = args.recalls or 100
            return crewai_demo(args)
        print(
            "CrewAI 1.x is not installed (pip install 'crewai>=1.15,<2'): running the "
            "store-only demo instead.\n"
        )
    args.n = args.n or 2000
    args.dim = args.dim or 384
    args.recalls = args.recalls or 200
    if args.n < 4:
        print("ferromem demo: --n must be at least 4", file=sys.stderr)
        return 2
    return demo(args)


def _crewai_data_dir() -> str:
    """CrewAI's data directory (``crewai_core.paths.db_storage_path()``) without creating
    it, as that function does: an import must not create anything in its source."""
    import appdirs
    from crewai_core.paths import get_project_directory_name

    return appdirs.user_data_dir(get_project_directory_name(), "CrewAI")


def import_cmd(args: argparse.Namespace) -> int:
    """Copies a CrewAI LanceDB memory store or ChromaDB knowledge store into ferromem.
    Errors (MigrationError and the rest) are reported by main() in one line."""
    from ferromem.crewai import migrate

    if args.kind == "lancedb":
        storage_dir = os.environ.get("CREWAI_STORAGE_DIR")
        source = args.source or os.path.join(storage_dir or _crewai_data_dir(), "memory")
        report = migrate.import_lancedb(source, args.to, table=args.table)
        print(
            f"imported {report['imported']:,} memories from {source}; verified: every one is "
            f"in the destination ({report['destination_total']:,} records there)"
        )
    else:
        source = args.source or _crewai_data_dir()
        reports = migrate.import_chromadb(source, args.to, collections=args.collection)
        for name, report in reports.items():
            print(
                f"collection {name!r}: imported {report['imported']:,} documents; verified "
                f"({report['destination_total']:,} there)"
            )
        print(f"{len(reports)} collections from {source}")
    return 0


def stats_cmd(args: argparse.Namespace) -> int:
    from ._location import DatabaseLocation, store_path

    in_database = isinstance(store_path(args.path), DatabaseLocation)
    if not in_database and not os.path.isfile(args.path):
        print(f"ferromem stats: no store at {args.path}", file=sys.stderr)
        return 2
    # Read-only: looking at a store (or at a file that turns out not to be one) never
    # writes to it.
    with ferromem.open(args.path, read_only=True) as store:
        s = store.stats()
        s["scopes"] = store.child_scopes("/")
        print(json.dumps(s, indent=2, default=str))
    return 0


def check_cmd(args: argparse.Namespace) -> int:
    if not os.path.exists(args.path):
        print(f"ferromem check: no store at {args.path}", file=sys.stderr)
        return 2
    problems = ferromem.check(args.path)
    for problem in problems:
        print(problem)
    if problems:
        print(f"ferromem check: {args.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.path}: whole")
    return 0


# The calls `ferromem doctor` plans: (queries, rows, dim).
_TYPICAL_CALLS = [
    (nq, n, d) for d in (384, 1536) for n in (10_000, 100_000, 1_000_000) for nq in (1, 16, 256)
]


def doctor_cmd(args: argparse.Namespace) -> int:
    """This machine as the planner sees it: SIMD level, GPU, the calibrations, and the path
    typical exact searches take."""
    from . import _core, _planner

    report: dict[str, Any] = {
        "ferromem": ferromem.__version__,
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {_planner._cpu_model()}, {os.cpu_count()} cores",
        "simd": {"active": _core.simd_isa(), "supported": list(_core.supported_isas())},
        "cache": str(_planner.cache_dir()) if _planner.cache_dir() is not None else None,
    }
    gpu_info: dict[str, Any] | None = None
    if not _planner.cupy_installed():
        report["gpu"] = {"present": False, "why": "CuPy is not installed (pip install 'ferromem[gpu]')"}
    else:
        gpu_info = _planner._gpu().device_info()
        report["gpu"] = {"present": gpu_info is not None, **(gpu_info or {"why": "no usable CUDA device"})}
    calibrations: dict[str, Any] = {}
    for dim in (384, 1536):
        cpu = _planner.cached(_planner.hardware_key("cpu", "f32", f"d{dim}"))
        if cpu is None and not args.no_measure:
            cpu = dict(_core.calibrate_cpu("f32", dim))
            _planner.remember(_planner.hardware_key("cpu", "f32", f"d{dim}"), cpu)
        device = None
        if gpu_info is not None:
            key = _planner.hardware_key("device", str(gpu_info.get("name")), "f32", f"d{dim}")
            device = _planner.cached(key)
            if device is None and not args.no_measure:
                device = _planner.calibrate_device(_planner.new_device, dim)
                _planner.remember(key, device)
        calibrations[f"d{dim}"] = {"cpu": cpu, "device": device}
    report["calibration"] = calibrations
    paths: list[dict[str, Any]] = []
    for nq, n, dim in _TYPICAL_CALLS:
        c = calibrations[f"d{dim}"]
        if c["cpu"] is None:
            continue
        route, predicted = _core.predict_route(c["cpu"], c["device"], nq, n, dim)
        paths.append({"queries": nq, "rows": n, "dim": dim, "path": route, "predicted_ms": predicted})
    report["typical_calls"] = paths
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"ferromem {report['ferromem']} (Python {report['python']})")
    print(f"machine:  {report['machine']}")
    print(f"SIMD:     {report['simd']['active']} (supported: {', '.join(report['simd']['supported'])})")
    g = report["gpu"]
    if g["present"]:
        print(
            f"GPU:      {g.get('name')}, {g.get('total_bytes', 0) / 2**30:.1f} GiB ({g.get('free_bytes', 0) / 2**30:.1f} free)"
        )
    else:
        print(f"GPU:      none ({g['why']})")
    print(f"cache:    {report['cache'] or 'off'}")
    for dim, c in calibrations.items():
        print(f"calibration {dim}: cpu {c['cpu'] or 'not measured'}; device {c['device'] or '-'}")
    print("typical exact searches (f32, k=10): path and predicted ms")
    for p in paths:
        preds = ", ".join(f"{r} {ms:.3g}" for r, ms in sorted(p["predicted_ms"].items(), key=lambda x: x[1]))
        print(f"  {p['queries']:4d} x {p['rows']:>9,d} x {p['dim']:4d}: {p['path']:10s} ({preds})")
    return 0


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= minimum (argparse turns the error into a usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _add_demo(sub: Any) -> None:
    d = sub.add_parser(
        "demo",
        help="run a real CrewAI Memory workload on ferromem and on CrewAI's default storage "
        "side by side (or, with --store-only or without CrewAI, the store alone)",
    )
    d.add_argument(
        "--n", type=_count(4), default=None, help="memories to remember (default 1000; store-only 2000)"
    )
    d.add_argument(
        "--dim", type=_count(1), default=None, help="embedding dimension (default 1536; store-only 384)"
    )
    d.add_argument(
        "--recalls",
        type=_count(1),
        default=None,
        help="recalls per filter kind (default 100; store-only 200)",
    )
    d.add_argument("--ferromem-only", action="store_true", help="CrewAI demo on ferromem only")
    d.add_argument("--store-only", action="store_true", help="the ferromem store alone, no CrewAI")
    d.add_argument(
        "--path",
        default=None,
        help="store-only: a new store path (default: a temporary file); an existing "
        "one is refused unless --force",
    )
    d.add_argument(
        "--force",
        action="store_true",
        help="store-only: run in the store at --path even if it exists (the demo adds "
        "and deletes memories there)",
    )
    d.add_argument("--durability", default="normal", choices=["normal", "full"], help="store-only")
    d.add_argument("--json", action="store_true", help="store-only: also print the engine's statistics")
    d.set_defaults(func=demo_cmd)


def _add_import(sub: Any) -> None:
    imp = sub.add_parser(
        "import",
        help="copy a CrewAI LanceDB memory store or ChromaDB knowledge store into ferromem",
    )
    imp.add_argument("kind", choices=["lancedb", "chromadb"])
    imp.add_argument(
        "source",
        nargs="?",
        default=None,
        help="the source directory, only read (default: CrewAI's own for that kind)",
    )
    imp.add_argument(
        "--to",
        default=None,
        help="destination: a directory, a .ferro file (lancedb) or a postgresql:// URL "
        "(default: where ferromem.crewai looks by default)",
    )
    imp.add_argument("--table", default="memories", help="lancedb: the table (default memories)")
    imp.add_argument(
        "--collection",
        action="append",
        default=None,
        help="chromadb: a collection to copy (repeatable; default all)",
    )
    imp.set_defaults(func=import_cmd)


def _add_stats(sub: Any) -> None:
    s = sub.add_parser("stats", help="print a store's counts, scopes and latency statistics")
    s.add_argument("path", help="a store's file, or a postgresql:// URL")
    s.set_defaults(func=stats_cmd)


def _add_check(sub: Any) -> None:
    c = sub.add_parser(
        "check",
        help="verify a store without writing to it: SQLite's structure, every record's "
        "checksums, the image and graph files beside it (exit 1 and a list when damaged)",
    )
    c.add_argument("path")
    c.set_defaults(func=check_cmd)


def _add_doctor(sub: Any) -> None:
    d = sub.add_parser(
        "doctor",
        help="this machine as the search planner sees it: SIMD level, GPU (name, memory), "
        "the calibration table, and the path typical searches take",
    )
    d.add_argument("--json", action="store_true", help="print the report as JSON")
    d.add_argument(
        "--no-measure",
        action="store_true",
        help="show cached calibrations only (measuring takes about a second)",
    )
    d.set_defaults(func=doctor_cmd)


def postgres_cmd(args: Any) -> int:
    from . import postgres

    if args.action == "migrate":
        version = postgres.migrate(args.url)
        print(f"ferromem's tables are at version {version}")
    elif args.action == "stores":
        for name in postgres.list_stores(args.url, args.prefix):
            print(name)
    else:
        if not args.yes:
            print("ferromem postgres drop: deletes the store and all its records; add --yes", file=sys.stderr)
            return 2
        print("dropped" if postgres.drop_store(args.url) else "no such store")
    return 0


def _add_postgres(sub: Any) -> None:
    p = sub.add_parser(
        "postgres",
        help="stores in a PostgreSQL database: migrate its tables, list or drop stores "
        "(a password may come from PGPASSWORD instead of the URL)",
    )
    p.add_argument("action", choices=["migrate", "stores", "drop"])
    p.add_argument("url", help="postgresql://user@host:5432/dbname?schema=S&store=NAME")
    p.add_argument("--prefix", default="", help="stores: only names starting with this")
    p.add_argument("--yes", action="store_true", help="drop: really delete the store")
    p.set_defaults(func=postgres_cmd)


# The subcommands, in --help order: each adds its parser and sets func (args -> exit code).
SUBCOMMANDS: list[Callable[[Any], None]] = [
    _add_demo,
    _add_import,
    _add_stats,
    _add_check,
    _add_doctor,
    _add_postgres,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferromem", description="ferromem: embedded vector memory for AI agents"
    )
    parser.add_argument("--version", action="version", version=f"ferromem {ferromem.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand. Exit codes: 0 success, 1 an error (reported in one line on
    stderr: ferromem's typed errors, OS errors, a missing optional dependency), 2 a usage
    error, 130 interrupted. No traceback reaches the user for any of these."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"ferromem {args.command}: interrupted", file=sys.stderr)
        return 130
    except (FerromemError, OSError) as exc:
        print(f"ferromem {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(
            f"ferromem {args.command}: needs {exc.name or 'a module'} that is not installed "
            f'({_one_line(exc)}); from a ferromem clone: pip install ".[crewai]"',
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
