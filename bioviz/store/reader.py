"""Reading an ActivationStore: validated on open, shuffled training batches with bounded
memory, or an in-order stream for encoding."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr

from . import format as fmt
from .format import StoreError


class ActivationStore:
    """A finished store on disk. Opening checks the manifest against the arrays and the obs
    table and refuses a store where they disagree."""

    def __init__(self, path):
        self.path = Path(path)
        mpath = self.path / fmt.MANIFEST
        if not mpath.exists():
            if (self.path / fmt.PROGRESS).exists():
                raise StoreError(
                    f"{self.path} is an unfinished extraction (no {fmt.MANIFEST}); rerun the same "
                    "extract command to resume it"
                )
            raise StoreError(f"{self.path} is not an activation store: {fmt.MANIFEST} not found")
        self.manifest = fmt.read_json(mpath)
        self._validate()

    def _validate(self) -> None:
        m, where = self.manifest, self.path / fmt.MANIFEST
        if m.get("format") != fmt.FORMAT:
            raise StoreError(f"{where}: format is {m.get('format')!r}, expected {fmt.FORMAT!r}")
        if m.get("schema_version") != fmt.SCHEMA_VERSION:
            raise StoreError(
                f"{where}: schema_version {m.get('schema_version')} is not supported by this bioviz "
                f"(reads {fmt.SCHEMA_VERSION})"
            )
        n = m["n_rows"]
        try:
            group = zarr.open_group(self.path / fmt.ARRAYS, mode="r")
        except Exception as e:
            raise StoreError(f"{self.path / fmt.ARRAYS}: cannot open the zarr group ({e})") from None
        self._arrays = {}
        for name, info in m["layers"].items():
            if name not in group:
                raise StoreError(f"{where} lists layer {name!r} but {self.path / fmt.ARRAYS} has no such array")
            arr = group[name]
            want = (n, info["d"])
            if tuple(arr.shape) != want:
                raise StoreError(
                    f"layer {name!r}: array shape {tuple(arr.shape)} disagrees with the manifest "
                    f"({want[0]} rows × {want[1]}); the store is damaged or was edited"
                )
            if str(arr.dtype) != m["dtype"]:
                raise StoreError(f"layer {name!r}: array dtype {arr.dtype} disagrees with the manifest ({m['dtype']})")
            self._arrays[name] = arr
        obs = self.path / fmt.OBS
        if not obs.exists():
            raise StoreError(f"{obs} not found; the store is damaged")
        n_obs = pq.ParquetFile(obs).metadata.num_rows
        if n_obs != n:
            raise StoreError(f"{obs} has {n_obs} rows but the manifest says {n}; the store is damaged")

    # -- metadata -------------------------------------------------------------------------

    @property
    def layers(self) -> list[str]:
        return list(self._arrays)

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def chunk_rows(self) -> int:
        return int(self.manifest["chunk_rows"])

    def dim(self, layer: str | None = None) -> int:
        return int(self.array(layer).shape[1])

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        dims = ", ".join(f"{k}: {a.shape[1]}" for k, a in self._arrays.items())
        return f"ActivationStore({str(self.path)!r}, rows={self.n_rows}, layers={{{dims}}}, dtype={self.manifest['dtype']})"

    def array(self, layer: str | None = None) -> zarr.Array:
        return self._arrays[self.resolve_layer(layer)]

    def resolve_layer(self, layer: str | None = None) -> str:
        """The name of a layer of this store: ``layer`` itself when the store has it, the only
        layer when ``layer`` is None and there is one; otherwise an error naming the layers."""
        if layer is None:
            if len(self._arrays) != 1:
                raise ValueError(f"this store has layers {self.layers}; pass layer=")
            return next(iter(self._arrays))
        if layer not in self._arrays:
            raise KeyError(f"layer {layer!r} is not in {self.path}; it has {self.layers}")
        return layer

    @cached_property
    def obs(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / fmt.OBS)

    def read_obs(self, columns: list[str] | None = None) -> pd.DataFrame:
        return pd.read_parquet(self.path / fmt.OBS, columns=columns)

    def to_dask(self, layer: str | None = None):
        import dask.array as da

        return da.from_zarr(self.array(layer))

    # -- streaming ------------------------------------------------------------------------

    def _chunks(self) -> list[tuple[int, int]]:
        c, n = self.chunk_rows, self.n_rows
        return [(s, min(s + c, n)) for s in range(0, n, c)]

    def iter_rows(self, layer: str | None = None, batch_size: int | None = None,
                  with_obs: bool = False) -> Iterator:
        """Rows in store order, one chunk (or ``batch_size`` rows) at a time, as
        ``(start, rows)``, or ``(start, rows, obs)`` with ``with_obs=True``."""
        arr = self.array(layer)
        step = batch_size or self.chunk_rows
        obs_file = pq.ParquetFile(self.path / fmt.OBS) if with_obs else None
        obs_iter = obs_file.iter_batches(batch_size=step) if with_obs else None
        for start in range(0, self.n_rows, step):
            rows = arr[start:min(start + step, self.n_rows)]
            if with_obs:
                yield start, rows, next(obs_iter).to_pandas()
            else:
                yield start, rows

    def iter_batches(self, layer: str | None = None, batch_size: int = 4096, *, shuffle: bool = True,
                     buffer_rows: int = 262_144, seed: int = 0, epoch: int = 0, rank: int = 0,
                     world_size: int = 1, drop_last: bool = False,
                     return_index: bool = False) -> Iterator:
        """Training batches. Shuffled at two levels — the order of chunks, then rows inside a
        buffer of about ``buffer_rows`` — so peak memory is set by the buffer, not by the
        store. Seeded by ``(seed, epoch)``. With ``world_size > 1`` each rank reads its own
        chunks and every rank yields the same number of batches (as DDP needs).
        ``return_index=True`` yields ``(rows, store row indices)``."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected a positive integer")
        arr = self.array(layer)
        chunks = self._chunks()
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(chunks)) if shuffle else np.arange(len(chunks))
        mine = [chunks[i] for i in order[rank::world_size]]
        limit = None
        if world_size > 1:
            limit = self._rank_rows(world_size) // batch_size
            if limit <= 0:
                raise ValueError(
                    f"batch_size={batch_size} is larger than the rows one of {world_size} ranks gets "
                    f"({self._rank_rows(world_size)}); use a smaller batch or fewer ranks"
                )
        per_window = max(1, buffer_rows // self.chunk_rows)
        carry = np.empty((0, arr.shape[1]), dtype=arr.dtype)
        carry_idx = np.empty(0, dtype=np.int64)
        yielded = 0
        for w in range(0, len(mine), per_window):
            window = mine[w:w + per_window]
            pool = np.concatenate([carry] + [arr[s:e] for s, e in window])
            idx = np.concatenate([carry_idx] + [np.arange(s, e) for s, e in window])
            if shuffle:
                perm = rng.permutation(len(pool))
                pool, idx = pool[perm], idx[perm]
            n_full = len(pool) // batch_size
            for b in range(n_full):
                if limit is not None and yielded >= limit:
                    return
                sl = slice(b * batch_size, (b + 1) * batch_size)
                yield (pool[sl], idx[sl]) if return_index else pool[sl]
                yielded += 1
            carry, carry_idx = pool[n_full * batch_size:], idx[n_full * batch_size:]
        if len(carry) and not drop_last and limit is None:
            yield (carry, carry_idx) if return_index else carry

    def _rank_rows(self, world_size: int) -> int:
        """Rows every rank is sure to get, whatever the chunk shuffle: each rank has at
        least ``n_chunks // world_size`` chunks, at most one of them the short last one."""
        chunks = self._chunks()
        last = chunks[-1][1] - chunks[-1][0]
        return max(0, (len(chunks) // world_size - 1) * self.chunk_rows + last)

    def n_batches(self, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
        """How many batches :meth:`iter_batches` yields per epoch (per rank)."""
        if world_size > 1:
            return self._rank_rows(world_size) // batch_size
        full, rest = divmod(self.n_rows, batch_size)
        return full + (1 if rest and not drop_last else 0)
