"""Per-feature evidence (top examples, summary, histograms) and the one-line description."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bioviz.errors import InputError
from bioviz.interpret import examples as ex
from bioviz.interpret.describe import describe, describe_all
from bioviz.interpret.examples import (
    activation_histogram,
    feature_summary,
    top_composition,
    top_examples,
    write_feature_evidence,
)


def _table(x, subjects, **obs_cols) -> ad.AnnData:
    x = np.asarray(x, dtype=np.float32)
    obs = pd.DataFrame({"subject_id": subjects, "sample_id": [f"{s}_a" for s in subjects],
                        **obs_cols}, index=[f"r{i}" for i in range(len(x))])
    return ad.AnnData(sp.csr_matrix(x), obs=obs,
                      var=pd.DataFrame(index=[f"f{j}" for j in range(x.shape[1])]))


def _random_table(seed=0, n=120, d=6) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    # activations on a coarse grid: many exact ties, to test the tie rule
    x = np.maximum(np.round(rng.normal(0, 1, (n, d)), 1), 0)
    x[:, d - 1] = 0  # never fires
    subjects = [f"S{i:02d}" for i in rng.integers(0, 10, n)]
    return _table(x, subjects, cell_id=[f"c{i}" for i in range(n)],
                  cell_type=rng.choice(["T", "B", "NK"], n),
                  diagnosis=rng.choice(["case", "control"], n))


# ------------------------------------------------------------------ top_examples


def test_top_examples_hand_worked_ties_go_to_the_earlier_row():
    x = [[0.0, 1.0], [2.0, 3.0], [2.0, 0.0], [0.5, 3.0], [2.0, 0.0]]
    ft = _table(x, ["A", "A", "B", "B", "C"], diagnosis=["case", "case", "control", "control",
                                                         "case"])
    out = top_examples(ft, ["f0", "f1"], n=2, label="diagnosis")
    assert list(out.columns) == ["feature", "rank", "row", "activation", "subject", "sample",
                                 "diagnosis"]
    assert out["row"].tolist() == ["r1", "r2", "r1", "r3"]
    assert out["rank"].tolist() == [1, 2, 1, 2]
    assert out["activation"].tolist() == [2.0, 2.0, 3.0, 3.0]
    assert out["subject"].tolist() == ["A", "B", "A", "B"]
    assert out["sample"].tolist() == ["A_a", "B_a", "A_a", "B_a"]
    assert out["diagnosis"].tolist() == ["case", "control", "case", "control"]
    # a negative code is not "firing": only positive codes count
    neg = _table([[-1.0], [0.0], [2.0], [-0.5], [0.0]], ["A", "A", "B", "B", "C"])
    assert top_examples(neg, "f0", n=5)["row"].tolist() == ["r2"]


def test_top_examples_equal_a_plain_python_sort():
    ft = _random_table()
    x = ft.X.toarray()
    with pytest.warns(UserWarning, match="f5 never fires"):
        out = top_examples(ft, list(ft.var_names), n=7, columns=["cell_type"])
    for j, f in enumerate(ft.var_names):
        # independent reference: sorted() on (−activation, row) over the firing rows
        ref = sorted((i for i in range(len(x)) if x[i, j] > 0), key=lambda i: (-x[i, j], i))[:7]
        got = out[out["feature"] == f]
        assert got["row"].tolist() == [f"r{i}" for i in ref]
        np.testing.assert_array_equal(got["activation"], x[ref, j].astype(np.float64))
        assert got["cell_type"].tolist() == ft.obs["cell_type"].iloc[ref].tolist()
    assert (out["feature"] == "f5").sum() == 0
    assert "cell_id" not in out  # columns= replaces the default row columns


def test_default_columns_are_the_row_columns_present():
    ft = _random_table()
    ft.obs["grid_0"], ft.obs["world_x"], ft.obs["age"] = 1, 2.0, 50
    out = top_examples(ft, "f0", n=3)
    assert list(out.columns) == ["feature", "rank", "row", "activation", "subject", "sample",
                                 "cell_id", "cell_type", "grid_0", "world_x"]


@pytest.mark.parametrize("dense", [False, True])
def test_backed_h5ad_gives_the_same_as_in_memory(tmp_path, monkeypatch, dense):
    ft = _random_table(seed=3, n=101)
    if dense:
        ft.X = ft.X.toarray()
    path = tmp_path / "ft.h5ad"
    ft.write_h5ad(path)
    feats = ["f4", "f0", "f2"]
    mem = top_examples(ft, feats, n=9, label="diagnosis")
    summ = feature_summary(ft, feats, n_top=9, label="diagnosis")
    # many small row blocks (the last one short) must give the same as one
    monkeypatch.setattr(ex, "_SPARSE_ROWS", 8)
    monkeypatch.setattr(ex, "_CELLS", 8 * ft.n_vars)
    pd.testing.assert_frame_equal(top_examples(path, feats, n=9, label="diagnosis"), mem)
    pd.testing.assert_frame_equal(top_examples(str(path), feats, n=9, label="diagnosis"), mem)
    pd.testing.assert_frame_equal(feature_summary(path, feats, n_top=9, label="diagnosis"), summ)
    pd.testing.assert_frame_equal(top_examples(ft, feats, n=9, label="diagnosis"), mem)


# ------------------------------------------------------------------ feature_summary


def test_single_subject_flag_on_a_planted_feature():
    rng = np.random.default_rng(1)
    n_subj, per = 8, 15
    subjects = np.repeat([f"S{i}" for i in range(n_subj)], per)
    x = np.maximum(rng.normal(0, 1, (n_subj * per, 3)), 0)
    x[:, 1] = np.where(subjects == "S5", rng.uniform(1, 2, len(subjects)), 0)  # S5 only
    # f2: top 10 rows exactly half from S0 (the threshold), the rest from five others
    x[:, 2] = 0
    x[np.flatnonzero(subjects == "S0")[:5], 2] = 9.0
    for k in range(1, 6):
        x[np.flatnonzero(subjects == f"S{k}")[0], 2] = 5.0 + k
    out = feature_summary(_table(x, subjects), ["f0", "f1", "f2"], n_top=10).set_index("feature")
    fired = x[:, 0] > 0
    assert out.at["f0", "n_rows_firing"] == fired.sum()
    assert out.at["f0", "density"] == pytest.approx(fired.mean())
    assert out.at["f0", "n_subjects_firing"] == len(set(subjects[fired]))
    assert out.at["f0", "mean_activation"] == pytest.approx(x[:, 0].astype(np.float32).mean(),
                                                            rel=1e-6)
    assert out.at["f0", "max_activation"] == pytest.approx(x[:, 0].max(), rel=1e-6)
    top0 = subjects[sorted(range(len(x)), key=lambda i: (-x[i, 0], i))[:10]]
    share0 = pd.Series(top0).value_counts().max() / 10
    assert out.at["f0", "top_subject_share"] == pytest.approx(share0)
    assert not out.at["f0", "single_subject"] and share0 < 0.5
    assert out.at["f1", "single_subject"] and out.at["f1", "top_subject_share"] == 1.0
    assert out.at["f1", "top_subjects"] == "S5: 1.00"
    assert out.at["f1", "n_subjects_firing"] == 1
    assert out.at["f2", "top_subject_share"] == 0.5 and out.at["f2", "single_subject"]
    assert out.at["f2", "top_subjects"] == "S0: 0.50, S5: 0.10, S4: 0.10"  # ties: rank order
    assert ex.SINGLE_SUBJECT_SHARE == 0.5


def test_label_composition_hand_checked():
    # 20 rows, 6 cases (0.30 of rows); the feature's top 10 rows hold 9 cases
    diagnosis = np.array(["control"] * 20, dtype=object)
    diagnosis[[0, 2, 4, 6, 8, 19]] = "case"
    act = np.zeros(20)
    act[[0, 2, 4, 6, 8]] = [10, 9, 8, 7, 6]
    act[[1, 3, 5, 7, 9, 19]] = [1, 0.5, 0.4, 0.3, 0.2, 5]  # rank 6..: case r19, then controls
    x = np.column_stack([act, np.ones(20)])
    ft = _table(x, [f"S{i // 2}" for i in range(20)], diagnosis=diagnosis)
    out = feature_summary(ft, ["f0", "f1"], n_top=10, label="diagnosis").set_index("feature")
    assert out.at["f0", "label_value"] == "case"
    assert out.at["f0", "label_share_top"] == pytest.approx(0.6)
    assert out.at["f0", "label_share_cohort"] == pytest.approx(0.3)
    assert out.at["f0", "label_composition"] == "case 0.60 vs 0.30 in the cohort"
    # f1 fires everywhere equally: its top 10 are rows 0..9, 5 cases
    assert out.at["f1", "label_composition"] == "case 0.50 vs 0.30 in the cohort"
    out5 = feature_summary(ft, "f0", n_top=6, label="diagnosis")
    assert out5["label_composition"].iloc[0] == "case 1.00 vs 0.30 in the cohort"


def test_top_composition_counts_shares():
    ft = _random_table()
    tops = top_examples(ft, ["f0", "f1"], n=12, columns=["cell_type"])
    comp = top_composition(tops, "cell_type")
    for f in ("f0", "f1"):
        ref = tops.loc[tops["feature"] == f, "cell_type"].value_counts()
        got = comp[comp["feature"] == f].set_index("value")
        assert got["n"].to_dict() == ref.to_dict()
        assert got["share"].sum() == pytest.approx(1.0)
        assert got["share"].is_monotonic_decreasing


# ------------------------------------------------------------------ figures and the folder


def test_histogram_counts_and_labels():
    ft = _random_table()
    fig = activation_histogram(ft, "f0", label="diagnosis")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert "SAE code (activation)" in ax.get_xlabel() and "rows" in ax.get_ylabel()
    fired = ft.X.toarray()[:, 0] > 0
    assert f"density {fired.mean():.2%}" in ax.get_title()
    legend = sorted(t.get_text() for t in ax.get_legend().get_texts())
    n_case = int((fired & (ft.obs["diagnosis"] == "case").to_numpy()).sum())
    assert legend == [f"diagnosis = case (n = {n_case})",
                      f"diagnosis = control (n = {fired.sum() - n_case})"]
    fig = activation_histogram(ft, "f0")
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert sum(heights) == fired.sum()


def test_write_feature_evidence(tmp_path):
    ft = _random_table()
    out = tmp_path / "evidence"
    with pytest.warns(UserWarning, match="f5 never fires"):
        write_feature_evidence(ft, ["f0", "f5"], out, n=5, label="diagnosis", progress=False)
    for f in ("f0", "f5"):
        for name in ("top_examples.tsv", "histogram.png", "histogram.svg"):
            assert (out / f / name).stat().st_size > 0
        assert (out / f / "histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / f / "histogram.svg").read_text()
    tops = pd.read_csv(out / "f0" / "top_examples.tsv", sep="\t")
    assert tops["row"].tolist() == top_examples(ft, "f0", n=5)["row"].tolist()
    assert len(pd.read_csv(out / "f5" / "top_examples.tsv", sep="\t")) == 0
    summ = pd.read_csv(out / "feature_summary.tsv", sep="\t")
    assert summ["feature"].tolist() == ["f0", "f5"] and summ["n_rows_firing"].iloc[1] == 0
    assert sorted(p.name for p in out.iterdir()) == ["f0", "f5", "feature_summary.tsv"]
    with pytest.raises(InputError, match="overwrite=True"):
        write_feature_evidence(ft, ["f0"], out, progress=False)
    write_feature_evidence(ft, ["f0"], out, n=3, overwrite=True, progress=False)
    assert len(pd.read_csv(out / "f0" / "top_examples.tsv", sep="\t")) == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


# ------------------------------------------------------------------ bad input


def test_bad_input_names_what_is_wrong(tmp_path):
    ft = _random_table()
    with pytest.raises(InputError, match=r"'f01' not in .*var_names.*close names: f1, f0"):
        top_examples(ft, ["f0", "f01"])
    with pytest.raises(InputError, match=r"label='stage' is not an obs column.*diagnosis"):
        feature_summary(ft, "f0", label="stage")
    with pytest.raises(InputError, match="subject_key='donor'"):
        top_examples(ft, "f0", subject_key="donor")
    with pytest.raises(InputError, match="columns='nope'"):
        top_examples(ft, "f0", columns=["nope"])
    with pytest.raises(InputError, match="n must be a positive integer"):
        top_examples(ft, "f0", n=0)
    with pytest.raises(InputError, match="features must be names"):
        top_examples(ft, [3])
    with pytest.raises(InputError, match="no such file"):
        top_examples(tmp_path / "missing.h5ad", "f0")
    (tmp_path / "junk.h5ad").write_text("not hdf5")
    with pytest.raises(InputError, match="cannot be read as an .h5ad"):
        feature_summary(tmp_path / "junk.h5ad", "f0")
    n_fired = int((ft.X.toarray()[:, 0] > 0).sum())
    with pytest.raises(InputError, match=f"label='cell_id' has {n_fired} values"):
        activation_histogram(ft, "f0", label="cell_id")


# ------------------------------------------------------------------ describe


def _evidence():
    return {
        "summary": pd.DataFrame({"feature": ["f1", "f7"], "n_rows_firing": [40, 300],
                                 "top_subject_share": [0.2, 0.62],
                                 "top_subjects": ["S1: 0.20", "S003: 0.62, S010: 0.20"],
                                 "single_subject": [False, True]}),
        "composition": pd.DataFrame({"feature": ["f7", "f7", "f1"],
                                     "column": ["cell_type"] * 3,
                                     "value": ["CD14+ Monocytes", "B", "T"], "n": [5, 2, 7],
                                     "share": [0.29, 0.71, 1.0]}),
        "top_genes": pd.DataFrame({"feature": ["f7"] * 4, "gene": ["LYZ", "S100A9", "CST3",
                                                                   "S100A8"],
                                   "score": [0.8, 0.9, 0.1, 0.5]}),
        "enrichment": pd.DataFrame({"feature": ["f7", "f7"], "set": ["Hypoxia",
                                                                    "Interferon type I response"],
                                    "p": [0.2, 1e-4], "q": [0.3, 0.0021]}),
        "motifs": pd.DataFrame({"rank": [2, 1], "matrix_id": ["MA0102.5", "MA0139.2"],
                                "name": ["CEBPA", "CTCF"], "p": [1e-3, 1e-7], "q": [0.04, 1e-5]}),
        "association": pd.DataFrame({"feature": ["f7", "f7"], "label": ["diagnosis"] * 2,
                                     "contrast": ["AD vs CN", "AD vs CN"],
                                     "test": ["logistic", "mann_whitney"],
                                     "effect_name": ["log_or_per_sd", "auroc"],
                                     "effect": [1.2, 0.8123], "q": [0.01, 0.003],
                                     "direction": [1, 1]}),
    }


def test_describe_exact_sentence_and_its_sources():
    evidence = _evidence()
    text, sources = describe("f7", evidence)
    assert text == ("fires in B (71% of top cells); top genes S100A9, LYZ, S100A8; enriched for "
                    "Interferon type I response, q = 0.0021; matches JASPAR MA0139.2 CTCF, "
                    "q = 1e-5; higher in AD than CN: AUROC 0.81, q = 0.003; caution: 62% of top "
                    "rows from one subject (S003)")
    assert ("top_genes", 1, "gene") in sources and ("motifs", 1, "matrix_id") in sources
    assert ("association", 1, "q") in sources and ("enrichment", 1, "set") in sources
    for table, row, column in sources:  # every source is a cell that exists ...
        value = evidence[table].loc[row, column]
        if table == "top_genes" or column in ("set", "matrix_id", "name"):
            assert str(value) in text  # ... and the named things are said
    # the second feature: only its own rows are used (a motif table without a feature column
    # is about whichever feature it is given for, so leave it out)
    text, sources = describe("f1", {k: v for k, v in evidence.items() if k != "motifs"})
    assert text == "fires in T (100% of top cells)"
    assert sources == [("composition", 2, "column"), ("composition", 2, "value"),
                       ("composition", 2, "share")]


def test_describe_wording_of_directions_and_non_findings():
    row = {"feature": "f", "label": "age", "contrast": "rank correlation", "effect_name": "rho",
           "effect": -0.4, "q": 0.01}
    assert describe("f", {"association": pd.DataFrame([row])})[0] == (
        "falls with age: Spearman rho -0.40, q = 0.01")
    row.update(label="diagnosis", contrast="AD vs rest", effect_name="auroc", effect=0.3)
    assert describe("f", {"association": pd.DataFrame([row])})[0] == (
        "lower in AD than the rest: AUROC 0.30, q = 0.01")
    row.update(q=0.2)
    assert describe("f", {"association": pd.DataFrame([row])})[0] == (
        "no association with diagnosis at q < 0.05 (AUROC 0.30, q = 0.2)")
    weak = {"enrichment": pd.DataFrame({"feature": ["f"], "set": ["X"], "p": [0.1], "q": [0.41],
                                        "nes": [2.0]}),
            "motifs": pd.DataFrame({"matrix_id": ["M"], "name": ["N"], "p": [0.1], "q": [0.3]})}
    assert describe("f", weak)[0] == ("no gene set enriched at q < 0.05 (best q = 0.41); "
                                      "no JASPAR match at q < 0.05 (best q = 0.3)")
    weak["enrichment"].loc[0, ["q", "nes"]] = [0.01, -1.5]
    assert describe("f", weak)[0].startswith("depleted of X, q = 0.01;")


def test_describe_on_real_findings_and_enrichment():
    from bioviz import associate
    from bioviz.analysis.synthetic import make_cohort
    from bioviz.interpret.enrichment import overrepresentation

    ft = make_cohort(n_subjects=12, rows_per_subject=10, n_features=4, planted={0: 3.0}, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        findings = associate(ft, ["diagnosis"], n_permutations=0, n_boot=0, n_stability=0,
                             probes=False, heldout=None, progress=False)
    cand = findings.candidates
    assert "f0" in set(cand["feature"])
    universe = [f"g{i}" for i in range(100)]
    sets = {"planted": universe[:10], "other": universe[50:60]}
    enr = overrepresentation({"f0": universe[:8] + universe[90:92]}, sets, universe)
    evidence = {"association": cand, "enrichment": enr,
                "summary": feature_summary(ft, ["f0"], n_top=20)}
    text, sources = describe("f0", evidence)
    r = cand.index[cand["feature"] == "f0"][0]
    auroc, q = cand.at[r, "effect"], cand.at[r, "q"]
    assert auroc > 0.5  # cases are higher on the planted feature
    qtext = f"{q:.2g}" if q >= 1e-3 else None
    assert qtext is not None
    assert text.startswith("enriched for planted, q = ")
    assert f"higher in case than control: AUROC {auroc:.2f}, q = {qtext}" in text
    for table, row, column in sources:
        evidence[table].loc[row, column]  # raises KeyError if the source does not exist
    table = describe_all(["f0", "f2"], {"association": cand})
    assert table["feature"].tolist() == ["f0", "f2"] and table["description"].str.len().min() > 0


def test_never_firing_feature_warns_and_is_described():
    ft = _random_table()
    with pytest.warns(UserWarning, match="f5 never fires"):
        summ = feature_summary(ft, ["f0", "f5"])
    text, sources = describe("f5", {"summary": summ, "association": pd.DataFrame(
        {"feature": ["f5"], "label": ["diagnosis"], "contrast": ["case vs control"],
         "effect_name": ["auroc"], "effect": [np.nan], "q": [np.nan]})})
    assert text == ("never fires in the FeatureTable; no association with diagnosis at "
                    "q < 0.05 (AUROC nan, q = NA)")
    assert sources[0] == ("summary", 1, "n_rows_firing")


def test_describe_empty_and_bad_evidence():
    assert describe("f1", {}) == ("no evidence available: no evidence tables given", [])
    ev = _evidence()
    text, sources = describe("f9", {"association": ev["association"], "summary": ev["summary"]})
    assert (text, sources) == ("no evidence available: no rows for f9 in association, summary",
                               [])
    with pytest.raises(InputError, match="unknown table.*'genes'.*top_genes"):
        describe("f7", {"genes": ev["top_genes"]})
    with pytest.raises(InputError, match=r"evidence\['motifs'\] lacks the column\(s\) q"):
        describe("f7", {"motifs": ev["motifs"].drop(columns="q")})
    with pytest.raises(InputError, match="must be a pandas DataFrame"):
        describe("f7", {"motifs": [1, 2]})
    with pytest.raises(InputError, match="repeated index"):
        describe("f7", {"motifs": pd.concat([ev["motifs"], ev["motifs"]])})


def test_describe_cell_types_and_interventions_by_hand():
    cells = pd.DataFrame({"feature": ["f", "f", "f"], "group": ["NK", "T", "B"],
                          "specificity": [2.6, 0.38, 0.0], "n_firing": [30, 40, 0]})
    assert describe("f", {"cell_types": cells})[0] == "most specific to NK (2.6x the next cell type)"
    cells.loc[0, "specificity"] = 1.2  # strongest in NK, but barely: not called specific
    assert describe("f", {"cell_types": cells})[0].startswith("no evidence available")
    cells.loc[0, "specificity"] = np.inf
    assert describe("f", {"cell_types": cells})[0] == "most specific to NK (only there)"
    inter = pd.DataFrame({"feature": "f", "role": ["target", "target"] + ["random"] * 40,
                          "output": [0, 1] + [0, 1] * 20, "mean_abs_change": [0.2, 3.14] + [0.1, 0.2] * 20,
                          "effect_ratio": [2.0, 15.7] + [np.nan] * 40,
                          "p_empirical": [0.5, 1 / 21] + [np.nan] * 40})
    text, sources = describe("f", {"interventions": inter})
    assert text == ("ablation moves output 1 by 3.1 per item, 16x random features of its density "
                    "(p = 0.048)")
    assert ("interventions", 1, "effect_ratio") in sources
    inter.loc[1, "p_empirical"] = 0.3
    assert describe("f", {"interventions": inter})[0] == (
        "ablation moves the output no more than random features of its density (15.7x, p = 0.3)")
    inter.loc[1, "p_empirical"] = 1 / 21
    few = inter.head(8).assign(p_empirical=0.25)  # 3 random features: p is never below 1/4
    assert describe("f", {"interventions": few})[0] == (
        "ablation moves output 1 15.7x as much as 3 random features of its density (too few for p < 0.05)")


def test_describe_map_groups_by_hand():
    groups = pd.DataFrame({"feature": "f", "kind": ["raw", "refined", "refined"], "label": "dx",
                           "label_value": ["1", "0", "1"], "n_masks": [5, 0, 5],
                           "peak_x_mm": [10.4, -3.0, 46.2], "peak_y_mm": [0.0, 1.0, -20.0],
                           "peak_z_mm": [5.0, 2.0, 30.4], "region": [None, None, "right hemisphere"],
                           "dice": [0.0, np.nan, 0.8349], "pointing_hit": [0.0, np.nan, 1.0]})
    text, sources = describe("f", {"map_groups": groups})
    assert text == ("refined map of dx = 1 peaks at (46, -20, 30) mm (right hemisphere); Dice 0.83 "
                    "with the masks, pointing game 100%")
    assert ("map_groups", 2, "dice") in sources and ("map_groups", 2, "region") in sources
    groups.loc[2, "peak_x_mm"] = np.nan  # a silent refined map of the cases: the control group's
    assert describe("f", {"map_groups": groups})[0] == "refined map of dx = 0 peaks at (-3, 1, 2) mm"
