"""Cross-validated linear probes: does the SAE dictionary cost predictive power?

:func:`probe` fits one linear model on each of several feature sets over the same rows (raw
activations, SAE features, the top-N SAE features) and scores it out of fold:

* outer folds are grouped (a subject's rows never sit on both sides) and stratified for
  class labels; every feature set gets the same folds, so the probes are compared paired;
* inside each training fold only: top-N selection by a univariate rank score, scaling, and
  the choice of the penalty by an inner grouped cross-validation. Selecting on all rows
  would let the held-out rows choose their own features (a leak that inflates the score);
* the metrics are computed once on all out-of-fold predictions, and their 95% intervals
  by a bootstrap over groups (subjects), the unit that is independent.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from numbers import Integral

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from ..errors import InputError
from .resample import grouped_folds
from .result import Outcome

__all__ = ["probe"]

KINDS = ("binary", "categorical", "continuous")
LEVELS = ("subject", "row")
METRICS = {
    "binary": ("auroc", "balanced_accuracy", "precision", "recall", "average_precision"),
    "categorical": ("auroc_macro_ovr", "balanced_accuracy", "precision_macro", "recall_macro"),
    "continuous": ("r2", "spearman_rho"),
}
#: penalty grids searched by the inner grouped cross-validation (inputs are standardised)
C_GRID = np.logspace(-3, 1, 5)
ALPHA_GRID = np.logspace(-2, 4, 7)
INNER_SPLITS = 3
MAX_ITER = 5000
#: cells (rows × columns) of one dense block of ranks or bootstrap weights: bounds memory
_BLOCK_CELLS = 1 << 22


# ---------------------------------------------------------------------------- input checks

def _check_inputs(inputs) -> dict[str, np.ndarray | sp.csr_matrix]:
    if not isinstance(inputs, dict) or not inputs:
        raise InputError("inputs must be a non-empty dict {name: rows × features matrix}, e.g. "
                         "{'raw activations': A, 'SAE features': F}")
    out = {}
    for name, X in inputs.items():
        try:
            X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, np.float64)
        except (TypeError, ValueError) as e:
            raise InputError(f"inputs[{name!r}] must be a numeric matrix: {e}") from None
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise InputError(f"inputs[{name!r}] must be a 2-D rows × features matrix with at "
                             f"least one row and one feature, got shape {X.shape}")
        if not np.isfinite(X.data if sp.issparse(X) else X).all():
            raise InputError(f"inputs[{name!r}] has NaN or infinite values: impute them or drop "
                             f"those rows from every input, y and groups")
        out[str(name)] = X
    rows = {name: X.shape[0] for name, X in out.items()}
    if len(set(rows.values())) > 1:
        raise InputError(f"inputs must hold the same rows, but their row counts differ: {rows}")
    return out


def _missing(values: np.ndarray) -> np.ndarray:
    return np.asarray(pd.isna(pd.Series(values, dtype=object)), dtype=bool)


def _labels(y, kind: str, n: int) -> tuple[np.ndarray, np.ndarray, list | None]:
    """(the values as given, what the models fit: int codes or float64, the levels)."""
    raw = np.asarray(y)
    if raw.ndim != 1 or len(raw) != n:
        raise InputError(f"y must be 1-D with one entry per row of the inputs ({n}), "
                         f"got shape {raw.shape}")
    if _missing(raw).any():
        raise InputError(f"y has {int(_missing(raw).sum())} missing (NaN/None) entries: drop "
                         f"those rows from y, groups and every input")
    if kind == "continuous":
        if raw.dtype.kind not in "biuf":
            raise InputError(f"y must be numeric for kind='continuous', got dtype {raw.dtype}")
        values = raw.astype(np.float64)
        if not np.isfinite(values).all() or np.ptp(values) == 0:
            raise InputError("y must be finite and not constant for kind='continuous'")
        return raw, values, None
    levels, codes = np.unique(raw, return_inverse=True)
    if kind == "binary":
        if len(levels) != 2:
            raise InputError(f"y must have exactly 2 levels for kind='binary', got {len(levels)}: "
                             f"{list(levels)[:10]}")
        if raw.dtype.kind not in "biuf":
            # which string is the case is not ours to guess
            raise InputError(f"y for kind='binary' must be bool or numeric (True / the larger "
                             f"value is the case), got levels {list(levels)}: map them first")
    elif len(levels) < 3:
        raise InputError(f"y has {len(levels)} levels: kind='categorical' needs 3 or more; use "
                         f"kind='binary' for two")
    return raw, codes.reshape(-1), levels.tolist()


def _groups(groups, n: int, level: str) -> np.ndarray:
    if groups is None:
        if level == "row":
            raise InputError("groups (the subject id of each row) is required at level='row': "
                             "rows of one subject must not be split across folds")
        return np.arange(n)
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n:
        raise InputError(f"groups must give one subject id per row: it has shape {groups.shape} "
                         f"but y and the inputs have {n} rows")
    if _missing(groups).any():
        raise InputError("groups has missing (NaN/None) subject ids: drop those rows or give "
                         "them an id")
    codes = pd.factorize(groups, sort=True)[0]
    if level == "subject" and codes.max() + 1 < n:
        raise InputError(f"groups repeats subject ids ({codes.max() + 1} subjects in {n} rows) at "
                         f"level='subject': aggregate the rows per subject first, or use "
                         f"level='row'")
    return codes


def _check_splits(gcodes: np.ndarray, ycodes: np.ndarray | None, levels, n_splits) -> int:
    if isinstance(n_splits, bool) or not isinstance(n_splits, Integral) or n_splits < 2:
        raise InputError(f"n_splits must be an integer of at least 2, got {n_splits!r}")
    n_groups = int(gcodes.max()) + 1
    if n_groups < n_splits:
        raise InputError(f"only {n_groups} subjects (groups) for n_splits={n_splits}: each fold "
                         f"needs subjects of its own; lower n_splits to at most {n_groups}")
    if ycodes is not None:
        for k, level in enumerate(levels):
            count = len(np.unique(gcodes[ycodes == k]))
            if count < n_splits:
                fix = f"lower n_splits to at most {count}, or " if count >= 2 else ""
                raise InputError(f"class {level!r} of y occurs in only {count} subjects (groups), "
                                 f"fewer than n_splits={n_splits}: {fix}merge or drop that class")
    return int(n_splits)


def _subsample(gcodes: np.ndarray, strat: np.ndarray, max_rows: int, seed) -> np.ndarray:
    """``max_rows`` row indices, each (group, y) stratum keeping its share of the rows (±1).

    Rows get keys (position in their stratum + u) / stratum size, random order within the
    stratum and one uniform offset u per stratum: each stratum's keys spread evenly over
    [0, 1), so the ``max_rows`` smallest keys take the same fraction of every stratum.
    """
    rng = np.random.default_rng(seed)
    strata = pd.factorize(pd.MultiIndex.from_arrays([gcodes, strat]))[0]
    n = len(strata)
    perm = rng.permutation(n)
    order = perm[np.argsort(strata[perm], kind="stable")]
    sizes = np.bincount(strata)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    s = strata[order]
    key = (np.arange(n) - starts[s] + rng.random(len(sizes))[s]) / sizes[s]
    return np.sort(order[np.argsort(key, kind="stable")[:max_rows]])


# ------------------------------------------------------------------ univariate selection

def _sparse_ranks(X: sp.spmatrix) -> tuple[sp.csc_matrix, np.ndarray]:
    """Average ranks within each column, shifted so that zeros rank 0 (keeps the pattern
    sparse; every score below is invariant to a per-column shift), and which columns are
    constant."""
    X = sp.csc_matrix(X, copy=True)
    X.sum_duplicates()
    X.eliminate_zeros()
    n, d = X.shape
    nnz = np.diff(X.indptr)
    col = np.repeat(np.arange(d), nnz)
    order = np.lexsort((X.data, col))
    v, c = X.data[order], col[order]
    new = np.concatenate([[True], (c[1:] != c[:-1]) | (v[1:] != v[:-1])])
    run = np.cumsum(new) - 1
    start = np.flatnonzero(new)
    size = np.diff(np.append(start, len(v)))
    pos = np.arange(len(v)) - X.indptr[c]  # 0-based place among the column's nonzeros
    mid = (pos[start] + (size - 1) / 2)[run]
    n_zero = n - nnz
    n_neg = np.bincount(col, weights=X.data < 0, minlength=d)
    rank = mid + 1 + np.where(v > 0, n_zero[c], 0)
    zero_rank = n_neg + (n_zero + 1) / 2
    data = np.empty_like(rank)
    data[order] = rank - zero_rank[c]
    distinct = np.bincount(c[start], minlength=d) + (n_zero > 0)
    return sp.csc_matrix((data, X.indices, X.indptr), shape=(n, d)), distinct <= 1


def _colsum(M) -> np.ndarray:
    return np.asarray(M.sum(axis=0)).ravel()


def _rank_scores(R, const: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """Univariate scores of each column from its ranks ``R`` (dense or sparse, any per-column
    shift): |AUROC − 0.5| (binary), |Spearman rho| (continuous), Kruskal–Wallis H with the
    tie correction (categorical). NaN for constant columns."""
    n = R.shape[0]
    m = _colsum(R) / n
    ss = _colsum(R.multiply(R) if sp.issparse(R) else R * R) - n * m * m
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "binary":
            n1 = y.sum()
            # sum over cases of (rank - mean rank) = U - n1 n0 / 2
            score = np.abs(R.T @ (y - n1 / n)) / (n1 * (n - n1))
        elif kind == "continuous":
            ry = rankdata(y) - (n + 1) / 2
            score = np.abs(R.T @ ry) / np.sqrt(ss * (ry @ ry))
        else:
            onehot = np.eye(y.max() + 1)[y]
            sums = np.asarray(R.T @ onehot)
            between = (sums**2 / onehot.sum(0)).sum(1) - n * m * m
            # H = (N - 1) SS_between / SS_total of the ranks: the tie-corrected H
            score = (n - 1) * between / ss
    score = np.asarray(score, dtype=np.float64).ravel()
    score[const] = np.nan
    return score


def _univariate_scores(X, y: np.ndarray, kind: str, *, progress: bool = False) -> np.ndarray:
    """The selection score of every column of ``X`` (rows: a training fold)."""
    if sp.issparse(X):
        R, const = _sparse_ranks(X)
        return _rank_scores(R, const, y, kind)
    n, d = X.shape
    step = max(1, _BLOCK_CELLS // n)
    out = np.empty(d)
    for a in tqdm(range(0, d, step), desc="selection", leave=False,
                  disable=not progress or d <= step):
        block = X[:, a:a + step]
        const = block.max(0) == block.min(0)
        out[a:a + step] = _rank_scores(rankdata(block, axis=0) - (n + 1) / 2, const, y, kind)
    return out


def _top(score: np.ndarray, n: int) -> np.ndarray:
    # constant columns (NaN) last; ties keep column order
    return np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")[:n]


# -------------------------------------------------------------------------------- models

def _model(kind: str, penalty: float, sparse: bool):
    # sparse: scale only (centering would densify); the unpenalised intercept absorbs the mean
    scaler = StandardScaler(with_mean=not sparse)
    if kind == "continuous":
        return make_pipeline(scaler, Ridge(alpha=penalty))
    # warm start: the inner search refits along the grid from the previous solution
    return make_pipeline(scaler, LogisticRegression(C=penalty, class_weight="balanced",
                                                    max_iter=MAX_ITER, warm_start=True))


def _validation_loss(model, X, y, kind: str) -> float:
    """Mean squared error, or log loss with every class weighted alike (as the fit is)."""
    if kind == "continuous":
        return float(np.mean((model.predict(X) - y) ** 2))
    proba = model.predict_proba(X)
    known = np.isin(y, model.classes_)  # a class the inner fold did not train on: p = 0
    p = np.zeros(len(y))
    p[known] = proba[known, np.searchsorted(model.classes_, y[known])]
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    weight = 1 / counts[inverse]
    return float(weight @ -np.log(np.clip(p, 1e-15, None)) / weight.sum())


def _fit_predict(Xtr, ytr, gtr, Xte, kind: str, seed) -> tuple[np.ndarray, float]:
    """Fit scaler + linear model on one training fold, the penalty (C or alpha) chosen by an
    inner grouped CV on that fold; return the test rows' P(case) / class probabilities /
    predicted values, and the penalty."""
    grid, param = (ALPHA_GRID, "alpha") if kind == "continuous" else (C_GRID, "C")
    strat = None if kind == "continuous" else ytr
    k = min(INNER_SPLITS, len(np.unique(gtr)))
    if strat is not None:
        k = min(k, min(len(np.unique(gtr[strat == c])) for c in np.unique(strat)))
    best = 1.0  # too few subjects to tune (k < 2): the default penalty
    if k >= 2:
        loss = np.zeros(len(grid))
        for itr, ite in grouped_folds(gtr, y=strat, n_splits=k, seed=seed):
            model = _model(kind, grid[0], sp.issparse(Xtr))
            for j, value in enumerate(grid):  # C grid ascending: each fit warm-starts the next
                model[-1].set_params(**{param: value})
                model.fit(Xtr[itr], ytr[itr])
                loss[j] += _validation_loss(model, Xtr[ite], ytr[ite], kind)
        best = grid[int(np.argmin(loss))]
    model = _model(kind, best, sp.issparse(Xtr)).fit(Xtr, ytr)
    if kind == "continuous":
        return model.predict(Xte), best
    proba = model.predict_proba(Xte)
    return (proba[:, 1] if kind == "binary" else proba), best


# ------------------------------------------------------------------------------- metrics

def _weighted_ranks(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average rank of each row in the multiset where row i occurs W[b, i] times, per b."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.concatenate([[True], xs[1:] != xs[:-1]])
    block = np.cumsum(new) - 1
    tie = np.add.reduceat(W[:, order], np.flatnonzero(new), axis=1)
    rank = np.cumsum(tie, axis=1) - tie + (tie + 1) / 2
    out = np.empty_like(W)
    out[:, order] = rank[:, block]
    return out


def _auroc(pos: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Weighted Mann–Whitney AUROC (ties count 1/2), one per weight row."""
    w1 = W @ pos
    w0 = W.sum(1) - w1
    rank_sum = (W * _weighted_ranks(s, W)) @ pos
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rank_sum - w1 * (w1 + 1) / 2) / (w1 * w0)


def _average_precision(pos: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Step-wise area under the weighted precision–recall curve, thresholds at distinct
    scores (scikit-learn's definition)."""
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    starts = np.flatnonzero(np.concatenate([[True], ss[1:] != ss[:-1]]))
    tp = np.cumsum(np.add.reduceat((W * pos)[:, order], starts, axis=1), axis=1)
    called = np.cumsum(np.add.reduceat(W[:, order], starts, axis=1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / called
        recall = tp / tp[:, -1:]
    gain = np.diff(recall, axis=1, prepend=0.0)
    ap = np.where(gain > 0, gain * precision, 0.0).sum(1)
    return np.where(tp[:, -1] > 0, ap, np.nan)


def _ratio(num, den, zero):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), zero)


def _metrics(kind: str, y: np.ndarray, score: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of ``kind`` for each row of weights ``W`` (B × n): ones give the metric
    of the predictions, bootstrap counts one replicate each. Precision with no row called
    positive is 0 (scikit-learn's default); undefined metrics are NaN."""
    if kind == "binary":
        pos = (y == 1).astype(np.float64)
        called = (score > 0.5).astype(np.float64)  # P(case) > 0.5: predict() of the model
        tp, fp = W @ (pos * called), W @ ((1 - pos) * called)
        p, neg = W @ pos, W @ (1 - pos)
        recall = _ratio(tp, p, np.nan)
        specificity = _ratio(neg - fp, neg, np.nan)
        return {"auroc": _auroc(pos, score, W), "balanced_accuracy": (recall + specificity) / 2,
                "precision": _ratio(tp, tp + fp, 0.0), "recall": recall,
                "average_precision": _average_precision(pos, score, W)}
    if kind == "categorical":
        k = score.shape[1]
        onehot = np.eye(k)[y]
        called = np.eye(k)[score.argmax(1)]
        tp = W @ (onehot * called)
        recall = _ratio(tp, W @ onehot, np.nan)
        precision = _ratio(tp, W @ called, 0.0)
        auroc = np.stack([_auroc(onehot[:, c], score[:, c], W) for c in range(k)], axis=1)
        return {"auroc_macro_ovr": auroc.mean(1), "balanced_accuracy": recall.mean(1),
                "precision_macro": precision.mean(1), "recall_macro": recall.mean(1)}
    total = W.sum(1)
    yc = y - y.mean()  # centred once: the weighted sums of squares then lose no digits
    mean_w = (W @ yc) / total
    ss_tot = W @ yc**2 - total * mean_w**2
    r2 = 1 - (W @ (y - score) ** 2) / np.where(ss_tot > 0, ss_tot, np.nan)

    def centred(x):
        r = _weighted_ranks(x, W)
        return r - ((W * r).sum(1) / total)[:, None]

    ry, rs = centred(y), centred(score)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = (W * ry * rs).sum(1) / np.sqrt((W * ry**2).sum(1) * (W * rs**2).sum(1))
    return {"r2": r2, "spearman_rho": rho}


def _bootstrap(kind, y, score, gcodes, n_boot: int, seed, bar) -> dict[str, np.ndarray]:
    """Metric replicates over ``n_boot`` resamples of the groups with replacement (the same
    resamples for every probe given the same seed: paired intervals)."""
    rng = np.random.default_rng(seed)
    n_groups = int(gcodes.max()) + 1
    step = max(1, _BLOCK_CELLS // len(y))
    parts = []
    for a in range(0, n_boot, step):
        b = min(step, n_boot - a)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=b)
        parts.append(_metrics(kind, y, score, counts[:, gcodes].astype(np.float64)))
        bar.update(b)
    return {m: np.concatenate([p[m] for p in parts]) if parts else np.empty(0)
            for m in METRICS[kind]}


def _percentile_ci(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return np.nan, np.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


# ---------------------------------------------------------------------------------- probe

def probe(inputs: dict, y, *, kind: str | None = None, groups=None, top_n=(10,),
          select_from: str | None = None, n_splits: int = 5, n_boot: int = 500, seed=0,
          level: str = "subject", max_rows: int = 50_000, progress: bool = True,
          return_predictions: bool = False):
    """Cross-validated linear probes of a label from several feature sets over the same rows.

    Each feature set (and the top-N columns of ``select_from``) gets the same grouped outer
    folds. Within each training fold: top-N selection by a univariate score, then
    ``StandardScaler`` and an L2 logistic regression (``class_weight="balanced"``,
    multinomial for categorical, ``C`` from an inner grouped CV over ``C_GRID``) or a ridge
    regression (``alpha`` from ``ALPHA_GRID``), all fitted on the training rows only. The
    metrics are computed on the out-of-fold predictions of all rows; their 95% intervals
    are percentile bootstraps over groups (subjects).

    Parameters
    ----------
    inputs : dict of str to array or scipy.sparse matrix
        Named feature sets over the same rows, e.g. ``{"raw activations": A,
        "SAE features": F}`` (``n_rows × d``). Sparse matrices stay sparse (scaled, not
        centred: the intercept absorbs the mean).
    y : array-like of shape (n_rows,) or Outcome
        The label of each row. binary: bool or numeric with two values (True / the larger
        value is the case); categorical: 3 or more levels; continuous: float.
    kind : {"binary", "categorical", "continuous"}
        The label's kind; taken from ``y`` when it is an :class:`Outcome`.
    groups : array-like of shape (n_rows,), optional
        Subject id of each row. Required at ``level="row"``; at ``level="subject"`` every
        row is its own subject (ids, if given, must be unique).
    top_n : tuple of int
        Also probe the ``N`` best columns of ``select_from``, chosen inside each training
        fold by |AUROC − 0.5| (binary), |Spearman rho| (continuous) or Kruskal–Wallis H
        (categorical). ``()`` for none; ``N`` at or above the input's width is skipped.
    select_from : str, optional
        The input the top-N columns come from. Default: the second input (the SAE
        features), or the only one.
    n_splits : int
        Outer folds. Every class needs at least ``n_splits`` subjects.
    n_boot : int
        Bootstrap resamples of the subjects for the intervals (0: no intervals).
    seed : int
        Seeds the folds, the bootstrap and any row subsampling.
    level : {"subject", "row"}
        ``"subject"``: one row per subject (clinical labels). ``"row"``: many rows per
        subject (cell or patch labels); folds and bootstrap keep a subject's rows together.
    max_rows : int
        At ``level="row"``, more rows than this are subsampled to ``max_rows``, stratified by
        subject and label (``df.attrs["subsampled"]`` records it).
    progress : bool
        Show progress bars.
    return_predictions : bool
        Also return the out-of-fold predictions.

    Returns
    -------
    table : pandas.DataFrame
        One row per probe and metric: ``probe``, ``input``, ``level``, ``n_rows``,
        ``n_groups``, ``n_features``, ``metric``, ``value``, ``ci_low``, ``ci_high``,
        ``n_splits``. Probes are named ``"<input>"`` and ``"top <N> <input>"``. Metrics:
        binary ``auroc``, ``balanced_accuracy``, ``precision`` and ``recall`` (of the case
        class at P(case) > 0.5), ``average_precision``; categorical ``auroc_macro_ovr``,
        ``balanced_accuracy``, ``precision_macro``, ``recall_macro`` (equal to the balanced
        accuracy by definition); continuous ``r2`` (out of fold), ``spearman_rho``.
    predictions : pandas.DataFrame
        Only with ``return_predictions``: ``row`` (index into the inputs), ``group``,
        ``fold``, ``probe``, ``y``; ``score`` (P(case), or the predicted value) and, for
        class labels, ``pred``; categorical: ``score_<level>`` per class instead of ``score``;
        ``penalty``: the fold's ``C`` or ``alpha`` (one at an end of ``C_GRID`` or
        ``ALPHA_GRID`` says the best lies beyond the grid).

    Examples
    --------
    >>> import numpy as np
    >>> from bioviz.analysis.probes import probe
    >>> rng = np.random.default_rng(0)
    >>> A = rng.normal(size=(60, 8)); y = A[:, 0] + 0.5 * rng.normal(size=60) > 0
    >>> F = np.maximum(rng.normal(size=(60, 32)), 0)
    >>> table = probe({"raw": A, "SAE": F}, y, kind="binary", top_n=(4,), n_splits=3,
    ...               n_boot=50, progress=False)
    >>> table.query("metric == 'auroc'")["probe"].tolist()
    ['raw', 'SAE', 'top 4 SAE']
    """
    if isinstance(y, Outcome):
        if kind is not None and kind != y.kind:
            raise InputError(f"kind={kind!r} but the Outcome {y.name!r} is {y.kind!r}")
        if y.kind == "categorical" and y.levels is not None:
            kind, y = y.kind, np.asarray(y.levels, dtype=object)[np.asarray(y.y, dtype=int)]
        else:
            kind, y = y.kind, y.y
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    if level not in LEVELS:
        raise InputError(f"level must be one of {LEVELS}, got {level!r}")
    for name, value, low in (("n_boot", n_boot, 0), ("max_rows", max_rows, 2)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
            raise InputError(f"{name} must be an integer of at least {low}, got {value!r}")
    inputs = _check_inputs(inputs)
    names = list(inputs)
    n = next(iter(inputs.values())).shape[0]
    raw, target, levels = _labels(y, kind, n)
    gcodes = _groups(groups, n, level)
    group_ids = np.arange(n) if groups is None else np.asarray(groups)
    select_from = names[min(1, len(names) - 1)] if select_from is None else select_from
    if select_from not in inputs:
        raise InputError(f"select_from={select_from!r} is not an input; inputs are {names}")
    top_n = _check_top_n(top_n, inputs[select_from].shape[1], select_from)

    rows = np.arange(n)
    subsampled = None
    if level == "row" and n > max_rows:
        strat = (target if kind != "continuous"
                 else pd.qcut(target, 5, labels=False, duplicates="drop"))
        rows = _subsample(gcodes, strat, max_rows, seed)
        subsampled = {"n_rows_before": n, "n_rows": int(max_rows), "stratified_by": "group and y",
                      "seed": seed}
        inputs = {k: X[rows] for k, X in inputs.items()}
        raw, target, group_ids = raw[rows], target[rows], group_ids[rows]
        gcodes = pd.factorize(gcodes[rows], sort=True)[0]
    n_groups = int(gcodes.max()) + 1
    ycodes = None if kind == "continuous" else target
    n_splits = _check_splits(gcodes, ycodes, levels, n_splits)
    folds = grouped_folds(gcodes, y=ycodes, n_splits=n_splits, seed=seed)

    probes = [(name, name, None) for name in names]
    probes += [(f"top {k} {select_from}", select_from, k) for k in top_n]
    shape = (len(target), len(levels)) if kind == "categorical" else len(target)
    scores = {p[0]: np.full(shape, np.nan) for p in probes}
    penalty = {p[0]: np.empty(n_splits) for p in probes}
    fold_of = np.empty(len(target), dtype=np.int64)
    # small problems: one BLAS thread (a handoff between threads costs more than the work,
    # many times more on a loaded machine)
    small = max(X.shape[0] * X.shape[1] for X in inputs.values()) <= _BLOCK_CELLS
    with (threadpool_limits(1) if small else nullcontext()), \
            tqdm(total=n_splits * len(probes), desc="probe fits", disable=not progress) as bar:
        for f, (train, test) in enumerate(folds):
            fold_of[test] = f
            missing = () if ycodes is None else set(range(len(levels))) - set(ycodes[train])
            if missing:
                raise InputError(f"fold {f} has no training rows of class "
                                 f"{[levels[c] for c in missing]}: lower n_splits")
            ranked = None
            if top_n:  # selection sees the training rows only
                ranked = _univariate_scores(inputs[select_from][train], target[train], kind,
                                            progress=progress)
            for name, source, k in probes:
                X = inputs[source]
                if k is not None:
                    X = X[:, _top(ranked, k)]
                scores[name][test], penalty[name][f] = _fit_predict(
                    X[train], target[train], gcodes[train], X[test], kind, seed)
                bar.update(1)

    table = []
    with tqdm(total=n_boot * len(probes), desc="probe bootstrap", disable=not progress) as bar:
        for name, source, k in probes:
            value = _metrics(kind, target, scores[name], np.ones((1, len(target))))
            boot = _bootstrap(kind, target, scores[name], gcodes, n_boot, seed, bar)
            for metric in METRICS[kind]:
                low, high = _percentile_ci(boot[metric])
                table.append({"probe": name, "input": source, "level": level,
                              "n_rows": len(target), "n_groups": n_groups,
                              "n_features": k or inputs[source].shape[1], "metric": metric,
                              "value": float(value[metric][0]), "ci_low": low, "ci_high": high,
                              "n_splits": n_splits})
    table = pd.DataFrame(table)
    table.attrs.update(kind=kind, n_boot=n_boot, seed=seed, subsampled=subsampled)
    if not return_predictions:
        return table
    pred = _predictions(probes, scores, rows, group_ids, fold_of, raw, kind, levels)
    pred["penalty"] = np.concatenate([penalty[p[0]][fold_of] for p in probes])
    return table, pred


def _check_top_n(top_n, width: int, select_from: str) -> list[int]:
    top_n = () if top_n is None else ((top_n,) if isinstance(top_n, Integral) else tuple(top_n))
    out = []
    for k in top_n:
        if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
            raise InputError(f"top_n must hold positive integers, got {k!r}")
        if k >= width:
            warnings.warn(f"top_n={k} is not fewer than the {width} features of {select_from!r}: "
                          f"skipped (the full input is probed anyway)", stacklevel=3)
        elif k not in out:
            out.append(int(k))
    return out


def _predictions(probes, scores, rows, groups, fold_of, raw, kind, levels) -> pd.DataFrame:
    parts = []
    for name, _, _ in probes:
        part = pd.DataFrame({"row": rows, "group": groups, "fold": fold_of, "probe": name,
                             "y": raw})
        s = scores[name]
        if kind == "categorical":
            part["pred"] = np.asarray(levels, dtype=object)[s.argmax(1)]
            for c, level in enumerate(levels):
                part[f"score_{level}"] = s[:, c]
        else:
            part["score"] = s
            if kind == "binary":
                part["pred"] = np.asarray(levels)[(s > 0.5).astype(int)]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
