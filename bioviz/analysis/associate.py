"""``associate``: SAE features → subject-level tests against clinical labels → Findings.

The flow: aggregate rows to subjects → align the clinical labels → split discovery /
held-out subjects → for every label and test, over all features at once: effect, p, q
(BH/BY per label × test), Westfall–Young FWER p (subject permutations), bootstrap CIs,
selection stability → re-test on the held-out subjects → probes → reproduce the
candidates in other seeds' dictionaries → rank.
"""

from __future__ import annotations

import importlib.metadata as md
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..checksum import digest, file_checksum
from ..errors import InputError
from ..version import __version__
from . import multiple, resample
from .aggregate import aggregate
from .clinical import Design, design
from .findings import ASSOCIATION_COLUMNS, Findings, check_out
from .probes import probe
from .rank import RANKING_RULE, rank, reproduce_in_seeds
from .rowdata import row_inputs
from .testing import (
    ADJUSTED,
    AVAILABLE,
    DEFAULT,
    Contrast,
    contrasts,
    nan_on_refusal,
    permutable,
    primary,
)

#: below this many subjects on either side, a held-out split has no power: it is skipped
MIN_SPLIT = 10
#: bootstrap CIs for the features with discovery q below this, and at least the top N by p
CI_Q, CI_TOP = 0.25, 50


def associate(
    features: ad.AnnData | str | None = None,
    labels: list[str | dict] | None = None,
    *,
    sae: str | None = None,
    store: str | None = None,
    layer: str | None = None,
    clinical: str | pd.DataFrame | None = None,
    covariates: list[str] | None = None,
    strata: str | None = None,
    subject_key: str = "subject_id",
    aggregation: str = "mean",
    stats: list[str] | None = None,
    quantile: float = 0.9,
    threshold: float = 0.0,
    tests: dict[str, list[str]] | None = None,
    alpha: float = 0.05,
    fdr: str = "bh",
    n_permutations: int = 1000,
    n_boot: int = 1000,
    n_stability: int = 100,
    heldout: float | None = 0.3,
    replication: str | None = None,
    seeds: list[str] | None = None,
    probes: bool = True,
    row_labels: list[str] | None = None,
    top_n: list[int] | None = None,
    min_subjects: int = 6,
    seed: int = 0,
    out: str | None = None,
    overwrite: bool = False,
    allow_mismatch: bool = False,
    progress: bool = True,
) -> Findings:
    """Test every SAE feature against clinical labels, subject by subject; rank candidates.

    A clinical claim is made per subject: rows (cells, tokens, patches, windows) are first
    aggregated to their subject, and every test, permutation and bootstrap treats the subject
    as the unit (many rows of one patient are not independent samples).

    Parameters
    ----------
    features
        A FeatureTable (AnnData from :func:`bioviz.encode`, or its .h5ad path). Or leave it
        out and give ``sae``: the SAE's store (or ``store``) is streamed through it.
    labels
        The labels to test, each a column name (kind inferred) or a mapping:
        ``{"column": "dx", "kind": "binary", "case": "AD"}``, ``{"column": "age", "kind":
        "continuous"}``, or survival ``{"name": "os", "time": "os_months", "event": "death"}``.
        Columns come from ``clinical`` or from the row metadata (constant within a subject).
    sae
        An SAE checkpoint directory to stream the store through instead of reading a
        FeatureTable (no row-level table is built).
    store
        The activation store (default: the one the FeatureTable or the SAE records); its raw
        activations are also probed.
    layer
        The store layer (default: the one the FeatureTable or the SAE records).
    clinical
        A clinical table (CSV/TSV/parquet path or DataFrame), one row per subject, keyed by
        ``subject_key``. Its columns win over same-named row metadata.
    covariates
        Columns adjusted for (age, sex, site, batch; categorical ones one-hot). With
        covariates, the covariate model (``linear``, ``logistic``, ``cox``) is the primary test.
    strata
        A column: permutations and bootstraps stay within its levels; Cox gets a baseline
        hazard per level.
    subject_key
        The row-metadata column naming the subject.
    aggregation
        The subject-level value tested: ``mean``, ``max``, ``frac`` (share of the subject's
        rows where the feature fires) or ``quantile``.
    stats
        All subject-level values computed and kept in ``subjects.h5ad`` layers (default:
        mean, max, frac); ``aggregation`` is always among them.
    quantile
        The upper quantile of ``quantile`` aggregation.
    threshold
        A feature fires on a row when its code is above this (for ``frac``).
    tests
        Tests per label kind, e.g. ``{"binary": ["mann_whitney", "logistic"]}``. Default:
        binary mann_whitney + linear; continuous spearman + linear; categorical kruskal +
        one_vs_rest; survival cox + logrank.
    alpha
        The level at which a feature is a candidate (q < alpha on the primary test) and a
        held-out re-test replicates it.
    fdr
        ``bh`` (Benjamini–Hochberg) or ``by`` (Benjamini–Yekutieli, valid under any
        dependence between features) for the q column.
    n_permutations
        Subject-level permutations for the Westfall–Young FWER p (0: skip).
    n_boot
        Subject bootstraps for the effect CIs (0: model CIs only).
    n_stability
        Subject bootstraps for selection stability of the primary test (0: skip).
    heldout
        Share of subjects held out (stratified by the first label) and used only to re-test
        the candidates. Skipped with a warning when a side would have fewer than 10 subjects.
    replication
        A FeatureTable of a second cohort (path): the held-out set instead of a split.
    seeds
        SAE checkpoints trained with other seeds on the same layer: every candidate's best
        decoder match in each is re-tested (used in the ranking).
    probes
        Cross-validated linear probes on the SAE features (and on raw activations when the
        store is available) for every non-survival label.
    row_labels
        Row-metadata columns to probe at the row level (a cell's type, a patch inside the
        lesion mask), folds grouped by subject.
    top_n
        Probe also the top-N features (chosen inside each training fold).
    min_subjects
        Fewer analysable subjects than this is an error.
    seed
        Seeds the split, permutations, bootstraps and probes.
    out
        Write the Findings directory here (atomically).
    overwrite
        Replace ``out`` when it holds Findings (bioviz never replaces anything else).
    allow_mismatch
        Stream a store made by another model or layer than the SAE's record.
    progress
        Progress bars.

    Returns
    -------
    Findings
        ``.table`` (associations), ``.candidates`` (ranked), ``.probes``, ``.subjects``, ``.manifest``.

    Examples
    --------
    >>> import bioviz as bv
    >>> from bioviz.analysis.synthetic import make_cohort
    >>> ft = make_cohort(n_subjects=40, rows_per_subject=20, n_features=30, planted={0: 2.0})
    >>> findings = bv.associate(ft, ["diagnosis"], covariates=["age", "sex"], n_permutations=200,
    ...                         n_boot=200, heldout=None, probes=False, progress=False)
    >>> findings.candidates[["rank", "feature", "test", "effect_name"]].head(1)
       rank feature    test effect_name
    0     1      f0  linear    std_beta
    >>> row = findings.candidates.iloc[0]
    >>> bool(row["q"] < 0.05), bool(row["ci_low"] > 0), row["ci_method"]
    (True, True, 'bootstrap')
    """
    if not labels:
        raise InputError("labels: name at least one clinical column to test, e.g. labels=['diagnosis']")
    if out is not None:
        check_out(Path(out), overwrite)  # before any work
    if fdr not in ("bh", "by"):
        raise InputError(f"fdr={fdr!r}: expected 'bh' or 'by'")
    if not 0 < alpha < 1:
        raise InputError(f"alpha={alpha}: expected a level between 0 and 1, e.g. 0.05")
    for name, value in (("n_permutations", n_permutations), ("n_boot", n_boot), ("n_stability", n_stability)):
        if value < 0:
            raise InputError(f"{name}={value}: expected 0 (skip) or a positive count")
    covariates = list(covariates or [])
    tests = _tests(tests)
    stats = _stats(aggregation, stats)
    settings = {k: v for k, v in locals().items() if k not in ("features", "clinical")}

    subjects = aggregate(features, sae=sae, store=store, layer=layer, by=subject_key, stats=stats,
                         quantile=quantile, threshold=threshold, allow_mismatch=allow_mismatch,
                         progress=progress)
    d = design(subjects.obs, labels, covariates=covariates, strata=strata, clinical=clinical,
               subject_key=subject_key, min_subjects=min_subjects)
    X = np.asarray(subjects[d.subjects].X, dtype=np.float64)
    source = _source(subjects, features, sae, store, layer)

    disc, held, X_held, d_held, split_note = _split(X, d, heldout, replication, subjects, labels, covariates,
                                                    strata, clinical, subject_key, stats, quantile, threshold,
                                                    min_subjects, seed, progress)
    rows, primaries = [], []
    families = [c for o in d.outcomes for c in contrasts(o, tests[o.kind])]
    for c in tqdm(families, desc="associate", unit="test", disable=not progress or len(families) < 2):
        is_primary = c.test == primary(c.kind, tests[c.kind], bool(covariates)) or (
            c.contrast.endswith("vs rest") and primary(c.kind, tests[c.kind], bool(covariates)) == "one_vs_rest")
        rows.append(_family(c, X, d, disc, X_held, d_held, held, is_primary, alpha=alpha, fdr=fdr,
                            n_permutations=n_permutations, n_boot=n_boot, n_stability=n_stability,
                            seed=seed, progress=progress, features=list(subjects.var_names)))
        primaries.append(is_primary)
    table = pd.concat(rows, ignore_index=True)
    table["primary"] = np.repeat(primaries, [len(r) for r in rows])

    seed_table = pd.DataFrame()
    decoder = subjects.varm.get("decoder") if hasattr(subjects, "varm") else None
    if seeds:
        runners = {(c.label, c.contrast, c.test): _discovery(c, d, disc) for c in families}
        seed_table = reproduce_in_seeds(
            table, seeds, decoder=_decoder(features, sae, subjects, decoder), source=source, runners=runners,
            subjects=d.subjects[disc], alpha=alpha, progress=progress,
            aggregate_kwargs={"by": subject_key, "stats": [aggregation], "quantile": quantile,
                              "threshold": threshold, "allow_mismatch": allow_mismatch})
    candidates = rank(table, alpha=alpha, seeds=seed_table)
    probe_table = _probes(X, d, subjects, source, stats[0], row_labels, top_n, seed, progress) if probes else pd.DataFrame()

    subjects.obs["analysed"] = subjects.obs_names.isin(d.subjects)
    split = pd.Series("not analysed", index=subjects.obs_names, dtype=object)
    split[d.subjects[disc]] = "discovery"
    if replication is None and held is not None:
        split[d.subjects[held]] = "heldout"
    subjects.obs["split"] = split.values
    for col in d.clinical.columns:  # the clinical table's columns, for the kept subjects
        if col not in subjects.obs:
            subjects.obs[col] = d.clinical[col].reindex(subjects.obs_names).values
    manifest = _manifest(settings, d, source, features, clinical, split_note, len(disc),
                         0 if held is None and d_held is None else (len(held) if held is not None else len(d_held.subjects)))
    findings = Findings(table=table, candidates=candidates, probes=probe_table, subjects=subjects,
                        manifest=manifest, seeds=seed_table)
    if out is not None:
        findings.write(out, overwrite=overwrite)
    return findings


# -- settings ---------------------------------------------------------------------------


def _tests(tests) -> dict[str, tuple[str, ...]]:
    out = dict(DEFAULT)
    for kind, names in (tests or {}).items():
        if kind not in AVAILABLE:
            raise InputError(f"tests: unknown label kind {kind!r}; expected one of {list(AVAILABLE)}")
        names = tuple([names] if isinstance(names, str) else names)
        wrong = [n for n in names if n not in AVAILABLE[kind]]
        if wrong or not names:
            raise InputError(f"tests[{kind!r}]={list(names)}: choose from {list(AVAILABLE[kind])}")
        out[kind] = names
    return out


def _stats(aggregation: str, stats) -> list[str]:
    stats = list(stats or ["mean", "max", "frac"])
    valid = ("mean", "max", "frac", "quantile")
    for s in [aggregation, *stats]:
        if s not in valid:
            raise InputError(f"aggregation/stats {s!r}: expected one of {list(valid)}")
    return [aggregation] + [s for s in stats if s != aggregation]


# -- the split ----------------------------------------------------------------------------


def _split(X, d: Design, heldout, replication, subjects, labels, covariates, strata, clinical,
           subject_key, stats, quantile, threshold, min_subjects, seed, progress):
    """(discovery index, held-out index or None, held-out X or None, held-out Design or None, note)."""
    n = len(d.subjects)
    everyone = np.arange(n)
    if replication is not None:
        rep = aggregate(replication, by=subject_key, stats=stats, quantile=quantile, threshold=threshold,
                        progress=progress)
        missing = [f for f in subjects.var_names if f not in rep.var_names]
        if missing:
            raise InputError(f"replication={replication}: its features differ from the discovery cohort's "
                             f"({len(missing)} missing, e.g. {missing[:3]}); encode it with the same SAE")
        rd = design(rep.obs, labels, covariates=covariates, strata=strata, clinical=clinical,
                    subject_key=subject_key, min_subjects=min_subjects)
        Xr = np.asarray(rep[rd.subjects, list(subjects.var_names)].X, dtype=np.float64)
        return everyone, None, Xr, rd, f"replication cohort {replication}: {len(rd.subjects)} subjects"
    if not heldout:
        return everyone, None, None, None, "no held-out subjects (heldout=0)"
    if not 0 < heldout < 1:
        raise InputError(f"heldout={heldout}: expected the share of subjects held out, between 0 and 1 "
                         "(e.g. 0.3), or 0 for none")
    small = min(round(n * heldout), n - round(n * heldout))
    if small < MIN_SPLIT:
        note = (f"no held-out validation: {n} subjects would leave {small} on one side of a "
                f"{heldout:.0%} split (fewer than {MIN_SPLIT}); all subjects are discovery")
        warnings.warn(note, stacklevel=3)
        return everyone, None, None, None, note
    o = d.outcomes[0]
    by = o.event.astype(int) if o.kind == "survival" else o.y
    disc, held = resample.split(n, stratify=by, heldout=heldout, seed=seed)
    return np.sort(disc), np.sort(held), None, None, (
        f"stratified split on {o.name!r}: {len(disc)} discovery, {len(held)} held-out subjects (seed {seed})")


# -- one family: a label × test over all features ---------------------------------------


def _restrict(c: Contrast, d: Design, idx):
    """The contrast, covariates and strata on the subjects ``idx``."""
    cov = None if d.covariates is None or c.test not in ADJUSTED else d.covariates[idx]
    strata = None if d.strata is None else d.strata[idx]
    return Contrast(c.label, c.contrast, c.kind, c.test, c.outcome.take(idx), c.run), cov, strata


def _discovery(c: Contrast, d: Design, disc):
    cd, cov, strata = _restrict(c, d, disc)
    return lambda Xs: cd(Xs, covariates=cov, strata=strata)


def _family(c: Contrast, X, d: Design, disc, X_held, d_held, held, is_primary, *, alpha, fdr,
            n_permutations, n_boot, n_stability, seed, progress, features) -> pd.DataFrame:
    adjust = multiple.bh if fdr == "bh" else multiple.by
    cd, cov, strata = _restrict(c, d, disc)
    Xd = X[disc]
    res = cd(Xd, covariates=cov, strata=strata)
    q = adjust(res.p)
    n = len(disc)
    out = pd.DataFrame({
        "feature": features, "label": c.label, "contrast": c.contrast, "kind": c.kind, "test": c.test,
        "n": n, "n_per_group": _groups(cd.outcome), "effect": res.effect, "effect_name": res.effect_name,
        "null": res.null, "statistic": res.statistic, "p": res.p, "q": q, "q_method": fdr.upper(),
        "direction": res.direction,
    })
    for key, value in res.extra.items():
        out[key] = value
    # Westfall–Young: permutations of the subjects, within strata (and the label's own
    # classes never: permuting them is the point)
    out["p_fwer"], out["p_fwer_floor"] = np.nan, np.nan
    if n_permutations:
        p_fwer, floor = multiple.westfall_young(
            res.p, permutable(cd, Xd, cov, strata), n_permutations=n_permutations, seed=seed,
            strata=strata, n_subjects=n, progress=progress)
        out["p_fwer"], out["p_fwer_floor"] = p_fwer, floor
    _intervals(out, cd, Xd, cov, strata, res, q, n_boot=n_boot, seed=seed, progress=progress)
    out["stability"] = np.nan
    if is_primary and n_stability:
        boot_strata = _boot_strata(cd.outcome, strata)

        def selected(idx):
            return adjust(cd(Xd, idx, covariates=cov, strata=strata).p) < alpha
        selected = nan_on_refusal(selected, Xd.shape[1])
        out["stability"] = resample.selection_stability(lambda idx: selected(idx) == 1, n, strata=boot_strata, n_boot=n_stability,
                                                        seed=seed, progress=progress)
    _heldout(out, c, X, d, X_held, d_held, held, is_primary, alpha)
    out["evidence"] = "subject-level"
    return out[[col for col in ASSOCIATION_COLUMNS if col in out] + [col for col in out if col not in ASSOCIATION_COLUMNS]]


def _groups(o) -> str:
    if o.kind in ("binary", "categorical"):
        codes = o.y.astype(int)
        return ", ".join(f"{lvl}: {int((codes == i).sum())}" for i, lvl in enumerate(o.levels))
    if o.kind == "survival":
        return f"events: {int(o.event.sum())}, censored: {int((~o.event).sum())}"
    return ""


def _boot_strata(o, strata):
    """Bootstraps resample within the label's classes (every resample keeps every class),
    crossed with the design's strata."""
    parts = []
    if o.kind in ("binary", "categorical"):
        parts.append(o.y.astype(int))
    if strata is not None:
        parts.append(strata)
    if not parts:
        return None
    return np.unique(np.column_stack(parts), axis=0, return_inverse=True)[1].ravel()


def _intervals(out, cd, Xd, cov, strata, res, q, *, n_boot, seed, progress):
    """Bootstrap percentile CIs for the features that may matter; the model's (Wald) CI
    elsewhere, where the test has one; ``ci_method`` says which."""
    m = len(q)
    out["ci_low"] = res.ci_low if res.ci_low is not None else np.nan
    out["ci_high"] = res.ci_high if res.ci_high is not None else np.nan
    out["ci_method"] = "wald" if res.ci_low is not None else "none"
    if not n_boot:
        return
    order = np.argsort(np.where(np.isnan(res.p), np.inf, res.p), kind="stable")
    chosen = np.union1d(np.flatnonzero(q < CI_Q), order[:min(CI_TOP, m)])
    chosen = chosen[~np.isnan(res.p[chosen])]
    if not len(chosen):
        return
    Xc = Xd[:, chosen]

    def effect(idx):
        return cd(Xc, idx, covariates=cov, strata=strata).effect
    effect = nan_on_refusal(effect, Xc.shape[1])
    low, high = resample.bootstrap_ci(effect, len(Xd), strata=_boot_strata(cd.outcome, strata), n_boot=n_boot,
                                      seed=seed, progress=progress)
    out.loc[chosen, "ci_low"], out.loc[chosen, "ci_high"] = low, high
    out.loc[chosen, "ci_method"] = "bootstrap"


def _heldout(out, c, X, d, X_held, d_held, held, is_primary, alpha):
    """Re-test on the held-out subjects (the same test and covariates); a candidate
    replicates when its held-out BH q (over the candidates taken forward) is below
    ``alpha`` and its effect points the same way."""
    out["heldout_effect"], out["heldout_p"], out["heldout_q"] = np.nan, np.nan, np.nan
    out["replicated"] = pd.array([pd.NA] * len(out), dtype="boolean")
    if held is None and d_held is None:
        return
    if d_held is not None:  # a replication cohort, with its own design
        o = next(o for o in d_held.outcomes if o.name == c.label)
        if c.contrast.endswith(" vs rest"):
            level = c.contrast[: -len(" vs rest")]
            if level not in o.levels:
                return
            from .result import Outcome
            o = Outcome(c.outcome.name, "binary", o.y == o.levels.index(level), c.outcome.levels)
        cov = d_held.covariates if c.test in ADJUSTED else None
        res = c.run(X_held, o, cov, d_held.strata)
    else:
        ch, cov, strata = _restrict(c, d, held)
        res = ch(X[held], covariates=cov, strata=strata)
    out["heldout_effect"], out["heldout_p"] = res.effect, res.p
    cand = (out["q"] < alpha).to_numpy() & ~np.isnan(res.p)
    out["replicated"] = pd.array(np.zeros(len(out), bool), dtype="boolean")
    if cand.any():
        hq = multiple.bh(res.p[cand])
        out.loc[cand, "heldout_q"] = hq
        same = np.sign(res.effect[cand] - res.null) == np.sign(out["effect"].to_numpy()[cand] - res.null)
        out.loc[cand, "replicated"] = (hq < alpha) & same


# -- probes -------------------------------------------------------------------------------


def _probes(X, d: Design, subjects, source, stat, row_labels, top_n, seed, progress) -> pd.DataFrame:
    """Subject-level probes per label (SAE features vs raw activations), then row-level
    probes for ``row_labels``."""
    raw = None
    if source.get("store"):
        try:
            raw_subj = aggregate(store=source["store"], layer=source["layer"], by=subjects.uns["bioviz"].get("by", "subject_id"),
                                 stats=[stat if stat in ("mean", "max") else "mean"], progress=progress)
            raw = np.asarray(raw_subj[d.subjects].X, dtype=np.float64)
        except (InputError, FileNotFoundError, KeyError) as err:
            warnings.warn(f"probes on raw activations skipped: {err}", stacklevel=3)
    parts = []
    for o in d.outcomes:
        if o.kind == "survival":
            continue
        inputs = {"raw activations": raw} if raw is not None else {}
        inputs["SAE features"] = X
        y = o.y.astype(int) if o.kind != "continuous" else o.y
        try:
            t = probe(inputs, y, kind=o.kind, top_n=tuple(top_n or (10,)), select_from="SAE features",
                      seed=seed, level="subject", progress=progress)
        except InputError as err:
            warnings.warn(f"subject-level probes of {o.name!r} skipped: {err}", stacklevel=3)
            continue
        parts.append(t.assign(label=o.name))
    for col in row_labels or []:
        parts.append(_row_probe(col, source, seed, top_n, progress))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _row_probe(col, source, seed, top_n, progress) -> pd.DataFrame:
    inputs, y, kind, groups, note = row_inputs(source, col, subject_key=source["subject_key"], seed=seed)
    t = probe(inputs, y, kind=kind, groups=groups, top_n=tuple(top_n or (10,)), select_from="SAE features",
              seed=seed, level="row", progress=progress)
    t = t.assign(label=col)
    t.attrs["note"] = note
    return t


# -- provenance ---------------------------------------------------------------------------


def _source(subjects, features, sae, store, layer) -> dict:
    """Where the rows came from: the store and layer (for raw activations and seeds)."""
    info = dict(subjects.uns.get("bioviz", {}))
    return {"store": store or info.get("store"), "layer": layer or info.get("layer"), "sae": sae,
            "features": features, "subject_key": info.get("by", "subject_id")}


def _decoder(features, sae, subjects, decoder):
    if decoder is not None:
        return np.asarray(decoder)
    if sae is not None:
        from ..sae import load_sae

        s = load_sae(sae) if isinstance(sae, (str, Path)) else sae
        return s.W_dec.detach().cpu().numpy()
    if isinstance(features, ad.AnnData) and "decoder" in features.varm:
        return np.asarray(features.varm["decoder"])
    if isinstance(features, (str, Path)):
        return np.asarray(ad.read_h5ad(features, backed="r").varm["decoder"])
    raise InputError("seeds: the decoder of the tested dictionary is unknown; give a FeatureTable "
                     "from bioviz.encode (it keeps varm['decoder']) or sae=")


def _manifest(settings, d: Design, source, features, clinical, split_note, n_disc, n_held) -> dict:
    inputs = {}
    if isinstance(features, (str, Path)):
        inputs["features"] = {"path": str(features), "checksum": file_checksum(features)}
    elif isinstance(features, ad.AnnData):
        inputs["features"] = {"in_memory": True, "shape": list(features.shape),
                              "uns_blake2b": digest(features.uns.get("bioviz", {}))}
    if isinstance(clinical, (str, Path)):
        inputs["clinical"] = {"path": str(clinical), "checksum": file_checksum(clinical)}
    elif isinstance(clinical, pd.DataFrame):
        inputs["clinical"] = {"in_memory": True, "blake2b": digest(clinical)}
    if source.get("store") and Path(source["store"], "manifest.json").exists():
        inputs["store"] = {"path": str(source["store"]), "layer": source["layer"],
                           "manifest_checksum": file_checksum(Path(source["store"], "manifest.json"))}
    if isinstance(source.get("sae"), (str, Path)):
        sae_dir = Path(source["sae"])
        inputs["sae"] = {"path": str(sae_dir), "checksum": file_checksum(sae_dir / "sae.safetensors")
                         if (sae_dir / "sae.safetensors").exists() else None}
    versions = {"bioviz": __version__}
    for pkg in ("numpy", "scipy", "pandas", "scikit-learn", "anndata", "torch"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    settings = {k: (v if v is None or isinstance(v, (str, int, float, bool, list, dict, tuple)) else repr(v))
                for k, v in settings.items()}
    return {"inputs": inputs, "settings": settings, "versions": versions, "design": d.notes,
            "subjects": {"analysed": len(d.subjects), "discovery": n_disc, "heldout": n_held},
            "split": split_note, "ranking_rule": RANKING_RULE,
            "families": "q, p_fwer and the held-out q are computed per label × test (× level for one-vs-rest)"}
