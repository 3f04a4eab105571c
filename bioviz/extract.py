"""Extraction: run an adapter's model over a cohort and write what chosen layers compute
into an ActivationStore. Runs as a Lightning prediction loop, under inference mode, with a
progress bar; a killed run resumes from the last committed chunk."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import pandas as pd
import torch

from .adapter import REQUIRED_OBS, Adapter, Batch, to_device
from .batches import FixedBatches
from .checksum import chain, digest
from .errors import InputError
from .hooks import resolve_layers
from .store import ActivationStore, StoreError, StoreWriter
from .store.format import FLOAT16_MAX, MANIFEST
from .store.info import skipped_text
from .trainer import quiet_lightning
from .version import __version__

log = logging.getLogger(__name__)
NONFINITE = ("error", "drop")


class _Collate:
    def __init__(self, adapter: Adapter):
        self.adapter = adapter

    def __call__(self, items) -> tuple[Batch, str, str]:
        batch = self.adapter.collate(items)
        # checksums on the CPU side, inside the loader (and its workers, if any): the
        # batch's model inputs, and the metadata that goes into obs
        return batch, digest(self.adapter.data_fingerprint(batch)), digest(batch.meta)


def _batch_checksums(adapter: Adapter, dataset, batch_size: int, num_workers: int) -> dict:
    """The running data checksums extraction computes, computed up front: every batch
    collated (as extraction batches it), no model run."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=FixedBatches(len(dataset), batch_size), collate_fn=_Collate(adapter),
        num_workers=num_workers,
    )
    inputs = obs = ""
    for _, checksum, obs_checksum in loader:
        inputs, obs = chain(inputs, checksum), chain(obs, obs_checksum)
    return {"inputs": inputs, "obs": obs}


class _Extractor(L.LightningModule):
    """The prediction loop's step: forward with hooks, rows, checks, hand to the writer."""

    def __init__(self, adapter, layers, writer, resume, *, dtype, nonfinite, inputs, select):
        super().__init__()
        self.adapter = adapter
        self.net = adapter.model  # registered so Lightning moves it to the device
        self.layers, self.writer, self.resume = layers, writer, resume
        self.store_dtype, self.nonfinite, self.inputs, self.select = dtype, nonfinite, inputs, select
        self.state = {"data_checksum": "", "obs_checksum": "", "items": 0, "dropped_nonfinite": 0,
                      "skipped": [], **(resume.state or {})}
        self.torch_dtype = getattr(torch, dtype)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        b, checksum, obs_checksum = batch
        return to_device(b, device), checksum, obs_checksum

    def predict_step(self, batch, batch_idx):
        batch, checksum, obs_checksum = batch
        index = self.resume.batch + batch_idx
        skip = 0
        if batch_idx == 0 and self.resume.batch_checksum is not None:
            if checksum != self.resume.batch_checksum:
                raise StoreError(
                    f"the input data changed since the interrupted run wrote {self.writer.path} "
                    f"(batch {index} differs); pass overwrite=True to start again"
                )
            skip = self.resume.skip_rows
        _, acts = self.adapter.run(batch, self.layers, inputs=self.inputs, select=self.select)
        rows, obs, dropped = self._rows(acts, batch, index)
        before = dict(self.state)
        self.state = {
            "data_checksum": chain(self.state["data_checksum"], checksum),
            "obs_checksum": chain(self.state["obs_checksum"], obs_checksum),
            "items": self.state["items"] + len(batch),
            "dropped_nonfinite": self.state["dropped_nonfinite"] + dropped,
            # kept in the running state, so a resumed run still records what was skipped before
            "skipped": self.state["skipped"] + list(self.adapter.skipped_items(batch)),
        }
        self.writer.add(index, rows, obs, before, dict(self.state), checksum, skip_rows=skip)

    def _rows(self, acts, batch, index):
        rows, obs = {}, None
        for name in self.layers:
            act = acts[name]
            if not all(a.is_floating_point() for a in _tensors(act)):
                raise StoreError(
                    f"layer {name!r} produces {act.dtype} values; the store holds floating-point "
                    "activations (hook another layer, or pass select= to pick a float output)"
                )
            r, o = self.adapter.rows(name, act, batch)
            if obs is None:
                obs = o
            elif len(o) != len(obs):
                raise StoreError(
                    f"layers give different row counts for batch {index}: {self.layers[0]!r} "
                    f"{len(obs)}, {name!r} {len(o)}; extract them into separate stores"
                )
            rows[name] = r
        missing = [c for c in REQUIRED_OBS if c not in obs]
        if missing:
            raise StoreError(f"adapter {type(self.adapter).__name__} gave rows without obs columns {missing}")
        bad = torch.zeros(len(obs), dtype=torch.bool, device=next(iter(rows.values())).device)
        for name, r in rows.items():
            nonfinite = ~torch.isfinite(r).all(1)
            if nonfinite.any() and self.nonfinite == "error":
                raise StoreError(_describe(f"layer {name!r} has NaN/Inf activations", nonfinite, obs, index)
                                 + "; pass nonfinite='drop' to skip such rows (they are counted)")
            bad |= nonfinite
            if self.store_dtype == "float16":
                over = (r.abs() > FLOAT16_MAX).any(1) & ~nonfinite
                if over.any():
                    raise StoreError(_describe(
                        f"layer {name!r} has values beyond ±{FLOAT16_MAX:.0f}, which float16 cannot hold",
                        over, obs, index) + "; extract with dtype='float32'")
        dropped = int(bad.sum())
        keep = ~bad if dropped else None
        out = {}
        for name, r in rows.items():
            if keep is not None:
                r = r[keep]
            out[name] = r.to(self.torch_dtype).cpu().numpy()
        if keep is not None:
            obs = obs[keep.cpu().numpy()].reset_index(drop=True)
        return out, obs, dropped


def _tensors(act):
    # an activation is a tensor, or per-item tensors (None for skipped items)
    return [a for a in act if a is not None] if isinstance(act, list) else [act]


def _describe(what: str, mask: torch.Tensor, obs: pd.DataFrame, batch: int) -> str:
    idx = mask.nonzero().flatten().cpu().numpy()
    cols = [c for c in ("subject_id", "sample_id", "token_index") if c in obs]
    first = obs.iloc[idx[:3]][cols].to_dict("records")
    return f"{what} in {len(idx)} rows of batch {batch} (first: {first})"


def extract(adapter: Adapter, data: str | torch.utils.data.Dataset, layers: str | list[str],
            store_path: str, *, batch_size: int = 32,
            chunk_rows: int = 4096, dtype: str = "float32", nonfinite: str = "error",
            inputs: bool = False, select: int | str | None = None, num_workers: int = 0,
            accelerator: str = "auto",
            overwrite: bool = False, progress: bool = True, compression: str | None = None,
            extra_manifest: dict | None = None) -> ActivationStore:
    """Run ``adapter``'s model over ``data`` and store what ``layers`` compute.

    Rerunning the same call after a crash resumes from the last committed chunk; on a
    finished store with the same configuration and the same data it returns the store
    without recomputing, and a finished store made from other data (the same number of items
    with other values or labels) is refused, naming what differs, like another configuration.

    What counts as the data is the adapter's (:meth:`Adapter.data_checksums`): for the generic
    adapters, every batch's model inputs and metadata (collated up front, without the model,
    only when a finished store is there to compare with); for single-cell cohorts the
    expression matrix, the cells' metadata, the gene mapping and the totals used (read in
    the checks pass the adapter makes anyway); for scan cohorts the manifest's rows and the
    size and bytes of every image and mask file. A partial store resumes even when data it
    has not reached yet changed (a scan fixed after a run stopped on it); the batch at the
    resume point is checked against what was committed from it.

    Items an adapter leaves out (unreadable scans, missing files, cells without a known
    gene) are listed in the manifest (``skipped_items``: row, sample, file, reason) and
    counted in a warning at the end.

    Parameters
    ----------
    adapter
        The modality adapter (it holds the model and runs it: :meth:`Adapter.run`).
    data
        What the adapter reads: a dataset, an AnnData or a path (see the adapter).
    layers
        Module names or glob patterns (``encoder.layer.*``; ``**`` crosses dots).
    store_path
        Directory of the ActivationStore to write (or resume).
    batch_size
        Items per forward pass.
    chunk_rows
        Rows per zarr chunk, the unit of an atomic commit.
    dtype
        ``float32`` or ``float16`` (values beyond float16's range are an error).
    nonfinite
        ``error`` stops at NaN/Inf activations naming the rows; ``drop`` skips and counts them.
    inputs
        Capture what the layers receive instead of what they return.
    select
        Index or key of the layer output to keep (see :mod:`bioviz.hooks`).
    num_workers
        DataLoader worker processes.
    accelerator
        Lightning accelerator (``auto``, ``cpu``, ``gpu``).
    overwrite
        Replace an existing store made with another configuration.
    progress
        Show a progress bar.
    compression
        ``None``, ``zstd`` or ``blosc`` for the zarr chunks.
    extra_manifest
        More JSON-safe entries for the store's manifest (Python only).

    Returns
    -------
    ActivationStore
        The finished store.

    Examples
    --------
    >>> import tempfile, torch, bioviz as bv
    >>> from bioviz.adapters import TorchAdapter
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> data = [{"x": torch.randn(4), "subject_id": f"P{i % 3}"} for i in range(10)]
    >>> store = bv.extract(TorchAdapter(model, input_key="x"), data, "1",
    ...                    f"{tempfile.mkdtemp()}/store", batch_size=4, progress=False)
    >>> store.n_rows, store.dim("1"), sorted(store.obs["subject_id"].unique())
    (10, 8, ['P0', 'P1', 'P2'])
    """
    if not isinstance(adapter, Adapter):
        raise TypeError(f"adapter: expected a bioviz adapter, got {type(adapter).__name__}; "
                        "wrap a plain torch model with bioviz.adapters.TorchAdapter(model)")
    if nonfinite not in NONFINITE:
        raise InputError(f"nonfinite={nonfinite!r}: expected one of {NONFINITE}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size={batch_size!r}: expected a positive integer")
    names = resolve_layers(adapter.model, layers)
    dataset = adapter.dataset(data)
    n_items = len(dataset)
    if n_items == 0:
        raise StoreError("data is empty: there is nothing to extract")
    fingerprint = {
        "model": adapter.identity(), "adapter": adapter.config(), "layers": names,
        "dtype": dtype, "chunk_rows": int(chunk_rows), "batch_size": int(batch_size),
        "n_items": n_items, "inputs": inputs, "select": select, "nonfinite": nonfinite,
        "data": adapter.data_checksums(dataset),
    }
    if fingerprint["data"] is None and not overwrite and (Path(store_path) / MANIFEST).is_file():
        # the data is what the batches hold: compare it with the finished store's
        log.info("checking the data against the finished store %s", store_path)
        fingerprint["data"] = _batch_checksums(adapter, dataset, int(batch_size), num_workers)
    skipped_before = list(adapter.skipped_items())
    writer = StoreWriter(store_path, fingerprint, chunk_rows=chunk_rows, dtype=dtype,
                         overwrite=overwrite, compression=compression)
    resume = writer.open()
    if resume is None:
        log.info("%s is already complete for this configuration", store_path)
        return ActivationStore(store_path)
    if resume.batch:
        log.info("resuming %s at batch %d", store_path, resume.batch)
    try:  # from here on the writer holds the store's lock: every exit path releases it
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=FixedBatches(n_items, int(batch_size), resume.batch),
            collate_fn=_Collate(adapter), num_workers=num_workers,
        )
        module = _Extractor(adapter, names, writer, resume, dtype=dtype, nonfinite=nonfinite,
                            inputs=inputs, select=select)
        with quiet_lightning():
            trainer = L.Trainer(
                accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                enable_model_summary=False, enable_progress_bar=progress,
                use_distributed_sampler=False, inference_mode=True,
            )
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        state = module.state
        if fingerprint["data"] is None:  # the running checksums are the data's
            writer.fingerprint = {**fingerprint, "data": {"inputs": state["data_checksum"],
                                                          "obs": state["obs_checksum"]}}
        skipped = skipped_before + state["skipped"]
        manifest = writer.finish({
            "bioviz_version": __version__, "model": fingerprint["model"],
            "adapter": fingerprint["adapter"], "data_checksum": state["data_checksum"],
            "n_items": state["items"], "dropped_nonfinite_rows": state["dropped_nonfinite"],
            "skipped_items": skipped, "n_skipped_items": len(skipped),
            **(extra_manifest or {}),
        })
    except BaseException:
        writer.close()  # keep every chunk already committed
        raise
    if manifest["dropped_nonfinite_rows"]:
        warnings.warn(f"{manifest['dropped_nonfinite_rows']} rows with NaN/Inf activations were "
                      f"dropped from {store_path}", stacklevel=2)
    if skipped:
        warnings.warn(f"{len(skipped)} items were skipped and gave no rows in {store_path} "
                      f"(first: {skipped_text(skipped[0])}); each is listed in its manifest "
                      "(skipped_items) and by `bioviz info`", stacklevel=2)
    return ActivationStore(store_path)


__all__ = ["extract", "NONFINITE"]
