"""``interpret``: the evidence of what each candidate feature is, gathered into one folder
beside the Findings (``interpretation/``), with a one-line description per candidate.

What is gathered depends on what the rows are: every FeatureTable gets top examples, a
summary (density, subjects, label composition; single-subject features flagged) and
histograms; gene-token rows get their driving genes and enrichment against gene sets;
cell-level scores get cell-type composition and, with the cohort's expression, the genes
differentially expressed in feature-active cells; an adapter, its data and the SAE get
interventions against random features. What cannot be gathered is listed with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..adapter import Adapter
from ..analysis import Findings
from ..errors import InputError, positive_int
from ..features import open_feature_table
from ..sae import SparseAutoencoder, load_sae


@dataclass
class Interpretation:
    """``features`` (one row per candidate feature: its description and sources) and the
    evidence tables by name; ``skipped`` says which evidence was not gathered and why."""

    features: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    notes: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        lines = [f"Interpretation{where}: {len(self.features)} features; evidence: "
                 f"{', '.join(k for k, v in self.tables.items() if len(v)) or 'none'}"]
        lines += [f"  {r.feature}: {r.description}" for r in self.features.head(10).itertuples()]
        lines += [f"  skipped {k}: {v}" for k, v in self.skipped.items()]
        return "\n".join(lines)

    @classmethod
    def read(cls, path) -> Interpretation:
        """Open an interpretation folder written by :func:`interpret`; an incomplete one is an
        error naming what lacks."""
        path = Path(path)
        meta = path / "interpretation.json"
        if not meta.exists():
            raise InputError(f"{path} is not an interpretation folder (no interpretation.json); make one "
                             "with bioviz.interpret(findings, out=...)")
        record = json.loads(meta.read_text())
        missing = [f"{t}.parquet" for t in ("features", *record.get("tables", []))
                   if not (path / f"{t}.parquet").exists()]
        if missing:
            raise InputError(f"interpretation folder {path} lacks {', '.join(missing)}")
        tables = {t: pd.read_parquet(path / f"{t}.parquet") for t in record.get("tables", [])}
        return cls(features=pd.read_parquet(path / "features.parquet"), tables=tables,
                   skipped=dict(record.get("skipped", {})), path=path, notes=dict(record.get("notes", {})))


def interpret(findings: Findings | str | os.PathLike, features: ad.AnnData | str | None = None, *,
              top: int = 10, candidates: list[str] | None = None, label: str | None = None,
              gene_sets: str | None = "immune", cell_key: str = "cell_id", groupby: str | None = None,
              expression: ad.AnnData | str | None = None, adapter: Adapter | None = None, data: Any = None,
              sae: SparseAutoencoder | str | None = None, layer: str | None = None, n_random: int = 20, n_permutations: int = 1000,
              alpha: float = 0.05, out: str | None = None, overwrite: bool = False, seed: int = 0,
              progress: bool = True) -> Interpretation:
    """Gather the evidence of what each of the ``top`` candidate features is.

    Parameters
    ----------
    findings
        A :class:`~bioviz.analysis.Findings` or its directory.
    features
        The FeatureTable the Findings were made from (default: the path its manifest records).
    top
        How many candidates (by rank; each feature once).
    candidates
        Feature names to explain instead of the Findings' top candidates (e.g. ``["f12"]``);
        every one must be a feature of the FeatureTable (and of ``sae``).
    label
        A row-metadata column whose composition in the top rows is reported (default: the
        label of each feature's best candidate row, when it is in the row metadata).
    gene_sets
        ``"immune"`` (the shipped immune programmes), a GMT path, or None: enrichment of the
        driving genes (over-representation, BH per feature; and a preranked test over all
        genes with ``n_permutations`` random sets).
    cell_key, groupby
        For gene-token rows: the cell column, and a cell-level column (a cell type) whose
        composition among firing cells is reported.
    expression
        The cohort's own expression AnnData (cells × genes, log-normalised, obs_names = cell
        ids): genes differentially expressed in feature-active cells.
    adapter, data, sae
        The model's adapter, the cohort it ran on and the SAE (or its checkpoint folder):
        evidence in the input space (motifs of the DNA windows where a feature fires; maps
        over the original scans, refined by attribution when ``sae`` is given) and
        interventions (ablation) of each feature against ``n_random`` random features of
        similar density.
    layer
        The layer ``sae`` reads (default: the layer its provenance records).
    alpha
        Results with q at or above this are reported as absent.
    out
        The folder to write (default: ``interpretation`` beside the Findings directory).
    overwrite
        Replace ``out`` when it holds an interpretation.
    seed
        Seeds the random features of interventions and the preranked null.
    progress
        Progress bars.
    """
    if not isinstance(findings, Findings):
        findings = Findings.read(findings)
    top = positive_int(top, "top")
    ft = _feature_table(features, findings)
    sae = load_sae(sae) if isinstance(sae, (str, os.PathLike)) else sae
    cand = _candidates(findings, candidates, top, ft, sae)
    names = [str(f) for f in cand["feature"]]
    if out is None and findings.path is not None:
        out = Path(findings.path).parent / "interpretation"
    out = Path(out) if out is not None else None
    if out is not None:
        _check_out(out, overwrite)
    tables: dict[str, pd.DataFrame] = {"association": cand}
    skipped: dict[str, str] = {}
    notes: dict[str, object] = {}
    tmp = _staging(out)
    try:
        if not names:
            skipped["all"] = "no candidate features in the Findings"
        else:
            _generic(tables, ft, names, cand, label, progress)
            _genomic(tables, skipped, notes, ft, names, gene_sets, cell_key, groupby, expression,
                     n_permutations, seed, progress)
            _input_space(tables, skipped, adapter, data, sae, ft, names, cand, findings, tmp, progress)
            _causal(tables, skipped, adapter, data, sae, layer, names, n_random, seed, progress)
        from .describe import TABLES as DESCRIBED
        from .describe import describe_all

        described = describe_all(names, {k: v for k, v in tables.items() if k in DESCRIBED and len(v)},
                                 alpha=alpha)
        described.insert(1, "rank", cand["rank"].to_numpy()[:len(described)])
        described["sources"] = described["sources"].map(
            lambda s: json.dumps([list(map(str, x)) for x in s]))
        result = Interpretation(features=described,
                                tables={k: v for k, v in tables.items() if k != "association"},
                                skipped=skipped, notes=notes)
        if tmp is not None:
            _write(result, ft, names, tmp, findings, notes, alpha, progress)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
            result.path = out
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _candidates(findings, candidates, top: int, ft, sae) -> pd.DataFrame:
    """The candidates to explain: the Findings' best ``top``, or the features named, each
    checked against the FeatureTable and the SAE (a list made for another SAE is refused)."""
    table = findings.candidates.drop_duplicates("feature")
    if candidates is None:
        cand = table.head(top)
    else:
        names = [candidates] if isinstance(candidates, str) else [str(c) for c in candidates]
        if not names:
            raise InputError("candidates is empty: name at least one feature (e.g. 'f12') or leave it "
                             "None for the Findings' top candidates")
        # a feature that is not a candidate brings its best primary association (rank NaN)
        rest = findings.table[findings.table["primary"].astype(bool)].sort_values("p", kind="stable")
        rest = rest.drop_duplicates("feature").assign(rank=np.nan)
        have = pd.concat([table, rest[~rest["feature"].isin(table["feature"])]], ignore_index=True)
        have.index = have["feature"].astype(str)
        names = list(dict.fromkeys(names))
        cand = have.reindex(names).assign(feature=names)
    names = [str(f) for f in cand["feature"]]
    missing = [n for n in names if n not in ft.var_names]
    if missing:
        raise InputError(f"candidate feature(s) {', '.join(missing[:5])} are not in the FeatureTable "
                         f"({ft.n_vars} features, {ft.var_names[0]}..{ft.var_names[-1]}); were the "
                         "Findings made from another SAE's FeatureTable?")
    if sae is not None:
        idx = [int(n.lstrip("f")) if n.lstrip("f").isdigit() else -1 for n in names]
        bad = [n for n, i in zip(names, idx) if not 0 <= i < sae.d_sae]
        if bad:
            raise InputError(f"candidate feature(s) {', '.join(bad[:5])} are not latents of the SAE "
                             f"(d_sae={sae.d_sae}: f0..f{sae.d_sae - 1}); pass the SAE the "
                             "FeatureTable was encoded with")
    return cand.reset_index(drop=True)


def _check_out(out: Path, overwrite: bool) -> None:
    """Refused before any work: another file, or an interpretation without ``overwrite``."""
    if out.exists():
        if not (out / "interpretation.json").exists():
            raise InputError(f"out={out} exists and is not an interpretation bioviz wrote; choose another path")
        if not overwrite:
            raise InputError(f"out={out} already holds an interpretation; pass overwrite=True to replace it")


def _staging(out: Path | None) -> Path | None:
    """Everything is written under a temporary name and renamed into place: complete or absent."""
    if out is None:
        return None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp




def _feature_table(features, findings):
    if features is None:
        path = (findings.manifest.get("inputs", {}).get("features") or {}).get("path")
        if path is None:
            raise InputError("features: the Findings were made from a FeatureTable in memory (or a "
                             "streamed SAE); pass the FeatureTable (features=)")
        features = path
    return features if isinstance(features, ad.AnnData) else open_feature_table(features)


def _generic(tables, ft, names, cand, label, progress):
    from .examples import feature_summary, top_composition, top_examples

    if label is None:
        label = next((str(lab) for lab in cand["label"] if str(lab) in ft.obs), None)
    tables["summary"] = feature_summary(ft, names, label=label, progress=progress)
    cols = [c for c in ("cell_type", "bulk_labels") if c in ft.obs]  # genes have their own phrase
    ex = top_examples(ft, names, label=label, progress=progress)
    tables["examples"] = ex
    for c in cols:
        if c in ex:
            tables["composition"] = top_composition(ex, c)
            break


def _genomic(tables, skipped, notes, ft, names, gene_sets, cell_key, groupby, expression,
             n_permutations, seed, progress):
    from .genes import (
        active_cell_de,
        cell_scores,
        cell_type_composition,
        gene_lists,
        gene_scores,
        token_genes,
    )

    if "gene" not in ft.obs:
        skipped["genes"] = "the rows are not gene tokens (no 'gene' column)"
        return
    # the gene-level tables read whole columns: only the candidates' codes are loaded
    ft = ft[:, names].to_memory() if ft.isbacked else ft[:, names]
    ranking = token_genes(ft, names, n=None, progress=progress)
    tables["top_genes"] = ranking.groupby("feature", sort=False).head(20).reset_index(drop=True)
    lists = gene_lists(tables["top_genes"])
    if cell_key in ft.obs and (groupby is not None or expression is not None):
        cells = cell_scores(ft, cell_key=cell_key, progress=progress)
        if groupby is not None:
            tables["cell_types"] = cell_type_composition(cells, names, groupby=groupby, cell_key=cell_key,
                                                         progress=progress)
        if expression is not None:
            expr = expression if isinstance(expression, ad.AnnData) else _read_expression(expression)
            tables["de"] = active_cell_de(expr, cells, names, active_quantile=0.8, progress=progress)
            lists = gene_lists(tables["de"]) or lists
            ranking = tables["de"]
    if gene_sets is None:
        skipped["enrichment"] = "no gene sets given (gene_sets=None)"
        return
    from .enrichment import overrepresentation, preranked
    from .genesets import check_universe, immune_gmt, read_gmt

    sets = read_gmt(immune_gmt() if gene_sets == "immune" else gene_sets)
    universe = sorted(set(map(str, ft.obs["gene"].astype(str).unique())))
    if "de" in tables:
        universe = sorted(set(universe) | set(map(str, tables["de"]["gene"])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tables["gene_sets"] = check_universe(sets, universe)[1]  # genes unknown, counted
        except InputError as err:
            skipped["enrichment"] = str(err)
            return
    notes["gene_sets"] = [str(w.message) for w in caught]
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said once above
        try:
            tables["enrichment"] = overrepresentation(lists, sets, universe)
        except InputError as err:
            skipped["enrichment"] = str(err)
        try:
            scores = gene_scores(ranking, universe=universe)
            tables["enrichment_preranked"] = preranked(scores, sets, n_permutations=n_permutations,
                                                       seed=seed, progress=progress)
        except InputError as err:
            skipped["enrichment_preranked"] = str(err)


def _read_expression(path) -> ad.AnnData:
    if not Path(path).is_file():
        raise InputError(f"expression={path}: no such file; expected the cohort's expression .h5ad")
    return ad.read_h5ad(path)


def _input_space(tables, skipped, adapter, data, sae, ft, names, cand, findings, tmp, progress):
    """What the adapter maps back to its inputs (motifs, maps), one call per label."""
    if adapter is None:
        skipped["input_space"] = ("needs adapter= (and data=): motifs or maps in the model's input "
                                  "space come from the modality's adapter")
        return
    subjects = findings.subjects.obs if findings.subjects is not None else None
    labels = cand.assign(_label=cand.get("label", pd.Series(index=cand.index, dtype=object)))
    parts: dict[str, list[pd.DataFrame]] = {}
    for lab, group in labels.groupby("_label", sort=False, dropna=False):
        feats = [str(f) for f in group["feature"]]
        lab = None if pd.isna(lab) else str(lab)
        found, why = adapter.evidence(ft, feats, data=data, sae=sae, subjects=subjects, label=lab,
                                      reference=_reference(group), out=tmp, progress=progress)
        for k, t in found.items():
            parts.setdefault(k, []).append(t)
        skipped.update(why)
    for k, ts in parts.items():
        if k in tables:
            raise InputError(f"{type(adapter).__name__}.evidence returned a table {k!r}, a name "
                             "interpret gives its own table")
        tables[k] = pd.concat(ts, ignore_index=True)


def _reference(candidates: pd.DataFrame):
    """The reference level the Findings compared against ("AD vs CN": CN), when one level
    was compared with another; None for "vs rest", correlations and survival."""
    for contrast in candidates.get("contrast", pd.Series(dtype=object)).dropna().astype(str):
        if " vs " in contrast:
            ref = contrast.split(" vs ", 1)[1]
            return None if ref == "rest" else ref
    return None


def _causal(tables, skipped, adapter, data, sae, layer, names, n_random, seed, progress):
    if adapter is None or data is None or sae is None:
        skipped["interventions"] = "needs adapter=, data= and sae= (the model is not run otherwise)"
        return
    from .intervene import intervene

    parts = []
    for name in names:
        t = intervene(adapter, data, sae, layer, int(name.lstrip("f")), n_random=n_random, seed=seed,
                      progress=progress)
        # ``feature`` names the candidate, as in every other table; ``edited`` the latent
        parts.append(t.rename(columns={"feature": "edited"}).assign(feature=name))
    table = pd.concat(parts, ignore_index=True)
    names_out = adapter.output_names(int(table["output"].max()) + 1)
    if names_out is not None:  # what each output unit is (a gene of a masked-LM head)
        table.insert(table.columns.get_loc("output") + 1, "output_name",
                     [names_out[i] for i in table["output"]])
    tables["interventions"] = table


def _write(result: Interpretation, ft, names, tmp: Path, findings, notes, alpha, progress) -> None:
    from ..analysis.findings import _write_parquet
    from .examples import write_feature_evidence
    from .figures import write_figures

    _write_parquet(result.features, tmp / "features.parquet")
    for name, table in result.tables.items():
        _write_parquet(table.reset_index(drop=True), tmp / f"{name}.parquet")
    if names:
        write_feature_evidence(ft, names, tmp / "features", progress=progress)
        write_figures(result.tables, names, tmp / "features", alpha)
    (tmp / "interpretation.json").write_text(json.dumps({
        "findings": str(findings.path) if findings.path else None, "features": names,
        "tables": sorted(result.tables), "skipped": result.skipped, "notes": notes}, indent=2,
        default=str))
