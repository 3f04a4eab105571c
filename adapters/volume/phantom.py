"""A brain-MRI-like demo cohort with planted ground truth, built from nilearn's MNI152
template and brain mask (both ship with nilearn; nothing is downloaded).

Each subject is the template warped by a smooth random deformation (plus age-related
shrinkage), with a smooth bias field, scanner gain and noise. Covariates: age, sex, and an
acquisition site whose intensity bias (gain and tissue offset) and storage orientation (site
B writes LAS, as some scanners do) correlate with nothing clinical. Label-positive subjects
carry a lesion — a soft ball at a configurable MNI location, size and contrast, warped with
the subject's anatomy — whose mask is saved as ground truth. The cohort is written as real
NIfTI files and a ``manifest.csv``; the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from bioviz.errors import InputError
from bioviz.lock import LOCK_NAME, ArtifactLock

SITES = {"site-A": (1.00, 0.0, "RAS"), "site-B": (1.15, 40.0, "LAS"), "site-C": (0.88, -30.0, "RAS")}
INTENSITY = 1000.0  # template 1.0 → 1000 stored units (int16), like many T1 scans
GENERATOR = "bioviz.adapters.volume.make_brain_cohort"
# what a cohort folder holds: overwrite=True deletes these and nothing else
_OWN = {"images": re.compile(r"sub-\d+\.nii\.gz"), "masks": re.compile(r"sub-\d+_lesion\.nii\.gz"),
        "manifest.csv": None, "cohort.json": None}


class CohortFolderError(InputError, FileExistsError):
    """``out_dir`` holds something ``make_brain_cohort`` may not write over."""


def make_brain_cohort(out_dir, n_subjects: int = 40, *, seed: int = 0, voxel_mm: float = 2.0,
                      positive_fraction: float = 0.5,
                      lesion_centre_mm: tuple[float, float, float] = (28.0, -18.0, 22.0),
                      lesion_radius_mm: float = 9.0, lesion_contrast: float = -0.45,
                      lesion_jitter_mm: float = 3.0, deformation_mm: float = 3.0, noise: float = 0.03,
                      overwrite: bool = False, progress: bool = True) -> Path:
    """Write the cohort to ``out_dir`` and return the manifest's path.

    Parameters
    ----------
    out_dir : str or Path
        Folder for ``images/``, ``masks/``, ``manifest.csv`` and ``cohort.json``.
    n_subjects : int
        Number of scans (one per subject).
    seed : int
        Everything random derives from it; subject ``i`` depends only on (seed, i).
    voxel_mm : float
        Voxel size of the written scans (the template is 2 mm).
    positive_fraction : float
        Share of label-positive subjects (exact, rounded).
    lesion_centre_mm, lesion_radius_mm, lesion_contrast, lesion_jitter_mm : float
        The planted lesion in MNI mm (RAS); contrast is the relative intensity change
        (-0.45 = darker, like a T1 hypointensity); the centre moves by N(0, jitter) per subject.
    deformation_mm : float
        Size of the smooth random deformation.
    noise : float
        Noise sd relative to white matter.
    overwrite : bool
        Replace a cohort already in ``out_dir`` that this function wrote (its
        ``cohort.json`` says so), holding only the files it writes; never anything else.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``out_dir / "manifest.csv"``.
    """
    out = Path(out_dir)
    if not 0 < positive_fraction < 1:
        raise InputError(f"positive_fraction={positive_fraction}: expected a value in (0, 1)")
    if int(n_subjects) < 2:
        raise InputError(f"n_subjects={n_subjects}: expected at least 2")
    if voxel_mm <= 0 or lesion_radius_mm <= 0:
        raise InputError("voxel_mm and lesion_radius_mm must be positive")
    manifest = out / "manifest.csv"
    if out.exists() and not out.is_dir():
        raise CohortFolderError(f"{out} is a file; make_brain_cohort writes a folder")
    if out.exists() and any(e.name != LOCK_NAME for e in out.iterdir()):
        _check_own_cohort(out)
        if not overwrite:
            raise CohortFolderError(f"{out} is not empty (a cohort make_brain_cohort wrote); pass "
                                    "overwrite=True to replace the cohort")
    out.mkdir(parents=True, exist_ok=True)
    with ArtifactLock(out, "cohort"):
        # a new or empty folder has nothing to replace (its lock file is all it holds)
        if overwrite and any(e.name != LOCK_NAME for e in out.iterdir()):
            _clear_cohort(out)
        return _write_cohort(out, manifest, n_subjects, seed, voxel_mm, positive_fraction,
                             lesion_centre_mm, lesion_radius_mm, lesion_contrast, lesion_jitter_mm,
                             deformation_mm, noise, progress)


def _check_own_cohort(out: Path) -> None:
    """Refuse a folder this function did not write, or one holding files it does not write."""
    try:
        info = json.loads((out / "cohort.json").read_text())
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or info.get("generator") != GENERATOR:
        raise CohortFolderError(
            f"{out} is not empty and is not a cohort make_brain_cohort wrote (no cohort.json with "
            f"generator {GENERATOR!r}); it is never written over, even with overwrite=True: "
            "choose an empty or new folder")
    unknown = []
    for e in sorted(out.iterdir()):
        if e.name == LOCK_NAME:
            continue
        if e.name not in _OWN or (_OWN[e.name] is None) == e.is_dir():
            unknown.append(e.name)
        elif _OWN[e.name] is not None:
            unknown += [f"{e.name}/{f.name}" for f in sorted(e.iterdir())
                        if not (f.is_file() and _OWN[e.name].fullmatch(f.name))]
    if unknown:
        raise CohortFolderError(
            f"{out} holds {', '.join(unknown)}, which make_brain_cohort did not write; it deletes "
            "only its own files, so nothing was deleted: move them out or choose another folder")


def _clear_cohort(out: Path) -> None:
    _check_own_cohort(out)  # again, under the lock
    for name in ("images", "masks", "manifest.csv", "cohort.json"):  # the marker last
        e = out / name
        if e.is_dir():
            shutil.rmtree(e)
        elif e.exists():
            e.unlink()


def _write_cohort(out, manifest, n_subjects, seed, voxel_mm, positive_fraction, lesion_centre_mm,
                  lesion_radius_mm, lesion_contrast, lesion_jitter_mm, deformation_mm, noise,
                  progress) -> Path:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    tpl = load_mni152_template(resolution=2)
    brain = load_mni152_brain_mask(resolution=2)
    t_data = np.asarray(tpl.get_fdata(), dtype=np.float32)
    b_data = np.asarray(brain.get_fdata(), dtype=np.float32)
    t_aff = np.asarray(tpl.affine, dtype=np.float64)
    shape = tuple(int(round(s * 2.0 / voxel_mm)) for s in t_data.shape)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = t_aff[:3, 3]
    if not _inside(b_data, t_aff, lesion_centre_mm):
        raise InputError(f"lesion_centre_mm={tuple(lesion_centre_mm)} is outside the MNI brain mask")
    # the marker first, so that a run stopped half-way can be replaced (rewritten in full last)
    (out / "cohort.json").write_text(json.dumps({"generator": GENERATOR, "complete": False}))
    (out / "images").mkdir(exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)

    rng = np.random.default_rng([seed, 0])
    n = int(n_subjects)
    n_pos = int(round(n * positive_fraction))
    labels = np.zeros(n, dtype=int)
    labels[rng.permutation(n)[:n_pos]] = 1
    ages = np.round(rng.uniform(40, 85, n), 1)
    sexes = rng.choice(["F", "M"], n)
    sites = rng.choice(list(SITES), n)
    rows, details = [], []
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="brain cohort", unit="scan")
    for i in it:
        sid = f"sub-{i + 1:03d}"
        img, lesion, centre = _subject(
            np.random.default_rng([seed, i + 1]), t_data, b_data, t_aff, shape, affine, ages[i],
            sites[i], labels[i], lesion_centre_mm, lesion_radius_mm, lesion_contrast,
            lesion_jitter_mm, deformation_mm, noise)
        aff = affine.copy()
        if SITES[sites[i]][2] == "LAS":  # stored with the first axis flipped, affine to match
            img, lesion = img[::-1], lesion[::-1]
            aff = aff @ np.array([[-1, 0, 0, shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        _save(np.ascontiguousarray(img), aff, out / "images" / f"{sid}.nii.gz", np.int16)
        mask_rel = ""
        if labels[i]:
            mask_rel = f"masks/{sid}_lesion.nii.gz"
            _save(np.ascontiguousarray(lesion), aff, out / mask_rel, np.uint8)
        rows.append({"subject_id": sid, "image": f"images/{sid}.nii.gz", "mask": mask_rel,
                     "label": int(labels[i]), "age": float(ages[i]), "sex": str(sexes[i]),
                     "site": str(sites[i])})
        details.append({"subject_id": sid, "lesion_centre_mm": centre, "lesion_voxels": int(lesion.sum())})
    import pandas as pd

    pd.DataFrame(rows).to_csv(manifest, index=False)
    params = {"generator": GENERATOR, "n_subjects": n, "seed": seed,
              "voxel_mm": voxel_mm, "shape": list(shape), "positive_fraction": positive_fraction,
              "lesion_centre_mm": list(lesion_centre_mm), "lesion_radius_mm": lesion_radius_mm,
              "lesion_contrast": lesion_contrast, "lesion_jitter_mm": lesion_jitter_mm,
              "deformation_mm": deformation_mm, "noise": noise,
              "sites": {k: {"gain": v[0], "offset": v[1], "orientation": v[2]} for k, v in SITES.items()},
              "subjects": details}
    (out / "cohort.json").write_text(json.dumps(params, indent=1))
    return manifest


def _inside(mask, aff, mm) -> bool:
    ijk = np.rint(np.linalg.inv(aff) @ np.array([*mm, 1.0]))[:3].astype(int)
    return bool(np.all(ijk >= 0) and np.all(ijk < mask.shape) and mask[tuple(ijk)] > 0)


def _smooth_field(rng, coarse, shape, scale):
    from scipy.ndimage import zoom

    field = rng.standard_normal(coarse) * scale
    # cubic to a quarter-resolution grid (smooth), then linear to full size (fast)
    mid = [max(c, s // 4) for s, c in zip(shape, coarse)]
    field = zoom(field, [m / c for m, c in zip(mid, coarse)], order=3, mode="nearest")
    return zoom(field, [s / m for s, m in zip(shape, mid)], order=1, mode="nearest")


def _subject(rng, t_data, b_data, t_aff, shape, affine, age, site, label, l_centre, l_radius,
             l_contrast, l_jitter, deform, noise):
    from scipy.ndimage import map_coordinates

    # world mm of every output voxel, then where it comes from in template space
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    centre = np.array([0.0, -18.0, 8.0], dtype=np.float32)[:, None]  # about the brain's middle
    shrink = 1.0 + 0.003 * (age - 62.0)  # older brains look smaller: sample further out
    disp = np.stack([_smooth_field(rng, (4, 5, 4), shape, deform).reshape(-1) for _ in range(3)])
    src = centre + (xyz - centre) * shrink + disp.astype(np.float32)
    vox = np.linalg.inv(t_aff)[:3, :3].astype(np.float32) @ src + np.linalg.inv(t_aff)[:3, 3:4].astype(np.float32)
    img = map_coordinates(t_data, vox, order=1, cval=0.0).reshape(shape)
    brain = map_coordinates(b_data, vox, order=1, cval=0.0).reshape(shape) > 0.5
    lesion = np.zeros(shape, dtype=bool)
    c = np.asarray(l_centre, dtype=np.float64) + rng.normal(0, l_jitter, 3)
    if label:
        dist = np.sqrt(((src - c[:, None].astype(np.float32)) ** 2).sum(0)).reshape(shape)
        soft = np.clip((l_radius + 1.5 - dist) / 3.0, 0, 1)  # 3 mm soft edge
        img = img * (1 + l_contrast * soft * brain)
        lesion = (soft > 0.5) & brain
    gain, offset, _ = SITES[site]
    bias = np.exp(0.08 * _smooth_field(rng, (3, 3, 3), shape, 1.0))
    head = img > 0.02
    img = INTENSITY * gain * rng.normal(1.0, 0.05) * img * bias + offset * brain
    img = img + head * rng.normal(0, noise * INTENSITY, shape)
    img = np.where(head, np.clip(img, 0, None), 0.0)
    # the lesion's centre in the subject's own space: the output voxel nearest the planted point
    near = int(np.argmin(((src - c[:, None].astype(np.float32)) ** 2).sum(0)))
    centre_mm = [float(v) for v in xyz[:, near]]
    return np.rint(img).astype(np.int16), lesion.astype(np.uint8), centre_mm


def _save(data, affine, path, dtype):
    import nibabel as nib

    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, str(path))
