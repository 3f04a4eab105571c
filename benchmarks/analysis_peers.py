"""The statistics stage against its peers on the same data: row-level one-vs-rest ranking
against scanpy, the per-feature linear model against statsmodels. Imported by
``benchmarks/analysis.py``; each function returns a dict of figures and prints its progress
to stderr.

* ``rank_vs_scanpy``: ``bioviz.analysis.rows.rank_rows`` and
  ``scanpy.tl.rank_genes_groups(method="wilcoxon", n_genes=all, tie_correct=False)`` on one
  AnnData (CSR float32, SAE-like non-negative codes: ``density`` non-zero, exponential values,
  each group with its own 20 marker features that fire more often and stronger in it, so
  p-values span the whole range down to underflow). Each side runs once after a small warm-up call
  (scanpy's numba kernels compile on first use), in the same process, one after the other.
  scanpy also computes means and log fold changes, bioviz means and non-zero fractions.
  ``rank_vs_scanpy_max_rel_p_diff`` is max |p_bioviz - p_scanpy| / max(p_bioviz, p_scanpy)
  over every (group, feature) where either p is above 1e-300; pairs where both are at or
  below 1e-300 (the normal tail underflows to 0 beyond z ~ 38) are equal as far as float64
  can tell and are counted, not compared; a pair with one side underflowed and the other
  above 1e-300 counts as a relative difference of 1. Constant features (NaN in bioviz, p = 1
  in scanpy) are left out and counted (none at the default size).
* ``ols_vs_statsmodels``: ``bioviz.analysis.stats.linear`` over all features (feature ~ 1 +
  y + covariates, one shared QR) against a loop of statsmodels ``OLS(...).fit()`` over
  ``n_sample`` of them (the design built once, outside the loop). The speedup is per feature:
  (statsmodels seconds / n_sample) / (bioviz seconds / n_features). The difference is the
  largest relative difference of y's coefficient, standard error and p over the sampled
  features.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np


def _say(msg: str) -> None:
    print(f"# analysis peers: {msg}", file=sys.stderr, flush=True)


def sae_like_codes(n_rows: int, n_features: int, density: float, n_groups: int, seed: int):
    """(CSR float32 codes, group of each row): non-negative, ``density`` non-zero, with 20
    marker features per group firing more often (3x for ten of them, 9x for the other ten)
    and twice as strongly in that group."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, n_rows)
    nnz = int(n_rows * n_features * density)
    rows = rng.integers(0, n_rows, nnz)
    cols = rng.integers(0, n_features, nnz)
    vals = rng.exponential(1.0, nnz).astype(np.float32)
    markers = rng.permutation(n_features)[:20 * n_groups].reshape(n_groups, 20)
    extra_r, extra_c = [], []
    for g in range(n_groups):
        in_g = np.flatnonzero(groups == g)
        for marker, times in ((markers[g, :10], 2), (markers[g, 10:], 8)):
            k = int(len(in_g) * len(marker) * density * times)
            extra_r.append(rng.choice(in_g, k))
            extra_c.append(rng.choice(marker, k))
    rows = np.concatenate([rows, *extra_r])
    cols = np.concatenate([cols, *extra_c])
    vals = np.concatenate([vals, 2 * rng.exponential(1.0, len(rows) - nnz).astype(np.float32)])
    # duplicates (the same row and feature drawn twice) are summed: still non-negative codes
    X = sp.csr_matrix((vals, (rows, cols)), shape=(n_rows, n_features), dtype=np.float32)
    return X, groups


def _anndata(X, groups):
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame({"group": pd.Categorical([f"g{g}" for g in groups]),
                        # rows of 20 subjects in every group: a row-level label
                        "subject_id": (np.arange(len(groups)) % 20).astype(str)},
                       index=np.arange(len(groups)).astype(str))
    var = pd.DataFrame(index=[f"f{j}" for j in range(X.shape[1])])
    return ad.AnnData(X=X, obs=obs, var=var)


def _scanpy(adata):
    import scanpy as sc

    sc.tl.rank_genes_groups(adata, "group", method="wilcoxon", n_genes=adata.n_vars,
                            tie_correct=False)
    return adata.uns["rank_genes_groups"]


def rank_vs_scanpy(n_rows: int = 100_000, n_features: int = 5_000, density: float = 0.05,
                   n_groups: int = 10, seed: int = 0) -> dict:
    """bioviz ``rank_rows`` against scanpy's Wilcoxon ``rank_genes_groups``: speed and p."""
    import pandas as pd

    from bioviz.analysis.rows import rank_rows

    _say("warm-up (scanpy's numba kernels compile on first use)")
    small = _anndata(*sae_like_codes(2_000, 100, density, 3, seed + 1))
    _scanpy(small)
    rank_rows(small, "group", progress=False)
    _say(f"making {n_rows} x {n_features} codes, density {density}, {n_groups} groups")
    adata = _anndata(*sae_like_codes(n_rows, n_features, density, n_groups, seed))
    _say(f"{adata.X.nnz} non-zeros; bioviz rank_rows")
    t = time.perf_counter()
    ours = rank_rows(adata, "group", progress=False)
    t_bioviz = time.perf_counter() - t
    _say(f"bioviz {t_bioviz:.1f} s; scanpy rank_genes_groups")
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _scanpy(adata)
    t_scanpy = time.perf_counter() - t
    _say(f"scanpy {t_scanpy:.1f} s")
    theirs = pd.concat([pd.DataFrame({"group": g, "feature": ref["names"][g], "p_ref": ref["pvals"][g]})
                        for g in ref["names"].dtype.names])
    both = ours.astype({"group": str}).merge(theirs, on=["group", "feature"], validate="1:1")
    if len(both) != len(ours) or len(both) != len(theirs):
        raise RuntimeError(f"bioviz gives {len(ours)} (group, feature) pairs, scanpy {len(theirs)}")
    constant = both["p"].isna().to_numpy()
    p, p_ref = both["p"].to_numpy()[~constant], both["p_ref"].to_numpy()[~constant]
    top = np.maximum(p, p_ref)
    compared = top > 1e-300
    rel = np.abs(p - p_ref)[compared] / top[compared]
    _say(f"{compared.sum()} p compared, {(~compared).sum()} underflowed in both, "
         f"{constant.sum()} constant features left out; smallest compared p {top[compared].min():.3g}")
    return {"rank_vs_scanpy_speedup": t_scanpy / t_bioviz,
            "rank_vs_scanpy_max_rel_p_diff": float(rel.max()) if len(rel) else float("nan")}


def ols_vs_statsmodels(n_features: int = 20_000, n_subjects: int = 2_000, n_covariates: int = 3,
                       n_sample: int = 200, seed: int = 0) -> dict:
    """bioviz ``linear`` over every feature against statsmodels OLS feature by feature."""
    import statsmodels.api as sm

    from bioviz.analysis.stats import linear

    rng = np.random.default_rng(seed)
    y = rng.normal(size=n_subjects)
    C = rng.normal(size=(n_subjects, n_covariates)) + 0.3 * y[:, None]
    X = rng.normal(size=(n_subjects, n_features)) + np.outer(y, rng.normal(0, 0.1, n_features))
    X[:, ::2] = np.maximum(X[:, ::2], 0)  # half the features with many zeros, like codes
    _say(f"bioviz linear on {n_subjects} subjects x {n_features} features, {n_covariates} covariates")
    linear(X[:, :10], y, C, progress=False)  # warm-up
    t = time.perf_counter()
    res = linear(X, y, C, progress=False)
    t_bioviz = time.perf_counter() - t
    sample = rng.choice(n_features, n_sample, replace=False)
    design = sm.add_constant(np.column_stack([y, C]))
    _say(f"bioviz {t_bioviz:.2f} s; statsmodels OLS on {n_sample} features")
    t = time.perf_counter()
    # statsmodels computes bse and p lazily: read them inside the timed loop
    ref = np.array([[f.params[1], f.bse[1], f.pvalues[1]]
                    for f in (sm.OLS(X[:, j], design).fit() for j in sample)])
    t_sm = time.perf_counter() - t
    mine = np.column_stack([res.extra["coef"][sample], res.extra["se"][sample], res.p[sample]])
    rel = np.abs(mine - ref) / np.abs(ref)
    _say(f"statsmodels {t_sm:.2f} s; max rel diff coef {rel[:, 0].max():.2g}, "
         f"se {rel[:, 1].max():.2g}, p {rel[:, 2].max():.2g}")
    return {"ols_vs_statsmodels_speedup": (t_sm / n_sample) / (t_bioviz / n_features),
            "ols_vs_statsmodels_max_rel_diff": float(rel.max())}


if __name__ == "__main__":
    print(rank_vs_scanpy())
    print(ols_vs_statsmodels())
