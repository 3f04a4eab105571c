"""Running a windowed volume model through the protocol's one method (Adapter.run): the
stitched output and a splice inside every window, checked against MONAI's own
sliding_window_inference on a network whose layer is replaced by the same function."""

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference
from test_volume_common import SEGRESNET, write_cohort

import bioviz as bv
from bioviz.adapters.volume import VolumeAdapter, build_network
from bioviz.evaluate import _splice
from bioviz.sae import SAEConfig, build_sae

pytestmark = pytest.mark.usefixtures("one_thread")

PRE = {"preset": "mri", "pixdim": [6, 6, 6]}
LAYER = "down_layers.1"  # stride 2, 16 channels; convolutions see across window borders
ROI, OVERLAP, SIGMA = 16, 0.5, 0.125


class _Apply(torch.nn.Module):
    """``module`` followed by ``fn``: the splice built into the network itself."""

    def __init__(self, module, fn):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, x):
        return self.fn(self.module(x))


def _with_splice(net, layer, fn):
    ref = copy.deepcopy(net)
    parent, _, name = layer.rpartition(".")
    holder = ref.get_submodule(parent)
    holder.register_module(name, _Apply(holder.get_submodule(name), fn))
    return ref


def _monai(net, x, mode="gaussian", **kw):
    return sliding_window_inference(x, (ROI,) * 3, 1, net, overlap=OVERLAP, mode=mode,
                                    sigma_scale=SIGMA, **kw)


class _UpTo(torch.nn.Module):
    """The network's ``layer`` output as the network's output (a plain forward hook)."""

    def __init__(self, net, layer):
        super().__init__()
        self.net, self.layer = net, layer

    def forward(self, x):
        seen = []
        h = self.net.get_submodule(self.layer).register_forward_hook(lambda _m, _a, out: seen.append(out))
        try:
            self.net(x)
        finally:
            h.remove()
        return seen[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    manifest = write_cohort(tmp_path_factory.mktemp("c"), n=1, masks=False)
    torch.manual_seed(0)
    net = build_network(SEGRESNET).eval()
    ad = VolumeAdapter(net, preprocess=PRE, roi_size=ROI, overlap=OVERLAP, blend="gaussian",
                       sigma_scale=SIGMA)
    ds = ad.dataset(manifest)
    batch = ad.collate([ds[0]])
    x = batch.inputs[0][None]
    assert all(s > ROI for s in x.shape[2:])  # several windows on every axis
    return ad, net, batch, x, manifest


@torch.inference_mode()
def test_windowed_run_matches_monai_sliding_window_inference(setup):
    ad, net, batch, x, _ = setup
    out, acts = ad.run(batch, [LAYER])
    whole = net(x)
    ref = _monai(net, x)
    assert (ref - whole).abs().max() > 1e-3  # windows really differ from one whole pass
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=1e-4)
    assert acts[LAYER][0].shape[2:] == tuple(s // 2 for s in x.shape[2:])


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@torch.inference_mode()
def test_case14_sliding_window_blend_weights_match_monai_for_the_output_and_a_layer(setup, mode):
    """Both blend modes, on the output and on a stride-2 layer whose convolutions cross window
    borders: the reference is MONAI's sliding_window_inference; for the layer it runs the
    network up to the layer and is handed the window weights averaged over each 2x2x2 cell."""
    _, net, batch, x, manifest = setup
    ad = VolumeAdapter(net, preprocess=PRE, roi_size=ROI, overlap=OVERLAP, blend=mode, sigma_scale=SIGMA)
    ds = ad.dataset(manifest)
    b = ad.collate([ds[0]])
    assert torch.equal(b.inputs[0][None], x)
    out, acts = ad.run(b, [LAYER])
    torch.testing.assert_close(out[0], _monai(net, x, mode), atol=1e-5, rtol=1e-4)
    weight = compute_importance_map((ROI,) * 3, mode=mode, sigma_scale=SIGMA, dtype=torch.float32)
    cell = F.avg_pool3d(weight[None, None], 2)

    def cell_weights(seg, _win, _importance):
        return seg, cell

    ref = _monai(_UpTo(net, LAYER), x, mode, process_fn=cell_weights)
    assert ref.shape == acts[LAYER][0].shape
    torch.testing.assert_close(acts[LAYER][0], ref, atol=1e-5, rtol=1e-4)
    if mode == "gaussian":  # the weights matter here: an unweighted mean of the windows differs
        flat = _monai(_UpTo(net, LAYER), x, "constant")
        assert (flat - ref).abs().max() > 1e-3


@torch.inference_mode()
def test_case14_exact_splice_and_splice_inside_every_window_match_monai_and_the_clean_run(setup):
    ad, net, batch, x, _ = setup
    sae = build_sae(SAEConfig(d_in=16, d_sae=64, k=4, seed=0))
    mean = torch.zeros(1, 16)
    clean, _ = ad.run(batch)
    for variant in ("sae", "ablated"):
        fn = _splice(variant, sae, mean)
        out, _ = ad.run(batch, splice={LAYER: fn})
        ref = _monai(_with_splice(net, LAYER, fn), x)
        torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=1e-4)
        assert (out[0] - clean[0]).abs().max() > 1e-3  # the splice changed the output
    # the exact-splice property: reconstruction plus its error gives the clean model back,
    # window by window, while the reconstruction alone does not
    exact, _ = ad.run(batch, splice={LAYER: _splice("sae_plus_error", sae, mean)})
    torch.testing.assert_close(exact[0], clean[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(exact[0], _monai(net, x), atol=1e-5, rtol=1e-4)  # the clean model, run by MONAI


def test_fidelity_runs_through_windows(setup):
    ad, _, _, _, manifest = setup
    sae = build_sae(SAEConfig(d_in=16, d_sae=64, k=4, seed=0))
    res = bv.fidelity(ad, manifest, sae, LAYER, batch_size=1, with_error=True, progress=False)
    assert res["kl_sae_plus_error"] < 1e-8 < res["kl_sae"]
    assert res["positions"] == x_voxels(ad, manifest)


def x_voxels(ad, manifest):
    ds = ad.dataset(manifest)
    b = ad.collate([ds[0]])
    return b.inputs[0][0].numel()
