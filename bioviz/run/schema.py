"""What a study config may say: its keys, the required ones, and one section per stage made of
its verb's arguments (less those bioviz run sets itself), checked by name and parsed by type."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from ..cli import ConfigError

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


def _verbs() -> dict[str, Callable]:
    from ..analysis.associate import associate
    from ..extract import extract
    from ..features import encode
    from ..interpret import interpret
    from ..report import report
    from ..sae.train import train

    return {"extract": extract, "train": train, "encode": encode, "associate": associate,
            "interpret": interpret, "report": report}


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
    and defaults); ``adapter`` and ``cohort`` are parsed on their own (:func:`.config._class_section`)."""
    from jsonargparse import ArgumentParser

    from ..sae import SAEConfig

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
