"""Which inputs make an SAE feature fire: integrated gradients (captum) of one feature.

The scalar attributed, per item, is the feature's activation at the hooked layer summed
over the item's rows: the rows :meth:`bioviz.adapter.Adapter.rows` gives (the rows of the
feature table: tokens without padding, voxels, the item itself), or only the rows chosen
by ``target_rows``. It is computed by running the model through ``adapter.run`` with a
splice that hands the layer's output on unchanged and keeps it, graph and all, so
gradients flow from the SAE code back to the inputs.

Completeness: the attributions of an item sum to f(x) − f(baseline) up to the error of the
path integral's quadrature, which is reported (``gap``). It holds for SAEs whose codes are
continuous in x (ReLU). TopK, BatchTopK and JumpReLU codes jump where a latent enters or
leaves the selection (or crosses its threshold); integrated gradients miss such jumps, so
their gap can be large. Read ``relative_gap`` before trusting the attributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..adapter import Batch, to_device
from ..errors import InputError
from ..hooks import resolve_layers
from ..provenance import on_model
from ..sae import SparseAutoencoder

METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
           "riemann_middle")
_ITEM = "_bioviz_item"  # temporary obs column: which item of a batch a row belongs to


@dataclass
class Attribution:
    """What :func:`integrated_gradients` returns (float64 arrays, one entry per item).

    Attributes
    ----------
    attributions
        Per input element, the shape of the attributed input; with ``embedding=``, per
        embedding entry [items, tokens, embedding dim].
    per_token
        With ``embedding=``: attributions summed over the embedding dimension [items,
        tokens]; otherwise None.
    f_input, f_baseline
        The target scalar at the input and at the baseline [items].
    gap
        ``attributions`` summed per item minus ``f_input - f_baseline`` [items].
    rows
        The batch's rows as ``adapter.rows`` lists them, with ``activation`` (the
        feature's code at the input) and ``target`` (whether the row counts in f).
    meta
        The batch's per-item metadata.
    feature, layer, steps
        What was attributed, and the number of quadrature steps.
    """

    attributions: np.ndarray
    per_token: np.ndarray | None
    f_input: np.ndarray
    f_baseline: np.ndarray
    gap: np.ndarray
    rows: pd.DataFrame
    meta: pd.DataFrame
    feature: int
    layer: str
    steps: int

    @property
    def relative_gap(self) -> np.ndarray:
        """``|gap| / |f_input - f_baseline|`` per item (NaN where f did not change)."""
        diff = np.abs(self.f_input - self.f_baseline)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(diff > 0, np.abs(self.gap) / diff, np.nan)

    def summary(self) -> pd.DataFrame:
        """One row per item: its metadata, ``f_input``, ``f_baseline``, ``attribution_sum``,
        ``gap`` and ``relative_gap``."""
        out = self.meta.reset_index(drop=True).copy()
        out["f_input"] = self.f_input
        out["f_baseline"] = self.f_baseline
        out["attribution_sum"] = self.attributions.reshape(len(out), -1).sum(1)
        out["gap"] = self.gap
        out["relative_gap"] = self.relative_gap
        return out


def integrated_gradients(adapter, batch: Batch, sae: SparseAutoencoder, layer: str | None,
                         feature: int, *, baseline=None, steps: int = 64, target_rows=None,
                         embedding: str | None = None, input_key: str | None = None,
                         internal_batch_size: int | None = None,
                         method: str = "gausslegendre", allow_mismatch: bool = False) -> Attribution:
    """Integrated gradients of SAE ``feature`` at ``layer`` with respect to the model's input.

    Parameters
    ----------
    adapter
        The adapter holding the model.
    batch
        The items to explain, as ``adapter.collate`` makes them.
    sae
        The SAE of ``layer`` (ReLU SAEs keep completeness; see the module docstring).
    layer
        The hooked layer; None: the layer the SAE was trained on.
    feature
        The SAE latent to explain.
    baseline
        The reference input: a number or a tensor broadcastable to the attributed input
        (token models: a token id, e.g. the padding id, or ids of the input's shape).
        Default: zeros (token id 0).
    steps
        Quadrature steps of the path integral.
    target_rows
        Which of the batch's rows count in f: integer positions, or a boolean mask, over
        the rows ``adapter.rows`` gives for this batch (``Attribution.rows`` lists them).
        Default: every row of each item.
    embedding
        Token models: name of the embedding module to attribute through (captum's
        LayerIntegratedGradients), e.g. ``"embeddings.word_embeddings"`` for a BERT.
    input_key
        Which input to attribute when the batch's inputs are a dict of several tensors
        (default: ``input_ids`` with ``embedding=``, or the only tensor).
    internal_batch_size
        Items per forward pass inside captum (bounds memory; None: all steps at once).
    method
        captum's quadrature rule: ``gausslegendre`` (default), ``riemann_trapezoid``,
        ``riemann_left``, ``riemann_right``, ``riemann_middle``.
    allow_mismatch
        Go on when ``layer`` or the model differ from the SAE's record.

    Returns
    -------
    Attribution

    Examples
    --------
    >>> import torch
    >>> from bioviz.adapters import TorchAdapter
    >>> from bioviz.sae import SAEConfig, build_sae
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh())
    >>> adapter = TorchAdapter(model)
    >>> ds = adapter.dataset([torch.randn(6) for _ in range(3)])
    >>> sae = build_sae(SAEConfig(architecture="relu", d_in=16, d_sae=32, seed=0))
    >>> res = integrated_gradients(adapter, adapter.collate([ds[i] for i in range(3)]), sae,
    ...                            "1", feature=3)
    >>> res.attributions.shape, bool((res.relative_gap[res.f_input > 0] < 0.01).all())
    ((3, 6), True)
    """
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    if not isinstance(batch, Batch):
        raise InputError(f"batch: expected a bioviz Batch (adapter.collate(items)), got "
                         f"{type(batch).__name__}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"steps={steps!r}: expected an integer >= 1 (quadrature steps)")
    feature = _check_feature(feature, sae)
    if method not in METHODS:
        raise InputError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    target, model, device, sae = on_model(sae, adapter, layer, allow_mismatch=allow_mismatch)
    layer = target.layer
    resolve_layers(model, layer)  # a clear error for a layer the model lacks
    batch = to_device(batch, device)
    key, x = _pick_input(batch.inputs, input_key, embedding)

    f = _FeatureFn(adapter, batch, key, sae, layer, feature)
    with torch.no_grad():
        rows0 = f.rows_of(x)
    f.set_target(target_rows, rows0)
    base = _baseline(baseline, x, embedding)
    if embedding is None:
        if not x.is_floating_point():
            raise InputError(
                f"the attributed input is {x.dtype} (token ids?); attribute through the "
                "embedding layer with embedding='<module name>', e.g. "
                "'embeddings.word_embeddings'")
        explainer = IntegratedGradients(f)
    else:
        name = resolve_layers(model, embedding)
        if len(name) != 1:
            raise InputError(f"embedding={embedding!r} matches {name}; name exactly one module")
        explainer = LayerIntegratedGradients(f, dict(model.named_modules())[name[0]])
    attr = explainer.attribute(x, baselines=base, n_steps=int(steps), method=method,
                               internal_batch_size=internal_batch_size)
    with torch.no_grad():
        f_x, f_b = f(x).double().cpu().numpy(), f(base).double().cpu().numpy()
    attr = attr.detach().double().cpu().numpy()
    gap = attr.reshape(len(batch), -1).sum(1) - (f_x - f_b)
    rows0 = rows0.assign(target=f.mask0 > 0)
    return Attribution(attributions=attr, per_token=attr.sum(-1) if embedding else None,
                       f_input=f_x, f_baseline=f_b, gap=gap, rows=rows0,
                       meta=batch.meta.reset_index(drop=True), feature=feature, layer=layer,
                       steps=int(steps))


def _check_feature(feature, sae: SparseAutoencoder) -> int:
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) \
            or not 0 <= feature < sae.d_sae:
        raise InputError(f"feature={feature!r}: expected an integer in [0, {sae.d_sae}) "
                         f"(the SAE has d_sae={sae.d_sae} latents)")
    return int(feature)


def _pick_input(inputs, key: str | None, embedding: str | None) -> tuple[str | None, torch.Tensor]:
    """The input tensor to attribute, and its key when the inputs are a dict."""
    if isinstance(inputs, torch.Tensor):
        return None, inputs
    if not isinstance(inputs, dict):
        raise InputError(f"batch.inputs is a {type(inputs).__name__}; attribution needs a "
                         "tensor or a dict of tensors")
    tensors = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]
    if key is None:
        if embedding is not None and "input_ids" in tensors:
            key = "input_ids"
        elif len(tensors) == 1:
            key = tensors[0]
        else:
            raise InputError(f"input_key: the inputs hold tensors {tensors}; name the one to "
                             "attribute")
    if key not in tensors:
        raise InputError(f"input_key={key!r} is not a tensor input; the inputs hold {tensors}")
    return key, inputs[key]


def _baseline(baseline, x: torch.Tensor, embedding: str | None) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(x)
    dtype = x.dtype if embedding is not None else torch.promote_types(x.dtype, torch.float32)
    try:
        base = torch.as_tensor(baseline, dtype=dtype, device=x.device)
        return base.expand_as(x).clone()
    except (RuntimeError, TypeError, ValueError) as err:
        shape = tuple(torch.as_tensor(baseline).shape) if not np.isscalar(baseline) else ()
        raise InputError(f"baseline of shape {shape} does not broadcast to the input's shape "
                         f"{tuple(x.shape)}; give a number or a tensor of that shape") from err


def _repeat(v, n: int, reps: int):
    """Tensors with the batch on axis 0, and lists with one entry per item (the volume
    adapter's per-scan geometry), repeated ``reps`` times (captum's layout: the whole batch
    once per step); everything else as is."""
    if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n:
        return v.repeat(reps, *[1] * (v.ndim - 1))
    if isinstance(v, (list, tuple)) and len(v) == n:
        return type(v)(list(v) * reps)
    if isinstance(v, dict):
        return {k: _repeat(u, n, reps) for k, u in v.items()}
    return v


class _FeatureFn:
    """f(x): the feature's code summed per item over the target rows, for a batch whose
    attributed input is ``x``; captum calls it with the batch repeated once per step."""

    def __init__(self, adapter, batch: Batch, key, sae, layer: str, feature: int):
        self.adapter, self.batch, self.key = adapter, batch, key
        self.sae, self.layer, self.feature = sae, layer, feature
        self.n = len(batch)
        self.weights = None  # [items, max rows per item]: 1 where a row counts
        self.mask0 = None

    def _batch(self, x: torch.Tensor) -> Batch:
        if x.shape[0] % self.n:
            raise RuntimeError(f"captum passed {x.shape[0]} items, not a multiple of {self.n}")
        reps = x.shape[0] // self.n
        b = self.batch
        if self.key is None:
            inputs = x
        else:
            inputs = {k: x if k == self.key else _repeat(v, self.n, reps)
                      for k, v in b.inputs.items()}
        meta = pd.concat([b.meta] * reps, ignore_index=True)
        meta[_ITEM] = np.arange(len(meta))
        return Batch(inputs, meta, _repeat(b.extra, self.n, reps))

    def _codes(self, x: torch.Tensor) -> tuple[torch.Tensor, pd.DataFrame]:
        """The feature's code on every row, and the rows' obs, with the graph to ``x``."""
        batch = self._batch(x)
        seen = []

        def keep(t: torch.Tensor) -> torch.Tensor:
            seen.append(t)  # no detach: the gradient must reach the inputs
            return t

        self.adapter.run(batch, splice={self.layer: keep})
        if len(seen) != 1:
            raise InputError(
                f"layer {self.layer!r} ran {len(seen)} times in one forward pass; attribution "
                "needs a layer that runs once per batch (not a windowed adapter)")
        rows, obs = self.adapter.rows(self.layer, seen[0], batch)
        return self.sae.encode(rows)[:, self.feature], obs

    def rows_of(self, x: torch.Tensor) -> pd.DataFrame:
        """The batch's rows (obs, without the helper column) with the feature's code."""
        codes, obs = self._codes(x)
        self._obs0 = obs
        return obs.drop(columns=_ITEM).assign(activation=codes.double().cpu().numpy())

    def set_target(self, target_rows, rows0: pd.DataFrame) -> None:
        n_rows = len(rows0)
        mask = _row_mask(target_rows, n_rows)
        item = self._obs0[_ITEM].to_numpy()
        rank = self._obs0.groupby(_ITEM).cumcount().to_numpy()
        w = np.zeros((self.n, int(rank.max()) + 1 if n_rows else 1))
        w[item, rank] = mask
        self.weights = w
        self.mask0 = mask

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        codes, obs = self._codes(x)
        item = obs[_ITEM].to_numpy()
        # a row's weight by (which item of the original batch, its place among that item's
        # rows): independent of how the adapter orders rows
        rank = obs.groupby(_ITEM).cumcount().to_numpy()
        if len(rank) and rank.max() >= self.weights.shape[1]:
            raise RuntimeError("an item has more rows than in the unscaled batch")
        w = torch.as_tensor(self.weights[item % self.n, rank], dtype=codes.dtype,
                            device=codes.device)
        idx = torch.as_tensor(item, device=codes.device)
        out = codes.new_zeros(x.shape[0])
        return out.index_add(0, idx, codes * w)


def _row_mask(target_rows, n_rows: int) -> np.ndarray:
    """``target_rows`` as a float 0/1 mask over ``n_rows`` rows."""
    if target_rows is None:
        return np.ones(n_rows)
    sel = np.asarray(target_rows)
    if sel.dtype == bool:
        if sel.shape != (n_rows,):
            raise InputError(f"target_rows: a boolean mask needs {n_rows} entries (the batch's "
                             f"rows), got shape {sel.shape}")
        return sel.astype(float)
    if sel.ndim != 1 or not np.issubdtype(sel.dtype, np.integer) or sel.size == 0:
        raise InputError("target_rows: expected row positions (a non-empty 1-D array of "
                         "integers) or a boolean mask over the batch's rows")
    if sel.min() < 0 or sel.max() >= n_rows:
        raise InputError(f"target_rows: positions must lie in [0, {n_rows}) (the batch has "
                         f"{n_rows} rows; Attribution.rows lists them)")
    mask = np.zeros(n_rows)
    mask[sel] = 1.0
    return mask
