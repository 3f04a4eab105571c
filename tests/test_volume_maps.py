import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_volume_common import SEGRESNET, las_anatomical, oblique_mni, write_cohort

import bioviz as bv
from bioviz.adapters.volume import VolumeAdapter, map_agreement

pytestmark = pytest.mark.usefixtures("one_thread")


def _round_trip(tmp_path, **adapter_kw):
    """A map made of each scan's own voxels (what the first convolution receives), sent
    through preprocessing, rows and back onto the original grid."""
    las = las_anatomical(tmp_path)
    obl = oblique_mni(tmp_path / "oblique.nii.gz")
    pd.DataFrame({"subject_id": ["las", "oblique"], "image": [las.name, obl.name]}).to_csv(tmp_path / "m.csv", index=False)
    ad = VolumeAdapter(SEGRESNET, preprocess="mri", **adapter_kw)  # the preset as is: 1 mm, z-score
    st = bv.extract(ad, tmp_path / "m.csv", "convInit.conv", tmp_path / "s", inputs=True, progress=False)
    out = {}
    for sid, path in (("las", las), ("oblique", obl)):
        written = ad.write_map(st.array()[:, 0], st.obs, sid, tmp_path / "maps" / f"{sid}.nii.gz")
        back, orig = nib.load(written["nifti"]), nib.load(path)
        assert back.shape == orig.shape and np.allclose(back.affine, orig.affine, atol=1e-5)
        o = orig.get_fdata()
        anatomy = o > 0.1 * np.percentile(o, 99)
        out[sid] = (np.corrcoef(o[anatomy], back.get_fdata()[anatomy])[0, 1], written, back)
    return out


def test_round_trip_onto_las_and_oblique_anisotropic_scans(tmp_path):
    res = _round_trip(tmp_path)
    assert nib.aff2axcodes(nib.load(tmp_path / "anatomical.nii").affine) == ("L", "A", "S")
    assert res["las"][0] >= 0.99 and res["oblique"][0] >= 0.99, {k: v[0] for k, v in res.items()}
    assert int(res["las"][2].header["sform_code"]) == int(nib.load(tmp_path / "anatomical.nii").header["sform_code"])
    import matplotlib.image

    png = matplotlib.image.imread(res["oblique"][1]["png"])  # the montage: anatomy + a coloured map
    rgb = png[..., :3]
    assert png.shape[1] > 800 and ((rgb[..., 0] - rgb[..., 2]) > 0.3).mean() > 0.005


@pytest.mark.parametrize("blend", ["gaussian"])
def test_round_trip_through_sliding_windows(tmp_path, blend):
    res = _round_trip(tmp_path, roi_size=64, overlap=0.25, blend=blend)
    assert res["las"][0] >= 0.99 and res["oblique"][0] >= 0.99, {k: v[0] for k, v in res.items()}


def test_agreement_of_a_map_with_a_mask():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:9, 5:9, 5:9] = 1
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    perfect = map_agreement(nib.Nifti1Image(mask.astype(np.float32), aff), nib.Nifti1Image(mask, aff))
    assert perfect["dice"] == 1 and perfect["auroc"] == 1 and perfect["pointing_hit"]
    assert perfect["peak_distance_mm"] == 0 and perfect["n_mask_voxels"] == 64
    off = np.zeros(mask.shape, np.float32)
    off[8, 14, 6] = 5.0  # peak 6 voxels (12 mm) beyond the mask along j
    a = map_agreement(nib.Nifti1Image(off, aff), nib.Nifti1Image(mask, aff))
    assert not a["pointing_hit"] and a["peak_distance_mm"] == pytest.approx(12.0) and a["dice"] == 0
    assert a["peak_world_mm"] == [16.0, 28.0, 12.0]
    noise = np.random.default_rng(0).random(mask.shape)
    assert abs(map_agreement(noise, mask)["auroc"] - 0.5) < 0.15  # chance (64 voxels: sd ~0.04)
    with pytest.raises(ValueError, match=r"mask shape \(20, 20, 19\) differs"):
        map_agreement(noise, mask[..., :19])
    with pytest.raises(ValueError, match="mask has no voxels"):
        map_agreement(noise, np.zeros_like(mask))


def test_maps_refuse_rows_that_do_not_fit(tmp_path):
    manifest = write_cohort(tmp_path / "c", n=1, masks=False)
    ad = VolumeAdapter(SEGRESNET, preprocess={"preset": "mri", "pixdim": [6, 6, 6]})
    st = bv.extract(ad, manifest, "down_layers.1", tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="values has 3 entries but obs has"):
        ad.to_nifti(np.zeros(3), st.obs, "S0")
    with pytest.raises(KeyError, match="no rows for sample_id 'nobody'"):
        ad.to_nifti(st.array()[:, 0], st.obs, "nobody")
    other = VolumeAdapter(SEGRESNET, preprocess={"preset": "mri", "pixdim": [12, 12, 12]})
    with pytest.raises(ValueError, match="the rows were made with other preprocessing"):
        other.to_nifti(st.array()[:, 0], st.obs, "S0", data=manifest)
    img = ad.to_nifti(st.array()[:, 0], st.obs, "S0")  # 2-voxel cells, interpolated back to voxels
    assert img.shape == nib.load(tmp_path / "c" / "s0.nii.gz").shape and np.isfinite(img.get_fdata()).all()
