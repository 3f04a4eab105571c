"""A human-readable summary of a store (``bioviz info STORE``)."""

from __future__ import annotations

import os

from .reader import ActivationStore


def describe(store: str | os.PathLike) -> str:
    """Describe an activation store: rows, samples and subjects, model, layers, checksums.

    Parameters
    ----------
    store
        Directory of the ActivationStore.

    Returns
    -------
    str
        A few lines for people (the manifest itself is ``manifest.json``).
    """
    st = ActivationStore(store)
    m = st.manifest
    obs = st.read_obs(["subject_id", "sample_id"])
    lines = [
        f"ActivationStore {st.path}",
        f"  rows: {st.n_rows:,} from {m['n_items']:,} items, {obs['sample_id'].nunique():,} samples, "
        f"{obs['subject_id'].nunique():,} subjects",
        f"  model: {m['model']['name']} ({m['model']['n_parameters']:,} parameters, weights {m['model']['weights_blake2b']})",
        f"  dtype: {m['dtype']}, chunk rows: {m['chunk_rows']}, dropped non-finite rows: {m['dropped_nonfinite_rows']}",
        "  layers:",
        *[f"    {k}: d={v['d']}" for k, v in m["layers"].items()],
        f"  obs columns: {', '.join(m['obs_columns'])}",
        f"  data checksum: {m['data_checksum']}",
    ]
    return "\n".join(lines)
