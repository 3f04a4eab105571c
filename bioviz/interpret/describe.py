"""A one-line, plain-language description of a feature, built only from evidence tables.

Every phrase comes from named cells of the tables given, and :func:`describe` returns those
cells as its sources, so a reader (or a test) can check each word against the numbers.

Evidence tables (pandas DataFrames, tidy; extra columns are ignored). A table with a
``feature`` column is filtered to the feature described; one without (e.g. the output of
:func:`~bioviz.interpret.motifs.match_jaspar` for the feature's motif) is taken to be about
it. Each table is optional; the keys of ``evidence`` name them:

``summary``
    :func:`~bioviz.interpret.examples.feature_summary`: ``feature, n_rows_firing,
    top_subject_share, top_subjects, single_subject``. Gives "never fires" and the
    single-subject caution.
``composition``
    :func:`~bioviz.interpret.examples.top_composition`: ``feature, column, value, share``
    (share of the top rows; the commonest value is described). With a cell-type column:
    "fires in CD14+ Monocytes (71% of top cells)".
``cell_types``
    :func:`~bioviz.interpret.genes.cell_type_composition`: ``feature, group, specificity,
    n_firing``: the group where the feature is strongest against the closest other group,
    "most specific to CD56+ NK (2.6x the next cell type)", when that ratio is above 1.5.
``top_genes``
    ``feature, gene`` and ``rank`` (1 = top) or ``score`` (higher = top), else table order:
    "top genes S100A9, LYZ, S100A8" (the first three).
``enrichment``
    :func:`~bioviz.interpret.enrichment.overrepresentation` or ``preranked``: ``feature, set,
    p, q`` (``nes`` or ``es``, when present, give the sign): the set with the smallest q,
    "enriched for Interferon type I response, q = 0.002".
``motifs``
    :func:`~bioviz.interpret.motifs.match_jaspar`: ``matrix_id, name, p, q`` (``rank``
    optional): the best match, "matches JASPAR MA0139.2 CTCF, q = 1e-5".
``map_groups``
    The volume adapter's group-mean maps (``kind`` raw or refined, by label value): where the
    map peaks and how it agrees with the masks, refined maps before raw ones and the group
    with the most masks first: "refined map of label = 1 peaks at (46, -20, 30) mm, right
    hemisphere; Dice 0.83 with the masks, pointing game 100%".
``interventions``
    :func:`~bioviz.interpret.intervene.intervene` with ``feature`` the feature described (the
    edited latent's index in another column): the output unit the ablation moves most, "ablation
    moves output 1 by 0.42 per item, 21x random features of its density (p = 0.048)"; with
    ``p_empirical >= alpha``, "ablation moves the output no more than random features".
``association``
    Rows of ``Findings.candidates`` or ``Findings.table``: ``feature, label, contrast,
    effect_name, effect, q`` (``direction`` or ``null`` give the sign; ``rank``, when
    present, picks the row, else the smallest q): "higher in AD than CN: AUROC 0.81, q = 0.003".

Enrichment, motif and association results with ``q >= alpha`` are reported as absent
("no gene set enriched at q < 0.05 (best q = 0.41)"), never as findings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["Source", "TABLES", "describe", "describe_all"]

#: the evidence tables describe() reads, in the order of their phrases, and their columns
TABLES = {
    "summary": ("n_rows_firing", "top_subject_share", "top_subjects", "single_subject"),
    "composition": ("column", "value", "share"),
    "cell_types": ("group", "specificity", "n_firing"),
    "top_genes": ("gene",),
    "enrichment": ("set", "p", "q"),
    "motifs": ("matrix_id", "name", "p", "q"),
    "association": ("label", "contrast", "effect_name", "effect", "q"),
    "interventions": ("role", "output", "mean_abs_change", "effect_ratio", "p_empirical"),
    "map_groups": ("kind", "label", "label_value", "n_masks", "peak_x_mm", "peak_y_mm", "peak_z_mm",
                   "region", "dice", "pointing_hit"),
}
_N_GENES = 3
_SPECIFIC = 1.5  # mean in a cell type over the next type's, above which a feature is "specific"
_EFFECT = {"auroc": "AUROC", "rho": "Spearman rho", "std_beta": "standardised beta",
           "epsilon_sq": "epsilon-squared", "log_or_per_sd": "log OR per SD",
           "log_hr_per_sd": "log HR per SD", "log_hr_high_vs_low": "log HR high vs low"}
_NULL = {"auroc": 0.5}


class Source(NamedTuple):
    """One cell a phrase was read from: ``evidence[table].loc[row, column]``."""

    table: str
    row: object
    column: str


def _q(q) -> str:
    """q-values as people write them: 0.003, 0.03, 0.41, 1e-5, 2.3e-7."""
    q = float(q)
    if not np.isfinite(q):
        return "NA"
    if q >= 1e-3:
        return f"{q:.2g}"
    mantissa, exponent = f"{q:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _rows(name: str, table, feature: str) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"evidence[{name!r}] must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in TABLES[name] if c not in table.columns]
    if missing:
        raise InputError(f"evidence[{name!r}] lacks the column(s) {', '.join(missing)}; expected "
                         f"{', '.join(TABLES[name])} (see bioviz.interpret.describe)")
    if not table.index.is_unique:
        raise InputError(f"evidence[{name!r}] has a repeated index: sources name rows by index "
                         "label; call .reset_index(drop=True) first")
    return table[table["feature"].astype(str) == feature] if "feature" in table else table


def _best(rows: pd.DataFrame, by: list[str]) -> object:
    """Index label of the first row when sorted by the ``by`` columns present (NaN last)."""
    by = [c for c in by if c in rows]
    return rows.sort_values(by, kind="stable", na_position="last").index[0] if by else rows.index[0]


def _summary(rows, alpha):
    r = rows.index[0]
    row = rows.loc[r]
    if int(row["n_rows_firing"]) == 0:
        return [("never fires in the FeatureTable", [Source("summary", r, "n_rows_firing")])]
    if bool(row["single_subject"]):
        subject = str(row["top_subjects"]).split(":")[0]
        return [(f"caution: {row['top_subject_share']:.0%} of top rows from one subject "
                 f"({subject})", [Source("summary", r, "top_subject_share"),
                                  Source("summary", r, "top_subjects")])]
    return []


def _composition(rows, alpha):
    r = _best(rows.assign(_neg=-rows["share"].astype(float)), ["_neg"])
    column, value = str(rows.at[r, "column"]), rows.at[r, "value"]
    unit = "cells" if "cell" in column.lower() else "rows"
    where = value if "cell_type" in column.lower() else f"{column} = {value}"
    return [(f"fires in {where} ({rows.at[r, 'share']:.0%} of top {unit})",
             [Source("composition", r, c) for c in ("column", "value", "share")])]


def _cell_types(rows, alpha):
    rows = rows[rows["n_firing"].astype(float) > 0]
    if rows.empty:
        return []
    r = rows["specificity"].astype(float).replace(np.inf, np.finfo(float).max).idxmax()
    spec = float(rows.at[r, "specificity"])
    if not spec > _SPECIFIC:
        return []
    times = "only there" if np.isinf(spec) else f"{spec:.1f}x the next cell type"
    return [(f"most specific to {rows.at[r, 'group']} ({times})",
             [Source("cell_types", r, c) for c in ("group", "specificity")])]


def _top_genes(rows, alpha):
    if "rank" in rows:
        rows = rows.sort_values("rank", kind="stable")
    elif "score" in rows:
        rows = rows.sort_values("score", ascending=False, kind="stable")
    rows = rows[rows["gene"].notna()].drop_duplicates("gene").head(_N_GENES)
    if rows.empty:
        return []
    return [("top genes " + ", ".join(map(str, rows["gene"])),
             [Source("top_genes", r, "gene") for r in rows.index])]


def _enrichment(rows, alpha):
    r = _best(rows, ["q", "p"])
    q = float(rows.at[r, "q"])
    if not q < alpha:
        return [(f"no gene set enriched at q < {alpha:g} (best q = {_q(q)})",
                 [Source("enrichment", r, "q")])]
    sign_col = next((c for c in ("nes", "es") if c in rows), None)
    down = sign_col is not None and float(rows.at[r, sign_col]) < 0
    src = [Source("enrichment", r, "set"), Source("enrichment", r, "q")]
    src += [Source("enrichment", r, sign_col)] if sign_col else []
    return [(f"{'depleted of' if down else 'enriched for'} {rows.at[r, 'set']}, q = {_q(q)}", src)]


def _motifs(rows, alpha):
    r = _best(rows, ["rank", "p"])
    q = float(rows.at[r, "q"])
    if not q < alpha:
        return [(f"no JASPAR match at q < {alpha:g} (best q = {_q(q)})",
                 [Source("motifs", r, "q")])]
    return [(f"matches JASPAR {rows.at[r, 'matrix_id']} {rows.at[r, 'name']}, q = {_q(q)}",
             [Source("motifs", r, c) for c in ("matrix_id", "name", "q")])]


def _map_groups(rows, alpha):
    rows = rows.assign(_refined=rows["kind"].astype(str) != "refined",
                       _masks=-rows["n_masks"].fillna(0).astype(float),
                       _silent=rows["peak_x_mm"].isna())
    r = _best(rows, ["_silent", "_refined", "_masks"])
    if pd.isna(rows.at[r, "peak_x_mm"]):
        return [(f"{rows.at[r, 'kind']} maps are silent", [Source("map_groups", r, "peak_x_mm")])]
    xyz = ", ".join(f"{float(rows.at[r, c]):.0f}" for c in ("peak_x_mm", "peak_y_mm", "peak_z_mm"))
    region = rows.at[r, "region"]
    where = f" ({region})" if pd.notna(region) and str(region) else ""
    cols = ["kind", "label", "label_value", "peak_x_mm", "peak_y_mm", "peak_z_mm"]
    cols += ["region"] if where else []
    text = (f"{rows.at[r, 'kind']} map of {rows.at[r, 'label']} = {rows.at[r, 'label_value']} "
            f"peaks at ({xyz}) mm{where}")
    if float(rows.at[r, "n_masks"] or 0) > 0 and pd.notna(rows.at[r, "dice"]):
        text += (f"; Dice {float(rows.at[r, 'dice']):.2f} with the masks, pointing game "
                 f"{float(rows.at[r, 'pointing_hit']):.0%}")
        cols += ["n_masks", "dice", "pointing_hit"]
    return [(text, [Source("map_groups", r, c) for c in cols])]


def _direction(rows, r) -> tuple[float, str]:
    if "direction" in rows and pd.notna(rows.at[r, "direction"]):
        return float(rows.at[r, "direction"]), "direction"
    null = rows.at[r, "null"] if "null" in rows else _NULL.get(rows.at[r, "effect_name"], 0.0)
    return float(np.sign(float(rows.at[r, "effect"]) - float(null))), "effect"


def _association(rows, alpha):
    r = _best(rows, ["rank", "q", "p"])
    label, contrast = str(rows.at[r, "label"]), str(rows.at[r, "contrast"])
    name, effect, q = str(rows.at[r, "effect_name"]), float(rows.at[r, "effect"]), float(rows.at[r, "q"])
    stats = f"{_EFFECT.get(name, name)} {effect:.2f}, q = {_q(q)}"
    src = [Source("association", r, c) for c in ("label", "contrast", "effect_name", "effect", "q")]
    if not q < alpha:
        return [(f"no association with {label} at q < {alpha:g} ({stats})", src)]
    sign, sign_col = _direction(rows, r)
    if sign_col == "direction":
        src.append(Source("association", r, "direction"))
    more = "higher" if sign > 0 else "lower"
    if name.startswith("log_hr"):
        what = f"linked to {more} hazard ({label})"
    elif name == "epsilon_sq":
        what = f"differs across {label}"
    elif " vs " in contrast:  # a binary label or one level against the rest, whatever the test
        a, b = contrast.split(" vs ", 1)
        what = f"{more} in {a} than {'the rest' if b == 'rest' else b}"
    elif name in ("rho", "std_beta"):
        what = f"{'rises' if sign > 0 else 'falls'} with {label}"
    else:
        what = f"associated with {label} ({contrast})"
    return [(f"{what}: {stats}", src)]


def _interventions(rows, alpha):
    target = rows[rows["role"].astype(str) == "target"]
    if target.empty:
        return []
    r = target["mean_abs_change"].astype(float).idxmax()
    ratio, p = float(target.at[r, "effect_ratio"]), float(target.at[r, "p_empirical"])
    unit = "output_name" if "output_name" in target and pd.notna(target.at[r, "output_name"]) else "output"
    what = f"output {target.at[r, unit]}" if unit == "output" else f"the prediction of {target.at[r, unit]}"
    src = [Source("interventions", r, c) for c in (unit, "mean_abs_change", "effect_ratio",
                                                    "p_empirical")]
    n_random = int((rows["role"].astype(str) == "random").sum() // max(len(target), 1))
    if not 1 / (n_random + 1) < alpha:  # the smallest p that many random features can give
        return [(f"ablation moves {what} {ratio:.1f}x as much as "
                 f"{n_random} random features of its density (too few for p < {alpha:g})", src)]
    if not p < alpha:
        return [(f"ablation moves the output no more than random features of its density "
                 f"({ratio:.1f}x, p = {_q(p)})", src)]
    return [(f"ablation moves {what} by "
             f"{float(target.at[r, 'mean_abs_change']):.2g} per item, {ratio:.0f}x random "
             f"features of its density (p = {_q(p)})", src)]


# the order phrases come in: what the feature is, then what it tells, then the caution
_PHRASES = {"composition": _composition, "cell_types": _cell_types, "top_genes": _top_genes,
            "enrichment": _enrichment, "motifs": _motifs, "map_groups": _map_groups, "association": _association, "interventions": _interventions,
            "summary": _summary}


def describe(feature: str, evidence: Mapping[str, pd.DataFrame], *,
             alpha: float = 0.05) -> tuple[str, list[Source]]:
    """One line saying what ``feature`` is, every phrase traceable to an evidence cell.

    Parameters
    ----------
    feature : str
        The feature's name (e.g. ``"f12"``), matched against each table's ``feature`` column.
    evidence : dict of str to pandas.DataFrame
        Any of the tables described in :mod:`bioviz.interpret.describe` (``summary``,
        ``composition``, ``top_genes``, ``enrichment``, ``motifs``, ``association``).
    alpha : float, default 0.05
        q-values at or above it are reported as no finding.

    Returns
    -------
    text : str
        Phrases joined by ``"; "``, e.g. ``"fires in CD14+ Monocytes (71% of top cells); top
        genes S100A9, LYZ, S100A8; higher in AD than CN: AUROC 0.81, q = 0.003"``; a feature
        that never fires starts with ``"never fires in the FeatureTable"``; without usable
        evidence, ``"no evidence available: <why>"``.
    sources : list of Source
        ``(table, row, column)`` for every phrase, in phrase order: ``evidence[table].loc[row,
        column]`` holds what the phrase says.
    """
    if not isinstance(feature, str):
        raise InputError(f"feature must be a feature name (e.g. 'f12'), got {feature!r}")
    if not isinstance(evidence, Mapping):
        raise InputError(f"evidence must be a dict of table name → DataFrame, got "
                         f"{type(evidence).__name__}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise InputError(f"alpha must be a number between 0 and 1, got {alpha!r}")
    unknown = [k for k in evidence if k not in TABLES]
    if unknown:
        raise InputError(f"evidence has unknown table(s) {', '.join(map(repr, unknown))}; "
                         f"expected any of {', '.join(TABLES)}")
    if not evidence:
        return "no evidence available: no evidence tables given", []
    phrases: list[tuple[str, list[Source]]] = []
    empty = []
    for name, make in _PHRASES.items():
        if name not in evidence:
            continue
        rows = _rows(name, evidence[name], feature)
        if rows.empty:
            empty.append(name)
            continue
        phrases += make(rows, alpha)
    # "never fires" is the first thing to know, whatever the other tables say
    phrases.sort(key=lambda p: not p[0].startswith("never fires"))
    if not phrases:
        return (f"no evidence available: no rows for {feature} in {', '.join(empty)}", [])
    sources = [s._replace(row=s.row.item() if isinstance(s.row, np.generic) else s.row)
               for _, src in phrases for s in src]
    return "; ".join(p for p, _ in phrases), sources


def describe_all(features, evidence: Mapping[str, pd.DataFrame], *,
                 alpha: float = 0.05) -> pd.DataFrame:
    """:func:`describe` for each feature: ``feature, description, sources`` (a list each)."""
    if isinstance(features, str):
        features = [features]
    out = [(f, *describe(f, evidence, alpha=alpha)) for f in features]
    return pd.DataFrame(out, columns=["feature", "description", "sources"])
