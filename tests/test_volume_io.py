import copy
import json
import logging
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from test_volume_common import SEGRESNET, write_cohort

import bioviz as bv
from bioviz.adapters.volume import ScanError, VolumeAdapter, load_scan
from bioviz.adapters.volume.io import check_same_grid

pytestmark = pytest.mark.usefixtures("one_thread")


def dicom_series(folder, n=5, uid=None, start=0):
    """``n`` slices of pydicom's CT_small, 5 mm apart, as one series."""
    folder.mkdir(parents=True, exist_ok=True)
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = uid or generate_uid()
    for k in range(n):
        ds = copy.deepcopy(src)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), start + k + 1
        x, y, z = (float(v) for v in src.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * (start + k)]
        ds.PixelData = (src.pixel_array.astype(np.int16) + 10 * (start + k)).tobytes()
        ds.save_as(folder / f"slice{start + k:03d}.dcm")
    return folder


def test_dicom_series_loads_in_scanner_coordinates(tmp_path):
    img = load_scan(dicom_series(tmp_path / "ct", 5))
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert tuple(img.shape) == (128, 128, 5)
    corner = np.asarray(img.affine) @ np.array([0, 0, 0, 1.0])
    x, y, z = (float(v) for v in src.ImagePositionPatient)
    np.testing.assert_allclose(corner[:3], [-x, -y, z], atol=1e-3)  # DICOM LPS → RAS
    assert float(img[..., 4].mean() - img[..., 0].mean()) == pytest.approx(40, abs=1e-3)  # slice order kept


@pytest.mark.parametrize("orientation", ["axial", "sagittal"])
def test_case17_dicom_slices_are_stacked_by_position_along_the_slice_normal(tmp_path, orientation):
    """File names and InstanceNumbers in neither order of position (as an interleaved
    acquisition numbers them): slice k of the volume must be the file at the k-th position
    along the slice normal, and the affine must put it there."""
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    iop = [1.0, 0, 0, 0, 1, 0] if orientation == "axial" else [0.0, 1, 0, 0, 0, -1]
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([float(v) for v in src.ImagePositionPatient])
    uid, folder = generate_uid(), tmp_path / "series"
    folder.mkdir()
    names = ["e", "a", "d", "b", "c"]  # file k (k-th position along the normal) is names[k]
    instance = [3, 1, 5, 2, 4]
    for k in range(5):
        ds = copy.deepcopy(src)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), instance[k]
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [float(v) for v in origin + 5.0 * k * normal]
        ds.PixelData = (src.pixel_array.astype(np.int16) + 10 * k).tobytes()
        ds.save_as(folder / f"{names[k]}.dcm")
    img = load_scan(folder)
    assert tuple(img.shape) == (128, 128, 5)
    means = np.array([float(img[..., s].mean()) for s in range(5)])
    k_of = np.rint((means - means.min()) / 10).astype(int)  # which file each slice holds
    assert sorted(k_of) == [0, 1, 2, 3, 4]
    aff = np.asarray(img.affine)
    for s in range(5):  # each slice sits where its file says it is (DICOM LPS → RAS)
        want = (origin + 5.0 * k_of[s] * normal) * [-1, -1, 1]
        np.testing.assert_allclose(aff[:3, :3] @ [0, 0, s] + aff[:3, 3], want, atol=1e-3)


def test_bad_files_are_named(tmp_path):
    good = write_cohort(tmp_path, n=1, masks=False).parent / "s0.nii.gz"
    raw = good.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti at all" * 10)
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.float32), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    nan = np.ones((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    from nibabel.testing import data_path

    cases = {"trunc.nii.gz": "cannot read the image", "junk.nii.gz": "cannot read the image",
             "flat.nii.gz": r"is 2D \(20, 20\)", "nan.nii.gz": "has 1 NaN/Inf voxels",
             os.path.join(data_path, "example4d.nii.gz"): r"is 4D \(128, 96, 24, 2\)"}
    for name, msg in cases.items():
        path = tmp_path / name
        with pytest.raises(ScanError, match=msg) as e:
            load_scan(path)
        assert str(path) in str(e.value)
    dicom_series(tmp_path / "mixed", 3)
    dicom_series(tmp_path / "mixed", 2, start=3)  # a second series in the same folder
    with pytest.raises(ScanError, match=r"mixed: the folder mixes 2 DICOM series"):
        load_scan(tmp_path / "mixed")


def test_mask_on_another_grid_is_refused(tmp_path):
    write_cohort(tmp_path, n=1)
    img = load_scan(tmp_path / "s0.nii.gz")
    m = nib.load(tmp_path / "s0_mask.nii.gz")
    shifted = m.affine.copy()
    shifted[0, 3] += 3.0
    nib.save(nib.Nifti1Image(np.asarray(m.dataobj), shifted), str(tmp_path / "moved.nii.gz"))
    check_same_grid(img, load_scan(tmp_path / "s0_mask.nii.gz"), "s0", "s0_mask")
    with pytest.raises(ScanError, match=r"moved\.nii\.gz: mask affine differs from image s0 by up to 3 mm"):
        check_same_grid(img, load_scan(tmp_path / "moved.nii.gz"), "s0", tmp_path / "moved.nii.gz")


def _bad_cohort(tmp_path):
    write_cohort(tmp_path, n=2, masks=False)
    dicom_series(tmp_path / "ct", 4)
    (tmp_path / "broken.nii.gz").write_bytes((tmp_path / "s0.nii.gz").read_bytes()[:500])
    from nibabel.testing import data_path

    rows = [("S0", "s0.nii.gz"), ("CT", "ct"), ("BROKEN", "broken.nii.gz"), ("S1", "s1.nii.gz"),
            ("TIME", os.path.join(data_path, "example4d.nii.gz"))]
    pd.DataFrame(rows, columns=["subject_id", "image"]).assign(age=[1.0, 2.0, 3.0, 4.0, 5.0]).to_csv(
        tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv"


def test_bad_scan_mid_cohort_is_skipped_and_counted(tmp_path, caplog):
    manifest = _bad_cohort(tmp_path)
    ad = VolumeAdapter(SEGRESNET, preprocess={"preset": "mri", "pixdim": [6, 6, 6]}, allow_outside=True)
    # batches: [S0, CT] (two grids: run one by one), [BROKEN, S1], [TIME] (nothing left to run)
    with caplog.at_level(logging.WARNING):
        st = bv.extract(ad, manifest, "down_layers.1", tmp_path / "store", batch_size=2, progress=False)
    assert st.obs["subject_id"].unique().tolist() == ["S0", "CT", "S1"]  # the DICOM series, too
    assert [s["sample_id"] for s in ad.skipped] == ["BROKEN", "TIME"]
    assert "skipped scan BROKEN" in caplog.text and "is 4D" in caplog.text and "[2 skipped so far]" in caplog.text


def test_bad_scan_with_raise_names_it_and_keeps_completed_scans(tmp_path):
    manifest = _bad_cohort(tmp_path)
    ad = VolumeAdapter(SEGRESNET, preprocess={"preset": "mri", "pixdim": [6, 6, 6]}, on_bad_scan="raise",
                       allow_outside=True)
    kw = {"batch_size": 1, "chunk_rows": 64, "progress": False}
    with pytest.raises(ScanError, match=r"manifest row 3 \(sample 'BROKEN'\): .*broken\.nii\.gz: cannot read"):
        bv.extract(ad, manifest, "down_layers.1", tmp_path / "store", **kw)
    assert json.loads((tmp_path / "store" / "_progress.json").read_text())["n_chunks"] >= 1
    (tmp_path / "broken.nii.gz").write_bytes((tmp_path / "s1.nii.gz").read_bytes())  # the user fixes it
    with pytest.raises(ScanError, match=r"manifest row 5 \(sample 'TIME'\): .*example4d\.nii\.gz: the image is 4D"):
        bv.extract(ad, manifest, "down_layers.1", tmp_path / "store", **kw)  # resumes, then the next one
    # finish the same store, skipping what cannot be read: the scans already written stay
    ad = VolumeAdapter(ad.model, preprocess={"preset": "mri", "pixdim": [6, 6, 6]}, allow_outside=True)
    st = bv.extract(ad, manifest, "down_layers.1", tmp_path / "store", **kw)
    assert st.obs["subject_id"].unique().tolist() == ["S0", "CT", "BROKEN", "S1"]
