"""The FeatureTable: an AnnData with one row per activation row and one column per SAE
feature (sparse codes), so scanpy works on it directly."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from .checksum import digest
from .errors import InputError
from .lock import ArtifactLock
from .provenance import resolve
from .sae import SparseAutoencoder, load_sae
from .store import ActivationStore


def encode(sae: SparseAutoencoder | str, store: ActivationStore | str | None = None,
           layer: str | None = None, *, out: str | None = None, batch_size: int = 8192,
           progress: bool = True, device: str | None = None, allow_mismatch: bool = False,
           overwrite: bool = False) -> ad.AnnData:
    """Stream an activation store through an SAE into a FeatureTable (AnnData).

    Parameters
    ----------
    sae
        A trained SAE, or its checkpoint directory (``sae.safetensors`` + ``sae.json``).
    store
        The :class:`~bioviz.store.ActivationStore` (or its path) to encode. Default: the store
        the SAE was trained on, from its recorded provenance. Another store of the same
        model and layer (a new cohort) is fine.
    layer
        The store layer to encode. Default: the layer the SAE was trained on.
    out
        Write the table here as h5ad (to a temporary name, renamed when complete). An
        existing file is refused before any work: a FeatureTable unless ``overwrite``, any
        other file always. The file's writer lock is held until it is written.
    batch_size
        Rows read and encoded at a time; only the sparse codes are kept.
    progress
        Show a progress bar.
    device
        Torch device for the SAE (default: CUDA when available).
    allow_mismatch
        Encode even when the layer or the model that made the store differ from the SAE's
        record (recorded in ``uns["bioviz"]["target"]``).
    overwrite
        Replace ``out`` when it holds a FeatureTable (bioviz never replaces another file).

    Returns
    -------
    anndata.AnnData
        ``obs``: the store's row metadata; ``X``: CSR float32 codes; ``var``: each
        feature's ``density`` (share of rows where it fires), ``mean_activation`` and
        ``max_activation``; ``varm["decoder"]``: decoder directions; ``uns["bioviz"]``:
        the SAE config, the layer and store encoded, and the checks made.

    Examples
    --------
    >>> import tempfile, torch, bioviz as bv
    >>> from bioviz.adapters import TorchAdapter
    >>> _ = torch.manual_seed(0)
    >>> tmp = tempfile.mkdtemp()
    >>> model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU())
    >>> store = bv.extract(TorchAdapter(model), [torch.randn(6) for _ in range(256)], "0",
    ...                    f"{tmp}/store", progress=False)
    >>> sae, = bv.train(store.path, max_steps=5, batch_size=64, output_dir=f"{tmp}/sae",
    ...                 sae={"architecture": "topk", "expansion_factor": 2, "k": 4},
    ...                 trainer={"enable_progress_bar": False})
    >>> ft = bv.encode(sae, progress=False)   # the store and layer it was trained on
    >>> ft.shape, ft.uns["bioviz"]["layer"]
    ((256, 32), '0')
    """
    if out is not None:
        out = Path(out)
        _check_out(out, overwrite)  # before any work
        out.parent.mkdir(parents=True, exist_ok=True)
    with ArtifactLock(out, "FeatureTable", folder=False) if out is not None else nullcontext():
        ft = _encode(sae, store, layer, batch_size, progress, device, allow_mismatch)
        if out is not None:
            _check_out(out, overwrite)  # what another process may have written meanwhile
            write_h5ad(ft, out)
    return ft


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that must not be replaced, naming it and what to do."""
    if out.is_dir():
        raise InputError(f"out={out} is a folder; expected the path of an .h5ad file")
    if not out.exists():
        return
    if not _is_feature_table(out):
        raise InputError(
            f"out={out} exists and is not a FeatureTable bioviz wrote; bioviz never replaces it, "
            "even with overwrite=True: choose another path"
        )
    if not overwrite:
        raise InputError(f"out={out} already holds a FeatureTable; pass overwrite=True to replace it, "
                         "or choose another path")


def _is_feature_table(path: Path) -> bool:
    """An h5ad file written by :func:`encode` (it has ``uns/bioviz/sae``)."""
    import h5py

    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            return "uns/bioviz/sae" in f and "X" in f and "obs" in f
    except OSError:
        return False


def open_target(sae, store, layer, allow_mismatch: bool):
    """``(sae, store, layer, target)``: the SAE (loaded), the open store and the layer to
    encode, defaulting to the SAE's record, and the :class:`~bioviz.provenance.Target`;
    another layer or model than the record is refused unless ``allow_mismatch``."""
    if not isinstance(sae, SparseAutoencoder):
        sae = load_sae(sae)
    path = store.path if isinstance(store, ActivationStore) else store
    target = resolve(sae, layer=layer, store=path, need_store=True, allow_mismatch=True)
    if not isinstance(store, ActivationStore):
        store = ActivationStore(target.store)
    layer = store.resolve_layer(target.layer)
    # now that the store is open: the model that made it must be the SAE's
    target = resolve(sae, layer=layer, store=target.store, model=store.manifest.get("model"),
                     allow_mismatch=allow_mismatch)
    d = store.dim(layer)
    if sae.d_in != d:
        raise InputError(
            f"layer {layer!r} of {store.path} has d={d} but the SAE was trained on d_in={sae.d_in}; "
            "encode with an SAE trained on this layer"
        )
    return sae, store, layer, target


def provenance_record(sae, store, layer, target) -> dict:
    """What a table of codes records in ``uns["bioviz"]``: the SAE's configuration, the layer
    and store encoded, and the checks made."""
    return {"sae": _json_safe(sae.fitted_config().to_dict()), "layer": layer,
            "store": str(store.path), "store_n_rows": store.n_rows,
            "store_manifest_blake2b": digest(store.manifest),
            "target": _json_safe(target.record())}


def _encode(sae, store, layer, batch_size, progress, device, allow_mismatch) -> ad.AnnData:
    sae, store, layer, target = open_target(sae, store, layer, allow_mismatch)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sae = sae.to(device).eval()
    blocks, obs_parts = [], []
    total = max_act = None
    bar = tqdm(total=store.n_rows, unit="rows", desc="encode", disable=not progress)
    with torch.inference_mode():
        for _, rows, obs in store.iter_rows(layer, batch_size, with_obs=True):
            x = torch.from_numpy(np.ascontiguousarray(rows)).to(device, torch.float32)
            codes = sae.encode_sparse(x).to_scipy().astype(np.float32)
            codes.eliminate_zeros()
            blocks.append(sp.csr_matrix(codes))
            obs_parts.append(obs)
            col_sum = np.asarray(codes.sum(0)).ravel()
            col_max = np.asarray(codes.max(0).todense()).ravel()
            total = col_sum if total is None else total + col_sum
            max_act = col_max if max_act is None else np.maximum(max_act, col_max)
            bar.update(len(rows))
    bar.close()
    X = sp.vstack(blocks, format="csr")
    fired = np.bincount(X.indices, minlength=sae.d_sae)
    var = pd.DataFrame({
        "density": fired / X.shape[0],
        "mean_activation": total / X.shape[0],
        "max_activation": max_act,
    }, index=[f"f{i}" for i in range(sae.d_sae)])
    obs = pd.concat(obs_parts, ignore_index=True)
    obs.index = obs.index.astype(str)
    for col in obs.columns:  # categorical ids: compact, and what scanpy colours by
        if obs[col].dtype == object or str(obs[col].dtype).startswith("string"):
            obs[col] = obs[col].astype("category")
    ft = ad.AnnData(X=X, obs=obs, var=var)
    ft.varm["decoder"] = sae.W_dec.detach().cpu().numpy()
    ft.uns["bioviz"] = provenance_record(sae, store, layer, target)
    return ft


def h5ad_safe_obs(adata: ad.AnnData) -> ad.AnnData:
    """Make ``adata.obs`` writable as .h5ad, in place: nullable float columns (pandas
    ``Float64``, which a cohort table read with ``convert_dtypes`` has and anndata cannot
    write) become float64, NA becoming NaN. Returns ``adata``."""
    for c in adata.obs.columns:
        if isinstance(adata.obs[c].dtype, (pd.Float64Dtype, pd.Float32Dtype)):
            adata.obs[c] = adata.obs[c].astype("float64")
    return adata


def write_h5ad(adata: ad.AnnData, path) -> Path:
    """Write to ``path`` atomically: a crash never leaves a file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h5ad_safe_obs(adata)
    tmp = path.with_name(path.name + ".tmp.h5ad")
    adata.write_h5ad(tmp)
    os.replace(tmp, path)
    return path


def _json_safe(obj):
    """uns must hold what h5ad can store: drop Nones, lists of dicts become dicts."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, dict) for v in obj):
            return {str(i): _json_safe(v) for i, v in enumerate(obj)}
        return [_json_safe(v) for v in obj]
    return obj


def open_feature_table(path, *, name: str = "features") -> ad.AnnData:
    """The FeatureTable at ``path`` opened ``backed="r"`` (X read lazily, never whole); a
    folder, a missing file or a file that is not an .h5ad AnnData is an error naming it."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{name}: expected a FeatureTable (AnnData) or the path of its .h5ad, "
                         f"got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{name}={path} is a folder; expected an .h5ad FeatureTable (an SAE "
                         "checkpoint or an activation store is given as sae= or store=)")
    if not path.is_file():
        raise InputError(f"{name}={path}: no such file; expected an .h5ad FeatureTable")
    try:
        return ad.read_h5ad(path, backed="r")
    except Exception as e:  # not HDF5, or not an AnnData: say which file
        raise InputError(f"{name}={path} cannot be read as an .h5ad FeatureTable "
                         f"({type(e).__name__}: {e})") from None
