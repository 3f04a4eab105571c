"""A scan cohort: a manifest (CSV/TSV/parquet) with one row per scan.

Columns: ``subject_id``; the image path (``image``: a NIfTI file or a DICOM series folder);
optionally ``sample_id`` (when a subject has several scans), a mask path (``mask``) and any
clinical columns, which travel into every activation row's obs. Relative paths resolve
against the manifest's folder; a path that leaves that folder is refused unless
``allow_outside=True`` (a manifest handed around should not reach into the rest of a disk).

Everything structural (columns, duplicates, paths) is checked here, before any scan is
read, so a cohort never fails halfway for a reason that was visible up front.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bioviz.errors import InputError
from bioviz.tables import TableError, read_table

log = logging.getLogger(__name__)

#: obs columns the volume adapter writes itself; a clinical column may not reuse them
ROW_COLUMNS = ("grid_i", "grid_j", "grid_k", "voxel_i", "voxel_j", "voxel_k",
               "world_x", "world_y", "world_z", "mask_fraction")
ON_MISSING = ("raise", "skip")


class CohortError(InputError):
    """A manifest that cannot describe a cohort (names the file, row or column)."""


@dataclass(frozen=True)
class Scan:
    """One manifest row, with its paths resolved."""

    index: int  # position in the cohort (after skipped rows are dropped)
    row: int  # 1-based data row of the manifest, for messages
    subject_id: str
    sample_id: str
    image: Path
    mask: Path | None


@dataclass
class Cohort:
    """Validated scans plus their clinical table (one row per scan, stable dtypes)."""

    scans: list[Scan]
    clinical: pd.DataFrame  # subject_id, sample_id, clinical columns; index 0..n-1
    source: str
    has_masks: bool
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, i: int) -> Scan:
        return self.scans[i]

    @property
    def clinical_columns(self) -> list[str]:
        return [c for c in self.clinical.columns if c not in ("subject_id", "sample_id")]

    def meta(self, indices) -> pd.DataFrame:
        return self.clinical.iloc[list(indices)].reset_index(drop=True)

    def find(self, sample_id: str) -> Scan:
        for s in self.scans:
            if s.sample_id == str(sample_id):
                return s
        raise KeyError(f"sample_id {sample_id!r} is not in the cohort from {self.source}")

    @classmethod
    def read(cls, manifest, *, root=None, image_col: str = "image", mask_col: str = "mask",
             allow_outside: bool = False, on_missing: str = "raise") -> Cohort:
        """Read and validate a manifest (a path, or a DataFrame with ``root=`` its folder).

        ``on_missing``: ``raise`` (default) stops on a manifest row whose file does not
        exist, listing every such row; ``skip`` drops those rows and logs how many.
        """
        if on_missing not in ON_MISSING:
            raise InputError(f"on_missing={on_missing!r}: expected one of {ON_MISSING}")
        if isinstance(manifest, pd.DataFrame):
            table, source = manifest.copy(), "<DataFrame>"
            base = Path(root) if root is not None else Path.cwd()
            line_offset = None
        else:
            path = Path(manifest)
            table, source = _read_table(path), str(path)
            base = Path(root) if root is not None else path.parent
            line_offset = 2 if path.suffix.lower() in (".csv", ".tsv", ".tab", ".txt") else None
        return _validate(table, source, base, image_col, mask_col, allow_outside, on_missing, line_offset)


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return read_table(path, what="manifest")
    except (FileNotFoundError, TableError) as e:
        raise CohortError(str(e)) from None


def _where(i: int, line_offset: int | None) -> str:
    return f"row {i + 1}" + (f" (line {i + line_offset})" if line_offset else "")


def _validate(table, source, base, image_col, mask_col, allow_outside, on_missing, line_offset):
    if len(table) == 0:
        raise CohortError(f"{source}: the manifest has no rows")
    table.columns = [str(c) for c in table.columns]
    for col in ("subject_id", image_col):
        if col not in table:
            raise CohortError(f"{source}: required column {col!r} is missing (columns: {list(table.columns)})")
    clash = [c for c in table.columns if c in ROW_COLUMNS]
    if clash:
        raise CohortError(f"{source}: columns {clash} clash with the row coordinates the volume "
                          "adapter writes; rename them")
    has_sample = "sample_id" in table
    ids = table["subject_id"]
    blank = ids.isna() | (ids.astype(str).str.strip() == "")
    if blank.any():
        raise CohortError(f"{source}: {_where(int(blank.to_numpy().nonzero()[0][0]), line_offset)} has no subject_id")
    table["subject_id"] = ids.astype(str)
    table["sample_id"] = table["sample_id"].astype(str) if has_sample else table["subject_id"]
    key = "sample_id" if has_sample else "subject_id"
    dup = table[key].duplicated(keep=False)
    if dup.any():
        groups = table[dup].groupby(key, sort=False).groups
        first = next(iter(groups.items()))
        rows = ", ".join(_where(int(r), line_offset) for r in first[1])
        hint = "" if has_sample else "; add a sample_id column if a subject has several scans"
        raise CohortError(f"{source}: {len(groups)} duplicate {key}(s); {key} {first[0]!r} appears in "
                          f"{rows}{hint}")
    has_masks = mask_col in table
    root = base.resolve()
    scans, missing = [], []
    for i in range(len(table)):
        where = _where(i, line_offset)
        image = _resolve(table[image_col].iloc[i], root, allow_outside, source, where, image_col)
        if image is None:
            raise CohortError(f"{source}: {where} (subject {table['subject_id'].iloc[i]!r}) has no {image_col} path")
        mask = _resolve(table[mask_col].iloc[i], root, allow_outside, source, where, mask_col) if has_masks else None
        for p, col in ((image, image_col), (mask, mask_col)):
            if p is not None and not p.exists():
                missing.append((i, where, col, p))
        scans.append((i, image, mask))
    if missing:
        listed = "; ".join(f"{w}: {col} {p}" for _, w, col, p in missing[:5])
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        if on_missing == "raise":
            raise CohortError(f"{source}: {len(missing)} file(s) not found: {listed}{more}; "
                              "fix the paths or pass on_missing='skip'")
        log.warning("%s: skipping %d row(s) whose files are missing: %s%s", source, len(missing), listed, more)
    drop = {i for i, *_ in missing}
    skipped = [{"row": i + 1, "sample_id": table["sample_id"].iloc[i], "file": str(p),
                "reason": f"{col} not found"} for i, _, col, p in missing]
    keep = [i for i in range(len(table)) if i not in drop]
    if not keep:
        raise CohortError(f"{source}: no scan is left after skipping {len(drop)} rows with missing files")
    clinical_cols = [c for c in table.columns if c not in ("subject_id", "sample_id", image_col, mask_col)]
    # nullable dtypes per column, fixed for the whole cohort, so every chunk of obs written
    # to the store has the same schema even when a chunk happens to hold only missing values
    clinical = table.iloc[keep][["subject_id", "sample_id", *clinical_cols]].reset_index(drop=True)
    clinical = clinical.convert_dtypes(convert_boolean=False)
    out = []
    for n, i in enumerate(keep):
        _, image, mask = scans[i]
        out.append(Scan(n, i + 1, table["subject_id"].iloc[i], table["sample_id"].iloc[i], image, mask))
    return Cohort(out, clinical, source, has_masks, skipped)


def _resolve(value, root: Path, allow_outside: bool, source: str, where: str, col: str) -> Path | None:
    if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
        return None
    p = Path(str(value).strip()).expanduser()
    p = (p if p.is_absolute() else root / p).resolve()
    if not allow_outside and not p.is_relative_to(root):
        raise CohortError(f"{source}: {where}: {col} path {value!r} leaves the manifest's folder {root}; "
                          "pass allow_outside=True if that is intended")
    return p
