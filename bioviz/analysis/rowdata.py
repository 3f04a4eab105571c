"""Row-level probe inputs: a seeded sample of rows (cells, patches, windows) with their raw
activations, their SAE codes, a row label and the subject of each row (for grouped folds)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..errors import InputError
from ..store import ActivationStore


def row_inputs(source: dict, column: str, *, subject_key: str = "subject_id", max_rows: int = 50_000,
               seed: int = 0):
    """``(inputs, y, kind, groups, note)`` for probing ``column`` row by row.

    ``source``: ``features`` (a FeatureTable or its path, or None), ``sae`` (when the codes
    are streamed), ``store`` and ``layer`` (the raw activations, when the store is there).
    At most ``max_rows`` rows (a seeded sample, sorted: reads stay sequential).
    """
    features = source.get("features")
    if isinstance(features, (str, Path)):
        features = ad.read_h5ad(features, backed="r")
    store = ActivationStore(source["store"]) if source.get("store") and Path(source["store"]).exists() else None
    if features is not None:
        obs = features.obs
    elif store is not None:
        obs = store.read_obs()
    else:
        raise InputError(f"row_labels=[{column!r}]: no FeatureTable or store to read rows from")
    for col in (column, subject_key):
        if col not in obs:
            raise InputError(f"row_labels: column {col!r} is not in the row metadata; available: "
                             f"{', '.join(map(str, obs.columns))}")
    keep = np.flatnonzero(obs[column].notna().to_numpy())
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(keep, max_rows, replace=False)) if len(keep) > max_rows else keep
    values = obs[column].to_numpy()[idx]
    y, kind = _encode_label(values, column)
    groups = obs[subject_key].astype(str).to_numpy()[idx]
    inputs = {}
    raw = None
    if store is not None:
        raw = np.asarray(store.array(source["layer"]).oindex[idx, :], dtype=np.float32)
        inputs["raw activations"] = raw
    if features is not None:
        codes = features.X[idx]
        inputs["SAE features"] = sp.csr_matrix(codes) if sp.issparse(codes) else np.asarray(codes)
    elif source.get("sae") is not None and raw is not None:
        from ..sae import load_sae

        sae = source["sae"]
        sae = load_sae(sae) if isinstance(sae, (str, Path)) else sae
        with torch.inference_mode():
            inputs["SAE features"] = sae.encode_sparse(torch.from_numpy(raw)).to_scipy().tocsr()
    else:
        raise InputError(f"row_labels=[{column!r}]: the SAE codes of the rows are unavailable")
    note = f"{len(idx)} of {len(keep)} rows with a {column!r} value (seed {seed})"
    return inputs, y, kind, groups, note


def _encode_label(values: np.ndarray, column: str):
    s = pd.Series(values)
    if pd.api.types.is_bool_dtype(s) or s.nunique() == 2:
        levels = sorted(s.unique(), key=str)
        return (s == levels[1]).to_numpy().astype(int), "binary"
    if pd.api.types.is_numeric_dtype(s) and s.nunique() > 20:
        return s.to_numpy(dtype=float), "continuous"
    if s.nunique() < 2:
        raise InputError(f"row_labels: column {column!r} has one value only ({s.iloc[0]!r}); nothing to probe")
    return pd.Categorical(s.astype(str)).codes.astype(int), "categorical"
