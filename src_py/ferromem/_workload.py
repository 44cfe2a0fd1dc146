"""The synthetic agent workload shared by the demos and the benchmarks: memories of a
small crew (scoped per agent and topic, categorised, with importance), as plain dicts."""

from __future__ import annotations

import random
from collections.abc import Iterator

AGENTS = ["researcher", "writer", "reviewer", "planner"]
TOPICS = {
    "billing": ["invoice", "refund", "payment", "card", "charge", "subscription", "plan", "receipt"],
    "shipping": ["parcel", "courier", "delivery", "tracking", "warehouse", "customs", "address", "delay"],
    "product": ["feature", "release", "bug", "roadmap", "design", "feedback", "pricing", "launch"],
    "people": ["manager", "customer", "engineer", "vendor", "partner", "support", "team", "lead"],
}
VERBS = ["asked about", "reported", "confirmed", "rejected", "escalated", "noted", "prefers", "mentioned"]


def memories(n: int, seed: int = 7) -> Iterator[dict]:
    rnd = random.Random(seed)
    topics = list(TOPICS)
    for i in range(n):
        topic = topics[i % len(topics)]
        agent = AGENTS[(i // len(topics)) % len(AGENTS)]
        words = rnd.sample(TOPICS[topic], 3)
        text = f"The {rnd.choice(TOPICS['people'])} {rnd.choice(VERBS)} the {words[0]} {words[1]} and the {words[2]} (#{i})"
        yield {
            "id": f"mem-{i:06d}",
            "content": text,
            "scope": f"/crew/{agent}/{topic}",
            "categories": [topic, "fact" if i % 3 else "decision"],
            "importance": round(rnd.random(), 3),
            "metadata": {"turn": i, "agent": agent},
        }
