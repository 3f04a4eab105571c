"""Why the volume demo's lesion maps do not localise, and what refines them.

    python experiments/volume_localisation.py [--work /tmp/bioviz_volume_loc] [--n 40] [--seed 7]

On a fresh planted-lesion cohort (another seed than the demo's training cohort), the first
half of the subjects choose, per hook point, the channel whose upsampled map best ranks
lesion voxels (mean per-scan voxel AUROC on the preprocessed grid, sign-corrected); the
second half's positives score every map on the ORIGINAL scan grid with ``map_agreement``
(Dice at the mask's volume, voxel AUROC, pointing game, peak distance) plus the Dice at
the best threshold (an oracle upper bound). Maps compared:

* ``raw``: the channel, trilinearly upsampled (what ``VolumeAdapter.to_nifti`` draws);
* ``cell-oracle``: the true lesion fraction of each cell of that layer's grid, upsampled
  the same way: the ceiling any map on that grid can reach;
* ``normative``: the channel minus its mean over negative (lesion-free) selection scans, over
  their sd, per cell (scans are template warps, RAS after preprocessing); ``norm-diff``:
  without dividing by the sd;
* ``gxi``: |gradient x input| of the channel summed over its top cells, Gaussian-smoothed;
* ``ig-logit``: |integrated gradients| of the class logit (zero baseline), smoothed;
* ``gradcam``: Grad-CAM of the class logit at the hook point;
* ``ig-norm s=σ``: integrated gradients of the logit from the mean negative scan, smoothed
  with a Gaussian of σ voxels (``adapters/volume/refine.py``; s=1.5 is its default);
* ``ig-chan-norm``: the same for the demo channel's summed activation instead of the logit;
* ``neg-mean``: the channel's mean map over lesion-free scans (no lesion at all);
* ``diff-only`` / ``diff-signed``: no model, |scan - healthy mean| / (healthy mean - scan).

Prints one table (means over held-out positives) and a few diagnostics.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOOKS = ("layer1", "layer2", "layer3")
DEMO = ("layer2", 15)  # the demo's lesion channel (configs/metadata.json)


def voxel_auroc(maps: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``maps`` [C, n] for boolean ``truth`` [n] (Mann-Whitney)."""
    from scipy.stats import rankdata

    r = rankdata(maps, axis=1)
    n1 = truth.sum()
    n0 = truth.size - n1
    return (r[:, truth].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def best_dice(m: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Dice at the best threshold: sort within ``region``, Dice for every top-k, take max."""
    v, t = m[region], truth[region]
    order = np.argsort(-v, kind="stable")
    tp = np.cumsum(t[order])
    k = np.arange(1, len(v) + 1)
    return float((2 * tp / (k + t.sum())).max())


def smooth(vol: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter

    return torch.as_tensor(gaussian_filter(vol.numpy().astype(np.float64), sigma_vox), dtype=torch.float32)


def upsample(cells: torch.Tensor, shape) -> torch.Tensor:
    """[C, *grid] → [C, *shape], as maps.to_preprocessed does (cell centres, trilinear)."""
    return F.interpolate(cells[None].float(), size=tuple(shape), mode="trilinear", align_corners=False)[0]


class Net:
    """The demo model with forward hooks on ``HOOKS`` (activations kept with their graph)."""

    def __init__(self, model):
        self.model, self.acts = model, {}
        for name, mod in model.named_modules():
            if name in HOOKS:
                mod.register_forward_hook(self._keep(name))

    def _keep(self, name):
        def hook(_m, _i, out):
            self.acts[name] = out
        return hook

    def __call__(self, x):
        self.acts = {}
        return self.model(x)


def load(adapter, manifest):
    """Every scan preprocessed: dicts with image [1,X,Y,Z], mask, original, label, scan."""
    import nibabel as nib
    from tqdm.auto import tqdm

    cohort = adapter.read_cohort(manifest)
    adapter.cohort = cohort
    out = []
    for scan in tqdm(cohort.scans, desc="preprocess", unit="scan"):
        pp = adapter.prepare_scan(scan)
        item = {"scan": scan, "pp": pp, "label": scan.mask is not None,
                "x": pp["image"].as_tensor()[None].float()}
        if scan.mask is not None:
            item["mask_pp"] = pp["mask"].as_tensor()[0] > 0.5
            item["mask"] = np.asarray(nib.load(str(scan.mask)).dataobj) > 0
        item["brain"] = np.asarray(nib.load(str(scan.image)).dataobj) > 0
        out.append(item)
    return out


def acts_of(net, x):
    with torch.no_grad():
        net(x)
    return {k: v[0].detach() for k, v in net.acts.items()}


def select_channels(net, items):
    """Per hook: per-scan voxel AUROC of every channel on selection positives, averaged."""
    aucs = {h: [] for h in HOOKS}
    for it in items:
        if not it["label"]:
            continue
        acts = acts_of(net, it["x"])
        brain = (it["x"][0, 0] != 0).numpy()
        truth = it["mask_pp"].numpy()[brain]
        for h in HOOKS:
            up = upsample(acts[h], brain.shape).numpy()[:, brain]
            aucs[h].append(voxel_auroc(up, truth))
    return {h: np.mean(v, 0) for h, v in aucs.items()}


def normative_stats(net, items):
    per = {h: [] for h in HOOKS}
    xs = []
    for it in items:
        if it["label"]:
            continue
        acts = acts_of(net, it["x"])
        xs.append(it["x"])
        for h in HOOKS:
            per[h].append(acts[h])
    stats = {h: (torch.stack(v).mean(0), torch.stack(v).std(0).clamp_min(1e-3)) for h, v in per.items()}
    return stats, torch.stack(xs).mean(0)


def refined_maps(net, it, hook, ch, sign, stats, mean_neg, sigma=1.5, top=0.02):
    """Every map of one scan for (hook, channel): {name: [X, Y, Z] on the preprocessed grid}."""
    from captum.attr import IntegratedGradients

    x = it["x"].clone().requires_grad_(True)
    shape = x.shape[2:]
    logit = net(x)[0, 0]
    full = net.acts[hook]
    act = full[0]
    a = sign * act[ch]
    maps = {"raw": upsample(a.detach()[None], shape)[0]}
    mu, sd = stats[hook]
    maps["normative"] = upsample(((a.detach() - sign * mu[ch]) / sd[ch])[None], shape)[0]
    maps["norm-diff"] = upsample((a.detach() - sign * mu[ch])[None], shape)[0]
    # gradient x input of the channel, summed over its strongest cells (the candidate region)
    thr = torch.quantile(a.detach().flatten(), 1 - top)
    g, = torch.autograd.grad((a * (a.detach() >= thr)).sum(), x, retain_graph=True)
    maps["gxi"] = smooth((g * x).detach()[0, 0].abs(), sigma)
    # Grad-CAM of the logit at this hook
    ga, = torch.autograd.grad(logit, full)
    ga = ga[0]
    w = ga.mean(dim=(1, 2, 3), keepdim=True)
    maps["gradcam"] = upsample(F.relu((w * act).sum(0)).detach()[None], shape)[0]
    maps["neg-mean"] = upsample(sign * mu[ch][None], shape)[0]  # no lesion: a location prior
    if (hook, ch) == DEMO:  # the channel's own IG from the healthy mean (like ig-norm)
        def chan(z):
            net(z)
            return (sign * net.acts[hook][:, ch]).flatten(1).sum(1, keepdim=True)
        att = IntegratedGradients(chan).attribute(it["x"], baselines=mean_neg, target=0, n_steps=16,
                                                  internal_batch_size=8)
        maps["ig-chan-norm"] = smooth(att.detach()[0, 0].abs(), sigma)
    # the ceiling of any map living on this hook's grid: the true lesion share of each cell
    stride = [s // n for s, n in zip(shape, act.shape[1:])]
    frac = F.avg_pool3d(it["mask_pp"].float()[None, None], stride)[0]
    maps["cell-oracle"] = upsample(frac, shape)[0]
    return maps


def logit_maps(net, it, mean_neg, sigma=1.5):
    """Maps of the class logit, independent of any channel, plus a model-free control."""
    from captum.attr import IntegratedGradients

    from bioviz.adapters.volume.refine import attribution_map

    ig = IntegratedGradients(lambda z: net(z)[:, :1])
    maps = {}
    att = ig.attribute(it["x"], baselines=torch.zeros_like(it["x"]), target=0, n_steps=16,
                       internal_batch_size=8)
    maps["ig-logit"] = smooth(att.detach()[0, 0].abs(), sigma)
    # the reusable fix (adapters/volume/refine.py): IG of the logit from the healthy mean scan
    raw = attribution_map(net.model, it["x"][0], mean_neg[0], n_steps=32, sigma_vox=0)
    maps["ig-norm s=0"] = raw
    maps["ig-norm s=1.5"] = smooth(raw, sigma)  # = attribution_map(..., sigma_vox=1.5)
    maps["ig-norm s=3"] = smooth(raw, 2 * sigma)
    # control without the model: how far the scan is from the healthy mean, smoothed alike
    maps["diff-only"] = smooth((it["x"] - mean_neg)[0, 0].abs(), sigma)
    maps["diff-signed"] = smooth((mean_neg - it["x"])[0, 0], sigma)  # darker than healthy
    return maps


def score(adapter, it, vol):
    from bioviz.adapters.volume import map_agreement
    from bioviz.adapters.volume.preprocess import invert

    back = invert(adapter.chain, it["pp"]["image"], vol)[0].detach().cpu().numpy().astype(np.float64)
    a = map_agreement(back, it["mask"], within=it["brain"])
    a["best_dice"] = best_dice(back, it["mask"] & it["brain"], it["brain"])
    return a


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/bioviz_volume_loc")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--lesion-centre", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                    help="MNI mm of the planted lesion (default: the demo's training site)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from tqdm.auto import tqdm

    from bioviz.adapters.volume import make_brain_cohort
    from bioviz.adapters.volume.demo import demo_adapter

    t0 = time.time()
    where = {} if args.lesion_centre is None else {"lesion_centre_mm": tuple(args.lesion_centre)}
    tag = "" if not where else "_c" + "_".join(f"{v:g}" for v in args.lesion_centre)
    cohort_dir = Path(args.work) / f"cohort_n{args.n}_s{args.seed}{tag}"
    manifest = cohort_dir / "manifest.csv"
    if not manifest.is_file():
        make_brain_cohort(cohort_dir, n_subjects=args.n, seed=args.seed, **where)
    adapter = demo_adapter()
    net = Net(adapter.model.eval())
    items = load(adapter, manifest)
    half = len(items) // 2
    sel, held = items[:half], [it for it in items[half:] if it["label"]]
    print(f"cohort {manifest}: {len(items)} scans, selection {half} "
          f"({sum(i['label'] for i in sel)} positive), held-out positives {len(held)} "
          f"({time.time() - t0:.0f} s)", flush=True)

    with torch.no_grad():
        logit = np.array([float(net(it["x"])[0, 0]) for it in items])
    lab = np.array([it["label"] for it in items])
    print(f"classifier on this cohort: AUROC {voxel_auroc(logit[None], lab)[0]:.3f}, "
          f"accuracy {((logit > 0) == lab).mean():.2f}", flush=True)
    aucs = select_channels(net, sel)
    stats, mean_neg = normative_stats(net, sel)
    picks = {("layer2 demo", 15): ("layer2", 15, 1.0 if aucs["layer2"][15] >= 0.5 else -1.0)}
    for h in HOOKS:
        c = int(np.argmax(np.abs(aucs[h] - 0.5)))
        print(f"{h}: best channel {c} (selection voxel AUROC {aucs[h][c]:.3f}); "
              f"channel AUROCs {np.round(aucs[h], 2).tolist()}", flush=True)
        if (h, c) != DEMO:  # the demo's channel has its own row already
            picks[(h, c)] = (h, c, 1.0 if aucs[h][c] >= 0.5 else -1.0)

    rows = []
    diag = []
    for (label, _), (h, c, sign) in tqdm(list(picks.items()), desc="maps", unit="channel"):
        per = {}
        for it in held:
            for name, vol in refined_maps(net, it, h, c, sign, stats, mean_neg).items():
                per.setdefault(name, []).append(score(adapter, it, vol))
            if label == "layer2 demo":
                diag.append(_diagnose(net, it, h, c, sign))
        for name, res in per.items():
            rows.append((f"{label}", c, name, *[float(np.mean([r[k] for r in res])) for k in
                                                ("dice", "best_dice", "auroc", "pointing_hit",
                                                 "peak_distance_mm")]))
    per = {}
    for it in tqdm(held, desc="logit maps", unit="scan"):
        for name, vol in logit_maps(net, it, mean_neg).items():
            per.setdefault(name, []).append(score(adapter, it, vol))
    for name, res in per.items():
        rows.append(("logit", 0, name, *[float(np.mean([r[k] for r in res])) for k in
                                         ("dice", "best_dice", "auroc", "pointing_hit",
                                          "peak_distance_mm")]))
    print(f"\nheld-out positives: n={len(held)}; means over scans, original scan grid "
          f"(map_agreement within the head)\n")
    head = f"{'hook':<12}{'ch':>4}  {'map':<13}{'dice':>7}{'best':>7}{'auroc':>7}{'point':>7}{'peak mm':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r[0]:<12}{r[1]:>4}  {r[2]:<13}{r[3]:>7.3f}{r[4]:>7.3f}{r[5]:>7.3f}{r[6]:>7.2f}{r[7]:>9.1f}")
    if diag:
        d = np.array(diag)
        print("\ndiagnostics, demo channel layer2/15 (raw map, preprocessed grid, means over held-out):")
        print(f"  normalised intensity: lesion {d[:, 0].mean():.2f}, raw-map peak {d[:, 1].mean():.2f}, "
              f"brain {d[:, 2].mean():.2f}")
        print(f"  map vs -intensity within brain, Spearman rho: {d[:, 3].mean():.2f}")
        print(f"  share of the raw map's top (lesion-volume) voxels that are dark non-lesion "
              f"(intensity < lesion median): {d[:, 4].mean():.2f}")
    print(f"\ndone in {time.time() - t0:.0f} s")
    return 0


def _diagnose(net, it, h, c, sign):
    from scipy.stats import spearmanr

    acts = acts_of(net, it["x"])
    x = it["x"][0, 0]
    brain = x != 0
    m = upsample(sign * acts[h][c][None], x.shape)[0]
    mask = it["mask_pp"]
    peak = torch.argmax(torch.where(brain, m, torch.tensor(-1e9)))
    xi = x.flatten()[peak]
    rho = spearmanr(m[brain].numpy(), -x[brain].numpy())[0]
    k = int(mask.sum())
    top = torch.topk(torch.where(brain, m, torch.tensor(-1e9)).flatten(), k).indices
    dark = (x.flatten()[top] < x[mask].median()) & ~mask.flatten()[top]
    return [float(x[mask].mean()), float(xi), float(x[brain].mean()), float(rho),
            float(dark.float().mean())]


if __name__ == "__main__":
    sys.exit(main())
