"""CrewAI 0.x scenarios for ferromem.crewai.v0, run by a CrewAI 0.x interpreter.

    python memories.py run DIR < input.json   # every scenario, files under DIR
    python memories.py reopen DIR             # reads back what `run` persisted in DIR

Prints one line ``FERROMEM-RESULT: {json}`` (CrewAI itself prints to stdout too): each
scenario's observations, or ``{"error": traceback}``; tests/crewai/test_crewai_v0.py asserts on
them. Exits with EXIT_NO_CREWAI0 when crewai 0.x cannot be imported, so the test skips.
Everything is offline: embeddings come from ferromem's HashingEmbedder.
"""

from __future__ import annotations

import json
import random
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import MARKER, require_crewai0  # the scripts run from this directory

crewai = require_crewai0()

import numpy as np  # noqa: E402
from crewai import LLM, Agent, Crew, Task  # noqa: E402
from crewai.memory import (  # noqa: E402
    EntityMemory,
    ExternalMemory,
    LongTermMemory,
    ShortTermMemory,
)
from crewai.memory.contextual.contextual_memory import ContextualMemory  # noqa: E402
from crewai.memory.entity.entity_memory_item import EntityMemoryItem  # noqa: E402
from crewai.memory.long_term.long_term_memory_item import LongTermMemoryItem  # noqa: E402
from crewai.memory.storage.ltm_sqlite_storage import LTMSQLiteStorage  # noqa: E402
from crewai.memory.storage.rag_storage import RAGStorage as CrewRAGStorage  # noqa: E402
from crewai.rag.chromadb.utils import _prepare_documents_for_chromadb  # noqa: E402
from crewai.rag.embeddings.providers.custom.custom_provider import CustomProvider  # noqa: E402
from crewai.rag.embeddings.providers.custom.embedding_callable import (  # noqa: E402
    CustomEmbeddingFunction,
)
from crewai.utilities.paths import db_storage_path  # noqa: E402
from ferromem.crewai.v0 import LTMStorage, RAGStorage  # noqa: E402
from ferromem.embedders import HashingEmbedder  # noqa: E402

EMBED = HashingEmbedder(384)
WORDS = [
    "green",
    "tea",
    "market",
    "coffee",
    "price",
    "harvest",
    "export",
    "leaf",
    "roast",
    "brew",
    "report",
    "growth",
    "supply",
    "demand",
    "quality",
    "season",
]
TOPICS = ["tea", "coffee", "50%_off", "a\\b", 'q"t', "茶🍵"]


class HashEmbeddingFunction(CustomEmbeddingFunction):
    """A CrewAI custom embedder (``{"provider": "custom", ...}``) over HashingEmbedder."""

    def __call__(self, input: list[str]) -> list[np.ndarray]:  # noqa: A002 - protocol name
        return EMBED(input)

    @staticmethod
    def name() -> str:  # ChromaDB 1.x requires it of every embedding function
        return "ferromem-hashing"


CUSTOM_CONFIG = {"provider": "custom", "config": {"embedding_callable": HashEmbeddingFunction}}


# ---------------------------------------------------------------------------- helpers


def crew_id(content: str, metadata: dict[str, Any]) -> str:
    """CrewAI 0.x's own id for a saved value."""
    return _prepare_documents_for_chromadb([{"content": content, "metadata": metadata}]).ids[0]


def rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["id"], r["content"], r["metadata"], r["score"]] for r in results]


def brute_force(
    saved: dict[str, tuple[str, dict[str, Any]]],
    query: str,
    threshold: float | None = None,
    keep: Callable[[dict[str, Any]], bool] = lambda metadata: True,
) -> list[list[Any]]:
    """Every record that qualifies, ranked exactly in float64 by CrewAI's score
    (1 + cosine) / 2, best first."""
    ids = sorted(saved)
    if not ids:
        return []
    matrix = EMBED.embed([saved[i][0] for i in ids]).astype(np.float64)
    q = EMBED.embed([query])[0].astype(np.float64)
    cosine = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
    scores = np.clip((1.0 + cosine) / 2.0, 0.0, 1.0)
    out = [
        [i, saved[i][0], saved[i][1], float(s)]
        for i, s in zip(ids, scores)
        if keep(saved[i][1]) and (not threshold or s >= threshold)
    ]
    out.sort(key=lambda r: (-r[3], r[0]))
    return out


def case(got: list[dict[str, Any]], expected: list[list[Any]], limit: int) -> dict[str, Any]:
    """A search result and the full exact ranking it must be the top ``limit`` of."""
    return {"got": rows(got), "expected": expected, "limit": limit}


def compare(
    memory: Any,
    saved: dict[str, tuple[str, dict[str, Any]]],
    query: str,
    limit: int = 5,
    score_threshold: float = 0.6,
) -> dict[str, Any]:
    """``memory.search`` and the exact ranking for the same query and threshold."""
    got = memory.search(query, limit=limit, score_threshold=score_threshold)
    return case(got, brute_force(saved, query, score_threshold), limit)


def sentence(i: int) -> str:
    return f"note {i}: " + " ".join(random.Random(i).sample(WORDS, 3 + i % 4))


def raised(call: Callable[[], Any]) -> dict[str, Any] | None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the scenario reports what was raised
        return {
            "type": type(exc).__name__,
            "is_type_error": isinstance(exc, TypeError),
            "is_value_error": isinstance(exc, ValueError),
            "cause": type(exc.__cause__).__name__ if exc.__cause__ else None,
            "message": str(exc),
        }
    return None


def storage(directory: Path, kind: str, **kwargs: Any) -> RAGStorage:
    kwargs.setdefault("embedder", EMBED)
    return RAGStorage(kind, path=directory, **kwargs)


# ---------------------------------------------------------------------------- scenarios


def memories(directory: Path, _: dict[str, Any]) -> dict[str, Any]:
    """ShortTermMemory, EntityMemory and ExternalMemory on RAGStorage, against brute force."""
    stm = ShortTermMemory(storage=storage(directory, "short_term"))
    em = EntityMemory(storage=storage(directory, "entities"))
    exm = ExternalMemory(storage=storage(directory, "external"))
    saved_stm: dict[str, tuple[str, dict[str, Any]]] = {}
    for i in range(25):
        metadata = {"observation": f"task {i % 4}"}
        stm.save(sentence(i), metadata)
        saved_stm[crew_id(sentence(i), metadata)] = (sentence(i), metadata)
    stm.save(sentence(3), {"observation": "task 3"})  # the same value again replaces it

    entities = [
        EntityMemoryItem("Ada Lovelace", "person", "wrote the first program", "- Babbage"),
        EntityMemoryItem("Analytical Engine", "machine", "a mechanical computer", "- Ada"),
        EntityMemoryItem("Green Tea Co", "company", "exports green tea leaf", ""),
    ]
    em.save(entities[0])
    em.save(entities[1:])
    saved_em = {}
    for item in entities:
        text = f"{item.name}({item.type}): {item.description}"
        saved_em[crew_id(text, item.metadata)] = (text, item.metadata)

    note = "external note about green tea"
    messages = {"description": "tea task", "messages": [{"role": "user", "content": "hi"}]}
    exm.save(note, messages)
    saved_ex = {crew_id(note, messages): (note, messages)}

    return {
        "storage_types": [type(m.storage).__name__ for m in (stm, em, exm)],
        "count": len(stm.storage.store),
        "stm": {
            "default": compare(stm, saved_stm, "green tea market price"),
            "all": compare(stm, saved_stm, "green tea market", 50, 0),
            "top3": compare(stm, saved_stm, "roast coffee", 3, 0),
        },
        "entity": compare(em, saved_em, "who wrote the first program", 3, 0),
        "external": compare(exm, saved_ex, "green tea", 5, 0),
    }


FILTERS: list[Any] = [
    {},
    {"topic": "tea"},
    {"topic": "50%_off"},
    {"topic": "50%xoff"},
    {"topic": "5_%_off"},
    {"topic": "a\\b"},
    {"topic": 'q"t'},
    {"topic": "茶🍵"},
    {"n": 3},
    {"n": 1},
    {"n": 0},
    {"n": 1.0},
    {"flag": True},
    {"tag": None},
    {"ratio": 2.5},
    {"nested": {"k": [1, 2]}},
    {"topic": {"$eq": "coffee"}},
    {"topic": "tea", "n": 1},
    {"$and": [{"topic": "tea"}, {"n": {"$eq": 3}}]},
    {"$and": [{"topic": "tea"}, {"topic": "coffee"}]},
]
UNSUPPORTED: list[Any] = [
    {"n": {"$gt": 1}},
    {"$or": [{"n": 1}, {"n": 2}]},
    {"n": {"$in": [1, 2]}},
    {"n": {"$eq": 1, "$ne": 2}},
    {"$and": {"n": 1}},
    ["topic"],
    "topic",
]


def _matches(flt: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """CrewAI's test, Python equality (a missing key is None), on the filter's pairs."""
    pairs: list[tuple[str, Any]] = []

    def walk(f: dict[str, Any]) -> None:
        for key, value in f.items():
            if key == "$and":
                for clause in value:
                    walk(clause)
            elif isinstance(value, dict) and "$eq" in value:
                pairs.append((key, value["$eq"]))
            else:
                pairs.append((key, value))

    walk(flt)
    return lambda metadata: all(metadata.get(k) == v for k, v in pairs)


def filtered(directory: Path, _: dict[str, Any]) -> dict[str, Any]:
    """Exact filtered search, RAGStorage.search(filter=...) against brute force."""
    rag = storage(directory, "filtered")
    saved = {}
    for i in range(60):
        metadata: dict[str, Any] = {
            "topic": TOPICS[i % len(TOPICS)],
            "n": i % 5,
            "flag": i % 3 == 0,
            "ratio": [0.5, 2.5, 1.0][i % 3],
            "nested": {"k": [1, 2]} if i % 4 == 0 else {"k": [2, 1]},
        }
        if i % 4:
            metadata["tag"] = None if i % 4 == 1 else f"t{i % 4}"
        rag.save(sentence(i), metadata)
        saved[crew_id(sentence(i), metadata)] = (sentence(i), metadata)
    cases = []
    for flt in FILTERS:
        for limit in (100, 3):
            cases.append(
                {
                    "filter": repr(flt),
                    **case(
                        rag.search("green tea market", limit=limit, filter=flt, score_threshold=0),
                        brute_force(saved, "green tea market", keep=_matches(flt)),
                        limit,
                    ),
                }
            )
    return {
        "cases": cases,
        "unsupported": [
            [repr(flt), raised(lambda flt=flt: rag.search("tea", filter=flt))] for flt in UNSUPPORTED
        ],
    }


def hostile(directory: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Hostile strings as values, metadata values and keys, entity fields and LTM tasks."""
    strings: list[str] = data["strings"]
    stm = ShortTermMemory(storage=storage(directory, "hostile"))
    for i, text in enumerate(strings):
        stm.save(text, {text: text, "i": i, "key": strings[-1 - i]})
    out: dict[str, Any] = {"values": [], "ids_match": []}
    for i, text in enumerate(strings):
        metadata = {text: text, "i": i, "key": strings[-1 - i]}
        rag = stm.storage
        by_index = rag.search(text, limit=1, filter={"i": i}, score_threshold=0)
        by_value = rag.search(text, limit=100, filter={"key": strings[-1 - i]}, score_threshold=0)
        by_key = rag.search(text, limit=100, filter={text: text}, score_threshold=0)
        out["values"].append(
            {
                "by_index": [[r["content"], r["metadata"]] for r in by_index],
                "by_value": [r["metadata"]["i"] for r in by_value],
                "by_key": [r["metadata"]["i"] for r in by_key],
            }
        )
        out["ids_match"].append([r["id"] for r in by_index] == [crew_id(text, metadata)])

    em = EntityMemory(storage=storage(directory, "hostile_entities"))
    em.save([EntityMemoryItem(s, s, s, s) for s in strings[:5]])
    out["entities"] = sorted(
        [r["content"], r["metadata"]["relationships"]]
        for r in em.storage.search("x", limit=100, score_threshold=0)
    )

    ltm = LongTermMemory(storage=LTMStorage(directory / "hostile_ltm.ferro"))
    for i, text in enumerate(strings):
        ltm.save(
            LongTermMemoryItem(
                agent=text,
                task=text,
                expected_output=text,
                datetime=text,
                quality=i,
                metadata={"quality": i, "suggestions": [text]},
            )
        )
    out["ltm"] = [ltm.search(text, latest_n=10) for text in strings]
    return out


def threshold(directory: Path, _: dict[str, Any]) -> dict[str, Any]:
    """score_threshold on CrewAI's scale, thresholds set between two exact scores."""
    stm = ShortTermMemory(storage=storage(directory, "threshold"))
    saved = {}
    for i in range(30):
        stm.save(sentence(i), {"i": i})
        saved[crew_id(sentence(i), {"i": i})] = (sentence(i), {"i": i})
    query = "green tea harvest report"
    exact = brute_force(saved, query)
    cases = []
    for k in (1, 3, 7, 20):
        t = (exact[k - 1][3] + exact[k][3]) / 2
        cases.append(
            {
                "k": k,
                "threshold": t,
                "gap": exact[k - 1][3] - exact[k][3],
                **compare(stm, saved, query, 50, t),
            }
        )
    return {
        "cases": cases,
        "scores": [r[3] for r in exact],
        "zero": len(stm.search(query, limit=50, score_threshold=0)),
        "none": len(stm.storage.search(query, limit=50, score_threshold=None)),
        "negative": len(stm.search(query, limit=50, score_threshold=-0.5)),
        "above_one": len(stm.search(query, limit=50, score_threshold=1.01)),
        "default": case(stm.search(query), brute_force(saved, query, 0.6), 5),
    }


def parity(directory: Path, _: dict[str, Any]) -> dict[str, Any]:
    """Real CrewAI 0.x RAGStorage (ChromaDB) and ferromem's, both from the same CrewAI
    embedder config (a dict, and a provider instance), given the same calls."""
    theirs = CrewRAGStorage("parity", embedder_config=CUSTOM_CONFIG)
    ours = RAGStorage("parity", embedder_config=CUSTOM_CONFIG, path=directory)
    provider = RAGStorage(
        "parity_provider",
        embedder_config=CustomProvider(embedding_callable=HashEmbeddingFunction),
        path=directory,
    )
    storages = (theirs, ours, provider)
    for i in range(30):
        metadata = {"topic": TOPICS[i % 3], "n": i % 4, "ratio": 0.25 * i}
        for s in storages:
            s.save(sentence(i), metadata)
    for s in storages:  # saved again: replaced, not duplicated
        s.save(sentence(0), {"topic": "tea", "n": 0, "ratio": 0.0})
        s.save("a value without metadata", {})
    searches = [
        ("green tea market", {}),
        ("green tea market", {"limit": 10, "score_threshold": 0}),
        ("roast coffee price", {"limit": 3, "score_threshold": 0.5}),
        ("roast coffee price", {"limit": 10, "score_threshold": 0, "filter": {"topic": "coffee"}}),
        (
            "supply demand",
            {
                "limit": 10,
                "score_threshold": 0,
                "filter": {"$and": [{"topic": "tea"}, {"n": 2}]},
            },
        ),
        ("a value without metadata", {"limit": 2, "score_threshold": 0}),
    ]
    # Each search also asks Chroma for every qualifying record: the reference ranking
    # the limited answers are checked against (exact ties may come in either order).
    return {
        "searches": [
            {
                "theirs": rows(theirs.search(query, **kwargs)),
                "ours": rows(ours.search(query, **kwargs)),
                "provider": rows(provider.search(query, **kwargs)),
                "reference": rows(theirs.search(query, **{**kwargs, "limit": 100})),
                "limit": kwargs.get("limit", 5),
            }
            for query, kwargs in searches
        ],
        "chroma_count": theirs._get_client().client.get_collection("memory_parity").count(),
        "count": len(ours.store),
    }


def long_term(directory: Path, data: dict[str, Any]) -> dict[str, Any]:
    """LongTermMemory on LTMStorage and on CrewAI's LTMSQLiteStorage, given the same items."""
    ours = LongTermMemory(storage=LTMStorage(directory / "ltm.ferro"))
    theirs = LongTermMemory(storage=LTMSQLiteStorage(db_path=str(directory / "ltm.db")))
    tasks = ["Write the report", "Write the report ", "write the report", "50%_off", "5_%xoff"]
    entries = [
        (tasks[0], "1700000000.5", 8),
        (tasks[0], "1700000000.5", 7),
        (tasks[0], "999.0", 9),
        (tasks[0], "1700000001", None),
        (tasks[0], "1700000000.5", 7),
        (tasks[0], "1700000000.5", 7.5),
        (tasks[0], "1700000001", 3),
        (tasks[1], "1", 1),
        (tasks[2], "2", 2),
        (tasks[3], "3", 3),
        (tasks[4], "4", 4),
        (tasks[0], "", 10),
    ]
    for n, (task, when, quality) in enumerate(entries):
        for memory in (ours, theirs):
            memory.save(
                LongTermMemoryItem(
                    agent="Senior Researcher",
                    task=task,
                    expected_output="a report",
                    datetime=when,
                    quality=quality,
                    metadata={"suggestions": [f"suggestion {n}"], "quality": quality, "n": n},
                )
            )
    loads = [
        [task, n, ours.search(task, latest_n=n), theirs.search(task, latest_n=n)]
        for task in tasks + ["unknown task"]
        for n in (1, 2, 3, 10, 0, -1)
    ]
    context = [ContextualMemory(None, m, None, None)._fetch_ltm_context(tasks[0]) for m in (ours, theirs)]
    ours.reset()
    theirs.reset()
    return {
        "loads": loads,
        "context": context,
        "after_reset": [ours.search(tasks[0]), theirs.search(tasks[0])],
    }


def resets(directory: Path, _: dict[str, Any]) -> dict[str, Any]:
    """reset() through the memories, allow_reset=False, and a new dimension after reset."""
    stm = ShortTermMemory(storage=storage(directory, "reset_me"))
    em = EntityMemory(storage=storage(directory, "reset_entities"))
    stm.save("green tea", {"k": 1})
    em.save(EntityMemoryItem("Ada", "person", "programmer", ""))
    before = [
        len(stm.search("green tea", score_threshold=0)),
        len(em.search("Ada", score_threshold=0)),
    ]
    stm.reset()
    em.reset()
    after = [stm.search("green tea", score_threshold=0), em.search("Ada", score_threshold=0)]
    small = storage(directory, "reset_me", embedder=HashingEmbedder(64))
    small.save("green tea again", {})
    locked = ShortTermMemory(storage=storage(directory, "locked", allow_reset=False))
    locked.save("keep me", {})
    refused = raised(locked.reset)
    return {
        "before": before,
        "after": after,
        "new_dim": [small.store.dim, len(small.search("green tea", score_threshold=0))],
        "refused": refused,
        "kept": [r["content"] for r in locked.search("keep me", score_threshold=0)],
    }


def crew_flow(directory: Path, _: dict[str, Any]) -> dict[str, Any]:
    """A real Crew with all four memories on ferromem: collection names, the context an
    agent gets, Crew.copy() and crew.reset_memories()."""
    agent = Agent(
        role="Senior Researcher",
        goal="Know the tea market",
        backstory="An analyst",
        llm=LLM(model="gpt-4o-mini"),
    )
    task = Task(
        description="Summarise the green tea market",
        expected_output="A summary",
        agent=agent,
    )
    plain = Crew(agents=[agent], tasks=[task])
    stm_storage = storage(directory, "short_term", crew=plain)
    crew = Crew(
        agents=[agent],
        tasks=[task],
        memory=True,
        short_term_memory=ShortTermMemory(storage=stm_storage),
        entity_memory=EntityMemory(storage=storage(directory, "entities", crew=plain)),
        long_term_memory=LongTermMemory(storage=LTMStorage(directory / "crew_ltm.ferro")),
        external_memory=ExternalMemory(storage=storage(directory, "external", crew=plain)),
    )
    # What CrewAI's agent executor saves after a task.
    crew._short_term_memory.save("The green tea market grew in 2024", {"observation": task.description})
    crew._entity_memory.save(EntityMemoryItem("Green Tea", "product", "green tea market leader", "- tea"))
    crew._external_memory.save("External: green tea market prices", {"description": task.description})
    crew._long_term_memory.save(
        LongTermMemoryItem(
            agent=agent.role,
            task=task.description,
            expected_output=task.expected_output,
            datetime="1700000000.0",
            quality=8,
            metadata={"suggestions": ["Cite sources"], "quality": 8},
        )
    )
    context = ContextualMemory(
        crew._short_term_memory,
        crew._long_term_memory,
        crew._entity_memory,
        crew._external_memory,
        agent=agent,
        task=task,
    ).build_context_for_task(task, "")

    # Crew.copy() of a crew with an external memory fails in CrewAI 0.x whatever the
    # storage (set_crew makes the memory refer back to the crew, and model_dump finds the
    # cycle), so the copy is of the same crew without it.
    copied = Crew(
        agents=[agent],
        tasks=[task],
        memory=True,
        short_term_memory=crew.short_term_memory,
        entity_memory=crew.entity_memory,
        long_term_memory=crew.long_term_memory,
    ).copy()
    copied._short_term_memory.save("Saved through the copy: green tea market", {})
    seen_by_original = [
        r["content"] for r in crew._short_term_memory.search("Saved through the copy", score_threshold=0)
    ]

    crew.reset_memories(command_type="short")
    crew.reset_memories(command_type="entity")
    crew.reset_memories(command_type="long")
    crew.reset_memories(command_type="external")
    return {
        "collection": [
            stm_storage.collection_name,
            f"memory_short_term_{CrewRAGStorage('short_term', crew=plain).agents}",
        ],
        "file": Path(stm_storage.store.path).name,
        "same_storage": crew._short_term_memory.storage is stm_storage,
        "context": context,
        "copy_shares_store": copied._short_term_memory.storage.store is stm_storage.store,
        "copy_is_new_object": copied._short_term_memory.storage is not stm_storage,
        "seen_by_original": seen_by_original,
        "after_reset": [
            crew._short_term_memory.search("green tea", score_threshold=0),
            crew._entity_memory.search("green tea", score_threshold=0),
            crew._long_term_memory.search(task.description),
            crew._external_memory.search("green tea", score_threshold=0),
        ],
    }


def defaults(directory: Path, _: dict[str, Any]) -> dict[str, Any]:
    """Default locations follow CrewAI's db_storage_path(); no embedder means CrewAI's
    default one, which an empty memory never needs to build."""
    rag = RAGStorage("short_term")
    ltm = LTMStorage()
    return {
        "db_storage_path": db_storage_path(),
        "rag": rag.store.path,
        "ltm": ltm.db_path,
        "empty_search": rag.search("anything"),
        "default_embedder": type(rag.embedder).__name__,
    }


PERSIST_TEXTS = ["green tea market grew", "coffee prices fell", "tea harvest was early"]


def _persisted(directory: Path) -> tuple[ShortTermMemory, EntityMemory, LongTermMemory]:
    base = directory / "persist"
    return (
        ShortTermMemory(storage=storage(base, "short_term")),
        EntityMemory(storage=storage(base, "entities")),
        LongTermMemory(storage=LTMStorage(base / "ltm.ferro")),
    )


def _probe(stm: ShortTermMemory, em: EntityMemory, ltm: LongTermMemory) -> dict[str, Any]:
    return {
        "stm": stm.search("green tea", limit=10, score_threshold=0),
        "em": em.search("tea company", limit=10, score_threshold=0),
        "ltm": ltm.search("Summarise", latest_n=5),
    }


def persist(directory: Path, _: dict[str, Any]) -> dict[str, Any]:
    stm, em, ltm = _persisted(directory)
    for i, text in enumerate(PERSIST_TEXTS):
        stm.save(text, {"i": i})
    em.save(EntityMemoryItem("Tea Co", "company", "a tea company", "- tea"))
    for when in ("1", "2"):
        ltm.save(
            LongTermMemoryItem(
                agent="a",
                task="Summarise",
                expected_output="x",
                datetime=when,
                quality=5,
                metadata={"suggestions": [when], "quality": 5},
            )
        )
    return _probe(stm, em, ltm)


SCENARIOS: dict[str, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {
    "memories": memories,
    "filtered": filtered,
    "hostile": hostile,
    "threshold": threshold,
    "parity": parity,
    "long_term": long_term,
    "resets": resets,
    "crew_flow": crew_flow,
    "defaults": defaults,
    "persist": persist,
}


def main() -> None:
    mode, directory = sys.argv[1], Path(sys.argv[2])
    out: dict[str, Any] = {"crewai": crewai.__version__}
    if mode == "reopen":
        out["reopen"] = _probe(*_persisted(directory / "persist"))
    else:
        data = json.load(sys.stdin)
        for name, scenario in SCENARIOS.items():
            try:
                out[name] = scenario(directory / name, data)
            except Exception:  # noqa: BLE001 - reported to the test, which fails on it
                out[name] = {"error": traceback.format_exc()}
    print(MARKER + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
