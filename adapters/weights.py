"""Loading model weights from local files, safely: safetensors, or a state dict read with
``torch.load(weights_only=True)``. Never unpickles arbitrary objects, never downloads."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bioviz.errors import InputError

# prefixes that wrappers put on every key: DDP, backbone extractors, Lightning modules
STRIP_PREFIXES = ("module.", "backbone.", "model.", "net.")
HARMLESS_MISSING = ("num_batches_tracked",)  # BatchNorm counters older checkpoints lack


def read_state_dict(path, strip_prefixes: Iterable[str] = ("module.",)) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` file or a torch state-dict file.

    A checkpoint that wraps its weights (``{"state_dict": ...}``, ``{"model": ...}``) is
    unwrapped; leading ``strip_prefixes`` (``module.`` from DDP, ``backbone.``) are removed.
    A damaged, truncated or unreadable file is a :class:`WeightsError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:  # truncated, damaged, or not safetensors
            raise WeightsError(f"{path} is not a readable safetensors file ({e}); the file is damaged "
                               "or incomplete: download or copy it again") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors name internals; say what the file is not
            raise WeightsError(
                f"{path} is not a torch state dict loadable with weights_only=True ({type(e).__name__}: "
                f"{(str(e).splitlines() or [''])[0][:200]}): a damaged or incomplete file, or one that "
                "pickles objects; save it with torch.save(model.state_dict()) or safetensors"
            ) from None
        for key in ("state_dict", "model", "model_state_dict", "network"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a flat mapping of parameter names to tensors")
    for prefix in strip_prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


class WeightsError(InputError):
    """A weights file that cannot be read, or that does not fit the network (names the file
    and the keys)."""


@dataclass
class WeightsReport:
    """What loading a checkpoint did: loaded keys and every key that did not line up."""

    path: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    tolerated: list[str] = field(default_factory=list)  # missing, but harmless or allowed

    def problems(self) -> str:
        parts = []
        for what in ("missing", "unexpected", "mismatched", "tolerated"):
            keys = getattr(self, what)
            if keys:
                parts.append(f"{what} ({len(keys)}): {', '.join(keys[:8])}" + (" ..." if len(keys) > 8 else ""))
        return "; ".join(parts)

    def __str__(self) -> str:
        return f"{self.path}: loaded {self.loaded} tensors" + (f"; {self.problems()}" if self.problems() else "")


def load_weights(model: nn.Module, path, *, strip_prefixes=STRIP_PREFIXES, allow_missing=(),
                 allow_unexpected=()) -> WeightsReport:
    """Load a ``.safetensors`` or state-dict file (``torch.load(weights_only=True)``) into
    ``model``. A prefix that every key carries (``module.``, ``backbone.``) is stripped.
    Missing, unexpected or wrongly shaped keys raise :class:`WeightsError`, except keys under
    ``allow_missing`` / ``allow_unexpected`` prefixes (a head the checkpoint never had, a
    projection head it has and the network does not) and BatchNorm counters."""
    state = read_state_dict(path, ())
    state = _strip(state, tuple(strip_prefixes), model.state_dict())
    own = model.state_dict()
    report = WeightsReport(str(path), 0)
    for k in own:
        if k not in state:
            ok = k.endswith(HARMLESS_MISSING) or k.startswith(tuple(allow_missing) or ("\0",))
            (report.tolerated if ok else report.missing).append(k)
    for k, v in state.items():
        if k not in own:
            if not k.startswith(tuple(allow_unexpected) or ("\0",)):
                report.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append(f"{k} file {tuple(v.shape)} vs network {tuple(own[k].shape)}")
    if report.missing or report.unexpected or report.mismatched:
        raise WeightsError(f"{path} does not match {type(model).__name__}: {report.problems()}")
    usable = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report


def _strip(state: dict, prefixes: tuple, own: dict) -> dict:
    # strip repeatedly (``module.backbone.``), a prefix every key shares, and only when
    # stripping makes more keys line up (UNet's own names start with ``model.``)
    changed = True
    while changed and state:
        changed = False
        for p in prefixes:
            if all(k.startswith(p) for k in state):
                stripped = {k[len(p):]: v for k, v in state.items()}
                if len(own.keys() & stripped.keys()) > len(own.keys() & state.keys()):
                    state, changed = stripped, True
    return state
