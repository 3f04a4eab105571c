"""Compose the :class:`~bioviz.report.content.Report` from the Findings and the
interpretation: the words, tables and figures a clinician reads, de-identified, and the
full-precision tables behind them (``data/``).

Each section reads what the earlier stages recorded (the Findings manifest: settings, design,
split; the FeatureTable's provenance: model, layer, dictionary) and says it in plain words.
Nothing is claimed that a table does not hold.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import Findings
from ..interpret import Interpretation
from ..interpret.examples import safe_name
from .content import CandidatePage, Figure, Report, Table
from .deidentify import Pseudonyms, deidentify, scrub
from .figures import distribution_figure
from .text import (
    caveats,
    effect_text,
    limitations,
    methods,
    num,
    probes_text,
    test_text,
    validation_needed,
)

__all__ = ["compose", "Sources"]

INTERNAL_OBS = ("n_rows", "analysed", "split")  # bookkeeping columns of Findings.subjects.obs
SITE_NAMES = ("site", "center", "centre", "scanner", "batch", "institution", "hospital")


@dataclass
class Sources:
    """What the report is made from, opened, and the identifiers it must not show."""

    findings: Findings
    interpretation: Interpretation | None
    features: object | None  # the FeatureTable (AnnData, maybe backed) or None
    pseudonyms: Pseudonyms
    subject_key: str = "subject_id"
    identifying: tuple[str, ...] = ()
    keep_text: tuple[str, ...] = ()
    identifiers: set[str] = field(default_factory=set)  # original subject/sample ids
    identifying_values: set[str] = field(default_factory=set)

    def clean(self, table: pd.DataFrame) -> pd.DataFrame:
        """A table safe to show: identifying columns dropped, ids pseudonymised everywhere."""
        t = table.drop(columns=[c for c in self.identifying if c in table.columns])
        for c in t.columns:
            if str(c).lower() in ("subject", "subject_id", "sample", "sample_id", self.subject_key.lower()):
                t[c] = self.pseudonyms(t[c]).where(t[c].notna(), None)
        return scrub(t, self.pseudonyms, self.identifiers)


_CELL_CHARS = 80  # longer cells are cut in the page (the full text is in data/)
_COMMA = re.compile(r",(?=[^\s\d])")


def _fmt_table(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Strings as a reader wants them: 3 significant digits, yes/no, readable column names,
    long lists cut with an ellipsis."""
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_bool_dtype(out[c]):
            out[c] = out[c].map({True: "yes", False: "no"})
        elif pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].map(lambda v: num(v, digits))
    out = out.astype(object).where(out.notna(), "").astype(str)
    out = out.map(lambda v: _COMMA.sub(", ", v))  # lists wrap at their commas
    out = out.map(lambda v: v if len(v) <= _CELL_CHARS else v[:_CELL_CHARS - 1].rstrip(",; ") + "…")
    out.columns = [str(c).replace("_", " ") for c in out.columns]
    return out


# -- cohort ---------------------------------------------------------------------------------

def _cohort(src: Sources, shown_obs: pd.DataFrame) -> tuple[list[tuple[str, str]], list[Table], dict]:
    m = src.findings.manifest
    design = m.get("design", {})
    subj = m.get("subjects", {})
    facts = [("Subjects analysed", str(subj.get("analysed", src.findings.subjects.n_obs)))]
    if subj.get("heldout"):
        facts.append(("Discovery / held-out", f"{subj.get('discovery')} / {subj.get('heldout')} subjects "
                                              "(candidates were chosen on the discovery subjects only)"))
    for name, rec in design.get("labels", {}).items():
        facts.append((f"Label: {name}", _label_balance(rec, shown_obs)))
    covs = m.get("settings", {}).get("covariates") or []
    facts.append(("Covariates adjusted for", ", ".join(map(str, covs)) if covs else "none"))
    sites = [c for c in shown_obs.columns if str(c).lower() in SITE_NAMES]
    for c in sites:
        counts = shown_obs[c].astype(str).value_counts()
        facts.append((f"Sites ({c})", ", ".join(f"{k}: {v}" for k, v in counts.items())))
    dropped = design.get("dropped_missing") or {}
    if dropped:
        facts.append(("Subjects dropped (missing values)",
                      ", ".join(f"{k}: {v if isinstance(v, int) else len(v)}" for k, v in dropped.items())))
    label_recs = design.get("labels", {})
    table1, data1 = _table_one(shown_obs, label_recs, covs, sites)
    tables = [Table("Subject characteristics", table1,
                    note="Median (interquartile range) or n (%); ages over 89 counted as 90.",
                    data="cohort")] if len(table1) else []
    return facts, tables, {"cohort": data1}


def _label_balance(rec: dict, obs: pd.DataFrame) -> str:
    kind = rec.get("kind")
    if kind == "survival":
        t, e = rec.get("time"), rec.get("event")
        if t in obs and e in obs:
            ev = pd.to_numeric(obs[e], errors="coerce")
            tm = pd.to_numeric(obs[t], errors="coerce")
            return (f"survival: {int(ev.sum())} events in {int(ev.notna().sum())} subjects, "
                    f"median follow-up {num(tm.median())} ({t})")
        return "survival"
    if kind == "continuous":
        col = rec.get("column")
        v = pd.to_numeric(obs[col], errors="coerce") if col in obs else pd.Series(dtype=float)
        return f"continuous: median {num(v.median())} (IQR {num(v.quantile(.25))}–{num(v.quantile(.75))})"
    counts = rec.get("counts") or {}
    total = sum(counts.values()) or 1
    parts = ", ".join(f"{k}: {v} ({100 * v / total:.0f}%)" for k, v in counts.items())
    if kind == "binary" and rec.get("case") is not None:
        return f"{parts} (case level: {rec['case']})"
    return f"{parts} ({kind})"


def _table_one(obs: pd.DataFrame, labels: dict, covariates, sites) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Characteristics by the first binary/categorical label's groups ("Table 1")."""
    group_col = next((r.get("column") for r in labels.values()
                      if r.get("kind") in ("binary", "categorical") and r.get("column") in obs), None)
    show = [c for c in dict.fromkeys([*[str(c).split("[")[0] for c in covariates], *sites])
            if c in obs.columns and c != group_col]
    groups = [("all", obs)]
    if group_col is not None:
        groups += [(f"{group_col} = {g}", obs[obs[group_col].astype(str) == g])
                   for g in sorted(obs[group_col].dropna().astype(str).unique())]
    rows, data = [], []
    for c in show:
        s = obs[c]
        numeric = pd.to_numeric(s.astype(str).str.rstrip("+"), errors="coerce")
        if numeric.notna().mean() > 0.9 and s.nunique() > 5:
            row = {"characteristic": f"{c}, median (IQR)", "level": ""}
            for gname, g in groups:
                v = pd.to_numeric(g[c].astype(str).str.rstrip("+"), errors="coerce")
                row[gname] = f"{num(v.median())} ({num(v.quantile(.25))}–{num(v.quantile(.75))})"
                data.append({"characteristic": c, "level": "", "group": gname, "n": int(v.notna().sum()),
                             "median": v.median(), "q1": v.quantile(.25), "q3": v.quantile(.75)})
            rows.append(row)
        else:
            for level in sorted(s.dropna().astype(str).unique()):
                row = {"characteristic": f"{c}, n (%)", "level": level}
                for gname, g in groups:
                    k = int((g[c].astype(str) == level).sum())
                    row[gname] = f"{k} ({100 * k / max(len(g), 1):.0f}%)"
                    data.append({"characteristic": c, "level": level, "group": gname, "n": k,
                                 "share": k / max(len(g), 1)})
                rows.append(row)
    head = {"characteristic": "subjects, n", "level": ""} | {g: str(len(x)) for g, x in groups}
    return pd.DataFrame([head, *rows]), pd.DataFrame(data)


# -- model and dictionary ---------------------------------------------------------------------

def _mtime(path) -> str:
    try:
        return _dt.date.fromtimestamp(Path(path).stat().st_mtime).isoformat()
    except (OSError, TypeError):
        return "not recorded"


def _model(src: Sources) -> Table:
    m = src.findings.manifest
    inputs = m.get("inputs", {})
    feat = inputs.get("features", {}) if isinstance(inputs.get("features"), dict) else {}
    rows = []
    prov = {}
    if src.features is not None:
        prov = dict(getattr(src.features, "uns", {}).get("bioviz", {}) or {})
    sae = prov.get("sae", {}) if isinstance(prov.get("sae"), dict) else {}
    model = (sae.get("provenance") or {}).get("model") or {}
    rows += [("Model", model.get("name", "not recorded (no FeatureTable provenance)")),
             ("Model class", model.get("class", "not recorded")),
             ("Model parameters", f"{model['n_parameters']:,}" if "n_parameters" in model else "not recorded"),
             ("Model weights checksum (BLAKE2b)", model.get("weights_blake2b", "not recorded")),
             ("Layer", str(prov.get("layer") or m.get("settings", {}).get("layer") or "not recorded")),
             ("Activation rows encoded", f"{prov['store_n_rows']:,}" if "store_n_rows" in prov else "not recorded"),
             ("Activation store checksum", prov.get("store_manifest_blake2b", "not recorded"))]
    if sae:
        shape = f"{sae.get('architecture', '?')} SAE, {sae.get('d_in', '?')} → {sae.get('d_sae', '?')} features"
        if sae.get("k"):
            shape += f", {sae['k']} active per row"
        train = sae.get("training") or {}
        rows += [("Dictionary (sparse autoencoder)", shape),
                 ("Dictionary training", f"{train.get('steps', '?')} steps, seed {sae.get('seed', '?')}")]
    else:
        n = src.findings.subjects.n_vars
        rows.append(("Dictionary (sparse autoencoder)", f"{n} features (architecture not recorded)"))
    rows += [("Feature table checksum", feat.get("checksum", "not recorded")),
             ("Feature table written", _mtime(feat.get("path")) if feat.get("path") else "not recorded"),
             ("Statistics run", _mtime(src.findings.path / "manifest.json") if src.findings.path else "not recorded"),
             ("bioviz version (statistics)", str(m.get("versions", {}).get("bioviz", "not recorded")))]
    frame = pd.DataFrame(rows, columns=["item", "value"])
    return Table("", frame.astype(str), data="model")


# -- candidates ------------------------------------------------------------------------------

def _descriptions(src: Sources) -> dict[str, str]:
    if src.interpretation is None or src.interpretation.features.empty:
        return {}
    f = src.clean(src.interpretation.features[["feature", "description"]])
    return dict(zip(f["feature"].astype(str), f["description"].astype(str), strict=False))


def _replication(row) -> str:
    if "heldout_q" not in row or pd.isna(row.get("heldout_effect")):
        return "not tested (no held-out subjects)"
    if bool(row.get("replicated")):
        return f"replicated (held-out q = {num(row['heldout_q'])})"
    q = row.get("heldout_q")
    return f"not replicated (held-out q = {num(q)})" if pd.notna(q) else "not replicated"


def _stability(row) -> str:
    s = row.get("stability")
    return "not measured" if s is None or pd.isna(s) else f"{100 * float(s):.0f}% of bootstraps"


def _seeds(row) -> str:
    n = row.get("n_seeds", 0)
    if not n or pd.isna(n):
        return "not checked"
    return f"{int(row.get('seeds_reproduced', 0))} of {int(n)} other seeds"


def _candidates(src: Sources, desc: dict[str, str]) -> Table:
    cand = src.findings.candidates
    rows = []
    for _, r in cand.iterrows():
        rows.append({"rank": str(int(r["rank"])), "feature": str(r["feature"]),
                     "label": f"{r['label']} ({r['contrast']})" if isinstance(r.get("contrast"), str) and r.get("contrast")
                     else str(r["label"]),
                     "effect (95% CI)": effect_text(r), "q": num(r["q"]),
                     "held-out": _replication(r), "stability": _stability(r),
                     "description": desc.get(str(r["feature"]), "not interpreted")})
    cols = ["rank", "feature", "label", "effect (95% CI)", "q", "held-out", "stability", "description"]
    return Table("", pd.DataFrame(rows, columns=cols), data="candidates",
                 note="Ranked by the evidence tier (independent checks passed), then q, then effect size.")


def _evidence_tables(src: Sources, feature: str) -> list[Table]:
    """The interpretation's tables about ``feature``, the rows a reader needs."""
    if src.interpretation is None:
        return []
    t = src.interpretation.tables
    out = []

    def rows(name):
        d = t.get(name)
        return None if d is None or d.empty or "feature" not in d else d[d["feature"].astype(str) == feature]

    spec = [("top_genes", "Genes that drive it", None, 10),
            ("enrichment", "Gene-set enrichment", "q", 5),
            ("de", "Genes differentially expressed in the cells where it fires", "q", 10),
            ("cell_types", "Cell types", None, 5),
            ("composition", "Who the top-activating rows are", None, 8),
            ("motifs", "Motifs in the DNA where it fires, with their best JASPAR match", "q", 5),
            ("map_groups", "Where it sits in the scans (group-average maps)", None, 8),
            ("interventions", "What the model does without it (ablation)", None, 5)]
    alpha = src.findings.manifest.get("settings", {}).get("alpha", 0.05)
    for name, title, order, n in spec:
        d = rows(name)
        if d is None or d.empty:
            continue
        d = d.drop(columns=["feature"])
        note = ""
        if name == "interventions" and "role" in d:  # the candidate's own ablation, largest moves first
            d = d[d["role"] == "target"].sort_values("mean_abs_change", ascending=False)
        if order and order in d:
            d = d.sort_values(order)
            if name in ("enrichment", "de") and (d[order] >= alpha).all():
                note = f"None at q < {alpha}; the best shown. "
                d = d.head(1)
            elif name in ("enrichment", "de"):
                d = d[d[order] < alpha]
        d = d.drop(columns=[c for c in d.columns if str(c) in ("nifti", "montage", "montage_svg", "sources")
                            or str(c).endswith("_path")])
        total = len(d)
        d = src.clean(d.head(n))
        if total > len(d):
            note += f"The first {len(d)} of {total} rows. "
        shown = [c for c in _SHOWN.get(name, ()) if c in d.columns] or list(d.columns[:8])
        out.append(Table(title, _fmt_table(d[shown]), data=f"interpretation_{name}", note=note.strip()))
    return out


#: the columns a reader needs, per evidence table (all of them are in data/)
_SHOWN = {
    "top_genes": ("rank", "gene", "n_tokens", "mean_activation", "fire_fraction", "specificity"),
    "enrichment": ("set", "n_overlap", "n_set", "odds_ratio", "nes", "p", "q", "overlap_genes", "leading_edge"),
    "de": ("gene", "logfoldchange", "log2fc", "score", "pval", "p", "q", "pval_adj"),
    "cell_types": ("group", "mean", "mean_next_group", "specificity", "n_firing"),
    "composition": ("column", "value", "n", "share"),
    "motifs": ("rank", "consensus", "n_sites", "n_fired", "background_share", "discovery_q", "matrix_id", "name",
               "q"),
    "map_groups": ("kind", "label_value", "n_scans", "n_masks", "peak_x_mm", "peak_y_mm", "peak_z_mm", "region",
                   "dice", "voxel_auroc", "pointing_hit", "peak_distance_mm"),
    "interventions": ("output_name", "output", "mean_abs_change", "effect_ratio", "z", "p_empirical"),
}


def _evidence_figures(src: Sources, feature: str) -> list[Figure]:
    """The interpretation's figures of ``feature`` that name no subject."""
    if src.interpretation is None or src.interpretation.path is None:
        return []
    root = Path(src.interpretation.path)
    d = root / "features" / safe_name(feature)
    wanted = [("top_genes", "Top genes", "The genes whose tokens activate the feature most (mean activation)."),
              ("enrichment", "Gene-set enrichment", "Gene sets over-represented among the driving genes (q, BH)."),
              ("ablation", "Ablation", "How far the model's output moves when the feature is removed, against "
                                       "random features of the same density.")]
    figs = [_png(d / f"{stem}.png", title, cap) for stem, title, cap in wanted if (d / f"{stem}.png").exists()]
    groups = src.interpretation.tables.get("map_groups")
    if groups is not None and not groups.empty and "montage" in groups:
        g = groups[(groups["feature"].astype(str) == feature) & groups["montage"].notna()]
        g = g.sort_values("kind", key=lambda k: k.ne("refined"))  # refined maps first
        for r in g.head(2).itertuples():
            p = Path(str(r.montage))
            p = p if p.is_absolute() else root / p
            if p.exists():
                figs.append(_png(p, f"{r.kind} map, {r.label} = {r.label_value}",
                                 f"Mean map of {int(r.n_scans)} scans over the mean anatomy; mask outline where "
                                 "masks were given.", width_in=6.5))
    for p in sorted(root.rglob(f"motif_logo_{safe_name(feature)}.png"))[:1]:  # the sequence adapter's logo
        figs.append(_png(p, "Motif", "The motif where the feature fires (top) and its best JASPAR match."))
    return figs


def _png(path: Path, title: str, caption: str, width_in: float = 5.5) -> Figure:
    return Figure(title=title, caption=caption, png=path.read_bytes(), width_in=width_in)


def _page(src: Sources, row: pd.Series, shown_obs: pd.DataFrame, desc: dict[str, str]) -> CandidatePage:
    f = src.findings
    feature, label = str(row["feature"]), str(row["label"])
    rec = f.manifest.get("design", {}).get("labels", {}).get(label, {"kind": row.get("kind", "binary"),
                                                                         "column": label})
    statistic = f.manifest.get("settings", {}).get("aggregation", "mean")
    j = list(f.subjects.var_names).index(feature) if feature in f.subjects.var_names else None
    figs, missing = [], None
    if j is not None:
        X = f.subjects.X
        values = np.asarray(X[:, j].todense() if hasattr(X, "todense") else X[:, j], float).ravel()
        held = (f.subjects.obs["split"].astype(str) == "heldout").to_numpy() if "split" in f.subjects.obs else None
        try:
            figs.append(distribution_figure(values, rec, shown_obs, feature=feature, label=label,
                                            statistic=statistic, heldout=held))
        except (KeyError, ValueError) as err:  # a label column the subjects table lacks: said, not hidden
            missing = f"The distribution by {label} could not be drawn ({err})."
    figs += _evidence_figures(src, feature)
    facts = [("Label", f"{label} ({row['contrast']})" if isinstance(row.get("contrast"), str) else label),
             ("Test", test_text(row)),
             ("Effect (95% CI)", effect_text(row)),
             ("q (false discovery rate)", f"{num(row['q'])} ({row.get('q_method', 'BH')} over all features)"),
             ("Permutation p (family-wise)", num(row.get("p_fwer"))),
             ("Subjects", f"{int(row['n'])} ({row.get('n_per_group', '')})" if pd.notna(row.get("n")) else ""),
             ("Held-out subjects", _replication(row)),
             ("Stability", _stability(row)),
             ("Other dictionary seeds", _seeds(row))]
    summary = None
    if src.interpretation is not None and "summary" in src.interpretation.tables:
        s = src.interpretation.tables["summary"]
        s = s[s["feature"].astype(str) == feature]
        summary = s.iloc[0] if len(s) else None
    return CandidatePage(rank=int(row["rank"]), feature=feature, label=label,
                         anchor=f"candidate-{int(row['rank'])}",
                         headline=desc.get(feature, "Not interpreted: run bioviz interpret for evidence of "
                                                    "what this feature is."),
                         facts=facts, figures=figs, tables=_evidence_tables(src, feature),
                         caveats=[*([missing] if missing else []),
                                  *caveats(row, summary, src.interpretation, f.manifest)])


# -- the whole report -------------------------------------------------------------------------

def compose(src: Sources, *, title: str, objective: str, intended_use: str, lab: str = "",
            logo: Figure | None = None, version: str = "") -> tuple[Report, dict[str, pd.DataFrame]]:
    """The Report and the tables for ``data/`` (full precision, de-identified)."""
    f = src.findings
    obs = f.subjects.obs.copy()
    obs[src.subject_key] = obs.get(src.subject_key, pd.Series(obs.index, index=obs.index)).astype(str)
    shown, record = deidentify(obs.drop(columns=[c for c in INTERNAL_OBS if c in obs]), src.pseudonyms,
                               subject_key=src.subject_key,
                               identifying=[c for c in src.identifying if c in obs.columns],
                               keep_text=src.keep_text)
    shown = scrub(shown, src.pseudonyms, src.identifiers)
    shown.index = obs.index
    desc = _descriptions(src)
    facts, cohort_tables, data = _cohort(src, shown)
    cand = _candidates(src, desc)
    pages = [_page(src, r, shown, desc) for _, r in f.candidates.iterrows()]
    probes = _probes(f.probes)
    alpha = f.manifest.get("settings", {}).get("alpha", 0.05)
    n_feat, labels = f.subjects.n_vars, list(f.manifest.get("design", {}).get("labels", {}))
    if pages:
        summary = [f"{len(pages)} candidate biomarker{'s' if len(pages) != 1 else ''} among {n_feat} features "
                   f"tested against {', '.join(labels) or 'the labels'} (q < {alpha}).",
                   *[f"#{p.rank} {p.feature} ({p.label}): {effect_text(r)}, q = {num(r['q'])}; {_replication(r)}."
                     for p, (_, r) in zip(pages[:5], f.candidates.iterrows(), strict=False)]]
    else:
        summary = [f"No candidate biomarker: none of the {n_feat} features reached q < {alpha} against "
                   f"{', '.join(labels) or 'the labels'}. This is a result, not a failure: in this cohort the "
                   "model's features did not separate the groups more than chance allows."]
    skipped = list((src.interpretation.skipped if src.interpretation is not None else
                    {"interpretation": "no interpretation folder was given or found"}).items())
    report = Report(
        title=title, generated=_dt.date.today().isoformat(), version=version, objective=objective,
        intended_use=intended_use, summary=summary, cohort=facts, cohort_tables=cohort_tables,
        model=_model(src), methods=methods(f.manifest, src.interpretation), candidates=cand, pages=pages,
        probes=probes, probes_text=probes_text(f.probes), limitations=limitations(f.manifest, n_feat),
        validation=validation_needed(), deidentification=_deid_text(record, src), skipped=skipped,
        lab=lab, logo=logo)
    data.update({"candidates": src.clean(f.candidates), "associations": src.clean(f.table), "probes": f.probes,
                 "model": report.model.frame, "subjects": _subject_values(f, shown)})
    if src.interpretation is not None:
        for name, t in src.interpretation.tables.items():
            data[f"interpretation_{name}"] = src.clean(t)
        data["interpretation_features"] = src.clean(src.interpretation.features)
    return report, data


def _probes(p: pd.DataFrame | None) -> Table | None:
    """One row per label × probe, one column per metric: "value (low–high)"."""
    if p is None or p.empty or not {"metric", "value"} <= set(p.columns):
        return None
    p = p.copy()
    p["shown"] = [f"{num(v)} ({num(lo)}–{num(hi)})" if pd.notna(lo) else num(v)
                  for v, lo, hi in zip(p["value"], p.get("ci_low", np.nan), p.get("ci_high", np.nan), strict=False)]
    keys = [c for c in ("label", "probe", "input", "level", "n_features") if c in p]
    wide = p.pivot_table(index=keys, columns="metric", values="shown", aggfunc="first", sort=False).reset_index()
    wide.columns = [str(c).replace("_", " ") for c in wide.columns]
    return Table("", wide.astype(str), data="probes",
                 note="Cross-validated over subjects (value and 95% CI). 'SAE features' uses every feature; "
                      "'top N' only the N best-ranked in the training folds; raw activations, when shown, "
                      "are the layer itself before the dictionary.")


def _subject_values(f: Findings, shown: pd.DataFrame) -> pd.DataFrame:
    """Each subject (pseudonym) with its clinical columns and the candidates' values."""
    feats = [str(x) for x in dict.fromkeys(f.candidates["feature"].astype(str))] if len(f.candidates) else []
    feats = [x for x in feats if x in f.subjects.var_names]
    out = shown.reset_index(drop=True).copy()
    if feats:
        X = f.subjects[:, feats].X
        X = np.asarray(X.todense() if hasattr(X, "todense") else X, float)
        for i, name in enumerate(feats):
            out[name] = X[:, i]
    if "split" in f.subjects.obs:
        out["split"] = f.subjects.obs["split"].astype(str).to_numpy()
    return out


def _deid_text(record: dict, src: Sources) -> list[str]:
    out = ["Subject identifiers are replaced by random pseudonyms (not derived from the identifiers); "
           "the key that maps them back is not part of this report."]
    if record.get("dropped_identifying"):
        out.append("Columns marked identifying were left out: " + ", ".join(record["dropped_identifying"]) + ".")
    if record.get("dates_to_year"):
        out.append("Dates are shown as the year only: " + ", ".join(record["dates_to_year"]) + ".")
    if record.get("ages_capped"):
        out.append("Ages over 89 are shown as \"90+\": " + ", ".join(record["ages_capped"]) + ".")
    if record.get("dropped_free_text"):
        out.append("Free-text columns were left out: " + ", ".join(record["dropped_free_text"]) + ".")
    out.append("Every file of this report was searched for the original identifiers and the values of the "
               "identifying columns before it was released; none was found.")
    return out

