"""Single-cell evidence for what a feature is: the genes and cell types behind it.

- :func:`token_genes`: for gene-token rows, the gene tokens that drive each feature.
- :func:`cell_scores`: gene-token rows to one row per cell (via
  :func:`bioviz.analysis.aggregate`).
- :func:`active_cell_de`: genes differentially expressed, on the cohort's own expression data,
  between the cells where a feature fires and the rest (Wilcoxon rank-sum, equal to scanpy's
  ``rank_genes_groups(method="wilcoxon")``), every feature at once.
- :func:`cell_type_composition`: which cell types a feature's firing cells come from.
- :func:`gene_lists` and :func:`gene_scores`: those tables as the inputs of
  :func:`bioviz.interpret.enrichment.overrepresentation` and
  :func:`~bioviz.interpret.enrichment.preranked`.
"""

from __future__ import annotations

import numbers
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from tqdm.auto import tqdm

from ..analysis import aggregate
from ..analysis.multiple import bh_rows
from ..errors import InputError, positive_int

__all__ = ["token_genes", "cell_scores", "active_cell_de", "cell_type_composition",
           "gene_lists", "gene_scores"]

# features handled per block (bounds the dense genes × features working arrays)
_FEATURE_BLOCK = 256


# ------------------------------------------------------------------ checks


def _table(ft, name: str = "ft") -> ad.AnnData:
    if not isinstance(ft, ad.AnnData):
        raise InputError(f"{name} must be a FeatureTable (AnnData of rows × features, e.g. from "
                         f"bioviz.encode), got {type(ft).__name__}")
    if ft.X is None or ft.n_obs == 0 or ft.n_vars == 0:
        raise InputError(f"{name} holds no values (shape {ft.shape}); expected rows × features")
    return ft


def _column(adata: ad.AnnData, key, param: str, name: str = "ft") -> pd.Series:
    if not isinstance(key, str) or key not in adata.obs.columns:
        raise InputError(f"{param}={key!r} is not an obs column of {name}; its columns are "
                         f"{', '.join(map(str, adata.obs.columns)) or '(none)'}")
    values = adata.obs[key]
    missing = int(pd.isna(values).sum())
    if missing:
        raise InputError(f"{name}.obs[{key!r}] ({param}) is missing in {missing} rows; fill or "
                         "drop those rows first")
    return values.astype(str)


def _features(adata: ad.AnnData, features, name: str = "ft") -> np.ndarray:
    """Positions in ``adata.var_names`` of ``features`` (None: all), in the order given."""
    names = pd.Index(adata.var_names.astype(str))
    if features is None:
        return np.arange(len(names))
    if isinstance(features, (str, numbers.Integral)):
        features = [features]
    wanted = [str(f) for f in features]
    if not wanted:
        raise InputError("features is empty; give feature names (var_names) or None for all")
    pos = names.get_indexer(wanted)
    if (pos < 0).any():
        unknown = [w for w, p in zip(wanted, pos) if p < 0]
        raise InputError(f"features {unknown[:5]} are not features of {name} (its var_names look "
                         f"like {names[:5].tolist()}, {len(names)} in all)")
    return pos


def _positive_int(value, name: str, allow_none: bool = False):
    """:func:`~bioviz.errors.positive_int`, or None where None means "all"."""
    return None if value is None and allow_none else positive_int(value, name)


def _finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise InputError(f"{name}={value!r}: expected a finite number")
    return float(value)


def _csc(x) -> sp.csc_matrix:
    """``x`` as float64 CSC without explicit zeros (dense arrays converted)."""
    m = sp.csc_matrix(x, dtype=np.float64)
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def _indicator(codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """Groups × rows 0/1 matrix: row g marks the rows of group g."""
    n = len(codes)
    return sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_groups, n))


def _blocks(n: int, desc: str, progress: bool):
    starts = range(0, n, _FEATURE_BLOCK)
    for s in tqdm(starts, desc=desc, disable=not progress or n <= _FEATURE_BLOCK):
        yield s, min(s + _FEATURE_BLOCK, n)


# ------------------------------------------------------------------ token genes


def token_genes(ft, features=None, *, gene_key: str = "gene", n: int | None = 20,
                min_tokens: int = 5, threshold: float = 0.0,
                progress: bool = True) -> pd.DataFrame:
    """Per feature, the gene tokens that drive it (gene-token rows).

    Parameters
    ----------
    ft : anndata.AnnData
        A FeatureTable whose rows are gene tokens in cells, with the gene in ``obs[gene_key]``.
    features : list of str, optional
        Feature names (``ft.var_names``); all features when None.
    gene_key : str, default "gene"
        The obs column naming each token's gene (``"gene_id"`` for the model's vocabulary key).
    n : int or None, default 20
        Genes kept per feature (None: every gene that qualifies).
    min_tokens : int, default 5
        Genes with fewer tokens in the table are left out (their means are noise).
    threshold : float, default 0.0
        A feature fires on a token when its activation is above this.
    progress : bool, default True
        Show a progress bar over blocks of features.

    Returns
    -------
    pandas.DataFrame
        ``feature, rank, gene, n_tokens, mean_activation, fire_fraction, specificity``; per
        feature (in the order given) the top ``n`` genes by ``mean_activation`` (the mean over
        the gene's tokens, zeros included), ties by gene name; ``rank`` from 1.
        ``fire_fraction``: the share of the gene's tokens where the feature fires;
        ``specificity``: ``mean_activation`` ÷ the feature's mean over all tokens. Genes whose
        mean activation is 0 are left out, so a feature that never fires has no rows.
    """
    ft = _table(ft)
    genes = _column(ft, gene_key, "gene_key")
    cols = _features(ft, features)
    n = _positive_int(n, "n", allow_none=True)
    min_tokens = _positive_int(min_tokens, "min_tokens")
    threshold = _finite(threshold, "threshold")

    codes, names = pd.factorize(genes, sort=True)
    names = np.asarray(names, dtype=object)
    counts = np.bincount(codes, minlength=len(names))
    kept = np.flatnonzero(counts >= min_tokens)
    if not len(kept):
        raise InputError(f"no gene has min_tokens={min_tokens} tokens in ft (most: "
                         f"{counts.max()}); lower min_tokens")
    to_genes = _indicator(codes, len(names))[kept]
    X = sp.csc_matrix(ft.X) if sp.issparse(ft.X) else np.asarray(ft.X)
    parts = []
    for f0, f1 in _blocks(len(cols), "token genes", progress):
        block = _csc(X[:, cols[f0:f1]])
        sums = np.asarray((to_genes @ block).todense())  # kept genes × features
        fires = block.copy()
        fires.data = (fires.data > threshold).astype(np.float64)
        fires.eliminate_zeros()
        fired = np.asarray((to_genes @ fires).todense())
        if threshold < 0:  # implicit zeros fire too
            fired += counts[kept, None] - np.asarray((to_genes @ (block != 0)).todense())
        mean = sums / counts[kept, None]
        overall = np.asarray(block.sum(axis=0)).ravel() / ft.n_obs
        with np.errstate(divide="ignore", invalid="ignore"):
            spec = np.where(overall > 0, mean / overall, np.nan)
        parts.append(_top(cols[f0:f1], ft.var_names, names[kept], counts[kept], mean,
                          fired / counts[kept, None], spec, n))
    return pd.concat(parts, ignore_index=True)


def _top(cols, var_names, genes, counts, mean, fire, spec, n) -> pd.DataFrame:
    """Tidy top-``n`` genes per feature column of the genes × features arrays."""
    rows = []
    name_rank = np.argsort(np.argsort(genes.astype(str)))
    for j, c in enumerate(cols):
        ok = np.flatnonzero(mean[:, j] > 0)
        order = ok[np.lexsort((name_rank[ok], -mean[ok, j]))][:n]
        rows.append(pd.DataFrame({
            "feature": str(var_names[c]), "rank": np.arange(1, len(order) + 1),
            "gene": genes[order], "n_tokens": counts[order].astype(np.int64),
            "mean_activation": mean[order, j], "fire_fraction": fire[order, j],
            "specificity": spec[order, j]}))
    return pd.concat(rows, ignore_index=True)


# ------------------------------------------------------------------ cell scores


def cell_scores(ft, *, cell_key: str = "cell_id", stat: str = "max",
                progress: bool = True) -> ad.AnnData:
    """Gene-token rows to one row per cell: each feature's max (or mean) over the cell's tokens.

    Parameters
    ----------
    ft : anndata.AnnData
        A FeatureTable of gene-token rows with the cell in ``obs[cell_key]``.
    cell_key : str, default "cell_id"
        The obs column naming each token's cell.
    stat : {"max", "mean", "frac"}, default "max"
        Per cell and feature: the largest activation, the mean over the cell's tokens, or the
        share of its tokens where the feature fires (> 0).
    progress : bool, default True
        Show a progress bar over rows.

    Returns
    -------
    anndata.AnnData
        Cells × features (``obs_names``: the cell ids; ``obs``: the columns constant within
        each cell, e.g. ``bulk_labels``), as :func:`bioviz.analysis.aggregate` returns.
    """
    ft = _table(ft)
    _column(ft, cell_key, "cell_key")
    if stat not in ("max", "mean", "frac"):
        raise InputError(f"stat={stat!r}: expected 'max', 'mean' or 'frac'")
    return aggregate(ft, by=cell_key, stats=(stat,), progress=progress)


def _cells(table, cell_key: str, progress: bool) -> ad.AnnData:
    """One row per cell: ``table`` itself, or its gene-token rows aggregated by max."""
    table = _table(table, "the feature table")
    if cell_key in table.obs.columns and not table.obs[cell_key].is_unique:
        return cell_scores(table, cell_key=cell_key, stat="max", progress=progress)
    return table


# ------------------------------------------------------------------ composition


def cell_type_composition(table, features=None, *, groupby: str = "bulk_labels",
                          threshold: float = 0.0, cell_key: str = "cell_id",
                          progress: bool = True) -> pd.DataFrame:
    """Which groups (cell types) the cells where a feature fires come from.

    Parameters
    ----------
    table : anndata.AnnData
        Cells × features (e.g. :func:`cell_scores`), or a FeatureTable of gene-token rows
        (aggregated to cells by max first, when ``obs[cell_key]`` repeats).
    features : list of str, optional
        Feature names; all when None.
    groupby : str, default "bulk_labels"
        The obs column of cell types (constant within a cell).
    threshold : float, default 0.0
        A feature fires in a cell when its score is above this.
    cell_key : str, default "cell_id"
        The cell column of gene-token rows.
    progress : bool, default True
        Show a progress bar while aggregating tokens.

    Returns
    -------
    pandas.DataFrame
        One row per feature × group, features in the order given and groups by descending
        ``enrichment``: ``feature, group, n_cells, n_firing, share_of_firing_cells`` (the
        group's share of the feature's firing cells), ``share_in_cohort`` (the group's share of
        all cells), ``enrichment`` (the ratio of the two; NaN when the feature never fires),
        ``fire_fraction`` (share of the group's cells that fire), ``mean_activation`` (mean
        score over the group's cells), ``mean_elsewhere`` (over the other cells) and
        ``activation_ratio`` (their ratio: how much stronger, not only how often, the feature
        is in the group; inf when it is 0 elsewhere only, NaN when 0 everywhere),
        ``mean_next_group`` (the highest mean over any other group) and ``specificity`` (mean
        over it: above 1 only in the feature's strongest group; the measure to pick the feature
        most specific to a group, which ``activation_ratio`` against the pooled rest is not).
    """
    cells = _cells(table, cell_key, progress)
    labels = _column(cells, groupby, "groupby", "the cell table")
    cols = _features(cells, features, "the cell table")
    threshold = _finite(threshold, "threshold")
    codes, groups = pd.factorize(labels, sort=True)
    onehot = _indicator(codes, len(groups))
    n_cells = np.bincount(codes, minlength=len(groups)).astype(np.float64)
    x = cells.X[:, cols]
    x = x.toarray() if sp.issparse(x) else np.asarray(x, dtype=np.float64)
    fired = onehot @ (x > threshold).astype(np.float64)  # groups × features
    sums = onehot @ x
    mean = sums / n_cells[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        elsewhere = (sums.sum(axis=0, keepdims=True) - sums) / (cells.n_obs - n_cells[:, None])
        ratio = np.where(elsewhere > 0, mean / elsewhere, np.where(mean > 0, np.inf, np.nan))
    # the closest other group: a T/NK cytotoxic feature is strong in NK against "the rest" (mostly
    # B cells and monocytes) but not against T cells, and is not specific to NK
    if n_cells.size > 1:
        order = np.sort(mean, axis=0)
        top, second = order[-1:], order[-2:-1]
        nearest = np.where(mean >= top, second, top)
    else:
        nearest = np.full_like(mean, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        specificity = np.where(nearest > 0, mean / nearest, np.where(mean > 0, np.inf, np.nan))
    total = fired.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share_firing = np.where(total > 0, fired / total, np.nan)
    share_cohort = n_cells / cells.n_obs
    feats = np.asarray(cells.var_names.astype(str))[cols]
    n_g, n_f = len(groups), len(cols)
    out = pd.DataFrame({
        "feature": np.tile(feats, n_g), "group": np.repeat(np.asarray(groups, object), n_f),
        "n_cells": np.repeat(n_cells.astype(np.int64), n_f),
        "n_firing": fired.ravel().astype(np.int64), "share_of_firing_cells": share_firing.ravel(),
        "share_in_cohort": np.repeat(share_cohort, n_f),
        "enrichment": (share_firing / share_cohort[:, None]).ravel(),
        "fire_fraction": (fired / n_cells[:, None]).ravel(), "mean_activation": mean.ravel(),
        "mean_elsewhere": elsewhere.ravel(), "activation_ratio": ratio.ravel(),
        "mean_next_group": nearest.ravel(), "specificity": specificity.ravel()})
    out["_f"] = np.tile(np.arange(n_f), n_g)
    out = out.sort_values(["_f", "enrichment", "group"], ascending=[True, False, True],
                          kind="stable", na_position="last")
    return out.drop(columns="_f").reset_index(drop=True)


# ------------------------------------------------------------------ differential expression


def _ranks(X: sp.csc_matrix):
    """Mid-ranks of each column of ``X`` (cells × genes) over all its cells, kept sparse.

    Returns ``S``, ``base`` and ``ties``: the rank of cell i in gene g is
    ``base[g] + S[i, g]`` (``base``: the rank shared by the zeros; ``S`` has ``X``'s pattern),
    and ``ties[g]`` is ``sum(t**3 - t)`` over the tie groups of gene g, zeros included.
    """
    n_cells, n_genes = X.shape
    nnz = np.diff(X.indptr)
    col = np.repeat(np.arange(n_genes), nnz)
    order = np.lexsort((X.data, col))
    v, c = X.data[order], col[order]
    new = np.ones(len(v), dtype=bool)
    new[1:] = (v[1:] != v[:-1]) | (c[1:] != c[:-1])
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(v)))
    # 1-based mid-rank among the column's non-zeros, shared by each tie group
    first = starts - X.indptr[c[starts]]
    mid = np.repeat(first + (sizes + 1) / 2.0, sizes)
    zeros = n_cells - nnz
    negative = np.bincount(col, weights=X.data < 0, minlength=n_genes)
    base = negative + (zeros + 1) / 2.0
    rank = mid + np.where(v > 0, zeros[c], 0)  # positives rank above the zeros
    data = np.empty(len(v))
    data[order] = rank - base[c]
    S = sp.csc_matrix((data, X.indices, X.indptr), shape=X.shape)
    ties = np.bincount(c[starts], weights=sizes ** 3.0 - sizes, minlength=n_genes)
    ties += zeros ** 3.0 - zeros
    return S, base, ties


def _match(adata: ad.AnnData, cells: ad.AnnData):
    """Positions of the shared cells in each, by obs_names, and the unmatched counts."""
    a = pd.Index(adata.obs_names.astype(str))
    b = pd.Index(cells.obs_names.astype(str))
    for idx, what in ((a, "adata"), (b, "cell_features")):
        if not idx.is_unique:
            raise InputError(f"{what}.obs_names repeat (e.g. {idx[idx.duplicated()][:3].tolist()})"
                             "; cells are matched by obs_names, which must be unique")
    pos = b.get_indexer(a)
    ia = np.flatnonzero(pos >= 0)
    report = {"n_matched": int(len(ia)), "n_unmatched_adata": int(len(a) - len(ia)),
              "n_unmatched_cell_features": int(len(b) - len(ia))}
    if not len(ia):
        raise InputError(f"no cell of cell_features matches adata by obs_names: adata's look like "
                         f"{a[:3].tolist()}, cell_features' like {b[:3].tolist()}; aggregate the "
                         "features by the cell column that holds adata.obs_names")
    if report["n_unmatched_adata"] or report["n_unmatched_cell_features"]:
        warnings.warn(f"{report['n_unmatched_adata']} of {len(a)} cells of adata and "
                      f"{report['n_unmatched_cell_features']} of {len(b)} of cell_features have "
                      "no match by obs_names and are left out", stacklevel=3)
    return ia, pos[ia], report


def active_cell_de(adata, cell_features, features=None, *, threshold: float = 0.0,
                   active_quantile: float | None = None, min_cells: int = 10,
                   method: str = "wilcoxon", n: int | None = 50, layer: str | None = None, tie_correct: bool = False,
                   progress: bool = True) -> pd.DataFrame:
    """Genes up in the cells where a feature fires, on the cohort's own expression data.

    For each feature, the cells whose score is above ``threshold`` ("active") are compared with
    the other matched cells, gene by gene, with the Wilcoxon rank-sum test in its normal
    approximation, as ``scanpy.tl.rank_genes_groups(method="wilcoxon")`` does for a group
    against the rest (scores, p, BH q and log fold changes equal scanpy's). Every feature at
    once: ranks are computed once per gene, kept sparse (zeros share one rank).

    Parameters
    ----------
    adata : anndata.AnnData
        Cells × genes expression, log-normalised (``log1p``, natural log), in ``X`` or
        ``layers[layer]``; gene symbols as ``var_names``.
    cell_features : anndata.AnnData
        Cells × features (e.g. :func:`cell_scores`); cells matched to ``adata`` by obs_names.
    features : list of str, optional
        Feature names; all when None.
    threshold : float, default 0.0
        A feature is active in a cell when its score is above this.
    active_quantile : float, optional
        Instead of ``threshold``: a feature is active in the cells whose score is above this
        quantile (in [0, 1)) of its scores over the matched cells, e.g. 0.8 for its top 20%.
        Token features aggregated to cells fire in most cells at some level; their strongest
        cells separate cell programmes much better.
    min_cells : int, default 10
        Features with fewer active or inactive matched cells are skipped (with a warning).
    method : {"wilcoxon"}
        The test.
    n : int or None, default 50
        Genes kept per feature, by descending score (None: all genes).
    layer : str, optional
        The layer of ``adata`` to use instead of ``X``.
    tie_correct : bool, default False
        Correct the variance for ties (scanpy's ``tie_correct``; its default is False).
    progress : bool, default True
        Show a progress bar over blocks of features.

    Returns
    -------
    pandas.DataFrame
        ``feature, rank, gene, score, logfoldchange, p, q, pct_active, pct_inactive``: per
        feature the top ``n`` genes by ``score`` (the rank-sum z; positive: higher in active
        cells). ``p`` two-sided; ``q`` BH across the feature's genes; ``logfoldchange``
        ``log2((expm1(mean active) + 1e-9) / (expm1(mean inactive) + 1e-9))``; ``pct_*`` the
        share of cells where the gene is non-zero. Genes constant over the matched cells get
        score 0 and NaN ``p``/``q`` (scanpy gives p = 1). ``.attrs``: ``matching`` (matched and
        unmatched cell counts), ``n_active`` (per feature) and ``skipped`` (features with too
        few active or inactive cells).
    """
    if not isinstance(adata, ad.AnnData):
        raise InputError(f"adata must be the cohort's expression AnnData (cells × genes), got "
                         f"{type(adata).__name__}")
    cells = _table(cell_features, "cell_features")
    cols = _features(cells, features, "cell_features")
    threshold = _finite(threshold, "threshold")
    min_cells = _positive_int(min_cells, "min_cells")
    n = _positive_int(n, "n", allow_none=True)
    if method != "wilcoxon":
        raise InputError(f"method={method!r}: only 'wilcoxon' is available")
    if layer is not None and layer not in adata.layers:
        raise InputError(f"layer={layer!r} is not a layer of adata; it has "
                         f"{', '.join(adata.layers.keys()) or '(none)'}")
    ia, ic, report = _match(adata, cells)
    X = adata.X if layer is None else adata.layers[layer]
    X = _csc(X[ia])
    if not np.isfinite(X.data).all():
        raise InputError("adata holds NaN or inf expression values; expected log-normalised data")
    score = cells.X[ic][:, cols]
    score = score.toarray() if sp.issparse(score) else np.asarray(score, dtype=np.float64)
    if active_quantile is not None:
        q = _finite(active_quantile, "active_quantile")
        if not 0 <= q < 1:
            raise InputError(f"active_quantile={active_quantile!r}: expected a number in [0, 1)")
        threshold = np.quantile(score, q, axis=0)[None, :]
    active = score > threshold
    n_cells = X.shape[0]
    n_active = active.sum(axis=0)
    feats = np.asarray(cells.var_names.astype(str))[cols]
    ok = (n_active >= min_cells) & (n_cells - n_active >= min_cells)
    skipped = feats[~ok].tolist()
    if skipped:
        warnings.warn(f"{len(skipped)} of {len(feats)} features have fewer than min_cells="
                      f"{min_cells} active or inactive cells and are skipped (e.g. "
                      f"{skipped[:5]})", stacklevel=2)

    S, base, ties = _ranks(X)
    St, Xt, NZt = S.T.tocsr(), X.T.tocsr(), (X != 0).T.astype(np.float64).tocsr()
    totals = np.asarray(X.sum(axis=0)).ravel()
    nz_totals = np.asarray((X != 0).sum(axis=0)).ravel()
    genes = np.asarray(adata.var_names.astype(str), dtype=object)
    use = np.flatnonzero(ok)
    parts = []
    for f0, f1 in _blocks(len(use), "active-cell DE", progress):
        j = use[f0:f1]
        a = sp.csc_matrix(active[:, j].astype(np.float64))  # cells × features
        na = n_active[j].astype(np.float64)[None, :]
        nr = n_cells - na
        rank_sum = base[:, None] * na + np.asarray((St @ a).todense())  # genes × features
        coef = 1.0 - ties[:, None] / (n_cells ** 3.0 - n_cells) if tie_correct else 1.0
        sd = np.sqrt(coef * na * nr * (n_cells + 1) / 12.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (rank_sum - na * (n_cells + 1) / 2.0) / sd
        constant = ties == n_cells ** 3.0 - n_cells  # one tie group: no information
        z = np.where(np.isfinite(z), z, 0.0)
        p = np.where(constant[:, None], np.nan, 2 * stats.norm.sf(np.abs(z)))
        q = bh_rows(p.T).T
        sums = np.asarray((Xt @ a).todense())
        mean_a, mean_r = sums / na, (totals[:, None] - sums) / nr
        lfc = np.log2((np.expm1(mean_a) + 1e-9) / (np.expm1(mean_r) + 1e-9))
        nz = np.asarray((NZt @ a).todense())
        pct_a, pct_r = nz / na, (nz_totals[:, None] - nz) / nr
        for k in range(len(j)):
            order = np.argsort(-z[:, k], kind="stable")[:n]
            parts.append(pd.DataFrame({
                "feature": feats[j[k]], "rank": np.arange(1, len(order) + 1),
                "gene": genes[order], "score": z[order, k], "logfoldchange": lfc[order, k],
                "p": p[order, k], "q": q[order, k], "pct_active": pct_a[order, k],
                "pct_inactive": pct_r[order, k]}))
    columns = ["feature", "rank", "gene", "score", "logfoldchange", "p", "q", "pct_active",
               "pct_inactive"]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    out.attrs["matching"] = report
    out.attrs["n_active"] = dict(zip(feats.tolist(), n_active.astype(int).tolist()))
    out.attrs["skipped"] = skipped
    return out


# ------------------------------------------------------------------ into enrichment


def _tidy_genes(table, name: str = "table") -> pd.DataFrame:
    need = {"feature", "rank", "gene"}
    if not isinstance(table, pd.DataFrame) or not need <= set(table.columns):
        cols = list(table.columns) if isinstance(table, pd.DataFrame) else type(table).__name__
        raise InputError(f"{name} must be a table from token_genes or active_cell_de (columns "
                         f"feature, rank, gene, ...), got {cols}")
    return table


def gene_lists(table, n: int | None = 20, *, max_q: float | None = None) -> dict[str, list[str]]:
    """Each feature's top genes, as :func:`~bioviz.interpret.enrichment.overrepresentation`
    takes them.

    Parameters
    ----------
    table : pandas.DataFrame
        A :func:`token_genes` or :func:`active_cell_de` table.
    n : int or None, default 20
        Genes per feature (lowest ``rank`` first; None: all in the table).
    max_q : float, optional
        Keep only genes with ``q`` at most this (tables with a ``q`` column, e.g. from
        :func:`active_cell_de`).

    Returns
    -------
    dict of str to list of str
        Feature → its genes in rank order; features in table order (a feature left with no
        gene maps to an empty list).
    """
    table = _tidy_genes(table)
    n = _positive_int(n, "n", allow_none=True)
    keep = np.ones(len(table), dtype=bool)
    if max_q is not None:
        if "q" not in table.columns:
            raise InputError("max_q needs a table with a q column (from active_cell_de)")
        keep = (table["q"] <= _finite(max_q, "max_q")).to_numpy()
    out: dict[str, list[str]] = {f: [] for f in pd.unique(table["feature"].astype(str))}
    picked = table[keep].sort_values(["rank"], kind="stable")
    for f, genes in picked.groupby(picked["feature"].astype(str), sort=False)["gene"]:
        out[f] = genes.astype(str).tolist()[:n]
    return out


def gene_scores(table, value: str | None = None, *, universe=None,
                fill: float = 0.0) -> pd.DataFrame:
    """A score per gene per feature, as :func:`~bioviz.interpret.enrichment.preranked` takes it.

    Parameters
    ----------
    table : pandas.DataFrame
        A :func:`token_genes` or :func:`active_cell_de` table; for a full ranking make it with
        ``n=None``.
    value : str, optional
        The column scored: default ``"score"`` when present (DE), else ``"mean_activation"``.
    universe : iterable of str, optional
        Every gene to rank (e.g. ``adata.var_names``); genes absent from the table for a
        feature get ``fill``. Default: the genes in the table.
    fill : float, default 0.0
        The score of a gene a feature's rows do not list.

    Returns
    -------
    pandas.DataFrame
        Genes (index, unique) × features (columns, in table order), float64, finite.
    """
    table = _tidy_genes(table)
    if value is None:
        value = "score" if "score" in table.columns else "mean_activation"
    if value not in table.columns:
        raise InputError(f"value={value!r} is not a column of the table; it has "
                         f"{', '.join(map(str, table.columns))}")
    fill = _finite(fill, "fill")
    wide = table.pivot_table(index="gene", columns="feature", values=value, aggfunc="first",
                             sort=False)
    wide = wide.reindex(columns=pd.unique(table["feature"]))
    if universe is not None:
        universe = pd.Index([str(g) for g in universe]).unique()
        extra = wide.index.difference(universe)
        if len(extra):
            raise InputError(f"{len(extra)} genes of the table are not in universe (e.g. "
                             f"{extra[:3].tolist()}); the universe must hold every gene")
        wide = wide.reindex(universe)
    wide = wide.astype(np.float64).fillna(fill)
    if not np.isfinite(wide.to_numpy()).all():
        raise InputError(f"column {value!r} holds NaN or inf values; pick a finite score")
    wide.index.name, wide.columns.name = "gene", None
    return wide
