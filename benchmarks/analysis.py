"""The statistics stage against its peers, side by side, and its calibration.

- rank_vs_scanpy_*: row-level one-vs-rest Wilcoxon, 100k rows × 5k sparse features, 10 groups,
  against scanpy ``rank_genes_groups`` (benchmarks/analysis_peers.py)
- ols_vs_statsmodels_*: subject-level OLS with 3 covariates, 20k features × 2k subjects, against
  a loop of statsmodels OLS (benchmarks/analysis_peers.py)
- cox_vs_lifelines_*: Cox with 2 covariates, 2k features × 500 subjects, against lifelines
  ``CoxPHFitter`` per feature (benchmarks/analysis_cox.py)
- calibration_*: synthetic cohorts (:func:`bioviz.analysis.synthetic.make_cohort`: rows nested
  in subjects, subject random effects) through :func:`bioviz.associate`:
  ``calibration_null_call_rate``: share of features called at q < 0.05 with the labels permuted
  at the subject level, averaged over 20 permutations; ``calibration_planted_rank``: the rank of
  a planted subject-level effect; ``calibration_within_subject_called``: 1 if a feature that
  separates rows (one cell type in everyone) but not subjects is called (it must not be).
  ``calibration_null_any_call_fraction``: share of those permutations with any call at all
  (a family-wise error rate). ``calibration_rowlevel_null_call_rate`` shows why: the same null cohorts tested row by row
  (pseudo-replicated, for contrast only).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

KEYS = ("rank_vs_scanpy_speedup", "rank_vs_scanpy_max_rel_p_diff", "ols_vs_statsmodels_speedup",
        "ols_vs_statsmodels_max_rel_diff", "cox_vs_lifelines_speedup", "cox_vs_lifelines_max_rel_diff",
        "calibration_null_call_rate", "calibration_planted_rank", "calibration_within_subject_called")


def _say(msg):
    print(f"# {msg}", file=sys.stderr, flush=True)


def calibration(n_null: int = 20, seed: int = 0) -> dict:
    from bioviz.analysis import associate, rank_rows
    from bioviz.analysis.synthetic import make_cohort

    fast = dict(n_permutations=0, n_boot=0, n_stability=0, probes=False, heldout=None, progress=False)
    ft = make_cohort(n_subjects=40, rows_per_subject=100, n_features=200, planted={0: 2.0},
                     within_subject=(1,), seed=seed)
    f = associate(ft, ["diagnosis"], covariates=["age", "sex"], n_permutations=200, n_boot=200,
                  n_stability=50, probes=False, heldout=None, progress=False)
    cand = f.candidates
    planted_rank = int(cand.loc[cand.feature == "f0", "rank"].iloc[0]) if (cand.feature == "f0").any() else -1
    within_called = int((cand.feature == "f1").any())
    _say(f"planted f0 rank {planted_rank} of {len(cand)} candidates; within-subject f1 called: {within_called}")

    rng = np.random.default_rng(seed + 1)
    null = make_cohort(n_subjects=40, rows_per_subject=100, n_features=200, planted={}, within_subject=(1,),
                       seed=seed + 2)
    subjects = null.obs["subject_id"].unique()
    truth = null.obs.groupby("subject_id", sort=False)["diagnosis"].first()
    rates, row_rates, any_call = [], [], []
    for i in range(n_null):
        perm = dict(zip(subjects, rng.permutation(truth.reindex(subjects).to_numpy())))
        null.obs["diagnosis"] = null.obs["subject_id"].map(perm).astype(str)
        f = associate(null, ["diagnosis"], **fast)
        primary = f.table[f.table.primary]
        rates.append(float((primary["q"] < 0.05).mean()))
        any_call.append(bool((primary["q"] < 0.05).any()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = rank_rows(null, "diagnosis", pseudo_replicated=True, progress=False)
        row_rates.append(float((rows[rows.group == "case"]["q"] < 0.05).mean()))
        _say(f"null permutation {i + 1}/{n_null}: subject-level call rate {rates[-1]:.3f}, "
             f"row-level (pseudo-replicated) {row_rates[-1]:.3f}")
    return {"calibration_null_call_rate": float(np.mean(rates)), "calibration_planted_rank": planted_rank,
            "calibration_within_subject_called": within_called,
            "calibration_null_any_call_fraction": float(np.mean(any_call)),
            "calibration_rowlevel_null_call_rate": float(np.mean(row_rates))}


def run() -> dict:
    from analysis_cox import cox_vs_lifelines
    from analysis_peers import ols_vs_statsmodels, rank_vs_scanpy

    figures = {}
    _say("row-level ranking vs scanpy rank_genes_groups")
    figures.update(rank_vs_scanpy())
    _say("subject-level OLS vs statsmodels")
    figures.update(ols_vs_statsmodels())
    _say("Cox vs lifelines")
    figures.update(cox_vs_lifelines())
    _say("calibration")
    figures.update(calibration())
    return figures


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k}: {v}")
