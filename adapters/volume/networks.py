"""MONAI networks from config, their weights from local files, MONAI bundle directories, and
the layers worth hooking in each. Nothing here downloads, and nothing outside
``monai.networks.nets`` is imported from a config: a config names a class, it does not run code."""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bioviz.errors import InputError

from ..weights import STRIP_PREFIXES, WeightsError, WeightsReport, load_weights  # noqa: F401


def build_network(spec) -> nn.Module:
    """A network from ``spec``: an ``nn.Module`` (used as is), a class name in
    ``monai.networks.nets`` (``"SegResNet"``), or a dict —
    ``{"class_path": "monai.networks.nets.SegResNet", "init_args": {...}}``,
    ``{"_target_": "SegResNet", ...}`` (MONAI bundle style) or ``{"name": ..., "args": {...}}``."""
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        name, args = spec, {}
    elif isinstance(spec, dict):
        spec = dict(spec)
        if "_target_" in spec:
            name, args = spec.pop("_target_"), spec
        elif "class_path" in spec:
            name, args = spec["class_path"], dict(spec.get("init_args") or {})
        elif "name" in spec:
            name, args = spec["name"], dict(spec.get("args") or {})
        else:
            raise InputError(f"network: no 'class_path', '_target_' or 'name' in {spec!r}")
    else:
        raise TypeError(f"network: expected an nn.Module, a class name or a dict, got {type(spec).__name__}")
    cls = _network_class(str(name))
    try:
        model = cls(**args)
    except (TypeError, ValueError, AssertionError) as e:  # bad or inconsistent arguments
        raise InputError(f"network {name}: {e}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"network {name!r} built a {type(model).__name__}, not a torch module")
    return model


def _network_class(name: str):
    import monai.networks.nets as nets

    short = name.removeprefix("monai.networks.nets.")
    cls = getattr(nets, short, None) if "." not in short else None
    if cls is None or not callable(cls):
        raise InputError(f"network {name!r} is not a class in monai.networks.nets; pass an nn.Module "
                         "instance for other models")
    return cls


# -- MONAI bundles ---------------------------------------------------------------------------


@dataclass
class Bundle:
    """What the adapter takes from a bundle directory."""

    path: Path
    network_spec: dict
    weights: Path
    preprocess: list | None  # the bundle's preprocessing transforms, parsed
    inferer: dict  # roi_size / overlap / mode / sw_batch_size when a sliding-window inferer is set


def read_bundle(path) -> Bundle:
    """Read ``configs/inference.json`` (or ``.yaml``) and find ``models/model.safetensors``
    or ``models/model.pt``. ``@name`` references resolve to other config entries and ``$``
    expressions are accepted only when they are plain literals — a bundle config is data."""
    path = Path(path)
    cfg_path = next((path / "configs" / f"inference.{s}" for s in ("json", "yaml", "yml")
                     if (path / "configs" / f"inference.{s}").is_file()), None)
    if cfg_path is None:
        raise FileNotFoundError(f"{path} is not a MONAI bundle: configs/inference.json (or .yaml) not found")
    try:
        if cfg_path.suffix == ".json":
            cfg = json.loads(cfg_path.read_text())
        else:
            import yaml

            cfg = yaml.safe_load(cfg_path.read_text())
    except (json.JSONDecodeError, ValueError) as e:
        raise InputError(f"{cfg_path}: not valid {cfg_path.suffix[1:].upper()} ({e})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: expected a mapping at the top level")
    net = cfg.get("network_def")
    if not isinstance(net, dict) or "_target_" not in net:
        raise InputError(f"{cfg_path}: no 'network_def' with a '_target_' to build the network from")
    weights = next((path / "models" / n for n in ("model.safetensors", "model.pt")
                    if (path / "models" / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{path}: bundle weights not found; expected models/model.safetensors "
                                "or models/model.pt (this adapter never downloads)")
    resolve = _Resolver(cfg, cfg_path)
    network_spec = resolve(net, "network_def")
    pre = cfg.get("preprocessing")
    transforms = None
    if isinstance(pre, dict) and isinstance(pre.get("transforms"), list):
        transforms = resolve(pre["transforms"], "preprocessing.transforms")
    inferer = {}
    inf = cfg.get("inferer")
    if isinstance(inf, dict) and "SlidingWindow" in str(inf.get("_target_", "")):
        inf = resolve(inf, "inferer")
        inferer = {k: inf[k] for k in ("roi_size", "overlap", "mode", "sw_batch_size") if k in inf}
    return Bundle(path, network_spec, weights, transforms, inferer)


class _Resolver:
    def __init__(self, cfg: dict, where: Path):
        self.cfg, self.where = cfg, where

    def __call__(self, value, key: str, depth: int = 0):
        if depth > 20:
            raise InputError(f"{self.where}: references nest too deeply at {key!r}")
        if isinstance(value, dict):
            return {k: self(v, f"{key}.{k}", depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, str) and value.startswith("@"):
            ref = value[1:]
            node = self.cfg
            for part in ref.replace("::", "#").split("#"):
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    raise InputError(f"{self.where}: {key} refers to {value!r}, which the config does not define")
            return self(node, ref, depth + 1)
        if isinstance(value, str) and value.startswith("$"):
            try:
                return ast.literal_eval(value[1:])
            except (ValueError, SyntaxError):
                raise InputError(f"{self.where}: {key} is the expression {value!r}; only literal values "
                                 "are read from bundle configs (replace it with its value)") from None
        return value


# -- hook points -----------------------------------------------------------------------------


def hook_points(model: nn.Module) -> list[str]:
    """The layers worth hooking, coarse-to-fine encoder stages first; [] when unknown."""
    names = {n for n, _ in model.named_modules()}
    kind = type(model).__name__
    if kind in ("SwinUNETR",):
        cand = ["swinViT.layers1.0", "swinViT.layers2.0", "swinViT.layers3.0", "swinViT.layers4.0",
                "encoder10", "swinViT.patch_embed"]
    elif kind.startswith("SegResNet"):
        cand = [f"down_layers.{i}" for i in range(8)] + [f"up_layers.{i}" for i in range(8)]
    elif kind in ("ViT", "ViTAutoEnc"):
        cand = [f"blocks.{i}" for i in range(64)] + ["norm"]
    elif kind == "ResNet" or kind.startswith("ResNet"):
        cand = ["layer1", "layer2", "layer3", "layer4"]
    elif kind.startswith("DenseNet"):
        cand = [f"features.denseblock{i}" for i in range(1, 5)] + [f"features.transition{i}" for i in range(1, 4)]
    elif kind == "UNet":
        cand, prefix = [], "model"
        while f"{prefix}.1" in names:  # the encoder path: model.0, model.1.submodule.0, ...
            cand.append(f"{prefix}.0")
            prefix = f"{prefix}.1.submodule"
    elif kind in ("Classifier", "Regressor", "Discriminator", "Critic"):
        cand = [f"net.layer_{i}" for i in range(16)]
    else:
        cand = []
    return [c for c in cand if c in names]


def default_divisor(model: nn.Module) -> int:
    """What every input side must divide by for this network's strides to line up."""
    kind = type(model).__name__
    if kind == "SwinUNETR":
        return 32
    if kind.startswith("SegResNet"):
        return 2 ** (len(getattr(model, "blocks_down", (1, 2, 2, 4))) - 1)
    if kind == "UNet":
        return int(math.prod(getattr(model, "strides", (2,))))
    if kind in ("ViT", "ViTAutoEnc"):
        return int(patch_size(model) or 16)
    if kind == "ResNet":  # conv1 stride, the max-pool unless disabled, then layer2..layer4
        conv1 = getattr(model, "conv1", None)
        s = int(conv1.stride[0]) if isinstance(conv1, nn.Conv3d) else 2
        return s * (1 if getattr(model, "no_max_pool", False) else 2) * 8
    if kind.startswith("DenseNet"):
        return 32
    if kind in ("Classifier", "Regressor", "Discriminator", "Critic"):
        return int(math.prod(getattr(model, "strides", (2,))))
    strides = 1
    for m in model.modules():  # strided convolutions and pools compound
        s = getattr(m, "stride", None)
        if isinstance(m, (nn.Conv3d, nn.MaxPool3d, nn.AvgPool3d)) and s is not None:
            strides *= max(s) if isinstance(s, tuple) else int(s)
    return max(1, min(strides, 32))


def patch_size(model: nn.Module) -> int | None:
    """The token size of a ViT-style patch embedding (a conv whose kernel equals its stride)."""
    for name, m in model.named_modules():
        if "patch" in name and isinstance(m, nn.Conv3d) and m.kernel_size == m.stride:
            return int(m.stride[0])
    return None


def tokens_to_grid(act: torch.Tensor, input_shape, model: nn.Module, layer: str) -> torch.Tensor:
    """[B, T, C] tokens of a ViT layer → [B, C, *grid]; a class token (T = grid + 1) is dropped."""
    p = patch_size(model)
    if p is None:
        raise InputError(f"layer {layer!r} gives tokens {tuple(act.shape)} but the network has no "
                         "patch embedding to lay them on a grid; hook a spatial layer")
    grid = [s // p for s in input_shape]
    n = math.prod(grid)
    if act.shape[1] == n + 1:
        act = act[:, 1:]
    elif act.shape[1] != n:
        raise InputError(f"layer {layer!r} gives {act.shape[1]} tokens; a {tuple(input_shape)} input "
                         f"with {p}-voxel patches has {n}")
    return act.transpose(1, 2).reshape(act.shape[0], act.shape[2], *grid)
