"""Trust what is already built: a finished store is only reused for the same data, bad input
values are refused before any model runs, and every item left out is recorded.

(Case 4 of the same issue, an SAE applied to another layer, is in tests/test_provenance.py.)"""

from __future__ import annotations

import json
import pickle
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from test_singlecell_geneformer import SPECIAL, make_model
from test_volume_common import SEGRESNET, write_cohort
from test_volume_io import _bad_cohort

import bioviz as bv
from bioviz.adapters import TorchAdapter
from bioviz.adapters.singlecell.demo import pbmc68k_counts
from bioviz.adapters.singlecell.geneformer import GeneformerAdapter
from bioviz.adapters.volume import VolumeAdapter, build_network
from bioviz.errors import InputError
from bioviz.store import StoreError
from bioviz.store.info import describe

pytestmark = pytest.mark.usefixtures("one_thread")

PRE = {"preset": "mri", "pixdim": [6, 6, 6]}


def _items(values, labels):
    return [{"x": torch.as_tensor(v, dtype=torch.float32), "subject_id": f"S{i}", "diagnosis": lab}
            for i, (v, lab) in enumerate(zip(values, labels))]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())


def _torch_extract(data, path, **kw):
    return bv.extract(TorchAdapter(_model(), input_key="x"), data, "1", path, batch_size=4,
                      progress=False, **kw)


# -- case 1: a finished store is only returned for the data it was made from --------------


def test_case1_changed_values_same_count_is_refused(tmp_path):
    values = np.linspace(-1, 1, 30, dtype=np.float32).reshape(10, 3)
    labels = ["a", "b"] * 5
    old_row = _torch_extract(_items(values, labels), tmp_path / "s").array()[7]
    stamp = (tmp_path / "s" / "manifest.json").stat().st_mtime_ns
    # the same data again (new objects): the finished store is returned, nothing recomputed
    _torch_extract(_items(values.copy(), list(labels)), tmp_path / "s")
    assert (tmp_path / "s" / "manifest.json").stat().st_mtime_ns == stamp
    changed = values.copy()
    changed[7, 1] += 0.5  # one value of one item; still 10 items
    with pytest.raises(StoreError, match=r"from different input data \(differs in: data\.inputs\)"):
        _torch_extract(_items(changed, labels), tmp_path / "s")
    new = _torch_extract(_items(changed, labels), tmp_path / "s", overwrite=True)
    assert not np.allclose(new.array()[7], old_row)


def test_case1_changed_labels_same_count_is_refused(tmp_path):
    values = np.linspace(-1, 1, 30, dtype=np.float32).reshape(10, 3)
    labels = ["a", "b"] * 5
    _torch_extract(_items(values, labels), tmp_path / "s")
    relabelled = list(labels)
    relabelled[3] = "a"  # a corrected label; the inputs are the same
    with pytest.raises(StoreError, match=r"from different input data \(differs in: data\.obs\)"):
        _torch_extract(_items(values, relabelled), tmp_path / "s")
    st = _torch_extract(_items(values, relabelled), tmp_path / "s", overwrite=True)
    assert st.obs["diagnosis"].tolist() == relabelled


def test_case1_volume_label_corrected_in_manifest_is_refused(tmp_path):
    manifest = write_cohort(tmp_path / "c", n=2, masks=False)
    table = pd.read_csv(manifest)
    for i, name in enumerate(table["image"]):  # uncompressed: a voxel can change, the size not
        nib.save(nib.load(tmp_path / "c" / name), tmp_path / "c" / f"s{i}.nii")
    table["image"] = [f"s{i}.nii" for i in range(len(table))]
    table.to_csv(manifest, index=False)
    kw = {"batch_size": 2, "progress": False}
    net = build_network(SEGRESNET)

    def run(**more):
        return bv.extract(VolumeAdapter(net, preprocess=PRE), manifest, "down_layers.2", tmp_path / "s",
                          **kw, **more)

    run()
    stamp = (tmp_path / "s" / "manifest.json").stat().st_mtime_ns
    run()
    assert (tmp_path / "s" / "manifest.json").stat().st_mtime_ns == stamp  # same data: reused
    table.loc[1, "group"] = "a"  # the label column corrected
    table.to_csv(manifest, index=False)
    with pytest.raises(StoreError, match=r"from different input data \(differs in: data\.obs\)"):
        run()
    st = run(overwrite=True)
    assert set(st.obs.loc[st.obs["subject_id"] == "S1", "group"]) == {"a"}
    # one voxel of one scan changed, the file's size the same: its bytes are compared
    scan = tmp_path / "c" / "s1.nii"
    size, img = scan.stat().st_size, nib.load(scan)
    voxels = np.asarray(img.dataobj).copy()
    voxels[0, 0, 0] += 100
    nib.save(nib.Nifti1Image(voxels, img.affine, img.header), scan)
    assert scan.stat().st_size == size
    with pytest.raises(StoreError, match=r"from different input data \(differs in: data\.files\)"):
        run()


@pytest.fixture(scope="module")
def pbmc():
    return pbmc68k_counts()


@pytest.fixture(scope="module")
def gf_dir(tmp_path_factory, pbmc):
    d = tmp_path_factory.mktemp("gf")
    tokens = {**SPECIAL, **{g: i + 4 for i, g in enumerate(pbmc.var_names)}}
    with open(d / "token_dictionary.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(d / "gene_median_dictionary.pkl", "wb") as f:
        pickle.dump({g: 1.0 for g in pbmc.var_names}, f)
    make_model(d, len(tokens), layers=1, width=16)
    return d


def test_case1_singlecell_changed_counts_or_labels_are_refused(tmp_path, gf_dir, pbmc):
    cohort = pbmc[:12].copy()
    path = tmp_path / "cohort.h5ad"
    cohort.write_h5ad(path)

    def run(**kw):
        ada = GeneformerAdapter(gf_dir, subject_key="donor", obs_columns=["bulk_labels"])
        try:
            return bv.extract(ada, str(path), "bert.encoder.layer.0", tmp_path / "s", batch_size=4,
                              progress=False, **kw)
        finally:
            if ada.source is not None:
                ada.source.close()  # the h5ad is rewritten below

    run()
    run()  # the same file: reused
    x = cohort.X.toarray()
    j = int(np.flatnonzero(x[5])[0])
    x[5, j] += 3  # more counts of one gene in one cell, same shape
    changed = cohort.copy()
    changed.X = sp.csr_matrix(x)
    changed.obs["n_counts"] = x.sum(1)
    changed.write_h5ad(path)
    with pytest.raises(StoreError, match=r"differs in: data\.expression"):
        run()
    cohort.write_h5ad(path)
    run()  # back to the data the store was made from
    relabelled = cohort.copy()
    relabelled.obs["bulk_labels"] = relabelled.obs["bulk_labels"].iloc[::-1].to_numpy()
    relabelled.write_h5ad(path)
    with pytest.raises(StoreError, match=r"differs in: data\.obs"):
        run()


# -- case 2: NaN or Inf in single-cell expression ---------------------------------------------


def _poisoned(pbmc, kind):
    a = pbmc[:20].copy()
    del a.obs["n_counts"]  # n_counts from the row sums, as for most cohorts
    x = a.X.toarray().astype(np.float32)
    if kind == "all_nan":
        x[:] = np.nan
    else:
        bad = np.nan if kind == "nan" else np.inf
        x[2, 10], x[7, 10], x[7, 30] = bad, bad, bad  # 2 cells, 2 genes
    a.X = sp.csr_matrix(x)
    return a


@pytest.mark.parametrize("kind", ["nan", "inf", "all_nan"])
def test_case2_nonfinite_expression_is_refused_by_geneformer(tmp_path, gf_dir, pbmc, kind):
    a = _poisoned(pbmc, kind)
    want = r"20 cells and 765 genes" if kind == "all_nan" else r"2 cells and 2 genes"
    with pytest.raises(InputError, match=rf"{want} have NaN or Inf values"):
        bv.extract(GeneformerAdapter(gf_dir), a, "bert.encoder.layer.0", tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()  # refused before the store is made


def test_case2_nonfinite_expression_is_refused_by_scgpt(tmp_path, pbmc):
    from test_singlecell_scgpt import write_release

    from bioviz.adapters.singlecell.scgpt import ScGPTAdapter

    write_release(tmp_path, list(pbmc.var_names))
    a = _poisoned(pbmc, "nan")
    with pytest.raises(InputError, match=r"2 cells and 2 genes have NaN or Inf values.*\['AACACGTGGTCTTT-1', 'ACCCTCGAGTGAGG-1'\]"):
        ScGPTAdapter(tmp_path).dataset(a)


# -- case 5: every item left out is recorded -----------------------------------------------


def test_case5_skipped_scans_are_recorded_in_the_manifest_and_info(tmp_path, monkeypatch):
    manifest = _bad_cohort(tmp_path)
    table = pd.read_csv(manifest)
    extra = pd.DataFrame([{"subject_id": "GONE", "image": "gone.nii.gz", "age": 6.0}])
    pd.concat([table, extra]).to_csv(manifest, index=False)
    net = build_network(SEGRESNET)

    def run():
        ad = VolumeAdapter(net, preprocess=PRE, allow_outside=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            st = bv.extract(ad, manifest, "down_layers.1", tmp_path / "store", batch_size=1,
                            chunk_rows=4096, progress=False)
        return st, [str(w.message) for w in caught]

    # rows per scan: S0 5440, CT 128, BROKEN 0, S1 5440, TIME 0; chunks of 4096 rows commit in
    # batches 0 and 3, so a run stopped at the third commit resumes at batch 3, after BROKEN:
    # the resumed run must still record it
    import bioviz.store.writer as w

    real, calls = w.pq.write_table, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(w.pq, "write_table", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        run()
    monkeypatch.undo()
    progress = json.loads((tmp_path / "store" / "_progress.json").read_text())
    assert progress["resume"]["batch"] == 3  # BROKEN (batch 2) is behind the resume point
    st, warned = run()
    skipped = st.manifest["skipped_items"]
    assert st.manifest["n_skipped_items"] == 3
    assert [(s["row"], s["sample_id"]) for s in skipped] == [(6, "GONE"), (3, "BROKEN"), (5, "TIME")]
    assert skipped[0]["reason"] == "image not found" and skipped[0]["file"].endswith("gone.nii.gz")
    assert skipped[1]["file"].endswith("broken.nii.gz") and "cannot read" in skipped[1]["reason"]
    assert "is 4D" in skipped[2]["reason"]
    assert any("3 items were skipped" in m for m in warned)
    text = describe(st.path)
    assert "skipped items: 3" in text and "row 3, sample BROKEN" in text and "is 4D" in text


def test_case5_empty_cells_dropped_are_recorded(tmp_path, gf_dir, pbmc):
    a = pbmc[:10].copy()
    x = a.X.toarray()
    x[4] = 0
    a.X = sp.csr_matrix(x)  # cell 5 has no expression left
    ada = GeneformerAdapter(gf_dir, empty_cells="drop")
    with pytest.warns(UserWarning, match="1 items were skipped"):
        st = bv.extract(ada, a, "bert.encoder.layer.0", tmp_path / "s", progress=False)
    assert st.manifest["n_skipped_items"] == 1
    item = st.manifest["skipped_items"][0]
    assert item["row"] == 5 and item["cell_id"] == a.obs_names[4] and "no expressed gene" in item["reason"]
    assert "skipped items: 1" in describe(st.path)
