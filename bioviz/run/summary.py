"""What a finished study says, as a dict (:func:`run_study`'s result) and as the lines ``bioviz run`` prints."""

from __future__ import annotations

from pathlib import Path

from .layout import ARTIFACTS


def summary(folder: Path, done: dict | None = None, top: int = 5) -> dict:
    """What a finished study says: where the report is, the top candidates and their q, and
    which stages ran (with seconds) or were cached."""
    import pandas as pd

    cand = pd.read_parquet(folder / ARTIFACTS["associate"] / "candidates.parquet")
    cols = [c for c in ("rank", "feature", "label", "test", "effect", "q") if c in cand]
    return {
        "study": str(folder), "report": str(folder / ARTIFACTS["report"] / "report.html"),
        "n_candidates": int(len(cand)),
        "candidates": [{k: None if pd.isna(v) else v.item() if hasattr(v, "item") else v for k, v in row.items()}
                       for row in cand.head(top)[cols].to_dict("records")],
        "stages": done or {},
        "seconds": round(sum(s["seconds"] for s in (done or {}).values()), 1),
    }


def format_summary(s: dict) -> str:
    lines = [f"study {s['study']}: done in {s['seconds']:.1f} s", f"report: {s['report']}",
             f"candidates: {s['n_candidates']}" + (" (the best below)" if s["candidates"] else "")]
    for c in s["candidates"]:
        lines.append(f"  {c.get('rank', '')!s:>3}  {c['feature']:<8} {c.get('label', '')!s:<16} q = {c['q']:.3g}")
    lines.append("stages: " + ", ".join(f"{k} {v['status']}" + (f" {v['seconds']:.1f} s" if v["status"] != "cached"
                                                                 else "") for k, v in s["stages"].items()))
    if s.get("check"):
        lines.append(f"check: {s['check'][1]}")
    return "\n".join(lines)
