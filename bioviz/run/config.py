"""A study config read, checked and resolved into a :class:`Study` (every default filled in),
building nothing: the adapter, the cohort builder and the dataset are built when a stage needs them."""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..cli import _JSONARGPARSE_ADVICE, TRUST_FLAG, ConfigError, _instantiate, import_policy
from ..errors import InputError
from .layout import STAGES
from .schema import _check_keys, _parser


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
    # train.trainer's objects given as class_path/init_args (logger, callbacks, ...): built by the train stage
    trainer_objects: dict[str, _Built | list[_Built]] = field(default_factory=dict)

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


def _class_section(key: str, section: dict, *, base: type | None, need: str | None) -> _Built:
    """``class_path`` + ``init_args`` naming a class (a subclass of ``base`` when given) or a
    function returning one: checked against its signature now, built later."""
    from jsonargparse import ArgumentParser
    from jsonargparse._util import import_object

    path, init = section["class_path"], section.get("init_args") or {}
    nest = re.sub(r"\W", "_", key)  # the parser's own key: one plain name (train.trainer.callbacks[0] is nested)
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
        p.add_class_arguments(target, nested_key=nest, fail_untyped=False)
    elif callable(target):
        p.add_function_arguments(target, nested_key=nest, fail_untyped=False)
        known = {a.dest.split(".", 1)[1] for a in p._actions if a.dest.startswith(f"{nest}.")}
        takes_any = any(q.kind is q.VAR_KEYWORD for q in inspect.signature(target).parameters.values())
        extra = {k: v for k, v in init.items() if k not in known}
        if extra and not takes_any:
            raise ConfigError(f"{key}.init_args.{next(iter(extra))}: {path} takes no such argument")
        init = {k: v for k, v in init.items() if k in known}
    else:
        raise ConfigError(f"{key}.class_path: {path} is neither a class nor a function")
    try:
        parsed = p.parse_object({nest: init})
    except Exception as e:  # jsonargparse's ArgumentError names the argument (as key.argument)
        raise ConfigError(f"{key}.init_args of {path}: {str(e).replace(nest, key)}") from None
    dumped = yaml.safe_load(p.dump(parsed, skip_unset=False)) or {}
    resolved = {"class_path": path, "init_args": {**(dumped.get(nest) or {}), **extra}}

    def build():
        built = p.instantiate(parsed).get(nest)
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

    from ..adapter import Adapter
    from ..sae.config import OptimConfig

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
            trainer_objects = _trainer_objects((raw.get("train") or {}).get("trainer"))
        except ConfigError as e:
            raise ConfigError(_policy_hint(str(e))) from None
        data_parser = ArgumentParser(exit_on_error=False)
        data_parser.add_argument("--data", type=str | torch.utils.data.Dataset)
        data_cfg = data_parser.parse_object({"data": raw["data"]}) if isinstance(raw["data"], dict) else None
    resolved = yaml.safe_load(parser.dump(cfg, skip_unset=False))
    resolved["adapter"] = adapter.resolved
    resolved["cohort"] = cohort.resolved if cohort else None
    for k, built in trainer_objects.items():
        resolved["train"]["trainer"][k] = [b.resolved for b in built] if isinstance(built, list) else built.resolved
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
                 cohort=cohort, adapter=adapter, build_data=build_data, trust=trust,
                 trainer_objects=trainer_objects)


def _trainer_objects(trainer) -> dict[str, _Built | list[_Built]]:
    """The Lightning Trainer arguments given as ``class_path``/``init_args`` (a logger, callbacks,
    a profiler, as in LightningCLI), checked now against their signatures and the allow-list."""
    if trainer is None:
        return {}
    if not isinstance(trainer, dict):
        raise ConfigError(f"train.trainer: expected a mapping of Lightning Trainer arguments, got {trainer!r}")
    out: dict[str, _Built | list[_Built]] = {}
    for k, v in trainer.items():
        if isinstance(v, dict) and "class_path" in v:
            out[k] = _class_section(f"train.trainer.{k}", v, base=None, need=None)
        elif isinstance(v, list) and any(isinstance(x, dict) and "class_path" in x for x in v):
            out[k] = [_class_section(f"train.trainer.{k}[{i}]", x, base=None, need=None) for i, x in enumerate(v)]
    return out


def _policy_hint(message: str) -> str:
    return message.replace(_JSONARGPARSE_ADVICE, f"(allowed with {TRUST_FLAG}, or trust=True in Python)")


def print_config(study: Study) -> str:
    """The resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(study.config, sort_keys=False, default_flow_style=False)
