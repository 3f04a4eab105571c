"""The Findings directory: what the statistics stage hands to interpretation and the report.

``subjects.h5ad`` (subjects × features, clinical columns in obs), ``associations.parquet``
(one row per feature × label × test), ``probes.parquet``, ``candidates.parquet`` (ranked) and
``manifest.json``, and ``figures/`` (a volcano plot per label, PNG and SVG). Every table is a
tidy parquet file that pandas reads alone. The directory
is written under a temporary name and renamed into place: it is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import pandas as pd

from ..errors import InputError
from ..lock import ArtifactLock, publish
from .plots import write_figures

KIND = "bioviz.findings"
TABLES = ("associations", "probes", "candidates", "seeds")

#: the columns of associations.parquet, in order (later stages may rely on each)
ASSOCIATION_COLUMNS = (
    "feature", "label", "kind", "test", "n", "n_per_group", "effect", "effect_name", "null",
    "ci_low", "ci_high", "ci_method", "statistic", "p", "q", "q_method", "p_fwer",
    "p_fwer_floor", "direction", "heldout_effect", "heldout_p", "heldout_q", "replicated",
    "stability", "evidence",
)


@dataclass
class Findings:
    """The statistics stage's result; :meth:`write` makes the directory, :meth:`read` opens one.

    Attributes
    ----------
    table
        ``associations.parquet``: one row per feature × label × test.
    candidates
        ``candidates.parquet``: candidate biomarkers, ranked (``rank`` 1 first).
    probes
        ``probes.parquet``: cross-validated probe performance with CIs.
    seeds
        ``seeds.parquet``: each provisional candidate's best match in other seeds' dictionaries.
    subjects
        ``subjects.h5ad``: subjects × features (the aggregate tested), clinical columns in obs.
    manifest
        Inputs' checksums, every setting, seeds, versions, and what was dropped and why.
    """

    table: pd.DataFrame
    candidates: pd.DataFrame
    probes: pd.DataFrame
    subjects: ad.AnnData
    manifest: dict = field(default_factory=dict)
    seeds: pd.DataFrame = field(default_factory=pd.DataFrame)
    path: Path | None = None

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return (f"Findings{where}: {self.subjects.n_obs} subjects × {self.subjects.n_vars} features, "
                f"{len(self.table)} associations, {len(self.candidates)} candidates")

    def __str__(self) -> str:
        """What the command line prints: where the Findings are and the top candidates."""
        lines = [repr(self)]
        if len(self.candidates):
            with pd.option_context("display.width", 120, "display.max_columns", 20, "display.precision", 3):
                lines.append(self.top(10).to_string(index=False))
        else:
            lines.append("no candidate biomarkers (no feature's primary test reached q < alpha)")
        return "\n".join(lines)

    def top(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` best-ranked candidates, the columns a reader looks at first."""
        cols = [c for c in ("rank", "feature", "label", "test", "effect_name", "effect", "ci_low",
                            "ci_high", "q", "p_fwer", "replicated", "stability", "seeds_reproduced")
                if c in self.candidates]
        return self.candidates.head(n)[cols]

    # -- disk ---------------------------------------------------------------------------

    def write(self, path, *, overwrite: bool = False) -> Path:
        """Write the directory atomically (a temporary sibling renamed into place).

        An existing directory is replaced only when it is a Findings directory and
        ``overwrite`` is set; anything else there is never touched.
        """
        path = Path(path)
        check_out(path, overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        with ArtifactLock(path, "Findings", folder=False):
            check_out(path, overwrite)  # what another process may have written meanwhile
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            try:
                for name in TABLES:
                    _write_parquet(getattr(self, "table" if name == "associations" else name),
                                   tmp / f"{name}.parquet")
                _h5ad_safe(self.subjects).write_h5ad(tmp / "subjects.h5ad")
                if len(self.table) and "primary" in self.table:
                    alpha = self.manifest.get("settings", {}).get("alpha", 0.05)
                    write_figures(self.table, tmp / "figures", alpha=alpha)
                manifest = {"kind": KIND, **self.manifest}
                # the manifest last: its presence marks a complete directory
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_jsonable))
                publish(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.path = path
        return path

    @classmethod
    def read(cls, path) -> Findings:
        """Open a Findings directory; a missing or incomplete one is an error naming what lacks."""
        path = Path(path)
        if not is_findings(path):
            raise InputError(f"{path} is not a Findings directory (no manifest.json of kind {KIND!r}); "
                             "make one with bioviz.associate(..., out=...)")
        missing = [f for f in (*[f"{t}.parquet" for t in TABLES], "subjects.h5ad") if not (path / f).exists()]
        if missing:
            raise InputError(f"Findings directory {path} lacks {', '.join(missing)}")
        tables = {t: pd.read_parquet(path / f"{t}.parquet") for t in TABLES}
        return cls(table=tables["associations"], candidates=tables["candidates"], probes=tables["probes"],
                   seeds=tables["seeds"],
                   subjects=ad.read_h5ad(path / "subjects.h5ad"),
                   manifest=json.loads((path / "manifest.json").read_text()), path=path)


def is_findings(path: Path) -> bool:
    try:
        return json.loads((Path(path) / "manifest.json").read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def check_out(path: Path, overwrite: bool) -> None:
    """Refuse an output path that must not be replaced, naming it and what to do."""
    if not path.exists():
        return
    if not path.is_dir() or not is_findings(path):
        raise InputError(f"out={path} exists and is not a Findings directory bioviz wrote; bioviz "
                         "never replaces it, even with overwrite=True: choose another path")
    if not overwrite:
        raise InputError(f"out={path} already holds Findings; pass overwrite=True to replace them, "
                         "or choose another path")


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    df = df.copy()
    df.attrs = {}  # run notes (tables, objects) are not parquet metadata; manifests carry them
    for col in df.columns:  # parquet needs one type per column: mixed objects become text
        if df[col].dtype == object and not df[col].map(lambda v: v is None or isinstance(v, str)).all():
            df[col] = df[col].map(lambda v: v if v is None else json.dumps(v, default=_jsonable)
                                  if isinstance(v, (dict, list)) else str(v))
    df.to_parquet(path, index=False)


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, pd.Timestamp)):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to manifest.json")


def _h5ad_safe(adata: ad.AnnData) -> ad.AnnData:
    """A copy of ``adata`` whose obs anndata can write (the caller's object is left alone)."""
    from ..features import h5ad_safe_obs

    return h5ad_safe_obs(adata.copy())  # subjects × features: small
