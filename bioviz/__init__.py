"""bioviz: candidate biomarkers from inside biology and medical-imaging foundation models.

``import bioviz as bv``: a handful of verbs over on-disk artifacts (see DESIGN.md).
"""

__version__ = "0.1.0"

from .extract import extract  # noqa: E402
from .features import encode  # noqa: E402
from .hooks import capture, layer_names, resolve_layers  # noqa: E402
from .sae.fit import train  # noqa: E402
from .store import ActivationStore, StoreError  # noqa: E402

__all__ = ["__version__", "extract", "train", "encode", "capture", "layer_names", "resolve_layers", "ActivationStore", "StoreError"]
