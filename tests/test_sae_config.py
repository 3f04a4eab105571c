"""SAEConfig: validation names the bad parameter; JSON round-trip."""

import json

import pytest

from bioviz.sae import ARCHITECTURES, SAEConfig, build_sae


def test_valid_config_round_trips_through_json():
    cfg = SAEConfig(
        architecture="matryoshka", d_in=8, d_sae=32, k=4, matryoshka_prefixes=[4, 16, 32],
        provenance={"model": "antiberty", "layer": "encoder.layer.3"}, training={"lr": 1e-3},
    ).validate()
    again = SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.provenance["layer"] == "encoder.layer.3"


def test_expansion_factor_helper_sets_d_sae():
    cfg = SAEConfig.from_expansion(d_in=12, expansion_factor=4, k=3)
    assert cfg.d_sae == 48
    assert SAEConfig(d_in=10, expansion_factor=1.5, k=2).validate().d_sae == 15


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(d_in=8, d_sae=16, k=17), ["k=17", "larger than d_sae=16"]),
        (dict(d_in=8, d_sae=16, k=0), ["k=0", ">= 1"]),
        (dict(d_in=10, expansion_factor=0.33, k=1), ["expansion_factor=0.33", "not an integer"]),
        (dict(d_in=8, d_sae=40, expansion_factor=4, k=1), ["d_sae=40", "expansion_factor=4"]),
        (dict(d_in=8, d_sae=16.0, k=1), ["d_sae=16.0", "positive integer"]),
        (dict(d_in=8, k=1), ["d_sae is missing"]),
        (dict(d_in=0, d_sae=16, k=1), ["d_in=0"]),
        (dict(architecture="matryoshka", d_in=8, d_sae=32, k=2, matryoshka_prefixes=[8, 4, 32]),
         ["matryoshka_prefixes", "increasing"]),
        (dict(architecture="matryoshka", d_in=8, d_sae=32, k=2, matryoshka_prefixes=[8, 16]),
         ["matryoshka_prefixes", "end at d_sae=32"]),
        (dict(architecture="relu", d_in=8, d_sae=16, l1_coefficient=-1.0), ["l1_coefficient"]),
        (dict(architecture="jumprelu", d_in=8, d_sae=16, jumprelu_bandwidth=0.0),
         ["jumprelu_bandwidth"]),
        (dict(d_in=8, d_sae=16, k=2, b_dec_init="median"), ["b_dec_init='median'"]),
        (dict(d_in=8, d_sae=16, k=2, provenance={"when": object()}), ["provenance"]),
    ],
)
def test_validation_errors_name_the_parameter(kwargs, words):
    with pytest.raises(ValueError) as err:
        SAEConfig(**kwargs).validate()
    for word in words:
        assert word in str(err.value)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        build_sae(SAEConfig(architecture="gated", d_in=8, d_sae=16))
    msg = str(err.value)
    assert "architecture='gated'" in msg
    for name in ARCHITECTURES:
        assert name in msg
    assert set(ARCHITECTURES) == {"topk", "batchtopk", "relu", "jumprelu", "matryoshka"}


def test_all_errors_reported_at_once():
    with pytest.raises(ValueError) as err:
        SAEConfig(d_in=8, d_sae=16, k=0, auxk_coefficient=-1).validate()
    assert "k=0" in str(err.value) and "auxk_coefficient" in str(err.value)


def test_k_does_not_matter_for_relu_and_default_prefixes_are_valid():
    SAEConfig(architecture="relu", d_in=8, d_sae=16, k=100).validate()
    cfg = SAEConfig(architecture="matryoshka", d_in=8, d_sae=64, k=2).validate()
    assert cfg.resolved_prefixes == [8, 16, 32, 64]
