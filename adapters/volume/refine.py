"""Voxel-resolution maps of what the model uses: integrated gradients of the class logit from a
healthy reference scan, Gaussian-smoothed, mapped back onto the original scan.

A channel of a classifier's hooked layer ranks lesion voxels well but lives on a coarse grid
and also answers to anatomy, so its upsampled map rarely peaks on the lesion (the demo's
layer2 channel: voxel AUROC 0.95, Dice 0.08). Attributing the logit to input voxels, along
the straight path from the mean of lesion-free scans to the scan, keeps only what differs
from healthy anatomy AND moves the model's output (see ``experiments/volume_localisation.py``
for the measurements). The reference matters: from a zero image the attribution spreads
over all anatomy the model looks at.
"""

from __future__ import annotations

import numpy as np
import torch

from bioviz.errors import InputError


def healthy_baseline(adapter, sample_ids, *, data=None, progress: bool = True) -> torch.Tensor:
    """Mean preprocessed image [C, X, Y, Z] of lesion-free scans ``sample_ids`` (the reference
    that :func:`attribution_map` integrates from). Scans must share the preprocessed grid."""
    cohort = adapter.read_cohort(data) if data is not None else adapter.cohort
    if cohort is None:
        raise InputError("the adapter has no cohort yet; pass data= (the manifest of the scans)")
    ids = [str(s) for s in sample_ids]
    if not ids:
        raise InputError("sample_ids is empty: pass the ids of lesion-free (label-negative) scans")
    it = ids
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(ids, desc="healthy baseline", unit="scan")
    total, shape = None, None
    for sid in it:
        img = adapter.prepare_scan(cohort.find(sid))["image"].as_tensor().float()
        if shape is None:
            shape, total = tuple(img.shape), torch.zeros(img.shape, dtype=torch.float64)
        elif tuple(img.shape) != shape:
            raise InputError(f"sample {sid!r} preprocesses to {tuple(img.shape)}, not {shape}; a "
                             "baseline needs one grid (end the preprocessing with a fixed-size crop/pad)")
        total += img.double()
    return (total / len(ids)).float()


def attribution_map(model, image, baseline, *, target: int = 0, n_steps: int = 32,
                    sigma_vox: float = 1.5, internal_batch_size: int = 8) -> torch.Tensor:
    """|Integrated gradients| of output ``target`` from ``baseline`` to ``image``, summed over
    input channels and Gaussian-smoothed.

    Parameters
    ----------
    model : torch.nn.Module
        Maps [B, C, X, Y, Z] to logits [B, K] (a classifier).
    image, baseline : torch.Tensor
        [C, X, Y, Z] on the model's (preprocessed) grid, e.g. ``prepare_scan(scan)["image"]``
        and :func:`healthy_baseline`.
    target : int
        Output column attributed (the class logit).
    n_steps : int
        Gauss-Legendre steps of the path integral.
    sigma_vox : float
        Gaussian smoothing in voxels of the model grid (0: none); voxel-wise attributions are
        speckled by noise, and a lesion is a blob.
    internal_batch_size : int
        Path points per forward pass.

    Returns
    -------
    torch.Tensor
        [X, Y, Z] float32 map, larger = more of the logit's change from the baseline.
    """
    from captum.attr import IntegratedGradients
    from scipy.ndimage import gaussian_filter

    x, b = _volume(image, "image"), _volume(baseline, "baseline")
    if x.shape != b.shape:
        raise InputError(f"baseline shape {tuple(b.shape)} differs from the image's {tuple(x.shape)}; "
                         "build it from scans on the same preprocessed grid")
    if int(n_steps) < 1:
        raise InputError(f"n_steps={n_steps}: expected a positive integer")
    if not sigma_vox >= 0:
        raise InputError(f"sigma_vox={sigma_vox}: expected a non-negative number of voxels")
    dev = next(model.parameters()).device
    out_k = _n_outputs(model, b[None].to(dev))
    if not 0 <= int(target) < out_k:
        raise InputError(f"target={target}: the model gives {out_k} output column(s)")
    ig = IntegratedGradients(lambda z: model(z).reshape(z.shape[0], -1))
    att = ig.attribute(x[None].to(dev), baselines=b[None].to(dev), target=int(target),
                       n_steps=int(n_steps), internal_batch_size=int(internal_batch_size))
    amap = att.detach()[0].abs().sum(0).cpu().numpy().astype(np.float64)
    if sigma_vox > 0:
        amap = gaussian_filter(amap, float(sigma_vox))
    return torch.as_tensor(amap, dtype=torch.float32)


def refined_to_nifti(adapter, sample_id: str, baseline, *, data=None, **kwargs):
    """:func:`attribution_map` of scan ``sample_id`` as a ``nibabel`` image on the original
    scan's grid (through the inverse of the preprocessing, like ``VolumeAdapter.to_nifti``);
    ``kwargs`` go to :func:`attribution_map`."""
    import nibabel as nib

    from .preprocess import invert

    cohort = adapter.read_cohort(data) if data is not None else adapter.cohort
    if cohort is None:
        raise InputError("the adapter has no cohort yet; pass data= (the manifest of the scans)")
    pp = adapter.prepare_scan(cohort.find(sample_id))
    amap = attribution_map(adapter.model, pp["image"].as_tensor(), baseline, **kwargs)
    back = invert(adapter.chain, pp["image"], amap)[0].detach().cpu().numpy().astype(np.float32)
    return nib.Nifti1Image(back, np.asarray(pp["original"].affine, np.float64))


def _volume(t, what) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.ndim != 4:
        raise InputError(f"{what}: expected [channels, X, Y, Z], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{what}: has NaN or infinite voxels")
    return t.float()


def _n_outputs(model, probe) -> int:
    with torch.no_grad():
        return int(model(probe).reshape(1, -1).shape[1])
