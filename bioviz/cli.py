"""The ``bioviz`` command line: one subcommand per stage, each built by jsonargparse from the
signature and numpydoc docstring of the function it runs (so the options follow the Python
API); configs are YAML with ``class_path``/``init_args``, as in LightningCLI.

=========  ==============================================================================
extract    :func:`bioviz.extract.extract`
layers     :func:`layers` (reads only the ``adapter`` section of an extract config)
train      LightningCLI over :class:`~bioviz.sae.train.SAEModule` and
           :class:`~bioviz.sae.data.ActivationDataModule` (Python: :func:`bioviz.train`)
encode     :func:`bioviz.features.encode`
associate  :func:`bioviz.analysis.associate` (writes a Findings directory)
interpret  :func:`bioviz.interpret.interpret` (writes ``interpretation/`` beside the Findings)
report     :func:`bioviz.report.report` (writes ``report/``: HTML, PDF, atlas, data/)
info       :func:`bioviz.store.info.describe`
demo       :func:`bioviz.demo.run`
run        :func:`bioviz.run.run_study` (a whole study from one config, cached and resumable)
=========  ==============================================================================

A config is data, not code: every import path it gives (a ``class_path``, a callable, a type)
must lie under :data:`ALLOWED_IMPORTS` unless ``--trust_config`` is given, which lets it name
anything importable (the config is then code). A user error (:class:`~bioviz.errors.BiovizError`,
a missing file, a config jsonargparse refuses or cannot build) is printed as its message alone
with a non-zero exit status; ``--debug`` raises it with its traceback.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
from argparse import ArgumentError
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, get_loader, set_parsing_settings

from .adapter import Adapter
from .errors import BiovizError, InputError
from .version import __version__

#: Where the import paths a config gives (``class_path``, callables, types) may point unless
#: ``--trust_config`` is given: a prefix allows the module or object and everything under it.
#: ``transformers`` adds its model classes (``transformers.models`` and the top-level names
#: of the classes defined there, such as ``transformers.BertModel``).
ALLOWED_IMPORTS = (
    "bioviz",                                  # bioviz and its adapters (bioviz.adapters)
    "torch.nn",
    "monai.networks", "monai.transforms",
    "transformers.models",
    "lightning.pytorch.callbacks", "lightning.pytorch.loggers",
)
#: the options ``main`` reads wherever they are in the arguments
TRUST_FLAG, DEBUG_FLAG = "--trust_config", "--debug"
_POLICY_KEYS = ("import_path_verdicts", "import_paths_enforced")
_ALLOWED_WORDS = ", ".join(e if e != "transformers.models" else "transformers model classes"
                           for e in ALLOWED_IMPORTS)
_TRUST_HINT = (f"a config names classes and functions from {_ALLOWED_WORDS} only; {TRUST_FLAG} "
               "allows any import path, and the config is then code: use it for configs you trust")
# what jsonargparse's refusal advises, which a user of the command line cannot do
_JSONARGPARSE_ADVICE = "Add the import path to import_path_allowlist in set_parsing_settings to allow it."
# errors a user can act on from their message: a missing or unwritable file they named
_FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError)


class ConfigError(InputError):
    """A config whose objects cannot be built (the message is the reason jsonargparse or the
    class gave)."""


def allowed_imports() -> list[str]:
    """The allow-list entries: :data:`ALLOWED_IMPORTS` plus the top-level names of the
    transformers model classes, when transformers is installed."""
    entries = list(ALLOWED_IMPORTS)
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        # the lazy module's map from top-level name to submodule (no model is imported)
        where = getattr(transformers, "_class_to_module", None) or {}
        entries += sorted(f"transformers.{name}" for name, module in where.items()
                          if module.startswith("models.") and name[:1].isupper() and name.isidentifier())
    return entries


@contextmanager
def import_policy(trust: bool = False) -> Iterator[None]:
    """While parsing and building a config: every import path a value gives must lie under
    :func:`allowed_imports` (``trust=True``: anything importable). jsonargparse's own
    import-path policy enforces it; the global setting is restored on exit."""
    from jsonargparse import _common

    settings = _common.parsing_settings
    if not all(key in settings for key in _POLICY_KEYS):  # jsonargparse < 4.53
        raise BiovizError("this jsonargparse cannot limit a config's import paths; upgrade it "
                          f"(pip install 'jsonargparse>=4.53') or pass {TRUST_FLAG}")
    saved = {key: settings[key] for key in _POLICY_KEYS}
    try:
        if trust:
            settings.update(import_path_verdicts={}, import_paths_enforced=True)
        else:
            set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=allowed_imports())
        yield
    finally:
        settings.update(saved)


def _instantiate(build: Callable):
    """``build()``: a config's objects; what their classes refuse is a :class:`ConfigError`
    (jsonargparse wraps a class's error in a ValueError naming the config key)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return build()
    except BiovizError:
        raise
    except (ValueError, TypeError, ImportError, MisconfigurationException, *_FILE_ERRORS) as err:
        raise ConfigError(str(err)) from err


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
    from .analysis.associate import associate
    from .demo import run
    from .extract import extract
    from .features import encode
    from .interpret import interpret
    from .report import report
    from .store.info import describe

    return {
        "extract": _Stage(extract, seed=True, skip=frozenset({"extra_manifest"})),
        "layers": _Stage(layers, config=_AdapterSection, seed=True),
        "encode": _Stage(encode, positional=True),
        "associate": _Stage(associate),
        "interpret": _Stage(interpret),
        "report": _Stage(report),
        "info": _Stage(describe, config=None, positional=True),
        "demo": _Stage(run, show=False),
    }


def _stage_parser(stage: _Stage) -> ArgumentParser:
    p = ArgumentParser(description=stage.summary, exit_on_error=False)
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
    parser = ArgumentParser(prog="bioviz", description="Find candidate biomarkers inside foundation models.",
                            exit_on_error=False)
    parser.add_argument("--version", action="version", version=f"bioviz {__version__}")
    # read by main wherever they stand (also after the subcommand); listed here for --help
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="on an error, raise it with its traceback instead of printing its message")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="let the config name any class or function (the config is then code); "
                             f"by default only {_ALLOWED_WORDS}")
    sub = parser.add_subcommands(dest="command")
    for name, stage in _stages().items():
        sub.add_subcommand(name, _stage_parser(stage), help=stage.summary)
    # listed for --help only: main hands `bioviz train ...` to LightningCLI (see train)
    train_help = f"{_TRAIN_HELP} Options: bioviz train --help"
    sub.add_subcommand("train", ArgumentParser(description=train_help, exit_on_error=False), help=train_help)
    # listed for --help only: main hands `bioviz run ...` to bioviz.run.main
    from .run import RUN_HELP

    run_help = f"{RUN_HELP} Options: bioviz run --help"
    sub.add_subcommand("run", ArgumentParser(description=run_help, exit_on_error=False), help=run_help)
    return parser


def train(argv: list[str], trust: bool = False) -> None:
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

        def instantiate_classes(self) -> None:
            _instantiate(super().instantiate_classes)

        def instantiate_trainer(self, **kwargs) -> Trainer:
            trainer = self.config_init.get("trainer") or {}
            for key, value in trainer_defaults(trainer).items():
                kwargs.setdefault(key, value)
            return super().instantiate_trainer(**kwargs)

    with quiet_lightning():
        with import_policy(trust):  # parsing and building: the config's import paths
            cli = TrainCLI(SAEModule, ActivationDataModule, args=argv, run=False,
                           seed_everything_default=0, save_config_kwargs={"overwrite": True},
                           auto_configure_optimizers=False,  # SAEModule makes its own, per SAE
                           parser_kwargs={"prog": "bioviz train", "description": _TRAIN_HELP,
                                          "exit_on_error": False},
                           trainer_defaults={"deterministic": True, "log_every_n_steps": 50,
                                             "enable_model_summary": False})
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path,
                        weights_only=cli.config.weights_only)


def main(argv: list[str] | None = None) -> int:
    """Run ``bioviz ARGS``: 0 when done; a user error prints ``error: <message>`` and gives 1
    (2 for arguments or a config jsonargparse refuses); ``--debug`` raises it instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # read wherever they stand: the config is parsed as soon as --config is met
    debug, trust = DEBUG_FLAG in argv, TRUST_FLAG in argv
    argv = [a for a in argv if a not in (DEBUG_FLAG, TRUST_FLAG)]
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        return _run(argv, trust)
    except ArgumentError as err:  # jsonargparse's message: the option or config key, the reason
        if debug:
            raise
        message = str(err)
        _print_error(message.replace(_JSONARGPARSE_ADVICE, f"(allowed with {TRUST_FLAG})"))
        if _JSONARGPARSE_ADVICE in message:
            print(f"hint: {_TRUST_HINT}", file=sys.stderr)
        print(f"tip: the options: bioviz {command + ' ' if command else ''}--help", file=sys.stderr)
        raise SystemExit(2) from None
    except (BiovizError, *_FILE_ERRORS) as err:
        if debug:
            raise
        _print_error(str(err))
        return 1


def _print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _run(argv: list[str], trust: bool) -> int:
    # LightningCLI owns train's trainer/model/data sections
    if argv[:1] == ["train"]:
        train(argv[1:], trust=trust)
        return 0
    if argv[:1] == ["run"]:  # a whole study: bioviz.run parses its own arguments and config
        from .run import main as run_study_main

        return run_study_main(argv[1:], trust=trust)
    parser = build_parser()
    with import_policy(trust):  # parsing and building: the config's import paths
        cfg = parser.parse_args(argv)
        cmd = cfg.command
        stage = _stages()[cmd]
        # seed first: models built from a config get reproducible random weights
        torch.manual_seed(cfg[cmd].get("seed") or 0)
        init = _instantiate(lambda: parser.instantiate(cfg))[cmd]
    params = inspect.signature(stage.fn).parameters
    result = stage.fn(**{k: init[k] for k in params if k in init})
    if stage.show:
        print("\n".join(result) if isinstance(result, list) else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
