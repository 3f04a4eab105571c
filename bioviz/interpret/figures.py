"""Per-feature figures of the evidence tables, readable at print size (PNG and SVG):
the genes that drive a feature, its gene-set enrichment, and its ablation effect against the
random features of the same density. Each is drawn only from the table it shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .examples import safe_name

_N_GENES = 15
_N_OUTPUTS = 15  # output units drawn at most (a vocabulary has thousands)


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), layout="constrained")


def _save(fig, folder: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{ext}" for ext in ("png", "svg")]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def top_genes_figure(rows: pd.DataFrame, feature: str, folder: Path) -> list[Path]:
    """Bar chart of the feature's top genes (``top_genes``: mean activation on the gene's
    tokens, or the DE score)."""
    value = next(c for c in ("score", "mean_activation") if c in rows)
    rows = rows.dropna(subset=[value]).head(_N_GENES)[::-1]
    fig, ax = _figure(4.5, 0.25 * len(rows) + 1.2)
    ax.barh(rows["gene"].astype(str), rows[value].astype(float), color="#4477aa")
    ax.set_xlabel("DE score (active vs inactive cells)" if value == "score"
                  else "mean activation on the gene's tokens")
    ax.set_title(f"{feature}: top genes", fontsize=10)
    return _save(fig, folder, "top_genes")


def enrichment_figure(rows: pd.DataFrame, feature: str, folder: Path, alpha: float) -> list[Path]:
    """−log10 q of each gene set, the alpha line drawn; sets at q < alpha in colour."""
    rows = rows.dropna(subset=["q"]).sort_values("q").head(12)[::-1]
    score = -np.log10(rows["q"].astype(float).clip(lower=1e-300))
    fig, ax = _figure(5.5, 0.3 * len(rows) + 1.3)
    colours = np.where(rows["q"].astype(float) < alpha, "#cc6677", "#bbbbbb")
    ax.barh(rows["set"].astype(str), score, color=colours)
    ax.axvline(-np.log10(alpha), color="k", lw=0.8, ls="--", label=f"q = {alpha:g}")
    ax.set_xlabel("−log10 q (BH)")
    ax.set_title(f"{feature}: gene-set enrichment", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, folder, "enrichment")


def intervention_figure(rows: pd.DataFrame, feature: str, folder: Path) -> list[Path]:
    """Mean |output change| on ablation, per output unit: the feature (red) and each random
    feature of its density (grey points). With many units (a vocabulary), the
    ``_N_OUTPUTS`` the feature moves most."""
    tgt = rows[rows["role"] == "target"]
    many = len(tgt) > _N_OUTPUTS
    outputs = list(tgt.nlargest(_N_OUTPUTS, "mean_abs_change")["output"]) if many else sorted(tgt["output"])
    pos = {o: i for i, o in enumerate(outputs)}
    rows = rows[rows["output"].isin(pos)]
    tgt = rows[rows["role"] == "target"]
    names = (dict(zip(tgt["output"], tgt["output_name"].astype(str))) if "output_name" in tgt
             else {o: str(o) for o in outputs})
    fig, ax = _figure(max(3.5, 0.45 * len(outputs) + 2), 3.4)
    rand = rows[rows["role"] == "random"]
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(rand))
    ax.scatter(rand["output"].map(pos) + jitter, rand["mean_abs_change"], s=10, color="#999999",
               label="random features, same density")
    ax.scatter(tgt["output"].map(pos), tgt["mean_abs_change"], s=40, color="#cc3311", marker="D",
               label=feature)
    ax.set_xticks(range(len(outputs)), [names.get(o, str(o)) for o in outputs],
                  rotation=90 if len(outputs) > 6 else 0, fontsize=8)
    ax.set_xlabel("model output unit" + (f" (the {len(outputs)} it moves most)" if many else ""))
    ax.set_ylabel("mean |change| on ablation")
    ax.set_title(f"{feature}: ablation vs random features", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, folder, "ablation")


def write_figures(tables: dict[str, pd.DataFrame], features: list[str], out: Path,
                  alpha: float = 0.05) -> list[Path]:
    """The figures each feature's evidence allows, in ``out/<feature>/``; the paths written."""
    written = []
    for f in features:
        folder = out / safe_name(f)
        for name, draw in (("top_genes", top_genes_figure), ("enrichment", enrichment_figure),
                           ("interventions", intervention_figure)):
            t = tables.get(name)
            if t is None or "feature" not in t:
                continue
            rows = t[t["feature"].astype(str) == f]
            if rows.empty:
                continue
            args = (alpha,) if name == "enrichment" else ()
            written += draw(rows, f, folder, *args)
    return written
