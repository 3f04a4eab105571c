"""The generic adapter: any ``torch.nn.Module`` with a user-supplied dataset.

Dataset items are a tensor, or a dict. In a dict, tensor (and numpy array) values are model
inputs — collated with torch's ``default_collate`` and passed as keyword arguments (or
positionally when ``input_key`` names the single input) — and scalar values (str, int,
float, bool) are row metadata. ``subject_id`` and ``sample_id`` default to the item's index
when the items do not carry them.

``layout`` says how a layer's output becomes rows:
  * ``"auto"``: [B, d] → one row per item; [B, T, d] → one row per token (padding dropped
    when the inputs have an ``attention_mask``); [B, C, *spatial] → one row per location;
  * ``"item"``, ``"tokens"``, ``"pooled"`` (mean over tokens or space), ``"spatial"``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import default_collate

from bioviz.adapter import (
    REQUIRED_OBS,
    Adapter,
    Batch,
    is_scalar,
    item_rows,
    pooled_rows,
    spatial_rows,
    token_rows,
)
from bioviz.errors import InputError

LAYOUTS = ("auto", "item", "tokens", "pooled", "spatial")


class _Indexed(torch.utils.data.Dataset):
    """Pairs each item with its index so metadata can default to it."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return i, self.data[i]


class TorchAdapter(Adapter):
    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        layout: str = "auto",
        input_key: str | None = None,
        mask_key: str = "attention_mask",
        model_name: str | None = None,
        weights: str | None = None,
    ):
        """``weights``: a local ``.safetensors`` or state-dict file loaded into ``model``
        (wrapper prefixes such as ``module.`` stripped; a missing, unexpected or misshapen
        key is an error naming the file and the keys)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if weights is not None:
            from .weights import load_weights

            load_weights(model, weights)
        if layout not in LAYOUTS:
            raise InputError(f"layout={layout!r}: expected one of {', '.join(LAYOUTS)}")
        self._model = model
        self.layout = layout
        self.input_key = input_key
        self.mask_key = mask_key
        self.model_name = model_name

    @property
    def model(self) -> nn.Module:
        return self._model

    def dataset(self, data):
        if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
            raise TypeError(
                f"data: expected a map-style dataset (with __len__ and __getitem__), got {type(data).__name__}"
            )
        return _Indexed(data)

    def collate(self, items: list) -> Batch:
        index = [i for i, _ in items]
        values = [v for _, v in items]
        if isinstance(values[0], dict):
            tensor_keys = [k for k, v in values[0].items() if isinstance(v, (torch.Tensor, np.ndarray))]
            meta_keys = [k for k, v in values[0].items() if is_scalar(v)]
            inputs = default_collate([{k: v[k] for k in tensor_keys} for v in values])
            meta = pd.DataFrame({k: [v[k] for v in values] for k in meta_keys})
        else:
            inputs = default_collate(values)
            meta = pd.DataFrame(index=range(len(values)))
        for col in REQUIRED_OBS:
            if col not in meta:
                meta[col] = [str(i) for i in index]
            else:
                meta[col] = meta[col].astype(str)
        extra = {}
        if isinstance(inputs, dict) and self.mask_key in inputs:
            extra["mask"] = inputs[self.mask_key]
        return Batch(inputs, meta, extra)

    def forward(self, batch: Batch):
        inputs = batch.inputs
        if isinstance(inputs, dict):
            if self.input_key is not None:
                return self.model(inputs[self.input_key])
            return self.model(**inputs)
        return self.model(inputs)

    def rows(self, layer, activation, batch):
        layout = self.layout
        if layout == "auto":
            layout = {2: "item", 3: "tokens"}.get(activation.ndim, "spatial")
        mask = batch.extra.get("mask")
        if layout == "item":
            if activation.ndim != 2:
                raise InputError(
                    f"layer {layer!r} gives shape {tuple(activation.shape)}; layout='item' needs [batch, d]"
                )
            return item_rows(activation, batch.meta)
        if layout == "tokens":
            if activation.ndim != 3:
                raise InputError(
                    f"layer {layer!r} gives shape {tuple(activation.shape)}; layout='tokens' needs [batch, tokens, d]"
                )
            return token_rows(activation, batch.meta, mask)
        if layout == "pooled":
            return pooled_rows(activation, batch.meta, mask if activation.ndim == 3 else None)
        if activation.ndim < 3:
            raise InputError(
                f"layer {layer!r} gives shape {tuple(activation.shape)}; layout='spatial' needs [batch, channels, *space]"
            )
        return spatial_rows(activation, batch.meta)

    def config(self) -> dict:
        return {
            "adapter": type(self).__name__,
            "layout": self.layout,
            "input_key": self.input_key,
            "mask_key": self.mask_key,
        }
