"""Which gene programmes a feature's genes point to, for many features at once.

- :func:`overrepresentation`: a list of genes per feature (e.g. its top-weighted genes)
  against each gene set, one-sided hypergeometric test (= Fisher's exact, "greater").
- :func:`preranked`: a score per gene per feature (e.g. decoder weights mapped to genes),
  GSEA preranked enrichment score (Subramanian et al. 2005, PNAS 102:15545; weight 1) with a
  gene-set permutation null.

Both restrict the sets to the universe first (:func:`~bioviz.interpret.genesets.check_universe`,
which warns about unknown genes), and give BH q-values per feature across sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import sparse, stats
from tqdm.auto import tqdm

from ..analysis.multiple import bh_rows
from ..errors import InputError, positive_int
from .genesets import _universe, check_universe

__all__ = ["overrepresentation", "preranked"]

# elements per working array of the permutation null (16 MB of float64)
_BLOCK = 2_000_000


def _sets_in(sets, universe, min_size: int):
    kept, report = check_universe(sets, universe, min_size=min_size)
    if not kept:
        raise InputError(f"no gene set keeps min_size={min_size} genes in the universe (largest: "
                         f"{int(report['n_in_universe'].max())} genes); check that the sets and "
                         "the data use the same species and identifiers (symbols vs Ensembl IDs)")
    return kept, report


def _tidy(features, set_names, columns: dict, sort_by: list, ascending: list) -> pd.DataFrame:
    """Long table feature × set, features in input order, best set first within each."""
    n_f, n_s = len(features), len(set_names)
    out = pd.DataFrame({"feature": np.repeat(np.asarray(features, dtype=object), n_s),
                        "set": np.tile(np.asarray(set_names, dtype=object), n_f),
                        **{k: np.asarray(v).reshape(-1) for k, v in columns.items()}})
    out["_f"] = np.repeat(np.arange(n_f), n_s)
    out = out.sort_values(["_f", *sort_by], ascending=[True, *ascending], kind="stable",
                          na_position="last")
    return out.drop(columns="_f").reset_index(drop=True)


# ------------------------------------------------------------------ over-representation


def _gene_lists(gene_lists, where: dict[str, int]) -> tuple[list, list[list[int]]]:
    if not isinstance(gene_lists, Mapping) or not gene_lists:
        raise InputError("gene_lists must be a non-empty dict of feature → list of gene symbols")
    features, rows = [], []
    for feature, genes in gene_lists.items():
        if isinstance(genes, str) or not isinstance(genes, Iterable):
            raise InputError(f"gene_lists[{feature!r}] must be a list of gene symbols, "
                             f"got {type(genes).__name__}")
        genes = list(dict.fromkeys(str(g) for g in genes))
        unknown = [g for g in genes if g not in where]
        if unknown:
            raise InputError(f"gene_lists[{feature!r}] has {len(unknown)} genes not in the universe "
                             f"(e.g. {unknown[:3]}); the universe must hold every gene a list could "
                             "hold (all genes ranked, e.g. adata.var_names)")
        features.append(feature)
        rows.append([where[g] for g in genes])
    return features, rows


def _membership(rows: list[list[int]], n_genes: int) -> sparse.csr_matrix:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=indptr[-1])
    return sparse.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(rows), n_genes))


def overrepresentation(gene_lists, sets, universe, *, min_size: int = 5) -> pd.DataFrame:
    """Over-representation of each gene set in each feature's gene list.

    Parameters
    ----------
    gene_lists : dict of feature → list of str
        The genes picked for each feature (e.g. its top genes), all in ``universe``.
    sets : dict of str to GeneSet (or to a list of gene symbols)
        E.g. ``read_gmt(immune_gmt())``. Restricted to ``universe`` first.
    universe : iterable of str
        Every gene that could have been picked (the background), e.g. ``adata.var_names``.
    min_size : int, default 5
        Sets with fewer genes in ``universe`` are dropped (with a warning).

    Returns
    -------
    pandas.DataFrame
        One row per feature × set, features in input order and sets by ascending ``p``:
        ``feature, set, n_overlap, n_list, n_set, n_universe, odds_ratio, p, q, overlap_genes``.
        ``p`` is the hypergeometric upper tail ``P(X >= n_overlap)`` (= Fisher's exact test,
        ``alternative="greater"``); ``odds_ratio`` the sample odds ratio of the 2×2 table
        (inf when a cell off the diagonal is 0); ``q`` BH within each feature across sets;
        ``overlap_genes`` comma-separated in list order. ``p`` is NaN (and ``odds_ratio`` NaN)
        when the list is empty or holds the whole universe: such a list carries no information.
        ``.attrs["universe_report"]`` is the report of ``check_universe``.
    """
    genes = list(dict.fromkeys(_universe(universe)))
    where = {g: i for i, g in enumerate(genes)}
    features, rows = _gene_lists(gene_lists, where)
    kept, report = _sets_in(sets, genes, positive_int(min_size, "min_size"))
    names = list(kept)
    lists = _membership(rows, len(genes))
    members = _membership([[where[g] for g in kept[s].genes] for s in names], len(genes))

    n_universe = len(genes)
    k = np.rint((lists @ members.T).toarray()).astype(np.int64)  # features × sets
    n = np.array([len(r) for r in rows], dtype=np.int64)[:, None]
    m = np.array([len(kept[s]) for s in names], dtype=np.int64)[None, :]
    informative = np.broadcast_to((n > 0) & (n < n_universe), k.shape)
    p = np.where(informative, 1.0, np.nan)  # P(X >= 0) = 1: no need to ask scipy
    some = informative & (k > 0)
    mm, nn = np.broadcast_to(m, k.shape), np.broadcast_to(n, k.shape)
    p[some] = stats.hypergeom.sf(k[some] - 1, n_universe, mm[some], nn[some])
    # 2×2 table [[k, n−k], [m−k, N−n−m+k]]: in list × in set
    a, b, c, d = k, n - k, m - k, n_universe - n - m + k
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = np.where(b * c > 0, (a * d) / np.maximum(b * c, 1), np.inf)
    odds = np.where(informative & (m < n_universe), odds, np.nan)

    gene_names = np.asarray(genes, dtype=object)
    overlap = np.full(k.shape, "", dtype=object)
    by_gene = members.tocsc()
    for i in np.flatnonzero(k.any(axis=1)):
        picked = np.asarray(rows[i])
        hits = by_gene[:, picked].toarray() > 0  # sets × genes of the list, in list order
        for j in np.flatnonzero(k[i]):
            overlap[i, j] = ",".join(gene_names[picked[hits[j]]])

    out = _tidy(features, names, {
        "n_overlap": k, "n_list": np.broadcast_to(n, k.shape),
        "n_set": np.broadcast_to(m, k.shape), "n_universe": np.full(k.shape, n_universe),
        "odds_ratio": odds, "p": p, "q": bh_rows(p), "overlap_genes": overlap,
    }, sort_by=["p", "n_overlap"], ascending=[True, False])
    out.attrs["universe_report"] = report
    return out


# ------------------------------------------------------------------ GSEA preranked


def _running_es(w: np.ndarray, pos: np.ndarray, n_genes: int):
    """GSEA enrichment score from the sorted positions of a set's genes (last axis).

    ``w`` holds the weights |r| of the set's genes in the order of ``pos`` (0-based ranks,
    ascending). The running sum peaks just after a hit and dips just before one, so the
    extremes need only the k hits, not all ``n_genes`` steps. Returns ``es`` and the index
    (along the last axis) of the hit that ends (es >= 0) or starts (es < 0) the leading edge.
    """
    k = pos.shape[-1]
    cw = np.cumsum(w, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = cw / cw[..., -1:]
        miss = (pos - np.arange(k) + 0.0) / (n_genes - k)  # misses up to hit j
        after, before = hit - miss, hit - w / cw[..., -1:] - miss
    i_top = np.argmax(np.nan_to_num(after, nan=-np.inf), axis=-1)
    i_bot = np.argmin(np.nan_to_num(before, nan=np.inf), axis=-1)
    # the running sum ends at 0: the extremes are at least that far from zero
    top = np.maximum(np.take_along_axis(after, i_top[..., None], -1)[..., 0], 0.0)
    bot = np.minimum(np.take_along_axis(before, i_bot[..., None], -1)[..., 0], 0.0)
    positive = np.abs(top) > np.abs(bot)  # a tie goes to the negative side, as in GSEA
    es = np.where(positive, top, bot)
    bad = ~np.isfinite(cw[..., -1]) | (cw[..., -1] <= 0) | (k >= n_genes)
    es = np.where(bad, np.nan, es)
    return es, np.where(positive, i_top, i_bot), positive


def _null_positions(rng: np.random.Generator, n_perm: int, n_genes: int, k_max: int) -> np.ndarray:
    """Per permutation, ``k_max`` distinct ranks in random order: the first k of a row are a
    uniform random k-subset, so one draw serves every set size."""
    out = np.empty((n_perm, k_max), dtype=np.int64)
    step = max(1, _BLOCK // n_genes)
    for start in range(0, n_perm, step):
        keys = rng.random((min(step, n_perm - start), n_genes))
        idx = np.argpartition(keys, k_max - 1, axis=1)[:, :k_max]
        by_key = np.argsort(np.take_along_axis(keys, idx, 1), axis=1)
        out[start:start + len(keys)] = np.take_along_axis(idx, by_key, 1)
    return out


def _scores(scores) -> np.ndarray:
    if not isinstance(scores, pd.DataFrame):
        raise InputError(f"scores must be a DataFrame of genes (index) × features (columns), "
                         f"got {type(scores).__name__}")
    if scores.shape[0] < 2 or scores.shape[1] < 1:
        raise InputError(f"scores must have at least 2 genes (rows) and 1 feature (column), "
                         f"got shape {scores.shape}")
    if not scores.index.is_unique:
        dup = scores.index[scores.index.duplicated()].unique()[:3].tolist()
        raise InputError(f"scores index (genes) must be unique; repeated: {dup}. Aggregate or "
                         "drop repeated genes first")
    bad = [c for c in scores.columns if not pd.api.types.is_numeric_dtype(scores[c])]
    if bad:
        raise InputError(f"scores columns must be numeric; not numeric: {bad[:3]}")
    x = scores.to_numpy(dtype=np.float64)
    nonfinite = ~np.isfinite(x)
    if nonfinite.any():
        col = scores.columns[np.flatnonzero(nonfinite.any(axis=0))[0]]
        raise InputError(f"scores hold {int(nonfinite.sum())} NaN/inf values (e.g. in column "
                         f"{col!r}); every gene needs a finite score in every feature")
    return x


def preranked(scores, sets, *, n_permutations: int = 1000, seed: int = 0, min_size: int = 5,
              progress: bool = True) -> pd.DataFrame:
    """GSEA preranked enrichment of each gene set in each feature's gene ranking.

    Parameters
    ----------
    scores : pandas.DataFrame
        Genes (index, unique) × features (columns): a score per gene, ranked descending. Tied
        scores keep the order of the index.
    sets : dict of str to GeneSet (or to a list of gene symbols)
        Restricted to the genes of ``scores`` first.
    n_permutations : int, default 1000
        Random gene sets per set size for the null (the smallest p is ``1/(n+1)``-ish).
    seed : int, default 0
        Seed of the random gene sets; the same draws serve every feature.
    min_size : int, default 5
        Sets with fewer genes in ``scores`` are dropped (with a warning).
    progress : bool, default True
        Show a progress bar over the blocks of the null.

    Returns
    -------
    pandas.DataFrame
        One row per feature × set, features in column order and sets by ascending ``p`` then
        descending ``|nes|``: ``feature, set, es, nes, p, q, leading_edge``.

        - ``es``: maximum deviation from zero of the running sum (weight 1: hits step by
          ``|r| / sum |r| over the set``, misses by ``1 / (N − k)``).
        - ``nes``: ``es`` over the mean of the null ES of the same sign (absolute value).
        - ``p``: among null ES of the same sign, ``(#{at least as extreme} + 1) / (# + 1)``.
        - ``q``: BH within each feature across sets; ``leading_edge``: the set's genes before
          the peak (es >= 0) or after the dip (es < 0), comma-separated in rank order.

        NaN where the ES is undefined: a constant feature, a set whose genes all score 0, or
        a set holding every gene. ``.attrs["universe_report"]`` is ``check_universe``'s report.
    """
    x = _scores(scores)
    n_perm = positive_int(n_permutations, "n_permutations")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer, got {seed!r}")
    gene_names = np.asarray([str(g) for g in scores.index], dtype=object)
    where = {g: i for i, g in enumerate(gene_names)}
    kept, report = _sets_in(sets, gene_names, positive_int(min_size, "min_size"))
    names = list(kept)
    n_genes, n_feat = x.shape

    xt = x.T
    order = np.argsort(-xt, axis=1, kind="stable")  # rank → gene, per feature
    w = np.abs(np.take_along_axis(xt, order, 1))  # weights in rank order
    rank_of = np.empty_like(order)
    np.put_along_axis(rank_of, order, np.arange(n_genes)[None, :], 1)
    constant = np.ptp(xt, axis=1) == 0

    sizes = np.array([len(kept[s]) for s in names])
    null_pos = _null_positions(np.random.default_rng(int(seed)), n_perm, n_genes, sizes.max())
    es = np.full((n_feat, len(names)), np.nan)
    nes, p = es.copy(), es.copy()
    edge = np.full(es.shape, "", dtype=object)

    blocks = []
    for k in np.unique(sizes):
        step = max(1, _BLOCK // (n_perm * int(k)))
        blocks += [(int(k), f, min(f + step, n_feat)) for f in range(0, n_feat, step)]
    for k, f0, f1 in tqdm(blocks, desc="GSEA null", disable=not progress):
        cols = np.flatnonzero(sizes == k)
        members = np.array([[where[g] for g in kept[names[c]].genes] for c in cols])
        wf = w[f0:f1]
        # null: the same random rank sets for every feature
        npos = np.sort(null_pos[:, :k], axis=1)
        null, _, _ = _running_es(wf[:, npos], npos, n_genes)  # features × permutations
        # observed: where each set's genes rank in each feature
        pos = np.sort(rank_of[f0:f1][:, members], axis=-1)  # features × sets × k
        obs, peak, positive = _running_es(np.take_along_axis(wf[:, None, :], pos, -1), pos, n_genes)
        obs[constant[f0:f1]] = np.nan

        up, down = null >= 0, null < 0
        n_up, n_down = up.sum(1), down.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_up = np.where(up, null, 0).sum(1) / n_up
            mean_down = np.where(down, -null, 0).sum(1) / n_down
            as_extreme = np.where(obs[..., None] >= 0, null[:, None, :] >= obs[..., None],
                                  null[:, None, :] <= obs[..., None]).sum(-1)
            es[f0:f1, cols] = obs
            nes[f0:f1, cols] = obs / np.where(obs >= 0, mean_up[:, None], mean_down[:, None])
            p[f0:f1, cols] = (as_extreme + 1) / (np.where(obs >= 0, n_up[:, None],
                                                          n_down[:, None]) + 1)
        p[f0:f1, cols] = np.where(np.isnan(obs), np.nan, p[f0:f1, cols])
        for i, j in zip(*np.nonzero(~np.isnan(obs))):
            ranks = pos[i, j, :peak[i, j] + 1] if positive[i, j] else pos[i, j, peak[i, j]:]
            edge[f0 + i, cols[j]] = ",".join(gene_names[order[f0 + i, ranks]])

    out = _tidy(list(scores.columns), names,
                {"es": es, "nes": nes, "p": p, "q": bh_rows(p), "leading_edge": edge,
                 "_abs_nes": np.abs(nes)},
                sort_by=["p", "_abs_nes"], ascending=[True, False]).drop(columns="_abs_nes")
    out.attrs["universe_report"] = report
    return out
