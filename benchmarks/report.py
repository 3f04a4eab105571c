"""The report at the size the issue sets: 50 candidates over 2,000 subjects.

- report_render_s: ``bv.report`` end to end (compose, figures, data/, HTML, PDF, atlas and
  the release checks), 2,000 subjects × 10 rows, 400 features, 50 candidate pages, each with
  its interpretation (top examples, histogram). The bar: under 60 s on 2 cores.
- report_pdf_s, report_atlas_s, report_checks_s: its largest parts, timed alone.
- report_folder_mb: the folder's size (figures are inlined in both HTML pages and the PDF).
No peer writes this report; the parts that have peers are benchmarked in their own groups.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

KEYS = ("report_render_s", "report_pdf_s", "report_atlas_s", "report_checks_s", "report_folder_mb")


def _say(msg):
    print(f"# {msg}", file=sys.stderr, flush=True)


def run(n_subjects: int = 2000, rows: int = 10, n_features: int = 400, n_candidates: int = 50) -> dict:
    import bioviz as bv
    from bioviz.analysis.synthetic import make_cohort
    from bioviz.report.build import _check, _sources
    from bioviz.report.compose import compose
    from bioviz.report.pdf import write_pdf

    tmp = Path(tempfile.mkdtemp(prefix="bioviz-bench-report-"))
    planted = {j: 0.8 + 0.02 * j for j in range(n_candidates)}
    ft = make_cohort(n_subjects, rows, n_features, planted=planted, within_subject=(), seed=0)
    ft.write_h5ad(tmp / "features.h5ad")
    _say(f"{n_subjects} subjects × {rows} rows, {n_features} features, {n_candidates} planted")
    findings = bv.associate(str(tmp / "features.h5ad"), ["diagnosis"], covariates=["age", "sex"], n_permutations=0,
                            n_boot=0, n_stability=0, probes=False, out=str(tmp / "findings"), progress=False)
    top = min(n_candidates, len(findings.candidates))
    bv.interpret(str(tmp / "findings"), top=top, gene_sets=None, progress=False)
    _say(f"{len(findings.candidates)} candidates; interpreted {top}")
    t = time.perf_counter()
    rep = bv.report(str(tmp / "findings"), progress=False)
    render = time.perf_counter() - t
    _say(f"bv.report: {render:.1f} s, {rep.n_candidates} candidate pages")
    src = _sources(findings, None, None, (), (), None, 0)
    content, _ = compose(src, title="bench", objective="", intended_use="", version="")
    t = time.perf_counter()
    write_pdf(content, tmp / "again.pdf")
    pdf = time.perf_counter() - t
    from bioviz.report.atlas import atlas_html
    from bioviz.report.templates import environment

    t = time.perf_counter()
    atlas_html(src.features, findings, src.interpretation, src.pseudonyms, env=environment(), title="bench",
               generated="", version="")
    atlas = time.perf_counter() - t
    t = time.perf_counter()
    _check(rep.path, src)
    checks = time.perf_counter() - t
    size = sum(p.stat().st_size for p in rep.path.rglob("*") if p.is_file()) / 2**20
    return {"report_render_s": render, "report_pdf_s": pdf, "report_atlas_s": atlas, "report_checks_s": checks,
            "report_folder_mb": size}
