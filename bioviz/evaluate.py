"""Model evaluation of a dictionary: how much of the model's own behaviour survives when a
layer is replaced by its SAE reconstruction, and how stable a dictionary is across seeds.

Fidelity splices three versions of the hooked layer into the model, batch by batch:
the SAE reconstruction, a mean ablation (every row replaced by the batch mean: the
baseline that keeps nothing specific), and optionally the reconstruction plus the error
term (which must give the clean model back: a check of the splice itself). It reports

* ``kl_*``: mean KL(clean ‖ patched) of the model's output distributions per position;
* ``top1_agreement_*``: share of positions whose arg-max prediction is unchanged;
* ``kl_recovered`` = 1 − KL_sae / KL_ablated (1: as good as the clean model, 0: no better
  than ablation);
* with an adapter that forms its task loss (masked-LM loss for MLM models):
  ``loss_recovered`` = (L_ablated − L_sae) / (L_ablated − L_clean).
Segmentation heads are scored per voxel the same way (class scores on axis 1); adapters
may add their own (Dice recovered) through ``task_loss``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .adapter import to_device
from .batches import FixedBatches
from .errors import InputError
from .provenance import on_model
from .sae import SparseAutoencoder


def as_rows(t: torch.Tensor, d: int) -> tuple[torch.Tensor, callable]:
    """View a layer output as [rows, d] and give back the inverse. Tokens: [..., d];
    channels-first grids: [B, d, *space]."""
    if t.shape[-1] == d:
        return t.reshape(-1, d), lambda r: r.reshape(t.shape)
    if t.ndim >= 3 and t.shape[1] == d:
        moved = t.movedim(1, -1)
        return moved.reshape(-1, d), lambda r: r.reshape(moved.shape).movedim(-1, 1)
    raise InputError(f"layer output of shape {tuple(t.shape)} has no axis of the SAE's size d_in={d}")


def _splice(name: str, sae: SparseAutoencoder, mean: torch.Tensor):
    """The function spliced into the layer for one variant: it sees the layer's output as
    the model computes it (a window's, under sliding windows) and returns the replacement."""
    def fn(t: torch.Tensor) -> torch.Tensor:
        rows, back = as_rows(t, sae.d_in)
        if name == "ablated":
            return back(mean.to(rows.dtype).expand_as(rows))
        recon = sae(rows).x_hat.to(rows.dtype)
        if name == "sae":
            return back(recon)
        return back(recon + (rows - recon))  # sae_plus_error: the clean activation, via the SAE

    return fn


def _rows_of(act, d: int) -> torch.Tensor:
    """All rows of a layer's activation (a tensor, or per-item tensors)."""
    parts = [a for a in act if a is not None] if isinstance(act, list) else [act]
    return torch.cat([as_rows(a, d)[0] for a in parts])


def _class_last(logits: torch.Tensor) -> torch.Tensor:
    # segmentation/voxel heads put classes on axis 1; move them last
    return logits.movedim(1, -1) if logits.ndim >= 4 else logits


@torch.inference_mode()
def fidelity(adapter, data, sae: SparseAutoencoder, layer: str | None = None, *, batch_size: int = 16,
             max_batches: int | None = None, with_error: bool = False, progress: bool = True,
             allow_mismatch: bool = False) -> pd.Series:
    """Splice ``sae`` into ``adapter``'s model at ``layer`` and score what the model keeps.

    Every batch runs clean, then with each variant spliced in through
    :meth:`bioviz.adapter.Adapter.run` (windowed adapters splice inside every window).

    Parameters
    ----------
    adapter
        The adapter that holds the model (the one the SAE's activations came from).
    data
        What the adapter reads (a dataset, an AnnData, a manifest path).
    sae
        The trained SAE.
    layer
        The layer to splice into. Default: the layer the SAE was trained on.
    batch_size, max_batches
        Items per batch; stop after this many batches (None: all).
    with_error
        Also splice the SAE reconstruction plus its error term, which must give the clean
        model back (a check of the splice itself).
    progress
        Show a progress bar.
    allow_mismatch
        Go on when ``layer`` or the adapter's model differ from the SAE's record.

    Returns
    -------
    pandas.Series
        ``kl_*``, ``top1_agreement_*`` per variant, ``kl_recovered``, ``loss_recovered``
        (adapters that form a task loss), ``task_loss_*``, ``positions``.

    Examples
    --------
    >>> import torch, bioviz as bv
    >>> from bioviz.adapters import TorchAdapter
    >>> from bioviz.sae import SAEConfig, build_sae
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    >>> sae = build_sae(SAEConfig(d_in=16, d_sae=64, k=8))
    >>> data = [torch.randn(8) for _ in range(32)]
    >>> res = bv.fidelity(TorchAdapter(model), data, sae, "1", with_error=True, progress=False)
    >>> bool(res["kl_sae_plus_error"] < 1e-6), int(res["positions"])
    (True, 32)
    """
    target, model, device, sae = on_model(sae, adapter, layer, allow_mismatch=allow_mismatch)
    layer = target.layer
    ds = adapter.dataset(data)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=FixedBatches(len(ds), batch_size),
                                         collate_fn=adapter.collate)
    sums: dict[str, float] = {}
    n_pos = 0
    variants = ["sae", "ablated"] + (["sae_plus_error"] if with_error else [])
    for b, batch in enumerate(tqdm(loader, desc="fidelity", disable=not progress, total=max_batches or len(loader))):
        if max_batches is not None and b >= max_batches:
            break
        batch = to_device(batch, device)
        clean_out, acts = adapter.run(batch, [layer])
        # mean ablation: every row replaced by the mean row of this batch's clean activations
        mean = _rows_of(acts[layer], sae.d_in).mean(0, keepdim=True)
        clean_logits = adapter.logits(clean_out)
        clean = _class_last(clean_logits).float()
        keep = adapter.positions(batch, clean_logits)
        logp_clean = F.log_softmax(clean, -1)
        sel = keep.reshape(-1) if keep is not None else None
        n = int(sel.sum()) if sel is not None else logp_clean[..., 0].numel()
        n_pos += n
        losses = {"clean": adapter.task_loss(batch, clean_out)}
        for name in variants:
            out, _ = adapter.run(batch, splice={layer: _splice(name, sae, mean)})
            logp = F.log_softmax(_class_last(adapter.logits(out)).float(), -1)
            kl = (logp_clean.exp() * (logp_clean - logp)).sum(-1).reshape(-1)
            agree = (logp.argmax(-1) == logp_clean.argmax(-1)).reshape(-1).float()
            if sel is not None:
                kl, agree = kl[sel], agree[sel]
            sums[f"kl_{name}"] = sums.get(f"kl_{name}", 0.0) + float(kl.sum())
            sums[f"top1_agreement_{name}"] = sums.get(f"top1_agreement_{name}", 0.0) + float(agree.sum())
            losses[name] = adapter.task_loss(batch, out)
        if losses["clean"] is not None:
            for name, v in losses.items():
                sums[f"task_loss_{name}"] = sums.get(f"task_loss_{name}", 0.0) + float(v) * n
    res = {k: v / max(n_pos, 1) for k, v in sums.items()}
    res["kl_recovered"] = 1.0 - res["kl_sae"] / res["kl_ablated"] if res["kl_ablated"] > 0 else float("nan")
    if "task_loss_clean" in res:
        gap = res["task_loss_ablated"] - res["task_loss_clean"]
        res["loss_recovered"] = (res["task_loss_ablated"] - res["task_loss_sae"]) / gap if gap > 0 else float("nan")
    res["positions"] = n_pos
    return pd.Series(res, name=f"{layer} ← {sae.architecture} SAE")


def stability(a: SparseAutoencoder, b: SparseAutoencoder, threshold: float = 0.7) -> tuple[dict, pd.DataFrame]:
    """Match the features of two SAEs (two seeds, two data halves) one-to-one by decoder
    cosine (Hungarian assignment) and report the share matched above ``threshold``.

    The assignment is O(d_sae³): seconds at 4k features, minutes at 16k.

    Parameters
    ----------
    a, b
        Two SAEs of the same layer (same ``d_in``).
    threshold
        Cosine at or above which a matched pair counts as the same feature.

    Returns
    -------
    summary : dict
        ``matched_fraction``, ``mean_cosine``, ``threshold``, ``n_features``.
    pairs : pandas.DataFrame
        One row per matched pair: ``feature_a``, ``feature_b``, ``cosine``.

    Examples
    --------
    >>> import bioviz as bv
    >>> from bioviz.sae import SAEConfig, build_sae
    >>> a = build_sae(SAEConfig(d_in=8, d_sae=32, k=4, seed=1))
    >>> summary, pairs = bv.stability(a, a)
    >>> summary["matched_fraction"], len(pairs)
    (1.0, 32)
    """
    from scipy.optimize import linear_sum_assignment

    if a.d_in != b.d_in:
        raise InputError(f"the SAEs read different layers (d_in {a.d_in} vs {b.d_in})")
    wa = F.normalize(a.W_dec.detach().double(), dim=1)
    wb = F.normalize(b.W_dec.detach().double(), dim=1)
    cos = (wa @ wb.T).cpu().numpy()
    ia, ib = linear_sum_assignment(cos, maximize=True)
    pairs = pd.DataFrame({"feature_a": ia, "feature_b": ib, "cosine": cos[ia, ib]})
    summary = {"matched_fraction": float(np.mean(pairs["cosine"] >= threshold)),
               "mean_cosine": float(pairs["cosine"].mean()), "threshold": threshold,
               "n_features": int(min(a.d_sae, b.d_sae))}
    return summary, pairs
