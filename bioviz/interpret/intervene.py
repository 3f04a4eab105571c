"""Does the model rely on an SAE feature? Edit the feature inside the running model and
measure what its output does, against random features of similar density.

The SAE is spliced into the layer with its error term kept: a row x becomes
``decode(codes') + (x - decode(codes))``, where ``codes'`` differs from ``codes`` only in
the edited feature. Every bioviz SAE decodes affinely, so this is computed as
``x + (c'_f - c_f) * W_dec[f] / s`` (``s``: the SAE's input scale): exactly x when the
code is unchanged, and free of the reconstruction's error, so any change of the output is
the feature's doing. The splice edits every position of the layer's output (padding
included; the model's own masking decides whether that matters).

Null: ``n_random`` other features, drawn at random (``seed``) among those whose density
(share of rows where the code is > 0, measured on the same data, over the rows that
``adapter.rows`` gives) lies within a factor ``density_band`` of the feature's, edited the
same way. When fewer features lie in the band, it is widened by factors of 2 until enough
do (the band used is in ``table.attrs``). A feature that never fires is compared with
features of density around one row.

Per output unit u and edited feature: ``mean_change`` (mean over items of output' −
output), ``sd_change``, ``mean_abs_change``. For the feature: ``z`` = (its mean_change −
mean of the random features' mean_change) / their standard deviation; ``p_empirical`` =
(1 + #{random: |mean_change| ≥ the feature's}) / (1 + n_random), two-sided; and
``effect_ratio`` (:func:`ablation_effect_ratio`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..adapter import to_device
from ..batches import FixedBatches
from ..errors import InputError
from ..evaluate import as_rows
from ..provenance import on_model
from ..sae import SparseAutoencoder
from .attribution import _check_feature

MODES = ("ablate", "clamp", "scale")


def intervene(adapter, data, sae: SparseAutoencoder, layer: str | None, feature: int, *,
              mode: str = "ablate", value: float | None = None, n_random: int = 20,
              seed: int = 0, batch_size: int = 16, output_fn=None, density_band: float = 2.0,
              progress: bool = True, allow_mismatch: bool = False) -> pd.DataFrame:
    """Edit SAE ``feature`` inside the model and measure the change of the model's output.

    Parameters
    ----------
    adapter
        The adapter holding the model.
    data
        What the adapter reads (a dataset, an AnnData, a manifest path).
    sae
        The SAE of ``layer``.
    layer
        The layer to splice into; None: the layer the SAE was trained on.
    feature
        The SAE latent to edit.
    mode
        ``ablate`` (code set to 0), ``clamp`` (code set to ``value`` on every row) or
        ``scale`` (code multiplied by ``value``; ``value=1`` must leave the output as is).
    value
        The clamp value (in the SAE's code units) or scale factor; None for ``ablate``.
    n_random
        Random features of similar density edited the same way (the null); 0: none.
    seed
        Seed of the random draw.
    batch_size
        Items per forward pass.
    output_fn
        ``output_fn(model output) -> [n_items, n_outputs]`` tensor: what to measure (a
        class's logit, a pooled embedding). Default: ``adapter.logits(output)`` (the
        logits, else the output's main tensor) flattened per item; per-position outputs
        ``[items, positions, units]`` (a masked-LM head over genes, hidden states) are
        averaged over the positions ``adapter.positions`` counts, one value per unit
        (vocabulary entry: ``adapter.output_names`` names them). Keep it small for models
        with large outputs: the sums are held per feature and output unit.
    density_band
        Random features fire within this factor (> 1) of the feature's density.
    progress
        Show progress bars.
    allow_mismatch
        Go on when ``layer`` or the model differ from the SAE's record.

    Returns
    -------
    pandas.DataFrame
        One row per (edited feature, output unit): ``feature``, ``role`` (``target`` or
        ``random``), ``density``, ``output``, ``mean_change``, ``sd_change``,
        ``mean_abs_change``, ``n_items``; the target's rows also ``null_mean``,
        ``null_sd``, ``z``, ``p_empirical`` and ``effect_ratio``. ``attrs`` record the
        layer, mode, value, seed, the density band used and the number of rows.

    Examples
    --------
    >>> import torch
    >>> from bioviz.adapters import TorchAdapter
    >>> from bioviz.sae import SAEConfig, build_sae
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
    ...                             torch.nn.Linear(16, 2))
    >>> sae = build_sae(SAEConfig(architecture="relu", d_in=16, d_sae=32, seed=0))
    >>> data = [torch.randn(6) for _ in range(64)]
    >>> tab = intervene(TorchAdapter(model), data, sae, "1", 3, mode="scale", value=1.0,
    ...                 n_random=5, progress=False)
    >>> tab.shape, float(tab["mean_abs_change"].abs().max())
    ((12, 13), 0.0)
    """
    feature = _check_feature(feature, sae)
    value = _check_mode(mode, value)
    for name, v, low in (("n_random", n_random, 0), ("batch_size", batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise InputError(f"{name}={v!r}: expected an integer >= {low}")
    if not isinstance(density_band, (int, float)) or not density_band > 1 \
            or not math.isfinite(density_band):
        raise InputError(f"density_band={density_band!r}: expected a number > 1 (a factor)")
    target, model, device, sae = on_model(sae, adapter, layer, allow_mismatch=allow_mismatch)
    layer = target.layer
    ds = adapter.dataset(data)
    if len(ds) == 0:
        raise InputError("data: no items")
    loader = torch.utils.data.DataLoader(ds, batch_sampler=FixedBatches(len(ds), batch_size),
                                         collate_fn=adapter.collate)

    with torch.inference_mode():
        density, n_rows = _density(adapter, loader, sae, layer, progress)
        if density[feature] == 0 and mode != "clamp":
            warnings.warn(f"feature {feature} never fires on this data ({n_rows} rows): "
                          f"mode={mode!r} cannot change the output", stacklevel=2)
        rng = np.random.default_rng(seed)
        chosen, band = _random_features(density, feature, n_random, density_band, n_rows, rng)
        features = [feature, *chosen]
        sums = _effects(adapter, loader, sae, layer, features, mode, value, output_fn,
                        progress)
    table = _table(features, density, *sums)
    table.attrs.update({"layer": layer, "feature": feature, "mode": mode, "value": value,
                        "seed": seed, "n_random": len(chosen), "density_band": band,
                        "n_rows": n_rows, "target": target.record()})
    return table


def ablation_effect_ratio(table: pd.DataFrame, *, measure: str = "mean_abs_change") -> pd.Series:
    """|effect of the feature| / mean |effect of the random features|, per output unit.

    Parameters
    ----------
    table
        What :func:`intervene` returned.
    measure
        ``mean_abs_change`` (default: the size of the per-item change, which cannot cancel
        across items) or ``mean_change``.

    Returns
    -------
    pandas.Series
        Indexed by ``output``; inf where the random features change nothing but the feature
        does, NaN where neither changes anything or there are no random features.
    """
    if measure not in ("mean_abs_change", "mean_change"):
        raise InputError(f"measure={measure!r}: expected 'mean_abs_change' or 'mean_change'")
    need = {"role", "output", measure}
    if not isinstance(table, pd.DataFrame) or not need <= set(table.columns):
        raise InputError(f"table: expected intervene()'s table with columns {sorted(need)}")
    size = table[measure].abs()
    tgt = size[table["role"] == "target"].groupby(table["output"]).mean()
    null = size[table["role"] == "random"].groupby(table["output"]).mean()
    null = null.reindex(tgt.index)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = tgt / null
    return ratio.rename("effect_ratio")


def _check_mode(mode: str, value) -> float | None:
    if mode not in MODES:
        raise InputError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "ablate":
        if value is not None:
            raise InputError("value: ablate sets the code to 0 and takes no value; use "
                             "mode='clamp' to set another value")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value):
        what = "the code's value on every row" if mode == "clamp" else "the factor on the code"
        raise InputError(f"value={value!r}: mode={mode!r} needs a finite number ({what})")
    return float(value)


def _feature_codes(sae: SparseAutoencoder, rows: torch.Tensor, feature: int) -> torch.Tensor:
    """One feature's codes [n] without a dense [n, d_sae] matrix (top-k SAEs)."""
    codes = sae.encode_sparse(rows)
    hit = codes.cols == feature
    out = torch.zeros(codes.n_rows, dtype=codes.values.dtype, device=rows.device)
    return out.index_put((codes.row_ids()[hit],), codes.values[hit])


def _density(adapter, loader, sae, layer: str, progress: bool) -> tuple[np.ndarray, int]:
    """Share of rows (as ``adapter.rows`` gives them) where each latent's code is > 0."""
    device = sae.W_dec.device
    fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=device)
    n_rows = 0
    for batch in tqdm(loader, desc="density", disable=not progress):
        batch = to_device(batch, device)
        _, acts = adapter.run(batch, [layer])
        rows, _ = adapter.rows(layer, acts[layer], batch)
        codes = sae.encode_sparse(rows)
        fired += torch.bincount(codes.cols[codes.values > 0], minlength=sae.d_sae)
        n_rows += codes.n_rows
    if n_rows == 0:
        raise InputError(f"layer {layer!r} gave no rows for this data")
    return fired.double().cpu().numpy() / n_rows, n_rows


def _random_features(density: np.ndarray, feature: int, n_random: int, band: float,
                     n_rows: int, rng: np.random.Generator) -> tuple[list[int], float]:
    """``n_random`` features (not ``feature``, not dead) whose density lies within a factor
    ``band`` of the feature's, widening the band by 2 until enough qualify."""
    if n_random == 0:
        return [], band
    ref = max(density[feature], 1.0 / n_rows)  # a feature that never fires: ~one row
    alive = (density > 0) & (np.arange(len(density)) != feature)
    while True:
        pool = np.flatnonzero(alive & (density >= ref / band) & (density <= ref * band))
        # past n_rows the band holds every live feature: widening cannot add any
        if len(pool) >= n_random or band > n_rows:
            break
        band *= 2
    if len(pool) < n_random:
        warnings.warn(f"only {len(pool)} other features fire on this data; the null has "
                      f"{len(pool)} random features, not {n_random}", stacklevel=3)
    return sorted(rng.choice(pool, size=min(n_random, len(pool)), replace=False).tolist()), band


def _edit(sae: SparseAutoencoder, feature: int, mode: str, value: float | None):
    """The splice: x → x + (c'_f − c_f) W_dec[f] / s, i.e. decode(codes') + error term."""
    direction = sae.W_dec[feature] / sae.norm_scale

    def fn(t: torch.Tensor) -> torch.Tensor:
        rows, back = as_rows(t, sae.d_in)
        c = _feature_codes(sae, rows, feature)
        if mode == "ablate":
            new = torch.zeros_like(c)
        elif mode == "clamp":
            new = torch.full_like(c, value)
        else:
            new = c * value
        return back(rows + ((new - c)[:, None] * direction).to(rows.dtype))

    return fn


def _outputs(adapter, output_fn, out, batch) -> torch.Tensor:
    n = len(batch)
    if output_fn is None:
        y = adapter.logits(out)
        if y.ndim == 3:
            # per-position outputs (a token model's predictions over its vocabulary, or its
            # hidden states): the mean over the positions that count, so items of any length
            # give one fixed-size vector (a cell's mean predicted logit per gene)
            keep = adapter.positions(batch, y)
            if keep is None:
                return y.double().mean(1)
            w = keep.to(y.dtype).unsqueeze(-1)
            return ((y * w).sum(1) / w.sum(1).clamp(min=1)).double()
        return y.reshape(n, -1).double()
    y = output_fn(out)
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != n:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputError(f"output_fn returned {shape}; expected a tensor [n_items={n}, "
                         "n_outputs]")
    return y.double()


def _effects(adapter, loader, sae, layer, features, mode, value, output_fn, progress):
    """Per feature and output unit: sums of the change, its square and its absolute value."""
    device = sae.W_dec.device
    edits = [_edit(sae, f, mode, value) for f in features]
    s1 = s2 = sa = None
    n_items = 0
    for batch in tqdm(loader, desc="intervene", disable=not progress):
        batch = to_device(batch, device)
        clean = _outputs(adapter, output_fn, adapter.run(batch).output, batch)
        if s1 is None:
            s1, s2, sa = (clean.new_zeros(len(features), clean.shape[1]) for _ in range(3))
        elif clean.shape[1] != s1.shape[1]:
            raise InputError(f"the output has {clean.shape[1]} units per item in one batch and "
                             f"{s1.shape[1]} in another; give output_fn= a fixed-size output")
        for j, edit in enumerate(edits):
            out = adapter.run(batch, splice={layer: edit}).output
            delta = _outputs(adapter, output_fn, out, batch) - clean
            s1[j] += delta.sum(0)
            s2[j] += delta.square().sum(0)
            sa[j] += delta.abs().sum(0)
        n_items += len(batch)
    return s1.cpu().numpy(), s2.cpu().numpy(), sa.cpu().numpy(), n_items


def _table(features, density, s1, s2, sa, n) -> pd.DataFrame:
    k, n_out = s1.shape
    mean = s1 / n
    var = np.clip(s2 - n * mean**2, 0, None) / (n - 1) if n > 1 else np.full_like(mean, np.nan)
    table = pd.DataFrame({
        "feature": np.repeat(features, n_out),
        "role": np.repeat(["target"] + ["random"] * (k - 1), n_out),
        "density": np.repeat(density[features], n_out),
        "output": np.tile(np.arange(n_out), k),
        "mean_change": mean.ravel(),
        "sd_change": np.sqrt(var).ravel(),
        "mean_abs_change": (sa / n).ravel(),
        "n_items": n,
    })
    null = mean[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        null_mean = null.mean(0) if k > 1 else np.full(n_out, np.nan)
        null_sd = null.std(0, ddof=1) if k > 2 else np.full(n_out, np.nan)
        z = (mean[0] - null_mean) / null_sd
    p = (1 + (np.abs(null) >= np.abs(mean[0])).sum(0)) / k if k > 1 else np.full(n_out, np.nan)
    is_target = (table["role"] == "target").to_numpy()
    for col, v in (("null_mean", null_mean), ("null_sd", null_sd), ("z", z),
                   ("p_empirical", p)):
        table[col] = np.nan
        table.loc[is_target, col] = v
    table["effect_ratio"] = np.nan
    table.loc[is_target, "effect_ratio"] = ablation_effect_ratio(table).to_numpy()
    return table
