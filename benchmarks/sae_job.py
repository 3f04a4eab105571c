"""Synthetic activations and the subprocess job of the SAE benchmark.

    python sae_job.py rss STORE STEPS BUFFER_ROWS OUT_DIR   train; print the peak RSS of the
        training loop alone (after the data-dependent init), then of the whole process, in MB

The activations are "realistic" in the ways that matter to an SAE: each row is a sparse,
non-negative combination of a planted dictionary larger than the SAE (16384 unit atoms in
512 dims, Zipf-distributed atom frequencies, ~24 active atoms per row, exponential
coefficients), plus a shared offset (activations are not centred), isotropic noise, and a
log-normal per-row scale (heavy-tailed row norms: the 99th-percentile norm is ~3.5x the
median).
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

D_IN, EXPANSION, K, BATCH = 512, 16, 32, 4096
ROWS_PER_ITEM = 1024


class Planted:
    """Deterministic rows: ``rows(block, n)`` depends only on (seed, block, n)."""

    def __init__(self, d: int = D_IN, n_atoms: int = 16384, active: int = 24, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.d, self.active, self.seed = d, active, seed
        dic = torch.randn(n_atoms, d, generator=g)
        self.dictionary = dic / dic.norm(dim=1, keepdim=True)
        p = 1.0 / (torch.arange(n_atoms, dtype=torch.float64) + 10.0) ** 0.8  # Zipf-like frequencies
        self.cdf = (p / p.sum()).cumsum(0).float()
        self.offset = torch.randn(d, generator=g) * (3.0 / math.sqrt(d))

    def rows(self, block: int, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + block + 1)
        m = n * self.active
        atoms = torch.searchsorted(self.cdf, torch.rand(m, generator=g)).clamp_max(len(self.cdf) - 1)
        coef = torch.empty(m).exponential_(1.0, generator=g)
        x = F.embedding_bag(atoms, self.dictionary, torch.arange(0, m, self.active),
                            per_sample_weights=coef, mode="sum")
        x += self.offset
        x += 0.1 * torch.randn(n, self.d, generator=g)
        x *= torch.exp(0.5 * torch.randn(n, 1, generator=g))
        return x


class Items(torch.utils.data.Dataset):
    """Items of ``ROWS_PER_ITEM`` rows ([T, d], one store row per token), item i = block
    ``first + i`` of ``gen``; or, with ``base``, cycling through the rows of ``base``."""

    def __init__(self, n_items: int, gen: Planted | None = None, first: int = 0,
                 base: torch.Tensor | None = None):
        self.n, self.gen, self.first, self.base = n_items, gen, first, base

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.base is not None:
            j = i % (len(self.base) // ROWS_PER_ITEM)
            return self.base[j * ROWS_PER_ITEM:(j + 1) * ROWS_PER_ITEM]
        return self.gen.rows(self.first + i, ROWS_PER_ITEM)


def write_store(path, items: Items, dtype: str = "float32"):
    """The real extraction path: an identity model whose output is the item, one row per token."""
    from torch import nn

    import bioviz as bv
    from bioviz.adapters import TorchAdapter

    return bv.extract(TorchAdapter(nn.Sequential(nn.Identity()), layout="tokens"), items, "0", path,
                      batch_size=8, chunk_rows=8192, dtype=dtype, progress=False)


def train_kwargs(steps: int) -> dict:
    """What the benchmark's bioviz runs share (TopK, 16x, k 32, batch 4096)."""
    return dict(max_steps=steps, batch_size=BATCH,
                sae={"architecture": "topk", "expansion_factor": EXPANSION, "k": K})


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


if __name__ == "__main__":
    import lightning as L

    import bioviz as bv

    mode, store, steps, buffer_rows, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    assert mode == "rss", mode
    init_peak, loop_peak = [], []

    class LoopPeak(L.Callback):
        """Peak RSS of the training loop alone: note the high-water mark so far, reset it
        (Linux clear_refs) once the init sample is done with, read it when training ends."""

        def on_train_start(self, trainer, module):
            import gc

            gc.collect()
            init_peak.append(_vm_hwm_mb())
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

        def on_train_end(self, trainer, module):
            loop_peak.append(_vm_hwm_mb())

    bv.train(store, buffer_rows=buffer_rows, output_dir=out, **train_kwargs(steps),
             trainer={"enable_progress_bar": False, "logger": False, "callbacks": [LoopPeak()]})
    print(loop_peak[0])
    # The whole run's peak is the larger of the two. Not getrusage's ru_maxrss: clear_refs
    # resets it too, and it also counts the high-water mark of the parent process that was
    # forked before exec (a benchmark process holding gigabytes would show up here).
    print(max(init_peak[0], loop_peak[0]))
