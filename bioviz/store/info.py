"""A human-readable summary of a store (``bioviz info STORE``)."""

from __future__ import annotations

from .reader import ActivationStore


def describe(path) -> str:
    st = ActivationStore(path)
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
