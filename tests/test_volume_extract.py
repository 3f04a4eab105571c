import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_volume_common import SEGRESNET, write_cohort

import bioviz as bv
from bioviz.adapters.volume import VolumeAdapter, build_network

pytestmark = pytest.mark.usefixtures("one_thread")

PRE = {"preset": "mri", "pixdim": [6, 6, 6]}


def _padded(ad, scan):
    """A scan as the model sees it: preprocessed, padded at the far end to the divisor."""
    pp = ad.prepare_scan(scan)
    x = pp["image"].as_tensor()
    shape = tuple(x.shape[1:])
    pad = [p for s in reversed(shape) for p in (0, -s % ad.divisor)]
    return pp, F.pad(x, pad)[None], shape


def test_rows_are_the_layer_output_placed_in_voxels_and_mm(tmp_path):
    manifest = write_cohort(tmp_path / "c", n=2)
    ad = VolumeAdapter(SEGRESNET, preprocess=PRE)
    st = bv.extract(ad, manifest, "down_layers.1", tmp_path / "s", batch_size=2, progress=False)
    obs, rows = st.obs, st.array()[:]
    assert list(obs.columns) == ["subject_id", "sample_id", "age", "group", "grid_i", "grid_j", "grid_k",
                                 "voxel_i", "voxel_j", "voxel_k", "world_x", "world_y", "world_z", "mask_fraction"]
    scan = ad.cohort.find("S1")
    pp, x, shape = _padded(ad, scan)
    with torch.inference_mode(), bv.capture(ad.model, "down_layers.1") as cap:
        ad.model(x)
        ref = cap.pop()["down_layers.1"][0]  # [C, *grid], stride 2
    sel = (obs["sample_id"] == "S1").to_numpy()
    n = [math.ceil(s / 2) for s in shape]
    assert sel.sum() == math.prod(n)
    o = obs[sel]
    g = o[["grid_i", "grid_j", "grid_k"]].to_numpy()
    np.testing.assert_allclose(rows[sel], ref[:, g[:, 0], g[:, 1], g[:, 2]].T.numpy(), atol=1e-4)
    voxel = o[["voxel_i", "voxel_j", "voxel_k"]].to_numpy()
    np.testing.assert_array_equal(voxel, g * 2 + 0.5)  # a 2-voxel cell's centre
    aff = np.asarray(pp["image"].affine)
    world = voxel @ aff[:3, :3].T + aff[:3, 3]
    np.testing.assert_allclose(o[["world_x", "world_y", "world_z"]].to_numpy(), world, atol=1e-3)
    inside = o[o["mask_fraction"] == 1]
    assert len(inside) and (inside["age"] == 51.0).all() and (inside["group"] == "b").all()
    lo, hi = world.min(0), world.max(0)
    assert ((inside[["world_x", "world_y", "world_z"]].to_numpy() - (lo + hi) / 2) ** 2).sum(1).max() < 25 ** 2


def test_sliding_windows_stitch_a_layer_exactly(tmp_path):
    manifest = write_cohort(tmp_path / "c", n=1, resolution_mm=3.0, masks=False)
    swin = {"class_path": "monai.networks.nets.SwinUNETR",
            "init_args": {"in_channels": 1, "out_channels": 2, "feature_size": 12,
                          "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}}
    for blend in ("gaussian",):  # weights vary inside a window; overlaps must still agree
        ad = VolumeAdapter(swin, preprocess={"preset": "mri", "pixdim": [3, 3, 3]}, roi_size=64,
                           overlap=0.5, blend=blend)
        st = bv.extract(ad, manifest, "swinViT.patch_embed", tmp_path / blend, progress=False)
        _, x, shape = _padded(ad, ad.cohort[0])
        assert x.shape[2] > 64 and x.shape[3] > 64  # several windows
        with torch.inference_mode():
            ref = ad.model.swinViT.patch_embed(x)[0]  # 2×2×2 patches: each cell sees only its voxels
        g = st.obs[["grid_i", "grid_j", "grid_k"]].to_numpy()
        assert len(g) == math.prod(math.ceil(s / 2) for s in shape)
        np.testing.assert_allclose(st.array()[:], ref[:, g[:, 0], g[:, 1], g[:, 2]].T.numpy(), atol=1e-5)


def test_patch_pooling_and_one_row_per_scan(tmp_path):
    manifest = write_cohort(tmp_path / "c", n=2, masks=False)
    kw = {"progress": False, "batch_size": 2}
    net = build_network(SEGRESNET)  # one set of random weights for the three layouts
    cells = bv.extract(VolumeAdapter(net, preprocess=PRE), manifest, "down_layers.0", tmp_path / "a", **kw)
    patches = bv.extract(VolumeAdapter(net, preprocess=PRE, patch=2), manifest, "down_layers.0", tmp_path / "b", **kw)
    scans = bv.extract(VolumeAdapter(net, preprocess=PRE, layout="scan"), manifest, "down_layers.0", tmp_path / "d", **kw)
    o, a = cells.obs, cells.array()[:]
    s0 = (o["sample_id"] == "S0").to_numpy()
    g = o.loc[s0, ["grid_i", "grid_j", "grid_k"]].to_numpy() // 2
    p = patches.obs[patches.obs["sample_id"] == "S0"].reset_index(drop=True)
    first = p.iloc[5][["grid_i", "grid_j", "grid_k"]].to_numpy(int)
    member = (g == first).all(1)  # the cells pooled into that patch (a full 2×2×2 block inside the scan)
    assert member.sum() == 8
    # three separate extractions: oneDNN may sum a convolution in another order from run to
    # run (seen: 2e-5 apart after other tests ran), far below what a wrong pooling would move
    np.testing.assert_allclose(patches.array()[:][5], a[s0][member].mean(0), atol=1e-4)
    assert p.iloc[5]["voxel_i"] == first[0] * 2 + 0.5
    assert len(scans.obs) == 2 and (scans.obs["grid_i"] == -1).all()
    np.testing.assert_allclose(scans.array()[:][0], a[s0].mean(0), atol=1e-4)


def test_case17_vit_tokens_become_rows_on_the_grid_cell_of_their_patch(tmp_path):
    """Each ViT token lands on its own patch's cell: with the position embeddings zeroed, the
    patch embedding's token for a patch is MONAI's patch convolution at that patch, read
    straight off the convolution's own [C, i, j, k] output."""
    manifest = write_cohort(tmp_path / "c", n=1, masks=False)
    vit = build_network({"class_path": "monai.networks.nets.ViT",
                         "init_args": {"in_channels": 1, "img_size": 32, "patch_size": 8, "hidden_size": 48,
                                       "mlp_dim": 96, "num_layers": 2, "num_heads": 4,
                                       "classification": True}}).eval()
    with torch.no_grad():
        vit.patch_embedding.position_embeddings.zero_()
    ad = VolumeAdapter(vit, preprocess=PRE, roi_size=32)
    st = bv.extract(ad, manifest, ["patch_embedding", "blocks.1"], tmp_path / "s", progress=False)
    _, x, shape = _padded(ad, ad.cohort[0])
    assert len(set(shape)) == 3  # three different sides: a transposed grid cannot line up by chance
    n = math.prod(math.ceil(s / 8) for s in shape)
    assert len(st.obs) == n and st.array("blocks.1").shape == (n, 48)
    pad = [p for s in reversed(x.shape[2:]) for p in (0, max(0, 32 - s))]  # at least one window
    with torch.inference_mode():  # stride-8 convolution: windows with starts on the patch grid agree
        conv = vit.patch_embedding.patch_embeddings(F.pad(x, pad))[0]  # [48, i, j, k]
    g = st.obs[["grid_i", "grid_j", "grid_k"]].to_numpy()
    np.testing.assert_allclose(st.array("patch_embedding")[:], conv[:, g[:, 0], g[:, 1], g[:, 2]].T.numpy(),
                               atol=1e-5)
    assert st.obs["voxel_i"].min() == 3.5
