"""SAE architectures: shapes, sparsity, decoder geometry, normalisation, AuxK, training."""

import math

import numpy as np
import pytest
import torch

from bioviz.sae import ARCHITECTURES, SAEConfig, build_sae, geometric_median
from bioviz.sae.sparse import SparseCodes, batch_topk

D_IN, D_SAE, K = 16, 64, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def make(arch, **kw):
    kw = {"d_in": D_IN, "d_sae": D_SAE, "k": K, "seed": 0, **kw}
    return build_sae(SAEConfig(architecture=arch, **kw))


def data(n=64, d=D_IN, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale + 1.0


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_shapes_and_nonnegative_codes(arch):
    sae = make(arch)
    x = data()
    out = sae(x)
    assert out.x_hat.shape == x.shape
    assert out.codes.shape == (64, D_SAE)
    assert bool((out.codes >= 0).all())
    assert sae.encode(x).shape == (64, D_SAE)
    assert sae.decode(out.codes).shape == x.shape
    assert sae.W_enc.shape == (D_IN, D_SAE) and sae.W_dec.shape == (D_SAE, D_IN)
    assert sae.b_enc.shape == (D_SAE,) and sae.b_dec.shape == (D_IN,)
    losses = sae.loss(x, out)
    assert {"loss", "mse", "fvu"} <= set(losses)
    assert losses["loss"].requires_grad and torch.isfinite(losses["loss"])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_eval_forward_is_decode_of_encode(arch):
    sae = make(arch)
    x = data()
    sae.fit_normalisation(x)
    sae.train()
    sae(x)  # BatchTopK variants estimate their inference threshold here
    sae.eval()
    with torch.no_grad():
        out = sae(x)
        torch.testing.assert_close(out.x_hat, sae.decode(sae.encode(x)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.codes, sae.encode(x))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_input_of_wrong_width_is_refused(arch):
    with pytest.raises(ValueError, match=r"d_in=16.*\(64, 15\)"):
        make(arch)(torch.randn(64, 15))


def test_topk_l0_is_exactly_k():
    sae = make("topk")
    for training in (True, False):
        sae.train(training)
        codes = sae(data()).codes
        assert ((codes > 0).sum(1) == K).all()


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batchtopk_mean_l0_is_k_in_train_mode_and_threshold_used_in_eval(arch):
    sae = make(arch).train()
    x = data(n=128)
    codes = sae(x).codes
    l0 = (codes > 0).sum(1).float()
    assert l0.mean().item() == K
    assert l0.max() > l0.min()  # the budget is shared across rows, not per row
    assert sae.threshold.item() == pytest.approx(codes[codes > 0].min().item())
    sae.eval()
    with torch.no_grad():
        pre = torch.addmm(sae.b_enc, x * sae.norm_scale - sae.b_dec, sae.W_enc)
        expected = pre * (pre > sae.threshold)
        torch.testing.assert_close(sae.encode(x), expected)


def test_batchtopk_eval_before_any_training_warns_and_uses_the_batch_selection():
    sae = make("batchtopk").eval()
    with pytest.warns(UserWarning, match="no inference threshold"):
        codes = sae.encode(data())
    assert (codes > 0).sum(1).float().mean().item() == K


def test_batchtopk_threshold_is_a_moving_average_of_min_kept_activation():
    sae = make("batchtopk", threshold_momentum=0.5).train()
    first = sae(data(seed=1)).codes
    t1 = first[first > 0].min().item()
    second = sae(data(seed=2)).codes
    t2 = second[second > 0].min().item()
    assert sae.threshold.item() == pytest.approx(0.5 * t1 + 0.5 * t2, rel=1e-6)


def _hand_batchtopk_codes(sae, x, k):
    """BatchTopK codes written out in float64 from the parameters: the k x n largest
    pre-activations of the whole batch, ReLU'd, every other entry 0."""
    p = {n: t.detach().double().numpy() for n, t in sae.named_parameters()}
    s = float(sae.norm_scale)
    pre = (x.double().numpy() * s - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    flat = pre.reshape(-1)
    keep = np.argpartition(-flat, k * len(pre) - 1)[: k * len(pre)]
    codes = np.zeros_like(flat)
    codes[keep] = np.maximum(flat[keep], 0)
    return codes.reshape(pre.shape), p, s


@pytest.mark.parametrize("momentum", [None, 0.2])  # None: the default (0.01)
def test_case14_batchtopk_threshold_ema_uses_momentum_not_one_minus_momentum(momentum):
    kw = {} if momentum is None else {"threshold_momentum": momentum}
    sae = make("batchtopk", **kw).train()
    m = 0.01 if momentum is None else momentum
    assert sae.cfg.threshold_momentum == m
    want = None
    for seed in (1, 2, 3):
        x = data(seed=seed, scale=1.0 + seed)  # batches whose smallest kept values differ
        codes, _, _ = _hand_batchtopk_codes(sae, x, K)
        smallest = codes[codes > 0].min()
        want = smallest if want is None else (1 - m) * want + m * smallest  # EMA at rate m
        sae(x)
        assert sae.threshold.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("sparse_path", [True, False])
def test_case14_matryoshka_loss_is_the_sum_of_prefix_errors_computed_separately(sparse_path):
    prefixes = [8, 24, D_SAE]
    sae = make("matryoshka", matryoshka_prefixes=prefixes, sparse_path=sparse_path, auxk_coefficient=0.0)
    x = data(n=48)
    sae.fit_normalisation(x)
    sae.init_from_data(x, "mean")  # b_dec != 0, so a prefix decode without it would show
    sae.train()
    losses = sae.loss(x, sae(x))
    codes, p, s = _hand_batchtopk_codes(sae, x, K)
    target = x.double().numpy() * s
    errors = {m: float(np.mean((p["b_dec"] + codes[:, :m] @ p["W_dec"][:m] - target) ** 2)) for m in prefixes}
    assert len({round(e, 4) for e in errors.values()}) == 3  # three different terms, none to spare
    assert losses["loss"].item() == pytest.approx(sum(errors.values()), rel=1e-4)
    assert losses["mse"].item() == pytest.approx(errors[D_SAE], rel=1e-4)
    for m in prefixes[:-1]:
        assert losses[f"mse_prefix_{m}"].item() == pytest.approx(errors[m], rel=1e-4)


def test_batch_topk_selection_is_exact_including_rows_that_spill():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(32, 200, generator=g)
    pre[3] += 10.0  # one row holds far more than its 2k candidates of the batch top
    for k_total in (1, 32 * 5, 32 * 40):
        crow, cols, values = batch_topk(pre, k_total)
        dense = SparseCodes(crow, cols, values, 200).to_dense()
        flat = pre.reshape(-1)
        want = torch.zeros_like(flat)
        top = flat.topk(k_total).indices
        want[top] = flat[top]
        torch.testing.assert_close(dense, want.view_as(pre))
        assert bool((crow.diff() >= 0).all()) and crow[-1] == k_total


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_sparse_path_gradients_equal_dense_autograd(arch):
    x = data(n=48)
    grads = []
    for sparse in (True, False):
        sae = make(arch, sparse_path=sparse, dead_rows_threshold=10)
        sae.fit_normalisation(x)
        sae.init_from_data(x, "mean")
        out = sae(x)
        sae.rows_since_fired[: D_SAE // 2] = 100  # half dead, so AuxK takes part
        losses = sae.loss(x, out)
        assert losses["auxk"] > 0
        losses["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_tied_init_copies_rather_than_shares():
    sae = make("topk")
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    with torch.no_grad():
        sae.W_dec.mul_(2.0)
    torch.testing.assert_close(sae.W_enc * 2.0, sae.W_dec.T)
    untied = make("topk", tied_init=False)
    assert not torch.allclose(untied.W_enc, untied.W_dec.T)


def test_sparse_codes_agree_with_dense_codes():
    for arch in ("topk", "relu"):
        sae = make(arch).eval()
        x = data()
        with torch.no_grad():
            dense = sae.encode(x)
            sparse = sae.encode_sparse(x)
        torch.testing.assert_close(sparse.to_dense(), dense)
        assert (sparse.to_scipy().toarray() == dense.numpy()).all()
        torch.testing.assert_close(sae.decode(sparse), sae.decode(dense), rtol=1e-5, atol=1e-5)


def test_encoder_weight_gradient_without_sparse_csc_support(monkeypatch):
    # backends lacking sparse CSC @ dense fall back to a dense product with the same result
    x = data(n=32)
    want = make("topk")
    want.loss(x, want(x))["loss"].backward()

    def unsupported(*args, **kwargs):
        raise NotImplementedError("no sparse CSC on this backend")

    monkeypatch.setattr(torch.sparse, "mm", unsupported)
    got = make("topk")
    got.loss(x, got(x))["loss"].backward()
    torch.testing.assert_close(got.W_enc.grad, want.W_enc.grad)


def test_normalise_decoder_gives_unit_rows():
    sae = make("topk")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1) * 5 + 0.1)
    assert not torch.allclose(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
    sae.normalise_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))


def test_remove_parallel_grads_leaves_grads_orthogonal_to_rows():
    sae = make("relu")
    x = data()
    sae.loss(x, sae(x))["loss"].backward()
    before = (sae.W_dec.grad * sae.W_dec.detach()).sum(1).abs().max()
    assert before > 1e-4
    sae.remove_parallel_grads_()
    after = (sae.W_dec.grad * sae.W_dec.detach()).sum(1).abs().max()
    assert after < 1e-6 * max(1.0, float(before))


def test_normalisation_scalar_follows_the_rule_and_batches_agree():
    sae = make("topk")
    x = data(n=100) * 40.0
    scale = sae.fit_normalisation(x)
    assert scale == pytest.approx(math.sqrt(D_IN) / x.double().norm(dim=1).mean().item(), rel=1e-6)
    assert (x * scale).norm(dim=1).mean().item() == pytest.approx(math.sqrt(D_IN), rel=1e-5)
    other = make("topk")
    assert other.fit_normalisation(iter([x[:30], (x[30:],)])) == pytest.approx(scale, rel=1e-9)
    off = make("topk", normalise_inputs=False)
    assert off.fit_normalisation(x) == 1.0 and off.norm_scale.item() == 1.0


def test_forward_reconstructs_in_original_units():
    # an exact ReLU SAE: codes = [relu(x_c), relu(-x_c)], decoder [I; -I]
    sae = make("relu", d_sae=2 * D_IN)
    eye = torch.eye(D_IN)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
    x = data() * 250.0
    scale = sae.fit_normalisation(x)
    sae.init_from_data(x, "mean")
    assert scale < 0.01
    out = sae(x)
    torch.testing.assert_close(out.x_hat, x, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out.x_hat_normalised, x * scale, rtol=1e-5, atol=1e-5)


def test_init_from_data_geometric_median_resists_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, D_IN, generator=g) * 0.1 + 2.0
    x[:20] += 1000.0  # 10% wild rows
    sae = make("topk", normalise_inputs=False).init_from_data(x)
    assert (sae.b_dec - 2.0).abs().max() < 0.5
    assert (x.mean(0) - 2.0).abs().min() > 50
    # the Weiszfeld fixed point: unit vectors from the median sum to ~0
    med = geometric_median(x.double())
    unit = (x.double() - med) / (x.double() - med).norm(dim=1, keepdim=True)
    assert unit.sum(0).norm() < 1e-2 * len(x)
    torch.testing.assert_close(sae.b_dec, med.float())
    with pytest.warns(UserWarning, match="before fit_normalisation"):
        mean_init = make("topk").init_from_data(x, "mean")
    torch.testing.assert_close(mean_init.b_dec, x.mean(0))


def test_auxk_zero_without_dead_latents_and_positive_with_them():
    sae = make("topk", dead_rows_threshold=100)
    x = data()
    out = sae(x)
    assert not sae.dead_mask().any()
    assert sae.loss(x, out)["auxk"].item() == 0.0
    dead = torch.arange(0, D_SAE, 2)
    sae.rows_since_fired[dead] = 100
    assert sae.dead_mask().sum() == len(dead)
    auxk = sae.loss(x, out)["auxk"]
    assert auxk.item() > 0
    # only dead latents learn from AuxK: live decoder rows get no gradient from it
    sae.zero_grad()
    auxk.backward()
    alive = torch.ones(D_SAE, dtype=torch.bool)
    alive[dead] = False
    assert sae.W_dec.grad[alive].abs().max() == 0
    assert sae.W_dec.grad[dead].abs().max() > 0


def test_auxk_matches_the_reference_formula():
    sae = make("topk", dead_rows_threshold=1, k_aux=3)
    x = data()
    out = sae(x)
    sae.rows_since_fired[:20] = 5
    got = sae.loss(x, out)["auxk"]
    with torch.no_grad():  # OpenAI's normalized_mse written densely
        target = x * sae.norm_scale
        e = target - out.x_hat_normalised
        pre = out.pre_acts.clone()
        pre[:, 20:] = float("-inf")
        v, i = pre.topk(3, dim=1)
        e_hat = torch.zeros_like(pre).scatter(1, i, v.relu()) @ sae.W_dec
        want = ((e_hat - e) ** 2).mean() / ((e - e.mean(0)) ** 2).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_dead_stats_count_rows_since_firing():
    sae = make("topk")
    codes = torch.zeros(10, D_SAE)
    codes[3, 5] = 1.0
    sae.update_dead_stats(codes)
    sae.update_dead_stats(torch.zeros(7, D_SAE))
    assert sae.rows_since_fired[5] == 7 and sae.rows_since_fired[0] == 17
    assert sae.dead_mask(threshold_rows=10).sum() == D_SAE - 1


def test_resample_dead_reinitialises_only_dead_latents():
    sae = make("topk", dead_rows_threshold=50)
    sae.rows_since_fired[:5] = 50
    before = sae.W_dec.detach().clone()
    idx = sae.resample_dead_(data())
    assert idx.tolist() == [0, 1, 2, 3, 4]
    assert not torch.allclose(sae.W_dec[:5], before[:5])
    torch.testing.assert_close(sae.W_dec[5:], before[5:])
    torch.testing.assert_close(sae.W_dec[:5].norm(dim=1), torch.ones(5))
    assert not sae.dead_mask().any()
    assert (sae.b_enc[:5] == 0).all()


def test_relu_l1_coefficient_is_settable_and_weighted_by_decoder_norms():
    sae = make("relu")
    x = data()
    out = sae(x)
    l1 = sae.loss(x, out)["l1"]
    torch.testing.assert_close(l1, (out.codes * sae.W_dec.norm(dim=1)).sum(1).mean())
    sae.l1_coefficient = 0.0
    assert sae.loss(x, out)["loss"].item() == pytest.approx(sae.loss(x, out)["mse"].item())
    sae.l1_coefficient = 8.0
    assert sae.cfg.l1_coefficient == 8.0
    want = sae.loss(x, out)["mse"] + 8.0 / D_IN * l1
    assert sae.loss(x, out)["loss"].item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("arch, coef, term", [("relu", "l1_coefficient", "l1"),
                                              ("jumprelu", "l0_coefficient", "l0_penalty")])
def test_sparsity_scale_weights_the_penalty_and_leaves_the_config_alone(arch, coef, term):
    """The training loop's warm-up ramp goes into the loss; the config keeps its coefficient."""
    sae = make(arch, **{coef: 4.0})
    x = data()
    out = sae(x)
    full, ramped = sae.loss(x, out), sae.loss(x, out, sparsity_scale=0.25)
    assert getattr(sae.cfg, coef) == getattr(sae, coef) == 4.0
    want = ramped["mse"] + 0.25 * 4.0 / D_IN * ramped[term]
    assert ramped["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    assert full["loss"].item() == pytest.approx((full["mse"] + 4.0 / D_IN * full[term]).item(), rel=1e-6)


def test_jumprelu_threshold_and_l0_straight_through():
    sae = make("jumprelu", jumprelu_init_threshold=0.5, jumprelu_bandwidth=0.5)
    x = data()
    out = sae(x)
    theta = sae.threshold.detach()
    z = out.pre_acts.detach()
    torch.testing.assert_close(out.codes, z * (z > theta))
    losses = sae.loss(x, out)
    assert losses["l0_penalty"].item() == pytest.approx((z > theta).sum(1).float().mean().item())
    sae.zero_grad()
    losses["l0_penalty"].backward()
    # the L0 term only ever pushes thresholds up, and only through the STE kernel
    g = sae.log_threshold.grad
    assert (g <= 0).all() and (g < 0).any()
    assert sae.W_enc.grad is None or sae.W_enc.grad.abs().max() == 0


def test_topk_learns_a_planted_dictionary():
    g = torch.Generator().manual_seed(0)
    d, atoms = 32, 64
    true = torch.randn(atoms, d, generator=g)
    true /= true.norm(dim=1, keepdim=True)
    idx = torch.rand(8192, atoms, generator=g).argsort(1)[:, :3]
    mags = torch.rand(8192, 3, generator=g) + 1.0
    x = torch.zeros(8192, atoms).scatter_(1, idx, mags) @ true * 5 + 2.0
    sae = build_sae(SAEConfig("topk", d_in=d, d_sae=128, k=4, seed=0, dead_rows_threshold=2048))
    sae.fit_normalisation(x)
    sae.init_from_data(x)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(300):
        xb = x[torch.randint(0, len(x), (256,), generator=g)]
        losses = sae.loss(xb, sae(xb))
        opt.zero_grad()
        losses["loss"].backward()
        sae.remove_parallel_grads_()
        opt.step()
        sae.normalise_decoder_()
    sae.eval()
    with torch.no_grad():
        fvu = sae.loss(x, sae(x))["fvu"].item()
        recovered = (true @ sae.W_dec.T).max(1).values
    assert fvu < 0.15
    assert recovered.mean() > 0.9
