"""Content checksums for provenance: model weights and the data that went through a model."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

FILE_BLOCK = 1 << 20  # bytes read at a time by file_checksum


def _update(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        # view as bytes: works for every dtype, bfloat16 included
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, pd.DataFrame):
        _update_frame(h, value)
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _update(h, value[k])
    elif isinstance(value, (list, tuple)):
        for v in value:
            _update(h, v)
    else:
        h.update(repr(value).encode())


def _update_frame(h, frame: pd.DataFrame) -> None:
    # column names, dtypes and every value (vectorised: one 64-bit hash per row)
    h.update(f"frame{len(frame)}{[(str(c), str(t)) for c, t in frame.dtypes.items()]}".encode())
    if len(frame) and frame.shape[1]:
        try:
            rows = pd.util.hash_pandas_object(frame, index=False)
        except TypeError:  # unhashable cells (lists): hash their text
            rows = pd.util.hash_pandas_object(frame.astype(str), index=False)
        h.update(rows.to_numpy().tobytes())


def digest(value, size: int = 16) -> str:
    """blake2b hex digest of tensors, arrays, data frames (columns, dtypes, values) and
    nested dicts/lists of them."""
    h = hashlib.blake2b(digest_size=size)
    _update(h, value)
    return h.hexdigest()


def chain(previous: str, value) -> str:
    """Running checksum: fold one more piece of data into ``previous``."""
    h = hashlib.blake2b(previous.encode(), digest_size=16)
    _update(h, value)
    return h.hexdigest()


def file_checksum(path: str | os.PathLike) -> str:
    """``size:blake2b`` of a file's bytes, read in 1 MiB blocks (never whole); for a folder
    (a DICOM series), of every file under it: relative names, sizes and bytes, in name order."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    size = 0
    for f in files:
        n = f.stat().st_size
        size += n
        name = f.relative_to(path).as_posix() if path.is_dir() else ""
        h.update(f"{name}\0{n}\0".encode())
        with open(f, "rb") as fh:
            while block := fh.read(FILE_BLOCK):
                h.update(block)
    return f"{size}:{h.hexdigest()}"


def model_identity(model: torch.nn.Module, name: str | None = None) -> dict:
    """What identifies a model in a manifest: class, size and a checksum of its weights."""
    state = model.state_dict()
    return {
        "name": name or type(model).__name__,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "weights_blake2b": digest(dict(state)),
    }
