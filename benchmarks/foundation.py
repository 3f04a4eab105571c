"""Foundation: extraction overhead vs the bare forward, memory vs store size, kill/resume.

    python benchmarks/run.py foundation
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kill_resume as kr

JOB = Path(__file__).with_name("foundation_job.py")
# the figures this group must report (benchmarks/run.py checks)
KEYS = ("extract_overhead", "extract_peak_rss_ratio_8x", "kill_resume_identical", "kill_resume_sigkills",
        "kill_resume_missed_kills", "kill_resume_rewritten_files", "kill_resume_stray_files")


def _bare_and_extract(tmp: Path) -> tuple[float, float]:
    import torch
    from foundation_job import Tokens, bert

    import bioviz as bv
    from bioviz.adapters import TorchAdapter
    from bioviz.batches import FixedBatches

    model, data = bert(hidden=256, layers=6), Tokens(192, length=128)
    adapter = TorchAdapter(model)

    def bare() -> float:
        # the same batches through the same loader, forward only
        loader = torch.utils.data.DataLoader(adapter.dataset(data), batch_sampler=FixedBatches(len(data), 32),
                                             collate_fn=adapter.collate)
        t = time.perf_counter()
        with torch.inference_mode():
            for batch in loader:
                adapter.forward(batch)
        return time.perf_counter() - t

    def extract(i: int) -> float:
        t = time.perf_counter()
        bv.extract(adapter, data, "encoder.layer.3", tmp / f"ov{i}", batch_size=32, progress=False)
        return time.perf_counter() - t

    bare()  # warm-up: first-call allocations and kernel selection
    b, e = [], []
    for i in range(3):  # interleaved, so drift on a shared machine hits both sides
        b.append(bare())
        e.append(extract(i))
    return min(b), min(e)


def _peak_rss(tmp: Path, n: int, name: str) -> float:
    out = subprocess.run([sys.executable, str(JOB), "rss", str(tmp / name), str(n)],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _kill_resume(tmp: Path, trials: int = 10, n: int = 600) -> dict:
    """``trials`` stores, each SIGKILLed one to three times while the extraction runs, then
    finished. A kill is made on progress: once ``_progress.json`` shows the trial's next
    target of committed chunks (drawn at random, never the last two full chunks), after a
    random delay within the next chunk's work, and it counts only if it landed inside the
    extraction (0 < committed rows < total, no manifest); a kill that came too late (the run
    had finished) is counted as missed and the trial starts again on a fresh store, three
    times at most. A trial passes when all its kills landed, no resume rewrote a committed
    chunk's files, and the finished store equals an uninterrupted run's byte for byte; a trial
    whose kills never all landed fails (never a vacuous pass)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(path):
        p = subprocess.Popen([sys.executable, str(JOB), "extract", str(path), str(n)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
        assert p.stdout.readline().strip() == "ready"
        return p

    clean = tmp / "clean"
    per_chunk = kr.commit_interval(start(clean), clean)
    reference = _tree(clean)
    manifest = json.loads((clean / "manifest.json").read_text())
    total, chunk = manifest["n_rows"], manifest["chunk_rows"]
    last = (total - 1) // chunk  # the most chunks committed while the extraction still runs
    if last < 4:
        raise RuntimeError(f"{total} rows in chunks of {chunk}: too few chunks to kill between")
    rng = random.Random(0)
    passed = landed = missed = rewritten = stray = 0
    for trial in range(trials):
        targets = sorted(rng.sample(range(1, last - 1), rng.randint(1, 3)))
        rewrites, path = 0, None
        for attempt in range(3):  # a kill that came too late (the run had ended) starts the trial again
            path = tmp / f"k{trial}_{attempt}"
            hits = 0
            for target in targets:
                done = (kr.progress(path) or {"n_chunks": 0})["n_chunks"]
                if (path / "manifest.json").exists() or done >= last - 1:
                    break  # an earlier kill missed and the store got (nearly) finished
                before = kr.committed_files(path)
                p = start(path)
                hits += kr.kill_on_progress(p, path, max(target, done + 1) * chunk, total, rng.uniform(0, per_chunk))
                rewrites += len(kr.rewritten(before, path))
            landed, missed = landed + hits, missed + len(targets) - hits
            if hits == len(targets):
                break
            shutil.rmtree(path)
            path = None
        identical = False
        if path is not None:  # every kill of the trial landed inside the extraction
            before = kr.committed_files(path)
            subprocess.run([sys.executable, str(JOB), "extract", str(path), str(n)], check=True,
                           capture_output=True, env=env)
            rewrites += len(kr.rewritten(before, path))
            got = _tree(path)
            identical = got == reference
            stray += len(set(got) - set(reference))
            shutil.rmtree(path)
        passed += identical and rewrites == 0
        rewritten += rewrites
    return {"kill_resume_identical": f"{passed}/{trials}",
            "kill_resume_sigkills": landed,  # kills that landed inside the extraction
            "kill_resume_missed_kills": missed,  # kills that came too late (their trial is run again)
            "kill_resume_rewritten_files": rewritten,  # committed chunk files a resume rewrote
            # files in finished stores that an uninterrupted run does not have (e.g. zarr's
            # temp files from a write a kill interrupted)
            "kill_resume_stray_files": stray}


def run() -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bare, extract = _bare_and_extract(tmp)
        base = _peak_rss(tmp, 1000, "rss1")  # ~190k rows × 128 float32 ≈ 100 MB of activations
        big = _peak_rss(tmp, 8000, "rss8")  # ≈ 790 MB: a leak of rows would show
        kill_resume = _kill_resume(tmp)
    return {
        "extract_overhead": extract / bare,
        "extract_bare_forward_s": bare,
        "extract_peak_rss_ratio_8x": big / base,
        "extract_peak_rss_base_mb": base,
        **kill_resume,
    }
