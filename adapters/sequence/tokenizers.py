"""DNA tokenisers, each following the published rule of the model family it serves.

Every tokeniser returns token ids with, per token, the half-open span ``[start, end)`` of
the input string it covers (``-1`` for special tokens), so activations can be put back on
base-pair coordinates.

* :class:`KmerTokenizer` — Nucleotide Transformer (``nucleotide_transformer.tokenizers.
  NucleotidesKmersTokenizer``): split the sequence at every ``N``; cut each piece into
  non-overlapping 6-mers from its left end; the leftover (< 6) bases become single-base
  tokens; each ``N`` is its own token; ``<cls>`` is prepended. Ids come from the
  checkpoint's ``vocab.txt`` (one token per line), else the original order: ``<unk> <pad>
  <mask> <cls>``, the 4096 6-mers over ``ATCG`` (itertools.product order), ``A T C G N``,
  ``<eos> <bos>``. The original raises on any other letter (IUPAC codes such as ``R``):
  ``iupac="error"`` does too; ``iupac="N"`` reads them as ``N``.
* :class:`CharTokenizer` — HyenaDNA and Caduceus (their ``CharacterTokenizer``/
  ``CaduceusTokenizer``): ``[CLS]0 [SEP]1 [BOS]2 [MASK]3 [PAD]4 [RESERVED]5 [UNK]6``, then
  ``A C G T N`` from 7; any other character is ``[UNK]``; ``[SEP]`` is appended. HyenaDNA's
  tokenizer is case-sensitive; Caduceus upper-cases. HyenaDNA's pretraining replaced ``N``
  with ``[PAD]`` (``hg38_dataset.py``), so ``preset="hyenadna"`` does too (``n_as_pad``).
  Later Caduceus revisions renumbered the special tokens: pass ``vocab=`` from the
  checkpoint's tokenizer when it differs.
* :class:`ByteTokenizer` — Evo / StripedHyena ``CharLevelTokenizer``: each UTF-8 byte is its
  id (``A`` = 65); end-of-document is 0 and padding 1; ``prepend_eod`` adds the 0 first.
* :class:`OneHotEncoder` — Enformer-style convolutional models (enformer-pytorch
  ``str_to_one_hot``, Basenji data): ``A C G T`` → one-hot columns in that order, either
  case; ``N`` and every other code → all zeros (``n_value``); padding → 0.25 per base.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np

from bioviz.errors import InputError

NUCLEOTIDES = ("A", "T", "C", "G")
IUPAC = set("RYKMSWBDHVN")


def _uppercase(seq: str, uppercase: bool) -> str:
    return seq.upper() if uppercase else seq


class KmerTokenizer:
    """Nucleotide Transformer's non-overlapping k-mer rule (see the module docstring)."""

    name = "kmer"

    def __init__(self, k: int = 6, vocab=None, *, iupac: str = "error", uppercase: bool = True,
                 prepend_cls: bool = True, append_eos: bool = False):
        if iupac not in ("error", "N"):
            raise InputError(f"iupac={iupac!r}: expected 'error' (the original rule) or 'N'")
        self.k, self.iupac, self.uppercase = int(k), iupac, uppercase
        self.prepend_cls, self.append_eos = prepend_cls, append_eos
        self.vocab = self._vocab(vocab)
        for tok in ("<pad>", "<cls>", "<unk>", "N", *NUCLEOTIDES):
            if tok not in self.vocab:
                raise InputError(f"k-mer vocabulary lacks {tok!r}")
        self.pad_id = self.vocab["<pad>"]
        self.bp_per_token = self.k

    def _vocab(self, vocab) -> dict:
        if vocab is None:
            kmers = ["".join(p) for p in product(NUCLEOTIDES, repeat=self.k)]
            tokens = ["<unk>", "<pad>", "<mask>", "<cls>", *kmers, *NUCLEOTIDES, "N", "<eos>", "<bos>"]
            return {t: i for i, t in enumerate(tokens)}
        if isinstance(vocab, dict):
            return dict(vocab)
        path = Path(vocab)
        if not path.is_file():
            raise FileNotFoundError(f"k-mer vocabulary {path} does not exist")
        tokens = [line.strip() for line in path.read_text().splitlines()]
        return {t: i for i, t in enumerate(tokens) if t}

    def tokenize(self, seq: str, name: str = "sequence") -> list[tuple[str, int, int]]:
        """``(token, start, end)`` triples (specials have start = end = -1)."""
        seq = _uppercase(seq, self.uppercase)
        bad = [i for i, ch in enumerate(seq) if ch not in "ACGTN"]
        if bad:
            if self.iupac == "error" or any(seq[i] not in IUPAC for i in bad):
                i = bad[0]
                raise InputError(
                    f"{name}: base {seq[i]!r} at position {i} is not A/C/G/T/N; Nucleotide Transformer's "
                    "tokenizer has no token for it (pass iupac='N' to read IUPAC codes as N)")
            chars = np.frombuffer(seq.encode(), dtype="S1").copy()
            chars[bad] = b"N"
            seq = chars.tobytes().decode()
        out = [("<cls>", -1, -1)] if self.prepend_cls else []
        pos = 0
        pieces = seq.split("N")
        for j, piece in enumerate(pieces):
            n_full = len(piece) // self.k
            for t in range(n_full):
                a = pos + t * self.k
                out.append((piece[t * self.k:(t + 1) * self.k], a, a + self.k))
            for t in range(n_full * self.k, len(piece)):
                out.append((piece[t], pos + t, pos + t + 1))
            pos += len(piece)
            if j < len(pieces) - 1:
                out.append(("N", pos, pos + 1))
                pos += 1
        if self.append_eos:
            out.append(("<eos>", -1, -1))
        return out

    def encode(self, seq: str, name: str = "sequence"):
        toks = self.tokenize(seq, name)
        ids = np.array([self.vocab.get(t, self.vocab["<unk>"]) for t, _, _ in toks], dtype=np.int64)
        starts = np.array([s for _, s, _ in toks], dtype=np.int64)
        ends = np.array([e for _, _, e in toks], dtype=np.int64)
        return ids, starts, ends

    def decode(self, ids) -> list[str]:
        inv = {i: t for t, i in self.vocab.items()}
        return [inv.get(int(i), "<unk>") for i in ids]

    def config(self) -> dict:
        return {"tokenizer": "kmer", "k": self.k, "iupac": self.iupac, "uppercase": self.uppercase,
                "prepend_cls": self.prepend_cls, "append_eos": self.append_eos, "vocab_size": len(self.vocab)}


HYENA_SPECIAL = {"[CLS]": 0, "[SEP]": 1, "[BOS]": 2, "[MASK]": 3, "[PAD]": 4, "[RESERVED]": 5, "[UNK]": 6}
PRESETS = {"hyenadna": {"uppercase": False, "n_as_pad": True}, "caduceus": {"uppercase": True, "n_as_pad": False}}


class CharTokenizer:
    """Single-nucleotide tokens (HyenaDNA, Caduceus; see the module docstring)."""

    name = "char"

    def __init__(self, preset: str = "hyenadna", *, vocab: dict | None = None, uppercase=None,
                 n_as_pad=None, append_sep: bool = True, characters=("A", "C", "G", "T", "N")):
        if preset not in PRESETS:
            raise InputError(f"preset={preset!r}: expected one of {list(PRESETS)}")
        p = PRESETS[preset]
        self.preset = preset
        self.uppercase = p["uppercase"] if uppercase is None else uppercase
        self.n_as_pad = p["n_as_pad"] if n_as_pad is None else n_as_pad
        self.append_sep = append_sep
        self.vocab = dict(vocab) if vocab is not None else {**HYENA_SPECIAL, **{c: i + 7 for i, c in enumerate(characters)}}
        for tok in ("[SEP]", "[PAD]", "[UNK]"):
            if tok not in self.vocab:
                raise InputError(f"character vocabulary lacks {tok!r}")
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.bp_per_token = 1
        lut = np.full(256, self.unk_id, dtype=np.int64)
        for ch, i in self.vocab.items():
            if len(ch) == 1:
                lut[ord(ch)] = i
        if self.n_as_pad:
            lut[ord("N")] = self.pad_id
        self._lut = lut

    def encode(self, seq: str, name: str = "sequence"):
        seq = _uppercase(seq, self.uppercase)
        raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
        ids = self._lut[raw]
        starts = np.arange(len(ids), dtype=np.int64)
        ends = starts + 1
        if self.append_sep:
            ids = np.append(ids, self.vocab["[SEP]"])
            starts, ends = np.append(starts, -1), np.append(ends, -1)
        return ids, starts, ends

    def decode(self, ids) -> list[str]:
        inv = {i: t for t, i in self.vocab.items()}
        return [inv.get(int(i), "[UNK]") for i in ids]

    def config(self) -> dict:
        return {"tokenizer": "char", "preset": self.preset, "uppercase": self.uppercase,
                "n_as_pad": self.n_as_pad, "append_sep": self.append_sep, "vocab": self.vocab}


class ByteTokenizer:
    """Evo-style byte-level tokens (see the module docstring)."""

    name = "byte"
    eod_id, pad_id = 0, 1
    bp_per_token = 1

    def __init__(self, *, uppercase: bool = True, prepend_eod: bool = False):
        self.uppercase, self.prepend_eod = uppercase, prepend_eod

    def encode(self, seq: str, name: str = "sequence"):
        seq = _uppercase(seq, self.uppercase)
        data = seq.encode("utf-8")
        if len(data) != len(seq):
            raise InputError(f"{name}: non-ASCII characters in a DNA sequence")
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        starts = np.arange(len(ids), dtype=np.int64)
        ends = starts + 1
        if self.prepend_eod:
            ids = np.insert(ids, 0, self.eod_id)
            starts, ends = np.insert(starts, 0, -1), np.insert(ends, 0, -1)
        return ids, starts, ends

    def decode(self, ids) -> list[str]:
        return [chr(int(i)) if int(i) >= 32 else f"<{int(i)}>" for i in ids]

    def config(self) -> dict:
        return {"tokenizer": "byte", "uppercase": self.uppercase, "prepend_eod": self.prepend_eod}


class OneHotEncoder:
    """Enformer-style one-hot (see the module docstring). ``encode`` gives ``[L, 4]`` float32."""

    name = "onehot"
    bp_per_token = 1

    def __init__(self, *, alphabet: str = "ACGT", n_value: float = 0.0, pad_value: float = 0.25):
        self.alphabet, self.n_value, self.pad_value = alphabet, float(n_value), float(pad_value)
        table = np.full((256, len(alphabet)), self.n_value, dtype=np.float32)
        for i, ch in enumerate(alphabet):
            row = np.zeros(len(alphabet), dtype=np.float32)
            row[i] = 1.0
            table[ord(ch.upper())] = row
            table[ord(ch.lower())] = row
        self._table = table

    def encode(self, seq: str, name: str = "sequence", length: int | None = None) -> np.ndarray:
        """``[L, 4]``; with ``length`` the result is right-padded to it with ``pad_value``."""
        raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
        x = self._table[raw]
        if length is not None and length > len(x):
            x = np.concatenate([x, np.full((length - len(x), x.shape[1]), self.pad_value, dtype=np.float32)])
        return x

    def config(self) -> dict:
        return {"tokenizer": "onehot", "alphabet": self.alphabet, "n_value": self.n_value, "pad_value": self.pad_value}


def tokenizer_for(name: str, **kwargs):
    """``"nt"``/``"kmer"``, ``"hyenadna"``, ``"caduceus"``, ``"evo"``/``"byte"``, ``"onehot"``/``"enformer"``."""
    name = name.lower()
    if name in ("nt", "kmer", "nucleotide_transformer"):
        return KmerTokenizer(**kwargs)
    if name in ("hyenadna", "caduceus"):
        return CharTokenizer(name, **kwargs)
    if name in ("evo", "byte"):
        return ByteTokenizer(**kwargs)
    if name in ("onehot", "enformer"):
        return OneHotEncoder(**kwargs)
    raise InputError(f"tokenizer {name!r}: expected nt, hyenadna, caduceus, evo or onehot")
