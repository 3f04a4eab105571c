"""What a report says, independent of how it is drawn: the HTML template and the PDF writer
both render one :class:`Report`, so the two formats cannot drift apart.

Every string here is plain text (never markup): the renderers escape it. Every table is a
display-ready DataFrame of strings; its full-precision numbers go to ``data/`` under the
name the table carries.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pandas as pd

__all__ = ["RUO", "Figure", "Table", "CandidatePage", "Report"]

RUO = "For Research Use Only. Not for use in diagnostic procedures."


@dataclass
class Figure:
    """A figure rendered once as PNG (inlined in the HTML, placed in the PDF)."""

    title: str
    caption: str
    png: bytes
    #: width at print size, inches (the PDF's width; the HTML's max width at 96 px/in)
    width_in: float = 6.0

    @property
    def wide(self) -> bool:
        """Set across the page's width (a montage of slices), never two to a row."""
        return self.width_in >= 6.5

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Table:
    """A table as shown: strings only, already formatted and de-identified."""

    title: str
    frame: pd.DataFrame
    note: str = ""
    #: the data/ file stem with this table's full-precision numbers (None: not in data/)
    data: str | None = None

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    @property
    def rows(self) -> list[list[str]]:
        return [["" if pd.isna(v) else str(v) for v in r] for r in self.frame.itertuples(index=False)]


@dataclass
class CandidatePage:
    """One candidate biomarker: what it is, how strong the evidence is, and the caveats."""

    rank: int
    feature: str
    label: str
    anchor: str  # an id safe for HTML and PDF bookmarks
    headline: str  # the interpretation's one-line description
    facts: list[tuple[str, str]] = field(default_factory=list)  # (what, value) in plain words
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything the report shows, in reading order (REMARK's structure)."""

    title: str
    generated: str  # date (ISO), the day the report was written
    version: str  # bioviz version
    objective: str
    intended_use: str
    summary: list[str]  # the key messages, first thing a reader sees
    cohort: list[tuple[str, str]]  # (what, value)
    cohort_tables: list[Table]
    model: Table  # model, layer, dictionary: names, checksums, dates
    methods: list[tuple[str, str]]  # (heading, plain-words paragraph)
    candidates: Table  # the ranked candidate table (may have no rows)
    pages: list[CandidatePage]
    probes: Table | None
    probes_text: str
    limitations: list[str]
    validation: list[str]  # what clinical validation would still need
    deidentification: list[str]  # what was done to identifiers
    skipped: list[tuple[str, str]] = field(default_factory=list)  # evidence not gathered, and why
    banner: str = RUO
    lab: str = ""  # the lab's name (templates may show it)
    logo: Figure | None = None  # the lab's logo, inlined
    data_files: Table | None = None  # the data/ folder's index

    @property
    def empty(self) -> bool:
        return not self.pages
