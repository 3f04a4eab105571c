"""``bioviz demo``: three real studies, end to end, on data and models that ship with the
package (no downloads), each with a planted truth the demo says it found or did not.

1. ``pbmc_ifn``: scanpy's pbmc68k PBMCs through the shipped Geneformer-architecture model; donors
   formed from the cells and an interferon-response programme planted in the case donors'
   myeloid cells (:class:`bioviz.adapters.singlecell.study.PlantedInterferonPBMC`).
2. ``phantom_lesions``: the MNI152 phantom cohort with planted lesions, site effects and
   covariates, through the shipped 3D network (:class:`bioviz.adapters.volume.study.PhantomLesions`).
3. ``dna_motifs``: sequences with planted JASPAR motifs that set a label, through the shipped DNA
   model (:class:`bioviz.adapters.sequence.study.PlantedMotifs`).

Each study is a config in ``bioviz.studies`` (``experiments/studies/`` in a checkout) run by
:func:`bioviz.run.run_study`: extract → train → encode → associate → interpret → report. The demo
then asks each study's cohort whether the planted truth was recovered, from the study's own
outputs, and writes ``index.html`` linking the three reports and atlases.
"""

from __future__ import annotations

import importlib.resources
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

STUDIES = {
    "pbmc_ifn": ("Single cell: interferon response in PBMCs",
                 "Donors formed from scanpy's pbmc68k_reduced cells; a type I interferon-response programme "
                 "(13 genes) planted in case donors' myeloid cells (CD14+ monocytes, dendritic); shipped "
                 "Geneformer-architecture model."),
    "phantom_lesions": ("3D scans: lesions in the MNI152 phantom cohort",
                        "Phantom brains from the MNI152 template with planted lesions, site effects and covariates; "
                        "shipped 3D network; maps checked against the lesion masks."),
    "dna_motifs": ("DNA: planted transcription-factor motifs",
                   "Sequences in which a JASPAR motif's presence sets the label; shipped DNA model; the motif "
                   "matched back to JASPAR."),
}


def study_config(name: str) -> dict:
    """The shipped config of a demo study (a dict, as read from its YAML)."""
    if name not in STUDIES:
        from .errors import InputError

        raise InputError(f"studies: unknown demo study {name!r}; the demo studies are {', '.join(STUDIES)}")
    return yaml.safe_load((importlib.resources.files("bioviz.studies") / f"{name}.yaml").read_text())


def run(out: str = "bioviz-demo", studies: str | list[str] | None = None, progress: bool = True) -> dict:
    """Run the demo studies into ``out`` and write ``out/index.html``.

    Parameters
    ----------
    out
        The demo folder: one study folder per study, and ``index.html``.
    studies
        Which studies (default: all three): ``pbmc_ifn``, ``phantom_lesions``, ``dna_motifs``;
        one name, several separated by commas, or a list.
    progress
        Progress bars per stage.

    Returns
    -------
    dict
        Per study: ``recovered``, the line printed, the study folder and seconds.
    """
    from .run import run_study

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {}
    if isinstance(studies, str):  # the command line: --studies dna_motifs or --studies pbmc_ifn,dna_motifs
        studies = [s.strip() for s in studies.split(",") if s.strip()]
    configs = {name: study_config(name) for name in studies or list(STUDIES)}  # a wrong name: before any work
    for name, cfg in configs.items():
        cfg["study"] = str(out_dir / name)
        t = time.perf_counter()
        _say(f"== {STUDIES[name][0]} ==")
        with _no_hf_bars(), _one_thread():
            result = run_study(cfg, progress=progress)
        recovered, line = result.get("check") or (False, f"{name}: the study's cohort gave no verdict")
        _say(line)
        results[name] = {"recovered": bool(recovered), "line": line, "study": cfg["study"],
                         "seconds": round(time.perf_counter() - t, 1)}
    seconds = round(time.perf_counter() - t0, 1)
    _index(out_dir, results, seconds)
    n = sum(r["recovered"] for r in results.values())
    _say(f"{n} of {len(results)} planted truths recovered in {seconds} s; open {out_dir / 'index.html'}")
    return results


def _index(out_dir: Path, results: dict, seconds: float) -> Path:
    import datetime

    from .report.content import RUO
    from .report.templates import environment
    from .version import __version__

    studies = []
    for name, r in results.items():
        rel = Path(name) / "report"
        links = [(label, (rel / f).as_posix()) for label, f in
                 (("Report (HTML)", "report.html"), ("Report (PDF)", "report.pdf"), ("Feature atlas", "atlas.html"),
                  ("Tables (data/)", "data/index.tsv")) if (out_dir / rel / f).exists()]
        studies.append({"title": STUDIES[name][0], "description": STUDIES[name][1], "line": r["line"],
                        "recovered": r["recovered"], "links": links})
    html = environment().get_template("index.html.j2").render(
        title="bioviz demo: three studies with planted truths", banner=RUO, studies=studies, seconds=seconds,
        generated=datetime.date.today().isoformat(), version=__version__)
    path = out_dir / "index.html"
    path.write_text(html, encoding="utf-8")
    return path


def _say(msg: str) -> None:
    print(msg, flush=True)


@contextmanager
def _one_thread():
    """The demo's models are small: one thread each for torch and BLAS. Measured on 2 shared
    cores, SAE training took 9-12x longer with torch's default threads (they contend more than
    they share), and the three studies would not fit in 10 minutes."""
    import torch
    from threadpoolctl import threadpool_limits

    was = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(was)


@contextmanager
def _no_hf_bars():
    """transformers' own "Loading weights" bar off while the demo models load from disk."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
