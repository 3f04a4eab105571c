"""Content checksums for provenance: model weights and the data that went through a model."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _update(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        # view as bytes: works for every dtype, bfloat16 included
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _update(h, value[k])
    elif isinstance(value, (list, tuple)):
        for v in value:
            _update(h, v)
    else:
        h.update(repr(value).encode())


def digest(value, size: int = 16) -> str:
    """blake2b hex digest of tensors, arrays and nested dicts/lists of them."""
    h = hashlib.blake2b(digest_size=size)
    _update(h, value)
    return h.hexdigest()


def chain(previous: str, value) -> str:
    """Running checksum: fold one more piece of data into ``previous``."""
    h = hashlib.blake2b(previous.encode(), digest_size=16)
    _update(h, value)
    return h.hexdigest()


def model_identity(model: torch.nn.Module, name: str | None = None) -> dict:
    """What identifies a model in a manifest: class, size and a checksum of its weights."""
    state = model.state_dict()
    return {
        "name": name or type(model).__name__,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "weights_blake2b": digest(dict(state)),
    }
