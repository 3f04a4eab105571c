"""Every command and every Python block of README.md runs, in the README's order, in one
folder that has the repository's ``experiments/`` beside it (as the repository root has):
the ``make`` targets by a dry run (CI runs ``make test`` itself), ``bioviz demo --studies
dna_motifs`` as the installed script (the ``dna_demo`` fixture), every other ``bioviz`` command
through the CLI's own entry point, and the Python blocks one after the other in one namespace.
What they print and write is checked against what the README says they do, and the
quickstart's result against the planted truth the cohort builder recorded."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import DEMO_COMMAND
from threadpoolctl import threadpool_limits

from bioviz.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
STAGES = ("cohort", "extract", "train", "encode", "associate", "interpret", "report")


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(README) if kind == lang]


def commands() -> list[str]:
    """Each line of the bash blocks, its trailing comment dropped."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for block in blocks("bash") for line in block.splitlines())
    return [line for line in lines if line]


def test_the_readme_shows_commands_this_file_runs():
    cmds = commands()
    assert cmds[:2] == ["make demo", "make test"]
    # everything else is a bioviz command, run below in order; the demo one comes first
    assert all(c.startswith("bioviz ") for c in cmds[2:]), cmds
    assert cmds[2] == DEMO_COMMAND
    assert len(blocks("python")) >= 3


@pytest.mark.parametrize("target, runs", [("demo", "bioviz demo"), ("test", "pytest")])
def test_make_targets_run_what_the_readme_says(target, runs):
    dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert runs in dry.stdout
    if target == "test":
        ci = (ROOT / ".ci" / "run").read_text()
        assert "make test" in ci  # CI runs the README's test command


def _expect(cmd: str, out: str, cwd: Path) -> None:
    """What the README says each command does, checked on what it printed and wrote."""
    said = re.search(r"^stages: (.*)$", out, re.M)  # the run's summary: "stages: cohort cached, extract ran 1.2 s, ..."
    stages = dict(re.findall(r"(\w+) (cached|ran|resumed|restarted)", said.group(1))) if said else {}
    if cmd.startswith("bioviz run") and "--from" not in cmd and "--print-config" not in cmd:
        assert stages == dict.fromkeys(STAGES, "cached"), out  # "the same study again: every stage cached"
    elif "--from associate" in cmd:
        assert {s: stages.get(s) for s in STAGES} == {**dict.fromkeys(STAGES[:4], "cached"),
                                                      **dict.fromkeys(STAGES[4:], "ran")}, out
        assert re.search(r"^\s+1\s+f\d+\s+carrier", out, re.M), out  # the summary: the top candidate and its q
    elif "--print-config" in cmd:
        cfg = yaml.safe_load(out)
        assert cfg["layer"] == "pool2" and cfg["study"] == "bioviz-demo/dna_motifs"
        assert cfg["extract"]["chunk_rows"] == 4096  # a default filled in (bv.extract's)
    elif cmd.startswith("bioviz layers"):
        assert "encoder.layer.1" in out.split()
    elif cmd.startswith("bioviz extract"):
        assert (cwd / "runs/example/store/manifest.json").is_file()
    elif "--verify true" in cmd:
        assert "2 match the checksums recorded at commit" in out, out
    elif cmd.startswith("bioviz info"):
        assert "encoder.layer.1: d=32" in out
    elif cmd.startswith("bioviz train"):
        assert {p.name for p in (cwd / "runs/example/sae").iterdir()} >= {"topk_k8", "topk_k16"}
    elif cmd.startswith("bioviz encode"):
        assert (cwd / "runs/example/features.h5ad").is_file()
    elif cmd.startswith("bioviz associate"):
        cand = pd.read_parquet(cwd / "runs/example/findings/candidates.parquet")
        table = pd.read_parquet(cwd / "runs/example/findings/associations.parquet")
        assert set(table["label"]) == {"diagnosis", "age", "survival"} and len(cand) == 0  # random model
    elif cmd.startswith("bioviz interpret"):
        assert (cwd / "runs/example/interpretation/interpretation.json").is_file()
    elif cmd.startswith("bioviz report"):
        html = (cwd / "runs/example/report/report.html").read_text()
        assert "No candidate biomarker" in html and (cwd / "runs/example/report/report.pdf").is_file()


@pytest.mark.slow
def test_every_bioviz_command_runs_in_order(dna_demo, monkeypatch, capfd):
    assert dna_demo.returncode == 0, dna_demo.stderr[-3000:]  # the first, run by the fixture
    monkeypatch.chdir(dna_demo.cwd)
    capfd.readouterr()
    for cmd in commands()[3:]:
        with threadpool_limits(1):
            code = main(shlex.split(cmd)[1:])
        out = capfd.readouterr()
        assert code in (0, None), f"{cmd}: exit {code}\n{out.err[-3000:]}"
        _expect(cmd, out.out, dna_demo.cwd)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_python_blocks_run_and_the_quickstart_finds_the_planted_motif(dna_demo, monkeypatch):
    assert dna_demo.returncode == 0
    monkeypatch.chdir(dna_demo.cwd)
    ns: dict = {}
    with threadpool_limits(1):
        for i, block in enumerate(blocks("python")):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
    # the quickstart: the top candidate detects the planted motif (truth.json: the builder's record)
    truth = json.loads(Path("runs/dna/cohort/truth.json").read_text())
    motif = truth["motif"]["matrix_id"]
    top = ns["findings"].candidates.sort_values("rank").iloc[0]
    assert top["q"] < 0.05 and top["effect"] > 0
    motifs = ns["explained"].tables["motifs"].query("feature == @top.feature and rank == 1")
    assert motifs["matrix_id"].tolist() == [motif]
    assert Path("runs/dna/report/report.html").is_file() and motif in Path("runs/dna/report/report.html").read_text()
    # run_study on the demo folder: everything cached, the report where the summary says
    assert Path(ns["summary"]["report"]).resolve() == (dna_demo.study / "report" / "report.html").resolve()
    assert all(s["status"] == "cached" for s in ns["summary"]["stages"].values())
    # the Dask block: one row per subject of the cohort, each the mean of that subject's rows
    subjects = pd.read_csv("runs/dna/cohort/clinical.csv", dtype={"subject_id": str})["subject_id"]
    per_subject = ns["per_subject"]
    assert sorted(per_subject.index) == sorted(subjects) and per_subject.shape[1] == 64
