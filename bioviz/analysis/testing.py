"""Which tests a label gets, how each is run, permuted and resampled: one place, so the
association table, Westfall–Young, bootstraps and stability treat every test alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from . import stats, survival
from .result import Outcome, TestResult

#: the tests each kind of label can get; the first of DEFAULT is the primary test unless
#: covariates are given (then the covariate model is: see :func:`primary`)
AVAILABLE = {
    "binary": ("mann_whitney", "linear", "logistic"),
    "continuous": ("spearman", "linear"),
    "categorical": ("kruskal", "one_vs_rest"),
    "survival": ("cox", "logrank"),
}
DEFAULT = {
    "binary": ("mann_whitney", "linear"),
    "continuous": ("spearman", "linear"),
    "categorical": ("kruskal", "one_vs_rest"),
    "survival": ("cox", "logrank"),
}
#: tests that adjust for covariates (and Cox: strata); the others ignore them
ADJUSTED = {"linear", "logistic", "cox"}


def primary(kind: str, tests: tuple[str, ...], adjusted: bool) -> str:
    """The test a candidate is called on: the covariate model when there are covariates (an
    unadjusted rank test would call confounded features), else the rank test."""
    if adjusted:
        for name in tests:
            if name in ADJUSTED:
                return name
    return tests[0]


@dataclass
class Contrast:
    """One family of tests: a test of one label (one level of it for one-vs-rest)."""

    label: str
    contrast: str
    kind: str
    test: str
    outcome: Outcome     # binary for one-vs-rest: level vs the rest
    run: Callable[[np.ndarray, Outcome, np.ndarray | None, np.ndarray | None], TestResult]

    def __call__(self, X, idx=None, *, covariates=None, strata=None, outcome=None) -> TestResult:
        """The test on the subjects ``idx`` (all when None); ``outcome`` replaces the label
        (a permuted one)."""
        out = self.outcome if outcome is None else outcome
        if idx is not None:
            X, out = X[idx], out.take(idx)
            covariates = None if covariates is None else covariates[idx]
            strata = None if strata is None else strata[idx]
        return self.run(X, out, covariates, strata)


def nan_on_refusal(fn: Callable[..., np.ndarray], m: int) -> Callable[..., np.ndarray]:
    """``fn`` for resamples: a resample the test refuses (a bootstrap whose design became
    singular, a class that vanished) gives NaN for every feature instead of stopping the run;
    the permutation and bootstrap code skips NaN."""
    def safe(*args):
        try:
            return fn(*args)
        except InputError:
            return np.full(m, np.nan)
    return safe


def _mann_whitney(X, o, c, s):
    return stats.mann_whitney(X, o.y, progress=False)


def _linear(X, o, c, s):
    return stats.linear(X, o.y.astype(float), c, progress=False)


def _logistic(X, o, c, s):
    return stats.logistic(X, o.y, c, progress=False)


def _spearman(X, o, c, s):
    return stats.spearman(X, o.y, progress=False)


def _kruskal(X, o, c, s):
    return stats.kruskal(X, o.y, progress=False)


def _cox(X, o, c, s):
    return survival.cox(X, o.y, o.event, covariates=c, strata=s, progress=False)


def _logrank(X, o, c, s):
    return survival.logrank(X, o.y, o.event, strata=s)


_RUN = {"mann_whitney": _mann_whitney, "linear": _linear, "logistic": _logistic,
        "spearman": _spearman, "kruskal": _kruskal, "cox": _cox, "logrank": _logrank}


def contrasts(outcome: Outcome, tests: tuple[str, ...]) -> list[Contrast]:
    """The families of tests for one label."""
    wrong = [t for t in tests if t not in AVAILABLE[outcome.kind]]
    if wrong:
        raise InputError(f"tests={list(wrong)} do not apply to the {outcome.kind} label "
                         f"{outcome.name!r}; choose from {list(AVAILABLE[outcome.kind])}")
    out = []
    for test in tests:
        if test == "one_vs_rest":
            for code, level in enumerate(outcome.levels):
                y = outcome.y == code
                o = Outcome(f"{outcome.name}={level}", "binary", y, ["rest", str(level)])
                out.append(Contrast(outcome.name, f"{level} vs rest", outcome.kind, "mann_whitney",
                                    o, _RUN["mann_whitney"]))
            continue
        out.append(Contrast(outcome.name, _describe(outcome, test), outcome.kind, test, outcome,
                            _RUN[test]))
    return out


def _describe(o: Outcome, test: str) -> str:
    if o.kind == "binary":
        return f"{o.levels[1]} vs {o.levels[0]}"
    if o.kind == "continuous":
        return "per SD of the label" if test == "linear" else "rank correlation"
    if o.kind == "categorical":
        return "any difference between " + ", ".join(map(str, o.levels))
    return "higher feature vs risk" if test == "cox" else "above vs below the feature's median"


def permutable(c: Contrast, X: np.ndarray, covariates: np.ndarray | None, strata: np.ndarray | None):
    """``fn(perm) -> p``: the test's p-values with the outcome permuted among subjects.

    The linear model with covariates permutes the label's residual after regressing it on
    the covariates (Smith's method, as nilearn's ``permuted_ols``), which keeps the
    covariates' own association with the feature under the null; the other tests permute
    the outcome (label, or time and event together) among subjects (within strata, which
    the caller gives to the permutation generator).
    """
    o = c.outcome
    if c.test == "linear" and covariates is not None:
        design = np.column_stack([np.ones(len(o.y)), covariates])
        y = o.y.astype(float)
        resid = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]

        def fn(perm):
            return stats.linear(X, resid[perm], covariates, progress=False).p
        return nan_on_refusal(fn, X.shape[1])

    def fn(perm):  # within strata, so the strata stay aligned with the permuted outcome
        return c.run(X, o.take(perm), covariates, strata).p
    return nan_on_refusal(fn, X.shape[1])
