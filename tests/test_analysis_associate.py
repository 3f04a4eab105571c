"""associate end to end: subject-level numbers equal independent references (pandas groupby
+ scipy + statsmodels), planted truths come out first, Findings are complete or absent."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests

from bioviz.analysis import Findings, associate
from bioviz.analysis.synthetic import make_cohort
from bioviz.errors import InputError

FAST = dict(n_permutations=0, n_boot=0, n_stability=0, probes=False, heldout=None, progress=False)

# thousands of tiny least-squares fits (permutations, nilearn's permuted_ols): one BLAS thread
# is as fast on two quiet cores and far faster on shared ones
pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def cohort():
    return make_cohort(n_subjects=40, rows_per_subject=30, n_features=25, planted={0: 1.5}, seed=3)


def _subject_means(ft):
    """The reference aggregation, written independently of bioviz: pandas groupby."""
    df = pd.DataFrame(ft.X.toarray().astype(np.float64), columns=ft.var_names)
    df["subject_id"] = ft.obs["subject_id"].to_numpy()
    return df.groupby("subject_id", sort=False).mean()


def test_mann_whitney_rows_equal_scipy_on_pandas_subject_means(cohort):
    f = associate(cohort, ["diagnosis"], **FAST)
    means = _subject_means(cohort)
    dx = cohort.obs.groupby("subject_id", sort=False)["diagnosis"].first().reindex(means.index)
    case = (dx == "case").to_numpy()
    mw = f.table[f.table.test == "mann_whitney"].set_index("feature")
    for feat in means.columns:
        ref = st.mannwhitneyu(means[feat][case], means[feat][~case], alternative="two-sided",
                              method="asymptotic")
        assert mw.loc[feat, "p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert mw.loc[feat, "effect"] == pytest.approx(ref.statistic / (case.sum() * (~case).sum()))
    ref_q = multipletests(mw["p"].to_numpy(), method="fdr_bh")[1]
    np.testing.assert_allclose(mw["q"].to_numpy(), ref_q, rtol=1e-12)
    assert mw.loc["f0", "direction"] == 1 and mw.loc["f0", "n_per_group"] == "control: 20, case: 20"


def test_planted_feature_ranks_first_and_within_subject_feature_is_not_called(cohort):
    f = associate(cohort, ["diagnosis"], covariates=["age", "sex"], n_permutations=200, n_boot=200,
                  n_stability=20, probes=False, heldout=None, progress=False)
    assert f.candidates.iloc[0]["feature"] == "f0"
    assert f.candidates.iloc[0]["test"] == "linear"  # covariates: the adjusted model is primary
    row = f.table[(f.table.feature == "f0") & (f.table.test == "linear")].iloc[0]
    assert row["ci_method"] == "bootstrap" and row["ci_low"] > 0
    assert row["p_fwer"] < 0.05 and row["p_fwer_floor"] == pytest.approx(1 / 201)
    assert "f1" not in set(f.candidates["feature"])  # fires in B cells of everyone


def test_findings_directory_is_tidy_and_readable_with_pandas_alone(cohort, tmp_path):
    out = tmp_path / "findings"
    f = associate(cohort, ["diagnosis", "age"], out=str(out), **FAST)
    assert sorted(p.name for p in out.iterdir()) == [
        "associations.parquet", "candidates.parquet", "figures", "manifest.json", "probes.parquet",
        "seeds.parquet", "subjects.h5ad"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "volcano_age.png", "volcano_age.svg", "volcano_diagnosis.png", "volcano_diagnosis.svg"]
    table = pd.read_parquet(out / "associations.parquet")
    assert set(table["label"]) == {"diagnosis", "age"}
    assert set(table[table.label == "age"]["test"]) == {"spearman", "linear"}
    assert len(table) == 25 * 4 and f.path == out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["subjects"]["analysed"] == 40 and manifest["settings"]["labels"] == ["diagnosis", "age"]
    back = Findings.read(out)
    pd.testing.assert_frame_equal(back.table, table)
    assert back.subjects.n_obs == 40 and "diagnosis" in back.subjects.obs


def test_nullable_float_columns_of_a_cohort_table_are_written(cohort, tmp_path):
    """A cohort read with convert_dtypes has pandas Float64 columns (the volume adapter's
    manifest columns), which anndata cannot write: they land as float64, NA as NaN."""
    ft = cohort.copy()
    ft.obs["age"] = ft.obs["age"].astype("Float64")
    ft.obs["bmi"] = pd.array([np.nan if s == "S000" else 25.0 for s in ft.obs["subject_id"]], dtype="Float64")
    associate(ft, ["diagnosis"], out=str(tmp_path / "f"), **FAST)
    back = Findings.read(tmp_path / "f").subjects.obs
    assert back["age"].dtype == np.float64 and back["bmi"].isna().sum() == 1
    np.testing.assert_allclose(back["age"], ft.obs.groupby("subject_id")["age"].first().reindex(back.index).astype(float))


def test_an_interrupted_write_leaves_nothing_and_other_folders_are_never_replaced(cohort, tmp_path, monkeypatch):
    import anndata as ad

    out = tmp_path / "findings"
    calls = []

    def boom(self, *a, **k):
        calls.append(1)
        raise OSError("disk full")
    monkeypatch.setattr(ad.AnnData, "write_h5ad", boom)
    with pytest.raises(OSError, match="disk full"):
        associate(cohort, ["diagnosis"], out=str(out), **FAST)
    assert calls, "the fault never happened"
    assert list(tmp_path.iterdir()) == [] or all(p.name.endswith(".lock") for p in tmp_path.iterdir())
    monkeypatch.undo()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not a Findings directory"):
        associate(cohort, ["diagnosis"], out=str(other), overwrite=True, **FAST)
    assert (other / "notes.txt").read_text() == "keep"
    associate(cohort, ["diagnosis"], out=str(out), **FAST)
    with pytest.raises(InputError, match="overwrite=True"):
        associate(cohort, ["diagnosis"], out=str(out), **FAST)
    associate(cohort, ["diagnosis"], out=str(out), overwrite=True, **FAST)


def test_heldout_split_replicates_a_strong_planted_effect():
    ft = make_cohort(n_subjects=80, rows_per_subject=10, n_features=20, planted={0: 2.5}, seed=5)
    f = associate(ft, ["diagnosis"], heldout=0.4, n_permutations=0, n_boot=0, n_stability=0, probes=False,
                  progress=False)
    assert f.manifest["subjects"]["discovery"] + f.manifest["subjects"]["heldout"] == 80
    top = f.candidates.iloc[0]
    assert top["feature"] == "f0" and bool(top["replicated"])
    split = f.subjects.obs["split"].value_counts()
    assert split["heldout"] == f.manifest["subjects"]["heldout"]


def test_survival_label_gets_cox_and_logrank(cohort):
    rng = np.random.default_rng(0)
    subjects = cohort.obs["subject_id"].unique()
    means = _subject_means(cohort)
    risk = means["f0"].reindex(subjects).to_numpy()
    time = rng.exponential(1 / np.exp(risk - risk.mean()))
    clinical = pd.DataFrame({"subject_id": subjects, "os": time + 0.01, "death": (rng.random(40) < 0.8).astype(int)})
    f = associate(cohort, [{"name": "survival", "time": "os", "event": "death"}], clinical=clinical, **FAST)
    assert set(f.table["test"]) == {"cox", "logrank"}
    cox = f.table[(f.table.test == "cox")].set_index("feature")
    assert cox.loc["f0", "effect"] > 0 and cox.loc["f0", "c_index"] > 0.5


@pytest.mark.slow
def test_fwer_with_covariates_agrees_with_nilearn_permuted_ols():
    """Westfall–Young through associate (linear model, covariates, Smith's permutation of the
    residualised label) against nilearn's max-T permuted_ols on the same subject table."""
    from nilearn.mass_univariate import permuted_ols

    ft = make_cohort(n_subjects=30, rows_per_subject=10, n_features=12, planted={0: 0.9, 2: 0.6}, seed=11)
    f = associate(ft, ["diagnosis"], covariates=["age"], tests={"binary": ["linear"]}, n_permutations=2000,
                  n_boot=0, n_stability=0, probes=False, heldout=None, progress=False)
    means = _subject_means(ft)
    subj = ft.obs.groupby("subject_id", sort=False)[["diagnosis", "age"]].first().reindex(means.index)
    y = (subj["diagnosis"] == "case").to_numpy(float)[:, None]
    ref = permuted_ols(y, means.to_numpy(), confounding_vars=subj[["age"]].to_numpy(float), n_perm=2000,
                       random_state=0, output_type="dict")
    ref_p = 10 ** -ref["logp_max_t"].ravel()
    ours = f.table.set_index("feature").loc[means.columns, "p_fwer"].to_numpy()
    assert np.abs(ours - ref_p).max() < 0.05  # Monte-Carlo error of 2000 permutations each (3 SD)
    assert ours.min() < 0.2 and ref_p.min() < 0.2  # the comparison is not all at 1


def test_ranking_rule_on_a_hand_made_table():
    from bioviz.analysis.rank import rank

    t = pd.DataFrame({
        "feature": ["a", "b", "c", "d", "e"], "label": "dx", "contrast": "case vs control", "test": "linear",
        "primary": [True, True, True, True, False], "effect": [0.2, 0.9, 0.5, -0.8, 2.0], "null": 0.0,
        "q": [0.001, 0.01, 0.01, 0.04, 0.001], "replicated": pd.array([False, True, True, False, True], "boolean"),
        "stability": [0.9, 0.2, 0.8, 0.6, 1.0], "effect_name": "std_beta",
    })
    ranked = rank(t, alpha=0.05)
    # c: replicated + stable (2); then a, d (stable) and b (replicated) at tier 1, by q then |effect|
    assert ranked["feature"].tolist() == ["c", "a", "b", "d"]  # b and d: q 0.01 < 0.04
    assert ranked["tier"].tolist() == [2, 1, 1, 1] and ranked["rank"].tolist() == [1, 2, 3, 4]
    assert ranked["association_row"].tolist() == [2, 0, 1, 3]


def test_a_replication_cohort_is_the_heldout_set(tmp_path):
    disc = make_cohort(n_subjects=40, rows_per_subject=10, n_features=15, planted={0: 2.5}, seed=21)
    rep = make_cohort(n_subjects=30, rows_per_subject=10, n_features=15, planted={0: 2.5}, seed=22)
    rep.obs["subject_id"] = "R" + rep.obs["subject_id"].astype(str)
    rep.write_h5ad(tmp_path / "replication.h5ad")
    f = associate(disc, ["diagnosis"], replication=str(tmp_path / "replication.h5ad"), n_permutations=0,
                  n_boot=0, n_stability=0, probes=False, progress=False)
    assert f.manifest["subjects"] == {"analysed": 40, "discovery": 40, "heldout": 30}
    top = f.candidates.iloc[0]
    assert top["feature"] == "f0" and bool(top["replicated"]) and top["heldout_p"] < 1e-3


def test_categorical_labels_strata_and_dropped_subjects_are_recorded():
    ft = make_cohort(n_subjects=36, rows_per_subject=8, n_features=10, planted={0: 2.0}, seed=4)
    subjects = ft.obs["subject_id"].unique()
    grade = dict(zip(subjects, np.tile(["low", "mid", "high"], 12)))
    ft.obs["grade"] = ft.obs["subject_id"].map(grade).astype(str)
    missing = set(subjects[:3])
    ft.obs["age"] = ft.obs["age"].where(~ft.obs["subject_id"].isin(missing))
    with pytest.warns(UserWarning, match="age"):
        f = associate(ft, ["grade", "diagnosis"], covariates=["age"], strata="site", n_permutations=50,
                      n_boot=0, n_stability=0, probes=False, heldout=None, progress=False)
    assert f.manifest["subjects"]["analysed"] == 33
    assert all(f'"{s}"' in json.dumps(f.manifest["design"]) for s in missing)  # dropped, by id
    ovr = f.table[(f.table.label == "grade") & (f.table.contrast.str.endswith("vs rest"))]
    assert sorted(ovr["contrast"].unique()) == ["high vs rest", "low vs rest", "mid vs rest"]
    kw = f.table[(f.table.label == "grade") & (f.table.test == "kruskal")].set_index("feature")
    ref = st.kruskal(*[_subject_means(ft).drop(index=list(missing))["f3"][
        [grade[s] == g for s in _subject_means(ft).drop(index=list(missing)).index]] for g in ("low", "mid", "high")])
    assert kw.loc["f3", "p"] == pytest.approx(ref.pvalue, rel=1e-9)
