"""Cross-validated linear probes: the selection scores against scipy, the metrics against
scikit-learn (on the out-of-fold predictions, and on bootstrap resamples written out row by
row), a planted raw-beats-SAE case, no leak from top-N selection, folds and bootstrap that
keep a subject's rows together, row subsampling, sparse inputs and input errors."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from bioviz.analysis import probes
from bioviz.analysis.probes import probe
from bioviz.analysis.resample import grouped_folds
from bioviz.analysis.result import Outcome
from bioviz.errors import InputError


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """Tiny fits on two shared cores: a BLAS thread handoff costs more than the work."""
    with threadpool_limits(1):
        yield


def _quiet(**kw):
    return dict(progress=False, **kw)


def _reference_metrics(kind, y, score):
    """scikit-learn/scipy on plain arrays: the independent reference."""
    if kind == "binary":
        pred = score > 0.5
        return {"auroc": skm.roc_auc_score(y, score),
                "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
                "precision": skm.precision_score(y, pred, zero_division=0),
                "recall": skm.recall_score(y, pred),
                "average_precision": skm.average_precision_score(y, score)}
    if kind == "categorical":
        pred = score.argmax(1)
        return {"auroc_macro_ovr": skm.roc_auc_score(y, score, multi_class="ovr", average="macro"),
                "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
                "precision_macro": skm.precision_score(y, pred, average="macro", zero_division=0),
                "recall_macro": skm.recall_score(y, pred, average="macro")}
    return {"r2": skm.r2_score(y, score), "spearman_rho": stats.spearmanr(y, score).statistic}


# ------------------------------------------------------------------ selection scores

def _tied_matrix(rng, n, d):
    """Columns with ties, zeros and negatives, one constant and one all-zero column."""
    X = rng.integers(-3, 4, size=(n, d)).astype(float) * (rng.random((n, d)) < 0.5)
    X[:, 1] = rng.normal(size=n)
    X[:, 2] = 0.0
    X[:, 3] = 2.5
    X[: n // 2, 4] = rng.random(n // 2) + 1  # positives only, the rest zero
    return X


@pytest.mark.parametrize("kind", ["binary", "continuous", "categorical"])
@pytest.mark.parametrize("sparse", [False, True])
def test_selection_scores_match_scipy(kind, sparse, monkeypatch):
    rng = np.random.default_rng(1)
    n, d = 41, 12
    X = _tied_matrix(rng, n, d)
    if kind == "binary":
        y = rng.random(n) < 0.4
    elif kind == "continuous":
        y = np.round(rng.normal(size=n), 1)  # ties in y too
    else:
        y = rng.integers(0, 3, n)
    ref = np.full(d, np.nan)
    for j in range(d):
        x = X[:, j]
        if np.ptp(x) == 0:
            continue
        if kind == "binary":
            ref[j] = abs(skm.roc_auc_score(y, x) - 0.5)
        elif kind == "continuous":
            ref[j] = abs(stats.spearmanr(x, y).statistic)
        else:
            ref[j] = stats.kruskal(*[x[y == c] for c in range(3)]).statistic
    monkeypatch.setattr(probes, "_BLOCK_CELLS", n * 5)  # dense: several column blocks
    got = probes._univariate_scores(sp.csr_matrix(X) if sparse else X, y.astype(
        float if kind == "continuous" else int), kind)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert np.isnan(got[[2, 3]]).all()
    # constant columns are never picked before a scored one
    assert set(probes._top(got, d - 2)) == set(range(d)) - {2, 3}


# ------------------------------------------------------------------ metrics

def _predictions(kind, rng, n):
    if kind == "binary":
        y = (rng.random(n) < 0.4).astype(int)
        score = np.round(np.clip(0.5 + 0.3 * (y - 0.4) + 0.25 * rng.normal(size=n), 0, 1), 1)
    elif kind == "categorical":
        y = rng.integers(0, 3, n)
        logits = np.round(rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y], 1)
        score = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    else:
        y = np.round(rng.normal(size=n), 1)
        score = np.round(0.6 * y + 0.6 * rng.normal(size=n), 1)
    return y, score


@pytest.mark.parametrize("kind", ["binary", "categorical", "continuous"])
def test_metrics_on_bootstrap_counts_match_sklearn_on_repeated_rows(kind):
    """A bootstrap replicate is the metric of the rows repeated as often as drawn: check the
    weighted formulas against scikit-learn/scipy on the rows written out, ties included."""
    rng = np.random.default_rng(2)
    n = 60
    y, score = _predictions(kind, rng, n)
    W = np.vstack([np.ones(n), rng.integers(0, 4, n), rng.integers(0, 3, n)]).astype(float)
    got = probes._metrics(kind, y, score, W)
    for b, w in enumerate(W.astype(int)):
        ref = _reference_metrics(kind, np.repeat(y, w), np.repeat(score, w, axis=0))
        for metric, value in ref.items():
            assert got[metric][b] == pytest.approx(value, rel=1e-10, abs=1e-12), (metric, b)
    assert set(got) == set(probes.METRICS[kind])


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_bootstrap_resamples_subjects_not_rows(kind):
    """Every subject's rows written 5 times: resampling subjects gives exactly the intervals
    of one row per subject; resampling rows would give narrower ones."""
    rng = np.random.default_rng(3)
    n, m = 40, 5
    y, score = _predictions(kind, rng, n)
    bar = tqdm(disable=True)
    one = probes._bootstrap(kind, y, score, np.arange(n), 300, 7, bar)
    rep = np.repeat(np.arange(n), m)
    many = probes._bootstrap(kind, y[rep], score[rep], rep, 300, 7, bar)
    rows = probes._bootstrap(kind, y[rep], score[rep], np.arange(n * m), 300, 7, bar)
    for metric in one:
        np.testing.assert_allclose(many[metric], one[metric], rtol=1e-9, atol=1e-12)
    metric = probes.METRICS[kind][0]
    width = {k: np.subtract(*np.percentile(v[metric], [97.5, 2.5])) for k, v in
             (("subjects", many), ("rows", rows))}
    assert width["rows"] < 0.7 * width["subjects"]


@pytest.mark.parametrize("kind", ["binary", "categorical", "continuous"])
def test_inner_validation_loss_matches_sklearn(kind):
    """The loss the inner CV ranks penalties by: log loss with classes weighted alike
    (scikit-learn's log_loss with balanced sample weights), or the mean squared error."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(50, 4))
    if kind == "continuous":
        y = X[:, 0] + rng.normal(size=50)
    else:
        y = np.minimum((X[:, 0] + rng.normal(size=50) > 0.7) * (1 + (kind == "categorical") *
                                                                (X[:, 1] > 0)), 2)
    model = probes._model(kind, 0.5, sparse=False).fit(X[:30], y[:30])
    got = probes._validation_loss(model, X[30:], y[30:], kind)
    if kind == "continuous":
        ref = skm.mean_squared_error(y[30:], model.predict(X[30:]))
    else:
        t = y[30:]
        ref = skm.log_loss(t, model.predict_proba(X[30:]), labels=model.classes_,
                           sample_weight=1 / np.bincount(t)[t])
        assert np.bincount(t).min() < np.bincount(t).max()  # unequal classes: weights matter
    assert got == pytest.approx(ref, rel=1e-12)


# ------------------------------------------------------------------ the probe table

@pytest.mark.parametrize("kind", ["binary", "categorical", "continuous"])
def test_table_metrics_equal_sklearn_on_returned_predictions(kind):
    rng = np.random.default_rng(4)
    n_subj, per = (24, 6) if kind == "binary" else (60, 1)
    n = n_subj * per
    A = rng.normal(size=(n, 6))
    F = np.maximum(rng.normal(size=(n, 20)), 0)
    if kind == "binary":
        y = A[:, 0] + 0.5 * rng.normal(size=n) > 0.8  # about 1 case in 4
        level, groups = "row", np.repeat([f"s{i:02d}" for i in range(n_subj)], per)
    elif kind == "categorical":
        codes = np.argmax(A[:, :3] + 0.8 * rng.normal(size=(n, 3)), 1)
        y = Outcome("dx", "categorical", codes, ["a", "b", "c"])  # the levels name the classes
        level, groups = "subject", None
    else:
        y = A[:, 0] + 0.5 * rng.normal(size=n)
        level, groups = "subject", None
    table, pred = probe({"raw": A, "SAE": F}, y, kind=None if kind == "categorical" else kind,
                        groups=groups, top_n=(3,),
                        n_splits=4, n_boot=100, level=level, return_predictions=True, **_quiet())
    assert list(table.columns) == ["probe", "input", "level", "n_rows", "n_groups", "n_features",
                                   "metric", "value", "ci_low", "ci_high", "n_splits"]
    assert table["probe"].unique().tolist() == ["raw", "SAE", "top 3 SAE"]
    assert table.groupby("probe")["n_features"].first().to_dict() == {"raw": 6, "SAE": 20,
                                                                      "top 3 SAE": 3}
    assert (table["n_rows"] == n).all() and (table["n_groups"] == n_subj).all()
    assert table.attrs["subsampled"] is None
    for name, part in pred.groupby("probe"):
        part = part.sort_values("row")
        assert part["row"].tolist() == list(range(n))  # every row predicted once, out of fold
        yv = part["y"].to_numpy()
        if kind == "categorical":
            score = part[["score_a", "score_b", "score_c"]].to_numpy()
            yv = np.searchsorted(["a", "b", "c"], yv)
        else:
            score = part["score"].to_numpy()
        ref = _reference_metrics(kind, yv, score)
        got = table[table["probe"] == name].set_index("metric")
        for metric, value in ref.items():
            assert got.loc[metric, "value"] == pytest.approx(value, rel=1e-10), (name, metric)
            assert got.loc[metric, "ci_low"] <= value + 1e-12 <= got.loc[metric, "ci_high"] + 2e-12
    # one fold per subject, and the same folds for every probe (paired comparison)
    assert (pred.groupby("group")["fold"].nunique() == 1).all()
    folds = pred.pivot(index="row", columns="probe", values="fold")
    assert (folds.nunique(axis=1) == 1).all()
    raw = table[table["probe"] == "raw"].set_index("metric")["value"]
    assert raw.iloc[0] > (0.75 if kind != "continuous" else 0.6)  # the planted signal is found
    for name, X in (("raw", A), ("SAE", F)):
        _check_penalty_is_grid_search_choice(pred[pred["probe"] == name], X, kind)


def _check_penalty_is_grid_search_choice(pred, X, kind):
    """Each outer fold's penalty is what scikit-learn's GridSearchCV picks on that fold's
    training rows, over the same inner grouped folds (3, seed 0) and the same loss: mean
    squared error, or log loss with every class weighted alike (as the balanced fit is)."""
    pred = pred.sort_values("row")
    y = pred["y"].to_numpy()
    groups = pred["group"].to_numpy()
    if kind == "continuous":
        model, grid = Ridge(), {"ridge__alpha": probes.ALPHA_GRID}
        scoring = "neg_mean_squared_error"
    else:
        y = np.unique(y, return_inverse=True)[1]
        model = LogisticRegression(class_weight="balanced", max_iter=5000)
        grid = {"logisticregression__C": probes.C_GRID}
        scoring = skm.make_scorer(lambda t, p: skm.log_loss(t, p, sample_weight=1 / np.bincount(
            t)[t]), greater_is_better=False, response_method="predict_proba")
    for f in range(pred["fold"].max() + 1):
        train = (pred["fold"] != f).to_numpy()
        inner = grouped_folds(groups[train], y=None if kind == "continuous" else y[train],
                              n_splits=3, seed=0)
        search = GridSearchCV(make_pipeline(StandardScaler(), model), grid, cv=inner,
                              scoring=scoring).fit(X[train], y[train])
        chosen = pred.loc[pred["fold"] == f, "penalty"].unique()
        assert chosen.tolist() == [next(iter(search.best_params_.values()))], f


def test_planted_signal_in_a_dense_direction_favours_raw_at_row_level():
    """(a) The label is a dense direction of the activations; the 'SAE' codes are sparse and
    unrelated: the table shows raw well above SAE, whose interval covers chance."""
    rng = np.random.default_rng(5)
    n_subj, per, d = 30, 8, 16
    n = n_subj * per
    A = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = A @ w + 0.5 * np.linalg.norm(w) * rng.normal(size=n) > 0
    F = sp.random(n, 64, density=0.1, random_state=5, format="csr")
    table = probe({"raw activations": A, "SAE features": F}, y, kind="binary",
                  groups=np.repeat(np.arange(n_subj), per), level="row", top_n=(5,), n_splits=5,
                  n_boot=200, **_quiet())
    auroc = table[table["metric"] == "auroc"].set_index("probe")
    raw, sae = auroc.loc["raw activations"], auroc.loc["SAE features"]
    assert raw["value"] > 0.9
    assert raw["ci_low"] > sae["ci_high"]
    assert sae["ci_low"] < 0.5 < sae["ci_high"]
    assert auroc.loc["top 5 SAE features", "ci_low"] < 0.5 < auroc.loc["top 5 SAE features",
                                                                         "ci_high"]
    assert (table["level"] == "row").all() and (table["n_groups"] == n_subj).all()


def test_top_n_selection_inside_folds_does_not_leak():
    """(b) Pure noise, 500 features, 40 subjects: the top-10 probe stays at chance. Selecting
    the same top 10 on all subjects first (the leak) makes the same model look good."""
    rng = np.random.default_rng(6)
    n, d = 40, 500
    y = np.repeat([False, True], n // 2)
    F = rng.normal(size=(n, d))
    table = probe({"raw": rng.normal(size=(n, 4)), "SAE": F}, y, kind="binary", top_n=(10,),
                  n_splits=5, n_boot=200, **_quiet())
    top = table[(table["probe"] == "top 10 SAE") & (table["metric"] == "auroc")].iloc[0]
    assert top["ci_low"] < 0.5 < top["ci_high"]
    assert top["value"] < 0.7
    # the leak, written with scikit-learn: selection on all rows, then cross-validation
    auc = np.array([skm.roc_auc_score(y, F[:, j]) for j in range(d)])
    chosen = np.argsort(-np.abs(auc - 0.5))[:10]
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
    leaky = cross_val_predict(model, F[:, chosen], y, cv=StratifiedKFold(5, shuffle=True,
                                                                         random_state=0),
                              method="predict_proba")[:, 1]
    assert skm.roc_auc_score(y, leaky) > 0.85


def test_row_level_folds_keep_subjects_together():
    """(c) Rows carry their subject's offset and the label is constant within subject:
    grouped folds leave nothing to learn (chance), row-wise folds learn the subjects."""
    rng = np.random.default_rng(7)
    n_subj, per, d = 40, 8, 40
    offset = rng.normal(size=(n_subj, d))
    label = rng.permutation(np.repeat([0, 1], n_subj // 2))
    subj = np.repeat(np.arange(n_subj), per)
    X = offset[subj] + 0.3 * rng.normal(size=(n_subj * per, d))
    y = label[subj]
    table, pred = probe({"rows": X}, y, kind="binary", groups=subj, level="row", top_n=(),
                        n_splits=5, n_boot=200, return_predictions=True, **_quiet())
    grouped = table.set_index("metric").loc["auroc"]
    assert grouped["ci_low"] < 0.5 < grouped["ci_high"]
    assert (pred.groupby("group")["fold"].nunique() == 1).all()
    # the same probe told every row is its own subject: the folds split subjects and leak
    ungrouped = probe({"rows": X}, y, kind="binary", groups=np.arange(len(y)), level="row",
                      top_n=(), n_splits=5, n_boot=0, **_quiet()).set_index("metric")
    assert ungrouped.loc["auroc", "value"] > 0.95
    # and so does scikit-learn's row-wise cross-validation: the setup can leak
    model = make_pipeline(StandardScaler(), LogisticRegression())
    rowwise = cross_val_predict(model, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                                method="predict_proba")[:, 1]
    assert skm.roc_auc_score(y, rowwise) > 0.95


def test_row_level_subsampling_keeps_each_subject_and_label_share():
    rng = np.random.default_rng(8)
    sizes = rng.integers(20, 80, 12)
    subj = np.repeat(np.arange(12), sizes)
    n = len(subj)
    X = rng.normal(size=(n, 5))
    y = rng.random(n) < 0.3
    table, pred = probe({"x": X}, y, kind="binary", groups=subj, level="row", top_n=(),
                        n_splits=3, n_boot=20, max_rows=300, seed=3, return_predictions=True,
                        **_quiet())
    assert table.attrs["subsampled"] == {"n_rows_before": n, "n_rows": 300,
                                         "stratified_by": "group and y", "seed": 3}
    assert (table["n_rows"] == 300).all()
    rows = pred["row"].to_numpy()
    assert len(np.unique(rows)) == 300 and np.isin(rows, np.arange(n)).all()
    np.testing.assert_array_equal(pred["group"], subj[rows])
    np.testing.assert_array_equal(pred["y"], y[rows])
    full = pd.crosstab(subj, y)
    kept = pd.crosstab(subj[rows], y[rows]).reindex_like(full).fillna(0)
    assert (np.abs(kept - full * 300 / n) < 1 + 1e-9).all().all()


def test_sparse_input_gives_the_dense_results():
    """Sparse features are scaled without centering; the intercept absorbs the mean, so the
    table matches the dense one (up to the solver's tolerance)."""
    rng = np.random.default_rng(9)
    n = 80
    F = sp.random(n, 30, density=0.2, random_state=9, format="csr")
    y = (F[:, :3].toarray().sum(1) > 0) ^ (rng.random(n) < 0.1)  # 10% of labels flipped
    kw = dict(kind="binary", top_n=(5,), n_splits=3, n_boot=50, **_quiet())
    dense = probe({"SAE": F.toarray()}, y, **kw)
    sparse = probe({"SAE": F}, y, **kw)
    np.testing.assert_allclose(sparse["value"], dense["value"], atol=1e-3)
    assert dense.set_index(["probe", "metric"]).loc[("top 5 SAE", "auroc"), "value"] > 0.7


def test_constant_input_and_top_n_edge_cases():
    rng = np.random.default_rng(10)
    n = 30
    y = rng.normal(size=n)
    with pytest.warns(UserWarning, match="top_n=8 is not fewer than the 8 features"):
        table = probe({"zeros": np.zeros((n, 3)), "x": rng.normal(size=(n, 8))}, y,
                      kind="continuous", top_n=(2, 8), n_splits=3, n_boot=50, **_quiet())
    assert table["probe"].unique().tolist() == ["zeros", "x", "top 2 x"]
    # all-zero features: each fold predicts its training mean, which is no better than y's mean
    zeros = table[table["probe"] == "zeros"].set_index("metric")["value"]
    assert zeros["r2"] <= 0 and np.isfinite(zeros["spearman_rho"])


@pytest.mark.parametrize("change, message", [
    (dict(inputs={"raw": np.zeros((20, 3)), "SAE": np.zeros((19, 5))}),
     r"same rows.*'raw': 20, 'SAE': 19"),
    (dict(y=np.r_[np.nan, np.ones(19)]), r"y has 1 missing"),
    (dict(groups=np.arange(19), level="row"), r"groups must give one subject id per row"),
    (dict(level="row"), r"groups \(the subject id of each row\) is required"),
    (dict(groups=np.repeat(np.arange(4), 5), level="row"),
     r"only 4 subjects \(groups\) for n_splits=5.*at most 4"),
    (dict(y=np.r_[np.ones(3), np.zeros(17)]),
     r"class 1\.0 of y occurs in only 3 subjects.*n_splits=5.*at most 3"),
    (dict(groups=np.repeat(np.arange(10), 2)), r"repeats subject ids.*level='row'"),
    (dict(select_from="PCA"), r"select_from='PCA' is not an input"),
    (dict(kind="survival"), r"kind must be one of"),
    (dict(y=np.array(["ctrl", "case"] * 10)), r"must be bool or numeric"),
    (dict(inputs={"raw": np.full((20, 3), np.inf)}), r"inputs\['raw'\] has NaN or infinite"),
    (dict(n_splits=1), r"n_splits must be an integer of at least 2"),
    (dict(y=Outcome("dx", "continuous", np.arange(20.0))), r"kind='binary' but the Outcome 'dx'"),
])
def test_bad_input_raises_input_error_naming_it(change, message):
    args = dict(inputs={"raw": np.zeros((20, 3)), "SAE": np.zeros((20, 5))},
                y=np.tile([0.0, 1.0], 10), kind="binary", groups=None, level="subject", top_n=())
    args.update(change)
    inputs, y = args.pop("inputs"), args.pop("y")
    with pytest.raises(InputError, match=message):
        probe(inputs, y, **args, **_quiet())
