"""The statistics stage: SAE features → subject-level association with clinical labels →
validated, ranked candidate biomarkers (a :class:`Findings` directory)."""

from .aggregate import aggregate, to_obsm
from .associate import associate
from .findings import Findings
from .rows import rank_rows

__all__ = ["aggregate", "to_obsm", "associate", "Findings", "rank_rows"]
