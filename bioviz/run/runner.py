"""The loop over a study's stages: each stage's cache key (a hash of its configuration and of its
inputs' checksums) against ``run.json``, then cached, resumed or run, and recorded."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checksum import digest, file_checksum
from ..errors import InputError
from .config import Study
from .layout import ARTIFACTS, RECORD
from .record import _named_files, _Record
from .stages import _Stages


def _say(message: str, progress: bool = True) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


@dataclass
class _Runner(_Stages):
    """A study's stages in order, against its record (the stages themselves: :class:`~.stages._Stages`)."""

    study: Study
    forced: set[str]
    progress: bool
    record: _Record = field(init=False)
    outputs: dict = field(default_factory=dict)   # stage → checksum of its artifact
    done: dict = field(default_factory=dict)      # stage → {"status", "seconds"}
    _adapter: Any = None
    _data: Any = None

    def __post_init__(self):
        self.record = _Record(self.study.folder / RECORD)

    def path(self, stage: str) -> Path:
        return self.study.folder / ARTIFACTS[stage]

    # what a stage's cache key is made of -------------------------------------------------

    def config_of(self, stage: str) -> dict:
        c, seed = self.study.config, self.study.seed
        extract = {k: c[k] for k in ("adapter", "data", "layer", "extract")} | {"seed": seed}
        return {
            "cohort": {"cohort": c["cohort"]},
            "extract": extract,
            "train": {k: c[k] for k in ("sae", "train", "layer")} | {"seed": seed},
            "encode": {"encode": c["encode"]},
            "associate": {"associate": c["associate"], "seed": seed},
            "interpret": {"interpret": c["interpret"], "seed": seed,
                          **({"model": extract} if c["interpret"].get("model") else {})},
            "report": {"report": c["report"]},
        }[stage]

    def inputs_of(self, stage: str) -> dict:
        o, c = self.outputs, self.study.config
        files = {
            "cohort": {},
            "extract": _named_files([c["adapter"], c["data"]]),
            "train": {}, "encode": {},
            "associate": _named_files(c["associate"]),
            "interpret": _named_files(c["interpret"]),
            "report": _named_files(c["report"]),
        }[stage]
        before = {"cohort": [], "extract": ["cohort"], "train": ["extract"], "encode": ["extract", "train"],
                  "associate": ["encode"], "interpret": ["associate", "encode"],
                  "report": ["associate", "interpret", "encode"]}[stage]
        if stage == "interpret" and c["interpret"].get("model"):
            before = ["cohort", "extract", "train", *before]
        return {"artifacts": {s: o.get(s) for s in before if s in o}, "files": files}

    def output_of(self, stage: str) -> str | None:
        """The checksum of the stage's artifact on disk (None when it is not there)."""
        p = self.path(stage)
        if stage == "train":
            names = self.record.stage("train").get("saes") or []
            files = [p / n / f for n in names for f in ("sae.json", "sae.safetensors")]
            return digest([file_checksum(f) for f in files]) if names and all(f.is_file() for f in files) else None
        marker = {"cohort": p, "extract": p / "manifest.json", "encode": p,
                  "associate": p / "manifest.json", "interpret": p / "interpretation.json",
                  "report": p / "report.json"}[stage]
        return file_checksum(marker) if marker.exists() else None

    def may_run(self, stage: str) -> bool:
        """Whether ``stage`` may run (conservatively: its record alone, inputs not checked)."""
        entry = self.record.stage(stage)
        return (stage in self.forced or entry.get("status") != "done"
                or entry.get("config") != digest(self.config_of(stage)))

    def prepare(self) -> None:
        """Build the adapter before any stage when a stage that needs it may run: a function
        taking ``**kwargs`` can only be checked by calling it, and that must fail before any work."""
        stages = self.study.stages
        early = stages[:stages.index("extract") + 1]
        if self.study.config["interpret"].get("model"):
            early = stages[:stages.index("interpret") + 1]
        if any(self.may_run(s) for s in early):
            _ = self.adapter

    # the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        stages = self.study.stages
        self.record.data["config"] = self.study.config
        for i, stage in enumerate(stages, 1):
            config, inputs = digest(self.config_of(stage)), digest(self.inputs_of(stage))
            entry = self.record.stage(stage)
            same = entry.get("config") == config and entry.get("inputs") == inputs
            if stage not in self.forced and same and entry.get("status") == "done":
                out = self.output_of(stage)
                if out is not None and out == entry.get("output"):
                    self.outputs[stage] = out
                    self.done[stage] = {"status": "cached", "seconds": 0.0}
                    _say(f"[{i}/{len(stages)}] {stage}: cached", self.progress)
                    continue
            # a stage a killed run left running (its process is gone: the study lock was free),
            # or one that failed: the same configuration on the same inputs continues it
            interrupted = entry.get("status") == "running"
            resume = same and entry.get("status") in ("running", "failed") and stage not in self.forced
            verb = "resuming" if resume else "running"
            _say(f"[{i}/{len(stages)}] {stage}: {verb}" + (" (interrupted before)" if interrupted else ""),
                 self.progress)
            self.record.start(stage, config=config, inputs=inputs, pid=os.getpid(), started=time.time(),
                              interruptions=entry.get("interruptions", 0) + int(interrupted))
            t0 = time.perf_counter()
            try:
                extra = getattr(self, f"run_{stage}")(resume)
            except BaseException as e:
                if not isinstance(e, (KeyboardInterrupt, SystemExit)):
                    self.record.update(stage, status="failed", error=f"{type(e).__name__}: {e}"[:2000])
                raise
            seconds = round(time.perf_counter() - t0, 2)
            if stage == "train":
                self.record.update(stage, **extra)
            out = self.output_of(stage)
            if out is None:
                raise InputError(f"stage {stage} finished but {self.path(stage)} is missing")
            self.outputs[stage] = out
            self.record.update(stage, status="done", output=out, seconds=seconds, finished=time.time(),
                               **({} if stage == "train" else extra))
            # what a user reads: extraction resumed its store, training restarted from step 0
            status = ("resumed" if extra.get("resumed") else "restarted" if extra.get("restarted_from_scratch")
                      else "ran")
            self.done[stage] = {"status": status, "seconds": seconds}
            _say(f"[{i}/{len(stages)}] {stage}: done in {seconds:.1f} s", self.progress)
