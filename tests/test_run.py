"""``bioviz run``: a tiny study end to end from one config (a small BERT built from its config,
token sequences where cases carry a marker token), cached, forced, locked, killed and resumed,
and equal to the same study written as bv.* calls."""

import importlib.util
import inspect
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import bioviz as bv
from bioviz.cli import main
from bioviz.lock import LockedError
from bioviz.run import ConfigError, load_config, run_study

ROOT = Path(__file__).parents[1]
TESTS = Path(__file__).parent
MARKER = 7
BERT = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64}
STAGES = ["cohort", "extract", "train", "encode", "associate", "interpret", "report"]


class TinyCohort:
    """Token sequences, ``per_subject`` per subject; every case sequence carries the marker token
    three times, control sequences never do (``truth.json`` says which subjects are cases)."""

    def __init__(self, n_subjects: int = 16, per_subject: int = 4, length: int = 12, seed: int = 0):
        self.n_subjects, self.per_subject, self.length, self.seed = n_subjects, per_subject, length, seed

    def build(self, folder: Path) -> dict:
        rng = np.random.default_rng(self.seed)
        case = rng.permutation(np.arange(self.n_subjects) % 2 == 1)
        ids, meta = [], []
        for s in range(self.n_subjects):
            for j in range(self.per_subject):
                seq = rng.integers(10, 64, self.length)
                if case[s]:
                    seq[rng.choice(self.length, 3, replace=False)] = MARKER
                ids.append(seq)
                meta.append({"subject_id": f"S{s:02d}", "sample_id": f"S{s:02d}_{j}"})
        np.savez(folder / "tokens.npz", input_ids=np.array(ids), attention_mask=np.ones((len(ids), self.length), int))
        pd.DataFrame(meta).to_csv(folder / "tokens.tsv", sep="\t", index=False)
        pd.DataFrame({"subject_id": [f"S{s:02d}" for s in range(self.n_subjects)],
                      "diagnosis": np.where(case, "case", "control"),
                      "age": rng.integers(40, 80, self.n_subjects).astype(float)}).to_csv(folder / "clinical.csv",
                                                                                        index=False)
        truth = {"marker_token": MARKER, "cases": [f"S{s:02d}" for s in np.flatnonzero(case)]}
        (folder / "truth.json").write_text(json.dumps(truth))
        return truth

    def check(self, study: Path) -> tuple[bool, str]:
        """From the study's outputs: the best candidate, and whether its strongest rows are the
        marker token (read from the cohort's token file)."""
        import anndata as ad

        top = pd.read_parquet(study / "findings" / "candidates.parquet").iloc[0]
        ft = ad.read_h5ad(study / "features.h5ad")
        ids = np.load(study / "cohort" / "tokens.npz")["input_ids"]
        item = pd.read_csv(study / "cohort" / "tokens.tsv", sep="\t").reset_index().set_index("sample_id")["index"]
        tokens = ids[item[ft.obs["sample_id"].astype(str)].to_numpy(), ft.obs["token_index"].to_numpy()]
        strongest = np.argsort(-ft[:, top["feature"]].X.toarray().ravel())[:20]
        share = float((tokens[strongest] == MARKER).mean())
        ok = top["q"] < 0.05 and share >= 0.5
        return ok, (f"tiny: {'recovered' if ok else 'NOT recovered'} the marker token — {top['feature']} rank 1, "
                    f"q = {top['q']:.2g}, {share:.0%} of its strongest rows are the marker")


def tiny_config(study: Path) -> dict:
    return {
        "study": str(study), "seed": 0,
        "cohort": {"class_path": f"{TinyCohort.__module__}.TinyCohort", "init_args": {"seed": 0}},
        "adapter": {"class_path": "bioviz.adapters.TorchAdapter", "init_args": {"model": {
            "class_path": "transformers.BertModel", "init_args": {"config": {
                "class_path": "transformers.BertConfig", "init_args": dict(BERT)}}}}},
        "data": {"class_path": "bioviz.adapters.datasets.ArrayDataset",
                 "init_args": {"arrays": "cohort/tokens.npz", "metadata": "cohort/tokens.tsv"}},
        "layer": "encoder.layer.1",
        "extract": {"batch_size": 8},
        "sae": {"architecture": "topk", "k": 4, "expansion_factor": 4},
        "train": {"max_steps": 80, "batch_size": 256, "optim": {"lr": 0.003, "warmup_steps": 10}},
        "associate": {"labels": ["diagnosis"], "covariates": ["age"], "clinical": "cohort/clinical.csv",
                      "n_permutations": 100, "n_boot": 50, "n_stability": 10, "heldout": None, "probes": False},
        "interpret": {"top": 3, "gene_sets": None},
        "report": {"title": "Tiny study", "pdf": False},
    }


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def files(folder: Path, skip=()) -> dict:
    """Every file under ``folder`` with its size and mtime (ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and not str(p.relative_to(folder)).startswith(tuple(skip))}


def candidates(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "findings" / "candidates.parquet")


def assert_same_candidates(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a["feature"]) == list(b["feature"]) and list(a["label"]) == list(b["label"])
    np.testing.assert_allclose(a["q"].to_numpy(), b["q"].to_numpy(), rtol=0, atol=1e-9)


def copy_study(finished, tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "study"
    shutil.copytree(finished["folder"], folder)
    return folder, tiny_config(folder)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "study"
    t0 = time.perf_counter()
    summary = run_study(tiny_config(folder), progress=False, trust=True)
    return {"folder": folder, "summary": summary, "seconds": time.perf_counter() - t0}


def test_a_full_run_writes_every_artifact_and_finds_the_planted_marker(finished):
    folder, summary = finished["folder"], finished["summary"]
    assert {s: v["status"] for s, v in summary["stages"].items()} == dict.fromkeys(STAGES, "ran")
    for path in ("cohort/truth.json", "store/manifest.json", "sae/topk/sae.json", "features.h5ad",
                 "findings/manifest.json", "interpretation/interpretation.json", "report/report.html"):
        assert (folder / path).is_file(), path
    record = json.loads((folder / "run.json").read_text())
    assert all(record["stages"][s]["status"] == "done" and record["stages"][s]["seconds"] >= 0 for s in STAGES)
    # the summary is the Findings' own table
    cand = candidates(folder)
    assert [c["feature"] for c in summary["candidates"]] == list(cand["feature"][:5])
    assert summary["candidates"][0]["q"] == pytest.approx(cand["q"].iloc[0], rel=1e-12)
    assert summary["report"] == str(folder / "report" / "report.html")
    assert "Tiny study" in (folder / "report" / "report.html").read_text()
    # independent of bioviz's statistics: the best candidate's mean code per subject separates the
    # planted cases from the controls (from the cohort's truth), and it fires on the marker token
    import anndata as ad

    ft = ad.read_h5ad(folder / "features.h5ad")
    code = pd.Series(ft[:, cand["feature"].iloc[0]].X.toarray().ravel()).groupby(
        ft.obs["subject_id"].astype(str).to_numpy()).mean()
    cases = set(json.loads((folder / "cohort" / "truth.json").read_text())["cases"])
    is_case = code.index.isin(sorted(cases))
    assert code[is_case].min() > code[~is_case].max()
    assert cand["q"].iloc[0] < 0.05 and summary["check"][0] and "recovered" in summary["check"][1]


def test_a_rerun_is_cached_and_touches_no_file(finished):
    before = files(finished["folder"])
    t0 = time.perf_counter()
    summary = run_study(tiny_config(finished["folder"]), progress=False, trust=True)
    assert {s: v["status"] for s, v in summary["stages"].items()} == dict.fromkeys(STAGES, "cached")
    assert files(finished["folder"]) == before  # run.json included: nothing changed, nothing written
    assert time.perf_counter() - t0 < finished["seconds"] / 2


def test_changing_the_report_title_reruns_only_the_report(finished, tmp_path):
    folder, cfg = copy_study(finished, tmp_path)
    before = files(folder, skip=("report", "run.json"))
    cfg["report"]["title"] = "A second title"
    summary = run_study(cfg, progress=False, trust=True)
    ran = [s for s, v in summary["stages"].items() if v["status"] != "cached"]
    assert ran == ["report"]
    html = (folder / "report" / "report.html").read_text()
    assert "A second title" in html and "Tiny study" not in html
    assert files(folder, skip=("report", "run.json")) == before


def test_from_associate_reruns_it_and_every_later_stage(finished, tmp_path, capsys):
    folder, cfg = copy_study(finished, tmp_path)
    path = write_config(cfg, tmp_path / "study.yaml")
    assert main(["run", str(path), "--from", "associate", "--progress", "false", "--trust_config"]) == 0
    out = capsys.readouterr().out
    assert "cohort cached, extract cached, train cached, encode cached, associate ran" in out
    assert "interpret ran" in out and "report ran" in out and str(folder / "report" / "report.html") in out
    assert_same_candidates(candidates(folder), candidates(finished["folder"]))
    record = json.loads((folder / "run.json").read_text())["stages"]
    assert record["associate"]["finished"] > record["encode"]["finished"] + 1  # written now, not copied


BAD = [  # (change to the tiny config, the key the message must name)
    (lambda c: c.update(bogus=1), "bogus"),
    (lambda c: c.pop("study"), "study"),
    (lambda c: c.pop("adapter"), "adapter"),
    (lambda c: c.pop("data"), "data"),
    (lambda c: c.pop("layer"), "layer"),
    (lambda c: c["train"].update(max_steps="many"), "train.max_steps"),
    (lambda c: c["train"].update(max_stepz=5), "train.max_stepz"),
    (lambda c: c["associate"].update(labelz=["x"]), "associate.labelz"),
    (lambda c: c["associate"].pop("labels"), "associate.labels"),
    (lambda c: c["extract"].update(store_path="elsewhere"), "extract.store_path"),
    (lambda c: c["train"].update(optim={"lrr": 1}), "lrr"),
    (lambda c: c["sae"].update(kk=3), "kk"),
    (lambda c: c["adapter"]["init_args"].update(layot="tokens"), "layot"),
    (lambda c: c["adapter"]["init_args"]["model"]["init_args"]["config"]["init_args"].update(hidden_size="big"),
     "hidden_size"),
    (lambda c: c["adapter"].update(class_path="os.system"), "adapter.class_path"),
    (lambda c: c["adapter"].update(class_path="bioviz.adapters.datasets.ArrayDataset"), "adapter.class_path"),
    (lambda c: c["cohort"]["init_args"].update(n_subjects="many"), "n_subjects"),
    (lambda c: c["data"]["init_args"].update(arrayz="x.npz"), "arrayz"),
    (lambda c: c["train"].update(trainer={"logger": {"class_path": "lightning.pytorch.loggers.NoSuchLogger"}}),
     "train.trainer.logger"),
    (lambda c: c["train"].update(trainer={"callbacks": [{"class_path": "lightning.pytorch.callbacks.EarlyStopping",
                                                          "init_args": {"monitr": "x"}}]}), "train.trainer.callbacks[0]"),
]


@pytest.mark.parametrize("change,key", BAD, ids=[k for _, k in BAD])
def test_a_bad_config_is_refused_before_any_work_naming_the_key(tmp_path, change, key):
    cfg = tiny_config(tmp_path / "study")
    change(cfg)
    with pytest.raises(ConfigError) as err:
        run_study(cfg, progress=False, trust=key != "adapter.class_path")
    assert key in str(err.value)
    assert not (tmp_path / "study").exists()  # refused before anything was made


def test_the_command_line_prints_a_refused_config_and_the_trust_hint(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "study")  # the test's cohort class lies outside the allow-list
    assert main(["run", str(write_config(cfg, tmp_path / "c.yaml")), "--progress", "false"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cohort.class_path: Importing") and "--trust_config" in err
    assert not (tmp_path / "study").exists()


def test_print_config_shows_every_default_and_runs_nothing(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "study")
    assert main(["run", "--print-config", str(write_config(cfg, tmp_path / "c.yaml")), "--trust_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert not (tmp_path / "study").exists()
    # the defaults come from the verbs' own signatures (and the given values stay)
    for section, fn in [("extract", bv.extract), ("train", bv.train), ("associate", bv.associate),
                        ("report", bv.report), ("encode", bv.encode), ("interpret", bv.interpret)]:
        given = cfg.get(section) or {}
        for name, p in inspect.signature(fn).parameters.items():
            if name in printed[section]:
                expected = given.get(name, p.default)
                if isinstance(expected, dict):  # given in part: the rest filled in (optim below)
                    assert expected.items() <= printed[section][name].items(), (section, name)
                    continue
                assert printed[section][name] == (list(expected) if isinstance(expected, tuple) else expected), \
                    (section, name)
    assert printed["train"]["optim"]["lr"] == 0.003 and printed["train"]["optim"]["decay_fraction"] == 0.2
    assert printed["sae"]["k"] == 4 and printed["sae"]["normalise_inputs"] is True
    assert printed["adapter"]["init_args"]["layout"] == "auto"
    assert printed["adapter"]["init_args"]["model"]["init_args"]["config"]["init_args"]["hidden_size"] == 32
    assert printed["cohort"]["init_args"] == {"n_subjects": 16, "per_subject": 4, "length": 12, "seed": 0}
    assert printed["interpret"]["model"] is False and "store_path" not in printed["extract"]
    # the printed config is a config, and resolves to itself
    assert load_config(printed, trust=True).config == printed


def _child(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "bioviz.cli", "run", str(config), "--from", "train",
                             "--progress", "false", "--trust_config"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # a second Python process starts (~10 s on two shared cores), then trains
def test_a_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(finished, tmp_path, caplog):
    folder, cfg = copy_study(finished, tmp_path)
    child = _child(write_config(cfg, tmp_path / "study.yaml"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:  # the child holds the lock, training
            record = json.loads((folder / "run.json").read_text())["stages"]["train"]
            if record.get("status") == "running" and record.get("pid") == child.pid:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stdout.read()
        with pytest.raises(LockedError) as err:
            run_study(cfg, progress=False, trust=True)
        assert str(folder / ".bioviz.lock") in str(err.value) and f"pid {child.pid}" in str(err.value)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (folder / ".bioviz.lock").exists()  # left behind by the killed process
    with caplog.at_level(logging.WARNING, logger="bioviz.lock"):
        summary = run_study(cfg, progress=False, trust=True)
    assert f"pid {child.pid}" in caplog.text and "no longer running" in caplog.text
    assert summary["stages"]["train"]["status"] == "restarted" and summary["stages"]["extract"]["status"] == "cached"
    train = json.loads((folder / "run.json").read_text())["stages"]["train"]
    assert train["interruptions"] == 1 and train["restarted_from_scratch"] and "step 0" in train["note"]
    assert_same_candidates(candidates(folder), candidates(finished["folder"]))
    assert not (folder / ".bioviz.lock").exists()


def test_the_same_study_in_python_gives_the_same_candidates(finished, tmp_path):
    from transformers import BertConfig, BertModel

    from bioviz.adapters import TorchAdapter
    from bioviz.adapters.datasets import ArrayDataset

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    TinyCohort(seed=0).build(cohort)
    torch.manual_seed(0)
    adapter = TorchAdapter(BertModel(BertConfig(**BERT)))
    data = ArrayDataset(str(cohort / "tokens.npz"), str(cohort / "tokens.tsv"))
    store = bv.extract(adapter, data, "encoder.layer.1", str(tmp_path / "store"), batch_size=8, progress=False)
    sae, = bv.train(store.path, "encoder.layer.1", sae={"architecture": "topk", "k": 4, "expansion_factor": 4},
                    max_steps=80, batch_size=256, optim={"lr": 0.003, "warmup_steps": 10},
                    output_dir=str(tmp_path / "sae"), trainer={"enable_progress_bar": False})
    ft = bv.encode(sae, store, progress=False)
    findings = bv.associate(ft, ["diagnosis"], covariates=["age"], clinical=str(cohort / "clinical.csv"),
                            n_permutations=100, n_boot=50, n_stability=10, heldout=None, probes=False,
                            progress=False)
    assert len(findings.candidates) > 0
    assert_same_candidates(findings.candidates, candidates(finished["folder"]))


def test_the_trainer_takes_a_logger_as_class_path_and_init_args(finished, tmp_path):
    folder, cfg = copy_study(finished, tmp_path)
    logs = tmp_path / "logs"
    cfg["train"]["trainer"] = {"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                          "init_args": {"save_dir": str(logs), "name": "tiny"}}}
    summary = run_study(cfg, progress=False, trust=True)
    assert summary["stages"]["train"]["status"] == "ran"
    # Lightning's CSVLogger wrote the training log on the step Lightning logs (the 50th of 80), though
    # an epoch of this store is 3 batches (bioviz's own every-50th-step rule once missed it: no file)
    metrics = pd.read_csv(next(logs.rglob("metrics.csv")))
    assert set(metrics.dropna(subset=["topk/fvu"])["step"]) == {49}
    assert load_config(cfg, trust=True).config["train"]["trainer"]["logger"]["init_args"]["name"] == "tiny"


def test_training_is_reproducible_from_its_seed(finished, tmp_path):
    # what lets an interrupted study restart its training and still end identical
    kw = dict(sae={"architecture": "topk", "k": 4, "expansion_factor": 4}, max_steps=20, batch_size=256,
              trainer={"enable_progress_bar": False})
    store = str(finished["folder"] / "store")
    a, = bv.train(store, output_dir=str(tmp_path / "a"), seed=0, **kw)
    b, = bv.train(store, output_dir=str(tmp_path / "b"), seed=0, **kw)
    c, = bv.train(store, output_dir=str(tmp_path / "c"), seed=1, **kw)
    for name, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[name]), name
    assert not torch.equal(a.W_dec, c.W_dec)


@pytest.mark.slow
def test_a_study_killed_three_times_ends_identical(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "experiments" / "kill_resume.py")
    kill_resume = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_resume)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    config = write_config(tiny_config(tmp_path / "unused"), tmp_path / "tiny.yaml")
    lines = []
    result = kill_resume.kill_resume(config, kills=3, seed=0, out=tmp_path / "out", trust=True, say=lines.append)
    assert result["finished"] and result["identical"], "\n".join(lines)
    assert result["tried"] >= 2 and result["passed"] == result["tried"], "\n".join(lines)
    # the kills were where run.json says: the stage each interrupted counted the interruption
    record = json.loads((tmp_path / "out" / "killed" / "run.json").read_text())["stages"]
    for k in result["kills"]:
        if k["landed"]:
            assert record[k["landed"]]["interruptions"] >= 1
    assert_same_candidates(candidates(tmp_path / "out" / "killed"), candidates(tmp_path / "out" / "uninterrupted"))
