"""How well a feature map agrees with a ground-truth mask on the same grid: Dice of the
thresholded map, AUROC of the map's voxel values for mask membership, and the pointing game
(is the map's peak inside the mask), plus how far the peak is from the mask in mm."""

from __future__ import annotations

import numpy as np

from bioviz.errors import InputError


def map_agreement(feature_map, mask, *, within=None, threshold: float | None = None) -> dict:
    """Compare a map with a mask (nibabel images on one grid, or arrays of one shape).

    ``within``: voxels to score (e.g. the brain); default all. ``threshold``: map value for
    Dice; default: the value that keeps as many voxels as the mask has ("Dice at the mask's
    volume", which needs no tuning and is comparable across features).
    """
    from scipy.ndimage import distance_transform_edt
    from scipy.stats import rankdata

    m, affine = _array(feature_map, "feature_map")
    k, k_aff = _array(mask, "mask")
    if m.shape != k.shape:
        raise InputError(f"mask shape {k.shape} differs from the map's {m.shape}; resample onto one grid first")
    if affine is not None and k_aff is not None and not np.allclose(affine, k_aff, atol=1e-3):
        raise InputError("mask affine differs from the map's; they must be on one grid")
    region = np.ones(m.shape, bool) if within is None else _array(within, "within")[0] > 0
    if region.shape != m.shape:
        raise InputError(f"within shape {region.shape} differs from the map's {m.shape}")
    region &= np.isfinite(m)
    truth = (k > 0) & region
    n_pos, n = int(truth.sum()), int(region.sum())
    if n_pos == 0:
        raise InputError("the mask has no voxels inside the scored region")
    if n_pos == n:
        raise InputError("the mask covers the whole scored region; AUROC needs voxels outside it")
    vals, lab = m[region], truth[region]
    ranks = rankdata(vals)
    auroc = (ranks[lab].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))
    pred = None
    if threshold is None:
        threshold = float(np.sort(vals)[::-1][n_pos - 1])
        pred = (m >= threshold) & region
        if pred.sum() > n_pos:  # ties at the threshold: keep only what is strictly above it
            pred = (m > threshold) & region
    if pred is None:
        pred = (m >= threshold) & region
    dice = 2 * float((pred & truth).sum()) / (float(pred.sum()) + n_pos)
    peak = np.unravel_index(int(np.argmax(np.where(region, m, -np.inf))), m.shape)
    zooms = np.ones(3) if affine is None else np.sqrt((affine[:3, :3] ** 2).sum(0))
    dist = distance_transform_edt(~truth, sampling=zooms)
    world = (affine @ np.array([*peak, 1.0]))[:3] if affine is not None else np.array(peak, float)
    return {"dice": dice, "auroc": float(auroc), "pointing_hit": bool(truth[peak]),
            "peak_distance_mm": float(dist[peak]), "peak_voxel": [int(p) for p in peak],
            "peak_world_mm": [float(w) for w in world], "threshold": float(threshold),
            "n_mask_voxels": n_pos}


def _array(x, what):
    if hasattr(x, "dataobj") and hasattr(x, "affine"):
        return np.asarray(x.dataobj, dtype=np.float64), np.asarray(x.affine, np.float64)
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 3:
        raise InputError(f"{what}: expected a 3D array or image, got shape {arr.shape}")
    return arr, None
