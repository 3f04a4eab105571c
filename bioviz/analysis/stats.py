"""Association tests of subject-level features against one clinical label, vectorised over
features: the rank tests (Mann–Whitney, Spearman, Kruskal–Wallis) and the covariate models
(linear and logistic regression), whose design is shared by every feature.

Each function takes ``X`` (subjects × features, float64) and returns a
:class:`~bioviz.analysis.result.TestResult` with one entry per column of ``X``. A
degenerate feature (a constant column, e.g. never firing) gets a NaN p-value, never 0.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import linalg, special
from scipy.stats import chi2, norm
from scipy.stats import t as student_t
from tqdm.auto import tqdm

from ..errors import InputError
from .result import TestResult

__all__ = ["mann_whitney", "spearman", "kruskal", "linear", "logistic"]

_Z975 = norm.ppf(0.975)
#: elements (subjects × features) of one block of the regression models: 32 MiB of float64
#: per temporary, so 20k features × 2k subjects never hold several copies of X at once
_BLOCK_ELEMENTS = 1 << 22
#: a design whose scaled singular values span more than this is treated as collinear: the
#: coefficients would be noise amplified by > 1e10
_COLLINEAR = 1e-10


# --- inputs ----------------------------------------------------------------------------------

def _features(X, check_finite: bool = True) -> np.ndarray:
    if sp.issparse(X):
        X = X.toarray()
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"X must be a numeric (subjects × features) matrix; it cannot be "
                         f"read as float64 ({e})") from None
    if X.ndim != 2:
        raise InputError(f"X must be 2-D (subjects × features), got shape {X.shape}")
    if X.shape[0] < 3:
        raise InputError(f"X has {X.shape[0]} subjects (rows); a test needs at least 3")
    finite = np.isfinite(X) if check_finite else True
    if not np.all(finite):
        r, c = np.argwhere(~finite)[0]
        raise InputError(f"X has {int((~finite).sum())} NaN or infinite values (first at subject "
                         f"row {r}, feature column {c}); impute or drop them before testing")
    return X


def _vector(v, n: int, name: str) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 1 or len(v) != n:
        raise InputError(f"{name} must be 1-D with one value per subject (the {n} rows of X), "
                         f"got shape {v.shape}")
    if v.dtype.kind not in "biuf":
        raise InputError(f"{name} must be numeric, got dtype {v.dtype}")
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise InputError(f"{name} has {int((~np.isfinite(v)).sum())} NaN or infinite values; "
                         "drop those subjects (rows of X too) before testing")
    return v


def _binary(y, n: int, name: str = "y") -> np.ndarray:
    y = _vector(y, n, name)
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise InputError(f"{name} must be boolean (True = case) or 0/1, got values "
                             f"{np.unique(y)[:5].tolist()}")
        y = y.astype(bool)
    n1 = int(y.sum())
    if n1 == 0 or n1 == n:
        raise InputError(f"{name} has only one level ({n1} cases of {n} subjects); a binary "
                         "test needs subjects in both groups")
    return y


def _continuous(y, n: int, name: str = "y") -> np.ndarray:
    y = _vector(y, n, name).astype(np.float64)
    if np.ptp(y) == 0:
        raise InputError(f"{name} is constant ({y[0]!r} for every subject); nothing to test")
    return y


def _covariates(covariates, n: int, names) -> tuple[np.ndarray, list[str]]:
    if covariates is None:
        return np.empty((n, 0)), []
    try:
        C = np.asarray(covariates, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"covariates must be a numeric (subjects × covariates) matrix, one-hot "
                         f"for categorical ones ({e})") from None
    if C.ndim == 1:
        C = C[:, None]
    if C.ndim != 2 or len(C) != n:
        raise InputError(f"covariates must have one row per subject (the {n} rows of X), got "
                         f"shape {C.shape}")
    names = [f"covariate {j}" for j in range(C.shape[1])] if names is None else list(names)
    if len(names) != C.shape[1]:
        raise InputError(f"names has {len(names)} entries but covariates has {C.shape[1]} columns")
    bad = ~np.isfinite(C).all(axis=0)
    if bad.any():
        raise InputError(f"covariates {[names[j] for j in np.flatnonzero(bad)]} have NaN or "
                         "infinite values; impute them or drop those subjects")
    return C, names


def _full_rank(D: np.ndarray) -> bool:
    # columns scaled to unit norm, so age in days and a 0/1 indicator weigh alike
    norms = np.linalg.norm(D, axis=0)
    if (norms == 0).any():
        return False
    s = np.linalg.svd(D / norms, compute_uv=False)
    return s[-1] > _COLLINEAR * s[0]


def _check_design(C: np.ndarray, names: list[str], y: np.ndarray | None, n: int) -> None:
    """Refuse a design whose coefficients are not identified, naming the culprit column."""
    base = np.ones((n, 1))
    for j in range(C.shape[1]):
        nxt = np.column_stack([base, C[:, j]])
        if not _full_rank(nxt):
            what = ("is constant" if np.ptp(C[:, j]) == 0 else
                    f"is collinear with the intercept and {names[:j]}" if j else
                    "is collinear with the intercept")
            raise InputError(f"covariate {names[j]!r} {what}: the model cannot separate their "
                             "effects; drop it (or the reference level of a one-hot covariate)")
        base = nxt
    if y is not None and not _full_rank(np.column_stack([base, y])):
        raise InputError(f"the label y is collinear with the intercept and covariates {names}: "
                         "its effect cannot be separated from theirs; drop the covariate that "
                         "duplicates the label")
    if n <= base.shape[1] + 1:
        raise InputError(f"{n} subjects cannot fit a model with {base.shape[1] + 1} coefficients "
                         "and estimate its error; use fewer covariates")


# --- ranks ------------------------------------------------------------------------------------

def _rank(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average ranks of every column (1-based, as scipy.stats.rankdata), the tie term
    sum(t^3 - t) over each column's tie groups, and the number of distinct values."""
    n, m = X.shape
    # features as contiguous rows: sorting along the last axis is several times faster
    XT = np.ascontiguousarray(X.T)
    order = np.argsort(XT, axis=1, kind="stable")
    s = np.take_along_axis(XT, order, axis=1)
    new = np.ones((m, n), dtype=bool)
    np.not_equal(s[:, 1:], s[:, :-1], out=new[:, 1:])
    # every feature's row starts a tie group, so groups never span two features
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, n * m))
    RT = np.empty((m, n))
    np.put_along_axis(RT, order, np.repeat(starts % n + (counts + 1) / 2.0, counts).reshape(m, n),
                      axis=1)
    col = starts // n
    c = counts.astype(np.float64)
    ties = np.bincount(col, weights=c ** 3 - c, minlength=m)
    return RT.T, ties, np.bincount(col, minlength=m)


def _blocks(n: int, m: int, progress: bool, desc: str):
    """Slices of the m feature columns, about _BLOCK_ELEMENTS values (n per column) each."""
    step = max(1, _BLOCK_ELEMENTS // max(n, 1))
    starts = range(0, m, step)
    # one block: no bar (the permutation loops call these tests thousands of times)
    bar = tqdm(starts, desc=desc, unit="block", disable=not progress or len(starts) < 2)
    for a in bar:
        yield slice(a, min(a + step, m))


def mann_whitney(X, y, *, progress: bool = True) -> TestResult:
    """Mann–Whitney U test of every feature between cases and controls.

    Two-sided asymptotic p-values with the tie and continuity corrections, equal to
    ``scipy.stats.mannwhitneyu(x[y], x[~y], method="asymptotic")`` column by column.

    Parameters
    ----------
    X : array-like of shape (n_subjects, n_features)
        Feature values, one row per subject.
    y : array-like of bool, shape (n_subjects,)
        True for cases (the label's case level); 0/1 is accepted.
    progress : bool
        Show a progress bar over feature blocks (only when there is more than one).

    Returns
    -------
    TestResult
        ``statistic`` = U of the cases; ``effect`` = AUROC = U / (n_cases n_controls), above
        0.5 when the feature is higher in cases; NaN ``p`` for constant features.
    """
    X = _features(X)
    n = len(X)
    y = _binary(y, n)
    n1 = float(y.sum())
    n0 = n - n1
    u1, ties, n_unique = np.empty((3, X.shape[1]))
    for b in _blocks(n, X.shape[1], progress, "mann_whitney"):
        R, ties[b], n_unique[b] = _rank(X[:, b])
        u1[b] = y.astype(np.float64) @ R - n1 * (n1 + 1) / 2
    u = np.maximum(u1, n1 * n0 - u1)
    s = np.sqrt(n1 * n0 / 12 * ((n + 1) - ties / (n * (n - 1))))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - n1 * n0 / 2 - 0.5) / s
    p = np.clip(2 * norm.sf(z), 0, 1)
    p[n_unique < 2] = np.nan
    return TestResult("mann_whitney", "auroc", 0.5, statistic=u1, p=p, effect=u1 / (n1 * n0))


def spearman(X, y, *, progress: bool = True) -> TestResult:
    """Spearman rank correlation of every feature with a continuous label.

    Equal to ``scipy.stats.spearmanr(x, y)`` column by column (p from Student's t with
    n - 2 degrees of freedom).

    Parameters
    ----------
    X : array-like of shape (n_subjects, n_features)
        Feature values, one row per subject.
    y : array-like of float, shape (n_subjects,)
        The label.
    progress : bool
        Show a progress bar over feature blocks (only when there is more than one).

    Returns
    -------
    TestResult
        ``statistic`` and ``effect`` = rho; NaN for constant features.
    """
    X = _features(X)
    n = len(X)
    y = _continuous(y, n)
    ry = _rank(y[:, None])[0][:, 0] - (n + 1) / 2  # centred: the mean rank, ties or not
    rho, n_unique = np.empty((2, X.shape[1]))
    for b in _blocks(n, X.shape[1], progress, "spearman"):
        R, _, n_unique[b] = _rank(X[:, b])
        R -= (n + 1) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            rho[b] = (ry @ R) / np.sqrt(np.einsum("ij,ij->j", R, R) * (ry @ ry))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.clip(rho, -1, 1)
        t = rho * np.sqrt((n - 2) / ((rho + 1) * (1 - rho))).clip(0)
    p = np.clip(2 * student_t.sf(np.abs(t), n - 2), 0, 1)
    rho[n_unique < 2] = np.nan
    p[n_unique < 2] = np.nan
    return TestResult("spearman", "rho", 0.0, statistic=rho, p=p, effect=rho.copy())


def kruskal(X, codes, *, progress: bool = True) -> TestResult:
    """Kruskal–Wallis H test of every feature across the levels of a categorical label.

    Equal to ``scipy.stats.kruskal(*groups)`` column by column (tie-corrected H, chi-square
    with k - 1 degrees of freedom, k = levels present).

    Parameters
    ----------
    X : array-like of shape (n_subjects, n_features)
        Feature values, one row per subject.
    codes : array-like of int, shape (n_subjects,)
        The level of each subject; levels without subjects are left out.
    progress : bool
        Show a progress bar over feature blocks (only when there is more than one).

    Returns
    -------
    TestResult
        ``statistic`` = H; ``effect`` = epsilon squared = H / (n - 1); NaN for constant features.
    """
    X = _features(X)
    n = len(X)
    codes = _vector(codes, n, "codes")
    if codes.dtype.kind == "f" and not np.array_equal(codes, np.round(codes)):
        raise InputError("codes must be integer level codes, got non-integer values")
    levels, inv = np.unique(codes, return_inverse=True)
    k = len(levels)
    if k < 2:
        raise InputError(f"codes has {k} level with subjects; Kruskal–Wallis needs at least 2")
    G = np.zeros((n, k))
    G[np.arange(n), inv] = 1
    sizes = G.sum(axis=0)
    ssbn, ties, n_unique = np.empty((3, X.shape[1]))
    for b in _blocks(n, X.shape[1], progress, "kruskal"):
        R, ties[b], n_unique[b] = _rank(X[:, b])
        ssbn[b] = ((G.T @ R) ** 2 / sizes[:, None]).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (12.0 / (n * (n + 1)) * ssbn - 3 * (n + 1)) / (1 - ties / (n ** 3 - n))
    h[n_unique < 2] = np.nan
    p = chi2.sf(h, k - 1)
    return TestResult("kruskal", "epsilon_sq", 0.0, statistic=h, p=p, effect=h / (n - 1))


# --- regression models -------------------------------------------------------------------------

def _project(X: np.ndarray, Q: np.ndarray, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Q'X and the column sums of squares in one pass over X, 8 rows at a time: each chunk is
    read from memory once and stays in cache for the second product. (One Q'X over all of X
    reads it again for the squares; with a larger inner dimension OpenBLAS starts threads,
    which on a loaded machine run the thin product up to 20x slower.)"""
    n, m = X.shape
    QT = np.ascontiguousarray(Q.T)
    qx, ss = np.zeros((Q.shape[1], m)), np.zeros(m)
    # a bar only for matrices of several blocks: permutation loops call this thousands of times
    chunks = tqdm(range(0, n, 8), desc="linear", unit="chunk",
                  disable=not progress or n * m < 2 * _BLOCK_ELEMENTS)
    for a in chunks:
        chunk = X[a:a + 8]
        qx += QT[:, a:a + 8] @ chunk
        ss += np.einsum("ij,ij->j", chunk, chunk)
    return qx, ss


def _check_finite(X: np.ndarray, ss: np.ndarray) -> None:
    """NaN or infinity anywhere in a column makes its sum of squares non-finite."""
    bad = np.flatnonzero(~np.isfinite(ss))
    if not len(bad):
        return
    where = ~np.isfinite(X[:, bad])
    if where.any():
        r, c = np.argwhere(where)[0]
        raise InputError(f"X has {int(where.sum())} NaN or infinite values (first at subject "
                         f"row {r}, feature column {bad[c]}); impute or drop them before testing")
    raise InputError(f"X has values too large to square in float64 (feature column {bad[0]}); "
                     "rescale the features")


def linear(X, y, covariates=None, *, names: list[str] | None = None,
           progress: bool = True) -> TestResult:
    """Ordinary least squares of every feature on the label and the covariates.

    For each feature the model ``feature ~ 1 + y + covariates``; every feature shares the
    design, so one QR decomposition solves them all. Equal to statsmodels
    ``OLS(feature, add_constant([y, covariates])).fit()`` for y's coefficient.

    Parameters
    ----------
    X : array-like of shape (n_subjects, n_features)
        Feature values, one row per subject.
    y : array-like of float, shape (n_subjects,)
        The label (binary labels as 0/1).
    covariates : array-like of shape (n_subjects, n_covariates), optional
        Adjustment variables without an intercept (categorical ones one-hot, reference dropped).
    names : list of str, optional
        The covariates' names, for error messages.
    progress : bool
        Show a progress bar over the one pass through X (only for large X).

    Returns
    -------
    TestResult
        ``statistic`` = t of y's coefficient (df = n - 2 - n_covariates); ``effect`` = the
        standardised coefficient coef * sd(y) / sd(feature), with its Wald 95% interval in
        ``ci_low``/``ci_high``; ``extra``: ``coef`` and ``se`` on the feature's raw scale.
        Constant features, and features the design fits exactly, get NaN ``p``.

    Raises
    ------
    InputError
        A constant or collinear covariate, or a label collinear with the covariates (the
        message names the column).
    """
    X = _features(X, check_finite=False)  # checked in the one pass over X below
    n, m = X.shape
    y = _continuous(y, n)
    C, names = _covariates(covariates, n, names)
    _check_design(C, names, y, n)
    D = np.column_stack([np.ones(n), y, C])
    Q, R = np.linalg.qr(D)
    Rinv = linalg.solve_triangular(R, np.eye(D.shape[1]))
    df = n - D.shape[1]
    # (D'D)^-1 = R^-1 R^-T: its y entry scales every feature's residual variance
    v_y = Rinv[1] @ Rinv[1]
    qx, ss = _project(X, Q, progress)
    _check_finite(X, ss)
    coef = Rinv[1] @ qx
    # Q's first column is the intercept's 1/sqrt(n), so ||x||^2 splits into n mean^2, the
    # rest of the fit and the residual
    tss = ss - qx[0] ** 2
    rss = tss - (qx[1:] ** 2).sum(axis=0)
    const = np.zeros(m, dtype=bool)
    # where the fit (or the mean) is nearly all of ||x||^2 those differences cancel: redo the
    # columns from explicit residuals (constant columns always land here)
    redo = np.flatnonzero(np.minimum(tss, rss) <= 1e-6 * ss)
    for b in _blocks(n, len(redo), False, "linear"):
        cols = redo[b]
        Xr = X[:, cols]
        resid = Xr - Q @ qx[:, cols]
        rss[cols] = np.einsum("ij,ij->j", resid, resid)
        Xc = Xr - Xr.mean(axis=0)
        tss[cols] = np.einsum("ij,ij->j", Xc, Xc)
        const[cols] = np.ptp(Xr, axis=0) == 0  # exact: centring leaves rounding residue
    se = np.sqrt(rss / df * v_y)
    # an exact fit (rounding residue only) has no error to test against
    degenerate = const | (rss <= 1e-20 * tss)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = coef / se
        scale = y.std(ddof=1) / np.sqrt(tss / (n - 1))
    t[degenerate] = np.nan
    p = 2 * student_t.sf(np.abs(t), df)
    half = student_t.ppf(0.975, df) * se
    half[degenerate] = np.nan
    coef[const] = np.nan
    return TestResult("linear", "std_beta", 0.0, statistic=t, p=p, effect=coef * scale,
                      ci_low=(coef - half) * scale, ci_high=(coef + half) * scale,
                      extra={"coef": coef, "se": np.where(degenerate, np.nan, se)})


def _hessian(F: np.ndarray, FF: np.ndarray, Z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """D'WD per feature, D = [z, F] (the feature first, then the shared columns): (m, p, p)."""
    m, q = Z.shape[1], F.shape[1]
    H = np.empty((m, q + 1, q + 1))
    wz = w * Z
    H[:, 0, 0] = np.einsum("ij,ij->j", wz, Z)
    H[:, 0, 1:] = H[:, 1:, 0] = wz.T @ F
    H[:, 1:, 1:] = (w.T @ FF).reshape(m, q, q)
    return H


def _solve(H: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Batched H x = g; NaN rows where H is singular (separation drives weights to 0)."""
    try:
        return np.linalg.solve(H, g[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.full_like(g, np.nan)
        ok = np.linalg.cond(H) < 1 / np.finfo(float).eps
        if ok.any():
            out[ok] = _solve(H[ok], g[ok])
        return out


def _fit_logistic(F, FF, Z, y, max_iter, tol):
    """Newton–Raphson for all columns of ``Z`` at once, each until its step is below ``tol``;
    returns the coefficients (m, p) in the order [z, F...], their covariance and whether the
    fit converged.

    (Quasi-)separation needs no test of its own: the likelihood then climbs towards its limit
    at infinity, Newton's steps do not shrink (the fit never converges) or the weights of the
    subjects fitted with certainty underflow and the Hessian turns singular.
    """
    m, q = Z.shape[1], F.shape[1]
    beta = np.zeros((m, q + 1))
    converged = np.zeros(m, dtype=bool)

    def eta_of(b, cols):
        return Z[:, cols] * b[:, 0] + F @ b[:, 1:].T

    active = np.arange(m)
    for _ in range(max_iter):
        if not len(active):
            break
        Za, eta = Z[:, active], eta_of(beta[active], active)
        mu = special.expit(eta)
        w = mu * special.expit(-eta)  # mu (1 - mu) without the cancellation of 1 - mu near 1
        r = y[:, None] - mu
        g = np.column_stack([np.einsum("ij,ij->j", Za, r), r.T @ F])
        step = _solve(_hessian(F, FF, Za, w), g)
        failed = ~np.isfinite(step).all(axis=1)
        beta[active[~failed]] += step[~failed]
        done = ~failed & (np.abs(step).max(axis=1, initial=0, where=~failed[:, None]) < tol)
        converged[active[done]] = True
        active = active[~(done | failed)]
    eta = eta_of(beta, np.arange(m))
    mu = special.expit(eta)
    H = _hessian(F, FF, Z, mu * special.expit(-eta))
    cov = np.full_like(H, np.nan)
    ok = converged & (np.linalg.cond(H) < 1e12)
    if ok.any():
        cov[ok] = np.linalg.inv(H[ok])
    return beta, cov, ok


def _check_no_separation(C, names, y, max_iter, tol) -> None:
    """Refuse covariates that alone predict the label with certainty (every feature's fit
    would diverge): the model y ~ 1 + covariates, the intercept in the feature's slot."""
    FF = (C[:, :, None] * C[:, None, :]).reshape(len(C), -1)
    ok = _fit_logistic(C, FF, np.ones((len(C), 1)), y, max_iter, tol)[2]
    if not ok[0]:
        raise InputError(f"the covariates {names} predict the label with certainty for some "
                         "subjects (separation, e.g. a site or level with cases only): the "
                         "logistic model has no finite estimate; merge or drop those levels")


def logistic(X, y, covariates=None, *, max_iter: int = 50, tol: float = 1e-8,
             names: list[str] | None = None, progress: bool = True) -> TestResult:
    """Logistic regression of a binary label on every feature (standardised) and the
    covariates, all features fitted at once by batched Newton–Raphson.

    For each feature the model ``y ~ 1 + z + covariates``, z = (feature - mean) / sd. Equal
    to statsmodels ``Logit`` on the same data for well-posed features.

    Parameters
    ----------
    X : array-like of shape (n_subjects, n_features)
        Feature values, one row per subject.
    y : array-like of bool, shape (n_subjects,)
        True for cases; 0/1 is accepted.
    covariates : array-like of shape (n_subjects, n_covariates), optional
        Adjustment variables without an intercept.
    max_iter : int
        Newton iterations at most; a feature not converged by then gets NaN.
    tol : float
        Convergence when no coefficient moves by more than ``tol`` in one iteration.
    names : list of str, optional
        The covariates' names, for error messages.
    progress : bool
        Show a progress bar over feature blocks (only when there is more than one).

    Returns
    -------
    TestResult
        ``statistic`` = Wald z of the feature; ``effect`` = log odds ratio per SD of the
        feature with its Wald 95% interval; ``extra``: ``coef`` and ``se`` per raw unit of the
        feature, ``converged``. Constant features, (quasi-)separated ones (the feature, with
        the covariates, predicts some subjects' label with certainty: the estimate runs off to
        infinity) and fits not converged in ``max_iter`` get NaN statistic, effect and p, and
        ``converged`` False.
    """
    X = _features(X)
    n, m = X.shape
    y = _binary(y, n)
    C, names = _covariates(covariates, n, names)
    _check_design(C, names, None, n)
    if max_iter < 1 or not tol > 0:
        raise InputError(f"max_iter must be >= 1 and tol > 0, got {max_iter} and {tol}")
    yf = y.astype(np.float64)
    if C.shape[1]:
        _check_no_separation(C, names, yf, max_iter, tol)
    F = np.column_stack([np.ones(n), C])
    FF = (F[:, :, None] * F[:, None, :]).reshape(n, -1)
    sd = X.std(axis=0, ddof=1)
    b_z, se_z = np.full(m, np.nan), np.full(m, np.nan)
    converged = np.zeros(m, dtype=bool)
    for b in _blocks(n, m, progress, "logistic"):
        live = np.flatnonzero(np.ptp(X[:, b], axis=0) > 0) + b.start
        if not len(live):
            continue
        Z = (X[:, live] - X[:, live].mean(axis=0)) / sd[live]
        beta, cov, ok = _fit_logistic(F, FF, Z, yf, max_iter, tol)
        b_z[live[ok]] = beta[ok, 0]
        se_z[live[ok]] = np.sqrt(cov[ok, 0, 0])
        converged[live] = ok
    z = b_z / se_z
    p = 2 * norm.sf(np.abs(z))
    return TestResult("logistic", "log_or_per_sd", 0.0, statistic=z, p=p, effect=b_z,
                      ci_low=b_z - _Z975 * se_z, ci_high=b_z + _Z975 * se_z,
                      extra={"coef": b_z / sd, "se": se_z / sd, "converged": converged})
