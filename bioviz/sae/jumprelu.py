"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead").

    z     = relu(x_c @ W_enc + b_enc)
    codes = z * H(z - theta)                 theta = exp(log_threshold), one per latent
    l0    = mean over rows of sum_i H(z_i - theta_i)

H has no useful gradient, so theta learns through straight-through estimators with a
rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth eps (``jumprelu_bandwidth``):

    d codes_i / d theta_i := -(theta_i / eps) K((z_i - theta_i) / eps)
    d H(z_i - theta_i) / d theta_i := -(1 / eps) K((z_i - theta_i) / eps)

while d codes / d z = H(z - theta) and the L0 term passes no gradient to z (as in the
paper's reference code). The L0 coefficient is settable (``sae.l0_coefficient``); the
training loop warms it up by passing ``sparsity_scale`` to ``loss``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SAEOutput, SparseAutoencoder
from .config import SAEConfig, _finite_non_negative, _positive
from .registry import register


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_z = grad * (z > theta)
        g_theta = (-(theta / eps) * _rectangle((z - theta) / eps) * grad).sum(0)
        return g_z, g_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_theta = (-(1.0 / eps) * _rectangle((z - theta) / eps) * grad).sum(0)
        return None, g_theta, None


@register("jumprelu")
class JumpReLUSAE(SparseAutoencoder):
    """JumpReLU codes (a learned threshold per latent) with an L0 penalty."""

    config_fields = ("l0_coefficient", "jumprelu_bandwidth", "jumprelu_init_threshold")

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> list[str]:
        return (super().check_config(cfg) + _finite_non_negative(cfg, "l0_coefficient")
                + _positive(cfg, "jumprelu_bandwidth", "jumprelu_init_threshold"))

    def __init__(self, config):
        super().__init__(config)
        init = math.log(self.cfg.jumprelu_init_threshold)
        self.log_threshold = nn.Parameter(torch.full((self.d_sae,), init))

    @property
    def l0_coefficient(self) -> float:
        """The L0 coefficient (``cfg.l0_coefficient``); settable."""
        return self.cfg.l0_coefficient

    @l0_coefficient.setter
    def l0_coefficient(self, value: float) -> None:
        self.cfg.l0_coefficient = float(value)

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def _encode(self, x_c: Tensor):
        z = F.relu(torch.addmm(self.b_enc, x_c, self.W_enc))
        return _JumpReLU.apply(z, self.threshold, self.cfg.jumprelu_bandwidth), z, {}

    def _penalties(self, target: Tensor, out: SAEOutput, sparsity_scale: float = 1.0):
        # z detached: the step passes no gradient to it anyway, and this keeps the graph small
        l0 = _Step.apply(out.pre_acts.detach(), self.threshold, self.cfg.jumprelu_bandwidth)
        return {"l0_penalty": (l0.sum(-1).mean(), self.l0_coefficient * sparsity_scale / self.d_in)}
