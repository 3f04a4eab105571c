"""Gene-set enrichment of features: GMT reading and universe checks against hand-worked
cases; over-representation against scipy's hypergeometric and Fisher tests and statsmodels'
BH; GSEA preranked against gseapy (run offline on a dict of sets) and against a loop of the
published running-sum formula; planted sets come first, null features give calibrated p."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import stats
from statsmodels.stats.multitest import multipletests

from bioviz.analysis.multiple import bh_rows
from bioviz.errors import InputError
from bioviz.interpret.enrichment import overrepresentation, preranked
from bioviz.interpret.genesets import GeneSet, check_universe, immune_gmt, read_gmt


def _quiet(fn, *args, **kwargs):
    """Call without the expected unknown-gene warning of check_universe."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


# ------------------------------------------------------------------ GMT files


def test_read_gmt_reads_sets_in_order_and_cleans_fields(tmp_path):
    path = tmp_path / "s.gmt"
    path.write_bytes(b"ALPHA\thttp://x\tA\tB\tC\tB\t\r\n\nBETA\t\tD\n")
    sets = read_gmt(path)
    assert list(sets) == ["ALPHA", "BETA"]
    assert sets["ALPHA"] == GeneSet("ALPHA", "http://x", ("A", "B", "C"))  # repeat and "" gone
    assert sets["BETA"].genes == ("D",) and sets["BETA"].description == ""


@pytest.mark.parametrize("bad, line, what", [
    ("A\tdesc\n", 2, "at least 3 tab-separated fields"),
    ("A desc G1 G2\n", 2, "at least 3 tab-separated fields"),
    ("\tdesc\tG1\n", 2, "name .first field. is empty"),
    ("OK\tagain\tG9\n", 2, "defined twice"),
    ("B\tdesc\t\t \n", 2, "lists no genes"),
])
def test_read_gmt_names_file_and_line_of_a_malformed_line(tmp_path, bad, line, what):
    path = tmp_path / "bad.gmt"
    path.write_text("OK\tfine\tG1\tG2\n" + bad)
    with pytest.raises(InputError, match=rf"bad\.gmt, line {line}: .*{what}"):
        read_gmt(path)


def test_read_gmt_refuses_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_gmt(tmp_path / "nope.gmt")


# ------------------------------------------------------------------ universe


def test_check_universe_counts_unknown_genes_and_drops_small_sets():
    sets = {"big": GeneSet("big", "", ("A", "B", "C", "D", "E", "X")),
            "small": ["A", "B", "Y", "Z"], "lower": ["a", "b", "c", "d", "e"]}
    with pytest.warns(UserWarning, match=r"8 of 15 genes of 3 gene sets are not among the 5 "
                                         r"genes.*5 of them match a gene if case is ignored"
                                         r".*2 sets keep fewer than min_size=5.*'lower'"):
        kept, report = check_universe(sets, ["A", "B", "C", "D", "E"], min_size=5)
    assert list(kept) == ["big"] and kept["big"].genes == ("A", "B", "C", "D", "E")
    assert report.to_dict("list") == {
        "set": ["big", "small", "lower"], "n_genes": [6, 4, 5], "n_in_universe": [5, 2, 0],
        "n_unknown": [1, 2, 5], "kept": [True, False, False]}
    # ignoring case is an option: matched genes take the universe's spelling
    kept, report = _quiet(check_universe, sets, ["A", "B", "C", "D", "E"], min_size=5,
                          case_insensitive=True)
    assert kept["lower"].genes == ("A", "B", "C", "D", "E")
    # a universe whose genes differ only by case cannot be matched ignoring case
    with pytest.raises(InputError, match="differ only by case"):
        check_universe(sets, ["Cd3d", "CD3D"], case_insensitive=True)
    with pytest.raises(InputError, match="universe must be a list of gene symbols"):
        check_universe(sets, "ABCDE")
    with pytest.raises(InputError, match=r"sets\['x'\] must be a GeneSet or a list"):
        check_universe({"x": "ABC"}, ["A"])


def test_shipped_immune_sets_cover_the_pbmc68k_demo_with_canonical_markers():
    sets = read_gmt(immune_gmt())
    universe = sc.datasets.pbmc68k_reduced().var_names  # ships with scanpy, no download
    assert len(universe) == 765
    kept, report = _quiet(check_universe, sets, universe, min_size=5)
    counts = dict(zip(report["set"], report["n_in_universe"]))
    assert counts == {"IFN_TYPE_I_RESPONSE": 13, "CYTOTOXICITY_NK_CD8": 26,
                      "B_CELL_IDENTITY_BCR": 11, "MHC_II_ANTIGEN_PRESENTATION": 15,
                      "MONOCYTE_MYELOID_INFLAMMATORY": 21, "T_CELL_IDENTITY": 17}
    assert all(15 <= len(s) <= 60 for s in sets.values()) and len(kept) == 6
    markers = {"B_CELL_IDENTITY_BCR": ["MS4A1", "CD79A"], "CYTOTOXICITY_NK_CD8": ["GNLY", "NKG7"],
               "MONOCYTE_MYELOID_INFLAMMATORY": ["CD14", "LYZ", "S100A8", "S100A9"],
               "T_CELL_IDENTITY": ["CD3D", "CD3E"], "IFN_TYPE_I_RESPONSE": ["ISG15", "IFI6", "IFIT1", "MX1"],
               "MHC_II_ANTIGEN_PRESENTATION": ["HLA-DRA", "CD74"]}
    for name, genes in markers.items():
        assert set(genes) <= set(sets[name].genes), name
        others = set().union(*(sets[o].genes for o in sets if o != name))
        assert not set(genes) & others, name  # a marker names one programme
    sources = (immune_gmt().parent / "immune_sources.md").read_text()
    assert all(name in sources for name in sets)


# ------------------------------------------------------------------ over-representation


def test_bh_per_row_matches_statsmodels_and_leaves_nan_out():
    rng = np.random.default_rng(3)
    p = rng.random((5, 12)) ** 3
    p[1, [2, 7]] = np.nan
    p[2, :] = np.nan
    p[3, :4] = 0.01  # ties
    q = bh_rows(p)
    for row_p, row_q in zip(p, q):
        ok = ~np.isnan(row_p)
        assert np.array_equal(np.isnan(row_q), ~ok)
        if ok.any():
            np.testing.assert_allclose(row_q[ok], multipletests(row_p[ok], method="fdr_bh")[1],
                                       rtol=1e-12)


def _random_ora(rng, n_universe=300, n_features=6, n_sets=8):
    universe = [f"g{i}" for i in range(n_universe)]
    sets = {f"S{j}": list(rng.choice(universe, rng.integers(5, 60), replace=False))
            for j in range(n_sets)}
    lists = {f"f{i}": list(rng.choice(universe, rng.integers(1, 80), replace=False))
             for i in range(n_features)}
    lists["f0"] = sets["S0"][:10] + lists["f0"][:5]  # some large overlaps
    return universe, sets, lists


def test_ora_matches_scipy_hypergeometric_fisher_and_statsmodels_bh():
    rng = np.random.default_rng(0)
    universe, sets, lists = _random_ora(rng)
    out = overrepresentation(lists, sets, universe)
    assert len(out) == 6 * 8
    for row in out.itertuples():
        in_set, picked = set(sets[row.set]), lists[row.feature]
        k, n, m, N = len(in_set & set(picked)), len(set(picked)), len(in_set), len(universe)
        assert (row.n_overlap, row.n_list, row.n_set, row.n_universe) == (k, n, m, N)
        table = [[k, n - k], [m - k, N - n - m + k]]
        fisher = stats.fisher_exact(table, alternative="greater")
        assert row.p == pytest.approx(stats.hypergeom.sf(k - 1, N, m, n), rel=1e-9, abs=1e-300)
        assert row.p == pytest.approx(fisher.pvalue, rel=1e-9)
        assert row.odds_ratio == pytest.approx(fisher.statistic, rel=1e-12, nan_ok=True)
        assert row.overlap_genes == ",".join(g for g in picked if g in in_set)  # list order
    for _, rows in out.groupby("feature", sort=False):
        np.testing.assert_allclose(rows["q"], multipletests(rows["p"], method="fdr_bh")[1])
        assert rows["p"].is_monotonic_increasing  # best set first within a feature


def test_ora_planted_set_comes_first_with_small_q():
    rng = np.random.default_rng(1)
    universe, sets, _ = _random_ora(rng, n_universe=2000, n_sets=30)
    sets = {k: v[:30] if len(v) >= 30 else v for k, v in sets.items()}
    planted = sets["S7"][:12]  # 12 of a 30-gene set in a 60-gene list; ~1 expected by chance
    filler = [g for g in rng.choice(universe, 200, replace=False) if g not in sets["S7"]][:48]
    out = overrepresentation({"feat": planted + filler}, sets, universe)
    top = out.iloc[0]
    assert top["set"] == "S7" and top["q"] < 0.05 and top["n_overlap"] >= 12


def test_ora_p_is_calibrated_on_null_lists():
    """Random lists: P(p <= a) equals the attainable level sum of pmf over the rejection
    region (the test is discrete), which is <= a."""
    rng = np.random.default_rng(2)
    n_universe, n_list, n_set = 2000, 200, 100
    universe = [f"g{i}" for i in range(n_universe)]
    sets = {f"S{j}": list(rng.choice(universe, n_set, replace=False)) for j in range(20)}
    lists = {i: list(rng.choice(universe, n_list, replace=False)) for i in range(400)}
    p = overrepresentation(lists, sets, universe)["p"].to_numpy()
    ks = np.arange(n_set + 1)
    tail = stats.hypergeom.sf(ks - 1, n_universe, n_set, n_list)
    pmf = stats.hypergeom.pmf(ks, n_universe, n_set, n_list)
    for a in (0.01, 0.05, 0.2, 0.5):
        level = pmf[tail <= a].sum()
        se = np.sqrt(level * (1 - level) / len(p))
        assert level <= a
        assert abs(np.mean(p <= a) - level) < 4 * se + 1e-3, a
    assert 0.45 < np.mean(p) < 0.6  # uniform-ish (discreteness puts the mean a little above 1/2)


def test_ora_refuses_bad_input_and_gives_nan_for_uninformative_lists():
    universe = [f"g{i}" for i in range(20)]
    sets = {"S": universe[:6]}
    with pytest.raises(InputError, match=r"gene_lists\['f'\] has 1 genes not in the universe"):
        overrepresentation({"f": ["g1", "nope"]}, sets, universe)
    with pytest.raises(InputError, match="no gene set keeps min_size=5"):
        _quiet(overrepresentation, {"f": ["g1"]}, {"S": ["x1", "x2", "g1"]}, universe)
    with pytest.raises(InputError, match="gene_lists must be a non-empty dict"):
        overrepresentation([], sets, universe)
    out = overrepresentation({"empty": [], "all": universe, "ok": ["g1"]}, sets, universe)
    p = dict(zip(out["feature"], out["p"]))
    assert np.isnan(p["empty"]) and np.isnan(p["all"]) and p["ok"] == pytest.approx(6 / 20)


# ------------------------------------------------------------------ GSEA preranked


def _es_loop(score: pd.Series, members) -> float:
    """Subramanian et al. 2005 running sum, step by step (weight p = 1)."""
    ranked = score.iloc[np.argsort(-score.to_numpy(), kind="stable")]
    hits = [g in set(members) for g in ranked.index]
    n_r = sum(abs(r) for r, h in zip(ranked, hits) if h)
    n_miss = len(ranked) - sum(hits)
    run = best = 0.0
    for r, h in zip(ranked, hits):
        run += abs(r) / n_r if h else -1.0 / n_miss
        if abs(run) > abs(best):
            best = run
    return best


@pytest.fixture(scope="module")
def gsea_case():
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(300)]
    scores = pd.DataFrame(rng.normal(size=(300, 4)), index=genes, columns=["f0", "f1", "f2", "f3"])
    scores.loc[genes[:20], "f1"] += 1.0  # A enriched at the top of f1
    scores.loc[genes[50:80], "f2"] -= 0.8  # B at the bottom of f2
    sets = {"A": genes[:20], "B": genes[50:80],
            "C": list(rng.choice(genes, 15, replace=False)),
            "D": list(rng.choice(genes, 20, replace=False)),
            "E": list(rng.choice(genes, 40, replace=False))}
    return scores, sets


def test_preranked_es_matches_the_published_running_sum(gsea_case):
    scores, sets = gsea_case
    out = preranked(scores, sets, n_permutations=10, progress=False)
    assert (out["es"] < 0).sum() >= 5 and (out["es"] > 0).sum() >= 5  # both sides checked
    for row in out.itertuples():
        assert row.es == pytest.approx(_es_loop(scores[row.feature], sets[row.set]), rel=1e-10)


def test_preranked_matches_gseapy(gsea_case):
    gseapy = pytest.importorskip("gseapy")  # a dev reference, run offline on a dict of sets
    scores, sets = gsea_case
    ours = preranked(scores, sets, n_permutations=2000, progress=False).set_index(["feature", "set"])
    ref = gseapy.prerank(rnk=scores, gene_sets=sets, permutation_num=2000, min_size=5, seed=7,
                         outdir=None, no_plot=True, threads=1).res2d
    ref = ref.set_index(["Name", "Term"]).sort_index()
    assert len(ref) == len(ours) == 20
    for (feature, name), row in ref.iterrows():
        mine = ours.loc[(feature, name)]
        assert mine["es"] == pytest.approx(row["ES"], rel=1e-10)
        assert set(mine["leading_edge"].split(",")) == set(row["Lead_genes"].split(";"))
        # Monte-Carlo: both nulls have ~1000 draws of the same sign
        assert mine["nes"] == pytest.approx(row["NES"], rel=0.06)
        p_ref = float(row["NOM p-val"])
        se = np.sqrt(max(p_ref * (1 - p_ref), 0.002) / 1000)
        assert abs(mine["p"] - p_ref) < 5 * np.sqrt(2) * se + 2e-3, (feature, name)


def test_preranked_ranks_planted_sets_first_and_never_gives_p_zero(gsea_case):
    scores, sets = gsea_case
    out = preranked(scores, sets, n_permutations=500, progress=False)
    f1, f2 = (out[out["feature"] == f].iloc[0] for f in ("f1", "f2"))
    assert f1["set"] == "A" and f1["es"] > 0 and f1["nes"] > 1.5 and f1["q"] < 0.05
    assert f2["set"] == "B" and f2["es"] < 0 and f2["nes"] < -1.5 and f2["q"] < 0.05
    # the planted sets beat every null draw, and still p >= 1/(n+1)
    assert 1 / 501 <= f1["p"] <= 1 / 200 and 1 / 501 <= f2["p"] <= 1 / 200
    np.testing.assert_array_equal(out, preranked(scores, sets, n_permutations=500,
                                                 progress=False))  # seeded


def test_preranked_p_is_calibrated_on_null_features():
    rng = np.random.default_rng(5)
    genes = [f"G{i}" for i in range(200)]
    scores = pd.DataFrame(rng.normal(size=(200, 150)), index=genes)
    sets = {f"S{j}": list(rng.choice(genes, size, replace=False))
            for j, size in enumerate([10, 25, 40])}
    p = preranked(scores, sets, n_permutations=200, progress=False)["p"].to_numpy()
    assert len(p) == 450
    for a in (0.05, 0.2, 0.5):
        assert abs(np.mean(p <= a) - a) < 4 * np.sqrt(a * (1 - a) / 150) + 0.01, a


def test_preranked_degenerate_features_give_nan_and_bad_input_is_refused(gsea_case):
    scores, sets = gsea_case
    scores = scores.copy()
    scores["flat"] = 2.0
    scores["zeros_in_A"] = scores["f0"]
    scores.loc[sets["A"], "zeros_in_A"] = 0.0
    out = preranked(scores, sets, n_permutations=50, progress=False)
    flat = out[out["feature"] == "flat"]
    assert flat["es"].isna().all() and flat["p"].isna().all() and flat["q"].isna().all()
    zero = out[(out["feature"] == "zeros_in_A")].set_index("set")
    assert np.isnan(zero.loc["A", "p"]) and zero.drop("A")["p"].notna().all()
    with pytest.raises(InputError, match="scores must be a DataFrame"):
        preranked(scores.to_numpy(), sets)
    bad = scores.copy()
    bad.iloc[3, 1] = np.nan
    with pytest.raises(InputError, match=r"1 NaN/inf values \(e.g. in column 'f1'\)"):
        preranked(bad, sets)
    with pytest.raises(InputError, match="index .genes. must be unique"):
        preranked(pd.concat([scores, scores.iloc[:1]]), sets)
    with pytest.raises(InputError, match="n_permutations must be a positive integer"):
        preranked(scores, sets, n_permutations=0)


def test_shipped_sets_name_the_cell_types_of_pbmc68k():
    """Real data shipped by scanpy: each cell type's genes (mean difference vs the rest)
    point to its own programme, both by ORA of the top 40 genes and by GSEA preranked."""
    adata = sc.datasets.pbmc68k_reduced()
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    expected = {"CD19+ B": "B_CELL_IDENTITY_BCR", "CD14+ Monocyte": "MONOCYTE_MYELOID_INFLAMMATORY",
                "CD56+ NK": "CYTOTOXICITY_NK_CD8", "CD4+/CD25 T Reg": "T_CELL_IDENTITY"}
    scores = pd.DataFrame({c: adata.X[labels == c].mean(0) - adata.X[labels != c].mean(0)
                           for c in expected}, index=adata.var_names)
    sets = read_gmt(immune_gmt())
    top = {c: scores[c].nlargest(40).index.tolist() for c in expected}
    ora = _quiet(overrepresentation, top, sets, adata.var_names).groupby("feature").head(1)
    gsea = _quiet(preranked, scores, sets, n_permutations=200, progress=False)
    gsea = gsea.groupby("feature").head(1)
    for best in (ora, gsea):
        assert dict(zip(best["feature"], best["set"])) == expected
        assert (best["q"] < 0.05).all()
