"""The single-cell demo study (experiments/studies/pbmc_ifn.yaml) end to end: PBMC donors with a
planted interferon response in the cases' myeloid cells, through the shipped Geneformer-
architecture model; the cohort's files checked against a recomputation from pbmc68k itself."""

from __future__ import annotations

import importlib
import json
import os
import time
from contextlib import chdir
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

import bioviz as bv
from bioviz.adapters.singlecell import pbmc68k_counts
from bioviz.adapters.singlecell.demo import DEMO_DIR
from bioviz.adapters.singlecell.study import PlantedInterferonPBMC
from bioviz.errors import InputError

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "studies" / "pbmc_ifn.yaml"
GMT = Path(bv.__file__).parent / "interpret" / "data" / "immune.gmt"
MYELOID = {"CD14+ Monocyte", "Dendritic"}
STAGES = ("cohort", "extract", "train", "encode", "associate", "interpret", "report")  # bioviz run's order

# one torch and one BLAS thread, as ``bioviz demo`` runs this study: its models and per-donor
# tests are small (thousands of tiny solves in associate)
pytestmark = pytest.mark.usefixtures("one_thread", "one_blas_thread")


def _ifn_genes() -> list[str]:
    """IFN_TYPE_I_RESPONSE read from the GMT file by hand (name, description, genes...)."""
    for line in GMT.read_text().splitlines():
        name, _, *genes = line.split("\t")
        if name == "IFN_TYPE_I_RESPONSE":
            return genes
    raise AssertionError("IFN_TYPE_I_RESPONSE is not in the shipped GMT")


@pytest.fixture(scope="module")
def source():
    return pbmc68k_counts()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pbmc_cohort")
    truth = PlantedInterferonPBMC(n_donors=16, effect=2.0, seed=3).build(folder)
    return folder, truth


def test_cohort_files_hold_what_truth_says(cohort, source):
    folder, truth = cohort
    cells = ad.read_h5ad(folder / "cells.h5ad")
    clinical = pd.read_csv(folder / "clinical.csv")
    assert truth == json.loads((folder / "truth.json").read_text())
    assert list(cells.obs_names) == list(source.obs_names) and list(cells.var_names) == list(source.var_names)
    # clinical: one row per donor, labels balanced, covariates in range and both sexes
    assert list(clinical.columns) == ["subject_id", "diagnosis", "age", "sex"]
    assert sorted(clinical["subject_id"]) == sorted(set(cells.obs["donor"])) and len(clinical) == 16
    assert (clinical["diagnosis"] == "case").sum() == (clinical["diagnosis"] == "control").sum() == 8
    assert clinical["age"].between(25, 75).all() and (clinical["sex"] == "F").sum() == 8
    assert sorted(truth["donors"]["cases"]) == sorted(clinical.loc[clinical.diagnosis == "case", "subject_id"])

    # donors: every type with at least 16 cells in every donor, shares equal within one cell
    per = pd.crosstab(cells.obs["donor"], cells.obs["cell_type"])
    sizes = source.obs["bulk_labels"].value_counts()
    for t, n in sizes.items():
        col = per[t].reindex(clinical["subject_id"], fill_value=0)
        assert col.sum() == n and col.max() - col.min() <= 1
        assert (col > 0).all() if n >= 16 else col.max() == 1
    assert (cells.obs["cell_type"] == source.obs["bulk_labels"]).all()

    # the plant: the IFN genes present in pbmc68k, raised 4c + 3 (effect 2) exactly in the
    # case donors' myeloid cells; every other count as pbmc68k has it
    genes = [g for g in _ifn_genes() if g in set(source.var_names)]
    assert truth["genes"] == genes and len(genes) == 13
    case = cells.obs["donor"].isin(truth["donors"]["cases"]).to_numpy()
    hit = case & cells.obs["cell_type"].isin(MYELOID).to_numpy()
    assert sorted(truth["cells_touched"]) == sorted(cells.obs_names[hit]) and truth["n_cells_touched"] == hit.sum()
    old, new = source.X.toarray(), cells.layers["counts"].toarray()
    cols = source.var_names.get_indexer(genes)
    expected = old.copy()
    expected[np.ix_(hit, cols)] = 4 * old[np.ix_(hit, cols)] + 3
    np.testing.assert_array_equal(new, expected)
    assert (new != old).any(axis=1).sum() == hit.sum()  # every touched cell changed (the pseudo-count)
    # n_counts and the log-normalised X follow the new counts
    np.testing.assert_allclose(cells.obs["n_counts"], new.sum(1))
    np.testing.assert_allclose(cells.X.toarray(), np.log1p(new / new.sum(1, keepdims=True) * 1e4), rtol=1e-5,
                               atol=1e-6)


def test_planted_genes_move_up_the_models_rank_order(cohort, source):
    """What Geneformer's tokenisation sees (counts ÷ cell total ÷ gene median, ranked), by hand
    with the shipped medians: the planted genes climb from the middle to the top ranks."""
    folder, truth = cohort
    cells = ad.read_h5ad(folder / "cells.h5ad")
    medians = json.loads((DEMO_DIR / "gene_median_dictionary.json").read_text())
    med = np.array([medians[g] for g in cells.var_names])
    cols = cells.var_names.get_indexer(truth["genes"])
    touched = cells.obs_names.get_indexer(truth["cells_touched"])

    def ranks(X):  # median rank (0 = first token) of the planted genes present in the cells
        out = []
        for c in touched:
            norm = X[c] / X[c].sum() / med
            order = np.argsort(-norm, kind="stable")
            pos = np.empty_like(order)
            pos[order] = np.arange(len(order))
            out += [pos[j] for j in cols if X[c, j] > 0]
        return np.median(out)

    before, after = ranks(source.X.toarray()), ranks(cells.layers["counts"].toarray())
    assert before > 100 and after < 40, (before, after)  # ~130 of ~250 genes → ~20
    assert (cells.layers["counts"][touched][:, cols].toarray() > 0).all()  # all 13 switched on


def test_no_plant_and_seeds(tmp_path, source):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()  # c: the builder makes its folder
    null = PlantedInterferonPBMC(effect=0, seed=3).build(tmp_path / "a")
    cells = ad.read_h5ad(tmp_path / "a" / "cells.h5ad")
    np.testing.assert_array_equal(cells.layers["counts"].toarray(), source.X.toarray())
    assert null["n_cells_touched"] == 0 and null["cells_touched"] == []
    # the same seed writes the same cohort; another seed other donors
    PlantedInterferonPBMC(effect=0, seed=3).build(tmp_path / "b")
    PlantedInterferonPBMC(effect=0, seed=4).build(tmp_path / "c")
    donors = {k: ad.read_h5ad(tmp_path / k / "cells.h5ad").obs["donor"] for k in "abc"}
    assert (donors["a"] == donors["b"]).all() and (donors["a"] != donors["c"]).any()
    assert (tmp_path / "a" / "clinical.csv").read_bytes() == (tmp_path / "b" / "clinical.csv").read_bytes()


@pytest.mark.parametrize("kwargs, match", [
    ({"n_donors": 15}, "n_donors=15"), ({"n_donors": 4}, "n_donors=4"), ({"effect": -1}, "effect=-1"),
    ({"age_range": [80, 20]}, "age_range"), ({"cell_types": "Dendritic"}, "cell_types"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(InputError, match=match):
        PlantedInterferonPBMC(**kwargs)


def test_bad_cell_type_and_a_study_not_run_are_named(tmp_path):
    with pytest.raises(InputError, match=r"\['Monocyte'\] are not pbmc68k_reduced bulk_labels"):
        PlantedInterferonPBMC(cell_types=["Monocyte"]).build(tmp_path)
    with pytest.raises(InputError, match="candidates.parquet: missing"):
        PlantedInterferonPBMC().check(tmp_path)


# -- the study, end to end (slow) ---------------------------------------------------------------


def _make(section: dict):
    module, _, name = section["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**section.get("init_args", {}))


def run_study(cfg: dict, folder: Path) -> tuple[object, dict]:
    """What ``bioviz run`` does, by hand: each stage's verb with its section, in the stages'
    order, inside the study folder (relative paths are relative to it); the builder and each
    stage's seconds."""
    folder.mkdir(parents=True)
    times, t = {}, time.perf_counter()
    builder, sae = _make(cfg["cohort"]), None
    with chdir(folder):
        adapter = _make(cfg["adapter"])
        for stage in STAGES:  # encode has no section of its own in this config
            if stage not in cfg and stage != "encode":
                continue
            kw = dict(cfg.get(stage) or {})
            if stage == "cohort":
                os.mkdir("cohort")
                builder.build(Path("cohort"))
            elif stage == "extract":
                bv.extract(adapter, cfg["data"], cfg["layer"], "store", progress=False, **kw)
            elif stage == "train":
                sae, = bv.train("store", cfg["layer"], sae=cfg["sae"], output_dir="sae", seed=cfg["seed"],
                                trainer={"enable_progress_bar": False, "enable_model_summary": False,
                                         "logger": False}, **kw)
            elif stage == "encode":
                bv.encode(sae, "store", cfg["layer"], out="features.h5ad", progress=False, **kw)
            elif stage == "associate":
                bv.associate("features.h5ad", out="findings", seed=cfg["seed"], progress=False, **kw)
            elif stage == "interpret":
                assert not kw.pop("model", False)
                bv.interpret("findings", "features.h5ad", out="interpretation", seed=cfg["seed"],
                             progress=False, **kw)
            else:
                bv.report("findings", "report", interpretation="interpretation", features="features.h5ad",
                          progress=False, **kw)
            times[stage] = time.perf_counter() - t
            t = time.perf_counter()
    return builder, times


def _config(**cohort) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["cohort"]["init_args"].update(cohort)
    return cfg


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pbmc_ifn") / "study"
    builder, times = run_study(_config(), folder)
    print({k: round(v, 1) for k, v in times.items()}, "total", round(sum(times.values()), 1))
    return folder, builder


@pytest.mark.slow
def test_the_study_recovers_the_planted_programme(planted):
    folder, builder = planted
    ok, line = builder.check(folder)
    assert ok and " recovered the planted interferon programme — " in line, line
    feature = line.split(" — ")[1].split()[0]
    cand = pd.read_parquet(folder / "findings" / "candidates.parquet").set_index("feature")
    assert cand.loc[feature, "rank"] <= 3 and cand.loc[feature, "q"] < 0.05 and cand.loc[feature, "effect"] > 0
    assert f"{feature} rank {int(cand.loc[feature, 'rank'])}," in line

    # by hand from the FeatureTable: the feature's donor means, OLS on diagnosis + age + sex
    import statsmodels.formula.api as smf

    ft = ad.read_h5ad(folder / "features.h5ad")
    x = np.asarray(ft[:, feature].X.todense()).ravel()
    means = pd.Series(x).groupby(ft.obs["subject_id"].astype(str).to_numpy()).mean().rename("f")
    clinical = pd.read_csv(folder / "cohort" / "clinical.csv").set_index("subject_id").join(means)
    fit = smf.ols("f ~ C(diagnosis, Treatment('control')) + age + C(sex)", clinical).fit()
    assert fit.params.iloc[1] > 0 and fit.pvalues.iloc[1] < 1e-4

    # the cells where it fires most are the planted ones (the cohort's record of them)
    truth = json.loads((folder / "cohort" / "truth.json").read_text())
    per_cell = pd.Series(x).groupby(ft.obs["cell_id"].astype(str).to_numpy()).max()
    top = per_cell.nlargest(len(per_cell) // 5).index
    planted_share = np.isin(top, truth["cells_touched"]).mean()
    assert planted_share > 2 * truth["n_cells_touched"] / len(per_cell), planted_share
    # and the report shows the programme
    assert "IFN_TYPE_I_RESPONSE" in (folder / "report" / "report.html").read_text()


@pytest.mark.slow
def test_without_the_plant_nothing_is_recovered(tmp_path):
    folder = tmp_path / "study"
    cfg = _config(effect=0.0)
    del cfg["report"]  # what check reads comes before the report
    builder, _ = run_study(cfg, folder)
    ok, line = builder.check(folder)
    assert not ok and "NOT recovered" in line, line
    cand = pd.read_parquet(folder / "findings" / "candidates.parquet")
    enrich = folder / "interpretation" / "enrichment.parquet"
    if len(cand) and enrich.exists():  # any chance candidate: its evidence does not name the programme
        e = pd.read_parquet(enrich)
        assert not ((e["set"] == "IFN_TYPE_I_RESPONSE") & (e["q"] < 0.05)).any()


def test_check_reads_the_evidence_not_the_truth(tmp_path):
    """check() on hand-written study tables: recovered only through the programme's evidence,
    the best-ranked such candidate named."""
    (tmp_path / "findings").mkdir(), (tmp_path / "interpretation").mkdir()
    pd.DataFrame({"rank": [1, 2, 3], "feature": ["f9", "f4", "f7"], "q": [1e-4, 2e-3, 3e-3]}).to_parquet(
        tmp_path / "findings" / "candidates.parquet")
    enrich = pd.DataFrame({"feature": ["f9", "f4", "f7"], "set": ["T_CELL_IDENTITY", "IFN_TYPE_I_RESPONSE",
                                                                  "IFN_TYPE_I_RESPONSE"],
                           "n_overlap": [5, 6, 7], "q": [1e-6, 0.2, 1e-3]})
    enrich.to_parquet(tmp_path / "interpretation" / "enrichment.parquet")
    tops = pd.DataFrame({"feature": ["f4"] * 10, "rank": range(1, 11),
                         "gene": ["IFITM1", "LYZ", "OAS1", "CST3", "MX1", "A", "B", "C", "D", "IRF7"]})
    tops.to_parquet(tmp_path / "interpretation" / "top_genes.parquet")
    ok, line = PlantedInterferonPBMC().check(tmp_path)
    # f4: q 0.2 but 3 of its top 10 genes in the set (IFITM1, OAS1, IRF7; MX1 is not in pbmc68k
    # but is in the set: 4)
    assert ok and "f4 rank 2," in line and "4 of its top 10" in line, line
    tops.assign(gene=["LYZ"] * 10).to_parquet(tmp_path / "interpretation" / "top_genes.parquet")
    ok, line = PlantedInterferonPBMC().check(tmp_path)
    assert ok and "f7 rank 3," in line and "q = 0.001" in line, line
    enrich.assign(q=0.5).to_parquet(tmp_path / "interpretation" / "enrichment.parquet")
    ok, line = PlantedInterferonPBMC().check(tmp_path)
    assert not ok and "NOT recovered" in line and "best f9" in line, line
