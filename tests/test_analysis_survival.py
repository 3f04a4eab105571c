"""bioviz.analysis.survival against lifelines and statsmodels, hand-worked cases, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import survdiff

from bioviz.analysis import survival
from bioviz.errors import InputError

# lifelines' default stops once the log-likelihood changes < 1e-9 relative, which leaves
# coefficients near 0 ~1e-3 (relative) short of the maximum; these options let it converge
TIGHT = {"precision": 1e-12, "r_precision": 1e-14}


def cohort(n=150, seed=0):
    """Features (dense, 3-level, sparse non-negative, large offset and scale, planted),
    two covariates (one binary), three strata, censoring and tied times."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([
        rng.normal(size=n),
        rng.integers(0, 3, n).astype(float),
        np.maximum(rng.normal(size=n) - 0.8, 0) * 3,
        1e4 + 1e3 * rng.normal(size=n),
        rng.normal(size=n),
    ])
    cov = np.column_stack([rng.normal(size=n), rng.random(n) < 0.4]).astype(float)
    strata = rng.integers(0, 3, n)
    lp = 0.8 * X[:, 4] - 0.8 * X[:, 2] + 0.4 * cov[:, 0] + 0.3 * strata
    t_event = rng.exponential(size=n) * np.exp(-lp)
    t_cens = rng.uniform(0.2, 3.0, n)
    time = np.ceil(np.minimum(t_event, t_cens) * 8) / 8    # eighths: many tied times
    event = t_event <= t_cens
    return X, time, event, cov, strata


def _lifelines(x, time, event, cov=None, strata=None):
    df = pd.DataFrame({"x": x, "T": time, "E": event})
    if cov is not None:
        for k in range(cov.shape[1]):
            df[f"c{k}"] = cov[:, k]
    if strata is not None:
        df["s"] = strata
    return CoxPHFitter().fit(df, "T", "E", strata=None if strata is None else ["s"],
                             fit_options=TIGHT).summary.loc["x"]


@pytest.mark.parametrize("adjust", ["none", "covariates", "strata", "both"])
def test_cox_matches_lifelines(adjust):
    X, time, event, cov, strata = cohort()
    assert len(np.unique(time[event])) < event.sum() / 2   # the Efron correction is exercised
    c = cov if adjust in ("covariates", "both") else None
    s = strata if adjust in ("strata", "both") else None
    res = survival.cox(X, time, event, covariates=c, strata=s, progress=False)
    sd = X.std(axis=0, ddof=1)
    assert res.extra["converged"].all()
    for j in range(X.shape[1]):
        ref = _lifelines(X[:, j], time, event, c, s)
        np.testing.assert_allclose(res.extra["coef"][j], ref["coef"], rtol=1e-4)
        np.testing.assert_allclose(res.extra["se"][j], ref["se(coef)"], rtol=1e-4)
        np.testing.assert_allclose(res.p[j], ref["p"], rtol=1e-4)
        np.testing.assert_allclose(res.statistic[j], ref["z"], rtol=1e-4)
        np.testing.assert_allclose(res.effect[j], ref["coef"] * sd[j], rtol=1e-4)
        np.testing.assert_allclose([res.ci_low[j], res.ci_high[j]],
                                   [ref["coef lower 95%"] * sd[j], ref["coef upper 95%"] * sd[j]],
                                   rtol=1e-4)
    # the planted features come out with their signs (higher feature 4: higher risk)
    assert res.p[4] < 1e-6 and res.effect[4] > 0 and res.direction[4] == 1
    assert res.p[2] < 0.05 and res.effect[2] < 0


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_matches_statsmodels(ties):
    X, time, event, cov, strata = cohort(seed=1)
    res = survival.cox(X, time, event, covariates=cov, strata=strata, ties=ties, progress=False)
    for j in range(X.shape[1]):
        ref = PHReg(time, np.column_stack([X[:, j], cov]), status=event.astype(int),
                    strata=strata, ties=ties).fit()
        np.testing.assert_allclose(res.extra["coef"][j], ref.params[0], rtol=1e-7)
        np.testing.assert_allclose(res.extra["se"][j], ref.bse[0], rtol=1e-7)
        np.testing.assert_allclose(res.p[j], ref.pvalues[0], rtol=1e-6)


def test_cox_blocks_of_one_feature(monkeypatch):
    X, time, event, cov, _ = cohort(seed=2)
    monkeypatch.setattr(survival, "_BLOCK_BYTES", 1)   # one feature per block
    res = survival.cox(X, time, event, covariates=cov, progress=False)
    for j in range(X.shape[1]):
        ref = PHReg(time, np.column_stack([X[:, j], cov]), status=event.astype(int),
                    ties="efron").fit()
        np.testing.assert_allclose(res.extra["coef"][j], ref.params[0], rtol=1e-7)


def test_cox_degenerate_features_are_nan():
    rng = np.random.default_rng(3)
    n = 80
    time = rng.exponential(size=n) + 0.01
    event = rng.random(n) < 0.8
    cov = rng.normal(size=(n, 1))
    X = np.column_stack([
        rng.normal(size=n),             # an ordinary feature
        -time,                          # orders the events perfectly: monotone likelihood
        np.full(n, 3.0),                # constant
        np.zeros(n),                    # all zero
        2 * cov[:, 0] + 1,              # the covariate itself
        time > np.median(time),         # late subjects only: monotone towards -inf
        rng.normal(size=n),
    ]).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or division warnings leak out
        res = survival.cox(X, time, event, covariates=cov, progress=False)
    bad = [1, 2, 3, 4, 5]
    assert np.isnan(res.p[bad]).all() and np.isnan(res.statistic[bad]).all()
    assert np.isnan(res.effect[bad]).all() and np.isnan(res.extra["se"][bad]).all()
    assert not res.extra["converged"][bad].any()
    # the monotone feature still gets its (perfect) concordance, the constant one 0.5
    assert res.extra["c_index"][1] == 1.0 and res.extra["c_index"][2] == 0.5
    for j in (0, 6):   # the other features of the same block are unaffected
        assert res.extra["converged"][j]
        ref = PHReg(time, np.column_stack([X[:, j], cov]), status=event.astype(int)).fit()
        np.testing.assert_allclose(res.extra["coef"][j], ref.params[0], rtol=1e-7)


def test_cox_c_index_extra():
    X, time, event, cov, _ = cohort(seed=4)
    res = survival.cox(X, time, event, covariates=cov, progress=False)
    for j in range(X.shape[1]):
        assert res.extra["c_index"][j] == pytest.approx(
            1 - concordance_index(time, X[:, j], event), abs=1e-12)


def test_concordance_hand_worked():
    # subject:     0  1  2  3
    time = np.array([1.0, 2.0, 2.0, 4.0])
    event = np.array([True, True, False, True])
    x = np.array([4.0, 1.0, 3.0, 1.0])
    # comparable pairs (the earlier subject had the event): (0,1) (0,2) (0,3), (1,2) since a
    # censored subject at the event's own time outlived it, (1,3); none from 2 (censored)
    # nor 3 (last). Higher x = earlier event: (0,*) concordant, (1,2) discordant, (1,3) tied.
    # C = (3 + 0 + 0.5) / 5
    c = survival.concordance(x[:, None], time, event)
    assert c[0] == pytest.approx(0.7, abs=1e-15)
    assert c[0] == pytest.approx(1 - concordance_index(time, x, event), abs=1e-15)
    # reversing the feature reverses the ordering: 1 - C (tied pairs stay half)
    assert survival.concordance(-x[:, None], time, event)[0] == pytest.approx(0.3, abs=1e-15)


def test_concordance_matches_lifelines():
    rng = np.random.default_rng(5)
    n = 120
    time = np.ceil(rng.exponential(size=n) * 5)          # many tied times
    event = rng.random(n) < 0.6
    X = np.column_stack([rng.normal(size=n), rng.integers(0, 4, n),
                         np.maximum(rng.normal(size=n), 0), -time + rng.normal(size=n) * 0.5,
                         np.ones(n)]).astype(float)
    c = survival.concordance(X, time, event)
    ref = [1 - concordance_index(time, X[:, j], event) for j in range(X.shape[1])]
    np.testing.assert_allclose(c, ref, atol=1e-12)
    assert c[3] > 0.7 and c[4] == 0.5


def test_logrank_matches_lifelines():
    X, time, event, _, _ = cohort(seed=6)
    res = survival.logrank(X, time, event)
    for j in range(X.shape[1]):
        high = X[:, j] > np.median(X[:, j])
        ref = logrank_test(time[high], time[~high], event[high], event[~high])
        assert res.statistic[j] == pytest.approx(ref.test_statistic, rel=1e-10)
        assert res.p[j] == pytest.approx(ref.p_value, rel=1e-10)
    assert res.effect[4] > 0 and res.p[4] < 0.01     # planted: high feature 4, high risk


def test_logrank_hand_worked():
    # x 1..4: high = subjects 2, 3 (x > median 2.5). Event times, all observed:
    # t=1 subject 2 (high): at risk 4, 2 high -> E_high 1/2, V = 2*2*1*3 / (4^2 * 3) = 1/4
    # t=2 subject 0 (low):  at risk 3, 1 high -> E_high 1/3, V = 1*2*1*2 / (3^2 * 2) = 2/9
    # t=3 subject 3 (high): at risk 2, 1 high -> E_high 1/2, V = 1*1*1*1 / (2^2 * 1) = 1/4
    # t=4 subject 1 (low):  at risk 1, 0 high -> E_high 0,   V = 0
    # O_high - E_high = 2 - 4/3 = 2/3, V = 13/18: chi2 = (4/9) / (13/18) = 8/13
    # Peto HR = (O_h/E_h) / (O_l/E_l) = (2 / (4/3)) / (2 / (8/3)) = 2
    x = np.array([1.0, 2.0, 3.0, 4.0])
    time = np.array([2.0, 4.0, 1.0, 3.0])
    event = np.ones(4, bool)
    res = survival.logrank(x[:, None], time, event)
    assert res.statistic[0] == pytest.approx(8 / 13, rel=1e-12)
    assert res.effect[0] == pytest.approx(np.log(2), rel=1e-12)
    assert res.extra["expected_high"][0] == pytest.approx(4 / 3, rel=1e-12)


def test_logrank_stratified_matches_statsmodels():
    X, time, event, _, strata = cohort(seed=7)
    res = survival.logrank(X, time, event, strata=strata)
    for j in range(X.shape[1]):
        high = (X[:, j] > np.median(X[:, j])).astype(int)
        chi2, p = survdiff(time, event.astype(int), high, strata=strata)
        assert res.statistic[j] == pytest.approx(chi2, rel=1e-10)
        assert res.p[j] == pytest.approx(p, rel=1e-10)


def test_logrank_empty_group_is_nan():
    rng = np.random.default_rng(8)
    n = 40
    time, event = rng.exponential(size=n) + 0.1, rng.random(n) < 0.7
    X = np.column_stack([np.ones(n), (np.arange(n) < 30).astype(float), rng.normal(size=n)])
    res = survival.logrank(X, time, event)   # constant; median 1 of a 0/1 feature: nobody > 1
    assert np.isnan(res.p[:2]).all() and np.isnan(res.effect[:2]).all()
    assert np.isfinite(res.p[2])


def _call(fn, X=None, time=None, event=None, **kw):
    rng = np.random.default_rng(9)
    n = 20
    X = rng.normal(size=(n, 3)) if X is None else X
    time = rng.exponential(size=n) + 0.1 if time is None else time
    event = (np.arange(n) % 2).astype(bool) if event is None else event
    return fn(X, time, event, **kw)


@pytest.mark.parametrize("fn", [survival.cox, survival.logrank, survival.concordance])
@pytest.mark.parametrize("kw, match", [
    ({"time": np.r_[-1.0, np.ones(19)]}, r"time: 1 subject.*rows \[0\].*> 0"),
    ({"time": np.r_[np.ones(19), 0.0]}, r"time: .*zero.*rows \[19\].*small positive time"),
    ({"time": np.r_[np.nan, np.ones(19)]}, r"time: .*missing"),
    ({"time": np.array(["a"] * 20)}, r"time: expected numeric"),
    ({"time": np.ones(5)}, r"time: expected one value per subject .*\(20,\)"),
    ({"event": np.r_[2, np.zeros(19)]}, r"event: expected 0/1.*rows \[0\]"),
    ({"event": np.zeros(20, bool)}, r"event: none of the 20 subjects has an event"),
    ({"X": np.r_[np.nan, np.zeros(59)].reshape(20, 3)}, r"X: 1 feature column.*\[0\]"),
    ({"X": np.zeros(20)}, r"X: expected a 2-D"),
])
def test_bad_input(fn, kw, match):
    with pytest.raises(InputError, match=match):
        _call(fn, **kw)


@pytest.mark.parametrize("kw, match", [
    ({"covariates": np.ones((20, 1))}, r"covariates: column\(s\) \[0\] are constant"),
    ({"covariates": np.ones((5, 1))}, r"covariates: expected shape \(20, c\)"),
    ({"covariates": np.full((20, 1), np.nan)}, r"covariates: NaN"),
    ({"strata": np.ones(3)}, r"strata: expected one stratum per subject"),
    ({"ties": "exact"}, r"ties='exact': expected 'efron'"),
    ({"tol": 0}, r"tol=0"),
])
def test_bad_cox_options(kw, match):
    with pytest.raises(InputError, match=match):
        _call(survival.cox, progress=False, **kw)
