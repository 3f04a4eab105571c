"""The adapter protocol: what bioviz needs from a modality.

An adapter turns a cohort into model-ready batches, runs the model, and turns what a
hooked layer computed into activation *rows*, each with a row of metadata (``obs``).
Every row's obs carries at least ``subject_id`` and ``sample_id``; modality adapters add
their own fields (gene token, base-pair window, voxel grid index and world coordinates).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

REQUIRED_OBS = ("subject_id", "sample_id")


@dataclass
class Batch:
    """One batch: ``inputs`` go to the model, ``meta`` has one row per item, ``extra`` holds
    tensors that ``rows`` needs (an attention mask, the token ids)."""

    inputs: Any
    meta: pd.DataFrame
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.meta)


class Adapter(ABC):
    """Base class of every adapter. Subclasses implement the abstract methods."""

    #: short name recorded in manifests
    name: str = "adapter"

    @property
    @abstractmethod
    def model(self) -> nn.Module:
        """The torch model whose layers are hooked."""

    @abstractmethod
    def dataset(self, data) -> torch.utils.data.Dataset:
        """A map-style dataset over ``data`` (items in a fixed order)."""

    @abstractmethod
    def collate(self, items: list) -> Batch:
        """Items to one :class:`Batch`."""

    def prepare(self, layers: list[str], inputs: bool = False, select=None) -> None:
        """Told which layers extraction captures, before the first batch: adapters that run
        the model several times per batch (sliding windows) need to know. Default: nothing."""
        return None

    def forward(self, batch: Batch):
        """Run the model on a batch (hooks record what the layers compute)."""
        inputs = batch.inputs
        if isinstance(inputs, dict):
            return self.model(**inputs)
        return self.model(inputs)

    @abstractmethod
    def rows(self, layer: str, activation: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, pd.DataFrame]:
        """A layer's activation for a batch as ``(rows [n, d], obs with n rows)``."""

    def config(self) -> dict:
        """JSON-safe settings that change what is extracted (recorded, and compared on resume)."""
        return {"adapter": type(self).__name__}

    def identity(self) -> dict:
        """Model identity for the manifest (class, size, weights checksum)."""
        from bioviz.checksum import model_identity

        return model_identity(self.model, getattr(self, "model_name", None))

    def layer_names(self) -> list[str]:
        """Hookable module names; modality adapters list the useful ones first."""
        return [n for n, _ in self.model.named_modules() if n]

    # -- what fidelity needs (bioviz.sae.fidelity) ------------------------------------------

    def logits(self, output) -> torch.Tensor:
        """The model's prediction tensor, class scores on the last axis (default: the
        output's ``logits``, else the output rule of bioviz.hooks)."""
        from bioviz.hooks import select_tensor

        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, dict):
            logits = output.get("logits")
        return logits if isinstance(logits, torch.Tensor) else select_tensor(output)

    def positions(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        """Which positions of ``logits`` [B, T, C] count (padding does not); None: all."""
        mask = batch.extra.get("mask")
        return mask.bool() if mask is not None and logits.ndim == 3 else None

    def task_loss(self, batch: Batch, output) -> torch.Tensor | None:
        """The model's own training loss on this batch, if the adapter can form it (masked-LM
        loss for MLM models); None when it cannot. Used for 'loss recovered'. Default: the
        output's ``loss`` (Hugging Face models given ``labels``)."""
        loss = getattr(output, "loss", None)
        return loss if isinstance(loss, torch.Tensor) else None

    def data_fingerprint(self, batch: Batch):
        """What identifies a batch's data for the store's data checksum (default: its inputs)."""
        return batch.inputs


def to_device(batch: Batch, device: torch.device) -> Batch:
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        return x

    return Batch(move(batch.inputs), batch.meta, move(batch.extra))


# -- row layouts shared by adapters ---------------------------------------------------------


def item_rows(act: torch.Tensor, meta: pd.DataFrame) -> tuple[torch.Tensor, pd.DataFrame]:
    """[B, d] → one row per item."""
    return act, meta.reset_index(drop=True)


def token_rows(
    act: torch.Tensor, meta: pd.DataFrame, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, pd.DataFrame]:
    """[B, T, d] → one row per (item, token) kept by ``mask`` [B, T]; obs gains ``token_index``."""
    b, t, d = act.shape
    keep = torch.ones(b, t, dtype=torch.bool, device=act.device) if mask is None else mask.bool()
    item, pos = keep.nonzero(as_tuple=True)
    rows = act[item, pos]
    item_np = item.cpu().numpy()
    obs = meta.iloc[item_np].reset_index(drop=True)
    obs["token_index"] = pos.cpu().numpy().astype(np.int32)
    return rows, obs


def pooled_rows(
    act: torch.Tensor, meta: pd.DataFrame, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, pd.DataFrame]:
    """[B, T, d] (masked mean over T) or [B, C, *spatial] (mean over space) → one row per item."""
    if act.ndim == 3:
        if mask is None:
            return act.mean(1), meta.reset_index(drop=True)
        m = mask.to(act.dtype).unsqueeze(-1)
        return (act * m).sum(1) / m.sum(1).clamp_min(1), meta.reset_index(drop=True)
    return act.flatten(2).mean(-1), meta.reset_index(drop=True)


def spatial_rows(act: torch.Tensor, meta: pd.DataFrame) -> tuple[torch.Tensor, pd.DataFrame]:
    """[B, C, *spatial] (channels first) → one row per spatial location; obs gains
    ``grid_0..grid_{n-1}`` (the location's index on the layer's own grid)."""
    b, c = act.shape[:2]
    spatial = act.shape[2:]
    rows = act.flatten(2).transpose(1, 2).reshape(-1, c)
    n_loc = int(np.prod(spatial))
    obs = meta.iloc[np.repeat(np.arange(b), n_loc)].reset_index(drop=True)
    grid = np.indices(spatial).reshape(len(spatial), -1)
    for i in range(len(spatial)):
        obs[f"grid_{i}"] = np.tile(grid[i], b).astype(np.int32)
    return rows, obs
