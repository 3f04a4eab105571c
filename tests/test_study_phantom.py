"""The 3D-scan demo study (experiments/studies/phantom_lesions.yaml) end to end: the phantom
cohort with planted lesions through the shipped network, and its check against the masks,
recomputed here from the written NIfTI files."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

import bioviz as bv
from bioviz.adapters.volume.study import MIN_DICE, PhantomLesions
from bioviz.errors import InputError

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "studies" / "phantom_lesions.yaml"


def _make(section: dict):
    module, _, name = section["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**section.get("init_args", {}))


def run_study(config: Path, study: Path) -> tuple[dict, object, dict]:
    """Run the config's stages in its order through the verbs (what ``bioviz run`` does);
    return the config, the cohort builder and each stage's seconds."""
    cfg = yaml.safe_load(config.read_text())
    times, t = {}, time.perf_counter()

    def lap(stage):
        nonlocal t
        times[stage] = time.perf_counter() - t
        t = time.perf_counter()

    builder = _make(cfg["cohort"])
    (study / "cohort").mkdir(parents=True)
    builder.build(study / "cohort")
    lap("cohort")
    adapter, data = _make(cfg["adapter"]), str(study / cfg["data"])
    store = bv.extract(adapter, data, cfg["layer"], str(study / "store"), progress=False, **cfg["extract"])
    lap("extract")
    sae, = bv.train(store.path, sae=cfg["sae"], output_dir=str(study / "sae"), **cfg["train"])
    lap("train")
    ft = bv.encode(sae, out=str(study / "features.h5ad"), progress=False)
    lap("encode")
    assoc = dict(cfg["associate"], clinical=str(study / cfg["associate"]["clinical"]))
    findings = bv.associate(ft, out=str(study / "findings"), progress=False, **assoc)
    lap("associate")
    interp = dict(cfg["interpret"])
    model = {"adapter": adapter, "data": data, "sae": sae} if interp.pop("model", False) else {}
    bv.interpret(findings, ft, out=str(study / "interpretation"), progress=False, **interp, **model)
    lap("interpret")
    bv.report(findings, out=str(study / "report"), features=ft, progress=False, **cfg["report"])
    lap("report")
    return cfg, builder, times


def _dice_at_mask_volume(m: np.ndarray, mask: np.ndarray, head: np.ndarray) -> float:
    """Dice of the map's top voxels inside the head, as many as the mask has there (the
    threshold adapters/volume/agreement.py documents)."""
    truth = mask & head
    n = int(truth.sum())
    vals = np.where(head, m, -np.inf).ravel()
    pred = np.zeros(m.size, bool)
    pred[np.argsort(vals, kind="stable")[::-1][:n]] = True
    return 2 * float((pred.reshape(m.shape) & truth).sum()) / (n + n)


def _ols_p(subjects: pd.DataFrame, feature: str, covariates: list[str]) -> float:
    """p of the lesion term in OLS ``feature ~ diagnosis + covariates`` (statsmodels)."""
    import statsmodels.formula.api as smf

    terms = [c if pd.api.types.is_numeric_dtype(subjects[c]) else f"C({c})" for c in covariates]
    fit = smf.ols(f"{feature} ~ " + " + ".join(["C(diagnosis, Treatment('control'))", *terms]), data=subjects).fit()
    return float(fit.pvalues["C(diagnosis, Treatment('control'))[T.lesion]"])


@pytest.mark.slow
def test_phantom_study_recovers_the_planted_lesions(tmp_path):
    study = tmp_path / "phantom_lesions"
    t0 = time.perf_counter()
    cfg, builder, times = run_study(CONFIG, study)
    print("\nstages: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; total {time.perf_counter() - t0:.0f} s")
    assert_recovered(study, cfg, builder)
    assert_not_recovered_with_a_null_feature(study, cfg, builder, tmp_path / "negative")


def assert_recovered(study: Path, cfg: dict, builder) -> None:
    """The check says recovered, and its numbers are those recomputed from the files."""
    ok, line = builder.check(study)
    print(line)
    assert ok and "recovered the planted lesions" in line and "NOT" not in line
    # the clinician's report shows the recovered feature's refined group map over anatomy
    feature = line.split(" — ")[1].split()[0]
    html = (study / "report" / "report.html").read_text()
    page = html[html.index(f"{feature} and diagnosis"):]
    assert 'alt="refined map, diagnosis = lesion"' in page and "Where it sits in the scans" in page

    cohort = study / "cohort"
    truth = json.loads((cohort / "truth.json").read_text())
    manifest = pd.read_csv(cohort / "manifest.csv", dtype={"subject_id": str}).set_index("subject_id")
    clinical = pd.read_csv(cohort / "clinical.csv", dtype={"subject_id": str}).set_index("subject_id")
    # the truth and the clinical table agree with the scans the generator wrote
    carriers = {s["subject_id"] for s in truth["lesion_subjects"]}
    assert carriers == set(manifest.index[manifest["label"] == 1]) == set(clinical.index[clinical["diagnosis"] == "lesion"])
    assert len(carriers) == cfg["cohort"]["init_args"]["n_subjects"] // 2
    assert list(clinical.columns) == ["diagnosis", "age", "sex", "site"]
    for s in truth["lesion_subjects"]:
        mask = nib.load(cohort / s["mask"])
        assert int((np.asarray(mask.dataobj) > 0).sum()) == s["voxels"] > 0

    feature, rank, q, dice = re.search(r"(f\d+) rank (\d+), q = ([\d.e-]+), refined-map Dice ([\d.]+)", line).groups()
    assert int(rank) <= cfg["interpret"]["top"]

    # the refined maps land on each subject's own grid (site-B scans are stored LAS)
    maps = sorted((study / "interpretation" / "maps" / feature).glob("sub-*_refined.nii.gz"))
    assert maps
    dices, flipped = [], 0
    for path in maps:
        sid = path.name.removesuffix("_refined.nii.gz")
        scan, refined = nib.load(cohort / manifest.loc[sid, "image"]), nib.load(path)
        assert refined.shape == scan.shape and np.allclose(refined.affine, scan.affine, atol=1e-4), sid
        flipped += scan.affine[0, 0] < 0
        if sid in carriers:
            anat = np.asarray(scan.dataobj, np.float64)
            mask = np.asarray(nib.load(cohort / manifest.loc[sid, "mask"]).dataobj) > 0
            dices.append(_dice_at_mask_volume(np.asarray(refined.get_fdata()), mask, anat > anat.min()))
    print(f"{feature}: Dice recomputed {np.round(dices, 3).tolist()} (mean {np.mean(dices):.3f}); "
          f"{flipped} of {len(maps)} maps on LAS scans")
    assert len(dices) == int(re.search(r"over (\d+) lesion scans?", line).group(1))
    # the line's Dice (2 decimals) is the recomputed mean; the files store int16 with a scale
    assert float(dice) >= 0.5 and abs(np.mean(dices) - float(dice)) <= 0.006

    # the q in the line: the lesion term of the covariate model on the subjects' mean codes, as
    # statsmodels fits it (p), then no larger than the Benjamini-Hochberg q
    import anndata as ad

    rows = ad.read_h5ad(study / "features.h5ad")
    codes = rows[:, feature].X
    codes = np.asarray(codes.toarray() if hasattr(codes, "toarray") else codes).ravel()
    per = pd.Series(codes).groupby(rows.obs["subject_id"].astype(str).to_numpy()).mean().rename(feature)
    p = _ols_p(clinical.join(per), feature, cfg["associate"]["covariates"])
    assoc = pd.read_parquet(study / "findings" / "associations.parquet")
    row = assoc[(assoc["feature"] == feature) & assoc["primary"].astype(bool)].iloc[0]
    assert row["p"] == pytest.approx(p, rel=1e-5) and p <= float(q) < 0.05


def assert_not_recovered_with_a_null_feature(study: Path, cfg: dict, builder, neg: Path) -> None:
    """The same check on the same Findings, explaining one feature that does not separate the
    groups: it must say "not recovered" (its maps miss the masks, and it is no candidate)."""
    shutil.copytree(study / "findings", neg / "findings")
    assoc = pd.read_parquet(study / "findings" / "associations.parquet")
    null = assoc[assoc["primary"].astype(bool)].dropna(subset=["p"]).sort_values("p").iloc[-1]["feature"]
    # four of the null feature's scans, two per label level, are scored against the masks (the
    # config maps all 16: ~30 s more here, and the verdict is the same)
    adapter = _make({**cfg["adapter"], "init_args": {**cfg["adapter"].get("init_args", {}), "maps": 4}})
    bv.interpret(neg / "findings", str(study / "features.h5ad"), candidates=[null], adapter=adapter,
                 data=str(study / cfg["data"]), sae=str(study / "sae" / cfg["sae"]["architecture"]),
                 n_random=1, out=str(neg / "interpretation"), progress=False)
    ok, line = builder.check(neg)
    print(line)
    assert not ok and "NOT recovered" in line and f"{null} (not a candidate" in line
    dice, n = re.search(r"refined-map Dice ([\d.]+) with the masks over (\d+) lesion scans?", line).groups()
    assert int(n) == 2 and float(dice) < MIN_DICE  # its maps miss the masks


def test_check_refuses_a_study_that_has_not_run(tmp_path):
    with pytest.raises(InputError, match="findings"):
        PhantomLesions().check(tmp_path)


def test_builder_arguments_are_checked():
    with pytest.raises(InputError, match="lesion_centre_mm"):
        PhantomLesions(lesion_centre_mm=[1.0, 2.0])


def test_config_names_what_the_builder_writes(tmp_path):
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["cohort"]["class_path"].endswith("PhantomLesions")
    assert cfg["data"] == "cohort/manifest.csv" and cfg["associate"]["clinical"] == "cohort/clinical.csv"
    assert cfg["associate"]["labels"] == [{"column": "diagnosis", "case": "lesion"}] and cfg["interpret"]["model"]
    # a small cohort of 4 scans: the files the config points at exist, and nothing else is needed
    folder = tmp_path / "cohort"
    folder.mkdir()
    truth = PhantomLesions(n_subjects=4, seed=3, voxel_mm=4.0, progress=False).build(folder)
    assert (folder / "manifest.csv").is_file() and (folder / "clinical.csv").is_file()
    assert json.loads((folder / "truth.json").read_text()) == truth
    clinical = pd.read_csv(folder / "clinical.csv")
    assert sorted(clinical["diagnosis"]) == ["control", "control", "lesion", "lesion"]
    assert set(cfg["associate"]["covariates"]) <= set(clinical.columns)
    shutil.rmtree(folder)
