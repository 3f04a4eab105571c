"""Multiple-testing control: BH/BY against statsmodels, Westfall–Young against brute force
(every label assignment of a small case, and the very permutations it ran), against
nilearn's max-T permuted OLS, and its family-wise error under a global null."""

from itertools import combinations

import numpy as np
import pytest
from scipy import special, stats
from statsmodels.stats.multitest import multipletests

from bioviz.analysis.multiple import bh, by, westfall_young
from bioviz.errors import InputError


def _corr_p(X, y):
    """Two-sided p of the Pearson correlation of each column with y (= OLS slope t-test)."""
    n = len(y)
    xc = X - X.mean(0)
    yc = y - y.mean()
    r = (xc * yc[:, None]).sum(0) / np.sqrt((xc**2).sum(0) * (yc**2).sum())
    t = r * np.sqrt((n - 2) / (1 - r**2))
    return 2 * special.stdtr(n - 2, -np.abs(t))  # Student t cdf: stats.t.sf without overhead


# ---------------------------------------------------------------- BH / BY


@pytest.mark.parametrize("fn, method", [(bh, "fdr_bh"), (by, "fdr_by")])
def test_fdr_matches_statsmodels_and_leaves_nan_out_of_m(fn, method):
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(60) ** 4, [0.0, 1.0, 0.01, 0.01, 0.01]])  # ties, bounds
    p[rng.choice(len(p), 7, replace=False)] = np.nan
    q = fn(p)
    ok = ~np.isnan(p)
    np.testing.assert_array_equal(np.isnan(q), ~ok)
    np.testing.assert_allclose(q[ok], multipletests(p[ok], method=method)[1], rtol=1e-12)
    # a one-test family is its own p; an empty or all-NaN family gives back NaN/empty
    assert fn([0.2])[0] == pytest.approx(0.2)
    assert fn(np.array([])).shape == (0,)
    assert np.isnan(fn([np.nan, np.nan])).all()


@pytest.mark.parametrize("fn", [bh, by])
def test_fdr_refuses_what_is_not_a_p_value(fn):
    with pytest.raises(InputError, match=r"p must hold p-values in \[0, 1\]"):
        fn([0.1, 1.5])
    with pytest.raises(InputError, match="p must hold"):
        fn([-0.01, 0.5])
    with pytest.raises(InputError, match="1-D"):
        fn(np.full((3, 2), 0.5))


# ---------------------------------------------------------------- Westfall–Young


def _brute_force(observed, rows, stepdown):
    """Adjusted p from rows of permuted p-values, by explicit loops (the definition)."""
    family = [i for i in range(len(observed)) if not np.isnan(observed[i])]
    family.sort(key=lambda i: observed[i])
    out = np.full(len(observed), np.nan)
    running = 0.0
    for k, i in enumerate(family):
        pool = family[k:] if stepdown else family
        hits = 0
        for row in rows:
            vals = [row[j] for j in pool if not np.isnan(row[j])]
            hits += bool(vals) and min(vals) <= observed[i]
        adj = hits / len(rows)
        running = max(running, adj) if stepdown else adj
        out[i] = running
    return out


@pytest.mark.parametrize("method", ["single-step", "stepdown"])
def test_westfall_young_is_its_definition_on_the_permutations_it_ran(method):
    rng = np.random.default_rng(1)
    n, m, B = 30, 12, 150
    X = rng.normal(size=(n, m))
    y = rng.normal(size=n)
    X[:, :3] += 0.6 * y[:, None]  # some signal: adjusted p spread over (0, 1]
    observed = _corr_p(X, y)
    observed[4] = np.nan
    seen = []

    def permuted(idx):
        pb = _corr_p(X, y[idx])
        pb[4] = 0.0  # outside the family: must not enter any minimum
        if idx[0] % 3 == 0:
            pb[[0, 7]] = np.nan  # ignored in this permutation's minimum
        seen.append(pb)
        return pb

    p_fwer, floor = westfall_young(observed, permuted, n_permutations=B, seed=5, n_subjects=n,
                                   method=method, progress=False)
    assert len(seen) == B and floor == 1 / (B + 1)
    # the (1 + hits) / (B + 1) form: the observed labelling counts as one permutation
    expected = (1 + B * _brute_force(observed, seen, method == "stepdown")) / (B + 1)
    np.testing.assert_allclose(p_fwer, expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(p_fwer[4]) and (p_fwer[~np.isnan(p_fwer)] >= floor).all()
    assert 0.05 > np.nanmin(p_fwer) and np.nanmax(p_fwer) > 0.5  # the case is not degenerate
    # the same seed gives the same answer
    again, _ = westfall_young(observed, permuted, n_permutations=B, seed=5, n_subjects=n,
                              method=method, progress=False)
    np.testing.assert_array_equal(again, p_fwer)


def test_westfall_young_matches_all_label_assignments_of_a_small_case():
    """8 subjects, 4 cases: the exact permutation distribution is the 70 assignments."""
    rng = np.random.default_rng(10)
    y = np.array([True] * 4 + [False] * 4)
    X = rng.normal(size=(8, 5))
    X[:, 0] += 3.0 * y
    X[:, 1] += 1.5 * y
    X[:, 2] -= 1.0 * y

    cache = {}

    def mw(labels):  # the exact test, once per assignment (there are only 70)
        key = labels.tobytes()
        if key not in cache:
            cache[key] = stats.mannwhitneyu(X[labels], X[~labels], axis=0, method="exact").pvalue
        return cache[key]

    observed = mw(y)
    exact_rows = []
    for cases in combinations(range(8), 4):
        labels = np.zeros(8, dtype=bool)
        labels[list(cases)] = True
        exact_rows.append(mw(labels))
    B = 4000
    for method in ("single-step", "stepdown"):
        exact = _brute_force(observed, exact_rows, method == "stepdown")
        p_fwer, _ = westfall_young(observed, lambda idx: mw(y[idx]), n_permutations=B, seed=0,
                                   n_subjects=8, method=method, progress=False)
        # Monte-Carlo error of a proportion from B permutations, plus the +1 of the estimator
        tol = 4.5 * np.sqrt(exact * (1 - exact) / B) + 2 / B
        np.testing.assert_array_less(np.abs(p_fwer - exact), tol)
    # the case has tied p-values (exact ties must count) and tells the two methods apart
    single = _brute_force(observed, exact_rows, False)
    down = _brute_force(observed, exact_rows, True)
    assert observed[0] == observed[1] and (down < single - 0.2).any()


def test_westfall_young_min_p_equals_nilearn_max_t():
    """OLS t-tests share one null distribution, so min-P is nilearn's max-|T| FWER p."""
    from nilearn.mass_univariate import permuted_ols

    rng = np.random.default_rng(4)
    n, m, B = 40, 30, 2000
    y = rng.normal(size=n)
    X = rng.normal(size=(n, m))
    X[:, :8] += np.linspace(0.15, 0.6, 8)[None] * y[:, None]
    observed = _corr_p(X, y)
    p_fwer, floor = westfall_young(observed, lambda idx: _corr_p(X, y[idx]), n_permutations=B,
                                   seed=1, n_subjects=n, progress=False)
    ref = permuted_ols(y[:, None], X, model_intercept=True, n_perm=B, two_sided_test=True,
                       random_state=0, n_jobs=1, verbose=0)
    ref_p = 10.0 ** -ref["logp_max_t"][0]
    # two independent Monte-Carlo estimates of one probability
    tol = 4.5 * np.sqrt(ref_p * (1 - ref_p) * 2 / B) + 2 / B
    np.testing.assert_array_less(np.abs(p_fwer - ref_p), tol)
    assert ref_p.min() < 0.05 < ref_p.max()  # the comparison spans small and large p


def test_westfall_young_stepdown_is_monotone_and_never_above_single_step():
    rng = np.random.default_rng(6)
    n, m = 40, 25
    y = rng.normal(size=n)
    X = rng.normal(size=(n, m))
    X[:, :6] += 0.7 * y[:, None]
    observed = _corr_p(X, y)
    kw = dict(n_permutations=300, seed=2, n_subjects=n, progress=False)
    single, _ = westfall_young(observed, lambda idx: _corr_p(X, y[idx]), **kw)
    down, _ = westfall_young(observed, lambda idx: _corr_p(X, y[idx]), method="stepdown", **kw)
    assert (down <= single + 1e-15).all() and (down < single).any()
    order = np.argsort(observed)
    assert (np.diff(down[order]) >= 0).all() and (np.diff(single[order]) >= 0).all()


def test_westfall_young_controls_family_wise_error_under_a_global_null():
    """Labels independent of 200 features, 50 subjects: P(any p_fwer <= 0.05) is 0.05."""
    rng = np.random.default_rng(7)
    n, m, B, R = 50, 200, 99, 250
    y = np.repeat([0.0, 1.0], n // 2)
    zy = (y - y.mean()) / y.std()
    rejected = 0
    for _ in range(R):
        X = rng.normal(size=(n, m))
        X[:, 100:] = X[:, :100] + 0.5 * rng.normal(size=(n, 100))  # correlated features
        # columns standardised once: each permutation is then one matrix-vector product
        Z = (X - X.mean(0)) / X.std(0)

        def permuted(idx, Z=Z):
            r = Z.T @ zy[idx] / n
            return 2 * special.stdtr(n - 2, -np.abs(r) * np.sqrt((n - 2) / (1 - r**2)))

        p_fwer, _ = westfall_young(permuted(np.arange(n)), permuted, n_permutations=B,
                                   seed=int(rng.integers(2**31)), n_subjects=n, progress=False)
        np.testing.assert_allclose(permuted(np.arange(n)), _corr_p(X, y), rtol=1e-9)
        rejected += (p_fwer <= 0.05).any()
    fwer = rejected / R
    se = np.sqrt(0.05 * 0.95 / R)
    assert 0.05 - 3 * se < fwer < 0.05 + 3 * se, fwer


def test_westfall_young_permutes_within_strata():
    strata = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    seen = []

    def permuted(idx):
        seen.append(idx)
        return np.full(3, 0.5)

    westfall_young([0.1, 0.2, 0.3], permuted, n_permutations=40, strata=strata, n_subjects=10,
                   progress=False)
    assert all((strata[idx] == strata).all() for idx in seen)
    assert len({tuple(idx) for idx in seen}) > 20  # they do move subjects


def test_westfall_young_refuses_bad_input():
    kw = dict(n_subjects=5, progress=False)
    ok = lambda idx: np.full(2, 0.5)  # noqa: E731
    with pytest.raises(InputError, match="n_permutations must be a positive integer"):
        westfall_young([0.1, 0.2], ok, n_permutations=0, **kw)
    with pytest.raises(InputError, match="n_permutations"):
        westfall_young([0.1, 0.2], ok, n_permutations=10.5, **kw)
    with pytest.raises(InputError, match="method must be"):
        westfall_young([0.1, 0.2], ok, n_permutations=10, method="maxT", **kw)
    with pytest.raises(InputError, match="observed_p must hold p-values"):
        westfall_young([0.1, 2.0], ok, n_permutations=10, **kw)
    with pytest.raises(InputError, match=r"permuted_p returned shape \(3,\)"):
        westfall_young([0.1, 0.2], lambda idx: np.full(3, 0.5), n_permutations=10, **kw)
    with pytest.raises(InputError, match="strata must be a 1-D array"):
        westfall_young([0.1, 0.2], ok, n_permutations=10, strata=[0, 1], **kw)
