"""Run benchmark groups and print one ``key: value`` line per figure, last.

    python benchmarks/run.py [GROUP ...]

Each group is a module ``benchmarks/<group>.py`` with ``run() -> dict[str, float | str]``
and ``KEYS``, the figures it must report; figures compare bioviz against a peer side by side
in the same process and run.

A figure never vanishes silently: a group whose file is missing is an error before anything
runs (named or not: with no arguments every group in ``GROUPS`` runs), and a group that
fails, or returns without one of its ``KEYS``, is reported on stderr and makes the exit
status 1, after the other groups' figures are printed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

GROUPS = ["foundation", "sae", "singlecell", "volume", "analysis", "interpret", "report"]


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    sys.path.insert(0, str(here))
    wanted = argv or GROUPS
    missing = [g for g in wanted if not (here / f"{g}.py").exists()]
    if missing:
        known = [g for g in GROUPS if (here / f"{g}.py").exists()]
        print(f"benchmark group(s) without a file: {', '.join(f'benchmarks/{g}.py' for g in missing)}; "
              f"groups with one: {', '.join(known)}", file=sys.stderr)
        return 2
    figures: dict[str, object] = {}
    problems: list[str] = []
    for group in wanted:
        t = time.perf_counter()
        print(f"# {group} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(group)
            got = module.run()
        except Exception:
            traceback.print_exc()
            problems.append(f"{group}: failed (traceback above)")
            continue
        keys = getattr(module, "KEYS", None)
        if keys is None:
            problems.append(f"{group}: declares no KEYS, so a missing figure could not be told")
        else:
            problems += [f"{group}: no figure {k!r}" for k in keys if k not in got]
        figures.update(got)
        print(f"# {group} took {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    for key, value in figures.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    for p in problems:
        print(f"benchmark error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
