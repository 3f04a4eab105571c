""":func:`run_study`: a study config end to end, in its study folder, locked while the run works in it."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..cli import ConfigError, _instantiate, import_policy
from ..lock import ArtifactLock, LockedError, _alive
from .config import Study, load_config
from .layout import ARTIFACTS, RECORD
from .runner import _Runner
from .summary import summary


@contextmanager
def _working_in(folder: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _sweep_leftovers(folder: Path) -> None:
    """Staging folders a killed run left (``.findings.tmp-PID``, ``.report.old-PID``): its
    process is gone, and the study lock keeps other runs out."""
    for p in folder.glob(".*.*-*"):
        m = re.fullmatch(r"\.(.+)\.(tmp|old)-(\d+)", p.name)
        if m and m.group(1) in (*ARTIFACTS.values(), RECORD) and not _alive(int(m.group(3))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def run_study(config: str | os.PathLike | dict, *, from_stage: str | None = None, progress: bool = True,
              trust: bool = False) -> dict:
    """Run a study config end to end: each stage cached, resumed or run (see :mod:`bioviz.run`).

    Parameters
    ----------
    config
        The study config: a YAML file or the same as a dict (keys: ``study``, ``seed``,
        ``cohort``, ``adapter``, ``data``, ``layer``, and one section per stage: ``extract``,
        ``sae``, ``train``, ``encode``, ``associate``, ``interpret``, ``report``).
    from_stage
        Force this stage and every later one to run again.
    progress
        Progress bars and one line per stage (on stderr).
    trust
        Let the config's class paths name anything importable (``--trust_config``).

    Returns
    -------
    dict
        The summary: ``study``, ``report`` (report.html), ``candidates`` (the best five:
        rank, feature, label, q), ``n_candidates``, ``stages`` (per stage ``status``: ran,
        resumed or cached, and ``seconds``), ``seconds``, and ``check`` (the cohort
        builder's verdict on the planted truth, when it has a ``check``).

    Raises
    ------
    ConfigError
        The config is refused before any work, naming the key.
    bioviz.lock.LockedError
        Another run is working in the study folder (the message names the lock and its holder).
    """
    study = load_config(config, trust=trust)
    if from_stage is not None and from_stage not in study.stages:
        raise ConfigError(f"from_stage={from_stage!r}: expected one of {', '.join(study.stages)}")
    forced = set(study.stages[study.stages.index(from_stage):]) if from_stage else set()
    study.folder.mkdir(parents=True, exist_ok=True)
    lock = ArtifactLock(study.folder, "study folder")
    try:
        lock.acquire()
    except LockedError as e:
        raise LockedError(f"{e} (lock file: {lock.file})") from None
    try:
        _sweep_leftovers(study.folder)
        runner = _Runner(study, forced, progress)
        with _working_in(study.folder):
            runner.prepare()
            runner.run()
            result = summary(study.folder, runner.done)
            if study.cohort is not None:
                result["check"] = _check(study)
    finally:
        lock.release()
    return result


def _check(study: Study) -> tuple[bool, str] | None:
    with import_policy(study.trust):
        builder = _instantiate(study.cohort.build)
    if not callable(getattr(builder, "check", None)):
        return None
    ok, line = builder.check(study.folder)
    return bool(ok), str(line)
