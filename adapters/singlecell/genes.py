"""Gene identifiers of a cohort mapped onto a model's vocabulary.

Identifiers are Ensembl IDs or symbols; ``gene_map`` (a dict, DataFrame or TSV/CSV/JSON
table) translates the cohort's identifiers to the model's first. Genes that do not map are
counted and reported; a cohort where fewer than ``min_mapped_fraction`` map is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioviz.errors import InputError

from .dicts import load_mapping

log = logging.getLogger(__name__)


# -- genes: cohort identifiers to the model's vocabulary ------------------------------------


@dataclass
class GeneMapping:
    """Which data columns feed which vocabulary gene.

    ``genes`` is the ordered list of vocabulary keys used; ``cols`` the data columns that
    feed them, ``col_gene`` the position in ``genes`` each of those columns feeds (several
    columns feeding one gene are summed, as Geneformer collapses duplicate Ensembl IDs).
    """

    genes: list[str]
    cols: np.ndarray
    col_gene: np.ndarray
    labels: list[str]  # the cohort's identifier shown for each gene (first column feeding it)
    n_genes: int
    unmapped: list[str] = field(default_factory=list)
    n_collapsed: int = 0

    @property
    def n_mapped(self) -> int:
        return len(self.cols)

    def summary(self) -> dict:
        return {"n_genes": self.n_genes, "n_mapped": self.n_mapped, "n_unmapped": len(self.unmapped),
                "n_vocabulary_genes": len(self.genes), "n_collapsed": self.n_collapsed}

    def aggregate(self, block: sp.csr_matrix) -> sp.csr_matrix:
        """Data columns → vocabulary genes (column ``j`` is ``genes[j]``)."""
        sub = block[:, self.cols]
        if self.n_collapsed:
            sub = sub @ self._summing
        sub = sp.csr_matrix(sub)
        sub.eliminate_zeros()
        sub.sort_indices()
        return sub

    @property
    def _summing(self) -> sp.csr_matrix:
        n = len(self.cols)
        return sp.csr_matrix((np.ones(n), (np.arange(n), self.col_gene)), shape=(n, len(self.genes)))


def map_genes(identifiers, vocabulary, *, gene_map=None, upper: bool = False, where: str,
              min_mapped_fraction: float = 0.5, duplicate_genes: str = "error",
              order: str = "first") -> GeneMapping:
    """Map the cohort's gene identifiers onto ``vocabulary`` (keys the model knows).

    ``gene_map`` (dict, DataFrame or TSV/CSV/JSON path) translates identifiers first (e.g.
    symbols → Ensembl IDs); identifiers it does not list are tried as they are. ``upper``
    compares upper-cased (Geneformer upper-cases Ensembl IDs before its look-up). ``order="collapsed_last"``
    puts genes fed by several columns after all others, in order of first appearance, as
    Geneformer's tokenizer lays out its deduplicated matrix (this decides ties in ranking).
    """
    if duplicate_genes not in ("error", "sum"):
        raise InputError(f"duplicate_genes={duplicate_genes!r}: expected 'error' or 'sum'")
    ids = pd.Index([str(g) for g in identifiers])
    dup = ids[ids.duplicated()].unique()
    if len(dup) and duplicate_genes == "error":
        raise InputError(
            f"{where}: {len(dup)} gene identifiers occur more than once (first: {list(dup[:5])}); "
            "make them unique, or pass duplicate_genes='sum' to add up their counts"
        )
    mapping = load_mapping(gene_map, what="gene_map", value_type=str) if gene_map is not None else {}
    vocab = {(k.upper() if upper else k): k for k in vocabulary}
    keys = []
    for g in ids:
        k = mapping.get(g, g)
        keys.append(vocab.get(k.upper() if upper else k))
    mapped = np.array([k is not None for k in keys])
    unmapped = [str(g) for g, k in zip(ids, keys) if k is None]
    frac = mapped.mean() if len(ids) else 0.0
    if frac < min_mapped_fraction:
        hint = ("; are these symbols where the model wants Ensembl IDs (or the reverse)? pass "
                "gene_map= (a table from your identifiers to the model's) or gene_key= (the var "
                "column holding the right identifiers)")
        raise InputError(
            f"{where}: only {mapped.sum()} of {len(ids)} genes ({frac:.0%}) map to the model's "
            f"vocabulary of {len(vocab)} genes (need at least {min_mapped_fraction:.0%}); "
            f"unmapped examples: {unmapped[:5]}{hint}"
        )
    if unmapped:
        log.warning("%s: %d of %d genes do not map to the model's vocabulary and are left out "
                    "(first: %s)", where, len(unmapped), len(ids), unmapped[:5])
    cols = np.flatnonzero(mapped)
    col_keys = [keys[c] for c in cols]
    counts = pd.Series(col_keys).value_counts()
    multi = set(counts.index[counts > 1])
    if order == "collapsed_last":
        genes = [k for k in col_keys if k not in multi] + list(dict.fromkeys(k for k in col_keys if k in multi))
    else:
        genes = list(dict.fromkeys(col_keys))
    pos = {k: i for i, k in enumerate(genes)}
    col_gene = np.array([pos[k] for k in col_keys], dtype=np.int64)
    labels = [""] * len(genes)
    for c, k in zip(cols, col_keys):
        if not labels[pos[k]]:
            labels[pos[k]] = str(ids[c])
    if multi:
        log.info("%s: %d vocabulary genes are fed by several columns; their values are summed", where, len(multi))
    return GeneMapping(genes, cols, col_gene, labels, len(ids), unmapped, len(multi))
