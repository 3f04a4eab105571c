"""scGPT-style adapter: gene vocabulary, per-cell value binning, ``<cls>``/``<pad>`` tokens,
gene + value embeddings into a transformer encoder whose parameter names load scGPT's
released checkpoints.

A released scGPT model directory holds ``vocab.json`` (gene symbol → id), ``args.json``
(``embsize``, ``nheads``, ``d_hid``, ``nlayers``, ``n_bins``, ``pad_token``, ``pad_value``, ...)
and ``best_model.pt`` (a state dict, loaded with ``torch.load(weights_only=True)``;
``model.safetensors`` is read too). Tokenisation follows scGPT's embedding path
(``scgpt.tasks.get_batch_cell_embeddings`` with its ``DataCollator``; checked against source):

* genes not in the vocabulary are dropped; ``<pad>``, ``<cls>``, ``<eoc>`` are appended to
  the vocabulary when missing, as ``embed_data`` does;
* per cell: the non-zero genes in data order, ``<cls>`` first with value ``pad_value``;
* the values (``<cls>`` excluded) are binned per cell (``scgpt.preprocess.binning``): edges
  ``np.quantile(values, linspace(0, 1, n_bins - 1))``, then ``_digitize(side="both")``,
  which breaks ties between equal edges at random; bioviz draws those from a generator
  seeded by (``seed``, cell index), so extraction is reproducible;
* cells longer than ``max_length`` (1200, scGPT's default) keep ``<cls>`` and a random
  ``max_length - 1`` genes (``DataCollator(sampling=True)``), seeded the same way;
* padding with ``<pad>`` / ``pad_value``; ``src_key_padding_mask`` marks padding.

Binning depends only on the order of a cell's values, so counts, normalised counts and
log1p values give the same bins (scaled data with negative values is refused).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from bioviz.errors import InputError

from .adapter import SingleCellAdapter, Survey, padded
from .dicts import load_mapping

log = logging.getLogger(__name__)
SPECIAL = ("<pad>", "<cls>", "<eoc>")
WEIGHTS = ("best_model.pt", "model.safetensors", "model.pt")


def digitize_both(x: np.ndarray, bins: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """scGPT's ``_digitize(side="both")``: values equal to several edges get a random bin among them."""
    left = np.digitize(x, bins)
    right = np.digitize(x, bins, right=True)
    digits = rng.random(len(x)) * (right - left) + left
    return np.ceil(digits).astype(np.int64)


def bin_values(values: np.ndarray, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """scGPT's ``binning(row, n_bins)`` of one cell's non-zero values (float32 like scGPT)."""
    row = np.asarray(values, dtype=np.float32)
    if row.size == 0 or row.max() == 0:
        return np.zeros_like(row)
    if row.min() <= 0:
        nz = row.nonzero()
        bins = np.quantile(row[nz], np.linspace(0, 1, n_bins - 1))
        out = np.zeros(row.shape, dtype=np.int64)
        out[nz] = digitize_both(row[nz], bins, rng)
        return out.astype(row.dtype)
    bins = np.quantile(row, np.linspace(0, 1, n_bins - 1))
    return digitize_both(row, bins, rng).astype(row.dtype)


# -- the model: scGPT's TransformerModel, encoder path, with its parameter names ------------


class GeneEncoder(nn.Module):
    def __init__(self, n: int, d: int, padding_idx=None):
        super().__init__()
        self.embedding = nn.Embedding(n, d, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.enc_norm(self.embedding(x))


class ContinuousValueEncoder(nn.Module):
    def __init__(self, d: int, dropout: float = 0.1, max_value: int = 512):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear1 = nn.Linear(1, d)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.max_value = max_value

    def forward(self, x):
        x = torch.clamp(x.unsqueeze(-1), max=self.max_value)
        return self.dropout(self.norm(self.linear2(self.activation(self.linear1(x)))))


class CategoryValueEncoder(GeneEncoder):
    def forward(self, x):
        return super().forward(x.long())


class ScGPTModel(nn.Module):
    """scGPT's ``TransformerModel`` up to the transformer output (decoders are not needed to
    read activations; their checkpoint weights are ignored and listed)."""

    def __init__(self, ntoken: int, d_model: int, nhead: int, d_hid: int, nlayers: int, *,
                 dropout: float = 0.0, padding_idx: int | None = None, input_emb_style: str = "continuous",
                 n_input_bins: int | None = None, pad_value: float = -2):
        super().__init__()
        if input_emb_style not in ("continuous", "category"):
            raise InputError(f"input_emb_style={input_emb_style!r}: bioviz supports 'continuous' and 'category'")
        self.encoder = GeneEncoder(ntoken, d_model, padding_idx)
        if input_emb_style == "continuous":
            self.value_encoder = ContinuousValueEncoder(d_model, dropout)
        else:
            self.value_encoder = CategoryValueEncoder(n_input_bins, d_model, padding_idx=int(pad_value) if pad_value >= 0 else None)
        layer = nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout, batch_first=True)
        # nested tensors would hand hooks a NestedTensor instead of [B, T, d]
        self.transformer_encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)

    def forward(self, genes, values, src_key_padding_mask):
        x = self.encoder(genes) + self.value_encoder(values)
        return self.transformer_encoder(x, src_key_padding_mask=src_key_padding_mask)

    @classmethod
    def from_pretrained(cls, model_dir) -> tuple[ScGPTModel, dict, dict]:
        """``(model, vocab, args)`` from a released scGPT model directory."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"scGPT model directory {model_dir} does not exist")
        for f in ("args.json", "vocab.json"):
            if not (model_dir / f).is_file():
                raise FileNotFoundError(f"{model_dir} has no {f} (a released scGPT model has args.json, vocab.json, best_model.pt)")
        args = json.loads((model_dir / "args.json").read_text())
        vocab = load_mapping(model_dir / "vocab.json", what="scGPT vocab", value_type=int)
        for tok in SPECIAL:  # embed_data appends these when missing
            if tok not in vocab:
                vocab[tok] = max(vocab.values()) + 1
        if args.get("pre_norm"):
            raise InputError(f"{model_dir}/args.json: pre_norm=true models are not supported")
        missing = [k for k in ("embsize", "nheads", "d_hid", "nlayers") if k not in args]
        if missing:
            raise InputError(f"{model_dir}/args.json lacks {missing}")
        pad_token = args.get("pad_token", "<pad>")
        model = cls(len(vocab), args["embsize"], args["nheads"], args["d_hid"], args["nlayers"],
                    dropout=float(args.get("dropout", 0.0)), padding_idx=vocab[pad_token],
                    input_emb_style=args.get("input_emb_style", "continuous"),
                    n_input_bins=args.get("n_bins", 51), pad_value=args.get("pad_value", -2))
        model.load_checkpoint(_weights_file(model_dir))
        return model.eval(), vocab, args

    def load_checkpoint(self, path) -> None:
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # pickled objects beyond tensors are refused on purpose
                raise InputError(f"{path}: not a plain state dict loadable with weights_only=True ({e})") from None
        if not isinstance(state, dict):
            raise InputError(f"{path}: expected a state dict, found {type(state).__name__}")
        # flash-attention checkpoints name the fused projection Wqkv (as scGPT's load_pretrained maps)
        state = {k.replace("self_attn.Wqkv.", "self_attn.in_proj_"): v for k, v in state.items()}
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
        if missing or wrong:
            raise InputError(f"{path} does not fit this scGPT configuration: missing {missing[:3]}, "
                             f"wrong shape {wrong[:3]} (check args.json and vocab.json)")
        unused = sorted(k for k in state if k not in own)
        if unused:
            log.info("%s: %d checkpoint tensors (decoders) not used: %s", path, len(unused), unused[:4])
        self.load_state_dict({k: state[k] for k in own})


def _weights_file(model_dir: Path) -> Path:
    for w in WEIGHTS:
        if (model_dir / w).is_file():
            return model_dir / w
    raise FileNotFoundError(f"{model_dir} has no weights (expected one of {', '.join(WEIGHTS)})")


class ScGPTAdapter(SingleCellAdapter):
    """scGPT over an AnnData cohort; genes are matched by the vocabulary's identifiers
    (symbols for released models: ``gene_key=`` names the var column, ``gene_map=`` a table)."""

    name = "scgpt"

    def __init__(self, model_dir, *, max_length: int = 1200, seed: int = 0, pooling="cls", **kwargs):
        self.model_dir = Path(model_dir)
        self._model, self.vocab, self.args = ScGPTModel.from_pretrained(self.model_dir)
        self.n_bins = int(self.args.get("n_bins", 51))
        self.pad_token = self.args.get("pad_token", "<pad>")
        self.pad_value = float(self.args.get("pad_value", -2))
        if int(max_length) < 2:
            raise InputError(f"max_length={max_length}: expected at least 2 (<cls> and one gene)")
        self.max_length, self.seed = int(max_length), int(seed)
        super().__init__(pooling=pooling, **kwargs)
        self.model_name = f"scgpt:{self.model_dir.name}"

    @property
    def model(self):
        return self._model

    def output_names(self, n_units: int) -> list[str] | None:
        """The vocabulary's genes by token id, when the output runs over the vocabulary."""
        names = {int(v): k for k, v in self.vocab.items()}
        return [names.get(i, f"token {i}") for i in range(n_units)] if n_units == len(names) else None

    def _vocabulary(self):
        return [k for k in self.vocab if k not in SPECIAL and k != self.pad_token]

    def _check_expression(self, s: Survey, where: str) -> None:
        if s.kind == "scaled":
            raise InputError(f"{where} holds negative values ({s.evidence()}): scGPT bins non-negative "
                             "expression; pass layer= naming counts or log-normalised data")

    def dataset(self, data):
        ds = super().dataset(data)
        self.gene_ids = np.array([self.vocab[k] for k in self.genes.genes], dtype=np.int64)
        return ds

    def _encode(self, expr: sp.csr_matrix, cells: np.ndarray):
        cls_id, pad_id = self.vocab["<cls>"], self.vocab[self.pad_token]
        ids, vals, genes = [], [], []
        for r, c in enumerate(cells):
            lo, hi = expr.indptr[r], expr.indptr[r + 1]
            cols = expr.indices[lo:hi]
            rng = np.random.default_rng([self.seed, int(c)])
            binned = bin_values(expr.data[lo:hi], self.n_bins, rng)
            if len(cols) + 1 > self.max_length:
                keep = rng.permutation(len(cols))[: self.max_length - 1]
                cols, binned = cols[keep], binned[keep]
            ids.append(np.concatenate([[cls_id], self.gene_ids[cols]]))
            vals.append(np.concatenate([[self.pad_value], binned]).astype(np.float32))
            genes.append(np.concatenate([[-1], cols]))
        genes_t = padded(ids, pad_id)
        values = padded(vals, self.pad_value, dtype=torch.float32)
        gene = padded(genes, -1)
        pad_mask = genes_t.eq(pad_id)
        inputs = {"genes": genes_t, "values": values, "src_key_padding_mask": pad_mask}
        return inputs, ~pad_mask, gene, values

    def forward(self, batch):
        return self.model(**batch.inputs)

    def layer_names(self):
        names = [n for n, _ in self.model.named_modules() if n]
        layers = [n for n in names if n.count(".") == 2 and n.startswith("transformer_encoder.layers.")]
        return layers + [n for n in names if n not in layers]

    def config(self):
        return {**super().config(), "max_length": self.max_length, "n_bins": self.n_bins, "seed": self.seed}
