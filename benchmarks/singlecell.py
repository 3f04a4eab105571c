"""Single-cell extraction: throughput through a Geneformer-size model, and memory on a
200k-cell backed h5ad.

    python benchmarks/run.py singlecell

* ``singlecell_cells_per_s``: cells per second through a 6-layer, 256-wide Geneformer-
  architecture model (GF-6L-30M-i2048 shape, random weights, V1 rank-value tokens up to 2048)
  on CPU, ``bioviz.extract`` end to end (checks, tokenisation, forward, store writing) on
  synthetic counts with ~1,500 detected genes per cell (10x-like).
* ``singlecell_outside_forward_share``: the share of that wall time not spent in the model's
  forward (timed around ``adapter.forward``): tokenisation, I/O, bookkeeping.
* ``backed_200k_peak_rss_gb``: peak resident memory of a separate process that extracts a
  200,000-cell ``.h5ad`` (made here, written in chunks) opened backed, with a small model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
N_GENES = 20_000
THROUGHPUT_CELLS = int(os.environ.get("BIOVIZ_BENCH_SC_CELLS", 96))
BACKED_CELLS = int(os.environ.get("BIOVIZ_BENCH_SC_BACKED", 200_000))


def _say(msg):
    print(f"# singlecell: {msg}", file=sys.stderr, flush=True)


def synthetic_counts(n_cells, n_genes, genes_per_cell, seed):
    """Sparse counts: genes drawn by a Zipf-like popularity, counts geometric (10x-like)."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_genes + 1) ** 0.8
    pop /= pop.sum()
    indptr, indices, data = [0], [], []
    for _ in range(n_cells):
        k = int(np.clip(rng.lognormal(np.log(genes_per_cell), 0.3), 10, n_genes // 2))
        cols = np.sort(rng.choice(n_genes, size=k, replace=False, p=pop))
        indices.append(cols)
        data.append(rng.geometric(0.45, size=k).astype(np.float32))
        indptr.append(indptr[-1] + k)
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=(n_cells, n_genes))


def write_model(d: Path, n_genes, *, layers, width, heads, context, seed=0):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    genes = [f"ENSG{i:011d}" for i in range(n_genes)]
    tokens = {"<pad>": 0, "<mask>": 1, **{g: i + 2 for i, g in enumerate(genes)}}
    rng = np.random.default_rng(seed)
    medians = {g: float(m) for g, m in zip(genes, rng.uniform(0.5, 5.0, n_genes))}
    (d / "token_dictionary.json").write_text(json.dumps(tokens))
    (d / "gene_median_dictionary.json").write_text(json.dumps(medians))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokens), hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * width, max_position_embeddings=context, hidden_act="relu", pad_token_id=0)
    BertForMaskedLM(cfg).save_pretrained(d)
    return genes


def throughput(work: Path) -> dict:
    import anndata as ad
    import torch

    import bioviz
    from bioviz.adapters.singlecell.geneformer import GeneformerAdapter

    class Timed(GeneformerAdapter):
        forward_s = 0.0

        def forward(self, batch):
            t = time.perf_counter()
            out = super().forward(batch)
            Timed.forward_s += time.perf_counter() - t
            return out

    model_dir = work / "gf6l"
    model_dir.mkdir()
    genes = write_model(model_dir, N_GENES, layers=6, width=256, heads=4, context=2048)
    x = synthetic_counts(THROUGHPUT_CELLS, N_GENES, 1500, seed=1)
    obs = pd.DataFrame({"donor": [f"d{i % 4}" for i in range(x.shape[0])]}, index=[f"c{i}" for i in range(x.shape[0])])
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))
    ada = Timed(model_dir, subject_key="donor")
    torch.set_num_threads(os.cpu_count() or 1)
    _say(f"throughput: {x.shape[0]} cells, {x.nnz / x.shape[0]:.0f} genes/cell, 6 layers x 256 ...")
    t = time.perf_counter()
    bioviz.extract(ada, adata, "bert.encoder.layer.5", work / "store_tp", batch_size=16, progress=False)
    total = time.perf_counter() - t
    _say(f"throughput: {total:.1f} s, forward {Timed.forward_s:.1f} s")
    return {"singlecell_cells_per_s": x.shape[0] / total,
            "singlecell_outside_forward_share": 1 - Timed.forward_s / total}


def write_backed_h5ad(path: Path, n_cells, genes, chunk=20_000, seed=2):
    """An AnnData-format .h5ad written chunk by chunk (the benchmark's own memory stays small)."""
    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:
        from anndata.experimental import write_elem
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        X = f.create_group("X")
        X.attrs["encoding-type"], X.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        X.attrs["shape"] = (n_cells, len(genes))
        data = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(1 << 16,))
        indices = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(1 << 16,))
        indptr = [np.zeros(1, dtype=np.int64)]
        nnz = 0
        for s in range(0, n_cells, chunk):
            block = synthetic_counts(min(chunk, n_cells - s), len(genes), 40, seed + s)
            data.resize((nnz + block.nnz,))
            indices.resize((nnz + block.nnz,))
            data[nnz:] = block.data
            indices[nnz:] = block.indices
            indptr.append(block.indptr[1:].astype(np.int64) + nnz)
            nnz += block.nnz
        X.create_dataset("indptr", data=np.concatenate(indptr))
        obs = pd.DataFrame({"donor": [f"d{i % 50}" for i in range(n_cells)]}, index=[f"cell{i}" for i in range(n_cells)])
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=genes))
    return nnz


CHILD = """
import sys, time
import bioviz
from bioviz.adapters.singlecell.geneformer import GeneformerAdapter
ada = GeneformerAdapter(sys.argv[1], subject_key="donor")
t = time.perf_counter()
store = bioviz.extract(ada, sys.argv[2], "bert.encoder.layer.0", sys.argv[3], batch_size=1024, progress=False)
print(store.n_rows, time.perf_counter() - t)
"""


def backed_rss(work: Path) -> dict:
    model_dir = work / "tiny"
    model_dir.mkdir()
    # the bar is memory at scale, not the model: one small layer keeps the run to minutes
    genes = write_model(model_dir, 2000, layers=1, width=32, heads=2, context=64)
    path = work / "cohort_200k.h5ad"
    _say(f"backed: writing {BACKED_CELLS} cells to {path} ...")
    nnz = write_backed_h5ad(path, BACKED_CELLS, genes)
    _say(f"backed: {path.stat().st_size / 1e6:.0f} MB, {nnz} non-zeros; extracting in a child process ...")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(work / "child.out", "w") as out_f, open(work / "child.err", "w") as err_f:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(model_dir), str(path), str(work / "store_backed")],
                                stdout=out_f, stderr=err_f, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (KiB on Linux)
    out, err = (work / "child.out").read_text(), (work / "child.err").read_text()
    if status != 0:
        raise RuntimeError(f"backed extraction failed:\n{err[-3000:]}")
    rows, seconds = out.split()[-2:]
    if int(rows) != BACKED_CELLS:
        raise RuntimeError(f"backed extraction wrote {rows} rows, expected {BACKED_CELLS}")
    _say(f"backed: {seconds} s, peak RSS {usage.ru_maxrss / 2**20:.2f} GiB")
    return {"backed_200k_peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
            "backed_200k_cells_per_s": BACKED_CELLS / float(seconds)}


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="bioviz-bench-sc-") as tmp:
        work = Path(tmp)
        figures = throughput(work)
        figures.update(backed_rss(work))
    return figures


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k}: {v:.4g}")
