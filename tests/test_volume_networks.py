import json

import pytest
import torch
from safetensors.torch import save_file
from test_volume_common import SEGRESNET

from bioviz.adapters.volume import (
    PreprocessError,
    VolumeAdapter,
    WeightsError,
    build_network,
    hook_points,
    load_weights,
)
from bioviz.adapters.volume.networks import default_divisor, tokens_to_grid
from bioviz.hooks import capture

pytestmark = pytest.mark.usefixtures("one_thread")

NETS = {
    "SwinUNETR": ({"in_channels": 1, "out_channels": 2, "feature_size": 12, "depths": [1, 1, 1, 1],
                   "num_heads": [1, 1, 1, 1]}, 64),
    "SegResNet": ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8}, 32),
    "UNet": ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16],
              "strides": [2, 2]}, 32),
    "ViT": ({"in_channels": 1, "img_size": 32, "patch_size": 8, "hidden_size": 48, "mlp_dim": 96,
             "num_layers": 2, "num_heads": 4, "classification": True}, 32),
    "ResNet": ({"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 16, 32],
                "spatial_dims": 3, "n_input_channels": 1, "num_classes": 2}, 32),
    "DenseNet121": ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2}, 32),
}


@pytest.mark.parametrize("name", list(NETS))
def test_networks_from_config_list_hook_points_that_give_maps(name):
    args, side = NETS[name]
    net = build_network({"class_path": f"monai.networks.nets.{name}", "init_args": args}).eval()
    points = hook_points(net)
    assert points, f"no hook points for {name}"
    assert side % default_divisor(net) == 0
    x = torch.randn(1, 1, side, side, side)
    with torch.inference_mode(), capture(net, points) as cap:
        net(x)
        acts = cap.pop()
    for layer, act in acts.items():
        if act.ndim == 3:  # ViT tokens: laid out on the patch grid
            act = tokens_to_grid(act, (side,) * 3, net, layer)
        assert act.ndim == 5 and side % act.shape[-1] == 0, (layer, tuple(act.shape))


def test_config_may_only_name_monai_networks():
    with pytest.raises(ValueError, match=r"'os\.system' is not a class in monai\.networks\.nets"):
        build_network({"_target_": "os.system", "command": "true"})
    with pytest.raises(ValueError, match="network SegResNet: num_channels .* divisible"):
        build_network({"name": "SegResNet", "args": {"init_filters": 4}})


def _segresnet(**kw):
    return build_network({**SEGRESNET, "init_args": {**SEGRESNET["init_args"], **kw}})


def test_state_dict_and_safetensors_load_with_prefixes_stripped(tmp_path):
    src = _segresnet()
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ddp.pt")
    save_file({f"backbone.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "ssl.safetensors"))
    for f in ("ddp.pt", "ssl.safetensors"):
        dst = _segresnet()
        report = load_weights(dst, tmp_path / f)
        assert report.loaded == len(src.state_dict()) and not report.missing
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_real_mismatches_fail_with_the_keys_and_allowed_ones_are_reported(tmp_path):
    src = _segresnet()
    state = src.state_dict()
    head = [k for k in state if k.startswith("conv_final.")]
    torch.save({k: v for k, v in state.items() if k not in head} | {"extra.weight": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"w\.pt does not match SegResNet: missing \(4\): conv_final\.0\.weight.*; unexpected \(1\): extra\.weight$"):
        load_weights(_segresnet(), tmp_path / "w.pt")
    report = load_weights(_segresnet(), tmp_path / "w.pt", allow_missing=["conv_final."], allow_unexpected=["extra."])
    assert sorted(report.tolerated) == sorted(head) and report.loaded == len(state) - len(head)
    torch.save(_segresnet(out_channels=3).state_dict(), tmp_path / "three.pt")
    with pytest.raises(WeightsError, match=r"mismatched \(2\): conv_final\.2\.conv\.weight file \(3, 8, 1, 1, 1\) vs network \(2, 8, 1, 1, 1\)"):
        load_weights(_segresnet(), tmp_path / "three.pt")
    torch.save({"model": src}, tmp_path / "pickled.pt")  # a whole pickled module: not loadable safely
    with pytest.raises(ValueError, match="not a torch state dict loadable with weights_only=True"):
        load_weights(_segresnet(), tmp_path / "pickled.pt")


def _bundle(root, weights=True, **net_extra):
    (root / "configs").mkdir(parents=True)
    cfg = {
        "num_classes": 2,
        "network_def": {"_target_": "SegResNet", "spatial_dims": 3, "init_filters": 8,
                        "out_channels": "@num_classes", "blocks_down": "$[1, 1, 1]", "blocks_up": [1, 1],
                        **net_extra},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": ["image", "label"], "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [4.0, 4.0, 4.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -175, "a_max": 250,
             "b_min": 0.0, "b_max": 1.0, "clip": True}]},
        "image_key": "image",
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "overlap": 0.5,
                    "mode": "gaussian", "sw_batch_size": 2},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(cfg))
    if weights:
        (root / "models").mkdir()
        net = _segresnet()
        torch.save(net.state_dict(), root / "models" / "model.pt")
        return net


def test_bundle_directory_gives_network_weights_preprocessing_and_window(tmp_path):
    src = _bundle(tmp_path / "b")
    ad = VolumeAdapter(bundle=str(tmp_path / "b"))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), ad.model.state_dict().values()))
    assert [t["name"] for t in ad.preprocess] == ["Orientationd", "Spacingd", "ScaleIntensityRanged"]
    assert ad.windows.roi == (32, 32, 32) and ad.windows.mode == "gaussian" and ad.windows.overlap == 0.5
    assert ad.model_name == "b" and ad.layer_names()[:2] == ["down_layers.0", "down_layers.1"]
    _bundle(tmp_path / "nw", weights=False)
    with pytest.raises(FileNotFoundError, match="expected models/model.safetensors or models/model.pt"):
        VolumeAdapter(bundle=str(tmp_path / "nw"))
    _bundle(tmp_path / "code", act="$__import__('os').getcwd()")
    with pytest.raises(ValueError, match=r"network_def\.act is the expression .*only literal values"):
        VolumeAdapter(bundle=str(tmp_path / "code"))


def test_preprocess_specs_are_checked():
    with pytest.raises(PreprocessError, match=r"unknown option\(s\) \['spacing'\] for preset 'ct'"):
        VolumeAdapter(SEGRESNET, preprocess={"preset": "ct", "spacing": 1})
    with pytest.raises(PreprocessError, match="RandFlipd is random"):
        VolumeAdapter(SEGRESNET, preprocess=[{"_target_": "RandFlipd", "prob": 0.5}])
    with pytest.raises(PreprocessError, match="'Spacing' is not a MONAI dictionary transform; use the dictionary version Spacingd"):
        VolumeAdapter(SEGRESNET, preprocess=[{"name": "Spacing", "args": {"pixdim": 2}}])
    with pytest.raises(PreprocessError, match=r"'os\.system' is not in monai\.transforms"):
        VolumeAdapter(SEGRESNET, preprocess=[{"class_path": "os.system"}])
    with pytest.raises(ValueError, match=r"roi_size=30: .* multiple of divisor=4"):
        VolumeAdapter(SEGRESNET, roi_size=30)
