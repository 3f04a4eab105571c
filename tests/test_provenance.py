"""Each stage after training reads the layer and the store from the SAE's record: encode and
fidelity default to them, and refuse a different layer or model unless told to allow it."""

import pytest
import torch

import bioviz as bv
from bioviz.adapters import TorchAdapter
from bioviz.sae import SAEConfig, build_sae


def _model(seed):
    torch.manual_seed(seed)
    # two layers of one width: the mix-up that a width check cannot catch
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh())


@pytest.fixture
def setup(tmp_path):
    model = _model(0)
    data = [torch.randn(6) for _ in range(64)]
    store = bv.extract(TorchAdapter(model), data, ["1", "3"], tmp_path / "store", progress=False)
    sae = build_sae(SAEConfig(d_in=8, d_sae=32, k=4, seed=0))
    sae.cfg.provenance = {"store": str(store.path), "layer": "1", "model": store.manifest["model"]}
    return model, data, store, sae, tmp_path


def test_encode_defaults_to_the_recorded_store_and_layer(setup):
    _, _, store, sae, _ = setup
    ft = bv.encode(sae, progress=False)
    assert ft.uns["bioviz"]["layer"] == "1" and ft.uns["bioviz"]["store"] == str(store.path)
    assert ft.n_obs == store.n_rows
    with torch.no_grad():
        want = sae.encode(torch.from_numpy(store.array("1")[:]))
    torch.testing.assert_close(torch.from_numpy(ft.X.toarray()), want)


def test_case4_encode_refuses_another_layer_of_the_same_width(setup):
    _, _, store, sae, _ = setup
    with pytest.raises(ValueError, match=r"trained on '1', asked for '3'"):
        bv.encode(sae, store, "3", progress=False)
    ft = bv.encode(sae, store, "3", progress=False, allow_mismatch=True)
    target = ft.uns["bioviz"]["target"]
    assert ft.uns["bioviz"]["layer"] == "3" and bool(target["allow_mismatch"])
    assert "layer" in target["mismatches"][0]


def test_encode_refuses_a_store_of_another_model(setup):
    _, data, _, sae, tmp_path = setup
    other = bv.extract(TorchAdapter(_model(1)), data, ["1"], tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match="model weights"):
        bv.encode(sae, other, progress=False)
    # the same model over a new cohort is what encode is for
    new = bv.extract(TorchAdapter(setup[0]), data[:10], ["1"], tmp_path / "new", progress=False)
    assert bv.encode(sae, new, progress=False).n_obs == 10


def test_encode_names_a_recorded_store_that_is_gone(setup):
    _, _, _, sae, tmp_path = setup
    sae.cfg.provenance["store"] = str(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="moved"):
        bv.encode(sae, progress=False)


def test_fidelity_takes_the_recorded_layer_and_checks_the_model(setup):
    model, data, _, sae, _ = setup
    res = bv.fidelity(TorchAdapter(model), data, sae, with_error=True, progress=False)
    assert res.name.startswith("1 ") and res["kl_sae_plus_error"] < 1e-7 < res["kl_sae"]
    with pytest.raises(ValueError, match="asked for '3'"):
        bv.fidelity(TorchAdapter(model), data, sae, "3", progress=False)
    with pytest.raises(ValueError, match="model weights"):
        bv.fidelity(TorchAdapter(_model(2)), data, sae, progress=False)


def test_encode_writes_a_table_whose_row_metadata_has_nullable_floats(tmp_path):
    """Volume cohorts read with convert_dtypes give obs columns of pandas Float64, which anndata
    cannot write: encode(out=) writes them as float64 (NA as NaN) instead of failing."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from bioviz.features import write_h5ad

    store = bv.extract(TorchAdapter(torch.nn.Sequential(torch.nn.Linear(4, 4))), [torch.randn(4) for _ in range(6)],
                       "0", tmp_path / "store", progress=False)
    ft = bv.encode(build_sae(SAEConfig(d_in=4, d_sae=8, k=2, seed=0)), store, layer="0", allow_mismatch=True,
                   progress=False)
    ft.obs["age"] = pd.array([61.5, None, 70.0, 55.0, 49.0, 80.5], dtype="Float64")
    write_h5ad(ft, tmp_path / "features.h5ad")
    age = ad.read_h5ad(tmp_path / "features.h5ad").obs["age"].to_numpy()
    np.testing.assert_array_equal(np.isnan(age), [False, True, False, False, False, False])
    assert age[0] == 61.5 and age[-1] == 80.5
