"""Rows (cells, tokens, patches, windows) to subjects, or to any obs key: per-group statistics
of SAE features, or of raw activations, read a few whole groups at a time so that memory
stays bounded whatever the size of the store.

Cells or patches of one patient are not independent samples; the statistics stage tests one
row per subject, made here.
"""

from __future__ import annotations

import copy
import numbers
import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from ..errors import InputError

#: the statistics :func:`aggregate` computes; "quantile" is named ``q90`` for quantile=0.9
STATS = ("mean", "max", "frac", "quantile")
_GIB = 1 << 30


def aggregate(features=None, *, sae=None, store=None, layer: str | None = None,
              by: str = "subject_id", stats=("mean",), quantile: float = 0.9,
              threshold: float = 0.0, batch_size: int = 8192, max_memory_gb: float = 2.0,
              device: str | None = None, allow_mismatch: bool = False,
              progress: bool = True) -> ad.AnnData:
    """One row per value of ``obs[by]``: per-feature statistics over that group's rows.

    Give exactly one source: a FeatureTable (``features``), an SAE (``sae``, with an optional
    ``store``/``layer``), or a store alone (its raw activations).

    Parameters
    ----------
    features
        A FeatureTable (:func:`bioviz.encode`) in memory, or the path of one written as
        .h5ad; a path is opened ``backed="r"`` and read a block of rows at a time.
    sae
        A trained SAE or its checkpoint directory: the store's rows are encoded a block at a
        time and only the group statistics are kept (no row-level table is built).
    store
        An :class:`~bioviz.store.ActivationStore` or its path. With ``sae``: default is the
        store the SAE was trained on. Without ``sae``: the raw activations of ``layer`` are
        aggregated (features named ``a0``, ``a1``...).
    layer
        The store layer. With ``sae``: default is the layer the SAE was trained on.
    by
        The obs column whose values are the groups (``"subject_id"``, ``"sample_id"``,
        ``"cell_id"``...). Groups keep the order of their first row.
    stats
        Any of ``"mean"``, ``"max"``, ``"frac"`` (share of the group's rows where the feature
        is above ``threshold``) and ``"quantile"`` (or its layer name, e.g. ``"q90"``).
    quantile
        The quantile for ``"quantile"``, in (0, 1): exact, numpy's default (linear) method
        over all the group's rows, zeros included. Its layer is named ``q{100 * quantile}``.
    threshold
        A feature "fires" in a row when it is above this value (for ``"frac"``).
    batch_size
        Rows encoded by the SAE at a time.
    max_memory_gb
        Budget for the rows held at once, counted as dense float64 rows and their working
        copies (and the raw rows the SAE encodes); not counted: the output (groups ×
        features per stat), the obs columns, and the store chunks zarr decodes meanwhile.
        Without the quantile, rows are read in order a block at a time, in one pass,
        whatever the layout of the groups. The exact quantile needs all a group's rows at
        once: rows are gathered a batch of whole groups at a time (read in row order; a
        store whose groups are scattered is then decoded once per batch), and a group larger
        than the budget is refused.
    device
        Torch device for the SAE (default: CUDA when available).
    allow_mismatch
        Use an SAE on a layer or model other than its recorded one (see :func:`bioviz.encode`).
    progress
        Show a progress bar over rows.

    Returns
    -------
    anndata.AnnData
        ``obs_names``: the group values as text; ``obs``: ``n_rows`` (rows per group) and
        every input obs column that is constant within every group (the clinical columns,
        for subjects); ``X``: the first stat (dense float64); ``layers[name]``: every stat;
        ``var`` (and ``varm``, e.g. the decoder): the features; ``uns["bioviz"]``: the
        source's provenance (a FeatureTable's own, or the SAE's and the store's) and what
        was aggregated: ``source``, ``by``, ``stats`` (layer names), ``quantile``,
        ``threshold``, ``n_rows``, ``n_groups``, ``max_memory_gb``.

    Raises
    ------
    InputError
        No source or more than one; ``by`` not an obs column, or missing in some rows; an
        unknown stat; ``quantile`` outside (0, 1); a group too large for ``max_memory_gb``
        when a quantile is asked for; an SAE that does not match the store (see
        :func:`bioviz.encode`).
    bioviz.store.StoreError
        Store rows that read as NaN throughout (a lost chunk), never averaged.

    Examples
    --------
    >>> from bioviz.analysis.synthetic import make_cohort
    >>> ft = make_cohort(n_subjects=4, rows_per_subject=25, n_features=6)
    >>> subjects = aggregate(ft, by="subject_id", stats=("mean", "frac", "quantile"), progress=False)
    >>> subjects.shape, sorted(subjects.layers), subjects.obs["n_rows"].tolist()
    ((4, 6), ['frac', 'mean', 'q90'], [25, 25, 25, 25])
    >>> "diagnosis" in subjects.obs, "cell_type" in subjects.obs   # constant within subject or not
    (True, False)
    """
    names = _stat_names(stats, quantile)
    _check_params(by, threshold, batch_size, max_memory_gb)
    src = _open_source(features, sae, store, layer, batch_size, device, allow_mismatch)
    try:
        return _aggregate(src, by, names, float(quantile), float(threshold), max_memory_gb,
                          progress)
    finally:
        src.close()


def _stat_names(stats, quantile) -> dict[str, str]:
    """{layer name: stat} in the order asked, checking ``stats`` and ``quantile``."""
    if (not isinstance(quantile, numbers.Real) or isinstance(quantile, bool)
            or not 0 < quantile < 1):
        raise InputError(f"quantile={quantile!r}: expected a number strictly between 0 and 1 "
                         "(0.9 for the 90th percentile)")
    qname = f"q{quantile * 100:g}"
    if isinstance(stats, str):
        stats = (stats,)
    names: dict[str, str] = {}
    for s in stats:
        stat = "quantile" if s in ("quantile", qname) else s
        if stat not in STATS:
            hint = (f"; for {s} pass quantile={float(s[1:]) / 100:g}"
                    if re.fullmatch(r"q\d+(\.\d+)?", str(s)) else "")
            raise InputError(f"stats: unknown stat {s!r}; expected any of {', '.join(STATS)} "
                             f"(the quantile's layer is named {qname!r} for quantile={quantile})"
                             + hint)
        names[qname if stat == "quantile" else stat] = stat
    if not names:
        raise InputError(f"stats is empty; give at least one of {', '.join(STATS)}")
    return names


def _check_params(by, threshold, batch_size, max_memory_gb) -> None:
    if not isinstance(by, str):
        raise InputError(f"by={by!r}: expected the name of an obs column, e.g. 'subject_id'")
    if (not isinstance(threshold, numbers.Real) or isinstance(threshold, bool)
            or not np.isfinite(threshold)):
        raise InputError(f"threshold={threshold!r}: expected a finite number (0.0: fires when > 0)")
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r}: expected a positive integer")
    if (not isinstance(max_memory_gb, numbers.Real) or isinstance(max_memory_gb, bool)
            or not max_memory_gb > 0):
        raise InputError(f"max_memory_gb={max_memory_gb!r}: expected a positive number of GiB")


# -- the engine ------------------------------------------------------------------------------


def _aggregate(src, by, names, q, threshold, max_memory_gb, progress) -> ad.AnnData:
    if by not in src.columns:
        raise InputError(f"by={by!r} is not an obs column of the {src.what}; its columns are "
                         f"{', '.join(map(str, src.columns))}")
    if src.n_rows == 0:
        raise InputError(f"the {src.what} has no rows: nothing to aggregate")
    codes, keys = _group_codes(src.column(by), by)
    n_groups, n_feat = len(keys), len(src.var)
    counts = np.bincount(codes, minlength=n_groups)
    order = np.argsort(codes, kind="stable")  # rows grouped, each group in row order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    want_q = "quantile" in names.values()
    # dense float64 block, plus the block regrouped and the quantile's stacked copy and its
    # partition buffer; plus the raw rows an SAE encodes
    per_row = 8 * n_feat * (4 if want_q else 2) + src.row_bytes
    max_rows = max(1, int(max_memory_gb * _GIB // per_row))
    if want_q and counts.max() > max_rows:
        g = int(np.argmax(counts))
        raise InputError(
            f"group {keys[g]!r} of {by!r} has {counts[g]} rows, more than the {max_rows} rows "
            f"max_memory_gb={max_memory_gb} holds for {n_feat} features; the exact quantile "
            "needs all a group's rows at once: raise max_memory_gb or drop the quantile stat"
        )
    bar = tqdm(total=src.n_rows, unit="rows", desc="aggregate", disable=not progress)
    if want_q:
        out = _by_groups(src, names, q, threshold, max_rows, order, starts, counts, bar)
    else:
        out = _by_rows(src, names, threshold, max_rows, codes, counts, bar)
    bar.close()
    obs = _group_obs(src, codes, keys, order, starts, counts)
    first = next(iter(names))
    res = ad.AnnData(X=out[first], obs=obs, var=src.var.copy())
    for name, arr in out.items():
        res.layers[name] = arr
    for key, arr in src.varm.items():
        res.varm[key] = arr
    res.uns["bioviz"] = {**copy.deepcopy(src.record), "source": src.kind, "by": by,
                         "stats": list(names), "quantile": q, "threshold": threshold,
                         "n_rows": int(src.n_rows), "n_groups": int(n_groups),
                         "max_memory_gb": float(max_memory_gb),
                         **({"features_path": str(src.path)} if src.path is not None else {})}
    return res


def _group_codes(values: pd.Series, by: str) -> tuple[np.ndarray, pd.Index]:
    """Group code per row (order of first appearance) and the groups' names as text."""
    missing = np.flatnonzero(pd.isna(values).to_numpy())
    if len(missing):
        raise InputError(f"obs[{by!r}] is missing in {len(missing)} rows (rows "
                         f"{_listed(missing)}); fill them or drop those rows first")
    codes, uniques = pd.factorize(values, sort=False)
    keys = pd.Index(np.asarray(uniques).astype(str), dtype=object)
    if not keys.is_unique:
        dup = keys[keys.duplicated()].unique()
        raise InputError(f"obs[{by!r}] has distinct values that read the same as text "
                         f"({_listed(dup)}, e.g. 1 and '1'); make the column one type")
    return codes.astype(np.int64), keys


def _by_rows(src, names, threshold, max_rows, codes, counts, bar) -> dict[str, np.ndarray]:
    """Mean, max and frac in one pass over the rows in order, a block at a time, whatever
    the layout of the groups (a group larger than the budget is simply spread over blocks)."""
    n_feat = len(src.var)
    acc = {name: np.full((len(counts), n_feat), -np.inf if stat == "max" else 0.0)
           for name, stat in names.items()}
    for s in range(0, src.n_rows, max_rows):
        rows = np.arange(s, min(s + max_rows, src.n_rows))
        block, c = src.read_block(rows), codes[rows]
        if np.any(np.diff(c) < 0):  # groups interleaved: bring each group's rows together
            o = np.argsort(c, kind="stable")
            block, c = block[o], c[o]
        present, starts = np.unique(c, return_index=True)
        segments = _segments_sparse if sp.issparse(block) else _segments
        for name, part in segments(block, starts, names, threshold).items():
            if names[name] == "max":
                np.maximum(acc[name][present], part, out=part)
                acc[name][present] = part
            else:
                acc[name][present] += part
        bar.update(len(rows))
    for name, stat in names.items():
        if stat != "max":  # sums and counts of rows that fire, over all the group's rows
            acc[name] /= counts[:, None]
    return acc


def _by_groups(src, names, q, threshold, max_rows, order, starts, counts,
               bar) -> dict[str, np.ndarray]:
    """Every stat, the quantile included, from batches of whole groups: the rows of a batch
    are gathered (read in row order) and reduced, then dropped."""
    out = {name: np.empty((len(counts), len(src.var))) for name in names}
    for g0, g1 in _plan(counts, max_rows):
        rows = order[starts[g0]:starts[g1 - 1] + counts[g1 - 1]]
        block = _read_grouped(src, rows)
        n = counts[g0:g1]
        local = starts[g0:g1] - starts[g0]
        parts = _segments(block, local, names, threshold)
        for name, stat in names.items():
            if stat == "quantile":
                out[name][g0:g1] = _group_quantile(block, n, local, q)
            else:
                out[name][g0:g1] = parts[name] if stat == "max" else parts[name] / n[:, None]
        bar.update(len(rows))
    return out


def _segments(block, starts, names, threshold) -> dict[str, np.ndarray]:
    """Per segment of rows (``starts``): sums for mean, maxima for max, counts of rows above
    ``threshold`` for frac; all features at once."""
    res = {}
    for name, stat in names.items():
        if stat == "mean":
            res[name] = np.add.reduceat(block, starts, axis=0)
        elif stat == "max":
            res[name] = np.maximum.reduceat(block, starts, axis=0)
        elif stat == "frac":
            res[name] = np.add.reduceat(block > threshold, starts, axis=0, dtype=np.int64)
    return res


def _segments_sparse(block, starts, names, threshold) -> dict[str, np.ndarray]:
    """:func:`_segments` of a CSR block (float64), equal to it on the block made dense: an SAE's
    codes are mostly zeros (TopK: k of d_sae), and a dense float64 copy costs d_sae / k times
    the memory and the passes. Sums add each segment's rows in row order, as reduceat does (a
    zero added changes no sum); a segment's unstored entries count as the zeros they are for
    max and frac."""
    if not block.has_canonical_format:  # duplicate entries add up, as in the dense block
        block = block.copy()
        block.sum_duplicates()
    n, m = block.shape
    sizes = np.diff(np.append(starts, n))
    seg = np.repeat(np.arange(len(starts)), sizes)
    # (segment, feature) of every stored entry, entries in row order
    key = np.repeat(seg, np.diff(block.indptr)) * m + block.indices
    res = {}
    for name, stat in names.items():
        if stat == "mean":
            # segments x rows of ones: scipy's product adds the rows of a segment in their order
            ones = sp.csr_matrix((np.ones(n), seg, np.arange(n + 1)), shape=(n, len(starts))).T.tocsr()
            res[name] = (ones @ block).toarray()
        elif stat == "max":
            order = np.argsort(key, kind="stable")
            cells, first, stored = np.unique(key[order], return_index=True, return_counts=True)
            top = np.maximum.reduceat(block.data[order], first) if len(cells) else np.zeros(0)
            full = stored == sizes[cells // m]  # no unstored zero in the segment's column
            out = np.zeros((len(starts), m))
            out.flat[cells] = np.where(full, top, np.maximum(top, 0.0))
            res[name] = out
        elif stat == "frac":
            hits = np.bincount(key[block.data > threshold], minlength=len(starts) * m)
            if 0.0 > threshold:  # the unstored zeros are above it too
                hits += np.repeat(sizes, m) - np.bincount(key, minlength=len(starts) * m)
            res[name] = hits.reshape(len(starts), m).astype(np.int64)
    return res


def _plan(counts: np.ndarray, max_rows: int):
    """Consecutive runs of groups ``(g0, g1)`` holding at most ``max_rows`` rows."""
    g0, held = 0, 0
    for g, c in enumerate(counts.tolist()):
        if held and held + c > max_rows:
            yield g0, g
            g0, held = g, 0
        held += c
    if len(counts):
        yield g0, len(counts)


def _read_grouped(src, rows: np.ndarray) -> np.ndarray:
    """The rows ``rows`` (grouped order) as a dense float64 block, read in row order."""
    if len(rows) < 2 or np.all(np.diff(rows) > 0):
        return src.read(rows)
    srt = np.argsort(rows)
    block = src.read(rows[srt])
    back = np.empty_like(srt)
    back[srt] = np.arange(len(srt))
    return block[back]


def _group_quantile(block, counts, starts, q) -> np.ndarray:
    """np.quantile per group; groups of one size are stacked and done in one call, so a
    batch of many small groups (cells) costs a few calls, not one per group."""
    out = np.empty((len(counts), block.shape[1]))
    for n in np.unique(counts):
        gs = np.flatnonzero(counts == n)
        if n == 1:
            out[gs] = block[starts[gs]]
            continue
        idx = (starts[gs][:, None] + np.arange(n)).ravel()
        out[gs] = np.quantile(block[idx].reshape(len(gs), n, -1), q, axis=1)
    return out


def _group_obs(src, codes, keys, order, starts, counts) -> pd.DataFrame:
    """``n_rows`` and the obs columns constant within every group (one value per group)."""
    first = order[starts]  # each group's first row
    obs = pd.DataFrame(index=pd.Index(keys, dtype=object))
    obs["n_rows"] = counts.astype(np.int64)
    for col in src.columns:
        if col == "n_rows":
            continue
        values = src.column(col)
        try:
            vcodes = pd.factorize(values, use_na_sentinel=True)[0][order]
        except TypeError:  # unhashable cells (lists): not a subject-level value
            continue
        if not np.array_equal(vcodes, np.repeat(vcodes[starts], counts)):
            continue
        v = values.iloc[first].reset_index(drop=True)
        if isinstance(v.dtype, pd.CategoricalDtype):
            v = v.cat.remove_unused_categories()
        v.index = obs.index
        obs[col] = v
    return obs


# -- sources: where the rows come from --------------------------------------------------------


class _Source:
    """Rows of features by index, their obs columns, and provenance."""

    kind = what = ""
    path = None
    row_bytes = 0  # bytes per row held besides the dense float64 block
    record: dict = {}
    varm: dict = {}
    var: pd.DataFrame
    n_rows: int
    columns: list[str]

    def column(self, name: str) -> pd.Series:
        raise NotImplementedError

    def read(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted) as dense float64."""
        raise NotImplementedError

    def read_block(self, idx: np.ndarray):
        """Rows ``idx`` (sorted) as float64: CSR when the source holds them sparse, else dense."""
        return self.read(idx)

    def close(self) -> None:
        pass


class _TableSource(_Source):
    """A FeatureTable in memory, or an .h5ad opened backed (rows read in contiguous runs)."""

    def __init__(self, adata: ad.AnnData, path=None):
        if adata.X is None:
            raise InputError(f"features{'=' + str(path) if path else ''}: the AnnData has no X; "
                             "expected a FeatureTable from bioviz.encode")
        self.adata, self.path = adata, path
        self.kind, self.what = ("h5ad", f"FeatureTable {path}") if path else ("feature_table",
                                                                                "FeatureTable")
        self.n_rows = adata.n_obs
        self.columns = list(adata.obs.columns)
        self.var = adata.var.copy()
        self.varm = {k: np.asarray(v) for k, v in adata.varm.items()}  # the decoder
        self.record = dict(adata.uns.get("bioviz", {}))

    def column(self, name):
        return self.adata.obs[name]

    def _rows(self, idx):
        X = self.adata.X
        if self.path is not None:  # backed: slices read only their rows (and short gaps)
            parts = [X[a:b][idx[np.searchsorted(idx, a):np.searchsorted(idx, b)] - a]
                     for a, b in _runs(idx, gap=16)]
            return sp.vstack(parts) if sp.issparse(parts[0]) else np.concatenate(parts)
        if idx[-1] - idx[0] + 1 == len(idx):  # a slice: much faster than fancy indexing
            return X[idx[0]:idx[-1] + 1]
        return X[idx]

    def read(self, idx):
        block = self._rows(idx)
        return block.toarray().astype(np.float64) if sp.issparse(block) else np.asarray(
            block, dtype=np.float64)

    def read_block(self, idx):
        block = self._rows(idx)
        return sp.csr_matrix(block, dtype=np.float64) if sp.issparse(block) else np.asarray(
            block, dtype=np.float64)

    def close(self):
        if self.path is not None:
            self.adata.file.close()


class _StoreSource(_Source):
    """Rows of an activation store layer: raw, or encoded by an SAE a batch at a time."""

    def __init__(self, store, layer, record, sae=None, batch_size=8192, device=None):
        import pyarrow.parquet as pq

        from ..store.format import OBS

        self.store, self.layer, self.sae = store, layer, sae
        self.arr = store.array(layer)
        self.n_rows = store.n_rows
        self.columns = list(pq.ParquetFile(store.path / OBS).schema_arrow.names)
        self.record = record
        self.kind = "sae" if sae is not None else "store"
        self.what = f"store {store.path}"
        d = int(self.arr.shape[1])
        if sae is None:
            self.var = pd.DataFrame(index=[f"a{i}" for i in range(d)])
        else:
            import torch

            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.sae = sae.to(self.device).eval()
            self.batch_size = int(batch_size)
            self.var = pd.DataFrame(index=[f"f{i}" for i in range(sae.d_sae)])
            self.varm = {"decoder": sae.W_dec.detach().cpu().numpy()}
            self.row_bytes = 8 * d  # the raw rows, as read and as float32 on the device

    def column(self, name):
        return self.store.read_obs([name])[name]

    def read(self, idx):
        rows = _gather(self.store, self.layer, self.arr, idx)
        if self.sae is None:
            return rows.astype(np.float64)
        return self._codes(rows).toarray()

    def read_block(self, idx):
        if self.sae is None:
            return self.read(idx)
        return self._codes(_gather(self.store, self.layer, self.arr, idx))

    def _codes(self, rows):
        """The SAE's codes of ``rows``, a batch at a time, as one CSR float64 matrix."""
        import torch

        parts = []
        with torch.inference_mode():
            for s in range(0, len(rows), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(rows[s:s + self.batch_size]))
                parts.append(self.sae.encode_sparse(x.to(self.device, torch.float32)).to_scipy())
        return sp.csr_matrix(sp.vstack(parts), dtype=np.float64)


def _gather(store, layer: str, arr, idx: np.ndarray) -> np.ndarray:
    """Store rows ``idx`` (sorted): a slice when contiguous, else zarr's orthogonal selection
    (each chunk touched is decoded once). Rows reading as NaN throughout are the fill value
    of a lost chunk, never data."""
    if idx[-1] - idx[0] + 1 == len(idx):
        return store._read(layer, arr, int(idx[0]), int(idx[-1]) + 1)  # checks its chunks
    from ..store.format import StoreError

    try:
        rows = arr.get_orthogonal_selection((idx, slice(None)))
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise StoreError(f"{store.path}: layer {layer!r} rows {_listed(idx)} cannot be read "
                         f"({type(e).__name__}: {e}); run `bioviz info --verify`") from None
    lost = np.isnan(rows).all(1) if rows.shape[1] else np.zeros(len(rows), bool)
    if lost.any():
        raise StoreError(f"{store.path}: layer {layer!r} rows {_listed(idx[lost])} read as NaN "
                         "throughout: their chunk file went missing or was altered; the store "
                         "is damaged (`bioviz info --verify` names the chunks)")
    return rows


def _runs(idx: np.ndarray, gap: int = 0) -> list[tuple[int, int]]:
    """Sorted indices as ``(start, stop)`` runs, bridging gaps of up to ``gap`` rows (one
    read of a few unwanted sparse rows costs less than one read per row)."""
    cut = np.flatnonzero(np.diff(idx) > gap + 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(idx, cut)]


def _open_source(features, sae, store, layer, batch_size, device, allow_mismatch) -> _Source:
    given = [n for n, v in (("features", features), ("sae", sae)) if v is not None]
    if len(given) > 1:
        raise InputError("give either features= (a FeatureTable) or sae= (to encode a store), "
                         "not both")
    if features is not None:
        if store is not None or layer is not None:
            raise InputError("features= is a FeatureTable already encoded from its store; "
                             "store= and layer= go with sae= (or alone, for raw activations)")
        return _table_source(features)
    if sae is not None:
        from ..features import open_target, provenance_record

        sae, store, layer, target = open_target(sae, store, layer, allow_mismatch)
        return _StoreSource(store, layer, provenance_record(sae, store, layer, target), sae,
                            batch_size, device)
    if store is None:
        raise InputError("nothing to aggregate: give features= (a FeatureTable or its .h5ad), "
                         "sae= (an SAE, to encode its store), or store= (raw activations)")
    from ..checksum import digest
    from ..store import ActivationStore

    if not isinstance(store, ActivationStore):
        store = ActivationStore(store)
    layer = store.resolve_layer(layer)
    rec = {"layer": layer, "store": str(store.path), "store_n_rows": store.n_rows,
           "store_manifest_blake2b": digest(store.manifest)}
    return _StoreSource(store, layer, rec)


def _table_source(features) -> _TableSource:
    if isinstance(features, ad.AnnData):
        return _TableSource(features)
    from ..features import open_feature_table

    return _TableSource(open_feature_table(features), Path(features))


# -- back into the user's AnnData -------------------------------------------------------------


def to_obsm(adata: ad.AnnData, table: ad.AnnData, *, key: str = "X_sae", on: str | None = None,
            columns=(), layer: str | None = None) -> None:
    """Write a per-row aggregate into ``adata``: ``obsm[key]`` aligned with its cells.

    Parameters
    ----------
    adata
        The user's AnnData (cells, spots, patches...), changed in place.
    table
        An :func:`aggregate` output keyed by something ``adata`` has: its obs_names (e.g.
        ``aggregate(ft, by="cell_id")``), or the column ``on``.
    key
        The ``obsm`` key; the feature names go to ``uns[f"{key}_features"]``.
    on
        The ``adata.obs`` column matching ``table.obs_names`` (default: ``adata.obs_names``).
        Need not be unique: ``on="subject_id"`` gives every cell its subject's row.
    columns
        Features also copied to ``adata.obs[f"sae_{name}"]``, which scanpy's plots colour by.
    layer
        Which stat of ``table`` (default: its ``X``, the first stat).

    Warns
    -----
    UserWarning
        Rows of ``adata`` with no row in ``table`` (they get NaN), and rows of ``table`` that
        match nothing in ``adata``, with their counts.

    Raises
    ------
    InputError
        No key in common (the message shows examples of both), ``on`` or a feature of
        ``columns`` unknown, or ``layer`` not a layer of ``table``.

    Examples
    --------
    >>> cells = aggregate(ft, by="cell_id", stats=("max",))               # doctest: +SKIP
    >>> to_obsm(adata, cells, columns=["f12"])                            # doctest: +SKIP
    >>> sc.pl.umap(adata, color="sae_f12")                                 # doctest: +SKIP
    """
    if on is None:
        keys = pd.Index(adata.obs_names.astype(str))
        side = "adata.obs_names"
    else:
        if on not in adata.obs.columns:
            raise InputError(f"on={on!r} is not a column of adata.obs; its columns are "
                             f"{', '.join(map(str, adata.obs.columns))}")
        keys = pd.Index(adata.obs[on].astype(str))
        side = f"adata.obs[{on!r}]"
    if layer is not None and layer not in table.layers:
        raise InputError(f"layer={layer!r} is not a layer of the table; it has "
                         f"{', '.join(table.layers.keys())}")
    names = pd.Index(table.var_names.astype(str))
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise InputError(f"columns: {_listed(unknown)} not features of the table (it has "
                         f"{_listed(names)})")
    tkeys = pd.Index(table.obs_names.astype(str))
    if not tkeys.is_unique:
        raise InputError(f"the table's obs_names repeat ({_listed(tkeys[tkeys.duplicated()])}); "
                         "use an aggregate() output, one row per key")
    pos = tkeys.get_indexer(keys)
    hit = pos >= 0
    if not hit.any():
        raise InputError(f"no row of the table matches {side}: the table's keys look like "
                         f"{_listed(tkeys)}, {side} like {_listed(keys.unique())}; pass on= "
                         "naming the adata.obs column that holds the table's keys")
    if not hit.all():
        warnings.warn(f"{(~hit).sum()} of {len(keys)} rows of adata have no row in the table "
                      f"(e.g. {_listed(keys[~hit].unique())}); they get NaN in obsm[{key!r}]",
                      stacklevel=2)
    unused = (~tkeys.isin(keys)).sum()
    if unused:
        warnings.warn(f"{unused} of {len(tkeys)} rows of the table match no row of adata "
                      f"(e.g. {_listed(tkeys[~tkeys.isin(keys)])})", stacklevel=2)
    src = table.X if layer is None else table.layers[layer]
    src = src.toarray() if sp.issparse(src) else np.asarray(src)
    mat = np.full((len(keys), src.shape[1]), np.nan)
    mat[hit] = src[pos[hit]]
    adata.obsm[key] = mat
    adata.uns[f"{key}_features"] = list(names)
    for c in columns:
        adata.obs[f"sae_{c}"] = mat[:, names.get_loc(c)]


def _listed(items, k: int = 5) -> str:
    """Up to ``k`` items, then how many more."""
    items = list(items)
    shown = ", ".join(map(str, items[:k]))
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")
