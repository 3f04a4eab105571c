"""Hugging Face transformers models from a local directory, and a generic adapter for them.

:func:`load_hf_model` is the one place bioviz loads a transformers checkpoint: from a local
directory only (``local_files_only=True``; nothing is downloaded, no remote code runs),
weights through safetensors or transformers' ``weights_only`` loader, and a checkpoint that
does not fit the architecture is an error naming the file and the missing weights.

:class:`HFAdapter` runs any such model over a list (or table) of strings with a tokenizer
the caller supplies. It refuses input that the tokenizer maps mostly to ``[UNK]``: a model
fed the wrong tokens gives activations that look fine and mean nothing (transformers 5's
``BertTokenizer(vocab_file=...)`` silently ignores the vocabulary file, for one).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bioviz.adapter import (
    REQUIRED_OBS,
    Adapter,
    Batch,
    is_scalar,
    item_rows,
    pooled_rows,
    token_rows,
)
from bioviz.errors import InputError

log = logging.getLogger(__name__)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def load_hf_model(path, model_class=None, *, eval_mode: bool = True, trust_remote_code: bool = False):
    """A transformers model from the local directory ``path``.

    ``model_class``: a transformers class or its name; default: the class named in
    ``config.json``'s ``architectures`` when transformers has it, else ``AutoModel`` (the
    bare encoder, which loads the encoder weights of any task model built on it).
    ``trust_remote_code=True`` lets models whose code lives in the directory itself
    (HyenaDNA, Caduceus: ``auto_map`` in ``config.json``) load: it runs that Python code,
    so only pass it for a directory whose code you trust. Nothing is downloaded either way.
    """
    import transformers

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist (bioviz loads weights from local paths only)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a transformers model directory")
    if not any((path / w).is_file() for w in WEIGHT_FILES):
        raise FileNotFoundError(f"{path} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{cfg_file} is not valid JSON ({e})") from None
    if model_class is None:
        arch = (config.get("architectures") or [None])[0]
        model_class = getattr(transformers, arch, None) if arch else None
        if model_class is None:
            model_class = transformers.AutoModel
    elif isinstance(model_class, str):
        name = model_class
        model_class = getattr(transformers, name, None)
        if model_class is None:
            raise InputError(f"model_class={name!r} is not a transformers class")
    if config.get("auto_map") and not trust_remote_code and model_class is transformers.AutoModel:
        raise InputError(f"{path}: the model's code is in the directory itself (auto_map in config.json); "
                         "pass trust_remote_code=True if you trust that code, or build the model yourself "
                         "and hand the module to the adapter")
    model, info = model_class.from_pretrained(path, local_files_only=True, output_loading_info=True,
                                              trust_remote_code=trust_remote_code)
    prefix = getattr(model, "base_model_prefix", "")
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    # missing encoder weights are fatal; a missing task head (random init) is only logged
    is_base = model.base_model is model
    core = [k for k in missing if is_base or not prefix or k.startswith(prefix + ".")]
    if mismatched:
        raise InputError(f"{path}: weights with the wrong shape for {type(model).__name__}: {mismatched[:3]}")
    if core:
        raise InputError(f"{path}: the checkpoint lacks {len(core)} weights of {type(model).__name__} "
                         f"(first: {core[:3]}); it was saved from a different architecture")
    if missing:
        log.warning("%s: task-head weights not in the checkpoint were initialised randomly: %s", path, missing[:5])
    if info.get("unexpected_keys"):
        log.info("%s: checkpoint weights not used by %s: %s", path, type(model).__name__,
                 sorted(info["unexpected_keys"])[:5])
    return model.eval() if eval_mode else model


def load_hf_tokenizer(path, **kwargs):
    """A tokenizer from a local directory (``AutoTokenizer``, no download, no remote code)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False, **kwargs)


class _Texts(torch.utils.data.Dataset):
    def __init__(self, texts: list[str], meta: pd.DataFrame):
        self.texts, self.meta = texts, meta

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return i


class HFAdapter(Adapter):
    """Any local transformers model over strings (protein, antibody, DNA, text).

    ``data``: a list of strings, or a DataFrame with a ``text_column`` and metadata columns
    (``subject_id``, ``sample_id`` and any other scalar columns go to obs; they default to
    the row index). ``preprocess`` maps each string before tokenising (AntiBERTy, for one,
    wants residues separated by spaces: ``preprocess=" ".join``).

    ``rows``: ``"tokens"`` (one row per token; ``special_tokens=False`` drops ``[CLS]``/
    ``[SEP]``), ``"mean"`` (mean over non-padding tokens) or ``"cls"`` (the first token).
    """

    name = "hf"

    def __init__(self, model_dir, tokenizer, *, model_class=None, rows="tokens", special_tokens=True,
                 text_column="sequence", preprocess=None, max_length=None, max_unknown_fraction=0.05,
                 model=None):
        if rows not in ("tokens", "mean", "cls"):
            raise InputError(f"rows={rows!r}: expected 'tokens', 'mean' or 'cls'")
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self._model = model if model is not None else load_hf_model(model_dir, model_class)
        self.tokenizer = load_hf_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
        self.rows_mode, self.special_tokens = rows, special_tokens
        self.text_column, self.preprocess = text_column, preprocess
        self.max_length, self.max_unknown_fraction = max_length, float(max_unknown_fraction)
        self.model_name = f"hf:{self.model_dir.name}" if self.model_dir else type(self._model).__name__

    @property
    def model(self):
        return self._model

    def dataset(self, data):
        if isinstance(data, pd.DataFrame):
            if self.text_column not in data.columns:
                raise InputError(f"data: no column {self.text_column!r} (text_column=; columns: {list(data.columns)})")
            texts = data[self.text_column].astype(str).tolist()
            meta = data.drop(columns=[self.text_column]).reset_index(drop=True)
            meta = meta[[c for c in meta.columns if meta[c].map(is_scalar).all()]]
        elif isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
            texts, meta = list(data), pd.DataFrame(index=range(len(data)))
        else:
            raise TypeError(f"data: expected a list of strings or a DataFrame, got {type(data).__name__}")
        for col in REQUIRED_OBS:
            meta[col] = meta[col].astype(str) if col in meta else [str(i) for i in range(len(texts))]
        if self.preprocess is not None:
            texts = [self.preprocess(t) for t in texts]
        self._check_unknown(texts[:256])
        self._data = _Texts(texts, meta)
        return self._data

    def _check_unknown(self, texts):
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is None or not texts:
            return
        special = set(getattr(self.tokenizer, "all_special_ids", []))
        ids = [i for t in texts for i in self.tokenizer(t)["input_ids"] if i == unk or i not in special]
        frac = float(np.mean([i == unk for i in ids])) if ids else 1.0
        if frac > self.max_unknown_fraction:
            raise InputError(
                f"the tokenizer maps {frac:.0%} of the input's tokens to {self.tokenizer.unk_token!r} "
                f"(vocabulary of {len(self.tokenizer)}); it is not the model's tokenizer or the input needs "
                "preprocess= (load the tokenizer with load_hf_tokenizer(model_or_vocab_dir))")

    def collate(self, items):
        texts = [self._data.texts[i] for i in items]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=self.max_length is not None,
                             max_length=self.max_length, return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")
        inputs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        mask = inputs["attention_mask"].bool()
        keep = mask if self.special_tokens else mask & ~special.bool()
        meta = self._data.meta.iloc[list(items)].reset_index(drop=True)
        return Batch(inputs, meta, {"mask": mask, "keep": keep, "input_ids": inputs["input_ids"]})

    def forward(self, batch):
        return self.model(**batch.inputs)

    def rows(self, layer, activation, batch):
        if activation.ndim == 2:
            return item_rows(activation, batch.meta)
        if activation.ndim != 3 or activation.shape[1] != batch.extra["mask"].shape[1]:
            raise InputError(f"layer {layer!r} gives shape {tuple(activation.shape)}; expected "
                             f"[batch, {batch.extra['mask'].shape[1]} tokens, d]")
        if self.rows_mode == "cls":
            return activation[:, 0], batch.meta.reset_index(drop=True)
        if self.rows_mode == "mean":
            return pooled_rows(activation, batch.meta, batch.extra["keep"])
        rows, obs = token_rows(activation, batch.meta, batch.extra["keep"])
        ids = batch.extra["input_ids"][batch.extra["keep"].cpu()].numpy()
        obs["token"] = self.tokenizer.convert_ids_to_tokens(ids.tolist())
        return rows, obs

    def config(self):
        return {"adapter": type(self).__name__, "rows": self.rows_mode, "special_tokens": self.special_tokens,
                "tokenizer": type(self.tokenizer).__name__, "vocab_size": len(self.tokenizer),
                "max_length": self.max_length}
