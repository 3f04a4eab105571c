"""Adapters: one module per modality family. Installed as ``bioviz.adapters``."""

from .base import Adapter, Batch
from .generic import TorchAdapter
from .volume import VolumeAdapter

__all__ = ["Adapter", "Batch", "TorchAdapter", "VolumeAdapter"]
