"""The report's plain words: numbers as a reader expects them, each test and effect named
for someone who has never heard of sparse autoencoders, and the caveats and limitations
that follow from what the Findings recorded (never a fixed list pasted under every result)."""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["num", "effect_text", "test_text", "caveats", "limitations", "methods", "probes_text",
           "validation_needed"]

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
EFFECTS = {"auroc": "AUROC", "std_beta": "standardised difference (β)", "log_or_per_sd": "log odds ratio per SD",
           "rho": "Spearman ρ", "epsilon_sq": "ε²", "log_hr_per_sd": "log hazard ratio per SD",
           "log_hr_high_vs_low": "log hazard ratio, high vs low"}
TESTS = {
    "mann_whitney": "Mann–Whitney U test (rank test; effect: AUROC, the chance a random case scores above a "
                    "random control)",
    "linear": "linear model of the feature on the label with the covariates (effect: standardised coefficient)",
    "logistic": "logistic regression of the label on the feature with the covariates (effect: log odds ratio "
                "per SD)",
    "spearman": "Spearman rank correlation",
    "kruskal": "Kruskal–Wallis test across the groups (effect: ε²)",
    "one_vs_rest": "Mann–Whitney U test of one group against all others",
    "cox": "Cox proportional-hazards model with the covariates (effect: log hazard ratio per SD)",
    "logrank": "log-rank test, subjects above vs below the median",
}


def num(v, digits: int = 3) -> str:
    """A number as a report prints it: 3 significant digits, small p/q in e-notation."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    if abs(x) < 1e-3:
        m, e = f"{x:.{digits - 1}e}".split("e")
        return f"{m}×10{str(int(e)).translate(_SUPERSCRIPT)}".replace("-", "−")
    return f"{x:.{digits}g}".replace("-", "−")


def effect_text(row) -> str:
    name = EFFECTS.get(str(row.get("effect_name")), str(row.get("effect_name")))
    lo, hi = row.get("ci_low"), row.get("ci_high")
    ci = f" ({num(lo)} to {num(hi)})" if pd.notna(lo) and pd.notna(hi) else " (no CI)"
    return f"{name} {num(row.get('effect'))}{ci}"


def test_text(row) -> str:
    return TESTS.get(str(row.get("test")), str(row.get("test")))


def _direction(row) -> str:
    contrast = row.get("contrast")
    d = row.get("direction")
    if isinstance(contrast, str) and " vs " in contrast and pd.notna(d) and d != 0:
        a, b = contrast.split(" vs ", 1)
        return f"higher in {a} than {b}" if d > 0 else f"lower in {a} than {b}"
    return ""


def caveats(row, summary, interpretation, manifest: dict) -> list[str]:
    """What a reader must keep in mind about this one candidate, from its own numbers."""
    out = []
    null = row.get("null", 0.0)
    lo, hi = row.get("ci_low"), row.get("ci_high")
    if pd.notna(lo) and pd.notna(hi) and lo <= null <= hi:
        out.append(f"The 95% CI of the effect includes no effect ({num(null)}): its size is uncertain.")
    if pd.isna(row.get("heldout_effect")):
        out.append("Not tested on held-out subjects: the discovery cohort chose it and measured it.")
    elif not bool(row.get("replicated")):
        out.append("Did not replicate on the held-out subjects: treat as a lead, not a finding.")
    s = row.get("stability")
    if pd.isna(s):
        out.append("Selection stability under resampling of subjects was not measured.")
    elif s < 0.5:
        out.append(f"Selected in only {100 * s:.0f}% of subject bootstraps: fragile.")
    if not (manifest.get("settings", {}).get("covariates") or []):
        out.append("No covariates were adjusted for: age, sex or site could explain the difference.")
    n = row.get("n")
    if pd.notna(n) and n < 50:
        out.append(f"Tested on {int(n)} subjects: a small sample; effect sizes from small samples tend to be "
                   "overestimated.")
    if summary is not None:
        if bool(summary.get("single_subject")):
            out.append(f"{100 * summary['top_subject_share']:.0f}% of its strongest activations come from one "
                       "subject: it may describe that subject rather than the group.")
    if interpretation is not None:
        comp = interpretation.tables.get("composition")
        f = str(row["feature"])
        if comp is not None and len(comp) and {"share", "column"} <= set(comp.columns):
            c = comp[(comp["feature"].astype(str) == f) & comp["column"].astype(str).str.contains(
                "type|cluster|label", case=False)]
            if len(c) and c["share"].max() >= 0.8:
                top = c.sort_values("share").iloc[-1]
                out.append(f"Fires mostly in {top['value']} ({100 * top['share']:.0f}% of top rows): the difference "
                           f"may reflect how many {top['value']} a sample has rather than their state.")
        iv = interpretation.tables.get("interventions")
        if iv is None or not len(iv) or not (iv["feature"].astype(str) == f).any():
            out.append("Whether the model uses this feature was not tested (no intervention): it is an "
                       "association inside the model, not a mechanism.")
        elif "p_empirical" in iv:
            own = iv[(iv["feature"].astype(str) == f) & iv["p_empirical"].notna()]
            alpha = manifest.get("settings", {}).get("alpha", 0.05)
            if len(own) and own["p_empirical"].min() >= alpha:
                out.append(f"Removing it moves the model's output no more than removing random features of its "
                           f"density (best p = {num(own['p_empirical'].min())}): the model may not rely on it.")
        maps = interpretation.tables.get("map_groups")
        if maps is not None and len(maps) and "dice" in maps:
            m = maps[(maps["feature"].astype(str) == f) & maps["dice"].notna()]
            if len(m) and m["dice"].max() < 0.5:
                out.append(f"Its map agrees only partly with the masks (best Dice {num(m['dice'].max())}).")
    direction = _direction(row)
    out.append("An association in this cohort" + (f" ({direction})" if direction else "")
               + ", not a validated test: it says nothing yet about a single patient.")
    return out


def methods(manifest: dict, interpretation) -> list[tuple[str, str]]:
    s = manifest.get("settings", {})
    alpha = s.get("alpha", 0.05)
    tests = s.get("tests", {})
    kinds = sorted({r.get("kind") for r in manifest.get("design", {}).get("labels", {}).values()})
    out = [
        ("What was measured",
         "The foundation model was run on every sample and the activity of the chosen layer recorded. A sparse "
         "dictionary (sparse autoencoder) rewrote that activity as a sum of a few 'features' out of many, each "
         "meant to stand for one recognisable pattern the model uses. Every feature is a candidate measurement."),
        ("One value per subject",
         f"Each subject's many rows (cells, sequence windows or scan patches) were summarised per feature by the "
         f"{s.get('aggregation', 'mean')} activation before any test. Every test, bootstrap and permutation treats "
         "the subject as the unit: many cells of one patient are not independent patients."),
        ("Tests",
         "; ".join(f"{k} labels: " + ", ".join(TESTS.get(t, t).split(" (")[0] for t in tests.get(k, []))
                   for k in kinds if tests.get(k)) + "."
         + (f" Covariates in the models: {', '.join(map(str, s.get('covariates')))}." if s.get("covariates") else
            " No covariates were given.")),
        ("Multiple testing",
         f"Every feature was tested, so q-values control the false discovery rate ({s.get('fdr', 'bh').upper()}) "
         f"over all features per label and test; candidates have q < {alpha}. "
         + (f"Family-wise p-values come from {s['n_permutations']} permutations of the labels across subjects "
            "(max statistic)." if s.get("n_permutations") else "No permutation test was run.")),
        ("Confidence intervals",
         f"95% intervals from {s['n_boot']} bootstrap resamples of subjects." if s.get("n_boot") else
         "95% intervals from the model's standard errors where it has them; no bootstrap was run."),
        ("Validation inside this cohort",
         (manifest.get("split") or "No held-out split: discovery and measurement used the same subjects.").rstrip(".")
         + "."
         + (f" Stability: the share of {s['n_stability']} subject bootstraps in which the feature is selected again."
            if s.get("n_stability") else "")),
        ("Ranking", manifest.get("ranking_rule", "")),
    ]
    if interpretation is not None:
        gathered = sorted(k for k, v in interpretation.tables.items() if len(v))
        out.append(("What each candidate is",
                    "Evidence gathered per candidate: " + (", ".join(gathered) or "none") + ". Each one-line "
                    "description is built only from those tables, phrase by phrase."))
    return [(h, p) for h, p in out if p]


def probes_text(probes: pd.DataFrame | None) -> str:
    if probes is None or probes.empty or "metric" not in probes:
        return "No probe was run."
    main = probes[probes["metric"].isin(["auroc", "auroc_macro_ovr", "r2"])]
    if main.empty:
        main = probes
    parts = []
    for r in main.itertuples():
        what = "all SAE features" if r.probe == r.input else f"{r.probe}"
        parts.append(f"{what}" + (f" for {r.label}" if hasattr(r, "label") else "")
                     + f": {r.metric.replace('_', ' ')} {num(r.value)} ({num(r.ci_low)} to {num(r.ci_high)})")
    return ("A probe is a simple classifier trained on many features at once, cross-validated over subjects. "
            "It shows how much of the label the representation holds; the candidate table shows which single "
            "features carry it. " + "; ".join(parts) + ".")


def limitations(manifest: dict, n_features: int) -> list[str]:
    s = manifest.get("settings", {})
    subj = manifest.get("subjects", {})
    out = [f"All {n_features} features were tested; even with false-discovery control, some candidates at q < "
           f"{s.get('alpha', 0.05)} are expected to be false.",
           "The features come from one model, one layer and one trained dictionary; another seed or size of "
           "dictionary can split or merge them.",
           "Held-out subjects come from the same cohort, sites and protocol: replication here is not external "
           "validation." if subj.get("heldout") else
           "No subjects were held out: every candidate's effect was measured on the subjects that chose it.",
           "The report describes associations. A feature can track the label through a confounder the cohort "
           "shares (site, batch, scanner, treatment)."]
    if (subj.get("analysed") or 10_000) < 100:
        out.append(f"The cohort is small ({subj.get('analysed')} subjects): estimates are imprecise.")
    return out


def validation_needed() -> list[str]:
    return ["Replication in an independent, external cohort with a pre-specified feature, threshold and analysis.",
            "Analytical validation: the same feature measured again on new samples, platforms or scanners gives the "
            "same value (repeatability, reproducibility, batch effects).",
            "A cut-off chosen and calibrated on one cohort and tested on another, with sensitivity, specificity "
            "and predictive values at the intended prevalence.",
            "Clinical utility: evidence that acting on the biomarker changes decisions or outcomes, in a "
            "prospective study with the intended-use population.",
            "Regulatory review appropriate to the intended use before any diagnostic use."]
