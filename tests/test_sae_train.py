import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import bioviz as bv
import bioviz.cli
from bioviz.adapters import TorchAdapter
from bioviz.sae import OptimConfig, SAEConfig

# small SAEs (d = 32): one torch thread (conftest.py) is as fast on two quiet cores and several
# times faster when the cores are shared
pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def planted(n=12000, d=32, m=96, k=4, seed=0):
    """Rows that are sparse sums of a planted unit-norm dictionary (the SAE's ideal case)."""
    g = torch.Generator().manual_seed(seed)
    dic = torch.randn(m, d, generator=g)
    dic /= dic.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, m, generator=g) < k / m).float() * (1 + torch.rand(n, m, generator=g))
    return codes @ dic, dic


def make_store(path, x):
    data = [{"x": x[i], "subject_id": f"S{i // 50}", "sample_id": f"X{i}"} for i in range(len(x))]
    return bv.extract(TorchAdapter(nn.Sequential(nn.Identity()), input_key="x"), data, "0", path,
                      batch_size=2000, chunk_rows=1000, progress=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x, dic = planted()
    st = make_store(tmp_path_factory.mktemp("sae") / "store", x)
    st.planted = dic
    return st


def test_topk_learns_the_planted_dictionary_and_logs_metrics(store, tmp_path):
    sae, = bv.train(store.path, max_steps=300, batch_size=500, output_dir=str(tmp_path / "sae"),
                    sae={"k": 8, "expansion_factor": 4}, optim={"lr": 3e-3},
                    trainer={**QUIET, "log_every_n_steps": 20})
    x = torch.from_numpy(store.array()[:2000])
    with torch.no_grad():
        fvu = float(((sae(x).x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert fvu < 0.2  # an untrained SAE is at ~1; superposition (96 atoms in 32 dims) sets the floor
    # most planted atoms have a decoder row pointing the same way
    cos = (store.planted @ sae.W_dec.detach().T).max(1).values
    assert (cos > 0.9).float().mean() > 0.7
    logs = pd.read_csv(next((tmp_path / "sae").rglob("metrics.csv")))
    for col in ("fvu", "l0", "dead_fraction", "dense_fraction", "cosine", "l2_ratio", "auxk"):
        assert f"topk/{col}" in logs, col
    assert logs["topk/l0"].dropna().iloc[-1] <= 8
    cfg = json.loads((tmp_path / "sae" / "topk" / "sae.json").read_text())
    assert cfg["provenance"]["layer"] == "0" and cfg["training"]["steps"] == 300
    assert cfg["provenance"]["store_manifest_blake2b"]


def test_sweep_trains_several_saes_on_one_pass(store, tmp_path):
    saes = bv.train(store.path, max_steps=30, batch_size=500, output_dir=str(tmp_path / "s"),
                    sae=SAEConfig(architecture="batchtopk", expansion_factor=2), sweep=[{"k": 2}, {"k": 6}],
                    trainer=QUIET)
    assert [s.cfg.k for s in saes] == [2, 6]
    assert all(s.cfg.inference_threshold is not None for s in saes)  # estimated while training
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.startswith("batchtopk")) == ["batchtopk_k2", "batchtopk_k6"]


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "matryoshka"])
def test_other_architectures_train(store, tmp_path, arch):
    opts = {"matryoshka_prefixes": [16, 48, 96]} if arch == "matryoshka" else {}
    sae, = bv.train(store.path, max_steps=100, batch_size=500, output_dir=str(tmp_path / arch),
                    sae={"architecture": arch, "expansion_factor": 3, "k": 4, **opts},
                    optim=OptimConfig(lr=3e-3, sparsity_warmup_steps=20), trainer={**QUIET, "log_every_n_steps": 10})
    fvu = pd.read_csv(next((tmp_path / arch).rglob("metrics.csv")))[f"{arch}/fvu"].dropna()
    assert sae.architecture == arch and fvu.iloc[-1] < 0.7 * fvu.iloc[0]
    if arch != "matryoshka":  # the sparsity coefficient was ramped up to its configured value
        coef = "l1" if arch == "relu" else "l0_penalty"
        assert pd.read_csv(next((tmp_path / arch).rglob("metrics.csv")))[f"{arch}/{coef}"].notna().any()


def test_resume_from_checkpoint_matches_uninterrupted(store, tmp_path):
    kw = dict(max_steps=40, batch_size=500, sae={"k": 4, "expansion_factor": 2})
    whole, = bv.train(store.path, output_dir=str(tmp_path / "whole"), trainer=QUIET, **kw)
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    class Crash(Callback):  # the run dies at step 27, as a killed job would
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 27:  # after the step-25 checkpoint (Lightning runs checkpointing last)
                raise KeyboardInterrupt

    ck = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=25, save_top_k=-1)
    try:
        bv.train(store.path, output_dir=str(tmp_path / "part"), trainer={**QUIET, "callbacks": [ck, Crash()]}, **kw)
    except (KeyboardInterrupt, SystemExit):
        pass
    assert not (tmp_path / "part" / "topk").exists()  # no final artifact from a crashed run
    ckpt = next((tmp_path / "ck").glob("*.ckpt"))
    resumed, = bv.train(store.path, output_dir=str(tmp_path / "resumed"), trainer=QUIET, ckpt_path=str(ckpt), **kw)
    torch.testing.assert_close(resumed.W_dec, whole.W_dec, rtol=0, atol=1e-5)
    torch.testing.assert_close(resumed.norm_scale, whole.norm_scale)


def test_nan_batch_stops_with_step_and_rows(tmp_path):
    # extraction refuses NaN by default; a store edited (or written by other tools) may not
    st = make_store(tmp_path / "st", planted(n=3000)[0])
    import zarr

    arr = zarr.open_array(tmp_path / "st" / "activations.zarr" / "0", mode="r+")
    row = arr[1234]
    row[3] = np.nan
    arr[1234] = row
    with pytest.raises(ValueError, match=r"NaN/Inf in the training batch at step \d+: store rows 1234\.\.1234"):
        bv.train(st.path, max_steps=20, batch_size=500, output_dir=str(tmp_path / "s"),
                 sae={"k": 4, "expansion_factor": 2}, trainer=QUIET)


def test_bad_settings_are_clear(store, tmp_path):
    with pytest.raises(ValueError, match="k"):
        bv.train(store.path, max_steps=2, output_dir=str(tmp_path / "a"), sae={"k": 500, "expansion_factor": 2},
                 trainer=QUIET)
    with pytest.raises(ValueError, match="batch_size=99999 is larger than the 12000 rows"):
        bv.train(store.path, max_steps=2, batch_size=99999, output_dir=str(tmp_path / "b"), trainer=QUIET)


def test_encode_feature_table(store, tmp_path):
    sae, = bv.train(store.path, max_steps=50, batch_size=500, output_dir=str(tmp_path / "s"),
                    sae={"k": 4, "expansion_factor": 2}, trainer=QUIET)
    ft = bv.encode(sae, store, out=str(tmp_path / "ft.h5ad"), batch_size=777, progress=False)
    assert ft.shape == (store.n_rows, sae.d_sae) and ft.X.format == "csr"
    x = torch.from_numpy(store.array()[:10])
    with torch.no_grad():
        np.testing.assert_allclose(ft.X[:10].toarray(), sae.encode(x).numpy(), atol=1e-5)
    assert np.allclose(ft.var["density"], np.asarray((ft.X > 0).mean(0)).ravel())
    assert (ft.X.getnnz(axis=1) <= 4).all()
    assert list(ft.obs["sample_id"][:3]) == ["X0", "X1", "X2"]
    back = ad.read_h5ad(tmp_path / "ft.h5ad")
    assert back.uns["bioviz"]["layer"] == "0" and back.varm["decoder"].shape == (sae.d_sae, 32)
    other = make_store(tmp_path / "other", torch.randn(100, 8))
    with pytest.raises(ValueError, match=r"has d=8 but the SAE was trained on d_in=32"):
        bv.encode(sae, other, progress=False)


@pytest.mark.parametrize("arch, coef", [("relu", "l1_coefficient"), ("jumprelu", "l0_coefficient")])
def test_sparsity_warmup_does_not_change_the_config(store, tmp_path, arch, coef):
    """The L1/L0 warm-up scales the loss; the SAE's config keeps the configured coefficient at
    every step, and the export records it (it used to record the ramp reached: 0.15 here)."""
    from lightning.pytorch.callbacks import Callback

    seen = []

    class Watch(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(getattr(module.saes[0].cfg, coef))

        def on_train_batch_end(self, trainer, module, *args):
            seen.append(getattr(module.saes[0].cfg, coef))

    sae, = bv.train(store.path, max_steps=5, batch_size=500, output_dir=str(tmp_path / "s"),
                    sae={"architecture": arch, "expansion_factor": 2, coef: 3.0},
                    optim={"sparsity_warmup_steps": 100}, trainer={**QUIET, "callbacks": [Watch()]})
    assert len(seen) == 10 and set(seen) == {3.0}
    assert getattr(sae.cfg, coef) == 3.0
    assert json.loads((tmp_path / "s" / arch / "sae.json").read_text())[coef] == 3.0


def test_unknown_keys_fail_before_training_naming_them(store, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"sweep\[1\]: unknown key\(s\) 'kk'; SAEConfig fields: architecture, "):
        bv.train(store.path, sae={"expansion_factor": 2}, sweep=[{"k": 2}, {"kk": 3}], output_dir=str(out))
    with pytest.raises(ValueError, match=r"sweep\[0\]: 'd_in' cannot be swept"):
        bv.train(store.path, sweep=[{"d_in": 3}], output_dir=str(out))
    with pytest.raises(ValueError, match=r"sae: unknown key\(s\) 'lr'.*'lr' is an OptimConfig field"):
        bv.train(store.path, sae={"k": 4, "lr": 1e-3}, output_dir=str(out))
    with pytest.raises(ValueError, match=r"optim: unknown key\(s\) 'k'"):
        bv.train(store.path, optim={"k": 4}, output_dir=str(out))
    with pytest.raises(ValueError, match=r"sae: seed=3 disagrees with the training seed=0"):
        bv.train(store.path, sae={"seed": 3}, output_dir=str(out))
    assert not out.exists()


def test_a_sweep_entry_out_of_range_is_named(store, tmp_path):
    with pytest.raises(ValueError, match=r"sweep\[1\]=\{'k': 0\}: invalid SAEConfig:\n  - k=0"):
        bv.train(store.path, max_steps=2, sae={"expansion_factor": 2}, sweep=[{"k": 2}, {"k": 0}],
                 output_dir=str(tmp_path / "s"), trainer=QUIET)


def test_a_sweep_over_sizes_replaces_the_base_size(store, tmp_path):
    saes = bv.train(store.path, max_steps=2, batch_size=500, output_dir=str(tmp_path / "s"),
                    sae={"k": 4, "expansion_factor": 2}, sweep=[{"d_sae": 48}, {"expansion_factor": 3}],
                    trainer={**QUIET, "logger": False})
    assert [s.d_sae for s in saes] == [48, 96]


def test_training_prints_only_its_own_progress(store, tmp_path, capfd):
    """No Lightning tips, device summary, TensorBoard or LeafSpec warnings; the bar counts steps."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bv.train(store.path, max_steps=6, batch_size=500, output_dir=str(tmp_path / "s"),
                 sae={"k": 4, "expansion_factor": 2}, trainer={"log_every_n_steps": 2})
    out, err = capfd.readouterr()
    assert "step 6/6" in out and "Epoch" not in out and "topk/fvu=" in out
    for noise in ("Tip", "GPU available", "LeafSpec", "tensorboard", "Trainer.fit"):
        assert noise not in out + err, (noise, out + err)
    assert not [w for w in caught if "LeafSpec" in str(w.message) or "tensorboard" in str(w.message).lower()]
    assert next((tmp_path / "s" / "lightning_logs").rglob("metrics.csv"))  # the CSV log, under output_dir


@pytest.mark.parametrize("bad, words", [("{l1_coefficient: abc}", ["l1_coefficient", "abc"]),
                                        ("{kk: 3}", ["kk"])])
def test_cli_rejects_a_bad_sae_field_before_training(store, tmp_path, capsys, bad, words):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(f"""
trainer: {{max_steps: 10, enable_progress_bar: false, default_root_dir: {tmp_path}/runs}}
model: {{sae: {bad}, output_dir: {tmp_path}/sae}}
data: {{store: {store.path}, batch_size: 400}}
""")
    with pytest.raises(SystemExit) as exit_:
        bioviz.cli.main(["train", "--config", str(cfg)])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sae").exists()
