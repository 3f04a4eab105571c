"""Row-level exploration: which features mark a group of rows (a cell type, a tissue region)
against all other rows, the Wilcoxon rank-sum test of ``scanpy.tl.rank_genes_groups``.

Rows of one subject are not independent, so these p-values rank features within a dataset;
a claim about patients is made at the subject level (:func:`bioviz.associate`). A label that
is constant within every subject (a diagnosis) is refused here unless asked for, and then
marked as pseudo-replicated evidence.

The test runs on the sparse codes as they are: zeros are one tie whose average rank is known,
so the rank sums follow from the non-zero entries and the zero counts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import norm
from tqdm.auto import tqdm

from ..errors import InputError
from .multiple import bh

__all__ = ["rank_rows"]

#: non-zero entries ranked per block of features: bounds the sort's memory (~150 MiB)
_BLOCK_NNZ = 1 << 22
COLUMNS = ["group", "feature", "score", "auroc", "p", "q", "mean_in", "mean_out", "frac_in",
           "frac_out", "n_in", "n_out", "evidence"]


def rank_rows(table, groupby: str, *, subject_key: str = "subject_id",
              pseudo_replicated: bool = False, tie_correct: bool = False,
              progress: bool = True) -> pd.DataFrame:
    """One-vs-rest Wilcoxon rank-sum test of every feature for every group of rows.

    The same test as ``scanpy.tl.rank_genes_groups(table, groupby, method="wilcoxon")``
    (normal approximation, no continuity correction): equal ``score`` (z) and ``p``.

    Parameters
    ----------
    table : anndata.AnnData or path of an .h5ad
        A FeatureTable: rows in ``obs`` with the columns ``groupby`` and ``subject_key``,
        ``X`` the codes (sparse or dense), ``var_names`` the features.
    groupby : str
        The obs column whose groups are each tested against all other rows.
    subject_key : str
        The obs column of subject ids, to detect a subject-level label.
    pseudo_replicated : bool
        Test a label that is constant within every subject anyway; the output is then marked
        ``evidence = "row-level (pseudo-replicated)"`` and ``attrs["pseudo_replicated"]``.
    tie_correct : bool
        Correct the variance for ties (scanpy's ``tie_correct``). Without it the mostly-zero
        codes make the test conservative.
    progress : bool
        Show a progress bar over features.

    Returns
    -------
    pandas.DataFrame
        One row per (group, feature), sorted by group then score descending, with columns
        ``group, feature, score`` (z), ``auroc`` (above 0.5: higher in the group), ``p``,
        ``q`` (Benjamini–Hochberg within the group), ``mean_in, mean_out, frac_in, frac_out``
        (share of rows where the feature is non-zero), ``n_in, n_out, evidence``. Constant
        features get NaN score and p.

    Raises
    ------
    InputError
        Missing columns, missing values, fewer than two groups, or a subject-level label
        without ``pseudo_replicated=True``.

    Warns
    -----
    UserWarning
        Groups with fewer than 2 rows are not tested (their rows stay in the others' rest).
    """
    if isinstance(table, (str, Path)):
        table = ad.read_h5ad(table)
    obs = table.obs
    labels = _column(obs, groupby, "groupby")
    subjects = _column(obs, subject_key, "subject_key")
    if isinstance(labels.dtype, pd.CategoricalDtype):
        labels = labels.cat.remove_unused_categories()
        codes, names = labels.cat.codes.to_numpy(), list(labels.cat.categories)
    else:
        codes, names = pd.factorize(labels, sort=True)
        names = list(names)
    if len(names) < 2:
        raise InputError(f"obs[{groupby!r}] has {len(names)} group; one-vs-rest needs at least 2")
    subject_level = _subject_level(subjects.to_numpy(), codes)
    if subject_level and not pseudo_replicated:
        raise InputError(
            f"obs[{groupby!r}] is constant within every subject (obs[{subject_key!r}]): it is a "
            "subject-level label (like a diagnosis), not a row-level one (like a cell type). "
            "Row-level p-values would treat the rows of one subject as independent samples, "
            "which is pseudo-replication (Squair et al. 2021) and makes them far too small. "
            "Test the label at the subject level with bioviz.associate; or pass "
            "pseudo_replicated=True to rank rows anyway, marked as pseudo-replicated evidence.")
    sizes = np.bincount(codes, minlength=len(names))
    small = [names[g] for g in np.flatnonzero(sizes < 2)]
    if small:
        warnings.warn(f"groups {small} of obs[{groupby!r}] have fewer than 2 rows and are not "
                      "tested (their rows still count in the other groups' rest)", stacklevel=2)
    X = _codes(table.X)
    n = X.shape[0]
    rank_sum, nnz_in, sum_in, ties, const = _rank_sums(X, codes, len(names), progress)
    n_in = sizes[:, None].astype(np.float64)
    n_out = n - n_in
    var = n_in * n_out * (n + 1) / 12.0
    if tie_correct:
        var = var * (1 - ties / (n ** 3 - n))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (rank_sum - n_in * (n + 1) / 2.0) / np.sqrt(var)
        auroc = (rank_sum - n_in * (n_in + 1) / 2.0) / (n_in * n_out)
    score[:, const] = np.nan
    p = 2 * norm.sf(np.abs(score))
    tested = np.flatnonzero(sizes >= 2)
    total, fired = sum_in.sum(axis=0), nnz_in.sum(axis=0)
    evidence = "row-level (pseudo-replicated)" if subject_level else "row-level"
    parts = []
    for g in tested:
        order = np.argsort(-score[g], kind="stable")  # NaN last
        parts.append(pd.DataFrame({
            "group": names[g], "feature": np.asarray(table.var_names)[order],
            "score": score[g, order], "auroc": auroc[g, order], "p": p[g, order],
            "q": bh(p[g])[order],
            "mean_in": sum_in[g, order] / n_in[g], "mean_out": (total - sum_in[g])[order] / n_out[g],
            "frac_in": nnz_in[g, order] / n_in[g], "frac_out": (fired - nnz_in[g])[order] / n_out[g],
            "n_in": int(n_in[g, 0]), "n_out": int(n_out[g, 0]), "evidence": evidence}))
    df = pd.concat(parts, ignore_index=True)[COLUMNS]
    df["group"] = pd.Categorical(df["group"], categories=[names[g] for g in tested])
    df.attrs["pseudo_replicated"] = bool(subject_level)
    return df


def _column(obs: pd.DataFrame, key: str, param: str) -> pd.Series:
    if key not in obs.columns:
        raise InputError(f"{param}={key!r} is not a column of the table's obs; available: "
                         f"{list(obs.columns)}")
    col = obs[key]
    if col.isna().any():
        raise InputError(f"obs[{key!r}] ({param}) is missing for {int(col.isna().sum())} rows; "
                         "fill it or drop those rows (table[table.obs[key].notna()])")
    return col


def _subject_level(subjects: np.ndarray, codes: np.ndarray) -> bool:
    """True when every subject's rows share one group and some subject has several rows
    (with one row per subject, rows are subjects and nothing is pseudo-replicated)."""
    s = pd.factorize(subjects)[0]
    n_subjects = s.max() + 1
    pairs = np.unique(s.astype(np.int64) * (codes.max() + 1) + codes)
    return len(pairs) == n_subjects and n_subjects < len(s)


def _codes(X) -> sp.csc_matrix:
    try:
        X = X.tocsc() if sp.issparse(X) else sp.csc_matrix(np.asarray(X))
    except (TypeError, ValueError) as e:
        raise InputError(f"the table's X must be a numeric matrix (sparse or dense): {e}") from None
    if X.dtype.kind not in "biuf":
        raise InputError(f"the table's X must be numeric, got dtype {X.dtype}")
    if not np.isfinite(X.data).all():
        raise InputError(f"the table's X has {int((~np.isfinite(X.data)).sum())} NaN or "
                         "infinite values; a rank test cannot order them")
    return X


def _sort_order(col: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The order sorting entries by (column, value)."""
    d32 = data if data.dtype == np.float32 else data.astype(np.float32)
    if d32 is not data and not np.array_equal(d32, data):  # beyond float32: the slow way
        return np.lexsort((data, col))
    u = d32.view(np.uint32)
    # IEEE-754 bits as unsigned integers in the floats' order: flip every bit of a negative,
    # only the sign bit of a positive; the column goes in the high 32 bits
    bits = u ^ np.where(u >> 31, np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    return np.argsort((col.astype(np.uint64) << np.uint64(32)) | bits, kind="stable")


def _feature_blocks(indptr: np.ndarray, progress: bool):
    m = len(indptr) - 1
    bar = tqdm(total=m, desc="rank_rows", unit="feature", disable=not progress)
    a = 0
    while a < m:
        b = int(np.searchsorted(indptr, indptr[a] + _BLOCK_NNZ, side="right")) - 1
        b = min(max(b, a + 1), m)
        yield a, b
        bar.update(b - a)
        a = b
    bar.close()


def _rank_sums(X: sp.csc_matrix, codes: np.ndarray, k: int, progress: bool):
    """Per group and feature: the rank sum of the group's rows among all rows, its non-zero
    count and value sum; per feature: the tie term sum(t^3 - t) and whether it is constant."""
    n, m = X.shape
    sizes = np.bincount(codes, minlength=k)[:, None]
    rank_sum, nnz_in, sum_in = np.zeros((3, k, m))
    ties, const = np.zeros(m), np.zeros(m, dtype=bool)
    for a, b in _feature_blocks(X.indptr, progress):
        mb = b - a
        lo, hi = X.indptr[a], X.indptr[b]
        raw, rows = X.data[lo:hi], X.indices[lo:hi]
        col = np.repeat(np.arange(mb), np.diff(X.indptr[a:b + 1]))
        stored_zero = raw == 0  # explicit zeros belong to the zero tie
        if stored_zero.any():
            raw, rows, col = raw[~stored_zero], rows[~stored_zero], col[~stored_zero]
        data = raw.astype(np.float64)
        nnz = np.bincount(col, minlength=mb)
        zeros = n - nnz
        neg = np.bincount(col[data < 0], minlength=mb)
        order = _sort_order(col, raw)
        # entries are in column order already, so the sorted ones keep their columns
        new = np.ones(len(order), dtype=bool)
        key = data[order]
        new[1:] = (key[1:] != key[:-1]) | (col[1:] != col[:-1])
        starts = np.flatnonzero(new)
        counts = np.diff(np.append(starts, len(order)))
        first = np.concatenate([[0], np.cumsum(nnz)[:-1]])  # each column's first entry
        # average rank among the column's non-zeros, then shifted past the zero tie if positive
        avg = starts - first[col[starts]] + (counts + 1) / 2.0
        ranks = np.empty(len(order))
        ranks[order] = np.repeat(avg, counts) + np.where(key > 0, zeros[col], 0)
        cell = codes[rows].astype(np.int64) * mb + col
        nz_sum = np.bincount(cell, weights=ranks, minlength=k * mb).reshape(k, mb)
        nnz_in[:, a:b] = np.bincount(cell, minlength=k * mb).reshape(k, mb)
        sum_in[:, a:b] = np.bincount(cell, weights=data, minlength=k * mb).reshape(k, mb)
        zero_rank = neg + (zeros + 1) / 2.0
        rank_sum[:, a:b] = nz_sum + (sizes - nnz_in[:, a:b]) * zero_rank
        c = counts.astype(np.float64)
        z = zeros.astype(np.float64)
        ties[a:b] = np.bincount(col[starts], weights=c ** 3 - c, minlength=mb) + z ** 3 - z
        distinct = np.bincount(col[starts], minlength=mb) + (zeros > 0)
        const[a:b] = distinct < 2
    return rank_sum, nnz_in, sum_in, ties, const
