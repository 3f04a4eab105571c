"""De-identification of what a report shows: subject identifiers replaced by random
pseudonyms, dates reduced to the year, ages over 89 shown as "90+", free text and columns
marked identifying left out, and a check that no original identifier is left in any file.

Pseudonyms are drawn at random (``secrets``), not derived from the identifier: a hash of a
medical record number can be reversed by hashing every possible number. The key that maps
pseudonyms back is written only when asked, and never inside the report folder.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import (
    is_datetime64_any_dtype,
    is_numeric_dtype,
    is_object_dtype,
    is_string_dtype,
)

from ..errors import InputError

__all__ = ["Pseudonyms", "deidentify", "scrub", "find_identifiers", "AGE_CAP"]

AGE_CAP = 89  # HIPAA Safe Harbor: ages over 89 are aggregated into one "90 or older"
_TEXT_UNIQUE_SHARE = 0.5  # a text column whose values are mostly distinct and long is free text
_TEXT_MIN_LENGTH = 20
_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]*")
_SCANNED = (".html", ".htm", ".tsv", ".csv", ".json", ".svg", ".txt", ".md", ".xml")


@dataclass
class Pseudonyms:
    """Random pseudonyms (``S-7K2Q9``) for subject identifiers, one per distinct identifier.

    ``seed`` makes the draw reproducible (tests); the default draws from the operating
    system's randomness, so nothing about an identifier can be recovered from its pseudonym.
    """

    prefix: str = "S-"
    seed: int | None = None
    mapping: dict[str, str] = field(default_factory=dict)

    _ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read aloud or retyped

    def _draw(self, rng) -> str:
        idx = rng.integers(0, len(self._ALPHABET), 6) if rng is not None else [
            secrets.randbelow(len(self._ALPHABET)) for _ in range(6)]
        return self.prefix + "".join(self._ALPHABET[i] for i in idx)

    def assign(self, identifiers: Iterable) -> dict[str, str]:
        """Pseudonyms for ``identifiers`` (new ones drawn, known ones kept); the mapping."""
        rng = np.random.default_rng(self.seed) if self.seed is not None else None
        used = set(self.mapping.values())
        for ident in pd.unique(pd.Series([str(i) for i in identifiers], dtype=object)):
            if ident in self.mapping or ident in used:  # known, or already a pseudonym (tables pass twice)
                continue
            p = self._draw(rng)
            while p in used:
                p = self._draw(rng)
            self.mapping[ident] = p
            used.add(p)
        return self.mapping

    def __call__(self, values) -> pd.Series:
        """``values`` with every identifier replaced by its pseudonym."""
        s = pd.Series(values, dtype=object).astype(str)
        self.assign(s)
        return s.map(lambda v: self.mapping.get(v, v))

    def write_key(self, path, report_dir=None) -> Path:
        """The re-identification key (pseudonym → identifier) as TSV at ``path``, which may
        not lie inside ``report_dir`` (the key must never travel with the report)."""
        path = Path(path).resolve()
        if report_dir is not None:
            report = Path(report_dir).resolve()
            if path == report or report in path.parents:
                raise InputError(f"key path {path} lies inside the report folder {report}; write the "
                                 "re-identification key somewhere the report is not sent")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = pd.DataFrame({"pseudonym": list(self.mapping.values()),
                            "subject_id": list(self.mapping.keys())})
        key.to_csv(path, sep="\t", index=False)
        return path


def _is_date(s: pd.Series, name: str) -> bool:
    if is_datetime64_any_dtype(s):
        return True
    if not (is_object_dtype(s) or is_string_dtype(s)) or not any(
            w in name.lower() for w in ("date", "time_of", "dob", "birth", "visit", "scan_day")):
        return False
    parsed = pd.to_datetime(s.dropna().astype(str), errors="coerce", format="mixed")
    return len(parsed) > 0 and parsed.notna().mean() > 0.9


def _is_age(s: pd.Series, name: str) -> bool:
    n = name.lower()
    return is_numeric_dtype(s) and (n == "age" or n.startswith("age_") or n.endswith("_age")
                                    or n.startswith("age at"))


def _is_free_text(s: pd.Series) -> bool:
    if not (is_object_dtype(s) or is_string_dtype(s)):
        return False
    v = s.dropna().astype(str)
    if len(v) < 2:
        return False
    return v.nunique() / len(v) >= _TEXT_UNIQUE_SHARE and v.str.len().median() >= _TEXT_MIN_LENGTH


def deidentify(table: pd.DataFrame, pseudonyms: Pseudonyms, *, subject_key: str = "subject_id",
               identifying: Iterable[str] = (), keep_text: Iterable[str] = ()) -> tuple[pd.DataFrame, dict]:
    """A copy of a per-subject (or per-row) table that a report may show.

    Parameters
    ----------
    table
        The table; ``subject_key`` is a column or the index name.
    pseudonyms
        Replaces the subject identifiers (and any other column whose values are subject
        identifiers, e.g. ``sample_id`` equal to the subject).
    identifying
        Columns marked identifying (names, record numbers, postcodes): left out.
    keep_text
        Free-text columns to keep (left out otherwise: notes carry names and places).

    Returns
    -------
    table, record
        The shown table, and what was done to which column (``{"pseudonymised": [...],
        "dropped_identifying": [...], "dropped_free_text": [...], "dates_to_year": [...],
        "ages_capped": [...]}``), for the report's methods section.
    """
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"table: expected a pandas DataFrame, got {type(table).__name__}")
    t = table.copy()
    if subject_key not in t.columns:
        if t.index.name == subject_key:
            t = t.reset_index()
        else:
            raise InputError(f"subject_key={subject_key!r} is neither a column nor the index of the "
                             f"table (columns: {list(map(str, t.columns))[:20]})")
    identifying, keep_text = [str(c) for c in identifying], {str(c) for c in keep_text}
    missing = [c for c in identifying if c not in t.columns]
    if missing:
        raise InputError(f"identifying columns {missing} are not in the table")
    record = {k: [] for k in ("pseudonymised", "dropped_identifying", "dropped_free_text",
                              "dates_to_year", "ages_capped")}
    t = t.drop(columns=identifying)
    record["dropped_identifying"] = identifying
    ids = set(t[subject_key].astype(str))
    for c in list(t.columns):
        s = t[c]
        name = str(c)
        if c == subject_key or ((is_object_dtype(s) or is_string_dtype(s))
                                and s.dropna().astype(str).isin(ids).all() and s.notna().any()):
            t[c] = pseudonyms(s).where(s.notna(), None)
            record["pseudonymised"].append(name)
        elif _is_date(s, name):
            years = pd.to_datetime(s, errors="coerce", format="mixed").dt.year
            t[c] = years.astype("Int64")
            record["dates_to_year"].append(name)
        elif _is_age(s, name):
            v = pd.to_numeric(s, errors="coerce")
            if (v > AGE_CAP).any():
                t[c] = [f"{AGE_CAP + 1}+" if x > AGE_CAP else (None if pd.isna(x) else x) for x in v]
                record["ages_capped"].append(name)
        elif name not in keep_text and _is_free_text(s):
            t = t.drop(columns=c)
            record["dropped_free_text"].append(name)
    return t, record


def _id_pattern(values):
    """Identifiers as whole tokens: not inside a longer word or number. ``_``, ``-`` and ``:``
    separate tokens (``S01_c3`` is cell 3 of subject ``S01``); a ``.`` followed by a digit does
    not (``12`` is not found in ``0.12``)."""
    vals = sorted({str(v) for v in values}, key=len, reverse=True)
    return re.compile(r"(?<![A-Za-z0-9.])(" + "|".join(map(re.escape, vals)) + r")(?![A-Za-z0-9]|\.\d)")


def scrub(table: pd.DataFrame, pseudonyms: Pseudonyms, identifiers: Iterable, *,
          min_length: int = 3) -> pd.DataFrame:
    """A copy of ``table`` in which every identifier found inside a text cell (a cell id that
    embeds its subject, "S027: 0.20, S016: 0.12") is replaced by its pseudonym. Identifiers
    shorter than ``min_length`` are replaced only where they are a whole cell (a bare ``7``
    inside other text cannot be told from a number)."""
    ids = {str(v) for v in identifiers if v is not None and str(v).strip()}
    if not ids:
        return table.copy()
    pseudonyms.assign(sorted(ids))
    mapping = pseudonyms.mapping
    long_ids = [v for v in ids if len(v) >= min_length]
    pattern = _id_pattern(long_ids) if long_ids else None
    t = table.copy()
    for c in t.columns:
        s = t[c]
        if not (is_object_dtype(s) or is_string_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype)):
            continue
        text = s.astype(object)
        whole = text.map(lambda v: isinstance(v, str) and v in ids)
        out = text.where(~whole, text.map(lambda v: mapping.get(v, v) if isinstance(v, str) else v))
        if pattern is not None:
            out = out.map(lambda v: pattern.sub(lambda m: mapping[m.group(1)], v) if isinstance(v, str) else v)
        t[c] = out
    return t


def find_identifiers(folder, values: Iterable, *, min_length: int = 3) -> pd.DataFrame:
    """Every occurrence of any of ``values`` (original identifiers, values of identifying
    columns) in the text files of ``folder`` and in the text of its PDFs.

    A value shorter than ``min_length`` characters is not searched for (it would match by
    chance: "12", "A"); those are listed in the result's ``attrs["not_searched"]``. Matches
    are whole tokens (not inside a longer word or number; ``_`` and ``-`` separate tokens, so
    ``S01`` is found in ``S01_c3``). Returns ``file, value, count``;
    empty when the folder is clean.
    """

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder={folder}: not a folder")
    vals = sorted({str(v) for v in values if v is not None and str(v).strip()}, key=len, reverse=True)
    short = [v for v in vals if len(v) < min_length]
    vals = [v for v in vals if len(v) >= min_length]
    rows = []
    if vals:
        pattern = _id_pattern(vals)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            texts = _text_of(path)
            if texts is None:
                continue
            # a PDF's text is read several ways (one may miss what another finds): the most
            # occurrences any reading gives, not their sum
            counts = pd.concat([pd.Series(pattern.findall(t), dtype=object).value_counts() for t in texts],
                               axis=1).fillna(0).max(axis=1)
            for value, count in counts.items():
                rows.append({"file": str(path.relative_to(folder)), "value": value, "count": int(count)})
    out = pd.DataFrame(rows, columns=["file", "value", "count"])
    out.attrs["not_searched"] = short
    return out


def _text_of(path: Path) -> list[str] | None:
    suffix = path.suffix.lower()
    if suffix in _SCANNED:
        # an inlined image's base64 is not text: "…/S319/…" in it is chance, not an identifier
        return [_DATA_URI.sub("data:", path.read_text(errors="replace"))]
    if suffix == ".pdf":
        return _pdf_texts(path)
    if suffix == ".parquet":
        return [pd.read_parquet(path).to_csv(sep="\t")]
    return None


def _pdf_texts(path: Path) -> list[str]:
    """The PDF's text, read by pypdf (content streams, embedded fonts' ToUnicode tables, the
    metadata) and by pdftotext (poppler-utils) when installed. The file's raw bytes are not
    searched: its compressed images and fonts hold every short string somewhere by chance."""
    import shutil
    import subprocess

    import pypdf

    try:
        reader = pypdf.PdfReader(str(path))
        texts = ["\n".join((page.extract_text() or "") for page in reader.pages)
                 + "\n" + " ".join(str(v) for v in (reader.metadata or {}).values())]
    except Exception as err:  # an unreadable PDF is reported, not taken as clean
        raise InputError(f"{path}: could not read the PDF's text to check it ({err})") from err
    tool = shutil.which("pdftotext")
    if tool is not None:
        done = subprocess.run([tool, "-q", str(path), "-"], capture_output=True, text=True, check=False)
        texts.append(done.stdout)
    return texts
