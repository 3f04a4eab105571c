"""``bioviz run CONFIG``: a whole study from one YAML file, stage by stage, cached and resumable.

Stages, in order: ``cohort`` (when the config has one) → ``extract`` → ``train`` → ``encode`` →
``associate`` → ``interpret`` → ``report``. Each calls its verb (:func:`bioviz.extract`, ...)
with its section of the config and writes its artifact under the study folder::

    cohort/  store/  sae/  features.h5ad  findings/  interpretation/  report/  run.json

``run.json`` records, per stage, a hash of its configuration, a hash of its inputs' checksums
(the cohort's files, the store's manifest, the SAE's files, the FeatureTable, the Findings'
manifest, ``interpretation.json``, and any file the section names) and the checksum of what it
wrote. A re-run skips a stage whose configuration, inputs and artifact are unchanged
("cached"); a stage a killed run left running is resumed: extraction continues its store from
the last committed chunk, training starts again from step 0 (a run resumed from a Lightning
checkpoint is close to, not bit-identical with, an uninterrupted one, and a study must give the
same candidates however often it was interrupted), and the later stages write their artifacts
atomically, so they simply run again. ``from_stage`` forces a stage and every later one.

Every relative path in the config is relative to the study folder (the process works inside
it while the study runs); ``study`` itself is relative to the working directory. The study
folder is locked (:class:`~bioviz.lock.ArtifactLock`) while a run works in it.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from .checksum import digest, file_checksum
from .cli import _JSONARGPARSE_ADVICE, TRUST_FLAG, ConfigError, _instantiate, import_policy
from .errors import InputError
from .lock import ArtifactLock, LockedError, _alive

log = logging.getLogger(__name__)

STAGES = ("cohort", "extract", "train", "encode", "associate", "interpret", "report")
RECORD = "run.json"
KIND = "bioviz.run"
# where each stage writes, inside the study folder
ARTIFACTS = {"cohort": "cohort", "extract": "store", "train": "sae", "encode": "features.h5ad",
             "associate": "findings", "interpret": "interpretation", "report": "report"}
# the verb's parameters bioviz run sets itself (paths under the study, the shared seed, ...)
RUN_SETS = {
    "extract": {"adapter", "data", "layers", "store_path", "overwrite", "progress", "extra_manifest"},
    "train": {"store", "layer", "sae", "output_dir", "seed", "ckpt_path"},
    "encode": {"sae", "store", "layer", "out", "overwrite", "progress"},
    "associate": {"features", "sae", "store", "layer", "out", "overwrite", "progress", "seed"},
    "interpret": {"findings", "features", "adapter", "data", "sae", "layer", "out", "overwrite", "progress",
                  "seed"},
    "report": {"findings", "out", "interpretation", "features", "overwrite", "progress"},
}
TOP_KEYS = ("study", "seed", "cohort", "adapter", "data", "layer", "extract", "sae", "train", "encode",
            "associate", "interpret", "report")
REQUIRED = {"study": "the study folder (every artifact goes under it)",
            "adapter": "the model's adapter (class_path + init_args)",
            "data": "what the adapter reads (a path relative to the study folder, or a dataset's class_path)",
            "layer": "the layer whose activations are extracted"}
TRAIN_NOTE = ("training did not finish before (killed or failed): it started again from step 0, since a run "
              "resumed from a checkpoint is not bit-identical with an uninterrupted one")


def _verbs() -> dict[str, Callable]:
    from .analysis.associate import associate
    from .extract import extract
    from .features import encode
    from .interpret import interpret
    from .report import report
    from .sae.train import train

    return {"extract": extract, "train": train, "encode": encode, "associate": associate,
            "interpret": interpret, "report": report}


# -- the config ------------------------------------------------------------------------------


@dataclass
class _Built:
    """A ``class_path`` section: its resolved form and how to build it."""

    resolved: dict
    build: Callable[[], Any]


@dataclass
class Study:
    """A study config, checked and resolved (every default filled in); nothing built yet."""

    folder: Path
    seed: int
    config: dict                      # the resolved config, JSON-safe (what --print-config shows)
    cohort: _Built | None
    adapter: _Built
    build_data: Callable[[], Any]
    trust: bool = False

    def section(self, name: str) -> dict:
        return dict(self.config.get(name) or {})

    @property
    def stages(self) -> list[str]:
        return [s for s in STAGES if s != "cohort" or self.cohort is not None]


def _read(config: str | os.PathLike | dict) -> dict:
    if isinstance(config, dict):
        return json.loads(json.dumps(config, default=str))  # a copy, plain types
    path = Path(config)
    if not path.is_file():
        raise InputError(f"study config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (study:, adapter:, ...)")
    return raw


def _check_keys(raw: dict) -> None:
    """Unknown keys, missing required keys, and stage keys the verb does not take, named."""
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a study config key; the keys are {', '.join(TOP_KEYS)}")
    for key, what in REQUIRED.items():
        if raw.get(key) in (None, ""):
            raise ConfigError(f"{key}: missing; give {what}")
    verbs = _verbs()
    for name, fn in verbs.items():
        section = raw.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{name}: expected a mapping of bioviz.{name}'s arguments, got {section!r}")
        takes = [p for p in inspect.signature(fn).parameters if p not in RUN_SETS[name]]
        takes += ["model"] if name == "interpret" else []
        for key in section:
            if key in RUN_SETS[name]:
                where = "the top-level seed" if key == "seed" else "the study folder and the config's other keys"
                raise ConfigError(f"{name}.{key}: set by bioviz run (from {where}); remove it")
            if key not in takes:
                raise ConfigError(f"{name}.{key}: bioviz.{name} takes no such argument; it takes "
                                  f"{', '.join(takes)}")
    if not (raw.get("associate") or {}).get("labels"):
        raise ConfigError("associate.labels: missing; give the clinical labels to test (e.g. [diagnosis])")
    for key in ("cohort", "adapter"):
        section = raw.get(key)
        if section is not None and (not isinstance(section, dict) or not isinstance(section.get("class_path"), str)):
            raise ConfigError(f"{key}: expected class_path (and init_args), got {section!r}")
        extra = set(section or {}) - {"class_path", "init_args"}
        if extra:
            raise ConfigError(f"{key}.{sorted(extra)[0]}: not accepted; {key} has class_path and init_args only")


def _parser():
    """The config's parser: one group per stage, built from the verb's signature (its types
    and defaults); ``adapter`` and ``cohort`` are parsed on their own (:func:`_class_section`)."""
    from jsonargparse import ArgumentParser

    from .sae import SAEConfig

    p = ArgumentParser(prog="bioviz run", exit_on_error=False)
    p.add_argument("--study", type=str, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cohort", type=dict | None, default=None)
    p.add_argument("--adapter", type=dict, required=True)
    p.add_argument("--data", type=str | torch.utils.data.Dataset, required=True)
    p.add_argument("--layer", type=str, required=True)
    for name, fn in _verbs().items():
        if name == "train":  # the SAE's own settings (bioviz.train's sae=), d_in from the store
            p.add_class_arguments(SAEConfig, nested_key="sae", skip={"d_in", "provenance", "training"})
        p.add_function_arguments(fn, nested_key=name, skip=set(RUN_SETS[name]))
    p.add_argument("--interpret.model", type=bool, default=False,
                   help="pass the adapter, data and SAE: attribution, interventions, maps in input space")
    return p


def _class_section(key: str, section: dict, *, base: type | None, need: str | None) -> _Built:
    """``class_path`` + ``init_args`` naming a class (a subclass of ``base`` when given) or a
    function returning one: checked against its signature now, built later."""
    from jsonargparse import ArgumentParser
    from jsonargparse._util import import_object

    path, init = section["class_path"], section.get("init_args") or {}
    if not isinstance(init, dict):
        raise ConfigError(f"{key}.init_args: expected a mapping, got {init!r}")
    try:
        target = import_object(path)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{key}.class_path: {e}") from None
    p = ArgumentParser(exit_on_error=False)
    extra: dict = {}
    if inspect.isclass(target):
        if base is not None and not issubclass(target, base):
            raise ConfigError(f"{key}.class_path: {path} is not an {base.__name__} subclass (nor a function returning one)")
        if need and not callable(getattr(target, need, None)):
            raise ConfigError(f"{key}.class_path: {path} has no {need}() method")
        p.add_class_arguments(target, nested_key=key, fail_untyped=False)
    elif callable(target):
        p.add_function_arguments(target, nested_key=key, fail_untyped=False)
        known = {a.dest.split(".", 1)[1] for a in p._actions if a.dest.startswith(f"{key}.")}
        takes_any = any(q.kind is q.VAR_KEYWORD for q in inspect.signature(target).parameters.values())
        extra = {k: v for k, v in init.items() if k not in known}
        if extra and not takes_any:
            raise ConfigError(f"{key}.init_args.{next(iter(extra))}: {path} takes no such argument")
        init = {k: v for k, v in init.items() if k in known}
    else:
        raise ConfigError(f"{key}.class_path: {path} is neither a class nor a function")
    try:
        parsed = p.parse_object({key: init})
    except Exception as e:  # jsonargparse's ArgumentError names the argument (as key.argument)
        raise ConfigError(f"{key}.init_args of {path}: {e}") from None
    dumped = yaml.safe_load(p.dump(parsed, skip_unset=False)) or {}
    resolved = {"class_path": path, "init_args": {**(dumped.get(key) or {}), **extra}}

    def build():
        built = p.instantiate(parsed).get(key)
        if not inspect.isclass(target):  # a function: its typed arguments built, the rest as given
            kwargs = {k: built[k] for k in built.keys(branches=True)} if built is not None else {}
            built = target(**kwargs, **extra)
        if base is not None and not isinstance(built, base):
            raise ConfigError(f"{key}: {path} returned {type(built).__name__}, not an {base.__name__}")
        return built

    return _Built(resolved, build)


def load_config(config: str | os.PathLike | dict, *, trust: bool = False) -> Study:
    """Read, check and resolve a study config, building nothing.

    Parameters
    ----------
    config
        A YAML file, or the same as a dict.
    trust
        Let class paths name anything importable (``--trust_config``); by default only
        :data:`bioviz.cli.ALLOWED_IMPORTS`.

    Returns
    -------
    Study
        The checked config, every default filled in.

    Raises
    ------
    ConfigError
        An unknown key, a missing required key, a wrong type, a stage key the verb does not
        take, a class path outside the allow-list: the message names the key.
    """
    from jsonargparse import ArgumentParser

    from .adapter import Adapter
    from .sae.config import OptimConfig

    raw = _read(config)
    _check_keys(raw)
    parser = _parser()
    with import_policy(trust):  # every class path the config gives, checked against the allow-list
        try:
            cfg = parser.parse_object({k: v for k, v in raw.items() if v is not None})
        except Exception as e:  # jsonargparse's message: the key and what was expected
            raise ConfigError(_policy_hint(str(e))) from None
        try:
            adapter = _class_section("adapter", raw["adapter"], base=Adapter, need=None)
            cohort = (_class_section("cohort", raw["cohort"], base=None, need="build")
                      if raw.get("cohort") else None)
        except ConfigError as e:
            raise ConfigError(_policy_hint(str(e))) from None
        data_parser = ArgumentParser(exit_on_error=False)
        data_parser.add_argument("--data", type=str | torch.utils.data.Dataset)
        data_cfg = data_parser.parse_object({"data": raw["data"]}) if isinstance(raw["data"], dict) else None
    resolved = yaml.safe_load(parser.dump(cfg, skip_unset=False))
    resolved["adapter"] = adapter.resolved
    resolved["cohort"] = cohort.resolved if cohort else None
    try:
        OptimConfig.coerce(resolved["train"].get("optim"), "train.optim").validate()
    except ValueError as e:
        raise ConfigError(f"train.optim: {e}") from None

    def build_data():
        if data_cfg is None:
            return resolved["data"]
        with import_policy(trust):
            return _instantiate(lambda: data_parser.instantiate(data_cfg)).data

    return Study(folder=Path(resolved["study"]).absolute(), seed=int(resolved["seed"]), config=resolved,
                 cohort=cohort, adapter=adapter, build_data=build_data, trust=trust)


def _policy_hint(message: str) -> str:
    return message.replace(_JSONARGPARSE_ADVICE, f"(allowed with {TRUST_FLAG}, or trust=True in Python)")


def print_config(study: Study) -> str:
    """The resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(study.config, sort_keys=False, default_flow_style=False)


# -- the record --------------------------------------------------------------------------------


class _Record:
    """``run.json``: per stage its status, hashes and timings; written atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.data = {"kind": KIND, "stages": {}}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("kind") == KIND and isinstance(data.get("stages"), dict):
                    self.data = data
            except (OSError, ValueError):
                log.warning("%s is unreadable: every stage is checked again", path)

    def stage(self, name: str) -> dict:
        return self.data["stages"].get(name) or {}

    def start(self, name: str, **values) -> None:
        """A new entry for a stage that starts now (what an earlier run said of it goes)."""
        self.data["stages"][name] = {"status": "running", **values}
        self.save()

    def update(self, name: str, **values) -> None:
        self.data["stages"][name] = {**self.stage(name), **values}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def _named_files(value, seen: dict | None = None) -> dict:
    """Checksums of the files and folders a config section names (relative to the working
    directory, the study folder): a changed clinical table re-runs its stage."""
    seen = {} if seen is None else seen
    if isinstance(value, dict):
        for v in value.values():
            _named_files(v, seen)
    elif isinstance(value, list):
        for v in value:
            _named_files(v, seen)
    elif isinstance(value, str) and value not in ("", ".", "..") and "\n" not in value and len(value) < 4096:
        try:
            exists = Path(value).exists()
        except OSError:
            exists = False
        if exists and value not in seen:
            seen[value] = file_checksum(value)
    return seen


# -- running ---------------------------------------------------------------------------------


@contextmanager
def _working_in(folder: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _say(message: str, progress: bool = True) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


@dataclass
class _Runner:
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

    # the stages -----------------------------------------------------------------------------

    @property
    def adapter(self):
        if self._adapter is None:
            torch.manual_seed(self.study.seed)  # models built from a config get reproducible weights
            try:
                with import_policy(self.study.trust):
                    self._adapter = _instantiate(self.study.adapter.build)
            except ConfigError as e:
                raise ConfigError(f"adapter ({self.study.config['adapter']['class_path']}): {e}") from None
        return self._adapter

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

    @property
    def data(self):
        if self._data is None:
            self._data = self.study.build_data()
        return self._data

    @property
    def sae_path(self) -> Path:
        names = self.record.stage("train").get("saes") or []
        if not names:
            raise InputError(f"{self.path('train')}: no trained SAE recorded in {RECORD}; run with --from train")
        return self.path("train") / names[0]  # a sweep: the first SAE is encoded

    def run_cohort(self, resume: bool) -> dict:
        folder = self.path("cohort")
        shutil.rmtree(folder, ignore_errors=True)  # a builder writes into an empty folder
        folder.mkdir(parents=True)
        with import_policy(self.study.trust):
            builder = _instantiate(self.study.cohort.build)
        with tqdm(total=1, desc="cohort", unit="cohort", disable=not self.progress) as bar:
            builder.build(folder)
            bar.update()
        return {}

    def run_extract(self, resume: bool) -> dict:
        from .extract import extract

        entry = self.record.stage("extract")
        # the store resumes itself (same configuration); another configuration replaces it
        overwrite = "extract" in self.forced or not resume and bool(entry)
        extract(self.adapter, self.data, self.study.config["layer"], str(self.path("extract")),
                overwrite=overwrite, progress=self.progress, **self.study.section("extract"))
        return {"resumed": resume and not overwrite}

    def run_train(self, resume: bool) -> dict:
        from .sae.train import _folder_name, train

        shutil.rmtree(self.path("train"), ignore_errors=True)  # from step 0, always
        kw = self.study.section("train")
        trainer = {"enable_progress_bar": self.progress, **(kw.pop("trainer") or {})}
        saes = train(str(self.path("extract")), self.study.config["layer"], sae=self.study.section("sae"),
                     output_dir=str(self.path("train")), seed=self.study.seed, trainer=trainer, **kw)
        # the folders bioviz.train wrote, in its order (a sweep's first SAE is the one encoded)
        names = [_folder_name(s.architecture, over) for s, over in zip(saes, kw.get("sweep") or [{}])]
        return {"saes": names, **({"restarted_from_scratch": True, "note": TRAIN_NOTE} if resume else {})}

    def run_encode(self, resume: bool) -> dict:
        from .features import encode

        encode(str(self.sae_path), str(self.path("extract")), self.study.config["layer"],
               out=str(self.path("encode")), overwrite=True, progress=self.progress,
               **self.study.section("encode"))
        return {}

    def run_associate(self, resume: bool) -> dict:
        from .analysis.associate import associate

        associate(str(self.path("encode")), out=str(self.path("associate")), overwrite=True,
                  seed=self.study.seed, progress=self.progress, **self.study.section("associate"))
        return {}

    def run_interpret(self, resume: bool) -> dict:
        from .interpret import interpret

        kw = self.study.section("interpret")
        if kw.pop("model", False):
            kw.update(adapter=self.adapter, data=self.data, sae=str(self.sae_path), layer=self.study.config["layer"])
        interpret(str(self.path("associate")), str(self.path("encode")), out=str(self.path("interpret")),
                  overwrite=True, seed=self.study.seed, progress=self.progress, **kw)
        return {}

    def run_report(self, resume: bool) -> dict:
        from .report import report

        report(str(self.path("associate")), str(self.path("report")), interpretation=str(self.path("interpret")),
               features=str(self.path("encode")), overwrite=True, progress=self.progress,
               **self.study.section("report"))
        return {}

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


def _sweep_leftovers(folder: Path) -> None:
    """Staging folders a killed run left (``.findings.tmp-PID``, ``.report.old-PID``): its
    process is gone, and the study lock keeps other runs out."""
    for p in folder.glob(".*.*-*"):
        m = re.fullmatch(r"\.(.+)\.(tmp|old)-(\d+)", p.name)
        if m and m.group(1) in (*ARTIFACTS.values(), RECORD) and not _alive(int(m.group(3))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def summary(folder: Path, done: dict | None = None, top: int = 5) -> dict:
    """What a finished study says: where the report is, the top candidates and their q, and
    which stages ran (with seconds) or were cached."""
    import pandas as pd

    cand = pd.read_parquet(folder / ARTIFACTS["associate"] / "candidates.parquet")
    cols = [c for c in ("rank", "feature", "label", "test", "effect", "q") if c in cand]
    return {
        "study": str(folder), "report": str(folder / ARTIFACTS["report"] / "report.html"),
        "n_candidates": int(len(cand)),
        "candidates": [{k: None if pd.isna(v) else v.item() if hasattr(v, "item") else v for k, v in row.items()}
                       for row in cand.head(top)[cols].to_dict("records")],
        "stages": done or {},
        "seconds": round(sum(s["seconds"] for s in (done or {}).values()), 1),
    }


def format_summary(s: dict) -> str:
    lines = [f"study {s['study']}: done in {s['seconds']:.1f} s", f"report: {s['report']}",
             f"candidates: {s['n_candidates']}" + (" (the best below)" if s["candidates"] else "")]
    for c in s["candidates"]:
        lines.append(f"  {c.get('rank', '')!s:>3}  {c['feature']:<8} {c.get('label', '')!s:<16} q = {c['q']:.3g}")
    lines.append("stages: " + ", ".join(f"{k} {v['status']}" + (f" {v['seconds']:.1f} s" if v["status"] != "cached"
                                                                 else "") for k, v in s["stages"].items()))
    if s.get("check"):
        lines.append(f"check: {s['check'][1]}")
    return "\n".join(lines)


def run_study(config: str | os.PathLike | dict, *, from_stage: str | None = None, progress: bool = True,
              trust: bool = False) -> dict:
    """Run a study config end to end: each stage cached, resumed or run (see the module).

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


def main(argv: list[str], trust: bool = False) -> int:
    """``bioviz run CONFIG [--from STAGE] [--print-config] [--progress false]``."""
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog="bioviz run", exit_on_error=False, description=RUN_HELP)
    p.add_argument("config", type=str, help="the study config (YAML)")
    p.add_argument("--from", dest="from_stage", type=str | None, default=None,
                   help=f"force this stage and every later one ({', '.join(STAGES)})")
    p.add_argument("--print-config", "--print_config", dest="print_config", action="store_true",
                   help="print the resolved config (every default filled in) and exit")
    p.add_argument("--progress", type=bool, default=True, help="progress bars and one line per stage")
    args = p.parse_args(argv)
    if args.print_config:
        print(print_config(load_config(args.config, trust=trust)), end="")
        return 0
    result = run_study(args.config, from_stage=args.from_stage, progress=args.progress, trust=trust)
    print(format_summary(result))
    return 0


RUN_HELP = ("Run a whole study from one config: cohort → extract → train → encode → associate → interpret → "
            "report, each stage cached (run.json) and resumable; --from STAGE forces it and the later ones.")

__all__ = ["run_study", "load_config", "print_config", "summary", "Study", "ConfigError", "STAGES", "main"]
