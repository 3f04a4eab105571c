"""The adapter protocol: what bioviz needs from a modality. The core owns it; concrete
adapters (``bioviz.adapters``) implement it and import the core, never the reverse.

An adapter turns a cohort into model-ready batches, runs the model (:meth:`Adapter.run`,
optionally with a replacement spliced into a layer), and turns what a layer computed into
activation *rows*, each with a row of metadata (``obs``). Every row's obs carries at least
``subject_id`` and ``sample_id``; modality adapters add their own fields (gene token,
base-pair window, voxel grid index and world coordinates).
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checksum import model_identity
from .hooks import hooked, select_tensor

REQUIRED_OBS = ("subject_id", "sample_id")

#: ``{layer: fn}``: while the model runs, ``layer``'s output tensor ``t`` becomes ``fn(t)``
Splice = Mapping[str, Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class Batch:
    """One batch: ``inputs`` go to the model, ``meta`` has one row per item, ``extra`` holds
    what ``rows`` needs (an attention mask, the token ids, per-scan geometry)."""

    inputs: Any
    meta: pd.DataFrame
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.meta)


class Run(NamedTuple):
    """What :meth:`Adapter.run` returns: the model output and ``{layer: activation}``."""

    output: Any
    activations: dict[str, Any]


class Adapter(ABC):
    """Base class of every adapter. Subclasses implement the abstract methods; adapters that
    run an item as several passes (sliding windows) override :meth:`run`, the way MONAI's
    inferers make "how a network is run" a pluggable object."""

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

    def forward(self, batch: Batch):
        """Call the model once on a batch's inputs (:meth:`run` wraps this with hooks)."""
        inputs = batch.inputs
        if isinstance(inputs, dict):
            return self.model(**inputs)
        return self.model(inputs)

    def run(self, batch: Batch, layers: str | Iterable[str] = (), *, inputs: bool = False,
            select: int | str | None = None, splice: Splice | None = None) -> Run:
        """Run the model on ``batch``; return its output and what ``layers`` computed.

        Parameters
        ----------
        batch
            A batch from :meth:`collate` (on the model's device).
        layers
            Module names (or glob patterns) whose outputs to return, by name.
        inputs
            Return what the layers receive instead of what they return.
        select
            Index or key of a layer output to use (see :mod:`bioviz.hooks`).
        splice
            ``{layer: fn}``: replace ``layer``'s output tensor ``t`` by ``fn(t)`` while the
            model runs (an SAE reconstruction, an ablation, a steering vector). Captured
            layers downstream see the effect; a captured spliced layer is seen spliced.

        Returns
        -------
        Run
            ``(output, activations)``. For each layer the activation is a tensor with the
            batch on axis 0, or (adapters that run items separately) a list with one tensor
            per item, ``None`` for items that were skipped; :meth:`rows` takes either.
        """
        with hooked(self.model, layers, inputs=inputs, select=select, splice=splice) as cap:
            out = self.forward(batch)
            return Run(out, cap.pop())

    @abstractmethod
    def rows(self, layer: str, activation, batch: Batch) -> tuple[torch.Tensor, pd.DataFrame]:
        """A layer's activation for a batch (as :meth:`run` returned it) as
        ``(rows [n, d], obs with n rows)``."""

    def config(self) -> dict:
        """JSON-safe settings that change what is extracted (recorded, and compared on resume)."""
        return {"adapter": type(self).__name__}

    def identity(self) -> dict:
        """Model identity for the manifest (class, size, weights checksum)."""
        return model_identity(self.model, getattr(self, "model_name", None))

    def layer_names(self) -> list[str]:
        """Hookable module names; modality adapters list the useful ones first."""
        return [n for n, _ in self.model.named_modules() if n]

    # -- what model evaluation needs (bioviz.evaluate) ---------------------------------------

    def logits(self, output) -> torch.Tensor:
        """The model's prediction tensor, class scores on the last axis (default: the
        output's ``logits``, else the output rule of bioviz.hooks)."""
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, dict):
            logits = output.get("logits")
        return logits if isinstance(logits, torch.Tensor) else select_tensor(output)

    def positions(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        """Which positions of ``logits`` [B, T, C] count (padding does not); None: all."""
        mask = batch.extra.get("mask")
        return mask.bool() if mask is not None and logits.ndim == 3 else None

    def output_names(self, n_units: int) -> list[str] | None:
        """Names of the ``n_units`` output units interventions measure (a masked-LM head's
        vocabulary: gene names), or None when the adapter cannot name them (the default)."""
        return None

    def task_loss(self, batch: Batch, output) -> torch.Tensor | None:
        """The model's own training loss on this batch, if the adapter can form it (masked-LM
        loss for MLM models); None when it cannot. Used for 'loss recovered'. Default: the
        output's ``loss`` (Hugging Face models given ``labels``)."""
        loss = getattr(output, "loss", None)
        return loss if isinstance(loss, torch.Tensor) else None

    def data_fingerprint(self, batch: Batch):
        """What identifies a batch's data for the store's data checksum (default: its inputs)."""
        return batch.inputs

    # -- what the store records about the data ------------------------------------------------

    def data_checksums(self, dataset) -> dict[str, str] | None:
        """Checksums of the cohort's data by part, e.g. ``{"expression": ..., "obs": ...}``,
        computed from what :meth:`dataset` read, without running the model.

        They are part of the store's fingerprint: a finished store made from other data is
        refused, naming the parts that differ (``data.obs``), exactly like a configuration
        change. The parts must cover the model's inputs and every value that ends up in obs,
        and be cheap next to a model run: stream what is large.

        ``None`` (the default) means: the data is what the batches hold, each batch's
        :meth:`data_fingerprint` (``data.inputs``) and ``meta`` (``data.obs``) chained over the
        batches. Extraction computes that as it goes, and collates every batch up front
        (without the model) only to compare with a finished store.
        """
        return None

    def skipped_items(self, batch: Batch | None = None) -> list[dict]:
        """Items left out, recorded in the store's manifest (``skipped_items``).

        With ``batch=None``: the items :meth:`dataset` left out before any batch (a manifest
        row whose file is missing, a cell with no gene the model knows). With a batch: its
        items that gave no rows (a scan that cannot be read). Each is a JSON-safe dict with
        ``row`` (1-based row of the input table), ``sample_id``, ``file`` where an item has
        its own, and ``reason``. Default: none.
        """
        return []

    # -- evidence mapped back to the input ----------------------------------------------------

    def evidence(self, table, features: list[str], *, data=None, sae=None,
                 subjects: pd.DataFrame | None = None, label: str | None = None, reference=None,
                 out=None, progress: bool = True) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
        """Evidence of SAE ``features`` mapped back to the model's input space: the motifs of
        the sequence windows where a feature fires, its maps over the original scans.

        ``table`` is the FeatureTable (AnnData: rows as :meth:`rows` made them, with their
        obs; ``features`` among its var names), ``data`` the cohort the rows came from,
        ``sae`` the loaded SAE (for attribution through the model; may be None), ``subjects``
        the per-subject clinical table (index ``subject_id``) with ``label`` the column that
        groups them and ``reference`` its reference level when the Findings name one (the
        controls: a baseline for attribution; None: infer it as the statistics do), ``out`` a folder (a :class:`pathlib.Path`, may be None) for files
        (NIfTI, figures). Returns ``(tables, skipped)``: tidy DataFrames by name, each with a
        ``feature`` column, and ``{evidence: reason}`` for what could not be gathered.

        The default gathers nothing and says why: an adapter whose rows do not map back to
        an input space (single-cell rows are already genes and cells) keeps it.
        """
        return {}, {"input_space": f"{type(self).__name__} does not map features back to its inputs "
                                   "(no motif or map evidence for these rows)"}


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor in ``inputs`` and ``extra`` moved to ``device``."""
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        return x

    return Batch(move(batch.inputs), batch.meta, move(batch.extra))


def is_scalar(value) -> bool:
    """Whether a dataset item's value is row metadata (a string or number), not an input."""
    return isinstance(value, (str, numbers.Number, np.generic))


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
