"""Subject-level resampling, generic over tests: permutations, bootstraps, a discovery/held-out
split and grouped folds.

Every function works on subject *indices* (rows of ``X``), never on the data: the caller
applies an index array to whatever it resamples (``outcome.take(idx)`` for a permutation of
the label, ``X[idx]`` with ``outcome.take(idx)`` for a bootstrap). ``strata`` keep every
permutation and bootstrap inside its stratum (a batch, a site, or the label's classes so that
each bootstrap keeps every class). All randomness comes from ``numpy.random.default_rng(seed)``:
the same seed gives the same indices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from numbers import Integral

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError, positive_int

__all__ = ["permutations", "bootstrap_indices", "bootstrap_ci", "selection_stability", "split",
           "grouped_folds"]


def _codes(values, n: int, name: str) -> np.ndarray:
    """Integer codes 0..k-1 of a length-``n`` label (strata, classes, groups)."""
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != n:
        raise InputError(f"{name} must be a 1-D array with one entry per subject ({n}), "
                         f"got shape {arr.shape}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise InputError(f"{name} has missing (NaN) entries: drop those subjects or give "
                         f"them a level of their own")
    if arr.dtype.kind == "O" and any(v is None or v != v for v in arr):
        raise InputError(f"{name} has missing (None/NaN) entries: drop those subjects or give "
                         f"them a level of their own")
    return np.unique(arr, return_inverse=True)[1].reshape(-1)


class _Strata:
    """Where each stratum's subjects lie once sorted by stratum, to draw inside strata fast."""

    def __init__(self, strata, n: int):
        self.codes = _codes(strata, n, "strata")
        self.order = np.argsort(self.codes, kind="stable")
        sizes = np.bincount(self.codes)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        # per sorted position: the first sorted position and the size of its stratum
        self.start = starts[self.codes[self.order]]
        self.size = sizes[self.codes[self.order]]


def permutations(n: int, *, strata=None, n_permutations: int, seed) -> Iterator[np.ndarray]:
    """Random permutations of the subjects, within strata.

    Parameters
    ----------
    n : int
        Number of subjects.
    strata : array-like of shape (n,), optional
        Stratum of each subject; a permutation only moves subjects within their stratum.
    n_permutations : int
        Number of permutations to yield.
    seed : int or None
        Seed of ``numpy.random.default_rng``.

    Yields
    ------
    numpy.ndarray of int, shape (n,)
        ``idx``, a permutation of ``range(n)`` with ``strata[idx] == strata``: permute the
        outcome with ``outcome.take(idx)``. The identity is not excluded (it is as likely as
        any other permutation, which keeps permutation p-values valid).
    """
    n = positive_int(n, "n")
    n_permutations = positive_int(n_permutations, "n_permutations")
    layout = None if strata is None else _Strata(strata, n)
    rng = np.random.default_rng(seed)
    for _ in range(n_permutations):
        if layout is None:
            yield rng.permutation(n)
            continue
        # sorting on (stratum, random key) shuffles each stratum's block of the sorted order;
        # each subject then takes the subject at its own sorted position: same stratum
        shuffled = np.lexsort((rng.random(n), layout.codes))
        idx = np.empty(n, dtype=np.intp)
        idx[layout.order] = shuffled
        yield idx


def bootstrap_indices(n: int, *, strata=None, n_boot: int, seed) -> Iterator[np.ndarray]:
    """Bootstrap resamples of the subjects: drawn with replacement within each stratum.

    Parameters
    ----------
    n : int
        Number of subjects.
    strata : array-like of shape (n,), optional
        Stratum of each subject. Each resample keeps every stratum's size (pass a
        categorical label's classes so that every resample has every class).
    n_boot : int
        Number of resamples to yield.
    seed : int or None
        Seed of ``numpy.random.default_rng``.

    Yields
    ------
    numpy.ndarray of int, shape (n,)
        ``idx`` with ``strata[idx] == strata``; index both ``X`` and the outcome with it.
    """
    n = positive_int(n, "n")
    n_boot = positive_int(n_boot, "n_boot")
    layout = None if strata is None else _Strata(strata, n)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        if layout is None:
            yield rng.integers(0, n, size=n)
            continue
        draw = layout.start + rng.integers(0, layout.size)
        idx = np.empty(n, dtype=np.intp)
        idx[layout.order] = layout.order[draw]
        yield idx


def _percentile_columns(values: np.ndarray, q: float) -> np.ndarray:
    """Per-column percentile ``q`` (0-100) ignoring NaN, numpy's default linear method.

    np.nanpercentile loops over columns in Python; this sorts once (NaN sort last).
    """
    s = np.sort(values, axis=0)
    k = (~np.isnan(values)).sum(axis=0)
    h = (np.maximum(k, 1) - 1) * (q / 100.0)
    lo = np.floor(h).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(k - 1, 0))
    a = np.take_along_axis(s, lo[None], axis=0)[0]
    b = np.take_along_axis(s, hi[None], axis=0)[0]
    with np.errstate(invalid="ignore"):
        out = a + (b - a) * (h - lo)
    # equal neighbours (infinite effects included) need no interpolation
    return np.where(a == b, a, out)


def bootstrap_ci(effect_fn: Callable[[np.ndarray], np.ndarray], n: int, *, strata=None,
                 n_boot: int = 1000, level: float = 0.95, seed=0,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap confidence intervals of per-feature effects, resampling subjects.

    Parameters
    ----------
    effect_fn : callable
        ``effect_fn(idx) -> array of shape (n_features,)``: the effects computed on the
        subjects ``idx`` (``X[idx]`` with ``outcome.take(idx)``).
    n : int
        Number of subjects.
    strata : array-like of shape (n,), optional
        Resample within strata (see :func:`bootstrap_indices`).
    n_boot : int
        Number of resamples.
    level : float
        Confidence level, in (0, 1).
    seed : int or None
        Seed of ``numpy.random.default_rng``.
    progress : bool
        Show a progress bar.

    Returns
    -------
    low, high : numpy.ndarray of float64, shape (n_features,)
        The ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of each feature's
        bootstrap effects. Resamples where a feature's effect is NaN are left out for that
        feature; where more than half are NaN its interval is NaN.

    Notes
    -----
    Holds all ``n_boot × n_features`` effects (float64) to take exact percentiles.
    """
    n = positive_int(n, "n")
    n_boot = positive_int(n_boot, "n_boot")
    if isinstance(level, bool) or not isinstance(level, (float, Integral)) or not 0 < level < 1:
        raise InputError(f"level must be a number in (0, 1) such as 0.95, got {level!r}")
    effects = None
    resamples = bootstrap_indices(n, strata=strata, n_boot=n_boot, seed=seed)
    for b, idx in enumerate(tqdm(resamples, total=n_boot, desc="bootstrap", disable=not progress)):
        e = np.atleast_1d(np.asarray(effect_fn(idx), dtype=np.float64))
        if effects is None:
            if e.ndim != 1:
                raise InputError(f"effect_fn must return a 1-D array (one effect per feature), "
                                 f"got shape {e.shape}")
            effects = np.empty((n_boot, len(e)))
        elif e.shape != effects.shape[1:]:
            raise InputError(f"effect_fn returned shape {e.shape} on resample {b}, but "
                             f"{effects.shape[1:]} on the first")
        effects[b] = e
    alpha = (1 - level) / 2
    low = _percentile_columns(effects, 100 * alpha)
    high = _percentile_columns(effects, 100 * (1 - alpha))
    too_few = np.isnan(effects).sum(axis=0) > n_boot / 2
    low[too_few] = np.nan
    high[too_few] = np.nan
    return low, high


def selection_stability(select_fn: Callable[[np.ndarray], np.ndarray], n: int, *, strata=None,
                        n_boot: int = 100, seed=0, progress: bool = True) -> np.ndarray:
    """How often each feature is selected across bootstrap resamples of the subjects.

    Parameters
    ----------
    select_fn : callable
        ``select_fn(idx) -> bool array of shape (n_features,)``: the features selected on
        the subjects ``idx`` (e.g. ``q < 0.05``).
    n : int
        Number of subjects.
    strata : array-like of shape (n,), optional
        Resample within strata (see :func:`bootstrap_indices`).
    n_boot : int
        Number of resamples.
    seed : int or None
        Seed of ``numpy.random.default_rng``.
    progress : bool
        Show a progress bar.

    Returns
    -------
    numpy.ndarray of float64, shape (n_features,)
        Share of resamples that selected each feature, in [0, 1].
    """
    n = positive_int(n, "n")
    n_boot = positive_int(n_boot, "n_boot")
    counts = None
    resamples = bootstrap_indices(n, strata=strata, n_boot=n_boot, seed=seed)
    for b, idx in enumerate(tqdm(resamples, total=n_boot, desc="stability", disable=not progress)):
        chosen = np.atleast_1d(np.asarray(select_fn(idx)))
        # 0/1 floats or NaN would be counted silently wrong: ask for the boolean mask itself
        if chosen.dtype != bool or chosen.ndim != 1:
            raise InputError(f"select_fn must return a 1-D boolean array (True = selected), "
                             f"got dtype {chosen.dtype} and shape {chosen.shape}")
        if counts is None:
            counts = np.zeros(len(chosen), dtype=np.int64)
        elif len(chosen) != len(counts):
            raise InputError(f"select_fn returned {len(chosen)} features on resample {b}, but "
                             f"{len(counts)} on the first")
        counts += chosen
    return counts / n_boot


def _strata_for_split(stratify, n: int) -> np.ndarray:
    """Classes to split in proportion: the levels themselves, or quintile bins of a float."""
    arr = np.asarray(stratify)
    if arr.dtype.kind != "f":
        return _codes(arr, n, "stratify")
    _codes(arr, n, "stratify")  # shape and NaN checks
    edges = np.unique(np.quantile(arr, [0.2, 0.4, 0.6, 0.8]))
    # right-closed bins; ties at an edge (few distinct values) merge bins instead of splitting
    return np.unique(np.searchsorted(edges, arr, side="left"), return_inverse=True)[1]


def split(n: int, *, stratify=None, heldout: float = 0.3,
          seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A random split of the subjects into a discovery set and a held-out set.

    Parameters
    ----------
    n : int
        Number of subjects.
    stratify : array-like of shape (n,), optional
        Split each class in proportion. Every class of two or more subjects has at least
        one subject on each side. A float array is continuous: it is split on its quintile
        bins (fewer where values tie). Booleans, integers and strings are classes.
    heldout : float
        Share of the subjects held out, in (0, 1).
    seed : int or None
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    discovery_idx, heldout_idx : numpy.ndarray of int
        Sorted, disjoint, together ``range(n)``. The held-out size is ``round(n * heldout)``
        unless the per-class guarantee needs a few subjects more or fewer.
    """
    n = positive_int(n, "n")
    if isinstance(heldout, bool) or not isinstance(heldout, (float, Integral)) \
            or not 0 < heldout < 1:
        raise InputError(f"heldout must be a share in (0, 1) such as 0.3, got {heldout!r}")
    total = int(round(n * heldout))
    if not 0 < total < n:
        raise InputError(f"heldout={heldout} of {n} subjects leaves "
                         f"{'no held-out' if total == 0 else 'no discovery'} subject: "
                         f"choose a heldout share between {1 / n:.3g} and {1 - 1 / n:.3g}")
    codes = np.zeros(n, dtype=np.intp) if stratify is None else _strata_for_split(stratify, n)
    rng = np.random.default_rng(seed)
    sizes = np.bincount(codes)
    exact = sizes * heldout
    lower = np.where(sizes >= 2, 1, 0)
    upper = np.where(sizes >= 2, sizes - 1, sizes)
    take = np.clip(np.floor(exact).astype(np.intp), lower, upper)
    # largest remainders first (random among ties) until the held-out total is reached;
    # the per-class bounds win over the total where they conflict
    tiebreak = rng.random(len(sizes))
    for c in np.lexsort((tiebreak, -(exact - take))):
        if take.sum() >= total:
            break
        if take[c] < upper[c]:
            take[c] += 1
    for c in np.lexsort((tiebreak, exact - take)):
        if take.sum() <= total:
            break
        if take[c] > lower[c]:
            take[c] -= 1
    is_heldout = np.zeros(n, dtype=bool)
    for c, k in enumerate(take):
        members = np.flatnonzero(codes == c)
        is_heldout[rng.choice(members, size=k, replace=False)] = True
    return np.flatnonzero(~is_heldout), np.flatnonzero(is_heldout)


def grouped_folds(groups, *, y=None, n_splits: int = 5,
                  seed=0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds that never split a group (a subject's cells or patches).

    Parameters
    ----------
    groups : array-like of shape (n_rows,)
        Group (subject) of each row.
    y : array-like of shape (n_rows,), optional
        Label of each row. Booleans, integers and strings are classes: the folds are
        stratified on them (scikit-learn's ``StratifiedGroupKFold``). Floats, or no ``y``,
        give unstratified folds (``GroupKFold``).
    n_splits : int
        Number of folds, at most the number of groups.
    seed : int or None
        Seed of the shuffling of the groups.

    Returns
    -------
    list of (train_idx, test_idx)
        ``n_splits`` pairs of row indices; each row is in exactly one ``test_idx``.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups)
    n_rows = len(groups) if groups.ndim == 1 else -1
    if n_rows < 1:
        raise InputError(f"groups must be a non-empty 1-D array (one group per row), "
                         f"got shape {groups.shape}")
    codes = _codes(groups, n_rows, "groups")
    n_splits = positive_int(n_splits, "n_splits")
    n_groups = codes.max() + 1
    if n_splits < 2 or n_groups < n_splits:
        raise InputError(f"n_splits={n_splits} folds need at least 2 folds and at least as "
                         f"many groups; groups has {n_groups}: lower n_splits")
    # the seed draws an int: sklearn's random_state would also accept a Generator's state
    state = int(np.random.default_rng(seed).integers(2**31 - 1))
    x = np.zeros((n_rows, 1))
    if y is not None and np.asarray(y).dtype.kind != "f":
        classes = _codes(y, n_rows, "y")
        folds = StratifiedGroupKFold(n_splits, shuffle=True, random_state=state)
        pairs = folds.split(x, classes, codes)
    else:
        if y is not None and np.shape(y) != (n_rows,):
            raise InputError(f"y must have one entry per row ({n_rows}), got shape {np.shape(y)}")
        pairs = GroupKFold(n_splits, shuffle=True, random_state=state).split(x, groups=codes)
    return [(train, test) for train, test in pairs]
