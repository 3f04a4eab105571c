"""Run benchmark groups and print one ``key: value`` line per figure, last.

    python benchmarks/run.py [GROUP ...]

Each group is a module ``benchmarks/<group>.py`` with ``run() -> dict[str, float | str]``;
figures compare bioviz against a peer side by side in the same process and run.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

GROUPS = ["foundation", "sae", "singlecell", "volume", "analysis"]


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    wanted = argv or [g for g in GROUPS if (Path(__file__).parent / f"{g}.py").exists()]
    unknown = [g for g in wanted if not (Path(__file__).parent / f"{g}.py").exists()]
    if unknown:
        print(f"unknown benchmark group(s): {', '.join(unknown)}; known: {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    figures: dict[str, object] = {}
    for group in wanted:
        t = time.perf_counter()
        print(f"# {group} ...", file=sys.stderr, flush=True)
        figures.update(importlib.import_module(group).run())
        print(f"# {group} took {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    for key, value in figures.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
