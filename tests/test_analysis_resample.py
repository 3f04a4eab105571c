"""Subject-level resampling: uniform permutations and bootstraps within strata, percentile
intervals against scipy.stats.bootstrap and numpy's percentiles, their coverage of known
parameters, selection stability, the stratified split and grouped folds."""

from collections import Counter

import numpy as np
import pytest
from scipy import special, stats

from bioviz.analysis.resample import (
    bootstrap_ci,
    bootstrap_indices,
    grouped_folds,
    permutations,
    selection_stability,
    split,
)
from bioviz.errors import InputError

# ---------------------------------------------------------------- permutations, bootstraps


def test_permutations_are_uniform_and_stay_within_strata():
    # no strata: all 4! orders, equally often
    perms = list(permutations(4, n_permutations=4800, seed=0))
    assert all(sorted(p) == [0, 1, 2, 3] for p in perms)
    counts = Counter(tuple(p) for p in perms)
    assert len(counts) == 24
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3
    # strata: only the 2! * 3! = 12 within-stratum orders, equally often
    strata = np.array([1, 0, 1, 0, 0])
    perms = list(permutations(5, strata=strata, n_permutations=2400, seed=1))
    assert all(sorted(p) == list(range(5)) and (strata[p] == strata).all() for p in perms)
    counts = Counter(tuple(p) for p in perms)
    assert len(counts) == 12
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3


def test_resampling_is_reproducible_from_the_seed():
    for gen in (permutations, bootstrap_indices):
        key = "n_permutations" if gen is permutations else "n_boot"
        a = list(gen(20, strata=np.arange(20) % 3, seed=7, **{key: 5}))
        b = list(gen(20, strata=np.arange(20) % 3, seed=7, **{key: 5}))
        c = list(gen(20, strata=np.arange(20) % 3, seed=8, **{key: 5}))
        assert all((x == y).all() for x, y in zip(a, b))
        assert any((x != y).any() for x, y in zip(a, c))


def test_bootstrap_draws_with_replacement_uniformly_within_strata():
    n, B = 8, 6000
    strata = np.array(["a", "b", "a", "b", "b", "b", "a", "b"])  # any labels, 3 + 5
    draws = np.array(list(bootstrap_indices(n, strata=strata, n_boot=B, seed=2)))
    assert draws.shape == (B, n)
    assert (strata[draws] == strata).all()  # every resample keeps each stratum's size
    for level in ("a", "b"):
        members = np.flatnonzero(strata == level)
        counts = np.bincount(draws[:, members].ravel(), minlength=n)[members]
        assert stats.chisquare(counts).pvalue > 1e-3
    # with replacement: distinct subjects per resample average n (1 - (1 - 1/n)^n)
    plain = np.array(list(bootstrap_indices(50, n_boot=2000, seed=3)))
    distinct = np.array([len(np.unique(r)) for r in plain])
    assert distinct.mean() == pytest.approx(50 * (1 - (1 - 1 / 50) ** 50), abs=0.2)


@pytest.mark.parametrize("call, name", [
    (lambda: list(permutations(5, n_permutations=0, seed=0)), "n_permutations"),
    (lambda: list(bootstrap_indices(5, n_boot=-3, seed=0)), "n_boot"),
    (lambda: list(bootstrap_indices(5, n_boot=2.0, seed=0)), "n_boot"),
    (lambda: bootstrap_ci(lambda i: i[:1], 5, n_boot=0), "n_boot"),
    (lambda: selection_stability(lambda i: i[:1] > 0, 5, n_boot=0), "n_boot"),
])
def test_counts_must_be_positive_integers(call, name):
    with pytest.raises(InputError, match=f"{name} must be a positive integer"):
        call()


def test_strata_must_match_the_subjects():
    with pytest.raises(InputError, match=r"strata must be a 1-D array with one entry per subject \(5\)"):
        list(permutations(5, strata=[0, 1], n_permutations=3, seed=0))
    with pytest.raises(InputError, match="strata has missing"):
        list(bootstrap_indices(3, strata=[0.0, np.nan, 1.0], n_boot=3, seed=0))


# ---------------------------------------------------------------- bootstrap intervals


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(4)
    x = rng.exponential(2.0, size=60)  # skewed: the percentile interval is not symmetric
    B = 5000
    low, high = bootstrap_ci(lambda idx: x[idx].mean(), len(x), n_boot=B, level=0.9, seed=1,
                             progress=False)
    ref = stats.bootstrap((x,), np.mean, n_resamples=B, confidence_level=0.9,
                          method="percentile", rng=np.random.default_rng(0))
    # two Monte-Carlo estimates of one quantile: their error is a few hundredths of the SD
    sd = ref.standard_error
    assert low.shape == (1,)
    assert abs(low[0] - ref.confidence_interval.low) < 0.2 * sd
    assert abs(high[0] - ref.confidence_interval.high) < 0.2 * sd
    assert high[0] - x.mean() > x.mean() - low[0]  # and the skew shows


def test_bootstrap_ci_covers_a_known_mean():
    """2000 independent datasets side by side as features: the 95% interval covers ~95%."""
    rng = np.random.default_rng(5)
    X = 1.0 + 2.0 * rng.normal(size=(40, 2000))
    low, high = bootstrap_ci(lambda idx: X[idx].mean(0), 40, n_boot=1000, seed=2,
                             progress=False)
    coverage = ((low < 1.0) & (1.0 < high)).mean()
    # the percentile interval of a mean at n = 40 covers a little under 95%
    assert 0.92 < coverage < 0.97, coverage


def test_stratified_bootstrap_ci_covers_a_known_auroc():
    """AUROC of N(1, 1) against N(0, 1) is Phi(1 / sqrt 2); classes kept by the strata."""
    rng = np.random.default_rng(6)
    n1 = n0 = 30
    y = np.repeat([True, False], [n1, n0])
    X = rng.normal(size=(n1 + n0, 400)) + 1.0 * y[:, None]
    true_auc = special.ndtr(1 / np.sqrt(2))

    def auroc(idx):
        assert y[idx].sum() == n1  # every resample keeps both classes whole
        ranks = stats.rankdata(X[idx], axis=0)
        return (ranks[y[idx]].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)

    low, high = bootstrap_ci(auroc, n1 + n0, strata=y, n_boot=500, seed=3, progress=False)
    coverage = ((low < true_auc) & (true_auc < high)).mean()
    assert 0.88 < coverage < 0.98, coverage


def test_bootstrap_ci_leaves_out_nan_resamples_and_gives_up_past_half():
    rng = np.random.default_rng(7)
    x = rng.normal(size=30)
    seen = []

    def effects(idx):
        m = x[idx].mean()
        e = np.array([m, np.nan, m, m, m])
        if idx[0] % 10 < 3:  # ~30% of resamples
            e[2] = np.nan
        if idx[0] % 10 < 7:  # ~70%
            e[3] = np.nan
        if idx[1] % 2:  # ~50%, ties at the boundary only by chance
            e[4] = np.inf  # infinite effects are values, not missing
        seen.append(e)
        return e

    low, high = bootstrap_ci(effects, 30, n_boot=400, level=0.8, seed=4, progress=False)
    seen = np.array(seen)
    ref = np.nanpercentile(seen[:, [0, 2]], [10, 90], axis=0)
    np.testing.assert_allclose(low[[0, 2]], ref[0], rtol=1e-12)
    np.testing.assert_allclose(high[[0, 2]], ref[1], rtol=1e-12)
    assert low[2] != low[0]  # the NaN resamples were left out, not the feature
    assert np.isnan(low[[1, 3]]).all() and np.isnan(high[[1, 3]]).all()
    assert np.isfinite(low[4]) and high[4] == np.inf


def test_bootstrap_ci_refuses_bad_level_and_shapes():
    with pytest.raises(InputError, match=r"level must be a number in \(0, 1\)"):
        bootstrap_ci(lambda i: i[:1], 5, level=95)
    shapes = iter([2, 3])
    with pytest.raises(InputError, match=r"effect_fn returned shape \(3,\) on resample 1"):
        bootstrap_ci(lambda i: np.zeros(next(shapes)), 5, n_boot=4, progress=False)


# ---------------------------------------------------------------- selection stability


def test_selection_stability_counts_the_share_of_resamples_selecting():
    rng = np.random.default_rng(8)
    n = 60
    y = rng.normal(size=n)
    X = rng.normal(size=(n, 20))
    X[:, 0] += 1.0 * y
    X[:, 1] += 0.25 * y
    seen = []

    def select(idx):
        chosen = stats.pearsonr(X[idx], y[idx][:, None], axis=0).pvalue < 0.05
        seen.append(chosen)
        return chosen

    freq = selection_stability(select, n, n_boot=200, seed=5, progress=False)
    np.testing.assert_array_equal(freq, np.mean(seen, axis=0))
    assert len(seen) == 200
    assert freq[0] == 1.0 and 0.1 < freq[1] < 0.95 and freq[2:].mean() < 0.25


def test_selection_stability_wants_a_boolean_mask():
    with pytest.raises(InputError, match="select_fn must return a 1-D boolean array"):
        selection_stability(lambda idx: np.array([1.0, 0.0]), 5, n_boot=3, progress=False)
    sizes = iter([2, 3])
    with pytest.raises(InputError, match="select_fn returned 3 features on resample 1"):
        selection_stability(lambda idx: np.zeros(next(sizes), bool), 5, n_boot=3,
                            progress=False)


# ---------------------------------------------------------------- split


def _check_partition(disc, held, n):
    assert np.array_equal(np.sort(np.concatenate([disc, held])), np.arange(n))
    assert (np.diff(disc) > 0).all() and (np.diff(held) > 0).all()


def test_split_keeps_class_proportions_and_both_sides_of_every_class():
    classes = np.repeat(["A", "B", "C", "D"], [50, 27, 2, 1])  # a pair and a singleton
    rng = np.random.default_rng(9)
    classes = classes[rng.permutation(len(classes))]
    disc, held = split(80, stratify=classes, heldout=0.3, seed=1)
    _check_partition(disc, held, 80)
    assert len(held) == 24  # round(80 * 0.3)
    for level, size in [("A", 50), ("B", 27), ("C", 2)]:
        k = (classes[held] == level).sum()
        assert 1 <= k <= size - 1 and abs(k - 0.3 * size) < 1
    # reproducible from the seed, another seed draws others
    again = split(80, stratify=classes, heldout=0.3, seed=1)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(split(80, stratify=classes, heldout=0.3, seed=2)[1], held)
    # remainders fill up the total: 3 classes of 5 at 30% hold out 4, not 3 * floor(1.5)
    three = np.arange(15) % 3
    disc, held = split(15, stratify=three, heldout=0.3, seed=4)
    assert len(held) == 4 and sorted(np.bincount(three[held])) == [1, 1, 2]
    # the guarantee wins over the total: 10 pairs, 10% held out, still one of each pair
    disc, held = split(20, stratify=np.arange(20) // 2, heldout=0.1, seed=0)
    assert sorted(np.arange(20)[held] // 2) == list(range(10))


def test_split_of_a_continuous_label_stratifies_on_quintiles():
    rng = np.random.default_rng(10)
    age = rng.normal(60, 10, size=100)
    disc, held = split(100, stratify=age, heldout=0.3, seed=3)
    _check_partition(disc, held, 100)
    bins = np.argsort(np.argsort(age)) // 20  # quintile of each subject, by rank
    assert (np.bincount(bins[held], minlength=5) == 6).all()
    # a float label with few values bins on them: 0/1 as floats is two classes
    flag = (np.arange(10) < 3).astype(float)
    disc, held = split(10, stratify=flag, heldout=0.5, seed=0)
    assert 1 <= flag[held].sum() <= 2 and 3 <= (1 - flag[held]).sum() <= 4


def test_split_without_strata_and_bad_heldout():
    disc, held = split(10, heldout=0.35, seed=0)
    _check_partition(disc, held, 10)
    assert len(held) == 4  # round(3.5)
    for bad in (0, 1, 1.5, -0.2, "0.3", True):
        with pytest.raises(InputError, match=r"heldout must be a share in \(0, 1\)"):
            split(10, heldout=bad)
    with pytest.raises(InputError, match="heldout=0.1 of 4 subjects leaves no held-out"):
        split(4, heldout=0.1)
    with pytest.raises(InputError, match="heldout=0.9 of 4 subjects leaves no discovery"):
        split(4, heldout=0.9)
    with pytest.raises(InputError, match="stratify must be a 1-D array"):
        split(10, stratify=[0, 1])
    with pytest.raises(InputError, match="stratify has missing"):
        split(3, stratify=[1.0, np.nan, 2.0])


# ---------------------------------------------------------------- grouped folds


def test_grouped_folds_never_split_a_subject_and_stratify_classes():
    rng = np.random.default_rng(11)
    subject_label = np.repeat([0, 1], [24, 16])
    rows = rng.integers(2, 7, size=40)  # cells per subject
    groups = np.repeat([f"s{i}" for i in range(40)], rows)
    y = np.repeat(subject_label, rows)
    folds = grouped_folds(groups, y=y, n_splits=4, seed=0)
    assert len(folds) == 4
    tested = np.concatenate([test for _, test in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(groups)))  # each row tested once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert abs(y[test].mean() - y.mean()) < 0.05  # unstratified folds stray ~0.1-0.3
    # reproducible, and the seed shuffles
    same = grouped_folds(groups, y=y, n_splits=4, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, same))
    other = grouped_folds(groups, y=y, n_splits=4, seed=1)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))
    # a continuous y (or none): grouped, unstratified folds
    for yy in (rng.normal(size=len(groups)), None):
        folds = grouped_folds(groups, y=yy, n_splits=5, seed=0)
        assert len(folds) == 5
        assert all(not set(groups[tr]) & set(groups[te]) for tr, te in folds)


def test_grouped_folds_refuse_too_few_groups():
    with pytest.raises(InputError, match="n_splits=5 folds need .* groups has 3"):
        grouped_folds([0, 0, 1, 1, 2, 2], n_splits=5)
    with pytest.raises(InputError, match="y must have one entry per row"):
        grouped_folds([0, 1, 2, 3], y=np.zeros(3), n_splits=2)
    with pytest.raises(InputError, match="y must be a 1-D array"):
        grouped_folds([0, 1, 2, 3], y=[0, 1, 1], n_splits=2)
