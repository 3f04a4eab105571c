"""Reading an ActivationStore: validated on open, shuffled training batches with bounded
memory, or an in-order stream for encoding.

Every chunk the store's manifest implies must exist (checked on open); a chunk that does
not decode, or reads as NaN (the fill value of a chunk that went missing), is a
:class:`StoreError` naming the store, the layer, the chunk and its rows, never data.
:meth:`ActivationStore.verify` compares every chunk with the checksum recorded when it was
committed (``bioviz info --verify``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..errors import InputError
from . import format as fmt
from .format import StoreError


def _check_manifest(m: dict, where) -> None:
    """The manifest's keys the reader relies on, each of the type it expects; a missing or
    malformed one is a StoreError naming the file and the key."""
    def bad(key, value, expected):
        got = "missing" if value is _MISSING else f"{value!r}"
        return StoreError(f"{where}: {key} is {got}, expected {expected}; the store is damaged or "
                          "was edited")

    for key, expected, ok in (("n_rows", "an integer >= 0", lambda v: _is_int(v) and v >= 0),
                              ("chunk_rows", "an integer >= 1", lambda v: _is_int(v) and v >= 1),
                              ("dtype", f"one of {', '.join(fmt.DTYPES)}", lambda v: v in fmt.DTYPES),
                              ("layers", "a mapping of layer names to {'d': width}",
                               lambda v: isinstance(v, dict) and len(v) > 0)):
        value = m.get(key, _MISSING)
        if value is _MISSING or not ok(value):
            raise bad(key, value, expected)
    for name, info in m["layers"].items():
        d = info.get("d", _MISSING) if isinstance(info, dict) else _MISSING
        if not (_is_int(d) and d >= 1):
            raise bad(f"layers[{name!r}]['d']", d, "a positive integer (the layer's width)")


_MISSING = object()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        self._check_chunks()

    def _validate(self) -> None:
        m, where = self.manifest, self.path / fmt.MANIFEST
        if m.get("format") != fmt.FORMAT:
            raise StoreError(f"{where}: format is {m.get('format')!r}, expected {fmt.FORMAT!r}")
        if m.get("schema_version") != fmt.SCHEMA_VERSION:
            raise StoreError(
                f"{where}: schema_version {m.get('schema_version')} is not supported by this bioviz "
                f"(reads {fmt.SCHEMA_VERSION})"
            )
        _check_manifest(m, where)
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
        try:
            n_obs = pq.ParquetFile(obs).metadata.num_rows
        except (pa.ArrowException, OSError) as e:  # truncated, damaged, or not parquet
            raise StoreError(f"{obs} is not a readable parquet file ({e}); the store is damaged") from None
        if n_obs != n:
            raise StoreError(f"{obs} has {n_obs} rows but the manifest says {n}; the store is damaged")

    # -- chunks: present, decodable, as committed --------------------------------------------

    def _chunk_ranges(self, arr: zarr.Array) -> list[tuple[int, int]]:
        c, n = int(arr.chunks[0]), int(arr.shape[0])
        return [(s, min(s + c, n)) for s in range(0, n, c)]

    def _check_chunks(self) -> None:
        """Every chunk file the arrays' shape implies exists (a missing one would read as
        the fill value: NaN, or zeros in stores written by an older bioviz)."""
        for name, arr in self._arrays.items():
            folder = self.path / fmt.ARRAYS / name
            present = set()
            for root, _, files in os.walk(folder):
                rel = Path(root).relative_to(folder)
                present.update((rel / f).as_posix() for f in files)
            n_col = -(-int(arr.shape[1]) // int(arr.chunks[1])) if arr.shape[1] else 0
            missing = [i for i, _ in enumerate(self._chunk_ranges(arr))
                       if any(arr.metadata.encode_chunk_key((i, j)) not in present for j in range(n_col))]
            if missing:
                ranges = self._chunk_ranges(arr)
                listed = ", ".join(f"chunk {i} (rows {ranges[i][0]}..{ranges[i][1] - 1})" for i in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise StoreError(
                    f"{self.path}: layer {name!r} is missing {len(missing)} chunk file(s) under "
                    f"{folder}: {listed}{more}; the store is damaged (its rows would read as fill "
                    "values): restore it or extract it again"
                )

    def _read(self, name: str, arr: zarr.Array, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of layer ``name``; a chunk that cannot be read is a StoreError."""
        try:
            rows = _decoded(arr, start, stop)
        except StoreError:
            raise StoreError(f"{self.path}: {self._damaged(name, arr, start, stop)}") from None
        return rows

    def _damaged(self, name: str, arr: zarr.Array, start: int, stop: int) -> str:
        """Which chunks of ``start:stop`` cannot be read, and why (read one by one)."""
        c = int(arr.chunks[0])
        bad = []
        for i in range(start // c, (max(start, stop - 1)) // c + 1):
            s, e = i * c, min((i + 1) * c, int(arr.shape[0]))
            try:
                _decoded(arr, s, e)
            except StoreError as err:
                bad.append(f"chunk {i} (rows {s}..{e - 1}) {err}")
        return f"layer {name!r} " + ("; ".join(bad) if bad else f"rows {start}..{stop - 1} cannot be read")

    def verify(self) -> dict[str, int]:
        """Read every chunk of every layer and compare it with the checksum recorded when
        it was committed.

        Returns
        -------
        dict
            ``chunks`` (read and decoded), ``checked`` (against a recorded checksum) and
            ``unrecorded`` (committed by a bioviz that recorded none).

        Raises
        ------
        StoreError
            Any chunk that is missing, does not decode or differs from its checksum, each
            named by layer, chunk and rows; or a checksum file the manifest names that is
            missing or does not match the store.
        """
        sums = self._recorded_checksums()
        problems, chunks, checked, unrecorded = [], 0, 0, 0
        for name, arr in self._arrays.items():
            want = sums.get(name) if sums else None
            for i, (s, e) in enumerate(self._chunk_ranges(arr)):
                chunks += 1
                try:
                    rows = _decoded(arr, s, e)
                except StoreError as err:
                    problems.append(f"layer {name!r} chunk {i} (rows {s}..{e - 1}) {err}")
                    continue
                expected = want[i] if want is not None else None
                if expected is None:
                    unrecorded += 1
                elif fmt.rows_checksum(rows) != expected:
                    problems.append(f"layer {name!r} chunk {i} (rows {s}..{e - 1}) differs from the "
                                    "checksum recorded when it was committed")
                else:
                    checked += 1
        if problems:
            listed = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise StoreError(f"{self.path}: {len(problems)} damaged chunk(s): {listed}")
        return {"chunks": chunks, "checked": checked, "unrecorded": unrecorded}

    def _recorded_checksums(self) -> dict | None:
        name = self.manifest.get("checksums")
        if name is None:
            return None  # a store from before checksums were recorded
        path = self.path / name
        if not path.exists():
            raise StoreError(f"{path} not found, but {self.path / fmt.MANIFEST} says the chunk "
                             "checksums are there; the store is damaged")
        try:
            doc = json.loads(path.read_text())
            sums = doc["layers"]
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"{path} is not a checksum table; the store is damaged") from None
        for layer, arr in self._arrays.items():
            n = len(self._chunk_ranges(arr))
            if not isinstance(sums.get(layer), list) or len(sums[layer]) != n:
                raise StoreError(f"{path}: layer {layer!r} should have {n} chunk checksums; the "
                                 "store is damaged")
        return sums

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
                raise InputError(f"this store has layers {self.layers}; pass layer=")
            return next(iter(self._arrays))
        if layer not in self._arrays:
            raise fmt.LayerNotFound(f"layer {layer!r} is not in {self.path}; it has {self.layers}")
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
        name = self.resolve_layer(layer)
        for start in range(0, self.n_rows, step):
            rows = self._read(name, arr, start, min(start + step, self.n_rows))
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
            raise InputError(f"batch_size={batch_size}: expected a positive integer")
        name = self.resolve_layer(layer)
        arr = self.array(name)
        chunks = self._chunks()
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(chunks)) if shuffle else np.arange(len(chunks))
        mine = [chunks[i] for i in order[rank::world_size]]
        limit = None
        if world_size > 1:
            limit = self._rank_rows(world_size) // batch_size
            if limit <= 0:
                raise InputError(
                    f"batch_size={batch_size} is larger than the rows one of {world_size} ranks gets "
                    f"({self._rank_rows(world_size)}); use a smaller batch or fewer ranks"
                )
        per_window = max(1, buffer_rows // self.chunk_rows)
        carry = np.empty((0, arr.shape[1]), dtype=arr.dtype)
        carry_idx = np.empty(0, dtype=np.int64)
        yielded = 0
        for w in range(0, len(mine), per_window):
            window = mine[w:w + per_window]
            pool = np.concatenate([carry] + [self._read(name, arr, s, e) for s, e in window])
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


def _decoded(arr: zarr.Array, start: int, stop: int) -> np.ndarray:
    """``arr[start:stop]``, or a StoreError saying why those rows are not data."""
    try:
        rows = arr[start:stop]
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # a codec's own error: truncated or garbage bytes
        raise StoreError(f"cannot be decoded ({type(e).__name__}: {e}); the store is damaged") from None
    # extraction never stores NaN (nonfinite rows are refused or dropped), and a chunk that
    # is NaN throughout is the fill value of a chunk file that went missing (or bytes that
    # changed); a NaN here and there is left to the reader (training names its rows)
    c = int(arr.chunks[0])
    for s in range(start - start % c, stop, c):  # each chunk's share of the rows read
        seg = rows[max(s, start) - start:min(s + c, stop) - start]
        if seg.size and np.isnan(seg[0]).all() and np.isnan(seg).all():  # first row: cheap
            raise StoreError("reads as NaN throughout: its chunk file went missing or was "
                             "altered; the store is damaged")
    return rows
