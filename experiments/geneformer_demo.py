"""Regenerate the embedded single-cell demo model (adapters/singlecell/demo_model/).

    python experiments/geneformer_demo.py [--out DIR] [--epochs N]

A small Geneformer-architecture model (BertForMaskedLM: 3 layers, 128 wide, 4 heads, V2-style
``<cls>``/``<eos>`` tokens, 256-token context: the top 254 genes of each cell) trained by masked-gene prediction on scanpy's
``pbmc68k_reduced`` (700 PBMCs, 765 genes), which ships offline with scanpy. Counts are
recovered from the log values in ``.raw`` as described in ``bioviz.adapters.singlecell.demo``;
the token and gene-median dictionaries are built from the same data the way Geneformer's
are (median of non-zero ``counts / n_counts * 10_000`` per gene) and written as JSON. The
cells are tokenised by ``GeneformerAdapter`` itself, so training and extraction see the
same tokens.

Deterministic on CPU: fixed seeds, deterministic algorithms, a fixed thread count (2). Writes
``config.json``, ``model.safetensors``, ``token_dictionary.json``,
``gene_median_dictionary.json`` and ``training.json`` (data checksum, settings, loss curve).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEED = 0
THREADS = 2  # results are reproducible for a fixed thread count
SPECIAL = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
ARCH = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
            max_position_embeddings=256, hidden_act="relu", hidden_dropout_prob=0.02,
            attention_probs_dropout_prob=0.02, pad_token_id=0, type_vocab_size=1)


def build_dictionaries(adata):
    genes = list(adata.var_names)
    tokens = {**SPECIAL, **{g: i + len(SPECIAL) for i, g in enumerate(genes)}}
    x = adata.X.toarray().astype(np.float64)
    norm = x / adata.obs["n_counts"].to_numpy()[:, None] * 10_000
    medians = {}
    for j, g in enumerate(genes):
        nz = norm[:, j][norm[:, j] > 0]
        medians[g] = float(np.median(nz)) if nz.size else 1.0
    return tokens, medians


def mask_tokens(ids, attn, gen, vocab_size, n_special):
    """BERT masking: 15% of gene tokens; of those 80% <mask>, 10% random gene, 10% unchanged."""
    labels = ids.clone()
    is_gene = attn.bool() & (ids >= n_special)
    chosen = (torch.rand(ids.shape, generator=gen) < 0.15) & is_gene
    labels[~chosen] = -100
    out = ids.clone()
    r = torch.rand(ids.shape, generator=gen)
    out[chosen & (r < 0.8)] = SPECIAL["<mask>"]
    rand = chosen & (r >= 0.8) & (r < 0.9)
    out[rand] = torch.randint(n_special, vocab_size, ids.shape, generator=gen)[rand]
    return out, labels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "adapters" / "singlecell" / "demo_model"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args(argv)

    from transformers import BertConfig, BertForMaskedLM

    from bioviz.adapters.singlecell.demo import pbmc68k_counts
    from bioviz.adapters.singlecell.geneformer import GeneformerAdapter

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    adata = pbmc68k_counts()
    tokens, medians = build_dictionaries(adata)
    (out / "token_dictionary.json").write_text(json.dumps(tokens, indent=0))
    (out / "gene_median_dictionary.json").write_text(json.dumps(medians, indent=0))
    config = BertConfig(vocab_size=len(tokens), **ARCH)
    model = BertForMaskedLM(config)
    model.save_pretrained(out)  # the adapter loads from disk, as a user's checkpoint would be

    # tokenise with the adapter: training sees exactly the tokens extraction will
    adapter = GeneformerAdapter(out, subject_key="donor", sample_key="library")
    cells = adapter.dataset(adata)
    batch = adapter.collate([cells[i] for i in range(len(cells))])
    ids, attn = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    data_sha = hashlib.sha256(ids.numpy().tobytes()).hexdigest()
    print(f"{len(ids)} cells, {int(attn.sum())} tokens, longest {ids.shape[1]}; tokens sha256 {data_sha[:16]}", flush=True)

    model = adapter.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * int(np.ceil(len(ids) / args.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(SEED)
    curve, t0 = [], time.time()
    # batches of cells of similar length (less padding), in a new random order every epoch
    by_len = torch.argsort(attn.sum(1), stable=True)
    buckets = [by_len[s:s + args.batch_size] for s in range(0, len(ids), args.batch_size)]
    for epoch in range(args.epochs):
        losses, hits, seen = [], 0, 0
        for b in torch.randperm(len(buckets), generator=gen).tolist():
            idx = buckets[b]
            b_ids, b_attn = ids[idx], attn[idx]
            width = int(b_attn.sum(1).max())
            b_ids, b_attn = b_ids[:, :width], b_attn[:, :width]
            masked, labels = mask_tokens(b_ids, b_attn, gen, len(tokens), len(SPECIAL))
            outp = model(input_ids=masked, attention_mask=b_attn, labels=labels)
            opt.zero_grad()
            outp.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(outp.loss.detach()))
            sel = labels != -100
            hits += int((outp.logits.argmax(-1)[sel] == labels[sel]).sum())
            seen += int(sel.sum())
        curve.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "masked_accuracy": hits / max(seen, 1)})
        print(f"epoch {epoch + 1}/{args.epochs}: loss {curve[-1]['loss']:.3f}, masked-gene accuracy "
              f"{curve[-1]['masked_accuracy']:.3f} ({time.time() - t0:.0f} s)", flush=True)

    model.eval().save_pretrained(out)
    weights_sha = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    chance = 1 / (len(tokens) - len(SPECIAL))
    (out / "training.json").write_text(json.dumps({
        "script": "experiments/geneformer_demo.py", "data": "scanpy pbmc68k_reduced, counts recovered from raw",
        "cells": len(ids), "tokens_sha256": data_sha, "architecture": ARCH, "vocab_size": len(tokens),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": SEED,
        "torch": torch.__version__, "curve": curve, "chance_accuracy": chance,
        "model_safetensors_sha256": weights_sha, "seconds": round(time.time() - t0, 1),
    }, indent=1))
    print(f"wrote {out} (model.safetensors sha256 {weights_sha[:16]}; chance accuracy {chance:.4f})")


if __name__ == "__main__":
    main()
