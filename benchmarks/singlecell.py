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

Tokenisation against the models' own tokenisers, on the same cells (synthetic counts, ~1,500
genes per cell, 20,000 genes), bioviz timed through the adapter's own path
(``dataset`` + ``collate`` in batches of 16: gene mapping, checks, reading, encoding):

* scGPT, its own code: ``scgpt.preprocess.binning`` and ``scgpt.data_collator.DataCollator``
  from the ``scgpt`` package (0.2.4, installed with ``pip install --no-deps``: its package
  ``__init__`` imports torchtext and its model, which tokenising needs neither of, so only those
  two files are loaded, under a stub ``scgpt`` package that supplies the one name they import
  from it, ``logger``). The per-cell item is the ``Dataset`` defined inside
  ``scgpt.tasks.get_batch_cell_embeddings`` (dense rows, non-zero genes, ``<cls>`` first),
  written out here because it cannot be imported. ``singlecell_tokenize_vs_scgpt_speedup``:
  scGPT's seconds / bioviz's. ``singlecell_scgpt_tokens_match``: 1 when every cell's gene ids
  and value bins are equal. scGPT breaks ties between equal bin edges with
  ``np.random.rand``, bioviz with a generator seeded per cell; for the match (not the timing)
  scGPT's ``np.random.rand`` is handed bioviz's per-cell generators, so any difference left is
  a difference of method. ``max_length`` is above every cell's length, so neither side samples
  genes (sampling draws from ``torch.randperm`` in scGPT, which cannot be matched).
* Geneformer: its ``TranscriptomeTokenizer`` is distributed through Hugging Face, not PyPI, and
  cannot be installed here, so the peer is NOT Geneformer's code: it is a plain
  numpy/scipy re-implementation of ``tokenize_anndata`` + ``create_dataset`` (V1) written in
  this file from its published source (chunks of 512 cells, the same sparse-matrix
  expression ``X / n_counts * target_sum / medians``, ``np.argsort(-x)``, truncation), hence
  the ``_reimpl`` in ``singlecell_tokenize_vs_geneformer_reimpl_speedup`` and
  ``singlecell_geneformer_tokens_match_reimpl`` (``singlecell_geneformer_cells_differing_reimpl``
  counts the cells whose tokens differ). obs ``n_counts`` is ``X.sum(1)`` of the float32
  counts, so float32: Geneformer's expression then divides in float32, bioviz in float64, and
  genes whose normalised values agree to float32 precision can swap places.
* ``singlecell_tokens_match_reference``: 1 when both matches are 1.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
N_GENES = 20_000
THROUGHPUT_CELLS = int(os.environ.get("BIOVIZ_BENCH_SC_CELLS", 96))
TOKENIZE_CELLS = int(os.environ.get("BIOVIZ_BENCH_SC_TOKENIZE_CELLS", 512))
# the figures this group must report (benchmarks/run.py checks)
KEYS = ("singlecell_cells_per_s", "singlecell_outside_forward_share", "backed_200k_peak_rss_gb",
        "singlecell_tokenize_vs_scgpt_speedup", "singlecell_scgpt_tokens_match",
        "singlecell_tokenize_vs_geneformer_reimpl_speedup", "singlecell_geneformer_tokens_match_reimpl",
        "singlecell_tokens_match_reference")
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


# -- tokenisation against the models' own tokenisers ---------------------------------------


def _bioviz_tokenize(adapter, adata, batch_size=16):
    """bioviz's own path: ``dataset`` (gene mapping, checks), then ``collate`` per batch."""
    t = time.perf_counter()
    cells = adapter.dataset(adata)
    batches = [adapter.collate([cells[i] for i in range(s, min(s + batch_size, len(cells)))])
               for s in range(0, len(cells), batch_size)]
    return time.perf_counter() - t, batches


def geneformer_reimpl(adata, token_dict, median_dict, context, target_sum=10_000, chunk_size=512):
    """NOT Geneformer's code (it cannot be installed here): a re-implementation of its
    ``TranscriptomeTokenizer.tokenize_anndata`` + ``create_dataset`` for V1 dictionaries,
    from its published source. Returns one token array per cell."""
    var_ids = np.asarray(adata.var_names)
    genelist = dict.fromkeys(median_dict, True)  # genes with a median (specials have none)
    coding_loc = np.where([genelist.get(g, False) for g in var_ids])[0]
    norm_factor_vector = np.array([median_dict[g] for g in var_ids[coding_loc]])
    coding_tokens = np.array([token_dict[g] for g in var_ids[coding_loc]])
    out = []
    for i in range(0, adata.n_obs, chunk_size):
        idx = np.arange(i, min(i + chunk_size, adata.n_obs))
        n_counts = adata.obs["n_counts"].to_numpy()[idx][:, None]
        x_view = adata.X[idx][:, coding_loc]
        x_norm = sp.csr_matrix(x_view / n_counts * target_sum / norm_factor_vector)
        for j in range(x_norm.shape[0]):
            row = x_norm[j]
            out.append(coding_tokens[row.indices][np.argsort(-row.data)])  # rank_genes
    return [t[:context] for t in out]  # create_dataset: truncate to model_input_size (V1)


def _scgpt_own_code():
    """``(scgpt.preprocess, scgpt.data_collator)`` from the installed ``scgpt`` package, the two
    files alone under a stub package (see the module docstring)."""
    if "scgpt.data_collator" not in sys.modules:
        spec = importlib.util.find_spec("scgpt")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the single-cell benchmark compares with scGPT's own tokeniser code: "
                               "pip install --no-deps scgpt==0.2.4 (make bench does)")
        # STUB: not scGPT's __init__ (torchtext, flash-attn, its model); only what
        # preprocess.py takes from the package: its logger
        stub = types.ModuleType("scgpt")
        stub.__path__ = list(spec.submodule_search_locations)
        stub.logger = logging.getLogger("scgpt")
        sys.modules["scgpt"] = stub
    return importlib.import_module("scgpt.preprocess"), importlib.import_module("scgpt.data_collator")


class _NumpyWithDraws(types.ModuleType):
    """numpy, except ``random.rand`` draws from the next of ``generators`` (one per cell):
    handed to scGPT's binning for the match only, so its tie-breaking draws are bioviz's."""

    def __init__(self, generators):
        super().__init__("numpy")
        gens = iter(generators)
        self.random = types.SimpleNamespace(rand=lambda n: next(gens).random(n))

    def __getattr__(self, name):
        return getattr(np, name)


def _scgpt_tokenize(adata, vocab, pad_value, max_length, batch_size=16):
    """scGPT's embedding path up to the model: dense rows, the per-cell item of
    ``get_batch_cell_embeddings``'s Dataset (written out: it is defined inside that
    function), then scGPT's own ``DataCollator`` (binning included), batches of 16."""
    _, collator_mod = _scgpt_own_code()
    t = time.perf_counter()
    count_matrix = adata.X if isinstance(adata.X, np.ndarray) else adata.X.toarray()
    gene_ids = np.array([vocab[g] for g in adata.var_names])

    def item(idx):  # get_batch_cell_embeddings' Dataset.__getitem__
        row = count_matrix[idx]
        nonzero_idx = np.nonzero(row)[0]
        values = row[nonzero_idx]
        genes = gene_ids[nonzero_idx]
        genes = np.insert(genes, 0, vocab["<cls>"])
        values = np.insert(values, 0, pad_value)
        return {"id": idx, "genes": torch.from_numpy(genes).long(), "expressions": torch.from_numpy(values).float()}

    collator = collator_mod.DataCollator(do_padding=True, pad_token_id=vocab["<pad>"], pad_value=pad_value,
                                         do_mlm=False, do_binning=True, max_length=max_length, sampling=True,
                                         keep_first_n_tokens=1)
    batches = [collator([item(i) for i in range(s, min(s + batch_size, len(count_matrix)))])
               for s in range(0, len(count_matrix), batch_size)]
    return time.perf_counter() - t, batches


def write_scgpt_model(d: Path, genes, seed=0) -> dict:
    """A directory laid out like a released scGPT model (small: tokenising does not use it)."""
    from safetensors.torch import save_file

    from bioviz.adapters.singlecell.scgpt import ScGPTModel

    vocab = {g: i for i, g in enumerate(genes)}
    vocab.update({"<pad>": len(genes), "<cls>": len(genes) + 1, "<eoc>": len(genes) + 2})
    torch.manual_seed(seed)
    model = ScGPTModel(len(vocab), 32, 2, 64, 1, padding_idx=vocab["<pad>"])
    save_file(model.state_dict(), str(d / "model.safetensors"))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "args.json").write_text(json.dumps({"embsize": 32, "nheads": 2, "d_hid": 64, "nlayers": 1, "n_bins": 51,
                                             "pad_token": "<pad>", "pad_value": -2, "input_emb_style": "continuous"}))
    return vocab


def _scgpt_peer(work: Path, x, obs, preprocess_mod) -> dict:
    import anndata as ad

    from bioviz.adapters.singlecell.scgpt import ScGPTAdapter

    sc_dir = work / "scgpt_model"
    sc_dir.mkdir()
    symbols = [f"GENE{i:05d}" for i in range(N_GENES)]
    vocab = write_scgpt_model(sc_dir, symbols)
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=symbols))
    max_length = int(np.diff(x.indptr).max()) + 1  # no cell sampled on either side
    seed = 0
    ours_s, ours = _bioviz_tokenize(ScGPTAdapter(sc_dir, max_length=max_length, seed=seed, subject_key="donor"), adata)
    ref_s, _ = _scgpt_tokenize(adata, vocab, -2.0, max_length)  # timed: scGPT's own draws
    real_np = preprocess_mod.np
    preprocess_mod.np = _NumpyWithDraws(np.random.default_rng([seed, c]) for c in range(x.shape[0]))
    try:  # the match: bioviz's per-cell draws handed to scGPT's tie-breaking
        _, ref = _scgpt_tokenize(adata, vocab, -2.0, max_length)
    finally:
        preprocess_mod.np = real_np
    same = len(ours) == len(ref) and all(
        torch.equal(o.inputs["genes"], r["gene"]) and torch.equal(o.inputs["values"], r["expr"])
        for o, r in zip(ours, ref))
    return {"singlecell_tokenize_vs_scgpt_speedup": ref_s / ours_s, "singlecell_scgpt_tokens_match": int(same),
            "singlecell_tokenize_bioviz_scgpt_s": ours_s, "singlecell_tokenize_scgpt_s": ref_s}


def _geneformer_peer(work: Path, x, obs) -> dict:
    import anndata as ad

    from bioviz.adapters.singlecell.geneformer import GeneformerAdapter

    gf_dir = work / "gf_tokenize"
    gf_dir.mkdir()
    genes = write_model(gf_dir, N_GENES, layers=1, width=32, heads=2, context=2048)
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))
    ada = GeneformerAdapter(gf_dir, subject_key="donor")
    ours_s, batches = _bioviz_tokenize(ada, adata)
    ours = [ids[:int(m.sum())].numpy() for b in batches
            for ids, m in zip(b.inputs["input_ids"], b.inputs["attention_mask"])]
    token_dict = json.loads((gf_dir / "token_dictionary.json").read_text())
    median_dict = json.loads((gf_dir / "gene_median_dictionary.json").read_text())
    t = time.perf_counter()
    ref = geneformer_reimpl(adata, token_dict, median_dict, ada.context)
    ref_s = time.perf_counter() - t
    differing = sum(not np.array_equal(o, r) for o, r in zip(ours, ref)) + abs(len(ours) - len(ref))
    return {"singlecell_tokenize_vs_geneformer_reimpl_speedup": ref_s / ours_s,
            "singlecell_geneformer_tokens_match_reimpl": int(differing == 0),
            "singlecell_geneformer_cells_differing_reimpl": differing,
            "singlecell_tokenize_bioviz_geneformer_s": ours_s, "singlecell_tokenize_geneformer_reimpl_s": ref_s}


def tokenize_peers(work: Path) -> dict:
    x = synthetic_counts(TOKENIZE_CELLS, N_GENES, 1500, seed=3)
    # n_counts as ``X.sum(1)`` gives it on float32 counts (float32), as Geneformer's docs compute it
    obs = pd.DataFrame({"donor": [f"d{i % 4}" for i in range(x.shape[0])],
                        "n_counts": np.asarray(x.sum(1)).ravel()}, index=[f"c{i}" for i in range(x.shape[0])])
    _say(f"tokenise: {x.shape[0]} cells, {x.nnz / x.shape[0]:.0f} genes/cell, bioviz vs scGPT's code, "
         "vs a Geneformer re-implementation ...")
    out = {}
    try:
        preprocess_mod, _ = _scgpt_own_code()
    except RuntimeError as e:  # its figures are then missing, which run.py reports as an error
        _say(f"{e}; the scGPT figures are left out")
    else:
        out.update(_scgpt_peer(work, x, obs, preprocess_mod))
    out.update(_geneformer_peer(work, x, obs))
    if "singlecell_scgpt_tokens_match" in out:
        out["singlecell_tokens_match_reference"] = int(out["singlecell_scgpt_tokens_match"]
                                                       and out["singlecell_geneformer_tokens_match_reimpl"])
    _say("tokenise: " + ", ".join(f"{k} {v:.3g}" for k, v in out.items()))
    return out


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
        figures.update(tokenize_peers(work))
        figures.update(backed_rss(work))
    return figures


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k}: {v:.4g}")
