"""Foundation: extraction overhead vs the bare forward, memory vs store size, kill/resume.

    python benchmarks/run.py foundation
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = Path(__file__).with_name("foundation_job.py")


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


def _kill_resume(tmp: Path, trials: int = 10, n: int = 600) -> tuple[int, int, int]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(path):
        p = subprocess.Popen([sys.executable, str(JOB), "extract", str(path), str(n)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
        assert p.stdout.readline().strip() == "ready"
        return p

    clean = tmp / "clean"
    p = start(clean)
    t = time.perf_counter()
    p.wait()
    duration = time.perf_counter() - t
    reference = _tree(clean)
    rng = random.Random(0)
    passed = kills = 0
    for trial in range(trials):
        path = tmp / f"k{trial}"
        for _ in range(rng.randint(1, 3)):  # one to three kills per trial, each at a random moment
            p = start(path)
            time.sleep(rng.uniform(0.0, 0.9 * duration))  # after imports, inside the extraction
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait()
        subprocess.run([sys.executable, str(JOB), "extract", str(path), str(n)], check=True,
                       capture_output=True, env=env)
        passed += _tree(path) == reference
        shutil.rmtree(path)
    return passed, trials, kills


def run() -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bare, extract = _bare_and_extract(tmp)
        base = _peak_rss(tmp, 1000, "rss1")  # ~190k rows × 128 float32 ≈ 100 MB of activations
        big = _peak_rss(tmp, 8000, "rss8")  # ≈ 790 MB: a leak of rows would show
        passed, tried, kills = _kill_resume(tmp)
    return {
        "extract_overhead": extract / bare,
        "extract_bare_forward_s": bare,
        "extract_peak_rss_ratio_8x": big / base,
        "extract_peak_rss_base_mb": base,
        "kill_resume_identical": f"{passed}/{tried}",
        "kill_resume_sigkills": kills,
    }
