"""Per-feature evidence from the FeatureTable itself: where each feature fires most.

- :func:`top_examples`: the ``n`` rows where each feature fires most, with their metadata.
- :func:`feature_summary`: one row per feature (density, activations, how many subjects its
  top rows come from, their label composition against the cohort's).
- :func:`top_composition`: the share of each value of an obs column (e.g. ``cell_type``)
  among a feature's top rows, the ``composition`` evidence of :func:`~.describe.describe`.
- :func:`activation_histogram` and :func:`write_feature_evidence`: the figure and the folder.

A FeatureTable is an AnnData (in memory, or an ``.h5ad`` path opened ``backed="r"``): rows
are activation rows (cells, gene tokens, DNA windows, scan patches), X the SAE codes. Only the
requested feature columns are ever held, read a block of rows at a time.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from ..errors import InputError, positive_int
from ..features import open_feature_table
from ..lock import publish

__all__ = ["SINGLE_SUBJECT_SHARE", "ROW_COLUMNS", "top_examples", "feature_summary",
           "top_composition", "activation_histogram", "write_feature_evidence"]

#: a feature whose top rows come this much or more from one subject is flagged single_subject:
#: at half, the "biomarker" is mostly one person's quirk (batch, artefact, rare cell state)
SINGLE_SUBJECT_SHARE = 0.5

#: row-level obs columns the adapters write (single cell, DNA, scans): shown with each example
ROW_COLUMNS = ("cell_id", "cell_type", "gene_id", "gene", "token_index", "chrom", "start", "end",
               "strand", "window", "grid_i", "grid_j", "grid_k", "voxel_i", "voxel_j", "voxel_k",
               "world_x", "world_y", "world_z", "mask_fraction")
_GRID = re.compile(r"grid_\d+$")
_CELLS = 1 << 24  # elements of a dense block of rows (64 MB of float32)
_SPARSE_ROWS = 1 << 16  # rows per block of a sparse X
_MAX_SPLIT = 10  # label values a histogram may be split by


# ------------------------------------------------------------------ reading


@dataclass
class _Columns:
    """The requested features' columns (rows × features, CSC, explicit zeros dropped)."""

    features: list[str]
    X: sp.csc_matrix
    obs: pd.DataFrame

    def fired(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows where feature ``j`` fires (> 0) and their activations, in row order."""
        a, b = self.X.indptr[j], self.X.indptr[j + 1]
        rows, vals = self.X.indices[a:b], self.X.data[a:b]
        keep = vals > 0
        order = np.argsort(rows[keep], kind="stable")
        return rows[keep][order], vals[keep][order]

    def top(self, j: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` rows where feature ``j`` fires most; ties go to the earlier row."""
        rows, vals = self.fired(j)
        order = np.lexsort((rows, -vals.astype(np.float64)))[:n]
        return rows[order], vals[order]


def _open(ft) -> tuple[ad.AnnData, bool]:
    """The AnnData, and whether this call opened it (then it must close it)."""
    if isinstance(ft, ad.AnnData):
        if ft.X is None:
            raise InputError("ft: the AnnData has no X; expected a FeatureTable (SAE codes)")
        return ft, False
    adata = open_feature_table(ft, name="ft")
    if adata.X is None:
        adata.file.close()
        raise InputError(f"ft={ft}: the AnnData has no X; expected a FeatureTable (SAE codes)")
    return adata, True


def feature_list(features, var_names: pd.Index) -> tuple[list[str], np.ndarray]:
    """``(names, column indices)`` of ``features`` (a name or a list) in ``var_names``; a
    name that is not there is an error naming it and the closest names."""
    if isinstance(features, str):
        features = [features]
    try:
        features = list(dict.fromkeys(features))
    except TypeError:
        raise InputError(f"features: expected a feature name or a list of them (e.g. 'f12'), "
                         f"got {type(features).__name__}") from None
    if not features:
        raise InputError("features is empty: name at least one feature (e.g. 'f12')")
    bad = [f for f in features if not isinstance(f, str)]
    if bad:
        raise InputError(f"features must be names from var_names (strings such as 'f12'), got "
                         f"{bad[0]!r} ({type(bad[0]).__name__})")
    where = var_names.get_indexer(features)
    missing = [f for f, i in zip(features, where) if i < 0]
    if missing:
        names = [str(v) for v in var_names]
        close = difflib.get_close_matches(missing[0], names, n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise InputError(f"features: {', '.join(map(repr, missing[:5]))} not in the FeatureTable's "
                         f"var_names ({len(names)} features, {names[0]!r}..{names[-1]!r}){hint}")
    return features, where


def _need_columns(obs: pd.DataFrame, names: dict[str, str | None]) -> None:
    for param, col in names.items():
        if col is not None and col not in obs.columns:
            raise InputError(f"{param}={col!r} is not an obs column of the FeatureTable; "
                             f"available: {', '.join(map(str, obs.columns))}")


def read_columns(ft, features, *, progress: bool = False) -> _Columns:
    """The columns of ``features`` in one pass over row blocks (never the whole X dense):
    ``.features`` (names), ``.X`` (CSC, rows × features), ``.obs``, and ``.top(j, n)``. ``ft`` is a
    FeatureTable in memory, backed, or its path (opened and closed here)."""
    adata, opened = _open(ft)
    try:
        names, idx = feature_list(features, adata.var_names)
        X = adata.X
        n, d = adata.shape
        sparse = sp.issparse(X) or getattr(X, "format", None) in ("csr", "csc")  # or backed
        step = _SPARSE_ROWS if sparse else max(1, _CELLS // max(d, 1))
        blocks = []
        for a in tqdm(range(0, n, step), desc="reading features", disable=not progress):
            block = X[a:min(a + step, n)]
            block = block.tocsr()[:, idx] if sp.issparse(block) else sp.csr_matrix(
                np.asarray(block)[:, idx])
            blocks.append(block)
        cols = sp.vstack(blocks, format="csc") if blocks else sp.csc_matrix((0, len(idx)))
        cols.eliminate_zeros()
        cols.sort_indices()
        return _Columns(names, cols, adata.obs.copy())
    finally:
        if opened:
            adata.file.close()


def _meta_columns(obs: pd.DataFrame, columns, label, subject_key) -> list[str]:
    if columns is None:
        cols = [c for c in obs.columns if c in ROW_COLUMNS or _GRID.match(str(c))]
    else:
        cols = [columns] if isinstance(columns, str) else list(columns)
        for c in cols:
            _need_columns(obs, {"columns": c})
    skip = {subject_key, "sample_id", label}
    return [c for c in cols if c not in skip]


def _never_fire(names: list[str]) -> None:
    if names:
        warnings.warn(f"feature{'s' if len(names) > 1 else ''} {', '.join(names)} never "
                      f"fire{'' if len(names) > 1 else 's'} in the FeatureTable: no top rows",
                      UserWarning, stacklevel=3)


# ------------------------------------------------------------------ tables


def _examples(c: _Columns, n: int, label, subject_key, columns) -> pd.DataFrame:
    obs = c.obs
    meta = _meta_columns(obs, columns, label, subject_key)
    parts, silent = [], []
    for j, f in enumerate(c.features):
        rows, vals = c.top(j, n)
        if not len(rows):
            silent.append(f)
        parts.append(pd.DataFrame({"feature": f, "rank": np.arange(1, len(rows) + 1),
                                   "_pos": rows, "activation": vals.astype(np.float64)}))
    _never_fire(silent)
    out = pd.concat(parts, ignore_index=True)
    pos = out.pop("_pos").to_numpy(dtype=np.int64)
    out.insert(2, "row", obs.index.to_numpy()[pos])
    out["subject"] = obs[subject_key].to_numpy()[pos]
    if "sample_id" in obs:
        out["sample"] = obs["sample_id"].to_numpy()[pos]
    for col in meta:
        out[col] = obs[col].to_numpy()[pos]
    if label is not None:
        out[label] = obs[label].to_numpy()[pos]
    return out


def top_examples(ft, features, *, n: int = 20, label: str | None = None,
                 subject_key: str = "subject_id", columns=None,
                 progress: bool = False) -> pd.DataFrame:
    """The ``n`` rows where each feature fires most, with what is known about each row.

    Parameters
    ----------
    ft : anndata.AnnData or path
        The FeatureTable (a path is opened ``backed="r"``).
    features : str or list of str
        Feature names from ``ft.var_names`` (e.g. ``findings.candidates["feature"]``).
    n : int, default 20
        Rows per feature (fewer when the feature fires in fewer rows).
    label : str, optional
        An obs column (e.g. ``"diagnosis"``) whose value is shown with each row.
    subject_key : str, default "subject_id"
        The obs column naming each row's subject.
    columns : str or list of str, optional
        The obs columns shown besides subject and sample; default: those of :data:`ROW_COLUMNS`
        present (cell, gene token, DNA position, scan grid and world coordinates) and
        ``grid_<k>``.
    progress : bool, default False
        Show a progress bar over the blocks of rows read.

    Returns
    -------
    pandas.DataFrame
        Tidy, one row per feature × example, features in the order given: ``feature``,
        ``rank`` (1 = highest activation; ties go to the earlier row), ``row`` (the obs
        name), ``activation``, ``subject``, ``sample`` (when ``sample_id`` exists), the
        ``columns`` and the ``label`` column. A row "fires" when its code is > 0.

    Warns
    -----
    UserWarning
        Naming the features that never fire (they give no rows).
    """
    n = positive_int(n, "n")
    c = read_columns(ft, features, progress=progress)
    _need_columns(c.obs, {"subject_key": subject_key, "label": label})
    return _examples(c, n, label, subject_key, columns)


def _share_text(counts: pd.Series, k: int = 3) -> str:
    return ", ".join(f"{v}: {s:.2f}" for v, s in (counts / counts.sum()).head(k).items())


def _composition(top: pd.Series, cohort: pd.Series) -> dict:
    """The label among the top rows against all rows (the share a random draw would give)."""
    top, cohort = top.dropna(), cohort.dropna()
    if not len(top):
        return {"label_value": None, "label_share_top": np.nan, "label_share_cohort": np.nan,
                "label_composition": ""}
    if pd.api.types.is_numeric_dtype(cohort) and cohort.nunique() > _MAX_SPLIT:
        return {"label_value": None, "label_share_top": np.nan, "label_share_cohort": np.nan,
                "label_composition": f"mean {top.mean():.3g} vs {cohort.mean():.3g} in the cohort"}
    counts = top.value_counts(sort=False)
    value = counts.index[int(np.argmax(counts.to_numpy()))]  # ties: the first value met
    share_top = float(counts[value] / len(top))
    share_all = float((cohort == value).mean())
    return {"label_value": value, "label_share_top": share_top, "label_share_cohort": share_all,
            "label_composition": f"{value} {share_top:.2f} vs {share_all:.2f} in the cohort"}


def _summary(c: _Columns, n_top: int, label, subject_key) -> pd.DataFrame:
    obs = c.obs
    n_rows = len(obs)
    subject = obs[subject_key].to_numpy()
    codes, _ = pd.factorize(obs[subject_key], use_na_sentinel=False)
    records, silent = [], []
    for j, f in enumerate(c.features):
        rows, vals = c.fired(j)
        top_rows, _ = c.top(j, n_top)
        rec = {"feature": f, "density": len(rows) / n_rows if n_rows else np.nan,
               "mean_activation": float(vals.sum(dtype=np.float64)) / n_rows if n_rows else np.nan,
               "max_activation": float(vals.max()) if len(vals) else 0.0,
               "n_rows_firing": len(rows), "n_subjects_firing": len(np.unique(codes[rows])),
               "n_top": len(top_rows)}
        if len(top_rows):
            # value_counts sorts by count, ties in order of first appearance (rank order)
            counts = pd.Series(subject[top_rows]).value_counts(sort=True)
            rec["top_subject_share"] = float(counts.iloc[0] / len(top_rows))
            rec["top_subjects"] = _share_text(counts)
        else:
            silent.append(f)
            rec["top_subject_share"], rec["top_subjects"] = np.nan, ""
        rec["single_subject"] = bool(rec["top_subject_share"] >= SINGLE_SUBJECT_SHARE)
        if label is not None:
            rec.update(_composition(obs[label].iloc[top_rows], obs[label]))
        records.append(rec)
    _never_fire(silent)
    return pd.DataFrame.from_records(records)


def feature_summary(ft, features, *, n_top: int = 50, label: str | None = None,
                    subject_key: str = "subject_id", progress: bool = False) -> pd.DataFrame:
    """One row per feature: how often and how strongly it fires, and where its top rows lie.

    Parameters
    ----------
    ft : anndata.AnnData or path
        The FeatureTable (a path is opened ``backed="r"``).
    features : str or list of str
        Feature names from ``ft.var_names``.
    n_top : int, default 50
        The top rows (highest activations, as :func:`top_examples`) the shares refer to.
    label : str, optional
        An obs column whose composition among the top rows is set against the cohort's.
    subject_key : str, default "subject_id"
        The obs column naming each row's subject.
    progress : bool, default False
        Show a progress bar over the blocks of rows read.

    Returns
    -------
    pandas.DataFrame
        Features in the order given, columns:

        - ``density``: share of rows where the feature fires (code > 0);
          ``mean_activation`` (over all rows, zeros included), ``max_activation``;
          ``n_rows_firing``, ``n_subjects_firing``; ``n_top`` (top rows, ``<= n_top``).
        - ``top_subject_share``: share of the top rows from their most common subject (NaN
          when the feature never fires); ``top_subjects``: the three commonest, e.g.
          ``"S003: 0.62, S010: 0.20, S001: 0.10"``.
        - ``single_subject``: ``top_subject_share >= SINGLE_SUBJECT_SHARE`` (0.5).
        - With ``label``: ``label_value`` (the commonest value among the top rows),
          ``label_share_top``, ``label_share_cohort`` (its share among all rows with a
          value: what a feature blind to the label would show) and ``label_composition``,
          e.g. ``"case 0.90 vs 0.50 in the cohort"``; a numeric label with more than 10
          values gives the means instead (``"mean 62.1 vs 55 in the cohort"``).

    Warns
    -----
    UserWarning
        Naming the features that never fire.
    """
    n_top = positive_int(n_top, "n_top")
    c = read_columns(ft, features, progress=progress)
    _need_columns(c.obs, {"subject_key": subject_key, "label": label})
    return _summary(c, n_top, label, subject_key)


def top_composition(examples: pd.DataFrame, column: str) -> pd.DataFrame:
    """The share of each value of ``column`` among each feature's top rows.

    Parameters
    ----------
    examples : pandas.DataFrame
        A :func:`top_examples` table holding ``column`` (e.g. ``columns=["cell_type"]``).
    column : str
        The column to count, e.g. ``"cell_type"``.

    Returns
    -------
    pandas.DataFrame
        ``feature, column, value, n, share`` (share of the feature's top rows with a value),
        commonest value first within each feature: the ``composition`` evidence of
        :func:`bioviz.interpret.describe.describe`.
    """
    if not isinstance(examples, pd.DataFrame) or "feature" not in examples:
        raise InputError("examples: expected a top_examples() table (with a 'feature' column)")
    if column not in examples:
        raise InputError(f"column={column!r} is not in the examples table; available: "
                         f"{', '.join(map(str, examples.columns))} (pass columns=[{column!r}] "
                         "to top_examples)")
    parts = []
    for f, rows in examples.groupby("feature", sort=False):
        counts = rows[column].dropna().value_counts(sort=True)
        parts.append(pd.DataFrame({"feature": f, "column": column, "value": counts.index,
                                   "n": counts.to_numpy(), "share": counts.to_numpy() /
                                   max(int(counts.sum()), 1)}))
    if not parts:
        return pd.DataFrame(columns=["feature", "column", "value", "n", "share"])
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------ figures


def _histogram(c: _Columns, j: int, ax, label):
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(5.5, 3.8), layout="constrained")
        ax = fig.add_subplot()
    f, n_rows = c.features[j], len(c.obs)
    rows, vals = c.fired(j)
    density = len(rows) / n_rows if n_rows else np.nan
    if not len(rows):
        ax.text(0.5, 0.5, "never fires", ha="center", va="center", transform=ax.transAxes)
    else:
        bins = np.histogram_bin_edges(vals.astype(np.float64), bins=min(50, max(5, len(vals))))
        if label is None:
            ax.hist(vals, bins=bins, color="#2c7fb8", label=f"all rows (n = {len(vals)})")
        else:
            groups = c.obs[label].iloc[rows]
            levels = groups.dropna().unique()
            if len(levels) > _MAX_SPLIT:
                raise InputError(f"label={label!r} has {len(levels)} values among the rows where "
                                 f"{f} fires; a histogram is split by at most {_MAX_SPLIT}")
            for level in sorted(levels, key=str):
                part = vals[(groups == level).to_numpy()]
                ax.hist(part, bins=bins, histtype="step", lw=1.5,
                        label=f"{label} = {level} (n = {len(part)})")
        ax.set_yscale("log")
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel("SAE code (activation), rows where it fires")
    ax.set_ylabel("rows (log scale)")
    ax.set_title(f"{f}: density {density:.2%} ({len(rows)} of {n_rows} rows fire)", fontsize=10)
    return ax.figure


def activation_histogram(ft, feature: str, *, ax=None, label: str | None = None):
    """Distribution of a feature's non-zero activations, split by label group when given.

    Parameters
    ----------
    ft : anndata.AnnData or path
        The FeatureTable (a path is opened ``backed="r"``).
    feature : str
        A feature name from ``ft.var_names``.
    ax : matplotlib.axes.Axes, optional
        Where to draw; default a new figure (not registered with pyplot).
    label : str, optional
        An obs column with at most 10 values among the firing rows; one step histogram each.

    Returns
    -------
    matplotlib.figure.Figure
        Counts on a log axis; the title gives the density (share of rows firing).
    """
    if not isinstance(feature, str):
        raise InputError(f"feature: expected one feature name (e.g. 'f12'), got {feature!r}")
    c = read_columns(ft, feature)
    _need_columns(c.obs, {"label": label})
    return _histogram(c, 0, ax, label)


# ------------------------------------------------------------------ the folder


def safe_name(name: str) -> str:
    """A file or folder name for a feature: characters other than letters, digits, ``._-``
    become ``_``; a name that would be hidden or empty gets a leading ``_``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return "_" + safe if safe.startswith(".") or not safe else safe


def write_feature_evidence(ft, features, out_dir, *, n: int = 20, n_top: int = 50,
                           label: str | None = None, subject_key: str = "subject_id",
                           columns=None, overwrite: bool = False,
                           progress: bool = True) -> Path:
    """Write each feature's top examples and activation histogram under ``out_dir``.

    Parameters
    ----------
    ft, features, n, label, subject_key, columns
        As for :func:`top_examples`.
    out_dir : path
        Created if needed. Gets ``feature_summary.tsv`` (:func:`feature_summary` with
        ``n_top``) and, per feature, ``<feature>/top_examples.tsv``, ``histogram.png`` and
        ``histogram.svg`` (characters other than letters, digits, ``._-`` become ``_``).
    n_top : int, default 50
        The top rows of the summary's shares.
    overwrite : bool, default False
        Replace the folders of features written before (otherwise an error names them).
    progress : bool, default True
        Show progress bars (reading, then features).

    Returns
    -------
    pathlib.Path
        ``out_dir``. Each feature folder is written under a temporary name and renamed into
        place: it is complete or absent.
    """
    n, n_top = positive_int(n, "n"), positive_int(n_top, "n_top")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"out_dir={out} is a file; expected a folder")
    c = read_columns(ft, features, progress=progress)
    _need_columns(c.obs, {"subject_key": subject_key, "label": label})
    dirs = [out / safe_name(f) for f in c.features]
    if len(set(dirs)) < len(dirs):
        raise InputError("features: two names map to the same folder name once characters "
                         "other than letters, digits, '._-' become '_'; rename them")
    there = [d.name for d in dirs if d.exists()]
    if there and not overwrite:
        raise InputError(f"out_dir={out} already holds {', '.join(there[:5])}; pass "
                         "overwrite=True to replace them")
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the summary warns about never-firing features once
        examples = _examples(c, n, label, subject_key, columns)
    summary = _summary(c, n_top, label, subject_key)
    tmp = out / f".feature_summary.tsv.tmp-{os.getpid()}"
    summary.to_csv(tmp, sep="\t", index=False)
    publish(tmp, out / "feature_summary.tsv")
    for j, (f, d) in enumerate(tqdm(list(zip(c.features, dirs)), desc="feature evidence",
                                    disable=not progress)):
        tmp = out / f".{d.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            examples[examples["feature"] == f].to_csv(tmp / "top_examples.tsv", sep="\t",
                                                      index=False)
            fig = _histogram(c, j, None, label)
            for ext in ("png", "svg"):
                fig.savefig(tmp / f"histogram.{ext}", dpi=150)
            publish(tmp, d)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out
