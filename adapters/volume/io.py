"""Reading one scan (NIfTI file or DICOM series folder) with MONAI's readers, keeping the
affine and header in a ``MetaTensor``, and refusing what a 3D model cannot take: unreadable
or truncated files, 2D or 4D images, NaN voxels, masks on another grid, folders that mix
DICOM series. Every refusal is a :class:`ScanError` that names the file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from bioviz.errors import InputError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: a mask and its image count as the same grid when their affines agree this closely (mm)
GRID_TOLERANCE_MM = 1e-3


class ScanError(InputError):
    """A scan that cannot be used; the message names the file and what is wrong."""


_LOADERS: dict = {}


def _slice_order_by_position(slices) -> list[int] | None:
    """Indices of ``slices`` (pydicom datasets of one series) in order of position along the
    slice normal (ImagePositionPatient · (row × column direction)); None when a slice lacks
    the tags."""
    try:
        keys = []
        for ds in slices:
            iop = [float(v) for v in ds.ImageOrientationPatient]
            keys.append(float(np.dot(np.cross(iop[:3], iop[3:]), [float(v) for v in ds.ImagePositionPatient])))
    except (AttributeError, TypeError, ValueError):
        return None
    return sorted(range(len(keys)), key=keys.__getitem__)


def _position_sorted_pydicom_reader():
    from monai.data import PydicomReader

    class PositionSortedPydicomReader(PydicomReader):
        """MONAI's PydicomReader stacks a series in InstanceNumber order, which scanners give
        in acquisition order (interleaved, or descending) rather than in space; stack the
        slices by position along the slice normal instead, as dcm2niix and ITK do."""

        def _combine_dicom_series(self, data, filenames):
            data = list(data)
            order = _slice_order_by_position(data)
            if order is not None:
                for rank, i in enumerate(order):
                    data[i].InstanceNumber = rank + 1  # the key MONAI stacks by
            return super()._combine_dicom_series(data, filenames)

    return PositionSortedPydicomReader()


def _loader(kind: str):
    # one LoadImage per reader kind: building one registers (and probes) every MONAI reader
    if kind not in _LOADERS:
        from monai.data import NibabelReader
        from monai.transforms import LoadImage

        reader = _position_sorted_pydicom_reader() if kind == "dicom" else NibabelReader()
        _LOADERS[kind] = LoadImage(reader=reader, image_only=True, dtype=np.float32)
    return _LOADERS[kind]


def load_scan(path, what: str = "image"):
    """A 3D ``MetaTensor`` (no channel axis) with the file's affine, or a :class:`ScanError`."""
    path = Path(path)
    if path.is_dir():
        check_dicom_series(path)
        kind = "dicom"
    elif path.name.lower().endswith(NIFTI_SUFFIXES):
        kind = "nifti"
    elif path.suffix.lower() == ".dcm":
        raise ScanError(f"{path}: a single DICOM file is one slice; give the series folder as the {what} path")
    else:
        raise ScanError(f"{path}: unsupported {what} format; expected a NIfTI file (.nii, .nii.gz) "
                        "or a folder holding one DICOM series")
    with warnings.catch_warnings():  # MONAI's DICOM plugin warns about optional codecs
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        try:
            img = _loader(kind)(str(path))
        except Exception as e:  # zlib/EOF/nibabel/pydicom errors all mean "cannot read this file"
            cause = e.__cause__ or e
            text = str(cause).splitlines()[0][:200] if str(cause) else "truncated or corrupt"
            raise ScanError(f"{path}: cannot read the {what} ({type(cause).__name__}: {text})") from None
    return _check(img, path, what)


def _check(img, path: Path, what: str):
    shape = tuple(img.shape)
    while len(shape) > 3 and shape[-1] == 1:  # (x, y, z, 1): a 3D image saved as 4D
        img = img[..., 0]
        shape = shape[:-1]
    if len(shape) > 3:
        raise ScanError(f"{path}: the {what} is {len(shape)}D {shape}; a 3D volume is expected "
                        "(split time series or channels into separate scans)")
    if len(shape) < 3 or min(shape) < 2:
        raise ScanError(f"{path}: the {what} is 2D {shape}; a 3D volume is expected")
    bad = ~torch.isfinite(img.as_tensor())
    if bad.any():
        raise ScanError(f"{path}: the {what} has {int(bad.sum())} NaN/Inf voxels of {img.numel()}")
    return img


def check_same_grid(image, mask, image_path, mask_path) -> None:
    """Refuse a mask whose voxel grid (shape and affine) is not its image's."""
    if tuple(image.shape) != tuple(mask.shape):
        raise ScanError(f"{mask_path}: mask shape {tuple(mask.shape)} differs from image "
                        f"{image_path} shape {tuple(image.shape)}; the mask must be on the image's grid")
    # compare where the grids put their corner voxels, in mm
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in image.shape], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    a = np.asarray(image.affine, dtype=np.float64) @ corners
    b = np.asarray(mask.affine, dtype=np.float64) @ corners
    off = float(np.abs(a - b).max())
    if off > GRID_TOLERANCE_MM:
        raise ScanError(f"{mask_path}: mask affine differs from image {image_path} by up to "
                        f"{off:.3g} mm; the mask must be on the image's grid")


def check_dicom_series(folder: Path) -> str:
    """The folder's one SeriesInstanceUID; a folder with none or several is a ScanError."""
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    series: dict[str, list[str]] = {}
    unreadable = []
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # not DICOM (a README, a thumbnail): note and ignore
            unreadable.append(p.name)
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "?")), []).append(p.name)
    if not series:
        raise ScanError(f"{folder}: no DICOM files found in the folder")
    if len(series) > 1:
        parts = "; ".join(f"{uid} ({len(n)} files, e.g. {n[0]})" for uid, n in series.items())
        raise ScanError(f"{folder}: the folder mixes {len(series)} DICOM series: {parts}; "
                        "give each series its own folder and manifest row")
    if unreadable:
        log.info("%s: ignored %d non-DICOM files", folder, len(unreadable))
    return next(iter(series))
