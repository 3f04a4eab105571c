"""Adapters: one module or package per modality family. Installed as ``bioviz.adapters``.

``generic`` (:class:`TorchAdapter`, any torch model), ``hf`` (transformers models from local
directories), ``sequence`` (DNA), ``singlecell`` (Geneformer, scGPT), ``volume`` (3D scans);
``weights`` (safe checkpoint loading) and ``datasets`` (arrays on disk for the generic adapter)
serve them. Heavy libraries (transformers, monai, scanpy) are imported only when an adapter is
built.
"""

from bioviz.adapter import Adapter, Batch

from .generic import TorchAdapter
from .hf import HFAdapter, load_hf_model
from .sequence import SequenceAdapter
from .singlecell import GeneformerAdapter, ScGPTAdapter, demo_adapter
from .volume import VolumeAdapter

__all__ = ["Adapter", "Batch", "TorchAdapter", "HFAdapter", "load_hf_model", "SequenceAdapter",
           "GeneformerAdapter", "ScGPTAdapter", "demo_adapter", "VolumeAdapter"]
