"""Survival tests over all features at once: Cox proportional hazards, log-rank and Harrell's C.

Every function takes ``X`` (subjects × features, float64), the follow-up ``time`` (> 0) and
``event`` (True = event observed) of each subject. Subjects are sorted by (stratum, time) once;
the risk-set sums of every feature of a block then come from row sums between consecutive
event times and a reverse cumulative sum over those, and the Cox models of all features of a
block are fitted together by batched Newton–Raphson, so no Python loop runs over features.
Harrell's C uses a Fenwick tree per feature, updated for all features at once (O(n log n)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from ..errors import InputError
from .result import TestResult

#: memory for one block of features: the Cox risk-set sums are ~(n × block) matrices, one per
#: first and second moment of the design; blocks that stay in cache run fastest
_BLOCK_BYTES = 8 * 2**20
#: memory for the Fenwick trees of one block of features in :func:`concordance`
_TREE_BYTES = 64 * 2**20
#: the largest Newton step (in SDs of the standardised design) taken at once, so that a bad
#: first step cannot overflow exp() before the step halving sees it
_MAX_STEP = 5.0
_HALVINGS = 30
_Z975 = stats.norm.ppf(0.975)


# --------------------------------------------------------------------------- inputs


def _inputs(X, time, event, covariates=None, strata=None):
    """Validated float64 ``X``, ``time``, bool ``event``, covariates (n, c) and strata codes."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("X: expected a numeric subjects × features matrix") from None
    if X.ndim != 2:
        raise InputError(f"X: expected a 2-D subjects × features matrix, got shape {X.shape}; "
                         "reshape a single feature with X[:, None]")
    n = X.shape[0]
    bad = np.flatnonzero(~np.isfinite(X).all(axis=0))
    if bad.size:
        raise InputError(f"X: {bad.size} feature column(s) hold NaN or infinite values (columns "
                         f"{bad[:5].tolist()}); drop or impute them before testing")
    time = _vector(time, "time", n)
    try:
        time = time.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError("time: expected numeric follow-up times") from None
    rows = np.flatnonzero(~np.isfinite(time) | (time <= 0))
    if rows.size:
        raise InputError(f"time: {rows.size} subject(s) have a missing, infinite, zero or negative "
                         f"follow-up time (rows {rows[:5].tolist()}); times must be > 0 (a subject "
                         "with an event on day 0 can be given a small positive time, e.g. 0.5)")
    event = _vector(event, "event", n)
    if event.dtype != bool:
        try:
            ev = event.astype(np.float64)
        except (TypeError, ValueError):
            raise InputError("event: expected bool or 0/1 event indicators") from None
        rows = np.flatnonzero((ev != 0) & (ev != 1))
        if rows.size:
            raise InputError(f"event: expected 0/1 (or bool), found other values at rows "
                             f"{rows[:5].tolist()}; code 1 = event observed, 0 = censored")
        event = ev == 1
    if not event.any():
        raise InputError(f"event: none of the {n} subjects has an event; survival tests need at "
                         "least one observed event")
    if covariates is not None:
        try:
            covariates = np.asarray(covariates, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("covariates: expected a numeric (n, c) design (categorical "
                             "covariates one-hot encoded)") from None
        if covariates.ndim == 1:
            covariates = covariates[:, None]
        if covariates.ndim != 2 or covariates.shape[0] != n:
            raise InputError(f"covariates: expected shape ({n}, c), got {covariates.shape}")
        if not np.isfinite(covariates).all():
            raise InputError("covariates: NaN or infinite values; impute or drop those subjects")
        flat = np.flatnonzero(np.ptp(covariates, axis=0) == 0)
        if flat.size:
            raise InputError(f"covariates: column(s) {flat[:5].tolist()} are constant; drop them "
                             "(the Cox model has no intercept)")
        if covariates.shape[1] == 0:
            covariates = None
    if strata is not None:
        strata = np.asarray(strata)
        if strata.shape != (n,):
            raise InputError(f"strata: expected one stratum per subject, shape ({n},), "
                             f"got {strata.shape}")
        strata = np.unique(strata, return_inverse=True)[1].ravel()
    return X, time, event, covariates, strata


def _vector(a, name, n):
    a = np.asarray(a)
    if a.shape != (n,):
        raise InputError(f"{name}: expected one value per subject (row of X), shape ({n},), "
                         f"got {a.shape}")
    return a


# --------------------------------------------------------------------------- risk sets


@dataclass
class _Layout:
    """Subjects sorted by (stratum, time, events first) and the tied event groups of each
    stratum (one group per stratum and event time)."""

    order: np.ndarray      # (n,) subjects in that order
    strata: list[slice]    # each stratum's rows in that order
    bins: np.ndarray       # (nb + 1,) bin edges: a group's events, the rows up to the next group
    chain: np.ndarray      # (nb,) whether the next bin is in the same stratum
    group_bin: np.ndarray  # (G,) the bin of each group's events
    d: np.ndarray          # (G,) events in each group
    ev_rows: np.ndarray    # (E,) sorted rows with an event, grouped by (stratum, time)
    ev_first: np.ndarray   # (G,) where each group starts in ev_rows
    ev_group: np.ndarray   # (E,) group of each event row
    ev_frac: np.ndarray    # (E,) l / d for the l-th event of its group (Efron's weights)


def _layout(time, event, strata) -> _Layout:
    n = len(time)
    s = np.zeros(n, np.int64) if strata is None else strata
    order = np.lexsort((~event, time, s))
    t, e, s = time[order], event[order], s[order]
    new_key = np.r_[True, (s[1:] != s[:-1]) | (t[1:] != t[:-1])]
    # risk set at time t = every row of the stratum from the first row with time t onwards
    first = np.maximum.accumulate(np.where(new_key, np.arange(n), 0))
    ev_rows = np.flatnonzero(e)
    key = first[ev_rows]
    new_g = np.r_[True, key[1:] != key[:-1]]
    ev_first = np.flatnonzero(new_g)
    d = np.diff(np.r_[ev_first, len(ev_rows)])
    ev_group = np.cumsum(new_g) - 1
    ev_frac = (np.arange(len(ev_rows)) - ev_first[ev_group]) / d[ev_group]
    start = key[ev_first]
    s_start = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    bins = np.unique(np.r_[s_start, start, start + d])
    bins = bins[bins < n]
    chain = np.ones(len(bins), bool)
    chain[np.searchsorted(bins, s_start)[1:] - 1] = False
    chain[-1] = False
    s_rows = np.r_[s_start, n]
    return _Layout(order, [slice(a, b) for a, b in zip(s_rows[:-1], s_rows[1:])],
                   np.r_[bins, n], chain, np.searchsorted(bins, start), d, ev_rows, ev_first,
                   ev_group, ev_frac)


def _group_sums(A, lay: _Layout):
    """Sums of ``A`` (n, k), rows in layout order, over each event group's risk set and over
    its events: two (G, k) arrays.

    Loops over the bins: numpy's cumsum and reduceat along the rows of a wide array run
    ~10x slower than row sums and row additions.
    """
    nb = len(lay.chain)
    S = np.empty((nb, A.shape[1]))
    for k in range(nb):
        A[lay.bins[k]:lay.bins[k + 1]].sum(axis=0, out=S[k])
    at_events = S[lay.group_bin]          # a group's events fill its bin
    for k in np.flatnonzero(lay.chain)[::-1]:  # reverse cumulative sums within each stratum
        S[k] += S[k + 1]
    return S[lay.group_bin], at_events


# --------------------------------------------------------------------------- Cox


def _evaluate(beta, x, Z, lay: _Layout, efron: bool):
    """Log partial likelihood (B,), score (B, p) and information (B, p, p) of the models
    ``eta = beta[:, 0] x + Z beta[:, 1:]`` of every column of ``x`` (n, B), rows in layout order."""
    n, B = x.shape
    p = beta.shape[1]
    eta = x * beta[:, 0]
    if p > 1:
        eta += Z @ beta[:, 1:].T
    for sl in lay.strata:  # the likelihood is unchanged by a shift per stratum; exp() is not
        eta[sl] -= eta[sl].max(axis=0)
    w = np.exp(eta)
    v = [x] + [Z[:, [k]] for k in range(p - 1)]   # the design, covariates broadcast over B
    pairs = [(k, m) for k in range(p) for m in range(k, p)]
    q = 1 + p + len(pairs)
    Q = np.empty((n, q, B))   # rows first, so that the sums over risk sets add whole rows
    Q[:, 0] = w
    for k in range(p):
        np.multiply(w, v[k], out=Q[:, 1 + k])
    for i, (k, m) in enumerate(pairs):
        np.multiply(Q[:, 1 + k], v[m], out=Q[:, 1 + p + i])
    R, D = _group_sums(Q.reshape(n, q * B), lay)
    R, D = R.reshape(-1, q, B), D.reshape(-1, q, B)
    # the l-th of d tied events sees the risk set less l/d of the tied events (Efron); the
    # first moments go per event, the second ones per group, as lifelines does
    tied = efron and lay.d.max() > 1
    M = R[lay.ev_group, :p + 1]
    if tied:
        M -= lay.ev_frac[:, None, None] * D[lay.ev_group, :p + 1]
    inv = 1.0 / M[:, 0]
    ev = lay.ev_rows
    ll = eta[ev].sum(axis=0) + np.log(inv).sum(axis=0)
    mean = M[:, 1:] * inv[:, None]
    score = np.empty((B, p))
    score[:, 0] = x[ev].sum(axis=0)
    score[:, 1:] = Z[ev].sum(axis=0)
    score -= mean.sum(axis=0).T
    a0 = np.add.reduceat(inv, lay.ev_first, axis=0)
    if tied:
        a1 = np.add.reduceat(lay.ev_frac[:, None] * inv, lay.ev_first, axis=0)
    info = np.empty((B, p, p))
    for i, (k, m) in enumerate(pairs):
        second = (R[:, 1 + p + i] * a0).sum(axis=0)
        if tied:
            second -= (D[:, 1 + p + i] * a1).sum(axis=0)
        info[:, k, m] = info[:, m, k] = second - (mean[:, k] * mean[:, m]).sum(axis=0)
    return ll, score, info


def _solve(info, score, n_events):
    """Newton steps ``info⁻¹ score`` and whether each information matrix is usable: a
    near-singular one (a feature without information, collinear with the covariates, or whose
    likelihood is monotone) has no step."""
    diag = np.diagonal(info, axis1=1, axis2=2)
    ok = (diag > 1e-10 * n_events).all(axis=1) & np.isfinite(info).all(axis=(1, 2)) \
        & np.isfinite(score).all(axis=1)
    scale = np.sqrt(np.where(ok[:, None], diag, 1.0))
    corr = info / scale[:, :, None] / scale[:, None, :]
    ok &= np.linalg.eigvalsh(corr)[:, 0] > 1e-10
    step = np.full(score.shape, np.nan)
    if ok.any():
        step[ok] = np.linalg.solve(corr[ok], (score[ok] / scale[ok])[..., None])[..., 0] \
            / scale[ok]
    ok &= np.isfinite(step).all(axis=1)
    return step, ok


def _fit(x, Z, lay: _Layout, efron: bool, max_iter: int, tol: float):
    """Batched Newton–Raphson with step halving: coefficients (B, p), information (B, p, p)
    and convergence (B,) of every column of ``x``'s model."""
    B = x.shape[1]
    p = 1 + Z.shape[1]
    n_events = len(lay.ev_rows)
    beta = np.zeros((B, p))
    ll, score, info = _evaluate(beta, x, Z, lay, efron)
    state = np.zeros(B, np.int8)          # 0 running, 1 converged, -1 failed
    ll_change = np.full(B, np.inf)
    for _ in range(max_iter):
        act = np.flatnonzero(state == 0)
        if act.size == 0:
            break
        step, ok = _solve(info[act], score[act], n_events)
        state[act[~ok]] = -1
        act, step = act[ok], step[ok]
        size = np.abs(step).max(axis=1)
        # a monotone likelihood keeps taking steps of ~1 SD while its log-likelihood levels
        # off, so a small change of the likelihood alone does not count as converged
        done = (size < tol) | ((size < np.sqrt(tol)) & (ll_change[act] < tol))
        beta[act[done]] += step[done]
        state[act[done]] = 1
        act, step, size = act[~done], step[~done], size[~done]
        step *= np.minimum(1.0, _MAX_STEP / size)[:, None]
        for _ in range(_HALVINGS):
            if act.size == 0:
                break
            cand = beta[act] + step
            ll_c, score_c, info_c = _evaluate(cand, x[:, act], Z, lay, efron)
            up = np.isfinite(ll_c) & (ll_c >= ll[act] - 1e-12 * np.abs(ll[act]))
            take = act[up]
            ll_change[take] = np.abs(ll_c[up] - ll[take]) / np.maximum(np.abs(ll[take]), 1.0)
            beta[take], ll[take] = cand[up], ll_c[up]
            score[take], info[take] = score_c[up], info_c[up]
            act, step = act[~up], step[~up] / 2
        state[act] = -1  # no step raised the likelihood
    return beta, info, state == 1


def cox(X, time, event, covariates=None, strata=None, ties: str = "efron", max_iter: int = 50,
        tol: float = 1e-9, progress: bool = True) -> TestResult:
    """Cox proportional-hazards test of every feature, adjusted for covariates, stratified.

    For each feature ``j`` fits the model with the feature (standardised to mean 0, SD 1) plus
    the covariates by Newton–Raphson on the partial likelihood; all features of a block are
    fitted together. Coefficients equal lifelines' ``CoxPHFitter(penalizer=0)`` (and
    statsmodels' ``PHReg``) on the same data.

    Parameters
    ----------
    X : array (n_subjects, n_features)
        One row per subject.
    time : array (n_subjects,)
        Follow-up time, > 0.
    event : array (n_subjects,)
        True (or 1) when the event was observed, False (0) when censored.
    covariates : array (n_subjects, c), optional
        Adjustment covariates without intercept (categorical ones one-hot encoded).
    strata : array (n_subjects,), optional
        Stratum of each subject: each stratum has its own baseline hazard.
    ties : {"efron", "breslow"}
        Approximation of the partial likelihood at tied event times (lifelines uses Efron).
    max_iter : int
        Newton iterations per feature before it counts as not converged.
    tol : float
        Convergence: the Newton step of every coefficient, in SDs of the standardised design.
    progress : bool
        Show a progress bar over blocks of features.

    Returns
    -------
    TestResult
        ``test="cox"``, ``effect`` = log hazard ratio per SD (sample SD, ``ddof=1``) of the
        feature, ``statistic`` = its Wald z, two-sided Wald ``p`` and 95% ``ci_low``/``ci_high``
        of the effect; ``extra``: ``coef`` and ``se`` per raw unit of the feature,
        ``converged``, and ``c_index`` (:func:`concordance`). Constant features, features
        without information (collinear with the covariates or strata) and features whose
        likelihood does not converge (a monotone likelihood: the feature orders the events
        perfectly, so the MLE is infinite) get NaN everywhere but ``c_index`` and
        ``converged=False``.
    """
    if ties not in ("efron", "breslow"):
        raise InputError(f"ties={ties!r}: expected 'efron' (lifelines' default) or 'breslow'")
    if int(max_iter) < 1 or not tol > 0:
        raise InputError(f"max_iter={max_iter}, tol={tol}: expected max_iter >= 1 and tol > 0")
    X, time, event, covariates, strata = _inputs(X, time, event, covariates, strata)
    n, f = X.shape
    lay = _layout(time, event, strata)
    if covariates is None:
        Z = np.empty((n, 0))
    else:  # centred and scaled for a well-conditioned Newton step; only the feature is reported
        Z = covariates[lay.order]
        Z = (Z - Z.mean(axis=0)) / Z.std(axis=0)
    p = 1 + Z.shape[1]
    sd = X.std(axis=0, ddof=1) if n > 1 else np.zeros(f)
    live = sd > 0
    coef_sd = np.full(f, np.nan)
    se_sd = np.full(f, np.nan)
    converged = np.zeros(f, bool)
    q = 1 + p + p * (p + 1) // 2   # moments: w, w v, w v v'
    per_feature = 8 * ((n + 2 * len(lay.d)) * q + 3 * len(lay.ev_rows) * (p + 1) + 4 * n)
    block = max(1, _BLOCK_BYTES // per_feature)
    cols = np.flatnonzero(live)
    Xs = X[lay.order]
    for lo in tqdm(range(0, cols.size, block), desc="cox", unit="block", disable=not progress):
        c = cols[lo:lo + block]
        x = (Xs[:, c] - Xs[:, c].mean(axis=0)) / sd[c]
        # a diverging (monotone) fit can overflow exp() or 1/denominator: such a step has a
        # non-finite likelihood and is halved, so the warnings say nothing
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            beta, info, ok = _fit(x, Z, lay, ties == "efron", int(max_iter), tol)
        converged[c] = ok
        if ok.any():
            cov = np.linalg.inv(info[ok])
            coef_sd[c[ok]] = beta[ok, 0]
            se_sd[c[ok]] = np.sqrt(cov[:, 0, 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        z = coef_sd / se_sd
        return TestResult(
            test="cox", effect_name="log_hr_per_sd", null=0.0,
            statistic=z, p=2 * stats.norm.sf(np.abs(z)), effect=coef_sd,
            ci_low=coef_sd - _Z975 * se_sd, ci_high=coef_sd + _Z975 * se_sd,
            extra={"coef": coef_sd / sd, "se": se_sd / sd, "converged": converged,
                   "c_index": concordance(X, time, event)})


# --------------------------------------------------------------------------- log-rank


def logrank(X, time, event, strata=None) -> TestResult:
    """Log-rank test of subjects above each feature's median against the rest.

    Per feature, subjects with the feature above its median form the "high" group, the others
    the "low" group; features where one group would be empty get NaN. With ``strata`` the
    stratified test (per-stratum observed-minus-expected and variances summed, as R's
    ``survdiff(... + strata(s))``).

    Parameters
    ----------
    X : array (n_subjects, n_features)
    time : array (n_subjects,)
        Follow-up time, > 0.
    event : array (n_subjects,)
        True (or 1) when the event was observed.
    strata : array (n_subjects,), optional

    Returns
    -------
    TestResult
        ``test="logrank"``, ``statistic`` = chi-square (1 df) and its ``p`` (equal to
        ``lifelines.statistics.logrank_test(T_high, T_low, E_high, E_low)``), ``effect`` = log
        of the Peto hazard ratio ``(O_high/E_high) / (O_low/E_low)`` (±inf when one group has
        no events); ``extra``: ``observed_high``, ``expected_high``, ``n_high``.
    """
    X, time, event, _, strata = _inputs(X, time, event, None, strata)
    n = X.shape[0]
    lay = _layout(time, event, strata)
    high = X[lay.order] > np.median(X, axis=0)
    n_high = high.sum(axis=0)
    n_t = _group_sums(np.ones((n, 1)), lay)[0][:, 0]
    d_t = lay.d.astype(np.float64)
    n_h, d_h = _group_sums(high.astype(np.float64), lay)
    o_h = d_h.sum(axis=0)
    e_h = (n_h * (d_t / n_t)[:, None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        v_t = np.where(n_t > 1, d_t * (n_t - d_t) / (n_t**2 * (n_t - 1)), 0.0)
        var = (n_h * (n_t[:, None] - n_h) * v_t[:, None]).sum(axis=0)
        chi2 = (o_h - e_h) ** 2 / var
        o_l, e_l = d_t.sum() - o_h, d_t.sum() - e_h
        effect = np.log(o_h / e_h) - np.log(o_l / e_l)
    bad = (n_high == 0) | (n_high == n) | ~(var > 0)
    chi2[bad] = effect[bad] = np.nan
    return TestResult(test="logrank", effect_name="log_hr_high_vs_low", null=0.0,
                      statistic=chi2, p=stats.chi2.sf(chi2, 1), effect=effect,
                      extra={"observed_high": o_h, "expected_high": e_h, "n_high": n_high})


# --------------------------------------------------------------------------- concordance


def concordance(X, time, event) -> np.ndarray:
    """Harrell's C of every feature, read as a risk score: higher feature = earlier event.

    A pair is comparable when the subject with the shorter time had the event (and a censored
    subject with the same time as an event counts as having outlived it); it is concordant
    when that subject has the higher feature value, and a tie in the feature counts one half.
    C > 0.5: subjects with higher values have their events earlier. Equals
    ``1 - lifelines.utils.concordance_index(time, x, event)`` (lifelines reads its score as
    predicted survival time).

    Parameters
    ----------
    X : array (n_subjects, n_features)
    time : array (n_subjects,)
    event : array (n_subjects,)

    Returns
    -------
    ndarray (n_features,)
        NaN when no pair is comparable.
    """
    X, time, event, _, _ = _inputs(X, time, event)
    n, f = X.shape
    if f == 0:
        return np.empty(0)
    t = np.sort(time)
    t_cens = np.sort(time[~event])
    t_ev = time[event]
    pairs = (n - np.searchsorted(t, t_ev, side="right")).sum() \
        + (np.searchsorted(t_cens, t_ev, side="right")
           - np.searchsorted(t_cens, t_ev, side="left")).sum()
    if pairs == 0:
        return np.full(f, np.nan)
    order = np.argsort(-time, kind="stable")
    block = max(1, _TREE_BYTES // (16 * (n + 2)))
    signs = np.concatenate([_sign_sums(X[order, lo:lo + block], time[order], event[order])
                            for lo in range(0, f, block)])
    # concordant + tied / 2 = (pairs + concordant - discordant) / 2
    return (pairs + signs) / 2 / pairs


def _sign_sums(X, t, e) -> np.ndarray:
    """Per column of ``X`` (rows in decreasing time): the sum, over each event i and every
    subject j with ``t_j >= t_i``, of ``sign(x_i - x_j)``.

    With ``>=``, two events at the same time count each other with opposite signs, which
    cancel, so the sum is exactly concordant minus discordant comparable pairs. The counts
    come from a Fenwick tree per column over the feature's ranks, filled in decreasing time
    and vectorised over the columns: O(n log n) per feature.
    """
    n, f = X.shape
    r = _dense_ranks(X)                    # 1..n
    levels = int(n).bit_length()
    cols = np.arange(f)
    tree = np.zeros((n + 2) * f, np.int64)  # row n + 1 absorbs updates past the last rank
    same = np.zeros((n + 1) * f, np.int64)  # subjects inserted so far with each rank
    total = np.zeros(f, np.int64)
    cuts = np.r_[0, np.flatnonzero(t[1:] != t[:-1]) + 1, n]
    for a, b in zip(cuts[:-1], cuts[1:]):  # tied times go in together: each sees the others
        idx = r[a:b]
        np.add.at(same, (idx * f + cols).ravel(), 1)
        for _ in range(levels):
            np.add.at(tree, (idx * f + cols).ravel(), 1)
            idx = np.minimum(idx + (idx & -idx), n + 1)
        q = r[a:b][e[a:b]]
        if q.size:
            eq = same[q * f + cols]
            less = np.zeros(q.shape, np.int64)
            idx = q - 1
            for _ in range(levels):
                less += tree[idx * f + cols]
                idx -= idx & -idx
            # less - greater, where greater = (subjects inserted) - less - equal
            total += (2 * less + eq).sum(axis=0) - q.shape[0] * b
    return total


def _dense_ranks(X) -> np.ndarray:
    """Ranks 1, 2, ... of each column's distinct values (ties share a rank)."""
    Xt = np.ascontiguousarray(X.T)  # sorting along contiguous rows is several times faster
    o = np.argsort(Xt, axis=1)
    xs = np.take_along_axis(Xt, o, axis=1)
    step = np.ones(Xt.shape, np.int64)
    step[:, 1:] = xs[:, 1:] != xs[:, :-1]
    r = np.empty(Xt.shape, np.int64)
    np.put_along_axis(r, o, np.cumsum(step, axis=1), axis=1)
    return np.ascontiguousarray(r.T)
