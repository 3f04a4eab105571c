"""Small real models and datasets shared by tests and subprocess jobs (kill/resume).

Run as a script: ``python tests/jobs.py STORE [N_ITEMS]`` extracts the token model's
layers into STORE, printing ``ready`` once imports are done (so a test can kill it at a
random moment of the extraction itself). With STORE ``-`` it reads the store's path from
stdin after ``ready`` (an empty line: exit), so a test can start it ahead of need: its
imports take seconds, the extraction itself about one."""

from __future__ import annotations

import os
import sys

import torch
from transformers import BertConfig, BertModel


def tiny_bert(seed: int = 0, hidden: int = 32, layers: int = 2) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=64)
    return BertModel(cfg).eval()


class Tokens(torch.utils.data.Dataset):
    """Deterministic token sequences of varying length, 4 samples per subject."""

    def __init__(self, n: int = 40, length: int = 16, nan_items: tuple[int, ...] = ()):
        self.n, self.length, self.nan_items = n, length, set(nan_items)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(1000 + i)
        k = 4 + (i * 7) % (self.length - 4)
        ids = torch.zeros(self.length, dtype=torch.long)
        ids[:k] = torch.randint(1, 64, (k,), generator=g)
        return {"input_ids": ids, "attention_mask": (ids > 0).long(),
                "subject_id": f"S{i // 4:03d}", "sample_id": f"X{i:04d}", "age": 30.0 + i}


if __name__ == "__main__":
    import bioviz as bv
    from bioviz.adapters import TorchAdapter

    store, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 400
    model = tiny_bert(hidden=64, layers=3)
    print("ready", flush=True)
    if store == "-":
        store = sys.stdin.readline().strip()
        if not store:
            sys.exit(0)
    bv.extract(TorchAdapter(model), Tokens(n), "encoder.layer.*", store, batch_size=4, chunk_rows=97,
               dtype="float16", progress=False)
    print("done", flush=True)
    # extract has returned: what it wrote is closed and its lock released. Skip the interpreter's
    # teardown of torch and Lightning (~1.5 s of a test's wait); nothing of bioviz's runs in it
    os._exit(0)
