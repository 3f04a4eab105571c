"""Single-cell adapters: what Geneformer- and scGPT-style adapters share.

Input is an AnnData, in memory or an ``.h5ad`` read *backed* (rows are read from disk a
batch at a time, so a cohort larger than memory extracts with bounded memory). Before any
model runs, :meth:`SingleCellAdapter.dataset` checks the cohort and says clearly what is
wrong: duplicate cell or gene names, genes that do not map to the model's vocabulary (a
cohort where most do not map is an error), cells with no mappable expression, and an
expression matrix that is not what the model was trained on (log-normalised or scaled
values where counts are needed).

Rows (``rows=``): ``"cell"`` (one per cell: the ``<cls>`` token or the mean over gene
tokens, ``pooling=``), ``"gene"`` (one per gene token, with the gene in obs), or ``"both"``
(each batch's cell rows then its gene rows, told apart by obs ``row_type``). Every row's
obs has ``subject_id``/``sample_id`` (from the obs columns named by ``subject_key``/
``sample_key``) and ``cell_id``; gene rows add ``gene_id`` (the model's vocabulary key),
``gene`` (the cohort's own identifier) and ``token_index`` (position in the model input).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from bioviz.adapter import Adapter, Batch
from bioviz.checksum import digest
from bioviz.errors import InputError

from .genes import GeneMapping, map_genes
from .source import CellSource, Survey, survey

log = logging.getLogger(__name__)

ROWS = ("cell", "gene", "both")
EXPRESSION = ("counts", "log1p", "normalized")


# -- the adapter ------------------------------------------------------------------------------


class _Cells(torch.utils.data.Dataset):
    """Items are cell indices; the adapter's ``collate`` reads a batch of them at once."""

    def __init__(self, cells: np.ndarray):
        self.cells = cells

    def __len__(self):
        return len(self.cells)

    def __getitem__(self, i):
        return int(self.cells[i])


class SingleCellAdapter(Adapter):
    """Shared base. Subclasses set up the model and vocabulary and implement
    :meth:`_vocabulary`, :meth:`_check_expression` and :meth:`_encode`."""

    name = "singlecell"
    has_cls = True
    gene_upper = False
    gene_order = "first"

    def __init__(self, *, subject_key=None, sample_key=None, cell_key=None, obs_columns=(),
                 rows="cell", pooling="cls", layer=None, use_raw=False, gene_key=None, gene_map=None,
                 min_mapped_fraction=0.5, empty_cells="error", duplicate_genes="error"):
        if rows not in ROWS:
            raise InputError(f"rows={rows!r}: expected one of {ROWS}")
        if pooling not in ("cls", "mean"):
            raise InputError(f"pooling={pooling!r}: expected 'cls' or 'mean'")
        if pooling == "cls" and not self.has_cls and rows != "gene":
            raise InputError(f"pooling='cls': this {self.name} model has no <cls> token; use pooling='mean'")
        if empty_cells not in ("error", "drop"):
            raise InputError(f"empty_cells={empty_cells!r}: expected 'error' or 'drop'")
        if not 0 <= float(min_mapped_fraction) <= 1:
            raise InputError(f"min_mapped_fraction={min_mapped_fraction!r}: expected a number in [0, 1]")
        self.subject_key, self.sample_key, self.cell_key = subject_key, sample_key, cell_key
        self.obs_columns = list(obs_columns)
        self.rows_mode, self.pooling = rows, pooling
        self.layer, self.use_raw = layer, use_raw
        self.gene_key, self.gene_map = gene_key, gene_map
        self.min_mapped_fraction = float(min_mapped_fraction)
        self.empty_cells, self.duplicate_genes = empty_cells, duplicate_genes
        self.source: CellSource | None = None
        self.genes: GeneMapping | None = None
        self.report: dict = {}
        self._data: dict[str, str] = {}
        self._dropped: list[dict] = []

    # subclass hooks ----------------------------------------------------------------------

    def _vocabulary(self) -> set:
        raise NotImplementedError

    def _check_expression(self, s: Survey, where: str) -> None:
        raise NotImplementedError

    def _transform(self):
        """Elementwise function applied to stored values before tokenising (or None)."""
        return None

    def _encode(self, expr: sp.csr_matrix, cells: np.ndarray) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Vocabulary-gene expression of a batch → ``(model inputs, attention mask [B, T],
        gene index per position [B, T] (-1 for special and padding tokens), value per
        position or None)``."""
        raise NotImplementedError

    # the cohort ----------------------------------------------------------------------------

    def dataset(self, data):
        src = CellSource(data, layer=self.layer, use_raw=self.use_raw)
        where = f"{src.where} ({src.matrix_name})"
        if src.shape[0] == 0:
            raise InputError(f"{where} has no cells")
        self.meta = self._cell_meta(src)
        ids = self._identifiers(src)
        self.genes = map_genes(ids, self._vocabulary(), gene_map=self.gene_map, upper=self.gene_upper,
                               where=where, min_mapped_fraction=self.min_mapped_fraction,
                               duplicate_genes=self.duplicate_genes, order=self.gene_order)
        s = survey(src, self.genes.cols, self._transform())
        self._check_finite(s, src, where)
        self._check_expression(s, where)
        self.totals = s.totals
        empty = np.flatnonzero(s.n_mapped == 0)
        if len(empty) and self.empty_cells == "error":
            names = self.meta["cell_id"].iloc[empty[:5]].tolist()
            raise InputError(
                f"{where}: {len(empty)} cells have no expressed gene that the model knows "
                f"(first: {names}); filter them out, or pass empty_cells='drop' to skip them"
            )
        cells = np.setdiff1d(np.arange(src.shape[0]), empty)
        self._dropped = [{"row": int(i) + 1, "sample_id": str(self.meta["sample_id"].iloc[i]),
                          "cell_id": str(self.meta["cell_id"].iloc[i]),
                          "reason": f"no expressed gene that the model knows (empty_cells='drop'; {where})"}
                         for i in empty]
        # what the store is made from: values as read, the metadata that goes into obs, and
        # which data columns feed which vocabulary gene (and the identifier shown for it)
        g = self.genes
        self._data = {"expression": s.checksum, "obs": digest(self.meta),
                      "genes": digest([g.genes, g.cols, g.col_gene, g.labels])}
        self.source = src
        self.report = {**self.genes.summary(), "n_cells": int(src.shape[0]),
                       "n_empty_cells_dropped": int(len(empty)), "expression_looks": s.kind,
                       "matrix": src.matrix_name}
        log.info("%s: %s", where, self.report)
        return _Cells(cells)

    def _check_finite(self, s: Survey, src: CellSource, where: str) -> None:
        if not s.n_nonfinite:
            return
        cells = self.meta["cell_id"].iloc[s.nonfinite_cells[:3]].tolist()
        genes = [str(g) for g in src.var_names[s.nonfinite_genes[:3]]]
        raise InputError(
            f"{where}: {len(s.nonfinite_cells)} cells and {len(s.nonfinite_genes)} genes have NaN or Inf "
            f"values ({s.n_nonfinite} values; first cells: {cells}, first genes: {genes}); a cell's "
            "tokens are computed from its values and totals, so these cells would get meaningless "
            "tokens: fix or remove them (or the genes) before extracting"
        )

    def data_checksums(self, dataset) -> dict[str, str]:
        """``expression`` (the matrix as read: every value, streamed in the checks pass),
        ``obs`` (subject, sample, cell and ``obs_columns`` of every cell) and ``genes`` (the
        mapping of data columns onto the vocabulary)."""
        return dict(self._data)

    def skipped_items(self, batch: Batch | None = None) -> list[dict]:
        """The cells dropped with ``empty_cells='drop'`` (``row``: the cell's 1-based position)."""
        return list(self._dropped) if batch is None else []

    def _identifiers(self, src: CellSource):
        if self.gene_key is None:
            return src.var_names
        if self.gene_key not in src.var.columns:
            raise InputError(f"{src.where}: var has no column {self.gene_key!r} "
                             f"(gene_key=; columns: {list(src.var.columns)})")
        return src.var[self.gene_key].astype(str)

    def _cell_meta(self, src: CellSource) -> pd.DataFrame:
        obs = src.obs
        where = src.where

        def column(key, what):
            if key not in obs.columns:
                raise InputError(f"{where}: obs has no column {key!r} ({what}=; columns: {list(obs.columns)})")
            col = obs[key]
            if col.isna().any():
                raise InputError(f"{where}: obs column {key!r} ({what}) has {int(col.isna().sum())} missing values")
            return col.astype(str).to_numpy()

        cell_ids = column(self.cell_key, "cell_key") if self.cell_key else obs.index.astype(str).to_numpy()
        dup = pd.Index(cell_ids)
        dup = dup[dup.duplicated()].unique()
        if len(dup):
            raise InputError(f"{where}: {len(dup)} cell names occur more than once (first: {list(dup[:5])}); "
                             "make them unique (adata.obs_names_make_unique()) or pass cell_key=")
        if self.subject_key is None:
            log.warning("%s: no subject_key given, so every cell counts as its own subject; name the "
                        "obs column with the donor/patient to aggregate correctly", where)
            subject = cell_ids
        else:
            subject = column(self.subject_key, "subject_key")
        sample = column(self.sample_key, "sample_key") if self.sample_key else subject
        meta = pd.DataFrame({"subject_id": subject, "sample_id": sample, "cell_id": cell_ids})
        for c in self.obs_columns:
            if c not in obs.columns:
                raise InputError(f"{where}: obs has no column {c!r} (obs_columns=)")
            meta[c] = obs[c].to_numpy()
        return meta

    # batches -------------------------------------------------------------------------------

    def collate(self, items) -> Batch:
        cells = np.asarray(items, dtype=np.int64)
        block = self.source.read_cells(cells)
        transform = self._transform()
        if transform is not None:
            block.data = transform(block.data)
        expr = self.genes.aggregate(block)
        inputs, mask, gene, value = self._encode(expr, cells)
        meta = self.meta.iloc[cells].reset_index(drop=True)
        meta["n_gene_tokens"] = (gene >= 0).sum(1).numpy().astype(np.int32)
        extra = {"mask": mask, "gene": gene}
        if value is not None:
            extra["value"] = value
        return Batch(inputs, meta, extra)

    def rows(self, layer, activation, batch):
        if activation.ndim != 3:
            raise InputError(f"layer {layer!r} gives shape {tuple(activation.shape)}; single-cell rows "
                             "need [cells, tokens, d] (hook a transformer layer)")
        if activation.shape[1] != batch.extra["gene"].shape[1]:
            raise InputError(f"layer {layer!r} has {activation.shape[1]} positions but the input has "
                             f"{batch.extra['gene'].shape[1]} tokens")
        parts = []
        if self.rows_mode in ("cell", "both"):
            parts.append(self._cell_rows(activation, batch))
        if self.rows_mode in ("gene", "both"):
            parts.append(self._gene_rows(activation, batch))
        if len(parts) == 1:
            return parts[0]
        for (_, o), kind in zip(parts, ("cell", "gene")):
            o.insert(3, "row_type", kind)
        cell_obs, gene_obs = parts[0][1], parts[1][1]
        for col, fill in (("gene_id", ""), ("gene", ""), ("token_index", -1)):
            cell_obs[col] = np.full(len(cell_obs), fill, dtype=gene_obs[col].dtype)
        if "value" in gene_obs:
            cell_obs["value"] = np.float32(np.nan)
        return torch.cat([parts[0][0], parts[1][0]]), pd.concat([cell_obs, gene_obs], ignore_index=True)

    def _cell_rows(self, act, batch):
        if self.pooling == "cls":
            return act[:, 0], batch.meta.copy()
        genes = (batch.extra["gene"] >= 0).to(act.device, act.dtype).unsqueeze(-1)
        return (act * genes).sum(1) / genes.sum(1).clamp_min(1), batch.meta.copy()

    def _gene_rows(self, act, batch):
        gene = batch.extra["gene"].to(act.device)
        item, pos = (gene >= 0).nonzero(as_tuple=True)
        rows = act[item, pos]
        obs = batch.meta.iloc[item.cpu().numpy()].reset_index(drop=True)
        g = gene[item, pos].cpu().numpy()
        obs["gene_id"] = np.asarray(self.genes.genes, dtype=object)[g]
        obs["gene"] = np.asarray(self.genes.labels, dtype=object)[g]
        obs["token_index"] = pos.cpu().numpy().astype(np.int32)
        if "value" in batch.extra:
            obs["value"] = batch.extra["value"].to(act.device)[item, pos].cpu().numpy().astype(np.float32)
        return rows, obs

    def config(self) -> dict:
        return {"adapter": type(self).__name__, "rows": self.rows_mode, "pooling": self.pooling,
                "layer": self.layer, "use_raw": self.use_raw, "gene_key": self.gene_key,
                "subject_key": self.subject_key, "sample_key": self.sample_key, "genes": self.report}


def padded(seqs: list[np.ndarray], pad: int, dtype=torch.long) -> torch.Tensor:
    """Right-pad 1-D arrays to the longest into a [B, T] tensor."""
    t = max(len(s) for s in seqs)
    out = torch.full((len(seqs), t), pad, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(s, dtype=dtype)
    return out
