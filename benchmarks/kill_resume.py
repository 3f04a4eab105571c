"""Killing an extraction while it runs and checking the resume, shared by the SIGKILL test
(tests/test_extract.py) and the ``kill_resume_*`` figures (benchmarks/foundation.py): a kill
counts only when it lands inside the extraction, and a resume must not rewrite anything
already committed."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path


def progress(store: Path) -> dict | None:
    """``_progress.json`` of a partial store (None when there is none or it is mid-replace)."""
    try:
        return json.loads((store / "_progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def committed_files(store: Path) -> dict[str, tuple[int, int, bytes]]:
    """(inode, mtime_ns, bytes) of every file of the chunks ``_progress.json`` records as
    committed: zarr chunk files (``activations.zarr/<layer>/c/<chunk>/0``; zarr writes each to
    a temp file and renames it, so a rewrite shows even with equal bytes) and obs parts."""
    from bioviz.store.format import obs_part

    rec = progress(store)
    if rec is None:
        return {}
    n, arrays, files = rec["n_chunks"], store / "activations.zarr", []
    for f in sorted(arrays.rglob("*")):
        # (layer, "c", row chunk, column chunk); zarr's temp files (*.partial) are not chunks
        rel = f.relative_to(arrays).parts
        if f.is_file() and len(rel) == 4 and rel[1] == "c" and rel[2].isdigit() and rel[3].isdigit() and int(rel[2]) < n:
            files.append(f)
    if len(files) != n * len(rec["layers"]):
        raise RuntimeError(f"{store}: {n} chunks recorded as committed but {len(files)} chunk files")
    files += [obs_part(store, i) for i in range(n)]
    return {str(f.relative_to(store)): (f.stat().st_ino, f.stat().st_mtime_ns, f.read_bytes()) for f in files}


def rewritten(before: dict[str, tuple[int, int, bytes]], store: Path) -> list[str]:
    """Files of ``before`` that are gone or were rewritten (obs parts of a finished store are
    merged into obs.parquet and removed, as they should be)."""
    finished = (store / "manifest.json").exists()
    changed = []
    for name, (ino, mtime, data) in before.items():
        f = store / name
        if finished and name.startswith("_obs"):
            continue
        if not f.exists() or (f.stat().st_ino, f.stat().st_mtime_ns) != (ino, mtime) or f.read_bytes() != data:
            changed.append(name)
    return changed


def kill_on_progress(proc: subprocess.Popen, store: Path, rows: int, total: int, delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` s after ``_progress.json`` shows ``rows`` or more committed
    rows. True when the kill landed inside the extraction: the process died of it, and it left
    0 < committed rows < ``total`` and no manifest."""
    while proc.poll() is None:
        rec = progress(store)
        if (store / "manifest.json").exists():
            break
        if rec is not None and rec["committed_rows"] >= rows:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    if proc.wait() != -signal.SIGKILL:
        return False
    rec = progress(store)
    return rec is not None and 0 < rec["committed_rows"] < total and not (store / "manifest.json").exists()


def commit_interval(proc: subprocess.Popen, store: Path) -> float:
    """Watch a run to its end; the shortest seconds between two of its chunk commits (0 when
    too fast to see two): a delay drawn below it stays within about one chunk's work."""
    seen, last = [], None
    while proc.poll() is None:
        rec = progress(store)
        if rec is not None and rec["committed_rows"] and rec["committed_rows"] != last:
            seen.append(time.perf_counter())
            last = rec["committed_rows"]
        time.sleep(0.002)
    return min((b - a for a, b in zip(seen, seen[1:])), default=0.0)
