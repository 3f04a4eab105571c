"""One model checksum: every adapter records ``bioviz.checksum.model_identity`` of its model,
so two adapters around one model agree, and any change to a weight or buffer shows."""

import pytest
import torch
from torch import nn

from bioviz.adapters import SequenceAdapter, TorchAdapter, VolumeAdapter
from bioviz.adapters.sequence import OneHotEncoder
from bioviz.checksum import model_identity


def _volume_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 2, 1))


def _sequence_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 3, 1))


ADAPTERS = {
    "volume": (_volume_net, lambda net: VolumeAdapter(net, preprocess={"preset": "mri", "pixdim": [6, 6, 6]})),
    "sequence": (_sequence_net, lambda net: SequenceAdapter(net, OneHotEncoder(), window=64, call="onehot",
                                                            channels_first=True)),
}


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_adapters_around_one_model_record_one_checksum(kind):
    make_net, wrap = ADAPTERS[kind]
    net = make_net()
    counter = net[1].num_batches_tracked
    assert counter.ndim == 0  # the 0-d BatchNorm buffer is part of what is hashed
    modality, generic = wrap(net), TorchAdapter(net)
    assert modality.model is generic.model is net
    before = modality.identity()["weights_blake2b"]
    assert generic.identity()["weights_blake2b"] == before == model_identity(net)["weights_blake2b"]

    with torch.no_grad():
        net[0].weight[0].view(-1)[0] += 1e-3  # one weight
    changed = modality.identity()["weights_blake2b"]
    assert changed != before and generic.identity()["weights_blake2b"] == changed

    counter += 1  # one buffer, the 0-d one
    assert modality.identity()["weights_blake2b"] not in (before, changed)
    assert generic.identity()["weights_blake2b"] == modality.identity()["weights_blake2b"]
