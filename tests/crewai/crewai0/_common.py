"""What the 0.x driver scripts share: their output marker, and the check that the
interpreter running them has CrewAI 0.x (exit status EXIT_NO_CREWAI0 otherwise, which
tests/crewai/test_crewai_v0.py turns into a skip)."""

from __future__ import annotations

import sys
from types import ModuleType

EXIT_NO_CREWAI0 = 3
MARKER = "FERROMEM-RESULT: "


def require_crewai0() -> ModuleType:
    """The crewai module, if it is 0.x; otherwise the script exits."""
    try:
        import crewai
    except Exception as exc:  # noqa: BLE001 - any import failure means: no usable crewai
        print(f"cannot import crewai: {type(exc).__name__}: {exc}")
        sys.exit(EXIT_NO_CREWAI0)
    if not crewai.__version__.startswith("0."):
        print(f"crewai {crewai.__version__} is installed, not 0.x")
        sys.exit(EXIT_NO_CREWAI0)
    return crewai
