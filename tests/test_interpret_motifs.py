"""DNA motif evidence: window PWMs against Biopython and hand counts, k-mer enrichment against
Fisher's exact test on brute-force counts, motif discovery on planted JASPAR sites, and the
Tomtom comparison against memelite's."""

from functools import cache
from itertools import product

import numpy as np
import pandas as pd
import pytest
from Bio import motifs as bio_motifs
from pyjaspar import jaspardb
from scipy.stats import fisher_exact
from statsmodels.stats.multitest import multipletests

from bioviz.errors import InputError
from bioviz.interpret import motifs as M
from bioviz.interpret.motifs import discover, kmer_enrichment, match_jaspar, tomtom, window_pwm

CTCF, SPI1 = "MA0139.2", "MA0080.7"


@cache
def _db():
    return jaspardb(release="JASPAR2026")


@cache
def _pfm(matrix_id: str) -> np.ndarray:
    m = _db().fetch_motif_by_id(matrix_id)
    c = np.array([m.counts[b] for b in "ACGT"], dtype=float)
    return c / c.sum(0)


def _strings(codes: np.ndarray) -> list[str]:
    return ["".join("ACGT"[c] for c in row) for row in codes]


def _plant(spec, seed: int, n: int = 200, length: int = 100):
    """``n`` random windows; window i < n/2 gets a site sampled from ``spec(i)`` (a JASPAR ID
    or None) on a random strand at a random place. Returns (fired, background)."""
    rng = np.random.default_rng(seed)
    seqs = rng.integers(0, 4, size=(n, length))
    for i in range(n // 2):
        if (mid := spec(i)) is None:
            continue
        pfm = _pfm(mid)
        site = np.array([rng.choice(4, p=col) for col in pfm.T])
        if rng.random() < 0.5:
            site = 3 - site[::-1]
        at = rng.integers(0, length - len(site) + 1)
        seqs[i, at:at + len(site)] = site
    s = _strings(seqs)
    return s[: n // 2], s[n // 2:]


def _revcomp(s: str) -> str:
    return s[::-1].translate(str.maketrans("ACGT", "TGCA"))


# ---------------------------------------------------------------------------------------------
# window_pwm


def test_window_pwm_matches_biopython():
    seqs = _strings(np.random.default_rng(0).integers(0, 4, size=(40, 12)))
    ref = bio_motifs.create(seqs).counts.normalize(pseudocounts=0.5)
    expected = np.array([ref[b] for b in "ACGT"])
    np.testing.assert_allclose(window_pwm(seqs, pseudocount=0.5), expected, rtol=1e-12)


def test_window_pwm_weights_width_and_n_by_hand():
    # central 3 bases: CGT, GGT, CNT (lower case is read as upper case; N is no base)
    seqs = ["ACGTA", "AGGTC", "tcNTa"]
    pwm = window_pwm(seqs, weights=[1, 2, 1], width=3, pseudocount=0)
    np.testing.assert_allclose(pwm, [[0, 0, 0], [0.5, 0, 0], [0.5, 1, 0], [0, 0, 1]])
    pwm = window_pwm(seqs, weights=[1, 2, 1], width=3, pseudocount=1)
    np.testing.assert_allclose(pwm[:, 1], np.array([1, 1, 4, 1]) / 7)
    # windows of other lengths: the central 3 of AACCGT (odd surplus: the extra base is the
    # right one) is ACC
    np.testing.assert_allclose(window_pwm(["AACCGT", "ACG"], width=3, pseudocount=0),
                               [[1, 0, 0], [0, 1, 0.5], [0, 0, 0.5], [0, 0, 0]])
    # a column of N only, without pseudocount, has no information: uniform
    np.testing.assert_allclose(window_pwm(["ANA", "CNC"], pseudocount=0)[:, 1], 0.25)


# ---------------------------------------------------------------------------------------------
# k-mer enrichment


def _holds(window: str, kmer: str, mismatches: int) -> bool:
    k = len(kmer)
    for target in (kmer, _revcomp(kmer)):
        for i in range(len(window) - k + 1):
            if sum(a != b for a, b in zip(window[i:i + k], target)) <= mismatches:
                return True
    return False


@pytest.mark.parametrize("mismatches", [0, 1])
def test_kmer_enrichment_matches_fisher_on_brute_force_counts(mismatches):
    fired, background = _plant(lambda i: CTCF, seed=3, n=60, length=40)
    table = kmer_enrichment(fired, background, k=(5, 6), mismatches=mismatches)
    rng = np.random.default_rng(1)
    rows = np.r_[0:5, rng.choice(len(table), 10, replace=False)]
    for _, row in table.iloc[rows].iterrows():
        a = sum(_holds(w, row.kmer, mismatches) for w in fired)
        b = sum(_holds(w, row.kmer, mismatches) for w in background)
        assert (row.n_fired, row.n_background) == (a, b), row.kmer
        ref = fisher_exact([[a, len(fired) - a], [b, len(background) - b]],
                           alternative="greater").pvalue
        assert row.p == pytest.approx(ref, rel=1e-9), row.kmer
    # canonical names: the alphabetically first of each k-mer and its reverse complement
    assert all(k <= _revcomp(k) for k in table.kmer)
    # every k-mer seen in either set is a row, once
    seen = {min(w[i:i + 5], _revcomp(w[i:i + 5])) for w in fired + background
            for i in range(len(w) - 4)}
    if mismatches == 0:
        assert set(table.kmer[table.k == 5]) == seen
    assert not table.duplicated(["kmer"]).any()
    np.testing.assert_allclose(table.q, multipletests(table.p, method="fdr_bh")[1], rtol=1e-12)
    assert table.p.is_monotonic_increasing


def test_kmers_with_n_are_skipped_and_strands_merge():
    table = kmer_enrichment(["AACCGGTTNAAACCC"], ["GGGTTTNGGTT"], k=3)
    assert not table.kmer.str.contains("N").any()
    counts = dict(zip(table.kmer, table.n_fired))
    # AAC and its reverse complement GTT are one k-mer, held once by the fired window
    assert counts["AAC"] == 1 and "GTT" not in counts
    assert dict(zip(table.kmer, table.n_background))["AAA"] == 1  # from TTT


def test_no_motif_no_significant_kmers():
    fired, background = _plant(lambda i: None, seed=7)
    for mismatches in (0, 1):
        assert kmer_enrichment(fired, background, mismatches=mismatches).q.min() >= 0.05
    assert discover(fired, background, progress=False) == []


# ---------------------------------------------------------------------------------------------
# discovery → JASPAR


@pytest.mark.parametrize(("matrix_id", "seed"), [(CTCF, 0), (SPI1, 1)])
def test_discover_recovers_the_planted_jaspar_motif(matrix_id, seed):
    fired, background = _plant(lambda i: matrix_id, seed=seed)
    found = discover(fired, background, progress=False)
    assert len(found) == 1
    motif = found[0]
    assert motif.n_sites >= 80 and motif.n_background <= 5
    assert motif.pwm.shape[0] == 4 and motif.width >= 10
    np.testing.assert_allclose(motif.pwm.sum(0), 1)
    assert motif.evidence.q.max() < 0.05 and motif.seed in set(motif.evidence.kmer)
    hits = match_jaspar(motif.pwm, top=None)
    assert hits.matrix_id[0] == matrix_id  # the exact ID ranks first
    assert hits.q[0] < 1e-10 and hits.q[1:].min() > hits.q[0] * 1e3
    # deterministic
    again = discover(fired, background, progress=False)[0]
    np.testing.assert_array_equal(again.pwm, motif.pwm)


def test_discover_finds_two_motifs_in_a_mixture():
    fired, background = _plant(lambda i: CTCF if i % 2 else SPI1, seed=2)
    found = discover(fired, background, progress=False)
    assert len(found) == 2
    assert {match_jaspar(m.pwm, top=1).matrix_id[0] for m in found} == {CTCF, SPI1}
    assert all(m.n_sites >= 35 and m.n_background <= 3 for m in found)


# ---------------------------------------------------------------------------------------------
# Tomtom


def test_match_jaspar_slices_by_hand():
    ctcf = _pfm(CTCF)
    length = ctcf.shape[1]
    fwd = match_jaspar(ctcf[:, 3:10], top=None)
    assert list(fwd.columns) == ["rank", "matrix_id", "name", "p", "q", "offset",
                                 "orientation", "overlap"]
    assert (fwd.matrix_id[0], fwd.name[0], fwd.offset[0], fwd.orientation[0],
            fwd.overlap[0]) == (CTCF, "CTCF", 3, "+", 7)
    # the reverse complement of the slice lies on the other strand, at L - 10 there
    rev = match_jaspar(ctcf[::-1, ::-1][:, length - 10:length - 3], top=3)
    assert (rev.matrix_id[0], rev.offset[0], rev.orientation[0]) == (CTCF, length - 10, "-")
    assert len(rev) == 3 and list(rev["rank"]) == [1, 2, 3]
    assert fwd.p.is_monotonic_increasing and len(fwd) > 800
    np.testing.assert_allclose(fwd.q, multipletests(fwd.p, method="fdr_bh")[1], rtol=1e-12)


@cache
def _jaspar_targets():
    ms = _db().fetch_motifs(collection="CORE", tax_group="vertebrates")
    mats = [np.array([m.counts[b] for b in "ACGT"], dtype=float) for m in ms]
    return [m.matrix_id for m in ms], [m / m.sum(0) for m in mats]


def _queries(ids, mats):
    rng = np.random.default_rng(0)
    return [mats[ids.index(CTCF)], mats[ids.index(SPI1)][:, 2:11],
            mats[ids.index("MA0138.3")][::-1, ::-1], rng.dirichlet(np.full(4, 0.5), 12).T,
            rng.dirichlet(np.full(4, 2.0), 8).T]


def _memelite(query, mats):
    from memelite import tomtom as meme_tomtom

    # exact target columns (no hashing), so the only approximation left is its median
    p, score, offset, overlap, strand = meme_tomtom([query], mats, n_target_bins=None,
                                                    n_jobs=1)[:, 0, :]
    return pd.DataFrame({"p": p, "offset": offset, "overlap": overlap, "strand": strand})


def _binned_median(dist, n_bins=1000):
    """memelite's median: the mean of the values in the bin (of 1000 over the range) where
    half the values are reached."""
    out = []
    for x in dist:
        z = ((x - x.min()) / (x.max() - x.min()) * (n_bins - 1)).astype(int)
        count = np.bincount(z, minlength=n_bins)
        b = np.searchsorted(np.cumsum(count), len(x) / 2)
        out.append(np.bincount(z, weights=x, minlength=n_bins)[b] / count[b])
    return np.array(out)[:, None]


@pytest.mark.slow  # memelite compiles with numba on first use: ~60 s cold, then cached
def test_tomtom_is_memelite_given_its_median(monkeypatch):
    ids, mats = _jaspar_targets()
    monkeypatch.setattr(M, "_column_median", _binned_median)
    for query in _queries(ids, mats):
        ours, ref = tomtom(query, mats), _memelite(query, mats)
        np.testing.assert_allclose(ours.p, ref.p, rtol=1e-9)
        # the best alignment of the closest targets (memelite breaks score ties its own way)
        top = np.argsort(ref.p.to_numpy())[:10]
        np.testing.assert_array_equal(ours.offset[top], ref.offset[top])
        np.testing.assert_array_equal(ours.overlap[top], ref.overlap[top])
        np.testing.assert_array_equal(ours.orientation[top] == "-", ref.strand[top] == 1)


@pytest.mark.slow  # memelite compiles with numba on first use: ~60 s cold, then cached
def test_tomtom_with_exact_median_ranks_as_memelite():
    """With the exact median, a column score moves by at most 1/1000 of its range, which flips
    the rounding of a few target columns by one bin: p moves by a few percent (measured: at
    most 12 % for p > 1e-3, a factor 3 at p = 1e-53), never the best match."""
    ids, mats = _jaspar_targets()
    for query in _queries(ids, mats):
        ours, ref = tomtom(query, mats).p.to_numpy(), _memelite(query, mats).p.to_numpy()
        assert np.argmin(ours) == np.argmin(ref)
        assert set(np.argsort(ours)[:5]) == set(np.argsort(ref)[:5])
        diff = np.abs(np.log10(ours) - np.log10(ref))
        assert diff[ref > 1e-10].max() < 0.1 and diff.max() < 0.5


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(("call", "message"), [
    (lambda: window_pwm(["ACGT", "ACXT"]), r"sequences\[1\] has 'X' at position 2"),
    (lambda: window_pwm(["ACGT", "ACéT"]), r"sequences\[1\] has 'é' at position 2"),
    (lambda: discover(["ACGUACGU" * 2], ["ACGT" * 4]), r"sequences_fired\[0\] has 'U'"),
    (lambda: kmer_enrichment(["ACGT" * 3], ["ACGT" * 3, "AC-T" * 3]), r"background\[1\] has '-'"),
    (lambda: window_pwm([]), "sequences is empty"),
    (lambda: discover([], ["ACGT" * 4]), "sequences_fired is empty"),
    (lambda: kmer_enrichment(["ACGT" * 4], []), "background is empty"),
    (lambda: window_pwm("ACGT"), "list of DNA strings"),
    (lambda: window_pwm(["ACGT", ""]), r"sequences\[1\] is an empty string"),
    (lambda: window_pwm(["ACGT" * 5], width=30), r"width=30 is longer than sequences\[0\]"),
    (lambda: window_pwm(["ACGT", "ACGTA"]), "pass width="),
    (lambda: window_pwm(["ACGT", "ACGT"], weights=[1]), "one value per sequence"),
    (lambda: window_pwm(["ACGT", "ACGT"], weights=[1, -1]), "weights must be finite, >= 0"),
    (lambda: kmer_enrichment(["ACGTA"], ["ACGTA"], k=8), "k=8 is longer than the shortest"),
    (lambda: kmer_enrichment(["ACGTA"], ["ACGTA"], k=3, mismatches=2), "mismatches must be"),
    (lambda: discover(["ACGT" * 4], ["ACGT" * 4], top=0), "top must be"),
    (lambda: match_jaspar(np.full((7, 4), 0.25)), "transpose"),
    (lambda: match_jaspar(np.ones((4, 6))), "probabilities"),
    (lambda: match_jaspar(np.full((4, 6), 0.25), db="JASPAR1999"), "not a JASPAR release"),
    (lambda: match_jaspar(np.full((4, 6), 0.25), tax_group="martians"), "no JASPAR matrix"),
    (lambda: match_jaspar(np.full((4, 6), 0.25), db=[1]), "db must be None"),
    (lambda: tomtom(np.full((4, 6), 0.25), []), "targets is empty"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_every_k_mer_code_round_trips():
    # the integer codes and their names agree for every 3-mer
    kmers = ["".join(p) for p in product("ACGT", repeat=3)]
    table = kmer_enrichment(kmers, ["AAAA"], k=3)
    assert set(table.kmer) == {min(k, _revcomp(k)) for k in kmers}
