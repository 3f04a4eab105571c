"""The DNA demo study (issue 13): the shipped motif CNN detects its JASPAR motifs in DNA it has
never seen, the cohort builder plants what truth.json says, and the study run through the
verbs in its config's order finds the planted motif again and matches it to its JASPAR ID —
for CTCF, and for another motif and seed with nothing hard-coded."""

from __future__ import annotations

import json
import shutil
from functools import cache
from importlib import import_module
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from pyjaspar import jaspardb
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

import bioviz as bv
from bioviz.adapters.sequence import PlantedMotifs, demo_adapter, load_demo_model
from bioviz.adapters.sequence.demo import DEMO_DIR
from bioviz.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "studies" / "dna_motifs.yaml"
CTCF, SPI1 = "MA0139.2", "MA0080.7"
GC = 0.42


@cache
def _pfm(matrix_id: str) -> np.ndarray:
    m = jaspardb(release="JASPAR2026").fetch_motif_by_id(matrix_id)
    c = np.array([m.counts[b] for b in "ACGT"], dtype=float)
    return c / c.sum(0)


def _fresh(matrix_id: str, n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` random 256-bp sequences (GC 0.42), half with one site drawn from the JASPAR matrix
    base by base (on a random strand): made here, independently of the package's simulation."""
    rng = np.random.default_rng(seed)
    p = np.array([1 - GC, GC, GC, 1 - GC]) / 2
    seqs, has = [], rng.random(n) < 0.5
    for i in range(n):
        codes = rng.choice(4, 256, p=p)
        if has[i]:
            site = np.array([rng.choice(4, p=col) for col in _pfm(matrix_id).T])
            if rng.random() < 0.5:
                site = 3 - site[::-1]  # the reverse complement (A<->T, C<->G)
            at = rng.integers(0, 256 - len(site) + 1)
            codes[at:at + len(site)] = site
        seqs.append("".join("ACGT"[c] for c in codes))
    return pd.DataFrame({"seq_id": [f"q{i}" for i in range(n)], "sequence": seqs}), has


# ---------------------------------------------------------------------------------------------
# the shipped model


def test_shipped_model_detects_each_of_its_motifs_in_fresh_dna():
    ada = demo_adapter()
    cfg = json.loads((DEMO_DIR / "config.json").read_text())
    assert (DEMO_DIR / "model.safetensors").stat().st_size < 2_000_000
    assert ada.window == cfg["window"] == 256 and ada.layer_names()[:3] == ["conv1", "relu1", "pool1"]
    for j, motif in enumerate(cfg["motifs"]):
        frame, has = _fresh(motif["matrix_id"], 300, seed=100 + j)
        ada.dataset(frame)
        batch = ada.collate(list(range(len(frame))))
        logits = ada.run(batch).output.detach().numpy()
        auc = roc_auc_score(has, logits[:, j])
        assert auc >= 0.9, (motif, auc)
        # what training recorded on its own held-out windows, within sampling error
        assert abs(auc - cfg["metrics"]["heldout_auroc"][motif["matrix_id"]]) < 0.06
        # the other outputs do not answer for this motif
        others = [roc_auc_score(has, logits[:, k]) for k in range(len(cfg["motifs"])) if k != j]
        assert max(others) < 0.7, (motif, others)
    assert ada.output_names(4) == [f"{m['matrix_id']} {m['name']}" for m in cfg["motifs"]]


def test_rows_of_the_conv_layers_tile_the_sequence(tmp_path):
    frame, _ = _fresh(CTCF, 3, seed=7)
    frame["sequence"] = [s + s[:144] for s in frame["sequence"]]  # 400 bp: two 256-bp windows
    for layer, bp in (("pool1", 4), ("pool2", 16)):
        store = bv.extract(demo_adapter(), frame, layer, str(tmp_path / layer), progress=False)
        obs = store.obs
        assert store.array().shape == (len(obs), 64) and ((obs["end"] - obs["start"]) == bp).all()
        for _, g in obs.groupby("seq_id"):  # stitched from both windows without holes
            s = g.sort_values("start")
            assert s["start"].iloc[0] == 0 and s["end"].iloc[-1] == 400
            assert (s["start"].to_numpy()[1:] <= s["end"].to_numpy()[:-1]).all()


def test_missing_or_mismatched_weights_are_named(tmp_path):
    (tmp_path / "config.json").write_text((DEMO_DIR / "config.json").read_text())
    with pytest.raises(InputError, match=r"model\.safetensors does not exist"):
        load_demo_model(tmp_path)
    cfg = json.loads((DEMO_DIR / "config.json").read_text())
    cfg["architecture"]["filters"] = 32
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shutil.copy(DEMO_DIR / "model.safetensors", tmp_path)
    with pytest.raises(InputError, match=r"model\.safetensors does not match MotifCNN: .*conv1\.weight"):
        load_demo_model(tmp_path)
    with pytest.raises(InputError, match=r"config\.json does not exist"):
        load_demo_model(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# the cohort


def _log_odds(seq: str, pfm: np.ndarray, strand: str = "+") -> float:
    """Log2-odds score of the matrix on ``seq`` read on ``strand`` (by hand)."""
    idx = np.array(["ACGT".index(b) for b in seq])
    if strand == "-":
        idx = 3 - idx[::-1]
    return float(np.log2((pfm[idx, np.arange(len(idx))] + 0.01) / 0.25).sum())


def test_sites_are_drawn_from_the_jaspar_columns():
    from bioviz.adapters.sequence.study import jaspar_pfm, sample_sites

    name, pfm = jaspar_pfm(CTCF)
    sites = sample_sites(np.random.default_rng(0), pfm, 20_000)
    freq = np.stack([(sites == b).mean(0) for b in range(4)])
    assert name == "CTCF" and np.abs(freq - _pfm(CTCF)).max() < 0.015  # binomial sd <= 0.0036


def test_cohort_holds_what_truth_says(tmp_path):
    truth = PlantedMotifs(n_subjects=12, sequences_per_subject=4, motif=SPI1, seed=3).build(tmp_path)
    seqs = pd.read_csv(tmp_path / "sequences.tsv", sep="\t")
    clinical = pd.read_csv(tmp_path / "clinical.csv")
    assert list(clinical.columns) == ["subject_id", "carrier", "age", "sex"] and len(clinical) == 12
    carriers = set(clinical.loc[clinical["carrier"] == "yes", "subject_id"])
    assert carriers == set(truth["carriers"]) and len(carriers) == 6
    assert truth["motif"] == {"matrix_id": SPI1, "name": "Spi1"}
    assert {d["matrix_id"] for d in truth["distractors"]} == {CTCF, "MA0106.3", "MA0105.4"}
    assert len(seqs) == 48 and (seqs["sequence"].str.len() == 256).all()
    sites = pd.DataFrame(truth["sites"]).merge(seqs[["seq_id", "subject_id", "sequence"]], on="seq_id")
    planted = sites[sites["motif"] == SPI1]
    # 3 of 4 sequences of each carrier, none in controls; distractors in both groups
    assert planted.groupby("subject_id").size().to_dict() == dict.fromkeys(sorted(carriers), 3)
    other = sites[sites["motif"] != SPI1]
    assert other["subject_id"].isin(carriers).any() and (~other["subject_id"].isin(carriers)).any()
    # each planted stretch scores as a site of its matrix on its strand (a draw from a matrix
    # can be weak: ~1% of SPI1 draws score < 4); the other strand and random stretches do not
    score = [_log_odds(r.sequence[r.start:r.end], _pfm(r.motif), r.strand) for r in sites.itertuples()]
    other_strand = [_log_odds(r.sequence[r.start:r.end], _pfm(r.motif), "+-"[r.strand == "+"])
                    for r in sites.itertuples()]
    assert np.mean(np.array(score) > 4) > 0.95 and np.median(other_strand) < 0
    assert set(sites["strand"]) == {"+", "-"}
    rng = np.random.default_rng(0)
    spi1 = _pfm(SPI1)
    background = [_log_odds(s[a:a + spi1.shape[1]], spi1) for s, a in
                  zip(seqs["sequence"], rng.integers(0, 200, len(seqs)))]
    assert np.median(background) < 0


def test_bad_cohort_settings_are_named():
    with pytest.raises(InputError, match="motif 'MA9999.9' is not a matrix ID of JASPAR2026"):
        PlantedMotifs(motif="MA9999.9")
    with pytest.raises(InputError, match="motif 'MA0000.0' is not a matrix ID"):
        PlantedMotifs(distractors=["MA0000.0"])
    with pytest.raises(InputError, match="distractors: MA0139.2 is the planted motif"):
        PlantedMotifs(distractors=[CTCF, SPI1])
    with pytest.raises(InputError, match="n_subjects=8: need at least 12"):
        PlantedMotifs(n_subjects=8)
    with pytest.raises(InputError, match="carrier_share=1.5"):
        PlantedMotifs(carrier_share=1.5)


# ---------------------------------------------------------------------------------------------
# the study, through the verbs in the config's order


def _obj(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(import_module(module), name)


def _run_study(cfg: dict, folder: Path):
    """What ``bioviz run`` does, by hand: each stage's verb with its section of the config, in
    the order the stages run, every artifact under ``folder``."""
    folder.mkdir(parents=True)
    at = {k: str(folder / v) for k, v in {"store": "store", "sae": "sae", "features": "features.h5ad",
                                          "findings": "findings", "interpretation": "interpretation",
                                          "report": "report"}.items()}
    builder = _obj(cfg["cohort"]["class_path"])(**cfg["cohort"]["init_args"])
    adapter = _obj(cfg["adapter"]["class_path"])(**cfg["adapter"]["init_args"])
    data, layer, seed = str(folder / cfg["data"]), cfg["layer"], cfg["seed"]
    sae = None
    stages = ("cohort", "extract", "train", "encode", "associate", "interpret", "report")
    listed = [k for k in cfg if k in stages]
    assert listed == sorted(listed, key=stages.index)  # the config lists them in the order they run
    for stage in stages:  # a stage without a section (encode here) runs with its defaults
        kw = dict(cfg.get(stage) or {})
        if stage == "cohort":
            (folder / "cohort").mkdir()
            builder.build(folder / "cohort")
        elif stage == "extract":
            bv.extract(adapter, data, layer, at["store"], progress=False, **kw)
        elif stage == "train":
            sae, = bv.train(at["store"], layer, sae=cfg["sae"], output_dir=at["sae"], seed=seed,
                            trainer={"enable_progress_bar": False, "enable_model_summary": False,
                                     "logger": False}, **kw)
        elif stage == "encode":
            bv.encode(sae, at["store"], layer, out=at["features"], progress=False, **kw)
        elif stage == "associate":
            kw["clinical"] = str(folder / kw["clinical"])
            bv.associate(at["features"], out=at["findings"], seed=seed, progress=False, **kw)
        elif stage == "interpret":
            if kw.pop("model", False):
                kw.update(adapter=adapter, data=data, sae=sae, layer=layer)
            bv.interpret(at["findings"], at["features"], out=at["interpretation"], seed=seed,
                         progress=False, **kw)
        else:
            bv.report(at["findings"], at["report"], interpretation=at["interpretation"],
                      features=at["features"], progress=False, **kw)
    return builder


@pytest.fixture(scope="module", params=[(CTCF, 0), (SPI1, 1)], ids=["CTCF", "SPI1-seed1"])
def study(request, tmp_path_factory):
    """CTCF: the config as shipped, run by ``bioviz demo --studies dna_motifs`` (the session's
    ``dna_demo``: bioviz run's stages; README's quickstart runs it through the verbs by hand in
    tests/test_readme.py); SPI1 with seed 1: the config changed, run here through the verbs."""
    motif, seed = request.param
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["cohort"]["init_args"].update(motif=motif, seed=seed)
    if motif == CTCF and seed == 0:
        demo = request.getfixturevalue("dna_demo")
        assert demo.returncode == 0, demo.stderr[-3000:]
        builder = _obj(cfg["cohort"]["class_path"])(**cfg["cohort"]["init_args"])
        return SimpleNamespace(motif=motif, folder=demo.study, builder=builder, cfg=cfg)
    folder = tmp_path_factory.mktemp(motif) / "study"
    with threadpool_limits(1):  # BLAS too (as one_thread does for torch): 2 shared cores, tiny matrices
        builder = _run_study(cfg, folder)
    return SimpleNamespace(motif=motif, folder=folder, builder=builder, cfg=cfg)


@pytest.mark.slow
def test_the_study_recovers_the_planted_motif(study):
    ok, line = study.builder.check(study.folder)
    assert ok and " recovered — " in line and f"JASPAR {study.motif} " in line, line
    feature = line.split(" recovered — ")[1].split()[0]
    # the feature check names: by hand from the study's own tables
    cand = pd.read_parquet(study.folder / "findings" / "candidates.parquet").set_index("feature")
    assert cand.loc[feature, "q"] < 0.05 and cand.loc[feature, "effect"] > 0
    assert f"rank {int(cand.loc[feature, 'rank'])}," in line
    # its subject means separate carriers from controls (sklearn, from the FeatureTable)
    ft = ad.read_h5ad(study.folder / "features.h5ad")
    x = np.asarray(ft[:, feature].X.todense()).ravel()
    means = pd.Series(x).groupby(ft.obs["subject_id"].astype(str).to_numpy()).mean()
    clinical = pd.read_csv(study.folder / "cohort" / "clinical.csv").set_index("subject_id")
    assert roc_auc_score(clinical.loc[means.index, "carrier"] == "yes", means) > 0.9
    # its top windows hold the planted sites (coordinates from truth.json, the cohort's record)
    truth = json.loads((study.folder / "cohort" / "truth.json").read_text())
    sites = pd.DataFrame(truth["sites"]).query("motif == @study.motif")
    win = pd.read_parquet(study.folder / "interpretation" / "windows.parquet").query("feature == @feature")
    top = win.head(20).merge(sites, on="seq_id", how="left", suffixes=("", "_site"))
    inside = (top["start"] < top["end_site"]) & (top["start_site"] < top["end"])
    assert inside.groupby(top["rank"]).any().mean() >= 0.8
    # and the report names the matrix on the candidate's page
    assert study.motif in (study.folder / "report" / "report.html").read_text()


@pytest.mark.slow
def test_check_says_not_recovered_when_the_truth_differs(study, tmp_path):
    # the same finished study judged against another planted motif: what it found is not that
    folder = tmp_path / "study"
    shutil.copytree(study.folder, folder, ignore=shutil.ignore_patterns("store", "report"))
    truth = json.loads((folder / "cohort" / "truth.json").read_text())
    truth["motif"] = {"matrix_id": "MA0106.3", "name": "TP53"}
    (folder / "cohort" / "truth.json").write_text(json.dumps(truth))
    ok, line = study.builder.check(folder)
    assert not ok and "the planted TP53 motif (MA0106.3) not recovered — " in line
    # it names the best candidate and that candidate's own top match (read by hand)
    best = pd.read_parquet(folder / "findings" / "candidates.parquet").sort_values("rank").iloc[0]
    hit = pd.read_parquet(folder / "interpretation" / "motifs.parquet").query("rank == 1")
    hit = hit.set_index("feature").loc[best["feature"]]
    assert f"the best, {best['feature']} (rank 1," in line
    assert f"top JASPAR match is {hit['matrix_id']} {hit['name']}" in line, line
    (folder / "interpretation" / "motifs.parquet").unlink()
    ok, line = study.builder.check(folder)
    assert not ok and "no motifs table" in line
