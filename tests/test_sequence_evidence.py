"""DNA motif evidence through the sequence adapter: the bar (a feature of a real architecture
whose first convolution carries a JASPAR motif is matched back to that motif's ID), windows
mapped back to the sequence the model saw (minus strand and genome coordinates by hand), what
is skipped and why, and logos scaled by information content."""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from matplotlib.figure import Figure
from pyjaspar import jaspardb
from scipy.stats import fisher_exact

import bioviz as bv
from bioviz.adapters.sequence import SequenceAdapter, draw_logo, reverse_complement
from bioviz.adapters.sequence import evidence as E
from bioviz.adapters.sequence.tokenizers import OneHotEncoder
from bioviz.errors import InputError
from bioviz.interpret.describe import describe
from bioviz.interpret.motifs import Motif

CTCF, SPI1 = "MA0139.2", "MA0080.7"
LENGTH, N_SEQ = 256, 96
THRESHOLD = 8.0  # log2-odds a site must score for the planted filter to fire


@cache
def _pfm(matrix_id: str) -> np.ndarray:
    m = jaspardb(release="JASPAR2026").fetch_motif_by_id(matrix_id)
    c = np.array([m.counts[b] for b in "ACGT"], dtype=float)
    return c / c.sum(0)


def _cohort(matrix_id: str, seed: int):
    """Random 256-bp sequences, a site sampled from the JASPAR matrix planted in each sequence
    of every other subject ("carrier"), as the model reads it; half the records lie on the
    minus strand (their sequence given as read, 5'→3' on that strand)."""
    rng = np.random.default_rng(seed)
    pfm = _pfm(matrix_id)
    codes = rng.integers(0, 4, size=(N_SEQ, LENGTH))
    subject = np.arange(N_SEQ) // 4
    carrier = subject % 2 == 0
    strand = np.where(np.arange(N_SEQ) % 4 < 2, "+", "-")
    start = np.arange(N_SEQ) * 1000 + 500
    sites = []  # (seq, genome start, genome end) of each planted site
    for i in np.flatnonzero(carrier):
        site = np.array([rng.choice(4, p=col) for col in pfm.T])
        at = int(rng.integers(20, LENGTH - 20 - len(site)))
        codes[i, at:at + len(site)] = site
        lo, hi = (start[i] + at, start[i] + at + len(site)) if strand[i] == "+" else (
            start[i] + LENGTH - at - len(site), start[i] + LENGTH - at)
        sites.append((f"s{i}", lo, hi))
    frame = pd.DataFrame({"seq_id": [f"s{i}" for i in range(N_SEQ)],
                          "chrom": [f"chr{i % 3 + 1}" for i in range(N_SEQ)], "start": start,
                          "end": start + LENGTH, "strand": strand,
                          "subject_id": [f"S{s:02d}" for s in subject],
                          "sequence": ["".join("ACGT"[c] for c in row) for row in codes]})
    subjects = pd.DataFrame({"carrier": np.where(carrier[::4], "yes", "no")},
                            index=[f"S{s:02d}" for s in range(N_SEQ // 4)])
    return frame, subjects, pd.DataFrame(sites, columns=["seq_id", "start", "end"])


def _enformer_with_planted_filter(matrix_id: str):
    """A small enformer-pytorch Enformer (the real architecture, random weights) whose first
    convolution's channel 0 is the motif's log2-odds PSSM (centred in the 15-bp kernel), with
    bias -THRESHOLD: the planted truth lives in these weights."""
    enformer = pytest.importorskip("enformer_pytorch")
    torch.manual_seed(0)
    model = enformer.Enformer.from_hparams(dim=48, depth=1, heads=2, output_heads=dict(human=4),
                                           target_length=8, num_downsamples=3,
                                           dim_divisible_by=8, attn_dim_key=8)
    pssm = np.log2((_pfm(matrix_id) + 0.01) / 0.25)
    kernel = np.zeros((4, 15))
    left = (15 - pssm.shape[1]) // 2
    kernel[:, left:left + pssm.shape[1]] = pssm
    with torch.no_grad():
        model.stem[0].weight[0] = torch.tensor(kernel, dtype=torch.float32)
        model.stem[0].bias[0] = -THRESHOLD
    return model


def _in_site(obs: pd.DataFrame, sites: pd.DataFrame) -> np.ndarray:
    """Rows whose span lies inside a planted site (genome coordinates, by hand)."""
    m = obs[["seq_id", "start", "end"]].astype({"seq_id": str}).reset_index(drop=True)
    m = m.reset_index().merge(sites, on="seq_id", how="left", suffixes=("", "_site"))
    inside = (m.start >= m.start_site) & (m.end <= m.end_site)
    return inside.groupby(m["index"]).any().to_numpy()


@pytest.fixture(scope="module", params=[(CTCF, 0), (SPI1, 1)], ids=["CTCF", "SPI1"])
def planted(request, tmp_path_factory):
    matrix_id, seed = request.param
    tmp = tmp_path_factory.mktemp(matrix_id)
    frame, subjects, sites = _cohort(matrix_id, seed)
    ada = SequenceAdapter.from_enformer(_enformer_with_planted_filter(matrix_id), window=LENGTH)
    # the GELU after the stem's first convolution (inside its residual conv block): per-bp rows
    store = bv.extract(ada, frame, "stem.1.fn.1", tmp / "store", progress=False)
    sae, = bv.train(store.path, max_steps=80, batch_size=1024, output_dir=str(tmp / "sae"),
                    sae={"k": 4, "expansion_factor": 4}, optim={"lr": 3e-3},
                    trainer={"enable_progress_bar": False, "enable_model_summary": False,
                             "logger": False})
    ft = bv.encode(sae, store, progress=False)
    # the feature whose 50 top rows lie most inside the planted sites (the data's truth)
    hit = _in_site(ft.obs, sites)
    X = ft.X.toarray()
    precision = [hit[np.argsort(-X[:, j], kind="stable")[:50]].mean() for j in range(X.shape[1])]
    feature = str(ft.var_names[int(np.argmax(precision))])
    assert max(precision) > 0.8  # the SAE found the planted filter (else the bar means nothing)
    return SimpleNamespace(matrix_id=matrix_id, frame=frame, subjects=subjects, sites=sites,
                           ada=ada, ft=ft, feature=feature, out=tmp / "evidence")


def test_feature_on_planted_sites_matches_the_planted_jaspar_id(planted):
    p = planted
    tables, skipped = p.ada.evidence(p.ft, [p.feature], data=p.frame, subjects=p.subjects,
                                     label="carrier", out=p.out, progress=False)
    assert f"motifs:{p.feature}" not in skipped
    motifs, windows = tables["motifs"], tables["windows"]
    best = motifs.loc[motifs["rank"] == 1].iloc[0]
    assert best["matrix_id"] == p.matrix_id and best["q"] < 1e-5  # the bar
    assert best["motif"] == 1 and best["match_rank"] == 1
    assert best["fired_share"] > 0.4 and best["background_share"] < 0.05
    assert best["discovery_q"] < 0.05
    # the lead's description reads the same table
    assert f"matches JASPAR {p.matrix_id}" in describe(p.feature, {"motifs": motifs})[0]
    # windows: the model's own reading of the record (minus strand: the given sequence read
    # from the record's end), checked by hand against the input table
    rec = p.frame.set_index("seq_id")
    for w in windows.itertuples():
        r = rec.loc[w.seq_id]
        a, b = (w.start - r.start, w.end - r.start) if r.strand == "+" else (
            r.end - w.end, r.end - w.start)
        assert w.sequence == r.sequence[a:b]
        assert w.start == max(r.start, w.row_start - 25) and w.end == min(r.end, w.row_end + 25)
    # the top windows hold the planted sites; activations fall with rank; labels by subject
    top = windows.head(20).merge(p.sites, on="seq_id", how="left", suffixes=("", "_site"))
    assert ((top.start <= top.start_site) & (top.end >= top.end_site)).mean() >= 0.9
    assert windows["activation"].is_monotonic_decreasing
    assert (windows["carrier"] == p.subjects.loc[windows["subject_id"], "carrier"].to_numpy()).all()
    # neighbouring rows over one site count once
    for _, g in windows.groupby("seq_id"):
        s = g.sort_values("start")
        assert (s.start.to_numpy()[1:] >= s.end.to_numpy()[:-1]).all()
    # background: rows where the feature is 0, sharing no sequence with a top window
    bg = tables["background_windows"]
    assert len(bg) == best["n_background"] >= 200 and (bg["activation"] == 0).all()
    codes = p.ft[bg["row"].to_numpy(), p.feature].X
    assert (codes.toarray() if sp.issparse(codes) else codes).max() == 0
    both = bg.merge(windows, on="chrom", suffixes=("", "_top"))
    assert not ((both.start < both.end_top) & (both.start_top < both.end)).any()
    # the logo: PNG and SVG beside each other, named in the table
    assert best["logo"] == f"motif_logo_{p.feature}.png"
    assert (p.out / best["logo"]).stat().st_size > 10_000
    assert (p.out / f"motif_logo_{p.feature}.svg").read_text().lstrip().startswith("<?xml")
    pwm = tables["motif_pwms"].query("motif == 1")
    assert len(pwm) == best["width"]
    np.testing.assert_allclose(pwm[list("ACGT")].sum(1), 1)


# ---------------------------------------------------------------------------------------------
# windows mapped back by hand: BED + reference, both strands


def _write_fasta(path, records):
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name}\n")
            f.writelines(seq[i:i + 50] + "\n" for i in range(0, len(seq), 50))


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bed")
    rng = np.random.default_rng(5)
    genome = {c: "".join(rng.choice(list("ACGT"), n)) for c, n in (("chrA", 400), ("chrB", 300))}
    _write_fasta(tmp / "ref.fa", genome)
    (tmp / "peaks.bed").write_text("chrA\t100\t220\tp1\t0\t+\nchrB\t30\t150\tp2\t0\t-\n")
    # a one-hot model read channels-first, one row per base
    ada = SequenceAdapter(torch.nn.Sequential(torch.nn.Conv1d(4, 2, 1)), OneHotEncoder(),
                          window=120, call="onehot", channels_first=True, length_axis={"*": 2},
                          reference=tmp / "ref.fa", subject_id="donor1")
    store = bv.extract(ada, tmp / "peaks.bed", "0", tmp / "store", progress=False)
    return SimpleNamespace(genome=genome, ada=ada, obs=store.obs, path=tmp / "peaks.bed")


def _table(obs: pd.DataFrame, values: dict[tuple[str, int], float], n_features=3):
    """A FeatureTable over ``obs`` whose f0 is ``value`` at the row on ``chrom`` starting at
    ``start``, f1 never fires and f2 fires on one row."""
    X = np.zeros((len(obs), n_features), dtype=np.float32)
    for (chrom, start), v in values.items():
        X[np.flatnonzero((obs.chrom == chrom) & (obs.start == start))[0], 0] = v
    X[0, 2] = 1.0
    t = ad.AnnData(X=sp.csr_matrix(X), obs=obs.set_axis(obs.index.astype(str)))
    t.var_names = [f"f{i}" for i in range(n_features)]
    return t


def test_windows_are_the_dna_the_model_saw_on_both_strands(bed):
    g, flank = bed.genome, 10
    # chrB:148 is 2 bp from the minus record's end (where the model starts reading it);
    # chrB:95 and chrB:100 share a window, chrA:104 is 4 bp into the plus record
    values = {("chrB", 148): 5.0, ("chrB", 95): 4.0, ("chrB", 100): 3.0, ("chrA", 104): 2.0,
              ("chrA", 200): 1.0}
    tables, skipped = bed.ada.evidence(_table(bed.obs, values), ["f0", "f1", "f2"],
                                       data=bed.path, flank=flank, min_windows=5, progress=False)
    assert tables["windows"].groupby("feature").size().to_dict() == {"f0": 4, "f2": 1}
    w = tables["windows"].query("feature == 'f0'").set_index("row_start")
    assert list(w.index) == [148, 95, 104, 200]  # chrB:100 overlaps chrB:95's window: dropped
    assert w["rank"].tolist() == [1, 2, 3, 4] and w["activation"].tolist() == [5, 4, 2, 1]
    expected = {148: ("chrB", 138, 150, "-"), 95: ("chrB", 85, 106, "-"),
                104: ("chrA", 100, 115, "+"), 200: ("chrA", 190, 211, "+")}
    for start, (chrom, lo, hi, strand) in expected.items():
        row = w.loc[start]
        assert (row.chrom, row.start, row.end, row.strand) == (chrom, lo, hi, strand)
        ref = g[chrom][lo:hi]
        assert row.sequence == (reverse_complement(ref) if strand == "-" else ref)
    assert (w.seq_id.tolist(), w.subject_id.unique().tolist()) == (["p2", "p2", "p1", "p1"],
                                                                   ["donor1"])
    # what is skipped, and why
    assert skipped["motifs:f0"] == ("fires in only 4 distinct mapped windows; motif discovery "
                                    "needs min_windows=5")
    assert skipped["motifs:f1"] == "never fires in the FeatureTable"
    assert "fires in only 1 " in skipped["motifs:f2"]
    assert tables["motifs"].empty and list(tables["motifs"].columns) == list(E.MOTIF_COLUMNS)


def test_minus_strand_table_records_read_as_given(bed):
    # a record given as a table on the minus strand: its sequence is what the model reads
    seq = "".join(np.random.default_rng(2).choice(list("ACGT"), 60))
    frame = pd.DataFrame({"seq_id": ["m"], "chrom": ["chr9"], "start": [1000], "end": [1060],
                          "strand": ["-"], "sequence": [seq]})
    ada = SequenceAdapter(torch.nn.Conv1d(4, 2, 1), OneHotEncoder(), window=60, call="onehot",
                          channels_first=True, length_axis={"*": 2})
    ada.dataset(frame)
    obs = pd.DataFrame({"subject_id": "m", "sample_id": "m", "seq_id": "m", "chrom": "chr9",
                        "start": [1049, 1000, 2000, np.nan], "end": [1050, 1001, 2001, np.nan],
                        "strand": "-"}, index=["a", "b", "c", "d"])
    win = E.row_windows(ada, obs, flank=3)
    # genome 1049 is offset 1060 - 1050 = 10 along the minus-strand sequence
    assert win.loc["a", "sequence"] == seq[7:14]
    assert (win.loc["a", "start"], win.loc["a", "end"]) == (1046, 1053)
    assert win.loc["b", "sequence"] == seq[56:60] and win.loc["b", "start"] == 1000
    assert win.loc["c", "reason"] == "the row's span lies outside its record in the data"
    assert win.loc["d", "reason"] == "no coordinates (start/end missing)"
    assert win.loc[["c", "d"], "record"].tolist() == [-1, -1]
    # two records under one name holding the same span: which DNA the row saw is unknown
    ada.dataset(pd.concat([frame, frame], ignore_index=True))
    assert E.row_windows(ada, obs.loc[["a"]]).loc["a", "reason"].startswith("several records")


# ---------------------------------------------------------------------------------------------
# bad input


def test_rows_that_cannot_be_mapped_are_skipped_with_the_reason(bed):
    values = {("chrA", 150): 2.0, ("chrB", 60): 1.0}
    t = _table(bed.obs, values)
    # rows made by another adapter: no coordinates at all
    plain = ad.AnnData(X=t.X, obs=t.obs[["subject_id", "sample_id"]].copy())
    plain.var_names = t.var_names
    tables, skipped = bed.ada.evidence(plain, ["f0"], data=bed.path, progress=False)
    assert set(skipped) == {"windows", "motifs"}
    assert "no seq_id, chrom, strand, start, end" in skipped["windows"]
    assert tables["windows"].empty
    # a row whose sequence is not in the data given
    t.obs["seq_id"] = t.obs["seq_id"].astype(str).where(t.obs["chrom"] != "chrB", "elsewhere")
    tables, skipped = bed.ada.evidence(t, ["f0"], data=bed.path, min_windows=1, progress=False)
    assert skipped["windows:f0"] == ("1 of its top 2 rows left out: 1 row: no record of the data "
                                     "has this subject, sample, seq_id, chrom and strand")
    assert tables["windows"]["row_start"].tolist() == [150]


def test_a_backed_table_gives_the_same_windows(bed, tmp_path):
    t = _table(bed.obs, {("chrA", 150): 2.0, ("chrB", 60): 1.0})
    t.write_h5ad(tmp_path / "ft.h5ad")
    backed = ad.read_h5ad(tmp_path / "ft.h5ad", backed="r")
    try:
        got = bed.ada.evidence(backed, ["f0"], data=bed.path, progress=False)
    finally:
        backed.file.close()
    want = bed.ada.evidence(t, ["f0"], data=bed.path, progress=False)
    pd.testing.assert_frame_equal(got[0]["windows"], want[0]["windows"])
    assert got[1] == want[1] and len(want[0]["windows"]) == 2


def test_bad_input_is_named(bed):
    t = _table(bed.obs, {("chrA", 150): 2.0})
    with pytest.raises(InputError, match=r"'f9' not in the FeatureTable's var_names"):
        bed.ada.evidence(t, ["f0", "f9"], data=bed.path, progress=False)
    with pytest.raises(InputError, match="label='sex' is not a column of subjects"):
        bed.ada.evidence(t, ["f0"], data=bed.path, subjects=pd.DataFrame({"age": [1]}),
                         label="sex", progress=False)
    with pytest.raises(InputError, match="label='strand' would overwrite"):
        bed.ada.evidence(t, ["f0"], data=bed.path, subjects=pd.DataFrame({"strand": [1]}),
                         label="strand", progress=False)
    with pytest.raises(InputError, match="n_top must be a positive integer"):
        bed.ada.evidence(t, ["f0"], data=bed.path, n_top=0, progress=False)
    with pytest.raises(InputError, match="flank must be an integer >= 0"):
        bed.ada.evidence(t, ["f0"], data=bed.path, flank=-1, progress=False)


# ---------------------------------------------------------------------------------------------
# helpers against brute force and hand values


def test_motif_rows_by_hand():
    # two motifs as discover returns them: SPI1 found first (from the more enriched k-mer)
    evidence = pd.DataFrame({"kmer": ["AGAGGAAG", "CCCTCTAG"], "p": [1e-9, 1e-6],
                             "q": [1e-6, 1e-3]})
    spi1 = Motif(_pfm(SPI1), "AAAGAGGAAGTGG", "AGAGGAAG", 40, 2, 9.0, evidence)
    # CTCF grew from the second k-mer of its round (as when the first grows no motif)
    ctcf = Motif(_pfm(CTCF), "GCCACCAGGGGGCGC", "CCCTCTAG", 30, 0, 9.0, evidence)
    rows, pwms = E._motif_rows("f3", [spi1, ctcf], 50, 200, 3, None, "CORE", "vertebrates")
    assert rows["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert rows["motif"].tolist() == [1, 1, 1, 2, 2, 2]
    assert rows["match_rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert rows.loc[rows["rank"] == 1, "matrix_id"].item() == SPI1
    assert rows.loc[rows["rank"] == 4, "matrix_id"].item() == CTCF
    first = rows.iloc[0]
    assert (first.fired_share, first.background_share) == (40 / 50, 2 / 200)
    assert (first.discovery_p, first.discovery_q) == (1e-9, 1e-6)
    assert rows.iloc[3].discovery_q == 1e-3  # CTCF's own seed
    assert first.site_p == pytest.approx(fisher_exact([[40, 10], [2, 198]], "greater").pvalue)
    np.testing.assert_array_equal(pwms.query("motif == 2")[list("ACGT")].to_numpy().T, _pfm(CTCF))


def test_overlaps_against_brute_force():
    rng = np.random.default_rng(0)
    n, m = 300, 80
    chrom, chrom_f = rng.choice(["1", "2", "X"], n), rng.choice(["1", "2"], m)
    start, start_f = rng.integers(0, 2000, n), rng.integers(0, 2000, m)
    end, end_f = start + rng.integers(1, 60, n), start_f + rng.integers(1, 60, m)
    got = E._overlaps(chrom, start, end, chrom_f, start_f, end_f)
    want = [any(c == cf and s < ef and sf < e for cf, sf, ef in zip(chrom_f, start_f, end_f))
            for c, s, e in zip(chrom, start, end)]
    assert got.tolist() == want and 0 < got.sum() < n


def test_logo_letters_are_scaled_by_information():
    # A certain (2 bits), uniform (0 bits), A or C (1 bit: 0.5 each), A .7 / T .1 / ...
    pwm = np.array([[1, .25, .5, .7], [0, .25, .5, .1], [0, .25, 0, .1], [0, .25, 0, .1]])
    fig = Figure()
    ax = fig.subplots()
    draw_logo(ax, pwm)
    heights = {}
    for patch in ax.patches:
        ext = patch.get_path().get_extents()
        col = int(round((ext.x0 + ext.x1) / 2))
        heights.setdefault(col, []).append((patch.get_label(), ext.y0, ext.height))
    ic = 2 + (pwm[:, 3] * np.log2(pwm[:, 3])).sum()
    assert [(b, round(h, 6)) for b, _, h in heights[0]] == [("A", 2.0)]
    assert 1 not in heights
    assert sorted((b, round(h, 6)) for b, _, h in heights[2]) == [("A", 0.5), ("C", 0.5)]
    col3 = sorted(heights[3], key=lambda x: x[1])  # bottom to top
    assert col3[-1][0] == "A" and col3[-1][2] == pytest.approx(0.7 * ic)
    assert col3[-1][1] == pytest.approx(0.3 * ic)  # stacked on the three smaller letters


def test_interpret_describes_the_motif_through_the_adapter(planted, tmp_path):
    """bv.interpret end to end: Findings made per subject (carriers of the planted site vs
    the rest), the planted feature explained through the sequence adapter."""
    p = planted
    clinical = p.subjects.rename_axis("subject_id").reset_index()
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    findings = bv.associate(p.ft, [{"column": "carrier", "kind": "binary", "case": "yes"}],
                            clinical=str(tmp_path / "clinical.csv"), n_permutations=0, n_boot=0,
                            n_stability=0, heldout=None, probes=False, out=str(tmp_path / "findings"),
                            progress=False)
    result = bv.interpret(findings, p.ft, candidates=[p.feature], adapter=p.ada, data=p.frame,
                          progress=False)
    text = result.features.set_index("feature").loc[p.feature, "description"]
    assert f"matches JASPAR {p.matrix_id}" in text and "higher in yes than no" in text
    out = tmp_path / "interpretation"
    assert pd.read_parquet(out / "motifs.parquet").query("rank == 1")["matrix_id"].iloc[0] == p.matrix_id
    assert (out / f"motif_logo_{p.feature}.svg").stat().st_size > 0
    # and the report: the candidate's page shows the logo beside its JASPAR match, and the atlas
    # finds the feature by the motif's ID
    rep = bv.report(findings, features=p.ft, progress=False)
    html = rep.html.read_text()
    page = html[html.index(f"{p.feature} and carrier"):]
    assert 'alt="Motif"' in page and p.matrix_id in page
    assert p.matrix_id in rep.atlas.read_text() and rep.pdf.stat().st_size > 0
    assert bv.report.__module__ == "bioviz.report.build"
