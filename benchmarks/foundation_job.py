"""Subprocess jobs for the foundation benchmark (fresh processes, so RSS and SIGKILL are real).

    python foundation_job.py rss STORE N       extract N items, print peak RSS in MB
    python foundation_job.py extract STORE N   print "ready" after imports, then extract
"""

from __future__ import annotations

import sys

import torch
from transformers import BertConfig, BertModel


def bert(hidden: int = 64, layers: int = 2, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=512, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                     max_position_embeddings=512)
    return BertModel(cfg).eval()


class Tokens(torch.utils.data.Dataset):
    """Deterministic sequences of varying length (as cells have varying numbers of genes)."""

    def __init__(self, n: int, length: int = 64):
        self.n, self.length = n, length

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        k = self.length // 2 + (i * 13) % (self.length // 2)
        ids = torch.zeros(self.length, dtype=torch.long)
        ids[:k] = torch.randint(1, 512, (k,), generator=g)
        return {"input_ids": ids, "attention_mask": (ids > 0).long(),
                "subject_id": f"S{i // 50:04d}", "sample_id": f"X{i:06d}"}


if __name__ == "__main__":
    import bioviz as bv
    from bioviz.adapters import TorchAdapter

    mode, store, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "rss":  # a cheap model with wide output, so the store (not the model) dominates
        model, data, layer = bert(hidden=128, layers=1), Tokens(n, length=256), "embeddings"
    else:
        model, data, layer = bert(), Tokens(n), "encoder.layer.1"
    print("ready", flush=True)
    bv.extract(TorchAdapter(model), data, layer, store, batch_size=16, chunk_rows=2048, progress=False)
    if mode == "rss":
        # VmHWM is this process's own peak; ru_maxrss would inherit the parent's at exec
        with open("/proc/self/status") as f:
            print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024)
