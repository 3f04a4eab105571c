"""``bioviz demo``: the embedded default study, end to end on data and a model that ship
with the package (no downloads).

Cohort: scanpy's ``pbmc68k_reduced`` (700 PBMCs) with counts recovered from its log values.
Model: the small Geneformer-architecture BERT shipped in ``bioviz.adapters.singlecell`` (``demo_model/``).
Path: extract a layer's gene-token activations → train a TopK SAE (Lightning) → encode the
store into a FeatureTable → score the SAE spliced into the model → summarise which
features mark which cell types.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def run(out: str = "bioviz-demo", layer: str = "bert.encoder.layer.1", steps: int = 600,
        expansion_factor: int = 8, k: int = 16, cells: int | None = None, progress: bool = True) -> dict:
    """Run the embedded default study (pbmc68k + demo Geneformer) end to end into ``out``.

    Parameters
    ----------
    out
        Output folder (store, SAE, feature table, marker table, ``summary.json``).
    layer
        Layer of the demo model whose gene-token activations are extracted.
    steps
        SAE training steps.
    expansion_factor
        SAE width as a multiple of the layer's width.
    k
        Active SAE features per row (TopK).
    cells
        Use only the first this many cells (a quick look); all 700 when omitted.
    progress
        Show progress bars.

    Returns
    -------
    dict
        The summary also written as ``summary.json``: sizes, FVU, KL recovered, dead
        fraction, seconds and the output paths.
    """
    import bioviz as bv
    from bioviz.adapters.singlecell import demo_adapter, pbmc68k_counts
    from bioviz.evaluate import fidelity
    from bioviz.sae import fraction_of_variance_unexplained

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    adata = pbmc68k_counts()
    if cells is not None:  # a quick look (and the test) on the first cells
        adata = adata[:cells].copy()
    _say(f"cohort: {adata.n_obs} cells × {adata.n_vars} genes (scanpy pbmc68k_reduced, counts recovered)")
    with _no_hf_bars():
        adapter = demo_adapter(rows="gene", obs_columns=["bulk_labels"])
        fid_adapter = demo_adapter(rows="gene")
    store = bv.extract(adapter, adata, layer, out_dir / "store", batch_size=32, dtype="float16",
                       progress=progress)
    _say(f"extracted: {store}")
    sae, = bv.train(store.path, max_steps=steps, batch_size=2048, output_dir=str(out_dir / "sae"),
                    sae={"k": k, "expansion_factor": expansion_factor}, optim={"lr": 2e-3},
                    trainer={"enable_progress_bar": progress, "enable_model_summary": False,
                             "log_every_n_steps": 50})
    ft = bv.encode(sae, store, out=str(out_dir / "features.h5ad"), progress=progress)
    _say(f"feature table: {ft.n_obs} gene-token rows × {ft.n_vars} features → {out_dir / 'features.h5ad'}")
    fid = fidelity(fid_adapter, adata[:128], sae, layer, batch_size=32, progress=progress)
    markers = _cell_type_markers(ft)
    markers.to_csv(out_dir / "cell_type_features.tsv", sep="\t", index=False)
    x = np.asarray(store.array()[: min(store.n_rows, 20000)], dtype=np.float32)
    import torch

    with torch.no_grad():
        xt = torch.from_numpy(x)
        fvu = float(fraction_of_variance_unexplained(xt, sae(xt).x_hat))
    summary = {
        "cells": int(adata.n_obs), "rows": int(store.n_rows), "layer": layer, "d_in": sae.d_in,
        "features": sae.d_sae, "k": k, "fvu": fvu,
        "dead_fraction": float((ft.var["density"] == 0).mean()),
        "kl_recovered": float(fid["kl_recovered"]), "top1_agreement": float(fid["top1_agreement_sae"]),
        "seconds": round(time.perf_counter() - t0, 1),
        "outputs": {"store": str(store.path), "sae": str(out_dir / "sae"),
                    "features": str(out_dir / "features.h5ad"),
                    "cell_type_features": str(out_dir / "cell_type_features.tsv")},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    _say(f"SAE: FVU {fvu:.3f}, KL recovered {summary['kl_recovered']:.3f} (spliced into the model), "
         f"dead {summary['dead_fraction']:.1%}")
    _say("features most specific to each cell type (mean activation in type ÷ elsewhere):")
    for row in markers.groupby("cell_type").head(1).itertuples():
        _say(f"  {row.cell_type:<28} f{row.feature:<5} ×{row.specificity:.1f}  top genes: {row.top_genes}")
    _say(f"done in {summary['seconds']} s; outputs in {out_dir}/")
    return summary


def _cell_type_markers(ft, per_type: int = 3) -> pd.DataFrame:
    """A tidy table (cell_type, feature, specificity, top_genes): per cell type, the
    features whose mean activation over that type's gene tokens most exceeds the rest."""
    labels = ft.obs["bulk_labels"].astype(str).to_numpy()
    genes = ft.obs["gene_symbol" if "gene_symbol" in ft.obs else "gene_id"].astype(str).to_numpy()
    X = ft.X.tocsc()
    rows = []
    for cell_type in sorted(set(labels)):
        inside = labels == cell_type
        mean_in = np.asarray(X[inside].mean(0)).ravel()
        mean_out = np.asarray(X[~inside].mean(0)).ravel()
        spec = (mean_in + 1e-6) / (mean_out + 1e-6)
        spec[mean_in < 1e-3] = 0
        for f in np.argsort(-spec)[:per_type]:
            col = X[:, f].toarray().ravel()
            top = pd.Series(col[inside]).groupby(genes[inside]).mean().nlargest(3).index.tolist()
            rows.append({"cell_type": cell_type, "feature": int(f), "specificity": float(spec[f]),
                         "mean_in_type": float(mean_in[f]), "top_genes": ", ".join(top)})
    return pd.DataFrame(rows)


def _say(msg: str) -> None:
    print(msg, flush=True)


@contextmanager
def _no_hf_bars():
    """transformers' own "Loading weights" bar off while the demo model loads from disk."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
