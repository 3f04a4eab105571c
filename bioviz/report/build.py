"""``bv.report``: the report folder — ``report.html`` and ``report.pdf`` for clinicians,
``atlas.html`` for the lab, ``data/`` with every table — written whole or not at all.

The folder is written under a temporary name beside its destination, checked (self-contained:
no address a browser would fetch; de-identified: no original identifier or identifying value
in any file, the PDF's text included), and only then renamed into place. A failed check
leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..analysis import Findings
from ..errors import InputError
from ..interpret import Interpretation
from ..lock import ArtifactLock, publish
from ..version import __version__
from .checks import references
from .compose import Sources, compose
from .content import Figure, Table
from .data import write_data
from .deidentify import Pseudonyms, find_identifiers
from .templates import environment

__all__ = ["report", "ReportFolder"]

KIND = "bioviz.report"
_OBJECTIVE = ("Find features inside a foundation model's representation of the cohort that differ between the "
              "label groups, measured per subject, and describe what each one is.")
_INTENDED = ("Hypothesis generation for research: candidates to test in independent cohorts. Not for decisions "
             "about individual patients.")


@dataclass
class ReportFolder:
    """Where the report was written and what it holds."""

    path: Path
    html: Path
    pdf: Path | None
    atlas: Path | None
    data: Path
    n_candidates: int
    key: Path | None = None

    def __repr__(self) -> str:
        parts = [f"report {self.path}: {self.n_candidates} candidates", f"  {self.html.name}"]
        parts += [f"  {p.name}" for p in (self.pdf, self.atlas) if p is not None]
        parts.append(f"  {self.data.name}/ (every table as TSV and JSON)")
        if self.key is not None:
            parts.append(f"  re-identification key (keep apart): {self.key}")
        return "\n".join(parts)


def report(findings: Findings | str | os.PathLike, out: str | os.PathLike | None = None, *,
           interpretation: Interpretation | str | os.PathLike | None = None,
           features=None, title: str = "Candidate biomarkers", objective: str = _OBJECTIVE,
           intended_use: str = _INTENDED, lab: str = "", logo: str | os.PathLike | None = None,
           templates: str | os.PathLike | None = None, identifying: list[str] | tuple[str, ...] = (),
           keep_text: list[str] | tuple[str, ...] = (), subject_key: str | None = None,
           key: str | os.PathLike | None = None, pdf: bool = True, atlas: bool = True,
           overwrite: bool = False, seed: int | None = None, progress: bool = True) -> ReportFolder:
    """Write the report folder for ``findings``.

    Parameters
    ----------
    findings
        A :class:`~bioviz.analysis.Findings` or its directory.
    out
        The report folder (default: ``report`` beside the Findings directory).
    interpretation
        The :func:`~bioviz.interpret` folder (or result); default: ``interpretation`` beside
        the Findings when it exists. Without it, the report says what was not gathered.
    features
        The FeatureTable (AnnData or .h5ad path; default: the one the Findings record): the
        model, layer and dictionary it records, and the atlas's examples and histograms.
    title, objective, intended_use, lab
        The report's wording (plain text; escaped).
    logo
        A PNG file of the lab's logo, inlined in the header.
    templates
        A folder of templates that replace the shipped ones by name (``report.html.j2``,
        ``atlas.html.j2``, ``report.css``); autoescaped like the shipped ones.
    identifying
        Columns of the clinical or row tables that identify a person (names, record numbers):
        left out, and their values searched for in every file before the report is released.
    keep_text
        Free-text columns to show (left out by default).
    subject_key
        The subject column (default: the one the Findings were made with).
    key
        Where to write the re-identification key (pseudonym → identifier, TSV). Only when given,
        and never inside the report folder.
    pdf, atlas
        Write ``report.pdf`` and ``atlas.html``.
    overwrite
        Replace ``out`` when it holds a report (a folder bioviz did not write is never replaced).
    seed
        Draws reproducible pseudonyms (tests); by default they come from the operating system's
        randomness.
    progress
        A progress bar over the steps.
    """
    if not isinstance(findings, Findings):
        findings = Findings.read(findings)
    if out is None:
        if findings.path is None:
            raise InputError("out: give the report folder (the Findings were not read from disk)")
        out = Path(findings.path).parent / "report"
    out = Path(out)
    _check_out(out, overwrite)
    if key is not None:
        k = Path(key).resolve()
        if k == out.resolve() or out.resolve() in k.parents:
            raise InputError(f"key={key}: the re-identification key may not be written inside the report folder "
                             f"{out}; keep it where the report is not sent")
    src = _sources(findings, interpretation, features, identifying, keep_text, subject_key, seed)
    logo_fig = _logo(logo)
    env = environment(templates)
    steps = ["compose", "data", "html", *(["pdf"] if pdf else []), *(["atlas"] if atlas else []), "checks"]
    bar = tqdm(total=len(steps), desc="report", unit="step", disable=not progress)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        rep, tables = compose(src, title=title, objective=objective, intended_use=intended_use, lab=lab,
                              logo=logo_fig, version=__version__)
        bar.update()
        atlas_html = None
        if atlas:
            from .atlas import atlas_html as render_atlas

            atlas_html, atlas_table = render_atlas(src.features, findings, src.interpretation, src.pseudonyms,
                                                   env=env, title=f"{title}: feature atlas",
                                                   generated=rep.generated, version=__version__,
                                                   identifying=src.identifying, subject_key=src.subject_key)
            tables["atlas"] = atlas_table
        index = write_data(tables, tmp / "data", src.pseudonyms)
        rep.data_files = Table("", index[["table", "rows", "columns", "tsv", "json"]].astype(str))
        bar.update()
        html = env.get_template("report.html.j2").render(r=rep)
        (tmp / "report.html").write_text(html, encoding="utf-8")
        bar.update()
        if pdf:
            from .pdf import write_pdf

            write_pdf(rep, tmp / "report.pdf")
            bar.update()
        if atlas_html is not None:
            (tmp / "atlas.html").write_text(atlas_html, encoding="utf-8")
            bar.update()
        checks = _check(tmp, src)
        (tmp / "report.json").write_text(json.dumps({
            "kind": KIND, "bioviz": __version__, "written": rep.generated, "candidates": len(rep.pages),
            "files": sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()),
            "checks": checks}, indent=1))
        bar.update()
        with ArtifactLock(out, "report", folder=False):
            _check_out(out, overwrite)  # what another process may have written meanwhile
            publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    key_path = src.pseudonyms.write_key(key, report_dir=out) if key is not None else None
    return ReportFolder(path=out, html=out / "report.html", pdf=out / "report.pdf" if pdf else None,
                        atlas=out / "atlas.html" if atlas else None, data=out / "data",
                        n_candidates=len(rep.pages), key=key_path)


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not (out / "report.json").exists() or json.loads((out / "report.json").read_text()).get("kind") != KIND:
        raise InputError(f"out={out} exists and is not a bioviz report folder; choose another folder "
                         "(bioviz never replaces what it did not write)")
    if not overwrite:
        raise InputError(f"out={out} already holds a report; pass overwrite=True (--overwrite) to replace it")


def _sources(findings, interpretation, features, identifying, keep_text, subject_key, seed) -> Sources:
    if interpretation is None and findings.path is not None:
        beside = Path(findings.path).parent / "interpretation"
        interpretation = beside if (beside / "interpretation.json").exists() else None
    if isinstance(interpretation, (str, os.PathLike)):
        interpretation = Interpretation.read(interpretation)
    if features is None:
        rec = findings.manifest.get("inputs", {}).get("features")
        p = Path(rec["path"]) if isinstance(rec, dict) and rec.get("path") else None
        if p is not None and not p.is_absolute() and findings.path is not None and not p.exists():
            p = Path(findings.path).parent / p
        features = p if p is not None and p.is_file() else None
    if isinstance(features, (str, os.PathLike)):
        import anndata as ad

        if not Path(features).is_file():
            raise InputError(f"features={features}: no such file; expected the .h5ad FeatureTable")
        features = ad.read_h5ad(features)
    key = subject_key or findings.manifest.get("settings", {}).get("subject_key") or "subject_id"
    identifying = tuple(str(c) for c in identifying)
    obs = findings.subjects.obs
    row_obs = features.obs if features is not None else pd.DataFrame()
    unknown = [c for c in identifying if c not in obs.columns and c not in row_obs.columns]
    if unknown:
        raise InputError(f"identifying={unknown}: not a column of the Findings' subjects table or the FeatureTable's "
                         f"rows (subjects: {list(map(str, obs.columns))[:15]})")
    ids = {str(v) for v in obs.index}
    for table in (obs, row_obs):
        for c in (key, "subject_id", "sample_id"):
            if c in table.columns:
                ids |= {str(v) for v in pd.unique(table[c].dropna())}
    values = set()
    for table in (obs, row_obs):
        for c in identifying:
            if c in table.columns:
                values |= {str(v) for v in pd.unique(table[c].dropna())}
    return Sources(findings=findings, interpretation=interpretation, features=features,
                   pseudonyms=Pseudonyms(seed=seed), subject_key=key, identifying=identifying,
                   keep_text=tuple(keep_text), identifiers=ids, identifying_values=values)


def _logo(logo) -> Figure | None:
    if logo is None:
        return None
    p = Path(logo)
    if not p.is_file():
        raise InputError(f"logo={logo}: no such file; expected a PNG image")
    data = p.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise InputError(f"logo={logo}: not a PNG image (convert it to PNG)")
    return Figure(title="logo", caption="", png=data, width_in=2.0)


def _check(folder: Path, src: Sources) -> dict:
    """The release checks; a failure raises and the folder is discarded."""
    for page in ("report.html", "atlas.html"):
        p = folder / page
        if not p.exists():
            continue
        refs = references(p.read_text(encoding="utf-8"))
        bad = refs[refs["kind"].isin(["remote", "file", "script"])]
        if len(bad):
            raise InputError(f"{page} is not self-contained: it names {len(bad)} address(es) a browser would "
                             f"fetch ({', '.join(bad['url'].astype(str).head(3))}); the report was not written")
    found = find_identifiers(folder, src.identifiers | src.identifying_values)
    if len(found):
        where = found.groupby("file")["count"].sum()
        raise InputError("de-identification check failed: original identifiers or identifying values remain in "
                         + ", ".join(f"{f} ({n}×)" for f, n in where.items())
                         + "; the report was not written (mark the column identifying=[...] or drop it)")
    return {"self_contained": True, "identifiers_searched": len(src.identifiers | src.identifying_values),
            "identifiers_found": 0, "too_short_to_search": len(found.attrs.get("not_searched", []))}
