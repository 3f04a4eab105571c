"""Synthetic FeatureTables with planted truths, for calibration (benchmarks, tests, docs):
like :func:`sklearn.datasets.make_classification`, but with subjects, rows nested in them,
and the structures that trip row-level statistics."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def make_cohort(n_subjects: int = 40, rows_per_subject: int = 50, n_features: int = 50, *,
                planted: dict[int, float] | None = None, within_subject: tuple[int, ...] = (1,),
                subject_sd: float = 0.6, sparsity: float = 0.6, seed: int = 0) -> ad.AnnData:
    """A FeatureTable of ``n_subjects`` × ``rows_per_subject`` rows and ``n_features`` codes.

    Every feature is ``relu(base + subject effect + row noise)``: the subject effect
    (sd ``subject_sd``) makes rows of one subject correlated, as cells of one donor are,
    so a row-level test of a subject-level label is anti-conservative. ``sparsity`` shifts
    ``base`` so that roughly that share of rows are zero.

    Parameters
    ----------
    planted
        ``{feature index: shift}``: the subject effect of cases (``diagnosis == "case"``) is
        raised by ``shift`` (in row-noise SDs): a real subject-level effect.
    within_subject
        Features that fire in one row type (``cell_type == "B"``, a third of every subject's
        rows) and nowhere else, in cases and controls alike: they separate rows, not subjects.

    Returns
    -------
    anndata.AnnData
        obs: ``subject_id``, ``sample_id``, ``diagnosis`` (case/control, balanced), ``age``,
        ``sex``, ``site`` (constant within subject), ``cell_type`` (per row); X: CSR float32;
        ``uns["planted"]``: the truth.
    """
    rng = np.random.default_rng(seed)
    planted = dict(planted if planted is not None else {0: 1.5})
    n = n_subjects * rows_per_subject
    subject = np.repeat(np.arange(n_subjects), rows_per_subject)
    case = rng.permutation(np.arange(n_subjects) % 2 == 1)
    cell_type = rng.choice(["A", "B", "C"], size=n)
    base = -np.quantile(rng.standard_normal(10_000), sparsity)
    effect = rng.normal(0, subject_sd, (n_subjects, n_features))
    for j, shift in planted.items():
        effect[case, j] += shift
    x = base + effect[subject] + rng.standard_normal((n, n_features))
    for j in within_subject:
        x[:, j] = np.where(cell_type == "B", 2.0 + rng.standard_normal(n) * 0.3, -1.0)
    x = np.maximum(x, 0).astype(np.float32)
    ids = np.array([f"S{i:03d}" for i in range(n_subjects)])
    obs = pd.DataFrame({
        "subject_id": ids[subject],
        "sample_id": ids[subject],
        "diagnosis": np.where(case, "case", "control")[subject],
        "age": np.round(rng.uniform(30, 80, n_subjects))[subject],
        "sex": rng.choice(["F", "M"], n_subjects)[subject],
        "site": rng.choice(["site1", "site2"], n_subjects)[subject],
        "cell_type": cell_type,
    }, index=[f"r{i}" for i in range(n)])
    ft = ad.AnnData(X=sp.csr_matrix(x), obs=obs,
                    var=pd.DataFrame(index=[f"f{j}" for j in range(n_features)]))
    ft.uns["planted"] = {"shift": {f"f{j}": float(s) for j, s in planted.items()},
                         "within_subject": [f"f{j}" for j in within_subject]}
    return ft
