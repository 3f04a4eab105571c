"""DNA motif evidence for features: what the sequence windows where a feature fires share.

- :func:`window_pwm`: the position weight matrix of aligned windows (activation-weighted).
- :func:`kmer_enrichment` and :func:`discover`: k-mers enriched in fired windows against
  background windows (both strands merged), and PWMs grown from the top k-mers.
- :func:`tomtom` and :func:`match_jaspar`: which known motif (JASPAR) a PWM is, Tomtom's way.

Matrices are ``4 × L`` float64 probabilities, rows in the order A, C, G, T. Sequences are
strings of A, C, G, T and N (any case); N (unknown) never counts as a base and no k-mer or
site may contain one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.stats import hypergeom
from tqdm.auto import tqdm

from ..analysis.multiple import bh
from ..errors import InputError

__all__ = ["Motif", "window_pwm", "kmer_enrichment", "discover", "tomtom", "match_jaspar"]

_BASES = "ACGT"
_N = 4  # code of N, and of the separator between windows
_CODE = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate(_BASES + "N"):
    _CODE[ord(_b)] = _CODE[ord(_b.lower())] = _i
_COMPLEMENT = np.array([3, 2, 1, 0, _N], dtype=np.uint8)
_SEEDS_TRIED = 10  # significant k-mers tried in turn when a seed finds fewer than 2 sites


# ---------------------------------------------------------------------------------------------
# sequences


@dataclass
class _Windows:
    """Windows encoded 0-3 (ACGT) and 4 (N), joined with one N between windows (so no k-mer
    or site spans two windows) and N-padded at the end."""

    codes: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    def window_of(self, pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, pos, side="right") - 1


def _encode(sequences, name: str, pad: int = 64) -> _Windows:
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, (Sequence, np.ndarray,
                                                                         pd.Series)):
        raise InputError(f"{name} must be a list of DNA strings (one per window), "
                         f"got {type(sequences).__name__}")
    seqs = list(sequences)
    if not seqs:
        raise InputError(f"{name} is empty: give at least one DNA window")
    for i, s in enumerate(seqs):
        if not isinstance(s, str):
            raise InputError(f"{name}[{i}] is a {type(s).__name__}, expected a DNA string")
        if not s:
            raise InputError(f"{name}[{i}] is an empty string, expected a DNA window")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    joined = "N".join(seqs)
    raw = np.frombuffer(joined.encode("ascii", errors="replace"), dtype=np.uint8)
    codes = _CODE[raw]
    bad = np.flatnonzero(codes == 255)
    if bad.size:
        pos = int(bad[0])
        i = int(np.searchsorted(starts, pos, side="right") - 1)
        at = pos - int(starts[i])
        raise InputError(f"{name}[{i}] has {seqs[i][at]!r} at position {at}; expected only "
                         "A, C, G, T or N (any case): replace other IUPAC codes by N")
    codes = np.concatenate([codes, np.full(pad + 1, _N, dtype=np.uint8)])
    return _Windows(codes, starts, lengths)


def _onehot_counts(mat: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """4 × L base counts of the rows of ``mat`` (codes, n × L); N counts as nothing."""
    w = np.ones(len(mat)) if weights is None else weights
    return np.stack([(w[:, None] * (mat == b)).sum(0) for b in range(4)]).astype(np.float64)


def _normalise(counts: np.ndarray, pseudocount: float) -> np.ndarray:
    counts = counts + pseudocount
    total = counts.sum(0, keepdims=True)
    # a column with no base at all (only N, no pseudocount) carries no information: uniform
    return np.where(total > 0, counts / np.where(total > 0, total, 1.0), 0.25)


def window_pwm(sequences: list[str], weights=None, *, width: int | None = None,
               pseudocount: float = 0.1) -> np.ndarray:
    """Position weight matrix of aligned windows, each counted with its weight.

    Parameters
    ----------
    sequences : list of str
        Windows aligned on the feature's position (e.g. centred on its peak activation). Any
        case; N counts as no base.
    weights : array-like of shape (n_windows,), optional
        Non-negative weight of each window (e.g. the feature's activation there); default 1.
    width : int, optional
        Keep the central ``width`` bases of each window (windows may then differ in length;
        an odd surplus drops its extra base on the right). Default: the windows' common length.
    pseudocount : float
        Added to every base count of every column before normalising.

    Returns
    -------
    numpy.ndarray of float64, shape (4, L)
        Probabilities, rows A, C, G, T; each column sums to 1 (a column with no base and no
        pseudocount is uniform).

    Raises
    ------
    InputError
        Empty list, a character outside ACGTN (names the window and position), windows of
        different lengths without ``width``, ``width`` longer than a window, or bad weights.
    """
    enc = _encode(sequences, "sequences")
    n = len(enc.lengths)
    if width is None:
        if np.any(enc.lengths != enc.lengths[0]):
            i = int(np.flatnonzero(enc.lengths != enc.lengths[0])[0])
            raise InputError(f"sequences differ in length (sequences[0] has {enc.lengths[0]}, "
                             f"sequences[{i}] has {enc.lengths[i]}): pass width= to keep the "
                             "central bases of each")
        width = int(enc.lengths[0])
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise InputError(f"width must be a positive integer, got {width!r}")
    if width > enc.lengths.min():
        i = int(np.argmin(enc.lengths))
        raise InputError(f"width={width} is longer than sequences[{i}] ({enc.lengths[i]} bases): "
                         "give a width at most the shortest window's length")
    if not np.isfinite(pseudocount) or pseudocount < 0:
        raise InputError(f"pseudocount must be a finite number >= 0, got {pseudocount!r}")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise InputError(f"weights must have one value per sequence ({n}), got shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() == 0:
            raise InputError("weights must be finite, >= 0 and not all 0 "
                             "(e.g. the feature's activation in each window)")
    first = enc.starts + (enc.lengths - width) // 2
    mat = enc.codes[first[:, None] + np.arange(width)]
    return _normalise(_onehot_counts(mat, w), pseudocount)


# ---------------------------------------------------------------------------------------------
# k-mers


def _check_k(k, shortest: int) -> tuple[int, ...]:
    ks = (k,) if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else tuple(k)
    if not ks or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not 3 <= x <= 16
                     for x in ks):
        raise InputError(f"k must be a k-mer length or a tuple of them, each in 3..16, got {k!r}")
    if max(ks) > shortest:
        raise InputError(f"k={max(ks)} is longer than the shortest window ({shortest} bases): "
                         "use shorter k-mers or longer windows")
    return tuple(sorted(set(int(x) for x in ks)))


def _check_mismatches(mismatches) -> int:
    if isinstance(mismatches, bool) or mismatches not in (0, 1):
        raise InputError(f"mismatches must be 0 or 1, got {mismatches!r}")
    return int(mismatches)


def _kmer_presence(enc: _Windows, k: int, mismatches: int,
                   block: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Canonical k-mer codes (the smaller of a k-mer and its reverse complement) and, for each,
    the number of windows that hold it on either strand, within ``mismatches`` (0 or 1)."""
    power = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)
    every = np.lib.stride_tricks.sliding_window_view(enc.codes, k)
    found = []
    # blocks of whole windows keep the neighbourhood arrays small and the pairs distinct
    first = np.unique(np.searchsorted(enc.starts, np.arange(0, enc.starts[-1] + 1, block)))
    edges = np.append(enc.starts[first], len(every))
    for a, b in zip(edges[:-1], edges[1:]):
        ok = a + np.flatnonzero((every[a:b] < _N).all(1))
        win = every[ok].astype(np.int64)
        fwd, rc = win @ power, (3 - win[:, ::-1]) @ power
        if mismatches:
            # each base changed to each of the other three, on both strands at once
            delta = ((win[:, :, None] + np.arange(1, 4)) % 4 - win[:, :, None]).reshape(
                len(win), -1)
            fwd = np.column_stack([fwd, fwd[:, None] + delta * np.repeat(power, 3)])
            rc = np.column_stack([rc, rc[:, None] - delta * np.repeat(power[::-1], 3)])
        canon = np.minimum(fwd, rc).reshape(len(win), -1)
        # each window counts a k-mer once, however often it holds it
        found.append(_distinct(enc.window_of(ok)[:, None] * 4 ** k + canon) % 4 ** k)
    kmers = np.sort(np.concatenate(found))
    first = np.flatnonzero(np.r_[True, kmers[1:] != kmers[:-1]])
    return kmers[first], np.diff(np.r_[first, len(kmers)])


def _distinct(x: np.ndarray) -> np.ndarray:
    # a sort and a diff: numpy 2's hashing np.unique is ~5x slower on these int64 keys
    x = np.sort(x, axis=None)
    return x[np.r_[True, x[1:] != x[:-1]]]


def _kmer_string(codes: np.ndarray, k: int) -> list[str]:
    digits = (codes[:, None] // 4 ** np.arange(k - 1, -1, -1)) % 4
    return ["".join(_BASES[d] for d in row) for row in digits]


def _kmer_table(fired: _Windows, background: _Windows, ks: tuple[int, ...],
                mismatches: int) -> pd.DataFrame:
    n1, n0 = len(fired.lengths), len(background.lengths)
    parts = []
    for k in ks:
        cf, nf = _kmer_presence(fired, k, mismatches)
        cb, nb = _kmer_presence(background, k, mismatches)
        codes = np.union1d(cf, cb)
        a = np.zeros(len(codes), np.int64)
        b = np.zeros(len(codes), np.int64)
        a[np.searchsorted(codes, cf)] = nf
        b[np.searchsorted(codes, cb)] = nb
        parts.append(pd.DataFrame({"kmer": _kmer_string(codes, k), "k": k, "n_fired": a,
                                   "n_background": b}))
    t = pd.concat(parts, ignore_index=True)
    a, b = t["n_fired"].to_numpy(), t["n_background"].to_numpy()
    t["frac_fired"] = a / n1
    t["frac_background"] = b / n0
    # one-sided Fisher: P(at least a of the a+b windows holding the k-mer are fired ones)
    t["p"] = hypergeom.sf(a - 1, n1 + n0, a + b, n1)
    t["q"] = bh(t["p"].to_numpy())
    return t.sort_values(["p", "n_fired", "k", "kmer"], ascending=[True, False, False, True],
                         ignore_index=True)


def kmer_enrichment(sequences_fired: list[str], background: list[str], *, k=(6, 8),
                    mismatches: int = 0) -> pd.DataFrame:
    """K-mers enriched in the windows where a feature fires against background windows.

    A k-mer and its reverse complement are one k-mer (named by the alphabetically first).
    Each window counts once per k-mer it holds (on either strand); k-mers with N are skipped.

    Parameters
    ----------
    sequences_fired, background : list of str
        Windows where the feature fires, and windows where it does not (or random ones).
    k : int or tuple of int
        The k-mer lengths counted, each one: ``(6, 8)`` counts 6-mers and 8-mers.
    mismatches : {0, 1}
        1: a window holds a k-mer when it holds it or any k-mer one base away (degenerate
        sites match far more often than exactly; neighbourhoods of short k-mers are common in
        any window, so this is for k >= 8).

    Returns
    -------
    pandas.DataFrame
        One row per k-mer seen in either set: ``kmer``, ``k``, ``n_fired``, ``n_background``
        (windows holding it), ``frac_fired``, ``frac_background``, ``p`` (one-sided Fisher
        exact test, i.e. hypergeometric upper tail) and ``q`` (Benjamini–Hochberg over all
        rows, all lengths together). Sorted by ``p``.
    """
    fired = _encode(sequences_fired, "sequences_fired")
    bg = _encode(background, "background")
    ks = _check_k(k, int(min(fired.lengths.min(), bg.lengths.min())))
    return _kmer_table(fired, bg, ks, _check_mismatches(mismatches))


# ---------------------------------------------------------------------------------------------
# discovery


@dataclass
class Motif:
    """A motif found by :func:`discover`.

    Attributes
    ----------
    pwm : numpy.ndarray, shape (4, L)
        Probabilities (rows A, C, G, T) from the aligned fired sites, with the pseudocount.
    consensus : str
        The most probable base of each column.
    seed : str
        The k-mer the motif grew from.
    n_sites, n_background : int
        Fired and background windows whose best site passes the motif's score threshold.
    threshold : float
        That log2-odds score threshold (chosen to best separate fired from background).
    evidence : pandas.DataFrame
        The k-mers significant (``q < alpha``) in the round that found the motif, as in
        :func:`kmer_enrichment`, sorted by ``p`` (the seed is the first that grew a motif).
    """

    pwm: np.ndarray
    consensus: str
    seed: str
    n_sites: int
    n_background: int
    threshold: float
    evidence: pd.DataFrame

    @property
    def width(self) -> int:
        return self.pwm.shape[1]


def _scan(enc: _Windows, pssm: np.ndarray):
    """Best site of each window on either strand: (score, position, strand) per window;
    score -inf where no site fits. Forward wins ties, then the leftmost position."""
    w = pssm.shape[1]
    table = np.vstack([pssm, np.full((1, w), -np.inf)])  # a site with an N never scores
    rc = np.vstack([pssm[::-1, ::-1], np.full((1, w), -np.inf)])
    codes = np.concatenate([enc.codes, np.full(w, _N, np.uint8)])
    idx = np.arange(len(enc.codes))
    win = np.lib.stride_tricks.sliding_window_view(codes, w)[idx]
    cols = np.arange(w)
    s_fwd, s_rev = table[win, cols].sum(1), rc[win, cols].sum(1)
    strand = (s_rev > s_fwd).astype(np.int8)
    score = np.maximum(s_fwd, s_rev)
    best = np.maximum.reduceat(score, enc.starts)
    owner = enc.window_of(idx)
    hit = np.flatnonzero((score == best[owner]) & np.isfinite(score))
    first_owner, first = np.unique(owner[hit], return_index=True)
    pos = np.full(len(enc.starts), -1, np.int64)
    pos[first_owner] = hit[first]
    return best, pos, np.where(pos >= 0, strand[np.maximum(pos, 0)], 0)


def _sites(enc: _Windows, pos, strand, left: int, right: int) -> np.ndarray:
    """Codes of the sites at ``pos`` widened by ``left``/``right`` bases, read on their strand,
    N outside their window."""
    offs = np.arange(-left, right)
    at = pos[:, None] + offs
    win = enc.window_of(pos)
    inside = (at >= enc.starts[win, None]) & (at < (enc.starts + enc.lengths)[win, None])
    mat = np.where(inside, enc.codes[np.clip(at, 0, len(enc.codes) - 1)], _N)
    minus = strand == 1
    # a minus-strand site of core width w starts at pos; its reverse complement runs backwards
    mat[minus] = _COMPLEMENT[mat[minus][:, ::-1]]
    return mat


def _relative_entropy(pwm: np.ndarray, bg: np.ndarray) -> np.ndarray:
    return (pwm * np.log2(pwm / bg[:, None])).sum(0)


def _best_threshold(fired_best: np.ndarray, bg_best: np.ndarray):
    """The score threshold whose windows-above split is most enriched in fired windows (lowest
    hypergeometric p); ties go to the higher threshold."""
    cand = np.unique(fired_best[np.isfinite(fired_best)])
    if cand.size == 0:
        return np.inf, 1.0
    a = len(fired_best) - np.searchsorted(np.sort(fired_best), cand, side="left")
    b = len(bg_best) - np.searchsorted(np.sort(bg_best), cand, side="left")
    p = hypergeom.sf(a - 1, len(fired_best) + len(bg_best), a + b, len(fired_best))
    i = len(p) - 1 - int(np.argmin(p[::-1]))
    return float(cand[i]), float(p[i])


def _grow(seed: str, fired: _Windows, bg: _Windows, base: np.ndarray, *, mismatches: int,
          flank: int, min_info: float, pseudocount: float, n_iter: int):
    """Grow a PWM from a seed k-mer: align the fired windows' best sites (first the seed's
    matches within ``mismatches``, then the best PWM matches above a fitted threshold), widen
    them by ``flank`` on each side, and trim edge columns with less than ``min_info`` bits;
    repeat until the sites stop changing."""
    seed_codes = _CODE[np.frombuffer(seed.encode(), np.uint8)]
    # first sites: the seed's own matches (score minus the mismatches), in the seed's frame
    pssm = np.where(np.arange(4)[:, None] == seed_codes, 0.0, -1.0)
    sites = None
    for i in range(n_iter):
        best_f, pos, strand = _scan(fired, pssm)
        thr = -mismatches if i == 0 else _best_threshold(best_f, _scan(bg, pssm)[0])[0]
        keep = np.flatnonzero(best_f >= thr)
        if len(keep) < 2:
            return None
        key = (tuple(keep), tuple(pos[keep]), tuple(strand[keep]))
        if key == sites:
            break
        sites = key
        mat = _sites(fired, pos[keep], strand[keep], flank, pssm.shape[1] + flank)
        pwm = _normalise(_onehot_counts(mat), pseudocount)
        strong = np.flatnonzero(_relative_entropy(pwm, base) >= min_info)
        if strong.size == 0:
            return None
        pwm = pwm[:, strong[0]:strong[-1] + 1]
        pssm = np.log2(pwm / base[:, None])
    best_f, pos, _ = _scan(fired, pssm)
    best_b, pos_b, _ = _scan(bg, pssm)
    thr, _ = _best_threshold(best_f, best_b)
    return pwm, thr, best_f, pos, best_b, pos_b


def discover(sequences_fired: list[str], background: list[str], *, k=(6, 8), top: int = 5,
             mismatches: int = 1, alpha: float = 0.05, flank: int = 10, min_info: float = 0.3,
             pseudocount: float = 0.5, n_iter: int = 10, progress: bool = True) -> list[Motif]:
    """Motifs enriched in the windows where a feature fires against background windows.

    A simple, deterministic procedure (not MEME or STREME). Each round:

    1. test every k-mer (both strands merged) with :func:`kmer_enrichment`; stop when no
       k-mer has ``q < alpha``;
    2. seed with the top k-mer; take each fired window's best seed match (either strand)
       within ``mismatches``;
    3. widen the aligned sites by ``flank`` bases each side, count them into a PWM (plus
       ``pseudocount``), and trim edge columns with less than ``min_info`` bits of relative
       entropy against the background's base composition;
    4. rescan fired and background windows with the PWM's log2-odds; keep each window's best
       site if it passes the threshold that best separates fired from background windows
       (lowest hypergeometric p); repeat 3-4 until the sites stop changing (``n_iter`` at most);
    5. mask the found sites (with N) in fired and background windows, and start again.

    Parameters
    ----------
    sequences_fired, background : list of str
        Windows where the feature fires, and background windows (where it does not).
    k : int or tuple of int
        K-mer lengths counted, each one.
    mismatches : {0, 1}
        Count a k-mer in a window that holds it within this many mismatches (see
        :func:`kmer_enrichment`). 1 by default: with CTCF and SPI1 sites planted in 50 of 100
        windows each, exact counts found only SPI1, one mismatch found both.
    top : int
        The most motifs returned.
    alpha : float
        Benjamini–Hochberg level a seed k-mer must reach.
    flank, min_info, pseudocount, n_iter : see the steps above.
    progress : bool
        Show a progress bar over rounds.

    Returns
    -------
    list of Motif
        In the order found (the first from the most significant k-mer); empty when no k-mer
        is significant.
    """
    fired = _encode(sequences_fired, "sequences_fired")
    bg = _encode(background, "background")
    ks = _check_k(k, int(min(fired.lengths.min(), bg.lengths.min())))
    mismatches = _check_mismatches(mismatches)
    for name, value, low in (("top", top, 1), ("flank", flank, 0), ("n_iter", n_iter, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")
    if not np.isfinite(pseudocount) or pseudocount <= 0:
        raise InputError(f"pseudocount must be > 0 (log-odds need it), got {pseudocount!r}")
    counts = np.bincount(bg.codes, minlength=5)[:4].astype(np.float64) + 1
    base = (counts + counts[::-1]) / (2 * counts.sum())  # both strands: A=T, C=G
    motifs: list[Motif] = []
    for _ in tqdm(range(top), desc="motif rounds", disable=not progress):
        table = _kmer_table(fired, bg, ks, mismatches)
        significant = table[table["q"] < alpha]
        grown = None
        for seed in significant["kmer"].head(_SEEDS_TRIED):
            grown = _grow(seed, fired, bg, base, mismatches=mismatches, flank=flank,
                          min_info=min_info, pseudocount=pseudocount, n_iter=n_iter)
            if grown is not None:
                break
        if grown is None:
            break
        pwm, thr, best_f, pos, best_b, pos_b = grown
        w = pwm.shape[1]
        motifs.append(Motif(pwm=pwm, consensus="".join(_BASES[i] for i in pwm.argmax(0)),
                            seed=seed, n_sites=int((best_f >= thr).sum()),
                            n_background=int((best_b >= thr).sum()), threshold=thr,
                            evidence=significant.reset_index(drop=True)))
        # mask the sites so the next round finds something else (the codes are our own copy)
        for enc, best, p in ((fired, best_f, pos), (bg, best_b, pos_b)):
            hit = p[best >= thr]
            enc.codes[hit[:, None] + np.arange(w)] = _N
    return motifs


# ---------------------------------------------------------------------------------------------
# comparison with known motifs


def _check_pwm(pwm, name: str = "pwm") -> np.ndarray:
    m = np.asarray(pwm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != 4 or m.shape[1] < 1:
        hint = " (transpose it: rows must be A, C, G, T)" if m.ndim == 2 and m.shape[1] == 4 else ""
        raise InputError(f"{name} must be a 4 × L matrix (rows A, C, G, T), got shape "
                         f"{m.shape}{hint}")
    # a file's rounded probabilities (e.g. 3 decimals) are renormalised; counts are refused
    if not np.all(np.isfinite(m)) or np.any(m < 0) or not np.allclose(m.sum(0), 1, atol=0.01):
        raise InputError(f"{name} must hold probabilities: finite, >= 0, each column summing to "
                         "1 (divide counts by their column sums)")
    return m / m.sum(0)


def _check_pwms(pwms: Sequence, name: str) -> list[np.ndarray]:
    """:func:`_check_pwm` of many matrices at once (a database of a thousand is checked in
    one pass over its columns); the first bad one is named."""
    mats = [np.asarray(m, dtype=np.float64) for m in pwms]
    if any(m.ndim != 2 or m.shape[0] != 4 or m.shape[1] < 1 for m in mats):
        return [_check_pwm(m, f"{name}[{i}]") for i, m in enumerate(mats)]
    cols = np.concatenate(mats, axis=1)
    sums = cols.sum(0)
    ok = np.isfinite(cols).all(0) & (cols >= 0).all(0) & (np.abs(sums - 1) <= 0.01)
    if not ok.all():
        return [_check_pwm(m, f"{name}[{i}]") for i, m in enumerate(mats)]  # names the bad one
    bounds = np.cumsum([m.shape[1] for m in mats])[:-1]
    return np.split(cols / sums, bounds, axis=1)


def tomtom(query, targets: Sequence, *, n_bins: int = 100) -> pd.DataFrame:
    """Similarity p-values of a query PWM against each target PWM, following Tomtom.

    The method of Gupta et al. (2007, Genome Biology 8:R24), as memelite implements it
    (complete scores, both strands):

    - a column pair scores minus the Euclidean distance between the two probability columns,
      less the median of that query column's scores against every target column (both
      strands), so a query column left unaligned scores 0;
    - an alignment (any offset, any overlap) scores the sum over the query's columns; scores
      are rounded to ``n_bins`` bins over their range;
    - the null of one alignment is the sum of independent column scores, each drawn from the
      query column's scores against all target columns; the p-value of a target is that of
      the best alignment's score under the maximum over all its alignments (independent);
    - a target's two strands are merged as ``1 - (1 - min p)²``.

    Parameters
    ----------
    query : array-like, shape (4, L)
        Probabilities, rows A, C, G, T.
    targets : sequence of array-like, each (4, L_t)
        The database; the p-values depend on it (use a full database, not a handful).
    n_bins : int
        Score bins (Tomtom's ``t``).

    Returns
    -------
    pandas.DataFrame
        One row per target, in the order given: ``p``, ``score`` (the best alignment's
        summed, median-centred column scores, binned), ``offset`` (the target column, on the
        matched strand, aligned with the query's first column; negative when the query starts
        before the target), ``overlap`` (aligned columns) and ``orientation`` (``"+"``: the
        query matches the target as given, ``"-"``: its reverse complement).
    """
    q = _check_pwm(query, "query")
    if len(targets) == 0:
        raise InputError("targets is empty: give the motif database to compare against")
    fwd = _check_pwms(targets, "targets")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 10:
        raise InputError(f"n_bins must be an integer >= 10, got {n_bins!r}")
    mats = fwd + [t[::-1, ::-1] for t in fwd]
    lens = np.array([t.shape[1] for t in mats])
    nq = q.shape[1]

    # column scores, median-centred per query column, then binned as memelite bins them
    allcols = np.concatenate(mats, axis=1)
    dist = -np.sqrt(((q[:, :, None] - allcols[:, None, :]) ** 2).sum(0))
    centred = dist - _column_median(dist)
    i_min = int(np.floor(centred.min()))
    scale = int(np.floor(n_bins / max(centred.max() - i_min, 1.0)))
    off = -i_min * scale  # the binned score of an unaligned column
    x = np.floor((centred - i_min) * scale + 0.5).astype(np.int64)  # in 0..n_bins

    # best alignment per target: targets laid end to end with nq - 1 empty columns between
    # them, so alignment s of a target is a diagonal sum that sees only that target
    starts = np.concatenate([[0], np.cumsum(lens + nq - 1)[:-1]])
    total_len = int(starts[-1] + lens[-1] + nq - 1)
    gp = np.full((nq, total_len + nq - 1), off, dtype=np.int64)
    col = np.repeat(starts, lens) + np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens,
                                                                      lens)
    gp[:, col + nq - 1] = x
    sums = sum(gp[i, i:i + total_len] for i in range(nq))
    owner = np.repeat(np.arange(len(mats)), lens + nq - 1)
    s = np.arange(total_len) - starts[owner]
    overlap = np.minimum(s + 1, nq) - np.maximum(0, s - lens[owner] + 1)
    key = sums * (nq + 1) + overlap  # ties: the larger overlap, then the first
    best_key = np.maximum.reduceat(key, starts)
    hit = np.flatnonzero(key == best_key[owner])
    _, first = np.unique(owner[hit], return_index=True)
    at = hit[first]
    best = sums[at]

    p = _max_null_sf(x, off, nq, n_bins, lens, best)
    n = len(fwd)
    minus = p[n:] < p[:n]
    pick = np.arange(n) + n * minus
    pmin = np.minimum(p[:n], p[n:])
    return pd.DataFrame({"p": pmin * (2 - pmin),
                         "score": (best[pick] - nq * off) / scale,
                         "offset": s[at][pick] - nq + 1,
                         "overlap": overlap[at][pick],
                         "orientation": np.where(minus, "-", "+")})


def _column_median(dist: np.ndarray) -> np.ndarray:
    # exact; memelite approximates it over 1000 bins, the one source of their differences
    return np.median(dist, axis=1, keepdims=True)


def _max_null_sf(x: np.ndarray, off: int, nq: int, n_bins: int, lens: np.ndarray,
                 best: np.ndarray) -> np.ndarray:
    """P(max over a target's alignments >= its best score) under independent columns."""
    f = np.stack([np.bincount(r, minlength=n_bins + 1) for r in x]) / x.shape[1]
    axis = nq * n_bins + 1
    span = {}
    log_cdf = []  # log P(alignment total < v) for v in 0..axis-1, one row per span
    for lo in range(nq):
        pmf = np.ones(1)
        for hi in range(lo, nq):
            pmf = np.convolve(pmf, f[hi])
            sf = np.zeros(axis + 1)
            shift = (nq - (hi - lo + 1)) * off
            tail = np.cumsum(pmf[::-1])[::-1]  # P(sum >= u)
            sf[:shift + 1] = 1.0
            sf[shift:shift + len(tail)] = tail
            with np.errstate(divide="ignore"):
                log_cdf.append(np.maximum(np.log1p(-np.minimum(sf[:axis], 1.0)), -1e6))
            span[lo, hi] = len(log_cdf) - 1
    log_cdf = np.array(log_cdf)
    uniq, t_of = np.unique(lens, return_inverse=True)
    mult = np.zeros((len(uniq), len(log_cdf)))
    for j, t in enumerate(uniq):
        for s in range(t + nq - 1):
            mult[j, span[max(0, nq - 1 - s), min(nq - 1, nq - 2 - s + t)]] += 1
    logf = (mult[t_of] * log_cdf[:, best].T).sum(1)
    return -np.expm1(logf)


@lru_cache(maxsize=8)
def jaspar_matrices(db, collection: str | None, tax_group: str | None):
    """(matrix IDs, names, probability matrices) of a JASPAR selection, loaded once."""
    from pyjaspar import JASPAR_LATEST_RELEASE, jaspar_releases, jaspardb  # imports Biopython

    if db is None or isinstance(db, str):
        release = db or JASPAR_LATEST_RELEASE
        if release not in jaspar_releases:
            raise InputError(f"db={db!r} is not a JASPAR release pyjaspar ships; use one of "
                             f"{sorted(jaspar_releases)}, a pyjaspar.jaspardb, or None")
        db = jaspardb(release=release)
    with warnings.catch_warnings():  # pyjaspar warns on an empty selection: we raise below
        warnings.simplefilter("ignore")
        found = db.fetch_motifs(collection=collection, tax_group=tax_group)
    if not found:
        raise InputError(f"no JASPAR matrix in collection={collection!r}, "
                         f"tax_group={tax_group!r}: check the spelling (e.g. 'CORE', "
                         "'vertebrates') or pass None for all")
    mats = []
    for m in found:
        c = np.array([m.counts[b] for b in _BASES], dtype=np.float64)
        c = c / c.sum(0, keepdims=True)
        c.setflags(write=False)
        mats.append(c)
    return tuple(m.matrix_id for m in found), tuple(m.name for m in found), tuple(mats)


def match_jaspar(pwm, *, db=None, collection: str | None = "CORE",
                 tax_group: str | None = "vertebrates", top: int | None = 5) -> pd.DataFrame:
    """Which JASPAR matrices a PWM resembles, by :func:`tomtom` against the whole selection.

    Column similarity is minus the Euclidean distance between probability columns (Tomtom's
    ``ed``); p-values follow Tomtom (see :func:`tomtom`), and ``q`` is Benjamini–Hochberg
    over every matrix of the selection. Near-uniform query columns match the uninformative
    stretches of long JASPAR matrices (a uniform 6-column query gets p ~ 1e-11 against
    GATA1::TAL1, in memelite too): trim them first (:func:`discover` does).

    Parameters
    ----------
    pwm : array-like, shape (4, L)
        Probabilities, rows A, C, G, T (e.g. :attr:`Motif.pwm`).
    db : None, str or pyjaspar.jaspardb
        None: the newest JASPAR release pyjaspar ships (offline); a release name such as
        ``"JASPAR2024"``; or an open ``jaspardb``. Each selection is loaded once per process.
    collection, tax_group : str or None
        JASPAR's selection (None: all).
    top : int or None
        Rows returned (None: all).

    Returns
    -------
    pandas.DataFrame
        ``rank`` (1 = most similar), ``matrix_id``, ``name``, ``p``, ``q``, ``offset``,
        ``orientation``, ``overlap`` (as in :func:`tomtom`); sorted by ``p``.
    """
    query = _check_pwm(pwm)
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer))
                            or top < 1):
        raise InputError(f"top must be a positive integer or None, got {top!r}")
    if not (db is None or isinstance(db, str) or hasattr(db, "fetch_motifs")):
        raise InputError(f"db must be None, a JASPAR release name or a pyjaspar.jaspardb, got "
                         f"{type(db).__name__}")
    ids, names, mats = jaspar_matrices(db, collection, tax_group)
    res = tomtom(query, mats)
    res.insert(0, "name", names)
    res.insert(0, "matrix_id", ids)
    res["q"] = bh(res["p"].to_numpy())
    res["_score"] = -res["score"]
    res = res.sort_values(["p", "_score", "matrix_id"], ignore_index=True)
    res.insert(0, "rank", np.arange(1, len(res) + 1))
    cols = ["rank", "matrix_id", "name", "p", "q", "offset", "orientation", "overlap"]
    return res[cols].head(len(res) if top is None else top)
