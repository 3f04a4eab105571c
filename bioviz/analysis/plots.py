"""Figures of the statistics stage: one volcano plot per label (its primary test), so the
candidates are seen among all the features tested."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

_READABLE = {"auroc": "AUROC", "std_beta": "standardised coefficient", "log_or_per_sd": "log odds ratio per SD",
             "rho": "Spearman rho", "epsilon_sq": "epsilon²", "log_hr_per_sd": "log hazard ratio per SD",
             "log_hr_high_vs_low": "log hazard ratio (high vs low)"}


def volcano(table: pd.DataFrame, label: str, *, alpha: float = 0.05, annotate: int = 8, ax=None):
    """Effect against −log10 q for the primary test of ``label``; candidates (q < alpha) in
    colour and the strongest named. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    rows = table[(table["label"] == label) & table["primary"]]
    if rows.empty:
        raise ValueError(f"no primary test rows for label {label!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.8), constrained_layout=True)
    q = rows["q"].to_numpy(float)
    y = -np.log10(np.clip(q, 1e-300, 1))
    x = rows["effect"].to_numpy(float)
    hit = q < alpha
    ax.scatter(x[~hit], y[~hit], s=10, color="0.7", label=f"q ≥ {alpha}", rasterized=len(x) > 5000)
    ax.scatter(x[hit], y[hit], s=16, color="#c0392b", label=f"candidate (q < {alpha})")
    ax.axhline(-np.log10(alpha), color="0.4", lw=0.8, ls="--")
    null = float(rows["null"].iloc[0])
    ax.axvline(null, color="0.4", lw=0.8)
    for i in np.argsort(np.where(hit, q, np.inf))[:min(annotate, int(hit.sum()))]:
        ax.annotate(str(rows["feature"].iloc[i]), (x[i], y[i]), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    test, name = rows["test"].iloc[0], rows["effect_name"].iloc[0]
    ax.set_xlabel(f"effect: {_READABLE.get(name, name)} (no effect = {null:g})")
    ax.set_ylabel("−log10 q (" + rows["q_method"].iloc[0] + ")")
    ax.set_title(f"{label}: {test}, {len(rows)} features, {int(hit.sum())} candidates, "
                 f"n = {int(rows['n'].iloc[0])} subjects", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return ax


def write_figures(table: pd.DataFrame, folder: Path, *, alpha: float = 0.05) -> list[Path]:
    """``volcano_<label>.png`` and ``.svg`` for every label tested; the paths written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for label in table.loc[table["primary"], "label"].drop_duplicates():
        ax = volcano(table, label, alpha=alpha)
        stem = "volcano_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in str(label))
        for ext in ("png", "svg"):
            ax.figure.savefig(folder / f"{stem}.{ext}", dpi=150)
            written.append(folder / f"{stem}.{ext}")
        plt.close(ax.figure)
    return written
