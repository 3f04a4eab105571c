"""Rows to subjects: every stat against numpy/pandas on the same rows, every source (a
FeatureTable in memory or on disk, an SAE over a store, a store's raw activations), memory
bounded by max_memory_gb, and the per-row aggregate written back into a user's AnnData."""

import importlib
import tracemalloc
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from bioviz.analysis.aggregate import aggregate, to_obsm
from bioviz.errors import InputError
from bioviz.sae import SAEConfig, build_sae
from bioviz.store import ActivationStore, StoreWriter

agg = importlib.import_module("bioviz.analysis.aggregate")  # the package exports the function
pytestmark = pytest.mark.usefixtures("one_thread")
STATS = ("mean", "max", "frac", "quantile")


def _reference(X: np.ndarray, groups, q=0.9, threshold=0.0) -> dict[str, pd.DataFrame]:
    """Per-group stats by pandas groupby and numpy.quantile, index = groups in first-seen
    order."""
    df = pd.DataFrame(X.astype(np.float64))
    g = pd.Series(np.asarray(groups).astype(str))
    order = pd.unique(g)
    by = df.groupby(g.to_numpy(), sort=False)
    return {"mean": by.mean().loc[order], "max": by.max().loc[order],
            "frac": (df > threshold).groupby(g.to_numpy(), sort=False).mean().loc[order],
            "quantile": pd.DataFrame([np.quantile(X[(g == k).to_numpy()].astype(np.float64), q,
                                                  axis=0) for k in order], index=order)}


def _table(n=400, d=12, n_subj=7, seed=0):
    """A FeatureTable-like AnnData: sparse non-negative codes, subjects interleaved, a
    subject-level clinical column and a categorical one, a row-level column."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    X.data *= 5
    subj = rng.choice([f"P{i}" for i in range(n_subj)], n)
    age = {f"P{i}": 40.0 + 3 * i for i in range(n_subj)}
    obs = pd.DataFrame({"subject_id": pd.Categorical(subj), "cell_id": [f"c{i}" for i in range(n)],
                        "age": [age[s] for s in subj],
                        "sex": pd.Categorical(["F" if int(s[1:]) % 2 else "M" for s in subj]),
                        "score": rng.normal(size=n)}, index=[str(i) for i in range(n)])
    ft = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"f{i}" for i in range(d)]))
    ft.uns["bioviz"] = {"layer": "L", "store": "/somewhere", "sae": {"k": 4}}
    return ft, subj


def _store(path, rows, obs, chunk_rows=64):
    w = StoreWriter(path, {"test": 1}, chunk_rows=chunk_rows)
    w.open()
    w.add(0, {"L": rows}, obs, {}, {}, "0")
    w.finish({"model": {"name": "test"}})
    return ActivationStore(path)


def test_every_stat_matches_pandas_and_numpy_per_subject():
    ft, subj = _table()
    out = aggregate(ft, stats=STATS, quantile=0.75, threshold=1.0, progress=False)
    ref = _reference(ft.X.toarray(), subj, q=0.75, threshold=1.0)
    assert list(out.obs_names) == list(pd.unique(subj))  # order of first appearance
    assert list(out.layers) == ["mean", "max", "frac", "q75"]
    for name, stat in zip(out.layers, STATS):
        np.testing.assert_allclose(out.layers[name], ref[stat].to_numpy(), rtol=1e-12, atol=0)
    np.testing.assert_array_equal(out.X, out.layers["mean"])
    assert out.X.dtype == np.float64 and isinstance(out.X, np.ndarray)
    assert list(out.var_names) == list(ft.var_names)
    np.testing.assert_array_equal(out.obs["n_rows"], pd.Series(subj).value_counts()[out.obs_names])


def test_quantile_and_frac_by_hand_zeros_included():
    # one feature, one subject with rows 0, 0, 0, 10: numpy's linear q90 sits at position
    # 0.9 * 3 = 2.7, between 0 and 10: 7.0; the zeros count for the mean and frac too
    X = sp.csr_matrix(np.array([[0.0], [0.0], [0.0], [10.0], [4.0]], dtype=np.float32))
    ft = ad.AnnData(X=X, obs=pd.DataFrame({"subject_id": ["a", "a", "a", "a", "b"]},
                                          index=list("01234")))
    out = aggregate(ft, stats=("q90", "mean", "max", "frac"), progress=False)
    assert out.layers["q90"][:, 0].tolist() == [pytest.approx(7.0), 4.0]
    assert out.layers["mean"][:, 0].tolist() == [2.5, 4.0]
    assert out.layers["max"][:, 0].tolist() == [10.0, 4.0]
    assert out.layers["frac"][:, 0].tolist() == [0.25, 1.0]


def test_subject_level_columns_come_along_row_level_ones_do_not():
    ft, subj = _table()
    out = aggregate(ft, progress=False)
    assert {"age", "sex", "subject_id", "n_rows"} <= set(out.obs.columns)
    assert "cell_id" not in out.obs.columns and "score" not in out.obs.columns
    ages = pd.Series(ft.obs["age"].to_numpy(), index=subj).groupby(level=0).first()
    np.testing.assert_array_equal(out.obs["age"], ages[out.obs_names])
    assert isinstance(out.obs["sex"].dtype, pd.CategoricalDtype)
    assert out.uns["bioviz"]["sae"] == {"k": 4} and out.uns["bioviz"]["layer"] == "L"
    rec = out.uns["bioviz"]
    assert rec["by"] == "subject_id" and rec["source"] == "feature_table" and rec["n_rows"] == 400


def test_by_any_key_one_row_per_cell_is_the_row_itself():
    ft, _ = _table(n=60)
    out = aggregate(ft, by="cell_id", stats=("quantile", "mean"), progress=False)
    np.testing.assert_array_equal(out.X, ft.X.toarray())
    assert list(out.obs_names) == list(ft.obs["cell_id"])


def test_h5ad_path_is_read_backed_in_blocks(tmp_path, monkeypatch):
    ft, subj = _table(n=500, n_subj=20)
    ft.varm["decoder"] = np.random.default_rng(0).normal(size=(ft.n_vars, 6))
    ft.write_h5ad(tmp_path / "ft.h5ad")
    reads = []
    read = agg._TableSource.read
    monkeypatch.setattr(agg._TableSource, "read", lambda self, idx: (reads.append(len(idx)),
                                                                     read(self, idx))[1])
    budget = 2.5e-5  # GiB: 69 rows of 12 float64 features with quantile copies
    out = aggregate(tmp_path / "ft.h5ad", stats=STATS, max_memory_gb=budget, progress=False)
    ref = _reference(ft.X.toarray(), subj)
    for name, stat in zip(out.layers, STATS):
        np.testing.assert_allclose(out.layers[name], ref[stat].to_numpy(), rtol=1e-12)
    max_rows = int(budget * 2**30 // (8 * ft.n_vars * 4))
    assert len(reads) > 3 and max(reads) <= max_rows < ft.n_obs
    assert out.uns["bioviz"]["source"] == "h5ad" and out.uns["bioviz"]["sae"] == {"k": 4}
    np.testing.assert_array_equal(out.varm["decoder"], ft.varm["decoder"])


def test_store_memory_stays_within_budget(tmp_path, monkeypatch):
    # 20 subjects interleaved row by row: no subject's rows are contiguous
    rng = np.random.default_rng(1)
    n, d = 20000, 256
    subj = rng.choice([f"S{i:02d}" for i in range(20)], n)
    rows = rng.normal(size=(n, d)).astype(np.float32)
    store = _store(tmp_path / "s", rows, pd.DataFrame({"subject_id": subj}), chunk_rows=128)
    blocks = []
    gather = agg._gather
    monkeypatch.setattr(agg, "_gather", lambda *a: blocks.append(len(a[-1])) or gather(*a))
    ref = _reference(rows, subj)
    budget = 1e-3  # GiB: 262 rows of 256 float64 features and their sorted copy
    tracemalloc.start()
    out = aggregate(store=store, stats=("mean", "max", "frac"), max_memory_gb=budget,
                    progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert max(blocks) <= int(budget * 2**30 // (8 * d * 2)) and sum(blocks) == n  # one pass
    # the blocks, the obs column of groups, and the store chunks zarr decodes meanwhile
    assert peak < n * d * 8 / 4  # a quarter of the layer as float64 (41 MB)
    for stat in ("mean", "max", "frac"):
        np.testing.assert_allclose(out.layers[stat], ref[stat].to_numpy(), rtol=1e-10)
    assert list(out.var_names[:2]) == ["a0", "a1"]
    assert out.uns["bioviz"]["layer"] == "L" and out.uns["bioviz"]["store_n_rows"] == n
    # the quantile gathers whole subjects, a few at a time, within its budget
    blocks.clear()
    budget = 2e-2  # GiB: 2621 rows with the quantile's copies; a subject has about 1000
    out = aggregate(store=store, stats=("quantile",), max_memory_gb=budget, progress=False)
    assert max(blocks) <= int(budget * 2**30 // (8 * d * 4)) < n and sum(blocks) == n
    np.testing.assert_allclose(out.X, ref["quantile"].to_numpy(), rtol=1e-12)


def test_a_group_larger_than_the_budget_streams_exactly_or_refuses_the_quantile(tmp_path,
                                                                                   monkeypatch):
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(3000, 4)).astype(np.float32)
    subj = np.where(np.arange(3000) % 10 == 0, "small", "big")  # big: 2700 rows, interleaved
    store = _store(tmp_path / "s", rows, pd.DataFrame({"subject_id": subj}))
    blocks = []
    gather = agg._gather
    monkeypatch.setattr(agg, "_gather", lambda *a: blocks.append(len(a[-1])) or gather(*a))
    budget = 2e-5  # GiB: 335 rows of 4 features (no quantile)
    out = aggregate(store=store, stats=("mean", "max", "frac"), threshold=0.5,
                    max_memory_gb=budget, progress=False)
    assert max(blocks) <= int(budget * 2**30 // (8 * 4 * 2)) < 2700
    ref = _reference(rows, subj, threshold=0.5)
    for stat in ("mean", "max", "frac"):
        np.testing.assert_allclose(out.layers[stat], ref[stat].to_numpy(), rtol=1e-10)
    with pytest.raises(InputError, match=r"group 'big' of 'subject_id' has 2700 rows.*"
                                         r"raise max_memory_gb or drop the quantile"):
        aggregate(store=store, stats=("mean", "quantile"), max_memory_gb=budget, progress=False)


@pytest.fixture
def sae_store(tmp_path):
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(600, 8)).astype(np.float32)
    subj = rng.choice([f"P{i}" for i in range(9)], 600)
    obs = pd.DataFrame({"subject_id": subj, "sample_id": [f"{s}-x" for s in subj],
                        "token_index": np.arange(600)})
    store = _store(tmp_path / "s", rows, obs)
    sae = build_sae(SAEConfig(d_in=8, d_sae=32, k=4, seed=0))
    sae.cfg.provenance = {"store": str(store.path), "layer": "L"}
    return sae, store, rows, subj


def test_sae_over_its_recorded_store_matches_dense_codes(sae_store, monkeypatch):
    sae, store, rows, subj = sae_store
    blocks = []
    gather = agg._gather
    monkeypatch.setattr(agg, "_gather", lambda *a: blocks.append(len(a[-1])) or gather(*a))
    out = aggregate(sae=sae, stats=STATS, max_memory_gb=1e-4, batch_size=50, device="cpu",
                    progress=False)
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(rows)).numpy()
    ref = _reference(codes, subj)
    for name, stat in zip(out.layers, STATS):
        np.testing.assert_allclose(out.layers[name], ref[stat].to_numpy(), rtol=1e-6, atol=1e-7)
    assert max(blocks) < len(rows) and out.var_names[0] == "f0" and out.n_vars == 32
    assert "sample_id" in out.obs.columns and "token_index" not in out.obs.columns
    rec = out.uns["bioviz"]
    assert rec["layer"] == "L" and rec["store"] == str(store.path) and "sae" in rec
    assert rec["source"] == "sae" and rec["stats"] == ["mean", "max", "frac", "q90"]
    np.testing.assert_array_equal(out.varm["decoder"], sae.W_dec.detach().numpy())


@pytest.mark.parametrize("threshold", [0.5, -0.5])
def test_sparse_rows_are_aggregated_sparse_and_match_pandas(sae_store, tmp_path, threshold):
    """Without the quantile a sparse FeatureTable (and an SAE's codes) stays sparse block by
    block: the same numbers as pandas on the dense rows, with negative codes, stored zeros,
    interleaved subjects, several blocks, and a negative threshold (where the zeros a sparse
    row does not store fire too)."""
    ft, subj = _table(n=3000, d=12, n_subj=9)
    X = ft.X.copy()
    X.data[::5] *= -1
    X.data[::7] = 0.0  # stored zeros
    ft.X = X
    ft.write_h5ad(tmp_path / "ft.h5ad")
    ref = _reference(X.toarray(), subj, threshold=threshold)
    stats = ("mean", "max", "frac")
    for source, budget in ((ft, 2.0), (tmp_path / "ft.h5ad", 1e-4)):  # 1e-4 GiB: ~560 rows a block
        out = aggregate(source, stats=stats, threshold=threshold, max_memory_gb=budget, progress=False)
        for stat in stats:
            np.testing.assert_allclose(out.layers[stat], ref[stat].to_numpy(), rtol=1e-12, atol=0)
    sae, _, rows, subj = sae_store
    out = aggregate(sae=sae, stats=stats, threshold=threshold, max_memory_gb=1e-4, batch_size=50,
                    device="cpu", progress=False)
    with torch.no_grad():
        ref = _reference(sae.encode(torch.from_numpy(rows)).numpy(), subj, threshold=threshold)
    for stat in stats:
        np.testing.assert_allclose(out.layers[stat], ref[stat].to_numpy(), rtol=1e-6, atol=1e-7)


def test_sae_refuses_another_layer_unless_allowed(sae_store, tmp_path):
    sae, store, _, _ = sae_store
    sae.cfg.provenance["layer"] = "other"
    with pytest.raises(InputError, match="trained on 'other', asked for 'L'"):
        aggregate(sae=sae, store=store, layer="L", device="cpu", progress=False)
    out = aggregate(sae=sae, store=store, layer="L", device="cpu", allow_mismatch=True,
                    progress=False)
    assert bool(out.uns["bioviz"]["target"]["allow_mismatch"])


@pytest.mark.parametrize("kwargs, match", [
    ({"by": "patient"}, r"by='patient' is not an obs column.*subject_id, cell_id, age"),
    ({"stats": ("mean", "median")}, r"unknown stat 'median'.*mean, max, frac, quantile"),
    ({"stats": ("q50",)}, r"for q50 pass quantile=0.5"),
    ({"stats": ()}, "stats is empty"),
    ({"quantile": 1.0}, r"quantile=1.0: expected a number strictly between 0 and 1"),
    ({"quantile": 0}, "strictly between 0 and 1"),
    ({"max_memory_gb": 0}, "max_memory_gb=0"),
    ({"threshold": float("nan")}, "threshold=nan"),
    ({"store": "/x"}, "store= and layer= go with sae="),
])
def test_bad_parameters_are_named(kwargs, match):
    ft, _ = _table(n=40)
    with pytest.raises(InputError, match=match):
        aggregate(ft, progress=False, **kwargs)


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(InputError, match="nothing to aggregate"):
        aggregate(progress=False)
    with pytest.raises(InputError, match="not both"):
        aggregate(_table(n=10)[0], sae=tmp_path, progress=False)
    with pytest.raises(InputError, match="is a folder"):
        aggregate(tmp_path, progress=False)
    (tmp_path / "x.h5ad").write_text("not hdf5")
    with pytest.raises(InputError, match="cannot be read as an .h5ad"):
        aggregate(tmp_path / "x.h5ad", progress=False)
    ft, _ = _table(n=40)
    ft.obs.loc[ft.obs_names[[3, 9]], "subject_id"] = np.nan
    with pytest.raises(InputError, match=r"obs\['subject_id'\] is missing in 2 rows \(rows 3, 9\)"):
        aggregate(ft, progress=False)


# -- to_obsm ----------------------------------------------------------------------------------


def test_to_obsm_aligns_rows_and_copies_named_features():
    ft, _ = _table(n=50)
    cells = aggregate(ft, by="cell_id", stats=("max",), progress=False)
    dense = ft.X.toarray()
    perm = np.random.default_rng(4).permutation(50)
    user = ad.AnnData(obs=pd.DataFrame({"barcode": ft.obs["cell_id"].to_numpy()[perm]},
                                       index=[f"u{i}" for i in range(50)]))
    to_obsm(user, cells, on="barcode", columns=["f3"])
    np.testing.assert_array_equal(user.obsm["X_sae"], dense[perm])
    np.testing.assert_array_equal(user.obs["sae_f3"], dense[perm, 3])
    assert user.uns["X_sae_features"] == list(ft.var_names)


def test_to_obsm_broadcasts_subjects_and_warns_on_gaps():
    ft, subj = _table(n=50)
    subjects = aggregate(ft, progress=False)
    keys = np.array(list(subj[:40]) + ["nobody"] * 10)
    user = ad.AnnData(obs=pd.DataFrame({"subject_id": keys}, index=[f"u{i}" for i in range(50)]))
    dropped = subjects[subjects.obs_names != subj[0]]  # one subject with no row in the table
    with pytest.warns(UserWarning, match="rows of adata have no row in the table") as rec:
        to_obsm(user, dropped, on="subject_id", key="X_subj")
    n_missing = int((keys == "nobody").sum() + (keys == subj[0]).sum())
    assert f"{n_missing} of 50 rows of adata" in str(rec[0].message)
    mat = user.obsm["X_subj"]
    assert np.isnan(mat).all(1).sum() == n_missing
    ok = np.flatnonzero((keys != "nobody") & (keys != subj[0]))
    want = pd.DataFrame(ft.X.toarray().astype(np.float64)).groupby(subj).mean()
    np.testing.assert_allclose(mat[ok], want.loc[keys[ok]].to_numpy(), rtol=1e-12)
    user2 = ad.AnnData(obs=pd.DataFrame({"subject_id": [subj[0]] * 3}, index=["a", "b", "c"]))
    with pytest.warns(UserWarning, match=r"\d+ of \d+ rows of the table match no row of adata"):
        to_obsm(user2, subjects, on="subject_id")


def test_to_obsm_no_overlap_shows_both_sides():
    ft, _ = _table(n=20)
    cells = aggregate(ft, by="cell_id", progress=False)
    user = ad.AnnData(obs=pd.DataFrame(index=[f"AAAC-{i}" for i in range(20)]))
    with pytest.raises(InputError, match=r"table's keys look like c0, c1.*adata.obs_names like "
                                         r"AAAC-0.*pass on="):
        to_obsm(user, cells)
    with pytest.raises(InputError, match=r"on='barcode' is not a column"):
        to_obsm(user, cells, on="barcode")
    with pytest.raises(InputError, match=r"columns: f99 not features"):
        to_obsm(user, cells, columns=["f99"])


def test_to_obsm_feature_plots_with_scanpy(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    ft, _ = _table(n=30)
    cells = aggregate(ft, by="cell_id", progress=False)
    user = ad.AnnData(obs=pd.DataFrame({"cell_id": ft.obs["cell_id"].to_numpy()},
                                       index=[f"u{i}" for i in range(30)]))
    user.obsm["X_umap"] = np.random.default_rng(0).normal(size=(30, 2))
    to_obsm(user, cells, on="cell_id", columns=["f1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = sc.pl.umap(user, color="sae_f1", show=False, return_fig=True)
    assert fig is not None


@pytest.mark.parametrize("interleaved", [False, True])
def test_rows_of_a_lost_chunk_are_refused_not_averaged(tmp_path, interleaved):
    import zarr

    from bioviz.store import StoreError
    from bioviz.store.format import ARRAYS

    rows = np.random.default_rng(6).normal(size=(256, 4)).astype(np.float32)
    subj = np.repeat(["a", "b", "c", "d"], 64)
    if interleaved:
        subj = np.tile(["a", "b", "c", "d"], 64)
    store = _store(tmp_path / "s", rows, pd.DataFrame({"subject_id": subj}), chunk_rows=64)
    with zarr.config.set({"array.write_empty_chunks": True}):  # keep the chunk file
        arr = zarr.open_array(store.path / ARRAYS / "L", mode="r+")
        arr[64:128] = np.nan  # what a chunk file gone missing reads as
    # a budget of about one subject: interleaved subjects are gathered row by row
    with pytest.raises(StoreError, match=r"layer 'L'.*(chunk 1|rows 64)"):
        aggregate(store=store.path, stats=("mean", "quantile"), max_memory_gb=1e-5,
                  progress=False)
