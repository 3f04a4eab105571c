"""The clinician report as a PDF, drawn with reportlab (no browser): the same :class:`Report`
and the same reading order as the HTML, the research-use banner on every page, "page N of M",
and bookmarks for each section and each candidate.

Every string in a Report is plain text, but reportlab's Paragraph parses a small markup
language; so every string passes through :func:`_text` (XML escaping) before it reaches a
Paragraph, and a label such as ``<script>`` is printed as written, never interpreted.
"""

from __future__ import annotations

import io
import os
import re
import struct
from pathlib import Path
from xml.sax.saxutils import escape

import matplotlib
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import inch, mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    CondPageBreak,
    Frame,
    Image,
    KeepTogether,
    PageBreak,
    PageTemplate,
    Paragraph,
    Spacer,
    TableStyle,
)
from reportlab.platypus import Table as RLTable  # not content.Table, the Report's own

from ..errors import InputError
from .content import CandidatePage, Figure, Report, Table

__all__ = ["write_pdf"]

SANS, BOLD, OBLIQUE, MONO = "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSansMono"
BANNER_SIZE = 8.5
MARGIN = 18 * mm
CELL_PAD = 3  # points of padding each side of a table cell
LONGEST_WORD = 1.8 * inch  # a longer unbroken word (a checksum, a path) wraps inside its cell
MEASURE_ROWS = 300  # column widths come from the first rows; a 2k-row table need not be measured whole
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CHECKSUM = re.compile(r"[0-9a-fA-F]{16,}")
_NOTHING = "(none)"
FOOTER_SIZE = 7.5
FOOTER_COLOR = colors.HexColor("#555555")
_TOTAL = "bvPageCount"
# a heading starts a new page when less than this is left below it: never a heading alone at the
# foot of a page, yet a long table flows on from where it starts (keepWithNext would move the whole
# table to the next page, leaving a blank half page)
KEEP_BELOW = 1.5 * inch


def _fonts() -> None:
    """Register matplotlib's bundled DejaVu fonts once: Helvetica (PDF's built-in font) has no
    ≥, ×, −, µ or Greek and would print boxes."""
    if SANS in pdfmetrics.getRegisteredFontNames():
        return
    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    for name in (SANS, BOLD, OBLIQUE, MONO):
        pdfmetrics.registerFont(TTFont(name, os.path.join(folder, name + ".ttf")))
    # so that <b> inside a Paragraph picks the bold DejaVu, not Helvetica-Bold
    pdfmetrics.registerFontFamily(SANS, normal=SANS, bold=BOLD, italic=OBLIQUE, boldItalic=BOLD)


def _styles() -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("body", fontName=SANS, fontSize=9.5, leading=12.5, spaceAfter=4,
                          bulletFontName=SANS)
    small = ParagraphStyle("small", base, fontSize=8, leading=10, textColor=colors.HexColor("#444444"))
    return {
        "title": ParagraphStyle("title", base, fontName=BOLD, fontSize=18, leading=22, spaceAfter=6),
        "h1": ParagraphStyle("h1", base, fontName=BOLD, fontSize=14, leading=17, spaceBefore=10,
                             spaceAfter=6),
        "h2": ParagraphStyle("h2", base, fontName=BOLD, fontSize=10.5, leading=13, spaceBefore=8,
                             spaceAfter=3),
        "body": base,
        "meta": ParagraphStyle("meta", base, textColor=colors.HexColor("#444444")),
        "bullet": ParagraphStyle("bullet", base, leftIndent=12, bulletIndent=2, spaceAfter=2),
        "small": small,
        "caption": ParagraphStyle("caption", small, fontName=OBLIQUE, spaceBefore=2, spaceAfter=8),
        "banner": ParagraphStyle("banner", base, fontName=BOLD, fontSize=11, leading=14, alignment=1,
                                 textColor=colors.HexColor("#7a1b00")),
        # table cells: small enough for a dozen columns, large enough to read on paper
        "cell": ParagraphStyle("cell", base, fontSize=8, leading=9.6, spaceAfter=0),
        "mono": ParagraphStyle("mono", base, fontName=MONO, fontSize=7.5, leading=9.6, spaceAfter=0),
        "head": ParagraphStyle("head", base, fontName=BOLD, fontSize=8, leading=9.6, spaceAfter=0),
        "fact": ParagraphStyle("fact", base, fontSize=9, leading=11, spaceAfter=0),
        "factkey": ParagraphStyle("factkey", base, fontName=BOLD, fontSize=9, leading=11, spaceAfter=0),
    }


def _text(value) -> str:
    """Plain text → Paragraph markup: escaped (``<``, ``>``, ``&``), line breaks kept, control
    characters (which the PDF cannot show) dropped."""
    s = _CONTROL.sub("", "" if value is None else str(value))
    return escape(s).replace("\r\n", "\n").replace("\n", "<br/>")


class _Heading(Paragraph):
    """A heading that is also a bookmark in the PDF's outline (its own page position)."""

    def __init__(self, text: str, style: ParagraphStyle, key: str, outline: str, level: int, running: str):
        super().__init__(_text(text), style)
        self._key, self._outline, self._level, self._running = key, outline, level, running

    def draw(self):
        super().draw()
        # the footer (drawn as the page ends) names the part this page belongs to, so a page that
        # continues a candidate's figures says whose they are
        self.canv.bv_running = self._running
        self.canv.bookmarkHorizontal(self._key, 0, self.height + self.style.fontSize)
        # the outline title is a PDF string, not markup: the plain text goes there as is
        self.canv.addOutlineEntry(_CONTROL.sub("", self._outline), self._key, level=self._level, closed=False)


class _Canvas(Canvas):
    """Writes the page count into the form each footer's "page N of" points at, once it is known.

    (Deferring whole pages until the count is known, the usual recipe, would point every
    bookmark at page 1: a bookmark records the page being drawn when it is set.)"""

    def save(self):
        self.beginForm(_TOTAL)
        self.setFont(SANS, FOOTER_SIZE)
        self.setFillColor(FOOTER_COLOR)
        x, y = _total_at(self._pagesize[0])
        self.drawString(x, y, str(self.getPageNumber() - 1))  # after the last showPage: pages + 1
        self.endForm()
        super().save()


def _total_at(page_width: float) -> tuple[float, float]:
    """Where the page count goes: after "page N of " in a slot wide enough for 9999 of 9999."""
    slot = page_width - MARGIN - pdfmetrics.stringWidth("page 9999 of 9999", SANS, FOOTER_SIZE)
    return slot + pdfmetrics.stringWidth("page 9999 of ", SANS, FOOTER_SIZE), MARGIN - 10


def _footer(canv: Canvas, left: str, width: float, page_width: float):
    """Left: the candidate this page belongs to, else the report's title and date; right: page N of M."""
    left = _CONTROL.sub("", getattr(canv, "bv_running", "") or left)
    lines = simpleSplit(left, SANS, FOOTER_SIZE, width) if left.strip() else [""]
    left = lines[0] + ("…" if len(lines) > 1 else "")
    canv.saveState()
    canv.setFont(SANS, FOOTER_SIZE)
    canv.setFillColor(FOOTER_COLOR)
    canv.drawString(MARGIN, MARGIN - 10, left)
    x, y = _total_at(page_width)
    canv.drawRightString(x, y, f"page {canv.getPageNumber()} of ")
    canv.doForm(_TOTAL)
    canv.restoreState()


class _Writer:
    def __init__(self, report: Report, width: float, height: float):
        self.report = report
        self.width, self.height = width, height  # the frame's, which has no padding
        self.s = _styles()
        self.story: list = []
        self._keys = 0

    # -- building blocks ------------------------------------------------------------------------------
    def heading(self, text: str, style="h1", *, outline: str | None = None, level: int = 0, running: str = ""):
        self.story.append(CondPageBreak(KEEP_BELOW))
        self._keys += 1
        self.story.append(_Heading(text, self.s[style], f"b{self._keys}", outline or text, level, running))

    def subheading(self, text: str):
        if not isinstance(self.story[-1], _Heading):  # a page break here would orphan that heading
            self.story.append(CondPageBreak(KEEP_BELOW))
        self.para(text, "h2")

    def para(self, text: str, style="body"):
        self.story.append(Paragraph(_text(text), self.s[style]))

    def bullets(self, items: list[str]):
        if not items:
            self.para(_NOTHING)
        for item in items:
            self.story.append(Paragraph(_text(item), self.s["bullet"], bulletText="•"))

    def _style(self, value: str, key: bool, facts: bool) -> ParagraphStyle:
        if key:
            return self.s["factkey"]
        # a checksum reads (and is compared) more easily in a monospaced font
        if _CHECKSUM.fullmatch(value.strip()):
            return self.s["mono"]
        return self.s["fact" if facts else "cell"]

    def _widths(self, cells: list[list[tuple[str, ParagraphStyle]]]) -> list[float]:
        """Column widths as a browser's auto layout: each column gets at least its longest word
        (capped), the rest of the frame goes to columns in proportion to how much text they hold."""
        natural, least = [], []
        for j in range(len(cells[0])):
            lines = [(line, st) for row in cells[:MEASURE_ROWS] for text, st in [row[j]]
                     for line in text.splitlines() or [""]]

            def width(t, st):
                return pdfmetrics.stringWidth(t, st.fontName, st.fontSize)

            natural.append(max(width(t, st) for t, st in lines) + 2 * CELL_PAD)
            words = [(w, st) for t, st in lines for w in t.split()] or [("", self.s["cell"])]
            least.append(min(max(width(w, st) for w, st in words), LONGEST_WORD) + 2 * CELL_PAD)
        if sum(natural) <= self.width:
            return natural
        if sum(least) >= self.width:
            # too many columns for whole words: the columns with the longest words give way (their
            # words wrap), so the short words of the other columns stay whole
            cap = _water_level(least, self.width)
            return [min(m, cap) for m in least]
        spare = self.width - sum(least)
        flex = [n - m for n, m in zip(natural, least)]
        return [m + spare * f / sum(flex) for m, f in zip(least, flex)]

    def grid(self, columns: list[str] | None, rows: list[list[str]]):
        """A table that wraps its cells, fits the frame and repeats its header on each page.
        Without ``columns`` it is a list of facts: (what, value) rows, the "what" in bold."""
        if columns is not None and not columns:  # a DataFrame without columns has nothing to draw
            self.para(_NOTHING)
            return
        facts = columns is None
        n = len(columns) if not facts else max((len(r) for r in rows), default=1)
        body = rows or [[_NOTHING] + [""] * (n - 1)]
        cells = ([[(c, self.s["head"]) for c in columns]] if not facts else []) + [
            [(v, self._style(v, facts and j == 0 and bool(rows), facts)) for j, v in enumerate(r)] for r in body]
        data = [[Paragraph(_text(text), st) for text, st in row] for row in cells]
        # splitInRow: a cell taller than a page (a long note) continues on the next page instead
        # of stopping the whole report with a LayoutError
        table = RLTable(data, colWidths=self._widths(cells), repeatRows=0 if facts else 1, splitInRow=1,
                        hAlign="LEFT")
        style = [("VALIGN", (0, 0), (-1, -1), "TOP"),
                 ("LEFTPADDING", (0, 0), (-1, -1), CELL_PAD), ("RIGHTPADDING", (0, 0), (-1, -1), CELL_PAD),
                 ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                 ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#b0b0b0"))]
        if not facts:
            style.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")))
        if not rows:  # "(none)" across the whole row
            style.append(("SPAN", (0, len(data) - 1), (-1, len(data) - 1)))
        table.setStyle(TableStyle(style))
        self.story.append(table)
        self.story.append(Spacer(1, 6))

    def table(self, t: Table):
        if t.title:
            self.subheading(t.title)
        self.grid(t.columns, t.rows)
        if t.note:
            self.para(t.note, "small")
        if t.data:
            self.para(f"Full-precision values: data/ folder, table “{t.data}”.", "small")

    def figures(self, figs: list[Figure]):
        """Figures two to a row (half the frame each, as a printed paper sets them): a
        candidate's distribution, genes and enrichment fit one page instead of three."""
        half = (self.width - 12) / 2
        rows, row = [], []
        for f in figs:  # a wide figure (a montage of slices) takes a row of its own
            if f.wide:
                rows += [row] if row else []
                rows.append([f])
                row = []
            else:
                row.append(f)
                if len(row) == 2:
                    rows.append(row)
                    row = []
        rows += [row] if row else []
        for pair in rows:
            if len(pair) == 1 and pair[0].wide:
                self.figure(pair[0])
                continue
            if len(pair) == 1:
                self.figure(pair[0], max_width=min(pair[0].width_in * inch, half * 1.25))
                continue
            cells = [self._figure_parts(f, half) for f in pair]
            grid = RLTable([cells], colWidths=[half + 6, half + 6], hAlign="LEFT")
            grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                                      ("RIGHTPADDING", (0, 0), (-1, -1), 6)]))
            self.story.append(grid)

    def _figure_parts(self, f: Figure, max_width: float, bare: bool = False) -> list:
        w_px, h_px = _png_size(f)
        width = min(f.width_in * inch, max_width)
        height = width * h_px / w_px
        room = self.height - 1.2 * inch  # title and caption stay on the page with it
        if height > room:
            width, height = width * room / height, room
        parts = []
        if f.title and not bare:
            parts.append(Paragraph(_text(f.title), self.s["h2"]))
        image = Image(io.BytesIO(f.png), width=width, height=height)
        image.hAlign = "LEFT"
        parts.append(image)
        parts.append(Paragraph(_text(f.caption), self.s["caption"]) if f.caption and not bare else Spacer(1, 8))
        return parts

    def figure(self, f: Figure, max_width: float | None = None, *, bare: bool = False):
        """The PNG at its print width (or the frame's, when narrower), keeping its aspect ratio,
        with its title and caption kept on the same page."""
        self.story.append(KeepTogether(self._figure_parts(f, max_width or self.width, bare)))

    # -- the report, in the HTML's reading order ------------------------------------------------------
    def build(self) -> list:
        r = self.report
        if r.logo is not None:
            self.figure(r.logo, max_width=min(2 * inch, self.width), bare=True)  # a logo, not a figure
        self.heading(r.title, "title", outline="Title page")
        if r.lab:
            self.para(r.lab, "meta")
        self.para(f"Generated {r.generated} · bioviz {r.version}", "meta")
        self.story.append(_banner_box(r.banner, self.s["banner"], self.width))

        self.heading("Summary")
        self.bullets(r.summary)
        self.heading("Objective and intended use")
        self.subheading("Objective")
        self.para(r.objective)
        self.subheading("Intended use")
        self.para(r.intended_use)

        self.heading("Cohort")
        self.grid(None, [[a, b] for a, b in r.cohort])
        for t in r.cohort_tables:
            self.table(t)
        self.heading("Model, layer and dictionary")
        self.table(r.model)
        self.heading("Methods")
        for head, text in r.methods:
            self.subheading(head)
            self.para(text)

        self.heading("Candidate biomarkers")
        if r.empty:
            self.para("No candidate reached the reporting threshold, so this report has no candidate pages.")
        if not r.empty or r.candidates.rows:
            self.table(r.candidates)
        for page in r.pages:
            self.candidate(page, len(r.pages))
        if r.pages:  # the sections after the candidates do not share the last candidate's page
            self.story.append(PageBreak())

        self.heading("Probe comparison")
        if r.probes is not None:
            self.table(r.probes)
        if r.probes_text:
            self.para(r.probes_text)
        self.heading("Limitations")
        self.bullets(r.limitations)
        self.heading("What clinical validation would still need")
        self.bullets(r.validation)
        self.heading("De-identification")
        self.bullets(r.deidentification)
        self.heading("Evidence not gathered")
        self.grid(["Evidence", "Why not"], [[a, b] for a, b in r.skipped])
        if r.data_files is not None:
            self.heading("Data files")
            self.table(r.data_files)
        return self.story

    def candidate(self, p: CandidatePage, total: int):
        self.story.append(PageBreak())
        self.heading(p.headline or f"Candidate {p.rank}", outline=f"{p.rank}. {p.feature} ({p.label})", level=1,
                     running=f"Candidate {p.rank}: {p.feature} ({p.label})")
        self.para(f"Candidate {p.rank} of {total} · feature {p.feature} · label {p.label}", "meta")
        if p.facts:
            self.grid(None, [[a, b] for a, b in p.facts])
        self.figures(p.figures)
        for t in p.tables:
            self.table(t)
        if p.caveats:
            self.subheading("Caveats")
            self.bullets(p.caveats)


def _banner_box(text: str, style: ParagraphStyle, width: float) -> RLTable:
    """The research-use banner, boxed, on page 1 (the page header repeats it on every page)."""
    box = RLTable([[Paragraph(_text(text), style)]], colWidths=[width])
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.2, colors.HexColor("#7a1b00")),
                             ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#fff1e6")),
                             ("TOPPADDING", (0, 0), (-1, -1), 6), ("BOTTOMPADDING", (0, 0), (-1, -1), 6)]))
    box.spaceBefore, box.spaceAfter = 6, 10
    return box


def _water_level(widths: list[float], total: float) -> float:
    """The cap c with sum(min(w, c)) == total (for sum(widths) >= total)."""
    rest, n = total, len(widths)
    for i, w in enumerate(sorted(widths)):
        if w * (n - i) >= rest:
            return rest / (n - i)
        rest -= w
    return max(widths)


def _png_size(f: Figure) -> tuple[int, int]:
    """(width, height) in pixels from the PNG header, or an InputError naming the figure."""
    png = f.png if isinstance(f.png, (bytes, bytearray)) else b""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise InputError(f"figure {f.title!r}: png must be the bytes of a PNG image")
    w, h = struct.unpack(">II", png[16:24])
    if not (w and h):
        raise InputError(f"figure {f.title!r}: the PNG has no pixels ({w}×{h})")
    return w, h


def write_pdf(report: Report, path, *, pagesize=A4) -> Path:
    """Write ``report`` as a PDF at ``path`` and return the path.

    The PDF's metadata holds the title only (no author, user or file path); its dates are
    fixed (reportlab's invariant mode), so the same Report gives the same bytes.
    """
    if not isinstance(report, Report):
        raise InputError(f"report: expected a bioviz.report.content.Report, got {type(report).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"path={path}: its folder does not exist (create it first)")
    _fonts()

    page_w, page_h = pagesize
    banner = simpleSplit(_CONTROL.sub("", report.banner), BOLD, BANNER_SIZE, page_w - 2 * MARGIN)
    top = MARGIN + len(banner) * (BANNER_SIZE + 2) + 8  # the header's banner lines, then a rule

    def header(canv: Canvas, doc):
        if doc.page == 1:
            canv.showOutline()  # a viewer opens with the bookmarks shown
        canv.saveState()
        canv.setFont(BOLD, BANNER_SIZE)
        canv.setFillColor(colors.HexColor("#7a1b00"))
        y = page_h - MARGIN
        for line in banner:
            canv.drawCentredString(page_w / 2, y, line)
            y -= BANNER_SIZE + 2
        canv.setStrokeColor(colors.HexColor("#7a1b00"))
        canv.setLineWidth(0.6)
        canv.line(MARGIN, y + 4, page_w - MARGIN, y + 4)
        canv.restoreState()

    doc = BaseDocTemplate(str(path), pagesize=pagesize, leftMargin=MARGIN, rightMargin=MARGIN,
                          topMargin=top + 6, bottomMargin=MARGIN + 10, title=_CONTROL.sub("", report.title),
                          author="", subject="", creator="", producer="", keywords=[], invariant=1,
                          displayDocTitle=True, lang="en", initialFontName=SANS)
    footer = f"{report.title} · generated {report.generated}"
    # the banner is drawn as a page begins, the footer as it ends: text is extracted (and read
    # aloud) as banner, page, footer
    # no frame padding: text, tables and figures line up with the header's rule
    frame = Frame(doc.leftMargin, doc.bottomMargin, doc.width, doc.height, id="body",
                  leftPadding=0, rightPadding=0, topPadding=0, bottomPadding=0)
    doc.addPageTemplates([PageTemplate("page", [frame], onPage=header,
                                       onPageEnd=lambda canv, doc: _footer(canv, footer, doc.width * 0.7, page_w))])
    story = _Writer(report, doc.width, doc.height).build()
    # plain Flate streams, not ASCII85 on top: a fifth smaller, and a checker that inflates the
    # streams (deidentify's scan of the raw PDF) can read them
    a85, rl_config.useA85 = rl_config.useA85, 0
    try:
        doc.build(story, canvasmaker=_Canvas)
    finally:
        rl_config.useA85 = a85
    return path
