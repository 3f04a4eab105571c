"""The embedded single-cell demo: scanpy's ``pbmc68k_reduced`` as counts, and the small
Geneformer-architecture model trained on it (shipped as package data in
``bioviz.adapters.singlecell``'s ``demo_model`` folder, made by ``experiments/geneformer_demo.py``).

``pbmc68k_reduced().raw.X`` holds ``log1p`` of per-cell-normalised counts, rounded to three
decimals. :func:`pbmc68k_counts` recovers integer counts: per cell, ``expm1(x)`` divided by the
cell's smallest non-zero ``expm1`` value (a gene seen once) and rounded. The rounding of the
stored logs moves a value by at most ~0.1% (0.33 counts at the largest count, 259), so the
rounded integers are the cell's counts up to that cell's scale, which rank-value encoding
ignores. The data are 700 PBMCs from one donor (Zheng et al. 2017) in 8 libraries (the
barcode suffix), with ``bulk_labels`` cell types.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioviz.errors import InputError

#: the shipped model's folder: package data of this package, wherever it is installed
DEMO_DIR = Path(str(resources.files(__package__).joinpath("demo_model")))
#: the name stores record for it (the folder's name when it shipped in bioviz/data)
MODEL_NAME = "geneformer:geneformer_demo"

#: pbmc68k's ``bulk_labels`` grouped into the four types the interpretation bar names
COARSE_TYPES = {"CD19+ B": "B", "CD56+ NK": "NK", "CD14+ Monocyte": "Mono",
                "CD4+/CD45RO+ Memory": "T", "CD8+ Cytotoxic T": "T", "CD4+/CD25 T Reg": "T",
                "CD4+/CD45RA+/CD25- Naive T": "T", "CD8+/CD45RA+ Naive Cytotoxic": "T"}
#: canonical markers of each type that are among pbmc68k_reduced's 765 genes (CD19 is not)
MARKERS = {"B": frozenset({"MS4A1", "CD79A", "CD79B", "BANK1"}),
           "NK": frozenset({"GNLY", "NKG7", "GZMB", "PRF1", "GZMA", "CST7", "FGFBP2"}),
           "Mono": frozenset({"LYZ", "S100A8", "S100A9", "FCN1", "CST3", "FCER1G", "TYROBP"}),
           "T": frozenset({"CD3D", "CD3E", "CD3G", "IL7R", "CD2", "LCK", "CCR7"})}
#: the shipped immune gene set (bioviz.interpret.genesets.immune_gmt) each type should name
PROGRAMMES = {"B": "B_CELL_IDENTITY_BCR", "NK": "CYTOTOXICITY_NK_CD8",
              "Mono": "MONOCYTE_MYELOID_INFLAMMATORY", "T": "T_CELL_IDENTITY"}


def pbmc68k_counts(max_rounding_error: float = 0.45):
    """``pbmc68k_reduced`` (ships with scanpy) with integer counts in ``X`` and obs columns
    ``donor``, ``library`` (barcode suffix), ``bulk_labels``, ``louvain``, ``n_counts``."""
    import anndata as ad
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    logx = src.raw.X.toarray() if sp.issparse(src.raw.X) else np.asarray(src.raw.X)
    lin = np.expm1(logx.astype(np.float64))
    unit = np.array([row[row > 0].min() for row in lin])
    ratio = lin / unit[:, None]
    counts = np.round(ratio)
    err = float(np.abs(ratio - counts).max())
    if err > max_rounding_error:
        raise InputError(f"pbmc68k_reduced: counts cannot be recovered (rounding error {err:.3f} counts)")
    obs = pd.DataFrame(index=src.obs_names.copy())
    obs["donor"] = "zheng2017_donorA"
    obs["library"] = [name.rsplit("-", 1)[-1] for name in src.obs_names]
    for col in ("bulk_labels", "louvain"):
        obs[col] = src.obs[col].astype(str).to_numpy()
    obs["n_counts"] = counts.sum(1)
    var = pd.DataFrame(index=src.raw.var_names.copy())
    out = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)
    out.uns["counts_recovery"] = {"method": "round(expm1(raw.X) / min non-zero expm1 per cell)",
                                  "max_rounding_error_counts": err}
    return out


def demo_adapter(**kwargs):
    """A :class:`~bioviz.adapters.singlecell.GeneformerAdapter` on the shipped
    demo model (gene symbols as identifiers; defaults: donor as subject, library as sample,
    cell rows mean-pooled over gene tokens)."""
    from .geneformer import GeneformerAdapter

    if not (DEMO_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the demo model is missing from {DEMO_DIR}; run experiments/geneformer_demo.py")
    kwargs.setdefault("subject_key", "donor")
    kwargs.setdefault("sample_key", "library")
    # masked-gene training never asks <cls> to summarise the cell; the mean over gene tokens
    # separates cell types better in this small model (kNN accuracy 0.57 vs 0.44 on bulk_labels)
    kwargs.setdefault("pooling", "mean")
    adapter = GeneformerAdapter(DEMO_DIR, **kwargs)
    adapter.model_name = MODEL_NAME
    return adapter
