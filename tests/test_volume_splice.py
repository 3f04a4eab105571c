"""Running a windowed volume model through the protocol's one method (Adapter.run): the
stitched output and a splice inside every window, checked against MONAI's own
sliding_window_inference on a network whose layer is replaced by the same function."""

import copy

import pytest
import torch
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


def _monai(net, x):
    return sliding_window_inference(x, (ROI,) * 3, 1, net, overlap=OVERLAP, mode="gaussian",
                                    sigma_scale=SIGMA)


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


@torch.inference_mode()
def test_splice_inside_every_window_matches_monai_on_the_spliced_network(setup):
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
