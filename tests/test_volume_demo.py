import json

import nibabel as nib
import pandas as pd
import pytest
import torch

from bioviz.adapters.volume import demo_adapter, demo_bundle_path, make_brain_cohort

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cohort_is_reproducible_with_planted_lesions_as_ground_truth(tmp_path):
    kw = {"seed": 5, "voxel_mm": 6.0, "progress": False}
    m = make_brain_cohort(tmp_path / "a", 6, **kw)
    make_brain_cohort(tmp_path / "b", 6, **kw)
    make_brain_cohort(tmp_path / "c", 6, **{**kw, "seed": 6})
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # byte for byte
    assert _files(tmp_path / "a")["images/sub-001.nii.gz"] != _files(tmp_path / "c")["images/sub-001.nii.gz"]
    t = pd.read_csv(m)
    assert list(t.columns) == ["subject_id", "image", "mask", "label", "age", "sex", "site"]
    assert t["label"].sum() == 3 and t["mask"].notna().tolist() == (t["label"] == 1).tolist()
    for _, row in t.iterrows():
        img = nib.load(tmp_path / "a" / row["image"])
        codes = nib.aff2axcodes(img.affine)
        assert codes == (("L", "A", "S") if row["site"] == "site-B" else ("R", "A", "S"))
        if row["label"]:
            data, mask = img.get_fdata(), nib.load(tmp_path / "a" / row["mask"]).get_fdata() > 0
            assert mask.sum() > 0 and (data[mask] > 0).all()  # inside the brain
            ring = (data > 0) & ~mask
            assert data[mask].mean() < 0.8 * data[ring].mean()  # darker than the rest of the brain
    info = json.loads((tmp_path / "a" / "cohort.json").read_text())
    assert info["seed"] == 5 and len(info["subjects"]) == 6
    with pytest.raises(FileExistsError, match="not empty"):
        make_brain_cohort(tmp_path / "a", 6, **kw)
    with pytest.raises(ValueError, match="outside the MNI brain mask"):
        make_brain_cohort(tmp_path / "d", 2, lesion_centre_mm=(90, 0, 0), **kw)


def test_shipped_model_loads_offline_and_predicts_a_fresh_cohort(tmp_path):
    meta = json.loads((demo_bundle_path() / "configs" / "metadata.json").read_text())
    assert meta["metrics"]["val_auroc"] > 0.9
    assert (demo_bundle_path() / "models" / "model.safetensors").stat().st_size < 2_000_000
    ad = demo_adapter()
    assert ad.weights_report.loaded == len(ad.model.state_dict()) and not ad.weights_report.tolerated
    manifest = make_brain_cohort(tmp_path / "fresh", 12, seed=1, progress=False)  # not the training seed
    data = ad.dataset(manifest)
    x = torch.stack([data[i].image for i in range(len(data))])
    with torch.inference_mode():
        score = ad.model(x)[:, 0].numpy()
    y = ad.cohort.clinical["label"].to_numpy().astype(bool)
    auroc = (score[y][:, None] > score[~y][None]).mean()
    assert auroc >= 0.8, auroc
