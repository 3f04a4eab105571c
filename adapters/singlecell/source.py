"""Reading a single-cell cohort's expression matrix, and the checks pass over it.

:class:`CellSource` gives rows of ``X``, a layer or ``raw.X`` of an AnnData in memory or of an
``.h5ad`` read through h5py (backed: one slice at a time, reopened in each worker process).
:func:`survey` reads the matrix once in chunks and reports what the values look like
(counts, log-normalised, scaled) and each cell's totals, with bounded memory.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bioviz.errors import InputError

log = logging.getLogger(__name__)
SURVEY_CHUNK = 4096  # cells read at a time by the checks pass: bounds its memory


# -- the cohort's expression matrix ----------------------------------------------------------


def _anndata_io():
    try:
        from anndata.io import read_elem, sparse_dataset
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem, sparse_dataset
    return read_elem, sparse_dataset


class CellSource:
    """Rows of one expression matrix of an AnnData (``X``, a layer, or ``raw.X``).

    An ``.h5ad`` path (or a backed AnnData) is read through h5py one slice at a time and
    reopened lazily in each process (h5py handles cannot cross a fork); an in-memory
    AnnData is sliced directly.
    """

    def __init__(self, data, layer: str | None = None, use_raw: bool = False):
        import anndata as ad

        if layer is not None and use_raw:
            raise InputError("pass layer= or use_raw=True, not both")
        self.layer, self.use_raw = layer, use_raw
        self.matrix_name = "raw.X" if use_raw else (f"layers[{layer!r}]" if layer else "X")
        self._adata, self._handle, self._pid = None, None, None
        if isinstance(data, (str, Path)):
            self.path = Path(data)
            if not self.path.is_file():
                raise FileNotFoundError(f"single-cell data: {self.path} does not exist")
            if self.path.suffix != ".h5ad":
                raise InputError(f"single-cell data: {self.path} is not an .h5ad file")
        elif isinstance(data, ad.AnnData):
            self.path = Path(data.filename) if data.isbacked else None
            if self.path is None:
                self._adata = data
        else:
            raise TypeError(
                f"single-cell data: expected an AnnData or an .h5ad path, got {type(data).__name__}"
            )
        self.where = str(self.path) if self.path else "the AnnData (in memory)"
        if self.path is not None:
            self._open_metadata()
        else:
            self._memory_metadata()

    # metadata ----------------------------------------------------------------------------

    def _memory_metadata(self):
        a = self._adata
        self.obs = a.obs
        if self.use_raw:
            if a.raw is None:
                raise InputError(f"{self.where} has no .raw; drop use_raw=True")
            self.var_names, self.var = a.raw.var_names, a.raw.var
            matrix = a.raw.X
        elif self.layer is not None:
            if self.layer not in a.layers:
                raise InputError(f"{self.where} has no layer {self.layer!r} (layers: {list(a.layers)})")
            self.var_names, self.var = a.var_names, a.var
            matrix = a.layers[self.layer]
        else:
            self.var_names, self.var = a.var_names, a.var
            matrix = a.X
        if matrix is None:
            raise InputError(f"{self.where}: {self.matrix_name} is empty")
        if sp.issparse(matrix) and matrix.format != "csr":
            # rows of a CSC matrix are scattered; one conversion beats one per batch
            log.info("converting %s of %s to CSR for row access", self.matrix_name, self.where)
            matrix = sp.csr_matrix(matrix)
        self._matrix = matrix
        self.shape = (len(self.obs), len(self.var_names))

    def _open_metadata(self):
        import h5py

        read_elem, _ = _anndata_io()
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:  # not HDF5 at all, or truncated before its superblock
            raise InputError(f"single-cell data: {self.path} is not a readable HDF5 file, so not an "
                             f".h5ad ({e}); write it with AnnData.write_h5ad") from None
        with f:
            key = self._key()
            var_key = "raw/var" if self.use_raw else "var"
            missing = [k for k in ("obs", var_key) if k not in f]
            if missing:
                raise InputError(f"{self.where} is an HDF5 file but not an AnnData: no "
                                 f"{' or '.join(missing)} (write it with AnnData.write_h5ad)")
            if key not in f:
                raise InputError(f"{self.where} has no {self.matrix_name}")
            try:
                self.obs = read_elem(f["obs"])
                var = read_elem(f[var_key])
                enc = f[key].attrs.get("encoding-type", "array")
            except (OSError, KeyError, ValueError, TypeError) as e:  # truncated or damaged
                raise InputError(f"{self.where}: cannot read obs/var/{self.matrix_name} ({type(e).__name__}: "
                                 f"{e}); the file is damaged or incomplete") from None
            if isinstance(enc, bytes):
                enc = enc.decode()
            if enc == "csc_matrix":
                raise InputError(
                    f"{self.where}: {self.matrix_name} is stored column-major (CSC), which cannot be "
                    "read one cell at a time; rewrite it as CSR (adata.X = adata.X.tocsr(); write_h5ad)"
                )
        self.var, self.var_names = var, var.index
        self.shape = (len(self.obs), len(self.var_names))

    def _key(self) -> str:
        return "raw/X" if self.use_raw else (f"layers/{self.layer}" if self.layer else "X")

    # reading ------------------------------------------------------------------------------

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None
        return state

    def _file_matrix(self):
        import os

        import h5py

        if self._handle is None or self._pid != os.getpid():
            _, sparse_dataset = _anndata_io()
            f = h5py.File(self.path, "r")
            elem = f[self._key()]
            self._handle = (f, sparse_dataset(elem) if isinstance(elem, h5py.Group) else elem)
            self._pid = os.getpid()
        return self._handle[1]

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        """Cells ``[start, stop)`` as a CSR matrix (float64, explicit zeros removed)."""
        m = self._matrix if self.path is None else self._file_matrix()
        block = m[start:stop]
        block = sp.csr_matrix(block, dtype=np.float64) if not sp.issparse(block) else block.tocsr().astype(np.float64)
        block.eliminate_zeros()
        block.sort_indices()
        return block

    def read_cells(self, cells: np.ndarray) -> sp.csr_matrix:
        """The given cells (ascending indices), read as one contiguous span."""
        lo, hi = int(cells[0]), int(cells[-1]) + 1
        block = self.read(lo, hi)
        if hi - lo != len(cells):
            block = block[cells - lo]
        return block

    def close(self):
        if self._handle is not None:
            self._handle[0].close()
            self._handle = None


# -- the checks pass --------------------------------------------------------------------------


@dataclass
class Survey:
    """One chunked pass over the matrix: what the values look like, per-cell totals."""

    totals: np.ndarray  # per-cell sum over all genes (after ``transform``)
    n_mapped: np.ndarray  # per-cell count of non-zero mapped genes
    n_negative: int
    n_noninteger: int
    n_values: int
    max_value: float
    #: blake2b of the matrix as read (CSR, float64, explicit zeros dropped): what the data is
    checksum: str = ""
    #: cells (row indices) and genes (column indices) holding NaN or Inf, and how many values
    nonfinite_cells: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    nonfinite_genes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n_nonfinite: int = 0

    @property
    def kind(self) -> str:
        if self.n_negative:
            return "scaled"
        if self.n_noninteger == 0:
            return "counts"
        return "log-normalised" if self.max_value <= 30 else "normalised"

    def evidence(self) -> str:
        return (f"{self.n_negative} negative and {self.n_noninteger} non-integer of {self.n_values} "
                f"non-zero values, max {self.max_value:.4g}")


def survey(source: CellSource, mapped_cols: np.ndarray, transform=None, chunk: int = SURVEY_CHUNK,
           progress: bool = True) -> Survey:
    n = source.shape[0]
    is_mapped = np.zeros(source.shape[1], dtype=bool)
    is_mapped[mapped_cols] = True
    totals = np.zeros(n)
    n_mapped = np.zeros(n, dtype=np.int64)
    neg = nonint = nvals = nonfinite = 0
    vmax = 0.0
    bad_cells, bad_genes = [], np.zeros(source.shape[1], dtype=bool)
    # per-cell lengths, column indices and values, each hashed on its own so that the
    # checksum does not depend on the chunk size
    hashes = [hashlib.blake2b(digest_size=16) for _ in range(3)]
    starts = range(0, n, chunk)
    if progress and n > 20 * chunk:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"checking {source.where}", unit="chunk")
    for s in starts:
        block = source.read(s, min(s + chunk, n))
        d = block.data
        for hs, part in zip(hashes, (np.diff(block.indptr).astype(np.int64), block.indices.astype(np.int64),
                                     np.ascontiguousarray(d, dtype=np.float64))):
            hs.update(part.tobytes())
        bad = ~np.isfinite(d)
        if bad.any():
            nonfinite += int(bad.sum())
            rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
            bad_cells.append(np.unique(rows[bad]) + s)
            bad_genes[block.indices[bad]] = True
            d = d[~bad]  # the other checks look at the finite values
        nvals += d.size
        neg += int((d < 0).sum())
        nonint += int((np.abs(d - np.round(d)) > 1e-6 * np.maximum(1.0, np.abs(d))).sum())
        vmax = max(vmax, float(d.max()) if d.size else 0.0)
        if transform is not None:
            block.data = transform(block.data)
        totals[s:s + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
        hits = is_mapped[block.indices].astype(np.int64)
        n_mapped[s:s + block.shape[0]] = np.add.reduceat(np.append(hits, 0), block.indptr[:-1]) * (np.diff(block.indptr) > 0)
    cells = np.concatenate(bad_cells) if bad_cells else np.zeros(0, np.int64)
    checksum = hashlib.blake2b(f"{source.shape}".encode(), digest_size=16)
    for hs in hashes:
        checksum.update(hs.digest())
    return Survey(totals, n_mapped, neg, nonint, nvals, vmax, checksum.hexdigest(), cells,
                  np.flatnonzero(bad_genes), nonfinite)
