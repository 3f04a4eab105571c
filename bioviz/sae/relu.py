"""ReLU SAE with a decoder-norm-weighted L1 penalty (Anthropic, "Circuits Updates", April 2024).

    codes = relu(x_c @ W_enc + b_enc)
    l1    = mean over rows of sum_i codes_i * ||W_dec_i||_2

Weighting by the decoder norm stops the model from shrinking codes while growing decoder
rows to dodge the penalty, so the decoder does not need to be constrained (calling
``normalise_decoder_`` anyway is harmless). The training loop warms the coefficient up by
passing ``sparsity_scale`` to ``loss``; the config keeps the configured coefficient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SAEOutput, SparseAutoencoder
from .config import SAEConfig, _finite_non_negative
from .registry import register


@register("relu")
class ReLUSAE(SparseAutoencoder):
    """ReLU codes with an L1 penalty weighted by decoder norms (``l1_coefficient``)."""

    config_fields = ("l1_coefficient",)

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> list[str]:
        return super().check_config(cfg) + _finite_non_negative(cfg, "l1_coefficient")

    @property
    def l1_coefficient(self) -> float:
        """The L1 coefficient (``cfg.l1_coefficient``); settable."""
        return self.cfg.l1_coefficient

    @l1_coefficient.setter
    def l1_coefficient(self, value: float) -> None:
        self.cfg.l1_coefficient = float(value)

    def _encode(self, x_c: Tensor):
        pre = torch.addmm(self.b_enc, x_c, self.W_enc)
        return F.relu(pre), pre, {}

    def _penalties(self, target: Tensor, out: SAEOutput, sparsity_scale: float = 1.0):
        # codes @ norms rather than (codes * norms).sum(-1): no second [n, d_sae] tensor
        l1 = (out.codes @ self.W_dec.norm(dim=1)).mean()
        return {"l1": (l1, self.l1_coefficient * sparsity_scale / self.d_in)}
