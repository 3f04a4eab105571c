"""A PNG montage of a map over its anatomy: axial, coronal and sagittal slices through the
map's peak, drawn in RAS orientation (patient's right on the viewer's right, superior up),
with the ground-truth mask as a contour when there is one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bioviz.errors import InputError


def montage(anatomy, overlay, path, *, mask=None, title: str = "", threshold: float | None = None,
            dpi: int = 110) -> Path:
    """Draw ``overlay`` (a nibabel image on ``anatomy``'s grid) over ``anatomy``; the overlay
    shows where it is at least ``threshold`` (default: its 90th percentile inside the anatomy)."""
    import nibabel as nib
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    anat_c = nib.as_closest_canonical(anatomy)
    over_c = nib.as_closest_canonical(overlay)
    if anat_c.shape[:3] != over_c.shape[:3]:
        raise InputError(f"overlay grid {over_c.shape} differs from the anatomy grid {anat_c.shape}")
    a = np.asarray(anat_c.dataobj, dtype=np.float32)
    m = np.nan_to_num(np.asarray(over_c.dataobj, dtype=np.float32), nan=-np.inf)
    k = np.asarray(nib.as_closest_canonical(mask).dataobj) > 0 if mask is not None else None
    peak = np.unravel_index(int(np.argmax(m)), m.shape)
    if threshold is None:
        inside = a > np.percentile(a, 20)
        threshold = float(np.percentile(m[inside & np.isfinite(m)], 90)) if inside.any() else float(m.max())
    zooms = anat_c.header.get_zooms()[:3]
    lo, hi = np.percentile(a, [1, 99.5])
    finite = m[np.isfinite(m)]
    vmax = float(finite.max()) if finite.size else 1.0
    views = [("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2))]
    centres = [("peak", peak)]
    if k is not None and k.any() and not k[peak]:  # a second row through the mask's centre
        centres.append(("mask centre", tuple(int(round(c)) for c in np.argwhere(k).mean(0))))
    fig = Figure(figsize=(12, 4.2 * len(centres)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(centres), 3))
    im = None
    for row, (label, point) in zip(axes, centres):
        for ax, (name, axis, (h, v)) in zip(row, views):
            sl = [slice(None)] * 3
            sl[axis] = point[axis]
            a2, m2 = a[tuple(sl)].T, m[tuple(sl)].T  # rows = vertical axis, columns = horizontal
            aspect = zooms[v] / zooms[h]
            ax.imshow(a2, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect)
            shown = np.ma.masked_where(~(m2 >= threshold), m2)
            im = ax.imshow(shown, cmap="hot", origin="lower", vmin=threshold,
                           vmax=max(vmax, threshold + 1e-6), alpha=0.75, aspect=aspect)
            if k is not None and k[tuple(sl)].any():
                ax.contour(k[tuple(sl)].T.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
            ax.axhline(point[v], color="cyan", lw=0.5, alpha=0.6)
            ax.axvline(point[h], color="cyan", lw=0.5, alpha=0.6)
            ax.set_title(f"{name} through the {label} (slice {point[axis]})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if name != "sagittal":
                ax.text(0.01, 0.5, "L", transform=ax.transAxes, color="w", fontsize=8, va="center")
                ax.text(0.97, 0.5, "R", transform=ax.transAxes, color="w", fontsize=8, va="center")
    world = anat_c.affine @ np.array([*peak, 1.0])
    fig.suptitle(f"{title}  peak at ({world[0]:.1f}, {world[1]:.1f}, {world[2]:.1f}) mm RAS"
                 + ("  (green: mask)" if k is not None else ""), fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label=f"map value (shown ≥ {threshold:.3g})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path
