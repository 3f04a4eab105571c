"""Adapters: one module per modality family. Installed as ``bioviz.adapters``.

Heavy libraries (transformers, monai, scanpy) are imported only when an adapter is built.
"""

from bioviz.adapter import Adapter, Batch

from .generic import TorchAdapter
from .hf import HFAdapter, load_hf_model
from .sequence import SequenceAdapter
from .singlecell_demo import demo_adapter
from .singlecell_geneformer import GeneformerAdapter
from .singlecell_scgpt import ScGPTAdapter
from .volume import VolumeAdapter

__all__ = ["Adapter", "Batch", "TorchAdapter", "HFAdapter", "load_hf_model", "SequenceAdapter",
           "GeneformerAdapter", "ScGPTAdapter", "demo_adapter", "VolumeAdapter"]
