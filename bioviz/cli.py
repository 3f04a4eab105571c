"""The ``bioviz`` command line: one subcommand per stage, configs as YAML with
``class_path``/``init_args`` (jsonargparse, as LightningCLI)."""

from __future__ import annotations

import sys

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from .version import __version__


def _stage_parser(fn, skip=()) -> ArgumentParser:
    p = ArgumentParser(description=(fn.__doc__ or "").split("\n")[0])
    p.add_argument("--config", action=ActionConfigFile, help="YAML config with these arguments")
    p.add_argument("--seed", type=int, default=0, help="torch seed set before objects are built from the config")
    p.add_function_arguments(fn, skip=set(skip), as_group=False)
    return p


def build_parser() -> ArgumentParser:
    from .extract import extract

    parser = ArgumentParser(prog="bioviz", description="Find candidate biomarkers inside foundation models.")
    parser.add_argument("--version", action="version", version=f"bioviz {__version__}")
    sub = parser.add_subcommands(dest="command")
    sub.add_subcommand("extract", _stage_parser(extract, skip={"extra_manifest"}),
                       help="run a model over a cohort and store layers' activations")
    info = ArgumentParser(description="describe an activation store")
    info.add_argument("store_path", type=str)
    sub.add_subcommand("info", info, help="describe an activation store")
    demo = ArgumentParser(description="run the embedded default study (pbmc68k + demo Geneformer) end to end")
    demo.add_argument("--out", type=str, default="bioviz-demo", help="output folder")
    demo.add_argument("--steps", type=int, default=600, help="SAE training steps")
    sub.add_subcommand("demo", demo, help="run the embedded default study end to end")
    fit_help = ArgumentParser(description="train SAEs on a store: `bioviz fit --config STUDY.yaml` (LightningCLI)")
    sub.add_subcommand("fit", fit_help, help="train sparse autoencoders (LightningCLI; see bioviz fit --help)")
    enc = ArgumentParser(description="encode a store with a trained SAE into a FeatureTable (h5ad)")
    enc.add_argument("sae", type=str, help="SAE directory (sae.safetensors + sae.json)")
    enc.add_argument("store", type=str, help="activation store")
    enc.add_argument("--out", type=str, required=True, help="FeatureTable .h5ad to write")
    enc.add_argument("--layer", type=str | None, default=None)
    enc.add_argument("--batch_size", type=int, default=8192)
    sub.add_subcommand("encode", enc, help="encode a store with a trained SAE into a FeatureTable")
    # takes the same config as extract, so a study's YAML answers "what can I hook?"
    layers = _stage_parser(extract, skip={"extra_manifest"})
    layers.add_argument("--max_depth", type=int | None, default=None)
    sub.add_subcommand("layers", layers, help="list the hookable layers of an adapter's model")
    return parser


def _run(cmd: str, args: dict) -> None:
    if cmd == "info":
        from .store.info import describe

        print(describe(args["store_path"]))
    elif cmd == "extract":
        from .extract import extract

        print(extract(**args))
    elif cmd == "demo":
        from .demo import run

        run(args["out"], steps=args["steps"])
    elif cmd == "encode":
        from .features import encode

        print(encode(args["sae"], args["store"], args["layer"], out=args["out"], batch_size=args["batch_size"]))
    elif cmd == "layers":
        from .hooks import layer_names

        print("\n".join(layer_names(args["adapter"].model, args["max_depth"])))


def fit(argv: list[str]) -> None:
    """``bioviz fit --config experiments/<study>.yaml``: LightningCLI over SAEModule and
    ActivationDataModule (trainer, model and data sections, class_path/init_args)."""
    from lightning.pytorch.cli import LightningCLI

    from .sae.data import ActivationDataModule
    from .sae.train import SAEModule

    LightningCLI(SAEModule, ActivationDataModule, args=["fit", *argv], seed_everything_default=0,
                 save_config_kwargs={"overwrite": True},
                 trainer_defaults={"deterministic": True, "log_every_n_steps": 50})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fit"]:  # Lightning's own CLI owns the trainer/model/data sections
        fit(argv[1:])
        return 0
    parser = build_parser()
    cfg = parser.parse_args(argv)
    cmd = cfg.command
    # seed first: models built from a config get reproducible random weights
    torch.manual_seed(cfg[cmd].get("seed") or 0)
    args = parser.instantiate_classes(cfg)[cmd]
    _run(cmd, {k: v for k, v in dict(args).items() if k not in ("config", "seed", "__path__")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
