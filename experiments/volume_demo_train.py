"""Train the volume demo model and write it into bioviz as a MONAI bundle directory.

    python experiments/volume_demo_train.py [--out adapters/volume/demo_model] [--work /tmp/volume_demo]

1. Generates the planted-lesion brain cohort (bioviz.adapters.volume.make_brain_cohort, from
   nilearn's MNI152 template; nothing is downloaded).
2. Preprocesses it exactly as the bundle will at inference (the VolumeAdapter's own chain).
3. Trains a small MONAI ResNet (3D, ~0.23 M parameters) to predict the label, on one CPU
   thread with deterministic algorithms, so the same command writes the same weights.
4. Writes ``configs/inference.json`` (network_def, preprocessing, inferer — MONAI bundle
   syntax), ``configs/metadata.json`` (training record, metrics) and
   ``models/model.safetensors``.
5. Checks the whole bioviz path on held-out scans (:func:`check_maps`).
Takes 3-5 minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
COHORT = {"n_subjects": 96, "seed": 20240, "voxel_mm": 2.0}
PREPROCESS = [  # MONAI bundle syntax; the adapter reads this back from configs/inference.json
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [3.0, 3.0, 3.0], "mode": "bilinear"},
    {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
    {"_target_": "ResizeWithPadOrCropd", "keys": "image", "spatial_size": [64, 80, 64]},
]
NETWORK = {"_target_": "ResNet", "block": "basic", "layers": [1, 1, 1, 1],
           "block_inplanes": [8, 16, 32, 64], "spatial_dims": 3, "n_input_channels": 1,
           "num_classes": 1, "conv1_t_stride": 2, "no_max_pool": True}
N_TRAIN = 72


def auroc(score, label) -> float:
    from scipy.stats import rankdata

    score, label = np.asarray(score, float), np.asarray(label, bool)
    r = rankdata(score)
    n1, n0 = label.sum(), (~label).sum()
    return float((r[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def check_maps(bundle: Path, manifest: Path, work: Path) -> dict:
    """Extract ``layer2`` rows with bioviz, choose the channel whose rows best separate lesion
    cells (``mask_fraction``) from the rest on the training scans, then map that channel back
    onto every held-out positive scan and score it against its planted lesion mask. Wrong
    coordinates (say, a flipped axis for site B's LAS scans) would show as chance agreement."""
    import nibabel as nib

    import bioviz as bv
    from bioviz.adapters.volume import VolumeAdapter, map_agreement

    demo = VolumeAdapter(bundle=str(bundle))
    store = bv.extract(demo, manifest, "layer2", work / "store", batch_size=8, overwrite=True, progress=False)
    obs, acts = store.obs, store.array()[:]
    ids = list(dict.fromkeys(obs["sample_id"]))
    train = obs["sample_id"].isin(ids[:N_TRAIN]).to_numpy() & (obs["label"] == 1).to_numpy()
    inside = (obs["mask_fraction"].fillna(0) > 0.3).to_numpy()
    aucs = np.array([auroc(acts[train, c], inside[train]) for c in range(acts.shape[1])])
    best = int(np.argmax(np.abs(aucs - 0.5)))
    sign = 1.0 if aucs[best] >= 0.5 else -1.0
    scores = {"RAS": [], "LAS": []}
    for sid in ids[N_TRAIN:]:
        scan = demo.cohort.find(sid)
        if scan.mask is None:
            continue
        img = demo.to_nifti(sign * acts[:, best], obs, sid)
        anat = nib.load(str(scan.image))
        a = map_agreement(img, nib.load(str(scan.mask)), within=np.asarray(anat.dataobj) > 0)
        scores["".join(nib.aff2axcodes(anat.affine))].append(a)
    every = scores["RAS"] + scores["LAS"]
    out = {"demo_layer": "layer2", "demo_channel": best, "demo_channel_train_cell_auroc": float(aucs[best]),
           "demo_heldout_positives": len(every)}
    for key in ("auroc", "dice", "pointing_hit", "peak_distance_mm"):
        out[f"demo_heldout_{key}"] = float(np.mean([a[key] for a in every]))
    for orient, items in scores.items():
        if items:
            out[f"demo_heldout_auroc_{orient}"] = float(np.mean([a["auroc"] for a in items]))
    print(f"bioviz path on held-out positives: {json.dumps(out)}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "adapters" / "volume" / "demo_model"))
    ap.add_argument("--work", default="/tmp/bioviz_volume_demo")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # determinism across machines, and faster than 2 busy threads
    torch.use_deterministic_algorithms(True)
    from safetensors.torch import save_file

    from bioviz.adapters.volume import VolumeAdapter, make_brain_cohort
    from bioviz.adapters.volume.networks import build_network

    t0 = time.time()
    work, out = Path(args.work), Path(args.out)
    manifest = make_brain_cohort(work / "cohort", **COHORT, overwrite=True)
    print(f"cohort: {manifest} ({time.time() - t0:.0f} s)", flush=True)

    torch.manual_seed(SEED)
    net = build_network(NETWORK)
    adapter = VolumeAdapter(net, preprocess=PREPROCESS, on_bad_scan="raise")
    data = adapter.dataset(manifest)
    x = torch.stack([data[i].image for i in range(len(data))])
    y = torch.tensor(adapter.cohort.clinical["label"].to_numpy(np.float32))
    print(f"preprocessed {tuple(x.shape)} ({time.time() - t0:.0f} s)", flush=True)

    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(N_TRAIN, generator=gen)
        total = 0.0
        for b in range(0, N_TRAIN, 8):
            idx = order[b:b + 8]
            loss = loss_fn(net(x[idx])[:, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1}/{args.epochs}: loss {total / N_TRAIN:.4f}", flush=True)
    net.eval()
    with torch.inference_mode():
        score = net(x)[:, 0].numpy()
    yy = y.numpy().astype(bool)
    metrics = {
        "train_auroc": auroc(score[:N_TRAIN], yy[:N_TRAIN]),
        "val_auroc": auroc(score[N_TRAIN:], yy[N_TRAIN:]),
        "val_accuracy": float(((score[N_TRAIN:] > 0) == yy[N_TRAIN:]).mean()),
        "n_train": N_TRAIN, "n_val": len(yy) - N_TRAIN,
    }
    print(f"metrics: {metrics}", flush=True)

    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / "models" / "model.safetensors"), metadata={"format": "pt"})
    (out / "models" / "model.safetensors").chmod(0o644)
    inference = {
        "imports": ["$import monai"],
        "image_key": "image",
        "network_def": NETWORK,
        "preprocessing": {"_target_": "Compose", "transforms": PREPROCESS},
        "inferer": {"_target_": "SimpleInferer"},
    }
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=1) + "\n")

    # the whole bioviz path on held-out scans: rows → a channel → maps vs planted lesions
    metrics.update(check_maps(out, manifest, work))
    meta = {
        "name": "bioviz volume demo", "version": "1.0",
        "description": "Small 3D ResNet predicting a planted lesion label on a brain-MRI-like cohort "
                       "generated from the MNI152 template (bioviz.adapters.volume.make_brain_cohort).",
        "task": "binary classification (label)", "cohort": COHORT, "seed": SEED, "epochs": args.epochs,
        "training_script": "experiments/volume_demo_train.py", "metrics": metrics,
        "torch_version": torch.__version__, "hook_points": ["layer1", "layer2", "layer3", "layer4"],
        "license": "Apache-2.0",
    }
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
