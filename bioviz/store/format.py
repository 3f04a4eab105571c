"""The on-disk layout of an ActivationStore, shared by the writer and the reader.

::

    store/
      manifest.json        written last: its presence means the store is complete
      activations.zarr/    a zarr v3 group, one array per hooked layer: rows × d, chunked by rows
      obs.parquet          one row of metadata per activation row (subject_id, sample_id, ...)
      checksums.json       a checksum of every chunk of every layer, recorded at commit time
      _progress.json       only while writing: what is committed, where to resume
      _obs/                only while writing: one parquet part per committed chunk
      .bioviz.lock         only while writing: the writer's lock (bioviz.lock)

The arrays' fill value is NaN (a missing chunk never reads as data); the reader refuses a
store with a missing chunk file and reports a chunk that does not decode as a StoreError.

Readable without bioviz: ``dask.array.from_zarr("store/activations.zarr", component=LAYER)``
and ``pandas.read_parquet("store/obs.parquet")``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError

SCHEMA_VERSION = 1
FORMAT = "bioviz.activation_store"
MANIFEST = "manifest.json"
PROGRESS = "_progress.json"
ARRAYS = "activations.zarr"
OBS = "obs.parquet"
OBS_PARTS = "_obs"
CHECKSUMS = "checksums.json"
CHECKSUM_ALGORITHM = "blake2b-128 of each chunk's rows (dtype, shape, then bytes in C order)"
PART_CHECKSUMS = b"bioviz.chunk_checksums"  # key of an obs part's parquet metadata
DTYPES = ("float16", "float32")
FLOAT16_MAX = 65504.0


class StoreError(InputError):
    """A store that is missing, inconsistent, or not what the caller asked for."""


class LayerNotFound(StoreError, KeyError):
    """A layer the store does not have (a KeyError too, for ``layer in``-style callers)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so that a reader (or a resumed run) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; a file that is not one (invalid JSON, not UTF-8, a list,
    unreadable) is a :class:`StoreError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is not valid JSON ({e}); the store is damaged") from None
    except IsADirectoryError:
        raise StoreError(f"{path} is a directory, not a JSON file; the store is damaged") from None
    if not isinstance(doc, dict):
        raise StoreError(f"{path} holds a JSON {type(doc).__name__}, expected a JSON object of "
                         "settings; the store is damaged") from None
    return doc


def rows_checksum(rows: np.ndarray) -> str:
    """The checksum of one chunk's rows as stored (:data:`CHECKSUM_ALGORITHM`)."""
    rows = np.ascontiguousarray(rows)
    h = hashlib.blake2b(f"{rows.dtype.str}{rows.shape}".encode(), digest_size=16)
    h.update(rows.reshape(-1).view(np.uint8))
    return h.hexdigest()


def obs_part(path: Path, chunk: int) -> Path:
    return path / OBS_PARTS / f"part-{chunk:06d}.parquet"
