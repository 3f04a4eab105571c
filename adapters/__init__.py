"""Adapters: one module per modality family. Installed as ``bioviz.adapters``."""

from .base import Adapter, Batch
from .generic import TorchAdapter

__all__ = ["Adapter", "Batch", "TorchAdapter"]
