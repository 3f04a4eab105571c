import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

import bioviz as bv
from bioviz.adapters import TorchAdapter
from bioviz.evaluate import fidelity, stability
from bioviz.hooks import capture, patch
from bioviz.sae import SAEConfig, build_sae


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
    assert 0 < res["kl_sae"] < res["kl_ablated"] and 0 < res["kl_recovered"] <= 1
    assert "loss_recovered" in res and res["task_loss_clean"] > 0  # MLM loss from the labels
    assert res["positions"] == 24 * 12
    untrained = build_sae(SAEConfig(architecture="topk", d_in=32, d_sae=128, k=8, seed=3))
    untrained.fit_normalisation(torch.from_numpy(store.array()[:]))
    worse = fidelity(adapter, MaskedTokens(), untrained, layer, batch_size=8, progress=False)
    assert worse["kl_recovered"] < res["kl_recovered"]


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
