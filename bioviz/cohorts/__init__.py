"""Demo cohorts with planted ground truth, generated from data that ships with dependencies."""

from .brain import make_brain_cohort

__all__ = ["make_brain_cohort"]
