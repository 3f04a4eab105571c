"""The interface every SAE architecture shares, and the machinery they all use.

Parameters (names and shapes are part of the checkpoint format):

    W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_in]   b_dec [d_in]

and the computation, in normalised units (``s`` = the fitted normalisation scalar)::

    x_n   = s * x
    x_c   = x_n - b_dec                      # b_dec is the pre-encoder bias
    pre   = x_c @ W_enc + b_enc
    codes = activation(pre)                  # per architecture, always >= 0
    x_hat = (codes @ W_dec + b_dec) / s      # back in the caller's units

A training step, as the Lightning module is expected to run it::

    out = sae(x)                    # in train mode also updates dead-latent statistics
    losses = sae.loss(x, out, sparsity_scale=ramp)  # dict: 'loss', 'mse', 'fvu', terms
    losses["loss"].backward()
    sae.remove_parallel_grads_()    # before optimizer.step()
    optimizer.step()
    sae.normalise_decoder_()        # after optimizer.step()

Before training: ``sae.fit_normalisation(batches)`` then ``sae.init_from_data(sample)``
(in that order: b_dec lives in normalised units).

An architecture is a subclass registered with ``@register(name)``; it owns its facts:
``config_fields`` (the SAEConfig fields it uses besides the common ones),
``check_config`` (their checks, which ``SAEConfig.validate`` calls) and ``uses_auxk``.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .config import SAEConfig
from .io import save_sae
from .registry import ARCHITECTURES, register
from .sparse import SparseCodes, decode_sparse, gather_preacts

__all__ = ["ARCHITECTURES", "SAEOutput", "SparseAutoencoder", "fraction_of_variance_unexplained",
           "geometric_median", "register"]


@dataclass
class SAEOutput:
    """What ``forward`` returns. Tensors named ``*_normalised`` are in normalised units."""

    x_hat: Tensor  # reconstruction in the caller's units
    x_hat_normalised: Tensor
    x_centred: Tensor  # s * x - b_dec; carries the graph to b_dec (AuxK needs it)
    pre_acts: Tensor | None = None  # [n, d_sae]; detached for the top-k family
    sparse_codes: SparseCodes | None = None
    dense_codes: Tensor | None = None
    terms: dict[str, Tensor] = field(default_factory=dict)  # architecture loss ingredients

    @property
    def codes(self) -> Tensor:
        """Dense [n, d_sae] codes; built on first access for the sparse (top-k) path."""
        if self.dense_codes is None:
            self.dense_codes = self.sparse_codes.to_dense()
        return self.dense_codes

    @property
    def sparse(self) -> SparseCodes:
        if self.sparse_codes is None:
            self.sparse_codes = SparseCodes.from_dense(self.dense_codes)
        return self.sparse_codes


def fraction_of_variance_unexplained(x: Tensor, x_hat: Tensor) -> Tensor:
    """FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the batch (0 is perfect)."""
    num = (x - x_hat).pow(2).sum(dtype=torch.float64)
    den = (x - x.mean(0)).pow(2).sum(dtype=torch.float64)
    return num / den.clamp_min(1e-30)


def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld iterations (in float64): the point minimising the sum of L2 distances.

    Robust to the heavy-tailed rows that foundation-model activations often have, which is
    why it beats the mean as an initial pre-encoder bias (Anthropic, Towards Monosemanticity)."""
    pts = points.detach().double()
    y = pts.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (pts - y).norm(dim=1).clamp_min(1e-12)
        y_next = (w[:, None] * pts).sum(0) / w.sum()
        done = (y_next - y).norm() <= tol * max(float(y.norm()), 1.0)
        y = y_next
        if done:
            break
    return y.to(points.dtype)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_ranks(fired: Tensor, n: int) -> tuple[Tensor, int]:
    """Under DDP every rank must judge deadness alike (AuxK uses the mask): count the rows
    and firings of all ranks."""
    if not _distributed():
        return fired, n
    import torch.distributed as dist

    f = fired.to(torch.int32)
    dist.all_reduce(f, op=dist.ReduceOp.MAX)
    total = torch.tensor([n], dtype=torch.int64, device=fired.device)
    dist.all_reduce(total)
    return f.bool(), int(total)


class SparseAutoencoder(nn.Module):
    """Base class of the SAE architectures.

    Subclasses implement ``_encode`` (and optionally ``_penalties``,
    ``_reconstruction_loss``, ``_after_train_forward``), declare ``config_fields`` and
    ``check_config``, and register with ``@register``. Build one with
    ``bioviz.sae.build_sae(config)``.

    Parameters
    ----------
    config
        Its settings; the SAE keeps a validated copy as ``self.cfg`` (fitted scalars go
        into the copy).
    """

    architecture: ClassVar[str] = ""
    #: whether the AuxK dead-latent loss is part of this architecture's objective
    uses_auxk: ClassVar[bool] = False
    #: the SAEConfig fields this architecture uses besides ``config.COMMON_FIELDS``
    config_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> list[str]:
        """Check the fields this architecture uses (``SAEConfig.validate`` calls it).

        Parameters
        ----------
        cfg
            The config; its common fields are checked by ``SAEConfig.validate``.

        Returns
        -------
        list of str
            One message per problem, each naming the parameter; empty when valid.
        """
        return []

    def __init__(self, config: SAEConfig):
        super().__init__()
        config = copy.deepcopy(config).validate()  # our own copy: fitted scalars go into it
        if config.architecture != self.architecture:
            raise InputError(
                f"{type(self).__name__} is the {self.architecture!r} architecture but the "
                f"config says architecture={config.architecture!r}; use build_sae(config)"
            )
        self.cfg = config
        d, m = config.d_in, config.d_sae
        gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        # Unit-norm random decoder rows; with tied init the encoder starts as its transpose
        # (Gao et al. 2024), which makes early codes meaningful and prevents dead latents.
        W_dec = torch.randn(m, d, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if config.tied_init:
            W_enc = W_dec.t()
        else:
            W_enc = (torch.rand(d, m, generator=gen) * 2 - 1) / math.sqrt(d)
        # W_enc has shape [d_in, d_sae] but is stored column-major (a transposed
        # [d_sae, d_in] block): the sparse backward reads and writes whole latent columns,
        # which are then contiguous (saves two 16 MB transposes per step at 512 x 8192);
        # the forward matmul is as fast either way. Checkpoints store it contiguous.
        # (clone, not contiguous(): with tied init that would share W_dec's storage)
        self.W_enc = nn.Parameter(W_enc.t().clone(memory_format=torch.contiguous_format).t())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(d))
        scale = config.normalisation_scale if config.normalisation_scale is not None else 1.0
        self.register_buffer("norm_scale", torch.tensor(float(scale)))
        # Rows (tokens) seen since each latent last had a positive code. Saved, so a resumed
        # run keeps its dead-latent bookkeeping.
        self.register_buffer("rows_since_fired", torch.zeros(m, dtype=torch.int64))

    # -- sizes & units -----------------------------------------------------------------

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def _as_input(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise InputError(
                f"{self.architecture} SAE expects inputs of shape [n, d_in={self.d_in}], "
                f"got {tuple(x.shape)}"
            )
        return x.to(device=self.W_enc.device, dtype=self.W_enc.dtype)

    def _centre(self, x: Tensor) -> Tensor:
        return self._as_input(x) * self.norm_scale - self.b_dec

    # -- the interface ---------------------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """Dense, non-negative codes [n, d_sae] (differentiable with respect to x)."""
        codes, _, _ = self._encode(self._centre(x))
        return codes.to_dense() if isinstance(codes, SparseCodes) else codes

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """Codes in CSR form (``.to_scipy()`` gives a scipy array for feature tables)."""
        codes, _, _ = self._encode(self._centre(x))
        return codes if isinstance(codes, SparseCodes) else SparseCodes.from_dense(codes)

    def decode(self, codes: Tensor | SparseCodes) -> Tensor:
        """Reconstruction in the caller's units from dense or sparse codes."""
        return self._decode_normalised(codes) / self.norm_scale

    def forward(self, x: Tensor) -> SAEOutput:
        x_c = self._centre(x)
        codes, pre, terms = self._encode(x_c)
        x_hat_n = self._decode_normalised(codes)
        if self.training:
            self.update_dead_stats(codes)
            self._after_train_forward(codes)
        sparse = codes if isinstance(codes, SparseCodes) else None
        dense = None if sparse is not None else codes
        return SAEOutput(
            x_hat=x_hat_n / self.norm_scale, x_hat_normalised=x_hat_n, x_centred=x_c,
            pre_acts=pre, sparse_codes=sparse, dense_codes=dense, terms=terms,
        )

    def loss(self, x: Tensor, out: SAEOutput, *, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """Loss terms for ``out = self(x)``, all in normalised units.

        Parameters
        ----------
        x
            The inputs ``out`` was computed from, [n, d_in], in the caller's units.
        out
            ``self(x)``.
        sparsity_scale
            Factor on the sparsity penalty's coefficient (relu's ``l1_coefficient``,
            jumprelu's ``l0_coefficient``): the training loop's warm-up ramp from 0 to 1.
            The config keeps the configured coefficient.

        Returns
        -------
        dict of str to Tensor
            'loss' (what to backpropagate), 'mse' (per-element mean squared error of the
            full reconstruction), 'fvu' (detached, for logging), plus the architecture's
            terms ('l1', 'l0_penalty', 'auxk', prefix errors), each reported unweighted.
        """
        target = self._as_input(x) * self.norm_scale
        terms = {"mse": F.mse_loss(out.x_hat_normalised, target)}
        total = self._reconstruction_loss(target, out, terms)
        for name, (value, weight) in self._penalties(target, out, sparsity_scale).items():
            terms[name] = value
            total = total + weight * value
        terms["loss"] = total
        with torch.no_grad():
            terms["fvu"] = fraction_of_variance_unexplained(target, out.x_hat_normalised).to(
                target.dtype
            )
        return terms

    # -- architecture hooks ------------------------------------------------------------

    def _encode(self, x_c: Tensor) -> tuple[SparseCodes | Tensor, Tensor | None, dict]:
        """-> (codes, pre-activations, extra terms). Codes dense or sparse, >= 0."""
        raise NotImplementedError

    def _reconstruction_loss(self, target: Tensor, out: SAEOutput, terms: dict) -> Tensor:
        return terms["mse"]

    def _penalties(self, target: Tensor, out: SAEOutput,
                   sparsity_scale: float = 1.0) -> dict[str, tuple[Tensor, float]]:
        """name -> (unweighted value, weight in the total loss); ``sparsity_scale``
        multiplies the sparsity penalty's weight (not AuxK's)."""
        if self.uses_auxk and self.cfg.auxk_coefficient > 0:
            return {"auxk": (self.auxk_loss(target, out), self.cfg.auxk_coefficient)}
        return {}

    def _after_train_forward(self, codes) -> None:
        pass

    def _decode_normalised(self, codes: Tensor | SparseCodes) -> Tensor:
        if isinstance(codes, SparseCodes):
            if self.cfg.sparse_path:
                return decode_sparse(codes, self.W_dec) + self.b_dec
            codes = codes.to_dense()
        return torch.addmm(self.b_dec, codes.to(self.W_dec.dtype), self.W_dec)

    # -- input normalisation & data-dependent init ----------------------------------

    @torch.no_grad()
    def fit_normalisation(self, batches_or_tensor) -> float:
        """Fit the input scale ``s`` and return it.

        Rule: ``s = sqrt(d_in) / mean_i ||x_i||_2`` over every row given, so the normalised
        rows ``s * x_i`` have mean L2 norm exactly sqrt(d_in) (Anthropic, April 2024). One
        scalar for the whole dataset, so directions and relative norms are untouched.
        Accepts one [n, d_in] tensor / numpy array, or an iterable of batches (tensors,
        arrays, or tuples whose first element is the batch), e.g. a DataLoader. Does nothing (returns 1.0) when ``normalise_inputs`` is off.
        """
        if not self.cfg.normalise_inputs:
            return 1.0
        if isinstance(batches_or_tensor, (Tensor, np.ndarray)):
            batches_or_tensor = [batches_or_tensor]
        total, count = 0.0, 0
        for batch in batches_or_tensor:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            xb = self._as_input(torch.as_tensor(batch)).double()
            total += float(xb.norm(dim=1).sum())
            count += xb.shape[0]
        if count == 0 or total <= 0:
            raise InputError("fit_normalisation: no rows, or all rows are zero")
        scale = math.sqrt(self.d_in) / (total / count)
        self.norm_scale.fill_(scale)
        self.cfg.normalisation_scale = float(self.norm_scale)
        return float(self.norm_scale)

    @torch.no_grad()
    def init_from_data(self, x: Tensor, method: str | None = None) -> SparseAutoencoder:
        """Set the pre-encoder bias ``b_dec`` from a data sample: 'geometric_median'
        (Weiszfeld), 'mean' or 'zeros' (default: ``config.b_dec_init``). Run after
        ``fit_normalisation``: b_dec is in normalised units."""
        method = method or self.cfg.b_dec_init
        if self.cfg.normalise_inputs and self.cfg.normalisation_scale is None:
            warnings.warn(
                "init_from_data before fit_normalisation: b_dec will be in unscaled units",
                stacklevel=3,  # past torch.no_grad's wrapper, to the caller
            )
        x_n = self._as_input(x) * self.norm_scale
        if method == "geometric_median":
            self.b_dec.copy_(geometric_median(x_n))
        elif method == "mean":
            self.b_dec.copy_(x_n.mean(0))
        elif method == "zeros":
            self.b_dec.zero_()
        else:
            raise InputError(f"method={method!r}: use 'geometric_median', 'mean' or 'zeros'")
        return self

    # -- decoder geometry ------------------------------------------------------------

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        """Rescale every decoder row to unit L2 norm (call after each optimizer step)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_grads_(self) -> None:
        """Project out of ``W_dec.grad`` the component parallel to each decoder row (call
        before the optimizer step), so a step moves rows along the unit sphere rather than
        fighting the renormalisation."""
        grad = self.W_dec.grad
        if grad is None:
            return
        w = self.W_dec
        coef = torch.linalg.vecdot(grad, w, dim=1) / torch.linalg.vecdot(w, w, dim=1).clamp_min(1e-12)
        grad.addcmul_(coef.unsqueeze(1), w, value=-1.0)

    # -- dead latents ------------------------------------------------------------------

    @torch.no_grad()
    def update_dead_stats(self, codes: Tensor | SparseCodes | SAEOutput) -> None:
        """Count rows since each latent last fired (forward() does this in train mode)."""
        if isinstance(codes, SAEOutput):
            codes = codes.sparse_codes if codes.sparse_codes is not None else codes.dense_codes
        if isinstance(codes, SparseCodes):
            fired, n = codes.fired(), codes.n_rows
        else:
            fired, n = (codes > 0).any(dim=0), codes.shape[0]
        fired, n = _all_ranks(fired, n)
        self.rows_since_fired += n
        self.rows_since_fired[fired] = 0

    def dead_mask(self, threshold_rows: int | None = None) -> Tensor:
        """[d_sae] bool: latents that have not fired for ``threshold_rows`` rows
        (default ``config.dead_rows_threshold``)."""
        threshold = self.cfg.dead_rows_threshold if threshold_rows is None else threshold_rows
        return self.rows_since_fired >= threshold

    def auxk_loss(self, target: Tensor, out: SAEOutput) -> Tensor:
        """AuxK (Gao et al. 2024, section A.2; OpenAI sparse_autoencoder ``loss_fn``).

        e      = target - x_hat.detach()          residual of the main reconstruction
        z_aux  = top-k_aux of the dead latents' pre-activations, ReLU'd (per row)
        e_hat  = z_aux @ W_dec                     reconstruction of e by dead latents only
        auxk   = ||e - e_hat||^2 / ||e - mean_rows(e)||^2   (sums over the batch)

        Detached: the main reconstruction x_hat (so AuxK never moves the live latents
        through their codes) and the selection of which latents/rows are used. Not
        detached: the dead latents' encoder columns and biases, their decoder rows, and
        b_dec through the encoder input. (OpenAI adds b_dec to e_hat and b_dec.detach() to
        the target; the two cancel in value, so we leave both out.) The total loss adds
        ``auxk_coefficient * auxk``. Zero when no latent is dead; NaN (0/0) is mapped to 0.
        """
        dead = self.dead_mask()
        if not bool(dead.any()):
            return target.new_zeros(())
        dead_idx = dead.nonzero().squeeze(1)
        k_aux = min(self.cfg.resolved_k_aux, dead_idx.numel())
        with torch.no_grad():
            pre = out.pre_acts.detach()
            vals, pos = pre.index_select(1, dead_idx).topk(k_aux, dim=1, sorted=False)
            aux = SparseCodes.from_fixed_k(vals, dead_idx[pos], self.d_sae)
        aux.values = gather_preacts(aux.values, aux, out.x_centred, self.W_enc, self.b_enc).relu()
        e_hat = decode_sparse(aux, self.W_dec)
        e = target - out.x_hat_normalised.detach()
        num = (e - e_hat).pow(2).sum()
        den = (e - e.mean(0)).pow(2).sum()
        return (num / den).nan_to_num(0.0)

    @torch.no_grad()
    def resample_dead_(self, x_batch: Tensor, threshold_rows: int | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """Re-initialise dead latents towards badly reconstructed inputs (Anthropic,
        Towards Monosemanticity, 2023). Returns the indices of the resampled latents.

        For each dead latent, draw a row of ``x_batch`` with probability proportional to
        its squared reconstruction loss squared; set the decoder row to that row's
        (centred, normalised) direction, the encoder column to the same direction scaled
        to 0.2 x the mean encoder-column norm of live latents, the encoder bias to 0, and
        its dead counter to 0. The caller must also reset the optimizer state (e.g. Adam
        moments) of those rows/columns, which this module cannot see. The draw uses
        ``generator`` (default: torch's global RNG, which a resumed run does not restore).
        """
        dead = self.dead_mask(threshold_rows)
        idx = dead.nonzero().squeeze(1)
        if idx.numel() == 0:
            return idx
        x_c = self._centre(x_batch)
        codes, _, _ = self._encode(x_c)
        err = (self._decode_normalised(codes) - (x_c + self.b_dec)).pow(2).sum(1)
        weights = err.pow(2)
        if not bool(weights.sum() > 0):
            weights = torch.ones_like(weights)
        rows = torch.multinomial(
            weights, idx.numel(), replacement=idx.numel() > len(weights), generator=generator
        )
        dirs = x_c[rows] / x_c[rows].norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = ~dead
        enc_norm = self.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else 1.0
        self.W_dec[idx] = dirs
        self.W_enc[:, idx] = dirs.t() * (0.2 * enc_norm)
        self.b_enc[idx] = 0.0
        self.rows_since_fired[idx] = 0
        return idx

    # -- persistence -----------------------------------------------------------------

    def fitted_config(self) -> SAEConfig:
        """A copy of the config with the fitted scalars (normalisation, thresholds) filled in."""
        cfg = copy.deepcopy(self.cfg)
        if cfg.normalise_inputs:  # from the buffer: also right after a checkpoint restore
            cfg.normalisation_scale = float(self.norm_scale)
        return cfg

    def save(self, path_dir) -> None:
        """Write ``sae.safetensors`` and ``sae.json`` into ``path_dir`` (see ``bioviz.sae.io``)."""
        save_sae(self, path_dir)

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae}"

