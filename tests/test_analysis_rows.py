"""Row-level one-vs-rest ranking against scanpy's Wilcoxon rank_genes_groups, scipy's
Mann–Whitney U and statsmodels' Benjamini–Hochberg; and the pseudo-replication guard."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import scipy.stats as ss
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from bioviz.analysis import rows
from bioviz.analysis.rows import rank_rows
from bioviz.errors import InputError


def feature_table(seed=0, n=1200, m=40, n_groups=4, n_subjects=12, dtype=np.float32):
    """Codes like an SAE's: sparse, tied non-zeros (quantised), a few negative values, stored
    explicit zeros, an all-zero and a constant feature; cell types vary within subjects."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, m, density=0.15, format="csr", random_state=rng, dtype=np.float64)
    X.data = np.round(X.data * 4) / 4 + 0.25
    X.data[::9] *= -1
    groups = rng.integers(0, n_groups, n)
    dense = X.toarray()
    dense[groups == 1, 7] += rng.exponential(1.0, (groups == 1).sum())  # a marker of group 1
    dense[:, 3] = 0.0
    dense[:, 4] = 2.0
    X = sp.csr_matrix(dense.astype(dtype))
    X.data[np.flatnonzero(X.indices != 4)[::50]] = 0  # stored explicit zeros: still zeros
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"t{g}" for g in groups]),
                        "subject_id": [f"s{i}" for i in rng.integers(0, n_subjects, n)]},
                       index=[f"r{i}" for i in range(n)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"f{j}" for j in range(m)]))


def scanpy_frame(table, tie_correct):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(table, "cell_type", method="wilcoxon", n_genes=table.n_vars,
                                tie_correct=tie_correct)
    r = table.uns["rank_genes_groups"]
    return pd.concat([pd.DataFrame({"group": g, "feature": r["names"][g], "p_ref": r["pvals"][g],
                                    "score_ref": r["scores"][g]})
                      for g in r["names"].dtype.names])


@pytest.mark.parametrize("tie_correct", [False, True])
def test_equals_scanpy_wilcoxon(tie_correct):
    table = feature_table()
    df = rank_rows(table, "cell_type", tie_correct=tie_correct, progress=False)
    both = df.astype({"group": str}).merge(scanpy_frame(table, tie_correct),
                                           on=["group", "feature"], validate="1:1")
    assert len(both) == len(df) == 4 * 40
    const = both.feature.isin(["f3", "f4"])
    np.testing.assert_allclose(both.p[~const], both.p_ref[~const], rtol=1e-6)
    # scanpy stores scores as float32
    np.testing.assert_allclose(both.score[~const], both.score_ref[~const], rtol=1e-5, atol=1e-6)
    # constant features: scanpy says p = 1, bioviz NaN
    assert both.p[const].isna().all() and both.score[const].isna().all()
    top = df[df.group == "t1"].iloc[0]
    assert top.feature == "f7" and top.p < 1e-10


def test_columns_against_independent_references():
    table = feature_table(seed=1)
    df = rank_rows(table, "cell_type", tie_correct=True, progress=False)
    assert list(df.columns) == rows.COLUMNS
    X = table.X.toarray().astype(np.float64)
    groups = table.obs["cell_type"].to_numpy()
    for g in ["t0", "t2"]:
        part = df[df.group == g].set_index("feature")
        ok = part.p.notna()
        # q: Benjamini–Hochberg within the group over the tested features
        np.testing.assert_allclose(part.q[ok], multipletests(part.p[ok], method="fdr_bh")[1],
                                   rtol=1e-12)
        assert part.q[~ok].isna().all()
        # sorted by score, descending
        assert part.score[ok].is_monotonic_decreasing
        inside = groups == g
        for f in ["f0", "f5", "f7"]:
            x = X[:, int(f[1:])]
            ref = ss.mannwhitneyu(x[inside], x[~inside], method="asymptotic", use_continuity=False)
            assert part.p[f] == pytest.approx(ref.pvalue, rel=1e-9)
            assert part.auroc[f] == pytest.approx(roc_auc_score(inside, x), rel=1e-12)
            assert part.mean_in[f] == pytest.approx(x[inside].mean(), rel=1e-6)
            assert part.mean_out[f] == pytest.approx(x[~inside].mean(), rel=1e-6)
            assert part.frac_in[f] == pytest.approx((x[inside] != 0).mean())
            assert part.frac_out[f] == pytest.approx((x[~inside] != 0).mean())
        assert (part.n_in == inside.sum()).all() and (part.n_out == (~inside).sum()).all()
    assert (df.evidence == "row-level").all() and df.attrs["pseudo_replicated"] is False
    assert list(df.group.cat.categories) == ["t0", "t1", "t2", "t3"]


def test_blocks_dense_and_float64_give_the_same_answer(monkeypatch):
    table = feature_table(seed=2)
    ref = rank_rows(table, "cell_type", tie_correct=True, progress=False)
    monkeypatch.setattr(rows, "_BLOCK_NNZ", 500)  # several blocks, seams inside columns
    dense = table.copy()
    dense.X = table.X.toarray()
    for t in (table, dense):
        pd.testing.assert_frame_equal(rank_rows(t, "cell_type", tie_correct=True, progress=False), ref)
    # float64 values float32 cannot hold: the other sort, same ranks as scipy's
    wide = feature_table(seed=3, dtype=np.float64)
    wide.X.data = wide.X.data * (1 + 1e-12 * (np.arange(wide.X.nnz) % 3))
    assert not np.array_equal(wide.X.data.astype(np.float32), wide.X.data)
    df = rank_rows(wide, "cell_type", tie_correct=True, progress=False).set_index(["group", "feature"])
    x, inside = wide.X.toarray()[:, 0], (wide.obs.cell_type == "t2").to_numpy()
    ref = ss.mannwhitneyu(x[inside], x[~inside], method="asymptotic", use_continuity=False)
    assert df.loc[("t2", "f0"), "p"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_subject_level_label_is_refused_then_marked():
    table = feature_table(seed=4)
    subject_dx = {s: ("case" if int(s[1:]) % 2 else "control") for s in table.obs.subject_id}
    table.obs["diagnosis"] = table.obs.subject_id.map(subject_dx)
    with pytest.raises(InputError, match="subject-level label") as e:
        rank_rows(table, "diagnosis", progress=False)
    assert "pseudo_replicated=True" in str(e.value) and "bioviz.associate" in str(e.value)
    df = rank_rows(table, "diagnosis", pseudo_replicated=True, progress=False)
    assert (df.evidence == "row-level (pseudo-replicated)").all()
    assert df.attrs["pseudo_replicated"] is True
    # a row-level label is not marked even when allowed
    df = rank_rows(table, "cell_type", pseudo_replicated=True, progress=False)
    assert (df.evidence == "row-level").all() and df.attrs["pseudo_replicated"] is False
    # one row per subject: rows are subjects, nothing is pseudo-replicated
    bulk = table[:30].copy()
    bulk.obs["subject_id"] = [f"p{i}" for i in range(30)]
    assert rank_rows(bulk, "diagnosis", progress=False).attrs["pseudo_replicated"] is False


def test_bad_columns_and_small_groups():
    table = feature_table(seed=5)
    with pytest.raises(InputError, match=r"groupby='celltype'.*available.*'cell_type'"):
        rank_rows(table, "celltype", progress=False)
    with pytest.raises(InputError, match="subject_key='patient'"):
        rank_rows(table, "cell_type", subject_key="patient", progress=False)
    table.obs["half"] = table.obs.cell_type.astype(str).where(np.arange(table.n_obs) > 5)
    with pytest.raises(InputError, match="missing for 6 rows"):
        rank_rows(table, "half", progress=False)
    table.obs["one"] = "x"
    with pytest.raises(InputError, match="at least 2"):
        rank_rows(table, "one", progress=False)
    labels = table.obs.cell_type.astype(str).to_numpy()
    labels[0] = "rare"
    table.obs["with_rare"] = labels
    with pytest.warns(UserWarning, match=r"\['rare'\]"):
        df = rank_rows(table, "with_rare", progress=False)
    assert "rare" not in set(df.group)
    # the rare row still counts in every other group's rest
    assert (df.n_in + df.n_out == table.n_obs).all()
