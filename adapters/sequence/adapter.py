"""DNA sequence adapter: FASTA, a table of sequences with coordinates, or a BED file plus a
reference FASTA, through a tokenised model (Nucleotide Transformer, HyenaDNA, Caduceus,
Evo-style) or a one-hot convolutional model (Enformer-style), to rows on base-pair
coordinates.

Long sequences are cut into windows of ``window`` bp overlapping by ``overlap`` bp (the
last window is aligned to the sequence end, so nothing is padded unless the whole
sequence is shorter than a window). Each window *owns* the stretch between the midpoints
of its overlaps with its neighbours, and keeps the rows that overlap that stretch: the
windows' activations stitch back into one track per sequence without holes, each row
computed with at least half the overlap as context on either side. Where two windows'
token grids meet (6-mers, 128-bp bins), neighbouring rows may overlap by less than one
token. Each row's ``start``/``end`` is exactly what its token (or output bin) covers, in
0-based half-open genome coordinates; on the minus strand the sequence is the reverse
complement and coordinates are mapped back. Layers cropped to the window centre (Enformer's
heads) cover a window's middle only: use an overlap of at least twice the cropped flank.

Rows: one per token (or per output position of a layer whose length differs from the
input, e.g. Enformer's 128-bp bins), obs: ``subject_id``, ``sample_id``, ``seq_id``,
``chrom``, ``start``, ``end``, ``strand``, ``window``, ``token_index``.

Inputs are read by :mod:`.inputs`, tokenisers live in :mod:`.tokenizers`,
Enformer loading in :mod:`.enformer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bioviz.adapter import Adapter, Batch
from bioviz.errors import InputError

from .inputs import records_from, reverse_complement
from .tokenizers import OneHotEncoder, tokenizer_for

log = logging.getLogger(__name__)


# -- windows --------------------------------------------------------------------------------


def plan_windows(length: int, window: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(start, end, own_start, own_end)`` per window, in sequence coordinates."""
    if length <= window:
        return [(0, length, 0, length)]
    step = window - overlap
    starts = list(range(0, length - window, step)) + [length - window]
    spans = [(s, s + window) for s in starts]
    out = []
    for i, (s, e) in enumerate(spans):
        lo = 0 if i == 0 else (s + spans[i - 1][1]) // 2
        hi = length if i == len(spans) - 1 else (spans[i + 1][0] + e) // 2
        out.append((s, e, lo, hi))
    return out


@dataclass
class _Window:
    record: int
    index: int
    start: int
    end: int
    own_start: int
    own_end: int


class _Windows(torch.utils.data.Dataset):
    def __init__(self, windows):
        self.windows = windows

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        return i


# -- the adapter --------------------------------------------------------------------------


class SequenceAdapter(Adapter):
    """A DNA model (any torch module) with its tokeniser or one-hot encoder.

    ``tokenizer``: a tokeniser object or a name (``"nt"``, ``"hyenadna"``, ``"caduceus"``,
    ``"evo"``, ``"onehot"``). ``window``/``overlap`` in bp. ``call``: how the model is called —
    ``"hf"`` (``input_ids=``, plus ``attention_mask=`` when its forward takes one), ``"ids"``
    (the id tensor positionally) or ``"onehot"`` (a ``[B, L, 4]`` float tensor, or ``[B, 4, L]``
    with ``channels_first=True``). ``length_axis``: for layers whose output is not
    ``[B, tokens, d]``, ``{glob pattern: axis}`` naming the axis that runs along the sequence
    (first match wins; default: the axis whose size divides the window into whole bins).
    ``bin_size``: bp per output position for layers cropped to a central stretch (Enformer:
    128), else inferred as window length ÷ output length.
    """

    name = "sequence"

    def __init__(self, model, tokenizer, *, window: int, overlap: int = 0, call: str = "hf",
                 channels_first: bool = False, length_axis: dict | None = None, bin_size: int | None = None,
                 reference=None, parse_header: bool = True, subject_id=None, sample_id=None,
                 sequence_column="sequence", run_head: bool = False, model_name=None, max_tokens=None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self._model = model.eval()
        self.tokenizer = tokenizer_for(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.onehot = isinstance(self.tokenizer, OneHotEncoder)
        if call not in ("hf", "ids", "onehot"):
            raise InputError(f"call={call!r}: expected 'hf', 'ids' or 'onehot'")
        if self.onehot != (call == "onehot"):
            raise InputError(f"call={call!r} does not fit a {type(self.tokenizer).__name__}")
        window, overlap = int(window), int(overlap)
        if window < 1 or not 0 <= overlap < window:
            raise InputError(f"window={window}, overlap={overlap}: need window > 0 and 0 <= overlap < window")
        self.window, self.overlap, self.call = window, overlap, call
        self.channels_first, self.length_axis, self.bin_size = channels_first, dict(length_axis or {}), bin_size
        self.reference, self.parse_header = reference, parse_header
        self.subject_id, self.sample_id, self.sequence_column = subject_id, sample_id, sequence_column
        self.run_head = run_head
        self.model_name = model_name
        self.max_tokens = max_tokens

    @property
    def model(self):
        return self._model

    # -- constructors for the supported model families -------------------------------------

    @classmethod
    def from_hf(cls, model_dir, tokenizer="nt", *, window=None, model_class=None, trust_remote_code=False,
                **kwargs):
        """A transformers model from a local directory (Nucleotide Transformer v1 is an
        ``EsmForMaskedLM``); for ``tokenizer="nt"`` the ids come from the directory's
        ``vocab.txt`` when it has one. ``window`` defaults to what the model's position
        table holds. HyenaDNA/Caduceus directories carry their own model code: see
        :func:`~bioviz.adapters.hf.load_hf_model` for ``trust_remote_code``."""
        from ..hf import load_hf_model

        model_dir = Path(model_dir)
        model = load_hf_model(model_dir, model_class, trust_remote_code=trust_remote_code)
        if isinstance(tokenizer, str) and tokenizer.lower() in ("nt", "kmer"):
            vocab = model_dir / "vocab.txt"
            tokenizer = tokenizer_for("nt", vocab=vocab if vocab.is_file() else None)
        elif isinstance(tokenizer, str):
            tokenizer = tokenizer_for(tokenizer)
        cfg = model.config
        n_pos = getattr(cfg, "max_position_embeddings", None)
        if n_pos and getattr(cfg, "model_type", "") == "esm" and getattr(cfg, "position_embedding_type", "") == "absolute":
            n_pos -= (cfg.pad_token_id or 0) + 1  # ESM numbers positions from padding_idx + 1
        if window is None:
            if not n_pos:
                raise InputError(f"{model_dir}: the config has no max_position_embeddings; pass window= (bp)")
            window = (int(n_pos) - 2) * tokenizer.bp_per_token  # room for special tokens
        return cls(model, tokenizer, window=window, call="hf", model_name=f"hf:{model_dir.name}",
                   max_tokens=n_pos, **kwargs)

    @classmethod
    def from_enformer(cls, model_or_dir, *, window: int = 196_608, **kwargs):
        """An enformer-pytorch ``Enformer``: an instance, or a local directory with its
        ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin`` (see
        :func:`bioviz.adapters.sequence.enformer.load_enformer`)."""
        from .enformer import ENFORMER_BIN_SIZE, ENFORMER_LENGTH_AXIS, load_enformer

        if isinstance(model_or_dir, (str, Path)):
            model, name = load_enformer(model_or_dir), f"enformer:{Path(model_or_dir).name}"
        else:
            model, name = model_or_dir, "enformer"
        return cls(model, OneHotEncoder(), window=window, call="onehot", length_axis=ENFORMER_LENGTH_AXIS,
                   bin_size=ENFORMER_BIN_SIZE, model_name=name, **kwargs)

    # -- dataset -----------------------------------------------------------------------------

    def dataset(self, data):
        self.records, self.ref = records_from(data, reference=self.reference, parse_header=self.parse_header,
                                              subject_id=self.subject_id, sample_id=self.sample_id,
                                              sequence_column=self.sequence_column)
        windows = []
        for r, rec in enumerate(self.records):
            for w, (s, e, lo, hi) in enumerate(plan_windows(rec.end - rec.start, self.window, self.overlap)):
                windows.append(_Window(r, w, s, e, lo, hi))
        self.windows = windows
        log.info("%d sequences → %d windows of up to %d bp", len(self.records), len(windows), self.window)
        return _Windows(windows)

    def _window_sequence(self, w: _Window) -> str:
        rec = self.records[w.record]
        if rec.seq is not None:
            return rec.seq[w.start:w.end]
        # read only this window from the reference (on "-", window offsets run from the end)
        if rec.strand == "-":
            return reverse_complement(self.ref.fetch(rec.chrom, rec.end - w.end, rec.end - w.start))
        return self.ref.fetch(rec.chrom, rec.start + w.start, rec.start + w.end)

    def collate(self, items):
        wins = [self.windows[i] for i in items]
        seqs = [self._window_sequence(w) for w in wins]
        meta = pd.DataFrame({
            "subject_id": [self.records[w.record].subject_id for w in wins],
            "sample_id": [self.records[w.record].sample_id for w in wins],
            "seq_id": [self.records[w.record].seq_id for w in wins],
            "window": np.array([w.index for w in wins], dtype=np.int32),
        })
        lengths = torch.tensor([len(s) for s in seqs])
        extra = {"length": lengths, "items": torch.tensor(list(items))}
        if self.onehot:
            x = np.stack([self.tokenizer.encode(s, length=self.window) for s in seqs])
            inputs = torch.from_numpy(x)
            if self.channels_first:
                inputs = inputs.transpose(1, 2).contiguous()
            return Batch(inputs, meta, extra)
        enc = [self.tokenizer.encode(s, name=self.records[w.record].seq_id) for s, w in zip(seqs, wins)]
        t = max(len(e[0]) for e in enc)
        if self.max_tokens and t > self.max_tokens:
            i = int(np.argmax([len(e[0]) for e in enc]))
            raise InputError(f"{meta['seq_id'][i]} window {wins[i].index} becomes {t} tokens but the model takes "
                             f"{self.max_tokens} (N-rich stretches tokenise base by base); use a smaller window=")
        ids = torch.full((len(enc), t), self.tokenizer.pad_id, dtype=torch.long)
        starts = torch.full((len(enc), t), -1, dtype=torch.long)
        ends = torch.full((len(enc), t), -1, dtype=torch.long)
        mask = torch.zeros((len(enc), t), dtype=torch.long)
        for i, (a, s, e) in enumerate(enc):
            ids[i, :len(a)], starts[i, :len(a)], ends[i, :len(a)], mask[i, :len(a)] = (
                torch.from_numpy(a), torch.from_numpy(s), torch.from_numpy(e), 1)
        extra.update(token_start=starts, token_end=ends, mask=mask, input_ids=ids)
        inputs = {"input_ids": ids, "attention_mask": mask} if self.call == "hf" else ids
        return Batch(inputs, meta, extra)

    def data_fingerprint(self, batch):
        # the tokens, and where each window's record lies (rows() puts that into obs)
        recs = [self.records[self.windows[i].record] for i in self._items(batch)]
        return {"inputs": batch.inputs,
                "records": [(r.chrom, r.start, r.end, r.strand) for r in recs]}

    def forward(self, batch):
        net = self.model
        if self.call == "hf":
            if not self.run_head and hasattr(net, "base_model") and net.base_model is not net:
                net = net.base_model  # skip the LM head: vocabulary-sized logits nobody reads
            import inspect

            params = inspect.signature(net.forward).parameters
            kwargs = {k: v for k, v in batch.inputs.items() if k in params}
            return net(**kwargs)
        return net(batch.inputs)

    # -- rows ------------------------------------------------------------------------------

    def rows(self, layer, activation, batch):
        if activation.ndim == 2:
            raise InputError(f"layer {layer!r} gives one vector per window ({tuple(activation.shape)}); "
                             "sequence rows need a per-position output")
        if activation.ndim != 3:
            raise InputError(f"layer {layer!r} gives shape {tuple(activation.shape)}; expected [B, positions, d]")
        if not self.onehot and activation.shape[1] == batch.extra["token_start"].shape[1]:
            act = activation
            rel_start, rel_end = batch.extra["token_start"], batch.extra["token_end"]
        else:
            act = self._positions_last(layer, activation, batch)
            rel_start, rel_end = self._bins(layer, act.shape[1], batch)
        rel_start, rel_end = rel_start.cpu(), rel_end.cpu()
        wins = [self.windows[i] for i in self._items(batch)]
        w_start = torch.tensor([w.start for w in wins]).unsqueeze(1)
        lo = torch.tensor([w.own_start - w.start for w in wins]).unsqueeze(1)
        hi = torch.tensor([w.own_end - w.start for w in wins]).unsqueeze(1)
        # rows that overlap the window's own stretch: tokens tile a window without holes, so
        # the stitched track has none either (neighbours may overlap by less than a token)
        keep = (rel_start >= 0) & (rel_start < hi) & (rel_end > lo)
        item, pos = keep.nonzero(as_tuple=True)
        rows = act[item.to(act.device), pos.to(act.device)]
        obs = batch.meta.iloc[item.numpy()].reset_index(drop=True)
        a = (rel_start + w_start)[item, pos].numpy()  # sequence coordinates
        b = (rel_end + w_start)[item, pos].numpy()
        recs = [self.records[wins[i].record] for i in item.numpy()]
        rstart = np.array([r.start for r in recs], dtype=np.int64)
        rend = np.array([r.end for r in recs], dtype=np.int64)
        minus = np.array([r.strand == "-" for r in recs])
        obs.insert(3, "chrom", [r.chrom for r in recs])
        obs.insert(4, "start", np.where(minus, rend - b, rstart + a))
        obs.insert(5, "end", np.where(minus, rend - a, rstart + b))
        obs.insert(6, "strand", [r.strand for r in recs])
        obs["token_index"] = pos.numpy().astype(np.int32)
        return rows, obs

    def _items(self, batch):
        return batch.extra["items"].tolist()

    def _positions_last(self, layer, act, batch):
        """``[B, positions, d]`` view of a layer output, whatever its layout."""
        axis = None
        for pattern, ax in self.length_axis.items():
            if fnmatchcase(layer, pattern):
                axis = ax
                break
        if axis is None:
            width = self.window
            fits = [ax for ax in (1, 2) if act.shape[ax] <= width and width % act.shape[ax] == 0]
            if len(fits) != 1:
                raise InputError(f"layer {layer!r} gives shape {tuple(act.shape)}: cannot tell which axis runs "
                                 "along the sequence; pass length_axis={pattern: 1 or 2}")
            axis = fits[0]
        return act if axis == 1 else act.transpose(1, 2)

    def _bins(self, layer, n: int, batch):
        """Window coordinates of each of a layer's ``n`` output positions."""
        if not self.onehot:
            raise InputError(f"layer {layer!r} has {n} positions but the input has "
                             f"{batch.extra['token_start'].shape[1]} tokens; hook a per-token layer")
        width = self.window
        if self.bin_size and n * self.bin_size < width:
            size, offset = self.bin_size, (width - n * self.bin_size) // 2  # a centred crop (Enformer)
        elif width % n == 0:
            size, offset = width // n, 0
        else:
            raise InputError(f"layer {layer!r}: {n} positions do not tile a {width}-bp window; pass bin_size=")
        start = (torch.arange(n) * size + offset).unsqueeze(0).repeat(len(batch.meta), 1)
        end = start + size
        start[end > batch.extra["length"].unsqueeze(1)] = -1  # bins reaching into padding
        return start, end

    # -- evidence ---------------------------------------------------------------------------

    def evidence(self, table, features, *, data=None, sae=None, subjects=None, label=None,
                 reference=None, out=None, progress=True, **options):
        """Motif evidence of ``features``: the DNA where each fires most, the motifs it shares
        against DNA where it does not fire, and the JASPAR matrices they match.

        See :func:`bioviz.adapters.sequence.evidence.motif_evidence`, which this calls;
        ``options`` go to it (``n_top``, ``flank``, ``n_background``, ``min_windows``,
        ``max_motifs``, ``matches``, ``k``, ``alpha``, ``db``, ``tax_group``, ``seed``...).
        ``sae`` and ``reference`` are not needed (the codes are in ``table``). Tables, each with ``feature``:

        - ``windows``: the top fired windows, ``rank`` (1 = highest activation), ``row`` (obs
          name), ``subject_id, sample_id, seq_id, chrom``, ``start, end`` (the window in genome
          coordinates: the row's span ± ``flank``, clipped to its sequence), ``strand``,
          ``row_start, row_end`` (the row's own span), ``activation``, ``sequence`` (as the
          model read it: reverse-complemented on the minus strand), plus ``label``'s column;
        - ``background_windows``: the same columns for the windows motifs were tested against
          (rows where the feature is 0, drawn at random with ``seed``, sharing no sequence with
          the top windows; ``activation`` 0, ``rank`` in the order drawn);
        - ``motifs``: one row per discovered motif × JASPAR match: ``motif`` (1 = first found,
          from the most enriched k-mer), ``rank`` (1 = best match of motif 1), ``match_rank``,
          ``consensus, seed, width``, ``n_fired, n_sites, fired_share`` (top windows holding a
          site), ``n_background, n_background_sites, background_share``, ``site_p``
          (hypergeometric p of that split, at the threshold chosen to minimise it),
          ``discovery_p, discovery_q`` (the seed k-mer's one-sided Fisher p and its BH q over
          every k-mer tested), the match's ``matrix_id, name, p, q`` (Tomtom p, BH over the
          JASPAR selection), ``offset, orientation, overlap``, and ``logo`` (file name in
          ``out``, motif 1 only);
        - ``motif_pwms``: ``motif, position, A, C, G, T`` (the discovered PWMs).
        """
        from .evidence import motif_evidence

        return motif_evidence(self, table, features, data=data, subjects=subjects, label=label,
                              out=out, progress=progress, **options)

    def config(self):
        return {"adapter": type(self).__name__, "window": self.window, "overlap": self.overlap,
                "call": self.call, "bin_size": self.bin_size, **self.tokenizer.config()}

