"""Voxel-resolution maps of what the model uses: integrated gradients of the class logit (or of
an SAE feature) from a healthy reference scan, Gaussian-smoothed, mapped back onto the
original scan.

A channel of a classifier's hooked layer ranks lesion voxels well but lives on a coarse grid
and also answers to anatomy, so its upsampled map rarely peaks on the lesion (the demo's
layer2 channel: voxel AUROC 0.95, Dice 0.08). Attributing the logit to input voxels, along
the straight path from the mean of lesion-free scans to the scan, keeps only what differs
from healthy anatomy AND moves the model's output (see ``experiments/volume_localisation.py``
for the measurements). The reference matters: from a zero image the attribution spreads
over all anatomy the model looks at. The same holds for an SAE feature: its code summed over
the scan's rows (:func:`feature_target`) is attributed instead of the logit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bioviz.adapter import Batch
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


def attribution_map(model, image, baseline, *, target: int | Callable = 0, n_steps: int = 32,
                    sigma_vox: float = 1.5, internal_batch_size: int = 8,
                    signed: bool = False) -> torch.Tensor:
    """|Integrated gradients| of output ``target`` from ``baseline`` to ``image``, summed over
    input channels and Gaussian-smoothed.

    Parameters
    ----------
    model : torch.nn.Module or None
        Maps [B, C, X, Y, Z] to logits [B, K] (a classifier). With a callable ``target`` it
        only says which device to run on (None: the image's).
    image, baseline : torch.Tensor
        [C, X, Y, Z] on the model's (preprocessed) grid, e.g. ``prepare_scan(scan)["image"]``
        and :func:`healthy_baseline`.
    target : int or callable
        Output column attributed (the class logit), or a function of a batch [B, C, X, Y, Z]
        returning one scalar per item [B], e.g. :func:`feature_target`.
    n_steps : int
        Gauss-Legendre steps of the path integral.
    sigma_vox : float
        Gaussian smoothing in voxels of the model grid (0: none); voxel-wise attributions are
        speckled by noise, and a lesion is a blob.
    internal_batch_size : int
        Path points per forward pass.
    signed : bool
        Keep the sign (summed over channels, then smoothed): positive where the voxel's change
        from the baseline raised the target. Default: the magnitude.

    Returns
    -------
    torch.Tensor
        [X, Y, Z] float32 map, larger = more of the target's change from the baseline.
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
    dev = next(model.parameters()).device if model is not None else x.device
    if callable(target):
        fn, column = target, None
    else:
        out_k = _n_outputs(model, b[None].to(dev))
        if not 0 <= int(target) < out_k:
            raise InputError(f"target={target}: the model gives {out_k} output column(s)")
        fn, column = (lambda z: model(z).reshape(z.shape[0], -1)), int(target)
    att = IntegratedGradients(fn).attribute(x[None].to(dev), baselines=b[None].to(dev), target=column,
                                            n_steps=int(n_steps),
                                            internal_batch_size=int(internal_batch_size))
    att = att.detach()[0].double().cpu()
    amap = (att.sum(0) if signed else att.abs().sum(0)).numpy()
    if sigma_vox > 0:
        amap = gaussian_filter(amap, float(sigma_vox))
    return torch.as_tensor(amap, dtype=torch.float32)


def feature_target(adapter, sae, layer: str, feature: int, scan, *, data=None,
                   prepared: dict | None = None) -> Callable:
    """f(z): SAE ``feature``'s code summed over the rows ``adapter.rows`` gives for versions
    ``z`` [B, C, X, Y, Z] of ``scan`` on its preprocessed grid (the rows of the FeatureTable),
    with the graph back to ``z``: the target :func:`attribution_map` attributes.

    ``scan`` is a :class:`Scan` or a sample id of the cohort (``data``, default the adapter's);
    ``prepared``, its ``adapter.prepare_scan`` when already made. ``sae`` must be on the
    model's device (``bioviz.provenance.on_model`` puts it there). The layer must run once per
    forward pass: an adapter with sliding windows (``roi_size``) is refused.
    """
    from .adapter import ScanInfo
    from .windows import padded_shape

    if getattr(adapter, "windows", None) is not None:
        raise InputError(f"refined feature maps attribute through one forward pass of the whole scan; "
                         f"this adapter runs sliding windows (roi_size={list(adapter.windows.roi)}), "
                         "so the feature's rows are stitched from several passes")
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < sae.d_sae:
        raise InputError(f"feature={feature!r}: expected an integer in [0, {sae.d_sae}) (the SAE's latents)")
    cohort = adapter.read_cohort(data) if data is not None else adapter.cohort
    if cohort is None:
        raise InputError("the adapter has no cohort yet; pass data= (the manifest of the scans)")
    scan = cohort.find(scan) if isinstance(scan, str) else scan
    img = (prepared or adapter.prepare_scan(scan))["image"]
    shape = tuple(img.shape[1:])
    padded = padded_shape(shape, adapter.divisor)
    pads = [p for s, t in zip(reversed(shape), reversed(padded)) for p in (0, t - s)]
    info = ScanInfo(scan.index, scan.sample_id, str(scan.image), shape, padded,
                    np.asarray(img.affine, np.float64), None, row=scan.row)
    meta = cohort.meta([scan.index])

    def f(z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        seen = []

        def keep(t):
            seen.append(t)  # no detach: the gradient must reach the input
            return t

        # captum stacks path points as a batch: one ScanInfo per point, all of this scan
        batch = Batch(F.pad(z, pads), pd.concat([meta] * n, ignore_index=True), {"scans": [info] * n})
        adapter.run(batch, splice={layer: keep})
        if len(seen) != 1:
            raise InputError(f"layer {layer!r} ran {len(seen)} times in one forward pass; a refined "
                             "feature map needs a layer that runs once")
        rows, _ = adapter.rows(layer, seen[0], batch)
        # rows come item by item, the same number per item (one scan)
        return sae.encode(rows)[:, int(feature)].reshape(n, -1).sum(1)

    return f


def refined_to_nifti(adapter, sample_id: str, baseline, *, data=None, sae=None, feature: int | None = None,
                     layer: str | None = None, **kwargs):
    """:func:`attribution_map` of scan ``sample_id`` as a ``nibabel`` image on the original
    scan's grid (through the inverse of the preprocessing, like ``VolumeAdapter.to_nifti``).

    Without ``sae`` the class logit (``target``) is attributed; with ``sae`` and ``feature``,
    the SAE feature's code summed over the scan's rows at ``layer`` (default: the SAE's
    layer). ``kwargs`` go to :func:`attribution_map`.
    """
    import nibabel as nib

    from bioviz.provenance import on_model

    cohort = adapter.read_cohort(data) if data is not None else adapter.cohort
    if cohort is None:
        raise InputError("the adapter has no cohort yet; pass data= (the manifest of the scans)")
    scan = cohort.find(sample_id)
    if sae is not None:
        if feature is None:
            raise InputError("feature: give the SAE latent to attribute (an integer)")
        where, _, _, sae = on_model(sae, adapter, layer)
        kwargs["target"] = feature_target(adapter, sae, where.layer, feature, scan, data=cohort)
    pp = adapter.prepare_scan(scan)
    back = refined_array(adapter, pp, baseline, **kwargs)
    return nib.Nifti1Image(back, np.asarray(pp["original"].affine, np.float64))


def refined_array(adapter, pp: dict, baseline, **kwargs) -> np.ndarray:
    """:func:`attribution_map` of a prepared scan (``adapter.prepare_scan``) as a float32 array
    on its original grid; ``kwargs`` go to :func:`attribution_map`."""
    from .preprocess import invert

    amap = attribution_map(adapter.model, pp["image"].as_tensor(), baseline, **kwargs)
    return invert(adapter.chain, pp["image"], amap)[0].detach().cpu().numpy().astype(np.float32)


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
