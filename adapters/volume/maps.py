"""The reverse path: per-row values (a feature's activation) → a volume on the layer's grid →
the preprocessed grid → through the inverse of the preprocessing onto the original scan's
grid, written as NIfTI with the scan's own affine (and header, for NIfTI inputs), so it
overlays the input exactly in 3D Slicer or ITK-SNAP."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bioviz.errors import InputError

INTERPOLATION = ("linear", "nearest")


def rows_to_grid(values, obs: pd.DataFrame, sample_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scan's rows → (cell grid indices [n, 3], stride per axis [3], values [n])."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(values) != len(obs):
        raise InputError(f"values has {len(values)} entries but obs has {len(obs)} rows; pass "
                         "values aligned with obs (one per activation row)")
    missing = [c for c in ("sample_id", "grid_i", "voxel_i") if c not in obs]
    if missing:
        raise InputError(f"obs lacks columns {missing}; it must come from a store written by the volume adapter")
    sel = (obs["sample_id"].astype(str) == str(sample_id)).to_numpy()
    if not sel.any():
        raise KeyError(f"no rows for sample_id {sample_id!r} in obs")
    grid = obs.loc[sel, ["grid_i", "grid_j", "grid_k"]].to_numpy(np.int64)
    if (grid < 0).any():
        raise InputError(f"rows of {sample_id!r} are pooled per scan (layout='scan'); they have no map")
    voxel = obs.loc[sel, ["voxel_i", "voxel_j", "voxel_k"]].to_numpy(np.float64)
    # a cell's centre is g*s + (s - 1)/2, so s = (2v + 1) / (2g + 1) from any row
    stride = np.rint((2 * voxel[0] + 1) / (2 * grid[0] + 1)).astype(np.int64)
    if not np.allclose(grid * stride + (stride - 1) / 2, voxel, atol=1e-2):
        raise InputError(f"rows of {sample_id!r} do not lie on one regular grid; were rows of several "
                         "layers or patch sizes mixed?")
    return grid, stride, values[sel]


def to_preprocessed(grid, stride, values, shape, interpolation: str = "linear") -> torch.Tensor:
    """Cell values → a [X, Y, Z] volume on the preprocessed grid of ``shape`` (cells not in
    the rows stay 0). Linear interpolation puts each value at its cell's centre."""
    if interpolation not in INTERPOLATION:
        raise InputError(f"interpolation={interpolation!r}: expected one of {INTERPOLATION}")
    n = [math.ceil(s / k) for s, k in zip(shape, stride)]
    if (grid >= np.array(n)).any():
        raise InputError(f"rows reach cell {grid.max(0).tolist()} but the scan's grid has {n} cells; "
                         "the rows were made with other preprocessing")
    cells = torch.zeros(n, dtype=torch.float32)
    cells[tuple(torch.as_tensor(grid.T))] = torch.as_tensor(values)
    size = [c * int(k) for c, k in zip(n, stride)]
    if max(stride) > 1:
        mode = "trilinear" if interpolation == "linear" else "nearest"
        kw = {"align_corners": False} if mode == "trilinear" else {}
        cells = F.interpolate(cells[None, None], size=size, mode=mode, **kw)[0, 0]
    return cells[:shape[0], :shape[1], :shape[2]]


def rows_to_original(adapter, values, obs, sample_id, *, data=None, interpolation="linear"):
    """``nibabel.Nifti1Image`` of the map on the original grid of scan ``sample_id``."""
    return _to_original(adapter, values, obs, sample_id, data, interpolation)[0]


def _to_original(adapter, values, obs, sample_id, data, interpolation):
    import nibabel as nib

    from .preprocess import invert

    cohort = adapter.read_cohort(data) if data is not None else adapter.cohort
    if cohort is None:
        raise InputError("the adapter has no cohort yet; pass data= (the manifest the rows came from)")
    grid, stride, vals = rows_to_grid(values, obs, sample_id)
    scan = cohort.find(sample_id)
    pp = adapter.prepare_scan(scan)
    image = pp["image"]
    vol = to_preprocessed(grid, stride, vals, tuple(image.shape[1:]), interpolation)
    back = invert(adapter.chain, image, vol)
    arr = np.asarray(back[0].detach().cpu().numpy(), dtype=np.float32)
    affine = np.asarray(pp["original"].affine, dtype=np.float64)
    if arr.shape != tuple(pp["original"].shape[:3]):
        raise RuntimeError(f"inverting the preprocessing gave {arr.shape}, not the scan's grid "
                           f"{tuple(pp['original'].shape)}; is every spatial transform invertible?")
    header = None
    if Path(scan.image).is_file():  # NIfTI: keep the scan's header (qform/sform codes, units)
        header = nib.load(str(scan.image)).header.copy()
        header.set_data_dtype(np.float32)
        header.set_slope_inter(1.0, 0.0)
    img = nib.Nifti1Image(arr, affine, header=header)
    if header is not None:
        img.set_qform(affine, int(header["qform_code"]) or 1)
        img.set_sform(affine, int(header["sform_code"]) or 1)
    return img, pp, scan


def write_map(adapter, values, obs, sample_id, path, *, data=None, montage=True,
              interpolation="linear", title=None) -> dict:
    """Write ``path`` (.nii or .nii.gz) and, with ``montage``, a PNG beside it."""
    import nibabel as nib

    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise InputError(f"{path}: a map is written as NIfTI; end the name with .nii or .nii.gz")
    img, pp, scan = _to_original(adapter, values, obs, sample_id, data, interpolation)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    out = {"nifti": path}
    if montage:
        from .montage import montage as draw

        anat = nib.Nifti1Image(np.asarray(pp["original"].cpu().numpy(), np.float32),
                               np.asarray(pp["original"].affine, np.float64))
        mask = None
        if scan.mask is not None:
            from .io import load_scan

            m = load_scan(scan.mask, "mask")
            mask = nib.Nifti1Image(np.asarray(m.numpy() > 0, np.uint8), np.asarray(m.affine, np.float64))
        png = Path(str(path).removesuffix(".gz").removesuffix(".nii") + ".png")
        draw(anat, img, png, mask=mask, title=title or f"{sample_id}")
        out["png"] = png
    return out
