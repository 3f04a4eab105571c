"""A human-readable summary of a store (``bioviz info STORE``)."""

from __future__ import annotations

import os

from .reader import ActivationStore

SHOW_SKIPPED = 10  # skipped items listed by ``describe`` (all are in the manifest)


def skipped_text(item: dict) -> str:
    """One skipped item for people: ``row 3, sample BROKEN, file x.nii.gz: reason``."""
    reason = str(item.get("reason", "no reason recorded"))
    named = (("row", "row"), ("sample_id", "sample"), ("cell_id", "cell"), ("file", "file"))
    where = ", ".join(f"{label} {item[k]}" for k, label in named
                      if item.get(k) is not None and not (k == "file" and str(item[k]) in reason))
    return f"{where}: {reason}"


def describe(store: str | os.PathLike, verify: bool = False) -> str:
    """Describe an activation store: rows, samples and subjects, model, layers, checksums,
    and the items left out of it (skipped scans, missing files, dropped cells).

    Parameters
    ----------
    store
        Directory of the ActivationStore.
    verify
        Also read every chunk of every layer and compare it with the checksum recorded
        when it was committed (reads the whole store).

    Returns
    -------
    str
        A few lines for people (the manifest itself is ``manifest.json``).

    Raises
    ------
    StoreError
        The store is damaged; with ``verify``, every chunk that is missing, does not
        decode or differs from its checksum, named by layer, chunk and rows.
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
    skipped = m.get("skipped_items", [])
    lines.append(f"  skipped items: {len(skipped)}" + (" (no rows; listed in manifest.json skipped_items)"
                                                     if skipped else ""))
    lines += [f"    {skipped_text(s)}" for s in skipped[:SHOW_SKIPPED]]
    if len(skipped) > SHOW_SKIPPED:
        lines.append(f"    ... and {len(skipped) - SHOW_SKIPPED} more")
    if verify:
        v = st.verify()
        n_layers = len(st.layers)
        lines.append(f"  verified: {v['chunks'] // n_layers} chunks × {n_layers} layers read; "
                     f"{v['checked']} match the checksums recorded at commit"
                     + (f", {v['unrecorded']} had none recorded (written by an older bioviz)"
                        if v["unrecorded"] else ""))
    return "\n".join(lines)
