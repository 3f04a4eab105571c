"""The on-disk layout of an ActivationStore, shared by the writer and the reader.

::

    store/
      manifest.json        written last: its presence means the store is complete
      activations.zarr/    a zarr v3 group, one array per hooked layer: rows × d, chunked by rows
      obs.parquet          one row of metadata per activation row (subject_id, sample_id, ...)
      _progress.json       only while writing: what is committed, where to resume
      _obs/                only while writing: one parquet part per committed chunk

Readable without bioviz: ``dask.array.from_zarr("store/activations.zarr", component=LAYER)``
and ``pandas.read_parquet("store/obs.parquet")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError

SCHEMA_VERSION = 1
FORMAT = "bioviz.activation_store"
MANIFEST = "manifest.json"
PROGRESS = "_progress.json"
ARRAYS = "activations.zarr"
OBS = "obs.parquet"
OBS_PARTS = "_obs"
DTYPES = ("float16", "float32")
FLOAT16_MAX = 65504.0


class StoreError(InputError):
    """A store that is missing, inconsistent, or not what the caller asked for."""


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so that a reader (or a resumed run) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise StoreError(f"{path} is not valid JSON ({e}); the store is damaged") from None


def obs_part(path: Path, chunk: int) -> Path:
    return path / OBS_PARTS / f"part-{chunk:06d}.parquet"
