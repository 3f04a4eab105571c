"""Geneformer-style adapter: rank-value encoding into a BERT model loaded from a local directory.

Tokenisation follows Geneformer's ``TranscriptomeTokenizer`` (checked against its source):

1. keep genes that are in the token dictionary (identifiers upper-cased and, with a gene
   map, translated first; several columns mapping to one Ensembl ID are summed, as
   ``collapse_gene_ids=True`` does);
2. per cell, ``x / n_counts * 10_000 / gene_median`` (``n_counts``: the cell's total counts,
   obs ``n_counts`` when present, else the row sum), in float64 with the same operations
   scipy performs on Geneformer's sparse matrix (multiplication by reciprocals);
3. drop zeros, rank the rest descending with ``np.argsort(-x)`` (the same call, so ties fall
   the same way) and map to token ids;
4. V1 (``gc30M`` dictionaries, no ``<cls>``/``<eos>``): truncate to 2048 tokens. V2
   (``gc104M`` dictionaries): truncate to 4094, then ``<cls>`` first and ``<eos>`` last
   (4096 in all). The context is also capped at the model's ``max_position_embeddings``.

The version is read from the token dictionary (``<cls>`` and ``<eos>`` present → V2) unless
``version=`` says otherwise. Cell rows pool like Geneformer's ``EmbExtractor``: the
``<cls>`` position (V2) or the mean over gene tokens, special tokens excluded (V1 default).

Geneformer needs counts. ``expression="log1p"`` accepts log1p of per-cell-normalised counts
(scanpy's ``normalize_total`` + ``log1p``) and undoes the log with ``expm1``: the ranks are then
exactly those of the counts, because ranking within a cell ignores a per-cell scale factor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from bioviz.checksum import digest
from bioviz.errors import InputError

from ..hf import load_hf_model
from .adapter import EXPRESSION, SingleCellAdapter, Survey, padded
from .dicts import load_mapping

log = logging.getLogger(__name__)

TARGET_SUM = 10_000
CONTEXT = {"V1": 2048, "V2": 4096}
SPECIAL = ("<pad>", "<mask>", "<cls>", "<eos>")


def rank_value_encode(values: np.ndarray, tokens: np.ndarray, n_counts: float, medians: np.ndarray,
                      target_sum: float = TARGET_SUM) -> np.ndarray:
    """One cell: expression of its genes → token ids ranked by normalised expression.

    ``values``, ``tokens`` and ``medians`` are aligned per gene (genes in data order);
    returns all non-zero genes' tokens, highest normalised value first (no truncation).
    """
    # the exact float operations scipy performs for Geneformer's ``X / n_counts * 10_000 /
    # medians`` on a sparse matrix (multiplication by reciprocals), so that values tying
    # down to the last bit are ordered as in the original
    norm = np.asarray(values, dtype=np.float64) * (1.0 / float(n_counts)) * float(target_sum) * (1.0 / medians)
    nz = np.flatnonzero(norm)
    return tokens[nz][np.argsort(-norm[nz])]


def finish_sequence(ranked: np.ndarray, version: str, context: int, cls_id=None, eos_id=None) -> np.ndarray:
    """Truncate to the context and add V2's ``<cls>``/``<eos>``."""
    if version == "V2":
        return np.concatenate([[cls_id], ranked[:context - 2], [eos_id]]).astype(np.int64)
    return ranked[:context].astype(np.int64)


def find_dictionary(model_dir: Path, stem: str):
    for suffix in (".json", ".tsv", ".pkl", ".pickle"):
        hits = sorted(model_dir.glob(f"{stem}*{suffix}"))
        if hits:
            return hits[0]
    return None


class GeneformerAdapter(SingleCellAdapter):
    """Geneformer (or any BERT trained on rank-value encodings) over an AnnData cohort.

    ``model_dir``: a transformers directory (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``; ``BertForMaskedLM``, ``BertModel`` or a fine-tuned BERT class).
    ``token_dictionary``/``gene_median``: JSON, TSV or pickle files (pickles go through a
    restricted unpickler), or dicts; default: ``token_dictionary*`` and
    ``gene_median_dictionary*`` files inside ``model_dir``.
    """

    name = "geneformer"
    gene_upper = True
    gene_order = "collapsed_last"

    def __init__(self, model_dir, *, token_dictionary=None, gene_median=None, version=None,
                 model_input_size=None, expression="counts", n_counts_key="n_counts", pooling=None,
                 run_head=False, **kwargs):
        model_dir = Path(model_dir)
        self.model_dir = model_dir
        token_dictionary = token_dictionary if token_dictionary is not None else find_dictionary(model_dir, "token_dictionary")
        gene_median = gene_median if gene_median is not None else find_dictionary(model_dir, "gene_median")
        for value, what in ((token_dictionary, "token_dictionary"), (gene_median, "gene_median")):
            if value is None:
                raise FileNotFoundError(f"{what}: not given and no {what}*.json/.tsv/.pkl file in {model_dir}")
        self.token_dict = load_mapping(token_dictionary, what="token_dictionary", value_type=int)
        medians = load_mapping(gene_median, what="gene_median", value_type=float)
        has_special = "<cls>" in self.token_dict and "<eos>" in self.token_dict
        if version is None:
            version = "V2" if has_special else "V1"
        if version not in CONTEXT:
            raise InputError(f"version={version!r}: expected 'V1' or 'V2'")
        if version == "V2" and not has_special:
            raise InputError("version='V2' needs <cls> and <eos> in the token dictionary (V2 dictionaries "
                             "are the gc104M ones); this dictionary has neither: use version='V1'")
        if version == "V1" and has_special:
            log.warning("the token dictionary has <cls>/<eos> but version='V1': Geneformer V2 models "
                        "expect them (as Geneformer's own tokenizer warns)")
        if "<pad>" not in self.token_dict:
            raise InputError("token_dictionary has no <pad> token")
        self.version, self.has_cls = version, version == "V2"
        if expression not in EXPRESSION:
            raise InputError(f"expression={expression!r}: expected one of {EXPRESSION}")
        self.expression, self.n_counts_key = expression, n_counts_key
        bad = [g for g, m in medians.items() if not (np.isfinite(m) and m > 0)]
        if bad:
            raise InputError(f"gene_median: {len(bad)} genes have a non-positive median (first: {bad[:3]})")
        genes = [g for g in self.token_dict if g not in SPECIAL]
        self.medians = {g: medians[g] for g in genes if g in medians}
        if len(self.medians) < len(genes):
            log.warning("%d genes of the token dictionary have no median and are left out", len(genes) - len(self.medians))
        super().__init__(pooling=pooling or ("cls" if self.has_cls else "mean"), **kwargs)
        self._model = load_hf_model(model_dir)
        cfg = self._model.config
        top = max(self.token_dict.values())
        if top >= cfg.vocab_size:
            raise InputError(f"token_dictionary has token ids up to {top} but the model in {model_dir} has a "
                             f"vocabulary of {cfg.vocab_size}: the dictionary does not belong to this model")
        limit = min(CONTEXT[version], cfg.max_position_embeddings)
        self.context = int(model_input_size or limit)
        if not 2 < self.context <= cfg.max_position_embeddings:
            raise InputError(f"model_input_size={model_input_size}: the model takes at most "
                             f"{cfg.max_position_embeddings} tokens")
        self.run_head = run_head
        self.model_name = f"geneformer:{model_dir.name}"

    @property
    def model(self):
        return self._model

    def output_names(self, n_units: int) -> list[str] | None:
        """The vocabulary's genes by token id, when the head predicts over the vocabulary."""
        names = {v: k for k, v in self.token_dict.items()}
        return [names.get(i, f"token {i}") for i in range(n_units)] if n_units == len(names) else None

    def _vocabulary(self):
        return self.medians.keys()

    def _transform(self):
        return np.expm1 if self.expression == "log1p" else None

    def _check_expression(self, s: Survey, where: str) -> None:
        kind = s.kind
        if kind == "scaled":
            raise InputError(f"{where} holds scaled values ({s.evidence()}): Geneformer ranks counts and "
                             "cannot use centred/scaled data; pass layer= naming the counts layer, or use_raw=True")
        if self.expression == "counts" and kind != "counts":
            raise InputError(
                f"{where} does not hold raw counts: it looks {kind} ({s.evidence()}). Geneformer normalises "
                "counts by total counts and gene medians, so log values give wrong ranks. Pass layer= (or "
                "use_raw=True) if the counts are stored there, expression='log1p' for log1p of per-cell-"
                "normalised counts, or expression='normalized' for per-cell-normalised linear values")
        if self.expression == "log1p" and kind == "counts" and s.max_value > 30:
            raise InputError(f"{where} looks like raw counts ({s.evidence()}), not log1p values; use expression='counts'")

    def dataset(self, data):
        ds = super().dataset(data)
        g = self.genes
        self.gene_tokens = np.array([self.token_dict[k] for k in g.genes], dtype=np.int64)
        self.gene_medians = np.array([self.medians[k] for k in g.genes], dtype=np.float64)
        self._index_of = np.full(max(self.token_dict.values()) + 1, -1, dtype=np.int64)
        self._index_of[self.gene_tokens] = np.arange(len(self.gene_tokens))
        self.n_counts = self.totals
        obs = self.source.obs
        if self.expression == "counts" and self.n_counts_key and self.n_counts_key in obs.columns:
            given = obs[self.n_counts_key].to_numpy(dtype=np.float64)
            bad = ~(given >= self.totals * (1 - 1e-6)) | ~(given > 0)
            low = ds.cells[bad[ds.cells]]  # cells dropped as empty do not count
            if len(low):
                raise InputError(
                    f"{self.source.where}: obs[{self.n_counts_key!r}] is below the cell's own counts in "
                    f"{self.source.matrix_name} for {len(low)} cells (first: {self.meta['cell_id'].iloc[low[:3]].tolist()}); "
                    "it must be each cell's total counts (pass n_counts_key=None to use the row sums)")
            self.n_counts = given
        self.report["n_counts"] = (f"obs[{self.n_counts_key!r}]" if self.n_counts is not self.totals
                                   else f"row sums of {self.source.matrix_name}")
        self._data["n_counts"] = digest(np.asarray(self.n_counts, dtype=np.float64))
        return ds

    def _encode(self, expr: sp.csr_matrix, cells: np.ndarray):
        ids = self.token_dict
        seqs, genes = [], []
        for r, c in enumerate(cells):
            lo, hi = expr.indptr[r], expr.indptr[r + 1]
            cols = expr.indices[lo:hi]
            ranked = rank_value_encode(expr.data[lo:hi], self.gene_tokens[cols], self.n_counts[c],
                                       self.gene_medians[cols])
            seq = finish_sequence(ranked, self.version, self.context, ids.get("<cls>"), ids.get("<eos>"))
            g = self._index_of[seq]
            if self.version == "V2":
                g[0] = g[-1] = -1
            seqs.append(seq)
            genes.append(g)
        input_ids = padded(seqs, ids["<pad>"])
        gene = padded(genes, -1)
        mask = torch.zeros_like(input_ids)
        for i, s in enumerate(seqs):
            mask[i, :len(s)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}, mask, gene, None

    def forward(self, batch):
        # the masked-LM head (vocabulary-sized logits per token) is skipped unless asked for:
        # it costs about as much as two encoder layers and nothing reads it
        net = self.model if self.run_head else self.model.base_model
        return net(**batch.inputs)

    def layer_names(self):
        names = [n for n, _ in self.model.named_modules() if n]
        layers = [n for n in names if n.count(".") == 3 and ".encoder.layer." in n]
        return layers + [n for n in names if n not in layers]

    def config(self):
        return {**super().config(), "version": self.version, "context": self.context,
                "expression": self.expression, "n_tokens": len(self.token_dict)}

