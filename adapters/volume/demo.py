"""The demo model shipped with bioviz: a small MONAI ResNet trained by
``experiments/volume_demo_train.py`` on the planted-lesion brain cohort
(:func:`bioviz.cohorts.make_brain_cohort`), stored as a MONAI bundle directory."""

from __future__ import annotations

from pathlib import Path


def demo_bundle_path() -> Path:
    """The shipped bundle directory (configs/inference.json, models/model.safetensors)."""
    import bioviz

    path = Path(bioviz.__file__).parent / "data" / "volume_demo"
    if not (path / "models" / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: the demo model is not installed; regenerate it with "
                                "python experiments/volume_demo_train.py")
    return path


def demo_adapter(**kwargs):
    """A :class:`VolumeAdapter` over the shipped demo model (keyword arguments override)."""
    from .adapter import VolumeAdapter

    return VolumeAdapter(bundle=str(demo_bundle_path()), **kwargs)
