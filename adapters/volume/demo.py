"""The demo model shipped with bioviz: a small MONAI ResNet trained by
``experiments/volume_demo_train.py`` on the planted-lesion brain cohort
(:func:`bioviz.adapters.volume.make_brain_cohort`), stored as a MONAI bundle directory: the
package data folder ``demo_model`` of ``bioviz.adapters.volume``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: the name stores record for it (the folder's name when it shipped in bioviz/data)
MODEL_NAME = "volume_demo"


def demo_bundle_path() -> Path:
    """The shipped bundle directory (configs/inference.json, models/model.safetensors)."""
    path = Path(str(resources.files(__package__).joinpath("demo_model")))
    if not (path / "models" / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: the demo model is not installed; regenerate it with "
                                "python experiments/volume_demo_train.py")
    return path


def demo_adapter(**kwargs):
    """A :class:`VolumeAdapter` over the shipped demo model (keyword arguments override)."""
    from .adapter import VolumeAdapter

    kwargs.setdefault("model_name", MODEL_NAME)
    return VolumeAdapter(bundle=str(demo_bundle_path()), **kwargs)
