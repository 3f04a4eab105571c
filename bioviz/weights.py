"""Loading model weights from local files, safely: safetensors, or a state dict read with
``torch.load(weights_only=True)``. Never unpickles arbitrary objects, never downloads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn


def read_state_dict(path, strip_prefixes: Iterable[str] = ("module.",)) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` file or a torch state-dict file.

    A checkpoint that wraps its weights (``{"state_dict": ...}``, ``{"model": ...}``) is
    unwrapped; leading ``strip_prefixes`` (``module.`` from DDP, ``backbone.``) are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors name internals; say what the file is not
            raise ValueError(
                f"{path} is not a torch state dict loadable with weights_only=True ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}); save it with torch.save(model.state_dict()) or safetensors"
            ) from None
        for key in ("state_dict", "model", "model_state_dict", "network"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat mapping of parameter names to tensors")
    for prefix in strip_prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path, strip_prefixes: Iterable[str] = ("module.",),
                 allow_missing: Iterable[str] = ()) -> nn.Module:
    """Load ``path`` into ``model``; a mismatch is a ``ValueError`` that lists missing and
    unexpected keys and shape conflicts. ``allow_missing`` names keys (prefixes) that may
    stay at their initial values (a task head the checkpoint never had)."""
    state = read_state_dict(path, strip_prefixes)
    own = model.state_dict()
    allow = tuple(allow_missing)
    missing = [k for k in own if k not in state and not k.startswith(allow or ("\0",))]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:8]) + (f" (+{len(xs) - 8} more)" if len(xs) > 8 else "")

        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatches: {few(shapes)}" if shapes else ""]
        raise ValueError(f"{path} does not match {type(model).__name__}: "
                         + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=False)
    return model
