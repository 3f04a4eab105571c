"""Multiple-testing control over features: false discovery rate (Benjamini–Hochberg,
Benjamini–Yekutieli) and family-wise error by subject-level permutation (Westfall–Young).

NaN p-values (degenerate features) stay NaN and are not part of the family: they do not
count in the number of tests ``m``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError, positive_int
from .resample import permutations

__all__ = ["bh", "by", "westfall_young"]

# permuted and observed p-values of equal statistics may differ in the last bits; such ties
# count as reaching the observed p (the conservative side)
_TIE = 1 + 1e-12


def _check_p(p, name: str = "p") -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of p-values (one per feature), "
                         f"got shape {p.shape}")
    bad = ~np.isnan(p) & ((p < 0) | (p > 1))
    if bad.any():
        raise InputError(f"{name} must hold p-values in [0, 1] (NaN for untested features); "
                         f"{int(bad.sum())} are outside, e.g. {p[bad][0]!r}")
    return p


def _step_up(p: np.ndarray, dependence_factor: bool) -> np.ndarray:
    p = _check_p(p)
    q = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if m == 0:
        return q
    order = tested[np.argsort(p[tested], kind="stable")]
    scale = m / np.arange(1, m + 1)
    if dependence_factor:
        scale = scale * np.sum(1.0 / np.arange(1, m + 1))
    # the running minimum from the largest p down makes q monotone in p
    q[order] = np.minimum(1.0, np.minimum.accumulate((p[order] * scale)[::-1])[::-1])
    return q


def bh(p) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values): FDR control under independence or
    positive dependence.

    Parameters
    ----------
    p : array-like of shape (n_features,)
        p-values in [0, 1]; NaN for untested features.

    Returns
    -------
    numpy.ndarray of float64, shape (n_features,)
        ``q``; NaN where ``p`` is NaN, and those entries do not count in ``m``.
    """
    return _step_up(p, dependence_factor=False)


def bh_rows(p) -> np.ndarray:
    """Benjamini–Hochberg q-values within each row of a 2-D array (one family per row, e.g.
    the gene sets of one feature), all rows at once; NaN stays NaN and is not counted in m."""
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p, axis=1, kind="stable")  # NaN sorts last
    ps = np.take_along_axis(p, order, axis=1)
    m = (~np.isnan(p)).sum(axis=1, keepdims=True)
    adj = np.where(np.isnan(ps), np.inf, ps * m / np.arange(1, p.shape[1] + 1))
    # the running minimum from the largest p down keeps q monotone in p
    adj = np.minimum(1.0, np.minimum.accumulate(adj[:, ::-1], axis=1)[:, ::-1])
    adj[np.isnan(ps)] = np.nan
    q = np.empty_like(p)
    np.put_along_axis(q, order, adj, axis=1)
    return q


def by(p) -> np.ndarray:
    """Benjamini–Yekutieli adjusted p-values: FDR control under any dependence (BH times
    ``sum(1/i, i=1..m)``).

    Parameters
    ----------
    p : array-like of shape (n_features,)
        p-values in [0, 1]; NaN for untested features.

    Returns
    -------
    numpy.ndarray of float64, shape (n_features,)
        ``q``; NaN where ``p`` is NaN, and those entries do not count in ``m``.
    """
    return _step_up(p, dependence_factor=True)


def westfall_young(observed_p, permuted_p: Callable[[np.ndarray], np.ndarray], *,
                   n_permutations: int, seed=0, strata=None, n_subjects: int,
                   method: str = "single-step",
                   progress: bool = True) -> tuple[np.ndarray, float]:
    """Family-wise error adjusted p-values by permutation of the subjects (Westfall–Young min-P).

    Permuting the outcome keeps the dependence between features, so the adjustment is
    exact-in-distribution whatever their correlation. With p-values from one null
    distribution (e.g. t-tests of equal degrees of freedom) min-P equals max-T.

    Parameters
    ----------
    observed_p : array-like of shape (n_features,)
        p-values of the test on the data; NaN features are left out of the family.
    permuted_p : callable
        ``permuted_p(idx) -> array of shape (n_features,)``: the same test's p-values with
        the outcome's rows permuted by ``idx`` (``outcome.take(idx)``). NaN entries are
        ignored.
    n_permutations : int
        Number of permutations ``B``.
    seed : int or None
        Seed of the permutations (:func:`bioviz.analysis.resample.permutations`).
    strata : array-like of shape (n_subjects,), optional
        Permute within strata.
    n_subjects : int
        Number of subjects (length of the outcome).
    method : {"single-step", "stepdown"}
        ``"single-step"``: ``p_i = (1 + #{b : min_j p*_bj <= p_i}) / (B + 1)``.
        ``"stepdown"``: Westfall & Young (1993) Algorithm 2.8: the feature with the
        ``k``-th smallest p is compared with the minimum over the features from rank ``k``
        on, then monotonicity is enforced; never larger than single-step, more power.
    progress : bool
        Show a progress bar.

    Returns
    -------
    p_fwer : numpy.ndarray of float64, shape (n_features,)
        Family-wise adjusted p-values; NaN where ``observed_p`` is NaN.
    floor : float
        ``1 / (B + 1)``, the smallest adjusted p the permutations can give.

    Notes
    -----
    Keeps one minimum per permutation (single-step) or one count per feature (step-down),
    never the ``B × n_features`` permuted p-values.
    """
    p = _check_p(observed_p, "observed_p")
    n_permutations = positive_int(n_permutations, "n_permutations")
    n_subjects = positive_int(n_subjects, "n_subjects")
    if method not in ("single-step", "stepdown"):
        raise InputError(f"method must be 'single-step' or 'stepdown', got {method!r}")
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]  # family, smallest observed p first
    reach = p[order] * _TIE
    minima = np.empty(n_permutations)
    hits = np.zeros(len(order), dtype=np.int64)
    perms = permutations(n_subjects, strata=strata, n_permutations=n_permutations, seed=seed)
    for b, idx in enumerate(tqdm(perms, total=n_permutations, desc="permutations",
                                 disable=not progress)):
        pb = np.asarray(permuted_p(idx), dtype=np.float64)
        if pb.shape != p.shape:
            raise InputError(f"permuted_p returned shape {pb.shape} on permutation {b}; "
                             f"observed_p has shape {p.shape}")
        # NaN never reaches anything: +inf leaves it out of every minimum
        pb = np.where(np.isnan(pb), np.inf, pb)[order]
        if method == "single-step":
            minima[b] = pb.min(initial=np.inf)
        else:
            hits += np.minimum.accumulate(pb[::-1])[::-1] <= reach
    if method == "single-step":
        hits = np.searchsorted(np.sort(minima), reach, side="right")
    adjusted = (1 + hits) / (n_permutations + 1)
    if method == "stepdown":
        adjusted = np.maximum.accumulate(adjusted)
    p_fwer = np.full_like(p, np.nan)
    p_fwer[order] = adjusted
    return p_fwer, 1 / (n_permutations + 1)
