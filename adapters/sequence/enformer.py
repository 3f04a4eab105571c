"""Enformer-style models for :mod:`bioviz.adapters.sequence`: enformer-pytorch ``Enformer``
loaded from (and saved to) a local directory with ``config.json`` and safetensors or
``pytorch_model.bin`` weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bioviz.errors import InputError

# which axis runs along the sequence: the stem and conv tower are channels-first ([B, C, L]),
# the transformer, crop and heads [B, bins, d]; first matching pattern wins
ENFORMER_LENGTH_AXIS = {"stem": 2, "stem.*": 2, "conv_tower": 2, "conv_tower.*": 2, "final_pointwise.1": 2,
                        "final_pointwise.1.*": 2, "*": 1}
ENFORMER_BIN_SIZE = 128
def load_enformer(model_dir):
    """An enformer-pytorch ``Enformer`` from ``config.json`` + weights in a local directory.

    The weights are read here (safetensors, or ``torch.load(weights_only=True)``) rather than
    through ``Enformer.from_pretrained``: enformer-pytorch registers every trunk module twice
    (``stem`` and ``_trunk.1`` are one module), which transformers 5 refuses to save or load.
    Either name of a shared tensor is accepted; every parameter must be present.
    """
    try:
        from enformer_pytorch import Enformer
        from enformer_pytorch.config_enformer import EnformerConfig
    except ImportError:
        raise ImportError("Enformer models need the enformer-pytorch package (pip install enformer-pytorch)") from None
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} is not an Enformer directory (no config.json)")
    cfg = json.loads((d / "config.json").read_text())
    model = Enformer(EnformerConfig(**{k: v for k, v in cfg.items() if not k.startswith("_") and k not in (
        "architectures", "model_type", "transformers_version", "torch_dtype", "dtype")}))
    if (d / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(d / "model.safetensors")
    elif (d / "pytorch_model.bin").is_file():
        state = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{d} has no model.safetensors or pytorch_model.bin")
    own = model.state_dict()
    # one tensor, two names: map each parameter to whichever name the checkpoint used
    aliases: dict[int, list[str]] = {}
    for k, v in own.items():
        aliases.setdefault((v.data_ptr(), tuple(v.shape)) if v.numel() else k, []).append(k)
    full, missing = {}, []
    for names in aliases.values():
        src = next((n for n in names if n in state), None)
        if src is None:
            missing.append(names[0])
            continue
        for n in names:
            full[n] = state[src]
    if missing:
        raise InputError(f"{d}: the checkpoint lacks {len(missing)} Enformer weights (first: {missing[:3]}); "
                         "does config.json match the weights?")
    wrong = [k for k, v in full.items() if v.shape != own[k].shape]
    if wrong:
        raise InputError(f"{d}: weights with the wrong shape: {wrong[:3]} (does config.json match the weights?)")
    model.load_state_dict(full)
    return model.eval()


def save_enformer(model, model_dir) -> None:
    """Write an ``Enformer`` as ``config.json`` + ``model.safetensors`` (one name per tensor)."""
    from safetensors.torch import save_file

    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(d / "config.json")
    seen, state = set(), {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape)) if v.numel() else k
        if key not in seen:
            seen.add(key)
            state[k] = v.contiguous()
    save_file(state, d / "model.safetensors")
