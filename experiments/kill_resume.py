"""Kill ``bioviz run`` at random moments across a study's stages; every restart must finish the
study with the same candidates as an uninterrupted run.

    python experiments/kill_resume.py --config experiments/studies/pbmc.yaml --kills 10 --seed 0

1. The study runs once, uninterrupted, into ``OUT/uninterrupted`` (a subprocess, as a user runs it).
2. Into ``OUT/killed`` the same study runs as a subprocess that is SIGKILLed at ``--kills`` moments
   and restarted after each: the moments are drawn from the uninterrupted run's per-stage timings
   (every stage gets a kill when there are at least as many kills as stages, the rest go to the
   longer stages), each a random fraction (5-60 %) into its stage once run.json says the stage is
   running; a stage that ends before its moment (the machine ran faster than it did uninterrupted)
   passes the kill on, the same fraction into the stage that runs next.
3. A kill *landed* when run.json, read after the process died, shows a stage running in that
   process (a kill while Python starts up, or between two stages, did not land: it is reported and
   not counted). A landed kill *passed* when the stage it interrupted, finished by a later restart,
   wrote an artifact equal to the uninterrupted one (store arrays, SAE weights, codes, candidate
   table, descriptions, report tables), the last restart finished, and the final candidate table
   equals the uninterrupted one (same features, same order, q within 1e-9).

Prints one line per kill, the timings, and ``kill_resume_identical: passed/tried`` last.
Inputs a config names beside its study folder (files other than the artifacts) are copied into
both folders, so a study without a ``cohort`` builder can be used too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bioviz.run import ARTIFACTS, RECORD, STAGES

Q_TOL = 1e-9


def _command(config: Path, trust: bool) -> list[str]:
    return [sys.executable, "-m", "bioviz.cli", "run", str(config), "--progress", "false",
            *(["--trust_config"] if trust else [])]


def _record(folder: Path) -> dict:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _running(record: dict, pid: int) -> str | None:
    """The stage run.json shows running in process ``pid``."""
    for stage, entry in (record.get("stages") or {}).items():
        if entry.get("status") == "running" and entry.get("pid") == pid:
            return stage
    return None


def _prepare(config: dict, folder: Path, source: Path) -> Path:
    """A fresh study folder with the config's own inputs copied in; the config pointed at it."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if source.is_dir():  # inputs beside the artifacts (relative paths in the config name them)
        for p in source.iterdir():
            if p.name in ARTIFACTS.values() or p.name == RECORD or p.name.startswith("."):
                continue
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, folder / p.name)
    path = folder.with_suffix(".yaml")
    path.write_text(yaml.safe_dump({**config, "study": str(folder)}, sort_keys=False))
    return path


def plan(durations: dict[str, float], kills: int, rng: np.random.Generator) -> list[tuple[str, float]]:
    """(stage, fraction of its uninterrupted duration) per kill, in stage order."""
    stages = list(durations)
    weights = np.array([max(durations[s], 1e-3) for s in stages])
    weights = weights / weights.sum()
    if kills >= len(stages):
        chosen = stages + list(rng.choice(stages, kills - len(stages), p=weights))
    else:
        chosen = list(rng.choice(stages, kills, replace=False, p=weights))
    chosen.sort(key=stages.index)
    return [(str(s), float(rng.uniform(0.05, 0.6))) for s in chosen]


# -- artifacts compared with the uninterrupted run's ------------------------------------------


def candidates_equal(a: Path, b: Path) -> tuple[bool, str]:
    """The final candidate tables: same features in the same order (and labels), q within 1e-9."""
    ca = pd.read_parquet(a / ARTIFACTS["associate"] / "candidates.parquet")
    cb = pd.read_parquet(b / ARTIFACTS["associate"] / "candidates.parquet")
    if len(ca) != len(cb):
        return False, f"{len(ca)} vs {len(cb)} candidates"
    if list(ca["feature"]) != list(cb["feature"]) or list(ca["label"]) != list(cb["label"]):
        return False, f"features differ: {list(ca['feature'])[:5]} vs {list(cb['feature'])[:5]}"
    diff = float(np.max(np.abs(ca["q"].to_numpy() - cb["q"].to_numpy()), initial=0.0))
    return diff <= Q_TOL, f"{len(ca)} candidates, max |Δq| = {diff:.1e}"


def _same_file(a: Path, b: Path) -> bool:
    """Same content: arrays for .npz, data for .h5ad, the payload of .gz, else the bytes."""
    if a.suffix == ".npz":
        with np.load(a) as x, np.load(b) as y:
            return x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)
    if a.suffix == ".h5ad":
        import anndata as ad

        x, y = ad.read_h5ad(a), ad.read_h5ad(b)
        dense = [np.asarray(m.todense() if hasattr(m, "todense") else m) for m in (x.X, y.X)]
        return x.obs.equals(y.obs) and x.var.equals(y.var) and np.array_equal(*dense)
    if a.suffix == ".gz":
        import gzip

        return gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes())
    return a.read_bytes() == b.read_bytes()


def _same_stage(stage: str, a: Path, b: Path) -> tuple[bool, str]:
    """Whether the artifact ``stage`` wrote in study ``b`` equals study ``a``'s."""
    if stage == "cohort":  # by content: npz and gzip files carry the time they were written
        names = sorted(str(p.relative_to(a / "cohort")) for p in (a / "cohort").rglob("*") if p.is_file())
        other = sorted(str(p.relative_to(b / "cohort")) for p in (b / "cohort").rglob("*") if p.is_file())
        bad = [n for n in names if not _same_file(a / "cohort" / n, b / "cohort" / n)] if names == other else names
        return not bad, f"{len(names)} cohort files " + ("identical" if not bad else f"differ ({bad[:3]})")
    if stage == "extract":
        from bioviz.store import ActivationStore

        sa, sb = ActivationStore(a / "store"), ActivationStore(b / "store")
        same = sa.layers == sb.layers and all(np.array_equal(sa.array(x)[:], sb.array(x)[:]) for x in sa.layers)
        same = same and sa.obs.equals(sb.obs)
        return same, f"store {sa.n_rows} rows {'identical' if same else 'differ'}"
    if stage == "train":
        from safetensors.torch import load_file

        names = _record(a)["stages"]["train"]["saes"]
        wa = [load_file(a / "sae" / n / "sae.safetensors") for n in names]
        wb = [load_file(b / "sae" / n / "sae.safetensors") for n in names]
        same = all(x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x) for x, y in zip(wa, wb))
        return bool(same), f"SAE weights {'bit-identical' if same else 'differ'}"
    if stage == "encode":
        import anndata as ad

        fa, fb = ad.read_h5ad(a / "features.h5ad"), ad.read_h5ad(b / "features.h5ad")
        same = fa.shape == fb.shape and (fa.X != fb.X).nnz == 0 and fa.var.equals(fb.var)
        return bool(same), f"codes {fa.shape} {'identical' if same else 'differ'}"
    if stage == "associate":
        return candidates_equal(a, b)
    if stage == "interpret":
        pa = pd.read_parquet(a / "interpretation" / "features.parquet")
        pb = pd.read_parquet(b / "interpretation" / "features.parquet")
        same = pa.equals(pb)
        return same, f"{len(pa)} descriptions {'identical' if same else 'differ'}"
    # report: pseudonyms are drawn afresh; the tables without subjects must agree
    ra, rb = (json.loads((x / "report" / "report.json").read_text()) for x in (a, b))
    same = all(ra[k] == rb[k] for k in ("candidates", "checks", "files"))
    for table in ("candidates", "associations"):
        ta, tb = (pd.read_csv(x / "report" / "data" / f"{table}.tsv", sep="\t") for x in (a, b))
        try:
            pd.testing.assert_frame_equal(ta, tb, check_exact=False, rtol=0, atol=Q_TOL)
        except AssertionError:
            same = False
    return same, f"report ({ra['candidates']} candidates) {'agrees' if same else 'differs'}"


# -- the experiment ----------------------------------------------------------------------------


def kill_resume(config: str | Path, kills: int = 10, seed: int = 0, out: str | Path | None = None,
                trust: bool = False, say=print) -> dict:
    """Run the experiment; returns ``{"passed", "tried", "kills": [...], "identical", "seconds"}``."""
    config = Path(config)
    cfg = yaml.safe_load(config.read_text())
    source = Path(cfg["study"])
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="kill_resume_"))
    out.mkdir(parents=True, exist_ok=True)
    whole, killed = out / "uninterrupted", out / "killed"
    whole_cfg, killed_cfg = _prepare(cfg, whole, source), _prepare(cfg, killed, source)
    env = os.environ.copy()

    t0 = time.perf_counter()
    done = subprocess.run(_command(whole_cfg, trust), capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{done.stdout}\n{done.stderr}")
    durations = {s: float(e["seconds"]) for s, e in _record(whole)["stages"].items()}
    say(f"uninterrupted: {seconds:.1f} s (" + ", ".join(f"{s} {d:.1f} s" for s, d in durations.items()) + ")")

    rng = np.random.default_rng(seed)
    log = open(out / "killed.log", "w")
    results = []
    for i, (target, fraction) in enumerate(plan(durations, kills, rng), 1):
        proc = subprocess.Popen(_command(killed_cfg, trust), stdout=log, stderr=subprocess.STDOUT, env=env)
        current, deadline, delay = None, None, 0.0
        while proc.poll() is None:
            stage = _running(_record(killed), proc.pid)
            if stage is not None and STAGES.index(stage) >= STAGES.index(target) and stage != current:
                # the target stage (or, when an earlier kill landed late or a stage ran faster than
                # it did uninterrupted, the stage now running): the kill goes that fraction into it
                current, delay = stage, fraction * durations[stage]
                deadline = time.perf_counter() + delay
            if deadline is not None and time.perf_counter() >= deadline:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        rc = proc.wait()
        record = _record(killed)  # final: the process is gone
        landed = _running(record, proc.pid) if rc == -signal.SIGKILL else None
        into = time.time() - record["stages"][landed]["started"] if landed else None
        results.append({"kill": i, "planned": target, "aimed": current, "delay": delay, "landed": landed, "rc": rc})
        where = (f"landed in {landed} ({into:.2f} s into it)" if landed else
                 "finished before the kill" if rc == 0 else "did not land (no stage running)")
        aim = f"{current} +{delay:.2f} s" if current else "no stage reached"
        say(f"kill {i}/{kills}: planned {target} ({fraction:.0%} in), aimed {aim}; {where}")
        if rc == 0:
            break
    log.close()
    final = subprocess.run(_command(killed_cfg, trust), capture_output=True, text=True, env=env)
    finished = final.returncode == 0
    if not finished:
        say(f"the last restart failed (rc {final.returncode}):\n{final.stderr[-3000:]}")
    record = _record(killed)
    same_table, detail = candidates_equal(whole, killed) if finished else (False, "not finished")
    say(f"final candidate table: {'identical' if same_table else 'DIFFERS'} ({detail})")
    checked = {}
    for r in results:
        if r["landed"] and finished:
            if r["landed"] not in checked:
                checked[r["landed"]] = _same_stage(r["landed"], whole, killed)
            r["same"], r["detail"] = checked[r["landed"]]
            entry = record["stages"][r["landed"]]
            r["passed"] = bool(r["same"] and same_table)
            say(f"  kill {r['kill']} ({r['landed']}): {r['detail']}; interruptions recorded "
                f"{entry.get('interruptions', 0)}" + (f"; {entry['note']}" if entry.get("note") else ""))
    tried = sum(1 for r in results if r["landed"])
    passed = sum(1 for r in results if r.get("passed"))
    return {"passed": passed, "tried": tried, "kills": results, "identical": same_table, "finished": finished,
            "uninterrupted_seconds": seconds, "stage_seconds": durations, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a study config (YAML)")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="where the two study folders go (default: a new temporary folder)")
    p.add_argument("--trust_config", action="store_true", help="passed to bioviz run")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result = kill_resume(args.config, args.kills, args.seed, args.out, args.trust_config)
    print(f"seconds: {time.perf_counter() - t0:.1f}; folders in {result['out']}")
    print(f"kill_resume_identical: {result['passed']}/{result['tried']}")
    return 0 if result["passed"] == result["tried"] and result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
