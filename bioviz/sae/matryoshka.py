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

from .base import SAEOutput
from .config import SAEConfig, _is_int
from .registry import register
from .sparse import decode_sparse
from .topk import BatchTopKSAE


@register("matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK codes, trained so that every prefix of the dictionary
    (``matryoshka_prefixes``) reconstructs the input on its own."""

    config_fields = (*BatchTopKSAE.config_fields, "matryoshka_prefixes")

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> list[str]:
        errors = super().check_config(cfg)
        if not (_is_int(cfg.d_sae) and cfg.d_sae >= 1):
            return errors  # the prefixes are checked against d_sae, reported elsewhere
        prefixes = cfg.resolved_prefixes
        if not all(_is_int(m) and m >= 1 for m in prefixes):
            errors.append(f"matryoshka_prefixes={prefixes} must be positive integers")
        elif any(b <= a for a, b in zip(prefixes, prefixes[1:])):
            errors.append(f"matryoshka_prefixes={prefixes} must be strictly increasing")
        elif prefixes[-1] != cfg.d_sae:
            errors.append(
                f"matryoshka_prefixes={prefixes} must end at d_sae={cfg.d_sae} "
                "(the last prefix is the whole dictionary)"
            )
        return errors

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
