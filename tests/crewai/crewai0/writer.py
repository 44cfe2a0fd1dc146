"""One of several processes saving to the same ferromem files through CrewAI 0.x memories.

    python writer.py DIR TAG COUNT READY GO

Opens ShortTermMemory(storage=RAGStorage(...)) and LongTermMemory(storage=LTMStorage(...))
in DIR, creates the file READY, waits for the file GO (so that every writer starts at
once), then saves COUNT values to each and prints ``FERROMEM-RESULT: {json}``. Exits
with EXIT_NO_CREWAI0 when crewai 0.x cannot be imported.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from _common import MARKER, require_crewai0  # the scripts run from this directory

START_TIMEOUT_S = 120.0

crewai = require_crewai0()

from crewai.memory import LongTermMemory, ShortTermMemory  # noqa: E402
from crewai.memory.long_term.long_term_memory_item import LongTermMemoryItem  # noqa: E402
from ferromem.crewai.v0 import LTMStorage, RAGStorage  # noqa: E402
from ferromem.embedders import HashingEmbedder  # noqa: E402


def main() -> None:
    directory, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ready, go = Path(sys.argv[4]), Path(sys.argv[5])
    stm = ShortTermMemory(storage=RAGStorage("short_term", path=directory, embedder=HashingEmbedder(384)))
    ltm = LongTermMemory(storage=LTMStorage(directory / "ltm.ferro"))
    ready.touch()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit(f"writer {tag}: no start signal within {START_TIMEOUT_S} s")
        time.sleep(0.005)
    started = time.time()
    for i in range(count):
        stm.save(f"writer {tag} note {i}", {"writer": tag, "i": i})
        ltm.save(
            LongTermMemoryItem(
                agent=tag,
                task=f"task {i % 3}",
                expected_output="x",
                datetime=f"{i:06d}",
                quality=i,
                metadata={"quality": i, "suggestions": [f"{tag}-{i}"]},
            )
        )
    result = {"tag": tag, "started": started, "finished": time.time()}
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
