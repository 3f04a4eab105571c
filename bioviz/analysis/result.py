"""What every association test returns, so multiple testing, resampling, ranking and the
Findings table handle all tests alike.

Conventions every test in :mod:`bioviz.analysis` follows (``X`` is subjects × features,
float64, one row per subject; the test is vectorised over its columns):

- ``covariates``: an ``(n, c)`` float64 design *without* intercept (categorical
  covariates already one-hot, reference level dropped), or ``None``. Tests add the
  intercept themselves.
- ``strata``: an ``(n,)`` integer array (or ``None``): permutations and bootstraps stay
  inside a stratum; Cox fits a baseline hazard per stratum.
- the effect has a stated null value (``null``): ``direction`` is the sign of
  ``effect - null`` (+1: higher feature goes with the label's "case" level, the larger
  value, or higher risk).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TestResult:
    """One test over all features: arrays of length n_features, aligned with ``X``'s columns.

    ``ci_low``/``ci_high`` are the model's own (Wald) interval where the test has one,
    else ``None``; bootstrap intervals are added later by :mod:`bioviz.analysis.resample`.
    ``extra`` holds further per-feature arrays written as columns (``se``, ``c_index``...).
    """

    __test__ = False  # not a pytest class

    test: str
    effect_name: str
    null: float
    statistic: np.ndarray
    p: np.ndarray
    effect: np.ndarray
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def direction(self) -> np.ndarray:
        # an undefined effect (a constant feature) has no direction: 0, not a cast warning
        return np.nan_to_num(np.sign(self.effect - self.null), nan=0.0).astype(np.int8)

    def __len__(self) -> int:
        return len(self.p)


KINDS = ("binary", "continuous", "categorical", "survival")


@dataclass
class Outcome:
    """One clinical label, aligned with the subjects (rows of ``X``) it is tested on.

    - binary: ``y`` bool (True = ``levels[1]``, the case level); ``levels`` = [control, case]
    - continuous: ``y`` float64
    - categorical: ``y`` int codes into ``levels`` (3 or more levels)
    - survival: ``y`` float64 follow-up time (> 0), ``event`` bool (True = event observed)
    """

    name: str
    kind: str
    y: np.ndarray
    levels: list[str] | None = None
    event: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> Outcome:
        """The same label on a subset (or resample) of the subjects."""
        return Outcome(self.name, self.kind, self.y[idx], self.levels,
                       None if self.event is None else self.event[idx])
