"""Datasets for the generic adapter that a config can name: arrays on disk plus a metadata table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bioviz.errors import InputError
from bioviz.tables import read_table


class ArrayDataset(torch.utils.data.Dataset):
    """Items from arrays in a ``.safetensors`` or ``.npz`` file (first axis = items), with an
    optional metadata table (one row per item: ``subject_id``, ``sample_id``, clinical
    columns). Each item is ``{array name: tensor, column: scalar, ...}``.

    ``.npz`` files are read with ``allow_pickle=False``: object arrays are refused.
    """

    def __init__(self, arrays: str, metadata: str | None = None):
        path = Path(arrays)
        if not path.is_file():
            raise FileNotFoundError(f"arrays file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            self.arrays = load_file(str(path))
        elif path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    self.arrays = {k: torch.from_numpy(z[k]) for k in z.files}
            except ValueError as e:
                raise InputError(f"{path}: {e} (object arrays are not loaded, for safety)") from None
        else:
            raise InputError(f"{path}: expected a .safetensors or .npz file of arrays")
        if not self.arrays:
            raise InputError(f"{path} holds no arrays")
        sizes = {k: v.shape[0] if v.ndim else None for k, v in self.arrays.items()}
        if None in sizes.values() or len(set(sizes.values())) != 1:
            raise InputError(f"{path}: every array needs the same first (item) axis; got {sizes}")
        self.n = next(iter(sizes.values()))
        self.meta = None
        if metadata is not None:
            self.meta = read_table(metadata, what="metadata table")
            if len(self.meta) != self.n:
                raise InputError(f"{metadata} has {len(self.meta)} rows but {path} holds {self.n} items")
            clash = set(self.meta.columns) & set(self.arrays)
            if clash:
                raise InputError(f"{metadata}: columns {sorted(clash)} clash with array names in {path}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.arrays.items()}
        if self.meta is not None:
            item.update({k: (v.item() if hasattr(v, "item") else v) for k, v in self.meta.iloc[i].items()})
        return item
