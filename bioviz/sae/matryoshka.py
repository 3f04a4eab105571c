"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024).

The dictionary is trained as a set of nested dictionaries: the first m_1 latents must
reconstruct the input on their own, the first m_2 > m_1 too, and so on up to d_sae. The
early latents are pushed towards general features and later ones refine them, which
limits feature splitting and absorption. Activation and inference threshold are those of
BatchTopK (one selection over the whole dictionary); only the objective changes:

    loss = sum over prefixes m of mse(x, b_dec + codes[:, :m] @ W_dec[:m]) + AuxK
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SAEOutput, register
from .sparse import decode_sparse
from .topk import BatchTopKSAE


@register("matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    @property
    def prefixes(self) -> list[int]:
        return self.cfg.resolved_prefixes

    def _reconstruction_loss(self, target: Tensor, out: SAEOutput, terms: dict) -> Tensor:
        codes = out.sparse_codes
        total = terms["mse"]  # the last prefix is the full dictionary, already decoded
        for m in self.prefixes[:-1]:
            if self.cfg.sparse_path:
                # same selected rows, entries past the prefix weighted 0: one cheap decode each
                weights = codes.values * (codes.cols < m)
                recon = decode_sparse(codes, self.W_dec, weights) + self.b_dec
            else:
                recon = torch.addmm(self.b_dec, out.codes[:, :m], self.W_dec[:m])
            terms[f"mse_prefix_{m}"] = F.mse_loss(recon, target)
            total = total + terms[f"mse_prefix_{m}"]
        return total
