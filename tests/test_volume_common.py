"""Shared small data for the volume tests (no tests here): real NIfTI files written in the
test's folder from nilearn's MNI152 template and nibabel's test image, small MONAI network
configs built with random weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SEGRESNET = {"class_path": "monai.networks.nets.SegResNet",
             "init_args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8,
                           "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}}


def mni(resolution_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 template resampled to ``resolution_mm`` (array, affine)."""
    from nilearn.datasets import load_mni152_template
    from scipy.ndimage import zoom

    t = load_mni152_template(resolution=2)
    data = zoom(np.asarray(t.get_fdata(), np.float32), 2.0 / resolution_mm, order=1)
    aff = np.diag([resolution_mm] * 3 + [1.0])
    aff[:3, 3] = t.affine[:3, 3]
    return data * 1000, aff


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def oblique_mni(path: Path, zooms=(2.6, 2.1, 4.0), shape=(40, 48, 20)) -> Path:
    """The template sampled on an oblique (rotated 20° and 12°), anisotropic grid."""
    from nilearn.datasets import load_mni152_template
    from scipy.ndimage import map_coordinates

    t = load_mni152_template(resolution=2)
    aff = np.eye(4)
    aff[:3, :3] = rotation(2, 20) @ rotation(0, 12) @ np.diag(zooms)
    aff[:3, 3] = np.array([0, -18, 18.0]) - aff[:3, :3] @ ((np.array(shape) - 1) / 2)
    ijk = np.indices(shape).reshape(3, -1)
    xyz = aff[:3, :3] @ ijk + aff[:3, 3:4]
    src = np.linalg.inv(t.affine) @ np.vstack([xyz, np.ones(xyz.shape[1])])
    vol = map_coordinates(np.asarray(t.get_fdata(), np.float32), src[:3], order=1).reshape(shape)
    nib.save(nib.Nifti1Image((vol * 1000).astype(np.float32), aff), str(path))
    return path


def las_anatomical(folder: Path) -> Path:
    """nibabel's ``anatomical.nii`` (a real LAS-oriented brain scan), copied into ``folder``."""
    from nibabel.testing import data_path

    dst = folder / "anatomical.nii"
    shutil.copy(os.path.join(data_path, "anatomical.nii"), dst)
    return dst


def write_cohort(folder: Path, n: int = 3, *, resolution_mm: float = 6.0, masks: bool = True,
                 seed: int = 0) -> Path:
    """``n`` small brain scans (template + noise, with a box 'lesion' mask) and a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    data, aff = mni(resolution_mm)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = data * rng.uniform(0.8, 1.2) + rng.normal(0, 10, data.shape) * (data > 0)
        nib.save(nib.Nifti1Image(img.astype(np.float32), aff), str(folder / f"s{i}.nii.gz"))
        row = {"subject_id": f"S{i}", "image": f"s{i}.nii.gz", "age": 50.0 + i, "group": "ab"[i % 2]}
        if masks:
            m = np.zeros(data.shape, np.uint8)
            c = np.array(data.shape) // 2
            m[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 1
            nib.save(nib.Nifti1Image(m, aff), str(folder / f"s{i}_mask.nii.gz"))
            row["mask"] = f"s{i}_mask.nii.gz"
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"
