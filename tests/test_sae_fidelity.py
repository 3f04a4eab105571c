import copy

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from transformers import BertConfig, BertForMaskedLM

import bioviz as bv
from bioviz.adapters import TorchAdapter
from bioviz.evaluate import _splice, fidelity, stability
from bioviz.hooks import capture, patch
from bioviz.sae import SAEConfig, build_sae

# a 32-wide BERT and small SAEs: one torch thread (conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


class MaskedTokens(torch.utils.data.Dataset):
    """Token sequences with 15% of positions masked and labelled, as in BERT pre-training."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(5, 64, (12,), generator=g)
        labels = torch.full_like(ids, -100)
        masked = torch.rand(12, generator=g) < 0.15
        masked[0] = True
        labels[masked] = ids[masked]
        ids = ids.masked_fill(masked, 4)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.fixture(scope="module")
def mlm():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return BertForMaskedLM(cfg).eval()


def test_patch_replaces_inside_tuple_outputs(mlm):
    batch = MaskedTokens()[0]
    inputs = {k: v[None] for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        clean = mlm(**inputs).logits
        with patch(mlm, "bert.encoder.layer.1", lambda t: t * 0):
            zeroed = mlm(**inputs).logits
        with patch(mlm, "bert.encoder.layer.1", lambda t: t):
            same = mlm(**inputs).logits
    torch.testing.assert_close(same, clean)
    assert not torch.allclose(zeroed, clean)
    assert all(not m._forward_hooks for m in mlm.bert.encoder.layer[1:2])


def test_fidelity_of_a_trained_sae(mlm, tmp_path):
    adapter = TorchAdapter(mlm)
    layer = "bert.encoder.layer.0"
    store = bv.extract(adapter, MaskedTokens(), layer, tmp_path / "store", batch_size=8, progress=False)
    sae, = bv.train(store.path, max_steps=150, batch_size=96, output_dir=str(tmp_path / "sae"),
                    sae={"k": 8, "expansion_factor": 4}, optim={"lr": 3e-3}, trainer={"enable_progress_bar": False})
    res = fidelity(adapter, MaskedTokens(), sae, layer, batch_size=8, with_error=True, progress=False)
    assert res["kl_sae_plus_error"] < 1e-6 and res["top1_agreement_sae_plus_error"] == 1.0  # splice is exact
    # case 17: ranges a broken SAE or splice would leave (values seen: 0.90; 0.74 vs 0.35)
    assert res["kl_sae"] > 0 and res["kl_recovered"] == pytest.approx(1 - res["kl_sae"] / res["kl_ablated"])
    assert res["kl_recovered"] > 0.8  # with the encoder frozen by a bug: 0.74
    assert res["top1_agreement_sae"] > res["top1_agreement_ablated"] + 0.2
    # the MLM loss from the labels, against cross-entropy computed here batch by batch
    assert res["task_loss_clean"] == pytest.approx(np.mean([_mlm_loss(mlm, range(b, b + 8)) for b in (0, 8, 16)]),
                                                   rel=1e-5)
    gap = res["task_loss_ablated"] - res["task_loss_clean"]  # <= 0 (nothing to recover): NaN
    want = (res["task_loss_ablated"] - res["task_loss_sae"]) / gap if gap > 0 else float("nan")
    assert res["loss_recovered"] == pytest.approx(want, nan_ok=True)
    assert res["positions"] == 24 * 12
    untrained = build_sae(SAEConfig(architecture="topk", d_in=32, d_sae=128, k=8, seed=3))
    untrained.fit_normalisation(torch.from_numpy(store.array()[:]))
    worse = fidelity(adapter, MaskedTokens(), untrained, layer, batch_size=8, progress=False)
    assert worse["kl_recovered"] < res["kl_recovered"]


def _mlm_loss(mlm, items) -> float:
    """Mean cross-entropy over the labelled positions of ``items``, by scipy's log-softmax."""
    batch = [MaskedTokens()[i] for i in items]
    ids = torch.stack([b["input_ids"] for b in batch])
    labels = torch.stack([b["labels"] for b in batch]).numpy()
    with torch.no_grad():
        logits = mlm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.double().numpy()
    logp = scipy.special.log_softmax(logits, axis=-1)
    at = labels != -100
    return float(-np.take_along_axis(logp[at], labels[at][:, None], axis=1).mean())


def test_stability_matches_features_one_to_one():
    a = build_sae(SAEConfig(architecture="topk", d_in=16, d_sae=32, k=4, seed=0))
    b = build_sae(SAEConfig(architecture="topk", d_in=16, d_sae=32, k=4, seed=1))
    with torch.no_grad():
        perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
        b.W_dec.copy_(a.W_dec[perm])  # same dictionary, shuffled order
        b.W_dec[:8] = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)  # 8 features differ
    summary, pairs = stability(a, b, threshold=0.99)
    assert summary["matched_fraction"] == pytest.approx(24 / 32)
    matched = pairs[pairs["cosine"] > 0.99]
    assert all(perm[fb] == fa for fa, fb in zip(matched["feature_a"], matched["feature_b"]))
    c = build_sae(SAEConfig(architecture="topk", d_in=8, d_sae=16, k=2))
    with pytest.raises(ValueError, match="different layers"):
        stability(a, c)


def test_capture_and_patch_nest(mlm):
    ids = torch.randint(5, 64, (1, 6))
    with torch.no_grad(), capture(mlm, "bert.encoder.layer.1") as cap:
        with patch(mlm, "bert.encoder.layer.0", lambda t: t + 1):
            mlm(input_ids=ids)
        assert cap.pop()["bert.encoder.layer.1"].shape == (1, 6, 32)


class PaddedMaskedTokens(MaskedTokens):
    """MaskedTokens whose odd items end in 1-4 padding positions (attention_mask 0)."""

    def __getitem__(self, i):
        item = dict(super().__getitem__(i))
        if i % 2:
            item["attention_mask"] = item["attention_mask"].clone()
            item["attention_mask"][12 - (i % 4 + 1):] = 0
        return item


def _stack(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _run_replacing(mlm, layer, inputs, replace=None):
    """The model's logits and ``layer``'s hidden states, with that output replaced by
    ``replace(hidden)`` through a plain torch forward hook (no bioviz code)."""
    seen = {}

    def hook(_m, _a, out):
        hidden = out[0] if isinstance(out, tuple) else out
        seen["h"] = hidden
        if replace is None:
            return None
        new = replace(hidden)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    h = mlm.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = mlm(**inputs).logits
    finally:
        h.remove()
    return logits, seen["h"]


def test_case14_fidelity_kl_direction_matches_a_hand_computed_kl(mlm):
    """KL(clean ‖ patched) = sum_c p_clean log(p_clean / p_patched) per kept position, by scipy."""
    layer, data, size = "bert.encoder.layer.0", PaddedMaskedTokens(), 12
    mlm = copy.deepcopy(mlm)
    with torch.no_grad():  # peaked predictions, so KL(p ‖ q) and KL(q ‖ p) are far apart
        mlm.cls.predictions.transform.LayerNorm.weight.mul_(10)
    sae = build_sae(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4, seed=5))
    _, h = _run_replacing(mlm, layer, _stack([data[i] for i in range(24)]))
    sae.fit_normalisation(h.reshape(-1, 32))
    sae.eval()
    kls = {"sae": [], "ablated": []}
    agree = {"sae": [], "ablated": []}
    for start in range(0, 24, size):
        inputs = _stack([data[i] for i in range(start, start + size)])
        clean, h = _run_replacing(mlm, layer, inputs)
        mean = h.reshape(-1, 32).mean(0)  # the batch's mean row (all positions, as documented)
        with torch.no_grad():
            recon = sae(h.reshape(-1, 32)).x_hat.reshape(h.shape)
        keep = inputs["attention_mask"].bool().numpy()
        p = scipy.special.softmax(clean.double().numpy(), axis=-1)
        for name, repl in (("sae", lambda _h, r=recon: r), ("ablated", lambda _h, m=mean: m.expand_as(_h))):
            patched, _ = _run_replacing(mlm, layer, inputs, repl)
            q = scipy.special.softmax(patched.double().numpy(), axis=-1)
            kls[name].append(scipy.stats.entropy(p, q, axis=-1)[keep])  # entropy(p, q) = KL(p ‖ q)
            agree[name].append((p.argmax(-1) == q.argmax(-1))[keep])
    want = {name: float(np.concatenate(v).mean()) for name, v in kls.items()}
    n_keep = int(sum(int(data[i]["attention_mask"].sum()) for i in range(24)))
    assert n_keep < 24 * 12  # padding is left out
    res = fidelity(TorchAdapter(mlm), data, sae, layer, batch_size=size, progress=False)
    assert res["positions"] == n_keep
    for name in ("sae", "ablated"):
        assert res[f"kl_{name}"] == pytest.approx(want[name], rel=1e-4)
        assert res[f"top1_agreement_{name}"] == pytest.approx(float(np.concatenate(agree[name]).mean()))
    assert res["kl_recovered"] == pytest.approx(1 - want["sae"] / want["ablated"], rel=1e-4)


def test_case14_exact_splice_sae_plus_error_gives_the_clean_model_run(mlm):
    """The splices through ``Adapter.run`` compared with the model run without bioviz: the
    reconstruction plus its error term gives the clean model's logits, and the reconstruction
    alone gives the logits of the model patched by hand."""
    layer = "bert.encoder.layer.1"
    data = PaddedMaskedTokens()
    adapter = TorchAdapter(mlm)
    inputs = _stack([data[i] for i in range(8)])
    clean, h = _run_replacing(mlm, layer, inputs)
    sae = build_sae(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4, seed=2)).eval()
    sae.fit_normalisation(h.reshape(-1, 32))
    with torch.no_grad():
        recon = sae(h.reshape(-1, 32)).x_hat.reshape(h.shape)
    by_hand, _ = _run_replacing(mlm, layer, inputs, lambda _h: recon)
    assert (by_hand - clean).abs().max() > 0.1  # the reconstruction really changes the model
    ds = adapter.dataset(data)
    batch = adapter.collate([ds[i] for i in range(8)])
    mean = h.reshape(-1, 32).mean(0, keepdim=True)
    with torch.no_grad():
        exact, _ = adapter.run(batch, splice={layer: _splice("sae_plus_error", sae, mean)})
        spliced, _ = adapter.run(batch, splice={layer: _splice("sae", sae, mean)})
    torch.testing.assert_close(adapter.logits(exact), clean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adapter.logits(spliced), by_hand, atol=1e-5, rtol=1e-5)
