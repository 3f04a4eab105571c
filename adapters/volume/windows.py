"""Sliding-window inference that stitches hooked layers, not only the model output.

A volume larger than the model's window runs window by window (MONAI's window layout,
``dense_patch_slices``); every hooked layer's output for a window is a patch of that
layer's own grid (stride ``s`` voxels per cell), and is added into a whole-volume map of
that layer with the window's blending weights pooled to the layer's grid. For the patches
to land on whole cells, the volume is padded to a multiple of ``divisor`` (the network's
total stride) and window starts are multiples of it; a layer whose stride does not divide
that is refused rather than misplaced. MONAI's own ``sliding_window_inference`` stitches
outputs of other resolutions by rounding window starts, so it is not used for layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bioviz.errors import InputError
from bioviz.hooks import hooked

from .networks import tokens_to_grid

BLEND = ("constant", "gaussian")


@dataclass(frozen=True)
class WindowSpec:
    roi: tuple[int, int, int]
    overlap: float = 0.25
    mode: str = "constant"
    sigma_scale: float = 0.125
    sw_batch_size: int = 1


def padded_shape(shape, divisor: int, roi=None) -> tuple[int, ...]:
    """Each side rounded up to a multiple of ``divisor`` and at least the window."""
    return tuple(max(int(r) if roi else 0, math.ceil(s / divisor) * divisor)
                 for s, r in zip(shape, roi or (0,) * len(shape)))


def scan_interval(size, roi, overlap: float, divisor: int) -> tuple[int, ...]:
    """MONAI's ``int(roi * (1 - overlap))``, rounded down to a multiple of ``divisor``."""
    out = []
    for s, r in zip(size, roi):
        if r >= s:
            out.append(r)
        else:
            out.append(max(divisor, int(r * (1 - overlap)) // divisor * divisor))
    return tuple(out)


def stitch(model, x: torch.Tensor, layers: list[str], spec: WindowSpec, divisor: int, *,
           inputs: bool = False, select=None, splice=None) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Run ``model`` over windows of ``x`` [1, C, *S] (S already padded) and return the
    stitched model output (None unless it is a spatial map) and ``{layer: [1, C_l, *S/s]}``.
    ``splice`` (``{layer: fn}``) is applied inside every window's forward pass."""
    from monai.data.utils import compute_importance_map, dense_patch_slices

    size = tuple(x.shape[2:])
    roi = tuple(int(r) for r in spec.roi)
    if any(r % divisor for r in roi) or any(s % divisor for s in size):
        raise InputError(f"roi_size {roi} and the padded volume {size} must be multiples of {divisor}")
    interval = scan_interval(size, roi, spec.overlap, divisor)
    slices = dense_patch_slices(size, roi, interval)
    weight = compute_importance_map(roi, mode=spec.mode, sigma_scale=spec.sigma_scale,
                                    device=x.device, dtype=torch.float32)[None, None]
    acc: dict[str, torch.Tensor] = {}
    cnt: dict[str, torch.Tensor] = {}
    names = list(layers) + ["\0output"]
    for b in range(0, len(slices), max(1, spec.sw_batch_size)):
        group = slices[b:b + max(1, spec.sw_batch_size)]
        win = torch.cat([x[(slice(None), slice(None), *sl)] for sl in group])
        with hooked(model, layers, inputs=inputs, select=select, splice=splice) as cap:
            out = model(win)
            acts = cap.pop()
        if isinstance(out, torch.Tensor) and out.ndim == x.ndim:
            acts["\0output"] = out
        for name in names:
            if name not in acts:
                continue
            act = acts[name]
            if act.ndim == 3:
                act = tokens_to_grid(act, roi, model, name)
            stride = _stride(act, roi, name)
            if name not in acc:
                grid = [s // k for s, k in zip(size, stride)]
                acc[name] = torch.zeros((1, act.shape[1], *grid), dtype=torch.float32, device=x.device)
                cnt[name] = torch.zeros((1, 1, *grid), dtype=torch.float32, device=x.device)
            w = F.avg_pool3d(weight, stride) if max(stride) > 1 else weight
            for k, sl in enumerate(group):
                starts = [int(s.start) for s in sl]
                if any(st % k_ for st, k_ in zip(starts, stride)):
                    raise InputError(f"layer {name!r} (stride {stride}) cannot be stitched: a window starts "
                                     f"at {starts}; use a divisor that is a multiple of {stride}")
                cell = tuple(slice(st // k_, st // k_ + n) for st, k_, n in zip(starts, stride, act.shape[2:]))
                acc[name][(slice(None), slice(None), *cell)] += act[k:k + 1].float() * w
                cnt[name][(slice(None), slice(None), *cell)] += w
    for name in acc:
        acc[name] /= cnt[name].clamp_min(1e-12)
    output = acc.pop("\0output", None)
    return output, acc


def _stride(act: torch.Tensor, roi, name: str) -> tuple[int, ...]:
    if act.ndim != 2 + len(roi):
        raise InputError(f"layer {name!r} gives shape {tuple(act.shape)}; a spatial map "
                         f"[batch, channels, {len(roi)} axes] is needed to lay rows on the scan")
    stride = []
    for r, n in zip(roi, act.shape[2:]):
        if r % n:
            raise InputError(f"layer {name!r}: a {roi} window gives a {tuple(act.shape[2:])} grid, "
                             "not a whole number of voxels per cell")
        stride.append(r // n)
    return tuple(stride)
