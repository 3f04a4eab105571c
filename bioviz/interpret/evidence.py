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

import anndata as ad
import pandas as pd

from ..errors import InputError
from ..features import open_feature_table

TABLES = ("summary", "examples", "top_genes", "composition", "enrichment", "de", "interventions")


@dataclass
class Interpretation:
    """``features`` (one row per candidate feature: its description and sources) and the
    evidence tables by name; ``skipped`` says which evidence was not gathered and why."""

    features: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return (f"Interpretation{where}: {len(self.features)} features; evidence: "
                f"{', '.join(k for k, v in self.tables.items() if len(v)) or 'none'}")


def interpret(findings, features=None, *, top: int = 10, label: str | None = None,
              gene_sets: str | None = "immune", cell_key: str = "cell_id", groupby: str | None = None,
              expression: ad.AnnData | str | None = None, adapter=None, data=None, sae=None,
              n_random: int = 20, alpha: float = 0.05, out: str | None = None, overwrite: bool = False,
              seed: int = 0, progress: bool = True) -> Interpretation:
    """Gather the evidence of what each of the ``top`` candidate features is.

    Parameters
    ----------
    findings
        A :class:`~bioviz.analysis.Findings` or its directory.
    features
        The FeatureTable the Findings were made from (default: the path its manifest records).
    top
        How many candidates (by rank; each feature once).
    label
        A row-metadata column whose composition in the top rows is reported (default: the
        label of each feature's best candidate row, when it is in the row metadata).
    gene_sets
        ``"immune"`` (the shipped immune programmes), a GMT path, or None: enrichment of the
        driving genes (over-representation, BH per feature).
    cell_key, groupby
        For gene-token rows: the cell column, and a cell-level column (a cell type) whose
        composition among firing cells is reported.
    expression
        The cohort's own expression AnnData (cells × genes, log-normalised, obs_names = cell
        ids): genes differentially expressed in feature-active cells.
    adapter, data, sae
        The model's adapter, items to run and the SAE: interventions (ablation) of each
        feature against ``n_random`` random features of similar density.
    alpha
        Results with q at or above this are reported as absent.
    out
        The folder to write (default: ``interpretation`` beside the Findings directory).
    overwrite
        Replace ``out`` when it holds an interpretation.
    seed
        Seeds the random features of interventions.
    progress
        Progress bars.
    """
    from ..analysis import Findings

    if not isinstance(findings, Findings):
        findings = Findings.read(findings)
    if top < 1:
        raise InputError(f"top={top}: expected at least 1 candidate")
    cand = findings.candidates.drop_duplicates("feature").head(top)
    names = [str(f) for f in cand["feature"]]
    ft = _feature_table(features, findings)
    tables: dict[str, pd.DataFrame] = {"association": cand}
    skipped: dict[str, str] = {}
    if not names:
        skipped["all"] = "no candidate features in the Findings"
    else:
        _generic(tables, ft, names, cand, label, progress)
        _genomic(tables, skipped, ft, names, gene_sets, cell_key, groupby, expression, progress)
        _causal(tables, skipped, adapter, data, sae, names, n_random, seed, progress)
    from .describe import describe_all

    described = describe_all(names, {k: v for k, v in tables.items() if k in _DESCRIBED and len(v)},
                             alpha=alpha)
    described.insert(1, "rank", cand["rank"].to_numpy()[:len(described)])
    described["sources"] = described["sources"].map(lambda s: json.dumps([list(map(str, x)) for x in s]))
    result = Interpretation(features=described, tables={k: v for k, v in tables.items() if k != "association"},
                            skipped=skipped)
    if out is None and findings.path is not None:
        out = Path(findings.path).parent / "interpretation"
    if out is not None:
        _write(result, ft, names, Path(out), overwrite, findings, progress)
    return result


_DESCRIBED = ("summary", "composition", "top_genes", "enrichment", "association")


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


def _genomic(tables, skipped, ft, names, gene_sets, cell_key, groupby, expression, progress):
    from .genes import active_cell_de, cell_scores, cell_type_composition, gene_lists, token_genes

    if "gene" not in ft.obs:
        skipped["genes"] = "the rows are not gene tokens (no 'gene' column)"
        return
    # the gene-level tables read whole columns: only the candidates' codes are loaded
    ft = ft[:, names].to_memory() if ft.isbacked else ft[:, names]
    tables["top_genes"] = token_genes(ft, names, progress=progress)
    lists = gene_lists(tables["top_genes"])
    if cell_key in ft.obs and (groupby is not None or expression is not None):
        cells = cell_scores(ft, cell_key=cell_key, progress=progress)
        if groupby is not None:
            tables["composition"] = cell_type_composition(cells, names, groupby=groupby, cell_key=cell_key,
                                                          progress=progress)
        if expression is not None:
            expr = expression if isinstance(expression, ad.AnnData) else ad.read_h5ad(expression)
            tables["de"] = active_cell_de(expr, cells, names, active_quantile=0.8, progress=progress)
            lists = gene_lists(tables["de"]) or lists
    if gene_sets is None:
        skipped["enrichment"] = "no gene sets given"
        return
    from .enrichment import overrepresentation
    from .genesets import immune_gmt, read_gmt

    sets = read_gmt(immune_gmt() if gene_sets == "immune" else gene_sets)
    universe = sorted(set(map(str, ft.obs["gene"].astype(str).unique())))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown genes are counted in attrs
            tables["enrichment"] = overrepresentation(lists, sets, universe)
    except InputError as err:
        skipped["enrichment"] = str(err)


def _causal(tables, skipped, adapter, data, sae, names, n_random, seed, progress):
    if adapter is None or data is None or sae is None:
        skipped["interventions"] = "needs adapter=, data= and sae= (the model is not run otherwise)"
        return
    from ..sae import load_sae
    from .intervene import intervene

    sae = load_sae(sae) if isinstance(sae, (str, os.PathLike)) else sae
    parts = []
    for name in names:
        t = intervene(adapter, data, sae, None, int(name.lstrip("f")), n_random=n_random, seed=seed,
                      progress=progress)
        parts.append(t.assign(candidate=name))
    tables["interventions"] = pd.concat(parts, ignore_index=True)


def _write(result: Interpretation, ft, names, out: Path, overwrite: bool, findings, progress) -> None:
    """Everything under a temporary name, renamed into place: complete or absent."""
    from ..analysis.findings import _write_parquet
    from .examples import write_feature_evidence

    if out.exists():
        if not (out / "interpretation.json").exists():
            raise InputError(f"out={out} exists and is not an interpretation bioviz wrote; choose another path")
        if not overwrite:
            raise InputError(f"out={out} already holds an interpretation; pass overwrite=True to replace it")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_parquet(result.features, tmp / "features.parquet")
        for name, table in result.tables.items():
            _write_parquet(table.reset_index(drop=True), tmp / f"{name}.parquet")
        if names:
            write_feature_evidence(ft, names, tmp / "features", progress=progress)
        (tmp / "interpretation.json").write_text(json.dumps({
            "findings": str(findings.path) if findings.path else None, "features": names,
            "tables": sorted(result.tables), "skipped": result.skipped}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.path = out
