import collections

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from bioviz.adapters import TorchAdapter
from bioviz.adapters.weights import WeightsError, load_weights


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_safetensors_and_wrapped_ddp_state_dict_load(tmp_path):
    src = _net(1)
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    got = _net(0)
    report = load_weights(got, tmp_path / "w.safetensors")
    torch.testing.assert_close(got[0].weight, src[0].weight)
    assert report.loaded == 4 and not report.missing
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pt")
    adapter = TorchAdapter(_net(0), weights=str(tmp_path / "w.pt"))
    torch.testing.assert_close(adapter.model[2].bias, src[2].bias)


def test_mismatch_and_missing_file_are_clear(tmp_path):
    state = _net().state_dict()
    state["2.weight"] = torch.zeros(5, 3)
    del state["0.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"missing \(1\): 0\.bias; unexpected \(1\): extra\.weight; mismatched \(1\): 2\.weight file \(5, 3\) vs network \(2, 3\)"):
        load_weights(_net(), tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_weights(_net(), tmp_path / "nope.safetensors")


def test_pickled_objects_are_never_unpickled(tmp_path):
    torch.save({"model": _net()}, tmp_path / "whole_model.pt")  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="weights_only=True"):
        load_weights(_net(), tmp_path / "whole_model.pt")
    torch.save(collections.Counter(a=1), tmp_path / "counter.pt")  # loadable, but not weights
    with pytest.raises(ValueError, match="does not hold a flat mapping"):
        load_weights(_net(), tmp_path / "counter.pt")
