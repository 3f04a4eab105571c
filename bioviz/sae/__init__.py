"""Sparse autoencoders: several architectures behind one interface.

    from bioviz.sae import SAEConfig, build_sae, load_sae

    sae = build_sae(SAEConfig(architecture="topk", d_in=512, expansion_factor=16, k=32))
    sae.fit_normalisation(batches); sae.init_from_data(sample)
    out = sae(x); losses = sae.loss(x, out)
    sae.save("run/sae"); sae = load_sae("run/sae", expect_d_in=512)

Architectures (``ARCHITECTURES``): topk, batchtopk, relu, jumprelu, matryoshka. Training
(Lightning): ``bioviz.train`` / :mod:`bioviz.sae.train`, set up by ``SAEConfig`` and
``OptimConfig``.
"""

from . import jumprelu, matryoshka, relu, topk  # noqa: F401  (registers the architectures)
from .base import SAEOutput, SparseAutoencoder, fraction_of_variance_unexplained, geometric_median
from .config import FORMAT_VERSION, OptimConfig, SAEConfig
from .io import build_sae, load_sae, save_sae
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE
from .registry import ARCHITECTURES, register
from .relu import ReLUSAE
from .sparse import SparseCodes
from .topk import BatchTopKSAE, TopKSAE

__all__ = [
    "ARCHITECTURES",
    "FORMAT_VERSION",
    "BatchTopKSAE",
    "JumpReLUSAE",
    "MatryoshkaSAE",
    "OptimConfig",
    "ReLUSAE",
    "SAEConfig",
    "SAEOutput",
    "SparseAutoencoder",
    "SparseCodes",
    "TopKSAE",
    "build_sae",
    "fraction_of_variance_unexplained",
    "geometric_median",
    "load_sae",
    "register",
    "save_sae",
]
