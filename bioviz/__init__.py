"""bioviz: candidate biomarkers from inside biology and medical-imaging foundation models.

``import bioviz as bv``: a handful of verbs over on-disk artifacts (docs/architecture.md).
Concrete adapters live in :mod:`bioviz.adapters`, imported on demand.
"""

from .analysis import Findings, aggregate, associate, rank_rows, to_obsm
from .errors import BiovizError, InputError
from .evaluate import fidelity, stability
from .extract import extract
from .features import encode
from .hooks import capture, layer_names, patch, resolve_layers
from .interpret import Interpretation, interpret
from .report import report
from .sae import SAEConfig, load_sae
from .sae.train import train
from .store import ActivationStore, StoreError
from .version import __version__

__all__ = ["__version__", "extract", "train", "encode", "aggregate", "associate", "rank_rows", "to_obsm",
           "Findings", "interpret", "Interpretation", "report", "fidelity", "stability", "capture", "patch", "layer_names", "resolve_layers",
           "load_sae", "SAEConfig", "ActivationStore", "StoreError", "BiovizError", "InputError"]
