"""The ``bioviz`` command line: one subcommand per stage, each built by jsonargparse from the
signature and numpydoc docstring of the function it runs (so the options follow the Python
API); configs are YAML with ``class_path``/``init_args``, as in LightningCLI.

=========  ==============================================================================
extract    :func:`bioviz.extract.extract`
layers     :func:`layers` (reads only the ``adapter`` section of an extract config)
train      LightningCLI over :class:`~bioviz.sae.train.SAEModule` and
           :class:`~bioviz.sae.data.ActivationDataModule` (Python: :func:`bioviz.train`)
encode     :func:`bioviz.features.encode`
info       :func:`bioviz.store.info.describe`
demo       :func:`bioviz.demo.run`
=========  ==============================================================================
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, get_loader

from .adapter import Adapter
from .version import __version__


def layers(adapter: Adapter, max_depth: int | None = None) -> list[str]:
    """List the hookable layers of an adapter's model, the useful ones first.

    Parameters
    ----------
    adapter
        The modality adapter (it holds the model). ``--config`` takes a study's extract
        config, of which only ``adapter`` (and ``seed``) are read: the data is never built.
    max_depth
        Only module names with at most this many dotted parts.

    Returns
    -------
    list of str
        :meth:`Adapter.layer_names <bioviz.adapter.Adapter.layer_names>`, in its order.
    """
    return [n for n in adapter.layer_names() if max_depth is None or n.count(".") < max_depth]


#: the keys of an extract config that ``bioviz layers --config`` reads
_LAYERS_KEYS = ("adapter", "seed", "max_depth")


class _AdapterSection(ActionConfigFile):
    """``--config`` of ``bioviz layers``: an extract config (a path or a YAML string), of
    which only the keys in ``_LAYERS_KEYS`` are parsed, so its ``data`` is never built."""

    HELP = "a study's extract config (YAML): only its adapter and seed are read"

    def __call__(self, parser, cfg, values, option_string=None):
        text = Path(values).read_text() if os.path.isfile(values) else values
        loaded = get_loader("yaml")(text) or {}
        if not isinstance(loaded, dict):
            raise TypeError(f"--config {values}: expected a mapping of settings")
        section = {k: v for k, v in loaded.items() if k in _LAYERS_KEYS}
        # JSON is YAML; values keep the types jsonargparse's own loader gave them
        self.apply_config(parser, cfg, self.dest, json.dumps(section, default=str))


@dataclass(frozen=True)
class _Stage:
    """A subcommand: the function whose signature is its parser, and how to run it."""

    fn: Callable
    config: type[ActionConfigFile] | None = ActionConfigFile  # the --config action, if any
    seed: bool = False            # --seed: objects are built from the config
    positional: bool = False      # required parameters are positional arguments
    skip: frozenset[str] = frozenset()  # Python-only parameters
    show: bool = True             # print what the function returns

    @property
    def summary(self) -> str:
        return " ".join((inspect.getdoc(self.fn) or "").split("\n\n")[0].split())


def _stages() -> dict[str, _Stage]:
    from .demo import run
    from .extract import extract
    from .features import encode
    from .store.info import describe

    return {
        "extract": _Stage(extract, seed=True, skip=frozenset({"extra_manifest"})),
        "layers": _Stage(layers, config=_AdapterSection, seed=True),
        "encode": _Stage(encode, positional=True),
        "info": _Stage(describe, config=None, positional=True),
        "demo": _Stage(run, show=False),
    }


def _stage_parser(stage: _Stage) -> ArgumentParser:
    p = ArgumentParser(description=stage.summary)
    if stage.config is not None:
        p.add_argument("--config", action=stage.config,
                       help=getattr(stage.config, "HELP", "YAML config with these arguments"))
    if stage.seed:
        p.add_argument("--seed", type=int, default=0,
                       help="torch seed, set before objects are built from the config")
    p.add_function_arguments(stage.fn, as_group=False, as_positional=stage.positional,
                             skip=set(stage.skip))
    return p


_TRAIN_HELP = ("Train sparse autoencoders on a store: LightningCLI over SAEModule and "
               "ActivationDataModule (trainer / model / data sections), then Trainer.fit.")


def build_parser() -> ArgumentParser:
    """The ``bioviz`` parser (``train`` is listed here; LightningCLI parses its arguments)."""
    parser = ArgumentParser(prog="bioviz", description="Find candidate biomarkers inside foundation models.")
    parser.add_argument("--version", action="version", version=f"bioviz {__version__}")
    sub = parser.add_subcommands(dest="command")
    for name, stage in _stages().items():
        sub.add_subcommand(name, _stage_parser(stage), help=stage.summary)
    # listed for --help only: main hands `bioviz train ...` to LightningCLI (see train)
    train_help = f"{_TRAIN_HELP} Options: bioviz train --help"
    sub.add_subcommand("train", ArgumentParser(description=train_help), help=train_help)
    return parser


def train(argv: list[str]) -> None:
    """``bioviz train --config experiments/<study>.yaml``: LightningCLI over SAEModule and
    ActivationDataModule (trainer / model / data sections, class_path/init_args), then
    ``Trainer.fit`` (``--ckpt_path`` resumes a killed run). In Python: :func:`bioviz.train`,
    with the same logger, progress bar and quiet Lightning."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningCLI

    from .sae.data import ActivationDataModule
    from .sae.train import SAEModule
    from .trainer import quiet_lightning, trainer_defaults

    class TrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # what Trainer.fit takes besides the model and the data: ckpt_path, weights_only
            parser.add_method_arguments(Trainer, "fit", as_group=False, skip={
                "model", "train_dataloaders", "val_dataloaders", "datamodule"})

        def parse_arguments(self, parser, args) -> None:
            self.config = parser.parse_args(args)  # bioviz's own argv, not sys.argv

        def before_instantiate_classes(self) -> None:
            # LightningCLI calls jsonargparse's deprecated instantiate_classes; use instantiate
            self.parser.instantiate_classes = self.parser.instantiate

        def instantiate_trainer(self, **kwargs) -> Trainer:
            trainer = self.config_init.get("trainer") or {}
            for key, value in trainer_defaults(trainer).items():
                kwargs.setdefault(key, value)
            return super().instantiate_trainer(**kwargs)

    with quiet_lightning():
        cli = TrainCLI(SAEModule, ActivationDataModule, args=argv, run=False,
                       seed_everything_default=0, save_config_kwargs={"overwrite": True},
                       auto_configure_optimizers=False,  # SAEModule makes its own, per SAE
                       parser_kwargs={"prog": "bioviz train", "description": _TRAIN_HELP},
                       trainer_defaults={"deterministic": True, "log_every_n_steps": 50,
                                         "enable_model_summary": False})
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path,
                        weights_only=cli.config.weights_only)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # LightningCLI owns train's trainer/model/data sections
    if argv[:1] == ["train"]:
        train(argv[1:])
        return 0
    parser = build_parser()
    cfg = parser.parse_args(argv)
    cmd = cfg.command
    stage = _stages()[cmd]
    # seed first: models built from a config get reproducible random weights
    torch.manual_seed(cfg[cmd].get("seed") or 0)
    init = parser.instantiate(cfg)[cmd]
    params = inspect.signature(stage.fn).parameters
    result = stage.fn(**{k: init[k] for k in params if k in init})
    if stage.show:
        print("\n".join(result) if isinstance(result, list) else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
