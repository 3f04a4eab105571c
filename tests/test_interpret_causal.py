"""Causal evidence for SAE features: integrated gradients (bioviz.interpret.attribution) and
in-model edits against a random-feature null (bioviz.interpret.intervene).

References are independent of the code under test: captum called directly on a plain
forward function written here, f(x) computed by hand (hooks + the ReLU SAE's formula),
and edits spliced in by hand with the explicit decode(codes') + (x - decode(codes))."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from jobs import Tokens, tiny_bert

from bioviz.adapters import TorchAdapter
from bioviz.errors import InputError
from bioviz.interpret.attribution import integrated_gradients
from bioviz.interpret.intervene import _random_features, ablation_effect_ratio, intervene
from bioviz.sae import SAEConfig, build_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def relu_sae(d_in, d_sae, seed=0, bias=None):
    """A ReLU SAE; ``bias={feature: b}`` lifts a feature's encoder bias so its code stays
    positive along the whole IG path (a smooth f: quadrature error, not ReLU kinks)."""
    sae = build_sae(SAEConfig(architecture="relu", d_in=d_in, d_sae=d_sae, seed=seed))
    with torch.no_grad():
        for f, b in (bias or {}).items():
            sae.b_enc[f] = b
    return sae.eval()


def hand_codes(sae, rows):
    """The ReLU SAE's codes from its formula (not sae.encode)."""
    w = {k: v.detach().double() for k, v in sae.state_dict().items()}
    return torch.relu((rows.double() * w["norm_scale"] - w["b_dec"]) @ w["W_enc"] + w["b_enc"])


# -- integrated gradients: a small MLP -------------------------------------------------------


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    adapter = TorchAdapter(model.eval())
    ds = adapter.dataset([torch.randn(8) for _ in range(5)])
    return model, adapter, adapter.collate([ds[i] for i in range(5)])


def mlp_f(model, sae, feature):
    def f(x):  # the target scalar by hand: the feature's code at model[1]'s output
        h = model[1](model[0](x))
        return hand_codes(sae, h)[:, feature]
    return f


@pytest.mark.parametrize("baseline", [None, 0.5])
def test_ig_completeness_on_an_mlp(mlp, baseline):
    model, adapter, batch = mlp
    sae = relu_sae(16, 32, bias={3: 3.0})
    res = integrated_gradients(adapter, batch, sae, "1", 3, baseline=baseline, steps=64)
    x = batch.inputs
    base = torch.zeros_like(x) if baseline is None else torch.full_like(x, baseline)
    f = mlp_f(model, sae, 3)
    with torch.no_grad():
        fx, fb = f(x).numpy(), f(base).numpy()
    np.testing.assert_allclose(res.f_input, fx, rtol=1e-5)
    np.testing.assert_allclose(res.f_baseline, fb, rtol=1e-5)
    assert res.attributions.shape == (5, 8)
    diff = fx - fb
    assert np.all(np.abs(diff) > 0.05)  # the test has something to explain
    np.testing.assert_array_less(np.abs(res.attributions.sum(1) - diff), 0.01 * np.abs(diff))
    # captum on the plain forward: same attributions, and its delta is our gap
    ref, delta = IntegratedGradients(f).attribute(x, baselines=base, n_steps=64,
                                                  return_convergence_delta=True)
    np.testing.assert_allclose(res.attributions, ref.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.gap, delta.detach().numpy(), atol=1e-5)
    assert (res.relative_gap < 0.01).all()


def test_ig_reports_the_gap_of_a_kinked_feature(mlp):
    """No bias lift: the ReLU code switches on along the path; the gap is what captum says."""
    model, adapter, batch = mlp
    sae = relu_sae(16, 32)
    res = integrated_gradients(adapter, batch, sae, "1", 4, steps=16)
    f = mlp_f(model, sae, 4)
    _, delta = IntegratedGradients(f).attribute(batch.inputs, n_steps=16,
                                                return_convergence_delta=True)
    assert np.abs(res.gap).max() > 1e-4  # a real gap, visible
    np.testing.assert_allclose(res.gap, delta.detach().numpy(), atol=1e-5)
    summary = res.summary()
    np.testing.assert_allclose(summary["attribution_sum"] - (summary["f_input"]
                               - summary["f_baseline"]), res.gap, atol=1e-12)


# -- integrated gradients: a token model through its embedding ------------------------------


@pytest.fixture(scope="module")
def bert():
    model = tiny_bert(hidden=32, layers=2)
    adapter = TorchAdapter(model)
    ds = adapter.dataset(Tokens(8, length=12))
    return model, adapter, adapter.collate([ds[i] for i in range(3)])


def bert_f(model, sae, feature, row_mask=None):
    """Sum of the feature's code over each item's non-padding tokens (or the chosen rows),
    by hand: a hook on encoder.layer.0 and the SAE formula."""
    def f(ids, mask):
        seen = {}
        def grab(_m, _a, out):  # a tensor, or a tuple led by one (transformers < 5)
            seen["t"] = out if isinstance(out, torch.Tensor) else out[0]

        h = model.encoder.layer[0].register_forward_hook(grab)
        try:
            model(input_ids=ids, attention_mask=mask)
        finally:
            h.remove()
        keep = mask.bool()
        codes = hand_codes(sae, seen["t"][keep])[:, feature]
        if row_mask is not None:
            codes = codes * torch.as_tensor(np.tile(row_mask, len(ids) // 3), dtype=codes.dtype)
        item = keep.nonzero()[:, 0]
        return torch.zeros(len(ids), dtype=codes.dtype).index_add(0, item, codes)
    return f


def test_ig_completeness_on_a_token_model(bert):
    model, adapter, batch = bert
    sae = relu_sae(32, 64, bias={5: 4.0})
    res = integrated_gradients(adapter, batch, sae, "encoder.layer.0", 5,
                               embedding="embeddings.word_embeddings", steps=64)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    f = bert_f(model, sae, 5)
    with torch.no_grad():
        fx, fb = f(ids, mask).numpy(), f(torch.zeros_like(ids), mask).numpy()
    np.testing.assert_allclose(res.f_input, fx, rtol=1e-5)
    np.testing.assert_allclose(res.f_baseline, fb, rtol=1e-5)
    diff = fx - fb
    assert np.all(np.abs(diff) > 0.05)
    np.testing.assert_array_less(np.abs(res.per_token.sum(1) - diff), 0.01 * np.abs(diff))
    lig = LayerIntegratedGradients(f, model.embeddings.word_embeddings)
    ref, delta = lig.attribute(ids, baselines=torch.zeros_like(ids), additional_forward_args=(mask,),
                               n_steps=64, return_convergence_delta=True)
    np.testing.assert_allclose(res.attributions, ref.detach().numpy(), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(res.gap, delta.detach().numpy(), atol=1e-4)
    assert res.per_token.shape == ids.shape
    # padding is token 0, as is the baseline: nothing moves there, so nothing is attributed
    assert np.all(res.per_token[~mask.bool().numpy()] == 0)
    assert len(res.rows) == int(mask.sum()) and res.rows["target"].all()


def test_ig_target_rows_choose_the_rows_that_count(bert):
    model, adapter, batch = bert
    sae = relu_sae(32, 64, bias={5: 4.0})
    mask = batch.inputs["attention_mask"]
    n_rows = int(mask.sum())
    first = int(mask[0].sum())
    chosen = np.zeros(n_rows, dtype=bool)
    chosen[first:first + 3] = True  # three tokens of item 1
    res = integrated_gradients(adapter, batch, sae, "encoder.layer.0", 5, target_rows=chosen,
                               embedding="embeddings.word_embeddings", steps=32)
    f = bert_f(model, sae, 5, row_mask=chosen.astype(float))
    with torch.no_grad():
        fx = f(batch.inputs["input_ids"], mask).numpy()
    assert fx[0] == 0 and fx[2] == 0 and fx[1] > 0
    np.testing.assert_allclose(res.f_input, fx, rtol=1e-5, atol=1e-7)
    assert np.all(res.per_token[[0, 2]] == 0)
    assert np.abs(res.gap[1]) < 0.01 * np.abs(res.f_input[1] - res.f_baseline[1])
    # integer positions mean the same rows
    pos = integrated_gradients(adapter, batch, sae, "encoder.layer.0", 5,
                               target_rows=np.flatnonzero(chosen),
                               embedding="embeddings.word_embeddings", steps=32)
    np.testing.assert_allclose(pos.attributions, res.attributions, atol=1e-9)
    assert res.rows["target"].sum() == 3


def test_ig_bad_input_is_named(mlp, bert):
    _, adapter, batch = mlp
    sae = relu_sae(16, 32)
    cases = [
        (dict(feature=32), "feature=32"),
        (dict(feature=1, steps=0), "steps=0"),
        (dict(feature=1, target_rows=[99]), "target_rows"),
        (dict(feature=1, target_rows=np.ones(3, bool)), "target_rows"),
        (dict(feature=1, baseline=torch.zeros(3)), "baseline"),
        (dict(feature=1, method="simpson"), "method"),
    ]
    for kwargs, word in cases:
        with pytest.raises(InputError, match=word):
            integrated_gradients(adapter, batch, sae, "1", **kwargs)
    with pytest.raises(InputError, match="Batch"):
        integrated_gradients(adapter, batch.inputs, sae, "1", 1)
    with pytest.raises(InputError, match="no module"):
        integrated_gradients(adapter, batch, sae, "9", 1)
    _, tok_adapter, tok_batch = bert
    with pytest.raises(InputError, match="input_key"):  # two tensors, no embedding named
        integrated_gradients(tok_adapter, tok_batch, relu_sae(32, 64), "encoder.layer.0", 1)
    with pytest.raises(InputError, match="embedding="):  # token ids cannot be scaled
        integrated_gradients(tok_adapter, tok_batch, relu_sae(32, 64), "encoder.layer.0", 1,
                             input_key="input_ids")


# -- interventions ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    """A layer whose direction u drives output 0 (outputs 1, 2 are blind to u), and an SAE
    whose feature 0 decodes to u; its other 63 decoder rows are random."""
    g = torch.Generator().manual_seed(1)
    d = 32
    u = torch.randn(d, generator=g)
    u /= u.norm()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, d), torch.nn.Tanh(), torch.nn.Linear(d, 3))
    with torch.no_grad():
        a = torch.randn(12, generator=g)
        model[0].weight.mul_(0.5).add_(3 * torch.outer(u, a / a.norm()))
        head = torch.randn(3, d, generator=g)
        head[1:] -= (head[1:] @ u)[:, None] * u
        head[0] = 5 * u
        model[2].weight.copy_(head)
    sae = relu_sae(d, 64)
    with torch.no_grad():
        sae.W_dec[0] = u
        sae.W_enc.copy_(sae.W_dec.t())
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    data = [torch.randn(12, generator=g) for _ in range(96)]
    return model.eval(), sae, data


def hand_edit(model, sae, data, feature, new_code):
    """Per-item output change [items, outputs] with model[1]'s output x replaced by
    decode(c') + (x − decode(c)), decode written out: (c @ W_dec + b_dec) / s."""
    w = {k: v.detach() for k, v in sae.state_dict().items()}
    x = torch.stack(data)

    def decode(c):
        return (c @ w["W_dec"] + w["b_dec"]) / w["norm_scale"]

    def hook(_m, _a, out):
        c = hand_codes(sae, out).float()
        c2 = c.clone()
        c2[:, feature] = new_code(c[:, feature])
        return decode(c2) + (out - decode(c))

    with torch.no_grad():
        clean = model(x)
        h = model[1].register_forward_hook(hook)
        try:
            edited = model(x)
        finally:
            h.remove()
    return (edited - clean).double().numpy()


def test_a_planted_feature_controls_its_output(planted):
    model, sae, data = planted
    tab = intervene(TorchAdapter(model), data, sae, "1", 0, n_random=20, batch_size=32,
                    progress=False)
    target = tab[tab["role"] == "target"].set_index("output")
    rand = tab[tab["role"] == "random"]
    ratio = ablation_effect_ratio(tab)
    assert ratio[0] >= 10  # measured ~21
    # outputs 1 and 2 do not read u: ablating the feature leaves them be
    assert target.loc[[1, 2], "mean_abs_change"].max() < 1e-5 and ratio[[1, 2]].max() < 0.01
    assert target.loc[0, "z"] < -5 and target.loc[0, "p_empirical"] == pytest.approx(1 / 21)
    null = rand.loc[rand["output"] == 0, "mean_change"]
    assert target.loc[0, "z"] == pytest.approx((target.loc[0, "mean_change"] - null.mean())
                                               / null.std(ddof=1))
    np.testing.assert_allclose(target["effect_ratio"], ratio.to_numpy())
    # the null: 20 distinct other features within a factor 2 of the feature's density
    feats = rand["feature"].unique()
    assert len(feats) == 20 and 0 not in feats and tab.attrs["density_band"] == 2.0
    # density by hand, from the captured layer over all the data
    with torch.no_grad():
        hidden = model[1](model[0](torch.stack(data)))
    dens = (hand_codes(sae, hidden) > 0).double().mean(0).numpy()
    np.testing.assert_allclose(tab.groupby("feature")["density"].first(), dens[tab.groupby(
        "feature")["density"].first().index], atol=1e-12)
    d0 = dens[0]
    assert rand["density"].between(d0 / 2, d0 * 2).all()
    # the mean changes match edits spliced in by hand
    for f in (0, int(feats[0]), int(feats[-1])):
        ref = hand_edit(model, sae, data, f, torch.zeros_like)
        got = tab[tab["feature"] == f].sort_values("output")
        np.testing.assert_allclose(got["mean_change"], ref.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["mean_abs_change"], np.abs(ref).mean(0), rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(got["sd_change"], ref.std(0, ddof=1), rtol=1e-4, atol=1e-6)


def test_clamp_and_scale_match_hand_edits(planted):
    model, sae, data = planted
    adapter = TorchAdapter(model)
    clamp = intervene(adapter, data, sae, "1", 0, mode="clamp", value=2.0, n_random=2,
                      progress=False)
    got = clamp[clamp["feature"] == 0]["mean_change"].to_numpy()
    ref = hand_edit(model, sae, data, 0, lambda c: torch.full_like(c, 2.0)).mean(0)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    # output 0 = 5 u·h, so clamping the u-code to 2 moves it by 5 (2 − code) on average
    with torch.no_grad():
        code = hand_codes(sae, model[1](model[0](torch.stack(data))))[:, 0]
    assert got[0] == pytest.approx(float((5 * (2.0 - code)).mean()), rel=1e-4)
    half = intervene(adapter, data, sae, "1", 0, mode="scale", value=0.5, n_random=2,
                     progress=False)
    np.testing.assert_allclose(half[half["feature"] == 0]["mean_change"],
                               hand_edit(model, sae, data, 0, lambda c: 0.5 * c).mean(0),
                               rtol=1e-4, atol=1e-6)


def test_scale_one_leaves_a_token_model_unchanged(bert):
    """The error term is kept: editing nothing changes nothing, padding and all."""
    model, adapter, _ = bert
    sae = relu_sae(32, 64, seed=3)
    data = Tokens(8, length=12)
    cls = lambda out: out.last_hidden_state[:, 0]  # noqa: E731
    same = intervene(adapter, data, sae, "encoder.layer.0", 7, mode="scale", value=1.0,
                     n_random=3, batch_size=4, output_fn=cls, progress=False)
    assert len(same) == 4 * 32
    assert same["mean_abs_change"].max() < 1e-6
    gone = intervene(adapter, data, sae, "encoder.layer.0", 7, n_random=3, batch_size=4,
                     output_fn=cls, progress=False)
    zero = intervene(adapter, data, sae, "encoder.layer.0", 7, mode="scale", value=0.0,
                     n_random=3, batch_size=4, output_fn=cls, progress=False)
    assert gone[gone["role"] == "target"]["mean_abs_change"].max() > 1e-3  # it does something
    np.testing.assert_allclose(gone["mean_change"], zero["mean_change"], atol=1e-6)


def test_the_density_band_widens_only_when_needed():
    dens = np.array([0.1, 0.1, 0.3, 0.5, 0.0, 0.04, 0.15])
    rng = np.random.default_rng(0)
    chosen, band = _random_features(dens, 0, 2, 2.0, 100, rng)
    assert band == 2.0 and sorted(chosen) == [1, 6]  # the only two within [0.05, 0.2]
    chosen, band = _random_features(dens, 0, 4, 2.0, 100, rng)
    assert band == 4.0 and sorted(chosen) == [1, 2, 5, 6]  # [0.025, 0.4]; dead 4 never
    with pytest.warns(UserWarning, match="only 5"):
        chosen, _ = _random_features(dens, 0, 9, 2.0, 100, rng)
    assert sorted(chosen) == [1, 2, 3, 5, 6]


def test_a_dead_feature_warns_and_changes_nothing(planted):
    model, sae, data = planted
    dead = relu_sae(32, 64)
    with torch.no_grad():
        dead.b_enc[9] = -100.0  # never fires
    with pytest.warns(UserWarning, match="feature 9 never fires"):
        tab = intervene(TorchAdapter(model), data, dead, "1", 9, n_random=3, progress=False)
    target = tab[tab["role"] == "target"]
    assert (target["density"] == 0).all() and (target["mean_abs_change"] == 0).all()


def test_effect_ratio_by_hand():
    tab = pd.DataFrame({"role": ["target", "random", "random", "target", "random", "random"],
                        "output": [0, 0, 0, 1, 1, 1],
                        "mean_change": [-3.0, 1.0, -0.5, 0.0, 0.0, 0.0],
                        "mean_abs_change": [3.0, 1.0, 0.5, 2.0, 0.0, 0.0]})
    np.testing.assert_allclose(ablation_effect_ratio(tab), [3 / 0.75, np.inf])
    np.testing.assert_allclose(ablation_effect_ratio(tab, measure="mean_change"),
                               [3 / 0.75, np.nan])


def test_intervene_bad_input_is_named(planted):
    model, sae, data = planted
    adapter = TorchAdapter(model)
    cases = [
        (dict(mode="zero"), "mode='zero'"),
        (dict(mode="clamp"), "value=None"),
        (dict(mode="scale", value=float("nan")), "value=nan"),
        (dict(value=1.0), "value: ablate"),
        (dict(n_random=-1), "n_random"),
        (dict(density_band=1.0), "density_band"),
        (dict(batch_size=0), "batch_size"),
        (dict(output_fn=lambda out: out[:, 0]), "output_fn"),
    ]
    for kwargs, word in cases:
        with pytest.raises(InputError, match=word):
            intervene(adapter, data[:8], sae, "1", 0, progress=False, **kwargs)
    with pytest.raises(InputError, match="feature=64"):
        intervene(adapter, data[:8], sae, "1", 64, progress=False)
    with pytest.raises(InputError, match="measure"):
        ablation_effect_ratio(pd.DataFrame({"role": [], "output": [], "mean_change": []}),
                              measure="median")


def test_interpret_reports_the_intervention_in_the_description(planted, tmp_path):
    """bv.interpret with a model: the planted feature's ablation is described from the
    interventions table (output 0, the size and ratio it holds); the adapter that cannot map
    back says which evidence it skipped."""
    import anndata as ad
    import scipy.sparse as sp

    import bioviz as bv

    model, sae, data = planted
    with torch.no_grad():
        codes = hand_codes(sae, model[1](model[0](torch.stack(data)))).float().numpy()
    obs = pd.DataFrame({"subject_id": [f"S{i // 4}" for i in range(len(data))]})
    obs["sample_id"] = obs["subject_id"]
    obs["dx"] = np.where(np.arange(len(data)) // 4 % 2 == 1, "case", "control")
    ft = ad.AnnData(sp.csr_matrix(codes), obs=obs, var=pd.DataFrame(index=[f"f{j}" for j in range(64)]))
    ft.obs_names = ft.obs_names.astype(str)
    findings = bv.associate(ft, ["dx"], n_permutations=0, n_boot=0, n_stability=0, heldout=None,
                            probes=False, progress=False)
    result = bv.interpret(findings, ft, candidates=["f0"], adapter=TorchAdapter(model), data=data,
                          sae=sae, layer="1", n_random=20, out=tmp_path / "interp", progress=False)
    row = result.features.set_index("feature").loc["f0"]
    tab = result.tables["interventions"]
    target = tab[(tab["feature"] == "f0") & (tab["role"] == "target")].set_index("output")
    assert (tab["edited"][tab["role"] == "target"] == 0).all()
    assert f"ablation moves output 0 by {target.loc[0, 'mean_abs_change']:.2g} per item" in row["description"]
    assert f"{target.loc[0, 'effect_ratio']:.0f}x random features" in row["description"]
    assert "TorchAdapter does not map features back" in result.skipped["input_space"]
    assert pd.read_parquet(tmp_path / "interp" / "interventions.parquet").shape == tab.shape
    assert (tmp_path / "interp" / "features" / "f0" / "ablation.svg").stat().st_size > 0
    # a candidate list made for another SAE: named, before any work
    wide = ad.AnnData(sp.hstack([ft.X, sp.csr_matrix((ft.n_obs, 16))]).tocsr(), obs=ft.obs,
                      var=pd.DataFrame(index=[f"f{j}" for j in range(80)]))
    with pytest.raises(InputError, match=r"f70 are not latents of the SAE \(d_sae=64"):
        bv.interpret(findings, wide, candidates=["f0", "f70"], adapter=TorchAdapter(model), data=data,
                     sae=sae, layer="1", out=tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()


def test_per_item_lists_are_repeated_with_the_batch():
    """captum runs the batch once per step; per-item geometry kept in lists (the volume
    adapter's scans) must repeat with it, or rows() sees only the first steps' items."""
    from bioviz.interpret.attribution import _repeat

    extra = {"scans": ["a", "b"], "t": torch.arange(2), "pair": ("x", "y"), "three": [1, 2, 3],
             "nested": {"ids": torch.ones(2, 4)}}
    out = _repeat(extra, 2, 3)
    assert out["scans"] == ["a", "b"] * 3 and out["pair"] == ("x", "y") * 3
    assert out["t"].tolist() == [0, 1] * 3 and out["nested"]["ids"].shape == (6, 4)
    assert out["three"] == [1, 2, 3]  # not per item: as is


def test_per_position_outputs_are_averaged_over_the_positions_that_count():
    """A token model's output [items, positions, units]: one vector per item, the mean over
    its unpadded positions (by hand), so items of any length can be compared."""
    from bioviz.adapter import Batch
    from bioviz.interpret.intervene import _outputs

    logits = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    batch = Batch(torch.zeros(2, 3), pd.DataFrame({"subject_id": ["a", "b"]}), {"mask": mask})
    got = _outputs(TorchAdapter(torch.nn.Identity()), None, {"logits": logits}, batch)
    want = torch.stack([logits[0, :2].mean(0), logits[1, :1].mean(0)]).double()
    torch.testing.assert_close(got, want)


def test_interpret_on_the_cell_model_names_the_genes_its_ablation_moves(tmp_path):
    """The shipped Geneformer-architecture demo with its masked-LM head: interventions read
    the mean predicted logit of every vocabulary gene, named by the adapter."""
    import bioviz as bv
    from bioviz.adapters.singlecell.demo import DEMO_DIR, demo_adapter, pbmc68k_counts

    adata = pbmc68k_counts()[::20].copy()  # 35 cells, 8 libraries as subjects
    adapter = demo_adapter(rows="gene", subject_key="library", run_head=True)
    store = bv.extract(adapter, adata, "bert.encoder.layer.1", tmp_path / "store", batch_size=16, progress=False)
    sae, = bv.train(store.path, max_steps=40, batch_size=1024, output_dir=str(tmp_path / "sae"),
                    sae={"architecture": "relu", "expansion_factor": 2},
                    trainer={"enable_progress_bar": False, "enable_model_summary": False, "logger": False})
    ft = bv.encode(sae, store, progress=False)
    ft.obs["group"] = np.where(ft.obs["subject_id"].astype(str).str[-1].isin(list("0246")), "a", "b")
    findings = bv.associate(ft, ["group"], n_permutations=0, n_boot=0, n_stability=0, heldout=None,
                            probes=False, progress=False)
    feature = str(ft.var_names[int(np.argmax(ft.var["density"].to_numpy()))])
    result = bv.interpret(findings, ft, candidates=[feature], adapter=adapter, data=adata, sae=sae,
                          n_random=3, out=tmp_path / "i", gene_sets=None, progress=False)
    tab = result.tables["interventions"]
    vocab = json.loads((DEMO_DIR / "token_dictionary.json").read_text())
    target = tab[tab["role"] == "target"]
    assert len(target) == len(vocab) == adapter.model.config.vocab_size  # one row per vocabulary entry
    names = {v: k for k, v in vocab.items()}
    assert (target["output_name"] == target["output"].map(names)).all()
    top = target.loc[target["mean_abs_change"].idxmax(), "output_name"]
    assert f"the prediction of {top}" in result.features.set_index("feature").loc[feature, "description"]
