"""A LightningDataModule over an ActivationStore: shuffled batches with bounded memory,
split by rank under DDP, and resumable mid-epoch."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from ..errors import InputError
from ..store import ActivationStore


class _StoreBatches(torch.utils.data.IterableDataset):
    """One epoch of shuffled batches. Epoch and position come from the trainer's global step,
    so a run resumed from a checkpoint continues with the very batches it would have seen."""

    def __init__(self, dm: ActivationDataModule):
        self.dm = dm

    def __iter__(self):
        dm = self.dm
        trainer = dm.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        per_epoch = dm.store.n_batches(dm.batch_size, world, drop_last=True)
        step = trainer.global_step if trainer else 0
        epoch, skip = divmod(step, per_epoch)
        it = dm.store.iter_batches(dm.layer, dm.batch_size, buffer_rows=dm.buffer_rows, seed=dm.seed,
                                   epoch=epoch, rank=rank, world_size=world, drop_last=True,
                                   return_index=True)
        for i, (rows, index) in enumerate(it):
            if i >= skip:
                yield torch.from_numpy(np.ascontiguousarray(rows)).float(), torch.from_numpy(index)


class ActivationDataModule(L.LightningDataModule):
    """Training batches from one layer of an ActivationStore.

    Parameters
    ----------
    store
        Path of the ActivationStore.
    layer
        Which layer (may be omitted when the store holds one).
    batch_size
        Rows per batch, per process.
    buffer_rows
        Rows held for shuffling (bounds memory).
    seed
        Shuffle seed (the epoch is folded in).
    init_rows
        Rows read to fit the input normalisation and the pre-encoder bias.
    """

    def __init__(self, store: str, layer: str | None = None, batch_size: int = 4096,
                 buffer_rows: int = 262_144, seed: int = 0, init_rows: int = 65_536):
        super().__init__()
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}: expected a positive integer")
        self.store_path, self.batch_size, self.buffer_rows = store, int(batch_size), int(buffer_rows)
        self.seed, self.init_rows = int(seed), int(init_rows)
        self.store = ActivationStore(store)
        self.layer = self.store.resolve_layer(layer)
        if self.store.n_batches(self.batch_size, drop_last=True) == 0:
            raise InputError(
                f"batch_size={batch_size} is larger than the {self.store.n_rows} rows of {store}"
            )

    @property
    def d_in(self) -> int:
        return self.store.dim(self.layer)

    def provenance(self) -> dict:
        from ..checksum import digest

        m = self.store.manifest
        return {"store": str(self.store.path), "layer": self.layer,
                "store_manifest_blake2b": digest(m), "model": m.get("model", {}),
                "data_checksum": m.get("data_checksum"), "n_rows": self.store.n_rows}

    def sample(self, n: int | None = None) -> torch.Tensor:
        """A seeded random sample of rows (the same on every rank), for data-dependent init."""
        n = min(n or self.init_rows, self.store.n_rows)
        rows = next(self.store.iter_batches(self.layer, n, buffer_rows=max(n, self.buffer_rows),
                                            seed=self.seed + 7919, drop_last=False))
        return torch.from_numpy(np.ascontiguousarray(rows)).float()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(_StoreBatches(self), batch_size=None)
