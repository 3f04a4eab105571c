"""The report and the atlas opened in a real browser (Debian's headless Chromium, which
``make test`` installs when it is missing) and the PDF turned into pictures (poppler's
pdftoppm): hostile label and column names run no script and show as text, the pages render
(screenshots kept in tests/screenshots/ for a person to look at), the PDF's pages are not blank."""

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import bioviz as bv
from bioviz.analysis.synthetic import make_cohort
from bioviz.report import RUO, find_identifiers, references

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PDFTOPPM = shutil.which("pdftoppm")
SHOTS = Path(__file__).parent / "screenshots"
# each payload, if it ran, would mark the page's root element: the test reads the DOM after load
XSS_SCRIPT = "<script>document.documentElement.setAttribute('data-xss','script')</script>"
XSS_IMG = "\"><img src=x onerror=\"document.documentElement.setAttribute('data-xss','img')\">"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--virtual-time-budget=4000"]

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it "
                                                              "with apt-get where it can)")


class _Dom(HTMLParser):
    """The rendered DOM's elements (tag, attributes) and its text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.cells: list[str] = []  # text inside table cells (what the page drew, not its title)
        self._td = 0

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._td += tag in ("td", "dd", "li")

    def handle_endtag(self, tag):
        self._td -= tag in ("td", "dd", "li") and self._td > 0

    def handle_data(self, data):
        self.text.append(data)
        if self._td:
            self.cells.append(data)


def _chromium(args, tmp_path, timeout=90) -> str:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _dom(page: Path, tmp_path, fragment: str = "") -> _Dom:
    dom = _Dom()
    dom.feed(_chromium(["--dump-dom", page.as_uri() + fragment], tmp_path))
    return dom


def _screenshot(page: Path, name: str, tmp_path, size=(1280, 2400)) -> np.ndarray:
    import matplotlib.image as mpimg

    SHOTS.mkdir(exist_ok=True)
    shot = SHOTS / f"{name}.png"
    _chromium([f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", page.as_uri()], tmp_path)
    return mpimg.imread(shot)


def _ink(img: np.ndarray) -> float:
    """The share of pixels that are not white."""
    rgb = img[..., :3].astype(float)
    if rgb.max() > 1:
        rgb = rgb / 255
    return float((rgb.min(axis=-1) < 0.9).mean())


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A study whose label column, its case level, another column and a gene name are attacks."""
    tmp = tmp_path_factory.mktemp("hostile")
    ft = make_cohort(30, 10, 12, planted={0: 2.0}, within_subject=(), seed=5)
    ft.obs[XSS_SCRIPT] = np.where(ft.obs["diagnosis"] == "case", XSS_IMG, "control")
    ft.obs["site " + XSS_IMG] = ft.obs["site"].astype(str)
    ft.obs["gene"] = np.where(np.arange(ft.n_obs) % 3 == 0, XSS_SCRIPT, "CD14")
    ft.obs = ft.obs.drop(columns=["diagnosis"])
    ft.write_h5ad(tmp / "features.h5ad")
    bv.associate(str(tmp / "features.h5ad"), [{"column": XSS_SCRIPT, "kind": "binary", "case": XSS_IMG}],
                 n_permutations=0, n_boot=0, n_stability=0, heldout=None, probes=False, out=str(tmp / "findings"),
                 progress=False)
    bv.interpret(str(tmp / "findings"), top=2, gene_sets=None, progress=False)
    rep = bv.report(str(tmp / "findings"), title="Study " + XSS_SCRIPT, lab=XSS_IMG, progress=False)
    return {"tmp": tmp, "rep": rep, "ids": set(ft.obs["subject_id"].astype(str))}


def test_the_hostile_report_is_complete_self_contained_and_clean(hostile):
    rep = hostile["rep"]
    assert rep.n_candidates >= 1
    for page in (rep.html, rep.atlas):
        html = page.read_text()
        assert RUO in html
        refs = references(html)
        assert set(refs["kind"]) <= {"inline", "anchor"}, refs
    assert rep.pdf.stat().st_size > 0 and list((rep.path / "data").glob("*.tsv"))
    assert find_identifiers(rep.path, hostile["ids"]).empty  # the PDF's text included


@needs_chromium
@pytest.mark.parametrize("page", ["report", "atlas"])
def test_no_script_runs_and_the_text_is_shown_literally(hostile, page, tmp_path):
    path = getattr(hostile["rep"], "html" if page == "report" else "atlas")
    dom = _dom(path, tmp_path)
    root = dict(next(a for t, a in dom.elements if t == "html"))
    assert "data-xss" not in root, f"a payload ran in the {page}: {root}"
    assert not [a for t, a in dom.elements if any(k.startswith("on") for k in a)]  # no event handler anywhere
    assert not [a for t, a in dom.elements if t == "img" and a.get("src") == "x"]  # no injected image
    cells = "".join(dom.cells)
    assert XSS_SCRIPT in cells, f"the label name is not shown literally in the {page}'s tables"
    scripts = [a for t, a in dom.elements if t == "script"]
    if page == "report":
        assert scripts == []  # the report runs no script of its own either
    else:  # the atlas: its own data block and its own code, nothing injected
        assert len(scripts) <= 3 and all(a.get("type") in (None, "application/json") for a in scripts)


@needs_chromium
def test_the_atlas_search_opens_from_the_link(hostile, tmp_path):
    dom = _dom(hostile["rep"].atlas, tmp_path, "#q=f0")
    text = "".join(dom.text)
    assert "f0" in text
    rows = [a for t, a in dom.elements if t == "tr"]
    assert 1 <= len(rows) <= 1 + 12 * 2  # the header and the matching rows (and their detail rows) only


@needs_chromium
def test_screenshots_show_the_pages(hostile, tmp_path):
    for page, name in ((hostile["rep"].html, "report"), (hostile["rep"].atlas, "atlas")):
        img = _screenshot(page, name, tmp_path)
        assert img.shape[0] >= 2000 and _ink(img) > 0.02, f"{name} renders blank"
        top = img[:40]  # the banner: a dark red band across the top of the report
        if name == "report":
            assert (top[..., 0] > top[..., 2] + 0.2).mean() > 0.5


@pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm (poppler-utils) is not installed")
def test_the_pdf_pages_render_and_are_not_blank(hostile, tmp_path):
    import matplotlib.image as mpimg
    import pypdf

    pdf = hostile["rep"].pdf
    n = len(pypdf.PdfReader(str(pdf)).pages)
    subprocess.run([PDFTOPPM, "-r", "50", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == n >= 2 + hostile["rep"].n_candidates  # front matter and a page per candidate
    inks = [_ink(mpimg.imread(p)) for p in pages]
    assert min(inks) > 0.005, inks
    SHOTS.mkdir(exist_ok=True)
    shutil.copy(pages[0], SHOTS / "report_pdf_page1.png")
    shutil.copy(pages[min(2, n - 1)], SHOTS / "report_pdf_page3.png")

