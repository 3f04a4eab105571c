"""Single-cell gene evidence for features (bioviz.interpret.genes), checked against pandas
group-bys, scanpy's rank_genes_groups and hand-worked cases; and, slow, on the demo model."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from bioviz.adapters.singlecell.demo import COARSE_TYPES as _COARSE
from bioviz.adapters.singlecell.demo import MARKERS as _MARKERS
from bioviz.adapters.singlecell.demo import PROGRAMMES as _PROGRAMME
from bioviz.errors import InputError
from bioviz.interpret import genes as G
from bioviz.interpret.enrichment import overrepresentation, preranked


def _token_table(seed=0, n_cells=30, n_genes=12, n_feat=6):
    """Gene-token rows: every cell holds a random subset of genes; sparse activations."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cells):
        for g in rng.choice(n_genes, size=rng.integers(3, n_genes), replace=False):
            rows.append((f"cell{c}", f"G{g:02d}", ["T", "B", "NK"][c % 3]))
    obs = pd.DataFrame(rows, columns=["cell_id", "gene", "cell_type"])
    x = rng.exponential(1.0, (len(obs), n_feat)) * (rng.random((len(obs), n_feat)) < 0.3)
    x[obs["gene"].to_numpy() == "G03", 1] += 5.0  # feature f1 loves G03
    x[:, 5] = 0.0  # a dead feature
    obs.index = obs.index.astype(str)
    ft = ad.AnnData(X=sp.csr_matrix(x), obs=obs,
                    var=pd.DataFrame(index=[f"f{i}" for i in range(n_feat)]))
    return ft, x


# ------------------------------------------------------------------ token_genes


def test_token_genes_matches_a_pandas_groupby():
    ft, x = _token_table()
    got = G.token_genes(ft, ["f1", "f2", "f5"], n=4, min_tokens=10, progress=False)
    long = pd.DataFrame(x[:, [1, 2]], columns=["f1", "f2"]).assign(gene=ft.obs["gene"].to_numpy())
    for f in ("f1", "f2"):
        g = long.groupby("gene")[f]
        ref = pd.DataFrame({"n_tokens": g.size(), "mean_activation": g.mean(),
                            "fire_fraction": g.apply(lambda s: (s > 0).mean())})
        ref = ref[(ref.n_tokens >= 10) & (ref.mean_activation > 0)]
        ref["specificity"] = ref.mean_activation / long[f].mean()
        ref = ref.sort_values("mean_activation", ascending=False).head(4)
        mine = got[got.feature == f].set_index("gene")
        assert mine["rank"].tolist() == [1, 2, 3, 4]
        assert mine.index.tolist() == ref.index.tolist()
        for col in ("n_tokens", "mean_activation", "fire_fraction", "specificity"):
            np.testing.assert_allclose(mine[col].to_numpy(float), ref[col].to_numpy(float))
    assert got[got.feature == "f1"].gene.iloc[0] == "G03"
    assert "f5" not in set(got.feature)  # a feature that never fires lists no gene
    assert got.n_tokens.min() >= 10


def test_token_genes_threshold_and_dense_input():
    ft, x = _token_table(seed=1)
    dense = ad.AnnData(X=x, obs=ft.obs, var=ft.var)
    got = G.token_genes(dense, ["f0"], n=None, min_tokens=1, threshold=1.0, progress=False)
    ref = pd.Series(x[:, 0] > 1.0).groupby(ft.obs["gene"].to_numpy()).mean()
    np.testing.assert_allclose(got.set_index("gene").fire_fraction, ref.loc[got.gene])


# ------------------------------------------------------------------ cell scores, composition


def test_cell_scores_is_the_per_cell_max_and_keeps_cell_columns():
    ft, x = _token_table()
    cells = G.cell_scores(ft, progress=False)
    ref = pd.DataFrame(x, columns=ft.var_names).groupby(ft.obs["cell_id"].to_numpy()).max()
    np.testing.assert_allclose(np.asarray(cells.X), ref.loc[cells.obs_names].to_numpy())
    assert (cells.obs["cell_type"] == ["T", "B", "NK"] * 10).all()
    mean = G.cell_scores(ft, stat="mean", progress=False)
    ref = pd.DataFrame(x, columns=ft.var_names).groupby(ft.obs["cell_id"].to_numpy()).mean()
    np.testing.assert_allclose(np.asarray(mean.X), ref.loc[mean.obs_names].to_numpy())


def test_composition_hand_worked():
    # 6 cells: A A A B B C; feature f0 fires in cells 0, 1, 3; f1 never fires
    x = np.array([[2.0, 0], [1.0, 0], [0.0, 0], [3.0, 0], [0.0, 0], [0.0, 0]])
    cells = ad.AnnData(X=x, obs=pd.DataFrame({"type": list("AAABBC")},
                                             index=[f"c{i}" for i in range(6)]),
                       var=pd.DataFrame(index=["f0", "f1"]))
    comp = G.cell_type_composition(cells, groupby="type", progress=False)
    f0 = comp[comp.feature == "f0"].set_index("group")
    assert f0.index.tolist() == ["A", "B", "C"]  # by enrichment: 4/3, 1, 0
    np.testing.assert_allclose(f0.n_firing, [2, 1, 0])
    np.testing.assert_allclose(f0.share_of_firing_cells, [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(f0.share_in_cohort, [3 / 6, 2 / 6, 1 / 6])
    np.testing.assert_allclose(f0.enrichment, [(2 / 3) / (1 / 2), 1.0, 0.0])
    np.testing.assert_allclose(f0.fire_fraction, [2 / 3, 1 / 2, 0])
    np.testing.assert_allclose(f0.mean_activation, [1.0, 1.5, 0.0])
    np.testing.assert_allclose(f0.mean_elsewhere, [1.0, 3 / 4, 6 / 5])
    np.testing.assert_allclose(f0.activation_ratio, [1.0, 2.0, 0.0])
    # against the closest other group: A's means 1.0 vs B's 1.5; B's 1.5 vs A's 1.0; C's 0 vs 1.5
    np.testing.assert_allclose(f0.mean_next_group, [1.5, 1.0, 1.5])
    np.testing.assert_allclose(f0.specificity, [1 / 1.5, 1.5, 0.0])
    f1 = comp[comp.feature == "f1"]
    assert f1.enrichment.isna().all() and (f1.n_firing == 0).all()


def test_composition_aggregates_token_rows_to_cells():
    ft, x = _token_table()
    comp = G.cell_type_composition(ft, ["f1"], groupby="cell_type", progress=False)
    fires = pd.Series(x[:, 1] > 0).groupby(ft.obs["cell_id"].to_numpy()).any()
    types = ft.obs.groupby("cell_id")["cell_type"].first()
    ref = fires.groupby(types.loc[fires.index]).sum()
    got = comp.set_index("group").n_firing
    assert got.loc[ref.index].tolist() == ref.tolist()


# ------------------------------------------------------------------ active-cell DE vs scanpy


def _expression(seed=0, n_cells=120, n_genes=40):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.6, 1.5, n_genes), (n_cells, n_genes)).astype(float)
    counts[: n_cells // 3, :5] += rng.poisson(3, (n_cells // 3, 5))  # genes up in the first third
    counts[0, :] += 1  # no gene constant
    logx = np.round(np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * 100), 2)  # ties
    names = [f"cell{i}" for i in range(n_cells)]
    adata = ad.AnnData(X=sp.csr_matrix(logx.astype(np.float32)),
                       obs=pd.DataFrame(index=names),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    score = np.zeros((n_cells, 3))
    score[: n_cells // 3, 0] = rng.random(n_cells // 3) + 0.1  # f0 marks the first third
    score[:, 1] = rng.random(n_cells) * (rng.random(n_cells) < 0.5)  # f1 random
    score[:3, 2] = 1.0  # f2: too few active cells
    cells = ad.AnnData(X=score, obs=pd.DataFrame(index=names),
                       var=pd.DataFrame(index=["f0", "f1", "f2"]))
    return adata, cells, score


def _scanpy(adata, active, tie_correct):
    import scanpy as sc

    a = adata.copy()
    a.obs["grp"] = pd.Categorical(np.where(active, "on", "off"))
    sc.tl.rank_genes_groups(a, "grp", groups=["on"], reference="rest", method="wilcoxon",
                            use_raw=False, n_genes=a.n_vars, tie_correct=tie_correct, pts=True)
    r = sc.get.rank_genes_groups_df(a, group="on").set_index("names")
    return r


@pytest.mark.parametrize("tie_correct", [False, True])
def test_active_cell_de_equals_scanpy(tie_correct):
    adata, cells, score = _expression()
    with pytest.warns(UserWarning, match="fewer than min_cells"):
        de = G.active_cell_de(adata, cells, n=None, tie_correct=tie_correct, progress=False)
    assert de.attrs["skipped"] == ["f2"] and set(de.feature) == {"f0", "f1"}
    for j, f in enumerate(["f0", "f1"]):
        ref = _scanpy(adata, score[:, j] > 0, tie_correct)
        mine = de[de.feature == f].set_index("gene")
        assert (np.diff(mine.score) <= 0).all() and mine["rank"].tolist() == list(range(1, 41))
        mine = mine.loc[ref.index]  # equal scores may come in either order
        np.testing.assert_allclose(mine.score, ref.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mine.p, ref.pvals, rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(mine.q, ref.pvals_adj, rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(mine.logfoldchange, ref.logfoldchanges, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(mine.pct_active, ref.pct_nz_group, rtol=1e-6)
        np.testing.assert_allclose(mine.pct_inactive, ref.pct_nz_reference, rtol=1e-6)
    top = de[de.feature == "f0"].gene.head(5)
    assert set(top) == {f"g{j}" for j in range(5)}


def test_ranks_equal_scipy_rankdata_with_negatives_and_ties():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(50, 7)), 1) * (rng.random((50, 7)) < 0.4)
    x[:, 6] = 0.0  # all zero
    S, base, ties = G._ranks(G._csc(x))
    full = S.toarray() + base[None, :]
    np.testing.assert_allclose(full, stats.rankdata(x, axis=0))
    for j in range(7):  # the tie term of scipy's tiecorrect: 1 - ties / (n^3 - n)
        np.testing.assert_allclose(1 - ties[j] / (50 ** 3 - 50), stats.tiecorrect(full[:, j]))


def test_active_cell_de_matches_cells_by_name_and_reports_unmatched():
    adata, cells, score = _expression()
    sub = adata[10:].copy()
    extra = ad.AnnData(X=np.zeros((2, 3)), obs=pd.DataFrame(index=["x1", "x2"]), var=cells.var)
    both = ad.concat([cells[::-1], extra])  # order differs: matched by obs_names
    with pytest.warns(UserWarning, match="no match by obs_names"):
        de = G.active_cell_de(sub, both, ["f0"], n=None, progress=False)
    assert de.attrs["matching"] == {"n_matched": 110, "n_unmatched_adata": 0,
                                    "n_unmatched_cell_features": 12}
    ref = _scanpy(sub, score[10:, 0] > 0, False)
    np.testing.assert_allclose(de.set_index("gene").loc[ref.index].score, ref.scores, rtol=1e-5)


def test_active_quantile_takes_each_features_top_cells():
    adata, cells, score = _expression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        de = G.active_cell_de(adata, cells, ["f1"], active_quantile=0.75, n=None, progress=False)
    assert de.attrs["n_active"]["f1"] == int((score[:, 1] > np.quantile(score[:, 1], 0.75)).sum())
    ref = _scanpy(adata, score[:, 1] > np.quantile(score[:, 1], 0.75), False)
    np.testing.assert_allclose(de.set_index("gene").loc[ref.index].p, ref.pvals, rtol=1e-5)
    # half of f1's scores are 0: its lower quartile is 0, and cells at it are not active
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        de = G.active_cell_de(adata, cells, ["f1"], active_quantile=0.25, progress=False)
    assert de.attrs["n_active"]["f1"] == int((score[:, 1] > 0).sum())


# ------------------------------------------------------------------ into enrichment


def test_gene_lists_and_scores_feed_enrichment():
    ft, _ = _token_table()
    tg = G.token_genes(ft, ["f1", "f2"], n=None, min_tokens=5, progress=False)
    lists = G.gene_lists(tg, n=3)
    assert lists["f1"][0] == "G03" and all(len(v) == 3 for v in lists.values())
    assert lists["f2"] == tg[tg.feature == "f2"].sort_values("rank").gene.head(3).tolist()
    universe = sorted(ft.obs["gene"].unique())
    sets = {"has_G03": ["G03", "G00", "G01"], "other": ["G07", "G08", "G09"]}
    ora = overrepresentation(lists, sets, universe, min_size=3)
    assert ora[ora.feature == "f1"].set.iloc[0] == "has_G03"
    scores = G.gene_scores(tg, universe=universe + ["GX"])
    assert scores.shape == (len(universe) + 1, 2) and scores.loc["GX"].eq(0).all()
    assert scores.loc["G03", "f1"] == tg.set_index(["feature", "gene"]).loc[
        ("f1", "G03"), "mean_activation"]
    gsea = preranked(scores, sets, n_permutations=50, min_size=3, progress=False)
    assert set(gsea.feature) == {"f1", "f2"}
    adata, cells, _ = _expression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        de = G.active_cell_de(adata, cells, ["f0"], n=None, progress=False)
    assert G.gene_scores(de).columns.tolist() == ["f0"]  # DE tables score by z
    assert len(G.gene_lists(de, n=None, max_q=0.05)["f0"]) == int((de.q <= 0.05).sum())


# ------------------------------------------------------------------ bad input


def test_bad_input_names_what_was_expected():
    ft, _ = _token_table()
    with pytest.raises(InputError, match=r"gene_key='symbol'.*cell_id, gene, cell_type"):
        G.token_genes(ft, ["f1"], gene_key="symbol", progress=False)
    with pytest.raises(InputError, match=r"features \['f99'\] are not features"):
        G.token_genes(ft, ["f1", "f99"], progress=False)
    with pytest.raises(InputError, match="min_tokens"):
        G.token_genes(ft, ["f1"], min_tokens=0, progress=False)
    with pytest.raises(InputError, match="no gene has min_tokens=1000"):
        G.token_genes(ft, ["f1"], min_tokens=1000, progress=False)
    with pytest.raises(InputError, match="cell_key='cell'"):
        G.cell_scores(ft, cell_key="cell", progress=False)
    with pytest.raises(InputError, match="stat='median'"):
        G.cell_scores(ft, stat="median", progress=False)
    with pytest.raises(InputError, match="groupby='bulk_labels'"):
        G.cell_type_composition(ft, progress=False)
    adata, cells, _ = _expression()
    with pytest.raises(InputError, match="only 'wilcoxon'"):
        G.active_cell_de(adata, cells, method="t-test", progress=False)
    renamed = cells.copy()
    renamed.obs_names = [f"other{i}" for i in range(cells.n_obs)]
    with pytest.raises(InputError, match="no cell of cell_features matches"):
        G.active_cell_de(adata, renamed, progress=False)
    with pytest.raises(InputError, match="active_quantile"):
        G.active_cell_de(adata, cells, active_quantile=1.0, progress=False)
    with pytest.raises(InputError, match="table from token_genes or active_cell_de"):
        G.gene_lists(pd.DataFrame({"x": [1]}))
    with pytest.raises(InputError, match="FeatureTable"):
        G.token_genes(np.zeros((3, 3)), progress=False)


# ------------------------------------------------------------------ the demo model (slow)



@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import bioviz as bv
    from bioviz.adapters.singlecell.demo import DEMO_DIR, demo_adapter, pbmc68k_counts

    if not (DEMO_DIR / "model.safetensors").is_file():
        pytest.skip("demo model not generated (python experiments/geneformer_demo.py)")
    out = tmp_path_factory.mktemp("genes_demo")
    adata = pbmc68k_counts()
    store = bv.extract(demo_adapter(rows="gene", obs_columns=["bulk_labels"]), adata,
                       "bert.encoder.layer.1", out / "store", batch_size=32, dtype="float16",
                       progress=False)
    sae, = bv.train(store.path, max_steps=600, batch_size=2048, output_dir=str(out / "sae"),
                    sae={"k": 16, "expansion_factor": 8}, optim={"lr": 2e-3},
                    trainer={"enable_progress_bar": False, "enable_model_summary": False})
    return bv.encode(sae, store, progress=False)


@pytest.mark.slow
def test_demo_cell_type_features_point_to_their_markers_and_programme(demo):
    import scanpy as sc

    from bioviz.interpret.genesets import immune_gmt, read_gmt

    expression = sc.datasets.pbmc68k_reduced().raw.to_adata()  # log-normalised, 765 genes
    sets = read_gmt(immune_gmt())
    cells = G.cell_scores(demo, stat="mean", progress=False)
    cells.obs["coarse"] = cells.obs["bulk_labels"].astype(str).map(_COARSE).fillna("other")
    comp = G.cell_type_composition(cells, groupby="coarse", progress=False)
    found, failed = {}, []
    for kind, programme in _PROGRAMME.items():
        assert _MARKERS[kind] <= set(expression.var_names)
        mine = comp[(comp.group == kind) & (comp.n_firing >= 10)]
        feature = mine.sort_values("specificity", ascending=False).feature.iloc[0]
        de = G.active_cell_de(expression, cells, [feature], active_quantile=0.8, n=20,
                              progress=False)
        tokens = G.token_genes(demo, [feature], n=20, progress=False)
        top = {name: overrepresentation(G.gene_lists(t, 20), sets, expression.var_names)
               .iloc[0] for name, t in (("de", de), ("tokens", tokens))}
        found[kind] = (feature, sorted(_MARKERS[kind] & set(de.gene)), top["de"].set,
                       top["tokens"].set, sorted(_MARKERS[kind] & set(tokens.gene)))
        if not (_MARKERS[kind] & set(de.gene)) or top["de"].set != programme:
            failed.append(kind)
    print(found)  # the evidence, shown with -s
    assert failed == [], found
