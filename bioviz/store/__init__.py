"""The ActivationStore: zarr arrays (rows × d, one per layer) + a parquet obs table + a manifest."""

from .format import StoreError
from .reader import ActivationStore
from .writer import ResumePoint, StoreWriter

__all__ = ["ActivationStore", "StoreWriter", "StoreError", "ResumePoint"]
