"""The report's ``data/`` folder: every table the report shows, as TSV and as JSON (records),
so every number can be checked without bioviz (as MultiQC's data folder does). Subject
identifiers are replaced by the report's pseudonyms before anything is written."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..interpret.examples import safe_name
from .deidentify import Pseudonyms

__all__ = ["write_data"]

SUBJECT_COLUMNS = ("subject_id", "sample_id")


def _jsonable(v):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, (pd.Timestamp,)):
        return v.isoformat()
    return v


def write_data(tables: Mapping[str, pd.DataFrame], folder, pseudonyms: Pseudonyms, *,
               subject_columns: Iterable[str] = SUBJECT_COLUMNS) -> pd.DataFrame:
    """Write each table as ``<name>.tsv`` and ``<name>.json`` in ``folder``.

    Parameters
    ----------
    tables
        ``{name: DataFrame}``; names become file names (characters other than letters,
        digits, ``._-`` become ``_``). A table's index is written as columns when it is named.
    folder
        Created if needed.
    pseudonyms
        The report's pseudonyms: the values of ``subject_columns`` are replaced by them (the
        same subject gets the same pseudonym in every table).
    subject_columns
        Columns (or index names) holding subject identifiers.

    Returns
    -------
    pandas.DataFrame
        One row per table: ``table, rows, columns, tsv, json`` (file names), the folder's index.
    """
    if not isinstance(tables, Mapping):
        raise InputError(f"tables: expected a dict of name → DataFrame, got {type(tables).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    subject_columns = set(subject_columns)
    names = {name: safe_name(str(name)) for name in tables}
    if len(set(names.values())) < len(names):
        raise InputError("tables: two names map to the same file name once characters other than "
                         "letters, digits, '._-' become '_'; rename them")
    rows = []
    for name, table in tables.items():
        if not isinstance(table, pd.DataFrame):
            raise InputError(f"tables[{name!r}]: expected a pandas DataFrame, got {type(table).__name__}")
        t = table.reset_index() if any(n is not None for n in table.index.names) else table.reset_index(drop=True)
        t = t.copy()
        for c in t.columns:
            if str(c) in subject_columns:
                t[c] = pseudonyms(t[c]).where(t[c].notna(), None)
        t.columns = [str(c) for c in t.columns]
        stem = names[name]
        t.to_csv(folder / f"{stem}.tsv", sep="\t", index=False, na_rep="NA")
        records = [{k: _jsonable(v) for k, v in r.items()} for r in t.to_dict(orient="records")]
        (folder / f"{stem}.json").write_text(json.dumps(records, indent=1, default=str))
        rows.append({"table": str(name), "rows": len(t), "columns": t.shape[1],
                     "tsv": f"{stem}.tsv", "json": f"{stem}.json"})
    index = pd.DataFrame(rows, columns=["table", "rows", "columns", "tsv", "json"])
    index.to_csv(folder / "index.tsv", sep="\t", index=False)
    return index
