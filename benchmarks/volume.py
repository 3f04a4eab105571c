"""Volume benchmark: 128³ scans through SegResNet with sliding windows, bioviz extraction
against bare MONAI inference, side by side; and the map round trip onto LAS and oblique scans.

    python benchmarks/run.py volume

Figures:
  * ``volume_scans_per_s``: scans per second through ``bioviz.extract`` (load, preprocess,
    sliding windows that stitch the hooked layer, rows with coordinates, store writing);
  * ``volume_extract_overhead``: that time ÷ bare MONAI inference on the same scans (LoadImage,
    the same preprocessing, ``monai.inferers.sliding_window_inference``), best of rounds run
    alternately; ``volume_bare_scans_per_s`` is the bare figure;
  * ``volume_extract_vs_monai_pipeline``: that time ÷ the same work written with MONAI alone,
    no bioviz code: ``LoadImaged`` + ``EnsureChannelFirstd`` + the preset's transforms
    (``Orientationd`` RAS, ``Spacingd``, ``NormalizeIntensityd`` over non-zero voxels) through a
    ``monai.data.Dataset``/``DataLoader``, then ``sliding_window_inference`` of a predictor that
    returns the hooked layer (a forward hook), which MONAI stitches at the layer's scale, and
    the rows (one per layer voxel) as a numpy array. Unlike the "bare" figure, whose loading
    and preprocessing are bioviz's own, this one can show slow loading or preprocessing;
    ``volume_monai_scans_per_s`` / ``volume_monai_peak_rss_gb`` are its own figures;
  * ``volume_peak_rss_gb`` / ``volume_bare_peak_rss_gb``: peak RSS of a fresh process doing
    each (imports included);
  * ``volume_roundtrip_corr_las`` / ``volume_roundtrip_corr_oblique``: correlation, on
    anatomy-bearing voxels, between a scan and the map made of its own voxels sent through the
    MRI preset, rows and back onto the scan's grid (nibabel's LAS ``anatomical.nii``; the
    MNI152 template on an oblique, anisotropic grid).
Each timed run is a fresh process (so peak RSS is its own), warmed up by one window.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_SCANS = 3
SIDE = 128
ROI = 96
ROUNDS = 2
LAYER = "down_layers.3"
NETWORK = {"class_path": "monai.networks.nets.SegResNet",  # the BraTS bundle's shape
           "init_args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_filters": 16,
                         "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]}}
PREPROCESS = {"preset": "mri", "pixdim": [1.5, 1.5, 1.5]}
MODES = ("bare", "monai", "extract")
# the figures this group must report (benchmarks/run.py checks)
KEYS = ("volume_scans_per_s", "volume_extract_overhead", "volume_peak_rss_gb", "volume_extract_vs_monai_pipeline",
        "volume_roundtrip_corr_las", "volume_roundtrip_corr_oblique")


def _log(msg: str) -> None:
    print(f"# volume: {msg}", file=sys.stderr, flush=True)


def make_scans(folder: Path) -> Path:
    """``N_SCANS`` brain volumes of 128³ at 1.5 mm (MNI152 template, scaled and noisy)."""
    import nibabel as nib
    import numpy as np
    import pandas as pd
    from nilearn.datasets import load_mni152_template
    from scipy.ndimage import map_coordinates

    t = load_mni152_template(resolution=2)
    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    aff[:3, 3] = [-96.0, -132.0, -78.0]
    ijk = np.indices((SIDE,) * 3).reshape(3, -1)
    src = np.linalg.inv(t.affine) @ np.vstack([aff[:3, :3] @ ijk + aff[:3, 3:4], np.ones(ijk.shape[1])])
    base = map_coordinates(np.asarray(t.get_fdata(), np.float32), src[:3], order=1).reshape((SIDE,) * 3)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_SCANS):
        vol = 1000 * base * rng.uniform(0.9, 1.1) + rng.normal(0, 20, base.shape) * (base > 0)
        nib.save(nib.Nifti1Image(vol.astype(np.float32), aff), str(folder / f"scan{i}.nii.gz"))
        rows.append({"subject_id": f"B{i}", "image": f"scan{i}.nii.gz", "age": 40 + i})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def _monai_pipeline(manifest: Path) -> tuple[int, float]:
    """The layer's activations over every scan with MONAI alone (see the module docstring):
    (rows, seconds). Its network is built and warmed up as in the other modes, untimed."""
    import pandas as pd
    import torch
    from monai.data import DataLoader, Dataset
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNet
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        Spacingd,
    )

    torch.manual_seed(0)
    net = SegResNet(**NETWORK["init_args"]).eval()
    with torch.inference_mode():  # warm-up: one window, as the other modes
        net(torch.zeros(1, 1, ROI, ROI, ROI))
    t = time.perf_counter()
    files = [{"image": str(manifest.parent / f)} for f in pd.read_csv(manifest)["image"]]
    transforms = Compose([
        LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
        Orientationd("image", axcodes="RAS"), Spacingd("image", pixdim=PREPROCESS["pixdim"], mode="bilinear"),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True)])
    captured = {}
    net.get_submodule(LAYER).register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))

    def layer_of(x):
        net(x)
        return captured["out"]

    rows = 0
    for item in DataLoader(Dataset(files, transforms), batch_size=1, num_workers=0):
        with torch.inference_mode():
            act = sliding_window_inference(item["image"], (ROI,) * 3, 1, layer_of, overlap=0.25, mode="constant")
        rows += len(act[0].flatten(1).T.contiguous().numpy())
    return rows, time.perf_counter() - t


def _child(mode: str, folder: str) -> None:
    """One timed run in this (fresh) process; prints a JSON line."""
    import torch

    import bioviz as bv
    from bioviz.adapters.volume import VolumeAdapter

    manifest = Path(folder) / "manifest.csv"
    if mode == "monai":
        rows, seconds = _monai_pipeline(manifest)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
        print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_gb": peak_gb, "rows": rows}))
        return
    torch.manual_seed(0)
    ad = VolumeAdapter(NETWORK, preprocess=PREPROCESS, roi_size=ROI, overlap=0.25, blend="constant")
    with torch.inference_mode():  # warm-up: one window, so one-time setup is not timed
        ad.model(torch.zeros(1, 1, ROI, ROI, ROI))
    rows = None
    t = time.perf_counter()
    if mode == "bare":
        from monai.inferers import sliding_window_inference

        cohort = ad.read_cohort(manifest)
        for scan in cohort:
            x = ad.prepare_scan(scan)["image"].as_tensor()[None]
            with torch.inference_mode():
                sliding_window_inference(x, (ROI,) * 3, 1, ad.model, overlap=0.25, mode="constant")
    else:
        store = Path(folder) / f"store_{time.time_ns()}"
        rows = bv.extract(ad, manifest, LAYER, store, batch_size=1, progress=False).n_rows
    seconds = time.perf_counter() - t
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_gb": peak_gb, "rows": rows}))


def _timed(mode: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(folder)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"benchmark child ({mode}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def oblique_scan(path: Path, zooms=(2.6, 2.1, 4.0), shape=(60, 80, 34)) -> None:
    """The MNI152 template on a grid rotated 20° about z and 12° about x, anisotropic voxels."""
    import nibabel as nib
    import numpy as np
    from nilearn.datasets import load_mni152_template
    from scipy.ndimage import map_coordinates

    def rot(i, j, deg):
        r, a = np.eye(3), np.deg2rad(deg)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        return r

    t = load_mni152_template(resolution=2)
    aff = np.eye(4)
    aff[:3, :3] = rot(0, 1, 20) @ rot(1, 2, 12) @ np.diag(zooms)
    aff[:3, 3] = np.array([0, -18, 18.0]) - aff[:3, :3] @ ((np.array(shape) - 1) / 2)
    ijk = np.indices(shape).reshape(3, -1)
    src = np.linalg.inv(t.affine) @ np.vstack([aff[:3, :3] @ ijk + aff[:3, 3:4], np.ones(ijk.shape[1])])
    vol = map_coordinates(np.asarray(t.get_fdata(), np.float32), src[:3], order=1).reshape(shape)
    nib.save(nib.Nifti1Image(1000 * vol, aff), str(path))


def round_trip(folder: Path) -> dict:
    """The round-trip bar (see the module docstring), through bioviz.extract."""
    import os
    import shutil

    import nibabel as nib
    import numpy as np
    import pandas as pd
    from nibabel.testing import data_path

    import bioviz as bv
    from bioviz.adapters.volume import VolumeAdapter

    shutil.copy(os.path.join(data_path, "anatomical.nii"), folder / "anatomical.nii")
    oblique_scan(folder / "oblique.nii.gz")
    pd.DataFrame({"subject_id": ["las", "oblique"], "image": ["anatomical.nii", "oblique.nii.gz"]}).to_csv(
        folder / "rt.csv", index=False)
    net = {"class_path": "monai.networks.nets.SegResNet", "init_args": {"spatial_dims": 3, "init_filters": 8}}
    ad = VolumeAdapter(net, preprocess="mri")
    st = bv.extract(ad, folder / "rt.csv", "convInit.conv", folder / "rt_store", inputs=True, progress=False)
    out = {}
    for sid, name in (("las", "anatomical.nii"), ("oblique", "oblique.nii.gz")):
        back = ad.to_nifti(st.array()[:, 0], st.obs, sid).get_fdata()
        orig = nib.load(folder / name).get_fdata()
        anatomy = orig > 0.1 * np.percentile(orig, 99)
        out[f"volume_roundtrip_corr_{sid}"] = float(np.corrcoef(orig[anatomy], back[anatomy])[0, 1])
    return out


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="bioviz_volume_bench_") as tmp:
        folder = Path(tmp)
        make_scans(folder)
        best: dict[str, dict] = {}
        for r in range(ROUNDS):
            for mode in MODES:
                _log(f"round {r + 1}/{ROUNDS}: {mode} ({N_SCANS} scans of {SIDE}³, {ROI}³ windows)")
                res = _timed(mode, folder)
                if mode not in best or res["seconds"] < best[mode]["seconds"]:
                    best[mode] = res
        _log("map round trip (LAS and oblique scans)")
        figures = {
            "volume_scans_per_s": N_SCANS / best["extract"]["seconds"],
            "volume_extract_overhead": best["extract"]["seconds"] / best["bare"]["seconds"],
            "volume_peak_rss_gb": best["extract"]["peak_rss_gb"],
            "volume_bare_scans_per_s": N_SCANS / best["bare"]["seconds"],
            "volume_bare_peak_rss_gb": best["bare"]["peak_rss_gb"],
            "volume_extract_vs_monai_pipeline": best["extract"]["seconds"] / best["monai"]["seconds"],
            "volume_monai_scans_per_s": N_SCANS / best["monai"]["seconds"],
            "volume_monai_peak_rss_gb": best["monai"]["peak_rss_gb"],
            # both did the same work: one row per voxel of the layer's grid on every scan
            "volume_extract_rows_equal_monai": int(best["extract"]["rows"] == best["monai"]["rows"]),
        }
        figures.update(round_trip(folder))
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        for k, v in run().items():
            print(f"{k}: {v:.4g}")
