"""The vectorised subject-level tests against their references, feature by feature: scipy
(Mann–Whitney, Spearman, Kruskal–Wallis), scikit-learn (AUROC) and statsmodels (OLS, Logit)."""

import warnings

import numpy as np
import pytest
import scipy.stats as ss
import statsmodels.api as sm
from sklearn.metrics import roc_auc_score

from bioviz.analysis import stats
from bioviz.errors import InputError


def sae_like(rng, n, m):
    """Subject-level features the way aggregated SAE codes look: mostly zeros (one big tie),
    a few integer-valued (more ties), some negative, one all-zero and one constant column."""
    X = rng.gamma(0.5, size=(n, m))
    X[X < 0.6] = 0
    X[:, 1] = np.round(rng.normal(size=n))
    X[:, 2] = rng.normal(size=n)
    X[:, 3] = 0.0
    X[:, 4] = 3.3
    return X


@pytest.fixture
def small_blocks(monkeypatch):
    """Several feature blocks even for test-sized data, so the block seams are tested."""
    monkeypatch.setattr(stats, "_BLOCK_ELEMENTS", 7 * 60)


@pytest.mark.usefixtures("small_blocks")
def test_mann_whitney_equals_scipy_with_ties_and_sklearn_auroc():
    rng = np.random.default_rng(0)
    X = sae_like(rng, 60, 25)
    y = rng.random(60) < 0.4
    res = stats.mann_whitney(X, y, progress=False)
    assert (res.test, res.effect_name, res.null) == ("mann_whitney", "auroc", 0.5)
    for j in range(X.shape[1]):
        if j in (3, 4):
            continue
        ref = ss.mannwhitneyu(X[y, j], X[~y, j], alternative="two-sided", method="asymptotic",
                              use_continuity=True)
        assert res.statistic[j] == pytest.approx(ref.statistic, rel=1e-12)
        assert res.p[j] == pytest.approx(ref.pvalue, rel=1e-10)
        assert res.effect[j] == pytest.approx(roc_auc_score(y, X[:, j]), rel=1e-12)
    # degenerate features: NaN p (scipy says 1.0), never a fake 0
    assert np.isnan(res.p[[3, 4]]).all() and not np.isnan(np.delete(res.p, [3, 4])).any()
    # 0/1 labels are the same label
    assert np.array_equal(stats.mann_whitney(X, y.astype(int), progress=False).p, res.p,
                          equal_nan=True)


def test_mann_whitney_direction_hand_worked():
    # cases 3, 4 above controls 1, 2 except one tie: U = 3.5 of 4 pairs
    X = np.array([[1.0], [2.0], [2.0], [4.0]])
    y = np.array([False, False, True, True])
    res = stats.mann_whitney(X, y, progress=False)
    assert res.statistic[0] == 3.5 and res.effect[0] == 3.5 / 4 and res.direction[0] == 1


@pytest.mark.usefixtures("small_blocks")
def test_spearman_equals_scipy():
    rng = np.random.default_rng(1)
    X = sae_like(rng, 50, 20)
    y = X[:, 0] + rng.normal(size=50)
    y[:5] = y[5]  # ties in the label too
    res = stats.spearman(X, y, progress=False)
    for j in range(X.shape[1]):
        if j in (3, 4):
            continue
        ref = ss.spearmanr(X[:, j], y)
        assert res.effect[j] == pytest.approx(ref.statistic, rel=1e-10)
        assert res.statistic[j] == res.effect[j]
        assert res.p[j] == pytest.approx(ref.pvalue, rel=1e-9)
    assert np.isnan(res.p[[3, 4]]).all() and np.isnan(res.effect[[3, 4]]).all()


@pytest.mark.usefixtures("small_blocks")
def test_kruskal_equals_scipy_and_skips_empty_levels():
    rng = np.random.default_rng(2)
    X = sae_like(rng, 70, 20)
    codes = rng.choice([0, 1, 3, 4], 70)  # level 2 has no subjects
    X[codes == 4, 5] += 2
    res = stats.kruskal(X, codes, progress=False)
    for j in range(X.shape[1]):
        if j in (3, 4):
            continue
        ref = ss.kruskal(*(X[codes == k, j] for k in (0, 1, 3, 4)))
        assert res.statistic[j] == pytest.approx(ref.statistic, rel=1e-10)
        assert res.p[j] == pytest.approx(ref.pvalue, rel=1e-9)
        assert res.effect[j] == pytest.approx(ref.statistic / 69, rel=1e-10)
    assert np.isnan(res.p[[3, 4]]).all()
    assert res.p[5] < 1e-3


def _ols(x, y, C):
    design = sm.add_constant(np.column_stack([y] + ([] if C is None else [C])), has_constant="add")
    return sm.OLS(x, design).fit()


@pytest.mark.parametrize("with_covariates", [False, True])
def test_linear_equals_statsmodels(with_covariates):
    rng = np.random.default_rng(3)
    n = 80
    y = (rng.random(n) < 0.5).astype(float)
    C = rng.normal(size=(n, 3)) + y[:, None] * 0.5 if with_covariates else None
    X = sae_like(rng, n, 12)
    X[:, 5] = 1e6 + rng.normal(size=n) + y  # a large offset: the one-pass sums would cancel
    X[:, 6] = 3 * y + 1e-7 * rng.normal(size=n)  # almost exactly the label
    if with_covariates:
        X[:, 7] = 2 * C[:, 0] + 1e-7 * rng.normal(size=n)
    X[:, 8] = 2 * y + 1  # exactly the label: no residual error to test against
    res = stats.linear(X, y, C)
    for j in range(X.shape[1]):
        if j in (3, 4, 8):
            continue
        f = _ols(X[:, j], y, C)
        np.testing.assert_allclose([res.extra["coef"][j], res.extra["se"][j], res.p[j]],
                                   [f.params[1], f.bse[1], f.pvalues[1]], rtol=1e-6)
        assert res.statistic[j] == pytest.approx(f.tvalues[1], rel=1e-6)
        scale = y.std(ddof=1) / X[:, j].std(ddof=1)
        assert res.effect[j] == pytest.approx(f.params[1] * scale, rel=1e-6)
        np.testing.assert_allclose([res.ci_low[j], res.ci_high[j]], f.conf_int()[1] * scale,
                                   rtol=1e-6)
    assert np.isnan(res.p[[3, 4]]).all() and np.isnan(res.effect[[3, 4]]).all()
    assert np.isnan(res.p[8]) and np.isnan(res.statistic[8])
    if not with_covariates:  # the standardised slope of an exact line is the correlation, 1
        assert res.effect[8] == pytest.approx(1.0)


def test_linear_standardised_beta_is_the_correlation_without_covariates():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(2, 40))
    res = stats.linear(np.column_stack([x, -x]), y)
    r = np.corrcoef(x, y)[0, 1]
    np.testing.assert_allclose(res.effect, [r, -r], rtol=1e-10)
    assert list(res.direction) == [np.sign(r), -np.sign(r)]


def test_linear_refuses_unidentified_designs_naming_the_column():
    rng = np.random.default_rng(5)
    n = 30
    X, y = rng.normal(size=(n, 4)), rng.normal(size=n)
    age, site = rng.normal(size=n), (rng.random(n) < 0.5).astype(float)
    names = ["age", "site"]
    with pytest.raises(InputError, match="'site' is constant"):
        stats.linear(X, y, np.column_stack([age, np.ones(n)]), names=names)
    with pytest.raises(InputError, match=r"'site' is collinear with the intercept and \['age'\]"):
        stats.linear(X, y, np.column_stack([age, 3 * age + 1]), names=names)
    with pytest.raises(InputError, match="label y is collinear"):
        stats.linear(X, 2 * site - 1, np.column_stack([age, site]), names=names)
    with pytest.raises(InputError, match="y is constant"):
        stats.linear(X, np.ones(n))
    with pytest.raises(InputError, match="names has 1 entries"):
        stats.linear(X, y, np.column_stack([age, site]), names=["age"])


def test_bad_inputs_raise_input_errors_that_say_where():
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(20, 5)), rng.random(20) < 0.5
    X[7, 3] = np.nan
    for fn, label in [(stats.mann_whitney, y), (stats.linear, y.astype(float)),
                      (stats.logistic, y)]:
        with pytest.raises(InputError, match="subject row 7, feature column 3"):
            fn(X, label)
    X[7, 3] = 0
    with pytest.raises(InputError, match="one value per subject"):
        stats.mann_whitney(X, y[:-1])
    with pytest.raises(InputError, match="only one level"):
        stats.mann_whitney(X, np.zeros(20, bool))
    with pytest.raises(InputError, match="boolean"):
        stats.mann_whitney(X, np.arange(20))
    with pytest.raises(InputError, match="2-D"):
        stats.spearman(X[:, 0], rng.normal(size=20))
    with pytest.raises(InputError, match="at least 2"):
        stats.kruskal(X, np.zeros(20, int))
    with pytest.raises(InputError, match="covariates"):
        stats.linear(X, y.astype(float), np.full((20, 1), np.nan))


def _logit(x, y, C):
    design = sm.add_constant(np.column_stack([x] + ([] if C is None else [C])), has_constant="add")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sm.Logit(y.astype(float), design).fit(disp=0, maxiter=100)


@pytest.mark.parametrize("with_covariates", [False, True])
def test_logistic_equals_statsmodels(with_covariates, small_blocks):
    rng = np.random.default_rng(7)
    n = 120
    C = rng.normal(size=(n, 2)) if with_covariates else None
    X = rng.gamma(0.7, size=(n, 10))
    X[:, 1] = rng.normal(size=n)
    X[:, 2] = np.round(rng.normal(size=n))
    X[:, 3] = 1e4 + 0.01 * rng.normal(size=n)  # a large offset, small spread
    eta = 1.2 * X[:, 1] - 0.4 + (0 if C is None else C @ [0.8, -0.5])
    y = rng.random(n) < 1 / (1 + np.exp(-eta))
    res = stats.logistic(X, y, C, progress=False)
    assert res.extra["converged"].all()
    for j in range(X.shape[1]):
        # the same model (the intercept absorbs a shift); on the raw 1e4 + 0.01 z statsmodels'
        # Newton does not converge
        f = _logit(X[:, j] - (1e4 if j == 3 else 0), y, C)
        assert f.mle_retvals["converged"]
        np.testing.assert_allclose([res.extra["coef"][j], res.extra["se"][j], res.p[j]],
                                   [f.params[1], f.bse[1], f.pvalues[1]], rtol=1e-6)
        sd = X[:, j].std(ddof=1)
        assert res.effect[j] == pytest.approx(f.params[1] * sd, rel=1e-6)
        assert res.statistic[j] == pytest.approx(f.tvalues[1], rel=1e-6)
        np.testing.assert_allclose([res.ci_low[j], res.ci_high[j]], f.conf_int()[1] * sd,
                                   rtol=1e-6)
    assert res.p[1] < 1e-4 and res.direction[1] == 1


def test_logistic_separation_and_degenerate_features_give_nan_not_a_huge_z():
    rng = np.random.default_rng(8)
    n = 80
    y = np.arange(n) < 40
    complete = np.where(y, rng.random(n) + 1, rng.random(n))  # every case above every control
    quasi = complete.copy()
    quasi[[0, 1, 50, 51]] = 1.0  # ... except a tie at the border
    sparse = np.zeros(n)
    sparse[:5] = rng.random(5) + 0.5  # fires in 5 cases only: y = 1 whenever it fires
    ok = rng.normal(size=n) + y
    X = np.column_stack([complete, quasi, sparse, ok, np.zeros(n), np.full(n, 3.3)])
    res = stats.logistic(X, y, progress=False)
    assert list(res.extra["converged"]) == [False, False, False, True, False, False]
    bad = [0, 1, 2, 4, 5]
    for arr in (res.p, res.statistic, res.effect, res.ci_low, res.extra["coef"]):
        assert np.isnan(arr[bad]).all()
    assert _logit(ok, y, None).pvalues[1] == pytest.approx(res.p[3], rel=1e-6)
    # statsmodels on the separated features: no convergence, the estimate is the step count
    assert not _logit(complete, y, None).mle_retvals["converged"]


def test_logistic_refuses_covariates_that_separate_the_label():
    rng = np.random.default_rng(9)
    n = 40
    y = np.arange(n) < 20
    site = np.where(np.arange(n) < 10, 1.0, 0.0)  # site 1 has cases only
    with pytest.raises(InputError, match="predict the label with certainty"):
        stats.logistic(rng.normal(size=(n, 3)), y, np.column_stack([site]), names=["site"],
                       progress=False)


def test_a_singular_hessian_fails_only_its_own_feature():
    # separation drives one feature's weights to 0 while the others still iterate: a batched
    # solve that raises must not take the other features down with it
    H = np.array([[[2.0, 1.0], [1.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]], [[4.0, 0.0], [0.0, 1.0]]])
    g = np.array([[1.0, 2.0], [1.0, 1.0], [2.0, -1.0]])
    out = stats._solve(H, g)
    np.testing.assert_allclose(out[[0, 2]], [np.linalg.solve(H[0], g[0]), [0.5, -1.0]])
    assert np.isnan(out[1]).all()
