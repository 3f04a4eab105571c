"""The PDF report, read back with an independent reader (pypdf) and, where poppler is
installed, rendered to pixels (pdftoppm): the banner on every page, user strings printed
literally (never parsed as markup), Unicode kept, a page per candidate, figures embedded at
their print size, nothing drawn outside the page's side margins."""

import io
import re
import shutil
import subprocess
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from pypdf import PdfReader  # noqa: E402

from bioviz.errors import InputError  # noqa: E402
from bioviz.report.content import RUO, CandidatePage, Figure, Report, Table  # noqa: E402
from bioviz.report.pdf import write_pdf  # noqa: E402

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
AMP = "a & b"
UNI = "≥ × − µ"  # greater-or-equal, times, minus, micro sign
POINTS_PER_INCH = 72
A4_WIDTH_PT = 595.2756


def _png(seed: int, size=(5, 3)) -> bytes:
    fig, ax = plt.subplots(figsize=size, dpi=60)
    x = np.random.default_rng(seed).normal(size=100)
    ax.hist(x, bins=15, color=f"C{seed % 10}")
    ax.set_title(f"plot {seed}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pngs():
    return [_png(i) for i in range(3)]


def _png_dims(png: bytes) -> tuple[int, int]:
    h, w = mpimg.imread(io.BytesIO(png)).shape[:2]
    return w, h


def _page(k: int, pngs, headline=None) -> CandidatePage:
    return CandidatePage(
        rank=k + 1, feature=f"f{k}", label=SCRIPT if k == 0 else "response", anchor=f"c{k}",
        headline=headline or f"Candidate headline {k}: fires on CpG-rich promoters",
        facts=[("effect (95% CI)", "0.42 (0.30–0.55)"), ("q", "≤ 0.001"), ("label", IMG),
               ("note", "a bell\x07 and a NUL\x00 the PDF cannot show")],
        figures=[Figure(f"Distribution by label {j}", f"caption {j} {UNI}", pngs[j], 3.0 if j == 0 else 20.0)
                 for j in range(3)],
        tables=[Table("Top examples", pd.DataFrame({"example": ["S1", "S2"], "note": [AMP, UNI]})),
                # long enough that every candidate runs onto a second page (its footer is checked)
                Table("Top genes", pd.DataFrame({"gene": [f"GENE{i}" for i in range(45)], "score": ["1.0"] * 45}))],
        caveats=[f"caveat {k} " + AMP])


def _report(n: int, pngs, *, cohort_rows=120, pages=None) -> Report:
    cand = pd.DataFrame({"rank": [str(i + 1) for i in range(n)], "feature": [f"f{i}" for i in range(n)],
                         "label": [SCRIPT] * n, "effect (95% CI)": ["0.42 (0.30–0.55)"] * n,
                         "description": ["fires on CpG-rich promoter motifs in responders"] * n})
    cohort = pd.DataFrame({"subject pseudonym": [f"P{i:04d}" for i in range(cohort_rows)],
                           "age": ["90+"] * cohort_rows, "site": [IMG] * cohort_rows})
    # a dozen wordy columns: must wrap inside the frame, not run off the page
    wide = pd.DataFrame({f"column {j} with a long name": [f"value {j} " * 8] * 2 for j in range(12)})
    return Report(
        title="Biomarker candidates — response", generated="2025-01-31", version="9.9.9",
        objective="Find features " + SCRIPT, intended_use="Research only, α and β.",
        summary=[f"{n} candidates {UNI}", AMP, IMG], cohort=[("subjects", str(cohort_rows)), ("age", "90+")],
        cohort_tables=[Table("Subjects", cohort), Table("Wide table", wide)],
        model=Table("Model", pd.DataFrame({"what": ["model"], "checksum": ["9f86d081884c7d659a2feaa0c55ad015"]})),
        methods=[("Association", "Mann–Whitney U, Benjamini–Hochberg q.")],
        candidates=Table("Ranked candidates", cand),
        pages=[_page(k, pngs) for k in range(n)] if pages is None else pages,
        probes=Table("Probes", pd.DataFrame({"probe": ["linear"], "AUROC": ["0.71"]})), probes_text="probes text",
        limitations=["limitation one"], validation=["validation one"], deidentification=["pseudonyms"],
        skipped=[("motifs", "no genome " + SCRIPT)], lab="Lab " + AMP)


def _texts(path) -> list[str]:
    return [p.extract_text() for p in PdfReader(path).pages]


def _flat(s: str) -> str:
    return re.sub(r"\s+", " ", s)


def _body_lines(text: str) -> list[str]:
    """A page's text lines without its running header (the banner)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip() != RUO]


def test_banner_page_numbers_and_literal_strings(tmp_path, pngs):
    path = write_pdf(_report(2, pngs), tmp_path / "r.pdf")
    assert path == tmp_path / "r.pdf"
    texts = _texts(path)
    n = len(texts)
    for i, t in enumerate(texts, 1):
        assert RUO in t, f"banner missing on page {i}"
        assert f"page {i} of {n}" in _flat(t)  # the count is a form drawn after "of"
    assert texts[0].count(RUO) == 2  # the running header and the boxed banner on page 1
    whole = _flat("\n".join(texts))
    for s in (SCRIPT, IMG, AMP, UNI, "90+", "α and β", "Mann–Whitney", "Lab a & b", "a bell and a NUL"):
        assert s in whole, s
    # printed, not escaped twice: no entity text reaches the page
    assert "&lt;" not in whole and "&amp;" not in whole and "&#" not in whole
    # a long table splits across pages and repeats its header on each
    with_header = [i for i, t in enumerate(texts) if "subject pseudonym" in t]
    assert len(with_header) >= 2 and "P0119" in whole
    # the order a reader meets the sections in (the HTML's)
    order = ["Summary", "Objective and intended use", "Cohort", "Model, layer and dictionary", "Methods",
             "Candidate biomarkers", "Candidate headline 0", "Candidate headline 1", "Probe comparison",
             "Limitations", "What clinical validation would still need", "De-identification",
             "Evidence not gathered"]
    at = [whole.index(s) for s in order]
    assert at == sorted(at)


def test_each_candidate_starts_a_page_and_is_bookmarked(tmp_path, pngs):
    one = write_pdf(_report(1, pngs), tmp_path / "one.pdf")
    four = write_pdf(_report(4, pngs), tmp_path / "four.pdf")
    n1, n4 = len(PdfReader(one).pages), len(PdfReader(four).pages)
    assert n4 >= n1 + 3
    texts = _texts(four)
    starts = []
    for k in range(4):
        headline = f"Candidate headline {k}: fires on CpG-rich promoters"
        pages = [i for i, t in enumerate(texts) if " ".join(_body_lines(t)).startswith(headline)]
        assert len(pages) == 1, (k, pages)
        starts += pages
    assert starts == sorted(starts) and len(set(starts)) == 4
    # every page of a candidate, the ones its figures spill onto too, names it in the footer
    ends = starts[1:] + [next(i for i, t in enumerate(texts) if "Probe comparison" in t)]
    for k, (a, b) in enumerate(zip(starts, ends)):
        assert b - a >= 2  # figures and long tables do not fit on one page: the test sees continuations
        for i in range(a, b):
            assert f"Candidate {k + 1}: f{k} (" in texts[i], (k, i)
    assert "Candidate 4:" not in texts[ends[-1]]  # the sections after the candidates are not theirs
    # the outline: every section, and each candidate under the candidates section, pointing at its page
    reader = PdfReader(four)
    top = [o for o in reader.outline if not isinstance(o, list)]
    titles = [o.title for o in top]
    for s in ("Summary", "Cohort", "Candidate biomarkers", "Probe comparison", "Limitations"):
        assert s in titles
    nested = next(o for o in reader.outline if isinstance(o, list))
    assert [o.title for o in nested] == [f"1. f0 ({SCRIPT})", "2. f1 (response)", "3. f2 (response)",
                                         "4. f3 (response)"]
    assert [reader.get_destination_page_number(o) for o in nested] == starts


def test_empty_report_says_so(tmp_path):
    cand = pd.DataFrame(columns=["rank", "feature", "label", "effect (95% CI)"])
    r = _report(0, [], cohort_rows=3, pages=[])
    r.candidates = Table("Ranked candidates", cand)
    r.skipped = []
    r.logo = Figure("logo", "", _png(9, size=(2, 1)), width_in=1.0)
    assert r.empty
    path = write_pdf(r, tmp_path / "empty.pdf")
    reader = PdfReader(path)
    assert path.read_bytes().startswith(b"%PDF-") and len(reader.pages) >= 1
    whole = _flat("\n".join(p.extract_text() for p in reader.pages))
    assert "No candidate reached the reporting threshold" in whole
    assert "(none)" in whole  # the empty skipped-evidence table
    assert "Candidate headline" not in whole
    assert [len(p.images) for p in reader.pages] == [1] + [0] * (len(reader.pages) - 1)  # the logo only


def test_figures_embedded_at_print_size(tmp_path, pngs):
    path = write_pdf(_report(2, pngs), tmp_path / "r.pdf")
    reader = PdfReader(path)
    assert sum(len(p.images) for p in reader.pages) == 6  # 3 figures × 2 candidates
    # the size each image is drawn at: the cm operator before its Do
    drawn = []
    for page in reader.pages:
        last = []
        xobjects = page["/Resources"].get("/XObject", {})

        def visit(op, args, cm, tm, last=last, xobjects=xobjects):
            if op == b"cm":
                last[:] = [float(a) for a in args]
            elif op == b"Do" and xobjects[args[0]].get_object()["/Subtype"] == "/Image":
                drawn.append((last[0], last[3]))

        page.extract_text(visitor_operand_before=visit)
    assert len(drawn) == 6
    (w0, h0), (w1, h1), (w2, h2) = drawn[:3]
    assert w0 == pytest.approx(3.0 * POINTS_PER_INCH, abs=0.5)  # width_in=3 fits: drawn at 3 in
    side = 15 / 25.4 * POINTS_PER_INCH  # 20 in does not: a wide figure, scaled down into the frame
    frame = A4_WIDTH_PT - 2 * side
    assert frame / 2 < w1 <= frame + 0.5 and frame / 2 < w2 <= frame + 0.5
    for (w, h), png in zip(drawn[:3], pngs):
        pw, ph = _png_dims(png)
        assert h / w == pytest.approx(ph / pw, rel=0.01)  # aspect ratio kept


def test_metadata_title_only_and_deterministic(tmp_path, pngs):
    r = _report(1, pngs)
    a = write_pdf(r, tmp_path / "a.pdf").read_bytes()
    b = write_pdf(r, tmp_path / "b.pdf").read_bytes()
    assert a == b
    meta = PdfReader(tmp_path / "a.pdf").metadata
    assert meta.title == r.title
    for key in ("/Author", "/Creator", "/Producer", "/Subject", "/Keywords"):
        assert not meta.get(key), key
    assert str(tmp_path).encode() not in a
    assert b"/URI" not in a and b"http" not in a  # no link to any address


def test_bad_input(tmp_path, pngs):
    r = _report(1, pngs)
    r.pages[0].figures[1].png = b"GIF89a not a png"
    with pytest.raises(InputError, match="Distribution by label 1"):
        write_pdf(r, tmp_path / "r.pdf")
    with pytest.raises(InputError, match="path="):
        write_pdf(_report(0, pngs, pages=[]), tmp_path / "missing" / "r.pdf")
    with pytest.raises(InputError, match="report"):
        write_pdf({"title": "x"}, tmp_path / "r.pdf")


def test_a_cell_taller_than_a_page_continues_on_the_next(tmp_path):
    r = _report(0, [], cohort_rows=3, pages=[])
    words = " ".join(f"w{i}" for i in range(3000))
    r.model = Table("Model", pd.DataFrame({"what": ["notes"], "value": [words]}))
    whole = _flat("\n".join(_texts(write_pdf(r, tmp_path / "r.pdf"))))
    assert "w0 w1 w2" in whole and "w2998 w2999" in whole


def test_fifty_candidate_pages_are_fast(tmp_path, pngs):
    # distinct images (identical ones would be stored once): one plot, a marker moved per figure
    base = mpimg.imread(io.BytesIO(_png(7, size=(6, 3.5))))
    figs = []
    for i in range(150):
        arr = base.copy()
        row, col = 5 + 12 * (i // 100), 10 + 3 * (i % 100)
        arr[row: row + 10, col: col + 3, :3] = 0
        buf = io.BytesIO()
        mpimg.imsave(buf, arr, format="png")
        figs.append(buf.getvalue())
    pages = [_page(k, figs[3 * k: 3 * k + 3]) for k in range(50)]
    report = _report(50, pngs, pages=pages)
    t0 = time.perf_counter()
    path = write_pdf(report, tmp_path / "big.pdf")
    seconds = time.perf_counter() - t0
    print(f"50 candidate pages, 150 figures: {seconds:.2f} s")
    assert seconds < 20
    reader = PdfReader(path)
    assert len(reader.pages) >= 50 + 5
    assert sum(len(p.images) for p in reader.pages) == 150


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) is not installed")
def test_rendered_pages_have_content_inside_the_margins(tmp_path, pngs):
    path = write_pdf(_report(1, pngs), tmp_path / "r.pdf")
    dpi = 40
    subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(path), str(tmp_path / "pg")], check=True)
    images = sorted(tmp_path.glob("pg-*.png"))
    texts = _texts(path)
    assert len(images) == len(texts)
    side = int(16 / 25.4 * dpi)  # 16 mm: tables and figures stay inside the 18 mm side margins
    for i, png in enumerate(images):
        pix = mpimg.imread(png)[..., :3]
        ink = pix.min(axis=2) < 0.9
        assert ink.mean() > 0.005, f"page {i + 1} is blank"
        assert not ink[:, :side].any() and not ink[:, -side:].any(), f"page {i + 1} draws into the side margin"
    # the candidate's page carries its figures: far more ink than a text page
    cand = next(i for i, t in enumerate(texts) if "Candidate headline 0" in t)
    ink = [(mpimg.imread(p)[..., :3].min(axis=2) < 0.9).mean() for p in images]
    assert ink[cand] > 2 * ink[-1]
