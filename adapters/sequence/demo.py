"""The embedded DNA demo model: a small DeepSEA/Basenji-style convolutional network over one-hot
DNA that says which of a few JASPAR motifs a 256-bp window holds. It ships as package data in
this package's ``demo_model`` folder (``config.json`` + ``model.safetensors``, made by
``experiments/train_sequence_demo.py`` from synthetic DNA with planted motif sites).

Layers (input ``[B, 4, L]``, channels first; every conv/pool output is ``[B, channels, L']``):

- ``conv1`` (4 → 64 filters, 19 bp wide, same padding) → ``relu1`` → ``pool1`` (max over 4 bp):
  filters for parts of motifs, one row per 4 bp when hooked at ``pool1``;
- ``conv2`` (64 → 64, 7 bins = 28 bp wide) → ``relu2`` → ``pool2`` (max over 4 bins): whole-motif
  detectors, one row per 16 bp (what the DNA demo study hooks: its SAE features are more
  specific here than at ``pool1``, e.g. SPI1's short GGAA core);
- ``gmp`` (max over the window) → ``fc``: one logit per motif, "is it anywhere in the window".
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from bioviz.errors import InputError

from .adapter import SequenceAdapter
from .tokenizers import OneHotEncoder

#: the shipped model's folder: package data of this package, wherever it is installed
DEMO_DIR = Path(str(resources.files(__package__).joinpath("demo_model")))
#: the name stores record for it
MODEL_NAME = "motifcnn:sequence_demo"
#: every conv/pool layer is channels first: the sequence runs along axis 2
LENGTH_AXIS = {"conv*": 2, "relu*": 2, "pool*": 2}
#: the architecture's settings (config.json's ``architecture``), each a constructor argument
ARCH_KEYS = ("n_motifs", "filters", "width", "channels", "width2", "pool")


class MotifCNN(nn.Module):
    """One-hot DNA ``[B, 4, L]`` → ``[B, n_motifs]`` logits (presence of each motif).

    Same padding keeps positions aligned with the input, so a ``pool1`` row covers exactly
    ``pool`` bp of the window; the window must be a multiple of ``pool ** 2``.
    """

    def __init__(self, n_motifs: int, filters: int = 64, width: int = 19, channels: int = 64,
                 width2: int = 7, pool: int = 4):
        super().__init__()
        if width % 2 == 0 or width2 % 2 == 0:
            raise InputError(f"width={width}, width2={width2}: odd kernel widths keep rows centred")
        self.conv1 = nn.Conv1d(4, filters, width, padding=width // 2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool1d(pool)
        self.conv2 = nn.Conv1d(filters, channels, width2, padding=width2 // 2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool1d(pool)
        self.gmp = nn.AdaptiveMaxPool1d(1)
        self.fc = nn.Linear(channels, n_motifs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool1(self.relu1(self.conv1(x)))
        h = self.pool2(self.relu2(self.conv2(h)))
        return self.fc(self.gmp(h).squeeze(-1))


def read_config(model_dir=None) -> dict:
    """``config.json`` of a demo-model folder (default: the shipped one)."""
    d = Path(model_dir) if model_dir is not None else DEMO_DIR
    path = d / "config.json"
    if not path.is_file():
        raise InputError(f"{path} does not exist: the DNA demo model needs config.json and model.safetensors "
                         "there (python experiments/train_sequence_demo.py writes them)")
    cfg = json.loads(path.read_text())
    missing = [k for k in ("architecture", "motifs", "window") if k not in cfg]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}; expected the config written by "
                         "experiments/train_sequence_demo.py")
    return cfg


def build_model(cfg: dict) -> MotifCNN:
    """The network of a config (random weights)."""
    arch = cfg["architecture"]
    unknown = sorted(set(arch) - set(ARCH_KEYS) - {"class"})
    if unknown or arch.get("class", "MotifCNN") != "MotifCNN":
        raise InputError(f"architecture {arch}: expected class MotifCNN with keys {', '.join(ARCH_KEYS)}")
    return MotifCNN(**{k: arch[k] for k in ARCH_KEYS if k in arch})


def load_demo_model(model_dir=None) -> tuple[MotifCNN, dict]:
    """The shipped (or ``model_dir``'s) trained network, in eval mode, and its config.

    A missing ``model.safetensors``, or one whose tensors do not fit the config's
    architecture, is an :class:`~bioviz.errors.InputError` naming the file."""
    from ..weights import load_weights

    d = Path(model_dir) if model_dir is not None else DEMO_DIR
    cfg = read_config(d)
    weights = d / "model.safetensors"
    if not weights.is_file():
        raise InputError(f"{weights} does not exist: the DNA demo model's weights are missing "
                         "(python experiments/train_sequence_demo.py writes them)")
    model = build_model(cfg)
    load_weights(model, weights, strip_prefixes=())
    return model.eval(), cfg


class DemoSequenceAdapter(SequenceAdapter):
    """A SequenceAdapter that names the demo model's output units (the motifs), so that
    interventions say which motif's logit a feature moves."""

    motifs: list[str] = []

    def output_names(self, n_units):
        return list(self.motifs) if n_units == len(self.motifs) else None


def demo_adapter(model_dir=None, **kwargs):
    """A :class:`~bioviz.adapters.sequence.SequenceAdapter` over the shipped DNA demo model
    (one-hot input, channels first; defaults: the 256-bp window it was trained on, windows
    overlapping by 40 bp so a motif cut by one window is whole in its neighbour). ``kwargs``
    go to ``SequenceAdapter`` (``overlap``, ``subject_id``, ``sequence_column``...)."""
    model, cfg = load_demo_model(model_dir)
    kwargs.setdefault("window", int(cfg["window"]))
    kwargs.setdefault("overlap", 40)
    kwargs.setdefault("length_axis", LENGTH_AXIS)
    pool = int(cfg["architecture"].get("pool", 4))
    if int(kwargs["window"]) % (pool * pool):
        raise InputError(f"window={kwargs['window']}: the demo model needs a multiple of {pool * pool} bp "
                         "(its two poolings) so every layer's rows tile the window")
    adapter = DemoSequenceAdapter(model, OneHotEncoder(), call="onehot", channels_first=True, **kwargs)
    adapter.model_name = MODEL_NAME if model_dir is None else f"motifcnn:{Path(model_dir).name}"
    adapter.motifs = [f"{m['matrix_id']} {m['name']}" for m in cfg["motifs"]]
    return adapter

