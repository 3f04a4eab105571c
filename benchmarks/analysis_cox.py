"""Cox models of every feature: bioviz's batched fit against a loop of lifelines' CoxPHFitter,
side by side on the same synthetic cohort, in the same process.

    PYTHONPATH=. python -c 'import sys; sys.path.insert(0, "benchmarks"); \
from analysis_cox import cox_vs_lifelines; print(cox_vs_lifelines())'

The cohort: ``n_subjects`` subjects, ``n_features`` SAE-like features (half dense Gaussian,
half sparse non-negative like TopK/ReLU activations, mostly zero), ``n_covariates``
covariates (the first continuous, the second binary, further ones continuous), and a few
planted features that change the hazard. Event times are exponential given the linear
predictor, censored by an independent uniform follow-up, and rounded up to whole months, so
tied times are common.

bioviz fits all ``n_features`` models at once (``bioviz.analysis.survival.cox``, Efron ties,
feature + covariates); lifelines fits ``n_sample`` of them one by one, ``CoxPHFitter()`` with
its defaults (penalizer 0, Efron ties), as a user would. Wall-clock time per feature on each
side gives ``cox_vs_lifelines_speedup``; bioviz's time includes its Harrell's C of every
feature, which the lifelines loop does not compute.

``cox_vs_lifelines_max_rel_diff`` compares the feature's coefficient with lifelines fitted to
full convergence (``precision=1e-12, r_precision=1e-14``; not timed): lifelines' default
stops when the log-likelihood changes by < 1e-9 relative, which leaves coefficients near 0
off the maximum-likelihood estimate by up to ~1e-3 relative (statsmodels' PHReg and bioviz
agree with each other to ~1e-12 there). ``cox_vs_lifelines_default_max_rel_diff`` reports
the difference from lifelines' default fit, for the record.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

KEYS = ("cox_vs_lifelines_speedup", "cox_vs_lifelines_max_rel_diff")
_PLANTED = {0: 0.6, 1: -0.4, 2: 0.3}   # feature -> log hazard ratio per SD


def _say(msg: str) -> None:
    print(f"# analysis_cox: {msg}", file=sys.stderr, flush=True)


def synthetic_cohort(n_features: int, n_subjects: int, n_covariates: int, seed: int):
    """``X`` (n, f), ``time``, ``event``, ``covariates`` (n, c) of a censored cohort with
    tied times and the planted features of ``_PLANTED``."""
    rng = np.random.default_rng(seed)
    n = n_subjects
    X = rng.normal(size=(n, n_features))
    sparse = np.arange(n_features) % 2 == 1
    X[:, sparse] = np.maximum(X[:, sparse] - 1.0, 0.0) * rng.gamma(2.0, 1.0, (n, sparse.sum()))
    cov = rng.normal(size=(n, n_covariates))
    if n_covariates > 1:
        cov[:, 1] = rng.random(n) < 0.5
    lp = sum(b * (X[:, j] - X[:, j].mean()) / X[:, j].std() for j, b in _PLANTED.items()
             if j < n_features)
    if n_covariates:
        lp = lp + 0.3 * cov[:, 0]
    t_event = rng.exponential(size=n) * np.exp(-lp) * 24.0
    t_censor = rng.uniform(6.0, 60.0, n)
    months = np.ceil(np.minimum(t_event, t_censor))          # whole months: ties
    event = t_event <= t_censor
    return X, months, event, cov


def cox_vs_lifelines(n_features: int = 2_000, n_subjects: int = 500, n_covariates: int = 2,
                     n_sample: int = 40, seed: int = 0) -> dict:
    """Per-feature speed and agreement of bioviz's Cox fits against lifelines'.

    Returns
    -------
    dict
        ``cox_vs_lifelines_speedup`` (lifelines' seconds per feature / bioviz's),
        ``cox_vs_lifelines_max_rel_diff`` (max relative difference of the feature's
        coefficient over the sampled features, against lifelines at full convergence),
        ``cox_vs_lifelines_default_max_rel_diff`` (the same against lifelines' defaults).
    """
    from lifelines import CoxPHFitter

    from bioviz.analysis.survival import cox

    X, months, event, cov = synthetic_cohort(n_features, n_subjects, n_covariates, seed)
    _say(f"{n_subjects} subjects ({event.sum()} events, {len(np.unique(months))} distinct "
         f"times), {n_features} features, {n_covariates} covariates")

    t0 = time.perf_counter()
    res = cox(X, months, event, covariates=cov, progress=True)
    t_bioviz = (time.perf_counter() - t0) / n_features
    _say(f"bioviz: {t_bioviz * 1e3:.3f} ms per feature "
         f"({int(res.extra['converged'].sum())}/{n_features} converged)")

    rng = np.random.default_rng(seed + 1)
    planted = [j for j in _PLANTED if j < n_features]
    others = rng.choice(np.arange(len(planted), n_features), n_sample - len(planted),
                        replace=False)
    sample = np.r_[planted, others][:n_sample].astype(int)
    names = [f"c{k}" for k in range(n_covariates)]
    base = pd.DataFrame(cov, columns=names).assign(T=months, E=event)
    fits, tight = [], []
    t_lifelines = 0.0
    for j in tqdm(sample, desc="lifelines", unit="feature"):
        df = base.assign(x=X[:, j])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            fits.append(CoxPHFitter().fit(df, "T", "E").params_["x"])
            t_lifelines += time.perf_counter() - t0
            tight.append(CoxPHFitter().fit(df, "T", "E", fit_options={
                "precision": 1e-12, "r_precision": 1e-14}).params_["x"])
    t_lifelines /= len(sample)
    _say(f"lifelines: {t_lifelines * 1e3:.2f} ms per feature")

    ours = res.extra["coef"][sample]
    for j, b, ref in zip(sample[:8], ours, tight):
        _say(f"feature {j}: bioviz {b:+.8f}  lifelines {ref:+.8f}")
    return {
        "cox_vs_lifelines_speedup": t_lifelines / t_bioviz,
        "cox_vs_lifelines_max_rel_diff": float(np.max(np.abs(ours - tight) / np.abs(tight))),
        "cox_vs_lifelines_default_max_rel_diff":
            float(np.max(np.abs(ours - fits) / np.abs(fits))),
    }


def run() -> dict:
    return cox_vs_lifelines()


if __name__ == "__main__":
    print(cox_vs_lifelines())
