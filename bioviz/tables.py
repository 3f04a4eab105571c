"""Reading tables from disk: manifests, metadata and clinical tables, by file extension.

Modality-neutral: the volume adapter reads its manifests with it, the generic adapter's
datasets their metadata, and the statistics stage clinical tables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import InputError

#: suffix (lower case) → how the file is read
READERS = {".csv": ",", ".csv.gz": ",", ".tsv": "\t", ".tsv.gz": "\t", ".tab": "\t", ".txt": "\t",
           ".parquet": None, ".pq": None}
#: identifier columns read as text, so ``"007"`` stays ``"007"`` and joins with store obs
ID_COLUMNS = ("subject_id", "sample_id")


class TableError(InputError):
    """A table that cannot be read (names the file and what was expected)."""


def read_table(path, *, what: str = "table") -> pd.DataFrame:
    """A CSV (``.csv``, ``.csv.gz``), tab-separated (``.tsv``, ``.tsv.gz``, ``.tab``, ``.txt``)
    or parquet (``.parquet``, ``.pq``) table, chosen by extension (case-insensitive).

    Parameters
    ----------
    path : str or Path
        The table's file.
    what : str
        What the table is, for messages (``"manifest"``, ``"metadata table"``).

    Returns
    -------
    pandas.DataFrame
        The table; in text files the ``subject_id`` and ``sample_id`` columns are read as text.

    Raises
    ------
    FileNotFoundError
        ``path`` is not a file.
    TableError
        An unknown extension, or a file that does not parse (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    name = path.name.lower()
    suffix = next((s for s in sorted(READERS, key=len, reverse=True) if name.endswith(s)), None)
    if suffix is None:
        found = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
        raise TableError(f"{path}: unsupported {what} type {found!r}; expected "
                         f"{', '.join(READERS)}")
    try:
        if READERS[suffix] is None:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=READERS[suffix], dtype=dict.fromkeys(ID_COLUMNS, str))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as e:
        raise TableError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None
