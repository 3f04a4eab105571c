"""TopK (Gao et al. 2024) and BatchTopK (Bussmann et al. 2024) SAEs.

Both choose which latents are active by a top-k over pre-activations, then ReLU the
chosen values. The forward computes the dense pre-activations once without a graph,
selects, and gives the selected values a sparse backward (see ``bioviz.sae.sparse``);
``config.sparse_path=False`` runs the same maths through dense autograd instead.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .base import SparseAutoencoder, _distributed
from .config import SAEConfig, _finite_non_negative, _is_int, _is_number
from .registry import register
from .sparse import SparseCodes, batch_topk, gather_preacts


class _TopKFamily(SparseAutoencoder):
    """Codes from a top-k selection: ``k``, AuxK (``k_aux``, ``auxk_coefficient``) and the
    sparse decode/backward (``sparse_path``) apply."""

    uses_auxk = True
    config_fields = ("k", "k_aux", "auxk_coefficient", "sparse_path")

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> list[str]:
        errors = super().check_config(cfg)
        if not _is_int(cfg.k) or cfg.k < 1:
            errors.append(f"k={cfg.k!r} must be an integer >= 1")
        elif _is_int(cfg.d_sae) and cfg.d_sae >= 1 and cfg.k > cfg.d_sae:
            errors.append(f"k={cfg.k} is larger than d_sae={cfg.d_sae}")
        if cfg.k_aux is not None and (not _is_int(cfg.k_aux) or cfg.k_aux < 1):
            errors.append(f"k_aux={cfg.k_aux!r} must be an integer >= 1 (or None)")
        return errors + _finite_non_negative(cfg, "auxk_coefficient")

    def _select(self, pre: Tensor) -> SparseCodes:
        """Positions (and raw values) of the active entries of detached ``pre``."""
        raise NotImplementedError

    def _encode(self, x_c: Tensor):
        if self.cfg.sparse_path:
            with torch.no_grad():
                pre = torch.addmm(self.b_enc, x_c, self.W_enc)
            codes = self._select(pre)
            values = gather_preacts(codes.values, codes, x_c, self.W_enc, self.b_enc)
        else:
            pre_graph = torch.addmm(self.b_enc, x_c, self.W_enc)
            pre = pre_graph.detach()
            codes = self._select(pre)
            values = pre_graph[codes.row_ids(), codes.cols]
        codes.values = values.relu()
        return codes, pre, {}


@register("topk")
class TopKSAE(_TopKFamily):
    """Keep each row's k largest pre-activations (ReLU'd); every row has exactly k
    selected latents (fewer positive ones only if fewer than k pre-activations are > 0)."""

    def _select(self, pre: Tensor) -> SparseCodes:
        values, indices = pre.topk(self.cfg.k, dim=1, sorted=False)
        return SparseCodes.from_fixed_k(values, indices, self.d_sae)


@register("batchtopk")
class BatchTopKSAE(_TopKFamily):
    """BatchTopK: in training keep the k x n largest pre-activations of the whole batch,
    so rows share a budget of k on average and hard rows can use more latents.

    Inference cannot depend on the batch, so training also estimates a threshold: an
    exponential moving average (rate ``threshold_momentum``) of the smallest positive
    selected activation per batch (Bussmann et al. 2024). In eval mode codes are
    ``pre * (pre > threshold)``, a JumpReLU with one shared threshold. The threshold is a
    buffer (saved; in normalised units); until it has been estimated, eval mode falls back
    to the batch selection with a warning.
    """

    config_fields = (*_TopKFamily.config_fields, "threshold_momentum", "inference_threshold")

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> list[str]:
        errors = super().check_config(cfg)
        m = cfg.threshold_momentum
        if not _is_number(m) or not 0 < m <= 1:
            errors.append(f"threshold_momentum={m!r} must be in (0, 1]")
        t = cfg.inference_threshold
        if t is not None and not (_is_number(t) and math.isfinite(t) and t >= 0):
            errors.append(f"inference_threshold={t!r} must be a finite number >= 0 (or None)")
        return errors

    def __init__(self, config):
        super().__init__(config)
        init = self.cfg.inference_threshold
        self.register_buffer("threshold", torch.tensor(-1.0 if init is None else float(init)))

    def _select(self, pre: Tensor) -> SparseCodes:
        if not self.training:
            if self.threshold >= 0:
                active = pre > self.threshold
                rows, cols = active.nonzero(as_tuple=True)
                crow = torch.zeros(pre.shape[0] + 1, dtype=torch.int64, device=pre.device)
                crow[1:] = active.sum(1).cumsum(0)
                return SparseCodes(crow, cols, pre[rows, cols], self.d_sae)
            warnings.warn(
                f"{type(self).__name__}: no inference threshold estimated yet (train first); "
                "encoding with the batch-level top-k", stacklevel=3,
            )
        crow, cols, values = batch_topk(pre, self.cfg.k * pre.shape[0])
        return SparseCodes(crow, cols, values, self.d_sae)

    @torch.no_grad()
    def _after_train_forward(self, codes: SparseCodes) -> None:
        positive = codes.values[codes.values > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().to(self.threshold.dtype)
        if _distributed():  # one threshold for all ranks: the smallest kept value anywhere
            import torch.distributed as dist

            dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, self.cfg.threshold_momentum)

    def fitted_config(self):
        cfg = super().fitted_config()
        cfg.inference_threshold = float(self.threshold) if self.threshold >= 0 else None
        return cfg
